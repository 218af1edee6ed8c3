//! Hash algorithms, digests and their textual forms, exactly as Nix 2.8 reads and writes
//! them: lowercase hex ("base16"), nix32, padded base64, typed (`sha256:<any>`) and SRI
//! (`sha256-<base64>`). Also the streaming [`Hasher`] and the XOR fold [`compress_hash`]
//! used for store path hashes. See store-format.md, "Hash encodings".

use std::fmt;
use std::io;
use std::str::FromStr;

use data_encoding::{BASE64, BASE64_NOPAD, HEXLOWER_PERMISSIVE};
use sha2::Digest;
use thiserror::Error;

use super::nixbase32;

/// A hash algorithm that Nix accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// All algorithms, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512];

    /// The digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// The name Nix uses (`md5`, `sha1`, `sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| HashError::UnknownAlgo(s.to_owned()))
    }
}

/// Why a hash string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgo(String),
    #[error("hash '{hash}' has wrong length for hash type '{algo}'")]
    WrongLength { hash: String, algo: HashAlgo },
    #[error("invalid {encoding} in hash '{hash}'")]
    BadEncoding {
        hash: String,
        encoding: &'static str,
    },
    #[error("hash '{0}' does not include a type")]
    MissingType(String),
    #[error("hash '{hash}' should have type '{expected}'")]
    TypeMismatch { hash: String, expected: HashAlgo },
    #[error("digest of {got} bytes does not fit {algo}")]
    DigestSize { algo: HashAlgo, got: usize },
}

/// The textual form of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lowercase hexadecimal.
    Base16,
    /// Nix base-32.
    Nix32,
    /// Standard padded base64.
    Base64,
    /// `<algo>-<base64>`, always typed.
    Sri,
}

/// A digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl Hash {
    /// Wraps a digest; its length must match the algorithm.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Result<Self, HashError> {
        if digest.len() != algo.size() {
            return Err(HashError::DigestSize {
                algo,
                got: digest.len(),
            });
        }
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Hash { algo, bytes })
    }

    /// A sha256 hash from its 32 bytes.
    pub fn sha256(digest: [u8; 32]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&digest);
        Hash {
            algo: HashAlgo::Sha256,
            bytes,
        }
    }

    /// Hashes `data` in one go.
    pub fn of(algo: HashAlgo, data: &[u8]) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    /// The digest as text, without the algorithm unless the encoding is SRI.
    pub fn encode(&self, encoding: Encoding) -> String {
        match encoding {
            Encoding::Base16 => data_encoding::HEXLOWER.encode(self.digest()),
            Encoding::Nix32 => nixbase32::encode(self.digest()),
            Encoding::Base64 => BASE64.encode(self.digest()),
            Encoding::Sri => format!("{}-{}", self.algo, BASE64.encode(self.digest())),
        }
    }

    /// `<algo>:<encoded>` (or SRI, which carries its own type).
    pub fn encode_typed(&self, encoding: Encoding) -> String {
        match encoding {
            Encoding::Sri => self.encode(Encoding::Sri),
            e => format!("{}:{}", self.algo, self.encode(e)),
        }
    }

    pub fn to_hex(&self) -> String {
        self.encode(Encoding::Base16)
    }

    pub fn to_nix32(&self) -> String {
        self.encode(Encoding::Nix32)
    }

    pub fn to_sri(&self) -> String {
        self.encode(Encoding::Sri)
    }

    /// Parses a hash that carries its type: `<algo>:<hex|nix32|base64>` or SRI
    /// (`<algo>-<base64>`). This is what narinfo hash fields accept.
    pub fn parse_prefixed(s: &str) -> Result<Self, HashError> {
        match Self::split_type(s)? {
            Some((algo, rest, sri)) => Self::parse_body(s, rest, algo, sri),
            None => Err(HashError::MissingType(s.to_owned())),
        }
    }

    /// Parses a hash in any form; an untyped one needs `algo`. A typed one must agree
    /// with `algo` when both are given.
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<Self, HashError> {
        match (Self::split_type(s)?, algo) {
            (Some((got, _, _)), Some(want)) if got != want => Err(HashError::TypeMismatch {
                hash: s.to_owned(),
                expected: want,
            }),
            (Some((got, rest, sri)), _) => Self::parse_body(s, rest, got, sri),
            (None, Some(want)) => Self::parse_body(s, s, want, false),
            (None, None) => Err(HashError::MissingType(s.to_owned())),
        }
    }

    /// Splits off `<algo>:` or `<algo>-`; `Ok(None)` when there is no prefix.
    fn split_type(s: &str) -> Result<Option<(HashAlgo, &str, bool)>, HashError> {
        let colon = s.find(':');
        let dash = s.find('-');
        let (idx, sri) = match (colon, dash) {
            (Some(c), Some(d)) if d < c => (d, true),
            (Some(c), _) => (c, false),
            (None, Some(d)) => (d, true),
            (None, None) => return Ok(None),
        };
        let algo: HashAlgo = s[..idx].parse()?;
        Ok(Some((algo, &s[idx + 1..], sri)))
    }

    fn parse_body(whole: &str, body: &str, algo: HashAlgo, sri: bool) -> Result<Self, HashError> {
        let bad = |encoding| HashError::BadEncoding {
            hash: whole.to_owned(),
            encoding,
        };
        let size = algo.size();
        let digest = if sri {
            let decoded = if body.ends_with('=') {
                BASE64.decode(body.as_bytes())
            } else {
                BASE64_NOPAD.decode(body.as_bytes())
            };
            decoded.map_err(|_| bad("base64"))?
        } else if body.len() == size * 2 {
            HEXLOWER_PERMISSIVE
                .decode(body.as_bytes())
                .map_err(|_| bad("base16"))?
        } else if body.len() == nixbase32::encoded_len(size) {
            nixbase32::decode(body.as_bytes(), size).map_err(|_| bad("nix32"))?
        } else if body.len() == size.div_ceil(3) * 4 {
            BASE64.decode(body.as_bytes()).map_err(|_| bad("base64"))?
        } else {
            return Err(HashError::WrongLength {
                hash: whole.to_owned(),
                algo,
            });
        };
        if digest.len() != size {
            return Err(HashError::WrongLength {
                hash: whole.to_owned(),
                algo,
            });
        }
        Self::new(algo, &digest)
    }
}

