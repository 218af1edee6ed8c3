//! Running one builder process, isolated like Nix 2.8's Linux sandbox or (opt-in) directly.
//!
//! [`run`] takes a [`BuildSpec`] (the builder, its arguments and exact environment, the input
//! closure and the outputs as pairs of logical and physical paths, the build dir, extra
//! read-only host paths, network access, limits) and blocks until the builder is done,
//! copying its stdout and stderr to a log writer.
//!
//! [`SandboxMode::Namespaces`]: the builder is PID 1 of new user, mount, PID, IPC, UTS and
//! (except for fixed-output derivations, which keep the host's network) network namespaces.
//! It runs as uid 1000 / gid 100 (`nixbld`), mapped to the caller's uid and gid, with host
//! name `localhost` and domain name `(none)`, `no_new_privs` set and no capabilities. Its root
//! is a fresh read-only tmpfs holding only the inputs at their *logical* paths (bind-mounted
//! read-only from their physical paths, so stores whose physical dir differs from the logical
//! one build correctly), a writable store dir for the outputs, the build dir at `/build`, a
//! minimal `/dev`, a fresh `/proc`, `/tmp`, `/etc/{passwd,group,hosts}` and the sandbox
//! paths. See `plan` for the file system, `child` for the steps before `execve`, `spawn` for
//! why `clone(2)`, `supervise` for the log, the limits and cleanup.
//!
//! [`SandboxMode::None`] (`--no-sandbox`): the builder runs on the host with exactly the
//! given environment and the real build dir as working directory, in its own process group.
//! Paths are used as they are, so the builder and outputs must be valid host paths.
//!
//! The environment is the caller's: [`standard_env`] computes Nix's.
//!
//! When running as root, the build user is mapped to root outside the sandbox: files the
//! builder creates belong to root, and the build dir and scratch dir are kept mode 0700 so
//! nobody else can reach them before the outputs are canonicalised.

mod child;
mod env;
mod plan;
mod spawn;
mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use thiserror::Error;

use crate::error::PathIoError;

pub use env::{apply_pass_as_file, pass_as_file_name, standard_env, EnvParams, SANDBOX_BUILD_DIR};

/// What to run and with which inputs; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct BuildSpec {
    /// The builder, by its logical path (it is normally in the input closure).
    pub builder: PathBuf,
    /// Arguments after argv\[0\] (which is the builder's base name, as in Nix).
    pub args: Vec<String>,
    /// Exactly the environment to give the builder (see [`standard_env`]).
    pub env: BTreeMap<String, String>,
    /// The logical store dir, e.g. `/nix/store`.
    pub store_dir: PathBuf,
    /// The input closure: (logical store path, physical path) pairs, bound read-only.
    pub inputs: Vec<(PathBuf, PathBuf)>,
    /// The outputs: (logical store path, physical path to move the result to after a
    /// successful build). The physical path must not exist, and must be on the same file
    /// system as the build dir's parent. An output the builder did not create is simply not
    /// moved: the caller checks.
    pub outputs: Vec<(PathBuf, PathBuf)>,
    /// The real build dir (bound at `/build`); it must exist. Set to mode 0700.
    pub build_dir: PathBuf,
    /// Host paths visible read-only in the sandbox: (path inside, path outside).
    pub sandbox_paths: Vec<(PathBuf, PathBuf)>,
    /// Keep the host's network (fixed-output derivations only).
    pub network: bool,
    /// Kill the builder after this long in total.
    pub timeout: Option<Duration>,
    /// Kill the builder after this long without output.
    pub max_silent: Option<Duration>,
    /// Reuse scratch dirs across builds (saves creating and removing the inputs' mount
    /// points each time); without a pool each build makes its own next to the build dir.
    pub scratch_pool: Option<Arc<ScratchPool>>,
}

