//! `file://` caches: a local directory holding one file per key.
//!
//! Reads stream the file; a missing file (or a directory, or a path through a
//! non-directory) is absent. Writes are atomic and durable: a locked temp file
//! (`.tmp-<boot>-<pid>-…`, see [`crate::temp_file`]) in the destination directory
//! (parents created and made durable), written, fsynced, chmod 0644, renamed over the key,
//! then the directory fsynced. Concurrent writers of one key each rename a complete file,
//! so readers see the old or a new object whole, never a part; a crash leaves at most a
//! temp file, which the next write session ([`FileCache::create_layout`]) sweeps once its
//! owner is gone.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_util::io::ReaderStream;

use super::{blocking, Backend, ByteStream, CacheError, CacheUrl, ObjectKey, PutBody};
use crate::temp_file::{self, TempFile};

/// Read chunk size.
const CHUNK: usize = 64 * 1024;

/// Mode of written objects.
const OBJECT_MODE: u32 = 0o644;

/// A cache in a local directory.
#[derive(Debug)]
pub struct FileCache {
    url: CacheUrl,
    root: PathBuf,
}

impl FileCache {
    /// The cache of a `file://` URL; `None` for other URLs.
    pub fn new(url: CacheUrl) -> Option<Self> {
        let root = url.file_path()?.to_path_buf();
        Some(FileCache { url, root })
    }

    pub fn url(&self) -> &CacheUrl {
        &self.url
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of a key to read; a query (`nar/x.nar?hash=…`) does not name the file.
    fn path(&self, key: &str) -> Result<PathBuf, CacheError> {
        Ok(self.root.join(ObjectKey::parse(key)?.path()))
    }

    /// Creates the cache directory and the given subdirectories, durably, and sweeps the
    /// temp files that writers which died left in them.
    pub(crate) async fn create_layout(&self, dirs: &[&str]) -> Result<(), CacheError> {
        let root = self.root.clone();
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
        blocking(move || {
            for dir in std::iter::once(&root).chain(&dirs) {
                create_dirs(dir).map_err(|e| CacheError::io(describe("creating", dir), e))?;
                temp_file::sweep_and_log(dir);
            }
            Ok(())
        })
        .await
    }
}

impl Backend for FileCache {
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, CacheError> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(CacheError::io(describe("opening", &path), e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| CacheError::io(describe("reading", &path), e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(Box::pin(ReaderStream::with_capacity(file, CHUNK))))
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(CacheError::io(describe("reading", &path), e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        _content_type: &'static str,
    ) -> Result<(), CacheError> {
        let dest = self.root.join(ObjectKey::parse_for_writing(key)?.path());
        blocking(move || write_atomic(&dest, &body)).await
    }
}

fn describe(action: &str, path: &Path) -> String {
    format!("{action} {}", path.display())
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Writes `body` to `dest` atomically (see the module docs).
fn write_atomic(dest: &Path, body: &PutBody) -> Result<(), CacheError> {
    let writing = |e| CacheError::io(describe("writing", dest), e);
    let dir = dest
        .parent()
        .ok_or_else(|| writing(io::Error::other("no parent directory")))?;
    create_dirs(dir).map_err(writing)?;
    let temp = TempFile::create_in(dir, OBJECT_MODE).map_err(writing)?;
    let mut file = temp.as_file();
    file.set_permissions(fs::Permissions::from_mode(OBJECT_MODE))
        .map_err(writing)?;
    match body {
        PutBody::Bytes(bytes) => file.write_all(bytes).map_err(writing)?,
        PutBody::File(src) => {
            let mut input =
                fs::File::open(src).map_err(|e| CacheError::io(describe("reading", src), e))?;
            io::copy(&mut input, &mut file).map_err(|e| {
                // Tell read errors from write errors as well as io::copy allows.
                CacheError::io(describe("copying to", dest), e)
            })?;
        }
    }
    file.sync_all().map_err(writing)?;
    temp.persist(dest).map_err(writing)?;
    sync_dir(dir).map_err(writing)
}

/// `create_dir_all`, then fsyncs the parent of every directory it created.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur);
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use futures_util::StreamExt;

    fn cache(dir: &Path) -> FileCache {
        let url = format!("file://{}", dir.display()).parse().unwrap();
        FileCache::new(url).unwrap()
    }

    async fn read(c: &FileCache, key: &str) -> Option<Vec<u8>> {
        let mut s = c.get(key).await.unwrap()?;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        Some(out)
    }

    #[tokio::test]
    async fn put_get_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(&tmp.path().join("new/cache"));
        assert!(c.get("nar/x.nar").await.unwrap().is_none());
        assert!(!c.exists("nar/x.nar").await.unwrap());
        c.put("nar/x.nar", PutBody::Bytes(Bytes::from_static(b"abc")), "t")
            .await
            .unwrap();
        assert_eq!(read(&c, "nar/x.nar").await.unwrap(), b"abc");
        assert!(c.exists("nar/x.nar").await.unwrap());
        let mode = fs::metadata(c.root().join("nar/x.nar"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, OBJECT_MODE);
        // A directory and a path through a file are absent.
        assert!(c.get("nar").await.unwrap().is_none());
        assert!(!c.exists("nar").await.unwrap());
        assert!(c.get("nar/x.nar/y").await.unwrap().is_none());
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(c.root().join("nar"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.nar"]);
    }

    #[tokio::test]
    async fn failed_put_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path());
        let e = c
            .put("a", PutBody::File(tmp.path().join("missing")), "t")
            .await
            .unwrap_err();
        assert!(matches!(e, CacheError::Io { .. }), "{e:?}");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
