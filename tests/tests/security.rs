//! Who may send and receive: SASL_SSL and SSL listeners, SCRAM and PLAIN,
//! client certificates, and the authorizer on every served API.
//!
//! The authorization matrix sends every served API, over SASL_SSL and over
//! SSL (mTLS), as four principals: one the ACLs allow (by literal and by
//! prefixed bindings), one no ACL names, one an explicit Deny refuses
//! despite an Allow, and one a prefixed Deny refuses. Every allowed call
//! must succeed and every other must get Kafka's authorization error:
//! there are no unauthorized successes.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestBroker, Wire};
use courier::auth::scram::{client::ScramClient, salted_password};
use courier_consensus::security::{operation as op, pattern, permission, resource, ScramMechanism};
use courier_protocol::records::{encode_batch, NewRecord, ProducerIds};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type TlsWire = Wire<TlsStream<TcpStream>>;

const TAF: i16 = 29; // TOPIC_AUTHORIZATION_FAILED
const GAF: i16 = 30; // GROUP_AUTHORIZATION_FAILED
const CAF: i16 = 31; // CLUSTER_AUTHORIZATION_FAILED
const SASL_FAILED: i16 = 58;

/// The matrix's principals: allowed, and three ways of being refused.
const WHO: [&str; 4] = ["allowed", "nobody", "denied", "predeny"];

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}
fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

/// Certificates of a secured test broker: the node CA (server side), the
/// organizations' client CAs, every test user's client certificate.
struct Certs {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        courier::replication::identity::generate_dev(&dir, 0).unwrap();
        courier::dev_secure::issue_listener_cert(&dir).unwrap();
        courier::dev_secure::issue_client_certs(
            &dir,
            &[
                ("admin", "org-a"),
                ("allowed", "org-a"),
                ("nobody", "org-b"),
                ("denied", "org-b"),
                ("predeny", "org-b"),
            ],
        )
        .unwrap();
        Self { _tmp: tmp, dir }
    }

    fn settings(&self, extra: &[&str]) -> Vec<String> {
        let path = |f: &str| format!("{:?}", self.dir.join(f).display().to_string());
        let mut out = vec![
            "listeners=\"SASL_SSL://127.0.0.1:0,SSL://127.0.0.1:0\"".to_owned(),
            format!("ssl.keystore.location={}", path("listener.keystore.pem")),
            format!("ssl.truststore.location={}", path("client-cas.pem")),
            "ssl.client.auth=required".into(),
            "listener.name.sasl_ssl.ssl.client.auth=none".into(),
            "sasl.enabled.mechanisms=\"SCRAM-SHA-256,SCRAM-SHA-512,PLAIN\"".into(),
            "ssl.principal.mapping.rules=\"RULE:^CN=([^,]+).*$/$1/,DEFAULT\"".into(),
            "authorizer.class.name=courier".into(),
            "super.users=\"User:admin\"".into(),
            "auto.create.topics.enable=false".into(),
        ];
        out.extend(extra.iter().map(|e| e.to_string()));
        out
    }

    fn user(&self, who: &str) -> (PathBuf, PathBuf) {
        let users = self.dir.join("users");
        (users.join(format!("{who}.pem")), users.join(format!("{who}.key")))
    }
}

fn tls_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    };
    Arc::new(config)
}

async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

fn addr_of(broker: &TestBroker, listener: &str) -> SocketAddr {
    broker
        .running
        .as_ref()
        .unwrap()
        .listeners
        .iter()
        .find(|(n, _)| n == listener)
        .map(|(_, a)| *a)
        .unwrap()
}

/// A SCRAM exchange on `wire`; `Err` carries the SaslAuthenticate error.
async fn scram_login(wire: &mut TlsWire, m: ScramMechanism, user: &str, password: &str) -> Result<(), i16> {
    let ResponseKind::SaslHandshake(h) = wire
        .call(
            ApiKey::SaslHandshake,
            1,
            &RequestKind::SaslHandshake(SaslHandshakeRequest::default().with_mechanism(s(m.name()))),
        )
        .await
    else {
        panic!("not a handshake response")
    };
    assert_eq!(h.error_code, 0, "handshake for {}", m.name());
    let (client, first) = ScramClient::first(m, user, password, "rOprNGfwEbeRWgbNEkqO");
    let auth = |bytes: String| {
        RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)))
    };
    let ResponseKind::SaslAuthenticate(r) = wire.call(ApiKey::SaslAuthenticate, 2, &auth(first)).await else {
        panic!()
    };
    if r.error_code != 0 {
        return Err(r.error_code);
    }
    let server_first = String::from_utf8(r.auth_bytes.to_vec()).unwrap();
    let (client_final, server_signature) = client.finish(&server_first).unwrap();
    let ResponseKind::SaslAuthenticate(r) = wire.call(ApiKey::SaslAuthenticate, 2, &auth(client_final)).await else {
        panic!()
    };
    if r.error_code != 0 {
        return Err(r.error_code);
    }
    assert_eq!(
        r.auth_bytes,
        Bytes::from(server_signature),
        "the server proves it knows the credential"
    );
    Ok(())
}

fn password(who: &str) -> String {
    format!("{who}-pw")
}

/// A connection as `who`: over SASL_SSL with SCRAM-SHA-512, or over SSL
/// with `who`'s client certificate.
async fn connect_as(broker: &TestBroker, certs: &Certs, who: &str, sasl: bool) -> TlsWire {
    let ca = certs.dir.join("ca.pem");
    if sasl {
        let stream = tls_connect(addr_of(broker, "SASL_SSL"), tls_config(&ca, None))
            .await
            .unwrap();
        let mut w = Wire::over(stream);
        scram_login(&mut w, ScramMechanism::Sha512, who, &password(who))
            .await
            .unwrap_or_else(|e| panic!("{who} logs in: error {e}"));
        w
    } else {
        let (cert, key) = certs.user(who);
        let stream = tls_connect(addr_of(broker, "SSL"), tls_config(&ca, Some((&cert, &key))))
            .await
            .unwrap();
        Wire::over(stream)
    }
}

/// Sets a user's SCRAM-SHA-512 password through AlterUserScramCredentials.
async fn set_password(admin: &mut TlsWire, user: &str, pw: &str) -> i16 {
    let m = ScramMechanism::Sha512;
    let salt = format!("salt-of-{user}");
    let salted = salted_password(m, pw.as_bytes(), salt.as_bytes(), 4096);
    let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
        alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
            .with_name(s(user))
            .with_mechanism(m.code())
            .with_iterations(4096)
            .with_salt(Bytes::from(salt))
            .with_salted_password(Bytes::from(salted)),
    ]);
    let ResponseKind::AlterUserScramCredentials(r) = admin
        .call(
            ApiKey::AlterUserScramCredentials,
            0,
            &RequestKind::AlterUserScramCredentials(req),
        )
        .await
    else {
        panic!()
    };
    r.results[0].error_code
}

