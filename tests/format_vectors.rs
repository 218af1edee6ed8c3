//! The Nix 2.8 test vectors (`tests/fixtures/nix-2.8`, see its README.md) against the pure
//! format layer: hashes and encodings, store paths and content addresses
//! (`format_vectors/paths.rs`), keys, narinfo, signatures and binary caches
//! (`format_vectors/caches.rs`), and property tests of the narinfo printer and parser
//! (`format_vectors/props.rs`).

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use store::format::keys::{PublicKey, SecretKey, TrustedKeys};
use store::format::store_path::StoreDir;

#[path = "format_vectors/caches.rs"]
mod caches;
#[path = "format_vectors/paths.rs"]
mod paths;
#[path = "format_vectors/props.rs"]
mod props;

/// The vector directory.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nix-2.8")
}

/// `vectors.json`, parsed once.
fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let text = std::fs::read_to_string(root().join("vectors.json")).expect("vectors.json");
        serde_json::from_str(&text).expect("vectors.json is JSON")
    })
}

/// A file of the vector set, relative to its root.
fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_bytes(rel: &str) -> Vec<u8> {
    let path = root().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A string member of a JSON value.
fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("'{key}' is not a string in {v}"))
}

/// The `cases` array of a section.
fn cases(section: &str) -> &'static [Value] {
    vectors()[section]["cases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("section {section} has no cases"))
}

fn hex(s: &str) -> Vec<u8> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .unwrap_or_else(|e| panic!("hex {s}: {e}"))
}

fn nix_dir() -> StoreDir {
    StoreDir::new(s(vectors(), "store_dir")).expect("store dir")
}

/// The test key pair, and the trusted set holding only its public key.
fn test_keys() -> (SecretKey, TrustedKeys) {
    let keys = &vectors()["keys"];
    let sk = SecretKey::parse(&read(s(keys, "secret_key_file"))).expect("secret key");
    let pk = PublicKey::parse(&read(s(keys, "public_key_file"))).expect("public key");
    (sk, TrustedKeys::from_keys([pk]).expect("trusted keys"))
}
