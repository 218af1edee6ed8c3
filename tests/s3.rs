//! `s3://` caches through the real binary, against a real S3 server (s3s-fs): `copy --to`
//! and `copy --from`, `realise` and `realise --push-to`, trust, credentials that never show,
//! and eight processes pushing overlapping closures into one bucket at once.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;
mod substkit;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use s3_server::S3Server;
use store::format::narinfo::NarInfo;
use substkit::*;

/// The binary with the server's credentials in its environment.
fn with_creds(mut c: Command) -> Command {
    for (k, v) in S3Server::env() {
        c.env(k, v);
    }
    c
}

fn ok(s: &TestStore, args: &[&str]) -> String {
    let out = with_creds(s.cmd()).args(args).output().unwrap();
    assert_success(&out, args);
    String::from_utf8(out.stdout).unwrap()
}

fn fails(s: &TestStore, args: &[&str], creds: bool) -> String {
    let mut c = if creds { with_creds(s.cmd()) } else { s.cmd() };
    let out = c.args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(s3_server::SECRET_KEY), "{err}");
    err
}

/// A store holding the vector closure, and a signing key.
fn source() -> (TestStore, String, String) {
    let s = source_store();
    let key = generate_key(&s, "s3-test-1");
    let secret = key.secret.to_str().unwrap().to_owned();
    (s, secret, key.public)
}

/// `realise --json` from `url` trusting `public`, with the credentials; the report.
fn realise_s3(s: &TestStore, url: &str, public: &str, paths: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--json",
        "realise",
        "--substituters",
        url,
        "--trusted-public-keys",
        public,
    ];
    args.extend_from_slice(paths);
    serde_json::from_str(&ok(s, &args)).unwrap()
}

/// Every narinfo in `dir` has its NAR with its FileSize, and every reference a narinfo.
/// Returns the store paths.
fn check_closed(dir: &Path) -> BTreeSet<String> {
    check_cache(dir).unwrap();
    let mut paths = BTreeSet::new();
    let mut refs = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(hash) = name.strip_suffix(".narinfo") {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let ni = NarInfo::parse(&text, &nix_dir()).unwrap();
            assert_eq!(ni.store_path().hash_str(), hash);
            paths.insert(nix_dir().display_path(ni.store_path()));
            refs.extend(ni.references().iter().map(|r| nix_dir().display_path(r)));
        }
    }
    let dangling: Vec<_> = refs.difference(&paths).collect();
    assert!(
        dangling.is_empty(),
        "references without narinfo: {dangling:?}"
    );
    paths
}

#[test]
fn push_and_substitute_through_s3() {
    let Some(server) = S3Server::start("push_and_substitute_through_s3", &["nixcache"]) else {
        return;
    };
    let (src, sec, public) = source();
    let url = server.url("nixcache/team/a");
    let out = ok(
        &src,
        &[
            "--json",
            "copy",
            "--to",
            &url,
            "--secret-key-file",
            &sec,
            ROOT,
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["uploaded"].as_array().unwrap().len(), 3, "{report}");
    let bucket = server.bucket_dir("nixcache").join("team/a");
    assert_eq!(check_closed(&bucket).len(), 3);
    assert_eq!(server.pending_uploads(), Vec::<String>::new());

    // A store trusting the key substitutes the closure from the bucket.
    let dst = nix_store();
    let r = realise_s3(&dst, &url, &public, &[ROOT]);
    assert_eq!(substituted(&r).len(), 3, "{r}");
    dst.ok(&["verify", "--all"]);
    // ... and copy --from does as well.
    let dst2 = nix_store();
    ok(
        &dst2,
        &[
            "copy",
            "--from",
            &url,
            "--trusted-public-keys",
            &public,
            ROOT,
        ],
    );
    assert_vector_closure(&dst2);

    // Another key is not trusted: nothing is installed.
    let dst3 = nix_store();
    let other = "other-key-1:NYgtoruizuryolCLu5nuyeLIW7BKrpXu2BvVsMOG20A=";
    let err = fails(
        &dst3,
        &[
            "realise",
            "--substituters",
            &url,
            "--trusted-public-keys",
            other,
            ROOT,
        ],
        true,
    );
    assert!(err.contains(hash_part(ROOT)), "{err}");
    assert!(!dst3.real(ROOT).exists());
    // Without credentials the requests go unsigned, the server refuses them (403, as a
    // public bucket answers for a missing key), and the paths are missing.
    let err = fails(
        &dst3,
        &[
            "realise",
            "--substituters",
            &url,
            "--trusted-public-keys",
            &public,
            ROOT,
        ],
        false,
    );
    assert!(err.contains("error:"), "{err}");
    // A wrong secret is an error naming the bucket, never the secret.
    let mut c = dst3.cmd();
    c.env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    let out = c
        .args(["copy", "--to", &url, "--secret-key-file", &sec, ROOT])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("s3://nixcache/team/a") && !err.contains("wrong-secret"),
        "{err}"
    );
}

#[test]
fn realise_pushes_to_s3() {
    let Some(server) = S3Server::start("realise_pushes_to_s3", &["pushto"]) else {
        return;
    };
    let (_src, sec, public) = source();
    let url = server.url("pushto");
    let dst = nix_store();
    let from = file_url(&vector_cache("none"));
    let config = dst.scratch().join("config.toml");
    std::fs::write(&config, format!("secret-key-files = \"{sec}\"\n")).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "realise",
        "--substituters",
        &from,
        "--trusted-public-keys",
        &test_public_key(),
        "--push-to",
        &url,
        ROOT,
    ];
    ok(&dst, &args);
    assert_eq!(check_closed(&server.bucket_dir("pushto")).len(), 3);
    let r = realise_s3(&nix_store(), &url, &public, &[ROOT]);
    assert_eq!(substituted(&r).len(), 3, "{r}");
}

/// Eight processes push overlapping closures into one bucket at once: every push
/// succeeds, and the bucket ends complete and consistent, and substitutes.
#[test]
fn eight_pushers_of_overlapping_closures() {
    let Some(server) = S3Server::start("eight_pushers_of_overlapping_closures", &["shared"]) else {
        return;
    };
    let (src, sec, public) = source();
    let mut added = Vec::new();
    for i in 0..12 {
        let f = src.scratch().join(format!("blob-{i}"));
        let mut rng = Rng::new(i);
        // A few larger than a part, to mix multipart uploads in.
        let len = if i % 5 == 0 {
            9 << 20
        } else {
            4096 + i as usize
        };
        std::fs::write(&f, rng.bytes(len)).unwrap();
        added.push(src.ok(&["add", f.to_str().unwrap()]).trim().to_owned());
    }
    let url = server.url("shared");
    let roots = [VEC_A, VEC_B, ROOT];
    let pushers: Vec<_> = (0..8)
        .map(|i| {
            let mut c = with_creds(src.cmd());
            c.args([
                "copy",
                "--to",
                &url,
                "--secret-key-file",
                &sec,
                roots[i % 3],
            ]);
            c.args(added.iter().skip(i % 4).step_by(2));
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (i, out) in wait_all(pushers).iter().enumerate() {
        assert_success(out, &format!("pusher {i}"));
    }
    let paths = check_closed(&server.bucket_dir("shared"));
    assert_eq!(paths.len(), 3 + added.len(), "{paths:?}");
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
    let dst = nix_store();
    let mut wanted = vec![ROOT];
    wanted.extend(added.iter().map(String::as_str));
    let r = realise_s3(&dst, &url, &public, &wanted);
    assert_eq!(substituted(&r).len(), paths.len(), "{r}");
    dst.ok(&["verify", "--all"]);
}
