//! Produce/consume benchmark driver, using librdkafka (the `rdkafka` crate).
//!
//! For each case (record size × partition count) it creates a fresh topic,
//! produces `--records` records with acks=all as fast as librdkafka will
//! take them, records every acknowledgement latency (enqueue → delivery
//! report), then consumes them all back from the beginning. Every loop is
//! bounded by count and by `--max-seconds`.
//!
//! ```text
//! courier-bench --bootstrap 127.0.0.1:9092 --records 200000
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Records per case.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "1024,100")]
    sizes: Vec<usize>,
    /// Partition counts.
    #[arg(long, value_delimiter = ',', default_value = "1,6")]
    partitions: Vec<i32>,
    /// Upper bound on each phase of each case.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Label printed with each result line.
    #[arg(long, default_value = "courier")]
    label: String,
    /// Process id of the broker, to report its CPU seconds per phase.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Consumers reading in parallel (partitions dealt out round-robin), as
    /// the members of one consumer group would.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// After each saturated run, produce again paced at this fraction of the
    /// measured peak and report the latencies at that load (0 skips it).
    #[arg(long, default_value_t = 0.5)]
    paced_fraction: f64,
    /// Before each case, wait (at most 60 s) until the broker (--broker-pid)
    /// uses less than this percentage of a core, so that no case pays for
    /// work an earlier one left behind (0: do not wait).
    #[arg(long, default_value_t = 0.0)]
    settle_below: f64,
    /// Delete each case's topics once it is measured, so every case starts
    /// on the same cluster (no ledger or idle partitions left by earlier ones).
    #[arg(long)]
    delete_topics: bool,
    /// Also append one tab-separated line per case to this file: label,
    /// size, partitions, produce MB/s, consume MB/s, broker CPU s/GB for
    /// produce, and p50/p99 ms at the paced load (for bench.sh's ratios).
    #[arg(long, value_name = "FILE")]
    results: Option<std::path::PathBuf>,
    /// A librdkafka setting for every client (repeatable), e.g.
    /// `-X security.protocol=SASL_SSL`.
    #[arg(short = 'X', value_name = "NAME=VALUE")]
    client_settings: Vec<String>,
    /// A topic setting for every topic the benchmark creates (repeatable),
    /// e.g. `--topic-config courier.offchain.threshold.bytes=1048576`.
    #[arg(long = "topic-config", value_name = "NAME=VALUE")]
    topic_configs: Vec<String>,
    /// Make every value different (its first 8 bytes are the record's
    /// number), so that storage which names values by content cannot keep
    /// one copy for all of them.
    #[arg(long)]
    distinct_values: bool,
}

/// A client configuration: the bootstrap address and every `-X` setting.
fn client(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.bootstrap);
    for s in &args.client_settings {
        let (k, v) = s.split_once('=').context("-X takes NAME=VALUE")?;
        c.set(k, v);
    }
    Ok(c)
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Waits until the broker uses less than `percent` of a core over a second,
/// at most a minute; says so when it does not.
fn settle(broker: Option<u32>, percent: f64) {
    let Some(pid) = broker.filter(|_| percent > 0.0) else {
        return;
    };
    for _ in 0..60 {
        let Some(before) = cpu_seconds(Some(pid)) else { return };
        std::thread::sleep(Duration::from_secs(1));
        let Some(after) = cpu_seconds(Some(pid)) else { return };
        if (after - before) * 100.0 < percent {
            return;
        }
    }
    println!("(the broker still used {percent}% of a core or more after 60 s)");
}

async fn delete_topics(args: &Args, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(args)?.create()?;
    for r in admin.delete_topics(names, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
    }
    Ok(())
}

/// CPU seconds of (client, broker) spent while `f` runs.
fn measured<T>(broker: Option<u32>, f: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let (c0, b0) = (cpu_seconds(None), broker.and_then(|p| cpu_seconds(Some(p))));
    let out = f();
    let (c1, b1) = (cpu_seconds(None), broker.and_then(|p| cpu_seconds(Some(p))));
    let client = c1.zip(c0).map(|(a, b)| a - b).unwrap_or(f64::NAN);
    (out, client, b1.zip(b0).map(|(a, b)| a - b))
}

