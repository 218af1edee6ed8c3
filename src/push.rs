//! Pushing closures to a binary cache (`store copy --to`).
//!
//! The target is asked which narinfos it already has (HEAD, many in flight); those paths are
//! skipped. For every other path the NAR is dumped, compressed into a temp file while its
//! compressed bytes are hashed (the file name is that hash), and uploaded; then its narinfo
//! (existing signatures kept, plus one by the given key) is uploaded, but only once the
//! narinfos of all its references are in the cache. So a reader never sees a narinfo whose
//! NAR or references are missing, and an interrupted push leaves a correct (partial) cache.
//! Concurrent pushes of the same closure write the same content under the same names, and
//! every single write is atomic, so they end with a correct cache too.
//!
//! Last, each root gets its closure index (store-format.md §7.6, [`index`]) unless the
//! cache has one and this push changed nothing in the root's closure.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use thiserror::Error;
use tokio::task::JoinSet;

use crate::cache::compression::{self, Compression};
use crate::cache::{Backend, Cache, CacheError, PutBody};
use crate::format::hash::{Hash, HashAlgo, Hasher};
use crate::format::keys::SecretKey;
use crate::format::narinfo::{NarInfo, NarInfoError};
use crate::format::store_path::StorePath;
use crate::schedule::ReadyQueue;
use crate::store::{LocalStore, PathInfo, StoreError};
use crate::temp_file::TempFile;

mod index;

/// Uploads in flight at the same time.
pub const DEFAULT_PUSH_JOBS: usize = 8;
/// HEAD requests in flight while finding what the cache lacks.
const HEAD_CONCURRENCY: usize = 64;

