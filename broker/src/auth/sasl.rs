//! SASL on a connection: SaslHandshake picks a mechanism, SaslAuthenticate
//! carries its tokens (KIP-152 framing), and the connection is served only
//! once the exchange proved a user. A proven session may authenticate again
//! (KIP-368) before `connections.max.reauth.ms` runs out; the principal
//! must stay the same.
//!
//! Mechanisms: PLAIN (checked against the user's SCRAM credential, so there
//! is one credential store) and SCRAM-SHA-256 / SCRAM-SHA-512.

use std::time::{Duration, Instant};

use courier_consensus::security::{ScramMechanism, SecurityState};
use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::ResponseError;

use super::scram::{self, ScramAwaitingFinal, ScramServer};
use crate::api::str_bytes;

/// A mechanism a listener may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            n => ScramMechanism::from_name(n).map(Mechanism::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// Where the exchange stands.
enum Stage {
    /// Waiting for a SaslHandshake.
    Handshake,
    /// The mechanism is chosen: waiting for its first token.
    Token(Mechanism),
    /// SCRAM: waiting for the client-final message.
    ScramFinal(ScramMechanism, ScramAwaitingFinal),
}

/// A proven session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: String,
    pub mechanism: Mechanism,
    /// When the session must authenticate again (KIP-368), if ever.
    pub expires: Option<Instant>,
}

/// What a SaslAuthenticate did to the connection.
pub enum Step {
    /// Answer, and wait for the next token.
    Continue(SaslAuthenticateResponse),
    /// Answer: the user is proven (again, on a re-authentication).
    Done(SaslAuthenticateResponse, Authenticated),
    /// Answer with this failure, then close the connection.
    Failed(SaslAuthenticateResponse, String),
}

/// One connection's SASL state.
pub struct SaslSession {
    enabled: Vec<Mechanism>,
    reauth: Option<Duration>,
    stage: Stage,
    pub authenticated: Option<Authenticated>,
}

/// Why an exchange failed, as logged (never with a secret).
fn failed(reason: impl Into<String>) -> Step {
    let reason = reason.into();
    let response = SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
        .with_error_message(Some(str_bytes(
            "Authentication failed: invalid credentials or SASL exchange",
        )));
    Step::Failed(response, reason)
}

impl SaslSession {
    pub fn new(enabled: Vec<Mechanism>, reauth: Option<Duration>) -> Self {
        Self {
            enabled,
            reauth,
            stage: Stage::Handshake,
            authenticated: None,
        }
    }

    /// Whether the session may be served requests other than SASL ones.
    pub fn is_serving(&self, now: Instant) -> bool {
        self.authenticated
            .as_ref()
            .is_some_and(|a| a.expires.is_none_or(|e| now < e))
    }

    /// SaslHandshake: chooses the mechanism (also to re-authenticate).
    pub fn handshake(&mut self, req: &SaslHandshakeRequest) -> (SaslHandshakeResponse, bool) {
        let names = self.enabled.iter().map(|m| str_bytes(m.name())).collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(names);
        if !matches!(self.stage, Stage::Handshake) {
            return (response.with_error_code(ResponseError::IllegalSaslState.code()), false);
        }
        match Mechanism::parse(req.mechanism.as_str()).filter(|m| self.enabled.contains(m)) {
            Some(m) => {
                self.stage = Stage::Token(m);
                (response, true)
            }
            None => (
                response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                false,
            ),
        }
    }

