//! Calls to other nodes over the one-way frame transport: a call carries a
//! number, the answer comes back with it, and whoever waits for that
//! number gets the answer (or gives up after its timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::transport::Transport;

/// Calls in flight from this node, by number.
#[derive(Default)]
pub struct Calls {
    pending: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next: AtomicU64,
}

impl Calls {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Bytes>>> {
        // Only inserted into and removed from: a panic while holding the
        // lock cannot leave the map inconsistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the frame `encode(call number)` to node `to` and waits for the
    /// answer; `None` if none came within `timeout`.
    pub async fn call(
        &self,
        transport: &Transport,
        to: u8,
        encode: impl FnOnce(u64) -> Bytes,
        timeout: Duration,
    ) -> Option<Bytes> {
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(call, tx);
        transport.send(to, encode(call));
        let answer = tokio::time::timeout(timeout, rx).await;
        self.pending().remove(&call);
        answer.ok()?.ok()
    }

    /// An answer arrived.
    pub fn answer(&self, call: u64, body: Bytes) {
        if let Some(waiter) = self.pending().remove(&call) {
            let _ = waiter.send(body);
        }
    }
}
