//! Replication: a node's part in the replica cluster that orders its
//! partitions (PBFT, 3f + 1 replicas, any f of them Byzantine).
//!
//! * [`identity`]: TLS certificates and signing keys.
//! * [`transport`]: one mutually authenticated TLS connection per pair of replicas.
//! * [`engine`]: the thread that owns the node's PBFT replicas and is their environment.
//! * [`executor`]: the one writer of the node's ledger, executing ordered batches.
//! * [`command`]: what the cluster orders (produce, receipt).
//! * [`raft_link`]: the Raft group's RPCs over the same transport.
//!
//! Every partition is its own PBFT cluster over the same members (its own
//! sequence numbers, checkpoints and certificates, its id in every
//! signature), so partitions order and certify independently. Topics,
//! nodes and clusters are the Raft group's (`consensus::raft`): a change
//! is a Raft command, and each node's executor adopts the topics as its
//! Raft state reaches them ([`sync_catalog`]).
//!
//! Handlers see none of this: they submit through [`Replicated`] (behind
//! [`crate::sequencer::Sequencer`]) and read the local ledger, which serves
//! only certified blocks.

pub mod calls;
pub mod command;
pub mod engine;
pub mod executor;
pub mod forward;
pub mod global;
pub mod identity;
pub mod raft_link;
pub mod repair;
pub mod transport;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use courier_consensus::ledger::{LedgerStore, PartitionKey, RequestRecord};
use courier_consensus::pbft::log::DurableLog;
use courier_consensus::pbft::{self, wire, Digest, QuorumCert, RequestId, SignedMessage};
use courier_consensus::raft::{MetaCommand, MetaRaft, MetaState, NodeId, NodeRecord, RaftLimits};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::BrokerConfig;
use crate::shutdown::ShutdownSignal;
use crate::topics::Topics;
use command::Command;
use raft_link::RaftLink;
use transport::{Frame, Inbound, Transport};

/// Where the ledger records the members' public keys (concatenated).
pub const MEMBERS_KEY: &str = "cluster_members";

