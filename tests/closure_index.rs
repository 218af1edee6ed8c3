//! Closure indexes (store-format.md §7.6) through the real binary and the test HTTP server:
//! a pushed chain substitutes with one index GET and its NAR GETs; a hostile index
//! (tampered, misplaced, duplicated, truncated, oversized, a zip bomb, garbage, another
//! store dir) costs at most per-path lookups, whose exact count is asserted, and never
//! admits a path a per-path lookup refuses; a cache without indexes works as before.

mod common;
#[path = "common/http_server.rs"]
mod http_server;
mod substkit;

use std::fs;
use std::path::{Path, PathBuf};

use axum::http::Method;
use common::*;
use http_server::BlockingServer;
use store::format::closure_index::{self, ClosureIndex};
use substkit::*;

const LEN: usize = 40;

/// A signed chain of `LEN` paths pushed to a file cache: the top, the public key, the
/// cache dir, and the chain's paths, top first.
struct Chain {
    _src: TestStore,
    top: String,
    key: String,
    dir: PathBuf,
    paths: Vec<String>,
}

fn chain() -> Chain {
    let src = nix_store();
    let (top, key, dir) = chain::signed_chain_cache(&src, LEN);
    let out = src.ok(&["path-info", "-r", &top]);
    let mut paths: Vec<String> = out.lines().map(str::to_owned).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(link_number(p)));
    assert_eq!(paths.len(), LEN);
    Chain {
        _src: src,
        top,
        key,
        dir,
        paths,
    }
}

/// `n` of a `…-link-n` path.
fn link_number(path: &str) -> usize {
    path.rsplit("-link-").next().unwrap().parse().unwrap()
}

fn index_file(dir: &Path, path: &str) -> PathBuf {
    dir.join(format!("index/{}.closure", hash_part(path)))
}

fn narinfo_file(dir: &Path, path: &str) -> PathBuf {
    dir.join(format!("{}.narinfo", hash_part(path)))
}

/// The entries of the index of `path` in `dir`.
fn entries(dir: &Path, path: &str) -> Vec<Vec<u8>> {
    let bytes = fs::read(index_file(dir, path)).unwrap();
    let index = ClosureIndex::decode(&bytes).unwrap();
    index.entries().map(<[u8]>::to_vec).collect()
}

fn write_index(dir: &Path, path: &str, entries: &[Vec<u8>]) {
    let packed = closure_index::encode(entries.iter().map(Vec::as_slice)).unwrap();
    fs::write(index_file(dir, path), packed).unwrap();
}

/// The narinfo text of `path` with its NarSize changed, so that no signature holds.
fn tampered(dir: &Path, path: &str) -> Vec<u8> {
    let text = fs::read_to_string(narinfo_file(dir, path)).unwrap();
    let line = text.lines().find(|l| l.starts_with("NarSize: ")).unwrap();
    let size: u64 = line["NarSize: ".len()..].parse().unwrap();
    text.replace(line, &format!("NarSize: {}", size + 1))
        .into_bytes()
}

/// What a realise over HTTP asked for: (index GETs, narinfo GETs, NAR GETs, others).
#[derive(Debug, PartialEq)]
struct Asked {
    indexes: usize,
    narinfos: usize,
    nars: usize,
    other: Vec<String>,
}

fn asked(http: &BlockingServer) -> Asked {
    let mut a = Asked {
        indexes: 0,
        narinfos: 0,
        nars: 0,
        other: Vec::new(),
    };
    for (m, p) in http.server.requests() {
        match () {
            _ if m != Method::GET => a.other.push(format!("{m} {p}")),
            _ if p.starts_with("/index/") => a.indexes += 1,
            _ if p.ends_with(".narinfo") => a.narinfos += 1,
            _ if p.starts_with("/nar/") => a.nars += 1,
            _ if p == "/nix-cache-info" => {}
            _ => a.other.push(format!("{m} {p}")),
        }
    }
    a
}

fn asked_counts(indexes: usize, narinfos: usize, nars: usize) -> Asked {
    Asked {
        indexes,
        narinfos,
        nars,
        other: Vec::new(),
    }
}

/// Realises `path` from `c`'s cache over HTTP into a new store; returns the number of
/// paths substituted and what was asked.
fn realise_over_http(c: &Chain, path: &str) -> (usize, Asked) {
    let http = BlockingServer::serve(&c.dir);
    let dst = nix_store();
    let report = realise(&dst, http.url(), &c.key, &[path], &[]);
    dst.ok(&["verify", "--all"]);
    (substituted(&report).len(), asked(&http))
}

#[test]
fn a_pushed_chain_substitutes_in_one_round_trip() {
    let c = chain();
    // The push wrote the top's index: every narinfo of the closure, verbatim.
    let mut got = entries(&c.dir, &c.top);
    got.sort();
    let mut want: Vec<Vec<u8>> = c
        .paths
        .iter()
        .map(|p| fs::read(narinfo_file(&c.dir, p)).unwrap())
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        realise_over_http(&c, &c.top),
        (LEN, asked_counts(1, 0, LEN))
    );
}

