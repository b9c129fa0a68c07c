//! Off-chain payloads on the produce and fetch paths.
//!
//! A topic with `courier.offchain.threshold.bytes` keeps every record value
//! longer than the threshold out of its ledger: the node that receives the
//! produce stores the value in its organization's storage and submits a
//! descriptor (digest, size, organization, locator) in its place, so the
//! partition's replicas, whoever runs them, order and keep only that.
//!
//! A node that serves a fetch puts each value back before the consumer
//! sees the batch: from its own organization's storage when the value is
//! its organization's, else from a node of the sending organization over
//! the node transport. That node serves it only to a principal of the
//! asking node's organization that may read the topic, and only an object
//! a record at the offset asked for names. Whatever arrives is checked
//! against the descriptor's size and SHA-256 before it is served; a value
//! that cannot be had or does not match is never served: the fetch fails
//! for that partition (KAFKA_STORAGE_ERROR, retriable, while it cannot be
//! had; CORRUPT_MESSAGE when it was altered), the incident is logged on
//! the audit target and counted.
//!
//! ```text
//! request  pk [20] | offset i64 | digest [32] | start u64 | len u32
//!          | principal (u16 len, UTF-8) | host (u16 len, UTF-8)
//! answer   0 OK | bytes…            1 NOT_FOUND | reason (UTF-8)
//!          2 DENIED | reason        3 FAILED | reason
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_connector_plugins::offchain::{self as plugin, OffloadError, RestoreError};
use courier_connector_plugins::storage::{
    Digest, FsStorage, OrgStorage, S3Credentials, S3Settings, S3Storage, Storage, StorageError,
};
use courier_consensus::catalog::TopicRecord;
use courier_consensus::ledger::PartitionKey;
use courier_consensus::security::{operation, resource};
use courier_protocol::offchain::{self as format, Descriptor, OFFCHAIN_HEADER};
use courier_protocol::records::{split_batches, Batch, BatchHeader};
use kafka_protocol::ResponseError;
use tokio::io::AsyncReadExt;
use tracing::warn;

use crate::{Broker, BrokerConfig};

/// The topic setting that turns off-chain values on.
pub const THRESHOLD_CONFIG: &str = "courier.offchain.threshold.bytes";
/// Bytes of a value asked of another node at once (its frames stay well
/// under the transport's limit).
const CHUNK_BYTES: u32 = 8 << 20;

const OK: u8 = 0;
const NOT_FOUND: u8 = 1;
const DENIED: u8 = 2;
const FAILED: u8 = 3;

/// The threshold of `topic`, if its values above it go off-chain (unset
/// or -1: off).
pub fn threshold(topic: &TopicRecord) -> Option<usize> {
    let t = topic.configs.get(THRESHOLD_CONFIG)?.parse::<i64>().ok()?;
    usize::try_from(t).ok()
}

