//! The sandbox's file system, planned by the parent before the child starts.
//!
//! A scratch directory (mode 0700, next to the build dir) holds `root/`, the mount point of
//! the sandbox's root tmpfs, and `store/`, the real directory behind the store dir inside the
//! sandbox. The store dir is writable for the builder so it can create its outputs there
//! (whatever their type); after the build the outputs are renamed from `store/` to where the
//! caller wants them. The mount points of the inputs are created in `store/` here, in the
//! parent's mount namespace; the child bind-mounts the inputs on them in its own private
//! namespace, so in the parent they stay empty and are removed with the scratch dir.
//!
//! The root holds only what [`plan`] lists:
//!
//! ```text
//! /build                     the build dir (read-write)
//! <store dir>/               scratch store (read-write), inputs bind-mounted read-only
//! /dev/{null,zero,full,random,urandom,tty}   host devices; /dev/shm tmpfs; /dev/pts (own
//!                            devpts instance when possible); fd, stdin, stdout, stderr, ptmx
//! /proc                      fresh procfs of the new PID namespace
//! /tmp                       tmpfs, 1777
//! /etc/passwd, /etc/group    root, nixbld (1000:100), nobody
//! /etc/hosts                 localhost; with network access the host's hosts, resolv.conf
//!                            and services instead
//! sandbox paths              read-only
//! ```
//! The root itself is made read-only once everything is mounted.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::StatVfsMountFlags;

use super::child::Op;
use super::{BuildSpec, SandboxError, SANDBOX_BUILD_DIR};

/// uid and gid of the build user inside the sandbox (Nix's `sandboxUid`/`sandboxGid`).
pub(super) const SANDBOX_UID: u32 = 1000;
pub(super) const SANDBOX_GID: u32 = 100;

const PASSWD: &str = "root:x:0:0:Nix build user:/build:/noshell\n\
                      nixbld:x:1000:100:Nix build user:/build:/noshell\n\
                      nobody:x:65534:65534:Nobody:/:/noshell\n";
const GROUP: &str = "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn invalid(msg: String) -> SandboxError {
    SandboxError::InvalidSpec(msg)
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    crate::error::PathIoError::on(op, path)
}

pub(super) fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("path '{}' contains a NUL byte", path.display())))
}

/// Checks that `p` is absolute and normal (no `.`, `..` or empty components, not `/`).
pub(super) fn check_abs(p: &Path, what: &str) -> Result<(), SandboxError> {
    let normal = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && p.components().count() > 1
        && !p.as_os_str().as_bytes().ends_with(b"/");
    if normal {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} '{}' is not a normal absolute path",
            p.display()
        )))
    }
}

/// The name of `logical` in `store_dir`, which must be its parent.
pub(super) fn store_name<'a>(
    logical: &'a Path,
    store_dir: &Path,
    what: &str,
) -> Result<&'a std::ffi::OsStr, SandboxError> {
    check_abs(logical, what)?;
    match (logical.parent(), logical.file_name()) {
        (Some(parent), Some(name)) if parent == store_dir => Ok(name),
        _ => Err(invalid(format!(
            "{what} '{}' is not directly in the store dir '{}'",
            logical.display(),
            store_dir.display()
        ))),
    }
}

