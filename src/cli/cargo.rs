//! `store cargo [--record] [--push-to URL] [--report FILE] -- CARGO_ARGS…`: runs cargo with
//! `store` as its rustc wrapper, then prints what the cache did, writes the report and,
//! when recording, the build's manifest (pushed with `--push-to`).
//!
//! The same binary is the wrapper: cargo runs `$RUSTC_WRAPPER <rustc> <args…>`, and
//! `store` started with a first argument whose file name is `rustc` (or begins with
//! `rustc`) acts as the wrapper ([`is_wrapper_call`], [`wrap`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::cargo::build_script::SHIM_ARG;
use store::cargo::check::{self, Checked};
use store::cargo::journal::{self, Entry, Totals};
use store::cargo::{manifest, Mode, Wrapper, MODE_ENV, SESSION_ENV};
use store::error_chain::Chain;
use store::store::LocalStore;

use super::config::Settings;
use super::realise::{client_options, parse_urls, push_closures, trusted_keys};
use super::{GlobalArgs, TrustArgs};

/// Build with cargo, installing compiled crates from trusted caches (and recording them)
#[derive(Debug, Args)]
pub struct CargoArgs {
    /// Compile what no cache has and add it to the store, signed with secret-key-files;
    /// write the build's manifest (CI)
    #[arg(long)]
    pub record: bool,
    /// Push the manifest's closure to this cache at the end (needs --record)
    #[arg(long, value_name = "URL", requires = "record")]
    pub push_to: Option<String>,
    /// Write a JSON report of every rustc invocation to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Make LINK a symlink to the manifest and a garbage collector root
    #[arg(long, short = 'o', value_name = "LINK", requires = "record")]
    pub out_link: Option<PathBuf>,
    /// After the build, rebuild N recorded units from scratch and compare them bit for bit;
    /// units that differ are not put in the manifest (nor pushed) and never recorded again
    #[arg(long, value_name = "N", requires = "record")]
    pub check_sample: Option<usize>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// cargo's arguments (`build --release`, `install --locked ripgrep`, …)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<OsString>,
}

#[derive(Serialize)]
struct Report<'a> {
    totals: &'a Totals,
    manifest: Option<String>,
    checked: &'a [Checked],
    entries: &'a [Entry],
}

