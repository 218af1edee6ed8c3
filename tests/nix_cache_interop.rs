//! Binary caches shared with real Nix 2.8 (skipped loudly without `nix-store`; CI sets
//! `STORE_REQUIRE_NIX=1` so they never pass silently):
//!
//! * (a) caches written by `nix copy --to file://…` (xz, zstd, none) from a Nix chroot store
//!   holding paths with references are substituted by us, with Nix's metadata;
//! * (b) Nix substitutes (`nix copy --from file://…`, signatures checked) from caches
//!   written by `store copy --to`, in every compression;
//! * (b') Nix substitutes from the objects `store copy --to s3://…` wrote (s3s-fs keeps them
//!   as plain files, read by Nix as a `file://` cache);
//! * (c) Nix substitutes from `store serve` over HTTP;
//! * (d) Nix uploads (`nix copy --to http://…`, netrc credentials) into `store serve`.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";

/// `nix`/`nix-store` with the common settings plus `extra` lines of nix.conf.
fn nix(program: &str, home: &Path, extra: &str) -> Command {
    let mut c = nix_cmd(program, home);
    c.env(
        "NIX_CONFIG",
        format!(
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command\n\
             substituters =\n{extra}"
        ),
    );
    c
}

fn run_nix(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert_success(&out, &c);
    String::from_utf8(out.stdout).unwrap()
}

/// `nix path-info --json -r` in a Nix store, by path.
fn nix_path_infos(home: &Path, store: &str, paths: &[String]) -> BTreeMap<String, Value> {
    let mut c = nix("nix", home, "");
    c.args(["path-info", "--json", "-r", "--store", store])
        .args(paths);
    let v: Value = serde_json::from_str(&run_nix(c)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// Our `path-info --json -r`, by path.
fn our_path_infos(s: &TestStore, paths: &[String]) -> BTreeMap<String, Value> {
    let mut args = vec!["path-info", "--json", "-r"];
    args.extend(paths.iter().map(String::as_str));
    let v: Value = serde_json::from_str(&s.ok(&args)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// The two sides agree on the closure and on every path's NAR hash, size and references.
fn assert_same_infos(ours: &BTreeMap<String, Value>, nix: &BTreeMap<String, Value>) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        nix.keys().collect::<Vec<_>>(),
        "closures differ"
    );
    for (p, o) in ours {
        let n = &nix[p];
        for field in ["narHash", "narSize", "references"] {
            assert_eq!(o[field], n[field], "{p}: {field}");
        }
        if n.get("ca").is_some() {
            assert_eq!(o.get("ca"), n.get("ca"), "{p}: ca");
        }
    }
}

/// A deterministic tree with the usual traps: executable, empty file, empty dir, nested
/// dirs, relative and dangling symlinks, and a file of a few MiB (many chunks).
fn generated_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::create_dir_all(dir.join("empty-dir")).unwrap();
    fs::write(dir.join("hello.txt"), b"hello from the interop test\n").unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
    let exe = dir.join("sub/run.sh");
    fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 13)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(dir.join("sub/deeper/big.bin"), big).unwrap();
    symlink("../hello.txt", dir.join("sub/link")).unwrap();
    symlink("/nonexistent/target", dir.join("dangling")).unwrap();
}

/// A Nix chroot store holding the vector closure (imported), text paths with references
/// (`builtins.toFile`), and two added trees. Returns the root paths.
fn nix_source_store(home: &Path, store: &Path, scratch: &Path) -> Vec<String> {
    let export = fs::File::open(fixture("export/closure.nixexport")).unwrap();
    let mut import = nix("nix-store", home, "");
    import
        .arg("--store")
        .arg(store)
        .arg("--import")
        .stdin(Stdio::from(export));
    run_nix(import);

    let mut eval = nix("nix-instantiate", home, "");
    eval.arg("--store").arg(store).args([
        "--eval",
        "--read-write-mode",
        "-E",
        r#"let a = builtins.toFile "gen-a" "hello";
               b = builtins.toFile "gen-b" "uses ${a}";
           in builtins.toFile "gen-c" "uses ${b} and ${a}""#,
    ]);
    let text_root = run_nix(eval).trim().trim_matches('"').to_owned();
    assert!(text_root.starts_with("/nix/store/"), "{text_root}");

    let mut roots = vec![ROOT.to_owned(), text_root];
    let vec_tree = extract_tree("vec-tree", scratch);
    let generated = scratch.join("generated");
    generated_tree(&generated);
    for tree in [vec_tree, generated] {
        let mut add = nix("nix-store", home, "");
        add.arg("--store").arg(store).arg("--add").arg(&tree);
        roots.push(run_nix(add).trim().to_owned());
    }
    roots
}

