//! Sink connectors: records of topics become files of the receiving
//! organization's directory or bucket.
//!
//! Each task is a member of the connector's consumer group
//! (`connect-<name>`). A record the file source sent whole is checked
//! against its `courier.file.size` and `courier.file.sha256` headers and
//! written atomically as `courier.file.name` (a record without a usable
//! name becomes `<topic>-<partition>-<offset>`); a record sent line by
//! line is written at its `courier.file.position` in the file it names.
//! Only once the bytes are durable is the offset committed, and Courier
//! records each commit as a delivery receipt on the ledger: a receipt
//! never covers a record that was not written.
//!
//! Exactly once across restarts: records after the last commit are read
//! again and written again under the same names with the same bytes (a
//! whole file replaces itself atomically, a line lands where it was), so
//! what a reader of the directory or bucket sees is each record once. A
//! record that fails its check is never written and never committed: the
//! task stops as FAILED with the reason.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tracing::{info, warn, Instrument};

use super::kafka;
use super::place::{valid_name, Place};
use super::source::{NAME, POSITION, SHA256, SIZE};
use super::{ConnectError, Metrics, Task};

/// Line records are committed together once no record came for this long
/// (or after [`LINES_PER_COMMIT`] of them).
const COMMIT_IDLE: Duration = Duration::from_millis(200);
const LINES_PER_COMMIT: usize = 1000;

/// Reports the group's lag from librdkafka's statistics.
struct LagContext {
    metrics: Arc<Metrics>,
    task: usize,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.metrics.set_task_lag(self.task, lag);
    }
}

impl ConsumerContext for LagContext {}

pub(super) async fn run(task: Task) -> Result<(), ConnectError> {
    let c = &task.config;
    let place = Place::open(&c.location).await?;
    let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
    let mut control = task.control.clone();
    loop {
        task.wait_while_paused(&mut control).await;
        let mut settings: ClientConfig = kafka::consumer_config(&task.worker.properties);
        settings
            .set("group.id", &c.group)
            .set("enable.auto.offset.store", "false")
            .set("statistics.interval.ms", "1000");
        let consumer: StreamConsumer<LagContext> = settings
            .create_with_context(LagContext {
                metrics: task.metrics.clone(),
                task: task.id,
            })
            .map_err(|e| ConnectError::Kafka(e.to_string()))?;
        consumer
            .subscribe(&topics)
            .map_err(|e| ConnectError::Kafka(e.to_string()))?;
        let mut sink = Sink {
            task: &task,
            place: &place,
            dirty: BTreeSet::new(),
            uncommitted: 0,
        };
        loop {
            tokio::select! {
                _ = control.changed() => {
                    if task.paused() {
                        sink.commit(&consumer).await?;
                        break; // Leaves the group until resumed.
                    }
                }
                r = tokio::time::timeout(COMMIT_IDLE, consumer.recv()) => match r {
                    Err(_) => sink.commit(&consumer).await?,
                    // librdkafka reports what it retries itself (a broker
                    // connection lost, say): nothing failed to be written.
                    Ok(Err(e)) => warn!("consuming: {e}"),
                    Ok(Ok(m)) => {
                        let whole = sink.deliver(&m).await?;
                        consumer.store_offset_from_message(&m).map_err(|e| ConnectError::Kafka(e.to_string()))?;
                        sink.uncommitted += 1;
                        if whole || sink.uncommitted >= LINES_PER_COMMIT {
                            sink.commit(&consumer).await?;
                        }
                    }
                }
            }
        }
    }
}

struct Sink<'t> {
    task: &'t Task,
    place: &'t Place,
    /// Files written line by line since the last commit.
    dirty: BTreeSet<String>,
    uncommitted: usize,
}

impl Sink<'_> {
    /// Makes every write durable, then commits the offsets of the records
    /// written (each commit a delivery receipt). The commit is sent
    /// without waiting for its answer (librdkafka sends commits in order):
    /// one lost to a crash only means those records are written again.
    async fn commit(&mut self, consumer: &StreamConsumer<LagContext>) -> Result<(), ConnectError> {
        if self.uncommitted == 0 {
            return Ok(());
        }
        for name in std::mem::take(&mut self.dirty) {
            self.place.sync(&name).await?;
        }
        consumer
            .commit_consumer_state(CommitMode::Async)
            .map_err(|e| ConnectError::Kafka(format!("committing: {e}")))?;
        self.uncommitted = 0;
        Ok(())
    }

    /// Writes one record; true when it was a whole file.
    async fn deliver(&mut self, m: &BorrowedMessage<'_>) -> Result<bool, ConnectError> {
        let Some(value) = m.payload() else {
            return Ok(false); // A tombstone: nothing to write.
        };
        let fallback = || format!("{}-{}-{:020}", m.topic(), m.partition(), m.offset());
        let name = match kafka::header(m, NAME) {
            Some(n) if valid_name(n) => n.to_owned(),
            Some(n) => {
                warn!(
                    offset = m.offset(),
                    "the record names {n:?}, not a plain relative path: writing it as {}",
                    fallback()
                );
                fallback()
            }
            None => fallback(),
        };
        if let Some(position) = kafka::header(m, POSITION) {
            let position: u64 = position
                .parse()
                .map_err(|_| self.refuse(m, format!("{POSITION}={position} is not a number")))?;
            let mut line = Vec::with_capacity(value.len() + 1);
            line.extend_from_slice(value);
            line.push(b'\n');
            self.place.write_at(&name, position, &line).await?;
            self.dirty.insert(name);
            self.task.metrics.sent(line.len() as u64);
            return Ok(false);
        }
        if let Some(size) = kafka::header(m, SIZE) {
            if size.parse::<u64>().ok() != Some(value.len() as u64) {
                return Err(self.refuse(m, format!("{} bytes arrived; {SIZE} says {size}", value.len())));
            }
        }
        let sha256 = kafka::header(m, SHA256);
        if let Some(want) = sha256 {
            let got: String = ring::digest::digest(&ring::digest::SHA256, value)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if got != want {
                return Err(self.refuse(m, format!("the bytes' SHA-256 is {got}; {SHA256} says {want}")));
            }
        }
        let bar = self.task.progress.add(ProgressBar::new(value.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!(
            "{} ← {}-{} offset {}: {name}",
            self.task.config.name,
            m.topic(),
            m.partition(),
            m.offset()
        ));
        bar.set_message("writing");
        self.place
            .write(&name, value, |n| bar.inc(n as u64))
            .instrument(tracing::info_span!("write", file = %name, bytes = value.len()))
            .await?;
        bar.finish_with_message(if sha256.is_some() {
            "verified, written"
        } else {
            "written"
        });
        self.task.metrics.sent(value.len() as u64);
        info!(
            file = %name,
            bytes = value.len(),
            sha256 = sha256.unwrap_or("-"),
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "file received"
        );
        Ok(true)
    }

    fn refuse(&self, m: &BorrowedMessage<'_>, why: String) -> ConnectError {
        self.task.metrics.error();
        ConnectError::Verify {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            why,
        }
    }
}
