//! Deterministic simulation of PBFT clusters with seeded faults.
//!
//! Each seed builds a cluster of 4 or 7 real `Replica`s, each with a small
//! application beside it (a hash-chained ledger of executed batches, with
//! the quorum certificates it was given, and request de-duplication), and a
//! network that delays, reorders and duplicates messages. On top, a seed
//! picks faults within the cluster's budget of f:
//!
//! * network: message loss, replay of old messages, a replica cut off for
//!   a while;
//! * crashes: a replica (often the primary) stops and restarts, with its
//!   disk (durable log and ledger) or without it;
//! * Byzantine replicas: forged signatures, a replica whose signatures are
//!   all wrong, a primary whose batches do not match their digest, a silent
//!   primary, an equivocating primary, a replica sending conflicting
//!   VIEW-CHANGEs (and view changes nobody asked for), a replica that answers
//!   state transfers with forged blocks.
//!
//! Apart from that budget (the replica stays correct), failed writes: for
//! a while, an execution on a correct replica may fail, losing it and those
//! queued behind it, and the replica is told to rewind to what its ledger
//! holds.
//!
//! Safety is checked after every step: no two correct replicas hold
//! different batches at one sequence number, every execution carries a
//! valid commit certificate, every certificate verifies and names the
//! certified replica's own state, and no request takes effect twice.
//! Liveness is checked once the faults heal: every correct replica holds
//! every request.
//!
//! `COURIER_SIM_SEED=n cargo test -p courier-tests --test pbft_sim` replays
//! one seed; `COURIER_SIM_SEEDS=n` sets how many are swept (from
//! `COURIER_SIM_SEED_FROM`, default 0); `COURIER_SIM_DEBUG=1` prints each
//! replica's end state and `COURIER_SIM_TRACE=1` the protocol's steps.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use courier_consensus::pbft::{
    digest, public_key, Action, Batch, Config, Digest, Durable, Event, Message, QuorumCert, Recovered, Replica,
    ReplicaKeys, Request, RequestId, SignatureCache, SignedMessage,
};
use ring::signature::Ed25519KeyPair;

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Byzantine {
    None,
    /// Garbage messages claiming honest senders, with random signatures.
    Forger,
    /// One replica signs everything with a key nobody knows.
    WrongKeys,
    /// Pre-prepares whose batch does not match the signed digest.
    BadDigest,
    /// The primary sends one backup a different batch for each sequence number.
    EquivocatingPrimary,
    /// The primary sends nothing at all.
    SilentPrimary,
    /// VIEW-CHANGEs that differ by recipient (prepared certificates
    /// withheld from some), and view changes for views nobody asked for.
    ConflictingViewChanges,
    /// Answers state transfers with forged blocks and certificates.
    LyingTransfer,
}

const BYZANTINE_MODES: [Byzantine; 8] = [
    Byzantine::None,
    Byzantine::Forger,
    Byzantine::WrongKeys,
    Byzantine::BadDigest,
    Byzantine::EquivocatingPrimary,
    Byzantine::SilentPrimary,
    Byzantine::ConflictingViewChanges,
    Byzantine::LyingTransfer,
];

/// A replica crash the seed schedules.
#[derive(Clone, Copy, Debug)]
struct Crash {
    who: u8,
    at_ms: u64,
    down_ms: u64,
    keeps_disk: bool,
    /// Keeping its ledger, the replica's durable log loses its records
    /// from this one on (a damaged record and everything after it, as a
    /// node's log reads back after damage): it recovers by abstaining.
    /// Drawn from its own random stream, so other faults keep their seeds;
    /// unlike losing the whole disk, allowed beside a Byzantine replica.
    log_lost_from: Option<usize>,
}

/// Backed-up links, as the environment reports them: until `until_ms`,
/// each millisecond with a chance of `per_mille`, one peer is added to or
/// taken from one replica's backlog (past f of them, a primary orders
/// nothing new). Drawn from its own random stream, so the other faults of
/// a seed are as they were.
#[derive(Clone, Copy, Debug)]
struct Congestion {
    until_ms: u64,
    per_mille: u64,
}

/// Failed writes on correct replicas, for a while.
#[derive(Clone, Copy, Debug)]
struct WriteFaults {
    until_ms: u64,
    per_mille: u64,
}

/// A replica cut off from all others for a while.
#[derive(Clone, Copy, Debug)]
struct Cut {
    who: u8,
    from_ms: u64,
    until_ms: u64,
}

/// One executed batch in a replica's application ledger.
#[derive(Clone, Debug)]
struct Entry {
    batch: Batch,
    state: Digest,
    cert: Option<QuorumCert>,
}

/// The state after executing `batch` at `seq` on top of `prev`: a hash chain,
/// as a partition's block hashes are.
fn chain(prev: &Digest, seq: u64, batch: &Batch) -> Digest {
    let mut b = Vec::with_capacity(72);
    b.extend_from_slice(prev);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&batch.digest());
    digest(&b)
}

