//! Realising derived paths: for every wanted derivation output that is not valid,
//! substitute it when a trusted cache has its whole closure, otherwise build it once its
//! inputs are valid.
//!
//! 1. Paths given as such (and `.drv` files that are not valid yet) are substituted first:
//!    there is no other way to get them.
//! 2. Planning goes down the derivation graph level by level. The wanted outputs that are
//!    not valid are looked up in the caches ([`Substituter::plan_partial`]: only paths
//!    whose closure is complete and trusted count); a derivation with an output no cache
//!    can provide is built, which makes the outputs it uses from its input derivations
//!    wanted in turn. With `check`, the requested derivations are rebuilt regardless.
//! 3. Execution: one fetch of everything to substitute runs alongside the builds. A build
//!    starts as soon as all the paths it uses are valid (substituted or built), at most
//!    `max_jobs` at a time, each on the blocking pool ([`crate::build::local`]). A failed build
//!    stops new builds from starting (running ones finish), unless `keep_going`, where only
//!    the builds that depend on it are given up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use thiserror::Error;
use tokio::task::JoinSet;

use crate::build::local::{build_derivation, BuildConfig, BuildError, Built};
use crate::build::sandbox::ScratchPool;
use crate::error_chain::Chain;
use crate::format::derivation::derived_path::{DerivedPath, OutputsSpec};
use crate::format::derivation::hash::{derivation_closure, DrvGraphError};
use crate::format::derivation::Derivation;
use crate::format::store_path::StorePath;
use crate::schedule::ReadyQueue;
use crate::store::lock::TempDir;
use crate::store::{LocalStore, StoreError};
use crate::substitute::{Fetched, Plan, Progress, SubstituteError, Substituter};

/// How to realise.
#[derive(Debug, Clone)]
pub struct RealiseOptions {
    /// Builds at the same time.
    pub max_jobs: usize,
    /// Go on with independent builds after a failure.
    pub keep_going: bool,
    pub build: BuildConfig,
}

