//! The builder's environment, as Nix 2.8 computes it (`LocalDerivationGoal::initEnv` and
//! `initTmpDir`).
//!
//! Order matters, because later entries win:
//!
//! 1. `PATH=/path-not-set`, `HOME=/homeless-shelter`, `NIX_STORE=<store dir>`,
//!    `NIX_BUILD_CORES=<cores>`;
//! 2. the derivation's `env` (after [`apply_pass_as_file`]), which may override the above;
//! 3. `NIX_BUILD_TOP`, `TMPDIR`, `TMP`, `TEMP`, `TEMPDIR` and `PWD`, all the build dir as the
//!    builder sees it (`/build` in the sandbox, the real build dir without one);
//! 4. `NIX_OUTPUT_CHECKED=1` for fixed-output derivations, then their `impureEnvVars`;
//! 5. `NIX_LOG_FD=2` and `TERM=xterm-256color`.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::format::nixbase32;

/// Where the build dir appears inside the sandbox (Nix's `sandbox-build-dir`).
pub const SANDBOX_BUILD_DIR: &str = "/build";

/// The inputs of [`standard_env`] besides the derivation's own environment.
#[derive(Debug, Clone)]
pub struct EnvParams<'a> {
    /// The logical store dir, e.g. `/nix/store`.
    pub store_dir: &'a str,
    /// The build dir as the builder sees it: [`SANDBOX_BUILD_DIR`] in the sandbox, the real
    /// build dir otherwise.
    pub build_top: &'a str,
    /// `NIX_BUILD_CORES` (Nix's `cores` setting; 0 means "all").
    pub cores: u32,
    /// Whether the derivation is fixed-output.
    pub fixed_output: bool,
    /// For fixed-output derivations only: the `impureEnvVars` with their values in the
    /// caller's environment (Nix passes an unset variable as the empty string). Ignored for
    /// other derivations.
    pub impure_vars: &'a BTreeMap<String, String>,
}

/// The complete environment of a builder: Nix's standard variables around `drv_env`.
pub fn standard_env(
    drv_env: &BTreeMap<String, String>,
    params: &EnvParams<'_>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    set("PATH", "/path-not-set");
    set("HOME", "/homeless-shelter");
    set("NIX_STORE", params.store_dir);
    set("NIX_BUILD_CORES", &params.cores.to_string());
    for (k, v) in drv_env {
        set(k, v);
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TMP", "TEMP", "TEMPDIR", "PWD"] {
        set(k, params.build_top);
    }
    if params.fixed_output {
        set("NIX_OUTPUT_CHECKED", "1");
        for (k, v) in params.impure_vars {
            set(k, v);
        }
    }
    set("NIX_LOG_FD", "2");
    set("TERM", "xterm-256color");
    env
}

/// The file name Nix uses for a `passAsFile` attribute: `.attr-<nix32 sha256 of the name>`.
pub fn pass_as_file_name(attr: &str) -> String {
    format!(
        ".attr-{}",
        nixbase32::encode(&Sha256::digest(attr.as_bytes()))
    )
}

/// Applies `passAsFile`: each attribute named in the space-separated `passAsFile` entry of
/// `drv_env` is written to `<build_dir>/.attr-<hash>` and replaced by `<name>Path` pointing at
/// that file as the builder sees it (under `build_top`). Returns the environment to give
/// [`standard_env`]. Structured attributes (`__json`) are not handled here.
pub fn apply_pass_as_file(
    drv_env: &BTreeMap<String, String>,
    build_dir: &Path,
    build_top: &str,
) -> io::Result<BTreeMap<String, String>> {
    let names: Vec<&str> = drv_env
        .get("passAsFile")
        .map(|s| s.split_ascii_whitespace().collect())
        .unwrap_or_default();
    let mut env = BTreeMap::new();
    for (k, v) in drv_env {
        if !names.contains(&k.as_str()) {
            env.insert(k.clone(), v.clone());
            continue;
        }
        let file = pass_as_file_name(k);
        let path = build_dir.join(&file);
        std::fs::write(&path, v)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        env.insert(format!("{k}Path"), format!("{build_top}/{file}"));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_variables_and_precedence() {
        let drv: BTreeMap<String, String> = [
            ("out", "/ix/store/x-a"),
            ("PATH", "/custom"),
            ("TMPDIR", "/nope"),
            ("TERM", "dumb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let impure = BTreeMap::from([("http_proxy".to_owned(), String::new())]);
        let params = EnvParams {
            store_dir: "/ix/store",
            build_top: SANDBOX_BUILD_DIR,
            cores: 4,
            fixed_output: false,
            impure_vars: &impure,
        };
        let env = standard_env(&drv, &params);
        let expect = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(expect("PATH"), Some("/custom"));
        assert_eq!(expect("HOME"), Some("/homeless-shelter"));
        assert_eq!(expect("NIX_STORE"), Some("/ix/store"));
        assert_eq!(expect("NIX_BUILD_CORES"), Some("4"));
        assert_eq!(expect("TMPDIR"), Some("/build"));
        assert_eq!(expect("PWD"), Some("/build"));
        assert_eq!(expect("TERM"), Some("xterm-256color"));
        assert_eq!(expect("NIX_LOG_FD"), Some("2"));
        assert_eq!(expect("out"), Some("/ix/store/x-a"));
        assert_eq!(expect("NIX_OUTPUT_CHECKED"), None);
        assert_eq!(expect("http_proxy"), None);
        assert_eq!(env.len(), 13);

        let fod = standard_env(
            &drv,
            &EnvParams {
                fixed_output: true,
                ..params
            },
        );
        assert_eq!(fod.get("NIX_OUTPUT_CHECKED").map(String::as_str), Some("1"));
        assert_eq!(fod.get("http_proxy").map(String::as_str), Some(""));
    }

    #[test]
    fn pass_as_file_writes_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let drv: BTreeMap<String, String> = [("passAsFile", "text"), ("text", "hello"), ("x", "y")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let env = apply_pass_as_file(&drv, dir.path(), "/build").unwrap();
        let file = pass_as_file_name("text");
        assert_eq!(file.len(), ".attr-".len() + 52);
        assert_eq!(env.get("textPath"), Some(&format!("/build/{file}")));
        assert!(!env.contains_key("text"));
        assert_eq!(env.get("x").map(String::as_str), Some("y"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(file)).unwrap(),
            "hello"
        );
    }
}
