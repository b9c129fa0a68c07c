//! Four- and seven-replica clusters in one process, driven by librdkafka: every
//! partition ordered by PBFT, every node serving its own copy of the ledger.
//! Replicas are stopped and restarted (gracefully here; `multi_process.rs`
//! kills processes with SIGKILL) while clients keep working, and at the end
//! every node's ledger verifies, certificates included, and holds the same
//! chain.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use courier::replication::Replicated;
use courier::sequencer::Sequencer;
use courier::verify::{locate_data_dir, verify_data_dir, verify_global_data_dir, KeySource};
use courier::{BrokerConfig, RunningBroker};
use courier_consensus::ledger::{Durability, LedgerStore};
use courier_consensus::raft::global::Query;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    configs: Vec<BrokerConfig>,
    nodes: Vec<Option<RunningBroker>>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        Self::start_clusters(n, 0).await
    }

    /// `n` nodes forming PBFT clusters of `cluster_size` (0: one cluster).
    async fn start_clusters(n: usize, cluster_size: usize) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Short timeouts, so a lost primary is replaced within seconds.
        let base = common::config(
            tmp.path(),
            &[
                "pbft.view.change.timeout.ms=400",
                "pbft.retransmit.ms=100",
                "admin.listener=\"\"",
            ],
        );
        let configs = if cluster_size == 0 {
            courier::dev::node_configs(&base, n, 0)
        } else {
            courier::dev::multi_cluster_configs(&base, n, cluster_size, 0)
        }
        .expect("node settings");
        let nodes = courier::dev::start_cluster(configs.clone())
            .await
            .expect("cluster starts")
            .into_iter()
            .map(Some)
            .collect();
        Self {
            configs,
            nodes,
            _tmp: tmp,
        }
    }

    fn replicated(&self, i: usize) -> &Replicated {
        match &self.nodes[i].as_ref().expect("node running").broker.sequencer {
            Sequencer::Replicated(r) => r,
            Sequencer::Local(_) => panic!("node {i} is not a replica"),
        }
    }

    /// Whether every running node's Raft state holds, for every partition
    /// of `topic`, every block its cluster's running members certified.
    fn global_caught_up(&self, topic: &str) -> bool {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect();
        let Some(record) = self.nodes[running[0]]
            .as_ref()
            .and_then(|n| n.broker.topics.all().into_iter().find(|t| t.name == topic))
        else {
            return false;
        };
        for p in 0..record.partitions {
            let pk = record.partition_key(p);
            let certified = running
                .iter()
                .filter(|i| self.nodes[**i].as_ref().is_some_and(|n| n.broker.topics.serves(&pk)))
                .map(|i| {
                    self.nodes[*i]
                        .as_ref()
                        .map_or(0, |n| n.broker.topics.state(&pk).next_height)
                })
                .max()
                .unwrap_or(0);
            for i in &running {
                let global = self
                    .replicated(*i)
                    .meta
                    .state()
                    .global
                    .get(&pk)
                    .map_or(0, |h| h.next_height);
                if global != certified {
                    return false;
                }
            }
        }
        true
    }

    /// Waits (bounded) until every running member of each partition's
    /// cluster has certified the same height: a replica restarted late
    /// catches up by state transfer, which takes its time on a loaded
    /// machine.
    async fn wait_replicas_agree(&self, topic: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let heights: Vec<BTreeSet<u64>> = {
                let any = self.nodes.iter().flatten().next().expect("a node runs");
                let record = any
                    .broker
                    .topics
                    .all()
                    .into_iter()
                    .find(|t| t.name == topic)
                    .expect("topic");
                (0..record.partitions)
                    .map(|p| {
                        let pk = record.partition_key(p);
                        self.nodes
                            .iter()
                            .flatten()
                            .filter(|n| n.broker.topics.serves(&pk))
                            .map(|n| n.broker.topics.state(&pk).next_height)
                            .collect()
                    })
                    .collect()
            };
            if heights.iter().all(|h| h.len() == 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas of {topic} did not converge: {heights:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) for [`Cluster::global_caught_up`].
    async fn wait_global(&self, topic: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.global_caught_up(topic) {
            assert!(
                Instant::now() < deadline,
                "the global ledger did not catch up with {topic}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The global ledger's end offset of each partition, as node `i` has it.
    fn global_ends(&self, i: usize, topic: &str) -> BTreeMap<i32, i64> {
        let state = self.replicated(i).meta.state();
        let Some(t) = state.topics.get(topic) else {
            return BTreeMap::new();
        };
        (0..t.record.partitions)
            .map(|p| {
                let pk = t.record.partition_key(p);
                (p, state.global.get(&pk).map_or(0, |h| h.next_offset))
            })
            .collect()
    }

    /// The node leading Raft, as node `i` knows it.
    fn raft_leader(&self, i: usize) -> Option<usize> {
        self.replicated(i).meta.leader().map(|l| l as usize)
    }

    /// Cuts (or restores) the network between two groups of nodes.
    fn cut(&self, a: &[usize], b: &[usize], cut: bool) {
        for &x in a {
            for &y in b {
                self.replicated(x).set_cut(y as u8, cut);
                self.replicated(y).set_cut(x as u8, cut);
            }
        }
    }

    fn bootstrap(&self, i: usize) -> String {
        self.nodes[i].as_ref().expect("node running").kafka_addr.to_string()
    }

    async fn stop_node(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.stop().await;
        }
    }

    async fn start_node(&mut self, i: usize) {
        let n = courier::start(self.configs[i].clone()).await.expect("node restarts");
        self.nodes[i] = Some(n);
    }

    /// Stops every node and verifies each one's ledger; returns, per node,
    /// each partition's (blocks, records, receipts, last block hash).
    async fn stop_and_verify(&mut self) -> Vec<BTreeMap<String, (u64, i64, u64, String)>> {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
        let mut out = Vec::new();
        for c in &self.configs {
            let (partitions, source) =
                verify_data_dir(&c.log_dirs, None, |_| {}, || {}).expect("every node's ledger is sound");
            assert_eq!(source, KeySource::Recorded(self.configs.len()));
            let store = LedgerStore::open(&c.log_dirs.join(courier::LEDGER_FILE), Durability::None).unwrap();
            let heads: BTreeMap<_, _> = store
                .partitions()
                .unwrap()
                .into_iter()
                .map(|(pk, s)| ((pk.topic_id, pk.partition), s.last_hash.to_hex()))
                .collect();
            let topics = store.topics().unwrap();
            let mut summary = BTreeMap::new();
            for p in partitions {
                assert!(p.certified > 0, "{}-{} holds certificates", p.topic, p.partition);
                let id = topics.iter().find(|t| t.name == p.topic).map_or([0; 16], |t| t.id);
                let head = heads.get(&(id, p.partition)).cloned().unwrap_or_default();
                summary.insert(
                    format!("{}-{}", p.topic, p.partition),
                    (p.blocks, p.records, p.receipts, head),
                );
            }
            out.push(summary);
        }
        out
    }
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

fn consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics")
    {
        r.expect("topic created");
    }
}

/// Produces `values` with keys `k<i>` and returns each one's (partition, offset).
async fn produce(bootstrap: &str, topic: &str, values: std::ops::Range<usize>) -> Vec<(i32, i64)> {
    let p = producer(bootstrap);
    let mut sends = Vec::new();
    for i in values {
        let key = format!("k{}", i % 17);
        let value = format!("v{i}");
        sends.push(
            p.send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .expect("queued"),
        );
    }
    let mut out = Vec::new();
    for s in sends {
        let d = s.await.expect("delivered").expect("acknowledged");
        out.push((d.partition, d.offset));
    }
    out
}

/// Reads every partition of `topic` from the start until `n` records
/// arrived; returns each partition's values in offset order.
async fn read_all(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> BTreeMap<i32, Vec<(i64, String)>> {
    let c = consumer(bootstrap, &format!("reader-{}", rand_suffix()));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Ok(m)) => {
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.entry(m.partition()).or_default().push((m.offset(), v));
                got += 1;
            }
            // librdkafka reports a refused connection (to a node stopped
            // moments ago: it stays listed, and may stay the group's
            // coordinator, until its session timeout runs out, as a Kafka
            // broker does) and reconnects by itself; every record must
            // still arrive before the deadline.
            Ok(Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
            ))) => eprintln!("{bootstrap}: a broker connection dropped; the consumer reconnects"),
            Ok(Err(e)) => panic!("consumer error after {got} records: {e}"),
            Err(_) => panic!("{bootstrap} served {got} of {n} records of {topic}"),
        }
    }
    out
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Every value `v0..v{n}` appears exactly once, and per partition in the
/// order it was produced.
fn assert_exactly_once_in_order(read: &BTreeMap<i32, Vec<(i64, String)>>, n: usize) {
    let mut seen = vec![false; n];
    for records in read.values() {
        let mut last = None;
        for (offset, v) in records {
            let i: usize = v[1..].parse().expect("value v<i>");
            assert!(!seen[i], "{v} read twice");
            seen[i] = true;
            assert!(last < Some((*offset, i)), "partition order");
            last = Some((*offset, i));
        }
    }
    assert!(seen.iter().all(|s| *s), "every acknowledged record is there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_same_certified_ledger() {
    let mut cluster = Cluster::start(4).await;
    create_topic(&cluster.bootstrap(1), "orders", 3).await;
    let acked = produce(&cluster.bootstrap(2), "orders", 0..300).await;
    assert_eq!(acked.len(), 300);
    for node in [0, 3] {
        let read = read_all(&cluster.bootstrap(node), "orders", 3, 300).await;
        assert_exactly_once_in_order(&read, 300);
        // What each producer was told is where the record is.
        for (i, (p, o)) in acked.iter().enumerate() {
            assert!(read[p].contains(&(*o, format!("v{i}"))), "v{i} at {p}/{o}");
        }
    }
    // A consumer group commits through node 0: a receipt on the ledger.
    let c = consumer(&cluster.bootstrap(0), "billing");
    c.subscribe(&["orders"]).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < 300 && Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            got += 1;
        }
    }
    assert_eq!(got, 300);
    c.commit_consumer_state(CommitMode::Sync).expect("offsets committed");
    drop(c);
    let summaries = cluster.stop_and_verify().await;
    let receipts: u64 = summaries[0].values().map(|s| s.2).sum();
    assert!(receipts >= 3, "the commit left receipts on every partition: {receipts}");
    for s in &summaries[1..] {
        assert_eq!(s, &summaries[0], "every replica holds the same chains");
    }
}

