//! `queued.max.request.bytes`: how many bytes of requests a broker holds at
//! once, over every connection.
//!
//! A connection reserves a request's size when the frame's length prefix
//! arrives, before it reads the body, and holds the [`Reservation`] until
//! the response is ready (for Produce, once the block commits). While the
//! pool is short the connection stops reading: back-pressure on that socket
//! alone, never an error.
//!
//! Two rules keep one client from starving the others:
//!
//! * the pool is granted in arrival order (tokio's semaphore is FIFO), so a
//!   waiting connection is never passed over by later ones;
//! * a connection that already holds a reservation may take another only
//!   while it stays within its fair share, the pool divided by the
//!   connections holding or waiting; past it, it waits for its own requests
//!   to finish. A connection holding nothing may always queue for one
//!   request of any size the broker accepts, so every client progresses.
//!
//! A client that stalls mid-frame holds its reservation for at most
//! `connections.read.timeout.ms` (see `connection.rs`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The broker's pool of request bytes.
pub struct RequestMemory {
    /// `None`: unbounded (`queued.max.request.bytes` = -1).
    pool: Option<Arc<Semaphore>>,
    limit: u64,
    used: AtomicU64,
    /// Connections holding a reservation or waiting for one.
    contenders: AtomicUsize,
    gauge: metrics::Gauge,
}

impl RequestMemory {
    /// `limit` < 0: unbounded.
    pub fn new(limit: i64) -> Arc<Self> {
        let bounded = u64::try_from(limit).ok();
        Arc::new(Self {
            pool: bounded.map(|l| Arc::new(Semaphore::new(l.min(Semaphore::MAX_PERMITS as u64) as usize))),
            limit: bounded.unwrap_or(u64::MAX),
            used: AtomicU64::new(0),
            contenders: AtomicUsize::new(0),
            gauge: metrics::gauge!("courier_request_memory_bytes"),
        })
    }

    /// Bytes reserved now, over every connection.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// One connection's account with the pool.
    pub fn connection(self: &Arc<Self>) -> ConnectionMemory {
        ConnectionMemory {
            memory: self.clone(),
            account: Arc::new(Account {
                state: Mutex::new(AccountState::default()),
                released: Notify::new(),
            }),
        }
    }

    fn fair_share(&self) -> u64 {
        self.limit / self.contenders.load(Ordering::Relaxed).max(1) as u64
    }
}

#[derive(Default)]
struct AccountState {
    held: u64,
    /// A reservation is being waited for.
    waiting: bool,
}

impl AccountState {
    fn contending(&self) -> bool {
        self.held > 0 || self.waiting
    }
}

struct Account {
    state: Mutex<AccountState>,
    /// Signalled whenever one of this connection's reservations ends.
    released: Notify,
}

impl Account {
    /// Applies `change` and keeps the pool's count of contenders in step.
    fn update(&self, memory: &RequestMemory, change: impl FnOnce(&mut AccountState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.contending();
        change(&mut s);
        match (before, s.contending()) {
            (false, true) => {
                memory.contenders.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                memory.contenders.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// One connection's reservations.
pub struct ConnectionMemory {
    memory: Arc<RequestMemory>,
    account: Arc<Account>,
}

impl ConnectionMemory {
    /// Reserves `bytes` for one request, waiting while this connection is
    /// over its fair share or the pool is short. Cancel-safe: a dropped
    /// future reserves nothing.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let memory = &self.memory;
        loop {
            let released = self.account.released.notified();
            let admitted = {
                let s = self.account.state.lock().unwrap_or_else(|p| p.into_inner());
                s.held == 0 || s.held.saturating_add(bytes) <= memory.fair_share()
            };
            if admitted {
                break;
            }
            metrics::counter!("courier_request_memory_waits_total", "reason" => "fair_share").increment(1);
            released.await;
        }
        let permit = match &memory.pool {
            None => None,
            Some(pool) => {
                // A frame is at most socket.request.max.bytes (an i32),
                // and the limit is at least that.
                let want = bytes.min(memory.limit).min(u64::from(u32::MAX)) as u32;
                let waiting = Waiting::start(self);
                let permit = match pool.clone().try_acquire_many_owned(want) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        metrics::counter!("courier_request_memory_waits_total", "reason" => "pool").increment(1);
                        // Only a closed semaphore fails, and this one is never closed.
                        pool.clone().acquire_many_owned(want).await.ok()
                    }
                };
                drop(waiting);
                permit
            }
        };
        self.account.update(memory, |s| s.held += bytes);
        let used = memory.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        memory.gauge.set(used as f64);
        Reservation {
            _permit: permit,
            bytes,
            memory: memory.clone(),
            account: self.account.clone(),
        }
    }

    /// Bytes this connection holds now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.account.state.lock().unwrap_or_else(|p| p.into_inner()).held
    }
}

/// Marks a connection as waiting for the pool while it lives (so it counts
/// towards the fair share), also when the wait is cancelled.
struct Waiting<'a>(&'a ConnectionMemory);

