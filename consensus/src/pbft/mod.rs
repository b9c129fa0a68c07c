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
//! Implemented so far: the normal case over batches (PRE-PREPARE, PREPARE
//! with 2f matching, COMMIT with 2f + 1), execution in sequence order with a
//! quorum certificate, the watermark window, and checkpoints every K
//! sequence numbers that garbage-collect the log. Not yet: view change,
//! NEW-VIEW, state transfer, persistence actions (issue 3 continues).

mod message;
mod replica;

pub use message::{digest, public_key, Digest, Message, QuorumCert, ReplicaId, SignedMessage, VerifyError};
pub use replica::{batch_requests, Action, Config, Event, Replica, ReplicaKeys};
