//! The global ledger: the verified union of every partition ledger.
//!
//! The Raft leader's global-ledger task reads each partition's certified
//! blocks from a member of the partition's cluster, checks them with
//! [`verify_segment`] and orders them as [`MetaCommand::AppendGlobal`]
//! (`super::MetaCommand`). The Raft state keeps each partition's head in
//! memory ([`GlobalHead`]); the entries themselves (block head, quorum
//! certificate, per-message metadata) are rows in redb tables beside the Raft
//! log, written as entries are applied, so a node's memory does not grow with
//! the ledger.
//!
//! An entry keeps a block's head, not its payload. The head holds the
//! batches' SHA-256 and the block hash is the head's, so hash links and
//! certificates check from the global ledger alone, and the message
//! metadata checks against any partition ledger that holds the batches.
//!
//! Rows are keyed so that what a reader needs is one range scan:
//!
//! ```text
//! global_blocks     pk [20] | height u64                  -> entry (postcard)
//! global_by_offset  pk [20] | next_offset i64 | height u64 -> height
//! global_by_key     pk [20] | key_sha256 [32] | offset i64 -> height
//! global_receipts   pk [20] | height u64                  -> receipt count
//! ```
//!
//! Applying an entry twice writes the same rows (a node re-applies its log
//! after a restart), and rows past a partition's head are ignored by
//! readers, so the tables may run ahead of the state they belong to.
//!
//! An entry's row ends with a CRC-32C of its encoding (after the marker
//! `c1`; rows written before it have neither and are read as they are),
//! checked on every read: a row the disk changed is reported as damaged
//! (`GlobalReadError::Corrupt`, which names the partition and height),
//! never served, and listed for repair ([`GlobalLedger::damaged`]). An
//! index row that points at a block without the record it indexes is
//! damage of that block's rows too. Repair ([`GlobalLedger::repair`])
//! rewrites the rows from the block as a member of the partition's cluster
//! holds it, accepted only if its hash is the one the chain above it (or
//! the Raft state's head) names.

use std::collections::BTreeMap;

use bytes::Bytes;
use std::sync::Arc;

use redb::{ReadableDatabase, TableDefinition};
use ring::digest;
use serde::{Deserialize, Serialize};

use courier_protocol::records::{split_batches, validate_batch_records, RecordLimits};

use super::state_machine::{MetaState, NodeId};
use crate::ledger::{Block, BlockHash, Head, PartitionKey, Receipt, SealedBlock};
use crate::pbft;
use crate::pbft::wire::decode_cert;

pub(crate) const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("global_blocks");
const BY_OFFSET: TableDefinition<&[u8], u64> = TableDefinition::new("global_by_offset");
const BY_KEY: TableDefinition<&[u8], u64> = TableDefinition::new("global_by_key");
const RECEIPTS: TableDefinition<&[u8], u32> = TableDefinition::new("global_receipts");

/// Largest decompressed batch the global-ledger task reads for metadata.
const DECOMPRESSED_MAX: usize = 256 << 20;

/// One record of a block, as the global ledger describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub offset: i64,
    pub timestamp: i64,
    /// SHA-256 of the key; `None` for a record without one.
    pub key_hash: Option<[u8; 32]>,
    /// SHA-256 of the value; `None` for a null value (a tombstone).
    pub value_hash: Option<[u8; 32]>,
    /// The value's length in bytes.
    pub size: u32,
    /// The Kafka producer id of its batch (-1 when not idempotent).
    pub producer_id: i64,
    /// The node that submitted it to the partition's cluster: the sending
    /// organization's node.
    pub origin: Option<NodeId>,
}

/// One block of a partition, as the global ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEntry {
    /// The block's canonical head ([`Block::encode_head`]).
    pub head: Vec<u8>,
    /// Its quorum certificate, when it has one of its own (a block without
    /// one is covered by a later block's, through the hash chain).
    pub cert: Option<Vec<u8>>,
    /// One per record, in offset order.
    pub messages: Vec<MessageMeta>,
}

/// Where a partition's global chain ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalHead {
    /// The cluster that ordered it.
    pub cluster: u32,
    /// Blocks held: the next height to append.
    pub next_height: u64,
    pub last_hash: [u8; 32],
    pub next_offset: i64,
    /// The height of the last block with a certificate of its own.
    pub certified_height: Option<u64>,
    pub messages: u64,
    pub receipts: u64,
}

impl GlobalHead {
    pub fn genesis(cluster: u32) -> Self {
        Self {
            cluster,
            next_height: 0,
            last_hash: [0; 32],
            next_offset: 0,
            certified_height: None,
            messages: 0,
            receipts: 0,
        }
    }
}

/// Why an entry does not extend a partition's global chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("height {height}: {fault}")]
pub struct SegmentError {
    pub height: u64,
    pub fault: Fault,
}

/// What was wrong with a block offered to the global ledger.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("not a canonical block: {0}")]
    Decode(String),
    #[error("names another partition or height")]
    WrongPlace,
    #[error("does not link to the previous block's hash")]
    BrokenLink,
    #[error("starts at offset {got}, the previous block ended at {want}")]
    OffsetGap { got: i64, want: i64 },
    #[error("record batches: {0}")]
    Batches(String),
    #[error("message metadata does not match the block")]
    Messages,
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("no certificate covers the blocks")]
    Uncertified,
    #[error("the chain does not end where the Raft state's head says")]
    HeadMismatch,
}

impl Fault {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Decode(_) => "decode",
            Fault::WrongPlace => "wrong_place",
            Fault::BrokenLink => "broken_link",
            Fault::OffsetGap { .. } => "offset_gap",
            Fault::Batches(_) => "batches",
            Fault::Messages => "messages",
            Fault::Certificate(_) => "certificate",
            Fault::Uncertified => "uncertified",
            Fault::HeadMismatch => "head_mismatch",
        }
    }
}

/// The keys a partition's certificates verify under.
pub struct ClusterKeys {
    /// Node ids, by replica index.
    pub nodes: Vec<NodeId>,
    /// Their ed25519 public keys, by replica index.
    pub keys: Vec<Bytes>,
    fingerprint: pbft::Digest,
}

impl ClusterKeys {
    /// A cluster's members and keys as the Raft state has them.
    pub fn of(state: &MetaState, cluster: u32) -> Option<Self> {
        let record = state.clusters.get(&cluster)?;
        let keys = record
            .members
            .iter()
            .map(|m| state.nodes.get(m).map(|n| Bytes::from(n.public_key.clone())))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            nodes: record.members.clone(),
            fingerprint: pbft::cluster_fingerprint(&keys),
            keys,
        })
    }

    /// The id the partition's replicas sign under.
    pub fn instance(&self, pk: &PartitionKey) -> u64 {
        pbft::instance_id(&self.fingerprint, &pk.to_bytes())
    }

    pub fn quorum(&self) -> usize {
        2 * ((self.keys.len().max(1) - 1) / 3) + 1
    }

    /// Checks a certificate for the block at `height` with hash `hash`.
    pub fn check_cert(&self, pk: &PartitionKey, height: u64, hash: &BlockHash, cert: &[u8]) -> Result<(), Fault> {
        let cert = decode_cert(Bytes::copy_from_slice(cert)).map_err(|e| Fault::Certificate(e.to_string()))?;
        if cert.seq != height + 1 || cert.state != hash.0 {
            return Err(Fault::Certificate(format!(
                "names sequence {} and another hash, not this block",
                cert.seq
            )));
        }
        cert.verify(self.instance(pk), &self.keys, self.quorum())
            .map_err(|e| Fault::Certificate(e.to_string()))
    }
}

