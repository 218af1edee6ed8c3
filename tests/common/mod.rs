//! Shared helpers for the integration tests: a throwaway store under a temp root, running
//! the real `store` binary, the Nix 2.8 vectors, and detection of real Nix.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod chain;

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

/// The environment variables that change where the binary finds its store or config.
pub const STORE_ENV: [&str; 6] = [
    "STORE_DIR",
    "STORE_ROOT",
    "STORE_CONFIG",
    "STORE_LOG",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
];

/// The binary with a clean environment (HOME in `home`, no STORE_* variables).
pub fn bare_cmd(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_store"));
    for var in STORE_ENV {
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

/// Temp data a store under `root` (store dir `store_dir`) holds: `.tmp*` entries of the
/// store dir, of `ix/var/tmp` and of `ix/var/temproots` (temp-dir locks), and whatever is
/// in the collector's trash. Empty once every command is done and nothing leaked.
pub fn store_temp_leftovers(root: &Path, store_dir: &str) -> Vec<PathBuf> {
    let real = root.join(store_dir.trim_start_matches('/'));
    let state = root.join("ix/var");
    let mut found = dot_tmp_entries(&real);
    found.extend(dot_tmp_entries(&state.join("tmp")));
    found.extend(dot_tmp_entries(&state.join("temproots")));
    if let Ok(entries) = std::fs::read_dir(real.join(".gc-trash")) {
        found.extend(entries.map(|e| e.unwrap().path()));
    }
    found
}

/// `.tmp*` entries of a `file://` cache: its root and the dirs we write into.
pub fn cache_temp_leftovers(cache: &Path) -> Vec<PathBuf> {
    ["", "nar", "log", "realisations"]
        .iter()
        .flat_map(|d| dot_tmp_entries(&cache.join(d)))
        .collect()
}

fn dot_tmp_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .map(|e| e.path())
        .collect()
}

/// xorshift64*: small, seeded, good enough for timings and file contents.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Every narinfo of a `file://` cache names a NAR that exists with its `FileSize`.
/// Returns how many narinfos there are.
pub fn check_cache(cache: &Path) -> Result<usize, String> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".narinfo") {
            continue;
        }
        n += 1;
        let text =
            std::fs::read_to_string(cache.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::to_owned)
                .ok_or_else(|| format!("{name} has no {k}"))
        };
        let url = field("URL: ")?;
        let size: u64 = field("FileSize: ")?
            .parse()
            .map_err(|_| format!("{name}: FileSize"))?;
        match std::fs::metadata(cache.join(&url)) {
            Ok(m) if m.len() == size => {}
            Ok(m) => return Err(format!("{name}: {url} has {} bytes, not {size}", m.len())),
            Err(e) => return Err(format!("{name}: its NAR {url}: {e}")),
        }
    }
    Ok(n)
}

/// `verify --all` passes and every reference of a valid path is valid (read from the
/// database, which a live server may be writing: WAL readers are fine).
pub fn check_store(s: &TestStore) -> Result<usize, String> {
    let out = run_with_timeout(
        {
            let mut c = s.cmd();
            c.args(["verify", "--all"]);
            c
        },
        std::time::Duration::from_secs(120),
    );
    if !out.status.success() {
        return Err(format!("verify --all: {}", text(&out.stderr)));
    }
    let db = s.root().join("ix/var/db/store.sqlite");
    if !db.exists() {
        return Ok(0);
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let dangling: i64 = conn
        .query_row(
            "SELECT count(*) FROM refs r LEFT JOIN valid_paths v ON r.reference = v.id \
             WHERE v.id IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if dangling != 0 {
        return Err(format!("{dangling} references to paths that are not valid"));
    }
    let valid: i64 = conn
        .query_row("SELECT count(*) FROM valid_paths", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok(valid as usize)
}

pub fn no_temp_in_store(s: &TestStore) -> Result<(), String> {
    let left = store_temp_leftovers(&s.root(), &s.store_dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("temp data left in the store: {left:?}"))
    }
}

pub fn no_temp_in_cache(cache: &Path) -> Result<(), String> {
    let left = cache_temp_leftovers(cache);
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("temp data left in the cache: {left:?}"))
    }
}
