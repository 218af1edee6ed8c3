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
//!    (`LocalStore::stage_nar`). A failed download is retried; a cache that keeps
//!    failing, or serves a NAR that does not match, makes the path fall through to the next
//!    cache with a trusted narinfo for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cache::{checked_narinfo, Cache, CacheError, CacheUrl, ClientOptions};
use crate::error_chain::Chain;
use crate::format::keys::TrustedKeys;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::{StoreDir, StorePath};
use crate::schedule::{Cycle, ReadyQueue};
use crate::store::stage::references_first;
use crate::store::{LocalStore, Staged, StoreError};
use crate::trust::{check_narinfo, TrustError};
use download::{Failure, FetchContext};
pub use error::{CacheFailure, CacheUseError, Missing, NoNarInfo, Refusal, SubstituteError};
use limits::Limits;
use narinfo_cache::{Cached, NarinfoCache, Ttls};
use run::FetchRun;
use select::select_closures;
use walk::{Walk, Walked};

mod download;
mod error;
mod index;
mod limits;
pub mod narinfo_cache;
mod run;
mod select;
mod walk;

/// Default number of NARs downloaded at the same time.
pub const DEFAULT_JOBS: usize = 16;
/// One cache, opened and checked, with its effective priority.
pub struct Substituter {
    caches: Vec<OpenCache>,
    keys: TrustedKeys,
    /// Whether planning starts writing back the filesystem early (see `plan_partial`).
    flush_ahead: bool,
    /// Whether planning asks the caches for the wanted roots' closure indexes (§7.6).
    closure_indexes: bool,
    jobs: usize,
    limits: Limits,
    /// Narinfos (and absences) learnt earlier, when enabled.
    narinfo_cache: Option<Arc<NarinfoCache>>,
}

struct OpenCache {
    cache: Arc<Cache>,
    name: String,
    priority: i32,
    /// Its key in the narinfo cache, and how long entries are used.
    key: String,
    ttls: Ttls,
}

/// A path to fetch: a trusted narinfo for it and the cache it came from.
#[derive(Clone)]
struct Candidate {
    cache: usize,
    info: NarInfo,
    /// Whether it came from the cache's closure index or from the local narinfo cache
    /// rather than from the cache just now (it may be stale: a failed fetch then asks that
    /// cache again, over the network).
    secondhand: bool,
}

/// The result of planning: what to fetch, in which order.
pub struct Plan {
    /// Paths to fetch, each with its best trusted source.
    wanted: BTreeMap<StorePath, Candidate>,
}