/// The mount flags of the file system holding `path` that a read-only remount must keep.
fn locked_flags(path: &Path) -> Result<libc::c_ulong, SandboxError> {
    let st = rustix::fs::statvfs(path).map_err(|e| io_err("inspecting", path)(e.into()))?;
    let f = st.f_flag;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (StatVfsMountFlags::NOSUID, libc::MS_NOSUID),
        (StatVfsMountFlags::NODEV, libc::MS_NODEV),
        (StatVfsMountFlags::NOEXEC, libc::MS_NOEXEC),
        (StatVfsMountFlags::NOATIME, libc::MS_NOATIME),
        (StatVfsMountFlags::NODIRATIME, libc::MS_NODIRATIME),
        (StatVfsMountFlags::RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Collects the operations, with paths relative to the sandbox root resolved under it.
struct Planner {
    root: PathBuf,
    ops: Vec<Op>,
}

impl Planner {
    /// `inside` (absolute) as a path under the root mount point.
    fn at(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    fn mkdir(&mut self, inside: &Path, mode: u32) -> Result<(), SandboxError> {
        let path = cstring(&self.at(inside))?;
        self.ops.push(Op::Mkdir { path, mode });
        Ok(())
    }

    /// Creates `inside`'s ancestors (below `/`) in the root tmpfs.
    fn mkdir_parents(&mut self, inside: &Path) -> Result<(), SandboxError> {
        let mut ancestors: Vec<&Path> = inside.ancestors().skip(1).collect();
        ancestors.pop(); // "/"
        for dir in ancestors.into_iter().rev() {
            self.mkdir(dir, 0o755)?;
        }
        Ok(())
    }

    fn bind(&mut self, src: &Path, inside: &Path, readonly: bool) -> Result<(), SandboxError> {
        let locked = if readonly { locked_flags(src)? } else { 0 };
        self.ops.push(Op::Bind {
            src: cstring(src)?,
            dst: cstring(&self.at(inside))?,
            readonly,
            locked,
        });
        Ok(())
    }

    /// Mirrors host path `src` at `inside` (parents created in the root tmpfs): directories
    /// and files are bind-mounted, symlinks copied.
    fn mirror(&mut self, src: &Path, inside: &Path, readonly: bool) -> Result<(), SandboxError> {
        let meta = fs::symlink_metadata(src).map_err(io_err("inspecting", src))?;
        self.mkdir_parents(inside)?;
        let at = cstring(&self.at(inside))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(src).map_err(io_err("reading the symlink", src))?;
            self.ops.push(Op::Symlink {
                target: cstring(&target)?,
                path: at,
            });
            return Ok(());
        }
        if meta.is_dir() {
            self.ops.push(Op::Mkdir {
                path: at,
                mode: 0o755,
            });
        } else {
            self.ops.push(Op::Touch { path: at });
        }
        self.bind(src, inside, readonly)
    }

    fn file(&mut self, inside: &str, contents: &str) -> Result<(), SandboxError> {
        let path = cstring(&self.at(Path::new(inside)))?;
        self.ops.push(Op::File {
            path,
            contents: contents.as_bytes().to_vec(),
        });
        Ok(())
    }

    fn symlink(&mut self, target: &str, inside: &str) -> Result<(), SandboxError> {
        self.ops.push(Op::Symlink {
            target: cstring(Path::new(target))?,
            path: cstring(&self.at(Path::new(inside)))?,
        });
        Ok(())
    }
}

/// Creates in `scratch_store` the mount point (or symlink copy) for store path `physical`
/// named `name`; returns whether it must be bind-mounted.
fn store_mount_point(
    scratch_store: &Path,
    name: &std::ffi::OsStr,
    physical: &Path,
) -> Result<bool, SandboxError> {
    let meta = fs::symlink_metadata(physical).map_err(io_err("inspecting", physical))?;
    let at = scratch_store.join(name);
    // A reused scratch dir may have the entry from an earlier build: keep it when it is the
    // same kind of (empty) mount point, or the same symlink.
    let existing = fs::symlink_metadata(&at).ok();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(physical).map_err(io_err("reading the symlink", physical))?;
        if let Some(e) = &existing {
            if e.file_type().is_symlink() && fs::read_link(&at).ok().as_ref() == Some(&target) {
                return Ok(false);
            }
            remove_entry(&at)?;
        }
        symlink(&target, &at).map_err(io_err("creating", &at))?;
        return Ok(false);
    }
    if let Some(e) = &existing {
        let reusable = if meta.is_dir() {
            e.is_dir()
        } else {
            e.is_file() && e.len() == 0
        };
        if reusable {
            return Ok(true);
        }
        remove_entry(&at)?;
    }
    if meta.is_dir() {
        fs::create_dir(&at).map_err(io_err("creating", &at))?;
    } else {
        fs::File::create(&at).map_err(io_err("creating", &at))?;
    }
    Ok(true)
}

fn remove_entry(path: &Path) -> Result<(), SandboxError> {
    crate::fsnar::make_writable_and_remove(path).map_err(io_err("removing", path))
}

/// Removes from a reused scratch store everything that is not one of `keep` (what an
/// earlier build left: its inputs' mount points, a failed build's outputs).
fn prune_scratch_store(
    scratch_store: &Path,
    keep: &std::collections::BTreeSet<&std::ffi::OsStr>,
) -> Result<(), SandboxError> {
    let entries = fs::read_dir(scratch_store).map_err(io_err("listing", scratch_store))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", scratch_store))?;
        if !keep.contains(entry.file_name().as_os_str()) {
            remove_entry(&entry.path())?;
        }
    }
    Ok(())
}

/// The scratch directory's parts.
pub(super) struct Scratch {
    pub root: PathBuf,
    pub store: PathBuf,
    /// Used by an earlier build (see [`super::ScratchPool`]): `store` may hold entries.
    pub reused: bool,
}

impl Scratch {
    /// A scratch dir made by [`Scratch::create`] for an earlier build.
    pub(super) fn reuse(dir: &Path) -> Self {
        Scratch {
            root: dir.join("root"),
            store: dir.join("store"),
            reused: true,
        }
    }

    pub(super) fn create(dir: &Path) -> Result<Self, SandboxError> {
        let root = dir.join("root");
        let store = dir.join("store");
        fs::create_dir(&root).map_err(io_err("creating", &root))?;
        fs::create_dir(&store).map_err(io_err("creating", &store))?;
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755))
            .map_err(io_err("changing the mode of", &store))?;
        Ok(Scratch {
            root,
            store,
            reused: false,
        })
    }
}

