//! Helpers of the `store cargo` tests: fixture checkouts with their own CARGO_HOME and
//! store root, `store cargo` runs and their reports, a cache that never answers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{assert_success, bare_cmd, copy_dir, run_with_timeout, text};
use serde::Deserialize;

pub(crate) const WORKSPACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cargo");
/// A small registry binary for `cargo install` (deps: getopts, unicode-width, memchr).
pub(crate) const INSTALLED: &str = "jsonxf@1.1.1";
/// Any single build must finish well within this (a hung cache included).
pub(crate) const BUILD_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Entry {
    #[serde(rename = "crate")]
    pub(crate) krate: String,
    pub(crate) source_kind: String,
    pub(crate) crate_types: Vec<String>,
    pub(crate) outcome: String,
    pub(crate) reason: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) store_path: Option<String>,
    pub(crate) exit: Option<i32>,
    pub(crate) overhead_ms: f64,
    pub(crate) inputs: Option<serde_json::Value>,
}

impl Entry {
    /// A cacheable unit that compiled (or was installed) successfully.
    pub(crate) fn is_unit(&self) -> bool {
        self.key.is_some() && self.exit == Some(0)
    }

    pub(crate) fn args(&self) -> Vec<String> {
        self.inputs
            .as_ref()
            .and_then(|i| i["args"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn input(&self, name: &str) -> serde_json::Value {
        self.inputs
            .as_ref()
            .map_or(serde_json::Value::Null, |i| i[name].clone())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Report {
    pub(crate) totals: serde_json::Value,
    pub(crate) manifest: Option<String>,
    pub(crate) entries: Vec<Entry>,
}

impl Report {
    /// The successful cacheable units (rustc runs and build-script runs).
    pub(crate) fn units(&self) -> Vec<&Entry> {
        self.entries.iter().filter(|e| e.is_unit()).collect()
    }

    /// Crate names of `units()` with this outcome.
    pub(crate) fn crates_with(&self, outcome: &str) -> BTreeSet<String> {
        self.units()
            .into_iter()
            .filter(|e| e.outcome == outcome)
            .map(|e| e.krate.clone())
            .collect()
    }
}

/// A finished `store cargo` run.
pub(crate) struct Run {
    pub(crate) out: Output,
    pub(crate) report: Report,
    pub(crate) elapsed: Duration,
}

impl Run {
    pub(crate) fn stderr(&self) -> String {
        text(&self.out.stderr)
    }

    pub(crate) fn ok(self) -> Run {
        assert_success(&self.out, "store cargo");
        let summary: Vec<&str> = std::str::from_utf8(&self.out.stderr)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("store cargo:"))
            .collect();
        assert_eq!(summary.len(), 1, "one summary line: {}", self.stderr());
        self
    }
}

/// A copy of a fixture workspace at its own path, with its own CARGO_HOME and store root.
pub(crate) struct Checkout {
    pub(crate) dir: PathBuf,
    pub(crate) cargo_home: PathBuf,
    pub(crate) root: PathBuf,
}

impl Checkout {
    pub(crate) fn new(parent: &Path, name: &str, workspace: &str) -> Checkout {
        let dir = parent.join(name).join("src").join(workspace);
        copy_dir(&Path::new(WORKSPACES).join(workspace), &dir);
        Checkout {
            dir,
            cargo_home: parent.join(name).join("cargo-home"),
            root: parent.join(name).join("store-root"),
        }
    }

    /// `cargo` with this checkout's CARGO_HOME and nothing of the test's own cargo build.
    pub(crate) fn cargo_env(&self, c: &mut Command) {
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let keep = ["CARGO_HTTP_", "CARGO_NET_", "CARGO_REGISTR"]
                .iter()
                .any(|p| k.starts_with(p));
            let drop = (k.starts_with("CARGO_") && !keep)
                || k.starts_with("RUSTC")
                || ["RUSTFLAGS", "RUSTDOCFLAGS", "MAKEFLAGS", "MFLAGS"].contains(&k.as_str());
            if drop {
                c.env_remove(&k);
            }
        }
        c.env("CARGO_HOME", &self.cargo_home)
            .env("RUSTUP_HOME", rustup_home())
            .current_dir(&self.dir);
    }

    /// `store --root <root> [global] cargo --report <file> [store_args] -- cargo_args`.
    pub(crate) fn store_cargo(
        &self,
        global: &[&str],
        store_args: &[&str],
        cargo_args: &[&str],
    ) -> Run {
        self.store_cargo_with(global, store_args, cargo_args, &[])
    }

    pub(crate) fn store_cargo_with(
        &self,
        global: &[&str],
        store_args: &[&str],
        cargo_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Run {
        let report = self.dir.with_file_name(format!(
            "report-{}.json",
            REPORTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut c = bare_cmd(self.dir.parent().unwrap());
        self.cargo_env(&mut c);
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("--root").arg(&self.root).args(global).arg("cargo");
        c.arg("--report")
            .arg(&report)
            .args(store_args)
            .arg("--")
            .args(cargo_args);
        let start = Instant::now();
        let out = run_with_timeout(c, BUILD_LIMIT);
        let elapsed = start.elapsed();
        let json = std::fs::read(&report).unwrap_or_else(|e| {
            panic!("no report ({e}): {}", text(&out.stderr));
        });
        Run {
            out,
            report: serde_json::from_slice(&json).unwrap(),
            elapsed,
        }
    }

    /// Builds from `cache` only, trusting `key`.
    pub(crate) fn build_from(&self, cache: &str, key: &str, extra: &[&str]) -> Run {
        let mut args = vec!["build", "--locked"];
        args.extend_from_slice(extra);
        self.store_cargo(
            &[],
            &["--substituters", cache, "--trusted-public-keys", key],
            &args,
        )
    }

    /// Output of the workspace's `app` binary.
    pub(crate) fn run_app(&self) -> Vec<u8> {
        let out = Command::new(self.dir.join("target/debug/app"))
            .output()
            .unwrap();
        assert_success(&out, "app");
        out.stdout
    }
}

static REPORTS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".rustup"))
}

/// A 127.0.0.1 listener that accepts connections and never answers, until dropped.
pub(crate) struct Hanging {
    pub(crate) url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hanging {
    pub(crate) fn start() -> Hanging {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Hanging {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The narinfo file of a store path in a `file://` cache.
pub(crate) fn narinfo(cache: &Path, store_path: &str) -> PathBuf {
    let base = store_path.rsplit('/').next().unwrap();
    cache.join(format!("{}.narinfo", base.split('-').next().unwrap()))
}

pub(crate) fn rustc_cmd() -> Command {
    let mut c = Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()));
    c.env("RUSTUP_HOME", rustup_home());
    c
}

pub(crate) fn stdout_line(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert_success(&out, &c);
    text(&out.stdout).trim().to_owned()
}