impl<'a> Waiting<'a> {
    fn start(c: &'a ConnectionMemory) -> Self {
        c.account.update(&c.memory, |s| s.waiting = true);
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.account.update(&self.0.memory, |s| s.waiting = false);
    }
}

/// Bytes reserved for one request; returned to the pool when dropped.
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    memory: Arc<RequestMemory>,
    account: Arc<Account>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.account.update(&self.memory, |s| s.held -= bytes);
        let used = self.memory.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.memory.gauge.set(used as f64);
        self.account.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_millis(50);

    async fn pending<T>(f: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(WAIT, f).await.is_err()
    }

    #[tokio::test]
    async fn the_pool_bounds_bytes_over_every_connection() {
        let memory = RequestMemory::new(100);
        let (a, b) = (memory.connection(), memory.connection());
        let ra = a.reserve(60).await;
        assert_eq!(memory.used(), 60);
        // 60 + 50 > 100: b waits until a's request is done.
        let wait = tokio::spawn(async move { b.reserve(50).await });
        tokio::time::sleep(WAIT).await;
        assert!(!wait.is_finished());
        drop(ra);
        let rb = wait.await.expect("reserve");
        assert_eq!(memory.used(), 50);
        drop(rb);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn a_connection_past_its_fair_share_waits_for_its_own_requests() {
        let memory = RequestMemory::new(100);
        let (greedy, other) = (memory.connection(), memory.connection());
        let first = greedy.reserve(30).await;
        let _second = greedy.reserve(30).await; // alone: its share is the pool
        let _o = other.reserve(10).await;
        // Two contenders: a share of 50. The pool has room (30 left), but
        // 60 + 30 is past greedy's share.
        assert!(pending(greedy.reserve(30)).await);
        // The other connection, well within its share, is served at once.
        let _o2 = other.reserve(20).await;
        // Once greedy's first request is done it may go on.
        drop(first);
        drop(_o2);
        assert!(!pending(greedy.reserve(20)).await);
    }

    #[tokio::test]
    async fn a_connection_holding_nothing_always_gets_one_request() {
        let memory = RequestMemory::new(100);
        let conns: Vec<_> = (0..10).map(|_| memory.connection()).collect();
        let mut held = Vec::new();
        for c in &conns[..9] {
            held.push(c.reserve(10).await);
        }
        // Ten contenders, a share of 10: the last one may still reserve 10.
        let r = conns[9].reserve(10).await;
        assert_eq!(memory.used(), 100);
        drop(r);
        drop(held);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_reserves_nothing_and_stops_contending() {
        let memory = RequestMemory::new(100);
        let (a, b) = (memory.connection(), memory.connection());
        let ra = a.reserve(100).await;
        assert!(pending(b.reserve(10)).await);
        assert_eq!(b.held(), 0);
        assert_eq!(memory.contenders.load(Ordering::Relaxed), 1);
        drop(ra);
        assert_eq!(memory.contenders.load(Ordering::Relaxed), 0);
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn unbounded_counts_but_never_waits() {
        let memory = RequestMemory::new(-1);
        let c = memory.connection();
        let a = c.reserve(u32::MAX as u64).await;
        let b = c.reserve(u32::MAX as u64).await;
        assert_eq!(memory.used(), 2 * u32::MAX as u64);
        drop((a, b));
        assert_eq!(memory.used(), 0);
    }
}
