//! `store realise PATH…`: make paths valid, substituting them (and their closures) from
//! trusted binary caches, and building derivation outputs that no cache has.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use store::build::local::{BuildConfig, Built};
use store::build::recipe::Instantiator;
use store::build::sandbox::SandboxMode;
use store::cache::compression::Compression;
use store::cache::{Cache, CacheUrl, ClientOptions};
use store::error_chain::Chain;
use store::format::derivation::derived_path::{DerivedPath, OutputsSpec};
use store::format::keys::{PublicKey, TrustedKeys};
use store::format::store_path::StorePath;
use store::push::{push, push_logs, PushOptions, DEFAULT_PUSH_JOBS};
use store::realise::{self, RealiseOptions, Realised};
use store::store::LocalStore;
use store::substitute::narinfo_cache::NarinfoCache;
use store::substitute::{Fetched, Progress, Substituter, DEFAULT_JOBS};

use super::config::Settings;
use super::{GlobalArgs, TrustArgs};

/// Make store paths valid: substitute them from trusted binary caches, or build them
#[derive(Debug, Args)]
pub struct RealiseArgs {
    /// Store paths, derivations (DRV, DRV^out,dev, DRV^*) or recipe files (*.toml)
    #[arg(required = true)]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// NARs downloaded at the same time
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
    /// Builds run at the same time (default: config max-jobs, else the number of cores)
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<usize>,
    /// Run builders without isolation (only where the store dir is its physical dir)
    #[arg(long)]
    pub no_sandbox: bool,
    /// Host paths visible read-only in the sandbox: "PATH" or "INSIDE=OUTSIDE", space separated
    #[arg(long, value_name = "PATHS")]
    pub sandbox_paths: Option<String>,
    /// Go on with independent builds when one fails
    #[arg(long, short = 'k')]
    pub keep_going: bool,
    /// Keep the build dir of a failed build
    #[arg(long, short = 'K')]
    pub keep_failed: bool,
    /// Rebuild the (valid) outputs and compare them with the existing ones
    #[arg(long)]
    pub check: bool,
    /// Copy build logs to stderr
    #[arg(long, short = 'L')]
    pub print_build_logs: bool,
    /// Kill a build after this many seconds
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Kill a build after this many seconds without output
    #[arg(long, value_name = "SECS")]
    pub max_silent_time: Option<u64>,
    /// Push the realised closures to this cache afterwards (signing with secret-key-files)
    #[arg(long, value_name = "URL")]
    pub push_to: Option<String>,
    /// Make LINK a symlink to the result and a garbage collector root (LINK-dev for output
    /// dev, LINK-2 for the second argument, …), like nix-build's `result`
    #[arg(long, short = 'o', value_name = "LINK")]
    pub out_link: Option<PathBuf>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    realised: Vec<String>,
    substituted: Vec<FetchedJson>,
    built: Vec<BuiltJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FetchedJson {
    path: String,
    from: String,
    nar_size: u64,
    download_size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuiltJson {
    drv: String,
    outputs: BTreeMap<String, String>,
}

pub fn run(g: &GlobalArgs, args: RealiseArgs) -> Result<ExitCode> {
    let settings = super::settings_with(g, &args.trust)?;
    let store = Arc::new(super::open_store_with(&settings)?);
    let targets = parse_targets(&store, &args.paths)?;
    let urls = parse_urls(&settings.substituters)?;
    let opaque: Option<Vec<StorePath>> = targets
        .iter()
        .map(|t| match t {
            DerivedPath::Opaque(p) => Some(p.clone()),
            DerivedPath::Built { .. } => None,
        })
        .collect();
    let (printed, fetched, built) = match opaque {
        // Only store paths: substitution alone (and no runtime at all when all are valid).
        Some(paths) if args.push_to.is_none() && args.out_link.is_none() => {
            let fetched = substitute(g, &settings, store.clone(), &urls, &paths, args.jobs)?;
            (paths, fetched, Vec::new())
        }
        _ => {
            let opts = realise_options(&settings, &args, &store)?;
            // Nothing to do (every wanted output valid): no runtime, no cache contacted.
            let realised = match already_valid(&store, &targets, args.check)? {
                Some(r) => r,
                None => build(g, &settings, &store, &urls, &targets, &opts, args.jobs)?,
            };
            let mut printed = Vec::new();
            for t in &targets {
                match t {
                    DerivedPath::Opaque(p) => printed.push(p.clone()),
                    DerivedPath::Built { drv, .. } => {
                        if let Some((_, outs)) = realised.outputs.iter().find(|(d, _)| d == drv) {
                            printed.extend(outs.values().cloned());
                        }
                    }
                }
            }
            if let Some(link) = &args.out_link {
                out_links(&store, link, &targets, &realised)?;
            }
            if let Some(url) = &args.push_to {
                push_closures(&settings, &store, url, &printed, args.jobs)?;
            }
            (printed, realised.substituted, realised.built)
        }
    };
    report(g, &settings, &printed, fetched, built)?;
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line's targets: recipes are instantiated, bare `.drv` paths mean all
/// their outputs.
fn parse_targets(store: &LocalStore, args: &[String]) -> Result<Vec<DerivedPath>> {
    let mut targets = Vec::new();
    let mut instantiator = Instantiator::new(store);
    for a in args {
        let in_store = store.parse_user_path(DerivedPath::split(a).0).is_ok();
        if !in_store && (a.ends_with(".toml") || Path::new(a).is_file()) {
            let done = instantiator
                .instantiate(Path::new(a))
                .with_context(|| format!("cannot instantiate '{a}'"))?;
            targets.push(DerivedPath::Built {
                drv: done.drv_path,
                outputs: OutputsSpec::All,
            });
            continue;
        }
        let (path, outputs) = DerivedPath::split(a);
        let path = store.parse_user_path(path)?;
        let logical = match outputs {
            Some(o) => format!("{}^{o}", store.print_path(&path)),
            None => store.print_path(&path),
        };
        let parsed = DerivedPath::parse(&logical, store.store_dir())
            .with_context(|| format!("invalid argument '{a}'"))?;
        targets.push(match parsed {
            DerivedPath::Opaque(p) if p.name().ends_with(".drv") => DerivedPath::Built {
                drv: p,
                outputs: OutputsSpec::All,
            },
            other => other,
        });
    }
    Ok(targets)
}

fn realise_options(s: &Settings, args: &RealiseArgs, store: &LocalStore) -> Result<RealiseOptions> {
    let mode = if args.no_sandbox || !s.sandbox {
        if store.layout().real_store() != Path::new(store.store_dir().as_str()) {
            bail!(
                "this store's files are in {} but its store dir is {}: builds need the \
                 sandbox to see them at the right place (like Nix, which requires its sandbox \
                 for such a store); drop --no-sandbox",
                store.layout().real_store().display(),
                store.store_dir()
            );
        }
        SandboxMode::None
    } else {
        SandboxMode::Namespaces
    };
    let sandbox_paths = match &args.sandbox_paths {
        Some(line) => super::config::split_words(line),
        None => s.sandbox_paths.clone(),
    };
    let mut keys = Vec::new();
    for f in &s.secret_key_files {
        keys.push(super::key::read_secret_key(f)?);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(RealiseOptions {
        max_jobs: args.max_jobs.or(s.max_jobs).unwrap_or(cores),
        keep_going: args.keep_going,
        build: BuildConfig {
            mode,
            cores: s.cores.unwrap_or(cores as u32),
            sandbox_paths: sandbox_paths
                .iter()
                .map(|p| match p.split_once('=') {
                    Some((inside, outside)) => (PathBuf::from(inside), PathBuf::from(outside)),
                    None => (PathBuf::from(p), PathBuf::from(p)),
                })
                .collect(),
            timeout: args.timeout.or(s.timeout).map(Duration::from_secs),
            max_silent: args
                .max_silent_time
                .or(s.max_silent_time)
                .map(Duration::from_secs),
            keep_failed: args.keep_failed,
            check: args.check,
            signing_keys: keys,
            print_logs: args.print_build_logs,
            scratch_pool: None,
        },
    })
}

/// The outputs of `targets` if every wanted one is valid already (and nothing is to be
/// checked), read from the `.drv` files in the store.
fn already_valid(
    store: &LocalStore,
    targets: &[DerivedPath],
    check: bool,
) -> Result<Option<Realised>> {
    if check {
        return Ok(None);
    }
    let mut realised = Realised::default();
    for t in targets {
        if !store.is_valid(t.path())? {
            return Ok(None);
        }
        let DerivedPath::Built { drv, outputs } = t else {
            continue;
        };
        let parsed = store.read_derivation(drv)?;
        let (known, unknown) = outputs.select(&parsed);
        if !unknown.is_empty() {
            return Ok(None); // the full path reports the error
        }
        let mut outs = BTreeMap::new();
        for o in known {
            let Some(p) = parsed.output_path(o) else {
                return Ok(None);
            };
            if !store.is_valid(p)? {
                return Ok(None);
            }
            outs.insert(o.to_owned(), p.clone());
        }
        realised.outputs.push((drv.clone(), outs));
    }
    Ok(Some(realised))
}

/// Realises derived paths: substitutes what trusted caches have, builds the rest.
fn build(
    g: &GlobalArgs,
    settings: &Settings,
    store: &Arc<LocalStore>,
    urls: &[CacheUrl],
    targets: &[DerivedPath],
    opts: &RealiseOptions,
    jobs: usize,
) -> Result<Realised> {
    let rt = runtime()?;
    rt.block_on(async {
        let sub = if urls.is_empty() {
            None
        } else {
            let keys = trusted_keys(settings)?;
            match Substituter::open(urls, keys, &client_options(settings), store, jobs).await {
                Ok(s) => Some(Arc::new(
                    s.with_narinfo_cache(narinfo_cache(settings, store)),
                )),
                Err(e) => {
                    tracing::warn!("building without substitutes: {}", Chain(&e));
                    None
                }
            }
        };
        let progress = Arc::new(Progress::default());
        let show = !g.quiet && !g.json && std::io::stderr().is_terminal();
        let ticker = show.then(|| tokio::spawn(display(progress.clone())));
        let result = realise::realise(store, sub, targets, opts, progress).await;
        if let Some(t) = ticker {
            t.abort();
            eprint!("\r\x1b[K");
        }
        Ok::<_, anyhow::Error>(result?)
    })
}

/// Creates the `--out-link` symlinks (and their GC roots).
fn out_links(
    store: &LocalStore,
    link: &Path,
    targets: &[DerivedPath],
    realised: &Realised,
) -> Result<()> {
    for (i, t) in targets.iter().enumerate() {
        let base = if i == 0 {
            link.as_os_str().to_owned()
        } else {
            let mut b = link.as_os_str().to_owned();
            b.push(format!("-{}", i + 1));
            b
        };
        let mut links: Vec<(PathBuf, StorePath)> = Vec::new();
        match t {
            DerivedPath::Opaque(p) => links.push((PathBuf::from(&base), p.clone())),
            DerivedPath::Built { drv, .. } => {
                if let Some((_, outs)) = realised.outputs.iter().find(|(d, _)| d == drv) {
                    for (o, p) in outs {
                        let mut name = base.clone();
                        if o != "out" {
                            name.push(format!("-{o}"));
                        }
                        links.push((PathBuf::from(name), p.clone()));
                    }
                }
            }
        }
        for (l, p) in links {
            store
                .add_indirect_root(&l, &p)
                .with_context(|| format!("cannot create the link '{}'", l.display()))?;
        }
    }
    Ok(())
}

/// Pushes the closures of `paths` to `url`, signing with the configured keys, and the build
/// logs of what was built here.
pub(super) fn push_closures(
    settings: &Settings,
    store: &Arc<LocalStore>,
    url: &str,
    paths: &[StorePath],
    jobs: usize,
) -> Result<()> {
    let url: CacheUrl = url
        .parse()
        .with_context(|| format!("invalid cache URL '{url}'"))?;
    let key = match settings.secret_key_files.first() {
        Some(f) => Some(Arc::new(super::key::read_secret_key(f)?)),
        None => None,
    };
    let opts = PushOptions {
        compression: Compression::Zstd,
        key,
        jobs: jobs.min(DEFAULT_PUSH_JOBS),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let cache = Arc::new(Cache::open(&url, &client_options(settings))?);
        push(store, &cache, paths, &opts).await?;
        Ok::<_, anyhow::Error>(push_logs(store, &cache, paths).await?)
    })
    .with_context(|| format!("cannot push to {url}"))?;
    Ok(())
}

fn report(
    g: &GlobalArgs,
    s: &Settings,
    paths: &[StorePath],
    fetched: Vec<Fetched>,
    built: Vec<Built>,
) -> Result<()> {
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
            built: built
                .iter()
                .filter(|b| b.ran)
                .map(|b| BuiltJson {
                    drv: print(&b.drv),
                    outputs: b
                        .outputs
                        .iter()
                        .map(|(o, i)| (o.clone(), print(&i.path)))
                        .collect(),
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
    if let Some(n) = s.whole_nar_max_size {
        o.whole_nar_max = n;
    }
    o
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The narinfo cache in the store's state dir, unless `--refresh` was given.
fn narinfo_cache(settings: &Settings, store: &LocalStore) -> Option<NarinfoCache> {
    (!settings.refresh).then(|| NarinfoCache::open(store.layout().state_dir()))
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
        let sub = Substituter::open(urls, keys, &options, &store, jobs)
            .await?
            .with_narinfo_cache(narinfo_cache(settings, &store));
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
