//! A compiled unit as a store path: what it holds, how a compilation is recorded into one
//! and how one is installed into cargo's target dir (store-format.md §11.3).
//!
//! ```text
//! <unit path>/out/<file>…   what rustc wrote into --out-dir (dep-info with placeholders)
//! <unit path>/stderr        rustc's stderr (JSON diagnostics, artifact notices), placeholders
//! <unit path>/unit.json     UnitRecord: the key inputs, file digests, env deps, seconds
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::{KeyInputs, Places};
use super::source::hex;
use crate::format::hash::Hash;
use crate::format::keys::SecretKey;
use crate::format::nar::{NarWriteError, NarWriter};
use crate::format::narinfo::fingerprint;
use crate::format::path_meta::PathMeta;
use crate::format::store_path::StorePath;
use crate::fsnar::{HashingReader, HashingWriter};
use crate::store::{LocalStore, StoreError};
use crate::temp_file::TempFile;

/// What a unit records about itself (`unit.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnitRecord {
    pub inputs: KeyInputs,
    /// Output file name → sha256 (hex) of the bytes stored.
    pub files: BTreeMap<String, String>,
    /// Environment variables the crate read at compile time (`# env-dep:` lines of its
    /// dep-info) that the key does not cover, with the value seen (placeholders applied).
    pub env_deps: BTreeMap<String, Option<String>>,
    /// Seconds the compilation took where it was recorded.
    pub seconds: f64,
}