impl GlobalEntry {
    /// Checks that this entry is the next block of `head`'s chain (hash
    /// link, height, offsets, message offsets; not signatures) and moves
    /// `head` past it. Returns the decoded head and the block's hash.
    pub fn extend(&self, pk: &PartitionKey, head: &mut GlobalHead) -> Result<(Head, BlockHash), SegmentError> {
        let at = head.next_height;
        let fail = |fault| SegmentError { height: at, fault };
        let h = Block::head_only(&self.head).map_err(|e| fail(Fault::Decode(e.to_string())))?;
        let b = &h.block;
        if b.partition != *pk || b.height != head.next_height {
            return Err(fail(Fault::WrongPlace));
        }
        if b.prev_hash.0 != head.last_hash {
            return Err(fail(Fault::BrokenLink));
        }
        if b.base_offset != head.next_offset || b.next_offset < b.base_offset {
            return Err(fail(Fault::OffsetGap {
                got: b.base_offset,
                want: head.next_offset,
            }));
        }
        let mut expected = b.base_offset;
        for m in &self.messages {
            if m.offset < expected || m.offset >= b.next_offset {
                return Err(fail(Fault::Messages));
            }
            expected = m.offset + 1;
        }
        let hash = BlockHash::of(&self.head);
        head.next_height += 1;
        head.last_hash = hash.0;
        head.next_offset = b.next_offset;
        head.messages += self.messages.len() as u64;
        head.receipts += b.receipts.len() as u64;
        if self.cert.is_some() {
            head.certified_height = Some(b.height);
        }
        Ok((h, hash))
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

/// The metadata of every record of a block; `nodes` maps the replica index
/// of a request's origin to its node.
pub fn messages_of(block: &Block, nodes: &[NodeId]) -> Result<Vec<MessageMeta>, Fault> {
    let limits = RecordLimits {
        batch_bytes_max: usize::MAX,
        decompressed_bytes_max: DECOMPRESSED_MAX,
    };
    // Which request each offset came from: produce requests in offset order.
    let mut origins: Vec<(i64, u8)> = block
        .requests
        .iter()
        .filter(|r| r.error_code == 0 && r.base_offset >= 0)
        .map(|r| (r.base_offset, r.origin))
        .collect();
    origins.sort_unstable();
    let origin_of = |offset: i64| {
        let i = origins.partition_point(|(base, _)| *base <= offset);
        i.checked_sub(1).and_then(|i| nodes.get(origins[i].1 as usize)).copied()
    };
    let mut out = Vec::new();
    for batch in split_batches(&block.batches) {
        let batch = batch.map_err(|e| Fault::Batches(e.to_string()))?;
        validate_batch_records(batch, &limits, |header, r| {
            let offset = header.base_offset + i64::from(r.offset_delta);
            out.push(MessageMeta {
                offset,
                timestamp: header.base_timestamp.saturating_add(r.timestamp_delta),
                key_hash: r.key.map(sha256),
                value_hash: r.value.map(sha256),
                size: r.value.map_or(0, |v| v.len() as u32),
                producer_id: header.producer_id,
                origin: origin_of(offset),
            });
            Ok(())
        })
        .map_err(|e| Fault::Batches(e.to_string()))?;
    }
    Ok(out)
}

/// Checks blocks a replica offered (canonical bytes, each with its
/// certificate if it has one) against the partition's global head and its
/// cluster's keys: every block decodes, extends the chain, carries sound
/// batches, and every certificate verifies. Returns the entries up to the
/// last certified block; blocks after it are left for a later round.
pub fn verify_segment(
    pk: &PartitionKey,
    head: &GlobalHead,
    blocks: &[(Bytes, Option<Bytes>)],
    keys: &ClusterKeys,
) -> Result<Vec<GlobalEntry>, SegmentError> {
    let mut at = head.clone();
    let mut out = Vec::with_capacity(blocks.len());
    let mut certified = 0;
    for (raw, cert) in blocks {
        let height = at.next_height;
        let fail = |fault| SegmentError { height, fault };
        let SealedBlock { block, head, hash } =
            Block::decode_sealed(raw).map_err(|e| fail(Fault::Decode(e.to_string())))?;
        if block.partition != *pk || block.height != height {
            return Err(fail(Fault::WrongPlace));
        }
        if let Some(cert) = cert {
            keys.check_cert(pk, height, &hash, cert).map_err(fail)?;
        }
        let messages = messages_of(&block, &keys.nodes).map_err(fail)?;
        if messages.len() as i64 != block.next_offset - block.base_offset {
            return Err(fail(Fault::Batches(format!(
                "{} records for offsets {}..{}",
                messages.len(),
                block.base_offset,
                block.next_offset
            ))));
        }
        let entry = GlobalEntry {
            head: head.to_vec(),
            cert: cert.as_ref().map(|c| c.to_vec()),
            messages,
        };
        entry.extend(pk, &mut at)?;
        out.push(entry);
        if cert.is_some() {
            certified = out.len();
        }
    }
    if certified == 0 && !out.is_empty() {
        return Err(SegmentError {
            height: head.next_height,
            fault: Fault::Uncertified,
        });
    }
    out.truncate(certified);
    Ok(out)
}

fn block_key(pk: &PartitionKey, height: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..].copy_from_slice(&height.to_be_bytes());
    k
}

/// Offsets sort as unsigned big-endian with the sign bit flipped.
fn offset_bytes(offset: i64) -> [u8; 8] {
    ((offset as u64) ^ (1 << 63)).to_be_bytes()
}

fn offset_key(pk: &PartitionKey, next_offset: i64, height: u64) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..28].copy_from_slice(&offset_bytes(next_offset));
    k[28..].copy_from_slice(&height.to_be_bytes());
    k
}

fn key_key(pk: &PartitionKey, key_hash: &[u8; 32], offset: i64) -> [u8; 60] {
    let mut k = [0u8; 60];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..52].copy_from_slice(key_hash);
    k[52..].copy_from_slice(&offset_bytes(offset));
    k
}

/// Creates the tables (once, at open).
pub(crate) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(BLOCKS)?;
    txn.open_table(BY_OFFSET)?;
    txn.open_table(BY_KEY)?;
    txn.open_table(RECEIPTS)?;
    Ok(())
}

/// Writes the rows of entries that were applied (they extended the chain).
pub(crate) fn write_rows(
    txn: &redb::WriteTransaction,
    pk: &PartitionKey,
    entries: &[GlobalEntry],
) -> Result<(), redb::Error> {
    let mut blocks = txn.open_table(BLOCKS)?;
    let mut by_offset = txn.open_table(BY_OFFSET)?;
    let mut by_key = txn.open_table(BY_KEY)?;
    let mut receipts = txn.open_table(RECEIPTS)?;
    for e in entries {
        // Applied entries decoded when they were checked; one that does not
        // now is not written (and readers stop at it).
        let Ok(h) = Block::head_only(&e.head) else { continue };
        let b = &h.block;
        let value = encode_row(e).map_err(|err| redb::Error::Corrupted(err.to_string()))?;
        blocks.insert(&block_key(pk, b.height)[..], &value[..])?;
        by_offset.insert(&offset_key(pk, b.next_offset, b.height)[..], b.height)?;
        for m in &e.messages {
            if let Some(k) = &m.key_hash {
                by_key.insert(&key_key(pk, k, m.offset)[..], b.height)?;
            }
        }
        if !b.receipts.is_empty() {
            receipts.insert(&block_key(pk, b.height)[..], b.receipts.len() as u32)?;
        }
    }
    Ok(())
}

