//! Strict streaming NAR pull parser.
//!
//! [`NarReader`] turns a byte stream into [`NarEvent`]s in NAR order and accepts only the
//! canonical form described in the parent module. File contents are never buffered: after a
//! [`NarEvent::Regular`], read them with [`NarReader::read_contents`] or [`NarReader::contents`];
//! whatever is left unread is skipped by the next [`NarReader::next`]. Memory use is bounded by
//! the limits of the parent module, whatever the size of the NAR.
//!
//! The reader never reads past the end of the NAR except, in the default mode, to check that the
//! stream ends there. It does many small reads, so give it a buffered reader.

use std::io::{self, Read};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::{
    check_name, check_target, padding_len, show_bytes, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN,
    MAX_TOKEN_LEN, NAR_MAGIC, TOK_CLOSE, TOK_CONTENTS, TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE,
    TOK_NAME, TOK_NODE, TOK_OPEN, TOK_REGULAR, TOK_SYMLINK, TOK_TARGET, TOK_TYPE,
};

/// Everything that can be wrong with a NAR stream. `path` is the entry path inside the NAR
/// (`/` is the root); `offset` is the byte offset in the stream where the problem starts.
#[derive(Debug, Error)]
pub enum NarReadError {
    #[error("I/O error while reading the NAR")]
    Io(#[source] io::Error),
    #[error("NAR truncated: unexpected end of stream at offset {offset}")]
    UnexpectedEof { offset: u64 },
    #[error("not a NAR: bad magic")]
    BadMagic,
    #[error("non-zero padding at offset {offset}")]
    NonZeroPadding { offset: u64 },
    #[error("token of {len} bytes at offset {offset} is longer than the limit of {max}")]
    TokenTooLong { len: u64, max: usize, offset: u64 },
    #[error("at '{path}': expected {expected}, found '{found}' (offset {offset})")]
    UnexpectedToken {
        expected: &'static str,
        found: String,
        path: String,
        offset: u64,
    },
    #[error("at '{path}': unknown file type '{found}'")]
    UnknownType { found: String, path: String },
    #[error("at '{path}': executable marker has a non-empty value")]
    ExecutableNotEmpty { path: String },
    #[error("in directory '{path}': entry name of {len} bytes is longer than {MAX_NAME_LEN}")]
    NameTooLong { len: u64, path: String },
    #[error("in directory '{path}': invalid entry name '{name}' ({reason})")]
    InvalidName {
        name: String,
        reason: &'static str,
        path: String,
    },
    #[error("in directory '{path}': entry '{name}' is not sorted after '{prev}'")]
    UnsortedEntries {
        name: String,
        prev: String,
        path: String,
    },
    #[error("in directory '{path}': duplicate entry '{name}'")]
    DuplicateEntry { name: String, path: String },
    #[error("at '{path}': symlink target of {len} bytes is longer than {MAX_TARGET_LEN}")]
    TargetTooLong { len: u64, path: String },
    #[error("at '{path}': invalid symlink target ({reason})")]
    InvalidTarget { reason: &'static str, path: String },
    #[error("at '{path}': nesting deeper than {MAX_DEPTH} levels")]
    TooDeep { path: String },
    #[error("trailing data after the end of the NAR at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("the NAR reader already failed and cannot continue")]
    Poisoned,
}

impl NarReadError {
    /// The byte offset in the stream where the problem was found, for the errors that are
    /// about a position (truncation, padding, tokens, trailing data, magic).
    pub fn offset(&self) -> Option<u64> {
        match self {
            NarReadError::BadMagic => Some(0),
            NarReadError::UnexpectedEof { offset }
            | NarReadError::NonZeroPadding { offset }
            | NarReadError::TokenTooLong { offset, .. }
            | NarReadError::UnexpectedToken { offset, .. }
            | NarReadError::TrailingData { offset } => Some(*offset),
            _ => None,
        }
    }
}

/// One step of a NAR, in NAR order. The name of the root node is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file of `size` bytes; its contents follow (see [`NarReader::read_contents`]).
    Regular {
        name: Vec<u8>,
        executable: bool,
        size: u64,
    },
    /// A symbolic link.
    Symlink { name: Vec<u8>, target: Vec<u8> },
    /// A directory begins; its entries follow, then a matching [`NarEvent::EndDirectory`].
    Directory { name: Vec<u8> },
    /// The innermost open directory is complete.
    EndDirectory,
}

/// An open directory of the NAR being read.
struct DirFrame {
    /// The previous entry name in this directory, for the order check.
    prev: Option<Vec<u8>>,
    /// Length of `NarReader::path` without this directory's own name.
    path_start: usize,
    /// Length of `NarReader::path` with this directory's own name.
    path_end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet.
    Start,
    /// Inside the contents of a regular file.
    Contents { size: u64, remaining: u64 },
    /// A node (not a directory) was completed; what follows depends on the parent.
    AfterNode,
    /// Inside a directory, before an `entry` or its closing `)`.
    InDirectory,
    /// The root node is complete (and the end of the stream was checked).
    Done,
    /// An error occurred.
    Failed,
}

/// A strict streaming pull parser for canonical NARs. See the module documentation.
pub struct NarReader<R> {
    inner: R,
    offset: u64,
    state: State,
    dirs: Vec<DirFrame>,
    /// Path of the current node, components joined with '/', for error messages.
    path: Vec<u8>,
    /// Length of `path` before the name of the node being parsed.
    node_path_start: usize,
    check_eof: bool,
    skip_buf: Vec<u8>,
}

/// A structural token read into a fixed buffer (no allocation).
struct Token {
    buf: [u8; MAX_TOKEN_LEN],
    len: usize,
}

impl Token {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<R: Read> NarReader<R> {
    /// A reader for a stream that holds exactly one NAR: after the root node it checks that the
    /// stream ends, and reports [`NarReadError::TrailingData`] otherwise.
    pub fn new(inner: R) -> Self {
        Self::with_eof_check(inner, true)
    }