fn binding(rt: i8, name: &str, pt: i8, who: &str, operation: i8, perm: i8) -> create_acls_request::AclCreation {
    create_acls_request::AclCreation::default()
        .with_resource_type(rt)
        .with_resource_name(s(name))
        .with_resource_pattern_type(pt)
        .with_principal(s(&format!("User:{who}")))
        .with_host(s("*"))
        .with_operation(operation)
        .with_permission_type(perm)
}

/// The matrix's ACLs. `allowed` by prefixed topic and literal group
/// bindings; `denied` has Allow All and Deny All on the same literal
/// names; `predeny` has Allow All on its names and a prefixed Deny over
/// them; `nobody` has nothing.
fn matrix_acls() -> Vec<create_acls_request::AclCreation> {
    let (allow, deny) = (permission::ALLOW, permission::DENY);
    let mut out = Vec::new();
    for o in [
        op::READ,
        op::WRITE,
        op::CREATE,
        op::DELETE,
        op::ALTER,
        op::DESCRIBE_CONFIGS,
        op::ALTER_CONFIGS,
    ] {
        out.push(binding(
            resource::TOPIC,
            "t-allowed",
            pattern::PREFIXED,
            "allowed",
            o,
            allow,
        ));
    }
    for o in [op::READ, op::DELETE] {
        out.push(binding(
            resource::GROUP,
            "g-allowed",
            pattern::LITERAL,
            "allowed",
            o,
            allow,
        ));
    }
    for o in [op::DESCRIBE, op::ALTER, op::DESCRIBE_CONFIGS, op::IDEMPOTENT_WRITE] {
        out.push(binding(
            resource::CLUSTER,
            "kafka-cluster",
            pattern::LITERAL,
            "allowed",
            o,
            allow,
        ));
    }
    for (rt, name) in [
        (resource::TOPIC, "t-denied"),
        (resource::TOPIC, "t-denied-new"),
        (resource::GROUP, "g-denied"),
        (resource::CLUSTER, "kafka-cluster"),
    ] {
        out.push(binding(rt, name, pattern::LITERAL, "denied", op::ALL, allow));
        out.push(binding(rt, name, pattern::LITERAL, "denied", op::ALL, deny));
    }
    for (rt, name) in [
        (resource::TOPIC, "t-predeny"),
        (resource::TOPIC, "t-predeny-new"),
        (resource::GROUP, "g-predeny"),
    ] {
        out.push(binding(rt, name, pattern::LITERAL, "predeny", op::ALL, allow));
    }
    out.push(binding(
        resource::TOPIC,
        "t-pre",
        pattern::PREFIXED,
        "predeny",
        op::ALL,
        deny,
    ));
    out.push(binding(
        resource::GROUP,
        "g-pre",
        pattern::PREFIXED,
        "predeny",
        op::ALL,
        deny,
    ));
    out
}

fn one_record(value: &str) -> Bytes {
    encode_batch(
        1_700_000_000_000,
        ProducerIds::NONE,
        &[NewRecord {
            key: Some(b"k"),
            value: Some(value.as_bytes()),
            ..Default::default()
        }],
    )
}

fn produce(topic: &str) -> RequestKind {
    produce_value(topic, "v")
}

/// A produce (acks=all) of one record holding `value` to partition 0.
fn produce_value(topic: &str, value: &str) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(tn(topic))
                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(one_record(value)))])]),
    )
}

/// An ApiVersions call that must be answered.
async fn api_versions<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(w: &mut Wire<S>) {
    let ResponseKind::ApiVersions(_) = w
        .call(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await
    else {
        panic!("ApiVersions answered with another response")
    };
}

/// Creates the matrix's topics (one record each) and ACLs, and the
/// users' passwords, as the super user.
async fn set_up_matrix(admin: &mut TlsWire) {
    for who in WHO {
        assert_eq!(set_password(admin, who, &password(who)).await, 0);
        let t = format!("t-{who}");
        let req = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(tn(&t))
                .with_num_partitions(1)
                .with_replication_factor(-1),
        ]));
        let ResponseKind::CreateTopics(r) = admin.call(ApiKey::CreateTopics, 7, &req).await else {
            panic!()
        };
        assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
        let ResponseKind::Produce(r) = admin.call(ApiKey::Produce, 8, &produce(&t)).await else {
            panic!()
        };
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let req = RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(matrix_acls()));
    let ResponseKind::CreateAcls(r) = admin.call(ApiKey::CreateAcls, 3, &req).await else {
        panic!()
    };
    assert!(r.results.iter().all(|x| x.error_code == 0), "{:?}", r.results);
}

/// What one API call came to: its first error code (0: it succeeded).
struct Call {
    name: &'static str,
    code: i16,
    /// The code a refused principal must get.
    refusal: i16,
}

