//! Model-based test of the sequencer and ledger store: random produces
//! (plain and idempotent), retries, sequence gaps, receipts and restarts,
//! checked against a plain in-memory model of what must be on the ledger
//! (each record's value, and who sent it).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use courier::sequencer::{LocalSequencer, Rejected, SentBy};
use courier::topics::Topics;
use courier_consensus::catalog::TopicRecord;
use courier_consensus::ledger::{verify_partition, Durability, LedgerStore, Receipt};
use courier_protocol::records::{
    encode_batch, for_each_record, validate_record_set, BatchHeader, NewRecord, ProducerIds, RecordLimits,
    BATCH_HEADER_BYTES,
};
use proptest::prelude::*;

const PARTITIONS: i32 = 3;
const PRODUCER: i64 = 77;
const LIMITS: RecordLimits = RecordLimits {
    batch_bytes_max: 1 << 20,
    decompressed_bytes_max: 1 << 22,
};

#[derive(Debug, Clone)]
enum Op {
    Produce {
        partition: i32,
        records: usize,
        idempotent: bool,
        sender: u8,
    },
    /// Resend the n-th idempotent batch sent so far (a retry).
    Retry {
        nth: usize,
    },
    /// An idempotent batch whose sequence skips ahead.
    Gap {
        partition: i32,
    },
    Receipt {
        partition: i32,
        offset: i64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, 1usize..5, any::<bool>(), 0u8..3).prop_map(|(partition, records, idempotent, sender)| Op::Produce { partition, records, idempotent, sender }),
        2 => any::<usize>().prop_map(|nth| Op::Retry { nth }),
        1 => (0..PARTITIONS).prop_map(|partition| Op::Gap { partition }),
        2 => (0..PARTITIONS, 0i64..50).prop_map(|(partition, offset)| Op::Receipt { partition, offset }),
        1 => Just(Op::Restart),
    ]
}

struct Node {
    store: Arc<LedgerStore>,
    sequencer: Option<LocalSequencer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn open(path: &std::path::Path, topic: &TopicRecord) -> Node {
        let store = Arc::new(LedgerStore::open(path, Durability::None).unwrap());
        let topics = Arc::new(Topics::load(store.topics().unwrap(), store.partitions().unwrap()));
        assert!(topics.get(&topic.name).is_some());
        let (sequencer, thread) = LocalSequencer::start(store.clone(), topics).unwrap();
        Node {
            store,
            sequencer: Some(sequencer),
            thread: Some(thread),
        }
    }

