//! Substitution and pushing through the real binary, on the happy paths: `store realise`
//! from the Nix 2.8 vector caches (file:// and HTTP), no network for valid paths, per-path
//! locking across concurrent processes, cache priorities, falling through to the next
//! cache, and `store copy --to` round trips (file:// and HTTP, every compression, repeated
//! and concurrent pushes) checked against Nix's cache layout.

mod common;
#[path = "common/http_server.rs"]
mod http_server;
mod substkit;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::http::Method;
use common::*;
use http_server::{Behaviour, BlockingServer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use store::format::closure_index::ClosureIndex;
use store::format::hash::Hash;
use store::format::keys::{PublicKey, TrustedKeys};
use store::format::narinfo::NarInfo;
use substkit::*;

// ---------------------------------------------------------------------------------------
// Realising from the vector caches

#[test]
fn realises_vector_closure_from_each_file_cache() {
    for c in ["none", "xz", "zstd"] {
        let s = nix_store();
        let url = file_url(&vector_cache(c));
        let report = realise(&s, &url, &test_public_key(), &[ROOT], &[]);
        assert_eq!(report["realised"], serde_json::json!([ROOT]), "{c}");
        let subs = substituted(&report);
        assert_eq!(
            subs.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            BTreeSet::from(CLOSURE),
            "{c}: {report}"
        );
        for (p, from) in &subs {
            assert!(same_cache(from, &url), "{c}: {p} from {from}");
        }
        for e in report["substituted"].as_array().unwrap() {
            let p = e["path"].as_str().unwrap();
            assert_eq!(e["narSize"], vector_infos()[p]["narSize"], "{c}: {p}");
            assert!(e["downloadSize"].as_u64().unwrap() > 0, "{c}: {e}");
        }
        assert_vector_closure(&s);
        // Again: nothing to do, nothing substituted.
        let again = realise(&s, &url, &test_public_key(), &[ROOT], &[]);
        assert!(substituted(&again).is_empty(), "{c}: {again}");
        // Plain output is the realised paths, one a line.
        let plain = s.ok(&[
            "realise",
            "--substituters",
            &url,
            "--trusted-public-keys",
            &test_public_key(),
            ROOT,
            VEC_A,
        ]);
        assert_eq!(plain, format!("{ROOT}\n{VEC_A}\n"), "{c}");
    }
}

#[test]
fn realises_over_http_and_then_makes_no_requests() {
    let s = nix_store();
    let dir = s.scratch().join("cache");
    copy_dir(&vector_cache("zstd"), &dir);
    let http = BlockingServer::serve(&dir);
    let report = realise(&s, http.url(), &test_public_key(), &[ROOT], &[]);
    let subs = substituted(&report);
    assert_eq!(subs.len(), 3, "{report}");
    assert!(subs.values().all(|f| same_cache(f, http.url())), "{report}");
    assert_vector_closure(&s);
    // Each narinfo and each NAR was fetched exactly once.
    for (hash, url) in nar_urls(&dir) {
        assert_eq!(
            http.server.count(&Method::GET, &format!("/{hash}.narinfo")),
            1,
            "{hash}"
        );
        assert_eq!(
            http.server.count(&Method::GET, &format!("/{url}")),
            1,
            "{url}"
        );
    }
    assert!(http.paths(&Method::PUT).is_empty());

    // Valid paths cost no request at all, whether asked for directly or as members.
    http.server.clear_requests();
    let again = realise(&s, http.url(), &test_public_key(), &[ROOT], &[]);
    assert!(substituted(&again).is_empty(), "{again}");
    realise(&s, http.url(), &test_public_key(), &[VEC_B, VEC_A], &[]);
    assert_eq!(http.server.requests(), vec![], "requests for valid paths");
}

/// `copy --from` is realise restricted to one cache: valid paths cost no request either.
#[test]
fn copy_from_valid_paths_makes_no_requests() {
    let s = nix_store();
    let dir = s.scratch().join("cache");
    copy_dir(&vector_cache("none"), &dir);
    let http = BlockingServer::serve(&dir);
    let from = |path: &str| {
        s.ok(&[
            "copy",
            "--from",
            http.url(),
            "--trusted-public-keys",
            &test_public_key(),
            path,
        ])
    };
    from(ROOT);
    assert_vector_closure(&s);
    http.server.clear_requests();
    from(ROOT);
    from(VEC_A);
    assert_eq!(http.server.requests(), vec![], "requests for valid paths");
}

#[test]
fn copy_from_realises_from_that_cache() {
    let s = nix_store();
    let url = file_url(&vector_cache("xz"));
    s.ok(&[
        "copy",
        "--from",
        &url,
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]);
    assert_vector_closure(&s);
}

/// Four processes realise overlapping closures into one store at once: all succeed, and
/// thanks to the per-path locks every NAR is downloaded once in total.
#[test]
fn concurrent_realises_fetch_each_nar_once() {
    let s = nix_store();
    let dir = s.scratch().join("cache");
    copy_dir(&vector_cache("zstd"), &dir);
    let http = BlockingServer::serve(&dir);
    let urls = nar_urls(&dir);
    // Slow NARs down so that the processes really overlap.
    for url in urls.values() {
        http.server.set_behaviour(
            &format!("/{url}"),
            Behaviour::Trickle {
                chunk: 32,
                interval: Duration::from_millis(15),
            },
        );
    }
    // First a part of the closure, by one process.
    let first = realise(&s, http.url(), &test_public_key(), &[VEC_A], &[]);
    assert_eq!(substituted(&first).len(), 1, "{first}");

    let key = test_public_key();
    let asks: [&[&str]; 4] = [&[ROOT], &[VEC_B], &[ROOT, VEC_B], &[ROOT]];
    let children: Vec<_> = asks
        .iter()
        .enumerate()
        .map(|(i, paths)| {
            let mut c = s.cmd();
            c.args(["--json", "realise", "--substituters", http.url()])
                .args(["--trusted-public-keys", &key])
                .args(if i == 1 { &["-j", "1"][..] } else { &[][..] })
                .args(*paths)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut installed: BTreeMap<String, usize> = BTreeMap::new();
    for (i, out) in wait_all(children).iter().enumerate() {
        assert_success(out, &format!("process {i}"));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        for p in substituted(&report).into_keys() {
            *installed.entry(p).or_default() += 1;
        }
    }
    eprintln!(
        "root narinfo asked {} times (processes that raced for it)",
        http.server
            .count(&Method::GET, &format!("/{}.narinfo", hash_part(ROOT)))
    );
    // Each path was installed by exactly one process.
    assert_eq!(
        installed,
        BTreeMap::from([(VEC_B.to_owned(), 1), (ROOT.to_owned(), 1)]),
    );
    for (hash, url) in &urls {
        assert_eq!(
            http.server.count(&Method::GET, &format!("/{url}")),
            1,
            "NAR of {hash} fetched more than once: {:?}",
            http.nar_gets()
        );
    }
    assert_vector_closure(&s);
}

// ---------------------------------------------------------------------------------------
// Several caches

#[test]
fn priority_decides_which_cache_is_used() {
    let s0 = nix_store();
    let (da, db) = (s0.scratch().join("a"), s0.scratch().join("b"));
    copy_dir(&vector_cache("zstd"), &da);
    copy_dir(&vector_cache("none"), &db);
    let (a, b) = (BlockingServer::serve(&da), BlockingServer::serve(&db));
    for (a_prio, b_prio, winner) in [(60, 10, "b"), (10, 60, "a")] {
        a.server.clear_requests();
        b.server.clear_requests();
        let s = nix_store();
        let urls = format!(
            "{}?priority={a_prio} {}?priority={b_prio}",
            a.url(),
            b.url()
        );
        let report = realise(&s, &urls, &test_public_key(), &[ROOT], &[]);
        let (win, lose) = if winner == "a" { (&a, &b) } else { (&b, &a) };
        let subs = substituted(&report);
        assert_eq!(subs.len(), 3, "{report}");
        assert!(subs.values().all(|f| same_cache(f, win.url())), "{report}");
        assert_eq!(win.nar_gets().len(), 3, "{:?}", win.server.requests());
        // The other cache was opened and asked for the root's closure index (every cache
        // is, at once), but for no narinfo and no NAR.
        let asked: Vec<_> = lose
            .paths(&Method::GET)
            .into_iter()
            .filter(|p| p != "/nix-cache-info" && !p.starts_with("/index/"))
            .collect();
        assert!(asked.is_empty(), "loser asked for {asked:?}");
        assert_vector_closure(&s);
    }
}

#[test]
fn a_cache_without_the_path_falls_through_to_the_next() {
    let s = nix_store();
    let (da, db) = (s.scratch().join("a"), s.scratch().join("b"));
    copy_dir(&vector_cache("zstd"), &da);
    copy_dir(&vector_cache("xz"), &db);
    fs::remove_file(da.join(format!("{}.narinfo", hash_part(ROOT)))).unwrap();
    let (a, b) = (BlockingServer::serve(&da), BlockingServer::serve(&db));
    let urls = format!("{} {}", a.url(), b.url());
    let report = realise(&s, &urls, &test_public_key(), &[ROOT], &[]);
    let subs = substituted(&report);
    assert!(same_cache(&subs[ROOT], b.url()), "{report}");
    assert!(same_cache(&subs[VEC_B], a.url()), "{report}");
    assert!(same_cache(&subs[VEC_A], a.url()), "{report}");
    assert_eq!(a.nar_gets().len(), 2);
    assert_eq!(b.nar_gets().len(), 1);
    assert_vector_closure(&s);
}

#[test]
fn a_broken_cache_falls_through_to_the_next() {
    let s0 = nix_store();
    let (da, db) = (s0.scratch().join("a"), s0.scratch().join("b"));
    copy_dir(&vector_cache("zstd"), &da);
    copy_dir(&vector_cache("none"), &db);
    let (a, b) = (BlockingServer::serve(&da), BlockingServer::serve(&db));
    let config = s0.scratch().join("fast.toml");
    fs::write(&config, "download-attempts = 2\n").unwrap();
    let config = config.to_str().unwrap();
    let urls = format!("{} {}", a.url(), b.url());

    // 1. Everything of the first cache answers 500: it is skipped as a whole.
    let mut all = vec!["/nix-cache-info".to_owned()];
    for (hash, url) in nar_urls(&da) {
        all.push(format!("/{hash}.narinfo"));
        all.push(format!("/{url}"));
    }
    for p in &all {
        a.server.set_behaviour(p, Behaviour::Status(500));
    }
    let s = nix_store();
    let report = realise(
        &s,
        &urls,
        &test_public_key(),
        &[ROOT],
        &["--config", config],
    );
    assert!(
        substituted(&report)
            .values()
            .all(|f| same_cache(f, b.url())),
        "{report}"
    );
    assert!(a.nar_gets().is_empty());
    assert_vector_closure(&s);

    // 2. Only the NARs fail (after the narinfos were found): each path falls through.
    a.server.clear_behaviours();
    a.server.clear_requests();
    b.server.clear_requests();
    for url in nar_urls(&da).values() {
        a.server
            .set_behaviour(&format!("/{url}"), Behaviour::Status(503));
    }
    let s = nix_store();
    let report = realise(
        &s,
        &urls,
        &test_public_key(),
        &[ROOT],
        &["--config", config],
    );
    assert!(
        substituted(&report)
            .values()
            .all(|f| same_cache(f, b.url())),
        "{report}"
    );
    // The first cache was tried (and retried) for each NAR.
    for url in nar_urls(&da).values() {
        assert!(
            a.server.count(&Method::GET, &format!("/{url}")) >= 2,
            "{url}"
        );
    }
    assert_eq!(b.nar_gets().len(), 3);
    assert_vector_closure(&s);

    // 3. The first cache is down (nothing listens): skipped too.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = nix_store();
    let urls = format!("{dead} {}", b.url());
    let report = realise(
        &s,
        &urls,
        &test_public_key(),
        &[ROOT],
        &["--config", config],
    );
    assert!(
        substituted(&report)
            .values()
            .all(|f| same_cache(f, b.url())),
        "{report}"
    );
    assert_vector_closure(&s);
}

// ---------------------------------------------------------------------------------------
// Pushing

fn decompress(label: &str, data: &[u8]) -> Vec<u8> {
    match label {
        "none" => data.to_vec(),
        "zstd" => zstd::stream::decode_all(data).unwrap(),
        "xz" => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(data), &mut out).unwrap();
            out
        }
        other => panic!("unexpected compression {other}"),
    }
}

fn extension(label: &str) -> &'static str {
    match label {
        "none" => ".nar",
        "zstd" => ".nar.zst",
        "xz" => ".nar.xz",
        other => panic!("unexpected compression {other}"),
    }
}

