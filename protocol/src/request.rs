//! Request decoding: header by API key and version, then the body.
//!
//! The API key, version and correlation id sit at fixed offsets in every
//! request header version, so they are read first: a request for an API or
//! version Courier does not serve can still be answered (or refused) by
//! correlation id without trusting the rest of the frame.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use crate::versions;

/// A decoded request: header and body.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub body: RequestKind,
    /// Bytes left after the body's last field. Kafka's broker ignores them
    /// and some clients send them (librdkafka 2.16 with Metadata v12), so
    /// Courier ignores them too, and reports how many for logging.
    pub trailing_bytes: usize,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

/// Why a frame is not a request Courier can serve.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Fewer than the 8 bytes every request header starts with.
    #[error("request of {length} bytes is shorter than a request header")]
    TooShort { length: usize },
    /// An API key no Kafka version defines, or one Courier does not serve.
    #[error("API key {api_key} is not served")]
    UnsupportedApi { api_key: i16, correlation_id: i32 },
    /// A served API at a version outside the advertised range.
    #[error("{api_key:?} version {version} is not served")]
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    /// Header or body do not parse.
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Decodes one frame (without its length prefix) into a request.
pub fn decode_request(frame: Bytes) -> Result<Request, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort { length: frame.len() });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key)
        .ok()
        .filter(|k| versions::supported(*k).is_some())
        .ok_or(RequestError::UnsupportedApi {
            api_key: raw_key,
            correlation_id,
        })?;
    if !versions::is_supported(api_key, version) {
        return Err(RequestError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api_key,
        version,
        reason,
    };
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| malformed(format!("header: {e}")))?;
    let body = RequestKind::decode(api_key, &mut buf, version).map_err(|e| malformed(format!("body: {e}")))?;
    Ok(Request {
        header,
        api_key,
        body,
        trailing_bytes: buf.remaining(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn encode(api_key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn round_trips_every_advertised_version_of_api_versions_and_metadata() {
        for v in 0..=3 {
            let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
            let req = decode_request(encode(ApiKey::ApiVersions, v, &body)).unwrap();
            assert_eq!(
                (req.api_key, req.version(), req.correlation_id()),
                (ApiKey::ApiVersions, v, 7)
            );
        }
        for v in 0..=12 {
            let body = RequestKind::Metadata(MetadataRequest::default());
            assert!(decode_request(encode(ApiKey::Metadata, v, &body)).is_ok(), "v{v}");
        }
    }

    #[test]
    fn unknown_key_and_version_keep_the_correlation_id() {
        let mut frame = BytesMut::from(&[0x7f, 0x00, 0, 0, 0, 0, 0, 42][..]);
        assert!(matches!(
            decode_request(frame.split().freeze()),
            Err(RequestError::UnsupportedApi { correlation_id: 42, .. })
        ));
        let frame = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 5]);
        assert!(matches!(
            decode_request(frame),
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version: 99,
                correlation_id: 5
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_ignored_and_counted_as_kafka_does() {
        let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
        let mut frame = BytesMut::from(&encode(ApiKey::ApiVersions, 0, &body)[..]);
        frame.extend_from_slice(&[1, 2, 3]);
        let req = decode_request(frame.freeze()).unwrap();
        assert_eq!((req.api_key, req.trailing_bytes), (ApiKey::ApiVersions, 3));
    }

    /// What librdkafka 2.16 sends for "all topics": Metadata v12 with three
    /// bytes after the last field.
    #[test]
    fn librdkafka_2_16_metadata_v12_is_accepted() {
        let frame = Bytes::from_static(&[
            0x00, 0x03, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x03, 0x00, 0x07, b'r', b'd', b'k', b'a', b'f', b'k', b'a', 0x00,
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ]);
        let req = decode_request(frame).unwrap();
        assert_eq!(
            (req.api_key, req.version(), req.trailing_bytes),
            (ApiKey::Metadata, 12, 3)
        );
        let RequestKind::Metadata(m) = req.body else {
            panic!("not metadata")
        };
        assert!(m.topics.is_none(), "all topics");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_request_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(data));
        }
    }
}
