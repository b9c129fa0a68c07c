//! The cluster's configuration as the Raft group agrees on it: nodes,
//! PBFT clusters, topics and where each partition is ordered.
//!
//! [`MetaState::apply`] is a pure function of the state and one command:
//! every node applies the same log to the same state and reaches the same
//! result, so nothing here reads a clock, a random source or the disk. A
//! command that breaks a rule (a topic that exists, a cluster of five) is
//! refused with a Kafka error code and leaves the state as it was.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::global::{GlobalEntry, GlobalHead};
use crate::catalog::{validate_topic_name, TopicRecord};
use crate::ledger::PartitionKey;
use crate::security::{SecurityCommand, SecurityState};

/// A node's Raft id (also its id on the node-to-node transport).
pub type NodeId = u64;

/// Largest PBFT cluster (f = 2): a cluster never grows past it, Courier
/// scales by adding clusters.
pub const CLUSTER_SIZE_MAX: usize = 7;
/// Smallest cluster that tolerates a Byzantine replica (f = 1).
pub const CLUSTER_SIZE_MIN: usize = 4;
/// Partitions one topic may have; one request cannot create millions.
pub const PARTITIONS_MAX: i32 = 10_000;

/// Kafka error codes the state machine answers with (the handlers pass
/// them through unchanged).
pub mod code {
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_CONFIG: i16 = 40;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const BROKER_NOT_AVAILABLE: i16 = 8;
}

/// A node of the deployment, as it registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Where Kafka clients reach it (`host:port`).
    pub kafka: String,
    /// Where other nodes reach it (mutual TLS).
    pub peer: String,
    /// The organization that runs it; clients are routed to their own.
    pub organization: String,
    /// Its ed25519 public key (32 bytes): what its PBFT votes verify under.
    pub public_key: Vec<u8>,
}

/// One PBFT cluster: 3f + 1 nodes that order the partitions placed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: u32,
    /// Node ids; a node's replica index in the cluster is its position.
    pub members: Vec<NodeId>,
}

/// A topic and the cluster ordering each of its partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub record: TopicRecord,
    /// `placement[p]` is the cluster of partition `p`.
    pub placement: Vec<u32>,
}

/// What the Raft group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub clusters: BTreeMap<u32, ClusterRecord>,
    pub topics: BTreeMap<String, TopicEntry>,
    /// Where each partition's chain in the global ledger ends (its entries
    /// are rows beside the Raft log, see `global`). Kept for deleted topics
    /// too: the global ledger is an audit record.
    pub global: BTreeMap<PartitionKey, GlobalHead>,
    /// Bumped by every accepted structural command: a change counter
    /// clients of this state can wait on.
    pub version: u64,
    /// Bumped by every accepted global-ledger append.
    pub global_appends: u64,
    /// ACLs, SCRAM credentials, principals' organizations (with their own
    /// version: a security change is no catalog change).
    pub security: SecurityState,
}

/// A structural change, ordered by Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node or replaces its addresses (its key cannot change while
    /// it serves a cluster).
    RegisterNode(NodeRecord),
    /// Removes a node that serves no cluster.
    RemoveNode {
        id: NodeId,
    },
    /// Forms a new PBFT cluster from registered nodes that serve none.
    FormCluster {
        members: Vec<NodeId>,
    },
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        id: [u8; 16],
    },
    /// Grows a topic to `total` partitions, placing the new ones.
    CreatePartitions {
        name: String,
        total: i32,
    },
    /// Sets (`Some`) or removes (`None`) topic settings, all or none.
    AlterConfigs {
        name: String,
        changes: Vec<(String, Option<String>)>,
    },
    /// Appends verified blocks of a partition to the global ledger: they
    /// must extend its chain there and end at a certified block.
    AppendGlobal {
        pk: PartitionKey,
        entries: Vec<GlobalEntry>,
    },
    /// Changes ACLs, credentials or organizations.
    Security(SecurityCommand),
}

/// The outcome of one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResponse {
    /// 0, or the Kafka error code of a refusal.
    pub error_code: i16,
    pub message: Option<String>,
    /// The state's version after the command.
    pub version: u64,
    /// The id given to a cluster that was formed.
    pub cluster: Option<u32>,
}

type Refusal = (i16, String);

