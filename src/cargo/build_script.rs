//! Build-script runs as units (store-format.md §11.4). When the wrapper compiles (or
//! installs) the build script of an immutable package, it puts a small shim where cargo
//! expects the executable; cargo runs the shim, which runs `store` in this mode: the run's
//! key covers the script binary, the package source, the toolchain, the C compilers and
//! every variable cargo passes that can change the result; a hit replays `OUT_DIR` and the
//! script's output, a miss runs the real script (and records it when recording).
//!
//! Scripts may read state they do not declare. The key covers what such scripts usually
//! read (compilers, `CC`/`CFLAGS`-style variables, `DEP_*` directories by content); what
//! they declare with `rerun-if-env-changed` and absolute `rerun-if-changed` paths is checked
//! again before a recorded run is used; and a run whose `OUT_DIR` mentions a machine path
//! is not recorded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digests::write_memo_file;
use super::journal::{Entry, Outcome};
use super::key::{Places, KEY_VERSION};
use super::source::{self, hex, sha256_file, tree_digest, SourceKind};
use super::toolchain;
use super::unit::{self, NarSink, UnitError};
use super::wrapper::{WrapError, Wrapper};
use crate::error_chain::Chain;
use crate::format::hash::Hash;
use crate::format::nar::{NarWriteError, NarWriter};
use crate::format::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// The argument that tells `store` it runs as a build-script shim.
pub const SHIM_ARG: &str = "__cargo-build-script";

/// The `type` of a build-script run's store path fingerprint (§2.2).
pub const RUN_PATH_TYPE: &str = "cargo-run:out";

/// Variables cargo sets for a build script that can change what it produces.
const RUN_VARS: &[&str] = &[
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "RUSTC_LINKER",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MANIFEST_LINKS",
    "RUSTC_BOOTSTRAP",
];
/// Prefixes of such variables (C toolchain settings included: scripts using `cc` read them).
const RUN_PREFIXES: &[&str] = &[
    "CARGO_FEATURE_",
    "CARGO_CFG_",
    "CARGO_PKG_",
    "DEP_",
    "CC",
    "CXX",
    "AR",
    "CFLAGS",
    "CXXFLAGS",
    "LDFLAGS",
    "CPPFLAGS",
    "PKG_CONFIG",
    "TARGET_",
];

/// Everything a build-script run's result depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInputs {
    pub key_version: u32,
    pub package: String,
    pub version: String,
    pub source: String,
    /// sha256 of the script executable.
    pub script: String,
    /// Toolchain id for the target (scripts run rustc to probe it).
    pub toolchain: String,
    pub env: BTreeMap<String, String>,
    /// First `--version` line of `cc` and `c++` (or `$CC`, `$CXX`).
    pub compilers: Vec<String>,
}

impl RunInputs {
    pub fn store_path(&self, store_dir: &StoreDir) -> Result<StorePath, StorePathError> {
        let digest: [u8; 32] = Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into();
        let name = StorePathName::new(&format!(
            "cargo-{}-{}-build-run",
            self.package, self.version
        ))?;
        Ok(store_dir.make_store_path(RUN_PATH_TYPE, &Hash::sha256(digest), &name))
    }
}

/// What a recorded run keeps besides its outputs (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub inputs: RunInputs,
    /// `rerun-if-env-changed` variables and the values they had.
    pub env: BTreeMap<String, Option<String>>,
    /// Absolute `rerun-if-changed` paths outside the package, with their digests.
    pub files: BTreeMap<String, Option<String>>,
    pub seconds: f64,
}

/// Puts the shim at `exe` (the compiled script moves to `exe.real`). Best effort: if it
/// fails, cargo runs the real script.
pub fn install_shim(exe: &Path) {
    let real = real_path(exe);
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    // Without the store binary (moved or rebuilt since), the real script runs.
    let (me, real_q) = (quote(&me), quote(&real));
    let script = format!(
        "#!/bin/sh\nif [ -x {me} ]; then exec {me} {SHIM_ARG} {real_q} \"$@\"; fi\nexec {real_q} \"$@\"\n"
    );
    let tmp = exe.with_extension("store-shim");
    let done = fs::rename(exe, &real).and_then(|()| {
        fs::write(&tmp, script)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, exe)
    });
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::rename(&real, exe);
    }
}

fn real_path(exe: &Path) -> PathBuf {
    let mut s = exe.as_os_str().to_owned();
    s.push(".real");
    PathBuf::from(s)
}

struct Run {
    inputs: RunInputs,
    path: StorePath,
    places: Places,
    out_dir: PathBuf,
}

