//! The read side: `nix-cache-info`, `<hash32>.narinfo` and `nar/…` (GET and HEAD; axum
//! answers HEAD with the GET handler's headers and no body, and the NAR handler skips
//! producing a body it would not send).

use std::fs::File;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State as Extract};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;

use super::error::ApiError;
use super::lookup::Entry;
use super::names::{is_upload_name, nar_url, parse_nar_name, parse_narinfo_name, NarEncoding};
use super::stream::{self, body_channel, CacheTarget};
use super::{alias, budget};
use super::{Access, ServerConfig, State};
use crate::cache::compression::Compression;
use crate::format::cache_info::CacheInfo;
use crate::format::store_path::StorePathHash;

/// For what never changes once served (the content of a valid path).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// For nix-cache-info, which changes only with the server's settings.
const SHORT: &str = "public, max-age=300";

const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const NAR_TYPE: &str = "application/x-nix-nar";

/// The `{file}` segment of a route. A segment that cannot be decoded (bad percent
/// encoding, not UTF-8) is "not found", without axum's explanatory body.
pub(crate) struct FileName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FileName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(file)) => Ok(FileName(file)),
            Err(_) => Err(ApiError::NotFound),
        }
    }
}

/// Proof that the request may read; checks `Authorization` in place (the `HeaderMap`
/// extractor would copy every header of every request).
pub(crate) struct CanRead;

impl FromRequestParts<Arc<State>> for CanRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, ApiError> {
        state
            .authorize(&parts.headers, Access::Read)
            .map(|()| CanRead)
    }
}

/// The nix-cache-info text of a server.
pub(crate) fn cache_info_text(config: &ServerConfig) -> Bytes {
    let info = CacheInfo {
        store_dir: config.store.store_dir().clone(),
        want_mass_query: true,
        priority: Some(config.priority),
    };
    Bytes::from(info.to_text())
}

fn respond(
    body: Body,
    content_type: &'static str,
    cache: &'static str,
    len: Option<u64>,
) -> Response {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    res
}

/// A body of unknown length that is empty: for HEAD answers where the GET would be
/// chunked (an exact empty body would make axum announce `Content-Length: 0`).
fn unknown_length_empty() -> Body {
    Body::from_stream(futures_util::stream::empty::<Result<Bytes, std::io::Error>>())
}

impl State {
    /// The entry of the valid path with this hash part, from memory or the database.
    pub(crate) async fn lookup(
        self: &Arc<Self>,
        hash: StorePathHash,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        if let Some(e) = self.infos.get(&hash) {
            return Ok(Some(e));
        }
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let generation = state.infos.generation();
            let Some(info) = state
                .store
                .query_by_hash(&hash.to_string())
                .map_err(ApiError::Store)?
            else {
                return Ok(None);
            };
            let entry = Arc::new(state.renderer.render(&state.store, info)?);
            state.infos.insert(generation, hash, Arc::clone(&entry));
            Ok(Some(entry))
        })
        .await
        .map_err(ApiError::Task)?
    }
}

pub(crate) async fn get_cache_info(
    Extract(state): Extract<Arc<State>>,
    _: CanRead,
) -> Result<Response, ApiError> {
    Ok(respond(
        Body::from(state.cache_info.clone()),
        CACHE_INFO_TYPE,
        SHORT,
        None,
    ))
}

pub(crate) async fn get_narinfo(
    Extract(state): Extract<Arc<State>>,
    _: CanRead,
    FileName(file): FileName,
) -> Result<Response, ApiError> {
    let hash = parse_narinfo_name(&file).ok_or(ApiError::NotFound)?;
    let entry = state.lookup(hash).await?.ok_or(ApiError::NotFound)?;
    Ok(respond(
        Body::from(entry.narinfo.clone()),
        NARINFO_TYPE,
        IMMUTABLE,
        None,
    ))
}

pub(crate) async fn get_nar(
    Extract(state): Extract<Arc<State>>,
    _: CanRead,
    FileName(file): FileName,
    method: Method,
) -> Result<Response, ApiError> {
    let (hash, nar_hash, compression) = match parse_nar_name(&file) {
        Some(name) => {
            let c = match name.encoding {
                NarEncoding::Plain => Compression::None,
                NarEncoding::Zstd => Compression::Zstd,
            };
            (name.hash, name.nar_hash.to_owned(), c)
        }
        None if is_upload_name(&file) => {
            // A small read on the request thread: cheaper than a blocking-pool hop.
            let a = alias::read(state.aliases.dir(), &file).ok_or(ApiError::NotFound)?;
            let c = match a.label.as_deref() {
                Some("none") => Compression::None,
                Some("br") => Compression::Br,
                _ => Compression::Zstd,
            };
            (*a.path.hash(), a.nar_hash_nix32, c)
        }
        None => return Err(ApiError::NotFound),
    };
    let entry = state.lookup(hash).await?.ok_or(ApiError::NotFound)?;
    if entry.nar_hash_nix32 != nar_hash {
        return Err(ApiError::NotFound);
    }
    Ok(nar_response(
        &state,
        entry,
        compression,
        method == Method::HEAD,
    ))
}

/// The NAR of `entry` encoded with `compression` (none, zstd or brotli).
fn nar_response(
    state: &Arc<State>,
    entry: Arc<Entry>,
    compression: Compression,
    head: bool,
) -> Response {
    let st = Arc::clone(state);
    if compression == Compression::None {
        let len = Some(entry.nar_size);
        if head {
            return respond(Body::empty(), NAR_TYPE, IMMUTABLE, len);
        }
        let (out, body) = body_channel();
        tokio::task::spawn_blocking(move || {
            stream::produce_plain(&st.store, &entry.path, entry.nar_size, out)
        });
        return respond(body, NAR_TYPE, IMMUTABLE, len);
    }
    // Only zstd NARs are kept, under their canonical name.
    let cache_name = (compression == Compression::Zstd && state.config.nar_cache).then(|| {
        let url = nar_url(
            entry.path.hash_str(),
            &entry.nar_hash_nix32,
            NarEncoding::Zstd,
        );
        url.trim_start_matches("nar/").to_owned()
    });
    // A small open + fstat on the request thread: cheaper than a blocking-pool hop.
    let cached = cache_name.as_ref().and_then(|name| {
        let f = File::open(state.nar_cache.dir().join(name)).ok()?;
        let len = f.metadata().ok()?.len();
        budget::touch(&f);
        Some((f, len))
    });
    match (cached, head) {
        (Some((_, len)), true) => respond(Body::empty(), NAR_TYPE, IMMUTABLE, Some(len)),
        (Some((f, len)), false) => {
            let (out, body) = body_channel();
            tokio::task::spawn_blocking(move || stream::produce_file(f, out));
            respond(body, NAR_TYPE, IMMUTABLE, Some(len))
        }
        (None, true) => respond(unknown_length_empty(), NAR_TYPE, IMMUTABLE, None),
        (None, false) => {
            let (out, body) = body_channel();
            let target = cache_name.map(|file_name| CacheTarget {
                budget: Arc::clone(&state.nar_cache),
                file_name,
            });
            let level = match compression {
                Compression::Zstd => Some(state.config.zstd_level),
                _ => None,
            };
            tokio::task::spawn_blocking(move || {
                stream::produce_compressed(&st.store, &entry.path, compression, level, target, out)
            });
            respond(body, NAR_TYPE, IMMUTABLE, None)
        }
    }
}

/// Every other path and method: 404 (or 405 from the router for a known path).
pub(crate) async fn fallback() -> ApiError {
    ApiError::NotFound
}
