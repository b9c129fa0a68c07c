//! Consensus messages, their canonical signing bytes, and signatures.
//!
//! Every message is signed by its sender's ed25519 key over a domain tag,
//! the cluster id, the sender and the message's fields, so a signature for
//! one cluster or message kind can never be replayed as another. Batches
//! and request payloads are covered through their SHA-256.

use bytes::{BufMut, Bytes, BytesMut};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Index of a replica within its cluster (0..n).
pub type ReplicaId = u8;

/// SHA-256 of a batch's canonical encoding, or of a replica's state.
pub type Digest = [u8; 32];

pub fn digest(bytes: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Who submitted a request and its number there: unique per cluster, so
/// execution can recognise a request ordered twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    pub origin: ReplicaId,
    pub number: u64,
}

/// One client request as a cluster orders it. The payload is opaque here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub payload: Bytes,
}

impl Request {
    /// Bytes this request adds to a batch's encoding.
    pub fn encoded_len(&self) -> usize {
        1 + 8 + 4 + self.payload.len()
    }
}

/// What a primary proposes for one sequence number: the view it was cut in
/// (kept when a later view re-proposes it, so execution is the same
/// everywhere) and its requests, in order. An empty batch fills a gap.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Batch {
    pub view: u64,
    pub requests: Vec<Request>,
}

impl Batch {
    /// Bytes of the canonical encoding:
    /// `view u64 | count u32 | (origin u8 | number u64 | len u32 | payload)*`.
    pub fn encoded_len(&self) -> usize {
        8 + 4 + self.requests.iter().map(Request::encoded_len).sum::<usize>()
    }

