//! Recipes: TOML build descriptions, and their instantiation into `.drv` files in the
//! local store. A recipe says what Nix's `derivation { … }` says, and instantiates to the
//! same `.drv` path as the equivalent expression. See store-format.md, "Recipes".
//!
//! ```toml
//! name = "hello"                      # the derivation name (not ending in .drv)
//! builder = "/bin/sh"
//! args = ["-c", "echo ${inputs.greeting} > $out"]
//! system = "x86_64-linux"             # default: this machine's Nix system
//! outputs = ["out", "dev"]            # default ["out"]; when given, also env `outputs`
//! output_hash = "sha256-…"            # fixed-output: the hash of the single output `out`
//! output_hash_algo = "sha256"         # optional when the hash says it (SRI, `sha256:`)
//! output_hash_mode = "recursive"      # flat (default) or recursive
//! [env]                               # strings, integers, booleans, lists (space-joined)
//! GREETING = "hi"
//! [inputs]                            # other recipes, relative to this file
//! greeting = "greeting.toml"
//! [sources]                           # files or trees, relative to this file
//! script = "build.sh"
//! ```
//!
//! Placeholders, in `builder`, `args` and `env` values: `${inputs.NAME}` (the `out` path
//! of input recipe NAME), `${inputs.NAME.OUTPUT}` (another output), `${sources.NAME}`
//! (the store path of source NAME); `$${` is a literal `${`, any other `$` is literal.
//! Like string context in Nix, only what a placeholder mentions becomes an input of the
//! derivation, so a declared input or source that no placeholder uses is an error.
//!
//! The environment is built as the `derivation` builtin builds it: `name`, `builder`,
//! `system`, every `env` entry, `outputs` (only when given), `outputHash`,
//! `outputHashAlgo` and `outputHashMode` (each only when given, verbatim), and one entry
//! per output holding its path. Sources are added like a Nix path literal (`"${./x}"`):
//! a `source` path named after the file, hashed as a NAR with sha256.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::format::derivation::hash::{DrvGraphError, ModuloHasher};
use crate::format::derivation::{
    valid_output_name, Derivation, DerivationError, DerivationOutput, FixedOutputHash,
    OutputHashMode, DRV_EXTENSION,
};
use crate::format::hash::{Hash, HashAlgo, HashError};
use crate::format::store_path::{StoreDir, StorePath, StorePathError, StorePathName};
use crate::store::{LocalStore, StoreError};

/// How deep recipes may include each other.
pub const MAX_RECIPE_DEPTH: usize = 256;
/// The largest recipe file read, in bytes.
pub const MAX_RECIPE_SIZE: u64 = 1 << 20;

/// Keys the environment gets from elsewhere, which `env` may not set.
const RESERVED_ENV: [&str; 8] = [
    "name",
    "builder",
    "system",
    "args",
    "outputs",
    "outputHash",
    "outputHashAlgo",
    "outputHashMode",
];

/// A recipe file as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub builder: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub system: Option<String>,
    pub outputs: Option<Vec<String>>,
    pub output_hash: Option<String>,
    pub output_hash_algo: Option<String>,
    pub output_hash_mode: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    #[serde(default)]
    pub inputs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub sources: BTreeMap<String, PathBuf>,
}

/// An `env` value, turned into a string the way Nix coerces attribute values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    String(String),
    Integer(i64),
    Bool(bool),
    List(Vec<EnvValue>),
}

