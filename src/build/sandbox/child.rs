//! The sandboxed child: what runs between `clone(2)` and `execve(2)`.
//!
//! The child is created by `clone` with new user, mount, PID, IPC, UTS and (unless the build
//! may use the network) network namespaces, in a copy-on-write copy of the parent's memory.
//! The parent may have other threads holding locks (the allocator's among them), so the code
//! here never allocates, never takes a lock and never panics: every path, byte string and
//! pointer array it needs was prepared by the parent in a [`ChildCtx`], and it only makes
//! system calls. A failing step writes `(step, errno)` to the error pipe and exits with 127;
//! a successful `execve` closes the pipe (close-on-exec), which is how the parent knows the
//! builder started.
//!
//! Steps: die with the parent (`PR_SET_PDEATHSIG`); map uid 1000 and gid 100 to the caller's
//! ids (`setgroups` denied first); hostname `localhost`, domain name `(none)`; bring up `lo`
//! in a new network namespace; make every mount private; mount a tmpfs on the prepared root
//! and run the mount plan ([`Op`]s) in it; `pivot_root` into it and detach the old root;
//! remount `/` read-only; `chdir` to the build dir; drop to uid 1000 / gid 100; set
//! `no_new_privs`; stdin from `/dev/null`, stdout and stderr to the log pipe; exec.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr, CString};
use std::io;

/// One step of the mount plan, with every path already under the new root.
#[derive(Debug)]
pub(super) enum Op {
    /// `mkdir`; an existing directory is fine.
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// A fresh tmpfs.
    Tmpfs {
        path: CString,
        data: CString,
    },
    /// A bind mount (recursive), then made read-only if asked; `locked` are the flags of the
    /// source mount that an unprivileged remount must keep (nosuid, nodev, noexec, atime).
    Bind {
        src: CString,
        dst: CString,
        readonly: bool,
        locked: c_ulong,
    },
    /// A fresh procfs for the new PID namespace.
    Proc {
        path: CString,
    },
    /// A private devpts instance; failure is ignored (pseudo-terminals are optional).
    Devpts {
        path: CString,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// A new file with the given contents, mode 0444.
    File {
        path: CString,
        contents: Vec<u8>,
    },
    /// An empty file to bind a file onto.
    Touch {
        path: CString,
    },
    /// Makes every mount below `top` read-only, `top` itself staying writable: one
    /// `mount_setattr` for the whole tree (Linux 5.12), else a remount per child (with the
    /// flags the remount must keep).
    ReadOnlyChildren {
        top: CString,
        children: Vec<(CString, c_ulong)>,
    },
}

impl Op {
    pub(super) fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mkdir { path, .. } => format!("creating directory {}", s(path)),
            Op::Tmpfs { path, .. } => format!("mounting a tmpfs on {}", s(path)),
            Op::Bind { src, dst, .. } => format!("bind-mounting {} on {}", s(src), s(dst)),
            Op::Proc { path } => format!("mounting /proc on {}", s(path)),
            Op::Devpts { path } => format!("mounting devpts on {}", s(path)),
            Op::Symlink { path, .. } => format!("creating symlink {}", s(path)),
            Op::File { path, .. } => format!("writing {}", s(path)),
            Op::Touch { path } => format!("creating {}", s(path)),
            Op::ReadOnlyChildren { top, .. } => {
                format!("making the mounts under {} read-only", s(top))
            }
        }
    }
}

/// The program to run once the sandbox is set up.
pub(super) struct Exec {
    pub builder: CString,
    /// Keep the strings alive for the pointer arrays below.
    pub _argv: Vec<CString>,
    pub _envp: Vec<CString>,
    pub argv_ptrs: Vec<*const c_char>,
    pub envp_ptrs: Vec<*const c_char>,
}

impl Exec {
    pub(super) fn new(builder: CString, argv: Vec<CString>, envp: Vec<CString>) -> Self {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Exec {
            argv_ptrs: ptrs(&argv),
            envp_ptrs: ptrs(&envp),
            builder,
            _argv: argv,
            _envp: envp,
        }
    }
}