    /// SHA-256 of the canonical encoding, hashed piece by piece so the
    /// payloads are never copied together.
    pub fn digest(&self) -> Digest {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut head = [0u8; 13];
        ctx.update(&self.view.to_be_bytes());
        ctx.update(&(self.requests.len() as u32).to_be_bytes());
        for r in &self.requests {
            head[0] = r.id.origin;
            head[1..9].copy_from_slice(&r.id.number.to_be_bytes());
            head[9..13].copy_from_slice(&(r.payload.len() as u32).to_be_bytes());
            ctx.update(&head);
            ctx.update(&r.payload);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// What replicas say to each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A replica hands a request it received to the primary (or, when the
    /// primary seems not to order it, to everyone).
    Request(Request),
    /// The primary of `view` assigns `seq` to a batch.
    PrePrepare {
        view: u64,
        seq: u64,
        digest: Digest,
        batch: Batch,
    },
    /// A backup accepted the pre-prepare for (view, seq, digest).
    Prepare { view: u64, seq: u64, digest: Digest },
    /// The sender holds a prepared certificate for (view, seq, digest).
    Commit { view: u64, seq: u64, digest: Digest },
    /// The sender executed everything up to `seq`, reaching `state` (the
    /// hash of its ledger head). 2f + 1 matching ones are a [`QuorumCert`].
    Checkpoint { seq: u64, state: Digest },
    /// The sender wants to move to `new_view`. It proves its last stable
    /// checkpoint (2f + 1 signed CHECKPOINTs, empty at 0) and every batch it
    /// had prepared above it.
    ViewChange {
        new_view: u64,
        stable_seq: u64,
        checkpoint_proof: Vec<SignedMessage>,
        prepared: Vec<PreparedCert>,
    },
    /// The primary of `view` starts it: 2f + 1 VIEW-CHANGEs, and the
    /// pre-prepares (signed for `view`) that every replica recomputes from them.
    NewView {
        view: u64,
        view_changes: Vec<SignedMessage>,
        pre_prepares: Vec<SignedMessage>,
    },
    /// A batch whose order is final, handed to a peer that fell behind in
    /// any view: its pre-prepare and 2f + 1 matching COMMITs.
    Committed {
        pre_prepare: Box<SignedMessage>,
        commits: Vec<SignedMessage>,
    },
}

/// A batch prepared in some view: its signed pre-prepare and 2f matching
/// signed prepares from distinct backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedCert {
    pub pre_prepare: SignedMessage,
    pub prepares: Vec<SignedMessage>,
}

/// One hash over nested signed messages, so an outer signature covers them.
fn nested_digest<'a>(msgs: impl IntoIterator<Item = &'a SignedMessage>) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for m in msgs {
        ctx.update(&[m.sender]);
        ctx.update(&m.message.signing_bytes(m.cluster, m.sender));
        ctx.update(&(m.signature.len() as u32).to_be_bytes());
        ctx.update(&m.signature);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

const DOMAIN: &[u8] = b"courier-pbft-v1";

/// Message kind tags, in signing bytes and on the wire.
pub(crate) mod kind {
    pub const PRE_PREPARE: u8 = 1;
    pub const PREPARE: u8 = 2;
    pub const COMMIT: u8 = 3;
    pub const CHECKPOINT: u8 = 4;
    pub const VIEW_CHANGE: u8 = 5;
    pub const NEW_VIEW: u8 = 6;
    pub const REQUEST: u8 = 7;
    pub const COMMITTED: u8 = 8;
}

impl Message {
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Message::Request(_) => kind::REQUEST,
            Message::PrePrepare { .. } => kind::PRE_PREPARE,
            Message::Prepare { .. } => kind::PREPARE,
            Message::Commit { .. } => kind::COMMIT,
            Message::Checkpoint { .. } => kind::CHECKPOINT,
            Message::ViewChange { .. } => kind::VIEW_CHANGE,
            Message::NewView { .. } => kind::NEW_VIEW,
            Message::Committed { .. } => kind::COMMITTED,
        }
    }

    /// Canonical bytes a signature covers (batches and payloads by digest).
    fn signing_bytes(&self, cluster: u64, sender: ReplicaId) -> BytesMut {
        let mut b = BytesMut::with_capacity(96);
        b.put_slice(DOMAIN);
        b.put_u64(cluster);
        b.put_u8(sender);
        b.put_u8(self.kind());
        match self {
            Message::Request(r) => {
                b.put_u8(r.id.origin);
                b.put_u64(r.id.number);
                b.put_slice(&digest(&r.payload));
            }
            Message::PrePrepare { view, seq, digest, .. }
            | Message::Prepare { view, seq, digest }
            | Message::Commit { view, seq, digest } => {
                b.put_u64(*view);
                b.put_u64(*seq);
                b.put_slice(digest);
            }
            Message::Checkpoint { seq, state } => {
                b.put_u64(*seq);
                b.put_slice(state);
            }
            Message::ViewChange {
                new_view,
                stable_seq,
                checkpoint_proof,
                prepared,
            } => {
                b.put_u64(*new_view);
                b.put_u64(*stable_seq);
                b.put_slice(&nested_digest(checkpoint_proof));
                b.put_u32(prepared.len() as u32);
                for p in prepared {
                    b.put_slice(&nested_digest(std::iter::once(&p.pre_prepare).chain(&p.prepares)));
                }
            }
            Message::NewView {
                view,
                view_changes,
                pre_prepares,
            } => {
                b.put_u64(*view);
                b.put_slice(&nested_digest(view_changes));
                b.put_slice(&nested_digest(pre_prepares));
            }
            Message::Committed { pre_prepare, commits } => {
                b.put_slice(&nested_digest(std::iter::once(&**pre_prepare).chain(commits)));
            }
        }
        b
    }
}

/// A message with its sender and the sender's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMessage {
    pub cluster: u64,
    pub sender: ReplicaId,
    pub message: Message,
    pub signature: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("sender {0} is not a member of this cluster")]
    UnknownSender(ReplicaId),
    #[error("message is for cluster {got}, not {expected}")]
    WrongCluster { got: u64, expected: u64 },
    #[error("signature does not verify")]
    BadSignature,
    #[error("batch does not match its digest")]
    BadDigest,
    #[error("a request forwarded by {sender} claims origin {origin}")]
    WrongOrigin { sender: ReplicaId, origin: ReplicaId },
    #[error("certificate has {got} distinct valid signers, needs {needed}")]
    TooFewSigners { got: usize, needed: usize },
    #[error("certificate holds a message for another slot or state")]
    Mismatch,
}