impl Wrapper {
    /// Runs as the shim: `real` is the compiled build script.
    pub fn run_build_script(&self, real: &Path, args: &[String]) -> Result<i32, WrapError> {
        let start = Instant::now();
        let run = match self.plan_run(real) {
            Ok(run) => run,
            Err(why) => {
                tracing::debug!("build script not cached: {why}");
                return run_script(real, args, None, &[]).map(|r| r.exit);
            }
        };
        let miss = match self
            .find(&run.path)
            .and_then(|o| self.replay(&run).map(|r| (o, r)))
        {
            Ok((outcome, record)) => {
                self.journal_run(&run, outcome, None, record.seconds, start, 0);
                return Ok(0);
            }
            Err(why) => why,
        };
        let ran_at = Instant::now();
        let memo = self.memo_dir();
        let env = prefix_map_env(&run, &memo);
        let ran = run_script(real, args, Some(&run.places), &env)?;
        let seconds = ran_at.elapsed().as_secs_f64();
        let (mut outcome, mut reason) = (Outcome::Compiled, Some(miss));
        if self.mode == super::Mode::Record && ran.exit == 0 {
            match self.record_run(&run, &ran, seconds) {
                Ok(()) => (outcome, reason) = (Outcome::Recorded, None),
                Err(e) => reason = Some(format!("not recorded: {e}")),
            }
        }
        self.journal_run(&run, outcome, reason, seconds, start, ran.exit);
        Ok(ran.exit)
    }

    fn plan_run(&self, real: &Path) -> Result<Run, String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} not set"));
        let (package, version) = (var("CARGO_PKG_NAME")?, var("CARGO_PKG_VERSION")?);
        let root = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
        let out_dir = PathBuf::from(var("OUT_DIR")?);
        let src = source::locate(&root, &package, &version).map_err(|e| e.to_string())?;
        let source = src.digest.ok_or("local source")?;
        let rustc = PathBuf::from(var("RUSTC")?);
        let memo = self.memo_dir();
        // The host as `None`, as the wrapper asks for it (one memo per toolchain and target).
        let target = var("TARGET")?;
        let target = (Some(&target) != std::env::var("HOST").ok().as_ref()).then_some(target);
        let tc =
            toolchain::identify(&rustc, target.as_deref(), &memo).map_err(|e| e.to_string())?;
        let profile = out_dir
            .ancestors()
            .nth(3)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let places = Places {
            package_root: root.display().to_string(),
            out_dir: Some(out_dir.display().to_string()),
            deps_dir: String::new(),
            profile_dir: profile.display().to_string(),
        };
        let inputs = RunInputs {
            key_version: KEY_VERSION,
            package,
            version,
            source,
            script: sha256_file(real).map_err(|e| e.to_string())?,
            toolchain: tc.id,
            env: run_env(&places)?,
            compilers: vec![compiler("CC", "cc"), compiler("CXX", "c++")],
        };
        let path = inputs
            .store_path(self.store.store_dir())
            .map_err(|e| e.to_string())?;
        Ok(Run {
            inputs,
            path,
            places,
            out_dir,
        })
    }

    /// Installs a valid run's `OUT_DIR` and replays its output, if its declared inputs
    /// still hold here.
    fn replay(&self, run: &Run) -> Result<RunRecord, String> {
        let dir = self.store.layout().real_path(&run.path);
        let text = fs::read(dir.join("run.json")).map_err(|e| format!("unusable run: {e}"))?;
        let record: RunRecord =
            serde_json::from_slice(&text).map_err(|e| format!("unusable run: {e}"))?;
        if record.inputs != run.inputs {
            return Err("run recorded for other inputs".to_owned());
        }
        if let Some(why) = declared_inputs_differ(&record, &run.places) {
            return Err(why);
        }
        copy_tree(&dir.join("out"), &run.out_dir).map_err(|e| format!("cannot install: {e}"))?;
        for (name, mut sink) in [
            ("stdout", Box::new(io::stdout()) as Box<dyn Write>),
            ("stderr", Box::new(io::stderr())),
        ] {
            let text =
                fs::read_to_string(dir.join(name)).map_err(|e| format!("unusable run: {e}"))?;
            let _ = sink.write_all(run.places.concrete_text(&text).as_bytes());
            let _ = sink.flush();
        }
        Ok(record)
    }

    fn record_run(&self, run: &Run, ran: &Ran, seconds: f64) -> Result<(), String> {
        let stdout = String::from_utf8_lossy(&ran.stdout);
        let record = RunRecord {
            inputs: run.inputs.clone(),
            env: declared_env(&stdout, &run.places),
            files: declared_files(&stdout, &run.places),
            seconds,
        };
        if mentions_machine_paths(&run.out_dir, &run.places).map_err(|e| e.to_string())? {
            return Err("OUT_DIR mentions machine paths".to_owned());
        }
        unit::import_written(&self.store, &run.path, &self.signing_keys, |nar| {
            write_run_nar(run, &record, ran, nar).map_err(UnitError::Nar)
        })
        .map_err(|e| Chain(&e).to_string())?;
        Ok(())
    }

    fn journal_run(
        &self,
        run: &Run,
        outcome: Outcome,
        reason: Option<String>,
        seconds: f64,
        start: Instant,
        exit: i32,
    ) {
        let overhead = start.elapsed().as_secs_f64() * 1000.0;
        let compiled = matches!(outcome, Outcome::Compiled | Outcome::Recorded);
        self.journal(Entry {
            crate_name: format!("{} (build script run)", run.inputs.package),
            version: run.inputs.version.clone(),
            source_kind: SourceKind::Registry,
            crate_types: vec!["build-script-run".to_owned()],
            outcome,
            reason,
            key: Some(run_key(&run.inputs)),
            store_path: Some(self.store.print_path(&run.path)),
            seconds,
            overhead_ms: if compiled {
                overhead - seconds * 1000.0
            } else {
                overhead
            },
            inputs: None,
            exit: Some(exit),
        });
    }
}