    /// A reader for a NAR embedded in a longer stream (e.g. an export): it stops right after the
    /// root node and reads nothing past it; [`NarReader::into_inner`] gives the stream back.
    pub fn new_embedded(inner: R) -> Self {
        Self::with_eof_check(inner, false)
    }

    fn with_eof_check(inner: R, check_eof: bool) -> Self {
        NarReader {
            inner,
            offset: 0,
            state: State::Start,
            dirs: Vec::new(),
            path: Vec::new(),
            node_path_start: 0,
            check_eof,
            skip_buf: Vec::new(),
        }
    }

    /// Number of NAR bytes consumed so far. After the last event this is the NarSize.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Depth of the innermost open directory (0 before the root directory opens).
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    /// The path of the current node inside the NAR (`/` for the root), for messages.
    pub fn path_display(&self) -> String {
        display_path(&self.path)
    }

    /// Gives back the underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next event, or `None` once the root node is complete. Any contents of the current
    /// regular file not read yet are skipped. After an error, every call fails.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<NarEvent>, NarReadError> {
        if self.state == State::Failed {
            return Err(NarReadError::Poisoned);
        }
        let result = self.step();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Reads contents of the current regular file into `buf`; `Ok(0)` at the end of the file
    /// (or when the current node is not a regular file).
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarReadError> {
        match self.state {
            State::Contents { size, remaining } => {
                if remaining == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let n = match read_retrying(&mut self.inner, &mut buf[..want]) {
                    Ok(0) => Err(NarReadError::UnexpectedEof {
                        offset: self.offset,
                    }),
                    Ok(n) => Ok(n),
                    Err(e) => Err(NarReadError::Io(e)),
                };
                match n {
                    Ok(n) => {
                        self.offset += n as u64;
                        self.state = State::Contents {
                            size,
                            remaining: remaining - n as u64,
                        };
                        Ok(n)
                    }
                    Err(e) => {
                        self.state = State::Failed;
                        Err(e)
                    }
                }
            }
            State::Failed => Err(NarReadError::Poisoned),
            _ => Ok(0),
        }
    }

