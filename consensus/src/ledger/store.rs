//! The redb-backed ledger store.
//!
//! One database file holds every partition ledger of a node. A write is a
//! [`WriteSet`] — blocks of any number of partitions, with the producer state
//! and committed offsets they change — applied in one transaction, so a disk
//! sync is paid once per group of blocks, and a crash leaves either all of a
//! group or none of it.
//!
//! Tables (keys are big-endian so byte order is numeric order):
//! * `blocks`: partition key ‖ height → payload offset ‖ payload length ‖
//!   payload CRC-32C ‖ block hash ‖ block head (the canonical encoding
//!   without the batches, which live in the payload log, see
//!   [`super::payloads`]). Records written before the CRC existed lack it
//!   (the offset's top bit says which); their payloads are checked against
//!   the head's SHA-256 digest instead.
//!
//! Reads are verified. Every block read (fetch, state transfer, global
//! ledger, export) checks the head against the hash recorded beside it and
//! the payload against its CRC-32C, which the writer computed from the very
//! bytes it had checked against the head's digest; CRC-32C runs at memory
//! speed where SHA-256 would cost a consumer a third of its throughput. A
//! block that fails is never returned: the read fails with
//! [`StoreError::Damaged`], and the block is listed in [`LedgerStore::damaged`]
//! until [`LedgerStore::repair_block`] writes a good copy (one that a
//! replica fetched from its peers and proved against a certificate). The
//! scrubber and `courier ledger verify` check everything else: the full
//! digests, hash links and certificates.
//! * `offset_index`: partition key ‖ next_offset ‖ height → height ‖ running max timestamp
//! * `partitions`: partition key → [`PartitionState`]
//! * `producers`: partition key ‖ producer id → producer state
//! * `group_offsets`: len ‖ group ‖ partition key → [`CommittedOffset`]
//! * `certs`: partition key ‖ height → the block's quorum certificate
//!   (encoded by `pbft::wire`), for blocks ordered by a replica cluster
//! * `request_windows`: partition key ‖ origin replica → which request
//!   numbers from it the partition executed ([`RequestWindow`])
//! * `topics`: topic name → catalog record; `counters`: name → u64

use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::faults::{Faults, GuardedBackend};

use super::block::{Block, BlockHash, PartitionKey, SealedBlock};
use super::payloads::{PayloadLog, PayloadRef};
use crate::catalog::TopicRecord;
use crate::contract::{ProducerState, ProducerTable, RememberedBatch, RequestWindow};

const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");
const OFFSET_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("offset_index");
const PARTITIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("partitions");
const PRODUCERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("producers");
const GROUP_OFFSETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("group_offsets");
const CERTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("certs");
const REQUEST_WINDOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("request_windows");
const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// Counter: the payload log's committed end.
const PAYLOAD_END: &str = "payload_end";

/// Whether a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the commit returns: an acknowledged block survives power loss.
    Immediate,
    /// Leave syncing to the OS; a crash may lose the newest blocks.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database: {0}")]
    Db(#[from] redb::Error),
    #[error("ledger data is corrupt: {0}")]
    Corrupt(String),
    #[error("ledger file I/O: {0}")]
    Io(String),
    /// The database is closed for a moment: it is being reopened after a
    /// failed write (see [`LedgerStore::recover`]).
    #[error("the ledger is recovering from a failed write")]
    Unavailable,
    /// A stored block failed its check on read: never served.
    #[error("{0}")]
    Damaged(Damage),
}

/// What is wrong with a stored block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DamageKind {
    /// The head no longer hashes to the hash recorded beside it.
    Head,
    /// The batches no longer match their checksum (or digest).
    Payload,
    /// The payload could not be read at all.
    Unreadable,
    /// The block reads back as written but fails the chain's checks (its
    /// digest, link, offsets, batches or certificate): found by a scrub.
    Chain,
}

impl DamageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DamageKind::Head => "head",
            DamageKind::Payload => "payload",
            DamageKind::Unreadable => "unreadable",
            DamageKind::Chain => "chain",
        }
    }
}

/// A stored block found damaged on read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub pk: PartitionKey,
    pub height: u64,
    pub kind: DamageKind,
    pub detail: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stored block {} of partition {} is damaged ({}): {}",
            self.height,
            self.pk.partition,
            self.kind.as_str(),
            self.detail
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Where a partition's chain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// Height the next block will have (= number of blocks ever written).
    pub next_height: u64,
    /// The high watermark.
    pub next_offset: i64,
    pub last_hash: BlockHash,
    pub log_start_offset: i64,
    /// Largest record timestamp in the partition so far (-1 when empty).
    pub max_timestamp: i64,
}

impl PartitionState {
    pub const EMPTY: PartitionState = PartitionState {
        next_height: 0,
        next_offset: 0,
        last_hash: BlockHash::ZERO,
        log_start_offset: 0,
        max_timestamp: -1,
    };

    fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        let mut w = &mut b[..];
        w.put_u64(self.next_height);
        w.put_i64(self.next_offset);
        w.put_slice(&self.last_hash.0);
        w.put_i64(self.log_start_offset);
        w.put_i64(self.max_timestamp);
        b
    }

    fn decode(mut b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != 64 {
            return Err(StoreError::Corrupt(format!("partition state of {} bytes", b.len())));
        }
        let next_height = b.get_u64();
        let next_offset = b.get_i64();
        let mut h = [0u8; 32];
        b.copy_to_slice(&mut h);
        Ok(Self {
            next_height,
            next_offset,
            last_hash: BlockHash(h),
            log_start_offset: b.get_i64(),
            max_timestamp: b.get_i64(),
        })
    }
}

