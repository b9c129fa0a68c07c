//! Who may do what: Kafka ACLs, SCRAM credentials (salted keys only) and
//! the organization each principal belongs to, as the Raft group agrees on
//! them.
//!
//! [`SecurityState::apply`] is a pure function like the rest of the Raft
//! state machine. Every command is absolute (these bindings exist, these
//! are gone, this credential is now that), so one retried after a leader
//! change takes effect once. ACL matching follows Kafka's
//! `StandardAuthorizer`: a Deny wins over any Allow, `All` matches every
//! operation, and Read, Write, Delete and Alter imply Describe (AlterConfigs
//! implies DescribeConfigs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Kafka's resource type codes (`org.apache.kafka.common.resource.ResourceType`).
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's pattern type codes (`PatternType`).
pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's ACL operation codes (`AclOperation`).
pub mod operation {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Kafka's permission type codes (`AclPermissionType`).
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The name of the one cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name, principal or host that matches every one.
pub const WILDCARD: &str = "*";

/// Largest ACL count the state holds; one request cannot add millions.
pub const ACLS_MAX: usize = 100_000;
/// Fewest and most PBKDF2 iterations a SCRAM credential may have
/// (Kafka's bounds).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;

/// One ACL binding, as Kafka's CreateAcls carries it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

/// What DescribeAcls and DeleteAcls select (`None`: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

/// Why an ACL binding or filter is not valid (INVALID_REQUEST).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("unknown or unsupported resource type {0}")]
    ResourceType(i8),
    #[error("a binding's pattern type is LITERAL or PREFIXED, not {0}")]
    PatternType(i8),
    #[error("unknown or unsupported operation {0}")]
    Operation(i8),
    #[error("a binding's permission is ALLOW or DENY, not {0}")]
    Permission(i8),
    #[error("a principal is `Type:name`, not {0:?}")]
    Principal(String),
    #[error("the cluster resource is named {CLUSTER_NAME}")]
    ClusterName,
    #[error("a resource name cannot be empty")]
    EmptyName,
}

impl Acl {
    /// Checks a binding as CreateAcls must before storing it.
    pub fn validate(&self) -> Result<(), AclError> {
        if !matches!(
            self.resource_type,
            resource::TOPIC | resource::GROUP | resource::CLUSTER | resource::TRANSACTIONAL_ID
        ) {
            return Err(AclError::ResourceType(self.resource_type));
        }
        if !matches!(self.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
            return Err(AclError::PatternType(self.pattern_type));
        }
        if !(operation::ALL..=operation::IDEMPOTENT_WRITE).contains(&self.operation) {
            return Err(AclError::Operation(self.operation));
        }
        if !matches!(self.permission, permission::ALLOW | permission::DENY) {
            return Err(AclError::Permission(self.permission));
        }
        if !is_principal(&self.principal) {
            return Err(AclError::Principal(self.principal.clone()));
        }
        if self.resource_name.is_empty() {
            return Err(AclError::EmptyName);
        }
        if self.resource_type == resource::CLUSTER && self.resource_name != CLUSTER_NAME {
            return Err(AclError::ClusterName);
        }
        Ok(())
    }
}

/// Whether `p` has Kafka's `Type:name` shape (`User:*` included).
pub fn is_principal(p: &str) -> bool {
    p.split_once(':')
        .is_some_and(|(kind, name)| !kind.is_empty() && !name.is_empty())
}

impl AclFilter {
    /// Checks a filter's codes (ANY and MATCH are allowed here).
    pub fn validate(&self) -> Result<(), AclError> {
        if !(resource::ANY..=resource::USER).contains(&self.resource_type) {
            return Err(AclError::ResourceType(self.resource_type));
        }
        if !(pattern::ANY..=pattern::PREFIXED).contains(&self.pattern_type) {
            return Err(AclError::PatternType(self.pattern_type));
        }
        if !(operation::ANY..=operation::DESCRIBE_TOKENS).contains(&self.operation) {
            return Err(AclError::Operation(self.operation));
        }
        if !(permission::ANY..=permission::ALLOW).contains(&self.permission) {
            return Err(AclError::Permission(self.permission));
        }
        Ok(())
    }

