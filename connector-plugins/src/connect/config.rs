//! Connector and worker properties, by Kafka Connect's names.
//!
//! One file (`courier connect --config FILE`) holds the worker's settings
//! (`bootstrap.servers`, the client's security settings, `listeners` for
//! the REST interface, `offset.storage.topic`) and, when it names one
//! (`name`, `connector.class`), a connector's: as `connect-standalone`'s two
//! files in one. Client settings use librdkafka's names
//! (`security.protocol`, `sasl.*`, `ssl.*`); `producer.` and `consumer.`
//! prefixes set them for one kind of client only, as in Kafka Connect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::storage::{S3Credentials, S3Settings};

use super::ConnectError;

/// `name=value` settings.
pub type Properties = BTreeMap<String, String>;

/// Reads a Java-style properties file: `key=value` or `key: value`, `#`
/// and `!` comments, blank lines (no line continuations).
pub fn load(path: &Path) -> Result<Properties, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|line| ConnectError::Config(format!("{}: line {line} is not key=value", path.display())))
}

/// The properties in `text`, or the number of the first line that is not one.
pub fn parse(text: &str) -> Result<Properties, usize> {
    let mut out = Properties::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let at = line.find(['=', ':']).ok_or(i + 1)?;
        let (k, v) = (line[..at].trim(), line[at + 1..].trim());
        if k.is_empty() {
            return Err(i + 1);
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Client settings passed to librdkafka from the worker's properties.
const CLIENT_PREFIXES: &[&str] = &["security.", "sasl.", "ssl.", "client."];

/// The librdkafka settings of a `role` client (`producer` or `consumer`):
/// `bootstrap.servers`, the security settings, then `<role>.*`.
pub fn client_settings(worker: &Properties, role: &str) -> Properties {
    let mut out = Properties::new();
    for (k, v) in worker {
        if k == "bootstrap.servers" || CLIENT_PREFIXES.iter().any(|p| k.starts_with(p)) {
            out.insert(k.clone(), v.clone());
        }
    }
    let prefix = format!("{role}.");
    for (k, v) in worker {
        // `consumer.override.*` are a connector's own settings (KIP-458).
        if let Some(k) = k.strip_prefix(&prefix).filter(|k| !k.starts_with("override.")) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    out
}

/// Converters that move bytes unchanged: the only ones a connector that
/// carries files needs.
const CONVERTERS: &[&str] = &[
    "org.apache.kafka.connect.converters.ByteArrayConverter",
    "org.apache.kafka.connect.storage.StringConverter",
];

/// What a connector does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    FileSource,
    S3Source,
    FileSink,
    S3Sink,
}

impl Class {
    /// Every class, with its full name and the alias Kafka Connect would
    /// also accept (the simple name without `Connector`).
    pub const ALL: [(Class, &'static str, &'static str); 4] = [
        (Class::FileSource, "courier.connect.FileSourceConnector", "FileSource"),
        (Class::S3Source, "courier.connect.S3SourceConnector", "S3Source"),
        (Class::FileSink, "courier.connect.FileSinkConnector", "FileSink"),
        (Class::S3Sink, "courier.connect.S3SinkConnector", "S3Sink"),
    ];

    fn parse(name: &str) -> Option<Class> {
        Self::ALL.iter().find_map(|(c, full, alias)| {
            let simple = full.rsplit('.').next().unwrap_or(full);
            (name == *full || name == *alias || name == simple).then_some(*c)
        })
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(c, ..)| *c == self)
            .map(|(_, full, _)| *full)
            .unwrap_or_default()
    }

    pub fn is_source(self) -> bool {
        matches!(self, Class::FileSource | Class::S3Source)
    }
}

/// How a source turns files into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One record per file: the file's bytes, named by its key.
    File,
    /// One record per line of a text file, as the file grows.
    Line,
}

/// Where a connector's files are.
#[derive(Clone, Debug)]
pub enum Location {
    Dir(PathBuf),
    Bucket { settings: S3Settings },
}

