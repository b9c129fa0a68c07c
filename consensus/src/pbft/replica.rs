//! One PBFT replica: requests, the normal case, checkpoints, retransmission
//! and state transfer. View change is in [`super::view_change`], recovery
//! from disk in [`super::durable`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use ring::signature::Ed25519KeyPair;

use super::message::{
    Batch, CommitCert, Digest, Message, PreparedCert, QuorumCert, ReplicaId, Request, RequestId, SignatureCache,
    SignedMessage,
};
use super::Durable;

/// A cluster's parameters; every replica of it must use the same ones.
#[derive(Clone, Debug)]
pub struct Config {
    /// Identifies the cluster in every signature (no cross-cluster replay).
    pub cluster: u64,
    /// Replicas in the cluster: 3f + 1.
    pub n: usize,
    /// Sequence numbers that may be in flight above the last stable
    /// checkpoint (L): the pipelining depth.
    pub window: u64,
    /// The primary cuts a batch at this many encoded bytes…
    pub batch_bytes_max: usize,
    /// …or when its oldest request has waited this long.
    pub batch_delay_ms: u64,
    /// A request not executed this long after a replica saw it makes the
    /// replica relay it to everyone, and after as long again start a view
    /// change; each further view waits twice as long.
    pub view_change_timeout_ms: u64,
    /// How often unfinished work is sent again (lost messages, peers that
    /// reconnected or restarted).
    pub retransmit_ms: u64,
    /// Requests a replica keeps track of while waiting for them to execute.
    pub waiting_requests_max: usize,
}

impl Config {
    /// Faults tolerated.
    pub fn f(&self) -> usize {
        (self.n - 1) / 3
    }
    /// Matching messages that make a quorum: 2f + 1.
    pub fn quorum(&self) -> usize {
        2 * self.f() + 1
    }
}

/// A replica's identity: its index, signing key, and every member's public key.
pub struct ReplicaKeys {
    pub id: ReplicaId,
    pub key: Ed25519KeyPair,
    pub members: Vec<Bytes>,
}

/// What happens to a replica.
#[derive(Clone, Debug)]
pub enum Event {
    /// A client request submitted at this replica (its id's origin is us).
    Request(Request),
    /// A message from a peer, as received (not yet verified).
    Message(SignedMessage),
    /// Time passes; `now_ms` never goes backwards.
    Tick { now_ms: u64 },
    /// The environment executed `seq` (in order, durably), reaching `state`.
    Executed { seq: u64, state: Digest },
    /// The environment installed, from peers, everything up to `cert.seq`
    /// (verified against certificates), holding the requests `executed`.
    Transferred { cert: QuorumCert, executed: Vec<RequestId> },
    /// The peers this replica's links to are backed up now (too many bytes
    /// queued, not yet written): what is queued for them is late, not lost,
    /// and sending them more only makes it later. Batches are not sent
    /// again to a backed-up peer; and while more than f peers are (fewer
    /// than the 2f a primary needs to be heard), a primary orders no new
    /// batch.
    Backlog(BTreeSet<ReplicaId>),
    /// The environment lost the executions it was handed after `durable`
    /// (a write failed, and it recovered to what its disk holds): they are
    /// handed over again, from this replica's log where it still has their
    /// proof, else by state transfer from peers that are ahead.
    Rewind { durable: u64 },
}

/// What a replica asks its environment to do, in order. A `Persist` must
/// be durable before any `Broadcast` or `Send` that follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Persist(Durable),
    /// Send to every other replica.
    Broadcast(SignedMessage),
    Send {
        to: ReplicaId,
        message: SignedMessage,
    },
    /// Execute a committed batch; sequence numbers come in order, and the
    /// environment answers each with [`Event::Executed`].
    Execute {
        seq: u64,
        batch: Batch,
        cert: CommitCert,
    },
    /// 2f + 1 replicas reached our state at `seq`: everything up to it is
    /// final, with this certificate as proof.
    Certified(QuorumCert),
    /// Peers are ahead and the log cannot catch up: fetch what they have
    /// certified from any of `peers` and answer with [`Event::Transferred`].
    Fetch {
        peers: Vec<ReplicaId>,
    },
}

#[derive(Default)]
pub(super) struct Slot {
    /// The accepted pre-prepare (signed), for the slot's current view.
    pub(super) pre_prepare: Option<SignedMessage>,
    pub(super) prepares: BTreeMap<ReplicaId, SignedMessage>,
    pub(super) commits: BTreeMap<ReplicaId, SignedMessage>,
}

/// A request seen and not yet executed.
pub(super) struct Waiting {
    pub(super) request: Request,
    /// Relayed to every replica because the primary did not order it in time.
    pub(super) relayed: bool,
}

