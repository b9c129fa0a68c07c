//! `courier ledger verify`: re-walks every partition chain in a data
//! directory and reports the first bad block; with `--global`, re-walks the
//! global ledger and compares it with the partition ledgers the node holds.
//! `courier message locate` finds a message in the global ledger alone.

use std::path::Path;

use bytes::Bytes;
use courier_consensus::ledger::{
    verify_ledger, CertCheck, Durability, LedgerStore, StoreError, VerifyError, VerifyOptions,
};
use courier_consensus::ledger::{Block, PartitionKey};
use courier_consensus::pbft;
use courier_consensus::raft::global::{
    messages_of, ClusterKeys, GlobalLedger, GlobalReadError, GlobalReport, GlobalVerifyError, Located, Query,
};
use courier_consensus::raft::MetaState;

use crate::replication::{partition_members_key, MEMBERS_KEY};

/// One verified partition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartitionSummary {
    pub topic: String,
    pub partition: i32,
    pub blocks: u64,
    pub records: i64,
    pub receipts: u64,
    /// Blocks with their own quorum certificate (replicated ledgers).
    pub certified: u64,
    /// Blocks after the last certificate.
    pub uncertified_tail: u64,
}

/// Whose keys certificates were checked against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeySource {
    /// A single-replica ledger: no certificates.
    None,
    /// The keys the node recorded in its ledger.
    Recorded(usize),
    /// Keys the caller trusts (a configuration file).
    Given(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerCheckError {
    #[error("cannot open the ledger at {path} (is a broker still running on it?): {source}")]
    Open { path: String, source: StoreError },
    #[error("{topic}: {source}")]
    Bad { topic: String, source: VerifyError },
    #[error("{topic} partition {partition}: its recorded cluster has a key that is not among the keys given")]
    UntrustedCluster { topic: String, partition: i32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the Raft state at {path} (is a broker still running on it? a single-replica node has none): {reason}")]
    OpenRaft { path: String, reason: String },
    #[error("global ledger: {0}")]
    Global(#[from] GlobalVerifyError),
    #[error("global ledger: {0}")]
    GlobalRead(#[from] GlobalReadError),
    #[error("{topic} partition {partition} block {height}: the global ledger and this node's ledger differ: {reason}")]
    GlobalMismatch {
        topic: String,
        partition: i32,
        height: u64,
        reason: String,
    },
}

/// One partition of the global ledger, as verified.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GlobalPartition {
    pub topic: String,
    pub partition: i32,
    pub cluster: u32,
    pub blocks: u64,
    pub messages: u64,
    pub receipts: u64,
    /// Blocks compared with this node's own ledger of the partition.
    pub compared: u64,
}

/// What `courier ledger verify --global` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GlobalCheck {
    pub report: GlobalReport,
    pub partitions: Vec<GlobalPartition>,
    /// Blocks compared with this node's partition ledgers (hash and every
    /// message's metadata).
    pub compared_blocks: u64,
}

/// Verifies the global ledger (chains, certificates against the cluster
/// keys in the Raft state) and compares every block this node also holds
/// in a partition ledger: same hash, same message metadata.
pub fn check_global(
    global: &GlobalLedger,
    state: &MetaState,
    store: &LedgerStore,
) -> Result<GlobalCheck, LedgerCheckError> {
    let local: std::collections::HashMap<PartitionKey, u64> = store
        .partitions()?
        .into_iter()
        .map(|(pk, s)| (pk, s.next_height))
        .collect();
    let mut mismatch: Option<LedgerCheckError> = None;
    let mut compared = std::collections::HashMap::<PartitionKey, u64>::new();
    let name = |pk: &PartitionKey| {
        state.topic_by_id(&pk.topic_id).map_or_else(
            || uuid::Uuid::from_bytes(pk.topic_id).to_string(),
            |t| t.record.name.clone(),
        )
    };
    let report = global.verify(state, |pk, height, entry, hash| {
        if mismatch.is_some() || local.get(pk).is_none_or(|n| height >= *n) {
            return;
        }
        let differ = |reason: String| LedgerCheckError::GlobalMismatch {
            topic: name(pk),
            partition: pk.partition,
            height,
            reason,
        };
        let nodes = state
            .global
            .get(pk)
            .and_then(|h| ClusterKeys::of(state, h.cluster))
            .map(|k| k.nodes)
            .unwrap_or_default();
        let checked = (|| {
            let raw = store
                .block(pk, height)
                .map_err(|e| differ(e.to_string()))?
                .ok_or_else(|| differ("missing here".into()))?;
            let (block, local_hash) = Block::decode_hashed(&raw).map_err(|e| differ(e.to_string()))?;
            if local_hash != *hash {
                return Err(differ(format!(
                    "hash {local_hash:?} here, {hash:?} in the global ledger"
                )));
            }
            let messages = messages_of(&block, &nodes).map_err(|e| differ(e.to_string()))?;
            if messages != entry.messages {
                return Err(differ("message metadata".into()));
            }
            Ok(())
        })();
        match checked {
            Ok(()) => *compared.entry(*pk).or_insert(0) += 1,
            Err(e) => mismatch = Some(e),
        }
    })?;
    if let Some(e) = mismatch {
        return Err(e);
    }
    let partitions = state
        .global
        .iter()
        .map(|(pk, head)| GlobalPartition {
            topic: name(pk),
            partition: pk.partition,
            cluster: head.cluster,
            blocks: head.next_height,
            messages: head.messages,
            receipts: head.receipts,
            compared: compared.get(pk).copied().unwrap_or(0),
        })
        .collect();
    Ok(GlobalCheck {
        report,
        partitions,
        compared_blocks: compared.values().sum(),
    })
}

/// Opens a stopped node's Raft state (applying its committed log).
fn open_raft_offline(data_dir: &Path) -> Result<(MetaState, GlobalLedger), LedgerCheckError> {
    let path = data_dir.join(crate::RAFT_FILE);
    if !path.exists() {
        return Err(LedgerCheckError::OpenRaft {
            path: path.display().to_string(),
            reason: "no such file".into(),
        });
    }
    courier_consensus::raft::store::open_offline(&path).map_err(|e| LedgerCheckError::OpenRaft {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// [`check_global`] on a stopped node's data directory.
pub fn verify_global_data_dir(data_dir: &Path) -> Result<GlobalCheck, LedgerCheckError> {
    let (state, global) = open_raft_offline(data_dir)?;
    let store = open_offline(data_dir)?;
    check_global(&global, &state, &store)
}

/// `courier message locate` on a stopped node's data directory.
pub fn locate_data_dir(data_dir: &Path, topic: &str, query: &Query) -> Result<Vec<Located>, LedgerCheckError> {
    let (state, global) = open_raft_offline(data_dir)?;
    Ok(global.locate(&state, topic, query)?)
}

/// Opens a stopped broker's ledger for reading.
fn open_offline(data_dir: &Path) -> Result<LedgerStore, LedgerCheckError> {
    let path = data_dir.join(crate::LEDGER_FILE);
    LedgerStore::open(&path, Durability::None).map_err(|source| LedgerCheckError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// One delivery receipt as `courier ledger receipts` shows it.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub topic: String,
    pub partition: i32,
    pub height: u64,
    pub block_hash: String,
    pub receipt: courier_consensus::ledger::Receipt,
}

/// Every receipt in a data directory, optionally for one group or topic,
/// in ledger order per partition.
pub fn receipts(
    data_dir: &Path,
    group: Option<&str>,
    topic: Option<&str>,
) -> Result<Vec<ReceiptRow>, LedgerCheckError> {
    let store = open_offline(data_dir)?;
    let topics = store.topics()?;
    let mut out = Vec::new();
    for t in topics.iter().filter(|t| topic.is_none_or(|name| name == t.name)) {
        for p in 0..t.partitions {
            for (height, hash, block) in store.receipt_blocks(&t.partition_key(p))? {
                for r in block
                    .receipts
                    .into_iter()
                    .filter(|r| group.is_none_or(|g| g == r.group_id))
                {
                    out.push(ReceiptRow {
                        topic: t.name.clone(),
                        partition: p,
                        height,
                        block_hash: hash.to_hex(),
                        receipt: r,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Verifies every ledger in a data directory: chains, batches, and (for a
/// replica's ledger) quorum certificates, against `keys` when given (the
/// members' ed25519 public keys, trusted by the caller) or else the keys
/// the node recorded. `on_block` is called once per verified block, `total`
/// is told the number of blocks up front.
pub fn verify_data_dir(
    data_dir: &Path,
    keys: Option<Vec<Bytes>>,
    total: impl FnOnce(u64),
    on_block: impl FnMut(),
) -> Result<(Vec<PartitionSummary>, KeySource), LedgerCheckError> {
    verify_store(&open_offline(data_dir)?, keys, total, on_block)
}

/// [`verify_data_dir`] on an open ledger (a running node's, through its
/// admin endpoint).
pub fn verify_store(
    store: &LedgerStore,
    keys: Option<Vec<Bytes>>,
    total: impl FnOnce(u64),
    mut on_block: impl FnMut(),
) -> Result<(Vec<PartitionSummary>, KeySource), LedgerCheckError> {
    let topics = store.topics()?;
    let partitions = store.partitions()?;
    let recorded = recorded_members(store)?;
    let (members, source) = match (keys, recorded) {
        (Some(k), _) => {
            let n = k.len();
            (Some(k), KeySource::Given(n))
        }
        (None, Some(k)) => {
            let n = k.len();
            (Some(k), KeySource::Recorded(n))
        }
        (None, None) => (None, KeySource::None),
    };
    total(partitions.iter().map(|(_, s)| s.next_height).sum());
    let mut out = Vec::new();
    for (pk, _) in partitions {
        let topic = topic_name(&topics, &pk);
        let cluster = partition_cluster(store, &pk, members.as_deref()).map_err(|e| match e {
            ClusterKeysError::Store(e) => LedgerCheckError::Store(e),
            ClusterKeysError::Untrusted => LedgerCheckError::UntrustedCluster {
                topic: topic.clone(),
                partition: pk.partition,
            },
        })?;
        let certs = cluster.as_ref().map(|c| c.check(&pk));
        let options = VerifyOptions {
            kafka_batches: true,
            certs,
        };
        let report = verify_ledger(store, &pk, &options, |_| on_block()).map_err(|source| LedgerCheckError::Bad {
            topic: topic.clone(),
            source,
        })?;
        out.push(PartitionSummary {
            topic,
            partition: pk.partition,
            blocks: report.blocks,
            records: report.records,
            receipts: report.receipts,
            certified: report.certified,
            uncertified_tail: report.uncertified_tail,
        });
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok((out, source))
}

/// A partition's name for people: its topic's, or the topic id.
pub fn topic_name(topics: &[courier_consensus::catalog::TopicRecord], pk: &PartitionKey) -> String {
    topics
        .iter()
        .find(|t| t.id == pk.topic_id)
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("<unknown topic {}>", uuid::Uuid::from_bytes(pk.topic_id)))
}

/// The member keys the node recorded for its cluster.
pub fn recorded_members(store: &LedgerStore) -> Result<Option<Vec<Bytes>>, StoreError> {
    Ok(store
        .identity(MEMBERS_KEY)?
        .map(|raw| raw.chunks(32).map(Bytes::copy_from_slice).collect()))
}

/// The keys a partition's certificates verify under.
pub struct PartitionCluster {
    pub members: Vec<Bytes>,
    fingerprint: pbft::Digest,
}

impl PartitionCluster {
    pub fn check(&self, pk: &PartitionKey) -> CertCheck<'_> {
        CertCheck {
            instance: pbft::instance_id(&self.fingerprint, &pk.to_bytes()),
            members: &self.members,
            quorum: 2 * ((self.members.len().max(1) - 1) / 3) + 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterKeysError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the partition's recorded cluster has a key that is not among the keys given")]
    Untrusted,
}

/// The partition's own cluster, as the node recorded it (each of its keys
/// must be among `members` when those are given), else `members`; `None`
/// for a single replica's ledger.
pub fn partition_cluster(
    store: &LedgerStore,
    pk: &PartitionKey,
    members: Option<&[Bytes]>,
) -> Result<Option<PartitionCluster>, ClusterKeysError> {
    let own: Option<Vec<Bytes>> = store
        .identity(&partition_members_key(pk))?
        .map(|raw| raw.chunks(32).map(Bytes::copy_from_slice).collect());
    let members = match (own, members) {
        (Some(own), Some(trusted)) if own.iter().all(|k| trusted.contains(k)) => own,
        (Some(_), Some(_)) => return Err(ClusterKeysError::Untrusted),
        (_, Some(m)) => m.to_vec(),
        (Some(own), None) => own,
        (None, None) => return Ok(None),
    };
    Ok(Some(PartitionCluster {
        fingerprint: pbft::cluster_fingerprint(&members),
        members,
    }))
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Splits a URL query into percent-decoded pairs.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// Percent-encodes a query value.
pub fn encode_query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The topic and query a locate request names: `topic` and either `key`,
/// or `offset` (with `partition`, default 0).
pub fn locate_query(params: &[(String, String)]) -> Result<(String, Query), String> {
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let topic = get("topic").ok_or("topic is required")?.to_owned();
    let query = match (get("key"), get("offset")) {
        (Some(k), None) => Query::Key(k.as_bytes().to_vec()),
        (None, Some(o)) => Query::Offset {
            partition: get("partition")
                .unwrap_or("0")
                .parse()
                .map_err(|_| "partition is a number")?,
            offset: o.parse().map_err(|_| "offset is a number")?,
        },
        _ => return Err("give key or offset (and partition), not both".into()),
    };
    Ok((topic, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip_through_percent_encoding() {
        for v in ["plain", "a b&c=d", "ключ", "100%", "%zz", ""] {
            let q = format!("topic=t&key={}", encode_query_value(v));
            let params = parse_query(&q);
            assert_eq!(params[1], ("key".to_owned(), v.to_owned()), "{q}");
        }
        assert_eq!(parse_query("key=%4"), vec![("key".to_owned(), "%4".to_owned())]);
        assert!(locate_query(&parse_query("topic=t&key=a&offset=1")).is_err());
        assert!(matches!(
            locate_query(&parse_query("topic=t&offset=5&partition=2")),
            Ok((
                _,
                Query::Offset {
                    partition: 2,
                    offset: 5
                }
            ))
        ));
    }
}