/// A connector's settings, checked.
#[derive(Clone, Debug)]
pub struct ConnectorConfig {
    pub name: String,
    pub class: Class,
    pub tasks_max: usize,
    /// A source's topic, or a sink's topics.
    pub topics: Vec<String>,
    pub location: Location,
    pub mode: Mode,
    pub poll_interval: std::time::Duration,
    /// The largest file a source sends as one record.
    pub file_max_bytes: u64,
    /// How long after a send began a source waits for it to appear in the
    /// topic when a previous run died during it.
    pub reconcile_grace_ms: u64,
    /// A sink's consumer group: `connect-<name>`, as Kafka Connect names
    /// it, unless `consumer.override.group.id` says otherwise.
    pub group: String,
    /// Everything as given, for the REST interface.
    pub properties: Properties,
}

fn required<'p>(p: &'p Properties, key: &str) -> Result<&'p str, ConnectError> {
    p.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConnectError::Config(format!("missing required setting {key}")))
}

fn number<T: std::str::FromStr>(p: &Properties, key: &str, default: T) -> Result<T, ConnectError> {
    match p.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConnectError::Config(format!("{key}={v} is not a number"))),
    }
}

fn flag(p: &Properties, key: &str, default: bool) -> Result<bool, ConnectError> {
    match p.get(key).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(ConnectError::Config(format!("{key}={v} is not true or false"))),
    }
}

/// A connector name as Kafka Connect allows it, and as a key and a group
/// name can carry it.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ConnectorConfig {
    /// Checks a connector's properties.
    pub fn parse(p: &Properties) -> Result<Self, ConnectError> {
        let name = required(p, "name")?.to_owned();
        if !valid_name(&name) {
            return Err(ConnectError::Config(format!(
                "connector name {name:?}: letters, digits, '-', '_' and '.' only"
            )));
        }
        let class_name = required(p, "connector.class")?;
        let class = Class::parse(class_name).ok_or_else(|| {
            let known: Vec<&str> = Class::ALL.iter().map(|(_, n, _)| *n).collect();
            ConnectError::Config(format!(
                "connector.class={class_name} is not one of {}",
                known.join(", ")
            ))
        })?;
        for key in ["key.converter", "value.converter"] {
            if let Some(c) = p.get(key) {
                if !CONVERTERS.contains(&c.as_str()) {
                    return Err(ConnectError::Config(format!(
                        "{key}={c}: Courier's connectors move bytes unchanged; use {}",
                        CONVERTERS.join(" or ")
                    )));
                }
            }
        }
        let topics: Vec<String> = if class.is_source() {
            vec![required(p, "topic")?.to_owned()]
        } else {
            required(p, "topics")?
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let location = match class {
            Class::FileSource => Location::Dir(PathBuf::from(required(p, "input.path")?)),
            Class::FileSink => Location::Dir(PathBuf::from(required(p, "output.path")?)),
            Class::S3Source | Class::S3Sink => Location::Bucket {
                settings: S3Settings {
                    endpoint: p.get("store.url").filter(|v| !v.is_empty()).cloned(),
                    region: p.get("s3.region").cloned().unwrap_or_else(|| "us-east-1".into()),
                    bucket: required(p, "s3.bucket.name")?.to_owned(),
                    path_style: flag(p, "s3.path.style.access.enabled", true)?,
                    allow_http: flag(p, "s3.allow.http", false)?,
                    prefix: p.get("s3.prefix").cloned().unwrap_or_default(),
                    credentials: match p.get("aws.credentials.file") {
                        Some(path) => S3Credentials::File {
                            path: PathBuf::from(path),
                            profile: p
                                .get("aws.credentials.profile")
                                .cloned()
                                .unwrap_or_else(|| "default".into()),
                        },
                        None => S3Credentials::Environment,
                    },
                },
            },
        };
        let mode = match p.get("mode").map(String::as_str) {
            None | Some("file") => Mode::File,
            Some("line") if class.is_source() => Mode::Line,
            Some(m) => {
                return Err(ConnectError::Config(format!(
                    "mode={m}: a source takes file or line; a sink writes what each record says"
                )))
            }
        };
        let tasks_max = number(p, "tasks.max", 1usize)?;
        if tasks_max == 0 {
            return Err(ConnectError::Config("tasks.max must be at least 1".into()));
        }
        Ok(Self {
            group: p
                .get("consumer.override.group.id")
                .cloned()
                .unwrap_or_else(|| format!("connect-{name}")),
            name,
            class,
            tasks_max,
            topics,
            location,
            mode,
            poll_interval: std::time::Duration::from_millis(number(p, "poll.interval.ms", 1000u64)?),
            file_max_bytes: number(p, "file.max.bytes", 256u64 << 20)?,
            reconcile_grace_ms: number(p, "reconcile.grace.ms", 30_000u64)?,
            properties: p.clone(),
        })
    }

    /// How many tasks run: a source reads its files in order with one; a
    /// sink runs `tasks.max` consumers of its group.
    pub fn tasks(&self) -> usize {
        if self.class.is_source() {
            1
        } else {
            self.tasks_max
        }
    }
}

