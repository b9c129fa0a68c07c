//! DescribeConfigs for topics (their overrides and the broker defaults
//! behind them) and for this broker (its static settings, read-only).

use std::sync::Arc;

use courier_consensus::catalog::TopicRecord;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::topics::{ConfigKind, TOPIC_CONFIGS};
use crate::{Broker, BrokerConfig};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

// Kafka's ConfigSource and ConfigType codes.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

/// A topic setting's effective default, from the broker's settings.
pub fn topic_default(config: &BrokerConfig, name: &str) -> String {
    match name {
        "cleanup.policy" => "delete".into(),
        "retention.ms" => config.log_retention_ms.to_string(),
        "retention.bytes" => config.log_retention_bytes.to_string(),
        "max.message.bytes" => config.message_max_bytes.to_string(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.insync.replicas" => "1".into(),
        "segment.bytes" => "1073741824".into(),
        "compression.type" => "producer".into(),
        crate::offchain::THRESHOLD_CONFIG => "-1".into(),
        _ => String::new(),
    }
}

fn kind_code(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Int => TYPE_INT,
        ConfigKind::Long => TYPE_LONG,
        ConfigKind::OneOf(_) => TYPE_STRING,
    }
}

fn entry(name: &str, value: String, read_only: bool, source: i8, config_type: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(&value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(config_type)
}

fn topic_entries(config: &BrokerConfig, topic: &TopicRecord) -> Vec<DescribeConfigsResourceResult> {
    TOPIC_CONFIGS
        .iter()
        .map(|(name, kind)| match topic.configs.get(*name) {
            Some(v) => entry(name, v.clone(), false, SOURCE_DYNAMIC_TOPIC, kind_code(*kind)),
            None => entry(
                name,
                topic_default(config, name),
                false,
                SOURCE_DEFAULT,
                kind_code(*kind),
            ),
        })
        .collect()
}

fn broker_entries(c: &BrokerConfig) -> Vec<DescribeConfigsResourceResult> {
    let s = |name: &str, v: String, t: i8| entry(name, v, true, SOURCE_STATIC_BROKER, t);
    vec![
        s("node.id", c.node_id.to_string(), TYPE_INT),
        s(
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            TYPE_BOOLEAN,
        ),
        s("num.partitions", c.num_partitions.to_string(), TYPE_INT),
        s("message.max.bytes", c.message_max_bytes.to_string(), TYPE_INT),
        s(
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            TYPE_INT,
        ),
        s("log.retention.ms", c.log_retention_ms.to_string(), TYPE_LONG),
        s("log.retention.bytes", c.log_retention_bytes.to_string(), TYPE_LONG),
        s(
            "group.initial.rebalance.delay.ms",
            c.group_initial_rebalance_delay_ms.to_string(),
            TYPE_LONG,
        ),
        s(
            "group.min.session.timeout.ms",
            c.group_min_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        s(
            "group.max.session.timeout.ms",
            c.group_max_session_timeout_ms.to_string(),
            TYPE_INT,
        ),
        s("ledger.fsync", c.ledger_fsync.to_string(), TYPE_BOOLEAN),
    ]
}

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    use courier_consensus::security::operation::DESCRIBE_CONFIGS;
    let access = broker.access(ctx);
    let mut results = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let r = DescribeConfigsResult::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let name = res.resource_name.as_str();
        let entries = match res.resource_type {
            RESOURCE_TOPIC if !access.topic(DESCRIBE_CONFIGS, name) => Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("not authorized to describe the configs of {name}"),
            )),
            RESOURCE_BROKER if !access.cluster(DESCRIBE_CONFIGS) => Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                "not authorized to describe broker configs".to_owned(),
            )),
            RESOURCE_TOPIC => match broker.topics.get(name) {
                Some(t) => Ok(topic_entries(&broker.config, &t)),
                None => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("topic {name} does not exist"),
                )),
            },
            RESOURCE_BROKER if name.is_empty() || name == broker.node.node_id.to_string() => {
                Ok(broker_entries(&broker.config))
            }
            RESOURCE_BROKER => Err((ResponseError::InvalidRequest.code(), format!("no broker {name} here"))),
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!("resource type {other} is not supported"),
            )),
        };
        results.push(match entries {
            Ok(mut entries) => {
                // Null asks for every setting; so does an empty list.
                if let Some(keys) = res.configuration_keys.as_ref().filter(|k| !k.is_empty()) {
                    entries.retain(|e| keys.iter().any(|k| k.as_str() == e.name.as_str()));
                }
                r.with_configs(entries)
            }
            Err((code, message)) => {
                super::count_error(courier_protocol::ApiKey::DescribeConfigs, code);
                r.with_error_code(code).with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    DescribeConfigsResponse::default().with_results(results)
}
