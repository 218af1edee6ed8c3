//! The write side, in the order `nix copy --to http://…` uses it: `PUT /nar/<file>` stages
//! the (compressed) NAR, then `PUT /<hash32>.narinfo` makes the path valid.
//!
//! * A NAR upload is written to a temp file in `serve/staging/` and renamed to its name
//!   when complete; it is never served and never enters the store by itself. Its size is
//!   bounded by `UploadConfig::max_nar_size` (checked against `Content-Length` first, then
//!   while reading); narinfo and nix-cache-info bodies likewise by their format's limit.
//!   A body that falls behind its minimum pace is refused with 408 (module `pace`).
//! * A narinfo upload is parsed for this store dir, then checked with
//!   [`trust::check_narinfo`] against the path its file name asks for (only the hash part
//!   is in the name, so the name of the path comes from the narinfo). Its `URL` must be
//!   `nar/<file>` naming a staged upload, which is decompressed (the `Compression` label,
//!   with the format sniffed from the data) and imported with [`LocalStore::import_nar`]
//!   on the blocking pool: references must already be valid, and the NarHash, NarSize and
//!   content address are verified before the path becomes valid, atomically.
//! * The staged file is removed after a successful import and after an import that
//!   refused its contents (422); otherwise (server error, missing references) it stays,
//!   so a retry can succeed.
//!   Staged files nobody claims are swept after [`STALE_AFTER`]. A successful narinfo
//!   upload records the NAR name it used as an alias (see [`alias`]).
//! * Refusals close the connection (`Connection: close`), since the body may be unread.
//!
//! Not checked: `FileHash`/`FileSize` (Nix 2.8 never checks them either; the NarHash,
//! which the signature covers, is verified during import).

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::alias::{self, Alias};
use super::error::ApiError;
use super::names::{is_upload_name, parse_narinfo_name, upload_name_of_url};
use super::routes::FileName;
use super::stream::FILE_MODE;
use super::{Access, State};
use crate::cache::compression::{decompress, CompressionError};
use crate::error_chain::Chain;
use crate::format::cache_info::{CacheInfo, MAX_CACHE_INFO_SIZE};
use crate::format::narinfo::{NarInfo, MAX_NARINFO_SIZE};
use crate::format::store_path::{StorePath, StorePathName};
use crate::store::NarImport;
use crate::temp_file::{self, TempFile};
use crate::trust;

/// Age after which staged uploads nobody claimed are removed.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// How often the sweep runs (also once at startup).
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Write buffer for staged uploads.
const STAGING_BUFFER: usize = 1 << 20;

/// The status of every successful upload.
const STORED: StatusCode = StatusCode::NO_CONTENT;

/// A refused upload. The response says `Connection: close`: the request body may not have
/// been read, and hyper then drops the connection after answering, which a client that
/// reused it would see as a broken response.
#[derive(Debug)]
pub(crate) struct Refused(ApiError);

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut res = self.0.into_response();
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    }
}

/// `PUT /nar/<file>`.
pub(crate) async fn put_nar(
    Extract(state): Extract<Arc<State>>,
    FileName(file): FileName,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Refused> {
    state.authorize(&headers, Access::Upload)?;
    let limit = state.config.upload.as_ref().map_or(0, |u| u.max_nar_size);
    if !is_upload_name(&file) {
        return Err(ApiError::BadName(file).into());
    }
    refuse_announced_over(&headers, limit)?;
    let tmp = write_body(body, &state.staging_dir, limit).await?;
    let dest = state.staging_dir.join(&file);
    tokio::task::spawn_blocking(move || tmp.persist(&dest))
        .await
        .map_err(ApiError::Task)?
        .map_err(|e| ApiError::io("cannot move a staged upload into place", e))?;
    Ok(STORED)
}

/// Refuses at once a body whose `Content-Length` says it is over `limit` bytes, before
/// reading any of it.
fn refuse_announced_over(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit => Err(ApiError::TooLarge { limit }),
        _ => Ok(()),
    }
}

