//! Property tests of the NAR codec and the file-system layer over random trees: arbitrary valid
//! names (bytes above 0x7f included), files with random contents and exec bits, symlinks.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use store::format::nar::{validate_nar, NarEvent, NarReader, NarWriter};
use store::fsnar::{self, RestoreOptions};

#[derive(Debug, Clone)]
enum Node {
    File {
        executable: bool,
        contents: Vec<u8>,
    },
    Symlink(Vec<u8>),
    /// A BTreeMap iterates in raw byte order, which is NAR order.
    Dir(BTreeMap<Vec<u8>, Node>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'),
        1..10,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(executable, contents)| Node::File {
                executable,
                contents
            }
        ),
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..40)
            .prop_map(Node::Symlink),
    ]
}

fn tree() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(5, 64, 8, |inner| {
        prop::collection::btree_map(name(), inner, 0..8).prop_map(Node::Dir)
    })
}

fn write_nar<W: Write>(w: &mut NarWriter<W>, name: &[u8], node: &Node) {
    match node {
        Node::File {
            executable,
            contents,
        } => w.regular_bytes(name, *executable, contents).unwrap(),
        Node::Symlink(target) => w.symlink(name, target).unwrap(),
        Node::Dir(entries) => {
            w.begin_directory(name).unwrap();
            for (n, child) in entries {
                write_nar(w, n, child);
            }
            w.end_directory().unwrap();
        }
    }
}

fn encode(node: &Node) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new());
    write_nar(&mut w, b"", node);
    let (out, size) = w.finish().unwrap();
    assert_eq!(size, out.len() as u64);
    out
}

/// Reads a NAR with the reader and writes every event again with the writer.
fn reencode(nar: &[u8]) -> Vec<u8> {
    let mut r = NarReader::new(nar);
    let mut w = NarWriter::new(Vec::new());
    while let Some(ev) = r.next().unwrap() {
        match ev {
            NarEvent::Regular {
                name,
                executable,
                size,
            } => w
                .regular(&name, executable, size, &mut r.contents())
                .unwrap(),
            NarEvent::Symlink { name, target } => w.symlink(&name, &target).unwrap(),
            NarEvent::Directory { name } => w.begin_directory(&name).unwrap(),
            NarEvent::EndDirectory => w.end_directory().unwrap(),
        }
    }
    assert_eq!(r.offset(), nar.len() as u64);
    w.finish().unwrap().0
}

fn materialise(path: &Path, node: &Node) {
    match node {
        Node::File {
            executable,
            contents,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Symlink(target) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).unwrap()
        }
        Node::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (n, child) in entries {
                materialise(&path.join(OsStr::from_bytes(n)), child);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn write_read_write_is_identity(node in tree()) {
        let nar = encode(&node);
        prop_assert_eq!(reencode(&nar), nar.clone());
        let summary = validate_nar(&nar[..]).unwrap();
        prop_assert_eq!(summary.nar_size, nar.len() as u64);
    }

    #[test]
    fn every_strict_prefix_is_rejected(node in tree(), cut in any::<prop::sample::Index>()) {
        let nar = encode(&node);
        let cut = cut.index(nar.len());
        prop_assert!(validate_nar(&nar[..cut]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn dump_restore_dump_is_identity(node in tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        materialise(&src, &node);
        let expected = encode(&node);

        let mut dumped = Vec::new();
        fsnar::dump(&src, &mut dumped).unwrap();
        prop_assert!(dumped == expected, "dump differs from the writer's encoding");

        let restored = tmp.path().join("restored");
        let stats = fsnar::restore(&dumped[..], &restored, RestoreOptions::canonical()).unwrap();
        prop_assert_eq!(stats.nar_size, expected.len() as u64);
        let mut again = Vec::new();
        fsnar::dump(&restored, &mut again).unwrap();
        prop_assert!(again == expected, "restore + dump differs");

        let copy = tmp.path().join("copy");
        let (digest, size) = fsnar::copy_tree_hashing(&src, &copy).unwrap();
        prop_assert_eq!((digest, size), (stats.nar_sha256, stats.nar_size));
        let mut copied = Vec::new();
        fsnar::dump(&copy, &mut copied).unwrap();
        prop_assert!(copied == expected, "copy + dump differs");

        fsnar::make_writable_and_remove(&restored).unwrap();
        fsnar::make_writable_and_remove(&copy).unwrap();
    }
}
