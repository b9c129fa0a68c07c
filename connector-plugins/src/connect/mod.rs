//! Kafka-Connect-style connectors: a runner (`courier connect --config
//! FILE`) that moves files between an organization's directory or bucket
//! and Courier topics, with Kafka Connect's property names and REST paths.
//!
//! - [`source`]: files (whole, or line by line) become records, exactly
//!   once across restarts, with the source's offsets in a topic as Kafka
//!   Connect keeps `connect-offsets`;
//! - [`sink`]: records become files, checked and atomically named, exactly
//!   once across restarts; its committed offsets are Courier's delivery
//!   receipts;
//! - [`Worker`]: runs connectors' tasks, restarts a task whose failure may
//!   pass (the cluster or the storage was unreachable) and stops one whose
//!   failure will not (a record that fails its check, a bad setting),
//!   serves the REST interface and each connector's metrics.

pub mod config;
pub mod kafka;
pub mod place;
mod rest;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::MultiProgress;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn, Instrument};

pub use config::{ConnectorConfig, Properties, WorkerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("{topic}-{partition} offset {offset} is not delivered: {why}")]
    Verify {
        topic: String,
        partition: i32,
        offset: i64,
        why: String,
    },
    #[error("connector {0} exists")]
    Exists(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

impl ConnectError {
    /// Whether running the task again may succeed (the cluster or the
    /// storage was unreachable), rather than fail the same way.
    fn is_retriable(&self) -> bool {
        matches!(
            self,
            ConnectError::Io { .. } | ConnectError::Storage(_) | ConnectError::Kafka(_)
        )
    }
}

/// One connector's counters, as `/metrics` reports them.
#[derive(Default)]
pub struct Metrics {
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Per task: files waiting (source), records behind the end (sink).
    lags: Mutex<BTreeMap<usize, i64>>,
}

impl Metrics {
    fn sent(&self, bytes: u64) {
        self.sent_many(1, bytes);
    }

    fn sent_many(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn set_lag(&self, lag: i64) {
        self.set_task_lag(0, lag);
    }

    fn set_task_lag(&self, task: usize, lag: i64) {
        if let Ok(mut l) = self.lags.lock() {
            l.insert(task, lag);
        }
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn lag(&self) -> i64 {
        self.lags.lock().map(|l| l.values().sum()).unwrap_or(0)
    }
}

/// What a connector's tasks are asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Running,
    Paused,
}

/// What one task of a connector is given.
#[derive(Clone)]
struct Task {
    id: usize,
    config: ConnectorConfig,
    worker: WorkerConfig,
    metrics: Arc<Metrics>,
    control: watch::Receiver<Target>,
    progress: MultiProgress,
}

impl Task {
    fn paused(&self) -> bool {
        *self.control.borrow() == Target::Paused
    }

    async fn wait_while_paused(&self, control: &mut watch::Receiver<Target>) {
        while *control.borrow_and_update() == Target::Paused {
            if control.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A task's state, by Kafka Connect's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Paused,
    Failed(String),
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Running => "RUNNING",
            TaskState::Paused => "PAUSED",
            TaskState::Failed(_) => "FAILED",
        }
    }
}

struct TaskSlot {
    failed: Arc<Mutex<Option<String>>>,
    handle: JoinHandle<()>,
}

struct Running {
    config: ConnectorConfig,
    control: watch::Sender<Target>,
    metrics: Arc<Metrics>,
    tasks: Vec<TaskSlot>,
}

impl Running {
    fn stop(self) {
        for t in self.tasks {
            t.handle.abort();
        }
    }
}

/// First and longest wait before a task that failed is run again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs connectors.
pub struct Worker {
    config: WorkerConfig,
    /// The REST address, as Kafka Connect's `worker_id`.
    id: String,
    connectors: Mutex<BTreeMap<String, Running>>,
    /// Metrics of connectors, kept after one is deleted so counters never
    /// go backwards while the process runs.
    metrics: Mutex<BTreeMap<String, Arc<Metrics>>>,
    progress: MultiProgress,
}

impl Worker {
    pub fn new(config: WorkerConfig, id: String) -> Arc<Self> {
        Arc::new(Self {
            config,
            id,
            connectors: Mutex::new(BTreeMap::new()),
            metrics: Mutex::new(BTreeMap::new()),
            progress: MultiProgress::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.connectors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn metrics_of(&self, name: &str) -> Arc<Metrics> {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_owned()).or_default().clone()
    }

    fn start(&self, config: ConnectorConfig) -> Running {
        let (control, rx) = watch::channel(Target::Running);
        let metrics = self.metrics_of(&config.name);
        let tasks = (0..config.tasks())
            .map(|id| {
                let task = Task {
                    id,
                    config: config.clone(),
                    worker: self.config.clone(),
                    metrics: metrics.clone(),
                    control: rx.clone(),
                    progress: self.progress.clone(),
                };
                let failed = Arc::new(Mutex::new(None));
                let span = tracing::info_span!("connector", name = %config.name, task = id);
                let handle = tokio::spawn(supervise(task, failed.clone()).instrument(span));
                TaskSlot { failed, handle }
            })
            .collect();
        info!(connector = %config.name, class = config.class.name(), tasks = config.tasks(), "connector started");
        Running {
            config,
            control,
            metrics,
            tasks,
        }
    }

    /// Starts a connector (`ConnectError::Exists` if one has its name).
    pub fn create(&self, properties: &Properties) -> Result<ConnectorConfig, ConnectError> {
        let mut all = self.lock();
        if let Some(name) = properties.get("name").filter(|n| all.contains_key(*n)) {
            return Err(ConnectError::Exists(name.clone()));
        }
        let config = ConnectorConfig::parse(properties)?;
        let running = self.start(config.clone());
        all.insert(config.name.clone(), running);
        Ok(config)
    }

    /// Starts `name` with `properties`, replacing it if it runs; true when
    /// it is new.
    pub fn put(&self, name: &str, properties: &Properties) -> Result<bool, ConnectError> {
        let mut properties = properties.clone();
        properties.insert("name".into(), name.to_owned());
        let config = ConnectorConfig::parse(&properties)?;
        let mut all = self.lock();
        let old = all.remove(name);
        let created = old.is_none();
        if let Some(old) = old {
            old.stop();
        }
        let running = self.start(config);
        all.insert(name.to_owned(), running);
        Ok(created)
    }

    /// Stops and forgets `name` (its source offsets stay in the offsets
    /// topic, as in Kafka Connect).
    pub fn delete(&self, name: &str) -> bool {
        let old = self.lock().remove(name);
        old.map(Running::stop).is_some()
    }

    /// Stops and starts `name`'s tasks again.
    pub fn restart(&self, name: &str) -> bool {
        let mut all = self.lock();
        let Some(old) = all.remove(name) else { return false };
        let config = old.config.clone();
        old.stop();
        let running = self.start(config);
        all.insert(name.to_owned(), running);
        true
    }

    fn set_target(&self, name: &str, target: Target) -> bool {
        match self.lock().get(name) {
            Some(r) => {
                r.control.send_replace(target);
                true
            }
            None => false,
        }
    }

    pub fn pause(&self, name: &str) -> bool {
        self.set_target(name, Target::Paused)
    }

    pub fn resume(&self, name: &str) -> bool {
        self.set_target(name, Target::Running)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn config(&self, name: &str) -> Option<ConnectorConfig> {
        self.lock().get(name).map(|r| r.config.clone())
    }

    /// The state of each task of `name`.
    pub fn task_states(&self, name: &str) -> Option<Vec<TaskState>> {
        let all = self.lock();
        let r = all.get(name)?;
        let paused = *r.control.borrow() == Target::Paused;
        Some(
            r.tasks
                .iter()
                .map(|t| match t.failed.lock().ok().and_then(|f| f.clone()) {
                    Some(why) => TaskState::Failed(why),
                    None if paused => TaskState::Paused,
                    None => TaskState::Running,
                })
                .collect(),
        )
    }

    pub fn metrics(&self, name: &str) -> Option<Arc<Metrics>> {
        self.lock().get(name).map(|r| r.metrics.clone())
    }

    /// Every connector's counters in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let all: Vec<(String, Arc<Metrics>)> = self
            .metrics
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut out = String::new();
        type Family = (&'static str, &'static str, &'static str, fn(&Metrics) -> i64);
        let families: [Family; 4] = [
            (
                "courier_connect_records_total",
                "counter",
                "Records a connector sent (source) or wrote (sink).",
                |m| m.records() as i64,
            ),
            (
                "courier_connect_bytes_total",
                "counter",
                "Bytes of those records.",
                |m| m.bytes() as i64,
            ),
            (
                "courier_connect_errors_total",
                "counter",
                "Failed sends, writes and checks.",
                |m| m.errors() as i64,
            ),
            (
                "courier_connect_lag",
                "gauge",
                "Files waiting to be sent (source), records behind the topics' ends (sink).",
                |m| m.lag(),
            ),
        ];
        for (name, kind, help, value) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (connector, m) in &all {
                out.push_str(&format!("{name}{{connector=\"{connector}\"}} {}\n", value(m)));
            }
        }
        out
    }
}

/// Runs a task, again after a failure that may pass, until it fails for
/// good or is stopped.
async fn supervise(task: Task, failed: Arc<Mutex<Option<String>>>) {
    let mut wait = RETRY_FIRST;
    loop {
        let result = if task.config.class.is_source() {
            source::run(task.clone()).await
        } else {
            sink::run(task.clone()).await
        };
        match result {
            Ok(()) => return,
            Err(e) if e.is_retriable() => {
                task.metrics.error();
                warn!("task stopped, running it again in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => {
                error!("task failed: {e}");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e.to_string());
                }
                return;
            }
        }
    }
}

/// A running runner: its REST address and its worker.
pub struct Runner {
    pub addr: std::net::SocketAddr,
    pub worker: Arc<Worker>,
    server: JoinHandle<()>,
}

impl Runner {
    /// Starts a runner with `properties` (the worker's settings, and a
    /// connector's if they name one), serving REST on `listeners`.
    pub async fn start(properties: &Properties) -> Result<Self, ConnectError> {
        let config = WorkerConfig::parse(properties)?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ConnectError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ConnectError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
        let worker = Worker::new(config, addr.to_string());
        if properties.contains_key("name") {
            worker.create(properties)?;
        }
        let app = rest::router(worker.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!("REST interface stopped: {e}");
            }
        });
        Ok(Self { addr, worker, server })
    }

    /// Stops every connector and the REST interface.
    pub fn stop(self) {
        for name in self.worker.names() {
            self.worker.delete(&name);
        }
        self.server.abort();
    }
}

/// `courier connect --config FILE`: runs until interrupted.
pub async fn run(path: &Path) -> Result<(), ConnectError> {
    let properties = config::load(path)?;
    let runner = Runner::start(&properties).await?;
    eprintln!(
        "courier connect: REST interface on http://{}; connectors: {}",
        runner.addr,
        runner.worker.names().join(", ")
    );
    let _ = tokio::signal::ctrl_c().await;
    runner.stop();
    Ok(())
}