/// Writes a request body to a new temp file in `dir`, refusing more than `limit` bytes.
/// The file is removed if this fails (when the [`TempFile`] is dropped), and swept by
/// the next server if this one is killed.
async fn write_body(body: Body, dir: &Path, limit: u64) -> Result<TempFile, ApiError> {
    let io_err = |e| ApiError::io("cannot write a staged upload", e);
    let dir = dir.to_owned();
    let tmp = tokio::task::spawn_blocking(move || TempFile::create_in(&dir, FILE_MODE))
        .await
        .map_err(ApiError::Task)?
        .map_err(io_err)?;
    let file = tmp.as_file().try_clone().map_err(io_err)?;
    let mut out =
        tokio::io::BufWriter::with_capacity(STAGING_BUFFER, tokio::fs::File::from_std(file));
    let mut data = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(ApiError::body)?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge { limit });
        }
        out.write_all(&chunk).await.map_err(io_err)?;
    }
    out.flush().await.map_err(io_err)?;
    Ok(tmp)
}

/// Reads a small request body into memory, refusing more than `limit` bytes.
async fn read_bounded(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(ApiError::body)?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                limit: limit as u64,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `PUT /<hash32>.narinfo`.
pub(crate) async fn put_narinfo(
    Extract(state): Extract<Arc<State>>,
    FileName(file): FileName,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Refused> {
    state.authorize(&headers, Access::Upload)?;
    let Some(upload) = state.config.upload.as_ref() else {
        return Err(ApiError::UploadsDisabled.into());
    };
    let hash = parse_narinfo_name(&file).ok_or(ApiError::NotFound)?;
    refuse_announced_over(&headers, MAX_NARINFO_SIZE as u64)?;
    let text = read_bounded(body, MAX_NARINFO_SIZE).await?;
    let dir = state.store.store_dir();
    let info = NarInfo::parse_bytes(&text, dir).map_err(ApiError::BadNarInfo)?;
    // The name comes from the narinfo (it parsed, so it is valid); the hash from the URL.
    let name = StorePathName::new(info.store_path().name()).map_err(|_| ApiError::BadName(file))?;
    let asked = StorePath::from_parts(hash, &name);
    trust::check_narinfo(&info, &asked, &upload.trusted_keys, dir).map_err(ApiError::Untrusted)?;
    let staged_name = upload_name_of_url(info.url())
        .ok_or_else(|| ApiError::BadNarUrl(info.url().to_owned()))?
        .to_owned();
    // `check_narinfo` made sure the narinfo is for `asked`.
    let meta = NarImport::from(&info);
    let label = info.compression().map(str::to_owned);
    let st = Arc::clone(&state);
    tokio::task::spawn_blocking(move || import_upload(&st, &staged_name, label, meta))
        .await
        .map_err(ApiError::Task)??;
    state.infos.remove(&hash);
    Ok(STORED)
}

/// Makes the uploaded path valid (blocking): from its staged NAR, or from a path with the
/// same contents that an alias names; records the alias. See the module docs.
fn import_upload(
    state: &State,
    staged_name: &str,
    label: Option<String>,
    meta: NarImport,
) -> Result<(), ApiError> {
    let store = &state.store;
    let staged = state.staging_dir.join(staged_name);
    let record = Alias {
        path: meta.path.clone(),
        nar_hash_nix32: meta.nar_hash.to_nix32(),
        label,
    };
    let remember = || {
        if let Err(e) = alias::write(&state.aliases, staged_name, &record) {
            tracing::warn!(
                "cannot record the upload alias '{staged_name}': {}",
                Chain(&e)
            );
        }
    };
    if let Some(existing) = store.query(&meta.path).map_err(ApiError::Store)? {
        // Only an alias for the same contents: another build of an input-addressed path
        // may differ, and its name must then not lead to our contents.
        if existing.nar_hash == meta.nar_hash {
            remember();
        }
        tracing::info!(
            "upload of {} skipped: already valid",
            store.print_path(&meta.path)
        );
        let _ = fs::remove_file(&staged);
        return Ok(());
    }
    let file = match File::open(&staged) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let same = alias::read(state.aliases.dir(), staged_name)
                .filter(|a| a.nar_hash_nix32 == record.nar_hash_nix32)
                .ok_or_else(|| ApiError::MissingNar(staged_name.to_owned()))?;
            alias::import_from_path(store, &same.path, meta).map_err(ApiError::Import)?;
            tracing::info!(
                "imported {} from {} (same contents)",
                store.print_path(&record.path),
                store.print_path(&same.path)
            );
            remember();
            return Ok(());
        }
        Err(e) => return Err(ApiError::io("cannot open a staged upload", e)),
    };
    let inode = file
        .metadata()
        .map_err(|e| ApiError::io("cannot stat a staged upload", e))?
        .ino();
    let result = decompress(
        record.label.as_deref(),
        BufReader::with_capacity(STAGING_BUFFER, file),
    )
    .map_err(|e| compression_error(staged_name, e))
    .and_then(|nar| store.import_nar(meta, nar).map_err(ApiError::Import));
    match &result {
        Ok(outcome) => {
            tracing::info!(
                "imported {} from an upload",
                store.print_path(&outcome.info.path)
            );
            remember();
        }
        // Keep the staged NAR unless its contents were refused: after a server error or
        // missing references, the same narinfo may be retried.
        Err(e) if e.status() != StatusCode::UNPROCESSABLE_ENTITY => return result.map(drop),
        Err(_) => {}
    }
    // Only our file: a concurrent upload under the same name may have replaced it.
    if fs::metadata(&staged).is_ok_and(|m| m.ino() == inode) {
        let _ = fs::remove_file(&staged);
    }
    result.map(drop)
}

