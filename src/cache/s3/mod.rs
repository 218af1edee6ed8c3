//! `s3://` caches: a bucket (and optional prefix) of an S3-compatible object store, through
//! the `object_store` crate (store-format.md §7.5).
//!
//! * Reads: GET streams with a stall timeout and no total one; a body cut off mid-way is
//!   resumed by the library with a ranged GET of the same ETag, so a large NAR is not
//!   fetched again from the start. HEAD for existence. Absent objects are `Ok(None)`; so is
//!   403 when requests go unsigned, because a public bucket answers 403 for missing keys.
//! * Writes: files up to `part-size` bytes go up in one PUT, larger ones as a multipart
//!   upload of `part-size` parts. File data held in memory is bounded per cache, whatever
//!   the number of concurrent uploads: every buffer read from a file takes its size from a
//!   budget of `part-size · upload-parts` bytes until its request ends. An upload that
//!   fails is aborted, so it leaves no parts behind. Each object gets its Content-Type and a Cache-Control ([`cache_control`]).
//! * Retries: 5xx, 429, SlowDown and connection errors are retried by the library with
//!   exponential backoff and jitter ([`crate::cache::ClientOptions`] sets tries and base).
//! * Create-only writes are not relied on: Garage and rclone accept `If-None-Match: *` and
//!   overwrite anyway. Correctness comes from the write order of push (NAR, then narinfo
//!   in reference order) and content-addressed NAR names.

mod config;

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions as StoreOptions, GetOptions,
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    RetryConfig,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Backend, ByteStream, CacheError, CacheUrl, ClientOptions, ObjectKey, PutBody};
pub use config::{CredentialSource, Credentials, S3Config, S3ConfigError};

/// `Cache-Control` of NARs: their names are their content hashes, so they never change.
pub const NAR_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The `Cache-Control` an object gets: NARs (under `nar/`) are immutable; everything else
/// (narinfos, `nix-cache-info`, listings, logs) may change and lives `max_age` seconds.
pub fn cache_control(key: &str, max_age: u32) -> String {
    if key.starts_with("nar/") {
        NAR_CACHE_CONTROL.to_owned()
    } else {
        format!("public, max-age={max_age}")
    }
}

/// A cache in an S3 bucket.
pub struct S3Cache {
    url: CacheUrl,
    config: S3Config,
    store: AmazonS3,
    request_timeout: Duration,
    /// The budget of file bytes in memory, in units of [`BUFFER_UNIT`].
    buffers: Arc<Semaphore>,
}

/// The unit of [`S3Cache::buffers`].
const BUFFER_UNIT: usize = 64 << 10;

