//! The sequencer: the one writer of the node's ledger.
//!
//! Handlers submit work (a partition's record batches, a consumer group's
//! offset commit, a topic deletion) and await the outcome. Two threads do
//! the work:
//!
//! * the **sequencer** takes everything that has queued up (a round),
//!   applies the contract to each batch in arrival order, and seals the
//!   result into hash-chained blocks of at most [`BLOCK_BYTES_MAX`];
//! * the **committer** writes each sealed round in one transaction (one
//!   payload sync and one redb commit: group commit), publishes the new high
//!   watermarks, and only then answers the round's submitters.
//!
//! The sequencer runs one round ahead of the disk (see [`ROUNDS_QUEUED_MAX`]),
//! so ordering and hashing the next round overlap the sync of the last.
//! Nothing is acknowledged or visible to consumers before it is durable. If
//! a write fails, the sequencer's state has run past the disk: every later
//! write is refused until a restart reloads the ledger.
//!
//! This is the single-replica ordering ([`LocalSequencer`]). With a replica
//! cluster configured, the same [`Sequencer`] handle submits to the
//! partition's PBFT cluster instead (see [`crate::replication`]), and
//! handlers cannot tell the two apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use courier_consensus::catalog::TopicRecord;
use courier_consensus::contract::{append_request, BatchRun, ProducerTable, Verdict};
use courier_consensus::ledger::{
    senders_within, Block, CommittedOffset, LedgerStore, PartitionKey, PartitionState, ProducerEntry, Receipt,
    RequestRecord, SealedBlock, StoreError, WriteSet,
};
use courier_protocol::records::{Batch, BatchHeader};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info_span};

use crate::replication::command::{encode_produce, Command};
use crate::replication::Replicated;
use crate::topics::Topics;
use courier_consensus::raft::{MetaCommand, MetaState};

// Threads: the sequencer orders and seals rounds; the committer makes them
// durable. See the module documentation.

/// Largest block payload a round writes. A fetch reads whole blocks and
/// clients fetch about 1 MiB per partition, so a larger block would be read
/// for a fraction of its bytes. A single batch above this gets a block of
/// its own.
pub const BLOCK_BYTES_MAX: usize = 1 << 20;
/// Submissions queued before submitters wait (back-pressure).
pub const QUEUE_SUBMISSIONS_MAX: usize = 4096;
/// A round stops taking submissions past this many batch bytes…
pub const ROUND_BYTES_MAX: usize = 64 << 20;
/// …or this many submissions.
pub const ROUND_SUBMISSIONS_MAX: usize = 8192;

/// Where a produce landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Why a produce was not appended.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("producer epoch is older than the current one")]
    InvalidProducerEpoch,
    #[error("sequence number out of order")]
    OutOfOrderSequence,
    #[error("ledger write failed: {0}")]
    Storage(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("topic or partition no longer exists")]
    UnknownTopicOrPartition,
    /// The replica cluster refused it with this Kafka error code.
    #[error("refused by the replica cluster: {1}")]
    Kafka(i16, String),
}

enum Submission {
    Produce {
        pk: PartitionKey,
        leader_epoch: i32,
        sent_by: SentBy,
        batches: Vec<Batch>,
        reply: oneshot::Sender<Result<Appended, Rejected>>,
    },
    Receipt {
        pk: PartitionKey,
        receipt: Receipt,
        reply: oneshot::Sender<Result<(), Rejected>>,
    },
    DeleteTopic {
        topic: TopicRecord,
        reply: oneshot::Sender<Result<(), Rejected>>,
    },
}

/// The Raft commands that turn the topic as `state` has it into `record`
/// (`create`: a new topic). Handlers change one thing at a time (the
/// partition count or the configs), so this is at most one command in
/// practice; each is absolute, so a retried one takes effect once. `None`:
/// the topic to change does not exist.
fn topic_changes(state: &MetaState, record: TopicRecord, create: bool) -> Option<Vec<MetaCommand>> {
    let current = state.topics.get(&record.name).map(|t| &t.record);
    Some(match (current, create) {
        (None, false) => return None,
        (Some(current), false) => {
            let mut out = Vec::new();
            if record.partitions != current.partitions {
                out.push(MetaCommand::CreatePartitions {
                    name: record.name.clone(),
                    total: record.partitions,
                });
            }
            if record.configs != current.configs {
                let removed = current
                    .configs
                    .keys()
                    .filter(|k| !record.configs.contains_key(*k))
                    .map(|k| (k.clone(), None));
                let set = record
                    .configs
                    .iter()
                    .filter(|(k, v)| current.configs.get(*k) != Some(v))
                    .map(|(k, v)| (k.clone(), Some(v.clone())));
                out.push(MetaCommand::AlterConfigs {
                    name: record.name.clone(),
                    changes: removed.chain(set).collect(),
                });
            }
            out
        }
        (_, true) => vec![MetaCommand::CreateTopic {
            name: record.name,
            id: record.id,
            partitions: record.partitions,
            configs: record.configs,
        }],
    })
}

