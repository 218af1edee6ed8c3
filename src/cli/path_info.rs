//! `store path-info [--json] [-r] PATH…`: print valid paths and their metadata, in the shape
//! of `nix path-info [--json]`.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use store::store::{LocalStore, PathInfo};

use super::GlobalArgs;

/// Show information about valid store paths
#[derive(Debug, Args)]
pub struct PathInfoArgs {
    /// Store paths (logical, or under the physical store dir)
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Include the closures of the paths
    #[arg(short, long)]
    pub recursive: bool,
    /// Print JSON like `nix path-info --json`
    #[arg(long)]
    pub json: bool,
}

/// One entry of `nix path-info --json`, fields in Nix's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfoJson {
    path: String,
    nar_hash: String,
    nar_size: u64,
    references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deriver: Option<String>,
    registration_time: i64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ultimate: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    signatures: Vec<String>,
}

impl PathInfoJson {
    pub fn new(store: &LocalStore, info: &PathInfo) -> Self {
        PathInfoJson {
            path: store.print_path(&info.path),
            nar_hash: info.nar_hash.to_sri(),
            nar_size: info.nar_size,
            references: info
                .references
                .iter()
                .map(|r| store.print_path(r))
                .collect(),
            ca: info.ca.map(|c| c.to_string()),
            deriver: info.deriver.as_ref().map(|d| store.print_path(d)),
            registration_time: info.registration_time,
            ultimate: info.ultimate,
            signatures: info.sigs.iter().map(ToString::to_string).collect(),
        }
    }
}

pub fn run(g: &GlobalArgs, args: PathInfoArgs) -> Result<ExitCode> {
    let store = super::open_store(g)?;
    let mut paths = BTreeSet::new();
    for arg in &args.paths {
        let p = store.parse_user_path(arg)?;
        store.query_valid(&p)?;
        paths.insert(p);
    }
    if args.recursive {
        paths = store.closure(&paths)?;
    }
    if args.json || g.json {
        let mut out = Vec::with_capacity(paths.len());
        for p in &paths {
            out.push(PathInfoJson::new(&store, &store.query_valid(p)?));
        }
        super::print_json(&out)?;
    } else {
        for p in &paths {
            println!("{}", store.print_path(p));
        }
    }
    Ok(ExitCode::SUCCESS)
}
