//! The topic catalog as the broker serves it: an in-memory view of the
//! persisted [`TopicRecord`]s plus each partition's committed position.
//!
//! Reads (Metadata, Fetch, Produce routing) take a short `std` read lock and
//! clone an `Arc`; structural changes are serialised by an async admin lock
//! and written to the ledger database before they become visible.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use courier_consensus::catalog::{validate_topic_name, TopicRecord};
use courier_consensus::ledger::{PartitionKey, PartitionState};

/// Topic-level settings Courier accepts, with how to check a value.
pub const TOPIC_CONFIGS: &[(&str, ConfigKind)] = &[
    ("cleanup.policy", ConfigKind::OneOf(&["delete"])),
    ("retention.ms", ConfigKind::Long),
    ("retention.bytes", ConfigKind::Long),
    ("max.message.bytes", ConfigKind::Int),
    ("message.timestamp.type", ConfigKind::OneOf(&["CreateTime"])),
    ("min.insync.replicas", ConfigKind::Int),
    ("segment.bytes", ConfigKind::Int),
    ("compression.type", ConfigKind::OneOf(&["producer"])),
    // Courier: record values longer than this many bytes stay in the
    // producing organization's storage, with a descriptor on the ledger
    // (-1, the default: off).
    (crate::offchain::THRESHOLD_CONFIG, ConfigKind::Long),
];

#[derive(Debug, Clone, Copy)]
pub enum ConfigKind {
    Int,
    Long,
    OneOf(&'static [&'static str]),
}

/// Checks a topic setting's name and value.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let Some((_, kind)) = TOPIC_CONFIGS.iter().find(|(n, _)| *n == name) else {
        return Err(format!("unknown topic config {name}"));
    };
    let ok = match kind {
        ConfigKind::Int => value.parse::<i32>().is_ok(),
        ConfigKind::Long if name == crate::offchain::THRESHOLD_CONFIG => value.parse::<i64>().is_ok_and(|t| t >= -1),
        ConfigKind::Long => value.parse::<i64>().is_ok(),
        ConfigKind::OneOf(allowed) => allowed.contains(&value),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value {value:?} for {name}"))
    }
}

/// Where clients should go for a partition, as the Raft state places it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The node reported as the partition's leader: this node if it orders
    /// the partition, else a member of its cluster (one of this node's
    /// organization if there is one).
    pub leader: i32,
    /// The members of the partition's cluster.
    pub replicas: Vec<i32>,
    /// Whether this node orders the partition (holds its ledger).
    pub served: bool,
}

/// Where one listener of a node is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The listener's name (upper case).
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `NAME://host:port,…`, as a node registers its listeners in the
    /// Raft state (Kafka's `advertised.listeners` form).
    pub fn list(endpoints: &[Endpoint]) -> String {
        endpoints
            .iter()
            .map(|e| format!("{}://{}:{}", e.name, e.host, e.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads [`Endpoint::list`]; a bare `host:port` is a PLAINTEXT listener.
    /// Entries that do not parse are left out.
    pub fn parse_list(s: &str) -> Vec<Endpoint> {
        s.split(',')
            .filter_map(|entry| {
                let (name, addr) = entry.trim().split_once("://").unwrap_or(("PLAINTEXT", entry.trim()));
                let (host, port) = addr.rsplit_once(':')?;
                Some(Endpoint {
                    name: name.to_ascii_uppercase(),
                    host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
                    port: port.parse().ok()?,
                })
            })
            .collect()
    }
}

/// A node clients can reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub id: i32,
    /// Its listeners, the first one first.
    pub listeners: Vec<Endpoint>,
    pub organization: String,
}

impl BrokerAddr {
    /// Where a client of listener `name` reaches this node.
    pub fn on(&self, name: &str) -> Option<&Endpoint> {
        self.listeners.iter().find(|e| e.name == name)
    }
}

/// Every partition's route and every node's address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    pub partitions: HashMap<PartitionKey, Route>,
    pub brokers: Vec<BrokerAddr>,
}

