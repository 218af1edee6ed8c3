//! Strict NAR unpacking into a new path.
//!
//! [`restore`] parses the stream with the strict [`NarReader`] and creates the tree at a path
//! that must not exist yet. Everything below it is created relative to open directory handles
//! (`mkdirat`, `openat` with `O_CREAT|O_EXCL|O_NOFOLLOW`, `symlinkat`), so nothing is ever
//! written outside the target, even for hostile NARs: names are checked by the reader (no `/`,
//! `.`, `..`, NUL, duplicates), and an existing entry is never reused or followed.
//!
//! The NAR bytes are hashed (sha256) and counted while they stream by; [`RestoreStats`] gives
//! them back, so the caller can check NarHash/NarSize before making the tree visible (e.g.
//! restore into a temporary name, compare, then rename). On any error the partially created
//! target is removed before returning.

use std::ffi::CString;
#[cfg(test)]
use std::io;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use rustix::fs::{Mode, CWD};
use sha2::{Digest, Sha256};

use super::hashing::HashingReader;
use super::restore_pool::{FileJob, FilePool, POOL_AFTER_FILES, POOL_MAX_FILE};
use super::sys::{self, io_err, join, AlignedBuf};
use super::{make_writable_and_remove, FsNarError};
use crate::format::nar::{NarEvent, NarReader};

/// How to restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Create the canonical store form as it is written: files 0444 (0555 if executable),
    /// directories 0555 once filled, mtime 1 everywhere. Otherwise files are 0666/0777 and
    /// directories 0777, less the umask, with the current time.
    pub canonicalise: bool,
}

impl RestoreOptions {
    /// Options for unpacking into the store: canonical.
    pub fn canonical() -> Self {
        RestoreOptions { canonicalise: true }
    }
}

/// `true` is shorthand for [`RestoreOptions::canonical`], `false` for the default.
impl From<bool> for RestoreOptions {
    fn from(canonicalise: bool) -> Self {
        RestoreOptions { canonicalise }
    }
}

impl From<&RestoreOptions> for RestoreOptions {
    fn from(opts: &RestoreOptions) -> Self {
        *opts
    }
}

/// What [`restore`] consumed and created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Bytes of NAR consumed (the NarSize).
    pub nar_size: u64,
    /// sha256 of the NAR bytes consumed (the NarHash).
    pub nar_sha256: [u8; 32],
    pub regular_files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Sum of the sizes of the regular files.
    pub contents_size: u64,
    /// sha256 of the contents when the NAR is a single regular file of at most
    /// `SMALL_BUF_SIZE` bytes (what checking a flat or text content address needs),
    /// computed as it is written.
    pub root_file_sha256: Option<[u8; 32]>,
}

/// Size of the buffers large files go through.
const BUF_SIZE: usize = 1024 * 1024;
/// Size of the buffer smaller files go through.
const SMALL_BUF_SIZE: usize = 256 * 1024;