#[test]
fn a_cache_without_indexes_is_walked_as_before() {
    let c = chain();
    fs::remove_dir_all(c.dir.join("index")).unwrap();
    assert_eq!(
        realise_over_http(&c, &c.top),
        (LEN, asked_counts(1, LEN, LEN))
    );
}

#[test]
fn a_tampered_entry_costs_one_lookup_and_admits_nothing() {
    let c = chain();
    let victim = &c.paths[LEN / 2];
    let mut e = entries(&c.dir, &c.top);
    let original = fs::read(narinfo_file(&c.dir, victim)).unwrap();
    let at = e.iter().position(|x| *x == original).unwrap();
    e[at] = tampered(&c.dir, victim);
    write_index(&c.dir, &c.top, &e);
    assert_eq!(
        realise_over_http(&c, &c.top),
        (LEN, asked_counts(1, 1, LEN))
    );

    // The same bad narinfo served alone too: refused there, and nothing is downloaded.
    fs::write(narinfo_file(&c.dir, victim), tampered(&c.dir, victim)).unwrap();
    let http = BlockingServer::serve(&c.dir);
    let dst = nix_store();
    let err = realise_fails(&dst, http.url(), &c.key, &[&c.top]);
    assert!(err.contains(victim.as_str()), "{err}");
    assert!(err.contains("nothing was downloaded"), "{err}");
    assert_eq!(asked(&http), asked_counts(1, 1, 0));
}

#[test]
fn an_entry_in_the_place_of_another_costs_both_lookups() {
    let c = chain();
    let (a, b) = (&c.paths[3], &c.paths[7]);
    let mut e = entries(&c.dir, &c.top);
    let text_a = fs::read(narinfo_file(&c.dir, a)).unwrap();
    let text_b = fs::read(narinfo_file(&c.dir, b)).unwrap();
    // a's entry replaced by b's: a is missing, b is there twice (so dropped).
    let at = e.iter().position(|x| *x == text_a).unwrap();
    e[at] = text_b;
    write_index(&c.dir, &c.top, &e);
    assert_eq!(
        realise_over_http(&c, &c.top),
        (LEN, asked_counts(1, 2, LEN))
    );
}

#[test]
fn entries_outside_the_wanted_closure_are_not_used() {
    let c = chain();
    // The top's index, served as the bottom path's: only the bottom is fetched.
    let bottom = c.paths.last().unwrap();
    fs::copy(index_file(&c.dir, &c.top), index_file(&c.dir, bottom)).unwrap();
    assert_eq!(realise_over_http(&c, bottom), (1, asked_counts(1, 0, 1)));
}

#[test]
fn unusable_indexes_cost_per_path_lookups_only() {
    let c = chain();
    let good = fs::read(index_file(&c.dir, &c.top)).unwrap();
    let mut bomb = closure_index::HEADER.to_vec();
    bomb.resize(closure_index::MAX_DECOMPRESSED + (1 << 20), b'0');
    let other_dir: Vec<Vec<u8>> = entries(&c.dir, &c.top)
        .into_iter()
        .map(|e| {
            String::from_utf8(e)
                .unwrap()
                .replace("/nix/store/", "/gnu/store/")
                .into_bytes()
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", b"this is not zstd".to_vec()),
        ("oversized", vec![0x28; closure_index::MAX_COMPRESSED + 1]),
        ("zip bomb", zstd::bulk::compress(&bomb, 3).unwrap()),
        (
            "other store dir",
            closure_index::encode(other_dir.iter().map(Vec::as_slice)).unwrap(),
        ),
    ];
    for (what, bytes) in cases {
        fs::write(index_file(&c.dir, &c.top), bytes).unwrap();
        assert_eq!(
            realise_over_http(&c, &c.top),
            (LEN, asked_counts(1, LEN, LEN)),
            "{what}"
        );
    }
}

#[test]
fn a_second_push_of_an_unchanged_closure_keeps_its_index() {
    let c = chain();
    let before = fs::metadata(index_file(&c.dir, &c.top))
        .unwrap()
        .modified()
        .unwrap();
    // Pushing the same closure again writes nothing, not even the index.
    let out = c
        ._src
        .ok(&["--json", "copy", "--to", &file_url(&c.dir), &c.top]);
    assert!(out.contains("\"uploaded\":[]"), "{out}");
    let after = fs::metadata(index_file(&c.dir, &c.top))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    // Without the index, the next push writes one (from the cache's own narinfos).
    fs::remove_dir_all(c.dir.join("index")).unwrap();
    c._src.ok(&["copy", "--to", &file_url(&c.dir), &c.top]);
    assert_eq!(entries(&c.dir, &c.top).len(), LEN);
}

// ---------------------------------------------------------------------------------------
// The narinfo cache (store-format.md §7.2)

/// The narinfo cache file of a store, found under its root.
fn narinfo_db(s: &TestStore) -> PathBuf {
    let mut stack = vec![s.root()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() == "narinfo-cache.sqlite" {
                return p;
            }
            if p.is_dir() && !p.ends_with("store") {
                stack.push(p);
            }
        }
    }
    panic!("no narinfo cache under {}", s.root().display());
}

