//! The metadata database (SQLite, WAL): one row per valid path with its NAR hash and size,
//! deriver, signatures, content address and registration time, plus the reference graph.
//!
//! Invariant: a path is valid only if all its references are valid. [`Db::register`]
//! enforces it inside one transaction, and the `refs` foreign keys back it up. The schema
//! is versioned with `PRAGMA user_version`; [`MIGRATIONS`] brings older databases up to
//! date. See store-format.md, "Database".
//!
//! The bulk view of the whole graph that the garbage collector needs (one query per table,
//! deletion in one durable transaction) is in [`graph`].

pub mod graph;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use thiserror::Error;

use crate::error_chain::Chain;
use crate::format::hash::{Hash, HashAlgo};
use crate::format::keys::Signature;
use crate::format::path_meta::{parse_signatures, PathMeta};
use crate::format::store_path::{StoreDir, StorePath};

/// Everything the store records about a valid path: its [`PathMeta`] and its registration.
/// It derefs to the `PathMeta`, so `info.path`, `info.nar_hash`, … read as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub meta: PathMeta,
    /// Seconds since the Unix epoch.
    pub registration_time: i64,
    /// Built locally (as opposed to added or substituted).
    pub ultimate: bool,
}

impl std::ops::Deref for PathInfo {
    type Target = PathMeta;
    fn deref(&self) -> &PathMeta {
        &self.meta
    }
}

