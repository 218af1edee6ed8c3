//! Starting the builder: `clone(2)` into new namespaces, or a plain process without the
//! sandbox; and the probe behind [`super::namespaces_available`].
//!
//! Why `clone` with a callback rather than `std::process::Command` with `pre_exec`: a PID
//! namespace only applies to children of the process that creates it, so `unshare` inside
//! `pre_exec` would need a second fork and a waiting middle process, and then our direct
//! child would not be the process whose death takes the namespace down. `clone` with all the
//! namespace flags makes our direct child PID 1 of the new PID namespace; it becomes the
//! builder by `execve`, so `SIGKILL` to it (the pid we reap) kills everything in the sandbox.
//! The child runs on its own stack in a copy-on-write copy of our memory and only makes
//! system calls (see `child`). `clone` with `CLONE_NEWUSER` works in a multi-threaded
//! process, unlike `unshare(CLONE_NEWUSER)`.

use std::ffi::{c_int, c_void, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::child::{self, step, ChildCtx, Exec, Op};
use super::plan::{cstring, SANDBOX_GID, SANDBOX_UID};
use super::supervise::Child;
use super::{BuildSpec, SandboxError};

/// Stack of the cloned child until it execs (it only makes system calls).
const STACK_SIZE: usize = 256 * 1024;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills two fds that we then own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn spawn_err(op: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Spawn { op, source }
}

/// argv: the builder's base name (as Nix does), then the arguments.
pub(super) fn argv(spec: &BuildSpec) -> Result<Vec<CString>, SandboxError> {
    let name = spec
        .builder
        .file_name()
        .unwrap_or_else(|| spec.builder.as_os_str());
    let mut v = vec![cstring(Path::new(name))?];
    for a in &spec.args {
        v.push(
            CString::new(a.as_bytes())
                .map_err(|_| SandboxError::InvalidSpec(format!("argument {a:?} contains NUL")))?,
        );
    }
    Ok(v)
}

fn envp(spec: &BuildSpec) -> Result<Vec<CString>, SandboxError> {
    spec.env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(SandboxError::InvalidSpec(format!(
                    "bad environment variable name {k:?}"
                )));
            }
            CString::new(format!("{k}={v}")).map_err(|_| {
                SandboxError::InvalidSpec(format!("environment variable {k} contains NUL"))
            })
        })
        .collect()
}

/// A started sandboxed child, or the reason it could not start.
pub(super) struct Started {
    pub child: Child,
    pub log: OwnedFd,
}

/// Clones the child into new namespaces with `ops` as its mount plan and waits until it has
/// exec'd the builder (or, for the probe, `exec == None`, until it has exited).
fn clone_child(
    root: &Path,
    ops: Vec<Op>,
    cwd: &str,
    exec: Option<Exec>,
    network: bool,
) -> Result<Started, SandboxError> {
    let (err_r, err_w) = pipe().map_err(spawn_err("creating a pipe"))?;
    let (log_r, log_w) = pipe().map_err(spawn_err("creating a pipe"))?;
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(spawn_err("opening /dev/null"))?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let ctx = ChildCtx {
        err_fd: err_w.as_raw_fd(),
        log_fd: log_w.as_raw_fd(),
        null_fd: null.as_raw_fd(),
        uid_map: format!("{SANDBOX_UID} {uid} 1\n").into_bytes(),
        gid_map: format!("{SANDBOX_GID} {gid} 1\n").into_bytes(),
        sandbox_uid: SANDBOX_UID,
        sandbox_gid: SANDBOX_GID,
        new_net: !network,
        root: cstring(root)?,
        ops,
        cwd: CString::new(cwd).map_err(|_| SandboxError::InvalidSpec("cwd".into()))?,
        exec,
    };
    let pid = clone_into_namespaces(&ctx, network)?;
    let mut child = Child::new(pid, false);
    drop((err_w, log_w, null));
    if let Some((step_no, errno)) = read_setup_report(err_r)? {
        child.kill();
        let _ = child.wait(true);
        return Err(setup_error(&ctx, step_no, errno));
    }
    Ok(Started { child, log: log_r })
}

/// Clones the child, running [`child::child_main`] on `ctx`, into new user, mount, PID, IPC,
/// UTS and (without network access) network namespaces; returns its pid.
fn clone_into_namespaces(ctx: &ChildCtx, network: bool) -> Result<libc::pid_t, SandboxError> {
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    if !network {
        flags |= libc::CLONE_NEWNET;
    }
    let mut stack = vec![0u8; STACK_SIZE];
    // The stack grows down on every Linux architecture we build for; keep it 16-aligned.
    let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15;
    // SAFETY: `child_main` only makes system calls on data in `ctx`, which outlives the call
    // (the child has its own copy of it, and of the stack buffer).
    let pid = unsafe {
        libc::clone(
            child::child_main,
            top as *mut c_void,
            flags,
            ctx as *const ChildCtx as *mut c_void,
        )
    };
    if pid == -1 {
        return Err(SandboxError::Spawn {
            op: "clone into new namespaces",
            source: io::Error::last_os_error(),
        });
    }
    Ok(pid)
}

