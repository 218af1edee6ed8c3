//! One local build of a derivation, start to finish (blocking). [`build_derivation`] is the
//! list of steps; each is a method of `Job` (one build's fixed facts):
//!
//! 1. `Job::lock_outputs`: take the install locks of all its outputs (sorted, so
//!    processes never deadlock); `Job::nothing_to_run`: stop if they are all valid by
//!    then: another process built them (exactly once);
//! 2. `Job::prepare` (in `prepare`): set up a build dir in a temp dir inside the store's
//!    filesystem, the input closure, the environment (the derivation's plus Nix's standard
//!    variables, `passAsFile` applied) and the spec for the sandbox;
//! 3. `Job::run_builder` (in `prepare`): run the builder ([`super::sandbox`]), its output
//!    going to the build log ([`crate::store::logs`]); a failed builder ends the build here;
//! 4. `Job::collect_outputs` (in `outputs`), for each output: it must exist; canonicalise
//!    it; one pass over its NAR computes the NAR hash and finds references (hash parts of
//!    the input closure and of the outputs); a fixed output's hash must be the declared one
//!    and it may not refer to anything; then sign it (with the configured keys);
//! 5. `Job::stage_outputs` and `Job::commit`: commit all outputs in one batch, deriver
//!    set, as built locally; record which derivation output each path is.
//!
//! With `check`, the outputs must already be valid: the build runs the same way but its
//! results are only compared with them (NAR hashes) and then thrown away.

mod outputs;
mod prepare;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::canonicalise::CanonError;
use super::refscan::RefScanError;
use super::sandbox::{self, BuildStatus, SandboxError, SandboxMode, ScratchPool};
use crate::format::derivation::Derivation;
use crate::format::keys::SecretKey;
use crate::format::store_path::StorePath;
use crate::fsnar;
use crate::store::{InstallLock, LocalStore, PathInfo, Staged, StoreError};
use prepare::Prepared;

