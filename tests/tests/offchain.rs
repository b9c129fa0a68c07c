//! Off-chain values through unchanged Kafka clients (librdkafka): a topic
//! with `courier.offchain.threshold.bytes` keeps large values in the
//! producing organization's storage and only descriptors on the ledger;
//! a consumer on any node, of either organization, gets the values back
//! byte for byte, and never a value its storage altered.
//!
//! Four nodes in one PBFT cluster: nodes 0 and 1 run for org-a, 2 and 3
//! for org-b, each with its own filesystem storage under its data
//! directory.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::files_under;
use courier::{BrokerConfig, RunningBroker};
use courier_connector_plugins::testing::pattern as value;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(120);
const THRESHOLD: usize = 100;
/// The tests read process-wide metrics and move hundreds of MiB: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    configs: Vec<BrokerConfig>,
    nodes: Vec<RunningBroker>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = common::config(tmp.path(), &["admin.listener=\"\""]);
        let mut configs = courier::dev::node_configs(&base, 4, 0).expect("node settings");
        for (i, c) in configs.iter_mut().enumerate() {
            c.organization = if i < 2 { "org-a" } else { "org-b" }.into();
        }
        let nodes = courier::dev::start_cluster(configs.clone())
            .await
            .expect("cluster starts");
        Self {
            configs,
            nodes,
            _tmp: tmp,
        }
    }

    fn bootstrap(&self, i: usize) -> String {
        self.nodes[i].kafka_addr.to_string()
    }

    /// Where node `i` keeps its organization's objects.
    fn objects(&self, i: usize) -> PathBuf {
        self.configs[i]
            .log_dirs
            .join("offchain")
            .join(&self.configs[i].organization)
            .join("objects")
    }
}

async fn create_offchain_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let threshold = THRESHOLD.to_string();
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1))
        .set("courier.offchain.threshold.bytes", &threshold)
        .set("max.message.bytes", "1048588");
    for r in admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics")
    {
        r.expect("topic created");
    }
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.max.bytes", "300000000")
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer")
}

/// A consumer reading partition 0 of `topic` from `offset` through
/// `bootstrap` only (no group: librdkafka fetches from the node whose
/// metadata it has, and every node orders the partition).
fn reader(bootstrap: &str, topic: &str, offset: i64) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "offchain-readers")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "300000000")
        .set("max.partition.fetch.bytes", "300000000")
        .set("receive.message.max.bytes", "400000000")
        .set("fetch.error.backoff.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset)).unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// The next `n` records through `bootstrap`: (offset, key, value, first
/// header, timestamp).
type Read = (i64, Vec<u8>, Vec<u8>, Option<(String, Vec<u8>)>, Option<i64>);

async fn read(bootstrap: &str, topic: &str, from: i64, n: usize) -> Vec<Read> {
    let c = reader(bootstrap, topic, from);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(m)) => out.push((
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
                m.headers()
                    .and_then(|h| h.iter().next())
                    .map(|h: Header<'_, &[u8]>| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())),
                m.timestamp().to_millis(),
            )),
            Ok(Err(e)) => panic!("{bootstrap}: consumer error after {} records: {e}", out.len()),
            Err(_) => panic!("{bootstrap} served {} of {n} records", out.len()),
        }
    }
    out
}

