//! Response encoding: length prefix, response header, body.

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::frame::{begin_frame, finish_frame};

/// A response body could not be encoded at the requested version (a field
/// the version cannot carry, a string too long): a bug on our side.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api_key: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// Appends one whole response frame to `out`.
pub fn encode_response(
    out: &mut BytesMut,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<(), EncodeError> {
    let err = |e: anyhow::Error| EncodeError {
        api_key,
        version,
        reason: e.to_string(),
    };
    let start = out.len();
    let at = begin_frame(out);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    // ApiVersions answers with header v0 at every version so that a client
    // that sent a version we do not know can still read our answer (KIP-511).
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    let result = header
        .encode(out, header_version)
        .and_then(|()| body.encode(out, version));
    if let Err(e) = result {
        out.truncate(start);
        return Err(err(e));
    }
    finish_frame(out, at);
    Ok(())
}
