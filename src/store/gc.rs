//! Garbage collection: which valid paths are alive, and deleting the others (all of them,
//! up to a number of bytes, or only the ones asked for).
//!
//! Alive = the closure of the roots (see [`roots`](super::roots): `gcroots/` links and the
//! temp roots of live processes) under references, plus, with keep-derivations, the valid
//! deriver of every live path and, with keep-outputs, the valid recorded outputs of every
//! live derivation (transitively, as Nix). Every referrer of a dead path is dead.
//!
//! A collection round: take the GC lock exclusively and the trash lock; read the roots; in
//! one durable SQLite transaction read the graph and delete the rows of the chosen dead
//! paths; rename their directories (and unregistered leftovers nobody is installing) into
//! the trash; release the GC lock; empty the trash. A crash before the commit changes
//! nothing; after it, what remains is unregistered entries or trash, both removed by the
//! next collection. With a byte budget, dead paths go referrers first (reverse topological
//! order), so no remaining valid path ever refers to a deleted one.
//! See store-format.md, "Garbage collection".

use std::collections::HashSet;
use std::io;

use thiserror::Error;

use super::db::graph::{NodeIdx, PathGraph};
use super::roots::{find_link_roots, read_temp_roots, GcLock, Root, RootsError};
use super::trash::{unknown_entries, Trash};
use super::{DbError, LocalStore};
use crate::format::store_path::StorePath;

/// What can go wrong collecting garbage.
#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error("{}", refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Refused { refusals: Vec<Refusal> },
}

/// Why one path asked for by [`LocalStore::delete_paths`] cannot be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot delete '{}': {}", self.path, self.reason)
    }
}

fn io_err(context: &str) -> impl FnOnce(io::Error) -> GcError + '_ {
    move |source| GcError::Io {
        context: context.to_owned(),
        source,
    }
}

/// Settings of a collection (nix.conf's keep-outputs and keep-derivations, and
/// `--max-freed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Keep the valid outputs of live derivations (Nix default: false).
    pub keep_outputs: bool,
    /// Keep the valid deriver of live paths (Nix default: true).
    pub keep_derivations: bool,
    /// Stop once at least this many bytes have been freed.
    pub max_freed: Option<u64>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_outputs: false,
            keep_derivations: true,
            max_freed: None,
        }
    }
}

/// What a dry run finds.
#[derive(Debug, Clone, Default)]
pub struct GcAnalysis {
    pub roots: Vec<Root>,
    /// Sorted.
    pub live: Vec<StorePath>,
    /// In deletion order (referrers first).
    pub dead: Vec<StorePath>,
    /// The sum of the dead paths' NAR sizes.
    pub dead_nar_size: u64,
}

/// What a collection or deletion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Valid paths deleted, in deletion order.
    pub deleted: Vec<StorePath>,
    /// Bytes of disk blocks freed (trash left by earlier runs included).
    pub bytes_freed: u64,
    /// Unregistered entries of the store dir removed (leftovers of interrupted runs).
    pub leftovers: usize,
}

/// How a live path was reached.
#[derive(Debug, Clone, Copy)]
enum Why {
    Root(usize),
    Referrer(NodeIdx),
    DeriverOf(NodeIdx),
    OutputOf(NodeIdx),
}

/// For every node, how it was found alive (`None`: dead).
fn liveness(graph: &PathGraph, roots: &[Root], opts: &GcOptions) -> Vec<Option<Why>> {
    let mut why: Vec<Option<Why>> = vec![None; graph.nodes.len()];
    let mut stack = Vec::new();
    for (ri, root) in roots.iter().enumerate() {
        if let Some(i) = graph.index(&root.path) {
            if why[i as usize].is_none() {
                why[i as usize] = Some(Why::Root(ri));
                stack.push(i);
            }
        }
    }
    while let Some(n) = stack.pop() {
        let node = graph.node(n);
        let mut visit = |i: NodeIdx, w: Why| {
            if why[i as usize].is_none() {
                why[i as usize] = Some(w);
                stack.push(i);
            }
        };
        for &r in &node.references {
            visit(r, Why::Referrer(n));
        }
        if opts.keep_derivations {
            if let Some(d) = node.deriver {
                visit(d, Why::DeriverOf(n));
            }
        }
        if opts.keep_outputs {
            for &o in &node.outputs {
                visit(o, Why::OutputOf(n));
            }
        }
    }
    why
}