/// Waits for the child to close the error pipe: `None` when it did so without a word (it
/// exec'd the builder, or the probe's child exited), else the step that failed and its
/// errno.
fn read_setup_report(err_r: OwnedFd) -> Result<Option<(u32, i32)>, SandboxError> {
    let mut report = Vec::new();
    File::from(err_r)
        .read_to_end(&mut report)
        .map_err(spawn_err("reading the sandbox setup status"))?;
    Ok(match (report.get(..4), report.get(4..8)) {
        (Some(s), Some(e)) => Some((
            u32::from_le_bytes(s.try_into().unwrap_or_default()),
            i32::from_le_bytes(e.try_into().unwrap_or_default()),
        )),
        _ => None,
    })
}

/// The error for a child that failed at step `step_no` with `errno`: the builder could not
/// be executed, or a setup step failed.
fn setup_error(ctx: &ChildCtx, step_no: u32, errno: i32) -> SandboxError {
    let source = io::Error::from_raw_os_error(errno);
    if step_no == step::EXEC {
        let builder = ctx
            .exec
            .as_ref()
            .map(|e| e.builder.to_string_lossy().into_owned())
            .unwrap_or_default();
        return SandboxError::Exec {
            builder: builder.into(),
            source,
        };
    }
    SandboxError::Setup {
        step: step::describe(step_no, &ctx.ops),
        source,
    }
}

/// Starts `spec`'s builder in the sandbox planned by `ops` under `root`.
pub(super) fn spawn_sandboxed(
    spec: &BuildSpec,
    root: &Path,
    ops: Vec<Op>,
) -> Result<Started, SandboxError> {
    let exec = Exec::new(cstring(&spec.builder)?, argv(spec)?, envp(spec)?);
    clone_child(
        root,
        ops,
        super::SANDBOX_BUILD_DIR,
        Some(exec),
        spec.network,
    )
}

/// Starts `spec`'s builder without isolation, in its own process group, with exactly the
/// given environment and the real build dir as working directory.
pub(super) fn spawn_direct(spec: &BuildSpec) -> Result<Started, SandboxError> {
    let (log_r, log_w) = pipe().map_err(spawn_err("creating a pipe"))?;
    let log_w2 = log_w.try_clone().map_err(spawn_err("duplicating a pipe"))?;
    let arg0 = spec
        .builder
        .file_name()
        .unwrap_or_else(|| spec.builder.as_os_str());
    let child = Command::new(&spec.builder)
        .arg0(arg0)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.build_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_w))
        .stderr(Stdio::from(log_w2))
        .process_group(0)
        .spawn()
        .map_err(|source| SandboxError::Exec {
            builder: spec.builder.clone(),
            source,
        })?;
    let pid = child.id() as libc::pid_t;
    // The pipe's write ends went into `Command` and are closed by now; we reap the pid
    // ourselves (dropping `std::process::Child` neither kills nor waits).
    drop(child);
    Ok(Started {
        child: Child::new(pid, true),
        log: log_r,
    })
}

/// Sets up a small sandbox (user, mount, PID, network namespaces; tmpfs root, fresh /proc,
/// a read-only bind mount, /dev/null) in a child that exits without running anything.
pub(super) fn probe() -> Result<(), SandboxError> {
    let dir = tempfile::Builder::new()
        .prefix(".sandbox-probe-")
        .tempdir()
        .map_err(spawn_err("creating a temporary directory"))?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root).map_err(spawn_err("creating a temporary directory"))?;
    let at = |p: &str| cstring(&root.join(p));
    let ops = vec![
        Op::Mkdir {
            path: at("proc")?,
            mode: 0o755,
        },
        Op::Proc { path: at("proc")? },
        Op::Mkdir {
            path: at("dev")?,
            mode: 0o755,
        },
        Op::Touch {
            path: at("dev/null")?,
        },
        Op::Bind {
            src: c"/dev/null".to_owned(),
            dst: at("dev/null")?,
            readonly: false,
            locked: 0,
        },
        Op::Mkdir {
            path: at("host")?,
            mode: 0o755,
        },
        Op::Bind {
            src: cstring(dir.path())?,
            dst: at("host")?,
            readonly: true,
            locked: 0,
        },
    ];
    let mut started = clone_child(&root, ops, "/", None, false)?;
    let status = started
        .child
        .wait(true)
        .map_err(SandboxError::Wait)?
        .unwrap_or(-1);
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(SandboxError::Setup {
            step: format!("probe child ended with wait status {status:#x}"),
            source: io::Error::other("unexpected exit"),
        })
    }
}