    /// The contents of the current regular file as an `io::Read` (bounded to the file).
    /// Errors are `io::Error`s wrapping a [`NarReadError`].
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { reader: self }
    }

    /// Bytes of the current regular file not read yet.
    pub fn remaining_contents(&self) -> u64 {
        match self.state {
            State::Contents { remaining, .. } => remaining,
            _ => 0,
        }
    }

    fn step(&mut self) -> Result<Option<NarEvent>, NarReadError> {
        loop {
            match self.state {
                State::Start => {
                    let magic = self.read_token().map_err(|e| match e {
                        NarReadError::TokenTooLong { .. } | NarReadError::NonZeroPadding { .. } => {
                            NarReadError::BadMagic
                        }
                        other => other,
                    })?;
                    if magic.bytes() != NAR_MAGIC {
                        return Err(NarReadError::BadMagic);
                    }
                    return self.node(Vec::new()).map(Some);
                }
                State::Contents { size, remaining } => {
                    self.skip(remaining)?;
                    self.read_padding(size)?;
                    self.expect(TOK_CLOSE, "')' after the file contents")?;
                    self.state = State::AfterNode;
                }
                State::AfterNode => {
                    let Some(dir) = self.dirs.last() else {
                        self.finish_root()?;
                        return Ok(None);
                    };
                    let end = dir.path_end;
                    self.path.truncate(end);
                    self.expect(TOK_CLOSE, "')' closing the directory entry")?;
                    self.state = State::InDirectory;
                }
                State::InDirectory => {
                    let tok = self.read_token()?;
                    if tok.bytes() == TOK_CLOSE {
                        if let Some(dir) = self.dirs.pop() {
                            self.path.truncate(dir.path_start);
                        }
                        self.state = State::AfterNode;
                        return Ok(Some(NarEvent::EndDirectory));
                    }
                    if tok.bytes() != TOK_ENTRY {
                        return Err(self.unexpected("'entry' or ')'", &tok));
                    }
                    let name = self.entry_header()?;
                    return self.node(name).map(Some);
                }
                State::Done => return Ok(None),
                State::Failed => return Err(NarReadError::Poisoned),
            }
        }
    }

