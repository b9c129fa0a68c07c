//! FindCoordinator: which node coordinates a consumer group. On a single
//! node, this one. With several nodes, every node of an organization gives
//! the same answer for a group (a hash of its id over that organization's
//! nodes that it reaches now, from the Raft state), so a group's members
//! meet on one node whichever node they ask; the other nodes answer the
//! group's requests with NOT_COORDINATOR ([`not_coordinator`]).
//! Transaction coordinators are not available (transactions are not
//! supported).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    use courier_consensus::security::{operation::DESCRIBE, resource};
    let access = broker.access(ctx);
    let error_for = |key: &str| {
        if req.key_type == KEY_TYPE_GROUP {
            if access.group(DESCRIBE, key) {
                0
            } else {
                ResponseError::GroupAuthorizationFailed.code()
            }
        } else if !access.allows(DESCRIBE, resource::TRANSACTIONAL_ID, key) {
            ResponseError::TransactionalIdAuthorizationFailed.code()
        } else {
            ResponseError::CoordinatorNotAvailable.code()
        }
    };
    let listener = &ctx.listener;
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let error = error_for(key.as_str());
                super::count_error(courier_protocol::ApiKey::FindCoordinator, error);
                let c = Coordinator::default().with_key(key.clone()).with_error_code(error);
                if error == 0 {
                    let (id, host, port) = coordinator(broker, key.as_str(), listener);
                    c.with_node_id(id).with_host(str_bytes(&host)).with_port(port)
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let error = error_for(req.key.as_str());
    super::count_error(courier_protocol::ApiKey::FindCoordinator, error);
    let r = FindCoordinatorResponse::default().with_error_code(error);
    if error == 0 {
        let (id, host, port) = coordinator(broker, req.key.as_str(), listener);
        r.with_node_id(id).with_host(str_bytes(&host)).with_port(port)
    } else {
        r.with_node_id(BrokerId(-1)).with_port(-1)
    }
}

/// `NOT_COORDINATOR` when another node coordinates `group` (the client
/// asks FindCoordinator again and moves there), else `None`. Group
/// membership and commits are handled by the coordinator only, so two
/// nodes never run one group's rebalances side by side.
pub fn not_coordinator(broker: &Broker, group: &str) -> Option<i16> {
    (coordinator(broker, group, "").0 != BrokerId(broker.node.node_id)).then_some(ResponseError::NotCoordinator.code())
}

/// The node coordinating `group`: one of this node's organization's nodes,
/// chosen by a hash of the group id that every node computes alike; with
/// its address on `listener` (the first listener's when it has none).
fn coordinator(broker: &Broker, group: &str, listener: &str) -> (BrokerId, String, i32) {
    let address = |b: &crate::topics::BrokerAddr| {
        b.on(listener)
            .or(b.listeners.first())
            .map_or((String::new(), -1), |e| (e.host.clone(), e.port as i32))
    };
    let mine_here = broker
        .node
        .listeners
        .iter()
        .find(|e| e.name == listener)
        .map_or((broker.node.host.clone(), broker.node.port as i32), |e| {
            (e.host.clone(), e.port as i32)
        });
    let me = (BrokerId(broker.node.node_id), mine_here.0, mine_here.1);
    let all = broker.topics.brokers();
    let Some(mine) = all.iter().find(|b| b.id == broker.node.node_id) else {
        return me;
    };
    // Nodes of the organization listed to clients: a node stopped for
    // longer than the session timeout is not named (its groups move, as
    // Kafka's do when a broker fails), while connections coming up at
    // start do not make the nodes' choices differ.
    let candidates: Vec<_> = all
        .iter()
        .filter(|b| b.organization == mine.organization && super::node_listed(broker, b.id))
        .collect();
    // FNV-1a: stable across nodes and versions, unlike std's hasher.
    let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    match candidates.get((hash % candidates.len().max(1) as u64) as usize) {
        Some(b) if b.id == broker.node.node_id => me,
        Some(b) => {
            let (host, port) = address(b);
            (BrokerId(b.id), host, port)
        }
        None => me,
    }
}
