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
    /// Inspect and check ledgers.
    #[command(subcommand)]
    Ledger(LedgerCommand),
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
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Re-walk every partition chain (hash links, offsets, CRCs) and report
    /// the first bad block. Exit status 0 only when all is sound.
    Verify {
        /// Data directory (the broker's log.dirs).
        #[arg(long, value_name = "DIR", default_value = "./courier-data")]
        data_dir: PathBuf,
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Dev(args) => dev(args),
        Command::Ledger(LedgerCommand::Verify { data_dir }) => verify(&data_dir),
        Command::Ledger(LedgerCommand::Receipts { data_dir, group, topic }) => {
            list_receipts(&data_dir, group.as_deref(), topic.as_deref())
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("courier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(port) = args.port {
        overrides.push(format!("listeners=127.0.0.1:{port}"));
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
    let config = BrokerConfig::load_layers(&dev_defaults, args.settings.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let data_dir = config.log_dirs.clone();
        let running: RunningBroker = courier::start(config).await?;
        println!("Courier dev broker is running (one node, single replica).");
        println!("  Kafka:  {} (PLAINTEXT)", running.kafka_addr);
        if let Some(admin) = running.admin_addr {
            println!("  Admin:  http://{admin}/metrics  http://{admin}/health");
        }
        println!("  Data:   {}", data_dir.display());
        println!("Connect any Kafka client to {}, e.g.:", running.kafka_addr);
        println!("  kcat -b {} -L", running.kafka_addr);
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
        eprintln!("courier: shutting down");
        running.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn list_receipts(data_dir: &std::path::Path, group: Option<&str>, topic: Option<&str>) -> anyhow::Result<ExitCode> {
    let rows = courier::verify::receipts(data_dir, group, topic)?;
    println!(
        "{:<24} {:>9} {:>8} {:>10}  {:<16} {:<20} {:<24} block hash",
        "topic", "partition", "height", "offset", "group", "principal", "committed at (ms)"
    );
    for r in &rows {
        println!(
            "{:<24} {:>9} {:>8} {:>10}  {:<16} {:<20} {:<24} {}",
            r.topic,
            r.partition,
            r.height,
            r.receipt.offset,
            r.receipt.group_id,
            r.receipt.principal,
            r.receipt.timestamp_ms,
            r.block_hash
        );
    }
    println!("{} receipts", rows.len());
    Ok(ExitCode::SUCCESS)
}

fn verify(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let bar = if std::io::stderr().is_terminal() {
        Some(indicatif::ProgressBar::new(0))
    } else {
        None
    };
    let result = courier::verify::verify_data_dir(
        data_dir,
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
        Ok(partitions) => {
            let blocks: u64 = partitions.iter().map(|p| p.blocks).sum();
            let records: i64 = partitions.iter().map(|p| p.records).sum();
            let receipts: u64 = partitions.iter().map(|p| p.receipts).sum();
            for p in &partitions {
                println!(
                    "ok  {}-{}: {} blocks, {} records, {} receipts",
                    p.topic, p.partition, p.blocks, p.records, p.receipts
                );
            }
            println!(
                "ledger sound: {} partitions, {blocks} blocks, {records} records, {receipts} receipts",
                partitions.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(courier::verify::LedgerCheckError::Bad { topic, source }) => {
            println!("BAD {topic}: {source}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
