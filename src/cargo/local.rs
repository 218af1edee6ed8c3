//! Units of path and workspace crates, kept in the local store only (store-format.md
//! §11.6). Their source has no digest that pins it, so the lookup has two levels, like
//! ccache's direct mode: the key without the sources (`source` = `local:<dir>`) names a
//! small list of candidates in `<state>/cargo/local/<key hex>`, each the files rustc read
//! for it (from the dep-info) with their digests and the `# env-dep` values it saw; a
//! candidate whose files all hash the same now, and whose variables all have the same
//! values, gives the unit's full key (`local:<dir>:files-sha256:<candidate digest>`).
//! Such units are never signed, put in a manifest or pushed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digests::write_memo_file;
use super::invocation::Invocation;
use super::journal::{Entry, Outcome};
use super::key::{self, remap_args, Places};
use super::source::{hex, sha256_file};
use super::unit::{env_dep_lines, record, Compiled, UnitRecord};
use super::wrapper::{
    compile, remember_outputs, Package, Unit, WrapError, Wrapper, MAX_KEPT_STDERR,
};
use crate::error_chain::Chain;

/// Candidates kept per key (a few branches switched back and forth).
const MAX_CANDIDATES: usize = 4;
/// Files a candidate may list; a crate reading more is compiled and not kept.
const MAX_FILES: usize = 10_000;
/// Size of a candidate list file read back; larger ones are ignored.
const MAX_LIST_BYTES: u64 = 16 << 20;

/// The evidence one compilation of a path crate leaves: what rustc read, as it was then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Path (placeholders applied, so a moved checkout finds its own files) → sha256 hex.
    pub files: BTreeMap<String, String>,
    /// `# env-dep` variables → value, as seen (no placeholders: a value naming the
    /// checkout keeps the unit to that checkout).
    pub env: BTreeMap<String, Option<String>>,
}

impl Candidate {
    /// The hex sha256 of the candidate's canonical JSON.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(
            serde_json::to_vec(self).unwrap_or_default(),
        ))
    }

    /// The full `source` of the key: the first-level one plus this candidate.
    pub fn source(&self, first_level: &str) -> String {
        format!("{first_level}:files-sha256:{}", self.digest())
    }

    /// Whether every listed file hashes the same now and every variable has its value.
    pub fn holds(&self, places: &Places) -> bool {
        let env_same = self
            .env
            .iter()
            .all(|(k, v)| std::env::var(k).ok().as_ref() == v.as_ref());
        env_same
            && self.files.iter().all(|(p, want)| {
                sha256_file(Path::new(&places.concrete_text(p))).is_ok_and(|d| d == *want)
            })
    }
}

/// The first-level `source` of a path crate: `local:` and where the package root is
/// relative to rustc's working dir (cargo runs workspace members from the workspace root,
/// with relative input paths).
pub fn first_level_source(root: &Path, cwd: &Path, places: &Places) -> String {
    match root.strip_prefix(cwd) {
        Ok(rel) => format!("local:{}", rel.display()),
        Err(_) => format!("local:{}", places.abstract_text(&cwd.display().to_string())),
    }
}

/// The candidate a finished compilation leaves, from its dep-info. Err: why it cannot be
/// kept (a file changed while rustc ran, one cannot be read, too many).
pub fn from_dep_info(
    dep_info: &str,
    cwd: &Path,
    places: &Places,
    started: SystemTime,
) -> Result<Candidate, String> {
    let mut files = BTreeMap::new();
    for dep in dependencies(dep_info) {
        let path = cwd.join(&dep);
        let meta = fs::metadata(&path).map_err(|e| format!("cannot read {dep}: {e}"))?;
        // As cargo does: a file modified since rustc started may not be what it read.
        if meta.modified().map_or(true, |m| m >= started) {
            return Err(format!("{dep} changed during the build"));
        }
        let digest = sha256_file(&path).map_err(|e| format!("cannot read {dep}: {e}"))?;
        files.insert(places.abstract_text(&path.display().to_string()), digest);
        if files.len() > MAX_FILES {
            return Err("too many source files".to_owned());
        }
    }
    let env = env_dep_lines(dep_info)
        .map(|(k, v)| (k.to_owned(), v.map(unescape_env)))
        .collect();
    Ok(Candidate { files, env })
}

