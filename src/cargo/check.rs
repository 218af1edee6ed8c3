//! `--check-sample N`: rebuild some recorded units from scratch and compare them bit for
//! bit with what was recorded. When recording, the wrapper saves each unit's rustc command
//! (program, arguments, working dir, environment) in the session; the check reruns it
//! with `--out-dir` in a fresh temp dir, after cargo has finished, so every input is still
//! in place. A unit that does not reproduce is reported, its key is added to the store's
//! list of nondeterministic units (which are never recorded again), and it is left out of
//! the manifest, hence out of what `--push-to` pushes.
//!
//! The rebuild runs outside the build sandbox: rustc reads its inputs by absolute path in
//! the target dir and the cargo home, which the sandbox of §10 does not expose.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::key::Places;
use super::source::{hex, sha256_file};
use super::unit::UnitRecord;

const INVOCATIONS: &str = "invocations";

/// A recorded unit's rustc command, as the wrapper ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub key: String,
    pub store_path: String,
    pub rustc: PathBuf,
    /// The arguments, with the remapping added.
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub places: SavedPlaces,
}

/// [`Places`] in a serialisable form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlaces {
    pub package_root: String,
    pub out_dir: Option<String>,
    pub deps_dir: String,
    pub profile_dir: String,
}

impl From<&Places> for SavedPlaces {
    fn from(p: &Places) -> Self {
        SavedPlaces {
            package_root: p.package_root.clone(),
            out_dir: p.out_dir.clone(),
            deps_dir: p.deps_dir.clone(),
            profile_dir: p.profile_dir.clone(),
        }
    }
}

/// Saves the command of a recorded unit in the session. Best effort.
pub fn save(session: &Path, saved: &Saved) {
    let dir = session.join(INVOCATIONS);
    let _ = fs::create_dir_all(&dir);
    if let Ok(json) = serde_json::to_vec(saved) {
        let _ = fs::write(dir.join(format!("{}.json", saved.key)), json);
    }
}

/// The saved commands of a session.
pub fn saved(session: &Path) -> Vec<Saved> {
    let Ok(rd) = fs::read_dir(session.join(INVOCATIONS)) else {
        return Vec::new();
    };
    let mut v: Vec<Saved> = rd
        .filter_map(|e| fs::read(e.ok()?.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

/// The result of rebuilding one unit.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub key: String,
    pub store_path: String,
    /// Output files whose bytes differ (empty: reproducible).
    pub differing: Vec<String>,
    /// Set when the rebuild itself failed.
    pub error: Option<String>,
}

impl Checked {
    pub fn reproducible(&self) -> bool {
        self.differing.is_empty() && self.error.is_none()
    }
}

/// Picks `n` of `saved` (spread over the sorted keys from `seed`) and rebuilds each,
/// comparing with the unit recorded at `unit_dir(store path)`.
pub fn check_sample(
    saved: &[Saved],
    n: usize,
    seed: u64,
    unit_dir: impl Fn(&str) -> Option<PathBuf>,
) -> Vec<Checked> {
    pick(saved.len(), n, seed)
        .into_iter()
        .map(|i| {
            let s = &saved[i];
            let mut c = Checked {
                key: s.key.clone(),
                store_path: s.store_path.clone(),
                differing: Vec::new(),
                error: None,
            };
            match unit_dir(&s.store_path).ok_or_else(|| "unit not valid".to_owned()) {
                Ok(dir) => match rebuild(s, &dir) {
                    Ok(d) => c.differing = d,
                    Err(e) => c.error = Some(e),
                },
                Err(e) => c.error = Some(e),
            }
            c
        })
        .collect()
}

/// `n` distinct indices below `len`, chosen by a small xorshift from `seed`.
fn pick(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..len).collect();
    let mut x = seed | 1;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all.truncate(n.min(len));
    all.sort_unstable();
    all
}

/// Reruns the saved command into a temp dir beside the real out dir and names the output
/// files whose bytes differ from the unit's.
fn rebuild(s: &Saved, unit_dir: &Path) -> Result<Vec<String>, String> {
    let record: UnitRecord = serde_json::from_slice(
        &fs::read(unit_dir.join("unit.json")).map_err(|e| format!("cannot read unit.json: {e}"))?,
    )
    .map_err(|e| format!("bad unit.json: {e}"))?;
    let parent = Path::new(&s.places.deps_dir)
        .parent()
        .ok_or("no profile dir")?
        .to_path_buf();
    let tmp = tempfile::Builder::new()
        .prefix(".store-check-")
        .tempdir_in(&parent)
        .map_err(|e| format!("no temp dir: {e}"))?;
    let args = with_out_dir(&s.args, tmp.path());
    let out = Command::new(&s.rustc)
        .args(&args)
        .current_dir(&s.cwd)
        .env_clear()
        .envs(s.env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "rebuild failed: {}",
            err.lines().last().unwrap_or("")
        ));
    }
    let places = Places {
        package_root: s.places.package_root.clone(),
        out_dir: s.places.out_dir.clone(),
        deps_dir: tmp.path().display().to_string(),
        profile_dir: s.places.profile_dir.clone(),
    };
    compare(&record.files, tmp.path(), &places).map_err(|e| format!("cannot compare: {e}"))
}

fn with_out_dir(args: &[String], dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--out-dir" {
            skip = true;
            continue;
        }
        if a.starts_with("--out-dir=") {
            continue;
        }
        out.push(a.clone());
    }
    out.push("--out-dir".to_owned());
    out.push(dir.display().to_string());
    out
}

/// Names of the recorded files that the rebuild in `dir` did not reproduce.
fn compare(
    files: &BTreeMap<String, String>,
    dir: &Path,
    places: &Places,
) -> io::Result<Vec<String>> {
    let mut differing = Vec::new();
    for (name, want) in files {
        let path = dir.join(name);
        let got = if name.ends_with(".d") {
            let text = fs::read_to_string(&path)?;
            hex(&<sha2::Sha256 as sha2::Digest>::digest(
                places.abstract_text(&text).as_bytes(),
            ))
        } else {
            sha256_file(&path)?
        };
        if &got != want {
            differing.push(name.clone());
        }
    }
    Ok(differing)
}

/// The store's list of keys known not to reproduce: `<state>/cargo/nondeterministic`, one
/// hex key per line.
pub fn known_nondeterministic(state_dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(state_dir.join("cargo").join("nondeterministic"))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Adds keys to that list.
pub fn mark_nondeterministic(state_dir: &Path, keys: &[String]) -> io::Result<()> {
    use std::io::Write;
    let dir = state_dir.join("cargo");
    fs::create_dir_all(&dir)?;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nondeterministic"))?;
    let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_bounded_and_follow_the_seed() {
        let a = pick(10, 4, 7);
        assert_eq!(a.len(), 4);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 10));
        assert_eq!(a, pick(10, 4, 7));
        assert_eq!(pick(3, 10, 1), [0, 1, 2]);
    }

    #[test]
    fn the_out_dir_is_replaced_in_either_form() {
        let v = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            with_out_dir(
                &v("a.rs --out-dir /x -C opt-level=1 --out-dir=/y"),
                Path::new("/t")
            ),
            v("a.rs -C opt-level=1 --out-dir /t")
        );
    }
}
