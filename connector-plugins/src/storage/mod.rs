//! The storage-plugin contract: one organization's objects, addressed by
//! the SHA-256 of their content.
//!
//! A [`Storage`] belongs to one organization (its namespace is fixed when it
//! is opened, with that organization's credentials, which only that
//! organization's nodes hold). An object's name is its digest, so a name
//! can never point at other bytes than the ones it was made from: a put
//! computes the digest while it writes and the object becomes visible,
//! whole, under that name only when every byte is durable. Nothing is ever
//! visible half written, and two puts of the same bytes make one object.
//!
//! Reads are streamed and may be ranged. A plugin returns what its storage
//! holds; whoever serves it checks it against the digest the ledger
//! recorded (storage can rot, or be run by someone who alters it):
//! [`read_verified`] is that check for a whole object.

pub mod fs;
pub mod s3;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use fs::FsStorage;
pub use s3::{S3Credentials, S3Settings, S3Storage};

/// The SHA-256 of an object's content: its name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        Digest(out)
    }

    /// Lower-case hex, as objects are named.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

/// What a storage holds about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub digest: Digest,
    pub size: u64,
}

/// Why a storage operation failed. [`StorageError::is_retriable`] tells a
/// caller whether trying again may succeed (a produce answers with a
/// retriable Kafka error then).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} is not in this organization's storage")]
    NotFound(Digest),
    #[error("object {digest} holds {size} bytes; bytes {start}..{end} were asked for")]
    Range {
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
    },
    #[error("the content's SHA-256 is {got}, not the {want} expected")]
    DigestMismatch { want: Digest, got: Digest },
    #[error("the object is larger than the {max} bytes allowed")]
    TooLarge { max: u64 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("reading the content to store: {0}")]
    Source(std::io::Error),
    #[error("the storage is unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    /// Whether the same call may succeed later (the storage was down or
    /// full), as opposed to a request that cannot succeed as made.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StorageError::Io { .. } | StorageError::Unavailable(_))
    }
}

/// A byte stream read from storage.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// One organization's object storage.
pub trait Storage: Send + Sync {
    /// Stores what `content` yields (at most `size_max` bytes) and returns
    /// its digest and size. When `expected` is given, the object is stored
    /// only if its digest is that one. The object is visible only once
    /// every byte is durable; storing bytes already stored changes nothing.
    fn put(
        &self,
        content: &mut (dyn AsyncRead + Send + Unpin),
        expected: Option<Digest>,
        size_max: u64,
    ) -> impl Future<Output = Result<ObjectMeta, StorageError>> + Send;

    /// The object's bytes, all of them or the range asked for.
    fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> impl Future<Output = Result<ObjectReader, StorageError>> + Send;

    /// The object's size, if it is stored.
    fn stat(&self, digest: &Digest) -> impl Future<Output = Result<Option<ObjectMeta>, StorageError>> + Send;

    /// Removes the object; false when it was not stored.
    fn delete(&self, digest: &Digest) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Every object whose hex name starts with `prefix`, by name.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectMeta>, StorageError>> + Send;
}

/// The bytes `range` asks of an object of `size` bytes (all of them for
/// `None`), or why it cannot be served: a range past the end is an error,
/// never a short read.
pub(crate) fn checked_range(digest: &Digest, size: u64, range: Option<Range<u64>>) -> Result<Range<u64>, StorageError> {
    let r = range.unwrap_or(0..size);
    if r.start > r.end || r.end > size {
        return Err(StorageError::Range {
            digest: *digest,
            size,
            start: r.start,
            end: r.end,
        });
    }
    Ok(r)
}

/// The content of a put as it is read: hashed, counted and bounded, so
/// that every plugin names what it stores the same way.
pub(crate) struct Hashing<'r> {
    inner: &'r mut (dyn AsyncRead + Send + Unpin),
    hash: ring::digest::Context,
    size: u64,
    size_max: u64,
}

impl<'r> Hashing<'r> {
    pub(crate) fn new(inner: &'r mut (dyn AsyncRead + Send + Unpin), size_max: u64) -> Self {
        Self {
            inner,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
            size_max,
        }
    }

    /// Reads the next bytes into `buf` (0 at the end).
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        let n = self.inner.read(buf).await.map_err(StorageError::Source)?;
        self.size += n as u64;
        if self.size > self.size_max {
            return Err(StorageError::TooLarge { max: self.size_max });
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    /// What was read: its digest and size.
    pub(crate) fn finish(self) -> ObjectMeta {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(self.hash.finish().as_ref());
        ObjectMeta {
            digest: Digest(digest),
            size: self.size,
        }
    }
}

/// An organization's storage as a node's settings choose it: one of the
/// plugins, behind the one contract.
pub enum OrgStorage {
    Fs(FsStorage),
    S3(S3Storage),
}

impl Storage for OrgStorage {
    async fn put(
        &self,
        content: &mut (dyn AsyncRead + Send + Unpin),
        expected: Option<Digest>,
        size_max: u64,
    ) -> Result<ObjectMeta, StorageError> {
        match self {
            OrgStorage::Fs(s) => s.put(content, expected, size_max).await,
            OrgStorage::S3(s) => s.put(content, expected, size_max).await,
        }
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ObjectReader, StorageError> {
        match self {
            OrgStorage::Fs(s) => s.get(digest, range).await,
            OrgStorage::S3(s) => s.get(digest, range).await,
        }
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<ObjectMeta>, StorageError> {
        match self {
            OrgStorage::Fs(s) => s.stat(digest).await,
            OrgStorage::S3(s) => s.stat(digest).await,
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StorageError> {
        match self {
            OrgStorage::Fs(s) => s.delete(digest).await,
            OrgStorage::S3(s) => s.delete(digest).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        match self {
            OrgStorage::Fs(s) => s.list(prefix).await,
            OrgStorage::S3(s) => s.list(prefix).await,
        }
    }
}

/// Reads a whole object and checks it against its name before returning
/// it: what a node does before it serves an off-chain payload.
pub async fn read_verified<S: Storage>(storage: &S, digest: &Digest, size_max: u64) -> Result<Vec<u8>, StorageError> {
    let meta = storage.stat(digest).await?.ok_or(StorageError::NotFound(*digest))?;
    if meta.size > size_max {
        return Err(StorageError::TooLarge { max: size_max });
    }
    let mut reader = storage.get(digest, None).await?;
    let mut bytes = Vec::with_capacity(meta.size as usize);
    (&mut reader)
        .take(size_max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(StorageError::Source)?;
    if bytes.len() as u64 > size_max {
        return Err(StorageError::TooLarge { max: size_max });
    }
    let got = Digest::of(&bytes);
    if got != *digest {
        return Err(StorageError::DigestMismatch { want: *digest, got });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod contract;