pub fn run(g: &GlobalArgs, args: CargoArgs) -> Result<ExitCode> {
    let settings = super::settings_with(g, &args.trust)?;
    let store = Arc::new(super::open_store_with(&settings)?);
    let sessions = store.layout().state_dir().join("cargo").join("sessions");
    std::fs::create_dir_all(&sessions)
        .with_context(|| format!("cannot create '{}'", sessions.display()))?;
    let session = tempfile::Builder::new()
        .prefix("session-")
        .tempdir_in(&sessions)
        .context("cannot create the session dir")?;
    // What the wrappers will need, checked once here: a mistake is an error, not a build
    // that silently runs without the cache.
    parse_urls(&settings.substituters)?;
    trusted_keys(&settings)?;
    if args.record && settings.secret_key_files.is_empty() {
        tracing::warn!(
            "recording without secret-key-files: the units are not signed, and no cache \
             client will trust them"
        );
    }
    let status = run_cargo(g, &settings, &args, session.path())?;
    let entries = journal::read(session.path()).context("cannot read the session journal")?;
    let totals = journal::totals(&entries);
    eprintln!("{}", journal::summary(&totals));
    let checked = match args.check_sample {
        Some(n) if status.success() => check(&store, session.path(), n)?,
        _ => Vec::new(),
    };
    let bad: BTreeSet<&str> = checked
        .iter()
        .filter(|c| !c.reproducible())
        .map(|c| c.key.as_str())
        .collect();
    let kept: Vec<Entry> = entries
        .iter()
        .filter(|e| !e.key.as_deref().is_some_and(|k| bad.contains(k)))
        .cloned()
        .collect();
    let manifest = match (args.record, status.success()) {
        (true, true) => write_manifest(&store, &kept, args.out_link.as_deref())?,
        _ => None,
    };
    if let Some(file) = &args.report {
        let report = Report {
            totals: &totals,
            manifest: manifest.clone(),
            checked: &checked,
            entries: &entries,
        };
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(file, json)
            .with_context(|| format!("cannot write the report '{}'", file.display()))?;
    }
    if let (Some(url), Some(m)) = (&args.push_to, &manifest) {
        let path = store.parse_user_path(m)?;
        push_closures(&settings, &store, url, &[path], 16)?;
    }
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Runs cargo with this binary as the rustc wrapper and the session in its environment.
fn run_cargo(
    g: &GlobalArgs,
    settings: &Settings,
    args: &CargoArgs,
    session: &Path,
) -> Result<std::process::ExitStatus> {
    let me = std::env::current_exe().context("cannot find the store binary")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if std::env::var_os("RUSTC_WRAPPER").is_some_and(|w| !w.is_empty()) {
        tracing::warn!("RUSTC_WRAPPER is set; store cargo replaces it for this build");
    }
    let mut cmd = Command::new(&cargo);
    cmd.args(&args.cargo_args)
        .env("RUSTC_WRAPPER", &me)
        .env(SESSION_ENV, session)
        .env(MODE_ENV, if args.record { "record" } else { "use" })
        .env("STORE_DIR", settings.store_dir.as_str())
        .env("STORE_SUBSTITUTERS", settings.substituters.join(" "))
        .env(
            "STORE_TRUSTED_PUBLIC_KEYS",
            settings.trusted_public_keys.join(" "),
        );
    if let Some(root) = &settings.root {
        cmd.env("STORE_ROOT", root);
    }
    if let Some(c) = &g.config {
        cmd.env("STORE_CONFIG", std::path::absolute(c)?);
    }
    cmd.status()
        .with_context(|| format!("cannot run '{}'", cargo.to_string_lossy()))
}

/// Rebuilds a sample of the recorded units, says which do not reproduce and remembers
/// them as nondeterministic.
fn check(store: &LocalStore, session: &Path, n: usize) -> Result<Vec<Checked>> {
    let saved = check::saved(session);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let unit_dir = |printed: &str| {
        let path = store.parse_user_path(printed).ok()?;
        store
            .is_valid(&path)
            .ok()?
            .then(|| store.layout().real_path(&path))
    };
    let checked = check::check_sample(&saved, n, seed, unit_dir);
    // A rebuild that failed keeps its unit out of this manifest but is not held against
    // the unit later; one that produced other bytes is.
    let bad: Vec<String> = checked
        .iter()
        .filter(|c| !c.differing.is_empty())
        .map(|c| c.key.clone())
        .collect();
    for c in checked.iter().filter(|c| !c.reproducible()) {
        let why = match &c.error {
            Some(e) => e.clone(),
            None => format!("differs: {}", c.differing.join(", ")),
        };
        eprintln!(
            "store cargo: check: {} does not reproduce: {why}",
            c.store_path
        );
    }
    eprintln!(
        "store cargo: check: {} unit(s) rebuilt, {} reproducible",
        checked.len(),
        checked.iter().filter(|c| c.reproducible()).count()
    );
    if !bad.is_empty() {
        check::mark_nondeterministic(store.layout().state_dir(), &bad)
            .context("cannot remember the nondeterministic units")?;
    }
    Ok(checked)
}

fn write_manifest(
    store: &LocalStore,
    entries: &[Entry],
    out_link: Option<&Path>,
) -> Result<Option<String>> {
    let Some(path) = manifest::write(store, entries).context("cannot write the manifest")? else {
        return Ok(None);
    };
    if let Some(link) = out_link {
        store.add_indirect_root(link, &path)?;
    }
    let printed = store.print_path(&path);
    println!("{printed}");
    Ok(Some(printed))
}

/// Whether `store` was started by cargo as its rustc wrapper: the first argument is a
/// rustc (its file name is `rustc` or starts with `rustc`) or, under `store cargo`,
/// another compiler driver cargo chained in (`clippy-driver`).
pub fn is_wrapper_call(argv: &[OsString]) -> bool {
    let Some(first) = argv.get(1) else {
        return false;
    };
    if first == SHIM_ARG && argv.len() >= 3 {
        return true;
    }
    let name = Path::new(first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("rustc")
        || (name.ends_with("-driver") && std::env::var_os(SESSION_ENV).is_some())
}

/// Runs as the rustc wrapper: `argv[1]` is the compiler, the rest its arguments. Any
/// problem with the store or its settings means plain rustc (with a warning).
pub fn wrap(argv: &[OsString]) -> ExitCode {
    let started = std::time::Instant::now();
    if argv[1] == SHIM_ARG {
        return run_build_script(argv);
    }
    let rustc = PathBuf::from(&argv[1]);
    let args: Vec<String> = argv[2..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let lossless = argv[2..].iter().all(|a| a.to_str().is_some());
    let is_rustc = Path::new(&rustc)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("rustc"));
    let wrapper = match (lossless && is_rustc).then(wrapper) {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            tracing::warn!("store cargo: the cache is off for this unit: {e:#}");
            journal_cache_off(&e);
            None
        }
        None => None,
    };
    let code = match wrapper {
        Some(w) => {
            tracing::debug!("wrapper set up in {:.1?}", started.elapsed());
            w.run(&rustc, &args).map_err(|e| Chain(&e).to_string())
        }
        None => Command::new(&rustc)
            .args(&argv[2..])
            .status()
            .map(|s| s.code().unwrap_or(101))
            .map_err(|e| format!("cannot run '{}': {e}", rustc.display())),
    };
    match code {
        Ok(c) => ExitCode::from(u8::try_from(c).unwrap_or(101)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(101)
        }
    }
}

/// The wrapper's configuration, from the environment `store cargo` (or the user) set and
/// the config file. Caches get short timeouts unless configured: a cache that is down
/// must cost a build little.
fn wrapper() -> Result<Wrapper> {
    let g = GlobalArgs::for_wrapper();
    let settings = super::settings(&g)?;
    let store = Arc::new(super::open_store_with(&settings)?);
    let mut client = client_options(&settings);
    if settings.connect_timeout.is_none() {
        client.connect_timeout = Duration::from_secs(5);
    }
    if settings.stalled_download_timeout.is_none() {
        client.stall_timeout = Duration::from_secs(10);
        client.request_timeout = Duration::from_secs(10);
    }
    if settings.download_attempts.is_none() {
        client.attempts = 2;
    }
    let mode = match std::env::var(MODE_ENV).as_deref() {
        Ok("record") => Mode::Record,
        _ => Mode::Use,
    };
    // Keys are read only to record: a developer's unreadable key file costs nothing.
    let signing_keys = match mode {
        Mode::Record => settings
            .secret_key_files
            .iter()
            .map(|f| super::key::read_secret_key(f).map(Arc::new))
            .collect::<Result<_>>()?,
        Mode::Use => Vec::new(),
    };
    Ok(Wrapper {
        mode,
        store,
        substituters: parse_urls(&settings.substituters)?,
        trusted: trusted_keys(&settings)?,
        client,
        signing_keys,
        session: std::env::var_os(SESSION_ENV).map(PathBuf::from),
    })
}

/// Runs as the build-script shim: `argv[2]` is the real script. Any problem with the store
/// means the real script runs as it would without the cache.
fn run_build_script(argv: &[OsString]) -> ExitCode {
    let real = PathBuf::from(&argv[2]);
    let args: Vec<String> = argv[3..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match wrapper() {
        Ok(w) => w
            .run_build_script(&real, &args)
            .map_err(|e| Chain(&e).to_string()),
        Err(e) => {
            tracing::warn!("store cargo: the cache is off for this build script: {e:#}");
            Command::new(&real)
                .args(&argv[3..])
                .status()
                .map(|s| s.code().unwrap_or(101))
                .map_err(|e| format!("cannot run '{}': {e}", real.display()))
        }
    };
    match code {
        Ok(c) => ExitCode::from(u8::try_from(c).unwrap_or(101)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(101)
        }
    }
}

/// Journals a rustc run for which the wrapper could not be set up (under `store cargo`).
fn journal_cache_off(e: &anyhow::Error) {
    let Some(session) = std::env::var_os(SESSION_ENV) else {
        return;
    };
    let var = |k| std::env::var(k).unwrap_or_default();
    let entry = Entry {
        crate_name: var("CARGO_CRATE_NAME"),
        version: var("CARGO_PKG_VERSION"),
        source_kind: store::cargo::source::SourceKind::Local,
        crate_types: Vec::new(),
        outcome: store::cargo::journal::Outcome::Uncacheable,
        reason: Some(format!("cache off: {e:#}")),
        key: None,
        store_path: None,
        seconds: 0.0,
        overhead_ms: 0.0,
        inputs: None,
        exit: None,
    };
    let _ = journal::append(Path::new(&session), &entry);
}
