//! `store log PATH|DRV`: print the build log of a derivation, or of the derivation that
//! built a path (its recorded deriver).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use store::store::logs::read_log;

use super::GlobalArgs;

/// Print the build log of a derivation or of a built path
#[derive(Debug, Args)]
pub struct LogArgs {
    /// A `.drv` store path, or a path built locally
    pub path: String,
}

pub fn run(g: &GlobalArgs, args: LogArgs) -> Result<ExitCode> {
    let store = super::open_store(g)?;
    let (arg, _) = store::format::derivation::derived_path::DerivedPath::split(&args.path);
    let path = store.parse_user_path(arg)?;
    let drv = if path.name().ends_with(".drv") {
        path
    } else {
        let info = store.query_valid(&path)?;
        match info.meta.deriver {
            Some(d) => d,
            None => bail!(
                "'{}' has no recorded deriver, so it has no build log",
                store.print_path(&path)
            ),
        }
    };
    let log = read_log(store.layout(), &drv)
        .with_context(|| format!("cannot read the build log of '{}'", store.print_path(&drv)))?;
    match log {
        Some(bytes) => {
            std::io::stdout().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("no build log of '{}' is kept here", store.print_path(&drv)),
    }
}
