//! Reference scanning: which candidate store paths does a build output mention?
//!
//! Like Nix, a reference is an occurrence of a candidate's 32-character nix32 hash part
//! anywhere in the NAR serialisation of the output (file contents, symlink targets, even
//! file names). [`RefScanSink`] is an [`io::Write`] fed with that NAR (or any byte stream);
//! [`scan_path`] dumps a tree into it.
//!
//! The scan is a skip search. The only bytes that can belong to a hash part are the 32 nix32
//! characters, so for a window `data[i..i+32]` the bytes are checked from the end backwards:
//! the first non-nix32 byte at `i+j` rules out every window starting at or before it, and the
//! scan jumps to `i+j+1`. On binary data (1 byte in 8 is a nix32 character) and on ordinary
//! text (spaces, `e`, `o`, `t`, `u`, upper case and punctuation are not nix32) this reads about
//! one byte per window. Inside a long run of nix32 characters the scan remembers how far the
//! run is known to extend, so each step checks one new byte; every all-nix32 window is first
//! tested against a 64 Ki-bit Bloom filter of the candidates' first eight bytes and only then
//! looked up in the hash set.
//!
//! Streaming: the last 31 bytes of each chunk are kept, and the windows that straddle a chunk
//! boundary are checked on the small concatenation of those bytes and the start of the next
//! chunk.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};
use std::path::Path;

use thiserror::Error;

use crate::format::nixbase32;
use crate::format::store_path::StorePath;
use crate::fsnar::{self, FsNarError};

/// Length of a store path hash part in characters.
pub const HASH_PART_LEN: usize = 32;

/// Errors of reference scanning.
#[derive(Debug, Error)]
pub enum RefScanError {
    #[error("'{0}' is not a store path hash part (32 nix32 characters)")]
    BadCandidate(String),
    #[error("cannot serialise the output for scanning")]
    Dump(#[from] FsNarError),
}

const fn nix32_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < nixbase32::ALPHABET.len() {
        t[nixbase32::ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
}

/// `IS_NIX32[b]`: whether byte `b` is a nix32 character.
static IS_NIX32: [bool; 256] = nix32_table();

/// log2 of the Bloom filter's size in bits (64 Ki bits, 8 KiB, cache-resident). It only
/// decides how often a window must be looked up in the hash set: any size finds the same
/// references.
const BLOOM_BITS: u32 = 16;

fn bloom_index(prefix: u64) -> usize {
    (prefix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BLOOM_BITS)) as usize
}

fn prefix_of(window: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(p) = window.get(..8) {
        b.copy_from_slice(p);
    }
    u64::from_le_bytes(b)
}

/// An [`io::Write`] sink that records which candidate hash parts occur in the bytes written.
#[derive(Debug, Clone)]
pub struct RefScanSink {
    candidates: HashSet<[u8; HASH_PART_LEN]>,
    bloom: Vec<u64>,
    found: HashSet<[u8; HASH_PART_LEN]>,
    /// The last (up to 31) bytes seen, for windows that straddle a chunk boundary.
    tail: Vec<u8>,
}

impl RefScanSink {
    /// A sink looking for the given hash parts (each 32 nix32 characters).
    pub fn new<I, S>(hash_parts: I) -> Result<Self, RefScanError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut candidates = HashSet::new();
        let mut bloom = vec![0u64; (1usize << BLOOM_BITS) / 64];
        for part in hash_parts {
            let part = part.as_ref();
            let bytes: [u8; HASH_PART_LEN] = part
                .as_bytes()
                .try_into()
                .ok()
                .filter(|b: &[u8; HASH_PART_LEN]| b.iter().all(|&c| IS_NIX32[c as usize]))
                .ok_or_else(|| RefScanError::BadCandidate(part.to_owned()))?;
            let bit = bloom_index(prefix_of(&bytes));
            if let Some(word) = bloom.get_mut(bit / 64) {
                *word |= 1 << (bit % 64);
            }
            candidates.insert(bytes);
        }
        Ok(RefScanSink {
            candidates,
            bloom,
            found: HashSet::new(),
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        })
    }

    /// Scans the next chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.candidates.is_empty() || self.found.len() == self.candidates.len() {
            return;
        }
        const KEEP: usize = HASH_PART_LEN - 1;
        if data.len() < KEEP {
            self.tail.extend_from_slice(data);
            let tail = std::mem::take(&mut self.tail);
            self.scan(&tail);
            let start = tail.len().saturating_sub(KEEP);
            self.tail = tail;
            self.tail.drain(..start);
            return;
        }
        if !self.tail.is_empty() {
            let mut seam = std::mem::take(&mut self.tail);
            seam.extend_from_slice(data.get(..KEEP).unwrap_or_default());
            self.scan(&seam);
            seam.clear();
            self.tail = seam;
        }
        self.scan(data);
        self.tail
            .extend_from_slice(data.get(data.len() - KEEP..).unwrap_or_default());
    }

    /// The candidates seen so far, as hash-part strings.
    pub fn found(&self) -> BTreeSet<String> {
        self.found
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect()
    }

    /// Consumes the sink, returning [`found`](Self::found).
    pub fn into_found(self) -> BTreeSet<String> {
        self.found()
    }

    fn scan(&mut self, data: &[u8]) {
        let n = data.len();
        let mut i = 0;
        // `data[i..known]` is known to be all nix32 characters (empty when `known <= i`).
        let mut known = 0;
        while i + HASH_PART_LEN <= n {
            let low = known.max(i);
            let mut j = i + HASH_PART_LEN - 1;
            let mut bad = None;
            loop {
                if !IS_NIX32[data[j] as usize] {
                    bad = Some(j);
                    break;
                }
                if j <= low {
                    break;
                }
                j -= 1;
            }
            if let Some(j) = bad {
                i = j + 1;
                continue;
            }
            known = i + HASH_PART_LEN;
            self.check(&data[i..known]);
            i += 1;
        }
    }

    #[inline]
    fn check(&mut self, window: &[u8]) {
        let bit = bloom_index(prefix_of(window));
        let hit = self
            .bloom
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0);
        if !hit {
            return;
        }
        if let Ok(key) = <[u8; HASH_PART_LEN]>::try_from(window) {
            if self.candidates.contains(&key) {
                self.found.insert(key);
            }
        }
    }
}

impl Write for RefScanSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The hash parts among `candidates` that occur in the NAR serialisation of the tree at `path`.
pub fn scan_path<I, S>(path: &Path, candidates: I) -> Result<BTreeSet<String>, RefScanError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut sink = RefScanSink::new(candidates)?;
    fsnar::dump(path, &mut sink)?;
    Ok(sink.into_found())
}

/// The store paths among `candidates` that the tree at `path` refers to (in `candidates`
/// order).
pub fn references_of(
    path: &Path,
    candidates: &[StorePath],
) -> Result<Vec<StorePath>, RefScanError> {
    let found = scan_path(path, candidates.iter().map(|p| p.hash_str()))?;
    Ok(candidates
        .iter()
        .filter(|p| found.contains(p.hash_str()))
        .cloned()
        .collect())
}

#[cfg(test)]
#[path = "refscan_tests.rs"]
mod tests;