/// This node's organization's storage, and how it reaches others'.
pub struct Offchain {
    storage: OrgStorage,
    organization: String,
    fetch_timeout: Duration,
    /// The longest value a produce can carry: a descriptor claiming more
    /// is not fetched.
    value_max: u64,
    /// Incidents already recorded on the ledger by this node (a consumer
    /// retrying an altered value records it once, not at every fetch).
    recorded: std::sync::Mutex<std::collections::HashSet<(PartitionKey, i64, &'static str)>>,
}

/// The internal topic where nodes record, on the ledger, each off-chain
/// value they refused to serve: one JSON record per incident (who offered
/// what: the descriptor, the node that served, the size and SHA-256 of
/// what it served, the consumer, the reporting node). Ordered and
/// certified like any partition; readable by super users (and whomever
/// the ACLs allow).
pub const INCIDENTS_TOPIC: &str = "__courier_offchain_incidents";
/// Incidents remembered per node before the memory starts over.
const RECORDED_MAX: usize = 10_000;

/// Which value a restore was getting, and from which node.
#[derive(Default)]
struct LastFetch {
    offset: i64,
    served_by: Option<i32>,
}

/// Who a fetch serves, as the sending organization's node checks it.
#[derive(Clone)]
pub struct Reader {
    pub principal: Arc<str>,
    pub host: Arc<str>,
}

impl Offchain {
    /// Opens the storage `config` names (`offchain.storage.*`).
    pub async fn open(config: &BrokerConfig) -> Result<Self, StorageError> {
        let organization = config.organization.clone();
        let storage = match config.offchain_storage_type.as_str() {
            "s3" => OrgStorage::S3(S3Storage::open(
                &S3Settings {
                    endpoint: Some(config.offchain_storage_s3_endpoint.clone()).filter(|e| !e.is_empty()),
                    region: config.offchain_storage_s3_region.clone(),
                    bucket: config.offchain_storage_s3_bucket.clone(),
                    path_style: config.offchain_storage_s3_path_style,
                    allow_http: config.offchain_storage_s3_allow_http,
                    prefix: config.offchain_storage_s3_prefix.clone(),
                    credentials: match &config.offchain_storage_s3_credentials_file {
                        Some(path) => S3Credentials::File {
                            path: path.clone(),
                            profile: config.offchain_storage_s3_credentials_profile.clone(),
                        },
                        None => S3Credentials::Environment,
                    },
                },
                &organization,
            )?),
            _ => {
                let dir = config
                    .offchain_storage_fs_dir
                    .clone()
                    .unwrap_or_else(|| config.log_dirs.join("offchain"));
                OrgStorage::Fs(FsStorage::open(&dir, &organization).await?)
            }
        };
        Ok(Self {
            storage,
            organization,
            fetch_timeout: Duration::from_millis(config.offchain_fetch_timeout_ms),
            value_max: config.socket_request_max_bytes.max(0) as u64,
            recorded: Default::default(),
        })
    }

    pub fn storage(&self) -> &OrgStorage {
        &self.storage
    }

    /// `batches` with every value above `threshold` stored and replaced by
    /// its descriptor, or the Kafka error the produce gets: retriable
    /// (KAFKA_STORAGE_ERROR) when the storage failed, and then nothing is
    /// submitted.
    pub async fn offload(
        &self,
        batches: Vec<Batch>,
        threshold: usize,
        decompressed_bytes_max: usize,
    ) -> Result<Vec<Batch>, (i16, String)> {
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let stored = plugin::offload(
                &batch.bytes,
                threshold,
                decompressed_bytes_max,
                &self.storage,
                &self.organization,
            )
            .await
            .map_err(|e| {
                let code = match &e {
                    OffloadError::Storage(StorageError::TooLarge { .. }) => ResponseError::MessageTooLarge.code(),
                    // Retriable or not, the storage failed, not the request.
                    OffloadError::Storage(_) => ResponseError::KafkaStorageError.code(),
                    OffloadError::Records(_) => ResponseError::CorruptMessage.code(),
                    OffloadError::Forged { .. } | OffloadError::Descriptor(_) => ResponseError::InvalidRecord.code(),
                };
                if matches!(e, OffloadError::Storage(_)) {
                    metrics::counter!("courier_offchain_store_errors_total").increment(1);
                    warn!(error = %e, "cannot store an off-chain value; the produce fails (retriable)");
                }
                (code, e.to_string())
            })?;
            match stored {
                None => out.push(batch),
                Some(bytes) => {
                    let moved = batch.bytes.len().saturating_sub(bytes.len());
                    metrics::counter!("courier_offchain_bytes_stored_total").increment(moved as u64);
                    let header = BatchHeader::parse(&bytes)
                        .map_err(|e| (ResponseError::CorruptMessage.code(), e.to_string()))?;
                    out.push(Batch { header, bytes });
                }
            }
        }
        Ok(out)
    }

