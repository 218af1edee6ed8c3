//! The local store: a logical store dir, a physical directory of read-only trees and a
//! SQLite database of what is valid. [`LocalStore`] is the facade the upper layers use.
//!
//! Every install follows one protocol (see [`ingest`]): build in a temp dir inside the
//! store's filesystem, check size and hash, canonicalise, `syncfs`, rename into place,
//! fsync the store dir, then register in one transaction whose references are already
//! valid. A crash at any point leaves either nothing or a stray directory that is not
//! registered (removed by the next install of that path, or a temp dir removed at the next
//! open). See store-format.md, "On-disk layout".
//!
//! # Entry points
//!
//! What [`LocalStore`] offers, by task. Path metadata is one type,
//! [`crate::format::path_meta::PathMeta`]: a [`NarImport`] is one, and a [`PathInfo`]
//! holds one plus its registration. Signatures are typed
//! ([`crate::format::keys::Signature`]) and stored as text. Variants of one operation are
//! one method with an options struct (target shape; see the table's last column).
//!
//! | Task | Methods | Visibility |
//! |---|---|---|
//! | open, describe | `open`, `layout`, `store_dir`, `print_path`, `parse_user_path`, `schema_version` | pub |
//! | query | `is_valid`, `query`, `query_valid`, `query_by_hash`, `closure`, `all_valid`, `derivation_outputs`, `valid_derivers` | pub |
//! | read | `dump_path`, `read_derivation`, `verify_path` | pub |
//! | add one path | `add_tree`, `add_text`, `import_nar(meta, nar)` | pub |
//! | stage, then commit in batches (substitute, build) | `stage_nar(meta, StageOptions, open)`, `stage_nar_locked`, `stage_locked`, `try_lock_for_install`, `lock_for_install`, `commit_staged`, `flush_ahead` | pub(crate) |
//! | generic staging | `stage(info, StageOptions, build)` | store only |
//! | metadata | `add_signatures`, `register_derivation_outputs` | pub |
//! | gc | `gc_analyse`, `collect_garbage`, `delete_paths`, `gc_roots`, `add_temp_root(s)`, `add_indirect_root` | pub |
//!
//! `StageOptions` (default: no wait notifications) replaces the `stage_nar_with` /
//! `stage_nar_noting_waits` and `stage` / `stage_noting_waits` pairs; opening the NAR
//! stream late is the one way to stage, and `import_nar` takes a stream at hand.

pub mod db;
pub mod gc;
pub mod ingest;
pub mod layout;
pub mod lock;
pub mod logs;
pub mod path_lock;
pub mod roots;
pub mod stage;
mod text;
mod trash;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

use crate::error_chain::Chain;
use crate::format::hash::{Hash, HashAlgo, HashSink};
use crate::format::store_path::{StoreDir, StorePath, StorePathError};
use crate::fsnar;
pub use db::{Db, DbError, PathInfo};
pub use gc::{GcError, GcOptions, GcReport};
pub use ingest::{AddOutcome, ImportError, NarImport};
pub use layout::Layout;
pub use stage::{InstallLock, Stage, StageOptions, Staged};

/// What can go wrong in the local store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create the store at {path}")]
    NotWritable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Path(#[from] StorePathError),
    #[error("{context}")]
    Nar {
        context: String,
        #[source]
        source: fsnar::FsNarError,
    },
    #[error("hash mismatch importing '{path}': expected {expected}, got {got}")]
    HashMismatch {
        path: String,
        expected: String,
        got: String,
    },
    #[error("size mismatch importing '{path}': expected {expected} bytes, got {got}")]
    SizeMismatch {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("cannot import '{path}': references not valid in this store: {}", missing.join(", "))]
    MissingReferences { path: String, missing: Vec<String> },
    #[error("content address mismatch importing '{path}': {what}")]
    CaMismatch { path: String, what: String },
    #[error("'{0}' changed while it was being added")]
    SourceChanged(String),
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error("invalid derivation '{path}'")]
    InvalidDerivation {
        path: String,
        #[source]
        source: crate::format::derivation::DerivationError,
    },
    #[error(transparent)]
    Roots(#[from] roots::RootsError),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The outcome of checking one valid path's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Missing,
    Corrupt {
        expected: Hash,
        got: Hash,
    },
    /// The tree cannot even be serialised (e.g. a FIFO appeared in it).
    Unreadable(String),
}

/// An open local store.
pub struct LocalStore {
    layout: Layout,
    db: Mutex<Db>,
    staging: stage::StagingSlot,
    /// This process's temp roots (see [`roots`]).
    temp_roots: roots::TempRoots,
    /// Install locks of store paths (see [`path_lock`]).
    path_locks: Arc<path_lock::PathLocks>,
}