/// A Nix-format key pair made by Nix.
fn nix_key(home: &Path, dir: &Path, name: &str) -> (PathBuf, String) {
    let (sec, public) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    let mut c = nix("nix-store", home, "");
    c.args(["--generate-binary-cache-key", name])
        .arg(&sec)
        .arg(&public);
    run_nix(c);
    (sec, fs::read_to_string(public).unwrap().trim().to_owned())
}

/// A key pair made by us.
fn our_key(s: &TestStore, name: &str) -> (PathBuf, String) {
    let dir = s.scratch();
    let (sec, public) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    s.ok(&[
        "key",
        "generate",
        "--name",
        name,
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    (sec, fs::read_to_string(public).unwrap().trim().to_owned())
}

/// Our store holding the vector closure (from `caches/none`) and two added trees, all
/// signed by `key`. Returns the roots.
fn our_source_store(s: &TestStore, key: &Path) -> Vec<String> {
    s.ok(&[
        "realise",
        "--substituters",
        &file_url(&fixture("caches/none")),
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]);
    let mut roots = vec![ROOT.to_owned()];
    let vec_tree = extract_tree("vec-tree", &s.scratch());
    let generated = s.scratch().join("generated");
    generated_tree(&generated);
    for tree in [vec_tree, generated] {
        roots.push(s.ok(&["add", tree.to_str().unwrap()]).trim().to_owned());
    }
    let mut args = vec!["sign", "-r", "--secret-file", key.to_str().unwrap()];
    args.extend(roots.iter().map(String::as_str));
    s.ok(&args);
    roots
}

/// A running `store serve`, killed by its PID when dropped.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(s: &TestStore, args: &[&str]) -> Serve {
        let mut child = s
            .cmd()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr);
                let mut line = String::new();
                while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if let Some(url) = line.trim().strip_prefix("store serve: listening on ") {
                        let _ = tx.send(url.to_owned());
                    }
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
                let mut rest = String::new();
                let _ = lines.read_to_string(&mut rest);
                log.lock().unwrap().push_str(&rest);
            });
        }
        let mut serve = Serve {
            child,
            url: String::new(),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => serve.url = url,
            Err(_) => panic!(
                "store serve did not print its address: {}",
                serve.log.lock().unwrap()
            ),
        }
        assert!(serve.url.starts_with("http://127.0.0.1:"), "{}", serve.url);
        serve
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// (a) Nix writes, we read

#[test]
fn we_substitute_from_caches_written_by_nix() {
    if !nix_available("we_substitute_from_caches_written_by_nix") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let nix_store = work.path().join("nix-source");
    let roots = nix_source_store(&home, &nix_store, work.path());
    let (sec, public) = nix_key(&home, work.path(), "nix-made-1");
    // Sign in the store (as a cache operator would), then copy with the key too.
    let mut sign = nix("nix", &home, "");
    sign.args(["store", "sign", "-r", "--key-file"])
        .arg(&sec)
        .arg("--store")
        .arg(&nix_store)
        .args(&roots);
    run_nix(sign);
    let nix_infos = nix_path_infos(&home, nix_store.to_str().unwrap(), &roots);
    // The vector closure (3), the toFile chain (3) and the two added trees.
    assert_eq!(nix_infos.len(), 8, "{:?}", nix_infos.keys());

    for compression in ["xz", "zstd", "none"] {
        let cache = work.path().join(format!("cache-{compression}"));
        let mut copy = nix("nix", &home, "");
        copy.args(["copy", "--store"]).arg(&nix_store).args([
            "--to",
            &format!(
                "{}?compression={compression}&secret-key={}",
                file_url(&cache),
                sec.display()
            ),
        ]);
        copy.args(&roots);
        run_nix(copy);

        let s = TestStore::with_store_dir("/nix/store");
        let mut args = vec!["--json", "realise", "--substituters"];
        let url = file_url(&cache);
        args.push(&url);
        args.extend(["--trusted-public-keys", &public]);
        args.extend(roots.iter().map(String::as_str));
        let report: Value = serde_json::from_str(&s.ok(&args)).unwrap();
        assert_eq!(
            report["substituted"].as_array().unwrap().len(),
            nix_infos.len(),
            "{compression}: {report}"
        );
        assert_same_infos(&our_path_infos(&s, &roots), &nix_infos);
        let v: Value = serde_json::from_str(&s.ok(&["--json", "verify", "--all"])).unwrap();
        assert_eq!(v["ok"].as_u64().unwrap() as usize, nix_infos.len(), "{v}");
        // The trees are the same on disk: our NAR of each equals Nix's narHash (checked
        // by verify) and a file spot check.
        let big = s.real(&format!("{}/sub/deeper/big.bin", roots[3]));
        assert_eq!(fs::metadata(big).unwrap().len(), 3 * 1024 * 1024 + 13);
    }
}

