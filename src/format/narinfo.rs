//! `<hash32>.narinfo`: the metadata of one store path in a binary cache, parsed and printed
//! byte for byte like Nix 2.8 (`libstore/nar-info.cc`), plus the signature fingerprint,
//! signing and verification. See store-format.md §4 and §5.
//!
//! ```text
//! narinfo     = 1*line                        ; at most MAX_NARINFO_SIZE bytes
//! line        = key ": " value "\n"           ; split at the first ':', exactly one space
//! StorePath   = store-dir "/" hash32 "-" name ; mandatory, inside the given store dir
//! URL         = text                          ; mandatory
//! Compression = text                          ; absent means bzip2 to Nix; kept as absent
//! FileHash    = typed-hash                    ; sha256 only
//! FileSize    = decimal
//! NarHash     = typed-hash                    ; mandatory, sha256 only
//! NarSize     = decimal                       ; mandatory, > 0
//! References  = [base-name *(" " base-name)]  ; "References: " when empty
//! Deriver     = base-name | "unknown-deriver" ; the latter means none
//! System      = text
//! Sig         = text without whitespace       ; repeatable, kept as a sorted set
//! CA          = content-address               ; "text:sha256:…" | "fixed:[r:]algo:…"
//! typed-hash  = algo ":" (nix32 | hex | base64) | algo "-" base64   ; SRI
//! decimal     = "0" | [1-9] *digit            ; fits u64
//! ```
//!
//! Printing writes the fields in Nix's order (StorePath, URL, Compression, FileHash,
//! FileSize, NarHash, NarSize, References, Deriver, System, Sig…, CA), hashes as
//! `sha256:<nix32>`, references sorted. Everything Nix writes round-trips byte for byte.
//!
//! Parsing accepts everything Nix writes and what Nix tolerates that is harmless, and is
//! stricter elsewhere:
//!
//! * accepted: unknown keys (ignored), hex/base64/SRI hashes, missing
//!   FileHash/FileSize/Compression/References/Deriver/System/CA/Sig,
//!   `Deriver: unknown-deriver`, unsorted References, repeated identical `Sig` lines, a
//!   StorePath whose name differs from the one asked for (the caller compares it with
//!   the request). Printing **normalises** these: hashes in nix32, references sorted,
//!   unknown keys and `unknown-deriver` dropped.
//! * refused (Nix accepts some of these): input over 1 MiB; no final newline; CR or any
//!   other control character; a line without `: ` after the first colon (Nix would read
//!   `Compression:xz` as `z`); an empty key; a known field given twice (except `Sig`);
//!   missing StorePath/URL/NarHash/NarSize; NarSize 0; untyped or non-sha256
//!   NarHash/FileHash; numbers with signs or leading zeros; full paths or duplicates
//!   in References; empty values (except References); whitespace inside a Sig (the DB
//!   keeps sigs space-separated); a StorePath outside the store dir.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;

use thiserror::Error;

use super::ca::{CaError, ContentAddress};
use super::hash::{Hash, HashAlgo, HashError};
use super::keys::{KeyError, SecretKey, TrustedKeys};
use super::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// The largest narinfo we parse, in bytes.
pub const MAX_NARINFO_SIZE: usize = 1 << 20;

/// The value Nix uses for "no deriver".
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// A narinfo field, named as in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    StorePath,
    Url,
    Compression,
    FileHash,
    FileSize,
    NarHash,
    NarSize,
    References,
    Deriver,
    System,
    Sig,
    Ca,
}

impl Field {
    /// Every field with its key as written in the file.
    const KEYS: [(Field, &'static str); 12] = [
        (Field::StorePath, "StorePath"),
        (Field::Url, "URL"),
        (Field::Compression, "Compression"),
        (Field::FileHash, "FileHash"),
        (Field::FileSize, "FileSize"),
        (Field::NarHash, "NarHash"),
        (Field::NarSize, "NarSize"),
        (Field::References, "References"),
        (Field::Deriver, "Deriver"),
        (Field::System, "System"),
        (Field::Sig, "Sig"),
        (Field::Ca, "CA"),
    ];

    /// The key as written in the file.
    pub fn key(self) -> &'static str {
        Self::KEYS
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("", |(_, k)| k)
    }

