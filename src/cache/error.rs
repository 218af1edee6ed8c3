//! `CacheError`: everything a cache backend can fail with. Absence is not an error
//! (`Ok(None)` / `Ok(false)`). Errors name the URL or key concerned, never credentials.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::format::cache_info::CacheInfoError;
use crate::format::narinfo::NarInfoError;

use super::netrc::NetrcError;

/// The longest key quoted in an error; longer ones are cut (hostile caches choose keys).
const MAX_QUOTED_KEY: usize = 200;

/// Why a cache operation failed.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{method} {url}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: HTTP error {status}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
    },
    #[error("{method} {url}: no progress for {secs:.1} s")]
    Stalled {
        method: &'static str,
        url: String,
        secs: f64,
    },
    #[error("{method} {url}: no complete answer within {secs:.1} s")]
    TimedOut {
        method: &'static str,
        url: String,
        secs: f64,
    },
    #[error("giving up after {attempts} attempts")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<CacheError>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("'{key}' in cache '{cache}' is larger than the limit of {limit} bytes")]
    TooLarge {
        cache: String,
        key: String,
        limit: usize,
    },
    #[error("invalid narinfo '{key}' in cache '{cache}'")]
    NarInfo {
        cache: String,
        key: String,
        #[source]
        source: NarInfoError,
    },
    #[error("'{key}' in cache '{cache}' describes {got}, not a path with hash {wanted}")]
    NarInfoMismatch {
        cache: String,
        key: String,
        wanted: String,
        got: String,
    },
    #[error("invalid nix-cache-info in cache '{cache}'")]
    CacheInfo {
        cache: String,
        #[source]
        source: CacheInfoError,
    },
    #[error("'{key}' in cache '{cache}' is not valid UTF-8")]
    NotUtf8 { cache: String, key: &'static str },
    #[error("'{cache}' does not appear to be a binary cache (it has no nix-cache-info)")]
    NotACache { cache: String },
    #[error("binary cache '{cache}' is for Nix stores with prefix '{theirs}', not '{ours}'")]
    WrongStoreDir {
        cache: String,
        theirs: String,
        ours: String,
    },
    #[error("invalid netrc file '{}'", path.display())]
    Netrc {
        path: PathBuf,
        #[source]
        source: NetrcError,
    },
    /// Not produced by the backends (absence is `Ok(None)`): for callers that need an
    /// object a narinfo promised, e.g. its NAR (Nix's "does not exist in binary cache").
    #[error("file '{0}' does not exist in the binary cache")]
    NotFound(String),
    /// Decompressing the object named by the key failed to start (e.g. unrecognised data).
    #[error("cannot decompress '{0}'")]
    Decompress(String, #[source] io::Error),
    #[error("{method} {url}")]
    S3 {
        method: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot use S3 cache '{cache}'")]
    S3Config {
        cache: String,
        #[source]
        source: super::s3::S3ConfigError,
    },
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("background task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl CacheError {
    /// Whether trying again later might succeed: network trouble, timeouts, HTTP 408,
    /// 429 and 5xx (except 501, 505 and 511).
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::Transport { source, .. } => !(source.is_builder() || source.is_redirect()),
            CacheError::Status { status, .. } => is_transient_status(*status),
            CacheError::Stalled { .. } | CacheError::TimedOut { .. } => true,
            // The S3 library has already retried these with backoff; still, a later try
            // (another fetch round) may succeed, as for a `GaveUp` HTTP error.
            CacheError::S3 { source, .. } => matches!(source, object_store::Error::Generic { .. }),
            CacheError::GaveUp { last, .. } => last.is_transient(),
            CacheError::Io { source, .. } | CacheError::Decompress(_, source) => {
                io_is_transient(source)
            }
            _ => false,
        }
    }

    pub(crate) fn invalid_key(key: &str, reason: &'static str) -> Self {
        CacheError::InvalidKey {
            key: quote_key(key),
            reason,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        CacheError::Io {
            what: what.into(),
            source,
        }
    }

    /// The error behind an `io::Error` from a [`super::ByteStream`]: the `CacheError`
    /// the HTTP backend wraps into it, or else an I/O error about `what`.
    pub fn from_stream_error(what: &str, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<CacheError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(cache_error) = inner.downcast::<CacheError>() {
                    return *cache_error;
                }
            }
            // Unreachable: `is` said it was there.
            return CacheError::io(what, io::Error::other("lost stream error"));
        }
        CacheError::io(what, e)
    }
}

