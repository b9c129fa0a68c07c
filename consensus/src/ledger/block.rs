//! Blocks and their canonical encoding.
//!
//! The encoding is the block's identity. It is versioned, big-endian,
//! length-prefixed, and strict — decoding rejects trailing bytes, unknown
//! versions and batches that do not match their digest, so
//! `encode(decode(b)) == b` for every accepted `b`. Record batches come last
//! so that a fetch can serve them as one slice of the stored bytes.
//!
//! ```text
//! head:  "CRBK" | version u16 | topic_id [16] | partition i32 | height u64 | view u64
//!        | prev_hash [32] | base_offset i64 | next_offset i64 | max_timestamp i64
//!        | config_version u64 | receipt_count u32 | receipts… | request_count u32
//!        | (origin u8 | number u64 | error_code i16 | base_offset i64)…
//!        | batches_len u32 | batches_sha256 [32]
//! then:  batches
//! ```
//!
//! The block hash (what the next block links to and what quorum
//! certificates sign) is the SHA-256 of the head alone. The head commits to
//! the batches through their digest, so a block's header, receipts and
//! outcomes can be checked against its certificate without its payload:
//! that is what the global ledger keeps (format 3; format 2 hashed head and
//! batches together).
//!
//! Format 4 adds the receiver's organization to each receipt, after its
//! principal. A block is written in the lowest format that holds it: 4 when
//! a receipt names an organization, else 3; so every block written before
//! format 4 keeps its encoding and hash, and a format-4 block without an
//! organization is not canonical (refused).
//!
//! Format 5 adds the senders: for each run of the block's records, the
//! authenticated principal of the produce requests that wrote them and its
//! organization, `sender_count u32 | (first_offset i64 | principal |
//! organization)…` after the request records. It is used when the block
//! names a sender, and a format-5 block without one is not canonical.
//!
//! The request records are the contract's results: which replica submitted
//! each request the block's batch ordered, under which number, and what
//! became of it. They let any replica (one that installed the block by state
//! transfer included) rebuild request de-duplication and answer its own
//! clients from the ledger alone.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ring::digest;

/// The newest block format (see the module notes for when each is used).
pub const BLOCK_FORMAT_VERSION: u16 = 5;
/// Blocks that name no sender, with receipts that name organizations.
pub const BLOCK_FORMAT_NO_SENDERS: u16 = 4;
/// Blocks whose receipts name no organization, and that name no sender.
pub const BLOCK_FORMAT_NO_ORGANIZATIONS: u16 = 3;
const MAGIC: &[u8; 4] = b"CRBK";
const FIXED_BYTES: usize = 4 + 2 + 16 + 4 + 8 + 8 + 32 + 8 + 8 + 8 + 8 + 4;

/// SHA-256 of a block's head (see the module notes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    pub const ZERO: BlockHash = BlockHash([0; 32]);
    pub fn of(encoded: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, encoded);
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        BlockHash(h)
    }
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

/// Which ledger a block belongs to: a topic (by its id, so a re-created
/// topic of the same name starts a fresh chain) and a partition index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PartitionKey {
    pub topic_id: [u8; 16],
    pub partition: i32,
}

impl PartitionKey {
    pub const BYTES: usize = 20;
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..16].copy_from_slice(&self.topic_id);
        k[16..].copy_from_slice(&self.partition.to_be_bytes());
        k
    }
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 20] = b.get(..20)?.try_into().ok()?;
        let mut topic_id = [0u8; 16];
        topic_id.copy_from_slice(&b[..16]);
        Some(Self {
            topic_id,
            partition: i32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        })
    }
}

/// A consumer group's committed offset, recorded on the ledger as the
/// receiver's confirmation that everything before `offset` was delivered.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Receipt {
    pub group_id: String,
    pub member_id: String,
    /// The authenticated principal that committed (`User:alice`).
    pub principal: String,
    /// The principal's organization (empty in blocks of format 3).
    pub organization: String,
    pub client_id: String,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub timestamp_ms: i64,
}

