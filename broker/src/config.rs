//! Broker settings, by their Apache Kafka names wherever Kafka has one.
//!
//! Settings come from built-in defaults, then an optional TOML file
//! (`--config`), then `--set name=value` overrides. In the TOML file a dotted
//! name may be written bare (`auto.create.topics.enable = true`), which TOML
//! reads as nested tables; those are flattened back into the dotted name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("--set {0}: expected name=value")]
    BadOverride(String),
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// Every broker setting, with its Kafka default unless noted.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// This node's id in metadata responses.
    #[serde(rename = "node.id")]
    pub node_id: i32,
    /// Address the Kafka listener binds, `host:port` (a `PLAINTEXT://`
    /// prefix is accepted). Courier default: 127.0.0.1:9092.
    #[serde(rename = "listeners")]
    pub listeners: String,
    /// Address given to clients, when it differs from the bound one.
    #[serde(rename = "advertised.listeners")]
    pub advertised_listeners: Option<String>,
    /// Where the ledger lives. Courier default: ./courier-data.
    #[serde(rename = "log.dirs")]
    pub log_dirs: PathBuf,
    #[serde(rename = "auto.create.topics.enable")]
    pub auto_create_topics_enable: bool,
    #[serde(rename = "num.partitions")]
    pub num_partitions: i32,
    /// Largest record batch accepted (a topic may override with `max.message.bytes`).
    #[serde(rename = "message.max.bytes")]
    pub message_max_bytes: i32,
    /// Largest request frame; anything bigger closes the connection.
    #[serde(rename = "socket.request.max.bytes")]
    pub socket_request_max_bytes: i32,
    /// Recorded and reported; enforcement arrives with the retention work.
    #[serde(rename = "log.retention.ms")]
    pub log_retention_ms: i64,
    #[serde(rename = "log.retention.bytes")]
    pub log_retention_bytes: i64,
    #[serde(rename = "group.initial.rebalance.delay.ms")]
    pub group_initial_rebalance_delay_ms: i64,
    #[serde(rename = "group.min.session.timeout.ms")]
    pub group_min_session_timeout_ms: i32,
    #[serde(rename = "group.max.session.timeout.ms")]
    pub group_max_session_timeout_ms: i32,
    /// Courier: fsync every committed block before acknowledging it.
    #[serde(rename = "ledger.fsync")]
    pub ledger_fsync: bool,
    /// Courier: `host:port` of the admin HTTP endpoint (metrics, health);
    /// empty disables it. Default 127.0.0.1:9644.
    #[serde(rename = "admin.listener")]
    pub admin_listener: String,
    /// A connection that completes no request for this long is closed
    /// (also frees what a client stalled mid-frame holds).
    #[serde(rename = "connections.max.idle.ms")]
    pub connections_max_idle_ms: u64,
    /// Most client connections open at once; more are closed on accept.
    #[serde(rename = "max.connections")]
    pub max_connections: usize,
    /// Largest Fetch response, whatever the client asks for (Kafka's
    /// broker-side `fetch.max.bytes`).
    #[serde(rename = "fetch.max.bytes")]
    pub fetch_max_bytes: i32,
    /// Courier: requests one connection may have in flight before reading stops.
    #[serde(rename = "connection.requests.inflight.max")]
    pub connection_requests_inflight_max: usize,
    /// Courier: the replica cluster's peer addresses, indexed by replica id
    /// (`node.id`). Empty: this node orders its partitions alone.
    #[serde(rename = "cluster.replicas")]
    pub cluster_replicas: Vec<String>,
    /// Courier: each replica's ed25519 public key (hex), indexed like
    /// `cluster.replicas`.
    #[serde(rename = "cluster.public.keys")]
    pub cluster_public_keys: Vec<String>,
    /// Courier: where this node accepts its peers (default: its own entry
    /// in `cluster.replicas`).
    #[serde(rename = "peer.listener")]
    pub peer_listener: Option<String>,
    /// Courier: PEM files for mutual TLS between replicas: the CA that signs
    /// every node's certificate, this node's certificate and its key.
    #[serde(rename = "peer.tls.ca")]
    pub peer_tls_ca: PathBuf,
    #[serde(rename = "peer.tls.cert")]
    pub peer_tls_cert: PathBuf,
    #[serde(rename = "peer.tls.key")]
    pub peer_tls_key: PathBuf,
    /// Courier: this replica's ed25519 signing key (PKCS#8 DER).
    #[serde(rename = "replica.signing.key")]
    pub replica_signing_key: PathBuf,
    /// Courier: PBFT sequence numbers in flight above the last checkpoint.
    #[serde(rename = "pbft.window")]
    pub pbft_window: u64,
    /// Courier: a PBFT batch is cut at this many bytes…
    #[serde(rename = "pbft.batch.bytes.max")]
    pub pbft_batch_bytes_max: usize,
    /// …or when its oldest request has waited this long.
    #[serde(rename = "pbft.batch.delay.ms")]
    pub pbft_batch_delay_ms: u64,
    /// Courier: a request not ordered this long is relayed to every
    /// replica, and after as long again the view changes (doubling per view).
    #[serde(rename = "pbft.view.change.timeout.ms")]
    pub pbft_view_change_timeout_ms: u64,
    /// Courier: how often unfinished consensus work is sent again.
    #[serde(rename = "pbft.retransmit.ms")]
    pub pbft_retransmit_ms: u64,
    /// Courier: the organization that runs this node (recorded in the Raft
    /// state; clients are routed to their own organization's nodes).
    /// Default: `local`.
    #[serde(rename = "node.organization")]
    pub organization: String,
    /// Courier: nodes per PBFT cluster (4 or 7). The nodes of
    /// `cluster.replicas` form clusters of this size in id order (nodes
    /// 0–3, 4–7, …); partitions are spread over the clusters. Default 0:
    /// all nodes form one cluster.
    #[serde(rename = "cluster.size")]
    pub cluster_size: usize,
    /// Courier: this node joins a running deployment rather than being one
    /// of its first nodes. Its `cluster.replicas` lists the running nodes
    /// (whose own settings need not name it) and itself; it asks the Raft
    /// group to add it, and once `cluster.size` joined nodes are registered
    /// they form a new PBFT cluster. Default: false.
    #[serde(rename = "cluster.join")]
    pub cluster_join: bool,
    /// Courier: start only to leave the Raft group (`courier node --leave`):
    /// the node does not register, asks the leader to remove it, and stops.
    /// A node serving a PBFT cluster is refused. Default: false.
    #[serde(rename = "cluster.leave")]
    pub cluster_leave: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            organization: "local".into(),
            cluster_size: 0,
            cluster_join: false,
            cluster_leave: false,
            listeners: "127.0.0.1:9092".into(),
            advertised_listeners: None,
            log_dirs: PathBuf::from("./courier-data"),
            auto_create_topics_enable: true,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            log_retention_ms: 604_800_000,
            log_retention_bytes: -1,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            ledger_fsync: true,
            admin_listener: "127.0.0.1:9644".into(),
            connection_requests_inflight_max: 32,
            connections_max_idle_ms: 600_000,
            max_connections: 10_000,
            fetch_max_bytes: 57_671_680,
            cluster_replicas: Vec::new(),
            cluster_public_keys: Vec::new(),
            peer_listener: None,
            peer_tls_ca: PathBuf::from("ca.pem"),
            peer_tls_cert: PathBuf::from("node.pem"),
            peer_tls_key: PathBuf::from("node.key"),
            replica_signing_key: PathBuf::from("replica.key"),
            pbft_window: 32,
            pbft_batch_bytes_max: 1 << 20,
            pbft_batch_delay_ms: 1,
            pbft_view_change_timeout_ms: 2_000,
            pbft_retransmit_ms: 200,
        }
    }
}

