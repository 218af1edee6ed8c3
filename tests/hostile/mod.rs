//! Helpers of `tests/hostile_caches.rs`: copies of the vector caches to corrupt, publishing
//! crafted NARs and narinfos, running the binary with limits (time, peak memory), and
//! checking that nothing was left behind.
#![allow(dead_code)]

use crate::common::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::format::hash::{Hash, HashAlgo};
use store::format::keys::SecretKey;
use store::format::narinfo::NarInfo;
use store::format::store_path::{StoreDir, StorePath};

pub(crate) const ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";
pub(crate) const VEC_B: &str = "/nix/store/nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b";
pub(crate) const VEC_A: &str = "/nix/store/si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt";
pub(crate) const CLOSURE: [&str; 3] = [VEC_A, VEC_B, ROOT];

/// Generous upper bound for any single refusal (a hang is bounded by the config).
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(180);

pub(crate) fn nix_dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

pub(crate) fn test_secret_key() -> SecretKey {
    SecretKey::parse(
        fs::read_to_string(fixture("keys/test-cache-1.sec"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

pub(crate) fn base_name(logical: &str) -> &str {
    logical.rsplit('/').next().unwrap()
}

pub(crate) fn hash_part(logical: &str) -> &str {
    &base_name(logical)[..32]
}

pub(crate) fn store_path(logical: &str) -> StorePath {
    nix_dir().parse_path(logical).unwrap()
}

pub(crate) fn sha256(data: &[u8]) -> Hash {
    Hash::sha256(Sha256::digest(data).into())
}

/// A made-up store path for hand-built content: the hash part is derived from `name`.
pub(crate) fn made_up_path(name: &str) -> String {
    let h = Hash::of(HashAlgo::Sha256, name.as_bytes()).to_nix32();
    format!("/nix/store/{}-{name}", &h[..32])
}

/// A writable copy of a fixture cache (`caches/none`, `negative/bad-narhash`, …).
pub(crate) fn cache_copy(s: &TestStore, rel: &str) -> PathBuf {
    let dir = s.scratch().join(rel.replace('/', "-"));
    copy_dir(&fixture(rel), &dir);
    dir
}

pub(crate) fn narinfo_file(dir: &Path, logical: &str) -> PathBuf {
    dir.join(format!("{}.narinfo", hash_part(logical)))
}

pub(crate) fn read_narinfo(dir: &Path, logical: &str) -> NarInfo {
    NarInfo::parse(
        &fs::read_to_string(narinfo_file(dir, logical)).unwrap(),
        &nix_dir(),
    )
    .unwrap()
}

pub(crate) fn write_narinfo(dir: &Path, key_path: &str, info: &NarInfo) {
    let file = narinfo_file(dir, key_path);
    let _ = fs::remove_file(&file);
    fs::write(file, info.to_text(&nix_dir())).unwrap();
}

/// An empty cache for `/nix/store`.
pub(crate) fn empty_cache(s: &TestStore, name: &str) -> PathBuf {
    let dir = s.scratch().join(name);
    fs::create_dir_all(dir.join("nar")).unwrap();
    fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    dir
}

/// Puts `file` (the NAR `nar`, compressed as `compression` says) into the cache under
/// its file hash, and a narinfo for `logical` with NarHash/NarSize `nar_hash`/`nar_size`
/// signed by the test key. Only checks of the NAR itself can stop such a path.
pub(crate) fn publish(
    dir: &Path,
    logical: &str,
    nar_hash: Hash,
    nar_size: u64,
    compression: &str,
    file: &[u8],
) -> NarInfo {
    let ext = match compression {
        "none" => ".nar",
        "zstd" => ".nar.zst",
        "xz" => ".nar.xz",
        other => panic!("{other}"),
    };
    let file_hash = sha256(file);
    let url = format!("nar/{}{ext}", file_hash.to_nix32());
    fs::create_dir_all(dir.join("nar")).unwrap();
    fs::write(dir.join(&url), file).unwrap();
    let mut info = NarInfo::new(store_path(logical), &url, nar_hash, nar_size).unwrap();
    info.set_compression(Some(compression)).unwrap();
    info.set_file_hash(Some(file_hash)).unwrap();
    info.set_file_size(Some(file.len() as u64));
    info.sign(&test_secret_key(), &nix_dir());
    write_narinfo(dir, logical, &info);
    info
}

/// Publishes an uncompressed NAR with its true hash and size, signed.
pub(crate) fn publish_nar(dir: &Path, logical: &str, nar: &[u8]) -> NarInfo {
    publish(dir, logical, sha256(nar), nar.len() as u64, "none", nar)
}

// ---------------------------------------------------------------------------------------
// Hand-built NARs (the crate's writer refuses bad names, so these are raw tokens).

pub(crate) fn nar_tokens(tokens: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        let t = t.as_bytes();
        out.extend_from_slice(&(t.len() as u64).to_le_bytes());
        out.extend_from_slice(t);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out
}

pub(crate) fn regular_file_nar(contents: &str) -> Vec<u8> {
    nar_tokens(&[
        "nix-archive-1",
        "(",
        "type",
        "regular",
        "contents",
        contents,
        ")",
    ])
}

// ---------------------------------------------------------------------------------------
// Running the binary under observation

pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// Highest `VmHWM` (peak resident memory, KiB) seen while sampling the process every
    /// few milliseconds. (`wait4`'s `ru_maxrss` is useless here: it includes the memory
    /// of this test process, which the child was forked from.)
    pub(crate) peak_rss_kib: u64,
    pub(crate) elapsed: Duration,
}

pub(crate) fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd`, sampling its peak memory, and kills it (by its PID, while it is certainly
/// ours: not yet reaped) if it runs longer than `limit`.
pub(crate) fn run(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    // `done` is set while the child is still unreaped (a zombie at worst), so the
    // watchdog can never signal a recycled PID.
    let done = Arc::new(Mutex::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut peak = 0;
            loop {
                {
                    let finished = done.lock().unwrap();
                    if *finished {
                        return (false, peak);
                    }
                    if Instant::now() >= deadline {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        return (true, peak);
                    }
                    if let Some(kib) = vm_hwm_kib(pid) {
                        peak = peak.max(kib);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        );
        assert_eq!(r, 0, "waitid");
    }
    *done.lock().unwrap() = true;
    let status = child.wait().unwrap();
    let elapsed = start.elapsed();
    let (killed, peak_rss_kib) = watchdog.join().unwrap();
    let run = Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        peak_rss_kib,
        elapsed,
    };
    assert!(
        !killed,
        "killed after {limit:?}: stdout {} stderr {}",
        run.stdout, run.stderr
    );
    run
}

pub(crate) fn realise_cmd(
    s: &TestStore,
    urls: &str,
    keys: &str,
    paths: &[&str],
    extra: &[&str],
) -> Command {
    let mut c = s.cmd();
    c.args([
        "realise",
        "--substituters",
        urls,
        "--trusted-public-keys",
        keys,
    ])
    .args(extra)
    .args(paths);
    c
}

/// Realises `paths` expecting a refusal; returns the error message (from its `error:`
/// line on) after checking there is exactly one, and no panic.
pub(crate) fn refused(
    s: &TestStore,
    urls: &str,
    keys: &str,
    paths: &[&str],
    extra: &[&str],
) -> String {
    refused_run(s, urls, keys, paths, extra).1
}

pub(crate) fn refused_run(
    s: &TestStore,
    urls: &str,
    keys: &str,
    paths: &[&str],
    extra: &[&str],
) -> (Run, String) {
    let r = run(realise_cmd(s, urls, keys, paths, extra), RUN_LIMIT);
    assert!(
        r.code.is_some_and(|c| c != 0),
        "{paths:?} should be refused: exit {:?}, stdout {}, stderr {}",
        r.code,
        r.stdout,
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "panic: {}",
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    let errors: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "want exactly one error: {}", r.stderr);
    let msg = lines[errors[0]..].join("\n");
    eprintln!("refused {paths:?} in {:?}:\n{msg}", r.elapsed);
    (r, msg)
}

pub(crate) fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "error should mention {n:?}: {msg}");
    }
}

/// `logical` is not valid, and nothing of it nor any temp dir is in the physical store.
pub(crate) fn assert_absent(s: &TestStore, logical: &str) {
    s.fails(&["path-info", logical]);
    let real_store = s.real("/nix/store");
    if let Ok(entries) = fs::read_dir(&real_store) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert_ne!(name, base_name(logical), "{logical} left on disk");
            assert!(!name.starts_with(".tmp-"), "temp dir {name} left behind");
        }
    }
}

/// Only `valid` of the vector closure are valid (and verify); the rest left no trace.
pub(crate) fn assert_only_valid(s: &TestStore, valid: &[&str]) {
    for p in CLOSURE {
        if valid.contains(&p) {
            s.ok(&["path-info", p]);
        } else {
            assert_absent(s, p);
        }
    }
    if !valid.is_empty() {
        s.ok(&["verify", "--all"]);
    }
}

pub(crate) fn nix_store() -> TestStore {
    TestStore::with_store_dir("/nix/store")
}

/// The two ways substitution fetches a NAR, each with the config text that selects it:
/// whole into memory, then unpacked (small NARs, by default), and unpacked as it streams in
/// (`whole-nar-max-size = 0`). A hostile NAR must be refused both ways.
pub(crate) const FETCH_MODES: [(&str, &str); 2] =
    [("whole", ""), ("streamed", "whole-nar-max-size = 0\n")];

/// Writes a config file for `s` (replacing the previous one); returns its path.
pub(crate) fn config_file(s: &TestStore, text: &str) -> String {
    let f = s.scratch().join("config.toml");
    fs::write(&f, text).unwrap();
    f.to_str().unwrap().to_owned()
}
