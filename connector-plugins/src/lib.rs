//! Storage plugins and connectors for Courier.
//!
//! A storage plugin keeps large payloads in the sending organization's own
//! storage, addressed by content (SHA-256), so that only hashes travel on the
//! ledger ([`storage`]); [`offchain`] moves a batch's large values into
//! that storage and back. [`connect`] is the Kafka-Connect-style runner
//! whose connectors move files between an organization's directory or
//! bucket and topics.
#![forbid(unsafe_code)]

pub mod connect;
pub mod offchain;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
