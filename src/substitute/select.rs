//! Which requested closures a plan can take: the pure last step of
//! [`super::Substituter::plan_partial`], after the narinfo walk.

use std::collections::{BTreeMap, BTreeSet};

use crate::format::store_path::StorePath;

/// Selects, for each of `roots`, its closure through `trusted` (path → trusted source, whose
/// references `refs_of` gives): the whole closure is taken if every member is trusted or
/// valid (neither trusted nor failed: the walk skipped it as valid), and none of it if some
/// member `failed`. Returns what is taken, and each failed member with why.
///
/// Narinfos the walk fetched that no selected closure reaches are left out: they were
/// speculation (an untrusted narinfo's references, say). A member shared with a closure
/// that was taken earlier is not walked again.
pub(super) fn select_closures<'f, T: Clone, R>(
    roots: &[StorePath],
    trusted: &BTreeMap<StorePath, T>,
    refs_of: impl Fn(&T) -> &BTreeSet<StorePath>,
    failed: &'f BTreeMap<StorePath, R>,
) -> (BTreeMap<StorePath, T>, BTreeMap<StorePath, &'f R>) {
    let mut wanted: BTreeMap<StorePath, T> = BTreeMap::new();
    let mut missing: BTreeMap<StorePath, &'f R> = BTreeMap::new();
    for root in roots {
        let mut members: Vec<&StorePath> = Vec::new();
        let mut stack: Vec<&StorePath> = vec![root];
        let mut visited: BTreeSet<&StorePath> = BTreeSet::new();
        let mut complete = true;
        while let Some(p) = stack.pop() {
            if !visited.insert(p) || wanted.contains_key(p) {
                continue;
            }
            if let Some(t) = trusted.get(p) {
                stack.extend(refs_of(t).iter());
                members.push(p);
            } else if let Some(why) = failed.get(p) {
                missing.insert(p.clone(), why);
                complete = false;
            }
            // Otherwise it was valid.
        }
        if complete {
            for m in members {
                wanted.insert(m.clone(), trusted[m].clone());
            }
        }
    }
    (wanted, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store path whose hash part is made of digits (valid nix32), distinct per test name.
    fn p(name: &str) -> StorePath {
        let id = name.len() * 1000 + usize::from(name.as_bytes()[0]);
        format!("{id:0>32}-{name}").parse().unwrap()
    }

    /// A trusted map where each path names its references.
    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<StorePath, BTreeSet<StorePath>> {
        edges
            .iter()
            .map(|(from, to)| (p(from), to.iter().map(|t| p(t)).collect()))
            .collect()
    }

    fn names(m: &BTreeMap<StorePath, impl Sized>) -> Vec<String> {
        m.keys().map(|k| k.name().to_string()).collect()
    }

    fn select(
        roots: &[&str],
        trusted: &BTreeMap<StorePath, BTreeSet<StorePath>>,
        failed: &[&str],
    ) -> (Vec<String>, Vec<String>) {
        let roots: Vec<StorePath> = roots.iter().map(|r| p(r)).collect();
        let failed: BTreeMap<StorePath, &str> = failed.iter().map(|f| (p(f), "why")).collect();
        let (wanted, missing) = select_closures(&roots, trusted, |r| r, &failed);
        (names(&wanted), names(&missing))
    }

    #[test]
    fn a_complete_closure_is_taken_whole() {
        let g = graph(&[("top", &["mid", "valid"]), ("mid", &["low"]), ("low", &[])]);
        assert_eq!(
            select(&["top"], &g, &[]),
            (vec!["low".into(), "mid".into(), "top".into()], vec![])
        );
    }

    #[test]
    fn a_closure_with_a_failed_member_is_dropped_and_the_member_named() {
        let g = graph(&[("top", &["mid"]), ("mid", &["gone"]), ("other", &[])]);
        let (wanted, missing) = select(&["top", "other"], &g, &["gone"]);
        assert_eq!(wanted, ["other"]);
        assert_eq!(missing, ["gone"]);
    }

    #[test]
    fn a_shared_member_is_kept_for_the_closure_that_is_complete() {
        // a and b share s; b also needs a failed path.
        let g = graph(&[("a", &["s"]), ("b", &["s", "x"]), ("s", &[])]);
        let (wanted, missing) = select(&["b", "a"], &g, &["x"]);
        assert_eq!(wanted, ["a", "s"]);
        assert_eq!(missing, ["x"]);
    }

    #[test]
    fn narinfos_no_root_reaches_are_left_out() {
        let g = graph(&[("top", &[]), ("speculative", &[])]);
        assert_eq!(select(&["top"], &g, &[]).0, ["top"]);
    }

    #[test]
    fn cycles_and_self_references_end() {
        let g = graph(&[("a", &["a", "b"]), ("b", &["a"])]);
        assert_eq!(select(&["a"], &g, &[]).0, ["a", "b"]);
    }
}
