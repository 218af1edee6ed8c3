//! The rustc wrapper: for one rustc invocation, plan the unit (is it cacheable, what is
//! its key and store path), then install it from the local store or a trusted substituter,
//! or compile it (recording it with `--record`). Nothing about the cache can fail the
//! build: every problem before rustc runs means "compile it", with the reason journalled.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use super::check;
use super::digests::{remember, MemoDigests};
use super::invocation::Invocation;
use super::journal::{self, Entry, Outcome};
use super::key::{self, normalise_args, remap_args, KeyInputs, Places, KEY_VERSION};
use super::local;
use super::source::{self, SourceKind};
use super::toolchain;
use super::unit::{self, Compiled, UnitRecord};
use crate::cache::{CacheUrl, ClientOptions};
use crate::error_chain::Chain;
use crate::format::keys::{SecretKey, TrustedKeys};
use crate::format::store_path::StorePath;
use crate::store::LocalStore;
use crate::substitute::{NoNarInfo, Progress, SubstituteError, Substituter};

/// Whether misses are recorded into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install what is cached; compile the rest as usual.
    Use,
    /// Install what is cached; compile and record the rest (CI).
    Record,
}

/// Everything a wrapper invocation needs besides the rustc command line.
pub struct Wrapper {
    pub mode: Mode,
    pub store: Arc<LocalStore>,
    pub substituters: Vec<CacheUrl>,
    pub trusted: TrustedKeys,
    pub client: ClientOptions,
    pub signing_keys: Vec<Arc<SecretKey>>,
    /// The `store cargo` session dir (journal), if run by `store cargo`.
    pub session: Option<PathBuf>,
}

/// Marker a wrapper leaves in the session when no substituter could be opened, so the
/// other units of the build do not wait for them again.
const DOWN_MARKER: &str = "substituters-down";

/// The package cargo says it compiles (from its environment).
pub(super) struct Package {
    pub(super) name: String,
    pub(super) version: String,
    manifest_dir: PathBuf,
}

impl Package {
    fn from_env() -> Option<Package> {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Some(Package {
            name: var("CARGO_PKG_NAME")?,
            version: var("CARGO_PKG_VERSION")?,
            manifest_dir: PathBuf::from(var("CARGO_MANIFEST_DIR")?),
        })
    }
}

/// A cacheable unit: its key and where its outputs go.
#[derive(Clone)]
pub(super) struct Unit {
    pub(super) inputs: KeyInputs,
    pub(super) path: StorePath,
    pub(super) places: Places,
    pub(super) outputs: Vec<String>,
    pub(super) source_kind: SourceKind,
}

/// Why a unit is not cacheable (a short category for counting, and detail).
struct NotCacheable {
    reason: String,
    source_kind: SourceKind,
}

fn not(reason: impl Into<String>, source_kind: SourceKind) -> NotCacheable {
    NotCacheable {
        reason: reason.into(),
        source_kind,
    }
}

/// What the wrapper cannot get around: rustc itself cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("cannot run '{rustc}'")]
pub struct WrapError {
    rustc: String,
    #[source]
    source: io::Error,
}

impl WrapError {
    pub(super) fn new(program: &Path, source: io::Error) -> WrapError {
        WrapError {
            rustc: program.display().to_string(),
            source,
        }
    }
}

impl Wrapper {
    /// Where toolchain and compiler facts are memoised (`<state>/cargo/toolchains`).
    pub(super) fn memo_dir(&self) -> PathBuf {
        self.store
            .layout()
            .state_dir()
            .join("cargo")
            .join("toolchains")
    }

    /// Handles one rustc invocation; returns rustc's exit status (or 0 when installed).
    pub fn run(&self, rustc: &Path, args: &[String]) -> Result<i32, WrapError> {
        let start = Instant::now();
        let inv = Invocation::parse(args);
        let Some(pkg) = Package::from_env().filter(|_| is_compilation(&inv)) else {
            return compile(rustc, args, &[], false).map(|c| c.exit);
        };
        match self.plan(rustc, &inv, &pkg) {
            Ok(unit) if unit.source_kind == SourceKind::Local => {
                self.local_unit(rustc, &inv, &pkg, unit, start)
            }
            Ok(unit) => self.cacheable(rustc, &inv, &pkg, unit, start),
            Err(nc) => self.uncacheable(rustc, &inv, &pkg, nc, start),
        }
    }

