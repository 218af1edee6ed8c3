//! One local build of a derivation, start to finish (blocking):
//!
//! 1. take the install locks of all its outputs (sorted, so processes never deadlock), and
//!    stop if they are all valid by then: another process built them (exactly once);
//! 2. set up a build dir in a temp dir inside the store's filesystem, the environment
//!    (the derivation's plus Nix's standard variables, `passAsFile` applied) and the input
//!    closure;
//! 3. run the builder ([`super::sandbox`]), its output going to the build log
//!    ([`crate::store::logs`]);
//! 4. for each output: it must exist; canonicalise it; one pass over its NAR computes the
//!    NAR hash and finds references (hash parts of the input closure and of the outputs);
//!    a fixed output's hash must be the declared one and it may not refer to anything;
//! 5. sign (with the configured keys) and commit all outputs in one batch, deriver set, as
//!    built locally; record which derivation output each path is.
//!
//! With `check`, the outputs must already be valid: the build runs the same way but its
//! results are only compared with them (NAR hashes) and then thrown away.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::canonicalise::{canonicalise_output, CanonError};
use super::refscan::{RefScanError, RefScanSink};
use super::sandbox::{
    self, BuildSpec, BuildStatus, EnvParams, SandboxError, SandboxMode, ScratchPool,
};
use crate::format::derivation::{Derivation, FixedOutputHash, OutputHashMode};
use crate::format::hash::{Hash, HashAlgo, HashSink, Hasher};
use crate::format::keys::SecretKey;
use crate::format::narinfo::fingerprint;
use crate::format::store_path::StorePath;
use crate::fsnar;
use crate::store::lock::TempDir;
use crate::store::logs::LogSink;
use crate::store::{InstallLock, LocalStore, PathInfo, Staged, StoreError};

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
    let t_start = std::time::Instant::now();
    let printed = store.print_path(drv_path);
    if drv.outputs.values().any(|o| o.path().is_none()) {
        return Err(BuildError::Deferred { drv: printed });
    }
    let outputs: BTreeMap<&str, &StorePath> = drv.output_paths();
    // 1. Locks, in path order.
    let mut by_path: Vec<(&StorePath, &str)> = outputs.iter().map(|(o, p)| (*p, *o)).collect();
    by_path.sort();
    let mut locks: BTreeMap<&str, InstallLock> = BTreeMap::new();
    for (p, o) in &by_path {
        locks.insert(o, store.lock_for_install(p)?);
    }
    let mut valid: BTreeMap<String, PathInfo> = BTreeMap::new();
    for (o, p) in &outputs {
        if let Some(info) = store.query(p)? {
            valid.insert((*o).to_owned(), info);
        }
    }
    if config.check {
        if let Some((_, p)) = outputs.iter().find(|(o, _)| !valid.contains_key(**o)) {
            return Err(BuildError::CheckNotValid {
                drv: printed,
                path: store.print_path(p),
            });
        }
    } else if valid.len() == outputs.len() {
        return Ok(Built {
            drv: drv_path.clone(),
            outputs: valid,
            ran: false,
        });
    }

    if config.mode == SandboxMode::Namespaces {
        sandbox::namespaces_available().map_err(|why| BuildError::NoSandbox {
            drv: printed.clone(),
            why,
        })?;
    }

    // 2. The build dir, environment and inputs.
    let io_err = |context: &str| {
        let drv = printed.clone();
        let context = context.to_owned();
        move |source| BuildError::Io {
            drv,
            context,
            source,
        }
    };
    let tmp = TempDir::new(store.layout()).map_err(io_err("cannot create a temp dir"))?;
    let build_dir = tmp.path().join("build");
    fs::create_dir(&build_dir).map_err(io_err("cannot create the build dir"))?;
    // Rooted, then checked: a collection keeps their closures from now on.
    for p in inputs {
        store.add_temp_root(p)?;
    }
    let closure = store.closure(inputs.iter())?;
    let dir = store.store_dir();
    let build_top = config.mode.build_top(&build_dir);
    let fixed = drv.fixed_output();
    let impure = impure_vars(drv, fixed.is_some());
    let env = sandbox::apply_pass_as_file(&drv.env, &build_dir, &build_top)
        .map_err(io_err("cannot write passAsFile attributes"))?;
    let env = sandbox::standard_env(
        &env,
        &EnvParams {
            store_dir: dir.as_str(),
            build_top: &build_top,
            cores: config.cores,
            fixed_output: fixed.is_some(),
            impure_vars: &impure,
        },
    );
    let dest = |o: &str| tmp.path().join(format!("out-{o}"));
    let spec = BuildSpec {
        builder: PathBuf::from(&drv.builder),
        args: drv.args.clone(),
        env,
        store_dir: PathBuf::from(dir.as_str()),
        inputs: closure
            .iter()
            .map(|p| {
                (
                    PathBuf::from(dir.display_path(p)),
                    store.layout().real_path(p),
                )
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|(o, p)| (PathBuf::from(dir.display_path(p)), dest(o)))
            .collect(),
        build_dir: build_dir.clone(),
        sandbox_paths: config.sandbox_paths.clone(),
        network: fixed.is_some(),
        timeout: config.timeout,
        max_silent: config.max_silent,
        scratch_pool: config.scratch_pool.clone(),
    };

    // 3. Run it.
    let mut log = LogSink::create(store.layout(), drv_path, config.print_logs)
        .map_err(io_err("cannot create the build log"))?;
    tracing::info!("building '{printed}'");
    let t_run = std::time::Instant::now();
    let status =
        sandbox::run(&spec, config.mode, &mut log).map_err(|source| BuildError::Sandbox {
            drv: printed.clone(),
            source: Box::new(source),
        })?;
    log.finish().map_err(io_err("cannot write the build log"))?;
    if !status.success() {
        let kept = config.keep_failed.then(|| tmp.keep());
        return Err(BuildError::Failed {
            drv: printed,
            status,
            log_tail: log.tail(25),
            kept,
        });
    }

    let run_time = t_run.elapsed();
    let t_post = std::time::Instant::now();
    // 4. Check, canonicalise, hash and scan each output.
    let mut candidates: Vec<StorePath> = closure.iter().cloned().collect();
    candidates.extend(outputs.values().map(|p| (*p).clone()));
    let mut results: Vec<(String, PathInfo)> = Vec::new();
    for (o, p) in &outputs {
        let path_str = store.print_path(p);
        let built = dest(o);
        if fs::symlink_metadata(&built).is_err() {
            return Err(BuildError::MissingOutput {
                drv: printed,
                output: (*o).to_owned(),
                path: path_str,
            });
        }
        canonicalise_output(&built).map_err(|source| BuildError::Canonicalise {
            drv: printed.clone(),
            path: path_str.clone(),
            source: Box::new(source),
        })?;
        let (nar_hash, nar_size, references) =
            hash_and_scan(&built, &candidates).map_err(|source| BuildError::Scan {
                drv: printed.clone(),
                path: path_str.clone(),
                source: Box::new(source),
            })?;
        let mut ca = None;
        if let Some((_, fod)) = fixed {
            check_fixed_output(fod, &nar_hash, &built).map_err(|got| match got {
                Ok(got) => BuildError::FixedOutputMismatch {
                    drv: printed.clone(),
                    specified: fod.hash.to_sri(),
                    got: got.to_sri(),
                },
                Err(e) => BuildError::Io {
                    drv: printed.clone(),
                    context: format!("cannot hash output '{path_str}'"),
                    source: e,
                },
            })?;
            if !references.is_empty() {
                let refs: Vec<String> = references.iter().map(|r| store.print_path(r)).collect();
                return Err(BuildError::FixedOutputReferences {
                    drv: printed,
                    refs: refs.join(", "),
                });
            }
            ca = Some(fod.content_address());
        }
        if config.check {
            let before = &valid[*o];
            if before.nar_hash != nar_hash {
                return Err(BuildError::NotDeterministic {
                    drv: printed,
                    path: path_str,
                    expected: before.nar_hash.to_sri(),
                    got: nar_hash.to_sri(),
                });
            }
            continue;
        }
        let sigs = config
            .signing_keys
            .iter()
            .map(|k| {
                k.sign(&fingerprint(dir, p, &nar_hash, nar_size, &references))
                    .to_string()
            })
            .collect();
        results.push((
            (*o).to_owned(),
            PathInfo {
                path: (*p).clone(),
                nar_hash,
                nar_size,
                references,
                deriver: Some(drv_path.clone()),
                sigs,
                ca,
                registration_time: 0,
                ultimate: true,
            },
        ));
    }
    if config.check {
        tracing::info!("'{printed}' rebuilt identically");
        return Ok(Built {
            drv: drv_path.clone(),
            outputs: valid,
            ran: true,
        });
    }

    // 5. Commit what is not valid yet, in one batch.
    let mut batch: Vec<Staged> = Vec::new();
    let mut outputs_info = valid;
    for (o, info) in results {
        if outputs_info.contains_key(&o) {
            continue; // valid before we built (kept as it was)
        }
        let lock = locks.remove(o.as_str()).expect("locked above");
        let from = dest(&o);
        outputs_info.insert(o, info.clone());
        batch.push(store.stage_locked(lock, info, |to: &Path| {
            fsnar::rename_tree(&from, to).map_err(|e| {
                StoreError::io(format!("cannot move the output {}", from.display()), e)
            })
        })?);
    }
    let check_time = t_post.elapsed();
    let t_commit = std::time::Instant::now();
    store.commit_staged(batch)?;
    tracing::debug!(
        "built '{printed}': setup {:.1?}, builder {run_time:.1?}, outputs {check_time:.1?}, commit {:.1?}",
        t_run.duration_since(t_start),
        t_commit.elapsed()
    );
    store.register_derivation_outputs(drv_path, &drv.owned_output_paths())?;
    drop(tmp);
    Ok(Built {
        drv: drv_path.clone(),
        outputs: outputs_info,
        ran: true,
    })
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

/// The sha256 NAR hash, the NAR size and the references among `candidates` of the tree at
/// `path`, in one pass over its NAR.
fn hash_and_scan(
    path: &Path,
    candidates: &[StorePath],
) -> Result<(Hash, u64, BTreeSet<StorePath>), RefScanError> {
    struct Tee<'a> {
        hash: &'a mut HashSink,
        scan: &'a mut RefScanSink,
    }
    impl Write for Tee<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.hash.write_all(buf)?;
            self.scan.feed(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut hash = HashSink::new(HashAlgo::Sha256);
    let mut scan = RefScanSink::new(candidates.iter().map(|p| p.hash_str()))?;
    fsnar::dump(
        path,
        Tee {
            hash: &mut hash,
            scan: &mut scan,
        },
    )?;
    let (nar_hash, nar_size) = hash.finish();
    let found = scan.into_found();
    let refs = candidates
        .iter()
        .filter(|p| found.contains(p.hash_str()))
        .cloned()
        .collect();
    Ok((nar_hash, nar_size, refs))
}

/// Compares a fixed output with its declared hash: `Err(Ok(actual))` on a mismatch.
fn check_fixed_output(
    fod: &FixedOutputHash,
    nar_hash: &Hash,
    tree: &Path,
) -> Result<(), Result<Hash, io::Error>> {
    let algo = fod.hash.algo();
    let got = match fod.mode {
        OutputHashMode::Recursive if algo == HashAlgo::Sha256 => *nar_hash,
        OutputHashMode::Recursive => {
            let mut h = Hasher::new(algo);
            fsnar::dump(tree, &mut h).map_err(|e| Err(io::Error::other(e)))?;
            h.finish()
        }
        OutputHashMode::Flat => {
            let meta = fs::symlink_metadata(tree).map_err(Err)?;
            if !meta.file_type().is_file() {
                return Err(Err(io::Error::other(
                    "a flat fixed output must be a single regular file",
                )));
            }
            let mut h = Hasher::new(algo);
            io::copy(&mut fs::File::open(tree).map_err(Err)?, &mut h).map_err(Err)?;
            h.finish()
        }
    };
    if got == fod.hash {
        Ok(())
    } else {
        Err(Ok(got))
    }
}