/// Realises the chain's top into `dst` from `http` (with `url_params` after the URL and
/// `extra` flags), then deletes it again; returns what was asked.
fn realise_and_forget(
    c: &Chain,
    dst: &TestStore,
    http: &BlockingServer,
    url_params: &str,
    extra: &[&str],
) -> (Asked, String) {
    http.server.clear_requests();
    let url = format!("{}{url_params}", http.url());
    let mut args = vec!["realise", "--substituters", &url, "--trusted-public-keys"];
    args.extend([c.key.as_str()]);
    args.extend_from_slice(extra);
    args.push(&c.top);
    let out = dst.cmd().args(&args).output().unwrap();
    assert_success(&out, &args);
    dst.ok(&["gc"]);
    assert!(!dst.real(&c.top).exists());
    (asked(http), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn remembered_narinfos_skip_the_network_until_they_expire_or_refresh() {
    let c = chain();
    fs::remove_dir_all(c.dir.join("index")).unwrap();
    let http = BlockingServer::serve(&c.dir);
    let dst = nix_store();
    let walk = asked_counts(1, LEN, LEN);
    let remembered = asked_counts(1, 0, LEN);
    assert_eq!(realise_and_forget(&c, &dst, &http, "", &[]).0, walk);
    assert_eq!(realise_and_forget(&c, &dst, &http, "", &[]).0, remembered);
    // --refresh asks again (and the answers are remembered again).
    assert_eq!(
        realise_and_forget(&c, &dst, &http, "", &["--refresh"]).0,
        walk
    );
    assert_eq!(realise_and_forget(&c, &dst, &http, "", &[]).0, remembered);
    // A cache whose positive entries live 0 seconds is always asked.
    let expired = "?narinfo-positive-ttl=0";
    assert_eq!(realise_and_forget(&c, &dst, &http, expired, &[]).0, walk);
    // Trust is checked on every use: without the key, a remembered narinfo admits nothing.
    let err = realise_fails(&dst, http.url(), &test_public_key(), &[&c.top]);
    assert!(err.contains("nothing was downloaded"), "{err}");
}

#[test]
fn remembered_absence_expires_after_its_ttl() {
    let c = chain();
    let http = BlockingServer::serve(&c.dir);
    let dst = nix_store();
    // The top is gone from the cache (narinfo and index).
    fs::remove_file(narinfo_file(&c.dir, &c.top)).unwrap();
    fs::remove_dir_all(c.dir.join("index")).unwrap();
    let fail = |params: &str| {
        http.server.clear_requests();
        let url = format!("{}{params}", http.url());
        realise_fails(&dst, &url, &c.key, &[&c.top]);
        asked(&http)
    };
    assert_eq!(fail(""), asked_counts(1, 1, 0));
    assert_eq!(fail(""), asked_counts(1, 0, 0));
    assert_eq!(fail("?narinfo-negative-ttl=0"), asked_counts(1, 1, 0));
}

#[test]
fn a_corrupt_narinfo_cache_costs_one_warning() {
    let c = chain();
    fs::remove_dir_all(c.dir.join("index")).unwrap();
    let http = BlockingServer::serve(&c.dir);
    let dst = nix_store();
    realise_and_forget(&c, &dst, &http, "", &[]);
    let db = narinfo_db(&dst);
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    fs::write(&db, vec![0x5a; 64 << 10]).unwrap();
    let (a, stderr) = realise_and_forget(&c, &dst, &http, "", &[]);
    assert_eq!(a, asked_counts(1, LEN, LEN));
    assert_eq!(stderr.matches("narinfo cache").count(), 1, "{stderr}");
    // It was started anew, and works.
    assert_eq!(
        realise_and_forget(&c, &dst, &http, "", &[]).0,
        asked_counts(1, 0, LEN)
    );
}

#[test]
fn a_stale_entry_whose_nar_is_gone_asks_that_cache_again() {
    let c = chain();
    // The index names the victim's NAR at its old place; the cache moved it (a narinfo's
    // URL is not signed, so both narinfos are trusted).
    let victim = &c.paths[LEN / 2];
    let file = narinfo_file(&c.dir, victim);
    let text = fs::read_to_string(&file).unwrap();
    let line = text.lines().find(|l| l.starts_with("URL: ")).unwrap();
    let old = &line["URL: ".len()..];
    let new = old.replace("nar/", "nar/moved-");
    fs::rename(c.dir.join(old), c.dir.join(&new)).unwrap();
    fs::write(&file, text.replace(old, &new)).unwrap();
    // One NAR GET more (the 404) and the victim's own narinfo.
    assert_eq!(
        realise_over_http(&c, &c.top),
        (LEN, asked_counts(1, 1, LEN + 1))
    );
}
