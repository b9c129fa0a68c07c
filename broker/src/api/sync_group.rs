//! SyncGroup: the leader's assignments go out; followers wait for them.

use std::sync::Arc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::str_bytes;
use crate::Broker;
use courier_consensus::security::operation::READ;

pub async fn handle(broker: &Arc<Broker>, ctx: &super::RequestContext, req: SyncGroupRequest) -> SyncGroupResponse {
    if let Some(code) = super::group_denied(broker, ctx, READ, req.group_id.as_str())
        .or_else(|| super::find_coordinator::not_coordinator(broker, req.group_id.as_str()))
    {
        super::count_error(courier_protocol::ApiKey::SyncGroup, code);
        return SyncGroupResponse::default().with_error_code(code);
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let outcome = broker
        .groups
        .sync(
            req.group_id.as_str(),
            req.generation_id,
            req.member_id.as_str(),
            assignments,
        )
        .await;
    super::count_error(courier_protocol::ApiKey::SyncGroup, outcome.error);
    SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_protocol_type(outcome.protocol_type.as_deref().map(str_bytes))
        .with_protocol_name(outcome.protocol.as_deref().map(str_bytes))
        .with_assignment(outcome.assignment)
}