/// 1 KiB and 1 MiB values (and a small one that stays inline) go out
/// through org-a's node and come back through every node: org-a's other
/// node and org-b's nodes fetch them from org-a's node, checked. No
/// ledger or PBFT log holds a byte of them, and only the producing node's
/// storage has them. A byte changed in that storage is reported to the
/// consumer and never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offchain_values_come_back_exactly_through_either_organization() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    create_offchain_topic(&cluster.bootstrap(0), "files").await;
    let values = [value(1024, 1), value(1 << 20, 2), b"inline".to_vec(), value(5000, 3)];
    let p = producer(&cluster.bootstrap(0));
    let mut acked = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let key = format!("file-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "name",
            value: Some(key.as_bytes()),
        });
        let record = FutureRecord::to("files")
            .key(&key)
            .payload(v)
            .headers(headers)
            .timestamp(1_700_000_000_000 + i as i64);
        let d = p
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
        acked.push((d.partition, d.offset));
    }
    drop(p);
    assert_eq!(acked.iter().map(|a| a.1).collect::<Vec<_>>(), [0, 1, 2, 3]);

    // Which node stored them: the one librdkafka produced to (each node
    // orders the partition, so each names itself its leader).
    let holders: Vec<usize> = (0..4)
        .filter(|i| !files_under(&cluster.objects(*i)).is_empty())
        .collect();
    assert_eq!(holders.len(), 1, "one node's storage holds the values: {holders:?}");
    let holder = holders[0];
    assert_eq!(
        files_under(&cluster.objects(holder)).len(),
        3,
        "three values above the threshold"
    );

    let offchain_bytes: usize = [&values[0], &values[1], &values[3]].iter().map(|v| v.len()).sum();
    for node in 0..4 {
        let fetched = fetched_bytes();
        let got = read(&cluster.bootstrap(node), "files", 0, values.len()).await;
        let moved = fetched_bytes() - fetched;
        if node == holder {
            assert_eq!(moved, 0, "node {node} serves its own storage");
        } else {
            assert!(
                moved >= offchain_bytes as u64,
                "node {node} fetched the values from node {holder}: {moved} bytes"
            );
        }
        for (i, (offset, key, v, header, ts)) in got.iter().enumerate() {
            assert_eq!(*offset, i as i64);
            assert_eq!(key, format!("file-{i}").as_bytes(), "node {node}: key");
            assert!(
                v == &values[i],
                "node {node}: value {i} comes back byte for byte ({} bytes)",
                v.len()
            );
            assert_eq!(
                header.as_ref().map(|(k, v)| (k.as_str(), v.as_slice())),
                Some(("name", format!("file-{i}").as_bytes())),
                "node {node}: the producer's headers only"
            );
            assert_eq!(*ts, Some(1_700_000_000_000 + i as i64), "node {node}: timestamp");
        }
    }

    // No ledger, PBFT log or Raft file holds a byte of an off-chain value.
    for (i, c) in cluster.configs.iter().enumerate() {
        for f in files_under(&c.log_dirs) {
            if f.starts_with(c.log_dirs.join("offchain")) {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            for v in [&values[0], &values[1], &values[3]] {
                assert!(
                    memmem(&bytes, &v[200..264]).is_none(),
                    "node {i}'s {} holds off-chain bytes",
                    f.display()
                );
            }
        }
    }

    // A byte changed in the stored 1 MiB value: never served, reported.
    let digest = ring::digest::digest(&ring::digest::SHA256, &values[1]);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let path = cluster.objects(holder).join(&hex[..2]).join(&hex);
    let mut stored = std::fs::read(&path).expect("stored object");
    stored[12345] ^= 0x40;
    std::fs::write(&path, &stored).expect("tampered");
    let other_org = if holder < 2 { 2 } else { 0 };
    for node in [holder, other_org] {
        let c = reader(&cluster.bootstrap(node), "files", 1);
        let err = match tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
            Ok(Ok(m)) => panic!(
                "node {node} served offset {} ({} bytes) from an altered object",
                m.offset(),
                m.payload().map_or(0, <[u8]>::len)
            ),
            Ok(Err(e)) => e,
            Err(_) => panic!("node {node}: the consumer was told nothing"),
        };
        assert!(
            matches!(
                err,
                rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::InvalidMessage)
            ),
            "node {node}: {err:?}"
        );
    }
    // Each node that refused it recorded the incident on the ledger: who
    // offered what (the object's digest, the node that served it, the
    // digest of what it served).
    let mut tampered_hex = String::new();
    for b in ring::digest::digest(&ring::digest::SHA256, &stored).as_ref() {
        tampered_hex.push_str(&format!("{b:02x}"));
    }
    let deadline = Instant::now() + WAIT;
    while cluster.nodes[0]
        .broker
        .topics
        .get(courier::offchain::INCIDENTS_TOPIC)
        .is_none()
    {
        assert!(Instant::now() < deadline, "no incident topic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let incidents = read(&cluster.bootstrap(0), courier::offchain::INCIDENTS_TOPIC, 0, 2).await;
    let mut reporters = Vec::new();
    for (_, key, v, _, _) in &incidents {
        let i: serde_json::Value = serde_json::from_slice(v).expect("an incident is JSON");
        assert_eq!(key.as_slice(), b"files-0@1", "{i}");
        assert_eq!(i["reason"], "altered", "{i}");
        assert_eq!(
            (i["topic"].as_str(), i["offset"].as_i64()),
            (Some("files"), Some(1)),
            "{i}"
        );
        assert_eq!(
            i["sha256"].as_str(),
            Some(hex.as_str()),
            "the digest on the ledger: {i}"
        );
        assert_eq!(
            i["served_sha256"].as_str(),
            Some(tampered_hex.as_str()),
            "what was offered: {i}"
        );
        assert_eq!(
            i["served_by"].as_i64(),
            Some(cluster.configs[holder].node_id as i64),
            "who offered it: {i}"
        );
        reporters.push(i["reported_by"].as_i64().expect("reporter"));
    }
    reporters.sort_unstable();
    let mut expected = vec![
        cluster.configs[holder].node_id as i64,
        cluster.configs[other_org].node_id as i64,
    ];
    expected.sort_unstable();
    assert_eq!(reporters, expected, "each refusing node recorded it once");

    // Put back, it is served again.
    stored[12345] ^= 0x40;
    std::fs::write(&path, &stored).expect("restored");
    let got = read(&cluster.bootstrap(other_org), "files", 1, 1).await;
    assert!(got[0].2 == values[1]);

    // Storage that fails: the produce gets a retriable KAFKA_STORAGE_ERROR
    // and nothing reaches the ledger; once it works again, so does the produce.
    let tmp_dirs: Vec<PathBuf> = (0..4).map(|i| cluster.objects(i).with_file_name("tmp")).collect();
    for d in &tmp_dirs {
        std::fs::remove_dir_all(d).expect("tmp dir");
        std::fs::write(d, b"not a directory").expect("blocked");
    }
    let once: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap(0))
        .set("message.send.max.retries", "0")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let big = value(4096, 4);
    let err = once
        .send(
            FutureRecord::to("files").key("k").payload(&big),
            Duration::from_secs(30),
        )
        .await
        .map(|d| d.offset)
        .map_err(|(e, _)| e);
    assert!(
        matches!(
            err,
            Err(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::KafkaStorageError
            ))
        ),
        "{err:?}"
    );
    for n in &cluster.nodes {
        let pk = n.broker.topics.get("files").expect("topic").partition_key(0);
        assert_eq!(n.broker.topics.state(&pk).next_offset, 4, "nothing reached the ledger");
    }
    for d in &tmp_dirs {
        std::fs::remove_file(d).expect("unblocked");
        std::fs::create_dir(d).expect("tmp dir back");
    }
    let d = once
        .send(
            FutureRecord::to("files").key("k").payload(&big),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("stored once the storage works");
    assert_eq!(d.offset, 4);
    for n in cluster.nodes {
        n.stop().await;
    }
}