/// A consumer group's committed position in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
    /// Height of the block whose receipt recorded this commit.
    pub receipt_height: u64,
}

impl CommittedOffset {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.put_i64(self.offset);
        b.put_i32(self.leader_epoch);
        b.put_i64(self.commit_timestamp_ms);
        b.put_u64(self.receipt_height);
        if let Some(m) = &self.metadata {
            b.put_slice(m.as_bytes());
        }
        b
    }
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() < 28 {
            return Err(StoreError::Corrupt("committed offset truncated".into()));
        }
        let mut r = b;
        let offset = r.get_i64();
        let leader_epoch = r.get_i32();
        let commit_timestamp_ms = r.get_i64();
        let receipt_height = r.get_u64();
        let metadata = if r.is_empty() {
            None
        } else {
            Some(String::from_utf8(r.to_vec()).map_err(|_| StoreError::Corrupt("metadata not UTF-8".into()))?)
        };
        Ok(Self {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp_ms,
            receipt_height,
        })
    }
}

/// One producer's state on one partition, as written with a block.
#[derive(Clone, Debug)]
pub struct ProducerEntry {
    pub partition: PartitionKey,
    pub producer_id: i64,
    pub state: ProducerState,
}

/// Everything one commit writes.
#[derive(Default, Debug)]
pub struct WriteSet {
    /// Blocks in chain order per partition; each must extend its chain.
    pub blocks: Vec<SealedBlock>,
    pub producers: Vec<ProducerEntry>,
    pub offsets: Vec<(String, PartitionKey, CommittedOffset)>,
    /// Quorum certificates, by partition and the height of the block each
    /// certifies (that block and, through the hash chain, all below it).
    pub certs: Vec<(PartitionKey, u64, Bytes)>,
    /// Request windows that changed, by partition and origin replica.
    pub windows: Vec<(PartitionKey, u8, RequestWindow)>,
    /// Topics created or changed, then topics deleted with all their
    /// partitions' data (applied after the blocks).
    pub topic_puts: Vec<TopicRecord>,
    pub topic_deletes: Vec<TopicRecord>,
    /// The Raft state version the topics now reflect (written with them,
    /// so the store never holds topics of one version under another).
    pub catalog_version: Option<u64>,
}

/// The counter holding [`WriteSet::catalog_version`].
pub const CATALOG_VERSION: &str = "raft_catalog_version";

fn block_key(pk: &PartitionKey, height: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..].copy_from_slice(&height.to_be_bytes());
    k
}

fn index_key(pk: &PartitionKey, next_offset: i64, height: u64) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..28].copy_from_slice(&next_offset.to_be_bytes());
    k[28..].copy_from_slice(&height.to_be_bytes());
    k
}

/// The height in a `partition key ‖ height` key.
fn key_height(key: &[u8]) -> Result<u64, StoreError> {
    key.get(20..28)
        .and_then(|h| h.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("a key without a height".into()))
}

fn window_key(pk: &PartitionKey, origin: u8) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20] = origin;
    k
}

fn producer_key(pk: &PartitionKey, producer_id: i64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..20].copy_from_slice(&pk.to_bytes());
    k[20..].copy_from_slice(&producer_id.to_be_bytes());
    k
}

fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + group.len() + 20);
    k.put_u32(group.len() as u32);
    k.put_slice(group.as_bytes());
    k
}

/// The range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end.resize(prefix.len() + 64, 0xff);
    end
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn encode_producer(s: &ProducerState) -> Vec<u8> {
    let mut b = Vec::with_capacity(3 + 16 * s.recent.len());
    b.put_i16(s.epoch);
    b.put_u8(s.recent.len() as u8);
    for r in &s.recent {
        b.put_i32(r.first_sequence);
        b.put_i32(r.last_sequence);
        b.put_i64(r.base_offset);
    }
    b
}

fn decode_producer(mut b: &[u8]) -> Result<ProducerState, StoreError> {
    let bad = || StoreError::Corrupt("producer state".into());
    if b.len() < 3 {
        return Err(bad());
    }
    let epoch = b.get_i16();
    let n = b.get_u8() as usize;
    if b.len() != n * 16 {
        return Err(bad());
    }
    let recent = (0..n)
        .map(|_| RememberedBatch {
            first_sequence: b.get_i32(),
            last_sequence: b.get_i32(),
            base_offset: b.get_i64(),
        })
        .collect();
    Ok(ProducerState { epoch, recent })
}

/// Bytes of a `blocks` value before the head: offset, length, CRC, hash.
const BLOCK_RECORD_PREFIX_BYTES: usize = 8 + 4 + 4 + 32;
/// Bytes before the head in a record written before payload CRCs.
const BLOCK_RECORD_PREFIX_BYTES_V1: usize = 8 + 4 + 32;
/// Set in a record's offset field when a payload CRC follows the length.
const RECORD_HAS_CRC: u64 = 1 << 63;

/// A `blocks` value, parsed.
struct BlockRecord<'a> {
    payload: PayloadRef,
    /// CRC-32C of the payload (`None` in records written before it existed).
    crc: Option<u32>,
    hash: BlockHash,
    head: &'a [u8],
}

fn block_record(r: PayloadRef, crc: u32, hash: &BlockHash, head: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK_RECORD_PREFIX_BYTES + head.len());
    v.put_u64(r.offset | RECORD_HAS_CRC);
    v.put_u32(r.len);
    v.put_u32(crc);
    v.put_slice(&hash.0);
    v.put_slice(head);
    v
}

