//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/health`,
//! `/raft` (this node's view of the Raft group: leader, term, voters,
//! applied state version, clusters), and the global ledger:
//!
//! * `/global`: each partition's global head, and (on the Raft leader) the
//!   global-ledger task's lag and the blocks it refused;
//! * `/global/verify`: `courier ledger verify --global` on the running node;
//! * `/global/locate?topic=T&key=K` or `?topic=T&partition=P&offset=O`:
//!   `courier message locate` on the running node.
//!
//! The endpoint binds loopback by default. Bound to any other address it
//! needs `admin.token.file`, and a client that is not on this host must
//! send `Authorization: Bearer <token>`; loopback clients (`courier` on
//! the node's host, a local Prometheus) need none.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::shutdown::ShutdownSignal;
use crate::{Broker, StartError};

/// The bearer token remote clients must present, if any.
#[derive(Clone)]
struct Token(Option<Arc<str>>);

async fn authorize(
    State(token): State<Token>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    if peer.ip().is_loopback() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&token.0, presented) {
        (Some(want), Some(got)) if crate::auth::scram::constant_time_eq(want.as_bytes(), got.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            tracing::warn!(target: "courier::audit", %peer, path = %request.uri().path(), "admin endpoint: refused");
            (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response()
        }
    }
}

pub async fn serve(broker: Arc<Broker>, mut shutdown: ShutdownSignal) -> Result<SocketAddr, StartError> {
    let (listener, local) = crate::bind(&broker.config.admin_listener).await?;
    let token = match &broker.config.admin_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::config::ConfigError::Invalid(format!("admin.token.file {}: {e}", path.display()))
            })?;
            let t = text.trim();
            if t.len() < 16 {
                return Err(crate::config::ConfigError::Invalid(
                    "admin.token.file: the token must be at least 16 characters".into(),
                )
                .into());
            }
            Some(Arc::from(t))
        }
        None if !local.ip().is_loopback() => {
            return Err(crate::config::ConfigError::Invalid(format!(
                "admin.listener {local} is not loopback: set admin.token.file so that remote clients must authenticate"
            ))
            .into())
        }
        None => None,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/raft", get(raft))
        .route("/global", get(global))
        .route("/global/verify", get(global_verify))
        .route("/global/locate", get(global_locate))
        .with_state(broker)
        .layer(axum::middleware::from_fn_with_state(Token(token), authorize));
    tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
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

fn json(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

fn no_raft() -> axum::response::Response {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "a single-replica node has no Raft group and no global ledger" }),
    )
}

fn stopping() -> axum::response::Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "error": "the node is stopping" }),
    )
}

async fn global(State(broker): State<Arc<Broker>>) -> axum::response::Response {
    let crate::sequencer::Sequencer::Replicated(r) = &broker.sequencer else {
        return no_raft();
    };
    let state = r.meta.state();
    let heads: Vec<_> = state
        .global
        .iter()
        .map(|(pk, h)| {
            serde_json::json!({
                "topic": state.topic_by_id(&pk.topic_id).map(|t| t.record.name.clone()),
                "partition": pk.partition,
                "cluster": h.cluster,
                "blocks": h.next_height,
                "next_offset": h.next_offset,
                "messages": h.messages,
                "receipts": h.receipts,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "node_id": broker.node.node_id,
            "task": r.global.status(),
            "partitions": heads,
        }),
    )
}

async fn global_verify(State(broker): State<Arc<Broker>>) -> axum::response::Response {
    let crate::sequencer::Sequencer::Replicated(r) = &broker.sequencer else {
        return no_raft();
    };
    let Some(ledger) = r.meta.global() else {
        return stopping();
    };
    let (state, store) = (r.meta.state(), broker.store.clone());
    let checked = tokio::task::spawn_blocking(move || crate::verify::check_global(&ledger, &state, &store)).await;
    match checked {
        Ok(Ok(check)) => json(StatusCode::OK, serde_json::json!(check)),
        Ok(Err(e)) => json(StatusCode::CONFLICT, serde_json::json!({ "error": e.to_string() })),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

async fn global_locate(State(broker): State<Arc<Broker>>, RawQuery(query): RawQuery) -> axum::response::Response {
    let crate::sequencer::Sequencer::Replicated(r) = &broker.sequencer else {
        return no_raft();
    };
    let params = crate::verify::parse_query(query.as_deref().unwrap_or(""));
    let (topic, located) = match crate::verify::locate_query(&params) {
        Ok(q) => q,
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
    };
    let Some(ledger) = r.meta.global() else {
        return stopping();
    };
    let state = r.meta.state();
    let found = tokio::task::spawn_blocking(move || ledger.locate(&state, &topic, &located)).await;
    match found {
        Ok(Ok(found)) => json(StatusCode::OK, serde_json::json!(found)),
        Ok(Err(e)) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}
