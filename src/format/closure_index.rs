//! The closure index object (store-format.md §7.6): the narinfos of one root's whole
//! closure, verbatim, framed and zstd-compressed, so that a substituter learns a closure in
//! one request. This module owns the encoding and its bounded decoding only; the object is
//! untrusted, and what each entry is worth (strict parse, path, signature) is decided by
//! the reader in `crate::substitute`, exactly as for a narinfo fetched alone.
//!
//! Decompressed layout: the line `closure-index 1\n`, then for each entry its length in
//! bytes as a decimal number (no sign, no leading zero) and `\n`, then that many bytes of
//! narinfo text. Nothing follows the last entry.

use std::io::{self, Read};
use std::ops::Range;

use thiserror::Error;

use crate::format::narinfo::MAX_NARINFO_SIZE;
use crate::format::store_path::StorePath;

/// The first line of the decompressed object.
pub const HEADER: &[u8] = b"closure-index 1\n";
/// The most compressed bytes a reader fetches: bounds the download (and the memory) of a
/// hostile object. Narinfos compress about 2.5:1, so real indexes stay well under it.
pub const MAX_COMPRESSED: usize = 4 << 20;
/// The most decompressed bytes a reader keeps: bounds memory against a zip bomb. About
/// 30,000 typical narinfos, ten times a large NixOS system closure.
pub const MAX_DECOMPRESSED: usize = 16 << 20;
/// The most entries an index may hold: bounds the signature checks one object can ask for.
pub const MAX_ENTRIES: usize = 30_000;
/// The largest zstd window a reader accepts (2^23 = 8 MiB): bounds the decoder's memory,
/// whatever a hostile frame header asks for. Writers use a level whose window is smaller.
pub const WINDOW_LOG_MAX: u32 = 23;
/// The zstd level writers use: a good ratio on narinfo text at a small cost, with a
/// window under [`WINDOW_LOG_MAX`].
pub const LEVEL: i32 = 9;

/// The cache key of the index of `root`'s closure: `index/<hash part>.closure`.
pub fn key(root: &StorePath) -> String {
    format!("index/{}.closure", root.hash_str())
}

/// Why an index cannot be made or read. Every reading error discards the whole object.
#[derive(Debug, Error)]
pub enum ClosureIndexError {
    #[error("the compressed index is larger than {limit} bytes")]
    CompressedTooLarge { limit: usize },
    #[error("the index decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the index has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("entry {index} is larger than {limit} bytes")]
    EntryTooLarge { index: usize, limit: usize },
    #[error("the index does not start with 'closure-index 1'")]
    BadHeader,
    #[error("the index is malformed at byte {offset}")]
    BadFraming { offset: usize },
    #[error("the index is not valid zstd")]
    Compression(#[source] io::Error),
}

/// Frames and compresses `entries` (narinfo texts). Fails if the result would break a
/// limit a reader enforces, so that writers never publish an index readers discard.
pub fn encode<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, ClosureIndexError> {
    let mut plain = HEADER.to_vec();
    for (index, e) in entries.into_iter().enumerate() {
        if index == MAX_ENTRIES {
            return Err(ClosureIndexError::TooManyEntries { limit: MAX_ENTRIES });
        }
        if e.len() > MAX_NARINFO_SIZE {
            return Err(ClosureIndexError::EntryTooLarge {
                index,
                limit: MAX_NARINFO_SIZE,
            });
        }
        plain.extend_from_slice(format!("{}\n", e.len()).as_bytes());
        plain.extend_from_slice(e);
        if plain.len() > MAX_DECOMPRESSED {
            return Err(ClosureIndexError::TooLarge {
                limit: MAX_DECOMPRESSED,
            });
        }
    }
    let packed = zstd::bulk::compress(&plain, LEVEL).map_err(ClosureIndexError::Compression)?;
    if packed.len() > MAX_COMPRESSED {
        return Err(ClosureIndexError::CompressedTooLarge {
            limit: MAX_COMPRESSED,
        });
    }
    Ok(packed)
}

/// A decoded index: its decompressed bytes and where each entry lies in them.
#[derive(Debug)]
pub struct ClosureIndex {
    plain: Vec<u8>,
    entries: Vec<Range<usize>>,
}

impl ClosureIndex {
    /// Decompresses and unframes `compressed`, enforcing every limit of this module.
    /// Entries are not interpreted.
    pub fn decode(compressed: &[u8]) -> Result<ClosureIndex, ClosureIndexError> {
        if compressed.len() > MAX_COMPRESSED {
            return Err(ClosureIndexError::CompressedTooLarge {
                limit: MAX_COMPRESSED,
            });
        }
        let plain = decompress(compressed)?;
        let entries = unframe(&plain)?;
        Ok(ClosureIndex { plain, entries })
    }

