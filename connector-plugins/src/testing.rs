//! Helpers for tests of storage plugins and connectors (the `testing`
//! feature): a real S3-compatible server on loopback, and test content.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real S3-compatible server (moto's) on loopback, stopped when
/// dropped. `.ci/run` installs it and names it in
/// `COURIER_TEST_MOTO_SERVER` (and sets `COURIER_REQUIRE_S3`, so that
/// there a missing server fails instead of skipping).
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn moto() -> Option<Moto> {
    let bin = std::env::var("COURIER_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let spawned = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("COURIER_REQUIRE_S3").is_none(),
                "COURIER_REQUIRE_S3 is set but {bin} does not start: {e}"
            );
            eprintln!("SKIPPED: no S3-compatible server ({bin}: {e}); set COURIER_TEST_MOTO_SERVER");
            return None;
        }
    };
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the S3 server listens");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

/// CreateBucket, as any S3 client sends it (the server does not check
/// signatures).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("the S3 server answers");
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("the S3 server answers");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("the S3 server answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Deterministic bytes that do not repeat in short runs.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
