//! InitProducerId: hands out producer ids for idempotent producers. The
//! de-duplication itself is the contract's job (per partition, in the
//! ledger). Transactions are not supported: a transactional id is refused.

use std::sync::Arc;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::Broker;

pub async fn handle(broker: &Arc<Broker>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let r = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    // Clients send null when not transactional; an empty id means the same.
    if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        super::count_error(
            courier_protocol::ApiKey::InitProducerId,
            ResponseError::InvalidRequest.code(),
        );
        return r.with_error_code(ResponseError::InvalidRequest.code());
    }
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
