//! Unit tests of the fsnar layer (the vectors are in `tests/nar_vectors.rs`).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::format::nar::validate_nar;

/// A deliberately simple, sequential, recursive serialiser to cross-check the parallel walker.
fn reference_dump(path: &Path) -> Vec<u8> {
    fn node<W: Write>(w: &mut NarWriter<W>, name: &[u8], path: &Path) {
        let meta = path.symlink_metadata().unwrap();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).unwrap();
            w.symlink(name, target.as_os_str().as_bytes()).unwrap();
        } else if meta.is_dir() {
            w.begin_directory(name).unwrap();
            let mut entries: Vec<_> = fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for e in entries {
                node(w, e.as_bytes(), &path.join(&e));
            }
            w.end_directory().unwrap();
        } else {
            let data = fs::read(path).unwrap();
            w.regular_bytes(name, meta.mode() & 0o100 != 0, &data)
                .unwrap();
        }
    }
    let mut w = NarWriter::new(Vec::new());
    node(&mut w, b"", path);
    w.finish().unwrap().0
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with many small files (more than the read-ahead window), a few multi-chunk files,
/// empty files and dirs, symlinks and odd names.
fn busy_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    for d in 0..30 {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..40 {
            let p = dir.join(format!("f{f}"));
            fs::write(&p, format!("{d}-{f}").repeat(f)).unwrap();
            if f % 7 == 0 {
                set_mode(&p, 0o755);
            }
        }
        std::os::unix::fs::symlink(format!("../d{d:02}/f1"), dir.join("link")).unwrap();
    }
    let big: Vec<u8> = (0..(3 * walk::CHUNK + 12345))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    fs::write(root.join("big"), &big).unwrap();
    fs::write(root.join("big2"), &big[..walk::CHUNK]).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(&[b'n', 0xff, 0xfe])),
        b"bytes",
    )
    .unwrap();
    fs::write(root.join("B"), b"upper").unwrap();
}

#[test]
fn parallel_dump_equals_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    busy_tree(&root);
    let expected = reference_dump(&root);
    let mut out = Vec::new();
    let size = dump(&root, &mut out).unwrap();
    assert_eq!(size, expected.len() as u64);
    assert!(out == expected, "parallel dump differs from the reference");

    let (digest, size) = nar_hash(&root).unwrap();
    let summary = validate_nar(&expected[..]).unwrap();
    assert_eq!((digest, size), (summary.nar_sha256, summary.nar_size));

    let copy = tmp.path().join("copy");
    assert_eq!(copy_tree_hashing(&root, &copy).unwrap(), (digest, size));
    assert!(reference_dump(&copy) == expected);
    let meta = copy.join("d00/f0").metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o555, 1));
    let meta = copy.join("d00/f1").metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o444, 1));
    let meta = copy.join("d00/link").symlink_metadata().unwrap();
    assert_eq!(meta.mtime(), 1);
    let meta = copy.join("d00").metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o555, 1));

    let restored = tmp.path().join("restored");
    let stats = restore(&expected[..], &restored, RestoreOptions::canonical()).unwrap();
    assert_eq!((stats.nar_sha256, stats.nar_size), (digest, size));
    assert_eq!(
        stats.root_file_sha256, None,
        "a directory has no contents hash"
    );
    assert_eq!(stats.regular_files, 30 * 40 + 5);
    assert_eq!(stats.symlinks, 30);
    assert_eq!(stats.directories, 32);
    assert!(reference_dump(&restored) == expected);
    make_writable_and_remove(&restored).unwrap();
    make_writable_and_remove(&copy).unwrap();
    assert!(!copy.exists() && !restored.exists());
}

#[test]
fn copy_into_itself_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(root.join("sub")).unwrap();
    for dst in [root.join("copy"), root.join("sub/copy")] {
        let err = copy_tree_hashing(&root, &dst).unwrap_err();
        assert!(matches!(err, FsNarError::CopyIntoItself { .. }), "{err}");
        assert!(!dst.exists());
    }
    copy_tree_hashing(&root, tmp.path().join("tree2")).unwrap();
}

#[test]
fn root_symlink_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("f"), b"x").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let mut out = Vec::new();
    dump(&link, &mut out).unwrap();
    assert_eq!(out, reference_dump(&link));
    let copy = tmp.path().join("copy");
    copy_tree_hashing(&link, &copy).unwrap();
    assert_eq!(fs::read_link(&copy).unwrap(), dir);
    assert_eq!(copy.symlink_metadata().unwrap().mtime(), 1);
    assert_ne!(
        dir.metadata().unwrap().mtime(),
        1,
        "the link target is untouched"
    );
    make_writable_and_remove(&copy).unwrap();
    assert!(dir.join("f").exists(), "removing a link leaves its target");
}

