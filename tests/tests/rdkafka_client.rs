//! Courier driven by librdkafka (the `rdkafka` crate) with default client
//! settings except where a test says why.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

fn producer(broker: &TestBroker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap());
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

fn consumer(broker: &TestBroker, group: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("consumer")
}

fn admin(broker: &TestBroker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin client")
}

async fn create_topic(broker: &TestBroker, name: &str, partitions: i32) {
    let results = admin(broker)
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Reads `n` messages or fails after [`WAIT`].
async fn consume(c: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consumer error after {} messages: {e}", out.len()),
            Err(_) => panic!("timed out with {} of {n} messages", out.len()),
        }
    }
    out
}

fn assign_from_start(c: &StreamConsumer, topic: &str, partitions: i32) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_keys_values_headers_and_timestamps() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker, "events", 1).await;
    let p = producer(&broker, &[("linger.ms", "5")]);
    let base_ts = 1_700_000_000_000i64;
    let mut sends = Vec::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "seq",
                value: Some(&i.to_string()),
            })
            .insert(Header {
                key: "nothing",
                value: None::<&[u8]>,
            });
        let record = FutureRecord::to("events")
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(base_ts + i);
        sends.push(p.send_result(record).expect("queued"));
    }
    for (i, s) in sends.into_iter().enumerate() {
        let d = s.await.expect("delivered").expect("acknowledged");
        assert_eq!((d.partition, d.offset), (0, i as i64));
    }
    let c = consumer(&broker, "events-reader", &[]);
    assign_from_start(&c, "events", 1);
    let got = consume(&c, 200).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(format!("key-{i}").as_bytes()));
        assert_eq!(m.payload(), Some(format!("value-{i}").as_bytes()));
        assert_eq!(m.timestamp().to_millis(), Some(base_ts + i as i64));
        let h = m.headers().expect("headers");
        assert_eq!(h.count(), 2);
        assert_eq!(h.get(0).value, Some(i.to_string().as_bytes()));
        assert_eq!(h.get(1).value, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_land_on_kafkas_murmur2_partition() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker, "keyed", 6).await;
    // librdkafka's default partitioner is CRC32-based; murmur2_random is the
    // Java client's, which Courier's own producers follow.
    let p = producer(&broker, &[("partitioner", "murmur2_random")]);
    for i in 0..60 {
        let key = format!("customer-{i}");
        let d = p
            .send(FutureRecord::to("keyed").key(&key).payload("x"), WAIT)
            .await
            .expect("delivered");
        assert_eq!(
            d.partition as u32,
            courier_protocol::partitioner::partition_for_key(key.as_bytes(), 6),
            "key {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_compression_codecs_round_trip_and_verify() {
    let mut broker = TestBroker::start(&[]).await;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("compressed-{codec}");
        create_topic(&broker, &topic, 1).await;
        let p = producer(&broker, &[("compression.type", codec), ("linger.ms", "20")]);
        let sends: Vec<_> = (0..300)
            .map(|i| {
                let v = format!("{codec} record {i} {}", "padding ".repeat(i % 7));
                p.send_result(FutureRecord::to(&topic).key("k").payload(&v))
                    .expect("queued")
            })
            .collect();
        for s in sends {
            s.await.expect("delivered").expect("acknowledged");
        }
        let c = consumer(&broker, &format!("reader-{codec}"), &[]);
        assign_from_start(&c, &topic, 1);
        let got = consume(&c, 300).await;
        for (i, m) in got.iter().enumerate() {
            let want = format!("{codec} record {i} {}", "padding ".repeat(i % 7));
            assert_eq!(m.payload(), Some(want.as_bytes()), "{codec} #{i}");
        }
    }
    broker.stop().await;
    let (sound, _) = courier::verify::verify_data_dir(&broker.dir, None, |_| {}, || {}).expect("ledger verifies");
    assert_eq!(sound.iter().map(|p| p.records).sum::<i64>(), 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_record_once_in_order() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker, "exactly", 1).await;
    let p = producer(&broker, &[("enable.idempotence", "true"), ("linger.ms", "2")]);
    let sends: Vec<_> = (0..1000)
        .map(|i| {
            p.send_result(FutureRecord::to("exactly").key("k").payload(&i.to_string()))
                .expect("queued")
        })
        .collect();
    for s in sends {
        s.await.expect("delivered").expect("acknowledged");
    }
    let c = consumer(&broker, "exactly-reader", &[]);
    assign_from_start(&c, "exactly", 1);
    let got = consume(&c, 1000).await;
    let values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
}

