//! S3-compatible object stores as an organization's storage, on the
//! `object_store` crate.
//!
//! Objects are `<prefix>/<organization>/objects/<64 hex>` in the bucket.
//! A put whose digest is known beforehand (the broker hashes a record
//! value before storing it) streams straight to that key as a multipart
//! upload, checking the digest as it goes; the upload is completed only if
//! it matches, and S3 makes an object visible only when its upload
//! completes, whole. A put of unknown content goes to a temporary key,
//! then is copied to its digest's key (a copy is atomic too) and the
//! temporary key removed; a put that fails leaves at most a temporary key
//! or an aborted upload, neither of which is ever read.
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or from a file in the
//! AWS shared-credentials format, on the organization's own nodes only;
//! they are never logged (the settings' `Debug` leaves them out).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncRead;

use super::{checked_range, Digest, Hashing, ObjectMeta, ObjectReader, Storage, StorageError};

/// Bytes read from the source at a time, and the size of each uploaded part.
const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Where an organization's credentials come from.
#[derive(Clone)]
pub enum S3Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
    Environment,
    /// An AWS shared-credentials file and the profile in it.
    File { path: PathBuf, profile: String },
}

/// The usual settings of an S3-compatible store.
#[derive(Clone)]
pub struct S3Settings {
    /// `None`: AWS itself, for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible
    /// servers want, rather than virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Plain HTTP to the endpoint (a server on loopback, for tests).
    pub allow_http: bool,
    /// Keys start with this (may be empty).
    pub prefix: String,
    pub credentials: S3Credentials,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// A client of the bucket, with the credentials the settings name.
    pub fn store(&self) -> Result<Arc<AmazonS3>, StorageError> {
        // reqwest's rustls takes the process's provider: Courier's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(self.allow_http);
        if let Some(endpoint) = &self.endpoint {
            b = b.with_endpoint(endpoint);
        }
        let (id, secret, token) = match &self.credentials {
            S3Credentials::Environment => {
                let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(id), Some(secret)) => (id, secret, var("AWS_SESSION_TOKEN")),
                    _ => {
                        return Err(StorageError::Unavailable(
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set".into(),
                        ))
                    }
                }
            }
            S3Credentials::File { path, profile } => credentials_from_file(path, profile)?,
        };
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = token {
            b = b.with_token(token);
        }
        Ok(Arc::new(b.build().map_err(store_error)?))
    }
}

pub struct S3Storage {
    store: Arc<AmazonS3>,
    root: String,
}

/// (access key id, secret access key, session token) from an AWS
/// shared-credentials file's `[profile]` section.
fn credentials_from_file(
    path: &std::path::Path,
    profile: &str,
) -> Result<(String, String, Option<String>), StorageError> {
    let text = std::fs::read_to_string(path).map_err(|source| StorageError::Io {
        op: "read",
        path: path.display().to_string(),
        source,
    })?;
    let mut section = None;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            continue;
        }
        if section.as_deref() != Some(profile) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret, token)),
        _ => Err(StorageError::Unavailable(format!(
            "{}: no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
            path.display()
        ))),
    }
}

fn store_error(e: object_store::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

impl S3Storage {
    /// The storage of `organization` in the bucket the settings name.
    pub fn open(settings: &S3Settings, organization: &str) -> Result<Self, StorageError> {
        if !super::fs::valid_organization(organization) {
            return Err(StorageError::Unavailable(format!(
                "{organization:?} is not an organization name a key can hold"
            )));
        }
        let store = settings.store()?;
        let root = if settings.prefix.is_empty() {
            organization.to_owned()
        } else {
            format!("{}/{organization}", settings.prefix.trim_matches('/'))
        };
        Ok(Self { store, root })
    }

    fn key(&self, digest: &Digest) -> ObjectPath {
        ObjectPath::from(format!("{}/objects/{}", self.root, digest.hex()))
    }

    /// Streams `content` into `upload`, hashing it.
    async fn upload(
        &self,
        upload: &mut WriteMultipart,
        content: &mut (dyn AsyncRead + Send + Unpin),
        size_max: u64,
    ) -> Result<ObjectMeta, StorageError> {
        let mut source = Hashing::new(content, size_max);
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = source.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
            upload.write(&buf[..n]);
        }
        Ok(source.finish())
    }
}