/// Scratch dirs kept for reuse by later builds, in a directory on the file system of the
/// build dirs and outputs that the caller owns (and removes).
#[derive(Debug)]
pub struct ScratchPool {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl ScratchPool {
    pub fn new(dir: PathBuf) -> Self {
        ScratchPool {
            dir,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// A free scratch dir, and whether it was used before.
    fn take(&self) -> Result<(PathBuf, bool), SandboxError> {
        if let Some(p) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok((p, true));
        }
        let p = self.dir.join(format!(
            "scratch-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p).map_err(plan::io_err("creating", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
            .map_err(plan::io_err("changing the mode of", &p))?;
        Ok((p, false))
    }

    fn give_back(&self, p: PathBuf) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(p);
    }
}

/// Returns a pooled scratch dir when dropped.
struct PooledScratch<'a>(&'a ScratchPool, Option<PathBuf>);

impl Drop for PooledScratch<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.1.take() {
            self.0.give_back(p);
        }
    }
}

/// How to isolate the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Linux namespaces (the default).
    Namespaces,
    /// No isolation (`--no-sandbox`).
    None,
}

impl SandboxMode {
    /// The build dir as the builder sees it (`NIX_BUILD_TOP`): `/build` in the sandbox, the
    /// real build dir without one.
    pub fn build_top(self, build_dir: &Path) -> String {
        match self {
            SandboxMode::Namespaces => SANDBOX_BUILD_DIR.to_owned(),
            SandboxMode::None => build_dir.to_string_lossy().into_owned(),
        }
    }
}

/// How the builder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// We killed it: the timeout expired.
    TimedOut,
    /// We killed it: no output for longer than the maximum silent time.
    SilentTooLong,
}

impl BuildStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == BuildStatus::Exited(0)
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildStatus::Exited(0) => write!(f, "builder succeeded"),
            BuildStatus::Exited(c) => write!(f, "builder failed with exit code {c}"),
            BuildStatus::Signaled(s) => write!(f, "builder was killed by signal {s}"),
            BuildStatus::TimedOut => write!(f, "builder timed out"),
            BuildStatus::SilentTooLong => write!(f, "builder produced no output for too long"),
        }
    }
}

