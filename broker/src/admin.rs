//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/health`,
//! `/raft` (this node's view of the Raft group: leader, term, voters,
//! applied state version, clusters), and the global ledger:
//!
//! * `/global`: each partition's global head, and (on the Raft leader) the
//!   global-ledger task's lag and the blocks it refused;
//! * `/global/verify`: `courier ledger verify --global` on the running node;
//! * `/global/locate?topic=T&key=K` or `?topic=T&partition=P&offset=O`:
//!   `courier message locate` on the running node;
//!
//! and this node's own ledger:
//!
//! * `/ledger/verify`: `courier ledger verify` on the running node (every
//!   partition re-walked now with the checks the scrubber makes,
//!   certificates against the recorded keys); a block whose stored bytes
//!   changed is listed as damaged by the read and repaired;
//! * `/ledger/scrub`: the background scrubber's progress and findings, and
//!   the blocks listed as damaged and not yet repaired.
//!
//! The endpoint binds loopback by default, and there it answers anyone on
//! this host (`courier` on the node's host, a local Prometheus). With
//! `admin.ssl.enabled` it speaks TLS (required to bind anything else), and
//! every client authenticates: with a client certificate from a CA of
//! `ssl.truststore.location` whose principal (through
//! `ssl.principal.mapping.rules`) is one of `super.users`, or with
//! `Authorization: Bearer <token>` from `admin.token.file`. Only
//! `/metrics` stays open to loopback clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::auth::tls::{ClientAuth, ClientTls, TlsSettings};
use crate::shutdown::ShutdownSignal;
use crate::{Broker, StartError};

/// Who is asking, as the connection tells it.
#[derive(Clone, Debug)]
struct AdminPeer {
    addr: SocketAddr,
    tls: bool,
    /// The principal of a verified client certificate that is one of
    /// `super.users`.
    administrator: Option<String>,
}

impl Connected<IncomingStream<'_, TcpListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        AdminPeer {
            addr: *stream.remote_addr(),
            tls: false,
            administrator: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for AdminPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// TLS connections whose handshakes are done: a task accepts and shakes
/// hands (each connection on its own, bounded by
/// `authentication.timeout.ms`), so a stalled client holds up no other.
struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, AdminPeer)>,
    local: SocketAddr,
}

/// Completed handshakes waiting for the server to take them.
const HANDSHAKES_READY_MAX: usize = 64;

impl TlsListener {
    fn start(listener: TcpListener, tls: ClientTls, broker: Arc<Broker>, mut shutdown: ShutdownSignal) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(HANDSHAKES_READY_MAX);
        let tls = Arc::new(tls);
        let timeout = Duration::from_millis(broker.config.authentication_timeout_ms);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "admin endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.wait() => return,
                };
                let (tls, broker, tx) = (tls.clone(), broker.clone(), tx.clone());
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, tls.acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(target: "courier::audit", peer = %addr, error = %e, "admin endpoint: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(target: "courier::audit", peer = %addr, "admin endpoint: TLS handshake timed out");
                            return;
                        }
                    };
                    let administrator = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| tls.identify(chain))
                        .map(|(subject, _)| format!("User:{}", broker.principal_mapping.apply(&subject)))
                        .filter(|p| broker.authorizer.super_users.contains(p));
                    let peer = AdminPeer {
                        addr,
                        tls: true,
                        administrator,
                    };
                    let _ = tx.send((stream, peer)).await;
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(AdminPeer {
            addr: self.local,
            tls: true,
            administrator: None,
        })
    }
}

/// The bearer token clients may present, if any.
#[derive(Clone)]
struct Token(Option<Arc<str>>);