impl Plan {
    /// A plan that fetches nothing.
    pub fn empty() -> Plan {
        Plan {
            wanted: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.wanted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// Adds what `other` fetches.
    pub fn merge(&mut self, other: Plan) {
        self.wanted.extend(other.wanted);
    }

    /// Whether `path` is to be fetched.
    pub fn contains(&self, path: &StorePath) -> bool {
        self.wanted.contains_key(path)
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
    /// Signalled whenever paths became valid (for schedulers waiting on them).
    pub changed: tokio::sync::Notify,
}

/// Downloads of one [`Substituter::fetch`] that are blocked on an install lock held by
/// another process. Staged paths keep their locks until committed, so when every running
/// download is blocked, the fetch commits what it can: the other process may be waiting
/// for one of our staged paths (two processes realising overlapping closures in different
/// orders would otherwise wait for each other forever).
#[derive(Default)]
struct LockWaits {
    blocked: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl LockWaits {
    fn note(&self, waiting: bool) {
        if waiting {
            self.blocked.fetch_add(1, Ordering::SeqCst);
        } else {
            self.blocked.fetch_sub(1, Ordering::SeqCst);
        }
        self.changed.notify_one();
    }
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
                Err(error) => {
                    let failure = CacheFailure {
                        cache: url.to_string(),
                        error,
                    };
                    tracing::warn!("ignoring substituter {}", Chain(&failure));
                    problems.push(failure);
                }
            }
        }
        if caches.is_empty() {
            return Err(if problems.is_empty() {
                SubstituteError::NoneConfigured
            } else {
                SubstituteError::NoneUsable { problems }
            });
        }
        caches.sort_by_key(|c| c.priority);
        Ok(Substituter {
            caches,
            keys,
            flush_ahead: true,
            closure_indexes: true,
            jobs: jobs.max(1),
            limits: Limits::new(options.whole_nar_max),
            narinfo_cache: None,
        })
    }

    /// Uses `cache` to answer narinfo lookups it has fresh entries for, and records what
    /// the caches answer in it (`None`: always ask the caches, as `--refresh` does).
    pub fn with_narinfo_cache(mut self, cache: Option<NarinfoCache>) -> Substituter {
        self.narinfo_cache = cache.map(Arc::new);
        self
    }

    /// Turns off the early write-back of the store's filesystem while planning: it pays for
    /// itself when many NARs follow, not for one small path (each `store cargo` unit), and
    /// a short-lived process waits for it at the end.
    pub fn without_flush_ahead(mut self) -> Substituter {
        self.flush_ahead = false;
        self
    }

    /// Turns off asking for closure indexes: for roots no push indexes (each `store cargo`
    /// unit; only its manifest is a pushed root), where the request is a 404 that costs a
    /// round trip per unit.
    pub fn without_closure_indexes(mut self) -> Substituter {
        self.closure_indexes = false;
        self
    }

    /// Finds a trusted source for every non-valid member of the closures of `paths`, or fails
    /// naming every path that has none. Requests only narinfos.
    ///
    /// The walk does not wait for signature checks: as soon as a narinfo for the right path
    /// arrives its references are asked for, while its signatures are checked on the
    /// blocking pool. A narinfo that fails the check sends its path on to the next cache.
    /// Only what is reachable from `paths` through *trusted* narinfos counts at the end, so
    /// an untrusted narinfo's references can neither add to the plan nor make it fail.
    pub async fn plan(
        &self,
        store: &Arc<LocalStore>,
        paths: &[StorePath],
    ) -> Result<Plan, SubstituteError> {
        let (plan, missing) = self.plan_partial(store, paths).await?;
        if !missing.is_empty() {
            let missing = missing
                .into_iter()
                .map(|(p, refusals)| Missing {
                    path: store.print_path(&p),
                    refusals,
                })
                .collect();
            return Err(SubstituteError::Incomplete { missing });
        }
        Ok(plan)
    }

    /// Like [`Substituter::plan`], but a path of `paths` whose closure cannot be
    /// substituted whole is left out instead of failing everything: returns the plan for
    /// the others, and for each closure member that no cache has (trusted) what the caches
    /// said, keyed by that member.
    pub async fn plan_partial(
        &self,
        store: &Arc<LocalStore>,
        paths: &[StorePath],
    ) -> Result<(Plan, BTreeMap<StorePath, Vec<Refusal>>), SubstituteError> {
        // Write back what is pending on the store's filesystem while the walk waits on the
        // network, so that the first commit's sync (§6.5) does not pay for it.
        if self.flush_ahead {
            let ahead = store.clone();
            tokio::task::spawn_blocking(move || ahead.flush_ahead());
        }
        let indexed = if self.closure_indexes {
            index::read_indexes(self, store, paths).await
        } else {
            BTreeMap::new()
        };
        let lookup = |p, from, reasons| self.lookup(store, p, from, reasons);
        let Walked {
            trusted,
            mut failed,
        } = Walk::new(self, store, paths, indexed, lookup).run().await?;
        // What the trusted narinfos make the closure: everything else was speculation.
        let (wanted, missing) = select_closures(paths, &trusted, |c| c.info.references(), &failed);
        let missing: Vec<StorePath> = missing.into_keys().collect();
        let missing = missing
            .into_iter()
            .map(|p| {
                let why = failed.remove(&p).unwrap_or_default();
                (p, why)
            })
            .collect();
        Ok((Plan { wanted }, missing))
    }

    /// Asks caches `from..` in priority order for a narinfo of `path` (one whose StorePath
    /// is `path`; its signatures are not checked here). `reasons` collects what each cache
    /// that had nothing usable said.
    async fn lookup(
        &self,
        store: &LocalStore,
        path: StorePath,
        from: usize,
        mut reasons: Vec<Refusal>,
    ) -> Found {
        for (i, c) in self.caches.iter().enumerate().skip(from) {
            let (answer, secondhand) = self.narinfo(c, &path, store.store_dir()).await;
            match answer {
                Ok(Some(info)) if info.store_path() == &path => {
                    return Found {
                        path,
                        cache: i,
                        info: Some(info),
                        reasons,
                        secondhand,
                    }
                }
                Ok(Some(info)) => {
                    let e = TrustError::WrongPath {
                        asked: store.print_path(&path),
                        got: store.print_path(info.store_path()),
                    };
                    reasons.push(self.refusal(i, NoNarInfo::WrongPath(e)));
                }
                Ok(None) => reasons.push(self.refusal(i, NoNarInfo::NotFound)),
                Err(e) => reasons.push(self.refusal(i, e.into())),
            }
        }
        Found {
            path,
            cache: self.caches.len(),
            info: None,
            reasons,
            secondhand: false,
        }
    }

    /// Cache `c`'s narinfo for `path`: from the narinfo cache if it has a fresh entry (then
    /// also true), else from `c`, recording the answer.
    async fn narinfo(
        &self,
        c: &OpenCache,
        path: &StorePath,
        dir: &StoreDir,
    ) -> (Result<Option<NarInfo>, CacheError>, bool) {
        let hash = path.hash_str();
        let Some(nc) = &self.narinfo_cache else {
            return (c.cache.narinfo(hash, dir).await, false);
        };
        match nc.get(&c.key, hash, c.ttls) {
            Cached::Absent => return (Ok(None), true),
            Cached::Present(text) => match checked_narinfo(text.as_bytes(), hash, dir, &c.name) {
                Ok(info) if info.store_path() == path => return (Ok(Some(info)), true),
                _ => nc.forget(&c.key, hash),
            },
            Cached::Unknown => {}
        }
        let answer = c.cache.narinfo(hash, dir).await;
        match &answer {
            Ok(Some(info)) => nc.put(&c.key, hash, Some(&info.to_text(dir))),
            Ok(None) => nc.put(&c.key, hash, None),
            Err(_) => {}
        }
        (answer, false)
    }

    /// Drops what the narinfo cache says of `path` in cache `cache` (it did not work).
    fn forget(&self, cache: usize, path: &StorePath) {
        if let Some(nc) = &self.narinfo_cache {
            nc.forget(&self.caches[cache].key, path.hash_str());
        }
    }

    /// What cache `cache` said about a path it could not supply.
    fn refusal(&self, cache: usize, reason: NoNarInfo) -> Refusal {
        Refusal {
            cache: self.caches[cache].name.clone(),
            reason,
        }
    }

    /// Like [`Substituter::lookup`], but also checks the signatures: a trusted source for
    /// `path` from caches `from..`, or what each said.
    async fn lookup_trusted(
        &self,
        store: &LocalStore,
        path: StorePath,
        mut from: usize,
    ) -> Result<Candidate, Vec<Refusal>> {
        let mut reasons = Vec::new();
        loop {
            let found = self.lookup(store, path.clone(), from, reasons).await;
            reasons = found.reasons;
            let Some(info) = found.info else {
                return Err(reasons);
            };
            match check_narinfo(&info, &path, &self.keys, store.store_dir()) {
                Ok(()) => {
                    return Ok(Candidate {
                        cache: found.cache,
                        info,
                        secondhand: found.secondhand,
                    })
                }
                Err(e) => {
                    reasons.push(self.refusal(found.cache, NoNarInfo::Untrusted(e)));
                    from = found.cache + 1;
                }
            }
        }
    }

    /// Downloads and installs everything in `plan`. Downloads start in reference order
    /// (references first), at most `jobs` at a time, and each is unpacked and checked into
    /// the staging dir as it arrives; staged paths are committed in batches, each batch
    /// holding whatever has become committable (all its references valid or in the batch)
    /// while the previous batch was being committed. So paths still become valid only after
    /// their references, but a chain of small paths costs one sync per batch, not per path.
    pub async fn fetch(
        &self,
        store: &Arc<LocalStore>,
        plan: Plan,
        progress: Arc<Progress>,
    ) -> Result<Vec<Fetched>, SubstituteError> {
        let wanted = plan.wanted;
        count_totals(&progress, &wanted);
        add_temp_roots(store, &wanted).await?;
        let ctx = Arc::new(FetchContext {
            store: store.clone(),
            progress,
            waits: LockWaits::default(),
        });
        FetchRun::new(self, ctx, wanted)?.run().await
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
                    key: c.key.clone(),
                    ttls: c.ttls,
                })
                .collect(),
            keys: self.keys.clone(),
            flush_ahead: self.flush_ahead,
            closure_indexes: self.closure_indexes,
            jobs: self.jobs,
            limits: self.limits,
            narinfo_cache: self.narinfo_cache.clone(),
        }
    }

    /// Fetches one path, trying its best cache first, with retries, then the other caches
    /// that have a trusted narinfo for it.
    async fn fetch_one(
        &self,
        ctx: &Arc<FetchContext>,
        path: &StorePath,
        first: Candidate,
    ) -> Result<Downloaded, SubstituteError> {
        let store = &ctx.store;
        let printed = store.print_path(path);
        let mut candidate = first;
        let mut earlier = Vec::new();
        loop {
            let error = match self.try_cache(ctx, &candidate, &printed).await {
                Ok(f) => return Ok(f),
                Err(Failure::Cache(error)) => error,
                Err(Failure::Local(source)) => {
                    return Err(SubstituteError::Local {
                        path: printed,
                        source,
                    })
                }
            };
            let failure = CacheFailure {
                cache: self.caches[candidate.cache].name.clone(),
                error,
            };
            if candidate.secondhand {
                self.forget(candidate.cache, path);
            }
            let next = candidate.cache + usize::from(!candidate.secondhand);
            match self.lookup_trusted(store, path.clone(), next).await {
                Ok(next) => {
                    earlier.push(failure);
                    candidate = next;
                }
                Err(_) => {
                    return Err(SubstituteError::Fetch {
                        path: printed,
                        last: Box::new(failure),
                        earlier,
                    })
                }
            }
        }
    }
}