    fn close(mut self) {
        drop(self.sequencer.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Every (offset, value) on a partition's ledger, in order.
/// Producer `n`'s identity.
fn sender(n: u8) -> SentBy {
    SentBy {
        principal: format!("User:p{n}").into(),
        organization: format!("org-{n}").into(),
    }
}

/// Every record of a partition: offset, value, and the sender its block names.
fn read_back(store: &LedgerStore, topic: &TopicRecord, partition: i32) -> Vec<(i64, Vec<u8>, String)> {
    let mut out = Vec::new();
    for block in store.read_from(&topic.partition_key(partition), 0, usize::MAX).unwrap() {
        for batch in validate_record_set(&block.batches, &LIMITS).unwrap() {
            let h: BatchHeader = batch.header;
            for_each_record(&h, &batch.bytes[BATCH_HEADER_BYTES..], 1 << 22, |r| {
                let offset = h.base_offset + r.offset_delta as i64;
                let sent_by = block
                    .sender_of(offset)
                    .map(|s| format!("{}/{}", s.principal, s.organization))
                    .unwrap_or_default();
                out.push((offset, r.value.unwrap_or_default().to_vec(), sent_by));
                Ok(())
            })
            .unwrap();
        }
    }
    out
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let topic = TopicRecord {
        name: "model".into(),
        id: [9; 16],
        partitions: PARTITIONS,
        configs: BTreeMap::new(),
        epoch: 0,
    };
    LedgerStore::open(&path, Durability::None)
        .unwrap()
        .put_topic(&topic)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The model: what each partition must hold, the next idempotent sequence
    // per partition, batches sent with their first offset, last receipt.
    let mut model: Vec<Vec<(Vec<u8>, String)>> = vec![Vec::new(); PARTITIONS as usize];
    let mut next_seq = [0i32; PARTITIONS as usize];
    let mut sent: Vec<(i32, Bytes, i64)> = Vec::new();
    let mut receipts: BTreeMap<i32, i64> = BTreeMap::new();
    let mut counter = 0u64;
    let mut node = Node::open(&path, &topic);

    for op in ops {
        let seq = node.sequencer.clone().unwrap();
        match op {
            Op::Produce {
                partition,
                records,
                idempotent,
                sender: who,
            } => {
                let values: Vec<Vec<u8>> = (0..records)
                    .map(|_| {
                        counter += 1;
                        format!("v{counter}").into_bytes()
                    })
                    .collect();
                let recs: Vec<NewRecord<'_>> = values
                    .iter()
                    .map(|v| NewRecord {
                        value: Some(v),
                        ..Default::default()
                    })
                    .collect();
                let ids = if idempotent {
                    ProducerIds {
                        producer_id: PRODUCER,
                        producer_epoch: 0,
                        base_sequence: next_seq[partition as usize],
                    }
                } else {
                    ProducerIds::NONE
                };
                let bytes = encode_batch(1_000, ids, &recs);
                let batches = validate_record_set(&bytes, &LIMITS).unwrap();
                let appended = rt
                    .block_on(seq.produce(topic.partition_key(partition), 0, sender(who), batches))
                    .unwrap();
                let expected = model[partition as usize].len() as i64;
                assert_eq!(appended.base_offset, expected, "acknowledged offsets are contiguous");
                let sent_by = format!("User:p{who}/org-{who}");
                model[partition as usize].extend(values.into_iter().map(|v| (v, sent_by.clone())));
                if idempotent {
                    next_seq[partition as usize] += records as i32;
                    sent.push((partition, bytes, expected));
                }
            }
            Op::Retry { nth } => {
                if sent.is_empty() {
                    continue;
                }
                let (partition, bytes, first_offset) = sent[nth % sent.len()].clone();
                let batches = validate_record_set(&bytes, &LIMITS).unwrap();
                let outcome = rt.block_on(seq.produce(topic.partition_key(partition), 0, sender(0), batches));
                // The last five batches per producer and partition are recognised;
                // an older one is out of order. Either way nothing is written.
                match outcome {
                    Ok(a) => assert_eq!(a.base_offset, first_offset, "a retry gets its original offset"),
                    Err(e) => assert_eq!(e, Rejected::OutOfOrderSequence),
                }
            }
            Op::Gap { partition } => {
                let ids = ProducerIds {
                    producer_id: PRODUCER,
                    producer_epoch: 0,
                    base_sequence: next_seq[partition as usize] + 5,
                };
                let bytes = encode_batch(
                    1_000,
                    ids,
                    &[NewRecord {
                        value: Some(b"gap"),
                        ..Default::default()
                    }],
                );
                let batches = validate_record_set(&bytes, &LIMITS).unwrap();
                let outcome = rt.block_on(seq.produce(topic.partition_key(partition), 0, sender(0), batches));
                assert_eq!(outcome.unwrap_err(), Rejected::OutOfOrderSequence);
            }
            Op::Receipt { partition, offset } => {
                let receipt = Receipt {
                    group_id: "g".into(),
                    offset,
                    ..Default::default()
                };
                let rx = rt.block_on(seq.enqueue_receipt(topic.partition_key(partition), receipt));
                rt.block_on(rx).unwrap().unwrap();
                receipts.insert(partition, offset);
            }
            Op::Restart => {
                drop(seq);
                node.close();
                node = Node::open(&path, &topic);
            }
        }
    }
    let store = node.store.clone();
    node.close();
    for p in 0..PARTITIONS {
        let got = read_back(&store, &topic, p);
        let want: Vec<(i64, Vec<u8>, String)> = model[p as usize]
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (v, sent_by))| (i as i64, v, sent_by))
            .collect();
        assert_eq!(
            got, want,
            "partition {p} holds exactly what was acknowledged, in order, each record with its sender"
        );
        verify_partition(&store, &topic.partition_key(p), |_| {}).unwrap();
    }
    let committed: BTreeMap<i32, i64> = store
        .committed_offsets("g")
        .unwrap()
        .into_iter()
        .map(|(pk, c)| (pk.partition, c.offset))
        .collect();
    assert_eq!(
        committed, receipts,
        "the last receipt per partition is the group's position"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn the_ledger_holds_exactly_the_acknowledged_writes(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