    /// The entries' bytes, in the order of the object.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|r| &self.plain[r.clone()])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decompresses at most [`MAX_DECOMPRESSED`] bytes with a bounded window.
fn decompress(compressed: &[u8]) -> Result<Vec<u8>, ClosureIndexError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(ClosureIndexError::Compression)?;
    decoder
        .window_log_max(WINDOW_LOG_MAX)
        .map_err(ClosureIndexError::Compression)?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(ClosureIndexError::Compression)?;
    if plain.len() > MAX_DECOMPRESSED {
        return Err(ClosureIndexError::TooLarge {
            limit: MAX_DECOMPRESSED,
        });
    }
    Ok(plain)
}

/// The entries' ranges in `plain`, after checking the header and the framing.
fn unframe(plain: &[u8]) -> Result<Vec<Range<usize>>, ClosureIndexError> {
    let mut at = plain
        .strip_prefix(HEADER)
        .map(|_| HEADER.len())
        .ok_or(ClosureIndexError::BadHeader)?;
    let mut entries = Vec::new();
    while at < plain.len() {
        if entries.len() == MAX_ENTRIES {
            return Err(ClosureIndexError::TooManyEntries { limit: MAX_ENTRIES });
        }
        let (len, start) = length_line(plain, at)?;
        if len > MAX_NARINFO_SIZE {
            return Err(ClosureIndexError::EntryTooLarge {
                index: entries.len(),
                limit: MAX_NARINFO_SIZE,
            });
        }
        let end = start
            .checked_add(len)
            .filter(|&end| end <= plain.len())
            .ok_or(ClosureIndexError::BadFraming { offset: at })?;
        entries.push(start..end);
        at = end;
    }
    Ok(entries)
}

/// Parses the length line at `at`: returns the length and where the entry starts.
fn length_line(plain: &[u8], at: usize) -> Result<(usize, usize), ClosureIndexError> {
    let bad = ClosureIndexError::BadFraming { offset: at };
    // Seven digits are enough for MAX_NARINFO_SIZE; more is malformed.
    let window = &plain[at..plain.len().min(at + 9)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return Err(bad);
    };
    let digits = &window[..nl];
    let well_formed = !digits.is_empty()
        && digits.len() <= 7
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0');
    if !well_formed {
        return Err(bad);
    }
    let len = digits
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    Ok((len, at + nl + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_of(packed: &[u8]) -> Vec<u8> {
        zstd::bulk::decompress(packed, MAX_DECOMPRESSED).unwrap()
    }

    fn pack(plain: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(plain, 3).unwrap()
    }

    #[test]
    fn round_trips_entries_verbatim() {
        let entries: [&[u8]; 3] = [b"StorePath: a\n", b"", b"x\ny\n"];
        let packed = encode(entries).unwrap();
        assert_eq!(
            plain_of(&packed),
            b"closure-index 1\n13\nStorePath: a\n0\n4\nx\ny\n"
        );
        let index = ClosureIndex::decode(&packed).unwrap();
        assert_eq!(index.entries().collect::<Vec<_>>(), entries);
        assert_eq!(index.len(), 3);
        let empty = ClosureIndex::decode(&encode([]).unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn refuses_bad_framing() {
        for plain in [
            &b""[..],
            b"closure-index 2\n",
            b"closure-index 1\n5\nabc",
            b"closure-index 1\n05\nabcde",
            b"closure-index 1\n+5\nabcde",
            b"closure-index 1\n5",
            b"closure-index 1\n\nabc",
            b"closure-index 1\n99999999\n",
            b"closure-index 1\n18446744073709551616\n",
        ] {
            let e = ClosureIndex::decode(&pack(plain)).unwrap_err();
            assert!(
                matches!(
                    e,
                    ClosureIndexError::BadHeader | ClosureIndexError::BadFraming { .. }
                ),
                "{plain:?}: {e}"
            );
        }
        let big = format!("closure-index 1\n{}\n", MAX_NARINFO_SIZE + 1);
        assert!(matches!(
            ClosureIndex::decode(&pack(big.as_bytes())),
            Err(ClosureIndexError::EntryTooLarge { index: 0, .. })
        ));
    }

    #[test]
    fn refuses_garbage_and_truncated_compression() {
        assert!(matches!(
            ClosureIndex::decode(b"not zstd at all"),
            Err(ClosureIndexError::Compression(_))
        ));
        let packed = encode([&b"StorePath: a\n"[..]; 100]).unwrap();
        let cut = &packed[..packed.len() - 3];
        assert!(matches!(
            ClosureIndex::decode(cut),
            Err(ClosureIndexError::Compression(_))
        ));
    }

    #[test]
    fn stops_a_zip_bomb_at_the_limit() {
        let mut plain = HEADER.to_vec();
        plain.resize(MAX_DECOMPRESSED + 4096, b'0');
        let bomb = pack(&plain);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        assert!(matches!(
            ClosureIndex::decode(&bomb),
            Err(ClosureIndexError::TooLarge { .. })
        ));
        let oversized = vec![0u8; MAX_COMPRESSED + 1];
        assert!(matches!(
            ClosureIndex::decode(&oversized),
            Err(ClosureIndexError::CompressedTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_a_window_over_the_limit() {
        // Streamed with no size known, so the frame keeps the 128 MiB window it declares.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        std::io::Write::write_all(&mut enc, &vec![7u8; 1 << 20]).unwrap();
        let packed = enc.finish().unwrap();
        assert!(matches!(
            ClosureIndex::decode(&packed),
            Err(ClosureIndexError::Compression(_))
        ));
    }

    #[test]
    fn limits_entries_on_both_sides() {
        let many = vec![&b""[..]; MAX_ENTRIES + 1];
        assert!(matches!(
            encode(many.iter().copied()),
            Err(ClosureIndexError::TooManyEntries { .. })
        ));
        let mut plain = HEADER.to_vec();
        for _ in 0..=MAX_ENTRIES {
            plain.extend_from_slice(b"0\n");
        }
        assert!(matches!(
            ClosureIndex::decode(&pack(&plain)),
            Err(ClosureIndexError::TooManyEntries { .. })
        ));
    }
}