/// Eight nodes, one Raft group, two PBFT clusters of four: a topic's
/// partitions alternate between the clusters, clients reach every
/// partition from any node, a consumer group's commits land on each
/// partition's own cluster, and each node holds only its cluster's ledgers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_of_four_share_a_topic() {
    let mut cluster = Cluster::start_clusters(8, 4).await;
    create_topic(&cluster.bootstrap(2), "spread", 8).await;
    // Metadata from a node of the other cluster: each partition is led by
    // a member of its own cluster, and lists that cluster as replicas.
    let probe = consumer(&cluster.bootstrap(6), "probe");
    let md = probe
        .fetch_metadata(Some("spread"), Duration::from_secs(10))
        .expect("metadata");
    let topic = &md.topics()[0];
    assert_eq!(topic.partitions().len(), 8);
    // Partitions alternate between the two clusters (which one got id 0
    // depends on which formed first).
    let even: Vec<i32> = topic.partitions()[0].replicas().to_vec();
    let odd: Vec<i32> = topic.partitions()[1].replicas().to_vec();
    let groups = [vec![0, 1, 2, 3], vec![4, 5, 6, 7]];
    assert!(
        groups.contains(&even) && groups.contains(&odd) && even != odd,
        "{even:?} {odd:?}"
    );
    for p in topic.partitions() {
        let members = if p.id() % 2 == 0 { &even } else { &odd };
        assert_eq!(p.replicas(), &members[..], "partition {}", p.id());
        assert!(
            members.contains(&p.leader()),
            "partition {} led by {}",
            p.id(),
            p.leader()
        );
    }
    // The brokers listed are the ones clients are sent to: the answering
    // node and every leader it names.
    let listed: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    for p in topic.partitions() {
        assert!(
            listed.contains(&p.leader()),
            "leader {} is listed: {listed:?}",
            p.leader()
        );
    }
    drop(probe);
    // Produce through a node of cluster 1, one record per partition first.
    let p = producer(&cluster.bootstrap(6));
    let mut acked = Vec::new();
    for i in 0..408usize {
        let value = format!("v{i}");
        let key = format!("k{}", i % 17);
        let mut record = FutureRecord::to("spread").key(&key).payload(&value);
        if i < 8 {
            record = record.partition(i as i32);
        }
        acked.push(p.send_result(record).expect("queued"));
    }
    let mut acked_at = Vec::new();
    for a in acked {
        let d = a.await.expect("delivered").expect("acknowledged");
        acked_at.push((d.partition, d.offset));
    }
    let read = read_all(&cluster.bootstrap(1), "spread", 8, 408).await;
    assert_exactly_once_in_order(&read, 408);
    for (i, (p, o)) in acked_at.iter().enumerate() {
        assert!(read[p].contains(&(*o, format!("v{i}"))), "v{i} at {p}/{o}");
    }
    // A group coordinated by node 5 commits every partition: half of the
    // commits are ordered by the other cluster.
    let c = consumer(&cluster.bootstrap(5), "billing");
    c.subscribe(&["spread"]).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < 408 && Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            got += 1;
        }
    }
    assert_eq!(got, 408);
    c.commit_consumer_state(CommitMode::Sync).expect("offsets committed");
    drop(c);
    // Another node reads the group's offsets back: from its own cluster's
    // ledger and, forwarded, from the other's.
    let reader = consumer(&cluster.bootstrap(0), "billing");
    let mut tpl = TopicPartitionList::new();
    for p in 0..8 {
        tpl.add_partition("spread", p);
    }
    let committed = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("offsets fetched back");
    for p in 0..8 {
        let end = read[&p].last().map_or(0, |(o, _)| o + 1);
        let at = committed.find_partition("spread", p).map(|e| e.offset());
        assert_eq!(at, Some(Offset::Offset(end)), "partition {p}'s committed offset");
    }
    drop(reader);
    // The global ledger: the Raft leader replicates every certified block
    // of both clusters into every node's Raft state.
    cluster.wait_global("spread").await;
    let summaries = cluster.stop_and_verify().await;
    // Every node verifies the same global ledger, compares it with the
    // partition ledgers it holds, and finds a key's messages (with their
    // receipts) from it alone.
    let expected_k3: BTreeSet<(i32, i64)> = read
        .iter()
        .flat_map(|(p, records)| {
            records
                .iter()
                .filter(|(_, v)| v[1..].parse::<usize>().is_ok_and(|i| i % 17 == 3))
                .map(move |(o, _)| (*p, *o))
        })
        .collect();
    assert_eq!(expected_k3.len(), 24);
    let mut digests = BTreeSet::new();
    for c in &cluster.configs {
        let check = verify_global_data_dir(&c.log_dirs).expect("the global ledger verifies");
        assert_eq!(check.report.partitions, 8);
        assert_eq!(check.report.messages, 408);
        assert!(check.report.receipts >= 8, "{:?}", check.report);
        assert!(check.compared_blocks > 0, "node compares its own partitions");
        digests.insert(check.report.digest);
        let found = locate_data_dir(&c.log_dirs, "spread", &Query::Key(b"k3".to_vec())).unwrap();
        let at: BTreeSet<(i32, i64)> = found.iter().map(|l| (l.partition, l.offset)).collect();
        assert_eq!(at, expected_k3, "{}", c.log_dirs.display());
        for l in &found {
            assert!(
                l.receipts
                    .iter()
                    .any(|r| r.group == "billing" && r.committed_offset > l.offset),
                "{}-{} has a delivery receipt",
                l.partition,
                l.offset
            );
        }
    }
    assert_eq!(digests.len(), 1, "every node holds the same global ledger");
    for (node, s) in summaries.iter().enumerate() {
        let serves_even = even.contains(&(node as i32));
        let mine: Vec<i32> = (0..8).filter(|p| (p % 2 == 0) == serves_even).collect();
        let held: Vec<String> = s.keys().cloned().collect();
        let want: Vec<String> = mine.iter().map(|p| format!("spread-{p}")).collect();
        assert_eq!(held, want, "node {node} holds exactly its cluster's partitions");
        let receipts: u64 = s.values().map(|v| v.2).sum();
        assert!(receipts >= 4, "node {node}: the group's commits are receipts here");
        let first = if node < 4 { 0 } else { 4 };
        assert_eq!(s, &summaries[first], "node {node} holds its cluster's chains");
    }
}

