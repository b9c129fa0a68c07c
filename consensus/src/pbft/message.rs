//! Consensus messages, their canonical signing bytes, and signatures.
//!
//! Every message is signed by its sender's ed25519 key over a domain tag,
//! the partition cluster id, and the message's fields, so a signature for
//! one cluster or message kind can never be replayed as another.

use bytes::{BufMut, Bytes, BytesMut};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Index of a replica within its cluster (0..n).
pub type ReplicaId = u8;

/// SHA-256 of a batch.
pub type Digest = [u8; 32];

pub fn digest(batch: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, batch);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What replicas say to each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The primary of `view` assigns `seq` to a batch.
    PrePrepare {
        view: u64,
        seq: u64,
        digest: Digest,
        batch: Bytes,
    },
    /// A backup accepted the pre-prepare for (view, seq, digest).
    Prepare { view: u64, seq: u64, digest: Digest },
    /// The sender holds a prepared certificate for (view, seq, digest).
    Commit { view: u64, seq: u64, digest: Digest },
    /// The sender executed everything up to `seq`, reaching `state`.
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

impl Message {
    /// Canonical bytes a signature covers (the batch by its digest only).
    fn signing_bytes(&self, cluster: u64, sender: ReplicaId) -> BytesMut {
        let mut b = BytesMut::with_capacity(96);
        b.put_slice(DOMAIN);
        b.put_u64(cluster);
        b.put_u8(sender);
        match self {
            Message::PrePrepare { view, seq, digest, .. } => {
                b.put_u8(1);
                b.put_u64(*view);
                b.put_u64(*seq);
                b.put_slice(digest);
            }
            Message::Prepare { view, seq, digest } => {
                b.put_u8(2);
                b.put_u64(*view);
                b.put_u64(*seq);
                b.put_slice(digest);
            }
            Message::Commit { view, seq, digest } => {
                b.put_u8(3);
                b.put_u64(*view);
                b.put_u64(*seq);
                b.put_slice(digest);
            }
            Message::Checkpoint { seq, state } => {
                b.put_u8(4);
                b.put_u64(*seq);
                b.put_slice(state);
            }
            Message::ViewChange {
                new_view,
                stable_seq,
                checkpoint_proof,
                prepared,
            } => {
                b.put_u8(5);
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
                b.put_u8(6);
                b.put_u64(*view);
                b.put_slice(&nested_digest(view_changes));
                b.put_slice(&nested_digest(pre_prepares));
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
        if self.cluster != cluster {
            return Err(VerifyError::WrongCluster {
                got: self.cluster,
                expected: cluster,
            });
        }
        let key = members
            .get(self.sender as usize)
            .ok_or(VerifyError::UnknownSender(self.sender))?;
        UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(&self.message.signing_bytes(cluster, self.sender), &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        if let Message::PrePrepare { digest: d, batch, .. } = &self.message {
            if digest(batch) != *d {
                return Err(VerifyError::BadDigest);
            }
        }
        Ok(())
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

/// Proof that a batch is final: 2f + 1 signed COMMITs for one
/// (view, seq, digest), from distinct replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumCert {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub commits: Vec<SignedMessage>,
}

impl QuorumCert {
    /// Verifies the certificate from the members' public keys alone.
    pub fn verify(&self, cluster: u64, members: &[Bytes], quorum: usize) -> Result<(), VerifyError> {
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.commits {
            let expected = Message::Commit {
                view: self.view,
                seq: self.seq,
                digest: self.digest,
            };
            if c.message != expected {
                return Err(VerifyError::BadSignature);
            }
            c.verify(cluster, members)?;
            seen.insert(c.sender);
        }
        if seen.len() < quorum {
            return Err(VerifyError::BadSignature);
        }
        Ok(())
    }
}

/// The public key of a key pair, as members lists hold it.
pub fn public_key(key: &Ed25519KeyPair) -> Bytes {
    Bytes::copy_from_slice(key.public_key().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> Vec<Ed25519KeyPair> {
        (0..n)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[0] = i;
                Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
            })
            .collect()
    }

    #[test]
    fn signatures_bind_sender_cluster_and_content() {
        let k = keys(4);
        let members: Vec<Bytes> = k.iter().map(public_key).collect();
        let batch = Bytes::from_static(b"\0\0\0\x01a");
        let m = Message::PrePrepare {
            view: 0,
            seq: 1,
            digest: digest(&batch),
            batch,
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
        if let Message::PrePrepare { batch, .. } = &mut swapped.message {
            *batch = Bytes::from_static(b"\0\0\0\x01b");
        }
        assert_eq!(swapped.verify(9, &members), Err(VerifyError::BadDigest));
        let mut stranger = signed;
        stranger.sender = 9;
        assert_eq!(stranger.verify(9, &members), Err(VerifyError::UnknownSender(9)));
    }

    #[test]
    fn a_quorum_certificate_needs_2f_plus_1_distinct_valid_commits() {
        let k = keys(4);
        let members: Vec<Bytes> = k.iter().map(public_key).collect();
        let d = [3u8; 32];
        let commit = |i: u8| {
            SignedMessage::sign(
                1,
                i,
                &k[i as usize],
                Message::Commit {
                    view: 0,
                    seq: 5,
                    digest: d,
                },
            )
        };
        let cert = |commits| QuorumCert {
            view: 0,
            seq: 5,
            digest: d,
            commits,
        };
        assert!(cert(vec![commit(0), commit(1), commit(3)])
            .verify(1, &members, 3)
            .is_ok());
        assert!(
            cert(vec![commit(0), commit(1), commit(1)])
                .verify(1, &members, 3)
                .is_err(),
            "a duplicate counts once"
        );
        assert!(
            cert(vec![commit(0), commit(1)]).verify(1, &members, 3).is_err(),
            "too few"
        );
        let mut forged = commit(2);
        forged.signature = Bytes::from(vec![0u8; 64]);
        assert!(cert(vec![commit(0), commit(1), forged]).verify(1, &members, 3).is_err());
        let other_seq = SignedMessage::sign(
            1,
            2,
            &k[2],
            Message::Commit {
                view: 0,
                seq: 6,
                digest: d,
            },
        );
        assert!(
            cert(vec![commit(0), commit(1), other_seq])
                .verify(1, &members, 3)
                .is_err(),
            "a commit for another slot"
        );
    }
}
