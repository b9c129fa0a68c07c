//! Heartbeat: keeps a member's session alive and tells it about rebalances.

use std::sync::Arc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::Broker;
use courier_consensus::security::operation::READ;

pub fn handle(broker: &Arc<Broker>, ctx: &super::RequestContext, req: HeartbeatRequest) -> HeartbeatResponse {
    let code = super::group_denied(broker, ctx, READ, req.group_id.as_str())
        .or_else(|| super::find_coordinator::not_coordinator(broker, req.group_id.as_str()))
        .unwrap_or_else(|| {
            broker
                .groups
                .heartbeat(req.group_id.as_str(), req.generation_id, req.member_id.as_str())
        });
    super::count_error(courier_protocol::ApiKey::Heartbeat, code);
    HeartbeatResponse::default().with_error_code(code)
}