/// Who sent a produce: the principal its connection authenticated, and the
/// principal's organization. The block records them as the records' sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentBy {
    pub principal: Arc<str>,
    pub organization: Arc<str>,
}

/// How partitions are ordered: by this node alone, or by a replica cluster.
#[derive(Clone)]
pub enum Sequencer {
    Local(LocalSequencer),
    Replicated(Arc<Replicated>),
}

/// Longest a client waits for a replica cluster to order its request
/// (Kafka's `request.timeout.ms` default is 30 s; we answer before it).
const REPLICATED_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(25);

impl Sequencer {
    /// The replica side, when partitions are ordered by PBFT clusters.
    pub fn replicated(&self) -> Option<&Arc<Replicated>> {
        match self {
            Sequencer::Replicated(r) => Some(r),
            Sequencer::Local(_) => None,
        }
    }

    /// Enqueues a produce (in call order) and returns the wait for its
    /// outcome, so a connection can keep reading while it is in flight.
    pub async fn enqueue_produce(
        &self,
        pk: PartitionKey,
        leader_epoch: i32,
        sent_by: SentBy,
        batches: Vec<Batch>,
    ) -> oneshot::Receiver<Result<Appended, Rejected>> {
        match self {
            Sequencer::Local(l) => l.enqueue_produce(pk, leader_epoch, sent_by, batches).await,
            Sequencer::Replicated(r) => {
                let payload = encode_produce(
                    &pk,
                    leader_epoch,
                    &sent_by.principal,
                    &sent_by.organization,
                    batches.iter().map(|b| &b.bytes[..]),
                );
                let outcome = r.submit_encoded(pk, payload).await;
                relay(outcome, |rec| Appended {
                    base_offset: rec.base_offset,
                    log_start_offset: 0,
                })
            }
        }
    }

    /// Queues a consumer group's committed offset as a receipt on the
    /// partition's ledger; the returned receiver resolves once it is durable
    /// (certified, with a replica cluster). Queue every partition of a
    /// commit before awaiting any, so they share rounds.
    pub async fn enqueue_receipt(&self, pk: PartitionKey, receipt: Receipt) -> oneshot::Receiver<Result<(), Rejected>> {
        match self {
            Sequencer::Local(l) => l.enqueue_receipt(pk, receipt).await,
            Sequencer::Replicated(r) => relay(r.submit(pk, Command::Receipt { pk, receipt }).await, |_| ()),
        }
    }

    /// Creates (`create`) or replaces a topic record; resolves once it is
    /// durable and visible to this node's handlers.
    pub async fn put_topic(&self, record: TopicRecord, create: bool) -> Result<(), Rejected> {
        match self {
            Sequencer::Local(l) => l.put_topic(record).await,
            Sequencer::Replicated(r) => {
                let changes =
                    topic_changes(&r.meta.state(), record, create).ok_or(Rejected::UnknownTopicOrPartition)?;
                for change in changes {
                    r.change(change).await.map_err(|(code, m)| Rejected::Kafka(code, m))?;
                }
                Ok(())
            }
        }
    }

    /// Deletes a topic's ledgers, ordered after every write already queued.
    pub async fn delete_topic(&self, topic: TopicRecord) -> Result<(), Rejected> {
        match self {
            Sequencer::Local(l) => l.delete_topic(topic).await,
            Sequencer::Replicated(r) => r
                .change(MetaCommand::DeleteTopic { id: topic.id })
                .await
                .map_err(|(code, m)| Rejected::Kafka(code, m)),
        }
    }

