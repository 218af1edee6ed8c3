//! Derivations (`.drv` files), as Nix 2.8 writes and hashes them: the [`Derivation`] type,
//! its strict ATerm parser and byte-exact printer, `hashDerivationModulo` and output paths
//! ([`hash`]), the `nix show-derivation` JSON ([`json`]) and `DRV^out,dev` arguments
//! ([`derived_path`]). See store-format.md §8.
//!
//! ```text
//! drv       = "Derive(" "[" outputs "]," "[" inputDrvs "]," "[" inputSrcs "],"
//!             string "," string ",[" args "],[" env "])"      ; system, builder
//! outputs   = output *("," output)                  ; strictly sorted by name, at least one
//! output    = "(" string "," path-or-empty "," string "," string ")"
//!                                                    ; (name, path, [r:]algo, hex hash)
//! inputDrvs = [inputDrv *("," inputDrv)]           ; strictly sorted by path
//! inputDrv  = "(" path ",[" [string *("," string)] "])" ; a .drv path, sorted output names
//! inputSrcs = [path *("," path)]                   ; strictly sorted
//! args      = [string *("," string)]               ; in their original order
//! env       = [pair *("," pair)]                   ; strictly sorted by key
//! pair      = "(" string "," string ")"
//! string    = '"' *(char | '\"' | '\\' | '\n' | '\r' | '\t') '"'
//! path      = '"' store-dir "/" hash32 "-" name '"'
//! ```
//!
//! There is no whitespace and no final newline. The parser accepts exactly what the printer
//! writes (the canonical form Nix writes), so parse then print gives back the same bytes:
//! no unknown escapes, no raw LF/CR/TAB inside strings, no unsorted or repeated entries, no
//! trailing bytes, UTF-8 only, at most [`MAX_DRV_SIZE`] bytes. The grammar has a fixed
//! depth, so the parser does not recurse. Output kinds:
//!
//! | tuple                          | kind                                        |
//! |--------------------------------|---------------------------------------------|
//! | `(o, path, "", "")`            | input-addressed                             |
//! | `("out", path, "[r:]algo", hex)` | fixed-output; the only output             |
//! | `(o, "", "", "")`              | deferred (while the paths are computed)     |
//!
//! Floating content-addressed and impure outputs (experimental in 2.8) are refused.
//!
//! One difference from Nix: Nix prints output names, input output names and the system
//! without escaping them. Those never contain characters that need escaping in practice
//! (output names are store path name characters here); we escape every string, so a
//! system containing `"` still round-trips instead of producing an unreadable file.

pub mod derived_path;
pub mod hash;
pub mod json;
mod parse;
mod print;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use super::ca::ContentAddress;
use super::hash::{Hash, HashAlgo, HashError};
use super::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// The largest `.drv` file we parse, in bytes.
pub const MAX_DRV_SIZE: usize = 64 << 20;
/// The extension of derivation store paths.
pub const DRV_EXTENSION: &str = ".drv";

/// Why a derivation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DerivationError {
    #[error("derivation is {0} bytes, more than the limit of {MAX_DRV_SIZE}")]
    TooLarge(usize),
    #[error("derivation is not valid UTF-8 (at byte {0})")]
    NotUtf8(usize),
    #[error("at byte {offset}: expected {expected}")]
    Expected {
        offset: usize,
        expected: &'static str,
    },
    #[error("at byte {offset}: unterminated string")]
    Unterminated { offset: usize },
    #[error("at byte {offset}: invalid escape sequence '\\{ch}'")]
    BadEscape { offset: usize, ch: char },
    #[error("at byte {offset}: unescaped control character {ch:?} in a string")]
    RawControl { offset: usize, ch: char },
    #[error("at byte {offset}: data after the end of the derivation")]
    Trailing { offset: usize },
    #[error("invalid store path '{path}' in {field}")]
    Path {
        field: &'static str,
        path: String,
        #[source]
        source: StorePathError,
    },
    #[error("{field}: '{item}' is not sorted after the previous entry or is repeated")]
    NotSorted { field: &'static str, item: String },
    #[error("invalid derivation name '{0}'")]
    Name(String, #[source] StorePathError),
    #[error("the derivation has no outputs")]
    NoOutputs,
    #[error("invalid output name '{0}' (allowed: letters, digits and +-._?=)")]
    OutputName(String),
    #[error("input derivation '{0}' is not a .drv path")]
    InputNotDrv(String),
    #[error("output '{0}': floating content-addressed and impure outputs are not supported")]
    UnsupportedOutput(String),
    #[error("output '{0}': an output hash needs an output path, and an output path without a hash needs an empty algorithm")]
    BadOutputTuple(String),
    #[error("a fixed-output derivation must have exactly one output, named 'out'")]
    FixedNotOnlyOut,
    #[error("output '{output}': invalid hash algorithm '{algo}'")]
    OutputHashAlgo {
        output: String,
        algo: String,
        #[source]
        source: HashError,
    },
    #[error(
        "output '{output}': the hash must be lowercase hex of the algorithm's size, got '{hash}'"
    )]
    OutputHash { output: String, hash: String },
    #[error("output '{output}': path {got} does not match its fixed hash, which gives {expected}")]
    FixedPathMismatch {
        output: String,
        expected: String,
        got: String,
    },
}

