//! The collector's trash: `<store>/.gc-trash/`, where dead paths are renamed (one atomic
//! rename each, in the store's own filesystem) after their rows are deleted and before
//! their files are removed, so that no registered path is ever half-deleted and a crash
//! during removal leaves only trash. Whoever holds the trash lock (a `flock` on the trash
//! dir itself) empties all of it, leftovers of interrupted runs included.
//!
//! Also finds unregistered entries in the store dir (what a crash left between an install's
//! rename and its registration, or between a collection's commit and its renames).
//! See store-format.md, "Garbage collection".

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{
    chmodat, fchmod, flock, openat, statat, unlinkat, AtFlags, Dir, FileType, FlockOperation, Mode,
    OFlags, CWD,
};
use rustix::io::Errno;

use super::layout::{annotate, Layout};
use crate::format::store_path::StorePath;

/// The trash lock, released on drop.
#[derive(Debug)]
pub struct Trash {
    dir: File,
}

impl Trash {
    /// Creates the trash dir if needed and blocks until its lock is held.
    pub fn lock(layout: &Layout) -> io::Result<Trash> {
        let path = layout.trash_dir();
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(annotate(e, &path)),
        }
        let dir = File::open(&path).map_err(|e| annotate(e, &path))?;
        flock(&dir, FlockOperation::LockExclusive).map_err(|e| annotate(e.into(), &path))?;
        Ok(Trash { dir })
    }

    /// Renames the given entries of the store dir into the trash and removes everything in
    /// the trash (leftovers of earlier runs included) with up to `threads` threads. Removal
    /// starts as soon as an entry is in the trash, while the rest are still being renamed;
    /// `moved` runs once every rename is done (and both dirs are synced), before the removal
    /// ends. An entry that is already gone is skipped. Returns the bytes freed (allocated
    /// blocks of what was removed).
    pub fn move_in_and_empty(
        &self,
        layout: &Layout,
        names: &[&str],
        threads: usize,
        moved: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<u64> {
        let trash = layout.trash_dir();
        let mut earlier = Vec::new();
        for e in fs::read_dir(&trash).map_err(|e| annotate(e, &trash))? {
            let e = e.map_err(|e| annotate(e, &trash))?;
            earlier.push(CString::new(e.file_name().as_bytes()).map_err(io::Error::other)?);
        }
        let threads = threads
            .clamp(1, 64)
            .min((names.len() + earlier.len()).max(1));
        let (tx, rx) = std::sync::mpsc::channel::<CString>();
        let rx = std::sync::Mutex::new(rx);
        let dirfd = self.dir.as_fd();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (rx, trash) = (&rx, &trash);
                    s.spawn(move || {
                        let mut freed = 0;
                        let mut writable = true; // the trash dir is ours, 0700
                        loop {
                            let next = rx.lock().map(|r| r.recv());
                            let Ok(Ok(name)) = next else { break };
                            freed += remove_at(dirfd, &name, &mut writable).map_err(|e| {
                                let p = trash.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                                annotate(e.into(), &p)
                            })?;
                        }
                        Ok::<_, io::Error>(freed)
                    })
                })
                .collect();
            let renamed = (|| {
                for name in earlier {
                    let _ = tx.send(name);
                }
                let mut any = false;
                for name in names {
                    let from = layout.real_store().join(name);
                    if rename_aside(&from, &trash.join(name)).map_err(|e| annotate(e, &from))? {
                        any = true;
                        let _ = tx.send(CString::new(*name).map_err(io::Error::other)?);
                    }
                }
                drop(tx);
                if any {
                    // Not needed for safety (the rows are gone: a rename lost in a crash
                    // leaves an unregistered entry, removed by the next collection), but
                    // the trash is then where a crash finds these paths.
                    self.dir.sync_all().map_err(|e| annotate(e, &trash))?;
                    File::open(layout.real_store())
                        .and_then(|d| d.sync_all())
                        .map_err(|e| annotate(e, layout.real_store()))?;
                }
                moved()
            })();
            let (mut freed, mut failed) = (0, renamed.err());
            for w in workers {
                match w.join() {
                    Ok(Ok(f)) => freed += f,
                    Ok(Err(e)) => failed = failed.or(Some(e)),
                    Err(_) => {
                        failed = failed.or(Some(io::Error::other("a removal thread panicked")))
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(freed),
            }
        })
    }
}

