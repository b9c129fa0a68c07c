//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), server side, as
//! Kafka speaks them: no channel binding, no extensions but Kafka's
//! delegation-token flag (refused: Courier has no delegation tokens).
//!
//! The exchange is two steps, and each step is its own type: a
//! [`ScramServer`] takes the client-first message and becomes a
//! [`ScramAwaitingFinal`], which takes the client-final message and either
//! proves the client (returning the server-final message, by which the
//! client checks the server in turn) or fails. Nothing here panics on peer
//! input; proofs are compared in constant time; secrets are never `Debug`.
//!
//! An unknown user gets a server-first message like any other (a salt
//! derived from the name and a per-process secret) and fails at the proof,
//! so the exchange does not tell who exists.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use courier_consensus::security::{ScramCredential, ScramMechanism, SCRAM_ITERATIONS_MIN};
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

/// Largest SCRAM message accepted (a user name, a nonce, a proof).
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// Bytes of randomness in the server's nonce.
const SERVER_NONCE_BYTES: usize = 24;
/// Salt bytes Courier generates for new credentials.
pub const SALT_BYTES: usize = 16;

/// Why an exchange failed. The peer is told only "authentication failed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM extensions (delegation tokens) are not supported")]
    Extension,
    #[error("the client-final message does not continue this exchange")]
    NonceMismatch,
    #[error("the client proof is wrong (bad password or unknown user)")]
    InvalidProof,
    #[error("no randomness for a nonce")]
    Random,
}

fn algorithms(m: ScramMechanism) -> (pbkdf2::Algorithm, hmac::Algorithm, &'static digest::Algorithm) {
    match m {
        ScramMechanism::Sha256 => (pbkdf2::PBKDF2_HMAC_SHA256, hmac::HMAC_SHA256, &digest::SHA256),
        ScramMechanism::Sha512 => (pbkdf2::PBKDF2_HMAC_SHA512, hmac::HMAC_SHA512, &digest::SHA512),
    }
}

fn hmac_of(m: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(algorithms(m).1, key), data)
        .as_ref()
        .to_vec()
}

/// `Hi(password, salt, i)` of RFC 5802: PBKDF2 with the mechanism's HMAC.
pub fn salted_password(m: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; m.hash_len()];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(algorithms(m).0, iterations, salt, password, &mut out);
    out
}

/// What the server stores for a salted password (the password itself is
/// never needed: AlterUserScramCredentials sends the salted password).
pub fn credential_from_salted(m: ScramMechanism, salted: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
    let client_key = hmac_of(m, salted, b"Client Key");
    ScramCredential {
        salt: salt.to_vec(),
        iterations,
        stored_key: digest::digest(algorithms(m).2, &client_key).as_ref().to_vec(),
        server_key: hmac_of(m, salted, b"Server Key"),
    }
}

/// A new credential for `password` with a fresh random salt.
pub fn new_credential(m: ScramMechanism, password: &str, iterations: u32) -> Result<ScramCredential, ScramError> {
    let mut salt = [0u8; SALT_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| ScramError::Random)?;
    let iterations = iterations.max(SCRAM_ITERATIONS_MIN);
    let salted = salted_password(m, password.as_bytes(), &salt, iterations);
    Ok(credential_from_salted(m, &salted, &salt, iterations))
}