pub struct Replica {
    pub(super) config: Config,
    pub(super) keys: ReplicaKeys,
    pub(super) view: u64,
    /// Between sending VIEW-CHANGE for `view` and accepting its NEW-VIEW.
    pub(super) view_changing: bool,
    pub(super) slots: BTreeMap<u64, Slot>,
    /// Primary only: the next sequence number to assign.
    pub(super) next_seq: u64,
    /// Last sequence number handed to the environment to execute.
    pub(super) last_executed: u64,
    /// Last sequence number the environment reported executed.
    pub(super) last_applied: u64,
    /// Our state after each applied sequence number above the low watermark.
    pub(super) states: BTreeMap<u64, Digest>,
    /// Last stable checkpoint: the low watermark, and its 2f + 1 proofs.
    pub(super) low: u64,
    pub(super) low_proof: Vec<SignedMessage>,
    /// Checkpoint votes by sequence number, in (low, low + 2 * window].
    pub(super) checkpoints: BTreeMap<u64, BTreeMap<ReplicaId, SignedMessage>>,
    /// The sequence number of each peer's latest checkpoint vote (a peer
    /// that restarted without its disk goes back, and says so).
    pub(super) peer_progress: BTreeMap<ReplicaId, u64>,
    /// Verified messages just above the window or for a later view,
    /// replayed when the window or view gets there. Bounded.
    pub(super) held: Vec<SignedMessage>,
    /// Per sequence number above the low watermark, the prepared
    /// certificate from the latest view this replica prepared it in. Kept
    /// across view changes until a stable checkpoint covers it: it is what
    /// carries a committed batch into every later view.
    pub(super) prepared: BTreeMap<u64, PreparedCert>,
    /// VIEW-CHANGE messages by target view and sender.
    pub(super) view_changes: BTreeMap<u64, BTreeMap<ReplicaId, SignedMessage>>,
    /// Our VIEW-CHANGE for `view` while changing (sent again until it ends).
    pub(super) my_view_change: Option<SignedMessage>,
    /// The NEW-VIEW that started `view`, handed to peers still behind it.
    pub(super) new_view: Option<SignedMessage>,
    /// Highest view each peer's messages showed.
    pub(super) peer_views: BTreeMap<ReplicaId, u64>,
    /// Peers heard from since the last retransmission.
    pub(super) peers_heard: BTreeSet<ReplicaId>,
    pub(super) waiting: BTreeMap<RequestId, Waiting>,
    /// When the oldest unanswered work is given up on (relay, then view change).
    pub(super) deadline_ms: Option<u64>,
    /// View changes in a row without progress (the timeout doubles each).
    pub(super) backoff: u32,
    pub(super) pending: VecDeque<Request>,
    pub(super) pending_bytes: usize,
    pub(super) oldest_pending_ms: Option<u64>,
    /// Peers whose links are backed up (see [`Event::Backlog`]).
    backlogged: BTreeSet<ReplicaId>,
    pub(super) now_ms: u64,
    next_retransmit_ms: u64,
    /// Since when f + 1 peers have been ahead while we stood still, and where.
    behind_since: Option<(u64, u64)>,
    /// A fetch in flight, until this time.
    fetch_deadline_ms: Option<u64>,
    /// Batches proven committed (by 2f + 1 COMMITs) above what we executed,
    /// received from peers while we lagged. At most a window of them.
    pub(super) committed: BTreeMap<u64, (SignedMessage, Vec<SignedMessage>)>,
    /// For each sequence number we executed above the low watermark, the
    /// pre-prepare and 2f + 1 commits it was executed with: what a lagging
    /// peer is handed. A later view re-proposing the slot does not touch it.
    pub(super) executed_proofs: BTreeMap<u64, (SignedMessage, Vec<SignedMessage>)>,
    /// Peers' progress as of the last retransmission, and for how many
    /// retransmissions in a row it has not moved (who is stalled).
    progress_at_retransmit: BTreeMap<ReplicaId, (u64, u32)>,
    /// What we had executed at the last retransmission: slots are sent
    /// again only when that has not moved (a stall, not a busy pipeline).
    executed_at_retransmit: u64,
    /// A restarted replica announces how far it got (a checkpoint vote for
    /// what it holds) until it has heard votes from f + 1 peers, so peers
    /// that are ahead learn it is behind and help it catch up. `Some`: next
    /// announcement at, and the back-off interval.
    pub(super) announcing: Option<(u64, u64)>,
    /// While changing views, when our own waiting requests are next sent to
    /// everyone (whoever orders them may have missed them).
    pub(super) resend_requests_ms: u64,
    /// Signatures verified recently (interior mutability: checking is
    /// logically read-only).
    sigs: std::cell::RefCell<SignatureCache>,
    /// After losing part of its durable log, the last sequence number this
    /// replica may have voted on before (0: none lost). See
    /// [`super::Recovered::amnesia`].
    pub(super) abstain_through: u64,
}

/// Verified signatures remembered: a window's worth of every kind from
/// every member, with room for view changes.
fn signature_cache_max(config: &Config) -> usize {
    (config.window as usize) * 6 * config.n + 1024
}

/// Retransmissions in a row a peer's progress must stand still before it is
/// handed committed batches, and how many it is handed each time.
const HANDOVER_STALLED_ROUNDS: u32 = 2;
const HANDOVER_BATCHES_MAX: u64 = 2;

/// A restarted replica's announcements back off to at most this many
/// retransmission intervals apart.
const ANNOUNCE_INTERVAL_MAX_RETRANSMITS: u64 = 32;

/// Batches in flight (ordered, not yet executed) below which the primary
/// cuts a batch as soon as a request arrives.
const IDLE_IN_FLIGHT_MAX: u64 = 4;

/// Messages held per replica at most (a window's worth of slots, 3 kinds, all senders).
fn held_max(config: &Config) -> usize {
    (config.window as usize) * 3 * config.n + 2 * config.n
}

