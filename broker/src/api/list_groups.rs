//! ListGroups: groups with live members, and groups known only by the
//! offsets they committed (shown as Empty, as Kafka does).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, ctx: &super::RequestContext, req: ListGroupsRequest) -> ListGroupsResponse {
    use courier_consensus::security::{operation::DESCRIBE, resource::GROUP};
    let access = broker.access(ctx);
    // Describe on the cluster lists every group (denials of single groups
    // are not audited: the list is filtered, as Kafka's).
    let all = access.quietly(
        DESCRIBE,
        courier_consensus::security::resource::CLUSTER,
        courier_consensus::security::CLUSTER_NAME,
    );
    let mut groups: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
    let store = broker.store.clone();
    match tokio::task::spawn_blocking(move || store.groups_with_offsets()).await {
        Ok(Ok(names)) => {
            for n in names {
                groups.insert(n, ("consumer".into(), "Empty"));
            }
        }
        other => {
            tracing::error!(?other, "listing groups from the ledger failed");
            return ListGroupsResponse::default().with_error_code(ResponseError::KafkaStorageError.code());
        }
    }
    for (id, protocol_type, state) in broker.groups.list() {
        groups.insert(id, (protocol_type, state));
    }
    let listed = groups
        .into_iter()
        .filter(|(id, (_, state))| {
            (all || access.quietly(DESCRIBE, GROUP, id))
                && (req.states_filter.is_empty() || req.states_filter.iter().any(|s| s.as_str() == *state))
        })
        .map(|(id, (protocol_type, state))| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type))
                .with_group_state(str_bytes(state))
                .with_group_type(str_bytes("classic"))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}
