//! Substitution: making paths valid from trusted binary caches.
//!
//! 1. **Plan** ([`Substituter::plan`]): for every path of the wanted closures that is not
//!    valid, ask the caches in priority order for its narinfo (many requests in flight). A
//!    narinfo counts only if it is for the path asked and is signed by a trusted key
//!    ([`crate::trust`]); its references are then walked the same way. If any member of the
//!    closure is missing from every cache, or nowhere trusted, planning fails with an error
//!    naming each such path and what each cache said, and no NAR has been requested.
//! 2. **Fetch** ([`Substituter::fetch`]): NARs are downloaded in parallel, at most `jobs` at a
//!    time, and a path starts only when all its references are valid, so paths become valid
//!    in reference order. Each download runs under the path's lock (so concurrent processes
//!    fetch a path once) and streams: HTTP body → decompression (input and output bounded by
//!    the signed NarSize) → strict NAR unpack with hashing → checks → atomic install
//!    ([`LocalStore::import_nar_with`]). A failed download is retried; a cache that keeps
//!    failing, or serves a NAR that does not match, makes the path fall through to the next
//!    cache with a trusted narinfo for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use thiserror::Error;
use tokio::task::JoinSet;

use crate::cache::compression;
use crate::cache::{blocking_reader, Backend, Cache, CacheError, CacheUrl, ClientOptions};
use crate::format::keys::TrustedKeys;
use crate::format::nar::NarReadError;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::fsnar::FsNarError;
use crate::store::{ImportError, LocalStore, NarImport, StoreError};
use crate::trust::{check_narinfo, TrustError};

/// Default number of NARs downloaded at the same time.
pub const DEFAULT_JOBS: usize = 16;
/// Narinfo requests in flight at the same time while planning.
const NARINFO_CONCURRENCY: usize = 64;
/// Tries per cache for one NAR (the first and the retries).
const NAR_ATTEMPTS: u32 = 3;

#[derive(Debug, Error)]
pub enum SubstituteError {
    #[error("no usable substituters: {0}")]
    NoCaches(String),
    #[error("cannot substitute {count} path(s); nothing was downloaded:\n{details}")]
    Incomplete { count: usize, details: String },
    #[error("cannot substitute '{path}': {reason}")]
    Fetch { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal task failed: {0}")]
    Task(String),
}

/// One cache, opened and checked, with its effective priority.
pub struct Substituter {
    caches: Vec<OpenCache>,
    keys: TrustedKeys,
    jobs: usize,
}

struct OpenCache {
    cache: Arc<Cache>,
    name: String,
    priority: i32,
}

/// A path to fetch: the trusted narinfos for it, best cache first.
#[derive(Clone)]
struct Candidate {
    cache: usize,
    info: NarInfo,
}

/// The result of planning: what to fetch, in which order.
pub struct Plan {
    /// Paths to fetch, each with its best trusted source.
    wanted: BTreeMap<StorePath, Candidate>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.wanted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// Sum of the NarSizes to fetch.
    pub fn nar_bytes(&self) -> u64 {
        self.wanted.values().map(|c| c.info.nar_size()).sum()
    }
}

/// What one substituted path came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: StorePath,
    pub cache: String,
    pub nar_size: u64,
    /// Bytes received over the wire (compressed), when it was downloaded by us.
    pub download_size: u64,
    /// False if another process made it valid first.
    pub installed: bool,
}

/// Progress counters a display can poll.
#[derive(Debug, Default)]
pub struct Progress {
    pub paths_total: AtomicU64,
    pub paths_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

impl Substituter {
    /// Opens the caches (reading each one's nix-cache-info) and orders them by priority
    /// (`?priority=N` in the URL overrides the cache's own). A cache that cannot be opened,
    /// or whose store dir differs from ours, is skipped with a warning; no usable cache at
    /// all is an error.
    pub async fn open(
        urls: &[CacheUrl],
        keys: TrustedKeys,
        options: &ClientOptions,
        store: &LocalStore,
        jobs: usize,
    ) -> Result<Substituter, SubstituteError> {
        let mut caches = Vec::new();
        let mut problems = Vec::new();
        for url in urls {
            match open_one(url, options, store).await {
                Ok(c) => caches.push(c),
                Err(why) => {
                    tracing::warn!("ignoring substituter {url}: {why}");
                    problems.push(format!("{url}: {why}"));
                }
            }
        }
        if caches.is_empty() {
            return Err(SubstituteError::NoCaches(if problems.is_empty() {
                "none configured (set substituters)".to_owned()
            } else {
                problems.join("; ")
            }));
        }
        caches.sort_by_key(|c| c.priority);
        Ok(Substituter {
            caches,
            keys,
            jobs: jobs.max(1),
        })
    }

