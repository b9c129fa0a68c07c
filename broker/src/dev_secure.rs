//! `courier dev --secure`: the development cluster with its client doors
//! locked. Every node has a SASL_SSL listener (SCRAM-SHA-512) and an SSL
//! listener (client certificates required), the authorizer is on, and two
//! organizations are set up: each has a CA, a producer and a consumer user
//! (with both a SCRAM password and a client certificate), and ACLs let
//! org A's producer write `orders` and org B's consumer read it (in groups
//! named `org-b…`) and nothing else. An `outsider` user has a password and
//! no ACLs; `admin` is a super user.
//!
//! Files (under the data directory's `certs/` and `clients/`): the CAs,
//! each user's certificate and key, and one librdkafka properties file per
//! user and listener (`kcat -F clients/a-producer.sasl.properties`).

use std::path::{Path, PathBuf};

use courier_consensus::security::{operation, pattern, permission, resource, Acl, ScramMechanism, SecurityCommand};

use crate::replication::identity::IdentityError;
use crate::RunningBroker;

/// Port offset of the SSL listener from the SASL_SSL one.
pub const SSL_PORT_OFFSET: u16 = 100;
/// The topic the organizations exchange.
pub const TOPIC: &str = "orders";
/// Its `courier.offchain.threshold.bytes`: values above it are off-chain.
pub const OFFCHAIN_THRESHOLD: usize = 1 << 20;
/// Where org A's source connector keeps its offsets.
pub const OFFSETS_TOPIC: &str = "connect-offsets";
/// The connectors `courier dev --secure` writes settings for: org A's
/// source (its `outbox/` directory into `orders`) and org B's sink
/// (`orders` into its `inbox/` directory), with their REST ports.
pub const SOURCE_CONNECTOR: (&str, u16) = ("org-a-outbox", 8083);
pub const SINK_CONNECTOR: (&str, u16) = ("org-b-inbox", 8084);

/// A user of the secure development cluster.
pub struct DevUser {
    pub name: &'static str,
    pub organization: &'static str,
    pub password: String,
}

/// The users `courier dev --secure` sets up.
pub fn users() -> Vec<DevUser> {
    let user = |name: &'static str, organization: &'static str| DevUser {
        name,
        organization,
        password: format!("{name}-secret"),
    };
    vec![
        user("admin", "org-a"),
        user("a-producer", "org-a"),
        user("a-consumer", "org-a"),
        user("b-producer", "org-b"),
        user("b-consumer", "org-b"),
        user("outsider", "org-b"),
    ]
}

/// The ACLs: org A's producer writes `orders` (and reads it, and its
/// source connector's offsets topic, to send each file once, in groups
/// `connect-org-a…`); org B's
/// consumer reads it in groups whose names start with `org-b` or are its
/// sink connector's (`connect-org-b…`).
pub fn acls() -> Vec<Acl> {
    let acl = |rt: i8, name: &str, pt: i8, who: &str, op: i8| Acl {
        resource_type: rt,
        resource_name: name.into(),
        pattern_type: pt,
        principal: format!("User:{who}"),
        host: "*".into(),
        operation: op,
        permission: permission::ALLOW,
    };
    vec![
        acl(resource::TOPIC, TOPIC, pattern::LITERAL, "a-producer", operation::WRITE),
        acl(resource::TOPIC, TOPIC, pattern::LITERAL, "b-consumer", operation::READ),
        acl(
            resource::GROUP,
            "org-b",
            pattern::PREFIXED,
            "b-consumer",
            operation::READ,
        ),
        acl(resource::TOPIC, TOPIC, pattern::LITERAL, "a-producer", operation::READ),
        acl(
            resource::TOPIC,
            OFFSETS_TOPIC,
            pattern::LITERAL,
            "a-producer",
            operation::WRITE,
        ),
        acl(
            resource::TOPIC,
            OFFSETS_TOPIC,
            pattern::LITERAL,
            "a-producer",
            operation::READ,
        ),
        acl(
            resource::GROUP,
            "connect-org-a",
            pattern::PREFIXED,
            "a-producer",
            operation::READ,
        ),
        acl(
            resource::GROUP,
            "connect-org-b",
            pattern::PREFIXED,
            "b-consumer",
            operation::READ,
        ),
    ]
}