/// Unpacks the NAR read from `reader` to `dst`, which must not exist yet (its parent must).
/// The stream must hold exactly one canonical NAR and nothing after it.
///
/// Returns the size and sha256 of the bytes read, which on success are exactly the NAR. On
/// error nothing is left at `dst` (unless it existed before, which is
/// [`FsNarError::TargetExists`] and leaves it untouched).
pub fn restore<R: Read>(
    reader: R,
    dst: impl AsRef<Path>,
    opts: impl Into<RestoreOptions>,
) -> Result<RestoreStats, FsNarError> {
    let opts = opts.into();
    let dst = dst.as_ref();
    // Large file contents bypass this buffer (reads bigger than it go straight through);
    // it is zeroed once per restore, which a bigger one would make costly for small NARs.
    let mut nar = NarReader::new(BufReader::with_capacity(
        64 * 1024,
        HashingReader::new(reader),
    ));
    let mut builder = Builder {
        root: sys::c_path(dst)?,
        root_path: dst.to_path_buf(),
        canonical: opts.canonicalise,
        stack: Vec::new(),
        deferred: None,
        current: dst.to_path_buf(),
        created: false,
    };
    let mut stats = RestoreStats::default();
    let result = std::thread::scope(|scope| {
        let mut pool: Option<FilePool<'_>> = None;
        let unpacked = unpack(&mut nar, &mut builder, &mut stats, scope, &mut pool);
        let pooled = pool.map_or(Ok(()), FilePool::finish);
        match (unpacked, pooled) {
            // The parser stopped because a worker failed: the worker's error says why.
            (Err(FsNarError::WorkerFailed), Err(e)) => Err(e),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => builder.finish_deferred(),
        }
    });
    let created = builder.created;
    drop(builder);
    match result {
        Ok(()) => {
            stats.nar_size = nar.offset();
            let (digest, _) = nar.into_inner().into_inner().finish();
            stats.nar_sha256 = digest;
            Ok(stats)
        }
        Err(e) => {
            if created {
                if let Err(cleanup) = make_writable_and_remove(dst) {
                    tracing::warn!(path = %dst.display(), error = %cleanup, "cannot remove partial restore");
                }
            }
            Err(e)
        }
    }
}

fn unpack<'scope, 'env, R: Read>(
    nar: &mut NarReader<R>,
    builder: &mut Builder,
    stats: &mut RestoreStats,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    pool: &mut Option<FilePool<'scope>>,
) -> Result<(), FsNarError> {
    let mut buf: Option<Vec<u8>> = None;
    while let Some(event) = nar.next()? {
        match event {
            NarEvent::Directory { name } => {
                builder.begin_dir(&name)?;
                stats.directories += 1;
            }
            NarEvent::EndDirectory => builder.end_dir()?,
            NarEvent::Symlink { name, target } => {
                builder.symlink(&name, &target)?;
                stats.symlinks += 1;
            }
            NarEvent::Regular {
                name,
                executable,
                size,
            } => {
                let file = RegularFile {
                    name: &name,
                    executable,
                    size,
                };
                if !pooled(nar, builder, stats, scope, pool, &file)? {
                    write_file(nar, builder, stats, &mut buf, &file)?;
                }
                stats.regular_files += 1;
                stats.contents_size += size;
            }
        }
    }
    Ok(())
}

/// A regular file's header, as the NAR gives it before its contents.
struct RegularFile<'a> {
    name: &'a [u8],
    executable: bool,
    size: u64,
}

/// Hands a small file inside a directory to the writer pool (started once enough files
/// were seen). Returns false when the file is for the caller to write.
fn pooled<'scope, 'env, R: Read>(
    nar: &mut NarReader<R>,
    builder: &mut Builder,
    stats: &RestoreStats,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    pool: &mut Option<FilePool<'scope>>,
    file: &RegularFile<'_>,
) -> Result<bool, FsNarError> {
    if file.size > POOL_MAX_FILE || builder.stack.is_empty() {
        return Ok(false);
    }
    if pool.is_none() && stats.regular_files >= POOL_AFTER_FILES {
        *pool = Some(FilePool::start(scope));
        builder.deferred = Some(Vec::new());
    }
    let Some(pool) = pool.as_mut() else {
        return Ok(false);
    };
    // `size` is at most POOL_MAX_FILE.
    let mut data = vec![0u8; file.size as usize];
    let got = fill(nar, &mut data)?;
    data.truncate(got);
    let (dir, c_name) = builder.place_shared(file.name)?;
    let job = FileJob {
        dir,
        name: c_name,
        executable: file.executable,
        canonical: builder.canonical,
        data,
        path: builder.path_of(file.name),
    };
    if !pool.submit(job) {
        return Err(FsNarError::WorkerFailed);
    }
    Ok(true)
}