    /// Finds a trusted source for every non-valid member of the closures of `paths`, or fails
    /// naming every path that has none. Requests only narinfos.
    pub async fn plan(
        &self,
        store: &Arc<LocalStore>,
        paths: &[StorePath],
    ) -> Result<Plan, SubstituteError> {
        let mut wanted: BTreeMap<StorePath, Candidate> = BTreeMap::new();
        let mut failed: BTreeMap<StorePath, Vec<String>> = BTreeMap::new();
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        let mut queue: Vec<StorePath> = Vec::new();
        for p in paths {
            if seen.insert(p.clone()) {
                queue.push(p.clone());
            }
        }
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < NARINFO_CONCURRENCY {
                let Some(p) = queue.pop() else { break };
                if store.is_valid(&p)? {
                    continue;
                }
                in_flight.push(self.lookup(store, p, 0));
            }
            let Some((path, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(candidate) => {
                    for r in candidate.info.references() {
                        if seen.insert(r.clone()) {
                            queue.push(r.clone());
                        }
                    }
                    wanted.insert(path, candidate);
                }
                Err(reasons) => {
                    failed.insert(path, reasons);
                }
            }
        }
        if !failed.is_empty() {
            let mut details = String::new();
            for (p, reasons) in &failed {
                let _ = writeln!(details, "  {}:", store.print_path(p));
                for r in reasons {
                    let _ = writeln!(details, "    {r}");
                }
            }
            return Err(SubstituteError::Incomplete {
                count: failed.len(),
                details: details.trim_end().to_owned(),
            });
        }
        Ok(Plan { wanted })
    }

    /// Asks caches `from..` in priority order for a trusted narinfo of `path`. On failure
    /// returns what each cache said.
    async fn lookup(
        &self,
        store: &LocalStore,
        path: StorePath,
        from: usize,
    ) -> (StorePath, Result<Candidate, Vec<String>>) {
        let mut reasons = Vec::new();
        for (i, c) in self.caches.iter().enumerate().skip(from) {
            match c.cache.narinfo(path.hash_str(), store.store_dir()).await {
                Ok(Some(info)) => {
                    match check_narinfo(&info, &path, &self.keys, store.store_dir()) {
                        Ok(()) => return (path, Ok(Candidate { cache: i, info })),
                        Err(e @ TrustError::WrongPath { .. }) => {
                            reasons.push(format!("{}: {e}", c.name))
                        }
                        Err(e) => reasons.push(format!("{}: untrusted: {e}", c.name)),
                    }
                }
                Ok(None) => reasons.push(format!("{}: not found", c.name)),
                Err(e) => reasons.push(format!("{}: {e}", c.name)),
            }
        }
        (path, Err(reasons))
    }