    fn from_key(key: &str) -> Option<Field> {
        Self::KEYS.iter().find(|(_, k)| *k == key).map(|(f, _)| *f)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Why a narinfo was refused. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo is {size} bytes, more than the limit of {MAX_NARINFO_SIZE}")]
    TooLarge { size: usize },
    #[error("narinfo is not valid UTF-8")]
    NotUtf8,
    #[error("narinfo does not end with a newline")]
    NoFinalNewline,
    #[error("narinfo line {line}: control character {ch:?} is not allowed")]
    ControlChar { line: usize, ch: char },
    #[error("narinfo line {line}: expected 'Key: value'")]
    BadLine { line: usize },
    #[error("narinfo line {line}: expected exactly one space after the colon")]
    NoSpaceAfterColon { line: usize },
    #[error("narinfo line {line}: field '{field}' given twice")]
    Duplicate { line: usize, field: Field },
    #[error("narinfo lacks the mandatory field '{field}'")]
    Missing { field: Field },
    #[error("narinfo line {line}: {field}: {reason}")]
    BadValue {
        line: usize,
        field: Field,
        reason: &'static str,
    },
    #[error("narinfo line {line}: invalid {field}")]
    Hash {
        line: usize,
        field: Field,
        #[source]
        source: HashError,
    },
    #[error("narinfo line {line}: {field} must be a sha256 hash, not {algo}")]
    NotSha256 {
        line: usize,
        field: Field,
        algo: HashAlgo,
    },
    #[error("narinfo line {line}: invalid {field}")]
    StorePath {
        line: usize,
        field: Field,
        #[source]
        source: StorePathError,
    },
    #[error("narinfo line {line}: reference '{reference}' listed twice")]
    DuplicateReference { line: usize, reference: String },
    #[error("narinfo line {line}: invalid CA")]
    Ca {
        line: usize,
        #[source]
        source: CaError,
    },
    #[error("invalid narinfo {field}: {reason}")]
    Invalid { field: Field, reason: &'static str },
}

/// Why a text value cannot be stored in a narinfo field, if it cannot.
fn value_problem(field: Field, value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("empty value")
    } else if value.chars().any(char::is_control) {
        Some("control character in value")
    } else if field == Field::Sig && value.chars().any(char::is_whitespace) {
        Some("whitespace in signature")
    } else {
        None
    }
}

fn check_value(field: Field, value: &str) -> Result<(), NarInfoError> {
    match value_problem(field, value) {
        Some(reason) => Err(NarInfoError::Invalid { field, reason }),
        None => Ok(()),
    }
}

fn check_sha256(field: Field, hash: &Hash) -> Result<(), NarInfoError> {
    if hash.algo() != HashAlgo::Sha256 {
        return Err(NarInfoError::Invalid {
            field,
            reason: "must be a sha256 hash",
        });
    }
    Ok(())
}

/// A canonical decimal: no sign, no leading zeros, fits in u64.
fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// The metadata of one store path in a binary cache. Fields are private so that every
/// value can be printed and parsed back; use [`NarInfo::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    store_path: StorePath,
    url: String,
    compression: Option<String>,
    file_hash: Option<Hash>,
    file_size: Option<u64>,
    nar_hash: Hash,
    nar_size: u64,
    references: BTreeSet<StorePath>,
    deriver: Option<StorePath>,
    system: Option<String>,
    sigs: BTreeSet<String>,
    ca: Option<ContentAddress>,
}

/// The string a path's signatures sign:
/// `1;<full path>;sha256:<nix32 NarHash>;<NarSize>;<sorted full references, ','>`.
/// Shared by narinfo files and the local store's signatures.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let mut refs: Vec<&StorePath> = references.into_iter().collect();
    refs.sort();
    refs.dedup();
    let mut fp = format!(
        "1;{};{};{nar_size};",
        store_dir.display_path(path),
        nar_hash
    );
    for (i, r) in refs.into_iter().enumerate() {
        if i > 0 {
            fp.push(',');
        }
        fp.push_str(&store_dir.display_path(r));
    }
    fp
}

impl NarInfo {
    /// A narinfo with the mandatory fields only. `nar_hash` must be sha256 and
    /// `nar_size` non-zero.
    pub fn new(
        store_path: StorePath,
        url: &str,
        nar_hash: Hash,
        nar_size: u64,
    ) -> Result<Self, NarInfoError> {
        check_value(Field::Url, url)?;
        check_sha256(Field::NarHash, &nar_hash)?;
        if nar_size == 0 {
            return Err(NarInfoError::Invalid {
                field: Field::NarSize,
                reason: "must not be 0",
            });
        }
        Ok(NarInfo {
            store_path,
            url: url.to_owned(),
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            deriver: None,
            system: None,
            sigs: BTreeSet::new(),
            ca: None,
        })
    }

