//! Install locks of store paths: one byte each in a single file, `locks/paths.lock`.
//!
//! A path's lock is the byte at offset `key(path)` (62 bits of its hash), taken with an
//! open-file-description lock (`F_OFD_SETLK`). Unlike a lock file per path, this creates
//! no file and costs one `fcntl` to take and one to release: substituting a thousand small
//! paths used to create a thousand lock files. The kernel releases the locks of a process
//! that dies.
//!
//! OFD locks belong to an open file description, and every thread of a [`PathLocks`] shares
//! one, so the kernel does not keep those threads apart: an in-process set of held keys
//! does. Two [`PathLocks`] (even in one process) open the file separately and exclude each
//! other through the kernel.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::lock::open_lock_file;
use crate::format::store_path::StorePath;

/// The name of the lock file in the locks dir.
pub const PATH_LOCKS_FILE: &str = "paths.lock";

/// The install locks of one store, as seen by one open handle.
#[derive(Debug)]
pub struct PathLocks {
    file: File,
    /// Keys locked through this handle (the kernel sees one owner for all of them).
    held: Mutex<HashSet<i64>>,
    released: Condvar,
}

/// One path's install lock, released on drop.
#[derive(Debug)]
pub struct PathLock {
    locks: Arc<PathLocks>,
    key: i64,
}

/// The byte that stands for `path`: 62 bits of its hash, so the range never overflows.
fn key(path: &StorePath) -> i64 {
    let bytes = path.hash().as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(first) >> 2) as i64
}

impl PathLocks {
    /// Opens (creating it if needed) the lock file at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<PathLocks>> {
        let file = open_lock_file(path)?;
        Ok(Arc::new(PathLocks {
            file,
            held: Mutex::new(HashSet::new()),
            released: Condvar::new(),
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `path`'s lock, waiting while anyone else (a thread or a process) holds it.
    pub fn lock(self: &Arc<Self>, path: &StorePath) -> io::Result<PathLock> {
        let key = key(path);
        {
            let mut held = self.held();
            while held.contains(&key) {
                held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
            }
            held.insert(key);
        }
        // From here on the key is ours within the process; wait for other processes.
        match self.fcntl(key, libc::F_WRLCK, true) {
            Ok(_) => Ok(self.guard(key)),
            Err(e) => {
                self.forget(key);
                Err(e)
            }
        }
    }

    /// Takes `path`'s lock if nobody holds it.
    pub fn try_lock(self: &Arc<Self>, path: &StorePath) -> io::Result<Option<PathLock>> {
        let key = key(path);
        if !self.held().insert(key) {
            return Ok(None);
        }
        match self.fcntl(key, libc::F_WRLCK, false) {
            Ok(true) => Ok(Some(self.guard(key))),
            Ok(false) => {
                self.forget(key);
                Ok(None)
            }
            Err(e) => {
                self.forget(key);
                Err(e)
            }
        }
    }

    fn guard(self: &Arc<Self>, key: i64) -> PathLock {
        PathLock {
            locks: Arc::clone(self),
            key,
        }
    }

    fn forget(&self, key: i64) {
        self.held().remove(&key);
        self.released.notify_all();
    }

    /// Sets (`F_WRLCK`) or clears (`F_UNLCK`) the lock on byte `key`. `Ok(false)`: another
    /// open file description holds it and `wait` was false.
    fn fcntl(&self, key: i64, kind: libc::c_int, wait: bool) -> io::Result<bool> {
        // SAFETY: `flock` is a plain C struct for which all zeroes is a valid value.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = key as libc::off_t;
        lock.l_len = 1;
        lock.l_pid = 0; // required for OFD locks
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        loop {
            // SAFETY: the fd is open for as long as `self`, and `lock` is a valid `flock`
            // that outlives the call.
            let r = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &lock) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
                _ => return Err(e),
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Unlocking a range we hold cannot fail in a way we could act on.
        if let Err(e) = self.locks.fcntl(self.key, libc::F_UNLCK, false) {
            tracing::warn!("cannot release a path lock: {e}");
        }
        self.locks.forget(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn path(s: &str) -> StorePath {
        s.parse().unwrap()
    }

    const A: &str = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-a";
    const B: &str = "ffffffffffffffffffffffffffffffff-b";

    #[test]
    fn one_holder_per_path_within_a_handle_and_across_handles() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(PATH_LOCKS_FILE);
        let one = PathLocks::open(&file).unwrap();
        let two = PathLocks::open(&file).unwrap();
        let held = one.try_lock(&path(A)).unwrap().expect("free");
        assert!(one.try_lock(&path(A)).unwrap().is_none(), "same handle");
        assert!(two.try_lock(&path(A)).unwrap().is_none(), "other handle");
        // Other paths are independent.
        let other = two.try_lock(&path(B)).unwrap().expect("free");
        assert!(one.try_lock(&path(B)).unwrap().is_none());
        drop(held);
        assert!(two.try_lock(&path(A)).unwrap().is_some());
        drop(other);
        assert!(one.try_lock(&path(B)).unwrap().is_some());
    }

    #[test]
    fn lock_waits_for_the_holder_in_this_handle_and_in_another() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(PATH_LOCKS_FILE);
        for same_handle in [true, false] {
            let one = PathLocks::open(&file).unwrap();
            let two = if same_handle {
                Arc::clone(&one)
            } else {
                PathLocks::open(&file).unwrap()
            };
            let held = one.lock(&path(A)).unwrap();
            let (tx, rx) = mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let l = two.lock(&path(A)).unwrap();
                tx.send(()).unwrap();
                drop(l);
            });
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            drop(held);
            rx.recv_timeout(Duration::from_secs(10)).expect("acquired");
            waiter.join().unwrap();
            assert!(one.try_lock(&path(A)).unwrap().is_some());
        }
    }
}