/// Errors of running a builder (its failure is a [`BuildStatus`], not an error).
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("invalid build: {0}")]
    InvalidSpec(String),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("cannot start the builder: {op}")]
    Spawn {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting up the build sandbox failed: {step}")]
    Setup {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot execute the builder '{builder}'")]
    Exec {
        builder: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for the builder")]
    Wait(#[source] io::Error),
    #[error("cannot copy the builder's output to the log")]
    Log(#[source] io::Error),
}

/// Runs the builder described by `spec`, writing its stdout and stderr to `log`; see the
/// module doc. After a successful build the outputs the builder created are at their
/// physical paths (not yet canonical). Every process the builder started is gone when this
/// returns, whatever the outcome.
pub fn run(
    spec: &BuildSpec,
    mode: SandboxMode,
    log: &mut dyn Write,
) -> Result<BuildStatus, SandboxError> {
    plan::check_abs(&spec.store_dir, "store dir")?;
    let meta =
        fs::metadata(&spec.build_dir).map_err(plan::io_err("inspecting", &spec.build_dir))?;
    if !meta.is_dir() {
        return Err(SandboxError::InvalidSpec(format!(
            "build dir '{}' is not a directory",
            spec.build_dir.display()
        )));
    }
    fs::set_permissions(&spec.build_dir, fs::Permissions::from_mode(0o700))
        .map_err(plan::io_err("changing the mode of", &spec.build_dir))?;
    for (_, physical) in &spec.outputs {
        if fs::symlink_metadata(physical).is_ok() {
            return Err(SandboxError::InvalidSpec(format!(
                "output destination '{}' already exists",
                physical.display()
            )));
        }
    }
    let limits = supervise::Limits {
        timeout: spec.timeout,
        max_silent: spec.max_silent,
    };
    match mode {
        SandboxMode::Namespaces => run_sandboxed(spec, limits, log),
        SandboxMode::None => {
            for (logical, _) in &spec.outputs {
                if fs::symlink_metadata(logical).is_ok() {
                    return Err(SandboxError::InvalidSpec(format!(
                        "output path '{}' already exists",
                        logical.display()
                    )));
                }
            }
            let started = spawn::spawn_direct(spec)?;
            let mut child = started.child;
            let status = supervise::supervise(&mut child, started.log, limits, log)?;
            if status.success() {
                for (logical, physical) in &spec.outputs {
                    if logical != physical && fs::symlink_metadata(logical).is_ok() {
                        fs::rename(logical, physical).map_err(plan::io_err("moving", logical))?;
                    }
                }
            }
            Ok(status)
        }
    }
}

/// Removes the scratch dir (read-only parts included) when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = crate::fsnar::make_writable_and_remove(&self.0) {
            tracing::warn!("cannot remove the sandbox scratch dir: {e}");
        }
    }
}

fn run_sandboxed(
    spec: &BuildSpec,
    limits: supervise::Limits,
    log: &mut dyn Write,
) -> Result<BuildStatus, SandboxError> {
    let (_owned, _pooled, scratch) = match &spec.scratch_pool {
        Some(pool) => {
            let (dir, reused) = pool.take()?;
            let guard = PooledScratch(pool, Some(dir.clone()));
            let scratch = if reused {
                plan::Scratch::reuse(&dir)
            } else {
                plan::Scratch::create(&dir)?
            };
            (None, Some(guard), scratch)
        }
        None => {
            let parent = spec.build_dir.parent().unwrap_or(Path::new("/"));
            let dir = tempfile::Builder::new()
                .prefix(".sandbox-")
                .tempdir_in(parent)
                .map_err(plan::io_err("creating a scratch dir in", parent))?
                .keep();
            let owned = ScratchDir(dir);
            let scratch = plan::Scratch::create(&owned.0)?;
            (Some(owned), None, scratch)
        }
    };
    let ops = plan::plan(spec, &scratch)?;
    let started = spawn::spawn_sandboxed(spec, &scratch.root, ops)?;
    let mut child = started.child;
    let status = supervise::supervise(&mut child, started.log, limits, log)?;
    if status.success() {
        for (logical, physical) in &spec.outputs {
            let name = plan::store_name(logical, &spec.store_dir, "output")?;
            let built = scratch.store.join(name);
            if fs::symlink_metadata(&built).is_ok() {
                fs::rename(&built, physical).map_err(plan::io_err("moving the output", &built))?;
            }
        }
    }
    Ok(status)
}

/// Whether builds can run in [`SandboxMode::Namespaces`] here, found by setting up a small
/// sandbox in a child process (once per process; the answer is cached). The error explains
/// why not, and what to do.
pub fn namespaces_available() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(probe_explained).clone()
}

fn probe_explained() -> Result<(), String> {
    let err = match spawn::probe() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let errno = match &err {
        SandboxError::Spawn { source, .. } | SandboxError::Setup { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    };
    let mut msg = format!("{err}");
    if let Some(src) = std::error::Error::source(&err) {
        msg.push_str(&format!(": {src}"));
    }
    let hint = match (&err, errno) {
        (SandboxError::Spawn { .. }, Some(libc::EPERM)) => {
            "creating user namespaces is not permitted: they may be disabled \
             (sysctl kernel.unprivileged_userns_clone=0, or \
             kernel.apparmor_restrict_unprivileged_userns=1) or blocked by a seccomp \
             profile (for example a container runtime's default one)"
        }
        (SandboxError::Spawn { .. }, Some(libc::ENOSPC)) => {
            "the limit on user namespaces is reached (sysctl user.max_user_namespaces)"
        }
        (SandboxError::Spawn { .. }, Some(libc::EINVAL)) => {
            "the kernel lacks user, PID or network namespaces"
        }
        (SandboxError::Setup { step, .. }, _) if step.contains("/proc") => {
            "a fresh /proc cannot be mounted: this usually happens inside a container that \
             hides parts of the host's /proc"
        }
        _ => "the kernel refused part of the sandbox setup",
    };
    Err(format!(
        "the build sandbox is not available: {msg}; {hint}. \
         Builds can run without isolation with --no-sandbox."
    ))
}