/// Signatures already found valid, so that a message seen again (a
/// retransmission, a duplicate, or one nested in a VIEW-CHANGE, NEW-VIEW or
/// certificate) is not verified twice. Keyed by a hash of the public key,
/// the signed bytes and the signature, so a hit proves the same check
/// passed before. Bounded: the oldest entries are forgotten first.
pub struct SignatureCache {
    known: std::collections::HashSet<Digest>,
    order: std::collections::VecDeque<Digest>,
    capacity: usize,
}

impl SignatureCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            known: std::collections::HashSet::with_capacity(capacity),
            order: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn check(&mut self, key: &[u8], signed: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(key);
        ctx.update(signed);
        ctx.update(sig);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        if self.known.contains(&fingerprint) {
            return Ok(());
        }
        UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(signed, sig)
            .map_err(|_| VerifyError::BadSignature)?;
        if self.capacity > 0 {
            if self.order.len() == self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
            self.known.insert(fingerprint);
            self.order.push_back(fingerprint);
        }
        Ok(())
    }
}

impl SignedMessage {
    pub fn sign(cluster: u64, sender: ReplicaId, key: &Ed25519KeyPair, message: Message) -> Self {
        let sig = key.sign(&message.signing_bytes(cluster, sender));
        SignedMessage {
            cluster,
            sender,
            message,
            signature: Bytes::copy_from_slice(sig.as_ref()),
        }
    }

    /// Checks cluster, membership, signature and (for a pre-prepare) that the
    /// batch hashes to the digest that was signed.
    pub fn verify(&self, cluster: u64, members: &[Bytes]) -> Result<(), VerifyError> {
        self.verify_cached(cluster, members, &mut SignatureCache::new(0))
    }

    /// [`SignedMessage::verify`], skipping signatures `cache` has seen pass.
    pub fn verify_cached(
        &self,
        cluster: u64,
        members: &[Bytes],
        cache: &mut SignatureCache,
    ) -> Result<(), VerifyError> {
        if self.cluster != cluster {
            return Err(VerifyError::WrongCluster {
                got: self.cluster,
                expected: cluster,
            });
        }
        let key = members
            .get(self.sender as usize)
            .ok_or(VerifyError::UnknownSender(self.sender))?;
        cache.check(key, &self.message.signing_bytes(cluster, self.sender), &self.signature)?;
        match &self.message {
            Message::PrePrepare { digest: d, batch, .. } if batch.digest() != *d => Err(VerifyError::BadDigest),
            // A request is relayed by others only once its origin signed it,
            // so only the origin may sign one.
            Message::Request(r) if r.id.origin != self.sender => Err(VerifyError::WrongOrigin {
                sender: self.sender,
                origin: r.id.origin,
            }),
            _ => Ok(()),
        }
    }

    /// Sequence number, view and digest of a pre-prepare, prepare or commit.
    pub fn slot(&self) -> Option<(u64, u64, Digest)> {
        match &self.message {
            Message::PrePrepare { view, seq, digest, .. }
            | Message::Prepare { view, seq, digest }
            | Message::Commit { view, seq, digest } => Some((*view, *seq, *digest)),
            _ => None,
        }
    }
}

/// Checks that `votes` holds `expected`, signed by at least `quorum`
/// distinct members of the cluster, and nothing else.
fn verify_votes(
    votes: &[SignedMessage],
    expected: &Message,
    cluster: u64,
    members: &[Bytes],
    quorum: usize,
    cache: &mut SignatureCache,
) -> Result<(), VerifyError> {
    let mut seen = std::collections::BTreeSet::new();
    for v in votes {
        if v.message != *expected {
            return Err(VerifyError::Mismatch);
        }
        v.verify_cached(cluster, members, cache)?;
        seen.insert(v.sender);
    }
    if seen.len() < quorum {
        return Err(VerifyError::TooFewSigners {
            got: seen.len(),
            needed: quorum,
        });
    }
    Ok(())
}

