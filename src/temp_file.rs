//! Temp files whose owner can be told alive or dead, and the sweeper that reclaims the
//! ones a crash left behind: the push's compressed NARs in `<state>/tmp`, objects being
//! written into a `file://` cache.
//!
//! A temp file is named `.tmp-<boot>-<pid>-<nanos>-<n>`, where `<boot>` is the first 16
//! hex digits of the kernel's boot id, and its owner holds an exclusive `flock` on it from
//! before anyone can see it as its own until after it is renamed or removed. The lock,
//! not the pid, says whether the owner lives: it is released by the kernel when the
//! owner dies, so pid reuse cannot fool it. A lock only means something to the kernel
//! that holds it (an NFS mount without lock support keeps locks local), so:
//!
//! * a temp file of this boot (same kernel) is removed as soon as its lock can be taken;
//! * any other `.tmp*` file (another machine on a shared filesystem, an earlier boot, an
//!   older naming) is removed only once it has not been modified for `stale_after` and its
//!   lock, if the filesystem honours it, can be taken. A writer modifies its file all the
//!   time it writes, so only a writer stopped that long can lose its file, and it then
//!   fails on its rename with one error; nothing half-written becomes visible.
//!
//! See store-format.md, "Temp data".

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};

/// How long a temp file that this kernel cannot vouch for must have been left unmodified
/// before a sweep removes it. Long enough for clock skew between NFS clients and any
/// pause of a live writer we care about; short enough that leftovers stay bounded.
pub const FOREIGN_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Prefix of every temp file name (older versions wrote `.tmp<random>` too).
const PREFIX: &str = ".tmp";

/// Length of the boot tag in names.
const BOOT_TAG_LEN: usize = 16;

/// Tries per [`TempFile::create_in`] before giving up on finding a free name.
const MAX_NAME_TRIES: u32 = 1000;

/// This boot's tag: the first hex digits of `/proc/sys/kernel/random/boot_id`, or `None`
/// where it cannot be read (then no temp file is ever taken for one of this boot).
fn boot_tag() -> Option<&'static str> {
    static TAG: OnceLock<Option<String>> = OnceLock::new();
    TAG.get_or_init(|| {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let hex: String = id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(BOOT_TAG_LEN)
            .collect();
        (hex.len() == BOOT_TAG_LEN).then_some(hex)
    })
    .as_deref()
}

/// The boot tag in a temp file's name, if it has one.
fn boot_of(name: &str) -> Option<&str> {
    let tag = name
        .strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()?;
    (tag.len() == BOOT_TAG_LEN && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// A locked temp file, removed on drop unless [`TempFile::persist`]ed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    /// Holds the lock; `None` once persisted.
    file: Option<File>,
}

impl TempFile {
    /// Creates a new, empty temp file in `dir` with `mode`, locked by this process.
    pub fn create_in(dir: &Path, mode: u32) -> io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let boot = boot_tag().unwrap_or("0");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for _ in 0..MAX_NAME_TRIES {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "{PREFIX}-{boot}-{}-{nanos:x}-{n}",
                std::process::id()
            ));
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(annotate(e, &path)),
            };
            // A sweeper may take the file for dead between its creation and our lock; it
            // unlinks it while holding the lock, so once we hold it, the name is ours if
            // it still leads to our file.
            match flock(&file, FlockOperation::LockExclusive) {
                Ok(()) => {}
                // A filesystem without locks: a sweep cannot lock the file either, and so
                // never removes it (see `reclaim`).
                Err(rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(annotate(e.into(), &path)),
            }
            if same_file(&file, &path)? {
                return Ok(TempFile {
                    path,
                    file: Some(file),
                });
            }
        }
        Err(annotate(
            io::Error::new(io::ErrorKind::AlreadyExists, "no free temp file name"),
            dir,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (read and write).
    pub fn as_file(&self) -> &File {
        self.file
            .as_ref()
            .expect("a temp file is open until persisted")
    }

    /// Renames the file to `dest`, then releases the lock (so no sweep can take it for
    /// dead before it is gone from its temp name).
    pub fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.file = None;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!("cannot remove temp file {}: {e}", self.path.display());
            }
            drop(file);
        }
    }
}

/// Adds the path to an I/O error's message, keeping its kind.
fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.ino() == ours.ino() && m.dev() == ours.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(annotate(e, path)),
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    /// Allocated bytes of the removed files.
    pub bytes: u64,
}

