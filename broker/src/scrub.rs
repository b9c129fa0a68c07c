//! The scrubber: a background pass over every stored block, at a bounded
//! rate, with the checks `courier ledger verify` makes (the same
//! [`ChainWalk`]): canonical encoding and batch digest, hash links,
//! offsets, Kafka batches, and certificates against the cluster keys the
//! node recorded.
//!
//! Reads catch what the disk changed (see the ledger store's verified
//! reads), but only for blocks someone reads; the scrubber reads the rest,
//! and checks what a read does not (a full SHA-256 of the batches, the
//! links, the certificates). A block that fails is listed as damaged,
//! which hands it to the repair task; the pass goes on past it. Progress
//! and findings are on the admin endpoint (`/ledger/scrub`) and in metrics.
//!
//! The rate (`ledger.scrub.mb.per.second`) counts block bytes read; the
//! pass sleeps whenever it is ahead of it, so it takes no more than that
//! share of the disk and of a core (SHA-256 runs at about 2 GB/s here:
//! 8 MB/s is well under 1% of a core). The first pass starts a minute
//! after start-up (sooner when `ledger.scrub.interval.ms` is shorter), each
//! next one that interval after the previous one ended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_consensus::ledger::{ChainWalk, DamageKind, LedgerStore, PartitionKey, StoreError, VerifyOptions};
use tracing::{info, warn};

use crate::verify::{partition_cluster, recorded_members, topic_name};

/// Findings kept for the admin endpoint.
const FINDINGS_KEPT: usize = 64;
/// The first pass starts this long after start-up (or after the interval,
/// when that is shorter).
const FIRST_PASS_DELAY: Duration = Duration::from_secs(60);
/// Longest single sleep, so that a stop is noticed.
const NAP: Duration = Duration::from_millis(200);

/// One block a pass found failing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub topic: String,
    pub partition: i32,
    pub height: u64,
    pub kind: &'static str,
    pub reason: String,
    pub at_ms: u64,
}

/// A finished pass.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PassSummary {
    pub blocks: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub damaged: u64,
}

/// What the admin endpoint shows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScrubStatus {
    pub enabled: bool,
    pub mb_per_second: u64,
    pub interval_ms: u64,
    /// Whether a pass is running now.
    pub running: bool,
    pub passes_completed: u64,
    /// The pass now running (or the last one): blocks and bytes checked so
    /// far, of how many blocks there were when it started.
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    pub blocks_total: u64,
    pub last_pass: Option<PassSummary>,
    /// The newest findings, oldest first.
    pub findings: VecDeque<Finding>,
}

pub struct Scrubber {
    store: Arc<LedgerStore>,
    bytes_per_second: u64,
    interval: Duration,
    status: Arc<Mutex<ScrubStatus>>,
    stop: Arc<AtomicBool>,
}

impl Scrubber {
    pub fn new(store: Arc<LedgerStore>, mb_per_second: u64, interval_ms: u64) -> Self {
        let status = ScrubStatus {
            enabled: mb_per_second > 0,
            mb_per_second,
            interval_ms,
            ..Default::default()
        };
        Self {
            store,
            bytes_per_second: mb_per_second.saturating_mul(1_000_000),
            interval: Duration::from_millis(interval_ms),
            status: Arc::new(Mutex::new(status)),
            stop: Arc::default(),
        }
    }

    pub fn status(&self) -> Arc<Mutex<ScrubStatus>> {
        self.status.clone()
    }

