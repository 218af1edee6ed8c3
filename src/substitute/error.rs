//! What substitution reports when it fails: typed, each variant at its own level with its
//! cause as the source.

use thiserror::Error;

use crate::cache::CacheError;
use crate::error_chain::Chain;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum SubstituteError {
    #[error("no substituters are configured (set substituters)")]
    NoneConfigured,
    /// Every configured cache failed to open; the message lists each one with its causes,
    /// as they are independent.
    #[error("no usable substituters: {}", list(problems))]
    NoneUsable { problems: Vec<CacheFailure> },
    #[error("cannot substitute {count} path(s); nothing was downloaded:\n{details}")]
    Incomplete { count: usize, details: String },
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
