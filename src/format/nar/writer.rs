//! Canonical NAR encoder.
//!
//! [`NarWriter`] is a low-level encoder that can only produce canonical NARs: it checks every
//! entry name, the strictly increasing byte order of names inside each directory, symlink
//! targets, the nesting depth, the call sequence and that exactly the announced number of bytes
//! of file contents is written. Every mistake is a [`NarWriteError`], never a panic. After the
//! first error the writer refuses further calls.
//!
//! Nodes are written depth-first in NAR order. A node's `name` is the empty slice for the root
//! and its entry name inside a directory:
//!
//! ```text
//! let mut w = NarWriter::new(out);
//! w.begin_directory(b"")?;
//! w.regular_bytes(b"a", false, b"hello")?;
//! w.symlink(b"b", b"a")?;
//! w.end_directory()?;
//! let (out, nar_size) = w.finish()?;
//! ```
//!
//! Small tokens are gathered in an internal 64 KiB buffer, so `out` does not need its own
//! buffering; large contents chunks go straight to `out`.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::{
    check_name, check_target, padding_len, show_bytes, MAX_DEPTH, NAR_MAGIC, TOK_CLOSE,
    TOK_CONTENTS, TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE, TOK_NAME, TOK_NODE, TOK_OPEN,
    TOK_REGULAR, TOK_SYMLINK, TOK_TARGET, TOK_TYPE,
};

const BUF_SIZE: usize = 64 * 1024;

/// Why a [`NarWriter`] call was refused.
#[derive(Debug, Error)]
pub enum NarWriteError {
    #[error("I/O error while writing the NAR")]
    Io(#[source] io::Error),
    #[error("invalid entry name '{name}' ({reason})")]
    InvalidName { name: String, reason: &'static str },
    #[error("the root node must have an empty name, got '{name}'")]
    NamedRoot { name: String },
    #[error("entry '{name}' does not sort after the previous entry '{prev}'")]
    NotSorted { name: String, prev: String },
    #[error("duplicate entry '{name}'")]
    Duplicate { name: String },
    #[error("invalid symlink target ({reason})")]
    InvalidTarget { reason: &'static str },
    #[error("entry '{name}' would be nested deeper than {MAX_DEPTH} levels")]
    TooDeep { name: String },
    #[error("file contents size mismatch: announced {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("{op} is not allowed {state}")]
    BadCall {
        op: &'static str,
        state: &'static str,
    },
    #[error("the NAR writer already failed and cannot continue")]
    Poisoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The root node was not started.
    Root,
    /// Inside a directory, between entries.
    InDirectory,
    /// Inside the contents of a regular file.
    Contents {
        size: u64,
        remaining: u64,
    },
    /// The root node is complete.
    Done,
    Failed,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::Root => "before the root node",
            State::InDirectory => "inside a directory",
            State::Contents { .. } => "while writing file contents",
            State::Done => "after the root node",
            State::Failed => "after an error",
        }
    }
}

/// A canonical NAR encoder over any `io::Write`. See the module documentation.
pub struct NarWriter<W: Write> {
    out: W,
    buf: Box<[u8]>,
    fill: usize,
    /// Bytes accepted so far (buffered or written).
    written: u64,
    state: State,
    /// For each open directory, the previous entry name (empty before the first entry: real
    /// names are never empty).
    dirs: Vec<Vec<u8>>,
}

impl<W: Write> NarWriter<W> {
    /// Starts a NAR (the magic is buffered, nothing is written to `out` yet).
    pub fn new(out: W) -> Self {
        let mut w = NarWriter {
            out,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            fill: 0,
            written: 0,
            state: State::Root,
            dirs: Vec::new(),
        };
        // The buffer is empty and larger than the magic: this cannot reach `out` or fail.
        if w.put_str(NAR_MAGIC).is_err() {
            w.state = State::Failed;
        }
        w
    }

    /// Number of NAR bytes produced so far (the NarSize once the root node is complete).
    pub fn nar_size(&self) -> u64 {
        self.written
    }