    /// The flag that ends the scrubber's thread.
    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Runs passes until stopped (on its own thread).
    pub fn run(self) {
        if self.bytes_per_second == 0 {
            return;
        }
        // Not while the node is still starting (recovering, catching up).
        if !self.nap(self.interval.min(FIRST_PASS_DELAY)) {
            return;
        }
        loop {
            match self.pass() {
                Ok(Some(summary)) => {
                    info!(
                        blocks = summary.blocks,
                        bytes = summary.bytes,
                        seconds = summary.seconds,
                        damaged = summary.damaged,
                        "scrub pass complete"
                    );
                    metrics::counter!("courier_scrub_passes_total").increment(1);
                    let mut s = self.lock();
                    s.running = false;
                    s.passes_completed += 1;
                    s.last_pass = Some(summary);
                }
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "scrub pass stopped by a ledger error; the next starts after the interval");
                    self.lock().running = false;
                }
            }
            if !self.nap(self.interval) {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScrubStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps `d` in short naps; false when stopped meanwhile.
    fn nap(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(NAP));
        }
    }

    /// One pass over every partition; `None` when stopped.
    fn pass(&self) -> Result<Option<PassSummary>, StoreError> {
        let started = Instant::now();
        let partitions = self.store.partitions()?;
        let topics = self.store.topics()?;
        let members = recorded_members(&self.store)?;
        {
            let mut s = self.lock();
            s.running = true;
            s.blocks_checked = 0;
            s.bytes_checked = 0;
            s.blocks_total = partitions.iter().map(|(_, p)| p.next_height).sum();
        }
        let mut summary = PassSummary::default();
        for (pk, state) in partitions {
            let cluster = match partition_cluster(&self.store, &pk, members.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    warn!(partition = pk.partition, error = %e, "scrub: cannot tell the partition's cluster; skipped");
                    continue;
                }
            };
            let options = VerifyOptions {
                kafka_batches: true,
                certs: cluster.as_ref().map(|c| c.check(&pk)),
            };
            let certs = self.store.certs_from(&pk, 0)?;
            let mut walk = ChainWalk::new(pk, &options, certs.keys().next_back().copied());
            for height in 0..state.next_height {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let (bytes, failed) = match self.store.block(&pk, height) {
                    Ok(Some(raw)) => {
                        let failed = walk.check(height, &raw, certs.get(&height)).err();
                        if let Some(reason) = &failed {
                            self.store.mark_damaged(&pk, height, DamageKind::Chain, reason.clone());
                        }
                        (raw.len() as u64, failed.map(|r| (DamageKind::Chain, r)))
                    }
                    // Gone meanwhile (its topic deleted): the partition is done.
                    Ok(None) => break,
                    // Listed as damaged by the read itself.
                    Err(StoreError::Damaged(d)) => (0, Some((d.kind, d.detail))),
                    Err(e) => return Err(e),
                };
                if let Some((kind, reason)) = failed {
                    summary.damaged += 1;
                    metrics::counter!("courier_scrub_damage_found_total", "what" => kind.as_str()).increment(1);
                    self.record(&topics, &pk, height, kind, reason);
                    // Go on from what the next block links to.
                    match self.store.block_head(&pk, height + 1) {
                        Ok(Some((next, _))) => walk.resync(next.prev_hash, next.base_offset),
                        _ => break,
                    }
                }
                summary.blocks += 1;
                summary.bytes += bytes;
                metrics::counter!("courier_scrub_blocks_total").increment(1);
                metrics::counter!("courier_scrub_bytes_total").increment(bytes);
                {
                    let mut s = self.lock();
                    s.blocks_checked = summary.blocks;
                    s.bytes_checked = summary.bytes;
                }
                // Ahead of the rate: wait until it catches up.
                let due = Duration::from_secs_f64(summary.bytes as f64 / self.bytes_per_second as f64);
                if !self.nap(due.saturating_sub(started.elapsed())) {
                    return Ok(None);
                }
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(Some(summary))
    }

    fn record(
        &self,
        topics: &[courier_consensus::catalog::TopicRecord],
        pk: &PartitionKey,
        height: u64,
        kind: DamageKind,
        reason: String,
    ) {
        let topic = topic_name(topics, pk);
        warn!(topic, partition = pk.partition, height, what = kind.as_str(), %reason, "scrub: a stored block fails its checks");
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut s = self.lock();
        if s.findings.len() >= FINDINGS_KEPT {
            s.findings.pop_front();
        }
        s.findings.push_back(Finding {
            topic,
            partition: pk.partition,
            height,
            kind: kind.as_str(),
            reason,
            at_ms,
        });
    }
}
