//! `store realise PATH…`: make paths valid, substituting them (and their closures) from
//! trusted binary caches.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use store::cache::{CacheUrl, ClientOptions};
use store::format::keys::{PublicKey, TrustedKeys};
use store::format::store_path::StorePath;
use store::store::LocalStore;
use store::substitute::{Fetched, Progress, Substituter, DEFAULT_JOBS};

use super::config::Settings;
use super::{GlobalArgs, TrustArgs};

/// Make store paths valid, substituting them from trusted binary caches
#[derive(Debug, Args)]
pub struct RealiseArgs {
    /// Store paths to realise
    #[arg(required = true)]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// NARs downloaded at the same time
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    realised: Vec<String>,
    substituted: Vec<FetchedJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FetchedJson {
    path: String,
    from: String,
    nar_size: u64,
    download_size: u64,
}

pub fn run(g: &GlobalArgs, args: RealiseArgs) -> Result<ExitCode> {
    let settings = super::settings_with(g, &args.trust)?;
    let store = super::open_store_with(&settings)?;
    let mut paths = Vec::new();
    for a in &args.paths {
        paths.push(store.parse_user_path(a)?);
    }
    let urls = parse_urls(&settings.substituters)?;
    let fetched = substitute(g, &settings, Arc::new(store), &urls, &paths, args.jobs)?;
    report(g, &settings, &paths, fetched)?;
    Ok(ExitCode::SUCCESS)
}

fn report(g: &GlobalArgs, s: &Settings, paths: &[StorePath], fetched: Vec<Fetched>) -> Result<()> {
    let print = |p: &StorePath| s.store_dir.display_path(p);
    if g.json {
        super::print_json(&Report {
            realised: paths.iter().map(print).collect(),
            substituted: fetched
                .iter()
                .filter(|f| f.installed)
                .map(|f| FetchedJson {
                    path: print(&f.path),
                    from: f.cache.clone(),
                    nar_size: f.nar_size,
                    download_size: f.download_size,
                })
                .collect(),
        })
    } else {
        for p in paths {
            println!("{}", print(p));
        }
        Ok(())
    }
}

pub fn parse_urls(urls: &[String]) -> Result<Vec<CacheUrl>> {
    urls.iter()
        .map(|u| {
            u.parse()
                .with_context(|| format!("invalid substituter '{u}'"))
        })
        .collect()
}

pub fn trusted_keys(s: &Settings) -> Result<TrustedKeys> {
    let mut keys = TrustedKeys::new();
    for k in &s.trusted_public_keys {
        let key =
            PublicKey::parse(k).with_context(|| format!("invalid trusted public key '{k}'"))?;
        keys.insert(key)
            .context("conflicting trusted public keys")?;
    }
    Ok(keys)
}

pub fn client_options(s: &Settings) -> ClientOptions {
    let mut o = ClientOptions::default();
    if let Some(n) = &s.netrc_file {
        o.netrc_file = Some(n.clone());
    }
    o.bearer_token = s.bearer_token.clone();
    if let Some(t) = s.connect_timeout {
        o.connect_timeout = Duration::from_secs(t);
    }
    if let Some(t) = s.stalled_download_timeout {
        o.stall_timeout = Duration::from_secs(t);
        o.request_timeout = o.stall_timeout * 2;
    }
    if let Some(n) = s.download_attempts {
        o.attempts = n.max(1);
    }
    o
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Plans and fetches the closures of `paths` from `urls`.
pub fn substitute(
    g: &GlobalArgs,
    settings: &Settings,
    store: Arc<LocalStore>,
    urls: &[CacheUrl],
    paths: &[StorePath],
    jobs: usize,
) -> Result<Vec<Fetched>> {
    // Already-valid paths cost no network request (and no async runtime).
    let mut missing = false;
    for p in paths {
        missing |= !store.is_valid(p)?;
    }
    if !missing {
        return Ok(Vec::new());
    }
    let keys = trusted_keys(settings)?;
    let options = client_options(settings);
    let rt = runtime()?;
    rt.block_on(async {
        let start = Instant::now();
        let sub = Substituter::open(urls, keys, &options, &store, jobs).await?;
        let plan = sub.plan(&store, paths).await?;
        tracing::info!(
            "planned {} path(s), {} NAR bytes, in {:.0?}",
            plan.len(),
            plan.nar_bytes(),
            start.elapsed()
        );
        let progress = Arc::new(Progress::default());
        let show = !g.quiet && !g.json && std::io::stderr().is_terminal();
        let ticker = show.then(|| tokio::spawn(display(progress.clone())));
        let fetch_start = Instant::now();
        let result = sub.fetch(&store, plan, progress.clone()).await;
        tracing::info!("fetched in {:.0?}", fetch_start.elapsed());
        if let Some(t) = ticker {
            t.abort();
            eprint!("\r\x1b[K");
        }
        Ok::<_, anyhow::Error>(result?)
    })
}

/// Redraws one status line on stderr: paths done/total, bytes received, rate.
async fn display(p: Arc<Progress>) {
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bytes = p.bytes_done.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r\x1b[K[{}/{} paths] {:.1} MiB received, {:.1} MiB/s",
            p.paths_done.load(Ordering::Relaxed),
            p.paths_total.load(Ordering::Relaxed),
            bytes as f64 / 1048576.0,
            bytes as f64 / 1048576.0 / secs
        );
    }
}
