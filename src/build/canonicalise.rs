//! Canonicalisation of a freshly built output, in place, before it is hashed and registered.
//!
//! On top of [`crate::fsnar::canonicalise`] (modes 0444/0555, directories 0555, mtime 1, no
//! setuid/setgid/sticky bits, special files refused), a build output needs:
//!
//! * no hard links shared with anything: every regular file with a link count above one is
//!   replaced by a private copy (the builder may have linked a file from its build dir, or
//!   anything else on the same file system, into its output), so changing the store path's
//!   permissions cannot touch a file elsewhere;
//! * the right owner: when we run as root everything is given to the running uid and gid;
//!   otherwise a file owned by someone else is an error (we could not fix its mode anyway);
//! * only regular files, directories and symlinks: sockets, FIFOs and devices are an error
//!   naming the file.
//!
//! Symlinks are never followed (`lstat`, `lchown`, `O_NOFOLLOW`). The builder must be gone
//! (its processes killed) before this runs, so the tree cannot change underneath.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::PathIoError;
use crate::fsnar::{self, FsNarError};

/// Errors of output canonicalisation; each names the file concerned.
#[derive(Debug, Error)]
pub enum CanonError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("output file '{path}' is a {kind}; outputs may only hold regular files, directories and symlinks")]
    UnsupportedType { path: PathBuf, kind: &'static str },
    #[error("output file '{path}' belongs to uid {uid}, not to us; cannot canonicalise it")]
    ForeignOwner { path: PathBuf, uid: u32 },
    #[error("cannot canonicalise the output")]
    Canon(#[from] FsNarError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CanonError {
    PathIoError::on(op, path)
}

fn kind_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of unknown type"
    }
}

/// Who we are, and whether we may give files away.
struct Owner {
    uid: u32,
    gid: u32,
    root: bool,
}

impl Owner {
    fn current() -> Self {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        Owner {
            uid,
            gid,
            root: uid == 0,
        }
    }

    fn fix(&self, path: &Path, meta: &fs::Metadata) -> Result<(), CanonError> {
        if meta.uid() == self.uid && meta.gid() == self.gid {
            return Ok(());
        }
        if self.root {
            return std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .map_err(io_err("changing the owner of", path));
        }
        if meta.uid() != self.uid {
            return Err(CanonError::ForeignOwner {
                path: path.into(),
                uid: meta.uid(),
            });
        }
        Ok(())
    }
}

/// Replaces the regular file `path` by a copy of itself, breaking its hard links.
fn unshare_file(path: &Path, meta: &fs::Metadata) -> Result<(), CanonError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = OsString::from(".canon-tmp-");
    tmp_name.push(path.file_name().unwrap_or_default());
    let tmp = dir.join(tmp_name);
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("opening", path))?;
    let result = (|| {
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        io::copy(&mut src, &mut dst).map_err(io_err("copying", path))?;
        dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))
            .map_err(io_err("changing the mode of", &tmp))?;
        drop(dst);
        fs::rename(&tmp, path).map_err(io_err("replacing", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Gives a directory we are about to change owner write and search permission.
fn open_up_dir(path: &Path, meta: &fs::Metadata) -> Result<(), CanonError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_err("changing the mode of", path))?;
    }
    Ok(())
}

/// Canonicalises the output tree at `path` in place; see the module doc.
pub fn canonicalise_output(path: &Path) -> Result<(), CanonError> {
    let owner = Owner::current();
    let mut pending = vec![path.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = fs::symlink_metadata(&p).map_err(io_err("inspecting", &p))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            owner.fix(&p, &meta)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                unshare_file(&p, &meta)?;
                let meta = fs::symlink_metadata(&p).map_err(io_err("inspecting", &p))?;
                owner.fix(&p, &meta)?;
            } else {
                owner.fix(&p, &meta)?;
            }
        } else if ft.is_dir() {
            owner.fix(&p, &meta)?;
            open_up_dir(&p, &meta)?;
            for entry in fs::read_dir(&p).map_err(io_err("listing", &p))? {
                let entry = entry.map_err(io_err("listing", &p))?;
                pending.push(entry.path());
            }
        } else {
            return Err(CanonError::UnsupportedType {
                path: p,
                kind: kind_name(ft),
            });
        }
    }
    fsnar::canonicalise(path)?;
    Ok(())
}

/// Whether `a` and `b` are the same file (for tests and callers checking for hard links).
pub fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn makes_a_tree_canonical_and_breaks_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "shared").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        let out = tmp.path().join("out");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::set_permissions(out.join("sub"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(out.join("sub/suid"), "x").unwrap();
        fs::set_permissions(out.join("sub/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(&outside, out.join("linked")).unwrap();
        fs::hard_link(out.join("sub/suid"), out.join("inner-link")).unwrap();
        symlink(&outside, out.join("sym")).unwrap();

        canonicalise_output(&out).unwrap();

        assert_eq!(mode(&out), 0o555);
        assert_eq!(mode(&out.join("sub")), 0o555);
        assert_eq!(mode(&out.join("sub/suid")), 0o555);
        assert_eq!(mode(&out.join("linked")), 0o444);
        assert_eq!(fs::read_to_string(out.join("linked")).unwrap(), "shared");
        for p in ["linked", "sub/suid", "inner-link"] {
            let m = fs::symlink_metadata(out.join(p)).unwrap();
            assert_eq!(m.nlink(), 1, "{p}");
            assert_eq!(m.mtime(), 1, "{p}");
        }
        // The file outside is untouched, and the symlink was not followed.
        let m = fs::metadata(&outside).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(m.nlink(), 1);
        assert_ne!(m.mtime(), 1);
        assert!(!same_file(
            &File::open(&outside).unwrap(),
            &File::open(out.join("linked")).unwrap()
        )
        .unwrap());
        crate::fsnar::make_writable_and_remove(&out).unwrap();
    }

    #[test]
    fn refuses_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let fifo = out.join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = canonicalise_output(&out).unwrap_err();
        assert!(
            matches!(&err, CanonError::UnsupportedType { path, kind: "FIFO" } if *path == fifo),
            "{err:?}"
        );
        let sock = out.join("sock");
        fs::remove_file(&fifo).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = canonicalise_output(&out).unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
    }

    #[test]
    fn single_file_and_symlink_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o775)).unwrap();
        canonicalise_output(&file).unwrap();
        assert_eq!(mode(&file), 0o555);
        let link = tmp.path().join("link");
        symlink("/nonexistent", &link).unwrap();
        canonicalise_output(&link).unwrap();
        assert_eq!(fs::symlink_metadata(&link).unwrap().mtime(), 1);
    }

    #[test]
    fn root_takes_ownership() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED root_takes_ownership: not running as root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("f"), "x").unwrap();
        symlink("f", out.join("l")).unwrap();
        std::os::unix::fs::lchown(out.join("f"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(out.join("l"), Some(1234), Some(5678)).unwrap();
        canonicalise_output(&out).unwrap();
        for p in ["f", "l"] {
            let m = fs::symlink_metadata(out.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{p}");
        }
        crate::fsnar::make_writable_and_remove(&out).unwrap();
    }
}
