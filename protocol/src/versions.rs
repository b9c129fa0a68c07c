//! The ApiVersions table: exactly the APIs and versions Courier implements.
//!
//! A version appears here only when every handler honours its fields; the
//! table is what `ApiVersions` advertises and what the request decoder
//! accepts, so the two can never disagree.

use kafka_protocol::messages::ApiKey;

/// One advertised API and its inclusive version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub api_key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn api(api_key: ApiKey, min: i16, max: i16) -> Supported {
    Supported { api_key, min, max }
}

/// Every API Courier serves. Minimum versions follow Apache Kafka 4.0, which
/// removed the older ones (KIP-896); Produce starts at v3 and Fetch at v4
/// because only v2 record batches (magic 2) are stored.
///
/// Produce stops at v8: from v9 (flexible versions) the record set's length
/// is a compact varint, and librdkafka reserves four bytes for it, so a
/// record set of 256 MiB or more reaches the broker with length 0 (see
/// `rd_kafka_buf_finalize_arraycnt`). v9 adds nothing else; at v8 the
/// length is an int32 and values of any size the limits allow arrive whole.
pub const SUPPORTED: &[Supported] = &[
    api(ApiKey::Produce, 3, 8),
    api(ApiKey::Fetch, 4, 12),
    api(ApiKey::ListOffsets, 1, 7),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::OffsetCommit, 2, 8),
    api(ApiKey::OffsetFetch, 1, 8),
    api(ApiKey::FindCoordinator, 0, 4),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::DescribeGroups, 0, 5),
    api(ApiKey::ListGroups, 0, 4),
    api(ApiKey::ApiVersions, 0, 3),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::InitProducerId, 0, 4),
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    api(ApiKey::DescribeCluster, 0, 1),
    // Security: SASL (handshake v0 is followed by bare tokens, v1 by
    // SaslAuthenticate; librdkafka looks for v0 to enable SASL at all),
    // ACLs and SCRAM credentials.
    api(ApiKey::SaslHandshake, 0, 1),
    api(ApiKey::SaslAuthenticate, 0, 2),
    api(ApiKey::DescribeAcls, 1, 3),
    api(ApiKey::CreateAcls, 1, 3),
    api(ApiKey::DeleteAcls, 1, 3),
    api(ApiKey::AlterUserScramCredentials, 0, 0),
    api(ApiKey::DescribeUserScramCredentials, 0, 0),
];

/// A short, fixed name for logs and metric labels.
pub fn name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        _ => "other",
    }
}

/// The advertised range for `api_key`, if Courier serves it at all.
pub fn supported(api_key: ApiKey) -> Option<Supported> {
    SUPPORTED.iter().copied().find(|s| s.api_key == api_key)
}

/// Whether Courier serves `api_key` at `version`.
pub fn is_supported(api_key: ApiKey, version: i16) -> bool {
    supported(api_key).is_some_and(|s| (s.min..=s.max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_are_within_what_the_codec_knows() {
        for s in SUPPORTED {
            let known = s.api_key.valid_versions();
            assert!(s.min <= s.max, "{:?}", s.api_key);
            assert!(
                known.min <= s.min && s.max <= known.max,
                "{:?} {}..{} vs {}",
                s.api_key,
                s.min,
                s.max,
                known
            );
        }
    }
}
