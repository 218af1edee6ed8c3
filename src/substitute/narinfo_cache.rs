//! The client-side narinfo cache: what each binary cache answered for a hash part, kept in
//! `<state>/narinfo-cache.sqlite`, so that repeated substitutions against the same caches
//! skip the network (store-format.md §7.2).
//!
//! * Keyed by the cache's URL without credentials or parameters, and the hash part.
//! * Positive entries keep the narinfo's text, never the trust decision: a hit is parsed
//!   and checked against the trusted keys on every use like a fresh answer, so changing
//!   the keys takes effect at once. Negative entries record a 404.
//! * Per-cache time to live ([`Ttls`]): positive 30 days and negative 1 hour by default
//!   (Nix's defaults), `?narinfo-positive-ttl=S` / `?narinfo-negative-ttl=S` on the cache
//!   URL. An entry as old as its TTL is not used.
//! * SQLite, like the store database: one file, WAL so that concurrent processes read and
//!   write it safely, each write its own short transaction. Bounded to [`MAX_ENTRIES`]
//!   rows: past it the oldest entries go. Queries are tens of microseconds, so they run
//!   on the caller's thread.
//! * It is only an optimisation: any SQLite failure (a corrupt or locked file) disables it
//!   for the process with one warning, and substitution uses the network. A file that is
//!   not a database is removed and recreated once at open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::cache::CacheUrl;
use crate::error_chain::Chain;
use crate::store::stage::now;

/// The most entries kept; past it, the oldest eighth goes. About 50 MB of typical narinfos.
pub const MAX_ENTRIES: i64 = 100_000;
/// How long a process waits for another's write lock before giving up on the cache.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Inserts between two checks of [`MAX_ENTRIES`].
const PRUNE_EVERY: u32 = 1024;

/// How long entries of one cache are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub positive: Duration,
    pub negative: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Ttls {
            positive: Duration::from_secs(30 * 24 * 3600),
            negative: Duration::from_secs(3600),
        }
    }
}

impl Ttls {
    /// The defaults, overridden by `?narinfo-positive-ttl=S` and `?narinfo-negative-ttl=S`
    /// (seconds) on `url`. A malformed value keeps the default, with a warning.
    pub fn of(url: &CacheUrl) -> Ttls {
        let mut ttls = Ttls::default();
        for (name, slot) in [
            ("narinfo-positive-ttl", &mut ttls.positive),
            ("narinfo-negative-ttl", &mut ttls.negative),
        ] {
            match url.param(name).map(str::parse::<u64>) {
                None => {}
                Some(Ok(s)) => *slot = Duration::from_secs(s),
                Some(Err(_)) => tracing::warn!("{url}: ignoring {name}: not a number of seconds"),
            }
        }
        ttls
    }
}

/// What the narinfo cache knows of a hash part in one cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    /// The narinfo's text, still to be parsed and checked.
    Present(String),
    /// The cache answered that it does not have it.
    Absent,
    /// Nothing usable is recorded.
    Unknown,
}

/// An open narinfo cache (or a disabled one, after a failure).
pub struct NarinfoCache {
    file: PathBuf,
    conn: Mutex<Option<Connection>>,
    inserts: AtomicU32,
}

impl NarinfoCache {
    /// Opens (creating) `<state_dir>/narinfo-cache.sqlite`. Never fails: an unusable file
    /// gives a disabled cache, with a warning.
    pub fn open(state_dir: &Path) -> NarinfoCache {
        let file = state_dir.join("narinfo-cache.sqlite");
        let conn = match connect(&file) {
            Ok(c) => Some(c),
            Err(first) => {
                // Not a database (or damaged): start over once.
                tracing::warn!(
                    "narinfo cache {} unusable ({first}); starting a new one",
                    file.display()
                );
                remove_db(&file);
                match connect(&file) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn_disabled(&file, &e);
                        None
                    }
                }
            }
        };
        NarinfoCache {
            file,
            conn: Mutex::new(conn),
            inserts: AtomicU32::new(0),
        }
    }

    /// What is recorded for `hash` in the cache `key` and still within `ttls`.
    pub fn get(&self, key: &str, hash: &str, ttls: Ttls) -> Cached {
        let row = self.with(|c| {
            c.prepare_cached("SELECT text, at FROM narinfos WHERE cache = ?1 AND hash = ?2")?
                .query_row(params![key, hash], |r| {
                    Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
        });
        let Some(Some((text, at))) = row else {
            return Cached::Unknown;
        };
        let age = now().saturating_sub(at);
        let ttl = if text.is_some() {
            ttls.positive
        } else {
            ttls.negative
        };
        if age < 0 || age as u64 >= ttl.as_secs() {
            return Cached::Unknown;
        }
        text.map_or(Cached::Absent, Cached::Present)
    }

    /// Records the answer of cache `key` for `hash`: its narinfo text, or `None` for absent.
    pub fn put(&self, key: &str, hash: &str, text: Option<&str>) {
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO narinfos (cache, hash, text, at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, hash, text, now()])
        });
        if self.inserts.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.with(prune);
        }
    }

    /// Forgets what is recorded for `hash` in cache `key` (it turned out wrong).
    pub fn forget(&self, key: &str, hash: &str) {
        self.with(|c| {
            c.prepare_cached("DELETE FROM narinfos WHERE cache = ?1 AND hash = ?2")?
                .execute(params![key, hash])
        });
    }

    /// Runs `f` on the connection; on failure warns once and disables the cache.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(guard.as_ref()?);
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                warn_disabled(&self.file, &e);
                *guard = None;
                None
            }
        }
    }
}

