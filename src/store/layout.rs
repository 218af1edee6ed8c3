//! Where a store lives on disk: the logical store dir (part of every hash), the physical
//! directory that holds the paths, and the state dir (database, locks, temp-dir locks).
//!
//! ```text
//! <root>/<store-dir>/                  store paths, read-only (0555 dirs, 0444/0555 files)
//! <root>/<store-dir>/.tmp-<pid>-<n>/   temp dirs for installs in progress (same filesystem)
//! <root>/ix/var/db/store.sqlite        metadata (WAL)
//! <root>/ix/var/locks/paths.lock       per-path install locks (a byte each, OFD locks)
//! <root>/ix/var/temproots/<tmp>.lock   held by the owner of each temp dir while it lives
//! <root>/ix/var/temproots/<id>.roots   temp roots of one live process (see `roots`)
//! <root>/ix/var/tmp/.tmp-<boot>-<pid>-…  temp files of commands, locked by their owner
//! <root>/ix/var/gcroots/               GC roots: symlinks (indirect ones in `auto/`)
//! <root>/ix/var/gc.lock                taken exclusively by the collector, shared to add roots
//! <root>/<store-dir>/.gc-trash/        dead paths renamed aside, being removed
//! ```
//! Without a root, `<root>` is empty: the store dir is used as is and state is `/ix/var`.
//! See store-format.md, "On-disk layout".

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::format::store_path::{StoreDir, StorePath};

/// The default logical store dir. Ten bytes like `/nix/store`, so paths have the same
/// length as Nix's, but a top-level directory of our own so we never share `/nix/store`
/// with a Nix installation by accident.
pub const DEFAULT_STORE_DIR: &str = "/ix/store";
/// The default state dir, relative to the root (or `/` without one).
pub const DEFAULT_STATE_DIR: &str = "/ix/var";

/// The resolved locations of one store.
#[derive(Debug, Clone)]
pub struct Layout {
    store_dir: StoreDir,
    real_store: PathBuf,
    state_dir: PathBuf,
}

impl Layout {
    /// A store whose logical dir is `store_dir`, placed under `root` when given (like Nix's
    /// chroot stores: the physical store is `<root>/<store_dir>`).
    pub fn new(store_dir: StoreDir, root: Option<&Path>) -> Self {
        let rooted = |p: &str| match root {
            Some(r) => r.join(p.trim_start_matches('/')),
            None => PathBuf::from(p),
        };
        Layout {
            real_store: rooted(store_dir.as_str()),
            state_dir: rooted(DEFAULT_STATE_DIR),
            store_dir,
        }
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The physical directory holding the store paths.
    pub fn real_store(&self) -> &Path {
        &self.real_store
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("db").join("store.sqlite")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir.join("locks")
    }

    pub fn temp_locks_dir(&self) -> PathBuf {
        self.state_dir.join("temproots")
    }

    /// Temp files of commands (e.g. compressed NARs being pushed), each locked by its
    /// owner: see [`crate::temp_file`].
    pub fn temp_files_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }

    /// GC roots: symlinks to store paths, or (in `auto/`) to links that point into the store.
    pub fn gc_roots_dir(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    /// The collector's global lock (exclusive while collecting, shared to add temp roots).
    pub fn gc_lock_path(&self) -> PathBuf {
        self.state_dir.join("gc.lock")
    }

    /// Where the collector renames dead paths before removing them; inside the physical
    /// store dir so the rename is atomic. Its name can never be a store path's.
    pub fn trash_dir(&self) -> PathBuf {
        self.real_store.join(".gc-trash")
    }

    /// The physical location of a store path.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.real_store.join(path.as_str())
    }

    /// Creates every directory the store needs. The store dir itself stays writable by
    /// its owner (entries are added by rename); what is inside it is read-only.
    pub fn create(&self) -> io::Result<()> {
        for dir in [
            self.real_store.clone(),
            self.db_path()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            self.locks_dir(),
            self.temp_locks_dir(),
            self.gc_roots_dir().join("auto"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| annotate(e, &dir))?;
        }
        Ok(())
    }
}

/// Adds the path to an I/O error's message, keeping its kind.
pub fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooted_layout() {
        let l = Layout::new(
            StoreDir::new("/nix/store").unwrap(),
            Some(Path::new("/tmp/r")),
        );
        assert_eq!(l.real_store(), Path::new("/tmp/r/nix/store"));
        assert_eq!(l.db_path(), Path::new("/tmp/r/ix/var/db/store.sqlite"));
        let l = Layout::new(StoreDir::new(DEFAULT_STORE_DIR).unwrap(), None);
        assert_eq!(l.real_store(), Path::new("/ix/store"));
        assert_eq!(l.state_dir(), Path::new("/ix/var"));
    }
}
