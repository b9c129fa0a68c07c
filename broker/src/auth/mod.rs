//! Who a client is: TLS client certificates and SASL on the Kafka
//! listeners, the principal and organization each connection acts as, and
//! the authorizer every handler asks before it acts.

pub mod authorizer;
pub mod mapping;
pub mod sasl;
pub mod scram;
pub mod tls;

/// The principal of a connection nobody authenticated (PLAINTEXT, or SSL
/// without a client certificate), as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";
