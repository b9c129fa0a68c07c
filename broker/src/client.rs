//! A small Kafka client for `courier`'s own administration commands
//! (`courier users`): one connection to one broker over PLAINTEXT, SSL,
//! SASL_PLAINTEXT or SASL_SSL (SCRAM), configured by a librdkafka-style
//! properties file (`--command-config`, the files `courier dev --secure`
//! writes), sending one request at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use courier_consensus::security::ScramMechanism;
use courier_protocol::frame::decode_frame;
use kafka_protocol::messages::{
    ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::scram::client::ScramClient;

/// Largest response accepted.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Settings(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent a response that does not decode: {0}")]
    Decode(String),
    #[error("authentication failed: {0}")]
    Authentication(String),
}

/// Connection settings, by librdkafka's names.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub values: BTreeMap<String, String>,
}

impl ClientSettings {
    /// Reads `name=value` lines (`#` comments, blank lines allowed).
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut values = BTreeMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| ClientError::Settings(format!("{}: {line:?} is not name=value", path.display())))?;
            values.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Self { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One authenticated connection.
pub struct Connection {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    correlation: i32,
}

/// A TLS client configuration from librdkafka's settings: `ssl.ca.location`,
/// and for a client certificate `ssl.certificate.location` and
/// `ssl.key.location` (PEM; they may name the same file).
pub fn tls_config(s: &ClientSettings) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let read = |p: &str| std::fs::read(p).map_err(|source| ClientError::Read { path: p.into(), source });
    let ca = s
        .get("ssl.ca.location")
        .ok_or_else(|| ClientError::Settings("ssl.ca.location is needed for TLS".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(ca)?) {
        roots
            .add(c.map_err(|e| ClientError::Tls(e.to_string()))?)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (s.get("ssl.certificate.location"), s.get("ssl.key.location")) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| ClientError::Tls(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl Connection {
    /// Connects to `bootstrap` (`host:port`) as `settings` say and
    /// authenticates.
    pub async fn open(bootstrap: &str, settings: &ClientSettings) -> Result<Self, ClientError> {
        let protocol = settings
            .get("security.protocol")
            .unwrap_or("PLAINTEXT")
            .to_ascii_uppercase();
        let tcp = tokio::net::TcpStream::connect(bootstrap)
            .await
            .map_err(|source| ClientError::Connect {
                addr: bootstrap.to_owned(),
                source,
            })?;
        let stream: Box<dyn Stream> = if protocol == "SSL" || protocol == "SASL_SSL" {
            let host = bootstrap.rsplit_once(':').map_or(bootstrap, |(h, _)| h);
            let name = ServerName::try_from(host.to_owned()).map_err(|e| ClientError::Tls(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config(settings)?)
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut c = Self {
            stream,
            buf: BytesMut::new(),
            correlation: 0,
        };
        if protocol.starts_with("SASL_") {
            c.scram_login(settings).await?;
        }
        Ok(c)
    }

    async fn scram_login(&mut self, s: &ClientSettings) -> Result<(), ClientError> {
        let need = |k: &str| {
            s.get(k)
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Settings(format!("{k} is needed for SASL")))
        };
        let mechanism_name = need("sasl.mechanisms")?;
        let m = ScramMechanism::from_name(&mechanism_name)
            .ok_or_else(|| ClientError::Settings(format!("courier's tools speak SCRAM, not {mechanism_name}")))?;
        let (user, password) = (need("sasl.username")?, need("sasl.password")?);
        let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism_name));
        match self
            .call(ApiKey::SaslHandshake, 1, RequestKind::SaslHandshake(handshake))
            .await?
        {
            ResponseKind::SaslHandshake(r) if r.error_code == 0 => {}
            other => return Err(ClientError::Authentication(format!("handshake refused: {other:?}"))),
        }
        let mut nonce = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| ClientError::Authentication("no randomness".into()))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let (client, first) = ScramClient::first(m, &user, &password, &nonce);
        let token = |t: String| {
            RequestKind::SaslAuthenticate(SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(t)))
        };
        let server_first = match self.call(ApiKey::SaslAuthenticate, 2, token(first)).await? {
            ResponseKind::SaslAuthenticate(r) if r.error_code == 0 => {
                String::from_utf8_lossy(&r.auth_bytes).into_owned()
            }
            ResponseKind::SaslAuthenticate(r) => {
                return Err(ClientError::Authentication(
                    r.error_message.map(|m| m.to_string()).unwrap_or_default(),
                ))
            }
            other => return Err(ClientError::Decode(format!("{other:?}"))),
        };
        let (client_final, server_signature) = client
            .finish(&server_first)
            .map_err(|e| ClientError::Authentication(e.to_string()))?;
        match self.call(ApiKey::SaslAuthenticate, 2, token(client_final)).await? {
            ResponseKind::SaslAuthenticate(r) if r.error_code == 0 && r.auth_bytes == server_signature.as_bytes() => {
                Ok(())
            }
            ResponseKind::SaslAuthenticate(r) if r.error_code == 0 => Err(ClientError::Authentication(
                "the broker did not prove it knows the credential".into(),
            )),
            ResponseKind::SaslAuthenticate(r) => Err(ClientError::Authentication(
                r.error_message.map(|m| m.to_string()).unwrap_or_default(),
            )),
            other => Err(ClientError::Decode(format!("{other:?}"))),
        }
    }

    /// Sends one request and reads its response.
    pub async fn call(&mut self, api: ApiKey, version: i16, body: RequestKind) -> Result<ResponseKind, ClientError> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("courier-cli")));
        let mut frame = BytesMut::new();
        header
            .encode(&mut frame, api.request_header_version(version))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        body.encode(&mut frame, version)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut out = (frame.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&frame);
        self.stream.write_all(&out).await?;
        let frame = loop {
            if let Some(f) =
                decode_frame(&mut self.buf, RESPONSE_BYTES_MAX).map_err(|e| ClientError::Decode(e.to_string()))?
            {
                break f;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                )));
            }
        };
        let mut b = frame.freeze();
        ResponseHeader::decode(&mut b, api.response_header_version(version))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        ResponseKind::decode(api, &mut b, version).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