/// Creates and writes a file on this thread: large ones with direct I/O, a NAR that is a
/// single small file hashed on the way, the rest through the shared buffer `buf`.
fn write_file<R: Read>(
    nar: &mut NarReader<R>,
    builder: &mut Builder,
    stats: &mut RestoreStats,
    buf: &mut Option<Vec<u8>>,
    regular: &RegularFile<'_>,
) -> Result<(), FsNarError> {
    let size = regular.size;
    let (fd, path) = builder.create_file(regular.name, regular.executable)?;
    let mut file = std::fs::File::from(fd);
    if size >= sys::DIRECT_MIN_SIZE {
        let direct = sys::set_direct(&file, true);
        write_large(nar, &mut file, direct, &path)?;
    } else if builder.stack.is_empty() && size <= SMALL_BUF_SIZE as u64 {
        // The NAR is this one small file: hash its contents on the way.
        let mut data = vec![0u8; size as usize];
        let got = fill(nar, &mut data)?;
        file.write_all(&data[..got])
            .map_err(io_err("writing", || path.clone()))?;
        stats.root_file_sha256 = Some(Sha256::digest(&data[..got]).into());
    } else if size > 0 {
        // Grown to what the files need, so a NAR of small files never
        // zeroes a large buffer.
        let want = usize::try_from(size).map_or(SMALL_BUF_SIZE, |s| s.min(SMALL_BUF_SIZE));
        let buf = buf.get_or_insert_with(Vec::new);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        loop {
            let len = fill(nar, &mut buf[..want])?;
            if len == 0 {
                break;
            }
            file.write_all(&buf[..len])
                .map_err(io_err("writing", || path.clone()))?;
        }
    }
    builder.finish_file(&file, regular.executable, &path)
}

