//! The executor: the one writer of a replica's ledger.
//!
//! It takes the batches its replicas ordered, in sequence order per
//! partition, and turns each into exactly one block at height `seq - 1`,
//! applying the contract the same way on every replica: request
//! de-duplication by (origin, number), batch validation, the idempotent
//! producer rules, receipts. Whatever a round executed is
//! written in one transaction (one sync); only then is each replica told
//! the state it reached, so a checkpoint vote always names a durable block.
//!
//! It also stores the quorum certificates its replicas gather, publishes
//! the high watermark only up to a certified block (consumers never see a
//! block 2f + 1 replicas have not executed alike), and installs blocks
//! fetched from peers by state transfer after checking their hash chain
//! and certificate.
//!
//! Topics come from the Raft group ([`Job::Catalog`]): the executor keeps
//! its copy of the catalog, records it in the ledger database (so
//! `courier ledger verify` can name partitions) and publishes it to the
//! broker's handlers and the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use courier_consensus::catalog::TopicRecord;
use courier_consensus::contract::{
    append_request, remember, BatchRun, ProducerTable, RequestVerdict, RequestWindow, Verdict,
};
use courier_consensus::ledger::{
    Block, BlockHash, CommittedOffset, LedgerStore, PartitionKey, PartitionState, ProducerEntry, RequestRecord,
    SealedBlock, StoreError, WriteSet,
};
use courier_consensus::pbft::{wire, Batch, QuorumCert, RequestId};
use courier_protocol::records::{validate_record_set, BatchHeader, RecordLimits};
use kafka_protocol::ResponseError;
use tokio::sync::watch;
use tracing::{error, info_span, warn};

use super::command::Command;
use super::{ClusterView, Input, Membership, Served};
use crate::topics::Topics;

/// Decompressed bytes a batch may expand to at execution. A cluster-wide
/// constant, not a node setting: every replica must judge a batch alike.
const DECOMPRESSED_BYTES_MAX: usize = 256 << 20;
/// Jobs taken into one round (one transaction).
const ROUND_JOBS_MAX: usize = 1024;
/// The first wait before probing a failed disk again, and the longest.
const RECOVER_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RECOVER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

pub enum Job {
    /// Execute the batch ordered at `seq` of a partition's cluster.
    Execute { pk: PartitionKey, seq: u64, batch: Batch },
    /// A certificate for the block at `cert.seq - 1`: store it and make
    /// everything up to that block visible.
    Certify { pk: PartitionKey, cert: QuorumCert },
    /// Blocks (canonical bytes, each with its certificate if it has one)
    /// fetched from a peer, starting at the height we asked for.
    Install {
        pk: PartitionKey,
        from_height: u64,
        blocks: Vec<(Bytes, Option<Bytes>)>,
    },
    /// Blocks a peer served to replace the damaged block at `height` (the
    /// first of them), with their certificates: see [`Executor::repair`].
    Repair {
        pk: PartitionKey,
        height: u64,
        blocks: Vec<(Bytes, Option<Bytes>)>,
    },
    /// The topics as the Raft group has them at `version`, and the
    /// partitions this node orders with their clusters.
    Catalog {
        topics: BTreeMap<String, TopicRecord>,
        served: Served,
        routes: crate::topics::Routes,
        version: u64,
    },
}

/// What the executor keeps of one partition between rounds.
struct Working {
    state: PartitionState,
    producers: ProducerTable,
    windows: BTreeMap<u8, RequestWindow>,
    /// The state after each executed block not yet certified, by height.
    uncertified: BTreeMap<u64, PartitionState>,
}

pub struct Executor {
    pub store: Arc<LedgerStore>,
    pub topics: Arc<Topics>,
    pub membership: Arc<Membership>,
    pub jobs: Receiver<Job>,
    pub engine: tokio::sync::mpsc::Sender<Input>,
    pub commits: watch::Sender<u64>,
    /// The Raft state version whose topics the handlers see.
    pub catalog_version: watch::Sender<u64>,
    working: HashMap<PartitionKey, Working>,
    /// Topics by name, as the Raft group has them.
    catalog: BTreeMap<String, TopicRecord>,
    /// The Raft state version `catalog` reflects (as stored).
    catalog_at: u64,
    /// The partitions this node orders, with their clusters.
    views: HashMap<PartitionKey, Arc<ClusterView>>,
    /// The last catalog taken, to take again after a failed write.
    last_catalog: Option<Job>,
}

