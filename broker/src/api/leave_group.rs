//! LeaveGroup: one member (v0–2) or a list of members (v3+) leave at once,
//! so the rest rebalance without waiting for a session to expire.

use std::sync::Arc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::Broker;
use courier_consensus::security::operation::READ;

pub fn handle(broker: &Arc<Broker>, ctx: &super::RequestContext, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let batch = !req.members.is_empty();
    let ids: Vec<String> = if batch {
        req.members.iter().map(|m| m.member_id.to_string()).collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let refused = super::group_denied(broker, ctx, READ, req.group_id.as_str())
        .or_else(|| super::find_coordinator::not_coordinator(broker, req.group_id.as_str()));
    let codes = match refused {
        Some(code) => vec![code; ids.len()],
        None => broker.groups.leave(req.group_id.as_str(), &ids),
    };
    for c in &codes {
        super::count_error(courier_protocol::ApiKey::LeaveGroup, *c);
    }
    if batch {
        let members = req
            .members
            .iter()
            .zip(&codes)
            .map(|(m, code)| {
                MemberResponse::default()
                    .with_member_id(m.member_id.clone())
                    .with_group_instance_id(m.group_instance_id.clone())
                    .with_error_code(*code)
            })
            .collect();
        LeaveGroupResponse::default().with_members(members)
    } else {
        LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
    }
}