/// The dead nodes, every referrer before its references.
fn dead_order(graph: &PathGraph, why: &[Option<Why>]) -> Vec<NodeIdx> {
    let dead = |i: NodeIdx| why[i as usize].is_none();
    let referrers = graph.referrers();
    let mut pending: Vec<u32> = referrers
        .iter()
        .map(|rs| rs.iter().filter(|&&r| dead(r)).count() as u32)
        .collect();
    let mut ready: Vec<NodeIdx> = (0..graph.nodes.len() as NodeIdx)
        .filter(|&i| dead(i) && pending[i as usize] == 0)
        .rev()
        .collect();
    let mut order = Vec::new();
    while let Some(i) = ready.pop() {
        order.push(i);
        for &r in graph.node(i).references.iter().filter(|&&r| dead(r)) {
            let p = &mut pending[r as usize];
            *p -= 1;
            if *p == 0 {
                ready.push(r);
            }
        }
    }
    order
}

fn explain(store: &LocalStore, graph: &PathGraph, roots: &[Root], why: Why) -> String {
    let p = |i: NodeIdx| store.print_path(&graph.node(i).path);
    match why {
        Why::Root(r) => format!("it is a root ({})", roots[r].source),
        Why::Referrer(n) => format!("it is referenced by live path '{}'", p(n)),
        Why::DeriverOf(n) => format!(
            "it is the deriver of live path '{}' (keep-derivations)",
            p(n)
        ),
        Why::OutputOf(n) => format!(
            "it is an output of live derivation '{}' (keep-outputs)",
            p(n)
        ),
    }
}

impl LocalStore {
    /// All roots: `gcroots/` links and temp roots of live processes (nothing is removed).
    pub fn gc_roots(&self) -> Result<Vec<Root>, GcError> {
        let _lock = GcLock::shared(&self.layout)?;
        let mut roots = find_link_roots(&self.layout, false)?;
        roots.extend(read_temp_roots(&self.layout, false)?);
        Ok(roots)
    }

    /// Computes the live and dead paths without deleting anything (holding the GC lock
    /// shared, so it does not stop processes adding temp roots).
    pub fn gc_analyse(&self, opts: &GcOptions) -> Result<GcAnalysis, GcError> {
        let _lock = GcLock::shared(&self.layout)?;
        let mut roots = find_link_roots(&self.layout, false)?;
        roots.extend(read_temp_roots(&self.layout, false)?);
        let graph = self.db().load_graph()?;
        let why = liveness(&graph, &roots, opts);
        let order = dead_order(&graph, &why);
        let mut live: Vec<StorePath> = (0..graph.nodes.len())
            .filter(|&i| why[i].is_some())
            .map(|i| graph.nodes[i].path.clone())
            .collect();
        live.sort();
        Ok(GcAnalysis {
            dead_nar_size: order.iter().map(|&i| graph.node(i).nar_size).sum(),
            dead: order.iter().map(|&i| graph.node(i).path.clone()).collect(),
            live,
            roots,
        })
    }

    /// Deletes dead paths: all of them, or, with `max_freed`, batches (referrers first)
    /// until that many bytes are freed. Trash and unregistered leftovers of interrupted
    /// runs are removed too.
    pub fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport, GcError> {
        let mut report = GcReport::default();
        loop {
            let budget = opts.max_freed.map(|m| m.saturating_sub(report.bytes_freed));
            if budget == Some(0) {
                break;
            }
            let round = self.gc_round(|store, graph, roots| {
                let why = liveness(graph, roots, opts);
                let mut order = dead_order(graph, &why);
                if let Some(budget) = budget {
                    let mut sum = 0u64;
                    let keep = order
                        .iter()
                        .position(|&i| {
                            sum = sum.saturating_add(graph.node(i).nar_size);
                            sum >= budget
                        })
                        .map_or(order.len(), |p| p + 1);
                    order.truncate(keep);
                }
                let _ = store;
                Ok(order)
            })?;
            let done = round.deleted.is_empty();
            report.deleted.extend(round.deleted);
            report.bytes_freed += round.bytes_freed;
            report.leftovers += round.leftovers;
            if opts.max_freed.is_none() || done {
                break;
            }
        }
        Ok(report)
    }

