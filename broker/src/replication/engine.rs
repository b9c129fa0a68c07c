//! The engine: the thread that owns a node's PBFT replicas — one per
//! partition — and is their environment.
//!
//! Each turn it takes what has queued up (client submissions, peers'
//! messages, timer ticks, the executor's reports), hands each to its
//! replica, and carries out the actions in two passes: first every record
//! the replicas asked to persist is written to the durable log with one
//! sync, then messages go out, batches go to the executor, certificates are
//! stored and clients answered. A round of many replicas costs one sync.
//!
//! A client's request is answered when the block holding it is certified
//! (2f + 1 replicas executed it to the same state), with the outcome the
//! executor recorded for it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_consensus::ledger::{LedgerStore, PartitionKey, RequestRecord};
use courier_consensus::pbft::log::{Contents, DurableLog};
use courier_consensus::pbft::{
    self, wire, Action, Durable, Event, QuorumCert, Recovered, Replica, ReplicaKeys, Request, RequestId,
};
use ring::signature::Ed25519KeyPair;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info_span, warn};

use super::executor::Job;
use super::transport::{consensus_frame, Frame, Transport, PEER_QUEUE_BYTES_MAX};
use super::{ClusterView, Input, Membership, Served};

/// Inputs taken into one turn.
/// The first wait before writing the durable log again after a failure,
/// and the longest.
const LOG_RETRY_MIN: Duration = Duration::from_millis(100);
const LOG_RETRY_MAX: Duration = Duration::from_secs(5);
const TURN_INPUTS_MAX: usize = 1024;
/// The durable log is compacted when it grows past this.
const LOG_COMPACT_BYTES: u64 = 256 << 20;
/// Bytes of blocks asked for in one state-transfer fetch.
const FETCH_BYTES_MAX: u32 = 16 << 20;
/// A peer's link counts as backed up once more than this is queued for it,
/// and as clear again once less than [`BACKLOG_CLEAR_BYTES`] is: well
/// before its queue overflows and drops frames (which costs
/// retransmissions, and under load view changes).
const BACKLOG_BYTES: usize = PEER_QUEUE_BYTES_MAX / 4;
const BACKLOG_CLEAR_BYTES: usize = PEER_QUEUE_BYTES_MAX / 8;