    /// A group's committed offsets in every partition (with several
    /// clusters, some are read from other clusters' members). Errors carry
    /// a Kafka error code.
    pub async fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(PartitionKey, courier_consensus::ledger::CommittedOffset)>, (i16, String)> {
        match self {
            Sequencer::Local(l) => {
                let store = l.store.clone();
                let g = group.to_owned();
                let storage = |e: String| (kafka_protocol::ResponseError::KafkaStorageError.code(), e);
                tokio::task::spawn_blocking(move || store.committed_offsets(&g))
                    .await
                    .map_err(|e| storage(e.to_string()))?
                    .map_err(|e| storage(e.to_string()))
            }
            Sequencer::Replicated(r) => r.committed_offsets(group).await,
        }
    }

    /// Changes whenever more becomes visible to consumers: what
    /// long-polling fetches wait on.
    pub fn commits(&self) -> watch::Receiver<u64> {
        match self {
            Sequencer::Local(l) => l.commits(),
            Sequencer::Replicated(r) => r.commits(),
        }
    }

    /// Producer ids this node hands out are `base * stride + offset`:
    /// replicas of one cluster never hand out the same one.
    pub fn producer_id_space(&self) -> (i64, i64) {
        match self {
            Sequencer::Local(_) => (1, 0),
            Sequencer::Replicated(r) => (8, r.membership.me as i64),
        }
    }
}

/// Waits for a replica cluster's outcome, bounded by [`REPLICATED_WAIT_MAX`].
async fn wait(rx: oneshot::Receiver<RequestRecord>) -> Result<RequestRecord, Rejected> {
    match tokio::time::timeout(REPLICATED_WAIT_MAX, rx).await {
        Ok(Ok(r)) if r.error_code == 0 => Ok(r),
        Ok(Ok(r)) => Err(Rejected::Kafka(
            r.error_code,
            format!("the replica cluster refused it (error {})", r.error_code),
        )),
        Ok(Err(_)) => Err(Rejected::UnknownTopicOrPartition),
        Err(_) => Err(Rejected::Kafka(
            kafka_protocol::ResponseError::RequestTimedOut.code(),
            "the replica cluster did not order it in time".into(),
        )),
    }
}

/// Turns a replica cluster's pending outcome into the sequencer's reply shape.
fn relay<T: Send + 'static>(
    rx: oneshot::Receiver<RequestRecord>,
    ok: impl FnOnce(RequestRecord) -> T + Send + 'static,
) -> oneshot::Receiver<Result<T, Rejected>> {
    let (tx, out) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(wait(rx).await.map(ok));
    });
    out
}

/// The handlers' side of the single-replica sequencer.
#[derive(Clone)]
pub struct LocalSequencer {
    tx: mpsc::Sender<Submission>,
    commits: watch::Receiver<u64>,
    store: Arc<LedgerStore>,
    topics: Arc<Topics>,
}

