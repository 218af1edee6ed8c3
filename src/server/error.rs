//! Everything a request can fail with, and the one exhaustive mapping to an HTTP status.
//!
//! Rules: every variant gets an explicit status in [`ApiError::status`] (no wildcard arms,
//! so a new store or trust error cannot silently become a 500 or a 200). The client only
//! ever sees the status line and its canonical phrase (plus `WWW-Authenticate` for 401);
//! the details (paths, hashes, I/O errors, the source chain) are logged once, here, at
//! the boundary: 5xx at `error`, refused uploads at `warn`, the rest at `debug`.

use std::io;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use crate::format::cache_info::CacheInfoError;
use crate::format::narinfo::NarInfoError;
use crate::fsnar::FsNarError;
use crate::store::{DbError, StoreError};
use crate::trust::TrustError;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// An absent path, a malformed file name, or a NAR name whose hash is not the path's
    /// current NarHash.
    #[error("not found")]
    NotFound,
    #[error("no credentials")]
    Unauthenticated,
    #[error("wrong credentials")]
    BadCredentials,
    #[error("uploads are not enabled on this server")]
    UploadsDisabled,
    #[error("request body larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot read the request body")]
    Body(#[source] axum::Error),
    /// The body fell behind its minimum pace (see `server::pace`).
    #[error("request body too slow")]
    SlowBody(#[source] axum::Error),
    #[error("invalid upload file name '{0}'")]
    BadName(String),
    #[error("uploaded narinfo is invalid")]
    BadNarInfo(#[source] NarInfoError),
    #[error("uploaded narinfo URL '{0}' is not of the form nar/<file>")]
    BadNarUrl(String),
    #[error("uploaded nix-cache-info is invalid")]
    BadCacheInfo(#[source] CacheInfoError),
    #[error("uploaded nix-cache-info is for store dir '{got}', this store is '{ours}'")]
    WrongStoreDir { got: String, ours: String },
    #[error("uploaded narinfo refused")]
    Untrusted(#[source] TrustError),
    #[error("no staged NAR '{0}' (upload the NAR before the narinfo)")]
    MissingNar(String),
    #[error("staged NAR '{file}' has an unsupported compression")]
    UnsupportedCompression {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("importing the uploaded path failed")]
    Import(#[source] StoreError),
    #[error("store lookup failed")]
    Store(#[source] StoreError),
    #[error("cannot render the narinfo of '{path}'")]
    Render {
        path: String,
        #[source]
        source: NarInfoError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("a blocking task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl ApiError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ApiError::Io {
            context: context.into(),
            source,
        }
    }

    /// A failure to read a request body: too slow, or otherwise broken.
    pub(crate) fn body(e: axum::Error) -> Self {
        if super::pace::is_too_slow(&e) {
            ApiError::SlowBody(e)
        } else {
            ApiError::Body(e)
        }
    }

    /// The status of every error. Exhaustive on purpose: no `_` arms.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::BadCredentials | ApiError::UploadsDisabled => StatusCode::FORBIDDEN,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Body(_)
            | ApiError::BadName(_)
            | ApiError::BadNarInfo(_)
            | ApiError::BadNarUrl(_)
            | ApiError::BadCacheInfo(_) => StatusCode::BAD_REQUEST,
            ApiError::WrongStoreDir { .. } | ApiError::MissingNar(_) => StatusCode::CONFLICT,
            ApiError::Untrusted(e) => trust_status(e),
            ApiError::UnsupportedCompression { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Import(e) => import_status(e),
            ApiError::Store(StoreError::NotValid(_)) => StatusCode::NOT_FOUND,
            ApiError::Store(_)
            | ApiError::Render { .. }
            | ApiError::Io { .. }
            | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn trust_status(e: &TrustError) -> StatusCode {
    match e {
        TrustError::WrongPath { .. } | TrustError::BadSignature { .. } => StatusCode::BAD_REQUEST,
        TrustError::Unsigned { .. } => StatusCode::FORBIDDEN,
        // `serve` refuses to enable uploads without trusted keys, so this is a bug.
        TrustError::NoTrustedKeys => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Import failures: the client's fault (4xx) when the upload does not match what it
/// claims, the server's (5xx) when the store itself fails.
fn import_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::MissingReferences { .. } => StatusCode::CONFLICT,
        StoreError::HashMismatch { .. }
        | StoreError::SizeMismatch { .. }
        | StoreError::CaMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::Path(_) => StatusCode::BAD_REQUEST,
        StoreError::Nar { source, .. } => nar_status(source),
        StoreError::Db(DbError::MissingReference { .. }) => StatusCode::CONFLICT,
        StoreError::Db(
            DbError::Sqlite(_)
            | DbError::TooNew { .. }
            | DbError::WrongStoreDir { .. }
            | DbError::NotValid(_)
            | DbError::Corrupt { .. },
        )
        | StoreError::NotWritable { .. }
        | StoreError::Io { .. }
        | StoreError::SourceChanged(_)
        | StoreError::NotValid(_)
        | StoreError::InvalidDerivation { .. }
        | StoreError::Roots(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Errors while unpacking an uploaded NAR: a bad archive (or bad compressed data, which
/// surfaces as a read error of the NAR stream) is the client's; writing is ours.
fn nar_status(e: &FsNarError) -> StatusCode {
    match e {
        FsNarError::InvalidNar(_) | FsNarError::TooDeep { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        FsNarError::Io(_)
        | FsNarError::UnsupportedType { .. }
        | FsNarError::Changed { .. }
        | FsNarError::TargetExists { .. }
        | FsNarError::CopyIntoItself { .. }
        | FsNarError::Write(_)
        | FsNarError::WorkerFailed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error with its source chain, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), "{}", chain(&self));
        } else if matches!(
            self,
            ApiError::Untrusted(_)
                | ApiError::Import(_)
                | ApiError::MissingNar(_)
                | ApiError::UnsupportedCompression { .. }
                | ApiError::BadNarInfo(_)
                | ApiError::BadCredentials
        ) {
            tracing::warn!(status = status.as_u16(), "refused: {}", chain(&self));
        } else {
            tracing::debug!(status = status.as_u16(), "{}", chain(&self));
        }
        plain_status(status)
    }
}

/// A bodyless-in-spirit error response: the canonical phrase, never cached.
pub(crate) fn plain_status(status: StatusCode) -> Response {
    let phrase = status.canonical_reason().unwrap_or("Error");
    let mut res = Response::new(Body::from(format!("{phrase}\n")));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"store\", charset=\"UTF-8\""),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (ApiError::NotFound, 404),
            (ApiError::Unauthenticated, 401),
            (ApiError::BadCredentials, 403),
            (ApiError::UploadsDisabled, 403),
            (ApiError::TooLarge { limit: 1 }, 413),
            (
                ApiError::body(axum::Error::new(crate::server::pace::TooSlow {
                    min_rate: 1,
                    window: std::time::Duration::from_secs(1),
                })),
                408,
            ),
            (
                ApiError::body(axum::Error::new(io::Error::other("reset"))),
                400,
            ),
            (ApiError::MissingNar("x".into()), 409),
            (
                ApiError::Import(StoreError::MissingReferences {
                    path: "p".into(),
                    missing: vec![],
                }),
                409,
            ),
            (
                ApiError::Import(StoreError::HashMismatch {
                    path: "p".into(),
                    expected: "a".into(),
                    got: "b".into(),
                }),
                422,
            ),
            (
                ApiError::Import(StoreError::io("disk", io::Error::other("full"))),
                500,
            ),
            (ApiError::Store(StoreError::NotValid("p".into())), 404),
            (
                ApiError::Untrusted(TrustError::Unsigned {
                    path: "p".into(),
                    sigs: 0,
                }),
                403,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.status().as_u16(), want, "{e:?}");
        }
    }

    #[test]
    fn bodies_are_sanitized() {
        let res = ApiError::io("secret /internal/path", io::Error::other("boom")).into_response();
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = rt
            .block_on(axum::body::to_bytes(res.into_body(), 1024))
            .unwrap();
        assert_eq!(&body[..], b"Internal Server Error\n");
        let res = ApiError::Unauthenticated.into_response();
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
