//! DeleteGroups: removes an empty group and its committed offsets. The
//! receipts already on the ledger stay: they are history, not state.

use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        let name = id.to_string();
        if let Some(code) = super::group_denied(broker, ctx, courier_consensus::security::operation::DELETE, &name) {
            super::count_error(courier_protocol::ApiKey::DeleteGroups, code);
            results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(code));
            continue;
        }
        let code = match broker.groups.remove_if_empty(&name) {
            Err(code) => code,
            Ok(had_state) => {
                let store = broker.store.clone();
                let group = name.clone();
                match tokio::task::spawn_blocking(move || store.delete_group_offsets(&group)).await {
                    Ok(Ok(n)) if n > 0 || had_state => 0,
                    Ok(Ok(_)) => ResponseError::GroupIdNotFound.code(),
                    _ => ResponseError::KafkaStorageError.code(),
                }
            }
        };
        super::count_error(courier_protocol::ApiKey::DeleteGroups, code);
        results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(code));
    }
    DeleteGroupsResponse::default().with_results(results)
}