impl LocalStore {
    /// Opens the store, creating its directories and database if needed, and removes temp
    /// dirs and temp files left by processes that died.
    pub fn open(layout: Layout) -> Result<Self, StoreError> {
        layout.create().map_err(|source| StoreError::NotWritable {
            path: layout.real_store().display().to_string(),
            source,
        })?;
        let db = Db::open(&layout.db_path(), layout.store_dir())?;
        let removed = lock::clean_stale_temp_dirs(&layout)
            .map_err(|e| StoreError::io("cleaning stale temp dirs", e))?;
        if removed > 0 {
            tracing::info!("removed {removed} temp dirs left by interrupted runs");
        }
        crate::temp_file::sweep_and_log(&layout.temp_files_dir());
        let path_locks =
            path_lock::PathLocks::open(&layout.locks_dir().join(path_lock::PATH_LOCKS_FILE))
                .map_err(|e| StoreError::io("cannot open the path locks", e))?;
        Ok(LocalStore {
            layout,
            db: Mutex::new(db),
            staging: Default::default(),
            temp_roots: roots::TempRoots::default(),
            path_locks,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store_dir(&self) -> &StoreDir {
        self.layout.store_dir()
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave the connection inconsistent:
        // SQLite rolls back unfinished transactions.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The full logical path of a store path.
    pub fn print_path(&self, path: &StorePath) -> String {
        self.store_dir().display_path(path)
    }

    /// Parses a path given by a user: a logical store path (optionally with a sub path,
    /// which is dropped), the same path under the physical store directory, or a symlink
    /// (like a `result` link) to either.
    pub fn parse_user_path(&self, arg: &str) -> Result<StorePath, StoreError> {
        match self.parse_user_path_direct(arg) {
            Ok(p) => Ok(p),
            Err(e) => {
                // A link into the store (like a `result` link): follow it, a few levels deep.
                let mut current = std::path::PathBuf::from(arg);
                for _ in 0..8 {
                    let Ok(target) = std::fs::read_link(&current) else {
                        break;
                    };
                    current = match current.parent() {
                        Some(dir) if target.is_relative() => dir.join(target),
                        _ => target,
                    };
                    if let Some(s) = current.to_str() {
                        if let Ok(p) = self.parse_user_path_direct(s) {
                            return Ok(p);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    fn parse_user_path_direct(&self, arg: &str) -> Result<StorePath, StoreError> {
        if let Ok((p, _)) = self.store_dir().parse_path_prefix(arg) {
            return Ok(p);
        }
        let real = self.layout.real_store().to_string_lossy();
        if let Some(rest) = arg.strip_prefix(real.as_ref()) {
            let logical = format!("{}{rest}", self.store_dir());
            if let Ok((p, _)) = self.store_dir().parse_path_prefix(&logical) {
                return Ok(p);
            }
        }
        Ok(self.store_dir().parse_path_prefix(arg)?.0)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.db().schema_version()?)
    }

    pub fn is_valid(&self, path: &StorePath) -> Result<bool, StoreError> {
        Ok(self.db().is_valid(path)?)
    }

    pub fn query(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        Ok(self.db().query(path)?)
    }

    /// The info of a path that must be valid.
    pub fn query_valid(&self, path: &StorePath) -> Result<PathInfo, StoreError> {
        self.query(path)?
            .ok_or_else(|| StoreError::NotValid(self.print_path(path)))
    }

    pub fn query_by_hash(&self, hash_part: &str) -> Result<Option<PathInfo>, StoreError> {
        Ok(self.db().query_by_hash(hash_part)?)
    }

    pub fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.db().closure(roots).map_err(|e| match e {
            DbError::NotValid(p) => StoreError::NotValid(self.print_path(&p)),
            e => e.into(),
        })
    }

    pub fn all_valid(&self) -> Result<Vec<StorePath>, StoreError> {
        Ok(self.db().all_valid()?)
    }

    pub fn add_signatures(
        &self,
        path: &StorePath,
        sigs: impl IntoIterator<Item = crate::format::keys::Signature>,
    ) -> Result<(), StoreError> {
        self.db().add_signatures(path, sigs).map_err(|e| match e {
            DbError::NotValid(p) => StoreError::NotValid(self.print_path(&p)),
            e => e.into(),
        })
    }

    /// Records the outputs (name → path) of a valid derivation (see [`Db`]). Nothing is
    /// written when they are recorded already (as they are for every `.drv` registered
    /// since the commit records them, see `LocalStore::commit_staged`).
    pub fn register_derivation_outputs(
        &self,
        drv: &StorePath,
        outputs: &std::collections::BTreeMap<String, StorePath>,
    ) -> Result<(), StoreError> {
        let recorded = self.derivation_outputs(drv)?;
        if outputs.iter().all(|(o, p)| recorded.get(o) == Some(p)) {
            return Ok(());
        }
        self.db()
            .register_derivation_outputs(drv, outputs)
            .map_err(|e| match e {
                DbError::NotValid(p) => StoreError::NotValid(self.print_path(&p)),
                e => e.into(),
            })
    }

    pub fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<std::collections::BTreeMap<String, StorePath>, StoreError> {
        Ok(self.db().derivation_outputs(drv)?)
    }

    pub fn valid_derivers(&self, output: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.db().valid_derivers(output)?)
    }

    /// Writes the NAR of a valid path.
    pub fn dump_path(&self, path: &StorePath, out: &mut impl Write) -> Result<u64, StoreError> {
        self.query_valid(path)?;
        let real = self.layout.real_path(path);
        fsnar::dump(&real, out).map_err(|source| StoreError::Nar {
            context: format!("cannot serialise '{}'", self.print_path(path)),
            source,
        })
    }

    /// Recomputes the NAR hash of a valid path and compares it with the recorded one.
    pub fn verify_path(&self, path: &StorePath) -> Result<Verdict, StoreError> {
        let info = self.query_valid(path)?;
        let real = self.layout.real_path(path);
        match real.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Missing),
            Err(e) => return Err(StoreError::io(format!("{}", real.display()), e)),
            Ok(_) => {}
        }
        Ok(match hash_tree(&real) {
            Ok((got, size)) if got == info.nar_hash && size == info.nar_size => Verdict::Ok,
            Ok((got, _)) => Verdict::Corrupt {
                expected: info.nar_hash,
                got,
            },
            Err(e) => Verdict::Unreadable(Chain(&e).to_string()),
        })
    }
}

/// The sha256 NAR hash and NAR size of a tree on disk.
pub fn hash_tree(path: &Path) -> Result<(Hash, u64), fsnar::FsNarError> {
    let mut sink = HashSink::new(HashAlgo::Sha256);
    fsnar::dump(path, &mut sink)?;
    Ok(sink.finish())
}
