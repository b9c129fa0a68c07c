//! Where this node reads and changes ACLs, SCRAM credentials and
//! organizations: the Raft state on a replicated node (every node applies
//! the same log, so a change made on any node holds on all of them once
//! their Raft state has it), or, for a single-replica broker, a file of
//! its own beside the ledger (`security.bin`, replaced atomically).
//!
//! Readers take a [`SecuritySnapshot`]: an `Arc` of the state as it is
//! now, cheap to take per request, never blocking a writer.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use courier_consensus::raft::{MetaCommand, MetaState};
use courier_consensus::security::{SecurityCommand, SecurityState};
use kafka_protocol::ResponseError;

use crate::replication::Replicated;

/// The file a single-replica broker keeps its security state in.
pub const SECURITY_FILE: &str = "security.bin";

/// How long a change waits to be applied here before it is reported as
/// timed out (it may still take effect).
const CHANGE_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SecurityStoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// The security state as it stands now.
pub enum SecuritySnapshot {
    Raft(Arc<MetaState>),
    Local(Arc<SecurityState>),
}

impl Deref for SecuritySnapshot {
    type Target = SecurityState;
    fn deref(&self) -> &SecurityState {
        match self {
            SecuritySnapshot::Raft(m) => &m.security,
            SecuritySnapshot::Local(s) => s,
        }
    }
}

enum Backend {
    Raft(Arc<Replicated>),
    Local {
        state: RwLock<Arc<SecurityState>>,
        path: PathBuf,
        /// Serialises writers (read, apply, write the file, publish).
        write: tokio::sync::Mutex<()>,
    },
}

pub struct SecurityStore {
    backend: Backend,
}

impl SecurityStore {
    pub fn raft(replicated: Arc<Replicated>) -> Self {
        Self {
            backend: Backend::Raft(replicated),
        }
    }

    /// A single-replica broker's store under `dir`.
    pub fn local(dir: &Path) -> Result<Self, SecurityStoreError> {
        let path = dir.join(SECURITY_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(|e| SecurityStoreError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecurityState::default(),
            Err(source) => return Err(SecurityStoreError::Read { path, source }),
        };
        Ok(Self {
            backend: Backend::Local {
                state: RwLock::new(Arc::new(state)),
                path,
                write: tokio::sync::Mutex::new(()),
            },
        })
    }

    pub fn snapshot(&self) -> SecuritySnapshot {
        match &self.backend {
            Backend::Raft(r) => SecuritySnapshot::Raft(r.meta.state()),
            Backend::Local { state, .. } => SecuritySnapshot::Local(match state.read() {
                Ok(s) => s.clone(),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            }),
        }
    }

    /// Orders a change and returns once this node applies it. A refusal or
    /// a failure is a Kafka error code and message.
    pub async fn change(&self, command: SecurityCommand) -> Result<(), (i16, String)> {
        match &self.backend {
            Backend::Raft(r) => {
                let before = r.meta.state().security.version;
                r.change(MetaCommand::Security(command)).await?;
                // `change` returns once this node's Raft state has it.
                let mut state = r.meta.subscribe();
                let _ = tokio::time::timeout(CHANGE_WAIT_MAX, state.wait_for(|s| s.security.version > before)).await;
                Ok(())
            }
            Backend::Local { state, path, write } => {
                let _writer = write.lock().await;
                let mut next = SecurityState::clone(&self.snapshot());
                next.apply(&command)
                    .map_err(|e| (ResponseError::InvalidRequest.code(), e.to_string()))?;
                let bytes =
                    postcard::to_stdvec(&next).map_err(|e| (ResponseError::KafkaStorageError.code(), e.to_string()))?;
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| (ResponseError::KafkaStorageError.code(), e.to_string()))?
                    .map_err(|e| (ResponseError::KafkaStorageError.code(), e.to_string()))?;
                match state.write() {
                    Ok(mut s) => *s = Arc::new(next),
                    Err(mut p) => **p.get_mut() = Arc::new(next),
                }
                Ok(())
            }
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a mix: a synced temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
