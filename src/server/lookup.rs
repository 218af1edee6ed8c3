//! Path lookups by hash part, with the rendered narinfo kept in memory.
//!
//! Serving a narinfo is the hot path of a binary cache (every client asks for every path
//! of a closure), so the rendered bytes of recently served paths are kept in a map from
//! hash part to [`Entry`]. Only positive answers are kept (a path that becomes valid is
//! served at once; Nix caches negative answers itself).
//!
//! Staleness is bounded by a watcher: once a second it asks SQLite for the database's
//! `PRAGMA data_version` on a connection of its own, which changes whenever any other
//! connection (this server's uploads, `store sign`, another process) commits; the whole map
//! is then dropped. Uploads also evict their path at once. The map is bounded to
//! [`MAX_ENTRIES`]; when it is full it is cleared (the next requests refill it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};

use super::error::ApiError;
use super::names::{nar_url, NarEncoding};
use crate::error_chain::Chain;
use crate::format::keys::SecretKey;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::{StorePath, StorePathHash};
use crate::store::{LocalStore, PathInfo};

/// Most entries kept (a narinfo is about 0.5 to 2 KiB).
pub const MAX_ENTRIES: usize = 16 * 1024;

/// How often the watcher polls the database's change counter.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What the server needs to know about a valid path.
#[derive(Debug)]
pub(crate) struct Entry {
    pub path: StorePath,
    /// `nar_hash` in nix32, as it appears in NAR names.
    pub nar_hash_nix32: String,
    pub nar_size: u64,
    /// The narinfo file.
    pub narinfo: Bytes,
}

/// The in-memory map of rendered narinfos.
#[derive(Default)]
pub(crate) struct InfoCache {
    map: RwLock<HashMap<StorePathHash, Arc<Entry>>>,
    /// Bumped by every `clear`, so that an entry read from the database before a clear
    /// is not inserted after it.
    generation: AtomicU64,
}

impl InfoCache {
    pub fn get(&self, hash: &StorePathHash) -> Option<Arc<Entry>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    /// The generation to pass to [`InfoCache::insert`]; read it before the database.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Inserts an entry read from the database in `generation`, unless the map was
    /// cleared since.
    pub fn insert(&self, generation: u64, hash: StorePathHash, entry: Arc<Entry>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(hash, entry);
    }

    pub fn remove(&self, hash: &StorePathHash) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }

    pub fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }
}

/// How narinfos are rendered: the same for every path of one server.
pub(crate) struct Renderer {
    pub encoding: NarEncoding,
    pub sign_with: Option<SecretKey>,
}

impl Renderer {
    /// The narinfo of a valid path: its DB record, the NAR URL of this server, the
    /// recorded signatures plus ours if configured. FileHash/FileSize only for plain NARs
    /// (where they equal NarHash/NarSize); compressed NARs are produced on demand.
    pub fn render(&self, store: &LocalStore, info: PathInfo) -> Result<Entry, ApiError> {
        let dir = store.store_dir();
        let info = info.meta;
        let err = |source| ApiError::Render {
            path: store.print_path(&info.path),
            source,
        };
        let nix32 = info.nar_hash.to_nix32();
        let url = nar_url(info.path.hash_str(), &nix32, self.encoding);
        let mut ni =
            NarInfo::new(info.path.clone(), &url, info.nar_hash, info.nar_size).map_err(err)?;
        ni.set_compression(Some(self.encoding.label()))
            .map_err(err)?;
        if self.encoding == NarEncoding::Plain {
            ni.set_file_hash(Some(info.nar_hash)).map_err(err)?;
            ni.set_file_size(Some(info.nar_size));
        }
        ni.set_references(info.references);
        ni.set_deriver(info.deriver);
        ni.set_ca(info.ca);
        for sig in &info.sigs {
            ni.add_sig(&sig.to_string()).map_err(err)?;
        }
        if let Some(key) = &self.sign_with {
            ni.sign(key, dir);
        }
        Ok(Entry {
            narinfo: Bytes::from(ni.to_text(dir)),
            path: info.path,
            nar_hash_nix32: nix32,
            nar_size: info.nar_size,
        })
    }
}

/// A read-only connection to the store database used only for its change counter.
pub(crate) struct ChangeProbe {
    conn: Connection,
    last: i64,
}

impl ChangeProbe {
    pub fn open(db_path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut probe = ChangeProbe { conn, last: 0 };
        probe.last = probe.version()?;
        Ok(probe)
    }

    fn version(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))
    }

    /// Whether the database changed since the last call (errors count as changes).
    pub fn changed(&mut self) -> bool {
        match self.version() {
            Ok(v) if v == self.last => false,
            Ok(v) => {
                self.last = v;
                true
            }
            Err(e) => {
                tracing::warn!("cannot poll the store database for changes: {}", Chain(&e));
                true
            }
        }
    }
}

/// Clears `cache` whenever the database changes, until the task is aborted.
pub(crate) async fn watch(cache: Arc<InfoCache>, probe: ChangeProbe) {
    let probe = Arc::new(std::sync::Mutex::new(probe));
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = Arc::clone(&probe);
        let changed = tokio::task::spawn_blocking(move || {
            p.lock().unwrap_or_else(|e| e.into_inner()).changed()
        })
        .await
        .unwrap_or(true);
        if changed {
            cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::store_path::{StoreDir, StorePathName};
    use crate::store::Layout;

    fn entry(path: &StorePath) -> Arc<Entry> {
        Arc::new(Entry {
            path: path.clone(),
            nar_hash_nix32: String::new(),
            nar_size: 1,
            narinfo: Bytes::new(),
        })
    }

    #[test]
    fn entries_read_before_a_clear_are_not_kept() {
        let cache = InfoCache::default();
        let p: StorePath = "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c".parse().unwrap();
        let before = cache.generation();
        cache.clear();
        cache.insert(before, *p.hash(), entry(&p));
        assert!(cache.get(p.hash()).is_none());
        cache.insert(cache.generation(), *p.hash(), entry(&p));
        assert!(cache.get(p.hash()).is_some());
        cache.remove(p.hash());
        assert!(cache.get(p.hash()).is_none());
    }

    #[test]
    fn probe_sees_commits_of_other_connections() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(StoreDir::new("/ix/store").unwrap(), Some(d.path()));
        let store = LocalStore::open(layout).unwrap();
        let mut probe = ChangeProbe::open(&store.layout().db_path()).unwrap();
        assert!(!probe.changed());
        let src = d.path().join("f");
        std::fs::write(&src, b"x").unwrap();
        let name = StorePathName::new("f").unwrap();
        let added = store.add_tree(&src, &name).unwrap();
        assert!(probe.changed());
        assert!(!probe.changed());
        store
            .add_signatures(
                &added.info.path,
                [crate::format::keys::SecretKey::from_seed("k", &[7; 32])
                    .unwrap()
                    .sign("fingerprint")],
            )
            .unwrap();
        assert!(probe.changed());

        let r = Renderer {
            encoding: NarEncoding::Zstd,
            sign_with: Some(SecretKey::from_seed("srv-1", &[3; 32]).unwrap()),
        };
        let e = r
            .render(&store, store.query(&added.info.path).unwrap().unwrap())
            .unwrap();
        let text = std::str::from_utf8(&e.narinfo).unwrap();
        let ni = NarInfo::parse(text, store.store_dir()).unwrap();
        assert_eq!(ni.sigs().len(), 2);
        assert_eq!(ni.compression(), Some("zstd"));
        assert!(ni.url().ends_with(".nar.zst"));
    }
}