/// A cache written by `copy --to` has Nix's layout: `nix-cache-info`, one
/// `<hash>.narinfo` per path with the vector metadata, `URL: nar/<FileHash>.nar…`,
/// matching FileHash/FileSize, NAR bytes equal to Nix's, a valid signature by `key` and the
/// cache's original one, the root's closure index holding the narinfos verbatim, and no
/// stray files.
fn check_pushed_cache(dir: &Path, compression: &str, key: &Key) {
    let info = fs::read_to_string(dir.join("nix-cache-info")).unwrap();
    assert!(info.contains("StoreDir: /nix/store\n"), "{info}");
    let want = vector_infos();
    let ours = TrustedKeys::from_keys([PublicKey::parse(&key.public).unwrap()]).unwrap();
    let theirs = TrustedKeys::parse_list(&test_public_key()).unwrap();
    let mut expected_files = BTreeSet::from(["nix-cache-info".to_owned()]);
    for path in CLOSURE {
        let hash = hash_part(path);
        let name = format!("{hash}.narinfo");
        expected_files.insert(name.clone());
        let text = fs::read_to_string(dir.join(&name)).unwrap();
        let ni = NarInfo::parse(&text, &nix_dir()).unwrap();
        assert_eq!(nix_dir().display_path(ni.store_path()), path);
        let w = &want[path];
        assert_eq!(
            ni.nar_hash().to_sri(),
            w["narHash"].as_str().unwrap(),
            "{path}"
        );
        assert_eq!(ni.nar_size(), w["narSize"].as_u64().unwrap(), "{path}");
        let refs: Vec<String> = ni
            .references()
            .iter()
            .map(|r| nix_dir().display_path(r))
            .collect();
        assert_eq!(serde_json::json!(refs), w["references"], "{path}");
        assert_eq!(ni.compression(), Some(compression), "{path}");
        let file_hash = ni.file_hash().expect("FileHash");
        assert_eq!(
            ni.url(),
            format!("nar/{}{}", file_hash.to_nix32(), extension(compression)),
            "{path}"
        );
        expected_files.insert(ni.url().to_owned());
        let data = fs::read(dir.join(ni.url())).unwrap();
        assert_eq!(Some(data.len() as u64), ni.file_size(), "{path}");
        assert_eq!(
            file_hash,
            &Hash::sha256(Sha256::digest(&data).into()),
            "{path}"
        );
        // The NAR is byte for byte Nix's.
        let nar = decompress(compression, &data);
        let nix_nar =
            fs::read(vector_cache("none").join(format!("nar/{}.nar", ni.nar_hash().to_nix32())))
                .unwrap();
        assert!(nar == nix_nar, "{path}: NAR differs from Nix's");
        assert!(
            ni.verify(&ours, &nix_dir()).unwrap(),
            "{path}: our signature"
        );
        assert!(
            ni.verify(&theirs, &nix_dir()).unwrap(),
            "{path}: kept signature"
        );
        assert_eq!(ni.sigs().len(), 2, "{path}");
        if compression == "none" {
            // Nix's own uncompressed narinfo is ours minus our signature, byte for byte.
            let nix_text = fs::read_to_string(vector_cache("none").join(&name)).unwrap();
            let without_ours: String = text
                .lines()
                .filter(|l| {
                    !l.starts_with(&format!("Sig: {}:", key.public.split(':').next().unwrap()))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(without_ours, nix_text, "{path}");
        }
    }
    // The root's closure index (store-format.md §7.6): every narinfo, byte for byte.
    let index = format!("index/{}.closure", hash_part(ROOT));
    let decoded = ClosureIndex::decode(&fs::read(dir.join(&index)).unwrap()).unwrap();
    let entries: BTreeSet<Vec<u8>> = decoded.entries().map(<[u8]>::to_vec).collect();
    let narinfos: BTreeSet<Vec<u8>> = CLOSURE
        .iter()
        .map(|p| fs::read(dir.join(format!("{}.narinfo", hash_part(p)))).unwrap())
        .collect();
    assert_eq!((decoded.len(), entries), (3, narinfos));
    expected_files.insert(index);
    // Nothing else but (possibly empty) directories.
    let mut found = BTreeSet::new();
    collect_files(dir, dir, &mut found);
    assert_eq!(found, expected_files, "files in {}", dir.display());
}

fn collect_files(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            collect_files(base, &e.path(), out);
        } else {
            let rel = e
                .path()
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel);
        }
    }
}

