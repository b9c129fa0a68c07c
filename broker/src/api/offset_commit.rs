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

/// Longest metadata string kept with a commit (Kafka's offset.metadata.max.bytes).
const METADATA_BYTES_MAX: usize = 4096;

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    let group_error = if group_id.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        broker
            .groups
            .check_commit(&group_id, req.generation_id_or_member_epoch, &member_id)
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let record = broker.topics.get(t.name.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let code = if group_error != 0 {
                group_error
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > METADATA_BYTES_MAX)
            {
                ResponseError::OffsetMetadataTooLarge.code()
            } else {
                match record
                    .as_ref()
                    .filter(|r| (0..r.partitions).contains(&p.partition_index))
                {
                    None => ResponseError::UnknownTopicOrPartition.code(),
                    Some(topic) => {
                        let receipt = Receipt {
                            group_id: group_id.clone(),
                            member_id: member_id.clone(),
                            principal: ctx.principal.clone(),
                            client_id: ctx.client_id.clone(),
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            timestamp_ms: now_ms,
                        };
                        match broker
                            .sequencer
                            .commit_offset(topic.partition_key(p.partition_index), receipt)
                            .await
                        {
                            Ok(()) => 0,
                            Err(Rejected::UnknownTopicOrPartition) => ResponseError::UnknownTopicOrPartition.code(),
                            Err(Rejected::ShuttingDown) => ResponseError::CoordinatorNotAvailable.code(),
                            Err(_) => ResponseError::KafkaStorageError.code(),
                        }
                    }
                }
            };
            super::count_error(courier_protocol::ApiKey::OffsetCommit, code);
            partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code),
            );
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}
