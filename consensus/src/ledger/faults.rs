//! A fault-injection hook in the storage layer: the ledger's redb file and
//! its payload log go through [`Faults`], which tests arm to make the next
//! writes or syncs fail as a full or failing disk would. Unarmed it costs
//! one atomic load per write or sync.

use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::StorageBackend;

/// Failures to inject, counted down as they happen.
#[derive(Default, Debug)]
pub struct Faults {
    /// The next this many writes (payload log or database) fail.
    pub fail_writes: AtomicU32,
    /// The next this many syncs (payload log or database) fail.
    pub fail_syncs: AtomicU32,
}

impl Faults {
    /// Makes the next `n` writes fail.
    pub fn fail_writes(&self, n: u32) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` syncs fail.
    pub fn fail_syncs(&self, n: u32) {
        self.fail_syncs.store(n, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.load(Ordering::Relaxed) > 0
            && counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }

    /// An injected write failure, if one is due (the error a full disk gives).
    pub fn write(&self) -> std::io::Result<()> {
        if Self::take(&self.fail_writes) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected write failure (no space left on device)",
            ));
        }
        Ok(())
    }

    /// An injected sync failure, if one is due.
    pub fn sync(&self) -> std::io::Result<()> {
        if Self::take(&self.fail_syncs) {
            return Err(std::io::Error::other("injected fsync failure (I/O error)"));
        }
        Ok(())
    }
}

/// redb's file backend with [`Faults`] in front of its writes and syncs.
pub struct GuardedBackend {
    pub inner: FileBackend,
    pub faults: Arc<Faults>,
}

impl fmt::Debug for GuardedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBackend").finish_non_exhaustive()
    }
}

impl StorageBackend for GuardedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.faults.write()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.faults.sync()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.faults.write()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
