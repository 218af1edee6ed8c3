//! The identity of a Rust toolchain for one target: `rustc -vV` plus a digest of the
//! sysroot libraries the compiler loads and links (the host's `lib/*.so` and the target's
//! `lib/rustlib/<target>/lib`). Computing it reads a few hundred MiB, so it is memoised
//! per rustc binary (path, size, mtime, inode) and target in a small file.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digests::write_memo_file;
use super::source::{hex, sha256_file};

/// A toolchain as seen by the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Toolchain {
    /// `rustc -vV` output.
    pub version: String,
    /// The host triple (`host:` line).
    pub host: String,
    /// The target compiled for (the host unless `--target`).
    pub target: String,
    /// sha256 (hex) over the version text and the sysroot libraries.
    pub id: String,
}

/// What can go wrong identifying a toolchain.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("cannot run '{rustc}'")]
    Run {
        rustc: String,
        #[source]
        source: io::Error,
    },
    #[error("'{rustc} {args}' failed: {stderr}")]
    Failed {
        rustc: String,
        args: &'static str,
        stderr: String,
    },
    #[error("cannot read the sysroot '{path}'")]
    Sysroot {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The toolchain of `rustc` for `target` (`None`: the host), memoised in `memo_dir`.
pub fn identify(
    rustc: &Path,
    target: Option<&str>,
    memo_dir: &Path,
) -> Result<Toolchain, ToolchainError> {
    let memo = memo_file(rustc, target, memo_dir);
    if let Some(t) = memo.as_ref().and_then(|m| read_memo(m)) {
        return Ok(t);
    }
    let t = compute(rustc, target)?;
    if let Some(m) = memo {
        write_memo(&m, &t);
    }
    Ok(t)
}

fn memo_file(rustc: &Path, target: Option<&str>, memo_dir: &Path) -> Option<PathBuf> {
    let real = fs::canonicalize(rustc).ok()?;
    let m = fs::metadata(&real).ok()?;
    let mut h = Sha256::new();
    h.update(real.as_os_str().as_encoded_bytes());
    h.update(format!(
        "\0{}\0{}\0{}\0{}\0",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ));
    h.update(target.unwrap_or("").as_bytes());
    Some(memo_dir.join(format!("{}.json", &hex(&h.finalize())[..32])))
}

fn read_memo(path: &Path) -> Option<Toolchain> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Best effort: a memo that cannot be written is computed again next time.
fn write_memo(path: &Path, t: &Toolchain) {
    if let Ok(bytes) = serde_json::to_vec(t) {
        write_memo_file(path, &bytes);
    }
}

fn run(rustc: &Path, args: &'static [&'static str]) -> Result<String, ToolchainError> {
    let name = || rustc.display().to_string();
    let out = Command::new(rustc)
        .args(args)
        .output()
        .map_err(|source| ToolchainError::Run {
            rustc: name(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolchainError::Failed {
            rustc: name(),
            args: if args.len() == 1 {
                args[0]
            } else {
                "--print sysroot"
            },
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn compute(rustc: &Path, target: Option<&str>) -> Result<Toolchain, ToolchainError> {
    let version = run(rustc, &["-vV"])?;
    let sysroot = PathBuf::from(run(rustc, &["--print", "sysroot"])?.trim());
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or("")
        .to_owned();
    let target = target.unwrap_or(&host).to_owned();
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    let sysroot_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ToolchainError::Sysroot { path, source }
    };
    let host_libs = sysroot.join("lib");
    digest_files(&host_libs, |n| n.ends_with(".so"), &mut h).map_err(sysroot_err(&host_libs))?;
    let target_libs = sysroot.join("lib/rustlib").join(&target).join("lib");
    digest_files(&target_libs, |_| true, &mut h).map_err(sysroot_err(&target_libs))?;
    Ok(Toolchain {
        version,
        host,
        target,
        id: hex(&h.finalize()),
    })
}

/// Adds `name\0sha256\0` of each regular file of `dir` (not recursive) that `keep` accepts.
fn digest_files(dir: &Path, keep: impl Fn(&str) -> bool, h: &mut Sha256) -> io::Result<()> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if keep(&name) && e.file_type()?.is_file() {
            files.push((name, e.path()));
        }
    }
    files.sort();
    for (name, path) in files {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(sha256_file(&path)?.as_bytes());
        h.update(b"\0");
    }
    Ok(())
}

/// A tool as a key sees it: the file name of `program` and the first line of its
/// `--version` (`unavailable` if it cannot be run).
pub fn tool_identity(program: &str) -> String {
    let version = Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "unavailable".to_owned());
    let base = Path::new(program)
        .file_name()
        .map_or(program.to_owned(), |n| n.to_string_lossy().into_owned());
    format!("{base}: {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_is_per_binary_and_target() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("rustc");
        fs::write(&bin, b"x").unwrap();
        let a = memo_file(&bin, None, d.path()).unwrap();
        assert_eq!(a, memo_file(&bin, None, d.path()).unwrap());
        assert_ne!(
            a,
            memo_file(&bin, Some("wasm32-unknown-unknown"), d.path()).unwrap()
        );
        let t = Toolchain {
            version: "rustc 1".into(),
            host: "h".into(),
            target: "h".into(),
            id: "00".into(),
        };
        write_memo(&a, &t);
        assert_eq!(read_memo(&a), Some(t));
        fs::write(&bin, b"xy").unwrap();
        assert_ne!(a, memo_file(&bin, None, d.path()).unwrap());
    }
}
