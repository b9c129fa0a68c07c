//! A replica's identity: the TLS certificate its peers authenticate it by
//! (mutual TLS, every node's certificate signed by the cluster's CA and
//! naming the node as `node-<id>.courier`), and the ed25519 key it signs
//! consensus messages with.
//!
//! `courier certs dev` and `courier dev --replicas N` generate both for a
//! local cluster; a real deployment brings each organization's own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::BrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable {what}")]
    Bad { path: PathBuf, what: &'static str },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("public key {index} in cluster.public.keys is not 32 bytes of hex")]
    PublicKey { index: usize },
    #[error("replica.signing.key does not match this node's entry in cluster.public.keys")]
    KeyMismatch,
}

/// The DNS name a node's certificate carries and its peers check.
pub fn node_name(id: u8) -> String {
    format!("node-{id}.courier")
}

/// Everything a replica proves itself with.
pub struct Identity {
    pub id: u8,
    pub signing_key: Ed25519KeyPair,
    /// Every replica's public key, by replica id.
    pub members: Vec<Bytes>,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The members' public keys from `cluster.public.keys`.
pub fn public_keys(config: &BrokerConfig) -> Result<Vec<Bytes>, IdentityError> {
    config
        .cluster_public_keys
        .iter()
        .enumerate()
        .map(|(index, k)| {
            unhex(k.trim())
                .filter(|b| b.len() == 32)
                .map(Bytes::from)
                .ok_or(IdentityError::PublicKey { index })
        })
        .collect()
}

/// Loads this node's keys and certificates as the configuration names them.
pub fn load(config: &BrokerConfig) -> Result<Identity, IdentityError> {
    let id = config.node_id as u8;
    let members = public_keys(config)?;
    let pkcs8 = read(&config.replica_signing_key)?;
    let signing_key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| IdentityError::Bad {
        path: config.replica_signing_key.clone(),
        what: "ed25519 PKCS#8 key",
    })?;
    if members.get(id as usize).map(|k| &k[..]) != Some(signing_key.public_key().as_ref()) {
        return Err(IdentityError::KeyMismatch);
    }
    let (server, client) = tls_configs(&config.peer_tls_ca, &config.peer_tls_cert, &config.peer_tls_key)?;
    Ok(Identity {
        id,
        signing_key,
        members,
        server,
        client,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server and client TLS settings: both sides present their certificate
/// and accept only peers whose certificate chains to `ca`.
fn tls_configs(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), IdentityError> {
    let bad = |path: &Path, what| IdentityError::Bad {
        path: path.to_owned(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(ca)?) {
        roots.add(c.map_err(|_| bad(ca, "PEM certificate"))?)?;
    }
    if roots.is_empty() {
        return Err(bad(ca, "CA certificate"));
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(cert, "PEM certificate"))?;
    if chain.is_empty() {
        return Err(bad(cert, "certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| bad(key, "PEM private key"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// Whether a peer's (already chain-verified) certificate names node `id`.
pub fn certificate_names(cert: &CertificateDer<'_>, id: u8) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The files one node of a development cluster uses.
#[derive(Debug, Clone)]
pub struct DevNodeFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub signing_key: PathBuf,
    /// Hex ed25519 public key, for `cluster.public.keys`.
    pub public_key: String,
}

/// Generates (or reuses, when already present) a development CA under
/// `dir` and, for each of `n` nodes, a TLS certificate and key and an
/// ed25519 signing key. Returns the CA path and each node's files.
pub fn generate_dev(dir: &Path, n: usize) -> Result<(PathBuf, Vec<DevNodeFiles>), IdentityError> {
    let write = |path: &Path, data: &[u8]| {
        std::fs::write(path, data).map_err(|source| IdentityError::Write {
            path: path.to_owned(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Courier development CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_keypair = if ca_cert.exists() && ca_key.exists() {
        let pem = String::from_utf8(read(&ca_key)?).map_err(|_| IdentityError::Bad {
            path: ca_key.clone(),
            what: "PEM key",
        })?;
        rcgen::KeyPair::from_pem(&pem)?
    } else {
        let key = rcgen::KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write(&ca_key, key.serialize_pem().as_bytes())?;
        write(&ca_cert, cert.pem().as_bytes())?;
        key
    };
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_keypair);
    let rng = ring::rand::SystemRandom::new();
    let mut nodes = Vec::with_capacity(n);
    for id in 0..n as u8 {
        let cert = dir.join(format!("node-{id}.pem"));
        let key = dir.join(format!("node-{id}.key"));
        let signing_key = dir.join(format!("node-{id}.replica.key"));
        if !(cert.exists() && key.exists()) {
            let node_key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(vec![node_name(id), "localhost".into()])?;
            params.distinguished_name.push(rcgen::DnType::CommonName, node_name(id));
            let signed = params.signed_by(&node_key, &issuer)?;
            write(&key, node_key.serialize_pem().as_bytes())?;
            write(&cert, signed.pem().as_bytes())?;
        }
        if !signing_key.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::Bad {
                path: signing_key.clone(),
                what: "randomness for an ed25519 key",
            })?;
            write(&signing_key, pkcs8.as_ref())?;
        }
        let pair = Ed25519KeyPair::from_pkcs8(&read(&signing_key)?).map_err(|_| IdentityError::Bad {
            path: signing_key.clone(),
            what: "ed25519 PKCS#8 key",
        })?;
        nodes.push(DevNodeFiles {
            cert,
            key,
            signing_key,
            public_key: hex(pair.public_key().as_ref()),
        });
    }
    Ok((ca_cert, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_dev_identities_load_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, nodes) = generate_dev(dir.path(), 4).unwrap();
        // Regenerating keeps what exists.
        let (_, again) = generate_dev(dir.path(), 4).unwrap();
        assert_eq!(nodes[2].public_key, again[2].public_key);
        let config = BrokerConfig {
            node_id: 2,
            cluster_replicas: (0..4).map(|i| format!("127.0.0.1:{}", 20000 + i)).collect(),
            cluster_public_keys: nodes.iter().map(|n| n.public_key.clone()).collect(),
            peer_tls_ca: ca,
            peer_tls_cert: nodes[2].cert.clone(),
            peer_tls_key: nodes[2].key.clone(),
            replica_signing_key: nodes[2].signing_key.clone(),
            ..BrokerConfig::default()
        };
        let identity = load(&config).unwrap();
        assert_eq!(identity.members.len(), 4);
        let pem = std::fs::read(&nodes[2].cert).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert!(certificate_names(&der, 2));
        assert!(!certificate_names(&der, 1));
        // Another node's signing key is refused.
        let wrong = BrokerConfig {
            replica_signing_key: nodes[1].signing_key.clone(),
            ..config
        };
        assert!(matches!(load(&wrong), Err(IdentityError::KeyMismatch)));
    }
}