#[derive(Debug, Error)]
pub enum PushError {
    #[error("the cache is for store dir '{cache}', but this store's is '{ours}'")]
    StoreDirMismatch { cache: String, ours: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare the NAR of '{path}'")]
    Prepare {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the narinfo of '{path}'")]
    Narinfo {
        path: String,
        #[source]
        source: NarInfoError,
    },
    #[error("cannot read the build log of '{drv}'")]
    Log {
        drv: String,
        #[source]
        source: io::Error,
    },
    #[error("the references of these paths form a cycle: {}", paths.join(", "))]
    Cycle { paths: Vec<String> },
    #[error("an internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// How to push.
pub struct PushOptions {
    pub compression: Compression,
    pub key: Option<Arc<SecretKey>>,
    pub jobs: usize,
}

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Paths the cache had already.
    pub present: Vec<StorePath>,
    /// Paths uploaded, with the size of the uploaded (compressed) NAR.
    pub uploaded: Vec<(StorePath, u64)>,
    /// Roots whose closure index was written.
    pub indexed: Vec<StorePath>,
}

/// Pushes the closures of `roots` to `cache`.
pub async fn push(
    store: &Arc<LocalStore>,
    cache: &Arc<Cache>,
    roots: &[StorePath],
    opts: &PushOptions,
) -> Result<PushReport, PushError> {
    check_store_dir(store, cache).await?;
    let closure: Vec<StorePath> = store.closure(roots)?.into_iter().collect();
    let (present, had_index) = tokio::try_join!(
        find_present(cache, &closure),
        index::find_indexed(cache, roots)
    )?;
    let todo: Vec<StorePath> = closure
        .into_iter()
        .filter(|p| !present.contains(p))
        .collect();
    let queue = reference_order(store, &todo)?;
    let uploaded = upload_in_order(store, cache, &todo, queue, opts).await?;
    let texts = uploaded
        .iter()
        .map(|(p, _, text)| (p.clone(), text.clone()))
        .collect();
    let indexed = index::write_indexes(store, cache, roots, &had_index, texts).await?;
    Ok(PushReport {
        present: present.into_iter().collect(),
        uploaded: uploaded.into_iter().map(|(p, size, _)| (p, size)).collect(),
        indexed,
    })
}

/// Refuses a cache made for another store dir (creating `nix-cache-info` if it is new).
async fn check_store_dir(store: &LocalStore, cache: &Cache) -> Result<(), PushError> {
    let info = cache.init_for_writing(store.store_dir()).await?;
    if info.store_dir != *store.store_dir() {
        return Err(PushError::StoreDirMismatch {
            cache: info.store_dir.to_string(),
            ours: store.store_dir().to_string(),
        });
    }
    Ok(())
}

/// The paths of `closure` whose narinfo the cache has already (many HEADs in flight).
async fn find_present(
    cache: &Arc<Cache>,
    closure: &[StorePath],
) -> Result<BTreeSet<StorePath>, PushError> {
    find_existing(cache, closure, |p| format!("{}.narinfo", p.hash_str())).await
}

/// The paths of `paths` whose object `key_of(path)` the cache has (HEAD, many in flight).
async fn find_existing(
    cache: &Arc<Cache>,
    paths: &[StorePath],
    key_of: impl Fn(&StorePath) -> String,
) -> Result<BTreeSet<StorePath>, PushError> {
    let found = stream::iter(paths.iter().cloned())
        .map(|p| {
            let (cache, key) = (cache.clone(), key_of(&p));
            async move {
                let has = cache.exists(&key).await?;
                Ok::<_, CacheError>((p, has))
            }
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .try_filter_map(|(p, has)| async move { Ok(has.then_some(p)) })
        .try_collect()
        .await?;
    Ok(found)
}

/// Reference order over `todo`: a narinfo goes up only after its references' narinfos.
/// References outside `todo` are in the cache already.
fn reference_order(store: &LocalStore, todo: &[StorePath]) -> Result<ReadyQueue, PushError> {
    let index: HashMap<&StorePath, usize> = todo.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let mut waits_for = Vec::new();
    for (i, p) in todo.iter().enumerate() {
        let info = store.query_valid(p)?;
        waits_for.extend(
            info.references
                .iter()
                .filter_map(|r| Some((i, *index.get(r)?))),
        );
    }
    ReadyQueue::new(todo.len(), waits_for).map_err(|cycle| PushError::Cycle {
        paths: cycle
            .members
            .iter()
            .map(|&i| store.print_path(&todo[i]))
            .collect(),
    })
}

/// Runs `push_one` for the paths of `todo` as `queue` releases them, `opts.jobs` at a
/// time. After the first error nothing new starts; the uploads in flight finish. Returns
/// each path uploaded with its NAR's size and its narinfo's text.
async fn upload_in_order(
    store: &Arc<LocalStore>,
    cache: &Arc<Cache>,
    todo: &[StorePath],
    mut queue: ReadyQueue,
    opts: &PushOptions,
) -> Result<Vec<(StorePath, u64, Bytes)>, PushError> {
    let mut uploaded = Vec::new();
    let mut tasks: JoinSet<(usize, Result<Pushed, PushError>)> = JoinSet::new();
    let mut first_error = None;
    loop {
        while first_error.is_none() && tasks.len() < opts.jobs.max(1) {
            let Some(i) = queue.pop() else { break };
            let (store, cache, p) = (store.clone(), cache.clone(), todo[i].clone());
            let (compression, key) = (opts.compression, opts.key.clone());
            tasks.spawn(async move {
                (
                    i,
                    push_one(&store, &cache, &p, compression, key.as_deref()).await,
                )
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (i, result) = joined.map_err(PushError::Task)?;
        match result {
            Ok((size, text)) => {
                queue.complete(i);
                uploaded.push((todo[i].clone(), size, text));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(uploaded),
    }
}

/// What [`push_one`] uploaded: the NAR's size and the narinfo's text.
type Pushed = (u64, Bytes);

/// Uploads one path: NAR first, then its narinfo. Returns the uploaded NAR's size and the
/// narinfo's text.
async fn push_one(
    store: &Arc<LocalStore>,
    cache: &Arc<Cache>,
    path: &StorePath,
    compression: Compression,
    key: Option<&SecretKey>,
) -> Result<Pushed, PushError> {
    let info = store.query_valid(path)?;
    let printed = store.print_path(path);
    let prepared = prepare(store, path, &printed, compression).await?;
    let url = format!(
        "nar/{}{}",
        prepared.file_hash.to_nix32(),
        compression.nar_extension()
    );
    if !cache.exists(&url).await? {
        cache
            .put(
                &url,
                PutBody::File(prepared.file.path().to_path_buf()),
                "application/x-nix-nar",
            )
            .await?;
    }
    let narinfo =
        narinfo_for(store, path, &info, &url, &prepared, compression, key).map_err(|source| {
            PushError::Narinfo {
                path: printed,
                source,
            }
        })?;
    let text = Bytes::from(narinfo.to_text(store.store_dir()));
    cache
        .put(
            &format!("{}.narinfo", path.hash_str()),
            PutBody::Bytes(text.clone()),
            "text/x-nix-narinfo",
        )
        .await?;
    Ok((prepared.file_size, text))
}

/// `prepare_nar` on a blocking thread.
async fn prepare(
    store: &Arc<LocalStore>,
    path: &StorePath,
    printed: &str,
    compression: Compression,
) -> Result<Prepared, PushError> {
    let (store, path) = (store.clone(), path.clone());
    tokio::task::spawn_blocking(move || prepare_nar(&store, &path, compression))
        .await
        .map_err(PushError::Task)?
        .map_err(|source| match source {
            PrepareError::Store(e) => PushError::Store(e),
            PrepareError::Io(source) => PushError::Prepare {
                path: printed.to_owned(),
                source,
            },
        })
}

/// The narinfo of an uploaded NAR: the path's metadata, its existing signatures, and one
/// more by `key` if given.
fn narinfo_for(
    store: &LocalStore,
    path: &StorePath,
    info: &PathInfo,
    url: &str,
    prepared: &Prepared,
    compression: Compression,
    key: Option<&SecretKey>,
) -> Result<NarInfo, NarInfoError> {
    let mut narinfo = NarInfo::new(path.clone(), url, info.nar_hash, info.nar_size)?;
    narinfo.set_compression(Some(compression.label()))?;
    narinfo.set_file_hash(Some(prepared.file_hash))?;
    narinfo.set_file_size(Some(prepared.file_size));
    narinfo.set_references(info.references.iter().cloned());
    narinfo.set_deriver(info.deriver.clone());
    narinfo.set_ca(info.ca);
    for sig in &info.sigs {
        narinfo.add_sig(&sig.to_string())?;
    }
    if let Some(key) = key {
        narinfo.sign(key, store.store_dir());
    }
    Ok(narinfo)
}

struct Prepared {
    file: TempFile,
    file_hash: Hash,
    file_size: u64,
}

enum PrepareError {
    Store(StoreError),
    Io(io::Error),
}

/// Dumps and compresses a path's NAR into a temp file in the store's state dir, hashing
/// the compressed bytes on the way. The file is locked while this process lives, so the
/// next command to open the store reclaims it after a crash (see `crate::temp_file`).
fn prepare_nar(
    store: &LocalStore,
    path: &StorePath,
    compression: Compression,
) -> Result<Prepared, PrepareError> {
    let dir = store.layout().temp_files_dir();
    std::fs::create_dir_all(&dir).map_err(PrepareError::Io)?;
    let file = TempFile::create_in(&dir, 0o600).map_err(PrepareError::Io)?;
    let out = HashCount {
        inner: BufWriter::with_capacity(
            1 << 20,
            file.as_file().try_clone().map_err(PrepareError::Io)?,
        ),
        hasher: Hasher::new(HashAlgo::Sha256),
        count: 0,
    };
    let mut enc = compression::compress(compression, None, out).map_err(PrepareError::Io)?;
    store
        .dump_path(path, &mut enc)
        .map_err(PrepareError::Store)?;
    let mut out = enc.finish().map_err(PrepareError::Io)?;
    out.inner.flush().map_err(PrepareError::Io)?;
    let synced: &File = out.inner.get_ref();
    synced.sync_all().map_err(PrepareError::Io)?;
    Ok(Prepared {
        file,
        file_hash: out.hasher.finish(),
        file_size: out.count,
    })
}

/// A writer that hashes and counts what passes through it.
struct HashCount<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Uploads the build logs of the paths in the closures of `roots` that were built here (their
/// deriver has a log in the state dir) to `log/<drv base name>`, as Nix's caches keep them
/// (plain text), unless the cache has them already. Returns how many were uploaded.
pub async fn push_logs(
    store: &Arc<LocalStore>,
    cache: &Arc<Cache>,
    roots: &[StorePath],
) -> Result<usize, PushError> {
    let closure = store.closure(roots.iter())?;
    let mut drvs: BTreeSet<StorePath> = BTreeSet::new();
    for p in &closure {
        if let Some(d) = store.query_valid(p)?.meta.deriver {
            drvs.insert(d);
        }
    }
    let mut uploaded = 0;
    for drv in drvs {
        let log = crate::store::logs::read_log(store.layout(), &drv).map_err(|source| {
            PushError::Log {
                drv: store.print_path(&drv),
                source,
            }
        })?;
        let Some(log) = log else { continue };
        let key = format!("log/{}", drv.as_str());
        if cache.exists(&key).await? {
            continue;
        }
        cache
            .put(
                &key,
                PutBody::Bytes(log.into()),
                "text/plain; charset=utf-8",
            )
            .await?;
        uploaded += 1;
    }
    Ok(uploaded)
}
