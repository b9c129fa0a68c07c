//! Repair from peers: a block this node's ledger holds damaged (found on a
//! read, see `LedgerStore::damaged`) is fetched again from the other
//! members of its partition's cluster and rewritten once proven.
//!
//! The task asks one peer at a time, taking turns, for the certified blocks
//! from the damaged height on; the executor (the ledger's one writer)
//! checks them against a certificate and the hash chain and rewrites the
//! block (see `Executor::repair`). A peer that is down, behind, or serves
//! something that does not prove out is simply followed by the next. Only
//! certified blocks can be repaired: a damaged block above the last
//! certificate waits for it.

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use courier_consensus::ledger::{LedgerStore, PartitionKey};
use tracing::{debug, warn};

use super::executor::Job;
use super::forward::Forwarder;
use crate::shutdown::ShutdownSignal;
use crate::topics::Topics;

/// How often the damaged list is looked at.
const POLL: Duration = Duration::from_millis(200);
/// Bytes of blocks asked of a peer at once: the damaged block and those
/// above it up to a certificate.
const READ_BYTES: u32 = 8 << 20;

pub struct RepairTask {
    pub me: u8,
    pub store: Arc<LedgerStore>,
    pub topics: Arc<Topics>,
    pub forward: Arc<Forwarder>,
    pub executor: SyncSender<Job>,
}

impl RepairTask {
    pub async fn run(self, mut stop: ShutdownSignal) {
        // Attempts per damaged block, so that each try asks the next peer.
        let mut attempts: BTreeMap<(PartitionKey, u64), usize> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait() => return,
            }
            let damaged = self.store.damaged();
            attempts.retain(|k, _| damaged.iter().any(|d| (d.pk, d.height) == *k));
            for d in damaged {
                let tries = attempts.entry((d.pk, d.height)).or_insert(0);
                if *tries == 0 {
                    metrics::counter!("courier_ledger_damage_found_total", "what" => d.kind.as_str()).increment(1);
                }
                let Some(route) = self.topics.route(&d.pk) else {
                    // A single node: there is no other copy to repair from.
                    continue;
                };
                let peers: Vec<u8> = route
                    .replicas
                    .iter()
                    .filter_map(|r| u8::try_from(*r).ok())
                    .filter(|r| *r != self.me)
                    .collect();
                if peers.is_empty() {
                    continue;
                }
                let peer = peers[*tries % peers.len()];
                *tries += 1;
                if !self.forward.is_up(peer) {
                    continue;
                }
                let Some(served) = self.forward.blocks(peer, d.pk, d.height, READ_BYTES).await else {
                    debug!(peer, height = d.height, "repair: no answer from the peer");
                    continue;
                };
                if served.blocks.is_empty() {
                    debug!(
                        peer,
                        height = d.height,
                        certified_end = served.certified_end,
                        "repair: the peer has no certified copy yet"
                    );
                    continue;
                }
                let job = Job::Repair {
                    pk: d.pk,
                    height: d.height,
                    blocks: served.blocks,
                };
                if self.executor.try_send(job).is_err() {
                    warn!("repair: the executor is busy or stopped; trying again");
                }
            }
        }
    }
}
