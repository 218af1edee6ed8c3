//! Writing closure indexes (store-format.md §7.6) at the end of a push: for each root, one
//! object holding the narinfos of its closure as the cache has them, written only once all
//! of them are in the cache. An index is an optimisation for readers: failing to write one
//! is a warning, never a failed push.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::{PushError, HEAD_CONCURRENCY};
use crate::cache::{Backend, Cache, CacheError, PutBody};
use crate::error_chain::Chain;
use crate::format::closure_index::{self, ClosureIndexError};
use crate::format::narinfo::{NarInfo, MAX_NARINFO_SIZE};
use crate::format::store_path::StorePath;
use crate::store::LocalStore;

/// The MIME type of an index object.
const CONTENT_TYPE: &str = "application/zstd";

/// The roots of `roots` whose index the cache has already (HEAD, many in flight).
pub(super) async fn find_indexed(
    cache: &Arc<Cache>,
    roots: &[StorePath],
) -> Result<BTreeSet<StorePath>, PushError> {
    super::find_existing(cache, roots, closure_index::key).await
}

/// Writes the index of each root whose closure this push changed, or that has none yet.
/// `texts` holds the narinfos this push uploaded; the others are read back from the cache
/// (verbatim, as a reader would get them). Returns the roots indexed.
pub(super) async fn write_indexes(
    store: &Arc<LocalStore>,
    cache: &Arc<Cache>,
    roots: &[StorePath],
    indexed: &BTreeSet<StorePath>,
    mut texts: HashMap<StorePath, Bytes>,
) -> Result<Vec<StorePath>, PushError> {
    let mut todo = Vec::new();
    for root in roots.iter().collect::<BTreeSet<_>>() {
        let closure = store.closure([root])?;
        if indexed.contains(root) && !closure.iter().any(|p| texts.contains_key(p)) {
            continue;
        }
        todo.push((root.clone(), closure));
    }
    let missing: BTreeSet<StorePath> = todo
        .iter()
        .flat_map(|(_, c)| c.iter())
        .filter(|p| !texts.contains_key(*p))
        .cloned()
        .collect();
    texts.extend(read_narinfos(store, cache, missing).await);
    let texts = Arc::new(texts);
    let mut done = Vec::new();
    for (root, closure) in todo {
        match write_one(cache, &root, closure, &texts).await {
            Ok(()) => done.push(root),
            Err(e) => tracing::warn!(
                "cannot write the closure index of '{}': {}",
                store.print_path(&root),
                Chain(&e)
            ),
        }
    }
    Ok(done)
}

/// Encodes (off the async threads) and uploads the index of `root`.
async fn write_one(
    cache: &Cache,
    root: &StorePath,
    closure: BTreeSet<StorePath>,
    texts: &Arc<HashMap<StorePath, Bytes>>,
) -> Result<(), IndexWriteError> {
    let texts = texts.clone();
    let packed = tokio::task::spawn_blocking(move || {
        closure_index::encode(closure.iter().filter_map(|p| Some(&texts.get(p)?[..])))
    })
    .await
    .map_err(IndexWriteError::Task)??;
    let key = closure_index::key(root);
    cache
        .put(&key, PutBody::Bytes(packed.into()), CONTENT_TYPE)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum IndexWriteError {
    #[error("cannot encode it")]
    Encode(#[from] ClosureIndexError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("an internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The narinfos of `paths` as the cache serves them, many requests in flight. One that is
/// missing, unreadable or not for its path is left out (readers then look it up alone).
async fn read_narinfos(
    store: &LocalStore,
    cache: &Arc<Cache>,
    paths: BTreeSet<StorePath>,
) -> Vec<(StorePath, Bytes)> {
    let dir = store.store_dir();
    stream::iter(paths)
        .map(|p| async move {
            let key = format!("{}.narinfo", p.hash_str());
            let bytes = match cache.get_bytes(&key, MAX_NARINFO_SIZE).await {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("closure index: cannot read {key}: {}", Chain(&e));
                    return None;
                }
            };
            let info = NarInfo::parse_bytes(&bytes, dir).ok()?;
            (info.store_path() == &p).then_some((p, bytes))
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await
}