    fn plan(&self, rustc: &Path, inv: &Invocation, pkg: &Package) -> Result<Unit, NotCacheable> {
        let src = source::locate(&pkg.manifest_dir, &pkg.name, &pkg.version)
            .map_err(|e| not(format!("source unreadable: {e}"), SourceKind::Local))?;
        let kind = src.kind;
        let places = places(inv, pkg);
        let digest = match src.digest {
            Some(d) => d,
            None if std::env::var(super::LOCAL_ENV).as_deref() == Ok("0") => {
                return Err(not("local source", kind));
            }
            None => {
                let cwd = std::env::current_dir()
                    .map_err(|e| not(format!("no working dir: {e}"), kind))?;
                local::first_level_source(&pkg.manifest_dir, &cwd, &places)
            }
        };
        if let Some(b) = inv.blocker {
            return Err(not(b, kind));
        }
        if let Some(t) = inv.unsupported_crate_type() {
            return Err(not(format!("crate type {t}"), kind));
        }
        let outputs = inv
            .output_names()
            .ok_or_else(|| not("unpredicted outputs", kind))?;
        let memo = self.memo_dir();
        let tc = toolchain::identify(rustc, inv.target.as_deref(), &memo)
            .map_err(|e| not(format!("toolchain: {}", Chain(&e)), kind))?;
        let args = normalise_args(inv, &places, &mut MemoDigests)
            .map_err(|e| not(format!("cannot hash an input: {e}"), kind))?;
        let out_dir = match &places.out_dir {
            Some(o) => Some(format!(
                "tree-sha256:{}",
                source::tree_digest(Path::new(o))
                    .map_err(|e| not(format!("cannot hash OUT_DIR: {e}"), kind))?
            )),
            None => None,
        };
        let inputs = KeyInputs {
            key_version: KEY_VERSION,
            toolchain: tc.id,
            target: tc.target,
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            source: digest,
            args,
            env: key_env(&places),
            out_dir,
            linker: inv.links().then(|| linker_identity(inv)),
        };
        let path = inputs
            .store_path(self.store.store_dir())
            .map_err(|e| not(format!("no store path: {e}"), kind))?;
        Ok(Unit {
            inputs,
            path,
            places,
            outputs,
            source_kind: kind,
        })
    }

    fn cacheable(
        &self,
        rustc: &Path,
        inv: &Invocation,
        pkg: &Package,
        unit: Unit,
        start: Instant,
    ) -> Result<i32, WrapError> {
        let planned = start.elapsed();
        let found = self.find(&unit.path);
        let looked = start.elapsed();
        let miss = match found {
            Ok(outcome) => match self.install(&unit) {
                Ok(record) => {
                    tracing::debug!(
                        "{}: planned {planned:.1?}, found {:.1?}, installed {:.1?}",
                        unit.path.name(),
                        looked - planned,
                        start.elapsed() - looked
                    );
                    shim_build_script(inv);
                    let e = self.entry(inv, pkg, &unit, outcome, None, record.seconds, start);
                    self.journal(Entry { exit: Some(0), ..e });
                    return Ok(0);
                }
                Err(why) => why,
            },
            Err(why) => why,
        };
        let compiled_start = Instant::now();
        let remap = remap_args(&unit.places, &pkg.name, &pkg.version);
        let record = self.mode == Mode::Record;
        let c = compile(rustc, &inv.args, &remap, record)?;
        let seconds = compiled_start.elapsed().as_secs_f64();
        let mut outcome = Outcome::Compiled;
        let mut reason = Some(miss);
        if record && c.exit == 0 && c.stderr.len() >= MAX_KEPT_STDERR {
            reason = Some("not recorded: diagnostics too large".to_owned());
        } else if record && c.exit == 0 && self.known_nondeterministic(&unit) {
            reason = Some("not recorded: nondeterministic".to_owned());
        } else if record && c.exit == 0 {
            self.save_command(rustc, inv, &unit, &remap);
            match self.record(&unit, &c.stderr, seconds) {
                Ok(()) => (outcome, reason) = (Outcome::Recorded, None),
                Err(e) => reason = Some(format!("not recorded: {e}")),
            }
        }
        if c.exit == 0 {
            shim_build_script(inv);
        }
        let e = self.entry(inv, pkg, &unit, outcome, reason, seconds, start);
        self.journal_compiled(e, c.exit, seconds);
        Ok(c.exit)
    }

