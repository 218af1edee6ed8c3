//! L2, cache backends: binary caches as key → object stores (`file://`, `http(s)://` and
//! `s3://`),
//! async, with the Nix 2.8 layout helpers on top (nix-cache-info, narinfo lookup) and
//! NAR compression. Uses only [`crate::format`] below it. See store-format.md §7.
//!
//! * [`Backend`]: the thin trait every backend implements: `get`, `exists`, `put`.
//! * [`Cache`]: the enum over our backends, opened from a [`CacheUrl`], with the helpers
//!   [`Cache::cache_info`], [`Cache::get_bytes`], [`Cache::narinfo`],
//!   [`Cache::has_narinfo`] and [`Cache::init_for_writing`].
//! * Keys are relative object names, checked by [`ObjectKey`] on every operation; a read
//!   key may carry a query (a narinfo's `URL: nar/x.nar?hash=…`), sent by HTTP and
//!   ignored by `file://`.
//! * Absence is `Ok(None)` / `Ok(false)`, never an error; HTTP 401/403/407 count as
//!   absent, as in Nix. Transient failures are retried inside the HTTP backend.
//! * Object bodies are [`ByteStream`]s; [`blocking_reader`] turns one into an
//!   `io::Read` for sync code (NAR parsing, [`compression::decompress`]) running in
//!   `spawn_blocking`.

pub mod compression;
mod error;
pub mod file;
pub mod http;
pub mod netrc;
pub mod s3;
mod url;

use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::format::cache_info::{CacheInfo, MAX_CACHE_INFO_SIZE};
use crate::format::narinfo::{NarInfo, MAX_NARINFO_SIZE};
use crate::format::store_path::{StoreDir, StorePathHash};

pub use error::CacheError;
pub use url::{check_key, CacheUrl, ObjectKey, UrlError, MAX_KEY_LEN};

/// The key of the file at the root of every cache.
pub const CACHE_INFO_KEY: &str = "nix-cache-info";

/// MIME types Nix uses when uploading (store-format.md §7.1).
pub mod content_type {
    pub const CACHE_INFO: &str = "text/x-nix-cache-info";
    pub const NARINFO: &str = "text/x-nix-narinfo";
    pub const NAR: &str = "application/x-nix-nar";
    pub const JSON: &str = "application/json";
    pub const LOG: &str = "text/plain; charset=utf-8";
}

/// An object body being read: chunks of bytes, or an I/O error. Errors from the HTTP
/// backend carry a [`CacheError`] inside (see [`CacheError::from_stream_error`]).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// What to upload.
#[derive(Debug, Clone)]
pub enum PutBody {
    Bytes(Bytes),
    /// A file, uploaded streaming with a known length (re-opened for each retry).
    File(PathBuf),
}

/// Default of [`ClientOptions::whole_nar_max`].
pub const DEFAULT_WHOLE_NAR_MAX: u64 = 256 << 10;