/// Splits a `blocks` value into payload location, checksum, recorded hash
/// and head.
fn parse_block_record(v: &[u8]) -> Result<BlockRecord<'_>, StoreError> {
    if v.len() < BLOCK_RECORD_PREFIX_BYTES_V1 {
        return Err(StoreError::Corrupt("block record truncated".into()));
    }
    let mut r = v;
    let offset = r.get_u64();
    let len = r.get_u32();
    let crc = if offset & RECORD_HAS_CRC != 0 {
        if r.len() < 4 + 32 {
            return Err(StoreError::Corrupt("block record truncated".into()));
        }
        Some(r.get_u32())
    } else {
        None
    };
    let mut h = [0u8; 32];
    r.copy_to_slice(&mut h);
    Ok(BlockRecord {
        payload: PayloadRef {
            offset: offset & !RECORD_HAS_CRC,
            len,
        },
        crc,
        hash: BlockHash(h),
        head: r,
    })
}

/// Bytes the recovery probe writes and syncs.
const PROBE_BYTES: usize = 64 << 10;
/// Tries at reopening the database while reads in flight still hold it.
const REOPEN_ATTEMPTS: u32 = 100;

/// Opens (or creates) the redb file through the fault-injection hook.
fn open_database(path: &Path, faults: &Arc<Faults>) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    Ok(redb::Builder::new().create_with_backend(GuardedBackend {
        inner: redb::backends::FileBackend::new(file)?,
        faults: faults.clone(),
    })?)
}

/// The payload log's committed end, as the database records it.
fn payload_end(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let counters = txn.open_table(COUNTERS)?;
    let end = counters.get(PAYLOAD_END)?.map(|v| v.value()).unwrap_or(0);
    Ok(end)
}

/// A node's ledger: redb for heads, indexes and state; the payload log for
/// record batches.
pub struct LedgerStore {
    path: std::path::PathBuf,
    /// `None` only while [`LedgerStore::recover`] reopens it.
    db: std::sync::RwLock<Option<Database>>,
    faults: Arc<Faults>,
    payloads: PayloadLog,
    durability: Durability,
    /// A write failed and [`LedgerStore::recover`] has not run since.
    needs_recovery: std::sync::atomic::AtomicBool,
    /// Whether reads check what they read (see [`LedgerStore::set_verify_reads`]).
    verify_reads: std::sync::atomic::AtomicBool,
    /// Serialises recoveries (the ledger's writer and the broker's store
    /// watch may both start one).
    recovering: std::sync::Mutex<()>,
    /// Blocks found damaged on read and not yet repaired.
    damaged: std::sync::Mutex<std::collections::BTreeMap<(PartitionKey, u64), Damage>>,
}

