//! Steps 2 and 3 of a local build: the build dir, input closure, environment and
//! [`BuildSpec`] ([`Job::prepare`]), then running the builder into the build log
//! ([`Job::run_builder`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{BuildError, Job};
use crate::build::sandbox::{self, BuildSpec, EnvParams};
use crate::format::derivation::Derivation;
use crate::format::store_path::StorePath;
use crate::store::lock::TempDir;
use crate::store::logs::LogSink;

/// What a build runs in: its temp dir (removed on drop unless kept), the input closure and
/// the spec for the sandbox.
pub(super) struct Prepared {
    /// Holds the build dir and, after the build, the outputs (`out-<name>`).
    tmp: TempDir,
    pub closure: BTreeSet<StorePath>,
    pub spec: BuildSpec,
}

impl Prepared {
    /// Where the builder's output `output` is moved after the build.
    pub(super) fn dest(&self, output: &str) -> PathBuf {
        output_dest(self.tmp.path(), output)
    }
}

fn output_dest(tmp: &Path, output: &str) -> PathBuf {
    tmp.join(format!("out-{output}"))
}

impl Job<'_> {
    /// Creates the temp dir and build dir, roots the inputs and writes what the environment
    /// needs there (`passAsFile`).
    pub(super) fn prepare(&self, inputs: &BTreeSet<StorePath>) -> Result<Prepared, BuildError> {
        let tmp =
            TempDir::new(self.store.layout()).map_err(self.io_err("cannot create a temp dir"))?;
        let build_dir = tmp.path().join("build");
        fs::create_dir(&build_dir).map_err(self.io_err("cannot create the build dir"))?;
        let closure = self.input_closure(inputs)?;
        let env = self.environment(&build_dir)?;
        let spec = self.build_spec(tmp.path(), &closure, build_dir, env);
        Ok(Prepared { tmp, closure, spec })
    }

    /// The closure of `inputs`, rooted first and then checked: a collection keeps it from
    /// now on.
    fn input_closure(
        &self,
        inputs: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, BuildError> {
        for p in inputs {
            self.store.add_temp_root(p)?;
        }
        Ok(self.store.closure(inputs.iter())?)
    }

    /// The builder's environment: the derivation's with `passAsFile` applied (the files
    /// written into `build_dir`), plus Nix's standard variables.
    fn environment(&self, build_dir: &Path) -> Result<BTreeMap<String, String>, BuildError> {
        let build_top = self.config.mode.build_top(build_dir);
        let fixed = self.drv.fixed_output().is_some();
        let impure = impure_vars(self.drv, fixed);
        let env = sandbox::apply_pass_as_file(&self.drv.env, build_dir, &build_top)
            .map_err(self.io_err("cannot write passAsFile attributes"))?;
        Ok(sandbox::standard_env(
            &env,
            &EnvParams {
                store_dir: self.store.store_dir().as_str(),
                build_top: &build_top,
                cores: self.config.cores,
                fixed_output: fixed,
                impure_vars: &impure,
            },
        ))
    }

    /// What the sandbox runs: inputs and outputs as (logical, physical) paths, the outputs
    /// going to `out-<name>` in `tmp`; network access only for a fixed output.
    fn build_spec(
        &self,
        tmp: &Path,
        closure: &BTreeSet<StorePath>,
        build_dir: PathBuf,
        env: BTreeMap<String, String>,
    ) -> BuildSpec {
        let dir = self.store.store_dir();
        let logical = |p: &StorePath| PathBuf::from(dir.display_path(p));
        BuildSpec {
            builder: PathBuf::from(&self.drv.builder),
            args: self.drv.args.clone(),
            env,
            store_dir: PathBuf::from(dir.as_str()),
            inputs: closure
                .iter()
                .map(|p| (logical(p), self.store.layout().real_path(p)))
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|(o, p)| (logical(p), output_dest(tmp, o)))
                .collect(),
            build_dir,
            sandbox_paths: self.config.sandbox_paths.clone(),
            network: self.drv.fixed_output().is_some(),
            timeout: self.config.timeout,
            max_silent: self.config.max_silent,
            scratch_pool: self.config.scratch_pool.clone(),
        }
    }

    /// Runs the builder, its output going to the build log. A builder that fails is an
    /// error carrying the log's tail (and the kept build dir with `keep_failed`).
    pub(super) fn run_builder(&mut self, prepared: Prepared) -> Result<Prepared, BuildError> {
        let mut log = LogSink::create(self.store.layout(), self.drv_path, self.config.print_logs)
            .map_err(self.io_err("cannot create the build log"))?;
        tracing::info!("building '{}'", self.printed);
        self.timings.builder_start = Instant::now();
        let status =
            sandbox::run(&prepared.spec, self.config.mode, &mut log).map_err(|source| {
                BuildError::Sandbox {
                    drv: self.printed.clone(),
                    source: Box::new(source),
                }
            })?;
        log.finish()
            .map_err(self.io_err("cannot write the build log"))?;
        if !status.success() {
            let kept = self.config.keep_failed.then(|| prepared.tmp.keep());
            return Err(BuildError::Failed {
                drv: self.printed.clone(),
                status,
                log_tail: log.tail(25),
                kept,
            });
        }
        self.timings.builder = self.timings.builder_start.elapsed();
        self.timings.outputs_start = Instant::now();
        Ok(prepared)
    }

    /// A [`BuildError::Io`] of this build, saying what it was doing.
    pub(super) fn io_err(&self, context: &str) -> impl FnOnce(io::Error) -> BuildError {
        let drv = self.printed.clone();
        let context = context.to_owned();
        move |source| BuildError::Io {
            drv,
            context,
            source,
        }
    }
}

/// `impureEnvVars` of a fixed-output derivation with their values here (Nix passes unset
/// ones as empty strings).
fn impure_vars(drv: &Derivation, fixed: bool) -> BTreeMap<String, String> {
    if !fixed {
        return BTreeMap::new();
    }
    drv.env
        .get("impureEnvVars")
        .map(|names| {
            names
                .split_whitespace()
                .map(|n| (n.to_owned(), std::env::var(n).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impure_vars_only_for_fixed_outputs_and_unset_ones_are_empty() {
        let drv = Derivation {
            name: "fetch".into(),
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            system: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: Vec::new(),
            env: BTreeMap::from([(
                "impureEnvVars".to_owned(),
                "PATH STORE_TEST_SURELY_UNSET_VAR".to_owned(),
            )]),
        };
        assert!(impure_vars(&drv, false).is_empty());
        let vars = impure_vars(&drv, true);
        assert_eq!(vars.len(), 2);
        assert_eq!(vars["PATH"], std::env::var("PATH").unwrap_or_default());
        assert_eq!(vars["STORE_TEST_SURELY_UNSET_VAR"], "");
    }

    #[test]
    fn outputs_go_to_their_own_entry_in_the_temp_dir() {
        let tmp = Path::new("/state/tmp/x");
        assert_eq!(output_dest(tmp, "out"), tmp.join("out-out"));
        assert_ne!(output_dest(tmp, "dev"), output_dest(tmp, "out"));
    }
}
