//! Metadata: brokers, topics, partitions and their leaders, from this
//! node's replica of the Raft state. The brokers listed are the nodes this
//! node reaches, or reached less than a session timeout ago
//! (DescribeCluster lists every registered node). This node leads every partition its
//! clusters order (any member accepts and submits to the cluster); for
//! another cluster's partition it names a member of that cluster, one of
//! its own organization when there is one. A client of another
//! organization than this node's is told of a live member of its own
//! organization instead, when the partition's cluster has one: a producer
//! thus sends to a node of its own organization, and the off-chain values
//! it sends stay in its organization's storage. Every node reports the same
//! leader epoch for a partition (the topic's), so a client moving between
//! nodes never sees an epoch go back.

use std::sync::Arc;

use courier_consensus::catalog::TopicRecord;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::{str_bytes, topic_name, RequestContext};
use crate::Broker;
use courier_consensus::security::{operation::DESCRIBE, resource};

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let access = broker.access(ctx);
    let me = BrokerId(broker.node.node_id);
    let organization = ctx.organization(&broker.security.snapshot()).to_owned();
    // v0 asks for all topics with an empty list; later versions with null.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create = broker.config.auto_create_topics_enable && (version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match requested {
        // Every topic the principal may describe; the rest are not listed.
        None => topics.extend(
            broker
                .topics
                .all()
                .into_iter()
                .filter(|t| access.quietly(DESCRIBE, resource::TOPIC, &t.name))
                .map(|t| describe(broker, &t, me, &organization)),
        ),
        Some(list) => {
            for wanted in list {
                let found = match &wanted.name {
                    Some(name) => broker.topics.get(name),
                    None => broker.topics.get_by_id(wanted.topic_id.as_bytes()),
                };
                let asked = found
                    .as_ref()
                    .map(|t| t.name.clone())
                    .or(wanted.name.as_ref().map(|n| n.to_string()));
                if asked.as_ref().is_some_and(|n| !access.topic(DESCRIBE, n)) {
                    topics.push(missing(
                        wanted.name.as_ref().map(|n| n.as_str()),
                        wanted.topic_id,
                        ResponseError::TopicAuthorizationFailed.code(),
                    ));
                    continue;
                }
                let entry = match (found, &wanted.name) {
                    (Some(t), _) => describe(broker, &t, me, &organization),
                    (None, Some(name)) if auto_create && !super::create_topics::may_create(&access, name) => missing(
                        Some(name.as_str()),
                        wanted.topic_id,
                        ResponseError::TopicAuthorizationFailed.code(),
                    ),
                    (None, Some(name)) if auto_create => {
                        match super::create_topics::create(broker, name, None, Default::default()).await {
                            Ok(t) => describe(broker, &t, me, &organization),
                            Err((code, _)) => missing(Some(name.as_str()), wanted.topic_id, code),
                        }
                    }
                    (None, name) => missing(
                        name.as_ref().map(|n| n.as_str()),
                        wanted.topic_id,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ),
                };
                topics.push(entry);
            }
        }
    }
    drop(access);
    MetadataResponse::default()
        .with_brokers(brokers(broker, &ctx.listener))
        .with_cluster_id(Some(str_bytes(&broker.cluster_id)))
        .with_controller_id(me)
        .with_topics(topics)
}

fn missing(name: Option<&str>, topic_id: Uuid, code: i16) -> MetadataResponseTopic {
    super::count_error(courier_protocol::ApiKey::Metadata, code);
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(topic_name))
        .with_topic_id(topic_id)
}

/// The live brokers, as Kafka lists them: this node, and every node of the
/// deployment it reaches, or reached less than a session timeout ago. A
/// registered node down for longer is left out (clients connect to the
/// brokers they are given). Every partition leader named (a node reached
/// now) and every group coordinator FindCoordinator names is among them.
/// Each broker is given at its address on `listener`, the listener the
/// client connected to (a node without one is left out, as Kafka does).
fn brokers(broker: &Broker, listener: &str) -> Vec<MetadataResponseBroker> {
    super::known_brokers(broker, true)
        .into_iter()
        .filter_map(|b| {
            let e = b.on(listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(str_bytes(&e.host))
                    .with_port(e.port as i32),
            )
        })
        .collect()
}

/// The leader a client of `organization` is told of: `answer` (what this
/// node names for anyone) when that node is of the client's organization, else a live
/// member of the cluster of that organization (the partition's index
/// spreads partitions over them), else `answer`.
fn leader_for(
    broker: &Broker,
    replicas: &[i32],
    answer: i32,
    partition: i32,
    organization: &str,
    nodes: &[crate::topics::BrokerAddr],
) -> i32 {
    let org_of = |id: i32| nodes.iter().find(|n| n.id == id).map(|n| n.organization.as_str());
    if org_of(answer).is_none_or(|o| o == organization) {
        return answer;
    }
    let Some(replicated) = broker.sequencer.replicated() else {
        return answer;
    };
    let own = || {
        replicas
            .iter()
            .copied()
            .filter(|r| org_of(*r) == Some(organization) && replicated.is_up(*r))
    };
    match own().count() {
        0 => answer,
        n => own().nth(partition.unsigned_abs() as usize % n).unwrap_or(answer),
    }
}

pub fn describe(broker: &Broker, t: &TopicRecord, me: BrokerId, organization: &str) -> MetadataResponseTopic {
    let nodes = broker.topics.brokers();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&t.name)))
        .with_topic_id(Uuid::from_bytes(t.id))
        .with_partitions(
            (0..t.partitions)
                .map(|p| {
                    let (leader, replicas) = match broker.topics.route(&t.partition_key(p)) {
                        Some(r) => {
                            let leader = broker
                                .sequencer
                                .replicated()
                                .map_or(r.leader, |rep| rep.live_leader(&r));
                            let leader = leader_for(broker, &r.replicas, leader, p, organization, &nodes);
                            (BrokerId(leader), r.replicas.into_iter().map(BrokerId).collect())
                        }
                        None => (me, vec![me]),
                    };
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(leader)
                        .with_leader_epoch(t.epoch)
                        .with_isr_nodes(replicas.clone())
                        .with_replica_nodes(replicas)
                })
                .collect(),
        )
}
