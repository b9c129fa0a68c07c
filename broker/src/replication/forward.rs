//! Work for a partition this node does not order goes to a node that does.
//!
//! Partitions are spread over several PBFT clusters, but a client may talk
//! to any node (its organization's, or its group's coordinator). A produce
//! or an offset commit for another cluster's partition is forwarded to a
//! member, which submits it to its cluster as its own request and answers
//! with the outcome once the block is certified; a group's committed
//! offsets in another cluster's partitions are read from a member.
//!
//! ```text
//! request  1 Submit  | partition key [20] | command payload…
//!          2 Offsets | group id (UTF-8)…
//! answer   Submit:  0 (not ordered) | 1 origin u8 number u64 error i16 base_offset i64
//!          Offsets: count u32, then per partition: key [20] | len u32 | committed offset
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_consensus::ledger::{CommittedOffset, LedgerStore, PartitionKey, RequestRecord};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::calls::Calls;
use super::transport::{Frame, Transport};
use super::Input;

const SUBMIT: u8 = 1;
const OFFSETS: u8 = 2;

/// Forwarded requests served at once; more are refused at once (the
/// forwarding node reports NOT_LEADER_OR_FOLLOWER and the client retries).
const SERVING_MAX: usize = 4096;
/// How long a forwarded request may take: a client's own wait is longer
/// (Kafka's `request.timeout.ms` default, 30 s).
pub const FORWARD_WAIT: Duration = Duration::from_secs(25);
/// Offset reads are quick or not at all.
const OFFSETS_WAIT: Duration = Duration::from_secs(5);

pub struct Forwarder {
    transport: OnceLock<Arc<Transport>>,
    calls: Calls,
    engine: mpsc::Sender<Input>,
    store: Arc<LedgerStore>,
    serving: Arc<Semaphore>,
}

impl Forwarder {
    pub fn new(engine: mpsc::Sender<Input>, store: Arc<LedgerStore>) -> Self {
        Self {
            transport: OnceLock::new(),
            calls: Calls::default(),
            engine,
            store,
            serving: Arc::new(Semaphore::new(SERVING_MAX)),
        }
    }

    /// Whether node `node` is reachable now.
    pub fn is_up(&self, node: u8) -> bool {
        self.transport.get().is_some_and(|t| t.is_up(node))
    }

    pub fn store(&self) -> Arc<LedgerStore> {
        self.store.clone()
    }

    pub fn attach(&self, transport: Arc<Transport>) {
        let _ = self.transport.set(transport);
    }

    /// Submits `payload` for `pk` through node `to`; the receiver resolves
    /// with the outcome, or is dropped if `to` did not order it.
    pub fn submit(self: &Arc<Self>, to: u8, pk: PartitionKey, payload: Bytes) -> oneshot::Receiver<RequestRecord> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let mut body = BytesMut::with_capacity(21 + payload.len());
            body.put_u8(SUBMIT);
            body.put_slice(&pk.to_bytes());
            body.put_slice(&payload);
            metrics::counter!("courier_forwarded_submits_total").increment(1);
            if let Some(answer) = this.call(to, body.freeze(), FORWARD_WAIT).await {
                if let Some(record) = decode_record(answer) {
                    let _ = tx.send(record);
                }
            }
        });
        rx
    }

    /// A group's committed offsets as node `to` has them.
    pub async fn offsets(&self, to: u8, group: &str) -> Option<Vec<(PartitionKey, CommittedOffset)>> {
        let mut body = BytesMut::with_capacity(1 + group.len());
        body.put_u8(OFFSETS);
        body.put_slice(group.as_bytes());
        let mut answer = self.call(to, body.freeze(), OFFSETS_WAIT).await?;
        let mut out = Vec::new();
        if answer.remaining() < 4 {
            return None;
        }
        for _ in 0..answer.get_u32() {
            if answer.remaining() < 24 {
                return None;
            }
            let pk = PartitionKey::from_bytes(&answer.split_to(20))?;
            let len = answer.get_u32() as usize;
            if answer.remaining() < len {
                return None;
            }
            out.push((pk, CommittedOffset::decode(&answer.split_to(len)).ok()?));
        }
        Some(out)
    }

    /// Sends a request to node `to`; its answer, if one came in time.
    async fn call(&self, to: u8, body: Bytes, wait: Duration) -> Option<Bytes> {
        let transport = self.transport.get()?;
        let frame = |call| {
            Frame::Forward {
                call,
                reply: false,
                body,
            }
            .encode()
        };
        self.calls.call(transport, to, frame, wait).await
    }

    /// A forward frame from node `from`.
    pub fn frame(self: &Arc<Self>, from: u8, call: u64, reply: bool, body: Bytes) {
        if reply {
            self.calls.answer(call, body);
            return;
        }
        let Ok(permit) = self.serving.clone().try_acquire_owned() else {
            metrics::counter!("courier_forwarded_refused_total").increment(1);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let answer = this.serve(body).await;
            if let (Some(answer), Some(t)) = (answer, this.transport.get()) {
                t.send(
                    from,
                    Frame::Forward {
                        call,
                        reply: true,
                        body: answer,
                    }
                    .encode(),
                );
            }
            drop(permit);
        });
    }

    async fn serve(&self, mut body: Bytes) -> Option<Bytes> {
        if body.is_empty() {
            return None;
        }
        match body.get_u8() {
            SUBMIT if body.len() >= 20 => {
                let pk = PartitionKey::from_bytes(&body.split_to(20))?;
                let (reply, rx) = oneshot::channel();
                let _ = self
                    .engine
                    .send(Input::Submit {
                        pk,
                        payload: body,
                        reply,
                    })
                    .await;
                let record = tokio::time::timeout(FORWARD_WAIT, rx).await.ok().and_then(|r| r.ok());
                Some(encode_record(record))
            }
            OFFSETS => {
                let group = String::from_utf8(body.to_vec()).ok()?;
                let store = self.store.clone();
                let list = tokio::task::spawn_blocking(move || store.committed_offsets(&group))
                    .await
                    .ok()?
                    .map_err(|e| debug!(error = %e, "cannot read offsets for a peer"))
                    .ok()?;
                let mut out = BytesMut::new();
                out.put_u32(list.len() as u32);
                for (pk, c) in list {
                    let c = c.encode();
                    out.put_slice(&pk.to_bytes());
                    out.put_u32(c.len() as u32);
                    out.put_slice(&c);
                }
                Some(out.freeze())
            }
            _ => None,
        }
    }
}

fn encode_record(record: Option<RequestRecord>) -> Bytes {
    let mut out = BytesMut::with_capacity(20);
    match record {
        None => out.put_u8(0),
        Some(r) => {
            out.put_u8(1);
            out.put_u8(r.origin);
            out.put_u64(r.number);
            out.put_i16(r.error_code);
            out.put_i64(r.base_offset);
        }
    }
    out.freeze()
}

fn decode_record(mut b: Bytes) -> Option<RequestRecord> {
    if b.len() != 20 || b.get_u8() != 1 {
        return None;
    }
    Some(RequestRecord {
        origin: b.get_u8(),
        number: b.get_u64(),
        error_code: b.get_i16(),
        base_offset: b.get_i64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let r = RequestRecord {
            origin: 3,
            number: 1 << 41,
            error_code: -1,
            base_offset: 77,
        };
        assert_eq!(decode_record(encode_record(Some(r))), Some(r));
        assert_eq!(decode_record(encode_record(None)), None);
        assert_eq!(decode_record(Bytes::from_static(&[1, 2, 3])), None);
    }
}