/// Collects acknowledgement latencies from librdkafka's delivery callback.
struct Acks {
    latencies_us: Mutex<Vec<u32>>,
    failures: Mutex<u64>,
}

struct BenchContext(Arc<Acks>);

impl ClientContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok(_) => self.0.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).push(us),
            Err(_) => *self.0.failures.lock().unwrap_or_else(|p| p.into_inner()) += 1,
        }
    }
}

struct CaseResult {
    produce_mb_s: f64,
    produce_records_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    consume_mb_s: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn create_topic(args: &Args, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(args)?.create()?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for s in &args.topic_configs {
        let (k, v) = s.split_once('=').context("--topic-config takes NAME=VALUE")?;
        topic = topic.set(k, v);
    }
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Produces `args.records` records of `size` bytes; paced to `rate_bytes_s`
/// when given, else as fast as librdkafka accepts them.
fn produce(args: &Args, topic: &str, size: usize, rate_bytes_s: Option<f64>) -> anyhow::Result<(Duration, Vec<u32>)> {
    let acks = Arc::new(Acks {
        latencies_us: Mutex::new(Vec::with_capacity(args.records)),
        failures: Mutex::new(0),
    });
    let producer: ThreadedProducer<BenchContext> = client(args)?
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "262144")
        .create_with_context(BenchContext(acks.clone()))?;
    let payload = vec![b'x'; size];
    let limit = Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    let interval = rate_bytes_s.map(|r| Duration::from_secs_f64(size as f64 / r));
    for i in 0..args.records {
        if let Some(interval) = interval {
            // Sleep only when more than a millisecond ahead of schedule.
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let distinct = args.distinct_values.then(|| {
            let mut p = payload.clone();
            let n = (i as u64).to_be_bytes();
            let len = p.len().min(8);
            p[..len].copy_from_slice(&n[..len]);
            p
        });
        let value = distinct.as_deref().unwrap_or(&payload[..]);
        let mut record: BaseRecord<'_, (), [u8], Box<Instant>> =
            BaseRecord::with_opaque_to(topic, Box::new(Instant::now())).payload(value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                    if start.elapsed() > limit {
                        bail!("producer stalled at record {i}");
                    }
                }
                Err((e, _)) => bail!("send failed at record {i}: {e}"),
            }
        }
    }
    producer.flush(limit).context("flush")?;
    let elapsed = start.elapsed();
    let failures = *acks.failures.lock().unwrap_or_else(|p| p.into_inner());
    if failures > 0 {
        bail!("{failures} records were not acknowledged");
    }
    let mut lat = std::mem::take(&mut *acks.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    Ok((elapsed, lat))
}

/// Reads every record back with `args.consumers` consumers in parallel;
/// returns the time until the last one finished and the bytes read.
fn consume(args: &Args, topic: &str, partitions: i32) -> anyhow::Result<(Duration, usize)> {
    let consumers = args.consumers.clamp(1, partitions as usize);
    let start = Instant::now();
    let results: Vec<anyhow::Result<(usize, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..consumers)
            .map(|i| {
                let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % consumers == i).collect();
                scope.spawn(move || consume_partitions(args, topic, &mine, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("consumer panicked"))))
            .collect()
    });
    let (mut count, mut bytes) = (0, 0);
    for r in results {
        let (c, b) = r?;
        count += c;
        bytes += b;
    }
    if count != args.records {
        bail!("consumers read {count} of {} records", args.records);
    }
    Ok((start.elapsed(), bytes))
}

