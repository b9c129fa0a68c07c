//! Off-chain values: a record's value replaced by a descriptor of where the
//! sending organization keeps it, and put back before a consumer sees it.
//!
//! A topic with `courier.offchain.threshold.bytes` keeps every record value
//! above the threshold in the producing organization's storage. The
//! producer's node stores the value, then rewrites the batch so that the
//! record's value is empty and a header [`OFFCHAIN_HEADER`] carries the
//! [`Descriptor`] (SHA-256, size, organization, locator); only that batch
//! is ordered and stored by the partition's replicas. A consumer's node
//! fetches the value, checks it against the digest, and rewrites the batch
//! back: the consumer receives the record as it was produced (offset,
//! key, headers, timestamp, value), in a batch with the producer's ids,
//! sequence numbers, timestamps and attributes, uncompressed.
//!
//! Rewriting a batch re-encodes its records and seals a new CRC-32C; the
//! fields the producer's idempotence and the consumer's offsets rest on
//! (base offset, offset deltas, record count, producer id, epoch, base
//! sequence, timestamps) are carried over unchanged. A client may not send
//! the header itself: [`reserved_header`] finds it, and the produce is
//! refused.

use bytes::{BufMut, Bytes, BytesMut};

use crate::records::{
    bytes_len, decompress, parse_records, put_bytes, put_header, put_varlong, seal_crc, varlong_len, BatchHeader,
    Compression, RecordsError, BATCH_HEADER_BYTES,
};

/// The record header that carries a descriptor.
pub const OFFCHAIN_HEADER: &[u8] = b"courier.offchain";
/// The descriptor encoding's version byte.
const DESCRIPTOR_V1: u8 = 1;
/// Longest organization name and locator a descriptor holds.
pub const DESCRIPTOR_FIELD_BYTES_MAX: usize = 1024;

/// Where an off-chain value is and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// SHA-256 of the value.
    pub digest: [u8; 32],
    /// The value's length in bytes.
    pub size: u64,
    /// The organization whose storage holds it.
    pub organization: String,
    /// Where in that storage (for the content-addressed plugins, the
    /// digest's hex: kept so that other plugins can name objects their way).
    pub locator: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("not a descriptor of a known version")]
    Version,
    #[error("the descriptor is truncated or has trailing bytes")]
    Length,
    #[error("a descriptor field is longer than {DESCRIPTOR_FIELD_BYTES_MAX} bytes")]
    FieldTooLong,
    #[error("a descriptor field is not UTF-8")]
    NotUtf8,
}

impl Descriptor {
    pub fn encode(&self) -> Result<Bytes, DescriptorError> {
        if self.organization.len() > DESCRIPTOR_FIELD_BYTES_MAX || self.locator.len() > DESCRIPTOR_FIELD_BYTES_MAX {
            return Err(DescriptorError::FieldTooLong);
        }
        let mut out = BytesMut::with_capacity(45 + self.organization.len() + self.locator.len());
        out.put_u8(DESCRIPTOR_V1);
        out.put_slice(&self.digest);
        out.put_u64(self.size);
        out.put_u16(self.organization.len() as u16);
        out.put_slice(self.organization.as_bytes());
        out.put_u16(self.locator.len() as u16);
        out.put_slice(self.locator.as_bytes());
        Ok(out.freeze())
    }

