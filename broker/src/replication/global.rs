//! The global-ledger task.
//!
//! Every node runs it; only the Raft leader works. Each round, for every
//! partition, it reads the blocks certified after the partition's global
//! head from a member of the partition's cluster (this node's own ledger
//! when it is one), checks them against the cluster's keys in the Raft
//! state (`verify_segment`: hash links, offsets, batches, every
//! certificate), and appends them through Raft. Blocks that fail are
//! refused and reported: a warning naming the member, the
//! `courier_global_ledger_rejected_total` counter, and `/global` on the
//! admin endpoint. The partition is read from the next member after that.
//!
//! The lag is what the members hold certified and the global ledger does
//! not yet: `courier_global_ledger_lag_blocks` on the leader.
//!
//! Every node also looks after its own copy of the rows
//! ([`GlobalTask::run_rows`]): a row found damaged (by a read, or by the
//! row scrub, which re-checks every row at the scrubber's rate and
//! interval) is rewritten from the block as a member of the partition's
//! cluster serves it (this node's own ledger first when it is one),
//! accepted only with the hash the chain names. Each repair is a log line
//! and `courier_global_ledger_repairs_total`; `/global` lists what is
//! damaged now and what the last scrub found.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_consensus::ledger::{LedgerStore, PartitionKey};
use courier_consensus::raft::global::{verify_segment, ClusterKeys, GlobalHead, GlobalLedger, SegmentError};
use courier_consensus::raft::{MetaCommand, MetaRaft, MetaState, NodeId};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};

use super::forward::{served_blocks, Forwarder, ServedBlocks};
use super::raft_link::RaftLink;
use crate::shutdown::ShutdownSignal;

/// Pause between rounds that found nothing new.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// Pause between rounds that appended: reading whole blocks from other
/// nodes competes with the partitions' own traffic, so a busy global
/// ledger lags a little rather than taking the links.
const BUSY_PAUSE: Duration = Duration::from_millis(20);
/// Block bytes read per partition per round.
const READ_BYTES: u32 = 512 << 10;
/// Partitions read at once.
const PARALLEL: usize = 4;
/// Rejections remembered for `/global`.
const REJECTIONS_KEPT: usize = 64;

/// Blocks a member offered that the task refused.
#[derive(Clone, Debug, Serialize)]
pub struct Rejection {
    pub node: NodeId,
    pub topic: String,
    pub partition: i32,
    pub height: u64,
    pub fault: String,
    pub kind: &'static str,
    pub at_ms: u64,
}

/// What the task reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GlobalStatus {
    /// Whether this node leads (and so runs the rounds).
    pub leading: bool,
    pub rounds: u64,
    /// Certified blocks the members hold that the global ledger does not,
    /// as of the last round.
    pub lag_blocks: u64,
    pub appended_blocks: u64,
    pub rejected_total: u64,
    /// The most recent rejections, oldest first.
    pub rejections: VecDeque<Rejection>,
    /// This node's own rows: damaged now, repaired so far, and the scrub.
    pub rows: RowStatus,
}

/// This node's global-ledger rows (see [`GlobalTask::run_rows`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RowStatus {
    pub damaged: Vec<DamagedRow>,
    pub repaired_total: u64,
    pub scrub_passes: u64,
    /// Rows checked by the scrub pass running now (or the last one).
    pub scrub_rows_checked: u64,
    /// What the last pass found (at most [`REJECTIONS_KEPT`]).
    pub scrub_findings: Vec<DamagedRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DamagedRow {
    pub topic: String,
    pub partition: i32,
    pub height: u64,
    pub reason: String,
}

/// How often the damaged rows are looked at.
const ROWS_POLL: Duration = Duration::from_millis(200);
/// Block bytes asked for to repair one row (the block, up to a certified one).
const ROW_REPAIR_BYTES: u32 = 8 << 20;
/// The first row scrub starts this long after start-up (or after the
/// interval, when that is shorter), as the block scrubber's does.
const ROW_SCRUB_FIRST: Duration = Duration::from_secs(60);

pub struct GlobalTask {
    me: NodeId,
    meta: Arc<MetaRaft<RaftLink>>,
    forward: Arc<Forwarder>,
    store: Arc<LedgerStore>,
    status: Arc<Mutex<GlobalStatus>>,
    /// Per partition, which member to read next (advanced past a member
    /// that failed).
    cursor: Mutex<HashMap<PartitionKey, usize>>,
}

