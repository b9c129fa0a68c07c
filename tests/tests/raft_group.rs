//! The Raft layer (`consensus::raft`) under a network simulator: real
//! openraft nodes with their redb stores, connected by an in-memory network
//! that can cut links, stop nodes and bring them back from their files.
//!
//! Time is tokio's paused clock, so elections and timeouts cost no wall
//! time. Every test ends by checking that all live nodes applied the same
//! state, and that what a client was told happened did happen, once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use courier_consensus::raft::{
    MetaCommand, MetaRaft, MetaState, NodeId, NodeRecord, RaftLimits, RaftTransport, TransportError,
};
use openraft::BasicNode;

type Node = MetaRaft<Link>;

/// The simulated network: who is up, which links are cut.
#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<NodeId, Arc<Node>>>,
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
}

impl Net {
    fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    fn linked(&self, a: NodeId, b: NodeId) -> bool {
        !self.cut.lock().unwrap().contains(&(a.min(b), a.max(b)))
    }

    /// Cuts (or heals) every link between `id` and the others.
    fn isolate(&self, id: NodeId, others: impl IntoIterator<Item = NodeId>, cut: bool) {
        let mut links = self.cut.lock().unwrap();
        for o in others {
            let key = (id.min(o), id.max(o));
            if cut {
                links.insert(key);
            } else {
                links.remove(&key);
            }
        }
    }
}

/// One node's end of the network.
struct Link {
    me: NodeId,
    net: Arc<Net>,
}

impl RaftTransport for Link {
    async fn call(&self, target: NodeId, request: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        if !self.net.linked(self.me, target) {
            return Err(TransportError::Unreachable(target));
        }
        let node = self.net.node(target).ok_or(TransportError::Unreachable(target))?;
        let answer = tokio::time::timeout(timeout, node.serve(self.me, &request))
            .await
            .map_err(|_| TransportError::Timeout(target))?;
        // The answer crosses the link too.
        if !self.net.linked(self.me, target) || self.net.node(self.me).is_none() {
            return Err(TransportError::Timeout(target));
        }
        Ok(answer)
    }
}

struct Group {
    net: Arc<Net>,
    dir: tempfile::TempDir,
    limits: RaftLimits,
}

impl Group {
    fn new(limits: RaftLimits) -> Self {
        Self {
            net: Arc::new(Net::default()),
            dir: tempfile::tempdir().unwrap(),
            limits,
        }
    }