/// How to talk to remote caches.
#[derive(Clone)]
pub struct ClientOptions {
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// A transfer that makes no progress for this long fails (transiently).
    pub stall_timeout: Duration,
    /// Limit for a whole request for a small object (narinfo, nix-cache-info, HEAD).
    pub request_timeout: Duration,
    /// Tries in total for transient failures (at least 1).
    pub attempts: u32,
    /// The first retry waits `backoff_base · 2^(0 + rand[0, 0.5))`, doubling after.
    pub backoff_base: Duration,
    /// Basic-auth credentials by host.
    pub netrc_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <token>`; takes precedence over netrc.
    pub bearer_token: Option<String>,
    /// Substitution fetches a NAR whose signed NarSize is at most this many bytes whole
    /// into memory, then unpacks it; larger NARs are unpacked as they stream in. 0 streams
    /// every NAR.
    pub whole_nar_max: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let netrc_file = std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".netrc"))
            .filter(|p| p.is_file());
        ClientOptions {
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            attempts: 5,
            backoff_base: Duration::from_millis(250),
            netrc_file,
            bearer_token: None,
            whole_nar_max: DEFAULT_WHOLE_NAR_MAX,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("attempts", &self.attempts)
            .field("backoff_base", &self.backoff_base)
            .field("netrc_file", &self.netrc_file)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "***"))
            .field("whole_nar_max", &self.whole_nar_max)
            .finish()
    }
}

/// A binary cache as a key → object store. Implementations check every key with
/// [`check_key`]; absence is `Ok(None)` / `Ok(false)`.
pub trait Backend: Send + Sync {
    /// The object's bytes, streamed, or `None` if absent.
    fn get(&self, key: &str)
        -> impl Future<Output = Result<Option<ByteStream>, CacheError>> + Send;

    /// Whether the object exists.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, CacheError>> + Send;

    /// Stores the object, replacing any old one. Readers see the old or the new object
    /// whole, never a part.
    fn put(
        &self,
        key: &str,
        body: PutBody,
        content_type: &'static str,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;
}

/// One of our backends, chosen by URL scheme.
#[derive(Debug)]
pub enum Cache {
    File(file::FileCache),
    Http(http::HttpCache),
    S3(s3::S3Cache),
}

impl Cache {
    /// Opens a cache: no I/O except reading the netrc file of an HTTP cache.
    pub fn open(url: &CacheUrl, opts: &ClientOptions) -> Result<Cache, CacheError> {
        if url.scheme() == "s3" {
            return Ok(Cache::S3(s3::S3Cache::new(url.clone(), opts)?));
        }
        match file::FileCache::new(url.clone()) {
            Some(c) => Ok(Cache::File(c)),
            None => Ok(Cache::Http(http::HttpCache::new(url.clone(), opts)?)),
        }
    }

    pub fn url(&self) -> &CacheUrl {
        match self {
            Cache::File(c) => c.url(),
            Cache::Http(c) => c.url(),
            Cache::S3(c) => c.url(),
        }
    }

    /// The object's bytes, or `None` if absent. Bodies over `limit` bytes are refused
    /// with [`CacheError::TooLarge`] without reading more than `limit + 1` bytes.
    pub async fn get_bytes(&self, key: &str, limit: usize) -> Result<Option<Bytes>, CacheError> {
        match self {
            Cache::File(c) => get_bytes(c, &self.url().to_string(), key, limit).await,
            Cache::Http(c) => c.get_bytes(key, limit).await,
            Cache::S3(c) => get_bytes(c, &self.url().to_string(), key, limit).await,
        }
    }

    /// The parsed `nix-cache-info`; [`CacheError::NotACache`] if there is none.
    pub async fn cache_info(&self) -> Result<CacheInfo, CacheError> {
        let cache = self.url().to_string();
        let bytes = self
            .get_bytes(CACHE_INFO_KEY, MAX_CACHE_INFO_SIZE)
            .await?
            .ok_or_else(|| CacheError::NotACache {
                cache: cache.clone(),
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CacheError::NotUtf8 {
            cache: cache.clone(),
            key: CACHE_INFO_KEY,
        })?;
        CacheInfo::parse(text).map_err(|source| CacheError::CacheInfo { cache, source })
    }

    /// GETs and parses `<hash_part>.narinfo` (at most [`MAX_NARINFO_SIZE`] bytes). Fails if
    /// the narinfo describes a path with another hash, or if its `URL` is not a valid key
    /// (so the NAR key can be used as is). The caller still compares the full store path.
    pub async fn narinfo(
        &self,
        hash_part: &str,
        store_dir: &StoreDir,
    ) -> Result<Option<NarInfo>, CacheError> {
        let key = narinfo_key(hash_part)?;
        let Some(bytes) = self.get_bytes(&key, MAX_NARINFO_SIZE).await? else {
            return Ok(None);
        };
        checked_narinfo(&bytes, hash_part, store_dir, &self.url().to_string()).map(Some)
    }

    /// Whether `<hash_part>.narinfo` exists (HEAD for HTTP, as Nix's `isValidPath`).
    pub async fn has_narinfo(&self, hash_part: &str) -> Result<bool, CacheError> {
        self.exists(&narinfo_key(hash_part)?).await
    }

    /// Makes the cache ready to receive paths for `store_dir` and returns its info. A
    /// `file://` cache gets its directory, `nar/`, `log/` and `realisations/` (like
    /// `nix copy`) and, if missing, a `nix-cache-info` of exactly `StoreDir: <dir>\n`.
    /// An HTTP cache must already have a `nix-cache-info`. Either way its store dir must
    /// be `store_dir`.
    pub async fn init_for_writing(&self, store_dir: &StoreDir) -> Result<CacheInfo, CacheError> {
        if let Cache::File(c) = self {
            c.create_layout(&["nar", "log", "realisations"]).await?;
        }
        // Like Nix, create a missing nix-cache-info (an HTTP cache may refuse the PUT, which
        // is then the error).
        let info = match self.cache_info().await {
            Err(CacheError::NotACache { .. }) => {
                let info = CacheInfo::new(store_dir.clone());
                self.put(
                    CACHE_INFO_KEY,
                    PutBody::Bytes(Bytes::from(info.to_text())),
                    content_type::CACHE_INFO,
                )
                .await?;
                info
            }
            other => other?,
        };
        if info.store_dir != *store_dir {
            return Err(CacheError::WrongStoreDir {
                cache: self.url().to_string(),
                theirs: info.store_dir.to_string(),
                ours: store_dir.to_string(),
            });
        }
        Ok(info)
    }
}

