//! Layer 2: one Raft group (openraft) of every node, holding the cluster's
//! configuration — nodes, PBFT clusters, topics and where each partition is
//! ordered.
//!
//! * [`state_machine`]: [`MetaState`] and the commands that change it, a
//!   pure function of the ordered log.
//! * [`store`]: the log and the state machine's snapshots in redb.
//! * [`network`]: Raft RPCs over any [`RaftTransport`].
//!
//! Applications talk to [`MetaRaft`]: [`MetaRaft::write`] orders a command
//! from any node (forwarding it to the leader), [`MetaRaft::subscribe`]
//! follows the state as this node applies it.

pub mod global;
pub mod network;
pub mod state_machine;
pub mod store;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft};
use tokio::sync::watch;
use tracing::{debug, info};

pub use network::{RaftTransport, TransportError};
pub use state_machine::{ClusterRecord, MetaCommand, MetaResponse, MetaState, NodeId, NodeRecord, TopicEntry};

use network::{Network, Rpc, RpcReply, WriteOutcome};

openraft::declare_raft_types!(
    /// Courier's Raft types: commands are [`MetaCommand`]s, node ids `u64`,
    /// a node is known by its peer address.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Raft timing and log limits; defaults suit a LAN.
#[derive(Clone, Debug)]
pub struct RaftLimits {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Entries between snapshots (and kept after one, for slow followers).
    pub snapshot_every_entries: u64,
    /// How long [`MetaRaft::write`] keeps trying to reach a leader.
    pub write_timeout_ms: u64,
    /// One RPC's wait for its answer.
    pub rpc_timeout_ms: u64,
}

impl Default for RaftLimits {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_entries: 1000,
            write_timeout_ms: 10_000,
            rpc_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("cannot open the Raft store: {0}")]
    Store(#[from] redb::Error),
    #[error("invalid Raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("Raft did not start: {0}")]
    Fatal(#[from] openraft::error::Fatal<NodeId>),
}

/// Why a write did not take effect (a refusal by the state machine is not
/// an error: it is a [`MetaResponse`] with an error code).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no Raft leader was reachable within {0:?}")]
    NoLeader(Duration),
    #[error("the Raft node stopped: {0}")]
    Stopped(String),
}

/// A node's member of the Raft group.
pub struct MetaRaft<T> {
    pub id: NodeId,
    raft: Raft<TypeConfig>,
    transport: Arc<T>,
    state: watch::Receiver<Arc<MetaState>>,
    limits: RaftLimits,
    global: std::sync::Weak<redb::Database>,
    /// Global-ledger rows found damaged, shared by every handle.
    damaged_rows: global::DamagedRows,
}

impl<T: RaftTransport> MetaRaft<T> {
    /// Opens the node's Raft file at `path` and starts its Raft task.
    pub async fn start(id: NodeId, path: &Path, transport: Arc<T>, limits: RaftLimits) -> Result<Self, RaftStartError> {
        let (log, sm) = store::open(path)?;
        let state = sm.subscribe();
        // Only a weak handle: the file closes when Raft stops.
        let global = sm.global().downgrade();
        let damaged_rows = sm.damaged_rows();
        let config = Config {
            cluster_name: "courier".into(),
            heartbeat_interval: limits.heartbeat_ms,
            election_timeout_min: limits.election_timeout_min_ms,
            election_timeout_max: limits.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(limits.snapshot_every_entries),
            max_in_snapshot_log_to_keep: limits.snapshot_every_entries,
            ..Default::default()
        }
        .validate()?;
        let network = Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm).await?;
        Ok(Self {
            id,
            raft,
            transport,
            state,
            limits,
            global,
            damaged_rows,
        })
    }

    /// Makes `members` the first voters, if this node has no Raft state
    /// yet (a second call, or a call on an initialized node, does nothing).
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), WriteError> {
        match self.raft.is_initialized().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(WriteError::Stopped(e.to_string())),
        }
        match self.raft.initialize(members).await {
            Ok(()) => {
                info!(node = self.id, "Raft group initialized");
                Ok(())
            }
            Err(RaftError::APIError(e)) => {
                debug!(error = %e, "Raft initialization not needed");
                Ok(())
            }
            Err(RaftError::Fatal(e)) => Err(WriteError::Stopped(e.to_string())),
        }
    }

    /// The state as this node has applied it.
    pub fn state(&self) -> Arc<MetaState> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MetaState>> {
        self.state.clone()
    }

    /// This node's copy of the global ledger's entries (`None` once Raft
    /// has stopped).
    pub fn global(&self) -> Option<global::GlobalLedger> {
        self.global
            .upgrade()
            .map(|db| global::GlobalLedger::with_damaged(db, self.damaged_rows.clone()))
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Orders `command` through the group from this node, whichever node
    /// leads, and returns once this node has applied it too (so this node's
    /// clients see their own change).
    ///
    /// A write may be retried on another leader after a step-down left it
    /// in doubt, so every command is absolute (create topic *with this id*,
    /// grow *to* n partitions): applied twice, it takes effect once.
    pub async fn write(&self, command: MetaCommand) -> Result<MetaResponse, WriteError> {
        let timeout = Duration::from_millis(self.limits.write_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut target = self.leader().unwrap_or(self.id);
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader(timeout));
            }
            // A leader cut off from the majority never commits: each
            // attempt ends at the deadline, its outcome then in doubt.
            let attempt = async {
                if target == self.id {
                    self.write_here(command.clone()).await
                } else {
                    Ok(self.write_at(target, &command).await)
                }
            };
            let Ok(outcome) = tokio::time::timeout_at(deadline, attempt).await else {
                return Err(WriteError::NoLeader(timeout));
            };
            let outcome = outcome?;
            match outcome {
                Some(WriteOutcome::Applied(response)) => {
                    self.await_version(response.version, deadline).await;
                    return Ok(response);
                }
                Some(WriteOutcome::NotLeader(Some(leader))) if leader != target => target = leader,
                Some(WriteOutcome::Failed(m)) => return Err(WriteError::Stopped(m)),
                _ => {
                    // No leader known (an election is on) or it did not
                    // answer: wait a heartbeat and ask again.
                    tokio::time::sleep(Duration::from_millis(self.limits.heartbeat_ms)).await;
                    target = self.leader().unwrap_or(self.id);
                }
            }
        }
    }

    async fn write_here(&self, command: MetaCommand) -> Result<Option<WriteOutcome>, WriteError> {
        match self.raft.client_write(command).await {
            Ok(r) => Ok(Some(WriteOutcome::Applied(r.data))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Some(WriteOutcome::NotLeader(f.leader_id)))
            }
            Err(RaftError::APIError(e)) => Ok(Some(WriteOutcome::Failed(e.to_string()))),
            Err(RaftError::Fatal(e)) => Err(WriteError::Stopped(e.to_string())),
        }
    }

    async fn write_at(&self, target: NodeId, command: &MetaCommand) -> Option<WriteOutcome> {
        let timeout = Duration::from_millis(self.limits.rpc_timeout_ms);
        let answer = self
            .transport
            .call(target, network::encode(&Rpc::Write(command.clone())), timeout)
            .await
            .ok()?;
        match network::decode::<RpcReply>(&answer) {
            Ok(RpcReply::Written(outcome)) => Some(outcome),
            _ => None,
        }
    }

    /// Waits (until `deadline`) for this node to apply up to `version`.
    async fn await_version(&self, version: u64, deadline: tokio::time::Instant) {
        let mut state = self.state.clone();
        let _ = tokio::time::timeout_at(deadline, state.wait_for(|s| s.version >= version)).await;
    }

    /// Asks the group to add this node as a voter, through each of `peers`
    /// in turn (following them to the leader), until one has; reachable at
    /// `addr`. Does nothing when this node already votes.
    pub async fn request_join(&self, peers: &[NodeId], addr: &str) {
        let rpc = Rpc::Join { addr: addr.to_owned() };
        let mut round = 0;
        while !self.is_voter() {
            match self.ask_leader(&rpc, peers, round).await {
                Some(WriteOutcome::Applied(_)) => {
                    info!(node = self.id, "joined the Raft group");
                    return;
                }
                Some(WriteOutcome::Failed(m)) => debug!(error = %m, "join refused for now"),
                _ => {}
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(self.limits.heartbeat_ms * 5)).await;
        }
    }

    /// Asks the group, through each of `peers` in turn (following them to
    /// the leader), to remove this node: it stops voting and is no longer
    /// registered. Refused for a node that serves a PBFT cluster (a
    /// cluster's members are fixed once it is formed). Gives up after
    /// `attempts` rounds without an answer.
    pub async fn request_leave(&self, peers: &[NodeId], attempts: usize) -> Result<(), String> {
        for round in 0..attempts {
            match self.ask_leader(&Rpc::Leave, peers, round).await {
                Some(WriteOutcome::Applied(_)) => {
                    info!(node = self.id, "left the Raft group");
                    return Ok(());
                }
                Some(WriteOutcome::Failed(m)) => return Err(m),
                _ => tokio::time::sleep(Duration::from_millis(self.limits.heartbeat_ms * 5)).await,
            }
        }
        Err(format!("no leader answered in {attempts} attempts"))
    }

    /// Sends a join or leave request to the `round`-th of `peers`, then to
    /// the leader it names (a few hops); the leader's answer, if one came.
    async fn ask_leader(&self, rpc: &Rpc, peers: &[NodeId], round: usize) -> Option<WriteOutcome> {
        let timeout = Duration::from_millis(self.limits.rpc_timeout_ms.max(self.limits.write_timeout_ms));
        let mut target = peers.get(round % peers.len().max(1)).copied()?;
        for _ in 0..3 {
            let answer = self.transport.call(target, network::encode(rpc), timeout).await.ok()?;
            let outcome = match network::decode::<RpcReply>(&answer).ok()? {
                RpcReply::Joined(o) | RpcReply::Left(o) => o,
                _ => return None,
            };
            match outcome {
                WriteOutcome::NotLeader(Some(leader)) if leader != target => target = leader,
                WriteOutcome::NotLeader(_) => return None,
                other => return Some(other),
            }
        }
        None
    }

    /// Removes node `id` (serving no cluster) from the voters and from the
    /// registered nodes; on the leader.
    async fn remove(&self, id: NodeId) -> Result<(), String> {
        if let Some(c) = self.state().cluster_of_node(id) {
            return Err(format!(
                "node {id} serves PBFT cluster {c}; a cluster's members cannot leave it yet"
            ));
        }
        let voters: std::collections::BTreeSet<NodeId> = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().voter_ids().filter(|v| *v != id).collect()
        };
        if voters.is_empty() {
            return Err("the last voter cannot leave".into());
        }
        // Unregistered first (here, on the leader; a refusal now only means
        // it was not registered), then out of the voters: a retry after a
        // failure in between finishes the job.
        match self.write_here(MetaCommand::RemoveNode { id }).await {
            Ok(Some(WriteOutcome::Applied(_))) => {}
            Ok(Some(WriteOutcome::NotLeader(_))) | Ok(None) => return Err("this node no longer leads".into()),
            Ok(Some(WriteOutcome::Failed(m))) => return Err(m),
            Err(e) => return Err(e.to_string()),
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether this node is a voter in the membership it knows.
    pub fn is_voter(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voter = m.membership().voter_ids().any(|v| v == self.id);
        voter
    }

    /// Answers another node's request; `from` is the caller, as the
    /// transport authenticated it.
    pub async fn serve(&self, from: NodeId, request: &[u8]) -> Bytes {
        let rpc = match network::decode::<Rpc>(request) {
            Ok(rpc) => rpc,
            Err(e) => return network::encode(&RpcReply::Malformed(e.to_string())),
        };
        let reply = match rpc {
            Rpc::Append(r) => RpcReply::Append(self.raft.append_entries(r).await),
            Rpc::Vote(r) => RpcReply::Vote(self.raft.vote(r).await),
            Rpc::Snapshot(r) => RpcReply::Snapshot(self.raft.install_snapshot(r).await),
            Rpc::Write(command) => RpcReply::Written(match self.write_here(command).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => WriteOutcome::NotLeader(None),
                Err(e) => WriteOutcome::Failed(e.to_string()),
            }),
            Rpc::Join { addr } => RpcReply::Joined(match self.leader() {
                Some(l) if l == self.id => match self.add_voter(from, addr).await {
                    Ok(()) => {
                        info!(node = from, "node added to the Raft group");
                        WriteOutcome::Applied(MetaResponse::default())
                    }
                    Err(e) => WriteOutcome::Failed(e),
                },
                other => WriteOutcome::NotLeader(other),
            }),
            Rpc::Leave => RpcReply::Left(match self.leader() {
                Some(l) if l == self.id => match self.remove(from).await {
                    Ok(()) => {
                        info!(node = from, "node removed from the Raft group");
                        WriteOutcome::Applied(MetaResponse::default())
                    }
                    Err(e) => WriteOutcome::Failed(e),
                },
                other => WriteOutcome::NotLeader(other),
            }),
        };
        network::encode(&reply)
    }

    /// Adds a node as a learner, then makes it a voter.
    pub async fn add_voter(&self, id: NodeId, peer: String) -> Result<(), String> {
        self.raft
            .add_learner(id, BasicNode { addr: peer }, true)
            .await
            .map_err(|e| e.to_string())?;
        let voters: std::collections::BTreeSet<NodeId> = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().voter_ids().chain(std::iter::once(id)).collect()
        };
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
