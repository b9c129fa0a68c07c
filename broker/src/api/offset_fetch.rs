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

use super::{str_bytes, topic_name};
use crate::Broker;

/// (topic name, partition, committed) for every position asked for.
type Positions = Vec<(TopicName, Vec<(i32, Option<CommittedOffset>)>)>;

async fn positions(
    broker: &Arc<Broker>,
    group: &str,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Positions, i16> {
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
    Ok(wanted
        .into_iter()
        .map(|(name, parts)| {
            let topic = broker.topics.get(name.as_str());
            let found = parts
                .into_iter()
                .map(|p| {
                    (
                        p,
                        topic.as_ref().and_then(|t| committed.get(&t.partition_key(p)).cloned()),
                    )
                })
                .collect();
            (name, found)
        })
        .collect())
}

pub async fn handle(broker: &Arc<Broker>, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let wanted = g
                .topics
                .map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
            let r = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            groups.push(match positions(broker, g.group_id.as_str(), wanted).await {
                Err(code) => r.with_error_code(code),
                Ok(found) => r.with_topics(
                    found
                        .into_iter()
                        .map(|(name, parts)| {
                            OffsetFetchResponseTopics::default().with_name(name).with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, c)| {
                                        let (offset, epoch, md) = unpack(c);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
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
    match positions(broker, req.group_id.as_str(), wanted).await {
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
                                let (offset, epoch, md) = unpack(c);
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
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
fn unpack(c: Option<CommittedOffset>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}