// ---------------------------------------------------------------------------------------
// (b) We write, Nix reads

/// `nix copy --from URL --to DEST ROOTS…` trusting `public`; Nix's path-info of the result.
fn nix_copy_from(
    home: &Path,
    url: &str,
    public: &str,
    dest: &Path,
    roots: &[String],
) -> BTreeMap<String, Value> {
    let mut copy = nix("nix", home, &format!("trusted-public-keys = {public}\n"));
    copy.args(["copy", "--from", url, "--to"])
        .arg(dest)
        .args(roots);
    run_nix(copy);
    nix_path_infos(home, dest.to_str().unwrap(), roots)
}

#[test]
fn nix_substitutes_from_caches_we_wrote() {
    if !nix_available("nix_substitutes_from_caches_we_wrote") {
        return;
    }
    let s = TestStore::with_store_dir("/nix/store");
    let home = s.scratch().join("home");
    let (sec, public) = our_key(&s, "our-cache-1");
    let roots = our_source_store(&s, &sec);
    let ours = our_path_infos(&s, &roots);
    for compression in ["zstd", "xz", "none"] {
        let cache = s.scratch().join(format!("cache-{compression}"));
        let mut args = vec!["copy", "--to"];
        let url = file_url(&cache);
        args.push(&url);
        args.extend(["--compression", compression, "--secret-key-file"]);
        let sec_str = sec.to_str().unwrap().to_owned();
        args.push(&sec_str);
        args.extend(roots.iter().map(String::as_str));
        s.ok(&args);
        // Each root's closure index is there too (store-format.md §7.6); Nix ignores it.
        for root in &roots {
            let hash = &root.rsplit('/').next().unwrap()[..32];
            assert!(
                cache.join(format!("index/{hash}.closure")).is_file(),
                "{root}"
            );
        }

        // Nix checks our signatures (require-sigs is on by default) and our NARs.
        let dest = s.scratch().join(format!("nix-dest-{compression}"));
        let theirs = nix_copy_from(&home, &url, &public, &dest, &roots);
        assert_same_infos(&ours, &theirs);
        // Nix's own verification of what it received.
        let mut verify = nix("nix", &home, &format!("trusted-public-keys = {public}\n"));
        verify
            .args(["store", "verify", "-r", "--store"])
            .arg(&dest)
            .args(&roots);
        run_nix(verify);
        // And Nix reads the cache itself: its path-info equals ours.
        let from_cache = nix_path_infos(&home, &url, &roots);
        assert_same_infos(&ours, &from_cache);
    }

    // Without our key Nix refuses the (input-addressed) vector root.
    let cache = s.scratch().join("cache-zstd");
    let dest = s.scratch().join("nix-dest-untrusted");
    let mut copy = nix("nix", &home, "");
    copy.args(["copy", "--from", &file_url(&cache), "--to"])
        .arg(&dest)
        .arg(ROOT);
    let out = copy.output().unwrap();
    assert!(!out.status.success(), "nix accepted an untrusted path");
}

/// What `copy --to s3://` writes is a cache Nix reads: same objects, same layout.
#[test]
fn nix_substitutes_from_a_bucket_we_wrote() {
    if !nix_available("nix_substitutes_from_a_bucket_we_wrote") {
        return;
    }
    let Some(server) =
        s3_server::S3Server::start("nix_substitutes_from_a_bucket_we_wrote", &["nixb"])
    else {
        return;
    };
    let s = TestStore::with_store_dir("/nix/store");
    let home = s.scratch().join("home");
    let (sec, public) = our_key(&s, "our-s3-cache-1");
    let roots = our_source_store(&s, &sec);
    let mut push = s.cmd();
    for (k, v) in s3_server::S3Server::env() {
        push.env(k, v);
    }
    push.args([
        "copy",
        "--to",
        &server.url("nixb/cache"),
        "--secret-key-file",
    ])
    .arg(&sec)
    .args(&roots);
    assert_success(&push.output().unwrap(), "copy --to s3://");
    let url = file_url(&server.bucket_dir("nixb").join("cache"));
    let dest = s.scratch().join("nix-dest-s3");
    let theirs = nix_copy_from(&home, &url, &public, &dest, &roots);
    assert_same_infos(&our_path_infos(&s, &roots), &theirs);
}

