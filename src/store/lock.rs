//! Inter-process locks (`flock` on small files in the state dir) and the temp dirs that
//! installs build in.
//!
//! * Per-path install locks are not files: see [`super::path_lock`].
//! * Temp dirs: `<store>/.tmp-<pid>-<n>-<nanos>/`, each guarded by `temproots/<same>.lock`,
//!   which its owner locks *before* creating the dir and holds until the dir is gone. A temp
//!   dir whose lock can be taken belongs to a dead process and is removed by
//!   [`clean_stale_temp_dirs`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};

use super::layout::{annotate, Layout};
use crate::fsnar;

/// An exclusive `flock` on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        loop {
            let file = open_lock_file(path)?;
            flock(&file, FlockOperation::LockExclusive).map_err(|e| annotate(e.into(), path))?;
            if still_linked(&file, path)? {
                return Ok(FileLock {
                    file,
                    path: path.to_owned(),
                });
            }
        }
    }

    /// Takes the lock if nobody holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(annotate(e.into(), path)),
        }
        if !still_linked(&file, path)? {
            return Ok(None);
        }
        Ok(Some(FileLock {
            file,
            path: path.to_owned(),
        }))
    }

    /// Unlinks the lock file while still holding the lock, then releases it. Waiters
    /// notice that the file they locked is gone and retry on a fresh one.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_file(&self.path).or_else(ignore_not_found)?;
        drop(self.file);
        Ok(())
    }
}

/// Opens (creating it if needed) a lock file, mode 0600, close-on-exec.
pub(super) fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| annotate(e, path))
}

/// Whether the locked file is still the one at `path` (it may have been unlinked by the
/// previous holder between our open and our lock).
fn still_linked(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) => Ok(m.ino() == ours.ino() && m.dev() == ours.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(annotate(e, path)),
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

const TEMP_PREFIX: &str = ".tmp-";

/// A private temp dir inside the physical store dir (so renames out of it are atomic),
/// removed with everything in it on drop unless [`TempDir::keep`] was called.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    lock: Option<FileLock>,
    kept: bool,
}

impl TempDir {
    pub fn new(layout: &Layout) -> io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{TEMP_PREFIX}{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lock = FileLock::acquire(&layout.temp_locks_dir().join(format!("{name}.lock")))?;
        let path = layout.real_store().join(&name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| annotate(e, &path))?;
        Ok(TempDir {
            path,
            lock: Some(lock),
            kept: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the dir and what is in it (for inspection, e.g. a failed build's dir): it is
    /// no longer removed on drop nor by the stale temp dir cleanup. Returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(lock) = self.lock.take() {
            let _ = lock.remove();
        }
        self.kept = true;
        self.path.clone()
    }
}

use std::os::unix::fs::DirBuilderExt;

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = fsnar::make_writable_and_remove(&self.path) {
            tracing::warn!("cannot remove temp dir {}: {e}", self.path.display());
            return; // keep the lock file so the next run retries
        }
        if let Some(lock) = self.lock.take() {
            let _ = lock.remove();
        }
    }
}

/// Removes temp dirs left behind by processes that died. Returns how many were removed.
///
/// Every temp dir has a lock file of the same name in `temproots/`, created and locked before
/// the dir and removed after it, so scanning that small directory finds them all without
/// listing the (large) store dir.
pub fn clean_stale_temp_dirs(layout: &Layout) -> io::Result<usize> {
    let mut removed = 0;
    let locks_dir = layout.temp_locks_dir();
    let entries = match fs::read_dir(&locks_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(annotate(e, &locks_dir)),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .filter(|n| n.starts_with(TEMP_PREFIX) && !n.contains('/'))
        else {
            continue;
        };
        let Some(lock) = FileLock::try_acquire(&entry.path())? else {
            continue; // its owner is alive
        };
        let dir = layout.real_store().join(name);
        if dir.symlink_metadata().is_ok() {
            fsnar::make_writable_and_remove(&dir).map_err(|e| annotate(e, &dir))?;
            tracing::debug!("removed stale temp dir {}", dir.display());
            removed += 1;
        }
        lock.remove()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::store_path::StoreDir;

    #[test]
    fn temp_dirs_are_removed_and_stale_ones_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(StoreDir::new("/ix/store").unwrap(), Some(root.path()));
        layout.create().unwrap();
        let t = TempDir::new(&layout).unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let p = t.path().to_owned();
        // A live owner's dir is not touched.
        assert_eq!(clean_stale_temp_dirs(&layout).unwrap(), 0);
        drop(t);
        assert!(!p.exists());
        // A dead owner's dir (its lock file exists, but nobody holds it) is removed.
        let stale = layout.real_store().join(".tmp-999999-0-0");
        fs::create_dir(&stale).unwrap();
        fs::write(layout.temp_locks_dir().join(".tmp-999999-0-0.lock"), b"").unwrap();
        fs::write(stale.join("f"), b"x").unwrap();
        assert_eq!(clean_stale_temp_dirs(&layout).unwrap(), 1);
        assert!(!stale.exists());
    }

    #[test]
    fn try_acquire_sees_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = FileLock::acquire(&p).unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        held.remove().unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
    }
}
