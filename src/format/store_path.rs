//! Store paths: [`StoreDir`], [`StorePathHash`], [`StorePathName`] and [`StorePath`]
//! (`<hash32>-<name>`, the base name; the store dir is kept apart), plus the functions that
//! compute store paths the way Nix 2.8 does (`source`, `text`, fixed-output and
//! input-addressed derivation outputs). See store-format.md, "Store paths".
//!
//! ```text
//! path        = store-dir "/" hash32 "-" name
//! hash32      = 32 nix32 digits (20 bytes)
//! name        = 1..211 bytes of [A-Za-z0-9+-._?=]
//! fingerprint = type ":sha256:" hex(inner) ":" store-dir ":" name
//! hash        = xor-fold(sha256(fingerprint), 20)
//! ```

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::hash::{compress_hash, Hash, HashAlgo};
use super::nixbase32;

/// The longest store path name Nix 2.8 accepts, in bytes.
pub const MAX_NAME_LEN: usize = 211;
/// Length of the nix32 hash part.
pub const HASH_CHARS: usize = 32;

/// Why a store path, name or store dir was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("store path name is empty")]
    EmptyName,
    #[error("store path name '{0}' is longer than 211 bytes")]
    NameTooLong(String),
    #[error("store path name '{name}' contains illegal character {ch:?}")]
    IllegalChar { name: String, ch: char },
    #[error("'{0}' is not a valid store path base name (expected <32-char hash>-<name>)")]
    BadBaseName(String),
    #[error("invalid store path hash '{0}'")]
    BadHash(String),
    #[error("path '{path}' is not in the store '{store_dir}'")]
    NotInStore { path: String, store_dir: String },
    #[error("store dir '{0}' must be an absolute, normalised path without trailing slash")]
    BadStoreDir(String),
    #[error("a fixed-output path that is not recursive sha256 cannot have references")]
    FixedWithReferences,
    #[error("text paths must be hashed with sha256, not {0}")]
    TextNotSha256(HashAlgo),
}

fn valid_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)
}

/// A validated store path name: 1 to 211 bytes of `[A-Za-z0-9+-._?=]`. Like Nix 2.8, a
/// leading `.` (and the names `.` and `..`) are accepted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathName(String);

impl StorePathName {
    pub fn new(name: &str) -> Result<Self, StorePathError> {
        if name.is_empty() {
            return Err(StorePathError::EmptyName);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(StorePathError::NameTooLong(name.to_owned()));
        }
        if let Some(ch) = name
            .chars()
            .find(|&c| !c.is_ascii() || !valid_name_byte(c as u8))
        {
            return Err(StorePathError::IllegalChar {
                name: name.to_owned(),
                ch,
            });
        }
        Ok(StorePathName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for StorePathName {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::new(s)
    }
}

/// The 20-byte hash part of a store path, printed as 32 nix32 digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash([u8; 20]);

impl StorePathHash {
    pub fn new(bytes: [u8; 20]) -> Self {
        StorePathHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nixbase32::encode(&self.0))
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({self})")
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        nixbase32::decode_array(s.as_bytes())
            .map(StorePathHash)
            .map_err(|_| StorePathError::BadHash(s.to_owned()))
    }
}

/// A store path without its store dir: `<hash32>-<name>`. Ordered like its text, which is
/// also the order of the full paths within one store dir.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    base: String,
    hash: StorePathHash,
}

impl StorePath {
    pub fn from_parts(hash: StorePathHash, name: &StorePathName) -> Self {
        StorePath {
            base: format!("{hash}-{name}"),
            hash,
        }
    }

    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    /// The hash part as text (the first 32 characters).
    pub fn hash_str(&self) -> &str {
        &self.base[..HASH_CHARS]
    }

    pub fn name(&self) -> &str {
        &self.base[HASH_CHARS + 1..]
    }

    /// `<hash32>-<name>`.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        let bad = || StorePathError::BadBaseName(s.to_owned());
        if s.len() < HASH_CHARS + 2 || s.as_bytes()[HASH_CHARS] != b'-' {
            return Err(bad());
        }
        let hash: StorePathHash = s[..HASH_CHARS].parse()?;
        StorePathName::new(&s[HASH_CHARS + 1..])?;
        Ok(StorePath {
            base: s.to_owned(),
            hash,
        })
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base)
    }
}

