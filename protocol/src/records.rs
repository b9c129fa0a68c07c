//! Kafka v2 record batches (magic 2): parse, validate, and patch in place.
//!
//! Courier stores batches exactly as the producer sent them, except for the
//! two fields the broker owns and the CRC does not cover (base offset and
//! partition leader epoch). Validation walks every record of a batch — after
//! decompression when the batch is compressed — without allocating per
//! record, so a batch that is accepted is one every consumer can read.
//!
//! Layout of the 61-byte header (big-endian):
//! ```text
//! base_offset i64 | batch_length i32 | partition_leader_epoch i32 | magic i8 |
//! crc u32 | attributes i16 | last_offset_delta i32 | base_timestamp i64 |
//! max_timestamp i64 | producer_id i64 | producer_epoch i16 | base_sequence i32 |
//! records_count i32
//! ```
//! `batch_length` counts from `partition_leader_epoch` to the end; the CRC-32C
//! covers `attributes` to the end.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a v2 batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` counts: base offset and the length itself.
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;

/// Compression codec from the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Why a batch was refused. Every variant maps to CORRUPT_MESSAGE or
/// INVALID_RECORD for the producer; the ledger never sees such a batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordsError {
    #[error("record set is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {length} is invalid")]
    BadLength { length: i32 },
    #[error("magic byte {magic} is not supported (only v2 batches are)")]
    UnsupportedMagic { magic: i8 },
    #[error("CRC-32C mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("unknown compression codec {codec}")]
    UnknownCompression { codec: i16 },
    #[error("cannot decompress {codec:?} data: {reason}")]
    Decompression { codec: Compression, reason: String },
    #[error("decompressed batch exceeds {max} bytes")]
    DecompressedTooLarge { max: usize },
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: i32, reason: &'static str },
    #[error("record set holds no batch")]
    Empty,
    #[error("record {index} carries the courier.offchain header, which only Courier writes")]
    ReservedHeader { index: i32 },
}

/// The fixed-size header of a v2 batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Reads the header at the start of `b` (which must hold at least
    /// [`BATCH_HEADER_BYTES`]); checks nothing but the size.
    pub fn parse(b: &[u8]) -> Result<Self, RecordsError> {
        if b.len() < BATCH_HEADER_BYTES {
            return Err(RecordsError::Truncated {
                needed: BATCH_HEADER_BYTES,
                available: b.len(),
            });
        }
        Ok(Self {
            base_offset: be_i64(b, 0),
            batch_length: be_i32(b, 8),
            partition_leader_epoch: be_i32(b, 12),
            magic: b[16] as i8,
            crc: u32::from_be_bytes([b[17], b[18], b[19], b[20]]),
            attributes: be_i16(b, 21),
            last_offset_delta: be_i32(b, 23),
            base_timestamp: be_i64(b, 27),
            max_timestamp: be_i64(b, 35),
            producer_id: be_i64(b, 43),
            producer_epoch: be_i16(b, 51),
            base_sequence: be_i32(b, 53),
            records_count: be_i32(b, 57),
        })
    }

    /// Whole size of the batch on the wire (a negative length, possible
    /// only in corrupt data, counts as zero so callers never overflow).
    pub fn total_bytes(&self) -> usize {
        BATCH_LOG_OVERHEAD_BYTES + self.batch_length.max(0) as usize
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    pub fn compression(&self) -> Result<Compression, RecordsError> {
        Ok(match self.attributes & 0x07 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            codec => return Err(RecordsError::UnknownCompression { codec }),
        })
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    /// Whether the producer asked for idempotent de-duplication.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }
}

/// One validated batch: its header and its exact bytes.
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: BatchHeader,
    pub bytes: Bytes,
}

/// Bounds applied while validating one produce request's records.
#[derive(Debug, Clone, Copy)]
pub struct RecordLimits {
    /// Largest batch accepted, compressed (Kafka's `message.max.bytes`).
    pub batch_bytes_max: usize,
    /// Largest decompressed batch body; guards against compression bombs.
    pub decompressed_bytes_max: usize,
}

