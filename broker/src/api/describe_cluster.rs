//! DescribeCluster: every node of the deployment, from this node's replica
//! of the Raft state (just this node on a single node), and the cluster
//! id. The controller reported is this node: any node takes structural
//! changes and orders them through Raft.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::Broker;

/// `endpoint_type` 1: brokers (2, controllers, is not served).
const ENDPOINT_BROKERS: i8 = 1;

pub fn handle(broker: &Arc<Broker>, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let r = DescribeClusterResponse::default().with_endpoint_type(req.endpoint_type);
    if req.endpoint_type != ENDPOINT_BROKERS {
        return r
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")));
    }
    let me = BrokerId(broker.node.node_id);
    let brokers: Vec<DescribeClusterBroker> = super::known_brokers(broker, false)
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port as i32)
        })
        .collect();
    r.with_cluster_id(str_bytes(&broker.cluster_id))
        .with_controller_id(me)
        .with_brokers(brokers)
}
