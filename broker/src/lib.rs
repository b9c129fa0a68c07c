//! The Courier broker: Kafka listener, request handlers, group coordinator,
//! the sequencer that writes the ledger, and the admin endpoint.
//!
//! Data flows one way: socket → [`connection`] (framing, decode) →
//! [`api`] handler → [`sequencer`] / [`topics`] / [`groups`] → ledger, and
//! back. Handlers never see redb or the contract directly.
#![deny(unsafe_code)]

pub mod admin;
mod alloc;
pub mod api;
pub mod config;
pub mod connection;
pub mod dev;
pub mod groups;
pub mod metrics;
pub mod replication;
pub mod sequencer;
pub mod server;
pub mod shutdown;
pub mod topics;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use courier_consensus::ledger::{Durability, LedgerStore, StoreError};
use tokio::sync::Mutex;

pub use config::BrokerConfig;
use groups::GroupCoordinator;
use sequencer::{LocalSequencer, Sequencer};
use shutdown::Shutdown;
use topics::Topics;

/// How long shutdown waits for the sequencer to drain.
const SEQUENCER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// File name of the ledger database inside `log.dirs`.
pub const LEDGER_FILE: &str = "ledger.redb";
/// The Raft log, state snapshots and global ledger, inside `log.dirs`.
pub const RAFT_FILE: &str = "raft.redb";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the ledger: {0}")]
    Ledger(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot start the ledger threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot start replication")]
    Replication(#[from] replication::ReplicationError),
}

/// How clients reach this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
}

/// Everything handlers share.
pub struct Broker {
    pub config: BrokerConfig,
    pub node: NodeInfo,
    pub cluster_id: String,
    pub store: Arc<LedgerStore>,
    pub topics: Arc<Topics>,
    pub sequencer: Sequencer,
    pub groups: GroupCoordinator,
    /// Serialises structural changes (create, delete, add partitions, alter).
    pub admin_lock: Mutex<()>,
}

impl Broker {
    pub fn ledger_path(config: &BrokerConfig) -> PathBuf {
        config.log_dirs.join(LEDGER_FILE)
    }
}

/// A running broker: its address, and how to stop it.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    pub kafka_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub shutdown: Shutdown,
    server: tokio::task::JoinHandle<()>,
    /// The threads that write the ledger: the sequencer, or a replica's
    /// engine and executor.
    ledger_threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningBroker {
    /// Stops accepting, lets connections finish their current request,
    /// drains the sequencer, and returns once the ledger is closed.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        let _ = (&mut self.server).await;
        self.broker.groups.stop();
        if let Sequencer::Replicated(r) = &self.broker.sequencer {
            r.stop().await;
        }
        let threads = std::mem::take(&mut self.ledger_threads);
        drop(self.broker);
        // The sequencer ends once the last broker handle is gone and its
        // rounds are durable. A handle still held elsewhere (an admin HTTP
        // connection lingering) must not hang shutdown: nothing acknowledged
        // depends on this wait, since replies follow durability.
        for t in threads {
            let joined =
                tokio::time::timeout(SEQUENCER_STOP_GRACE, tokio::task::spawn_blocking(move || t.join())).await;
            if joined.is_err() {
                tracing::warn!("ledger thread still running at shutdown; unacknowledged writes may be lost");
            }
        }
    }
}

/// Binds a TCP listener and reports the address it got (port 0 picks one).
pub(crate) async fn bind(addr: &str) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen {
        addr: addr.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// Opens the ledger, binds the listeners and starts serving.
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, StartError> {
    std::fs::create_dir_all(&config.log_dirs).map_err(|source| StartError::DataDir {
        path: config.log_dirs.clone(),
        source,
    })?;
    let durability = if config.ledger_fsync {
        Durability::Immediate
    } else {
        Durability::None
    };
    let store = Arc::new(LedgerStore::open(&Broker::ledger_path(&config), durability)?);
    let shutdown = Shutdown::new();
    let (sequencer, ledger_threads, cluster_id) = if config.replicated() {
        // Only certified blocks are visible; the executor publishes them.
        let topics = Arc::new(Topics::load(store.topics()?, Vec::new()));
        let (replicated, threads) =
            replication::start(&config, store.clone(), topics.clone(), shutdown.signal()).await?;
        let cluster_id = replicated.membership.kafka_cluster_id();
        (
            (Sequencer::Replicated(Arc::new(replicated)), topics),
            vec![threads.engine, threads.executor],
            cluster_id,
        )
    } else {
        let topics = Arc::new(Topics::load(store.topics()?, store.partitions()?));
        let (local, thread) = LocalSequencer::start(store.clone(), topics.clone()).map_err(StartError::Threads)?;
        ((Sequencer::Local(local), topics), vec![thread], store.cluster_id()?)
    };
    let (sequencer, topics) = sequencer;

    let (listener, kafka_addr) = bind(&config.listen_addr()?).await?;
    let (host, port) = match &config.advertised_listeners {
        Some(a) => config::host_port(a)?,
        None => (kafka_addr.ip().to_string(), kafka_addr.port()),
    };
    if let Some(r) = sequencer.replicated().filter(|_| !config.cluster_leave) {
        r.join(
            format!("{host}:{port}"),
            config.organization.clone(),
            config.cluster_size_or_all(),
            config.cluster_join,
            shutdown.signal(),
        );
    }
    let groups = GroupCoordinator::new(&config, shutdown.signal());
    let broker = Arc::new(Broker {
        node: NodeInfo {
            node_id: config.node_id,
            host,
            port,
        },
        cluster_id,
        config,
        store,
        topics,
        sequencer,
        groups,
        admin_lock: Mutex::new(()),
    });
    metrics::install();
    let admin_addr = if broker.config.admin_listener.is_empty() {
        None
    } else {
        Some(admin::serve(broker.clone(), shutdown.signal()).await?)
    };
    let server = tokio::spawn(server::serve(broker.clone(), listener, shutdown.signal()));
    Ok(RunningBroker {
        broker,
        kafka_addr,
        admin_addr,
        shutdown,
        server,
        ledger_threads,
    })
}