// ---------------------------------------------------------------------------------------
// (c) Nix substitutes from `store serve`

#[test]
fn nix_substitutes_from_store_serve() {
    if !nix_available("nix_substitutes_from_store_serve") {
        return;
    }
    let s = TestStore::with_store_dir("/nix/store");
    let home = s.scratch().join("home");
    let (sec, public) = our_key(&s, "our-serve-1");
    let roots = our_source_store(&s, &sec);
    let ours = our_path_infos(&s, &roots);
    let srv = Serve::start(&s, &[]);
    let trusted = format!("trusted-public-keys = {public} {}\n", test_public_key());
    let dest = s.scratch().join("nix-from-serve");
    let mut copy = nix("nix", &home, &trusted);
    copy.args(["copy", "--from", &srv.url, "--to"])
        .arg(&dest)
        .args(&roots);
    let out = copy.output().unwrap();
    assert!(
        out.status.success(),
        "nix copy --from {}: {}\nserver log:\n{}",
        srv.url,
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let theirs = nix_path_infos(&home, dest.to_str().unwrap(), &roots);
    assert_same_infos(&ours, &theirs);
    let mut verify = nix("nix", &home, &trusted);
    verify
        .args(["store", "verify", "-r", "--store"])
        .arg(&dest)
        .args(&roots);
    run_nix(verify);
    // Nix reads the served cache directly, too.
    let direct = nix_path_infos(&home, &srv.url, &roots);
    assert_same_infos(&ours, &direct);
}

// ---------------------------------------------------------------------------------------
// (d) Nix uploads into `store serve`

#[test]
fn nix_uploads_into_store_serve() {
    if !nix_available("nix_uploads_into_store_serve") {
        return;
    }
    const TOKEN: &str = "interop-upload-token-0123456789";
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let nix_store = work.path().join("nix-source");
    let roots = nix_source_store(&home, &nix_store, work.path());
    let (sec, public) = nix_key(&home, work.path(), "nix-upload-1");
    let mut sign = nix("nix", &home, "");
    sign.args(["store", "sign", "-r", "--key-file"])
        .arg(&sec)
        .arg("--store")
        .arg(&nix_store)
        .args(&roots);
    run_nix(sign);
    let nix_infos = nix_path_infos(&home, nix_store.to_str().unwrap(), &roots);

    let target = TestStore::with_store_dir("/nix/store");
    let token = target.scratch().join("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let srv = Serve::start(
        &target,
        &[
            "--upload-token-file",
            token.to_str().unwrap(),
            "--trusted-public-keys",
            &public,
        ],
    );
    let netrc = work.path().join("netrc");
    fs::write(
        &netrc,
        format!("machine 127.0.0.1 login nix password {TOKEN}\n"),
    )
    .unwrap();

    // Without credentials the upload is refused and nothing is imported.
    let mut anon = nix("nix", &home, "");
    anon.args(["copy", "--store"])
        .arg(&nix_store)
        .args(["--to", &srv.url, ROOT]);
    let out = anon.output().unwrap();
    assert!(
        !out.status.success(),
        "anonymous upload accepted; server log:\n{}",
        srv.log()
    );
    target.fails(&["path-info", ROOT]);

    let mut copy = nix("nix", &home, &format!("netrc-file = {}\n", netrc.display()));
    copy.args(["copy", "--store"])
        .arg(&nix_store)
        .args(["--to", &srv.url])
        .args(&roots);
    let out = copy.output().unwrap();
    assert!(
        out.status.success(),
        "nix copy --to {}: {}\nserver log:\n{}",
        srv.url,
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let ours = our_path_infos(&target, &roots);
    assert_same_infos(&ours, &nix_infos);
    for info in ours.values() {
        let sigs = info["signatures"].as_array().cloned().unwrap_or_default();
        assert!(
            sigs.iter()
                .any(|s| s.as_str().unwrap().starts_with("nix-upload-1:")),
            "{info}"
        );
    }
    target.ok(&["verify", "--all"]);
}
