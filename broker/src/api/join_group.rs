//! JoinGroup: parks until the rebalance completes (see `groups`).

use std::sync::Arc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{str_bytes, RequestContext};
use crate::groups::JoinRequest;
use crate::Broker;
use courier_consensus::security::operation::READ;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    if let Some(code) = super::group_denied(broker, ctx, READ, req.group_id.as_str())
        .or_else(|| super::find_coordinator::not_coordinator(broker, req.group_id.as_str()))
    {
        super::count_error(courier_protocol::ApiKey::JoinGroup, code);
        return JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(req.member_id);
    }
    let outcome = broker
        .groups
        .join(JoinRequest {
            group_id: req.group_id.to_string(),
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: ctx.client_id.clone(),
            client_host: format!("/{}", ctx.peer.ip()),
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        })
        .await;
    super::count_error(courier_protocol::ApiKey::JoinGroup, outcome.error);
    JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(if outcome.error == 0 { outcome.generation } else { -1 })
        .with_protocol_type(outcome.protocol_type.as_deref().map(str_bytes))
        .with_protocol_name(outcome.protocol.as_deref().map(str_bytes))
        .with_leader(str_bytes(&outcome.leader))
        .with_member_id(str_bytes(&outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}
