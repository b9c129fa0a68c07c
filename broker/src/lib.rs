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
pub mod auth;
pub mod client;
pub mod config;
pub mod connection;
pub mod dev;
pub mod dev_secure;
pub mod groups;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod offchain;
pub mod replication;
pub mod scrub;
pub mod security;
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
/// How long shutdown waits for the last readers of the ledger.
const LEDGER_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
    #[error(transparent)]
    Tls(#[from] auth::tls::TlsSetupError),
    #[error(transparent)]
    Security(#[from] security::SecurityStoreError),
    #[error("cannot open the off-chain storage: {0}")]
    Offchain(#[from] courier_connector_plugins::storage::StorageError),
}

/// How clients reach this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: i32,
    /// The first listener's advertised address.
    pub host: String,
    pub port: u16,
    /// Every listener's advertised address, by listener name.
    pub listeners: Vec<topics::Endpoint>,
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
    /// ACLs, credentials, organizations.
    pub security: security::SecurityStore,
    pub authorizer: auth::authorizer::Authorizer,
    pub principal_mapping: auth::mapping::PrincipalMapping,
    /// Open client connections, in total and per address.
    pub connection_limits: limits::ConnectionLimits,
    /// Bytes of requests held, over every connection (`queued.max.request.bytes`).
    pub request_memory: Arc<memory::RequestMemory>,
    /// The background scrubber's progress and findings.
    pub scrub: Arc<std::sync::Mutex<scrub::ScrubStatus>>,
    /// This organization's storage for off-chain values.
    pub offchain: offchain::Offchain,
}

impl Broker {
    pub fn ledger_path(config: &BrokerConfig) -> PathBuf {
        config.log_dirs.join(LEDGER_FILE)
    }

    /// How long a SASL session lasts before it must authenticate again.
    pub fn reauth(&self) -> Option<std::time::Duration> {
        (self.config.connections_max_reauth_ms > 0)
            .then(|| std::time::Duration::from_millis(self.config.connections_max_reauth_ms))
    }

    /// The authorizer's view for one request.
    pub fn access<'a>(&'a self, ctx: &'a api::RequestContext) -> auth::authorizer::Access<'a> {
        auth::authorizer::Access::new(&self.authorizer, ctx, || self.security.snapshot())
    }
}

/// A running broker: its address, and how to stop it.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    /// The first listener's bound address.
    pub kafka_addr: SocketAddr,
    /// Every listener's name and bound address.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_addr: Option<SocketAddr>,
    pub shutdown: Shutdown,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The threads that write the ledger: the sequencer, or a replica's
    /// engine and executor.
    ledger_threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningBroker {
    /// Stops accepting, lets connections finish their current request,
    /// drains the sequencer, and returns once the ledger is closed (or,
    /// should a reader hold it past `LEDGER_CLOSE_GRACE`, says so).
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        for server in std::mem::take(&mut self.servers) {
            let _ = server.await;
        }
        self.broker.groups.stop();
        if let Sequencer::Replicated(r) = &self.broker.sequencer {
            r.stop().await;
        }
        let threads = std::mem::take(&mut self.ledger_threads);
        let store = self.broker.store.clone();
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
        // Reads in flight (a peer's block read, a group's offsets) hold the
        // ledger in blocking tasks a moment longer: the ledger is closed
        // only once they are done, so a restart can open it again.
        let deadline = tokio::time::Instant::now() + LEDGER_CLOSE_GRACE;
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("the ledger is still in use at shutdown; it closes when its last reader ends");
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

/// Recovers the ledger store after a write that failed outside the
/// ledger's writer (a producer id or a counter, say): until then redb takes
/// no write at all, and the writer may be idle and never find out. Probes
/// with bounded back-off; the writer's own recovery is the same call.
fn watch_store(store: &LedgerStore, stop: &std::sync::atomic::AtomicBool) {
    const POLL: std::time::Duration = std::time::Duration::from_millis(100);
    const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
    let mut wait = POLL;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(POLL);
        if !store.needs_recovery() {
            wait = POLL;
            continue;
        }
        match store.recover() {
            Ok(()) => wait = POLL,
            Err(e) => {
                tracing::debug!(error = %e, "the ledger does not take writes yet");
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                }
                wait = (wait * 2).min(BACKOFF_MAX);
            }
        }
    }
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
    store.set_verify_reads(config.ledger_verify_reads);
    if !config.ledger_verify_reads {
        tracing::warn!("ledger.verify.reads is off: blocks the disk changed are served as they read");
    }
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

    let specs = config.listener_specs()?;
    let mut bound = Vec::with_capacity(specs.len());
    let mut sockets = Vec::with_capacity(specs.len());
    for spec in &specs {
        let tls = if spec.protocol.tls() {
            Some(auth::tls::ClientTls::new(&auth::tls::TlsSettings {
                listener: &spec.name,
                keystore: config.ssl_keystore_location.as_deref(),
                truststore: config.ssl_truststore_location.as_deref(),
                client_auth: auth::tls::ClientAuth::parse(config.listener_setting(&spec.name, "ssl.client.auth"))?,
            })?)
        } else {
            None
        };
        let (socket, addr) = bind(&spec.addr).await?;
        bound.push((spec.name.clone(), addr));
        let mechanisms = if spec.protocol.sasl() {
            config.sasl_mechanisms(&spec.name)?
        } else {
            Vec::new()
        };
        sockets.push((
            Arc::new(server::Listener {
                name: spec.name.as_str().into(),
                protocol: spec.protocol,
                tls,
                mechanisms,
            }),
            socket,
        ));
    }
    let kafka_addr = bound[0].1;
    let mut endpoints = Vec::with_capacity(bound.len());
    for (name, addr) in config.advertised(&bound)? {
        let (host, port) = config::host_port(&addr)?;
        endpoints.push(topics::Endpoint { name, host, port });
    }
    let (host, port) = (endpoints[0].host.clone(), endpoints[0].port);
    if let Some(r) = sequencer.replicated().filter(|_| !config.cluster_leave) {
        r.join(
            topics::Endpoint::list(&endpoints),
            config.organization.clone(),
            config.cluster_size_or_all(),
            config.cluster_join,
            shutdown.signal(),
        );
    }
    let groups = GroupCoordinator::new(&config, shutdown.signal());
    let security = match sequencer.replicated() {
        Some(r) => security::SecurityStore::raft(r.clone()),
        None => security::SecurityStore::local(&config.log_dirs)?,
    };
    let authorizer = auth::authorizer::Authorizer::new(
        !config.authorizer_class_name.is_empty(),
        &config.super_users,
        config.allow_everyone_if_no_acl_found,
    );
    let principal_mapping = auth::mapping::PrincipalMapping::parse(&config.ssl_principal_mapping_rules)
        .map_err(|e| config::ConfigError::Invalid(e.to_string()))?;
    let scrubber = scrub::Scrubber::new(
        store.clone(),
        config.ledger_scrub_mb_per_second,
        config.ledger_scrub_interval_ms,
    );
    let scrub = scrubber.status();
    let stop_scrub = scrubber.stopper();
    let mut ledger_threads = ledger_threads;
    ledger_threads.push(
        std::thread::Builder::new()
            .name("courier-scrub".into())
            .spawn(move || scrubber.run())
            .map_err(StartError::Threads)?,
    );
    let watched = store.clone();
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_watch.clone();
    ledger_threads.push(
        std::thread::Builder::new()
            .name("courier-store-watch".into())
            .spawn(move || watch_store(&watched, &stop))
            .map_err(StartError::Threads)?,
    );
    let mut stopping = shutdown.signal();
    tokio::spawn(async move {
        stopping.wait().await;
        stop_scrub.store(true, std::sync::atomic::Ordering::Relaxed);
        stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let offchain = offchain::Offchain::open(&config).await?;
    let broker = Arc::new(Broker {
        scrub,
        offchain,
        node: NodeInfo {
            node_id: config.node_id,
            host,
            port,
            listeners: endpoints,
        },
        security,
        authorizer,
        principal_mapping,
        connection_limits: limits::ConnectionLimits::new(&config)?,
        request_memory: memory::RequestMemory::new(config.queued_max_request_bytes),
        cluster_id,
        config,
        store,
        topics,
        sequencer,
        groups,
        admin_lock: Mutex::new(()),
    });
    if let Some(r) = broker.sequencer.replicated() {
        r.serve_objects(Arc::new(offchain::ObjectService {
            broker: Arc::downgrade(&broker),
        }));
    }
    metrics::install();
    let admin_addr = if broker.config.admin_listener.is_empty() {
        None
    } else {
        Some(admin::serve(broker.clone(), shutdown.signal()).await?)
    };
    let servers = sockets
        .into_iter()
        .map(|(listener, socket)| tokio::spawn(server::serve(broker.clone(), listener, socket, shutdown.signal())))
        .collect();
    Ok(RunningBroker {
        broker,
        kafka_addr,
        listeners: bound,
        admin_addr,
        shutdown,
        servers,
        ledger_threads,
    })
}