    /// Makes the unit valid locally: already valid, or substituted. Err: why not.
    pub(super) fn find(&self, path: &StorePath) -> Result<Outcome, String> {
        match self.store.is_valid(path) {
            Ok(true) => return Ok(Outcome::Local),
            Ok(false) => {}
            Err(e) => return Err(format!("local store: {}", Chain(&e))),
        }
        if self.substituters.is_empty() {
            return Err("not cached".to_owned());
        }
        if let Some(s) = &self.session {
            if s.join(DOWN_MARKER).exists() {
                return Err("substituters unavailable".to_owned());
            }
        }
        self.substitute(path).map(|()| Outcome::Substituted)
    }

    fn substitute(&self, path: &StorePath) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime: {e}"))?;
        let result = rt.block_on(async {
            let sub = Substituter::open(
                &self.substituters,
                self.trusted.clone(),
                &self.client,
                &self.store,
                4,
            )
            .await?
            .without_flush_ahead()
            .without_closure_indexes();
            let plan = sub.plan(&self.store, std::slice::from_ref(path)).await?;
            sub.fetch(&self.store, plan, Arc::new(Progress::default()))
                .await
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = miss_reason(&e);
                tracing::debug!("{}: {}", why, Chain(&e));
                if matches!(e, SubstituteError::NoneUsable { .. }) {
                    if let Some(s) = &self.session {
                        let _ = std::fs::write(s.join(DOWN_MARKER), Chain(&e).to_string());
                    }
                }
                Err(why.to_owned())
            }
        }
    }

    /// Installs a valid unit's outputs and replays its stderr. Err: why it cannot be used.
    pub(super) fn install(&self, unit: &Unit) -> Result<UnitRecord, String> {
        let dir = self.store.layout().real_path(&unit.path);
        let record =
            unit::read_record(&dir).map_err(|e| format!("unusable unit: {}", Chain(&e)))?;
        if record.inputs != unit.inputs {
            return Err("unit recorded for other inputs".to_owned());
        }
        if let Some(var) = unit::env_mismatch(&record, &unit.places) {
            return Err(format!("env {var} differs"));
        }
        if unit.outputs.iter().any(|o| !record.files.contains_key(o)) {
            return Err("unit lacks an output".to_owned());
        }
        let stderr = unit::install(&dir, &record, &unit.places)
            .map_err(|e| format!("cannot install: {}", Chain(&e)))?;
        remember_outputs(&unit.places, &record);
        let mut err = io::stderr().lock();
        let _ = err.write_all(stderr.as_bytes());
        let _ = err.flush();
        Ok(record)
    }

    fn known_nondeterministic(&self, unit: &Unit) -> bool {
        check::known_nondeterministic(self.store.layout().state_dir())
            .contains(&key::key_hex(&unit.inputs))
    }

    /// Keeps the command of a recorded unit in the session for `--check-sample`.
    fn save_command(&self, rustc: &Path, inv: &Invocation, unit: &Unit, remap: &[String]) {
        let Some(session) = &self.session else { return };
        let saved = check::Saved {
            key: key::key_hex(&unit.inputs),
            store_path: self.store.print_path(&unit.path),
            rustc: rustc.to_path_buf(),
            args: inv.args.iter().chain(remap).cloned().collect(),
            cwd: std::env::current_dir().unwrap_or_default(),
            env: std::env::vars().collect(),
            places: (&unit.places).into(),
        };
        check::save(session, &saved);
    }

    fn record(&self, unit: &Unit, stderr: &[u8], seconds: f64) -> Result<(), String> {
        let compiled = Compiled {
            inputs: &unit.inputs,
            path: &unit.path,
            outputs: &unit.outputs,
            stderr,
            seconds,
            places: &unit.places,
        };
        let record = unit::record(&self.store, &compiled, &self.signing_keys)
            .map_err(|e| Chain(&e).to_string())?;
        remember_outputs(&unit.places, &record);
        Ok(())
    }

    fn uncacheable(
        &self,
        rustc: &Path,
        inv: &Invocation,
        pkg: &Package,
        nc: NotCacheable,
        start: Instant,
    ) -> Result<i32, WrapError> {
        let c = compile(rustc, &inv.args, &[], false)?;
        let seconds = start.elapsed().as_secs_f64();
        self.journal(Entry {
            crate_name: crate_name(inv, pkg),
            version: pkg.version.clone(),
            source_kind: nc.source_kind,
            crate_types: inv.crate_types.clone(),
            outcome: Outcome::Uncacheable,
            reason: Some(nc.reason),
            key: None,
            store_path: None,
            seconds,
            overhead_ms: 0.0,
            inputs: None,
            exit: Some(c.exit),
        });
        Ok(c.exit)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn entry(
        &self,
        inv: &Invocation,
        pkg: &Package,
        unit: &Unit,
        outcome: Outcome,
        reason: Option<String>,
        seconds: f64,
        start: Instant,
    ) -> Entry {
        Entry {
            crate_name: crate_name(inv, pkg),
            version: pkg.version.clone(),
            source_kind: unit.source_kind,
            crate_types: inv.crate_types.clone(),
            outcome,
            reason,
            key: Some(key::key_hex(&unit.inputs)),
            store_path: Some(self.store.print_path(&unit.path)),
            seconds,
            overhead_ms: start.elapsed().as_secs_f64() * 1000.0,
            inputs: Some(unit.inputs.clone()),
            exit: None,
        }
    }

    /// Journals a unit that rustc compiled: the wrapper's overhead leaves rustc's time out.
    pub(super) fn journal_compiled(&self, e: Entry, exit: i32, seconds: f64) {
        self.journal(Entry {
            exit: Some(exit),
            overhead_ms: e.overhead_ms - seconds * 1000.0,
            ..e
        });
    }

    pub(super) fn journal(&self, entry: Entry) {
        if let Some(s) = &self.session {
            if let Err(e) = journal::append(s, &entry) {
                tracing::warn!("cannot write the store cargo journal: {e}");
            }
        }
    }
}