    pub fn decode(b: &[u8]) -> Result<Self, DescriptorError> {
        let (&version, rest) = b.split_first().ok_or(DescriptorError::Length)?;
        if version != DESCRIPTOR_V1 {
            return Err(DescriptorError::Version);
        }
        let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, DescriptorError> {
            if rest.len() < n {
                return Err(DescriptorError::Length);
            }
            let (a, b) = rest.split_at(n);
            *rest = b;
            Ok(a.to_vec())
        };
        let mut rest = rest;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&take(&mut rest, 32)?);
        let size = u64::from_be_bytes(take(&mut rest, 8)?.try_into().map_err(|_| DescriptorError::Length)?);
        let text = |rest: &mut &[u8]| -> Result<String, DescriptorError> {
            let n = u16::from_be_bytes(take(rest, 2)?.try_into().map_err(|_| DescriptorError::Length)?) as usize;
            if n > DESCRIPTOR_FIELD_BYTES_MAX {
                return Err(DescriptorError::FieldTooLong);
            }
            String::from_utf8(take(rest, n)?).map_err(|_| DescriptorError::NotUtf8)
        };
        let organization = text(&mut rest)?;
        let locator = text(&mut rest)?;
        if !rest.is_empty() {
            return Err(DescriptorError::Length);
        }
        Ok(Self {
            digest,
            size,
            organization,
            locator,
        })
    }
}

/// One record of a batch, owned (sharing the batch's bytes when it was
/// not compressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub attributes: u8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl Record {
    /// The descriptor this record carries, if it is off-chain.
    pub fn descriptor(&self) -> Option<Result<Descriptor, DescriptorError>> {
        self.headers
            .iter()
            .find(|(k, _)| &k[..] == OFFCHAIN_HEADER)
            .map(|(_, v)| Descriptor::decode(v.as_deref().unwrap_or_default()))
    }
}

/// A batch's header and records (decompressed, at most
/// `decompressed_bytes_max` bytes of them).
pub fn decode(batch: &Bytes, decompressed_bytes_max: usize) -> Result<(BatchHeader, Vec<Record>), RecordsError> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_bytes().min(batch.len());
    let body = batch.slice(BATCH_HEADER_BYTES.min(end)..end);
    let data = match header.compression()? {
        Compression::None => body,
        codec => Bytes::from(decompress(codec, &body, decompressed_bytes_max)?),
    };
    let slice = |v: &[u8]| data.slice_ref(v);
    let mut out = Vec::with_capacity(header.records_count.clamp(0, 1 << 16) as usize);
    parse_records(&data, header.records_count, |r| {
        out.push(Record {
            attributes: r.attributes,
            timestamp_delta: r.timestamp_delta,
            offset_delta: r.offset_delta,
            key: r.key.map(slice),
            value: r.value.map(slice),
            headers: r.headers().map(|(k, v)| (slice(k), v.map(slice))).collect(),
        });
        Ok(())
    })?;
    Ok((header, out))
}

/// A batch with `header`'s fields and `records`, uncompressed (the
/// compression bits cleared), with its length and CRC-32C set. Each value
/// is copied once, straight into the batch.
pub fn encode(header: &BatchHeader, records: &[Record]) -> Bytes {
    let lens: Vec<usize> = records.iter().map(record_len).collect();
    let body_len: usize = lens.iter().map(|l| varlong_len(*l as i64) + l).sum();
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body_len);
    put_header(
        &mut out,
        &BatchHeader {
            records_count: records.len() as i32,
            ..*header
        },
        body_len,
    );
    for (r, len) in records.iter().zip(lens) {
        put_varlong(&mut out, len as i64);
        out.put_u8(r.attributes);
        put_varlong(&mut out, r.timestamp_delta);
        put_varlong(&mut out, r.offset_delta as i64);
        put_bytes(&mut out, r.key.as_deref());
        put_bytes(&mut out, r.value.as_deref());
        put_varlong(&mut out, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(&mut out, Some(k));
            put_bytes(&mut out, v.as_deref());
        }
    }
    debug_assert_eq!(out.len(), BATCH_HEADER_BYTES + body_len);
    seal_crc(&mut out);
    out.freeze()
}

/// The bytes of one record's encoding after its length prefix.
fn record_len(r: &Record) -> usize {
    1 + varlong_len(r.timestamp_delta)
        + varlong_len(r.offset_delta as i64)
        + bytes_len(r.key.as_deref())
        + bytes_len(r.value.as_deref())
        + varlong_len(r.headers.len() as i64)
        + r.headers
            .iter()
            .map(|(k, v)| bytes_len(Some(k)) + bytes_len(v.as_deref()))
            .sum::<usize>()
}