    /// What `nix copy --to 'file://…?compression=none'` writes for a NAR: URL
    /// `nar/<nix32 NarHash>.nar`, `Compression: none`, FileHash/FileSize equal to
    /// NarHash/NarSize.
    pub fn uncompressed(
        store_path: StorePath,
        nar_hash: Hash,
        nar_size: u64,
        references: impl IntoIterator<Item = StorePath>,
    ) -> Result<Self, NarInfoError> {
        let url = format!("nar/{}.nar", nar_hash.to_nix32());
        let mut info = Self::new(store_path, &url, nar_hash, nar_size)?;
        info.compression = Some("none".to_owned());
        info.file_hash = Some(nar_hash);
        info.file_size = Some(nar_size);
        info.set_references(references);
        Ok(info)
    }

    /// Parses narinfo bytes: checks the size limit before decoding UTF-8.
    pub fn parse_bytes(bytes: &[u8], store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        if bytes.len() > MAX_NARINFO_SIZE {
            return Err(NarInfoError::TooLarge { size: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| NarInfoError::NotUtf8)?;
        Self::parse(text, store_dir)
    }

    /// Parses narinfo text whose StorePath must lie in `store_dir`. See the module docs
    /// for what is accepted.
    pub fn parse(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_SIZE {
            return Err(NarInfoError::TooLarge { size: text.len() });
        }
        let mut p = Parsed::default();
        if !text.is_empty() {
            let body = text
                .strip_suffix('\n')
                .ok_or(NarInfoError::NoFinalNewline)?;
            for (idx, line) in body.split('\n').enumerate() {
                p.line(idx + 1, line, store_dir)?;
            }
        }
        p.finish()
    }

    /// The narinfo text, exactly as Nix 2.8 would write it.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out, store_dir);
        out
    }

    fn write_text(&self, out: &mut String, store_dir: &StoreDir) -> fmt::Result {
        writeln!(
            out,
            "StorePath: {}",
            store_dir.display_path(&self.store_path)
        )?;
        writeln!(out, "URL: {}", self.url)?;
        if let Some(c) = &self.compression {
            writeln!(out, "Compression: {c}")?;
        }
        if let Some(h) = &self.file_hash {
            writeln!(out, "FileHash: {h}")?;
        }
        if let Some(s) = self.file_size {
            writeln!(out, "FileSize: {s}")?;
        }
        writeln!(out, "NarHash: {}", self.nar_hash)?;
        writeln!(out, "NarSize: {}", self.nar_size)?;
        out.push_str("References: ");
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(r.as_str());
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            writeln!(out, "Deriver: {d}")?;
        }
        if let Some(s) = &self.system {
            writeln!(out, "System: {s}")?;
        }
        for sig in &self.sigs {
            writeln!(out, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(out, "CA: {ca}")?;
        }
        Ok(())
    }

    /// The signed fingerprint:
    /// `1;<full path>;sha256:<nix32 NarHash>;<NarSize>;<sorted full references, ','>`.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds a signature by `key` over the fingerprint (the set stays sorted, no
    /// duplicates).
    pub fn sign(&mut self, key: &SecretKey, store_dir: &StoreDir) {
        let sig = key.sign(&self.fingerprint(store_dir));
        self.sigs.insert(sig.to_string());
    }

    /// How many signatures are valid signatures by trusted keys. A malformed signature
    /// under a trusted name is an error, as in Nix.
    pub fn count_valid_signatures(
        &self,
        keys: &TrustedKeys,
        store_dir: &StoreDir,
    ) -> Result<usize, KeyError> {
        let fp = self.fingerprint(store_dir);
        keys.count_valid(&fp, self.sigs.iter().map(String::as_str))
    }

    /// Whether at least one signature is valid and by a trusted key.
    pub fn verify(&self, keys: &TrustedKeys, store_dir: &StoreDir) -> Result<bool, KeyError> {
        Ok(self.count_valid_signatures(keys, store_dir)? > 0)
    }

    /// Whether the CA field, name and references imply exactly this store path (Nix's
    /// `isContentAddressed`); such paths need no signature.
    pub fn is_content_addressed(&self, store_dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else {
            return false;
        };
        let Ok(name) = StorePathName::new(self.store_path.name()) else {
            return false;
        };
        let self_ref = self.references.contains(&self.store_path);
        let others = self.references.iter().filter(|r| **r != self.store_path);
        ca.store_path(store_dir, &name, others, self_ref)
            .is_ok_and(|p| p == self.store_path)
    }

    pub fn store_path(&self) -> &StorePath {
        &self.store_path
    }
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The `Compression` label; `None` when the field was absent (Nix reads bzip2).
    pub fn compression(&self) -> Option<&str> {
        self.compression.as_deref()
    }
    pub fn file_hash(&self) -> Option<&Hash> {
        self.file_hash.as_ref()
    }
    pub fn file_size(&self) -> Option<u64> {
        self.file_size
    }
    pub fn nar_hash(&self) -> &Hash {
        &self.nar_hash
    }
    pub fn nar_size(&self) -> u64 {
        self.nar_size
    }
    /// Base names, sorted; includes the path itself if it refers to itself.
    pub fn references(&self) -> &BTreeSet<StorePath> {
        &self.references
    }
    pub fn deriver(&self) -> Option<&StorePath> {
        self.deriver.as_ref()
    }
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }
    /// The `Sig` values (`name:base64`), sorted.
    pub fn sigs(&self) -> &BTreeSet<String> {
        &self.sigs
    }
    pub fn ca(&self) -> Option<&ContentAddress> {
        self.ca.as_ref()
    }