pub struct Engine {
    pub membership: Arc<Membership>,
    /// PBFT settings every partition cluster shares (its id is set per partition).
    pub pbft: pbft::Config,
    pub signing_key_pkcs8: Vec<u8>,
    pub store: Arc<LedgerStore>,
    pub log: DurableLog,
    /// Durable records read at start, by cluster, for replicas not made yet.
    pub recovered: BTreeMap<u64, Vec<Durable>>,
    /// The durable log lost records to damage: every replica made recovers
    /// from the loss ([`pbft::Recovered::amnesia`]).
    log_damaged: bool,
    /// The durable log did not exist at start: a replica whose ledger has
    /// blocks lost its log.
    log_created: bool,
    pub transport: Arc<Transport>,
    pub executor: SyncSender<Job>,
    pub inbox: mpsc::Receiver<Input>,
    pub started: Instant,
    replicas: HashMap<PartitionKey, Replica>,
    /// The cluster of each partition in `replicas`.
    views: HashMap<PartitionKey, Arc<ClusterView>>,
    by_cluster: HashMap<u64, PartitionKey>,
    next_number: u64,
    /// Our clients' requests not answered yet.
    pending: HashMap<RequestId, oneshot::Sender<RequestRecord>>,
    /// Outcomes of our requests, by the sequence number that executed them,
    /// waiting for that sequence number to be certified.
    outcomes: BTreeMap<(PartitionKey, u64), Vec<RequestRecord>>,
    /// The other nodes of the clusters this node's replicas belong to.
    peer_nodes: Vec<u8>,
    /// Those whose links are backed up now.
    backlogged: HashSet<u8>,
    /// Some replica has not been told `backlogged` yet.
    backlog_untold: bool,
    /// Inputs that arrived while the durable log waited for the disk.
    deferred: Vec<Input>,
    /// A stop arrived while the durable log waited for the disk.
    stopping: bool,
    /// After a failed compaction, the next is not tried before this.
    compact_retry_at: Option<Instant>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        membership: Arc<Membership>,
        pbft: pbft::Config,
        signing_key_pkcs8: Vec<u8>,
        store: Arc<LedgerStore>,
        log: DurableLog,
        contents: Contents,
        transport: Arc<Transport>,
        executor: SyncSender<Job>,
        inbox: mpsc::Receiver<Input>,
        first_number: u64,
    ) -> Self {
        Self {
            membership,
            pbft,
            signing_key_pkcs8,
            store,
            log,
            recovered: contents.records,
            log_damaged: contents.damaged,
            log_created: contents.created,
            transport,
            executor,
            inbox,
            started: Instant::now(),
            replicas: HashMap::new(),
            views: HashMap::new(),
            by_cluster: HashMap::new(),
            next_number: first_number,
            pending: HashMap::new(),
            outcomes: BTreeMap::new(),
            peer_nodes: Vec::new(),
            backlogged: HashSet::new(),
            backlog_untold: false,
            deferred: Vec::new(),
            stopping: false,
            compact_retry_at: None,
        }
    }

    /// Runs until stopped. Replicas are made once the executor reports
    /// which partitions this node orders (from the Raft state).
    pub fn run(mut self) {
        loop {
            let mut inputs = std::mem::take(&mut self.deferred);
            if inputs.is_empty() {
                match self.inbox.blocking_recv() {
                    Some(first) => inputs.push(first),
                    None => return,
                }
            }
            while inputs.len() < TURN_INPUTS_MAX {
                match self.inbox.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
            let span = info_span!("consensus_turn", inputs = inputs.len());
            let _enter = span.enter();
            let mut out = Vec::new();
            let stop = inputs.iter().any(|i| matches!(i, Input::Stop));
            self.update_backlog(&mut out);
            for input in inputs {
                self.handle(input, &mut out);
            }
            self.carry_out(out);
            if stop || self.stopping {
                return;
            }
        }
    }

    /// Makes the durable log's pending records durable, however long the
    /// disk takes to accept them: after a failed write the records are
    /// written again whole, with bounded back-off, and nothing that was to
    /// follow them is sent before. Meanwhile this node's replicas stand
    /// still (the others go on: one stalled replica is within f); peers'
    /// messages and ticks that arrive are dropped (PBFT retransmits),
    /// everything else waits. False when the node stops meanwhile.
    fn sync_log(&mut self) -> bool {
        let mut backoff = LOG_RETRY_MIN;
        let mut failures = 0u64;
        loop {
            let started = Instant::now();
            match self.log.sync() {
                Ok(()) => {
                    metrics::histogram!("courier_pbft_log_sync_seconds").record(started.elapsed().as_secs_f64());
                    if failures > 0 {
                        tracing::info!(failures, "the durable log takes writes again");
                    }
                    return true;
                }
                Err(e) => {
                    if failures == 0 {
                        error!(error = %e, "durable log write failed; this node's replicas wait until the disk takes it");
                    }
                    failures += 1;
                    metrics::counter!("courier_pbft_log_write_failures_total").increment(1);
                }
            }
            let until = Instant::now() + backoff;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match self.inbox.try_recv() {
                    Ok(Input::Stop) => {
                        self.stopping = true;
                        return false;
                    }
                    Ok(Input::Peer { .. } | Input::Tick) => {}
                    Ok(input) => self.deferred.push(input),
                    Err(_) => std::thread::sleep(left.min(Duration::from_millis(20))),
                }
            }
            backoff = (backoff * 2).min(LOG_RETRY_MAX);
        }
    }

    /// A replica for `pk`, restored from the ledger and the durable log.
    fn make_replica(&mut self, pk: PartitionKey, view: &ClusterView) -> Option<Replica> {
        let cluster = view.instance(&pk);
        let key = Ed25519KeyPair::from_pkcs8(&self.signing_key_pkcs8).ok()?;
        let recovered = match self.recovered_state(&pk, cluster) {
            Ok(r) => r,
            Err(e) => {
                error!(?pk, error = %e, "cannot read the ledger to restore a replica");
                return None;
            }
        };
        let config = pbft::Config {
            cluster,
            n: view.keys.len(),
            ..self.pbft.clone()
        };
        let replica = Replica::restore(
            config,
            ReplicaKeys {
                id: view.me,
                key,
                members: view.keys.clone(),
            },
            recovered,
        );
        if let Some(through) = replica.abstaining() {
            // Written before anything the replica sends (the next sync
            // comes first), so that a restart keeps it abstaining.
            self.log.append(cluster, &Durable::Abstain { through });
            warn!(
                partition = pk.partition,
                cluster,
                through,
                "replica recovering from a lost durable log: it votes on nothing up to its recovery point"
            );
            metrics::counter!("courier_pbft_replicas_recovering_total").increment(1);
        }
        Some(replica)
    }

    fn recovered_state(
        &mut self,
        pk: &PartitionKey,
        cluster: u64,
    ) -> Result<Recovered, courier_consensus::ledger::StoreError> {
        let certified = match self.store.last_cert(pk)? {
            Some((_, bytes)) => wire::decode_cert(bytes).ok(),
            None => None,
        };
        let from = certified.as_ref().map_or(0, |c| c.seq);
        let executed: Vec<(u64, pbft::Digest)> = self
            .store
            .block_hashes_from(pk, from)?
            .into_iter()
            .map(|(h, hash)| (h + 1, hash.0))
            .collect();
        let has_history = certified.is_some() || !executed.is_empty();
        Ok(Recovered {
            certified,
            executed,
            records: self.recovered.remove(&cluster).unwrap_or_default(),
            amnesia: self.log_damaged || (self.log_created && has_history),
        })
    }

    /// Makes the set of partition replicas match `partitions` (a
    /// partition whose cluster changed gets a new replica).
    fn set_partitions(&mut self, partitions: Served) {
        let wanted: HashMap<PartitionKey, Arc<ClusterView>> = partitions.into_iter().collect();
        self.views.retain(|pk, v| wanted.get(pk) == Some(v));
        self.replicas.retain(|pk, _| self.views.contains_key(pk));
        self.by_cluster.retain(|_, pk| self.views.contains_key(pk));
        for (pk, view) in wanted {
            if self.replicas.contains_key(&pk) {
                continue;
            }
            if let Some(r) = self.make_replica(pk, &view) {
                self.by_cluster.insert(r.config().cluster, pk);
                self.replicas.insert(pk, r);
                self.views.insert(pk, view);
            }
        }
        let me = self.membership.me;
        let peers: BTreeSet<u8> = self.views.values().flat_map(|v| v.nodes.iter().copied()).collect();
        self.peer_nodes = peers.into_iter().filter(|n| *n != me).collect();
        let peer_nodes = &self.peer_nodes;
        self.backlogged.retain(|n| peer_nodes.contains(n));
        // New replicas learn the backlog at the next turn.
        self.backlog_untold = !self.backlogged.is_empty();
    }

    /// Tells the replicas which of their peers' links are backed up, when
    /// that changes (see [`BACKLOG_BYTES`]).
    fn update_backlog(&mut self, out: &mut Vec<(PartitionKey, Action)>) {
        let mut changed = false;
        for &node in &self.peer_nodes {
            let was = self.backlogged.contains(&node);
            let threshold = if was { BACKLOG_CLEAR_BYTES } else { BACKLOG_BYTES };
            if (self.transport.queued(node) > threshold) != was {
                changed = true;
                if was {
                    self.backlogged.remove(&node);
                } else {
                    self.backlogged.insert(node);
                    metrics::counter!("courier_peer_backlogs_total").increment(1);
                    debug!(peer = node, "link backed up");
                }
            }
        }
        if !changed && !self.backlog_untold {
            return;
        }
        self.backlog_untold = false;
        for (pk, r) in self.replicas.iter_mut() {
            let Some(view) = self.views.get(pk) else { continue };
            let peers: BTreeSet<pbft::ReplicaId> = view
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| self.backlogged.contains(node))
                .map(|(i, _)| i as pbft::ReplicaId)
                .collect();
            for a in r.handle(Event::Backlog(peers)) {
                out.push((*pk, a));
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn handle(&mut self, input: Input, out: &mut Vec<(PartitionKey, Action)>) {
        let (pk, event) = match input {
            Input::Submit { pk, payload, reply } => {
                let Some(view) = self.views.get(&pk) else {
                    // Not ordered here (another cluster's, gone, or not here
                    // yet): the reply is dropped, which the submitter reports.
                    return;
                };
                self.next_number += 1;
                let id = RequestId {
                    origin: view.me,
                    number: self.next_number,
                };
                self.pending.insert(id, reply);
                (pk, Event::Request(Request { id, payload }))
            }
            Input::Peer { message } => {
                let Some(pk) = self.by_cluster.get(&message.cluster).copied() else {
                    debug!(
                        cluster = message.cluster,
                        "message for a cluster this node does not run"
                    );
                    return;
                };
                (pk, Event::Message(message))
            }
            Input::Tick => {
                let now_ms = self.now_ms();
                for (pk, r) in self.replicas.iter_mut() {
                    for a in r.handle(Event::Tick { now_ms }) {
                        out.push((*pk, a));
                    }
                }
                // Clients that gave up (timed out, disconnected).
                self.pending.retain(|_, reply| !reply.is_closed());
                return;
            }
            Input::Executed { pk, seq, state, local } => {
                if !local.is_empty() {
                    self.outcomes.insert((pk, seq), local);
                }
                (pk, Event::Executed { seq, state })
            }
            Input::Transferred {
                pk,
                cert,
                executed,
                local,
            } => {
                for r in local {
                    self.answer(r);
                }
                (pk, Event::Transferred { cert, executed })
            }
            Input::Rewind { pk, durable } => (pk, Event::Rewind { durable }),
            Input::Partitions(partitions) => {
                self.set_partitions(partitions);
                return;
            }
            Input::Stop => return,
        };
        if let Some(r) = self.replicas.get_mut(&pk) {
            for a in r.handle(event) {
                out.push((pk, a));
            }
        }
    }

    fn answer(&mut self, r: RequestRecord) {
        let id = RequestId {
            origin: r.origin,
            number: r.number,
        };
        if let Some(reply) = self.pending.remove(&id) {
            let _ = reply.send(r);
        }
    }

    /// Persists, then acts.
    fn carry_out(&mut self, out: Vec<(PartitionKey, Action)>) {
        for (pk, a) in &out {
            if let (Action::Persist(record), Some(view)) = (a, self.views.get(pk)) {
                self.log.append(view.instance(pk), record);
            }
        }
        if self.log.has_pending() && !self.sync_log() {
            return;
        }
        for (pk, a) in out {
            match a {
                Action::Persist(_) => {}
                Action::Broadcast(m) => {
                    match &m.message {
                        pbft::Message::Request(_) => {
                            metrics::counter!("courier_pbft_requests_relayed_total").increment(1)
                        }
                        pbft::Message::ViewChange { new_view, .. } => {
                            tracing::info!(partition = pk.partition, new_view, "asking for a view change");
                            metrics::counter!("courier_pbft_view_changes_sent_total").increment(1)
                        }
                        pbft::Message::PrePrepare { .. } => {
                            metrics::counter!("courier_pbft_pre_prepares_sent_total").increment(1)
                        }
                        _ => {}
                    }
                    if let Some(view) = self.views.get(&pk) {
                        let frame = consensus_frame(&m);
                        for (i, node) in view.nodes.iter().enumerate() {
                            if i != view.me as usize {
                                self.transport.send(*node, frame.clone());
                            }
                        }
                    }
                }
                Action::Send { to, message } => {
                    if let pbft::Message::Committed { .. } = &message.message {
                        metrics::counter!("courier_pbft_committed_handed_over_total").increment(1);
                    }
                    if let Some(node) = self.views.get(&pk).and_then(|v| v.node(to)) {
                        self.transport.send(node, consensus_frame(&message))
                    }
                }
                Action::Execute { seq, batch, .. } => {
                    metrics::counter!("courier_pbft_batches_executed_total").increment(1);
                    if self.executor.send(Job::Execute { pk, seq, batch }).is_err() {
                        warn!("executor stopped");
                    }
                }
                Action::Certified(cert) => self.certified(pk, cert),
                Action::Fetch { peers } => {
                    metrics::counter!("courier_pbft_state_transfers_started_total").increment(1);
                    self.fetch(pk, &peers)
                }
            }
        }
        if self.log.len() > LOG_COMPACT_BYTES && self.compact_retry_at.is_none_or(|at| Instant::now() >= at) {
            // What the replicas need, and the records of replicas not made
            // yet (as read at start).
            let records: Vec<(u64, Durable)> = self
                .replicas
                .iter()
                .filter_map(|(pk, r)| Some((self.views.get(pk)?.instance(pk), r)))
                .flat_map(|(cluster, r)| r.durable_state().into_iter().map(move |d| (cluster, d)))
                .chain(
                    self.recovered
                        .iter()
                        .flat_map(|(cluster, records)| records.iter().map(|d| (*cluster, d.clone()))),
                )
                .collect();
            match self.log.rewrite(records) {
                Ok(()) => self.compact_retry_at = None,
                Err(e) => {
                    // The old log stays in place (the rewrite goes to a new
                    // file first).
                    warn!(error = %e, "durable log compaction failed; it is tried again in a while");
                    self.compact_retry_at = Some(Instant::now() + LOG_RETRY_MAX);
                }
            }
        }
    }

    fn certified(&mut self, pk: PartitionKey, cert: QuorumCert) {
        let done: Vec<(PartitionKey, u64)> = self.outcomes.range((pk, 0)..=(pk, cert.seq)).map(|(k, _)| *k).collect();
        for k in done {
            for r in self.outcomes.remove(&k).unwrap_or_default() {
                self.answer(r);
            }
        }
        if self.executor.send(Job::Certify { pk, cert }).is_err() {
            warn!("executor stopped");
        }
    }

    /// Asks one of the peers that are ahead for certified blocks.
    fn fetch(&mut self, pk: PartitionKey, peers: &[u8]) {
        let Some(replica) = peers.get(self.now_ms() as usize % peers.len().max(1)).copied() else {
            return;
        };
        let Some(peer) = self.views.get(&pk).and_then(|v| v.node(replica)) else {
            return;
        };
        let from_height = match self.store.partition_state(&pk) {
            Ok(s) => s.next_height,
            Err(e) => {
                error!(error = %e, "cannot read the ledger for a state transfer");
                return;
            }
        };
        debug!(?pk, peer, from_height, "state transfer");
        let frame = Frame::Fetch {
            pk,
            from_height,
            max_bytes: FETCH_BYTES_MAX,
        }
        .encode();
        self.transport.send(peer, frame);
    }
}

/// Serves a peer's state-transfer request from the ledger: blocks from
/// `from_height` up to about `max_bytes`, ending at the last one a stored
/// certificate covers.
pub fn serve_fetch(
    store: &LedgerStore,
    pk: &PartitionKey,
    from_height: u64,
    max_bytes: u32,
) -> Result<Vec<(Bytes, Option<Bytes>)>, courier_consensus::ledger::StoreError> {
    let certs = store.certs_from(pk, from_height)?;
    let Some(last_certified) = certs.keys().next_back().copied() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for height in from_height..=last_certified {
        let Some(block) = store.block(pk, height)? else { break };
        bytes += block.len();
        out.push((block, certs.get(&height).cloned()));
        if bytes >= max_bytes as usize {
            break;
        }
    }
    // End at a certified block.
    while out.last().is_some_and(|(_, c)| c.is_none()) {
        out.pop();
    }
    Ok(out)
}
