//! One handler per Kafka API. A handler takes the decoded request and
//! returns the response body; it picks every error code itself, in one
//! place, from what went wrong — never from a string.

pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_user_scram_credentials;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use courier_protocol::request::Request;
use courier_protocol::{ApiKey, RequestKind, ResponseKind, StrBytes};
use kafka_protocol::messages::TopicName;

use crate::Broker;

/// A response body that is not ready yet.
pub type ResponseFuture = Pin<Box<dyn Future<Output = ResponseKind> + Send>>;

/// What a handler gives the connection. Moved once per request; boxing
/// the ready response would cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// The response, ready to send.
    Now(ResponseKind),
    /// Queued work (Produce): the response comes when the ledger commits.
    Later(ResponseFuture),
    /// No response at all (Produce with acks=0).
    Nothing,
    /// Close the connection without answering.
    Close,
}

/// Who sent a request, and where.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub client_id: String,
    pub peer: SocketAddr,
    /// The client's address as ACLs name hosts.
    pub host: Arc<str>,
    /// Kafka principal (`User:alice`; `User:ANONYMOUS` when nobody
    /// authenticated).
    pub principal: Arc<str>,
    /// The organization when no administrator recorded one for the
    /// principal: the CA that issued its certificate, else this node's.
    pub default_organization: Arc<str>,
    /// The listener the client connected to (Metadata answers with its
    /// addresses).
    pub listener: Arc<str>,
    /// The API, for logs and metrics.
    pub api: &'static str,
}

impl RequestContext {
    /// The principal's organization: as an administrator recorded it in
    /// the security state, else the default.
    pub fn organization<'a>(&'a self, state: &'a courier_consensus::security::SecurityState) -> &'a str {
        state
            .organizations
            .get(&*self.principal)
            .map_or(&*self.default_organization, |o| o.as_str())
    }

    /// Who sends what this request produces, as its blocks record it.
    pub fn sent_by(&self, state: &courier_consensus::security::SecurityState) -> crate::sequencer::SentBy {
        let organization = match self.organization(state) {
            o if o == &*self.default_organization => self.default_organization.clone(),
            o => Arc::from(o),
        };
        crate::sequencer::SentBy {
            principal: self.principal.clone(),
            organization,
        }
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// A short, bounded label for metrics.
pub fn api_name(api_key: ApiKey) -> &'static str {
    courier_protocol::versions::name(api_key)
}

/// Whether node `id` is listed to clients: this node, or one it reaches,
/// or reached less than a session timeout ago. Connections coming up or
/// being replaced do not take a node out of clients' metadata (librdkafka
/// drops a broker missing from a Metadata response, failing what it had
/// sent there); a stopped node leaves it once the timeout runs out.
pub fn node_listed(broker: &Broker, id: i32) -> bool {
    broker
        .sequencer
        .replicated()
        .map_or(id == broker.node.node_id, |r| r.is_listed(id))
}

/// The nodes of the deployment as the Raft state registers them (only
/// those [`node_listed`] when `listed_only`), and always this node, which
/// the client reached, even before its own registration is applied here.
pub fn known_brokers(broker: &Broker, listed_only: bool) -> Vec<crate::topics::BrokerAddr> {
    let me = broker.node.node_id;
    let mut known: Vec<_> = broker
        .topics
        .brokers()
        .into_iter()
        .filter(|b| b.id == me || !listed_only || node_listed(broker, b.id))
        .collect();
    if !known.iter().any(|b| b.id == me) {
        known.push(crate::topics::BrokerAddr {
            id: me,
            listeners: broker.node.listeners.clone(),
            organization: broker.config.organization.clone(),
        });
        known.sort_by_key(|b| b.id);
    }
    known
}

/// SECURITY_DISABLED for the ACL APIs when no authorizer is configured
/// (Kafka's answer), else `None`.
pub fn security_disabled(broker: &Broker) -> Option<i16> {
    (!broker.authorizer.enabled).then_some(kafka_protocol::ResponseError::SecurityDisabled.code())
}

/// GROUP_AUTHORIZATION_FAILED when the request may not `op` on group
/// `group`, else `None`.
pub fn group_denied(broker: &Broker, ctx: &RequestContext, op: i8, group: &str) -> Option<i16> {
    (!broker.access(ctx).group(op, group)).then_some(kafka_protocol::ResponseError::GroupAuthorizationFailed.code())
}

/// Counts an error code a handler returned, by API and Kafka error name.
pub fn count_error(api: ApiKey, code: i16) {
    if code != 0 {
        let error = kafka_protocol::error::ParseResponseErrorCode::err(code)
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|| code.to_string());
        metrics::counter!("courier_request_errors_total", "api" => api_name(api), "error" => error).increment(1);
    }
}

/// Creates (`create`) or replaces a topic record through the sequencer
/// (with a replica cluster, the metadata ledger orders it); resolves once it
/// is durable and visible. Errors carry a Kafka error code.
pub async fn persist_topic(
    broker: &Arc<Broker>,
    record: courier_consensus::catalog::TopicRecord,
    create: bool,
) -> Result<(), (i16, String)> {
    broker
        .sequencer
        .put_topic(record, create)
        .await
        .map_err(|e| (rejected_code(&e), e.to_string()))
}