impl Receipt {
    /// The receipt's canonical encoding (as blocks of `format` hold it):
    /// `group | member | principal | organization (format 4) | client`
    /// (u32-prefixed UTF-8), `offset i64 | leader_epoch i32 | metadata?
    /// (u8, string) | timestamp_ms i64`.
    pub fn encode_into(&self, out: &mut BytesMut, format: u16) {
        put_str(out, &self.group_id);
        put_str(out, &self.member_id);
        put_str(out, &self.principal);
        if format >= 4 {
            put_str(out, &self.organization);
        }
        put_str(out, &self.client_id);
        out.put_i64(self.offset);
        out.put_i32(self.leader_epoch);
        match &self.metadata {
            None => out.put_u8(0),
            Some(m) => {
                out.put_u8(1);
                put_str(out, m);
            }
        }
        out.put_i64(self.timestamp_ms);
    }

    /// Decodes one receipt of a block of `format` from the front of `b`,
    /// advancing it.
    pub fn decode_from(b: &mut &[u8], format: u16) -> Result<Receipt, BlockError> {
        let group_id = get_str(b)?;
        let member_id = get_str(b)?;
        let principal = get_str(b)?;
        let organization = if format >= 4 { get_str(b)? } else { String::new() };
        let client_id = get_str(b)?;
        need(b, 13)?;
        let offset = b.get_i64();
        let leader_epoch = b.get_i32();
        let metadata = match b.get_u8() {
            0 => None,
            _ => Some(get_str(b)?),
        };
        need(b, 8)?;
        let timestamp_ms = b.get_i64();
        Ok(Receipt {
            group_id,
            member_id,
            principal,
            organization,
            client_id,
            offset,
            leader_epoch,
            metadata,
            timestamp_ms,
        })
    }
}

/// Who sent a run of a block's records: the records from `first_offset` up
/// to the next sender's (or the block's end) were written by produce
/// requests that this principal, of this organization, authenticated.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Sender {
    pub first_offset: i64,
    pub principal: String,
    pub organization: String,
}

/// The senders of the records `[from, to)`, out of `runs` (in offset
/// order, as [`Block::senders`] holds them): the run covering `from`
/// starts at `from`, and runs that begin at or past `to` are left out.
pub fn senders_within(runs: &[Sender], from: i64, to: i64) -> Vec<Sender> {
    let first = runs.partition_point(|s| s.first_offset <= from).saturating_sub(1);
    runs.get(first..)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.first_offset < to)
        .map(|s| Sender {
            first_offset: s.first_offset.max(from),
            ..s.clone()
        })
        .collect()
}

/// What the contract made of one ordered request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RequestRecord {
    /// The replica that submitted it, and its number there.
    pub origin: u8,
    pub number: u64,
    /// 0 when it took effect; otherwise the Kafka error code it got.
    pub error_code: i16,
    /// For a produce, the offset of its first record (-1 otherwise).
    pub base_offset: i64,
}

impl RequestRecord {
    const BYTES: usize = 1 + 8 + 2 + 8;
}

/// One block of a partition ledger.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Block {
    pub partition: PartitionKey,
    pub height: u64,
    pub view: u64,
    pub prev_hash: BlockHash,
    /// Offset of the first record in this block.
    pub base_offset: i64,
    /// One past the last record: the high watermark once this block commits.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub config_version: u64,
    pub receipts: Vec<Receipt>,
    pub requests: Vec<RequestRecord>,
    /// Who sent the records, run by run, first offsets increasing (empty:
    /// not recorded, as in blocks before format 5).
    pub senders: Vec<Sender>,
    /// Kafka v2 record batches, offsets assigned, back to back.
    pub batches: Bytes,
}

/// A block with its head encoded and its hash computed, ready to store.
/// Sealing is where a block's identity is fixed; the store writes what
/// was sealed and does not hash again.
#[derive(Clone, Debug)]
pub struct SealedBlock {
    pub block: Block,
    pub head: Bytes,
    pub hash: BlockHash,
}