fn assigned(c: &StreamConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|t| t.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls both consumers (which drives their rebalances) until `done`.
async fn poll_until(consumers: &[&StreamConsumer], done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in {WAIT:?}");
        for c in consumers {
            let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_consumers_rebalances_and_splits_the_partitions() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker, "shared", 4).await;
    let settings = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    let a = consumer(&broker, "pair", &settings);
    a.subscribe(&["shared"]).expect("subscribe");
    poll_until(&[&a], || assigned(&a).len() == 4).await;
    let b = consumer(&broker, "pair", &settings);
    b.subscribe(&["shared"]).expect("subscribe");
    poll_until(&[&a, &b], || {
        let (x, y) = (assigned(&a), assigned(&b));
        x.len() == 2 && y.len() == 2 && x.is_disjoint(&y)
    })
    .await;
    // When b leaves, a gets everything back.
    drop(b);
    poll_until(&[&a], || assigned(&a).len() == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_restarting_consumer_and_broker() {
    let mut broker = TestBroker::start(&[]).await;
    create_topic(&broker, "resume", 1).await;
    let p = producer(&broker, &[]);
    for i in 0..10 {
        p.send(FutureRecord::to("resume").key("k").payload(&i.to_string()), WAIT)
            .await
            .expect("delivered");
    }
    drop(p);
    {
        let c = consumer(&broker, "resumer", &[("enable.auto.commit", "false")]);
        c.subscribe(&["resume"]).expect("subscribe");
        let first = consume(&c, 6).await;
        assert_eq!(first[5].offset(), 5);
        c.commit_message(&c.recv().await.expect("7th message"), CommitMode::Sync)
            .expect("commit");
        // Committed the 7th message (offset 6): resume at 7.
    }
    broker.restart(&[]).await;
    let c = consumer(&broker, "resumer", &[("enable.auto.commit", "false")]);
    c.subscribe(&["resume"]).expect("subscribe");
    let rest = consume(&c, 3).await;
    assert_eq!(rest.iter().map(|m| m.offset()).collect::<Vec<_>>(), vec![7, 8, 9]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("resume", 0);
    let committed = c.committed_offsets(tpl, WAIT).expect("committed offsets");
    assert_eq!(
        committed.find_partition("resume", 0).map(|e| e.offset()),
        Some(Offset::Offset(7))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_times_finds_the_first_record_at_or_after_a_timestamp() {
    let broker = TestBroker::start(&[]).await;
    create_topic(&broker, "timed", 1).await;
    let p = producer(&broker, &[]);
    let t0 = 1_600_000_000_000i64;
    for i in 0..10 {
        p.send(
            FutureRecord::to("timed").key("k").payload("v").timestamp(t0 + i * 1000),
            WAIT,
        )
        .await
        .expect("delivered");
    }
    let c = consumer(&broker, "timer", &[]);
    let lookup = |ts: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("timed", 0, Offset::Offset(ts)).expect("tpl");
        let r = c.offsets_for_times(tpl, WAIT).expect("offsets_for_times");
        r.find_partition("timed", 0).map(|e| e.offset())
    };
    assert_eq!(lookup(t0 + 2500), Some(Offset::Offset(3)));
    assert_eq!(lookup(t0), Some(Offset::Offset(0)));
    assert_eq!(lookup(t0 + 9000), Some(Offset::Offset(9)));
    assert_eq!(lookup(t0 + 99_000), Some(Offset::End));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_grown_described_and_deleted_with_the_admin_client() {
    let broker = TestBroker::start(&["auto.create.topics.enable=false"]).await;
    let admin = admin(&broker);
    let opts = AdminOptions::new().operation_timeout(Some(WAIT));
    create_topic(&broker, "admin-made", 3).await;
    let dup = admin
        .create_topics(&[NewTopic::new("admin-made", 3, TopicReplication::Fixed(1))], &opts)
        .await
        .expect("call");
    assert!(dup[0].is_err(), "creating an existing topic fails");

    let grown = admin
        .create_partitions(&[NewPartitions::new("admin-made", 5)], &opts)
        .await
        .expect("call");
    grown[0].as_ref().expect("grown to 5");
    let md = admin
        .inner()
        .fetch_metadata(Some("admin-made"), WAIT)
        .expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 5);

    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic("admin-made")], &opts)
        .await
        .expect("call");
    let configs = configs[0].as_ref().expect("described");
    let map: HashMap<&str, Option<&str>> = configs
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(map.get("retention.ms"), Some(&Some("604800000")));
    assert_eq!(map.get("cleanup.policy"), Some(&Some("delete")));

    let p = producer(&broker, &[]);
    p.send(
        FutureRecord::to("admin-made").key("k").payload("before").partition(4),
        WAIT,
    )
    .await
    .expect("delivered");
    let deleted = admin.delete_topics(&["admin-made"], &opts).await.expect("call");
    deleted[0].as_ref().expect("deleted");
    let md = admin
        .inner()
        .fetch_metadata(Some("admin-made"), WAIT)
        .expect("metadata");
    assert!(md.topics()[0].error().is_some(), "deleted topic is unknown");

    // Re-created under the same name, it starts empty. (A fresh producer:
    // the old one's cached metadata still lists five partitions.)
    create_topic(&broker, "admin-made", 1).await;
    let p = producer(&broker, &[]);
    let d = p
        .send(FutureRecord::to("admin-made").key("k").payload("after"), WAIT)
        .await
        .expect("delivered");
    assert_eq!(d.offset, 0);
}

/// Issue 11's full disk, with the storage layer's fault-injection hook: a
/// commit's writes fail (no space), then the recovery probes fail for a
/// while, then a commit's fsync fails. The broker refuses what it could
/// not write with a retriable error, resumes on its own once writes work
/// again, and an idempotent producer's every record is then on the
/// ledger exactly once, in order; the ledger verifies after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_without_a_restart_after_failed_writes_and_fsyncs() {
    let mut broker = TestBroker::start(&[]).await;
    create_topic(&broker, "full", 1).await;
    let p = producer(
        &broker,
        &[
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
        ],
    );
    let store = broker.running.as_ref().unwrap().broker.store.clone();
    let mut sent = 0usize;
    let mut send = |n: usize| {
        let mut out = Vec::new();
        for _ in 0..n {
            let value = format!("record-{sent}");
            sent += 1;
            out.push(
                p.send_result(FutureRecord::<(), _>::to("full").payload(&value))
                    .expect("queued"),
            );
        }
        out
    };
    for d in send(100) {
        d.await.expect("delivered").expect("acknowledged");
    }
    // The disk fills: the next writes fail, including the first probes.
    store.faults().fail_writes(4);
    let during = send(200);
    for d in during {
        d.await
            .expect("delivered")
            .expect("acknowledged once writes work again");
    }
    // An fsync fails: whether that commit reached the disk is unknown.
    store.faults().fail_syncs(1);
    for d in send(200) {
        d.await
            .expect("delivered")
            .expect("acknowledged after the failed fsync");
    }
    assert_eq!(store.faults().fail_writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(store.faults().fail_syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(store);
    broker.restart(&[]).await;
    let c = consumer(&broker, "full-check", &[]);
    assign_from_start(&c, "full", 1);
    let got = consume(&c, sent).await;
    let values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    let expected: Vec<String> = (0..sent).map(|i| format!("record-{i}")).collect();
    assert_eq!(values, expected, "every record once, in order");
    let offsets: Vec<i64> = got.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, (0..sent as i64).collect::<Vec<_>>());
    let running = broker.running.as_ref().unwrap();
    let report = courier::verify::verify_store(&running.broker.store, None, |_| {}, || {}).expect("ledger verifies");
    assert_eq!(report.0.iter().map(|p| p.records).sum::<i64>(), sent as i64);
}