/// Why a recipe could not be read or instantiated. `recipe` is the file concerned.
#[derive(Debug, Error)]
pub enum RecipeError {
    #[error("cannot read recipe '{recipe}'")]
    Read {
        recipe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recipe '{recipe}' is larger than {MAX_RECIPE_SIZE} bytes")]
    TooLarge { recipe: PathBuf },
    #[error("invalid recipe '{recipe}'")]
    Toml {
        recipe: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("recipe '{recipe}': invalid name '{name}'")]
    Name {
        recipe: PathBuf,
        name: String,
        #[source]
        source: StorePathError,
    },
    #[error("recipe '{recipe}': derivation names may not end in '.drv'")]
    DrvName { recipe: PathBuf },
    #[error("recipe '{recipe}': {field} may not contain '\"', '\\\\' or control characters")]
    BadSystem {
        recipe: PathBuf,
        field: &'static str,
    },
    #[error("recipe '{recipe}': env key '{key}' is reserved")]
    ReservedEnv { recipe: PathBuf, key: String },
    #[error("recipe '{recipe}': invalid outputs: {reason}")]
    Outputs {
        recipe: PathBuf,
        reason: &'static str,
    },
    #[error("recipe '{recipe}': invalid output name '{output}'")]
    OutputName { recipe: PathBuf, output: String },
    #[error("recipe '{recipe}': a fixed-output recipe has the single output 'out'")]
    FixedOutputs { recipe: PathBuf },
    #[error("recipe '{recipe}': output_hash_algo and output_hash_mode need output_hash")]
    HashFieldsWithoutHash { recipe: PathBuf },
    #[error("recipe '{recipe}': invalid output hash")]
    OutputHash {
        recipe: PathBuf,
        #[source]
        source: HashError,
    },
    #[error("recipe '{recipe}': output_hash_mode must be 'flat' or 'recursive', not '{mode}'")]
    HashMode { recipe: PathBuf, mode: String },
    #[error("recipe '{recipe}', {field}: {reason} in '{text}'")]
    Placeholder {
        recipe: PathBuf,
        field: String,
        text: String,
        reason: &'static str,
    },
    #[error("recipe '{recipe}': placeholder refers to undeclared {kind} '{name}'")]
    Undeclared {
        recipe: PathBuf,
        kind: &'static str,
        name: String,
    },
    #[error("recipe '{recipe}': input '{input}' has no output '{output}'")]
    NoSuchOutput {
        recipe: PathBuf,
        input: String,
        output: String,
    },
    #[error("recipe '{recipe}': {kind} '{name}' is declared but no placeholder uses it")]
    Unused {
        recipe: PathBuf,
        kind: &'static str,
        name: String,
    },
    #[error("recipe '{recipe}' includes itself through its inputs")]
    Cycle { recipe: PathBuf },
    #[error("recipe '{recipe}': inputs nested deeper than {MAX_RECIPE_DEPTH} levels")]
    TooDeep { recipe: PathBuf },
    #[error("recipe '{recipe}': cannot add source '{path}'")]
    Source {
        recipe: PathBuf,
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("recipe '{recipe}': source '{path}' has no usable file name")]
    SourceName { recipe: PathBuf, path: PathBuf },
    #[error("recipe '{recipe}': invalid derivation")]
    Derivation {
        recipe: PathBuf,
        #[source]
        source: DerivationError,
    },
    #[error("recipe '{recipe}': cannot compute the output paths")]
    OutputPaths {
        recipe: PathBuf,
        #[source]
        source: Box<DrvGraphError<NotInstantiated>>,
    },
    #[error("recipe '{recipe}': cannot write the derivation")]
    Store {
        recipe: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
}

/// An input derivation that the instantiator did not produce (cannot happen for
/// derivations it made itself).
#[derive(Debug, Error)]
#[error("derivation '{0}' was not instantiated here")]
pub struct NotInstantiated(pub String);

/// What instantiating one recipe gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instantiated {
    pub drv_path: StorePath,
    pub drv: Derivation,
}

impl Recipe {
    /// Parses recipe text; `recipe` names it in errors.
    pub fn parse(text: &str, recipe: &Path) -> Result<Self, RecipeError> {
        toml::from_str(text).map_err(|source| RecipeError::Toml {
            recipe: recipe.to_owned(),
            source,
        })
    }

