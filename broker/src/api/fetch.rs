//! Fetch: committed records only, from the ledger, as whole batches.
//!
//! A fetch waits (long poll) until `min_bytes` are available or `max_wait_ms`
//! passes, waking on every committed sequencer round. Size limits follow
//! KIP-74: `partition_max_bytes` and `max_bytes` bound the answer, except
//! that the first batch of the first non-empty partition is always returned
//! whole so a consumer can never get stuck behind a large batch.
//! Incremental fetch sessions (KIP-227) are refused correctly: Courier never
//! creates one (it answers session id 0), and a session id it did not issue
//! gets FETCH_SESSION_ID_NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_consensus::ledger::{Block, LedgerStore, PartitionKey, StoreError};
use courier_protocol::records::BatchHeader;
use courier_protocol::ApiKey;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::RequestContext;
use crate::Broker;
use courier_consensus::security::operation;

/// Longest a fetch may wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

/// One partition to read.
#[derive(Clone, Copy)]
struct Read {
    pk: PartitionKey,
    offset: i64,
    max_bytes: usize,
    /// The high watermark: nothing at or past it is served, even if the
    /// ledger holds it (a replica stores blocks before they are certified).
    end: i64,
}

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: FetchRequest, version: i16) -> FetchResponse {
    if version >= 7 && req.session_id != 0 {
        super::count_error(ApiKey::Fetch, ResponseError::FetchSessionIdNotFound.code());
        return FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    // Read on each topic, decided once for the whole long poll (a replica's
    // fetch would also need ClusterAction; Kafka clients send replica -1).
    let access = broker.access(ctx);
    let replica_denied = req.replica_id.0 >= 0 && !access.cluster(operation::CLUSTER_ACTION);
    let denied: Vec<bool> = req
        .topics
        .iter()
        .map(|t| replica_denied || !access.topic(operation::READ, t.topic.as_str()))
        .collect();
    drop(access);
    let mut commits = broker.sequencer.commits();
    let reader = crate::offchain::Reader {
        principal: ctx.principal.clone(),
        host: ctx.host.clone(),
    };
    loop {
        commits.borrow_and_update();
        let (response, bytes, errors) = read_once(broker, &req, &denied, &reader).await;
        if bytes >= req.min_bytes.max(0) as usize || errors || Instant::now() >= deadline {
            return response;
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return response },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Builds the response from what is committed now; returns it with the
/// record bytes it carries and whether any partition had an error.
async fn read_once(
    broker: &Arc<Broker>,
    req: &FetchRequest,
    denied: &[bool],
    reader: &crate::offchain::Reader,
) -> (FetchResponse, usize, bool) {
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut reads = Vec::new();
    let mut errors = false;
    for (t, denied) in req.topics.iter().zip(denied) {
        let record = broker.topics.get(t.topic.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_aborted_transactions(Some(vec![]));
            if *denied {
                errors = true;
                partitions.push(data.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(topic) = record.as_ref().filter(|r| (0..r.partitions).contains(&p.partition)) else {
                errors = true;
                partitions.push(data.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            if let Some(code) = epoch_error(p.current_leader_epoch, topic.epoch) {
                errors = true;
                partitions.push(data.with_error_code(code));
                continue;
            }
            let pk = topic.partition_key(p.partition);
            if !broker.topics.serves(&pk) {
                // Another cluster's partition: Metadata names its leader.
                errors = true;
                partitions.push(data.with_error_code(ResponseError::NotLeaderOrFollower.code()));
                continue;
            }
            let state = broker.topics.state(&pk);
            let data = data
                .with_high_watermark(state.next_offset)
                .with_last_stable_offset(state.next_offset)
                .with_log_start_offset(state.log_start_offset);
            if p.fetch_offset < state.log_start_offset || p.fetch_offset > state.next_offset {
                errors = true;
                partitions.push(data.with_error_code(ResponseError::OffsetOutOfRange.code()));
                continue;
            }
            if p.fetch_offset < state.next_offset {
                reads.push((
                    topics.len(),
                    partitions.len(),
                    Read {
                        pk,
                        offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes.max(0) as usize,
                        end: state.next_offset,
                    },
                ));
            }
            partitions.push(data.with_records(Some(Bytes::new())));
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions),
        );
    }
    let mut total = 0;
    if !reads.is_empty() {
        let store = broker.store.clone();
        let response_max = req.max_bytes.clamp(0, broker.config.fetch_max_bytes) as usize;
        let jobs: Vec<Read> = reads.iter().map(|(_, _, r)| *r).collect();
        let read_started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || read_partitions(&store, &jobs, response_max)).await;
        metrics::histogram!("courier_fetch_ledger_read_seconds").record(read_started.elapsed().as_secs_f64());
        match result {
            Ok(records) => {
                for ((ti, pi, job), read) in reads.iter().zip(records) {
                    let part = &mut topics[*ti].partitions[*pi];
                    match read {
                        Ok(bytes) => {
                            // Off-chain values are put back (checked), as
                            // many batches as the budget takes once restored.
                            let budget = job.max_bytes.min(response_max.saturating_sub(total));
                            match broker
                                .offchain
                                .restore(broker, job.pk, bytes, budget, total == 0, reader)
                                .await
                            {
                                Ok(bytes) => {
                                    total += bytes.len();
                                    part.records = Some(bytes);
                                }
                                Err(e) => {
                                    errors = true;
                                    part.error_code = crate::offchain::restore_code(&e);
                                }
                            }
                        }
                        Err(e) => {
                            // A damaged block (being repaired) or a failed
                            // read: this partition only, and retriable.
                            if !matches!(e, StoreError::Damaged(_)) {
                                tracing::error!(error = %e, "ledger read failed");
                            }
                            errors = true;
                            part.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger read task failed");
                errors = true;
                for (ti, pi, _) in &reads {
                    topics[*ti].partitions[*pi].error_code = ResponseError::KafkaStorageError.code();
                }
            }
        }
    }
    for t in &topics {
        for p in &t.partitions {
            super::count_error(ApiKey::Fetch, p.error_code);
        }
    }
    (FetchResponse::default().with_responses(topics), total, errors)
}

/// KIP-320 fencing: a client that knows a newer epoch than ours is ahead of
/// us; one that knows an older epoch must refresh its metadata.
pub fn epoch_error(client_epoch: i32, epoch: i32) -> Option<i16> {
    if client_epoch < 0 || client_epoch == epoch {
        None
    } else if client_epoch < epoch {
        Some(ResponseError::FencedLeaderEpoch.code())
    } else {
        Some(ResponseError::UnknownLeaderEpoch.code())
    }
}

/// Each partition's records, or why it has none: a failed read is that
/// partition's alone.
fn read_partitions(store: &LedgerStore, reads: &[Read], response_max: usize) -> Vec<Result<Bytes, StoreError>> {
    let mut out = Vec::with_capacity(reads.len());
    let mut total = 0usize;
    for r in reads {
        let budget = r.max_bytes.min(response_max.saturating_sub(total));
        let must_return_one = total == 0;
        if budget == 0 && !must_return_one {
            out.push(Ok(Bytes::new()));
            continue;
        }
        let records = store
            .read_from(&r.pk, r.offset, budget.max(1))
            .map(|blocks| gather(&blocks, r.offset, r.end, budget, must_return_one));
        if let Ok(records) = &records {
            total += records.len();
        }
        out.push(records);
    }
    out
}

/// Whole batches holding `offset` and after, below `end`, up to `limit`
/// bytes (or one batch past it when `at_least_one`). Zero-copy when they
/// sit in one block.
fn gather(blocks: &[Block], offset: i64, end_offset: i64, limit: usize, at_least_one: bool) -> Bytes {
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    'blocks: for block in blocks {
        let b = &block.batches;
        let (mut start, mut end) = (None, 0);
        let mut at = 0;
        while at < b.len() {
            let Ok(h) = BatchHeader::parse(&b[at..]) else {
                break;
            };
            let size = h.total_bytes();
            if at + size > b.len() || h.base_offset >= end_offset {
                break;
            }
            if h.last_offset() >= offset {
                if total + size > limit && !(at_least_one && total == 0) {
                    if let Some(s) = start {
                        pieces.push(b.slice(s..end));
                    }
                    break 'blocks;
                }
                start.get_or_insert(at);
                end = at + size;
                total += size;
            }
            at += size;
        }
        if let Some(s) = start {
            pieces.push(b.slice(s..end));
        }
    }
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            for p in pieces {
                joined.extend_from_slice(&p);
            }
            joined.freeze()
        }
    }
}