/// What ends a row after its entry: a marker, then the CRC-32C of the
/// entry's encoding.
const ROW_CHECK_MARKER: &[u8; 2] = b"c1";

/// An entry's row: its postcard encoding, the marker and the CRC.
fn encode_row(e: &GlobalEntry) -> Result<Vec<u8>, postcard::Error> {
    let mut row = postcard::to_stdvec(e)?;
    let crc = crc32c::crc32c(&row);
    row.extend_from_slice(ROW_CHECK_MARKER);
    row.extend_from_slice(&crc.to_be_bytes());
    Ok(row)
}

/// An entry from its row, checked against the row's CRC (a row written
/// before rows had one is taken as it decodes).
fn decode_row(pk: &PartitionKey, height: u64, row: &[u8]) -> Result<GlobalEntry, GlobalReadError> {
    let corrupt = |reason: String| GlobalReadError::Corrupt {
        pk: *pk,
        height,
        reason,
    };
    let (entry, rest) = postcard::take_from_bytes::<GlobalEntry>(row).map_err(|e| corrupt(e.to_string()))?;
    match rest {
        [] => Ok(entry),
        [m0, m1, crc @ ..] if [*m0, *m1] == *ROW_CHECK_MARKER && crc.len() == 4 => {
            let encoded = &row[..row.len() - rest.len()];
            let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
            if crc32c::crc32c(encoded) == want {
                Ok(entry)
            } else {
                Err(corrupt("the row fails its CRC-32C".into()))
            }
        }
        _ => Err(corrupt(format!("{} bytes after the entry", rest.len()))),
    }
}

/// Why the global ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GlobalReadError {
    #[error("global ledger store: {0}")]
    Store(#[from] redb::Error),
    #[error("global ledger entry {height} of partition {} is damaged: {reason}", pk.partition)]
    Corrupt {
        pk: PartitionKey,
        height: u64,
        reason: String,
    },
    #[error("global ledger entry {height} of partition {partition} is missing")]
    Missing { partition: i32, height: u64 },
}

impl From<redb::TransactionError> for GlobalReadError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Store(e.into())
    }
}
impl From<redb::TableError> for GlobalReadError {
    fn from(e: redb::TableError) -> Self {
        Self::Store(e.into())
    }
}
impl From<redb::StorageError> for GlobalReadError {
    fn from(e: redb::StorageError) -> Self {
        Self::Store(e.into())
    }
}

/// Reads the global ledger of one consistent moment.
pub struct GlobalReader {
    txn: redb::ReadTransaction,
}

impl GlobalReader {
    pub fn new(db: &redb::Database) -> Result<Self, GlobalReadError> {
        Ok(Self { txn: db.begin_read()? })
    }

    /// The entry at `height`.
    pub fn entry(&self, pk: &PartitionKey, height: u64) -> Result<GlobalEntry, GlobalReadError> {
        let table = self.txn.open_table(BLOCKS)?;
        let v = table.get(&block_key(pk, height)[..])?.ok_or(GlobalReadError::Missing {
            partition: pk.partition,
            height,
        })?;
        decode_row(pk, height, v.value())
    }

    /// The height of the block holding `offset`, if the chain up to
    /// `head` reaches it.
    pub fn height_of_offset(
        &self,
        pk: &PartitionKey,
        head: &GlobalHead,
        offset: i64,
    ) -> Result<Option<u64>, GlobalReadError> {
        if offset < 0 || offset >= head.next_offset {
            return Ok(None);
        }
        let table = self.txn.open_table(BY_OFFSET)?;
        let from = offset_key(pk, offset.saturating_add(1), 0);
        let to = offset_key(pk, i64::MAX, u64::MAX);
        let first = table.range::<&[u8]>(&from[..]..=&to[..])?.next().transpose()?;
        Ok(first.map(|(_, h)| h.value()).filter(|h| *h < head.next_height))
    }

    /// Offsets (with heights) of the records whose key hashes to `key_hash`,
    /// oldest first, at most `limit`.
    pub fn offsets_of_key(
        &self,
        pk: &PartitionKey,
        head: &GlobalHead,
        key_hash: &[u8; 32],
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, GlobalReadError> {
        let table = self.txn.open_table(BY_KEY)?;
        let from = key_key(pk, key_hash, i64::MIN);
        let to = key_key(pk, key_hash, i64::MAX);
        let mut out = Vec::new();
        for row in table.range::<&[u8]>(&from[..]..=&to[..])? {
            let (k, h) = row?;
            let height = h.value();
            if height >= head.next_height || out.len() >= limit {
                break;
            }
            let offset = key_u64(k.value(), 52, pk, height)? ^ (1 << 63);
            out.push((offset as i64, height));
        }
        Ok(out)
    }

    /// Heights at or after `from` (below the head) whose blocks hold receipts.
    pub fn receipt_heights(
        &self,
        pk: &PartitionKey,
        head: &GlobalHead,
        from: u64,
    ) -> Result<Vec<u64>, GlobalReadError> {
        let table = self.txn.open_table(RECEIPTS)?;
        let start = block_key(pk, from);
        let end = block_key(pk, head.next_height.saturating_sub(1));
        let mut out = Vec::new();
        if head.next_height == 0 || from >= head.next_height {
            return Ok(out);
        }
        for row in table.range::<&[u8]>(&start[..]..=&end[..])? {
            let (k, _) = row?;
            out.push(key_u64(k.value(), 20, pk, from)?);
        }
        Ok(out)
    }

    /// Every entry of a partition below its head, in order, read a chunk
    /// at a time (a partition's global chain can be long).
    pub fn entries<'r>(&'r self, pk: &PartitionKey, head: &GlobalHead) -> Result<Entries<'r>, GlobalReadError> {
        Ok(Entries {
            table: self.txn.open_table(BLOCKS)?,
            pk: *pk,
            next: 0,
            end: head.next_height,
            chunk: std::collections::VecDeque::new(),
            _reader: std::marker::PhantomData,
        })
    }
}

/// Rows read per chunk by [`Entries`].
const ENTRIES_CHUNK: u64 = 256;

/// A partition's entries in height order (see [`GlobalReader::entries`]).
pub struct Entries<'r> {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    pk: PartitionKey,
    next: u64,
    end: u64,
    chunk: std::collections::VecDeque<Result<(u64, GlobalEntry), GlobalReadError>>,
    _reader: std::marker::PhantomData<&'r GlobalReader>,
}

