//! Storage plugins and connectors for Courier.
//!
//! A storage plugin keeps large payloads in the sending organization's own
//! storage, addressed by content (SHA-256), so that only hashes travel on the
//! ledger. The trait and its implementations arrive with the storage-plugin
//! issue; this crate exists now so the workspace has its final shape.
#![forbid(unsafe_code)]
