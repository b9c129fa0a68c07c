//! The Raft log and the state machine, kept in one redb file per node.
//!
//! * The log (`raft_log`), the vote and the committed index
//!   (`raft_meta`) are written in one synced transaction before openraft
//!   is told they are durable: a node that voted or acknowledged entries
//!   remembers it after a crash.
//! * The state machine ([`MetaState`]) lives in memory and is rebuilt at
//!   start from the last snapshot plus the committed log after it
//!   (openraft re-applies it, because the committed index is saved). A
//!   snapshot is the whole state, encoded once, stored in `raft_snapshot`.
//! * The global ledger's entries are rows (see [`super::global`]), written
//!   durably as entries are applied; re-applying writes the same rows. The
//!   stored snapshot holds only the in-memory state; the one sent to a
//!   follower carries the entries below its heads as well.
//!
//! Every state the machine reaches is published on a `watch` channel:
//! that is how the broker learns about topics and clusters.

// openraft's traits fix the error type (`StorageError`, ~224 bytes); the
// helpers here return it too rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::global::{self, GlobalEntry};
use super::state_machine::{MetaCommand, MetaResponse, MetaState, NodeId};
use super::TypeConfig;
use crate::ledger::PartitionKey;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
const CURRENT: &str = "current";

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    postcard::to_stdvec(value).map_err(write_err)
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(read_err)
}

/// Opens (or creates) a node's Raft file and returns its two halves.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), redb::Error> {
    let db = Arc::new(Database::create(path)?);
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOT)?;
    global::create_tables(&txn)?;
    txn.commit()?;
    let log = LogStore { db: db.clone() };
    let sm = StateMachine::load(db).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    Ok((log, sm))
}

/// The Raft log, vote and committed index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn get_meta<T: for<'a> Deserialize<'a>>(&self, key: &str) -> StoreResult<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = encode(value)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(key, &bytes[..])
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in table.range::<u64>((start, end)).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = table.last().map_err(read_err)?;
            match last {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            for entry in entries {
                let bytes = encode(&entry)?;
                table.insert(entry.log_id.index, &bytes[..]).map_err(write_err)?;
            }
        }
        let result = txn.commit().map_err(write_err);
        // openraft learns the entries are durable only once they are.
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(LOG)
            .map_err(write_err)?
            .retain_in(log_id.index.., |_, _| false)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = encode(&log_id)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(PURGED, &bytes[..])
            .map_err(write_err)?;
        txn.open_table(LOG)
            .map_err(write_err)?
            .retain_in(..=log_id.index, |_, _| false)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }
}

/// A stopped node's Raft state, read from its file: the last snapshot plus
/// every committed entry after it, applied as the node would at its next
/// start (global-ledger rows included). For `courier ledger verify
/// --global` and `courier message locate`; the node must not be running.
pub fn open_offline(path: &Path) -> Result<(MetaState, global::GlobalLedger), StorageError<NodeId>> {
    let db = Database::open(path).map_err(read_err)?;
    let (log, sm) = {
        let db = Arc::new(db);
        let txn = db.begin_write().map_err(write_err)?;
        global::create_tables(&txn).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        (LogStore { db: db.clone() }, StateMachine::load(db)?)
    };
    let committed: Option<LogId<NodeId>> = log.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten();
    let from = sm.lock().last_applied.map_or(0, |l| l.index + 1);
    if let Some(committed) = committed.filter(|c| c.index >= from) {
        let entries = {
            let txn = log.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for row in table.range(from..=committed.index).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(decode::<Entry<TypeConfig>>(v.value())?);
            }
            out
        };
        sm.apply_entries(entries)?;
    }
    let state = sm.lock().state.clone();
    Ok((state, global::GlobalLedger::new(sm.db.clone())))
}

/// What a snapshot holds besides openraft's own metadata.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    /// The encoded [`Applied`].
    data: Vec<u8>,
}

/// The state machine's whole content, as a snapshot carries it.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: MetaState,
}

/// A snapshot's body: the state and, when it is to be installed elsewhere,
/// the global ledger's entries below the state's heads.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    applied: Applied,
    /// `None` in the body a build returns (openraft reads only its meta).
    global: Option<Vec<(PartitionKey, Vec<GlobalEntry>)>>,
}

/// The applied state, shared with its snapshot builder.
#[derive(Clone)]
pub struct StateMachine {
    applied: Arc<Mutex<Applied>>,
    db: Arc<Database>,
    /// Global-ledger rows found damaged, shared by every handle.
    damaged: global::DamagedRows,
    published: watch::Sender<Arc<MetaState>>,
    snapshots: Arc<Mutex<u64>>,
}

impl StateMachine {
    fn load(db: Arc<Database>) -> StoreResult<Self> {
        let mut applied = Applied::default();
        if let Some(snap) = read_snapshot(&db)? {
            applied = decode(&snap.data)?;
        }
        let (published, _) = watch::channel(Arc::new(applied.state.clone()));
        Ok(Self {
            applied: Arc::new(Mutex::new(applied)),
            db,
            damaged: Default::default(),
            published,
            snapshots: Arc::new(Mutex::new(0)),
        })
    }