/// Whether `password` is the one `credential` was made from (SASL/PLAIN
/// checks passwords against the SCRAM credentials: one store for both).
pub fn password_matches(m: ScramMechanism, credential: &ScramCredential, password: &[u8]) -> bool {
    let salted = salted_password(m, password, &credential.salt, credential.iterations);
    let derived = credential_from_salted(m, &salted, &credential.salt, credential.iterations);
    constant_time_eq(&derived.stored_key, &credential.stored_key)
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A SASL name with RFC 5802's `=2C` and `=3D` escapes undone.
fn unescape_name(raw: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn printable_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Awaits the client-first message of one exchange.
pub struct ScramServer {
    mechanism: ScramMechanism,
}

/// The client-first message, parsed.
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    user: String,
    nonce: &'a str,
}

fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, ScramError> {
    // gs2-header: "n,," or "n,a=authzid," ("y" means the client could bind
    // but thinks we cannot: fine; "p=" asks for binding: refused).
    let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad GS2 flag")),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no GS2 header end"))?;
    if !(authzid.is_empty() || authzid.starts_with("a=")) {
        return Err(ScramError::Malformed("bad authorization id"));
    }
    let gs2_header = &msg[..flag.len() + 1 + authzid.len() + 1];
    let mut parts = bare.split(',');
    let user = parts
        .next()
        .and_then(|p| p.strip_prefix("n="))
        .ok_or(ScramError::Malformed("no user name"))?;
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .filter(|n| printable_nonce(n))
        .ok_or(ScramError::Malformed("no client nonce"))?;
    if parts.next().is_some() {
        // Kafka's only extension is `tokenauth=true` (delegation tokens).
        return Err(ScramError::Extension);
    }
    let user = unescape_name(user)?;
    if user.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    let authz = authzid.strip_prefix("a=").map(unescape_name).transpose()?;
    if authz.is_some_and(|a| a != user) {
        return Err(ScramError::Malformed("authorization id differs from the user"));
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        user,
        nonce,
    })
}

/// A stand-in credential for a user that does not exist: the exchange
/// proceeds and fails at the proof, as a wrong password does.
fn decoy_credential(m: ScramMechanism, user: &str) -> ScramCredential {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        let _ = ring::rand::SystemRandom::new().fill(&mut s);
        s
    });
    let salt = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), user.as_bytes());
    ScramCredential {
        salt: salt.as_ref()[..SALT_BYTES].to_vec(),
        iterations: SCRAM_ITERATIONS_MIN,
        // No key hashes to these from any password one can find.
        stored_key: vec![0; m.hash_len()],
        server_key: vec![0; m.hash_len()],
    }
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> Self {
        Self { mechanism }
    }

    /// Takes the client-first message; `lookup` finds the user's stored
    /// credential. Returns the server-first message to send.
    pub fn client_first(
        self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(ScramAwaitingFinal, String), ScramError> {
        if message.len() > MESSAGE_BYTES_MAX {
            return Err(ScramError::Malformed("message too long"));
        }
        let msg = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = parse_client_first(msg)?;
        let (credential, known) = match lookup(&first.user) {
            Some(c) => (c, true),
            None => (decoy_credential(self.mechanism, &first.user), false),
        };
        let mut random = [0u8; SERVER_NONCE_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| ScramError::Random)?;
        let nonce = format!("{}{}", first.nonce, B64.encode(random));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let awaiting = ScramAwaitingFinal {
            mechanism: self.mechanism,
            user: first.user,
            known,
            credential,
            gs2_header: first.gs2_header.to_owned(),
            nonce,
            auth_prefix: format!("{},{server_first},", first.bare),
        };
        Ok((awaiting, server_first))
    }
}

/// Awaits the client-final message.
pub struct ScramAwaitingFinal {
    mechanism: ScramMechanism,
    user: String,
    known: bool,
    credential: ScramCredential,
    gs2_header: String,
    nonce: String,
    /// `client-first-bare "," server-first ","` of the AuthMessage.
    auth_prefix: String,
}