    /// `records` (whole batches of partition `pk`, as the ledger holds
    /// them) with their off-chain values put back, as many batches as fit
    /// `budget` bytes once restored (the first always, when `first`).
    /// Unchanged when they hold no descriptor.
    pub async fn restore(
        &self,
        broker: &Arc<Broker>,
        pk: PartitionKey,
        records: Bytes,
        budget: usize,
        first: bool,
        reader: &Reader,
    ) -> Result<Bytes, RestoreError> {
        if memchr::memmem::find(&records, OFFCHAIN_HEADER).is_none() {
            return Ok(records);
        }
        let decode_max = self.value_max as usize;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut total = 0u64;
        for batch in split_batches(&records) {
            let Ok(batch) = batch.map(|b| records.slice_ref(b)) else {
                break;
            };
            let len = plugin::restored_len(&batch, decode_max)?;
            if total + len > budget as u64 && !(first && pieces.is_empty()) {
                break;
            }
            let last = std::sync::Mutex::new(LastFetch::default());
            let restored = plugin::restore(&batch, decode_max, |offset, d| {
                if let Ok(mut l) = last.lock() {
                    *l = LastFetch {
                        offset,
                        served_by: None,
                    };
                }
                self.value(broker, pk, offset, d, reader, &last)
            })
            .await;
            let restored = match restored {
                Ok(r) => r,
                Err(e) => {
                    let last = last.into_inner().unwrap_or_default();
                    self.incident(broker, pk, &e, last, reader);
                    return Err(e);
                }
            };
            let piece = restored.unwrap_or(batch);
            total += piece.len() as u64;
            pieces.push(piece);
        }
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(total as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// One off-chain value: from this node's storage when its organization
    /// stored it, else (or when this node lacks it) from a node of the
    /// organization that did.
    async fn value(
        &self,
        broker: &Broker,
        pk: PartitionKey,
        offset: i64,
        d: Descriptor,
        reader: &Reader,
        last: &std::sync::Mutex<LastFetch>,
    ) -> Result<Bytes, StorageError> {
        let served = |node: i32| {
            if let Ok(mut l) = last.lock() {
                l.served_by = Some(node);
            }
        };
        if d.size > self.value_max {
            return Err(StorageError::TooLarge { max: self.value_max });
        }
        let mut last = None;
        if d.organization == self.organization {
            match plugin::from_storage(&self.storage, &d).await {
                Ok(v) => {
                    served(broker.node.node_id);
                    return Ok(v);
                }
                Err(StorageError::NotFound(_)) => {}
                Err(e) => last = Some(e),
            }
        }
        let Some(replicated) = broker.sequencer.replicated() else {
            return Err(last.unwrap_or(StorageError::NotFound(Digest(d.digest))));
        };
        let me = broker.node.node_id;
        for node in broker.topics.brokers() {
            if node.id == me || node.organization != d.organization || !replicated.is_up(node.id) {
                continue;
            }
            match self.value_from(replicated, node.id as u8, pk, offset, &d, reader).await {
                Ok(v) => {
                    metrics::counter!("courier_offchain_bytes_fetched_total").increment(v.len() as u64);
                    served(node.id);
                    return Ok(v);
                }
                Err(e) => {
                    tracing::debug!(node = node.id, error = %e, "a node did not serve an off-chain value");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            StorageError::Unavailable(format!("no node of {} is reachable to serve it", d.organization))
        }))
    }

    /// The value as node `to` serves it, chunk by chunk.
    async fn value_from(
        &self,
        replicated: &crate::replication::Replicated,
        to: u8,
        pk: PartitionKey,
        offset: i64,
        d: &Descriptor,
        reader: &Reader,
    ) -> Result<Bytes, StorageError> {
        let mut value = BytesMut::with_capacity(d.size as usize);
        let mut start = 0u64;
        loop {
            let len = (d.size - start).min(u64::from(CHUNK_BYTES)) as u32;
            let body = encode_request(pk, offset, &d.digest, start, len, reader);
            let Some(mut answer) = replicated.object(to, body, self.fetch_timeout).await else {
                return Err(StorageError::Unavailable(format!("node {to} did not answer")));
            };
            if !answer.has_remaining() {
                return Err(StorageError::Unavailable(format!("node {to} sent an empty answer")));
            }
            match answer.get_u8() {
                OK => {}
                status => {
                    let reason = String::from_utf8_lossy(&answer).into_owned();
                    return Err(match status {
                        NOT_FOUND => StorageError::NotFound(Digest(d.digest)),
                        _ => StorageError::Unavailable(format!("node {to} refused: {reason}")),
                    });
                }
            }
            // More than asked is kept as sent: the digest check rejects it.
            start += answer.len() as u64;
            value.extend_from_slice(&answer);
            if answer.len() < len as usize || start >= d.size || len == 0 {
                return Ok(value.freeze());
            }
        }
    }
}

impl Offchain {
    /// A value that could not be had or was altered: never served, logged
    /// on the audit target, counted, and recorded on the ledger (once per
    /// value and reason on this node) in [`INCIDENTS_TOPIC`].
    fn incident(&self, broker: &Arc<Broker>, pk: PartitionKey, e: &RestoreError, last: LastFetch, reader: &Reader) {
        let reason = match e {
            RestoreError::Altered { .. } => "altered",
            RestoreError::Unavailable { .. } => "unavailable",
            RestoreError::Descriptor { .. } | RestoreError::Records(_) => "malformed",
        };
        metrics::counter!("courier_offchain_refused_total", "reason" => reason).increment(1);
        warn!(target: "courier::audit", partition = ?pk, offset = last.offset, served_by = ?last.served_by, reason,
            error = %e, "off-chain value not served");
        let Ok(mut recorded) = self.recorded.lock() else { return };
        if recorded.len() >= RECORDED_MAX {
            recorded.clear();
        }
        if !recorded.insert((pk, last.offset, reason)) {
            return;
        }
        drop(recorded);
        let topic = broker
            .topics
            .get_by_id(&pk.topic_id)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let mut incident = serde_json::json!({
            "topic": topic,
            "partition": pk.partition,
            "offset": last.offset,
            "reason": reason,
            "error": e.to_string(),
            "served_by": last.served_by,
            "consumer": &*reader.principal,
            "reported_by": broker.node.node_id,
            "reporter_organization": self.organization,
            "time_ms": now_ms(),
        });
        match e {
            RestoreError::Altered {
                organization,
                want,
                want_size,
                got,
                got_size,
                ..
            } => {
                incident["organization"] = organization.as_str().into();
                incident["sha256"] = want.hex().into();
                incident["size"] = (*want_size).into();
                incident["served_sha256"] = got.hex().into();
                incident["served_size"] = (*got_size).into();
            }
            RestoreError::Unavailable {
                organization, digest, ..
            } => {
                incident["organization"] = organization.as_str().into();
                incident["sha256"] = digest.hex().into();
            }
            _ => {}
        }
        let key = format!("{topic}-{}@{}", pk.partition, last.offset);
        tokio::spawn(record_incident(broker.clone(), key, incident));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Orders `incident` in [`INCIDENTS_TOPIC`] (created on first use), sent
/// by this node (`Node:<id>` of its organization).
async fn record_incident(broker: Arc<Broker>, key: String, incident: serde_json::Value) {
    let topic = match broker.topics.get(INCIDENTS_TOPIC) {
        Some(t) => t,
        None => match crate::api::create_topics::create(&broker, INCIDENTS_TOPIC, Some(1), Default::default()).await {
            Ok(t) => t,
            Err((code, why)) => match broker.topics.get(INCIDENTS_TOPIC) {
                Some(t) => t,
                None => {
                    warn!(target: "courier::audit", code, "cannot create {INCIDENTS_TOPIC}: {why}");
                    return;
                }
            },
        },
    };
    let value = incident.to_string();
    let bytes = courier_protocol::records::encode_batch(
        now_ms(),
        courier_protocol::records::ProducerIds::NONE,
        &[courier_protocol::records::NewRecord {
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
            headers: &[],
            timestamp_delta: 0,
        }],
    );
    let Ok(header) = BatchHeader::parse(&bytes) else { return };
    let sent_by = crate::sequencer::SentBy {
        principal: format!("Node:{}", broker.node.node_id).into(),
        organization: broker.config.organization.as_str().into(),
    };
    let outcome = broker
        .sequencer
        .enqueue_produce(
            topic.partition_key(0),
            topic.epoch,
            sent_by,
            vec![Batch { header, bytes }],
        )
        .await
        .await;
    match outcome {
        Ok(Ok(_)) => tracing::info!(target: "courier::audit", %key, "off-chain incident recorded on the ledger"),
        Ok(Err(e)) => warn!(target: "courier::audit", %key, "off-chain incident not recorded: {e:?}"),
        Err(_) => warn!(target: "courier::audit", %key, "off-chain incident not recorded: the sequencer stopped"),
    }
}

/// The Kafka error a consumer gets for a value it cannot be served.
pub fn restore_code(e: &RestoreError) -> i16 {
    match e {
        RestoreError::Unavailable { source, .. }
            if source.is_retriable() || matches!(**source, StorageError::NotFound(_)) =>
        {
            ResponseError::KafkaStorageError.code()
        }
        _ => ResponseError::CorruptMessage.code(),
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_u16() as usize;
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

fn encode_request(pk: PartitionKey, offset: i64, digest: &[u8; 32], start: u64, len: u32, reader: &Reader) -> Bytes {
    let mut out = BytesMut::with_capacity(80 + reader.principal.len() + reader.host.len());
    out.put_slice(&pk.to_bytes());
    out.put_i64(offset);
    out.put_slice(digest);
    out.put_u64(start);
    out.put_u32(len);
    put_str(&mut out, &reader.principal);
    put_str(&mut out, &reader.host);
    out.freeze()
}

struct ObjectRequest {
    pk: PartitionKey,
    offset: i64,
    digest: Digest,
    start: u64,
    len: u32,
    principal: String,
    host: String,
}

fn decode_request(mut b: Bytes) -> Option<ObjectRequest> {
    if b.remaining() < 20 + 8 + 32 + 8 + 4 {
        return None;
    }
    let pk = PartitionKey::from_bytes(&b.split_to(20))?;
    let offset = b.get_i64();
    let mut digest = [0u8; 32];
    b.copy_to_slice(&mut digest);
    let (start, len) = (b.get_u64(), b.get_u32());
    let principal = get_str(&mut b)?;
    let host = get_str(&mut b)?;
    (!b.has_remaining()).then_some(ObjectRequest {
        pk,
        offset,
        digest: Digest(digest),
        start,
        len: len.min(CHUNK_BYTES),
        principal,
        host,
    })
}

fn status(code: u8, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + reason.len());
    out.put_u8(code);
    out.put_slice(reason.as_bytes());
    out.freeze()
}

/// Serves other nodes' requests for this organization's values.
pub struct ObjectService {
    pub broker: Weak<Broker>,
}

impl crate::replication::forward::ObjectServer for ObjectService {
    fn serve(&self, from: u8, body: Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send + '_>> {
        Box::pin(async move {
            let Some(broker) = self.broker.upgrade() else {
                return status(FAILED, "shutting down");
            };
            let Some(req) = decode_request(body) else {
                return status(FAILED, "malformed request");
            };
            match serve(&broker, from, &req).await {
                Ok(bytes) => {
                    let mut out = BytesMut::with_capacity(1 + bytes.len());
                    out.put_u8(OK);
                    out.put_slice(&bytes);
                    out.freeze()
                }
                Err((code, reason)) => {
                    if code == DENIED {
                        warn!(
                            target: "courier::audit",
                            node = from,
                            principal = %req.principal,
                            partition = ?req.pk,
                            offset = req.offset,
                            object = %req.digest,
                            reason = %reason,
                            "off-chain value refused to a node"
                        );
                    }
                    status(code, &reason)
                }
            }
        })
    }
}

/// One chunk of a value for node `from`, if it may have it.
async fn serve(broker: &Arc<Broker>, from: u8, req: &ObjectRequest) -> Result<Bytes, (u8, String)> {
    let offchain = &broker.offchain;
    let Some(asker) = broker.topics.brokers().into_iter().find(|b| b.id == i32::from(from)) else {
        return Err((DENIED, format!("node {from} is not registered")));
    };
    let state = broker.security.snapshot();
    if let Some(org) = state.organizations.get(req.principal.as_str()) {
        if *org != asker.organization {
            return Err((
                DENIED,
                format!(
                    "{} is of {org}, not of node {from}'s {}",
                    req.principal, asker.organization
                ),
            ));
        }
    }
    let Some(topic) = broker.topics.get_by_id(&req.pk.topic_id) else {
        return Err((DENIED, "no such topic".into()));
    };
    let ctx = crate::api::RequestContext {
        client_id: String::new(),
        peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        host: req.host.as_str().into(),
        principal: req.principal.as_str().into(),
        default_organization: asker.organization.as_str().into(),
        listener: "".into(),
        api: "OffchainValue",
    };
    if !broker
        .authorizer
        .allowed(&state, &ctx, operation::READ, resource::TOPIC, &topic.name)
    {
        return Err((DENIED, format!("{} may not read {}", req.principal, topic.name)));
    }
    drop(state);
    if !broker.topics.serves(&req.pk) {
        return Err((NOT_FOUND, "this node does not hold the partition".into()));
    }
    let d = recorded_descriptor(broker, req.pk, req.offset).await.ok_or((
        DENIED,
        format!("no record at offset {} names an off-chain value", req.offset),
    ))?;
    if d.digest != req.digest.0 || d.organization != offchain.organization {
        return Err((
            DENIED,
            format!("the record at offset {} names another object", req.offset),
        ));
    }
    let end = req.start.saturating_add(u64::from(req.len)).min(d.size);
    if req.start > end {
        return Err((FAILED, "range past the end".into()));
    }
    let read = async {
        let mut reader = offchain.storage.get(&req.digest, Some(req.start..end)).await?;
        let mut chunk = Vec::with_capacity((end - req.start) as usize);
        reader.read_to_end(&mut chunk).await.map_err(StorageError::Source)?;
        Ok::<_, StorageError>(chunk)
    };
    match read.await {
        Ok(chunk) => Ok(Bytes::from(chunk)),
        Err(StorageError::NotFound(_)) => Err((NOT_FOUND, "not in this node's storage".into())),
        Err(e) => Err((FAILED, e.to_string())),
    }
}

/// The descriptor of the certified record at `offset` of `pk`, as this
/// node's ledger holds it.
async fn recorded_descriptor(broker: &Arc<Broker>, pk: PartitionKey, offset: i64) -> Option<Descriptor> {
    if offset < 0 || offset >= broker.topics.state(&pk).next_offset {
        return None;
    }
    let store = broker.store.clone();
    let blocks = tokio::task::spawn_blocking(move || store.read_from(&pk, offset, 1))
        .await
        .ok()?
        .ok()?;
    let block = blocks.first()?;
    for batch in split_batches(&block.batches) {
        let batch = block.batches.slice_ref(batch.ok()?);
        let header = BatchHeader::parse(&batch).ok()?;
        if !(header.base_offset..=header.last_offset()).contains(&offset) {
            continue;
        }
        let (header, records) = format::decode(&batch, batch.len().max(1 << 20)).ok()?;
        let r = records
            .iter()
            .find(|r| header.base_offset + i64::from(r.offset_delta) == offset)?;
        return r.descriptor()?.ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let pk = PartitionKey {
            topic_id: [7; 16],
            partition: 3,
        };
        let reader = Reader {
            principal: "User:b-consumer".into(),
            host: "127.0.0.1".into(),
        };
        let body = encode_request(pk, 42, &[9; 32], 1 << 24, CHUNK_BYTES, &reader);
        let r = decode_request(body.clone()).expect("decodes");
        assert_eq!(
            (
                r.pk,
                r.offset,
                r.digest,
                r.start,
                r.len,
                r.principal.as_str(),
                r.host.as_str()
            ),
            (
                pk,
                42,
                Digest([9; 32]),
                1 << 24,
                CHUNK_BYTES,
                "User:b-consumer",
                "127.0.0.1"
            )
        );
        for cut in 0..body.len() {
            assert!(decode_request(body.slice(..cut)).is_none(), "{cut} bytes");
        }
        let mut long = BytesMut::from(&body[..]);
        long.put_u8(0);
        assert!(decode_request(long.freeze()).is_none(), "trailing bytes");
    }
}
