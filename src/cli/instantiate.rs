//! `store instantiate RECIPE…`: turn TOML recipes (and the recipes they use) into `.drv`
//! files in the store, and print the `.drv` paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::build::recipe::Instantiator;

use super::GlobalArgs;

/// Write the derivations of recipes into the store and print their .drv paths
#[derive(Debug, Args)]
pub struct InstantiateArgs {
    /// Recipe files (TOML; see store-format.md, "Recipes")
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    /// Print JSON: the .drv path and output paths of each recipe
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    drv_path: String,
    outputs: BTreeMap<String, String>,
}

pub fn run(g: &GlobalArgs, args: InstantiateArgs) -> Result<ExitCode> {
    let store = super::open_store(g)?;
    let mut inst = Instantiator::new(&store);
    let mut entries = Vec::with_capacity(args.recipes.len());
    for recipe in &args.recipes {
        let done = inst
            .instantiate(recipe)
            .with_context(|| format!("cannot instantiate '{}'", recipe.display()))?;
        entries.push(Entry {
            drv_path: store.print_path(&done.drv_path),
            outputs: done
                .drv
                .output_paths()
                .into_iter()
                .map(|(o, p)| (o.to_owned(), store.print_path(p)))
                .collect(),
        });
    }
    if args.json || g.json {
        super::print_json(&entries)?;
    } else {
        for e in &entries {
            println!("{}", e.drv_path);
        }
    }
    Ok(ExitCode::SUCCESS)
}