impl std::fmt::Debug for ScramAwaitingFinal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramAwaitingFinal")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramAwaitingFinal {
    /// The user the client claims to be (not proven yet).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Takes the client-final message. On success: the proven user name
    /// and the server-final message.
    pub fn client_final(self, message: &[u8]) -> Result<(String, String), ScramError> {
        if message.len() > MESSAGE_BYTES_MAX {
            return Err(ScramError::Malformed("message too long"));
        }
        let msg = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding field"))?;
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if parts.next().is_some() {
            return Err(ScramError::Extension);
        }
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding differs from the GS2 header"));
        }
        // The nonce must end with this exchange's (client + server) nonce.
        // librdkafka puts its client nonce in front once more; Kafka accepts
        // that (`endsWith`), and so does Courier: the proof covers the
        // message as sent, and the fresh server nonce still rules out replay.
        let tail = nonce
            .len()
            .checked_sub(self.nonce.len())
            .and_then(|start| nonce.get(start..));
        if !tail.is_some_and(|t| constant_time_eq(t.as_bytes(), self.nonce.as_bytes())) {
            return Err(ScramError::NonceMismatch);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let m = self.mechanism;
        let auth_message = format!("{}{without_proof}", self.auth_prefix);
        let signature = hmac_of(m, &self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::InvalidProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored = digest::digest(algorithms(m).2, &client_key);
        if !(constant_time_eq(stored.as_ref(), &self.credential.stored_key) && self.known) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac_of(m, &self.credential.server_key, auth_message.as_bytes());
        Ok((self.user, format!("v={}", B64.encode(server_signature))))
    }
}

/// The client side, for `courier`'s own tools and the tests: builds the
/// messages a Kafka client sends.
pub mod client {
    use super::*;

    /// A client exchange after its first message.
    pub struct ScramClient {
        mechanism: ScramMechanism,
        password: Vec<u8>,
        bare: String,
        nonce: String,
    }

    impl ScramClient {
        /// The client-first message for `user` with client nonce `nonce`.
        pub fn first(mechanism: ScramMechanism, user: &str, password: &str, nonce: &str) -> (Self, String) {
            let name = user.replace('=', "=3D").replace(',', "=2C");
            let bare = format!("n={name},r={nonce}");
            let msg = format!("n,,{bare}");
            let client = Self {
                mechanism,
                password: password.as_bytes().to_vec(),
                bare,
                nonce: nonce.to_owned(),
            };
            (client, msg)
        }