/// Sends every served API as the connection's principal `who` (its own
/// topic `t-<who>` and group `g-<who>`) and reports each outcome.
async fn run_matrix(w: &mut TlsWire, who: &str) -> Vec<Call> {
    let t = format!("t-{who}");
    let g = format!("g-{who}");
    let mut calls = Vec::new();
    macro_rules! call {
        ($api:expr, $v:expr, $body:expr, $variant:ident) => {{
            match w.call($api, $v, &$body).await {
                ResponseKind::$variant(r) => r,
                other => panic!("{:?}: unexpected {other:?}", $api),
            }
        }};
    }
    let mut push = |name, code, refusal| calls.push(Call { name, code, refusal });

    let r = call!(
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(tn(&t))),
        ]))),
        Metadata
    );
    push("Metadata", r.topics[0].error_code, TAF);
    let r = call!(
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
        Metadata
    );
    let listed = r
        .topics
        .iter()
        .any(|x| x.name.as_ref().map(|n| n.as_str()) == Some(t.as_str()));
    push("Metadata (all topics lists it)", if listed { 0 } else { TAF }, TAF);

    let r = call!(ApiKey::Produce, 8, produce(&t), Produce);
    push("Produce", r.responses[0].partition_responses[0].error_code, TAF);

    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(tn(&t))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r = call!(ApiKey::Fetch, 12, RequestKind::Fetch(fetch), Fetch);
    let p = &r.responses[0].partitions[0];
    let fetched = p.error_code == 0 && p.records.as_ref().is_some_and(|b| !b.is_empty());
    push("Fetch", if fetched { 0 } else { p.error_code.max(1) }, TAF);

    let lo = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(tn(&t))
            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let r = call!(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(lo), ListOffsets);
    push("ListOffsets", r.topics[0].partitions[0].error_code, TAF);

    let ofle = OffsetForLeaderEpochRequest::default().with_topics(vec![
        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(tn(&t))
            .with_partitions(vec![
                offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_leader_epoch(0),
            ]),
    ]);
    let r = call!(
        ApiKey::OffsetForLeaderEpoch,
        4,
        RequestKind::OffsetForLeaderEpoch(ofle),
        OffsetForLeaderEpoch
    );
    push("OffsetForLeaderEpoch", r.topics[0].partitions[0].error_code, TAF);

    let r = call!(
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        ),
        InitProducerId
    );
    push("InitProducerId", r.error_code, CAF);

    let r = call!(
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s(&g))),
        FindCoordinator
    );
    push("FindCoordinator", r.error_code, GAF);

    let protocol = join_group_request::JoinGroupRequestProtocol::default()
        .with_name(s("range"))
        .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    let r = call!(
        ApiKey::JoinGroup,
        3,
        RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&g)))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![protocol])
        ),
        JoinGroup
    );
    push("JoinGroup", r.error_code, GAF);
    let (member, generation) = (r.member_id.clone(), r.generation_id);

    let r = call!(
        ApiKey::SyncGroup,
        3,
        RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s(&g)))
                .with_generation_id(generation)
                .with_member_id(member.clone())
                .with_assignments(vec![sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(member.clone())
                    .with_assignment(Bytes::new())])
        ),
        SyncGroup
    );
    push("SyncGroup", r.error_code, GAF);

    let r = call!(
        ApiKey::Heartbeat,
        4,
        RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s(&g)))
                .with_generation_id(generation)
                .with_member_id(member.clone())
        ),
        Heartbeat
    );
    push("Heartbeat", r.error_code, GAF);

    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(&g)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member.clone())
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(tn(&t))
            .with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1),
            ])]);
    let r = call!(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(commit), OffsetCommit);
    push("OffsetCommit", r.topics[0].partitions[0].error_code, GAF);

    let fetch_offsets = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(&g)))
        .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(tn(&t))
            .with_partition_indexes(vec![0])]));
    let r = call!(
        ApiKey::OffsetFetch,
        7,
        RequestKind::OffsetFetch(fetch_offsets),
        OffsetFetch
    );
    let committed = r.error_code == 0 && r.topics.first().is_some_and(|x| x.partitions[0].committed_offset == 1);
    push("OffsetFetch", if committed { 0 } else { r.error_code.max(1) }, GAF);

    let r = call!(
        ApiKey::DescribeGroups,
        5,
        RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![GroupId(s(&g))])),
        DescribeGroups
    );
    push("DescribeGroups", r.groups[0].error_code, GAF);

    let r = call!(
        ApiKey::ListGroups,
        4,
        RequestKind::ListGroups(ListGroupsRequest::default()),
        ListGroups
    );
    let sees = r.groups.iter().any(|x| x.group_id.as_str() == g);
    push("ListGroups (lists it)", if sees { 0 } else { GAF }, GAF);

    let r = call!(
        ApiKey::LeaveGroup,
        3,
        RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s(&g)))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(member.clone())
                ])
        ),
        LeaveGroup
    );
    push(
        "LeaveGroup",
        r.error_code.max(r.members.first().map_or(0, |m| m.error_code)),
        GAF,
    );

    let r = call!(
        ApiKey::DeleteGroups,
        2,
        RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(&g))])),
        DeleteGroups
    );
    push("DeleteGroups", r.results[0].error_code, GAF);

    let new_topic = format!("{t}-new");
    let r = call!(
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(tn(&new_topic))
                .with_num_partitions(1)
                .with_replication_factor(-1),
        ])),
        CreateTopics
    );
    push("CreateTopics", r.topics[0].error_code, TAF);

    let r = call!(
        ApiKey::CreatePartitions,
        3,
        RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_timeout_ms(5000).with_topics(
            vec![create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(tn(&t))
                    .with_count(2)
                    .with_assignments(None),]
        )),
        CreatePartitions
    );
    push("CreatePartitions", r.results[0].error_code, TAF);

    let r = call!(
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(&t)),
        ])),
        DescribeConfigs
    );
    push("DescribeConfigs (topic)", r.results[0].error_code, TAF);

    let r = call!(
        ApiKey::IncrementalAlterConfigs,
        1,
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(&t))
                .with_configs(vec![incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(s("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(s("3600000")))]),
        ])),
        IncrementalAlterConfigs
    );
    push("IncrementalAlterConfigs", r.responses[0].error_code, TAF);

    let r = call!(
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s("")),
        ])),
        DescribeConfigs
    );
    push("DescribeConfigs (broker)", r.results[0].error_code, CAF);

    let r = call!(
        ApiKey::DescribeCluster,
        1,
        RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(1)),
        DescribeCluster
    );
    push("DescribeCluster", r.error_code, CAF);

    let r = call!(
        ApiKey::DescribeAcls,
        3,
        RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_name_filter(None)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_resource_type_filter(resource::ANY)
                .with_pattern_type_filter(pattern::ANY)
                .with_operation(op::ANY)
                .with_permission_type(permission::ANY)
        ),
        DescribeAcls
    );
    push("DescribeAcls", r.error_code, CAF);

    let scratch = format!("scratch-{who}");
    let r = call!(
        ApiKey::CreateAcls,
        3,
        RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![binding(
            resource::TOPIC,
            &scratch,
            pattern::LITERAL,
            "someone",
            op::READ,
            permission::ALLOW
        )])),
        CreateAcls
    );
    push("CreateAcls", r.results[0].error_code, CAF);

    let r = call!(
        ApiKey::DeleteAcls,
        3,
        RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
            delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(resource::TOPIC)
                .with_resource_name_filter(Some(s(&scratch)))
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_pattern_type_filter(pattern::LITERAL)
                .with_operation(op::ANY)
                .with_permission_type(permission::ANY),
        ])),
        DeleteAcls
    );
    let deleted = r.filter_results[0].error_code == 0 && r.filter_results[0].matching_acls.len() == 1;
    push(
        "DeleteAcls",
        if deleted {
            0
        } else {
            r.filter_results[0].error_code.max(1)
        },
        CAF,
    );

    let r = call!(
        ApiKey::DescribeUserScramCredentials,
        0,
        RequestKind::DescribeUserScramCredentials(DescribeUserScramCredentialsRequest::default()),
        DescribeUserScramCredentials
    );
    push("DescribeUserScramCredentials", r.error_code, CAF);

    let code = set_password(w, &scratch, "pw").await;
    push("AlterUserScramCredentials", code, CAF);

    let r = call!(
        ApiKey::DeleteTopics,
        6,
        RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(tn(&new_topic))),
        ])),
        DeleteTopics
    );
    push("DeleteTopics", r.responses[0].error_code, TAF);
    calls
}

fn check_matrix(listener: &str, who: &str, calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| {
            let want = if who == "allowed" { 0 } else { c.refusal };
            (c.code != want).then(|| format!("{listener} {who} {}: got {}, want {want}", c.name, c.code))
        })
        .collect()
}

async fn secure_broker(certs: &Certs, extra: &[&str]) -> TestBroker {
    let settings = certs.settings(extra);
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestBroker::start(&refs).await
}

