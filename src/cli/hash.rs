//! `store hash path|file`: print hashes the way `nix hash path|file` does.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use store::format::hash::{Encoding, HashAlgo, Hasher};
use store::fsnar;

use super::GlobalArgs;

/// Compute hashes of files and trees
#[derive(Debug, Subcommand)]
pub enum HashCommand {
    /// Hash the NAR serialisation of each path (what `nix hash path` prints)
    Path(HashArgs),
    /// Hash the bytes of each regular file (what `nix hash file` prints)
    File(HashArgs),
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Paths to hash
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Hash algorithm: md5, sha1, sha256 or sha512
    #[arg(long = "type", default_value = "sha256", value_parser = parse_algo)]
    pub algo: HashAlgo,
    /// Print lowercase hex
    #[arg(long, group = "encoding")]
    pub base16: bool,
    /// Print Nix base-32
    #[arg(long, group = "encoding")]
    pub base32: bool,
    /// Print base64
    #[arg(long, group = "encoding")]
    pub base64: bool,
    /// Print an SRI hash, `<type>-<base64>` (the default)
    #[arg(long, group = "encoding")]
    pub sri: bool,
}

fn parse_algo(s: &str) -> Result<HashAlgo, String> {
    s.parse()
        .map_err(|e: store::format::hash::HashError| e.to_string())
}

impl HashArgs {
    fn encoding(&self) -> Encoding {
        if self.base16 {
            Encoding::Base16
        } else if self.base32 {
            Encoding::Nix32
        } else if self.base64 {
            Encoding::Base64
        } else {
            Encoding::Sri
        }
    }
}

pub fn run(_g: &GlobalArgs, cmd: HashCommand) -> Result<ExitCode> {
    let (args, recursive) = match cmd {
        HashCommand::Path(a) => (a, true),
        HashCommand::File(a) => (a, false),
    };
    for path in &args.paths {
        let mut hasher = Hasher::new(args.algo);
        if recursive {
            fsnar::dump(path, &mut hasher)
                .with_context(|| format!("cannot hash '{}'", path.display()))?;
        } else {
            let mut f =
                File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
            io::copy(&mut f, &mut hasher)
                .with_context(|| format!("cannot read '{}'", path.display()))?;
        }
        println!("{}", hasher.finish().encode(args.encoding()));
    }
    Ok(ExitCode::SUCCESS)
}