/// Whether a client's record carries the header only a node may write.
pub fn reserved_header(records: &[Record]) -> bool {
    records
        .iter()
        .any(|r| r.headers.iter().any(|(k, _)| &k[..] == OFFCHAIN_HEADER))
}

/// Replaces a record's value by `descriptor`: an empty value, and the
/// descriptor header after the record's own headers.
pub fn to_descriptor(record: &mut Record, descriptor: &Descriptor) -> Result<(), DescriptorError> {
    record.value = Some(Bytes::new());
    record
        .headers
        .push((Bytes::from_static(OFFCHAIN_HEADER), Some(descriptor.encode()?)));
    Ok(())
}

/// Puts an off-chain record's value back (and takes its descriptor
/// header away): the record as the producer sent it.
pub fn restore(record: &mut Record, value: Bytes) {
    record.headers.retain(|(k, _)| &k[..] != OFFCHAIN_HEADER);
    record.value = Some(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{
        encode_batch, seal_crc, validate_batch, NewRecord, ProducerIds, RecordLimits, BATCH_LOG_OVERHEAD_BYTES,
    };
    use proptest::prelude::*;

    const LIMITS: RecordLimits = RecordLimits {
        batch_bytes_max: 1 << 24,
        decompressed_bytes_max: 1 << 24,
    };

    type Header<'a> = (&'a [u8], Option<&'a [u8]>);

    fn descriptor_of(value: &[u8]) -> Descriptor {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(fake_digest(value).as_slice());
        Descriptor {
            digest,
            size: value.len() as u64,
            organization: "org-a".into(),
            locator: "objects/ab".into(),
        }
    }

    /// Not a real hash (the protocol crate has none): enough for a test
    /// that needs repeatable descriptors of different values.
    fn fake_digest(value: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        for (i, b) in value.iter().enumerate() {
            d[i % 32] = d[i % 32].wrapping_mul(31).wrapping_add(*b);
        }
        d
    }

    #[test]
    fn descriptors_round_trip_and_bad_ones_are_refused() {
        let d = descriptor_of(b"value");
        let b = d.encode().unwrap();
        assert_eq!(Descriptor::decode(&b).unwrap(), d);
        assert_eq!(Descriptor::decode(&b[..b.len() - 1]), Err(DescriptorError::Length));
        let mut longer = b.to_vec();
        longer.push(0);
        assert_eq!(Descriptor::decode(&longer), Err(DescriptorError::Length));
        let mut v2 = b.to_vec();
        v2[0] = 2;
        assert_eq!(Descriptor::decode(&v2), Err(DescriptorError::Version));
        assert_eq!(Descriptor::decode(&[]), Err(DescriptorError::Length));
    }

    #[test]
    fn a_client_sending_the_descriptor_header_itself_is_found() {
        let forged = encode_batch(
            0,
            ProducerIds::NONE,
            &[NewRecord {
                key: None,
                value: Some(b""),
                headers: &[(OFFCHAIN_HEADER, Some(b"\x01 pointing at another organization's object"))],
                timestamp_delta: 0,
            }],
        );
        let (_, records) = decode(&forged, 1 << 20).unwrap();
        assert!(reserved_header(&records));
    }

    /// A compressed batch (as clients send them) is rewritten too.
    #[test]
    fn a_compressed_batch_is_rewritten_and_restored() {
        use std::io::Write;
        let plain = encode_batch(
            5_000,
            ProducerIds {
                producer_id: 7,
                producer_epoch: 2,
                base_sequence: 40,
            },
            &[
                NewRecord {
                    key: Some(b"k"),
                    value: Some(&[9u8; 5000]),
                    headers: &[(b"h", Some(b"v"))],
                    timestamp_delta: 3,
                },
                NewRecord {
                    key: None,
                    value: Some(b"small"),
                    headers: &[],
                    timestamp_delta: 4,
                },
            ],
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain[BATCH_HEADER_BYTES..]).unwrap();
        let mut b = BytesMut::from(&plain[..BATCH_HEADER_BYTES]);
        b.extend_from_slice(&gz.finish().unwrap());
        let len = (b.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[21..23].copy_from_slice(&1i16.to_be_bytes());
        seal_crc(&mut b);
        let gzipped = b.freeze();
        let (header, mut records) = decode(&gzipped, 1 << 20).unwrap();
        let original = records.clone();
        let value = records[0].value.clone().unwrap();
        to_descriptor(&mut records[0], &descriptor_of(&value)).unwrap();
        let stored = encode(&header, &records);
        let h = validate_batch(&stored, &LIMITS).unwrap();
        assert_eq!(h.compression().unwrap(), Compression::None);
        assert!(
            stored.len() < 200,
            "the stored batch holds the descriptor, not the value"
        );
        let (h2, mut back) = decode(&stored, 1 << 20).unwrap();
        assert_eq!(back[0].descriptor(), Some(Ok(descriptor_of(&value))));
        restore(&mut back[0], value);
        assert_eq!(back, original);
        let served = encode(&h2, &back);
        assert_eq!(served, encode(&header, &original));
        assert_eq!(&served[..12], &plain[..12], "base offset and length as the producer's");
    }

    proptest! {
        /// Any records, any threshold: off-chain and back is the identity,
        /// and every batch on the way is a valid one with the producer's
        /// fields.
        #[test]
        fn values_go_off_chain_and_come_back_as_they_were(
            records in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..400)),
                 proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..8),
                                            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..3),
                 0i64..10_000), 1..12),
            threshold in 0usize..300,
        ) {
            let headers: Vec<Vec<Header<'_>>> = records.iter()
                .map(|(_, _, h, _)| h.iter().map(|(k, v)| (&k[..], v.as_deref())).collect()).collect();
            let new: Vec<NewRecord<'_>> = records.iter().zip(&headers).map(|((k, v, _, t), h)| NewRecord {
                key: k.as_deref(), value: v.as_deref(), headers: h, timestamp_delta: *t }).collect();
            let ids = ProducerIds { producer_id: 11, producer_epoch: 1, base_sequence: 99 };
            let batch = encode_batch(1_000, ids, &new);
            let (header, original) = decode(&batch, 1 << 20).unwrap();
            prop_assert!(!reserved_header(&original));
            prop_assert_eq!(encode(&header, &original), batch.clone());
            let mut stored = original.clone();
            let mut kept = Vec::new();
            for r in stored.iter_mut() {
                if let Some(v) = r.value.clone().filter(|v| v.len() > threshold) {
                    to_descriptor(r, &descriptor_of(&v)).unwrap();
                    kept.push(Some(v));
                } else {
                    kept.push(None);
                }
            }
            let on_ledger = encode(&header, &stored);
            let h = validate_batch(&on_ledger, &LIMITS).unwrap();
            prop_assert_eq!((h.base_offset, h.last_offset_delta, h.records_count), (header.base_offset, header.last_offset_delta, header.records_count));
            prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (11, 1, 99));
            prop_assert_eq!((h.base_timestamp, h.max_timestamp), (header.base_timestamp, header.max_timestamp));
            let (_, mut back) = decode(&on_ledger, 1 << 20).unwrap();
            for (r, v) in back.iter_mut().zip(kept) {
                if let Some(v) = v {
                    prop_assert_eq!(r.descriptor(), Some(Ok(descriptor_of(&v))));
                    restore(r, v);
                }
            }
            prop_assert_eq!(encode(&header, &back), batch);
        }
    }
}