/// A failure to start decompressing: unrecognised data is the client's fault, a read
/// error of the staged file ours.
fn compression_error(file: &str, e: io::Error) -> ApiError {
    let ours = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<CompressionError>().is_some());
    if ours {
        ApiError::UnsupportedCompression {
            file: file.to_owned(),
            source: e,
        }
    } else {
        ApiError::io("cannot read a staged upload", e)
    }
}

/// `PUT /nix-cache-info`: Nix writes it when it thinks the cache is new. A no-op if it
/// names our store dir.
pub(crate) async fn put_cache_info(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Refused> {
    state.authorize(&headers, Access::Upload)?;
    refuse_announced_over(&headers, MAX_CACHE_INFO_SIZE as u64)?;
    let text = read_bounded(body, MAX_CACHE_INFO_SIZE).await?;
    let info = CacheInfo::parse(&String::from_utf8_lossy(&text)).map_err(ApiError::BadCacheInfo)?;
    let ours = state.store.store_dir();
    if info.store_dir != *ours {
        return Err(ApiError::WrongStoreDir {
            got: info.store_dir.to_string(),
            ours: ours.to_string(),
        }
        .into());
    }
    Ok(STORED)
}

/// Sweeps the server directories every [`SWEEP_INTERVAL`] (the server swept them once
/// when it opened), until aborted.
pub(crate) async fn sweep_periodically(state: Arc<State>) {
    let start = tokio::time::Instant::now() + SWEEP_INTERVAL;
    let mut tick = tokio::time::interval_at(start, SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let st = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || {
            sweep(&st.staging_dir, &[st.nar_cache.dir(), st.aliases.dir()]);
        })
        .await;
    }
}

/// Removes from `staging` and the other server directories the temp files whose writer
/// is gone (at once for a writer of this boot: its lock tells; see [`temp_file`]), and
/// from `staging` the uploads nobody claimed for [`STALE_AFTER`] (blocking).
pub(crate) fn sweep(staging: &Path, others: &[&Path]) {
    for dir in std::iter::once(&staging).chain(others) {
        temp_file::sweep_and_log(dir);
    }
    remove_stale(staging, |name| !name.starts_with(".tmp"));
}
/// Removes the files in `dir` selected by `pick` that were last modified more than
/// [`STALE_AFTER`] ago (an upload in progress keeps its temp file fresh).
fn remove_stale(dir: &Path, pick: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !pick(name) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_AFTER));
        if old {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!("removed stale {}", entry.path().display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}
