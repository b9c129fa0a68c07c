//! Where a connector's files live: a directory, or a prefix of a bucket.
//!
//! Names are relative paths (`a/b.bin`), each part a plain name (not
//! empty, not `.` or `..`, not starting with a dot): a record can never
//! name a file outside the place, and names starting with a dot are the
//! connector's own (`.courier-connect/` holds writes in progress).
//!
//! A write is atomic: a directory's file is written under
//! `.courier-connect/tmp/`, synced, renamed to its name and its directory
//! synced; a bucket's object becomes visible only when its upload
//! completes. A reader never sees part of a file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use futures::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::config::Location;
use super::ConnectError;

/// Bytes read or written at a time (and a bucket upload's part size).
pub const CHUNK_BYTES: usize = 8 << 20;
/// Where a directory keeps writes in progress.
const TMP_DIR: &str = ".courier-connect/tmp";

/// One file of a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    /// Changes whenever the file does (modification time, or ETag).
    pub version: String,
}

pub enum Place {
    Dir(PathBuf),
    Bucket { store: Arc<AmazonS3>, prefix: String },
}

/// Whether `name` is a relative path of plain parts.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && name
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains(['\\', '\0']))
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ConnectError + 'p {
    move |source| ConnectError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn store_error(e: object_store::Error) -> ConnectError {
    ConnectError::Storage(e.to_string())
}

static WRITES: AtomicU64 = AtomicU64::new(0);

impl Place {
    pub async fn open(location: &Location) -> Result<Self, ConnectError> {
        match location {
            Location::Dir(dir) => {
                let tmp = dir.join(TMP_DIR);
                tokio::fs::create_dir_all(&tmp).await.map_err(io("create", &tmp))?;
                // Writes a crashed runner left behind: never visible, now gone.
                if let Ok(mut entries) = tokio::fs::read_dir(&tmp).await {
                    while let Ok(Some(e)) = entries.next_entry().await {
                        let _ = tokio::fs::remove_file(e.path()).await;
                    }
                }
                Ok(Place::Dir(dir.clone()))
            }
            Location::Bucket { settings } => Ok(Place::Bucket {
                store: settings.store().map_err(|e| ConnectError::Storage(e.to_string()))?,
                prefix: settings.prefix.trim_matches('/').to_owned(),
            }),
        }
    }

