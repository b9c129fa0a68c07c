//! One PBFT replica: normal case, checkpoints, and view change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use ring::signature::Ed25519KeyPair;

use super::message::{digest, Digest, Message, PreparedCert, QuorumCert, ReplicaId, SignedMessage};

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
    /// A request not executed this long after a replica saw it starts a view
    /// change; each further view waits twice as long.
    pub view_change_timeout_ms: u64,
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
    /// The accepted pre-prepare (signed), for the slot's current view.
    pre_prepare: Option<SignedMessage>,
    prepares: BTreeMap<ReplicaId, SignedMessage>,
    commits: BTreeMap<ReplicaId, SignedMessage>,
    sent_commit: bool,
}

pub struct Replica {
    config: Config,
    keys: ReplicaKeys,
    view: u64,
    /// Between sending VIEW-CHANGE for `view` and accepting its NEW-VIEW.
    view_changing: bool,
    slots: BTreeMap<u64, Slot>,
    /// Primary only: the next sequence number to assign.
    next_seq: u64,
    last_executed: u64,
    /// Running digest of everything executed (what checkpoints compare).
    state: Digest,
    /// Last stable checkpoint: the low watermark, and its 2f + 1 proofs.
    low: u64,
    low_proof: Vec<SignedMessage>,
    /// Checkpoint votes by sequence number.
    checkpoints: BTreeMap<u64, BTreeMap<ReplicaId, SignedMessage>>,
    /// Verified messages just above the window or for a later view,
    /// replayed when the window or view gets there. Bounded.
    held: Vec<SignedMessage>,
    /// Per sequence number above the low watermark, the prepared
    /// certificate from the latest view this replica prepared it in. Kept
    /// across view changes until a stable checkpoint covers it: it is what
    /// carries a committed batch into every later view.
    prepared: BTreeMap<u64, PreparedCert>,
    /// VIEW-CHANGE messages by target view and sender.
    view_changes: BTreeMap<u64, BTreeMap<ReplicaId, SignedMessage>>,
    new_view_sent: BTreeSet<u64>,
    /// Requests seen and not yet executed, with when they were first seen.
    waiting: VecDeque<(Bytes, u64)>,
    /// When the current view (or view change) is given up on.
    deadline_ms: Option<u64>,
    /// View changes in a row without progress (the timeout doubles each).
    backoff: u32,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    oldest_pending_ms: Option<u64>,
    now_ms: u64,
}

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
        assert!(config.window >= config.checkpoint_interval && config.checkpoint_interval > 0);
        Self {
            config,
            keys,
            view: 0,
            view_changing: false,
            slots: BTreeMap::new(),
            next_seq: 1,
            last_executed: 0,
            state: [0; 32],
            low: 0,
            low_proof: Vec::new(),
            checkpoints: BTreeMap::new(),
            held: Vec::new(),
            prepared: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            new_view_sent: BTreeSet::new(),
            waiting: VecDeque::new(),
            deadline_ms: None,
            backoff: 0,
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
        !self.view_changing && self.primary(self.view) == self.keys.id
    }

    fn primary(&self, view: u64) -> ReplicaId {
        (view % self.config.n as u64) as ReplicaId
    }

    fn in_window(&self, seq: u64) -> bool {
        seq > self.low && seq <= self.low + self.config.window
    }

    /// The state machine's one entry point.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Request(request) => {
                if self.waiting.len() < self.config.waiting_requests_max
                    && !self.waiting.iter().any(|(r, _)| *r == request)
                {
                    self.waiting.push_back((request.clone(), self.now_ms));
                    self.arm_timer();
                }
                if self.is_primary() {
                    self.enqueue(request);
                    if self.pending_bytes >= self.config.batch_bytes_max {
                        self.cut_batches(&mut out, false);
                    }
                }
            }
            Event::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                if self.deadline_ms.is_some_and(|d| self.now_ms >= d) {
                    // Give up on this view (or on the view change to it).
                    self.start_view_change(self.view + 1, &mut out);
                }
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

    fn enqueue(&mut self, request: Bytes) {
        self.oldest_pending_ms.get_or_insert(self.now_ms);
        self.pending_bytes += request.len();
        self.pending.push_back(request);
    }

    fn timeout(&self) -> u64 {
        self.config
            .view_change_timeout_ms
            .saturating_mul(1 << self.backoff.min(16))
    }

    fn arm_timer(&mut self) {
        if self.deadline_ms.is_none() {
            self.deadline_ms = Some(self.now_ms + self.timeout());
        }
    }

    /// Primary: turns pending requests into pre-prepares while the window
    /// has room; on a tick, also cuts a partial batch that has waited long enough.
    fn cut_batches(&mut self, out: &mut Vec<Action>, tick: bool) {
        while self.is_primary() && !self.pending.is_empty() && self.in_window(self.next_seq) {
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

    fn hold(&mut self, m: SignedMessage) {
        if self.held.len() < held_max(&self.config) && !self.held.contains(&m) {
            self.held.push(m);
        }
    }

    /// Re-handles held messages that now fit the view and window.
    fn replay_held(&mut self, out: &mut Vec<Action>) {
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

    fn on_message(&mut self, m: SignedMessage, out: &mut Vec<Action>) {
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
            Message::PrePrepare { view, seq, .. } => {
                if m.sender != self.primary(view) {
                    return;
                }
                let slot = self.slots.entry(seq).or_default();
                if slot.pre_prepare.is_some() {
                    // One pre-prepare per (view, seq): a second, different
                    // one is the primary equivocating and is ignored.
                    return;
                }
                let Some((_, _, d)) = m.slot() else { return };
                slot.pre_prepare = Some(m.clone());
                if m.sender != self.keys.id {
                    self.broadcast(Message::Prepare { view, seq, digest: d }, out);
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
            Message::Checkpoint { seq, .. } => {
                if seq <= self.low || !seq.is_multiple_of(self.config.checkpoint_interval) {
                    return;
                }
                self.checkpoints.entry(seq).or_default().entry(m.sender).or_insert(m);
                self.try_stabilize(seq, out);
            }
            Message::ViewChange { new_view, .. } => self.on_view_change(m, new_view, out),
            Message::NewView {
                view,
                view_changes,
                pre_prepares,
            } => self.on_new_view(m.sender, view, &view_changes, &pre_prepares, out),
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
        if prepared
            && self
                .prepared
                .get(&seq)
                .is_none_or(|c| c.pre_prepare.slot().is_some_and(|(v, _, _)| v < view))
        {
            if let Some(slot) = self.slots.get(&seq) {
                if let Some(pp) = &slot.pre_prepare {
                    let prepares: Vec<SignedMessage> = slot
                        .prepares
                        .values()
                        .filter(|m| m.slot() == Some((view, seq, d)))
                        .take(2 * self.config.f())
                        .cloned()
                        .collect();
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
            let Some(Message::PrePrepare { batch, .. }) = slot.pre_prepare.as_ref().map(|p| p.message.clone()) else {
                return;
            };
            let cert_commits: Vec<SignedMessage> = slot
                .commits
                .values()
                .filter(|m| m.slot() == Some((view, seq, d)))
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
            self.note_executed(&batch);
            out.push(Action::Execute { seq, batch, cert });
            if seq.is_multiple_of(self.config.checkpoint_interval) {
                let state = self.state;
                self.broadcast(Message::Checkpoint { seq, state }, out);
            }
        }
    }

    /// Progress: drop executed requests from the waiting list and restart
    /// (or stop) the view-change timer.
    fn note_executed(&mut self, batch: &Bytes) {
        if let Some(requests) = batch_requests(batch) {
            self.waiting.retain(|(r, _)| !requests.contains(r));
        }
        self.backoff = 0;
        self.deadline_ms = None;
        if !self.waiting.is_empty() {
            self.arm_timer();
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
        let Some(mine) = votes.get(&self.keys.id).map(|m| m.message.clone()) else {
            return;
        };
        let proof: Vec<SignedMessage> = votes.values().filter(|m| m.message == mine).cloned().collect();
        if proof.len() < self.config.quorum() {
            return;
        }
        self.low = seq;
        self.low_proof = proof;
        self.slots = self.slots.split_off(&(seq + 1));
        self.prepared = self.prepared.split_off(&(seq + 1));
        self.checkpoints = self.checkpoints.split_off(&(seq + 1));
        self.replay_held(out);
        self.cut_batches(out, true);
    }

    // ---- view change -------------------------------------------------

    /// Stops taking part in the current view and asks for `new_view`.
    fn start_view_change(&mut self, new_view: u64, out: &mut Vec<Action>) {
        if new_view <= self.view && self.view_changing {
            return;
        }
        self.view = new_view;
        self.view_changing = true;
        self.backoff = self.backoff.saturating_add(1);
        self.deadline_ms = Some(self.now_ms + self.timeout());
        let prepared = self.prepared_certs();
        let msg = Message::ViewChange {
            new_view,
            stable_seq: self.low,
            checkpoint_proof: self.low_proof.clone(),
            prepared,
        };
        self.broadcast(msg, out);
    }

    /// For every sequence number above the low watermark that this replica
    /// prepared in any view, the certificate from the latest such view.
    fn prepared_certs(&self) -> Vec<PreparedCert> {
        self.prepared.range(self.low + 1..).map(|(_, c)| c.clone()).collect()
    }

    fn on_view_change(&mut self, m: SignedMessage, new_view: u64, out: &mut Vec<Action>) {
        if new_view < self.view || (new_view == self.view && !self.view_changing) || !self.valid_view_change(&m) {
            return;
        }
        self.view_changes
            .entry(new_view)
            .or_default()
            .entry(m.sender)
            .or_insert(m);
        // f + 1 replicas asking for later views: at least one is honest, so
        // join the smallest such view rather than wait for our own timer.
        if !self.view_changing || new_view > self.view {
            let mut later: BTreeMap<ReplicaId, u64> = BTreeMap::new();
            for (v, votes) in self.view_changes.range(self.view + u64::from(!self.view_changing)..) {
                for sender in votes.keys() {
                    later.entry(*sender).or_insert(*v);
                }
            }
            if later.len() > self.config.f() {
                if let Some(v) = later.values().min().copied() {
                    if v > self.view || !self.view_changing {
                        self.start_view_change(v.max(self.view + u64::from(!self.view_changing)), out);
                    }
                }
            }
        }
        // The new primary starts the view once 2f + 1 (its own included) agree.
        let v = self.view;
        if self.view_changing
            && self.primary(v) == self.keys.id
            && !self.new_view_sent.contains(&v)
            && self
                .view_changes
                .get(&v)
                .is_some_and(|votes| votes.len() >= self.config.quorum() && votes.contains_key(&self.keys.id))
        {
            let view_changes: Vec<SignedMessage> = self.view_changes[&v]
                .values()
                .take(self.config.quorum())
                .cloned()
                .collect();
            let (_, proposals) = new_view_proposals(&self.config, &view_changes);
            let pre_prepares = proposals
                .into_iter()
                .map(|(seq, batch)| {
                    let msg = Message::PrePrepare {
                        view: v,
                        seq,
                        digest: digest(&batch),
                        batch,
                    };
                    SignedMessage::sign(self.config.cluster, self.keys.id, &self.keys.key, msg)
                })
                .collect();
            self.new_view_sent.insert(v);
            self.broadcast(
                Message::NewView {
                    view: v,
                    view_changes,
                    pre_prepares,
                },
                out,
            );
        }
    }

    /// Checks a VIEW-CHANGE's checkpoint proof and prepared certificates.
    fn valid_view_change(&self, m: &SignedMessage) -> bool {
        let Message::ViewChange {
            new_view,
            stable_seq,
            checkpoint_proof,
            prepared,
        } = &m.message
        else {
            return false;
        };
        let members = &self.keys.members;
        let cluster = self.config.cluster;
        if *stable_seq > 0 {
            let Some(first) = checkpoint_proof.first() else {
                return false;
            };
            let senders: BTreeSet<ReplicaId> = checkpoint_proof.iter().map(|c| c.sender).collect();
            let sound = checkpoint_proof.iter().all(|c| {
                c.message == first.message
                    && matches!(c.message, Message::Checkpoint { seq, .. } if seq == *stable_seq)
                    && c.verify(cluster, members).is_ok()
            });
            if !sound || senders.len() < self.config.quorum() {
                return false;
            }
        }
        prepared.iter().all(|p| {
            let Some((view, seq, d)) = p.pre_prepare.slot() else {
                return false;
            };
            let senders: BTreeSet<ReplicaId> = p.prepares.iter().map(|x| x.sender).collect();
            matches!(p.pre_prepare.message, Message::PrePrepare { .. })
                && view < *new_view
                && seq > *stable_seq
                && p.pre_prepare.sender == self.primary(view)
                && p.pre_prepare.verify(cluster, members).is_ok()
                && senders.len() >= 2 * self.config.f()
                && !senders.contains(&self.primary(view))
                && p.prepares.iter().all(|x| {
                    matches!(x.message, Message::Prepare { .. })
                        && x.slot() == Some((view, seq, d))
                        && x.verify(cluster, members).is_ok()
                })
        })
    }

    fn on_new_view(
        &mut self,
        sender: ReplicaId,
        view: u64,
        view_changes: &[SignedMessage],
        pre_prepares: &[SignedMessage],
        out: &mut Vec<Action>,
    ) {
        if view < self.view || (view == self.view && !self.view_changing) || sender != self.primary(view) {
            return;
        }
        // 2f + 1 valid VIEW-CHANGEs for this view from distinct replicas…
        let senders: BTreeSet<ReplicaId> = view_changes.iter().map(|v| v.sender).collect();
        let valid = view_changes.iter().all(|vc| {
            matches!(vc.message, Message::ViewChange { new_view, .. } if new_view == view)
                && vc.verify(self.config.cluster, &self.keys.members).is_ok()
                && self.valid_view_change(vc)
        });
        if !valid || senders.len() < self.config.quorum() || senders.len() != view_changes.len() {
            return;
        }
        // …and exactly the pre-prepares they imply, signed by the new primary.
        let (min_s, proposals) = new_view_proposals(&self.config, view_changes);
        let matches = pre_prepares.len() == proposals.len()
            && pre_prepares.iter().zip(&proposals).all(|(pp, (seq, batch))| {
                pp.sender == sender
                    && pp.verify(self.config.cluster, &self.keys.members).is_ok()
                    && matches!(&pp.message, Message::PrePrepare { view: v, seq: s, batch: b, .. } if *v == view && s == seq && b == batch)
            });
        if !matches {
            return;
        }
        // The VIEW-CHANGE that proved min_s carries that checkpoint's proof.
        let proof = view_changes
            .iter()
            .find_map(|vc| match &vc.message {
                Message::ViewChange {
                    stable_seq,
                    checkpoint_proof,
                    ..
                } if *stable_seq == min_s => Some(checkpoint_proof.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.enter_view(view, min_s, proof, pre_prepares, out);
    }

    fn enter_view(
        &mut self,
        view: u64,
        min_s: u64,
        min_s_proof: Vec<SignedMessage>,
        pre_prepares: &[SignedMessage],
        out: &mut Vec<Action>,
    ) {
        self.view = view;
        self.view_changing = false;
        self.deadline_ms = None;
        self.view_changes = self.view_changes.split_off(&(view + 1));
        // The new view re-proposes everything prepared above min_s; our
        // votes from older views no longer count.
        self.slots.retain(|seq, _| *seq <= self.last_executed);
        if min_s > self.low && self.last_executed >= min_s {
            self.low = min_s;
            self.low_proof = min_s_proof;
            self.slots = self.slots.split_off(&(min_s + 1));
            self.prepared = self.prepared.split_off(&(min_s + 1));
        }
        let max_s = pre_prepares
            .iter()
            .filter_map(|p| p.slot())
            .map(|(_, s, _)| s)
            .max()
            .unwrap_or(min_s);
        self.next_seq = max_s.max(self.last_executed).max(self.low) + 1;
        // The new primary orders whatever it saw that has not executed and
        // is not being re-proposed.
        if self.primary(view) == self.keys.id {
            let proposed: Vec<Bytes> = pre_prepares
                .iter()
                .filter_map(|p| match &p.message {
                    Message::PrePrepare { batch, .. } => batch_requests(batch),
                    _ => None,
                })
                .flatten()
                .collect();
            self.pending.clear();
            self.pending_bytes = 0;
            self.oldest_pending_ms = None;
            let waiting: Vec<Bytes> = self.waiting.iter().map(|(r, _)| r.clone()).collect();
            for r in waiting.into_iter().filter(|r| !proposed.contains(r)) {
                self.enqueue(r);
            }
        }
        if !self.waiting.is_empty() {
            self.arm_timer();
        }
        for pp in pre_prepares {
            let Some((_, seq, d)) = pp.slot() else { continue };
            if seq > self.last_executed {
                self.on_message(pp.clone(), out);
                continue;
            }
            // Already executed here: still vote for it in the new view, so
            // replicas that have not executed it can reach a quorum. Safe:
            // we committed exactly this digest at this sequence number.
            let executed_same = self
                .slots
                .get(&seq)
                .and_then(|s| s.pre_prepare.as_ref())
                .is_some_and(|old| old.slot().is_some_and(|(_, _, od)| od == d));
            if executed_same {
                if let Some(slot) = self.slots.get_mut(&seq) {
                    slot.pre_prepare = Some(pp.clone());
                    slot.prepares.clear();
                    slot.commits.clear();
                    slot.sent_commit = true;
                }
                if self.primary(view) != self.keys.id {
                    self.broadcast(Message::Prepare { view, seq, digest: d }, out);
                }
                self.broadcast(Message::Commit { view, seq, digest: d }, out);
            }
        }
        self.replay_held(out);
        self.cut_batches(out, true);
    }
}

/// What the primary of a new view proposes, computed from 2f + 1
/// VIEW-CHANGEs the same way by every replica: the highest stable checkpoint
/// among them (`min_s`), then for each sequence number up to the highest
/// prepared one, the batch prepared in the latest view, or an empty batch.
fn new_view_proposals(config: &Config, view_changes: &[SignedMessage]) -> (u64, Vec<(u64, Bytes)>) {
    let mut min_s = 0;
    let mut best: BTreeMap<u64, (u64, Bytes)> = BTreeMap::new();
    for vc in view_changes {
        let Message::ViewChange {
            stable_seq, prepared, ..
        } = &vc.message
        else {
            continue;
        };
        min_s = min_s.max(*stable_seq);
        for p in prepared {
            let (Some((view, seq, _)), Message::PrePrepare { batch, .. }) =
                (p.pre_prepare.slot(), &p.pre_prepare.message)
            else {
                continue;
            };
            if best.get(&seq).is_none_or(|(v, _)| view > *v) {
                best.insert(seq, (view, batch.clone()));
            }
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s).max(min_s);
    // Never propose past the window the new view starts with.
    let max_s = max_s.min(min_s + config.window);
    let proposals = (min_s + 1..=max_s)
        .map(|seq| (seq, best.get(&seq).map(|(_, b)| b.clone()).unwrap_or_default()))
        .collect();
    (min_s, proposals)
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