/// A replica and its application.
struct Node {
    replica: Option<Replica>,
    /// Entry i holds sequence number i + 1.
    ledger: Vec<Entry>,
    /// Requests whose effect was applied (de-duplication by request id).
    applied: BTreeSet<RequestId>,
    /// The durable log.
    disk: Vec<Durable>,
    /// Executions handed over and not yet done: (done at, seq, batch).
    executing: VecDeque<(u64, u64, Batch)>,
}

impl Node {
    fn head(&self) -> Digest {
        self.ledger.last().map(|e| e.state).unwrap_or([0; 32])
    }
}

/// What travels between nodes.
#[derive(Clone, Debug)]
enum Wire {
    Msg(SignedMessage),
    /// A state-transfer answer: entries from sequence number `from`.
    Blocks {
        from: u64,
        entries: Vec<Entry>,
    },
}

/// A message in flight (ordered only by the heap's key, never compared).
struct InFlight(Wire);
impl PartialEq for InFlight {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn key(seed: u64, id: u8) -> Ed25519KeyPair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_be_bytes());
    s[8] = id;
    s[9] = 0x5a;
    Ed25519KeyPair::from_seed_unchecked(&s).expect("a 32-byte seed")
}

struct Sim {
    seed: u64,
    rng: Rng,
    nodes: Vec<Node>,
    keys: Vec<Ed25519KeyPair>,
    members: Vec<Bytes>,
    config: Config,
    byzantine: Byzantine,
    /// The replica that misbehaves (its ledger is not checked).
    byz_id: Option<u8>,
    loss_per_mille: u64,
    dup_per_mille: u64,
    replay_per_mille: u64,
    crash: Option<Crash>,
    cut: Option<Cut>,
    congestion: Option<Congestion>,
    congestion_rng: Rng,
    /// Failed writes: until then, an execution fails with this chance
    /// (per mille) on a correct replica, losing it and those queued behind
    /// it (its own random stream, so other faults keep their seeds).
    write_faults: Option<WriteFaults>,
    write_rng: Rng,
    writes_failed: u64,
    /// The peers each replica is told are backed up now.
    backlogged: Vec<BTreeSet<u8>>,
    now_ms: u64,
    order: u64,
    /// (deliver at, tiebreak, to, message)
    net: BinaryHeap<Reverse<(u64, u64, u8, InFlight)>>,
    /// Messages seen on the wire, for replaying later (bounded).
    seen: Vec<SignedMessage>,
    /// The batch digest every correct replica holds at each sequence number.
    agreed: BTreeMap<u64, Digest>,
    /// Every request submitted, by origin, in submission order.
    submitted: Vec<Request>,
    next_number: Vec<u64>,
    trace: bool,
    /// Forged state transfers refused by a correct replica.
    forged_transfers_refused: u64,
    transfers_installed: u64,
    view_changes_seen: u64,
    /// The oracle's own memory of signatures it checked.
    oracle_sigs: SignatureCache,
}