/// The variables of [`RUN_VARS`] and [`RUN_PREFIXES`]; `DEP_*` values that name a
/// directory under the profile dir enter by content.
fn run_env(places: &Places) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (k, v) in std::env::vars() {
        let wanted = RUN_VARS.contains(&k.as_str())
            || (RUN_PREFIXES.iter().any(|p| k.starts_with(p)) && k != "CARGO_PKG_README");
        if !wanted {
            continue;
        }
        let value =
            if k.starts_with("DEP_") && Path::new(&v).is_dir() && places.abstract_text(&v) != v {
                format!(
                    "tree-sha256:{}",
                    tree_digest(Path::new(&v)).map_err(|e| e.to_string())?
                )
            } else {
                places.abstract_text(&v)
            };
        env.insert(k, value);
    }
    Ok(env)
}

fn compiler(var: &str, default: &str) -> String {
    toolchain::tool_identity(&std::env::var(var).unwrap_or_else(|_| default.to_owned()))
}

/// `CFLAGS` and `CXXFLAGS` with `-ffile-prefix-map` added for the package root and
/// `OUT_DIR` (as rustc's remapping, §11.2), so that C compiled by the script (through the
/// `cc` crate, which reads them) carries no machine path in its debug info or `__FILE__`:
/// only then can the run be recorded. Added only for a compiler that accepts the flag
/// (gcc 8, clang 10 and later; probed once per compiler and memoised in `memo`), and
/// only when neither path contains whitespace (`cc` splits the variables on it).
fn prefix_map_env(run: &Run, memo: &Path) -> Vec<(String, String)> {
    let p = &run.places;
    let (pkg, ver) = (&run.inputs.package, &run.inputs.version);
    let mut maps = vec![format!(
        "-ffile-prefix-map={}=/cargo/src/{pkg}-{ver}",
        p.package_root
    )];
    if let Some(o) = &p.out_dir {
        maps.push(format!("-ffile-prefix-map={o}=/cargo/out/{pkg}-{ver}"));
    }
    if maps.iter().any(|m| m.contains(char::is_whitespace)) {
        return Vec::new();
    }
    let mut env = Vec::new();
    for (compiler, flags, default) in [("CC", "CFLAGS", "cc"), ("CXX", "CXXFLAGS", "c++")] {
        let program = std::env::var(compiler).unwrap_or_else(|_| default.to_owned());
        if accepts_prefix_map(&program, memo) {
            let old = std::env::var(flags).unwrap_or_default();
            env.push((
                flags.to_owned(),
                format!("{old} {}", maps.join(" ")).trim().to_owned(),
            ));
        }
    }
    env
}

