//! PBFT (Castro–Liskov, with signatures instead of MACs) for one
//! partition's replica cluster, as a deterministic state machine.
//!
//! A [`Replica`] takes [`Event`]s (a client request, a peer's message, a
//! timer tick, the environment's report that it executed or transferred
//! state) and returns [`Action`]s (persist, send, broadcast, execute,
//! certified, fetch). It has no sockets, clock or randomness: time arrives
//! in events, keys are given to it, and the same events in the same order
//! always produce the same actions. That is what lets the simulator in
//! `tests/` drive whole clusters from a seed and replay any failure exactly.
//!
//! * **Requests** carry an id (origin replica, number). A replica hands its
//!   own to the primary; one not executed in time is relayed to everyone,
//!   and if it still does not execute the view changes.
//! * **Normal case** over batches: PRE-PREPARE, PREPARE with 2f matching,
//!   COMMIT with 2f + 1, execution in sequence order, pipelined inside the
//!   watermark window.
//! * **Checkpoints at every sequence number**: after executing, each replica
//!   signs its new state (for a partition, the hash of its ledger head). 2f +
//!   1 matching votes are at once the block's quorum certificate and a stable
//!   checkpoint that garbage-collects the log and moves the window.
//! * **View change** with exponential back-off, prepared certificates kept
//!   across views, and a NEW-VIEW every replica recomputes before accepting.
//! * **Retransmission** of unfinished work, so lost messages and reconnects
//!   cost time, not liveness; a peer in an older view is handed the NEW-VIEW.
//! * **State transfer**: when f + 1 peers are ahead and the log cannot catch
//!   up, the environment fetches certified blocks, verifies them, and reports
//!   back.
//! * **Durability**: what a replica must not forget is asked to be persisted
//!   before anything that depends on it is sent; [`Replica::restore`] comes
//!   back from that log and the ledger.

mod durable;
pub mod log;
mod message;
mod replica;
mod view_change;
pub mod wire;

pub use durable::{Durable, Recovered};
pub use message::{
    digest, public_key, Batch, CommitCert, Digest, Message, PreparedCert, QuorumCert, ReplicaId, Request, RequestId,
    SignatureCache, SignedMessage, VerifyError,
};
pub use replica::{Action, Config, Event, Replica, ReplicaKeys};

/// A replica cluster's identity: SHA-256 over its members' public keys.
pub fn cluster_fingerprint(members: &[bytes::Bytes]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"courier-cluster-v1");
    for k in members {
        ctx.update(k);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The id one ordering instance of a cluster (a partition's, or the
/// metadata ledger's) signs under, from the cluster's fingerprint and the
/// ledger's key: no signature carries over to another partition or cluster.
pub fn instance_id(fingerprint: &Digest, ledger_key: &[u8]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(fingerprint);
    ctx.update(ledger_key);
    let d = ctx.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(id)
}