async fn authorize(
    State(token): State<Token>,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    let loopback = peer.addr.ip().is_loopback();
    let open = if peer.tls {
        loopback && request.uri().path() == "/metrics"
    } else {
        loopback
    };
    if open {
        return next.run(request).await;
    }
    if let Some(principal) = &peer.administrator {
        tracing::debug!(target: "courier::audit", peer = %peer.addr, %principal, path = %request.uri().path(), "admin endpoint: administrator");
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
            tracing::warn!(target: "courier::audit", peer = %peer.addr, path = %request.uri().path(), "admin endpoint: refused");
            (
                StatusCode::UNAUTHORIZED,
                "an administrator's client certificate or a bearer token is required\n",
            )
                .into_response()
        }
    }
}

fn read_token(broker: &Broker) -> Result<Option<Arc<str>>, StartError> {
    let Some(path) = &broker.config.admin_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::config::ConfigError::Invalid(format!("admin.token.file {}: {e}", path.display())))?;
    let t = text.trim();
    if t.len() < 16 {
        return Err(crate::config::ConfigError::Invalid(
            "admin.token.file: the token must be at least 16 characters".into(),
        )
        .into());
    }
    Ok(Some(Arc::from(t)))
}

pub async fn serve(broker: Arc<Broker>, mut shutdown: ShutdownSignal) -> Result<SocketAddr, StartError> {
    let (listener, local) = crate::bind(&broker.config.admin_listener).await?;
    if !local.ip().is_loopback() && !broker.config.admin_ssl_enabled {
        // The configuration refuses this; a name that resolved elsewhere must too.
        return Err(crate::config::ConfigError::Invalid(format!(
            "admin.listener {local} is not loopback: set admin.ssl.enabled"
        ))
        .into());
    }
    let token = read_token(&broker)?;
    let tls = if broker.config.admin_ssl_enabled {
        let truststore = broker.config.ssl_truststore_location.as_deref();
        Some(ClientTls::new(&TlsSettings {
            listener: "admin",
            keystore: broker.config.ssl_keystore_location.as_deref(),
            truststore,
            client_auth: if truststore.is_some() {
                ClientAuth::Requested
            } else {
                ClientAuth::None
            },
        })?)
    } else {
        None
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/raft", get(raft))
        .route("/global", get(global))
        .route("/global/verify", get(global_verify))
        .route("/global/locate", get(global_locate))
        .route("/ledger/verify", get(ledger_verify))
        .route("/ledger/scrub", get(ledger_scrub))
        .with_state(broker.clone())
        .layer(axum::middleware::from_fn_with_state(Token(token), authorize));
    let service = app.into_make_service_with_connect_info::<AdminPeer>();
    let stop = shutdown.clone();
    let served = match tls {
        None => tokio::spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await
        }),
        Some(tls) => {
            let listener = TlsListener::start(listener, tls, broker, stop);
            tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(async move { shutdown.wait().await })
                    .await
            })
        }
    };
    tokio::spawn(async move {
        if let Ok(Err(e)) = served.await {
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
        Err(e) => internal(e),
    }
}

async fn ledger_verify(State(broker): State<Arc<Broker>>) -> axum::response::Response {
    let store = broker.store.clone();
    // A block whose stored bytes changed is listed as damaged by the read
    // itself, and repaired (on a replica) like one a fetch found.
    let checked = tokio::task::spawn_blocking(move || crate::verify::verify_store(&store, None, |_| {}, || {})).await;
    match checked {
        Ok(Ok((partitions, keys))) => json(
            StatusCode::OK,
            serde_json::json!({ "partitions": partitions, "keys": keys }),
        ),
        Ok(Err(crate::verify::LedgerCheckError::Bad { topic, source })) => json(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": format!("{topic}: {source}") }),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> axum::response::Response {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        serde_json::json!({ "error": e.to_string() }),
    )
}

async fn ledger_scrub(State(broker): State<Arc<Broker>>) -> axum::response::Response {
    let status = broker.scrub.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let damaged: Vec<serde_json::Value> = broker
        .store
        .damaged()
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "topic": broker.topics.get_by_id(&d.pk.topic_id).map(|t| t.name.clone()),
                "partition": d.pk.partition,
                "height": d.height,
                "what": d.kind.as_str(),
                "detail": d.detail,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "scrub": status, "damaged": damaged }),
    )
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
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
