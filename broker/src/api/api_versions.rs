//! ApiVersions: the table in `courier_protocol::versions`, verbatim.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::ResponseError;

fn table() -> Vec<ApiVersion> {
    courier_protocol::versions::SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.api_key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect()
}

pub fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(table())
}

/// The answer to an ApiVersions request at a version we do not know: the
/// error, and our table so the client can retry at one we do (KIP-511).
pub fn unsupported_version() -> courier_protocol::ResponseKind {
    courier_protocol::ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(table()),
    )
}
