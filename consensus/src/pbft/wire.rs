//! Byte encoding of consensus messages, durable records and certificates:
//! what crosses the node transport, what the durable log holds, and what a
//! block's certificate looks like on disk.
//!
//! Big-endian and length-prefixed. Decoding takes untrusted bytes: every
//! length is checked against what is left, nested messages may only be of
//! the kinds their place allows (so nesting depth is fixed), and payloads
//! are slices of the input, never copies. Trailing bytes are an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::message::{kind, Batch, Message, PreparedCert, QuorumCert, ReplicaId, Request, RequestId, SignedMessage};
use super::Durable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("a {got} message where only kind {expected} may stand")]
    MisplacedKind { got: u8, expected: u8 },
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    #[error("signature of {0} bytes")]
    BadSignatureLength(usize),
    #[error("a list where exactly one message must stand")]
    NotOne,
    #[error("unknown record tag {0}")]
    UnknownRecord(u8),
}

/// Ed25519 signatures are 64 bytes.
const SIGNATURE_BYTES: usize = 64;

pub fn encode_message(m: &SignedMessage) -> BytesMut {
    let mut out = BytesMut::with_capacity(encoded_len_hint(&m.message));
    put_message(&mut out, m);
    out
}

/// Appends a message's encoding to `out` (e.g. after a frame header, so
/// a large batch is copied once).
pub fn encode_message_into(out: &mut BytesMut, m: &SignedMessage) {
    out.reserve(encoded_len_hint(&m.message));
    put_message(out, m);
}

/// Decodes one whole message.
pub fn decode_message(bytes: Bytes) -> Result<SignedMessage, WireError> {
    let mut r = Reader(bytes);
    let m = r.message(None)?;
    r.finish()?;
    Ok(m)
}

fn encoded_len_hint(m: &Message) -> usize {
    match m {
        Message::Request(r) => 128 + r.payload.len(),
        Message::PrePrepare { batch, .. } => 128 + batch.encoded_len(),
        _ => 256,
    }
}

fn put_message(out: &mut BytesMut, m: &SignedMessage) {
    out.put_u8(m.sender);
    out.put_u64(m.cluster);
    out.put_u8(m.message.kind());
    match &m.message {
        Message::Request(r) => put_request(out, r),
        Message::PrePrepare {
            view,
            seq,
            digest,
            batch,
        } => {
            out.put_u64(*view);
            out.put_u64(*seq);
            out.put_slice(digest);
            out.put_u64(batch.view);
            out.put_u32(batch.requests.len() as u32);
            for r in &batch.requests {
                put_request(out, r);
            }
        }
        Message::Prepare { view, seq, digest } | Message::Commit { view, seq, digest } => {
            out.put_u64(*view);
            out.put_u64(*seq);
            out.put_slice(digest);
        }
        Message::Checkpoint { seq, state } => {
            out.put_u64(*seq);
            out.put_slice(state);
        }
        Message::ViewChange {
            new_view,
            stable_seq,
            checkpoint_proof,
            prepared,
        } => {
            out.put_u64(*new_view);
            out.put_u64(*stable_seq);
            put_nested(out, checkpoint_proof);
            out.put_u32(prepared.len() as u32);
            for p in prepared {
                put_nested(out, std::slice::from_ref(&p.pre_prepare));
                put_nested(out, &p.prepares);
            }
        }
        Message::NewView {
            view,
            view_changes,
            pre_prepares,
        } => {
            out.put_u64(*view);
            put_nested(out, view_changes);
            put_nested(out, pre_prepares);
        }
        Message::Committed { pre_prepare, commits } => {
            put_nested(out, std::slice::from_ref(&**pre_prepare));
            put_nested(out, commits);
        }
    }
    out.put_u16(m.signature.len() as u16);
    out.put_slice(&m.signature);
}

fn put_request(out: &mut BytesMut, r: &Request) {
    out.put_u8(r.id.origin);
    out.put_u64(r.id.number);
    out.put_u32(r.payload.len() as u32);
    out.put_slice(&r.payload);
}