    /// Reads `( name <name> node` of a directory entry, checks the name and its order, and
    /// extends the current path with it.
    fn entry_header(&mut self) -> Result<Vec<u8>, NarReadError> {
        self.expect(TOK_OPEN, "'(' opening the entry")?;
        self.expect(TOK_NAME, "'name'")?;
        let len = self.read_u64()?;
        if len > MAX_NAME_LEN as u64 {
            return Err(NarReadError::NameTooLong {
                len,
                path: self.path_display(),
            });
        }
        // `len` <= MAX_NAME_LEN, so the cast is lossless.
        let name = self.read_bytes(len as usize)?;
        if let Err(reason) = check_name(&name) {
            return Err(NarReadError::InvalidName {
                name: show_bytes(&name),
                reason,
                path: self.path_display(),
            });
        }
        let depth = self.dirs.len();
        let Some(dir) = self.dirs.last_mut() else {
            return Err(NarReadError::Poisoned);
        };
        if let Some(prev) = &dir.prev {
            match name.as_slice().cmp(prev.as_slice()) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(NarReadError::DuplicateEntry {
                        name: show_bytes(&name),
                        path: display_path(&self.path),
                    })
                }
                std::cmp::Ordering::Less => {
                    return Err(NarReadError::UnsortedEntries {
                        name: show_bytes(&name),
                        prev: show_bytes(prev),
                        path: display_path(&self.path),
                    })
                }
            }
        }
        match &mut dir.prev {
            Some(prev) => {
                prev.clear();
                prev.extend_from_slice(&name);
            }
            None => dir.prev = Some(name.clone()),
        }
        self.node_path_start = self.path.len();
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(&name);
        if depth > MAX_DEPTH {
            return Err(NarReadError::TooDeep {
                path: self.path_display(),
            });
        }
        self.expect(TOK_NODE, "'node'")?;
        Ok(name)
    }

    /// Reads the start of a node, up to its contents (regular file), its end (symlink) or its
    /// first entry (directory), and returns the matching event.
    fn node(&mut self, name: Vec<u8>) -> Result<NarEvent, NarReadError> {
        self.expect(TOK_OPEN, "'(' opening a node")?;
        self.expect(TOK_TYPE, "'type'")?;
        let ty = self.read_token()?;
        match ty.bytes() {
            TOK_REGULAR => {
                let mut executable = false;
                let mut tok = self.read_token()?;
                if tok.bytes() == TOK_EXECUTABLE {
                    executable = true;
                    let value_len = self.read_u64()?;
                    if value_len != 0 {
                        return Err(NarReadError::ExecutableNotEmpty {
                            path: self.path_display(),
                        });
                    }
                    tok = self.read_token()?;
                    if tok.bytes() != TOK_CONTENTS {
                        return Err(self.unexpected("'contents'", &tok));
                    }
                } else if tok.bytes() != TOK_CONTENTS {
                    return Err(self.unexpected("'executable' or 'contents'", &tok));
                }
                let size = self.read_u64()?;
                self.state = State::Contents {
                    size,
                    remaining: size,
                };
                Ok(NarEvent::Regular {
                    name,
                    executable,
                    size,
                })
            }
            TOK_SYMLINK => {
                self.expect(TOK_TARGET, "'target'")?;
                let len = self.read_u64()?;
                if len > MAX_TARGET_LEN as u64 {
                    return Err(NarReadError::TargetTooLong {
                        len,
                        path: self.path_display(),
                    });
                }
                // `len` <= MAX_TARGET_LEN, so the cast is lossless.
                let target = self.read_bytes(len as usize)?;
                if let Err(reason) = check_target(&target) {
                    return Err(NarReadError::InvalidTarget {
                        reason,
                        path: self.path_display(),
                    });
                }
                self.expect(TOK_CLOSE, "')' after the symlink target")?;
                self.state = State::AfterNode;
                Ok(NarEvent::Symlink { name, target })
            }
            TOK_DIRECTORY => {
                self.dirs.push(DirFrame {
                    prev: None,
                    path_start: self.node_path_start,
                    path_end: self.path.len(),
                });
                self.state = State::InDirectory;
                Ok(NarEvent::Directory { name })
            }
            _ => Err(NarReadError::UnknownType {
                found: show_bytes(ty.bytes()),
                path: self.path_display(),
            }),
        }
    }

    fn finish_root(&mut self) -> Result<(), NarReadError> {
        if self.check_eof {
            let mut byte = [0u8; 1];
            match read_retrying(&mut self.inner, &mut byte) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(NarReadError::TrailingData {
                        offset: self.offset,
                    })
                }
                Err(e) => return Err(NarReadError::Io(e)),
            }
        }
        self.state = State::Done;
        Ok(())
    }

    fn unexpected(&self, expected: &'static str, found: &Token) -> NarReadError {
        NarReadError::UnexpectedToken {
            expected,
            found: show_bytes(found.bytes()),
            path: self.path_display(),
            offset: self.offset,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarReadError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(NarReadError::UnexpectedEof {
                    offset: self.offset,
                })
            }
            Err(e) => Err(NarReadError::Io(e)),
        }
    }

    fn read_u64(&mut self) -> Result<u64, NarReadError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_padding(&mut self, len: u64) -> Result<(), NarReadError> {
        let pad = padding_len(len);
        if pad > 0 {
            let start = self.offset;
            let mut buf = [0u8; 8];
            self.read_exact(&mut buf[..pad])?;
            if buf.iter().any(|&b| b != 0) {
                return Err(NarReadError::NonZeroPadding { offset: start });
            }
        }
        Ok(())
    }

    /// Reads a string whose length (already read, and checked against a small limit by the
    /// caller) is `len`, plus its padding.
    fn read_bytes(&mut self, len: usize) -> Result<Vec<u8>, NarReadError> {
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf)?;
        self.read_padding(len as u64)?;
        Ok(buf)
    }

    /// Reads a structural token into a fixed buffer.
    fn read_token(&mut self) -> Result<Token, NarReadError> {
        let start = self.offset;
        let len = self.read_u64()?;
        if len > MAX_TOKEN_LEN as u64 {
            return Err(NarReadError::TokenTooLong {
                len,
                max: MAX_TOKEN_LEN,
                offset: start,
            });
        }
        // `len` <= MAX_TOKEN_LEN, so the cast is lossless.
        let n = len as usize;
        let mut tok = Token {
            buf: [0u8; MAX_TOKEN_LEN],
            len: n,
        };
        self.read_exact(&mut tok.buf[..n])?;
        self.read_padding(len)?;
        Ok(tok)
    }

    fn expect(&mut self, want: &'static [u8], expected: &'static str) -> Result<(), NarReadError> {
        let tok = self.read_token()?;
        if tok.bytes() == want {
            Ok(())
        } else {
            Err(self.unexpected(expected, &tok))
        }
    }

    fn skip(&mut self, mut remaining: u64) -> Result<(), NarReadError> {
        if remaining == 0 {
            return Ok(());
        }
        if self.skip_buf.is_empty() {
            self.skip_buf = vec![0u8; 64 * 1024];
        }
        let mut buf = std::mem::take(&mut self.skip_buf);
        let result = loop {
            if remaining == 0 {
                break Ok(());
            }
            let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            match read_retrying(&mut self.inner, &mut buf[..want]) {
                Ok(0) => {
                    break Err(NarReadError::UnexpectedEof {
                        offset: self.offset,
                    })
                }
                Ok(n) => {
                    self.offset += n as u64;
                    remaining -= n as u64;
                }
                Err(e) => break Err(NarReadError::Io(e)),
            }
        };
        self.skip_buf = buf;
        result
    }
}

