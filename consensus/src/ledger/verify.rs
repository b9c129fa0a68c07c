//! Re-walking a partition's chain from the store, trusting nothing in it.
//!
//! For each block: it decodes canonically, names this partition and its
//! height, links to the hash of the block before it, starts where that block
//! ended, and holds v2 batches whose CRCs match, whose offsets are contiguous
//! and which add up to the block's record range. The partition's recorded
//! state must match the walked chain's end.
//!
//! For a ledger ordered by a replica cluster, every stored quorum
//! certificate must name its block's height and hash and carry 2f + 1 valid
//! signatures of the cluster's members. A certificate covers its block and,
//! through the hash chain, every block below it; blocks after the last one
//! (written, not yet certified when the node stopped) are counted apart.

use courier_protocol::records::{split_batches, validate_batch, BatchHeader, RecordLimits};

use bytes::Bytes;

use super::block::{Block, BlockHash, PartitionKey};
use super::store::{LedgerStore, StoreError};
use crate::pbft::wire::decode_cert;

/// What a sound partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub blocks: u64,
    pub records: i64,
    pub receipts: u64,
    /// Blocks with a certificate of their own.
    pub certified: u64,
    /// Blocks after the last certificate (none covers them yet).
    pub uncertified_tail: u64,
}

/// Whose signatures a partition's certificates must carry.
pub struct CertCheck<'a> {
    /// The id the partition's cluster signs under (`pbft::instance_id`).
    pub instance: u64,
    pub members: &'a [Bytes],
    pub quorum: usize,
}

/// What to check besides the chain.
pub struct VerifyOptions<'a> {
    /// The blocks hold Kafka record batches (not so for the metadata ledger,
    /// whose blocks hold topic commands).
    pub kafka_batches: bool,
    /// Check certificates against these members; `None` for a ledger of a
    /// single replica (which has none).
    pub certs: Option<CertCheck<'a>>,
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

/// Verifies one single-replica partition; `progress` is called with each
/// verified height.
pub fn verify_partition(
    store: &LedgerStore,
    pk: &PartitionKey,
    progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let options = VerifyOptions {
        kafka_batches: true,
        certs: None,
    };
    verify_ledger(store, pk, &options, progress)
}

/// Verifies one ledger as `options` say.
pub fn verify_ledger(
    store: &LedgerStore,
    pk: &PartitionKey,
    options: &VerifyOptions<'_>,
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
        certified: 0,
        uncertified_tail: 0,
    };
    let certs = store.certs_from(pk, 0)?;
    if options.certs.is_none() && !certs.is_empty() {
        return Err(VerifyError::BadBlock {
            partition: pk.partition,
            height: certs.keys().next().copied().unwrap_or(0),
            reason: "holds certificates but no member keys were given to check them".into(),
        });
    }
    let last_certified = certs.keys().next_back().copied();
    for height in 0..state.next_height {
        let bad = |reason: String| VerifyError::BadBlock {
            partition: pk.partition,
            height,
            reason,
        };
        let raw = match store.block(pk, height) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(bad("missing".into())),
            Err(StoreError::Damaged(d)) => return Err(bad(format!("damaged ({}): {}", d.kind.as_str(), d.detail))),
            Err(e) => return Err(e.into()),
        };
        let (block, hash) = Block::decode_hashed(&raw).map_err(|e| bad(format!("not a canonical block: {e}")))?;
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
        let mut expected = block.base_offset;
        if !options.kafka_batches {
            expected = block.next_offset;
        }
        let batches: &[u8] = if options.kafka_batches { &block.batches } else { &[] };
        for batch in split_batches(batches) {
            let batch = batch.map_err(|e| bad(format!("batches overrun the block: {e}")))?;
            let header = BatchHeader::parse(batch).map_err(|e| bad(format!("batch: {e}")))?;
            validate_batch(batch, &limits).map_err(|e| bad(format!("batch at offset {}: {e}", header.base_offset)))?;
            if header.base_offset != expected {
                return Err(bad(format!(
                    "batch at offset {} where {expected} was due",
                    header.base_offset
                )));
            }
            expected = header.last_offset() + 1;
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
        prev = hash;
        if let (Some(check), Some(cert)) = (&options.certs, certs.get(&height)) {
            let cert = decode_cert(cert.clone()).map_err(|e| bad(format!("certificate does not decode: {e}")))?;
            if cert.seq != height + 1 || cert.state != prev.0 {
                return Err(bad(format!(
                    "certificate names sequence {} and another hash, not this block",
                    cert.seq
                )));
            }
            cert.verify(check.instance, check.members, check.quorum)
                .map_err(|e| bad(format!("certificate: {e}")))?;
            report.certified += 1;
        }
        if last_certified.is_none_or(|last| height > last) {
            report.uncertified_tail += 1;
        }
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
