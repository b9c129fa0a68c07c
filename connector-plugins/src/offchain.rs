//! A batch's large values into the sending organization's storage, and
//! back, checked.
//!
//! [`offload`] is what the producing node does with a batch of a topic
//! with `courier.offchain.threshold.bytes`: every value above the
//! threshold is stored (under its SHA-256, in this node's organization's
//! storage) and replaced by a descriptor; the batch that remains is what
//! the partition's replicas order and keep. [`restore`] is what the
//! consuming node does before serving such a batch: each value is fetched
//! (from its own storage, or from the sending organization's nodes) and
//! served only if its size and SHA-256 are the descriptor's. A value that
//! is missing or altered is never served: the whole batch is refused with
//! the reason.

use std::future::Future;

use bytes::Bytes;
use courier_protocol::offchain::{self, Descriptor, DescriptorError};
use courier_protocol::records::RecordsError;

use tokio::io::AsyncReadExt;

use crate::storage::{Digest, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("record {index} carries the courier.offchain header itself")]
    Forged { index: usize },
    #[error("storing a value: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("record {index}: {source}")]
    Descriptor { index: usize, source: DescriptorError },
    #[error("record {index}: the value of {organization}'s object {digest} cannot be had: {source}")]
    Unavailable {
        index: usize,
        organization: String,
        digest: Digest,
        source: Box<StorageError>,
    },
    #[error("record {index}: {organization} served {got_size} bytes hashing to {got}, not the {want_size} bytes hashing to {want} on the ledger")]
    Altered {
        index: usize,
        organization: String,
        want: Digest,
        want_size: u64,
        got: Digest,
        got_size: u64,
    },
}

/// Stores every value of `batch` longer than `threshold` bytes in
/// `storage` (the storage of `organization`, this node's) and returns the
/// batch with descriptors in their place; `None` when no value is that
/// long (the batch is kept as it is).
pub async fn offload<S: Storage>(
    batch: &Bytes,
    threshold: usize,
    decompressed_bytes_max: usize,
    storage: &S,
    organization: &str,
) -> Result<Option<Bytes>, OffloadError> {
    let (header, mut records) = offchain::decode(batch, decompressed_bytes_max)?;
    if let Some(index) = records.iter().position(|r| r.descriptor().is_some()) {
        return Err(OffloadError::Forged { index });
    }
    if !records
        .iter()
        .any(|r| r.value.as_ref().is_some_and(|v| v.len() > threshold))
    {
        return Ok(None);
    }
    for r in records.iter_mut() {
        let Some(value) = r.value.clone().filter(|v| v.len() > threshold) else {
            continue;
        };
        let digest = Digest::of(&value);
        let meta = storage.put(&mut &value[..], Some(digest), value.len() as u64).await?;
        offchain::to_descriptor(
            r,
            &Descriptor {
                digest: meta.digest.0,
                size: meta.size,
                organization: organization.to_owned(),
                locator: meta.digest.hex(),
            },
        )?;
    }
    Ok(Some(offchain::encode(&header, &records)))
}

/// The batch with every off-chain value put back, each fetched with
/// `fetch` (given the record's offset and descriptor) and checked against
/// its descriptor; `None` when the batch holds none.
pub async fn restore<F, Fut>(
    batch: &Bytes,
    decompressed_bytes_max: usize,
    mut fetch: F,
) -> Result<Option<Bytes>, RestoreError>
where
    F: FnMut(i64, Descriptor) -> Fut,
    Fut: Future<Output = Result<Bytes, StorageError>>,
{
    let (header, mut records) = offchain::decode(batch, decompressed_bytes_max)?;
    if records.iter().all(|r| r.descriptor().is_none()) {
        return Ok(None);
    }
    for (index, r) in records.iter_mut().enumerate() {
        let Some(d) = r.descriptor() else { continue };
        let d = d.map_err(|source| RestoreError::Descriptor { index, source })?;
        let (want, want_size, organization) = (Digest(d.digest), d.size, d.organization.clone());
        let offset = header.base_offset + i64::from(r.offset_delta);
        let value = fetch(offset, d).await.map_err(|source| RestoreError::Unavailable {
            index,
            organization: organization.clone(),
            digest: want,
            source: Box::new(source),
        })?;
        let got = Digest::of(&value);
        if got != want || value.len() as u64 != want_size {
            return Err(RestoreError::Altered {
                index,
                organization,
                want,
                want_size,
                got,
                got_size: value.len() as u64,
            });
        }
        offchain::restore(r, value);
    }
    Ok(Some(offchain::encode(&header, &records)))
}

/// How long `batch` becomes once [`restore`]d, from its descriptors'
/// sizes (without fetching anything); its own length when it holds none.
pub fn restored_len(batch: &Bytes, decompressed_bytes_max: usize) -> Result<u64, RestoreError> {
    let (_, records) = offchain::decode(batch, decompressed_bytes_max)?;
    let mut len = batch.len() as u64;
    for (index, r) in records.iter().enumerate() {
        if let Some(d) = r.descriptor() {
            let d = d.map_err(|source| RestoreError::Descriptor { index, source })?;
            len = len.saturating_add(d.size);
        }
    }
    Ok(len)
}

