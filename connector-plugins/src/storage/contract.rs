//! The contract every storage plugin keeps, as one test run against each
//! implementation.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::{read_verified, Digest, Storage, StorageError};
pub use crate::testing::pattern;

/// Yields `bytes` in small pieces, then fails: a source that breaks
/// mid-put (a client gone, a crash of the writer).
struct Breaks {
    bytes: Vec<u8>,
    at: usize,
}

impl AsyncRead for Breaks {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.at >= self.bytes.len() {
            return Poll::Ready(Err(std::io::Error::other("the source broke")));
        }
        let n = (self.bytes.len() - self.at).min(buf.remaining()).min(4096);
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn read_all<S: Storage>(s: &S, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    s.get(d, range).await.unwrap().read_to_end(&mut out).await.unwrap();
    out
}

pub async fn run<S: Storage>(s: &S) {
    const MAX: u64 = 64 << 20;
    // Round trips: empty, one byte, several chunks.
    let mut stored = Vec::new();
    for (len, seed) in [(0usize, 1u64), (1, 2), (3 << 20 | 17, 3)] {
        let bytes = pattern(len, seed);
        // Named beforehand (as the broker does) or not.
        let expected = (seed % 2 == 0).then(|| Digest::of(&bytes));
        let meta = s.put(&mut &bytes[..], expected, MAX).await.unwrap();
        assert_eq!((meta.digest, meta.size), (Digest::of(&bytes), len as u64));
        assert_eq!(read_all(s, &meta.digest, None).await, bytes);
        assert_eq!(s.stat(&meta.digest).await.unwrap(), Some(meta));
        assert_eq!(read_verified(s, &meta.digest, MAX).await.unwrap(), bytes);
        stored.push((meta, bytes));
    }
    // Ranged reads: the start, the middle, the end, an empty range; past
    // the end is an error, not a short read.
    let (big, bytes) = &stored[2];
    let size = big.size;
    for r in [0..10, 1000..(1 << 20) + 5, size - 7..size, 5..5] {
        assert_eq!(
            read_all(s, &big.digest, Some(r.clone())).await,
            bytes[r.start as usize..r.end as usize],
            "{r:?}"
        );
    }
    assert!(matches!(
        s.get(&big.digest, Some(size - 1..size + 1)).await,
        Err(StorageError::Range { .. })
    ));
    // An expected digest that is not the content's: nothing is stored.
    let other = pattern(1000, 4);
    let wrong = Digest::of(b"something else");
    assert!(matches!(
        s.put(&mut &other[..], Some(wrong), MAX).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&Digest::of(&other)).await.unwrap(), None);
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    // Larger than allowed, or a source that breaks mid-way: nothing is
    // visible, under any name.
    let before = s.list("").await.unwrap();
    assert!(matches!(
        s.put(&mut &other[..], None, 999).await,
        Err(StorageError::TooLarge { max: 999 })
    ));
    let mut breaks = Breaks {
        bytes: pattern(100_000, 5),
        at: 0,
    };
    assert!(matches!(
        s.put(&mut breaks, None, MAX).await,
        Err(StorageError::Source(_))
    ));
    assert_eq!(s.list("").await.unwrap(), before);
    // Concurrent puts of the same bytes make one intact object.
    let same = pattern(2 << 20, 6);
    let (mut r1, mut r2, mut r3, mut r4) = (&same[..], &same[..], &same[..], &same[..]);
    let (a, b, c, d) = tokio::join!(
        s.put(&mut r1, None, MAX),
        s.put(&mut r2, None, MAX),
        s.put(&mut r3, None, MAX),
        s.put(&mut r4, None, MAX)
    );
    let joined = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    assert!(joined.iter().all(|m| m.digest == Digest::of(&same)));
    let listed = s.list("").await.unwrap();
    assert_eq!(listed.len(), before.len() + 1);
    assert_eq!(read_verified(s, &Digest::of(&same), MAX).await.unwrap(), same);
    // Listing by prefix.
    let hex = big.digest.hex();
    for n in [1, 2, 5, 64] {
        let found = s.list(&hex[..n]).await.unwrap();
        assert!(found.iter().all(|m| m.digest.hex().starts_with(&hex[..n])));
        assert!(found.contains(big), "prefix of {n}");
    }
    assert!(s.list("zz").await.unwrap().is_empty());
    // Delete.
    assert!(s.delete(&big.digest).await.unwrap());
    assert!(!s.delete(&big.digest).await.unwrap());
    assert!(matches!(s.get(&big.digest, None).await, Err(StorageError::NotFound(_))));
    assert!(matches!(
        read_verified(s, &big.digest, MAX).await,
        Err(StorageError::NotFound(_))
    ));
}
