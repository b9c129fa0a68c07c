//! CreatePartitions: grows a topic; existing partitions and their keys'
//! placement are untouched (as in Kafka, keyed records may move).

use std::sync::Arc;

use courier_consensus::catalog::TopicRecord;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};
use crate::topics::MAX_PARTITIONS;
use crate::Broker;
use courier_consensus::security::operation;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let outcome = if broker.access(ctx).topic(operation::ALTER, t.name.as_str()) {
            grow(
                broker,
                t.name.as_str(),
                t.count,
                t.assignments.is_some(),
                req.validate_only,
            )
            .await
        } else {
            Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("not authorized to alter {}", t.name.as_str()),
            ))
        };
        let result = CreatePartitionsTopicResult::default().with_name(t.name);
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => {
                super::count_error(courier_protocol::ApiKey::CreatePartitions, code);
                result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow(
    broker: &Arc<Broker>,
    name: &str,
    count: i32,
    assigned: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let _guard = broker.admin_lock.lock().await;
    let topic = broker.topics.get(name).ok_or((
        ResponseError::UnknownTopicOrPartition.code(),
        format!("topic {name} does not exist"),
    ))?;
    if assigned {
        return Err((
            ResponseError::InvalidRequest.code(),
            "manual replica assignment is not supported".into(),
        ));
    }
    if count <= topic.partitions || count > MAX_PARTITIONS {
        return Err((
            ResponseError::InvalidPartitions.code(),
            format!(
                "topic has {} partitions; the new count must be larger and at most {MAX_PARTITIONS}",
                topic.partitions
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    let grown = TopicRecord {
        partitions: count,
        ..(*topic).clone()
    };
    super::persist_topic(broker, grown, false).await
}