/// Fetches a value from this node's own organization's storage: at most
/// the descriptor's size and one byte more (so that a longer object shows
/// as altered), not hashed here: [`restore`] checks it, once.
pub async fn from_storage<S: Storage>(storage: &S, d: &Descriptor) -> Result<Bytes, StorageError> {
    let mut reader = storage.get(&Digest(d.digest), None).await?;
    // Room for the one byte past the size that shows a longer object, so
    // that reading to the end never regrows (and copies) the buffer.
    let mut value = Vec::with_capacity(d.size.saturating_add(1).min(1 << 30) as usize);
    (&mut reader)
        .take(d.size.saturating_add(1))
        .read_to_end(&mut value)
        .await
        .map_err(StorageError::Source)?;
    Ok(Bytes::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract::pattern;
    use crate::storage::FsStorage;
    use courier_protocol::records::{encode_batch, validate_batch, NewRecord, ProducerIds, RecordLimits};

    const MAX: usize = 64 << 20;

    fn batch(values: &[&[u8]]) -> Bytes {
        let records: Vec<NewRecord<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| NewRecord {
                key: Some(b"k"),
                value: Some(v),
                headers: &[(b"h", Some(b"x"))],
                timestamp_delta: i as i64,
            })
            .collect();
        encode_batch(
            1_700_000_000_000,
            ProducerIds {
                producer_id: 3,
                producer_epoch: 0,
                base_sequence: 12,
            },
            &records,
        )
    }

    /// Large values leave the batch for the organization's storage and come
    /// back byte for byte; a batch of small values is left alone.
    #[tokio::test]
    async fn large_values_leave_the_batch_and_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path(), "org-a").await.unwrap();
        let s = &storage;
        let (big, huge) = (pattern(10_000, 1), pattern(3 << 20, 2));
        let original = batch(&[b"small", &big, b"", &huge]);
        let stored = offload(&original, 1024, MAX, &storage, "org-a")
            .await
            .unwrap()
            .expect("two values go off-chain");
        assert!(
            stored.len() < 1024,
            "the ledger's batch holds descriptors: {} bytes",
            stored.len()
        );
        let limits = RecordLimits {
            batch_bytes_max: MAX,
            decompressed_bytes_max: MAX,
        };
        validate_batch(&stored, &limits).unwrap();
        assert_eq!(storage.list("").await.unwrap().len(), 2);
        assert_eq!(
            restored_len(&stored, MAX).unwrap(),
            stored.len() as u64 + big.len() as u64 + huge.len() as u64
        );
        let mut offsets = Vec::new();
        let served = restore(&stored, MAX, |offset, d| {
            offsets.push(offset);
            async move { from_storage(s, &d).await }
        })
        .await
        .unwrap()
        .expect("restored");
        assert_eq!(served, original, "the consumer gets the producer's batch");
        assert_eq!(offsets, [1, 3], "each value is asked for with its record's offset");
        let small = batch(&[b"a", b"b"]);
        assert!(offload(&small, 1024, MAX, &storage, "org-a").await.unwrap().is_none());
        assert!(restore(&small, MAX, |_, d| async move { from_storage(s, &d).await })
            .await
            .unwrap()
            .is_none());
    }

    /// What the storage altered or lost, or another organization served
    /// altered, is never served; a client's own descriptor is refused.
    #[tokio::test]
    async fn altered_missing_and_forged_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FsStorage::open(dir.path(), "org-a").await.unwrap();
        let s = &storage;
        let big = pattern(50_000, 3);
        let original = batch(&[&big]);
        let stored = offload(&original, 1024, MAX, &storage, "org-a").await.unwrap().unwrap();
        // A byte changed in the stored object.
        let digest = Digest::of(&big);
        let path = dir
            .path()
            .join("org-a/objects")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let got = restore(&stored, MAX, |_, d| async move { from_storage(s, &d).await }).await;
        assert!(matches!(&got, Err(RestoreError::Altered { index: 0, .. })), "{got:?}");
        // Another organization's node serving other bytes.
        let altered = Bytes::from(bytes);
        let got = restore(&stored, MAX, |_, _| {
            let altered = altered.clone();
            async move { Ok(altered) }
        })
        .await;
        assert!(matches!(&got, Err(RestoreError::Altered { index: 0, .. })), "{got:?}");
        // Gone.
        std::fs::remove_file(&path).unwrap();
        let got = restore(&stored, MAX, |_, d| async move { from_storage(s, &d).await }).await;
        assert!(
            matches!(
                &got,
                Err(RestoreError::Unavailable { source, .. }) if matches!(**source, StorageError::NotFound(_))
            ),
            "{got:?}"
        );
        // A client that sends a descriptor of its own.
        assert!(matches!(
            offload(&stored, 1024, MAX, &storage, "org-a").await,
            Err(OffloadError::Forged { index: 0 })
        ));
    }
}
