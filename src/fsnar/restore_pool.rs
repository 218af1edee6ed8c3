//! Parallel creation of small files for [`super::restore`].
//!
//! Unpacking a tree of many small files is bound by the kernel's file creation, one file at
//! a time. Once a NAR shows that it has many files, [`FilePool`] takes small files off the
//! parsing thread: their contents (at most [`POOL_MAX_FILE`] bytes each, at most
//! [`POOL_QUEUE`] queued, in batches of [`BATCH`], so memory stays bounded) go with a
//! handle of their (already created) directory to worker threads, which create, write and
//! finish them exactly as the parsing thread would (`openat` with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` relative to the directory handle). Directories and symlinks
//! are still made by the parsing thread, in NAR order, and directories are finished (mode,
//! mtime) only after every worker is done, since creating entries in them would change
//! their mtime.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use rustix::fs::Mode;

use super::sys::{self, io_err};
use super::FsNarError;

/// Files up to this size go to the pool.
pub(crate) const POOL_MAX_FILE: u64 = 64 * 1024;
/// Jobs queued at most (bounds the memory held in file contents).
const POOL_QUEUE: usize = 256;
/// The pool starts once a NAR has had this many regular files.
pub(crate) const POOL_AFTER_FILES: u64 = 64;

/// One small file to create.
pub(crate) struct FileJob {
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    pub executable: bool,
    pub canonical: bool,
    pub data: Vec<u8>,
    /// For error messages.
    pub path: PathBuf,
}

/// Files handed to a worker at a time (one wake-up per batch, not per file).
const BATCH: usize = 16;

/// Worker threads creating small files.
pub(crate) struct FilePool<'scope> {
    tx: Option<mpsc::SyncSender<Vec<FileJob>>>,
    /// The batch being filled.
    pending: Vec<FileJob>,
    workers: Vec<ScopedJoinHandle<'scope, Result<(), FsNarError>>>,
    failed: Arc<AtomicBool>,
}

impl<'scope> FilePool<'scope> {
    pub(crate) fn start<'env>(scope: &'scope Scope<'scope, 'env>) -> FilePool<'scope> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let (tx, rx) = mpsc::sync_channel::<Vec<FileJob>>(POOL_QUEUE / BATCH);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let workers = (0..threads)
            .map(|_| {
                let (rx, failed) = (rx.clone(), failed.clone());
                scope.spawn(move || loop {
                    let batch = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        rx.recv()
                    };
                    let Ok(batch) = batch else { return Ok(()) };
                    for job in batch {
                        if let Err(e) = write_job(job) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        FilePool {
            tx: Some(tx),
            pending: Vec::with_capacity(BATCH),
            workers,
            failed,
        }
    }

    /// Queues a file; `false` if a worker has failed (then [`FilePool::finish`] says why).
    pub(crate) fn submit(&mut self, job: FileJob) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        self.pending.push(job);
        if self.pending.len() < BATCH {
            return true;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        self.send(batch)
    }

    fn send(&self, batch: Vec<FileJob>) -> bool {
        match &self.tx {
            Some(tx) => tx.send(batch).is_ok(),
            None => false,
        }
    }

    /// Waits for every queued file; the first error of any worker.
    pub(crate) fn finish(mut self) -> Result<(), FsNarError> {
        let last = std::mem::take(&mut self.pending);
        if !last.is_empty() && !self.failed.load(Ordering::Relaxed) {
            self.send(last);
        }
        drop(self.tx.take());
        let mut first = Ok(());
        for w in self.workers.drain(..) {
            let r = w
                .join()
                .map_err(|_| FsNarError::WorkerFailed)
                .and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

fn write_job(job: FileJob) -> Result<(), FsNarError> {
    let mode = if job.canonical {
        sys::file_mode(job.executable)
    } else if job.executable {
        Mode::from_raw_mode(0o777)
    } else {
        Mode::from_raw_mode(0o666)
    };
    let fd = sys::create_file(job.dir.as_fd(), &job.name, mode)
        .map_err(io_err("creating", || job.path.clone()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&job.data)
        .map_err(io_err("writing", || job.path.clone()))?;
    if job.canonical {
        sys::finish_file(&file, job.executable)
            .map_err(io_err("finishing", || job.path.clone()))?;
    }
    Ok(())
}
