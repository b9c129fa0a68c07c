//! CreateTopics, and the one place topics are created (auto-creation from
//! Metadata goes through [`create`] too).

use std::collections::BTreeMap;
use std::sync::Arc;

use courier_consensus::catalog::TopicRecord;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name, RequestContext};
use crate::topics::{new_topic, random_topic_id};
use crate::Broker;
use courier_consensus::security::operation;

/// Creates a topic (partitions default to `num.partitions`), persisting it
/// before it becomes visible. Errors carry a Kafka error code and message.
pub async fn create(
    broker: &Arc<Broker>,
    name: &str,
    partitions: Option<i32>,
    configs: BTreeMap<String, String>,
) -> Result<Arc<TopicRecord>, (i16, String)> {
    let record = new_topic(
        name,
        partitions.unwrap_or(broker.config.num_partitions),
        configs,
        random_topic_id(),
    )?;
    let _guard = broker.admin_lock.lock().await;
    if let Some(existing) = broker.topics.get(name) {
        return if partitions.is_none() {
            // Auto-creation raced with another request creating it: fine.
            Ok(existing)
        } else {
            Err((
                ResponseError::TopicAlreadyExists.code(),
                format!("topic {name} already exists"),
            ))
        };
    }
    super::persist_topic(broker, record, true).await?;
    tracing::info!(topic = name, "topic created");
    broker
        .topics
        .get(name)
        .ok_or((ResponseError::UnknownServerError.code(), "topic vanished".into()))
}

/// Whether the request may create topic `name`: Create on the cluster, or
/// on the topic (literally or by prefix).
pub fn may_create(access: &crate::auth::authorizer::Access<'_>, name: &str) -> bool {
    access.quietly(
        operation::CREATE,
        courier_consensus::security::resource::CLUSTER,
        courier_consensus::security::CLUSTER_NAME,
    ) || access.topic(operation::CREATE, name)
}

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let access = broker.access(ctx);
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.as_str().to_owned();
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let partitions = if t.num_partitions == -1 {
            broker.config.num_partitions
        } else {
            t.num_partitions
        };
        let outcome = if !may_create(&access, &name) {
            Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("not authorized to create {name}"),
            ))
        } else if !t.assignments.is_empty() {
            Err((
                ResponseError::InvalidRequest.code(),
                "manual replica assignment is not supported".to_owned(),
            ))
        } else if t.replication_factor != -1 && t.replication_factor != 1 {
            Err((
                ResponseError::InvalidReplicationFactor.code(),
                "replication is set by the partition's consensus cluster; use -1 or 1".to_owned(),
            ))
        } else if req.validate_only {
            new_topic(&name, partitions, configs, [1; 16]).and_then(|r| match broker.topics.get(&name) {
                Some(_) => Err((
                    ResponseError::TopicAlreadyExists.code(),
                    format!("topic {name} already exists"),
                )),
                None => Ok(Arc::new(r)),
            })
        } else {
            create(broker, &name, Some(partitions), configs).await
        };
        let result = CreatableTopicResult::default().with_name(topic_name(&name));
        results.push(match outcome {
            Ok(topic) => result
                .with_topic_id(if req.validate_only {
                    Uuid::nil()
                } else {
                    Uuid::from_bytes(topic.id)
                })
                .with_num_partitions(topic.partitions)
                .with_replication_factor(1),
            Err((code, message)) => {
                super::count_error(courier_protocol::ApiKey::CreateTopics, code);
                result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}
