//! The JSON `nix show-derivation` (Nix 2.8) prints for a derivation:
//!
//! ```text
//! { "<drv path>": { "outputs": { "<o>": { "path": "…"[, "hashAlgo": "[r:]algo", "hash": "<hex>"] } },
//!                   "inputSrcs": [ … ], "inputDrvs": { "<drv>": [ "<o>", … ] },
//!                   "system": "…", "builder": "…", "args": [ … ], "env": { … } } }
//! ```
//!
//! Fields are serialised in that order; maps are sorted like Nix's. A deferred output is
//! an empty object.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Derivation, DerivationOutput};
use crate::format::store_path::{StoreDir, StorePath};

/// One output in `nix show-derivation` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_algo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// One derivation in `nix show-derivation` JSON (the value under its `.drv` path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DerivationJson {
    pub outputs: BTreeMap<String, OutputJson>,
    pub input_srcs: Vec<String>,
    pub input_drvs: BTreeMap<String, Vec<String>>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl DerivationJson {
    pub fn new(drv: &Derivation, dir: &StoreDir) -> Self {
        let outputs = drv
            .outputs
            .iter()
            .map(|(o, out)| {
                let path = out.path().map(|p| dir.display_path(p));
                let json = match out {
                    DerivationOutput::Fixed { hash, .. } => OutputJson {
                        path,
                        hash_algo: Some(hash.method_algo()),
                        hash: Some(hash.hash.to_hex()),
                    },
                    _ => OutputJson {
                        path,
                        hash_algo: None,
                        hash: None,
                    },
                };
                (o.clone(), json)
            })
            .collect();
        DerivationJson {
            outputs,
            input_srcs: drv.input_srcs.iter().map(|p| dir.display_path(p)).collect(),
            input_drvs: drv
                .input_drvs
                .iter()
                .map(|(p, outs)| (dir.display_path(p), outs.iter().cloned().collect()))
                .collect(),
            system: drv.system.clone(),
            builder: drv.builder.clone(),
            args: drv.args.clone(),
            env: drv.env.clone(),
        }
    }
}

/// The whole `nix show-derivation` document for some derivations, keyed by `.drv` path.
pub fn show_derivations<'a>(
    dir: &StoreDir,
    drvs: impl IntoIterator<Item = (&'a StorePath, &'a Derivation)>,
) -> BTreeMap<String, DerivationJson> {
    drvs.into_iter()
        .map(|(p, d)| (dir.display_path(p), DerivationJson::new(d, dir)))
        .collect()
}
