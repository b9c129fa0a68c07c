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
        ConfigKind::Long => value.parse::<i64>().is_ok(),
        ConfigKind::OneOf(allowed) => allowed.contains(&value),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value {value:?} for {name}"))
    }
}

#[derive(Default)]
struct Inner {
    by_name: BTreeMap<String, Arc<TopicRecord>>,
    by_id: HashMap<[u8; 16], Arc<TopicRecord>>,
    states: HashMap<PartitionKey, PartitionState>,
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
