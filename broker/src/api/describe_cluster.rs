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

pub fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let r = DescribeClusterResponse::default().with_endpoint_type(req.endpoint_type);
    if !broker
        .access(ctx)
        .cluster(courier_consensus::security::operation::DESCRIBE)
    {
        return r
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes("not authorized to describe the cluster")));
    }
    if req.endpoint_type != ENDPOINT_BROKERS {
        return r
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")));
    }
    let me = BrokerId(broker.node.node_id);
    let brokers: Vec<DescribeClusterBroker> = super::known_brokers(broker, false)
        .into_iter()
        .filter_map(|b| {
            let e = b.on(&ctx.listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(str_bytes(&e.host))
                    .with_port(e.port as i32),
            )
        })
        .collect();
    r.with_cluster_id(str_bytes(&broker.cluster_id))
        .with_controller_id(me)
        .with_brokers(brokers)
}