/// The settings each node of the secure cluster adds to `courier dev`'s,
/// for SASL_SSL on `port` (+ node index) and SSL 100 above it.
pub fn settings(certs: &Path, port: u16) -> Vec<String> {
    let path = |f: &str| format!("{:?}", certs.join(f).display().to_string());
    vec![
        format!(
            "listeners=\"SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{}\"",
            port + SSL_PORT_OFFSET
        ),
        format!("ssl.keystore.location={}", path("listener.keystore.pem")),
        format!("ssl.truststore.location={}", path("client-cas.pem")),
        "ssl.client.auth=required".into(),
        "listener.name.sasl_ssl.ssl.client.auth=none".into(),
        "sasl.enabled.mechanisms=SCRAM-SHA-512".into(),
        // A certificate's principal is its CN, as a SASL user's is its name.
        "ssl.principal.mapping.rules=\"RULE:^CN=([^,]+).*$/$1/,DEFAULT\"".into(),
        "authorizer.class.name=courier".into(),
        "super.users=\"User:admin\"".into(),
        "auto.create.topics.enable=false".into(),
    ]
}

fn write(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    std::fs::write(path, data).map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A CA for `organization` under `dir` (made once, reused after).
fn organization_ca(
    dir: &Path,
    organization: &str,
) -> Result<(rcgen::CertificateParams, rcgen::KeyPair), IdentityError> {
    let cert = dir.join(format!("{organization}-ca.pem"));
    let key = dir.join(format!("{organization}-ca.key"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, organization);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{organization} client CA"));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let pair = if cert.exists() && key.exists() {
        rcgen::KeyPair::from_pem(&read_string(&key)?)?
    } else {
        let pair = rcgen::KeyPair::generate()?;
        let signed = params.self_signed(&pair)?;
        write(&key, pair.serialize_pem().as_bytes())?;
        write(&cert, signed.pem().as_bytes())?;
        pair
    };
    Ok((params, pair))
}

/// Client certificates (`users/<name>.pem`, `.key`) for `clients`
/// (`(name, organization)`), each signed by its organization's CA, and
/// `client-cas.pem` listing every organization's CA. Returns that file.
pub fn issue_client_certs(dir: &Path, clients: &[(&str, &str)]) -> Result<PathBuf, IdentityError> {
    let users_dir = dir.join("users");
    std::fs::create_dir_all(&users_dir).map_err(|source| IdentityError::Write {
        path: users_dir.clone(),
        source,
    })?;
    let mut organizations: Vec<&str> = clients.iter().map(|(_, o)| *o).collect();
    organizations.sort_unstable();
    organizations.dedup();
    let mut bundle = String::new();
    for org in &organizations {
        let (params, pair) = organization_ca(dir, org)?;
        bundle.push_str(&read_string(&dir.join(format!("{org}-ca.pem")))?);
        let issuer = rcgen::Issuer::from_params(&params, &pair);
        for (name, _) in clients.iter().filter(|(_, o)| o == org) {
            let cert = users_dir.join(format!("{name}.pem"));
            let key = users_dir.join(format!("{name}.key"));
            if cert.exists() && key.exists() {
                continue;
            }
            let user_key = rcgen::KeyPair::generate()?;
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *org);
            p.distinguished_name.push(rcgen::DnType::CommonName, *name);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let signed = p.signed_by(&user_key, &issuer)?;
            write(&key, user_key.serialize_pem().as_bytes())?;
            write(&cert, signed.pem().as_bytes())?;
        }
    }
    let cas = dir.join("client-cas.pem");
    write(&cas, bundle.as_bytes())?;
    Ok(cas)
}