/// Everything one round changes, and what to tell afterwards.
#[derive(Default)]
struct Round {
    set: WriteSet,
    /// (pk, seq, state, records of our own requests)
    executed: Vec<(PartitionKey, u64, BlockHash, Vec<RequestRecord>)>,
    /// (pk, visible state) for certified blocks.
    visible: Vec<(PartitionKey, PartitionState)>,
    transferred: Vec<Input>,
    catalog_changed: bool,
    /// The Raft state version the round's catalog reflects.
    catalog_version: Option<u64>,
}

impl Executor {
    pub fn new(
        store: Arc<LedgerStore>,
        topics: Arc<Topics>,
        membership: Arc<Membership>,
        jobs: Receiver<Job>,
        engine: tokio::sync::mpsc::Sender<Input>,
        commits: watch::Sender<u64>,
        catalog_version: watch::Sender<u64>,
    ) -> Result<Self, StoreError> {
        let catalog = store.topics()?.into_iter().map(|t| (t.name.clone(), t)).collect();
        let catalog_at = store.counter(courier_consensus::ledger::CATALOG_VERSION)?;
        catalog_version.send_replace(catalog_at);
        Ok(Self {
            store,
            topics,
            membership,
            jobs,
            engine,
            commits,
            catalog_version,
            working: HashMap::new(),
            catalog,
            catalog_at,
            views: HashMap::new(),
            last_catalog: None,
        })
    }

    pub fn run(mut self) {
        while let Ok(first) = self.jobs.recv() {
            let mut jobs = vec![first];
            while jobs.len() < ROUND_JOBS_MAX {
                match self.jobs.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if let Err((e, failed)) = self.round(jobs) {
                error!(error = %e, "ledger write failed; this replica executes nothing until the disk takes writes again");
                if !self.recover(failed) {
                    return;
                }
            }
        }
    }

    /// After a failed round: the in-memory state ran past the disk. Waits
    /// (probing with bounded back-off) until the store takes writes again,
    /// writes durably what a failed fsync may have left visible, drops the
    /// working state, and rewinds every replica to what the ledger holds:
    /// they hand their executions over again (from their logs, or by state
    /// transfer from peers), so nothing is acknowledged that was not
    /// persisted, and nothing persisted is lost. Executions that were queued
    /// meanwhile are dropped (the rewind hands them over again); every
    /// other job is kept and done afterwards. False when the node stops.
    fn recover(&mut self, failed: Option<Box<Round>>) -> bool {
        metrics::counter!("courier_ledger_write_failures_total").increment(1);
        metrics::gauge!("courier_ledger_writable").set(0.0);
        let started = Instant::now();
        let mut kept = Vec::new();
        let mut backoff = RECOVER_BACKOFF_MIN;
        let rewritten = loop {
            loop {
                match self.jobs.recv_timeout(backoff) {
                    Ok(Job::Execute { .. }) => {}
                    Ok(job) => kept.push(job),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                }
            }
            let recovered = self.store.recover().and_then(|()| match &failed {
                Some(round) if self.store.holds(&round.set)? == Some(true) => {
                    self.store.rewrite(&round.set).map(|_| true)
                }
                _ => Ok(false),
            });
            match recovered {
                Ok(rewritten) => break rewritten,
                Err(e) => {
                    tracing::debug!(error = %e, "the ledger does not take writes yet");
                    backoff = (backoff * 2).min(RECOVER_BACKOFF_MAX);
                }
            }
        };
        self.working.clear();
        if let (true, Some(round)) = (rewritten, failed) {
            // Durable after all: tell what it executed, as a round does.
            self.publish(*round);
        }
        let durable: Vec<(PartitionKey, u64)> = self
            .views
            .keys()
            .filter_map(|pk| Some((*pk, self.store.partition_state(pk).ok()?.next_height)))
            .collect();
        for (pk, durable) in durable {
            let _ = self.engine.blocking_send(Input::Rewind { pk, durable });
        }
        // The catalog the disk holds, then the last one taken again with
        // the kept jobs, in a round of their own: a catalog change may have
        // been in the round that failed.
        match (
            self.store.topics(),
            self.store.counter(courier_consensus::ledger::CATALOG_VERSION),
        ) {
            (Ok(topics), Ok(version)) => {
                self.catalog = topics.into_iter().map(|t| (t.name.clone(), t)).collect();
                self.catalog_at = version;
            }
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "cannot read the catalog back after recovering"),
        }
        if let Some(last) = self.last_catalog.take() {
            kept.insert(0, last);
        }
        metrics::gauge!("courier_ledger_writable").set(1.0);
        tracing::info!(
            after_ms = started.elapsed().as_millis() as u64,
            rewritten,
            "the ledger takes writes again; replicas rewound to it"
        );
        if !kept.is_empty() {
            if let Err((e, failed)) = self.round(kept) {
                error!(error = %e, "ledger write failed again");
                return self.recover(failed);
            }
        }
        true
    }

