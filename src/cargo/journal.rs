//! What each rustc invocation of a `store cargo` session did: one JSON line per
//! invocation appended to `<session>/journal.jsonl` (a single `write` on an `O_APPEND`
//! file, so concurrent wrappers never interleave), and the report and summary made from it.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::key::KeyInputs;
use super::source::SourceKind;

const JOURNAL: &str = "journal.jsonl";

/// What happened to one rustc invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Installed from a trusted substituter.
    Substituted,
    /// Installed from a unit already valid in the local store.
    Local,
    /// Cacheable, but compiled (a miss).
    Compiled,
    /// Compiled and added to the store (`--record`).
    Recorded,
    /// Not cacheable; compiled as usual.
    Uncacheable,
}

/// One journal line (and one report entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "crate")]
    pub crate_name: String,
    pub version: String,
    pub source_kind: SourceKind,
    pub crate_types: Vec<String>,
    pub outcome: Outcome,
    /// Why a unit was compiled or not cacheable.
    pub reason: Option<String>,
    /// Hex sha256 of the key inputs.
    pub key: Option<String>,
    pub store_path: Option<String>,
    /// Compile seconds: spent (compiled, recorded, uncacheable) or avoided (substituted,
    /// local; as recorded where the unit was built).
    pub seconds: f64,
    /// Time the wrapper itself took (key, lookup, install), in milliseconds.
    pub overhead_ms: f64,
    pub inputs: Option<KeyInputs>,
    /// Exit status of rustc, when it ran.
    pub exit: Option<i32>,
}

/// Appends `entry` to the session's journal.
pub fn append(session: &Path, entry: &Entry) -> io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(session.join(JOURNAL))?;
    f.write_all(&line)
}

/// Reads a session's journal (a torn last line, from a killed wrapper, is skipped).
pub fn read(session: &Path) -> io::Result<Vec<Entry>> {
    let text = match fs::read_to_string(session.join(JOURNAL)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Counts over a session.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Totals {
    pub substituted: usize,
    pub local: usize,
    pub compiled: usize,
    pub recorded: usize,
    pub uncacheable: usize,
    /// Reasons for `uncacheable`, counted.
    pub uncacheable_reasons: BTreeMap<String, usize>,
    /// Reasons for `compiled` (misses), counted.
    pub miss_reasons: BTreeMap<String, usize>,
    /// Compile seconds avoided (substituted + local).
    pub seconds_avoided: f64,
    /// Compile seconds spent in rustc.
    pub seconds_compiling: f64,
    /// Median wrapper overhead of installed units, in milliseconds.
    pub overhead_ms_p50: f64,
}

pub fn totals(entries: &[Entry]) -> Totals {
    let mut t = Totals::default();
    let mut overheads = Vec::new();
    for e in entries {
        let reason = || e.reason.clone().unwrap_or_default();
        match e.outcome {
            Outcome::Substituted | Outcome::Local => {
                if e.outcome == Outcome::Substituted {
                    t.substituted += 1;
                } else {
                    t.local += 1;
                }
                t.seconds_avoided += e.seconds;
                overheads.push(e.overhead_ms);
            }
            Outcome::Compiled => {
                t.compiled += 1;
                *t.miss_reasons.entry(reason()).or_default() += 1;
                t.seconds_compiling += e.seconds;
            }
            Outcome::Recorded => {
                t.recorded += 1;
                t.seconds_compiling += e.seconds;
            }
            Outcome::Uncacheable => {
                t.uncacheable += 1;
                *t.uncacheable_reasons.entry(reason()).or_default() += 1;
                t.seconds_compiling += e.seconds;
            }
        }
    }
    overheads.sort_by(f64::total_cmp);
    t.overhead_ms_p50 = overheads.get(overheads.len() / 2).copied().unwrap_or(0.0);
    t
}

/// The one line `store cargo` prints at the end.
pub fn summary(t: &Totals) -> String {
    let reasons = |m: &BTreeMap<String, usize>| {
        if m.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = m.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            format!(" ({})", parts.join(", "))
        }
    };
    format!(
        "store cargo: {} substituted, {} from the local store, {} compiled{}, {} recorded, \
         {} not cacheable{}; {:.1} s of compiling avoided",
        t.substituted,
        t.local,
        t.compiled,
        reasons(&t.miss_reasons),
        t.recorded,
        t.uncacheable,
        reasons(&t.uncacheable_reasons),
        t.seconds_avoided
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Outcome, reason: Option<&str>, seconds: f64) -> Entry {
        Entry {
            crate_name: "a".into(),
            version: "1.0.0".into(),
            source_kind: SourceKind::Registry,
            crate_types: vec!["lib".into()],
            outcome,
            reason: reason.map(str::to_owned),
            key: None,
            store_path: None,
            seconds,
            overhead_ms: 3.0,
            inputs: None,
            exit: None,
        }
    }

    #[test]
    fn journal_lines_add_up_to_totals_and_a_summary() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), &entry(Outcome::Substituted, None, 2.0)).unwrap();
        append(d.path(), &entry(Outcome::Local, None, 1.0)).unwrap();
        append(
            d.path(),
            &entry(Outcome::Uncacheable, Some("local source"), 0.5),
        )
        .unwrap();
        append(
            d.path(),
            &entry(Outcome::Uncacheable, Some("local source"), 0.5),
        )
        .unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let t = totals(&read(d.path()).unwrap());
        assert_eq!((t.substituted, t.local, t.uncacheable), (1, 1, 2));
        assert_eq!(t.seconds_avoided, 3.0);
        assert_eq!(
            summary(&t),
            "store cargo: 1 substituted, 1 from the local store, 0 compiled, 0 recorded, \
             2 not cacheable (local source: 2); 3.0 s of compiling avoided"
        );
    }
}