#[derive(Debug, Error)]
pub enum RealiseError {
    #[error(transparent)]
    Substitute(#[from] SubstituteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{} not valid and no substituters are configured", paths.join(", "))]
    NoSubstituters { paths: Vec<String> },
    #[error("cannot read the derivation graph")]
    Derivations(#[source] Box<DrvGraphError<StoreError>>),
    #[error("cannot build '{path}': dependency '{dependency}' failed")]
    DependencyFailed { path: String, dependency: String },
    #[error("cannot build '{path}': its inputs are not valid: {}", missing.join(", "))]
    InputsNotValid { path: String, missing: Vec<String> },
    #[error("derivation '{drv}' has no output named {outputs}")]
    NoSuchOutput { drv: String, outputs: String },
    /// Several failures (a fetch and builds, or builds with `keep_going`); the message lists
    /// each one with its causes, as they are independent.
    #[error("{} derivation(s) could not be built:\n{}", failures.len(), list_failures(failures))]
    BuildsFailed { failures: Vec<RealiseError> },
    #[error("the input derivations of these derivations form a cycle: {}", drvs.join(", "))]
    Cycle { drvs: Vec<String> },
    #[error("an internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// One failure per line, each with its causes.
fn list_failures(failures: &[RealiseError]) -> String {
    let lines: Vec<String> = failures.iter().map(|e| format!("  {}", Chain(e))).collect();
    lines.join("\n")
}

impl RealiseError {
    /// Nix's exit status for a failed build: 100, plus 1 if a build timed out (or was
    /// silent too long), 2 for a fixed-output hash mismatch, 4 for a non-deterministic
    /// build found by `--check`; `None` for errors that are not build failures.
    pub fn exit_status(&self) -> Option<u8> {
        use crate::build::sandbox::BuildStatus;
        match self {
            RealiseError::Build(e) => Some(match e {
                BuildError::Failed {
                    status: BuildStatus::TimedOut | BuildStatus::SilentTooLong,
                    ..
                } => 101,
                BuildError::FixedOutputMismatch { .. } => 102,
                BuildError::NotDeterministic { .. } => 104,
                _ => 100,
            }),
            RealiseError::BuildsFailed { failures } => Some(
                failures
                    .iter()
                    .filter_map(RealiseError::exit_status)
                    .reduce(|a, b| a | b)
                    .unwrap_or(100),
            ),
            // A build given up because a dependency failed or its inputs never came.
            RealiseError::DependencyFailed { .. } | RealiseError::InputsNotValid { .. } => {
                Some(100)
            }
            _ => None,
        }
    }
}

/// What a realise did.
#[derive(Debug, Default)]
pub struct Realised {
    pub substituted: Vec<Fetched>,
    pub built: Vec<Built>,
    /// For each requested derivation: output name → path.
    pub outputs: Vec<(StorePath, BTreeMap<String, StorePath>)>,
}

/// Realises `targets`; see the module doc. `sub` is `None` when no substituters are
/// configured (then everything not valid is built).
pub async fn realise(
    store: &Arc<LocalStore>,
    sub: Option<Arc<Substituter>>,
    targets: &[DerivedPath],
    opts: &RealiseOptions,
    progress: Arc<Progress>,
) -> Result<Realised, RealiseError> {
    // 1. Paths that can only be substituted.
    let mut realised = Realised {
        substituted: substitute_paths(store, sub.as_deref(), targets, &progress).await?,
        ..Realised::default()
    };
    // 2. Plan.
    let wanted = wanted_outputs(targets);
    if wanted.is_empty() {
        return Ok(realised);
    }
    let graph = load_graph(store, wanted.keys())?;
    let needed = needed_outputs(store, &graph, &wanted, &mut realised.outputs)?;
    let checking: BTreeSet<StorePath> = if opts.build.check {
        wanted.keys().cloned().collect()
    } else {
        BTreeSet::new()
    };
    let decision = decide(store, sub.as_deref(), &graph, needed, &checking).await?;
    // 3. Execute.
    execute(store, sub, graph, decision, opts, progress, &mut realised).await?;
    Ok(realised)
}

/// Step 1: substitutes the targets that are not valid (paths, and `.drv` files not valid
/// yet); there is no other way to get them.
async fn substitute_paths(
    store: &Arc<LocalStore>,
    sub: Option<&Substituter>,
    targets: &[DerivedPath],
    progress: &Arc<Progress>,
) -> Result<Vec<Fetched>, RealiseError> {
    let mut first: Vec<StorePath> = Vec::new();
    for t in targets {
        if !store.is_valid(t.path())? {
            first.push(t.path().clone());
        }
    }
    if first.is_empty() {
        return Ok(Vec::new());
    }
    let Some(sub) = sub else {
        return Err(RealiseError::NoSubstituters {
            paths: first.iter().map(|p| store.print_path(p)).collect(),
        });
    };
    let plan = sub.plan(store, &first).await?;
    Ok(sub.fetch(store, plan, progress.clone()).await?)
}

/// The requested derivations, each with the union of the outputs asked for it.
fn wanted_outputs(targets: &[DerivedPath]) -> BTreeMap<StorePath, OutputsSpec> {
    let mut wanted: BTreeMap<StorePath, OutputsSpec> = BTreeMap::new();
    for t in targets {
        if let DerivedPath::Built { drv, outputs } = t {
            let merged = match (wanted.remove(drv), outputs) {
                (Some(OutputsSpec::All), _) | (_, OutputsSpec::All) => OutputsSpec::All,
                (Some(OutputsSpec::Names(mut a)), OutputsSpec::Names(b)) => {
                    a.extend(b.iter().cloned());
                    OutputsSpec::Names(a)
                }
                (None, o) => o.clone(),
            };
            wanted.insert(drv.clone(), merged);
        }
    }
    wanted
}

/// The output names needed of each requested derivation (an unknown name is an error),
/// recording each one's output paths in `outputs` for the report.
fn needed_outputs(
    store: &LocalStore,
    graph: &BTreeMap<StorePath, Derivation>,
    wanted: &BTreeMap<StorePath, OutputsSpec>,
    outputs: &mut Vec<(StorePath, BTreeMap<String, StorePath>)>,
) -> Result<BTreeMap<StorePath, BTreeSet<String>>, RealiseError> {
    let mut needed: BTreeMap<StorePath, BTreeSet<String>> = BTreeMap::new();
    for (drv_path, spec) in wanted {
        let drv = &graph[drv_path];
        let (known, unknown) = spec.select(drv);
        if !unknown.is_empty() {
            return Err(RealiseError::NoSuchOutput {
                drv: store.print_path(drv_path),
                outputs: unknown.join(", "),
            });
        }
        needed.insert(
            drv_path.clone(),
            known.iter().map(|o| (*o).to_owned()).collect(),
        );
        outputs.push((
            drv_path.clone(),
            known
                .iter()
                .filter_map(|o| drv.output_path(o).map(|p| ((*o).to_owned(), p.clone())))
                .collect(),
        ));
    }
    Ok(needed)
}

/// Step 3: runs the fetch of `plan` alongside the builds of `to_build`, each build starting
/// once its inputs are valid, at most `max_jobs` at a time; see the module doc.
async fn execute(
    store: &Arc<LocalStore>,
    sub: Option<Arc<Substituter>>,
    graph: BTreeMap<StorePath, Derivation>,
    Decision { to_build, plan }: Decision,
    opts: &RealiseOptions,
    progress: Arc<Progress>,
    realised: &mut Realised,
) -> Result<(), RealiseError> {
    let mut fetch = match (sub, plan.is_empty()) {
        (Some(sub), false) => {
            let (store, progress) = (store.clone(), progress.clone());
            Some(tokio::spawn(async move {
                sub.fetch(&store, plan, progress).await
            }))
        }
        _ => None,
    };
    let graph = Arc::new(graph);
    // Sandbox scratch dirs, reused from build to build, in a temp dir of the store's own
    // file system (removed when this returns, or by the next open after a crash).
    let scratch_dir = TempDir::new(store.layout())
        .map_err(|e| StoreError::io("cannot create a temp dir in the store", e))?;
    let mut build_config = opts.build.clone();
    build_config.scratch_pool = Some(Arc::new(ScratchPool::new(scratch_dir.path().to_owned())));
    let config = Arc::new(build_config);
    let mut sched = Schedule::new(&graph, to_build).map_err(|drvs| RealiseError::Cycle {
        drvs: drvs.iter().map(|d| store.print_path(d)).collect(),
    })?;
    let mut running: JoinSet<(usize, Result<Built, BuildError>)> = JoinSet::new();
    let mut state = Execution::new(opts.keep_going);
    let max_jobs = opts.max_jobs.max(1);
    loop {
        while !state.stopping && running.len() < max_jobs {
            let Some((build, inputs)) = sched.next_startable(store)? else {
                break;
            };
            let drv = sched.builds[build].clone();
            let (store, graph, config) = (store.clone(), graph.clone(), config.clone());
            running.spawn_blocking(move || {
                let result = build_derivation(&store, &drv, &graph[&drv], &inputs, &config);
                (build, result)
            });
        }
        if running.is_empty() && fetch.is_none() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let (build, result) = joined.map_err(RealiseError::Task)?;
                match result {
                    Ok(built) => {
                        sched.built(build, built.outputs.values().map(|i| i.path.clone()));
                        realised.built.push(built);
                    }
                    Err(e) => state.on_build_failed(store, &mut sched, build, e),
                }
            }
            joined = async { fetch.as_mut().expect("checked").await }, if fetch.is_some() => {
                fetch = None;
                match joined.map_err(RealiseError::Task)? {
                    Ok(fetched) => realised.substituted.extend(fetched),
                    Err(e) => state.on_fetch_failed(e),
                }
            }
            _ = progress.changed.notified(), if fetch.is_some() => {}
        }
    }
    state.finish(store, &graph, &sched)
}

/// The failures of [`execute`] so far, and whether new builds may start.
struct Execution {
    keep_going: bool,
    /// No new build starts (a failure without `keep_going`).
    stopping: bool,
    fetch_failure: Option<RealiseError>,
    /// Failed builds and the builds given up because of them.
    failures: BTreeMap<StorePath, RealiseError>,
}

impl Execution {
    fn new(keep_going: bool) -> Self {
        Execution {
            keep_going,
            stopping: false,
            fetch_failure: None,
            failures: BTreeMap::new(),
        }
    }

