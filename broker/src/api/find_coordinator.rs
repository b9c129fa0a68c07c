//! FindCoordinator: this node coordinates every consumer group. Transaction
//! coordinators are not available (transactions are not supported).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;

pub fn handle(broker: &Arc<Broker>, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let me = BrokerId(broker.node.node_id);
    let error = if req.key_type == KEY_TYPE_GROUP {
        0
    } else {
        ResponseError::CoordinatorNotAvailable.code()
    };
    super::count_error(courier_protocol::ApiKey::FindCoordinator, error);
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone()).with_error_code(error);
                if error == 0 {
                    c.with_node_id(me)
                        .with_host(str_bytes(&broker.node.host))
                        .with_port(broker.node.port as i32)
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let r = FindCoordinatorResponse::default().with_error_code(error);
    if error == 0 {
        r.with_node_id(me)
            .with_host(str_bytes(&broker.node.host))
            .with_port(broker.node.port as i32)
    } else {
        r.with_node_id(BrokerId(-1)).with_port(-1)
    }
}
