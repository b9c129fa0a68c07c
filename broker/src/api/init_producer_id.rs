//! InitProducerId: hands out producer ids for idempotent producers. The
//! de-duplication itself is the contract's job (per partition, in the
//! ledger). Transactions are not supported: a transactional id is refused.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    use courier_consensus::security::{operation, resource};
    let r = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let access = broker.access(ctx);
    // Clients send null when not transactional; an empty id means the same.
    if let Some(id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        if !access.allows(operation::WRITE, resource::TRANSACTIONAL_ID, id.as_str()) {
            let code = ResponseError::TransactionalIdAuthorizationFailed.code();
            super::count_error(courier_protocol::ApiKey::InitProducerId, code);
            return r.with_error_code(code);
        }
        super::count_error(
            courier_protocol::ApiKey::InitProducerId,
            ResponseError::InvalidRequest.code(),
        );
        return r.with_error_code(ResponseError::InvalidRequest.code());
    }
    // An idempotent producer: IdempotentWrite on the cluster, or Write on
    // any topic (Kafka 3's rule, KIP-679).
    if !(access.on_any(operation::WRITE, resource::TOPIC) || access.cluster(operation::IDEMPOTENT_WRITE)) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        super::count_error(courier_protocol::ApiKey::InitProducerId, code);
        return r.with_error_code(code);
    }
    drop(access);
    // KIP-360: a producer that lost track of a batch asks to bump its epoch,
    // which fences its own older in-flight batches.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return r
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    let store = broker.store.clone();
    let (stride, offset) = broker.sequencer.producer_id_space();
    match tokio::task::spawn_blocking(move || store.allocate_producer_id()).await {
        Ok(Ok(id)) => r
            .with_producer_id(ProducerId(id * stride + offset))
            .with_producer_epoch(0),
        other => {
            tracing::error!(?other, "producer id allocation failed");
            r.with_error_code(ResponseError::KafkaStorageError.code())
        }
    }
}
