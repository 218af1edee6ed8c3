//! Tree walker feeding a [`NarWriter`], with parallel read-ahead of file contents and an
//! optional canonical copy ("mirror") of the tree written on the way.
//!
//! The main thread walks the tree in NAR order (directories read and sorted by raw bytes,
//! entries `lstat`ed, symlinks read with `readlink`, nothing followed) and queues the items
//! ahead of the serialisation. Regular files become jobs for a small pool of reader threads
//! (2 to 4), which open them relative to their directory handle, check that they are still the
//! same regular file, and read them in chunks of at most [`CHUNK`] bytes into bounded channels.
//! The main thread serialises the items strictly in order, waiting for each file's chunks.
//!
//! Memory stays bounded: at most [`MAX_JOBS`] files and about [`BUDGET`] bytes of contents are
//! in flight (a large file counts for the few chunks its channel can hold), and at most
//! [`MAX_QUEUE`] items are queued. The one thing that grows with the tree is unavoidable: the
//! sorted name lists of the directories on the current path (entries must be sorted before the
//! first one is serialised), about 50 bytes per entry, like Nix.
//!
//! In mirror mode, directories and symlinks of the copy are created while walking, the reader
//! threads also write each file to its copy (created with `O_EXCL|O_NOFOLLOW`, canonical mode,
//! mtime 1), and each copied directory gets mtime 1 and mode 0555 once all its entries are done.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use rustix::fs::{FileType, CWD};

use super::sys::{self, io_err, join, AlignedBuf};
use super::FsNarError;
use crate::format::nar::{NarWriter, MAX_DEPTH};

/// Size of a read chunk of a file.
pub(crate) const CHUNK: usize = 1024 * 1024;
/// Chunks a file's channel holds before its reader thread waits.
const CHANNEL_CAP: usize = 2;
/// Most files in flight (queued for or held by reader threads).
const MAX_JOBS: usize = 256;
/// Most bytes of contents in flight (approximately; see `cost`).
const BUDGET: u64 = 16 * 1024 * 1024;
/// Most items queued ahead of the serialisation.
const MAX_QUEUE: usize = 4096;

/// Where a tree is being copied to: the directory handle and name of the copy of the current
/// node (`None` = relative to the working directory).
type Dest = (Option<Arc<OwnedFd>>, CString);

/// One regular file to read (and maybe copy).
struct FileJob {
    dir: Option<Arc<OwnedFd>>,
    name: CString,
    size: u64,
    executable: bool,
    /// The source path, for error messages.
    path: PathBuf,
    dest: Option<Dest>,
}

enum Msg {
    Chunk(AlignedBuf),
    Done,
    Failed(FsNarError),
}

fn fd_or_cwd(fd: &Option<Arc<OwnedFd>>) -> BorrowedFd<'_> {
    fd.as_ref().map_or(CWD, |fd| fd.as_fd())
}

/// Reads a file (and copies it if asked), handing each chunk to `deliver`, which returns false
/// to stop. Ends with `Msg::Done` or `Msg::Failed`. `dest_created` is set once the copy exists.
fn run_file_job(
    job: &FileJob,
    abort: &AtomicBool,
    dest_created: &AtomicBool,
    deliver: &mut dyn FnMut(Msg) -> bool,
) {
    match copy_file(job, abort, dest_created, deliver) {
        Ok(true) => {
            deliver(Msg::Done);
        }
        Ok(false) => {}
        Err(e) => {
            deliver(Msg::Failed(e));
        }
    }
}

fn copy_file(
    job: &FileJob,
    abort: &AtomicBool,
    dest_created: &AtomicBool,
    deliver: &mut dyn FnMut(Msg) -> bool,
) -> Result<bool, FsNarError> {
    let path = || job.path.clone();
    let fd = sys::open_read(fd_or_cwd(&job.dir), &job.name).map_err(io_err("opening", path))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err("checking", path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || sys::size_of(&st) != job.size
    {
        return Err(FsNarError::Changed { path: path() });
    }
    let mut src = std::fs::File::from(fd);
    let mut direct = false;
    let mut out = match &job.dest {
        None => None,
        Some((dir, name)) => {
            let fd = sys::create_file(fd_or_cwd(dir), name, sys::file_mode(job.executable))
                .map_err(|e| match e {
                    // Only the root has no directory handle: `name` is then the target path.
                    rustix::io::Errno::EXIST if dir.is_none() => FsNarError::TargetExists {
                        path: PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())),
                    },
                    e => io_err("creating the copy of", path)(e),
                })?;
            dest_created.store(true, Ordering::Relaxed);
            if job.size >= sys::DIRECT_MIN_SIZE {
                direct = sys::set_direct(&fd, true);
            }
            Some(std::fs::File::from(fd))
        }
    };
    let mut remaining = job.size;
    while remaining > 0 {
        if abort.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let n = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut buf = AlignedBuf::new(n, direct);
        src.read_exact(buf.bytes_mut())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FsNarError::Changed { path: path() },
                _ => io_err("reading", path)(e),
            })?;
        if let Some(out) = &mut out {
            sys::write_maybe_direct(out, buf.bytes(), &mut direct)
                .map_err(io_err("writing the copy of", path))?;
        }
        remaining -= n as u64;
        if !deliver(Msg::Chunk(buf)) {
            return Ok(false);
        }
    }
    if let Some(out) = &out {
        sys::finish_file(out, job.executable).map_err(io_err("finishing the copy of", path))?;
    }
    Ok(true)
}

