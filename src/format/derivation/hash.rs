//! `hashDerivationModulo` as Nix 2.8 computes it, the output paths it gives, and walks of
//! the graph of input derivations.
//!
//! ```text
//! hashModulo(drv, mask):
//!   fixed-output: { out: sha256("fixed:out:" [r:]algo ":" hex ":" out-path) }
//!   otherwise:    H = sha256(unparse(drv, mask, inputs')) for every output, where
//!                 inputs' = { hex(hashModulo(input, false)[o]) → {o, …} }
//! input-addressed output o: makeStorePath("output:" o, hashModulo(drv, true)[o],
//!                                         name if o = "out" else name "-" o)
//! ```
//!
//! Input derivations are read through a lookup function given by the caller (from a store,
//! a map, files). [`ModuloHasher`] reads each at most once and remembers its hash; it walks
//! the graph with an explicit stack (no recursion, so deep chains cannot overflow) and
//! reports cycles, which a lookup that is not a real store could produce.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use thiserror::Error;

use super::{Derivation, DerivationError, DerivationOutput};
use crate::format::hash::{Hash, HashAlgo};
use crate::format::store_path::{StoreDir, StorePath, StorePathError};

/// The hash of each output of a derivation.
pub type DrvHashes = BTreeMap<String, Hash>;

/// Why hashing a derivation or walking its inputs failed. `E` is the lookup's error.
#[derive(Debug, Error)]
pub enum DrvGraphError<E> {
    #[error("cannot read input derivation '{path}'")]
    Lookup {
        path: String,
        #[source]
        source: E,
    },
    #[error("input derivation '{0}' depends on itself")]
    Cycle(String),
    #[error("derivation '{drv}' uses output '{output}' of '{input}', which has no such output")]
    NoSuchOutput {
        drv: String,
        input: String,
        output: String,
    },
    #[error("invalid derivation '{drv}'")]
    Invalid {
        drv: String,
        #[source]
        source: DerivationError,
    },
    #[error("output '{output}' of '{drv}' has no valid path")]
    OutputPath {
        drv: String,
        output: String,
        #[source]
        source: StorePathError,
    },
}

/// What `hashDerivationModulo` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuloPreimage {
    /// A fixed-output derivation: `fixed:out:[r:]algo:hex:path`.
    Fixed(String),
    /// Otherwise: the derivation text with inputs replaced (and outputs masked).
    Text(String),
}

impl ModuloPreimage {
    pub fn as_str(&self) -> &str {
        match self {
            ModuloPreimage::Fixed(s) | ModuloPreimage::Text(s) => s,
        }
    }
}

/// Computes `hashDerivationModulo`, remembering the (unmasked) hash of every input
/// derivation it reads.
#[derive(Debug, Clone)]
pub struct ModuloHasher {
    dir: StoreDir,
    memo: HashMap<StorePath, DrvHashes>,
}

impl ModuloHasher {
    pub fn new(dir: &StoreDir) -> Self {
        ModuloHasher {
            dir: dir.clone(),
            memo: HashMap::new(),
        }
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.dir
    }

    /// The remembered hashes of an input derivation already read.
    pub fn memoised(&self, drv_path: &StorePath) -> Option<&DrvHashes> {
        self.memo.get(drv_path)
    }