impl Block {
    /// The next block of a partition whose ledger stands at `state`,
    /// holding `batches` alone (offsets assigned up to `next_offset`) and
    /// no requests or receipts: what tests, benchmarks and tools append.
    pub fn of_batches(
        partition: PartitionKey,
        state: &super::PartitionState,
        batches: Bytes,
        next_offset: i64,
        max_timestamp: i64,
    ) -> Self {
        Block {
            partition,
            height: state.next_height,
            view: 0,
            prev_hash: state.last_hash,
            base_offset: state.next_offset,
            next_offset,
            max_timestamp,
            config_version: 0,
            requests: vec![],
            senders: vec![],
            receipts: vec![],
            batches,
        }
    }

    pub fn seal(self) -> SealedBlock {
        let head = self.encode_head().freeze();
        let hash = BlockHash::of(&head);
        SealedBlock {
            block: self,
            head,
            hash,
        }
    }
}

/// Why bytes are not a canonical block.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block is truncated")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported block format version {0}")]
    UnsupportedVersion(u16),
    #[error("string is not UTF-8")]
    BadString,
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    #[error("the batches do not match the digest in the head")]
    BatchesDigest,
    #[error("the block is not in its canonical format")]
    NotCanonical,
}

/// Writes a string as the ledger's encodings do: u32 length, then UTF-8.
pub fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// Reads a string written by [`put_str`] from the front of `b`, advancing it.
pub fn get_str(b: &mut &[u8]) -> Result<String, BlockError> {
    need(b, 4)?;
    let n = b.get_u32() as usize;
    need(b, n)?;
    let s = std::str::from_utf8(&b[..n])
        .map_err(|_| BlockError::BadString)?
        .to_owned();
    b.advance(n);
    Ok(s)
}

fn need(b: &[u8], n: usize) -> Result<(), BlockError> {
    if b.len() < n {
        Err(BlockError::Truncated)
    } else {
        Ok(())
    }
}

impl Block {
    /// The canonical encoding: [`Block::encode_head`], then the batches.
    pub fn encode(&self) -> Bytes {
        let mut out = self.encode_head();
        out.put_slice(&self.batches);
        out.freeze()
    }

    /// Everything of the canonical encoding up to and including the
    /// batches' digest: the part stored apart from the record batches, and
    /// what the block hash covers.
    /// The format this block is written in: the lowest that holds it.
    pub fn format(&self) -> u16 {
        if !self.senders.is_empty() {
            BLOCK_FORMAT_VERSION
        } else if self.receipts.iter().any(|r| !r.organization.is_empty()) {
            BLOCK_FORMAT_NO_SENDERS
        } else {
            BLOCK_FORMAT_NO_ORGANIZATIONS
        }
    }

    /// Who sent the record at `offset`, when the block says.
    pub fn sender_of(&self, offset: i64) -> Option<&Sender> {
        if offset < self.base_offset || offset >= self.next_offset {
            return None;
        }
        let i = self.senders.partition_point(|s| s.first_offset <= offset);
        i.checked_sub(1).map(|i| &self.senders[i])
    }

    pub fn encode_head(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(FIXED_BYTES + 4 + 32 + 128 * self.receipts.len());
        let format = self.format();
        out.put_slice(MAGIC);
        out.put_u16(format);
        out.put_slice(&self.partition.topic_id);
        out.put_i32(self.partition.partition);
        out.put_u64(self.height);
        out.put_u64(self.view);
        out.put_slice(&self.prev_hash.0);
        out.put_i64(self.base_offset);
        out.put_i64(self.next_offset);
        out.put_i64(self.max_timestamp);
        out.put_u64(self.config_version);
        out.put_u32(self.receipts.len() as u32);
        for r in &self.receipts {
            r.encode_into(&mut out, format);
        }
        out.put_u32(self.requests.len() as u32);
        for r in &self.requests {
            out.put_u8(r.origin);
            out.put_u64(r.number);
            out.put_i16(r.error_code);
            out.put_i64(r.base_offset);
        }
        if format >= BLOCK_FORMAT_VERSION {
            out.put_u32(self.senders.len() as u32);
            for s in &self.senders {
                out.put_i64(s.first_offset);
                put_str(&mut out, &s.principal);
                put_str(&mut out, &s.organization);
            }
        }
        out.put_u32(self.batches.len() as u32);
        out.put_slice(&BlockHash::of(&self.batches).0);
        out
    }

