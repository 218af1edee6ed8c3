//! `LocalStore::import_nar`, the entry point substitution uses: the closure from the Nix
//! vector cache imports with Nix's hashes; anything wrong is refused with nothing left
//! behind.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use common::FIXTURES;
use store::format::narinfo::NarInfo;
use store::format::store_path::StoreDir;
use store::store::{Layout, LocalStore, NarImport, StoreError, Verdict};

const A: &str = "si47kwc33psiwfxkyw4c9qwx7r6n5zca"; // vec-a.txt (text CA)
const B: &str = "nk183nb5dfayh95z7ibawczbvbs8gv3z"; // vec-b (refs itself and A)
const C: &str = "a8z667l486sd21m8rs058ir3b2sh8k14"; // vec-c (refs A and B)

fn nix_store() -> (tempfile::TempDir, LocalStore) {
    let root = tempfile::tempdir().unwrap();
    let layout = Layout::new(StoreDir::new("/nix/store").unwrap(), Some(root.path()));
    let store = LocalStore::open(layout).unwrap();
    (root, store)
}

/// The narinfo and NAR bytes of one path of the uncompressed vector cache.
fn cached(hash: &str) -> (NarImport, Vec<u8>) {
    let dir = format!("{FIXTURES}/caches/none");
    let text = fs::read_to_string(format!("{dir}/{hash}.narinfo")).unwrap();
    let info = NarInfo::parse(&text, &StoreDir::new("/nix/store").unwrap()).unwrap();
    let nar = fs::read(format!("{dir}/{}", info.url())).unwrap();
    let meta = NarImport::from(&info);
    (meta, nar)
}

fn assert_nothing_left(root: &Path, store: &LocalStore, meta: &NarImport) {
    assert!(!store.is_valid(&meta.path).unwrap());
    let real = store.layout().real_path(&meta.path);
    assert!(!real.exists(), "{} left behind", real.display());
    let leftovers: Vec<_> = fs::read_dir(store.layout().real_store())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp dirs left in {}: {leftovers:?}",
        root.display()
    );
}

#[test]
fn imports_the_vector_closure_in_reference_order() {
    let (_root, store) = nix_store();
    let (c, c_nar) = cached(C);
    let err = store
        .import_nar(c.clone(), Cursor::new(&c_nar))
        .unwrap_err();
    match &err {
        StoreError::MissingReferences { missing, .. } => assert_eq!(missing.len(), 2, "{err}"),
        e => panic!("unexpected {e}"),
    }
    for h in [A, B, C] {
        let (meta, nar) = cached(h);
        let out = store.import_nar(meta.clone(), Cursor::new(&nar)).unwrap();
        assert!(out.installed);
        assert_eq!(out.info.nar_hash, meta.nar_hash);
        assert_eq!(store.verify_path(&meta.path).unwrap(), Verdict::Ok);
        let mut dumped = Vec::new();
        store.dump_path(&meta.path, &mut dumped).unwrap();
        assert!(dumped == nar, "{h}: dump differs from the cached NAR");
    }
    let closure = store.closure([&c.path]).unwrap();
    assert_eq!(closure.len(), 3);
    let info = store.query_valid(&c.path).unwrap();
    assert_eq!(info.sigs, c.sigs);
    assert_eq!(info.deriver, c.deriver);
    // Already valid: the stream is not even read.
    struct Explodes;
    impl Read for Explodes {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("an already-valid path must not read its NAR")
        }
    }
    assert!(!store.import_nar(c, Explodes).unwrap().installed);
}

#[test]
fn refuses_bad_nars_and_leaves_nothing() {
    let (root, store) = nix_store();
    let (a, a_nar) = cached(A);
    let cases: Vec<(&str, NarImport, Vec<u8>)> = vec![
        (
            "wrong hash",
            {
                let mut m = a.clone();
                m.nar_hash =
                    store::format::hash::Hash::of(store::format::hash::HashAlgo::Sha256, b"x");
                m.ca = None;
                m
            },
            a_nar.clone(),
        ),
        (
            "size too small",
            {
                let mut m = a.clone();
                m.nar_size -= 8;
                m
            },
            a_nar.clone(),
        ),
        (
            "size too large",
            {
                let mut m = a.clone();
                m.nar_size += 8;
                m
            },
            a_nar.clone(),
        ),
        ("truncated", a.clone(), a_nar[..a_nar.len() - 16].to_vec()),
        (
            "trailing bytes",
            a.clone(),
            [a_nar.clone(), vec![0; 8]].concat(),
        ),
        ("flipped byte", a.clone(), {
            let mut n = a_nar.clone();
            let last = n.len() - 20;
            n[last] ^= 1;
            n
        }),
        (
            "not a nar",
            a.clone(),
            b"definitely not a NAR archive".to_vec(),
        ),
    ];
    for (what, meta, nar) in cases {
        let err = store.import_nar(meta.clone(), Cursor::new(nar));
        let err = err.err().unwrap_or_else(|| panic!("{what}: accepted"));
        eprintln!("{what}: {err}");
        assert_nothing_left(root.path(), &store, &meta);
    }
    // A content address that does not match the path.
    let mut lying = a.clone();
    lying.ca = Some(
        format!(
            "text:{}",
            store::format::hash::Hash::of(store::format::hash::HashAlgo::Sha256, b"other")
        )
        .parse()
        .unwrap(),
    );
    let err = store
        .import_nar(lying.clone(), Cursor::new(&a_nar))
        .unwrap_err();
    assert!(matches!(err, StoreError::CaMismatch { .. }), "{err}");
    assert_nothing_left(root.path(), &store, &lying);
    // After all that, the real thing still imports.
    store.import_nar(a, Cursor::new(&a_nar)).unwrap();
}

#[test]
fn an_endless_stream_is_cut_at_nar_size() {
    let (root, store) = nix_store();
    let (a, a_nar) = cached(A);
    // Claims the real size but keeps sending bytes after the NAR: refused after reading
    // at most NarSize + 1 bytes (plus the reader's buffer), never unbounded.
    let endless = Cursor::new(a_nar.clone()).chain(std::io::repeat(0));
    let err = store.import_nar(a.clone(), endless).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
    assert_nothing_left(root.path(), &store, &a);
}

#[test]
fn concurrent_imports_of_one_path_install_once() {
    let (_root, store) = nix_store();
    let store = Arc::new(store);
    let (a, a_nar) = cached(A);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, a, nar) = (store.clone(), a.clone(), a_nar.clone());
            std::thread::spawn(move || store.import_nar(a, Cursor::new(nar)).unwrap().installed)
        })
        .collect();
    let installed: usize = threads
        .into_iter()
        .map(|t| t.join().unwrap() as usize)
        .sum();
    assert_eq!(installed, 1);
    assert_eq!(store.all_valid().unwrap().len(), 1);
    let _: BTreeSet<_> = store.closure([&a.path]).unwrap();
}