    /// Every state the machine reaches, newest first.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetaState>> {
        self.published.subscribe()
    }

    /// The global ledger's rows.
    pub fn global(&self) -> global::GlobalLedger {
        global::GlobalLedger::with_damaged(self.db.clone(), self.damaged.clone())
    }

    /// The list of damaged global-ledger rows every handle shares.
    pub(crate) fn damaged_rows(&self) -> global::DamagedRows {
        self.damaged.clone()
    }

    /// Applies committed entries: the state in memory, the global ledger's
    /// rows on disk (durably, before anyone sees the new heads).
    fn apply_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> StoreResult<Vec<MetaResponse>> {
        let mut out = Vec::new();
        let mut rows: Vec<(PartitionKey, Vec<GlobalEntry>)> = Vec::new();
        let state = {
            let mut a = self.lock();
            for entry in entries {
                let span = tracing::debug_span!("raft_apply", index = entry.log_id.index);
                let _enter = span.enter();
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(MetaResponse {
                        version: a.state.version,
                        ..Default::default()
                    }),
                    EntryPayload::Normal(command) => {
                        let response = a.state.apply(&command);
                        if response.error_code == 0 {
                            if let MetaCommand::AppendGlobal { pk, entries } = command {
                                rows.push((pk, entries));
                            }
                        }
                        out.push(response);
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(MetaResponse {
                            version: a.state.version,
                            ..Default::default()
                        });
                    }
                }
            }
            if !rows.is_empty() {
                write_global_rows(&self.db, &rows)?;
            }
            Arc::new(a.state.clone())
        };
        self.published.send_replace(state);
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        // A panic while applying cannot leave half a command applied
        // (apply works on a clone-free, all-or-nothing `MetaState::apply`).
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_global_rows(db: &Database, rows: &[(PartitionKey, Vec<GlobalEntry>)]) -> StoreResult<()> {
    let txn = db.begin_write().map_err(write_err)?;
    for (pk, entries) in rows {
        global::write_rows(&txn, pk, entries).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

fn read_snapshot(db: &Database) -> StoreResult<Option<StoredSnapshot>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
    match table.get(CURRENT).map_err(read_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn write_snapshot(db: &Database, snap: &StoredSnapshot) -> StoreResult<()> {
    let bytes = encode(snap)?;
    let txn = db.begin_write().map_err(write_err)?;
    txn.open_table(SNAPSHOT)
        .map_err(write_err)?
        .insert(CURRENT, &bytes[..])
        .map_err(write_err)?;
    txn.commit().map_err(write_err)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let applied = self.lock().clone();
        let data = encode(&applied)?;
        let n = {
            let mut n = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };
        write_snapshot(&self.db, &stored)?;
        let body = encode(&SnapshotBody { applied, global: None })?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        let a = self.lock();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<MetaResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applying writes (and syncs) global-ledger rows: on a
        // multi-threaded runtime, other tasks move off this worker meanwhile.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.apply_entries(entries))
        } else {
            self.apply_entries(entries)
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = decode(&data)?;
        let mut applied = body.applied;
        // The meta is what the leader vouches for; the body must agree.
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        match body.global {
            Some(rows) => {
                write_global_rows(&self.db, &rows)?;
                // Rows the sender could not read sound are not in it: listed
                // as damaged here, they are repaired like this node's own.
                for (pk, head) in &applied.state.global {
                    let held: std::collections::BTreeSet<u64> = rows
                        .iter()
                        .filter(|(p, _)| p == pk)
                        .flat_map(|(_, entries)| entries.iter())
                        .filter_map(|e| crate::ledger::Block::head_only(&e.head).ok())
                        .map(|h| h.block.height)
                        .collect();
                    for height in (0..head.next_height).filter(|h| !held.contains(h)) {
                        global::note_damaged(&self.damaged, pk, height, "not in the snapshot installed");
                    }
                }
            }
            None if !applied.state.global.is_empty() => {
                return Err(read_err(
                    "a snapshot without its global-ledger entries cannot be installed",
                ));
            }
            None => {}
        }
        write_snapshot(
            &self.db,
            &StoredSnapshot {
                meta: meta.clone(),
                data: encode(&applied)?,
            },
        )?;
        let state = Arc::new(applied.state.clone());
        *self.lock() = applied;
        self.published.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let Some(stored) = read_snapshot(&self.db)? else {
            return Ok(None);
        };
        // The rows only grow and are the same on every node, so those below
        // the snapshot's heads are the snapshot's, whenever they are read.
        let applied: Applied = decode(&stored.data)?;
        let rows = global::dump(&self.db, &applied.state.global, &self.damaged).map_err(read_err)?;
        let body = encode(&SnapshotBody {
            applied,
            global: Some(rows),
        })?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(body)),
        }))
    }
}