/// A count, then each message with its length.
fn put_nested(out: &mut BytesMut, msgs: &[SignedMessage]) {
    out.put_u32(msgs.len() as u32);
    for m in msgs {
        let at = out.len();
        out.put_u32(0);
        put_message(out, m);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.0.remaining() < n {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn digest(&mut self) -> Result<[u8; 32], WireError> {
        self.need(32)?;
        let mut d = [0u8; 32];
        self.0.copy_to_slice(&mut d);
        Ok(d)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn finish(&self) -> Result<(), WireError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }

    fn request(&mut self) -> Result<Request, WireError> {
        let origin = self.u8()?;
        let number = self.u64()?;
        let len = self.u32()? as usize;
        Ok(Request {
            id: RequestId { origin, number },
            payload: self.bytes(len)?,
        })
    }

    /// Nested messages, each only of kind `expected`.
    fn nested(&mut self, expected: u8) -> Result<Vec<SignedMessage>, WireError> {
        let count = self.u32()?;
        let mut out = Vec::new();
        for _ in 0..count {
            let len = self.u32()? as usize;
            let mut inner = Reader(self.bytes(len)?);
            out.push(inner.message(Some(expected))?);
            inner.finish()?;
        }
        Ok(out)
    }

    /// Exactly one nested message of kind `expected`.
    fn one(&mut self, expected: u8) -> Result<SignedMessage, WireError> {
        let mut list = self.nested(expected)?;
        match (list.pop(), list.is_empty()) {
            (Some(m), true) => Ok(m),
            _ => Err(WireError::NotOne),
        }
    }

    fn message(&mut self, expected: Option<u8>) -> Result<SignedMessage, WireError> {
        let sender: ReplicaId = self.u8()?;
        let cluster = self.u64()?;
        let k = self.u8()?;
        if let Some(expected) = expected.filter(|e| *e != k) {
            return Err(WireError::MisplacedKind { got: k, expected });
        }
        let message = match k {
            kind::REQUEST => Message::Request(self.request()?),
            kind::PRE_PREPARE => {
                let view = self.u64()?;
                let seq = self.u64()?;
                let digest = self.digest()?;
                let batch_view = self.u64()?;
                let count = self.u32()?;
                let mut requests = Vec::new();
                for _ in 0..count {
                    requests.push(self.request()?);
                }
                Message::PrePrepare {
                    view,
                    seq,
                    digest,
                    batch: Batch {
                        view: batch_view,
                        requests,
                    },
                }
            }
            kind::PREPARE | kind::COMMIT => {
                let (view, seq, digest) = (self.u64()?, self.u64()?, self.digest()?);
                if k == kind::PREPARE {
                    Message::Prepare { view, seq, digest }
                } else {
                    Message::Commit { view, seq, digest }
                }
            }
            kind::CHECKPOINT => Message::Checkpoint {
                seq: self.u64()?,
                state: self.digest()?,
            },
            kind::VIEW_CHANGE => {
                let new_view = self.u64()?;
                let stable_seq = self.u64()?;
                let checkpoint_proof = self.nested(kind::CHECKPOINT)?;
                let count = self.u32()?;
                let mut prepared = Vec::new();
                for _ in 0..count {
                    let pre_prepare = self.one(kind::PRE_PREPARE)?;
                    let prepares = self.nested(kind::PREPARE)?;
                    prepared.push(PreparedCert { pre_prepare, prepares });
                }
                Message::ViewChange {
                    new_view,
                    stable_seq,
                    checkpoint_proof,
                    prepared,
                }
            }
            kind::NEW_VIEW => Message::NewView {
                view: self.u64()?,
                view_changes: self.nested(kind::VIEW_CHANGE)?,
                pre_prepares: self.nested(kind::PRE_PREPARE)?,
            },
            kind::COMMITTED => {
                let pre_prepare = self.one(kind::PRE_PREPARE)?;
                Message::Committed {
                    pre_prepare: Box::new(pre_prepare),
                    commits: self.nested(kind::COMMIT)?,
                }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        let sig_len = self.u16()? as usize;
        if sig_len != SIGNATURE_BYTES {
            return Err(WireError::BadSignatureLength(sig_len));
        }
        Ok(SignedMessage {
            cluster,
            sender,
            message,
            signature: self.bytes(sig_len)?,
        })
    }
}

// ---- durable records ------------------------------------------------------

const RECORD_VIEW: u8 = 1;
const RECORD_PRE_PREPARE: u8 = 2;
const RECORD_PREPARED: u8 = 3;
const RECORD_ABSTAIN: u8 = 4;

pub fn encode_durable(record: &Durable) -> BytesMut {
    let mut out = BytesMut::new();
    match record {
        Durable::View { view, changing } => {
            out.put_u8(RECORD_VIEW);
            out.put_u64(*view);
            out.put_u8(u8::from(*changing));
        }
        Durable::PrePrepare(pp) => {
            out.put_u8(RECORD_PRE_PREPARE);
            put_message(&mut out, pp);
        }
        Durable::Prepared { seq, view, prepares } => {
            out.put_u8(RECORD_PREPARED);
            out.put_u64(*seq);
            out.put_u64(*view);
            put_nested(&mut out, prepares);
        }
        Durable::Abstain { through } => {
            out.put_u8(RECORD_ABSTAIN);
            out.put_u64(*through);
        }
    }
    out
}

pub fn decode_durable(bytes: Bytes) -> Result<Durable, WireError> {
    let mut r = Reader(bytes);
    let record = match r.u8()? {
        RECORD_VIEW => Durable::View {
            view: r.u64()?,
            changing: r.u8()? != 0,
        },
        RECORD_PRE_PREPARE => Durable::PrePrepare(r.message(Some(kind::PRE_PREPARE))?),
        RECORD_PREPARED => Durable::Prepared {
            seq: r.u64()?,
            view: r.u64()?,
            prepares: r.nested(kind::PREPARE)?,
        },
        RECORD_ABSTAIN => Durable::Abstain { through: r.u64()? },
        other => return Err(WireError::UnknownRecord(other)),
    };
    r.finish()?;
    Ok(record)
}

// ---- certificates -----------------------------------------------------------

pub fn encode_cert(cert: &QuorumCert) -> BytesMut {
    let mut out = BytesMut::with_capacity(48 + cert.votes.len() * 128);
    out.put_u64(cert.seq);
    out.put_slice(&cert.state);
    put_nested(&mut out, &cert.votes);
    out
}

pub fn decode_cert(bytes: Bytes) -> Result<QuorumCert, WireError> {
    let mut r = Reader(bytes);
    let cert = QuorumCert {
        seq: r.u64()?,
        state: r.digest()?,
        votes: r.nested(kind::CHECKPOINT)?,
    };
    r.finish()?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbft::public_key;
    use proptest::prelude::*;
    use ring::signature::Ed25519KeyPair;

    fn key(i: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[i + 1; 32]).unwrap()
    }

    fn request(origin: u8, number: u64, payload: &[u8]) -> Request {
        Request {
            id: RequestId { origin, number },
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// One message of every kind, nested ones included.
    fn samples() -> Vec<SignedMessage> {
        let s = |i: u8, m| SignedMessage::sign(5, i, &key(i), m);
        let batch = Batch {
            view: 2,
            requests: vec![request(0, 1, b"abc"), request(3, 9, b"")],
        };
        let d = batch.digest();
        let pp = s(
            2,
            Message::PrePrepare {
                view: 2,
                seq: 7,
                digest: d,
                batch,
            },
        );
        let prepare = |i| {
            s(
                i,
                Message::Prepare {
                    view: 2,
                    seq: 7,
                    digest: d,
                },
            )
        };
        let cp = |i| s(i, Message::Checkpoint { seq: 6, state: [4; 32] });
        let vc = s(
            1,
            Message::ViewChange {
                new_view: 3,
                stable_seq: 6,
                checkpoint_proof: vec![cp(0), cp(1), cp(3)],
                prepared: vec![PreparedCert {
                    pre_prepare: pp.clone(),
                    prepares: vec![prepare(0), prepare(1)],
                }],
            },
        );
        let nv = s(
            3,
            Message::NewView {
                view: 3,
                view_changes: vec![vc.clone()],
                pre_prepares: vec![pp.clone()],
            },
        );
        let commit = |i| {
            s(
                i,
                Message::Commit {
                    view: 2,
                    seq: 7,
                    digest: d,
                },
            )
        };
        let committed = s(
            0,
            Message::Committed {
                pre_prepare: Box::new(pp.clone()),
                commits: vec![commit(0), commit(1), commit(3)],
            },
        );
        vec![
            s(0, Message::Request(request(0, 4, b"payload"))),
            committed,
            pp,
            prepare(1),
            commit(1),
            cp(2),
            vc,
            nv,
        ]
    }

    #[test]
    fn every_message_kind_round_trips_and_still_verifies() {
        let members: Vec<Bytes> = (0..4).map(|i| public_key(&key(i))).collect();
        for m in samples() {
            let bytes = encode_message(&m).freeze();
            let back = decode_message(bytes.clone()).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.verify(5, &members), Ok(()));
            assert_eq!(encode_message(&back).freeze(), bytes, "canonical");
        }
    }

    #[test]
    fn records_and_certificates_round_trip() {
        let msgs = samples();
        let records = [
            Durable::View {
                view: 9,
                changing: true,
            },
            Durable::PrePrepare(msgs[2].clone()),
            Durable::Prepared {
                seq: 7,
                view: 2,
                prepares: vec![msgs[3].clone()],
            },
            Durable::Abstain { through: 41 },
        ];
        for r in records {
            assert_eq!(decode_durable(encode_durable(&r).freeze()).unwrap(), r);
        }
        let cert = QuorumCert {
            seq: 6,
            state: [4; 32],
            votes: vec![msgs[5].clone()],
        };
        assert_eq!(decode_cert(encode_cert(&cert).freeze()).unwrap(), cert);
        // A prepare where a checkpoint must stand is refused.
        let wrong = QuorumCert {
            votes: vec![msgs[3].clone()],
            ..cert
        };
        assert!(matches!(
            decode_cert(encode_cert(&wrong).freeze()),
            Err(WireError::MisplacedKind { .. })
        ));
    }

    #[test]
    fn truncations_and_trailing_bytes_are_errors() {
        for m in samples() {
            let bytes = encode_message(&m).freeze();
            for cut in 0..bytes.len() {
                assert!(decode_message(bytes.slice(..cut)).is_err(), "cut at {cut}");
            }
            let mut longer = BytesMut::from(&bytes[..]);
            longer.put_u8(0);
            assert_eq!(decode_message(longer.freeze()), Err(WireError::TrailingBytes(1)));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_or_fail_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(Bytes::from(raw.clone()));
            let _ = decode_durable(Bytes::from(raw.clone()));
            let _ = decode_cert(Bytes::from(raw));
        }

        #[test]
        fn flipped_bytes_of_real_messages_never_panic(which in 0usize..8, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let m = &samples()[which];
            let mut raw = encode_message(m).to_vec();
            let i = at.index(raw.len());
            raw[i] ^= 1 << bit;
            let _ = decode_message(Bytes::from(raw));
        }
    }
}