/// Whether an `io::Error` carries a transient [`CacheError`] (from a [`super::ByteStream`]).
fn io_is_transient(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<CacheError>())
        .is_some_and(CacheError::is_transient)
}

/// How the Nix 2.8 client treats an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Success,
    /// 404, 410.
    Absent,
    /// 401, 403, 407: absent as well (S3 says 403 for missing keys), but worth a log line.
    Denied,
    Transient,
    Fatal,
}

pub(crate) fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        404 | 410 => StatusClass::Absent,
        401 | 403 | 407 => StatusClass::Denied,
        s if is_transient_status(s) => StatusClass::Transient,
        _ => StatusClass::Fatal,
    }
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429)
        || ((500..=599).contains(&status) && !matches!(status, 501 | 505 | 511))
}

fn quote_key(key: &str) -> String {
    if key.len() <= MAX_QUOTED_KEY {
        return key.to_owned();
    }
    let mut end = MAX_QUOTED_KEY;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &key[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_nix() {
        use StatusClass::*;
        let table = [
            (200, Success),
            (201, Success),
            (204, Success),
            (206, Success),
            (404, Absent),
            (410, Absent),
            (401, Denied),
            (403, Denied),
            (407, Denied),
            (408, Transient),
            (429, Transient),
            (500, Transient),
            (502, Transient),
            (503, Transient),
            (504, Transient),
            (599, Transient),
            (501, Fatal),
            (505, Fatal),
            (511, Fatal),
            (400, Fatal),
            (405, Fatal),
            (418, Fatal),
            (304, Fatal),
        ];
        for (status, class) in table {
            assert_eq!(classify_status(status), class, "{status}");
            let e = CacheError::Status {
                method: "GET",
                url: "http://h/x".into(),
                status,
            };
            assert_eq!(e.is_transient(), class == Transient, "{status}");
        }
    }

    #[test]
    fn stream_errors_unwrap_to_cache_errors() {
        let inner = CacheError::Stalled {
            method: "GET",
            url: "http://h/x".into(),
            secs: 1.0,
        };
        let e = io::Error::new(io::ErrorKind::TimedOut, inner);
        let back = CacheError::from_stream_error("x", e);
        assert!(matches!(back, CacheError::Stalled { .. }));
        assert!(back.is_transient());
        let plain = CacheError::from_stream_error("x", io::Error::other("boom"));
        assert!(matches!(plain, CacheError::Io { .. }));
        assert!(!plain.is_transient());
        let gave_up = CacheError::GaveUp {
            attempts: 5,
            last: Box::new(back),
        };
        assert!(gave_up.is_transient());
        // The message is this level's only; the cause comes with the chain.
        assert_eq!(gave_up.to_string(), "giving up after 5 attempts");
        let chain = crate::error_chain::Chain(&gave_up).to_string();
        assert!(
            chain.starts_with("giving up after 5 attempts: GET"),
            "{chain}"
        );
        let drop = CacheError::Transport {
            method: "GET",
            url: "http://h/x".into(),
            source: reqwest::Client::new().get("notaurl").build().unwrap_err(),
        };
        assert!(!drop.is_transient(), "builder errors are not transient");
        let wrapped = CacheError::Decompress(
            "nar/x".into(),
            io::Error::new(io::ErrorKind::TimedOut, gave_up),
        );
        assert!(wrapped.is_transient());
        assert!(!CacheError::Decompress("nar/x".into(), io::Error::other("bad")).is_transient());
        assert!(!CacheError::NotFound("nar/x".into()).is_transient());
    }

    #[test]
    fn long_keys_are_cut_in_errors() {
        let key = "é".repeat(300);
        let e = CacheError::invalid_key(&key, "test");
        let shown = e.to_string();
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(shown.contains("..."));
    }
}