    fn key(prefix: &str, name: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{prefix}/{name}"))
        }
    }

    /// Every file, by name.
    pub async fn list(&self) -> Result<Vec<Entry>, ConnectError> {
        let mut out = Vec::new();
        match self {
            Place::Dir(dir) => {
                let mut pending = vec![(dir.clone(), String::new())];
                while let Some((at, rel)) = pending.pop() {
                    let mut entries = tokio::fs::read_dir(&at).await.map_err(io("list", &at))?;
                    while let Some(e) = entries.next_entry().await.map_err(io("list", &at))? {
                        let Some(file) = e.file_name().to_str().map(str::to_owned) else {
                            continue;
                        };
                        let name = if rel.is_empty() { file } else { format!("{rel}/{file}") };
                        if !valid_name(&name) {
                            continue;
                        }
                        let Ok(meta) = e.metadata().await else { continue };
                        if meta.is_dir() {
                            pending.push((e.path(), name));
                        } else if meta.is_file() {
                            out.push(Entry {
                                name,
                                size: meta.len(),
                                version: format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
                            });
                        }
                    }
                }
            }
            Place::Bucket { store, prefix } => {
                let root = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
                let mut listing = store.list(root.as_ref());
                while let Some(m) = listing.try_next().await.map_err(store_error)? {
                    let full = m.location.as_ref();
                    let name = if prefix.is_empty() {
                        full
                    } else {
                        full.strip_prefix(prefix.as_str())
                            .and_then(|n| n.strip_prefix('/'))
                            .unwrap_or("")
                    };
                    if valid_name(name) {
                        out.push(Entry {
                            name: name.to_owned(),
                            size: m.size,
                            version: m.e_tag.unwrap_or_else(|| m.last_modified.to_rfc3339()),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The bytes of `name` from `start` on (at most `max` of them), with
    /// `progress` told of each chunk read.
    pub async fn read(
        &self,
        name: &str,
        start: u64,
        max: u64,
        mut progress: impl FnMut(&[u8]),
    ) -> Result<BytesMut, ConnectError> {
        match self {
            Place::Dir(dir) => {
                let path = dir.join(name);
                let mut f = tokio::fs::File::open(&path).await.map_err(io("open", &path))?;
                let len = f.metadata().await.map_err(io("stat", &path))?.len();
                let want = len.saturating_sub(start).min(max);
                f.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(io("seek", &path))?;
                // One byte more than expected, so a file that grew is seen
                // without the buffer regrowing.
                let mut out = BytesMut::with_capacity(usize::try_from(want).unwrap_or(usize::MAX).saturating_add(1));
                let mut f = f.take(want);
                loop {
                    let before = out.len();
                    let n = f.read_buf(&mut out).await.map_err(io("read", &path))?;
                    if n == 0 {
                        break;
                    }
                    progress(&out[before..]);
                }
                Ok(out)
            }
            Place::Bucket { store, prefix } => {
                let key = Self::key(prefix, name);
                let options = GetOptions {
                    range: Some(GetRange::Offset(start)),
                    ..Default::default()
                };
                let mut stream = store.get_opts(&key, options).await.map_err(store_error)?.into_stream();
                let mut out = BytesMut::new();
                while let Some(chunk) = stream.try_next().await.map_err(store_error)? {
                    let room = (max - out.len() as u64).min(chunk.len() as u64) as usize;
                    out.extend_from_slice(&chunk[..room]);
                    progress(&chunk[..room]);
                    if out.len() as u64 >= max {
                        break;
                    }
                }
                Ok(out)
            }
        }
    }

    /// Writes `content` as `name`, atomically, telling `progress` of each
    /// chunk written.
    pub async fn write(&self, name: &str, content: &[u8], mut progress: impl FnMut(usize)) -> Result<(), ConnectError> {
        match self {
            Place::Dir(dir) => {
                let target = dir.join(name);
                let parent = target.parent().unwrap_or(dir).to_owned();
                tokio::fs::create_dir_all(&parent)
                    .await
                    .map_err(io("create", &parent))?;
                let tmp = dir.join(TMP_DIR).join(format!(
                    "{}-{}",
                    std::process::id(),
                    WRITES.fetch_add(1, Ordering::Relaxed)
                ));
                let mut f = tokio::fs::File::create(&tmp).await.map_err(io("create", &tmp))?;
                for chunk in content.chunks(CHUNK_BYTES) {
                    f.write_all(chunk).await.map_err(io("write", &tmp))?;
                    progress(chunk.len());
                }
                f.sync_all().await.map_err(io("sync", &tmp))?;
                drop(f);
                tokio::fs::rename(&tmp, &target).await.map_err(io("rename", &target))?;
                sync_dir(&parent).await
            }
            Place::Bucket { store, prefix } => {
                let key = Self::key(prefix, name);
                if content.len() <= CHUNK_BYTES {
                    store
                        .put(&key, PutPayload::from(bytes::Bytes::copy_from_slice(content)))
                        .await
                        .map_err(store_error)?;
                    progress(content.len());
                    return Ok(());
                }
                let upload = store.put_multipart(&key).await.map_err(store_error)?;
                let mut upload = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
                for chunk in content.chunks(CHUNK_BYTES) {
                    upload.wait_for_capacity(4).await.map_err(store_error)?;
                    upload.write(chunk);
                    progress(chunk.len());
                }
                upload.finish().await.map_err(store_error)?;
                Ok(())
            }
        }
    }

    /// Writes `content` at byte `position` of `name` (a line of a file a
    /// source sends line by line: rewriting it after a restart writes the
    /// same bytes at the same place), durable after [`Place::sync`]. Only
    /// directories can.
    pub async fn write_at(&self, name: &str, position: u64, content: &[u8]) -> Result<(), ConnectError> {
        let Place::Dir(dir) = self else {
            return Err(ConnectError::Config(
                "records sent line by line need a FileSinkConnector (objects cannot be written in place)".into(),
            ));
        };
        let target = dir.join(name);
        let parent = target.parent().unwrap_or(dir).to_owned();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(io("create", &parent))?;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&target)
            .await
            .map_err(io("open", &target))?;
        f.seek(std::io::SeekFrom::Start(position))
            .await
            .map_err(io("seek", &target))?;
        f.write_all(content).await.map_err(io("write", &target))
    }

    /// Makes what [`Place::write_at`] wrote to `name` durable.
    pub async fn sync(&self, name: &str) -> Result<(), ConnectError> {
        if let Place::Dir(dir) = self {
            let target = dir.join(name);
            let f = tokio::fs::File::open(&target).await.map_err(io("open", &target))?;
            f.sync_data().await.map_err(io("sync", &target))?;
        }
        Ok(())
    }
}

async fn sync_dir(dir: &Path) -> Result<(), ConnectError> {
    let d = tokio::fs::File::open(dir).await.map_err(io("open", dir))?;
    d.sync_all().await.map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_place() {
        for ok in ["a", "a/b.bin", "x y/z"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "../a",
            "a/../b",
            ".hidden",
            "a/.courier-connect/x",
            "a\\b",
            "a//b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_directory_lists_reads_and_writes_whole_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let place = Place::open(&Location::Dir(tmp.path().to_owned())).await.expect("opens");
        let content = crate::storage::contract::pattern(3 * CHUNK_BYTES / 2, 7);
        let mut written = 0;
        place
            .write("sub/f.bin", &content, |n| written += n)
            .await
            .expect("writes");
        assert_eq!(written, content.len());
        let listed = place.list().await.expect("lists");
        assert_eq!(listed.len(), 1, "the write in progress is not listed: {listed:?}");
        assert_eq!(
            (listed[0].name.as_str(), listed[0].size),
            ("sub/f.bin", content.len() as u64)
        );
        let mut seen = 0;
        let got = place
            .read("sub/f.bin", 0, u64::MAX, |c| seen += c.len())
            .await
            .expect("reads");
        assert_eq!(&got[..], &content[..]);
        assert_eq!(seen, content.len());
        let tail = place.read("sub/f.bin", 10, 5, |_| {}).await.expect("reads");
        assert_eq!(&tail[..], &content[10..15]);
        place.write_at("lines.txt", 4, b"two\n").await.expect("writes");
        place.write_at("lines.txt", 0, b"one\n").await.expect("writes");
        place.sync("lines.txt").await.expect("syncs");
        assert_eq!(
            std::fs::read(tmp.path().join("lines.txt")).expect("read"),
            b"one\ntwo\n"
        );
    }
}