    /// The block hash: SHA-256 of the head (which holds the batches' digest).
    pub fn hash(&self) -> BlockHash {
        BlockHash::of(&self.encode_head())
    }

    /// Decodes a canonical encoding; `batches` shares `bytes`' memory.
    pub fn decode(bytes: &Bytes) -> Result<Block, BlockError> {
        Self::decode_hashed(bytes).map(|(block, _)| block)
    }

    /// Decodes a canonical encoding and returns the block's hash too
    /// (hashing the head as received, not a re-encoding of it).
    pub fn decode_hashed(bytes: &Bytes) -> Result<(Block, BlockHash), BlockError> {
        Self::decode_sealed(bytes).map(|s| (s.block, s.hash))
    }

    /// Decodes a canonical encoding into a sealed block: its head is the
    /// received head (shared with `bytes`), its hash that head's.
    pub fn decode_sealed(bytes: &Bytes) -> Result<SealedBlock, BlockError> {
        let mut b: &[u8] = bytes;
        let (mut block, batches_len, digest) = Self::decode_head(&mut b)?;
        need(b, batches_len)?;
        if b.len() > batches_len {
            return Err(BlockError::TrailingBytes(b.len() - batches_len));
        }
        let start = bytes.len() - b.len();
        block.batches = bytes.slice(start..start + batches_len);
        if BlockHash::of(&block.batches) != digest {
            return Err(BlockError::BatchesDigest);
        }
        let head = bytes.slice(..start);
        Ok(SealedBlock {
            hash: BlockHash::of(&head),
            head,
            block,
        })
    }

    /// Rebuilds a block from a stored head and its batches, checking that
    /// the head is whole and announces exactly these batches.
    pub fn from_parts(head: &[u8], batches: Bytes) -> Result<Block, BlockError> {
        let mut b = head;
        let (mut block, batches_len, _) = Self::decode_head(&mut b)?;
        if !b.is_empty() {
            return Err(BlockError::TrailingBytes(b.len()));
        }
        if batches_len != batches.len() {
            return Err(BlockError::Truncated);
        }
        block.batches = batches;
        Ok(block)
    }

    /// Decodes a stored head alone: the block without its batches (which
    /// stay empty), e.g. to read receipts without touching payloads.
    pub fn from_head(head: &[u8]) -> Result<Block, BlockError> {
        Self::head_only(head).map(|h| h.block)
    }

    /// The length of the head at the front of a block's encoding (nothing
    /// after it is checked).
    pub fn head_len(bytes: &[u8]) -> Result<usize, BlockError> {
        let mut b = bytes;
        Self::decode_head(&mut b)?;
        Ok(bytes.len() - b.len())
    }

    /// Decodes a head alone, with what it says of the batches it commits to.
    pub fn head_only(head: &[u8]) -> Result<Head, BlockError> {
        let mut b = head;
        let (block, batches_len, batches_digest) = Self::decode_head(&mut b)?;
        if !b.is_empty() {
            return Err(BlockError::TrailingBytes(b.len()));
        }
        Ok(Head {
            block,
            batches_len,
            batches_digest,
        })
    }

