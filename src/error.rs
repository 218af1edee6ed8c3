//! Error pieces every layer shares:
//!
//! * [`PathIoError`]: which operation on which path failed with an I/O error; the file-tree,
//!   canonicalisation and sandbox errors carry it as their `Io` variant.
//! * [`one_line`]: an error and its causes on one line, for messages that list several
//!   independent failures (each of which has its own chain).
//!
//! Pure (nothing here does I/O), so every layer may use it.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// An I/O error of `op` (a verb phrase such as "cannot open") on `path`. The message says
/// the operation and the path; the I/O error is the source.
#[derive(Debug, Error)]
#[error("{op} '{}'", path.display())]
pub struct PathIoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PathIoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The `map_err` closure for `op` on `path`, converting into any error that holds a
    /// `PathIoError` (`E: From<PathIoError>`).
    pub fn on<E: From<PathIoError>>(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> E {
        let path = path.to_path_buf();
        move |source| E::from(PathIoError { op, path, source })
    }
}

/// An error and its causes on one line (`a: b: c`), skipping a cause whose text the message
/// already contains. For the few messages that list several failures; a single cause is
/// kept as `#[source]` instead and printed by the command line's chain printer.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_message_names_the_operation_and_the_path_and_the_source_is_kept() {
        let e = PathIoError::new(
            "cannot open",
            "/some/where",
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "cannot open '/some/where'");
        assert_eq!(e.source().unwrap().to_string(), "gone");
        let e: PathIoError =
            PathIoError::on("cannot read", Path::new("/x"))(io::Error::other("no"));
        assert_eq!((e.op, e.path.as_path()), ("cannot read", Path::new("/x")));
    }

    #[test]
    fn one_line_joins_the_chain() {
        let e = PathIoError::new("cannot open", "/a", io::Error::other("gone"));
        assert_eq!(one_line(&e), "cannot open '/a': gone");
    }
}