fn flatten(prefix: &str, value: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&name, v, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v);
        }
    }
}

/// Reads a `--set` value: a TOML scalar when it parses as one, else a string.
fn parse_scalar(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

impl BrokerConfig {
    /// Defaults, then `file`, then `overrides` (`name=value`).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::load_layers(&[], file, overrides)
    }

    /// Defaults, then `base` (a mode's own defaults, e.g. `courier dev`'s),
    /// then `file`, then `overrides`.
    pub fn load_layers(base: &[&str], file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut flat = BTreeMap::new();
        for o in base {
            let (name, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.to_string()))?;
            flat.insert(name.trim().to_owned(), parse_scalar(value.trim()));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
            flatten("", toml::Value::Table(table), &mut flat);
        }
        for o in overrides {
            let (name, value) = o.split_once('=').ok_or_else(|| ConfigError::BadOverride(o.clone()))?;
            flat.insert(name.trim().to_owned(), parse_scalar(value.trim()));
        }
        let table: toml::Table = flat.into_iter().collect();
        let config: BrokerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.num_partitions < 1 {
            return bad("num.partitions must be at least 1".into());
        }
        if self.message_max_bytes < 1024 || self.message_max_bytes > self.socket_request_max_bytes {
            return bad("message.max.bytes must be at least 1024 and at most socket.request.max.bytes".into());
        }
        if self.max_connections == 0 || self.connections_max_idle_ms == 0 || self.fetch_max_bytes < 1024 {
            return bad(
                "max.connections and connections.max.idle.ms must be positive, fetch.max.bytes at least 1024".into(),
            );
        }
        if self.connection_requests_inflight_max == 0 {
            return bad("connection.requests.inflight.max must be at least 1".into());
        }
        if !self.cluster_replicas.is_empty() {
            let n = self.cluster_replicas.len();
            let size = self.cluster_size_or_all();
            if !(4..=7).contains(&size) || !(size - 1).is_multiple_of(3) {
                return bad(format!("a PBFT cluster has 4 or 7 nodes (3f + 1), not {size}"));
            }
            // A joining node's list may end with a group still filling up.
            if (!n.is_multiple_of(size) && !self.cluster_join) || n > 240 {
                return bad(format!(
                    "cluster.replicas lists {n} nodes: a multiple of cluster.size ({size}), at most 240"
                ));
            }
            if self.cluster_public_keys.len() != n {
                return bad("cluster.public.keys needs one key per entry of cluster.replicas".into());
            }
            if !(0..n as i32).contains(&self.node_id) {
                return bad(format!(
                    "node.id {} is not a replica of cluster.replicas (0..{n})",
                    self.node_id
                ));
            }
            if self.pbft_window == 0 || self.pbft_batch_bytes_max < 1024 || self.pbft_retransmit_ms == 0 {
                return bad(
                    "pbft.window and pbft.retransmit.ms must be positive, pbft.batch.bytes.max at least 1024".into(),
                );
            }
        }
        self.listen_addr()?;
        Ok(())
    }

    /// The listener's `host:port`, without a security-protocol prefix.
    /// Whether partitions are ordered by a replica cluster.
    pub fn replicated(&self) -> bool {
        !self.cluster_replicas.is_empty()
    }

    /// Nodes per PBFT cluster (`cluster.size`, or every node).
    pub fn cluster_size_or_all(&self) -> usize {
        if self.cluster_size == 0 {
            self.cluster_replicas.len()
        } else {
            self.cluster_size
        }
    }

    pub fn listen_addr(&self) -> Result<String, ConfigError> {
        strip_protocol(&self.listeners)
    }
}

