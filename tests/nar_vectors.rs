//! NAR dump/restore against the Nix 2.8 vectors (`tests/fixtures/nix-2.8`, sections `trees`
//! and `negative_nars`), plus hostile NARs of our own.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use store::format::nar::{validate_nar, NarReadError, NarReader, MAX_DEPTH, NAR_MAGIC};
use store::fsnar::{self, FsNarError, RestoreOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nix-2.8")
}

fn vectors() -> serde_json::Value {
    let text = fs::read_to_string(fixtures().join("vectors.json")).expect("vectors.json");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cases(section: &str) -> Vec<serde_json::Value> {
    vectors()[section]["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("section {section} has cases"))
        .clone()
}

/// Extracts `trees/NAME.tar` into a fresh temp dir and returns (tempdir, path of the tree).
fn extract(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xpf")
        .arg(fixtures().join(format!("trees/{name}.tar")))
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar failed for {name}");
    let tree = tmp.path().join(name);
    assert!(tree.symlink_metadata().is_ok(), "{name} extracted");
    (tmp, tree)
}

#[test]
fn dump_matches_every_tree_vector() {
    let cases = cases("trees");
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let expected = fs::read(fixtures().join(case["nar"].as_str().unwrap())).unwrap();
        let (_tmp, tree) = extract(name);

        let mut out = Vec::new();
        let size = fsnar::dump(&tree, &mut out).unwrap();
        assert_eq!(out, expected, "dump of {name}");
        assert_eq!(size, case["nar_size"].as_u64().unwrap(), "size of {name}");

        let (digest, size) = fsnar::nar_hash(&tree).unwrap();
        assert_eq!(
            hex(&digest),
            case["nix_hash_path_sha256"]["base16"].as_str().unwrap(),
            "hash of {name}"
        );
        assert_eq!(size, expected.len() as u64);

        let summary = validate_nar(&expected[..]).unwrap();
        assert_eq!(summary.nar_size, expected.len() as u64);
        assert_eq!(hex(&summary.nar_sha256), hex(&digest));
    }
}

#[test]
fn restore_then_dump_round_trips_every_tree_vector() {
    for case in cases("trees") {
        let name = case["name"].as_str().unwrap();
        let nar = fs::read(fixtures().join(case["nar"].as_str().unwrap())).unwrap();
        for canonical in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dst = tmp.path().join("out");
            let stats = fsnar::restore(
                &nar[..],
                &dst,
                RestoreOptions {
                    canonicalise: canonical,
                },
            )
            .unwrap_or_else(|e| panic!("restore of {name}: {e}"));
            assert_eq!(stats.nar_size, nar.len() as u64);
            assert_eq!(stats.nar_sha256, <[u8; 32]>::from(Sha256::digest(&nar)));
            let mut again = Vec::new();
            fsnar::dump(&dst, &mut again).unwrap();
            assert_eq!(again, nar, "round trip of {name} (canonical {canonical})");
            if canonical {
                check_canonical(&dst);
            }
            fsnar::make_writable_and_remove(&dst).unwrap();
            assert!(dst.symlink_metadata().is_err());
        }
    }
}

#[test]
fn copy_tree_hashing_matches_every_tree_vector() {
    for case in cases("trees") {
        let name = case["name"].as_str().unwrap();
        let nar = fs::read(fixtures().join(case["nar"].as_str().unwrap())).unwrap();
        let (tmp, tree) = extract(name);
        let dst = tmp.path().join("copy");
        let (digest, size) = fsnar::copy_tree_hashing(&tree, &dst).unwrap();
        assert_eq!(
            hex(&digest),
            case["nix_hash_path_sha256"]["base16"].as_str().unwrap(),
            "hash of {name}"
        );
        assert_eq!(size, nar.len() as u64);
        let mut again = Vec::new();
        fsnar::dump(&dst, &mut again).unwrap();
        assert_eq!(again, nar, "copy of {name}");
        check_canonical(&dst);
        // The target must not exist yet.
        let err = fsnar::copy_tree_hashing(&tree, &dst).unwrap_err();
        assert!(matches!(err, FsNarError::TargetExists { .. }), "{err}");
        assert!(
            dst.symlink_metadata().is_ok(),
            "an existing target is left alone"
        );
    }
}

