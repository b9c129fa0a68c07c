//! The connectors' Kafka clients (librdkafka, as any Kafka Connect worker
//! would use a Kafka client), and source offsets kept in a topic the way
//! Kafka Connect keeps `connect-offsets`: key `["<connector>", {partition}]`,
//! value `{offset}`, both JSON; the last record of a key wins.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::config::{client_settings, Properties};
use super::ConnectError;

/// How long metadata and watermark requests may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading a topic to its end may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(300);

/// Room for one whole record of the largest file a source sends (librdkafka
/// needs `receive.message.max.bytes` ≥ `fetch.max.bytes` + 512).
const FETCH_MAX_BYTES: &str = "536870912";
const RECEIVE_MAX_BYTES: &str = "537919488";

fn kafka(e: KafkaError) -> ConnectError {
    ConnectError::Kafka(e.to_string())
}

fn config(worker: &Properties, role: &str, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in client_settings(worker, role) {
        c.set(k, v);
    }
    c
}

/// A producer that never duplicates or reorders on retry (idempotent) and
/// takes records up to `record_max` bytes.
pub fn producer(worker: &Properties, record_max: u64) -> Result<FutureProducer, ConnectError> {
    // Headers and the key need a little room beside the value.
    let max = (record_max + (1 << 20)).min(1_000_000_000).to_string();
    config(
        worker,
        "producer",
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.max.bytes", &max),
            ("message.timeout.ms", "300000"),
        ],
    )
    .create()
    .map_err(kafka)
}

/// Consumer settings with room for whole large records.
pub fn consumer_config(worker: &Properties) -> ClientConfig {
    config(
        worker,
        "consumer",
        &[
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.max.bytes", FETCH_MAX_BYTES),
            ("max.partition.fetch.bytes", FETCH_MAX_BYTES),
            ("receive.message.max.bytes", RECEIVE_MAX_BYTES),
        ],
    )
}

/// A consumer that reads partitions it assigns itself, for `connector`.
/// librdkafka assigns only in a consumer group, so it is in
/// `connect-<connector>`, though it never joins it nor commits.
pub fn reader(worker: &Properties, connector: &str) -> Result<BaseConsumer, ConnectError> {
    consumer_config(worker)
        .set("group.id", format!("connect-{connector}"))
        .create()
        .map_err(kafka)
}

