//! Shared helpers for the integration tests: a throwaway store under a temp root, running
//! the real `store` binary, the Nix 2.8 vectors, and detection of real Nix.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nix-2.8");

/// A path inside the vectors.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(format!("{FIXTURES}/{rel}"))
}

/// The public half of the vectors' (published, test-only) signing key.
pub fn test_public_key() -> String {
    std::fs::read_to_string(fixture("keys/test-cache-1.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `file://` URL of a cache directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The parsed `vectors.json`.
pub fn vectors() -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Extracts `trees/<name>.tar` into `dir` and returns the tree's path.
pub fn extract_tree(name: &str, dir: &Path) -> PathBuf {
    let status = Command::new("tar")
        .arg("-xpf")
        .arg(format!("{FIXTURES}/trees/{name}.tar"))
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    dir.join(name)
}

/// A store under a fresh temp root, driven through the real binary.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store_dir: String,
}

impl TestStore {
    pub fn new() -> Self {
        Self::with_store_dir("/ix/store")
    }

    pub fn with_store_dir(store_dir: &str) -> Self {
        TestStore {
            dir: tempfile::tempdir().unwrap(),
            store_dir: store_dir.to_owned(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Where a logical store path lives on disk.
    pub fn real(&self, logical: &str) -> PathBuf {
        PathBuf::from(format!("{}{logical}", self.root().display()))
    }

    /// A temp dir for inputs, next to the store.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// The binary with this store selected and no user config or env leaking in.
    pub fn cmd(&self) -> Command {
        let mut c = bare_cmd(self.dir.path());
        c.arg("--root").arg(self.root());
        c.arg("--store-dir").arg(&self.store_dir);
        c
    }

    /// Runs with args; panics with the output unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with args and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "{args:?} should fail, stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(!err.contains("RUST_BACKTRACE"), "{args:?}: {err}");
        err
    }
}

/// The binary with a clean environment (HOME in `home`, no STORE_* variables).
pub fn bare_cmd(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_store"));
    for var in [
        "STORE_DIR",
        "STORE_ROOT",
        "STORE_CONFIG",
        "STORE_LOG",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    ] {
        c.env_remove(var);
    }
    c.env("HOME", home);
    c
}

pub fn assert_success(out: &Output, what: &(impl std::fmt::Debug + ?Sized)) {
    assert!(
        out.status.success(),
        "{what:?} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether real Nix is installed. Without it, says loudly what is skipped; with
/// `STORE_REQUIRE_NIX=1` (set by CI) its absence is a failure that says why the probe
/// failed. The probe (`nix-store --version`) is retried a few times, since one failed spawn
/// under load once failed a CI run while the same probe succeeded in a parallel test, and
/// a success is remembered for the rest of the test binary.
pub fn nix_available(test: &str) -> bool {
    static FOUND: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if FOUND.get().is_some() {
        return true;
    }
    let mut why = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        match Command::new("nix-store").arg("--version").output() {
            Ok(o) if o.status.success() => {
                let _ = FOUND.set(());
                return true;
            }
            Ok(o) => {
                why = format!(
                    "nix-store --version exited with {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => why = format!("cannot run nix-store: {e}"),
        }
    }
    if std::env::var("STORE_REQUIRE_NIX").is_ok_and(|v| v == "1") {
        panic!("{test}: nix-store is required (STORE_REQUIRE_NIX=1) but unusable: {why}");
    }
    eprintln!("\n!!! SKIPPED {test}: {why} (apt-get install nix-bin) !!!\n");
    false
}

/// `nix`/`nix-store` with the settings every test uses (no daemon, no sandbox, no
/// substituters) and a private HOME.
pub fn nix_cmd(program: &str, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env(
        "NIX_CONFIG",
        "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n",
    );
    c.env("HOME", home);
    c
}

pub fn stdout_of(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert_success(&out, &c);
    String::from_utf8(out.stdout).unwrap()
}

/// Whether builds can run in the sandbox here; if not, says so loudly (a SKIPPED line), or
/// fails the test when `STORE_REQUIRE_SANDBOX=1` (as CI sets).
pub fn sandbox_or_skip(test: &str) -> bool {
    match store::build::sandbox::namespaces_available() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("STORE_REQUIRE_SANDBOX").as_deref() == Ok("1") {
                panic!("{test}: STORE_REQUIRE_SANDBOX=1 but {why}");
            }
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            false
        }
    }
}

/// Copies a directory tree; the copies are writable (the fixtures are read-only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::write(&target, std::fs::read(entry.path()).unwrap()).unwrap();
        }
    }
}

/// The host directories a `/bin/sh` builder needs in the sandbox (dash is dynamically
/// linked), those that exist here, space separated.
pub fn sandbox_paths() -> String {
    ["/bin", "/lib", "/lib64", "/usr"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with its output captured, killing it (and failing the test) after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: std::time::Duration) -> Output {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
