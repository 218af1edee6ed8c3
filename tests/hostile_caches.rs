//! Hostile and broken binary caches, through the real binary. Every case must be refused
//! with one clear error naming the path and the reason (non-zero exit, no panic), and must
//! leave no trace: the path is not registered and nothing of it (nor any `.tmp-*` dir) is
//! left in the physical store dir. Covers bad, missing and untrusted signatures, narinfos
//! for other paths, missing closure members (refused before any NAR is requested), NARs
//! that do not match their narinfo, malicious NARs (traversal names, symlink tricks, the
//! Nix 2.8 negative NAR vectors), a decompression bomb, and servers that hang, stall or
//! drop the connection; plus falling through from a hostile cache to a good one.

mod common;
mod hostile;
#[path = "common/http_server.rs"]
mod http_server;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use common::*;
use hostile::*;
use http_server::{Behaviour, BlockingServer};
use serde_json::Value;
use store::format::keys::SecretKey;

// ---------------------------------------------------------------------------------------
// Signatures and narinfos (refused while planning: no NAR is touched)

#[test]
fn untrusted_narinfos_are_refused() {
    let cases = [
        ("negative/unsigned", "no signature by a trusted key"),
        ("negative/bad-signature", "no signature by a trusted key"),
        (
            "negative/wrong-key-same-name",
            "no signature by a trusted key",
        ),
        ("negative/unknown-key-name", "no signature by a trusted key"),
        (
            "negative/bad-narhash-unsigned-edit",
            "no signature by a trusted key",
        ),
    ];
    for (rel, reason) in cases {
        let s = nix_store();
        let url = file_url(&fixture(rel));
        let msg = refused(&s, &url, &test_public_key(), &[ROOT], &[]);
        assert_mentions(&msg, &[ROOT, reason, "nothing was downloaded"]);
        // Planning failed, so not even the good members were fetched.
        assert_only_valid(&s, &[]);
    }
}

#[test]
fn signature_by_an_untrusted_key_is_refused() {
    let s = nix_store();
    let other = SecretKey::generate("someone-else-1").unwrap().to_public();
    let url = file_url(&fixture("caches/none"));
    let msg = refused(&s, &url, &other.to_string(), &[ROOT], &[]);
    // The root is untrusted, so its (unsigned) references are not even looked at.
    assert_mentions(&msg, &[ROOT, "no signature by a trusted key"]);
    assert_only_valid(&s, &[]);
    // No trusted keys at all is refused too.
    let msg = refused(&s, &url, "", &[ROOT], &[]);
    assert_mentions(&msg, &[ROOT, "trusted"]);
    assert_only_valid(&s, &[]);
}

