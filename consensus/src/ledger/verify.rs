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
    let certs = store.certs_from(pk, 0)?;
    if options.certs.is_none() && !certs.is_empty() {
        return Err(VerifyError::BadBlock {
            partition: pk.partition,
            height: certs.keys().next().copied().unwrap_or(0),
            reason: "holds certificates but no member keys were given to check them".into(),
        });
    }
    let mut walk = ChainWalk::new(*pk, options, certs.keys().next_back().copied());
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
        walk.check(height, &raw, certs.get(&height)).map_err(bad)?;
        progress(height);
    }
    walk.finish(&state).map_err(|reason| VerifyError::BadBlock {
        partition: pk.partition,
        height: state.next_height,
        reason,
    })
}

/// A partition's chain checked one block at a time, in height order: what
/// [`verify_ledger`] and a running node's scrubber both do.
pub struct ChainWalk<'a> {
    pk: PartitionKey,
    options: &'a VerifyOptions<'a>,
    limits: RecordLimits,
    prev: BlockHash,
    next_offset: i64,
    last_certified: Option<u64>,
    report: VerifyReport,
}

impl<'a> ChainWalk<'a> {
    /// A walk from height 0; `last_certified` is the height of the
    /// partition's newest certificate.
    pub fn new(pk: PartitionKey, options: &'a VerifyOptions<'a>, last_certified: Option<u64>) -> Self {
        Self {
            pk,
            options,
            limits: RecordLimits {
                batch_bytes_max: usize::MAX,
                decompressed_bytes_max: 1 << 30,
            },
            prev: BlockHash::ZERO,
            next_offset: 0,
            last_certified,
            report: VerifyReport {
                blocks: 0,
                records: 0,
                receipts: 0,
                certified: 0,
                uncertified_tail: 0,
            },
        }
    }

    /// What has been checked so far.
    pub fn report(&self) -> VerifyReport {
        self.report
    }

    /// Goes on past a block that failed, as if it had ended with `hash` at
    /// `next_offset` (what the block after it links to and starts at).
    pub fn resync(&mut self, hash: BlockHash, next_offset: i64) {
        self.prev = hash;
        self.next_offset = next_offset;
    }

    /// Checks the block at `height` (its canonical bytes, `raw`) and its
    /// certificate if it has one: it decodes canonically (its batches match
    /// the digest in its head), names this partition and height, links to
    /// the block before and starts where it ended, holds valid v2 batches
    /// with contiguous offsets that add up to its record range, and its
    /// certificate names it and carries 2f + 1 valid signatures. Returns
    /// why not.
    pub fn check(&mut self, height: u64, raw: &Bytes, cert: Option<&Bytes>) -> Result<(), String> {
        let (block, hash) = Block::decode_hashed(raw).map_err(|e| format!("not a canonical block: {e}"))?;
        if block.partition != self.pk || block.height != height {
            return Err(format!("claims to be {:?} height {}", block.partition, block.height));
        }
        if block.prev_hash != self.prev {
            return Err(format!(
                "links to {:?}, previous block hashes to {:?}",
                block.prev_hash, self.prev
            ));
        }
        if block.base_offset != self.next_offset {
            return Err(format!(
                "starts at offset {}, previous block ended at {}",
                block.base_offset, self.next_offset
            ));
        }
        let mut expected = block.base_offset;
        if !self.options.kafka_batches {
            expected = block.next_offset;
        }
        let batches: &[u8] = if self.options.kafka_batches {
            &block.batches
        } else {
            &[]
        };
        for batch in split_batches(batches) {
            let batch = batch.map_err(|e| format!("batches overrun the block: {e}"))?;
            let header = BatchHeader::parse(batch).map_err(|e| format!("batch: {e}"))?;
            validate_batch(batch, &self.limits).map_err(|e| format!("batch at offset {}: {e}", header.base_offset))?;
            if header.base_offset != expected {
                return Err(format!(
                    "batch at offset {} where {expected} was due",
                    header.base_offset
                ));
            }
            expected = header.last_offset() + 1;
        }
        if expected != block.next_offset {
            return Err(format!("records end at {expected}, block says {}", block.next_offset));
        }
        if let (Some(check), Some(cert)) = (&self.options.certs, cert) {
            let cert = decode_cert(cert.clone()).map_err(|e| format!("certificate does not decode: {e}"))?;
            if cert.seq != height + 1 || cert.state != hash.0 {
                return Err(format!(
                    "certificate names sequence {} and another hash, not this block",
                    cert.seq
                ));
            }
            cert.verify(check.instance, check.members, check.quorum)
                .map_err(|e| format!("certificate: {e}"))?;
            self.report.certified += 1;
        }
        self.report.records += block.next_offset - block.base_offset;
        self.report.receipts += block.receipts.len() as u64;
        self.report.blocks += 1;
        if self.last_certified.is_none_or(|last| height > last) {
            self.report.uncertified_tail += 1;
        }
        self.next_offset = block.next_offset;
        self.prev = hash;
        Ok(())
    }

    /// Checks that the partition's recorded state is the end of the walked
    /// chain, and returns the report.
    pub fn finish(self, state: &super::store::PartitionState) -> Result<VerifyReport, String> {
        if self.prev != state.last_hash || self.next_offset != state.next_offset {
            return Err("partition state does not match the end of the chain".into());
        }
        Ok(self.report)
    }
}