    fn working(&mut self, pk: PartitionKey) -> Result<&mut Working, StoreError> {
        working(&mut self.working, &self.store, pk)
    }

    /// Runs jobs as one round (one transaction). A failure returns the
    /// round when its commit was tried (it may have reached the disk).
    fn round(&mut self, jobs: Vec<Job>) -> Result<(), (StoreError, Option<Box<Round>>)> {
        let started = Instant::now();
        let span = info_span!("execute", jobs = jobs.len());
        let _enter = span.enter();
        let mut round = Round::default();
        let early = |e| (e, None);
        for job in jobs {
            match job {
                Job::Execute { pk, seq, batch } => self.execute(pk, seq, &batch, &mut round).map_err(early)?,
                Job::Certify { pk, cert } => self.certify(pk, &cert, &mut round).map_err(early)?,
                Job::Install {
                    pk,
                    from_height,
                    blocks,
                } => self.install(pk, from_height, blocks, &mut round).map_err(early)?,
                Job::Repair { pk, height, blocks } => self.repair(pk, height, &blocks),
                Job::Catalog {
                    topics,
                    served,
                    routes,
                    version,
                } => {
                    self.last_catalog = Some(Job::Catalog {
                        topics: topics.clone(),
                        served: served.clone(),
                        routes: routes.clone(),
                        version,
                    });
                    if version >= self.catalog_at {
                        self.topics.set_routes(routes);
                    }
                    self.take_catalog(topics, served, version, &mut round)
                }
            }
        }
        if let Err(e) = self.store.commit(&round.set) {
            return Err((e, Some(Box::new(round))));
        }
        let blocks = round.set.blocks.len();
        metrics::histogram!("courier_ledger_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("courier_ledger_blocks_total").increment(blocks as u64);
        self.publish(round);
        Ok(())
    }

    /// What a durable round tells: the catalog, the visible states, and
    /// each replica what it executed or installed.
    fn publish(&mut self, round: Round) {
        if round.catalog_changed {
            self.publish_catalog(&round.set);
        }
        if let Some(v) = round.catalog_version {
            self.catalog_version.send_if_modified(|old| {
                let newer = v > *old;
                *old = (*old).max(v);
                newer
            });
        }
        if !round.visible.is_empty() {
            self.topics.set_states(round.visible.iter().copied());
            self.commits.send_modify(|n| *n += 1);
        }
        for (pk, seq, state, records) in round.executed {
            let _ = self.engine.blocking_send(Input::Executed {
                pk,
                seq,
                state: state.0,
                local: records,
            });
        }
        for t in round.transferred {
            let _ = self.engine.blocking_send(t);
        }
    }

    /// Adopts the Raft group's topics: what changed is written in this
    /// round and published after it.
    fn take_catalog(&mut self, topics: BTreeMap<String, TopicRecord>, served: Served, version: u64, round: &mut Round) {
        if version < self.catalog_at {
            // A node's Raft state restarts from its snapshot and replays
            // the log after it: the states on the way were adopted before
            // and must not be adopted again (an older one would delete a
            // topic that exists, and its data with it).
            return;
        }
        for (name, old) in &self.catalog {
            if topics.get(name).is_none_or(|t| t.id != old.id) {
                round.set.topic_puts.retain(|t| &t.name != name);
                round.set.topic_deletes.push(old.clone());
            }
        }
        for (name, t) in &topics {
            if self.catalog.get(name) != Some(t) {
                round.set.topic_puts.retain(|p| &p.name != name);
                round.set.topic_puts.push(t.clone());
            }
        }
        let views: HashMap<_, _> = served.into_iter().collect();
        round.catalog_changed |= topics != self.catalog || views != self.views;
        self.views = views;
        round.catalog_version = Some(version);
        round.set.catalog_version = Some(version);
        self.catalog = topics;
        self.catalog_at = version;
    }

    /// Makes topic changes visible and tells the engine which partitions
    /// now exist.
    fn publish_catalog(&mut self, set: &WriteSet) {
        for t in &set.topic_deletes {
            self.topics.remove(t);
            self.working.retain(|pk, _| pk.topic_id != t.id);
        }
        for t in &set.topic_puts {
            self.topics.insert(t.clone());
        }
        for (pk, view) in &self.views {
            // What `courier ledger verify` checks this partition's
            // certificates against.
            let keys = view.keys.concat();
            if let Err(e) = self.store.put_identity(&super::partition_members_key(pk), &keys) {
                warn!(error = %e, "cannot record a partition's cluster keys");
            }
        }
        let served = self.views.iter().map(|(pk, v)| (*pk, v.clone())).collect();
        let _ = self.engine.blocking_send(Input::Partitions(served));
    }

    /// One ordered batch becomes the block at height `seq - 1`.
    fn execute(&mut self, pk: PartitionKey, seq: u64, batch: &Batch, round: &mut Round) -> Result<(), StoreError> {
        let span = tracing::debug_span!("consensus_round", partition = pk.partition, seq, view = batch.view);
        let _enter = span.enter();
        if !self.partition_exists(&pk) {
            // Its topic was deleted under it: nothing more is written there.
            return Ok(());
        }
        let Some(me) = self.views.get(&pk).map(|v| v.me) else {
            return Ok(());
        };
        let height = seq - 1;
        let w = working(&mut self.working, &self.store, pk)?;
        if w.state.next_height > height {
            // A state transfer installed it already; vote for what we hold.
            let hash = match round
                .set
                .blocks
                .iter()
                .find(|b| b.block.partition == pk && b.block.height == height)
            {
                Some(b) => b.hash,
                None => self
                    .store
                    .block_hashes_from(&pk, height)?
                    .first()
                    .filter(|(h, _)| *h == height)
                    .map(|(_, hash)| *hash)
                    .ok_or_else(|| StoreError::Corrupt(format!("block {height} of {pk:?} is missing")))?,
            };
            round.executed.push((pk, seq, hash, Vec::new()));
            return Ok(());
        }
        if w.state.next_height < height {
            // Handed over before a failed write was recovered from, after
            // one that was lost: the replica, rewound, hands both over again.
            tracing::debug!(
                ?pk,
                seq,
                next_height = w.state.next_height,
                "an execution ahead of the ledger is dropped"
            );
            return Ok(());
        }
        let mut draft = Draft::new(w.state.next_offset);
        let mut records = Vec::with_capacity(batch.requests.len());
        for request in &batch.requests {
            let id = request.id;
            let window = w.windows.entry(id.origin).or_default();
            let outcome = match window.judge(id.number) {
                RequestVerdict::Duplicate => Err(ResponseError::DuplicateSequenceNumber.code()),
                RequestVerdict::Stale => Err(ResponseError::RequestTimedOut.code()),
                RequestVerdict::New => {
                    window.record(id.number);
                    round.set.windows.push((pk, id.origin, window.clone()));
                    match Command::decode(request.payload.clone()) {
                        Err(_) => Err(ResponseError::InvalidRequest.code()),
                        Ok(cmd) => apply_partition_command(pk, w, cmd, &mut draft, &mut round.set),
                    }
                }
            };
            let record = RequestRecord {
                origin: id.origin,
                number: id.number,
                error_code: outcome.err().unwrap_or(0),
                base_offset: outcome.unwrap_or(-1),
            };
            records.push(record);
        }
        let block = Block {
            partition: pk,
            height,
            view: batch.view,
            prev_hash: w.state.last_hash,
            base_offset: w.state.next_offset,
            next_offset: draft.run.next_offset,
            max_timestamp: draft.run.max_timestamp,
            config_version: 0,
            receipts: std::mem::take(&mut draft.receipts),
            requests: records.clone(),
            senders: std::mem::take(&mut draft.run.senders),
            batches: std::mem::take(&mut draft.run.bytes).freeze(),
        }
        .seal();
        let committed_offsets = std::mem::take(&mut draft.offsets);
        for (group, committed) in committed_offsets {
            round.set.offsets.push((
                group,
                pk,
                CommittedOffset {
                    receipt_height: height,
                    ..committed
                },
            ));
        }
        for producer_id in draft.producers_touched {
            if let Some(state) = w.producers.get(&producer_id) {
                round.set.producers.push(ProducerEntry {
                    partition: pk,
                    producer_id,
                    state: state.clone(),
                });
            }
        }
        w.state = PartitionState {
            next_height: height + 1,
            next_offset: block.block.next_offset,
            last_hash: block.hash,
            log_start_offset: w.state.log_start_offset,
            max_timestamp: w.state.max_timestamp.max(block.block.max_timestamp),
        };
        w.uncertified.insert(height, w.state);
        let local = records.into_iter().filter(|r| r.origin == me).collect();
        round.executed.push((pk, seq, block.hash, local));
        round.set.blocks.push(block);
        Ok(())
    }

    /// Whether this node orders `pk` (its topic exists and the partition
    /// is placed on a cluster this node serves).
    fn partition_exists(&self, pk: &PartitionKey) -> bool {
        self.views.contains_key(pk)
    }

    fn certify(&mut self, pk: PartitionKey, cert: &QuorumCert, round: &mut Round) -> Result<(), StoreError> {
        if !self.partition_exists(&pk) {
            return Ok(());
        }
        let height = cert.seq - 1;
        round.set.certs.push((pk, height, wire::encode_cert(cert).freeze()));
        let w = self.working(pk)?;
        let visible = match w.uncertified.get(&height) {
            Some(s) => Some(*s),
            // Executed in an earlier life of this node: what is stored is it.
            None if w.state.next_height == height + 1 => Some(w.state),
            None => None,
        };
        w.uncertified = w.uncertified.split_off(&(height + 1));
        if let Some(state) = visible {
            round.visible.push((pk, state));
        }
        Ok(())
    }

    /// Replaces the damaged block at `height` with the first of `blocks`
    /// (served by a peer) once it is proven: each served block decodes
    /// canonically (its batches match the digest in its head), the blocks
    /// follow each other in the chain, and a certificate of 2f + 1 of the
    /// cluster's members covers one of them, so the hash chain down from it
    /// names the replacement. Nothing else of the node's state changes: the
    /// block is the one it executed. A proof that fails is logged and the
    /// repair task asks another peer.
    fn repair(&mut self, pk: PartitionKey, height: u64, blocks: &[(Bytes, Option<Bytes>)]) {
        let Some(view) = self.views.get(&pk).cloned() else {
            return;
        };
        let (cluster, members, quorum) = (view.instance(&pk), &view.keys, view.quorum());
        let mut chain: Vec<SealedBlock> = Vec::with_capacity(blocks.len());
        let mut proven = false;
        for (i, (raw, cert)) in blocks.iter().enumerate() {
            let Ok(sealed) = Block::decode_sealed(raw) else {
                warn!(?pk, height, "repair: a served block does not decode; refused");
                return;
            };
            let in_place = sealed.block.partition == pk
                && sealed.block.height == height + i as u64
                && chain.last().is_none_or(|prev| sealed.block.prev_hash == prev.hash);
            if !in_place {
                warn!(
                    ?pk,
                    height, "repair: served blocks do not form the chain above the damaged one; refused"
                );
                return;
            }
            let certified = cert.as_ref().is_some_and(|c| {
                wire::decode_cert(c.clone()).is_ok_and(|c| {
                    c.seq == sealed.block.height + 1
                        && c.state == sealed.hash.0
                        && c.verify(cluster, members, quorum).is_ok()
                })
            });
            chain.push(sealed);
            if certified {
                proven = true;
                break;
            }
        }
        let Some(replacement) = chain.first().filter(|_| proven) else {
            warn!(
                ?pk,
                height, "repair: no valid certificate covers the served blocks; refused"
            );
            metrics::counter!("courier_ledger_repair_refused_total").increment(1);
            return;
        };
        let Some(what) = self
            .store
            .damaged()
            .into_iter()
            .find(|d| d.pk == pk && d.height == height)
            .map(|d| d.kind.as_str())
        else {
            // Repaired already (an earlier answer).
            return;
        };
        match self.store.repair_block(replacement) {
            Ok(()) => {
                let topic = self
                    .topics
                    .get_by_id(&pk.topic_id)
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                tracing::info!(
                    topic,
                    partition = pk.partition,
                    height,
                    what,
                    "stored block repaired from a peer's certified copy"
                );
                metrics::counter!("courier_ledger_repairs_total", "what" => what).increment(1);
            }
            Err(e) => error!(?pk, height, error = %e, "repair: cannot write the repaired block"),
        }
    }

    /// Checks fetched blocks against our chain and the last one's
    /// certificate, then writes them with everything they imply.
    fn install(
        &mut self,
        pk: PartitionKey,
        from_height: u64,
        blocks: Vec<(Bytes, Option<Bytes>)>,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        let Some(view) = self.views.get(&pk).cloned() else {
            return Ok(());
        };
        let (me, cluster, members, quorum) = (view.me, view.instance(&pk), &view.keys, view.quorum());
        let pending_here = round.set.blocks.iter().any(|b| b.block.partition == pk);
        let w = working(&mut self.working, &self.store, pk)?;
        if pending_here || from_height != w.state.next_height || blocks.is_empty() {
            // Stale answer (we moved on meanwhile): the replica asks again if needed.
            return Ok(());
        }
        let mut state = w.state;
        let mut sealed = Vec::with_capacity(blocks.len());
        let mut last_cert = None;
        let mut certs = Vec::new();
        for (raw, cert) in &blocks {
            let Ok(SealedBlock { block, head, hash }) = Block::decode_sealed(raw) else {
                warn!(?pk, "state transfer: a block that does not decode; refused");
                return Ok(());
            };
            if block.partition != pk
                || block.height != state.next_height
                || block.prev_hash != state.last_hash
                || block.base_offset != state.next_offset
                || block.next_offset < block.base_offset
            {
                warn!(
                    ?pk,
                    height = block.height,
                    "state transfer: a block that does not extend our chain; refused"
                );
                return Ok(());
            }
            if let Some(cert_bytes) = cert {
                let valid = wire::decode_cert(cert_bytes.clone()).ok().filter(|c| {
                    c.seq == block.height + 1 && c.state == hash.0 && c.verify(cluster, members, quorum).is_ok()
                });
                match valid {
                    Some(c) => {
                        certs.push((pk, block.height, cert_bytes.clone()));
                        last_cert = Some((sealed.len(), c));
                    }
                    None => {
                        warn!(
                            ?pk,
                            height = block.height,
                            "state transfer: a certificate that does not verify; refused"
                        );
                        metrics::counter!("courier_state_transfer_refused_total").increment(1);
                        return Ok(());
                    }
                }
            }
            state = PartitionState {
                next_height: block.height + 1,
                next_offset: block.next_offset,
                last_hash: hash,
                log_start_offset: state.log_start_offset,
                max_timestamp: state.max_timestamp.max(block.max_timestamp),
            };
            sealed.push((SealedBlock { block, head, hash }, state));
        }
        // Only what a certificate covers is installed.
        let Some((last, cert)) = last_cert else {
            warn!(?pk, "state transfer: no certificate covers the blocks; refused");
            return Ok(());
        };
        sealed.truncate(last + 1);
        let mut executed = Vec::new();
        let mut local = Vec::new();
        for (b, after) in sealed {
            for r in &b.block.requests {
                executed.push(RequestId {
                    origin: r.origin,
                    number: r.number,
                });
                if r.origin == me {
                    local.push(*r);
                }
                let window = w.windows.entry(r.origin).or_default();
                if window.judge(r.number) == RequestVerdict::New {
                    window.record(r.number);
                }
                round.set.windows.push((pk, r.origin, window.clone()));
            }
            {
                derive_producers(&b.block, &mut w.producers, &mut round.set);
                for r in &b.block.receipts {
                    round.set.offsets.push((
                        r.group_id.clone(),
                        pk,
                        CommittedOffset {
                            offset: r.offset,
                            leader_epoch: r.leader_epoch,
                            metadata: r.metadata.clone(),
                            commit_timestamp_ms: r.timestamp_ms,
                            receipt_height: b.block.height,
                        },
                    ));
                }
            }
            w.state = after;
            round.set.blocks.push(b);
        }
        w.uncertified.clear();
        round
            .set
            .certs
            .extend(certs.into_iter().filter(|(_, h, _)| *h < w.state.next_height));
        round.visible.push((pk, w.state));
        metrics::counter!("courier_state_transfer_blocks_total").increment(w.state.next_height - from_height);
        round.transferred.push(Input::Transferred {
            pk,
            cert,
            executed,
            local,
        });
        Ok(())
    }
}

/// A partition's working state, loaded from the store on first use.
fn working<'a>(
    all: &'a mut HashMap<PartitionKey, Working>,
    store: &LedgerStore,
    pk: PartitionKey,
) -> Result<&'a mut Working, StoreError> {
    use std::collections::hash_map::Entry;
    Ok(match all.entry(pk) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => v.insert(Working {
            state: store.partition_state(&pk)?,
            producers: store.producers(&pk)?,
            windows: store.request_windows(&pk)?,
            uncertified: BTreeMap::new(),
        }),
    })
}