impl std::ops::DerefMut for PathInfo {
    fn deref_mut(&mut self) -> &mut PathMeta {
        &mut self.meta
    }
}

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this program supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("database belongs to store dir '{found}', not '{expected}'")]
    WrongStoreDir { found: String, expected: String },
    #[error("cannot register '{path}': its reference '{reference}' is not valid")]
    MissingReference {
        path: StorePath,
        reference: StorePath,
    },
    #[error("path '{0}' is not valid")]
    NotValid(StorePath),
    #[error("corrupt database row for '{path}': {what}")]
    Corrupt { path: String, what: String },
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Schema migrations; entry `i` upgrades from `user_version` i to i+1.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE valid_paths (
    id                INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    path              TEXT UNIQUE NOT NULL,   -- base name <hash32>-<name>
    hash_part         TEXT UNIQUE NOT NULL,   -- <hash32>, for narinfo lookups
    nar_hash          TEXT NOT NULL,          -- sha256:<hex>, as Nix's db
    nar_size          INTEGER NOT NULL,
    deriver           TEXT,                   -- base name
    sigs              TEXT NOT NULL DEFAULT '', -- space separated
    ca                TEXT,
    registration_time INTEGER NOT NULL,
    ultimate          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE refs (
    referrer  INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE CASCADE,
    reference INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE RESTRICT,
    PRIMARY KEY (referrer, reference)
);
CREATE INDEX refs_reference ON refs(reference);
"#,
    r#"
-- v2: which outputs a derivation has (as Nix's DerivationOutputs): `id` is the output name,
-- `path` the output's base name, which need not be valid.
CREATE TABLE derivation_outputs (
    drv  INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE CASCADE,
    id   TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (drv, id)
);
CREATE INDEX derivation_outputs_path ON derivation_outputs(path);
"#,
];

/// An open metadata database.
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating and migrating if needed) the database of a store whose logical
    /// store dir is `store_dir`.
    pub fn open(path: &Path, store_dir: &StoreDir) -> Result<Db, DbError> {
        // Opening while other processes write can meet SQLITE_BUSY in the steps that do not
        // wait on the busy handler (switching to WAL, the first read of the WAL index):
        // retry for as long as the busy timeout would have waited.
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match Self::open_once(path, store_dir) {
                Err(DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && start.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, store_dir: &StoreDir) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        // The common case (an existing store) needs no write lock.
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_dir'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if found.as_deref() == Some(store_dir.as_str()) {
            return Ok(Db { conn });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'store_dir'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            Some(found) if found != store_dir.as_str() => {
                return Err(DbError::WrongStoreDir {
                    found,
                    expected: store_dir.to_string(),
                })
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('store_dir', ?1)",
                    [store_dir.as_str()],
                )?;
            }
        }
        tx.commit()?;
        Ok(Db { conn })
    }

    pub fn schema_version(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM valid_paths WHERE path = ?1")?
            .exists([path.as_str()])?)
    }

    /// The info of a valid path, or `None`.
    pub fn query(&self, path: &StorePath) -> Result<Option<PathInfo>, DbError> {
        self.query_where("path", path.as_str())
    }

    /// Looks a valid path up by its 32-character hash part.
    pub fn query_by_hash(&self, hash_part: &str) -> Result<Option<PathInfo>, DbError> {
        self.query_where("hash_part", hash_part)
    }

    fn query_where(&self, column: &str, value: &str) -> Result<Option<PathInfo>, DbError> {
        let sql = format!(
            "SELECT id, path, nar_hash, nar_size, deriver, sigs, ca, registration_time, ultimate \
             FROM valid_paths WHERE {column} = ?1"
        );
        let row = self
            .conn
            .prepare_cached(&sql)?
            .query_row([value], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    RawRow {
                        path: r.get(1)?,
                        nar_hash: r.get(2)?,
                        nar_size: r.get(3)?,
                        deriver: r.get(4)?,
                        sigs: r.get(5)?,
                        ca: r.get(6)?,
                        registration_time: r.get(7)?,
                        ultimate: r.get(8)?,
                    },
                ))
            })
            .optional()?;
        let Some((id, raw)) = row else {
            return Ok(None);
        };
        let references = self.references_of_id(id, &raw.path)?;
        raw.into_info(references).map(Some)
    }

    fn references_of_id(&self, id: i64, path: &str) -> Result<BTreeSet<StorePath>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT v.path FROM refs r JOIN valid_paths v ON v.id = r.reference \
             WHERE r.referrer = ?1",
        )?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
        let mut out = BTreeSet::new();
        for r in rows {
            out.insert(parse_path(path, &r?)?);
        }
        Ok(out)
    }

    /// The valid paths that refer to `path` (not including itself).
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.path FROM refs r \
             JOIN valid_paths a ON a.id = r.referrer \
             JOIN valid_paths b ON b.id = r.reference \
             WHERE b.path = ?1 AND a.id != b.id",
        )?;
        let rows = stmt.query_map([path.as_str()], |r| r.get::<_, String>(0))?;
        let mut out = BTreeSet::new();
        for r in rows {
            out.insert(parse_path(path.as_str(), &r?)?);
        }
        Ok(out)
    }

    /// The closure of `roots`: the roots and everything they reference, transitively.
    /// Every root must be valid.
    pub fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, DbError> {
        let mut out = BTreeSet::new();
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE c(id) AS ( \
               SELECT id FROM valid_paths WHERE path = ?1 \
               UNION SELECT r.reference FROM refs r JOIN c ON r.referrer = c.id) \
             SELECT v.path FROM c JOIN valid_paths v ON v.id = c.id",
        )?;
        for root in roots {
            if out.contains(root) {
                continue;
            }
            if !self.is_valid(root)? {
                return Err(DbError::NotValid(root.clone()));
            }
            let rows = stmt.query_map([root.as_str()], |r| r.get::<_, String>(0))?;
            for r in rows {
                out.insert(parse_path(root.as_str(), &r?)?);
            }
        }
        Ok(out)
    }

    /// All valid paths, sorted.
    pub fn all_valid(&self) -> Result<Vec<StorePath>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path FROM valid_paths ORDER BY path")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(parse_path("", &r?)?);
        }
        Ok(out)
    }

    /// Registers paths in one transaction. Each path's references must be valid already,
    /// be the path itself, or come earlier in `infos` (so give them in reference order).
    /// Paths that are already valid are left as they are.
    pub fn register(&mut self, infos: &[PathInfo]) -> Result<(), DbError> {
        self.register_with_outputs(infos, &[])
    }

    /// Like [`Db::register`], also recording, in the same transaction, the outputs of the
    /// derivations among `infos` (as Nix does when it registers a `.drv`).
    pub fn register_with_outputs(
        &mut self,
        infos: &[PathInfo],
        drv_outputs: &[(StorePath, BTreeMap<String, StorePath>)],
    ) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ids: HashMap<&StorePath, i64> = HashMap::new();
            let mut find = tx.prepare_cached("SELECT id FROM valid_paths WHERE path = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO valid_paths (path, hash_part, nar_hash, nar_size, deriver, sigs, \
                 ca, registration_time, ultimate) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut add_ref = tx.prepare_cached(
                "INSERT OR IGNORE INTO refs (referrer, reference) VALUES (?1, ?2)",
            )?;
            for info in infos {
                if find
                    .query_row([info.path.as_str()], |r| r.get::<_, i64>(0))
                    .optional()?
                    .is_some()
                {
                    continue;
                }
                let mut ref_ids = Vec::with_capacity(info.references.len());
                for r in info.references.iter().filter(|r| **r != info.path) {
                    let id = match ids.get(r) {
                        Some(id) => Some(*id),
                        None => find.query_row([r.as_str()], |row| row.get(0)).optional()?,
                    };
                    ref_ids.push(id.ok_or_else(|| DbError::MissingReference {
                        path: info.path.clone(),
                        reference: r.clone(),
                    })?);
                }
                insert.execute(params![
                    info.path.as_str(),
                    info.path.hash_str(),
                    format!("sha256:{}", info.nar_hash.to_hex()),
                    info.nar_size as i64,
                    info.deriver.as_ref().map(|d| d.as_str()),
                    join_sigs(&info.sigs),
                    info.ca.as_ref().map(|c| c.to_string()),
                    info.registration_time,
                    info.ultimate,
                ])?;
                let id = tx.last_insert_rowid();
                ids.insert(&info.path, id);
                if info.references.contains(&info.path) {
                    add_ref.execute([id, id])?;
                }
                for r in ref_ids {
                    add_ref.execute([id, r])?;
                }
            }
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO derivation_outputs (drv, id, path) VALUES (?1, ?2, ?3)",
            )?;
            for (drv, outputs) in drv_outputs {
                let id = match ids.get(drv) {
                    Some(id) => *id,
                    None => find
                        .query_row([drv.as_str()], |r| r.get(0))
                        .optional()?
                        .ok_or_else(|| DbError::NotValid(drv.clone()))?,
                };
                for (name, path) in outputs {
                    put.execute(params![id, name, path.as_str()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds signatures to a valid path (keeping the existing ones).
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: impl IntoIterator<Item = Signature>,
    ) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row(
                "SELECT sigs FROM valid_paths WHERE path = ?1",
                [path.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let current = current.ok_or_else(|| DbError::NotValid(path.clone()))?;
        let mut all = split_sigs(&current);
        all.extend(sigs);
        tx.execute(
            "UPDATE valid_paths SET sigs = ?1 WHERE path = ?2",
            params![join_sigs(&all), path.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl Db {
    /// Records the outputs (name → path) of a valid derivation, replacing what was
    /// recorded for the same output names. The outputs need not be valid.
    pub fn register_derivation_outputs(
        &mut self,
        drv: &StorePath,
        outputs: &BTreeMap<String, StorePath>,
    ) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: i64 = tx
            .query_row(
                "SELECT id FROM valid_paths WHERE path = ?1",
                [drv.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| DbError::NotValid(drv.clone()))?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO derivation_outputs (drv, id, path) VALUES (?1, ?2, ?3)",
            )?;
            for (name, path) in outputs {
                put.execute(params![id, name, path.as_str()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The recorded outputs (name → path) of a valid derivation; empty if none or if the
    /// derivation is not valid.
    pub fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.id, o.path FROM derivation_outputs o \
             JOIN valid_paths v ON v.id = o.drv WHERE v.path = ?1",
        )?;
        let rows = stmt.query_map([drv.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = BTreeMap::new();
        for r in rows {
            let (name, path) = r?;
            out.insert(name, parse_path(drv.as_str(), &path)?);
        }
        Ok(out)
    }

    /// The valid derivations that have `output` among their recorded outputs.
    pub fn valid_derivers(&self, output: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT v.path FROM derivation_outputs o \
             JOIN valid_paths v ON v.id = o.drv WHERE o.path = ?1",
        )?;
        let rows = stmt.query_map([output.as_str()], |r| r.get::<_, String>(0))?;
        let mut out = BTreeSet::new();
        for r in rows {
            out.insert(parse_path(output.as_str(), &r?)?);
        }
        Ok(out)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let supported = MIGRATIONS.len() as i64;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == supported {
        return Ok(()); // up to date: no exclusive lock needed
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > supported {
        return Err(DbError::TooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn join_sigs(sigs: &BTreeSet<Signature>) -> String {
    sigs.iter()
        .map(Signature::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The signatures of a `sigs` column. A word that is not a well-formed signature is
/// skipped, as an import skips it ([`parse_signatures`]).
fn split_sigs(s: &str) -> BTreeSet<Signature> {
    parse_signatures(s.split(' '))
}

fn parse_path(context: &str, s: &str) -> Result<StorePath, DbError> {
    s.parse().map_err(|e| DbError::Corrupt {
        path: context.to_owned(),
        what: format!("bad store path '{s}': {e}"),
    })
}

struct RawRow {
    path: String,
    nar_hash: String,
    nar_size: i64,
    deriver: Option<String>,
    sigs: String,
    ca: Option<String>,
    registration_time: i64,
    ultimate: bool,
}

impl RawRow {
    fn into_info(self, references: BTreeSet<StorePath>) -> Result<PathInfo, DbError> {
        let corrupt = |what: String| DbError::Corrupt {
            path: self.path.clone(),
            what,
        };
        let nar_hash = Hash::parse_any(&self.nar_hash, Some(HashAlgo::Sha256))
            .map_err(|e| corrupt(e.to_string()))?;
        let ca = match &self.ca {
            Some(c) => Some(
                c.parse()
                    .map_err(|e: crate::format::ca::CaError| corrupt(Chain(&e).to_string()))?,
            ),
            None => None,
        };
        let deriver = match &self.deriver {
            Some(d) => Some(parse_path(&self.path, d)?),
            None => None,
        };
        Ok(PathInfo {
            meta: PathMeta {
                path: parse_path(&self.path, &self.path)?,
                nar_hash,
                nar_size: u64::try_from(self.nar_size).map_err(|e| corrupt(e.to_string()))?,
                references,
                deriver,
                sigs: split_sigs(&self.sigs),
                ca,
            },
            registration_time: self.registration_time,
            ultimate: self.ultimate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str, n: u8) -> StorePath {
        let h = crate::format::store_path::StorePathHash::new([n; 20]);
        StorePath::from_parts(h, &name.parse().unwrap())
    }

    fn info(p: &StorePath, refs: &[&StorePath]) -> PathInfo {
        PathInfo {
            meta: PathMeta {
                path: p.clone(),
                nar_hash: Hash::of(HashAlgo::Sha256, p.as_str().as_bytes()),
                nar_size: 96,
                references: refs.iter().map(|r| (*r).clone()).collect(),
                deriver: None,
                sigs: BTreeSet::new(),
                ca: None,
            },
            registration_time: 1,
            ultimate: false,
        }
    }

    fn open() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(
            &d.path().join("db.sqlite"),
            &StoreDir::new("/ix/store").unwrap(),
        )
        .unwrap();
        (d, db)
    }

    #[test]
    fn register_query_closure() {
        let (_d, mut db) = open();
        let (a, b, c) = (sp("a", 1), sp("b", 2), sp("c", 3));
        let infos = [info(&a, &[]), info(&b, &[&a, &b]), info(&c, &[&b])];
        db.register(&infos).unwrap();
        assert_eq!(db.query(&b).unwrap().unwrap(), infos[1]);
        assert_eq!(db.query_by_hash(c.hash_str()).unwrap().unwrap(), infos[2]);
        assert_eq!(db.closure([&c]).unwrap().len(), 3);
        assert_eq!(db.referrers(&a).unwrap(), [b.clone()].into());
        assert_eq!(db.referrers(&b).unwrap(), [c.clone()].into());
        assert_eq!(db.all_valid().unwrap().len(), 3);
        let sig = |name: &str| {
            let key = crate::format::keys::SecretKey::from_seed(name, &[7; 32]).unwrap();
            key.sign("fingerprint")
        };
        db.add_signatures(&a, [sig("k")]).unwrap();
        db.add_signatures(&a, [sig("k"), sig("j")]).unwrap();
        assert_eq!(db.query(&a).unwrap().unwrap().sigs.len(), 2);
    }

    #[test]
    fn refuses_dangling_references_atomically() {
        let (_d, mut db) = open();
        let (a, b, c) = (sp("a", 1), sp("b", 2), sp("c", 3));
        let err = db.register(&[info(&a, &[]), info(&c, &[&b])]).unwrap_err();
        assert!(matches!(err, DbError::MissingReference { .. }), "{err}");
        assert!(!db.is_valid(&a).unwrap(), "the whole batch must roll back");
    }

    #[test]
    fn derivation_outputs_follow_the_derivation() {
        let (_d, mut db) = open();
        let (drv, out, dev) = (sp("x.drv", 1), sp("x", 2), sp("x-dev", 3));
        let outputs: BTreeMap<String, StorePath> = [
            ("out".to_owned(), out.clone()),
            ("dev".to_owned(), dev.clone()),
        ]
        .into();
        assert!(matches!(
            db.register_derivation_outputs(&drv, &outputs),
            Err(DbError::NotValid(_))
        ));
        db.register(&[info(&drv, &[]), info(&out, &[])]).unwrap();
        db.register_derivation_outputs(&drv, &outputs).unwrap();
        assert_eq!(db.derivation_outputs(&drv).unwrap(), outputs);
        assert_eq!(db.valid_derivers(&dev).unwrap(), [drv.clone()].into());
        assert!(db.valid_derivers(&drv).unwrap().is_empty());
    }

    #[test]
    fn store_dir_is_checked_and_reopen_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db.sqlite");
        Db::open(&p, &StoreDir::new("/ix/store").unwrap()).unwrap();
        let db = Db::open(&p, &StoreDir::new("/ix/store").unwrap()).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(matches!(
            Db::open(&p, &StoreDir::new("/nix/store").unwrap()),
            Err(DbError::WrongStoreDir { .. })
        ));
    }
}