/// A malformed signature under a trusted key name (bad base64, wrong length).
#[test]
fn corrupted_signatures_are_refused() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/none");
    let good = fs::read_to_string(narinfo_file(&dir, ROOT)).unwrap();
    for bad_sig in ["test-cache-1:!!!notbase64!!!", "test-cache-1:AAAA"] {
        let text: String = good
            .lines()
            .map(|l| {
                if l.starts_with("Sig: ") {
                    format!("Sig: {bad_sig}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(narinfo_file(&dir, ROOT), text).unwrap();
        let msg = refused(&s, &file_url(&dir), &test_public_key(), &[ROOT], &[]);
        assert_mentions(&msg, &[ROOT, "signature"]);
        assert_only_valid(&s, &[]);
    }
}

#[test]
fn narinfo_for_another_path_is_refused() {
    let s = nix_store();
    let key = test_secret_key();

    // Same hash part, other name, validly signed for what it claims.
    let dir = cache_copy(&s, "caches/none");
    let mut info = read_narinfo(&dir, ROOT);
    let impostor = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-evil";
    info.set_store_path(store_path(impostor));
    info.clear_sigs();
    info.sign(&key, &nix_dir());
    write_narinfo(&dir, ROOT, &info);
    let msg = refused(&s, &file_url(&dir), &test_public_key(), &[ROOT], &[]);
    assert_mentions(&msg, &[ROOT, impostor]);
    assert_only_valid(&s, &[]);
    assert_absent(&s, impostor);

    // Another path altogether (vec-b's genuine, signed narinfo served for vec-c).
    let dir = cache_copy(&s, "caches/none");
    let b = fs::read(narinfo_file(&dir, VEC_B)).unwrap();
    fs::write(narinfo_file(&dir, ROOT), b).unwrap();
    let msg = refused(&s, &file_url(&dir), &test_public_key(), &[ROOT], &[]);
    assert_mentions(&msg, &[ROOT, hash_part(VEC_B)]);
    assert_only_valid(&s, &[]);

    // The same over HTTP.
    let http = BlockingServer::serve(&dir);
    let msg = refused(&s, http.url(), &test_public_key(), &[ROOT], &[]);
    assert_mentions(&msg, &[ROOT, hash_part(VEC_B)]);
    assert!(
        http.nar_requests().is_empty(),
        "{:?}",
        http.server.requests()
    );
    assert_only_valid(&s, &[]);
}

/// A closure member that no cache has, or that is untrusted, fails the whole realise
/// before any NAR is requested, and the error names that member.
#[test]
fn missing_or_untrusted_closure_member_fails_before_any_nar_request() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/zstd");
    fs::remove_file(narinfo_file(&dir, VEC_B)).unwrap();
    let http = BlockingServer::serve(&dir);
    let msg = refused(&s, http.url(), &test_public_key(), &[ROOT], &[]);
    assert_mentions(&msg, &[VEC_B, "not found", "nothing was downloaded"]);
    assert!(
        http.nar_requests().is_empty(),
        "NARs requested: {:?}",
        http.server.requests()
    );
    assert!(http
        .server
        .requests()
        .iter()
        .all(|(m, _)| *m == Method::GET || *m == Method::HEAD));
    assert_only_valid(&s, &[]);

    // An unsigned member instead of a missing one.
    let unsigned: String =
        fs::read_to_string(fixture("caches/zstd").join(format!("{}.narinfo", hash_part(VEC_B))))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("Sig:"))
            .map(|l| format!("{l}\n"))
            .collect();
    fs::write(narinfo_file(&dir, VEC_B), unsigned).unwrap();
    http.server.clear_requests();
    // --refresh: the absence seen above is remembered for an hour otherwise.
    let msg = refused(&s, http.url(), &test_public_key(), &[ROOT], &["--refresh"]);
    assert_mentions(&msg, &[VEC_B, "no signature by a trusted key"]);
    assert!(
        !msg.contains(&format!("{ROOT}:")),
        "only vec-b is at fault: {msg}"
    );
    assert!(
        http.nar_requests().is_empty(),
        "{:?}",
        http.server.requests()
    );
    assert_only_valid(&s, &[]);
}

// ---------------------------------------------------------------------------------------
// NARs that do not match their (signed) narinfo

#[test]
fn nar_not_matching_its_narinfo_is_refused() {
    let cases = [
        ("negative/bad-narhash", "hash mismatch"),
        ("negative/nar-content-corrupted", "hash mismatch"),
        ("negative/bad-narsize", "size mismatch"),
        ("negative/missing-nar", "does not exist"),
    ];
    for (rel, reason) in cases {
        for (mode, text) in FETCH_MODES {
            let s = nix_store();
            let config = config_file(&s, text);
            let msg = refused(
                &s,
                &file_url(&fixture(rel)),
                &test_public_key(),
                &[ROOT],
                &["--config", &config],
            );
            assert_mentions(&msg, &[ROOT, reason]);
            // The genuine references were substituted; the root left no trace.
            assert_only_valid(&s, &[VEC_A, VEC_B]);
            eprintln!("{rel} ({mode}): refused");
        }
    }
}

/// NarSize smaller than the NAR (re-signed): the stream is cut off and refused.
#[test]
fn nar_longer_than_its_narsize_is_refused() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/none");
    let mut info = read_narinfo(&dir, ROOT);
    info.set_nar(*info.nar_hash(), info.nar_size() - 8).unwrap();
    info.clear_sigs();
    info.sign(&test_secret_key(), &nix_dir());
    write_narinfo(&dir, ROOT, &info);
    for (_, text) in FETCH_MODES {
        let config = config_file(&s, text);
        let extra = ["--config", config.as_str()];
        let msg = refused(&s, &file_url(&dir), &test_public_key(), &[ROOT], &extra);
        assert_mentions(&msg, &[ROOT, "size mismatch"]);
        assert_only_valid(&s, &[VEC_A, VEC_B]);
    }
}