impl MetaState {
    /// Applies one command; a refused command changes nothing.
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        match self.try_apply(command) {
            Ok(cluster) => {
                if matches!(command, MetaCommand::AppendGlobal { .. }) {
                    self.global_appends += 1;
                } else if matches!(command, MetaCommand::Security(_)) {
                    // Counted in the security state itself.
                } else {
                    self.version += 1;
                }
                MetaResponse {
                    error_code: 0,
                    message: None,
                    version: self.version,
                    cluster,
                }
            }
            Err((error_code, message)) => MetaResponse {
                error_code,
                message: Some(message),
                version: self.version,
                cluster: None,
            },
        }
    }

    fn try_apply(&mut self, command: &MetaCommand) -> Result<Option<u32>, Refusal> {
        match command {
            MetaCommand::RegisterNode(node) => self.register_node(node).map(|_| None),
            MetaCommand::RemoveNode { id } => self.remove_node(*id).map(|_| None),
            MetaCommand::FormCluster { members } => self.form_cluster(members).map(Some),
            MetaCommand::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => self.create_topic(name, *id, *partitions, configs).map(|_| None),
            MetaCommand::DeleteTopic { id } => self.delete_topic(id).map(|_| None),
            MetaCommand::CreatePartitions { name, total } => self.create_partitions(name, *total).map(|_| None),
            MetaCommand::AlterConfigs { name, changes } => self.alter_configs(name, changes).map(|_| None),
            MetaCommand::AppendGlobal { pk, entries } => self.append_global(pk, entries).map(|_| None),
            MetaCommand::Security(c) => self
                .security
                .apply(c)
                .map(|_| None)
                .map_err(|e| (code::INVALID_REQUEST, e.to_string())),
        }
    }

    fn append_global(&mut self, pk: &PartitionKey, entries: &[GlobalEntry]) -> Result<(), Refusal> {
        let cluster = self.cluster_of(pk).map(|c| c.id).ok_or((
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("no partition {} of that topic id", pk.partition),
        ))?;
        if entries.last().is_none_or(|e| e.cert.is_none()) {
            return Err((
                code::INVALID_REQUEST,
                "a global-ledger append ends at a certified block".into(),
            ));
        }
        let mut head = self
            .global
            .get(pk)
            .cloned()
            .unwrap_or_else(|| GlobalHead::genesis(cluster));
        for e in entries {
            e.extend(pk, &mut head)
                .map_err(|e| (code::INVALID_REQUEST, format!("global ledger: {e}")))?;
        }
        self.global.insert(*pk, head);
        Ok(())
    }

    fn register_node(&mut self, node: &NodeRecord) -> Result<(), Refusal> {
        if node.public_key.len() != 32 {
            return Err((
                code::INVALID_REQUEST,
                "a node's public key is 32 bytes (ed25519)".into(),
            ));
        }
        if let Some(old) = self.nodes.get(&node.id) {
            if old.public_key != node.public_key && self.cluster_of_node(node.id).is_some() {
                return Err((
                    code::INVALID_REQUEST,
                    format!("node {} serves a cluster: its key cannot change", node.id),
                ));
            }
        }
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.id != node.id && n.public_key == node.public_key)
        {
            return Err((code::INVALID_REQUEST, format!("node {} already has that key", other.id)));
        }
        self.nodes.insert(node.id, node.clone());
        Ok(())
    }

    fn remove_node(&mut self, id: NodeId) -> Result<(), Refusal> {
        if let Some(c) = self.cluster_of_node(id) {
            return Err((code::INVALID_REQUEST, format!("node {id} serves cluster {c}")));
        }
        self.nodes
            .remove(&id)
            .map(|_| ())
            .ok_or((code::INVALID_REQUEST, format!("node {id} is not registered")))
    }

    fn form_cluster(&mut self, members: &[NodeId]) -> Result<u32, Refusal> {
        let n = members.len();
        if !(CLUSTER_SIZE_MIN..=CLUSTER_SIZE_MAX).contains(&n) || !(n - 1).is_multiple_of(3) {
            return Err((
                code::INVALID_REQUEST,
                format!("a PBFT cluster has 3f + 1 members, 4 or 7; not {n}"),
            ));
        }
        let distinct: BTreeSet<_> = members.iter().collect();
        if distinct.len() != n {
            return Err((code::INVALID_REQUEST, "a node appears twice in the cluster".into()));
        }
        for id in members {
            if !self.nodes.contains_key(id) {
                return Err((code::INVALID_REQUEST, format!("node {id} is not registered")));
            }
            if let Some(c) = self.cluster_of_node(*id) {
                return Err((code::INVALID_REQUEST, format!("node {id} already serves cluster {c}")));
            }
        }
        let id = self.clusters.keys().next_back().map_or(0, |last| last + 1);
        self.clusters.insert(
            id,
            ClusterRecord {
                id,
                members: members.to_vec(),
            },
        );
        Ok(id)
    }

    fn create_topic(
        &mut self,
        name: &str,
        id: [u8; 16],
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), Refusal> {
        validate_topic_name(name).map_err(|m| (code::INVALID_TOPIC, m.to_owned()))?;
        if self.topics.get(name).is_some_and(|t| t.record.id == id) {
            // The same request again (a retry after a leader change).
            return Ok(());
        }
        if self.topics.contains_key(name) {
            return Err((code::TOPIC_ALREADY_EXISTS, format!("topic {name} already exists")));
        }
        if id == [0; 16] || self.topics.values().any(|t| t.record.id == id) {
            return Err((code::INVALID_REQUEST, "the topic id is taken".into()));
        }
        check_partitions(partitions)?;
        let placement = self.place(partitions as usize)?;
        self.topics.insert(
            name.to_owned(),
            TopicEntry {
                record: TopicRecord {
                    name: name.to_owned(),
                    id,
                    partitions,
                    configs: configs.clone(),
                    epoch: 0,
                },
                placement,
            },
        );
        Ok(())
    }

    fn delete_topic(&mut self, id: &[u8; 16]) -> Result<(), Refusal> {
        let name = self
            .topics
            .values()
            .find(|t| &t.record.id == id)
            .map(|t| t.record.name.clone())
            .ok_or((code::UNKNOWN_TOPIC_ID, "no topic has that id".into()))?;
        self.topics.remove(&name);
        Ok(())
    }

    fn create_partitions(&mut self, name: &str, total: i32) -> Result<(), Refusal> {
        let current = self
            .topics
            .get(name)
            .ok_or((code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name}")))?
            .record
            .partitions;
        if total <= current {
            return Err((
                code::INVALID_PARTITIONS,
                format!("topic {name} has {current} partitions; it can only grow"),
            ));
        }
        check_partitions(total)?;
        let more = self.place((total - current) as usize)?;
        let Some(entry) = self.topics.get_mut(name) else {
            return Err((code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name}")));
        };
        entry.record.partitions = total;
        entry.record.epoch += 1;
        entry.placement.extend(more);
        Ok(())
    }

    fn alter_configs(&mut self, name: &str, changes: &[(String, Option<String>)]) -> Result<(), Refusal> {
        let entry = self
            .topics
            .get_mut(name)
            .ok_or((code::UNKNOWN_TOPIC_OR_PARTITION, format!("no topic {name}")))?;
        let mut configs = entry.record.configs.clone();
        for (key, value) in changes {
            match value {
                Some(v) => configs.insert(key.clone(), v.clone()),
                None => configs.remove(key),
            };
        }
        entry.record.configs = configs;
        Ok(())
    }

    /// Clusters for `count` new partitions: each goes to the cluster with
    /// the fewest partitions so far (lowest id on a tie). Balanced by
    /// count; a load-aware policy replaces this later.
    fn place(&self, count: usize) -> Result<Vec<u32>, Refusal> {
        if self.clusters.is_empty() {
            return Err((code::BROKER_NOT_AVAILABLE, "no PBFT cluster is formed yet".into()));
        }
        let mut load: BTreeMap<u32, usize> = self.clusters.keys().map(|c| (*c, 0)).collect();
        for t in self.topics.values() {
            for c in &t.placement {
                if let Some(n) = load.get_mut(c) {
                    *n += 1;
                }
            }
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let Some((&cluster, _)) = load.iter().min_by_key(|(id, n)| (**n, **id)) else {
                break;
            };
            out.push(cluster);
            if let Some(n) = load.get_mut(&cluster) {
                *n += 1;
            }
        }
        Ok(out)
    }

    /// The cluster a node serves, if any.
    pub fn cluster_of_node(&self, node: NodeId) -> Option<u32> {
        self.clusters.values().find(|c| c.members.contains(&node)).map(|c| c.id)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&TopicEntry> {
        self.topics.values().find(|t| &t.record.id == id)
    }

    /// The cluster ordering a partition.
    pub fn cluster_of(&self, pk: &PartitionKey) -> Option<&ClusterRecord> {
        let topic = self.topic_by_id(&pk.topic_id)?;
        let cluster = topic.placement.get(usize::try_from(pk.partition).ok()?)?;
        self.clusters.get(cluster)
    }

    /// Every partition a cluster orders.
    pub fn partitions_of(&self, cluster: u32) -> Vec<PartitionKey> {
        self.topics
            .values()
            .flat_map(|t| {
                t.placement
                    .iter()
                    .enumerate()
                    .filter(move |(_, c)| **c == cluster)
                    .map(move |(p, _)| t.record.partition_key(p as i32))
            })
            .collect()
    }
}

fn check_partitions(partitions: i32) -> Result<(), Refusal> {
    if (1..=PARTITIONS_MAX).contains(&partitions) {
        Ok(())
    } else {
        Err((
            code::INVALID_PARTITIONS,
            format!("partitions must be between 1 and {PARTITIONS_MAX}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> NodeRecord {
        NodeRecord {
            id,
            kafka: format!("127.0.0.1:{}", 9092 + id),
            peer: format!("127.0.0.1:{}", 19092 + id),
            organization: format!("org-{}", id / 4),
            public_key: vec![id as u8 + 1; 32],
        }
    }

    fn eight_nodes_two_clusters() -> MetaState {
        let mut s = MetaState::default();
        for id in 0..8 {
            assert_eq!(s.apply(&MetaCommand::RegisterNode(node(id))).error_code, 0);
        }
        let a = s.apply(&MetaCommand::FormCluster {
            members: vec![0, 1, 2, 3],
        });
        let b = s.apply(&MetaCommand::FormCluster {
            members: vec![4, 5, 6, 7],
        });
        assert_eq!((a.cluster, b.cluster), (Some(0), Some(1)));
        s
    }

    fn create(name: &str, id: u8, partitions: i32) -> MetaCommand {
        MetaCommand::CreateTopic {
            name: name.into(),
            id: [id; 16],
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn partitions_spread_evenly_over_clusters() {
        let mut s = eight_nodes_two_clusters();
        assert_eq!(s.apply(&create("orders", 1, 8)).error_code, 0);
        assert_eq!(s.topics["orders"].placement, vec![0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(s.apply(&create("one", 2, 1)).error_code, 0);
        assert_eq!(s.apply(&create("two", 3, 1)).error_code, 0);
        assert_eq!((s.topics["one"].placement[0], s.topics["two"].placement[0]), (0, 1));
        let pk = s.topics["orders"].record.partition_key(3);
        assert_eq!(s.cluster_of(&pk).map(|c| c.members.clone()), Some(vec![4, 5, 6, 7]));
        assert_eq!(s.partitions_of(0).len(), 5);
    }

    #[test]
    fn refused_commands_change_nothing() {
        let mut s = eight_nodes_two_clusters();
        assert_eq!(s.apply(&create("t", 1, 2)).error_code, 0);
        let before = s.clone();
        let retried = s.apply(&create("t", 1, 2));
        assert_eq!(
            (retried.error_code, s.topics.len()),
            (0, 1),
            "a retried create is one topic"
        );
        let before = MetaState {
            version: s.version,
            ..before
        };
        let refused = [
            (create("t", 9, 1), code::TOPIC_ALREADY_EXISTS),
            (create("u", 1, 1), code::INVALID_REQUEST),
            (create("bad name", 4, 1), code::INVALID_TOPIC),
            (create("v", 5, 0), code::INVALID_PARTITIONS),
            (
                MetaCommand::CreatePartitions {
                    name: "t".into(),
                    total: 2,
                },
                code::INVALID_PARTITIONS,
            ),
            (MetaCommand::DeleteTopic { id: [7; 16] }, code::UNKNOWN_TOPIC_ID),
            (
                MetaCommand::FormCluster {
                    members: vec![0, 1, 2, 3],
                },
                code::INVALID_REQUEST,
            ),
            (MetaCommand::RemoveNode { id: 1 }, code::INVALID_REQUEST),
        ];
        for (cmd, want) in refused {
            assert_eq!(s.apply(&cmd).error_code, want, "{cmd:?}");
            assert_eq!(s, before, "{cmd:?} changed the state");
        }
    }

    #[test]
    fn clusters_have_four_or_seven_distinct_registered_members() {
        let mut s = MetaState::default();
        for id in 0..12 {
            s.apply(&MetaCommand::RegisterNode(node(id)));
        }
        for bad in [vec![0, 1, 2], vec![0, 1, 2, 3, 4], vec![0, 0, 1, 2], vec![0, 1, 2, 99]] {
            assert_ne!(s.apply(&MetaCommand::FormCluster { members: bad }).error_code, 0);
        }
        assert_eq!(
            s.apply(&MetaCommand::FormCluster {
                members: (0..7).collect()
            })
            .cluster,
            Some(0)
        );
        assert_eq!(s.apply(&create("t", 1, 1)).error_code, 0);
    }

    #[test]
    fn growing_a_topic_places_new_partitions_and_bumps_its_epoch() {
        let mut s = eight_nodes_two_clusters();
        s.apply(&create("t", 1, 1));
        let r = s.apply(&MetaCommand::CreatePartitions {
            name: "t".into(),
            total: 4,
        });
        assert_eq!(r.error_code, 0);
        assert_eq!(s.topics["t"].placement, vec![0, 1, 0, 1]);
        assert_eq!(s.topics["t"].record.epoch, 1);
        s.apply(&MetaCommand::AlterConfigs {
            name: "t".into(),
            changes: vec![("retention.ms".into(), Some("1000".into()))],
        });
        assert_eq!(s.topics["t"].record.configs["retention.ms"], "1000");
        s.apply(&MetaCommand::DeleteTopic { id: [1; 16] });
        assert!(s.topics.is_empty());
    }
}
