//! Connectors between organizations: a 200 MiB file placed in org A's
//! directory arrives in org B's bucket (a real S3-compatible server)
//! through a file source connector, Courier (off-chain) and an S3 sink
//! connector, each killed and restarted mid-transfer; nothing is lost or
//! duplicated, and the replicas of a third organization hold no byte of it.
//!
//! Four nodes in one PBFT cluster: node 0 runs for org-a, node 1 for
//! org-b, nodes 2 and 3 for org-c. Clients authenticate (SCRAM over
//! SASL_PLAINTEXT) as principals of org-a and org-b, so every node tells
//! each of them of its own organization's node.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::files_under;
use courier::{BrokerConfig, RunningBroker};
use courier_connector_plugins::connect::config::{Location, Properties};
use courier_connector_plugins::connect::place::Place;
use courier_connector_plugins::connect::Runner;
use courier_connector_plugins::storage::{S3Credentials, S3Settings};
use courier_connector_plugins::testing::{create_bucket, moto, pattern as content};
use courier_consensus::security::{ScramMechanism, SecurityCommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "transfers";
const BIG: usize = 200 << 20;
const WAIT: Duration = Duration::from_secs(240);

struct Cluster {
    configs: Vec<BrokerConfig>,
    nodes: Vec<RunningBroker>,
    _tmp: tempfile::TempDir,
}

fn organization(node: usize) -> &'static str {
    match node {
        0 => "org-a",
        1 => "org-b",
        _ => "org-c",
    }
}