fn connect(file: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(file)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS narinfos (
             cache TEXT NOT NULL,
             hash TEXT NOT NULL,
             text TEXT,
             at INTEGER NOT NULL,
             PRIMARY KEY (cache, hash)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS narinfos_at ON narinfos (at);",
    )?;
    prune(&conn)?;
    Ok(conn)
}

/// Removes the oldest entries once there are more than [`MAX_ENTRIES`].
fn prune(conn: &Connection) -> rusqlite::Result<()> {
    let n: i64 = conn.query_row("SELECT count(*) FROM narinfos", [], |r| r.get(0))?;
    if n > MAX_ENTRIES {
        conn.execute(
            "DELETE FROM narinfos WHERE (cache, hash) IN
                 (SELECT cache, hash FROM narinfos ORDER BY at LIMIT ?1)",
            params![n - MAX_ENTRIES * 7 / 8],
        )?;
    }
    Ok(())
}

fn remove_db(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

fn warn_disabled(file: &Path, e: &rusqlite::Error) {
    tracing::warn!(
        "narinfo cache {} unusable, asking the caches instead: {}",
        file.display(),
        Chain(e)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "a8z667l486sd21m8rs058ir3b2sh8k14";

    #[test]
    fn positive_negative_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let c = NarinfoCache::open(dir.path());
        let long = Ttls::default();
        assert_eq!(c.get("k", H, long), Cached::Unknown);
        c.put("k", H, Some("text"));
        assert_eq!(c.get("k", H, long), Cached::Present("text".into()));
        assert_eq!(c.get("other", H, long), Cached::Unknown);
        let expired = Ttls {
            positive: Duration::ZERO,
            negative: Duration::ZERO,
        };
        assert_eq!(c.get("k", H, expired), Cached::Unknown);
        c.put("k", H, None);
        assert_eq!(c.get("k", H, long), Cached::Absent);
        assert_eq!(c.get("k", H, expired), Cached::Unknown);
        c.forget("k", H);
        assert_eq!(c.get("k", H, long), Cached::Unknown);
        // Another process sees it.
        c.put("k", H, Some("again"));
        let d = NarinfoCache::open(dir.path());
        assert_eq!(d.get("k", H, long), Cached::Present("again".into()));
    }

    #[test]
    fn a_corrupt_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("narinfo-cache.sqlite"), vec![0xab; 8192]).unwrap();
        let c = NarinfoCache::open(dir.path());
        c.put("k", H, None);
        assert_eq!(c.get("k", H, Ttls::default()), Cached::Absent);
    }

    #[test]
    fn prunes_the_oldest_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let c = NarinfoCache::open(dir.path());
        c.with(|conn| {
            conn.execute_batch("BEGIN")?;
            let mut stmt = conn.prepare("INSERT INTO narinfos VALUES (?1, ?2, NULL, ?3)")?;
            for i in 0..=MAX_ENTRIES {
                stmt.execute(params!["k", i.to_string(), i])?;
            }
            conn.execute_batch("COMMIT")?;
            prune(conn)
        })
        .unwrap();
        let (n, oldest): (i64, i64) = c
            .with(|conn| {
                conn.query_row("SELECT count(*), min(at) FROM narinfos", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .unwrap();
        assert_eq!(n, MAX_ENTRIES * 7 / 8);
        assert_eq!(oldest, MAX_ENTRIES + 1 - MAX_ENTRIES * 7 / 8);
    }
}
