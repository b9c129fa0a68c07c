//! OffsetForLeaderEpoch: how librdkafka and the Java client detect log
//! truncation after a leader change (KIP-101/320). A partition's epoch is
//! its topic's epoch, stamped into every stored batch; the end offset of
//! the current epoch is the high watermark, and nothing is ever truncated.

use std::sync::Arc;

use courier_protocol::ApiKey;
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::RequestContext;
use crate::Broker;
use courier_consensus::security::operation;

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let access = broker.access(ctx);
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = access.topic(operation::DESCRIBE, t.topic.as_str());
        let record = broker.topics.get(t.topic.as_str());
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let r = EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                if !allowed {
                    let code = ResponseError::TopicAuthorizationFailed.code();
                    super::count_error(ApiKey::OffsetForLeaderEpoch, code);
                    return r.with_error_code(code);
                }
                let Some(topic) = record.as_ref().filter(|r| (0..r.partitions).contains(&p.partition)) else {
                    super::count_error(
                        ApiKey::OffsetForLeaderEpoch,
                        ResponseError::UnknownTopicOrPartition.code(),
                    );
                    return r.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                };
                if let Some(code) = super::fetch::epoch_error(p.current_leader_epoch, topic.epoch) {
                    super::count_error(ApiKey::OffsetForLeaderEpoch, code);
                    return r.with_error_code(code);
                }
                if p.leader_epoch > topic.epoch {
                    // An epoch we never had: undefined, as Kafka answers.
                    return r;
                }
                let pk = topic.partition_key(p.partition);
                if !broker.topics.serves(&pk) {
                    return r.with_error_code(ResponseError::NotLeaderOrFollower.code());
                }
                let state = broker.topics.state(&pk);
                r.with_leader_epoch(topic.epoch).with_end_offset(state.next_offset)
            })
            .collect();
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
