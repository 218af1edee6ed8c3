//! GC roots: what keeps store paths alive. Owns the collector's global lock, the temporary
//! roots of running processes and the permanent roots under `gcroots/`.
//!
//! * `<state>/gc.lock`: the collector holds it exclusively from before it reads the roots
//!   until the dead paths are out of their final names; a process takes it shared while it
//!   adds a temp root. So a temp root is either seen by a collection or added after that
//!   collection has deleted what it deleted; and an install adds its temp root before it
//!   checks whether the path is valid, so it never relies on a path a running collection
//!   has judged dead.
//! * `<state>/temproots/<pid>-<n>-<nanos>.roots`: one file per open store that has added a
//!   temp root, holding base names one per line, `flock`ed exclusively by its owner for as
//!   long as the store is open and unlinked when it is closed. A file whose lock can be
//!   taken belongs to a dead process; the collector deletes it. No fsync: temp roots matter
//!   only while their process lives, and no process survives an OS crash. (The same
//!   directory holds the `.tmp-*.lock` files of install temp dirs, see `lock`; the two never
//!   share a name.)
//! * `<state>/gcroots/`: symlinks, searched recursively. A link to a store path (logical or
//!   physical, or to a file inside one) is a direct root. A link to anything else is an
//!   indirect root: if its target is a symlink to a store path, that path is a root; if the
//!   target no longer exists and the link is in `gcroots/auto/`, the link is removed.
//!   [`LocalStore::add_indirect_root`] makes the `result`-style links of `realise
//!   --out-link`.
//!
//! See store-format.md, "Garbage collection".

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};
use thiserror::Error;

use super::layout::Layout;
use super::{LocalStore, StoreError};
use crate::format::hash::{compress_hash, Hash, HashAlgo};
use crate::format::nixbase32;
use crate::format::store_path::StorePath;

/// What can go wrong with roots and the GC lock.
#[derive(Debug, Error)]
pub enum RootsError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("temp roots file '{file}' has an invalid line '{line}'")]
    BadTempRoot { file: PathBuf, line: String },
    #[error("'{0}' is a directory, not a link")]
    LinkIsDir(PathBuf),
}

fn io_err(context: impl fmt::Display) -> impl FnOnce(io::Error) -> RootsError {
    let context = context.to_string();
    move |source| RootsError::Io { context, source }
}

fn errno_err(context: impl fmt::Display) -> impl FnOnce(rustix::io::Errno) -> RootsError {
    let f = io_err(context);
    move |e| f(e.into())
}

/// Why a path is a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A symlink under `gcroots/`, through the user's link for indirect roots.
    Link {
        gcroot: PathBuf,
        via: Option<PathBuf>,
    },
    /// A temp root of a running process.
    Temp { file: PathBuf },
}

impl fmt::Display for RootSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSource::Link { gcroot, via: None } => write!(f, "{}", gcroot.display()),
            RootSource::Link {
                gcroot,
                via: Some(l),
            } => write!(f, "{} -> {}", gcroot.display(), l.display()),
            RootSource::Temp { file } => {
                write!(
                    f,
                    "temporary root of a running process ({})",
                    file.display()
                )
            }
        }
    }
}

/// A root: a store path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub path: StorePath,
    pub source: RootSource,
}

/// The global GC lock, released on drop.
#[derive(Debug)]
pub struct GcLock {
    _file: File,
}

impl GcLock {
    /// Blocks until the lock is held exclusively (the collector).
    pub fn exclusive(layout: &Layout) -> Result<GcLock, RootsError> {
        Self::take(layout, FlockOperation::LockExclusive)
    }

    /// Blocks until the lock is held shared (readers that must not see a collection
    /// half-way, e.g. a dry run).
    pub fn shared(layout: &Layout) -> Result<GcLock, RootsError> {
        Self::take(layout, FlockOperation::LockShared)
    }

    fn take(layout: &Layout, op: FlockOperation) -> Result<GcLock, RootsError> {
        let path = layout.gc_lock_path();
        let file = open_gc_lock(&path)?;
        flock(&file, op).map_err(errno_err(format!("cannot lock '{}'", path.display())))?;
        Ok(GcLock { _file: file })
    }
}

fn open_gc_lock(path: &Path) -> Result<File, RootsError> {
    super::lock::open_lock_file(path).map_err(io_err(format!("cannot open '{}'", path.display())))
}

/// The temp roots of one open store (one per [`LocalStore`]).
#[derive(Debug, Default)]
pub struct TempRoots {
    state: Mutex<TempRootsState>,
}

#[derive(Debug, Default)]
struct TempRootsState {
    gc_lock: Option<File>,
    file: Option<(File, PathBuf)>,
    added: HashSet<StorePath>,
}

