//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), and by
//! timestamp — the first record whose timestamp is at or after the one asked
//! for, found through the offset index's running maximum and then by walking
//! that block's records.

use std::sync::Arc;

use courier_consensus::ledger::{Block, LedgerStore, PartitionKey, StoreError};
use courier_protocol::records::{for_each_record, BatchHeader, BATCH_HEADER_BYTES};
use courier_protocol::ApiKey;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::RequestContext;
use crate::Broker;
use courier_consensus::security::operation;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// Decompression bound when walking a stored batch (it was validated on
/// the way in, under a tighter bound).
const DECOMPRESSED_BYTES_MAX: usize = 256 << 20;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = broker.access(ctx).topic(operation::DESCRIBE, t.name.as_str());
        let record = broker.topics.get(t.name.as_str()).filter(|_| allowed);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let outcome = match record
                .as_ref()
                .filter(|r| (0..r.partitions).contains(&p.partition_index))
            {
                None if !allowed => Err(ResponseError::TopicAuthorizationFailed.code()),
                None => Err(ResponseError::UnknownTopicOrPartition.code()),
                Some(topic) => match super::fetch::epoch_error(p.current_leader_epoch, topic.epoch) {
                    Some(code) => Err(code),
                    None => lookup(broker, topic.partition_key(p.partition_index), p.timestamp)
                        .await
                        .map(|found| (found, topic.epoch)),
                },
            };
            partitions.push(match outcome {
                Ok((Some((offset, timestamp)), epoch)) => {
                    let r = r.with_offset(offset).with_timestamp(timestamp);
                    // The field exists from v4; set earlier, it cannot be encoded.
                    if version >= 4 {
                        r.with_leader_epoch(epoch)
                    } else {
                        r
                    }
                }
                Ok((None, _)) => r,
                Err(code) => {
                    super::count_error(ApiKey::ListOffsets, code);
                    r.with_error_code(code)
                }
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

async fn lookup(broker: &Arc<Broker>, pk: PartitionKey, timestamp: i64) -> Result<Option<(i64, i64)>, i16> {
    if !broker.topics.serves(&pk) {
        return Err(kafka_protocol::ResponseError::NotLeaderOrFollower.code());
    }
    let state = broker.topics.state(&pk);
    match timestamp {
        LATEST => return Ok(Some((state.next_offset, -1))),
        EARLIEST => return Ok(Some((state.log_start_offset, -1))),
        _ => {}
    }
    let target = if timestamp == MAX_TIMESTAMP {
        state.max_timestamp
    } else {
        timestamp
    };
    if target < 0 {
        return if timestamp == MAX_TIMESTAMP {
            Ok(None)
        } else {
            Err(ResponseError::InvalidRequest.code())
        };
    }
    let exact = timestamp == MAX_TIMESTAMP;
    let store = broker.store.clone();
    match tokio::task::spawn_blocking(move || find(&store, &pk, target, exact)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "ledger read failed");
            Err(ResponseError::KafkaStorageError.code())
        }
        Err(_) => Err(ResponseError::UnknownServerError.code()),
    }
}

/// First (offset, timestamp) with timestamp ≥ `target` (== when `exact`).
fn find(store: &LedgerStore, pk: &PartitionKey, target: i64, exact: bool) -> Result<Option<(i64, i64)>, StoreError> {
    let Some(first) = store.first_block_reaching(pk, target)? else {
        return Ok(None);
    };
    let mut offset = first.base_offset;
    // Timestamps are not monotonic: keep walking blocks until one matches.
    loop {
        let blocks = store.read_from(pk, offset, 1 << 20)?;
        if blocks.is_empty() {
            return Ok(None);
        }
        for block in &blocks {
            if let Some(found) = search_block(block, target, exact) {
                return Ok(Some(found));
            }
            offset = block.next_offset;
        }
    }
}

fn search_block(block: &Block, target: i64, exact: bool) -> Option<(i64, i64)> {
    let b = &block.batches;
    let mut at = 0;
    while at < b.len() {
        let h = BatchHeader::parse(&b[at..]).ok()?;
        let end = at + h.total_bytes();
        if end > b.len() {
            return None;
        }
        if h.max_timestamp >= target {
            let mut found = None;
            let _ = for_each_record(&h, &b[at + BATCH_HEADER_BYTES..end], DECOMPRESSED_BYTES_MAX, |r| {
                let ts = h.base_timestamp + r.timestamp_delta;
                let hit = if exact { ts == target } else { ts >= target };
                if hit && found.is_none() {
                    found = Some((h.base_offset + r.offset_delta as i64, ts));
                }
                Ok(())
            });
            if found.is_some() {
                return found;
            }
        }
        at = end;
    }
    None
}
