//! A real S3 server for tests: s3s-fs (`cargo install s3s-fs@0.14.1 --locked --features
//! binary`) on 127.0.0.1, serving a temp directory whose subdirectories are buckets.
//!
//! The binary is `$STORE_S3S_FS`, else `s3s-fs` on PATH. Without it a test is SKIPPED
//! loudly, or fails when `STORE_REQUIRE_S3=1` (as CI sets). The server is killed (by its
//! PID) when the handle drops. Use it with `#[path = "common/s3_server.rs"] mod s3_server;`.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "storetest";
pub const SECRET_KEY: &str = "storetest-secret-key";
pub const REGION: &str = "us-east-1";

/// A running s3s-fs.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// The directory served: `<root>/<bucket>/<key>` are the objects.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The s3s-fs binary, if any.
fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STORE_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// Whether the S3 tests can run; if not, says so loudly, or panics under
/// `STORE_REQUIRE_S3=1`.
pub fn s3_or_skip(test: &str) -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var("STORE_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("{test}: STORE_REQUIRE_S3=1 but s3s-fs is not on PATH (or STORE_S3S_FS)")
        }
        None => {
            eprintln!(
                "\n!!! SKIPPED {test}: no s3s-fs (cargo install s3s-fs@0.14.1 --locked --features binary) !!!\n"
            );
            None
        }
    }
}

impl S3Server {
    /// Starts a server with the given buckets, or `None` if the test is skipped.
    pub fn start(test: &str, buckets: &[&str]) -> Option<S3Server> {
        let binary = s3_or_skip(test)?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server {
            child,
            port,
            root,
            _dir: dir,
        };
        server.wait_ready();
        Some(server)
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket[/prefix]?endpoint=…&region=…`.
    pub fn url(&self, bucket_and_prefix: &str) -> String {
        format!(
            "s3://{bucket_and_prefix}?endpoint={}&region={REGION}",
            self.endpoint()
        )
    }

    /// The directory holding a bucket's objects (readable as a `file://` cache).
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// The credential variables for a child process.
    pub fn env() -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    /// Sets the credential variables in this process, once; for in-process caches. Every
    /// test of a binary that calls it sets the same values.
    pub fn set_process_env() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            for (k, v) in Self::env() {
                std::env::set_var(k, v);
            }
        });
    }

    /// The multipart uploads begun and neither completed nor aborted (s3s-fs keeps one
    /// `.upload-<id>.json` per upload in its root).
    pub fn pending_uploads(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-"))
            .collect()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
