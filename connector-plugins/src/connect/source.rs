//! Source connectors: files of a directory or a bucket prefix become
//! records of a topic.
//!
//! In `file` mode each file is one record: key = its name, value = its
//! bytes (above the topic's `courier.offchain.threshold.bytes` they stay
//! in the producing organization's storage), headers `courier.file.name`,
//! `courier.file.size`, `courier.file.sha256`. In `line` mode each complete
//! line (without its `\n`) of a growing text file is one record, with
//! `courier.file.name` and `courier.file.position` (where the line starts).
//! A directory's file is taken once it has not changed for one poll
//! interval (so one still being copied in is not); a bucket's objects
//! appear whole.
//!
//! Exactly once across restarts: after a record is acknowledged, the
//! source's offset for its file (size and version, or the position read
//! to) is written to the offsets topic, and every record carries that
//! offset in `courier.connect.offset` with the connector's name in
//! `courier.connect.connector`. A run that died between the two leaves a
//! record whose offset was not written; the next run reads the topic's
//! partitions from past the last offsets it recorded (or from where they
//! ended when the connector first ran) and adopts the offsets it finds on
//! its own records before sending anything, so nothing is sent twice.
//! Before each send the source records its intent; a send the dead run
//! had under way may still be ordered after it died, so a file with an
//! intent and no record is looked for until `reconcile.grace.ms` (30 s)
//! after the send began, and only then sent again. A failed delivery
//! (which may still have landed) is reconciled the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use tracing::{info, warn, Instrument};

use super::config::Mode;
use super::kafka::{self, SourceOffsets};
use super::place::{Entry, Place};
use super::{ConnectError, Task};

/// Bytes of a text file read at a time in line mode.
const LINE_BATCH_BYTES: u64 = 8 << 20;

pub const NAME: &str = "courier.file.name";
pub const SIZE: &str = "courier.file.size";
pub const SHA256: &str = "courier.file.sha256";
pub const POSITION: &str = "courier.file.position";
pub const CONNECTOR: &str = "courier.connect.connector";
pub const OFFSET: &str = "courier.connect.offset";

fn file_key(name: &str) -> Value {
    json!({ "file": name })
}

pub(super) async fn run(task: Task) -> Result<(), ConnectError> {
    let c = &task.config;
    let topic = c.topics[0].clone();
    let place = Place::open(&c.location).await?;
    let producer = kafka::producer(&task.worker.properties, c.file_max_bytes)?;
    let mut offsets = SourceOffsets::load(
        &task.worker.properties,
        &task.worker.offsets_topic,
        &c.name,
        producer.clone(),
    )
    .await?;
    let mut source = Source {
        task: &task,
        topic,
        place,
        producer,
        refused: BTreeSet::new(),
    };
    source.reconcile(&mut offsets).await?;
    let mut last_seen: BTreeMap<String, Entry> = BTreeMap::new();
    let mut control = task.control.clone();
    loop {
        task.wait_while_paused(&mut control).await;
        let entries = source.place.list().await?;
        let pending: Vec<&Entry> = entries.iter().filter(|e| source.wants(&offsets, e)).collect();
        task.metrics.set_lag(pending.len() as i64);
        for e in pending {
            // Lines are sent only when complete, so a growing text file need not settle.
            let settled = matches!(source.place, Place::Bucket { .. })
                || c.mode == Mode::Line
                || last_seen.get(&e.name) == Some(e);
            if !settled || task.paused() {
                continue;
            }
            let sent = match c.mode {
                Mode::File => source.send_file(&mut offsets, e).await,
                Mode::Line => source.send_lines(&mut offsets, e).await,
            };
            if let Err(err) = sent {
                task.metrics.error();
                warn!(file = %e.name, "not sent: {err}");
                // A delivery that failed may have landed all the same.
                source.reconcile(&mut offsets).await?;
                break;
            }
        }
        last_seen = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        tokio::select! {
            _ = tokio::time::sleep(c.poll_interval) => {}
            _ = control.changed() => {}
        }
    }
}

struct Source<'t> {
    task: &'t Task,
    topic: String,
    place: Place,
    producer: FutureProducer,
    /// Files (name, version) the cluster or `file.max.bytes` refuses,
    /// reported once; a changed file is tried again.
    refused: BTreeSet<(String, String)>,
}