fn read_retrying<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn display_path(path: &[u8]) -> String {
    let mut s = String::from("/");
    s.push_str(&show_bytes(path));
    s
}

/// The contents of the current regular file of a [`NarReader`], as an `io::Read`.
pub struct Contents<'a, R> {
    reader: &'a mut NarReader<R>,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_contents(buf).map_err(|e| match e {
            NarReadError::Io(e) => e,
            NarReadError::UnexpectedEof { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })
    }
}

/// What [`validate_nar`] found in a valid NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NarSummary {
    /// Total size of the NAR in bytes (NarSize).
    pub nar_size: u64,
    /// sha256 of the NAR bytes (NarHash).
    pub nar_sha256: [u8; 32],
    pub regular_files: u64,
    pub executables: u64,
    pub symlinks: u64,
    pub directories: u64,
    /// Sum of the sizes of all regular files.
    pub contents_size: u64,
}

/// Hashes and counts everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Parses a whole NAR stream strictly, discarding the contents, and returns its size, sha256
/// and counts. The stream must end right after the NAR. Memory use is constant.
pub fn validate_nar<R: Read>(stream: R) -> Result<NarSummary, NarReadError> {
    let hashing = HashingReader {
        inner: stream,
        hasher: Sha256::new(),
    };
    let mut reader = NarReader::new(io::BufReader::with_capacity(64 * 1024, hashing));
    let mut summary = NarSummary::default();
    while let Some(event) = reader.next()? {
        match event {
            NarEvent::Regular {
                executable, size, ..
            } => {
                summary.regular_files += 1;
                summary.executables += u64::from(executable);
                summary.contents_size = summary.contents_size.saturating_add(size);
            }
            NarEvent::Symlink { .. } => summary.symlinks += 1,
            NarEvent::Directory { .. } => summary.directories += 1,
            NarEvent::EndDirectory => {}
        }
    }
    summary.nar_size = reader.offset();
    // The end-of-stream check consumed everything the buffer held, so the hash covers exactly
    // the NAR bytes.
    let hashing = reader.into_inner().into_inner();
    summary.nar_sha256 = hashing.hasher.finalize().into();
    Ok(summary)
}