fn strip_protocol(listener: &str) -> Result<String, ConfigError> {
    let addr = match listener.split_once("://") {
        Some(("PLAINTEXT", a)) => a,
        Some((p, _)) => {
            return Err(ConfigError::Invalid(format!(
                "listener protocol {p} is not supported yet (only PLAINTEXT)"
            )))
        }
        None => listener,
    };
    Ok(addr.to_owned())
}

/// Splits an advertised `host:port` (with optional `PLAINTEXT://`).
pub fn host_port(listener: &str) -> Result<(String, u16), ConfigError> {
    let addr = strip_protocol(listener)?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::Invalid(format!("{listener}: expected host:port")))?;
    let port = port
        .parse()
        .map_err(|_| ConfigError::Invalid(format!("{listener}: bad port")))?;
    Ok((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides_with_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "auto.create.topics.enable = false\n\"num.partitions\" = 3\n[log]\ndirs = \"/tmp/x\"\n",
        )
        .unwrap();
        let c = BrokerConfig::load(Some(&path), &["num.partitions=6".into(), "ledger.fsync=false".into()]).unwrap();
        assert!(!c.auto_create_topics_enable);
        assert_eq!(c.num_partitions, 6);
        assert_eq!(c.log_dirs, PathBuf::from("/tmp/x"));
        assert!(!c.ledger_fsync);
    }

    #[test]
    fn mode_defaults_sit_below_the_file_and_overrides() {
        let base = ["group.initial.rebalance.delay.ms=0", "num.partitions=2"];
        let c = BrokerConfig::load_layers(&base, None, &["num.partitions=5".into()]).unwrap();
        assert_eq!((c.group_initial_rebalance_delay_ms, c.num_partitions), (0, 5));
        assert_eq!(
            BrokerConfig::load(None, &[]).unwrap().group_initial_rebalance_delay_ms,
            3000
        );
    }

    #[test]
    fn unknown_and_invalid_settings_are_reported() {
        assert!(BrokerConfig::load(None, &["no.such.setting=1".into()]).is_err());
        assert!(BrokerConfig::load(None, &["num.partitions=0".into()]).is_err());
        assert!(BrokerConfig::load(None, &["num.partitions".into()]).is_err());
        assert!(BrokerConfig::load(None, &["listeners=SSL://x:1".into()]).is_err());
    }
}