    /// Whether `acl` is selected, as Kafka's `AclBindingFilter.matches`:
    /// MATCH selects the bindings that would apply to the named resource
    /// (literal, wildcard, and prefixes of it).
    pub fn matches(&self, acl: &Acl) -> bool {
        let code = |want: i8, any: i8, have: i8| want == any || want == have;
        if !code(self.resource_type, resource::ANY, acl.resource_type)
            || !code(self.operation, operation::ANY, acl.operation)
            || !code(self.permission, permission::ANY, acl.permission)
        {
            return false;
        }
        if self.principal.as_ref().is_some_and(|p| p != &acl.principal)
            || self.host.as_ref().is_some_and(|h| h != &acl.host)
        {
            return false;
        }
        match (self.pattern_type, &self.resource_name) {
            (pattern::MATCH, Some(name)) => resource_matches(acl, name),
            (pattern::MATCH, None) | (pattern::ANY, None) => true,
            (pattern::ANY, Some(name)) => &acl.resource_name == name,
            (want, name) => want == acl.pattern_type && name.as_ref().is_none_or(|n| n == &acl.resource_name),
        }
    }
}

/// Whether binding `acl` applies to the resource named `name` (of the
/// binding's own type): literally, by the `*` wildcard, or by prefix.
fn resource_matches(acl: &Acl, name: &str) -> bool {
    match acl.pattern_type {
        pattern::LITERAL => acl.resource_name == name || acl.resource_name == WILDCARD,
        pattern::PREFIXED => name.starts_with(acl.resource_name.as_str()),
        _ => false,
    }
}

/// Whether binding operation `granted` covers the requested `op`.
fn operation_covers(granted: i8, op: i8) -> bool {
    use operation::*;
    granted == op
        || granted == ALL
        || (op == DESCRIBE && matches!(granted, READ | WRITE | DELETE | ALTER))
        || (op == DESCRIBE_CONFIGS && granted == ALTER_CONFIGS)
}

/// A SCRAM mechanism Courier verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's `ScramMechanism` code in the credential APIs (1, 2).
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.code() == code)
    }

    /// Bytes of the hash (and of every key derived with it).
    pub fn hash_len(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// What the server keeps of a SCRAM password (RFC 5802 §3): never the
/// password, never the salted password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    /// Keys are secrets in all but name: a stored key lets its holder
    /// check guesses offline. Logs show the iteration count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A security change, ordered by Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// Adds these bindings (those present already stay once).
    CreateAcls(Vec<Acl>),
    /// Removes exactly these bindings (chosen by the handler from its
    /// filters, so a retry removes nothing more).
    DeleteAcls(Vec<Acl>),
    /// Sets (`Some`) or removes (`None`) a user's credential for one
    /// mechanism.
    SetScram {
        user: String,
        mechanism: ScramMechanism,
        credential: Option<ScramCredential>,
    },
    /// Records (`Some`) or forgets (`None`) the organization of a principal.
    SetOrganization {
        principal: String,
        organization: Option<String>,
    },
}

/// Why a security command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("at most {ACLS_MAX} ACLs")]
    TooManyAcls,
    #[error("a SCRAM credential has {SCRAM_ITERATIONS_MIN} to {SCRAM_ITERATIONS_MAX} iterations, a salt, and keys of the mechanism's hash size")]
    BadCredential,
    #[error("a user name cannot be empty")]
    EmptyUser,
    #[error("a principal is `Type:name` and an organization is not empty")]
    BadOrganization,
}

/// ACLs, credentials and organizations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    pub acls: BTreeSet<Acl>,
    pub scram: BTreeMap<(String, ScramMechanism), ScramCredential>,
    /// Principal (`User:alice`) to organization, as an administrator set it.
    pub organizations: BTreeMap<String, String>,
    /// Bumped by every accepted command: nodes wait on it to know a change
    /// has reached them.
    pub version: u64,
}

