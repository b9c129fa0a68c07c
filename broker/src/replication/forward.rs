//! Work for a partition this node does not order goes to a node that does.
//!
//! Partitions are spread over several PBFT clusters, but a client may talk
//! to any node (its organization's, or its group's coordinator). A produce
//! or an offset commit for another cluster's partition is forwarded to a
//! member, which submits it to its cluster as its own request and answers
//! with the outcome once the block is certified; a group's committed
//! offsets in another cluster's partitions are read from a member.
//!
//! The global-ledger task reads certified blocks of any partition the same
//! way.
//!
//! ```text
//! request  1 Submit  | partition key [20] | command payload…
//!          2 Offsets | group id (UTF-8)…
//!          3 Blocks  | partition key [20] | from_height u64 | max_bytes u32
//!          4 Object  | a chunk of an off-chain value (`crate::offchain`)
//! answer   Submit:  0 (not ordered) | 1 origin u8 number u64 error i16 base_offset i64
//!          Offsets: count u32, then per partition: key [20] | len u32 | committed offset
//!          Blocks:  certified_end u64 | blocks (`transport::encode_block_list`)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
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
const BLOCKS: u8 = 3;
const OBJECT: u8 = 4;
/// Largest block read a peer may ask for.
const BLOCKS_BYTES_MAX: u32 = 8 << 20;
/// Block reads are quick or not at all.
const BLOCKS_WAIT: Duration = Duration::from_secs(5);

/// Forwarded requests served at once; more are refused at once (the
/// forwarding node reports NOT_LEADER_OR_FOLLOWER and the client retries).
const SERVING_MAX: usize = 4096;
/// How long a forwarded request may take: a client's own wait is longer
/// (Kafka's `request.timeout.ms` default, 30 s).
pub const FORWARD_WAIT: Duration = Duration::from_secs(25);
/// Offset reads are quick or not at all.
const OFFSETS_WAIT: Duration = Duration::from_secs(5);

/// Serves other nodes' requests for off-chain values (the broker's
/// `offchain::ObjectService`: it holds the storage and the ACLs).
pub trait ObjectServer: Send + Sync {
    fn serve(&self, from: u8, body: Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send + '_>>;
}

pub struct Forwarder {
    transport: OnceLock<Arc<Transport>>,
    objects: OnceLock<Arc<dyn ObjectServer>>,
    calls: Calls,
    engine: mpsc::Sender<Input>,
    store: Arc<LedgerStore>,
    serving: Arc<Semaphore>,
    /// Fault injection for tests: serve blocks with forged certificates.
    byzantine: AtomicBool,
}

/// Certified blocks of a partition, as a member of its cluster holds them.
#[derive(Debug, Default)]
pub struct ServedBlocks {
    /// Canonical blocks from the height asked for, each with its
    /// certificate if it has one, ending at a certified block.
    pub blocks: Vec<(Bytes, Option<Bytes>)>,
    /// One past the member's last certified block (0: none).
    pub certified_end: u64,
}

/// Reads certified blocks from a local ledger.
pub fn served_blocks(
    store: &LedgerStore,
    pk: &PartitionKey,
    from_height: u64,
    max_bytes: u32,
) -> Result<ServedBlocks, courier_consensus::ledger::StoreError> {
    let certified_end = store.last_cert(pk)?.map_or(0, |(h, _)| h + 1);
    let blocks = if from_height < certified_end {
        super::engine::serve_fetch(store, pk, from_height, max_bytes)?
    } else {
        Vec::new()
    };
    Ok(ServedBlocks { blocks, certified_end })
}

impl Forwarder {
    pub fn new(engine: mpsc::Sender<Input>, store: Arc<LedgerStore>) -> Self {
        Self {
            transport: OnceLock::new(),
            objects: OnceLock::new(),
            calls: Calls::default(),
            engine,
            store,
            serving: Arc::new(Semaphore::new(SERVING_MAX)),
            byzantine: AtomicBool::new(false),
        }
    }

    /// Fault injection for tests: from now on (or no longer), this node
    /// serves blocks whose certificates carry a forged signature, as a
    /// Byzantine replica would.
    pub fn set_byzantine(&self, on: bool) {
        self.byzantine.store(on, Ordering::Relaxed);
    }

    /// Fault injection for tests: see [`Transport::set_cut`].
    pub fn set_cut(&self, peer: u8, cut: bool) {
        if let Some(t) = self.transport.get() {
            t.set_cut(peer, cut);
        }
    }