#[test]
fn single_file_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, vec![7u8; 2 * walk::CHUNK + 1]).unwrap();
    set_mode(&file, 0o700);
    let expected = reference_dump(&file);
    let mut out = Vec::new();
    dump(&file, &mut out).unwrap();
    assert!(out == expected);
    let copy = tmp.path().join("copy");
    let (_, size) = copy_tree_hashing(&file, &copy).unwrap();
    assert_eq!(size, expected.len() as u64);
    let meta = copy.metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o555, 1));
    let err = copy_tree_hashing(&file, &copy).unwrap_err();
    assert!(
        matches!(&err, FsNarError::TargetExists { path } if *path == copy),
        "{err}"
    );
    assert!(copy.exists(), "an existing target is left alone");
    let restored = tmp.path().join("restored");
    let stats = restore(&expected[..], &restored, RestoreOptions::default()).unwrap();
    assert_eq!(restored.metadata().unwrap().mode() & 0o100, 0o100);
    assert!(reference_dump(&restored) == expected);
    // A small single file has the sha256 of its contents computed on the way (what
    // checking a flat or text content address needs); this one is too large for that.
    use sha2::Digest;
    assert_eq!(stats.root_file_sha256, None);
    for contents in [&b""[..], b"hello\n"] {
        fs::remove_file(&file).unwrap();
        fs::write(&file, contents).unwrap();
        let nar = reference_dump(&file);
        let out = tmp.path().join("small");
        let stats = restore(&nar[..], &out, RestoreOptions::canonical()).unwrap();
        let want: [u8; 32] = sha2::Sha256::digest(contents).into();
        assert_eq!(stats.root_file_sha256, Some(want));
        assert_eq!(fs::read(&out).unwrap(), contents);
        make_writable_and_remove(&out).unwrap();
    }
}

#[test]
fn unsupported_types_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("a"), b"x").unwrap();
    let fifo = root.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let check = |err: FsNarError, name: &Path| {
        assert!(matches!(err, FsNarError::UnsupportedType { .. }), "{err}");
        assert!(err.to_string().contains(&*name.to_string_lossy()), "{err}");
    };
    check(dump(&root, std::io::sink()).unwrap_err(), &fifo);
    check(dump(&fifo, std::io::sink()).unwrap_err(), &fifo);
    let copy = tmp.path().join("copy");
    check(copy_tree_hashing(&root, &copy).unwrap_err(), &fifo);
    assert!(!copy.exists(), "the partial copy is removed");
    check(canonicalise(&root).unwrap_err(), &fifo);
    fs::remove_file(&fifo).unwrap();

    let sock = root.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    check(dump(&root, std::io::sink()).unwrap_err(), &sock);
}

#[test]
fn too_deep_trees_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    let mut p = root.clone();
    for _ in 0..crate::format::nar::MAX_DEPTH {
        p.push("d");
    }
    // The deepest directory is at depth MAX_DEPTH: fine.
    fs::create_dir_all(&p).unwrap();
    dump(&root, std::io::sink()).unwrap();
    // Anything in it is one level too deep.
    fs::write(p.join("f"), b"").unwrap();
    let err = dump(&root, std::io::sink()).unwrap_err();
    assert!(matches!(err, FsNarError::TooDeep { .. }), "{err}");
    let copy = tmp.path().join("copy");
    assert!(copy_tree_hashing(&root, &copy).is_err());
    assert!(!copy.exists());
}

#[test]
fn canonicalise_fixes_modes_and_times() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let outside = tmp.path().join("outside");
    fs::write(&outside, b"o").unwrap();
    set_mode(&outside, 0o600);
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("suid"), b"x").unwrap();
    set_mode(&root.join("suid"), 0o4755);
    fs::write(root.join("sub/plain"), b"y").unwrap();
    set_mode(&root.join("sub/plain"), 0o1600);
    fs::write(root.join("sub/none"), b"z").unwrap();
    set_mode(&root.join("sub/none"), 0o000);
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    set_mode(&root.join("sub"), 0o2777);
    let before = reference_dump(&root);
    canonicalise(&root).unwrap();
    let mode_time = |p: &str| {
        let m = root.join(p).symlink_metadata().unwrap();
        (m.mode() & 0o7777, m.mtime())
    };
    assert_eq!(mode_time("suid"), (0o555, 1));
    assert_eq!(mode_time("sub/plain"), (0o444, 1));
    assert_eq!(mode_time("sub/none"), (0o444, 1));
    assert_eq!(mode_time("sub"), (0o555, 1));
    assert_eq!(mode_time(""), (0o555, 1));
    assert_eq!(mode_time("link").1, 1);
    assert_eq!(
        outside.metadata().unwrap().mode() & 0o7777,
        0o600,
        "link target untouched"
    );
    assert!(reference_dump(&root) == before, "the NAR does not change");
    make_writable_and_remove(&root).unwrap();
    assert!(!root.exists() && outside.exists());
    make_writable_and_remove(&root).unwrap();
}

