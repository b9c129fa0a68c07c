//! DescribeGroups: state, protocol and members of each group. A group this
//! coordinator has no live state for is reported as Dead (Kafka's answer).

use std::sync::Arc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::str_bytes;
use crate::Broker;

pub fn handle(broker: &Arc<Broker>, ctx: &super::RequestContext, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let g = DescribedGroup::default().with_group_id(id.clone());
            if let Some(code) = super::group_denied(
                broker,
                ctx,
                courier_consensus::security::operation::DESCRIBE,
                id.as_str(),
            ) {
                return g.with_error_code(code).with_authorized_operations(i32::MIN);
            }
            match broker.groups.describe(id.as_str()) {
                None => g.with_group_state(str_bytes("Dead")),
                Some(d) => g
                    .with_group_state(str_bytes(d.state))
                    .with_protocol_type(str_bytes(&d.protocol_type))
                    .with_protocol_data(str_bytes(&d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|(member_id, instance, client_id, host, metadata, assignment)| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&member_id))
                                    .with_group_instance_id(instance.as_deref().map(str_bytes))
                                    .with_client_id(str_bytes(&client_id))
                                    .with_client_host(str_bytes(&host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
