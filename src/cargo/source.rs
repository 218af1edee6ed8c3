//! Where a crate's source comes from and the digest that pins it: the `.crate` checksum
//! of a registry package (what Cargo.lock records), the package checksum of a vendored
//! copy, or the content of a git checkout. Sources that can change (path and workspace
//! crates) have no digest: their units are local only (see [`super::local`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The kind of source, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Registry,
    Vendored,
    Git,
    Local,
}

/// A crate's source and, for immutable ones, its digest (`sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    /// The package root (CARGO_MANIFEST_DIR).
    pub root: PathBuf,
    pub digest: Option<String>,
}

/// Finds the source of the package at `manifest_dir` (named `name-version`).
pub fn locate(manifest_dir: &Path, name: &str, version: &str) -> io::Result<Source> {
    let local = |kind| Source {
        kind,
        root: manifest_dir.to_path_buf(),
        digest: None,
    };
    let dir_name = format!("{name}-{version}");
    if let Some(crate_file) = registry_crate_file(manifest_dir, &dir_name) {
        if crate_file.is_file() {
            let digest = sha256_file(&crate_file)?;
            return Ok(Source {
                digest: Some(format!("sha256:{digest}")),
                ..local(SourceKind::Registry)
            });
        }
    }
    let checksum_file = manifest_dir.join(".cargo-checksum.json");
    if checksum_file.is_file() {
        if let Some(package) = vendored_checksum(&checksum_file)? {
            return Ok(Source {
                digest: Some(format!("sha256:{package}")),
                ..local(SourceKind::Vendored)
            });
        }
    }
    if is_git_checkout(manifest_dir) {
        let digest = tree_digest(manifest_dir)?;
        return Ok(Source {
            digest: Some(format!("tree-sha256:{digest}")),
            ..local(SourceKind::Git)
        });
    }
    Ok(local(SourceKind::Local))
}

/// `<home>/registry/src/<index>/<name-version>` → `<home>/registry/cache/<index>/<name-version>.crate`.
fn registry_crate_file(manifest_dir: &Path, dir_name: &str) -> Option<PathBuf> {
    if manifest_dir.file_name()? != dir_name {
        return None;
    }
    let index_dir = manifest_dir.parent()?;
    let src = index_dir.parent()?;
    if src.file_name()? != "src" || src.parent()?.file_name()? != "registry" {
        return None;
    }
    let cache = src.parent()?.join("cache").join(index_dir.file_name()?);
    Some(cache.join(format!("{dir_name}.crate")))
}

/// The `package` field of a vendored crate's `.cargo-checksum.json` (absent for git
/// sources vendored by `cargo vendor`).
fn vendored_checksum(file: &Path) -> io::Result<Option<String>> {
    let text = fs::read_to_string(file)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    Ok(value
        .get("package")
        .and_then(|p| p.as_str())
        .filter(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned))
}

/// Cargo checks git dependencies out under `<home>/git/checkouts/<repo>-<hash>/<rev>/`.
fn is_git_checkout(dir: &Path) -> bool {
    dir.ancestors().any(|a| {
        a.file_name() == Some("checkouts".as_ref())
            && a.parent().and_then(Path::file_name) == Some("git".as_ref())
    })
}

/// The sha256 (hex) of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// A digest of a directory tree's contents: each entry's relative path, kind, executable
/// bit and contents, in sorted order. `.git` and cargo's `.cargo-ok` marker are left out,
/// so two checkouts of one commit agree wherever they are.
pub fn tree_digest(root: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    walk(root, Path::new(""), &mut h)?;
    Ok(hex(&h.finalize()))
}

fn walk(root: &Path, rel: &Path, h: &mut Sha256) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        if rel.as_os_str().is_empty() && (name == ".git" || name == ".cargo-ok") {
            continue;
        }
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        let rel_bytes = rel.as_os_str().as_encoded_bytes();
        h.update((rel_bytes.len() as u64).to_le_bytes());
        h.update(rel_bytes);
        if meta.is_dir() {
            h.update(b"d");
            walk(root, &rel, h)?;
        } else if meta.is_symlink() {
            let target = fs::read_link(&path)?;
            h.update(b"l");
            h.update(target.as_os_str().as_encoded_bytes());
            h.update(b"\0");
        } else {
            use std::os::unix::fs::PermissionsExt;
            h.update(if meta.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"f"
            });
            h.update(meta.len().to_le_bytes());
            io::copy(&mut fs::File::open(&path)?, h)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_package_is_pinned_by_its_crate_file() {
        let home = tempfile::tempdir().unwrap();
        let src = home.path().join("registry/src/index.example-1/foo-1.2.3");
        fs::create_dir_all(&src).unwrap();
        let cache = home.path().join("registry/cache/index.example-1");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("foo-1.2.3.crate"), b"abc").unwrap();
        let s = locate(&src, "foo", "1.2.3").unwrap();
        assert_eq!(s.kind, SourceKind::Registry);
        assert_eq!(
            s.digest.as_deref(),
            Some("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn vendored_git_and_local_sources_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let vendored = d.path().join("vendor/foo");
        fs::create_dir_all(&vendored).unwrap();
        let sum = "a".repeat(64);
        fs::write(
            vendored.join(".cargo-checksum.json"),
            format!(r#"{{"files":{{}},"package":"{sum}"}}"#),
        )
        .unwrap();
        assert_eq!(
            locate(&vendored, "foo", "1.0.0").unwrap().digest,
            Some(format!("sha256:{sum}"))
        );
        let git = d.path().join("git/checkouts/foo-abc/1234567");
        fs::create_dir_all(git.join("src")).unwrap();
        fs::write(git.join("src/lib.rs"), b"fn f() {}").unwrap();
        let g = locate(&git, "foo", "1.0.0").unwrap();
        assert_eq!(g.kind, SourceKind::Git);
        let local = d.path().join("proj");
        fs::create_dir_all(&local).unwrap();
        assert_eq!(
            locate(&local, "foo", "1.0.0").unwrap().kind,
            SourceKind::Local
        );
    }

    #[test]
    fn tree_digests_ignore_the_location_and_the_git_dir() {
        let d = tempfile::tempdir().unwrap();
        for at in ["a", "b"] {
            let root = d.path().join(at);
            fs::create_dir_all(root.join("src")).unwrap();
            fs::write(root.join("src/lib.rs"), b"x").unwrap();
        }
        fs::create_dir_all(d.path().join("b/.git")).unwrap();
        fs::write(d.path().join("b/.git/HEAD"), b"ref").unwrap();
        let a = tree_digest(&d.path().join("a")).unwrap();
        assert_eq!(a, tree_digest(&d.path().join("b")).unwrap());
        fs::write(d.path().join("b/src/lib.rs"), b"y").unwrap();
        assert_ne!(a, tree_digest(&d.path().join("b")).unwrap());
    }
}
