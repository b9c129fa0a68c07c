//! `courier ledger verify`: re-walks every partition chain in a data
//! directory and reports the first bad block.

use std::path::Path;

use bytes::Bytes;
use courier_consensus::ledger::{
    verify_ledger, CertCheck, Durability, LedgerStore, StoreError, VerifyError, VerifyOptions,
};
use courier_consensus::pbft;

use crate::replication::{partition_members_key, MEMBERS_KEY};

/// One verified partition.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    mut on_block: impl FnMut(),
) -> Result<(Vec<PartitionSummary>, KeySource), LedgerCheckError> {
    let store = open_offline(data_dir)?;
    let topics = store.topics()?;
    let partitions = store.partitions()?;
    let recorded: Option<Vec<Bytes>> = store
        .identity(MEMBERS_KEY)?
        .map(|raw| raw.chunks(32).map(Bytes::copy_from_slice).collect());
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
    let fingerprint = members.as_deref().map(pbft::cluster_fingerprint);
    total(partitions.iter().map(|(_, s)| s.next_height).sum());
    let mut out = Vec::new();
    for (pk, _) in partitions {
        let topic = topics
            .iter()
            .find(|t| t.id == pk.topic_id)
            .map(|t| t.name.clone())
            .unwrap_or_else(|| format!("<unknown topic {}>", uuid::Uuid::from_bytes(pk.topic_id)));
        // The partition's own cluster, as recorded; each of its keys must
        // be one the caller trusts (when keys are given).
        let own: Option<Vec<Bytes>> = store
            .identity(&partition_members_key(&pk))?
            .map(|raw| raw.chunks(32).map(Bytes::copy_from_slice).collect());
        let cluster: Option<(Vec<Bytes>, pbft::Digest)> = match (own, &members, &fingerprint) {
            (Some(own), Some(trusted), _) if own.iter().all(|k| trusted.contains(k)) => {
                let f = pbft::cluster_fingerprint(&own);
                Some((own, f))
            }
            (Some(_), Some(_), _) => {
                return Err(LedgerCheckError::UntrustedCluster {
                    topic,
                    partition: pk.partition,
                });
            }
            (_, Some(m), Some(f)) => Some((m.clone(), *f)),
            _ => None,
        };
        let certs = cluster.as_ref().map(|(m, f)| CertCheck {
            instance: pbft::instance_id(f, &pk.to_bytes()),
            members: m,
            quorum: 2 * ((m.len().max(1) - 1) / 3) + 1,
        });
        let options = VerifyOptions {
            kafka_batches: true,
            certs,
        };
        let report = verify_ledger(&store, &pk, &options, |_| on_block()).map_err(|source| LedgerCheckError::Bad {
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
