//! What a replica cluster orders: the payload of each PBFT request.
//!
//! A node encodes its clients' work as a [`Command`]; every replica decodes
//! and executes it. The decoder takes untrusted bytes (a faulty node may
//! submit anything): lengths are checked, trailing bytes refused, and the
//! record batches of a produce are validated again at execution.
//!
//! ```text
//! 5 Produce     | topic_id [16] | partition i32 | leader_epoch i32 | principal | organization | records…
//! 2 Receipt     | topic_id [16] | partition i32 | receipt fields (strings u32-prefixed)
//! ```
//!
//! A produce names who sent it: the principal its node authenticated and
//! that principal's organization (strings u32-prefixed), which the block
//! records as the records' sender. Tag 1 is a produce from before senders
//! were recorded (no sender); tags 3 and 4 were topic commands on the PBFT
//! metadata ledger (topics are Raft commands now) and stay unused.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_consensus::ledger::{get_str, put_str, PartitionKey, Receipt};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Record batches for one partition, validated by the submitter and
    /// again by every replica.
    Produce {
        pk: PartitionKey,
        leader_epoch: i32,
        /// The authenticated principal and its organization (empty in a
        /// tag-1 produce).
        principal: String,
        organization: String,
        records: Bytes,
    },
    /// A consumer group's committed offset: a delivery receipt.
    Receipt { pk: PartitionKey, receipt: Receipt },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed command")]
pub struct Malformed;

const PRODUCE_WITHOUT_SENDER: u8 = 1;
const RECEIPT: u8 = 2;
const PRODUCE: u8 = 5;

fn put_pk(out: &mut BytesMut, pk: &PartitionKey) {
    out.put_slice(&pk.topic_id);
    out.put_i32(pk.partition);
}

/// A produce command's encoding, written straight from the request's
/// validated batches: the records are copied once, into the payload.
pub fn encode_produce<'a>(
    pk: &PartitionKey,
    leader_epoch: i32,
    principal: &str,
    organization: &str,
    batches: impl Iterator<Item = &'a [u8]> + Clone,
) -> Bytes {
    let len: usize = batches.clone().map(<[u8]>::len).sum();
    let mut out = BytesMut::with_capacity(33 + principal.len() + organization.len() + len);
    out.put_u8(PRODUCE);
    put_pk(&mut out, pk);
    out.put_i32(leader_epoch);
    put_str(&mut out, principal);
    put_str(&mut out, organization);
    for b in batches {
        out.put_slice(b);
    }
    out.freeze()
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Command::Produce {
                pk,
                leader_epoch,
                principal,
                organization,
                records,
            } => {
                return encode_produce(
                    pk,
                    *leader_epoch,
                    principal,
                    organization,
                    std::iter::once(&records[..]),
                )
            }
            Command::Receipt { pk, receipt } => {
                out.put_u8(RECEIPT);
                put_pk(&mut out, pk);
                receipt.encode_into(&mut out, courier_consensus::ledger::BLOCK_FORMAT_VERSION);
            }
        }
        out.freeze()
    }

    pub fn decode(mut b: Bytes) -> Result<Command, Malformed> {
        fn need(b: &Bytes, n: usize) -> Result<(), Malformed> {
            if b.remaining() < n {
                Err(Malformed)
            } else {
                Ok(())
            }
        }
        fn pk(b: &mut Bytes) -> Result<PartitionKey, Malformed> {
            need(b, 20)?;
            let mut topic_id = [0u8; 16];
            b.copy_to_slice(&mut topic_id);
            Ok(PartitionKey {
                topic_id,
                partition: b.get_i32(),
            })
        }
        fn string(b: &mut Bytes) -> Result<String, Malformed> {
            let mut rest: &[u8] = b;
            let s = get_str(&mut rest).map_err(|_| Malformed)?;
            b.advance(b.len() - rest.len());
            Ok(s)
        }
        need(&b, 1)?;
        let cmd = match b.get_u8() {
            tag @ (PRODUCE | PRODUCE_WITHOUT_SENDER) => {
                let pk = pk(&mut b)?;
                need(&b, 4)?;
                let leader_epoch = b.get_i32();
                let (principal, organization) = if tag == PRODUCE {
                    (string(&mut b)?, string(&mut b)?)
                } else {
                    Default::default()
                };
                return Ok(Command::Produce {
                    pk,
                    leader_epoch,
                    principal,
                    organization,
                    records: b,
                });
            }
            RECEIPT => {
                let pk = pk(&mut b)?;
                let mut rest: &[u8] = &b;
                let receipt = Receipt::decode_from(&mut rest, courier_consensus::ledger::BLOCK_FORMAT_VERSION)
                    .map_err(|_| Malformed)?;
                b.advance(b.len() - rest.len());
                Command::Receipt { pk, receipt }
            }
            _ => return Err(Malformed),
        };
        if b.has_remaining() {
            return Err(Malformed);
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PK: PartitionKey = PartitionKey {
        topic_id: [4; 16],
        partition: 3,
    };

    #[test]
    fn every_command_round_trips() {
        let commands = [
            Command::Produce {
                pk: PK,
                leader_epoch: 2,
                principal: "User:a-producer".into(),
                organization: "org-a".into(),
                records: Bytes::from_static(b"batches"),
            },
            Command::Receipt {
                pk: PK,
                receipt: Receipt {
                    group_id: "g".into(),
                    member_id: "m".into(),
                    principal: "User:ANONYMOUS".into(),
                    organization: "org".into(),
                    client_id: "c".into(),
                    offset: 42,
                    leader_epoch: 0,
                    metadata: Some("meta".into()),
                    timestamp_ms: 7,
                },
            },
        ];
        for c in commands {
            assert_eq!(Command::decode(c.encode()), Ok(c));
        }
    }

    #[test]
    fn a_produce_from_before_senders_decodes_without_one() {
        let mut old = vec![PRODUCE_WITHOUT_SENDER];
        old.extend_from_slice(&PK.topic_id);
        old.extend_from_slice(&PK.partition.to_be_bytes());
        old.extend_from_slice(&7i32.to_be_bytes());
        old.extend_from_slice(b"batches");
        assert_eq!(
            Command::decode(Bytes::from(old)),
            Ok(Command::Produce {
                pk: PK,
                leader_epoch: 7,
                principal: String::new(),
                organization: String::new(),
                records: Bytes::from_static(b"batches"),
            })
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::decode(Bytes::from(raw));
        }
    }
}
