//! NAR (Nix ARchive): the canonical serialisation of a file tree, byte-compatible with Nix 2.8.
//!
//! This module is pure: it only sees `io::Read`/`io::Write`, never the file system (that is
//! `crate::fsnar`). See store-format.md §3.
//!
//! # Wire format
//!
//! Primitives:
//!
//! * `u64(n)`: 8 bytes, little-endian.
//! * `str(b)`: `u64(len(b))`, the bytes `b`, then `(8 - len % 8) % 8` zero bytes of padding.
//!
//! A NAR is a sequence of `str` tokens; NarSize is its total length in bytes and NarHash is the
//! sha256 of those bytes. Grammar, in the exact order a canonical writer emits it:
//!
//! ```text
//! nar   = str("nix-archive-1") node
//! node  = str("(") str("type") body str(")")
//! body  = str("regular") [ str("executable") str("") ] str("contents") str(<file bytes>)
//!       | str("symlink") str("target") str(<target bytes>)
//!       | str("directory") { entry }
//! entry = str("entry") str("(") str("name") str(<name>) str("node") node str(")")
//! ```
//!
//! Canonical form, the only form [`NarWriter`] can produce and the only form [`NarReader`]
//! accepts:
//!
//! * directory entries are sorted by strictly increasing raw byte order of their names
//!   (memcmp, not locale or UTF-8 aware), so duplicates are impossible;
//! * names are 1..=[`MAX_NAME_LEN`] bytes, not `.` or `..`, without `/` or NUL;
//! * `executable` appears only before `contents`, and its value is the empty string;
//! * every field appears exactly once, in the order above, and nothing follows the root node.
//!
//! Nix 2.8 itself is laxer when reading (it accepts unsorted entries, `executable` after
//! `contents`, missing fields and trailing bytes; see store-format.md §3.3). A NAR hash over
//! such non-canonical bytes could never be reproduced by dumping the unpacked tree again, so we
//! refuse them.
//!
//! # Limits
//!
//! Every length prefix is checked against a limit *before* anything is allocated, so a hostile
//! length never causes a large allocation, and file contents are streamed, never buffered:
//!
//! | what | limit | why |
//! |---|---|---|
//! | entry name | [`MAX_NAME_LEN`] = 255 bytes | `NAME_MAX` on Linux |
//! | symlink target | [`MAX_TARGET_LEN`] = 4095 bytes, non-empty, no NUL | `PATH_MAX - 1`; `symlink(2)` refuses the rest |
//! | nesting | [`MAX_DEPTH`] = 256 path components below the root | one open directory handle per level when unpacking |
//! | any other token (magic, field names, type) | [`MAX_TOKEN_LEN`] = 64 bytes | the longest valid token is 13 bytes |
//!
//! A symlink with an empty target or a target containing NUL cannot exist on Linux, so both are
//! rejected by the reader and the writer.

mod reader;
mod writer;

pub use reader::{validate_nar, Contents, NarEvent, NarReadError, NarReader, NarSummary};
pub use writer::{NarWriteError, NarWriter};

/// The magic string every NAR starts with.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Longest accepted entry name, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest accepted symlink target, in bytes (Linux `PATH_MAX` minus the NUL).
pub const MAX_TARGET_LEN: usize = 4095;

/// Deepest accepted nesting: the number of path components of any node below the root.
/// The root is at depth 0, its entries at depth 1.
pub const MAX_DEPTH: usize = 256;

/// Longest accepted structural token (magic, `(`, `type`, `regular`, field names, ...).
pub const MAX_TOKEN_LEN: usize = 64;

pub(crate) const TOK_OPEN: &[u8] = b"(";
pub(crate) const TOK_CLOSE: &[u8] = b")";
pub(crate) const TOK_TYPE: &[u8] = b"type";
pub(crate) const TOK_REGULAR: &[u8] = b"regular";
pub(crate) const TOK_EXECUTABLE: &[u8] = b"executable";
pub(crate) const TOK_CONTENTS: &[u8] = b"contents";
pub(crate) const TOK_SYMLINK: &[u8] = b"symlink";
pub(crate) const TOK_TARGET: &[u8] = b"target";
pub(crate) const TOK_DIRECTORY: &[u8] = b"directory";
pub(crate) const TOK_ENTRY: &[u8] = b"entry";
pub(crate) const TOK_NAME: &[u8] = b"name";
pub(crate) const TOK_NODE: &[u8] = b"node";

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) fn padding_len(len: u64) -> usize {
    // The result is always in 0..8.
    ((8 - (len % 8)) % 8) as usize
}