    /// A build failed: it and every build that depends on it are given up.
    fn on_build_failed(
        &mut self,
        store: &LocalStore,
        sched: &mut Schedule<'_>,
        build: usize,
        e: BuildError,
    ) {
        let drv = sched.builds[build].clone();
        for dependent in sched.failed(build) {
            let failure = RealiseError::DependencyFailed {
                path: store.print_path(&dependent),
                dependency: store.print_path(&drv),
            };
            self.failures.insert(dependent, failure);
        }
        self.failures.insert(drv, e.into());
        self.stopping |= !self.keep_going;
    }

    fn on_fetch_failed(&mut self, e: SubstituteError) {
        self.fetch_failure = Some(e.into());
        self.stopping |= !self.keep_going;
    }

    /// The outcome once nothing runs. If nothing failed but some build never started (its
    /// inputs never became valid), the first such build is reported. One failure is
    /// returned as it is, several together.
    fn finish(
        mut self,
        store: &LocalStore,
        graph: &BTreeMap<StorePath, Derivation>,
        sched: &Schedule<'_>,
    ) -> Result<(), RealiseError> {
        if self.failures.is_empty() && self.fetch_failure.is_none() {
            if let Some(drv) = sched.pending().into_iter().next() {
                let missing = missing_inputs(store, graph, &drv)?;
                let failure = RealiseError::InputsNotValid {
                    path: store.print_path(&drv),
                    missing,
                };
                self.failures.insert(drv, failure);
            }
        }
        let mut failures: Vec<RealiseError> = self
            .fetch_failure
            .into_iter()
            .chain(self.failures.into_values())
            .collect();
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(RealiseError::BuildsFailed { failures }),
        }
    }
}