/// How builds are run (the same for every build of one realise).
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub mode: SandboxMode,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Host paths visible in the sandbox: (inside, outside).
    pub sandbox_paths: Vec<(PathBuf, PathBuf)>,
    pub timeout: Option<Duration>,
    pub max_silent: Option<Duration>,
    /// Keep the build dir of a failed build.
    pub keep_failed: bool,
    /// Rebuild valid outputs and compare instead of registering.
    pub check: bool,
    /// Sign what is built with these.
    pub signing_keys: Vec<SecretKey>,
    /// Copy build output to stderr as well as to the log.
    pub print_logs: bool,
    /// Sandbox scratch dirs shared by the builds of one realise.
    pub scratch_pool: Option<Arc<ScratchPool>>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            mode: SandboxMode::Namespaces,
            cores: 0,
            sandbox_paths: Vec::new(),
            timeout: None,
            max_silent: None,
            keep_failed: false,
            check: false,
            signing_keys: Vec::new(),
            print_logs: false,
            scratch_pool: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("builder for '{drv}' failed: {status}{}{}",
        kept.as_ref().map(|k| format!(" (build dir kept at {})", k.display())).unwrap_or_default(),
        if log_tail.is_empty() { String::new() } else { format!("; last log lines:\n{log_tail}") })]
    Failed {
        drv: String,
        status: BuildStatus,
        log_tail: String,
        kept: Option<PathBuf>,
    },
    #[error("builder for '{drv}' did not produce output '{output}' ({path})")]
    MissingOutput {
        drv: String,
        output: String,
        path: String,
    },
    #[error("hash mismatch in fixed-output derivation '{drv}':\n  specified: {specified}\n       got: {got}")]
    FixedOutputMismatch {
        drv: String,
        specified: String,
        got: String,
    },
    #[error(
        "fixed-output derivation '{drv}' produced an output that refers to store paths: {refs}"
    )]
    FixedOutputReferences { drv: String, refs: String },
    #[error("derivation '{drv}' may not be deterministic: output '{path}' differs ({expected} before, {got} now)")]
    NotDeterministic {
        drv: String,
        path: String,
        expected: String,
        got: String,
    },
    #[error("cannot check '{drv}': output '{path}' is not valid")]
    CheckNotValid { drv: String, path: String },
    #[error("derivation '{drv}' has an output without a path (content-addressed derivations are not supported)")]
    Deferred { drv: String },
    #[error("build of '{drv}'")]
    Sandbox {
        drv: String,
        #[source]
        source: Box<SandboxError>,
    },
    #[error("build of '{drv}': output '{path}'")]
    Canonicalise {
        drv: String,
        path: String,
        #[source]
        source: Box<CanonError>,
    },
    #[error("build of '{drv}': scanning output '{path}'")]
    Scan {
        drv: String,
        path: String,
        #[source]
        source: Box<RefScanError>,
    },
    #[error("build of '{drv}': {context}")]
    Io {
        drv: String,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot build '{drv}' in the sandbox: {why}")]
    NoSandbox { drv: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct Built {
    pub drv: StorePath,
    /// Output name → info of the (now valid) path.
    pub outputs: BTreeMap<String, PathInfo>,
    /// False if the outputs were found valid (another process built them) and nothing ran.
    pub ran: bool,
}

/// Builds `drv` (the derivation at `drv_path`); `inputs` are the store paths it needs
/// (input sources and the used outputs of input derivations), all valid. See the module
/// doc.
pub fn build_derivation(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
    inputs: &BTreeSet<StorePath>,
    config: &BuildConfig,
) -> Result<Built, BuildError> {
    let mut job = Job::new(store, drv_path, drv, config)?;
    let mut locked = job.lock_outputs()?;
    if job.nothing_to_run(&locked.valid)? {
        return Ok(Built {
            drv: drv_path.clone(),
            outputs: locked.valid,
            ran: false,
        });
    }
    job.require_sandbox()?;
    let prepared = job.prepare(inputs)?;
    let prepared = job.run_builder(prepared)?;
    let results = job.collect_outputs(&prepared, &locked.valid)?;
    if config.check {
        tracing::info!("'{}' rebuilt identically", job.printed);
        return Ok(job.built(locked.valid));
    }
    let (batch, outputs) = job.stage_outputs(&prepared, &mut locked, results)?;
    job.commit(batch)?;
    drop(prepared);
    Ok(job.built(outputs))
}

/// One build's fixed facts, shared by its steps.
struct Job<'a> {
    store: &'a LocalStore,
    drv_path: &'a StorePath,
    drv: &'a Derivation,
    config: &'a BuildConfig,
    /// `drv_path` as printed in messages.
    printed: String,
    /// Output name → path.
    outputs: BTreeMap<&'a str, &'a StorePath>,
    timings: Timings,
}

/// The outputs' install locks, and those of the outputs that were valid once locked.
struct Locked<'a> {
    locks: BTreeMap<&'a str, InstallLock>,
    valid: BTreeMap<String, PathInfo>,
}

/// When the steps started, for one debug line per build.
struct Timings {
    start: Instant,
    /// Set by [`Job::run_builder`].
    builder_start: Instant,
    builder: Duration,
    /// Set by [`Job::run_builder`] when the builder is done.
    outputs_start: Instant,
}

impl<'a> Job<'a> {
    /// Refuses derivations with outputs without a path (content-addressed ones).
    fn new(
        store: &'a LocalStore,
        drv_path: &'a StorePath,
        drv: &'a Derivation,
        config: &'a BuildConfig,
    ) -> Result<Self, BuildError> {
        let now = Instant::now();
        let printed = store.print_path(drv_path);
        if drv.outputs.values().any(|o| o.path().is_none()) {
            return Err(BuildError::Deferred { drv: printed });
        }
        Ok(Job {
            store,
            drv_path,
            drv,
            config,
            printed,
            outputs: drv.output_paths(),
            timings: Timings {
                start: now,
                builder_start: now,
                builder: Duration::ZERO,
                outputs_start: now,
            },
        })
    }

