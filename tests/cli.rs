//! The `store` binary end to end: add, path-info, hash, nar, verify, keys, sign, config,
//! errors, concurrency and crash leftovers. Checked against the Nix 2.8 vectors.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;

use common::*;
use serde_json::Value;

fn tree_cases() -> Vec<Value> {
    vectors()["trees"]["cases"].as_array().unwrap().clone()
}

#[test]
fn add_gives_nix_paths_and_path_info() {
    let s = TestStore::with_store_dir("/nix/store");
    for case in tree_cases() {
        let name = case["name"].as_str().unwrap();
        let tree = extract_tree(name, &s.scratch());
        let printed = s.ok(&["add", tree.to_str().unwrap()]);
        let expected = &case["nix_store_add"];
        assert_eq!(
            printed.trim(),
            expected["store_path"].as_str().unwrap(),
            "{name}"
        );

        let json: Value =
            serde_json::from_str(&s.ok(&["path-info", "--json", printed.trim()])).unwrap();
        let info = &json[0];
        let want = &expected["path_info"];
        assert_eq!(info["path"], expected["store_path"], "{name}");
        for k in ["narHash", "narSize", "ca", "references"] {
            assert_eq!(info[k], want[k], "{name} {k}");
        }
        assert!(info["registrationTime"].as_i64().unwrap() > 0);
    }
}

#[test]
fn add_with_alternate_store_dir() {
    for case in vectors()["alt_store_dir"]["cases"].as_array().unwrap() {
        let s = TestStore::with_store_dir(case["store_dir"].as_str().unwrap());
        let tree = extract_tree(case["tree"].as_str().unwrap(), &s.scratch());
        let printed = s.ok(&["add", tree.to_str().unwrap()]);
        assert_eq!(printed.trim(), case["store_path"].as_str().unwrap());
    }
}

