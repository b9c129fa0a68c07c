//! OffsetFetch: a group's committed positions, from the ledger. v8+ asks
//! for several groups at once.

use std::collections::HashMap;
use std::sync::Arc;

use courier_consensus::ledger::{CommittedOffset, PartitionKey};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::{str_bytes, topic_name, RequestContext};
use crate::Broker;
use courier_consensus::security::operation::DESCRIBE;

/// (topic name, partition, committed or an error code) for every
/// position asked for.
type Positions = Vec<(TopicName, Vec<(i32, Result<Option<CommittedOffset>, i16>)>)>;

async fn positions(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    group: &str,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Positions, i16> {
    if let Some(code) = super::group_denied(broker, ctx, DESCRIBE, group) {
        return Err(code);
    }
    let asked = wanted.is_some();
    let committed: HashMap<PartitionKey, CommittedOffset> = match broker.sequencer.committed_offsets(group).await {
        Ok(list) => list.into_iter().collect(),
        Err((code, _)) => return Err(code),
    };
    let wanted = match wanted {
        Some(w) => w,
        // All topics the group has positions in.
        None => broker
            .topics
            .all()
            .into_iter()
            .filter_map(|t| {
                let parts: Vec<i32> = (0..t.partitions)
                    .filter(|p| committed.contains_key(&t.partition_key(*p)))
                    .collect();
                (!parts.is_empty()).then(|| (topic_name(&t.name), parts))
            })
            .collect(),
    };
    let access = broker.access(ctx);
    Ok(wanted
        .into_iter()
        .filter_map(|(name, parts)| {
            // Topics asked for by name are answered TOPIC_AUTHORIZATION_FAILED;
            // from "all topics", unauthorized ones are left out.
            let allowed = if asked {
                access.topic(DESCRIBE, name.as_str())
            } else {
                access.quietly(DESCRIBE, courier_consensus::security::resource::TOPIC, name.as_str())
            };
            if !allowed && !asked {
                return None;
            }
            let topic = broker.topics.get(name.as_str());
            let found = parts
                .into_iter()
                .map(|p| {
                    let c = if allowed {
                        Ok(topic.as_ref().and_then(|t| committed.get(&t.partition_key(p)).cloned()))
                    } else {
                        Err(kafka_protocol::ResponseError::TopicAuthorizationFailed.code())
                    };
                    (p, c)
                })
                .collect();
            Some((name, found))
        })
        .collect())
}

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let wanted = g
                .topics
                .map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
            let r = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            groups.push(match positions(broker, ctx, g.group_id.as_str(), wanted).await {
                Err(code) => r.with_error_code(code),
                Ok(found) => r.with_topics(
                    found
                        .into_iter()
                        .map(|(name, parts)| {
                            OffsetFetchResponseTopics::default().with_name(name).with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, c)| {
                                        let (offset, epoch, md, code) = unpack(c);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_error_code(code)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str_bytes(&md)))
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                ),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req
        .topics
        .map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
    match positions(broker, ctx, req.group_id.as_str(), wanted).await {
        // v1 has no top-level error code: there the failure reads as "no commits".
        Err(code) if version >= 2 => OffsetFetchResponse::default().with_error_code(code),
        Err(_) => OffsetFetchResponse::default(),
        Ok(found) => OffsetFetchResponse::default().with_topics(
            found
                .into_iter()
                .map(|(name, parts)| {
                    OffsetFetchResponseTopic::default().with_name(name).with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, c)| {
                                let (offset, epoch, md, code) = unpack(c);
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(str_bytes(&md)))
                            })
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

/// No commit yet reads as offset -1 with empty metadata, as in Kafka.
fn unpack(c: Result<Option<CommittedOffset>, i16>) -> (i64, i32, String, i16) {
    match c {
        Ok(Some(c)) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default(), 0),
        Ok(None) => (-1, -1, String::new(), 0),
        Err(code) => (-1, -1, String::new(), code),
    }
}
