//! The command line: global options, the subcommand enum and dispatch. One subcommand per
//! file. This is the only layer that uses `anyhow`.

mod add;
pub mod cargo;
mod config;
mod copy;
mod delete;
mod derivation;
mod gc;
mod hash;
mod init;
mod instantiate;
mod key;
mod log;
mod nar;
mod path_info;
mod realise;
mod serve;
mod sign;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use store::format::store_path::StoreDir;
use store::store::{Layout, LocalStore, StoreError};

/// A Nix-compatible immutable store with signed binary substitution.
#[derive(Debug, Parser)]
#[command(name = "store", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Logical store dir, part of every store path hash (default /ix/store) [env: STORE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub store_dir: Option<String>,
    /// Keep the store and its state under DIR, so no privileges are needed [env: STORE_ROOT]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Config file (TOML) [env: STORE_CONFIG; default ~/.config/store/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More output on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Machine-readable JSON output where the command supports it
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(init::InitArgs),
    Add(add::AddArgs),
    #[command(subcommand)]
    Hash(hash::HashCommand),
    #[command(subcommand)]
    Nar(nar::NarCommand),
    PathInfo(path_info::PathInfoArgs),
    Verify(verify::VerifyArgs),
    #[command(subcommand)]
    Key(key::KeyCommand),
    Sign(sign::SignArgs),
    Realise(realise::RealiseArgs),
    Cargo(cargo::CargoArgs),
    Copy(copy::CopyArgs),
    Serve(serve::ServeArgs),
    #[command(subcommand)]
    Derivation(derivation::DerivationCommand),
    Instantiate(instantiate::InstantiateArgs),
    Log(log::LogArgs),
    Gc(gc::GcArgs),
    Delete(delete::DeleteArgs),
}

impl GlobalArgs {
    /// The rustc wrapper has no flags: everything comes from the environment and config.
    pub fn for_wrapper() -> GlobalArgs {
        GlobalArgs::default()
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Add(a) => add::run(g, a),
        Command::Hash(a) => hash::run(g, a),
        Command::Nar(a) => nar::run(g, a),
        Command::PathInfo(a) => path_info::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Key(a) => key::run(g, a),
        Command::Sign(a) => sign::run(g, a),
        Command::Realise(a) => realise::run(g, a),
        Command::Cargo(a) => cargo::run(g, a),
        Command::Copy(a) => copy::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Derivation(a) => derivation::run(g, a),
        Command::Instantiate(a) => instantiate::run(g, a),
        Command::Log(a) => log::run(g, a),
        Command::Gc(a) => gc::run(g, a),
        Command::Delete(a) => delete::run(g, a),
    }
}

pub fn init_logging(g: &GlobalArgs) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
}

/// Resolves the settings from the config file, the environment and the flags.
pub fn settings(g: &GlobalArgs) -> Result<config::Settings> {
    settings_with(g, &TrustArgs::default())
}

/// Settings, with the trust flags of commands that fetch from caches.
pub fn settings_with(g: &GlobalArgs, trust: &TrustArgs) -> Result<config::Settings> {
    let config_path = g
        .config
        .clone()
        .or_else(|| std::env::var_os("STORE_CONFIG").map(PathBuf::from));
    let file = match config_path {
        Some(p) => config::read_file(&p)?,
        None => match default_config_path() {
            Some(p) if p.exists() => config::read_file(&p)?,
            _ => config::FileConfig::default(),
        },
    };
    let env = config::Layer {
        store_dir: non_empty_env("STORE_DIR"),
        root: non_empty_env("STORE_ROOT").map(|r| absolute(Path::new(&r))),
        substituters: std::env::var("STORE_SUBSTITUTERS")
            .ok()
            .map(|s| config::split_words(&s)),
        trusted_public_keys: std::env::var("STORE_TRUSTED_PUBLIC_KEYS")
            .ok()
            .map(|s| config::split_words(&s)),
    };
    let flags = config::Layer {
        store_dir: g.store_dir.clone(),
        root: g.root.as_deref().map(absolute),
        substituters: trust.substituters.as_deref().map(config::split_words),
        trusted_public_keys: trust
            .trusted_public_keys
            .as_deref()
            .map(config::split_words),
    };
    let machine = config::Machine {
        default_location_writable: &default_location_writable,
        user_root: user_root(),
    };
    let mut settings = config::merge(&file, &env, &flags, &machine)?;
    settings.refresh = trust.refresh;
    if settings.per_user_root {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                "the default store location is not writable by this user; using the \
                 per-user root '{}' (--root or STORE_ROOT chooses another)",
                settings.root.as_deref().unwrap_or(Path::new("")).display()
            );
        });
    }
    Ok(settings)
}

/// The per-user root: `$XDG_DATA_HOME/store/root`, else `$HOME/.local/share/store/root`
/// (relative values are ignored, as the XDG spec says).
fn user_root() -> Option<PathBuf> {
    let absolute_var = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let data = absolute_var("XDG_DATA_HOME")
        .or_else(|| absolute_var("HOME").map(|h| h.join(".local").join("share")))?;
    Some(data.join("store").join("root"))
}

/// Whether a store with `store_dir` and no root could be opened by this user: its store
/// dir and state dir are writable, or the nearest existing ancestor of a missing one is.
fn default_location_writable(store_dir: &StoreDir) -> bool {
    use rustix::fs::{access, Access};
    let layout = Layout::new(store_dir.clone(), None);
    let dirs = [layout.real_store(), layout.state_dir()];
    let writable = dirs.into_iter().all(|dir| {
        let existing = dir.ancestors().find(|a| a.exists());
        existing.is_some_and(|d| access(d, Access::WRITE_OK | Access::EXEC_OK).is_ok())
    });
    writable
}

/// Trust flags of the commands that fetch from caches (`realise`, `copy --from`).
#[derive(Debug, Args, Default, Clone)]
pub struct TrustArgs {
    /// Binary caches to substitute from, space separated, in order (`URL?priority=N`)
    /// [env: STORE_SUBSTITUTERS]
    #[arg(long, value_name = "URLS")]
    pub substituters: Option<String>,
    /// Trusted public keys, space separated (`name:base64`) [env: STORE_TRUSTED_PUBLIC_KEYS]
    #[arg(long, value_name = "KEYS")]
    pub trusted_public_keys: Option<String>,
    /// Ask the caches again instead of using the narinfos (and absences) remembered from
    /// earlier runs
    #[arg(long)]
    pub refresh: bool,
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("store").join("config.toml"))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Opens the local store the settings describe, with a hint when it cannot be created.
pub fn open_store(g: &GlobalArgs) -> Result<LocalStore> {
    open_store_with(&settings(g)?)
}

/// Opens the local store described by already-resolved settings.
pub fn open_store_with(s: &config::Settings) -> Result<LocalStore> {
    let layout = Layout::new(s.store_dir.clone(), s.root.as_deref());
    match LocalStore::open(layout) {
        Ok(store) => Ok(store),
        Err(e @ StoreError::NotWritable { .. }) if s.root.is_none() => Err(anyhow::Error::new(e))
            .context(
                "the default store location is not writable by this user; \
                 use --root DIR (or STORE_ROOT) for a store under a directory of your own",
            ),
        Err(e) => Err(e).context("cannot open the store"),
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}