/// Checks the canonical store form: files 0444/0555, dirs 0555, mtime 1 (symlinks too).
fn check_canonical(path: &Path) {
    let meta = path.symlink_metadata().unwrap();
    assert_eq!(meta.mtime(), 1, "mtime of {}", path.display());
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_dir() {
        assert_eq!(mode, 0o555, "mode of {}", path.display());
        for entry in fs::read_dir(path).unwrap() {
            check_canonical(&entry.unwrap().path());
        }
    } else if meta.file_type().is_file() {
        assert!(
            mode == 0o444 || mode == 0o555,
            "mode {mode:o} of {}",
            path.display()
        );
    }
}

fn is_accepted(verdict: &str) -> bool {
    verdict.starts_with("valid")
}

#[test]
fn negative_nars_get_the_recommended_verdict() {
    let cases = cases("negative_nars");
    assert!(cases.len() >= 17);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let verdict = case["recommended_verdict"].as_str().unwrap();
        let nar = fs::read(fixtures().join(file)).unwrap();
        let parsed = validate_nar(&nar[..]);
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let restored = fsnar::restore(&nar[..], &dst, RestoreOptions::canonical());
        if is_accepted(verdict) {
            parsed.unwrap_or_else(|e| panic!("{file} ({verdict}) refused by the parser: {e}"));
            let stats = restored.unwrap_or_else(|e| panic!("{file} refused by restore: {e}"));
            assert_eq!(stats.nar_size, nar.len() as u64);
            let mut again = Vec::new();
            fsnar::dump(&dst, &mut again).unwrap();
            assert_eq!(again, nar, "{file} round trip");
        } else {
            let err = parsed
                .err()
                .unwrap_or_else(|| panic!("{file} ({verdict}) accepted"));
            assert!(!err.to_string().is_empty());
            let err = restored.err().unwrap_or_else(|| panic!("{file} restored"));
            assert!(matches!(err, FsNarError::InvalidNar(_)), "{file}: {err}");
            assert!(
                dst.symlink_metadata().is_err(),
                "{file}: target left behind"
            );
        }
    }
}

/// Encodes each token as a NAR string.
fn raw(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(&(t.len() as u64).to_le_bytes());
        out.extend_from_slice(t);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    out
}

fn restore_err(nar: &[u8]) -> (FsNarError, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let err = fsnar::restore(nar, &dst, RestoreOptions::canonical()).unwrap_err();
    assert!(
        dst.symlink_metadata().is_err(),
        "target left behind after {err}"
    );
    (err, tmp)
}

const DIR: [&[u8]; 4] = [NAR_MAGIC, b"(", b"type", b"directory"];

