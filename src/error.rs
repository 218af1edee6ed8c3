//! [`PathIoError`]: which operation on which path failed with an I/O error; the file-tree,
//! canonicalisation and sandbox errors carry it as their `Io` variant. (Printing an error
//! with its causes is [`crate::error_chain`].)
//!
//! Pure (nothing here does I/O), so every layer may use it.

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
}