    /// `hashDerivationModulo(drv, mask)`: one hash per output.
    pub fn hash<E>(
        &mut self,
        drv: &Derivation,
        mask: bool,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<DrvHashes, DrvGraphError<E>> {
        let pre = self.preimage(drv, mask, lookup)?;
        let h = Hash::of(HashAlgo::Sha256, pre.as_str().as_bytes());
        Ok(drv.outputs.keys().map(|o| (o.clone(), h)).collect())
    }

    /// The string `hashDerivationModulo(drv, mask)` hashes.
    pub fn preimage<E>(
        &mut self,
        drv: &Derivation,
        mask: bool,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<ModuloPreimage, DrvGraphError<E>> {
        if let Some((path, hash)) = drv.fixed_output() {
            return Ok(ModuloPreimage::Fixed(format!(
                "fixed:out:{}:{}:{}",
                hash.method_algo(),
                hash.hash.to_hex(),
                self.dir.display_path(path)
            )));
        }
        for input in drv.input_drvs.keys() {
            self.ensure(input, lookup)?;
        }
        let inputs = self.replaced_inputs(drv)?;
        Ok(ModuloPreimage::Text(drv.unparse(
            &self.dir,
            mask,
            Some(&inputs),
        )))
    }

    /// The input derivations as hex hash → output names (all inputs already memoised).
    fn replaced_inputs<E>(
        &self,
        drv: &Derivation,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, DrvGraphError<E>> {
        let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (input, outs) in &drv.input_drvs {
            let Some(hashes) = self.memo.get(input) else {
                return Err(DrvGraphError::Cycle(self.dir.display_path(input)));
            };
            for o in outs {
                let h = hashes.get(o).ok_or_else(|| DrvGraphError::NoSuchOutput {
                    drv: drv.name.clone(),
                    input: self.dir.display_path(input),
                    output: o.clone(),
                })?;
                inputs.entry(h.to_hex()).or_default().insert(o.clone());
            }
        }
        Ok(inputs)
    }

    /// Memoises the unmasked hash of `root` and of everything it depends on.
    fn ensure<E>(
        &mut self,
        root: &StorePath,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), DrvGraphError<E>> {
        if self.memo.contains_key(root) {
            return Ok(());
        }
        let mut on_stack: HashSet<StorePath> = HashSet::new();
        let mut stack: Vec<(StorePath, Derivation)> = Vec::new();
        let first = read(&self.dir, root, lookup)?;
        on_stack.insert(root.clone());
        stack.push((root.clone(), first));
        while let Some((path, drv)) = stack.last() {
            let pending = if drv.is_fixed_output() {
                None
            } else {
                drv.input_drvs
                    .keys()
                    .find(|p| !self.memo.contains_key(*p))
                    .cloned()
            };
            match pending {
                Some(next) => {
                    if on_stack.contains(&next) {
                        return Err(DrvGraphError::Cycle(self.dir.display_path(&next)));
                    }
                    let d = read(&self.dir, &next, lookup)?;
                    on_stack.insert(next.clone());
                    stack.push((next, d));
                }
                None => {
                    let hashes = self.hash_memoised(drv)?;
                    let path = path.clone();
                    on_stack.remove(&path);
                    self.memo.insert(path, hashes);
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// The unmasked hash of a derivation whose inputs are all memoised.
    fn hash_memoised<E>(&self, drv: &Derivation) -> Result<DrvHashes, DrvGraphError<E>> {
        let pre = if let Some((path, hash)) = drv.fixed_output() {
            format!(
                "fixed:out:{}:{}:{}",
                hash.method_algo(),
                hash.hash.to_hex(),
                self.dir.display_path(path)
            )
        } else {
            drv.unparse(&self.dir, false, Some(&self.replaced_inputs(drv)?))
        };
        let h = Hash::of(HashAlgo::Sha256, pre.as_bytes());
        Ok(drv.outputs.keys().map(|o| (o.clone(), h)).collect())
    }

    /// The paths the outputs of `drv` must have: for a fixed output the path its hash
    /// gives, for input-addressed and deferred outputs the path from the masked modulo
    /// hash.
    pub fn output_paths<E>(
        &mut self,
        drv: &Derivation,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<BTreeMap<String, StorePath>, DrvGraphError<E>> {
        let invalid = |source| DrvGraphError::Invalid {
            drv: drv.name.clone(),
            source,
        };
        drv.validate(&self.dir).map_err(invalid)?;
        if let Some((path, _)) = drv.fixed_output() {
            return Ok(BTreeMap::from([("out".to_owned(), path.clone())]));
        }
        let hashes = self.hash(drv, true, lookup)?;
        let mut paths = BTreeMap::new();
        for (o, h) in hashes {
            let p = self
                .dir
                .make_output_path(&o, &h, &drv.name)
                .map_err(|source| DrvGraphError::OutputPath {
                    drv: drv.name.clone(),
                    output: o.clone(),
                    source,
                })?;
            paths.insert(o, p);
        }
        Ok(paths)
    }

    /// What the `derivation` builtin does once the derivation is assembled with deferred
    /// outputs: computes the input-addressed output paths and records them in the outputs
    /// and in the env entries named after them.
    pub fn fill_output_paths<E>(
        &mut self,
        drv: &mut Derivation,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<(), DrvGraphError<E>> {
        let paths = self.output_paths(drv, lookup)?;
        for (o, p) in paths {
            drv.env.insert(o.clone(), self.dir.display_path(&p));
            if let Some(out @ DerivationOutput::Deferred) = drv.outputs.get_mut(&o) {
                *out = DerivationOutput::InputAddressed(p);
            }
        }
        Ok(())
    }

    /// Nix's `checkDerivationOutputs`: every output has the path the hashes give, and the
    /// env entry named after it holds that path. Returns the first mismatch.
    pub fn check_output_paths<E>(
        &mut self,
        drv: &Derivation,
        lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
    ) -> Result<Option<OutputMismatch>, DrvGraphError<E>> {
        let paths = self.output_paths(drv, lookup)?;
        for (output, expected) in paths {
            let recorded = drv.output_path(&output).cloned();
            let env_ok = drv.env.get(&output) == Some(&self.dir.display_path(&expected));
            if recorded.as_ref() != Some(&expected) || !env_ok {
                return Ok(Some(OutputMismatch {
                    output,
                    expected,
                    recorded,
                }));
            }
        }
        Ok(None)
    }
}

/// An output whose recorded path (or env entry) is not the one its hashes give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputMismatch {
    pub output: String,
    pub expected: StorePath,
    /// The path in the output tuple (none if deferred).
    pub recorded: Option<StorePath>,
}

fn read<E>(
    dir: &StoreDir,
    path: &StorePath,
    lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
) -> Result<Derivation, DrvGraphError<E>> {
    lookup(path).map_err(|source| DrvGraphError::Lookup {
        path: dir.display_path(path),
        source,
    })
}

/// Every derivation reachable from `roots` through input derivations, roots included,
/// each read once.
pub fn derivation_closure<'a, E>(
    dir: &StoreDir,
    roots: impl IntoIterator<Item = &'a StorePath>,
    lookup: &mut impl FnMut(&StorePath) -> Result<Derivation, E>,
) -> Result<BTreeMap<StorePath, Derivation>, DrvGraphError<E>> {
    let mut seen: BTreeMap<StorePath, Derivation> = BTreeMap::new();
    let mut todo: Vec<StorePath> = roots.into_iter().cloned().collect();
    while let Some(p) = todo.pop() {
        if seen.contains_key(&p) {
            continue;
        }
        let d = read(dir, &p, lookup)?;
        todo.extend(
            d.input_drvs
                .keys()
                .filter(|q| !seen.contains_key(*q))
                .cloned(),
        );
        seen.insert(p, d);
    }
    Ok(seen)
}

/// The derivations of a closure (as [`derivation_closure`] returns) in build order: every
/// derivation after its input derivations. Inputs outside the map are ignored.
pub fn topological_order<E>(
    dir: &StoreDir,
    drvs: &BTreeMap<StorePath, Derivation>,
) -> Result<Vec<StorePath>, DrvGraphError<E>> {
    let mut order = Vec::with_capacity(drvs.len());
    let mut done: HashSet<&StorePath> = HashSet::new();
    let mut on_stack: HashSet<&StorePath> = HashSet::new();
    for root in drvs.keys() {
        if done.contains(root) {
            continue;
        }
        let mut stack: Vec<&StorePath> = vec![root];
        on_stack.insert(root);
        while let Some(&top) = stack.last() {
            let next = drvs.get(top).and_then(|d| {
                d.input_drvs
                    .keys()
                    .filter_map(|q| drvs.get_key_value(q).map(|(k, _)| k))
                    .find(|q| !done.contains(q))
            });
            match next {
                Some(q) if on_stack.contains(q) => {
                    return Err(DrvGraphError::Cycle(dir.display_path(q)));
                }
                Some(q) => {
                    on_stack.insert(q);
                    stack.push(q);
                }
                None => {
                    stack.pop();
                    on_stack.remove(top);
                    done.insert(top);
                    order.push(top.clone());
                }
            }
        }
    }
    Ok(order)
}
