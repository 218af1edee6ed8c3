//! A dependency-ordered ready queue: the one scheduler behind push, substitution and
//! realise.
//!
//! Items are numbered `0..len` by the caller (an index into its own list of paths). An item
//! waits for the items it depends on; it becomes *ready* when every one of them is
//! complete. The caller takes ready items ([`ReadyQueue::pop`] or [`ReadyQueue::take`]),
//! and reports each as [`ReadyQueue::complete`] or [`ReadyQueue::fail`]; failing an item
//! drops everything that depends on it, directly or not. A set of dependencies that can
//! never all complete (a cycle) is refused when the queue is made.
//!
//! Pure bookkeeping, no I/O: the memory is a few vectors for the whole queue (dependents are
//! stored flat, not one allocation per item), so schedulers of thousands of paths pay no
//! allocation per path for it.

use std::collections::BTreeSet;

use thiserror::Error;

/// Dependencies that can never all complete: `members` (indices, in dependency order) form a
/// cycle, each depending on the next and the last on the first.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("dependencies form a cycle of {} item(s)", members.len())]
pub struct Cycle {
    pub members: Vec<usize>,
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Some dependency is not complete.
    Waiting,
    /// Every dependency is complete; not taken yet.
    Ready,
    /// Handed to the caller, not reported yet.
    Taken,
    /// Complete, failed, or dropped because a dependency failed.
    Finished,
}

/// See the module doc.
#[derive(Debug)]
pub struct ReadyQueue {
    state: Vec<State>,
    /// Per item: dependencies not complete yet.
    unmet: Vec<usize>,
    /// The dependents of item `i` are `dependents[first[i]..first[i + 1]]`.
    first: Vec<usize>,
    dependents: Vec<usize>,
    /// Ready items, lowest index first.
    ready: BTreeSet<usize>,
}

impl ReadyQueue {
    /// A queue of `len` items where each `(item, dependency)` pair says that `item` waits
    /// for `dependency`. Pairs of an item with itself and repeated pairs count once (or not
    /// at all for the former). Fails if some items wait for each other in a cycle.
    ///
    /// # Panics
    /// If an index is not below `len` (a bug in the caller, not bad input).
    pub fn new(
        len: usize,
        waits_for: impl IntoIterator<Item = (usize, usize)>,
    ) -> Result<Self, Cycle> {
        // Edges as (dependency, dependent), grouped by dependency.
        let mut edges: Vec<(usize, usize)> = waits_for
            .into_iter()
            .filter(|(item, dep)| item != dep)
            .map(|(item, dep)| {
                assert!(item < len && dep < len, "schedule index out of range");
                (dep, item)
            })
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let mut first = vec![0; len + 1];
        let mut unmet = vec![0; len];
        for &(dep, item) in &edges {
            first[dep + 1] += 1;
            unmet[item] += 1;
        }
        for i in 0..len {
            first[i + 1] += first[i];
        }
        let dependents: Vec<usize> = edges.into_iter().map(|(_, item)| item).collect();
        let state: Vec<State> = unmet
            .iter()
            .map(|&n| if n == 0 { State::Ready } else { State::Waiting })
            .collect();
        let ready = (0..len).filter(|&i| unmet[i] == 0).collect();
        let queue = ReadyQueue {
            state,
            unmet,
            first,
            dependents,
            ready,
        };
        queue.check_acyclic()?;
        Ok(queue)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The ready items, lowest index first.
    pub fn ready(&self) -> impl Iterator<Item = usize> + '_ {
        self.ready.iter().copied()
    }

    /// Whether `item` is ready (and not taken).
    pub fn is_ready(&self, item: usize) -> bool {
        self.state[item] == State::Ready
    }

    /// Takes the lowest ready item.
    pub fn pop(&mut self) -> Option<usize> {
        let item = self.ready.pop_first()?;
        self.state[item] = State::Taken;
        Some(item)
    }

    /// Takes `item` if it is ready; returns whether it was.
    pub fn take(&mut self, item: usize) -> bool {
        if self.state[item] != State::Ready {
            return false;
        }
        self.ready.remove(&item);
        self.state[item] = State::Taken;
        true
    }

    /// Records that `item` is complete (taken or not: it may have been completed by someone
    /// else), which makes ready every dependent whose last dependency it was.
    pub fn complete(&mut self, item: usize) {
        if self.state[item] == State::Finished {
            return;
        }
        if self.state[item] == State::Ready {
            self.ready.remove(&item);
        }
        self.state[item] = State::Finished;
        for k in self.first[item]..self.first[item + 1] {
            let d = self.dependents[k];
            self.unmet[d] -= 1;
            if self.unmet[d] == 0 && self.state[d] == State::Waiting {
                self.state[d] = State::Ready;
                self.ready.insert(d);
            }
        }
    }

    /// Records that `item` failed: every item that depends on it, directly or not, and is not
    /// taken yet is dropped. Returns the dropped items.
    pub fn fail(&mut self, item: usize) -> Vec<usize> {
        self.finish_early(item);
        let mut dropped = Vec::new();
        let mut stack = vec![item];
        while let Some(i) = stack.pop() {
            for k in self.first[i]..self.first[i + 1] {
                let d = self.dependents[k];
                if matches!(self.state[d], State::Waiting | State::Ready) {
                    self.finish_early(d);
                    dropped.push(d);
                    stack.push(d);
                }
            }
        }
        dropped
    }