/// The Kafka error code for a write the sequencer did not take.
pub fn rejected_code(e: &crate::sequencer::Rejected) -> i16 {
    use crate::sequencer::Rejected;
    use kafka_protocol::ResponseError;
    match e {
        Rejected::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch.code(),
        Rejected::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber.code(),
        Rejected::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        Rejected::Storage(_) => ResponseError::KafkaStorageError.code(),
        Rejected::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
        Rejected::Kafka(code, _) => *code,
    }
}

/// Runs the handler for one request.
pub async fn dispatch(broker: &Arc<Broker>, ctx: &RequestContext, request: Request) -> Reply {
    use RequestKind as Rq;
    use ResponseKind as Rs;
    let version = request.version();
    metrics::counter!("courier_requests_total", "api" => api_name(request.api_key)).increment(1);
    match request.body {
        Rq::ApiVersions(_) => Reply::Now(Rs::ApiVersions(api_versions::handle())),
        Rq::Metadata(r) => Reply::Now(Rs::Metadata(metadata::handle(broker, ctx, r, version).await)),
        Rq::Produce(r) => produce::handle(broker, ctx, r).await,
        Rq::Fetch(r) => Reply::Now(Rs::Fetch(fetch::handle(broker, ctx, r, version).await)),
        Rq::ListOffsets(r) => Reply::Now(Rs::ListOffsets(list_offsets::handle(broker, ctx, r, version).await)),
        Rq::OffsetForLeaderEpoch(r) => Reply::Now(Rs::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(
            broker, ctx, r,
        ))),
        Rq::CreateTopics(r) => Reply::Now(Rs::CreateTopics(create_topics::handle(broker, ctx, r).await)),
        Rq::DeleteTopics(r) => Reply::Now(Rs::DeleteTopics(delete_topics::handle(broker, ctx, r, version).await)),
        Rq::CreatePartitions(r) => Reply::Now(Rs::CreatePartitions(create_partitions::handle(broker, ctx, r).await)),
        Rq::DescribeConfigs(r) => Reply::Now(Rs::DescribeConfigs(describe_configs::handle(broker, ctx, r))),
        Rq::IncrementalAlterConfigs(r) => Reply::Now(Rs::IncrementalAlterConfigs(
            incremental_alter_configs::handle(broker, ctx, r).await,
        )),
        Rq::DescribeCluster(r) => Reply::Now(Rs::DescribeCluster(describe_cluster::handle(broker, ctx, r))),
        Rq::InitProducerId(r) => Reply::Now(Rs::InitProducerId(init_producer_id::handle(broker, ctx, r).await)),
        Rq::FindCoordinator(r) => Reply::Now(Rs::FindCoordinator(find_coordinator::handle(broker, ctx, r, version))),
        Rq::JoinGroup(r) => Reply::Now(Rs::JoinGroup(join_group::handle(broker, ctx, r, version).await)),
        Rq::SyncGroup(r) => Reply::Now(Rs::SyncGroup(sync_group::handle(broker, ctx, r).await)),
        Rq::Heartbeat(r) => Reply::Now(Rs::Heartbeat(heartbeat::handle(broker, ctx, r))),
        Rq::LeaveGroup(r) => Reply::Now(Rs::LeaveGroup(leave_group::handle(broker, ctx, r))),
        Rq::OffsetCommit(r) => Reply::Now(Rs::OffsetCommit(offset_commit::handle(broker, ctx, r).await)),
        Rq::OffsetFetch(r) => Reply::Now(Rs::OffsetFetch(offset_fetch::handle(broker, ctx, r, version).await)),
        Rq::ListGroups(r) => Reply::Now(Rs::ListGroups(list_groups::handle(broker, ctx, r).await)),
        Rq::DescribeGroups(r) => Reply::Now(Rs::DescribeGroups(describe_groups::handle(broker, ctx, r))),
        Rq::DeleteGroups(r) => Reply::Now(Rs::DeleteGroups(delete_groups::handle(broker, ctx, r).await)),
        Rq::CreateAcls(r) => Reply::Now(Rs::CreateAcls(create_acls::handle(broker, ctx, r).await)),
        Rq::DescribeAcls(r) => Reply::Now(Rs::DescribeAcls(describe_acls::handle(broker, ctx, r))),
        Rq::DeleteAcls(r) => Reply::Now(Rs::DeleteAcls(delete_acls::handle(broker, ctx, r).await)),
        Rq::DescribeUserScramCredentials(r) => Reply::Now(Rs::DescribeUserScramCredentials(
            describe_user_scram_credentials::handle(broker, ctx, r),
        )),
        Rq::AlterUserScramCredentials(r) => Reply::Now(Rs::AlterUserScramCredentials(
            alter_user_scram_credentials::handle(broker, ctx, r).await,
        )),
        // The decoder admits only APIs in the versions table, all matched
        // above; should the two ever drift apart, refuse rather than guess.
        _ => {
            tracing::error!(api = ?request.api_key, "no handler for an advertised API");
            Reply::Close
        }
    }
}
