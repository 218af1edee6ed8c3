//! Helpers of `tests/substitute.rs` and `tests/s3.rs`: the vector caches, signing keys,
//! realise and push through the binary, and checks of the results.
#![allow(dead_code)]

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use store::format::narinfo::NarInfo;
use store::format::store_path::StoreDir;

pub(crate) const ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";
pub(crate) const VEC_B: &str = "/nix/store/nk183nb5dfayh95z7ibawczbvbs8gv3z-vec-b";
pub(crate) const VEC_A: &str = "/nix/store/si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt";
pub(crate) const CLOSURE: [&str; 3] = [VEC_A, VEC_B, ROOT];

pub(crate) fn nix_dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

pub(crate) fn vector_cache(name: &str) -> PathBuf {
    PathBuf::from(format!("{FIXTURES}/caches/{name}"))
}

pub(crate) fn hash_part(logical: &str) -> &str {
    let base = logical.rsplit('/').next().unwrap();
    &base[..32]
}

/// A fresh store whose logical store dir is Nix's.
pub(crate) fn nix_store() -> TestStore {
    TestStore::with_store_dir("/nix/store")
}

/// An HTTP server with its own runtime, so the tests themselves stay synchronous and can
/// block on child processes.
/// Whether the `from` of a report names the cache at `url` (ignoring `?params` and a
/// trailing slash).
pub(crate) fn same_cache(from: &str, url: &str) -> bool {
    let strip = |u: &str| {
        u.split('?')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    };
    strip(from) == strip(url)
}

/// `realise --json` of `paths`; panics unless it succeeds.
pub(crate) fn realise(
    s: &TestStore,
    urls: &str,
    keys: &str,
    paths: &[&str],
    extra: &[&str],
) -> Value {
    let mut args = vec![
        "--json",
        "realise",
        "--substituters",
        urls,
        "--trusted-public-keys",
        keys,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(paths);
    serde_json::from_str(&s.ok(&args)).unwrap()
}

/// `realise` of `paths` that must fail; returns its stderr.
pub(crate) fn realise_fails(s: &TestStore, urls: &str, keys: &str, paths: &[&str]) -> String {
    let mut args = vec![
        "realise",
        "--substituters",
        urls,
        "--trusted-public-keys",
        keys,
    ];
    args.extend_from_slice(paths);
    s.fails(&args)
}

/// The `substituted` entries of a realise report: path → from.
pub(crate) fn substituted(report: &Value) -> BTreeMap<String, String> {
    report["substituted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["from"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(crate) fn path_info(s: &TestStore, path: &str) -> Vec<Value> {
    let out = s.ok(&["path-info", "--json", "-r", path]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The vector closure's `nix path-info --json -r` entries, by path.
pub(crate) fn vector_infos() -> BTreeMap<String, Value> {
    vectors()["closure"]["path_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// The store holds exactly the vector closure, with Nix's metadata, and it verifies.
pub(crate) fn assert_vector_closure(s: &TestStore) {
    let want = vector_infos();
    let got = path_info(s, ROOT);
    assert_eq!(got.len(), 3, "{got:?}");
    for info in &got {
        let path = info["path"].as_str().unwrap();
        let w = &want[path];
        for field in ["narHash", "narSize", "references", "deriver", "ca"] {
            assert_eq!(info.get(field), w.get(field), "{path}: {field}");
        }
        // The cache's signature came along.
        let sigs = info["signatures"].as_array().unwrap();
        assert!(
            sigs.iter()
                .any(|s| s.as_str().unwrap().starts_with("test-cache-1:")),
            "{path}: {sigs:?}"
        );
        assert!(
            s.real(path).symlink_metadata().is_ok(),
            "{path} not on disk"
        );
    }
    let v: Value = serde_json::from_str(&s.ok(&["--json", "verify", "--all"])).unwrap();
    assert_eq!(v["checked"], 3, "{v}");
    assert_eq!(v["ok"], 3, "{v}");
    assert_eq!(v["corrupt"].as_array().unwrap().len(), 0, "{v}");
    // No temp dirs left behind.
    for e in fs::read_dir(s.real("/nix/store")).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".tmp-"),
            "leftover {name:?}"
        );
    }
}

/// The NAR URL of every narinfo in a cache dir, by hash part.
pub(crate) fn nar_urls(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(hash) = name.strip_suffix(".narinfo") {
            let info = NarInfo::parse(&fs::read_to_string(&p).unwrap(), &nix_dir()).unwrap();
            out.insert(hash.to_owned(), info.url().to_owned());
        }
    }
    out
}

pub(crate) fn wait_all(children: Vec<std::process::Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

pub(crate) struct Key {
    pub(crate) secret: PathBuf,
    pub(crate) public: String,
}

pub(crate) fn generate_key(s: &TestStore, name: &str) -> Key {
    let dir = s.scratch();
    let (secret, public) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    s.ok(&[
        "key",
        "generate",
        "--name",
        name,
        "--secret-file",
        secret.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    Key {
        secret,
        public: fs::read_to_string(public).unwrap().trim().to_owned(),
    }
}

/// A store holding the vector closure (substituted from `caches/none`).
pub(crate) fn source_store() -> TestStore {
    let s = nix_store();
    realise(
        &s,
        &file_url(&vector_cache("none")),
        &test_public_key(),
        &[ROOT],
        &[],
    );
    s
}
