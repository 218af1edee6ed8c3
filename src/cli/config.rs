//! Settings from the config file (TOML), the environment (`STORE_DIR`, `STORE_ROOT`,
//! `STORE_SUBSTITUTERS`, `STORE_TRUSTED_PUBLIC_KEYS`) and flags, merged by one pure
//! function, [`merge`]: flags win over the environment, which wins over the file, which wins
//! over the defaults. Unknown config keys are errors. Key names follow nix.conf.
//!
//! The root: when none is set and the default location is not writable by this user, the
//! store goes under a per-user root ([`Machine::user_root`], `~/.local/share/store/root`),
//! as Nix 2.4+ does for unprivileged users. What the machine allows is probed by the
//! caller and passed in as a [`Machine`], so the merge itself does no I/O.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use store::format::store_path::StoreDir;
use store::store::layout::DEFAULT_STORE_DIR;

/// The config file (`--config F`, `$STORE_CONFIG`, or `~/.config/store/config.toml`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// The logical store dir.
    pub store_dir: Option<String>,
    /// Put the store and its state under this directory.
    pub root: Option<PathBuf>,
    /// Binary caches to substitute from, in order (a list or a space-separated string).
    pub substituters: Option<Words>,
    /// `name:base64` public keys whose signatures are trusted.
    pub trusted_public_keys: Option<Words>,
    /// netrc file with credentials for private caches (default `~/.netrc`).
    pub netrc_file: Option<PathBuf>,
    /// A bearer token sent to every HTTP cache (for private caches).
    pub bearer_token: Option<String>,
    /// Seconds allowed to connect to a cache.
    pub connect_timeout: Option<u64>,
    /// Seconds a download may make no progress before it fails.
    pub stalled_download_timeout: Option<u64>,
    /// Tries in total for transient HTTP failures.
    pub download_attempts: Option<u32>,
    /// NARs up to this many bytes are fetched whole before unpacking (0: stream all).
    pub whole_nar_max_size: Option<u64>,
    /// Secret keys that sign what is built locally (a list or a space-separated string).
    pub secret_key_files: Option<Words>,
    /// Build in the sandbox (default true); false is `--no-sandbox`.
    pub sandbox: Option<bool>,
    /// Host paths visible read-only in the sandbox: `PATH` or `INSIDE=OUTSIDE`.
    pub sandbox_paths: Option<Words>,
    /// Builds at the same time (default: the number of cores).
    pub max_jobs: Option<usize>,
    /// `NIX_BUILD_CORES` given to builders (default: the number of cores).
    pub cores: Option<u32>,
    /// Seconds a build may run.
    pub timeout: Option<u64>,
    /// Seconds a build may go without output.
    pub max_silent_time: Option<u64>,
    /// GC keeps the outputs of live derivations (default false, as Nix).
    pub keep_outputs: Option<bool>,
    /// GC keeps the derivers of live paths (default true, as Nix).
    pub keep_derivations: Option<bool>,
    /// `store serve` limits (the `[serve]` table).
    pub serve: Option<ServeFile>,
}

/// The `[serve]` table: limits of `store serve` (flags of the same names win). Sizes in
/// bytes, timeouts in seconds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeFile {
    pub max_connections: Option<usize>,
    pub header_timeout: Option<u64>,
    pub keep_alive_timeout: Option<u64>,
    pub send_timeout: Option<u64>,
    pub body_timeout: Option<u64>,
    pub min_body_rate: Option<u64>,
    pub nar_cache_size: Option<u64>,
    pub alias_cache_size: Option<u64>,
}

/// A list given either as a TOML array or as one space-separated string (as in nix.conf).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Words {
    List(Vec<String>),
    Line(String),
}

impl Words {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Words::List(v) => v,
            Words::Line(s) => split_words(&s),
        }
    }
}

/// Splits a space-separated setting (`"a b  c"`) into its words.
pub fn split_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// One layer of settings (the environment or the flags); `None` means "not given".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Layer {
    pub store_dir: Option<String>,
    pub root: Option<PathBuf>,
    pub substituters: Option<Vec<String>>,
    pub trusted_public_keys: Option<Vec<String>>,
}

/// What [`merge`] needs to know about this machine and user, found by the caller.
pub struct Machine<'a> {
    /// Whether a store with this store dir can live at its default location (no root):
    /// its store dir and state dir exist writable or can be created by this user. Only
    /// asked when no root is set.
    pub default_location_writable: &'a dyn Fn(&StoreDir) -> bool,
    /// The per-user root (`$XDG_DATA_HOME/store/root`, else `~/.local/share/store/root`);
    /// `None` when neither variable gives one.
    pub user_root: Option<PathBuf>,
}