/// Gives `admin` its password directly through `node` (the first
/// credential of a new deployment has nobody to set it over the wire).
async fn bootstrap_admin(node: &courier::RunningBroker) {
    let credential = courier::auth::scram::new_credential(ScramMechanism::Sha512, &password("admin"), 4096).unwrap();
    node.broker
        .security
        .change(courier_consensus::security::SecurityCommand::SetScram {
            user: "admin".into(),
            mechanism: ScramMechanism::Sha512,
            credential: Some(credential),
        })
        .await
        .unwrap();
}

/// A secured broker with the matrix's topics, users and ACLs, and its
/// super user logged in.
async fn matrix_broker() -> (Certs, TestBroker, TlsWire) {
    let certs = Certs::new();
    let broker = secure_broker(&certs, &[]).await;
    bootstrap_admin(broker.running.as_ref().unwrap()).await;
    let mut admin = connect_as(&broker, &certs, "admin", true).await;
    set_up_matrix(&mut admin).await;
    (certs, broker, admin)
}

/// The super user, logged in over SASL_SSL at `addr`.
async fn admin_at(certs: &Certs, addr: SocketAddr) -> TlsWire {
    let stream = tls_connect(addr, tls_config(&certs.dir.join("ca.pem"), None))
        .await
        .unwrap();
    let mut admin = Wire::over(stream);
    scram_login(&mut admin, ScramMechanism::Sha512, "admin", &password("admin"))
        .await
        .unwrap();
    admin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_allows_exactly_what_the_acls_grant_over_sasl_ssl_and_mtls() {
    let (certs, broker, mut admin) = matrix_broker().await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for sasl in [true, false] {
        let listener = if sasl { "SASL_SSL" } else { "SSL" };
        for who in WHO {
            // Each round runs against fresh topics: the allowed principal
            // changed its own in the previous round.
            let mut w = connect_as(&broker, &certs, who, sasl).await;
            let calls = run_matrix(&mut w, who).await;
            checked += calls.len();
            failures.extend(check_matrix(listener, who, &calls));
        }
        // Undo what the allowed principal did (its topic grew, its extra
        // topic and scratch credential came and went) for the next round.
        let req = RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(tn("t-allowed"))),
        ]));
        admin.call(ApiKey::DeleteTopics, 6, &req).await;
        let req = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(tn("t-allowed"))
                .with_num_partitions(1)
                .with_replication_factor(-1),
        ]));
        admin.call(ApiKey::CreateTopics, 7, &req).await;
        admin.call(ApiKey::Produce, 8, &produce("t-allowed")).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 2 * 4 * 29, "every API, four principals, two listeners");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_certificates_and_stalled_handshakes_are_refused_while_others_are_served() {
    let certs = Certs::new();
    let broker = secure_broker(&certs, &["authentication.timeout.ms=1500"]).await;
    bootstrap_admin(broker.running.as_ref().unwrap()).await;
    let ca = certs.dir.join("ca.pem");
    let sasl_addr = addr_of(&broker, "SASL_SSL");
    let ssl_addr = addr_of(&broker, "SSL");
    // A stalled TLS handshake (TCP open, nothing sent) and a stalled SASL
    // exchange hold nothing up, and are closed after the timeout.
    let mut stalled_tcp = TcpStream::connect(ssl_addr).await.unwrap();
    let stalled_tls = tls_connect(sasl_addr, tls_config(&ca, None)).await.unwrap();
    let started = Instant::now();
    let mut admin = connect_as(&broker, &certs, "admin", true).await;
    let ResponseKind::Metadata(_) = admin
        .call(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()))
        .await
    else {
        panic!()
    };
    assert!(started.elapsed() < Duration::from_secs(1), "others are served at once");
    assert_eq!(set_password(&mut admin, "alice", "right").await, 0);

    let sasl_attempt = |user: &'static str, pw: &'static str, m: ScramMechanism| {
        let ca = ca.clone();
        async move {
            let stream = tls_connect(sasl_addr, tls_config(&ca, None)).await.unwrap();
            let mut w = Wire::over(stream);
            let r = scram_login(&mut w, m, user, pw).await;
            (r, w)
        }
    };
    let (ok, _) = sasl_attempt("alice", "right", ScramMechanism::Sha512).await;
    assert_eq!(ok, Ok(()));
    for (user, pw) in [("alice", "wrong"), ("mallory", "right")] {
        let (r, mut w) = sasl_attempt(user, pw, ScramMechanism::Sha512).await;
        assert_eq!(r, Err(SASL_FAILED), "{user}/{pw}");
        assert!(w.is_closed().await, "a failed authentication closes the connection");
    }
    // alice has no SCRAM-SHA-256 credential.
    let (r, _) = sasl_attempt("alice", "right", ScramMechanism::Sha256).await;
    assert_eq!(r, Err(SASL_FAILED));

    // A tampered proof, and a client-final replayed into a new exchange.
    let m = ScramMechanism::Sha512;
    let auth = |bytes: Vec<u8>| {
        RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)))
    };
    let handshake = RequestKind::SaslHandshake(SaslHandshakeRequest::default().with_mechanism(s(m.name())));
    let mut first_final = None;
    for attempt in 0..3 {
        let stream = tls_connect(sasl_addr, tls_config(&ca, None)).await.unwrap();
        let mut w = Wire::over(stream);
        w.call(ApiKey::SaslHandshake, 1, &handshake).await;
        let (client, first) = ScramClient::first(m, "alice", "right", "fixed-client-nonce");
        let ResponseKind::SaslAuthenticate(r) = w.call(ApiKey::SaslAuthenticate, 2, &auth(first.into_bytes())).await
        else {
            panic!()
        };
        let (client_final, _) = client.finish(std::str::from_utf8(&r.auth_bytes).unwrap()).unwrap();
        let sent = match attempt {
            0 => {
                first_final = Some(client_final.clone());
                let mut b = client_final.into_bytes();
                let i = b.len() - 4;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                b
            }
            _ => first_final.clone().unwrap().into_bytes(),
        };
        let ResponseKind::SaslAuthenticate(r) = w.call(ApiKey::SaslAuthenticate, 2, &auth(sent)).await else {
            panic!()
        };
        assert_eq!(r.error_code, SASL_FAILED, "attempt {attempt}");
        assert!(w.is_closed().await);
    }

    // A request before authentication closes the connection.
    let stream = tls_connect(sasl_addr, tls_config(&ca, None)).await.unwrap();
    let mut w = Wire::over(stream);
    w.send(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()))
        .await;
    assert!(
        w.recv_frame().await.is_none(),
        "unauthenticated Metadata is not answered"
    );

    // A certificate from a CA the broker does not trust, and an expired one
    // from a trusted CA: the TLS handshake fails.
    let foreign = tempfile::tempdir().unwrap();
    courier::dev_secure::issue_client_certs(foreign.path(), &[("intruder", "org-x")]).unwrap();
    let users = foreign.path().join("users");
    let expired = expired_cert(&certs.dir);
    for (cert, key) in [
        (users.join("intruder.pem"), users.join("intruder.key")),
        (expired.0.clone(), expired.1.clone()),
    ] {
        let refused = match tls_connect(ssl_addr, tls_config(&ca, Some((&cert, &key)))).await {
            Err(_) => true,
            // TLS 1.3: the client learns of the refusal at its first read.
            Ok(stream) => {
                let mut w = Wire::over(stream);
                w.send(
                    ApiKey::ApiVersions,
                    3,
                    &RequestKind::ApiVersions(ApiVersionsRequest::default()),
                )
                .await;
                w.recv_frame().await.is_none()
            }
        };
        assert!(refused, "{} must be refused", cert.display());
    }
    // No client certificate on the SSL listener (required there).
    let refused = match tls_connect(ssl_addr, tls_config(&ca, None)).await {
        Err(_) => true,
        Ok(stream) => {
            let mut w = Wire::over(stream);
            w.send(
                ApiKey::ApiVersions,
                3,
                &RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
            .await;
            w.recv_frame().await.is_none()
        }
    };
    assert!(refused, "no client certificate");

    // The stalled ones were closed by the authentication timeout.
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stalled_tcp, &mut b),
    )
    .await
    .expect("the stalled TLS handshake is closed within the timeout");
    assert!(matches!(closed, Ok(0) | Err(_)));
    let mut stalled = Wire::over(stalled_tls);
    assert!(stalled.is_closed().await, "the stalled SASL exchange is closed");
    // The admin, authenticated before, is still served.
    let ResponseKind::Metadata(_) = admin
        .call(ApiKey::Metadata, 12, &RequestKind::Metadata(MetadataRequest::default()))
        .await
    else {
        panic!()
    };
    let metrics = reqwest_metrics(broker.admin_addr()).await;
    assert!(
        metrics.contains("courier_authentications_total{mechanism=\"sasl\",result=\"failed\"}"),
        "failures are counted"
    );
}

