//! `store init`: create the store's directories and database.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::GlobalArgs;

/// Create the store (directories, database); harmless if it exists
#[derive(Debug, Args)]
pub struct InitArgs {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    store_dir: String,
    real_store_dir: String,
    state_dir: String,
    schema_version: i64,
}

pub fn run(g: &GlobalArgs, _args: InitArgs) -> Result<ExitCode> {
    let store = super::open_store(g)?;
    let layout = store.layout();
    let report = Report {
        store_dir: layout.store_dir().to_string(),
        real_store_dir: layout.real_store().display().to_string(),
        state_dir: layout.state_dir().display().to_string(),
        schema_version: store.schema_version()?,
    };
    if g.json {
        super::print_json(&report)?;
    } else if !g.quiet {
        eprintln!(
            "store {} ready at {} (state in {})",
            report.store_dir, report.real_store_dir, report.state_dir
        );
    }
    Ok(ExitCode::SUCCESS)
}