/// Memoises the digests of a unit's outputs (not its dep-info, which is stored with
/// placeholders) now in the deps dir, so dependents do not hash them again.
pub(super) fn remember_outputs(places: &Places, record: &UnitRecord) {
    for (name, digest) in &record.files {
        if !name.ends_with(".d") {
            remember(&Path::new(&places.deps_dir).join(name), digest);
        }
    }
}

/// Puts the build-script shim in place of a compiled build script of an immutable
/// package (see [`super::build_script`]).
fn shim_build_script(inv: &Invocation) {
    if !inv.is_build_script() {
        return;
    }
    if let Some(name) = inv.crate_name.as_deref() {
        let exe = inv.out_dir().join(format!("{name}{}", inv.extra_filename));
        super::build_script::install_shim(&exe);
    }
}

/// Whether this is a compilation of a crate by cargo: not a version or target query,
/// and not a probe a build script compiles into its `OUT_DIR` (build scripts inherit
/// `RUSTC_WRAPPER`).
fn is_compilation(inv: &Invocation) -> bool {
    let probe =
        std::env::var_os("OUT_DIR").is_some_and(|o| !o.is_empty() && inv.out_dir().starts_with(&o));
    inv.crate_name.is_some()
        && inv.input.is_some()
        && !probe
        && !inv.args.iter().any(|a| a.starts_with("--print"))
}

fn crate_name(inv: &Invocation, pkg: &Package) -> String {
    inv.crate_name.clone().unwrap_or_else(|| pkg.name.clone())
}

