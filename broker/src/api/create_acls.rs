//! CreateAcls: adds ACL bindings through the Raft group (or the single
//! node's security file). Needs Alter on the cluster. Each creation is
//! answered on its own: an invalid binding is INVALID_REQUEST and does not
//! hold up the others, which are ordered as one command.

use std::sync::Arc;

use courier_consensus::security::{operation, Acl, SecurityCommand};
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};
use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, req: CreateAclsRequest) -> CreateAclsResponse {
    let failed = |code: i16, message: &str| {
        super::count_error(courier_protocol::ApiKey::CreateAcls, code);
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes(message)))
    };
    if let Some(code) = super::security_disabled(broker) {
        let results = req
            .creations
            .iter()
            .map(|_| failed(code, "no authorizer is configured"))
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    if !broker.access(ctx).cluster(operation::ALTER) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        let results = req
            .creations
            .iter()
            .map(|_| failed(code, "not authorized to alter ACLs"))
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let bindings: Vec<Result<Acl, String>> = req
        .creations
        .iter()
        .map(|c| {
            let acl = Acl {
                resource_type: c.resource_type,
                resource_name: c.resource_name.to_string(),
                pattern_type: c.resource_pattern_type,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: c.operation,
                permission: c.permission_type,
            };
            acl.validate().map(|_| acl).map_err(|e| e.to_string())
        })
        .collect();
    let valid: Vec<Acl> = bindings.iter().filter_map(|b| b.as_ref().ok().cloned()).collect();
    let outcome = if valid.is_empty() {
        Ok(())
    } else {
        broker.security.change(SecurityCommand::CreateAcls(valid.clone())).await
    };
    if outcome.is_ok() {
        for acl in &valid {
            tracing::info!(target: "courier::audit", principal = %ctx.principal, ?acl, "ACL created");
        }
    }
    let results = bindings
        .iter()
        .map(|b| match (b, &outcome) {
            (Err(m), _) => failed(ResponseError::InvalidRequest.code(), m),
            (Ok(_), Err((code, m))) => failed(*code, m),
            (Ok(_), Ok(())) => AclCreationResult::default(),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}
