//! Raft's RPCs over the node-to-node transport.
//!
//! A call is a [`Frame::Raft`] carrying a number; the answer comes back on
//! the same connection pair with that number. Calls that get no answer in
//! time (the peer is down, its queue dropped the frame) fail as timeouts
//! and openraft retries them; its election and replication timers, not this
//! link, decide what a silent peer means.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use courier_consensus::raft::{MetaRaft, NodeId, RaftTransport, TransportError};
use tokio::sync::Semaphore;
use tracing::debug;

use super::calls::Calls;
use super::transport::{Frame, Transport};

/// Raft RPCs from peers served at once; more are dropped (the caller
/// retries), so a peer cannot pile up tasks on this node.
const SERVING_MAX: usize = 256;

/// This node's end of Raft's RPCs.
pub struct RaftLink {
    transport: OnceLock<Arc<Transport>>,
    meta: OnceLock<Arc<MetaRaft<RaftLink>>>,
    calls: Calls,
    serving: Arc<Semaphore>,
}

impl Default for RaftLink {
    fn default() -> Self {
        Self {
            transport: OnceLock::new(),
            meta: OnceLock::new(),
            calls: Calls::default(),
            serving: Arc::new(Semaphore::new(SERVING_MAX)),
        }
    }
}

impl RaftLink {
    /// Connects the link to the transport and the Raft node it serves
    /// (both exist only after the link: they are built around it).
    pub fn attach(&self, transport: Arc<Transport>, meta: Arc<MetaRaft<RaftLink>>) {
        let _ = self.transport.set(transport);
        let _ = self.meta.set(meta);
    }

    /// A Raft frame from peer `from`.
    pub fn frame(&self, from: u8, call: u64, reply: bool, body: Bytes) {
        if reply {
            self.calls.answer(call, body);
            return;
        }
        let (Some(meta), Some(transport)) = (self.meta.get().cloned(), self.transport.get().cloned()) else {
            return;
        };
        let Ok(permit) = self.serving.clone().try_acquire_owned() else {
            metrics::counter!("courier_raft_calls_dropped_total").increment(1);
            debug!(from, "too many Raft calls in service: one is dropped");
            return;
        };
        // Served on its own task: a forwarded write waits for a commit,
        // which needs this very connection to keep reading.
        tokio::spawn(async move {
            let body = meta.serve(NodeId::from(from), &body).await;
            transport.send(
                from,
                Frame::Raft {
                    call,
                    reply: true,
                    body,
                }
                .encode(),
            );
            drop(permit);
        });
    }
}

impl RaftTransport for RaftLink {
    async fn call(&self, target: NodeId, request: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        let (Some(transport), Ok(to)) = (self.transport.get(), u8::try_from(target)) else {
            return Err(TransportError::Unreachable(target));
        };
        let frame = |call| {
            Frame::Raft {
                call,
                reply: false,
                body: request,
            }
            .encode()
        };
        self.calls
            .call(transport, to, frame, timeout)
            .await
            .ok_or(TransportError::Timeout(target))
    }
}