impl Entries<'_> {
    fn fill(&mut self) -> Result<(), GlobalReadError> {
        let last = (self.next + ENTRIES_CHUNK).min(self.end) - 1;
        let start = block_key(&self.pk, self.next);
        let stop = block_key(&self.pk, last);
        for row in self.table.range::<&[u8]>(&start[..]..=&stop[..])? {
            let (k, v) = row?;
            let height = key_u64(k.value(), 20, &self.pk, self.next)?;
            let entry = decode_row(&self.pk, height, v.value());
            self.chunk.push_back(entry.map(|e| (height, e)));
        }
        self.next = last + 1;
        Ok(())
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<(u64, GlobalEntry), GlobalReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.chunk.is_empty() && self.next < self.end {
            if let Err(e) = self.fill() {
                // Reported once; the walk ends there.
                self.next = self.end;
                return Some(Err(e));
            }
        }
        self.chunk.pop_front()
    }
}

/// The big-endian `u64` at `at` in a row's key; a short key is damage.
fn key_u64(key: &[u8], at: usize, pk: &PartitionKey, near: u64) -> Result<u64, GlobalReadError> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| GlobalReadError::Corrupt {
            pk: *pk,
            height: near,
            reason: format!("a row key of {} bytes", key.len()),
        })
}

/// Rows found damaged, by partition and height, with what was wrong:
/// shared by every handle on one node's global ledger.
pub type DamagedRows = Arc<std::sync::Mutex<BTreeMap<(PartitionKey, u64), String>>>;

/// Lists a row as damaged (once; a log line the first time).
pub(crate) fn note_damaged(damaged: &DamagedRows, pk: &PartitionKey, height: u64, reason: &str) {
    let mut damaged = damaged.lock().unwrap_or_else(|p| p.into_inner());
    if damaged.insert((*pk, height), reason.to_owned()).is_none() {
        tracing::error!(
            partition = pk.partition,
            height,
            reason,
            "global ledger row damaged: not served until repaired from the partition's cluster"
        );
    }
}

/// A node's global ledger (its rows; the heads are in the Raft state).
#[derive(Clone)]
pub struct GlobalLedger {
    db: Arc<redb::Database>,
    damaged: DamagedRows,
}

