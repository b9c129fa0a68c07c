//! One PBFT replica: the normal case, in-order execution, checkpoints.

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use ring::signature::Ed25519KeyPair;

use super::message::{digest, Digest, Message, QuorumCert, ReplicaId, SignedMessage};

/// A cluster's parameters; every replica of it must use the same ones.
#[derive(Clone, Debug)]
pub struct Config {
    /// Identifies the cluster in every signature (no cross-cluster replay).
    pub cluster: u64,
    /// Replicas in the cluster: 3f + 1.
    pub n: usize,
    /// A checkpoint every this many sequence numbers (K).
    pub checkpoint_interval: u64,
    /// Sequence numbers accepted above the last stable checkpoint (L).
    pub window: u64,
    /// The primary cuts a batch at this many request bytes…
    pub batch_bytes_max: usize,
    /// …or when its oldest request has waited this long.
    pub batch_delay_ms: u64,
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
    /// A client request handed to this replica.
    Request(Bytes),
    /// A message from a peer, as received (not yet verified).
    Message(SignedMessage),
    /// Time passes; `now_ms` never goes backwards.
    Tick { now_ms: u64 },
}

/// What a replica asks its environment to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send to every other replica.
    Broadcast(SignedMessage),
    /// Apply a committed batch, in sequence order, with its proof.
    Execute { seq: u64, batch: Bytes, cert: QuorumCert },
}

#[derive(Default)]
struct Slot {
    /// (view, digest, batch) of the accepted pre-prepare.
    pre_prepare: Option<(u64, Digest, Bytes)>,
    prepares: BTreeMap<ReplicaId, SignedMessage>,
    commits: BTreeMap<ReplicaId, SignedMessage>,
    sent_commit: bool,
}

pub struct Replica {
    config: Config,
    keys: ReplicaKeys,
    view: u64,
    slots: BTreeMap<u64, Slot>,
    /// Primary only: the next sequence number to assign.
    next_seq: u64,
    last_executed: u64,
    /// Running digest of everything executed (what checkpoints compare).
    state: Digest,
    /// Last stable checkpoint: the low watermark.
    low: u64,
    /// Checkpoint votes by sequence number.
    checkpoints: BTreeMap<u64, BTreeMap<ReplicaId, Digest>>,
    /// Verified messages for sequence numbers just above the window: a peer
    /// whose checkpoint became stable first may already be sending them.
    /// Replayed when the window moves; bounded to one more window.
    future: BTreeMap<u64, Vec<SignedMessage>>,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    oldest_pending_ms: Option<u64>,
    now_ms: u64,
}