#[test]
fn restore_without_canonicalisation_uses_umask_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    busy_tree(&root);
    let nar = reference_dump(&root);
    let out = tmp.path().join("out");
    restore(&nar[..], &out, RestoreOptions::default()).unwrap();
    let umask = sys::umask().unwrap_or(0o022);
    let m = out.join("d00/f1").metadata().unwrap();
    assert_eq!(m.mode() & 0o777, 0o666 & !umask);
    assert_ne!(m.mtime(), 1);
    let m = out.join("d00/f0").metadata().unwrap();
    assert_eq!(m.mode() & 0o777, 0o777 & !umask);
    let m = out.join("d00").metadata().unwrap();
    assert_eq!(m.mode() & 0o777, 0o777 & !umask);
}

#[test]
fn restore_reports_read_errors_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    busy_tree(&root);
    let nar = reference_dump(&root);
    let out = tmp.path().join("out");
    let reader = restore::FailAfter {
        inner: &nar[..],
        left: nar.len() / 3,
    };
    let err = restore(reader, &out, RestoreOptions::canonical()).unwrap_err();
    assert!(
        matches!(
            err,
            FsNarError::InvalidNar(crate::format::nar::NarReadError::Io(_))
        ),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn large_files_with_unaligned_tails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir(&root).unwrap();
    let size = sys::DIRECT_MIN_SIZE as usize + 4097;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(root.join("large"), &data).unwrap();
    fs::write(root.join("small"), b"s").unwrap();
    let expected = reference_dump(&root);

    let copy = tmp.path().join("copy");
    let (digest, nar_size) = copy_tree_hashing(&root, &copy).unwrap();
    assert_eq!(fs::read(copy.join("large")).unwrap(), data);
    assert!(reference_dump(&copy) == expected);

    let restored = tmp.path().join("restored");
    let stats = restore(&expected[..], &restored, RestoreOptions::canonical()).unwrap();
    assert_eq!((stats.nar_sha256, stats.nar_size), (digest, nar_size));
    assert_eq!(fs::read(restored.join("large")).unwrap(), data);
    let meta = restored.join("large").metadata().unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o444, 1));

    // Truncated in the middle of the large file: an error, and nothing left behind.
    let cut = expected.len() / 2;
    let partial = tmp.path().join("partial");
    let err = restore(&expected[..cut], &partial, true).unwrap_err();
    assert!(matches!(err, FsNarError::InvalidNar(_)), "{err}");
    assert!(!partial.exists());
}

#[test]
fn many_small_files_restore_in_parallel_and_canonically() {
    // busy_tree has far more files than the pool's threshold, spread over directories that
    // must all end up finished (0555, mtime 1) only after their files were written.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    busy_tree(&root);
    let nar = reference_dump(&root);
    let out = tmp.path().join("out");
    let stats = restore(&nar[..], &out, RestoreOptions::canonical()).unwrap();
    assert_eq!(stats.nar_size, nar.len() as u64);
    assert_eq!(stats.regular_files, 30 * 40 + 5);
    assert!(
        reference_dump(&out) == nar,
        "the tree gives back the same NAR"
    );
    for d in 0..30 {
        let dir = out.join(format!("d{d:02}"));
        let m = dir.metadata().unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime()),
            (0o555, 1),
            "{}",
            dir.display()
        );
        for f in [0, 1, 39] {
            let m = dir.join(format!("f{f}")).metadata().unwrap();
            let mode = if f % 7 == 0 { 0o555 } else { 0o444 };
            assert_eq!((m.mode() & 0o7777, m.mtime()), (mode, 1));
        }
    }
    let m = out.metadata().unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o555, 1));
    make_writable_and_remove(&out).unwrap();

    // A stream that breaks off while the pool is busy leaves nothing behind.
    for cut in [nar.len() / 2, nar.len() - 100] {
        let reader = restore::FailAfter {
            inner: &nar[..],
            left: cut,
        };
        assert!(restore(reader, &out, RestoreOptions::canonical()).is_err());
        assert!(!out.exists());
    }
}
