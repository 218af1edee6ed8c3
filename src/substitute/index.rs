//! Reading closure indexes (store-format.md §7.6) before the narinfo walk: for every wanted
//! root that is not valid, each cache is asked for the root's index, all at once, so that a
//! closure whose index is complete costs one round trip instead of one per level.
//!
//! The index is untrusted. Each entry is checked exactly as a narinfo fetched alone
//! (strict parse for our store dir, a valid NAR key, a trusted signature for the path it
//! claims); an entry that fails, or whose path has several entries, is dropped. An index
//! that cannot be fetched or decoded is ignored whole. Either way the paths it does not
//! vouch for are looked up one by one by the walk, so an index can cost a fallback but
//! never admit a narinfo that the walk would refuse.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Semaphore;

use super::{Candidate, Substituter};
use crate::cache::check_key;
use crate::error_chain::Chain;
use crate::format::closure_index::{self, ClosureIndex, ClosureIndexError};
use crate::format::keys::TrustedKeys;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::{StoreDir, StorePath};
use crate::store::LocalStore;
use crate::trust::check_narinfo;

/// Index downloads in flight at once. With one decode at a time ([`DECODING`]), a hostile
/// cache can make a reader hold at most `16 × MAX_COMPRESSED + MAX_DECOMPRESSED` bytes.
const FETCHES: usize = 16;
/// Indexes decoded and checked at once.
const DECODING: usize = 1;

/// The trusted narinfos that the caches' indexes for `roots` hold, each from the cache of
/// best priority that vouches for it.
pub(super) async fn read_indexes(
    sub: &Substituter,
    store: &LocalStore,
    roots: &[StorePath],
) -> BTreeMap<StorePath, Candidate> {
    let wanted: Vec<&StorePath> = roots
        .iter()
        .filter(|r| !store.is_valid(r).unwrap_or(true))
        .collect();
    let asks = wanted
        .into_iter()
        .flat_map(|root| (0..sub.caches.len()).map(move |cache| (root, cache)));
    let mut known: BTreeMap<StorePath, Candidate> = BTreeMap::new();
    let decoding = Semaphore::new(DECODING);
    let mut answers = stream::iter(asks)
        .map(|(root, cache)| read_one(sub, store, root, cache, &decoding))
        .buffer_unordered(FETCHES);
    while let Some((cache, infos)) = answers.next().await {
        for info in infos {
            let candidate = Candidate {
                cache,
                info,
                secondhand: true,
            };
            match known.entry(candidate.info.store_path().clone()) {
                Entry::Vacant(v) => {
                    v.insert(candidate);
                }
                Entry::Occupied(mut o) if o.get().cache > cache => {
                    o.insert(candidate);
                }
                Entry::Occupied(_) => {}
            }
        }
    }
    known
}

/// Fetches the index of `root` from cache `cache` and returns its trusted entries (none if
/// the cache has no index or it is unusable).
async fn read_one(
    sub: &Substituter,
    store: &LocalStore,
    root: &StorePath,
    cache: usize,
    decoding: &Semaphore,
) -> (usize, Vec<NarInfo>) {
    let c = &sub.caches[cache];
    let key = closure_index::key(root);
    let bytes = match c.cache.get_bytes(&key, closure_index::MAX_COMPRESSED).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return (cache, Vec::new()),
        Err(e) => {
            tracing::warn!("ignoring {key} from {}: {}", c.name, Chain(&e));
            return (cache, Vec::new());
        }
    };
    let (keys, dir) = (sub.keys.clone(), store.store_dir().clone());
    let Ok(_permit) = decoding.acquire().await else {
        return (cache, Vec::new());
    };
    let checked = tokio::task::spawn_blocking(move || trusted_entries(&bytes, &keys, &dir)).await;
    match checked {
        Ok(Ok(infos)) => (cache, infos),
        Ok(Err(e)) => {
            tracing::warn!("ignoring {key} from {}: {}", c.name, Chain(&e));
            (cache, Vec::new())
        }
        Err(_) => (cache, Vec::new()),
    }
}

/// Decodes an index and keeps the entries a per-path lookup would accept: the narinfo
/// parses strictly for `dir`, its NAR key is valid, and it carries a signature by one of
/// `keys` for the path it claims. A path claimed by more than one entry is dropped.
pub(super) fn trusted_entries(
    compressed: &[u8],
    keys: &TrustedKeys,
    dir: &StoreDir,
) -> Result<Vec<NarInfo>, ClosureIndexError> {
    let index = ClosureIndex::decode(compressed)?;
    let mut by_path: BTreeMap<StorePath, Option<NarInfo>> = BTreeMap::new();
    let mut refused = 0usize;
    for entry in index.entries() {
        let Ok(info) = NarInfo::parse_bytes(entry, dir) else {
            refused += 1;
            continue;
        };
        match by_path.entry(info.store_path().clone()) {
            Entry::Vacant(v) => {
                v.insert(Some(info));
            }
            Entry::Occupied(mut o) => {
                refused += 1;
                o.insert(None);
            }
        }
    }
    let trusted: Vec<NarInfo> = by_path
        .into_iter()
        .filter_map(|(path, info)| {
            let info = info?;
            let ok =
                check_key(info.url()).is_ok() && check_narinfo(&info, &path, keys, dir).is_ok();
            refused += usize::from(!ok);
            ok.then_some(info)
        })
        .collect();
    if refused > 0 {
        tracing::debug!(
            "closure index: {refused} entries refused, {} kept",
            trusted.len()
        );
    }
    Ok(trusted)
}