impl Backend for Cache {
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, CacheError> {
        match self {
            Cache::File(c) => c.get(key).await,
            Cache::Http(c) => c.get(key).await,
            Cache::S3(c) => c.get(key).await,
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        match self {
            Cache::File(c) => c.exists(key).await,
            Cache::Http(c) => c.exists(key).await,
            Cache::S3(c) => c.exists(key).await,
        }
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        content_type: &'static str,
    ) -> Result<(), CacheError> {
        match self {
            Cache::File(c) => c.put(key, body, content_type).await,
            Cache::Http(c) => c.put(key, body, content_type).await,
            Cache::S3(c) => c.put(key, body, content_type).await,
        }
    }
}

/// Parses the narinfo `bytes` that cache `cache` has for `hash_part`, with the checks of
/// [`Cache::narinfo`]: strict parse for `store_dir`, a path with that hash, a valid NAR key.
pub fn checked_narinfo(
    bytes: &[u8],
    hash_part: &str,
    store_dir: &StoreDir,
    cache: &str,
) -> Result<NarInfo, CacheError> {
    let key = narinfo_key(hash_part)?;
    let info = NarInfo::parse_bytes(bytes, store_dir).map_err(|source| CacheError::NarInfo {
        cache: cache.to_owned(),
        key: key.clone(),
        source,
    })?;
    if info.store_path().hash_str() != hash_part {
        return Err(CacheError::NarInfoMismatch {
            cache: cache.to_owned(),
            key,
            wanted: hash_part.to_owned(),
            got: store_dir.display_path(info.store_path()),
        });
    }
    check_key(info.url())?;
    Ok(info)
}

/// `<hash_part>.narinfo`, after checking that `hash_part` is 32 nix32 digits.
fn narinfo_key(hash_part: &str) -> Result<String, CacheError> {
    if hash_part.len() != 32 || hash_part.parse::<StorePathHash>().is_err() {
        return Err(CacheError::invalid_key(
            hash_part,
            "not a store path hash part (32 nix32 digits)",
        ));
    }
    Ok(format!("{hash_part}.narinfo"))
}

/// [`Cache::get_bytes`] for any backend; `cache` names it in errors.
pub async fn get_bytes<B: Backend>(
    backend: &B,
    cache: &str,
    key: &str,
    limit: usize,
) -> Result<Option<Bytes>, CacheError> {
    match backend.get(key).await? {
        None => Ok(None),
        Some(stream) => collect_limited(stream, cache, key, limit).await.map(Some),
    }
}

/// Reads a whole stream, refusing more than `limit` bytes.
pub(crate) async fn collect_limited(
    mut stream: ByteStream,
    cache: &str,
    key: &str,
    limit: usize,
) -> Result<Bytes, CacheError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CacheError::from_stream_error(key, e))?;
        if chunk.len() > limit - buf.len() {
            return Err(CacheError::TooLarge {
                cache: cache.to_owned(),
                key: key.to_owned(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A blocking `io::Read` over a stream, for sync code in `tokio::task::spawn_blocking`.
/// Must be called in a runtime context (an async task, or a `spawn_blocking` closure);
/// reading blocks on that runtime, so never read it on an async worker thread.
pub fn blocking_reader(stream: ByteStream) -> impl Read + Send + 'static {
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}

/// Runs blocking file system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(CacheError::Task)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narinfo_keys() {
        assert_eq!(
            narinfo_key("a8z667l486sd21m8rs058ir3b2sh8k14").unwrap(),
            "a8z667l486sd21m8rs058ir3b2sh8k14.narinfo"
        );
        for bad in [
            "",
            "a8z667l486sd21m8rs058ir3b2sh8k1",
            "a8z667l486sd21m8rs058ir3b2sh8k14x",
            "a8z667l486sd21m8rs058ir3b2sh8k1e",
            "../../../../../../../etc/passwd",
        ] {
            assert!(matches!(
                narinfo_key(bad),
                Err(CacheError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn options_debug_hides_the_token() {
        let opts = ClientOptions {
            bearer_token: Some("hunter2".into()),
            ..ClientOptions::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
        assert_eq!(opts.attempts, 5);
    }

    #[tokio::test]
    async fn collect_limited_stops_at_the_limit() {
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ];
        let s: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let e = collect_limited(s, "c", "k", 5).await.unwrap_err();
        assert!(matches!(e, CacheError::TooLarge { limit: 5, .. }));
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ];
        let s: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        assert_eq!(
            &collect_limited(s, "c", "k", 6).await.unwrap()[..],
            b"abcdef"
        );
    }

    #[tokio::test]
    async fn blocking_reader_reads_in_spawn_blocking() {
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
            Err(io::Error::other("boom")),
        ];
        let s: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let mut r = blocking_reader(s);
        let (text, err) = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 11];
            r.read_exact(&mut buf).unwrap();
            let mut rest = Vec::new();
            (buf, r.read_to_end(&mut rest).unwrap_err())
        })
        .await
        .unwrap();
        assert_eq!(&text, b"hello world");
        assert_eq!(err.to_string(), "boom");
    }
}