/// A 256 MiB value through librdkafka with only its size settings raised,
/// produced through org-a's node and consumed through org-b's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_value_travels_end_to_end() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    create_offchain_topic(&cluster.bootstrap(0), "large").await;
    let big = value(256 << 20, 9);
    let started = Instant::now();
    let p = producer(&cluster.bootstrap(0));
    let offset = p
        .send(
            FutureRecord::to("large").key("big").payload(&big),
            Duration::from_secs(120),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged")
        .offset;
    drop(p);
    let produced = started.elapsed();
    let holder = (0..4)
        .find(|i| !files_under(&cluster.objects(*i)).is_empty())
        .expect("a node stored it");
    let consumer_node = if holder < 2 { 3 } else { 1 };
    let started = Instant::now();
    let got = read(&cluster.bootstrap(consumer_node), "large", offset, 1).await;
    eprintln!(
        "256 MiB: produced in {produced:?} (stored by node {holder}), consumed through node {consumer_node} in {:?}",
        started.elapsed()
    );
    assert_eq!(got[0].2.len(), big.len());
    assert!(got[0].2 == big, "the value comes back byte for byte");
    for n in cluster.nodes {
        n.stop().await;
    }
}

/// One raw Fetch of partition 0 of `topic` from `offset` through `addr`:
/// the partition's error code and its records.
async fn fetch_once(addr: std::net::SocketAddr, topic: &str, offset: i64) -> (i16, bytes::Bytes) {
    use kafka_protocol::messages::{
        fetch_request, ApiKey, BrokerId, FetchRequest, RequestKind, ResponseKind, TopicName,
    };
    let mut wire = common::Wire::connect(addr).await;
    let req = RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_string(
                    topic.to_owned(),
                )))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(8 << 20)])]),
    );
    let ResponseKind::Fetch(r) = wire.call(ApiKey::Fetch, 12, &req).await else {
        panic!("not a Fetch response")
    };
    let p = &r.responses[0].partitions[0];
    (p.error_code, p.records.clone().unwrap_or_default())
}

/// A value is there while a node of its organization holds it: with the
/// node that stored it down, a consumer of the other organization gets a
/// retriable KAFKA_STORAGE_ERROR (never other bytes), and once the node is
/// back, the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_is_unavailable_while_its_node_is_down_and_served_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    create_offchain_topic(&cluster.bootstrap(0), "down").await;
    let v = value(300_000, 21);
    let p = producer(&cluster.bootstrap(0));
    p.send(FutureRecord::to("down").key("k").payload(&v), Duration::from_secs(60))
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
    drop(p);
    let holder = (0..4)
        .find(|i| !files_under(&cluster.objects(*i)).is_empty())
        .expect("a node stored it");
    let reader = cluster.nodes[if holder < 2 { 2 } else { 0 }].kafka_addr;
    let (code, records) = fetch_once(reader, "down", 0).await;
    assert!(
        code == 0 && memchr::memmem::find(&records, &v[..1000]).is_some(),
        "served while up: {code}"
    );

    cluster.nodes.remove(holder).stop().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, records) = fetch_once(reader, "down", 0).await;
        assert!(memchr::memmem::find(&records, &v[..1000]).is_none() || code == 0);
        if code == kafka_protocol::ResponseError::KafkaStorageError.code() {
            assert!(records.is_empty(), "nothing is served with the error");
            break;
        }
        assert!(Instant::now() < deadline, "still served ({code}) with its node down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let back = courier::start(cluster.configs[holder].clone())
        .await
        .expect("node restarts");
    cluster.nodes.push(back);
    loop {
        let (code, records) = fetch_once(reader, "down", 0).await;
        if code == 0 && memchr::memmem::find(&records, &v).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "not served ({code}) after its node returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in cluster.nodes {
        n.stop().await;
    }
}

/// Off-chain bytes nodes fetched from other nodes so far (all nodes of
/// the test share the process's metrics).
fn fetched_bytes() -> u64 {
    courier::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix("courier_offchain_bytes_fetched_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn memmem(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