    /// One token of the chosen mechanism (a SaslAuthenticate's bytes, or
    /// a raw frame after a v0 handshake).
    pub fn authenticate(&mut self, token: &[u8], now: Instant, state: &SecurityState) -> Step {
        match std::mem::replace(&mut self.stage, Stage::Handshake) {
            Stage::Handshake => failed("SaslAuthenticate before SaslHandshake"),
            Stage::Token(Mechanism::Plain) => match plain(token, state) {
                Ok(user) => self.proven(user, Mechanism::Plain, Vec::new(), now),
                Err(reason) => failed(reason),
            },
            Stage::Token(Mechanism::Scram(m)) => {
                let lookup = |user: &str| state.scram.get(&(user.to_owned(), m)).cloned();
                match ScramServer::new(m).client_first(token, lookup) {
                    Ok((awaiting, server_first)) => {
                        self.stage = Stage::ScramFinal(m, awaiting);
                        Step::Continue(SaslAuthenticateResponse::default().with_auth_bytes(server_first.into()))
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            Stage::ScramFinal(m, awaiting) => {
                let claimed = awaiting.user().to_owned();
                match awaiting.client_final(token) {
                    Ok((user, server_final)) => self.proven(user, Mechanism::Scram(m), server_final.into_bytes(), now),
                    Err(e) => failed(format!("user {claimed:?}: {e}")),
                }
            }
        }
    }

    fn proven(&mut self, user: String, mechanism: Mechanism, token: Vec<u8>, now: Instant) -> Step {
        if let Some(before) = &self.authenticated {
            if before.user != user {
                return failed(format!(
                    "re-authentication as {user:?} on a session of {:?}",
                    before.user
                ));
            }
        }
        let lifetime = self.reauth;
        let done = Authenticated {
            user,
            mechanism,
            expires: lifetime.map(|d| now + d),
        };
        self.authenticated = Some(done.clone());
        let response = SaslAuthenticateResponse::default()
            .with_auth_bytes(token.into())
            .with_session_lifetime_ms(lifetime.map_or(0, |d| d.as_millis() as i64));
        Step::Done(response, done)
    }
}

/// SASL/PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`, checked
/// against the user's SCRAM-SHA-512 credential, else its SCRAM-SHA-256 one.
fn plain(token: &[u8], state: &SecurityState) -> Result<String, String> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed PLAIN message".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "PLAIN user name is not UTF-8".to_owned())?;
    if user.is_empty() || !(authzid.is_empty() || authzid == user.as_bytes()) {
        return Err("PLAIN authorization id differs from the user".into());
    }
    let found = [ScramMechanism::Sha512, ScramMechanism::Sha256]
        .into_iter()
        .find_map(|m| state.scram.get(&(user.to_owned(), m)).map(|c| (m, c)));
    match found {
        Some((m, credential)) if scram::password_matches(m, credential, password) => Ok(user.to_owned()),
        _ => Err(format!("user {user:?}: wrong password or unknown user")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state_with(user: &str, password: &str) -> SecurityState {
        let mut s = SecurityState::default();
        s.scram.insert(
            (user.into(), ScramMechanism::Sha256),
            scram::new_credential(ScramMechanism::Sha256, password, 4096).unwrap(),
        );
        s
    }

    #[test]
    fn plain_checks_the_password_and_the_authorization_id() {
        let s = state_with("alice", "pw");
        assert_eq!(plain(b"\0alice\0pw", &s), Ok("alice".into()));
        assert_eq!(plain(b"alice\0alice\0pw", &s), Ok("alice".into()));
        assert!(plain(b"bob\0alice\0pw", &s).is_err(), "acting as another user");
        assert!(plain(b"\0alice\0wrong", &s).is_err());
        assert!(plain(b"\0nobody\0pw", &s).is_err());
        assert!(plain(b"\0alice\0pw\0extra", &s).is_err());
    }

    #[test]
    fn a_session_is_served_only_once_proven_and_until_it_expires() {
        let s = state_with("alice", "pw");
        let mut session = SaslSession::new(vec![Mechanism::Plain], Some(Duration::from_secs(10)));
        let now = Instant::now();
        assert!(!session.is_serving(now));
        assert!(
            matches!(session.authenticate(b"\0alice\0pw", now, &s), Step::Failed(..)),
            "no handshake yet"
        );
        let (r, ok) = session.handshake(&SaslHandshakeRequest::default().with_mechanism(str_bytes("SCRAM-SHA-512")));
        assert!(!ok && r.error_code == ResponseError::UnsupportedSaslMechanism.code());
        assert!(
            session
                .handshake(&SaslHandshakeRequest::default().with_mechanism(str_bytes("PLAIN")))
                .1
        );
        assert!(matches!(session.authenticate(b"\0alice\0pw", now, &s), Step::Done(..)));
        assert!(session.is_serving(now));
        assert!(!session.is_serving(now + Duration::from_secs(11)));
    }

    proptest! {
        #[test]
        fn any_plain_or_scram_token_in_any_stage_fails_or_succeeds_without_panic(
            tokens in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..4),
            mechanism in 0usize..3,
        ) {
            let s = state_with("alice", "pw");
            let m = [Mechanism::Plain, Mechanism::Scram(ScramMechanism::Sha256), Mechanism::Scram(ScramMechanism::Sha512)][mechanism];
            let mut session = SaslSession::new(vec![m], None);
            session.handshake(&SaslHandshakeRequest::default().with_mechanism(str_bytes(m.name())));
            for t in &tokens {
                let _ = session.authenticate(t, Instant::now(), &s);
            }
        }
    }
}
