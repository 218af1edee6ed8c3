//! The state of one narinfo walk ([`Substituter::plan_partial`]): paths queued, lookups in
//! flight, narinfos waiting for their signature check, checks running, and what was
//! trusted or refused; one method per event.
//!
//! The walk does not wait for signature checks: a narinfo that is for the path asked has
//! its references queued at once, and checks run in batches on the blocking pool
//! ([`Limits::check_batch`], [`Limits::check_tail`] once no lookup is in flight). A
//! narinfo whose check fails sends its path on to the next cache. Between answers the walk
//! polls for up to [`Limits::walk_spin`] before its thread sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

use super::limits::Limits;
use super::{Arrived, Candidate, Found, NoNarInfo, Refusal, SubstituteError, Substituter};
use crate::format::keys::TrustedKeys;
use crate::format::store_path::{StoreDir, StorePath};
use crate::store::LocalStore;
use crate::trust::TrustError;

type Checked = (Vec<Arrived>, Vec<Result<(), TrustError>>);

/// What ended a wait of the walk. It lives on the stack for one step; boxing the large
/// variant would cost an allocation per narinfo.
#[allow(clippy::large_enum_variant)]
enum Event {
    Found(Found),
    Checked(Checked),
    Spun,
}

/// What the walk learnt: trusted narinfos, and what every cache said of the paths that
/// have none (yet).
pub(super) struct Walked {
    pub(super) trusted: BTreeMap<StorePath, Candidate>,
    pub(super) failed: BTreeMap<StorePath, Vec<Refusal>>,
}

/// `lookup(path, from, reasons)` asks caches `from..` for a narinfo of `path`.
pub(super) struct Walk<'a, L, F> {
    substituter: &'a Substituter,
    store: &'a LocalStore,
    lookup: L,
    limits: &'a Limits,
    keys: Arc<TrustedKeys>,
    dir: StoreDir,
    seen: BTreeSet<StorePath>,
    queue: Vec<StorePath>,
    /// Trusted narinfos from closure indexes: a path found here is not looked up.
    indexed: BTreeMap<StorePath, Candidate>,
    in_flight: FuturesUnordered<F>,
    /// Narinfos for the right path whose signatures are not checked yet.
    unchecked: Vec<Arrived>,
    checking: FuturesUnordered<JoinHandle<Checked>>,
    /// When a lookup last answered.
    progressed: Instant,
    walked: Walked,
}

