//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/health`, and
//! `/raft` (this node's view of the Raft group: leader, term, voters,
//! applied state version, clusters).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::shutdown::ShutdownSignal;
use crate::{Broker, StartError};

pub async fn serve(broker: Arc<Broker>, mut shutdown: ShutdownSignal) -> Result<SocketAddr, StartError> {
    let (listener, local) = crate::bind(&broker.config.admin_listener).await?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/raft", get(raft))
        .with_state(broker);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(local)
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    for t in broker.topics.all() {
        for p in 0..t.partitions {
            let s = broker.topics.state(&t.partition_key(p));
            let labels = [("topic", t.name.clone()), ("partition", p.to_string())];
            metrics::gauge!("courier_ledger_height", &labels).set(s.next_height as f64);
            metrics::gauge!("courier_high_watermark", &labels).set(s.next_offset as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}

async fn health(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let body = format!(
        "{{\"status\":\"ok\",\"node_id\":{},\"cluster_id\":\"{}\",\"topics\":{}}}\n",
        broker.node.node_id,
        broker.cluster_id,
        broker.topics.all().len()
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn raft(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let body = match &broker.sequencer {
        crate::sequencer::Sequencer::Replicated(r) => {
            let metrics = r.meta.raft().metrics().borrow().clone();
            let state = r.meta.state();
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            serde_json::json!({
                "node_id": broker.node.node_id,
                "leader": metrics.current_leader,
                "term": metrics.current_term,
                "voters": voters,
                "last_applied": metrics.last_applied.map(|l| l.index),
                "version": state.version,
                "nodes": state.nodes.keys().collect::<Vec<_>>(),
                "clusters": state.clusters.values().map(|c| &c.members).collect::<Vec<_>>(),
                "topics": state.topics.values().map(|t| serde_json::json!({
                    "name": t.record.name,
                    "id": uuid::Uuid::from_bytes(t.record.id).to_string(),
                    "partitions": t.record.partitions,
                    "placement": t.placement,
                })).collect::<Vec<_>>(),
            })
        }
        crate::sequencer::Sequencer::Local(_) => serde_json::json!({ "node_id": broker.node.node_id, "leader": null }),
    };
    ([(header::CONTENT_TYPE, "application/json")], format!("{body}\n"))
}