/// The server certificate and key every node's client listeners present
/// (`listener.keystore.pem`): signed by the development CA, for
/// `localhost` and 127.0.0.1.
pub fn issue_listener_cert(dir: &Path) -> Result<PathBuf, IdentityError> {
    let keystore = dir.join("listener.keystore.pem");
    if keystore.exists() {
        return Ok(keystore);
    }
    let ca_key = rcgen::KeyPair::from_pem(&read_string(&dir.join("ca.key"))?)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Courier development CA");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let signed = params.signed_by(&key, &issuer)?;
    write(&keystore, format!("{}{}", signed.pem(), key.serialize_pem()).as_bytes())?;
    Ok(keystore)
}

/// One librdkafka properties file per user and listener under `dir`.
pub fn write_client_files(
    dir: &Path,
    certs: &Path,
    sasl_addr: &str,
    ssl_addr: &str,
) -> Result<Vec<PathBuf>, IdentityError> {
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca = certs.join("ca.pem");
    let mut written = Vec::new();
    for u in users() {
        let sasl = dir.join(format!("{}.sasl.properties", u.name));
        write(
            &sasl,
            format!(
                "bootstrap.servers={sasl_addr}\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-512\n\
                 sasl.username={}\nsasl.password={}\nssl.ca.location={}\n",
                u.name,
                u.password,
                ca.display()
            )
            .as_bytes(),
        )?;
        let ssl = dir.join(format!("{}.ssl.properties", u.name));
        write(
            &ssl,
            format!(
                "bootstrap.servers={ssl_addr}\nsecurity.protocol=SSL\nssl.ca.location={}\n\
                 ssl.certificate.location={}\nssl.key.location={}\n",
                ca.display(),
                certs.join("users").join(format!("{}.pem", u.name)).display(),
                certs.join("users").join(format!("{}.key", u.name)).display()
            )
            .as_bytes(),
        )?;
        written.extend([sasl, ssl]);
    }
    Ok(written)
}

/// Prepares the certificate files a secure cluster under `root` needs.
pub fn prepare(root: &Path) -> Result<(), IdentityError> {
    let certs = root.join("certs");
    crate::replication::identity::generate_dev(&certs, 0)?;
    issue_listener_cert(&certs)?;
    let clients: Vec<(&str, &str)> = users().iter().map(|u| (u.name, u.organization)).collect();
    issue_client_certs(&certs, &clients)?;
    Ok(())
}

/// Sets up users, organizations, ACLs and the `orders` topic through node
/// `node` (any node: the changes go through Raft). Users that exist keep
/// their credentials.
pub async fn bootstrap(node: &RunningBroker) -> Result<(), String> {
    let broker = &node.broker;
    let have = broker.security.snapshot();
    let missing: Vec<DevUser> = users()
        .into_iter()
        .filter(|u| !have.scram.contains_key(&(u.name.to_owned(), ScramMechanism::Sha512)))
        .collect();
    let known_orgs = have.organizations.clone();
    drop(have);
    let plain = |e: (i16, String)| format!("{} (error {})", e.1, e.0);
    for u in missing {
        let credential =
            crate::auth::scram::new_credential(ScramMechanism::Sha512, &u.password, 4096).map_err(|e| e.to_string())?;
        broker
            .security
            .change(SecurityCommand::SetScram {
                user: u.name.to_owned(),
                mechanism: ScramMechanism::Sha512,
                credential: Some(credential),
            })
            .await
            .map_err(plain)?;
    }
    for u in users() {
        let principal = format!("User:{}", u.name);
        if known_orgs.get(&principal).map(String::as_str) != Some(u.organization) {
            broker
                .security
                .change(SecurityCommand::SetOrganization {
                    principal,
                    organization: Some(u.organization.to_owned()),
                })
                .await
                .map_err(plain)?;
        }
    }
    broker
        .security
        .change(SecurityCommand::CreateAcls(acls()))
        .await
        .map_err(plain)?;
    if broker.topics.get(TOPIC).is_none() {
        // Values above 1 MiB stay in the producing organization's storage.
        let configs = [(
            crate::offchain::THRESHOLD_CONFIG.to_owned(),
            OFFCHAIN_THRESHOLD.to_string(),
        )]
        .into();
        crate::api::create_topics::create(broker, TOPIC, Some(3), configs)
            .await
            .map_err(plain)?;
    }
    if broker.topics.get(OFFSETS_TOPIC).is_none() {
        crate::api::create_topics::create(broker, OFFSETS_TOPIC, Some(1), Default::default())
            .await
            .map_err(plain)?;
    }
    Ok(())
}

