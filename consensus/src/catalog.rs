//! Topics and their configuration.
//!
//! Held in the node's ledger database for now; the Raft issue moves this
//! state into the replicated metadata state machine, behind the same types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ledger::PartitionKey;

/// A topic as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Kafka topic id (a UUID); also the ledger key prefix of its partitions.
    pub id: [u8; 16],
    pub partitions: i32,
    /// Settings that differ from the broker defaults, by Kafka name.
    pub configs: BTreeMap<String, String>,
    /// Bumped whenever the partition set changes, reported as leader epoch.
    pub epoch: i32,
}

impl TopicRecord {
    pub fn partition_key(&self, partition: i32) -> PartitionKey {
        PartitionKey {
            topic_id: self.id,
            partition,
        }
    }
}

/// Kafka's rules for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`,
/// and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("topic name is empty");
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'");
    }
    if name.len() > 249 {
        return Err("topic name is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
    {
        return Err("topic name may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "has space", "slash/", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
