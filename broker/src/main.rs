//! The `courier` command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use courier::{BrokerConfig, RunningBroker};

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Courier: a Kafka-compatible broker whose partitions are hash-chained ledgers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete local Courier on 127.0.0.1:9092 with its data under ./courier-data.
    Dev(DevArgs),
    /// Run one node of a replica cluster, as its configuration file says.
    Node(NodeArgs),
    /// Generate identities (TLS certificates, signing keys) and node configurations.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Inspect and check ledgers.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Find messages in the global ledger.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Manage SCRAM users through any node (Kafka's AlterUserScramCredentials
    /// and DescribeUserScramCredentials; the password never leaves this
    /// machine, only a salted hash of it).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Run Kafka-Connect-style connectors that move files between an
    /// organization's directory or bucket and topics (REST interface on
    /// `listeners`, Kafka Connect's paths).
    Connect {
        /// Worker settings (bootstrap.servers, the client's security
        /// settings, listeners, offset.storage.topic) and, if it names one,
        /// a connector's (name, connector.class, tasks.max, topic(s), ...).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// How `courier users` reaches and authenticates to a node.
#[derive(Args)]
struct NodeConnection {
    /// A node's Kafka listener (default: the first of bootstrap.servers in
    /// --command-config).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// librdkafka-style settings: security.protocol, sasl.mechanisms,
    /// sasl.username, sasl.password, ssl.ca.location,
    /// ssl.certificate.location, ssl.key.location (e.g. a file `courier dev
    /// --secure` wrote under clients/).
    #[arg(long, value_name = "FILE")]
    command_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Set a user's SCRAM password; it is read from standard input (one line).
    SetPassword {
        #[command(flatten)]
        node: NodeConnection,
        #[arg(long)]
        user: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// PBKDF2 iterations (4096 to 16384).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// List users and the SCRAM mechanisms they have credentials for.
    List {
        #[command(flatten)]
        node: NodeConnection,
    },
    /// Remove a user's credential for one mechanism.
    Delete {
        #[command(flatten)]
        node: NodeConnection,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
    },
}

#[derive(Subcommand)]
enum MessageCommand {
    /// Find a message's partition, block, certificate and delivery
    /// receipts from the global ledger alone (any node gives the same
    /// answer once its Raft state has the blocks).
    Locate {
        #[arg(long)]
        topic: String,
        /// Every message with this key, in any partition of the topic.
        #[arg(long, conflicts_with = "offset", required_unless_present = "offset")]
        key: Option<String>,
        /// The message at this offset of --partition.
        #[arg(long)]
        offset: Option<i64>,
        #[arg(long, default_value_t = 0, requires = "offset")]
        partition: i32,
        #[command(flatten)]
        source: GlobalSource,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where to read the global ledger from.
#[derive(Args)]
struct GlobalSource {
    /// A stopped node's data directory (the broker's log.dirs).
    #[arg(long, value_name = "DIR", default_value = "./courier-data")]
    data_dir: PathBuf,
    /// A running node's admin endpoint (host:port, or https://host:port),
    /// instead of a data directory.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    settings: Settings,
    /// Do not serve: ask the Raft group to remove this node (it must serve
    /// no PBFT cluster), then stop. The node's own settings are used to
    /// reach the group.
    #[arg(long)]
    leave: bool,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A development CA, each node's TLS certificate and signing key, and
    /// one `courier node` configuration file per node (local cluster).
    Dev {
        /// Directory for certificates, node configurations and node data.
        #[arg(long, value_name = "DIR", default_value = "./courier-cluster")]
        out: PathBuf,
        /// Nodes (4 or 7 for one cluster; with --cluster-size, a multiple of it).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Nodes per PBFT cluster (4 or 7); the nodes form clusters in id
        /// order. Default: one cluster of all nodes.
        #[arg(long, default_value_t = 0)]
        cluster_size: usize,
        /// Kafka port of node 0 (node i listens on this + i).
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Peer port of node 0 (node i listens on this + i).
        #[arg(long, default_value_t = 19092)]
        peer_port: u16,
        /// Nodes from this id on join the running deployment later
        /// (`cluster.join`): the first ones' settings name only each other.
        #[arg(long, value_name = "ID")]
        join_from: Option<usize>,
        /// Client certificates too: `name@organization`, comma-separated
        /// (e.g. `alice@org-a,bob@org-b`). Each organization gets a CA
        /// (`<org>-ca.pem`, with `O=<org>`), each client
        /// `users/<name>.pem` and `.key` (`CN=<name>, O=<org>`), and
        /// `client-cas.pem` lists the CAs (for `ssl.truststore.location`);
        /// also the listener certificate `listener.keystore.pem`.
        #[arg(long, value_name = "NAME@ORG,…", value_delimiter = ',')]
        clients: Vec<String>,
    },
}

#[derive(Args)]
struct Settings {
    /// TOML file of broker settings (Kafka names, e.g. num.partitions = 3).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set num.partitions=6 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    overrides: Vec<String>,
}

#[derive(Args)]
struct DevArgs {
    /// Kafka listener port on 127.0.0.1.
    #[arg(long)]
    port: Option<u16>,
    /// Directory for the ledger.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Admin HTTP port (metrics, health) on 127.0.0.1; 0 disables it.
    #[arg(long)]
    admin_port: Option<u16>,
    /// Replicas ordering every partition: 4 or 7 (PBFT, tolerating 1 or 2
    /// Byzantine replicas), or 1 (this node alone).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Nodes, forming PBFT clusters of 4 (a multiple of 4; e.g. 8: two
    /// clusters, partitions spread over both). Overrides --replicas.
    #[arg(long)]
    nodes: Option<usize>,
    /// Peer port of the first replica (the others follow); default: the
    /// Kafka port + 10000.
    #[arg(long)]
    peer_port: Option<u16>,
    /// Lock the doors: SASL_SSL (SCRAM-SHA-512) on the Kafka port, SSL
    /// with client certificates on the port + 100, ACLs enforced, two
    /// organizations with their users; prints how to connect.
    #[arg(long)]
    secure: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Re-walk every partition chain (hash links, offsets, CRCs, quorum
    /// certificates) and report the first bad block. Exit status 0 only when
    /// all is sound.
    Verify {
        /// Data directory (the broker's log.dirs).
        #[arg(long, value_name = "DIR", default_value = "./courier-data")]
        data_dir: PathBuf,
        /// Check certificates against the members' keys in this node
        /// configuration (cluster.public.keys) instead of the keys the node
        /// recorded in its ledger.
        #[arg(long, value_name = "FILE", conflicts_with = "global")]
        config: Option<PathBuf>,
        /// Verify the global ledger instead (hash links, certificates
        /// against the cluster keys in the Raft state) and compare it with
        /// the partition ledgers this node holds; prints a digest that is
        /// the same on every node holding the same global ledger.
        #[arg(long)]
        global: bool,
        /// Ask a running node's admin endpoint (host:port, or
        /// https://host:port) to verify its ledger now (or, with --global,
        /// the global ledger), with the checks its scrubber makes.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
        admin: Option<String>,
    },
    /// List delivery receipts (committed consumer offsets) recorded on the
    /// ledger, with the block that holds each.
    Receipts {
        #[arg(long, value_name = "DIR", default_value = "./courier-data")]
        data_dir: PathBuf,
        /// Only this consumer group's receipts.
        #[arg(long)]
        group: Option<String>,
        /// Only receipts for this topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A closed pipe (`courier message locate … | head`) ends a command that
    // prints quietly, as it does any Unix tool. A node keeps SIGPIPE
    // ignored: a peer or client that goes away mid-write (vectored socket
    // writes can raise it) is an error on that connection, never the end
    // of the process.
    if !matches!(cli.command, Command::Dev(_) | Command::Node(_)) {
        // SAFETY: called before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // What `courier dev` prints for a person is not buried under
    // dependency logs: warnings only (authorization denials among them)
    // unless RUST_LOG asks for more; a node logs its own INFO lines, and
    // only openraft's warnings.
    let default_filter = match cli.command {
        Command::Dev(_) => "warn",
        // On a terminal the progress bars say what moves.
        Command::Connect { .. } if std::io::IsTerminal::is_terminal(&std::io::stderr()) => "warn",
        _ => "info,openraft=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Dev(args) => dev(args),
        Command::Node(args) => node(args),
        Command::Certs(CertsCommand::Dev {
            out,
            nodes,
            cluster_size,
            port,
            peer_port,
            join_from,
            clients,
        }) => clients
            .iter()
            .map(|c| {
                c.split_once('@')
                    .filter(|(n, o)| !n.is_empty() && !o.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--clients {c:?}: expected name@organization"))
            })
            .collect::<anyhow::Result<Vec<(&str, &str)>>>()
            .and_then(|pairs| Ok((pairs, certs_dev(&out, nodes, cluster_size, port, peer_port, join_from)?)))
            .and_then(|(pairs, code)| {
                if pairs.is_empty() {
                    return Ok(code);
                }
                let certs = std::path::absolute(&out)?.join("certs");
                let cas = courier::dev_secure::issue_client_certs(&certs, &pairs)?;
                let keystore = courier::dev_secure::issue_listener_cert(&certs)?;
                println!(
                    "Client certificates under {}; their CAs in {}",
                    certs.join("users").display(),
                    cas.display()
                );
                println!(
                    "Listener certificate and key (ssl.keystore.location): {}",
                    keystore.display()
                );
                Ok(code)
            }),
        Command::Ledger(LedgerCommand::Verify {
            data_dir,
            global: true,
            admin,
            ..
        }) => verify_global(&GlobalSource { data_dir, admin }),
        Command::Ledger(LedgerCommand::Verify { admin: Some(admin), .. }) => verify_running(&admin),
        Command::Ledger(LedgerCommand::Verify { data_dir, config, .. }) => verify(&data_dir, config.as_deref()),
        Command::Message(MessageCommand::Locate {
            topic,
            key,
            offset,
            partition,
            source,
            json,
        }) => locate(&topic, key, offset, partition, &source, json),
        Command::Ledger(LedgerCommand::Receipts { data_dir, group, topic }) => {
            list_receipts(&data_dir, group.as_deref(), topic.as_deref())
        }
        Command::Users(command) => users(command),
        Command::Connect { config } => connect(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("courier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `courier users …`: one request to one node.
fn users(command: UsersCommand) -> anyhow::Result<ExitCode> {
    use courier::client::{ClientSettings, Connection};
    use courier_consensus::security::ScramMechanism;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let node = match &command {
        UsersCommand::SetPassword { node, .. } | UsersCommand::List { node } | UsersCommand::Delete { node, .. } => {
            node
        }
    };
    let settings = match &node.command_config {
        Some(f) => ClientSettings::load(f)?,
        None => ClientSettings::default(),
    };
    let bootstrap = node
        .bootstrap
        .clone()
        .or_else(|| {
            settings
                .values
                .get("bootstrap.servers")
                .and_then(|b| b.split(',').next())
                .map(str::to_owned)
        })
        .ok_or_else(|| anyhow::anyhow!("give --bootstrap, or bootstrap.servers in --command-config"))?;
    let mechanism = |name: &str| {
        ScramMechanism::from_name(name).ok_or_else(|| anyhow::anyhow!("{name} is not SCRAM-SHA-256 or SCRAM-SHA-512"))
    };
    let s = |v: &str| StrBytes::from_string(v.to_owned());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut conn = Connection::open(&bootstrap, &settings).await?;
        let alter = |req: AlterUserScramCredentialsRequest| RequestKind::AlterUserScramCredentials(req);
        let outcome = match command {
            UsersCommand::SetPassword {
                user,
                mechanism: name,
                iterations,
                ..
            } => {
                let m = mechanism(&name)?;
                let mut password = String::new();
                std::io::stdin().read_line(&mut password)?;
                let password = password.trim_end_matches(['\r', '\n']);
                anyhow::ensure!(!password.is_empty(), "no password on standard input");
                let mut salt = [0u8; courier::auth::scram::SALT_BYTES];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                    .map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
                let salted = courier::auth::scram::salted_password(m, password.as_bytes(), &salt, iterations);
                let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                        .with_name(s(&user))
                        .with_mechanism(m.code())
                        .with_iterations(iterations as i32)
                        .with_salt(bytes::Bytes::copy_from_slice(&salt))
                        .with_salted_password(salted.into()),
                ]);
                conn.call(ApiKey::AlterUserScramCredentials, 0, alter(req)).await?
            }
            UsersCommand::Delete {
                user, mechanism: name, ..
            } => {
                let req = AlterUserScramCredentialsRequest::default().with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(s(&user))
                        .with_mechanism(mechanism(&name)?.code()),
                ]);
                conn.call(ApiKey::AlterUserScramCredentials, 0, alter(req)).await?
            }
            UsersCommand::List { .. } => {
                let req = DescribeUserScramCredentialsRequest::default().with_users(None);
                conn.call(
                    ApiKey::DescribeUserScramCredentials,
                    0,
                    RequestKind::DescribeUserScramCredentials(req),
                )
                .await?
            }
        };
        let error = |code: i16, message: &Option<StrBytes>| {
            let name = kafka_protocol::error::ParseResponseErrorCode::err(code)
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|| code.to_string());
            format!("{name}: {}", message.as_ref().map(|m| m.as_str()).unwrap_or(""))
        };
        match outcome {
            ResponseKind::AlterUserScramCredentials(r) => {
                let mut ok = true;
                for u in r.results {
                    if u.error_code == 0 {
                        println!("{}: done", u.user.as_str());
                    } else {
                        ok = false;
                        println!("{}: {}", u.user.as_str(), error(u.error_code, &u.error_message));
                    }
                }
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            ResponseKind::DescribeUserScramCredentials(r) if r.error_code != 0 => {
                eprintln!("courier: {}", error(r.error_code, &r.error_message));
                Ok(ExitCode::FAILURE)
            }
            ResponseKind::DescribeUserScramCredentials(r) => {
                for u in r.results {
                    let mechanisms: Vec<String> = u
                        .credential_infos
                        .iter()
                        .map(|c| {
                            let name = ScramMechanism::from_code(c.mechanism).map_or("?", |m| m.name());
                            format!("{name} ({} iterations)", c.iterations)
                        })
                        .collect();
                    println!("{:<24} {}", u.user.as_str(), mechanisms.join(", "));
                }
                Ok(ExitCode::SUCCESS)
            }
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    })
}

fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(port) = args.port.filter(|_| !args.secure) {
        overrides.push(format!("listeners=127.0.0.1:{port}"));
    }
    let root = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("./courier-data"));
    if args.secure {
        overrides.extend(courier::dev_secure::settings(
            &root.join("certs"),
            args.port.unwrap_or(9092),
        ));
    }
    if let Some(dir) = &args.data_dir {
        overrides.push(format!("log.dirs={:?}", dir.display().to_string()));
    }
    if let Some(port) = args.admin_port {
        overrides.push(if port == 0 {
            "admin.listener=\"\"".into()
        } else {
            format!("admin.listener=127.0.0.1:{port}")
        });
    }
    overrides.extend(args.settings.overrides);
    // As Kafka's shipped development config does: no initial rebalance delay.
    let dev_defaults = ["group.initial.rebalance.delay.ms=0"];
    let mut config = BrokerConfig::load_layers(&dev_defaults, args.settings.config.as_deref(), &overrides)?;
    // Each organization's nodes share one filesystem storage for off-chain
    // values: `<data-dir>/storage/<organization>/objects`.
    if config.offchain_storage_fs_dir.is_none() {
        config.offchain_storage_fs_dir = Some(config.log_dirs.join("storage"));
    }
    let (_, kafka_port) = courier::config::host_port(&config.listen_addr()?)?;
    let peer_port = args.peer_port.unwrap_or(if kafka_port == 0 {
        0
    } else {
        kafka_port.saturating_add(10_000)
    });
    let configs = match args.nodes {
        Some(n) => courier::dev::multi_cluster_configs(&config, n, 4, peer_port)?,
        None => courier::dev::node_configs(&config, args.replicas, peer_port)?,
    };
    // The secure cluster is two organizations': the first half of the
    // nodes run for org A, the rest for org B.
    let mut configs = configs;
    if args.secure {
        let half = configs.len().div_ceil(2);
        for (i, c) in configs.iter_mut().enumerate() {
            c.organization = if i < half { "org-a" } else { "org-b" }.into();
        }
    }
    let clusters = match args.nodes {
        Some(n) => n / 4,
        None => 1,
    };
    if args.secure {
        courier::dev_secure::prepare(&config.log_dirs)?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let secure = args.secure;
    runtime.block_on(async move {
        let data_dir = config.log_dirs.clone();
        let nodes = courier::dev::start_cluster(configs.clone()).await?;
        if secure {
            courier::dev_secure::bootstrap(&nodes[0])
                .await
                .map_err(|e| anyhow::anyhow!("setting up users and ACLs: {e}"))?;
        }
        if nodes.len() == 1 {
            println!("Courier dev broker is running (one node, single replica).");
        } else if clusters == 1 {
            let f = (nodes.len() - 1) / 3;
            println!(
                "Courier dev cluster is running: {} replicas ordering every partition (PBFT, tolerates {f} faulty).",
                nodes.len()
            );
        } else {
            println!(
                "Courier dev cluster is running: {} nodes, one Raft group, {clusters} PBFT clusters of 4 \
                 (each tolerates 1 faulty); partitions are spread over the clusters.",
                nodes.len()
            );
        }
        for (i, n) in nodes.iter().enumerate() {
            let listeners: Vec<String> = n.listeners.iter().map(|(name, a)| format!("{a} ({name})")).collect();
            println!(
                "  Kafka:  {}, node {i} ({})",
                listeners.join(", "),
                configs[i].organization
            );
        }
        if let Some(admin) = nodes[0].admin_addr {
            println!("  Admin:  http://{admin}/metrics  /health  /raft  /global (node i: port + i)");
        }
        println!("  Data:   {}", data_dir.display());
        let mut orgs: Vec<&str> = configs.iter().map(|c| c.organization.as_str()).collect();
        orgs.dedup();
        for org in orgs {
            let dir = configs[0].offchain_storage_fs_dir.clone().unwrap_or_default();
            println!(
                "  Storage of {org} (off-chain values): {}",
                dir.join(org).join("objects").display()
            );
        }
        if secure {
            let storage = configs[0].offchain_storage_fs_dir.clone().unwrap_or_default();
            print_secure_help(&data_dir, &storage, &nodes)?;
        } else {
            println!("Connect any Kafka client to {}, e.g.:", nodes[0].kafka_addr);
            println!("  kcat -b {} -L", nodes[0].kafka_addr);
        }
        if nodes.len() > 1 {
            println!("Type `leader` for the Raft leader, `stop N` / `start N` to stop or restart node N.");
        }
        println!("Press Ctrl-C to stop.");
        let mut nodes: Vec<Option<RunningBroker>> = nodes.into_iter().map(Some).collect();
        // Lines from a detached thread: a blocking read of stdin cannot be
        // cancelled, and must not hold up the exit.
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdin_open = true;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; break; }
                line = lines.recv(), if stdin_open => match line {
                    Some(line) => dev_console(&line, &mut nodes, &configs).await,
                    None => stdin_open = false,
                },
            }
        }
        eprintln!("courier: shutting down");
        for n in nodes.into_iter().flatten() {
            n.stop().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn connect(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The error's own message names its cause.
    runtime
        .block_on(courier_connector_plugins::connect::run(config))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// What `courier dev --secure` prints: the users, and settings for kcat
/// and confluent-kafka to paste.
fn print_secure_help(
    data_dir: &std::path::Path,
    storage: &std::path::Path,
    nodes: &[RunningBroker],
) -> anyhow::Result<()> {
    let addr = |node: &RunningBroker, proto: &str| {
        node.listeners
            .iter()
            .find(|(n, _)| n == proto)
            .map(|(_, a)| a.to_string())
            .unwrap_or_default()
    };
    let (sasl, ssl) = (addr(&nodes[0], "SASL_SSL"), addr(&nodes[0], "SSL"));
    // Org B's sink reads through an org-b node: the second half's first.
    let org_b_ssl = addr(&nodes[nodes.len() / 2], "SSL");
    let certs = data_dir.join("certs");
    let clients = data_dir.join("clients");
    courier::dev_secure::write_client_files(&clients, &certs, &sasl, &ssl)?;
    println!("Secured: SASL_SSL (SCRAM-SHA-512) on {sasl}, SSL with client certificates on {ssl}; ACLs enforced.");
    println!(
        "  Values above {} bytes in `{}` stay in the producing organization's storage (off-chain).",
        courier::dev_secure::OFFCHAIN_THRESHOLD,
        courier::dev_secure::TOPIC
    );
    println!(
        "  Users (password = <name>-secret; certificates in {}):",
        certs.join("users").display()
    );
    for u in courier::dev_secure::users() {
        println!("    {:<11} {}", u.name, u.organization);
    }
    println!(
        "  ACLs: a-producer may write and read `orders` and `connect-offsets` (groups connect-org-a*); \
         b-consumer may read `orders` in groups named org-b* and connect-org-b*; admin is a super user."
    );
    println!(
        "  Settings for each user and listener: {}/<user>.{{sasl,ssl}}.properties",
        clients.display()
    );
    println!("Org A's producer, over SASL_SSL:");
    println!(
        "  echo 'k1:hello' | kcat -F {}/a-producer.sasl.properties -P -t orders -K:",
        clients.display()
    );
    println!("Org B's consumer, over mTLS, committing as a group:");
    println!(
        "  kcat -F {}/b-consumer.ssl.properties -X auto.offset.reset=earliest -G org-b-readers orders",
        clients.display()
    );
    let connectors = courier::dev_secure::write_connector_files(data_dir, storage, &sasl, &org_b_ssl)?;
    println!("Connectors: org A's outbox into `orders`, `orders` into org B's inbox (files checked by SHA-256):");
    for c in &connectors {
        println!("  courier connect --config {}", c.display());
    }
    println!(
        "  then: cp FILE {}/  and it appears in {}/",
        storage.join("org-a").join("outbox").display(),
        storage.join("org-b").join("inbox").display()
    );
    println!("confluent-kafka:");
    println!(
        "  Producer({{'bootstrap.servers': '{sasl}', 'security.protocol': 'SASL_SSL', 'sasl.mechanisms': 'SCRAM-SHA-512', \
         'sasl.username': 'a-producer', 'sasl.password': 'a-producer-secret', 'ssl.ca.location': '{}'}})",
        certs.join("ca.pem").display()
    );
    println!(
        "  Consumer({{'bootstrap.servers': '{ssl}', 'security.protocol': 'SSL', 'ssl.ca.location': '{}', \
         'ssl.certificate.location': '{}', 'ssl.key.location': '{}', 'group.id': 'org-b-readers'}})",
        certs.join("ca.pem").display(),
        certs.join("users/b-consumer.pem").display(),
        certs.join("users/b-consumer.key").display()
    );
    Ok(())
}

/// One command typed to `courier dev`: `leader`, `stop N`, `start N`.
async fn dev_console(line: &str, nodes: &mut [Option<RunningBroker>], configs: &[BrokerConfig]) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let index = words
        .get(1)
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|i| *i < nodes.len());
    match (words.first().copied(), index) {
        (Some("leader"), _) => {
            let leader = nodes
                .iter()
                .flatten()
                .find_map(|n| n.broker.sequencer.replicated().and_then(|r| r.meta.leader()));
            match leader {
                Some(l) => println!("Raft leader: node {l}"),
                None => println!("no Raft leader known"),
            }
        }
        (Some("stop"), Some(i)) => match nodes[i].take() {
            Some(n) => {
                n.stop().await;
                println!("node {i} stopped");
            }
            None => println!("node {i} is not running"),
        },
        (Some("start"), Some(i)) if nodes[i].is_none() => match courier::start(configs[i].clone()).await {
            Ok(n) => {
                println!("node {i} started: Kafka {}", n.kafka_addr);
                nodes[i] = Some(n);
            }
            Err(e) => println!("node {i} did not start: {e}"),
        },
        (Some("start"), Some(i)) => println!("node {i} is running"),
        (None, _) => {}
        _ => println!(
            "commands: leader | stop N | start N   (N from 0 to {})",
            nodes.len() - 1
        ),
    }
}

fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = args.settings.overrides;
    if args.leave {
        overrides.push("cluster.leave=true".into());
    }
    let config = BrokerConfig::load(args.settings.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if config.cluster_leave {
        return runtime.block_on(async move {
            let id = config.node_id;
            let running: RunningBroker = courier::start(config).await?;
            let Some(r) = running.broker.sequencer.replicated().cloned() else {
                running.stop().await;
                anyhow::bail!("a single-replica node is in no Raft group");
            };
            let left = r.leave().await;
            running.stop().await;
            match left {
                Ok(()) => {
                    println!("node {id} left the Raft group; its data directory may be removed");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("courier: node {id} could not leave: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        });
    }
    runtime.block_on(async move {
        let id = config.node_id;
        let replicas = config.cluster_replicas.len();
        let running: RunningBroker = courier::start(config).await?;
        if replicas > 0 {
            println!("Courier node {id} is running (replica {id} of {replicas}).");
        } else {
            println!("Courier node {id} is running (single replica).");
        }
        for (name, addr) in &running.listeners {
            println!("  Kafka:  {addr} ({name})");
        }
        if let Some(admin) = running.admin_addr {
            let scheme = if running.broker.config.admin_ssl_enabled {
                "https"
            } else {
                "http"
            };
            println!("  Admin:  {scheme}://{admin}/metrics  {scheme}://{admin}/health");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        eprintln!("courier: shutting down");
        running.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn certs_dev(
    out: &std::path::Path,
    nodes: usize,
    cluster_size: usize,
    port: u16,
    peer_port: u16,
    join_from: Option<usize>,
) -> anyhow::Result<ExitCode> {
    if nodes == 1 {
        anyhow::bail!("a replica cluster has 4 or 7 nodes");
    }
    let out = std::path::absolute(out)?;
    let base = BrokerConfig {
        log_dirs: out.clone(),
        listeners: format!("127.0.0.1:{port}"),
        ..BrokerConfig::default()
    };
    let mut configs = if cluster_size == 0 {
        courier::dev::node_configs(&base, nodes, peer_port)?
    } else {
        courier::dev::multi_cluster_configs(&base, nodes, cluster_size, peer_port)?
    };
    if let Some(from) = join_from {
        courier::dev::make_joiners(&mut configs, from)?;
    }
    let files = courier::dev::write_node_files(&out, &configs)?;
    println!("Wrote a {nodes}-replica development cluster under {}:", out.display());
    for (c, f) in configs.iter().zip(&files) {
        let joins = if c.cluster_join {
            "    (joins the running nodes)"
        } else {
            ""
        };
        println!(
            "  courier node --config {}    # Kafka {}{joins}",
            f.display(),
            c.listeners
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list_receipts(data_dir: &std::path::Path, group: Option<&str>, topic: Option<&str>) -> anyhow::Result<ExitCode> {
    let rows = courier::verify::receipts(data_dir, group, topic)?;
    println!(
        "{:<24} {:>9} {:>8} {:>10}  {:<16} {:<20} {:<12} {:<24} block hash",
        "topic", "partition", "height", "offset", "group", "principal", "organization", "committed at (ms)"
    );
    for r in &rows {
        println!(
            "{:<24} {:>9} {:>8} {:>10}  {:<16} {:<20} {:<12} {:<24} {}",
            r.topic,
            r.partition,
            r.height,
            r.receipt.offset,
            r.receipt.group_id,
            r.receipt.principal,
            if r.receipt.organization.is_empty() {
                "-"
            } else {
                &r.receipt.organization
            },
            r.receipt.timestamp_ms,
            r.block_hash
        );
    }
    println!("{} receipts", rows.len());
    Ok(ExitCode::SUCCESS)
}

/// `courier ledger verify --admin`: a running node verifies its own ledger.
fn verify_running(addr: &str) -> anyhow::Result<ExitCode> {
    let check = match admin_get(addr, "/ledger/verify")? {
        (200, body) => body,
        (409, body) => {
            println!("BAD {}", body["error"].as_str().unwrap_or("ledger"));
            return Ok(ExitCode::FAILURE);
        }
        (status, body) => anyhow::bail!("{addr} answered {status}: {}", body["error"]),
    };
    let partitions: Vec<courier::verify::PartitionSummary> = serde_json::from_value(check["partitions"].clone())?;
    let source: courier::verify::KeySource = serde_json::from_value(check["keys"].clone())?;
    print_verified(&partitions, &source);
    Ok(ExitCode::SUCCESS)
}

fn verify(data_dir: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let keys = match config {
        Some(path) => {
            let keys = courier::replication::identity::public_keys(&BrokerConfig::load(Some(path), &[])?)?;
            if keys.is_empty() {
                anyhow::bail!(
                    "{} names no cluster.public.keys to check certificates against",
                    path.display()
                );
            }
            Some(keys)
        }
        None => None,
    };
    let bar = if std::io::stderr().is_terminal() {
        Some(indicatif::ProgressBar::new(0))
    } else {
        None
    };
    let result = courier::verify::verify_data_dir(
        data_dir,
        keys,
        |total| {
            if let Some(b) = &bar {
                b.set_length(total);
            }
        },
        || {
            if let Some(b) = &bar {
                b.inc(1);
            }
        },
    );
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok((partitions, source)) => {
            print_verified(&partitions, &source);
            Ok(ExitCode::SUCCESS)
        }
        Err(courier::verify::LedgerCheckError::Bad { topic, source }) => {
            println!("BAD {topic}: {source}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// What `courier ledger verify` prints for a sound ledger.
fn print_verified(partitions: &[courier::verify::PartitionSummary], source: &courier::verify::KeySource) {
    use courier::verify::KeySource;
    let blocks: u64 = partitions.iter().map(|p| p.blocks).sum();
    let records: i64 = partitions.iter().map(|p| p.records).sum();
    let receipts: u64 = partitions.iter().map(|p| p.receipts).sum();
    let certified: u64 = partitions.iter().map(|p| p.certified).sum();
    for p in partitions {
        let certs = if *source == KeySource::None {
            String::new()
        } else {
            format!(
                ", {} certified, {} after the last certificate",
                p.certified, p.uncertified_tail
            )
        };
        println!(
            "ok  {}-{}: {} blocks, {} records, {} receipts{certs}",
            p.topic, p.partition, p.blocks, p.records, p.receipts
        );
    }
    println!(
        "ledger sound: {} partitions, {blocks} blocks, {records} records, {receipts} receipts",
        partitions.len()
    );
    match source {
        KeySource::None => println!("single-replica ledger: no quorum certificates"),
        KeySource::Recorded(n) => println!(
            "{certified} quorum certificates verified against the {n} member keys recorded in the ledger \
             (pass --config to check against keys you trust)"
        ),
        KeySource::Given(n) => {
            println!("{certified} quorum certificates verified against the {n} member keys given")
        }
    }
}

/// A GET to a node's admin endpoint (`host:port`, or `https://host:port`
/// for one with `admin.ssl.enabled`): the status and the body. The CLI
/// authenticates with the bearer token in the file
/// `COURIER_ADMIN_TOKEN_FILE` names, and over TLS with the client
/// certificate and key in the PEM file `COURIER_ADMIN_KEYSTORE` names; it
/// trusts the endpoint's certificate when a CA in `COURIER_ADMIN_CA`
/// signed it.
fn admin_get(addr: &str, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let auth = match std::env::var_os("COURIER_ADMIN_TOKEN_FILE") {
        Some(f) => format!(
            "Authorization: Bearer {}\r\n",
            std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("COURIER_ADMIN_TOKEN_FILE: {e}"))?
                .trim()
        ),
        None => String::new(),
    };
    use std::io::{Read, Write};
    let (tls, addr) = match addr.strip_prefix("https://") {
        Some(a) => (true, a),
        None => (false, addr.strip_prefix("http://").unwrap_or(addr)),
    };
    let tcp = std::net::TcpStream::connect(addr)
        .map_err(|e| anyhow::anyhow!("cannot reach the admin endpoint at {addr}: {e}"))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let mut raw = Vec::new();
    if tls {
        let mut stream = admin_tls(addr, tcp)?;
        stream.write_all(request.as_bytes())?;
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify: what came is whole
            // (HTTP/1.0, the body ends with the connection).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(anyhow::anyhow!("admin endpoint at {addr}: {e}")),
        }
    } else {
        let mut stream = tcp;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut raw)?;
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{addr} sent no HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{addr} sent no HTTP status"))?;
    let body = match serde_json::from_str(body) {
        Ok(b) => b,
        Err(_) if status != 200 => anyhow::bail!("{addr} answered {status}: {}", body.trim()),
        Err(e) => anyhow::bail!("{addr} answered {status} without JSON: {e}"),
    };
    Ok((status, body))
}

/// A TLS connection to an admin endpoint (see [`admin_get`]).
fn admin_tls(
    addr: &str,
    tcp: std::net::TcpStream,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    // The same TLS set-up as `courier users`, by librdkafka's names; the
    // keystore is one PEM file holding both the certificate and its key.
    let mut settings = courier::client::ClientSettings::default();
    let ca = std::env::var("COURIER_ADMIN_CA")
        .map_err(|_| anyhow::anyhow!("set COURIER_ADMIN_CA to the PEM file of the CA that signed the endpoint"))?;
    settings.values.insert("ssl.ca.location".into(), ca);
    if let Ok(keystore) = std::env::var("COURIER_ADMIN_KEYSTORE") {
        settings
            .values
            .insert("ssl.certificate.location".into(), keystore.clone());
        settings.values.insert("ssl.key.location".into(), keystore);
    }
    let config = courier::client::tls_config(&settings)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
    let conn = rustls::ClientConnection::new(config, name)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn verify_global(source: &GlobalSource) -> anyhow::Result<ExitCode> {
    let check = match &source.admin {
        Some(addr) => match admin_get(addr, "/global/verify")? {
            (200, body) => body,
            (409, body) => {
                println!("BAD {}", body["error"].as_str().unwrap_or("global ledger"));
                return Ok(ExitCode::FAILURE);
            }
            (status, body) => anyhow::bail!("{addr} answered {status}: {}", body["error"]),
        },
        None => match courier::verify::verify_global_data_dir(&source.data_dir) {
            Ok(check) => serde_json::to_value(check)?,
            Err(
                e @ (courier::verify::LedgerCheckError::Global(_)
                | courier::verify::LedgerCheckError::GlobalMismatch { .. }),
            ) => {
                println!("BAD {e}");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        },
    };
    let empty = Vec::new();
    for p in check["partitions"].as_array().unwrap_or(&empty) {
        println!(
            "ok  {}-{}: cluster {}, {} blocks, {} messages, {} receipts; {} blocks also in this node's ledger, identical",
            p["topic"].as_str().unwrap_or("?"),
            p["partition"],
            p["cluster"],
            p["blocks"],
            p["messages"],
            p["receipts"],
            p["compared"]
        );
    }
    let r = &check["report"];
    println!(
        "global ledger sound: {} partitions, {} blocks ({} certificates verified against the cluster keys in the Raft state), \
         {} messages, {} receipts; {} blocks compared with this node's partition ledgers",
        r["partitions"], r["blocks"], r["certified"], r["messages"], r["receipts"], check["compared_blocks"]
    );
    println!("global digest: {}", r["digest"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

fn locate(
    topic: &str,
    key: Option<String>,
    offset: Option<i64>,
    partition: i32,
    source: &GlobalSource,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    use courier_consensus::raft::global::Query;
    let found = match &source.admin {
        Some(addr) => {
            let enc = courier::verify::encode_query_value;
            let path = match (&key, offset) {
                (Some(k), _) => format!("/global/locate?topic={}&key={}", enc(topic), enc(k)),
                (None, Some(o)) => format!("/global/locate?topic={}&partition={partition}&offset={o}", enc(topic)),
                (None, None) => anyhow::bail!("give --key or --offset"),
            };
            match admin_get(addr, &path)? {
                (200, body) => body,
                (status, body) => anyhow::bail!("{addr} answered {status}: {}", body["error"]),
            }
        }
        None => {
            let query = match (key, offset) {
                (Some(k), _) => Query::Key(k.into_bytes()),
                (None, Some(offset)) => Query::Offset { partition, offset },
                (None, None) => anyhow::bail!("give --key or --offset"),
            };
            serde_json::to_value(courier::verify::locate_data_dir(&source.data_dir, topic, &query)?)?
        }
    };
    if as_json {
        println!("{found}");
        return Ok(ExitCode::SUCCESS);
    }
    let empty = Vec::new();
    let list = found.as_array().unwrap_or(&empty);
    for m in list {
        let certified = if m["certified"].as_bool() == Some(true) {
            "its own certificate"
        } else {
            "covered by a later certificate"
        };
        println!(
            "{}-{} offset {}: block {} (cluster {}, {certified}), {} bytes, producer id {}, submitted by node {}",
            m["topic"].as_str().unwrap_or("?"),
            m["partition"],
            m["offset"],
            m["height"],
            m["cluster"],
            m["size"],
            m["producer_id"],
            m["origin_node"]
        );
        match m["sender_principal"].as_str() {
            Some(p) => println!(
                "    sent by      {p} of {}",
                m["sender_organization"]
                    .as_str()
                    .filter(|o| !o.is_empty())
                    .unwrap_or("no organization recorded")
            ),
            None => println!("    sent by      (not recorded: block before format 5)"),
        }
        println!("    block hash   {}", m["block_hash"].as_str().unwrap_or(""));
        println!("    key sha256   {}", m["key_sha256"].as_str().unwrap_or("(no key)"));
        println!(
            "    value sha256 {}",
            m["value_sha256"].as_str().unwrap_or("(null value)")
        );
        let receipts = m["receipts"].as_array().unwrap_or(&empty);
        if receipts.is_empty() {
            println!("    no delivery receipt yet");
        }
        for r in receipts {
            println!(
                "    delivered to group {} ({} of {}): committed offset {} in block {} ({}) at {} ms",
                r["group"].as_str().unwrap_or("?"),
                r["principal"].as_str().unwrap_or("?"),
                r["organization"]
                    .as_str()
                    .filter(|o| !o.is_empty())
                    .unwrap_or("no organization recorded"),
                r["committed_offset"],
                r["height"],
                r["block_hash"].as_str().map_or("", |h| &h[..h.len().min(16)]),
                r["timestamp_ms"]
            );
        }
    }
    println!("{} messages found", list.len());
    Ok(ExitCode::SUCCESS)
}