/// What the authorizer decides about one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// An explicit Deny binding matched.
    Denied,
    /// Bindings exist for the resource, none allows it.
    NotAllowed,
    /// No binding names the resource at all.
    NoAcl,
}

impl SecurityState {
    /// Applies one command; a refused command changes nothing.
    pub fn apply(&mut self, command: &SecurityCommand) -> Result<(), SecurityError> {
        match command {
            SecurityCommand::CreateAcls(acls) => {
                for a in acls {
                    a.validate()?;
                }
                let new = acls.iter().filter(|a| !self.acls.contains(*a)).count();
                if self.acls.len() + new > ACLS_MAX {
                    return Err(SecurityError::TooManyAcls);
                }
                self.acls.extend(acls.iter().cloned());
            }
            SecurityCommand::DeleteAcls(acls) => {
                for a in acls {
                    self.acls.remove(a);
                }
            }
            SecurityCommand::SetScram {
                user,
                mechanism,
                credential,
            } => {
                if user.is_empty() {
                    return Err(SecurityError::EmptyUser);
                }
                let key = (user.clone(), *mechanism);
                match credential {
                    Some(c) => {
                        let n = mechanism.hash_len();
                        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&c.iterations)
                            || c.salt.is_empty()
                            || c.stored_key.len() != n
                            || c.server_key.len() != n
                        {
                            return Err(SecurityError::BadCredential);
                        }
                        self.scram.insert(key, c.clone());
                    }
                    None => {
                        self.scram.remove(&key);
                    }
                }
            }
            SecurityCommand::SetOrganization {
                principal,
                organization,
            } => {
                if !is_principal(principal) || organization.as_ref().is_some_and(|o| o.is_empty()) {
                    return Err(SecurityError::BadOrganization);
                }
                match organization {
                    Some(o) => self.organizations.insert(principal.clone(), o.clone()),
                    None => self.organizations.remove(principal),
                };
            }
        }
        self.version += 1;
        Ok(())
    }

    /// The bindings `filter` selects.
    pub fn matching(&self, filter: &AclFilter) -> Vec<Acl> {
        self.acls.iter().filter(|a| filter.matches(a)).cloned().collect()
    }

    /// Whether `principal` connecting from `host` may perform `op` on the
    /// resource `(resource_type, name)`, by the bindings alone (super users
    /// and the no-ACL default are the caller's settings).
    pub fn decide(&self, principal: &str, host: &str, op: i8, resource_type: i8, name: &str) -> Decision {
        let mut any = false;
        let mut allowed = false;
        for acl in self
            .acls
            .iter()
            .filter(|a| a.resource_type == resource_type && resource_matches(a, name))
        {
            any = true;
            let who = acl.principal == principal || acl.principal == "User:*";
            let from = acl.host == WILDCARD || acl.host == host;
            if !(who && from && operation_covers(acl.operation, op)) {
                continue;
            }
            if acl.permission == permission::DENY {
                return Decision::Denied;
            }
            allowed = true;
        }
        match (allowed, any) {
            (true, _) => Decision::Allow,
            (false, true) => Decision::NotAllowed,
            (false, false) => Decision::NoAcl,
        }
    }

    /// Whether some binding allows `principal` `op` on some resource of
    /// `resource_type` without a Deny cancelling it (Kafka's
    /// `authorizeByResourceType`, which an idempotent producer's
    /// IdempotentWrite falls back to: Write on any topic). A Deny cancels an
    /// Allow when it covers the Allow's whole pattern: a literal Deny on the
    /// same name or on `*`, or a prefixed Deny that the Allow's name starts
    /// with.
    pub fn allows_any(&self, principal: &str, host: &str, op: i8, resource_type: i8) -> bool {
        let applies = |a: &Acl| {
            a.resource_type == resource_type
                && (a.principal == principal || a.principal == "User:*")
                && (a.host == WILDCARD || a.host == host)
                && operation_covers(a.operation, op)
        };
        let denies: Vec<&Acl> = self
            .acls
            .iter()
            .filter(|a| a.permission == permission::DENY && applies(a))
            .collect();
        self.acls
            .iter()
            .filter(|a| a.permission == permission::ALLOW && applies(a))
            .any(|allow| {
                !denies.iter().any(|deny| match deny.pattern_type {
                    pattern::LITERAL => {
                        deny.resource_name == WILDCARD
                            || (allow.pattern_type == pattern::LITERAL && deny.resource_name == allow.resource_name)
                    }
                    pattern::PREFIXED => allow.resource_name.starts_with(deny.resource_name.as_str()),
                    _ => false,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acl(rt: i8, name: &str, pt: i8, who: &str, op: i8, perm: i8) -> Acl {
        Acl {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    fn state(acls: Vec<Acl>) -> SecurityState {
        let mut s = SecurityState::default();
        s.apply(&SecurityCommand::CreateAcls(acls)).unwrap();
        s
    }

    #[test]
    fn deny_wins_and_read_implies_describe() {
        use operation::*;
        let s = state(vec![
            acl(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                "User:a",
                READ,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "ord",
                pattern::PREFIXED,
                "User:b",
                ALL,
                permission::ALLOW,
            ),
            acl(
                resource::TOPIC,
                "orders",
                pattern::LITERAL,
                "User:b",
                WRITE,
                permission::DENY,
            ),
        ]);
        let t = resource::TOPIC;
        assert_eq!(s.decide("User:a", "h", READ, t, "orders"), Decision::Allow);
        assert_eq!(s.decide("User:a", "h", DESCRIBE, t, "orders"), Decision::Allow);
        assert_eq!(s.decide("User:a", "h", WRITE, t, "orders"), Decision::NotAllowed);
        assert_eq!(s.decide("User:b", "h", READ, t, "orders"), Decision::Allow);
        assert_eq!(s.decide("User:b", "h", WRITE, t, "orders"), Decision::Denied);
        assert_eq!(s.decide("User:b", "h", WRITE, t, "ordinal"), Decision::Allow);
        assert_eq!(s.decide("User:a", "h", READ, t, "other"), Decision::NoAcl);
        assert_eq!(
            s.decide("User:a", "h", READ, resource::GROUP, "orders"),
            Decision::NoAcl
        );
    }

    #[test]
    fn wildcards_of_name_principal_and_host_apply_and_a_host_binds() {
        use operation::*;
        let mut on_host = acl(
            resource::GROUP,
            "*",
            pattern::LITERAL,
            "User:*",
            READ,
            permission::ALLOW,
        );
        on_host.host = "10.0.0.1".into();
        let s = state(vec![on_host]);
        assert_eq!(
            s.decide("User:x", "10.0.0.1", READ, resource::GROUP, "g"),
            Decision::Allow
        );
        assert_eq!(
            s.decide("User:x", "10.0.0.2", READ, resource::GROUP, "g"),
            Decision::NotAllowed
        );
    }

    #[test]
    fn an_allow_on_some_topic_counts_unless_a_deny_covers_it() {
        use operation::*;
        let allow = acl(
            resource::TOPIC,
            "t-a",
            pattern::LITERAL,
            "User:a",
            ALL,
            permission::ALLOW,
        );
        let s = state(vec![allow.clone()]);
        assert!(s.allows_any("User:a", "h", WRITE, resource::TOPIC));
        assert!(!s.allows_any("User:b", "h", WRITE, resource::TOPIC));
        for deny in [
            acl(
                resource::TOPIC,
                "t-a",
                pattern::LITERAL,
                "User:a",
                WRITE,
                permission::DENY,
            ),
            acl(
                resource::TOPIC,
                "t-",
                pattern::PREFIXED,
                "User:*",
                ALL,
                permission::DENY,
            ),
            acl(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                "User:a",
                WRITE,
                permission::DENY,
            ),
        ] {
            let s = state(vec![allow.clone(), deny.clone()]);
            assert!(!s.allows_any("User:a", "h", WRITE, resource::TOPIC), "{deny:?}");
        }
        let s = state(vec![
            allow,
            acl(
                resource::TOPIC,
                "other",
                pattern::LITERAL,
                "User:a",
                WRITE,
                permission::DENY,
            ),
        ]);
        assert!(s.allows_any("User:a", "h", WRITE, resource::TOPIC));
    }

    #[test]
    fn filters_select_as_kafka_does() {
        use operation::*;
        let lit = acl(
            resource::TOPIC,
            "orders",
            pattern::LITERAL,
            "User:a",
            READ,
            permission::ALLOW,
        );
        let pre = acl(
            resource::TOPIC,
            "ord",
            pattern::PREFIXED,
            "User:a",
            READ,
            permission::ALLOW,
        );
        let star = acl(
            resource::TOPIC,
            "*",
            pattern::LITERAL,
            "User:a",
            READ,
            permission::ALLOW,
        );
        let s = state(vec![lit.clone(), pre.clone(), star.clone()]);
        let f = |pt: i8, name: Option<&str>| AclFilter {
            resource_type: resource::ANY,
            resource_name: name.map(str::to_owned),
            pattern_type: pt,
            principal: None,
            host: None,
            operation: ANY,
            permission: permission::ANY,
        };
        assert_eq!(s.matching(&f(pattern::MATCH, Some("orders"))).len(), 3);
        assert_eq!(s.matching(&f(pattern::LITERAL, Some("orders"))), vec![lit.clone()]);
        assert_eq!(s.matching(&f(pattern::PREFIXED, None)), vec![pre]);
        assert_eq!(s.matching(&f(pattern::ANY, Some("orders"))), vec![lit]);
        assert_eq!(s.matching(&f(pattern::ANY, None)).len(), 3);
    }

    #[test]
    fn invalid_bindings_and_credentials_change_nothing() {
        let mut s = SecurityState::default();
        let bad = acl(resource::TOPIC, "t", pattern::MATCH, "User:a", 3, 3);
        assert!(s.apply(&SecurityCommand::CreateAcls(vec![bad])).is_err());
        let bad = acl(resource::CLUSTER, "x", pattern::LITERAL, "User:a", 3, 3);
        assert!(s.apply(&SecurityCommand::CreateAcls(vec![bad])).is_err());
        let bad = acl(resource::TOPIC, "t", pattern::LITERAL, "nobody", 3, 3);
        assert!(s.apply(&SecurityCommand::CreateAcls(vec![bad])).is_err());
        let weak = ScramCredential {
            salt: vec![1],
            iterations: 1,
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
        };
        let set = SecurityCommand::SetScram {
            user: "u".into(),
            mechanism: ScramMechanism::Sha256,
            credential: Some(weak),
        };
        assert_eq!(s.apply(&set), Err(SecurityError::BadCredential));
        assert_eq!(s, SecurityState::default());
    }

    #[test]
    fn credentials_never_print_their_keys() {
        let c = ScramCredential {
            salt: b"NaCl".to_vec(),
            iterations: 4096,
            stored_key: vec![0xab; 32],
            server_key: vec![0xcd; 32],
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("171") && !shown.contains("ab") && !shown.contains("NaCl"),
            "{shown}"
        );
    }

    proptest! {
        /// Whatever the bindings, a matching Deny always wins.
        #[test]
        fn a_matching_deny_always_wins(ops in proptest::collection::vec(2i8..=12, 1..6), deny_op in 2i8..=12, op in 3i8..=12) {
            let mut acls: Vec<Acl> = ops.iter().map(|o| acl(resource::TOPIC, "t", pattern::LITERAL, "User:a", *o, permission::ALLOW)).collect();
            acls.push(acl(resource::TOPIC, "t", pattern::PREFIXED, "User:*", deny_op, permission::DENY));
            let s = state(acls);
            let d = s.decide("User:a", "h", op, resource::TOPIC, "t");
            if operation_covers(deny_op, op) {
                prop_assert_eq!(d, Decision::Denied);
            } else {
                prop_assert_ne!(d, Decision::Denied);
            }
        }
    }
}
