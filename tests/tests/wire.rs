//! Protocol-level tests with a raw wire client: every advertised API at every
//! advertised version, and bad input of every kind the issue names.

mod common;

use bytes::{Bytes, BytesMut};
use common::{TestBroker, Wire};
use courier_protocol::records::{encode_batch, NewRecord, ProducerIds};
use courier_protocol::versions::SUPPORTED;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}
fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

fn batch(values: &[&str], producer: ProducerIds) -> Bytes {
    let recs: Vec<NewRecord<'_>> = values
        .iter()
        .map(|v| NewRecord {
            key: Some(b"k"),
            value: Some(v.as_bytes()),
            ..Default::default()
        })
        .collect();
    encode_batch(1_700_000_000_000, producer, &recs)
}

fn produce_request(topic: &str, records: Bytes, acks: i16) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(tn(topic))
                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records))])]),
    )
}

fn produce_result(resp: ResponseKind) -> (i16, i64) {
    let ResponseKind::Produce(r) = resp else {
        panic!("not a produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn create_topic(wire: &mut Wire, name: &str, partitions: i32) {
    let req = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
        vec![create_topics_request::CreatableTopic::default()
                .with_name(tn(name))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)],
    ));
    let ResponseKind::CreateTopics(r) = wire.call(ApiKey::CreateTopics, 7, &req).await else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}

async fn high_watermark(wire: &mut Wire, topic: &str) -> i64 {
    let req = RequestKind::ListOffsets(ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
        vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(tn(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])],
    ));
    let ResponseKind::ListOffsets(r) = wire.call(ApiKey::ListOffsets, 7, &req).await else {
        panic!()
    };
    r.topics[0].partitions[0].offset
}