/// Proof that a batch's order is final: 2f + 1 signed COMMITs for one
/// (view, seq, digest), from distinct replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitCert {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub commits: Vec<SignedMessage>,
}

impl CommitCert {
    /// Verifies the certificate from the members' public keys alone.
    pub fn verify(&self, cluster: u64, members: &[Bytes], quorum: usize) -> Result<(), VerifyError> {
        self.verify_cached(cluster, members, quorum, &mut SignatureCache::new(0))
    }

    pub fn verify_cached(
        &self,
        cluster: u64,
        members: &[Bytes],
        quorum: usize,
        cache: &mut SignatureCache,
    ) -> Result<(), VerifyError> {
        let expected = Message::Commit {
            view: self.view,
            seq: self.seq,
            digest: self.digest,
        };
        verify_votes(&self.commits, &expected, cluster, members, quorum, cache)
    }
}

/// Proof that executing everything up to `seq` gives `state`: 2f + 1 signed
/// CHECKPOINTs from distinct replicas. For a partition, `state` is the hash
/// of the block at height `seq - 1`, which covers the whole chain below it:
/// this is the quorum certificate a block carries on the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumCert {
    pub seq: u64,
    pub state: Digest,
    pub votes: Vec<SignedMessage>,
}

impl QuorumCert {
    /// Verifies the certificate from the members' public keys alone.
    pub fn verify(&self, cluster: u64, members: &[Bytes], quorum: usize) -> Result<(), VerifyError> {
        self.verify_cached(cluster, members, quorum, &mut SignatureCache::new(0))
    }

    pub fn verify_cached(
        &self,
        cluster: u64,
        members: &[Bytes],
        quorum: usize,
        cache: &mut SignatureCache,
    ) -> Result<(), VerifyError> {
        let expected = Message::Checkpoint {
            seq: self.seq,
            state: self.state,
        };
        verify_votes(&self.votes, &expected, cluster, members, quorum, cache)
    }
}