    pub fn set_store_path(&mut self, path: StorePath) {
        self.store_path = path;
    }
    pub fn set_url(&mut self, url: &str) -> Result<(), NarInfoError> {
        check_value(Field::Url, url)?;
        self.url = url.to_owned();
        Ok(())
    }
    pub fn set_compression(&mut self, compression: Option<&str>) -> Result<(), NarInfoError> {
        if let Some(c) = compression {
            check_value(Field::Compression, c)?;
        }
        self.compression = compression.map(str::to_owned);
        Ok(())
    }
    pub fn set_file_hash(&mut self, hash: Option<Hash>) -> Result<(), NarInfoError> {
        if let Some(h) = &hash {
            check_sha256(Field::FileHash, h)?;
        }
        self.file_hash = hash;
        Ok(())
    }
    pub fn set_file_size(&mut self, size: Option<u64>) {
        self.file_size = size;
    }
    pub fn set_nar(&mut self, hash: Hash, size: u64) -> Result<(), NarInfoError> {
        check_sha256(Field::NarHash, &hash)?;
        if size == 0 {
            return Err(NarInfoError::Invalid {
                field: Field::NarSize,
                reason: "must not be 0",
            });
        }
        self.nar_hash = hash;
        self.nar_size = size;
        Ok(())
    }
    /// Replaces the references (duplicates collapse).
    pub fn set_references(&mut self, references: impl IntoIterator<Item = StorePath>) {
        self.references = references.into_iter().collect();
    }
    pub fn set_deriver(&mut self, deriver: Option<StorePath>) {
        self.deriver = deriver;
    }
    pub fn set_system(&mut self, system: Option<&str>) -> Result<(), NarInfoError> {
        if let Some(s) = system {
            check_value(Field::System, s)?;
        }
        self.system = system.map(str::to_owned);
        Ok(())
    }
    pub fn set_ca(&mut self, ca: Option<ContentAddress>) {
        self.ca = ca;
    }
    /// Adds a `Sig` value as is (it is only checked to fit on a line, without spaces).
    pub fn add_sig(&mut self, sig: &str) -> Result<(), NarInfoError> {
        check_value(Field::Sig, sig)?;
        self.sigs.insert(sig.to_owned());
        Ok(())
    }
    pub fn clear_sigs(&mut self) {
        self.sigs.clear();
    }
}

/// Fields collected while parsing, before the mandatory ones are checked.
#[derive(Default)]
struct Parsed {
    seen: Vec<Field>,
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Hash>,
    nar_size: Option<u64>,
    references: BTreeSet<StorePath>,
    deriver: Option<StorePath>,
    system: Option<String>,
    sigs: BTreeSet<String>,
    ca: Option<ContentAddress>,
}

impl Parsed {
    /// One `Key: value` line: split it, refuse a repeated field, check the value's
    /// characters, then store the value in its field.
    fn line(&mut self, line: usize, text: &str, store_dir: &StoreDir) -> Result<(), NarInfoError> {
        let (key, value) = split_line(line, text)?;
        let Some(field) = Field::from_key(key) else {
            return Ok(()); // unknown keys are ignored, as in Nix
        };
        self.note_seen(line, field)?;
        if field != Field::References {
            if let Some(reason) = value_problem(field, value) {
                return Err(NarInfoError::BadValue {
                    line,
                    field,
                    reason,
                });
            }
        }
        self.store(FieldLine { line, field }, value, store_dir)
    }