/// A representative request for `api` at `version`, about topic `sweep`.
fn sweep_request(api: ApiKey, version: i16) -> RequestKind {
    let group = GroupId(s("sweep-group"));
    match api {
        ApiKey::Produce => produce_request("sweep", batch(&["p"], ProducerIds::NONE), -1),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(tn("sweep"))
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]),
        ),
        ApiKey::ListOffsets => {
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
                vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(tn("sweep"))
                    .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(0)])],
            ))
        }
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(tn("sweep"))),
        ]))),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(group)
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(tn("sweep"))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1)
                            .with_committed_metadata(Some(s("m"))),
                    ])]),
        ),
        ApiKey::OffsetFetch if version >= 8 => {
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(group)
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(tn("sweep"))
                            .with_partition_indexes(vec![0]),
                    ])),
            ]))
        }
        ApiKey::OffsetFetch => {
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(group).with_topics(Some(
                vec![offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(tn("sweep"))
                    .with_partition_indexes(vec![0])],
            )))
        }
        ApiKey::FindCoordinator if version >= 4 => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("sweep-group")]),
        ),
        ApiKey::FindCoordinator => {
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s("sweep-group")))
        }
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group)
                .with_session_timeout_ms(1)
                .with_protocol_type(s("consumer")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(group)
                .with_member_id(s("nobody")),
        ),
        ApiKey::LeaveGroup if version >= 3 => {
            RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(group).with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(s("nobody")),
            ]))
        }
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(group)
                .with_member_id(s("nobody")),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(group)
                .with_member_id(s("nobody")),
        ),
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![group]))
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(s("wire"))
                .with_client_software_version(s("1")),
        ),
        ApiKey::CreateTopics => {
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(1000).with_topics(
                vec![create_topics_request::CreatableTopic::default()
                    .with_name(tn(&format!("made-v{version}")))
                    .with_num_partitions(2)
                    .with_replication_factor(1)],
            ))
        }
        ApiKey::DeleteTopics if version >= 6 => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(tn(&format!("made-v{}", version.min(7)))))]),
        ),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topic_names(vec![tn(&format!("made-v{}", version + 2))]),
        ),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(1000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(tn("sweep"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_leader_epoch(0),
                    ])]),
        ),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("sweep")),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1")),
            ]))
        }
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_timeout_ms(1000).with_topics(
                vec![create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(tn(&format!("made-v{}", version + 2 + 3)))
                    .with_count(3)],
            ))
        }
        ApiKey::DeleteGroups => {
            RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("nope"))]))
        }
        ApiKey::IncrementalAlterConfigs => {
            RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("sweep"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_config_operation(0)
                            .with_value(Some(s("3600000"))),
                    ]),
            ]))
        }
        ApiKey::DescribeCluster => {
            RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(1))
        }
        // A PLAINTEXT listener: the SASL APIs answer ILLEGAL_SASL_STATE,
        // the ACL APIs SECURITY_DISABLED (no authorizer), as Kafka's do.
        ApiKey::SaslHandshake => {
            RequestKind::SaslHandshake(SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512")))
        }
        ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default()),
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
        ApiKey::CreateAcls => RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
            create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(s("sweep"))
                .with_resource_pattern_type(3)
                .with_principal(s("User:a"))
                .with_host(s("*"))
                .with_operation(3)
                .with_permission_type(3),
        ])),
        ApiKey::DeleteAcls => RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
            delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ])),
        ApiKey::DescribeUserScramCredentials => {
            RequestKind::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default())
        }
        ApiKey::AlterUserScramCredentials => {
            RequestKind::AlterUserScramCredentials(AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(s("sweeper"))
                    .with_mechanism(2)
                    .with_iterations(4096)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from(vec![7u8; 64])),
            ]))
        }
        other => panic!("no sweep request for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_api_version_answers_a_decodable_response() {
    let mut broker = TestBroker::start(&[]).await;
    let mut wire = Wire::connect(broker.addr()).await;
    create_topic(&mut wire, "sweep", 1).await;
    for v in 2..=7 {
        create_topic(&mut wire, &format!("made-for-partitions-{v}"), 1).await;
    }
    let mut answered = 0;
    for api in SUPPORTED {
        for version in api.min..=api.max {
            let resp = wire
                .call(api.api_key, version, &sweep_request(api.api_key, version))
                .await;
            match (api.api_key, &resp) {
                (ApiKey::Produce, ResponseKind::Produce(r)) => {
                    assert_eq!(
                        r.responses[0].partition_responses[0].error_code, 0,
                        "Produce v{version}"
                    )
                }
                (ApiKey::Fetch, ResponseKind::Fetch(r)) => {
                    let p = &r.responses[0].partitions[0];
                    assert_eq!(p.error_code, 0, "Fetch v{version}");
                    assert!(
                        p.records.as_ref().is_some_and(|r| !r.is_empty()),
                        "Fetch v{version} returned no records"
                    );
                }
                (ApiKey::Metadata, ResponseKind::Metadata(r)) => {
                    assert_eq!(r.topics[0].error_code, 0, "Metadata v{version}");
                    assert_eq!(r.topics[0].partitions.len(), 1);
                }
                (ApiKey::ListOffsets, ResponseKind::ListOffsets(r)) => {
                    assert_eq!(r.topics[0].partitions[0].offset, 0, "ListOffsets v{version}")
                }
                (ApiKey::OffsetCommit, ResponseKind::OffsetCommit(r)) => {
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "OffsetCommit v{version}")
                }
                (ApiKey::DescribeConfigs, ResponseKind::DescribeConfigs(r)) => {
                    assert!(
                        r.results.iter().all(|x| x.error_code == 0 && !x.configs.is_empty()),
                        "DescribeConfigs v{version}"
                    )
                }
                (ApiKey::ApiVersions, ResponseKind::ApiVersions(r)) => {
                    assert_eq!(r.api_keys.len(), SUPPORTED.len())
                }
                (ApiKey::InitProducerId, ResponseKind::InitProducerId(r)) => {
                    assert!(r.error_code == 0 && r.producer_id.0 >= 0, "InitProducerId v{version}")
                }
                (ApiKey::JoinGroup, ResponseKind::JoinGroup(r)) => {
                    assert_eq!(r.error_code, ResponseError::InvalidSessionTimeout.code())
                }
                (ApiKey::SaslHandshake, ResponseKind::SaslHandshake(r)) => {
                    assert_eq!(r.error_code, ResponseError::IllegalSaslState.code())
                }
                (ApiKey::SaslAuthenticate, ResponseKind::SaslAuthenticate(r)) => {
                    assert_eq!(r.error_code, ResponseError::IllegalSaslState.code())
                }
                (ApiKey::CreateAcls, ResponseKind::CreateAcls(r)) => {
                    assert_eq!(r.results[0].error_code, ResponseError::SecurityDisabled.code())
                }
                (ApiKey::DescribeAcls, ResponseKind::DescribeAcls(r)) => {
                    assert_eq!(r.error_code, ResponseError::SecurityDisabled.code())
                }
                (ApiKey::AlterUserScramCredentials, ResponseKind::AlterUserScramCredentials(r)) => {
                    assert_eq!(r.results[0].error_code, 0, "{:?}", r.results[0].error_message)
                }
                (ApiKey::DescribeUserScramCredentials, ResponseKind::DescribeUserScramCredentials(r)) => {
                    assert_eq!(r.results.len(), 1, "the sweeper's credential")
                }
                _ => {}
            }
            answered += 1;
        }
    }
    assert!(answered > 100, "swept {answered} API versions");
    drop(wire);
    broker.stop().await;
    let (sound, _) = courier::verify::verify_data_dir(&broker.dir, None, |_| {}, || {}).expect("ledger verifies");
    assert!(
        sound
            .iter()
            // One record per Produce version (v3–v8).
            .any(|p| p.topic == "sweep" && p.records == 6 && p.receipts > 0),
        "{sound:?}"
    );
}

