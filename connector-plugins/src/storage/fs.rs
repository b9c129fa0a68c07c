//! The local filesystem as an organization's storage.
//!
//! Layout under the base directory: `<organization>/objects/<2 hex>/<64
//! hex>` for objects (256 shards, so no directory grows past a few
//! thousand entries per million objects), `<organization>/tmp/` for puts
//! in progress. A put writes a temporary file while it hashes, syncs it,
//! then renames it to the digest's name and syncs the directory: the name
//! appears only for whole, durable content, and a crash at any point
//! leaves at most a temporary file, which a later [`FsStorage::open`]
//! removes once nobody has written to it for a while.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{checked_range, Hashing};

use super::{Digest, ObjectMeta, ObjectReader, Storage, StorageError};

/// Bytes read from the source and written at a time by a put.
const PUT_CHUNK_BYTES: usize = 1 << 20;

/// A temporary file nobody wrote to for this long is a put that did not
/// finish (its writer crashed), removed at the next open.
const STALE_PUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Puts in progress in this process, to name their temporary files.
static PUTS: AtomicU64 = AtomicU64::new(0);

/// A number no other put of this process has, for a temporary name.
pub(crate) fn next_put() -> u64 {
    PUTS.fetch_add(1, Ordering::Relaxed)
}

pub struct FsStorage {
    objects: PathBuf,
    tmp: PathBuf,
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StorageError + 'p {
    move |source| StorageError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// An organization's name as a directory name: letters, digits, `-`, `_`
/// and `.`, not starting with a dot.
pub(crate) fn valid_organization(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl FsStorage {
    /// The storage of `organization` under `base` (created if missing).
    /// Temporary files a crash left behind are removed.
    pub async fn open(base: &Path, organization: &str) -> Result<Self, StorageError> {
        if !valid_organization(organization) {
            return Err(StorageError::Unavailable(format!(
                "{organization:?} is not an organization name a storage directory can have"
            )));
        }
        let root = base.join(organization);
        let (objects, tmp) = (root.join("objects"), root.join("tmp"));
        tokio::fs::create_dir_all(&objects)
            .await
            .map_err(io("create", &objects))?;
        tokio::fs::create_dir_all(&tmp).await.map_err(io("create", &tmp))?;
        // Another node of the organization may share the directory and be
        // in the middle of a put: only files no one has written to for a
        // while are leftovers.
        let mut stale = tokio::fs::read_dir(&tmp).await.map_err(io("list", &tmp))?;
        while let Some(entry) = stale.next_entry().await.map_err(io("list", &tmp))? {
            let idle = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok());
            if idle.is_some_and(|idle| idle >= STALE_PUT) {
                tracing::info!(path = %entry.path().display(), "removing a put that did not finish");
                tokio::fs::remove_file(entry.path()).await.map_err(io("remove", &tmp))?;
            }
        }
        Ok(Self { objects, tmp })
    }

    fn shard(&self, hex: &str) -> PathBuf {
        self.objects.join(&hex[..2])
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.shard(&hex).join(hex)
    }

    /// Writes `content` to `tmp`, hashing it; its digest and size.
    async fn write_tmp(
        &self,
        tmp: &Path,
        content: &mut (dyn AsyncRead + Send + Unpin),
        size_max: u64,
    ) -> Result<ObjectMeta, StorageError> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(io("create", tmp))?;
        let mut source = Hashing::new(content, size_max);
        let mut buf = vec![0u8; PUT_CHUNK_BYTES];
        loop {
            let n = source.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.map_err(io("write", tmp))?;
        }
        file.sync_all().await.map_err(io("sync", tmp))?;
        Ok(source.finish())
    }
}

/// Syncs a directory, so that a rename into it is durable.
async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = tokio::fs::File::open(dir).await.map_err(io("open", dir))?;
    d.sync_all().await.map_err(io("sync", dir))
}

