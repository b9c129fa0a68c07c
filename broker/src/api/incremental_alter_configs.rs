//! IncrementalAlterConfigs for topics: SET and DELETE, validated as a whole
//! and persisted before the answer. Broker settings are static (file and
//! command line) and refused here, but for the principals' organizations
//! (`courier.organization.<principal>`, see [`ORGANIZATION_PREFIX`]).

use std::sync::Arc;

use courier_consensus::catalog::TopicRecord;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::ResponseError;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::str_bytes;
use crate::topics::validate_topic_config;
use crate::Broker;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use courier_consensus::security::operation::ALTER_CONFIGS;
    let mut responses = Vec::with_capacity(req.resources.len());
    for res in req.resources {
        let access = broker.access(ctx);
        let outcome = match res.resource_type {
            RESOURCE_TOPIC if !access.topic(ALTER_CONFIGS, res.resource_name.as_str()) => Err((
                ResponseError::TopicAuthorizationFailed.code(),
                format!("not authorized to alter the configs of {}", res.resource_name.as_str()),
            )),
            RESOURCE_BROKER if !access.cluster(ALTER_CONFIGS) => Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                "not authorized to alter broker configs".to_owned(),
            )),
            RESOURCE_TOPIC => {
                drop(access);
                alter_topic(broker, &res, req.validate_only).await
            }
            RESOURCE_BROKER => {
                drop(access);
                alter_organizations(broker, &res, req.validate_only).await
            }
            other => Err((
                ResponseError::InvalidRequest.code(),
                format!("resource type {other} is not supported"),
            )),
        };
        let r = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name);
        responses.push(match outcome {
            Ok(()) => r,
            Err((code, message)) => {
                super::count_error(courier_protocol::ApiKey::IncrementalAlterConfigs, code);
                r.with_error_code(code).with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The one cluster-wide setting family that changes at run time:
/// `courier.organization.<principal>` (say `courier.organization.User:alice
/// = org-a`, DELETE to forget it), the organization an administrator
/// records for a principal, ordered through Raft like every security
/// change (for any broker resource name: it is cluster-wide). Every other
/// broker setting is static and refused.
pub const ORGANIZATION_PREFIX: &str = "courier.organization.";

async fn alter_organizations(
    broker: &Arc<Broker>,
    res: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    use courier_consensus::security::{is_principal, SecurityCommand};
    let mut commands = Vec::with_capacity(res.configs.len());
    for c in &res.configs {
        let Some(principal) = c.name.as_str().strip_prefix(ORGANIZATION_PREFIX) else {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!(
                    "broker setting {} is static (use the config file); only {ORGANIZATION_PREFIX}<principal> changes at run time",
                    c.name.as_str()
                ),
            ));
        };
        let organization = match (c.config_operation, &c.value) {
            (OP_SET, Some(v)) if !v.is_empty() => Some(v.to_string()),
            (OP_DELETE, _) => None,
            _ => {
                return Err((
                    ResponseError::InvalidConfig.code(),
                    format!("{}: SET an organization name, or DELETE", c.name.as_str()),
                ))
            }
        };
        if !is_principal(principal) {
            return Err((
                ResponseError::InvalidConfig.code(),
                format!("{principal:?} is not a principal (Type:name)"),
            ));
        }
        commands.push(SecurityCommand::SetOrganization {
            principal: principal.to_owned(),
            organization,
        });
    }
    if validate_only {
        return Ok(());
    }
    for command in commands {
        broker.security.change(command).await?;
    }
    Ok(())
}

async fn alter_topic(
    broker: &Arc<Broker>,
    res: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let _guard = broker.admin_lock.lock().await;
    let name = res.resource_name.as_str();
    let topic = broker.topics.get(name).ok_or((
        ResponseError::UnknownTopicOrPartition.code(),
        format!("topic {name} does not exist"),
    ))?;
    let mut configs = topic.configs.clone();
    for c in &res.configs {
        let key = c.name.to_string();
        match (c.config_operation, &c.value) {
            (OP_SET, Some(v)) => {
                validate_topic_config(&key, v).map_err(|m| (ResponseError::InvalidConfig.code(), m))?;
                configs.insert(key, v.to_string());
            }
            (OP_SET, None) => return Err((ResponseError::InvalidConfig.code(), format!("no value for {key}"))),
            (OP_DELETE, _) => {
                validate_topic_config(&key, &super::describe_configs::topic_default(&broker.config, &key))
                    .map_err(|m| (ResponseError::InvalidConfig.code(), m))?;
                configs.remove(&key);
            }
            (op, _) => {
                return Err((
                    ResponseError::InvalidRequest.code(),
                    format!("operation {op} is not supported for {key}"),
                ))
            }
        }
    }
    if validate_only || configs == topic.configs {
        return Ok(());
    }
    super::persist_topic(
        broker,
        TopicRecord {
            configs,
            ..(*topic).clone()
        },
        false,
    )
    .await
}
