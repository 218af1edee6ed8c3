//! The collector's trash: `<store>/.gc-trash/`, where dead paths are renamed (one atomic
//! rename each, in the store's own filesystem) after their rows are deleted and before
//! their files are removed, so that no registered path is ever half-deleted and a crash
//! during removal leaves only trash. Whoever holds the trash lock (a `flock` on the trash
//! dir itself) empties all of it, leftovers of interrupted runs included.
//!
//! Also finds unregistered entries in the store dir (what a crash left between an install's
//! rename and its registration, or between a collection's commit and its renames).
//! See store-format.md, "Garbage collection".

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

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

    /// Renames the given entries of the store dir into the trash, then syncs both dirs.
    /// An entry that is already gone is skipped. Returns how many were moved.
    pub fn move_in(&self, layout: &Layout, names: &[&str]) -> io::Result<usize> {
        let trash = layout.trash_dir();
        let mut moved = 0;
        for name in names {
            let from = layout.real_store().join(name);
            let to = trash.join(name);
            match rename_aside(&from, &to) {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => return Err(annotate(e, &from)),
            }
        }
        if moved > 0 {
            self.dir.sync_all().map_err(|e| annotate(e, &trash))?;
            File::open(layout.real_store())
                .and_then(|d| d.sync_all())
                .map_err(|e| annotate(e, layout.real_store()))?;
        }
        Ok(moved)
    }

    /// Removes everything in the trash, with up to `threads` threads. Returns the bytes
    /// freed (allocated blocks of what was removed) and the number of entries removed.
    pub fn empty(&self, layout: &Layout, threads: usize) -> io::Result<(u64, usize)> {
        let trash = layout.trash_dir();
        let mut entries = Vec::new();
        for e in fs::read_dir(&trash).map_err(|e| annotate(e, &trash))? {
            let e = e.map_err(|e| annotate(e, &trash))?;
            entries.push(e.path());
        }
        let n = entries.len();
        let threads = threads.clamp(1, 8).min(n.max(1));
        let freed = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<&Path> = entries
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|p| p.as_path())
                        .collect();
                    let trash = &trash;
                    s.spawn(move || {
                        let mut freed = 0;
                        let mut writable = true; // the trash dir is ours, 0700
                        for p in mine {
                            freed += remove_tree(p, trash, &mut writable)?;
                        }
                        Ok::<u64, io::Error>(freed)
                    })
                })
                .collect();
            let mut total = 0;
            for h in handles {
                total += h
                    .join()
                    .map_err(|_| io::Error::other("a removal thread panicked"))??;
            }
            Ok::<u64, io::Error>(total)
        })?;
        Ok((freed, n))
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
                let parent = to.parent().unwrap_or(Path::new("."));
                remove_tree(to, parent, &mut true)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes `path` (in the directory `parent`) and everything below it, making directories
/// writable only where removal is refused. Returns the bytes of allocated blocks freed.
fn remove_tree(path: &Path, parent: &Path, parent_writable: &mut bool) -> io::Result<u64> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(annotate(e, path)),
    };
    let mut freed = 0;
    if m.is_dir() {
        let mut writable = m.mode() & 0o200 != 0;
        for e in fs::read_dir(path).map_err(|e| annotate(e, path))? {
            let e = e.map_err(|e| annotate(e, path))?;
            freed += remove_tree(&e.path(), path, &mut writable)?;
        }
        freed += m.blocks() * 512;
        with_writable_parent(parent, parent_writable, || fs::remove_dir(path))
            .map_err(|e| annotate(e, path))?;
    } else {
        if m.nlink() <= 1 {
            freed += m.blocks() * 512;
        }
        with_writable_parent(parent, parent_writable, || fs::remove_file(path))
            .map_err(|e| annotate(e, path))?;
    }
    Ok(freed)
}

/// Runs `op`; if it is refused for lack of write permission on `parent`, makes `parent`
/// writable (once) and retries.
fn with_writable_parent(
    parent: &Path,
    writable: &mut bool,
    op: impl Fn() -> io::Result<()>,
) -> io::Result<()> {
    match op() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !*writable => {
            fs::set_permissions(parent, fs::Permissions::from_mode(0o700))?;
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
