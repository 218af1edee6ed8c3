//! `store derivation show [-r] DRV…`: print derivations in the JSON shape of
//! `nix show-derivation`, keyed by `.drv` path.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use store::format::derivation::hash::derivation_closure;
use store::format::derivation::json::show_derivations;
use store::format::derivation::Derivation;
use store::format::store_path::{StoreDir, StorePath};
use store::store::{Layout, LocalStore};

use super::GlobalArgs;

/// Inspect derivations (.drv files)
#[derive(Debug, Subcommand)]
pub enum DerivationCommand {
    /// Print derivations as JSON, like `nix show-derivation`
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// `.drv` store paths (valid in the store) or `.drv` files anywhere
    #[arg(required = true)]
    pub drvs: Vec<String>,
    /// Also show every input derivation, recursively (they must be valid in the store)
    #[arg(short, long)]
    pub recursive: bool,
}

pub fn run(g: &GlobalArgs, cmd: DerivationCommand) -> Result<ExitCode> {
    match cmd {
        DerivationCommand::Show(args) => show(g, args),
    }
}

/// The store, opened the first time it is needed (a file outside it needs none).
struct LazyStore<'g> {
    g: &'g GlobalArgs,
    store: Option<LocalStore>,
}

impl LazyStore<'_> {
    fn get(&mut self) -> Result<&LocalStore> {
        Ok(match &mut self.store {
            Some(s) => s,
            slot @ None => slot.insert(super::open_store(self.g)?),
        })
    }
}

/// The derivation name of a `.drv` file outside the store: its file name without `.drv`
/// and without a leading `<hash>-` (a copy of a store `.drv` keeps its name).
fn name_of_file(path: &Path) -> Result<String> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("'{}' has no usable file name", path.display()))?;
    let base = match file.parse::<StorePath>() {
        Ok(p) => p.name().to_owned(),
        Err(_) => file.to_owned(),
    };
    base.strip_suffix(".drv")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("'{}' is not a .drv file", path.display()))
}

fn is_in_store(arg: &str, layout: &Layout) -> bool {
    let logical = format!("{}/", layout.store_dir());
    let real = format!("{}/", layout.real_store().display());
    arg.starts_with(&logical) || arg.starts_with(&real)
}

fn show(g: &GlobalArgs, args: ShowArgs) -> Result<ExitCode> {
    let settings = super::settings(g)?;
    let dir: StoreDir = settings.store_dir.clone();
    let layout = Layout::new(dir.clone(), settings.root.as_deref());
    let mut store = LazyStore { g, store: None };
    let mut drvs: BTreeMap<StorePath, Derivation> = BTreeMap::new();
    for arg in &args.drvs {
        if is_in_store(arg, &layout) {
            let s = store.get()?;
            let path = s.parse_user_path(arg)?;
            let drv = s.read_derivation(&path)?;
            drvs.insert(path, drv);
        } else {
            let file = Path::new(arg);
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read '{}'", file.display()))?;
            let drv = Derivation::parse(&bytes, &dir, &name_of_file(file)?)
                .with_context(|| format!("invalid derivation '{}'", file.display()))?;
            let path = drv.drv_path(&dir)?;
            drvs.insert(path, drv);
        }
    }
    if args.recursive {
        let inputs: Vec<StorePath> = drvs
            .values()
            .flat_map(|d| d.input_drvs.keys().cloned())
            .filter(|p| !drvs.contains_key(p))
            .collect();
        if !inputs.is_empty() {
            let s = store.get()?;
            let closure = derivation_closure(&dir, &inputs, &mut |p: &StorePath| {
                s.read_derivation(p)
                    .map_err(|e| InputError(format!("{:#}", anyhow::Error::from(e))))
            })?;
            drvs.extend(closure);
        }
    }
    let json = show_derivations(&dir, &drvs);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &json)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// A failure to read an input derivation, kept as its message chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InputError(String);