/// Produces `n` records to one partition through `bootstrap`; returns the
/// partition's end offset after them.
async fn produce_to(bootstrap: &str, topic: &str, partition: i32, n: usize) -> i64 {
    let p = producer(bootstrap);
    let mut sends = Vec::new();
    for i in 0..n {
        let value = format!("p{partition}-{i}");
        sends.push(
            p.send_result(FutureRecord::<(), _>::to(topic).partition(partition).payload(&value))
                .expect("queued"),
        );
    }
    let mut end = 0;
    for s in sends {
        let d = s.await.expect("delivered").expect("acknowledged");
        end = end.max(d.offset + 1);
    }
    end
}

/// The global ledger under faults: while the two clusters of an 8-node
/// deployment are cut apart (no Raft majority on either side) both keep
/// ordering, and the global ledger catches up once the cut heals; a
/// cluster whose members all offer blocks with forged certificates gets
/// nothing into it and is reported, until one honest member serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_ledger_catches_up_after_a_cut_and_refuses_forged_certificates() {
    let mut cluster = Cluster::start_clusters(8, 4).await;
    create_topic(&cluster.bootstrap(0), "audit", 4).await;
    let state = cluster.replicated(0).meta.state();
    let placement = state.topics["audit"].placement.clone();
    let members = |c: u32| -> Vec<usize> { state.clusters[&c].members.iter().map(|m| *m as usize).collect() };
    let (a, b) = (members(0), members(1));
    // Each partition is produced to through a member of its own cluster,
    // which keeps working while the other side is unreachable.
    let through = |p: usize| if placement[p] == 0 { a[1] } else { b[1] };
    let mut ends = BTreeMap::new();
    for p in 0..4 {
        ends.insert(
            p as i32,
            produce_to(&cluster.bootstrap(through(p)), "audit", p as i32, 20).await,
        );
    }
    cluster.wait_global("audit").await;

    // Cut the clusters apart: Raft has no majority (4 of 8) on either side.
    cluster.cut(&a, &b, true);
    for p in 0..4 {
        ends.insert(
            p as i32,
            produce_to(&cluster.bootstrap(through(p)), "audit", p as i32, 150).await,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..8 {
        let global = cluster.global_ends(i, "audit");
        assert!(
            ends.iter().all(|(p, end)| global[p] < *end),
            "node {i}: nothing produced during the cut reached the global ledger: {global:?} vs {ends:?}"
        );
    }
    cluster.cut(&a, &b, false);
    cluster.wait_global("audit").await;
    for i in 0..8 {
        assert_eq!(cluster.global_ends(i, "audit"), ends, "node {i} caught up");
    }

    // Every member of the cluster the Raft leader is not in serves forged
    // certificates: the leader refuses their blocks and reports them.
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some(l) = (0..8).find_map(|i| cluster.raft_leader(i)) {
            if cluster.raft_leader(l) == Some(l) {
                break l;
            }
        }
        assert!(Instant::now() < deadline, "a Raft leader is elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let byzantine = if a.contains(&leader) { &b } else { &a };
    for &n in byzantine {
        cluster.replicated(n).set_byzantine(true);
    }
    let forged_cluster = if byzantine == &a { 0 } else { 1 };
    let forged: Vec<usize> = (0..4).filter(|p| placement[*p] == forged_cluster).collect();
    assert!(!forged.is_empty());
    for &p in &forged {
        ends.insert(
            p as i32,
            produce_to(&cluster.bootstrap(byzantine[2]), "audit", p as i32, 30).await,
        );
    }
    let deadline = Instant::now() + WAIT;
    let rejections = loop {
        let status = cluster.replicated(leader).global.status();
        if status.rejected_total >= forged.len() as u64 {
            break status.rejections;
        }
        assert!(Instant::now() < deadline, "the leader reports the forged certificates");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for r in &rejections {
        assert_eq!(r.kind, "certificate", "{r:?}");
        assert!(byzantine.contains(&(r.node as usize)), "{r:?} names a forging member");
        assert!(forged.contains(&(r.partition as usize)), "{r:?}");
    }
    assert_eq!(
        cluster.raft_leader(leader),
        Some(leader),
        "the leader did not change meanwhile"
    );
    let global = cluster.global_ends(leader, "audit");
    for &p in &forged {
        assert!(
            global[&(p as i32)] < ends[&(p as i32)],
            "no forged block reached the global ledger"
        );
    }
    // One honest member is enough.
    cluster.replicated(byzantine[3]).set_byzantine(false);
    cluster.wait_global("audit").await;
    for i in 0..8 {
        assert_eq!(cluster.global_ends(i, "audit"), ends, "node {i}");
    }
    cluster.stop_and_verify().await;
    let mut digests = BTreeSet::new();
    for c in &cluster.configs {
        let check = verify_global_data_dir(&c.log_dirs).expect("the global ledger verifies");
        assert_eq!(check.report.messages as i64, ends.values().sum::<i64>());
        digests.insert(check.report.digest);
    }
    assert_eq!(digests.len(), 1, "every node holds the same global ledger");
}

/// A group is coordinated by the one node FindCoordinator names: the
/// others answer its membership requests and commits with NOT_COORDINATOR
/// (the client then asks FindCoordinator again), so two nodes never run
/// one group's rebalances side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_coordinator_takes_a_groups_requests() {
    use common::Wire;
    use kafka_protocol::messages::{
        ApiKey, FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest, RequestKind, ResponseKind,
    };
    use kafka_protocol::protocol::StrBytes;
    let s = |v: &str| StrBytes::from_string(v.to_owned());
    let cluster = Cluster::start(4).await;
    let addr = |i: usize| cluster.nodes[i].as_ref().expect("running").kafka_addr;
    // Once the nodes are registered and see each other, every node names
    // the same coordinator.
    let deadline = Instant::now() + WAIT;
    let coordinators = loop {
        let mut coordinators = BTreeSet::new();
        for i in 0..4 {
            let mut w = Wire::connect(addr(i)).await;
            let find = FindCoordinatorRequest::default().with_key(s("audit-readers"));
            let ResponseKind::FindCoordinator(r) = w
                .call(ApiKey::FindCoordinator, 3, &RequestKind::FindCoordinator(find))
                .await
            else {
                panic!("not a FindCoordinator answer");
            };
            assert_eq!(r.error_code, 0);
            coordinators.insert(r.node_id.0);
        }
        if coordinators.len() == 1 {
            break coordinators;
        }
        assert!(
            Instant::now() < deadline,
            "nodes name different coordinators: {coordinators:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let coordinator = *coordinators.iter().next().unwrap() as usize;
    let join = RequestKind::JoinGroup(
        JoinGroupRequest::default()
            .with_group_id(s("audit-readers").into())
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(bytes::Bytes::new()),
            ]),
    );
    let heartbeat = RequestKind::Heartbeat(
        HeartbeatRequest::default()
            .with_group_id(s("audit-readers").into())
            .with_member_id(s("m")),
    );
    for i in 0..4 {
        let mut w = Wire::connect(addr(i)).await;
        let ResponseKind::JoinGroup(j) = w.call(ApiKey::JoinGroup, 5, &join).await else {
            panic!("not a JoinGroup answer");
        };
        let ResponseKind::Heartbeat(h) = w.call(ApiKey::Heartbeat, 3, &heartbeat).await else {
            panic!("not a Heartbeat answer");
        };
        let not_coordinator = kafka_protocol::ResponseError::NotCoordinator.code();
        if i == coordinator {
            // v5 asks a new member to come back with the id it is given.
            assert_eq!(j.error_code, kafka_protocol::ResponseError::MemberIdRequired.code());
            assert_ne!(h.error_code, not_coordinator);
        } else {
            assert_eq!(
                (j.error_code, h.error_code),
                (not_coordinator, not_coordinator),
                "node {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backup_misses_nothing_and_catches_up() {
    let mut cluster = Cluster::start(4).await;
    create_topic(&cluster.bootstrap(0), "events", 2).await;
    produce(&cluster.bootstrap(0), "events", 0..100).await;
    cluster.stop_node(3).await;
    // Three of four replicas keep ordering.
    produce(&cluster.bootstrap(1), "events", 100..400).await;
    cluster.start_node(3).await;
    produce(&cluster.bootstrap(0), "events", 400..500).await;
    // The restarted replica fetched what it missed, with certificates.
    let read = read_all(&cluster.bootstrap(3), "events", 2, 500).await;
    assert_exactly_once_in_order(&read, 500);
    let summaries = cluster.stop_and_verify().await;
    for s in &summaries[1..] {
        assert_eq!(s, &summaries[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_replaced_by_a_view_change() {
    let mut cluster = Cluster::start(4).await;
    create_topic(&cluster.bootstrap(1), "jobs", 1).await;
    produce(&cluster.bootstrap(1), "jobs", 0..50).await;
    // Replica 0 is the first view's primary of every cluster.
    cluster.stop_node(0).await;
    let started = Instant::now();
    produce(&cluster.bootstrap(2), "jobs", 50..250).await;
    eprintln!("produced through the view change in {:?}", started.elapsed());
    let read = read_all(&cluster.bootstrap(3), "jobs", 1, 250).await;
    assert_exactly_once_in_order(&read, 250);
    cluster.start_node(0).await;
    produce(&cluster.bootstrap(0), "jobs", 250..300).await;
    let read = read_all(&cluster.bootstrap(0), "jobs", 1, 300).await;
    assert_exactly_once_in_order(&read, 300);
    let dir = cluster.configs[2].log_dirs.clone();
    let summaries = cluster.stop_and_verify().await;
    for s in &summaries[1..] {
        assert_eq!(s, &summaries[0]);
    }
    // Blocks record the view their batch was proposed in: the records
    // produced without replica 0 were ordered by a later view's primary.
    let store = LedgerStore::open(&dir.join(courier::LEDGER_FILE), Durability::None).unwrap();
    let jobs = store.topics().unwrap().into_iter().find(|t| t.name == "jobs").unwrap();
    let pk = jobs.partition_key(0);
    let heights = store.partition_state(&pk).unwrap().next_height;
    let views: Vec<u64> = (0..heights)
        .map(|h| {
            courier_consensus::Block::decode(&store.block(&pk, h).unwrap().unwrap())
                .unwrap()
                .view
        })
        .collect();
    assert_eq!(views.first(), Some(&0));
    assert!(views.iter().any(|v| *v >= 1), "a later view ordered blocks: {views:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_replicas_ride_out_two_stopped_ones_the_primary_among_them() {
    let mut cluster = Cluster::start(7).await;
    create_topic(&cluster.bootstrap(3), "ledgers", 2).await;
    produce(&cluster.bootstrap(3), "ledgers", 0..100).await;
    // f = 2: the first view's primary and one backup go away.
    cluster.stop_node(0).await;
    cluster.stop_node(5).await;
    produce(&cluster.bootstrap(4), "ledgers", 100..300).await;
    let read = read_all(&cluster.bootstrap(6), "ledgers", 2, 300).await;
    assert_exactly_once_in_order(&read, 300);
    cluster.start_node(0).await;
    cluster.start_node(5).await;
    produce(&cluster.bootstrap(1), "ledgers", 300..350).await;
    let read = read_all(&cluster.bootstrap(5), "ledgers", 2, 350).await;
    assert_exactly_once_in_order(&read, 350);
    cluster.wait_replicas_agree("ledgers").await;
    let summaries = cluster.stop_and_verify().await;
    for s in &summaries[1..] {
        assert_eq!(s, &summaries[0], "every replica holds the same chains");
    }
}

/// The brokers one node's Metadata answer lists, in order.
async fn listed_brokers(w: &mut common::Wire) -> Vec<i32> {
    use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestKind, ResponseKind};
    let ask = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(Vec::new())));
    let ResponseKind::Metadata(m) = w.call(ApiKey::Metadata, 9, &ask).await else {
        panic!("not a Metadata answer");
    };
    let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// librdkafka drops a broker a Metadata answer leaves out, failing the
/// requests it had sent there. So while nodes start and connect, the
/// brokers a node lists only grow; a stopped node stays listed until the
/// session timeout runs out, then is left out, and is listed again once
/// it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lists_brokers_steadily_and_drops_a_stopped_one_after_the_session_timeout() {
    use courier::replication::transport::NODE_SESSION_TIMEOUT;
    let mut cluster = Cluster::start(4).await;
    let addr = |c: &Cluster, i: usize| c.nodes[i].as_ref().expect("running").kafka_addr;
    let mut wires = Vec::new();
    for i in 0..4 {
        wires.push(common::Wire::connect(addr(&cluster, i)).await);
    }
    // From start until every node lists all four (bounded), and some
    // rounds after: no answer lists fewer brokers than that node's last.
    let mut last: Vec<Vec<i32>> = vec![Vec::new(); 4];
    let mut steady_rounds = 0;
    let deadline = Instant::now() + WAIT;
    while steady_rounds < 20 {
        for (i, w) in wires.iter_mut().enumerate() {
            let now = listed_brokers(w).await;
            assert!(
                last[i].iter().all(|id| now.contains(id)),
                "node {i} listed {:?}, then {now:?}",
                last[i]
            );
            last[i] = now;
        }
        if last.iter().all(|l| l == &[0, 1, 2, 3]) {
            steady_rounds += 1;
        }
        assert!(Instant::now() < deadline, "nodes list {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Node 2 stops. Asked before the session timeout could have run out,
    // node 0 still lists it; then leaves it out.
    let before_stop = Instant::now();
    cluster.stop_node(2).await;
    let still = listed_brokers(&mut wires[0]).await;
    if before_stop.elapsed() < NODE_SESSION_TIMEOUT {
        assert_eq!(still, [0, 1, 2, 3], "a node just stopped is still listed");
    }
    loop {
        let now = listed_brokers(&mut wires[0]).await;
        if now == [0, 1, 3] {
            assert!(
                before_stop.elapsed() >= NODE_SESSION_TIMEOUT,
                "left out after {:?}",
                before_stop.elapsed()
            );
            break;
        }
        assert_eq!(now, [0, 1, 2, 3]);
        assert!(
            before_stop.elapsed() < NODE_SESSION_TIMEOUT + WAIT,
            "the stopped node is still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back: node 0 lists it again once they are connected.
    cluster.start_node(2).await;
    let deadline = Instant::now() + WAIT;
    while listed_brokers(&mut wires[0]).await != [0, 1, 2, 3] {
        assert!(Instant::now() < deadline, "the restarted node is listed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 11's storage errors on a replica, with the storage layer's
/// fault-injection hook: on one backup, ledger writes fail (no space), then
/// an fsync fails, while clients produce through another node. The other
/// three keep acknowledging; the backup recovers its store on its own,
/// rewinds, executes again what it lost (or fetches it), and ends with
/// the same chains as the others: nothing acknowledged lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_ledger_writes_fail_recovers_without_a_restart() {
    let mut cluster = Cluster::start(4).await;
    create_topic(&cluster.bootstrap(0), "disk", 2).await;
    // One producer throughout: it has its producer id before the faults,
    // so the failing writes are the executor's.
    let p = producer(&cluster.bootstrap(1));
    let send = |values: std::ops::Range<usize>| {
        values
            .map(|i| {
                let (key, value) = (format!("k{}", i % 17), format!("v{i}"));
                p.send_result(FutureRecord::to("disk").key(&key).payload(&value))
                    .expect("queued")
            })
            .collect::<Vec<_>>()
    };
    for d in send(0..100) {
        d.await.expect("delivered").expect("acknowledged");
    }
    let store = cluster.nodes[3].as_ref().unwrap().broker.store.clone();
    store.faults().fail_writes(6);
    for d in send(100..300) {
        d.await.expect("delivered").expect("acknowledged by the others");
    }
    store.faults().fail_syncs(2);
    for d in send(300..500) {
        d.await.expect("delivered").expect("acknowledged by the others");
    }
    // Every injected failure happened.
    let deadline = Instant::now() + WAIT;
    let mut more = 500;
    while store.faults().fail_writes.load(std::sync::atomic::Ordering::SeqCst)
        + store.faults().fail_syncs.load(std::sync::atomic::Ordering::SeqCst)
        > 0
    {
        assert!(Instant::now() < deadline, "the faults were not all hit");
        for d in send(more..more + 10) {
            d.await.expect("delivered").expect("acknowledged");
        }
        more += 10;
    }
    drop(store);
    drop(p);
    let read = read_all(&cluster.bootstrap(3), "disk", 2, more).await;
    assert_exactly_once_in_order(&read, more);
    let summaries = cluster.stop_and_verify().await;
    for s in &summaries[1..] {
        assert_eq!(s, &summaries[0], "the recovered replica holds the same chains");
    }
}