/// Splits back-to-back batches by their length fields (nothing inside a
/// batch is checked); stops at the first one that is cut short.
pub fn split_batches(b: &[u8]) -> impl Iterator<Item = Result<&[u8], RecordsError>> {
    let mut rest = b;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let next = if rest.len() < BATCH_LOG_OVERHEAD_BYTES {
            Err(RecordsError::Truncated {
                needed: BATCH_LOG_OVERHEAD_BYTES,
                available: rest.len(),
            })
        } else {
            let length = be_i32(rest, 8);
            let total = BATCH_LOG_OVERHEAD_BYTES + length.max(0) as usize;
            if length < (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32 {
                Err(RecordsError::BadLength { length })
            } else if rest.len() < total {
                Err(RecordsError::Truncated {
                    needed: total,
                    available: rest.len(),
                })
            } else {
                let (batch, after) = rest.split_at(total);
                rest = after;
                return Some(Ok(batch));
            }
        };
        rest = &[];
        Some(next)
    })
}

/// Splits a produce request's record set into batches and validates each.
/// The returned batches share `records`' memory.
pub fn validate_record_set(records: &Bytes, limits: &RecordLimits) -> Result<Vec<Batch>, RecordsError> {
    let mut batches = Vec::new();
    for batch in split_batches(records) {
        let bytes = records.slice_ref(batch?);
        let header = validate_batch(&bytes, limits)?;
        batches.push(Batch { header, bytes });
    }
    if batches.is_empty() {
        return Err(RecordsError::Empty);
    }
    Ok(batches)
}

/// Validates one whole batch: magic, CRC-32C, compression, and every record.
pub fn validate_batch(b: &[u8], limits: &RecordLimits) -> Result<BatchHeader, RecordsError> {
    validate_batch_records(b, limits, |_, _| Ok(()))
}