#[derive(Default)]
struct Inner {
    by_name: BTreeMap<String, Arc<TopicRecord>>,
    by_id: HashMap<[u8; 16], Arc<TopicRecord>>,
    states: HashMap<PartitionKey, PartitionState>,
    /// `None` on a single node: it orders every partition.
    routes: Option<Arc<Routes>>,
}

/// The broker's topic catalog.
#[derive(Default)]
pub struct Topics {
    inner: RwLock<Inner>,
}

impl Topics {
    pub fn load(records: Vec<TopicRecord>, states: Vec<(PartitionKey, PartitionState)>) -> Self {
        let topics = Self::default();
        for t in records {
            topics.insert(t);
        }
        topics.set_states(states);
        topics
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A poisoned lock means a panic while writing a plain map insert;
        // the map itself is still consistent, so keep serving.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicRecord>> {
        self.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: &[u8; 16]) -> Option<Arc<TopicRecord>> {
        self.read().by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TopicRecord>> {
        self.read().by_name.values().cloned().collect()
    }

    /// Committed position of a partition (empty if it has no block yet).
    pub fn state(&self, pk: &PartitionKey) -> PartitionState {
        self.read().states.get(pk).copied().unwrap_or(PartitionState::EMPTY)
    }

    pub fn set_states(&self, states: impl IntoIterator<Item = (PartitionKey, PartitionState)>) {
        let mut inner = self.write();
        for (pk, s) in states {
            inner.states.insert(pk, s);
        }
    }

    pub fn set_routes(&self, routes: Routes) {
        self.write().routes = Some(Arc::new(routes));
    }

    /// The route of a partition (`None` on a single node, or if the
    /// partition is not placed yet).
    pub fn route(&self, pk: &PartitionKey) -> Option<Route> {
        self.read().routes.as_ref()?.partitions.get(pk).cloned()
    }

    /// Whether this node orders `pk` and holds its ledger.
    pub fn serves(&self, pk: &PartitionKey) -> bool {
        match &self.read().routes {
            None => true,
            Some(r) => r.partitions.get(pk).is_some_and(|r| r.served),
        }
    }

    /// Every node of the deployment (empty on a single node).
    pub fn brokers(&self) -> Vec<BrokerAddr> {
        self.read()
            .routes
            .as_ref()
            .map(|r| r.brokers.clone())
            .unwrap_or_default()
    }

    pub fn insert(&self, topic: TopicRecord) {
        let topic = Arc::new(topic);
        let mut inner = self.write();
        inner.by_id.insert(topic.id, topic.clone());
        inner.by_name.insert(topic.name.clone(), topic);
    }

    pub fn remove(&self, topic: &TopicRecord) {
        let mut inner = self.write();
        inner.by_name.remove(&topic.name);
        inner.by_id.remove(&topic.id);
        inner.states.retain(|pk, _| pk.topic_id != topic.id);
    }
}

/// A fresh topic record, or why the request is not acceptable.
pub fn new_topic(
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
    id: [u8; 16],
) -> Result<TopicRecord, (i16, String)> {
    use kafka_protocol::ResponseError as E;
    validate_topic_name(name).map_err(|m| (E::InvalidTopicException.code(), m.to_owned()))?;
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err((
            E::InvalidPartitions.code(),
            format!("partitions must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    for (k, v) in &configs {
        validate_topic_config(k, v).map_err(|m| (E::InvalidConfig.code(), m))?;
    }
    Ok(TopicRecord {
        name: name.to_owned(),
        id,
        partitions,
        configs,
        epoch: 0,
    })
}

/// Partitions per topic, bounded so one request cannot create millions.
pub const MAX_PARTITIONS: i32 = 10_000;

/// A fresh random topic id (never all zeros, which Kafka reads as "no id").
pub fn random_topic_id() -> [u8; 16] {
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut id = [0u8; 16];
        if ring::rand::SecureRandom::fill(&rng, &mut id).is_ok() && id != [0; 16] {
            return id;
        }
    }
}