impl Source<'_> {
    /// Whether `e` has bytes not sent yet.
    fn wants(&self, offsets: &SourceOffsets, e: &Entry) -> bool {
        let done = offsets.get(&file_key(&e.name));
        match self.task.config.mode {
            Mode::File => {
                !self.refused.contains(&(e.name.clone(), e.version.clone()))
                    && done.is_none_or(|o| {
                        o["kafka.offset"].is_null()
                            || o["size"].as_u64() != Some(e.size)
                            || o["version"].as_str() != Some(e.version.as_str())
                    })
            }
            Mode::Line => done.and_then(|o| o["position"].as_u64()).unwrap_or(0) < e.size,
        }
    }

    /// Adopts the offsets of this connector's records that reached the
    /// topic but not the offsets topic. A send that was under way when a
    /// run died (its intent recorded, its outcome not) may still be
    /// ordered after the run is gone: such a file is looked for again
    /// until `reconcile.grace.ms` after the send began, and only then
    /// counted as not sent.
    async fn reconcile(&mut self, offsets: &mut SourceOffsets) -> Result<(), ConnectError> {
        let marker = json!({ "topic": self.topic });
        let Some(m) = offsets.get(&marker) else {
            // The first run: nothing of ours can be in the topic yet.
            let consumer = self.consumer()?;
            let topic = self.topic.clone();
            let ends = tokio::task::spawn_blocking(move || kafka::high_watermarks(&consumer, &topic))
                .await
                .map_err(|e| ConnectError::Kafka(e.to_string()))??;
            let start: serde_json::Map<String, Value> = ends.iter().map(|(p, o)| (p.to_string(), json!(o))).collect();
            return offsets.put(marker, json!({ "start": start })).await;
        };
        let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o) in m["start"].as_object().into_iter().flatten() {
            if let (Ok(p), Some(o)) = (p.parse(), o.as_i64()) {
                starts.insert(p, o);
            }
        }
        loop {
            for o in offsets.iter() {
                if let (Some(p), Some(at)) = (o["kafka.partition"].as_i64(), o["kafka.offset"].as_i64()) {
                    let s = starts.entry(p as i32).or_insert(0);
                    *s = (*s).max(at + 1);
                }
            }
            // The last record of each file says how far it was sent.
            let found: BTreeMap<String, Value> = self.scan(&starts).await?.into_iter().collect();
            for (file, offset) in found {
                info!(%file, "adopting the offset of a record a previous run sent: {offset}");
                offsets.put(file_key(&file), offset).await?;
            }
            let pending: Vec<(Value, Value)> = offsets
                .entries()
                .filter(|(_, o)| o["pending"] == json!(true))
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            let Some(since) = pending.iter().filter_map(|(_, o)| o["since_ms"].as_u64()).max() else {
                return Ok(());
            };
            let wait = Duration::from_millis((since + self.task.config.reconcile_grace_ms).saturating_sub(now_ms()));
            if !wait.is_zero() {
                info!(files = pending.len(), "waiting {wait:?} for sends a previous run began");
                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                continue;
            }
            // Past the grace period and still not in the topic: not sent.
            for (key, mut offset) in pending {
                if let Some(o) = offset.as_object_mut() {
                    o.remove("pending");
                    o.remove("since_ms");
                }
                offsets.put(key, offset).await?;
            }
            return Ok(());
        }
    }

    fn consumer(&self) -> Result<BaseConsumer, ConnectError> {
        kafka::reader(&self.task.worker.properties, &self.task.config.name)
    }

    /// This connector's records from `starts` on: each file's name and
    /// the offset its headers carry, with where it landed.
    async fn scan(&self, starts: &BTreeMap<i32, i64>) -> Result<Vec<(String, Value)>, ConnectError> {
        let consumer = self.consumer()?;
        let (topic, name, starts) = (self.topic.clone(), self.task.config.name.clone(), starts.clone());
        tokio::task::spawn_blocking(move || {
            kafka::scan(consumer, &topic, &starts, |m| {
                if kafka::header(m, CONNECTOR)? != name {
                    return None;
                }
                let file = kafka::header(m, NAME)?.to_owned();
                let mut offset: Value = serde_json::from_str(kafka::header(m, OFFSET)?).ok()?;
                offset["kafka.partition"] = json!(m.partition());
                offset["kafka.offset"] = json!(m.offset());
                Some((file, offset))
            })
        })
        .await
        .map_err(|e| ConnectError::Kafka(e.to_string()))?
    }

    /// A record's headers: the file's name, `extra`, this connector's
    /// name and the offset the record brings the file to.
    fn headers(&self, name: &str, extra: &[(&str, &str)], offset: &str) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(extra.len() + 3).insert(Header {
            key: NAME,
            value: Some(name),
        });
        for (key, value) in extra {
            h = h.insert(Header {
                key,
                value: Some(*value),
            });
        }
        h.insert(Header {
            key: CONNECTOR,
            value: Some(&self.task.config.name),
        })
        .insert(Header {
            key: OFFSET,
            value: Some(offset),
        })
    }

    fn bar(&self, name: &str, len: u64) -> ProgressBar {
        let bar = self.task.progress.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} → {}: {name}", self.task.config.name, self.topic));
        bar
    }

    async fn send_file(&mut self, offsets: &mut SourceOffsets, e: &Entry) -> Result<(), ConnectError> {
        let max = self.task.config.file_max_bytes;
        if e.size > max {
            self.refused.insert((e.name.clone(), e.version.clone()));
            return Err(ConnectError::Config(format!(
                "{} holds {} bytes, more than file.max.bytes={max}",
                e.name, e.size
            )));
        }
        let bar = self.bar(&e.name, e.size);
        bar.set_message("reading");
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let content = self
            .place
            .read(&e.name, 0, max + 1, |chunk| {
                hash.update(chunk);
                bar.inc(chunk.len() as u64);
            })
            .instrument(tracing::info_span!("read", file = %e.name))
            .await?;
        if content.len() as u64 != e.size {
            // It changed while it was read: taken when it settles.
            bar.finish_and_clear();
            return Ok(());
        }
        let sha256: String = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut offset = json!({ "size": e.size, "version": e.version, "sha256": sha256 });
        let size = e.size.to_string();
        let offset_text = offset.to_string();
        let headers = self.headers(&e.name, &[(SIZE, &size), (SHA256, &sha256)], &offset_text);
        // The intent first: a run that dies now leaves it for the next to
        // resolve (see `reconcile`).
        let mut intent = offset.clone();
        intent["pending"] = json!(true);
        intent["since_ms"] = json!(now_ms());
        offsets.put(file_key(&e.name), intent).await?;
        bar.set_message("ordering on the ledger");
        let record = FutureRecord::to(&self.topic)
            .key(&e.name)
            .payload(&content[..])
            .headers(headers);
        let delivery = match self
            .producer
            .send(record, Timeout::Never)
            .instrument(tracing::info_span!("produce", file = %e.name, bytes = e.size))
            .await
        {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(code), _)) if refused_for_good(code) => {
                // The cluster will refuse it however often it is sent (too
                // large for the topic, say): counted, reported once, and the
                // intent withdrawn; a changed file is tried again.
                self.refused.insert((e.name.clone(), e.version.clone()));
                self.task.metrics.error();
                bar.abandon_with_message(format!("refused: {code}"));
                tracing::error!(file = %e.name, bytes = e.size, "the cluster refuses this file: {code}");
                return offsets.put(file_key(&e.name), offset).await;
            }
            Err((err, _)) => return Err(ConnectError::Kafka(err.to_string())),
        };
        let (partition, at) = (delivery.partition, delivery.offset);
        offset["kafka.partition"] = json!(partition);
        offset["kafka.offset"] = json!(at);
        offsets.put(file_key(&e.name), offset).await?;
        self.task.metrics.sent(e.size);
        bar.finish_with_message(format!("sent: {}-{partition} offset {at}", self.topic));
        info!(file = %e.name, bytes = e.size, %sha256, partition, offset = at, "file sent");
        Ok(())
    }

    async fn send_lines(&mut self, offsets: &mut SourceOffsets, e: &Entry) -> Result<(), ConnectError> {
        let key = file_key(&e.name);
        let mut position = offsets.get(&key).and_then(|o| o["position"].as_u64()).unwrap_or(0);
        while position < e.size {
            let chunk = self.place.read(&e.name, position, LINE_BATCH_BYTES, |_| {}).await?;
            let Some(last) = memchr_last(&chunk) else {
                if chunk.len() as u64 >= LINE_BATCH_BYTES {
                    return Err(ConnectError::Config(format!(
                        "{}: a line at byte {position} is longer than {LINE_BATCH_BYTES} bytes",
                        e.name
                    )));
                }
                return Ok(()); // The last line is not finished yet.
            };
            offsets
                .put(
                    key.clone(),
                    json!({ "position": position, "pending": true, "since_ms": now_ms() }),
                )
                .await?;
            let mut sends = Vec::new();
            let mut start = 0usize;
            let mut last_offset = Value::Null;
            for end in chunk[..=last]
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i)
            {
                let at = (position + start as u64).to_string();
                let offset = json!({ "position": position + end as u64 + 1 });
                let offset_text = offset.to_string();
                let headers = self.headers(&e.name, &[(POSITION, &at)], &offset_text);
                let record = FutureRecord::to(&self.topic)
                    .key(&e.name)
                    .payload(&chunk[start..end])
                    .headers(headers);
                sends.push(self.producer.send(record, Timeout::Never));
                last_offset = offset;
                start = end + 1;
            }
            let lines = sends.len() as u64;
            let mut last_at = (0, 0);
            for r in futures::future::join_all(sends).await {
                let d = r.map_err(|(err, _)| ConnectError::Kafka(err.to_string()))?;
                last_at = (d.partition, d.offset);
            }
            last_offset["kafka.partition"] = json!(last_at.0);
            last_offset["kafka.offset"] = json!(last_at.1);
            position += last as u64 + 1;
            offsets.put(key.clone(), last_offset).await?;
            self.task.metrics.sent_many(lines, last as u64 + 1);
            info!(file = %e.name, lines, position, "lines sent");
        }
        Ok(())
    }
}

/// Produce errors that sending the same record again cannot cure.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn memchr_last(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|b| *b == b'\n')
}