/// After each bad input, a second client still gets served and the topic's
/// high watermark has not moved.
async fn still_serving(broker: &TestBroker, expected_hw: i64) {
    let mut other = Wire::connect(broker.addr()).await;
    assert_eq!(high_watermark(&mut other, "t").await, expected_hw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_own_connection() {
    let broker = TestBroker::start(&["socket.request.max.bytes=2000000", "message.max.bytes=1000000"]).await;
    let mut setup = Wire::connect(broker.addr()).await;
    // Requests before ApiVersions are served: Kafka does not require it first.
    create_topic(&mut setup, "t", 1).await;
    let (code, _) = produce_result(
        setup
            .call(
                ApiKey::Produce,
                8,
                &produce_request("t", batch(&["a", "b"], ProducerIds::NONE), -1),
            )
            .await,
    );
    assert_eq!(code, 0);

    // A length prefix over socket.request.max.bytes.
    let mut w = Wire::connect(broker.addr()).await;
    w.stream.try_write(&0x7fff_ffffi32.to_be_bytes()).ok();
    assert!(w.is_closed().await, "oversized frame");
    still_serving(&broker, 2).await;

    // A negative length.
    let mut w = Wire::connect(broker.addr()).await;
    w.stream.try_write(&(-5i32).to_be_bytes()).ok();
    assert!(w.is_closed().await, "negative length");
    still_serving(&broker, 2).await;

    // An API key no Kafka version has.
    let mut w = Wire::connect(broker.addr()).await;
    w.send_raw_frame(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]).await;
    assert!(w.is_closed().await, "unknown API key");
    still_serving(&broker, 2).await;

    // A served API at a version we do not serve.
    let mut w = Wire::connect(broker.addr()).await;
    w.send_raw_frame(&[0, 3, 0, 99, 0, 0, 0, 1, 0xff, 0xff]).await;
    assert!(w.is_closed().await, "unsupported Metadata version");
    still_serving(&broker, 2).await;

    // A header that parses followed by a body that does not.
    let mut w = Wire::connect(broker.addr()).await;
    w.send_raw_frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 5, 0, 200])
        .await;
    assert!(w.is_closed().await, "garbage Metadata body");
    still_serving(&broker, 2).await;

    // A 14-byte Metadata request claiming i32::MAX topics: the codec would
    // pre-allocate ~100 GB for it (see broker/src/alloc.rs).
    let mut w = Wire::connect(broker.addr()).await;
    w.send_raw_frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff])
        .await;
    assert!(w.is_closed().await, "absurd array count");
    still_serving(&broker, 2).await;

    // A frame too short to hold a header.
    let mut w = Wire::connect(broker.addr()).await;
    w.send_raw_frame(&[0, 3]).await;
    assert!(w.is_closed().await, "short frame");
    still_serving(&broker, 2).await;

    // A frame that never completes does not block anyone else.
    let slow = Wire::connect(broker.addr()).await;
    slow.stream.try_write(&100i32.to_be_bytes()).ok();
    still_serving(&broker, 2).await;
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_versions_version_gets_the_table_in_v0() {
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    // ApiVersions v77, header v2 with an empty tagged-field section.
    w.send_raw_frame(&[0, 18, 0, 77, 0, 0, 0, 9, 0xff, 0xff, 0]).await;
    let (id, resp) = w
        .recv(ApiKey::ApiVersions, 0)
        .await
        .expect("an answer, not a closed connection");
    let ResponseKind::ApiVersions(r) = resp else { panic!() };
    assert_eq!(id, 9);
    assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
    assert!(r.api_keys.iter().any(|k| k.api_key == 18 && k.max_version == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_oversized_batches_are_refused_and_the_ledger_is_unchanged() {
    let mut broker = TestBroker::start(&["message.max.bytes=2048"]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    let good = batch(&["one"], ProducerIds::NONE);
    assert_eq!(
        produce_result(
            w.call(ApiKey::Produce, 8, &produce_request("t", good.clone(), -1))
                .await
        ),
        (0, 0)
    );

    let mut flipped = BytesMut::from(&good[..]);
    let last = flipped.len() - 2;
    flipped[last] ^= 0x40;
    let (code, _) = produce_result(
        w.call(ApiKey::Produce, 8, &produce_request("t", flipped.freeze(), -1))
            .await,
    );
    assert_eq!(code, ResponseError::CorruptMessage.code(), "CRC mismatch");

    let truncated = good.slice(..good.len() - 3);
    let (code, _) = produce_result(w.call(ApiKey::Produce, 8, &produce_request("t", truncated, -1)).await);
    assert_eq!(code, ResponseError::CorruptMessage.code(), "truncated batch");

    let (code, _) = produce_result(
        w.call(ApiKey::Produce, 8, &produce_request("t", Bytes::new(), -1))
            .await,
    );
    assert_eq!(code, ResponseError::CorruptMessage.code(), "empty record set");

    let big = "x".repeat(3000);
    let (code, _) = produce_result(
        w.call(
            ApiKey::Produce,
            8,
            &produce_request("t", batch(&[&big], ProducerIds::NONE), -1),
        )
        .await,
    );
    assert_eq!(code, ResponseError::MessageTooLarge.code(), "over message.max.bytes");

    let (code, _) = produce_result(
        w.call(ApiKey::Produce, 8, &produce_request("nope", good.clone(), -1))
            .await,
    );
    assert_eq!(code, ResponseError::UnknownTopicOrPartition.code());

    let (code, _) = produce_result(w.call(ApiKey::Produce, 8, &produce_request("t", good.clone(), 2)).await);
    assert_eq!(code, ResponseError::InvalidRequiredAcks.code());

    // A client's own off-chain descriptor (here naming an object of
    // another organization) is refused: only a node writes one.
    let forged = courier_protocol::offchain::Descriptor {
        digest: [7; 32],
        size: 1 << 30,
        organization: "org-b".into(),
        locator: "objects/07".into(),
    }
    .encode()
    .unwrap();
    let headers = [(courier_protocol::offchain::OFFCHAIN_HEADER, Some(&forged[..]))];
    let planted = encode_batch(
        1_700_000_000_000,
        ProducerIds::NONE,
        &[NewRecord {
            key: Some(b"k"),
            value: Some(b""),
            headers: &headers,
            timestamp_delta: 0,
        }],
    );
    let (code, _) = produce_result(w.call(ApiKey::Produce, 8, &produce_request("t", planted, -1)).await);
    assert_eq!(code, ResponseError::InvalidRecord.code(), "a forged descriptor");

    assert_eq!(
        high_watermark(&mut w, "t").await,
        1,
        "nothing refused reached the ledger"
    );
    drop(w);
    broker.stop().await;
    let (sound, _) = courier::verify::verify_data_dir(&broker.dir, None, |_| {}, || {}).expect("ledger verifies");
    assert_eq!(sound.iter().map(|p| p.records).sum::<i64>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_deduplicated_and_gaps_refused() {
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    let ResponseKind::InitProducerId(pid) = w
        .call(
            ApiKey::InitProducerId,
            4,
            &RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ),
        )
        .await
    else {
        panic!()
    };
    let id = pid.producer_id.0;
    let ids = |seq| ProducerIds {
        producer_id: id,
        producer_epoch: 0,
        base_sequence: seq,
    };
    let first = batch(&["a", "b"], ids(0));
    assert_eq!(
        produce_result(
            w.call(ApiKey::Produce, 8, &produce_request("t", first.clone(), -1))
                .await
        ),
        (0, 0)
    );
    // The same batch again (a retry after a lost response): same offset, not written twice.
    assert_eq!(
        produce_result(w.call(ApiKey::Produce, 8, &produce_request("t", first, -1)).await),
        (0, 0)
    );
    assert_eq!(
        produce_result(
            w.call(ApiKey::Produce, 8, &produce_request("t", batch(&["c"], ids(2)), -1))
                .await
        ),
        (0, 2)
    );
    // A gap in the sequence.
    let (code, _) = produce_result(
        w.call(ApiKey::Produce, 8, &produce_request("t", batch(&["e"], ids(9)), -1))
            .await,
    );
    assert_eq!(code, ResponseError::OutOfOrderSequenceNumber.code());
    // A newer epoch fences the old one.
    let new_epoch = ProducerIds {
        producer_id: id,
        producer_epoch: 1,
        base_sequence: 0,
    };
    assert_eq!(
        produce_result(
            w.call(ApiKey::Produce, 8, &produce_request("t", batch(&["f"], new_epoch), -1))
                .await
        ),
        (0, 3)
    );
    let (code, _) = produce_result(
        w.call(ApiKey::Produce, 8, &produce_request("t", batch(&["g"], ids(3)), -1))
            .await,
    );
    assert_eq!(code, ResponseError::InvalidProducerEpoch.code());
    assert_eq!(high_watermark(&mut w, "t").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_response_and_later_requests_see_its_write() {
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    w.send(
        ApiKey::Produce,
        8,
        &produce_request("t", batch(&["quiet"], ProducerIds::NONE), 0),
    )
    .await;
    // The next response on this connection is the ListOffsets one, and the
    // acks=0 write is visible to it.
    assert_eq!(high_watermark(&mut w, "t").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produces_are_answered_in_order_with_contiguous_offsets() {
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let v = format!("r{i}");
        ids.push(
            w.send(
                ApiKey::Produce,
                8,
                &produce_request("t", batch(&[&v, &v], ProducerIds::NONE), -1),
            )
            .await,
        );
    }
    for (i, id) in ids.into_iter().enumerate() {
        let (got, resp) = w.recv(ApiKey::Produce, 8).await.expect("response");
        assert_eq!(got, id, "responses come back in request order");
        assert_eq!(produce_result(resp), (0, 2 * i as i64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_topic_configs_persist_across_a_restart() {
    let mut broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    let alter = |op: i8, name: &str, value: Option<&str>| {
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s(name))
                            .with_config_operation(op)
                            .with_value(value.map(s)),
                    ]),
            ]))
    };
    let code = |r: ResponseKind| match r {
        ResponseKind::IncrementalAlterConfigs(r) => r.responses[0].error_code,
        _ => panic!(),
    };
    assert_eq!(
        code(
            w.call(
                ApiKey::IncrementalAlterConfigs,
                1,
                &alter(0, "retention.ms", Some("1234"))
            )
            .await
        ),
        0
    );
    assert_eq!(
        code(
            w.call(
                ApiKey::IncrementalAlterConfigs,
                1,
                &alter(0, "max.message.bytes", Some("4096"))
            )
            .await
        ),
        0
    );
    assert_eq!(
        code(
            w.call(
                ApiKey::IncrementalAlterConfigs,
                1,
                &alter(0, "no.such.thing", Some("1"))
            )
            .await
        ),
        ResponseError::InvalidConfig.code()
    );
    assert_eq!(
        code(
            w.call(
                ApiKey::IncrementalAlterConfigs,
                1,
                &alter(0, "retention.ms", Some("soon"))
            )
            .await
        ),
        ResponseError::InvalidConfig.code()
    );
    drop(w);
    broker.restart(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    let describe = RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("t")),
        ]));
    let ResponseKind::DescribeConfigs(r) = w.call(ApiKey::DescribeConfigs, 4, &describe).await else {
        panic!()
    };
    let value = |n: &str| {
        r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == n)
            .and_then(|c| c.value.as_ref())
            .map(|v| v.to_string())
    };
    assert_eq!(value("retention.ms").as_deref(), Some("1234"));
    assert_eq!(value("max.message.bytes").as_deref(), Some("4096"));
    // The altered max.message.bytes is enforced.
    let big = "y".repeat(5000);
    let (code, _) = produce_result(
        w.call(
            ApiKey::Produce,
            8,
            &produce_request("t", batch(&[&big], ProducerIds::NONE), -1),
        )
        .await,
    );
    assert_eq!(code, ResponseError::MessageTooLarge.code());
    // DELETE restores the default.
    let ResponseKind::IncrementalAlterConfigs(_) = w
        .call(ApiKey::IncrementalAlterConfigs, 1, &alter(1, "max.message.bytes", None))
        .await
    else {
        panic!()
    };
    let (code, _) = produce_result(
        w.call(
            ApiKey::Produce,
            8,
            &produce_request("t", batch(&[&big], ProducerIds::NONE), -1),
        )
        .await,
    );
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_many_partitions_is_answered_and_read_back() {
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "wide", 50).await;
    let commit = RequestKind::OffsetCommit(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("wide-group")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(tn("wide"))
                .with_partitions(
                    (0..50)
                        .map(|p| {
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(1000 + p as i64)
                        })
                        .collect(),
                )]),
    );
    let ResponseKind::OffsetCommit(r) = w.call(ApiKey::OffsetCommit, 8, &commit).await else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions.len(), 50);
    assert!(r.topics[0].partitions.iter().all(|p| p.error_code == 0));
    let fetch = RequestKind::OffsetFetch(
        OffsetFetchRequest::default()
            .with_group_id(GroupId(s("wide-group")))
            .with_topics(None),
    );
    let ResponseKind::OffsetFetch(r) = w.call(ApiKey::OffsetFetch, 7, &fetch).await else {
        panic!()
    };
    let mut got: Vec<(i32, i64)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    got.sort();
    assert_eq!(got, (0..50).map(|p| (p, 1000 + p as i64)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stalled_mid_frame_is_closed_when_idle() {
    let broker = TestBroker::start(&["connections.max.idle.ms=300"]).await;
    let mut stalled = Wire::connect(broker.addr()).await;
    stalled.stream.try_write(&[0, 0, 0, 50, 0, 3]).ok();
    assert!(stalled.is_closed().await, "idle connection closed");
    // A connection that keeps making requests is not.
    let mut busy = Wire::connect(broker.addr()).await;
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let r = busy
            .call(ApiKey::ApiVersions, 3, &sweep_request(ApiKey::ApiVersions, 3))
            .await;
        assert!(matches!(r, ResponseKind::ApiVersions(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused() {
    let broker = TestBroker::start(&["max.connections=2"]).await;
    let mut a = Wire::connect(broker.addr()).await;
    let mut b = Wire::connect(broker.addr()).await;
    let _ = a
        .call(ApiKey::ApiVersions, 3, &sweep_request(ApiKey::ApiVersions, 3))
        .await;
    let _ = b
        .call(ApiKey::ApiVersions, 3, &sweep_request(ApiKey::ApiVersions, 3))
        .await;
    let mut c = Wire::connect(broker.addr()).await;
    assert!(c.is_closed().await, "third connection refused");
    drop(a);
    // The freed slot is usable again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut d = Wire::connect(broker.addr()).await;
        let id = d
            .send(ApiKey::ApiVersions, 3, &sweep_request(ApiKey::ApiVersions, 3))
            .await;
        if let Some((got, _)) = d.recv(ApiKey::ApiVersions, 3).await {
            assert_eq!(got, id);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_fetch_max_bytes_bounds_the_response_but_returns_a_first_batch() {
    let broker = TestBroker::start(&["fetch.max.bytes=1500"]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;
    let value = "z".repeat(1000);
    for _ in 0..3 {
        let (code, _) = produce_result(
            w.call(
                ApiKey::Produce,
                8,
                &produce_request("t", batch(&[&value], ProducerIds::NONE), -1),
            )
            .await,
        );
        assert_eq!(code, 0);
    }
    let fetch = RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(50 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn("t"))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(10 << 20)])]),
    );
    let ResponseKind::Fetch(r) = w.call(ApiKey::Fetch, 12, &fetch).await else {
        panic!()
    };
    let records = r.responses[0].partitions[0].records.clone().unwrap_or_default();
    let one = batch(&[&value], ProducerIds::NONE).len();
    assert_eq!(
        records.len(),
        one,
        "exactly the first batch: the next would pass fetch.max.bytes"
    );
}

fn long_poll(topic: &str, offset: i64, max_wait_ms: i32, min_bytes: i32) -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn(topic))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_commit_and_otherwise_waits_max_wait() {
    use std::time::{Duration, Instant};
    let broker = TestBroker::start(&[]).await;
    let mut w = Wire::connect(broker.addr()).await;
    create_topic(&mut w, "t", 1).await;

    // Parked on an empty partition with a long max wait: a produce from
    // another connection wakes it well before the wait is over.
    let mut consumer = Wire::connect(broker.addr()).await;
    let started = Instant::now();
    let id = consumer.send(ApiKey::Fetch, 12, &long_poll("t", 0, 10_000, 1)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _) = produce_result(
        w.call(
            ApiKey::Produce,
            8,
            &produce_request("t", batch(&["wake"], ProducerIds::NONE), -1),
        )
        .await,
    );
    assert_eq!(code, 0);
    let (got, resp) = consumer.recv(ApiKey::Fetch, 12).await.expect("fetch answered");
    assert_eq!(got, id);
    let ResponseKind::Fetch(r) = resp else { panic!() };
    assert!(r.responses[0].partitions[0]
        .records
        .as_ref()
        .is_some_and(|b| !b.is_empty()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke on the commit, not at max wait"
    );

    // min_bytes that cannot be met: the answer comes at max wait, with what there is.
    let started = Instant::now();
    let ResponseKind::Fetch(r) = consumer.call(ApiKey::Fetch, 12, &long_poll("t", 0, 400, 1 << 20)).await else {
        panic!()
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(380) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert!(r.responses[0].partitions[0]
        .records
        .as_ref()
        .is_some_and(|b| !b.is_empty()));
}