impl Cluster {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = common::config(
            tmp.path(),
            &[
                "admin.listener=\"\"",
                "listeners=\"SASL_PLAINTEXT://127.0.0.1:0\"",
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
            ],
        );
        let mut configs = courier::dev::node_configs(&base, 4, 0).expect("node settings");
        for (i, c) in configs.iter_mut().enumerate() {
            c.organization = organization(i).into();
        }
        let nodes = courier::dev::start_cluster(configs.clone())
            .await
            .expect("cluster starts");
        let security = &nodes[0].broker.security;
        for (user, org) in [("alice", "org-a"), ("bob", "org-b")] {
            let credential = courier::auth::scram::new_credential(ScramMechanism::Sha512, &format!("{user}-pw"), 4096)
                .expect("credential");
            security
                .change(SecurityCommand::SetScram {
                    user: user.into(),
                    mechanism: ScramMechanism::Sha512,
                    credential: Some(credential),
                })
                .await
                .expect("password set");
            security
                .change(SecurityCommand::SetOrganization {
                    principal: format!("User:{user}"),
                    organization: Some(org.into()),
                })
                .await
                .expect("organization set");
        }
        Self {
            configs,
            nodes,
            _tmp: tmp,
        }
    }

    /// Settings of `user`'s clients through node `i`.
    fn client(&self, i: usize, user: &str) -> Properties {
        [
            ("bootstrap.servers", self.nodes[i].kafka_addr.to_string()),
            ("security.protocol", "SASL_PLAINTEXT".into()),
            ("sasl.mechanisms", "SCRAM-SHA-512".into()),
            ("sasl.username", user.into()),
            ("sasl.password", format!("{user}-pw")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates `topics` as alice, through node 0.
    async fn create_topics(&self, topics: &[NewTopic<'_>]) {
        let admin: AdminClient<DefaultClientContext> = self.client_config(0, "alice").create().expect("admin");
        for r in admin
            .create_topics(
                topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create_topics")
        {
            r.expect("topic created");
        }
    }

    fn client_config(&self, i: usize, user: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.client(i, user) {
            c.set(k, v);
        }
        c
    }
}

/// `p` with `settings` added.
fn with(mut p: Properties, settings: &[(&str, String)]) -> Properties {
    for (k, v) in settings {
        p.insert((*k).into(), v.clone());
    }
    p
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each record of `TOPIC`: (partition, offset, file name).
fn records(cluster: &Cluster) -> Vec<(i32, i64, String)> {
    records_of(cluster, TOPIC)
}

/// Each record of `topic` (two partitions): (partition, offset, file name).
fn records_of(cluster: &Cluster, topic: &str) -> Vec<(i32, i64, String)> {
    let c: BaseConsumer = cluster
        .client_config(0, "alice")
        .set("group.id", "transfer-auditors")
        .set("fetch.max.bytes", "300000000")
        .set("max.partition.fetch.bytes", "300000000")
        .set("receive.message.max.bytes", "400000000")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..2 {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .expect("watermarks");
        if high > 0 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT;
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} to its end");
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("record");
        let name = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "courier.file.name"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push((m.partition(), m.offset(), name));
        if m.offset() + 1 >= ends[&m.partition()] {
            ends.remove(&m.partition());
        }
    }
    out
}

/// A 200 MiB file and a dozen small ones go from org A's directory into
/// org B's bucket. The source is stopped mid-transfer (no chance to record
/// what it sent) and started again, then the sink likewise: the topic
/// holds each file once, the bucket holds each file once with its bytes,
/// the sink's commits (Courier's receipts) reach the end, org A's storage
/// holds the large file off-chain, and no disk of org B's or org C's
/// nodes holds a byte of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_cross_from_one_organizations_directory_to_anothers_bucket_exactly_once() {
    // RUST_LOG=info shows what the connectors do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let Some(s3) = moto() else { return };
    create_bucket(&s3.endpoint, "org-b");
    let cluster = Cluster::start().await;
    cluster
        .create_topics(&[
            NewTopic::new(TOPIC, 2, TopicReplication::Fixed(1))
                .set("courier.offchain.threshold.bytes", "1048576")
                .set("max.message.bytes", "2000000"),
            NewTopic::new("connect-offsets", 1, TopicReplication::Fixed(1)),
        ])
        .await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("org-a-outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("big.bin".into(), content(BIG, 1));
    for i in 0..12u64 {
        let len = [10_000, 1_500_000, 3_000_000][i as usize % 3];
        files.insert(format!("f{i:02}.dat"), content(len, 100 + i));
    }
    for (name, bytes) in &files {
        std::fs::write(outbox.join(name), bytes).expect("file written");
    }

    let source = with(
        cluster.client(0, "alice"),
        &[
            ("listeners", "http://127.0.0.1:0".to_owned()),
            ("name", "a-out".into()),
            ("connector.class", "courier.connect.FileSourceConnector".into()),
            ("topic", TOPIC.into()),
            ("input.path", outbox.display().to_string()),
            ("poll.interval.ms", "200".into()),
            ("reconcile.grace.ms", "15000".into()),
        ],
    );
    let credentials = tmp.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        "[org-b]\naws_access_key_id = AKIDORGB\naws_secret_access_key = org-b-secret\n",
    )
    .expect("credentials");
    let sink = with(
        cluster.client(1, "bob"),
        &[
            ("listeners", "http://127.0.0.1:0".to_owned()),
            ("name", "b-in".into()),
            ("connector.class", "S3Sink".into()),
            // A stopped sink's members expire soon, so the restarted one is
            // assigned the partitions without waiting out librdkafka's 45 s.
            ("consumer.session.timeout.ms", "6000".into()),
            ("topics", TOPIC.into()),
            ("s3.bucket.name", "org-b".into()),
            ("s3.prefix", "inbox".into()),
            ("store.url", s3.endpoint.clone()),
            ("s3.allow.http", "true".into()),
            ("aws.credentials.file", credentials.display().to_string()),
            ("aws.credentials.profile", "org-b".into()),
        ],
    );

    // The source, stopped while it sends the large file (the first by
    // name), then run again.
    let runner = Runner::start(&source).await.expect("source starts");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    runner.stop();
    let source_runner = Runner::start(&source).await.expect("source starts again");

    // The sink, stopped once it has written a few files, then run again.
    let runner = Runner::start(&sink).await.expect("sink starts");
    let metrics = runner.worker.metrics("b-in").expect("sink metrics");
    wait_for("the sink to write 3 files", async || metrics.records() >= 3).await;
    runner.stop();
    let sink_runner = Runner::start(&sink).await.expect("sink starts again");

    let bucket = Place::open(&Location::Bucket {
        settings: S3Settings {
            endpoint: Some(s3.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: "org-b".into(),
            path_style: true,
            allow_http: true,
            prefix: "inbox".into(),
            credentials: S3Credentials::File {
                path: credentials.clone(),
                profile: "org-b".into(),
            },
        },
    })
    .await
    .expect("bucket");
    wait_for("every file in org B's bucket", async || {
        bucket.list().await.is_ok_and(|l| l.len() >= files.len())
    })
    .await;
    // Settled: the sink commits once it has written; let its last commit land.
    let sink_metrics = sink_runner.worker.metrics("b-in").expect("sink metrics");
    wait_for("the sink to have nothing left", async || sink_metrics.lag() == 0).await;

    let listed = bucket.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        "each file once, nothing else"
    );
    for (name, bytes) in &files {
        let got = bucket.read(name, 0, u64::MAX, |_| {}).await.expect("object");
        assert!(
            got.len() == bytes.len() && sha256(&got) == sha256(bytes),
            "{name} arrived whole"
        );
    }

    // The topic holds each file exactly once.
    let recs = records(&cluster);
    let mut per_file: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, name) in &recs {
        *per_file.entry(name.as_str()).or_default() += 1;
    }
    assert!(
        per_file.len() == files.len() && per_file.values().all(|n| *n == 1),
        "each file sent once: {per_file:?}"
    );

    // The sink's group committed to the end of each partition: those
    // commits are the delivery receipts.
    let group: BaseConsumer = cluster
        .client_config(1, "bob")
        .set("group.id", "connect-b-in")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(TOPIC, p);
    }
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed");
    for p in 0..2 {
        let end = recs.iter().filter(|r| r.0 == p).map(|r| r.1 + 1).max().unwrap_or(0);
        let at = committed
            .find_partition(TOPIC, p)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        assert!(
            end == 0 || at == Offset::Offset(end),
            "partition {p}: committed {at:?}, end {end}"
        );
    }

    // Off-chain: org A's storage holds the large file, named by its digest;
    // no disk of org B's or org C's nodes holds a piece of it.
    let big = &files["big.bin"];
    let stored = cluster.configs[0]
        .log_dirs
        .join("offchain/org-a/objects")
        .join(&sha256(big)[..2])
        .join(sha256(big));
    assert_eq!(std::fs::metadata(&stored).map(|m| m.len()).ok(), Some(BIG as u64));
    let samples: Vec<&[u8]> = (1..8).map(|i| &big[i * BIG / 8..i * BIG / 8 + 64]).collect();
    for node in 1..4 {
        for f in files_under(&cluster.configs[node].log_dirs) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            for s in &samples {
                assert!(
                    memchr::memmem::find(&bytes, s).is_none(),
                    "node {node} ({}) holds bytes of the file in {}",
                    organization(node),
                    f.display()
                );
            }
        }
    }
    source_runner.stop();
    sink_runner.stop();
}