        /// The client-final message for `server_first`, and the server
        /// signature the server-final message must carry.
        pub fn finish(self, server_first: &str) -> Result<(String, String), ScramError> {
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for part in server_first.split(',') {
                if let Some(v) = part.strip_prefix("r=") {
                    nonce = Some(v);
                } else if let Some(v) = part.strip_prefix("s=") {
                    salt = B64.decode(v).ok();
                } else if let Some(v) = part.strip_prefix("i=") {
                    iterations = v.parse::<u32>().ok();
                }
            }
            let (nonce, salt, iterations) = match (nonce, salt, iterations) {
                (Some(n), Some(s), Some(i)) if n.starts_with(&self.nonce) => (n, s, i),
                _ => return Err(ScramError::Malformed("bad server-first message")),
            };
            let m = self.mechanism;
            let salted = salted_password(m, &self.password, &salt, iterations);
            let client_key = hmac_of(m, &salted, b"Client Key");
            let stored_key = digest::digest(algorithms(m).2, &client_key);
            let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
            let auth_message = format!("{},{server_first},{without_proof}", self.bare);
            let signature = hmac_of(m, stored_key.as_ref(), auth_message.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
            let server_key = hmac_of(m, &salted, b"Server Key");
            let server_signature = hmac_of(m, &server_key, auth_message.as_bytes());
            Ok((
                format!("{without_proof},p={}", B64.encode(proof)),
                format!("v={}", B64.encode(server_signature)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;
    use proptest::prelude::*;

    fn exchange(m: ScramMechanism, stored_for: &str, password: &str, user: &str) -> Result<String, ScramError> {
        let cred = new_credential(m, "pencil", 4096).unwrap();
        let (client, first) = ScramClient::first(m, user, password, "fyko+d2lbbFgONRv9qkxdawL");
        let (server, server_first) = ScramServer::new(m)
            .client_first(first.as_bytes(), |u| (u == stored_for).then(|| cred.clone()))
            .unwrap();
        let (client_final, expected) = client.finish(&server_first).unwrap();
        let (who, server_final) = server.client_final(client_final.as_bytes())?;
        assert_eq!(server_final, expected, "the client can verify the server");
        Ok(who)
    }

    #[test]
    fn the_right_password_authenticates_with_both_mechanisms() {
        for m in ScramMechanism::ALL {
            assert_eq!(exchange(m, "user", "pencil", "user").as_deref(), Ok("user"));
        }
    }

    #[test]
    fn a_wrong_password_or_unknown_user_fails_at_the_proof() {
        for m in ScramMechanism::ALL {
            assert_eq!(exchange(m, "user", "pen", "user"), Err(ScramError::InvalidProof));
            assert_eq!(exchange(m, "user", "pencil", "other"), Err(ScramError::InvalidProof));
        }
    }

    /// The RFC 7677 test vector: SCRAM-SHA-256, user "user", password
    /// "pencil", with the RFC's salt, nonces and proof.
    #[test]
    fn rfc_7677_vector_verifies() {
        let m = ScramMechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = credential_from_salted(m, &salted_password(m, b"pencil", &salt, 4096), &salt, 4096);
        let server = ScramAwaitingFinal {
            mechanism: m,
            user: "user".into(),
            known: true,
            credential: cred,
            gs2_header: "n,,".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            auth_prefix: "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,".into(),
        };
        let final_msg = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let (user, server_final) = server.client_final(final_msg.as_bytes()).unwrap();
        assert_eq!(user, "user");
        assert_eq!(server_final, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn a_tampered_proof_or_replayed_nonce_is_refused() {
        let m = ScramMechanism::Sha512;
        let cred = new_credential(m, "pw", 4096).unwrap();
        let start = |nonce: &str| {
            let (client, first) = ScramClient::first(m, "u", "pw", nonce);
            let (server, sf) = ScramServer::new(m)
                .client_first(first.as_bytes(), |_| Some(cred.clone()))
                .unwrap();
            let (cf, _) = client.finish(&sf).unwrap();
            (server, cf)
        };
        let (server, cf) = start("abc");
        let mut tampered = cf.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(server.client_final(&tampered).is_err());
        // The final message of one exchange replayed into a new one (same
        // client nonce, fresh server nonce) does not continue it.
        let (server2, _) = start("abc");
        assert_eq!(server2.client_final(cf.as_bytes()), Err(ScramError::NonceMismatch));
    }

    #[test]
    fn plain_passwords_check_against_scram_credentials() {
        let m = ScramMechanism::Sha256;
        let cred = new_credential(m, "secret", 4096).unwrap();
        assert!(password_matches(m, &cred, b"secret"));
        assert!(!password_matches(m, &cred, b"Secret"));
    }

    #[test]
    fn names_unescape_and_bad_messages_are_typed_errors() {
        assert_eq!(unescape_name("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(unescape_name("a=2").is_err());
        let m = ScramMechanism::Sha256;
        let lookup = |_: &str| None;
        for bad in [
            "",
            "n,,",
            "p=tls-unique,,n=u,r=x",
            "n,,n=u",
            "n,,n=u,r=x,tokenauth=true",
            "q,,n=u,r=x",
        ] {
            assert!(
                ScramServer::new(m).client_first(bad.as_bytes(), lookup).is_err(),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_client_messages_fail_or_succeed_without_panic(first in proptest::collection::vec(any::<u8>(), 0..200),
                                                             last in proptest::collection::vec(any::<u8>(), 0..200)) {
            let m = ScramMechanism::Sha256;
            if let Ok((s, _)) = ScramServer::new(m).client_first(&first, |_| None) {
                prop_assert!(s.client_final(&last).is_err());
            }
        }

        #[test]
        fn structured_client_messages_never_panic(user in "[a-z=,]{0,8}", nonce in "[ -~]{0,12}", tail in "[ -~]{0,40}") {
            let m = ScramMechanism::Sha512;
            let first = format!("n,,n={user},r={nonce}");
            if let Ok((s, sf)) = ScramServer::new(m).client_first(first.as_bytes(), |_| None) {
                let r = sf.split(',').next().unwrap_or("").to_owned();
                let _ = s.client_final(format!("c=biws,{r},p={tail}").as_bytes());
            }
        }
    }
}
