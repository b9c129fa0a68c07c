//! DescribeUserScramCredentials: which SCRAM mechanisms each user has a
//! credential for, and their iteration counts (never salts or keys).
//! Needs Describe on the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use courier_consensus::security::operation;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};
use crate::Broker;

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    if !broker.access(ctx).cluster(operation::DESCRIBE) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        super::count_error(courier_protocol::ApiKey::DescribeUserScramCredentials, code);
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(str_bytes("not authorized to describe credentials")));
    }
    let state = broker.security.snapshot();
    let mut users: BTreeMap<&str, Vec<CredentialInfo>> = BTreeMap::new();
    for ((user, mechanism), c) in &state.scram {
        users.entry(user.as_str()).or_default().push(
            CredentialInfo::default()
                .with_mechanism(mechanism.code())
                .with_iterations(c.iterations as i32),
        );
    }
    let result = |user: &str, infos: Vec<CredentialInfo>| {
        DescribeUserScramCredentialsResult::default()
            .with_user(str_bytes(user))
            .with_credential_infos(infos)
    };
    let results = match req.users.as_ref().filter(|u| !u.is_empty()) {
        None => users.into_iter().map(|(u, infos)| result(u, infos)).collect(),
        Some(asked) => {
            let mut seen = BTreeSet::new();
            let twice: BTreeSet<&str> = asked
                .iter()
                .filter(|u| !seen.insert(u.name.as_str()))
                .map(|u| u.name.as_str())
                .collect();
            let mut answered = BTreeSet::new();
            asked
                .iter()
                .filter(|u| answered.insert(u.name.as_str()))
                .map(|u| {
                    let name = u.name.as_str();
                    let (code, message) = if twice.contains(name) {
                        (ResponseError::DuplicateResource.code(), "user named more than once")
                    } else if !users.contains_key(name) {
                        (ResponseError::ResourceNotFound.code(), "no credentials for the user")
                    } else {
                        (0, "")
                    };
                    if code == 0 {
                        result(name, users.get(name).cloned().unwrap_or_default())
                    } else {
                        super::count_error(courier_protocol::ApiKey::DescribeUserScramCredentials, code);
                        result(name, Vec::new())
                            .with_error_code(code)
                            .with_error_message(Some(str_bytes(message)))
                    }
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