/// Environment variables whose dep-info mention does not make a unit machine-specific:
/// their values are machine paths that the key replaces by content (see [`super::key`]).
const PATH_VARS: &[&str] = &["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "OUT_DIR"];

/// Errors while recording or installing a unit.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("cannot read '{path}'")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write '{path}'")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the unit's NAR")]
    Nar(#[source] NarWriteError),
    #[error("unit.json is malformed")]
    Record(#[source] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> UnitError + '_ {
    move |source| UnitError::Read {
        path: path.display().to_string(),
        source,
    }
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnitError + '_ {
    move |source| UnitError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// The `# env-dep:NAME[=VALUE]` lines of a dep-info file, minus the path variables.
pub fn env_deps(dep_info: &str, places: &Places) -> BTreeMap<String, Option<String>> {
    env_dep_lines(dep_info)
        .filter(|(k, _)| !PATH_VARS.contains(k))
        .map(|(k, v)| (k.to_owned(), v.map(|v| places.abstract_text(v))))
        .collect()
}

/// Each `# env-dep:NAME[=VALUE]` line of a dep-info file as written: the name and the
/// value, if any (still escaped).
pub fn env_dep_lines(dep_info: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    dep_info
        .lines()
        .filter_map(|l| l.strip_prefix("# env-dep:"))
        .map(|d| match d.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (d, None),
        })
}

/// The first env dep whose value here differs from the recorded one, if any.
pub fn env_mismatch(record: &UnitRecord, places: &Places) -> Option<String> {
    record.env_deps.iter().find_map(|(k, want)| {
        let have = std::env::var(k).ok().map(|v| places.abstract_text(&v));
        (have != *want).then(|| k.clone())
    })
}

/// A finished compilation to record.
pub struct Compiled<'a> {
    pub inputs: &'a KeyInputs,
    pub path: &'a StorePath,
    /// The output files, by name, in `places.deps_dir`.
    pub outputs: &'a [String],
    pub stderr: &'a [u8],
    pub seconds: f64,
    pub places: &'a Places,
}

/// Adds a compiled unit to the store as `compiled.path`, signed with `keys`. Returns the
/// record written (file digests of what was stored).
pub fn record(
    store: &LocalStore,
    compiled: &Compiled<'_>,
    keys: &[Arc<SecretKey>],
) -> Result<UnitRecord, UnitError> {
    import_written(store, compiled.path, keys, |nar| write_nar(compiled, nar))
}

/// A NAR on its way to a temp file, hashed as it goes.
pub type NarSink<'a> = NarWriter<HashingWriter<BufWriter<&'a File>>>;

/// Writes a NAR with `write` into a temp file of the store, then adds it as `path` (no
/// references) signed with `keys`. What `write` returns is passed on.
pub fn import_written<T>(
    store: &LocalStore,
    path: &StorePath,
    keys: &[Arc<SecretKey>],
    write: impl FnOnce(&mut NarSink<'_>) -> Result<T, UnitError>,
) -> Result<T, UnitError> {
    let tmp_dir = store.layout().temp_files_dir();
    fs::create_dir_all(&tmp_dir).map_err(write_err(&tmp_dir))?;
    let tmp = TempFile::create_in(&tmp_dir, 0o600).map_err(write_err(&tmp_dir))?;
    let mut nar = NarWriter::new(HashingWriter::wrap(BufWriter::new(tmp.as_file())));
    let value = write(&mut nar)?;
    let (mut sink, nar_size) = nar.finish().map_err(UnitError::Nar)?;
    sink.flush()
        .map_err(|e| UnitError::Nar(NarWriteError::Io(e)))?;
    let nar_hash = Hash::sha256(sink.finish().0);
    let meta = signed_meta(store, path, nar_hash, nar_size, keys);
    let mut f = tmp.as_file();
    f.rewind().map_err(read_err(tmp.path()))?;
    store.import_nar(meta, io::BufReader::new(f))?;
    Ok(value)
}

fn signed_meta(
    store: &LocalStore,
    path: &StorePath,
    nar_hash: Hash,
    nar_size: u64,
    keys: &[Arc<SecretKey>],
) -> PathMeta {
    let fp = fingerprint(store.store_dir(), path, &nar_hash, nar_size, []);
    PathMeta {
        path: path.clone(),
        nar_hash,
        nar_size,
        references: Default::default(),
        deriver: None,
        sigs: keys.iter().map(|k| k.sign(&fp)).collect(),
        ca: None,
    }
}

/// Writes the unit's NAR: `out/` (sorted), `stderr`, `unit.json`.
fn write_nar(c: &Compiled<'_>, nar: &mut NarSink<'_>) -> Result<UnitRecord, UnitError> {
    let mut names: Vec<&String> = c.outputs.iter().collect();
    names.sort();
    let mut files = BTreeMap::new();
    let mut env = BTreeMap::new();
    nar.begin_directory(b"").map_err(UnitError::Nar)?;
    nar.begin_directory(b"out").map_err(UnitError::Nar)?;
    for name in names {
        let path = Path::new(&c.places.deps_dir).join(name);
        let digest = if name.ends_with(".d") {
            let text = fs::read_to_string(&path).map_err(read_err(&path))?;
            env = env_deps(&text, c.places);
            let text = c.places.abstract_text(&text);
            nar.regular_bytes(name.as_bytes(), false, text.as_bytes())
                .map_err(UnitError::Nar)?;
            hex(&Sha256::digest(text.as_bytes()))
        } else {
            add_file(nar, name, &path)?
        };
        files.insert(name.clone(), digest);
    }
    nar.end_directory().map_err(UnitError::Nar)?;
    let stderr = c.places.abstract_text(&String::from_utf8_lossy(c.stderr));
    nar.regular_bytes(b"stderr", false, stderr.as_bytes())
        .map_err(UnitError::Nar)?;
    let record = UnitRecord {
        inputs: c.inputs.clone(),
        files,
        env_deps: env,
        seconds: c.seconds,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(UnitError::Record)?;
    nar.regular_bytes(b"unit.json", false, &json)
        .map_err(UnitError::Nar)?;
    nar.end_directory().map_err(UnitError::Nar)?;
    Ok(record)
}

/// Streams one output file into the NAR, returning its sha256.
fn add_file<W: Write>(
    nar: &mut NarWriter<W>,
    name: &str,
    path: &Path,
) -> Result<String, UnitError> {
    let f = File::open(path).map_err(read_err(path))?;
    let meta = f.metadata().map_err(read_err(path))?;
    let exec = meta.permissions().mode() & 0o100 != 0;
    let mut hashing = HashingReader::new(f);
    nar.regular(name.as_bytes(), exec, meta.len(), &mut hashing)
        .map_err(UnitError::Nar)?;
    Ok(hex(&hashing.finish().0))
}

/// Reads the record of a valid unit.
pub fn read_record(unit_dir: &Path) -> Result<UnitRecord, UnitError> {
    let p = unit_dir.join("unit.json");
    let bytes = fs::read(&p).map_err(read_err(&p))?;
    serde_json::from_slice(&bytes).map_err(UnitError::Record)
}

/// Copies a unit's outputs into `places.deps_dir` under their names (each through a temp
/// name and a rename, so cargo never sees a partial file), dep-info made concrete. Returns
/// rustc's stderr, made concrete, to replay.
pub fn install(unit_dir: &Path, record: &UnitRecord, places: &Places) -> Result<String, UnitError> {
    let deps = Path::new(&places.deps_dir);
    for name in record.files.keys() {
        let src = unit_dir.join("out").join(name);
        let dest = deps.join(name);
        let tmp = deps.join(format!(".{name}.store-{}", std::process::id()));
        let result = if name.ends_with(".d") {
            let text = fs::read_to_string(&src).map_err(read_err(&src))?;
            fs::write(&tmp, places.concrete_text(&text)).map_err(write_err(&tmp))
        } else {
            copy_writable(&src, &tmp).map_err(write_err(&tmp))
        };
        if let Err(e) = result.and_then(|()| fs::rename(&tmp, &dest).map_err(write_err(&dest))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    }
    let p = unit_dir.join("stderr");
    let stderr = fs::read_to_string(&p).map_err(read_err(&p))?;
    Ok(places.concrete_text(&stderr))
}

/// Copies a (read-only) store file to `dest` as an ordinary writable file, keeping the
/// executable bit.
pub(super) fn copy_writable(src: &Path, dest: &Path) -> io::Result<()> {
    let exec = fs::metadata(src)?.permissions().mode() & 0o100 != 0;
    let mut to = File::create(dest)?;
    io::copy(&mut File::open(src)?, &mut to)?;
    to.set_permissions(fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places {
        Places {
            package_root: "/h/src/foo-1".into(),
            out_dir: None,
            deps_dir: "/p/t/debug/deps".into(),
            profile_dir: "/p/t/debug".into(),
        }
    }

    #[test]
    fn env_deps_leave_out_path_variables_and_keep_unset_ones() {
        let d = "/p/t/debug/deps/foo.d: /h/src/foo-1/src/lib.rs\n\n\
                 # env-dep:CARGO_MANIFEST_DIR=/h/src/foo-1\n# env-dep:FOO_LEVEL=3\n# env-dep:MISSING\n";
        let deps = env_deps(d, &places());
        assert_eq!(
            deps,
            BTreeMap::from([
                ("FOO_LEVEL".to_owned(), Some("3".to_owned())),
                ("MISSING".to_owned(), None),
            ])
        );
    }
}
