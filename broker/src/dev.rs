//! A whole local cluster for development: `courier dev --replicas N` runs N
//! replica nodes in one process, each with its own keys, data directory,
//! Kafka listener and loopback TLS links to the others; `courier certs dev`
//! writes the same identities and one configuration file per node, for a
//! cluster of separate `courier node` processes.
//!
//! Layout under the data directory: `certs/` (CA, each node's TLS
//! certificate and key, each replica's signing key) and `node-<i>/` (node
//! i's `log.dirs`). Node i listens for Kafka clients on the base port + i
//! and for its peers on the peer base port + i.

use std::path::{Path, PathBuf};

use crate::config::{host_port, BrokerConfig, ConfigError};
use crate::replication::identity::{generate_dev, IdentityError};
use crate::{RunningBroker, StartError};

/// Replicas in a cluster `courier dev` may run.
pub const REPLICA_COUNTS: [usize; 3] = [1, 4, 7];

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("a cluster has 1, 4 or 7 replicas, not {0}")]
    Replicas(usize),
    #[error("{0} nodes do not form clusters of 4: give a multiple of 4")]
    Nodes(usize),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot find a free port: {0}")]
    Port(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("nodes {from}.. of {nodes} cannot join later: the first nodes must form whole clusters of {size}, and some must join")]
    Joiners { from: usize, nodes: usize, size: usize },
}

/// Each node's settings for an `n`-replica cluster built on `base`:
/// `base.log_dirs` is the cluster's data directory and `base.listeners`
/// the first node's Kafka address (port 0: every port is picked free).
/// Peer ports start at `peer_port` (0: picked free).
pub fn node_configs(base: &BrokerConfig, n: usize, peer_port: u16) -> Result<Vec<BrokerConfig>, DevError> {
    if !REPLICA_COUNTS.contains(&n) {
        return Err(DevError::Replicas(n));
    }
    multi_cluster_configs(base, n, 0, peer_port)
}

/// [`node_configs`] for `n` nodes forming PBFT clusters of `cluster_size`
/// (0: one cluster of all `n`).
pub fn multi_cluster_configs(
    base: &BrokerConfig,
    n: usize,
    cluster_size: usize,
    peer_port: u16,
) -> Result<Vec<BrokerConfig>, DevError> {
    if cluster_size != 0 && (n == 0 || !n.is_multiple_of(cluster_size)) {
        return Err(DevError::Nodes(n));
    }
    if n == 1 {
        return Ok(vec![base.clone()]);
    }
    let root = base.log_dirs.clone();
    let (ca, nodes) = generate_dev(&root.join("certs"), n)?;
    let specs = base.listener_specs()?;
    let (host, _) = host_port(&specs[0].addr)?;
    let bare = !base.listeners.contains("://");
    let port = |base_port: u16, i: usize| -> Result<u16, DevError> {
        if base_port == 0 {
            free_port(&host)
        } else {
            Ok(base_port + i as u16)
        }
    };
    // Each node has its own admin endpoint (node i on the first's port + i),
    // so `/global` and `/raft` can be compared across nodes.
    let admin = |i: usize| -> Result<String, DevError> {
        if base.admin_listener.is_empty() {
            return Ok(String::new());
        }
        let (admin_host, admin_port) = host_port(&base.admin_listener)?;
        Ok(format!("{admin_host}:{}", port(admin_port, i)?))
    };
    let peers: Vec<String> = (0..n)
        .map(|i| port(peer_port, i).map(|p| format!("{host}:{p}")))
        .collect::<Result<_, _>>()?;
    // Node i listens on each configured listener's port + i.
    let listeners = |i: usize| -> Result<String, DevError> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in &specs {
            let (h, p) = host_port(&spec.addr)?;
            let p = port(p, i)?;
            out.push(if bare {
                format!("{h}:{p}")
            } else {
                format!("{}://{h}:{p}", spec.name)
            });
        }
        Ok(out.join(","))
    };
    (0..n)
        .map(|i| {
            Ok(BrokerConfig {
                node_id: i as i32,
                listeners: listeners(i)?,
                advertised_listeners: None,
                log_dirs: root.join(format!("node-{i}")),
                admin_listener: admin(i)?,
                cluster_replicas: peers.clone(),
                cluster_public_keys: nodes.iter().map(|n| n.public_key.clone()).collect(),
                peer_listener: None,
                peer_tls_ca: ca.clone(),
                peer_tls_cert: nodes[i].cert.clone(),
                peer_tls_key: nodes[i].key.clone(),
                replica_signing_key: nodes[i].signing_key.clone(),
                cluster_size,
                ..base.clone()
            })
        })
        .collect()
}