/// Plans the sandbox for `spec` in `scratch` (see the module doc).
pub(super) fn plan(spec: &BuildSpec, scratch: &Scratch) -> Result<Vec<Op>, SandboxError> {
    let mut p = Planner {
        root: scratch.root.clone(),
        ops: Vec::new(),
    };
    let store_dir = spec.store_dir.as_path();
    for top in ["/build", "/dev", "/proc", "/tmp", "/etc"] {
        if store_dir.starts_with(top) {
            return Err(invalid(format!(
                "the store dir '{}' cannot be under {top} in the sandbox",
                store_dir.display()
            )));
        }
    }
    for dir in ["/etc", "/dev", "/proc", "/tmp", SANDBOX_BUILD_DIR] {
        p.mkdir(Path::new(dir), 0o755)?;
    }
    p.file("/etc/passwd", PASSWD)?;
    p.file("/etc/group", GROUP)?;
    if spec.network {
        for name in ["/etc/hosts", "/etc/resolv.conf", "/etc/services"] {
            if Path::new(name).exists() {
                p.ops.push(Op::Touch {
                    path: cstring(&p.at(Path::new(name)))?,
                });
                p.bind(Path::new(name), Path::new(name), true)?;
            }
        }
    } else {
        p.file("/etc/hosts", HOSTS)?;
    }

    for dev in DEVICES {
        let host = Path::new("/dev").join(dev);
        if host.exists() {
            p.ops.push(Op::Touch {
                path: cstring(&p.at(&host))?,
            });
            p.bind(&host, &host, false)?;
        }
    }
    p.mkdir(Path::new("/dev/shm"), 0o755)?;
    p.ops.push(Op::Tmpfs {
        path: cstring(&p.at(Path::new("/dev/shm")))?,
        data: c"mode=1777".to_owned(),
    });
    p.mkdir(Path::new("/dev/pts"), 0o755)?;
    p.ops.push(Op::Devpts {
        path: cstring(&p.at(Path::new("/dev/pts")))?,
    });
    p.symlink("pts/ptmx", "/dev/ptmx")?;
    p.symlink("/proc/self/fd", "/dev/fd")?;
    for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        p.symlink(&format!("/proc/self/fd/{i}"), &format!("/dev/{name}"))?;
    }
    p.ops.push(Op::Proc {
        path: cstring(&p.at(Path::new("/proc")))?,
    });
    p.ops.push(Op::Tmpfs {
        path: cstring(&p.at(Path::new("/tmp")))?,
        data: c"mode=1777".to_owned(),
    });
    p.bind(&spec.build_dir, Path::new(SANDBOX_BUILD_DIR), false)?;

    // The store: the scratch store, with the inputs (and store paths among the sandbox
    // paths) bind-mounted read-only into it.
    p.mkdir_parents(store_dir)?;
    p.mkdir(store_dir, 0o755)?;
    p.bind(&scratch.store, store_dir, false)?;
    let mut in_store = Vec::new();
    for (logical, physical) in &spec.inputs {
        in_store.push((logical, physical, "input"));
    }
    let mut host_paths: Vec<&(PathBuf, PathBuf)> = Vec::new();
    for entry in &spec.sandbox_paths {
        check_abs(&entry.0, "sandbox path")?;
        if entry.0.parent() == Some(store_dir) {
            in_store.push((&entry.0, &entry.1, "sandbox path"));
        } else {
            host_paths.push(entry);
        }
    }
    let mut names = std::collections::BTreeSet::new();
    let mut read_only = Vec::new();
    let mut locked_by_dir = std::collections::HashMap::new();
    for (logical, physical, what) in in_store {
        let name = store_name(logical, store_dir, what)?;
        if !names.insert(name.to_owned()) {
            continue; // the same path twice
        }
        if store_mount_point(&scratch.store, name, physical)? {
            // Made read-only all at once below. The flags a fallback remount must keep are
            // those of the mount holding the path: one look per directory of inputs.
            let parent = physical.parent().unwrap_or(physical).to_path_buf();
            let locked = match locked_by_dir.get(&parent) {
                Some(l) => *l,
                None => {
                    let l = locked_flags(physical)?;
                    locked_by_dir.insert(parent, l);
                    l
                }
            };
            p.bind(physical, logical, false)?;
            read_only.push((cstring(&p.at(logical))?, locked));
        }
    }
    if scratch.reused {
        let keep: std::collections::BTreeSet<&std::ffi::OsStr> = names
            .iter()
            .map(|n: &std::ffi::OsString| n.as_os_str())
            .collect();
        prune_scratch_store(&scratch.store, &keep)?;
    }
    if !read_only.is_empty() {
        p.ops.push(Op::ReadOnlyChildren {
            top: cstring(&p.at(store_dir))?,
            children: read_only,
        });
    }
    for (logical, _) in &spec.outputs {
        let name = store_name(logical, store_dir, "output")?;
        if names.contains(name) {
            return Err(invalid(format!(
                "output '{}' is also an input",
                logical.display()
            )));
        }
    }
    host_paths.sort();
    for (inside, outside) in host_paths {
        p.mirror(outside, inside, true)?;
    }
    Ok(p.ops)
}