/// Fills `buf` as far as the current file's contents allow; returns how much was filled.
fn fill<R: Read>(nar: &mut NarReader<R>, buf: &mut [u8]) -> Result<usize, FsNarError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = nar.read_contents(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Buffers in flight for one large file.
const LARGE_BUFFERS: usize = 3;

/// Copies the contents of a large file with a writer thread, so that parsing and hashing the
/// NAR overlap with writing. Full buffers keep direct writes aligned.
fn write_large<R: Read>(
    nar: &mut NarReader<R>,
    file: &mut std::fs::File,
    direct: bool,
    path: &Path,
) -> Result<(), FsNarError> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(AlignedBuf, usize)>(LARGE_BUFFERS);
    let (empty_tx, empty_rx) = mpsc::channel::<AlignedBuf>();
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<()> {
            let mut direct = direct;
            for (buf, len) in full_rx {
                sys::write_maybe_direct(file, &buf.bytes()[..len], &mut direct)?;
                // The reader side may be gone already; then the buffer is simply dropped.
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let mut allocated = 0;
        let read_result = loop {
            let buf = match empty_rx.try_recv() {
                Ok(buf) => Some(buf),
                Err(_) if allocated < LARGE_BUFFERS => {
                    allocated += 1;
                    Some(AlignedBuf::new(BUF_SIZE, true))
                }
                // Blocks until the writer returns a buffer; `None` if the writer stopped.
                Err(_) => empty_rx.recv().ok(),
            };
            let Some(mut buf) = buf else { break Ok(()) };
            match fill(nar, buf.bytes_mut()) {
                Ok(0) => break Ok(()),
                Ok(len) => {
                    if full_tx.send((buf, len)).is_err() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(full_tx);
        let write_result = writer.join().map_err(|_| FsNarError::WorkerFailed)?;
        read_result?;
        write_result.map_err(io_err("writing", || path.to_path_buf()))
    })
}

/// Creates the tree, node by node, relative to open directory handles.
struct Builder {
    root: CString,
    root_path: PathBuf,
    canonical: bool,
    /// Handles of the open directories, innermost last.
    stack: Vec<Arc<OwnedFd>>,
    /// While a [`FilePool`] writes files: directories to finish once it is done, in order.
    deferred: Option<Vec<(Arc<OwnedFd>, PathBuf)>>,
    /// Path of the innermost open directory, for error messages.
    current: PathBuf,
    created: bool,
}

impl Builder {
    fn path_of(&self, name: &[u8]) -> PathBuf {
        join(&self.current, name)
    }

    /// The directory handle and C name where the node `name` goes (the root goes to the
    /// target path itself).
    fn place(&self, name: &[u8]) -> Result<(BorrowedFd<'_>, CString), FsNarError> {
        match self.stack.last() {
            None => Ok((CWD, self.root.clone())),
            Some(fd) => Ok((fd.as_fd(), sys::c_name(name, &self.current)?)),
        }
    }

    /// Like [`Builder::place`], for a node inside a directory, with a handle of that
    /// directory that can be sent to another thread.
    fn place_shared(&self, name: &[u8]) -> Result<(Arc<OwnedFd>, CString), FsNarError> {
        let fd = self.stack.last().ok_or(FsNarError::WorkerFailed)?;
        Ok((fd.clone(), sys::c_name(name, &self.current)?))
    }

    /// Finishes the directories whose finishing waited for the file pool (children first:
    /// they were deferred in the order they ended).
    fn finish_deferred(&mut self) -> Result<(), FsNarError> {
        for (fd, path) in self.deferred.take().unwrap_or_default() {
            sys::finish_dir(&*fd, self.canonical).map_err(io_err("finishing", || path))?;
        }
        Ok(())
    }

    fn creation_error(&self, e: rustix::io::Errno, name: &[u8]) -> FsNarError {
        if self.stack.is_empty() && e == rustix::io::Errno::EXIST {
            FsNarError::TargetExists {
                path: self.root_path.clone(),
            }
        } else {
            io_err("creating", || self.path_of(name))(e)
        }
    }

    fn begin_dir(&mut self, name: &[u8]) -> Result<(), FsNarError> {
        let (dirfd, c_name) = self.place(name)?;
        let fd = sys::create_dir(dirfd, &c_name).map_err(|e| self.creation_error(e, name))?;
        if self.stack.is_empty() {
            self.created = true;
        } else {
            self.current = join(&self.current, name);
        }
        self.stack.push(Arc::new(fd));
        Ok(())
    }

    fn end_dir(&mut self) -> Result<(), FsNarError> {
        if let Some(fd) = self.stack.pop() {
            match self.deferred.as_mut() {
                Some(later) => later.push((fd, self.current.clone())),
                None => sys::finish_dir(&*fd, self.canonical)
                    .map_err(io_err("finishing", || self.current.clone()))?,
            }
            if !self.stack.is_empty() {
                self.current.pop();
            }
        }
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), FsNarError> {
        let (dirfd, c_name) = self.place(name)?;
        rustix::fs::symlinkat(target, dirfd, &c_name).map_err(|e| self.creation_error(e, name))?;
        if self.canonical {
            sys::finish_symlink(dirfd, &c_name)
                .map_err(io_err("finishing", || self.path_of(name)))?;
        }
        if self.stack.is_empty() {
            self.created = true;
        }
        Ok(())
    }

    fn create_file(
        &mut self,
        name: &[u8],
        executable: bool,
    ) -> Result<(OwnedFd, PathBuf), FsNarError> {
        let (dirfd, c_name) = self.place(name)?;
        let mode = if self.canonical {
            sys::file_mode(executable)
        } else if executable {
            Mode::from_raw_mode(0o777)
        } else {
            Mode::from_raw_mode(0o666)
        };
        let fd =
            sys::create_file(dirfd, &c_name, mode).map_err(|e| self.creation_error(e, name))?;
        let path = self.path_of(name);
        if self.stack.is_empty() {
            self.created = true;
        }
        Ok((fd, path))
    }

    fn finish_file(&self, fd: impl AsFd, executable: bool, path: &Path) -> Result<(), FsNarError> {
        if self.canonical {
            sys::finish_file(fd, executable).map_err(io_err("finishing", || path.to_path_buf()))?;
        }
        Ok(())
    }
}

/// Makes a reader that fails: used by tests of the cleanup path.
#[cfg(test)]
pub(crate) struct FailAfter<R> {
    pub inner: R,
    pub left: usize,
}

#[cfg(test)]
impl<R: Read> Read for FailAfter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("injected failure"));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}
