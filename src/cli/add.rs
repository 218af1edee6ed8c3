//! `store add PATH [--name NAME]`: import a tree as a `source` path, like `nix-store --add`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use store::format::store_path::StorePathName;

use super::GlobalArgs;

/// Add a file or directory to the store and print its store path
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The file or directory to add
    pub path: PathBuf,
    /// Name of the store path (default: the file name of PATH)
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(g: &GlobalArgs, args: AddArgs) -> Result<ExitCode> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => super::absolute(&args.path)
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "cannot derive a store path name from '{}'; use --name",
                    args.path.display()
                )
            })?,
    };
    let name = StorePathName::new(&name).context("invalid store path name")?;
    let store = super::open_store(g)?;
    let outcome = store
        .add_tree(&args.path, &name)
        .with_context(|| format!("cannot add '{}'", args.path.display()))?;
    let printed = store.print_path(&outcome.info.path);
    if g.json {
        super::print_json(&serde_json::json!({
            "path": printed,
            "narHash": outcome.info.nar_hash.to_sri(),
            "narSize": outcome.info.nar_size,
            "added": outcome.installed,
        }))?;
    } else {
        println!("{printed}");
    }
    Ok(ExitCode::SUCCESS)
}