/// rustc escapes `\`, newlines and carriage returns in env-dep values.
fn unescape_env(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// The files of a dep-info: rustc writes one empty rule (`path:`) per file it read.
fn dependencies(dep_info: &str) -> Vec<String> {
    dep_info
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_suffix(':'))
        .filter(|p| !p.is_empty() && !p.contains(": "))
        .map(|p| p.replace("\\ ", " "))
        .collect()
}

/// Where the candidate lists live: `<state>/cargo/local`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cargo").join("local")
}

/// The candidates kept for a first-level key, newest first (none if unreadable).
pub fn candidates(dir: &Path, key: &str) -> Vec<Candidate> {
    let path = dir.join(key);
    match fs::metadata(&path) {
        Ok(m) if m.len() <= MAX_LIST_BYTES => {}
        _ => return Vec::new(),
    }
    fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Puts `c` first in the list of `key`, keeping the newest few (`MAX_CANDIDATES`). Best
/// effort: a lost candidate costs one compilation.
pub fn remember(dir: &Path, key: &str, c: Candidate) {
    let mut list = candidates(dir, key);
    list.retain(|o| *o != c);
    list.insert(0, c);
    list.truncate(MAX_CANDIDATES);
    if let Ok(bytes) = serde_json::to_vec(&list) {
        write_memo_file(&dir.join(key), &bytes);
    }
}

impl Wrapper {
    /// Handles the unit of a path crate: installed from the local store when a candidate
    /// of its first-level key holds now, else compiled and kept in the local store.
    pub(super) fn local_unit(
        &self,
        rustc: &Path,
        inv: &Invocation,
        pkg: &Package,
        unit: Unit,
        start: Instant,
    ) -> Result<i32, WrapError> {
        let lists = dir(self.store.layout().state_dir());
        let first = key::key_hex(&unit.inputs);
        let miss = match self.local_hit(&unit, &lists, &first) {
            Ok((hit, record)) => {
                let e = self.entry(inv, pkg, &hit, Outcome::Local, None, record.seconds, start);
                self.journal(Entry { exit: Some(0), ..e });
                return Ok(0);
            }
            Err(why) => why,
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        let remap = remap(&unit.places, &cwd, pkg);
        let started = SystemTime::now();
        let compile_start = Instant::now();
        let c = compile(rustc, &inv.args, &remap, true)?;
        let seconds = compile_start.elapsed().as_secs_f64();
        let mut unit = unit;
        let mut reason = miss;
        if c.exit == 0 {
            match self.keep(&mut unit, &c.stderr, seconds, &cwd, started) {
                Ok(candidate) => remember(&lists, &first, candidate),
                Err(why) => reason = format!("{reason}; not kept: {why}"),
            }
        }
        let e = self.entry(
            inv,
            pkg,
            &unit,
            Outcome::Compiled,
            Some(reason),
            seconds,
            start,
        );
        self.journal_compiled(e, c.exit, seconds);
        Ok(c.exit)
    }

    /// The unit of the first candidate that holds, installed. Err: why none could be used.
    fn local_hit(
        &self,
        unit: &Unit,
        lists: &Path,
        first: &str,
    ) -> Result<(Unit, UnitRecord), String> {
        let list = candidates(lists, first);
        if list.is_empty() {
            return Err("no local unit for these inputs".to_owned());
        }
        let Some(c) = list.iter().find(|c| c.holds(&unit.places)) else {
            return Err("sources changed".to_owned());
        };
        let mut hit = unit.clone();
        hit.inputs.source = c.source(&unit.inputs.source);
        hit.path = hit
            .inputs
            .store_path(self.store.store_dir())
            .map_err(|e| format!("no store path: {e}"))?;
        match self.store.is_valid(&hit.path) {
            Ok(true) => {}
            Ok(false) => return Err("local unit gone".to_owned()),
            Err(e) => return Err(format!("local store: {}", Chain(&e))),
        }
        let record = self.install(&hit)?;
        Ok((hit, record))
    }

    /// Adds a compiled path crate to the local store (unsigned), its key completed with
    /// what rustc read; `unit` then names it. Err: why it is not kept.
    fn keep(
        &self,
        unit: &mut Unit,
        stderr: &[u8],
        seconds: f64,
        cwd: &Path,
        started: SystemTime,
    ) -> Result<Candidate, String> {
        if stderr.len() >= MAX_KEPT_STDERR {
            return Err("diagnostics too large".to_owned());
        }
        let dep_info = unit
            .outputs
            .iter()
            .find(|o| o.ends_with(".d"))
            .ok_or("no dep-info")?;
        let dep_info = Path::new(&unit.places.deps_dir).join(dep_info);
        let text = fs::read_to_string(&dep_info).map_err(|e| format!("dep-info: {e}"))?;
        let candidate = from_dep_info(&text, cwd, &unit.places, started)?;
        unit.inputs.source = candidate.source(&unit.inputs.source);
        unit.path = unit
            .inputs
            .store_path(self.store.store_dir())
            .map_err(|e| format!("no store path: {e}"))?;
        if !self.store.is_valid(&unit.path).unwrap_or(false) {
            let compiled = Compiled {
                inputs: &unit.inputs,
                path: &unit.path,
                outputs: &unit.outputs,
                stderr,
                seconds,
                places: &unit.places,
            };
            let record = record(&self.store, &compiled, &[]).map_err(|e| Chain(&e).to_string())?;
            remember_outputs(&unit.places, &record);
        }
        Ok(candidate)
    }
}

/// `--remap-path-prefix` for a path crate: rustc's working dir (the workspace root, which
/// debug info names) to `/cargo/ws`, then, winning for what is under it, the package root
/// and `OUT_DIR` as for every unit.
fn remap(places: &Places, cwd: &Path, pkg: &Package) -> Vec<String> {
    let mut v = Vec::new();
    if cwd != Path::new(&places.package_root) {
        v.push(format!("--remap-path-prefix={}=/cargo/ws", cwd.display()));
    }
    v.extend(remap_args(places, &pkg.name, &pkg.version));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn places(root: &Path) -> Places {
        Places {
            package_root: root.display().to_string(),
            out_dir: None,
            deps_dir: root.join("target/debug/deps").display().to_string(),
            profile_dir: root.join("target/debug").display().to_string(),
        }
    }

    const DEP_INFO: &str = "target/debug/deps/a.d: src/lib.rs src/x\\ y.txt\n\n\
        src/lib.rs:\nsrc/x\\ y.txt:\n\n# env-dep:GREETING=a\\nb\n# env-dep:UNSET\n";

    #[test]
    fn a_candidate_lists_what_rustc_read_and_holds_until_it_changes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("src/lib.rs"), "x").unwrap();
        fs::write(root.join("src/x y.txt"), "y").unwrap();
        let p = places(root);
        let later = SystemTime::now() + Duration::from_secs(5);
        let c = from_dep_info(DEP_INFO, root, &p, later).unwrap();
        assert_eq!(
            c.files.keys().collect::<Vec<_>>(),
            ["@SRC@/src/lib.rs", "@SRC@/src/x y.txt"]
        );
        assert_eq!(c.env["GREETING"].as_deref(), Some("a\nb"));
        assert_eq!(c.env["UNSET"], None);
        let c = Candidate {
            env: BTreeMap::new(),
            ..c
        };
        assert!(c.holds(&p));
        fs::write(root.join("src/x y.txt"), "z").unwrap();
        assert!(!c.holds(&p));
        // Written after rustc started: not kept.
        let before = SystemTime::now() - Duration::from_secs(60);
        assert!(from_dep_info(DEP_INFO, root, &p, before).is_err());
    }

    #[test]
    fn lists_keep_the_newest_few() {
        let d = tempfile::tempdir().unwrap();
        let c = |n: usize| Candidate {
            files: BTreeMap::from([("f".to_owned(), n.to_string())]),
            env: BTreeMap::new(),
        };
        for n in 0..6 {
            remember(d.path(), "k", c(n));
        }
        remember(d.path(), "k", c(3));
        let list = candidates(d.path(), "k");
        assert_eq!(list, [c(3), c(5), c(4), c(2)]);
    }
}