/// Why a damaged row could not be repaired from the blocks offered.
#[derive(Debug, thiserror::Error)]
pub enum RowRepairError {
    #[error(transparent)]
    Read(#[from] GlobalReadError),
    #[error("the partition has no global chain in the Raft state")]
    NoChain,
    #[error("height {height} is past the partition's global head")]
    PastHead { height: u64 },
    #[error("no block offered")]
    Nothing,
    #[error("the block offered does not prove out: {0}")]
    Segment(#[from] SegmentError),
    #[error("the block offered has another hash than the chain names")]
    WrongBlock,
    #[error("global ledger store: {0}")]
    Store(#[from] redb::Error),
}

impl GlobalLedger {
    pub(crate) fn new(db: Arc<redb::Database>) -> Self {
        Self::with_damaged(db, DamagedRows::default())
    }

    pub(crate) fn with_damaged(db: Arc<redb::Database>, damaged: DamagedRows) -> Self {
        Self { db, damaged }
    }

    /// A handle that does not keep the file open.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<redb::Database> {
        Arc::downgrade(&self.db)
    }

    pub fn reader(&self) -> Result<GlobalReader, GlobalReadError> {
        GlobalReader::new(&self.db)
    }

    /// See [`locate`]. A damaged row it meets is listed for repair.
    pub fn locate(&self, state: &MetaState, topic: &str, query: &Query) -> Result<Vec<Located>, GlobalReadError> {
        let found = locate(&self.db, state, topic, query);
        if let Err(GlobalReadError::Corrupt { pk, height, reason }) = &found {
            self.mark_damaged(pk, *height, reason);
        }
        found
    }

    /// See [`verify_global`]. A damaged row it meets is listed for repair.
    pub fn verify(
        &self,
        state: &MetaState,
        each: impl FnMut(&PartitionKey, u64, &GlobalEntry, &BlockHash),
    ) -> Result<GlobalReport, GlobalVerifyError> {
        let report = verify_global(&self.db, state, each);
        match &report {
            Err(GlobalVerifyError::Read(GlobalReadError::Corrupt { pk, height, reason })) => {
                self.mark_damaged(pk, *height, reason)
            }
            Err(GlobalVerifyError::Bad { pk, error, .. }) => {
                self.mark_damaged(pk, error.height, &error.fault.to_string())
            }
            _ => {}
        }
        report
    }

    /// Lists a row as damaged (once; a log line the first time).
    pub fn mark_damaged(&self, pk: &PartitionKey, height: u64, reason: &str) {
        note_damaged(&self.damaged, pk, height, reason);
    }

    /// Rows listed as damaged, with what was wrong.
    pub fn damaged(&self) -> Vec<(PartitionKey, u64, String)> {
        let damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        damaged.iter().map(|((pk, h), r)| (*pk, *h, r.clone())).collect()
    }

    /// The hash the block at `height` must have: what the entry above it
    /// links to, or the Raft state's head for the last one.
    fn expected_hash(&self, head: &GlobalHead, pk: &PartitionKey, height: u64) -> Result<[u8; 32], RowRepairError> {
        if height >= head.next_height {
            return Err(RowRepairError::PastHead { height });
        }
        if height + 1 == head.next_height {
            return Ok(head.last_hash);
        }
        let above = self.reader()?.entry(pk, height + 1)?;
        let h = Block::head_only(&above.head).map_err(|e| GlobalReadError::Corrupt {
            pk: *pk,
            height: height + 1,
            reason: e.to_string(),
        })?;
        Ok(h.block.prev_hash.0)
    }

    /// Rewrites the rows of the block at `height` from `blocks` (canonical
    /// blocks from that height on, as a member of the partition's cluster
    /// serves them, ending at a certified one): checked as the global-ledger
    /// task checks what it appends, and accepted only if the block's hash is
    /// the one the chain names. Rows above it must be sound (repair from
    /// the top down).
    pub fn repair(
        &self,
        state: &MetaState,
        pk: &PartitionKey,
        height: u64,
        blocks: &[(Bytes, Option<Bytes>)],
    ) -> Result<(), RowRepairError> {
        let head = state.global.get(pk).ok_or(RowRepairError::NoChain)?;
        let keys = ClusterKeys::of(state, head.cluster).ok_or(RowRepairError::NoChain)?;
        let want = self.expected_hash(head, pk, height)?;
        let (first, _) = blocks.first().ok_or(RowRepairError::Nothing)?;
        let sealed = Block::decode_sealed(first).map_err(|e| SegmentError {
            height,
            fault: Fault::Decode(e.to_string()),
        })?;
        if sealed.hash.0 != want {
            return Err(RowRepairError::WrongBlock);
        }
        // The chain as it stood below the block (what `verify_segment`
        // checks the block against: its link and offsets are proven by the
        // hash just checked).
        let below = GlobalHead {
            cluster: head.cluster,
            next_height: height,
            last_hash: sealed.block.prev_hash.0,
            next_offset: sealed.block.base_offset,
            certified_height: None,
            messages: 0,
            receipts: 0,
        };
        let entries = verify_segment(pk, &below, blocks, &keys)?;
        let entry = entries.into_iter().next().ok_or(RowRepairError::Nothing)?;
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        write_rows(&txn, pk, std::slice::from_ref(&entry))?;
        txn.commit().map_err(redb::Error::from)?;
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(*pk, height));
        Ok(())
    }

    /// Re-checks every row of one partition's global chain (as
    /// [`verify_global`] does, certificates included) without stopping at
    /// damage: every row that fails is listed as damaged and returned with
    /// what was wrong. `pace` is told the bytes of each row checked and
    /// returns false to stop.
    pub fn scrub_partition(
        &self,
        state: &MetaState,
        pk: &PartitionKey,
        mut pace: impl FnMut(u64) -> bool,
    ) -> Result<Vec<(u64, String)>, GlobalReadError> {
        let mut found = Vec::new();
        let Some(head) = state.global.get(pk) else {
            return Ok(found);
        };
        let keys = ClusterKeys::of(state, head.cluster);
        let reader = self.reader()?;
        // Where the chain is known to stand: `None` after damage, until
        // the next sound row (taken as it links).
        let mut at = Some(GlobalHead::genesis(head.cluster));
        let mut expected_height = 0;
        for row in reader.entries(pk, head)? {
            let (height, entry) = match row {
                Ok(r) => r,
                Err(GlobalReadError::Corrupt { height, reason, .. }) => {
                    found.push((height, reason));
                    at = None;
                    expected_height = height + 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for missing in expected_height..height {
                found.push((missing, "the row is missing".to_owned()));
                at = None;
            }
            expected_height = height + 1;
            let mut here = match at.take() {
                Some(h) => h,
                None => match Block::head_only(&entry.head) {
                    Ok(h) => GlobalHead {
                        cluster: head.cluster,
                        next_height: height,
                        last_hash: h.block.prev_hash.0,
                        next_offset: h.block.base_offset,
                        ..GlobalHead::genesis(head.cluster)
                    },
                    Err(e) => {
                        found.push((height, e.to_string()));
                        continue;
                    }
                },
            };
            match entry.extend(pk, &mut here) {
                Ok((_, hash)) => {
                    let cert = match (&entry.cert, &keys) {
                        (Some(cert), Some(keys)) => keys.check_cert(pk, height, &hash, cert).err(),
                        _ => None,
                    };
                    match cert {
                        Some(fault) => found.push((height, fault.to_string())),
                        None => at = Some(here),
                    }
                }
                Err(e) => found.push((height, e.fault.to_string())),
            }
            let bytes = (entry.head.len() + entry.cert.as_ref().map_or(0, Vec::len) + 64 * entry.messages.len()) as u64;
            if !pace(bytes) {
                break;
            }
        }
        if at
            .as_ref()
            .is_some_and(|at| at.next_height == head.next_height && at.last_hash != head.last_hash)
        {
            found.push((head.next_height - 1, Fault::HeadMismatch.to_string()));
        }
        for missing in expected_height..head.next_height {
            found.push((missing, "the row is missing".to_owned()));
        }
        for (height, reason) in &found {
            self.mark_damaged(pk, *height, reason);
        }
        Ok(found)
    }
}

/// Every partition's entries below its head (what a snapshot carries),
/// except rows that do not read back sound: those are listed in `damaged`
/// and left out (a snapshot must still be offered, or Raft stops; the node
/// that installs it repairs what is missing from the partition's cluster,
/// as this node repairs its own).
pub(crate) fn dump(
    db: &redb::Database,
    heads: &BTreeMap<PartitionKey, GlobalHead>,
    damaged: &DamagedRows,
) -> Result<Vec<(PartitionKey, Vec<GlobalEntry>)>, GlobalReadError> {
    let reader = GlobalReader::new(db)?;
    let mut out = Vec::with_capacity(heads.len());
    for (pk, head) in heads {
        let mut entries = Vec::with_capacity(head.next_height as usize);
        for row in reader.entries(pk, head)? {
            match row {
                Ok((_, e)) => entries.push(e),
                Err(GlobalReadError::Corrupt { pk, height, reason }) => {
                    note_damaged(damaged, &pk, height, &reason);
                }
                Err(e) => return Err(e),
            }
        }
        out.push((*pk, entries));
    }
    Ok(out)
}

/// A receipt found for a message, with the block that holds it.
#[derive(Clone, Debug, Serialize)]
pub struct FoundReceipt {
    pub height: u64,
    pub block_hash: String,
    pub group: String,
    pub member: String,
    /// Who committed, and their organization (empty before block format 4).
    pub principal: String,
    pub organization: String,
    pub client: String,
    pub committed_offset: i64,
    pub timestamp_ms: i64,
}

/// A message found in the global ledger.
#[derive(Clone, Debug, Serialize)]
pub struct Located {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub height: u64,
    pub block_hash: String,
    /// Whether the block's own certificate is held (else a later block's
    /// covers it through the hash chain).
    pub certified: bool,
    pub cluster: u32,
    pub key_sha256: Option<String>,
    pub value_sha256: Option<String>,
    pub size: u32,
    pub producer_id: i64,
    pub origin_node: Option<NodeId>,
    /// The sender: the principal that produced it and its organization, as
    /// the certified block head records them (`None` before block format 5).
    pub sender_principal: Option<String>,
    pub sender_organization: Option<String>,
    /// Per consumer group, the first receipt (committed offset past this
    /// message) recorded at or after the message's block.
    pub receipts: Vec<FoundReceipt>,
}

/// What to find.
#[derive(Clone, Debug)]
pub enum Query {
    /// Every record with this key, in every partition of the topic.
    Key(Vec<u8>),
    /// The record at this offset of a partition.
    Offset { partition: i32, offset: i64 },
}

/// Records with the same key returned at most.
pub const LOCATE_MAX: usize = 1000;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Finds messages of `topic` in the global ledger alone.
pub fn locate(
    db: &redb::Database,
    state: &MetaState,
    topic: &str,
    query: &Query,
) -> Result<Vec<Located>, GlobalReadError> {
    let Some(t) = state.topics.get(topic) else {
        return Ok(Vec::new());
    };
    let reader = GlobalReader::new(db)?;
    let mut hits: Vec<(PartitionKey, i64, u64)> = Vec::new();
    match query {
        Query::Key(key) => {
            let hash = sha256(key);
            for p in 0..t.record.partitions {
                let pk = t.record.partition_key(p);
                let Some(head) = state.global.get(&pk) else { continue };
                let left = LOCATE_MAX.saturating_sub(hits.len());
                for (offset, height) in reader.offsets_of_key(&pk, head, &hash, left)? {
                    hits.push((pk, offset, height));
                }
            }
        }
        Query::Offset { partition, offset } => {
            let pk = t.record.partition_key(*partition);
            if let Some(head) = state.global.get(&pk) {
                if let Some(height) = reader.height_of_offset(&pk, head, *offset)? {
                    hits.push((pk, *offset, height));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(hits.len());
    for (pk, offset, height) in hits {
        let Some(head) = state.global.get(&pk) else { continue };
        let entry = reader.entry(&pk, height)?;
        // The index named this block: it must hold the record (with the key
        // asked for), or the index or the entry is damaged.
        let wanted_key = match query {
            Query::Key(key) => Some(sha256(key)),
            Query::Offset { .. } => None,
        };
        let Some(m) = entry
            .messages
            .iter()
            .find(|m| m.offset == offset && wanted_key.is_none_or(|k| m.key_hash == Some(k)))
        else {
            return Err(GlobalReadError::Corrupt {
                pk,
                height,
                reason: format!("the index names this block for offset {offset}, which it does not hold"),
            });
        };
        let receipts = receipts_for(&reader, &pk, head, height, offset)?;
        let block = Block::from_head(&entry.head).map_err(|e| GlobalReadError::Corrupt {
            pk,
            height,
            reason: e.to_string(),
        })?;
        let sender = block.sender_of(offset);
        out.push(Located {
            topic: topic.to_owned(),
            partition: pk.partition,
            offset,
            timestamp: m.timestamp,
            height,
            block_hash: hex(&BlockHash::of(&entry.head).0),
            certified: entry.cert.is_some(),
            cluster: head.cluster,
            key_sha256: m.key_hash.map(|k| hex(&k)),
            value_sha256: m.value_hash.map(|v| hex(&v)),
            size: m.size,
            producer_id: m.producer_id,
            origin_node: m.origin,
            sender_principal: sender.map(|s| s.principal.clone()),
            sender_organization: sender.map(|s| s.organization.clone()),
            receipts,
        });
    }
    Ok(out)
}

fn receipts_for(
    reader: &GlobalReader,
    pk: &PartitionKey,
    head: &GlobalHead,
    from: u64,
    offset: i64,
) -> Result<Vec<FoundReceipt>, GlobalReadError> {
    let mut first: BTreeMap<String, FoundReceipt> = BTreeMap::new();
    for height in reader.receipt_heights(pk, head, from)? {
        let entry = reader.entry(pk, height)?;
        let block = Block::from_head(&entry.head).map_err(|e| GlobalReadError::Corrupt {
            pk: *pk,
            height,
            reason: e.to_string(),
        })?;
        let hash = hex(&BlockHash::of(&entry.head).0);
        for r in block.receipts.iter().filter(|r| r.offset > offset) {
            first
                .entry(r.group_id.clone())
                .or_insert_with(|| found(height, &hash, r));
        }
    }
    Ok(first.into_values().collect())
}

fn found(height: u64, hash: &str, r: &Receipt) -> FoundReceipt {
    FoundReceipt {
        height,
        block_hash: hash.to_owned(),
        group: r.group_id.clone(),
        member: r.member_id.clone(),
        principal: r.principal.clone(),
        organization: r.organization.clone(),
        client: r.client_id.clone(),
        committed_offset: r.offset,
        timestamp_ms: r.timestamp_ms,
    }
}

/// What a sound global ledger holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GlobalReport {
    pub partitions: u64,
    pub blocks: u64,
    pub certified: u64,
    pub messages: u64,
    pub receipts: u64,
    /// SHA-256 over every partition's (key, height, block hash), in order:
    /// equal on every node that holds the same global ledger.
    pub digest: String,
}

/// Why the global ledger does not verify.
#[derive(Debug, thiserror::Error)]
pub enum GlobalVerifyError {
    #[error(transparent)]
    Read(#[from] GlobalReadError),
    #[error("partition {partition} of topic {topic}: {error}")]
    Bad {
        topic: String,
        partition: i32,
        pk: PartitionKey,
        error: SegmentError,
    },
    #[error(
        "partition {partition} of topic {topic}: ordered by cluster {cluster}, which the Raft state does not hold"
    )]
    UnknownCluster {
        topic: String,
        partition: i32,
        cluster: u32,
    },
}

/// Re-walks every partition's global chain from the tables: hash links,
/// offsets, message offsets, every certificate against the cluster's keys
/// in the Raft state; the chain must end at the recorded head. `each` sees
/// every verified entry (to compare it with a partition ledger).
pub fn verify_global(
    db: &redb::Database,
    state: &MetaState,
    mut each: impl FnMut(&PartitionKey, u64, &GlobalEntry, &BlockHash),
) -> Result<GlobalReport, GlobalVerifyError> {
    let reader = GlobalReader::new(db)?;
    let mut report = GlobalReport::default();
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (pk, head) in &state.global {
        let topic = state
            .topic_by_id(&pk.topic_id)
            .map_or_else(|| hex(&pk.topic_id), |t| t.record.name.clone());
        let bad = |error| GlobalVerifyError::Bad {
            topic: topic.clone(),
            partition: pk.partition,
            pk: *pk,
            error,
        };
        let keys = ClusterKeys::of(state, head.cluster).ok_or_else(|| GlobalVerifyError::UnknownCluster {
            topic: topic.clone(),
            partition: pk.partition,
            cluster: head.cluster,
        })?;
        let mut at = GlobalHead::genesis(head.cluster);
        for row in reader.entries(pk, head)? {
            let (height, entry) = row?;
            if height != at.next_height {
                return Err(bad(SegmentError {
                    height: at.next_height,
                    fault: Fault::WrongPlace,
                }));
            }
            let (_, hash) = entry.extend(pk, &mut at).map_err(bad)?;
            if let Some(cert) = &entry.cert {
                keys.check_cert(pk, height, &hash, cert)
                    .map_err(|fault| bad(SegmentError { height, fault }))?;
                report.certified += 1;
            }
            ctx.update(&pk.to_bytes());
            ctx.update(&height.to_be_bytes());
            ctx.update(&hash.0);
            each(pk, height, &entry, &hash);
            report.blocks += 1;
        }
        if at != *head {
            return Err(bad(SegmentError {
                height: at.next_height,
                fault: Fault::HeadMismatch,
            }));
        }
        if head.next_height > 0 && head.certified_height != Some(head.next_height - 1) {
            return Err(bad(SegmentError {
                height: head.next_height - 1,
                fault: Fault::Uncertified,
            }));
        }
        report.partitions += 1;
        report.messages += head.messages;
        report.receipts += head.receipts;
    }
    report.digest = hex(ctx.finish().as_ref());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbft::wire::encode_cert;
    use crate::pbft::{Message, QuorumCert, SignedMessage};
    use crate::raft::state_machine::{code, MetaCommand, NodeRecord};
    use courier_protocol::records::{assign_offset, encode_batch, NewRecord, ProducerIds};
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const TOPIC: [u8; 16] = [7; 16];

    fn key(i: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[i + 1; 32]).expect("seed")
    }

    /// Four nodes (0..4) forming cluster 0, a topic of one partition on it.
    /// Four nodes (0..4) forming cluster 0, a topic of one partition on it.
    fn setup() -> Vec<MetaCommand> {
        let mut commands: Vec<MetaCommand> = (0..4u8)
            .map(|id| {
                MetaCommand::RegisterNode(NodeRecord {
                    id: id.into(),
                    kafka: format!("127.0.0.1:{}", 9092 + u16::from(id)),
                    peer: format!("127.0.0.1:{}", 19092 + u16::from(id)),
                    organization: "org".into(),
                    public_key: key(id).public_key().as_ref().to_vec(),
                })
            })
            .collect();
        commands.push(MetaCommand::FormCluster {
            members: vec![0, 1, 2, 3],
        });
        commands.push(MetaCommand::CreateTopic {
            name: "t".into(),
            id: TOPIC,
            partitions: 1,
            configs: BTreeMap::new(),
        });
        commands
    }

    /// The state [`setup`] builds.
    fn state() -> MetaState {
        let mut s = MetaState::default();
        for c in setup() {
            assert_eq!(s.apply(&c).error_code, 0, "{c:?}");
        }
        assert_eq!(s.clusters.len(), 1);
        s
    }

    /// A Raft store at `path` that applied [`setup`] and a chain of `n`
    /// blocks certified by `signers`, through openraft's apply.
    async fn store_with_chain(path: &std::path::Path, n: u64, signers: &[u8]) -> crate::raft::store::StateMachine {
        use crate::raft::TypeConfig;
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

        let (_, mut sm) = crate::raft::store::open(path).unwrap();
        let base = state();
        let keys = ClusterKeys::of(&base, 0).unwrap();
        let blocks = chain(&base, n, signers);
        let entries = verify_segment(&pk(), &GlobalHead::genesis(0), &blocks, &keys).unwrap();
        let mut commands = setup();
        commands.push(MetaCommand::AppendGlobal { pk: pk(), entries });
        let log: Vec<Entry<TypeConfig>> = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 0), i as u64 + 1),
                payload: EntryPayload::Normal(c),
            })
            .collect();
        let out = sm.apply(log).await.unwrap();
        assert!(out.iter().all(|r| r.error_code == 0), "{out:?}");
        sm
    }