impl std::fmt::Debug for S3Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Cache")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl S3Cache {
    /// Reads the URL, the environment and the AWS profile files; no network I/O.
    pub fn new(url: CacheUrl, opts: &ClientOptions) -> Result<Self, CacheError> {
        let config = S3Config::resolve(&url, &config::process_env).map_err(|source| {
            CacheError::S3Config {
                cache: url.to_string(),
                source,
            }
        })?;
        let store = build_store(&config, opts).map_err(|source| CacheError::S3 {
            method: "SETUP",
            url: url.to_string(),
            source,
        })?;
        let budget = config.part_size * config.upload_parts / BUFFER_UNIT;
        Ok(S3Cache {
            url,
            config,
            store,
            request_timeout: opts.request_timeout,
            buffers: Arc::new(Semaphore::new(budget)),
        })
    }

    pub fn url(&self) -> &CacheUrl {
        &self.url
    }

    /// Waits until `len` more bytes of file data may be held (at most a part).
    async fn buffer(&self, len: usize) -> OwnedSemaphorePermit {
        let units = len.div_ceil(BUFFER_UNIT).max(1) as u32;
        self.buffers
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the buffer budget is never closed")
    }

    /// The object name of a key: `<prefix>/<path>`; a read key's query is ignored.
    fn location(&self, key: ObjectKey<'_>) -> Result<Path, CacheError> {
        let name = if self.config.prefix.is_empty() {
            key.path().to_owned()
        } else {
            format!("{}/{}", self.config.prefix, key.path())
        };
        Path::parse(&name)
            .map_err(|_| CacheError::invalid_key(key.path(), "not a valid S3 object name"))
    }

    /// The object's URL in messages: the cache URL without parameters, then the key.
    fn object_url(&self, key: &str) -> String {
        format!("{}/{}", self.url.without_params(), key)
    }

    fn error(&self, method: &'static str, key: &str, source: object_store::Error) -> CacheError {
        CacheError::S3 {
            method,
            url: self.object_url(key),
            source,
        }
    }

    fn timed_out(&self, method: &'static str, key: &str) -> CacheError {
        CacheError::TimedOut {
            method,
            url: self.object_url(key),
            secs: self.request_timeout.as_secs_f64(),
        }
    }

    /// Whether an error means the object is not there (see the module docs on 403).
    fn is_absent(&self, e: &object_store::Error) -> bool {
        match e {
            object_store::Error::NotFound { .. } => true,
            object_store::Error::PermissionDenied { .. } => {
                self.config.credentials == CredentialSource::Anonymous
            }
            _ => false,
        }
    }

    /// Runs a request that must answer within the request timeout.
    async fn timed<T>(
        &self,
        method: &'static str,
        key: &str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<object_store::Result<T>, CacheError> {
        tokio::time::timeout(self.request_timeout, fut)
            .await
            .map_err(|_| self.timed_out(method, key))
    }

    fn attributes(&self, key: &str, content_type: &'static str) -> Attributes {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.into());
        attributes.insert(
            Attribute::CacheControl,
            cache_control(key, self.config.narinfo_max_age).into(),
        );
        attributes
    }

    /// A multipart upload of `file` (`size` bytes), aborted if any part, the read or the
    /// completion fails.
    async fn put_parts(
        &self,
        key: &str,
        location: &Path,
        file: &FsPath,
        size: u64,
        attributes: Attributes,
    ) -> Result<(), CacheError> {
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let start = self.store.put_multipart_opts(location, opts);
        let mut upload = match self.timed("POST", key, start).await? {
            Ok(upload) => upload,
            Err(e) => return Err(self.error("POST", key, e)),
        };
        let sent = self.send_parts(key, &mut upload, file).await;
        let finished = match sent {
            Ok(()) => match self.timed("POST", key, upload.complete()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => self.error("POST", key, e),
                Err(timeout) => timeout,
            },
            Err(e) => e,
        };
        if let Err(e) = upload.abort().await {
            tracing::warn!(key, error = %crate::error_chain::Chain(&e), "could not abort a failed multipart upload");
        }
        if self.written_by_another(key, location, size).await {
            return Ok(());
        }
        Err(finished)
    }

    /// Whether a failed upload of a NAR lost only a race: NAR names are the hashes of their
    /// bytes (§7.1), so an object now at the key with the file's `size` is the same object,
    /// completed by another writer. Garage, for one, drops an unfinished multipart upload
    /// when another upload of the same key completes.
    async fn written_by_another(&self, key: &str, location: &Path, size: u64) -> bool {
        if !key.starts_with("nar/") {
            return false;
        }
        let Ok(Ok(meta)) = self.timed("HEAD", key, self.store.head(location)).await else {
            return false;
        };
        if meta.size == size {
            tracing::debug!(key, "another writer completed the same NAR first");
        }
        meta.size == size
    }

    /// Reads `file` in parts and uploads them, at most `upload-parts` at a time. Each part
    /// runs as its own task, so parts in flight progress (and give their budget back)
    /// while this upload waits for budget; dropping the set cancels them.
    async fn send_parts(
        &self,
        key: &str,
        upload: &mut Box<dyn MultipartUpload>,
        file: &FsPath,
    ) -> Result<(), CacheError> {
        let part_size = self.config.part_size;
        let mut reader = open(file).await?;
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.len() >= self.config.upload_parts {
                self.part_done(key, in_flight.join_next().await)?;
            }
            let permit = self.buffer(part_size).await;
            let part = read_part(&mut reader, part_size, file).await?;
            if part.is_empty() {
                break;
            }
            let last = part.len() < part_size;
            let put = upload.put_part(PutPayload::from(part));
            let timeout = self.request_timeout;
            in_flight.spawn(async move {
                let done = tokio::time::timeout(timeout, put).await;
                drop(permit);
                done
            });
            if last {
                break;
            }
        }
        while let Some(done) = in_flight.join_next().await {
            self.part_done(key, Some(done))?;
        }
        Ok(())
    }

    fn part_done(&self, key: &str, done: Option<PartResult>) -> Result<(), CacheError> {
        match done {
            None | Some(Ok(Ok(Ok(())))) => Ok(()),
            Some(Ok(Ok(Err(e)))) => Err(self.error("PUT", key, e)),
            Some(Ok(Err(_))) => Err(self.timed_out("PUT", key)),
            Some(Err(join)) => Err(CacheError::Task(join)),
        }
    }
}

/// How a part's task ended.
type PartResult =
    Result<Result<object_store::Result<()>, tokio::time::error::Elapsed>, tokio::task::JoinError>;