impl Replica {
    pub fn new(config: Config, keys: ReplicaKeys) -> Self {
        assert!(
            config.n >= 4 && config.n == 3 * config.f() + 1,
            "n must be 3f + 1 with f >= 1"
        );
        assert_eq!(keys.members.len(), config.n, "one public key per member");
        assert!(config.window > 0 && config.retransmit_ms > 0);
        Self {
            sigs: std::cell::RefCell::new(SignatureCache::new(signature_cache_max(&config))),
            config,
            keys,
            view: 0,
            view_changing: false,
            slots: BTreeMap::new(),
            next_seq: 1,
            last_executed: 0,
            last_applied: 0,
            states: BTreeMap::new(),
            low: 0,
            low_proof: Vec::new(),
            checkpoints: BTreeMap::new(),
            peer_progress: BTreeMap::new(),
            held: Vec::new(),
            prepared: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            my_view_change: None,
            new_view: None,
            peer_views: BTreeMap::new(),
            peers_heard: BTreeSet::new(),
            waiting: BTreeMap::new(),
            deadline_ms: None,
            backoff: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            oldest_pending_ms: None,
            backlogged: BTreeSet::new(),
            now_ms: 0,
            next_retransmit_ms: 0,
            behind_since: None,
            fetch_deadline_ms: None,
            committed: BTreeMap::new(),
            executed_proofs: BTreeMap::new(),
            progress_at_retransmit: BTreeMap::new(),
            executed_at_retransmit: 0,
            announcing: None,
            resend_requests_ms: 0,
            abstain_through: 0,
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.keys.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn members(&self) -> &[Bytes] {
        &self.keys.members
    }
    pub fn view(&self) -> u64 {
        self.view
    }
    pub fn is_view_changing(&self) -> bool {
        self.view_changing
    }
    pub fn last_executed(&self) -> u64 {
        self.last_executed
    }
    pub fn low_watermark(&self) -> u64 {
        self.low
    }
    /// Log slots held (bounded by the window; shrinks at checkpoints).
    pub fn log_len(&self) -> usize {
        self.slots.len()
    }
    /// Requests seen here and not executed yet.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }
    pub fn is_primary(&self) -> bool {
        !self.view_changing && self.primary(self.view) == self.keys.id
    }
    /// The replica that orders requests in the current view.
    pub fn primary_id(&self) -> ReplicaId {
        self.primary(self.view)
    }

    /// Checks a message's signature (and what `SignedMessage::verify`
    /// checks besides), remembering signatures that passed.
    pub(super) fn valid(&self, m: &SignedMessage) -> bool {
        m.verify_cached(self.config.cluster, &self.keys.members, &mut self.sigs.borrow_mut())
            .is_ok()
    }

    pub(super) fn primary(&self, view: u64) -> ReplicaId {
        (view % self.config.n as u64) as ReplicaId
    }

    pub(super) fn in_window(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.low + self.config.window
    }

    /// While recovering from a loss of its durable log: the last sequence
    /// number it votes on none of.
    pub fn abstaining(&self) -> Option<u64> {
        (self.abstain_through > self.low).then_some(self.abstain_through)
    }

    /// May this replica vote (PREPARE, COMMIT) on, or propose, `seq`?
    pub(super) fn may_vote(&self, seq: u64) -> bool {
        seq > self.abstain_through
    }

    /// A VIEW-CHANGE carries every batch prepared above the low watermark;
    /// a replica that may have lost some of them sends none.
    pub(super) fn sends_view_changes(&self) -> bool {
        self.abstaining().is_none()
    }

    /// The state machine's one entry point.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Request(request) => self.on_request(request, true, &mut out),
            Event::Tick { now_ms } => self.on_tick(now_ms, &mut out),
            Event::Message(m) => {
                if m.sender != self.keys.id && self.valid(&m) {
                    self.note_peer(&m);
                    self.on_message(m, &mut out);
                }
            }
            Event::Executed { seq, state } => self.on_executed(seq, state, &mut out),
            Event::Transferred { cert, executed } => self.on_transferred(cert, &executed, &mut out),
            Event::Backlog(peers) => {
                self.backlogged = peers;
                // Relieved: what gathered meanwhile is ordered now.
                self.cut_batches(&mut out, true);
            }
            Event::Rewind { durable } => self.on_rewind(durable, &mut out),
        }
        out
    }

    /// See [`Event::Rewind`]. What was executed past `durable` is executed
    /// again: each slot's proof (its pre-prepare and 2f + 1 commits, kept
    /// for lagging peers) goes back among the committed slots, and those
    /// run again in order. A slot whose proof is gone (below the low
    /// watermark it cannot be: a checkpoint needs our own durable vote)
    /// comes by state transfer, as for any replica that fell behind.
    fn on_rewind(&mut self, durable: u64, out: &mut Vec<Action>) {
        let durable = durable.max(self.last_applied);
        if durable >= self.last_executed {
            return;
        }
        for seq in durable + 1..=self.last_executed {
            if let Some(proof) = self.executed_proofs.get(&seq) {
                self.committed.entry(seq).or_insert_with(|| proof.clone());
            }
        }
        self.last_executed = durable;
        self.behind_since = None;
        self.execute_ready(out);
    }

