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

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
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
) -> Result<&'a OsStr, SandboxError> {
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

    /// An empty file at `inside` to bind a file onto.
    fn touch(&mut self, inside: &Path) -> Result<(), SandboxError> {
        let path = cstring(&self.at(inside))?;
        self.ops.push(Op::Touch { path });
        Ok(())
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
    name: &OsStr,
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
fn prune_scratch_store(scratch_store: &Path, keep: &BTreeSet<&OsStr>) -> Result<(), SandboxError> {
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

/// A store path to bind into the store dir: (logical path, physical path, what it is for
/// messages).
type StoreEntry<'a> = (&'a Path, &'a Path, &'static str);
/// A sandbox path outside the store: (path inside, host path).
type HostPath<'a> = (&'a Path, &'a Path);
/// A mount to make read-only, with the flags its remount must keep.
type ReadOnlyMount = (CString, libc::c_ulong);

/// Plans the sandbox for `spec` in `scratch` (see the module doc). The steps run in this
/// order, which is the order of the mounts.
pub(super) fn plan(spec: &BuildSpec, scratch: &Scratch) -> Result<Vec<Op>, SandboxError> {
    let store_dir = spec.store_dir.as_path();
    check_store_dir(store_dir)?;
    let mut p = Planner {
        root: scratch.root.clone(),
        ops: Vec::new(),
    };
    p.top_dirs()?;
    p.etc(spec.network)?;
    p.dev()?;
    p.proc_and_tmp()?;
    p.bind(&spec.build_dir, Path::new(SANDBOX_BUILD_DIR), false)?;
    let (in_store, host_paths) = split_sandbox_paths(spec)?;
    let names = p.store(store_dir, scratch, in_store)?;
    check_outputs(&spec.outputs, store_dir, &names)?;
    p.host_paths(host_paths)?;
    Ok(p.ops)
}

/// The store dir may not be hidden by (or hide) one of the directories the sandbox makes.
fn check_store_dir(store_dir: &Path) -> Result<(), SandboxError> {
    for top in ["/build", "/dev", "/proc", "/tmp", "/etc"] {
        if store_dir.starts_with(top) {
            return Err(invalid(format!(
                "the store dir '{}' cannot be under {top} in the sandbox",
                store_dir.display()
            )));
        }
    }
    Ok(())
}

/// The store paths to bind into the store dir (the inputs, then the sandbox paths that are
/// directly in it), and the other sandbox paths, sorted (parents before children).
fn split_sandbox_paths(
    spec: &BuildSpec,
) -> Result<(Vec<StoreEntry<'_>>, Vec<HostPath<'_>>), SandboxError> {
    let mut in_store: Vec<StoreEntry<'_>> = spec
        .inputs
        .iter()
        .map(|(logical, physical)| (logical.as_path(), physical.as_path(), "input"))
        .collect();
    let mut host_paths = Vec::new();
    for (inside, outside) in &spec.sandbox_paths {
        check_abs(inside, "sandbox path")?;
        if inside.parent() == Some(spec.store_dir.as_path()) {
            in_store.push((inside, outside, "sandbox path"));
        } else {
            host_paths.push((inside.as_path(), outside.as_path()));
        }
    }
    host_paths.sort();
    Ok((in_store, host_paths))
}

/// No output may have the name of a path bound into the store dir (`names`).
fn check_outputs(
    outputs: &[(PathBuf, PathBuf)],
    store_dir: &Path,
    names: &BTreeSet<OsString>,
) -> Result<(), SandboxError> {
    for (logical, _) in outputs {
        let name = store_name(logical, store_dir, "output")?;
        if names.contains(name) {
            return Err(invalid(format!(
                "output '{}' is also an input",
                logical.display()
            )));
        }
    }
    Ok(())
}

/// The flags a fallback read-only remount must keep are those of the mount holding the
/// path: looked up once per directory of store paths.
#[derive(Default)]
struct LockedFlagsByDir(HashMap<PathBuf, libc::c_ulong>);

impl LockedFlagsByDir {
    fn of(&mut self, physical: &Path) -> Result<libc::c_ulong, SandboxError> {
        let parent = physical.parent().unwrap_or(physical);
        if let Some(l) = self.0.get(parent) {
            return Ok(*l);
        }
        let l = locked_flags(physical)?;
        self.0.insert(parent.to_path_buf(), l);
        Ok(l)
    }
}

impl Planner {
    /// The directories of the root that the other steps fill.
    fn top_dirs(&mut self) -> Result<(), SandboxError> {
        for dir in ["/etc", "/dev", "/proc", "/tmp", SANDBOX_BUILD_DIR] {
            self.mkdir(Path::new(dir), 0o755)?;
        }
        Ok(())
    }

    /// `/etc`: the build users and groups; `hosts` with localhost only, or with network
    /// access the host's `hosts`, `resolv.conf` and `services` (those that exist).
    fn etc(&mut self, network: bool) -> Result<(), SandboxError> {
        self.file("/etc/passwd", PASSWD)?;
        self.file("/etc/group", GROUP)?;
        if !network {
            return self.file("/etc/hosts", HOSTS);
        }
        for name in ["/etc/hosts", "/etc/resolv.conf", "/etc/services"] {
            let name = Path::new(name);
            if name.exists() {
                self.touch(name)?;
                self.bind(name, name, true)?;
            }
        }
        Ok(())
    }

    /// `/dev`: the host's harmless devices (those that exist), a tmpfs on `/dev/shm`, an own
    /// devpts on `/dev/pts`, and the usual symlinks into it and `/proc/self/fd`.
    fn dev(&mut self) -> Result<(), SandboxError> {
        for dev in DEVICES {
            let host = Path::new("/dev").join(dev);
            if host.exists() {
                self.touch(&host)?;
                self.bind(&host, &host, false)?;
            }
        }
        self.mkdir(Path::new("/dev/shm"), 0o755)?;
        self.ops.push(Op::Tmpfs {
            path: cstring(&self.at(Path::new("/dev/shm")))?,
            data: c"mode=1777".to_owned(),
        });
        self.mkdir(Path::new("/dev/pts"), 0o755)?;
        self.ops.push(Op::Devpts {
            path: cstring(&self.at(Path::new("/dev/pts")))?,
        });
        self.symlink("pts/ptmx", "/dev/ptmx")?;
        self.symlink("/proc/self/fd", "/dev/fd")?;
        for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
            self.symlink(&format!("/proc/self/fd/{i}"), &format!("/dev/{name}"))?;
        }
        Ok(())
    }

    /// A fresh `/proc` and a world-writable (sticky) `/tmp`.
    fn proc_and_tmp(&mut self) -> Result<(), SandboxError> {
        self.ops.push(Op::Proc {
            path: cstring(&self.at(Path::new("/proc")))?,
        });
        self.ops.push(Op::Tmpfs {
            path: cstring(&self.at(Path::new("/tmp")))?,
            data: c"mode=1777".to_owned(),
        });
        Ok(())
    }

    /// The store dir: the scratch store, with the store paths `in_store` bind-mounted into
    /// it and then made read-only all at once. A reused scratch store loses what an earlier
    /// build left. Returns the names of the bound paths.
    fn store(
        &mut self,
        store_dir: &Path,
        scratch: &Scratch,
        in_store: Vec<StoreEntry<'_>>,
    ) -> Result<BTreeSet<OsString>, SandboxError> {
        self.mkdir_parents(store_dir)?;
        self.mkdir(store_dir, 0o755)?;
        self.bind(&scratch.store, store_dir, false)?;
        let (names, read_only) = self.store_paths(store_dir, &scratch.store, in_store)?;
        if scratch.reused {
            let keep: BTreeSet<&OsStr> = names.iter().map(OsString::as_os_str).collect();
            prune_scratch_store(&scratch.store, &keep)?;
        }
        if !read_only.is_empty() {
            self.ops.push(Op::ReadOnlyChildren {
                top: cstring(&self.at(store_dir))?,
                children: read_only,
            });
        }
        Ok(names)
    }

    /// Binds each of `in_store` (the first of a name only) on its mount point in the
    /// scratch store; symlinks are copied instead. Returns the names, and the mounts to make
    /// read-only with the flags their remount must keep.
    fn store_paths(
        &mut self,
        store_dir: &Path,
        scratch_store: &Path,
        in_store: Vec<StoreEntry<'_>>,
    ) -> Result<(BTreeSet<OsString>, Vec<ReadOnlyMount>), SandboxError> {
        let mut names = BTreeSet::new();
        let mut read_only = Vec::new();
        let mut locked = LockedFlagsByDir::default();
        for (logical, physical, what) in in_store {
            let name = store_name(logical, store_dir, what)?;
            if !names.insert(name.to_owned()) {
                continue; // the same path twice
            }
            if store_mount_point(scratch_store, name, physical)? {
                let flags = locked.of(physical)?;
                self.bind(physical, logical, false)?;
                read_only.push((cstring(&self.at(logical))?, flags));
            }
        }
        Ok((names, read_only))
    }

    /// The sandbox paths outside the store, read-only, in the given order.
    fn host_paths(&mut self, host_paths: Vec<HostPath<'_>>) -> Result<(), SandboxError> {
        for (inside, outside) in host_paths {
            self.mirror(outside, inside, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