/// A client certificate of org-a's CA whose validity ended yesterday.
fn expired_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("org-a-ca.key")).unwrap()).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(rcgen::DnType::OrganizationName, "org-a");
    ca.distinguished_name.push(rcgen::DnType::CommonName, "org-a client CA");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "allowed");
    let now = std::time::SystemTime::now();
    p.not_before = (now - Duration::from_secs(10 * 86_400)).into();
    p.not_after = (now - Duration::from_secs(86_400)).into();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (c, k) = (dir.join("expired.pem"), dir.join("expired.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The admin endpoint's `/metrics` text.
async fn reqwest_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_and_credentials_survive_a_restart() {
    let certs = Certs::new();
    let mut broker = secure_broker(&certs, &[]).await;
    bootstrap_admin(broker.running.as_ref().unwrap()).await;
    let mut admin = connect_as(&broker, &certs, "admin", true).await;
    set_up_matrix(&mut admin).await;
    drop(admin);
    let settings = certs.settings(&[]);
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    broker.restart(&refs).await;
    // The allowed user's password and ACLs are still there; nobody's
    // password too, and still no ACL.
    let mut allowed = connect_as(&broker, &certs, "allowed", true).await;
    let ResponseKind::Produce(r) = allowed.call(ApiKey::Produce, 8, &produce("t-allowed")).await else {
        panic!()
    };
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let mut nobody = connect_as(&broker, &certs, "nobody", true).await;
    let ResponseKind::Produce(r) = nobody.call(ApiKey::Produce, 8, &produce("t-nobody")).await else {
        panic!()
    };
    assert_eq!(r.responses[0].partition_responses[0].error_code, TAF);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_must_authenticate_again_before_it_expires() {
    let certs = Certs::new();
    let broker = secure_broker(&certs, &["connections.max.reauth.ms=1500"]).await;
    bootstrap_admin(broker.running.as_ref().unwrap()).await;
    let mut w = connect_as(&broker, &certs, "admin", true).await;
    let meta = RequestKind::Metadata(MetadataRequest::default());
    w.call(ApiKey::Metadata, 12, &meta).await;
    // Re-authenticating in time keeps the connection (same principal).
    tokio::time::sleep(Duration::from_millis(800)).await;
    scram_login(&mut w, ScramMechanism::Sha512, "admin", &password("admin"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    w.call(ApiKey::Metadata, 12, &meta).await;
    // Past the session's lifetime, the next request closes it.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    w.send(ApiKey::Metadata, 12, &meta).await;
    assert!(w.recv_frame().await.is_none(), "an expired session is closed");
}

/// librdkafka (the rdkafka crate) produces over SASL_SSL and consumes and
/// commits over SSL with only its standard security settings; the receipt
/// on the ledger names the consumer's principal and organization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produces_over_sasl_ssl_and_consumes_over_mtls() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (certs, broker, _admin) = matrix_broker().await;
    let ca = certs.dir.join("ca.pem").display().to_string();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr_of(&broker, "SASL_SSL").to_string())
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "allowed")
        .set("sasl.password", password("allowed"))
        .set("ssl.ca.location", &ca)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::to("t-allowed").key("k").payload(&format!("m{i}")),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let (cert, key) = certs.user("allowed");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr_of(&broker, "SSL").to_string())
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", &ca)
        .set("ssl.certificate.location", cert.display().to_string())
        .set("ssl.key.location", key.display().to_string())
        .set("group.id", "g-allowed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["t-allowed"]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 11 && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            seen.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    // The matrix set-up's record, then the ten.
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert!(seen[1..].iter().enumerate().all(|(i, v)| v == &format!("m{i}")));
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(consumer);
    // Each record's block names its sender: the SASL principal, and the
    // organization the node gives it (none was recorded for it).
    let node = &broker.running.as_ref().unwrap().broker;
    let pk = node.topics.get("t-allowed").unwrap().partition_key(0);
    let senders: Vec<(i64, String, String)> = node
        .store
        .read_from(&pk, 0, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|b| {
            (b.base_offset..b.next_offset).map(move |o| {
                let s = b.sender_of(o).expect("every record has a sender");
                (o, s.principal.clone(), s.organization.clone())
            })
        })
        .collect();
    let org = node.config.organization.clone();
    assert_eq!(senders.len(), 11);
    assert!(
        senders[1..].iter().all(|(_, p, o)| p == "User:allowed" && o == &org),
        "{senders:?}"
    );
    let dir = broker.dir.clone();
    let mut broker = broker;
    broker.stop().await;
    let receipts = courier::verify::receipts(&dir, Some("g-allowed"), None).unwrap();
    let last = receipts.last().expect("a receipt on the ledger");
    assert_eq!(
        (last.receipt.principal.as_str(), last.receipt.organization.as_str()),
        ("User:allowed", "org-a")
    );
    assert_eq!(last.receipt.offset, 11);
}

/// How long an ACL or credential change made on one node may take to hold
/// on every other node: the time for the Raft log entry to be committed and
/// applied there (milliseconds in practice; bounded by the heartbeat and a
/// loaded 2-core machine).
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

/// Waits until `f` holds, at most `bound`; returns how long it took.
async fn within<F, Fut>(bound: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < bound {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Whether `user` logs in on node `addr` and may produce to `topic` there
/// (the topic's partition may be another cluster's: the node forwards).
async fn may_produce(certs: &Certs, addr: SocketAddr, user: &str, pw: &str, topic: &str) -> bool {
    let Ok(stream) = tls_connect(addr, tls_config(&certs.dir.join("ca.pem"), None)).await else {
        return false;
    };
    let mut w = Wire::over(stream);
    if scram_login(&mut w, ScramMechanism::Sha512, user, pw).await.is_err() {
        return false;
    }
    let ResponseKind::Produce(r) = w.call(ApiKey::Produce, 8, &produce(topic)).await else {
        return false;
    };
    r.responses[0].partition_responses[0].error_code == 0
}

fn sasl_addr(node: &courier::RunningBroker) -> SocketAddr {
    node.listeners
        .iter()
        .find(|(n, _)| n == "SASL_SSL")
        .map(|(_, a)| *a)
        .unwrap()
}

async fn changes_reach_every_node(nodes: usize, cluster_size: usize) {
    let certs = Certs::new();
    let tmp = tempfile::tempdir().unwrap();
    let settings = certs.settings(&["pbft.view.change.timeout.ms=400", "admin.listener=\"\""]);
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let base = common::config(tmp.path(), &refs);
    let configs = courier::dev::multi_cluster_configs(&base, nodes, cluster_size, 0).unwrap();
    let mut running: Vec<Option<courier::RunningBroker>> = courier::dev::start_cluster(configs.clone())
        .await
        .unwrap()
        .into_iter()
        .map(Some)
        .collect();
    let node = |r: &[Option<courier::RunningBroker>], i: usize| sasl_addr(r[i].as_ref().unwrap());
    bootstrap_admin(running[0].as_ref().unwrap()).await;
    let mut admin = admin_at(&certs, node(&running, 0)).await;
    // A topic with a partition on every cluster.
    let req = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(tn("shared"))
            .with_num_partitions((nodes / 4) as i32)
            .with_replication_factor(-1),
    ]));
    let ResponseKind::CreateTopics(r) = admin.call(ApiKey::CreateTopics, 7, &req).await else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    // A credential and an ACL set on node 0 hold on every node.
    assert_eq!(set_password(&mut admin, "alice", "alice-pw").await, 0);
    let req = RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![binding(
        resource::TOPIC,
        "shared",
        pattern::LITERAL,
        "alice",
        op::WRITE,
        permission::ALLOW,
    )]));
    admin.call(ApiKey::CreateAcls, 3, &req).await;
    let mut slowest = Duration::ZERO;
    for i in 0..nodes {
        let addr = node(&running, i);
        let took = within(PROPAGATION_BOUND, || {
            may_produce(&certs, addr, "alice", "alice-pw", "shared")
        })
        .await
        .unwrap_or_else(|| panic!("node {i}: alice may not produce {PROPAGATION_BOUND:?} after the change"));
        slowest = slowest.max(took);
    }
    // Removing the ACL through the last node takes effect on node 0.
    let last = nodes - 1;
    let mut admin_last = admin_at(&certs, node(&running, last)).await;
    let req = RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
        delete_acls_request::DeleteAclsFilter::default()
            .with_resource_type_filter(resource::TOPIC)
            .with_resource_name_filter(Some(s("shared")))
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_pattern_type_filter(pattern::ANY)
            .with_operation(op::ANY)
            .with_permission_type(permission::ANY),
    ]));
    let ResponseKind::DeleteAcls(r) = admin_last.call(ApiKey::DeleteAcls, 3, &req).await else {
        panic!()
    };
    assert_eq!(r.filter_results[0].matching_acls.len(), 1);
    let addr0 = node(&running, 0);
    let took = within(PROPAGATION_BOUND, || async {
        !may_produce(&certs, addr0, "alice", "alice-pw", "shared").await
    })
    .await
    .expect("node 0 refuses alice within the bound after the ACL is deleted on another node");
    slowest = slowest.max(took);
    eprintln!("{nodes} nodes: slowest change reached a node after {slowest:?}");
    // A restarted node keeps the credential and the (now absent) ACL.
    let admin_req = RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![binding(
        resource::TOPIC,
        "shared",
        pattern::LITERAL,
        "alice",
        op::WRITE,
        permission::ALLOW,
    )]));
    admin_last.call(ApiKey::CreateAcls, 3, &admin_req).await;
    let victim = 1;
    running[victim].take().unwrap().stop().await;
    running[victim] = Some(
        courier::start(configs[victim].clone())
            .await
            .unwrap_or_else(|e| panic!("node {victim} restarts: {e:?}")),
    );
    let addr = node(&running, victim);
    within(Duration::from_secs(30), || {
        may_produce(&certs, addr, "alice", "alice-pw", "shared")
    })
    .await
    .expect("a restarted node keeps credentials and ACLs");
    // The partition's blocks, ordered by its replica cluster (with 8 nodes,
    // one of the two), name alice as the sender of every record.
    let blocks = running
        .iter()
        .flatten()
        .map(|n| {
            let pk = n.broker.topics.get("shared").unwrap().partition_key(0);
            n.broker.store.read_from(&pk, 0, usize::MAX).unwrap()
        })
        .max_by_key(|blocks| blocks.len())
        .unwrap();
    let records: i64 = blocks.iter().map(|b| b.next_offset - b.base_offset).sum();
    assert!(records > 0, "a member of the partition's cluster holds its records");
    for b in &blocks {
        for o in b.base_offset..b.next_offset {
            assert_eq!(
                b.sender_of(o).map(|s| s.principal.as_str()),
                Some("User:alice"),
                "offset {o}"
            );
        }
    }
    for n in running.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_and_credential_changes_reach_all_four_nodes_within_the_bound() {
    changes_reach_every_node(4, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_and_credential_changes_reach_eight_nodes_in_two_clusters_within_the_bound() {
    changes_reach_every_node(8, 4).await;
}

/// `max.connections.per.ip` closes the connection over the limit at once;
/// an address with an override, and connections freed later, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited_with_overrides() {
    let broker = TestBroker::start(&[
        "max.connections.per.ip=2",
        "max.connections.per.ip.overrides=\"127.0.0.2:3\"",
    ])
    .await;
    let api_versions = RequestKind::ApiVersions(ApiVersionsRequest::default());
    let mut first = Wire::connect(broker.addr()).await;
    let mut second = Wire::connect(broker.addr()).await;
    first.call(ApiKey::ApiVersions, 3, &api_versions).await;
    second.call(ApiKey::ApiVersions, 3, &api_versions).await;
    let mut third = Wire::connect(broker.addr()).await;
    assert!(third.is_closed().await, "a third connection from 127.0.0.1 is refused");
    // 127.0.0.2 may open three.
    let mut others = Vec::new();
    for _ in 0..3 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut w = Wire::over(socket.connect(broker.addr()).await.unwrap());
        w.call(ApiKey::ApiVersions, 3, &api_versions).await;
        others.push(w);
    }
    drop(first);
    // The freed slot is taken again (the close is seen by the broker shortly).
    let again = within(Duration::from_secs(5), || async {
        let mut w = Wire::connect(broker.addr()).await;
        w.send(ApiKey::ApiVersions, 3, &api_versions).await;
        w.recv_frame().await.is_some()
    })
    .await;
    assert!(again.is_some(), "a freed slot is given to the next connection");
}