    /// Downloads and installs everything in `plan`, references first.
    pub async fn fetch(
        &self,
        store: &Arc<LocalStore>,
        plan: Plan,
        progress: Arc<Progress>,
    ) -> Result<Vec<Fetched>, SubstituteError> {
        let wanted = plan.wanted;
        progress
            .paths_total
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        progress.bytes_total.fetch_add(
            wanted.values().map(|c| c.info.nar_size()).sum(),
            Ordering::Relaxed,
        );
        // Dependency counting over the paths to fetch (self-references and already-valid
        // references do not count).
        let mut waiting_on: HashMap<StorePath, usize> = HashMap::new();
        let mut dependents: HashMap<StorePath, Vec<StorePath>> = HashMap::new();
        for (p, c) in &wanted {
            let deps: Vec<&StorePath> = c
                .info
                .references()
                .iter()
                .filter(|r| *r != p && wanted.contains_key(*r))
                .collect();
            waiting_on.insert(p.clone(), deps.len());
            for d in deps {
                dependents.entry(d.clone()).or_default().push(p.clone());
            }
        }
        let mut ready: Vec<StorePath> = waiting_on
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(p, _)| p.clone())
            .collect();
        ready.sort();
        let mut tasks: JoinSet<(StorePath, Result<Fetched, SubstituteError>)> = JoinSet::new();
        let mut done = Vec::new();
        let mut first_error = None;
        let this = Arc::new(self.clone_handles());
        loop {
            while first_error.is_none() && tasks.len() < self.jobs {
                let Some(p) = ready.pop() else { break };
                let candidate = wanted[&p].clone();
                let (store, this, progress) = (store.clone(), this.clone(), progress.clone());
                tasks.spawn(async move {
                    let r = this.fetch_one(&store, &p, candidate, &progress).await;
                    (p, r)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (path, result) = joined.map_err(|e| SubstituteError::Task(e.to_string()))?;
            match result {
                Ok(f) => {
                    progress.paths_done.fetch_add(1, Ordering::Relaxed);
                    for d in dependents.remove(&path).unwrap_or_default() {
                        if let Some(n) = waiting_on.get_mut(&d) {
                            *n -= 1;
                            if *n == 0 {
                                ready.push(d);
                            }
                        }
                    }
                    done.push(f);
                }
                Err(e) => {
                    // Let running downloads finish (they are independent and atomic), start
                    // no new ones, and report the first failure.
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    fn clone_handles(&self) -> Substituter {
        Substituter {
            caches: self
                .caches
                .iter()
                .map(|c| OpenCache {
                    cache: c.cache.clone(),
                    name: c.name.clone(),
                    priority: c.priority,
                })
                .collect(),
            keys: self.keys.clone(),
            jobs: self.jobs,
        }
    }

    /// Fetches one path, trying its best cache first, with retries, then the other caches
    /// that have a trusted narinfo for it.
    async fn fetch_one(
        &self,
        store: &Arc<LocalStore>,
        path: &StorePath,
        first: Candidate,
        progress: &Arc<Progress>,
    ) -> Result<Fetched, SubstituteError> {
        let printed = store.print_path(path);
        let mut candidate = first;
        let mut reasons = Vec::new();
        loop {
            let c = &self.caches[candidate.cache];
            for attempt in 1..=NAR_ATTEMPTS {
                match self.download(store, &candidate, progress).await {
                    Ok(f) => return Ok(f),
                    Err(e) => {
                        let retry = e.retryable && attempt < NAR_ATTEMPTS;
                        tracing::warn!(
                            "{}: fetching '{printed}' failed (attempt {attempt}/{NAR_ATTEMPTS}): {}",
                            c.name,
                            e.message
                        );
                        if !retry {
                            reasons.push(format!("{}: {}", c.name, e.message));
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(250 << (attempt - 1)))
                            .await;
                    }
                }
            }
            match self
                .lookup(store, path.clone(), candidate.cache + 1)
                .await
                .1
            {
                Ok(next) => candidate = next,
                Err(_) => {
                    return Err(SubstituteError::Fetch {
                        path: printed,
                        reason: reasons.join("; "),
                    })
                }
            }
        }
    }

    /// One download attempt from one cache.
    async fn download(
        &self,
        store: &Arc<LocalStore>,
        candidate: &Candidate,
        progress: &Arc<Progress>,
    ) -> Result<Fetched, Attempt> {
        let c = &self.caches[candidate.cache];
        let info = candidate.info.clone();
        let meta = NarImport::from(&info);
        let (cache, store2) = (c.cache.clone(), store.clone());
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let progress = progress.clone();
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || {
            store2.import_nar_with(meta, || {
                let stream = handle
                    .block_on(cache.get(info.url()))?
                    .ok_or_else(|| CacheError::NotFound(info.url().to_owned()))?;
                // Compressed input cannot sensibly exceed the NAR by much; bound it so an
                // endless stream that decompresses to nothing cannot run forever.
                let input_limit = info.nar_size() + info.nar_size() / 8 + (1 << 20);
                let counted = Counted {
                    inner: blocking_reader(stream).take(input_limit),
                    counter,
                    progress: progress.clone(),
                };
                compression::decompress(info.compression(), counted)
                    .map_err(|e| CacheError::Decompress(info.url().to_owned(), e))
            })
        })
        .await
        .map_err(|e| Attempt {
            message: format!("task failed: {e}"),
            retryable: false,
        })?;
        match outcome {
            Ok(out) => Ok(Fetched {
                path: out.info.path.clone(),
                cache: c.name.clone(),
                nar_size: out.info.nar_size,
                download_size: received.load(Ordering::Relaxed),
                installed: out.installed,
            }),
            // The request itself: the HTTP layer has already retried transient failures.
            Err(ImportError::Open(e)) => Err(Attempt {
                retryable: false,
                message: error_chain(&e),
            }),
            Err(ImportError::Store(e)) => Err(Attempt {
                // A stream that broke off mid-body (connection drop, stall) is worth another
                // try; a NAR that arrived but is malformed or does not match is not.
                retryable: broke_off(&e),
                message: error_chain(&e),
            }),
        }
    }
}

/// The outcome of a failed download attempt.
struct Attempt {
    message: String,
    retryable: bool,
}

/// Whether an import failed because reading the NAR stream failed (as opposed to the NAR
/// being wrong or the store failing).
fn broke_off(e: &StoreError) -> bool {
    match e {
        StoreError::Nar {
            source: FsNarError::InvalidNar(NarReadError::Io(io)),
            ..
        } => is_network(io),
        _ => false,
    }
}

/// Whether an I/O error came from the cache connection (wrapped by the stream bridge).
fn is_network(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<CacheError>())
        .is_some_and(CacheError::is_transient)
}

/// An error and its causes on one line, skipping causes whose text the message already
/// contains.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        cur = c.source();
    }
    s
}

async fn open_one(
    url: &CacheUrl,
    options: &ClientOptions,
    store: &LocalStore,
) -> Result<OpenCache, String> {
    let cache = Cache::open(url, options).map_err(|e| e.to_string())?;
    let info = cache.cache_info().await.map_err(|e| error_chain(&e))?;
    if info.store_dir != *store.store_dir() {
        return Err(format!(
            "it is for store dir '{}', not '{}'",
            info.store_dir,
            store.store_dir()
        ));
    }
    Ok(OpenCache {
        cache: Arc::new(cache),
        name: url.to_string(),
        priority: url.priority().or(info.priority).unwrap_or(50),
    })
}

/// Counts bytes as they are read, for the report and the progress display.
struct Counted<R> {
    inner: R,
    counter: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        self.progress
            .bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