/// One consumer: reads `partitions` from the beginning to their end.
fn consume_partitions(args: &Args, topic: &str, partitions: &[i32], start: Instant) -> anyhow::Result<(usize, usize)> {
    let consumer: BaseConsumer = client(args)?
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let limit = Duration::from_secs(args.max_seconds);
    // Stop at the records the partitions hold (waiting for end-of-partition
    // events would time a final long poll too).
    let mut expected = 0usize;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, limit)?;
        expected += (high - low) as usize;
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (mut count, mut bytes) = (0usize, 0usize);
    while count < expected {
        if start.elapsed() > limit {
            bail!("consumer read {count} of {expected} records in {limit:?}");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            bytes += m?.payload().map_or(0, <[u8]>::len);
            count += 1;
        }
    }
    Ok((count, bytes))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "{:<10} {:>6} {:>4} {:>10} {:>12} {:>9} {:>9} {:>10} {:>22} {:>22}",
        "target",
        "size",
        "part",
        "prod MB/s",
        "prod rec/s",
        "p50 ms",
        "p99 ms",
        "cons MB/s",
        "prod CPU s/GB cli+brk",
        "cons CPU s/GB cli+brk"
    );
    let run = Instant::now().elapsed().as_nanos() ^ std::process::id() as u128;
    for &size in &args.sizes {
        for &partitions in &args.partitions {
            let topic = format!("bench-{size}b-{partitions}p-{run:x}");
            settle(args.broker_pid, args.settle_below);
            create_topic(&args, &topic, partitions).await?;
            let (produced, p_client, p_broker) = measured(args.broker_pid, || produce(&args, &topic, size, None));
            let (produce_time, lat) = produced?;
            let (consumed, c_client, c_broker) = measured(args.broker_pid, || consume(&args, &topic, partitions));
            let (consume_time, consumed_bytes) = consumed?;
            let gb = (args.records * size) as f64 / 1e9;
            let per_gb = |client: f64, broker: Option<f64>| match broker {
                Some(b) => format!("{:.1}+{:.1}", client / gb, b / gb),
                None => format!("{:.1}+?", client / gb),
            };
            let total_mb = (args.records * size) as f64 / 1e6;
            let r = CaseResult {
                produce_mb_s: total_mb / produce_time.as_secs_f64(),
                produce_records_s: args.records as f64 / produce_time.as_secs_f64(),
                p50_ms: percentile(&lat, 0.50),
                p99_ms: percentile(&lat, 0.99),
                consume_mb_s: consumed_bytes as f64 / 1e6 / consume_time.as_secs_f64(),
            };
            println!(
                "{:<10} {:>6} {:>4} {:>10.1} {:>12.0} {:>9.2} {:>9.2} {:>10.1} {:>22} {:>22}",
                args.label,
                size,
                partitions,
                r.produce_mb_s,
                r.produce_records_s,
                r.p50_ms,
                r.p99_ms,
                r.consume_mb_s,
                per_gb(p_client, p_broker),
                per_gb(c_client, c_broker)
            );
            let mut paced = (f64::NAN, f64::NAN);
            if args.paced_fraction > 0.0 {
                let rate = r.produce_mb_s * 1e6 * args.paced_fraction;
                let paced_topic = format!("{topic}-paced");
                settle(args.broker_pid, args.settle_below);
                create_topic(&args, &paced_topic, partitions).await?;
                let (elapsed, lat) = produce(&args, &paced_topic, size, Some(rate))?;
                paced = (percentile(&lat, 0.50), percentile(&lat, 0.99));
                println!(
                    "{:<10} {:>6} {:>4} {:>10.1} {:>12.0} {:>9.2} {:>9.2}   (paced at {:.0}% of peak)",
                    args.label,
                    size,
                    partitions,
                    (args.records * size) as f64 / 1e6 / elapsed.as_secs_f64(),
                    args.records as f64 / elapsed.as_secs_f64(),
                    percentile(&lat, 0.50),
                    percentile(&lat, 0.99),
                    args.paced_fraction * 100.0
                );
            }
            if let Some(path) = &args.results {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                writeln!(
                    f,
                    "{}\t{size}\t{partitions}\t{:.1}\t{:.1}\t{:.2}\t{:.2}\t{:.2}",
                    args.label,
                    r.produce_mb_s,
                    r.consume_mb_s,
                    p_broker.map_or(f64::NAN, |b| b / gb),
                    paced.0,
                    paced.1
                )?;
            }
            if args.delete_topics {
                let paced_topic = format!("{topic}-paced");
                let mut names = vec![topic.as_str()];
                if args.paced_fraction > 0.0 {
                    names.push(&paced_topic);
                }
                delete_topics(&args, &names).await?;
            }
        }
    }
    Ok(())
}
