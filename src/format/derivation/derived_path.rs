//! Arguments naming what to build or fetch: a plain store path, or a derivation with the
//! outputs wanted.
//!
//! ```text
//! derived-path = store-path                       ; Opaque
//!              | drv-path sep outputs            ; Built
//! sep          = "^" | "!"                        ; "!" is what Nix 2.8 itself used
//! outputs      = "*" | output-name *("," output-name)
//! ```
//!
//! Printing uses `^`. Store paths never contain `^`, `!` or `,`, so splitting at the last
//! separator is unambiguous.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use super::{valid_output_name, Derivation};
use crate::format::store_path::{StoreDir, StorePath, StorePathError};

/// Why a derived path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DerivedPathError {
    #[error("invalid store path in '{arg}'")]
    Path {
        arg: String,
        #[source]
        source: StorePathError,
    },
    #[error("'{0}' selects outputs but is not a .drv path")]
    NotDrv(String),
    #[error("'{0}': no outputs given after the separator")]
    NoOutputs(String),
    #[error("'{arg}': invalid output name '{output}'")]
    OutputName { arg: String, output: String },
}

/// Which outputs of a derivation are wanted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutputsSpec {
    /// `*`: every output.
    All,
    /// Some outputs by name (never empty).
    Names(BTreeSet<String>),
}

impl OutputsSpec {
    pub fn contains(&self, output: &str) -> bool {
        match self {
            OutputsSpec::All => true,
            OutputsSpec::Names(n) => n.contains(output),
        }
    }

    /// The wanted outputs among those `drv` has; unknown names are returned apart.
    pub fn select<'a>(&'a self, drv: &'a Derivation) -> (Vec<&'a str>, Vec<&'a str>) {
        match self {
            OutputsSpec::All => (drv.outputs.keys().map(String::as_str).collect(), vec![]),
            OutputsSpec::Names(names) => names
                .iter()
                .map(String::as_str)
                .partition(|n| drv.outputs.contains_key(*n)),
        }
    }
}

impl fmt::Display for OutputsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputsSpec::All => f.write_str("*"),
            OutputsSpec::Names(n) => {
                let v: Vec<&str> = n.iter().map(String::as_str).collect();
                f.write_str(&v.join(","))
            }
        }
    }
}

/// A store path, or a derivation and some of its outputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DerivedPath {
    Opaque(StorePath),
    Built {
        drv: StorePath,
        outputs: OutputsSpec,
    },
}

impl DerivedPath {
    /// Splits `arg` into the path part and the outputs part (after `^` or `!`), if any.
    pub fn split(arg: &str) -> (&str, Option<&str>) {
        match arg.rfind(['^', '!']) {
            Some(i) => (&arg[..i], Some(&arg[i + 1..])),
            None => (arg, None),
        }
    }

    /// Parses a full path in `dir`, with optional outputs.
    pub fn parse(arg: &str, dir: &StoreDir) -> Result<Self, DerivedPathError> {
        Self::parse_with(arg, |p| dir.parse_path(p))
    }

    /// Like [`DerivedPath::parse`], with the path part parsed by `parse_path` (e.g. one
    /// that also accepts physical paths).
    pub fn parse_with<E: Into<StorePathError>>(
        arg: &str,
        parse_path: impl FnOnce(&str) -> Result<StorePath, E>,
    ) -> Result<Self, DerivedPathError> {
        let (path, outputs) = Self::split(arg);
        let path = parse_path(path).map_err(|e| DerivedPathError::Path {
            arg: arg.to_owned(),
            source: e.into(),
        })?;
        let Some(outputs) = outputs else {
            return Ok(DerivedPath::Opaque(path));
        };
        if Derivation::name_from_drv_path(&path).is_err() {
            return Err(DerivedPathError::NotDrv(arg.to_owned()));
        }
        let outputs = if outputs == "*" {
            OutputsSpec::All
        } else if outputs.is_empty() {
            return Err(DerivedPathError::NoOutputs(arg.to_owned()));
        } else {
            let mut names = BTreeSet::new();
            for o in outputs.split(',') {
                if !valid_output_name(o) {
                    return Err(DerivedPathError::OutputName {
                        arg: arg.to_owned(),
                        output: o.to_owned(),
                    });
                }
                names.insert(o.to_owned());
            }
            OutputsSpec::Names(names)
        };
        Ok(DerivedPath::Built { drv: path, outputs })
    }

    /// The store path named (the derivation, for `Built`).
    pub fn path(&self) -> &StorePath {
        match self {
            DerivedPath::Opaque(p) | DerivedPath::Built { drv: p, .. } => p,
        }
    }

    /// `<path>` or `<drv>^<outputs>`.
    pub fn display(&self, dir: &StoreDir) -> String {
        match self {
            DerivedPath::Opaque(p) => dir.display_path(p),
            DerivedPath::Built { drv, outputs } => format!("{}^{outputs}", dir.display_path(drv)),
        }
    }
}
