//! The one question every handler asks before it acts: may this principal,
//! from this host, perform this operation on this resource?
//!
//! Enforcement is on when `authorizer.class.name` is set. Super users
//! (`super.users`) may do anything; a resource no binding names is allowed
//! only with `allow.everyone.if.no.acl.found`; otherwise the bindings in the
//! Raft state decide (a Deny wins). Every denial is counted
//! (`courier_authorization_denied_total{api,operation,resource}`) and
//! logged as a structured `warn` event with principal, organization,
//! operation and resource: the input of anomaly detection.
//!
//! What each API checks, as Kafka's `KafkaApis` does:
//!
//! | API | checks |
//! |---|---|
//! | Produce | Write on each topic (TOPIC_AUTHORIZATION_FAILED per partition) |
//! | Fetch | Read on each topic (ClusterAction on the cluster for a replica fetch) |
//! | ListOffsets, OffsetForLeaderEpoch | Describe on each topic (Read implies it) |
//! | Metadata | Describe on each topic (unlisted when not asked by name); auto-creation needs Create on the cluster or the topic |
//! | InitProducerId | IdempotentWrite on the cluster, or Write on any topic; Write on the transactional id |
//! | FindCoordinator | Describe on the group (GROUP_AUTHORIZATION_FAILED), on the transactional id for its coordinator |
//! | JoinGroup, SyncGroup, Heartbeat, LeaveGroup | Read on the group |
//! | OffsetCommit | Read on the group, Read on each topic |
//! | OffsetFetch | Describe on the group, Describe on each topic |
//! | DescribeGroups | Describe on each group |
//! | ListGroups | Describe on the cluster lists every group, else those with Describe |
//! | DeleteGroups | Delete on each group |
//! | CreateTopics | Create on the cluster or on the topic |
//! | DeleteTopics | Delete on the topic |
//! | CreatePartitions | Alter on the topic |
//! | DescribeConfigs | DescribeConfigs on the topic, or on the cluster for a broker |
//! | IncrementalAlterConfigs | AlterConfigs on the topic, or on the cluster for a broker |
//! | DescribeCluster, DescribeAcls, DescribeUserScramCredentials | Describe on the cluster |
//! | CreateAcls, DeleteAcls, AlterUserScramCredentials | Alter on the cluster |
//! | ApiVersions, SaslHandshake, SaslAuthenticate | nothing |

use std::collections::BTreeSet;

use courier_consensus::security::{operation, resource, Decision, SecurityState, CLUSTER_NAME};
use tracing::warn;

use crate::api::RequestContext;
use crate::security::SecuritySnapshot;

/// `authorizer.class.name` values that turn enforcement on: Courier's own
/// name and Kafka's two, so a Kafka configuration carries over.
pub const AUTHORIZER_NAMES: [&str; 3] = [
    "courier",
    "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "kafka.security.authorizer.AclAuthorizer",
];

/// The settings the authorizer works by.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    pub enabled: bool,
    pub super_users: BTreeSet<String>,
    pub allow_if_no_acl: bool,
}

fn operation_name(op: i8) -> &'static str {
    match op {
        operation::ALL => "All",
        operation::READ => "Read",
        operation::WRITE => "Write",
        operation::CREATE => "Create",
        operation::DELETE => "Delete",
        operation::ALTER => "Alter",
        operation::DESCRIBE => "Describe",
        operation::CLUSTER_ACTION => "ClusterAction",
        operation::DESCRIBE_CONFIGS => "DescribeConfigs",
        operation::ALTER_CONFIGS => "AlterConfigs",
        operation::IDEMPOTENT_WRITE => "IdempotentWrite",
        _ => "Unknown",
    }
}

fn resource_name(rt: i8) -> &'static str {
    match rt {
        resource::TOPIC => "Topic",
        resource::GROUP => "Group",
        resource::CLUSTER => "Cluster",
        resource::TRANSACTIONAL_ID => "TransactionalId",
        _ => "Unknown",
    }
}