impl LocalSequencer {
    /// Starts the sequencer and committer threads. They end when every
    /// handle is dropped, after the rounds in progress are durable.
    pub fn start(store: Arc<LedgerStore>, topics: Arc<Topics>) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_SUBMISSIONS_MAX);
        let (commits_tx, commits) = watch::channel(0);
        let (store_handle, topics_handle) = (store.clone(), topics.clone());
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(ROUNDS_QUEUED_MAX);
        let health = Arc::new(Health::default());
        let committer = Committer {
            store: store.clone(),
            topics: topics.clone(),
            jobs: jobs_rx,
            commits: commits_tx,
            health: health.clone(),
            generation: 0,
        };
        let committer = std::thread::Builder::new()
            .name("courier-committer".into())
            .spawn(move || committer.run())?;
        let worker = Worker {
            store,
            topics,
            rx,
            jobs: jobs_tx,
            health,
            generation: 0,
            committer: Some(committer),
            working: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("courier-sequencer".into())
            .spawn(move || worker.run())?;
        Ok((
            Self {
                tx,
                commits,
                store: store_handle,
                topics: topics_handle,
            },
            thread,
        ))
    }

    /// Appends a partition's batches; resolves once they are durable (or
    /// recognised as duplicates of durable ones).
    pub async fn produce(
        &self,
        pk: PartitionKey,
        leader_epoch: i32,
        sent_by: SentBy,
        batches: Vec<Batch>,
    ) -> Result<Appended, Rejected> {
        let rx = self.enqueue_produce(pk, leader_epoch, sent_by, batches).await;
        rx.await.unwrap_or(Err(Rejected::ShuttingDown))
    }

    /// Writes a new or changed topic record, then publishes it: a topic is
    /// never visible before it is durable.
    pub async fn put_topic(&self, record: TopicRecord) -> Result<(), Rejected> {
        let store = self.store.clone();
        let copy = record.clone();
        tokio::task::spawn_blocking(move || store.put_topic(&copy))
            .await
            .map_err(|e| Rejected::Storage(e.to_string()))?
            .map_err(|e| Rejected::Storage(e.to_string()))?;
        self.topics.insert(record);
        Ok(())
    }

    /// Enqueues a produce and returns the wait for its outcome, so a
    /// connection can keep reading while the write is in flight and still
    /// append in request order.
    pub async fn enqueue_produce(
        &self,
        pk: PartitionKey,
        leader_epoch: i32,
        sent_by: SentBy,
        batches: Vec<Batch>,
    ) -> oneshot::Receiver<Result<Appended, Rejected>> {
        let (reply, rx) = oneshot::channel();
        // If the sequencer is gone the sender is dropped and `rx` reports it.
        let _ = self
            .tx
            .send(Submission::Produce {
                pk,
                leader_epoch,
                sent_by,
                batches,
                reply,
            })
            .await;
        rx
    }

    /// Queues a consumer group's committed offset as a receipt on the
    /// partition's ledger; the returned receiver resolves once it is durable.
    /// Queue every partition of a commit before awaiting any, so they share
    /// one round (one sync) instead of taking one each.
    pub async fn enqueue_receipt(&self, pk: PartitionKey, receipt: Receipt) -> oneshot::Receiver<Result<(), Rejected>> {
        let (reply, rx) = oneshot::channel();
        // If the sequencer is gone the sender is dropped and `rx` reports it.
        let _ = self.tx.send(Submission::Receipt { pk, receipt, reply }).await;
        rx
    }

    /// Deletes a topic's ledgers, ordered after every write already queued.
    /// It disappears from the catalog at once, so no new write races it.
    pub async fn delete_topic(&self, topic: TopicRecord) -> Result<(), Rejected> {
        self.topics.remove(&topic);
        let (reply, rx) = oneshot::channel();
        self.submit(Submission::DeleteTopic { topic, reply }).await?;
        rx.await.unwrap_or(Err(Rejected::ShuttingDown))
    }

    async fn submit(&self, s: Submission) -> Result<(), Rejected> {
        self.tx.send(s).await.map_err(|_| Rejected::ShuttingDown)
    }

    /// Changes after every committed round: what long-polling fetches wait on.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }
}

/// What the contract needs of one partition between rounds.
struct Working {
    state: PartitionState,
    producers: ProducerTable,
}

/// A block being assembled during a round.
struct Draft {
    base_offset: i64,
    run: BatchRun,
    receipts: Vec<Receipt>,
}

enum Reply {
    Produce(oneshot::Sender<Result<Appended, Rejected>>, Result<Appended, Rejected>),
    Receipt(oneshot::Sender<Result<(), Rejected>>),
}

/// Sealed rounds buffered between the threads. Zero makes the hand-off a
/// rendezvous: a sealed round waits in the sequencer until the committer is
/// free, so the sequencer runs exactly one round ahead of the disk, and the
/// next round gathers submissions for a whole commit's duration (a buffer
/// would let it cut tiny rounds, each paying a full sync).
const ROUNDS_QUEUED_MAX: usize = 0;

/// Work for the committer thread, in ledger order.
enum Job {
    Commit {
        set: WriteSet,
        replies: Vec<Reply>,
        generation: u64,
    },
    DeleteTopic {
        topic: TopicRecord,
        reply: oneshot::Sender<Result<(), Rejected>>,
        generation: u64,
    },
}

/// Whether the ledger takes writes, shared by the sequencer and the
/// committer. A failed commit sets `failed`: the sequencer's state has run
/// past the disk, so it refuses submissions (a retriable error) while the
/// committer probes the disk with back-off and recovers the store. Then
/// the committer moves `generation` on and clears `failed`; the sequencer
/// drops its state and reloads it from the ledger, and every round it had
/// sealed on the old state (the old generation) is refused.
#[derive(Default)]
struct Health {
    failed: AtomicBool,
    generation: std::sync::atomic::AtomicU64,
}

/// The first wait before probing a failed disk again, and the longest.
const RECOVER_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RECOVER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
const RECOVERING: &str = "the ledger is recovering from a failed write; try again";

