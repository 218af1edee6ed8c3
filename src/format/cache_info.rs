//! `nix-cache-info`: the file at the root of a binary cache. See store-format.md §5.1.
//!
//! ```text
//! cache-info = *line                  ; at most MAX_CACHE_INFO_SIZE bytes
//! line       = key ":" value "\n"     ; value trimmed of spaces, tabs and CR
//!            | blank                  ; ignored
//! StoreDir      = store-dir           ; must equal the local store dir (checked by the caller)
//! WantMassQuery = "1" | "0"
//! Priority      = ["-"] 1*digit       ; i32, lower is preferred
//! ```
//!
//! Like Nix 2.8: unknown keys are ignored, values are trimmed (so CRLF is tolerated), and
//! a missing `StoreDir` is accepted. Nix then skips the store dir check; we **default it
//! to `/nix/store`** so a cache is always tied to one store dir (a cache for another dir
//! without the line would fail on its narinfo paths). Stricter than Nix: a non-blank line
//! without `:`, a known key given twice, a `StoreDir` that is not a valid store dir,
//! `WantMassQuery` other than `0`/`1` and a `Priority` that is not a plain integer (Nix's
//! `stoi` reads `40abc` as 40) are errors.
//!
//! Printing writes `StoreDir: <dir>\n`, then `WantMassQuery: 1\n` if true and
//! `Priority: N\n` if set; `nix copy` output (`StoreDir: /nix/store\n`) round-trips.

use std::fmt;

use thiserror::Error;

use super::store_path::{StoreDir, StorePathError};

/// The largest nix-cache-info we parse, in bytes.
pub const MAX_CACHE_INFO_SIZE: usize = 64 * 1024;

/// The store dir assumed when the file has no `StoreDir` line.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// Why a nix-cache-info file was refused. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheInfoError {
    #[error("nix-cache-info is {size} bytes, more than the limit of {MAX_CACHE_INFO_SIZE}")]
    TooLarge { size: usize },
    #[error("nix-cache-info line {line}: expected 'Key: value'")]
    BadLine { line: usize },
    #[error("nix-cache-info line {line}: '{key}' given twice")]
    Duplicate { line: usize, key: &'static str },
    #[error("nix-cache-info line {line}: invalid StoreDir")]
    StoreDir {
        line: usize,
        #[source]
        source: StorePathError,
    },
    #[error("nix-cache-info line {line}: WantMassQuery must be 0 or 1, not '{value}'")]
    WantMassQuery { line: usize, value: String },
    #[error("nix-cache-info line {line}: Priority '{value}' is not an integer")]
    Priority { line: usize, value: String },
}

/// The parsed `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// The store dir the cache's paths live in.
    pub store_dir: StoreDir,
    /// Whether clients may query many paths at once.
    pub want_mass_query: bool,
    /// Substituter priority (lower is preferred); Nix uses 0 when absent.
    pub priority: Option<i32>,
}

impl CacheInfo {
    /// What `nix copy` writes: only the store dir.
    pub fn new(store_dir: StoreDir) -> Self {
        CacheInfo {
            store_dir,
            want_mass_query: false,
            priority: None,
        }
    }

    /// Parses the file text. See the module docs for the rules.
    pub fn parse(text: &str) -> Result<Self, CacheInfoError> {
        if text.len() > MAX_CACHE_INFO_SIZE {
            return Err(CacheInfoError::TooLarge { size: text.len() });
        }
        let mut store_dir = None;
        let mut want_mass_query = None;
        let mut priority = None;
        for (idx, raw) in text.split('\n').enumerate() {
            let line = idx + 1;
            if trim(raw).is_empty() {
                continue;
            }
            let (key, value) = raw
                .split_once(':')
                .ok_or(CacheInfoError::BadLine { line })?;
            let value = trim(value);
            match key {
                "StoreDir" => {
                    let dir = StoreDir::new(value)
                        .map_err(|source| CacheInfoError::StoreDir { line, source })?;
                    set_once(&mut store_dir, dir, line, "StoreDir")?;
                }
                "WantMassQuery" => {
                    let want = match value {
                        "1" => true,
                        "0" => false,
                        _ => {
                            return Err(CacheInfoError::WantMassQuery {
                                line,
                                value: value.to_owned(),
                            })
                        }
                    };
                    set_once(&mut want_mass_query, want, line, "WantMassQuery")?;
                }
                "Priority" => {
                    let p = parse_priority(value).ok_or_else(|| CacheInfoError::Priority {
                        line,
                        value: value.to_owned(),
                    })?;
                    set_once(&mut priority, p, line, "Priority")?;
                }
                _ => {}
            }
        }
        let store_dir = match store_dir {
            Some(dir) => dir,
            None => StoreDir::new(DEFAULT_STORE_DIR)
                .map_err(|source| CacheInfoError::StoreDir { line: 0, source })?,
        };
        Ok(CacheInfo {
            store_dir,
            want_mass_query: want_mass_query.unwrap_or(false),
            priority,
        })
    }

