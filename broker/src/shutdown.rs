//! Graceful shutdown as an object: one [`Shutdown`] is triggered (Ctrl-C, a
//! test, an admin command); every listener and connection holds a
//! [`ShutdownSignal`] and stops at its next safe point.

use tokio::sync::watch;

/// The trigger; cloning it is cheap.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// What tasks wait on.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
    /// Resolves once shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: treat it as shutdown too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}