/// Whether `program` compiles an empty C file with `-ffile-prefix-map` (memoised by the
/// compiler's identity).
fn accepts_prefix_map(program: &str, memo: &Path) -> bool {
    let id = toolchain::tool_identity(program);
    let file = memo.join(format!(
        "prefix-map-{}",
        &hex(&Sha256::digest(id.as_bytes()))[..32]
    ));
    if let Ok(v) = fs::read_to_string(&file) {
        return v == "yes";
    }
    let ok = Command::new(program)
        .args([
            "-ffile-prefix-map=/a=/b",
            "-x",
            "c",
            "-c",
            "-o",
            "/dev/null",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    write_memo_file(&file, if ok { b"yes" } else { b"no" });
    ok
}

/// The `cargo:KEY=VALUE` (or `cargo::KEY=VALUE`) directives of a script's stdout.
fn directives<'a>(stdout: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    stdout.lines().filter_map(move |l| {
        let rest = l
            .strip_prefix("cargo::")
            .or_else(|| l.strip_prefix("cargo:"))?;
        rest.strip_prefix(key)?.strip_prefix('=')
    })
}

fn declared_env(stdout: &str, places: &Places) -> BTreeMap<String, Option<String>> {
    directives(stdout, "rerun-if-env-changed")
        .map(|k| {
            (
                k.to_owned(),
                std::env::var(k).ok().map(|v| places.abstract_text(&v)),
            )
        })
        .collect()
}

/// Absolute `rerun-if-changed` paths outside the package and `OUT_DIR` (inside, the source
/// digest and the run itself cover them).
fn declared_files(stdout: &str, places: &Places) -> BTreeMap<String, Option<String>> {
    directives(stdout, "rerun-if-changed")
        .filter(|p| Path::new(p).is_absolute() && places.abstract_text(p) == *p)
        .map(|p| (p.to_owned(), path_digest(Path::new(p))))
        .collect()
}

fn path_digest(p: &Path) -> Option<String> {
    if p.is_dir() {
        tree_digest(p).ok()
    } else {
        sha256_file(p).ok()
    }
}

fn declared_inputs_differ(record: &RunRecord, places: &Places) -> Option<String> {
    for (k, want) in &record.env {
        if std::env::var(k).ok().map(|v| places.abstract_text(&v)) != *want {
            return Some(format!("env {k} differs"));
        }
    }
    for (p, want) in &record.files {
        if path_digest(Path::new(p)) != *want {
            return Some(format!("{p} differs"));
        }
    }
    None
}

/// Whether a file under `dir` contains the package root or `OUT_DIR` path.
fn mentions_machine_paths(dir: &Path, places: &Places) -> io::Result<bool> {
    let needles: Vec<&str> = places
        .pairs()
        .into_iter()
        .map(|(real, _)| real)
        .filter(|r| r.len() > 1)
        .collect();
    let finders: Vec<memchr::memmem::Finder> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()))
        .collect();
    let mut found = false;
    visit(dir, &mut |path, meta| {
        if meta.is_file() && !found {
            found = file_contains(path, &finders)?;
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether the file at `path` contains one of the needles, read in chunks (each chunk
/// keeps the tail of the one before, so a needle across two reads is found).
fn file_contains(path: &Path, finders: &[memchr::memmem::Finder]) -> io::Result<bool> {
    const CHUNK: usize = 1 << 20;
    let keep = finders.iter().map(|f| f.needle().len()).max().unwrap_or(1) - 1;
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; CHUNK + keep];
    let mut filled = 0;
    loop {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(false);
        }
        filled += n;
        if finders.iter().any(|fd| fd.find(&buf[..filled]).is_some()) {
            return Ok(true);
        }
        let tail = filled.min(keep);
        buf.copy_within(filled - tail..filled, 0);
        filled = tail;
    }
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let path = e?.path();
        let meta = fs::symlink_metadata(&path)?;
        f(&path, &meta)?;
        if meta.is_dir() {
            visit(&path, f)?;
        }
    }
    Ok(())
}

/// What running the script gave.
struct Ran {
    exit: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs the real script, passing its stdout and stderr through (kept when `places` is
/// given, with machine paths abstracted later).
fn run_script(
    real: &Path,
    args: &[String],
    places: Option<&Places>,
    env: &[(String, String)],
) -> Result<Ran, WrapError> {
    let err = |source| WrapError::new(real, source);
    let keep = places.is_some();
    let mut child = Command::new(real)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(err)?;
    let (out, errp) = (child.stdout.take(), child.stderr.take());
    let err_thread = std::thread::spawn(move || pump(errp, io::stderr(), keep));
    let stdout = pump(out, io::stdout(), keep);
    let stderr = err_thread.join().unwrap_or_default();
    let status = child.wait().map_err(err)?;
    Ok(Ran {
        exit: status.code().unwrap_or(101),
        stdout,
        stderr,
    })
}

fn pump(from: Option<impl Read>, mut to: impl Write, keep: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(from) = from else { return kept };
    let mut r = BufReader::new(from);
    let mut line = Vec::new();
    while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        let _ = to.write_all(&line);
        let _ = to.flush();
        if keep {
            kept.extend_from_slice(&line);
        }
        line.clear();
    }
    kept
}

/// `out/` (the `OUT_DIR` tree), `run.json`, `stderr`, `stdout`.
fn write_run_nar(
    run: &Run,
    record: &RunRecord,
    ran: &Ran,
    nar: &mut NarSink<'_>,
) -> Result<(), NarWriteError> {
    nar.begin_directory(b"")?;
    nar.begin_directory(b"out")?;
    write_tree(nar, &run.out_dir)?;
    nar.end_directory()?;
    let json =
        serde_json::to_vec_pretty(record).map_err(|e| NarWriteError::Io(io::Error::other(e)))?;
    nar.regular_bytes(b"run.json", false, &json)?;
    let p = &run.places;
    for (name, bytes) in [(&b"stderr"[..], &ran.stderr), (b"stdout", &ran.stdout)] {
        let text = p.abstract_text(&String::from_utf8_lossy(bytes));
        nar.regular_bytes(name, false, text.as_bytes())?;
    }
    nar.end_directory()
}

/// The entries of directory `dir`, in NAR order.
fn write_tree<W: Write>(nar: &mut NarWriter<W>, dir: &Path) -> Result<(), NarWriteError> {
    let io = NarWriteError::Io;
    let mut names: Vec<_> = fs::read_dir(dir)
        .and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
        })
        .map_err(io)?;
    names.sort_by(|a: &std::ffi::OsString, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(io)?;
        let n = name.as_encoded_bytes();
        if meta.is_dir() {
            nar.begin_directory(n)?;
            write_tree(nar, &path)?;
            nar.end_directory()?;
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).map_err(io)?;
            nar.symlink(n, target.as_os_str().as_encoded_bytes())?;
        } else {
            let exec = meta.permissions().mode() & 0o100 != 0;
            let mut f = File::open(&path).map_err(io)?;
            nar.regular(n, exec, meta.len(), &mut f)?;
        }
    }
    Ok(())
}