/// What [`Substituter::lookup`] found for a path: a narinfo for it from `cache`, or none
/// (`cache` is then past the last one), and what the caches asked before said.
struct Found {
    path: StorePath,
    cache: usize,
    info: Option<NarInfo>,
    reasons: Vec<Refusal>,
    /// The narinfo came from the narinfo cache.
    secondhand: bool,
}

/// A narinfo for the path asked whose signatures are still to be checked.
struct Arrived {
    path: StorePath,
    cache: usize,
    info: NarInfo,
    reasons: Vec<Refusal>,
    secondhand: bool,
}

impl Arrived {
    fn check(&self, keys: &TrustedKeys, dir: &StoreDir) -> Result<(), TrustError> {
        check_narinfo(&self.info, &self.path, keys, dir)
    }
}

/// Adds the paths and bytes of `wanted` to the totals of `progress`.
fn count_totals(progress: &Progress, wanted: &BTreeMap<StorePath, Candidate>) {
    progress
        .paths_total
        .fetch_add(wanted.len() as u64, Ordering::Relaxed);
    progress.bytes_total.fetch_add(
        wanted.values().map(|c| c.info.nar_size()).sum(),
        Ordering::Relaxed,
    );
}

/// Makes every path to install and every reference a temp root, in one write (instead of
/// one write per path as each is staged).
async fn add_temp_roots(
    store: &Arc<LocalStore>,
    wanted: &BTreeMap<StorePath, Candidate>,
) -> Result<(), SubstituteError> {
    let roots: Vec<StorePath> = wanted
        .iter()
        .flat_map(|(p, c)| std::iter::once(p).chain(c.info.references()))
        .cloned()
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.add_temp_roots(&roots))
        .await
        .map_err(SubstituteError::Task)??;
    Ok(())
}

