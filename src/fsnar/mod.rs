//! File trees to NAR and back: dump, hash, copy-while-hashing, strict unpack, canonicalisation.
//!
//! This is the file-system layer over the pure codec in [`crate::format::nar`]. Rules that hold
//! for every function here:
//!
//! * Symlinks are never followed, not even at the root: the root is `lstat`ed, everything below
//!   is opened relative to directory handles with `O_NOFOLLOW`.
//! * A NAR keeps only the tree shape, file contents, the user-execute bit and symlink targets.
//!   Entries are serialised in raw byte order of their names, so [`dump`] gives exactly the
//!   bytes of `nix-store --dump`. FIFOs, sockets and devices are refused with an error naming
//!   the file.
//! * Canonical form of a tree in the store: regular files 0444 (0555 if executable), directories
//!   0555, mtime 1 for everything including symlinks; no setuid, setgid or sticky bits.
//! * Anything created goes to a new path that must not exist yet; on failure the partially
//!   created tree is removed again (never a pre-existing one).
//!
//! Performance: [`dump`], [`nar_hash`] and [`copy_tree_hashing`] read file contents ahead with
//! 2 to 4 threads while the calling thread serialises and hashes in order; memory stays bounded
//! (below about 32 MiB) whatever the file sizes; only the sorted name lists of the directories
//! on the current path grow with the tree. Copies of large files are written with `O_DIRECT`
//! where the file system allows it. See `walk` for the details.

mod canon;
mod hashing;
mod restore;
mod restore_pool;
mod sys;
mod walk;

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::PathIoError;
use crate::format::nar::{NarReadError, NarWriteError, NarWriter, MAX_DEPTH};

pub use canon::{canonicalise, make_writable_and_remove, rename_tree};
pub use hashing::{HashingReader, HashingWriter};
pub use restore::{restore, RestoreOptions, RestoreStats};

/// Short name of [`FsNarError`].
pub use FsNarError as Error;

/// Errors of the file-system NAR layer. File-system errors name the path concerned.
#[derive(Debug, Error)]
pub enum FsNarError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("file '{path}' has an unsupported type ({kind}); a NAR holds only regular files, directories and symlinks")]
    UnsupportedType { path: PathBuf, kind: &'static str },
    #[error("file '{path}' changed while it was being read")]
    Changed { path: PathBuf },
    #[error("'{path}' already exists")]
    TargetExists { path: PathBuf },
    #[error("'{path}' is nested deeper than {MAX_DEPTH} levels, the NAR limit")]
    TooDeep { path: PathBuf },
    #[error("cannot serialise the NAR")]
    Write(#[from] NarWriteError),
    #[error("invalid NAR")]
    InvalidNar(#[from] NarReadError),
    #[error("cannot copy '{src}' into itself ('{dst}')")]
    CopyIntoItself { src: PathBuf, dst: PathBuf },
    #[error("a read-ahead thread stopped unexpectedly")]
    WorkerFailed,
}

/// Serialises the tree at `path` as a NAR into `out` (byte-identical to `nix-store --dump`) and
/// returns the NAR size. `out` is written in large blocks; it needs no extra buffering.
pub fn dump<W: Write>(path: impl AsRef<Path>, out: W) -> Result<u64, FsNarError> {
    let mut nar = NarWriter::new(out);
    walk::walk(path.as_ref(), None, &mut nar, &mut false)?;
    let (_, size) = nar.finish()?;
    Ok(size)
}

/// The sha256 and size of the NAR serialisation of the tree at `path` (`nix hash path`).
pub fn nar_hash(path: impl AsRef<Path>) -> Result<([u8; 32], u64), FsNarError> {
    let mut nar = NarWriter::new(HashingWriter::new());
    walk::walk(path.as_ref(), None, &mut nar, &mut false)?;
    let (hasher, _) = nar.finish()?;
    Ok(hasher.finish())
}

/// Copies the tree at `src` to `dst` (a new path whose parent exists) and returns the sha256
/// and size of the NAR serialisation of `src`, in one pass that reads each byte once.
///
/// The copy is canonical as it is written (files 0444/0555, directories 0555 once filled,
/// mtime 1 everywhere). It is what `store add` needs: hash and copy in one go. On error the
/// partial copy is removed; an already existing `dst` is an error and is left alone.
pub fn copy_tree_hashing(
    src: impl AsRef<Path>,
    dst: impl AsRef<Path>,
) -> Result<([u8; 32], u64), FsNarError> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    refuse_copy_into_itself(src, dst)?;
    let mut created = false;
    let mut nar = NarWriter::new(HashingWriter::new());
    let result = walk::walk(src, Some(dst), &mut nar, &mut created)
        .and_then(|()| nar.finish().map_err(FsNarError::from));
    match result {
        Ok((hasher, _)) => Ok(hasher.finish()),
        Err(e) => {
            if created {
                if let Err(cleanup) = make_writable_and_remove(dst) {
                    tracing::warn!(path = %dst.display(), error = %cleanup, "cannot remove partial copy");
                }
            }
            Err(e)
        }
    }
}

/// A copy whose target lies inside the source directory would walk into itself.
fn refuse_copy_into_itself(src: &Path, dst: &Path) -> Result<(), FsNarError> {
    let Ok(src_meta) = src.symlink_metadata() else {
        return Ok(()); // the walk reports it
    };
    if !src_meta.is_dir() {
        return Ok(());
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let (Ok(src), Ok(parent)) = (src.canonicalize(), parent.canonicalize()) {
        if parent.starts_with(&src) {
            return Err(FsNarError::CopyIntoItself {
                src,
                dst: dst.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