/// Renames `from` to `to`. False if `from` is gone. A directory moved to another parent
/// must be writable (its `..` changes), so a read-only store dir is made writable first
/// when needed; a stale entry of the same name in the trash is removed first.
fn rename_aside(from: &Path, to: &Path) -> io::Result<bool> {
    let mut fixed_perm = false;
    let mut removed_old = false;
    loop {
        match fs::rename(from, to) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return match fs::symlink_metadata(from) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    _ => Err(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !fixed_perm => {
                fixed_perm = true;
                let m = fs::symlink_metadata(from)?;
                if !m.is_dir() {
                    return Err(e);
                }
                fs::set_permissions(from, fs::Permissions::from_mode(0o700))?;
            }
            Err(e) if !removed_old && fs::symlink_metadata(to).is_ok() => {
                tracing::debug!("removing stale trash entry {}: {e}", to.display());
                removed_old = true;
                remove_tree(to)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes `path` and everything below it (its parent must be writable). See [`remove_at`].
fn remove_tree(path: &Path) -> io::Result<u64> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!(
            "cannot remove '{}'",
            path.display()
        )));
    };
    let dirfd =
        openat(CWD, dir, dir_flags(), Mode::empty()).map_err(|e| annotate(e.into(), dir))?;
    let name = CString::new(name.as_bytes()).map_err(io::Error::other)?;
    remove_at(dirfd.as_fd(), &name, &mut true).map_err(|e| annotate(e.into(), path))
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Removes `name` in the directory `parent` and everything below it, relative to open
/// directory handles (no path lookups, no symlink followed). Directories are made writable
/// only where a removal is refused (never needed as root). Returns the bytes of allocated
/// blocks freed (of files with one link, and of directories).
fn remove_at(
    parent: BorrowedFd<'_>,
    name: &CStr,
    parent_writable: &mut bool,
) -> Result<u64, Errno> {
    let st = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e),
    };
    let blocks = st.st_blocks as u64 * 512;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        with_writable_parent(parent, parent_writable, || {
            unlinkat(parent, name, AtFlags::empty())
        })?;
        return Ok(if st.st_nlink <= 1 { blocks } else { 0 });
    }
    let fd = match openat(parent, name, dir_flags(), Mode::empty()) {
        Err(Errno::ACCESS) => {
            chmodat(parent, name, Mode::from_raw_mode(0o700), AtFlags::empty())?;
            openat(parent, name, dir_flags(), Mode::empty())?
        }
        r => r?,
    };
    let mut names = Vec::new();
    let mut dir = Dir::new(rustix::io::dup(&fd)?)?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    drop(dir);
    let mut writable = st.st_mode & 0o200 != 0;
    let mut freed = blocks;
    for n in names {
        freed += remove_at(fd.as_fd(), &n, &mut writable)?;
    }
    // The directory is still open here, so its inode is freed when `fd` closes, after
    // the parent's lock is released: on a filesystem that discards freed blocks
    // synchronously, rmdirs in one parent would otherwise wait for the device in turn.
    with_writable_parent(parent, parent_writable, || {
        unlinkat(parent, name, AtFlags::REMOVEDIR)
    })?;
    drop(fd);
    Ok(freed)
}

/// Runs `op`; if it is refused for lack of write permission on `parent`, makes `parent`
/// writable (once) and retries.
fn with_writable_parent(
    parent: BorrowedFd<'_>,
    writable: &mut bool,
    op: impl Fn() -> Result<(), Errno>,
) -> Result<(), Errno> {
    match op() {
        Err(Errno::ACCESS) if !*writable => {
            fchmod(parent, Mode::from_raw_mode(0o700))?;
            *writable = true;
            op()
        }
        r => r,
    }
}

/// Entries of the store dir named like store paths for which `known` is false.
pub fn unknown_entries(
    layout: &Layout,
    known: impl Fn(&StorePath) -> bool,
) -> io::Result<Vec<StorePath>> {
    let store = layout.real_store();
    let mut out = Vec::new();
    for e in fs::read_dir(store).map_err(|e| annotate(e, store))? {
        let e = e.map_err(|e| annotate(e, store))?;
        let Some(name) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !known(&name) {
            out.push(name);
        }
    }
    Ok(out)
}