    /// Certified blocks of `pk` from height `from_height` as node `to`
    /// holds them.
    pub async fn blocks(&self, to: u8, pk: PartitionKey, from_height: u64, max_bytes: u32) -> Option<ServedBlocks> {
        let mut body = BytesMut::with_capacity(33);
        body.put_u8(BLOCKS);
        body.put_slice(&pk.to_bytes());
        body.put_u64(from_height);
        body.put_u32(max_bytes);
        let answer = self.call(to, body.freeze(), BLOCKS_WAIT).await?;
        decode_blocks(answer)
    }

    /// Serves off-chain values to other nodes from now on.
    pub fn serve_objects(&self, server: Arc<dyn ObjectServer>) {
        let _ = self.objects.set(server);
    }

    /// A chunk of an off-chain value as node `to` answers `request`.
    pub async fn object(&self, to: u8, request: Bytes, wait: Duration) -> Option<Bytes> {
        let mut body = BytesMut::with_capacity(1 + request.len());
        body.put_u8(OBJECT);
        body.put_slice(&request);
        self.call(to, body.freeze(), wait).await
    }

    /// Whether node `node` is reachable now.
    pub fn is_up(&self, node: u8) -> bool {
        self.transport.get().is_some_and(|t| t.is_up(node))
    }

    pub fn is_listed(&self, node: u8) -> bool {
        self.transport.get().is_some_and(|t| t.is_listed(node))
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
            let answer = this.serve(from, body).await;
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

    async fn serve(&self, from: u8, mut body: Bytes) -> Option<Bytes> {
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
            BLOCKS if body.len() == 32 => {
                let pk = PartitionKey::from_bytes(&body.split_to(20))?;
                let from_height = body.get_u64();
                let max_bytes = body.get_u32().min(BLOCKS_BYTES_MAX);
                let store = self.store.clone();
                let mut served =
                    tokio::task::spawn_blocking(move || served_blocks(&store, &pk, from_height, max_bytes))
                        .await
                        .ok()?
                        .map_err(|e| debug!(error = %e, "cannot read blocks for a peer"))
                        .ok()?;
                if self.byzantine.load(Ordering::Relaxed) {
                    for (_, cert) in &mut served.blocks {
                        *cert = cert.take().map(forge_cert);
                    }
                }
                Some(encode_blocks(&served))
            }
            OBJECT => match self.objects.get() {
                Some(server) => Some(server.serve(from, body).await),
                None => None,
            },
            _ => None,
        }
    }
}

/// A certificate with its first signature altered (fault injection).
fn forge_cert(cert: Bytes) -> Bytes {
    use courier_consensus::pbft::wire::{decode_cert, encode_cert};
    let Ok(mut c) = decode_cert(cert.clone()) else {
        return cert;
    };
    if let Some(vote) = c.votes.first_mut() {
        let mut sig = vote.signature.to_vec();
        if let Some(b) = sig.first_mut() {
            *b ^= 0x55;
        }
        vote.signature = Bytes::from(sig);
    }
    encode_cert(&c).freeze()
}

fn encode_blocks(served: &ServedBlocks) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u64(served.certified_end);
    super::transport::encode_block_list(&mut out, &served.blocks);
    out.freeze()
}

fn decode_blocks(mut b: Bytes) -> Option<ServedBlocks> {
    if b.remaining() < 8 {
        return None;
    }
    let certified_end = b.get_u64();
    let blocks = super::transport::decode_block_list(&mut b)?;
    (!b.has_remaining()).then_some(ServedBlocks { blocks, certified_end })
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

    #[test]
    fn block_answers_round_trip_and_garbage_is_refused() {
        let served = ServedBlocks {
            blocks: vec![
                (Bytes::from_static(b"block zero"), None),
                (Bytes::from_static(b"block one"), Some(Bytes::from_static(b"cert"))),
            ],
            certified_end: 9,
        };
        let encoded = encode_blocks(&served);
        let back = decode_blocks(encoded.clone()).expect("decodes");
        assert_eq!((back.blocks, back.certified_end), (served.blocks, 9));
        for cut in 0..encoded.len() {
            assert!(decode_blocks(encoded.slice(..cut)).is_none(), "{cut} bytes");
        }
        let mut huge = BytesMut::new();
        huge.put_u64(1);
        huge.put_u32(u32::MAX);
        assert!(decode_blocks(huge.freeze()).is_none());
    }
}