fn push(s: &TestStore, url: &str, key: &Key, compression: &str) -> Value {
    let out = s.ok(&[
        "--json",
        "copy",
        "--to",
        url,
        "--secret-key-file",
        key.secret.to_str().unwrap(),
        "--compression",
        compression,
        ROOT,
    ]);
    serde_json::from_str(&out).unwrap()
}

fn json_paths(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            _ => e["path"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[test]
fn push_to_file_caches_round_trips() {
    let src = source_store();
    let key = generate_key(&src, "test-push-1");
    for compression in ["zstd", "xz", "none"] {
        let dir = src.scratch().join(format!("pushed-{compression}"));
        let url = file_url(&dir);
        let report = push(&src, &url, &key, compression);
        assert_eq!(
            json_paths(&report["uploaded"]),
            CLOSURE.iter().map(|p| p.to_string()).collect(),
            "{report}"
        );
        assert!(json_paths(&report["alreadyPresent"]).is_empty(), "{report}");
        for u in report["uploaded"].as_array().unwrap() {
            assert!(u["fileSize"].as_u64().unwrap() > 0, "{u}");
        }
        check_pushed_cache(&dir, compression, &key);

        // Another store, trusting only the new key, substitutes from it.
        let dst = nix_store();
        let r = realise(&dst, &url, &key.public, &[ROOT], &[]);
        assert_eq!(substituted(&r).len(), 3, "{r}");
        let got = path_info(&dst, ROOT);
        let want = vector_infos();
        for info in &got {
            let p = info["path"].as_str().unwrap();
            assert_eq!(info["narHash"], want[p]["narHash"], "{p}");
            assert_eq!(info["narSize"], want[p]["narSize"], "{p}");
        }
        dst.ok(&["verify", "--all"]);

        // Pushing again uploads nothing.
        let again = push(&src, &url, &key, compression);
        assert!(json_paths(&again["uploaded"]).is_empty(), "{again}");
        assert_eq!(json_paths(&again["alreadyPresent"]).len(), 3, "{again}");
        check_pushed_cache(&dir, compression, &key);
    }
}

#[test]
fn push_to_http_round_trips_and_uploads_only_once() {
    let src = source_store();
    let key = generate_key(&src, "test-push-http-1");
    let dir = src.scratch().join("http-cache");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let http = BlockingServer::serve(&dir);
    let report = push(&src, http.url(), &key, "zstd");
    assert_eq!(json_paths(&report["uploaded"]).len(), 3, "{report}");

    // Every object went up once; a narinfo only after its NAR and its references'
    // narinfos.
    let puts = http.paths(&Method::PUT);
    let position = |p: &str| {
        puts.iter()
            .position(|q| q == p)
            .unwrap_or_else(|| panic!("no PUT of {p}: {puts:?}"))
    };
    assert_eq!(puts.len(), 7, "{puts:?}");
    // The closure index goes up last, once every narinfo is in.
    assert_eq!(puts[6], format!("/index/{}.closure", hash_part(ROOT)));
    let urls = nar_urls(&dir);
    let infos = vector_infos();
    for path in CLOSURE {
        let hash = hash_part(path);
        let narinfo = position(&format!("/{hash}.narinfo"));
        assert!(position(&format!("/{}", urls[hash])) < narinfo, "{puts:?}");
        for r in infos[path]["references"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            if r != path {
                assert!(
                    position(&format!("/{}.narinfo", hash_part(r))) < narinfo,
                    "{puts:?}"
                );
            }
        }
    }
    // Uploads carry Nix's content types.
    for r in http.server.recorded() {
        if r.method == Method::PUT {
            let ct = r
                .headers
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if r.path.ends_with(".narinfo") {
                assert_eq!(ct, "text/x-nix-narinfo");
            } else if r.path.starts_with("/index/") {
                assert_eq!(ct, "application/zstd");
            } else {
                assert_eq!(ct, "application/x-nix-nar");
            }
        }
    }
    check_pushed_cache(&dir, "zstd", &key);

    // A second push only asks (HEAD, the narinfos and the root's index) and uploads
    // nothing.
    http.server.clear_requests();
    let again = push(&src, http.url(), &key, "zstd");
    assert!(json_paths(&again["uploaded"]).is_empty(), "{again}");
    for (m, p) in http.server.requests() {
        assert!(
            m == Method::HEAD || (m == Method::GET && p == "/nix-cache-info"),
            "second push made {m} {p}"
        );
    }
    assert_eq!(http.paths(&Method::HEAD).len(), 4);

    // And it substitutes into a store trusting only the new key.
    let dst = nix_store();
    let r = realise(&dst, http.url(), &key.public, &[ROOT], &[]);
    assert_eq!(substituted(&r).len(), 3, "{r}");
    dst.ok(&["verify", "--all"]);
}

/// A cache being pushed by three processes at once ends up correct.
#[test]
fn concurrent_pushes_leave_a_correct_cache() {
    let src = source_store();
    let key = generate_key(&src, "test-push-concurrent-1");
    // file://
    let dir = src.scratch().join("shared");
    let url = file_url(&dir);
    let spawn = |url: &str| {
        let mut c = src.cmd();
        c.args(["--json", "copy", "--to", url, "--secret-key-file"])
            .arg(&key.secret)
            .arg(ROOT)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let outs = wait_all((0..3).map(|_| spawn(&url)).collect());
    for (i, out) in outs.iter().enumerate() {
        assert_success(out, &format!("push {i}"));
    }
    check_pushed_cache(&dir, "zstd", &key);
    let dst = nix_store();
    realise(&dst, &url, &key.public, &[ROOT], &[]);
    dst.ok(&["verify", "--all"]);

    // http://
    let hdir = src.scratch().join("shared-http");
    fs::create_dir_all(&hdir).unwrap();
    fs::write(hdir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let http = BlockingServer::serve(&hdir);
    let outs = wait_all((0..3).map(|_| spawn(http.url())).collect());
    for (i, out) in outs.iter().enumerate() {
        assert_success(out, &format!("http push {i}"));
    }
    check_pushed_cache(&hdir, "zstd", &key);
    let dst = nix_store();
    realise(&dst, http.url(), &key.public, &[ROOT], &[]);
    dst.ok(&["verify", "--all"]);
}

/// A private cache: pushing and substituting with a bearer token from the config file;
/// without it, both fail cleanly.
#[test]
fn private_http_cache_with_a_bearer_token() {
    let src = source_store();
    let key = generate_key(&src, "test-private-1");
    let dir = src.scratch().join("private");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let http = BlockingServer::serve(&dir);
    http.server
        .require_authorization(Some("Bearer s3cret-token"));
    let config = src.scratch().join("private.toml");
    fs::write(&config, "bearer-token = \"s3cret-token\"\n").unwrap();
    let config = config.to_str().unwrap();

    let err = src.fails(&[
        "copy",
        "--to",
        http.url(),
        "--secret-key-file",
        key.secret.to_str().unwrap(),
        ROOT,
    ]);
    assert!(err.contains("error:") && !err.contains("s3cret"), "{err}");
    // Without credentials the cache looks empty (401 = absent, as in Nix), so creating its
    // nix-cache-info is attempted, and refused; nothing else is uploaded.
    assert!(
        http.paths(&Method::PUT)
            .iter()
            .all(|p| p == "/nix-cache-info"),
        "{:?}",
        http.paths(&Method::PUT)
    );

    src.ok(&[
        "--config",
        config,
        "copy",
        "--to",
        http.url(),
        "--secret-key-file",
        key.secret.to_str().unwrap(),
        ROOT,
    ]);
    check_pushed_cache(&dir, "zstd", &key);

    let dst = nix_store();
    let err = dst.fails(&[
        "realise",
        "--substituters",
        http.url(),
        "--trusted-public-keys",
        &key.public,
        ROOT,
    ]);
    assert!(err.contains("error:") && !err.contains("s3cret"), "{err}");
    let r = realise(
        &dst,
        http.url(),
        &key.public,
        &[ROOT],
        &["--config", config],
    );
    assert_eq!(substituted(&r).len(), 3, "{r}");
    dst.ok(&["verify", "--all"]);
}