    /// The file text.
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

/// Trims what Nix's `trim` removes: spaces, tabs, CR and LF.
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    key: &'static str,
) -> Result<(), CacheInfoError> {
    if slot.is_some() {
        return Err(CacheInfoError::Duplicate { line, key });
    }
    *slot = Some(value);
    Ok(())
}

/// An optional `-` and 1 to 10 ASCII digits, within i32.
fn parse_priority(s: &str) -> Option<i32> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StoreDir: {}", self.store_dir)?;
        if self.want_mass_query {
            writeln!(f, "WantMassQuery: 1")?;
        }
        if let Some(p) = self.priority {
            writeln!(f, "Priority: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nix() -> StoreDir {
        StoreDir::new("/nix/store").unwrap()
    }

    #[test]
    fn nix_copy_output_round_trips() {
        let text = "StoreDir: /nix/store\n";
        let info = CacheInfo::parse(text).unwrap();
        assert_eq!(info, CacheInfo::new(nix()));
        assert_eq!(info.to_text(), text);
        assert_eq!(text.len(), 21);
    }

    #[test]
    fn full_and_tolerated() {
        let text = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        let info = CacheInfo::parse(text).unwrap();
        assert!(info.want_mass_query);
        assert_eq!(info.priority, Some(40));
        assert_eq!(info.to_text(), text);
        // CRLF, extra blanks, unknown keys, other order, no trailing newline.
        let odd = "Foo: bar\r\n\r\nPriority:-5 \r\nWantMassQuery:\t0\r\nStoreDir:  /x/store";
        let info = CacheInfo::parse(odd).unwrap();
        assert_eq!(info.store_dir.as_str(), "/x/store");
        assert!(!info.want_mass_query);
        assert_eq!(info.priority, Some(-5));
        assert_eq!(info.to_text(), "StoreDir: /x/store\nPriority: -5\n");
        // No StoreDir: defaults to /nix/store.
        assert_eq!(CacheInfo::parse("").unwrap(), CacheInfo::new(nix()));
        assert_eq!(
            CacheInfo::parse("WantMassQuery: 1\n").unwrap().store_dir,
            nix()
        );
    }

    #[test]
    fn refusals() {
        // (text, expected start of the error's Debug form)
        let cases = [
            ("StoreDir /nix/store\n", "BadLine { line: 1 }"),
            (
                "StoreDir: /nix/store\nStoreDir: /nix/store\n",
                "Duplicate { line: 2, key: \"StoreDir\" }",
            ),
            ("StoreDir: /nix/store/\n", "StoreDir { line: 1"),
            ("StoreDir: \n", "StoreDir { line: 1"),
            ("WantMassQuery: yes\n", "WantMassQuery { line: 1"),
            ("Priority: 40abc\n", "Priority { line: 1"),
            ("Priority: 99999999999\n", "Priority { line: 1"),
            ("Priority: +1\n", "Priority { line: 1"),
            (
                "Priority: 1\nPriority: 2\n",
                "Duplicate { line: 2, key: \"Priority\" }",
            ),
        ];
        for (text, want) in cases {
            let e = CacheInfo::parse(text).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{e:?} for {text:?}");
        }
        let big = "x".repeat(MAX_CACHE_INFO_SIZE + 1);
        let e = CacheInfo::parse(&big);
        assert_eq!(e, Err(CacheInfoError::TooLarge { size: big.len() }));
    }
}
