//! `store nar dump PATH` and `store nar restore DIR`: NAR serialisation to stdout, strict
//! unpacking from stdin.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use store::fsnar;

use super::GlobalArgs;

/// Serialise trees to NAR and back
#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to stdout (like `nix-store --dump`)
    Dump(DumpArgs),
    /// Unpack a NAR from stdin into DIR, which must not exist (strict; nothing is left on error)
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub dir: PathBuf,
}

pub fn run(_g: &GlobalArgs, cmd: NarCommand) -> Result<ExitCode> {
    match cmd {
        NarCommand::Dump(a) => {
            let stdout = io::stdout().lock();
            let mut out = BufWriter::with_capacity(1 << 20, stdout);
            fsnar::dump(&a.path, &mut out)
                .with_context(|| format!("cannot dump '{}'", a.path.display()))?;
            out.flush().context("cannot write to stdout")?;
        }
        NarCommand::Restore(a) => {
            let stdin = io::stdin().lock();
            fsnar::restore(stdin, &a.dir, false)
                .with_context(|| format!("cannot restore into '{}'", a.dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