#[test]
fn hostile_huge_length_prefixes() {
    for prefix in [
        vec![NAR_MAGIC, b"(", b"type"],
        DIR.iter()
            .copied()
            .chain([&b"entry"[..], b"(", b"name"])
            .collect(),
        vec![NAR_MAGIC, b"(", b"type", b"symlink", b"target"],
    ] {
        let mut nar = raw(&prefix);
        nar.extend_from_slice(&u64::MAX.to_le_bytes());
        let (err, _tmp) = restore_err(&nar);
        assert!(matches!(err, FsNarError::InvalidNar(_)), "{err}");
    }
    // A file claiming 2^63 bytes of contents: streamed, so only truncation is noticed.
    let mut nar = raw(&[NAR_MAGIC, b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&(1u64 << 63).to_le_bytes());
    nar.extend_from_slice(&[0u8; 4096]);
    let (err, _tmp) = restore_err(&nar);
    assert!(
        matches!(
            err,
            FsNarError::InvalidNar(NarReadError::UnexpectedEof { .. })
        ),
        "{err}"
    );
}

#[test]
fn hostile_deep_nesting() {
    let mut toks: Vec<&[u8]> = DIR.to_vec();
    for _ in 0..=MAX_DEPTH {
        toks.extend_from_slice(&[
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
            b"(",
            b"type",
            b"directory",
        ]);
    }
    let (err, _tmp) = restore_err(&raw(&toks));
    assert!(
        matches!(err, FsNarError::InvalidNar(NarReadError::TooDeep { .. })),
        "{err}"
    );
}

#[test]
fn hostile_symlink_then_same_named_directory() {
    // "x" -> "/tmp", then a directory "x" with a file "pwned": refused as a duplicate before
    // anything could be written through the link.
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.to_str().unwrap().as_bytes().to_vec();
    let mut toks: Vec<&[u8]> = DIR.to_vec();
    toks.extend_from_slice(&[
        b"entry", b"(", b"name", b"x", b"node", b"(", b"type", b"symlink", b"target", &target,
        b")", b")",
    ]);
    toks.extend_from_slice(&[
        b"entry",
        b"(",
        b"name",
        b"x",
        b"node",
        b"(",
        b"type",
        b"directory",
    ]);
    toks.extend_from_slice(&[
        b"entry",
        b"(",
        b"name",
        b"pwned",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"",
        b")",
        b")",
    ]);
    toks.extend_from_slice(&[b")", b")", b")"]);
    let dst = tmp.path().join("out");
    let err = fsnar::restore(&raw(&toks)[..], &dst, RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            FsNarError::InvalidNar(NarReadError::DuplicateEntry { .. })
        ),
        "{err}"
    );
    assert!(dst.symlink_metadata().is_err());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn hostile_traversal_names() {
    for name in [
        &b".."[..],
        b".",
        b"../../etc",
        b"/etc/passwd",
        b"a/../../b",
        b"",
    ] {
        let mut toks: Vec<&[u8]> = DIR.to_vec();
        toks.extend_from_slice(&[
            b"entry",
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
            b")",
            b")",
        ]);
        let (err, _tmp) = restore_err(&raw(&toks));
        assert!(
            matches!(
                err,
                FsNarError::InvalidNar(NarReadError::InvalidName { .. })
            ),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn restore_into_existing_target_is_refused_and_left_alone() {
    let nar = fs::read(fixtures().join("trees/vec-tree.nar")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("keep"), b"mine").unwrap();
    let err = fsnar::restore(&nar[..], &dst, RestoreOptions::canonical()).unwrap_err();
    assert!(matches!(err, FsNarError::TargetExists { .. }), "{err}");
    assert_eq!(fs::read(dst.join("keep")).unwrap(), b"mine");
    // A symlink at the target is not followed either.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&dst, &link).unwrap();
    let err = fsnar::restore(&nar[..], &link, RestoreOptions::canonical()).unwrap_err();
    assert!(matches!(err, FsNarError::TargetExists { .. }), "{err}");
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 1);
}

#[test]
fn failing_stream_mid_restore_removes_the_partial_tree() {
    let nar = fs::read(fixtures().join("trees/vec-tree.nar")).unwrap();
    for cut in [200, 1000, nar.len() / 2, nar.len() - 9] {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let err = fsnar::restore((&nar[..]).take(cut as u64), &dst, true).unwrap_err();
        assert!(
            matches!(
                err,
                FsNarError::InvalidNar(NarReadError::UnexpectedEof { .. })
            ),
            "{err}"
        );
        assert!(dst.symlink_metadata().is_err(), "cut at {cut}");
    }
}

#[test]
fn nar_reader_streams_large_contents() {
    // 64 MiB of contents parsed with a 4 KiB buffer: nothing is buffered by the reader.
    const SIZE: u64 = 64 << 20;
    let mut head = raw(&[NAR_MAGIC, b"(", b"type", b"regular", b"contents"]);
    head.extend_from_slice(&SIZE.to_le_bytes());
    let tail = raw(&[b")"]);
    let stream = head
        .as_slice()
        .chain(std::io::repeat(0xab).take(SIZE))
        .chain(tail.as_slice());
    let mut reader = NarReader::new(std::io::BufReader::new(stream));
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    assert!(reader.next().unwrap().is_some());
    loop {
        let n = reader.read_contents(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    assert!(reader.next().unwrap().is_none());
}