struct Worker {
    store: Arc<LedgerStore>,
    topics: Arc<Topics>,
    rx: mpsc::Receiver<Submission>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    health: Arc<Health>,
    /// The generation this worker's state belongs to (see [`Health`]).
    generation: u64,
    committer: Option<std::thread::JoinHandle<()>>,
    working: HashMap<PartitionKey, Working>,
}

/// Writes sealed rounds and answers their submitters once durable.
struct Committer {
    store: Arc<LedgerStore>,
    topics: Arc<Topics>,
    jobs: std::sync::mpsc::Receiver<Job>,
    commits: watch::Sender<u64>,
    health: Arc<Health>,
    /// The generation whose rounds are written (older ones are refused).
    generation: u64,
}

impl Worker {
    fn run(mut self) {
        let mut round = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            round.push(first);
            let mut bytes = 0;
            while round.len() < ROUND_SUBMISSIONS_MAX && bytes < ROUND_BYTES_MAX {
                match self.rx.try_recv() {
                    Ok(s) => {
                        if let Submission::Produce { batches, .. } = &s {
                            bytes += batches.iter().map(|b| b.bytes.len()).sum::<usize>();
                        }
                        round.push(s);
                    }
                    Err(_) => break,
                }
            }
            if self.health.failed.load(Ordering::Acquire) {
                refuse(round.drain(..));
                continue;
            }
            let generation = self.health.generation.load(Ordering::Acquire);
            if generation != self.generation {
                // The store recovered from a failed write: start again from
                // what it holds.
                self.working.clear();
                self.generation = generation;
            }
            self.run_round(&mut round);
        }
        // Hang up on the committer and wait until everything sealed is durable.
        drop(self.jobs);
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
    }

    fn working(&mut self, pk: PartitionKey) -> Result<&mut Working, StoreError> {
        use std::collections::hash_map::Entry;
        Ok(match self.working.entry(pk) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let state = self.store.partition_state(&pk)?;
                let producers = self.store.producers(&pk)?;
                v.insert(Working { state, producers })
            }
        })
    }

    /// Executes one round. Deletions split it: writes queued before a
    /// deletion are committed first, so order is kept.
    fn run_round(&mut self, round: &mut Vec<Submission>) {
        let started = Instant::now();
        let span = info_span!("round", submissions = round.len());
        let _enter = span.enter();
        let mut drafts: BTreeMap<PartitionKey, Draft> = BTreeMap::new();
        let mut replies = Vec::new();
        let mut touched: HashMap<(PartitionKey, i64), ()> = HashMap::new();
        let mut offsets = Vec::new();
        for sub in round.drain(..) {
            match sub {
                Submission::Produce {
                    pk,
                    leader_epoch,
                    sent_by,
                    batches,
                    reply,
                } => {
                    let outcome = self.execute_produce(pk, leader_epoch, &sent_by, &batches, &mut drafts, &mut touched);
                    replies.push(Reply::Produce(reply, outcome));
                }
                Submission::Receipt { pk, receipt, reply } => match self.working(pk) {
                    Ok(w) => {
                        let next = w.state.next_offset;
                        let height = w.state.next_height;
                        let draft = drafts.entry(pk).or_insert_with(|| Draft::empty(next));
                        offsets.push((
                            receipt.group_id.clone(),
                            pk,
                            CommittedOffset {
                                offset: receipt.offset,
                                leader_epoch: receipt.leader_epoch,
                                metadata: receipt.metadata.clone(),
                                commit_timestamp_ms: receipt.timestamp_ms,
                                receipt_height: height,
                            },
                        ));
                        draft.receipts.push(receipt);
                        replies.push(Reply::Receipt(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Rejected::Storage(e.to_string())));
                    }
                },
                Submission::DeleteTopic { topic, reply } => {
                    // Seal what came before, then hand the deletion to the
                    // committer behind it, so the two stay in ledger order.
                    self.seal(
                        std::mem::take(&mut drafts),
                        std::mem::take(&mut touched),
                        std::mem::take(&mut offsets),
                        std::mem::take(&mut replies),
                    );
                    self.working.retain(|pk, _| pk.topic_id != topic.id);
                    let generation = self.generation;
                    self.send(Job::DeleteTopic {
                        topic,
                        reply,
                        generation,
                    });
                }
            }
        }
        self.seal(drafts, touched, offsets, replies);
        metrics::histogram!("courier_sequencer_round_seconds").record(started.elapsed().as_secs_f64());
    }

    /// Applies the contract to one submission's batches, all or nothing.
    fn execute_produce(
        &mut self,
        pk: PartitionKey,
        leader_epoch: i32,
        sent_by: &SentBy,
        batches: &[Batch],
        drafts: &mut BTreeMap<PartitionKey, Draft>,
        touched: &mut HashMap<(PartitionKey, i64), ()>,
    ) -> Result<Appended, Rejected> {
        // The handler looked the topic up before queueing; a deletion ordered
        // in between must win, or blocks would outlive their topic.
        match self.topics.get_by_id(&pk.topic_id) {
            Some(t) if (0..t.partitions).contains(&pk.partition) => {}
            _ => return Err(Rejected::UnknownTopicOrPartition),
        }
        let working = self.working(pk).map_err(|e| Rejected::Storage(e.to_string()))?;
        let draft = drafts
            .entry(pk)
            .or_insert_with(|| Draft::empty(working.state.next_offset));
        let mut producers = Vec::new();
        let from = draft.run.next_offset;
        let outcome = append_request(
            &mut working.producers,
            &mut draft.run,
            batches,
            leader_epoch,
            &mut producers,
        );
        if outcome.is_ok() {
            draft.run.attribute(from, &sent_by.principal, &sent_by.organization);
        }
        for producer_id in producers {
            touched.insert((pk, producer_id), ());
        }
        match outcome {
            Ok(first) => Ok(Appended {
                base_offset: first.unwrap_or(draft.base_offset),
                log_start_offset: working.state.log_start_offset,
            }),
            Err(verdict) => {
                let rejected = match verdict {
                    Verdict::InvalidProducerEpoch => Rejected::InvalidProducerEpoch,
                    _ => Rejected::OutOfOrderSequence,
                };
                debug!(?pk, %rejected, "batch rejected by contract");
                Err(rejected)
            }
        }
    }

    /// Seals a round's drafts into blocks, advances the partitions' state
    /// to what the ledger will hold once they are durable, and hands the
    /// round to the committer. Submitters are answered by the committer.
    fn seal(
        &mut self,
        drafts: BTreeMap<PartitionKey, Draft>,
        touched: HashMap<(PartitionKey, i64), ()>,
        mut offsets: Vec<(String, PartitionKey, CommittedOffset)>,
        replies: Vec<Reply>,
    ) {
        if drafts.is_empty() && replies.is_empty() {
            return;
        }
        let mut set = WriteSet::default();
        for (pk, draft) in drafts {
            if draft.run.bytes.is_empty() && draft.receipts.is_empty() {
                continue;
            }
            let Some(w) = self.working.get_mut(&pk) else { continue };
            let sealed = cut_blocks(pk, &w.state, draft);
            for b in &sealed {
                w.state = PartitionState {
                    next_height: b.block.height + 1,
                    next_offset: b.block.next_offset,
                    last_hash: b.hash,
                    log_start_offset: w.state.log_start_offset,
                    max_timestamp: w.state.max_timestamp.max(b.block.max_timestamp),
                };
            }
            // Receipts ride in the partition's last block of the round.
            let last_height = w.state.next_height.saturating_sub(1);
            for (_, opk, committed) in offsets.iter_mut() {
                if *opk == pk {
                    committed.receipt_height = last_height;
                }
            }
            set.blocks.extend(sealed);
        }
        set.offsets = offsets;
        for (pk, producer_id) in touched.into_keys() {
            if let Some(state) = self.working.get(&pk).and_then(|w| w.producers.get(&producer_id)) {
                set.producers.push(ProducerEntry {
                    partition: pk,
                    producer_id,
                    state: state.clone(),
                });
            }
        }
        let generation = self.generation;
        self.send(Job::Commit {
            set,
            replies,
            generation,
        });
    }

    fn send(&mut self, job: Job) {
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            // The committer is gone (it only stops when we hang up, or on a
            // panic): nothing more can become durable.
            self.health.failed.store(true, Ordering::Release);
            job.fail(&Rejected::Storage("the ledger committer stopped".into()));
        }
    }
}

