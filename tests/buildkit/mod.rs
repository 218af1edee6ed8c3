//! Helpers of `tests/build.rs`: writing recipes, running `store realise`, reading
//! results.
#![allow(dead_code)]

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Host directories the builders need (dash and coreutils and their libraries).
/// No test should take long; a hung build fails the test instead of hanging it.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd`, killing it after [`TIMEOUT`].
pub(crate) fn run_timed(cmd: Command) -> Output {
    run_with_timeout(cmd, TIMEOUT)
}

/// A store under a temp root plus a directory of recipes.
pub(crate) struct Builds {
    pub(crate) s: TestStore,
    pub(crate) recipes: PathBuf,
}

/// One instantiated recipe.
pub(crate) struct Drv {
    pub(crate) path: String,
    pub(crate) outputs: BTreeMap<String, String>,
}

impl Drv {
    pub(crate) fn out(&self) -> &str {
        &self.outputs["out"]
    }
}

impl Builds {
    pub(crate) fn new() -> Self {
        let s = TestStore::new();
        let recipes = s.scratch().join("recipes");
        fs::create_dir_all(&recipes).unwrap();
        Builds { s, recipes }
    }

    /// Writes `<name>.toml` and returns its path.
    pub(crate) fn recipe(&self, name: &str, toml: &str) -> PathBuf {
        let f = self.recipes.join(format!("{name}.toml"));
        fs::write(&f, toml).unwrap();
        f
    }

    /// Writes a recipe and instantiates it.
    pub(crate) fn drv(&self, name: &str, toml: &str) -> Drv {
        let f = self.recipe(name, toml);
        self.instantiate(&f)
    }

    pub(crate) fn instantiate(&self, f: &Path) -> Drv {
        let out = self.s.ok(&["instantiate", "--json", f.to_str().unwrap()]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let v = &v[0];
        Drv {
            path: v["drvPath"].as_str().unwrap().to_owned(),
            outputs: v["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, p)| (k.clone(), p.as_str().unwrap().to_owned()))
                .collect(),
        }
    }

    /// `store realise ARGS` with the sandbox paths the builders need.
    pub(crate) fn realise(&self, args: &[&str]) -> Output {
        let mut c = self.s.cmd();
        c.arg("realise").arg("--sandbox-paths").arg(sandbox_paths());
        c.args(args);
        run_timed(c)
    }

    /// Realises and expects success; returns the printed lines.
    pub(crate) fn realise_ok(&self, args: &[&str]) -> Vec<String> {
        let out = self.realise(args);
        assert_success(&out, &("realise", args));
        text(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// Realises and expects failure (not a crash); returns stderr.
    pub(crate) fn realise_fails(&self, args: &[&str]) -> String {
        let out = self.realise(args);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "realise {args:?} should fail; stdout {} stderr {err}",
            text(&out.stdout)
        );
        assert!(
            !err.contains("panicked"),
            "realise {args:?} panicked: {err}"
        );
        err
    }

    pub(crate) fn valid(&self, path: &str) -> bool {
        let out = self.s.cmd().args(["path-info", path]).output().unwrap();
        let err = text(&out.stderr);
        assert!(
            !err.contains("panicked"),
            "path-info {path} panicked: {err}"
        );
        out.status.success()
    }

    /// `store path-info --json` of one path.
    pub(crate) fn info(&self, path: &str) -> Value {
        let v: Value = serde_json::from_str(&self.s.ok(&["path-info", "--json", path])).unwrap();
        v[0].clone()
    }

    pub(crate) fn references(&self, path: &str) -> BTreeSet<String> {
        self.info(path)["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    pub(crate) fn read(&self, path: &str) -> String {
        fs::read_to_string(self.s.real(path)).unwrap()
    }

    /// Every hash form `store hash file` prints for `content`, as `sha256`.
    pub(crate) fn hash_forms(&self, content: &[u8]) -> Vec<String> {
        let f = self.s.scratch().join("hash-me");
        fs::write(&f, content).unwrap();
        ["--base16", "--base32", "--base64", "--sri"]
            .iter()
            .map(|enc| {
                self.s
                    .ok(&["hash", "file", enc, f.to_str().unwrap()])
                    .trim()
                    .to_owned()
            })
            .collect()
    }
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn lines_set(lines: &[String]) -> BTreeSet<String> {
    lines.iter().cloned().collect()
}