/// The runner's own settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub properties: Properties,
    /// Where the REST interface listens (`listeners`, Kafka Connect's
    /// default `http://127.0.0.1:8083`).
    pub listen: String,
    /// Where sources keep their offsets.
    pub offsets_topic: String,
}

impl WorkerConfig {
    pub fn parse(p: &Properties) -> Result<Self, ConnectError> {
        required(p, "bootstrap.servers")?;
        let listeners = p
            .get("listeners")
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8083".into());
        let first = listeners.split(',').next().unwrap_or_default().trim();
        let listen = first
            .strip_prefix("http://")
            .ok_or_else(|| ConnectError::Config(format!("listeners={listeners}: an http:// address")))?
            .to_owned();
        Ok(Self {
            listen,
            offsets_topic: p
                .get("offset.storage.topic")
                .cloned()
                .unwrap_or_else(|| "connect-offsets".into()),
            properties: p.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_as_java_reads_them() {
        let p = parse("# c\n! c\n a = b \nc: d\ne=\nf=g=h\n").expect("parses");
        assert_eq!(p["a"], "b");
        assert_eq!(p["c"], "d");
        assert_eq!(p["e"], "");
        assert_eq!(p["f"], "g=h");
        assert_eq!(parse("ok=1\nnot a property\n"), Err(2));
    }

    #[test]
    fn connector_settings_are_checked() {
        let mut p = parse("name=out\nconnector.class=FileSource\ntopic=orders\ninput.path=/tmp/x\n").expect("parses");
        let c = ConnectorConfig::parse(&p).expect("valid");
        assert_eq!(c.class, Class::FileSource);
        assert_eq!(c.mode, Mode::File);
        assert_eq!(c.group, "connect-out");
        p.insert(
            "value.converter".into(),
            "org.apache.kafka.connect.json.JsonConverter".into(),
        );
        assert!(ConnectorConfig::parse(&p).is_err());
        p.remove("value.converter");
        p.insert("connector.class".into(), "courier.connect.FileSinkConnector".into());
        assert!(
            ConnectorConfig::parse(&p).is_err(),
            "a sink needs topics and output.path"
        );
        p.insert("topics".into(), "a, b".into());
        p.insert("output.path".into(), "/tmp/y".into());
        p.insert("tasks.max".into(), "3".into());
        let c = ConnectorConfig::parse(&p).expect("valid");
        assert_eq!(c.topics, ["a", "b"]);
        assert_eq!(c.tasks(), 3);
        p.insert("name".into(), "../x".into());
        assert!(ConnectorConfig::parse(&p).is_err());
    }

    #[test]
    fn clients_get_the_security_settings_and_their_own_prefix() {
        let p = parse(
            "bootstrap.servers=h:1\nsecurity.protocol=SSL\nproducer.linger.ms=7\nconsumer.fetch.max.bytes=9\nname=x\n\
             consumer.override.group.id=g\n",
        )
        .expect("parses");
        let c = client_settings(&p, "producer");
        assert_eq!(c.get("security.protocol").map(String::as_str), Some("SSL"));
        assert_eq!(c.get("linger.ms").map(String::as_str), Some("7"));
        assert!(!c.contains_key("fetch.max.bytes") && !c.contains_key("name"));
        assert!(!client_settings(&p, "consumer").contains_key("override.group.id"));
    }
}