/// A successful download: staged for commit, or found valid (another process was first).
enum Downloaded {
    Staged(Box<Staged>, Fetched),
    Valid(Fetched),
}

type CommitResult = Result<Vec<Fetched>, StoreError>;

/// The paths of `wanted`, each after those of its references that are in `wanted`.
fn reference_order(wanted: &BTreeMap<StorePath, Candidate>) -> Vec<StorePath> {
    let paths: Vec<&StorePath> = wanted.keys().collect();
    references_first(paths, |p| p, |p| wanted[*p].info.references())
        .into_iter()
        .cloned()
        .collect()
}

/// The queue that releases the paths of `order` (all of `wanted`, in reference order) for
/// commit: each waits for its references among them.
fn commit_gate(
    order: &[StorePath],
    wanted: &BTreeMap<StorePath, Candidate>,
) -> Result<ReadyQueue, Cycle> {
    let rank: HashMap<&StorePath, usize> = order.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let waits_for = order.iter().enumerate().flat_map(|(i, p)| {
        let rank = &rank;
        wanted[p]
            .info
            .references()
            .iter()
            .filter_map(move |r| Some((i, *rank.get(r)?)))
    });
    ReadyQueue::new(order.len(), waits_for)
}

/// Takes out of `staged` (keyed by rank in reference order) every path the gate releases:
/// its references among the wanted ones are valid or taken before it. A taken path counts
/// as complete at once, so a chain staged whole is committed in one batch.
fn committable(
    staged: &mut BTreeMap<usize, (Staged, Fetched)>,
    gate: &mut ReadyQueue,
) -> Vec<(Staged, Fetched)> {
    let ranks: Vec<usize> = staged
        .keys()
        .copied()
        .filter(|&rank| {
            let ready = gate.take(rank);
            if ready {
                gate.complete(rank);
            }
            ready
        })
        .collect();
    ranks
        .into_iter()
        .filter_map(|r| staged.remove(&r))
        .collect()
}

impl Fetched {
    fn new(
        info: &crate::store::PathInfo,
        cache: &str,
        download_size: u64,
        installed: bool,
    ) -> Self {
        Fetched {
            path: info.path.clone(),
            cache: cache.to_owned(),
            nar_size: info.nar_size,
            download_size,
            installed,
        }
    }
}

async fn open_one(
    url: &CacheUrl,
    options: &ClientOptions,
    store: &LocalStore,
) -> Result<OpenCache, CacheUseError> {
    let cache = Cache::open(url, options)?;
    let info = cache.cache_info().await?;
    if info.store_dir != *store.store_dir() {
        return Err(CacheUseError::StoreDir {
            theirs: info.store_dir.to_string(),
            ours: store.store_dir().to_string(),
        });
    }
    Ok(OpenCache {
        cache: Arc::new(cache),
        name: url.to_string(),
        priority: url.priority().or(info.priority).unwrap_or(50),
        // Its key in the narinfo cache: no credentials or parameters.
        key: url.without_params(),
        ttls: Ttls::of(url),
    })
}
