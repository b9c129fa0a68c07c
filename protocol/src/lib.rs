//! Courier's Kafka wire codec: bytes in, values out.
//!
//! This crate owns everything about the Kafka protocol that does not need a
//! socket: size-prefixed framing with a hard maximum, request and response
//! headers for every API version Courier advertises, and validation of v2
//! record batches (CRC-32C, lengths, record count, compression). It has no
//! tokio and no I/O so that it can be fuzzed and property-tested in isolation.
#![forbid(unsafe_code)]

pub mod frame;
pub mod offchain;
pub mod partitioner;
pub mod records;
pub mod request;
pub mod response;
pub mod versions;

/// The generated Kafka message types Courier builds on.
pub use kafka_protocol;
pub use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
pub use kafka_protocol::protocol::StrBytes;