    /// Reads and parses a recipe file.
    pub fn read(path: &Path) -> Result<Self, RecipeError> {
        let read_err = |source| RecipeError::Read {
            recipe: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_RECIPE_SIZE {
            return Err(RecipeError::TooLarge {
                recipe: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, path)
    }
}

impl EnvValue {
    /// Nix's coercion: strings as is, integers in decimal, `true` as `1`, `false` as the
    /// empty string, lists as their coerced elements joined by spaces.
    pub fn coerce(&self) -> String {
        match self {
            EnvValue::String(s) => s.clone(),
            EnvValue::Integer(i) => i.to_string(),
            EnvValue::Bool(true) => "1".to_owned(),
            EnvValue::Bool(false) => String::new(),
            EnvValue::List(items) => items
                .iter()
                .map(EnvValue::coerce)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// This machine's Nix system name (`builtins.currentSystem`), e.g. `x86_64-linux`.
pub fn host_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        a => a,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        o => o,
    };
    format!("{arch}-{os}")
}

/// Instantiates recipes into one store, remembering what it did: a recipe reached twice
/// (from several dependants) is instantiated once.
pub struct Instantiator<'s> {
    store: &'s LocalStore,
    hasher: ModuloHasher,
    done: HashMap<PathBuf, Instantiated>,
    drvs: BTreeMap<StorePath, Derivation>,
    in_progress: Vec<PathBuf>,
}

/// A placeholder found in a string.
enum Ref<'a> {
    Input { name: &'a str, output: &'a str },
    Source(&'a str),
}

/// Expands the placeholders of one recipe (`rpath`) into its derivation, making what they
/// mention inputs of it, and remembers which declared inputs and sources were used.
struct Placeholders<'a> {
    dir: &'a StoreDir,
    rpath: &'a Path,
    inputs: &'a BTreeMap<&'a str, Instantiated>,
    sources: &'a BTreeMap<&'a str, StorePath>,
    used_inputs: BTreeSet<String>,
    used_sources: BTreeSet<String>,
    drv: Derivation,
}

impl Placeholders<'_> {
    /// Sets the derivation's builder, arguments and environment to the recipe's, expanded
    /// in that order; then every declared input and source must have been used.
    fn fill(mut self, recipe: &Recipe) -> Result<Derivation, RecipeError> {
        let builder = self.expand("builder", &recipe.builder)?;
        let mut args = Vec::with_capacity(recipe.args.len());
        for (i, a) in recipe.args.iter().enumerate() {
            args.push(self.expand(&format!("args[{i}]"), a)?);
        }
        let mut env = BTreeMap::new();
        for (k, v) in &recipe.env {
            env.insert(k.clone(), self.expand(&format!("env.{k}"), &v.coerce())?);
        }
        self.drv.builder = builder;
        self.drv.args = args;
        self.drv.env = env;
        self.check_all_used(recipe)?;
        Ok(self.drv)
    }

    fn expand(&mut self, field: &str, text: &str) -> Result<String, RecipeError> {
        let rpath = self.rpath;
        expand(text, rpath, field, |r| match r {
            Ref::Input { name, output } => self.input(name, output),
            Ref::Source(name) => self.source(name),
        })
    }

    /// `${inputs.NAME.OUTPUT}`: the output's path; the output becomes an input.
    fn input(&mut self, name: &str, output: &str) -> Result<String, RecipeError> {
        let input = self
            .inputs
            .get(name)
            .ok_or_else(|| self.undeclared("input", name))?;
        let path = input
            .drv
            .output_path(output)
            .ok_or_else(|| RecipeError::NoSuchOutput {
                recipe: self.rpath.to_owned(),
                input: name.to_owned(),
                output: output.to_owned(),
            })?;
        self.used_inputs.insert(name.to_owned());
        self.drv
            .input_drvs
            .entry(input.drv_path.clone())
            .or_default()
            .insert(output.to_owned());
        Ok(self.dir.display_path(path))
    }

    /// `${sources.NAME}`: the source's store path, which becomes an input source.
    fn source(&mut self, name: &str) -> Result<String, RecipeError> {
        let path = self
            .sources
            .get(name)
            .ok_or_else(|| self.undeclared("source", name))?;
        self.used_sources.insert(name.to_owned());
        self.drv.input_srcs.insert(path.clone());
        Ok(self.dir.display_path(path))
    }

    fn undeclared(&self, kind: &'static str, name: &str) -> RecipeError {
        RecipeError::Undeclared {
            recipe: self.rpath.to_owned(),
            kind,
            name: name.to_owned(),
        }
    }

    /// Like string context in Nix: a declared input or source no placeholder used is an
    /// error (inputs checked first).
    fn check_all_used(&self, recipe: &Recipe) -> Result<(), RecipeError> {
        for (kind, declared, used) in [
            ("input", recipe.inputs.keys(), &self.used_inputs),
            ("source", recipe.sources.keys(), &self.used_sources),
        ] {
            if let Some(name) = declared.into_iter().find(|n| !used.contains(*n)) {
                return Err(RecipeError::Unused {
                    recipe: self.rpath.to_owned(),
                    kind,
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }
}

impl<'s> Instantiator<'s> {
    pub fn new(store: &'s LocalStore) -> Self {
        Instantiator {
            store,
            hasher: ModuloHasher::new(store.store_dir()),
            done: HashMap::new(),
            drvs: BTreeMap::new(),
            in_progress: Vec::new(),
        }
    }

    /// Instantiates the recipe file at `path` and, first, everything it depends on.
    pub fn instantiate(&mut self, path: &Path) -> Result<Instantiated, RecipeError> {
        let key = std::path::absolute(path)
            .and_then(|p| p.canonicalize())
            .map_err(|source| RecipeError::Read {
                recipe: path.to_owned(),
                source,
            })?;
        if let Some(done) = self.done.get(&key) {
            return Ok(done.clone());
        }
        if self.in_progress.contains(&key) {
            return Err(RecipeError::Cycle { recipe: key });
        }
        if self.in_progress.len() >= MAX_RECIPE_DEPTH {
            return Err(RecipeError::TooDeep { recipe: key });
        }
        let recipe = Recipe::read(&key)?;
        self.in_progress.push(key.clone());
        let result = self.instantiate_recipe(&recipe, &key);
        self.in_progress.pop();
        let done = result?;
        self.done.insert(key, done.clone());
        Ok(done)
    }

    /// Instantiates a parsed recipe; `file` is where it came from (relative paths in it
    /// are relative to its directory).
    pub fn instantiate_recipe(
        &mut self,
        recipe: &Recipe,
        file: &Path,
    ) -> Result<Instantiated, RecipeError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let rpath = file.to_path_buf();
        check_recipe(recipe, &rpath)?;

        let mut inputs: BTreeMap<&str, Instantiated> = BTreeMap::new();
        for (name, rel) in &recipe.inputs {
            inputs.insert(name, self.instantiate(&base.join(rel))?);
        }
        let mut sources: BTreeMap<&str, StorePath> = BTreeMap::new();
        for (name, rel) in &recipe.sources {
            sources.insert(name, self.add_source(&base.join(rel), &rpath)?);
        }

        let placeholders = Placeholders {
            dir: self.store.store_dir(),
            rpath: &rpath,
            inputs: &inputs,
            sources: &sources,
            used_inputs: BTreeSet::new(),
            used_sources: BTreeSet::new(),
            drv: Derivation {
                name: recipe.name.clone(),
                outputs: BTreeMap::new(),
                input_drvs: BTreeMap::new(),
                input_srcs: BTreeSet::new(),
                system: recipe.system.clone().unwrap_or_else(host_system),
                builder: String::new(),
                args: Vec::new(),
                env: BTreeMap::new(),
            },
        };
        let drv = placeholders.fill(recipe)?;
        self.finish(recipe, drv, &rpath)
    }

    /// Fills in the fixed entries of the environment and the outputs, then writes the
    /// `.drv` file.
    fn finish(
        &mut self,
        recipe: &Recipe,
        mut drv: Derivation,
        rpath: &Path,
    ) -> Result<Instantiated, RecipeError> {
        let dir = self.store.store_dir().clone();
        drv.env.insert("name".to_owned(), recipe.name.clone());
        drv.env.insert("builder".to_owned(), drv.builder.clone());
        drv.env.insert("system".to_owned(), drv.system.clone());
        if let Some(outs) = &recipe.outputs {
            drv.env.insert("outputs".to_owned(), outs.join(" "));
        }
        for (key, value) in [
            ("outputHash", &recipe.output_hash),
            ("outputHashAlgo", &recipe.output_hash_algo),
            ("outputHashMode", &recipe.output_hash_mode),
        ] {
            if let Some(v) = value {
                drv.env.insert(key.to_owned(), v.clone());
            }
        }
        let drv_err = |source| RecipeError::Derivation {
            recipe: rpath.to_owned(),
            source,
        };
        if let Some(fixed) = fixed_output_hash(recipe, rpath)? {
            let name = StorePathName::new(&recipe.name).map_err(|source| RecipeError::Name {
                recipe: rpath.to_owned(),
                name: recipe.name.clone(),
                source,
            })?;
            let path = fixed.output_path(&dir, &name);
            drv.env.insert("out".to_owned(), dir.display_path(&path));
            drv.outputs.insert(
                "out".to_owned(),
                DerivationOutput::Fixed { path, hash: fixed },
            );
        } else {
            for o in recipe.outputs.as_deref().unwrap_or(&["out".to_owned()]) {
                drv.env.insert(o.clone(), String::new());
                drv.outputs.insert(o.clone(), DerivationOutput::Deferred);
            }
            let drvs = &self.drvs;
            let mut lookup = |p: &StorePath| {
                drvs.get(p)
                    .cloned()
                    .ok_or_else(|| NotInstantiated(dir.display_path(p)))
            };
            self.hasher
                .fill_output_paths(&mut drv, &mut lookup)
                .map_err(|source| RecipeError::OutputPaths {
                    recipe: rpath.to_owned(),
                    source: Box::new(source),
                })?;
        }
        drv.validate(&dir).map_err(drv_err)?;
        let text = drv.print(&dir);
        let name = drv.drv_name().map_err(drv_err)?;
        let added = self
            .store
            .add_text(&name, text.as_bytes(), &drv.references())
            .map_err(|source| RecipeError::Store {
                recipe: rpath.to_owned(),
                source: Box::new(source),
            })?;
        let drv_path = added.info.meta.path;
        self.store
            .register_derivation_outputs(&drv_path, &drv.owned_output_paths())
            .map_err(|source| RecipeError::Store {
                recipe: rpath.to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!("instantiated {}", dir.display_path(&drv_path));
        self.drvs.insert(drv_path.clone(), drv.clone());
        Ok(Instantiated { drv_path, drv })
    }

    /// Adds a source like a Nix path literal: named after the file, recursive sha256.
    fn add_source(&self, path: &Path, rpath: &Path) -> Result<StorePath, RecipeError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let name = abs
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| StorePathName::new(n).ok())
            .ok_or_else(|| RecipeError::SourceName {
                recipe: rpath.to_owned(),
                path: path.to_owned(),
            })?;
        let added = self
            .store
            .add_tree(&abs, &name)
            .map_err(|source| RecipeError::Source {
                recipe: rpath.to_owned(),
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        Ok(added.info.meta.path)
    }
}

/// The checks that need nothing but the recipe.
fn check_recipe(recipe: &Recipe, rpath: &Path) -> Result<(), RecipeError> {
    let recipe_path = || rpath.to_owned();
    if recipe.name.ends_with(DRV_EXTENSION) {
        return Err(RecipeError::DrvName {
            recipe: recipe_path(),
        });
    }
    StorePathName::new(&format!("{}{DRV_EXTENSION}", recipe.name)).map_err(|source| {
        RecipeError::Name {
            recipe: recipe_path(),
            name: recipe.name.clone(),
            source,
        }
    })?;
    if let Some(system) = &recipe.system {
        if system.contains(['"', '\\']) || system.chars().any(char::is_control) {
            return Err(RecipeError::BadSystem {
                recipe: recipe_path(),
                field: "system",
            });
        }
    }
    if let Some(outs) = &recipe.outputs {
        if outs.is_empty() {
            return Err(RecipeError::Outputs {
                recipe: recipe_path(),
                reason: "the list is empty",
            });
        }
        let mut seen = BTreeSet::new();
        for o in outs {
            if !valid_output_name(o) || o == "drv" {
                return Err(RecipeError::OutputName {
                    recipe: recipe_path(),
                    output: o.clone(),
                });
            }
            if !seen.insert(o) {
                return Err(RecipeError::Outputs {
                    recipe: recipe_path(),
                    reason: "an output is listed twice",
                });
            }
        }
    }
    let outputs: Vec<&str> = match &recipe.outputs {
        Some(o) => o.iter().map(String::as_str).collect(),
        None => vec!["out"],
    };
    for key in recipe.env.keys() {
        if RESERVED_ENV.contains(&key.as_str())
            || outputs.contains(&key.as_str())
            || key.starts_with("__")
        {
            return Err(RecipeError::ReservedEnv {
                recipe: recipe_path(),
                key: key.clone(),
            });
        }
    }
    if recipe.output_hash.is_some() && outputs != ["out"] {
        return Err(RecipeError::FixedOutputs {
            recipe: recipe_path(),
        });
    }
    if recipe.output_hash.is_none()
        && (recipe.output_hash_algo.is_some() || recipe.output_hash_mode.is_some())
    {
        return Err(RecipeError::HashFieldsWithoutHash {
            recipe: recipe_path(),
        });
    }
    Ok(())
}

/// The fixed-output hash, parsed the way the `derivation` builtin parses `outputHash`
/// (any encoding; typed or with `outputHashAlgo`).
fn fixed_output_hash(
    recipe: &Recipe,
    rpath: &Path,
) -> Result<Option<FixedOutputHash>, RecipeError> {
    let Some(hash) = &recipe.output_hash else {
        return Ok(None);
    };
    let hash_err = |source| RecipeError::OutputHash {
        recipe: rpath.to_owned(),
        source,
    };
    let algo = match recipe.output_hash_algo.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<HashAlgo>().map_err(hash_err)?),
    };
    let hash = Hash::parse_any(hash, algo).map_err(hash_err)?;
    let mode = match recipe.output_hash_mode.as_deref() {
        None | Some("flat") => OutputHashMode::Flat,
        Some("recursive") => OutputHashMode::Recursive,
        Some(other) => {
            return Err(RecipeError::HashMode {
                recipe: rpath.to_owned(),
                mode: other.to_owned(),
            })
        }
    };
    Ok(Some(FixedOutputHash { mode, hash }))
}

/// Replaces the placeholders of `text` with what `resolve` gives for them.
fn expand(
    text: &str,
    rpath: &Path,
    field: &str,
    mut resolve: impl FnMut(Ref<'_>) -> Result<String, RecipeError>,
) -> Result<String, RecipeError> {
    let bad = |reason| RecipeError::Placeholder {
        recipe: rpath.to_owned(),
        field: field.to_owned(),
        text: text.to_owned(),
        reason,
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| bad("unclosed '${'"))?;
            let r = parse_ref(&body[..end]).ok_or_else(|| {
                bad("unknown placeholder (use ${inputs.NAME[.OUTPUT]} or ${sources.NAME}; $${ for a literal ${)")
            })?;
            out.push_str(&resolve(r)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_ref(body: &str) -> Option<Ref<'_>> {
    if let Some(rest) = body.strip_prefix("inputs.") {
        let (name, output) = rest.split_once('.').unwrap_or((rest, "out"));
        (is_key(name) && valid_output_name(output)).then_some(Ref::Input { name, output })
    } else {
        let name = body.strip_prefix("sources.")?;
        is_key(name).then_some(Ref::Source(name))
    }
}

#[cfg(test)]
mod tests;
