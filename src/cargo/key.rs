//! The key of a compilation unit: every input that determines its output bytes, written
//! without machine paths, and the store path derived from it (store-format.md §11.2).
//!
//! Dependencies enter by the sha256 of the artifact rustc reads (`--extern name=path`),
//! never by path; directories under the profile dir (a build script's `OUT_DIR`, native
//! link dirs) by a digest of their contents; the crate's own sources by the source digest.
//! Paths that stay (system link dirs, a user's own flags) are kept as written, after the
//! package root, `OUT_DIR` and the profile dir are replaced by placeholders.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::invocation::{split, Arg, Invocation};
use super::source::hex;
use crate::format::hash::Hash;
use crate::format::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// Bumped whenever what goes into a key, or how, changes.
pub const KEY_VERSION: u32 = 1;

/// The `type` of a unit's store path fingerprint (§2.2): distinct from every derivation
/// output type, so a unit path can never be a derivation's.
pub const PATH_TYPE: &str = "cargo-unit:out";

/// Everything a unit's output depends on, as recorded in the unit and in reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub key_version: u32,
    /// [`super::toolchain::Toolchain::id`].
    pub toolchain: String,
    pub target: String,
    pub package: String,
    pub version: String,
    /// The source digest (`sha256:<hex>` of the `.crate`, …).
    pub source: String,
    /// The normalised rustc arguments.
    pub args: Vec<String>,
    /// Environment the compiler sees that can change the output.
    pub env: BTreeMap<String, String>,
    /// `tree-sha256:<hex>` of the build script's `OUT_DIR`, if the unit has one.
    pub out_dir: Option<String>,
    /// The linker's identity (`--version` first line) for units that link.
    pub linker: Option<String>,
}

impl KeyInputs {
    /// The key: sha256 of the canonical JSON of the inputs.
    pub fn digest(&self) -> [u8; 32] {
        // Field order is fixed by the struct and maps are sorted: the text is canonical.
        let text = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&text).into()
    }

    /// The unit's store path: `<hash>-cargo-<package>-<version>`, the hash made from the
    /// key as a derivation output's is from its derivation's hash.
    pub fn store_path(&self, store_dir: &StoreDir) -> Result<StorePath, StorePathError> {
        let name = StorePathName::new(&format!("cargo-{}-{}", self.package, self.version))?;
        Ok(store_dir.make_store_path(PATH_TYPE, &Hash::sha256(self.digest()), &name))
    }

    /// The names of the inputs that differ between two units (what explains a miss).
    pub fn differences(&self, other: &KeyInputs) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, differs: bool| {
            if differs {
                out.push(name.to_owned());
            }
        };
        field("key_version", self.key_version != other.key_version);
        field("toolchain", self.toolchain != other.toolchain);
        field("target", self.target != other.target);
        field("package", self.package != other.package);
        field("version", self.version != other.version);
        field("source", self.source != other.source);
        field("out_dir", self.out_dir != other.out_dir);
        field("linker", self.linker != other.linker);
        for a in symmetric(&self.args, &other.args) {
            out.push(format!("arg {a}"));
        }
        let keys: std::collections::BTreeSet<_> = self.env.keys().chain(other.env.keys()).collect();
        for k in keys {
            if self.env.get(k) != other.env.get(k) {
                out.push(format!("env {k}"));
            }
        }
        out
    }
}

fn symmetric<'a>(a: &'a [String], b: &'a [String]) -> Vec<&'a String> {
    let mut d: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    d.extend(b.iter().filter(|x| !a.contains(x)));
    d
}

/// Machine paths of one invocation, replaced by placeholders wherever they appear.
#[derive(Debug, Clone)]
pub struct Places {
    /// The package root (`CARGO_MANIFEST_DIR`).
    pub package_root: String,
    /// The build script's `OUT_DIR`, if any.
    pub out_dir: Option<String>,
    /// cargo's `--out-dir` (`…/target/debug/deps`).
    pub deps_dir: String,
    /// The profile dir (the parent of `--out-dir`, `…/target/debug`).
    pub profile_dir: String,
}