/// How a fixed output's hash covers its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputHashMode {
    /// The bytes of a single regular file.
    Flat,
    /// The NAR serialisation of the tree.
    Recursive,
}

impl OutputHashMode {
    /// The value of the `outputHashMode` attribute: `flat` or `recursive`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputHashMode::Flat => "flat",
            OutputHashMode::Recursive => "recursive",
        }
    }
}

/// The declared hash of a fixed output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedOutputHash {
    pub mode: OutputHashMode,
    pub hash: Hash,
}

impl FixedOutputHash {
    /// `[r:]<algo>`, the third field of the output tuple (and `hashAlgo` in JSON).
    pub fn method_algo(&self) -> String {
        match self.mode {
            OutputHashMode::Flat => self.hash.algo().to_string(),
            OutputHashMode::Recursive => format!("r:{}", self.hash.algo()),
        }
    }

    /// The content address the output will have once built.
    pub fn content_address(&self) -> ContentAddress {
        ContentAddress::Fixed {
            recursive: self.mode == OutputHashMode::Recursive,
            hash: self.hash,
        }
    }

    /// The output path this hash gives to an output named `name` (the derivation name).
    pub fn output_path(&self, dir: &StoreDir, name: &StorePathName) -> StorePath {
        let recursive = self.mode == OutputHashMode::Recursive;
        match dir.make_fixed_output_path(recursive, &self.hash, [], false, name) {
            Ok(p) => p,
            // Without references, a fixed-output path cannot be refused.
            Err(_) => unreachable!("fixed-output path without references"),
        }
    }

    /// Parses the strict drv form: `[r:]<algo>` and lowercase hex.
    fn parse_drv(output: &str, method_algo: &str, hex: &str) -> Result<Self, DerivationError> {
        let (mode, algo) = match method_algo.strip_prefix("r:") {
            Some(a) => (OutputHashMode::Recursive, a),
            None => (OutputHashMode::Flat, method_algo),
        };
        let algo: HashAlgo = algo
            .parse()
            .map_err(|source| DerivationError::OutputHashAlgo {
                output: output.to_owned(),
                algo: method_algo.to_owned(),
                source,
            })?;
        let bad = || DerivationError::OutputHash {
            output: output.to_owned(),
            hash: hex.to_owned(),
        };
        if hex.len() != algo.size() * 2
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let hash = Hash::parse_any(hex, Some(algo)).map_err(|_| bad())?;
        Ok(FixedOutputHash { mode, hash })
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// An input-addressed output at a path given by `hashDerivationModulo`.
    InputAddressed(StorePath),
    /// A fixed-output (content-addressed, hash known in advance) output.
    Fixed {
        path: StorePath,
        hash: FixedOutputHash,
    },
    /// An input-addressed output whose path is not computed yet (printed with an empty
    /// path; what the evaluator hashes before it knows the output paths).
    Deferred,
}

impl DerivationOutput {
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            DerivationOutput::InputAddressed(p) | DerivationOutput::Fixed { path: p, .. } => {
                Some(p)
            }
            DerivationOutput::Deferred => None,
        }
    }

    pub fn fixed_hash(&self) -> Option<&FixedOutputHash> {
        match self {
            DerivationOutput::Fixed { hash, .. } => Some(hash),
            _ => None,
        }
    }
}

/// A derivation: how to build some outputs from some inputs.
///
/// `name` is not part of the ATerm text: like Nix, it comes from the `.drv` path
/// (`<hash>-<name>.drv`) or from whoever creates the derivation. It names the outputs
/// (`<name>` for `out`, `<name>-<output>` otherwise) and the `.drv` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub name: String,
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and the outputs of each that are used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input store paths that are not built by this closure (sources, text files).
    pub input_srcs: BTreeSet<StorePath>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Whether `name` can be an output name: like a store path name (it becomes part of one).
pub fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