#[test]
fn truncated_nars_are_refused() {
    for (_, text) in FETCH_MODES {
        truncated_nars_are_refused_when(text);
    }
}

fn truncated_nars_are_refused_when(mode: &str) {
    // 1. The narinfo is genuine, the server sends a short NAR.
    let s = nix_store();
    let config = config_file(&s, mode);
    let extra = ["--config", config.as_str()];
    let dir = cache_copy(&s, "caches/none");
    let info = read_narinfo(&dir, ROOT);
    let nar = fs::read(dir.join(info.url())).unwrap();
    let http = BlockingServer::serve(&dir);
    http.server.set_behaviour(
        &format!("/{}", info.url()),
        Behaviour::Body(Bytes::copy_from_slice(&nar[..nar.len() / 2])),
    );
    let msg = refused(&s, http.url(), &test_public_key(), &[ROOT], &extra);
    assert_mentions(&msg, &[ROOT]);
    assert_only_valid(&s, &[VEC_A, VEC_B]);

    // 2. The narinfo is re-signed for the truncated bytes: only the NAR parser can
    // notice.
    let s = nix_store();
    let config = config_file(&s, mode);
    let extra = ["--config", config.as_str()];
    let dir = empty_cache(&s, "truncated");
    let victim = made_up_path("truncated");
    let full = regular_file_nar("hello, world\n");
    publish_nar(&dir, &victim, &full[..full.len() - 16]);
    let msg = refused(&s, &file_url(&dir), &test_public_key(), &[&victim], &extra);
    assert_mentions(&msg, &[&victim]);
    assert_absent(&s, &victim);
}