/// [`validate_batch`], handing every record (with the batch header) to `f`
/// from the one pass the validation makes.
pub fn validate_batch_records<F>(b: &[u8], limits: &RecordLimits, mut f: F) -> Result<BatchHeader, RecordsError>
where
    F: FnMut(&BatchHeader, RecordView<'_>) -> Result<(), RecordsError>,
{
    let header = BatchHeader::parse(b)?;
    if header.magic != 2 {
        return Err(RecordsError::UnsupportedMagic { magic: header.magic });
    }
    if header.total_bytes() != b.len() || b.len() > limits.batch_bytes_max.max(BATCH_HEADER_BYTES) {
        return Err(RecordsError::BadLength {
            length: header.batch_length,
        });
    }
    let actual = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    if actual != header.crc {
        return Err(RecordsError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    if header.records_count < 0 || header.last_offset_delta != header.records_count - 1 {
        return Err(RecordsError::CountMismatch {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let mut index = 0;
    for_each_record(&header, &b[BATCH_HEADER_BYTES..], limits.decompressed_bytes_max, |r| {
        if r.offset_delta != index {
            return Err(RecordsError::BadRecord {
                index,
                reason: "offset delta out of sequence",
            });
        }
        index += 1;
        f(&header, r)
    })?;
    Ok(header)
}

/// One record inside a batch, borrowed from the (decompressed) batch body.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers_count: i32,
    /// Whether one of its headers is [`crate::offchain::OFFCHAIN_HEADER`]
    /// (which only a node may write).
    pub offchain_header: bool,
}

/// Calls `f` for every record of a batch body (the bytes after the header),
/// decompressing first when needed. Fails on any structural fault.
pub fn for_each_record<F>(
    header: &BatchHeader,
    body: &[u8],
    decompressed_bytes_max: usize,
    mut f: F,
) -> Result<(), RecordsError>
where
    F: FnMut(RecordView<'_>) -> Result<(), RecordsError>,
{
    let codec = header.compression()?;
    let owned;
    let data: &[u8] = if codec == Compression::None {
        body
    } else {
        owned = decompress(codec, body, decompressed_bytes_max)?;
        &owned
    };
    parse_records(data, header.records_count, |r| {
        f(RecordView {
            timestamp_delta: r.timestamp_delta,
            offset_delta: r.offset_delta,
            key: r.key,
            value: r.value,
            headers_count: r.headers_count,
            offchain_header: r.offchain_header,
        })
    })
}

/// One record as [`parse_records`] found it, borrowed from the
/// (decompressed) batch body, its headers checked.
pub(crate) struct RawRecord<'a> {
    pub(crate) attributes: u8,
    pub(crate) timestamp_delta: i64,
    pub(crate) offset_delta: i32,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers_count: i32,
    /// Whether a header is [`crate::offchain::OFFCHAIN_HEADER`] (noted in
    /// the one pass that checks the headers).
    pub(crate) offchain_header: bool,
    /// The headers' encoding (already checked to hold `headers_count`).
    headers: &'a [u8],
}

impl<'a> RawRecord<'a> {
    /// The record's headers: key and value.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let mut r = Reader { b: self.headers, at: 0 };
        (0..self.headers_count).map_while(move |_| {
            let k = r.nullable_bytes()??;
            let v = r.nullable_bytes()?;
            Some((k, v))
        })
    }
}

/// Calls `each` for the `count` records of an uncompressed batch body, in
/// order. Fails on any structural fault.
pub(crate) fn parse_records<'a, F>(data: &'a [u8], count: i32, mut each: F) -> Result<(), RecordsError>
where
    F: FnMut(RawRecord<'a>) -> Result<(), RecordsError>,
{
    let mut r = Reader { b: data, at: 0 };
    for index in 0..count {
        let bad = |reason| RecordsError::BadRecord { index, reason };
        let length = r.varint().ok_or(bad("length"))?;
        if length < 0 || length as usize > r.b.len() - r.at {
            return Err(bad("length exceeds batch"));
        }
        let end = r.at + length as usize;
        let mut rec = Reader {
            b: &r.b[..end],
            at: r.at,
        };
        let attributes = rec.byte().ok_or(bad("attributes"))?;
        let timestamp_delta = rec.varlong().ok_or(bad("timestamp delta"))?;
        let offset_delta = rec.varint().ok_or(bad("offset delta"))?;
        let key = rec.nullable_bytes().ok_or(bad("key"))?;
        let value = rec.nullable_bytes().ok_or(bad("value"))?;
        let headers_count = rec.varint().ok_or(bad("header count"))?;
        if headers_count < 0 {
            return Err(bad("negative header count"));
        }
        let headers_at = rec.at;
        let mut offchain_header = false;
        for _ in 0..headers_count {
            let k = rec
                .nullable_bytes()
                .ok_or(bad("header key"))?
                .ok_or(bad("null header key"))?;
            offchain_header |= k == crate::offchain::OFFCHAIN_HEADER;
            rec.nullable_bytes().ok_or(bad("header value"))?;
        }
        if rec.at != end {
            return Err(bad("length does not match contents"));
        }
        let headers = &r.b[headers_at..end];
        r.at = end;
        each(RawRecord {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers_count,
            offchain_header,
            headers,
        })?;
    }
    if r.at != r.b.len() {
        return Err(RecordsError::BadRecord {
            index: count,
            reason: "trailing bytes after last record",
        });
    }
    Ok(())
}

/// Decompresses a batch body, refusing output past `max` bytes.
pub fn decompress(codec: Compression, body: &[u8], max: usize) -> Result<Vec<u8>, RecordsError> {
    let fail = |reason: String| RecordsError::Decompression { codec, reason };
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    match codec {
        Compression::None => out.extend_from_slice(body),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| fail(e.to_string()))?;
        }
        Compression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| fail(e.to_string()))?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(body)
                .map_err(|e| fail(e.to_string()))?
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| fail(e.to_string()))?;
        }
        Compression::Snappy => snappy_decompress(body, max, &mut out).map_err(fail)?,
    }
    if out.len() > max {
        return Err(RecordsError::DecompressedTooLarge { max });
    }
    Ok(out)
}