/// Answers a round's submitters with a storage error.
fn refuse(round: impl Iterator<Item = Submission>) {
    let failed = Rejected::Storage(RECOVERING.into());
    for sub in round {
        match sub {
            Submission::Produce { reply, .. } => {
                let _ = reply.send(Err(failed.clone()));
            }
            Submission::Receipt { reply, .. } | Submission::DeleteTopic { reply, .. } => {
                let _ = reply.send(Err(failed.clone()));
            }
        }
    }
}

impl Job {
    fn fail(self, e: &Rejected) {
        match self {
            Job::Commit { replies, .. } => {
                for r in replies {
                    r.send(Err(e.clone()));
                }
            }
            Job::DeleteTopic { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl Reply {
    /// Sends the outcome: the contract's own for a produce, or `outcome`'s
    /// error if the round could not be written.
    fn send(self, outcome: Result<(), Rejected>) {
        match (self, outcome) {
            (Reply::Produce(tx, contract), Ok(())) => {
                let _ = tx.send(contract);
            }
            (Reply::Produce(tx, _), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Reply::Receipt(tx), outcome) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

impl Job {
    fn generation(&self) -> u64 {
        match self {
            Job::Commit { generation, .. } | Job::DeleteTopic { generation, .. } => *generation,
        }
    }
}

impl Committer {
    fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            if job.generation() != self.generation {
                // Sealed on the state a failed write left behind.
                job.fail(&Rejected::Storage(RECOVERING.into()));
                continue;
            }
            match job {
                Job::Commit { set, replies, .. } => self.commit(set, replies),
                Job::DeleteTopic { topic, reply, .. } => {
                    let outcome = self
                        .store
                        .delete_topic(&topic)
                        .map_err(|e| Rejected::Storage(e.to_string()));
                    if outcome.is_err() {
                        self.recover(None);
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
    }

    fn commit(&mut self, set: WriteSet, replies: Vec<Reply>) {
        let span = info_span!("commit", blocks = set.blocks.len());
        let _enter = span.enter();
        let written = Instant::now();
        match self.store.commit(&set) {
            Ok(states) => {
                metrics::histogram!("courier_ledger_commit_seconds").record(written.elapsed().as_secs_f64());
                metrics::counter!("courier_ledger_blocks_total").increment(set.blocks.len() as u64);
                self.topics
                    .set_states(set.blocks.iter().map(|b| b.block.partition).zip(states));
                self.commits.send_modify(|n| *n += 1);
                for r in replies {
                    r.send(Ok(()));
                }
            }
            Err(e) => {
                error!(error = %e, "ledger commit failed; writes are refused until the disk takes them again");
                let failed = Rejected::Storage(e.to_string());
                for r in replies {
                    r.send(Err(failed.clone()));
                }
                self.recover(Some(set));
            }
        }
    }

    /// After a failed write: refuses every round queued behind it, probes
    /// the disk with bounded back-off until the store recovers, makes
    /// durable what the failed commit may have left visible (its
    /// submitters were refused; producers retry, and idempotent ones are
    /// de-duplicated), and moves to the next generation.
    fn recover(&mut self, failed_set: Option<WriteSet>) {
        self.health.failed.store(true, Ordering::Release);
        metrics::counter!("courier_ledger_write_failures_total").increment(1);
        metrics::gauge!("courier_ledger_writable").set(0.0);
        let started = Instant::now();
        let mut backoff = RECOVER_BACKOFF_MIN;
        loop {
            // Refuse what waits meanwhile (it chains onto the failed round).
            loop {
                match self.jobs.recv_timeout(backoff) {
                    Ok(job) => job.fail(&Rejected::Storage(RECOVERING.into())),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            let recovered = self.store.recover().and_then(|()| match &failed_set {
                Some(set) if self.store.holds(set)? == Some(true) => self.store.rewrite(set).map(drop),
                _ => Ok(()),
            });
            match recovered {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "the ledger does not take writes yet");
                    backoff = (backoff * 2).min(RECOVER_BACKOFF_MAX);
                }
            }
        }
        // What the store holds now is what handlers see.
        if let Ok(partitions) = self.store.partitions() {
            self.topics.set_states(partitions);
        }
        self.commits.send_modify(|n| *n += 1);
        self.generation += 1;
        self.health.generation.store(self.generation, Ordering::Release);
        self.health.failed.store(false, Ordering::Release);
        metrics::gauge!("courier_ledger_writable").set(1.0);
        tracing::info!(
            after_ms = started.elapsed().as_millis() as u64,
            "the ledger takes writes again"
        );
    }
}

/// Turns a partition's draft into sealed blocks of at most
/// [`BLOCK_BYTES_MAX`] (cut at batch boundaries), chained from `state`.
/// Receipts go into the last block.
fn cut_blocks(pk: PartitionKey, state: &PartitionState, draft: Draft) -> Vec<SealedBlock> {
    let batches = draft.run.bytes.freeze();
    let senders = draft.run.senders;
    let mut out = Vec::with_capacity(batches.len() / BLOCK_BYTES_MAX + 1);
    let mut height = state.next_height;
    let mut prev_hash = state.last_hash;
    let mut base_offset = state.next_offset;
    let (mut start, mut at) = (0, 0);
    let (mut next_offset, mut max_timestamp) = (base_offset, -1);
    let mut receipts = draft.receipts;
    loop {
        // The draft holds only batches this round validated and placed.
        let header = (at < batches.len())
            .then(|| BatchHeader::parse(&batches[at..]).ok())
            .flatten();
        let size = header.map_or(0, |h| h.total_bytes());
        let last = header.is_none();
        if last || (at > start && at - start + size > BLOCK_BYTES_MAX) {
            let sealed = Block {
                partition: pk,
                height,
                view: 0,
                prev_hash,
                base_offset,
                next_offset,
                max_timestamp,
                config_version: 0,
                requests: vec![],
                senders: senders_within(&senders, base_offset, next_offset),
                receipts: if last {
                    std::mem::take(&mut receipts)
                } else {
                    Vec::new()
                },
                batches: batches.slice(start..at),
            }
            .seal();
            height += 1;
            prev_hash = sealed.hash;
            base_offset = next_offset;
            max_timestamp = -1;
            start = at;
            out.push(sealed);
        }
        let Some(h) = header else { break };
        at += size;
        next_offset = h.last_offset() + 1;
        max_timestamp = max_timestamp.max(h.max_timestamp);
    }
    debug_assert_eq!(
        next_offset, draft.run.next_offset,
        "cut blocks end where the draft does"
    );
    out
}

impl Draft {
    fn empty(next_offset: i64) -> Self {
        Self {
            base_offset: next_offset,
            run: BatchRun::new(next_offset),
            receipts: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_protocol::records::{assign_offset, encode_batch, NewRecord, ProducerIds};

    #[test]
    fn drafts_are_cut_into_chained_blocks_of_bounded_size() {
        let pk = PartitionKey {
            topic_id: [3; 16],
            partition: 0,
        };
        let state = PartitionState {
            next_height: 7,
            next_offset: 100,
            ..PartitionState::EMPTY
        };
        let mut draft = Draft::empty(100);
        let value = vec![b'v'; 300 * 1024];
        for i in 0..5 {
            let record = NewRecord {
                value: Some(&value),
                ..Default::default()
            };
            let b = encode_batch(i, ProducerIds::NONE, &[record.clone(), record]);
            let start = draft.run.bytes.len();
            draft.run.bytes.extend_from_slice(&b);
            assign_offset(&mut draft.run.bytes[start..], draft.run.next_offset, 0);
            draft.run.next_offset += 2;
        }
        draft.receipts.push(Receipt {
            group_id: "g".into(),
            offset: 5,
            ..Default::default()
        });
        let blocks = cut_blocks(pk, &state, draft);
        // Each batch is ~600 KiB: two never fit in 1 MiB, so one block each.
        assert_eq!(blocks.len(), 5);
        let mut prev = state.last_hash;
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.block.height, 7 + i as u64);
            assert_eq!(b.block.prev_hash, prev);
            assert_eq!(
                (b.block.base_offset, b.block.next_offset),
                (100 + 2 * i as i64, 102 + 2 * i as i64)
            );
            assert_eq!(b.hash, b.block.hash());
            assert!(b.block.batches.len() <= BLOCK_BYTES_MAX);
            prev = b.hash;
        }
        assert_eq!(blocks[4].block.receipts.len(), 1, "receipts ride in the last block");
    }

    #[test]
    fn a_receipt_only_draft_makes_one_empty_block() {
        let pk = PartitionKey {
            topic_id: [3; 16],
            partition: 1,
        };
        let mut draft = Draft::empty(40);
        draft.receipts.push(Receipt {
            group_id: "g".into(),
            offset: 40,
            ..Default::default()
        });
        let blocks = cut_blocks(
            pk,
            &PartitionState {
                next_offset: 40,
                ..PartitionState::EMPTY
            },
            draft,
        );
        assert_eq!(blocks.len(), 1);
        assert_eq!((blocks[0].block.base_offset, blocks[0].block.next_offset), (40, 40));
        assert!(blocks[0].block.batches.is_empty());
    }
}