    /// Number of directories currently open.
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    /// Whether the root node is complete.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Writes a whole regular file whose contents (exactly `size` bytes) come from `contents`.
    /// Reading stops after `size` bytes; fewer bytes is a [`NarWriteError::SizeMismatch`].
    pub fn regular<R: Read + ?Sized>(
        &mut self,
        name: &[u8],
        executable: bool,
        size: u64,
        contents: &mut R,
    ) -> Result<(), NarWriteError> {
        self.begin_regular(name, executable, size)?;
        let mut remaining = size;
        while remaining > 0 {
            if self.fill == self.buf.len() {
                self.guard(|w| w.flush_buf())?;
            }
            let space = self.buf.len() - self.fill;
            let want = usize::try_from(remaining).map_or(space, |r| r.min(space));
            let start = self.fill;
            let n = loop {
                match contents.read(&mut self.buf[start..start + want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.fail(NarWriteError::Io(e)),
                    // A `Read` claiming more than the buffer it was given is broken.
                    Ok(n) if n > want => {
                        return self.fail(NarWriteError::Io(io::Error::other(
                            "reader returned more bytes than requested",
                        )))
                    }
                    Ok(n) => break n,
                }
            };
            if n == 0 {
                return self.fail(NarWriteError::SizeMismatch {
                    expected: size,
                    actual: size - remaining,
                });
            }
            self.fill += n;
            self.written += n as u64;
            remaining -= n as u64;
        }
        self.state = State::Contents { size, remaining: 0 };
        self.end_regular()
    }

    /// Writes a whole regular file from a byte slice.
    pub fn regular_bytes(
        &mut self,
        name: &[u8],
        executable: bool,
        contents: &[u8],
    ) -> Result<(), NarWriteError> {
        self.begin_regular(name, executable, contents.len() as u64)?;
        self.write_contents(contents)?;
        self.end_regular()
    }

    /// Starts a regular file of `size` bytes; then call [`NarWriter::write_contents`] until
    /// exactly `size` bytes were given, and [`NarWriter::end_regular`].
    pub fn begin_regular(
        &mut self,
        name: &[u8],
        executable: bool,
        size: u64,
    ) -> Result<(), NarWriteError> {
        self.start_node(name, "a regular file")?;
        self.guard(|w| {
            w.put_str(TOK_REGULAR)?;
            if executable {
                w.put_str(TOK_EXECUTABLE)?;
                w.put_str(b"")?;
            }
            w.put_str(TOK_CONTENTS)?;
            w.put(&size.to_le_bytes())
        })?;
        self.state = State::Contents {
            size,
            remaining: size,
        };
        Ok(())
    }

    /// Writes the next chunk of the current regular file's contents.
    pub fn write_contents(&mut self, data: &[u8]) -> Result<(), NarWriteError> {
        let State::Contents { size, remaining } = self.state else {
            return self.bad_call("write_contents");
        };
        if data.len() as u64 > remaining {
            return self.fail(NarWriteError::SizeMismatch {
                expected: size,
                actual: size - remaining + data.len() as u64,
            });
        }
        self.state = State::Contents {
            size,
            remaining: remaining - data.len() as u64,
        };
        if data.len() >= BUF_SIZE / 2 {
            self.guard(|w| {
                w.flush_buf()?;
                w.out.write_all(data)
            })?;
            self.written += data.len() as u64;
            Ok(())
        } else {
            self.guard(|w| w.put(data))
        }
    }

    /// Ends the current regular file; all announced bytes must have been written.
    pub fn end_regular(&mut self) -> Result<(), NarWriteError> {
        let State::Contents { size, remaining } = self.state else {
            return self.bad_call("end_regular");
        };
        if remaining != 0 {
            return self.fail(NarWriteError::SizeMismatch {
                expected: size,
                actual: size - remaining,
            });
        }
        let pad = padding_len(size);
        self.guard(|w| w.put(&[0u8; 8][..pad]))?;
        self.end_node()
    }

    /// Writes a symbolic link.
    pub fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), NarWriteError> {
        if let Err(reason) = check_target(target) {
            return self.fail(NarWriteError::InvalidTarget { reason });
        }
        self.start_node(name, "a symlink")?;
        self.guard(|w| {
            w.put_str(TOK_SYMLINK)?;
            w.put_str(TOK_TARGET)?;
            w.put_str(target)
        })?;
        self.end_node()
    }

