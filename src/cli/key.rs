//! `store key generate` and `store key public`: Nix-format ed25519 key files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use store::format::keys::{KeyName, SecretKey};
use zeroize::Zeroizing;

use super::GlobalArgs;

/// Manage signing keys (Nix format: `name:base64`)
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair; the secret key file is written with mode 0600
    Generate(GenerateArgs),
    /// Print the public key of a secret key file
    Public(PublicArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Key name, e.g. cache.example.org-1 (non-empty; no ':', whitespace or control
    /// characters)
    #[arg(long)]
    pub name: KeyName,
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub public_file: PathBuf,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PublicArgs {
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
}

pub fn run(_g: &GlobalArgs, cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Generate(a) => {
            if !a.force {
                for f in [&a.secret_file, &a.public_file] {
                    if f.symlink_metadata().is_ok() {
                        bail!("'{}' exists; use --force to overwrite it", f.display());
                    }
                }
            }
            let key = SecretKey::generate(a.name.as_str()).context("cannot generate a key")?;
            write_atomically(&a.secret_file, key.to_nix_string().as_bytes(), 0o600)?;
            write_atomically(
                &a.public_file,
                key.to_public().to_string().as_bytes(),
                0o644,
            )?;
        }
        KeyCommand::Public(a) => {
            println!("{}", read_secret_key(&a.secret_file)?.to_public());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a secret key file; its contents never appear in errors.
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read secret key file '{}'", path.display()))?,
    );
    SecretKey::parse(&text).with_context(|| format!("invalid secret key file '{}'", path.display()))
}

/// Writes `data` to a fresh temp file with `mode` next to `path`, fsyncs it and renames it
/// over `path`.
fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("'{}' is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write '{}'", path.display()))
}