/// A block being assembled from one batch.
struct Draft {
    run: BatchRun,
    receipts: Vec<courier_consensus::ledger::Receipt>,
    offsets: Vec<(String, CommittedOffset)>,
    producers_touched: Vec<i64>,
}

impl Draft {
    fn new(next_offset: i64) -> Self {
        Self {
            run: BatchRun::new(next_offset),
            receipts: Vec::new(),
            offsets: Vec::new(),
            producers_touched: Vec::new(),
        }
    }
}

/// A produce or receipt for partition `pk`: `Ok(base offset)` (-1 for a
/// receipt) or a Kafka error code. All or nothing per request.
fn apply_partition_command(
    pk: PartitionKey,
    w: &mut Working,
    cmd: Command,
    draft: &mut Draft,
    _set: &mut WriteSet,
) -> Result<i64, i16> {
    match cmd {
        Command::Produce {
            pk: target,
            leader_epoch,
            principal,
            organization,
            records,
        } if target == pk => {
            let limits = RecordLimits {
                batch_bytes_max: usize::MAX,
                decompressed_bytes_max: DECOMPRESSED_BYTES_MAX,
            };
            let batches = validate_record_set(&records, &limits).map_err(|_| ResponseError::CorruptMessage.code())?;
            if batches
                .iter()
                .any(|b| b.header.is_transactional() || b.header.is_control())
            {
                return Err(ResponseError::InvalidRecord.code());
            }
            let from = draft.run.next_offset;
            match append_request(
                &mut w.producers,
                &mut draft.run,
                &batches,
                leader_epoch,
                &mut draft.producers_touched,
            ) {
                Ok(first) => {
                    if !principal.is_empty() {
                        draft.run.attribute(from, &principal, &organization);
                    }
                    Ok(first.unwrap_or(draft.run.next_offset))
                }
                Err(Verdict::InvalidProducerEpoch) => Err(ResponseError::InvalidProducerEpoch.code()),
                Err(_) => Err(ResponseError::OutOfOrderSequenceNumber.code()),
            }
        }
        Command::Receipt { pk: target, receipt } if target == pk => {
            draft.offsets.push((
                receipt.group_id.clone(),
                CommittedOffset {
                    offset: receipt.offset,
                    leader_epoch: receipt.leader_epoch,
                    metadata: receipt.metadata.clone(),
                    commit_timestamp_ms: receipt.timestamp_ms,
                    receipt_height: 0,
                },
            ));
            draft.receipts.push(receipt);
            Ok(-1)
        }
        _ => Err(ResponseError::InvalidRequest.code()),
    }
}

