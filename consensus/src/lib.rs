//! Courier's ledger and consensus layers.
//!
//! * [`ledger`]: blocks, their canonical encoding and hash chain, the
//!   redb-backed block store, and chain verification.
//! * [`contract`]: the deterministic rules every replica applies to an ordered
//!   batch before it becomes part of a block (idempotent producer sequences).
//! * [`catalog`]: topic records and their naming rules.
//! * [`pbft`]: layer 1, the PBFT replica as a deterministic state machine.
//! * [`raft`]: layer 2, the Raft group holding nodes, clusters and topics.
//! * [`security`]: ACLs, SCRAM credentials and organizations (Raft state).
//!
//! Nothing here touches sockets or clocks: time comes in as arguments.
//! No unsafe code but one positional read into a buffer that is not zeroed
//! first (`ledger::payloads`).
#![deny(unsafe_code)]

pub mod catalog;
pub mod contract;
pub mod ledger;
pub mod pbft;
pub mod raft;
pub mod security;

pub use ledger::{Block, BlockHash, PartitionKey, Receipt, RequestRecord};
