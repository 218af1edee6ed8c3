//! What substitution reports when it fails: typed, each variant at its own level with its
//! cause as the source.

use std::fmt::Write as _;

use thiserror::Error;

use crate::cache::CacheError;
use crate::error_chain::Chain;
use crate::store::StoreError;
use crate::trust::TrustError;

#[derive(Debug, Error)]
pub enum SubstituteError {
    #[error("no substituters are configured (set substituters)")]
    NoneConfigured,
    /// Every configured cache failed to open; the message lists each one with its causes,
    /// as they are independent.
    #[error("no usable substituters: {}", list(problems))]
    NoneUsable { problems: Vec<CacheFailure> },
    /// Some closure members are in no cache (trusted); the message lists each with what
    /// every cache said, as they are independent.
    #[error("cannot substitute {} path(s); nothing was downloaded:{}", missing.len(), missing_list(missing))]
    Incomplete { missing: Vec<Missing> },
    /// Every cache with a trusted narinfo for `path` failed to deliver it: `last` is the
    /// last one tried; the message lists the `earlier` ones, which are independent of it.
    #[error("cannot substitute '{path}'{}", earlier_note(earlier))]
    Fetch {
        path: String,
        #[source]
        last: Box<CacheFailure>,
        earlier: Vec<CacheFailure>,
    },
    /// Our side failed while installing `path` (say, the disk is full): no cache is
    /// blamed, retried or tried instead.
    #[error("cannot substitute '{path}'")]
    Local {
        path: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the references of these paths form a cycle: {}", paths.join(", "))]
    Cycle { paths: Vec<String> },
    #[error("an internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A cache that could not be used for something: the message names the cache, the source
/// says why.
#[derive(Debug, Error)]
#[error("{cache}")]
pub struct CacheFailure {
    pub cache: String,
    #[source]
    pub error: CacheUseError,
}

/// Why a cache could not be opened or could not deliver a NAR.
#[derive(Debug, Error)]
pub enum CacheUseError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("it is for store dir '{theirs}', not '{ours}'")]
    StoreDir { theirs: String, ours: String },
    #[error("the download task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A path that no cache could supply (trusted), and what each cache said about it.
#[derive(Debug)]
pub struct Missing {
    pub path: String,
    pub refusals: Vec<Refusal>,
}

/// What one cache said about a path it could not supply; the message names the cache,
/// the source says why.
#[derive(Debug, Error)]
#[error("{cache}")]
pub struct Refusal {
    pub cache: String,
    #[source]
    pub reason: NoNarInfo,
}

/// Why a cache had no usable narinfo for a path.
#[derive(Debug, Error)]
pub enum NoNarInfo {
    #[error("not found")]
    NotFound,
    /// It answered with a narinfo for another path.
    #[error(transparent)]
    WrongPath(TrustError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("untrusted")]
    Untrusted(#[source] TrustError),
}

/// One indented block per missing path, one line per cache, each with its causes.
fn missing_list(missing: &[Missing]) -> String {
    let mut out = String::new();
    for m in missing {
        let _ = write!(out, "\n  {}:", m.path);
        for r in &m.refusals {
            let _ = write!(out, "\n    {}", Chain(r));
        }
    }
    out
}

/// `a: why; b: why`, each failure with its causes.
fn list(failures: &[CacheFailure]) -> String {
    let each: Vec<String> = failures.iter().map(|f| Chain(f).to_string()).collect();
    each.join("; ")
}

fn earlier_note(earlier: &[CacheFailure]) -> String {
    if earlier.is_empty() {
        String::new()
    } else {
        format!(" (before that: {})", list(earlier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_lists_each_path_with_what_each_cache_said() {
        let e = SubstituteError::Incomplete {
            missing: vec![Missing {
                path: "/nix/store/x-a".into(),
                refusals: vec![
                    Refusal {
                        cache: "file:///c1".into(),
                        reason: NoNarInfo::NotFound,
                    },
                    Refusal {
                        cache: "file:///c2".into(),
                        reason: NoNarInfo::Untrusted(TrustError::Unsigned {
                            path: "/nix/store/x-a".into(),
                            sigs: 0,
                        }),
                    },
                ],
            }],
        };
        assert_eq!(
            e.to_string(),
            "cannot substitute 1 path(s); nothing was downloaded:\n  /nix/store/x-a:\n    \
             file:///c1: not found\n    file:///c2: untrusted: '/nix/store/x-a' has no \
             signature by a trusted key (0 signature(s) present)"
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "causes are in the list"
        );
    }
}
