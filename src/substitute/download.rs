//! One NAR download from one cache, under one set of limits: fetched whole and then
//! unpacked when it is small and its lock is free, otherwise unpacked as it streams in.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{CacheUseError, Candidate, Downloaded, Fetched, LockWaits, Progress, Substituter};
use crate::cache::compression;
use crate::cache::{blocking_reader, Backend, CacheError};
use crate::error_chain::Chain;
use crate::format::nar::NarReadError;
use crate::fsnar::FsNarError;
use crate::store::{
    ImportError, InstallLock, LocalStore, NarImport, Stage, StageOptions, StoreError,
};

/// What every download of one [`Substituter::fetch`] shares.
pub(super) struct FetchContext {
    pub(super) store: Arc<LocalStore>,
    pub(super) progress: Arc<Progress>,
    pub(super) waits: LockWaits,
}

impl Substituter {
    /// Downloads from the candidate's cache, retrying what is worth another try; the last
    /// failure once the tries are used up or one is not worth repeating.
    pub(super) async fn try_cache(
        &self,
        ctx: &Arc<FetchContext>,
        candidate: &Candidate,
        printed: &str,
    ) -> Result<Downloaded, Failure> {
        let name = &self.caches[candidate.cache].name;
        let mut attempt = 1;
        loop {
            let e = match self.download(ctx, candidate).await {
                Ok(f) => return Ok(f),
                Err(Attempt::Local(e)) => return Err(Failure::Local(e)),
                Err(Attempt::Cache(e)) => e,
            };
            tracing::warn!(
                "{name}: fetching '{printed}' failed (attempt {attempt}/{}): {}",
                self.limits.attempts,
                Chain(&e.error)
            );
            if !e.retryable || attempt >= self.limits.attempts {
                return Err(Failure::Cache(e.error));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250 << (attempt - 1))).await;
            attempt += 1;
        }
    }

    /// One download attempt from one cache: the NAR unpacked and checked into the staging
    /// dir, or the path found valid.
    async fn download(
        &self,
        ctx: &Arc<FetchContext>,
        candidate: &Candidate,
    ) -> Result<Downloaded, Attempt> {
        if candidate.info.nar_size() <= self.limits.whole_nar_max {
            let path = candidate.info.store_path();
            // Uncontended (the usual case): the lock is one `fcntl`, taken right here.
            let lock = ctx.store.try_lock_for_install(path);
            if let Some(lock) = lock.map_err(Attempt::store)? {
                return self.download_small(ctx, candidate, lock).await;
            }
        }
        self.download_streaming(ctx, candidate).await
    }

    /// [`Substituter::download`] of a small NAR (see [`crate::cache::ClientOptions::whole_nar_max`]) whose
    /// install lock is held: the compressed file is fetched whole by the runtime, then
    /// unpacked from memory on the blocking pool, or right here if it is tiny (see
    /// `Limits::inline_stage_max`). A NAR streamed through a blocking thread costs a thread
    /// hand-off for every response event, which is most of the work for a NAR of a few
    /// hundred bytes. The validity query runs on the runtime: it is short, but waits while a
    /// commit of this process holds the database.
    async fn download_small(
        &self,
        ctx: &Arc<FetchContext>,
        candidate: &Candidate,
        lock: InstallLock,
    ) -> Result<Downloaded, Attempt> {
        let (store, progress) = (&ctx.store, &ctx.progress);
        let c = &self.caches[candidate.cache];
        let info = candidate.info.clone();
        // Another process may have installed it since the walk looked.
        let valid = store.query(info.store_path());
        if let Some(valid) = valid.map_err(Attempt::store)? {
            return Ok(Downloaded::Valid(Fetched::new(&valid, &c.name, 0, false)));
        }
        let limit = self.limits.compressed_max(info.nar_size());
        let body = c
            .cache
            .get_bytes(info.url(), usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            // The HTTP layer has already retried transient failures.
            .map_err(Attempt::fatal)?
            .ok_or_else(|| Attempt::fatal(CacheError::NotFound(info.url().to_owned())))?;
        let received = body.len() as u64;
        progress.bytes_done.fetch_add(received, Ordering::Relaxed);
        let store2 = store.clone();
        let inline = info.nar_size() <= self.limits.inline_stage_max;
        let stage = move || {
            let nar = compression::decompress(info.compression(), io::Cursor::new(body))
                .map_err(|e| Attempt::fatal(CacheError::Decompress(info.url().to_owned(), e)))?;
            store2
                .stage_nar_locked(lock, NarImport::from(&info), nar)
                .map_err(Attempt::store)
        };
        let staged = if inline {
            stage()
        } else {
            tokio::task::spawn_blocking(stage)
                .await
                .map_err(Attempt::fatal)?
        }?;
        let f = Fetched::new(staged.info(), &c.name, received, true);
        Ok(Downloaded::Staged(Box::new(staged), f))
    }

    /// [`Substituter::download`] streaming the NAR through a blocking thread: it waits for
    /// the install lock there, and the NAR is unpacked as it arrives.
    async fn download_streaming(
        &self,
        ctx: &Arc<FetchContext>,
        candidate: &Candidate,
    ) -> Result<Downloaded, Attempt> {
        let c = &self.caches[candidate.cache];
        let info = candidate.info.clone();
        let meta = NarImport::from(&info);
        let (cache, ctx) = (c.cache.clone(), ctx.clone());
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let input_limit = self.limits.compressed_max(info.nar_size());
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || {
            let (store, waits) = (&ctx.store, &ctx.waits);
            let opts = StageOptions {
                waiting: &|w| waits.note(w),
            };
            store.stage_nar(meta, opts, || {
                let stream = handle
                    .block_on(cache.get(info.url()))?
                    .ok_or_else(|| CacheError::NotFound(info.url().to_owned()))?;
                let counted = Counted {
                    inner: blocking_reader(stream).take(input_limit),
                    counter,
                    progress: ctx.progress.clone(),
                };
                compression::decompress(info.compression(), counted)
                    .map_err(|e| CacheError::Decompress(info.url().to_owned(), e))
            })
        })
        .await
        .map_err(Attempt::fatal)?;
        let received = received.load(Ordering::Relaxed);
        let fetched = |info, installed| Fetched::new(info, &c.name, received, installed);
        match outcome {
            Ok(Stage::Valid(info)) => Ok(Downloaded::Valid(fetched(&info, false))),
            Ok(Stage::Staged(s)) => {
                let f = fetched(s.info(), true);
                Ok(Downloaded::Staged(Box::new(s), f))
            }
            // The request itself: the HTTP layer has already retried transient failures.
            Err(ImportError::Open(e)) => Err(Attempt::fatal(e)),
            // A stream that broke off mid-body (connection drop, stall) is worth another
            // try; a NAR that arrived but is malformed or does not match is not.
            Err(ImportError::Store(e)) if broke_off(&e) => {
                Err(Attempt::Cache(Box::new(CacheAttempt {
                    error: e.into(),
                    retryable: true,
                })))
            }
            Err(ImportError::Store(e)) => Err(Attempt::store(e)),
        }
    }
}

