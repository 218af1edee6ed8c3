//! Helpers of the `store serve` tests: a running server, signed paths, upload targets.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;
use reqwest::Client;
use store::format::keys::TrustedKeys;
use store::format::narinfo::NarInfo;
use store::format::store_path::StoreDir;

pub(crate) const SEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/nix-2.8/keys/test-cache-1.sec"
);
pub(crate) const TOKEN: &str = "upload-token-0123456789";
pub(crate) const READ_TOKEN: &str = "read-token-abcdef";

pub(crate) fn public_key() -> String {
    let p = Path::new(SEC).with_extension("pub");
    fs::read_to_string(p).unwrap().trim().to_owned()
}

pub(crate) fn trusted() -> TrustedKeys {
    TrustedKeys::parse_list(&public_key()).unwrap()
}

/// A running `store serve`, killed (by PID) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) log: Arc<Mutex<String>>,
    pub(crate) client: Client,
}

impl Server {
    pub(crate) fn start(s: &TestStore, args: &[&str]) -> Server {
        Self::spawn(Self::command(s, args))
    }

    /// The command [`Server::start`] runs.
    pub(crate) fn command(s: &TestStore, args: &[&str]) -> Command {
        let mut cmd = s.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    pub(crate) fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let base = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("server exited before listening: {seen}");
            }
            if let Some(addr) = line.trim().strip_prefix("store serve: listening on ") {
                break addr.to_owned();
            }
            seen.push_str(&line);
        };
        let log = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&log);
        // Line by line, so that a test can watch the log while the server runs.
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let client = Client::builder().no_proxy().build().unwrap();
        Server {
            child,
            base,
            log,
            client,
        }
    }

    pub(crate) fn url(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    pub(crate) async fn get(&self, rel: &str) -> reqwest::Response {
        self.client.get(self.url(rel)).send().await.unwrap()
    }

    pub(crate) async fn head(&self, rel: &str) -> reqwest::Response {
        self.client.head(self.url(rel)).send().await.unwrap()
    }

    /// PUT with an optional bearer token; the status.
    pub(crate) async fn put(
        &self,
        rel: &str,
        body: impl Into<reqwest::Body>,
        auth: Option<&str>,
    ) -> u16 {
        let mut req = self.client.put(self.url(rel)).body(body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    }

    pub(crate) async fn narinfo(&self, logical: &str, dir: &StoreDir) -> NarInfo {
        let r = self.get(&format!("{}.narinfo", hash_part(logical))).await;
        assert_eq!(r.status(), 200, "narinfo of {logical}");
        NarInfo::parse_bytes(&r.bytes().await.unwrap(), dir).unwrap()
    }

    pub(crate) async fn fetch(&self, rel: &str) -> Vec<u8> {
        let r = self.get(rel).await;
        assert_eq!(r.status(), 200, "{rel}");
        r.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log.lock().unwrap());
        }
    }
}

/// Splits a command line made of words without spaces.
pub(crate) fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

/// Adds a tree built by `build` and signs it with the test key; returns the logical path.
pub(crate) fn add_signed(s: &TestStore, name: &str, build: impl FnOnce(&Path)) -> String {
    let src = s.scratch().join(name);
    build(&src);
    let path = s.ok(&["add", src.to_str().unwrap()]).trim().to_owned();
    s.ok(&["sign", "--secret-file", SEC, &path]);
    path
}

pub(crate) fn file_tree(content: &'static [u8]) -> impl FnOnce(&Path) {
    move |p: &Path| fs::write(p, content).unwrap()
}

pub(crate) fn hash_part(logical: &str) -> &str {
    let base = logical.rsplit('/').next().unwrap();
    &base[..32]
}

/// A store to upload into, with its server (token `TOKEN`, trusting the test key).
pub(crate) fn upload_target(extra: &str) -> (TestStore, Server) {
    let s = TestStore::new();
    let tok = s.scratch().join("token");
    fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    let flags = format!(
        "--upload-token-file {} --trusted-public-keys {}{extra}",
        tok.display(),
        public_key()
    );
    let srv = Server::start(&s, &words(&flags));
    (s, srv)
}
