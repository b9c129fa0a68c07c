//! AlterUserScramCredentials: sets or removes users' SCRAM credentials.
//! The client sends a salt and the salted password (never the password);
//! the node keeps only the stored and server keys derived from them,
//! ordered through Raft like every security change. Needs Alter on the
//! cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use courier_consensus::security::{
    operation, ScramMechanism, SecurityCommand, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN,
};
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};
use crate::auth::scram::credential_from_salted;
use crate::Broker;

type Change = Result<(ScramMechanism, Option<courier_consensus::security::ScramCredential>), (i16, String)>;

fn mechanism(code: i8) -> Result<ScramMechanism, (i16, String)> {
    ScramMechanism::from_code(code).ok_or((
        ResponseError::UnsupportedSaslMechanism.code(),
        format!("unknown SCRAM mechanism {code}"),
    ))
}

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let allowed = broker.access(ctx).cluster(operation::ALTER);
    // Each user's changes, in request order.
    let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    let state = broker.security.snapshot();
    for d in &req.deletions {
        let change = mechanism(d.mechanism).and_then(|m| {
            if state.scram.contains_key(&(d.name.to_string(), m)) {
                Ok((m, None))
            } else {
                Err((ResponseError::ResourceNotFound.code(), "no such credential".into()))
            }
        });
        changes.entry(d.name.to_string()).or_default().push(change);
    }
    drop(state);
    for u in &req.upsertions {
        let change = mechanism(u.mechanism).and_then(|m| {
            let iterations = u32::try_from(u.iterations).unwrap_or(0);
            if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations)
                || u.salt.is_empty()
                || u.salted_password.len() != m.hash_len()
            {
                return Err((
                    ResponseError::UnacceptableCredential.code(),
                    format!(
                        "a credential has {SCRAM_ITERATIONS_MIN} to {SCRAM_ITERATIONS_MAX} iterations, a salt, \
                         and a salted password of the mechanism's size"
                    ),
                ));
            }
            Ok((
                m,
                Some(credential_from_salted(m, &u.salted_password, &u.salt, iterations)),
            ))
        });
        changes.entry(u.name.to_string()).or_default().push(change);
    }
    let mut results = Vec::with_capacity(changes.len());
    for (user, list) in changes {
        let mechanisms: Vec<_> = list.iter().filter_map(|c| c.as_ref().ok().map(|(m, _)| *m)).collect();
        let duplicated = (1..mechanisms.len()).any(|i| mechanisms[..i].contains(&mechanisms[i]));
        let outcome: Result<(), (i16, String)> = if !allowed {
            Err((
                ResponseError::ClusterAuthorizationFailed.code(),
                "not authorized to alter credentials".into(),
            ))
        } else if user.is_empty() {
            Err((ResponseError::UnacceptableCredential.code(), "empty user name".into()))
        } else if duplicated {
            Err((
                ResponseError::DuplicateResource.code(),
                "a mechanism of the user is named more than once".into(),
            ))
        } else if let Some(Err(e)) = list.iter().find(|c| c.is_err()) {
            Err(e.clone())
        } else {
            let mut done = Ok(());
            for (m, credential) in list.into_iter().flatten() {
                let command = SecurityCommand::SetScram {
                    user: user.clone(),
                    mechanism: m,
                    credential,
                };
                if let Err(e) = broker.security.change(command).await {
                    done = Err(e);
                    break;
                }
                tracing::info!(target: "courier::audit", principal = %ctx.principal, %user, mechanism = m.name(), "SCRAM credential changed");
            }
            done
        };
        let r = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
        results.push(match outcome {
            Ok(()) => r,
            Err((code, message)) => {
                super::count_error(courier_protocol::ApiKey::AlterUserScramCredentials, code);
                r.with_error_code(code).with_error_message(Some(str_bytes(&message)))
            }
        });
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}