/// Settings files for the two connectors (`connect/<name>.properties`),
/// and their directories: org A's source reads `<storage>/org-a/outbox`
/// as a-producer over SASL_SSL through `source_addr`, org B's sink writes
/// `<storage>/org-b/inbox` as b-consumer over SSL through `sink_addr` (an
/// org-b node, which fetches off-chain values from org A's nodes).
pub fn write_connector_files(
    root: &Path,
    storage: &Path,
    source_addr: &str,
    sink_addr: &str,
) -> Result<Vec<PathBuf>, IdentityError> {
    let dir = root.join("connect");
    let certs = root.join("certs");
    let outbox = storage.join("org-a").join("outbox");
    let inbox = storage.join("org-b").join("inbox");
    for d in [&dir, &outbox, &inbox] {
        std::fs::create_dir_all(d).map_err(|source| IdentityError::Write {
            path: d.to_path_buf(),
            source,
        })?;
    }
    let (source, source_port) = SOURCE_CONNECTOR;
    let (sink, sink_port) = SINK_CONNECTOR;
    let ca = certs.join("ca.pem");
    let source_file = dir.join(format!("{source}.properties"));
    write(
        &source_file,
        format!(
            "# Worker\nbootstrap.servers={source_addr}\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=SCRAM-SHA-512\n\
             sasl.username=a-producer\nsasl.password=a-producer-secret\nssl.ca.location={}\n\
             listeners=http://127.0.0.1:{source_port}\noffset.storage.topic={OFFSETS_TOPIC}\n\
             # Connector: each file dropped into the outbox becomes one record of {TOPIC}\n\
             name={source}\nconnector.class=courier.connect.FileSourceConnector\ntasks.max=1\n\
             topic={TOPIC}\ninput.path={}\nmode=file\n\
             value.converter=org.apache.kafka.connect.converters.ByteArrayConverter\n",
            ca.display(),
            outbox.display()
        )
        .as_bytes(),
    )?;
    let sink_file = dir.join(format!("{sink}.properties"));
    write(
        &sink_file,
        format!(
            "# Worker\nbootstrap.servers={sink_addr}\nsecurity.protocol=SSL\nssl.ca.location={}\n\
             ssl.certificate.location={}\nssl.key.location={}\nlisteners=http://127.0.0.1:{sink_port}\n\
             # A sink that died gives its partitions up after 10 s (librdkafka's default is 45 s)\n\
             consumer.session.timeout.ms=10000\n\
             # Connector: each record of {TOPIC} becomes a file of the inbox, checked\n\
             name={sink}\nconnector.class=courier.connect.FileSinkConnector\ntasks.max=1\n\
             topics={TOPIC}\noutput.path={}\n\
             value.converter=org.apache.kafka.connect.converters.ByteArrayConverter\n",
            ca.display(),
            certs.join("users/b-consumer.pem").display(),
            certs.join("users/b-consumer.key").display(),
            inbox.display()
        )
        .as_bytes(),
    )?;
    Ok(vec![source_file, sink_file])
}
