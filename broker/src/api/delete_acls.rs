//! DeleteAcls: removes the bindings each filter selects, and names them.
//! Needs Alter on the cluster. The handler resolves the filters against
//! this node's state and orders the removal of exactly those bindings, so
//! a retried command removes nothing it did not name.

use std::collections::BTreeSet;
use std::sync::Arc;

use courier_consensus::security::{operation, Acl, SecurityCommand};
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};
use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let failed = |code: i16, message: &str| {
        super::count_error(courier_protocol::ApiKey::DeleteAcls, code);
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    let refused = super::security_disabled(broker)
        .map(|c| (c, "no authorizer is configured"))
        .or_else(|| {
            (!broker.access(ctx).cluster(operation::ALTER)).then_some((
                ResponseError::ClusterAuthorizationFailed.code(),
                "not authorized to alter ACLs",
            ))
        });
    if let Some((code, message)) = refused {
        let results = req.filters.iter().map(|_| failed(code, message)).collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let state = broker.security.snapshot();
    let selected: Vec<Result<Vec<Acl>, String>> = req
        .filters
        .iter()
        .map(|f| {
            let f = super::describe_acls::filter(
                f.resource_type_filter,
                &f.resource_name_filter,
                f.pattern_type_filter,
                &f.principal_filter,
                &f.host_filter,
                f.operation,
                f.permission_type,
            );
            f.validate().map(|_| state.matching(&f)).map_err(|e| e.to_string())
        })
        .collect();
    drop(state);
    let all: BTreeSet<Acl> = selected.iter().flatten().flatten().cloned().collect();
    let outcome = if all.is_empty() {
        Ok(())
    } else {
        broker
            .security
            .change(SecurityCommand::DeleteAcls(all.iter().cloned().collect()))
            .await
    };
    if outcome.is_ok() {
        for acl in &all {
            tracing::info!(target: "courier::audit", principal = %ctx.principal, ?acl, "ACL deleted");
        }
    }
    let results = selected
        .iter()
        .map(|s| match (s, &outcome) {
            (Err(m), _) => failed(ResponseError::InvalidRequest.code(), m),
            (Ok(_), Err((code, m))) => failed(*code, m),
            (Ok(acls), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                acls.iter()
                    .map(|a| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(a.resource_type)
                            .with_resource_name(str_bytes(&a.resource_name))
                            .with_pattern_type(a.pattern_type)
                            .with_principal(str_bytes(&a.principal))
                            .with_host(str_bytes(&a.host))
                            .with_operation(a.operation)
                            .with_permission_type(a.permission)
                    })
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