    /// Parses the head, leaving `b` at the first batch byte; returns the
    /// block (with no batches yet), the announced batches length and digest.
    fn decode_head(b: &mut &[u8]) -> Result<(Block, usize, BlockHash), BlockError> {
        need(b, FIXED_BYTES)?;
        if &b[..4] != MAGIC {
            return Err(BlockError::BadMagic);
        }
        b.advance(4);
        let version = b.get_u16();
        if !(BLOCK_FORMAT_NO_ORGANIZATIONS..=BLOCK_FORMAT_VERSION).contains(&version) {
            return Err(BlockError::UnsupportedVersion(version));
        }
        let mut topic_id = [0u8; 16];
        b.copy_to_slice(&mut topic_id);
        let partition = PartitionKey {
            topic_id,
            partition: b.get_i32(),
        };
        let height = b.get_u64();
        let view = b.get_u64();
        let mut prev = [0u8; 32];
        b.copy_to_slice(&mut prev);
        let base_offset = b.get_i64();
        let next_offset = b.get_i64();
        let max_timestamp = b.get_i64();
        let config_version = b.get_u64();
        let receipt_count = b.get_u32() as usize;
        // Each receipt takes at least 37 bytes: bound the allocation by the input.
        if receipt_count > b.len() / 37 {
            return Err(BlockError::Truncated);
        }
        let mut receipts = Vec::with_capacity(receipt_count);
        for _ in 0..receipt_count {
            receipts.push(Receipt::decode_from(b, version)?);
        }
        if version == BLOCK_FORMAT_NO_SENDERS && receipts.iter().all(|r| r.organization.is_empty()) {
            // Written in format 3, such a block would have another hash.
            return Err(BlockError::NotCanonical);
        }
        need(b, 4)?;
        let request_count = b.get_u32() as usize;
        if request_count > b.len() / RequestRecord::BYTES {
            return Err(BlockError::Truncated);
        }
        let requests = (0..request_count)
            .map(|_| RequestRecord {
                origin: b.get_u8(),
                number: b.get_u64(),
                error_code: b.get_i16(),
                base_offset: b.get_i64(),
            })
            .collect();
        let mut senders = Vec::new();
        if version >= BLOCK_FORMAT_VERSION {
            need(b, 4)?;
            let count = b.get_u32() as usize;
            // Each sender takes at least 16 bytes: bound the allocation by the input.
            if count == 0 || count > b.len() / 16 {
                return Err(if count == 0 {
                    BlockError::NotCanonical
                } else {
                    BlockError::Truncated
                });
            }
            senders.reserve(count);
            for _ in 0..count {
                need(b, 8)?;
                let first_offset = b.get_i64();
                let principal = get_str(b)?;
                let organization = get_str(b)?;
                senders.push(Sender {
                    first_offset,
                    principal,
                    organization,
                });
            }
            if senders.windows(2).any(|w| w[0].first_offset >= w[1].first_offset) {
                return Err(BlockError::NotCanonical);
            }
        }
        need(b, 4 + 32)?;
        let batches_len = b.get_u32() as usize;
        let mut digest = [0u8; 32];
        b.copy_to_slice(&mut digest);
        let block = Block {
            partition,
            height,
            view,
            prev_hash: BlockHash(prev),
            base_offset,
            next_offset,
            max_timestamp,
            config_version,
            receipts,
            requests,
            senders,
            batches: Bytes::new(),
        };
        Ok((block, batches_len, BlockHash(digest)))
    }
}

