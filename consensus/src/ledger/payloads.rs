//! The payload log: record batches of committed blocks, appended back to
//! back in one file.
//!
//! Block heads, hashes and every index live in redb; the batches — nearly
//! all of a block's bytes — go here, because a durable redb commit of large
//! values writes them page by page (~150 MB/s measured on the development
//! VM), while one sequential write and `fdatasync` runs at disk speed
//! (~1.5 GB/s there). A round appends its blocks' batches, syncs, and only
//! then commits the redb transaction that points at them and records the
//! log's new committed end. On open, bytes past that end (a crash between
//! the two syncs) are cut off: they belong to no committed block.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::faults::Faults;
use super::store::StoreError;
use std::sync::Arc;

/// Where one block's batches sit in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRef {
    pub offset: u64,
    pub len: u32,
}

pub struct PayloadLog {
    file: File,
    /// End of the bytes that committed blocks point into. Readers check
    /// against it; appends start from it, so bytes of a commit that failed
    /// are simply overwritten by the next one.
    committed_end: AtomicU64,
    /// Serialises appends; never taken by readers, so a fetch does not wait
    /// for a commit's fdatasync.
    writer: Mutex<()>,
    faults: Arc<Faults>,
}

impl PayloadLog {
    /// Opens the log, cutting it back to `committed_end`.
    pub fn open(path: &Path, committed_end: u64, faults: Arc<Faults>) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < committed_end {
            return Err(StoreError::Corrupt(format!(
                "payload log {} holds {len} bytes but the ledger committed {committed_end}",
                path.display()
            )));
        }
        if len > committed_end {
            tracing::warn!(path = %path.display(), discarded = len - committed_end, "discarding uncommitted payload bytes");
            file.set_len(committed_end).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(Self {
            file,
            committed_end: AtomicU64::new(committed_end),
            writer: Mutex::new(()),
            faults,
        })
    }

    /// Appends `payloads` and, when `durable`, syncs them to disk. Returns
    /// where each landed and the new end, which the caller commits in redb.
    pub fn append(&self, payloads: &[&[u8]], durable: bool) -> Result<(Vec<PayloadRef>, u64), StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("payload log: {e}"));
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.committed_end.load(Ordering::Acquire);
        let mut at = start;
        let mut refs = Vec::with_capacity(payloads.len());
        for p in payloads {
            let len = u32::try_from(p.len()).map_err(|_| StoreError::Corrupt("block payload over 4 GiB".into()))?;
            self.faults.write().map_err(io)?;
            self.file.write_all_at(p, at).map_err(io)?;
            refs.push(PayloadRef { offset: at, len });
            at += p.len() as u64;
        }
        if durable && at > start {
            // A failed sync loses what it was to make durable (the kernel
            // may drop those pages): never retried here. Nothing points at
            // these bytes yet; the commit fails and they are written again.
            self.faults.sync().map_err(io)?;
            self.file.sync_data().map_err(io)?;
        }
        Ok((refs, at))
    }

    /// Takes the committed end the database records after it was reopened
    /// (a commit that failed may or may not have become durable).
    pub fn reset(&self, committed_end: u64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let len = self
            .file
            .metadata()
            .map_err(|e| StoreError::Io(format!("payload log: {e}")))?
            .len();
        if len < committed_end {
            return Err(StoreError::Corrupt(format!(
                "payload log holds {len} bytes but the ledger committed {committed_end}"
            )));
        }
        self.committed_end.store(committed_end, Ordering::Release);
        Ok(())
    }

    /// Records that the redb commit naming bytes up to `new_end` succeeded.
    /// Until then a failed commit simply lets the next append overwrite them.
    pub fn committed(&self, new_end: u64) {
        self.committed_end.store(new_end, Ordering::Release);
    }

    /// Reads one block's batches. A reference past the committed end (a
    /// corrupt record) is refused before anything is allocated for it.
    pub fn read(&self, r: PayloadRef) -> Result<Bytes, StoreError> {
        let end = self.committed_end.load(Ordering::Acquire);
        if r.offset.checked_add(r.len as u64).is_none_or(|e| e > end) {
            return Err(StoreError::Corrupt(format!(
                "payload reference {}+{} lies past the log's end {end}",
                r.offset, r.len
            )));
        }
        read_at(&self.file, r.offset, r.len as usize)
            .map(BytesMut::freeze)
            .map_err(|e| StoreError::Corrupt(format!("payload at {} ({} bytes) unreadable: {e}", r.offset, r.len)))
    }
}

/// Reads `len` bytes at `offset` into a new buffer without zeroing it first
/// (zeroing cost a consumer's fetch as much as the checksum now does).
#[allow(unsafe_code)]
fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<BytesMut> {
    use std::os::fd::AsRawFd;
    let mut buf = BytesMut::with_capacity(len);
    let mut done = 0;
    while done < len {
        let spare = &mut buf.spare_capacity_mut()[done..len];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("payload offset out of range"))?;
        // SAFETY: the pointer and length name capacity `buf` owns and no
        // reference covers (`spare` is `MaybeUninit`); pread writes at most
        // that many bytes there.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: pread initialised the first `len` bytes (checked above).
    unsafe { buf.set_len(len) };
    Ok(buf)
}