    /// Every field but `Sig` appears at most once.
    fn note_seen(&mut self, line: usize, field: Field) -> Result<(), NarInfoError> {
        if field != Field::Sig {
            if self.seen.contains(&field) {
                return Err(NarInfoError::Duplicate { line, field });
            }
            self.seen.push(field);
        }
        Ok(())
    }

    /// Parses `value` as `at.field` wants and stores it.
    fn store(
        &mut self,
        at: FieldLine,
        value: &str,
        store_dir: &StoreDir,
    ) -> Result<(), NarInfoError> {
        match at.field {
            Field::StorePath => {
                self.store_path = Some(store_dir.parse_path(value).map_err(|s| at.store_path(s))?)
            }
            Field::Url => self.url = Some(value.to_owned()),
            Field::Compression => self.compression = Some(value.to_owned()),
            Field::FileHash => self.file_hash = Some(at.sha256(value)?),
            Field::FileSize => self.file_size = Some(at.number(value)?),
            Field::NarHash => self.nar_hash = Some(at.sha256(value)?),
            Field::NarSize => match at.number(value)? {
                0 => return Err(at.bad("must not be 0")),
                n => self.nar_size = Some(n),
            },
            Field::References => self.references(at, value)?,
            Field::Deriver => {
                if value != UNKNOWN_DERIVER {
                    self.deriver = Some(value.parse().map_err(|s| at.store_path(s))?);
                }
            }
            Field::System => self.system = Some(value.to_owned()),
            Field::Sig => {
                self.sigs.insert(value.to_owned());
            }
            Field::Ca => {
                self.ca = Some(value.parse().map_err(|source| NarInfoError::Ca {
                    line: at.line,
                    source,
                })?)
            }
        }
        Ok(())
    }

    /// `References:` is a space-separated list of base names, each at most once.
    fn references(&mut self, at: FieldLine, value: &str) -> Result<(), NarInfoError> {
        if value.is_empty() {
            return Ok(());
        }
        for word in value.split(' ') {
            let r: StorePath = word.parse().map_err(|s| at.store_path(s))?;
            if !self.references.insert(r) {
                return Err(NarInfoError::DuplicateReference {
                    line: at.line,
                    reference: word.to_owned(),
                });
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<NarInfo, NarInfoError> {
        let missing = |field| NarInfoError::Missing { field };
        Ok(NarInfo {
            store_path: self.store_path.ok_or(missing(Field::StorePath))?,
            url: self.url.ok_or(missing(Field::Url))?,
            nar_hash: self.nar_hash.ok_or(missing(Field::NarHash))?,
            nar_size: self.nar_size.ok_or(missing(Field::NarSize))?,
            compression: self.compression,
            file_hash: self.file_hash,
            file_size: self.file_size,
            references: self.references,
            deriver: self.deriver,
            system: self.system,
            sigs: self.sigs,
            ca: self.ca,
        })
    }
}

/// Splits a line into key and value: no control characters, a non-empty key, `: `.
fn split_line(line: usize, text: &str) -> Result<(&str, &str), NarInfoError> {
    if let Some(ch) = text.chars().find(|c| c.is_control()) {
        return Err(NarInfoError::ControlChar { line, ch });
    }
    let (key, rest) = text.split_once(':').ok_or(NarInfoError::BadLine { line })?;
    if key.is_empty() {
        return Err(NarInfoError::BadLine { line });
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or(NarInfoError::NoSpaceAfterColon { line })?;
    Ok((key, value))
}

/// Where a value was read, so that each value parser's error names its line and field.
#[derive(Clone, Copy)]
struct FieldLine {
    line: usize,
    field: Field,
}

impl FieldLine {
    fn bad(self, reason: &'static str) -> NarInfoError {
        NarInfoError::BadValue {
            line: self.line,
            field: self.field,
            reason,
        }
    }
    fn store_path(self, source: StorePathError) -> NarInfoError {
        NarInfoError::StorePath {
            line: self.line,
            field: self.field,
            source,
        }
    }
    fn number(self, value: &str) -> Result<u64, NarInfoError> {
        parse_decimal(value).ok_or_else(|| self.bad("not a canonical decimal"))
    }
    /// A prefixed hash that must be SHA-256.
    fn sha256(self, value: &str) -> Result<Hash, NarInfoError> {
        let h = Hash::parse_prefixed(value).map_err(|source| NarInfoError::Hash {
            line: self.line,
            field: self.field,
            source,
        })?;
        if h.algo() != HashAlgo::Sha256 {
            return Err(NarInfoError::NotSha256 {
                line: self.line,
                field: self.field,
                algo: h.algo(),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests;