/// Reads the derivations of the closures of `roots` from the store.
fn load_graph<'a>(
    store: &LocalStore,
    roots: impl IntoIterator<Item = &'a StorePath>,
) -> Result<BTreeMap<StorePath, Derivation>, RealiseError> {
    let mut lookup = |p: &StorePath| store.read_derivation(p);
    derivation_closure(store.store_dir(), roots, &mut lookup)
        .map_err(|e| RealiseError::Derivations(Box::new(e)))
}

/// Decides what to build and what to substitute; see the module doc.
async fn decide(
    store: &Arc<LocalStore>,
    sub: Option<&Substituter>,
    graph: &BTreeMap<StorePath, Derivation>,
    mut needed: BTreeMap<StorePath, BTreeSet<String>>,
    checking: &BTreeSet<StorePath>,
) -> Result<Decision, RealiseError> {
    let mut to_build: BTreeSet<StorePath> = BTreeSet::new();
    let mut plan = Plan::empty();
    let mut frontier: Vec<StorePath> = needed.keys().cloned().collect();
    while !frontier.is_empty() {
        let mut query: Vec<StorePath> = Vec::new();
        let mut missing: BTreeSet<StorePath> = BTreeSet::new();
        for d in &frontier {
            if to_build.contains(d) {
                continue;
            }
            for o in &needed[d] {
                let p = graph[d].output_path(o).expect("outputs have paths");
                if !store.is_valid(p)? && !plan.contains(p) {
                    query.push(p.clone());
                }
            }
        }
        if !query.is_empty() {
            match sub {
                Some(sub) if !checking_all(&frontier, checking) => {
                    let (more, _) = sub.plan_partial(store, &query).await?;
                    for p in &query {
                        if !more.contains(p) {
                            missing.insert(p.clone());
                        }
                    }
                    plan.merge(more);
                }
                _ => missing.extend(query),
            }
        }
        let mut next: Vec<StorePath> = Vec::new();
        for d in std::mem::take(&mut frontier) {
            let drv = &graph[&d];
            let build = checking.contains(&d)
                || needed[&d]
                    .iter()
                    .any(|o| drv.output_path(o).is_some_and(|p| missing.contains(p)));
            if build && to_build.insert(d.clone()) {
                for (input, outs) in &drv.input_drvs {
                    let entry = needed.entry(input.clone()).or_default();
                    let before = entry.len();
                    entry.extend(outs.iter().cloned());
                    if entry.len() > before {
                        next.push(input.clone());
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(Decision { to_build, plan })
}

/// What planning decided: the derivations to build, and the paths to substitute.
struct Decision {
    to_build: BTreeSet<StorePath>,
    plan: Plan,
}

fn checking_all(frontier: &[StorePath], checking: &BTreeSet<StorePath>) -> bool {
    !checking.is_empty() && frontier.iter().all(|d| checking.contains(d))
}

/// The paths a build of `drv` uses.
fn inputs_of(graph: &BTreeMap<StorePath, Derivation>, drv: &StorePath) -> BTreeSet<StorePath> {
    graph[drv]
        .input_paths(|i, o| graph.get(i).and_then(|d| d.output_path(o)).cloned())
        .0
}

fn missing_inputs(
    store: &LocalStore,
    graph: &BTreeMap<StorePath, Derivation>,
    drv: &StorePath,
) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    for p in inputs_of(graph, drv) {
        if !store.is_valid(&p)? {
            missing.push(store.print_path(&p));
        }
    }
    Ok(missing)
}

/// Which builds can start: dependency counts among the builds (a [`ReadyQueue`] over
/// `builds`), then, for those whose input builds are done, the validity of every input
/// (some come from the fetch that runs alongside). Paths seen valid are remembered.
struct Schedule<'g> {
    graph: &'g BTreeMap<StorePath, Derivation>,
    /// The builds, in path order; the queue's items are indices into it.
    builds: Vec<StorePath>,
    queue: ReadyQueue,
    known_valid: std::collections::HashSet<StorePath>,
}

impl<'g> Schedule<'g> {
    fn new(
        graph: &'g BTreeMap<StorePath, Derivation>,
        to_build: BTreeSet<StorePath>,
    ) -> Result<Self, Vec<StorePath>> {
        let builds: Vec<StorePath> = to_build.into_iter().collect();
        let index: BTreeMap<&StorePath, usize> =
            builds.iter().enumerate().map(|(i, d)| (d, i)).collect();
        let index = &index;
        let waits_for = builds.iter().enumerate().flat_map(|(i, d)| {
            graph[d]
                .input_drvs
                .keys()
                .filter_map(move |input| Some((i, *index.get(input)?)))
        });
        let queue = ReadyQueue::new(builds.len(), waits_for).map_err(|cycle| {
            cycle
                .members
                .iter()
                .map(|&i| builds[i].clone())
                .collect::<Vec<_>>()
        })?;
        Ok(Schedule {
            graph,
            builds,
            queue,
            known_valid: Default::default(),
        })
    }

    /// A build whose inputs are all valid, taken out of the schedule, with its inputs.
    fn next_startable(
        &mut self,
        store: &LocalStore,
    ) -> Result<Option<(usize, BTreeSet<StorePath>)>, StoreError> {
        let candidates: Vec<usize> = self.queue.ready().collect();
        for i in candidates {
            let inputs = inputs_of(self.graph, &self.builds[i]);
            let mut all = true;
            for p in &inputs {
                if self.known_valid.contains(p) {
                    continue;
                }
                if store.is_valid(p)? {
                    self.known_valid.insert(p.clone());
                } else {
                    all = false;
                    break;
                }
            }
            if all {
                self.queue.take(i);
                return Ok(Some((i, inputs)));
            }
        }
        Ok(None)
    }

    /// Records a finished build and its (valid) outputs.
    fn built(&mut self, build: usize, outputs: impl IntoIterator<Item = StorePath>) {
        self.known_valid.extend(outputs);
        self.queue.complete(build);
    }

    /// Records a failed build; returns the builds given up because they depend on it
    /// (directly or not).
    fn failed(&mut self, build: usize) -> Vec<StorePath> {
        let dropped = self.queue.fail(build);
        dropped
            .into_iter()
            .map(|i| self.builds[i].clone())
            .collect()
    }

    /// The builds never started.
    fn pending(&self) -> Vec<StorePath> {
        self.queue
            .pending()
            .map(|i| self.builds[i].clone())
            .collect()
    }
}