/// Everything the child needs, prepared by the parent.
pub(super) struct ChildCtx {
    pub err_fd: c_int,
    pub log_fd: c_int,
    pub null_fd: c_int,
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Whether the child has its own network namespace (bring up `lo`).
    pub new_net: bool,
    /// The (empty) directory that becomes the root.
    pub root: CString,
    pub ops: Vec<Op>,
    /// The working directory after `pivot_root`.
    pub cwd: CString,
    /// `None` for the availability probe: exit 0 after setting up.
    pub exec: Option<Exec>,
}

/// Steps reported through the error pipe; operations of the plan are `OP_BASE + index`.
pub(super) mod step {
    pub const PDEATHSIG: u32 = 1;
    pub const SETGROUPS: u32 = 2;
    pub const UID_MAP: u32 = 3;
    pub const GID_MAP: u32 = 4;
    pub const HOSTNAME: u32 = 5;
    pub const DOMAINNAME: u32 = 6;
    pub const LOOPBACK: u32 = 7;
    pub const PRIVATE: u32 = 8;
    pub const ROOT_TMPFS: u32 = 9;
    pub const PIVOT: u32 = 10;
    pub const RO_ROOT: u32 = 11;
    pub const CHDIR: u32 = 12;
    pub const IDS: u32 = 13;
    pub const NO_NEW_PRIVS: u32 = 14;
    pub const STDIO: u32 = 15;
    pub const EXEC: u32 = 16;
    pub const OP_BASE: u32 = 1000;

    /// What a step number means, for error messages.
    pub fn describe(step: u32, ops: &[super::Op]) -> String {
        let s = match step {
            PDEATHSIG => "setting the parent-death signal",
            SETGROUPS => "denying setgroups in the user namespace",
            UID_MAP => "writing the uid map of the user namespace",
            GID_MAP => "writing the gid map of the user namespace",
            HOSTNAME => "setting the host name",
            DOMAINNAME => "setting the domain name",
            LOOPBACK => "bringing up the loopback interface",
            PRIVATE => "making the mounts private",
            ROOT_TMPFS => "mounting the root tmpfs",
            PIVOT => "pivot_root into the sandbox root",
            RO_ROOT => "making the sandbox root read-only",
            CHDIR => "changing to the build directory",
            IDS => "switching to the build user",
            NO_NEW_PRIVS => "setting no_new_privs",
            STDIO => "redirecting stdin, stdout and stderr",
            EXEC => "executing the builder",
            n => {
                let op = n.checked_sub(OP_BASE).and_then(|i| ops.get(i as usize));
                return op.map_or_else(|| format!("unknown step {n}"), |op| op.describe());
            }
        };
        s.to_owned()
    }
}