/// The Java client writes snappy in the xerial framing (a magic header, then
/// length-prefixed raw blocks); librdkafka writes one raw block. Both are read.
fn snappy_decompress(body: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), String> {
    const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let mut raw = snap::raw::Decoder::new();
    let mut block = |chunk: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(chunk).map_err(|e| e.to_string())?;
        if out.len() + n > max {
            return Err(format!("decompressed size exceeds {max} bytes"));
        }
        let start = out.len();
        out.resize(start + n, 0);
        raw.decompress(chunk, &mut out[start..]).map_err(|e| e.to_string())?;
        Ok(())
    };
    if body.len() >= 16 && &body[..8] == XERIAL_MAGIC {
        let mut at = 16; // magic, version, compatible version
        while at < body.len() {
            if body.len() - at < 4 {
                return Err("truncated xerial chunk length".into());
            }
            let n = be_i32(body, at);
            at += 4;
            if n < 0 || n as usize > body.len() - at {
                return Err("xerial chunk exceeds data".into());
            }
            block(&body[at..at + n as usize], out)?;
            at += n as usize;
        }
        Ok(())
    } else {
        block(body, out)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }
    fn varlong(&mut self) -> Option<i64> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            raw |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        None
    }
    fn varint(&mut self) -> Option<i32> {
        i32::try_from(self.varlong()?).ok()
    }
    /// A varint length (-1 for null) followed by that many bytes.
    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let n = self.varint()?;
        if n < 0 {
            return (n == -1).then_some(None);
        }
        let end = self.at.checked_add(n as usize)?;
        let v = self.b.get(self.at..end)?;
        self.at = end;
        Some(Some(v))
    }
}

/// Overwrites the broker-owned fields of a stored batch. Neither is covered
/// by the CRC, so the producer's checksum stays valid.
pub fn assign_offset(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// Checks that a stored batch's CRC still matches its contents.
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES
        && crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
            == u32::from_be_bytes([
                batch[CRC_OFFSET],
                batch[CRC_OFFSET + 1],
                batch[CRC_OFFSET + 2],
                batch[CRC_OFFSET + 3],
            ])
}

/// A record to put in a batch built by [`encode_batch`].
#[derive(Debug, Clone, Default)]
pub struct NewRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    pub timestamp_delta: i64,
}