impl Drop for TempRootsState {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.file {
            let _ = fs::remove_file(path); // a leftover is removed by the next collection
        }
    }
}

const ROOTS_SUFFIX: &str = ".roots";

impl TempRoots {
    /// Adds `path` as a temp root of this process (idempotent).
    pub fn add(&self, layout: &Layout, path: &StorePath) -> Result<(), RootsError> {
        self.add_all(layout, std::iter::once(path))
    }

    /// Adds every path of `paths` as a temp root of this process (idempotent): the new
    /// ones in a single write, under one shared hold of the GC lock.
    pub fn add_all<'a>(
        &self,
        layout: &Layout,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), RootsError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut new: Vec<&StorePath> = Vec::new();
        let mut lines = String::new();
        for p in paths {
            if !st.added.contains(p) && !new.contains(&p) {
                lines.push_str(p.as_str());
                lines.push('\n');
                new.push(p);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        if st.gc_lock.is_none() {
            st.gc_lock = Some(open_gc_lock(&layout.gc_lock_path())?);
        }
        let lock_ctx = || format!("cannot lock '{}'", layout.gc_lock_path().display());
        let gc_lock = st.gc_lock.as_ref().expect("opened above");
        // Waits while a collection runs.
        flock(gc_lock, FlockOperation::LockShared).map_err(errno_err(lock_ctx()))?;
        let written = append_roots(&mut st, layout, &lines);
        let gc_lock = st.gc_lock.as_ref().expect("opened above");
        let unlocked = flock(gc_lock, FlockOperation::Unlock).map_err(errno_err(lock_ctx()));
        written?;
        unlocked?;
        st.added.extend(new.into_iter().cloned());
        Ok(())
    }
}

/// Appends `lines` (whole lines) to this store's temp roots file, creating (and locking) it
/// first. Called with the GC lock held shared.
fn append_roots(st: &mut TempRootsState, layout: &Layout, lines: &str) -> Result<(), RootsError> {
    if st.file.is_none() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "{}-{}-{nanos:08x}{ROOTS_SUFFIX}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let p = layout.temp_locks_dir().join(name);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&p)
            .map_err(io_err(format!("cannot create '{}'", p.display())))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(errno_err(format!("cannot lock '{}'", p.display())))?;
        st.file = Some((file, p));
    }
    let (file, p) = st.file.as_mut().expect("created above");
    // One write(2) to an O_APPEND file (a reader counts only complete lines).
    file.write_all(lines.as_bytes())
        .map_err(io_err(format!("cannot write '{}'", p.display())))
}

/// The temp roots of all live processes. With `remove_dead`, the files of dead processes
/// are deleted (only the collector, holding the GC lock exclusively, does that). Only
/// complete lines count (a dry run, holding the lock shared, may see one being written).
pub fn read_temp_roots(layout: &Layout, remove_dead: bool) -> Result<Vec<Root>, RootsError> {
    let dir = layout.temp_locks_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("cannot list '{}'", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("cannot list '{}'", dir.display())))?;
        if !entry.file_name().to_string_lossy().ends_with(ROOTS_SUFFIX) {
            continue;
        }
        let p = entry.path();
        let mut file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // closed meanwhile
            Err(e) => return Err(io_err(format!("cannot open '{}'", p.display()))(e)),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // Its owner is gone.
                if remove_dead {
                    fs::remove_file(&p)
                        .or_else(|e| match e.kind() {
                            io::ErrorKind::NotFound => Ok(()),
                            _ => Err(e),
                        })
                        .map_err(io_err(format!("cannot remove '{}'", p.display())))?;
                }
                continue;
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(errno_err(format!("cannot lock '{}'", p.display()))(e)),
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(io_err(format!("cannot read '{}'", p.display())))?;
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines() {
            let path = line.parse().map_err(|_| RootsError::BadTempRoot {
                file: p.clone(),
                line: line.to_owned(),
            })?;
            out.push(Root {
                path,
                source: RootSource::Temp { file: p.clone() },
            });
        }
    }
    Ok(out)
}

/// The store path a link target names: a logical or physical store path, or a file
/// inside one.
fn store_path_of(layout: &Layout, target: &Path) -> Option<StorePath> {
    let t = target.to_str()?;
    if let Ok((p, _)) = layout.store_dir().parse_path_prefix(t) {
        return Some(p);
    }
    let rest = target.strip_prefix(layout.real_store()).ok()?;
    let first = rest.components().next()?;
    first.as_os_str().to_str()?.parse().ok()
}