/// Why an entry name is not acceptable in a NAR, if it is not.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("'.' and '..' are not entry names")
    } else if name.len() > MAX_NAME_LEN {
        Err("name longer than 255 bytes")
    } else if name.contains(&b'/') {
        Err("name contains '/'")
    } else if name.contains(&0) {
        Err("name contains NUL")
    } else {
        Ok(())
    }
}

/// Why a symlink target is not acceptable in a NAR, if it is not.
pub fn check_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("empty symlink target")
    } else if target.len() > MAX_TARGET_LEN {
        Err("symlink target longer than 4095 bytes")
    } else if target.contains(&0) {
        Err("symlink target contains NUL")
    } else {
        Ok(())
    }
}

/// Renders bytes (a name, a path, a token) for an error message: UTF-8 is shown as text with
/// control characters escaped, anything else byte by byte with `\xNN` escapes.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding() {
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 7);
        assert_eq!(padding_len(7), 1);
        assert_eq!(padding_len(8), 0);
        assert_eq!(padding_len(13), 3);
        assert_eq!(padding_len(u64::MAX), 1);
    }

    #[test]
    fn names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name(b"...").is_ok());
        assert!(check_name(b".a").is_ok());
        assert!(check_name("caf\u{e9}".as_bytes()).is_ok());
        assert!(check_name(&[0xff, 0xfe]).is_ok());
        assert!(check_name(&[b'x'; 255]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", &[b'x'; 256]] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        assert!(check_target(b"/abs/x").is_ok());
        assert!(check_target(b"../rel").is_ok());
        assert!(check_target(&[b'x'; 4095]).is_ok());
        assert!(check_target(b"").is_err());
        assert!(check_target(b"a\0").is_err());
        assert!(check_target(&[b'x'; 4096]).is_err());
    }

    /// Encodes each token as a NAR string.
    fn raw(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t);
            out.resize(out.len() + padding_len(t.len() as u64), 0);
        }
        out
    }

    fn events(nar: &[u8]) -> Result<Vec<NarEvent>, NarReadError> {
        let mut r = NarReader::new(nar);
        let mut out = Vec::new();
        while let Some(ev) = r.next()? {
            out.push(ev);
        }
        Ok(out)
    }

    /// Reads a NAR and writes it again with the writer, contents included.
    fn rewrite(nar: &[u8]) -> Result<Vec<u8>, NarReadError> {
        let mut r = NarReader::new(nar);
        let mut w = NarWriter::new(Vec::new());
        while let Some(ev) = r.next()? {
            match ev {
                NarEvent::Regular {
                    name,
                    executable,
                    size,
                } => w
                    .regular(&name, executable, size, &mut r.contents())
                    .map_err(|e| NarReadError::Io(std::io::Error::other(e)))?,
                NarEvent::Symlink { name, target } => w.symlink(&name, &target).unwrap(),
                NarEvent::Directory { name } => w.begin_directory(&name).unwrap(),
                NarEvent::EndDirectory => w.end_directory().unwrap(),
            }
        }
        Ok(w.finish().unwrap().0)
    }

    fn sample() -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory(b"").unwrap();
        w.regular_bytes(b"-", false, b"").unwrap();
        w.regular_bytes(b"B", true, b"#!/bin/sh\n").unwrap();
        w.begin_directory(b"a").unwrap();
        w.begin_directory(b"empty").unwrap();
        w.end_directory().unwrap();
        w.symlink(b"up", b"../B").unwrap();
        w.end_directory().unwrap();
        w.regular(
            b"big",
            false,
            100_000,
            &mut std::io::repeat(7).take(100_000),
        )
        .unwrap();
        w.symlink(&[0xc3, 0xa9, 0xff], b"/abs/dangling").unwrap();
        w.end_directory().unwrap();
        let (out, size) = w.finish().unwrap();
        assert_eq!(size, out.len() as u64);
        out
    }

    use std::io::Read;

    #[test]
    fn writer_matches_nix_layout() {
        let nar = include_bytes!("../../../tests/fixtures/nix-2.8/trees/vec-file.txt.nar");
        let mut w = NarWriter::new(Vec::new());
        w.regular_bytes(b"", false, b"hello nix\n").unwrap();
        let (out, size) = w.finish().unwrap();
        assert_eq!(out, nar);
        assert_eq!(size, 128);
        let expected = raw(&[
            NAR_MAGIC,
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hello nix\n",
            b")",
        ]);
        assert_eq!(out, expected);
    }

    #[test]
    fn reader_events_and_round_trip() {
        let nar = sample();
        let evs = events(&nar).unwrap();
        assert_eq!(evs.len(), 11);
        assert_eq!(evs[0], NarEvent::Directory { name: vec![] });
        assert_eq!(
            evs[2],
            NarEvent::Regular {
                name: b"B".to_vec(),
                executable: true,
                size: 10
            }
        );
        assert_eq!(evs[10], NarEvent::EndDirectory);
        assert_eq!(rewrite(&nar).unwrap(), nar);
        let summary = validate_nar(&nar[..]).unwrap();
        assert_eq!(summary.nar_size, nar.len() as u64);
        assert_eq!(summary.regular_files, 3);
        assert_eq!(summary.executables, 1);
        assert_eq!(summary.directories, 3);
        assert_eq!(summary.symlinks, 2);
        assert_eq!(summary.contents_size, 100_010);
        use sha2::Digest;
        assert_eq!(
            summary.nar_sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&nar))
        );
    }

    #[test]
    fn partial_contents_are_skipped() {
        let nar = sample();
        let mut r = NarReader::new(&nar[..]);
        let mut buf = [0u8; 3];
        let mut seen = 0;
        while let Some(ev) = r.next().unwrap() {
            if let NarEvent::Regular { size: 100_000, .. } = ev {
                assert_eq!(r.read_contents(&mut buf).unwrap(), 3);
                assert_eq!(buf, [7, 7, 7]);
                assert_eq!(r.remaining_contents(), 99_997);
            }
            seen += 1;
        }
        assert_eq!(seen, 11);
        assert_eq!(r.offset(), nar.len() as u64);
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn embedded_reader_stops_at_the_end() {
        let mut stream = sample();
        let len = stream.len();
        stream.extend_from_slice(b"rest");
        let mut r = NarReader::new_embedded(&stream[..]);
        while r.next().unwrap().is_some() {}
        assert_eq!(r.offset(), len as u64);
        assert_eq!(r.into_inner(), b"rest");
        assert!(matches!(
            validate_nar(&stream[..]),
            Err(NarReadError::TrailingData { .. })
        ));
    }

    fn file(name: &[u8]) -> Vec<&[u8]> {
        vec![
            b"entry",
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"",
            b")",
            b")",
        ]
    }

    fn dir_of(entries: &[Vec<&'static [u8]>]) -> Vec<u8> {
        let mut toks: Vec<&[u8]> = vec![NAR_MAGIC, b"(", b"type", b"directory"];
        for e in entries {
            toks.extend_from_slice(e);
        }
        toks.push(b")");
        raw(&toks)
    }

    #[test]
    fn reader_rejects_bad_structure() {
        use NarReadError as E;
        let check = |nar: Vec<u8>, ok: fn(&NarReadError) -> bool| {
            let err = validate_nar(&nar[..]).unwrap_err();
            assert!(ok(&err), "unexpected error {err:?}");
            // Every error has a message.
            assert!(!err.to_string().is_empty());
        };
        check(raw(&[b"nix-archive-2"]), |e| matches!(e, E::BadMagic));
        check(raw(&[&[b'x'; 1000]]), |e| matches!(e, E::BadMagic));
        check(Vec::new(), |e| matches!(e, E::UnexpectedEof { .. }));
        check(dir_of(&[file(b"b"), file(b"a")]), |e| {
            matches!(e, E::UnsortedEntries { .. })
        });
        check(dir_of(&[file(b"a"), file(b"a")]), |e| {
            matches!(e, E::DuplicateEntry { .. })
        });
        check(dir_of(&[file(b"a"), file(b"B")]), |e| {
            matches!(e, E::UnsortedEntries { .. })
        });
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            check(dir_of(&[file(bad)]), |e| matches!(e, E::InvalidName { .. }));
        }
        let long: &'static [u8] = Box::leak(vec![b'n'; 256].into_boxed_slice());
        check(dir_of(&[file(long)]), |e| {
            matches!(e, E::NameTooLong { .. })
        });
        let max: &'static [u8] = Box::leak(vec![b'n'; 255].into_boxed_slice());
        assert!(validate_nar(&dir_of(&[file(max)])[..]).is_ok());
        // Field order and presence.
        let reg = |fields: &[&[u8]]| {
            let mut t: Vec<&[u8]> = vec![NAR_MAGIC, b"(", b"type", b"regular"];
            t.extend_from_slice(fields);
            raw(&t)
        };
        check(reg(&[b"contents", b"x", b"executable", b"", b")"]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        check(reg(&[b")"]), |e| matches!(e, E::UnexpectedToken { .. }));
        check(reg(&[b"executable", b"x", b"contents", b"", b")"]), |e| {
            matches!(e, E::ExecutableNotEmpty { .. })
        });
        check(reg(&[b"executable", b"", b")"]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        check(reg(&[b"contents", b"x", b"contents", b"y", b")"]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        check(raw(&[NAR_MAGIC, b"(", b")"]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        check(raw(&[NAR_MAGIC, b"(", b"type", b"fifo", b")"]), |e| {
            matches!(e, E::UnknownType { .. })
        });
        check(raw(&[NAR_MAGIC, b"(", b"type", b"symlink", b")"]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        check(
            raw(&[NAR_MAGIC, b"(", b"type", b"symlink", b"target", b"", b")"]),
            |e| matches!(e, E::InvalidTarget { .. }),
        );
        check(
            raw(&[
                NAR_MAGIC, b"(", b"type", b"symlink", b"target", b"a\0b", b")",
            ]),
            |e| matches!(e, E::InvalidTarget { .. }),
        );
        let long_target: &'static [u8] = Box::leak(vec![b't'; 4096].into_boxed_slice());
        check(
            raw(&[
                NAR_MAGIC,
                b"(",
                b"type",
                b"symlink",
                b"target",
                long_target,
                b")",
            ]),
            |e| matches!(e, E::TargetTooLong { .. }),
        );
        // An entry without a name.
        check(dir_of(&[vec![b"entry", b"(", b"node"]]), |e| {
            matches!(e, E::UnexpectedToken { .. })
        });
        // Trailing bytes, truncation, padding.
        let mut trailing = sample();
        trailing.push(0);
        check(trailing, |e| matches!(e, E::TrailingData { .. }));
        let full = sample();
        for cut in [1, 8, 9, 100, 2000, full.len() - 1] {
            check(full[..cut].to_vec(), |e| {
                matches!(e, E::UnexpectedEof { .. })
            });
        }
        let mut padded = raw(&[
            NAR_MAGIC,
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
        ]);
        // magic 24 + "(" 16 + "type" 16 + "regular" 16 + "contents" 16 + len 8 + "x" 1.
        padded[97] = 1;
        check(padded, |e| matches!(e, E::NonZeroPadding { .. }));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        use NarReadError as E;
        let mut nar = raw(&[NAR_MAGIC, b"(", b"type", b"regular", b"contents"]);
        nar.extend_from_slice(&u64::MAX.to_le_bytes());
        nar.extend_from_slice(b"abc");
        assert!(matches!(
            validate_nar(&nar[..]),
            Err(E::UnexpectedEof { .. })
        ));
        for prefix in [
            raw(&[NAR_MAGIC]),
            raw(&[NAR_MAGIC, b"("]),
            raw(&[
                NAR_MAGIC,
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
            ]),
            raw(&[NAR_MAGIC, b"(", b"type", b"symlink", b"target"]),
        ] {
            let mut nar = prefix;
            nar.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
            let err = validate_nar(&nar[..]).unwrap_err();
            assert!(
                matches!(
                    err,
                    E::TokenTooLong { .. } | E::NameTooLong { .. } | E::TargetTooLong { .. }
                ),
                "{err:?}"
            );
        }
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut toks: Vec<&[u8]> = vec![NAR_MAGIC, b"(", b"type", b"directory"];
        for _ in 0..depth {
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
        for _ in 0..depth {
            toks.extend_from_slice(&[b")", b")"]);
        }
        toks.push(b")");
        raw(&toks)
    }

    #[test]
    fn depth_limit() {
        assert!(validate_nar(&nested(MAX_DEPTH)[..]).is_ok());
        let err = validate_nar(&nested(MAX_DEPTH + 1)[..]).unwrap_err();
        assert!(matches!(err, NarReadError::TooDeep { .. }), "{err:?}");
        assert!(err.to_string().contains("/d/d/d"));
        // The writer has the same limit.
        let mut w = NarWriter::new(std::io::sink());
        w.begin_directory(b"").unwrap();
        for _ in 0..MAX_DEPTH - 1 {
            w.begin_directory(b"d").unwrap();
        }
        w.regular_bytes(b"f", false, b"").unwrap();
        assert!(matches!(w.begin_directory(b"g"), Ok(())));
        assert!(matches!(
            w.regular_bytes(b"h", false, b""),
            Err(NarWriteError::TooDeep { .. })
        ));
    }

    #[test]
    fn sorted_check_is_per_directory() {
        // Nix 2.8 resets its previous name for every entry; we compare within each directory:
        // "b" (a directory holding "c") followed by "a" must be refused.
        let sub = vec![
            &b"entry"[..],
            b"(",
            b"name",
            b"b",
            b"node",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"c",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"",
            b")",
            b")",
            b")",
            b")",
        ];
        let nar = dir_of(&[sub.clone(), file(b"a")]);
        assert!(matches!(
            validate_nar(&nar[..]),
            Err(NarReadError::UnsortedEntries { .. })
        ));
        let nar = dir_of(&[sub, file(b"c")]);
        assert!(validate_nar(&nar[..]).is_ok());
    }

    #[test]
    fn reader_is_poisoned_after_error() {
        let nar = dir_of(&[file(b"b"), file(b"a")]);
        let mut r = NarReader::new(&nar[..]);
        let err = loop {
            if let Err(e) = r.next() {
                break e;
            }
        };
        assert!(matches!(err, NarReadError::UnsortedEntries { .. }));
        assert!(matches!(r.next(), Err(NarReadError::Poisoned)));
    }

    #[test]
    fn writer_refuses_non_canonical_calls() {
        use NarWriteError as E;
        let fresh = || NarWriter::new(Vec::new());
        let in_dir = || {
            let mut w = fresh();
            w.begin_directory(b"").unwrap();
            w
        };
        let mut w = in_dir();
        w.regular_bytes(b"b", false, b"").unwrap();
        assert!(matches!(
            w.regular_bytes(b"a", false, b""),
            Err(E::NotSorted { .. })
        ));
        assert!(matches!(w.end_directory(), Err(E::Poisoned)));
        let mut w = in_dir();
        w.symlink(b"a", b"x").unwrap();
        assert!(matches!(w.begin_directory(b"a"), Err(E::Duplicate { .. })));
        for bad in [&b""[..], b".", b"..", b"x/y", b"x\0"] {
            assert!(matches!(
                in_dir().symlink(bad, b"t"),
                Err(E::InvalidName { .. })
            ));
        }
        assert!(matches!(
            in_dir().symlink(b"s", b""),
            Err(E::InvalidTarget { .. })
        ));
        assert!(matches!(
            fresh().begin_directory(b"x"),
            Err(E::NamedRoot { .. })
        ));
        assert!(matches!(fresh().end_directory(), Err(E::BadCall { .. })));
        assert!(matches!(fresh().finish(), Err(E::BadCall { .. })));
        assert!(matches!(in_dir().finish(), Err(E::BadCall { .. })));
        let mut w = fresh();
        w.regular_bytes(b"", false, b"x").unwrap();
        assert!(matches!(w.symlink(b"", b"t"), Err(E::BadCall { .. })));
        let mut w = fresh();
        w.begin_regular(b"", false, 2).unwrap();
        assert!(matches!(
            w.write_contents(b"abc"),
            Err(E::SizeMismatch { .. })
        ));
        let mut w = fresh();
        w.begin_regular(b"", false, 2).unwrap();
        w.write_contents(b"a").unwrap();
        assert!(matches!(
            w.end_regular(),
            Err(E::SizeMismatch {
                expected: 2,
                actual: 1
            })
        ));
        let mut w = fresh();
        assert!(matches!(
            w.regular(b"", true, 10, &mut &b"short"[..]),
            Err(E::SizeMismatch {
                expected: 10,
                actual: 5
            })
        ));
        // `regular` reads no more than announced.
        let mut w = fresh();
        let mut src = &b"abcdef"[..];
        w.regular(b"", false, 3, &mut src).unwrap();
        assert_eq!(src, b"def");
        let mut w = in_dir();
        w.begin_regular(b"f", false, 1).unwrap();
        assert!(matches!(w.end_directory(), Err(E::BadCall { .. })));
    }

    #[test]
    fn writer_reports_io_errors() {
        struct Failing;
        impl std::io::Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = NarWriter::new(Failing);
        let big = vec![0u8; 200_000];
        assert!(matches!(
            w.regular_bytes(b"", false, &big),
            Err(NarWriteError::Io(_))
        ));
        let mut w = NarWriter::new(Failing);
        w.regular_bytes(b"", false, b"x").unwrap();
        assert!(matches!(w.finish(), Err(NarWriteError::Io(_))));
    }

    #[test]
    fn show() {
        assert_eq!(show_bytes(b"abc"), "abc");
        assert_eq!(show_bytes(b"a\0b"), "a\\0b");
        assert_eq!(show_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(show_bytes(&[0x61, 0xff]), "a\\xff");
    }
}
