//! DeleteTopics: the topic disappears from metadata at once, then its
//! ledgers are removed in the sequencer's order, after every write already
//! queued for them.

use std::sync::Arc;

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name, RequestContext};
use crate::Broker;
use courier_consensus::security::operation;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id in `topics`; earlier versions by name.
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.as_str().to_owned()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.as_str().to_owned()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let found = match &name {
            Some(n) => broker.topics.get(n),
            None => broker.topics.get_by_id(id.as_bytes()),
        };
        let result = DeletableTopicResult::default()
            .with_name(name.as_deref().map(topic_name))
            .with_topic_id(id);
        // By id, an unauthorized topic is answered as unknown (Kafka does
        // not confirm which ids exist).
        let target = found
            .as_ref()
            .map_or(name.clone().unwrap_or_default(), |t| t.name.clone());
        if !broker.access(ctx).topic(operation::DELETE, &target) {
            let code = if found.is_none() && name.is_none() {
                ResponseError::UnknownTopicId.code()
            } else {
                ResponseError::TopicAuthorizationFailed.code()
            };
            super::count_error(courier_protocol::ApiKey::DeleteTopics, code);
            responses.push(result.with_error_code(code));
            continue;
        }
        let Some(topic) = found else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                ResponseError::UnknownTopicId.code()
            };
            super::count_error(courier_protocol::ApiKey::DeleteTopics, code);
            responses.push(result.with_error_code(code));
            continue;
        };
        let _guard = broker.admin_lock.lock().await;
        let outcome = broker.sequencer.delete_topic((*topic).clone()).await;
        let result = result
            .with_name(Some(topic_name(&topic.name)))
            .with_topic_id(Uuid::from_bytes(topic.id));
        responses.push(match outcome {
            Ok(()) => {
                tracing::info!(topic = %topic.name, "topic deleted");
                result
            }
            Err(e) => {
                tracing::error!(topic = %topic.name, error = %e, "topic deletion failed");
                result
                    .with_error_code(super::rejected_code(&e))
                    .with_error_message(Some(str_bytes(&e.to_string())))
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