impl Storage for S3Storage {
    async fn put(
        &self,
        content: &mut (dyn AsyncRead + Send + Unpin),
        expected: Option<Digest>,
        size_max: u64,
    ) -> Result<ObjectMeta, StorageError> {
        let target = match expected {
            Some(d) => self.key(&d),
            None => ObjectPath::from(format!(
                "{}/tmp/{}-{}",
                self.root,
                std::process::id(),
                super::fs::next_put()
            )),
        };
        let mut upload = WriteMultipart::new_with_chunk_size(
            self.store.put_multipart(&target).await.map_err(store_error)?,
            PART_BYTES,
        );
        let meta = match self.upload(&mut upload, content, size_max).await {
            Ok(meta) if expected.is_none_or(|want| want == meta.digest) => {
                upload.finish().await.map_err(store_error)?;
                meta
            }
            // Aborted, so the store drops the parts; an upload never
            // completed is never visible either way.
            Ok(meta) => {
                let _ = upload.abort().await;
                return Err(StorageError::DigestMismatch {
                    want: expected.unwrap_or(meta.digest),
                    got: meta.digest,
                });
            }
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e);
            }
        };
        if expected.is_none() {
            let key = self.key(&meta.digest);
            let copied = self.store.copy(&target, &key).await.map_err(store_error);
            let _ = self.store.delete(&target).await;
            copied?;
        }
        Ok(meta)
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ObjectReader, StorageError> {
        let key = self.key(digest);
        let size = self.stat(digest).await?.ok_or(StorageError::NotFound(*digest))?.size;
        let Range { start, end } = checked_range(digest, size, range)?;
        if start == end {
            return Ok(Box::pin(tokio::io::empty()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..Default::default()
        };
        let got = self.store.get_opts(&key, options).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(*digest),
            e => store_error(e),
        })?;
        let stream = got.into_stream().map_err(std::io::Error::other);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<ObjectMeta>, StorageError> {
        match self.store.head(&self.key(digest)).await {
            Ok(m) => Ok(Some(ObjectMeta {
                digest: *digest,
                size: m.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StorageError> {
        if self.stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.store.delete(&self.key(digest)).await.map_err(store_error)?;
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = prefix.to_ascii_lowercase();
        let dir = ObjectPath::from(format!("{}/objects", self.root));
        let mut out: Vec<ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_filter_map(|m| {
                let meta = m
                    .location
                    .filename()
                    .filter(|name| name.starts_with(&prefix))
                    .and_then(Digest::from_hex)
                    .map(|digest| ObjectMeta { digest, size: m.size });
                futures::future::ready(Ok(meta))
            })
            .try_collect()
            .await
            .map_err(store_error)?;
        out.sort_by_key(|m| m.digest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{create_bucket, moto};

    fn settings(endpoint: &str, credentials: S3Credentials) -> S3Settings {
        S3Settings {
            endpoint: Some(endpoint.to_owned()),
            region: "us-east-1".into(),
            bucket: "courier".into(),
            path_style: true,
            allow_http: true,
            prefix: "payloads".into(),
            credentials,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_s3_compatible_store_keeps_the_contract() {
        let Some(server) = moto() else { return };
        create_bucket(&server.endpoint, "courier");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[other]\naws_access_key_id = NOTTHIS\n\n[org-a]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = s3cr3t-never-logged\n",
        )
        .unwrap();
        let creds = S3Credentials::File {
            path: file.clone(),
            profile: "org-a".into(),
        };
        let s = settings(&server.endpoint, creds.clone());
        assert!(!format!("{s:?}").contains("s3cr3t"), "settings never print credentials");
        let a = S3Storage::open(&s, "org-a").unwrap();
        crate::storage::contract::run(&a).await;
        // Several parts, named beforehand or not.
        let big = crate::storage::contract::pattern(2 * PART_BYTES + 12_345, 9);
        for expected in [Some(Digest::of(&big)), None] {
            let meta = a.put(&mut &big[..], expected, 1 << 30).await.unwrap();
            assert_eq!(meta.size, big.len() as u64);
            assert_eq!(
                crate::storage::read_verified(&a, &meta.digest, 1 << 30).await.unwrap(),
                big
            );
        }
        // Another organization's namespace in the same bucket sees none of it.
        let b = S3Storage::open(&s, "org-b").unwrap();
        let meta = a.put(&mut &b"org-a's only"[..], None, 1 << 20).await.unwrap();
        assert_eq!(b.stat(&meta.digest).await.unwrap(), None);
        assert!(b.list("").await.unwrap().is_empty());
        // A profile without keys is refused plainly.
        let missing = S3Credentials::File {
            path: file,
            profile: "other".into(),
        };
        assert!(S3Storage::open(&settings(&server.endpoint, missing), "org-a").is_err());
    }
}