/// The partitions of `topic`.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ConnectError> {
    let md = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(kafka)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| ConnectError::Kafka(format!("no metadata for topic {topic}")))?;
    if let Some(e) = t.error() {
        return Err(ConnectError::Kafka(format!(
            "topic {topic}: {}",
            RDKafkaErrorCode::from(e)
        )));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// The high watermark of each partition of `topic`.
pub fn high_watermarks(consumer: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, ConnectError> {
    let mut out = BTreeMap::new();
    for p in partitions(consumer, topic)? {
        let (_, high) = consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT).map_err(kafka)?;
        out.insert(p, high);
    }
    Ok(out)
}

/// The value of header `name` of `m`, as text.
pub fn header<'m, M: Message>(m: &'m M, name: &str) -> Option<&'m str> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads every partition of `topic` from `starts` (the beginning for a
/// partition not named) to the high watermark it had when the scan began,
/// and returns what `extract` takes from each record, in log order per
/// partition. Blocking: run it off the async threads.
pub fn scan<T>(
    consumer: BaseConsumer,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
    mut extract: impl FnMut(&BorrowedMessage<'_>) -> Option<T>,
) -> Result<Vec<T>, ConnectError> {
    let ends = high_watermarks(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut left = BTreeMap::new();
    for (&p, &end) in &ends {
        let start = starts.get(&p).copied().unwrap_or(0).min(end);
        if start < end {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(kafka)?;
            left.insert(p, end);
        }
    }
    let mut out = Vec::new();
    if left.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(kafka)?;
    let deadline = Instant::now() + SCAN_TIMEOUT;
    while !left.is_empty() {
        if Instant::now() > deadline {
            return Err(ConnectError::Kafka(format!(
                "reading {topic} to its end took more than {SCAN_TIMEOUT:?}"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            // The group's coordinator, say: not the partitions read.
            Err(e) => {
                tracing::debug!("reading {topic}: {e}");
                continue;
            }
        };
        if let Some(t) = extract(&m) {
            out.push(t);
        }
        if let Some(&end) = left.get(&m.partition()) {
            if m.offset() + 1 >= end {
                left.remove(&m.partition());
            }
        }
    }
    Ok(out)
}

/// Creates `topic` (one partition) unless it exists (a principal that may
/// use the topic need not be allowed to create topics).
pub async fn ensure_topic(worker: &Properties, topic: &str) -> Result<(), ConnectError> {
    let admin: AdminClient<DefaultClientContext> = config(worker, "admin", &[]).create().map_err(kafka)?;
    let probe: BaseConsumer = consumer_config(worker).create().map_err(kafka)?;
    let t = topic.to_owned();
    let exists = tokio::task::spawn_blocking(move || partitions(&probe, &t).is_ok())
        .await
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(&[new], &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)))
        .await
        .map_err(kafka)?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(ConnectError::Kafka(format!("cannot create {t}: {e}"))),
        }
    }
    Ok(())
}

/// A source connector's offsets.
pub struct SourceOffsets {
    connector: String,
    topic: String,
    producer: FutureProducer,
    /// Partition (as JSON text) → offset.
    entries: BTreeMap<String, Value>,
}

impl SourceOffsets {
    /// Reads `connector`'s offsets from `topic` (creating the topic if it
    /// is missing and the principal may).
    pub async fn load(
        worker: &Properties,
        topic: &str,
        connector: &str,
        producer: FutureProducer,
    ) -> Result<Self, ConnectError> {
        ensure_topic(worker, topic).await?;
        let consumer = reader(worker, connector)?;
        let (t, name) = (topic.to_owned(), connector.to_owned());
        let records = tokio::task::spawn_blocking(move || {
            scan(consumer, &t, &BTreeMap::new(), |m| {
                let key: Value = serde_json::from_slice(m.key()?).ok()?;
                let [owner, partition] = key.as_array()?.as_slice() else {
                    return None;
                };
                if owner.as_str()? != name {
                    return None;
                }
                let value = m.payload().and_then(|v| serde_json::from_slice(v).ok());
                Some((partition.to_string(), value))
            })
        })
        .await
        .map_err(|e| ConnectError::Kafka(e.to_string()))??;
        let mut entries = BTreeMap::new();
        for (partition, value) in records {
            match value {
                Some(v) => entries.insert(partition, v),
                // A null value deletes the key, as in Kafka Connect.
                None => entries.remove(&partition),
            };
        }
        Ok(Self {
            connector: connector.to_owned(),
            topic: topic.to_owned(),
            producer,
            entries,
        })
    }

    pub fn get(&self, partition: &Value) -> Option<&Value> {
        self.entries.get(&partition.to_string())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Value> {
        self.entries.values()
    }

    /// Every (partition, offset).
    pub fn entries(&self) -> impl Iterator<Item = (Value, &Value)> {
        self.entries
            .iter()
            .map(|(k, v)| (serde_json::from_str(k).unwrap_or(Value::Null), v))
    }

    /// Records `offset` for `partition`, durably (acknowledged by the
    /// cluster) before it returns.
    pub async fn put(&mut self, partition: Value, offset: Value) -> Result<(), ConnectError> {
        let key = serde_json::to_vec(&serde_json::json!([self.connector, partition])).unwrap_or_default();
        let value = serde_json::to_vec(&offset).unwrap_or_default();
        self.producer
            .send(FutureRecord::to(&self.topic).key(&key).payload(&value), Timeout::Never)
            .await
            .map_err(|(e, _)| kafka(e))?;
        self.entries.insert(partition.to_string(), offset);
        Ok(())
    }
}