/// What one partition's turn did.
#[derive(Default)]
struct Turn {
    lag: u64,
    appended: u64,
}

impl GlobalTask {
    pub fn new(me: NodeId, meta: Arc<MetaRaft<RaftLink>>, forward: Arc<Forwarder>, store: Arc<LedgerStore>) -> Self {
        Self {
            me,
            meta,
            forward,
            store,
            status: Arc::default(),
            cursor: Mutex::new(HashMap::new()),
        }
    }

    pub fn status(&self) -> GlobalStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn status_handle(&self) -> Arc<Mutex<GlobalStatus>> {
        self.status.clone()
    }

    /// Runs rounds until shutdown.
    pub async fn run(self: Arc<Self>, mut stop: ShutdownSignal) {
        let mut round = 0u64;
        loop {
            let leading = self.meta.leader() == Some(self.me);
            let mut progressed = false;
            if leading {
                round += 1;
                let span = tracing::debug_span!("global_round", round);
                tokio::select! {
                    p = self.clone().round().instrument(span) => progressed = p,
                    _ = stop.wait() => return,
                }
            } else {
                // Only the leader knows the lag; the others report none, so
                // the maximum over nodes is the leader's figure.
                metrics::gauge!("courier_global_ledger_lag_blocks").set(0.0);
                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                s.leading = false;
                s.lag_blocks = 0;
            }
            let pause = if progressed { BUSY_PAUSE } else { ROUND_PAUSE };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait() => return,
            }
        }
    }

    /// One pass over every partition; whether anything was appended.
    async fn round(self: Arc<Self>) -> bool {
        let state = self.meta.state();
        let limit = Arc::new(Semaphore::new(PARALLEL));
        let mut turns = tokio::task::JoinSet::new();
        for t in state.topics.values() {
            for (p, cluster) in t.placement.iter().enumerate() {
                let pk = t.record.partition_key(p as i32);
                let head = state
                    .global
                    .get(&pk)
                    .cloned()
                    .unwrap_or_else(|| GlobalHead::genesis(*cluster));
                let (this, state, limit) = (self.clone(), state.clone(), limit.clone());
                turns.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    this.partition(&state, pk, head).await
                });
            }
        }
        let (mut lag, mut appended) = (0, 0);
        while let Some(turn) = turns.join_next().await {
            if let Ok(turn) = turn {
                lag += turn.lag;
                appended += turn.appended;
            }
        }
        metrics::gauge!("courier_global_ledger_lag_blocks").set(lag as f64);
        metrics::counter!("courier_global_ledger_appended_blocks_total").increment(appended);
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.leading = true;
        s.rounds += 1;
        s.lag_blocks = lag;
        s.appended_blocks += appended;
        appended > 0
    }

    async fn partition(&self, state: &MetaState, pk: PartitionKey, head: GlobalHead) -> Turn {
        let Some(keys) = ClusterKeys::of(state, head.cluster) else {
            return Turn::default();
        };
        let source = self.source(&pk, &keys.nodes);
        let served = self.read(source, pk, head.next_height).await;
        let Some(served) = served else {
            self.next_source(&pk);
            return Turn::default();
        };
        let lag = served.certified_end.saturating_sub(head.next_height);
        if served.blocks.is_empty() {
            return Turn { lag, appended: 0 };
        }
        let entries = match verify_segment(&pk, &head, &served.blocks, &keys) {
            Ok(entries) => entries,
            Err(e) => {
                self.reject(state, source, &pk, e);
                self.next_source(&pk);
                return Turn { lag, appended: 0 };
            }
        };
        let n = entries.len() as u64;
        match self.meta.write(MetaCommand::AppendGlobal { pk, entries }).await {
            Ok(r) if r.error_code == 0 => Turn {
                lag: lag.saturating_sub(n),
                appended: n,
            },
            Ok(r) => {
                debug!(?pk, error = ?r.message, "global-ledger append refused (the head moved)");
                Turn { lag, appended: 0 }
            }
            Err(e) => {
                debug!(?pk, error = %e, "global-ledger append not ordered");
                Turn { lag, appended: 0 }
            }
        }
    }

    /// This node when it is a member; otherwise the member the cursor
    /// names, skipping ones that are unreachable now.
    fn source(&self, pk: &PartitionKey, members: &[NodeId]) -> NodeId {
        if members.contains(&self.me) || members.is_empty() {
            return self.me;
        }
        let start = *self
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(*pk)
            .or_insert_with(|| pk.partition.unsigned_abs() as usize);
        (0..members.len())
            .map(|i| members[(start + i) % members.len()])
            .find(|m| u8::try_from(*m).is_ok_and(|n| self.forward.is_up(n)))
            .unwrap_or(members[start % members.len()])
    }

    fn next_source(&self, pk: &PartitionKey) {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let c = cursor.entry(*pk).or_insert(0);
        *c = c.wrapping_add(1);
    }

    async fn read(&self, source: NodeId, pk: PartitionKey, from: u64) -> Option<ServedBlocks> {
        if source == self.me {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || served_blocks(&store, &pk, from, READ_BYTES))
                .await
                .ok()?
                .map_err(|e| warn!(?pk, error = %e, "cannot read this node's blocks for the global ledger"))
                .ok();
        }
        self.forward
            .blocks(u8::try_from(source).ok()?, pk, from, READ_BYTES)
            .await
    }

    /// Looks after this node's own rows until shutdown: repairs what is
    /// listed damaged, and scrubs every row at `mb_per_second` (0: never)
    /// every `interval`.
    pub async fn run_rows(self: Arc<Self>, mb_per_second: u64, interval: Duration, mut stop: ShutdownSignal) {
        let mut attempts: HashMap<(PartitionKey, u64), usize> = HashMap::new();
        let mut next_scrub = (mb_per_second > 0).then(|| tokio::time::Instant::now() + interval.min(ROW_SCRUB_FIRST));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ROWS_POLL) => {}
                _ = stop.wait() => return,
            }
            let Some(ledger) = self.meta.global() else { return };
            if next_scrub.is_some_and(|at| tokio::time::Instant::now() >= at) {
                self.scrub_rows(&ledger, mb_per_second).await;
                next_scrub = Some(tokio::time::Instant::now() + interval);
            }
            let damaged = ledger.damaged();
            attempts.retain(|k, _| damaged.iter().any(|(pk, h, _)| (*pk, *h) == *k));
            let state = self.meta.state();
            // From the top down: a row's expected hash is what the row above links to.
            let mut order = damaged.clone();
            order.sort_by_key(|d| (d.0, std::cmp::Reverse(d.1)));
            for (pk, height, reason) in order {
                let tries = attempts.entry((pk, height)).or_insert(0);
                if *tries == 0 {
                    metrics::counter!("courier_global_ledger_damage_found_total").increment(1);
                }
                *tries += 1;
                let tries = *tries;
                if self.repair_row(&ledger, &state, pk, height, &reason, tries).await {
                    attempts.remove(&(pk, height));
                }
            }
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.rows.damaged = damaged
                .iter()
                .map(|(pk, height, reason)| damaged_row(&state, pk, *height, reason))
                .collect();
        }
    }

    /// One try at repairing a row, from the `tries`-th source in turn;
    /// whether it is repaired.
    async fn repair_row(
        &self,
        ledger: &GlobalLedger,
        state: &Arc<MetaState>,
        pk: PartitionKey,
        height: u64,
        reason: &str,
        tries: usize,
    ) -> bool {
        let Some(head) = state.global.get(&pk) else {
            return false;
        };
        let Some(keys) = ClusterKeys::of(state, head.cluster) else {
            return false;
        };
        // This node's own copy first when it is a member, then the others.
        let mut sources: Vec<NodeId> = keys.nodes.iter().copied().filter(|n| *n == self.me).collect();
        sources.extend(keys.nodes.iter().copied().filter(|n| *n != self.me));
        let Some(&source) = sources.get((tries - 1) % sources.len().max(1)) else {
            return false;
        };
        let Some(served) = self.read_blocks(source, pk, height, ROW_REPAIR_BYTES).await else {
            return false;
        };
        let (ledger, state2) = (ledger.clone(), state.clone());
        let repaired = tokio::task::spawn_blocking(move || ledger.repair(&state2, &pk, height, &served.blocks)).await;
        let row = damaged_row(state, &pk, height, reason);
        match repaired {
            Ok(Ok(())) => {
                tracing::info!(
                    topic = row.topic,
                    partition = pk.partition,
                    height,
                    what = reason,
                    from = source,
                    "global ledger row repaired"
                );
                metrics::counter!("courier_global_ledger_repairs_total").increment(1);
                self.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rows
                    .repaired_total += 1;
                true
            }
            Ok(Err(e)) => {
                debug!(topic = row.topic, partition = pk.partition, height, from = source, error = %e, "global row repair: not from this source");
                false
            }
            Err(_) => false,
        }
    }

    /// Certified blocks from `height` on, from this node's ledger or a peer's.
    async fn read_blocks(&self, source: NodeId, pk: PartitionKey, height: u64, bytes: u32) -> Option<ServedBlocks> {
        if source == self.me {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || served_blocks(&store, &pk, height, bytes))
                .await
                .ok()?
                .ok();
        }
        let peer = u8::try_from(source).ok()?;
        if !self.forward.is_up(peer) {
            return None;
        }
        self.forward.blocks(peer, pk, height, bytes).await
    }

    /// One scrub pass over every partition's rows, at the rate.
    async fn scrub_rows(&self, ledger: &GlobalLedger, mb_per_second: u64) {
        let state = self.meta.state();
        let bytes_per_second = mb_per_second.saturating_mul(1_000_000) as f64;
        let (ledger, st) = (ledger.clone(), state.clone());
        let status = self.status_handle();
        let found = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (mut bytes, mut rows) = (0u64, 0u64);
            let mut found = Vec::new();
            for pk in st.global.keys() {
                let walked = ledger.scrub_partition(&st, pk, |b| {
                    bytes += b;
                    rows += 1;
                    status.lock().unwrap_or_else(|e| e.into_inner()).rows.scrub_rows_checked = rows;
                    let due = Duration::from_secs_f64(bytes as f64 / bytes_per_second);
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                    true
                });
                match walked {
                    Ok(f) => found.extend(f.into_iter().map(|(h, r)| (*pk, h, r))),
                    Err(e) => warn!(partition = pk.partition, error = %e, "global row scrub: cannot read the rows"),
                }
            }
            found
        })
        .await
        .unwrap_or_default();
        for (pk, height, reason) in &found {
            let row = damaged_row(&state, pk, *height, reason);
            warn!(topic = row.topic, partition = pk.partition, height, %reason, "global row scrub: a row fails its checks");
        }
        metrics::counter!("courier_global_ledger_scrub_passes_total").increment(1);
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.rows.scrub_passes += 1;
        s.rows.scrub_findings = found
            .iter()
            .take(REJECTIONS_KEPT)
            .map(|(pk, h, r)| damaged_row(&state, pk, *h, r))
            .collect();
    }

    fn reject(&self, state: &MetaState, node: NodeId, pk: &PartitionKey, e: SegmentError) {
        let topic = state
            .topic_by_id(&pk.topic_id)
            .map_or_else(String::new, |t| t.record.name.clone());
        warn!(
            node,
            topic,
            partition = pk.partition,
            height = e.height,
            fault = %e.fault,
            "global ledger: refused blocks offered by a member of the partition's cluster"
        );
        metrics::counter!("courier_global_ledger_rejected_total", "fault" => e.fault.kind()).increment(1);
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.rejected_total += 1;
        if s.rejections.len() >= REJECTIONS_KEPT {
            s.rejections.pop_front();
        }
        s.rejections.push_back(Rejection {
            node,
            topic,
            partition: pk.partition,
            height: e.height,
            kind: e.fault.kind(),
            fault: e.fault.to_string(),
            at_ms,
        });
    }
}

/// A damaged row as `/global` lists it.
fn damaged_row(state: &MetaState, pk: &PartitionKey, height: u64, reason: &str) -> DamagedRow {
    DamagedRow {
        topic: state
            .topic_by_id(&pk.topic_id)
            .map_or_else(String::new, |t| t.record.name.clone()),
        partition: pk.partition,
        height,
        reason: reason.to_owned(),
    }
}
