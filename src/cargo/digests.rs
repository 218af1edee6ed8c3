//! Content digests of the files and directories a key names, memoised beside them: each
//! file `<dir>/<name>` gets `<dir>/.store-digests/<name>` holding `size mtime digest`,
//! valid while the file's size and mtime are unchanged. Every dependent of a crate hashes
//! that crate's rlib, so without the memo a build would hash each artifact many times.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::key::Digests;
use super::source::{sha256_file, tree_digest};
use crate::temp_file::TempFile;

const MEMO_DIR: &str = ".store-digests";

/// File and tree digests with the memo described above.
#[derive(Default)]
pub struct MemoDigests;

fn memo_path(path: &Path) -> Option<PathBuf> {
    Some(path.parent()?.join(MEMO_DIR).join(path.file_name()?))
}

fn stamp(path: &Path) -> io::Result<String> {
    let m = fs::metadata(path)?;
    Ok(format!("{} {}.{}", m.len(), m.mtime(), m.mtime_nsec()))
}

/// Records that `path` (as it is now) has `digest`. Best effort.
pub fn remember(path: &Path, digest: &str) {
    let (Some(memo), Ok(stamp)) = (memo_path(path), stamp(path)) else {
        return;
    };
    write_memo_file(&memo, format!("{stamp} {digest}").as_bytes());
}

/// Writes a memo file whole or not at all (a temp file in its dir, renamed over it); best
/// effort, as every memo can be computed again. Also used for the toolchain memos.
pub fn write_memo_file(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    let _ = fs::create_dir_all(dir);
    if let Ok(tmp) = TempFile::create_in(dir, 0o644) {
        if tmp.as_file().write_all(bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

fn recall(path: &Path) -> Option<String> {
    let text = fs::read_to_string(memo_path(path)?).ok()?;
    let (stamp_then, digest) = text.rsplit_once(' ')?;
    (stamp(path).ok()? == stamp_then).then(|| digest.to_owned())
}

impl Digests for MemoDigests {
    fn file(&mut self, path: &Path) -> io::Result<String> {
        if let Some(d) = recall(path) {
            return Ok(d);
        }
        let d = sha256_file(path)?;
        remember(path, &d);
        Ok(d)
    }

    fn tree(&mut self, path: &Path) -> io::Result<String> {
        tree_digest(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_is_used_while_the_file_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("libx.rlib");
        fs::write(&f, b"abc").unwrap();
        let real = MemoDigests.file(&f).unwrap();
        assert_eq!(recall(&f).as_deref(), Some(real.as_str()));
        // A memo is trusted only for the stamp it was written for.
        remember(&f, "feed");
        assert_eq!(MemoDigests.file(&f).unwrap(), "feed");
        fs::write(&f, b"abcd").unwrap();
        assert_ne!(MemoDigests.file(&f).unwrap(), "feed");
    }
}