/// What the walker queued for the serialisation, in NAR order.
enum Item {
    Dir(Vec<u8>),
    /// End of a directory; in mirror mode, the handle of its copy, finished at that point.
    EndDir(Option<Arc<OwnedFd>>, Arc<PathBuf>),
    Symlink(Vec<u8>, Vec<u8>),
    File {
        name: Vec<u8>,
        executable: bool,
        size: u64,
        rx: Receiver<Msg>,
    },
}

/// A directory being walked.
struct Level {
    fd: Arc<OwnedFd>,
    dest: Option<Arc<OwnedFd>>,
    path: Arc<PathBuf>,
    entries: std::vec::IntoIter<CString>,
}

struct Walker {
    stack: Vec<Level>,
    queue: VecDeque<Item>,
    jobs_in_flight: usize,
    bytes_in_flight: u64,
    job_tx: mpsc::Sender<(FileJob, SyncSender<Msg>)>,
}

/// What a file in flight counts against [`BUDGET`].
fn cost(size: u64) -> u64 {
    size.min((CHUNK * (CHANNEL_CAP + 2)) as u64) + 256
}

impl Walker {
    fn can_step(&self) -> bool {
        !self.stack.is_empty()
            && self.queue.len() < MAX_QUEUE
            && self.jobs_in_flight < MAX_JOBS
            && self.bytes_in_flight < BUDGET
    }

    /// Walks one more entry (or closes a finished directory).
    fn step(&mut self) -> Result<(), FsNarError> {
        let depth = self.stack.len();
        let Some(level) = self.stack.last_mut() else {
            return Ok(());
        };
        let Some(name) = level.entries.next() else {
            if let Some(level) = self.stack.pop() {
                self.queue.push_back(Item::EndDir(level.dest, level.path));
            }
            return Ok(());
        };
        let dir_path = level.path.clone();
        let path = || join(&dir_path, name.to_bytes());
        if depth > MAX_DEPTH {
            return Err(FsNarError::TooDeep { path: path() });
        }
        let st = sys::lstat_at(level.fd.as_fd(), &name).map_err(io_err("inspecting", path))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = sys::open_dir(level.fd.as_fd(), &name).map_err(io_err("opening", path))?;
                let entries = sys::read_sorted(&fd).map_err(io_err("listing", path))?;
                let dest = match &level.dest {
                    Some(d) => Some(Arc::new(
                        sys::create_dir(d.as_fd(), &name)
                            .map_err(io_err("creating the copy of", path))?,
                    )),
                    None => None,
                };
                self.queue.push_back(Item::Dir(name.as_bytes().to_vec()));
                let child = Level {
                    fd: Arc::new(fd),
                    dest,
                    path: Arc::new(path()),
                    entries: entries.into_iter(),
                };
                self.stack.push(child);
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(level.fd.as_fd(), &name, Vec::new())
                    .map_err(io_err("reading the symlink", path))?;
                if let Some(d) = &level.dest {
                    rustix::fs::symlinkat(&target, d.as_fd(), &name)
                        .and_then(|()| sys::finish_symlink(d.as_fd(), &name))
                        .map_err(io_err("creating the copy of", path))?;
                }
                self.queue
                    .push_back(Item::Symlink(name.as_bytes().to_vec(), target.into_bytes()));
            }
            FileType::RegularFile => {
                let size = sys::size_of(&st);
                let path = path();
                let job = FileJob {
                    dir: Some(level.fd.clone()),
                    dest: level.dest.clone().map(|d| (Some(d), name.clone())),
                    name,
                    size,
                    executable: sys::is_executable(st.st_mode),
                    path,
                };
                self.submit(job)?;
            }
            other => {
                return Err(FsNarError::UnsupportedType {
                    path: path(),
                    kind: sys::type_name(other),
                })
            }
        }
        Ok(())
    }

    fn submit(&mut self, job: FileJob) -> Result<(), FsNarError> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAP);
        self.queue.push_back(Item::File {
            name: job.name.as_bytes().to_vec(),
            executable: job.executable,
            size: job.size,
            rx,
        });
        self.jobs_in_flight += 1;
        self.bytes_in_flight += cost(job.size);
        self.job_tx
            .send((job, tx))
            .map_err(|_| FsNarError::WorkerFailed)
    }
}

fn worker(jobs: &Mutex<Receiver<(FileJob, SyncSender<Msg>)>>, abort: &AtomicBool) {
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((job, tx)) = next else { return };
        if abort.load(Ordering::Relaxed) {
            continue;
        }
        let created = AtomicBool::new(false);
        run_file_job(&job, abort, &created, &mut |msg| tx.send(msg).is_ok());
    }
}

fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// Serialises the tree at `src` into `nar`; with `mirror`, also copies it canonically to that
/// new path. `created` is set once the copy's root exists (so the caller can remove it).
pub(crate) fn walk<W: Write>(
    src: &Path,
    mirror: Option<&Path>,
    nar: &mut NarWriter<W>,
    created: &mut bool,
) -> Result<(), FsNarError> {
    let src_c = sys::c_path(src)?;
    let dst_c = mirror.map(sys::c_path).transpose()?;
    let path = || src.to_path_buf();
    let st = sys::lstat_at(CWD, &src_c).map_err(io_err("inspecting", path))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(CWD, &src_c, Vec::new()).map_err(io_err("reading", path))?;
            if let (Some(dst), Some(dst_c)) = (mirror, &dst_c) {
                rustix::fs::symlinkat(&target, CWD, dst_c).map_err(|e| exists_or(e, dst))?;
                *created = true;
                sys::finish_symlink(CWD, dst_c).map_err(io_err("finishing", || dst.into()))?;
            }
            nar.symlink(b"", target.as_bytes())?;
            Ok(())
        }
        FileType::RegularFile => {
            let job = FileJob {
                dir: None,
                name: src_c,
                size: sys::size_of(&st),
                executable: sys::is_executable(st.st_mode),
                path: path(),
                dest: dst_c.map(|c| (None, c)),
            };
            let abort = AtomicBool::new(false);
            let dest_created = AtomicBool::new(false);
            nar.begin_regular(b"", job.executable, job.size)?;
            let mut result = Ok(());
            run_file_job(&job, &abort, &dest_created, &mut |msg| {
                result = match msg {
                    Msg::Chunk(buf) => nar.write_contents(buf.bytes()).map_err(FsNarError::from),
                    Msg::Done => nar.end_regular().map_err(FsNarError::from),
                    Msg::Failed(e) => Err(e),
                };
                result.is_ok()
            });
            *created = dest_created.load(Ordering::Relaxed);
            result
        }
        FileType::Directory => {
            let fd = sys::open_dir(CWD, &src_c).map_err(io_err("opening", path))?;
            let entries = sys::read_sorted(&fd).map_err(io_err("listing", path))?;
            let dest = match (mirror, &dst_c) {
                (Some(dst), Some(dst_c)) => {
                    let fd = sys::create_dir(CWD, dst_c).map_err(|e| exists_or(e, dst))?;
                    *created = true;
                    Some(Arc::new(fd))
                }
                _ => None,
            };
            let root = Level {
                fd: Arc::new(fd),
                dest,
                path: Arc::new(path()),
                entries: entries.into_iter(),
            };
            walk_directory(root, nar)
        }
        other => Err(FsNarError::UnsupportedType {
            path: path(),
            kind: sys::type_name(other),
        }),
    }
}

fn exists_or(e: rustix::io::Errno, dst: &Path) -> FsNarError {
    if e == rustix::io::Errno::EXIST {
        FsNarError::TargetExists { path: dst.into() }
    } else {
        io_err("creating", || dst.into())(e)
    }
}

fn walk_directory<W: Write>(root: Level, nar: &mut NarWriter<W>) -> Result<(), FsNarError> {
    let abort = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::channel();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        for _ in 0..worker_count() {
            s.spawn(|| worker(&job_rx, &abort));
        }
        let mut walker = Walker {
            stack: vec![root],
            queue: VecDeque::from([Item::Dir(Vec::new())]),
            jobs_in_flight: 0,
            bytes_in_flight: 0,
            job_tx,
        };
        let result = serialise(&mut walker, nar);
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Dropping the walker drops the job sender and every file receiver, so the reader
        // threads stop; the scope then joins them.
        drop(walker);
        result
    })
}

fn serialise<W: Write>(walker: &mut Walker, nar: &mut NarWriter<W>) -> Result<(), FsNarError> {
    loop {
        while walker.can_step() {
            walker.step()?;
        }
        let Some(item) = walker.queue.pop_front() else {
            return Ok(());
        };
        match item {
            Item::Dir(name) => nar.begin_directory(&name)?,
            Item::EndDir(dest, path) => {
                nar.end_directory()?;
                if let Some(fd) = dest {
                    sys::finish_dir(&*fd, true)
                        .map_err(io_err("finishing the copy of", || path.to_path_buf()))?;
                }
            }
            Item::Symlink(name, target) => nar.symlink(&name, &target)?,
            Item::File {
                name,
                executable,
                size,
                rx,
            } => {
                nar.begin_regular(&name, executable, size)?;
                loop {
                    match rx.recv() {
                        Ok(Msg::Chunk(buf)) => nar.write_contents(buf.bytes())?,
                        Ok(Msg::Done) => break,
                        Ok(Msg::Failed(e)) => return Err(e),
                        Err(_) => return Err(FsNarError::WorkerFailed),
                    }
                }
                nar.end_regular()?;
                walker.jobs_in_flight -= 1;
                walker.bytes_in_flight -= cost(size);
            }
        }
    }
}