impl LedgerStore {
    /// Opens (or creates) the ledger at `path` (and its payload log beside
    /// it) and makes sure every table exists.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let faults = Arc::new(Faults::default());
        let db = open_database(path, &faults)?;
        let txn = db.begin_write()?;
        txn.open_table(BLOCKS)?;
        txn.open_table(OFFSET_INDEX)?;
        txn.open_table(PARTITIONS)?;
        txn.open_table(PRODUCERS)?;
        txn.open_table(GROUP_OFFSETS)?;
        txn.open_table(TOPICS)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(IDENTITY)?;
        txn.open_table(CERTS)?;
        txn.open_table(REQUEST_WINDOWS)?;
        txn.commit()?;
        let committed_end = payload_end(&db)?;
        let payloads = PayloadLog::open(&path.with_extension("payloads"), committed_end, faults.clone())?;
        Ok(Self {
            path: path.to_owned(),
            db: std::sync::RwLock::new(Some(db)),
            faults,
            payloads,
            durability,
            needs_recovery: Default::default(),
            verify_reads: std::sync::atomic::AtomicBool::new(true),
            recovering: Default::default(),
            damaged: Default::default(),
        })
    }

    /// Turns verified reads off (or on again): only to measure what they
    /// cost (`ledger.verify.reads`); off, a block the disk changed is
    /// served as it reads.
    pub fn set_verify_reads(&self, on: bool) {
        self.verify_reads.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The storage layer's fault-injection hook (see [`Faults`]).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        Ok(db.as_ref().ok_or(StoreError::Unavailable)?.begin_read()?)
    }

    /// Makes the store writable again after a failed write, once the disk
    /// takes writes again: a probe file beside the ledger is written and
    /// synced; then the database, which refuses everything after a failed
    /// write until reopened, is reopened (redb repairs it to its last
    /// durable commit), and the payload log's committed end is read back
    /// from it. Nothing that a failed commit wrote is visible afterwards:
    /// the callers drop what they held in memory beyond the disk and start
    /// again from what the store holds. Errs while the disk still fails
    /// (the caller tries again later).
    pub fn recover(&self) -> Result<(), StoreError> {
        let _one = self.recovering.lock().unwrap_or_else(|p| p.into_inner());
        let probe = self.path.with_extension("probe");
        let probed = (|| -> std::io::Result<()> {
            use std::io::Write;
            self.faults.write()?;
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(&[0u8; PROBE_BYTES])?;
            self.faults.sync()?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&probe);
        probed.map_err(|e| StoreError::Io(format!("the disk still fails a probe write: {e}")))?;
        let healthy = {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            db.as_ref().is_some_and(|db| db.begin_write().is_ok())
        };
        if !healthy {
            // Taken out (readers get `Unavailable` meanwhile, at once) and
            // dropped: its file lock goes once the reads in flight end. The
            // lock on the slot is never held while waiting.
            let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
            drop(old);
            let mut attempt = 0;
            let db = loop {
                match open_database(&self.path, &self.faults) {
                    Ok(db) => break db,
                    Err(e) if attempt < REOPEN_ATTEMPTS => {
                        tracing::debug!(error = %e, "ledger database not reopened yet");
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(e),
                }
            };
            self.payloads.reset(payload_end(&db)?)?;
            *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
            tracing::info!(path = %self.path.display(), "ledger database reopened after a failed write");
        }
        self.needs_recovery.store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Notes that a write failed: the store needs [`LedgerStore::recover`]
    /// (redb takes no more writes until it is reopened).
    fn write_failed(&self) {
        self.needs_recovery.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a write failed since the last recovery.
    pub fn needs_recovery(&self) -> bool {
        self.needs_recovery.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Commits a write transaction, noting a failure.
    fn finish(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(|e| {
            self.write_failed();
            e.into()
        })
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        let mut txn = db
            .as_ref()
            .ok_or(StoreError::Unavailable)?
            .begin_write()
            .inspect_err(|_| self.write_failed())?;
        txn.set_durability(match self.durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::None => redb::Durability::None,
        })?;
        Ok(txn)
    }

    /// Applies a write set in one transaction. Each block must extend its
    /// partition's chain (height, previous hash, base offset); a block that
    /// does not is a bug upstream and nothing is written.
    pub fn commit(&self, set: &WriteSet) -> Result<Vec<PartitionState>, StoreError> {
        self.apply(set, false)
    }

    /// Whether the blocks of `set` (a commit that failed) are what the
    /// store holds now: a failed fsync leaves it unknown whether a commit
    /// reached the disk, and after [`LedgerStore::recover`] the database
    /// may show it. `None` when the set has no blocks.
    pub fn holds(&self, set: &WriteSet) -> Result<Option<bool>, StoreError> {
        let Some(first) = set.blocks.first() else {
            return Ok(None);
        };
        let txn = self.read_txn()?;
        let table = txn.open_table(BLOCKS)?;
        let key = block_key(&first.block.partition, first.block.height);
        Ok(Some(match table.get(&key[..])? {
            Some(v) => parse_block_record(v.value())?.hash == first.hash,
            None => false,
        }))
    }

    /// Writes again, durably, a set whose commit failed in its fsync but
    /// which the store shows after recovery ([`LedgerStore::holds`]): the
    /// kernel may have dropped those pages while still showing them, so
    /// what a failed sync covered is never trusted. Every block must be the
    /// one stored at its height (same hash); its batches are appended anew
    /// and every row of the set written again, then synced.
    pub fn rewrite(&self, set: &WriteSet) -> Result<Vec<PartitionState>, StoreError> {
        self.apply(set, true)
    }

    fn apply(&self, set: &WriteSet, rewrite: bool) -> Result<Vec<PartitionState>, StoreError> {
        let payloads: Vec<&[u8]> = set.blocks.iter().map(|b| &b.block.batches[..]).collect();
        let (refs, payload_end) = self
            .payloads
            .append(&payloads, self.durability == Durability::Immediate)
            .inspect_err(|_| self.write_failed())?;
        let txn = self.begin_write()?;
        let mut states = Vec::with_capacity(set.blocks.len());
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let mut index = txn.open_table(OFFSET_INDEX)?;
            let mut partitions = txn.open_table(PARTITIONS)?;
            for (sealed, payload) in set.blocks.iter().zip(&refs) {
                let block = &sealed.block;
                let pk = block.partition.to_bytes();
                let mut state = match partitions.get(&pk[..])? {
                    Some(v) => PartitionState::decode(v.value())?,
                    None => PartitionState::EMPTY,
                };
                if rewrite {
                    let stored = blocks
                        .get(&block_key(&block.partition, block.height)[..])?
                        .map(|v| parse_block_record(v.value()).map(|r| r.hash))
                        .transpose()?;
                    if stored != Some(sealed.hash) {
                        return Err(StoreError::Corrupt(format!(
                            "block {} of {:?} to rewrite is not the one stored there",
                            block.height, block.partition
                        )));
                    }
                    // The chain as it stood before this block.
                    state = PartitionState {
                        next_height: block.height,
                        next_offset: block.base_offset,
                        last_hash: block.prev_hash,
                        ..state
                    };
                }
                if block.height != state.next_height
                    || block.prev_hash != state.last_hash
                    || block.base_offset != state.next_offset
                    || block.next_offset < block.base_offset
                {
                    return Err(StoreError::Corrupt(format!(
                        "block {} of {:?} does not extend the chain at height {}",
                        block.height, block.partition, state.next_height
                    )));
                }
                let hash = sealed.hash;
                debug_assert_eq!(hash, BlockHash::of(&sealed.head), "sealed hash is stale");
                let record = block_record(*payload, crc32c::crc32c(&block.batches), &hash, &sealed.head);
                blocks.insert(&block_key(&block.partition, block.height)[..], &record[..])?;
                let max_timestamp = state.max_timestamp.max(block.max_timestamp);
                let mut entry = [0u8; 16];
                entry[..8].copy_from_slice(&block.height.to_be_bytes());
                entry[8..].copy_from_slice(&max_timestamp.to_be_bytes());
                index.insert(
                    &index_key(&block.partition, block.next_offset, block.height)[..],
                    &entry[..],
                )?;
                let next = PartitionState {
                    next_height: block.height + 1,
                    next_offset: block.next_offset,
                    last_hash: hash,
                    log_start_offset: state.log_start_offset,
                    max_timestamp,
                };
                partitions.insert(&pk[..], &next.encode()[..])?;
                states.push(next);
            }
            let mut producers = txn.open_table(PRODUCERS)?;
            for p in &set.producers {
                producers.insert(
                    &producer_key(&p.partition, p.producer_id)[..],
                    &encode_producer(&p.state)[..],
                )?;
            }
            let mut offsets = txn.open_table(GROUP_OFFSETS)?;
            for (group, pk, committed) in &set.offsets {
                let mut key = group_prefix(group);
                key.extend_from_slice(&pk.to_bytes());
                offsets.insert(&key[..], &committed.encode()[..])?;
            }
            let mut certs = txn.open_table(CERTS)?;
            for (pk, height, cert) in &set.certs {
                certs.insert(&block_key(pk, *height)[..], &cert[..])?;
            }
            let mut windows = txn.open_table(REQUEST_WINDOWS)?;
            for (pk, origin, w) in &set.windows {
                windows.insert(&window_key(pk, *origin)[..], &w.encode()[..])?;
            }
            txn.open_table(COUNTERS)?.insert(PAYLOAD_END, payload_end)?;
        }
        // Deletes first: a name deleted and created again (a new id) in
        // one set keeps the new record.
        for t in &set.topic_deletes {
            remove_topic(&txn, t)?;
        }
        for t in &set.topic_puts {
            let json = serde_json::to_vec(t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            txn.open_table(TOPICS)?.insert(t.name.as_str(), &json[..])?;
        }
        if let Some(v) = set.catalog_version {
            txn.open_table(COUNTERS)?.insert(CATALOG_VERSION, v)?;
        }
        self.finish(txn)?;
        self.payloads.committed(payload_end);
        Ok(states)
    }

    pub fn partition_state(&self, pk: &PartitionKey) -> Result<PartitionState, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(PARTITIONS)?;
        match table.get(&pk.to_bytes()[..])? {
            Some(v) => PartitionState::decode(v.value()),
            None => Ok(PartitionState::EMPTY),
        }
    }

    /// Every block of a partition that carries receipts, as (height, hash,
    /// block without batches), read from the heads alone.
    pub fn receipt_blocks(&self, pk: &PartitionKey) -> Result<Vec<(u64, BlockHash, Block)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(BLOCKS)?;
        let prefix = pk.to_bytes();
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for row in table.range::<&[u8]>(&prefix[..]..&end[..])? {
            let (_, v) = row?;
            let BlockRecord { hash, head, .. } = parse_block_record(v.value())?;
            let block = Block::from_head(head).map_err(|e| StoreError::Corrupt(format!("block head: {e}")))?;
            if !block.receipts.is_empty() {
                out.push((block.height, hash, block));
            }
        }
        Ok(out)
    }

    /// Every partition that has at least one block.
    pub fn partitions(&self) -> Result<Vec<(PartitionKey, PartitionState)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(PARTITIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let pk = PartitionKey::from_bytes(k.value()).ok_or_else(|| StoreError::Corrupt("partition key".into()))?;
            out.push((pk, PartitionState::decode(v.value())?));
        }
        Ok(out)
    }

    /// The newest quorum certificate stored for a partition: (height, bytes).
    pub fn last_cert(&self, pk: &PartitionKey) -> Result<Option<(u64, Bytes)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(CERTS)?;
        let prefix = pk.to_bytes();
        let end = prefix_end(&prefix);
        let last = table.range::<&[u8]>(&prefix[..]..&end[..])?.next_back();
        match last {
            None => Ok(None),
            Some(row) => {
                let (k, v) = row?;
                let height = key_height(k.value())?;
                Ok(Some((height, Bytes::copy_from_slice(v.value()))))
            }
        }
    }

    /// The stored certificates of a partition from `from_height` on, by height.
    pub fn certs_from(
        &self,
        pk: &PartitionKey,
        from_height: u64,
    ) -> Result<std::collections::BTreeMap<u64, Bytes>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(CERTS)?;
        let start = block_key(pk, from_height);
        let end = block_key(pk, u64::MAX);
        let mut out = std::collections::BTreeMap::new();
        for row in table.range::<&[u8]>(&start[..]..=&end[..])? {
            let (k, v) = row?;
            let height = key_height(k.value())?;
            out.insert(height, Bytes::copy_from_slice(v.value()));
        }
        Ok(out)
    }

    /// The hash of each block from `from_height` on, in order.
    pub fn block_hashes_from(&self, pk: &PartitionKey, from_height: u64) -> Result<Vec<(u64, BlockHash)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(BLOCKS)?;
        let start = block_key(pk, from_height);
        let end = block_key(pk, u64::MAX);
        let mut out = Vec::new();
        for row in table.range::<&[u8]>(&start[..]..=&end[..])? {
            let (k, v) = row?;
            let height = key_height(k.value())?;
            let hash = parse_block_record(v.value())?.hash;
            out.push((height, hash));
        }
        Ok(out)
    }

    /// Request windows of a partition, by origin replica.
    pub fn request_windows(
        &self,
        pk: &PartitionKey,
    ) -> Result<std::collections::BTreeMap<u8, RequestWindow>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(REQUEST_WINDOWS)?;
        let prefix = pk.to_bytes();
        let end = prefix_end(&prefix);
        let mut out = std::collections::BTreeMap::new();
        for row in table.range::<&[u8]>(&prefix[..]..&end[..])? {
            let (k, v) = row?;
            let origin = *k
                .value()
                .get(20)
                .ok_or_else(|| StoreError::Corrupt("request window key".into()))?;
            let w = RequestWindow::decode(v.value()).ok_or_else(|| StoreError::Corrupt("request window".into()))?;
            out.insert(origin, w);
        }
        Ok(out)
    }

    pub fn producers(&self, pk: &PartitionKey) -> Result<ProducerTable, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(PRODUCERS)?;
        let prefix = pk.to_bytes();
        let end = prefix_end(&prefix);
        let mut out = ProducerTable::new();
        for row in table.range::<&[u8]>(&prefix[..]..&end[..])? {
            let (k, v) = row?;
            let key = k.value();
            if key.len() != 28 {
                return Err(StoreError::Corrupt("producer key".into()));
            }
            let id = i64::from_be_bytes(
                key[20..28]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("producer id".into()))?,
            );
            out.insert(id, decode_producer(v.value())?);
        }
        Ok(out)
    }

    /// The canonical bytes of the block at `height`, reassembled from its
    /// head and its payload, both verified (for state transfer,
    /// verification and export; fetches use [`LedgerStore::read_from`],
    /// which does not copy them together).
    pub fn block(&self, pk: &PartitionKey, height: u64) -> Result<Option<Bytes>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(BLOCKS)?;
        let Some(v) = table.get(&block_key(pk, height)[..])? else {
            return Ok(None);
        };
        let record = parse_block_record(v.value())?;
        let batches = self.verified_payload(pk, height, &record)?;
        let mut out = Vec::with_capacity(record.head.len() + batches.len());
        out.extend_from_slice(record.head);
        out.extend_from_slice(&batches);
        Ok(Some(Bytes::from(out)))
    }

    /// The head of the block at `height` (its batches empty) and its hash,
    /// the head checked against the recorded hash; the payload is not read.
    pub fn block_head(&self, pk: &PartitionKey, height: u64) -> Result<Option<(Block, BlockHash)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(BLOCKS)?;
        let Some(v) = table.get(&block_key(pk, height)[..])? else {
            return Ok(None);
        };
        let record = parse_block_record(v.value())?;
        self.check_head(pk, height, &record)?;
        let block = Block::from_head(record.head)
            .map_err(|e| self.damage(pk, height, DamageKind::Head, format!("the head does not decode: {e}")))?;
        Ok(Some((block, record.hash)))
    }

    /// The block at `height`, its batches read straight from the payload log.
    fn load_block(
        &self,
        blocks: &redb::ReadOnlyTable<&[u8], &[u8]>,
        pk: &PartitionKey,
        height: u64,
    ) -> Result<Block, StoreError> {
        let v = blocks
            .get(&block_key(pk, height)[..])?
            .ok_or_else(|| StoreError::Corrupt(format!("index names missing block {height}")))?;
        let record = parse_block_record(v.value())?;
        let batches = self.verified_payload(pk, height, &record)?;
        Block::from_parts(record.head, batches).map_err(|e| {
            self.damage(
                pk,
                height,
                DamageKind::Head,
                format!("the head does not announce its payload: {e}"),
            )
        })
    }

    /// Checks that a record's head hashes to the block hash recorded beside it.
    fn check_head(&self, pk: &PartitionKey, height: u64, record: &BlockRecord<'_>) -> Result<(), StoreError> {
        if BlockHash::of(record.head) != record.hash {
            return Err(self.damage(
                pk,
                height,
                DamageKind::Head,
                "the head does not hash to the recorded block hash".into(),
            ));
        }
        Ok(())
    }

    /// Checks a record's head against its recorded hash, reads its payload
    /// and checks it against the recorded CRC-32C (or, in a record from
    /// before CRCs, against the head's SHA-256 digest).
    fn verified_payload(&self, pk: &PartitionKey, height: u64, record: &BlockRecord<'_>) -> Result<Bytes, StoreError> {
        if !self.verify_reads.load(std::sync::atomic::Ordering::Relaxed) {
            return self
                .payloads
                .read(record.payload)
                .map_err(|e| self.damage(pk, height, DamageKind::Unreadable, e.to_string()));
        }
        self.check_head(pk, height, record)?;
        let batches = match self.payloads.read(record.payload) {
            Ok(b) => b,
            Err(e) => return Err(self.damage(pk, height, DamageKind::Unreadable, e.to_string())),
        };
        let sound = match record.crc {
            Some(crc) => crc32c::crc32c(&batches) == crc,
            None => Block::head_only(record.head).is_ok_and(|h| BlockHash::of(&batches) == h.batches_digest),
        };
        if !sound {
            return Err(self.damage(
                pk,
                height,
                DamageKind::Payload,
                format!(
                    "the {} bytes at {} in the payload log do not match their checksum",
                    record.payload.len, record.payload.offset
                ),
            ));
        }
        Ok(batches)
    }

    /// Records damage found on read (logged once per block until repaired)
    /// and returns the error to answer the read with.
    fn damage(&self, pk: &PartitionKey, height: u64, kind: DamageKind, detail: String) -> StoreError {
        StoreError::Damaged(self.mark_damaged(pk, height, kind, detail))
    }

    /// Lists a block as damaged (found so on read, or by a scrub that saw
    /// it fail the chain's checks) until a repair replaces it; logged once.
    pub fn mark_damaged(&self, pk: &PartitionKey, height: u64, kind: DamageKind, detail: String) -> Damage {
        let d = Damage {
            pk: *pk,
            height,
            kind,
            detail,
        };
        let mut damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::btree_map::Entry::Vacant(slot) = damaged.entry((*pk, height)) {
            tracing::error!(
                topic_id = %base64_url(&pk.topic_id),
                partition = pk.partition,
                height,
                what = kind.as_str(),
                detail = %d.detail,
                "stored block damaged: it is not served until repaired"
            );
            slot.insert(d.clone());
        }
        d
    }

    /// Blocks found damaged and not yet repaired, in partition and height order.
    pub fn damaged(&self) -> Vec<Damage> {
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Replaces the stored copy of the block at `block`'s height with
    /// `block`, whose hash the caller proved (a certificate and the hash
    /// chain down from it). The payload is written anew at the log's end
    /// (the damaged bytes stay where they were, unreferenced) and synced
    /// before the record points at it. The block must be the one stored
    /// there: same place in the chain, same hash as recorded, unless the
    /// recorded hash is itself what was damaged, in which case the
    /// successor's link must name it.
    pub fn repair_block(&self, block: &SealedBlock) -> Result<(), StoreError> {
        let pk = block.block.partition;
        let height = block.block.height;
        {
            let txn = self.read_txn()?;
            let table = txn.open_table(BLOCKS)?;
            let Some(v) = table.get(&block_key(&pk, height)[..])? else {
                return Err(StoreError::Corrupt(format!("no block {height} to repair")));
            };
            let record = parse_block_record(v.value())?;
            if record.hash != block.hash {
                // The recorded hash may be the damaged part: the next block
                // (or the partition's state, for the last one) must link to
                // the replacement.
                let linked = match table.get(&block_key(&pk, height + 1)[..])? {
                    Some(next) => {
                        let next = parse_block_record(next.value())?;
                        Block::from_head(next.head).is_ok_and(|b| b.prev_hash == block.hash)
                    }
                    None => self.partition_state(&pk)?.last_hash == block.hash,
                };
                if !linked {
                    return Err(StoreError::Corrupt(format!(
                        "the replacement for block {height} is not the block the chain links to"
                    )));
                }
            }
        }
        let (refs, payload_end) = self
            .payloads
            .append(&[&block.block.batches[..]], self.durability == Durability::Immediate)
            .inspect_err(|_| self.write_failed())?;
        let txn = self.begin_write()?;
        {
            let record = block_record(refs[0], crc32c::crc32c(&block.block.batches), &block.hash, &block.head);
            txn.open_table(BLOCKS)?
                .insert(&block_key(&pk, height)[..], &record[..])?;
            txn.open_table(COUNTERS)?.insert(PAYLOAD_END, payload_end)?;
        }
        self.finish(txn)?;
        self.payloads.committed(payload_end);
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(pk, height));
        Ok(())
    }

    /// Blocks holding records at or after `offset`, in order, until their
    /// batches add up to at least `max_bytes` (at least one block is returned
    /// when any exists, so a record larger than `max_bytes` still makes progress).
    /// A damaged block ends the read: the blocks before it are returned,
    /// and when it is the first, the read fails with [`StoreError::Damaged`].
    pub fn read_from(&self, pk: &PartitionKey, offset: i64, max_bytes: usize) -> Result<Vec<Block>, StoreError> {
        let txn = self.read_txn()?;
        let index = txn.open_table(OFFSET_INDEX)?;
        let blocks = txn.open_table(BLOCKS)?;
        let start = index_key(pk, offset.saturating_add(1), 0);
        let end = index_key(pk, i64::MAX, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in index.range::<&[u8]>(&start[..]..=&end[..])? {
            let (_, v) = row?;
            let height = u64::from_be_bytes(
                v.value()
                    .get(..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("index".into()))?,
            );
            let block = match self.load_block(&blocks, pk, height) {
                Ok(b) => b,
                Err(StoreError::Damaged(_)) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            if block.batches.is_empty() {
                continue;
            }
            bytes += block.batches.len();
            out.push(block);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The first block whose running maximum timestamp reaches `timestamp`:
    /// the earliest block that can hold a record with a timestamp at or after it.
    pub fn first_block_reaching(&self, pk: &PartitionKey, timestamp: i64) -> Result<Option<Block>, StoreError> {
        let txn = self.read_txn()?;
        let index = txn.open_table(OFFSET_INDEX)?;
        let prefix = pk.to_bytes();
        let end = prefix_end(&prefix);
        for row in index.range::<&[u8]>(&prefix[..]..&end[..])? {
            let (_, v) = row?;
            let v = v.value();
            if v.len() != 16 {
                return Err(StoreError::Corrupt("index entry".into()));
            }
            let height = u64::from_be_bytes(v[..8].try_into().map_err(|_| StoreError::Corrupt("index".into()))?);
            let running_max = i64::from_be_bytes(v[8..].try_into().map_err(|_| StoreError::Corrupt("index".into()))?);
            if running_max >= timestamp {
                let blocks = txn.open_table(BLOCKS)?;
                let b = self.load_block(&blocks, pk, height)?;
                if !b.batches.is_empty() {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }

    pub fn committed_offsets(&self, group: &str) -> Result<Vec<(PartitionKey, CommittedOffset)>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(GROUP_OFFSETS)?;
        let prefix = group_prefix(group);
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for row in table.range::<&[u8]>(&prefix[..]..&end[..])? {
            let (k, v) = row?;
            let pk = PartitionKey::from_bytes(&k.value()[prefix.len()..])
                .ok_or_else(|| StoreError::Corrupt("group offset key".into()))?;
            out.push((pk, CommittedOffset::decode(v.value())?));
        }
        Ok(out)
    }

    /// Every group that has committed offsets.
    pub fn groups_with_offsets(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(GROUP_OFFSETS)?;
        let mut out: Vec<String> = Vec::new();
        for row in table.iter()? {
            let (k, _) = row?;
            let mut k = k.value();
            if k.len() < 4 {
                return Err(StoreError::Corrupt("group key".into()));
            }
            let n = k.get_u32() as usize;
            let name = k.get(..n).ok_or_else(|| StoreError::Corrupt("group key".into()))?;
            let name = String::from_utf8_lossy(name).into_owned();
            if out.last() != Some(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    pub fn delete_group_offsets(&self, group: &str) -> Result<usize, StoreError> {
        let txn = self.begin_write()?;
        let n;
        {
            let mut table = txn.open_table(GROUP_OFFSETS)?;
            let prefix = group_prefix(group);
            let end = prefix_end(&prefix);
            let keys: Vec<Vec<u8>> = table
                .range::<&[u8]>(&prefix[..]..&end[..])?
                .map(|r| r.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()?;
            n = keys.len();
            for k in keys {
                table.remove(&k[..])?;
            }
        }
        self.finish(txn)?;
        Ok(n)
    }

    /// A named counter's value (0 if it was never set).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let counters = txn.open_table(COUNTERS)?;
        let value = counters.get(name)?.map(|v| v.value()).unwrap_or(0);
        Ok(value)
    }

    /// Increments a named counter and returns its new value (durably).
    pub fn bump_counter(&self, name: &str) -> Result<u64, StoreError> {
        let txn = self.begin_write()?;
        let value;
        {
            let mut counters = txn.open_table(COUNTERS)?;
            value = counters.get(name)?.map(|v| v.value()).unwrap_or(0) + 1;
            counters.insert(name, value)?;
        }
        self.finish(txn)?;
        Ok(value)
    }

    /// Hands out the next producer id (persisted before it is returned).
    pub fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        let txn = self.begin_write()?;
        let id;
        {
            let mut counters = txn.open_table(COUNTERS)?;
            // A fresh store (a new node, or one whose disk was replaced)
            // starts at the clock in microseconds, past every id an earlier
            // store of this node handed out (it would have had to hand out
            // more than one a microsecond): an id is never given twice,
            // so no producer inherits another's sequence numbers.
            id = match counters.get("next_producer_id")?.map(|v| v.value()) {
                Some(next) => next,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1000, |d| d.as_micros() as u64),
            };
            counters.insert("next_producer_id", id + 1)?;
        }
        self.finish(txn)?;
        Ok(id as i64)
    }

    /// This ledger's cluster id: 16 random bytes drawn when the database is
    /// first opened, shown as Kafka shows cluster ids (URL-safe base64).
    pub fn cluster_id(&self) -> Result<String, StoreError> {
        let txn = self.begin_write()?;
        let id = {
            let mut table = txn.open_table(IDENTITY)?;
            let existing = table.get("cluster_id")?.map(|v| v.value().to_vec());
            match existing {
                Some(id) => id,
                None => {
                    let mut id = [0u8; 16];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                        .map_err(|_| StoreError::Corrupt("no system randomness for the cluster id".into()))?;
                    table.insert("cluster_id", &id[..])?;
                    id.to_vec()
                }
            }
        };
        self.finish(txn)?;
        Ok(base64_url(&id))
    }

    /// Records a named identity value (e.g. the cluster's member keys).
    pub fn put_identity(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(IDENTITY)?.insert(name, value)?;
        self.finish(txn)?;
        Ok(())
    }

    pub fn identity(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(IDENTITY)?;
        let value = table.get(name)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(TOPICS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let t: TopicRecord = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("topic {}: {e}", k.value())))?;
            out.push(t);
        }
        Ok(out)
    }

    pub fn put_topic(&self, topic: &TopicRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(topic).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let txn = self.begin_write()?;
        txn.open_table(TOPICS)?.insert(topic.name.as_str(), &json[..])?;
        self.finish(txn)?;
        Ok(())
    }

    /// Removes a topic and every block, index entry, producer state and
    /// committed offset of its partitions, in one transaction.
    pub fn delete_topic(&self, topic: &TopicRecord) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        remove_topic(&txn, topic)?;
        self.finish(txn)?;
        Ok(())
    }
}

/// Removes a topic's record and every row of its partitions.
fn remove_topic(txn: &redb::WriteTransaction, topic: &TopicRecord) -> Result<(), StoreError> {
    txn.open_table(TOPICS)?.remove(topic.name.as_str())?;
    let prefix = topic.id.to_vec();
    let end = prefix_end(&prefix);
    for def in [BLOCKS, OFFSET_INDEX, PARTITIONS, PRODUCERS, CERTS, REQUEST_WINDOWS] {
        let mut table = txn.open_table(def)?;
        table.retain_in::<&[u8], _>(&prefix[..]..&end[..], |_, _| false)?;
    }
    let mut offsets = txn.open_table(GROUP_OFFSETS)?;
    offsets.retain(|k, _| k.len() < 20 || k[k.len() - 20..k.len() - 4] != topic.id)?;
    Ok(())
}

#[cfg(any(test, feature = "testing"))]
impl LedgerStore {
    /// Overwrites a stored block's bytes without any check: for tests that
    /// prove verification catches tampering.
    /// `bytes` must start with a well-formed head (anything may follow):
    /// what follows is appended to the payload log as the batches and the
    /// stored head replaced.
    pub fn tamper_block(&self, pk: &PartitionKey, height: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let n = Block::head_len(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (head, batches) = bytes.split_at(n);
        let (refs, end) = self.payloads.append(&[batches], true)?;
        let txn = self.begin_write()?;
        {
            let record = block_record(refs[0], crc32c::crc32c(batches), &BlockHash::of(head), head);
            txn.open_table(BLOCKS)?
                .insert(&block_key(pk, height)[..], &record[..])?;
            txn.open_table(COUNTERS)?.insert(PAYLOAD_END, end)?;
        }
        self.finish(txn)?;
        self.payloads.committed(end);
        Ok(())
    }
}

impl std::fmt::Debug for LedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStore")
            .field("durability", &self.durability)
            .finish()
    }
}
