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
    /// The Kafka listeners, as Kafka writes them: `NAME://host:port`,
    /// comma-separated (a bare `host:port` is a PLAINTEXT listener).
    /// Courier default: 127.0.0.1:9092.
    #[serde(rename = "listeners")]
    pub listeners: String,
    /// What clients are told to connect to, per listener name (same
    /// form); a listener not named here advertises its bound address.
    #[serde(rename = "advertised.listeners")]
    pub advertised_listeners: Option<String>,
    /// Listener name to security protocol, `NAME:PROTOCOL,…`. Default:
    /// each protocol's own name maps to it (Kafka's default).
    #[serde(rename = "listener.security.protocol.map")]
    pub listener_security_protocol_map: String,
    /// TLS on SSL and SASL_SSL listeners: a PEM file with this node's
    /// certificate chain and private key (`ssl.keystore.type` = PEM).
    #[serde(rename = "ssl.keystore.location")]
    pub ssl_keystore_location: Option<PathBuf>,
    #[serde(rename = "ssl.keystore.type")]
    pub ssl_keystore_type: String,
    /// PEM file of the CAs whose client certificates are accepted (one per
    /// organization; a client's organization is its CA's `O`).
    #[serde(rename = "ssl.truststore.location")]
    pub ssl_truststore_location: Option<PathBuf>,
    #[serde(rename = "ssl.truststore.type")]
    pub ssl_truststore_type: String,
    /// none | requested | required. Default none (Kafka's). A listener may
    /// override it: `listener.name.<name>.ssl.client.auth`.
    #[serde(rename = "ssl.client.auth")]
    pub ssl_client_auth: String,
    /// Kafka's rules from certificate subject to principal name.
    #[serde(rename = "ssl.principal.mapping.rules")]
    pub ssl_principal_mapping_rules: String,
    /// SASL mechanisms offered (comma-separated): PLAIN, SCRAM-SHA-256,
    /// SCRAM-SHA-512. Courier default: the two SCRAM ones (PLAIN sends
    /// the password itself; enable it on purpose). A listener may
    /// override it: `listener.name.<name>.sasl.enabled.mechanisms`.
    #[serde(rename = "sasl.enabled.mechanisms")]
    pub sasl_enabled_mechanisms: String,
    /// A SASL session must authenticate again after this long (KIP-368);
    /// 0: never. Default 0 (Kafka's).
    #[serde(rename = "connections.max.reauth.ms")]
    pub connections_max_reauth_ms: u64,
    /// A failed authentication is answered (and its connection closed)
    /// this long after it failed, to slow down password guessing. Default
    /// 100 (Kafka's).
    #[serde(rename = "connection.failed.authentication.delay.ms")]
    pub connection_failed_authentication_delay_ms: u64,
    /// Courier: a connection that has not finished its TLS handshake and
    /// SASL exchange this long after it opened is closed. Default 10000.
    #[serde(rename = "authentication.timeout.ms")]
    pub authentication_timeout_ms: u64,
    /// Turns ACL enforcement on: `courier` (or Kafka's
    /// `org.apache.kafka.metadata.authorizer.StandardAuthorizer`). Empty:
    /// every request is allowed. Default empty.
    #[serde(rename = "authorizer.class.name")]
    pub authorizer_class_name: String,
    /// Principals allowed everything, `User:a;User:b`.
    #[serde(rename = "super.users")]
    pub super_users: String,
    /// Allow an action on a resource no ACL names. Default false.
    #[serde(rename = "allow.everyone.if.no.acl.found")]
    pub allow_everyone_if_no_acl_found: bool,
    /// `listener.name.<name>.<setting>` entries, by lower-case listener
    /// name and setting (read from the same file and overrides).
    #[serde(skip)]
    pub listener_overrides: BTreeMap<String, BTreeMap<String, String>>,
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
    /// Courier default 314572800 (300 MiB, Kafka's is 100 MiB): an
    /// off-chain topic takes values of 256 MiB and more.
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
    /// Most client connections open at once, over every listener; more
    /// are closed on accept.
    #[serde(rename = "max.connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address. Default:
    /// unlimited (Kafka's).
    #[serde(rename = "max.connections.per.ip")]
    pub max_connections_per_ip: usize,
    /// Per-address exceptions, `address:count,…` (Kafka's form).
    #[serde(rename = "max.connections.per.ip.overrides")]
    pub max_connections_per_ip_overrides: String,
    /// Courier: a response the client does not take within this long (it
    /// stopped reading) closes its connection, so a slow reader holds no
    /// buffers forever. Default 30000.
    #[serde(rename = "connections.write.timeout.ms")]
    pub connections_write_timeout_ms: u64,
    /// Bytes of requests held at once, over every connection, from when a
    /// frame's header arrives until its response is ready; past it,
    /// connections stop reading (each keeps a fair share, see
    /// `memory.rs`). -1: unbounded (Kafka's default). Courier default:
    /// 536870912 (512 MiB); at least `socket.request.max.bytes`.
    #[serde(rename = "queued.max.request.bytes")]
    pub queued_max_request_bytes: i64,
    /// Courier: a request whose first bytes have arrived must arrive whole
    /// within this long, or its connection closes (a client trickling a
    /// frame holds no memory for long). Default 30000.
    #[serde(rename = "connections.read.timeout.ms")]
    pub connections_read_timeout_ms: u64,
    /// Courier: whether every block read is checked against its recorded
    /// hash and checksum before it is served (see the ledger store). Only
    /// to measure what that costs: off, a block the disk changed is served
    /// as it reads. Default true.
    #[serde(rename = "ledger.verify.reads")]
    pub ledger_verify_reads: bool,
    /// Courier: how fast the background scrubber re-verifies stored blocks
    /// (hash links, batch digests, certificates), in MB/s; 0 turns it off.
    /// Default 8: a pass over 10 GB takes about 21 minutes and a small
    /// fraction of a core.
    #[serde(rename = "ledger.scrub.mb.per.second")]
    pub ledger_scrub_mb_per_second: u64,
    /// Courier: the pause between the end of one scrub pass and the start
    /// of the next. Default 3600000 (an hour).
    #[serde(rename = "ledger.scrub.interval.ms")]
    pub ledger_scrub_interval_ms: u64,
    /// Courier: Raft entries between snapshots of the cluster state (and
    /// kept after one, for followers that lag). Default 1000.
    #[serde(rename = "raft.snapshot.every.entries")]
    pub raft_snapshot_every_entries: u64,
    /// Largest frame a SASL listener reads before the client has
    /// authenticated. Default 524288 (Kafka's).
    #[serde(rename = "sasl.server.max.receive.size")]
    pub sasl_server_max_receive_size: i32,
    /// Courier: a file holding a bearer token the admin endpoint accepts
    /// in place of an administrator's client certificate.
    #[serde(rename = "admin.token.file")]
    pub admin_token_file: Option<PathBuf>,
    /// Courier: serve the admin endpoint over TLS (the listener certificate
    /// of `ssl.keystore.location`). Every client then authenticates, with a
    /// client certificate from a CA of `ssl.truststore.location` whose
    /// principal is one of `super.users`, or with the bearer token;
    /// `/metrics` stays open to loopback. Required when `admin.listener`
    /// binds anything but loopback. Default false.
    #[serde(rename = "admin.ssl.enabled")]
    pub admin_ssl_enabled: bool,
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
    /// Courier: where this node keeps its organization's off-chain
    /// payloads (values of topics with `courier.offchain.threshold.bytes`
    /// that it received from producers): `fs` or `s3`. Default `fs`.
    #[serde(rename = "offchain.storage.type")]
    pub offchain_storage_type: String,
    /// Courier: the `fs` storage's directory; objects go under
    /// `<dir>/<organization>/objects`. Default: `<log.dirs>/offchain`.
    #[serde(rename = "offchain.storage.fs.dir")]
    pub offchain_storage_fs_dir: Option<PathBuf>,
    /// Courier: the `s3` storage's endpoint (empty: AWS for the region).
    #[serde(rename = "offchain.storage.s3.endpoint")]
    pub offchain_storage_s3_endpoint: String,
    #[serde(rename = "offchain.storage.s3.region")]
    pub offchain_storage_s3_region: String,
    #[serde(rename = "offchain.storage.s3.bucket")]
    pub offchain_storage_s3_bucket: String,
    /// Keys start with this prefix, then `<organization>/objects/`.
    #[serde(rename = "offchain.storage.s3.prefix")]
    pub offchain_storage_s3_prefix: String,
    /// Path-style requests (`endpoint/bucket/key`). Default true, as most
    /// S3-compatible servers want.
    #[serde(rename = "offchain.storage.s3.path.style")]
    pub offchain_storage_s3_path_style: bool,
    /// Plain HTTP to the endpoint. Default false.
    #[serde(rename = "offchain.storage.s3.allow.http")]
    pub offchain_storage_s3_allow_http: bool,
    /// An AWS shared-credentials file; unset: the `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` environment variables. Credentials are read
    /// by this node only: they never enter the Raft state, a ledger or a log.
    #[serde(rename = "offchain.storage.s3.credentials.file")]
    pub offchain_storage_s3_credentials_file: Option<PathBuf>,
    /// The profile of that file. Default `default`.
    #[serde(rename = "offchain.storage.s3.credentials.profile")]
    pub offchain_storage_s3_credentials_profile: String,
    /// Courier: how long a consumer's node waits for another
    /// organization's node to serve an off-chain payload before the fetch
    /// fails (retriable). Default 30000.
    #[serde(rename = "offchain.fetch.timeout.ms")]
    pub offchain_fetch_timeout_ms: u64,
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
            offchain_storage_type: "fs".into(),
            offchain_storage_fs_dir: None,
            offchain_storage_s3_endpoint: String::new(),
            offchain_storage_s3_region: "us-east-1".into(),
            offchain_storage_s3_bucket: String::new(),
            offchain_storage_s3_prefix: String::new(),
            offchain_storage_s3_path_style: true,
            offchain_storage_s3_allow_http: false,
            offchain_storage_s3_credentials_file: None,
            offchain_storage_s3_credentials_profile: "default".into(),
            offchain_fetch_timeout_ms: 30_000,
            cluster_size: 0,
            cluster_join: false,
            cluster_leave: false,
            listeners: "127.0.0.1:9092".into(),
            advertised_listeners: None,
            listener_security_protocol_map: DEFAULT_PROTOCOL_MAP.into(),
            ssl_keystore_location: None,
            ssl_keystore_type: "PEM".into(),
            ssl_truststore_location: None,
            ssl_truststore_type: "PEM".into(),
            ssl_client_auth: "none".into(),
            ssl_principal_mapping_rules: "DEFAULT".into(),
            sasl_enabled_mechanisms: "SCRAM-SHA-256,SCRAM-SHA-512".into(),
            connections_max_reauth_ms: 0,
            authentication_timeout_ms: 10_000,
            connection_failed_authentication_delay_ms: 100,
            authorizer_class_name: String::new(),
            super_users: String::new(),
            allow_everyone_if_no_acl_found: false,
            listener_overrides: BTreeMap::new(),
            log_dirs: PathBuf::from("./courier-data"),
            auto_create_topics_enable: true,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 314_572_800,
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
            max_connections_per_ip: usize::MAX,
            max_connections_per_ip_overrides: String::new(),
            connections_write_timeout_ms: 30_000,
            queued_max_request_bytes: 536_870_912,
            connections_read_timeout_ms: 30_000,
            sasl_server_max_receive_size: 524_288,
            ledger_verify_reads: true,
            ledger_scrub_mb_per_second: 8,
            ledger_scrub_interval_ms: 3_600_000,
            raft_snapshot_every_entries: 1000,
            admin_token_file: None,
            admin_ssl_enabled: false,
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
        // `listener.name.<name>.<setting>`: per-listener settings.
        let mut listener_overrides: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let per_listener: Vec<String> = flat
            .keys()
            .filter(|k| k.starts_with("listener.name."))
            .cloned()
            .collect();
        for key in per_listener {
            let value = flat.remove(&key).unwrap_or(toml::Value::Boolean(false));
            let rest = &key["listener.name.".len()..];
            let (name, setting) = rest
                .split_once('.')
                .ok_or_else(|| ConfigError::Invalid(format!("{key}: expected listener.name.<name>.<setting>")))?;
            if !LISTENER_SETTINGS.contains(&setting) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: a listener may override only {}",
                    LISTENER_SETTINGS.join(", ")
                )));
            }
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            listener_overrides
                .entry(name.to_ascii_lowercase())
                .or_default()
                .insert(setting.to_owned(), value);
        }
        let table: toml::Table = flat.into_iter().collect();
        let mut config: BrokerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.listener_overrides = listener_overrides;
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
        if self.queued_max_request_bytes != -1
            && self.queued_max_request_bytes < i64::from(self.socket_request_max_bytes)
        {
            return bad("queued.max.request.bytes must be -1 (unbounded) or at least socket.request.max.bytes".into());
        }
        if self.connections_read_timeout_ms == 0 || self.sasl_server_max_receive_size < 1024 {
            return bad(
                "connections.read.timeout.ms must be positive, sasl.server.max.receive.size at least 1024".into(),
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
        let listeners = self.listener_specs()?;
        if self.ssl_keystore_type != "PEM" || self.ssl_truststore_type != "PEM" {
            return bad("ssl.keystore.type and ssl.truststore.type: only PEM is supported".into());
        }
        if !self.authorizer_class_name.is_empty()
            && !crate::auth::authorizer::AUTHORIZER_NAMES.contains(&self.authorizer_class_name.as_str())
        {
            return bad(format!(
                "authorizer.class.name {:?} is not one Courier has: {}",
                self.authorizer_class_name,
                crate::auth::authorizer::AUTHORIZER_NAMES.join(", ")
            ));
        }
        self.per_ip_overrides()?;
        if !self.admin_listener.is_empty() {
            let (host, _) = host_port(&self.admin_listener)?;
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback && !self.admin_ssl_enabled {
                return bad(format!(
                    "admin.listener {} is not loopback: set admin.ssl.enabled (TLS, with administrators' client certificates or admin.token.file)",
                    self.admin_listener
                ));
            }
        }
        if self.admin_ssl_enabled {
            if self.ssl_keystore_location.is_none() {
                return bad("admin.ssl.enabled needs ssl.keystore.location (the endpoint's certificate)".into());
            }
            if self.ssl_truststore_location.is_none() && self.admin_token_file.is_none() {
                return bad(
                    "admin.ssl.enabled needs ssl.truststore.location (administrators' certificates) or admin.token.file"
                        .into(),
                );
            }
        }
        if self.max_connections_per_ip == 0 || self.connections_write_timeout_ms == 0 {
            return bad("max.connections.per.ip and connections.write.timeout.ms must be positive".into());
        }
        match self.offchain_storage_type.as_str() {
            "fs" => {}
            "s3" if !self.offchain_storage_s3_bucket.is_empty() => {}
            "s3" => return bad("offchain.storage.type=s3 needs offchain.storage.s3.bucket".into()),
            other => return bad(format!("offchain.storage.type {other:?}: expected fs or s3")),
        }
        if self.offchain_fetch_timeout_ms == 0 {
            return bad("offchain.fetch.timeout.ms must be positive".into());
        }
        if self.authentication_timeout_ms == 0 {
            return bad("authentication.timeout.ms must be positive".into());
        }
        for name in self.listener_overrides.keys() {
            if !listeners.iter().any(|l| l.name.eq_ignore_ascii_case(name)) {
                return bad(format!("listener.name.{name}.*: no listener is named {name}"));
            }
        }
        for l in &listeners {
            self.sasl_mechanisms(&l.name)?;
            crate::auth::tls::ClientAuth::parse(self.listener_setting(&l.name, "ssl.client.auth"))
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        crate::auth::mapping::PrincipalMapping::parse(&self.ssl_principal_mapping_rules)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// `max.connections.per.ip.overrides`, parsed.
    pub fn per_ip_overrides(&self) -> Result<Vec<(std::net::IpAddr, usize)>, ConfigError> {
        self.max_connections_per_ip_overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (host, count) = e.rsplit_once(':').ok_or_else(|| {
                    ConfigError::Invalid(format!("max.connections.per.ip.overrides: {e:?} is not address:count"))
                })?;
                let ip = host.trim_matches(|c| c == '[' || c == ']').parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "max.connections.per.ip.overrides: {host:?} is not an IP address"
                    ))
                })?;
                let n = count.parse().map_err(|_| {
                    ConfigError::Invalid(format!("max.connections.per.ip.overrides: bad count in {e:?}"))
                })?;
                Ok((ip, n))
            })
            .collect()
    }

    /// The Kafka listeners, in the order `listeners` gives them.
    pub fn listener_specs(&self) -> Result<Vec<ListenerSpec>, ConfigError> {
        parse_listeners(&self.listeners, &self.listener_security_protocol_map)
    }

    /// A per-listener setting, else the broker-wide one.
    pub fn listener_setting<'a>(&'a self, listener: &str, setting: &str) -> &'a str {
        if let Some(v) = self
            .listener_overrides
            .get(&listener.to_ascii_lowercase())
            .and_then(|o| o.get(setting))
        {
            return v;
        }
        match setting {
            "ssl.client.auth" => &self.ssl_client_auth,
            "sasl.enabled.mechanisms" => &self.sasl_enabled_mechanisms,
            _ => "",
        }
    }

    /// The SASL mechanisms listener `listener` offers.
    pub fn sasl_mechanisms(&self, listener: &str) -> Result<Vec<crate::auth::sasl::Mechanism>, ConfigError> {
        self.listener_setting(listener, "sasl.enabled.mechanisms")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                crate::auth::sasl::Mechanism::parse(m).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "SASL mechanism {m} is not supported (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                    ))
                })
            })
            .collect()
    }

    /// The advertised `host:port` of each listener, by name; `bound` gives
    /// each listener's bound address (for those not advertised otherwise).
    pub fn advertised(&self, bound: &[(String, std::net::SocketAddr)]) -> Result<Vec<(String, String)>, ConfigError> {
        let advertised = match &self.advertised_listeners {
            Some(a) => parse_listeners(a, &self.listener_security_protocol_map)?,
            None => Vec::new(),
        };
        Ok(bound
            .iter()
            .map(|(name, addr)| {
                let addr = advertised
                    .iter()
                    .find(|a| &a.name == name)
                    .map_or_else(|| addr.to_string(), |a| a.addr.clone());
                (name.clone(), addr)
            })
            .collect())
    }

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

    /// The first listener's `host:port`.
    pub fn listen_addr(&self) -> Result<String, ConfigError> {
        Ok(self.listener_specs()?.remove(0).addr)
    }
}

