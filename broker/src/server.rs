//! The Kafka listeners: each accepts connections and gives each its own
//! task, so a slow or hostile client costs only its own task and buffers.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::auth::sasl::Mechanism;
use crate::auth::tls::ClientTls;
use crate::config::SecurityProtocol;
use crate::connection;
use crate::limits::Refusal;
use crate::shutdown::ShutdownSignal;
use crate::Broker;

/// One Kafka listener as it serves: its name, protocol, TLS acceptor and
/// SASL mechanisms.
pub struct Listener {
    pub name: Arc<str>,
    pub protocol: SecurityProtocol,
    pub tls: Option<ClientTls>,
    pub mechanisms: Vec<Mechanism>,
}

/// How long connections get to finish their current request at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub async fn serve(
    broker: Arc<Broker>,
    kafka_listener: Arc<Listener>,
    listener: TcpListener,
    mut shutdown: ShutdownSignal,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admission = match broker.connection_limits.admit(peer.ip()) {
                        Ok(a) => a,
                        Err(refusal) => {
                            let reason = match refusal {
                                Refusal::Total => "max_connections",
                                Refusal::PerIp => "max_connections_per_ip",
                            };
                            warn!(%peer, reason, "refusing connection");
                            metrics::counter!("courier_connections_closed_total", "reason" => reason).increment(1);
                            drop(stream);
                            continue;
                        }
                    };
                    metrics::counter!("courier_connections_total").increment(1);
                    let serve = connection::serve(broker.clone(), kafka_listener.clone(), stream, peer, shutdown.clone());
                    connections.spawn(async move {
                        serve.await;
                        drop(admission);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    drop(listener);
    info!(open = connections.len(), "listener closed; waiting for connections");
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
}