    /// Takes the install locks of all outputs, in path order, then looks which are valid.
    fn lock_outputs(&self) -> Result<Locked<'a>, BuildError> {
        let mut by_path: Vec<(&StorePath, &str)> =
            self.outputs.iter().map(|(o, p)| (*p, *o)).collect();
        by_path.sort();
        let mut locks = BTreeMap::new();
        for (p, o) in by_path {
            locks.insert(o, self.store.lock_for_install(p)?);
        }
        let mut valid = BTreeMap::new();
        for (o, p) in &self.outputs {
            if let Some(info) = self.store.query(p)? {
                valid.insert((*o).to_owned(), info);
            }
        }
        Ok(Locked { locks, valid })
    }

    /// Whether every output was valid once locked (another process built them): then
    /// nothing runs. With `check`, every output must be valid and the build runs.
    fn nothing_to_run(&self, valid: &BTreeMap<String, PathInfo>) -> Result<bool, BuildError> {
        if self.config.check {
            if let Some((_, p)) = self.outputs.iter().find(|(o, _)| !valid.contains_key(**o)) {
                return Err(BuildError::CheckNotValid {
                    drv: self.printed.clone(),
                    path: self.store.print_path(p),
                });
            }
            return Ok(false);
        }
        Ok(valid.len() == self.outputs.len())
    }

    /// Fails (before anything is set up) when the sandbox was asked for and this machine
    /// cannot provide it.
    fn require_sandbox(&self) -> Result<(), BuildError> {
        if self.config.mode == SandboxMode::Namespaces {
            sandbox::namespaces_available().map_err(|why| BuildError::NoSandbox {
                drv: self.printed.clone(),
                why,
            })?;
        }
        Ok(())
    }

    /// Stages the outputs that are not valid yet (those that are stay as they were), moving
    /// each out of the build's temp dir under its install lock. Returns the batch to commit
    /// and the info of every output.
    fn stage_outputs(
        &self,
        prepared: &Prepared,
        locked: &mut Locked<'_>,
        results: Vec<(String, PathInfo)>,
    ) -> Result<(Vec<Staged>, BTreeMap<String, PathInfo>), BuildError> {
        let mut batch = Vec::new();
        let mut outputs = std::mem::take(&mut locked.valid);
        for (o, info) in results {
            if outputs.contains_key(&o) {
                continue; // valid before we built (kept as it was)
            }
            let lock = locked.locks.remove(o.as_str()).expect("locked above");
            let from = prepared.dest(&o);
            outputs.insert(o, info.clone());
            batch.push(self.store.stage_locked(lock, info, |to: &Path| {
                fsnar::rename_tree(&from, to).map_err(|e| {
                    StoreError::io(format!("cannot move the output {}", from.display()), e)
                })
            })?);
        }
        Ok((batch, outputs))
    }

    /// Commits the staged outputs in one batch and records which derivation output each
    /// path is.
    fn commit(&self, batch: Vec<Staged>) -> Result<(), BuildError> {
        let t = &self.timings;
        let outputs_time = t.outputs_start.elapsed();
        let commit_start = Instant::now();
        self.store.commit_staged(batch)?;
        tracing::debug!(
            "built '{}': setup {:.1?}, builder {:.1?}, outputs {outputs_time:.1?}, commit {:.1?}",
            self.printed,
            t.builder_start.duration_since(t.start),
            t.builder,
            commit_start.elapsed()
        );
        self.store
            .register_derivation_outputs(self.drv_path, &self.drv.owned_output_paths())?;
        Ok(())
    }

    /// What a build that ran did.
    fn built(&self, outputs: BTreeMap<String, PathInfo>) -> Built {
        Built {
            drv: self.drv_path.clone(),
            outputs,
            ran: true,
        }
    }
}
