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
//! its own records before sending anything, so nothing is sent twice. A
//! failed delivery (which may still have landed) is reconciled the same
//! way before the file is tried again.

use std::collections::{BTreeMap, BTreeSet};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
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
    /// Files too large to send, reported once.
    refused: BTreeSet<String>,
}

impl Source<'_> {
    /// Whether `e` has bytes not sent yet.
    fn wants(&self, offsets: &SourceOffsets, e: &Entry) -> bool {
        let done = offsets.get(&file_key(&e.name));
        match self.task.config.mode {
            Mode::File => {
                !self.refused.contains(&e.name)
                    && done.is_none_or(|o| {
                        o["size"].as_u64() != Some(e.size) || o["version"].as_str() != Some(e.version.as_str())
                    })
            }
            Mode::Line => done.and_then(|o| o["position"].as_u64()).unwrap_or(0) < e.size,
        }
    }

    /// Adopts the offsets of this connector's records that reached the
    /// topic but not the offsets topic.
    async fn reconcile(&mut self, offsets: &mut SourceOffsets) -> Result<(), ConnectError> {
        let name = self.task.config.name.clone();
        let worker = self.task.worker.properties.clone();
        let marker = json!({ "topic": self.topic });
        let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
        match offsets.get(&marker) {
            Some(m) => {
                for (p, o) in m["start"].as_object().into_iter().flatten() {
                    if let (Ok(p), Some(o)) = (p.parse(), o.as_i64()) {
                        starts.insert(p, o);
                    }
                }
            }
            None => {
                // The first run: nothing of ours can be in the topic yet.
                let consumer: BaseConsumer = kafka::consumer_config(&worker)
                    .create()
                    .map_err(|e| ConnectError::Kafka(e.to_string()))?;
                let topic = self.topic.clone();
                let ends = tokio::task::spawn_blocking(move || kafka::high_watermarks(&consumer, &topic))
                    .await
                    .map_err(|e| ConnectError::Kafka(e.to_string()))??;
                let start: serde_json::Map<String, Value> =
                    ends.iter().map(|(p, o)| (p.to_string(), json!(o))).collect();
                offsets.put(marker, json!({ "start": start })).await?;
                return Ok(());
            }
        }
        for o in offsets.iter() {
            if let (Some(p), Some(at)) = (o["kafka.partition"].as_i64(), o["kafka.offset"].as_i64()) {
                let s = starts.entry(p as i32).or_insert(0);
                *s = (*s).max(at + 1);
            }
        }
        let consumer: BaseConsumer = kafka::consumer_config(&worker)
            .create()
            .map_err(|e| ConnectError::Kafka(e.to_string()))?;
        let topic = self.topic.clone();
        let found = tokio::task::spawn_blocking(move || {
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
        .map_err(|e| ConnectError::Kafka(e.to_string()))??;
        for (file, offset) in found {
            info!(%file, "adopting the offset of a record a previous run sent: {offset}");
            offsets.put(file_key(&file), offset).await?;
        }
        Ok(())
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
            self.refused.insert(e.name.clone());
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
        let headers = OwnedHeaders::new()
            .insert(Header { key: NAME, value: Some(&e.name) })
            .insert(Header { key: SIZE, value: Some(&size) })
            .insert(Header { key: SHA256, value: Some(&sha256) })
            .insert(Header { key: CONNECTOR, value: Some(&self.task.config.name) })
            .insert(Header { key: OFFSET, value: Some(&offset_text) });
        bar.set_message("ordering on the ledger");
        let record = FutureRecord::to(&self.topic)
            .key(&e.name)
            .payload(&content[..])
            .headers(headers);
        let delivery = self
            .producer
            .send(record, Timeout::Never)
            .instrument(tracing::info_span!("produce", file = %e.name, bytes = e.size))
            .await
            .map_err(|(err, _)| ConnectError::Kafka(err.to_string()))?;
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
            let mut sends = Vec::new();
            let mut start = 0usize;
            let mut last_offset = Value::Null;
            for end in chunk[..=last].iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i) {
                let at = (position + start as u64).to_string();
                let offset = json!({ "position": position + end as u64 + 1 });
                let offset_text = offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: NAME, value: Some(&e.name) })
                    .insert(Header { key: POSITION, value: Some(&at) })
                    .insert(Header { key: CONNECTOR, value: Some(&self.task.config.name) })
                    .insert(Header { key: OFFSET, value: Some(&offset_text) });
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

fn memchr_last(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|b| *b == b'\n')
}