/// Producer identity for an idempotent batch.
#[derive(Debug, Clone, Copy)]
pub struct ProducerIds {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerIds {
    pub const NONE: ProducerIds = ProducerIds {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// A zig-zag varlong, as record fields are written.
pub(crate) fn put_varlong(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

/// A varint length (-1 for null) and the bytes.
pub(crate) fn put_bytes(out: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => put_varlong(out, -1),
        Some(v) => {
            put_varlong(out, v.len() as i64);
            out.put_slice(v);
        }
    }
}

/// How many bytes [`put_varlong`] writes for `v`.
pub(crate) fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
}

/// How many bytes [`put_bytes`] writes for `v`.
pub(crate) fn bytes_len(v: Option<&[u8]>) -> usize {
    v.map_or(1, |v| varlong_len(v.len() as i64) + v.len())
}

/// Sets a built batch's CRC-32C (over everything from the attributes on).
pub(crate) fn seal_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Builds an uncompressed v2 batch (for Courier's own producers and tests).
pub fn encode_batch(base_timestamp: i64, producer: ProducerIds, records: &[NewRecord<'_>]) -> Bytes {
    let mut body = BytesMut::new();
    let mut rec = BytesMut::new();
    let mut max_delta = 0;
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.put_u8(0);
        put_varlong(&mut rec, r.timestamp_delta);
        put_varlong(&mut rec, i as i64);
        put_bytes(&mut rec, r.key);
        put_bytes(&mut rec, r.value);
        put_varlong(&mut rec, r.headers.len() as i64);
        for (k, v) in r.headers {
            put_bytes(&mut rec, Some(k));
            put_bytes(&mut rec, *v);
        }
        put_varlong(&mut body, rec.len() as i64);
        body.put_slice(&rec);
        max_delta = max_delta.max(r.timestamp_delta);
    }
    let header = BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: -1,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp,
        max_timestamp: base_timestamp + max_delta,
        producer_id: producer.producer_id,
        producer_epoch: producer.producer_epoch,
        base_sequence: producer.base_sequence,
        records_count: records.len() as i32,
    };
    seal_batch(&header, &body)
}

/// An uncompressed v2 batch of `header`'s fields (the compression bits
/// cleared, the length and CRC-32C computed) around the encoded records
/// `body`.
pub(crate) fn seal_batch(header: &BatchHeader, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    put_header(&mut out, header, body.len());
    out.put_slice(body);
    seal_crc(&mut out);
    out.freeze()
}

/// Writes `header`'s fields (uncompressed, CRC still 0) for a body of
/// `body_len` bytes; the caller appends the body and then seals the CRC.
pub(crate) fn put_header(out: &mut BytesMut, header: &BatchHeader, body_len: usize) {
    out.put_i64(header.base_offset);
    out.put_i32((BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES + body_len) as i32);
    out.put_i32(header.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0);
    out.put_i16(header.attributes & !0x07);
    out.put_i32(header.last_offset_delta);
    out.put_i64(header.base_timestamp);
    out.put_i64(header.max_timestamp);
    out.put_i64(header.producer_id);
    out.put_i16(header.producer_epoch);
    out.put_i32(header.base_sequence);
    out.put_i32(header.records_count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlong_lengths_are_what_put_varlong_writes() {
        let mut values = vec![0i64, 1, -1, 63, 64, -64, -65, i64::MAX, i64::MIN, 1 << 28, -(1 << 28)];
        values.extend((0..63).map(|s| 1i64 << s));
        values.extend((0..63).map(|s| -(1i64 << s)));
        for v in values {
            let mut out = BytesMut::new();
            put_varlong(&mut out, v);
            assert_eq!(varlong_len(v), out.len(), "{v}");
        }
        assert_eq!(bytes_len(None), 1);
        assert_eq!(bytes_len(Some(&[7u8; 300][..])), 302);
    }
    use proptest::prelude::*;

    const LIMITS: RecordLimits = RecordLimits {
        batch_bytes_max: 1 << 20,
        decompressed_bytes_max: 1 << 22,
    };

    fn sample() -> Bytes {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h", Some(b"v"))];
        encode_batch(
            1_700_000_000_000,
            ProducerIds::NONE,
            &[
                NewRecord {
                    key: Some(b"k1"),
                    value: Some(b"hello"),
                    headers,
                    timestamp_delta: 0,
                },
                NewRecord {
                    key: None,
                    value: None,
                    headers: &[],
                    timestamp_delta: 5,
                },
            ],
        )
    }

    #[test]
    fn built_batch_validates_and_walks() {
        let b = sample();
        let batches = validate_record_set(&b, &LIMITS).unwrap();
        assert_eq!(batches.len(), 1);
        let h = batches[0].header;
        assert_eq!(
            (h.records_count, h.last_offset_delta, h.max_timestamp),
            (2, 1, 1_700_000_000_005)
        );
        let mut seen = vec![];
        for_each_record(&h, &b[BATCH_HEADER_BYTES..], 1 << 20, |r| {
            seen.push((r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), r.headers_count));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(Some(b"k1".to_vec()), Some(b"hello".to_vec()), 1), (None, None, 0)]
        );
    }

    #[test]
    fn flipped_bit_breaks_the_crc() {
        let mut b = BytesMut::from(&sample()[..]);
        let last = b.len() - 3;
        b[last] ^= 0x01;
        assert!(matches!(
            validate_batch(&b, &LIMITS),
            Err(RecordsError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn assigning_an_offset_keeps_the_crc() {
        let mut b = BytesMut::from(&sample()[..]);
        assign_offset(&mut b, 1234, 7);
        assert!(crc_matches(&b));
        let h = validate_batch(&b, &LIMITS).unwrap();
        assert_eq!(
            (h.base_offset, h.partition_leader_epoch, h.last_offset()),
            (1234, 7, 1235)
        );
    }

    #[test]
    fn truncation_and_bad_magic_are_refused() {
        let b = sample();
        assert!(matches!(
            validate_record_set(&b.slice(..b.len() - 1), &LIMITS),
            Err(RecordsError::Truncated { .. })
        ));
        let mut m = BytesMut::from(&b[..]);
        m[16] = 1;
        assert_eq!(
            validate_batch(&m, &LIMITS),
            Err(RecordsError::UnsupportedMagic { magic: 1 })
        );
        assert_eq!(
            validate_record_set(&Bytes::new(), &LIMITS).unwrap_err(),
            RecordsError::Empty
        );
    }

    #[test]
    fn oversized_batch_is_refused() {
        let b = sample();
        let tight = RecordLimits {
            batch_bytes_max: b.len() - 1,
            decompressed_bytes_max: 1 << 20,
        };
        assert!(matches!(
            validate_batch(&b, &tight),
            Err(RecordsError::BadLength { .. })
        ));
    }

    fn with_body(codec: i16, body: Vec<u8>, count: i32) -> Bytes {
        let plain = sample();
        let mut out = BytesMut::from(&plain[..BATCH_HEADER_BYTES]);
        out.extend_from_slice(&body);
        let len = (out.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        out[21..23].copy_from_slice(&codec.to_be_bytes());
        out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        out[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out.freeze()
    }

    #[test]
    fn every_codec_decompresses() {
        use std::io::Write;
        let plain = sample();
        let body = plain[BATCH_HEADER_BYTES..].to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(&body).unwrap();
        let raw_snappy = snap::raw::Encoder::new().compress_vec(&body).unwrap();
        let mut xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        xerial.extend_from_slice(&(raw_snappy.len() as i32).to_be_bytes());
        xerial.extend_from_slice(&raw_snappy);
        let cases = [
            (1, gz.finish().unwrap()),
            (2, raw_snappy.clone()),
            (2, xerial),
            (3, lz.finish().unwrap()),
            (4, zstd::encode_all(&body[..], 3).unwrap()),
        ];
        for (codec, compressed) in cases {
            let b = with_body(codec, compressed, 2);
            let h = validate_batch(&b, &LIMITS).unwrap_or_else(|e| panic!("codec {codec}: {e}"));
            assert_eq!(h.records_count, 2);
        }
    }

    #[test]
    fn compression_bomb_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let b = with_body(4, zstd::encode_all(&zeros[..], 3).unwrap(), 1);
        let tight = RecordLimits {
            batch_bytes_max: 1 << 20,
            decompressed_bytes_max: 1 << 16,
        };
        assert_eq!(
            validate_batch(&b, &tight),
            Err(RecordsError::DecompressedTooLarge { max: 1 << 16 })
        );
    }

    proptest! {
        #[test]
        fn random_records_round_trip(records in proptest::collection::vec(
            (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
             0i64..100_000), 1..20)) {
            let new: Vec<NewRecord<'_>> = records.iter().map(|(k, v, t)| NewRecord {
                key: k.as_deref(), value: v.as_deref(), headers: &[], timestamp_delta: *t }).collect();
            let b = encode_batch(1000, ProducerIds::NONE, &new);
            let h = validate_batch(&b, &LIMITS).unwrap();
            let mut seen = Vec::new();
            for_each_record(&h, &b[BATCH_HEADER_BYTES..], 1 << 20, |r| {
                seen.push((r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), r.timestamp_delta));
                Ok(())
            }).unwrap();
            prop_assert_eq!(seen, records);
        }

        #[test]
        fn any_bytes_validate_or_error(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_record_set(&Bytes::from(data), &LIMITS);
        }

        #[test]
        fn corrupting_any_covered_byte_is_caught(pos in 21usize..80, bit in 0u8..8) {
            let b = sample();
            let mut m = BytesMut::from(&b[..]);
            let pos = pos.min(m.len() - 1);
            m[pos] ^= 1 << bit;
            prop_assert!(validate_batch(&m, &LIMITS).is_err());
        }
    }
}