/// Requests a run submits.
fn requests_for(seed: u64) -> usize {
    5 + (seed % 30) as usize
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = if rng.chance(250) { 7 } else { 4 };
        let f = (n - 1) / 3;
        let byzantine = BYZANTINE_MODES[rng.below(BYZANTINE_MODES.len() as u64) as usize];
        let byz_id = match byzantine {
            Byzantine::None | Byzantine::Forger => None,
            Byzantine::WrongKeys | Byzantine::ConflictingViewChanges | Byzantine::LyingTransfer => {
                Some(1 + rng.below(n as u64 - 1) as u8)
            }
            Byzantine::BadDigest | Byzantine::EquivocatingPrimary | Byzantine::SilentPrimary => Some(0),
        };
        // Faults beyond the Byzantine one, within the budget of f.
        let mut budget = f - usize::from(byz_id.is_some());
        let pick_victim = |rng: &mut Rng| loop {
            // Often the first primary, since losing it forces a view change.
            let who = if rng.chance(400) { 0 } else { rng.below(n as u64) as u8 };
            if Some(who) != byz_id {
                return who;
            }
        };
        let crash = if budget > 0 && rng.chance(350) {
            budget -= 1;
            Some(Crash {
                who: pick_victim(&mut rng),
                at_ms: 20 + rng.below(400),
                down_ms: 50 + rng.below(800),
                // Losing the disk is amnesia: only when nothing else is wrong.
                keeps_disk: byz_id.is_some() || rng.chance(500),
                log_lost_from: None,
            })
        } else {
            None
        };
        let cut = if budget > 0 && rng.chance(250) {
            let from_ms = 20 + rng.below(400);
            Some(Cut {
                who: pick_victim(&mut rng),
                from_ms,
                until_ms: from_ms + 100 + rng.below(1500),
            })
        } else {
            None
        };
        let config = Config {
            cluster: 7,
            n,
            window: 4 + rng.below(8),
            batch_bytes_max: 64 + rng.below(256) as usize,
            batch_delay_ms: 1 + rng.below(5),
            view_change_timeout_ms: 60 + rng.below(60),
            retransmit_ms: 20 + rng.below(30),
            waiting_requests_max: 1000,
        };
        let keys: Vec<Ed25519KeyPair> = (0..n as u8).map(|i| key(seed, i)).collect();
        let members: Vec<Bytes> = keys.iter().map(public_key).collect();
        let nodes = (0..n as u8)
            .map(|i| Node {
                replica: Some(Replica::new(
                    config.clone(),
                    ReplicaKeys {
                        id: i,
                        key: key(seed, i),
                        members: members.clone(),
                    },
                )),
                ledger: Vec::new(),
                applied: BTreeSet::new(),
                disk: Vec::new(),
                executing: VecDeque::new(),
            })
            .collect();
        let loss_per_mille = if rng.chance(300) { 20 + rng.below(80) } else { 0 };
        let dup_per_mille = rng.below(150);
        let replay_per_mille = if rng.chance(200) { 5 + rng.below(30) } else { 0 };
        let mut congestion_rng = Rng::new(seed ^ 0xC04E_5710_u64);
        let congestion = congestion_rng.chance(300).then(|| Congestion {
            until_ms: 50 + congestion_rng.below(1500),
            per_mille: 5 + congestion_rng.below(100),
        });
        let mut crash = crash;
        if let Some(c) = crash.as_mut().filter(|c| c.keeps_disk) {
            let mut log_rng = Rng::new(seed ^ 0x0106_D0A7_u64);
            if log_rng.chance(500) {
                c.log_lost_from = Some(log_rng.below(1 << 16) as usize);
            }
        }
        let mut write_rng = Rng::new(seed ^ 0x00F5_1C0E_u64);
        let write_faults = write_rng.chance(250).then(|| WriteFaults {
            until_ms: 50 + write_rng.below(1500),
            per_mille: 20 + write_rng.below(200),
        });
        Sim {
            seed,
            rng,
            write_faults,
            write_rng,
            writes_failed: 0,
            nodes,
            keys,
            members,
            config,
            byzantine,
            byz_id,
            loss_per_mille,
            dup_per_mille,
            replay_per_mille,
            crash,
            cut,
            congestion,
            congestion_rng,
            backlogged: vec![BTreeSet::new(); n],
            now_ms: 0,
            order: 0,
            net: BinaryHeap::new(),
            seen: Vec::new(),
            agreed: BTreeMap::new(),
            submitted: Vec::new(),
            next_number: vec![0; n],
            trace: std::env::var("COURIER_SIM_TRACE").is_ok(),
            forged_transfers_refused: 0,
            transfers_installed: 0,
            view_changes_seen: 0,
            oracle_sigs: SignatureCache::new(1 << 14),
        }
    }

    fn correct(&self, id: usize) -> bool {
        Some(id as u8) != self.byz_id
    }

    fn is_cut(&self, a: u8, b: u8) -> bool {
        self.cut
            .is_some_and(|c| (c.who == a || c.who == b) && self.now_ms >= c.from_ms && self.now_ms < c.until_ms)
    }

    fn send(&mut self, from: u8, to: u8, w: Wire) {
        if self.is_cut(from, to) || self.rng.chance(self.loss_per_mille) {
            return;
        }
        let copies = if self.rng.chance(self.dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now_ms + 1 + self.rng.below(6);
            self.order += 1;
            self.net.push(Reverse((at, self.order, to, InFlight(w.clone()))));
        }
    }

    fn handle(&mut self, id: u8, event: Event) {
        let Some(replica) = self.nodes[id as usize].replica.as_mut() else {
            return;
        };
        let actions = replica.handle(event);
        if let Some(through) = replica.abstaining() {
            self.check_abstains(id, through, &actions);
        }
        self.apply(id, actions);
    }

    /// A replica recovering from a lost durable log votes on nothing it
    /// may have voted on before: no PREPARE or COMMIT up to its recovery
    /// point, no PRE-PREPARE there other than one it logged before the
    /// loss, and no VIEW-CHANGE.
    fn check_abstains(&self, id: u8, through: u64, actions: &[Action]) {
        let node = &self.nodes[id as usize];
        for a in actions {
            let (Action::Broadcast(m) | Action::Send { message: m, .. }) = a else {
                continue;
            };
            let seq = m.slot().map(|(_, s, _)| s);
            let bad = match &m.message {
                Message::Prepare { .. } | Message::Commit { .. } => seq.is_some_and(|s| s <= through),
                Message::PrePrepare { .. } => {
                    seq.is_some_and(|s| s <= through) && !node.disk.contains(&Durable::PrePrepare(m.clone()))
                }
                Message::ViewChange { .. } => true,
                _ => false,
            };
            assert!(
                !bad,
                "seed {}: replica {id}, abstaining through {through}, sent {:?}",
                self.seed, m.message
            );
        }
    }

    /// Carries out a replica's actions in order.
    fn apply(&mut self, from: u8, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Persist(record) => self.nodes[from as usize].disk.push(record),
                Action::Broadcast(m) => {
                    self.trace_message(from, &m);
                    for to in 0..self.config.n as u8 {
                        if to == from {
                            continue;
                        }
                        if let Some(m) = self.tamper(from, to, m.clone()) {
                            self.send(from, to, Wire::Msg(m));
                        }
                    }
                }
                Action::Send { to, message } => {
                    if let Some(m) = self.tamper(from, to, message) {
                        self.send(from, to, Wire::Msg(m));
                    }
                }
                Action::Execute { seq, batch, cert } => {
                    assert_eq!(cert.digest, batch.digest(), "certificate names the executed batch");
                    assert_eq!(cert.seq, seq);
                    cert.verify_cached(
                        self.config.cluster,
                        &self.members,
                        self.config.quorum(),
                        &mut self.oracle_sigs,
                    )
                    .expect("every executed batch carries a valid commit certificate");
                    let done = self.now_ms + self.rng.below(4);
                    self.nodes[from as usize].executing.push_back((done, seq, batch));
                }
                Action::Certified(cert) => {
                    cert.verify_cached(
                        self.config.cluster,
                        &self.members,
                        self.config.quorum(),
                        &mut self.oracle_sigs,
                    )
                    .expect("a certificate verifies");
                    let node = &mut self.nodes[from as usize];
                    let entry = node
                        .ledger
                        .get_mut(cert.seq as usize - 1)
                        .expect("only executed state is certified");
                    assert_eq!(
                        entry.state, cert.state,
                        "replica {from} certified a state it does not hold"
                    );
                    entry.cert = Some(cert);
                }
                Action::Fetch { peers } => {
                    // The adversary gets its forged answer in first when it can.
                    let liar = self.byz_id.filter(|l| {
                        self.byzantine == Byzantine::LyingTransfer && peers.contains(l) && self.rng.chance(600)
                    });
                    let peer = liar.unwrap_or_else(|| peers[self.rng.below(peers.len() as u64) as usize]);
                    self.answer_fetch(peer, from);
                }
            }
        }
    }

    /// `peer` answers `to`'s state transfer with what it holds certified.
    fn answer_fetch(&mut self, peer: u8, to: u8) {
        if self.nodes[peer as usize].replica.is_none() {
            return;
        }
        let from = self.nodes[to as usize].ledger.len() as u64 + 1;
        let ledger = &self.nodes[peer as usize].ledger;
        let Some(last_certified) = ledger.iter().rposition(|e| e.cert.is_some()) else {
            return;
        };
        let mut entries: Vec<Entry> = ledger
            .get(from as usize - 1..=last_certified)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        if entries.is_empty() {
            return;
        }
        if Some(peer) == self.byz_id && self.byzantine == Byzantine::LyingTransfer {
            self.forge_transfer(peer, from, &mut entries);
        }
        self.send(peer, to, Wire::Blocks { from, entries });
    }

    /// Rewrites a transfer: a different batch at the first sequence number,
    /// the chain recomputed, and a certificate with its own real signature
    /// and votes it made up for the others.
    fn forge_transfer(&mut self, liar: u8, from: u64, entries: &mut [Entry]) {
        let mut prev = if from == 1 {
            [0; 32]
        } else {
            self.nodes[liar as usize].ledger[from as usize - 2].state
        };
        entries[0].batch.requests.push(Request {
            id: RequestId {
                origin: liar,
                number: 1 << 40,
            },
            payload: Bytes::from_static(b"forged"),
        });
        for (i, e) in entries.iter_mut().enumerate() {
            e.state = chain(&prev, from + i as u64, &e.batch);
            prev = e.state;
        }
        let last = entries.len() as u64 + from - 1;
        let state = prev;
        let votes = (0..self.config.quorum() as u8)
            .map(|i| {
                let who = (liar + i) % self.config.n as u8;
                let m = Message::Checkpoint { seq: last, state };
                if who == liar {
                    self.sign_as(who, m)
                } else {
                    let mut forged = self.sign_as(liar, m);
                    forged.sender = who;
                    forged
                }
            })
            .collect();
        for e in entries.iter_mut() {
            e.cert = None;
        }
        if let Some(e) = entries.last_mut() {
            e.cert = Some(QuorumCert {
                seq: last,
                state,
                votes,
            });
        }
    }

    /// A correct replica checks a transfer as the broker does: the chain
    /// recomputes from its own head, and the last entry's certificate holds.
    fn install(&mut self, to: u8, from: u64, entries: Vec<Entry>) {
        let node = &self.nodes[to as usize];
        if node.replica.is_none() || from != node.ledger.len() as u64 + 1 {
            return;
        }
        let mut prev = node.head();
        for (i, e) in entries.iter().enumerate() {
            if chain(&prev, from + i as u64, &e.batch) != e.state {
                self.forged_transfers_refused += 1;
                return;
            }
            prev = e.state;
        }
        let Some(cert) = entries.last().and_then(|e| e.cert.clone()) else {
            return;
        };
        let last = from + entries.len() as u64 - 1;
        if cert.seq != last
            || cert.state != prev
            || cert
                .verify_cached(
                    self.config.cluster,
                    &self.members,
                    self.config.quorum(),
                    &mut self.oracle_sigs,
                )
                .is_err()
        {
            self.forged_transfers_refused += 1;
            return;
        }
        self.transfers_installed += 1;
        let mut executed = Vec::new();
        for (i, e) in entries.into_iter().enumerate() {
            let seq = from + i as u64;
            executed.extend(e.batch.requests.iter().map(|r| r.id));
            self.record(to, seq, e);
        }
        if self.trace {
            eprintln!("t={} replica {to} installed a transfer up to {last}", self.now_ms);
        }
        self.handle(to, Event::Transferred { cert, executed });
    }

    /// Appends one executed entry to a node's ledger, checking it against
    /// every other correct replica's.
    fn record(&mut self, id: u8, seq: u64, entry: Entry) {
        let node = &mut self.nodes[id as usize];
        assert_eq!(node.ledger.len() as u64 + 1, seq, "replica {id} executes in order");
        for r in &entry.batch.requests {
            // A request ordered twice takes effect once.
            node.applied.insert(r.id);
        }
        let d = entry.batch.digest();
        node.ledger.push(entry);
        if self.correct(id as usize) {
            let agreed = *self.agreed.entry(seq).or_insert(d);
            assert_eq!(
                agreed, d,
                "seed {}: replica {id} holds a different batch at seq {seq}",
                self.seed
            );
        }
    }

    /// Finishes executions that are due, reporting each to its replica.
    fn run_executions(&mut self) {
        for id in 0..self.config.n as u8 {
            while let Some((done, _, _)) = self.nodes[id as usize].executing.front() {
                if *done > self.now_ms {
                    break;
                }
                let Some((_, seq, batch)) = self.nodes[id as usize].executing.pop_front() else {
                    break;
                };
                if seq <= self.nodes[id as usize].ledger.len() as u64 {
                    continue; // a transfer got there first
                }
                let fails = match self.write_faults {
                    Some(w) if self.now_ms < w.until_ms && self.correct(id as usize) => {
                        self.write_rng.chance(w.per_mille)
                    }
                    _ => false,
                };
                if fails {
                    // The write failed: this execution and those queued
                    // behind it are lost; the environment recovers to what
                    // its ledger holds and says so.
                    self.writes_failed += 1;
                    self.nodes[id as usize].executing.clear();
                    let durable = self.nodes[id as usize].ledger.len() as u64;
                    self.handle(id, Event::Rewind { durable });
                    break;
                }
                let state = chain(&self.nodes[id as usize].head(), seq, &batch);
                self.record(
                    id,
                    seq,
                    Entry {
                        batch,
                        state,
                        cert: None,
                    },
                );
                self.handle(id, Event::Executed { seq, state });
            }
        }
    }

    fn sign_as(&self, from: u8, message: Message) -> SignedMessage {
        SignedMessage::sign(self.config.cluster, from, &self.keys[from as usize], message)
    }

    /// What a Byzantine sender actually sends `to` (`None`: nothing).
    fn tamper(&mut self, from: u8, to: u8, m: SignedMessage) -> Option<SignedMessage> {
        if Some(from) != self.byz_id {
            return Some(m);
        }
        Some(match (self.byzantine, &m.message) {
            (Byzantine::SilentPrimary, _) => return None,
            (Byzantine::WrongKeys, _) => {
                SignedMessage::sign(self.config.cluster, from, &key(u64::MAX, from), m.message)
            }
            (Byzantine::BadDigest, Message::PrePrepare { view, seq, digest, .. }) if to % 2 == 1 => self.sign_as(
                from,
                Message::PrePrepare {
                    view: *view,
                    seq: *seq,
                    digest: *digest,
                    batch: Batch::default(),
                },
            ),
            (Byzantine::EquivocatingPrimary, Message::PrePrepare { view, seq, .. }) if to == 1 => {
                let other = Batch {
                    view: *view,
                    requests: vec![Request {
                        id: RequestId {
                            origin: from,
                            number: 1 << 40 | seq,
                        },
                        payload: Bytes::from(format!("evil{seq}").into_bytes()),
                    }],
                };
                self.sign_as(
                    from,
                    Message::PrePrepare {
                        view: *view,
                        seq: *seq,
                        digest: other.digest(),
                        batch: other,
                    },
                )
            }
            (
                Byzantine::ConflictingViewChanges,
                Message::ViewChange {
                    new_view,
                    stable_seq,
                    checkpoint_proof,
                    ..
                },
            ) if to.is_multiple_of(2) => self.sign_as(
                from,
                Message::ViewChange {
                    new_view: *new_view,
                    stable_seq: *stable_seq,
                    checkpoint_proof: checkpoint_proof.clone(),
                    prepared: Vec::new(),
                },
            ),
            _ => m,
        })
    }

    fn trace_message(&mut self, from: u8, m: &SignedMessage) {
        if let Message::ViewChange { .. } = &m.message {
            self.view_changes_seen += 1;
        }
        if !self.trace {
            return;
        }
        match &m.message {
            Message::ViewChange {
                new_view,
                stable_seq,
                prepared,
                ..
            } => eprintln!(
                "t={} replica {from} VIEW-CHANGE to {new_view} stable {stable_seq} prepared {:?}",
                self.now_ms,
                prepared
                    .iter()
                    .filter_map(|p| p.pre_prepare.slot())
                    .map(|(v, s, d)| (v, s, d[0]))
                    .collect::<Vec<_>>()
            ),
            Message::NewView { view, pre_prepares, .. } => eprintln!(
                "t={} replica {from} NEW-VIEW {view} proposals {:?}",
                self.now_ms,
                pre_prepares
                    .iter()
                    .filter_map(|p| p.slot())
                    .map(|(_, s, d)| (s, d[0]))
                    .collect::<Vec<_>>()
            ),
            Message::PrePrepare { view, seq, digest, .. } => eprintln!(
                "t={} replica {from} PRE-PREPARE v{view} s{seq} d{:02x}",
                self.now_ms, digest[0]
            ),
            _ => {}
        }
    }

    fn submit(&mut self) {
        // Only correct replicas that are up submit (the broker's own node).
        let up: Vec<u8> = (0..self.config.n as u8)
            .filter(|i| self.correct(*i as usize) && self.nodes[*i as usize].replica.is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let origin = up[self.rng.below(up.len() as u64) as usize];
        self.next_number[origin as usize] += 1;
        let len = self.rng.below(40) as usize;
        let r = Request {
            id: RequestId {
                origin,
                number: self.next_number[origin as usize],
            },
            payload: Bytes::from(format!("req-{}-{}", self.submitted.len(), "x".repeat(len)).into_bytes()),
        };
        self.submitted.push(r.clone());
        self.handle(origin, Event::Request(r));
    }

    /// Byzantine noise that is not a reaction to a message.
    fn misbehave(&mut self) {
        if self.byzantine == Byzantine::Forger && self.rng.chance(50) {
            let claimed = self.rng.below(self.config.n as u64) as u8;
            let mut sig = vec![0u8; 64];
            sig.iter_mut().for_each(|b| *b = self.rng.next() as u8);
            let forged = SignedMessage {
                cluster: self.config.cluster,
                sender: claimed,
                message: Message::Commit {
                    view: 0,
                    seq: 1 + self.rng.below(8),
                    digest: [self.rng.next() as u8; 32],
                },
                signature: Bytes::from(sig),
            };
            let to = self.rng.below(self.config.n as u64) as u8;
            self.send(claimed, to, Wire::Msg(forged));
        }
        if let (Byzantine::ConflictingViewChanges, Some(byz)) = (self.byzantine, self.byz_id) {
            if self.rng.chance(5) {
                // A view change nobody asked for, to a view well ahead.
                let view = self.nodes[byz as usize].replica.as_ref().map_or(0, |r| r.view()) + 1 + self.rng.below(3);
                let vc = self.sign_as(
                    byz,
                    Message::ViewChange {
                        new_view: view,
                        stable_seq: 0,
                        checkpoint_proof: Vec::new(),
                        prepared: Vec::new(),
                    },
                );
                for to in 0..self.config.n as u8 {
                    if to != byz {
                        self.send(byz, to, Wire::Msg(vc.clone()));
                    }
                }
            }
        }
        if self.replay_per_mille > 0 && !self.seen.is_empty() && self.rng.chance(self.replay_per_mille) {
            let m = self.seen[self.rng.below(self.seen.len() as u64) as usize].clone();
            let to = self.rng.below(self.config.n as u64) as u8;
            self.send(m.sender, to, Wire::Msg(m));
        }
    }

    fn crash_and_restart(&mut self) {
        let Some(c) = self.crash else { return };
        let id = c.who as usize;
        if self.now_ms == c.at_ms {
            if self.trace {
                eprintln!(
                    "t={} replica {} crashes (keeps disk: {})",
                    self.now_ms, c.who, c.keeps_disk
                );
            }
            let node = &mut self.nodes[id];
            node.replica = None;
            node.executing.clear();
            if !c.keeps_disk {
                node.ledger.clear();
                node.applied.clear();
                node.disk.clear();
            }
        }
        if self.now_ms == c.at_ms + c.down_ms {
            let keys = ReplicaKeys {
                id: c.who,
                key: key(self.seed, c.who),
                members: self.members.clone(),
            };
            let amnesia = c.log_lost_from.is_some();
            if let Some(from) = c.log_lost_from {
                let disk = &mut self.nodes[id].disk;
                let keep = from % (disk.len() + 1);
                disk.truncate(keep);
            }
            let node = &self.nodes[id];
            let last_cert = node.ledger.iter().rposition(|e| e.cert.is_some());
            let recovered = Recovered {
                certified: last_cert.and_then(|i| node.ledger[i].cert.clone()),
                executed: node
                    .ledger
                    .iter()
                    .enumerate()
                    .skip(last_cert.map_or(0, |i| i + 1))
                    .map(|(i, e)| (i as u64 + 1, e.state))
                    .collect(),
                records: node.disk.clone(),
                amnesia,
            };
            if self.trace {
                eprintln!(
                    "t={} replica {} restarts with {} ledger entries, {} records",
                    self.now_ms,
                    c.who,
                    node.ledger.len(),
                    node.disk.len()
                );
            }
            self.nodes[id].replica = Some(Replica::restore(self.config.clone(), keys, recovered));
            // A restarted replica knows of no backlog until told.
            self.backlogged[id].clear();
            // Its clients retry what they had not seen done, under the same ids.
            let retry: Vec<Request> = self
                .submitted
                .iter()
                .filter(|r| r.id.origin == c.who && !self.nodes[id].applied.contains(&r.id))
                .cloned()
                .collect();
            self.handle(c.who, Event::Tick { now_ms: self.now_ms });
            for r in retry {
                self.handle(c.who, Event::Request(r));
            }
        }
    }

    /// Changes replicas' backlogs while the seed's congestion lasts, and
    /// clears them when that ends.
    fn congest(&mut self) {
        let Some(c) = self.congestion else { return };
        let n = self.config.n as u64;
        if self.now_ms < c.until_ms {
            if self.congestion_rng.chance(c.per_mille) {
                let id = self.congestion_rng.below(n) as u8;
                let peer = (id + 1 + self.congestion_rng.below(n - 1) as u8) % n as u8;
                let backlog = &mut self.backlogged[id as usize];
                if !backlog.remove(&peer) {
                    backlog.insert(peer);
                }
                let backlog = backlog.clone();
                if self.trace {
                    eprintln!("t={} replica {id} backed up towards {backlog:?}", self.now_ms);
                }
                self.handle(id, Event::Backlog(backlog));
            }
        } else if self.now_ms == c.until_ms {
            for id in 0..self.config.n as u8 {
                if !std::mem::take(&mut self.backlogged[id as usize]).is_empty() {
                    self.handle(id, Event::Backlog(BTreeSet::new()));
                }
            }
        }
    }

    /// Time after which every fault has healed.
    fn faults_heal_ms(&self) -> u64 {
        let crash = self.crash.map_or(0, |c| c.at_ms + c.down_ms);
        let cut = self.cut.map_or(0, |c| c.until_ms);
        let congestion = self.congestion.map_or(0, |c| c.until_ms);
        let writes = self.write_faults.map_or(0, |w| w.until_ms);
        crash.max(cut).max(congestion).max(writes)
    }

    fn all_done(&self, requests: usize) -> bool {
        self.submitted.len() == requests
            && (0..self.config.n)
                .filter(|id| self.correct(*id))
                .all(|id| self.submitted.iter().all(|r| self.nodes[id].applied.contains(&r.id)))
    }

    fn run(&mut self, requests: usize) {
        // Long enough for several doubled view-change timeouts after the
        // faults heal.
        let limit_ms = self.faults_heal_ms() + 30_000;
        let mut done_ms = None;
        while self.now_ms < limit_ms {
            if self.submitted.len() < requests && self.rng.chance(300) {
                self.submit();
            }
            self.misbehave();
            let due = matches!(self.net.peek(), Some(Reverse((at, ..))) if *at <= self.now_ms);
            if due {
                if let Some(Reverse((_, _, to, InFlight(w)))) = self.net.pop() {
                    match w {
                        Wire::Msg(m) => {
                            if self.replay_per_mille > 0 && self.seen.len() < 4096 && self.rng.chance(100) {
                                self.seen.push(m.clone());
                            }
                            self.handle(to, Event::Message(m));
                        }
                        Wire::Blocks { from, entries } => self.install(to, from, entries),
                    }
                }
                continue;
            }
            self.now_ms += 1;
            self.crash_and_restart();
            self.congest();
            self.run_executions();
            for id in 0..self.config.n as u8 {
                self.handle(id, Event::Tick { now_ms: self.now_ms });
            }
            if self.now_ms.is_multiple_of(97) {
                // Compact a durable log now and then: what it keeps must be enough.
                let id = self.rng.below(self.config.n as u64) as usize;
                if let Some(r) = &self.nodes[id].replica {
                    self.nodes[id].disk = r.durable_state();
                }
            }
            if self.now_ms > self.faults_heal_ms() && self.all_done(requests) {
                // Run a little longer so stragglers' messages settle.
                let d = *done_ms.get_or_insert(self.now_ms);
                if self.now_ms > d + 200 {
                    break;
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} by {:?}, n={}, loss {}‰, replay {}‰, crash {:?}, cut {:?}, congestion {:?}, write faults {:?}, window {}",
            self.byzantine,
            self.byz_id,
            self.config.n,
            self.loss_per_mille,
            self.replay_per_mille,
            self.crash,
            self.cut,
            self.congestion,
            self.write_faults,
            self.config.window
        )
    }
}

/// What one seed's run showed, for the sweep's coverage report.
struct Outcome {
    byzantine: Byzantine,
    crashed: bool,
    lost_disk: bool,
    /// A replica lost part of its durable log and abstained.
    lost_log: bool,
    cut: bool,
    congested: bool,
    lossy: bool,
    /// Executions lost to failed writes.
    writes_failed: u64,
    transfers: u64,
    forged_refused: u64,
    view_changes: u64,
}

fn run_seed(seed: u64) -> Outcome {
    let mut sim = Sim::new(seed);
    let requests = requests_for(seed);
    sim.run(requests);
    if std::env::var("COURIER_SIM_DEBUG").is_ok() {
        for (id, node) in sim.nodes.iter().enumerate() {
            match &node.replica {
                Some(r) => eprintln!(
                    "replica {id}: view {} changing {} executed {} low {} log {} waiting {} ledger {} applied {}",
                    r.view(),
                    r.is_view_changing(),
                    r.last_executed(),
                    r.low_watermark(),
                    r.log_len(),
                    r.waiting_len(),
                    node.ledger.len(),
                    node.applied.len()
                ),
                None => eprintln!("replica {id}: down"),
            }
        }
        eprintln!("{} now {}", sim.describe(), sim.now_ms);
    }
    for id in (0..sim.config.n).filter(|id| sim.correct(*id)) {
        let missing = sim
            .submitted
            .iter()
            .filter(|r| !sim.nodes[id].applied.contains(&r.id))
            .count();
        assert_eq!(
            missing,
            0,
            "seed {seed}: correct replica {id} lacks {missing} of {requests} requests ({})",
            sim.describe()
        );
        if let Some(r) = &sim.nodes[id].replica {
            assert!(
                r.log_len() as u64 <= sim.config.window,
                "seed {seed}: replica {id} keeps {} log slots",
                r.log_len()
            );
        }
    }
    Outcome {
        byzantine: sim.byzantine,
        crashed: sim.crash.is_some(),
        lost_disk: sim.crash.is_some_and(|c| !c.keeps_disk),
        lost_log: sim.crash.is_some_and(|c| c.log_lost_from.is_some()),
        cut: sim.cut.is_some(),
        congested: sim.congestion.is_some(),
        lossy: sim.loss_per_mille > 0,
        writes_failed: sim.writes_failed,
        transfers: sim.transfers_installed,
        forged_refused: sim.forged_transfers_refused,
        view_changes: sim.view_changes_seen,
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn seeded_clusters_stay_safe_and_live_under_faults() {
    if let Ok(seed) = std::env::var("COURIER_SIM_SEED") {
        run_seed(seed.parse().expect("COURIER_SIM_SEED is a number"));
        return;
    }
    let seeds = env_u64("COURIER_SIM_SEEDS", 500);
    let from = env_u64("COURIER_SIM_SEED_FROM", 0);
    // Both cores: seeds are independent, each run deterministic on its own.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for seed in (from + t..from + seeds).step_by(threads as usize) {
                        match std::panic::catch_unwind(|| run_seed(seed)) {
                            Ok(o) => outcomes.push(o),
                            Err(e) => {
                                let msg = e
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                                return Err(format!(
                                    "seed {seed} failed (replay with COURIER_SIM_SEED={seed}): {}",
                                    msg.unwrap_or_default()
                                ));
                            }
                        }
                    }
                    Ok(outcomes)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            match w.join() {
                Ok(Ok(o)) => all.extend(o),
                Ok(Err(failure)) => panic!("{failure}"),
                Err(_) => panic!("a sweep thread panicked outside a seed"),
            }
        }
        all
    });
    let mut by_mode: BTreeMap<Byzantine, u64> = BTreeMap::new();
    let (mut crashed, mut lost_disk, mut lost_log, mut cut, mut congested, mut lossy) = (0, 0, 0, 0, 0, 0);
    let (mut transfers, mut forged_refused, mut view_changes, mut writes_failed) = (0, 0, 0, 0);
    for o in outcomes {
        *by_mode.entry(o.byzantine).or_default() += 1;
        crashed += u64::from(o.crashed);
        lost_disk += u64::from(o.lost_disk);
        lost_log += u64::from(o.lost_log);
        cut += u64::from(o.cut);
        congested += u64::from(o.congested);
        lossy += u64::from(o.lossy);
        transfers += o.transfers;
        forged_refused += o.forged_refused;
        view_changes += o.view_changes;
        writes_failed += o.writes_failed;
    }
    eprintln!(
        "{seeds} seeds: {by_mode:?}; {crashed} crashes ({lost_disk} losing the disk, {lost_log} part of the log), {cut} cut off, \
         {congested} congested, {lossy} lossy; {transfers} state transfers installed, {forged_refused} forged ones refused, \
         {view_changes} VIEW-CHANGEs sent, {writes_failed} executions lost to failed writes"
    );
    if seeds >= 500 {
        // The sweep must actually exercise what it claims to.
        for mode in BYZANTINE_MODES {
            assert!(
                by_mode.get(&mode).copied().unwrap_or(0) >= 20,
                "{mode:?} ran too rarely"
            );
        }
        assert!(crashed >= 20 && lost_disk >= 5 && lost_log >= 5 && cut >= 20 && congested >= 50 && lossy >= 50);
        assert!(transfers > 0 && forged_refused > 0 && view_changes > 0 && writes_failed > 0);
    }
}