/// Why a NAR could not be had from a cache.
pub(super) enum Failure {
    /// The cache failed to deliver it (or delivered a bad NAR): another cache may do.
    Cache(CacheUseError),
    /// Our side failed (writing the staging tree or the database: a full disk, a quota,
    /// a read-only or failing file system): no cache can help, and none is blamed.
    Local(Box<StoreError>),
}

/// The outcome of a failed download attempt.
enum Attempt {
    Cache(Box<CacheAttempt>),
    Local(Box<StoreError>),
}

/// A failed download attempt that is the cache's.
struct CacheAttempt {
    error: CacheUseError,
    retryable: bool,
}

impl Attempt {
    /// A failure of the cache that another try from it would not fix.
    fn fatal(e: impl Into<CacheUseError>) -> Attempt {
        Attempt::Cache(Box::new(CacheAttempt {
            error: e.into(),
            retryable: false,
        }))
    }

    /// A store error: ours if [`is_local`], otherwise the NAR's (not worth another try).
    fn store(e: StoreError) -> Attempt {
        if is_local(&e) {
            Attempt::Local(Box::new(e))
        } else {
            Attempt::fatal(e)
        }
    }
}

/// Whether a store error while staging a NAR is our side's: the database, the store's
/// own files, or writing the unpacked tree (as opposed to a NAR that is malformed, does
/// not match its narinfo, or could not be read from the cache).
fn is_local(e: &StoreError) -> bool {
    match e {
        StoreError::Nar { source, .. } => matches!(source, FsNarError::Io(_)),
        StoreError::Io { .. }
        | StoreError::Db(_)
        | StoreError::NotWritable { .. }
        | StoreError::Roots(_) => true,
        _ => false,
    }
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