    fn note_peer(&mut self, m: &SignedMessage) {
        self.peers_heard.insert(m.sender);
        let view = match &m.message {
            Message::ViewChange { new_view, .. } => Some(new_view.saturating_sub(1)),
            Message::NewView { view, .. } => Some(*view),
            _ => m.slot().map(|(v, _, _)| v),
        };
        if let Some(v) = view {
            let known = self.peer_views.entry(m.sender).or_insert(v);
            *known = (*known).max(v);
        }
    }

    // ---- requests and batches ------------------------------------------

    fn on_request(&mut self, request: Request, local: bool, out: &mut Vec<Action>) {
        if self.waiting.contains_key(&request.id) || self.waiting.len() >= self.config.waiting_requests_max {
            return;
        }
        self.waiting.insert(
            request.id,
            Waiting {
                request: request.clone(),
                relayed: false,
            },
        );
        self.arm_timer();
        if self.is_primary() {
            self.enqueue(request);
            self.cut_batches(out, false);
        } else if local && self.view_changing {
            // No primary to hand it to: whoever is ordering should see it.
            if let Some(w) = self.waiting.get_mut(&request.id) {
                w.relayed = true;
            }
            let message = self.sign(Message::Request(request));
            out.push(Action::Broadcast(message));
        } else if local {
            let to = self.primary(self.view);
            let message = self.sign(Message::Request(request));
            out.push(Action::Send { to, message });
        }
    }

    /// Requests submitted here and not executed yet.
    pub(super) fn own_waiting(&self) -> Vec<Request> {
        let me = self.keys.id;
        self.waiting
            .values()
            .filter(|w| w.request.id.origin == me)
            .map(|w| w.request.clone())
            .collect()
    }

    pub(super) fn enqueue(&mut self, request: Request) {
        self.oldest_pending_ms.get_or_insert(self.now_ms);
        self.pending_bytes += request.encoded_len();
        self.pending.push_back(request);
    }

    pub(super) fn timeout(&self) -> u64 {
        self.config
            .view_change_timeout_ms
            .saturating_mul(1 << self.backoff.min(16))
    }

    /// Starts the request timer. Not while changing views: then the timer
    /// runs only once 2f + 1 replicas want the same view (see
    /// `on_view_change`), so a replica alone cannot run ahead through views.
    pub(super) fn arm_timer(&mut self) {
        if self.deadline_ms.is_none() && !self.view_changing {
            self.deadline_ms = Some(self.now_ms + self.timeout());
        }
    }