/// Removes the temp files in `dir` (not below it) whose owner is gone, as the module docs
/// say. A missing `dir` has none. An entry that cannot be examined or removed is skipped
/// with a warning: a sweep never fails the command that runs it.
pub fn sweep(dir: &Path, stale_after: Duration) -> Swept {
    let mut swept = Swept::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return swept,
        Err(e) => {
            tracing::warn!("cannot sweep temp files in {}: {e}", dir.display());
            return swept;
        }
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(PREFIX)) else {
            continue;
        };
        let path = entry.path();
        match reclaim(&path, name, now, stale_after) {
            Ok(Some(bytes)) => {
                tracing::debug!("removed stale temp file {}", path.display());
                swept.files += 1;
                swept.bytes += bytes;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot sweep temp file {}: {e}", path.display()),
        }
    }
    swept
}

/// [`sweep`] with [`FOREIGN_STALE_AFTER`], saying in the log what it removed.
pub fn sweep_and_log(dir: &Path) -> Swept {
    let swept = sweep(dir, FOREIGN_STALE_AFTER);
    if swept.files > 0 {
        tracing::info!(
            "removed {} temp files ({} bytes) left in {} by interrupted writers",
            swept.files,
            swept.bytes,
            dir.display()
        );
    }
    swept
}

/// Removes one temp file if its owner is gone; returns its allocated size if it did.
fn reclaim(
    path: &Path,
    name: &str,
    now: SystemTime,
    stale_after: Duration,
) -> io::Result<Option<u64>> {
    // Non-blocking so that a FIFO cannot hang the sweep; no-follow so that a symlink is
    // never followed out of the directory.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let this_boot = boot_tag().is_some() && boot_of(name) == boot_tag();
    if !this_boot {
        let age = meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok());
        if age.is_none_or(|a| a <= stale_after) {
            return Ok(None);
        }
    }
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None), // its owner is alive
        // No locks on this filesystem: liveness cannot be told, so it is kept.
        Err(rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // Its owner may have renamed it away between our open and our lock.
    if !same_file(&file, path)? {
        return Ok(None);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(Some(meta.blocks() * 512)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn live_files_are_kept_dead_ones_swept() {
        let d = tempfile::tempdir().unwrap();
        let live = TempFile::create_in(d.path(), 0o600).unwrap();
        live.as_file().write_all(b"data").unwrap();
        assert!(boot_of(&live.path().file_name().unwrap().to_string_lossy()).is_some());
        // A file of this boot whose lock nobody holds: its owner died.
        let mut dead = TempFile::create_in(d.path(), 0o600).unwrap();
        let dead_path = dead.path().to_owned();
        drop(dead.file.take()); // as the kernel does when its owner dies
        drop(dead);
        assert!(dead_path.exists());
        assert_eq!(sweep(d.path(), FOREIGN_STALE_AFTER).files, 1);
        assert!(!dead_path.exists());
        assert!(live.path().exists());
        // Not ours to judge and fresh: kept; other names: never touched.
        fs::write(d.path().join(".tmp-0123456789abcdef-1-0-0"), b"x").unwrap();
        fs::write(d.path().join(".tmpAbC123"), b"x").unwrap();
        fs::write(d.path().join("x.narinfo"), b"x").unwrap();
        fs::create_dir(d.path().join(".tmp-dir")).unwrap();
        assert_eq!(sweep(d.path(), FOREIGN_STALE_AFTER).files, 0);
        // ... but removed once stale.
        assert_eq!(sweep(d.path(), Duration::ZERO).files, 2);
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut want = vec![".tmp-dir".to_owned(), live_name, "x.narinfo".to_owned()];
        want.sort();
        assert_eq!(names(d.path()), want);
        // Persisting renames and unlocks; dropping removes.
        let dest = d.path().join("obj");
        live.persist(&dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"data");
        let gone = TempFile::create_in(d.path(), 0o600).unwrap();
        let gone_path = gone.path().to_owned();
        drop(gone);
        assert!(!gone_path.exists());
    }

    #[test]
    fn a_live_foreign_looking_file_is_kept_while_locked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".tmp-ffffffffffffffff-1-0-0");
        let f = File::create(&p).unwrap();
        flock(&f, FlockOperation::LockExclusive).unwrap();
        assert_eq!(sweep(d.path(), Duration::ZERO).files, 0);
        drop(f);
        assert_eq!(sweep(d.path(), Duration::ZERO).files, 1);
    }
}
