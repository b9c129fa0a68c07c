//! Storage plugins and connectors for Courier.
//!
//! A storage plugin keeps large payloads in the sending organization's own
//! storage, addressed by content (SHA-256), so that only hashes travel on the
//! ledger ([`storage`]); [`offchain`] moves a batch's large values into
//! that storage and back. The Kafka-Connect-style connectors that move
//! files between an organization's storage and topics come next.
#![forbid(unsafe_code)]

pub mod offchain;
pub mod storage;