    fn path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("raft-{id}.redb"))
    }

    /// Starts node `id` from its file (new or left by an earlier life).
    async fn start(&self, id: NodeId) -> Arc<Node> {
        let link = Arc::new(Link {
            me: id,
            net: self.net.clone(),
        });
        let node = Arc::new(
            MetaRaft::start(id, &self.path(id), link, self.limits.clone())
                .await
                .unwrap(),
        );
        self.net.nodes.lock().unwrap().insert(id, node.clone());
        node
    }

    /// Crashes node `id`: it stops answering and its task ends; its file stays.
    async fn crash(&self, id: NodeId) {
        let node = self.net.nodes.lock().unwrap().remove(&id);
        if let Some(node) = node {
            node.shutdown().await;
        }
    }

    async fn boot(&self, n: NodeId) -> Vec<Arc<Node>> {
        let mut nodes = Vec::new();
        for id in 0..n {
            nodes.push(self.start(id).await);
        }
        let members: BTreeMap<NodeId, BasicNode> =
            (0..n).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
        nodes[0].initialize(members).await.unwrap();
        wait_leader(&nodes).await;
        nodes
    }

    fn live(&self) -> Vec<Arc<Node>> {
        let mut v: Vec<_> = self.net.nodes.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|n| n.id);
        v
    }

    /// Waits until every live node applied the same state, and returns it.
    async fn converged(&self) -> Arc<MetaState> {
        for _ in 0..600 {
            let live = self.live();
            let first = live[0].state();
            if live.iter().all(|n| *n.state() == *first) {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let states: Vec<_> = self.live().iter().map(|n| (n.id, n.state().version)).collect();
        panic!("nodes did not converge: versions {states:?}");
    }
}

async fn wait_leader(nodes: &[Arc<Node>]) -> NodeId {
    for _ in 0..400 {
        if let Some(l) = nodes.iter().find_map(|n| n.leader()) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected");
}

fn limits() -> RaftLimits {
    RaftLimits {
        write_timeout_ms: 5_000,
        ..RaftLimits::default()
    }
}

fn register(id: NodeId) -> MetaCommand {
    MetaCommand::RegisterNode(NodeRecord {
        id,
        kafka: format!("127.0.0.1:{}", 9092 + id),
        peer: format!("127.0.0.1:{}", 19092 + id),
        organization: "org".into(),
        public_key: vec![id as u8 + 1; 32],
    })
}

fn create(name: &str, id: u8, partitions: i32) -> MetaCommand {
    MetaCommand::CreateTopic {
        name: name.into(),
        id: [id; 16],
        partitions,
        configs: BTreeMap::new(),
    }
}

/// Registers nodes 0..4 and forms one cluster from them.
async fn form_cluster(node: &Node) {
    for id in 0..4 {
        assert_eq!(node.write(register(id)).await.unwrap().error_code, 0);
    }
    let formed = node
        .write(MetaCommand::FormCluster {
            members: vec![0, 1, 2, 3],
        })
        .await
        .unwrap();
    assert_eq!(formed.cluster, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_write_from_any_node_reaches_every_node() {
    let g = Group::new(limits());
    let nodes = g.boot(3).await;
    form_cluster(&nodes[1]).await;
    for (i, node) in nodes.iter().enumerate() {
        let r = node.write(create(&format!("t{i}"), i as u8 + 1, 3)).await.unwrap();
        assert_eq!(r.error_code, 0);
        // The writer sees its own change when the write returns.
        assert!(node.state().topics.contains_key(&format!("t{i}")));
    }
    let state = g.converged().await;
    assert_eq!(state.topics.len(), 3);
    assert_eq!(state.clusters[&0].members, vec![0, 1, 2, 3]);
    // A refusal travels back from the leader as an error code.
    let again = nodes[2].write(create("t0", 9, 1)).await.unwrap();
    assert_eq!(again.error_code, 36, "TOPIC_ALREADY_EXISTS");
}

/// The leader is crashed while topics are being created from every node;
/// it comes back from its file. Every topic a client was told exists,
/// exists exactly once, on every node.
#[tokio::test(start_paused = true)]
async fn leader_crash_during_topic_creation() {
    let g = Group::new(limits());
    let nodes = g.boot(5).await;
    form_cluster(&nodes[0]).await;
    let leader = wait_leader(&nodes).await;
    let mut writes = Vec::new();
    for i in 0..40u8 {
        let node = nodes[(i % 5) as usize].clone();
        writes.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i as u64 * 20)).await;
            (i, node.write(create(&format!("topic-{i}"), i + 1, 2)).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.crash(leader).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    g.start(leader).await;
    let mut acknowledged = BTreeSet::new();
    for w in writes {
        let (i, outcome) = w.await.unwrap();
        match outcome {
            Ok(r) if r.error_code == 0 => {
                acknowledged.insert(format!("topic-{i}"));
            }
            Ok(r) => panic!("topic-{i} refused: {r:?}"),
            // Written through the crashed node: in doubt, allowed.
            Err(_) => assert_eq!(i % 5, leader as u8, "only writes through the crashed leader may fail"),
        }
    }
    let state = g.converged().await;
    assert_eq!(g.live().len(), 5);
    for name in &acknowledged {
        assert!(
            state.topics.contains_key(name),
            "{name} was acknowledged but is missing"
        );
    }
    let ids: BTreeSet<_> = state.topics.values().map(|t| t.record.id).collect();
    assert_eq!(ids.len(), state.topics.len(), "a topic exists twice");
    assert!(acknowledged.len() >= 32, "only {} writes succeeded", acknowledged.len());
    let new_leader = wait_leader(&g.live()).await;
    assert_ne!(new_leader, leader, "a crashed leader cannot still lead");
}

/// A leader cut off from the others stops being able to write; the
/// majority elects another and goes on; after healing the old leader
/// catches up and nothing it accepted while alone was applied.
#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_cannot_write() {
    let g = Group::new(RaftLimits {
        write_timeout_ms: 2_000,
        ..RaftLimits::default()
    });
    let nodes = g.boot(5).await;
    form_cluster(&nodes[0]).await;
    let old = wait_leader(&nodes).await;
    g.net.isolate(old, 0..5, true);
    let alone = g.net.node(old).unwrap();
    let refused = alone.write(create("minority", 1, 1)).await;
    assert!(refused.is_err(), "a cut-off leader wrote: {refused:?}");
    let other = nodes.iter().find(|n| n.id != old).unwrap();
    assert_eq!(other.write(create("majority", 2, 1)).await.unwrap().error_code, 0);
    g.net.isolate(old, 0..5, false);
    let state = g.converged().await;
    assert!(state.topics.contains_key("majority"));
    assert!(!state.topics.contains_key("minority"), "a minority write was applied");
}

/// Voters are added and removed while topics are created; membership and
/// state stay consistent.
#[tokio::test(start_paused = true)]
async fn membership_change_during_topic_creation() {
    let g = Group::new(limits());
    let nodes = g.boot(3).await;
    form_cluster(&nodes[0]).await;
    let writer = nodes[1].clone();
    let writes = tokio::spawn(async move {
        let mut ok = 0;
        for i in 0..30u8 {
            if writer
                .write(create(&format!("m{i}"), i + 1, 1))
                .await
                .is_ok_and(|r| r.error_code == 0)
            {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        ok
    });
    for id in 3..5 {
        g.start(id).await;
        let leader = g.net.node(wait_leader(&nodes).await).unwrap();
        leader.add_voter(id, format!("node-{id}")).await.unwrap();
    }
    // Remove node 2 (a voter from the start).
    let leader = g.net.node(wait_leader(&g.live()).await).unwrap();
    let voters: BTreeSet<NodeId> = [0, 1, 3, 4].into();
    leader.raft().change_membership(voters.clone(), false).await.unwrap();
    assert_eq!(writes.await.unwrap(), 30, "every write during the changes succeeded");
    g.crash(2).await;
    let state = g.converged().await;
    assert_eq!(state.topics.len(), 30);
    for n in g.live() {
        let m = n.raft().metrics().borrow().membership_config.clone();
        let now: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        if n.id != 2 {
            assert_eq!(now, voters, "node {} sees voters {now:?}", n.id);
        }
    }
}

/// A node that was never configured asks to join through any node and
/// becomes a voter; it registers and later leaves (it serves no cluster).
/// A cluster member's request to leave is refused and changes nothing.
#[tokio::test(start_paused = true)]
async fn a_node_joins_through_any_node_and_leaves_again() {
    let g = Group::new(limits());
    let nodes = g.boot(4).await;
    form_cluster(&nodes[0]).await;
    let newcomer = g.start(4).await;
    // Asked through a follower first: it is pointed at the leader.
    let leader = wait_leader(&nodes).await;
    let mut via: Vec<NodeId> = (0..4).filter(|n| *n != leader).collect();
    via.push(leader);
    tokio::time::timeout(Duration::from_secs(30), newcomer.request_join(&via, "node-4"))
        .await
        .expect("joined within 30 s");
    assert!(newcomer.is_voter());
    assert_eq!(newcomer.write(register(4)).await.unwrap().error_code, 0);
    let state = g.converged().await;
    assert!(state.nodes.contains_key(&4));
    for n in g.live() {
        let m = n.raft().metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        assert_eq!(voters, (0..5).collect(), "node {} sees voters {voters:?}", n.id);
    }
    // A member of cluster 0 may not leave.
    let refused = nodes[2].request_leave(&via, 5).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("cluster 0")), "{refused:?}");
    assert!(nodes[2].is_voter());
    // The newcomer leaves: no longer a voter anywhere, no longer registered.
    newcomer.request_leave(&via, 5).await.expect("left");
    g.crash(4).await;
    let state = g.converged().await;
    assert!(!state.nodes.contains_key(&4));
    assert!(state.nodes.contains_key(&2));
    for n in g.live() {
        let m = n.raft().metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        assert_eq!(voters, (0..4).collect(), "node {} sees voters {voters:?}", n.id);
    }
    // The group still takes writes.
    assert_eq!(nodes[3].write(create("after", 9, 1)).await.unwrap().error_code, 0);
}

/// With snapshots every few entries, a node that joins late gets the
/// state by snapshot, and a node restarted from its file rebuilds it.
#[tokio::test(start_paused = true)]
async fn snapshots_bring_new_and_restarted_nodes_up_to_date() {
    let g = Group::new(RaftLimits {
        snapshot_every_entries: 8,
        ..limits()
    });
    let nodes = g.boot(3).await;
    form_cluster(&nodes[0]).await;
    for i in 0..40u8 {
        assert_eq!(
            nodes[0]
                .write(create(&format!("s{i}"), i + 1, 1))
                .await
                .unwrap()
                .error_code,
            0
        );
    }
    // The leader's log before its last snapshot is purged, so node 3 can
    // only catch up by installing the snapshot.
    g.start(3).await;
    let leader = g.net.node(wait_leader(&nodes).await).unwrap();
    leader.add_voter(3, "node-3".into()).await.unwrap();
    let state = g.converged().await;
    assert_eq!(state.topics.len(), 40);
    let joined = g.net.node(3).unwrap();
    let snapshot = joined.raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "node 3 caught up without a snapshot");

    g.crash(1).await;
    g.start(1).await;
    let state = g.converged().await;
    assert_eq!(state.topics.len(), 40);
    assert_eq!(*g.net.node(1).unwrap().state(), *state);
}