/// The merged, checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub store_dir: StoreDir,
    pub root: Option<PathBuf>,
    /// `root` is the per-user root, chosen because none was set and the default location
    /// is not writable (the CLI says so on stderr).
    pub per_user_root: bool,
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    pub netrc_file: Option<PathBuf>,
    pub bearer_token: Option<String>,
    pub connect_timeout: Option<u64>,
    pub stalled_download_timeout: Option<u64>,
    pub download_attempts: Option<u32>,
    pub whole_nar_max_size: Option<u64>,
    pub secret_key_files: Vec<PathBuf>,
    /// Build in the sandbox (default true).
    pub sandbox: bool,
    pub sandbox_paths: Vec<String>,
    pub max_jobs: Option<usize>,
    pub cores: Option<u32>,
    pub timeout: Option<u64>,
    pub max_silent_time: Option<u64>,
    pub keep_outputs: bool,
    pub keep_derivations: bool,
    pub serve: ServeFile,
    /// `--refresh`: substitution does not use the narinfo cache.
    pub refresh: bool,
}

/// Merges the layers: flags > env > file > defaults. Pure: no I/O, no globals; what the
/// machine allows comes in `machine`.
pub fn merge(
    file: &FileConfig,
    env: &Layer,
    flags: &Layer,
    machine: &Machine<'_>,
) -> Result<Settings> {
    let store_dir = flags
        .store_dir
        .as_ref()
        .or(env.store_dir.as_ref())
        .or(file.store_dir.as_ref())
        .map_or(DEFAULT_STORE_DIR, String::as_str);
    let store_dir = StoreDir::new(store_dir).context("invalid store dir")?;
    let root = flags
        .root
        .clone()
        .or_else(|| env.root.clone())
        .or_else(|| file.root.clone());
    if let Some(r) = &root {
        if !r.is_absolute() {
            bail!("the root '{}' must be an absolute path", r.display());
        }
    }
    let (root, per_user_root) = match (root, &machine.user_root) {
        (None, Some(user_root)) if !(machine.default_location_writable)(&store_dir) => {
            (Some(user_root.clone()), true)
        }
        (root, _) => (root, false),
    };
    let pick = |flag: &Option<Vec<String>>, env: &Option<Vec<String>>, file: &Option<Words>| {
        flag.clone()
            .or_else(|| env.clone())
            .or_else(|| file.clone().map(Words::into_vec))
            .unwrap_or_default()
    };
    Ok(Settings {
        store_dir,
        root,
        per_user_root,
        substituters: pick(&flags.substituters, &env.substituters, &file.substituters),
        trusted_public_keys: pick(
            &flags.trusted_public_keys,
            &env.trusted_public_keys,
            &file.trusted_public_keys,
        ),
        netrc_file: file.netrc_file.clone(),
        bearer_token: file.bearer_token.clone(),
        connect_timeout: file.connect_timeout,
        stalled_download_timeout: file.stalled_download_timeout,
        download_attempts: file.download_attempts,
        whole_nar_max_size: file.whole_nar_max_size,
        secret_key_files: file
            .secret_key_files
            .clone()
            .map(Words::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        sandbox: file.sandbox.unwrap_or(true),
        sandbox_paths: file
            .sandbox_paths
            .clone()
            .map(Words::into_vec)
            .unwrap_or_default(),
        max_jobs: file.max_jobs,
        cores: file.cores,
        timeout: file.timeout,
        max_silent_time: file.max_silent_time,
        keep_outputs: file.keep_outputs.unwrap_or(false),
        keep_derivations: file.keep_derivations.unwrap_or(true),
        serve: file.serve.clone().unwrap_or_default(),
        refresh: false,
    })
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file '{}'", path.display()))?;
    parse_file(&text).with_context(|| format!("invalid config file '{}'", path.display()))
}

pub fn parse_file(text: &str) -> Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose default location is writable.
    const PRIVILEGED: Machine<'static> = Machine {
        default_location_writable: &|_| true,
        user_root: None,
    };

    fn merge(file: &FileConfig, env: &Layer, flags: &Layer) -> Result<Settings> {
        super::merge(file, env, flags, &PRIVILEGED)
    }

    /// Issue 13: an ordinary user with no root got an error instead of a store.
    #[test]
    fn unwritable_default_location_uses_the_per_user_root() {
        let user_root = PathBuf::from("/home/u/.local/share/store/root");
        let asked = std::cell::Cell::new(None);
        let unprivileged = Machine {
            default_location_writable: &|dir: &StoreDir| {
                asked.set(Some(dir.to_string()));
                false
            },
            user_root: Some(user_root.clone()),
        };
        let none = Layer::default();
        let s = super::merge(&FileConfig::default(), &none, &none, &unprivileged).unwrap();
        assert_eq!(
            (s.root.as_deref(), s.per_user_root),
            (Some(&*user_root), true)
        );
        assert_eq!(asked.take().as_deref(), Some(DEFAULT_STORE_DIR));
        // The probe is asked about the store dir that will be used.
        let other = Layer {
            store_dir: Some("/other/store".into()),
            ..Layer::default()
        };
        super::merge(&FileConfig::default(), &other, &none, &unprivileged).unwrap();
        assert_eq!(asked.take().as_deref(), Some("/other/store"));
        // A root from the flags, the environment or the file wins, unprobed.
        let given = Layer {
            root: Some("/given".into()),
            ..Layer::default()
        };
        let file = FileConfig {
            root: Some("/file".into()),
            ..FileConfig::default()
        };
        for (file, env, flags) in [
            (&FileConfig::default(), &given, &none),
            (&FileConfig::default(), &none, &given),
            (&file, &none, &none),
        ] {
            let s = super::merge(file, env, flags, &unprivileged).unwrap();
            assert!(!s.per_user_root && s.root != Some(user_root.clone()));
            assert_eq!(asked.take(), None);
        }
        // Writable default location, or no per-user root known: no root.
        let s = super::merge(&FileConfig::default(), &none, &none, &PRIVILEGED).unwrap();
        assert_eq!((s.root, s.per_user_root), (None, false));
        let homeless = Machine {
            default_location_writable: &|_| false,
            user_root: None,
        };
        let s = super::merge(&FileConfig::default(), &none, &none, &homeless).unwrap();
        assert_eq!((s.root, s.per_user_root), (None, false));
    }

    #[test]
    fn precedence() {
        let file = FileConfig {
            store_dir: Some("/a/store".into()),
            root: Some("/file".into()),
            substituters: Some(Words::Line("file:///a  http://b".into())),
            trusted_public_keys: Some(Words::List(vec!["k:1".into()])),
            ..FileConfig::default()
        };
        let env = Layer {
            store_dir: Some("/b/store".into()),
            trusted_public_keys: Some(vec!["k:2".into()]),
            ..Layer::default()
        };
        let flags = Layer {
            root: Some("/flag".into()),
            ..Layer::default()
        };
        let s = merge(&file, &env, &flags).unwrap();
        assert_eq!(s.store_dir.as_str(), "/b/store");
        assert_eq!(s.root.as_deref(), Some(Path::new("/flag")));
        assert_eq!(s.substituters, ["file:///a", "http://b"]);
        assert_eq!(s.trusted_public_keys, ["k:2"]);
        let d = merge(&FileConfig::default(), &Layer::default(), &Layer::default()).unwrap();
        assert_eq!(d.store_dir.as_str(), DEFAULT_STORE_DIR);
        assert_eq!(d.root, None);
        assert!(!d.keep_outputs && d.keep_derivations, "Nix's defaults");
        let gc = parse_file("keep-outputs = true\nkeep-derivations = false\n").unwrap();
        let g = merge(&gc, &Layer::default(), &Layer::default()).unwrap();
        assert!(g.keep_outputs && !g.keep_derivations);
    }

    #[test]
    fn serve_table() {
        let f = parse_file("root = \"/r\"\n[serve]\nmax-connections = 9\nheader-timeout = 2\n");
        let s = merge(&f.unwrap(), &Layer::default(), &Layer::default()).unwrap();
        assert_eq!(s.serve.max_connections, Some(9));
        assert_eq!(s.serve.header_timeout, Some(2));
        assert_eq!(s.serve.nar_cache_size, None);
        assert!(parse_file("[serve]\nbogus = 1\n").is_err());
    }

    #[test]
    fn refusals() {
        assert!(parse_file("store-dir = \"/x\"\nbogus = 1\n").is_err());
        assert_eq!(
            parse_file("store-dir = \"/x/store\"\nroot = \"/r\"\n").unwrap(),
            FileConfig {
                store_dir: Some("/x/store".into()),
                root: Some("/r".into()),
                ..FileConfig::default()
            }
        );
        let rel = Layer {
            root: Some("rel".into()),
            ..Layer::default()
        };
        assert!(merge(&FileConfig::default(), &rel, &Layer::default()).is_err());
        let bad = Layer {
            store_dir: Some("/x/".into()),
            ..Layer::default()
        };
        assert!(merge(&FileConfig::default(), &bad, &Layer::default()).is_err());
    }
}