impl Backend for S3Cache {
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, CacheError> {
        let location = self.location(ObjectKey::parse(key)?)?;
        let result = match self
            .timed(
                "GET",
                key,
                self.store.get_opts(&location, GetOptions::default()),
            )
            .await?
        {
            Ok(result) => result,
            Err(e) if self.is_absent(&e) => return Ok(None),
            Err(e) => return Err(self.error("GET", key, e)),
        };
        let url = self.object_url(key);
        let stream = result.into_stream().map(move |chunk| {
            chunk.map_err(|source| {
                std::io::Error::other(CacheError::S3 {
                    method: "GET",
                    url: url.clone(),
                    source,
                })
            })
        });
        Ok(Some(Box::pin(stream)))
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        let location = self.location(ObjectKey::parse(key)?)?;
        match self.timed("HEAD", key, self.store.head(&location)).await? {
            Ok(_) => Ok(true),
            Err(e) if self.is_absent(&e) => Ok(false),
            Err(e) => Err(self.error("HEAD", key, e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        content_type: &'static str,
    ) -> Result<(), CacheError> {
        let location = self.location(ObjectKey::parse_for_writing(key)?)?;
        let attributes = self.attributes(key, content_type);
        let (bytes, _permit) = match body {
            PutBody::Bytes(bytes) => (bytes, None),
            PutBody::File(file) => {
                let size = file_size(&file).await?;
                if size > self.config.part_size as u64 {
                    return self
                        .put_parts(key, &location, &file, size, attributes)
                        .await;
                }
                let permit = self.buffer(size as usize).await;
                (read_file(&file, size).await?, Some(permit))
            }
        };
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let put = self
            .store
            .put_opts(&location, PutPayload::from(bytes), opts);
        match self.timed("PUT", key, put).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error("PUT", key, e)),
        }
    }
}

/// The object_store client for a config: timeouts and retries from `opts`.
fn build_store(config: &S3Config, opts: &ClientOptions) -> object_store::Result<AmazonS3> {
    let insecure = config
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let client = StoreOptions::new()
        .with_connect_timeout(opts.connect_timeout)
        .with_read_timeout(opts.stall_timeout)
        .with_timeout_disabled()
        .with_pool_idle_timeout(Duration::from_secs(60))
        .with_allow_http(insecure)
        // As for plain-HTTP caches (cache/http.rs): no system roots to load.
        .with_no_system_certificates(insecure)
        .with_allow_http2()
        .with_user_agent(
            concat!("store/", env!("CARGO_PKG_VERSION"))
                .parse()
                .expect("valid header"),
        );
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: opts.backoff_base,
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: opts.attempts.max(1) as usize - 1,
        retry_timeout: Duration::from_secs(180),
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(config.virtual_hosted)
        .with_client_options(client)
        .with_retry(retry);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder =
        match &config.credentials {
            CredentialSource::Static(c) => {
                let b = builder
                    .with_access_key_id(&c.key_id)
                    .with_secret_access_key(&c.secret);
                match &c.token {
                    Some(token) => b.with_token(token),
                    None => b,
                }
            }
            CredentialSource::Exchanged(vars) => vars.iter().fold(builder, |b, (name, value)| {
                match name.to_ascii_lowercase().parse() {
                    Ok(key) => b.with_config(key, value),
                    Err(_) => b,
                }
            }),
            CredentialSource::Anonymous => builder.with_skip_signature(true),
        };
    builder.build()
}

async fn file_size(file: &FsPath) -> Result<u64, CacheError> {
    tokio::fs::metadata(file)
        .await
        .map(|m| m.len())
        .map_err(|e| CacheError::io(format!("cannot stat '{}'", file.display()), e))
}

async fn open(file: &FsPath) -> Result<tokio::fs::File, CacheError> {
    tokio::fs::File::open(file)
        .await
        .map_err(|e| CacheError::io(format!("cannot open '{}'", file.display()), e))
}

async fn read_file(file: &FsPath, size: u64) -> Result<Bytes, CacheError> {
    read_part(&mut open(file).await?, size as usize, file).await
}

/// Up to `size` bytes: fewer only at the end of the file.
async fn read_part(
    reader: &mut tokio::fs::File,
    size: usize,
    file: &FsPath,
) -> Result<Bytes, CacheError> {
    let mut buf = BytesMut::zeroed(size);
    let mut filled = 0;
    while filled < size {
        let n = reader
            .read(&mut buf[filled..])
            .await
            .map_err(|e| CacheError::io(format!("cannot read '{}'", file.display()), e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nars_are_immutable_and_the_rest_short_lived() {
        assert_eq!(cache_control("nar/abc.nar.zst", 300), NAR_CACHE_CONTROL);
        assert_eq!(cache_control("abc.narinfo", 300), "public, max-age=300");
        assert_eq!(cache_control("nix-cache-info", 60), "public, max-age=60");
    }

    #[test]
    fn debug_shows_no_secret() {
        let url: CacheUrl = "s3://bucket/p?endpoint=http://127.0.0.1:1".parse().unwrap();
        let cache = S3Cache::new(url, &ClientOptions::default()).unwrap();
        let shown = format!("{cache:?}");
        assert!(shown.contains("s3://bucket/p"), "{shown}");
    }
}
