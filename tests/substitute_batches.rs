//! Substitution of many paths: NARs staged in parallel and committed in batches must still
//! make paths valid only after their references, and the speculative narinfo walk must not
//! let an untrusted narinfo's references into the plan.

mod common;

use std::fs;

use common::*;
use serde_json::Value;
use store::format::hash::{Hash, HashAlgo};
use store::format::store_path::{StoreDir, StorePathName};

const CHAIN: usize = 300;

/// The chain of `CHAIN` paths, pushed signed to a new file cache: (top, public key, cache
/// dir).
fn signed_chain_cache(src: &TestStore) -> (String, String, std::path::PathBuf) {
    chain::signed_chain_cache(src, CHAIN)
}

#[test]
fn a_long_chain_is_committed_in_reference_order() {
    let src = TestStore::with_store_dir("/nix/store");
    let (top, public, cache) = signed_chain_cache(&src);
    let url = file_url(&cache);

    let dst = TestStore::with_store_dir("/nix/store");
    let report: Value = serde_json::from_str(&dst.ok(&[
        "--json",
        "realise",
        "--jobs",
        "8",
        "--substituters",
        &url,
        "--trusted-public-keys",
        &public,
        &top,
    ]))
    .unwrap();
    assert_eq!(report["substituted"].as_array().unwrap().len(), CHAIN);
    // Every path is valid, intact, and registered after its reference.
    let out = dst.cmd().args(["verify", "--all"]).output().unwrap();
    assert_success(&out, "verify --all");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("{CHAIN} ok, 0 bad")), "{said}");
    let infos: Vec<Value> =
        serde_json::from_str(&dst.ok(&["path-info", "--json", "-r", &top])).unwrap();
    assert_eq!(infos.len(), CHAIN);
    let src_infos: Vec<Value> =
        serde_json::from_str(&src.ok(&["path-info", "--json", "-r", &top])).unwrap();
    let key = |v: &Value| {
        (
            v["path"].as_str().unwrap().to_owned(),
            v["narHash"].as_str().unwrap().to_owned(),
            v["references"].to_string(),
        )
    };
    let mut a: Vec<_> = infos.iter().map(key).collect();
    let mut b: Vec<_> = src_infos.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // Nothing left behind in the store dir but the paths themselves.
    let real = dst.root().join("nix/store");
    let stray: Vec<_> = fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn an_untrusted_narinfo_cannot_add_references_to_the_plan() {
    // Cache A has the top of the vector closure with an extra (nonexistent) reference and
    // therefore a broken signature; cache B has the real one. The walk may look the bogus
    // reference up, but it must not count: realise succeeds from B.
    const ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";
    let s = TestStore::with_store_dir("/nix/store");
    let (da, db) = (s.scratch().join("a"), s.scratch().join("b"));
    copy_dir(&fixture("caches/zstd"), &da);
    copy_dir(&fixture("caches/xz"), &db);
    let ni = da.join("a8z667l486sd21m8rs058ir3b2sh8k14.narinfo");
    let text = fs::read_to_string(&ni).unwrap();
    let bogus = "0000000000000000000000000000000a-bogus";
    let edited: String = text
        .lines()
        .map(|l| match l.strip_prefix("References: ") {
            Some(refs) => format!("References: {refs} {bogus}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(edited, text);
    fs::write(&ni, edited).unwrap();
    let urls = format!(
        "{}?priority=10 {}?priority=20",
        file_url(&da),
        file_url(&db)
    );
    let report: Value = serde_json::from_str(&s.ok(&[
        "--json",
        "realise",
        "--substituters",
        &urls,
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]))
    .unwrap();
    let subs = report["substituted"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "{report}");
    let root = subs.iter().find(|e| e["path"] == ROOT).unwrap();
    assert!(root["from"].as_str().unwrap().contains("/b"), "{report}");

    // With only cache A, the path is untrusted and the error names it, not the bogus one.
    let s2 = TestStore::with_store_dir("/nix/store");
    let err = s2.fails(&[
        "realise",
        "--substituters",
        &file_url(&da),
        "--trusted-public-keys",
        &test_public_key(),
        ROOT,
    ]);
    assert!(err.contains(ROOT) && err.contains("untrusted"), "{err}");
    assert!(!err.contains("bogus"), "{err}");
}

#[test]
fn a_bad_signature_deep_in_a_chain_falls_through_to_the_next_cache() {
    // The walk checks signatures in batches while it goes on asking; a narinfo in the middle
    // of a long chain with a corrupted signature must still send that path to the next
    // cache, or fail the plan naming it when there is none.
    let src = TestStore::with_store_dir("/nix/store");
    let (top, public, good) = signed_chain_cache(&src);
    // This is about the walk: without closure indexes (whose intact entries would vouch
    // for the victim, and would make the good cache's index win for every path).
    fs::remove_dir_all(good.join("index")).unwrap();
    let bad = src.scratch().join("bad");
    copy_dir(&good, &bad);
    let infos: Vec<Value> =
        serde_json::from_str(&src.ok(&["path-info", "--json", "-r", &top])).unwrap();
    let victim = infos
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .find(|p| p.ends_with("-link-150"))
        .unwrap();
    let hash = &victim["/nix/store/".len()..][..32];
    let ni = bad.join(format!("{hash}.narinfo"));
    let text = fs::read_to_string(&ni).unwrap();
    let sig_at = text.find("Sig: chain-test-1:").unwrap() + "Sig: chain-test-1:".len();
    let mut corrupted = text.clone().into_bytes();
    corrupted[sig_at + 4] = if corrupted[sig_at + 4] == b'A' {
        b'B'
    } else {
        b'A'
    };
    fs::write(&ni, corrupted).unwrap();

    // Only the bad cache: nothing is downloaded and the error names the path.
    let dst = TestStore::with_store_dir("/nix/store");
    let err = dst.fails(&[
        "realise",
        "--substituters",
        &file_url(&bad),
        "--trusted-public-keys",
        &public,
        &top,
    ]);
    assert!(err.contains(&victim) && err.contains("untrusted"), "{err}");
    assert!(err.contains("nothing was downloaded"), "{err}");
    let real = dst.root().join("nix/store");
    let left: Vec<_> = fs::read_dir(&real)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // The bad cache first, the good one second: that path comes from the good one.
    let urls = format!(
        "{}?priority=10 {}?priority=20",
        file_url(&bad),
        file_url(&good)
    );
    let report: Value = serde_json::from_str(&dst.ok(&[
        "--json",
        "realise",
        "--substituters",
        &urls,
        "--trusted-public-keys",
        &public,
        &top,
    ]))
    .unwrap();
    let subs = report["substituted"].as_array().unwrap();
    assert_eq!(subs.len(), CHAIN, "{report}");
    for e in subs {
        let from = e["from"].as_str().unwrap();
        let expect = if e["path"] == victim.as_str() {
            "/cache?"
        } else {
            "/bad?"
        };
        assert!(from.contains(expect), "{e}");
    }
}

#[test]
fn a_reference_cycle_in_the_cache_is_refused_and_nothing_is_installed() {
    // Two signed narinfos that name each other: no order installs one after its
    // references, so realise must fail naming them, not report success without them.
    use store::format::keys::SecretKey;
    use store::format::narinfo::NarInfo;
    let s = TestStore::with_store_dir("/nix/store");
    let dir = StoreDir::new("/nix/store").unwrap();
    let cache = s.scratch().join("cycle");
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(
        cache.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .unwrap();
    let key = SecretKey::generate("cycle-test-1").unwrap();
    let mut members = Vec::new();
    for name in ["one", "two"] {
        let file = s.scratch().join(name);
        fs::write(&file, name).unwrap();
        let mut nar = Vec::new();
        store::fsnar::dump(&file, &mut nar).unwrap();
        let hash = Hash::of(HashAlgo::Sha256, &nar);
        let path = dir
            .make_text_path(
                &hash,
                std::iter::empty(),
                &StorePathName::new(name).unwrap(),
            )
            .unwrap();
        fs::write(cache.join(format!("nar/{}.nar", hash.to_nix32())), &nar).unwrap();
        members.push((path, hash, nar.len() as u64));
    }
    for (i, (path, hash, size)) in members.iter().enumerate() {
        let other = members[1 - i].0.clone();
        let mut info =
            NarInfo::uncompressed(path.clone(), *hash, *size, [path.clone(), other]).unwrap();
        info.sign(&key, &dir);
        fs::write(
            cache.join(format!("{}.narinfo", path.hash_str())),
            info.to_text(&dir),
        )
        .unwrap();
    }
    let first = dir.display_path(&members[0].0);
    let err = s.fails(&[
        "realise",
        "--substituters",
        &file_url(&cache),
        "--trusted-public-keys",
        &key.to_public().to_string(),
        &first,
    ]);
    assert!(err.contains("cycle"), "{err}");
    for (path, _, _) in &members {
        let shown = dir.display_path(path);
        assert!(err.contains(&shown), "{err}");
        let out = s.cmd().args(["path-info", &shown]).output().unwrap();
        assert!(!out.status.success(), "{shown} was installed");
    }
}