/// `sha256:<nix32>`: the form used in narinfo files, fingerprints and CA fields.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_sri())
    }
}

/// Accepts any typed form (see [`Hash::parse_prefixed`]).
impl FromStr for Hash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse_prefixed(s)
    }
}

/// An incremental hasher for any [`HashAlgo`]; also an `io::Write` sink.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Self::Md5(Default::default()),
            HashAlgo::Sha1 => Self::Sha1(Default::default()),
            HashAlgo::Sha256 => Self::Sha256(Default::default()),
            HashAlgo::Sha512 => Self::Sha512(Default::default()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let (algo, digest): (HashAlgo, Vec<u8>) = match self {
            Self::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            Self::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Self::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Self::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(&digest);
        Hash { algo, bytes }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes reads through while hashing and counting the bytes read.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: io::Read> HashingReader<R> {
    pub fn new(inner: R, algo: HashAlgo) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algo),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash and length of everything read.
    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// An `io::Write` sink that hashes and counts what is written to it.
pub struct HashSink {
    hasher: Hasher,
    count: u64,
}

impl HashSink {
    pub fn new(algo: HashAlgo) -> Self {
        HashSink {
            hasher: Hasher::new(algo),
            count: 0,
        }
    }

    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// XOR-folds a digest to `N` bytes: `out[i % N] ^= digest[i]`. Not a truncation.
pub fn compress_hash<const N: usize>(digest: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in digest.iter().enumerate() {
        out[i % N] ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_HEX: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn all_forms_of_hello() {
        let h = Hash::of(HashAlgo::Sha256, b"hello\n");
        assert_eq!(h.to_hex(), HELLO_HEX);
        assert_eq!(
            h.to_nix32(),
            "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
        );
        for s in [
            format!("sha256:{HELLO_HEX}"),
            format!("sha256:{}", HELLO_HEX.to_uppercase()),
            "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq".into(),
            "sha256:WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=".into(),
            "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=".into(),
        ] {
            assert_eq!(s.parse::<Hash>().unwrap(), h, "{s}");
        }
        assert_eq!(
            Hash::parse_any(HELLO_HEX, Some(HashAlgo::Sha256)).unwrap(),
            h
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            HELLO_HEX.parse::<Hash>(),
            Err(HashError::MissingType(_))
        ));
        assert!(matches!(
            Hash::parse_any(&format!("sha256:{HELLO_HEX}"), Some(HashAlgo::Sha1)),
            Err(HashError::TypeMismatch { .. })
        ));
        assert!(matches!(
            "sha256:abc".parse::<Hash>(),
            Err(HashError::WrongLength { .. })
        ));
        assert!(matches!(
            "sha257:abc".parse::<Hash>(),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!("sha256-AAAA".parse::<Hash>().is_err());
        let bad32 = format!("sha256:z0xyy{}", "0".repeat(47));
        assert!(bad32.parse::<Hash>().is_err());
    }

    #[test]
    fn fold() {
        let d: Vec<u8> = (0..32).collect();
        let f = compress_hash::<20>(&d);
        assert_eq!(f[0], 20);
        assert_eq!(f[12], 12);
    }
}