    fn pk() -> PartitionKey {
        PartitionKey {
            topic_id: TOPIC,
            partition: 0,
        }
    }

    /// A chain of blocks, each with two keyed records and (for odd
    /// heights) a receipt, each certified by replicas `signers`.
    fn chain(state: &MetaState, n: u64, signers: &[u8]) -> Vec<(Bytes, Option<Bytes>)> {
        let keys = ClusterKeys::of(state, 0).expect("cluster");
        let mut prev = BlockHash::ZERO;
        let mut out = Vec::new();
        for height in 0..n {
            let base = height as i64 * 2;
            let k0 = format!("key-{}", height % 3);
            let v0 = format!("value-{height}");
            let records = [
                NewRecord {
                    key: Some(k0.as_bytes()),
                    value: Some(v0.as_bytes()),
                    ..Default::default()
                },
                NewRecord {
                    key: None,
                    value: None,
                    timestamp_delta: 1,
                    ..Default::default()
                },
            ];
            let mut batch = encode_batch(1_000 + base, ProducerIds::NONE, &records).to_vec();
            assign_offset(&mut batch, base, 0);
            let receipts = if height % 2 == 1 {
                vec![Receipt {
                    group_id: "billing".into(),
                    offset: base,
                    ..Default::default()
                }]
            } else {
                vec![]
            };
            let block = Block {
                partition: pk(),
                height,
                view: 0,
                prev_hash: prev,
                base_offset: base,
                next_offset: base + 2,
                max_timestamp: 1_001 + base,
                config_version: 0,
                receipts,
                requests: vec![crate::ledger::RequestRecord {
                    origin: 2,
                    number: height,
                    error_code: 0,
                    base_offset: base,
                }],
                senders: vec![crate::ledger::Sender {
                    first_offset: base,
                    principal: "User:a-producer".into(),
                    organization: "org-a".into(),
                }],
                batches: Bytes::from(batch),
            };
            let hash = block.hash();
            let votes = signers
                .iter()
                .map(|&i| {
                    SignedMessage::sign(
                        keys.instance(&pk()),
                        i,
                        &key(i),
                        Message::Checkpoint {
                            seq: height + 1,
                            state: hash.0,
                        },
                    )
                })
                .collect();
            let cert = QuorumCert {
                seq: height + 1,
                state: hash.0,
                votes,
            };
            out.push((block.encode(), Some(encode_cert(&cert).freeze())));
            prev = hash;
        }
        out
    }