    /// Deletes exactly `paths`, refusing (and deleting nothing) if any of them is alive
    /// or is referred to by a valid path not among them.
    pub fn delete_paths(&self, paths: &[StorePath], opts: &GcOptions) -> Result<GcReport, GcError> {
        self.gc_round(|store, graph, roots| {
            let why = liveness(graph, roots, opts);
            let mut chosen = Vec::new();
            for p in paths {
                let i = graph
                    .index(p)
                    .ok_or_else(|| GcError::NotValid(store.print_path(p)))?;
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
            let set: HashSet<NodeIdx> = chosen.iter().copied().collect();
            let referrers = graph.referrers();
            let mut refusals = Vec::new();
            for &i in &chosen {
                let path = store.print_path(&graph.node(i).path);
                if let Some(w) = why[i as usize] {
                    let reason = explain(store, graph, roots, w);
                    refusals.push(Refusal { path, reason });
                } else if let Some(&r) = referrers[i as usize].iter().find(|r| !set.contains(r)) {
                    let reason = format!(
                        "it is referenced by '{}', which is not being deleted",
                        store.print_path(&graph.node(r).path)
                    );
                    refusals.push(Refusal { path, reason });
                }
            }
            if !refusals.is_empty() {
                return Err(GcError::Refused { refusals });
            }
            // Referrers first, for the order of the report.
            let order = dead_order(graph, &why);
            Ok(order.into_iter().filter(|i| set.contains(i)).collect())
        })
    }

    /// One round: lock, read roots, delete the rows of what `choose` picks and rename
    /// those paths and the leftovers into the trash, unlock, empty the trash.
    fn gc_round(
        &self,
        choose: impl FnOnce(&LocalStore, &PathGraph, &[Root]) -> Result<Vec<NodeIdx>, GcError>,
    ) -> Result<GcReport, GcError> {
        let layout = &self.layout;
        let start = std::time::Instant::now();
        let gc_lock = GcLock::exclusive(layout)?;
        let trash = Trash::lock(layout).map_err(io_err("cannot lock the trash"))?;
        let mut roots = find_link_roots(layout, true)?;
        roots.extend(read_temp_roots(layout, true)?);
        let (graph, chosen, ()) = self
            .db()
            .collect(|g| Ok::<_, GcError>((choose(self, g, &roots)?, ())))?;
        tracing::debug!(
            "{:?}: rows of {} paths deleted",
            start.elapsed(),
            chosen.len()
        );
        let temp: HashSet<&StorePath> = roots.iter().map(|r| &r.path).collect();
        let unknown = unknown_entries(layout, |p| graph.index(p).is_some() || temp.contains(p))
            .map_err(io_err("cannot list the store dir"))?;
        let (mut locks, mut leftover_paths) = (Vec::new(), Vec::new());
        for p in unknown {
            // An install holds the path's lock from before its rename until it registers.
            let lock = self
                .path_locks
                .try_lock(&p)
                .map_err(io_err("cannot lock a leftover"))?;
            if let Some(l) = lock {
                tracing::info!("removing unregistered '{}'", self.print_path(&p));
                locks.push(l);
                leftover_paths.push(p);
            }
        }
        let mut names: Vec<&str> = chosen
            .iter()
            .map(|&i| graph.node(i).path.as_str())
            .collect();
        names.extend(leftover_paths.iter().map(|p| p.as_str()));
        for &i in &chosen {
            tracing::info!("deleting '{}'", self.print_path(&graph.node(i).path));
        }
        let leftovers = locks.len();
        // Removal waits on the device more than on the CPU (on ext4 mounted with `discard`
        // every freed block is discarded synchronously), so more threads than cores help:
        // 32 measured best on the gc benchmark (bench/gc.py).
        let threads = 32;
        let bytes_freed = trash
            .move_in_and_empty(layout, &names, threads, || {
                drop(locks);
                drop(gc_lock);
                tracing::debug!("{:?}: moved to the trash", start.elapsed());
                Ok(())
            })
            .map_err(io_err("cannot move dead paths to the trash or remove them"))?;
        tracing::debug!("{:?}: trash emptied", start.elapsed());
        Ok(GcReport {
            deleted: chosen.iter().map(|&i| graph.node(i).path.clone()).collect(),
            bytes_freed,
            leftovers,
        })
    }
}