fn places(inv: &Invocation, pkg: &Package) -> Places {
    let deps = inv.out_dir();
    Places {
        package_root: pkg.manifest_dir.display().to_string(),
        out_dir: std::env::var("OUT_DIR").ok().filter(|o| !o.is_empty()),
        deps_dir: deps.display().to_string(),
        profile_dir: deps
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

/// The environment the key covers: cargo's package variables, `RUSTC_BOOTSTRAP`, and the
/// variables a build script set for the compiler (`cargo:rustc-env`), machine paths
/// replaced by placeholders.
fn key_env(places: &Places) -> std::collections::BTreeMap<String, String> {
    let script_vars = places
        .out_dir
        .as_deref()
        .map(|o| build_script_env_names(Path::new(o)))
        .unwrap_or_default();
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("CARGO_PKG_") && k != "CARGO_PKG_README")
                || k == "CARGO_CRATE_NAME"
                || k == "RUSTC_BOOTSTRAP"
                || script_vars.contains(k)
        })
        .map(|(k, v)| (k, places.abstract_text(&v)))
        .collect()
}

/// Names of the variables a build script set with `cargo:rustc-env=NAME=…` (its output
/// file sits beside its `OUT_DIR`).
fn build_script_env_names(out_dir: &Path) -> Vec<String> {
    let Some(text) = out_dir
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("output")).ok())
    else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("cargo::rustc-env=")
                .or_else(|| l.strip_prefix("cargo:rustc-env="))
        })
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

/// The linker named by `-C linker=` (else `cc`) and the first line of its `--version`.
fn linker_identity(inv: &Invocation) -> String {
    let linker = inv
        .args
        .iter()
        .find_map(|a| {
            a.strip_prefix("linker=")
                .or_else(|| a.strip_prefix("-Clinker="))
        })
        .unwrap_or("cc");
    toolchain::tool_identity(linker)
}

fn miss_reason(e: &SubstituteError) -> &'static str {
    match e {
        SubstituteError::NoneConfigured => "not cached",
        SubstituteError::NoneUsable { .. } => "substituters unavailable",
        SubstituteError::Incomplete { missing } => {
            let refusals = missing.iter().flat_map(|m| &m.refusals);
            let mut reason = "not cached";
            for r in refusals {
                match r.reason {
                    NoNarInfo::NotFound => {}
                    NoNarInfo::Untrusted(_) | NoNarInfo::WrongPath(_) => return "untrusted entry",
                    NoNarInfo::Cache(_) => reason = "cache error",
                }
            }
            reason
        }
        SubstituteError::Fetch { .. } => "download failed or rejected",
        _ => "local store error",
    }
}

/// What running rustc gave.
pub(super) struct Ran {
    pub(super) exit: i32,
    pub(super) stderr: Vec<u8>,
}

/// Runs rustc with `args` then `extra`, passing its stderr through line by line (cargo
/// reads artifact notices from it while rustc runs) and keeping a copy if `capture`.
pub(super) fn compile(
    rustc: &Path,
    args: &[String],
    extra: &[String],
    capture: bool,
) -> Result<Ran, WrapError> {
    let err = |source| WrapError {
        rustc: rustc.display().to_string(),
        source,
    };
    let mut child = Command::new(rustc)
        .args(args)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(err)?;
    let mut kept = Vec::new();
    if let Some(pipe) = child.stderr.take() {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        let mut out = io::stderr();
        while reader.read_until(b'\n', &mut line).map_err(err)? > 0 {
            let _ = out.write_all(&line);
            let _ = out.flush();
            if capture && kept.len() < MAX_KEPT_STDERR {
                kept.extend_from_slice(&line);
            }
            line.clear();
        }
    }
    let status = child.wait().map_err(err)?;
    Ok(Ran {
        exit: status.code().unwrap_or(101),
        stderr: kept,
    })
}

/// Diagnostics kept for recording; a unit with more is not recorded.
pub(super) const MAX_KEPT_STDERR: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_script_env_names_are_read_from_its_output() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(
            d.path().join("output"),
            "cargo:rustc-cfg=foo\ncargo:rustc-env=GEN_VERSION=3\ncargo::rustc-env=B=x=y\n",
        )
        .unwrap();
        assert_eq!(build_script_env_names(&out), ["GEN_VERSION", "B"]);
    }
}