/// A client that sends requests and never reads the responses loses its
/// connection after `connections.write.timeout.ms`, and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let broker = TestBroker::start(&["connections.write.timeout.ms=1000"]).await;
    let mut w = Wire::connect(broker.addr()).await;
    let req = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(tn("slow-reader"))
            .with_num_partitions(1)
            .with_replication_factor(-1),
    ]));
    w.call(ApiKey::CreateTopics, 7, &req).await;
    let big = "x".repeat(900 * 1024);
    for _ in 0..8 {
        let req = produce_value("slow-reader", &big);
        let ResponseKind::Produce(r) = w.call(ApiKey::Produce, 8, &req).await else {
            panic!()
        };
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    // 40 fetches of the whole ~7 MiB topic: far more than socket buffers hold.
    let fetch = RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(16 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(tn("slow-reader"))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(16 << 20)])]),
    );
    let mut slow = Wire::connect(broker.addr()).await;
    for _ in 0..40 {
        slow.send(ApiKey::Fetch, 12, &fetch).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Another client is served meanwhile.
    api_versions(&mut w).await;
    // Reading now yields what was buffered, then the end: nowhere near all
    // 40 responses.
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut slow.stream, &mut buf),
        )
        .await
        .expect("the connection ends")
        .unwrap_or(0);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(
        total < 40 * 7 * 900 * 1024,
        "read {total} bytes: the broker kept writing"
    );
    let metrics = reqwest_metrics(broker.admin_addr()).await;
    assert!(metrics.contains("reason=\"write_timeout\""), "the close is counted");
}