/// The logical store dir, part of every store path hash (e.g. `/nix/store`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl StoreDir {
    /// Accepts an absolute path with no trailing slash, no empty, `.` or `..` components,
    /// and only characters that are safe in fingerprints (no `:` and no NUL).
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let bad = || StorePathError::BadStoreDir(dir.to_owned());
        if !dir.starts_with('/') || dir.len() < 2 || dir.contains(['\0', ':']) {
            return Err(bad());
        }
        if dir[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad());
        }
        Ok(StoreDir(dir.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path `<store-dir>/<hash>-<name>`.
    pub fn display_path(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }

    /// Parses a full store path; it must be directly inside this store dir.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let (path, rest) = self.parse_path_prefix(full)?;
        if !rest.is_empty() {
            return Err(StorePathError::BadBaseName(full.to_owned()));
        }
        Ok(path)
    }

    /// Parses `<store-dir>/<hash>-<name>[/sub/path]`, returning the store path and the
    /// remaining `/sub/path` (empty if none).
    pub fn parse_path_prefix<'a>(
        &self,
        full: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: full.to_owned(),
            store_dir: self.0.clone(),
        };
        let rest = full
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        let (base, sub) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        Ok((base.parse()?, sub))
    }

    /// `makeStorePath`: the path for a fingerprint type, a sha256 inner hash and a name.
    pub fn make_store_path(&self, kind: &str, inner: &Hash, name: &StorePathName) -> StorePath {
        let fingerprint = format!(
            "{kind}:{}:{}:{}:{name}",
            inner.algo(),
            inner.to_hex(),
            self.0
        );
        let digest = Hash::of(HashAlgo::Sha256, fingerprint.as_bytes());
        StorePath::from_parts(StorePathHash(compress_hash(digest.digest())), name)
    }

    /// The fingerprint type `<base>[:<ref>...][:self]` with full, sorted reference paths.
    fn kind_with_refs<'a>(
        &self,
        base: &str,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
    ) -> String {
        let mut sorted: Vec<&StorePath> = refs.into_iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut kind = base.to_owned();
        for r in sorted {
            kind.push(':');
            kind.push_str(&self.display_path(r));
        }
        if self_ref {
            kind.push_str(":self");
        }
        kind
    }

    /// A `source` path (what `nix-store --add` gives): `nar_hash` is the sha256 of the NAR.
    pub fn make_source_path<'a>(
        &self,
        nar_hash: &Hash,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
        name: &StorePathName,
    ) -> StorePath {
        let kind = self.kind_with_refs("source", refs, self_ref);
        self.make_store_path(&kind, nar_hash, name)
    }

    /// A `text` path (`builtins.toFile`, `.drv` files): `content_hash` is the sha256 of the
    /// file bytes.
    pub fn make_text_path<'a>(
        &self,
        content_hash: &Hash,
        refs: impl IntoIterator<Item = &'a StorePath>,
        name: &StorePathName,
    ) -> Result<StorePath, StorePathError> {
        if content_hash.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::TextNotSha256(content_hash.algo()));
        }
        let kind = self.kind_with_refs("text", refs, false);
        Ok(self.make_store_path(&kind, content_hash, name))
    }

    /// A fixed-output path. Recursive sha256 is a `source` path (and may have references);
    /// everything else hashes `fixed:out:[r:]<algo>:<hex>:` under type `output:out`.
    pub fn make_fixed_output_path<'a>(
        &self,
        recursive: bool,
        hash: &Hash,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
        name: &StorePathName,
    ) -> Result<StorePath, StorePathError> {
        if recursive && hash.algo() == HashAlgo::Sha256 {
            return Ok(self.make_source_path(hash, refs, self_ref, name));
        }
        if refs.into_iter().next().is_some() || self_ref {
            return Err(StorePathError::FixedWithReferences);
        }
        let inner = format!(
            "fixed:out:{}{}:{}:",
            if recursive { "r:" } else { "" },
            hash.algo(),
            hash.to_hex()
        );
        let inner = Hash::of(HashAlgo::Sha256, inner.as_bytes());
        Ok(self.make_store_path("output:out", &inner, name))
    }

    /// The path of output `output` of an input-addressed derivation named `drv_name`, whose
    /// masked `hashDerivationModulo` is `drv_hash`.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if output == "out" {
            StorePathName::new(drv_name)?
        } else {
            StorePathName::new(&format!("{drv_name}-{output}"))?
        };
        Ok(self.make_store_path(&format!("output:{output}"), drv_hash, &name))
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({:?})", self.0)
    }
}

impl FromStr for StoreDir {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nix() -> StoreDir {
        StoreDir::new("/nix/store").unwrap()
    }

    #[test]
    fn parse_print() {
        let s = "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";
        let p: StorePath = s.parse().unwrap();
        assert_eq!(p.to_string(), s);
        assert_eq!(p.name(), "vec-c");
        assert_eq!(p.hash_str(), "a8z667l486sd21m8rs058ir3b2sh8k14");
        let full = format!("/nix/store/{s}");
        assert_eq!(nix().parse_path(&full).unwrap(), p);
        assert_eq!(nix().display_path(&p), full);
        let sub = format!("{full}/bin/x");
        let (q, rest) = nix().parse_path_prefix(&sub).unwrap();
        assert_eq!((q, rest), (p, "/bin/x"));
        assert!(nix().parse_path("/nix/storex/a").is_err());
        assert!("a8z667l486sd21m8rs058ir3b2sh8k14_vec"
            .parse::<StorePath>()
            .is_err());
        assert!("e8z667l486sd21m8rs058ir3b2sh8k14-vec"
            .parse::<StorePath>()
            .is_err());
        assert!("a8z667l486sd21m8rs058ir3b2sh8k14-"
            .parse::<StorePath>()
            .is_err());
        assert!("a8z667l486sd21m8rs058ir3b2sh8k14-a b"
            .parse::<StorePath>()
            .is_err());
    }

    #[test]
    fn names() {
        assert!(StorePathName::new(&"a".repeat(211)).is_ok());
        assert!(StorePathName::new(&"a".repeat(212)).is_err());
        for ok in [".hidden", ".", "..", "a+b-c._?="] {
            assert!(StorePathName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a;b", "a:b", "a*", "a\tb", "café"] {
            assert!(StorePathName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_dirs() {
        for ok in ["/nix/store", "/ix/store", "/a"] {
            assert!(StoreDir::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/./s",
            "/a:b",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }
}