impl Derivation {
    /// The derivation name of a `.drv` store path: its name without `.drv`.
    pub fn name_from_drv_path(path: &StorePath) -> Result<&str, DerivationError> {
        path.name()
            .strip_suffix(DRV_EXTENSION)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| DerivationError::InputNotDrv(path.to_string()))
    }

    /// Parses the `.drv` file of the store path `drv_path`.
    pub fn parse_store_drv(
        bytes: &[u8],
        dir: &StoreDir,
        drv_path: &StorePath,
    ) -> Result<Self, DerivationError> {
        Self::parse(bytes, dir, Self::name_from_drv_path(drv_path)?)
    }

    /// The `.drv` path name: `<name>.drv`.
    pub fn drv_name(&self) -> Result<StorePathName, DerivationError> {
        let full = format!("{}{DRV_EXTENSION}", self.name);
        StorePathName::new(&full).map_err(|e| DerivationError::Name(self.name.clone(), e))
    }

    /// Checks what the parser guarantees, for derivations built in code: a valid name, at
    /// least one output, valid output names, input derivations that are `.drv` paths, a
    /// fixed output only as the single output `out`, and a fixed output's path matching
    /// its hash.
    pub fn validate(&self, dir: &StoreDir) -> Result<(), DerivationError> {
        self.drv_name()?;
        let name = StorePathName::new(&self.name)
            .map_err(|e| DerivationError::Name(self.name.clone(), e))?;
        if self.outputs.is_empty() {
            return Err(DerivationError::NoOutputs);
        }
        for (o, out) in &self.outputs {
            if !valid_output_name(o) {
                return Err(DerivationError::OutputName(o.clone()));
            }
            if let DerivationOutput::Fixed { path, hash } = out {
                if self.outputs.len() != 1 || o != "out" {
                    return Err(DerivationError::FixedNotOnlyOut);
                }
                let expected = hash.output_path(dir, &name);
                if *path != expected {
                    return Err(DerivationError::FixedPathMismatch {
                        output: o.clone(),
                        expected: dir.display_path(&expected),
                        got: dir.display_path(path),
                    });
                }
            }
        }
        for (p, outs) in &self.input_drvs {
            Self::name_from_drv_path(p)?;
            if let Some(bad) = outs.iter().find(|o| !valid_output_name(o)) {
                return Err(DerivationError::OutputName(bad.clone()));
            }
        }
        Ok(())
    }

    /// Whether this is a fixed-output derivation (its only output `out` has a known hash).
    pub fn is_fixed_output(&self) -> bool {
        self.fixed_output().is_some()
    }

    /// The path and hash of the fixed output, if this is a fixed-output derivation.
    pub fn fixed_output(&self) -> Option<(&StorePath, &FixedOutputHash)> {
        match (self.outputs.len(), self.outputs.get("out")) {
            (1, Some(DerivationOutput::Fixed { path, hash })) => Some((path, hash)),
            _ => None,
        }
    }

    /// The path of output `name`, if it has one.
    pub fn output_path(&self, name: &str) -> Option<&StorePath> {
        self.outputs.get(name).and_then(DerivationOutput::path)
    }

    /// The outputs that have paths (all of them, unless some are deferred).
    pub fn output_paths(&self) -> BTreeMap<&str, &StorePath> {
        self.outputs
            .iter()
            .filter_map(|(o, out)| out.path().map(|p| (o.as_str(), p)))
            .collect()
    }

    /// [`Derivation::output_paths`] as owned values, as the store records them.
    pub fn owned_output_paths(&self) -> BTreeMap<String, StorePath> {
        self.output_paths()
            .into_iter()
            .map(|(o, p)| (o.to_owned(), p.clone()))
            .collect()
    }

    /// The references of the `.drv` file: input sources and input derivations (not the
    /// outputs).
    pub fn references(&self) -> BTreeSet<StorePath> {
        self.input_srcs
            .iter()
            .chain(self.input_drvs.keys())
            .cloned()
            .collect()
    }

    /// The store paths a build needs present: input sources, and the used outputs of the
    /// input derivations as named here (paths come from `input_outputs`, e.g. each input
    /// derivation's [`Derivation::output_path`]). Outputs `input_outputs` does not know
    /// are returned in the second set as `(drv, output)`.
    pub fn input_paths(
        &self,
        mut input_outputs: impl FnMut(&StorePath, &str) -> Option<StorePath>,
    ) -> (BTreeSet<StorePath>, BTreeSet<(&StorePath, &str)>) {
        let mut paths = self.input_srcs.clone();
        let mut unknown = BTreeSet::new();
        for (drv, outs) in &self.input_drvs {
            for o in outs {
                match input_outputs(drv, o) {
                    Some(p) => {
                        paths.insert(p);
                    }
                    None => {
                        unknown.insert((drv, o.as_str()));
                    }
                }
            }
        }
        (paths, unknown)
    }

    /// The store path of the `.drv` file: a `text` path named `<name>.drv` whose
    /// references are the input sources and input derivations.
    pub fn drv_path(&self, dir: &StoreDir) -> Result<StorePath, DerivationError> {
        let name = self.drv_name()?;
        let text = self.print(dir);
        let hash = Hash::of(HashAlgo::Sha256, text.as_bytes());
        dir.make_text_path(&hash, &self.references(), &name)
            .map_err(|e| DerivationError::Name(self.name.clone(), e))
    }
}

impl fmt::Display for OutputHashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