    /// Starts a directory; its entries follow in strictly increasing byte order of their names,
    /// then [`NarWriter::end_directory`].
    pub fn begin_directory(&mut self, name: &[u8]) -> Result<(), NarWriteError> {
        self.start_node(name, "a directory")?;
        self.guard(|w| w.put_str(TOK_DIRECTORY))?;
        self.dirs.push(Vec::new());
        self.state = State::InDirectory;
        Ok(())
    }

    /// Ends the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), NarWriteError> {
        if self.state != State::InDirectory {
            return self.bad_call("end_directory");
        }
        self.dirs.pop();
        self.end_node()
    }

    /// Flushes everything and gives back the output and the NarSize. The root node must be
    /// complete.
    pub fn finish(mut self) -> Result<(W, u64), NarWriteError> {
        if self.state != State::Done {
            return self.bad_call("finish");
        }
        self.guard(|w| {
            w.flush_buf()?;
            w.out.flush()
        })?;
        Ok((self.out, self.written))
    }

    /// Checks the state and the name, then writes the entry header (inside a directory) and
    /// `( type`.
    fn start_node(&mut self, name: &[u8], what: &'static str) -> Result<(), NarWriteError> {
        match self.state {
            State::Root => {
                if !name.is_empty() {
                    return self.fail(NarWriteError::NamedRoot {
                        name: show_bytes(name),
                    });
                }
            }
            State::InDirectory => {
                if let Err(reason) = check_name(name) {
                    return self.fail(NarWriteError::InvalidName {
                        name: show_bytes(name),
                        reason,
                    });
                }
                if self.dirs.len() > MAX_DEPTH {
                    return self.fail(NarWriteError::TooDeep {
                        name: show_bytes(name),
                    });
                }
                let Some(prev) = self.dirs.last_mut() else {
                    return self.fail(NarWriteError::Poisoned);
                };
                match name.cmp(prev.as_slice()) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal => {
                        return self.fail(NarWriteError::Duplicate {
                            name: show_bytes(name),
                        })
                    }
                    std::cmp::Ordering::Less => {
                        let prev = show_bytes(prev);
                        return self.fail(NarWriteError::NotSorted {
                            name: show_bytes(name),
                            prev,
                        });
                    }
                }
                prev.clear();
                prev.extend_from_slice(name);
                self.guard(|w| {
                    for tok in [TOK_ENTRY, TOK_OPEN, TOK_NAME, name, TOK_NODE] {
                        w.put_str(tok)?;
                    }
                    Ok(())
                })?;
            }
            _ => return self.bad_call(what),
        }
        self.guard(|w| {
            w.put_str(TOK_OPEN)?;
            w.put_str(TOK_TYPE)
        })
    }

    /// Closes the current node, and its directory entry if it is not the root.
    fn end_node(&mut self) -> Result<(), NarWriteError> {
        let in_directory = !self.dirs.is_empty();
        self.guard(|w| {
            w.put_str(TOK_CLOSE)?;
            if in_directory {
                w.put_str(TOK_CLOSE)?;
            }
            Ok(())
        })?;
        self.state = if in_directory {
            State::InDirectory
        } else {
            State::Done
        };
        Ok(())
    }

    fn bad_call<T>(&mut self, op: &'static str) -> Result<T, NarWriteError> {
        let err = match self.state {
            State::Failed => NarWriteError::Poisoned,
            state => NarWriteError::BadCall {
                op,
                state: state.describe(),
            },
        };
        self.fail(err)
    }

    fn fail<T>(&mut self, err: NarWriteError) -> Result<T, NarWriteError> {
        self.state = State::Failed;
        Err(err)
    }

    fn guard(&mut self, f: impl FnOnce(&mut Self) -> io::Result<()>) -> Result<(), NarWriteError> {
        match f(self) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(NarWriteError::Io(e)),
        }
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.fill > 0 {
            let fill = self.fill;
            self.fill = 0;
            self.out.write_all(&self.buf[..fill])?;
        }
        Ok(())
    }

    /// Appends bytes to the internal buffer, flushing it to `out` whenever it is full.
    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.fill == self.buf.len() {
                self.flush_buf()?;
            }
            let n = data.len().min(self.buf.len() - self.fill);
            self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            self.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn put_str(&mut self, s: &[u8]) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&[0u8; 8][..padding_len(s.len() as u64)])
    }
}