/// An S3 source sends each object under a bucket prefix once, and a
/// line-mode file source sends a growing text file line by line; a file
/// sink (one task per partition) writes the objects under their names and
/// rebuilds the text file byte for byte from its lines, also when the
/// file grew between polls and the sink was restarted in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_source_and_a_line_source_reach_a_file_sink() {
    let Some(s3) = moto() else { return };
    create_bucket(&s3.endpoint, "org-a");
    let cluster = Cluster::start().await;
    cluster
        .create_topics(&[
            NewTopic::new("objects", 2, TopicReplication::Fixed(1)),
            NewTopic::new("connect-offsets", 1, TopicReplication::Fixed(1)),
        ])
        .await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let credentials = tmp.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        "[org-a]\naws_access_key_id = AKIDORGA\naws_secret_access_key = org-a-secret\n",
    )
    .expect("credentials");
    let settings = S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        region: "us-east-1".into(),
        bucket: "org-a".into(),
        path_style: true,
        allow_http: true,
        prefix: "outgoing".into(),
        credentials: S3Credentials::File {
            path: credentials.clone(),
            profile: "org-a".into(),
        },
    };
    let bucket = Place::open(&Location::Bucket { settings }).await.expect("bucket");
    let objects: Vec<(String, Vec<u8>)> = (0..3u64)
        .map(|i| (format!("batch/{i}.csv"), content(5_000 + i as usize * 400_000, 40 + i)))
        .collect();
    for (name, bytes) in &objects {
        bucket.write(name, bytes, |_| {}).await.expect("object stored");
    }
    // Larger than the topic's max.message.bytes: refused, reported once.
    bucket
        .write("batch/too-large.bin", &content(1_200_000, 9), |_| {})
        .await
        .expect("object stored");
    let lines_dir = tmp.path().join("logs");
    std::fs::create_dir_all(&lines_dir).expect("dir");
    let log = lines_dir.join("app.log");
    let first: String = (0..500).map(|i| format!("event {i}\n")).collect();
    std::fs::write(&log, format!("{first}half a li")).expect("log");

    let listen = ("listeners", "http://127.0.0.1:0".to_owned());
    let s3_source = with(
        cluster.client(0, "alice"),
        &[
            listen.clone(),
            ("name", "a-bucket".into()),
            ("connector.class", "S3Source".into()),
            ("topic", "objects".into()),
            ("s3.bucket.name", "org-a".into()),
            ("s3.prefix", "outgoing".into()),
            ("store.url", s3.endpoint.clone()),
            ("s3.allow.http", "true".into()),
            ("aws.credentials.file", credentials.display().to_string()),
            ("aws.credentials.profile", "org-a".into()),
            ("poll.interval.ms", "200".into()),
        ],
    );
    let line_source = with(
        cluster.client(0, "alice"),
        &[
            listen.clone(),
            ("name", "a-log".into()),
            ("connector.class", "FileSource".into()),
            ("mode", "line".into()),
            ("topic", "objects".into()),
            ("input.path", lines_dir.display().to_string()),
            ("poll.interval.ms", "200".into()),
        ],
    );
    let inbox = tmp.path().join("inbox");
    let sink = with(
        cluster.client(1, "bob"),
        &[
            listen,
            ("name", "b-files".into()),
            ("connector.class", "FileSink".into()),
            ("consumer.session.timeout.ms", "6000".into()),
            ("tasks.max", "2".into()),
            ("topics", "objects".into()),
            ("output.path", inbox.display().to_string()),
        ],
    );
    let sources = [
        Runner::start(&s3_source).await.expect("S3 source"),
        Runner::start(&line_source).await.expect("line source"),
    ];
    let first_sink = Runner::start(&sink).await.expect("sink");
    let done = |path: PathBuf, want: Vec<u8>| async move { std::fs::read(&path).is_ok_and(|got| got == want) };
    wait_for("the first 500 lines", async || {
        done(inbox.join("app.log"), first.clone().into_bytes()).await
    })
    .await;
    first_sink.stop();
    // The file grows (the half line completes) while no sink runs.
    let second: String = (500..800).map(|i| format!("event {i}\n")).collect();
    let whole = format!("{first}half a line\n{second}");
    std::fs::write(&log, &whole).expect("log grows");
    let sink_runner = Runner::start(&sink).await.expect("sink again");
    wait_for("every line, rebuilt", async || {
        done(inbox.join("app.log"), whole.clone().into_bytes()).await
    })
    .await;
    for (name, bytes) in &objects {
        wait_for(name, async || done(inbox.join(name), bytes.clone()).await).await;
    }
    // Sent once each: as many records as objects and lines.
    let recs = records_of(&cluster, "objects");
    let lines = whole.lines().count();
    assert_eq!(recs.len(), objects.len() + lines, "each object and each line once");
    let metrics = sink_runner.worker.metrics("b-files").expect("metrics");
    assert_eq!(metrics.errors(), 0);
    assert!(!inbox.join("batch/too-large.bin").exists());
    let refused = sources[0].worker.metrics("a-bucket").expect("metrics");
    assert_eq!(
        refused.errors(),
        1,
        "the refused object is reported once, not sent again"
    );
    for r in sources {
        r.stop();
    }
    sink_runner.stop();
}