    #[test]
    fn certified_blocks_become_entries_with_their_messages() {
        let mut s = state();
        let keys = ClusterKeys::of(&s, 0).unwrap();
        let blocks = chain(&s, 4, &[0, 1, 3]);
        let genesis = GlobalHead::genesis(0);
        let entries = verify_segment(&pk(), &genesis, &blocks[..2], &keys).expect("sound blocks");
        assert_eq!(entries.len(), 2);
        let m = &entries[1].messages;
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].offset, 2);
        assert_eq!(m[0].key_hash, Some(sha256(b"key-1")));
        assert_eq!(m[0].value_hash, Some(sha256(b"value-1")));
        assert_eq!((m[0].size, m[0].origin), (7, Some(2)));
        assert_eq!((m[1].key_hash, m[1].value_hash, m[1].timestamp), (None, None, 1_003));
        let r = s.apply(&MetaCommand::AppendGlobal { pk: pk(), entries });
        assert_eq!(r.error_code, 0, "{:?}", r.message);
        // The next round starts where the head is.
        let head = s.global[&pk()].clone();
        assert_eq!((head.next_height, head.next_offset, head.receipts), (2, 4, 1));
        let more = verify_segment(&pk(), &head, &blocks[2..], &keys).expect("sound blocks");
        // Applied twice (a retry), the same entries are refused: they no
        // longer extend the chain.
        assert_eq!(
            s.apply(&MetaCommand::AppendGlobal {
                pk: pk(),
                entries: more.clone()
            })
            .error_code,
            0
        );
        assert_eq!(
            s.apply(&MetaCommand::AppendGlobal {
                pk: pk(),
                entries: more
            })
            .error_code,
            code::INVALID_REQUEST
        );
        assert_eq!(s.global[&pk()].next_height, 4);
    }

    #[test]
    fn a_byzantine_replicas_blocks_are_refused_with_the_fault() {
        let s = state();
        let keys = ClusterKeys::of(&s, 0).unwrap();
        let genesis = GlobalHead::genesis(0);
        let good = chain(&s, 2, &[0, 1, 2]);
        let fault = |blocks: &[(Bytes, Option<Bytes>)]| verify_segment(&pk(), &genesis, blocks, &keys).unwrap_err();

        // Two signatures are not a quorum of four.
        let weak = chain(&s, 1, &[0, 1]);
        assert!(
            matches!(fault(&weak).fault, Fault::Certificate(_)),
            "{:?}",
            fault(&weak)
        );
        // A signature by a key outside the cluster.
        let mut outsider = chain(&s, 1, &[0, 1, 2]);
        {
            let (block, _) = Block::decode_hashed(&outsider[0].0).unwrap();
            let hash = block.hash();
            let stranger = Ed25519KeyPair::from_seed_unchecked(&[99; 32]).unwrap();
            let votes = [0u8, 1]
                .iter()
                .map(|&i| (i, key(i)))
                .chain(std::iter::once((2u8, stranger)))
                .map(|(i, k)| {
                    SignedMessage::sign(
                        keys.instance(&pk()),
                        i,
                        &k,
                        Message::Checkpoint { seq: 1, state: hash.0 },
                    )
                })
                .collect();
            let cert = QuorumCert {
                seq: 1,
                state: hash.0,
                votes,
            };
            outsider[0].1 = Some(encode_cert(&cert).freeze());
        }
        assert!(matches!(fault(&outsider).fault, Fault::Certificate(_)));
        // A genuine certificate on altered records: the batches no longer
        // match the digest the certified head holds.
        let mut altered = good.clone();
        let mut raw = altered[0].0.to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        altered[0].0 = Bytes::from(raw);
        assert!(matches!(fault(&altered).fault, Fault::Decode(_)));
        // A genuine certificate for another block.
        let mut swapped = good.clone();
        swapped[0].1 = good[1].1.clone();
        assert!(matches!(fault(&swapped).fault, Fault::Certificate(_)));
        // A block that skips one.
        let skipped = vec![good[1].clone()];
        assert_eq!(fault(&skipped).fault, Fault::WrongPlace);
        // Blocks without any certificate.
        let bare: Vec<_> = good.iter().map(|(b, _)| (b.clone(), None)).collect();
        assert_eq!(fault(&bare).fault, Fault::Uncertified);
        // Entries that do not extend the chain are refused by Raft's state
        // machine too, whoever proposes them.
        let mut s2 = s.clone();
        let entries = verify_segment(&pk(), &genesis, &good, &keys).unwrap();
        let r = s2.apply(&MetaCommand::AppendGlobal {
            pk: pk(),
            entries: entries[1..].to_vec(),
        });
        assert_eq!(r.error_code, code::INVALID_REQUEST);
        assert!(s2.global.is_empty());
    }

    #[tokio::test]
    async fn a_chain_longer_than_a_read_chunk_is_walked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let n = ENTRIES_CHUNK * 2 + 7;
        let sm = store_with_chain(&dir.path().join("a.redb"), n, &[0, 1, 2]).await;
        let s = sm.subscribe().borrow().clone();
        let mut heights = Vec::new();
        let report = sm.global().verify(&s, |_, h, _, _| heights.push(h)).unwrap();
        assert_eq!(report.blocks, n);
        assert_eq!(heights, (0..n).collect::<Vec<_>>());
    }

    /// Changes one byte of the stored row of block `height` (as the disk
    /// would), bypassing the ledger.
    fn damage_row(ledger: &GlobalLedger, height: u64, at: usize) {
        use redb::ReadableTable;
        let txn = ledger.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOCKS).unwrap();
            let key = block_key(&pk(), height);
            let mut row = t.get(&key[..]).unwrap().unwrap().value().to_vec();
            let at = at.min(row.len() - 10);
            row[at] ^= 0x04;
            t.insert(&key[..], &row[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    /// A global-ledger row the disk changed is never served: every read
    /// that meets it fails naming it, it is listed as damaged, the scrub
    /// finds it, and it is rewritten from the partition's block only when
    /// that block is the one the chain names.
    #[tokio::test]
    async fn a_damaged_row_is_never_served_and_is_repaired_from_the_block_the_chain_names() {
        let dir = tempfile::tempdir().unwrap();
        let sm = store_with_chain(&dir.path().join("a.redb"), 5, &[1, 2, 3]).await;
        let s = sm.subscribe().borrow().clone();
        let ledger = sm.global();
        let sound = ledger.verify(&s, |_, _, _, _| {}).unwrap();
        let blocks = chain(&state(), 5, &[1, 2, 3]);
        let at_offset = |offset| Query::Offset { partition: 0, offset };
        // Block 2 holds offsets 4 and 5; damage in its head, then in its
        // last message's metadata.
        for at in [10, usize::MAX] {
            damage_row(&ledger, 2, at);
            let read = ledger.locate(&s, "t", &at_offset(4));
            assert!(
                matches!(read, Err(GlobalReadError::Corrupt { height: 2, .. })),
                "{read:?}"
            );
            assert!(ledger.verify(&s, |_, _, _, _| {}).is_err());
            assert_eq!(ledger.damaged().iter().map(|d| d.1).collect::<Vec<_>>(), vec![2]);
            let found = ledger.scrub_partition(&s, &pk(), |_| true).unwrap();
            assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), vec![2], "{found:?}");
            // Other blocks still read.
            assert_eq!(ledger.locate(&s, "t", &at_offset(0)).unwrap().len(), 1);
            // A block other than the one the chain names is refused.
            assert!(matches!(
                ledger.repair(&s, &pk(), 2, &blocks[1..]),
                Err(RowRepairError::WrongBlock)
            ));
            assert_eq!(ledger.damaged().len(), 1);
            ledger.repair(&s, &pk(), 2, &blocks[2..]).unwrap();
            assert!(ledger.damaged().is_empty());
            assert_eq!(ledger.locate(&s, "t", &at_offset(4)).unwrap()[0].height, 2);
            assert_eq!(ledger.verify(&s, |_, _, _, _| {}).unwrap().digest, sound.digest);
            assert!(ledger.scrub_partition(&s, &pk(), |_| true).unwrap().is_empty());
        }
        // The last block's hash is the Raft state's head.
        damage_row(&ledger, 4, 10);
        assert_eq!(ledger.scrub_partition(&s, &pk(), |_| true).unwrap().len(), 1);
        assert!(matches!(
            ledger.repair(&s, &pk(), 4, &blocks[3..]),
            Err(RowRepairError::WrongBlock)
        ));
        ledger.repair(&s, &pk(), 4, &blocks[4..]).unwrap();
        assert_eq!(ledger.verify(&s, |_, _, _, _| {}).unwrap().digest, sound.digest);
    }

    #[tokio::test]
    async fn rows_are_found_verified_and_carried_by_snapshots() {
        use crate::raft::store;
        use openraft::storage::RaftStateMachine;

        let dir = tempfile::tempdir().unwrap();
        let mut sm = store_with_chain(&dir.path().join("a.redb"), 5, &[1, 2, 3]).await;
        let s = sm.subscribe().borrow().clone();
        let ledger = sm.global();

        let found = ledger.locate(&s, "t", &Query::Key(b"key-1".to_vec())).unwrap();
        let offsets: Vec<i64> = found.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![2, 8], "key-1 is in blocks 1 and 4");
        let first = &found[0];
        assert_eq!((first.height, first.size, first.origin_node), (1, 7, Some(2)));
        assert_eq!(first.sender_principal.as_deref(), Some("User:a-producer"));
        assert_eq!(first.sender_organization.as_deref(), Some("org-a"));
        // Block 1 holds a receipt for offset 2: it does not cover the
        // record at 2; block 3's (offset 6) does.
        assert_eq!(first.receipts.len(), 1);
        assert_eq!((first.receipts[0].height, first.receipts[0].committed_offset), (3, 6));
        let at = ledger
            .locate(
                &s,
                "t",
                &Query::Offset {
                    partition: 0,
                    offset: 5,
                },
            )
            .unwrap();
        assert_eq!(at.len(), 1);
        assert_eq!((at[0].height, at[0].value_sha256.clone()), (2, None));
        assert!(ledger
            .locate(
                &s,
                "t",
                &Query::Offset {
                    partition: 0,
                    offset: 10
                }
            )
            .unwrap()
            .is_empty());

        let mut seen = 0;
        let report = ledger.verify(&s, |_, _, _, _| seen += 1).unwrap();
        assert_eq!((report.blocks, report.certified, report.messages, seen), (5, 5, 10, 5));

        // A snapshot sent to another node carries the rows.
        use openraft::RaftSnapshotBuilder;
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let snap = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        let (_, mut other) = store::open(&dir.path().join("b.redb")).unwrap();
        other.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        let s2 = other.subscribe().borrow().clone();
        let again = other.global().verify(&s2, |_, _, _, _| {}).unwrap();
        assert_eq!(again.digest, report.digest);
        assert_eq!(
            other
                .global()
                .locate(&s2, "t", &Query::Key(b"key-1".to_vec()))
                .unwrap()
                .len(),
            2
        );
        // A stopped node's file is read back with the same answers.
        drop((sm, builder, ledger));
        let (s3, offline) = store::open_offline(&dir.path().join("a.redb")).unwrap();
        assert_eq!(offline.verify(&s3, |_, _, _, _| {}).unwrap().digest, report.digest);
    }
}