#[test]
fn add_is_canonical_idempotent_and_named() {
    let s = TestStore::new();
    let tree = extract_tree("vec-tree", &s.scratch());
    let first = s.ok(&["add", tree.to_str().unwrap()]);
    let again: Value =
        serde_json::from_str(&s.ok(&["--json", "add", tree.to_str().unwrap()])).unwrap();
    assert_eq!(again["path"].as_str().unwrap(), first.trim());
    assert_eq!(again["added"], false);

    let real = s.real(first.trim());
    let mut seen = 0;
    let mut stack = vec![real.clone()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        seen += 1;
        if m.file_type().is_symlink() {
            continue;
        }
        assert_eq!(m.mtime(), 1, "{}", p.display());
        let mode = m.permissions().mode() & 0o7777;
        if m.is_dir() {
            assert_eq!(mode, 0o555, "{}", p.display());
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert!(mode == 0o444 || mode == 0o555, "{} {mode:o}", p.display());
        }
    }
    assert!(seen > 10);

    let named = s.ok(&["add", "--name", "other-name", tree.to_str().unwrap()]);
    assert!(named.trim().ends_with("-other-name"));
    let err = s.fails(&["add", "--name", "bad name", tree.to_str().unwrap()]);
    assert!(err.contains("illegal character"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn hash_commands_print_what_nix_prints() {
    let s = TestStore::new();
    for case in tree_cases() {
        let name = case["name"].as_str().unwrap();
        let tree = extract_tree(name, &s.scratch());
        let t = tree.to_str().unwrap();
        let h = &case["nix_hash_path_sha256"];
        assert_eq!(
            s.ok(&["hash", "path", t]).trim(),
            h["sri"].as_str().unwrap()
        );
        assert_eq!(
            s.ok(&["hash", "path", "--sri", t]).trim(),
            h["sri"].as_str().unwrap()
        );
        assert_eq!(
            s.ok(&["hash", "path", "--base32", t]).trim(),
            h["base32"].as_str().unwrap()
        );
        assert_eq!(
            s.ok(&["hash", "path", "--base16", t]).trim(),
            h["base16"].as_str().unwrap()
        );
        assert_eq!(
            s.ok(&["hash", "path", "--type", "sha1", "--base32", t])
                .trim(),
            case["nix_hash_path_sha1_base32"].as_str().unwrap()
        );
        if let Some(file_hash) = case["nix_hash_file_sha256"].as_str() {
            assert_eq!(s.ok(&["hash", "file", "--base32", t]).trim(), file_hash);
        }
    }
    for case in vectors()["flat_hashes"]["cases"].as_array().unwrap() {
        let data = data_encoding::BASE64
            .decode(case["input_base64"].as_str().unwrap().as_bytes())
            .unwrap();
        let f = s.scratch().join("flat");
        fs::write(&f, data).unwrap();
        for algo in ["md5", "sha1", "sha256", "sha512"] {
            for (flag, key) in [
                ("--base16", "base16"),
                ("--base32", "base32"),
                ("--base64", "base64"),
                ("--sri", "sri"),
            ] {
                let got = s.ok(&["hash", "file", "--type", algo, flag, f.to_str().unwrap()]);
                assert_eq!(
                    got.trim(),
                    case[algo][key].as_str().unwrap(),
                    "{algo} {flag}"
                );
            }
        }
    }
    let err = s.fails(&["hash", "path", "/nonexistent/x"]);
    assert!(err.starts_with("error: "), "{err}");
}

#[test]
fn nar_dump_matches_nix_and_restore_round_trips() {
    let s = TestStore::new();
    for case in tree_cases() {
        let name = case["name"].as_str().unwrap();
        let tree = extract_tree(name, &s.scratch());
        let out = s.cmd().args(["nar", "dump"]).arg(&tree).output().unwrap();
        assert_success(&out, &name);
        let want = fs::read(format!("{FIXTURES}/{}", case["nar"].as_str().unwrap())).unwrap();
        assert!(
            out.stdout == want,
            "{name}: NAR differs from nix-store --dump"
        );

        let dest = s.scratch().join(format!("restored-{name}"));
        let mut child = s
            .cmd()
            .args(["nar", "restore"])
            .arg(&dest)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &want).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let again = s.cmd().args(["nar", "dump"]).arg(&dest).output().unwrap();
        assert!(again.stdout == want, "{name}: round trip differs");
    }
}

#[test]
fn nar_restore_refuses_bad_nars_and_leaves_nothing() {
    let s = TestStore::new();
    for case in vectors()["negative_nars"]["cases"].as_array().unwrap() {
        if case["recommended_verdict"] != "reject" {
            continue;
        }
        let file = case["file"].as_str().unwrap();
        let dest = s.scratch().join("restore-target");
        let out = s
            .cmd()
            .args(["nar", "restore"])
            .arg(&dest)
            .stdin(fs::File::open(format!("{FIXTURES}/{file}")).unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} accepted");
        assert!(
            err.starts_with("error: ") && !err.contains("panicked"),
            "{file}: {err}"
        );
        assert!(!dest.exists(), "{file}: target left behind");
    }
}

#[test]
fn verify_reports_modified_and_missing_paths() {
    let s = TestStore::new();
    let scratch = s.scratch();
    let a = scratch.join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("f"), "one").unwrap();
    let b = scratch.join("b.txt");
    fs::write(&b, "two").unwrap();
    let pa = s.ok(&["add", a.to_str().unwrap()]).trim().to_owned();
    let pb = s.ok(&["add", b.to_str().unwrap()]).trim().to_owned();
    s.ok(&["verify", "--all"]);
    s.ok(&["verify", &pa, &pb]);

    let real_a = s.real(&pa);
    fs::set_permissions(&real_a, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(real_a.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(real_a.join("f"), "tampered").unwrap();
    let real_b = s.real(&pb);
    fs::remove_file(&real_b).unwrap();

    let err = s.fails(&["verify", "--all"]);
    assert!(err.contains(&format!("path '{pa}' was modified")), "{err}");
    assert!(err.contains(&format!("path '{pb}' is missing")), "{err}");
    let out = s
        .cmd()
        .args(["--json", "verify", "--all"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checked"], 2);
    assert_eq!(report["corrupt"].as_array().unwrap().len(), 2);
}

#[test]
fn keys_and_signatures() {
    use store::format::keys::{PublicKey, SecretKey, TrustedKeys};
    let s = TestStore::new();
    let scratch = s.scratch();
    let (sec, public) = (scratch.join("k.sec"), scratch.join("k.pub"));
    s.ok(&[
        "key",
        "generate",
        "--name",
        "test-key-1",
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::metadata(&sec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pub_text = fs::read_to_string(&public).unwrap();
    assert!(pub_text.starts_with("test-key-1:") && !pub_text.ends_with('\n'));
    assert_eq!(
        s.ok(&["key", "public", "--secret-file", sec.to_str().unwrap()])
            .trim(),
        pub_text
    );
    let secret = SecretKey::parse(&fs::read_to_string(&sec).unwrap()).unwrap();
    assert!(!format!("{secret:?}").contains(&fs::read_to_string(&sec).unwrap()[11..]));
    let err = s.fails(&[
        "key",
        "generate",
        "--name",
        "x",
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    assert!(err.contains("exists"), "{err}");

    // The vector key signs exactly as Nix did.
    let f = scratch.join("signed.txt");
    fs::write(&f, "sign me\n").unwrap();
    let p = s.ok(&["add", f.to_str().unwrap()]).trim().to_owned();
    s.ok(&["sign", "--secret-file", sec.to_str().unwrap(), &p]);
    s.ok(&["sign", "--secret-file", sec.to_str().unwrap(), &p]);
    let vec_sec = format!("{FIXTURES}/keys/test-cache-1.sec");
    s.ok(&["sign", "--secret-file", &vec_sec, &p]);
    let info: Value = serde_json::from_str(&s.ok(&["path-info", "--json", &p])).unwrap();
    let sigs: Vec<&str> = info[0]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    let fp = format!(
        "1;{p};sha256:{};{};",
        store::format::hash::Hash::parse_prefixed(info[0]["narHash"].as_str().unwrap())
            .unwrap()
            .to_nix32(),
        info[0]["narSize"]
    );
    let trusted = TrustedKeys::from_keys([PublicKey::parse(&pub_text).unwrap()]).unwrap();
    let ours = sigs.iter().find(|s| s.starts_with("test-key-1:")).unwrap();
    assert!(trusted.verify(&fp, ours).unwrap());
}

/// Issue 13: a key named `a:b` was written, then could not be read back. Names are
/// refused where they are checked, with nothing written.
#[test]
fn key_names_with_a_colon_are_refused() {
    let s = TestStore::new();
    let scratch = s.scratch();
    let (sec, public) = (scratch.join("k.sec"), scratch.join("k.pub"));
    for bad in ["a:b", ""] {
        let err = s.fails(&[
            "key",
            "generate",
            "--name",
            bad,
            "--secret-file",
            sec.to_str().unwrap(),
            "--public-file",
            public.to_str().unwrap(),
        ]);
        assert!(err.contains("key name"), "{bad:?}: {err}");
        assert!(
            !sec.exists() && !public.exists(),
            "{bad:?}: nothing written"
        );
    }
    // A trusted key whose name is empty is refused with the same rule.
    let err = s.fails(&[
        "realise",
        "--trusted-public-keys",
        ":NYgtoruizuryolCLu5nuyeLIW7BKrpXu2BvVsMOG20A=",
        "/ix/store/00000000000000000000000000000000-x",
    ]);
    assert!(err.contains("a key name must not be empty"), "{err}");
}

#[test]
fn errors_are_one_clear_line() {
    let s = TestStore::new();
    let err = s.fails(&[
        "path-info",
        "/ix/store/00000000000000000000000000000000-nothing",
    ]);
    assert!(err.contains("is not valid"), "{err}");
    let err = s.fails(&["path-info", "/somewhere/else"]);
    assert!(err.contains("not in the store"), "{err}");
    let err = s.fails(&["add", "/nonexistent/tree"]);
    assert!(err.contains("/nonexistent/tree"), "{err}");
    let err = s.fails(&["verify"]);
    assert!(err.contains("--all"), "{err}");
    // A FIFO cannot be added; the error names it.
    let dir = s.scratch().join("withfifo");
    fs::create_dir(&dir).unwrap();
    let fifo = dir.join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = s.fails(&["add", dir.to_str().unwrap()]);
    assert!(err.contains("pipe"), "{err}");
}

/// Issue 13: messages repeated themselves (`cannot add 'X': cannot add 'X': …`, each
/// I/O cause twice) because levels formatted their source into their own message. Each
/// level now says only its own part, and the chain printer adds the causes, once.
#[test]
fn error_chains_name_each_cause_once() {
    let s = TestStore::new();
    let home = tempfile::tempdir().unwrap();
    let no_root = || {
        let mut c = bare_cmd(home.path());
        c.env_remove("HOME");
        c
    };
    let cache = s.scratch().join("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("nix-cache-info"), "StoreDir: /ix/store\n").unwrap();
    let hash = "00000000000000000000000000000000";
    fs::write(
        cache.join(format!("{hash}.narinfo")),
        format!("StorePath: /ix/store/{hash}-x\nURL: nar/x.nar\nNarHash: sha256:zz\nNarSize: 1\n"),
    )
    .unwrap();
    let cache_url = format!("file://{}", cache.display());
    let key = "k-1:NYgtoruizuryolCLu5nuyeLIW7BKrpXu2BvVsMOG20A=";
    let path = format!("/ix/store/{hash}-x");
    let cases: Vec<(Vec<String>, &str, bool)> = vec![
        (words(&["add", "/nonexistent/tree"]), "No such file", true),
        (
            words(&["copy", "--to", "file:///proc/no-such/cache", &path]),
            "No such file",
            true,
        ),
        (
            words(&["--store-dir", "/proc/no-such/store", "init"]),
            "No such file",
            false,
        ),
        (
            words(&[
                "realise",
                "--substituters",
                "http://[::1",
                "--trusted-public-keys",
                key,
                &path,
            ]),
            "invalid IPv6 address",
            true,
        ),
        // The cause of a refused narinfo reaches the report.
        (
            words(&[
                "realise",
                "--substituters",
                &cache_url,
                "--trusted-public-keys",
                key,
                &path,
            ]),
            "NarHash",
            true,
        ),
    ];
    for (args, cause, in_store) in cases {
        let out = if in_store {
            s.cmd().args(&args).output()
        } else {
            no_root().args(&args).output()
        };
        let out = out.unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
        for line in err.lines().filter(|l| !l.starts_with(" WARN")) {
            let segments: Vec<&str> = line.trim().split(": ").collect();
            for (i, seg) in segments.iter().enumerate() {
                assert!(
                    !segments[i + 1..].contains(seg),
                    "{args:?}: {seg:?} repeated in {line:?}"
                );
            }
        }
    }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn unwritable_default_location_suggests_root() {
    // No HOME and no XDG_DATA_HOME: no per-user root to fall back to.
    let home = tempfile::tempdir().unwrap();
    let out = bare_cmd(home.path())
        .env_remove("HOME")
        .args(["--store-dir", "/proc/no-such-store/store", "init"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--root"), "{err}");
}

/// Issue 13: an ordinary user with no root set got an error instead of a store. Now the
/// store goes under `$XDG_DATA_HOME/store/root` (else `~/.local/share/store/root`), and
/// stderr says so once. Run as nobody; skipped (loudly) where privileges cannot be dropped.
#[test]
fn unprivileged_user_without_root_gets_a_per_user_store() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let f = tmp.path().join("f.txt");
    fs::write(&f, "mine\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let (home, data) = (tmp.path().join("home"), tmp.path().join("data"));
    for d in [&home, &data] {
        fs::create_dir(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let Some(out) = unprivileged(&["add", f.to_str().unwrap()], &home, None) else {
        eprintln!("\n*** SKIPPED unprivileged_user_without_root_gets_a_per_user_store: cannot drop privileges ***\n");
        return;
    };
    assert_success(&out, "add as nobody without --root");
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(path.starts_with("/ix/store/"), "{path}");
    let user_root = home.join(".local/share/store/root");
    assert!(user_root.join(path.trim_start_matches('/')).is_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("per-user root").count(), 1, "{err}");
    assert!(err.contains(user_root.to_str().unwrap()), "{err}");
    // XDG_DATA_HOME wins over HOME; the next command finds the same store.
    let out = unprivileged(&["add", f.to_str().unwrap()], &home, Some(&data)).unwrap();
    assert_success(&out, "add with XDG_DATA_HOME");
    assert!(data
        .join("store/root")
        .join(path.trim_start_matches('/'))
        .is_file());
    let out = unprivileged(&["path-info", &path], &home, None).unwrap();
    assert_success(&out, "path-info in the per-user store");
}

#[test]
fn config_file_env_and_flags() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("r");
    let cfg = home.path().join("c.toml");
    fs::write(
        &cfg,
        format!(
            "store-dir = \"/cfg/store\"\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let f = home.path().join("f.txt");
    fs::write(&f, "x").unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = bare_cmd(home.path());
        c.arg("--config").arg(&cfg).args(extra).arg("add").arg(&f);
        for (k, v) in env {
            c.env(k, v);
        }
        stdout_of(c)
    };
    assert!(run(&[], &[]).starts_with("/cfg/store/"));
    assert!(root.join("cfg/store").is_dir());
    let r2 = home.path().join("r2");
    let r2 = r2.to_str().unwrap();
    assert!(run(&[], &[("STORE_DIR", "/env/store"), ("STORE_ROOT", r2)]).starts_with("/env/store/"));
    let r3 = home.path().join("r3");
    assert!(run(
        &["--store-dir", "/flag/store", "--root", r3.to_str().unwrap()],
        &[("STORE_DIR", "/env/store"), ("STORE_ROOT", r2)]
    )
    .starts_with("/flag/store/"));
    assert!(r3.join("flag/store").is_dir());
    // One root holds one store: another store dir on the same state is refused.
    let mut c = bare_cmd(home.path());
    c.arg("--config")
        .arg(&cfg)
        .args(["--store-dir", "/other/store", "init"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to store dir '/cfg/store'"));

    fs::write(&cfg, "stor-dir = \"/x\"\n").unwrap();
    let out = bare_cmd(home.path())
        .arg("--config")
        .arg(&cfg)
        .arg("init")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn concurrent_adds_of_one_tree_all_succeed_once() {
    let s = TestStore::new();
    let tree = extract_tree("vec-tree", &s.scratch());
    s.ok(&["init"]);
    let children: Vec<_> = (0..6)
        .map(|_| {
            s.cmd()
                .args(["add"])
                .arg(&tree)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert_success(&out, &"concurrent add");
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let store_dir = s.root().join("ix/store");
    let entries: Vec<_> = fs::read_dir(&store_dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "exactly the one path, no temp dirs left");
    s.ok(&["verify", "--all"]);
}

#[test]
fn leftovers_of_a_killed_run_are_cleaned() {
    let s = TestStore::new();
    s.ok(&["init"]);
    let store_dir = s.root().join("ix/store");
    // A temp dir of a dead process, made read-only like a half-canonicalised tree.
    let stale = store_dir.join(".tmp-4194303-0-0");
    fs::create_dir_all(stale.join("out/sub")).unwrap();
    fs::write(stale.join("out/sub/f"), "partial").unwrap();
    fs::set_permissions(stale.join("out/sub"), fs::Permissions::from_mode(0o555)).unwrap();
    // Its owner created (and locked) this before the dir; the owner is gone.
    fs::write(s.root().join("ix/var/temproots/.tmp-4194303-0-0.lock"), b"").unwrap();
    // A renamed but unregistered path (killed between rename and register).
    let f = s.scratch().join("late.txt");
    fs::write(&f, "late").unwrap();
    let p = s.ok(&["add", f.to_str().unwrap()]).trim().to_owned();
    assert!(!stale.exists(), "stale temp dir removed");
    // Simulate the crash window for `p`: unregister it but keep the files, with garbage.
    let db = s.root().join("ix/var/db/store.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM valid_paths", []).unwrap();
    drop(conn);
    let real = s.real(&p);
    fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&real, "garbage").unwrap();
    assert_eq!(s.ok(&["add", f.to_str().unwrap()]).trim(), p);
    s.ok(&["verify", &p]);
}

/// Runs the binary as an unprivileged user: as is when we are not root, else through
/// `setpriv` as nobody (`None` if that is not possible here). HOME is `home`,
/// XDG_DATA_HOME `data` if given; no STORE_* variable leaks in.
fn unprivileged(
    args: &[&str],
    home: &std::path::Path,
    data: Option<&std::path::Path>,
) -> Option<std::process::Output> {
    let bin = env!("CARGO_BIN_EXE_store");
    let drop = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let can_drop = std::process::Command::new("setpriv")
            .args(drop)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
        if !can_drop {
            return None;
        }
        let mut c = std::process::Command::new("setpriv");
        c.args(drop).arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    };
    for var in common::STORE_ENV {
        cmd.env_remove(var);
    }
    match data {
        Some(d) => cmd.env("XDG_DATA_HOME", d),
        None => cmd.env_remove("XDG_DATA_HOME"),
    };
    cmd.args(args).env("HOME", home);
    Some(cmd.output().unwrap())
}

#[test]
fn adding_a_directory_works_without_root() {
    // Moving a read-only (canonical) directory into the store dir needs it writable for a
    // moment unless we are root; the result must still be canonical.
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let tree = tmp.path().join("t");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/f"), "hi\n").unwrap();
    for p in [tree.clone(), tree.join("sub")] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let root = tmp.path().join("r");
    let (root_s, tree_s) = (root.to_str().unwrap(), tree.to_str().unwrap());
    let nowhere = std::path::Path::new("/nonexistent");
    let Some(out) = unprivileged(&["--root", root_s, "add", tree_s], nowhere, None) else {
        eprintln!("\n*** SKIPPED adding_a_directory_works_without_root: no setpriv ***\n");
        return;
    };
    assert_success(&out, "add as an unprivileged user");
    let logical = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let real = root.join(logical.trim_start_matches('/'));
    for p in [real.clone(), real.join("sub")] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime()),
            (0o555, 1),
            "{}",
            p.display()
        );
    }
    let out = unprivileged(&["--root", root_s, "verify", "--all"], nowhere, None).unwrap();
    assert_success(&out, "verify --all");
}