impl Storage for FsStorage {
    async fn put(
        &self,
        content: &mut (dyn AsyncRead + Send + Unpin),
        expected: Option<Digest>,
        size_max: u64,
    ) -> Result<ObjectMeta, StorageError> {
        let n = next_put();
        let tmp = self.tmp.join(format!("{}-{n}.part", std::process::id()));
        let written = self.write_tmp(&tmp, content, size_max).await;
        let meta = match written {
            Ok(meta) if expected.is_none_or(|want| want == meta.digest) => meta,
            Ok(meta) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(StorageError::DigestMismatch {
                    want: expected.unwrap_or(meta.digest),
                    got: meta.digest,
                });
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let hex = meta.digest.hex();
        let shard = self.shard(&hex);
        let created = match tokio::fs::create_dir(&shard).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io("create", &shard)(e)),
        };
        let path = shard.join(&hex);
        // Same bytes, same name: a rename over an existing object replaces
        // it with identical content, atomically.
        tokio::fs::rename(&tmp, &path).await.map_err(io("rename", &path))?;
        sync_dir(&shard).await?;
        if created {
            sync_dir(&self.objects).await?;
        }
        Ok(meta)
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ObjectReader, StorageError> {
        let path = self.path(digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StorageError::NotFound(*digest)),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let size = file.metadata().await.map_err(io("stat", &path))?.len();
        let Range { start, end } = checked_range(digest, size, range)?;
        file.seek(SeekFrom::Start(start)).await.map_err(io("seek", &path))?;
        Ok(Box::pin(file.take(end - start)))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(ObjectMeta {
                digest: *digest,
                size: m.len(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StorageError> {
        let path = self.path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = prefix.to_ascii_lowercase();
        let mut out = Vec::new();
        let mut shards = tokio::fs::read_dir(&self.objects)
            .await
            .map_err(io("list", &self.objects))?;
        while let Some(shard) = shards.next_entry().await.map_err(io("list", &self.objects))? {
            let name = shard.file_name().to_string_lossy().into_owned();
            let relevant = if prefix.len() >= 2 {
                prefix.starts_with(&name)
            } else {
                name.starts_with(&prefix)
            };
            if !relevant {
                continue;
            }
            let dir = shard.path();
            let mut entries = tokio::fs::read_dir(&dir).await.map_err(io("list", &dir))?;
            while let Some(entry) = entries.next_entry().await.map_err(io("list", &dir))? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(digest) = Digest::from_hex(&name).filter(|_| name.starts_with(&prefix)) else {
                    continue;
                };
                let size = entry.metadata().await.map_err(io("stat", &dir))?.len();
                out.push(ObjectMeta { digest, size });
            }
        }
        out.sort_by_key(|m| m.digest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_filesystem_storage_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path(), "org-a").await.unwrap();
        crate::storage::contract::run(&storage).await;
    }

    /// A crash between writing and renaming leaves a temporary file only:
    /// no object is visible, and the next open removes it.
    #[tokio::test]
    async fn a_put_cut_short_by_a_crash_leaves_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path(), "org-a").await.unwrap();
        let left = dir.path().join("org-a/tmp/4242-0.part");
        std::fs::write(&left, b"half of an object").unwrap();
        assert!(storage.list("").await.unwrap().is_empty());
        assert_eq!(storage.stat(&Digest::of(b"half of an object")).await.unwrap(), None);
        drop(storage);
        // Written to a moment ago: maybe another node's put; kept.
        FsStorage::open(dir.path(), "org-a").await.unwrap();
        assert!(left.exists());
        let long_ago = std::time::SystemTime::now() - STALE_PUT - std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let storage = FsStorage::open(dir.path(), "org-a").await.unwrap();
        assert!(!left.exists(), "a later open removes it");
        assert!(storage.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn organizations_do_not_see_each_others_objects_and_names_stay_inside_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsStorage::open(dir.path(), "org-a").await.unwrap();
        let b = FsStorage::open(dir.path(), "org-b").await.unwrap();
        let meta = a.put(&mut &b"for org-a only"[..], None, 1 << 20).await.unwrap();
        assert_eq!(b.stat(&meta.digest).await.unwrap(), None);
        assert!(matches!(
            b.get(&meta.digest, None).await,
            Err(StorageError::NotFound(_))
        ));
        for bad in ["", "..", "../org-a", "a/b", ".hidden"] {
            assert!(FsStorage::open(dir.path(), bad).await.is_err(), "{bad:?}");
        }
    }
}
