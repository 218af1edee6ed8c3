//! Canonicalisation of a tree for the store, and removal of read-only trees.
//!
//! Both walk the tree iteratively (no recursion) through directory handles and never follow
//! symlinks; each level of nesting holds one open handle.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, CWD};
use rustix::io::Errno;

use super::sys::{self, io_err, join};
use super::FsNarError;

/// Makes the tree at `path` canonical: regular files 0444 (0555 if user-executable), directories
/// 0555 (set after their contents), mtime 1 for everything including symlinks. Setuid, setgid
/// and sticky bits are cleared. FIFOs, sockets and devices are an error.
pub fn canonicalise(path: impl AsRef<Path>) -> Result<(), FsNarError> {
    let path = path.as_ref();
    let c_path = sys::c_path(path)?;
    let st = sys::lstat_at(CWD, &c_path).map_err(io_err("inspecting", || path.into()))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => canonicalise_dir(path, &c_path),
        ft => canonicalise_leaf(CWD, &c_path, ft, st.st_mode, path),
    }
}

/// Canonicalises a non-directory `name` in `dirfd`, whose `lstat` gave `ft` and `st_mode`.
fn canonicalise_leaf(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    ft: FileType,
    st_mode: u32,
    path: &Path,
) -> Result<(), FsNarError> {
    match ft {
        FileType::Symlink => {
            sys::finish_symlink(dirfd, name).map_err(io_err("setting the mtime of", || path.into()))
        }
        FileType::RegularFile => {
            let executable = sys::is_executable(st_mode);
            let mode = sys::file_mode(executable);
            let times = sys::canonical_times();
            // Open without following symlinks (and without blocking, in case it was swapped for
            // a FIFO), check it is still a regular file, then fix it through the handle.
            let fd = match sys::open_read(dirfd, name) {
                Ok(fd) => fd,
                Err(Errno::ACCESS) => {
                    // Unreadable (e.g. mode 0000 and we are not root): fix the mode by name.
                    rustix::fs::chmodat(dirfd, name, mode, AtFlags::empty())
                        .map_err(io_err("changing the mode of", || path.into()))?;
                    return rustix::fs::utimensat(dirfd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io_err("setting the mtime of", || path.into()));
                }
                Err(e) => return Err(io_err("opening", || path.into())(e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(io_err("inspecting", || path.into()))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(FsNarError::Changed { path: path.into() });
            }
            if st.st_mode & 0o7777 != mode.bits() {
                rustix::fs::fchmod(&fd, mode)
                    .map_err(io_err("changing the mode of", || path.into()))?;
            }
            rustix::fs::futimens(&fd, &times)
                .map_err(io_err("setting the mtime of", || path.into()))
        }
        other => Err(FsNarError::UnsupportedType {
            path: path.into(),
            kind: sys::type_name(other),
        }),
    }
}

struct Frame {
    fd: OwnedFd,
    entries: std::vec::IntoIter<CString>,
    path: PathBuf,
}

/// Opens a directory to work on it, first giving its owner full access if needed.
fn open_dir_writable(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> Result<OwnedFd, FsNarError> {
    let fd = match sys::open_dir(dirfd, name) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) => {
            rustix::fs::chmodat(dirfd, name, Mode::from_raw_mode(0o700), AtFlags::empty())
                .map_err(io_err("changing the mode of", || path.into()))?;
            sys::open_dir(dirfd, name).map_err(io_err("opening", || path.into()))?
        }
        Err(e) => return Err(io_err("opening", || path.into())(e)),
    };
    Ok(fd)
}

fn canonicalise_dir(path: &Path, c_path: &CStr) -> Result<(), FsNarError> {
    let fd = open_dir_writable(CWD, c_path, path)?;
    let entries = sys::read_sorted(&fd).map_err(io_err("listing", || path.into()))?;
    let mut stack = vec![Frame {
        fd,
        entries: entries.into_iter(),
        path: path.into(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.entries.next() else {
            if let Some(done) = stack.pop() {
                sys::finish_dir(&done.fd, true)
                    .map_err(io_err("finishing", || done.path.clone()))?;
            }
            continue;
        };
        let child = join(&top.path, name.to_bytes());
        let st =
            sys::lstat_at(top.fd.as_fd(), &name).map_err(io_err("inspecting", || child.clone()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = open_dir_writable(top.fd.as_fd(), &name, &child)?;
                let entries = sys::read_sorted(&fd).map_err(io_err("listing", || child.clone()))?;
                stack.push(Frame {
                    fd,
                    entries: entries.into_iter(),
                    path: child,
                });
            }
            ft => canonicalise_leaf(top.fd.as_fd(), &name, ft, st.st_mode, &child)?,
        }
    }
    Ok(())
}

/// Removes the tree at `path` (which may be read-only, like a canonical store path): directories
/// are made writable on the way down. A missing `path` is not an error. Symlinks are removed,
/// never followed.
///
/// Errors keep the `io::ErrorKind` of the failing call and carry an [`FsNarError`] naming the
/// path concerned.
pub fn make_writable_and_remove(path: impl AsRef<Path>) -> std::io::Result<()> {
    remove_tree(path.as_ref()).map_err(|e| match &e {
        FsNarError::Io(io) => std::io::Error::new(io.source.kind(), e),
        _ => std::io::Error::other(e),
    })
}

fn remove_tree(path: &Path) -> Result<(), FsNarError> {
    let c_path = sys::c_path(path)?;
    let st = match sys::lstat_at(CWD, &c_path) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err("inspecting", || path.into())(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(CWD, &c_path, AtFlags::empty())
            .map_err(io_err("removing", || path.into()));
    }
    /// A directory being emptied, with its own name in its parent (the parent is the frame
    /// below, or the working directory for the root).
    struct Level {
        fd: OwnedFd,
        entries: std::vec::IntoIter<CString>,
        name: CString,
        path: PathBuf,
    }
    let open = |dirfd: BorrowedFd<'_>, name: &CStr, path: &Path| -> Result<OwnedFd, FsNarError> {
        let fd = open_dir_writable(dirfd, name, path)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(io_err("changing the mode of", || path.into()))?;
        Ok(fd)
    };
    let fd = open(CWD, &c_path, path)?;
    let entries = sys::read_sorted(&fd).map_err(io_err("listing", || path.into()))?;
    let mut stack = vec![Level {
        fd,
        entries: entries.into_iter(),
        name: c_path,
        path: path.into(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.entries.next() else {
            let Some(done) = stack.pop() else { break };
            drop(done.fd);
            let parent = stack.last().map_or(CWD, |p| p.fd.as_fd());
            rustix::fs::unlinkat(parent, &done.name, AtFlags::REMOVEDIR)
                .map_err(io_err("removing", || done.path.clone()))?;
            continue;
        };
        let child = || join(&top.path, name.to_bytes());
        let st = sys::lstat_at(top.fd.as_fd(), &name).map_err(io_err("inspecting", child))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let child = child();
            let fd = open(top.fd.as_fd(), &name, &child)?;
            let entries = sys::read_sorted(&fd).map_err(io_err("listing", || child.clone()))?;
            stack.push(Level {
                fd,
                entries: entries.into_iter(),
                name,
                path: child,
            });
        } else {
            rustix::fs::unlinkat(top.fd.as_fd(), &name, AtFlags::empty())
                .map_err(io_err("removing", child))?;
        }
    }
    Ok(())
}

/// Renames `from` to `to` (same filesystem). Moving a directory to another parent changes
/// its `..` entry, which needs write permission on it unless we are root: a read-only
/// (canonical) directory is made owner-writable for the rename and given its mode back
/// at `to` (its mtime is not changed by either).
pub fn rename_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let meta = std::fs::symlink_metadata(from)?;
            if !meta.is_dir() || meta.permissions().mode() & 0o200 != 0 {
                return Err(e);
            }
            let mode = meta.permissions().mode() & 0o7777;
            std::fs::set_permissions(from, std::fs::Permissions::from_mode(mode | 0o200))?;
            std::fs::rename(from, to)?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        }
        other => other,
    }
}