    /// Primary: turns pending requests into pre-prepares while the window
    /// has room. A batch is cut when full; when the pipeline is nearly idle
    /// (fewer than [`IDLE_IN_FLIGHT_MAX`] batches not yet executed), at once,
    /// so a lone request does not wait; and on a tick, when its oldest
    /// request has waited `batch_delay_ms`. Under load, requests gather
    /// while earlier batches are in flight. Nothing is cut while congested.
    pub(super) fn cut_batches(&mut self, out: &mut Vec<Action>, tick: bool) {
        while self.is_primary()
            && !self.congested()
            && !self.pending.is_empty()
            && self.in_window(self.next_seq)
            && self.may_vote(self.next_seq)
        {
            let full = self.pending_bytes >= self.config.batch_bytes_max;
            let waited = self
                .oldest_pending_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) >= self.config.batch_delay_ms);
            let idle = self.next_seq - self.last_executed <= IDLE_IN_FLIGHT_MAX;
            if !(full || idle || (tick && waited)) {
                break;
            }
            let mut batch = Batch {
                view: self.view,
                requests: Vec::new(),
            };
            let mut bytes = batch.encoded_len();
            while let Some(r) = self.pending.front() {
                if !batch.requests.is_empty() && bytes + r.encoded_len() > self.config.batch_bytes_max {
                    break;
                }
                let Some(r) = self.pending.pop_front() else { break };
                self.pending_bytes -= r.encoded_len();
                bytes += r.encoded_len();
                batch.requests.push(r);
            }
            self.oldest_pending_ms = if self.pending.is_empty() {
                None
            } else {
                Some(self.now_ms)
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let pp = self.sign(Message::PrePrepare {
                view: self.view,
                seq,
                digest: batch.digest(),
                batch,
            });
            out.push(Action::Persist(Durable::PrePrepare(pp.clone())));
            out.push(Action::Broadcast(pp.clone()));
            self.on_message(pp, out);
        }
    }

    /// More than f peers are backed up: a new batch could not reach the
    /// 2f it needs in good time.
    fn congested(&self) -> bool {
        self.backlogged.len() > self.config.f()
    }

    /// Our checkpoint vote for what we applied last (as first sent, while
    /// that checkpoint is not stable); none before anything was applied.
    fn latest_vote(&self) -> Option<SignedMessage> {
        if self.last_applied == 0 {
            return None;
        }
        let state = self.states.get(&self.last_applied).copied()?;
        let sent = self
            .checkpoints
            .get(&self.last_applied)
            .and_then(|votes| votes.get(&self.keys.id))
            .cloned();
        Some(sent.unwrap_or_else(|| {
            self.sign(Message::Checkpoint {
                seq: self.last_applied,
                state,
            })
        }))
    }

    pub(super) fn sign(&self, message: Message) -> SignedMessage {
        SignedMessage::sign(self.config.cluster, self.keys.id, &self.keys.key, message)
    }

    /// Signs, sends to the others, and processes our own copy.
    pub(super) fn broadcast(&mut self, message: Message, out: &mut Vec<Action>) {
        let signed = self.sign(message);
        out.push(Action::Broadcast(signed.clone()));
        self.on_message(signed, out);
    }

    pub(super) fn hold(&mut self, m: SignedMessage) {
        if self.held.len() < held_max(&self.config) && !self.held.contains(&m) {
            self.held.push(m);
        }
    }

    /// Re-handles held messages that now fit the view and window.
    pub(super) fn replay_held(&mut self, out: &mut Vec<Action>) {
        let held = std::mem::take(&mut self.held);
        let high = self.low + self.config.window;
        for m in held {
            match m.slot() {
                Some((view, seq, _)) if view < self.view || seq <= self.low => {}
                Some((view, seq, _)) if view > self.view || seq > high => self.hold(m),
                _ => self.on_message(m, out),
            }
        }
    }

    pub(super) fn on_message(&mut self, m: SignedMessage, out: &mut Vec<Action>) {
        // Normal-case messages: for this view and window only; a little
        // ahead of either is held; anything else is dropped.
        if let Some((view, seq, _)) = m.slot() {
            let ahead = seq > self.low + self.config.window && seq <= self.low + 2 * self.config.window;
            let next_view = view > self.view && view <= self.view + self.config.n as u64;
            // A view we are changing into may already be running at peers.
            let entering = view == self.view && self.view_changing;
            if next_view || entering || (view == self.view && ahead) {
                self.hold(m);
                return;
            }
            if view != self.view || self.view_changing || !self.in_window(seq) {
                return;
            }
        }
        match m.message.clone() {
            Message::Request(r) => self.on_request(r, false, out),
            Message::PrePrepare { view, seq, digest, .. } => {
                if m.sender != self.primary(view) {
                    return;
                }
                let slot = self.slots.entry(seq).or_default();
                if slot.pre_prepare.is_some() {
                    // One pre-prepare per (view, seq): a second, different
                    // one is the primary equivocating and is ignored.
                    return;
                }
                slot.pre_prepare = Some(m.clone());
                if m.sender != self.keys.id {
                    out.push(Action::Persist(Durable::PrePrepare(m)));
                    if self.may_vote(seq) {
                        self.broadcast(Message::Prepare { view, seq, digest }, out);
                    }
                }
                self.progress(seq, out);
            }
            Message::Prepare { view, seq, .. } => {
                if m.sender == self.primary(view) {
                    return;
                }
                // First prepare per sender wins; a conflicting second is ignored.
                self.slots.entry(seq).or_default().prepares.entry(m.sender).or_insert(m);
                self.progress(seq, out);
            }
            Message::Commit { seq, .. } => {
                self.slots.entry(seq).or_default().commits.entry(m.sender).or_insert(m);
                self.progress(seq, out);
            }
            Message::Checkpoint { seq, .. } => self.on_checkpoint(m, seq, out),
            Message::ViewChange { new_view, .. } => self.on_view_change(m, new_view, out),
            Message::NewView {
                view,
                view_changes,
                pre_prepares,
            } => self.on_new_view(&m, view, &view_changes, &pre_prepares, out),
            Message::Committed { pre_prepare, commits } => self.on_committed(m.sender, *pre_prepare, commits, out),
        }
    }

    /// A batch proven committed, from a peer: kept if it is above what we
    /// executed and within a window of it, then executed in order.
    /// One we already executed is answered with our latest checkpoint
    /// vote: the sender's idea of our progress is stale (its copy of that
    /// vote was lost), and it hands over what comes next only once it
    /// knows where we are.
    fn on_committed(&mut self, from: ReplicaId, pp: SignedMessage, commits: Vec<SignedMessage>, out: &mut Vec<Action>) {
        let Some((view, seq, digest)) = pp.slot() else { return };
        if seq <= self.last_executed {
            if let Some(vote) = self.latest_vote() {
                out.push(Action::Send {
                    to: from,
                    message: vote,
                });
            }
            return;
        }
        if seq > self.last_executed + self.config.window || self.committed.contains_key(&seq) {
            return;
        }
        let cert = CommitCert {
            view,
            seq,
            digest,
            commits,
        };
        let valid = matches!(pp.message, Message::PrePrepare { .. })
            && pp.sender == self.primary(view)
            && self.valid(&pp)
            && cert
                .verify_cached(
                    self.config.cluster,
                    &self.keys.members,
                    self.config.quorum(),
                    &mut self.sigs.borrow_mut(),
                )
                .is_ok();
        if valid {
            self.committed.insert(seq, (pp, cert.commits));
            self.execute_ready(out);
        }
    }

    /// Matching prepares and commits for a slot's accepted pre-prepare.
    fn counts(&self, seq: u64) -> Option<(u64, Digest, usize, usize)> {
        let slot = self.slots.get(&seq)?;
        let (view, _, d) = slot.pre_prepare.as_ref()?.slot()?;
        let matches = |m: &SignedMessage| m.slot().is_some_and(|(v, s, md)| v == view && s == seq && md == d);
        let prepares = slot.prepares.values().filter(|m| matches(m)).count();
        let commits = slot.commits.values().filter(|m| matches(m)).count();
        Some((view, d, prepares, commits))
    }

    fn progress(&mut self, seq: u64, out: &mut Vec<Action>) {
        let Some((view, d, prepares, _)) = self.counts(seq) else {
            return;
        };
        // Prepared: the pre-prepare plus 2f matching prepares from backups.
        let prepared = prepares >= 2 * self.config.f();
        let newly_prepared = prepared
            && self
                .prepared
                .get(&seq)
                .is_none_or(|c| c.pre_prepare.slot().is_some_and(|(v, _, _)| v < view));
        if newly_prepared {
            if let Some(slot) = self.slots.get(&seq) {
                if let Some(pp) = &slot.pre_prepare {
                    let prepares: Vec<SignedMessage> = slot
                        .prepares
                        .values()
                        .filter(|m| m.slot() == Some((view, seq, d)))
                        .take(2 * self.config.f())
                        .cloned()
                        .collect();
                    out.push(Action::Persist(Durable::Prepared {
                        seq,
                        view,
                        prepares: prepares.clone(),
                    }));
                    self.prepared.insert(
                        seq,
                        PreparedCert {
                            pre_prepare: pp.clone(),
                            prepares,
                        },
                    );
                }
            }
        }
        let sent = self
            .slots
            .get(&seq)
            .is_some_and(|s| s.commits.contains_key(&self.keys.id));
        if prepared && !sent && self.may_vote(seq) {
            self.broadcast(Message::Commit { view, seq, digest: d }, out);
        }
        self.execute_ready(out);
    }

    /// Executes every committed slot that comes next in sequence order.
    pub(super) fn execute_ready(&mut self, out: &mut Vec<Action>) {
        loop {
            let seq = self.last_executed + 1;
            if let Some((pp, commits)) = self.committed.remove(&seq) {
                // Proven committed by peers: it replaces whatever we held.
                let slot = self.slots.entry(seq).or_default();
                slot.pre_prepare = Some(pp);
                slot.prepares.clear();
                slot.commits = commits.into_iter().map(|c| (c.sender, c)).collect();
                self.execute_slot(seq, out);
                continue;
            }
            let Some((_, _, prepares, commits)) = self.counts(seq) else {
                return;
            };
            if prepares < 2 * self.config.f() || commits < self.config.quorum() {
                return;
            }
            if !self.execute_slot(seq, out) {
                return;
            }
        }
    }

    /// Hands a slot whose pre-prepare has 2f + 1 matching commits to the
    /// environment to execute.
    fn execute_slot(&mut self, seq: u64, out: &mut Vec<Action>) -> bool {
        {
            let Some(slot) = self.slots.get(&seq) else { return false };
            let Some(pp) = &slot.pre_prepare else { return false };
            let (Some((view, _, d)), Message::PrePrepare { batch, .. }) = (pp.slot(), &pp.message) else {
                return false;
            };
            let batch = batch.clone();
            let commits: Vec<SignedMessage> = slot
                .commits
                .values()
                .filter(|m| m.slot() == Some((view, seq, d)))
                .take(self.config.quorum())
                .cloned()
                .collect();
            let cert = CommitCert {
                view,
                seq,
                digest: d,
                commits,
            };
            // Kept as proof for peers that lag, whatever later views do to the slot.
            self.executed_proofs.insert(seq, (pp.clone(), cert.commits.clone()));
            self.last_executed = seq;
            self.committed = self.committed.split_off(&(seq + 1));
            self.note_executed(batch.requests.iter().map(|r| r.id));
            out.push(Action::Execute { seq, batch, cert });
        }
        true
    }

    /// Progress: drop executed requests from the waiting list and restart
    /// (or stop) the timer.
    pub(super) fn note_executed(&mut self, ids: impl IntoIterator<Item = RequestId>) {
        for id in ids {
            self.waiting.remove(&id);
        }
        self.backoff = 0;
        self.deadline_ms = None;
        if !self.waiting.is_empty() {
            self.arm_timer();
        }
    }

    // ---- checkpoints ---------------------------------------------------

    fn on_executed(&mut self, seq: u64, state: Digest, out: &mut Vec<Action>) {
        if seq != self.last_applied + 1 || seq > self.last_executed {
            // Stale (a transfer went past it) or out of order: nothing to vote on.
            return;
        }
        self.last_applied = seq;
        self.states.insert(seq, state);
        self.broadcast(Message::Checkpoint { seq, state }, out);
    }

    fn on_checkpoint(&mut self, m: SignedMessage, seq: u64, out: &mut Vec<Action>) {
        if m.sender != self.keys.id {
            self.peer_progress.insert(m.sender, seq);
        }
        if seq <= self.low || seq > self.low + 2 * self.config.window {
            return;
        }
        self.checkpoints.entry(seq).or_default().entry(m.sender).or_insert(m);
        self.try_stabilize(seq, out);
    }

    /// A checkpoint is stable with 2f + 1 matching votes that include our
    /// own (so we hold that state): its votes are the quorum certificate,
    /// the log up to it is dropped and the window moves.
    fn try_stabilize(&mut self, seq: u64, out: &mut Vec<Action>) {
        let Some(state) = self.states.get(&seq).copied() else {
            return;
        };
        let Some(votes) = self.checkpoints.get(&seq) else {
            return;
        };
        let expected = Message::Checkpoint { seq, state };
        let proof: Vec<SignedMessage> = votes
            .values()
            .filter(|m| m.message == expected)
            .take(self.config.quorum())
            .cloned()
            .collect();
        if proof.len() < self.config.quorum() {
            return;
        }
        out.push(Action::Certified(QuorumCert {
            seq,
            state,
            votes: proof.clone(),
        }));
        self.stabilize(seq, proof, out);
    }

    /// Moves the low watermark to `seq` and drops the log below it.
    pub(super) fn stabilize(&mut self, seq: u64, proof: Vec<SignedMessage>, out: &mut Vec<Action>) {
        if seq <= self.low {
            return;
        }
        self.low = seq;
        self.low_proof = proof;
        self.slots = self.slots.split_off(&(seq + 1));
        self.prepared = self.prepared.split_off(&(seq + 1));
        self.checkpoints = self.checkpoints.split_off(&(seq + 1));
        self.committed = self.committed.split_off(&(seq + 1));
        self.executed_proofs = self.executed_proofs.split_off(&(seq + 1));
        self.states = self.states.split_off(&seq);
        if self.abstain_through > 0 && seq >= self.abstain_through {
            tracing::info!(
                cluster = self.config.cluster,
                seq,
                "past its recovery point: this replica votes again"
            );
            self.abstain_through = 0;
            if self.view_changing && self.my_view_change.is_none() {
                self.send_view_change(out);
            }
        }
        self.replay_held(out);
        self.cut_batches(out, true);
    }

    // ---- state transfer ------------------------------------------------

    fn on_transferred(&mut self, cert: QuorumCert, executed: &[RequestId], out: &mut Vec<Action>) {
        self.fetch_deadline_ms = None;
        if cert.seq <= self.last_applied
            || cert
                .verify_cached(
                    self.config.cluster,
                    &self.keys.members,
                    self.config.quorum(),
                    &mut self.sigs.borrow_mut(),
                )
                .is_err()
        {
            return;
        }
        let seq = cert.seq;
        self.last_executed = self.last_executed.max(seq);
        self.last_applied = seq;
        self.states.insert(seq, cert.state);
        self.next_seq = self.next_seq.max(seq + 1);
        self.behind_since = None;
        self.note_executed(executed.iter().copied());
        // Tell the peers where we are now.
        let vote = self.sign(Message::Checkpoint { seq, state: cert.state });
        out.push(Action::Broadcast(vote));
        self.stabilize(seq, cert.votes, out);
        // Slots above the transfer may now be executable.
        self.execute_ready(out);
    }

    /// Starts a transfer when f + 1 peers (one of them honest) have
    /// executed past us and our log has not moved for a while.
    fn check_behind(&mut self, out: &mut Vec<Action>) {
        if self.fetch_deadline_ms.is_some_and(|d| self.now_ms < d) {
            return;
        }
        let ahead: Vec<ReplicaId> = self
            .peer_progress
            .iter()
            .filter(|(_, s)| **s > self.last_executed)
            .map(|(id, _)| *id)
            .collect();
        if ahead.len() <= self.config.f() {
            self.behind_since = None;
            return;
        }
        match self.behind_since {
            Some((since, at)) if at == self.last_executed => {
                if self.now_ms.saturating_sub(since) >= 2 * self.config.retransmit_ms {
                    self.fetch_deadline_ms = Some(self.now_ms + self.config.view_change_timeout_ms);
                    self.behind_since = None;
                    out.push(Action::Fetch { peers: ahead });
                }
            }
            _ => self.behind_since = Some((self.now_ms, self.last_executed)),
        }
    }

    // ---- time ------------------------------------------------------------

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.deadline_ms.is_some_and(|d| self.now_ms >= d) {
            self.deadline_ms = None;
            if !self.relay_waiting(out) {
                // Give up on this view (or on the view change to it).
                self.start_view_change(self.view + 1, out);
            }
        }
        self.cut_batches(out, true);
        if self.view_changing && self.now_ms >= self.resend_requests_ms {
            self.resend_requests_ms = self.now_ms + self.config.view_change_timeout_ms;
            for r in self.own_waiting() {
                let m = self.sign(Message::Request(r));
                out.push(Action::Broadcast(m));
            }
        }
        if self.now_ms >= self.next_retransmit_ms {
            self.next_retransmit_ms = self.now_ms + self.config.retransmit_ms;
            self.retransmit(out);
            self.check_behind(out);
        }
    }

    /// First expiry for our own requests: relay them to everyone, so every
    /// replica watches the primary. Returns false when there was nothing
    /// left to relay (then the view changes).
    fn relay_waiting(&mut self, out: &mut Vec<Action>) -> bool {
        if self.view_changing {
            return false;
        }
        let me = self.keys.id;
        let mut relayed = Vec::new();
        for w in self.waiting.values_mut() {
            if w.request.id.origin == me && !w.relayed {
                w.relayed = true;
                relayed.push(w.request.clone());
            }
        }
        if relayed.is_empty() {
            return false;
        }
        for r in relayed {
            let m = self.sign(Message::Request(r));
            out.push(Action::Broadcast(m));
        }
        self.arm_timer();
        true
    }

    /// Peers whose checkpoint votes have not moved since the last
    /// retransmission and are behind what we executed get the committed
    /// batches they lack, whatever view they are in.
    /// Only the next few, and only once a peer has not moved for
    /// [`HANDOVER_STALLED_ROUNDS`] retransmissions: under load a busy peer's
    /// votes can lag behind large frames, and handing it whole batches then
    /// would only add to the load. Never to a backed-up peer. And one
    /// helper per round, not every replica ahead: the other members take
    /// turns (by how many rounds the peer has stalled, so a helper that
    /// does not help is followed by the next), because a peer that lags
    /// for want of CPU falls further behind if it must check n - 1 copies.
    fn hand_committed_to_stalled_peers(&mut self, out: &mut Vec<Action>) {
        let me = self.keys.id;
        for p in (0..self.config.n as ReplicaId).filter(|p| *p != me) {
            let progress = self.peer_progress.get(&p).copied().unwrap_or(0);
            let stalled = match self.progress_at_retransmit.get(&p) {
                Some((before, rounds)) if *before == progress => rounds + 1,
                _ => 0,
            };
            self.progress_at_retransmit.insert(p, (progress, stalled));
            if progress >= self.last_executed || stalled < HANDOVER_STALLED_ROUNDS || self.backlogged.contains(&p) {
                continue;
            }
            let turn = (stalled - HANDOVER_STALLED_ROUNDS) as usize % (self.config.n - 1);
            let helper = (0..self.config.n as ReplicaId).filter(|q| *q != p).nth(turn);
            if helper != Some(me) {
                continue;
            }
            // What we keep starts above our low watermark: a peer that is
            // further behind than that (or whose last vote we missed) gets
            // what we have, and what it lacks below comes by state transfer.
            let first = (progress + 1).max(self.low + 1);
            let upto = self.last_executed.min(first + HANDOVER_BATCHES_MAX - 1);
            if first > upto {
                continue;
            }
            let proofs: Vec<(SignedMessage, Vec<SignedMessage>)> = self
                .executed_proofs
                .range(first..=upto)
                .map(|(_, proof)| proof.clone())
                .collect();
            for (pp, commits) in proofs {
                let message = self.sign(Message::Committed {
                    pre_prepare: Box::new(pp),
                    commits,
                });
                out.push(Action::Send { to: p, message });
            }
        }
    }

    /// Sends again what peers may have missed: our messages for slots not
    /// yet stable (only when nothing executed since the last time: a busy
    /// pipeline is not a lost message; a PRE-PREPARE, which carries a
    /// batch, not to backed-up peers), our VIEW-CHANGE while changing, our
    /// latest checkpoint vote to peers behind it, committed batches to
    /// stalled peers (not backed-up ones), and the NEW-VIEW to peers still
    /// in older views.
    fn retransmit(&mut self, out: &mut Vec<Action>) {
        let me = self.keys.id;
        let stalled = self.last_executed == self.executed_at_retransmit;
        self.executed_at_retransmit = self.last_executed;
        if let (true, Some(vc)) = (self.view_changing, &self.my_view_change) {
            out.push(Action::Broadcast(vc.clone()));
        }
        if !self.view_changing && stalled {
            for slot in self.slots.values() {
                let Some(pp) = &slot.pre_prepare else { continue };
                if pp.slot().is_none_or(|(v, _, _)| v != self.view) {
                    continue;
                }
                if pp.sender == me {
                    if self.backlogged.is_empty() {
                        out.push(Action::Broadcast(pp.clone()));
                    } else {
                        for to in (0..self.config.n as ReplicaId).filter(|p| *p != me && !self.backlogged.contains(p)) {
                            out.push(Action::Send {
                                to,
                                message: pp.clone(),
                            });
                        }
                    }
                }
                for m in [slot.prepares.get(&me), slot.commits.get(&me)].into_iter().flatten() {
                    out.push(Action::Broadcast(m.clone()));
                }
            }
        }
        self.hand_committed_to_stalled_peers(out);
        if let Some((next_ms, interval_ms)) = self.announcing {
            if self.peer_progress.len() > self.config.f() {
                self.announcing = None;
            } else if self.now_ms >= next_ms {
                let state = self.states.get(&self.last_applied).copied().unwrap_or_default();
                let vote = self.sign(Message::Checkpoint {
                    seq: self.last_applied,
                    state,
                });
                out.push(Action::Broadcast(vote));
                let interval_ms = (interval_ms * 2).min(ANNOUNCE_INTERVAL_MAX_RETRANSMITS * self.config.retransmit_ms);
                self.announcing = Some((self.now_ms + interval_ms, interval_ms));
            }
        }
        let heard = std::mem::take(&mut self.peers_heard);
        let behind: Vec<ReplicaId> = (0..self.config.n as ReplicaId)
            .filter(|p| *p != me && self.peer_progress.get(p).is_none_or(|s| *s < self.last_applied))
            .collect();
        if let (false, Some(vote)) = (behind.is_empty(), self.latest_vote()) {
            for to in behind {
                out.push(Action::Send {
                    to,
                    message: vote.clone(),
                });
            }
        }
        if let (false, Some(nv)) = (self.view_changing, &self.new_view) {
            for p in heard {
                if self.peer_views.get(&p).is_some_and(|v| *v < self.view) {
                    out.push(Action::Send {
                        to: p,
                        message: nv.clone(),
                    });
                }
            }
        }
    }
}