impl Authorizer {
    /// Parses `super.users` (`User:a;User:b`, Kafka's separator).
    pub fn new(enabled: bool, super_users: &str, allow_if_no_acl: bool) -> Self {
        Self {
            enabled,
            super_users: super_users
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            allow_if_no_acl,
        }
    }

    fn decide(&self, state: &SecurityState, ctx: &RequestContext, op: i8, rt: i8, name: &str) -> bool {
        if !self.enabled || self.super_users.contains(&*ctx.principal) {
            return true;
        }
        match state.decide(&ctx.principal, &ctx.host, op, rt, name) {
            Decision::Allow => true,
            Decision::NoAcl => self.allow_if_no_acl,
            Decision::Denied | Decision::NotAllowed => false,
        }
    }

    /// Whether the request's principal may; a denial is counted and logged.
    pub fn allowed(&self, state: &SecurityState, ctx: &RequestContext, op: i8, rt: i8, name: &str) -> bool {
        let ok = self.decide(state, ctx, op, rt, name);
        if !ok {
            metrics::counter!(
                "courier_authorization_denied_total",
                "api" => ctx.api,
                "operation" => operation_name(op),
                "resource" => resource_name(rt),
            )
            .increment(1);
            warn!(
                target: "courier::audit",
                principal = %ctx.principal,
                organization = %ctx.organization(state),
                host = %ctx.host,
                api = ctx.api,
                operation = operation_name(op),
                resource_type = resource_name(rt),
                resource = name,
                "authorization denied"
            );
        }
        ok
    }

    /// [`Authorizer::allowed`] without the log and metric, for what Kafka
    /// filters silently (topics left out of an all-topics Metadata).
    pub fn allowed_quietly(&self, state: &SecurityState, ctx: &RequestContext, op: i8, rt: i8, name: &str) -> bool {
        self.decide(state, ctx, op, rt, name)
    }

    /// Kafka's `authorizeByResourceType`: some binding allows `op` on some
    /// resource of type `rt` (an idempotent producer with Write on any
    /// topic needs no IdempotentWrite on the cluster).
    pub fn allowed_on_any(&self, state: &SecurityState, ctx: &RequestContext, op: i8, rt: i8) -> bool {
        !self.enabled
            || self.super_users.contains(&*ctx.principal)
            || state.allows_any(&ctx.principal, &ctx.host, op, rt)
    }
}

/// One request's view of the authorizer: the security state is read once
/// (and not at all while enforcement is off).
pub struct Access<'a> {
    authorizer: &'a Authorizer,
    ctx: &'a RequestContext,
    state: Option<SecuritySnapshot>,
}

impl<'a> Access<'a> {
    pub fn new(authorizer: &'a Authorizer, ctx: &'a RequestContext, state: impl FnOnce() -> SecuritySnapshot) -> Self {
        let state = authorizer.enabled.then(state);
        Self { authorizer, ctx, state }
    }

    /// Whether the request may `op` the resource; denials are audited.
    pub fn allows(&self, op: i8, rt: i8, name: &str) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| self.authorizer.allowed(s, self.ctx, op, rt, name))
    }

    pub fn topic(&self, op: i8, name: &str) -> bool {
        self.allows(op, resource::TOPIC, name)
    }

    pub fn group(&self, op: i8, name: &str) -> bool {
        self.allows(op, resource::GROUP, name)
    }

    pub fn cluster(&self, op: i8) -> bool {
        self.allows(op, resource::CLUSTER, CLUSTER_NAME)
    }

    /// [`Access::allows`] without auditing a denial.
    pub fn quietly(&self, op: i8, rt: i8, name: &str) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| self.authorizer.allowed_quietly(s, self.ctx, op, rt, name))
    }

    /// Some binding allows `op` on some resource of type `rt`.
    pub fn on_any(&self, op: i8, rt: i8) -> bool {
        self.state
            .as_ref()
            .is_none_or(|s| self.authorizer.allowed_on_any(s, self.ctx, op, rt))
    }
}