/// Where the ledger records the keys of the cluster ordering `pk`.
pub fn partition_members_key(pk: &PartitionKey) -> String {
    let mut key = String::from("members/");
    for b in pk.to_bytes() {
        use std::fmt::Write;
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// How often replicas' timers are driven.
const TICK: Duration = Duration::from_millis(5);
/// Inputs queued for the engine before senders wait.
const INBOX_MAX: usize = 1 << 16;

/// Who is in the cluster.
pub struct Membership {
    pub me: u8,
    /// Every replica's ed25519 public key, by replica id.
    pub members: Vec<Bytes>,
    /// Every replica's peer address, by replica id.
    pub peers: Vec<String>,
    /// The deployment's identity: SHA-256 over its first node's key (the
    /// one that started the Raft group), the same on nodes that joined later.
    fingerprint: Digest,
}

impl Membership {
    pub fn new(me: u8, members: Vec<Bytes>, peers: Vec<String>) -> Self {
        let fingerprint = pbft::cluster_fingerprint(&members[..members.len().min(1)]);
        Self {
            me,
            members,
            peers,
            fingerprint,
        }
    }

    /// Every configured node but this one.
    pub fn others(&self) -> Vec<NodeId> {
        let me = NodeId::from(self.me);
        (0..self.peers.len() as NodeId).filter(|p| *p != me).collect()
    }

    /// The Kafka cluster id every member reports: from the fingerprint.
    pub fn kafka_cluster_id(&self) -> String {
        uuid::Uuid::from_slice(&self.fingerprint[..16])
            .map(|u| {
                use std::fmt::Write;
                let mut s = String::new();
                for b in u.as_bytes() {
                    let _ = write!(s, "{b:02x}");
                }
                s
            })
            .unwrap_or_default()
    }
}

/// One PBFT cluster as a member sees it: which nodes are its replicas, and
/// under which keys they sign.
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster's id in the Raft state.
    pub id: u32,
    /// Node id of each replica, by replica index.
    pub nodes: Vec<u8>,
    /// Each replica's ed25519 public key, by replica index.
    pub keys: Vec<Bytes>,
    /// This node's replica index in the cluster.
    pub me: u8,
    fingerprint: Digest,
}

impl ClusterView {
    pub fn new(id: u32, nodes: Vec<u8>, keys: Vec<Bytes>, me: u8) -> Self {
        let fingerprint = pbft::cluster_fingerprint(&keys);
        Self {
            id,
            nodes,
            keys,
            me,
            fingerprint,
        }
    }

    /// The id a partition's replicas sign under: from the members' keys
    /// and the partition, so nothing replays across clusters or partitions.
    pub fn instance(&self, pk: &PartitionKey) -> u64 {
        pbft::instance_id(&self.fingerprint, &pk.to_bytes())
    }

    pub fn quorum(&self) -> usize {
        2 * ((self.keys.len().max(1) - 1) / 3) + 1
    }

    /// The node behind a replica index.
    pub fn node(&self, replica: u8) -> Option<u8> {
        self.nodes.get(replica as usize).copied()
    }
}

/// The partitions this node's replicas order, each with its cluster.
pub type Served = Vec<(PartitionKey, Arc<ClusterView>)>;

/// What the engine is told.
pub enum Input {
    /// A client's work for a partition's (or the metadata) cluster.
    Submit {
        pk: PartitionKey,
        payload: Bytes,
        reply: oneshot::Sender<RequestRecord>,
    },
    Peer {
        message: SignedMessage,
    },
    Tick,
    /// The executor wrote the block for `seq`, reaching `state`; `local`
    /// holds the outcomes of our own requests in it.
    Executed {
        pk: PartitionKey,
        seq: u64,
        state: Digest,
        local: Vec<RequestRecord>,
    },
    /// The executor installed blocks from a peer up to `cert.seq`.
    Transferred {
        pk: PartitionKey,
        cert: QuorumCert,
        executed: Vec<RequestId>,
        local: Vec<RequestRecord>,
    },
    /// The executor lost what it was handed for `pk` after height
    /// `durable - 1` (a failed write it recovered from): see
    /// `pbft::Event::Rewind`.
    Rewind {
        pk: PartitionKey,
        durable: u64,
    },
    /// The partitions this node orders now, and their clusters.
    Partitions(Served),
    /// The node is shutting down.
    Stop,
}

/// Routes frames from peers.
struct Router {
    engine: mpsc::Sender<Input>,
    store: Arc<LedgerStore>,
    executor: std::sync::mpsc::SyncSender<executor::Job>,
    transport: OnceLock<Arc<Transport>>,
    raft: Arc<RaftLink>,
    forward: Arc<forward::Forwarder>,
}

/// Largest state-transfer answer a peer may ask for.
const SERVE_BYTES_MAX: u32 = 32 << 20;

impl Inbound for Router {
    async fn frame(&self, from: u8, frame: Frame) {
        match frame {
            Frame::Consensus(bytes) => match wire::decode_message(bytes) {
                Ok(message) => {
                    let _ = self.engine.send(Input::Peer { message }).await;
                }
                Err(e) => {
                    metrics::counter!("courier_peer_messages_malformed_total").increment(1);
                    debug!(from, error = %e, "malformed consensus message");
                }
            },
            Frame::Fetch {
                pk,
                from_height,
                max_bytes,
            } => {
                let store = self.store.clone();
                let max_bytes = max_bytes.min(SERVE_BYTES_MAX);
                let served =
                    tokio::task::spawn_blocking(move || engine::serve_fetch(&store, &pk, from_height, max_bytes)).await;
                match served {
                    Ok(Ok(blocks)) => {
                        if let Some(t) = self.transport.get() {
                            t.send(
                                from,
                                Frame::Blocks {
                                    pk,
                                    from_height,
                                    blocks,
                                }
                                .encode(),
                            );
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot serve a state transfer"),
                    Err(e) => warn!(error = %e, "state transfer task failed"),
                }
            }
            Frame::Blocks {
                pk,
                from_height,
                blocks,
            } => {
                if blocks.is_empty() {
                    return;
                }
                let job = executor::Job::Install {
                    pk,
                    from_height,
                    blocks,
                };
                if self.executor.try_send(job).is_err() {
                    debug!("executor busy: a state transfer answer is dropped (it will be asked again)");
                }
            }
            Frame::Raft { call, reply, body } => self.raft.frame(from, call, reply, body),
            Frame::Forward { call, reply, body } => self.forward.frame(from, call, reply, body),
            Frame::Hello { .. } => {}
        }
    }
}

/// The client-facing side: submit work, learn when certified blocks land.
pub struct Replicated {
    inbox: mpsc::Sender<Input>,
    commits: watch::Receiver<u64>,
    pub membership: Arc<Membership>,
    /// This node's member of the Raft group.
    pub meta: Arc<MetaRaft<RaftLink>>,
    /// The Raft state version whose topics this node's handlers see.
    catalog_version: watch::Receiver<u64>,
    topics: Arc<Topics>,
    forward: Arc<forward::Forwarder>,
    /// PBFT clusters the configured nodes form.
    clusters_configured: usize,
    /// The global-ledger task (working while this node leads Raft).
    pub global: Arc<global::GlobalTask>,
    global_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Replicated {
    /// Queues a command for `pk`'s cluster (in call order); the receiver
    /// resolves with its outcome once the block holding it is certified,
    /// and is dropped if the node cannot order it (unknown partition,
    /// shutting down).
    pub async fn submit(&self, pk: PartitionKey, command: Command) -> oneshot::Receiver<RequestRecord> {
        self.submit_encoded(pk, command.encode()).await
    }

    /// [`Replicated::submit`] for a command already encoded.
    pub async fn submit_encoded(&self, pk: PartitionKey, payload: Bytes) -> oneshot::Receiver<RequestRecord> {
        if !self.topics.serves(&pk) {
            // Another cluster orders it: one of its members submits it.
            return match self.topics.route(&pk) {
                Some(route) => self.forward.submit(self.live_leader(&route) as u8, pk, payload),
                None => oneshot::channel().1,
            };
        }
        let (reply, rx) = oneshot::channel();
        let _ = self.inbox.send(Input::Submit { pk, payload, reply }).await;
        rx
    }

    /// See [`forward::Forwarder::serve_objects`].
    pub fn serve_objects(&self, server: Arc<dyn forward::ObjectServer>) {
        self.forward.serve_objects(server);
    }

    /// See [`forward::Forwarder::object`].
    pub async fn object(&self, to: u8, request: Bytes, wait: std::time::Duration) -> Option<Bytes> {
        self.forward.object(to, request, wait).await
    }

    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// A group's committed offsets: this node's own partitions from its
    /// ledger, the others' from a member of each other cluster.
    pub async fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(PartitionKey, courier_consensus::ledger::CommittedOffset)>, (i16, String)> {
        let store = self.forward.store();
        let g = group.to_owned();
        let mut out = tokio::task::spawn_blocking(move || store.committed_offsets(&g))
            .await
            .map_err(|e| (kafka_protocol::ResponseError::KafkaStorageError.code(), e.to_string()))?
            .map_err(|e| (kafka_protocol::ResponseError::KafkaStorageError.code(), e.to_string()))?;
        out.retain(|(pk, _)| self.topics.serves(pk));
        // One member per other cluster: the first leader seen for it.
        let mut asked = std::collections::BTreeSet::new();
        let mut others = std::collections::BTreeSet::new();
        for t in self.topics.all() {
            for p in 0..t.partitions {
                let pk = t.partition_key(p);
                if let Some(route) = self.topics.route(&pk).filter(|r| !r.served) {
                    if others.insert(route.replicas.clone()) {
                        asked.insert(self.live_leader(&route) as u8);
                    }
                }
            }
        }
        for node in asked {
            let theirs = self.forward.offsets(node, group).await.ok_or((
                kafka_protocol::ResponseError::CoordinatorLoadInProgress.code(),
                format!("node {node} did not answer for the group's offsets"),
            ))?;
            out.extend(theirs.into_iter().filter(|(pk, _)| !self.topics.serves(pk)));
        }
        Ok(out)
    }

    /// Fault injection for tests: this node serves blocks with forged
    /// certificates to the global-ledger task.
    pub fn set_byzantine(&self, on: bool) {
        self.forward.set_byzantine(on);
    }

    /// Fault injection for tests: cuts (or restores) the network between
    /// this node and node `peer`.
    pub fn set_cut(&self, peer: u8, cut: bool) {
        self.forward.set_cut(peer, cut);
    }

    /// The node to send a partition's work to: its route's leader while
    /// this node reaches it, else the first member of its cluster it
    /// reaches (a stopped node leads nothing).
    pub fn live_leader(&self, route: &crate::topics::Route) -> i32 {
        if self.is_up(route.leader) {
            return route.leader;
        }
        route
            .replicas
            .iter()
            .copied()
            .find(|r| self.is_up(*r))
            .unwrap_or(route.leader)
    }

    /// Whether node `node` is reachable from this one now.
    pub fn is_up(&self, node: i32) -> bool {
        u8::try_from(node).is_ok_and(|n| n == self.membership.me || self.forward.is_up(n))
    }

    /// Whether node `node` is listed to clients: reachable now, or not for
    /// less than a session timeout (see [`transport::NODE_SESSION_TIMEOUT`]).
    /// Every node [`Replicated::is_up`] names is listed.
    pub fn is_listed(&self, node: i32) -> bool {
        u8::try_from(node).is_ok_and(|n| n == self.membership.me || self.forward.is_listed(n))
    }

    /// Orders a structural change through Raft and waits (bounded) until
    /// this node's handlers see its outcome. A refusal is an `Err` with
    /// its Kafka error code.
    pub async fn change(&self, command: MetaCommand) -> Result<(), (i16, String)> {
        if matches!(
            command,
            MetaCommand::CreateTopic { .. } | MetaCommand::CreatePartitions { .. }
        ) {
            // Right after the nodes start, their clusters may not all be
            // formed yet: partitions are placed over the ones that are.
            let expected = self.clusters_configured;
            let mut state = self.meta.subscribe();
            let _ = tokio::time::timeout(CATALOG_WAIT_MAX, state.wait_for(|s| s.clusters.len() >= expected)).await;
        }
        let response = self.meta.write(command).await.map_err(|e| {
            (
                kafka_protocol::ResponseError::RequestTimedOut.code(),
                format!("the cluster configuration could not be changed: {e}"),
            )
        })?;
        if response.error_code != 0 {
            return Err((response.error_code, response.message.unwrap_or_default()));
        }
        let mut seen = self.catalog_version.clone();
        let _ = tokio::time::timeout(CATALOG_WAIT_MAX, seen.wait_for(|v| *v >= response.version)).await;
        Ok(())
    }

    /// Registers this node in the Raft state (its Kafka address
    /// `kafka`, its organization) and, once the other nodes of its group
    /// (`cluster_size` nodes in id order) are registered, forms their PBFT
    /// cluster if none serves them yet. Runs until it has, or until
    /// shutdown.
    ///
    /// A node that joins a running deployment (`joining`) first asks the
    /// Raft group, through the nodes its settings name, to add it.
    pub fn join(
        &self,
        kafka: String,
        organization: String,
        cluster_size: usize,
        joining: bool,
        mut stop: ShutdownSignal,
    ) {
        let meta = self.meta.clone();
        let membership = self.membership.clone();
        tokio::spawn(async move {
            if joining {
                let (peers, addr) = (membership.others(), membership.peers[membership.me as usize].clone());
                tokio::select! {
                    _ = meta.request_join(&peers, &addr) => {}
                    _ = stop.wait() => return,
                }
            }
            let me = NodeRecord {
                id: NodeId::from(membership.me),
                kafka,
                peer: membership.peers[membership.me as usize].clone(),
                organization,
                public_key: membership.members[membership.me as usize].to_vec(),
            };
            // The configured nodes form clusters of `cluster_size` in id
            // order; this node proposes its own.
            let size = cluster_size.max(1) as NodeId;
            let first = NodeId::from(membership.me) / size * size;
            let members: Vec<NodeId> = (first..first + size).collect();
            tokio::select! {
                _ = join_cluster(&meta, me, members) => {}
                _ = stop.wait() => {}
            }
        });
    }

    /// Asks the Raft group to remove this node (see
    /// `MetaRaft::request_leave`), through every configured node in turn.
    pub async fn leave(&self) -> Result<(), String> {
        self.meta.request_leave(&self.membership.others(), 20).await
    }

    /// Stops the engine (the executor follows once nothing more reaches it).
    pub async fn stop(&self) {
        let _ = self.inbox.send(Input::Stop).await;
        // The global-ledger task reads the ledger: it ends (at shutdown,
        // which has been triggered) before the ledger closes.
        let task = self.global_task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.meta.shutdown().await;
    }
}

/// Longest a topic change waits to become visible on this node after Raft
/// applied it.
const CATALOG_WAIT_MAX: Duration = Duration::from_secs(5);
/// Pause between attempts to register or form a cluster while no leader
/// answers.
const JOIN_RETRY: Duration = Duration::from_millis(200);

async fn join_cluster(meta: &MetaRaft<RaftLink>, me: NodeRecord, members: Vec<NodeId>) {
    loop {
        if meta.state().nodes.get(&me.id) == Some(&me) {
            break;
        }
        match meta.write(MetaCommand::RegisterNode(me.clone())).await {
            Ok(r) if r.error_code == 0 => info!(node = me.id, "registered in the Raft group"),
            Ok(r) => warn!(node = me.id, error = ?r.message, "registration refused"),
            Err(e) => debug!(error = %e, "registration not ordered yet"),
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
    // Any registered node may propose the cluster: the first proposal
    // ordered forms it, the others are refused (their members serve one).
    let mut state = meta.subscribe();
    loop {
        let ready = {
            let s = state.borrow_and_update();
            let formed = members.iter().all(|m| s.cluster_of_node(*m).is_some());
            let registered = members.iter().all(|m| s.nodes.contains_key(m));
            (formed, registered)
        };
        match ready {
            (true, _) => return,
            (false, true) => {
                let _ = meta
                    .write(MetaCommand::FormCluster {
                        members: members.clone(),
                    })
                    .await;
            }
            (false, false) => {
                let _ = tokio::time::timeout(JOIN_RETRY * 5, state.changed()).await;
            }
        }
    }
}

/// The partitions node `me` orders in `state`, each with its cluster.
fn served_by(state: &MetaState, me: NodeId) -> Served {
    let mut out = Vec::new();
    for cluster in state.clusters.values() {
        let Some(index) = cluster.members.iter().position(|m| *m == me) else {
            continue;
        };
        let keys = cluster
            .members
            .iter()
            .map(|m| Bytes::from(state.nodes.get(m).map(|n| n.public_key.clone()).unwrap_or_default()))
            .collect();
        let nodes = cluster.members.iter().map(|m| *m as u8).collect();
        let view = Arc::new(ClusterView::new(cluster.id, nodes, keys, index as u8));
        out.extend(state.partitions_of(cluster.id).into_iter().map(|pk| (pk, view.clone())));
    }
    out
}

/// Where clients go for each partition, seen from node `me`: to `me` if it
/// orders the partition, else to a member of the partition's cluster,
/// preferably one of `me`'s organization (spread by partition number).
fn routes_from(state: &MetaState, me: NodeId) -> crate::topics::Routes {
    use crate::topics::{BrokerAddr, Route, Routes};
    let my_org = state.nodes.get(&me).map(|n| n.organization.as_str());
    let mut partitions = std::collections::HashMap::new();
    for t in state.topics.values() {
        for (p, cluster) in t.placement.iter().enumerate() {
            let Some(c) = state.clusters.get(cluster) else { continue };
            let served = c.members.contains(&me);
            let leader = if served {
                me
            } else {
                let own: Vec<NodeId> = c
                    .members
                    .iter()
                    .copied()
                    .filter(|m| state.nodes.get(m).map(|n| n.organization.as_str()) == my_org)
                    .collect();
                let pool = if own.is_empty() { &c.members } else { &own };
                pool[p % pool.len()]
            };
            partitions.insert(
                t.record.partition_key(p as i32),
                Route {
                    leader: leader as i32,
                    replicas: c.members.iter().map(|m| *m as i32).collect(),
                    served,
                },
            );
        }
    }
    let brokers = state
        .nodes
        .values()
        .map(|n| BrokerAddr {
            id: n.id as i32,
            listeners: crate::topics::Endpoint::parse_list(&n.kafka),
            organization: n.organization.clone(),
        })
        .collect();
    Routes { partitions, brokers }
}

/// Hands the executor every new Raft state's topics, in order.
async fn sync_catalog(
    me: NodeId,
    mut state: watch::Receiver<Arc<MetaState>>,
    executor: std::sync::mpsc::SyncSender<executor::Job>,
    mut stop: ShutdownSignal,
) {
    let mut sent_version = None;
    loop {
        let snapshot = state.borrow_and_update().clone();
        // Global-ledger appends change the state but not the catalog.
        if sent_version != Some(snapshot.version) {
            sent_version = Some(snapshot.version);
            let job = executor::Job::Catalog {
                topics: snapshot
                    .topics
                    .iter()
                    .map(|(name, t)| (name.clone(), t.record.clone()))
                    .collect(),
                served: served_by(&snapshot, me),
                routes: routes_from(&snapshot, me),
                version: snapshot.version,
            };
            let executor = executor.clone();
            let sent = tokio::task::spawn_blocking(move || executor.send(job).is_ok()).await;
            if !matches!(sent, Ok(true)) {
                return;
            }
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = stop.wait() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Log(#[from] pbft::log::LogError),
    #[error(transparent)]
    Store(#[from] courier_consensus::ledger::StoreError),
    #[error("cannot listen for peers on {addr}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot start a replication thread: {0}")]
    Thread(std::io::Error),
    /// Boxed: openraft's errors are large, and this one is rare.
    #[error(transparent)]
    Raft(Box<courier_consensus::raft::RaftStartError>),
}

/// A running replica's threads.
pub struct Threads {
    pub engine: std::thread::JoinHandle<()>,
    pub executor: std::thread::JoinHandle<()>,
}

/// Starts this node's replicas: transport, engine and executor.
pub async fn start(
    config: &BrokerConfig,
    store: Arc<LedgerStore>,
    topics: Arc<Topics>,
    shutdown: ShutdownSignal,
) -> Result<(Replicated, Threads), ReplicationError> {
    let identity = identity::load(config)?;
    let membership = Arc::new(Membership::new(
        identity.id,
        identity.members.clone(),
        config.cluster_replicas.clone(),
    ));
    // Consumers see what was certified before a restart at once.
    topics.set_states(certified_states(&store)?);
    let (log, contents) = DurableLog::open(&log_path(config))?;
    // Recorded so that `courier ledger verify` can check certificates offline.
    store.put_identity(MEMBERS_KEY, &membership.members.concat())?;
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_MAX);
    let (jobs_tx, jobs_rx) = executor::channel();
    let (commits_tx, commits_rx) = watch::channel(0);
    let (catalog_tx, catalog_rx) = watch::channel(0);
    let raft_link = Arc::new(RaftLink::default());
    let forwarder = Arc::new(forward::Forwarder::new(inbox_tx.clone(), store.clone()));
    let addr = config
        .peer_listener
        .clone()
        .unwrap_or_else(|| config.cluster_replicas[identity.id as usize].clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ReplicationError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let router = Arc::new(Router {
        engine: inbox_tx.clone(),
        store: store.clone(),
        executor: jobs_tx.clone(),
        transport: OnceLock::new(),
        raft: raft_link.clone(),
        forward: forwarder.clone(),
    });
    let transport = Arc::new(
        transport::start(
            identity.id,
            config.cluster_replicas.clone(),
            config.cluster_join,
            listener,
            identity.server.clone(),
            identity.client.clone(),
            router.clone(),
            shutdown.clone(),
        )
        .await,
    );
    let _ = router.transport.set(transport.clone());
    let meta = Arc::new(
        MetaRaft::start(
            NodeId::from(identity.id),
            &config.log_dirs.join(crate::RAFT_FILE),
            raft_link.clone(),
            RaftLimits {
                snapshot_every_entries: config.raft_snapshot_every_entries.max(1),
                ..RaftLimits::default()
            },
        )
        .await
        .map_err(|e| ReplicationError::Raft(Box::new(e)))?,
    );
    raft_link.attach(transport.clone(), meta.clone());
    forwarder.attach(transport.clone());
    if identity.id == 0 {
        // The first node starts the group with every configured node as a
        // voter; on a restart (or on the others) this does nothing.
        let voters = config
            .cluster_replicas
            .iter()
            .enumerate()
            .map(|(id, peer)| (id as NodeId, openraft::BasicNode::new(peer)))
            .collect();
        if let Err(e) = meta.initialize(voters).await {
            warn!(error = %e, "cannot initialize the Raft group");
        }
    }
    let executor = executor::Executor::new(
        store.clone(),
        topics.clone(),
        membership.clone(),
        jobs_rx,
        inbox_tx.clone(),
        commits_tx,
        catalog_tx,
    )?;
    let executor = executor::spawn(executor).map_err(ReplicationError::Thread)?;
    let pbft_config = pbft::Config {
        cluster: 0,
        n: membership.members.len(),
        window: config.pbft_window,
        batch_bytes_max: config.pbft_batch_bytes_max,
        batch_delay_ms: config.pbft_batch_delay_ms,
        view_change_timeout_ms: config.pbft_view_change_timeout_ms,
        retransmit_ms: config.pbft_retransmit_ms,
        waiting_requests_max: 1 << 16,
    };
    // Request numbers never repeat across restarts: each life of the node
    // numbers from a fresh boot count.
    let boot = store.bump_counter("replica_boots")?;
    tokio::spawn(sync_catalog(
        NodeId::from(identity.id),
        meta.subscribe(),
        jobs_tx.clone(),
        shutdown.clone(),
    ));
    let global = Arc::new(global::GlobalTask::new(
        NodeId::from(identity.id),
        meta.clone(),
        forwarder.clone(),
        store.clone(),
    ));
    let global_task = tokio::spawn(global.clone().run(shutdown.clone()));
    tokio::spawn(global.clone().run_rows(
        config.ledger_scrub_mb_per_second,
        std::time::Duration::from_millis(config.ledger_scrub_interval_ms),
        shutdown.clone(),
    ));
    tokio::spawn(
        repair::RepairTask {
            me: identity.id,
            store: store.clone(),
            topics: topics.clone(),
            forward: forwarder.clone(),
            executor: jobs_tx.clone(),
        }
        .run(shutdown.clone()),
    );
    let engine = engine::Engine::new(
        membership.clone(),
        pbft_config,
        std::fs::read(&config.replica_signing_key).map_err(|source| identity::IdentityError::Read {
            path: config.replica_signing_key.clone(),
            source,
        })?,
        store,
        log,
        contents,
        transport,
        jobs_tx,
        inbox_rx,
        boot << 40,
    );
    let engine = std::thread::Builder::new()
        .name(format!("courier-pbft-{}", identity.id))
        .spawn(move || engine.run())
        .map_err(ReplicationError::Thread)?;
    let ticks = inbox_tx.clone();
    let mut stop = shutdown;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => { let _ = ticks.try_send(Input::Tick); }
                _ = stop.wait() => return,
            }
        }
    });
    Ok((
        Replicated {
            inbox: inbox_tx,
            commits: commits_rx,
            membership,
            meta,
            catalog_version: catalog_rx,
            topics,
            forward: forwarder,
            clusters_configured: config.cluster_replicas.len() / config.cluster_size_or_all().max(1),
            global,
            global_task: std::sync::Mutex::new(Some(global_task)),
        },
        Threads { engine, executor },
    ))
}

/// Each partition's state as of its last certified block: what consumers
/// may see.
fn certified_states(
    store: &LedgerStore,
) -> Result<Vec<(PartitionKey, courier_consensus::ledger::PartitionState)>, courier_consensus::ledger::StoreError> {
    let mut out = Vec::new();
    for (pk, state) in store.partitions()? {
        let Some((height, _)) = store.last_cert(&pk)? else {
            continue;
        };
        if height + 1 == state.next_height {
            out.push((pk, state));
            continue;
        }
        // The head alone: a damaged payload is repaired while the node
        // runs, and must not keep it from starting.
        let (next_offset, hash) = match store.block_head(&pk, height) {
            Ok(Some((block, hash))) => (block.next_offset, hash),
            Ok(None) => continue,
            Err(courier_consensus::ledger::StoreError::Damaged(d)) => {
                // The block after it (stored, not yet certified) links to
                // its hash and starts where it ended.
                match store.block_head(&pk, height + 1) {
                    Ok(Some((next, _))) => (next.base_offset, next.prev_hash),
                    _ => {
                        warn!(error = %d, "a certified block's head is damaged; its partition is visible again from its next certificate");
                        continue;
                    }
                }
            }
            Err(e) => return Err(e),
        };
        out.push((
            pk,
            courier_consensus::ledger::PartitionState {
                next_height: height + 1,
                next_offset,
                last_hash: hash,
                log_start_offset: state.log_start_offset,
                max_timestamp: state.max_timestamp,
            },
        ));
    }
    Ok(out)
}

/// The durable log's file inside `log.dirs`.
pub fn log_path(config: &BrokerConfig) -> PathBuf {
    config.log_dirs.join("pbft.log")
}

/// A request's outcome as a Kafka error code and message.
pub fn outcome(record: Option<RequestRecord>) -> Result<RequestRecord, (i16, String)> {
    match record {
        Some(r) if r.error_code == 0 => Ok(r),
        Some(r) => Err((
            r.error_code,
            format!("refused by the replica cluster (error {})", r.error_code),
        )),
        None => Err((
            kafka_protocol::ResponseError::NotLeaderOrFollower.code(),
            "this node cannot order the request now".into(),
        )),
    }
}