const MIB: u64 = 1 << 20;

/// Clients that announce a frame and stall hold `queued.max.request.bytes`
/// for at most `connections.read.timeout.ms`: while they hold all of it
/// others wait (the bound holds), then the stalled connections close and
/// the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_hold_request_memory_only_until_the_read_timeout() {
    let broker = TestBroker::start(&[
        "socket.request.max.bytes=1048576",
        "message.max.bytes=1048576",
        "queued.max.request.bytes=2097152",
        "connections.read.timeout.ms=1500",
    ])
    .await;
    let memory = broker.running.as_ref().unwrap().broker.request_memory.clone();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(broker.addr()).await.unwrap();
        let mut head = (MIB as i32).to_be_bytes().to_vec();
        head.extend_from_slice(&[0u8; 100]);
        tokio::io::AsyncWriteExt::write_all(&mut s, &head).await.unwrap();
        stalled.push(Wire::over(s));
    }
    let full = within(Duration::from_secs(5), || async { memory.used() == 2 * MIB }).await;
    assert!(
        full.is_some(),
        "the two announced frames are reserved ({} bytes)",
        memory.used()
    );
    let started = Instant::now();
    let mut other = Wire::connect(broker.addr()).await;
    let api_versions = RequestKind::ApiVersions(ApiVersionsRequest::default());
    other.send(ApiKey::ApiVersions, 3, &api_versions).await;
    // The pool is full: nothing past it is read, not even a small request.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other.recv_frame())
            .await
            .is_err(),
        "a request past the bound waits"
    );
    assert!(other.recv(ApiKey::ApiVersions, 3).await.is_some(), "then it is served");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "served {waited:?} after the stalls began, past the 1.5 s read timeout"
    );
    for mut s in stalled {
        assert!(s.is_closed().await, "a stalled frame closes its connection");
    }
    let freed = within(Duration::from_secs(5), || async { memory.used() == 0 }).await;
    assert!(freed.is_some(), "{} bytes still reserved", memory.used());
    let metrics = reqwest_metrics(broker.admin_addr()).await;
    assert!(metrics.contains("reason=\"read_timeout\""), "the closes are counted");
}

/// A client that pipelines big produce requests as fast as it can takes no
/// more than the pool, and another client's requests are served while it
/// is still at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_client_does_not_starve_another_or_pass_the_bound() {
    const LIMIT: u64 = 3 * MIB;
    const GREEDY: usize = 30;
    let broker = TestBroker::start(&[
        "socket.request.max.bytes=1048576",
        "message.max.bytes=1048576",
        "queued.max.request.bytes=3145728",
    ])
    .await;
    let memory = broker.running.as_ref().unwrap().broker.request_memory.clone();
    let mut admin = Wire::connect(broker.addr()).await;
    let create = RequestKind::CreateTopics(
        CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
            ["greedy", "modest"]
                .map(|t| {
                    create_topics_request::CreatableTopic::default()
                        .with_name(tn(t))
                        .with_num_partitions(1)
                        .with_replication_factor(-1)
                })
                .to_vec(),
        ),
    );
    admin.call(ApiKey::CreateTopics, 7, &create).await;

    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (memory, peak, watching) = (memory.clone(), peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(memory.used(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let big = "g".repeat(900 * 1024);
    // The greedy client writes its requests from one task and reads the
    // answers in another, so it never waits for the broker between them.
    let (mut reader, mut writer) = TcpStream::connect(broker.addr()).await.unwrap().into_split();
    let request = produce_value("greedy", &big);
    let sender = tokio::spawn(async move {
        for id in 0..GREEDY {
            let frame = common::request_frame(ApiKey::Produce, 8, id as i32, &request);
            tokio::io::AsyncWriteExt::write_all(&mut writer, &frame).await.unwrap();
        }
        writer
    });
    let greedy_done = tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        for _ in 0..GREEDY {
            let frame = loop {
                if let Some(f) = courier_protocol::frame::decode_frame(&mut buf, 1 << 30).unwrap() {
                    break f;
                }
                let n = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::io::AsyncReadExt::read_buf(&mut reader, &mut buf),
                )
                .await
                .expect("greedy answered")
                .unwrap();
                assert!(n > 0, "the greedy connection closed");
            };
            let mut b = frame.freeze();
            ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(8)).unwrap();
            let ResponseKind::Produce(p) = common::decode_response(ApiKey::Produce, &mut b, 8) else {
                panic!()
            };
            assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
        }
        Instant::now()
    });
    // Let the greedy client fill its pipe first.
    let _ = within(Duration::from_secs(5), || async { memory.used() > 0 }).await;
    let mut modest = Wire::connect(broker.addr()).await;
    for i in 0..3 {
        let ResponseKind::Produce(p) = modest.call(ApiKey::Produce, 8, &produce_value("modest", "m")).await else {
            panic!()
        };
        assert_eq!(
            p.responses[0].partition_responses[0].error_code, 0,
            "modest request {i}"
        );
    }
    let modest_done = Instant::now();
    let _writer = sender.await.unwrap();
    let greedy_done = greedy_done.await.unwrap();
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(
        modest_done < greedy_done,
        "the modest client was served only after the greedy one was done"
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= LIMIT, "{peak} bytes reserved, past the {LIMIT}-byte bound");
    assert!(
        peak > MIB,
        "the greedy client had several requests in flight ({peak} bytes)"
    );
    assert_eq!(memory.used(), 0);
}