    /// The items never taken, completed or dropped, lowest first.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| matches!(self.state[i], State::Waiting | State::Ready))
    }

    /// Marks `item` finished without releasing its dependents.
    fn finish_early(&mut self, item: usize) {
        if self.state[item] == State::Ready {
            self.ready.remove(&item);
        }
        self.state[item] = State::Finished;
    }

    /// Completes everything in a copy of the counts (Kahn's algorithm); an item left over
    /// waits, through a chain of waiting items, on a cycle, which is found by following
    /// unmet dependencies until one repeats.
    fn check_acyclic(&self) -> Result<(), Cycle> {
        let mut unmet = self.unmet.clone();
        let mut stack: Vec<usize> = self.ready.iter().copied().collect();
        let mut released = stack.len();
        while let Some(i) = stack.pop() {
            for &d in &self.dependents[self.first[i]..self.first[i + 1]] {
                unmet[d] -= 1;
                if unmet[d] == 0 {
                    released += 1;
                    stack.push(d);
                }
            }
        }
        if released == self.len() {
            return Ok(());
        }
        // Every left-over item has a left-over dependency; note one for each, then walk
        // from any left-over item until an item repeats.
        let mut a_dependency = vec![usize::MAX; self.len()];
        for dep in (0..self.len()).filter(|&d| unmet[d] > 0) {
            for &item in &self.dependents[self.first[dep]..self.first[dep + 1]] {
                a_dependency[item] = dep;
            }
        }
        let mut on_path = vec![false; self.len()];
        let mut path = Vec::new();
        let mut at = (0..self.len())
            .find(|&i| unmet[i] > 0)
            .expect("an item is left over");
        while !on_path[at] {
            on_path[at] = true;
            path.push(at);
            at = a_dependency[at];
        }
        let pos = path.iter().position(|&p| p == at).expect("on the path");
        Err(Cycle {
            members: path.split_off(pos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes and completes everything, returning the order.
    fn drain(q: &mut ReadyQueue) -> Vec<usize> {
        let mut order = Vec::new();
        while let Some(i) = q.pop() {
            q.complete(i);
            order.push(i);
        }
        order
    }

    #[test]
    fn independent_items_come_lowest_first() {
        let mut q = ReadyQueue::new(3, []).unwrap();
        assert_eq!(drain(&mut q), [0, 1, 2]);
        assert_eq!(q.pending().count(), 0);
    }

    #[test]
    fn a_chain_is_released_one_at_a_time() {
        // 0 waits for 1, 1 waits for 2.
        let mut q = ReadyQueue::new(3, [(0, 1), (1, 2)]).unwrap();
        assert_eq!(q.ready().collect::<Vec<_>>(), [2]);
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), None, "nothing is ready while 2 runs");
        q.complete(2);
        assert_eq!(q.pop(), Some(1));
        q.complete(1);
        assert_eq!(q.pop(), Some(0));
    }

    #[test]
    fn a_diamond_waits_for_both_sides() {
        // 0 uses 1 and 2, both use 3.
        let mut q = ReadyQueue::new(4, [(0, 1), (0, 2), (1, 3), (2, 3)]).unwrap();
        assert_eq!(q.pop(), Some(3));
        q.complete(3);
        assert_eq!(q.ready().collect::<Vec<_>>(), [1, 2]);
        assert!(q.take(2));
        q.complete(2);
        assert!(!q.is_ready(0), "0 still waits for 1");
        assert!(q.take(1));
        q.complete(1);
        assert!(q.is_ready(0));
        assert_eq!(drain(&mut q), [0]);
    }

    #[test]
    fn self_and_repeated_dependencies_count_once() {
        let mut q = ReadyQueue::new(2, [(0, 0), (0, 1), (0, 1)]).unwrap();
        assert_eq!(drain(&mut q), [1, 0]);
    }

    #[test]
    fn completing_an_item_not_taken_still_releases_its_dependents() {
        // Another process made 1 valid while 0 waited for it, and 1 waited for 2.
        let mut q = ReadyQueue::new(3, [(0, 1), (1, 2)]).unwrap();
        q.complete(1);
        assert_eq!(q.ready().collect::<Vec<_>>(), [0, 2]);
        q.complete(2);
        assert_eq!(drain(&mut q), [0]);
    }

    #[test]
    fn a_failure_drops_everything_that_depends_on_it() {
        // 0 → 1 → 3, 2 → 3, 4 independent; 3 fails.
        let mut q = ReadyQueue::new(5, [(0, 1), (1, 3), (2, 3)]).unwrap();
        assert!(q.take(3));
        let mut dropped = q.fail(3);
        dropped.sort_unstable();
        assert_eq!(dropped, [0, 1, 2]);
        assert_eq!(drain(&mut q), [4]);
        assert_eq!(q.pending().count(), 0);
    }

    #[test]
    fn a_taken_dependent_is_not_dropped() {
        let mut q = ReadyQueue::new(2, [(0, 1)]).unwrap();
        q.complete(1);
        assert!(q.take(0));
        assert_eq!(q.fail(1), Vec::<usize>::new());
    }

    #[test]
    fn pending_lists_what_never_ran() {
        let mut q = ReadyQueue::new(3, [(0, 1)]).unwrap();
        assert!(q.take(1));
        assert_eq!(q.pending().collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        // 0 waits for 1, 1 for 2, 2 for 1; 3 is fine.
        let e = ReadyQueue::new(4, [(0, 1), (1, 2), (2, 1)]).unwrap_err();
        let mut members = e.members.clone();
        members.sort_unstable();
        assert_eq!(members, [1, 2]);
        assert_eq!(e.to_string(), "dependencies form a cycle of 2 item(s)");
        assert!(
            ReadyQueue::new(1, [(0, 0)]).is_ok(),
            "a self-reference is no cycle"
        );
    }

    #[test]
    fn a_long_chain_is_checked_without_recursion() {
        let n = 100_000;
        let mut q = ReadyQueue::new(n, (0..n - 1).map(|i| (i, i + 1))).unwrap();
        assert_eq!(drain(&mut q).len(), n);
    }
}
