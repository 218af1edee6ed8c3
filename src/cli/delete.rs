//! `store delete PATH...`: delete exactly the given paths (like `nix-store --delete`),
//! refusing, and deleting nothing, if any is alive or still referenced.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::GlobalArgs;

/// Delete the given store paths, if nothing keeps them alive
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Store paths to delete
    #[arg(required = true)]
    pub paths: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: DeleteArgs) -> Result<ExitCode> {
    let opts = super::gc::options(g, None)?;
    let store = super::open_store(g)?;
    let paths = args
        .paths
        .iter()
        .map(|p| store.parse_user_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    let report = store
        .delete_paths(&paths, &opts)
        .context("nothing was deleted")?;
    super::gc::summary(g, &store, &report)
}