/// Before a client has authenticated, a SASL listener reads frames of at
/// most `sasl.server.max.receive.size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_client_may_not_send_big_frames() {
    let certs = Certs::new();
    let broker = secure_broker(&certs, &["sasl.server.max.receive.size=65536"]).await;
    let connect = || async {
        let stream = tls_connect(
            addr_of(&broker, "SASL_SSL"),
            tls_config(&certs.dir.join("ca.pem"), None),
        )
        .await
        .unwrap();
        Wire::over(stream)
    };
    let mut small = connect().await;
    api_versions(&mut small).await;
    let mut big = connect().await;
    big.send_raw_frame(&vec![0u8; 70_000]).await;
    assert!(
        big.is_closed().await,
        "a 70000-byte frame before authentication closes the connection"
    );
}

/// One GET over TLS to the admin endpoint: the status line's code.
async fn admin_tls_get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(addr, config).await.expect("TLS handshake");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Off loopback the admin endpoint must speak TLS; then every client
/// authenticates, with an administrator's client certificate or the bearer
/// token, and only `/metrics` stays open to loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_over_tls_needs_an_administrators_certificate_or_the_token() {
    let Err(e) = courier::BrokerConfig::load(None, &["admin.listener=0.0.0.0:9644".into()]) else {
        panic!("an admin endpoint on 0.0.0.0 without TLS must not be configured")
    };
    assert!(e.to_string().contains("admin.ssl.enabled"), "{e}");
    let Err(e) = courier::BrokerConfig::load(None, &["admin.ssl.enabled=true".into()]) else {
        panic!("an admin endpoint over TLS needs a certificate")
    };
    assert!(e.to_string().contains("ssl.keystore.location"), "{e}");

    let certs = Certs::new();
    let token = certs.dir.join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    let broker = secure_broker(
        &certs,
        &[
            "admin.ssl.enabled=true",
            &format!("admin.token.file={:?}", token.display().to_string()),
        ],
    )
    .await;
    let addr = broker.admin_addr();
    let ca = certs.dir.join("ca.pem");
    let anonymous = tls_config(&ca, None);
    let as_user = |who: &str| {
        let (cert, key) = certs.user(who);
        tls_config(&ca, Some((&cert, &key)))
    };
    // Plain HTTP gets no answer.
    let plain = reqwest_metrics(addr).await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert_eq!(admin_tls_get(addr, anonymous.clone(), "/health", None).await, 401);
    assert_eq!(
        admin_tls_get(addr, anonymous.clone(), "/metrics", None).await,
        200,
        "loopback metrics"
    );
    assert_eq!(
        admin_tls_get(addr, anonymous.clone(), "/health", Some("0123456789abcdef0123")).await,
        200
    );
    assert_eq!(
        admin_tls_get(addr, anonymous.clone(), "/health", Some("0123456789abcdef0124")).await,
        401
    );
    assert_eq!(
        admin_tls_get(addr, as_user("admin"), "/health", None).await,
        200,
        "a super user's certificate"
    );
    assert_eq!(admin_tls_get(addr, as_user("admin"), "/raft", None).await, 200);
    assert_eq!(
        admin_tls_get(addr, as_user("allowed"), "/health", None).await,
        401,
        "a valid certificate that is no administrator's"
    );
}

/// An administrator records a principal's organization with Kafka's
/// IncrementalAlterConfigs on the broker resource
/// (`courier.organization.<principal>`); it needs AlterConfigs on the
/// cluster, and other broker settings stay static.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_records_a_principals_organization() {
    let (certs, broker, mut admin) = matrix_broker().await;
    let alter = |name: &str, op: i8, value: Option<&str>| {
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s(""))
                .with_configs(vec![incremental_alter_configs_request::AlterableConfig::default()
                    .with_name(s(name))
                    .with_config_operation(op)
                    .with_value(value.map(s))]),
        ]))
    };
    let code = |r: ResponseKind| match r {
        ResponseKind::IncrementalAlterConfigs(r) => r.responses[0].error_code,
        other => panic!("{other:?}"),
    };
    let organizations = || {
        broker
            .running
            .as_ref()
            .unwrap()
            .broker
            .security
            .snapshot()
            .organizations
            .clone()
    };
    let key = "courier.organization.User:allowed";
    assert_eq!(
        code(
            admin
                .call(ApiKey::IncrementalAlterConfigs, 1, &alter(key, 0, Some("org-z")))
                .await
        ),
        0
    );
    assert_eq!(organizations().get("User:allowed").map(String::as_str), Some("org-z"));
    let mut nobody = connect_as(&broker, &certs, "nobody", true).await;
    assert_eq!(
        code(
            nobody
                .call(ApiKey::IncrementalAlterConfigs, 1, &alter(key, 0, Some("org-n")))
                .await
        ),
        CAF
    );
    assert_eq!(
        code(
            admin
                .call(
                    ApiKey::IncrementalAlterConfigs,
                    1,
                    &alter("num.partitions", 0, Some("3"))
                )
                .await
        ),
        42,
        "static broker settings are refused (INVALID_REQUEST)"
    );
    assert_eq!(
        code(
            admin
                .call(
                    ApiKey::IncrementalAlterConfigs,
                    1,
                    &alter("courier.organization.nobody", 0, Some("x"))
                )
                .await
        ),
        40,
        "not a principal (INVALID_CONFIG)"
    );
    assert_eq!(organizations().get("User:allowed").map(String::as_str), Some("org-z"));
    // The receipt of a commit made now names the recorded organization.
    let mut allowed = connect_as(&broker, &certs, "allowed", false).await;
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g-allowed")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(tn("t-allowed"))
            .with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1),
            ])]);
    let ResponseKind::OffsetCommit(r) = allowed
        .call(ApiKey::OffsetCommit, 8, &RequestKind::OffsetCommit(commit))
        .await
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        code(
            admin
                .call(ApiKey::IncrementalAlterConfigs, 1, &alter(key, 1, None))
                .await
        ),
        0
    );
    assert!(!organizations().contains_key("User:allowed"));
    let dir = broker.dir.clone();
    let mut broker = broker;
    broker.stop().await;
    let receipts = courier::verify::receipts(&dir, Some("g-allowed"), None).unwrap();
    let last = receipts.last().expect("a receipt");
    assert_eq!(
        (last.receipt.principal.as_str(), last.receipt.organization.as_str()),
        ("User:allowed", "org-z")
    );
}
