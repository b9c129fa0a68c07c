//! Shared test helpers: an in-process broker on ephemeral ports, and a raw
//! Kafka wire client for protocol-level tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use courier::{BrokerConfig, RunningBroker};
use courier_protocol::frame::decode_frame;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Settings for a test broker: ephemeral ports, data in `dir`, no initial
/// rebalance delay.
pub fn config(dir: &Path, extra: &[&str]) -> BrokerConfig {
    let mut overrides = vec![
        "listeners=127.0.0.1:0".to_owned(),
        "admin.listener=127.0.0.1:0".to_owned(),
        format!("log.dirs={:?}", dir.display().to_string()),
        "group.initial.rebalance.delay.ms=0".to_owned(),
        "group.min.session.timeout.ms=1000".to_owned(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    BrokerConfig::load(None, &overrides).expect("test config")
}

pub struct TestBroker {
    pub running: Option<RunningBroker>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let running = courier::start(config(&dir, extra)).await.expect("broker starts");
        Self {
            running: Some(running),
            dir,
            _tmp: Some(tmp),
        }
    }

    /// Restarts on the same data directory (new ports).
    pub async fn restart(&mut self, extra: &[&str]) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.running = Some(courier::start(config(&self.dir, extra)).await.expect("broker restarts"));
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("running").kafka_addr
    }

    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.running
            .as_ref()
            .expect("running")
            .admin_addr
            .expect("admin endpoint")
    }
}

/// A raw Kafka connection speaking whatever the test tells it to, over
/// TCP or anything else that reads and writes (TLS).
pub struct Wire<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    correlation: i32,
}

impl Wire<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::over(stream)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Wire<S> {
    /// A Kafka connection over an established stream.
    pub fn over(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            correlation: 0,
        }
    }

    /// Encodes and sends one request; returns its correlation id.
    pub async fn send(&mut self, api: ApiKey, version: i16, body: &RequestKind) -> i32 {
        self.correlation += 1;
        let frame = request_frame(api, version, self.correlation, body);
        self.stream.write_all(&frame).await.expect("write");
        self.correlation
    }

    /// Sends `frame` with a correct length prefix.
    pub async fn send_raw_frame(&mut self, frame: &[u8]) {
        let mut out = (frame.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Reads one response frame; `None` when the broker closed the connection.
    pub async fn recv_frame(&mut self) -> Option<BytesMut> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, 1 << 30).expect("broker frames are sane") {
                return Some(frame);
            }
            let read = tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
                .await
                .expect("broker answers or closes within 20 s");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads and decodes the response to `api`/`version`.
    pub async fn recv(&mut self, api: ApiKey, version: i16) -> Option<(i32, ResponseKind)> {
        let frame = self.recv_frame().await?;
        let mut b = frame.freeze();
        let header = ResponseHeader::decode(&mut b, api.response_header_version(version)).expect("response header");
        let body = decode_response(api, &mut b, version);
        assert!(
            !b.has_remaining(),
            "{api:?} v{version}: {} trailing bytes in response",
            b.remaining()
        );
        Some((header.correlation_id, body))
    }

    pub async fn call(&mut self, api: ApiKey, version: i16, body: &RequestKind) -> ResponseKind {
        let id = self.send(api, version, body).await;
        let (got, resp) = self
            .recv(api, version)
            .await
            .unwrap_or_else(|| panic!("{api:?} v{version}: connection closed"));
        assert_eq!(got, id, "correlation id");
        resp
    }

    /// Whether the broker closed this connection (EOF within 5 s).
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One request, encoded with its length prefix.
pub fn request_frame(api: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("courier-wire-test")));
    let mut frame = BytesMut::from(&[0u8; 4][..]);
    header
        .encode(&mut frame, api.request_header_version(version))
        .expect("header encodes");
    body.encode(&mut frame, version).expect("body encodes");
    let length = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    frame.to_vec()
}

pub fn decode_response(api: ApiKey, b: &mut bytes::Bytes, version: i16) -> ResponseKind {
    ResponseKind::decode(api, b, version).unwrap_or_else(|e| panic!("{api:?} v{version} response does not decode: {e}"))
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
