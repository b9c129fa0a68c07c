//! TLS on client listeners (SSL and SASL_SSL): the server's certificate
//! and key from `ssl.keystore.location` (PEM: chain and key in one file,
//! as Kafka's PEM keystore), the CAs that sign client certificates from
//! `ssl.truststore.location`, and `ssl.client.auth` = none | requested |
//! required. The node-to-node transport has its own TLS settings.
//!
//! A client certificate's principal is `User:` + its subject as an RFC 2253
//! name, through `ssl.principal.mapping.rules`; its organization, unless an
//! administrator recorded another, is the `O` of the CA that issued it
//! (each organization runs its own CA; the truststore lists them all).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("listener {listener}: {what} is not set")]
    Missing { listener: String, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable {what}")]
    Bad { path: PathBuf, what: &'static str },
    #[error("ssl.client.auth is none, requested or required, not {0:?}")]
    ClientAuth(String),
    #[error("{0} only PEM is supported")]
    StoreType(&'static str),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

impl ClientAuth {
    pub fn parse(s: &str) -> Result<Self, TlsSetupError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            _ => Err(TlsSetupError::ClientAuth(s.to_owned())),
        }
    }
}

/// What a listener's TLS needs.
pub struct TlsSettings<'a> {
    pub listener: &'a str,
    pub keystore: Option<&'a Path>,
    pub truststore: Option<&'a Path>,
    pub client_auth: ClientAuth,
}

/// A listener's TLS acceptor and what it knows of the client CAs.
pub struct ClientTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The `O` of each trusted CA, by its subject (DER).
    ca_organizations: HashMap<Vec<u8>, String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, what: &'static str) -> TlsSetupError {
    TlsSetupError::Bad {
        path: path.to_owned(),
        what,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The first `O` attribute of a name.
fn organization_of(name: &X509Name<'_>) -> Option<String> {
    name.iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned)
}

impl ClientTls {
    pub fn new(s: &TlsSettings<'_>) -> Result<Self, TlsSetupError> {
        let missing = |what| TlsSetupError::Missing {
            listener: s.listener.to_owned(),
            what,
        };
        let keystore = s.keystore.ok_or_else(|| missing("ssl.keystore.location"))?;
        let pem = read(keystore)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(keystore, "PEM certificate"))?;
        if chain.is_empty() {
            return Err(bad(keystore, "certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| bad(keystore, "PEM private key"))?;
        let mut ca_organizations = HashMap::new();
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = if s.client_auth == ClientAuth::None {
            builder.with_no_client_auth()
        } else {
            let truststore = s.truststore.ok_or_else(|| missing("ssl.truststore.location"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(truststore)?) {
                let c = c.map_err(|_| bad(truststore, "PEM certificate"))?;
                if let Ok((_, parsed)) = X509Certificate::from_der(&c) {
                    if let Some(o) = organization_of(parsed.subject()) {
                        ca_organizations.insert(parsed.subject().as_raw().to_vec(), o);
                    }
                }
                roots.add(c)?;
            }
            if roots.is_empty() {
                return Err(bad(truststore, "CA certificate"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if s.client_auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| rustls::Error::General(e.to_string()))?)
        };
        let config = builder.with_single_cert(chain, key)?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_organizations,
        })
    }

    /// The subject (RFC 2253) and issuing organization of a verified
    /// client certificate chain, end entity first.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<(String, Option<String>)> {
        let ee = chain.first()?;
        let (_, cert) = X509Certificate::from_der(ee).ok()?;
        let subject = rfc2253(cert.subject());
        // The certificate that the trust anchor signed: the last one sent.
        let top = match chain.last() {
            Some(last) if chain.len() > 1 => X509Certificate::from_der(last).ok().map(|(_, c)| c),
            _ => None,
        };
        let issuer = top.as_ref().map_or(cert.issuer(), |t| t.issuer());
        let organization = self.ca_organizations.get(issuer.as_raw()).cloned();
        Some((subject, organization))
    }
}

/// A distinguished name as Java's `X500Principal.getName()` writes it
/// (RFC 2253: the last RDN first, `,` between RDNs, `+` inside one).
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type();
                    let key = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                        .map(str::to_owned)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = atv.as_str().map(escape).unwrap_or_else(|_| {
                        // Non-string values print as `#` + hex of their DER.
                        let hex: String = atv.attr_value().data.iter().map(|b| format!("{b:02x}")).collect();
                        format!("#{hex}")
                    });
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == v.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_as_java_writes_them() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "org, a");
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        assert_eq!(rfc2253(parsed.subject()), "CN=alice,O=org\\, a,C=NL");
        assert_eq!(organization_of(parsed.subject()).as_deref(), Some("org, a"));
    }

    #[test]
    fn client_auth_values_are_kafkas() {
        assert_eq!(ClientAuth::parse("required").unwrap(), ClientAuth::Required);
        assert_eq!(ClientAuth::parse("Requested").unwrap(), ClientAuth::Requested);
        assert!(ClientAuth::parse("optional").is_err());
    }
}