impl Replica {
    pub fn new(config: Config, keys: ReplicaKeys) -> Self {
        assert!(
            config.n >= 4 && config.n == 3 * config.f() + 1,
            "n must be 3f + 1 with f >= 1"
        );
        assert_eq!(keys.members.len(), config.n, "one public key per member");
        assert!(config.window >= config.checkpoint_interval && config.checkpoint_interval > 0);
        Self {
            config,
            keys,
            view: 0,
            slots: BTreeMap::new(),
            next_seq: 1,
            last_executed: 0,
            state: [0; 32],
            low: 0,
            checkpoints: BTreeMap::new(),
            future: BTreeMap::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            oldest_pending_ms: None,
            now_ms: 0,
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.keys.id
    }
    pub fn view(&self) -> u64 {
        self.view
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
    pub fn is_primary(&self) -> bool {
        self.primary(self.view) == self.keys.id
    }

    fn primary(&self, view: u64) -> ReplicaId {
        (view % self.config.n as u64) as ReplicaId
    }

    fn in_window(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.low + self.config.window
    }

    /// Keeps a message for a sequence number in the next window, to be
    /// handled when the window gets there. Returns whether it was kept.
    fn hold_for_later(&mut self, seq: u64, m: &SignedMessage) -> bool {
        let high = self.low + self.config.window;
        if seq <= high || seq > high + self.config.window {
            return false;
        }
        // At most one pre-prepare, prepare and commit per sender and sequence number.
        let held = self.future.entry(seq).or_default();
        if held.len() < 3 * self.config.n
            && !held.iter().any(|h| {
                h.sender == m.sender && std::mem::discriminant(&h.message) == std::mem::discriminant(&m.message)
            })
        {
            held.push(m.clone());
        }
        true
    }

    /// The state machine's one entry point.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Request(request) => {
                if self.is_primary() {
                    self.oldest_pending_ms.get_or_insert(self.now_ms);
                    self.pending_bytes += request.len();
                    self.pending.push_back(request);
                    if self.pending_bytes >= self.config.batch_bytes_max {
                        self.cut_batches(&mut out, false);
                    }
                }
                // A backup does not order requests; the node forwards them
                // to the primary (wired up with the transport).
            }
            Event::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.cut_batches(&mut out, true);
            }
            Event::Message(m) => {
                if m.verify(self.config.cluster, &self.keys.members).is_ok() {
                    self.on_message(m, &mut out);
                }
            }
        }
        out
    }

    /// Primary: turns pending requests into pre-prepares while the window
    /// has room; on a tick, also cuts a partial batch that has waited long enough.
    fn cut_batches(&mut self, out: &mut Vec<Action>, tick: bool) {
        while !self.pending.is_empty() && self.in_window(self.next_seq) {
            let full = self.pending_bytes >= self.config.batch_bytes_max;
            let waited = self
                .oldest_pending_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) >= self.config.batch_delay_ms);
            if !(full || (tick && waited)) {
                break;
            }
            let mut batch = BytesMut::new();
            while let Some(r) = self.pending.front() {
                if !batch.is_empty() && batch.len() + 4 + r.len() > self.config.batch_bytes_max {
                    break;
                }
                let r = self.pending.pop_front().unwrap_or_default();
                self.pending_bytes -= r.len();
                batch.put_u32(r.len() as u32);
                batch.put_slice(&r);
            }
            self.oldest_pending_ms = if self.pending.is_empty() {
                None
            } else {
                Some(self.now_ms)
            };
            let batch = batch.freeze();
            let seq = self.next_seq;
            self.next_seq += 1;
            let msg = Message::PrePrepare {
                view: self.view,
                seq,
                digest: digest(&batch),
                batch,
            };
            self.broadcast(msg, out);
        }
    }

    /// Signs, sends to the others, and processes our own copy.
    fn broadcast(&mut self, message: Message, out: &mut Vec<Action>) {
        let signed = SignedMessage::sign(self.config.cluster, self.keys.id, &self.keys.key, message);
        out.push(Action::Broadcast(signed.clone()));
        self.on_message(signed, out);
    }

    fn on_message(&mut self, m: SignedMessage, out: &mut Vec<Action>) {
        match m.message.clone() {
            Message::PrePrepare {
                view,
                seq,
                digest,
                batch,
            } => {
                if view != self.view || m.sender != self.primary(view) {
                    return;
                }
                if !self.in_window(seq) {
                    self.hold_for_later(seq, &m);
                    return;
                }
                let slot = self.slots.entry(seq).or_default();
                match &slot.pre_prepare {
                    // One pre-prepare per (view, seq): a second, different
                    // one is the primary equivocating and is ignored.
                    Some(_) => return,
                    None => slot.pre_prepare = Some((view, digest, batch)),
                }
                if m.sender != self.keys.id {
                    self.broadcast(Message::Prepare { view, seq, digest }, out);
                }
                self.progress(seq, out);
            }
            Message::Prepare { view, seq, .. } => {
                if view != self.view || m.sender == self.primary(view) {
                    return;
                }
                if !self.in_window(seq) {
                    self.hold_for_later(seq, &m);
                    return;
                }
                // First prepare per sender wins; a conflicting second is ignored.
                self.slots.entry(seq).or_default().prepares.entry(m.sender).or_insert(m);
                self.progress(seq, out);
            }
            Message::Commit { view, seq, .. } => {
                if view != self.view {
                    return;
                }
                if !self.in_window(seq) {
                    self.hold_for_later(seq, &m);
                    return;
                }
                self.slots.entry(seq).or_default().commits.entry(m.sender).or_insert(m);
                self.progress(seq, out);
            }
            Message::Checkpoint { seq, state } => {
                if seq <= self.low || !seq.is_multiple_of(self.config.checkpoint_interval) {
                    return;
                }
                self.checkpoints
                    .entry(seq)
                    .or_default()
                    .entry(m.sender)
                    .or_insert(state);
                self.try_stabilize(seq, out);
            }
        }
    }

    /// Matching prepares and commits for a slot's accepted pre-prepare.
    fn counts(&self, seq: u64) -> Option<(u64, Digest, usize, usize)> {
        let slot = self.slots.get(&seq)?;
        let (view, d, _) = slot.pre_prepare.as_ref()?;
        let matches = |m: &SignedMessage| match &m.message {
            Message::Prepare { view: v, digest, .. } | Message::Commit { view: v, digest, .. } => {
                v == view && digest == d
            }
            _ => false,
        };
        let prepares = slot.prepares.values().filter(|m| matches(m)).count();
        let commits = slot.commits.values().filter(|m| matches(m)).count();
        Some((*view, *d, prepares, commits))
    }

    fn progress(&mut self, seq: u64, out: &mut Vec<Action>) {
        let Some((view, d, prepares, _)) = self.counts(seq) else {
            return;
        };
        // Prepared: the pre-prepare plus 2f matching prepares from backups.
        let prepared = prepares >= 2 * self.config.f();
        let sent = self.slots.get(&seq).is_some_and(|s| s.sent_commit);
        if prepared && !sent {
            if let Some(s) = self.slots.get_mut(&seq) {
                s.sent_commit = true;
            }
            self.broadcast(Message::Commit { view, seq, digest: d }, out);
        }
        self.execute_ready(out);
    }

    /// Executes every committed slot that comes next in sequence order.
    fn execute_ready(&mut self, out: &mut Vec<Action>) {
        loop {
            let seq = self.last_executed + 1;
            let Some((view, d, prepares, commits)) = self.counts(seq) else {
                return;
            };
            if prepares < 2 * self.config.f() || commits < self.config.quorum() {
                return;
            }
            let Some(slot) = self.slots.get(&seq) else { return };
            let Some((_, _, batch)) = slot.pre_prepare.clone() else {
                return;
            };
            let cert_commits: Vec<SignedMessage> = slot
                .commits
                .values()
                .filter(|m| matches!(&m.message, Message::Commit { view: v, digest, .. } if *v == view && *digest == d))
                .take(self.config.quorum())
                .cloned()
                .collect();
            let cert = QuorumCert {
                view,
                seq,
                digest: d,
                commits: cert_commits,
            };
            self.last_executed = seq;
            self.state = chain_state(&self.state, seq, &d);
            out.push(Action::Execute { seq, batch, cert });
            if seq.is_multiple_of(self.config.checkpoint_interval) {
                let state = self.state;
                self.broadcast(Message::Checkpoint { seq, state }, out);
            }
        }
    }

    /// A checkpoint is stable with 2f + 1 matching votes that include our
    /// own (so we hold that state): the log up to it is dropped and the
    /// window moves. A replica that has not executed that far needs state
    /// transfer, which is not implemented yet.
    fn try_stabilize(&mut self, seq: u64, out: &mut Vec<Action>) {
        let Some(votes) = self.checkpoints.get(&seq) else {
            return;
        };
        let Some(mine) = votes.get(&self.keys.id) else { return };
        if votes.values().filter(|s| *s == mine).count() < self.config.quorum() {
            return;
        }
        self.low = seq;
        self.slots = self.slots.split_off(&(seq + 1));
        self.checkpoints = self.checkpoints.split_off(&(seq + 1));
        // Replay what was held for the window we just moved into.
        let high = self.low + self.config.window;
        let later = self.future.split_off(&(high + 1));
        let now_in_window = std::mem::replace(&mut self.future, later);
        for m in now_in_window.into_values().flatten() {
            self.on_message(m, out);
        }
        // The primary may have requests waiting for room in the window.
        self.cut_batches(out, true);
    }
}

/// The state after executing `digest` at `seq`.
fn chain_state(prev: &Digest, seq: u64, d: &Digest) -> Digest {
    let mut b = Vec::with_capacity(72);
    b.extend_from_slice(prev);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(d);
    digest(&b)
}

/// Splits a batch back into the requests it carries.
pub fn batch_requests(batch: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        let len = u32::from_be_bytes(batch.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        out.push(batch.get(at..at + len).map(|_| batch.slice(at..at + len))?);
        at += len;
    }
    Some(out)
}