/// Kafka's default `listener.security.protocol.map`.
pub const DEFAULT_PROTOCOL_MAP: &str = "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// Settings a listener may override with `listener.name.<name>.`.
const LISTENER_SETTINGS: [&str; 2] = ["ssl.client.auth", "sasl.enabled.mechanisms"];

/// How a listener secures its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "PLAINTEXT" => Some(Self::Plaintext),
            "SSL" => Some(Self::Ssl),
            "SASL_PLAINTEXT" => Some(Self::SaslPlaintext),
            "SASL_SSL" => Some(Self::SaslSsl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// One entry of `listeners` (or `advertised.listeners`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Upper case, as Kafka compares them.
    pub name: String,
    pub protocol: SecurityProtocol,
    /// `host:port`.
    pub addr: String,
}

/// Parses `NAME://host:port,…` (a bare `host:port` is PLAINTEXT) with
/// the protocol map `NAME:PROTOCOL,…`.
pub fn parse_listeners(listeners: &str, map: &str) -> Result<Vec<ListenerSpec>, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(m);
    let mut protocols = BTreeMap::new();
    for entry in map.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, protocol) = entry.split_once(':').ok_or_else(|| {
            bad(format!(
                "listener.security.protocol.map: {entry:?} is not NAME:PROTOCOL"
            ))
        })?;
        let protocol = SecurityProtocol::parse(protocol.trim())
            .ok_or_else(|| bad(format!("listener.security.protocol.map: unknown protocol {protocol}")))?;
        protocols.insert(name.trim().to_ascii_uppercase(), protocol);
    }
    let mut out: Vec<ListenerSpec> = Vec::new();
    for entry in listeners.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, addr) = match entry.split_once("://") {
            Some((name, addr)) => (name.to_ascii_uppercase(), addr),
            None => ("PLAINTEXT".to_owned(), entry),
        };
        let protocol = *protocols
            .get(&name)
            .ok_or_else(|| bad(format!("listener {name}: not in listener.security.protocol.map")))?;
        if !addr.contains(':') {
            return Err(bad(format!("listener {entry}: expected NAME://host:port")));
        }
        if out.iter().any(|l| l.name == name) {
            return Err(bad(format!("listener {name} is named twice")));
        }
        out.push(ListenerSpec {
            name,
            protocol,
            addr: addr.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(bad("listeners names no listener".into()));
    }
    Ok(out)
}

