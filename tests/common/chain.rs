//! A chain of small paths (each referencing the one before), made in a library-opened
//! store and pushed signed to a file cache: the closure that is one round trip per level
//! when walked narinfo by narinfo.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use store::format::hash::{Hash, HashAlgo, HashSink};
use store::format::store_path::{StoreDir, StorePathName};
use store::store::{Layout, LocalStore, NarImport};

use super::{file_url, TestStore};

/// Builds a chain of `len` paths in a library-opened store (each a small file naming the
/// previous path, which it references) and returns the logical path of the top.
pub fn make_chain(root: &Path, scratch: &Path, len: usize) -> String {
    let dir = StoreDir::new("/nix/store").unwrap();
    let store = LocalStore::open(Layout::new(dir.clone(), Some(root))).unwrap();
    let mut prev: Option<store::format::store_path::StorePath> = None;
    let mut top = String::new();
    for i in 0..len {
        let file = scratch.join(format!("link-{i}"));
        let body = match &prev {
            Some(p) => format!("link {i} after {}\n", dir.display_path(p)),
            None => format!("link {i}\n"),
        };
        fs::write(&file, body).unwrap();
        let mut nar = Vec::new();
        store::fsnar::dump(&file, &mut nar).unwrap();
        let mut sink = HashSink::new(HashAlgo::Sha256);
        std::io::Write::write_all(&mut sink, &nar).unwrap();
        let (nar_hash, nar_size) = sink.finish();
        let references: BTreeSet<_> = prev.iter().cloned().collect();
        // An input-addressed-looking path: any hash will do for a test chain.
        let path = dir
            .make_text_path(
                &Hash::of(HashAlgo::Sha256, &nar),
                references.iter(),
                &StorePathName::new(&format!("link-{i}")).unwrap(),
            )
            .unwrap();
        store
            .import_nar(
                NarImport {
                    path: path.clone(),
                    nar_hash,
                    nar_size,
                    references,
                    deriver: None,
                    sigs: BTreeSet::new(),
                    ca: None,
                },
                nar.as_slice(),
            )
            .unwrap();
        top = dir.display_path(&path);
        prev = Some(path);
    }
    top
}

/// The chain of [`make_chain`] in `src`, pushed signed to a new file cache: (top, public
/// key, cache dir).
pub fn signed_chain_cache(src: &TestStore, len: usize) -> (String, String, PathBuf) {
    let top = make_chain(&src.root(), &src.scratch(), len);
    let key_dir = src.scratch();
    let (sec, publ) = (key_dir.join("k.sec"), key_dir.join("k.pub"));
    src.ok(&[
        "key",
        "generate",
        "--name",
        "chain-test-1",
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        publ.to_str().unwrap(),
    ]);
    let public = fs::read_to_string(&publ).unwrap().trim().to_owned();
    let cache = src.scratch().join("cache");
    src.ok(&[
        "copy",
        "--to",
        &file_url(&cache),
        "--secret-key-file",
        sec.to_str().unwrap(),
        &top,
    ]);
    (top, public, cache)
}
