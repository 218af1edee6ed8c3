//! Disk full: `add`, `realise` (from a `file://` cache) and `copy --to file://` whose
//! target is a 32 MiB tmpfs fail with one clear error, register nothing partial (`verify
//! --all` passes, references are valid, no cache narinfo lacks its NAR) and leave no temp
//! data. Mounting needs root: elsewhere each test says SKIPPED loudly, and fails instead
//! when `STORE_REQUIRE_MOUNT=1` or `STORE_REQUIRE_SANDBOX=1` (as CI, which runs as root).

mod common;
#[path = "common/http_server.rs"]
mod http_server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::http::Method;
use common::*;
use http_server::BlockingServer;

const SMALL_FS_SIZE: &str = "32m";
const NIX_DIR: &str = "/nix/store";
const VEC_ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";

/// A tmpfs of [`SMALL_FS_SIZE`] mounted on a fresh dir, unmounted (lazily, so a leftover
/// open file cannot keep it) when dropped, whatever the test did.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (after a SKIPPED line) where mounting is not permitted.
    fn mount(test: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={SMALL_FS_SIZE},mode=0755"),
            ])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            other => {
                let why = match other {
                    Ok(o) => format!("mount exited with {}: {}", o.status, text(&o.stderr).trim()),
                    Err(e) => format!("cannot run mount: {e}"),
                };
                let required = ["STORE_REQUIRE_MOUNT", "STORE_REQUIRE_SANDBOX"]
                    .iter()
                    .any(|v| std::env::var(v).as_deref() == Ok("1"));
                if required {
                    panic!("{test}: a tmpfs mount is required but failed: {why}");
                }
                eprintln!("\n*** SKIPPED {test}: cannot mount a small tmpfs: {why} ***\n");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let st = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("cannot unmount {}", self.dir.path().display());
        }
    }
}

/// A store whose root is on the small filesystem (its state dir too).
fn store_on(fs_: &SmallFs) -> TestStore {
    let s = TestStore::with_store_dir(NIX_DIR);
    let root = fs_.path().join("root");
    fs::create_dir(&root).unwrap();
    // TestStore::root() is <dir>/root: make it the mount's.
    std::os::unix::fs::symlink(&root, s.root()).unwrap();
    s
}

/// Runs `cmd`, expects it to fail with one error (warnings about retries may precede it)
/// that says the disk is full; returns stderr.
fn fails_for_space(cmd: Command, what: &str) -> String {
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} succeeded on a full disk: {err}"
    );
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    eprintln!("{what} on a full disk said:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{what}: not one error: {err}");
    assert_eq!(
        errors[0].matches("No space left on device").count(),
        1,
        "{what}: the error does not say once that the disk is full: {err}"
    );
    err
}

/// Random files adding up to more than the small filesystem, as store paths of `s`.
fn big_paths(s: &TestStore, rng: &mut Rng) -> Vec<String> {
    (0..4)
        .map(|i| {
            let f = s.scratch().join(format!("big{i}"));
            fs::write(&f, rng.bytes(12 << 20)).unwrap();
            let p = s.ok(&["add", f.to_str().unwrap()]).trim().to_owned();
            fs::remove_file(&f).unwrap();
            p
        })
        .collect()
}

#[test]
fn add_on_a_full_disk() {
    let Some(small) = SmallFs::mount("add_on_a_full_disk") else {
        return;
    };
    let s = store_on(&small);
    s.ok(&["init"]);
    let tree = s.scratch().join("tree");
    fs::create_dir(&tree).unwrap();
    let mut rng = Rng::new(3);
    for i in 0..5 {
        fs::write(tree.join(format!("f{i}")), rng.bytes(8 << 20)).unwrap();
    }
    let mut c = s.cmd();
    c.arg("add").arg(&tree);
    fails_for_space(c, "add");
    assert_eq!(check_store(&s).unwrap(), 0, "something was registered");
    no_temp_in_store(&s).unwrap();
    // Space is there again for what fits.
    fs::write(s.scratch().join("small"), b"fits\n").unwrap();
    s.ok(&["add", s.scratch().join("small").to_str().unwrap()]);
    no_temp_in_store(&s).unwrap();
}

#[test]
fn realise_on_a_full_disk() {
    let Some(small) = SmallFs::mount("realise_on_a_full_disk") else {
        return;
    };
    let src = TestStore::with_store_dir(NIX_DIR);
    let vectors = file_url(&fixture("caches/none"));
    let key = test_public_key();
    src.ok(&[
        "realise",
        "--substituters",
        &vectors,
        "--trusted-public-keys",
        &key,
        VEC_ROOT,
    ]);
    let mut roots = vec![VEC_ROOT.to_owned()];
    roots.extend(big_paths(&src, &mut Rng::new(4)));
    let cache = src.dir.path().join("cache");
    let sec = fixture("keys/test-cache-1.sec");
    let mut c = src.cmd();
    c.args(["copy", "--to", &file_url(&cache), "--secret-key-file"])
        .arg(&sec)
        .args(&roots);
    assert_success(&run_with_timeout(c, Duration::from_secs(300)), "push");

    let s = store_on(&small);
    // Two caches with the same contents, so that falling through to the second shows.
    let (first, second) = (BlockingServer::serve(&cache), BlockingServer::serve(&cache));
    let mut c = s.cmd();
    c.args(["realise", "--substituters"])
        .arg(format!("{} {}", first.url(), second.url()))
        .args(["--trusted-public-keys", &key])
        .args(&roots);
    let err = fails_for_space(c, "realise");
    // Our disk is full, not the cache bad: no retry, no other cache, no blame.
    assert!(
        !err.contains("invalid NAR"),
        "a full disk blamed on the NAR: {err}"
    );
    let mut gets = first.paths(&Method::GET);
    gets.extend(second.paths(&Method::GET));
    gets.retain(|p| p.starts_with("/nar/"));
    let asked = gets.len();
    gets.sort();
    gets.dedup();
    assert_eq!(asked, gets.len(), "a NAR asked for twice: {err}");
    let valid = check_store(&s).unwrap();
    assert!(
        valid < roots.len() + 2,
        "{valid} paths valid on a 32 MiB disk"
    );
    no_temp_in_store(&s).unwrap();
    // The small paths alone fit.
    s.ok(&[
        "realise",
        "--substituters",
        &file_url(&cache),
        "--trusted-public-keys",
        &key,
        VEC_ROOT,
    ]);
    check_store(&s).unwrap();
    no_temp_in_store(&s).unwrap();
}

#[test]
fn copy_to_a_full_cache() {
    let Some(small) = SmallFs::mount("copy_to_a_full_cache") else {
        return;
    };
    let src = TestStore::new();
    let paths = big_paths(&src, &mut Rng::new(5));
    let cache: PathBuf = small.path().join("cache");
    let mut c = src.cmd();
    // No compression: random data does not shrink anyway, and the NARs are bigger.
    c.args(["copy", "--compression", "none", "--to", &file_url(&cache)])
        .args(&paths);
    fails_for_space(c, "copy --to");
    let n = check_cache(&cache).unwrap();
    assert!(n < paths.len(), "{n} narinfos in a 32 MiB cache");
    no_temp_in_cache(&cache).unwrap();
    no_temp_in_store(&src).unwrap();
    check_store(&src).unwrap();
}
