//! `store copy --to URL PATH…` (push signed closures to a cache) and
//! `store copy --from URL PATH…` (substitute from that one cache, still verified).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use store::cache::compression::Compression;
use store::cache::{Cache, CacheUrl};
use store::format::store_path::StorePath;
use store::push::{push, push_logs, PushOptions, PushReport, DEFAULT_PUSH_JOBS};
use store::store::LocalStore;

use super::config::Settings;
use super::realise::{client_options, runtime, substitute};
use super::{GlobalArgs, TrustArgs};

/// Copy closures to a binary cache, or from one
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Push to this cache (file:///dir, http(s)://…)
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "from",
        required_unless_present = "from"
    )]
    pub to: Option<String>,
    /// Substitute from this cache only
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// Sign pushed paths with this secret key (existing signatures are kept)
    #[arg(long, value_name = "FILE", requires = "to")]
    pub secret_key_file: Option<std::path::PathBuf>,
    /// Compression of pushed NARs
    #[arg(long, default_value = "zstd", requires = "to")]
    pub compression: String,
    /// Transfers at the same time
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Only with --from: trusted public keys, space separated
    #[arg(long, value_name = "KEYS", requires = "from")]
    pub trusted_public_keys: Option<String>,
    /// Only with --from: ask the cache again instead of using remembered narinfos
    #[arg(long, requires = "from")]
    pub refresh: bool,
    /// Also push the build logs of paths built here to the cache's log/
    #[arg(long, requires = "to")]
    pub logs: bool,
    /// Store paths whose closures are copied
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushJson {
    already_present: Vec<String>,
    uploaded: Vec<Uploaded>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Uploaded {
    path: String,
    file_size: u64,
}

pub fn run(g: &GlobalArgs, args: CopyArgs) -> Result<ExitCode> {
    let trust = TrustArgs {
        substituters: args.from.clone(),
        trusted_public_keys: args.trusted_public_keys.clone(),
        refresh: args.refresh,
    };
    let settings = super::settings_with(g, &trust)?;
    let store = Arc::new(super::open_store_with(&settings)?);
    let mut paths = Vec::new();
    for a in &args.paths {
        paths.push(store.parse_user_path(a)?);
    }
    match (&args.from, &args.to) {
        (Some(from), _) => copy_from(g, &settings, store, &args, from, &paths),
        (None, Some(to)) => copy_to(g, &settings, &store, &args, to, &paths),
        (None, None) => bail!("give --to URL or --from URL"),
    }
}

/// `--from`: substitute the closures from that one cache.
fn copy_from(
    g: &GlobalArgs,
    settings: &Settings,
    store: Arc<LocalStore>,
    args: &CopyArgs,
    from: &str,
    paths: &[StorePath],
) -> Result<ExitCode> {
    let url = cache_url(from)?;
    let jobs = args.jobs.unwrap_or(store::substitute::DEFAULT_JOBS);
    let fetched = substitute(g, settings, store, &[url], paths, jobs)?;
    if !g.quiet {
        let n = fetched.iter().filter(|f| f.installed).count();
        eprintln!("copied {n} paths from {from}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--to`: push the closures (and with `--logs` their build logs), then report.
fn copy_to(
    g: &GlobalArgs,
    settings: &Settings,
    store: &Arc<LocalStore>,
    args: &CopyArgs,
    to: &str,
    paths: &[StorePath],
) -> Result<ExitCode> {
    let url = cache_url(to)?;
    let opts = push_options(args)?;
    let rt = runtime()?;
    let (report, logs) = rt
        .block_on(async {
            let cache = Arc::new(Cache::open(&url, &client_options(settings))?);
            let report = push(store, &cache, paths, &opts).await?;
            let logs = if args.logs {
                push_logs(store, &cache, paths).await?
            } else {
                0
            };
            Ok::<_, anyhow::Error>((report, logs))
        })
        .with_context(|| format!("cannot copy to {url}"))?;
    print_push_report(g, store, args, &url, &report, logs)?;
    Ok(ExitCode::SUCCESS)
}

fn cache_url(s: &str) -> Result<CacheUrl> {
    s.parse()
        .with_context(|| format!("invalid cache URL '{s}'"))
}

/// Compression, signing key and parallelism from the flags.
fn push_options(args: &CopyArgs) -> Result<PushOptions> {
    let compression: Compression = args
        .compression
        .parse()
        .with_context(|| format!("unknown compression '{}'", args.compression))?;
    let key = match &args.secret_key_file {
        Some(f) => Some(Arc::new(super::key::read_secret_key(f)?)),
        None => None,
    };
    Ok(PushOptions {
        compression,
        key,
        jobs: args.jobs.unwrap_or(DEFAULT_PUSH_JOBS),
    })
}

/// JSON with `--json`, else one line on stderr unless `--quiet`.
fn print_push_report(
    g: &GlobalArgs,
    store: &LocalStore,
    args: &CopyArgs,
    url: &CacheUrl,
    report: &PushReport,
    logs: usize,
) -> Result<()> {
    if g.json {
        super::print_json(&PushJson {
            already_present: report.present.iter().map(|p| store.print_path(p)).collect(),
            uploaded: report
                .uploaded
                .iter()
                .map(|(p, size)| Uploaded {
                    path: store.print_path(p),
                    file_size: *size,
                })
                .collect(),
        })?;
    } else if !g.quiet {
        eprintln!(
            "copied {} paths to {url} ({} already there{})",
            report.uploaded.len(),
            report.present.len(),
            if args.logs {
                format!(", {logs} build logs")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
