//! PBFT (Castro–Liskov, with signatures instead of MACs) for one partition's
//! replica cluster, as a deterministic state machine.
//!
//! A [`Replica`] takes [`Event`]s (a client request, a peer's message, a
//! timer tick) and returns [`Action`]s (send, broadcast, execute). It has no
//! sockets, clock or randomness: time arrives in events, keys are given to
//! it, and the same events in the same order always produce the same
//! actions. That is what lets the simulator in `tests/` drive whole clusters
//! from a seed and replay any failure exactly.
//!
//! Implemented so far:
//! * the normal case over batches (PRE-PREPARE, PREPARE with 2f matching,
//!   COMMIT with 2f + 1) and execution in sequence order, each batch with a
//!   quorum certificate anyone can verify from the members' public keys;
//! * the watermark window, with verified messages just ahead of it (or for
//!   the next views) held and replayed rather than dropped;
//! * checkpoints every K sequence numbers that make the log's prefix
//!   garbage and move the window;
//! * view change: a request not executed in time (doubling per failed view),
//!   or f + 1 peers asking, makes a replica send VIEW-CHANGE with its
//!   checkpoint proof and prepared certificates; the new primary's NEW-VIEW
//!   carries 2f + 1 of them and the pre-prepares every replica recomputes
//!   from them and accepts only if they match.
//!
//! Not yet (issue 3 continues): state transfer for a replica that fell
//! behind a stable checkpoint, retransmission after message loss,
//! persistence actions before sending, and the transport and broker wiring.

mod message;
mod replica;

pub use message::{
    digest, public_key, Digest, Message, PreparedCert, QuorumCert, ReplicaId, SignedMessage, VerifyError,
};
pub use replica::{batch_requests, Action, Config, Event, Replica, ReplicaKeys};
