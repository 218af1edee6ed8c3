//! The state of one [`Substituter::fetch`]: which paths are downloading, staged, being
//! committed or done, and the first failure; one method per event.
//!
//! Downloads start in reference order, at most `jobs` at a time and at most
//! [`Limits::window`] started and not yet committed. Staged paths are committed in batches
//! (each costs a sync) once enough are staged, the window is full, or no download can make
//! progress (all wait for another process's locks, see `LockWaits`). After a failure,
//! running downloads finish (they are independent and atomic), what can be committed is,
//! nothing new starts, and the first failure is reported.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::{JoinHandle, JoinSet};

use super::download::FetchContext;
use super::{
    commit_gate, committable, reference_order, Candidate, CommitResult, Downloaded, Fetched,
    SubstituteError, Substituter,
};
use crate::format::store_path::StorePath;
use crate::schedule::ReadyQueue;
use crate::store::Staged;

/// What happened while the run waited.
enum Event {
    Downloaded(usize, Result<Downloaded, SubstituteError>),
    Committed(CommitResult),
    /// A download started or stopped waiting for another process's lock.
    Woken,
}

pub(super) struct FetchRun {
    this: Arc<Substituter>,
    ctx: Arc<FetchContext>,
    wanted: BTreeMap<StorePath, Candidate>,
    /// The wanted paths in reference order; a path's index here is its rank.
    order: Vec<StorePath>,
    /// Releases a staged path for commit once its references among the wanted are valid.
    gate: ReadyQueue,
    jobs: usize,
    window: usize,
    commit_batch: usize,
    /// Rank of the next path to start.
    next: usize,
    /// Started and not yet committed (or found valid).
    outstanding: usize,
    downloads: JoinSet<(usize, Result<Downloaded, SubstituteError>)>,
    staged: BTreeMap<usize, (Staged, Fetched)>,
    committing: Option<JoinHandle<CommitResult>>,
    done: Vec<Fetched>,
    first_error: Option<SubstituteError>,
}

impl FetchRun {
    pub(super) fn new(
        substituter: &Substituter,
        ctx: Arc<FetchContext>,
        wanted: BTreeMap<StorePath, Candidate>,
    ) -> Result<FetchRun, SubstituteError> {
        let order = reference_order(&wanted);
        let gate = commit_gate(&order, &wanted).map_err(|cycle| SubstituteError::Cycle {
            paths: cycle
                .members
                .iter()
                .map(|&i| ctx.store.print_path(&order[i]))
                .collect(),
        })?;
        Ok(FetchRun {
            this: Arc::new(substituter.clone_handles()),
            ctx,
            wanted,
            order,
            gate,
            jobs: substituter.jobs,
            window: substituter.limits.window(substituter.jobs),
            commit_batch: substituter.limits.commit_batch,
            next: 0,
            outstanding: 0,
            downloads: JoinSet::new(),
            staged: BTreeMap::new(),
            committing: None,
            done: Vec::new(),
            first_error: None,
        })
    }

    /// Runs to the end: every path committed or found valid, or the first failure.
    pub(super) async fn run(mut self) -> Result<Vec<Fetched>, SubstituteError> {
        loop {
            self.start_downloads();
            self.commit_if_due();
            if self.downloads.is_empty() && self.committing.is_none() {
                break;
            }
            match self.next_event().await? {
                Event::Downloaded(rank, result) => self.on_downloaded(rank, result),
                Event::Committed(result) => self.on_committed(result),
                Event::Woken => {}
            }
        }
        match self.first_error {
            Some(e) => Err(e),
            None => Ok(self.done),
        }
    }

    /// Starts downloads in reference order while the bounds allow and nothing failed.
    fn start_downloads(&mut self) {
        while self.first_error.is_none()
            && self.downloads.len() < self.jobs
            && self.outstanding < self.window
            && self.next < self.order.len()
        {
            let (rank, path) = (self.next, self.order[self.next].clone());
            self.next += 1;
            self.outstanding += 1;
            let candidate = self.wanted[&path].clone();
            let (this, ctx) = (self.this.clone(), self.ctx.clone());
            self.downloads
                .spawn(async move { (rank, this.fetch_one(&ctx, &path, candidate).await) });
        }
    }

    /// Starts committing what the gate releases, when a batch is due and none is running.
    fn commit_if_due(&mut self) {
        let stuck = self.ctx.waits.blocked.load(Ordering::SeqCst) >= self.downloads.len();
        let due =
            self.staged.len() >= self.commit_batch || self.outstanding >= self.window || stuck;
        if self.committing.is_some() || !due {
            return;
        }
        let batch = committable(&mut self.staged, &mut self.gate);
        if batch.is_empty() {
            return;
        }
        let store = self.ctx.store.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            let (staged, fetched): (Vec<Staged>, Vec<Fetched>) = batch.into_iter().unzip();
            store.commit_staged(staged).map(|_| fetched)
        }));
    }

    /// Waits for a download to end, the commit to end, or a lock wait to change.
    async fn next_event(&mut self) -> Result<Event, SubstituteError> {
        let FetchRun {
            downloads,
            committing,
            ctx,
            ..
        } = self;
        tokio::select! {
            Some(joined) = downloads.join_next(), if !downloads.is_empty() => {
                let (rank, result) = joined.map_err(SubstituteError::Task)?;
                Ok(Event::Downloaded(rank, result))
            }
            _ = ctx.waits.changed.notified(), if !downloads.is_empty() => Ok(Event::Woken),
            joined = async { committing.as_mut().expect("checked").await },
                if committing.is_some() => {
                *committing = None;
                Ok(Event::Committed(joined.map_err(SubstituteError::Task)?))
            }
        }
    }

    fn on_downloaded(&mut self, rank: usize, result: Result<Downloaded, SubstituteError>) {
        match result {
            Ok(Downloaded::Valid(fetched)) => {
                self.outstanding -= 1;
                self.gate.complete(rank);
                self.count_done(1);
                self.done.push(fetched);
            }
            Ok(Downloaded::Staged(staged, fetched)) => {
                self.staged.insert(rank, (*staged, fetched));
            }
            Err(e) => {
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn on_committed(&mut self, result: CommitResult) {
        match result {
            Ok(fetched) => {
                self.outstanding -= fetched.len();
                self.count_done(fetched.len());
                self.done.extend(fetched);
            }
            Err(e) => {
                self.first_error.get_or_insert(SubstituteError::Store(e));
                // Nothing more can be committed safely after a failed commit.
                self.staged.clear();
            }
        }
    }

    fn count_done(&self, paths: usize) {
        let progress = &self.ctx.progress;
        progress
            .paths_done
            .fetch_add(paths as u64, Ordering::Relaxed);
        progress.changed.notify_one();
    }
}
