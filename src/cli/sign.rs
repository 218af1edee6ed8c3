//! `store sign --secret-file F PATH…`: add signatures to valid local paths.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use store::format::narinfo;

use super::GlobalArgs;

/// Sign valid store paths with a secret key (kept with the path's other signatures)
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Secret key file (Nix format)
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Sign the closures of the paths
    #[arg(short, long)]
    pub recursive: bool,
    /// Store paths to sign
    #[arg(required = true)]
    pub paths: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: SignArgs) -> Result<ExitCode> {
    let key = super::key::read_secret_key(&args.secret_file)?;
    let store = super::open_store(g)?;
    let mut paths = std::collections::BTreeSet::new();
    for a in &args.paths {
        let p = store.parse_user_path(a)?;
        store.query_valid(&p)?;
        paths.insert(p);
    }
    if args.recursive {
        paths = store.closure(&paths)?;
    }
    let mut added = 0;
    for p in &paths {
        let info = store.query_valid(p)?;
        let fp = narinfo::fingerprint(
            store.store_dir(),
            &info.path,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        );
        let sig = key.sign(&fp);
        if !info.sigs.contains(&sig) {
            store.add_signatures(p, [sig])?;
            added += 1;
        }
    }
    if !g.quiet {
        eprintln!("added {added} signatures");
    }
    Ok(ExitCode::SUCCESS)
}