impl<'a, L, F> Walk<'a, L, F>
where
    L: Fn(StorePath, usize, Vec<Refusal>) -> F,
    F: Future<Output = Found>,
{
    pub(super) fn new(
        substituter: &'a Substituter,
        store: &'a LocalStore,
        paths: &[StorePath],
        indexed: BTreeMap<StorePath, Candidate>,
        lookup: L,
    ) -> Self {
        let mut walk = Walk {
            substituter,
            store,
            lookup,
            limits: &substituter.limits,
            keys: Arc::new(substituter.keys.clone()),
            dir: store.store_dir().clone(),
            seen: BTreeSet::new(),
            queue: Vec::new(),
            indexed,
            in_flight: FuturesUnordered::new(),
            unchecked: Vec::new(),
            checking: FuturesUnordered::new(),
            progressed: Instant::now(),
            walked: Walked {
                trusted: BTreeMap::new(),
                failed: BTreeMap::new(),
            },
        };
        for p in paths {
            walk.enqueue(p);
        }
        walk
    }

    /// Walks until no lookup and no check is left.
    pub(super) async fn run(mut self) -> Result<Walked, SubstituteError> {
        loop {
            self.start_lookups()?;
            self.start_checks();
            if self.in_flight.is_empty() && self.checking.is_empty() {
                return Ok(self.walked);
            }
            self.next_event().await?;
        }
    }

    fn enqueue(&mut self, path: &StorePath) {
        if self.seen.insert(path.clone()) {
            self.queue.push(path.clone());
        }
    }

    /// Starts lookups of queued paths that are not valid, up to the concurrency limit. A
    /// path with a trusted narinfo from an index is taken at once, and its references
    /// queued, without a lookup.
    fn start_lookups(&mut self) -> Result<(), SubstituteError> {
        while self.in_flight.len() < self.limits.narinfo_concurrency {
            let Some(p) = self.queue.pop() else { break };
            if self.store.is_valid(&p)? {
                continue;
            }
            if let Some(candidate) = self.indexed.remove(&p) {
                for r in candidate.info.references() {
                    if self.seen.insert(r.clone()) {
                        self.queue.push(r.clone());
                    }
                }
                self.walked.trusted.insert(p, candidate);
                continue;
            }
            self.in_flight.push((self.lookup)(p, 0, Vec::new()));
        }
        Ok(())
    }

    /// Hands full batches of unchecked narinfos (any left, once no lookup is in flight) to
    /// the blocking pool.
    fn start_checks(&mut self) {
        let batch = if self.in_flight.is_empty() {
            self.limits.check_tail
        } else {
            self.limits.check_batch
        };
        while self.unchecked.len() >= batch
            || (self.in_flight.is_empty() && !self.unchecked.is_empty())
        {
            let at = self.unchecked.len().saturating_sub(batch);
            let part = self.unchecked.split_off(at);
            let (keys, dir) = (self.keys.clone(), self.dir.clone());
            self.checking.push(tokio::task::spawn_blocking(move || {
                let verdicts: Vec<_> = part.iter().map(|a| a.check(&keys, &dir)).collect();
                (part, verdicts)
            }));
        }
    }

    /// Waits for a lookup or a check to end (lookups first), or spins once.
    async fn next_event(&mut self) -> Result<(), SubstituteError> {
        let spin = !self.in_flight.is_empty() && self.progressed.elapsed() < self.limits.walk_spin;
        let Walk {
            in_flight,
            checking,
            ..
        } = self;
        let event = tokio::select! {
            biased;
            Some(found) = in_flight.next(), if !in_flight.is_empty() => Event::Found(found),
            Some(checked) = checking.next(), if !checking.is_empty() => {
                Event::Checked(checked.map_err(SubstituteError::Task)?)
            }
            // Lets the runtime poll its sockets without sleeping (see `Limits::walk_spin`).
            () = tokio::task::yield_now(), if spin => Event::Spun,
        };
        match event {
            Event::Found(found) => self.on_found(found),
            Event::Checked(checked) => self.on_checked(checked),
            Event::Spun => {}
        }
        Ok(())
    }

    fn on_found(&mut self, found: Found) {
        self.progressed = Instant::now();
        let Found {
            path,
            cache,
            info,
            reasons,
            secondhand,
        } = found;
        let Some(info) = info else {
            self.walked.failed.insert(path, reasons);
            return;
        };
        for r in info.references() {
            self.enqueue(r);
        }
        self.unchecked.push(Arrived {
            path,
            cache,
            info,
            reasons,
            secondhand,
        });
    }

    fn on_checked(&mut self, (batch, verdicts): Checked) {
        for (arrived, verdict) in batch.into_iter().zip(verdicts) {
            let Arrived {
                path,
                cache,
                info,
                mut reasons,
                secondhand,
            } = arrived;
            match verdict {
                Ok(()) => {
                    let candidate = Candidate {
                        cache,
                        info,
                        secondhand,
                    };
                    self.walked.trusted.insert(path, candidate);
                }
                Err(e) => {
                    // A narinfo from the narinfo cache that fails is asked for again.
                    if secondhand {
                        self.substituter.forget(cache, &path);
                        self.in_flight.push((self.lookup)(path, cache, reasons));
                        continue;
                    }
                    let refusal = self.substituter.refusal(cache, NoNarInfo::Untrusted(e));
                    reasons.push(refusal);
                    self.in_flight.push((self.lookup)(path, cache + 1, reasons));
                }
            }
        }
    }
}