pub const SRC: &str = "@SRC@";
pub const OUT: &str = "@OUT_DIR@";
pub const DEPS: &str = "@DEPS@";
pub const PROFILE: &str = "@PROFILE@";
pub const REGISTRY_SRC: &str = "@REGISTRY_SRC@";

impl Places {
    /// The pairs (real, placeholder), longest real path first so nested ones win.
    pub fn pairs(&self) -> Vec<(&str, &'static str)> {
        let mut v = vec![
            (self.package_root.as_str(), SRC),
            (self.deps_dir.as_str(), DEPS),
            (self.profile_dir.as_str(), PROFILE),
        ];
        if let Some(o) = &self.out_dir {
            v.push((o.as_str(), OUT));
        }
        if let Some(r) = self.registry_src() {
            v.push((r, REGISTRY_SRC));
        }
        v.retain(|(p, _)| !p.is_empty());
        v.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        v
    }

    /// The registry's source dir that holds a registry package
    /// (`<home>/registry/src/<index>`): other packages' sources are named under it (a
    /// `-sys` crate's `DEP_*_INCLUDE`), so it is a machine path too.
    fn registry_src(&self) -> Option<&str> {
        let index = Path::new(&self.package_root).parent()?;
        let src = index.parent()?;
        let registry = src.parent()?;
        (src.file_name()? == "src" && registry.file_name()? == "registry")
            .then(|| index.to_str())
            .flatten()
    }

    /// `text` with machine paths replaced by placeholders.
    pub fn abstract_text(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for (real, ph) in self.pairs() {
            t = t.replace(real, ph);
        }
        t
    }

    /// `text` with placeholders replaced by this machine's paths.
    pub fn concrete_text(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for (real, ph) in self.pairs() {
            t = t.replace(ph, real);
        }
        t
    }

    fn under_profile(&self, p: &str) -> bool {
        !self.profile_dir.is_empty() && Path::new(p).starts_with(&self.profile_dir)
    }
}

/// What normalisation needs to read: file digests for `--extern`, tree digests for
/// directories under the profile dir.
pub trait Digests {
    fn file(&mut self, path: &Path) -> std::io::Result<String>;
    fn tree(&mut self, path: &Path) -> std::io::Result<String>;
}

/// The normalised arguments of `inv` (see the module documentation).
pub fn normalise_args(
    inv: &Invocation,
    places: &Places,
    digests: &mut dyn Digests,
) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for arg in split(&inv.args) {
        match arg {
            Arg::Opt(o, _)
                if matches!(o.as_str(), "--out-dir" | "--diagnostic-width" | "--color") => {}
            Arg::Opt(o, v) if o == "-L" => {
                let (kind, path) = v.split_once('=').unwrap_or(("all", v.as_str()));
                if kind == "dependency" {
                    continue;
                }
                if places.under_profile(path) {
                    let d = digests.tree(Path::new(path))?;
                    out.push(format!("-L {kind}=tree-sha256:{d}"));
                } else {
                    out.push(format!("-L {}", places.abstract_text(&v)));
                }
            }
            Arg::Opt(o, v) if o == "--extern" => match v.split_once('=') {
                Some((name, path)) if !path.is_empty() => {
                    let d = digests.file(Path::new(path))?;
                    out.push(format!("--extern {name}=sha256:{d}"));
                }
                _ => out.push(format!("--extern {v}")),
            },
            Arg::Opt(o, v) => out.push(format!("{o} {}", places.abstract_text(&v))),
            Arg::Flag(f) => out.push(places.abstract_text(&f)),
            Arg::Positional(p) => out.push(places.abstract_text(&p)),
        }
    }
    Ok(out)
}

/// The `--remap-path-prefix` arguments that make outputs independent of where the package
/// and its `OUT_DIR` are: the package root becomes `/cargo/src/<name>-<version>`, the
/// `OUT_DIR` `/cargo/out/<name>-<version>`.
pub fn remap_args(places: &Places, package: &str, version: &str) -> Vec<String> {
    let mut v = vec![format!(
        "--remap-path-prefix={}=/cargo/src/{package}-{version}",
        places.package_root
    )];
    if let Some(o) = &places.out_dir {
        v.push(format!(
            "--remap-path-prefix={o}=/cargo/out/{package}-{version}"
        ));
    }
    v
}