/// A port that is free now, below Linux's ephemeral range (32768 up):
/// there, the source port of an outgoing connection cannot take it before
/// the node binds it (a port the kernel hands out for `:0` can be).
fn free_port(host: &str) -> Result<u16, DevError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start somewhere different in each process, then walk.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    let mut last = None;
    for _ in 0..SPAN {
        let candidate = (LOW + NEXT.fetch_add(7, Ordering::Relaxed) % SPAN) as u16;
        match std::net::TcpListener::bind((host, candidate)) {
            Ok(_) => return Ok(candidate),
            Err(e) => last = Some(e),
        }
    }
    Err(DevError::Port(
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// Makes nodes `from..` of a generated cluster ones that join it later:
/// the first `from` nodes' settings name only each other (they start the
/// deployment), the later ones set `cluster.join` and name every node.
pub fn make_joiners(configs: &mut [BrokerConfig], from: usize) -> Result<(), DevError> {
    let size = configs.first().map_or(0, |c| c.cluster_size_or_all());
    if from == 0 || from >= configs.len() || size == 0 || !from.is_multiple_of(size) {
        return Err(DevError::Joiners {
            from,
            nodes: configs.len(),
            size,
        });
    }
    for (i, c) in configs.iter_mut().enumerate() {
        if i < from {
            c.cluster_replicas.truncate(from);
            c.cluster_public_keys.truncate(from);
        } else {
            c.cluster_join = true;
        }
    }
    Ok(())
}

/// Starts every node of a local cluster in this process.
pub async fn start_cluster(configs: Vec<BrokerConfig>) -> Result<Vec<RunningBroker>, DevError> {
    let mut running = Vec::with_capacity(configs.len());
    for c in configs {
        running.push(crate::start(c).await?);
    }
    Ok(running)
}

/// Writes one TOML file per node (`node-<i>.toml` under `dir`) for a
/// cluster of separate `courier node` processes, and returns their paths.
pub fn write_node_files(dir: &Path, configs: &[BrokerConfig]) -> Result<Vec<PathBuf>, DevError> {
    let mut paths = Vec::new();
    for c in configs {
        let path = dir.join(format!("node-{}.toml", c.node_id));
        let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let text = format!(
            "# Node {id} of a local Courier cluster (written by `courier certs dev`).\n\
             \"node.id\" = {id}\n\
             \"listeners\" = {listeners:?}\n\
             \"log.dirs\" = {dirs:?}\n\
             \"admin.listener\" = {admin:?}\n\
             \"cluster.replicas\" = [{replicas}]\n\
             \"cluster.public.keys\" = [{keys}]\n\
             \"peer.tls.ca\" = {ca:?}\n\
             \"peer.tls.cert\" = {cert:?}\n\
             \"peer.tls.key\" = {key:?}\n\
             \"replica.signing.key\" = {signing:?}\n\
             \"cluster.size\" = {size}\n\
             \"cluster.join\" = {join}\n\
             \"group.initial.rebalance.delay.ms\" = 0\n",
            id = c.node_id,
            listeners = c.listeners,
            dirs = c.log_dirs.display().to_string(),
            admin = c.admin_listener,
            replicas = list(&c.cluster_replicas),
            keys = list(&c.cluster_public_keys),
            ca = c.peer_tls_ca.display().to_string(),
            cert = c.peer_tls_cert.display().to_string(),
            key = c.peer_tls_key.display().to_string(),
            signing = c.replica_signing_key.display().to_string(),
            size = c.cluster_size,
            join = c.cluster_join,
        );
        std::fs::write(&path, text).map_err(|source| DevError::Write {
            path: path.clone(),
            source,
        })?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_files_load_back_as_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let base = BrokerConfig {
            log_dirs: dir.path().to_owned(),
            listeners: "127.0.0.1:19092".into(),
            ..BrokerConfig::default()
        };
        let configs = node_configs(&base, 4, 29092).unwrap();
        assert_eq!(configs[3].listeners, "127.0.0.1:19095");
        assert_eq!(configs[1].cluster_replicas[2], "127.0.0.1:29094");
        assert_eq!(configs[1].admin_listener, "127.0.0.1:9645");
        let files = write_node_files(dir.path(), &configs).unwrap();
        for (c, f) in configs.iter().zip(files) {
            let loaded = BrokerConfig::load(Some(&f), &[]).unwrap();
            assert_eq!(loaded.node_id, c.node_id);
            assert_eq!(loaded.cluster_replicas, c.cluster_replicas);
            assert_eq!(loaded.cluster_public_keys, c.cluster_public_keys);
            assert_eq!(loaded.replica_signing_key, c.replica_signing_key);
            assert!(loaded.replicated());
        }
        assert!(matches!(node_configs(&base, 3, 0), Err(DevError::Replicas(3))));
    }
}