/// The signature does not cover `URL:`, so a cache can point it anywhere. Keys outside
/// the cache are refused even though following them would find the genuine NAR.
#[test]
fn nar_urls_outside_the_cache_are_refused() {
    let s = nix_store();
    let base = s.scratch().join("outer");
    let dir = base.join("cache");
    copy_dir(&fixture("caches/none"), &dir);
    let genuine = read_narinfo(&dir, ROOT);
    let nar = fs::read(dir.join(genuine.url())).unwrap();
    fs::write(base.join("outside.nar"), &nar).unwrap();
    let abs = base.join("outside.nar");
    let urls = [
        "../outside.nar".to_owned(),
        "nar/../../outside.nar".to_owned(),
        abs.to_str().unwrap().to_owned(),
        format!("file://{}", abs.display()),
        "http://127.0.0.1:9/nar/x.nar".to_owned(),
    ];
    for url in &urls {
        let text: String =
            fs::read_to_string(fixture("caches/none").join(format!("{}.narinfo", hash_part(ROOT))))
                .unwrap()
                .lines()
                .map(|l| {
                    if l.starts_with("URL: ") {
                        format!("URL: {url}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
        fs::write(narinfo_file(&dir, ROOT), text).unwrap();
        let msg = refused(&s, &file_url(&dir), &test_public_key(), &[ROOT], &[]);
        assert_mentions(&msg, &[ROOT]);
        assert_absent(&s, ROOT);
    }
}

/// Issue 13: harmonia writes `URL: nar/<hash>.nar?hash=<hash>`, which Nix accepts. The
/// query is sent to an HTTP cache; a `file://` cache reads the file `nar/<hash>.nar`.
#[test]
fn nar_urls_with_a_query_substitute_from_file_and_http_caches() {
    for over_http in [false, true] {
        let s = nix_store();
        let dir = cache_copy(&s, "caches/none");
        let mut wanted = Vec::new();
        for p in CLOSURE {
            let mut info = read_narinfo(&dir, p);
            let query = format!("hash={}", hash_part(p));
            wanted.push((format!("/{}", info.url()), query.clone()));
            info.set_url(&format!("{}?{query}", info.url())).unwrap();
            write_narinfo(&dir, p, &info);
        }
        let http = over_http.then(|| BlockingServer::serve(&dir));
        let url = http
            .as_ref()
            .map_or_else(|| file_url(&dir), |h| h.url().to_owned());
        let key = test_public_key();
        s.ok(&[
            "realise",
            "--substituters",
            &url,
            "--trusted-public-keys",
            &key,
            ROOT,
        ]);
        assert_only_valid(&s, &CLOSURE);
        if let Some(h) = &http {
            let mut sent: Vec<(String, String)> = h
                .server
                .recorded()
                .into_iter()
                .filter(|r| r.path.starts_with("/nar/"))
                .map(|r| (r.path, r.query.unwrap_or_default()))
                .collect();
            sent.sort();
            wanted.sort();
            assert_eq!(sent, wanted, "each NAR fetched once, with its query");
        }
    }
}

/// Absolute URLs are refused even when they point into the cache itself (the `URL:` is
/// not signed; see store-format.md §7), and so are fragments and escapes behind a query.
#[test]
fn absolute_and_fragment_nar_urls_are_refused() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/none");
    let http = BlockingServer::serve(&dir);
    let genuine = read_narinfo(&dir, ROOT).url().to_owned();
    let urls = [
        format!("{}/{genuine}", http.url()),
        format!("{}/{genuine}?hash=x", http.url()),
        format!("{genuine}#x"),
        format!("{genuine}?hash=x#y"),
        format!("../cache/{genuine}?hash=x"),
        "?hash=x".to_owned(),
    ];
    for url in &urls {
        let mut info = read_narinfo(&dir, ROOT);
        info.set_url(url).unwrap();
        write_narinfo(&dir, ROOT, &info);
        for cache in [http.url().to_owned(), file_url(&dir)] {
            let msg = refused(&s, &cache, &test_public_key(), &[ROOT], &[]);
            assert_mentions(&msg, &[ROOT]);
            assert_absent(&s, ROOT);
        }
    }
    assert!(http.nar_gets().is_empty(), "{:?}", http.nar_gets());
}

// ---------------------------------------------------------------------------------------
// Malicious NARs, correctly signed

/// The NARs that try to write outside their store path: a `..` entry, names with `/`, a
/// symlink followed by a directory (or file) of the same name.
#[test]
fn escaping_nars_are_refused() {
    let s = nix_store();
    let victim_dir = s.scratch().join("victim");
    fs::create_dir_all(&victim_dir).unwrap();
    let victim_file = s.scratch().join("victim-file");
    fs::write(&victim_file, b"original").unwrap();
    let vd = victim_dir.to_str().unwrap().to_owned();
    let vf = victim_file.to_str().unwrap().to_owned();
    let file_entry = |name: &str| -> Vec<String> {
        [
            "entry", "(", "name", name, "node", "(", "type", "regular", "contents", "pwned", ")",
            ")",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let symlink_entry = |name: &str, target: &str| -> Vec<String> {
        [
            "entry", "(", "name", name, "node", "(", "type", "symlink", "target", target, ")", ")",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let dir_entry = |name: &str, inner: Vec<String>| -> Vec<String> {
        let mut t: Vec<String> = ["entry", "(", "name", name, "node", "(", "type", "directory"]
            .map(str::to_owned)
            .to_vec();
        t.extend(inner);
        t.extend([")".to_owned(), ")".to_owned()]);
        t
    };
    let top_dir = |entries: Vec<Vec<String>>| -> Vec<u8> {
        let mut t: Vec<String> = ["nix-archive-1", "(", "type", "directory"]
            .map(str::to_owned)
            .to_vec();
        t.extend(entries.into_iter().flatten());
        t.push(")".to_owned());
        nar_tokens(&t.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", top_dir(vec![file_entry("..")])),
        ("dot", top_dir(vec![file_entry(".")])),
        ("slash-up", top_dir(vec![file_entry("../../../../escaped")])),
        (
            "slash-abs",
            top_dir(vec![file_entry("/tmp/escaped-by-nar")]),
        ),
        (
            "symlink-then-dir",
            top_dir(vec![
                symlink_entry("a", &vd),
                dir_entry("a", file_entry("pwned")),
            ]),
        ),
        (
            "symlink-then-file",
            top_dir(vec![symlink_entry("a", &vf), file_entry("a")]),
        ),
        (
            "symlink-then-slash",
            top_dir(vec![symlink_entry("a", &vd), file_entry("a/pwned")]),
        ),
        (
            "nested-dotdot",
            top_dir(vec![dir_entry("d", file_entry(".."))]),
        ),
    ];
    let dir = empty_cache(&s, "escaping");
    for ((name, nar), (_, text)) in cases
        .iter()
        .flat_map(|c| FETCH_MODES.iter().map(move |m| (c, m)))
    {
        let p = made_up_path(&format!("hostile-{name}"));
        publish_nar(&dir, &p, nar);
        let config = config_file(&s, text);
        let extra = ["--config", config.as_str()];
        let msg = refused(&s, &file_url(&dir), &test_public_key(), &[&p], &extra);
        assert_mentions(&msg, &[&p]);
        assert_absent(&s, &p);
        assert_eq!(
            fs::read_dir(&victim_dir).unwrap().count(),
            0,
            "{name} wrote into the victim dir"
        );
        assert_eq!(fs::read(&victim_file).unwrap(), b"original", "{name}");
        assert!(!Path::new("/tmp/escaped-by-nar").exists(), "{name}");
        for up in [s.root(), s.dir.path().to_path_buf(), s.real("/nix")] {
            assert!(!up.join("escaped").exists(), "{name}");
            assert!(!up.join("pwned").exists(), "{name}");
        }
    }
}

/// Every hand-built NAR of the Nix 2.8 negative vectors, published with a valid
/// signature: the invalid and non-canonical ones are refused, the valid ones accepted.
#[test]
fn negative_nar_vectors_through_substitution() {
    let s = nix_store();
    let dir = empty_cache(&s, "negative-nars");
    let v = vectors();
    let cases = v["negative_nars"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let verdict = case["recommended_verdict"].as_str().unwrap();
        let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
        let nar = fs::read(fixture(file)).unwrap();
        let p = made_up_path(&format!("negative-{stem}"));
        publish_nar(&dir, &p, &nar);
        if verdict.starts_with("valid") {
            s.ok(&[
                "realise",
                "--substituters",
                &file_url(&dir),
                "--trusted-public-keys",
                &test_public_key(),
                &p,
            ]);
            s.ok(&["verify", &p]);
        } else {
            for (_, text) in FETCH_MODES {
                let config = config_file(&s, text);
                let extra = ["--config", config.as_str()];
                let msg = refused(&s, &file_url(&dir), &test_public_key(), &[&p], &extra);
                assert_mentions(&msg, &[&p]);
                assert_absent(&s, &p);
            }
        }
    }
}

/// NarSize says a few KiB; the zstd file (~tens of KiB) inflates to a NAR that claims a
/// 1 GiB file. It must be refused quickly, reading little, with bounded memory.
#[test]
fn decompression_bomb_is_refused_quickly_with_bounded_memory() {
    const GIB: usize = 1 << 30;
    let s = nix_store();
    let dir = empty_cache(&s, "bomb");
    let header = {
        let mut h = nar_tokens(&["nix-archive-1", "(", "type", "regular", "contents"]);
        h.extend_from_slice(&(GIB as u64).to_le_bytes());
        h
    };
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    enc.write_all(&header).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..GIB / zeros.len() {
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(&nar_tokens(&[")"])).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());

    let p = made_up_path("bomb");
    publish(&dir, &p, sha256(b"not this"), 4096, "zstd", &bomb);
    // Plain zeros as well (no NAR header at all).
    let q = made_up_path("bomb-zeros");
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    for _ in 0..GIB / zeros.len() {
        enc.write_all(&zeros).unwrap();
    }
    publish(
        &dir,
        &q,
        sha256(b"nor this"),
        4096,
        "zstd",
        &enc.finish().unwrap(),
    );

    for (path, (mode, text)) in [&p, &q]
        .into_iter()
        .flat_map(|p| FETCH_MODES.iter().map(move |m| (p, m)))
    {
        let config = config_file(&s, text);
        let extra = ["--config", config.as_str()];
        let (r, msg) = refused_run(&s, &file_url(&dir), &test_public_key(), &[path], &extra);
        eprintln!(
            "bomb {path} ({mode}): refused after {:?}, peak {} KiB",
            r.elapsed, r.peak_rss_kib
        );
        assert_mentions(&msg, &[path]);
        assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
        // Inflating the bomb would take far longer than this, and memory is sampled.
        assert!(
            r.peak_rss_kib < 200 * 1024,
            "peak memory {} MiB",
            r.peak_rss_kib / 1024
        );
        assert_absent(&s, path);
    }
}

// ---------------------------------------------------------------------------------------
// Misbehaving servers

fn nar_url(dir: &Path, logical: &str) -> String {
    format!("/{}", read_narinfo(dir, logical).url())
}

#[test]
fn hanging_server_fails_cleanly_within_the_timeouts() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/none");
    let http = BlockingServer::serve(&dir);
    let url = nar_url(&dir, VEC_A);
    http.server.set_behaviour(&url, Behaviour::Hang);
    let config = config_file(&s, "stalled-download-timeout = 2\ndownload-attempts = 2\n");
    let (r, msg) = refused_run(
        &s,
        http.url(),
        &test_public_key(),
        &[ROOT],
        &["--config", &config],
    );
    eprintln!(
        "hang: refused after {:?} and {} GETs",
        r.elapsed,
        http.server.count(&Method::GET, &url)
    );
    assert!(r.elapsed < Duration::from_secs(25), "took {:?}", r.elapsed);
    assert_mentions(&msg, &[VEC_A]);
    assert!(http.server.count(&Method::GET, &url) >= 2);
    assert_only_valid(&s, &[]);
}

#[test]
fn stalling_server_fails_cleanly_within_the_timeouts() {
    let s = nix_store();
    let dir = cache_copy(&s, "caches/none");
    let http = BlockingServer::serve(&dir);
    let url = nar_url(&dir, VEC_A);
    http.server.set_behaviour(&url, Behaviour::StallAfter(40));
    let config = config_file(&s, "stalled-download-timeout = 2\ndownload-attempts = 2\n");
    let (r, msg) = refused_run(
        &s,
        http.url(),
        &test_public_key(),
        &[ROOT],
        &["--config", &config],
    );
    assert!(r.elapsed < Duration::from_secs(25), "took {:?}", r.elapsed);
    assert_mentions(&msg, &[VEC_A]);
    assert!(http.server.count(&Method::GET, &url) >= 2);
    assert_only_valid(&s, &[]);
}

#[test]
fn dropped_connections_are_retried_then_fail_cleanly() {
    for (mode, text) in FETCH_MODES {
        let s = nix_store();
        let config = config_file(&s, text);
        let dir = cache_copy(&s, "caches/none");
        let http = BlockingServer::serve(&dir);
        let url = nar_url(&dir, VEC_A);
        http.server.set_behaviour(&url, Behaviour::DropAfter(60));
        let extra = ["--config", config.as_str()];
        let msg = refused(&s, http.url(), &test_public_key(), &[ROOT], &extra);
        assert_mentions(&msg, &[VEC_A]);
        let gets = http.server.count(&Method::GET, &url);
        assert!(
            gets >= 2,
            "{mode}: dropped download not retried ({gets} GETs)"
        );
        assert_only_valid(&s, &[]);
    }
}

#[test]
fn a_single_dropped_connection_is_retried_and_succeeds() {
    for (_, text) in FETCH_MODES {
        a_single_dropped_connection_is_retried_and_succeeds_when(text);
    }
}

fn a_single_dropped_connection_is_retried_and_succeeds_when(mode: &str) {
    let s = nix_store();
    let config = config_file(&s, mode);
    let dir = cache_copy(&s, "caches/none");
    let http = BlockingServer::serve(&dir);
    let url = nar_url(&dir, VEC_B);
    http.server
        .queue_behaviours(&url, [Behaviour::DropAfter(100), Behaviour::Normal]);
    let out = s.ok(&[
        "--json",
        "--config",
        &config,
        "realise",
        "--substituters",
        http.url(),
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["substituted"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    assert_eq!(http.server.count(&Method::GET, &url), 2);
    assert_only_valid(&s, &CLOSURE);
}

// ---------------------------------------------------------------------------------------
// Falling through from a hostile cache

#[test]
fn hostile_first_cache_falls_through_to_a_good_one() {
    for rel in [
        "negative/bad-narhash",
        "negative/nar-content-corrupted",
        "negative/missing-nar",
    ] {
        let s = nix_store();
        let bad = file_url(&fixture(rel));
        let good = file_url(&fixture("caches/none"));
        let out = s.ok(&[
            "--json",
            "realise",
            "--substituters",
            &format!("{bad} {good}"),
            "--trusted-public-keys",
            &test_public_key(),
            ROOT,
        ]);
        let report: Value = serde_json::from_str(&out).unwrap();
        let from: BTreeMap<&str, &str> = report["substituted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["path"].as_str().unwrap(), e["from"].as_str().unwrap()))
            .collect();
        assert_eq!(from.len(), 3, "{report}");
        assert_eq!(from[ROOT], good, "{rel}: {report}");
        assert_only_valid(&s, &CLOSURE);
    }

    // A signed escaping NAR in the first cache, the genuine path in the second.
    let s = nix_store();
    let first = cache_copy(&s, "caches/none");
    let evil = nar_tokens(&[
        "nix-archive-1",
        "(",
        "type",
        "directory",
        "entry",
        "(",
        "name",
        "..",
        "node",
        "(",
        "type",
        "regular",
        "contents",
        "x",
        ")",
        ")",
        ")",
    ]);
    let mut info = publish_nar(&first, VEC_A, &evil);
    // Keep vec-a's real CA and references so the narinfo is otherwise plausible.
    let genuine = read_narinfo(&fixture("caches/none"), VEC_A);
    info.set_ca(genuine.ca().copied());
    info.clear_sigs();
    info.sign(&test_secret_key(), &nix_dir());
    write_narinfo(&first, VEC_A, &info);
    let good = file_url(&fixture("caches/none"));
    s.ok(&[
        "realise",
        "--substituters",
        &format!("{} {good}", file_url(&first)),
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]);
    assert_only_valid(&s, &CLOSURE);
}
