//! Size bounds for the server's own directories (`serve/nar-cache/`, `serve/aliases/`):
//! each has a budget in bytes, and an addition that takes it over removes the least
//! recently used files until the directory is back under [`LOW_MARK`] of its budget.
//!
//! * "Used" is the file's modification time: a file is written with it set to now, and
//!   every hit sets it to now again (explicitly, so it has full precision). The order
//!   survives restarts and needs no index.
//! * A file is charged its length rounded up to [`BLOCK`] (what a small file takes on
//!   disk); temp files (`.tmp*`) are not charged (the server sweeps those of dead writers).
//! * Eviction unlinks: a download that has the file open keeps reading it to its end.
//! * The running total is kept in memory (read at start, corrected by every eviction's
//!   scan), so an addition costs no directory scan until the budget is exceeded.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Default budget of `serve/nar-cache/`, in bytes.
pub const DEFAULT_NAR_CACHE_SIZE: u64 = 8 << 30;
/// Default budget of `serve/aliases/`, in bytes (65,536 aliases of one block).
pub const DEFAULT_ALIAS_CACHE_SIZE: u64 = 256 << 20;
/// The unit files are charged in.
pub const BLOCK: u64 = 4096;
/// Eviction stops at this fraction of the budget, so that the next additions do not each
/// need a scan.
pub const LOW_MARK: f64 = 15.0 / 16.0;

/// What a directory holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// A directory with a size budget.
pub(crate) struct Budget {
    dir: PathBuf,
    limit: u64,
    used: AtomicU64,
    /// What the directory held when the budget was opened.
    opened: Usage,
    /// Held while evicting: one eviction at a time.
    evicting: Mutex<()>,
}

/// The charge of a file of `len` bytes.
pub(crate) fn charge(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// What `dir` holds (blocking; a missing directory holds nothing).
pub fn usage(dir: &Path) -> Usage {
    entries(dir)
        .iter()
        .fold(Usage::default(), |u, (_, charge, _)| Usage {
            bytes: u.bytes + charge,
            files: u.files + 1,
        })
}

/// The charged files of `dir`: path, charge, last use.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp"))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            Some((e.path(), charge(m.len()), used))
        })
        .collect()
}

/// Marks an open file as used now (best effort: a failure only makes it look older).
pub(crate) fn touch(file: &File) {
    if let Err(e) = file.set_modified(SystemTime::now()) {
        tracing::debug!("cannot mark a cached file as used: {e}");
    }
}

impl Budget {
    /// The budget of `dir` (blocking: reads what it holds).
    pub(crate) fn open(dir: PathBuf, limit: u64) -> Budget {
        let opened = usage(&dir);
        Budget {
            dir,
            limit,
            used: AtomicU64::new(opened.bytes),
            opened,
            evicting: Mutex::new(()),
        }
    }

    /// What the directory held when the budget was opened (no scan).
    pub(crate) fn opened(&self) -> Usage {
        self.opened
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a file of `len` bytes may be kept at all.
    pub(crate) fn admits(&self, len: u64) -> bool {
        charge(len) <= self.limit
    }

    /// Records a file of `len` bytes just moved into place (blocking: may evict).
    pub(crate) fn added(&self, len: u64) {
        let used = self.used.fetch_add(charge(len), Ordering::Relaxed) + charge(len);
        if used > self.limit {
            self.evict();
        }
    }

    /// Removes the least recently used files until under the low mark.
    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else {
            return; // another thread is at it
        };
        let mut files = entries(&self.dir);
        files.sort_by_key(|(_, _, used)| *used);
        let mut total: u64 = files.iter().map(|(_, c, _)| c).sum();
        let low = (self.limit as f64 * LOW_MARK) as u64;
        let (mut removed, mut freed) = (0u64, 0u64);
        for (path, charge, _) in files {
            if total <= low {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    total -= charge;
                    removed += 1;
                    freed += charge;
                }
                Err(e) => tracing::warn!("cannot evict '{}': {e}", path.display()),
            }
        }
        self.used.store(total, Ordering::Relaxed);
        tracing::info!(
            "{}: evicted {removed} least recently used files ({freed} bytes); {total} of {} bytes used",
            self.dir.display(),
            self.limit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(b: &Budget, name: &str, len: usize, age_s: u64) {
        let p = b.dir().join(name);
        fs::write(&p, vec![7u8; len]).unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        b.added(len as u64);
    }

    #[test]
    fn least_recently_used_go_first_and_open_files_stay_readable() {
        let d = tempfile::tempdir().unwrap();
        let b = Budget::open(d.path().to_owned(), 4 * BLOCK);
        put(&b, "old", 10, 300);
        put(&b, "mid", 10, 200);
        put(&b, "new", 10, 100);
        // "old" is read now: it becomes the most recently used.
        touch(&File::open(d.path().join("old")).unwrap());
        // "mid" is being downloaded while it is evicted.
        let mut reader = File::open(d.path().join("mid")).unwrap();
        put(&b, "fresh", BLOCK as usize, 0);
        assert_eq!(
            usage(d.path()).files,
            4,
            "within the budget: nothing evicted"
        );
        put(&b, "last", 1, 0);
        let left: Vec<_> = ["old", "mid", "new", "fresh", "last"]
            .into_iter()
            .filter(|n| d.path().join(n).exists())
            .collect();
        // 5 blocks > 4: down to at most 15/16 of 4 blocks, oldest use first.
        assert_eq!(left, ["old", "fresh", "last"]);
        assert_eq!(usage(d.path()).bytes, 3 * BLOCK);
        assert_eq!(b.used.load(Ordering::Relaxed), 3 * BLOCK);
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut s).unwrap();
        assert_eq!(s, [7u8; 10], "an evicted file stays readable while open");
        assert!(!b.admits(4 * BLOCK + 1) && b.admits(4 * BLOCK));
    }
}
