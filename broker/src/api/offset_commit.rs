//! OffsetCommit: a committed offset is a delivery receipt. Each one is
//! ordered through the partition's sequencer and written into its ledger
//! (group, member, principal, client, offset, time) together with the
//! group's current position, in the same transaction.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use courier_consensus::ledger::Receipt;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::RequestContext;
use crate::sequencer::Rejected;
use crate::Broker;
use courier_consensus::security::operation;

/// Longest metadata string kept with a commit (Kafka's offset.metadata.max.bytes).
const METADATA_BYTES_MAX: usize = 4096;

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    let access = broker.access(ctx);
    // The receiver's organization, as the receipt records it.
    let organization = ctx.organization(&broker.security.snapshot()).to_owned();
    let group_error = if group_id.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else if !access.group(operation::READ, &group_id) {
        ResponseError::GroupAuthorizationFailed.code()
    } else if let Some(code) = super::find_coordinator::not_coordinator(broker, &group_id) {
        code
    } else {
        broker
            .groups
            .check_commit(&group_id, req.generation_id_or_member_epoch, &member_id)
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Queue every partition's receipt first, then await them together, so
    // the whole commit lands in one sequencer round.
    enum Pending {
        Done(i16),
        Queued(tokio::sync::oneshot::Receiver<Result<(), Rejected>>),
    }
    let mut pending = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic_allowed = group_error != 0 || access.topic(operation::READ, t.name.as_str());
        let record = broker.topics.get(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let outcome = if group_error != 0 {
                Pending::Done(group_error)
            } else if !topic_allowed {
                Pending::Done(ResponseError::TopicAuthorizationFailed.code())
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > METADATA_BYTES_MAX)
            {
                Pending::Done(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                match record
                    .as_ref()
                    .filter(|r| (0..r.partitions).contains(&p.partition_index))
                {
                    None => Pending::Done(ResponseError::UnknownTopicOrPartition.code()),
                    Some(topic) => {
                        let receipt = Receipt {
                            group_id: group_id.clone(),
                            member_id: member_id.clone(),
                            principal: ctx.principal.to_string(),
                            organization: organization.clone(),
                            client_id: ctx.client_id.clone(),
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            timestamp_ms: now_ms,
                        };
                        let pk = topic.partition_key(p.partition_index);
                        Pending::Queued(broker.sequencer.enqueue_receipt(pk, receipt).await)
                    }
                }
            };
            partitions.push((p.partition_index, outcome));
        }
        pending.push((t.name, partitions));
    }
    drop(access);
    let mut topics = Vec::with_capacity(pending.len());
    for (name, partitions) in pending {
        let mut answered = Vec::with_capacity(partitions.len());
        for (index, outcome) in partitions {
            let code = match outcome {
                Pending::Done(code) => code,
                Pending::Queued(rx) => match rx.await.unwrap_or(Err(Rejected::ShuttingDown)) {
                    Ok(()) => 0,
                    Err(Rejected::UnknownTopicOrPartition) => ResponseError::UnknownTopicOrPartition.code(),
                    Err(Rejected::ShuttingDown) => ResponseError::CoordinatorNotAvailable.code(),
                    Err(_) => ResponseError::KafkaStorageError.code(),
                },
            };
            super::count_error(courier_protocol::ApiKey::OffsetCommit, code);
            answered.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(code),
            );
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(answered),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}