/// Entry point of the cloned child; `arg` points to the parent's [`ChildCtx`] (valid in the
/// child's copy of the address space).
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: the parent passes a pointer to a live `ChildCtx`; the child has its own copy of
    // the memory, which nothing else touches.
    let ctx = unsafe { &*(arg as *const ChildCtx) };
    let (step, errno) = match setup(ctx) {
        Ok(()) => unsafe { libc::_exit(0) },
        Err(e) => e,
    };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_le_bytes());
    msg[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: plain system calls on a valid buffer.
    unsafe {
        libc::write(ctx.err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

type StepResult = Result<(), (u32, i32)>;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Maps a `-1` return to the step's error.
fn check(step: u32, ret: c_int) -> StepResult {
    if ret == -1 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}

fn write_file(step: u32, path: &CStr, data: &[u8], create: bool) -> StepResult {
    let flags = libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let flags = if create {
        flags | libc::O_CREAT | libc::O_EXCL
    } else {
        flags
    };
    // SAFETY: system calls on valid, NUL-terminated paths and buffers.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags, 0o444 as libc::c_uint);
        check(step, fd)?;
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = errno();
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err((step, if n < 0 { e } else { libc::EIO }));
        }
    }
    Ok(())
}

fn mount(
    step: u32,
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> StepResult {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: valid NUL-terminated strings or null, as mount(2) allows.
    let ret = unsafe {
        libc::mount(
            p(src),
            dst.as_ptr(),
            p(fstype),
            flags,
            p(data).cast::<c_void>(),
        )
    };
    check(step, ret)
}

fn run_op(step: u32, op: &Op) -> StepResult {
    // SAFETY (all blocks): system calls on prepared NUL-terminated strings.
    match op {
        Op::Mkdir { path, mode } => {
            let ret = unsafe { libc::mkdir(path.as_ptr(), *mode) };
            if ret == -1 && errno() != libc::EEXIST {
                return Err((step, errno()));
            }
            check(step, unsafe { libc::chmod(path.as_ptr(), *mode) })
        }
        Op::Tmpfs { path, data } => mount(
            step,
            Some(c"tmpfs"),
            path,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(data),
        ),
        Op::Bind {
            src,
            dst,
            readonly,
            locked,
        } => {
            mount(
                step,
                Some(src),
                dst,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            if *readonly {
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
                mount(step, None, dst, None, flags, None)?;
            }
            Ok(())
        }
        Op::Proc { path } => mount(
            step,
            Some(c"proc"),
            path,
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        Op::Devpts { path } => {
            let _ = mount(
                step,
                Some(c"devpts"),
                path,
                Some(c"devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some(c"newinstance,ptmxmode=0666,mode=0620"),
            );
            Ok(())
        }
        Op::Symlink { target, path } => check(step, unsafe {
            libc::symlink(target.as_ptr(), path.as_ptr())
        }),
        Op::File { path, contents } => write_file(step, path, contents, true),
        Op::Touch { path } => write_file(step, path, &[], true),
        Op::ReadOnlyChildren { top, children } => {
            if read_only_tree(top) {
                return Ok(());
            }
            for (dst, locked) in children {
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
                mount(step, None, dst, None, flags, None)?;
            }
            Ok(())
        }
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: c_int = 0x8000;

/// Sets read-only on the mount tree at `top`, then clears it on `top` alone. `false` if the
/// kernel cannot (the caller then remounts each child).
fn read_only_tree(top: &CStr) -> bool {
    let set = |flags: c_int, attr: &MountAttr| {
        // SAFETY: a valid path and a `mount_attr` of the size passed.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                top.as_ptr(),
                flags,
                attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        }
    };
    let ro = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if set(AT_RECURSIVE, &ro) != 0 {
        return false;
    }
    let rw = MountAttr {
        attr_set: 0,
        attr_clr: MOUNT_ATTR_RDONLY,
        propagation: 0,
        userns_fd: 0,
    };
    // Clearing what we just set on our own writable bind cannot be refused; if it were, the
    // store dir would stay read-only and the build would fail on creating its outputs.
    set(0, &rw) == 0
}

fn bring_up_loopback() -> StepResult {
    use step::LOOPBACK;
    // SAFETY: a plain socket and ioctl with a zero-initialised `ifreq` on our stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(LOOPBACK, fd)?;
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as c_char;
        ifr.ifr_name[1] = b'o' as c_char;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as _;
        let ret = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        let e = errno();
        libc::close(fd);
        if ret == -1 {
            return Err((LOOPBACK, e));
        }
    }
    Ok(())
}

/// The steps of the module doc, in order; returns only for the probe (`exec == None`) or
/// on failure.
fn setup(ctx: &ChildCtx) -> StepResult {
    own_namespaces(ctx)?;
    build_root(ctx)?;
    enter_root(ctx)?;
    let Some(exec) = &ctx.exec else {
        return Ok(());
    };
    drop_privileges(ctx)?;
    exec_builder(ctx, exec)
}

/// Dies with the parent; maps the build user and group to the caller's (setgroups denied
/// first); sets the host and domain names; brings up `lo` in a new network namespace.
fn own_namespaces(ctx: &ChildCtx) -> StepResult {
    use step::*;
    // SAFETY (all blocks): system calls on valid buffers.
    check(PDEATHSIG, unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0)
    })?;
    write_file(SETGROUPS, c"/proc/self/setgroups", b"deny", false)?;
    write_file(UID_MAP, c"/proc/self/uid_map", &ctx.uid_map, false)?;
    write_file(GID_MAP, c"/proc/self/gid_map", &ctx.gid_map, false)?;
    let host = b"localhost";
    check(HOSTNAME, unsafe {
        libc::sethostname(host.as_ptr().cast(), host.len())
    })?;
    let domain = b"(none)";
    check(DOMAINNAME, unsafe {
        libc::setdomainname(domain.as_ptr().cast(), domain.len())
    })?;
    if ctx.new_net {
        bring_up_loopback()?;
    }
    Ok(())
}

/// Makes every mount private, mounts the root tmpfs and runs the mount plan in it.
fn build_root(ctx: &ChildCtx) -> StepResult {
    use step::*;
    mount(
        PRIVATE,
        None,
        c"/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        ROOT_TMPFS,
        Some(c"tmpfs"),
        &ctx.root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=0755"),
    )?;
    for (i, op) in ctx.ops.iter().enumerate() {
        run_op(OP_BASE + i as u32, op)?;
    }
    Ok(())
}

/// `pivot_root` into the root and detach the old one; remount `/` read-only; `chdir` to
/// the build dir.
fn enter_root(ctx: &ChildCtx) -> StepResult {
    use step::*;
    // SAFETY: system calls on prepared NUL-terminated strings.
    unsafe {
        check(PIVOT, libc::chdir(ctx.root.as_ptr()))?;
        let dot = c".".as_ptr();
        check(
            PIVOT,
            libc::syscall(libc::SYS_pivot_root, dot, dot) as c_int,
        )?;
        check(PIVOT, libc::umount2(dot, libc::MNT_DETACH))?;
        check(PIVOT, libc::chdir(c"/".as_ptr()))?;
    }
    let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    mount(RO_ROOT, None, c"/", None, ro, None)?;
    // SAFETY: as above.
    check(CHDIR, unsafe { libc::chdir(ctx.cwd.as_ptr()) })
}

/// Becomes the build user and group and sets `no_new_privs`.
fn drop_privileges(ctx: &ChildCtx) -> StepResult {
    use step::*;
    // SAFETY: plain system calls.
    unsafe {
        // Raw system calls: glibc's setgid/setuid would try to synchronise the other
        // threads of the parent, which do not exist in the child, and hang.
        check(
            IDS,
            libc::syscall(libc::SYS_setgid, ctx.sandbox_gid) as c_int,
        )?;
        check(
            IDS,
            libc::syscall(libc::SYS_setuid, ctx.sandbox_uid) as c_int,
        )?;
        check(
            NO_NEW_PRIVS,
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )
    }
}

/// stdin from `/dev/null`, stdout and stderr to the log pipe, every other fd closed on
/// exec; then the builder. Returns only if `execve` failed.
fn exec_builder(ctx: &ChildCtx, exec: &Exec) -> StepResult {
    use step::*;
    // SAFETY: system calls on fds we hold and the prepared NUL-terminated pointer arrays.
    unsafe {
        check(STDIO, libc::dup2(ctx.null_fd, 0))?;
        check(STDIO, libc::dup2(ctx.log_fd, 1))?;
        check(STDIO, libc::dup2(ctx.log_fd, 2))?;
        // Nothing else may leak into the builder (best effort: needs Linux 5.11).
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        );
        libc::execve(
            exec.builder.as_ptr(),
            exec.argv_ptrs.as_ptr(),
            exec.envp_ptrs.as_ptr(),
        );
    }
    Err((EXEC, errno()))
}