/// Idempotent-producer state implied by a block's batches.
fn derive_producers(block: &Block, producers: &mut ProducerTable, set: &mut WriteSet) {
    let mut at = 0;
    while at < block.batches.len() {
        let Ok(h) = BatchHeader::parse(&block.batches[at..]) else {
            break;
        };
        if h.is_idempotent() {
            let p = producers.entry(h.producer_id).or_default();
            remember(p, &h, h.base_offset);
            set.producers.push(ProducerEntry {
                partition: block.partition,
                producer_id: h.producer_id,
                state: p.clone(),
            });
        }
        at += h.total_bytes();
    }
}

/// Starts the executor thread.
pub fn spawn(executor: Executor) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("courier-exec-{}", executor.membership.me))
        .spawn(move || executor.run())
}

/// The channel the engine hands jobs over.
pub fn channel() -> (SyncSender<Job>, Receiver<Job>) {
    std::sync::mpsc::sync_channel(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_consensus::ledger::Durability;

    fn topic(name: &str, id: u8) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            id: [id; 16],
            partitions: 2,
            configs: BTreeMap::new(),
            epoch: 0,
        }
    }

    fn executor(dir: &std::path::Path) -> Executor {
        let store = Arc::new(LedgerStore::open(&dir.join("ledger.redb"), Durability::None).unwrap());
        let (_, jobs) = channel();
        let (engine, _) = tokio::sync::mpsc::channel(16);
        let membership = Arc::new(Membership::new(0, vec![Bytes::from(vec![1; 32])], vec!["p".into()]));
        Executor::new(
            store,
            Arc::new(Topics::default()),
            membership,
            jobs,
            engine,
            watch::channel(0).0,
            watch::channel(0).0,
        )
        .unwrap()
    }

    /// After a restart, Raft replays states older than the one the ledger
    /// reflects; adopting one would delete a topic that exists, data and all.
    #[test]
    fn an_older_raft_state_never_deletes_topics() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = executor(dir.path());
        let mut round = Round::default();
        let topics: BTreeMap<_, _> = [("orders".to_string(), topic("orders", 1))].into();
        e.take_catalog(topics.clone(), Vec::new(), 5, &mut round);
        e.store.commit(&round.set).unwrap();
        drop(e);

        let mut e = executor(dir.path());
        assert_eq!(e.catalog_at, 5, "the version is stored with the topics");
        let mut replay = Round::default();
        e.take_catalog(BTreeMap::new(), Vec::new(), 3, &mut replay);
        assert!(replay.set.topic_deletes.is_empty() && replay.catalog_version.is_none());
        e.take_catalog(topics.clone(), Vec::new(), 5, &mut replay);
        assert!(replay.set.topic_puts.is_empty(), "the same state again changes nothing");

        let mut newer = Round::default();
        e.take_catalog(BTreeMap::new(), Vec::new(), 6, &mut newer);
        assert_eq!(
            newer.set.topic_deletes,
            vec![topic("orders", 1)],
            "a newer state deletes"
        );
    }
}