/// Splits a `host:port` (with an optional `NAME://` in front).
pub fn host_port(listener: &str) -> Result<(String, u16), ConfigError> {
    let addr = listener.split_once("://").map_or(listener, |(_, a)| a);
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
        assert!(BrokerConfig::load(None, &["listeners=NOPE://x:1".into()]).is_err());
        assert!(BrokerConfig::load(None, &["authorizer.class.name=x".into()]).is_err());
        assert!(BrokerConfig::load(None, &["sasl.enabled.mechanisms=GSSAPI".into()]).is_err());
        assert!(BrokerConfig::load(None, &["listener.name.other.ssl.client.auth=required".into()]).is_err());
    }

    #[test]
    fn named_listeners_with_per_listener_settings() {
        let c = BrokerConfig::load(
            None,
            &[
                "listeners=\"SSL://127.0.0.1:9093,SASL_SSL://127.0.0.1:9094,INTERNAL://127.0.0.1:9095\"".into(),
                "listener.security.protocol.map=\"INTERNAL:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\"".into(),
                "ssl.client.auth=required".into(),
                "listener.name.sasl_ssl.ssl.client.auth=none".into(),
                "listener.name.internal.sasl.enabled.mechanisms=PLAIN".into(),
            ],
        )
        .unwrap();
        let l = c.listener_specs().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[2].name.as_str(), l[2].protocol),
            ("INTERNAL", SecurityProtocol::SaslPlaintext)
        );
        assert_eq!(c.listener_setting("SSL", "ssl.client.auth"), "required");
        assert_eq!(c.listener_setting("SASL_SSL", "ssl.client.auth"), "none");
        assert_eq!(
            c.sasl_mechanisms("INTERNAL").unwrap(),
            vec![crate::auth::sasl::Mechanism::Plain]
        );
        assert_eq!(c.sasl_mechanisms("SASL_SSL").unwrap().len(), 2);
        assert_eq!(c.listen_addr().unwrap(), "127.0.0.1:9093");
        let bare = BrokerConfig::load(None, &["listeners=127.0.0.1:1".into()]).unwrap();
        assert_eq!(bare.listener_specs().unwrap()[0].protocol, SecurityProtocol::Plaintext);
    }
}