/// Copies the stored tree `from` into `to` as ordinary writable files.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let (src, dest) = (e.path(), to.join(e.file_name()));
        let meta = fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            copy_tree(&src, &dest)?;
        } else if meta.is_symlink() {
            let _ = fs::remove_file(&dest);
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dest)?;
        } else {
            let _ = fs::remove_file(&dest);
            unit::copy_writable(&src, &dest)?;
        }
    }
    Ok(())
}

/// The run's key (hex), as reports show it.
pub fn run_key(inputs: &RunInputs) -> String {
    hex(&Sha256::digest(
        serde_json::to_vec(inputs).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places {
        Places {
            package_root: "/h/reg/foo-1".into(),
            out_dir: Some("/p/target/debug/build/foo-1/out".into()),
            deps_dir: String::new(),
            profile_dir: "/p/target/debug".into(),
        }
    }

    #[test]
    fn directives_in_both_syntaxes_are_read() {
        let out = "cargo:rerun-if-changed=build.rs\ncargo::rerun-if-changed=/usr/include/zlib.h\n\
                   cargo:rerun-if-env-changed=ZLIB_STATIC\ncargo:rustc-link-lib=z\n";
        assert_eq!(
            directives(out, "rerun-if-env-changed").collect::<Vec<_>>(),
            ["ZLIB_STATIC"]
        );
        let files = declared_files(out, &places());
        assert_eq!(files.keys().collect::<Vec<_>>(), ["/usr/include/zlib.h"]);
    }

    #[test]
    fn a_tree_round_trips_through_a_nar_and_machine_paths_are_found() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("gen.rs"), b"pub const X: u32 = 1;").unwrap();
        fs::write(out.join("sub/lib.a"), b"!<arch>").unwrap();
        let mut p = places();
        p.out_dir = Some(out.display().to_string());
        assert!(!mentions_machine_paths(&out, &p).unwrap());
        fs::write(
            out.join("paths.rs"),
            format!("include!(\"{}/gen.rs\");", out.display()),
        )
        .unwrap();
        assert!(mentions_machine_paths(&out, &p).unwrap());
        let back = d.path().join("back");
        copy_tree(&out, &back).unwrap();
        assert_eq!(tree_digest(&out).unwrap(), tree_digest(&back).unwrap());
    }
}
