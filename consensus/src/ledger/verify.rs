//! Re-walking a partition's chain from the store, trusting nothing in it.
//!
//! For each block: it decodes canonically, names this partition and its
//! height, links to the hash of the block before it, starts where that block
//! ended, and holds v2 batches whose CRCs match, whose offsets are contiguous
//! and which add up to the block's record range. The partition's recorded
//! state must match the walked chain's end.

use courier_protocol::records::{validate_batch, BatchHeader, RecordLimits};

use super::block::{Block, BlockHash, PartitionKey};
use super::store::{LedgerStore, StoreError};

/// What a sound partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub blocks: u64,
    pub records: i64,
    pub receipts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partition {partition} block {height}: {reason}")]
    BadBlock {
        partition: i32,
        height: u64,
        reason: String,
    },
}

/// Verifies one partition; `progress` is called with each verified height.
pub fn verify_partition(
    store: &LedgerStore,
    pk: &PartitionKey,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let state = store.partition_state(pk)?;
    let limits = RecordLimits {
        batch_bytes_max: usize::MAX,
        decompressed_bytes_max: 1 << 30,
    };
    let mut prev = BlockHash::ZERO;
    let mut next_offset = 0i64;
    let mut report = VerifyReport {
        blocks: 0,
        records: 0,
        receipts: 0,
    };
    for height in 0..state.next_height {
        let bad = |reason: String| VerifyError::BadBlock {
            partition: pk.partition,
            height,
            reason,
        };
        let raw = store.block(pk, height)?.ok_or_else(|| bad("missing".into()))?;
        let block = Block::decode(&raw).map_err(|e| bad(format!("not a canonical block: {e}")))?;
        if block.partition != *pk || block.height != height {
            return Err(bad(format!(
                "claims to be {:?} height {}",
                block.partition, block.height
            )));
        }
        if block.prev_hash != prev {
            return Err(bad(format!(
                "links to {:?}, previous block hashes to {:?}",
                block.prev_hash, prev
            )));
        }
        if block.base_offset != next_offset {
            return Err(bad(format!(
                "starts at offset {}, previous block ended at {next_offset}",
                block.base_offset
            )));
        }
        let mut at = 0;
        let mut expected = block.base_offset;
        while at < block.batches.len() {
            let header = BatchHeader::parse(&block.batches[at..]).map_err(|e| bad(format!("batch: {e}")))?;
            let end = at
                .checked_add(header.total_bytes())
                .filter(|&e| e <= block.batches.len() && header.batch_length > 0);
            let end = end.ok_or_else(|| bad(format!("batch at byte {at} overruns the block")))?;
            validate_batch(&block.batches[at..end], &limits)
                .map_err(|e| bad(format!("batch at offset {}: {e}", header.base_offset)))?;
            if header.base_offset != expected {
                return Err(bad(format!(
                    "batch at offset {} where {expected} was due",
                    header.base_offset
                )));
            }
            expected = header.last_offset() + 1;
            at = end;
        }
        if expected != block.next_offset {
            return Err(bad(format!(
                "records end at {expected}, block says {}",
                block.next_offset
            )));
        }
        report.records += block.next_offset - block.base_offset;
        report.receipts += block.receipts.len() as u64;
        report.blocks += 1;
        next_offset = block.next_offset;
        prev = BlockHash::of(&raw);
        progress(height);
    }
    if prev != state.last_hash || next_offset != state.next_offset {
        return Err(VerifyError::BadBlock {
            partition: pk.partition,
            height: state.next_height,
            reason: "partition state does not match the end of the chain".into(),
        });
    }
    Ok(report)
}