/// `hex` of a digest, for reports.
pub fn key_hex(inputs: &KeyInputs) -> String {
    hex(&inputs.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Fake(Vec<PathBuf>);
    impl Digests for Fake {
        fn file(&mut self, path: &Path) -> std::io::Result<String> {
            self.0.push(path.to_path_buf());
            Ok(format!(
                "f{}",
                path.file_name().unwrap().to_string_lossy().len()
            ))
        }
        fn tree(&mut self, path: &Path) -> std::io::Result<String> {
            self.0.push(path.to_path_buf());
            Ok("t".to_owned())
        }
    }

    fn places(home: &str, proj: &str) -> Places {
        Places {
            package_root: format!("{home}/registry/src/i/foo-1.0.0"),
            out_dir: Some(format!("{proj}/target/debug/build/foo-1/out")),
            deps_dir: format!("{proj}/target/debug/deps"),
            profile_dir: format!("{proj}/target/debug"),
        }
    }

    fn args(home: &str, proj: &str) -> Vec<String> {
        format!(
            "--crate-name foo {home}/registry/src/i/foo-1.0.0/src/lib.rs --crate-type lib \
             --out-dir {proj}/target/debug/deps -L dependency={proj}/target/debug/deps \
             --extern bar={proj}/target/debug/deps/libbar-1.rmeta \
             -L native={proj}/target/debug/build/foo-1/out -L native=/usr/lib --color always"
        )
        .split(' ')
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn normalised_arguments_do_not_depend_on_the_checkout_or_cargo_home() {
        let norm = |home: &str, proj: &str| {
            let inv = Invocation::parse(&args(home, proj));
            normalise_args(&inv, &places(home, proj), &mut Fake(Vec::new())).unwrap()
        };
        let a = norm("/home/a/.cargo", "/home/a/proj");
        assert_eq!(a, norm("/ci/cargo-home", "/ci/work/xyz"));
        assert_eq!(
            a,
            [
                "--crate-name foo",
                "@SRC@/src/lib.rs",
                "--crate-type lib",
                "--extern bar=sha256:f14",
                "-L native=tree-sha256:t",
                "-L native=/usr/lib",
            ]
        );
    }

    #[test]
    fn the_store_path_follows_the_key_and_differences_are_named() {
        let dir = StoreDir::new("/ix/store").unwrap();
        let a = KeyInputs {
            key_version: KEY_VERSION,
            toolchain: "t".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            package: "foo".into(),
            version: "1.0.0".into(),
            source: "sha256:00".into(),
            args: vec!["--cfg feature=\"std\"".into()],
            env: BTreeMap::from([("CARGO_PKG_NAME".into(), "foo".into())]),
            out_dir: None,
            linker: None,
        };
        let p = a.store_path(&dir).unwrap();
        assert_eq!(p.name(), "cargo-foo-1.0.0");
        assert_eq!(p, a.clone().store_path(&dir).unwrap());
        let mut b = a.clone();
        b.args = vec!["--cfg feature=\"alloc\"".into()];
        b.toolchain = "u".into();
        assert_ne!(p, b.store_path(&dir).unwrap());
        assert_eq!(
            a.differences(&b),
            [
                "toolchain",
                "arg --cfg feature=\"std\"",
                "arg --cfg feature=\"alloc\""
            ]
        );
    }

    #[test]
    fn placeholders_round_trip() {
        let p = places("/h", "/p");
        let text = "/p/target/debug/deps/foo.d: /h/registry/src/i/foo-1.0.0/src/lib.rs /p/target/debug/build/foo-1/out/gen.rs";
        let abs = p.abstract_text(text);
        assert_eq!(abs, "@DEPS@/foo.d: @SRC@/src/lib.rs @OUT_DIR@/gen.rs");
        let other = "/h/registry/src/i/zstd-sys-2.0.0/zstd/lib";
        assert_eq!(
            p.abstract_text(other),
            "@REGISTRY_SRC@/zstd-sys-2.0.0/zstd/lib"
        );
        assert_eq!(p.concrete_text(&p.abstract_text(other)), other);
        assert_eq!(p.concrete_text(&abs), text);
    }
}