/// Whether a link target is inside the store dir (logical or physical) at all.
fn in_store_dir(layout: &Layout, target: &Path) -> bool {
    target.starts_with(layout.store_dir().as_str()) || target.starts_with(layout.real_store())
}

/// The roots under `gcroots/` (paths need not be valid). With `remove_stale`, links in
/// `gcroots/auto/` whose target is gone are removed.
pub fn find_link_roots(layout: &Layout, remove_stale: bool) -> Result<Vec<Root>, RootsError> {
    let mut out = Vec::new();
    let top = layout.gc_roots_dir();
    let auto = top.join("auto");
    let mut stack = vec![(top, 0u32)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && depth == 0 => continue,
            Err(e) => return Err(io_err(format!("cannot list '{}'", dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(format!("cannot list '{}'", dir.display())))?;
            let p = entry.path();
            let ft = entry
                .file_type()
                .map_err(io_err(format!("cannot inspect '{}'", p.display())))?;
            if ft.is_dir() {
                if depth < 16 {
                    stack.push((p, depth + 1));
                }
                continue;
            }
            if !ft.is_symlink() {
                continue;
            }
            let target = read_link_abs(&p)?;
            if let Some(path) = store_path_of(layout, &target) {
                out.push(Root {
                    path,
                    source: RootSource::Link {
                        gcroot: p,
                        via: None,
                    },
                });
                continue;
            }
            if in_store_dir(layout, &target) {
                continue;
            }
            // An indirect root: the target is the user's link.
            match fs::symlink_metadata(&target) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if remove_stale && p.starts_with(&auto) {
                        tracing::info!("removing stale link '{}'", p.display());
                        fs::remove_file(&p)
                            .map_err(io_err(format!("cannot remove '{}'", p.display())))?;
                    }
                }
                Err(e) => return Err(io_err(format!("cannot inspect '{}'", target.display()))(e)),
                Ok(m) if m.file_type().is_symlink() => {
                    let second = read_link_abs(&target)?;
                    if let Some(path) = store_path_of(layout, &second) {
                        out.push(Root {
                            path,
                            source: RootSource::Link {
                                gcroot: p,
                                via: Some(target),
                            },
                        });
                    }
                }
                Ok(_) => {}
            }
        }
    }
    Ok(out)
}

/// A link's target, made absolute against the link's directory.
fn read_link_abs(link: &Path) -> Result<PathBuf, RootsError> {
    let t = fs::read_link(link).map_err(io_err(format!("cannot read '{}'", link.display())))?;
    Ok(match link.parent() {
        Some(dir) if t.is_relative() => dir.join(t),
        _ => t,
    })
}

/// Points `link` at `target` atomically: a temp symlink next to it, renamed over it.
fn replace_symlink(target: &Path, link: &Path) -> Result<(), RootsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map_or("link".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(io_err(format!("cannot create '{}'", tmp.display())))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("cannot create '{}'", link.display()))(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("cannot sync '{}'", dir.display())))
}

impl LocalStore {
    /// Makes `path` a temp root of this process, until the store is dropped: no
    /// collection deletes it from now on. Waits while a collection runs.
    pub fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreError> {
        Ok(self.temp_roots.add(&self.layout, path)?)
    }

    /// [`LocalStore::add_temp_root`] for many paths at once (one write for all).
    pub fn add_temp_roots<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), StoreError> {
        Ok(self.temp_roots.add_all(&self.layout, paths)?)
    }

    /// Makes `link` a symlink to the (valid) path `target`, atomically replacing a link
    /// that is there, and registers it as an indirect root (`gcroots/auto/<hash of
    /// link>`). The path stays alive as long as `link` points to it; removing or
    /// re-pointing `link` drops the root. Like `nix-build`'s `result`.
    pub fn add_indirect_root(&self, link: &Path, target: &StorePath) -> Result<(), StoreError> {
        self.add_temp_root(target)?;
        self.query_valid(target)?;
        let link = std::path::absolute(link)
            .map_err(|e| StoreError::io(format!("bad link path '{}'", link.display()), e))?;
        if fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
            return Err(RootsError::LinkIsDir(link).into());
        }
        // The user's link first: a gcroot whose link does not exist yet would be removed
        // as stale by a concurrent collection.
        replace_symlink(&self.layout.real_path(target), &link)?;
        let digest = Hash::of(HashAlgo::Sha256, link.as_os_str().as_encoded_bytes());
        let name = nixbase32::encode(&compress_hash::<20>(digest.digest()));
        let auto = self.layout.gc_roots_dir().join("auto");
        fs::create_dir_all(&auto)
            .map_err(|e| StoreError::io(format!("cannot create '{}'", auto.display()), e))?;
        replace_symlink(&link, &auto.join(name))?;
        Ok(())
    }
}
