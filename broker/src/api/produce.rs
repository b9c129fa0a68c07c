//! Produce: validate each partition's record set in place, queue it to the
//! sequencer in request order, and answer once every partition's outcome is
//! known (acks=1 and acks=all both mean "committed to the ledger"; acks=0
//! gets no answer, as in Kafka).

use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::records::{split_batches, validate_batch_records, Batch, RecordLimits, RecordsError};
use courier_protocol::{ApiKey, ResponseKind};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use super::{str_bytes, Reply, RequestContext};
use crate::sequencer::{Appended, Rejected};
use crate::Broker;
use courier_consensus::security::{operation, resource};

/// A compressed batch may expand at most this many times over
/// `message.max.bytes` before it is refused as a compression bomb.
const DECOMPRESSION_RATIO_MAX: usize = 64;

enum Pending {
    Failed(i16, String),
    Queued(oneshot::Receiver<Result<Appended, Rejected>>),
}

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: ProduceRequest) -> Reply {
    let acks = req.acks;
    let access = broker.access(ctx);
    let transactional_denied = req
        .transactional_id
        .as_ref()
        .is_some_and(|id| !access.allows(operation::WRITE, resource::TRANSACTIONAL_ID, id.as_str()));
    let sent_by = ctx.sent_by(&broker.security.snapshot());
    let mut pending: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, Pending)>)> = Vec::new();
    for topic in req.topic_data {
        // Kafka checks authorization before existence: a denied client
        // learns nothing about which topics exist.
        let allowed = access.topic(operation::WRITE, topic.name.as_str());
        let record = broker.topics.get(topic.name.as_str());
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in topic.partition_data {
            let outcome = if !matches!(acks, -1..=1) {
                Pending::Failed(
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks={acks} is not 0, 1 or -1"),
                )
            } else if transactional_denied {
                Pending::Failed(
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                    "not authorized for the transactional id".into(),
                )
            } else if !allowed {
                Pending::Failed(
                    ResponseError::TopicAuthorizationFailed.code(),
                    format!("not authorized to write to {}", topic.name.as_str()),
                )
            } else if req.transactional_id.is_some() {
                Pending::Failed(
                    ResponseError::InvalidRequest.code(),
                    "transactions are not supported".into(),
                )
            } else {
                match &record {
                    Some(t) if (0..t.partitions).contains(&p.index) => {
                        let limit = t
                            .configs
                            .get("max.message.bytes")
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(broker.config.message_max_bytes as usize);
                        // An off-chain topic takes batches as large as a
                        // request; what its ledger keeps must fit the limit.
                        let threshold = crate::offchain::threshold(t);
                        let received_max = match threshold {
                            Some(_) => broker.config.socket_request_max_bytes.max(0) as usize,
                            None => limit,
                        };
                        let decompressed_max = limit.saturating_mul(DECOMPRESSION_RATIO_MAX).max(received_max);
                        let batches = match (
                            check(p.records.unwrap_or_default(), received_max, decompressed_max),
                            threshold,
                        ) {
                            (Ok(batches), Some(threshold)) => broker
                                .offchain
                                .offload(batches, threshold, decompressed_max)
                                .await
                                .and_then(|b| within(b, limit)),
                            (checked, _) => checked,
                        };
                        match batches {
                            Ok(batches) => Pending::Queued(
                                broker
                                    .sequencer
                                    .enqueue_produce(t.partition_key(p.index), t.epoch, sent_by.clone(), batches)
                                    .await,
                            ),
                            Err((code, message)) => Pending::Failed(code, message),
                        }
                    }
                    _ => Pending::Failed(
                        ResponseError::UnknownTopicOrPartition.code(),
                        format!("{}-{} does not exist", topic.name.as_str(), p.index),
                    ),
                }
            };
            parts.push((p.index, outcome));
        }
        pending.push((topic.name, parts));
    }
    if acks == 0 {
        return Reply::Nothing;
    }
    Reply::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(pending.len());
        for (name, parts) in pending {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for (index, outcome) in parts {
                let r = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_log_append_time_ms(-1);
                let (code, message, appended) = match outcome {
                    Pending::Failed(code, message) => {
                        tracing::debug!(code, reason = %message, "produce refused");
                        (code, Some(message), None)
                    }
                    Pending::Queued(rx) => match rx.await.unwrap_or(Err(Rejected::ShuttingDown)) {
                        Ok(a) => (0, None, Some(a)),
                        Err(e) => (super::rejected_code(&e), Some(e.to_string()), None),
                    },
                };
                super::count_error(ApiKey::Produce, code);
                partition_responses.push(match appended {
                    Some(a) => r
                        .with_base_offset(a.base_offset)
                        .with_log_start_offset(a.log_start_offset),
                    None => r
                        .with_error_code(code)
                        .with_base_offset(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(message.map(|m| str_bytes(&m))),
                });
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        ResponseKind::Produce(ProduceResponse::default().with_responses(responses))
    }))
}

/// Validates a partition's record set; the batches share the request's memory.
fn check(records: Bytes, batch_bytes_max: usize, decompressed_bytes_max: usize) -> Result<Vec<Batch>, (i16, String)> {
    let limits = RecordLimits {
        batch_bytes_max: usize::MAX,
        decompressed_bytes_max,
    };
    // A client may not write an off-chain descriptor: one naming another
    // organization's object would otherwise be served as that object.
    let mut batches = Vec::new();
    for batch in split_batches(&records) {
        let bytes = batch
            .map(|b| records.slice_ref(b))
            .map_err(|e| (records_code(&e), e.to_string()))?;
        let mut index = 0;
        let header = validate_batch_records(&bytes, &limits, |_, r| {
            index += 1;
            if r.offchain_header {
                return Err(RecordsError::ReservedHeader { index: index - 1 });
            }
            Ok(())
        })
        .map_err(|e| (records_code(&e), e.to_string()))?;
        batches.push(Batch { header, bytes });
    }
    if batches.is_empty() {
        return Err((ResponseError::CorruptMessage.code(), RecordsError::Empty.to_string()));
    }
    let batches = within(batches, batch_bytes_max)?;
    for b in &batches {
        if b.header.is_transactional() || b.header.is_control() {
            return Err((
                ResponseError::InvalidRecord.code(),
                "transactional batches are not supported".into(),
            ));
        }
    }
    Ok(batches)
}

/// `batches`, if each fits `max.message.bytes`.
fn within(batches: Vec<Batch>, batch_bytes_max: usize) -> Result<Vec<Batch>, (i16, String)> {
    match batches.iter().find(|b| b.bytes.len() > batch_bytes_max) {
        Some(b) => Err((
            ResponseError::MessageTooLarge.code(),
            format!(
                "batch of {} bytes exceeds max.message.bytes {batch_bytes_max}",
                b.bytes.len()
            ),
        )),
        None => Ok(batches),
    }
}

fn records_code(e: &RecordsError) -> i16 {
    match e {
        RecordsError::DecompressedTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        RecordsError::ReservedHeader { .. } => ResponseError::InvalidRecord.code(),
        _ => ResponseError::CorruptMessage.code(),
    }
}