/// The public key of a key pair, as members lists hold it.
pub fn public_key(key: &Ed25519KeyPair) -> Bytes {
    Bytes::copy_from_slice(key.public_key().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn keys(n: u8) -> Vec<Ed25519KeyPair> {
        (0..n)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[0] = i;
                Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
            })
            .collect()
    }

    fn batch(payload: &'static [u8]) -> Batch {
        Batch {
            view: 0,
            requests: vec![Request {
                id: RequestId { origin: 0, number: 1 },
                payload: Bytes::from_static(payload),
            }],
        }
    }

    #[test]
    fn signatures_bind_sender_cluster_and_content() {
        let k = keys(4);
        let members: Vec<Bytes> = k.iter().map(public_key).collect();
        let b = batch(b"a");
        let m = Message::PrePrepare {
            view: 0,
            seq: 1,
            digest: b.digest(),
            batch: b,
        };
        let signed = SignedMessage::sign(9, 0, &k[0], m.clone());
        assert_eq!(signed.verify(9, &members), Ok(()));
        assert_eq!(
            signed.verify(8, &members),
            Err(VerifyError::WrongCluster { got: 9, expected: 8 })
        );
        // Claiming another sender, or signing with a key not in the cluster.
        let mut claimed = signed.clone();
        claimed.sender = 1;
        assert_eq!(claimed.verify(9, &members), Err(VerifyError::BadSignature));
        let outsider = SignedMessage::sign(9, 2, &keys(9)[8], m);
        assert_eq!(outsider.verify(9, &members), Err(VerifyError::BadSignature));
        // The batch is covered through its digest.
        let mut swapped = signed.clone();
        if let Message::PrePrepare { batch: b, .. } = &mut swapped.message {
            *b = batch(b"b");
        }
        assert_eq!(swapped.verify(9, &members), Err(VerifyError::BadDigest));
        let mut stranger = signed;
        stranger.sender = 9;
        assert_eq!(stranger.verify(9, &members), Err(VerifyError::UnknownSender(9)));
    }

    #[test]
    fn requests_are_signed_by_their_origin_over_the_payload() {
        let k = keys(4);
        let members: Vec<Bytes> = k.iter().map(public_key).collect();
        let r = Request {
            id: RequestId { origin: 2, number: 7 },
            payload: Bytes::from_static(b"records"),
        };
        let signed = SignedMessage::sign(1, 2, &k[2], Message::Request(r.clone()));
        assert_eq!(signed.verify(1, &members), Ok(()));
        let mut changed = signed.clone();
        if let Message::Request(r) = &mut changed.message {
            r.payload = Bytes::from_static(b"recordz");
        }
        assert_eq!(changed.verify(1, &members), Err(VerifyError::BadSignature));
        let relayed = SignedMessage::sign(1, 3, &k[3], Message::Request(r));
        assert_eq!(
            relayed.verify(1, &members),
            Err(VerifyError::WrongOrigin { sender: 3, origin: 2 })
        );
    }

    #[test]
    fn a_batch_digest_covers_view_order_identity_and_payload() {
        let two = |a: (u8, u64, &'static [u8]), b: (u8, u64, &'static [u8]), view| Batch {
            view,
            requests: [a, b]
                .into_iter()
                .map(|(origin, number, p)| Request {
                    id: RequestId { origin, number },
                    payload: Bytes::from_static(p),
                })
                .collect(),
        };
        let base = two((0, 1, b"x"), (1, 1, b"y"), 0).digest();
        assert_ne!(base, two((1, 1, b"y"), (0, 1, b"x"), 0).digest(), "order");
        assert_ne!(base, two((0, 1, b"x"), (1, 1, b"y"), 1).digest(), "view");
        assert_ne!(base, two((0, 2, b"x"), (1, 1, b"y"), 0).digest(), "number");
        assert_ne!(base, two((0, 1, b"xy"), (1, 1, b""), 0).digest(), "boundaries");
        assert_eq!(base, two((0, 1, b"x"), (1, 1, b"y"), 0).digest());
    }

    #[test]
    fn certificates_need_2f_plus_1_distinct_valid_votes_for_one_thing() {
        let k = keys(4);
        let members: Vec<Bytes> = k.iter().map(public_key).collect();
        let state = [3u8; 32];
        let vote = |i: u8| SignedMessage::sign(1, i, &k[i as usize], Message::Checkpoint { seq: 5, state });
        let cert = |votes| QuorumCert { seq: 5, state, votes };
        assert!(cert(vec![vote(0), vote(1), vote(3)]).verify(1, &members, 3).is_ok());
        assert_eq!(
            cert(vec![vote(0), vote(1), vote(1)]).verify(1, &members, 3),
            Err(VerifyError::TooFewSigners { got: 2, needed: 3 }),
            "a duplicate counts once"
        );
        let mut forged = vote(2);
        forged.signature = Bytes::from(vec![0u8; 64]);
        assert_eq!(
            cert(vec![vote(0), vote(1), forged]).verify(1, &members, 3),
            Err(VerifyError::BadSignature)
        );
        let other = SignedMessage::sign(1, 2, &k[2], Message::Checkpoint { seq: 6, state });
        assert_eq!(
            cert(vec![vote(0), vote(1), other]).verify(1, &members, 3),
            Err(VerifyError::Mismatch)
        );
        let commit = |i: u8| {
            SignedMessage::sign(
                1,
                i,
                &k[i as usize],
                Message::Commit {
                    view: 0,
                    seq: 5,
                    digest: state,
                },
            )
        };
        let cc = CommitCert {
            view: 0,
            seq: 5,
            digest: state,
            commits: vec![commit(0), commit(2), commit(3)],
        };
        assert!(cc.verify(1, &members, 3).is_ok());
        assert!(CommitCert { view: 1, ..cc }.verify(1, &members, 3).is_err());
    }
}
