//! Watching a running builder: copying its output to the log, enforcing the timeout and the
//! maximum silent time, and making sure no process is left behind.
//!
//! The builder's stdout and stderr are one pipe, read here with `poll` together with a pidfd
//! of the child (so its exit is noticed at once), in ticks of at most 50 ms; between reads
//! the child is checked with `waitpid(WNOHANG)`. The child is never reaped
//! before the [`Child`] guard says so, so its pid cannot be reused while we may still signal
//! it. Killing means `SIGKILL` to the child, which in the sandbox is PID 1 of its own PID
//! namespace, so the kernel kills every other process in it; without the sandbox the builder
//! runs in its own process group and the whole group is killed (a process that leaves the
//! group escapes: only the sandbox contains everything). A [`Child`] dropped while still
//! running is killed and reaped.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{BuildStatus, SandboxError};

/// How long to keep reading the log after the builder exited, for processes that still
/// hold the pipe (without the sandbox, after the process group was killed).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// The longest one wait for output or exit lasts: bounds how late an exit is noticed where
/// no pidfd is available (and how often an idle build wakes up). Limits never wait for it:
/// a wait is cut short when the timeout or the silence limit is due sooner.
const TICK: Duration = Duration::from_millis(50);

/// A started builder that must be reaped.
#[derive(Debug)]
pub(super) struct Child {
    pid: libc::pid_t,
    /// Kill the process group `pid` too (direct mode).
    group: bool,
    reaped: bool,
}

impl Child {
    pub(super) fn new(pid: libc::pid_t, group: bool) -> Self {
        Child {
            pid,
            group,
            reaped: false,
        }
    }

    /// A pidfd of the (unreaped) child, readable once it has exited; `None` where the
    /// kernel has no `pidfd_open`.
    pub(super) fn pidfd(&self) -> Option<OwnedFd> {
        if self.reaped {
            return None;
        }
        // SAFETY: pidfd_open on our own unreaped child; the result is a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor returned by the kernel.
        Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
    }

    pub(super) fn kill(&self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling our own unreaped child (or its process group).
        unsafe {
            if self.group {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    /// `waitpid`, blocking or not; `Some(raw status)` once reaped.
    pub(super) fn wait(&mut self, block: bool) -> io::Result<Option<i32>> {
        if self.reaped {
            return Err(io::Error::other("child already reaped"));
        }
        let mut status = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags | libc::__WALL) };
            if r == -1 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            self.reaped = true;
            return Ok(Some(status));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.wait(true);
        }
    }
}

fn decode(status: i32) -> BuildStatus {
    if libc::WIFSIGNALED(status) {
        BuildStatus::Signaled(libc::WTERMSIG(status))
    } else {
        BuildStatus::Exited(libc::WEXITSTATUS(status))
    }
}

/// Waits up to `wait` for `fd` to be readable (or hung up).
/// Polls the log (if still open) and the child's pidfd (if any) for at most `wait`:
/// (log readable, child exited).
fn poll_log_and_exit(
    log: Option<&OwnedFd>,
    exit: Option<&OwnedFd>,
    wait: Duration,
) -> io::Result<(bool, bool)> {
    let mut fds = Vec::with_capacity(2);
    for fd in [log, exit].into_iter().flatten() {
        fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    if fds.is_empty() {
        return Ok((false, false));
    }
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` holds valid pollfds.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    let ready = |i: usize| fds.get(i).is_some_and(|p| p.revents != 0);
    Ok(match (log.is_some(), exit.is_some()) {
        (true, true) => (ready(0), ready(1)),
        (true, false) => (ready(0), false),
        (false, _) => (false, ready(0)),
    })
}

fn poll_readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// Reads what is available; `Ok(false)` at end of file.
fn pump(fd: &OwnedFd, buf: &mut [u8], log: &mut dyn Write) -> Result<bool, SandboxError> {
    // SAFETY: reading into a valid buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(true),
            _ => Err(SandboxError::Log(e)),
        };
    }
    if n == 0 {
        return Ok(false);
    }
    log.write_all(&buf[..n as usize])
        .map_err(SandboxError::Log)?;
    Ok(true)
}

/// Limits on a running builder.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub timeout: Option<Duration>,
    pub max_silent: Option<Duration>,
}

/// Copies the builder's output from `log_fd` to `log` until it exits or a limit expires, then
/// makes sure everything it started is gone. The pipe's write ends must already be closed in
/// this process.
pub(super) fn supervise(
    child: &mut Child,
    log_fd: OwnedFd,
    limits: Limits,
    log: &mut dyn Write,
) -> Result<BuildStatus, SandboxError> {
    let start = Instant::now();
    let mut last_output = start;
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = true;
    let exit_fd = child.pidfd();
    let status = loop {
        if let Some(raw) = child.wait(false).map_err(SandboxError::Wait)? {
            break decode(raw);
        }
        let now = Instant::now();
        let mut wait = TICK;
        if let Some(t) = limits.timeout {
            let Some(left) = t.checked_sub(now - start).filter(|d| !d.is_zero()) else {
                child.kill();
                child.wait(true).map_err(SandboxError::Wait)?;
                break BuildStatus::TimedOut;
            };
            wait = wait.min(left);
        }
        if let Some(t) = limits.max_silent {
            let Some(left) = t.checked_sub(now - last_output).filter(|d| !d.is_zero()) else {
                child.kill();
                child.wait(true).map_err(SandboxError::Wait)?;
                break BuildStatus::SilentTooLong;
            };
            wait = wait.min(left);
        }
        // Wake up for output, or as soon as the child exits (its pidfd becomes readable),
        // or when a limit is due.
        let (readable, exited) = poll_log_and_exit(open.then_some(&log_fd), exit_fd.as_ref(), wait)
            .map_err(SandboxError::Log)?;
        if readable {
            open = pump(&log_fd, &mut buf, log)?;
            last_output = Instant::now();
        } else if !open && !exited && exit_fd.is_none() {
            // No pidfd (old kernel): short naps while only the exit is awaited.
            std::thread::sleep(wait.min(Duration::from_millis(2)));
        }
    };
    // Whatever the builder left running goes now (in the sandbox the kernel already did it).
    if child.group {
        // SAFETY: the group is ours; the leader is reaped but the group id cannot be reused
        // while members remain.
        unsafe { libc::kill(-child.pid, libc::SIGKILL) };
    }
    let drain_start = Instant::now();
    while open && drain_start.elapsed() < DRAIN_LIMIT {
        if poll_readable(&log_fd, TICK).map_err(SandboxError::Log)? {
            open = pump(&log_fd, &mut buf, log)?;
        }
    }
    log.flush().map_err(SandboxError::Log)?;
    Ok(status)
}