/// A block head decoded without its batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The block, its `batches` empty.
    pub block: Block,
    pub batches_len: usize,
    pub batches_digest: BlockHash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_receipt() -> impl Strategy<Value = Receipt> {
        (
            ".{0,12}",
            ".{0,12}",
            any::<i64>(),
            any::<i32>(),
            proptest::option::of(".{0,20}"),
            any::<i64>(),
            "(org-[a-z]{1,4})?",
        )
            .prop_map(
                |(group_id, member_id, offset, leader_epoch, metadata, timestamp_ms, organization)| Receipt {
                    group_id,
                    member_id,
                    principal: "User:ANONYMOUS".into(),
                    organization,
                    client_id: "c".into(),
                    offset,
                    leader_epoch,
                    metadata,
                    timestamp_ms,
                },
            )
    }

    /// Format 3 (no organization in any receipt) is written as before
    /// format 4 existed; format 4 when an organization is named; a format-4
    /// encoding of a block format 3 could hold is refused.
    #[test]
    fn each_block_is_written_in_the_lowest_format_that_holds_it() {
        let receipt = |organization: &str| Receipt {
            group_id: "g".into(),
            principal: "User:b".into(),
            organization: organization.into(),
            ..Default::default()
        };
        let mut block = sample_block();
        block.receipts = vec![receipt("")];
        let v3 = block.encode();
        assert_eq!(&v3[4..6], &3u16.to_be_bytes());
        assert_eq!(Block::decode(&v3).unwrap(), block);
        block.receipts.push(receipt("org-b"));
        let v4 = block.encode();
        assert_eq!(&v4[4..6], &4u16.to_be_bytes());
        let decoded = Block::decode(&v4).unwrap();
        assert_eq!(decoded.receipts[1].organization, "org-b");
        assert_eq!(decoded.encode(), v4);
        // The format-3 block with its version field rewritten to 4 (and the
        // organization field it then needs, empty) is not canonical.
        let mut forged = BytesMut::new();
        forged.put_slice(&v3[..4]);
        forged.put_u16(4);
        let mut rest = &v3[6..];
        let fixed = FIXED_BYTES - 6;
        forged.put_slice(&rest[..fixed]);
        rest = &rest[fixed..];
        let r = Receipt::decode_from(&mut rest, 3).unwrap();
        r.encode_into(&mut forged, 4);
        forged.put_slice(rest);
        assert_eq!(Block::decode(&forged.freeze()), Err(BlockError::NotCanonical));
    }

    /// A block naming its senders is written in format 5 and names them
    /// back; without senders it keeps format 3 or 4; a format-5 encoding
    /// with no sender, or with senders out of order, is refused.
    #[test]
    fn senders_take_format_5_and_say_who_sent_each_record() {
        let mut block = sample_block();
        block.base_offset = 10;
        block.next_offset = 20;
        assert_eq!(block.format(), 3);
        let a = Sender {
            first_offset: 10,
            principal: "User:a-producer".into(),
            organization: "org-a".into(),
        };
        let c = Sender {
            first_offset: 15,
            principal: "User:c".into(),
            organization: "org-c".into(),
        };
        block.senders = vec![a.clone(), c.clone()];
        let v5 = block.encode();
        assert_eq!(&v5[4..6], &5u16.to_be_bytes());
        let back = Block::decode(&v5).unwrap();
        assert_eq!(back, block);
        assert_eq!(back.sender_of(9), None);
        assert_eq!(back.sender_of(10), Some(&a));
        assert_eq!(back.sender_of(14), Some(&a));
        assert_eq!(back.sender_of(15), Some(&c));
        assert_eq!(back.sender_of(20), None);

        // Out of order: not canonical (the reader could not tell runs apart).
        block.senders = vec![c.clone(), a.clone()];
        assert_eq!(Block::decode(&block.encode()), Err(BlockError::NotCanonical));
        // Format 5 with no sender: the same block in format 3 has another hash.
        block.senders.clear();
        let v3 = block.encode();
        let head_end = v3.len() - block.batches.len() - 36;
        let mut forged = BytesMut::new();
        forged.put_slice(&v3[..4]);
        forged.put_u16(5);
        forged.put_slice(&v3[6..head_end]);
        forged.put_u32(0);
        forged.put_slice(&v3[head_end..]);
        assert_eq!(Block::decode(&forged.freeze()), Err(BlockError::NotCanonical));
    }

    #[test]
    fn senders_within_a_range_start_at_its_first_offset() {
        let s = |first_offset: i64, p: &str| Sender {
            first_offset,
            principal: p.into(),
            organization: String::new(),
        };
        let runs = vec![s(0, "a"), s(5, "b"), s(9, "c")];
        assert_eq!(senders_within(&runs, 0, 5), vec![s(0, "a")]);
        assert_eq!(senders_within(&runs, 3, 9), vec![s(3, "a"), s(5, "b")]);
        assert_eq!(senders_within(&runs, 7, 12), vec![s(7, "b"), s(9, "c")]);
        assert_eq!(senders_within(&runs, 12, 15), vec![s(12, "c")]);
        assert_eq!(senders_within(&[], 0, 5), vec![]);
    }

    prop_compose! {
        fn arb_block()(topic_id in any::<[u8; 16]>(), partition in any::<i32>(), height in any::<u64>(),
                       view in any::<u64>(), prev in any::<[u8; 32]>(), base_offset in any::<i64>(),
                       next_offset in any::<i64>(), max_timestamp in any::<i64>(), config_version in any::<u64>(),
                       receipts in proptest::collection::vec(arb_receipt(), 0..4),
                       requests in proptest::collection::vec((any::<u8>(), any::<u64>(), any::<i16>(), any::<i64>()), 0..4),
                       senders in proptest::collection::btree_map(any::<i64>(), ("User:.{0,8}", ".{0,6}"), 0..3),
                       batches in proptest::collection::vec(any::<u8>(), 0..200)) -> Block {
            let requests = requests.into_iter()
                .map(|(origin, number, error_code, base_offset)| RequestRecord { origin, number, error_code, base_offset })
                .collect();
            let senders = senders.into_iter()
                .map(|(first_offset, (principal, organization))| Sender { first_offset, principal, organization })
                .collect();
            Block { partition: PartitionKey { topic_id, partition }, height, view, prev_hash: BlockHash(prev),
                    base_offset, next_offset, max_timestamp, config_version, receipts, requests, senders,
                    batches: Bytes::from(batches) }
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(block in arb_block()) {
            let bytes = block.encode();
            let back = Block::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &block);
            prop_assert_eq!(back.encode(), bytes);
        }

        #[test]
        fn any_bytes_decode_or_error(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Block::decode(&Bytes::from(data));
        }

        #[test]
        fn any_change_is_refused_or_changes_the_hash(block in arb_block(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = block.encode();
            let (_, hash) = Block::decode_hashed(&bytes).unwrap();
            prop_assert_eq!(hash, block.hash());
            let mut m = bytes.to_vec();
            let i = pos.index(m.len());
            m[i] ^= 1 << bit;
            if let Ok((_, changed)) = Block::decode_hashed(&Bytes::from(m)) {
                prop_assert_ne!(changed, hash);
            }
        }

        #[test]
        fn a_head_alone_gives_the_hash(block in arb_block()) {
            let head = block.encode_head();
            let h = Block::head_only(&head).unwrap();
            prop_assert_eq!(BlockHash::of(&head), block.hash());
            prop_assert_eq!(h.batches_len, block.batches.len());
            prop_assert_eq!(h.batches_digest, BlockHash::of(&block.batches));
            let sealed = Block::decode_sealed(&block.encode()).unwrap();
            prop_assert_eq!(&sealed.head[..], &head[..]);
            prop_assert_eq!(sealed.hash, block.hash());
        }
    }

    fn sample_block() -> Block {
        Block {
            partition: PartitionKey {
                topic_id: [1; 16],
                partition: 0,
            },
            height: 0,
            view: 0,
            prev_hash: BlockHash::ZERO,
            base_offset: 0,
            next_offset: 0,
            max_timestamp: -1,
            config_version: 0,
            receipts: vec![],
            requests: vec![],
            senders: vec![],
            batches: Bytes::new(),
        }
    }

    #[test]
    fn trailing_bytes_are_not_canonical() {
        let block = sample_block();
        let mut b = block.encode().to_vec();
        b.push(0);
        assert_eq!(Block::decode(&Bytes::from(b)), Err(BlockError::TrailingBytes(1)));
    }
}
