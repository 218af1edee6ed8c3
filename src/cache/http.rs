//! `http(s)://` caches: GET, HEAD and PUT with reqwest (rustls, one pooled client per
//! cache, TCP_NODELAY, redirects followed), answering like the Nix 2.8 client
//! (store-format.md §7.2, HTTP):
//!
//! | status | result |
//! |---|---|
//! | 2xx | success |
//! | 404, 410 | absent |
//! | 401, 403, 407 | absent, logged at info level (S3 answers 403 for missing keys) |
//! | 408, 429, 5xx except 501/505/511; connection errors, timeouts | retried |
//! | anything else | fatal at once |
//!
//! Retries: `attempts` tries in total, waiting `backoff_base · 2^(n-1 + rand[0,0.5))`
//! before try n+1, then [`CacheError::GaveUp`]. A PUT of a file re-opens it for each try.
//! Bodies read from a stream are not retried once handed out (the caller may have used
//! part of them); [`HttpCache::get_bytes`] buffers small objects and so retries them whole.
//!
//! Timeouts: connecting is bounded by `connect_timeout`; waiting for response headers,
//! each body chunk of a GET and the upload progress of a PUT by `stall_timeout`; a whole
//! small-object request (HEAD, `get_bytes`) by `request_timeout` per try.
//!
//! Auth: `Authorization: Bearer <token>` if a token is configured, else basic auth from
//! the URL's `user:password@`, else from the netrc entry for the host. reqwest drops the
//! header when a redirect leaves the host. Credentials never appear in errors or logs.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use tokio_util::io::ReaderStream;
use url::Url;

use super::error::{classify_status, StatusClass};
use super::netrc::{Netrc, Secret};
use super::{
    collect_limited, Backend, ByteStream, CacheError, CacheUrl, ClientOptions, ObjectKey, PutBody,
};
use crate::error_chain::Chain;

/// Upload chunk size.
const CHUNK: usize = 64 * 1024;

/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

enum Auth {
    None,
    Bearer(Secret),
    Basic {
        user: String,
        password: Option<Secret>,
    },
}

/// A cache on an HTTP(S) server.
pub struct HttpCache {
    url: CacheUrl,
    /// No credentials, query or fragment.
    base: Url,
    client: reqwest::Client,
    auth: Auth,
    stall_timeout: Duration,
    request_timeout: Duration,
    attempts: u32,
    backoff_base: Duration,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Bearer(_) => "bearer",
            Auth::Basic { .. } => "basic",
        };
        f.debug_struct("HttpCache")
            .field("url", &self.url)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl HttpCache {
    /// Sets up the client; reads the netrc file if one is configured and needed.
    pub fn new(url: CacheUrl, opts: &ClientOptions) -> Result<Self, CacheError> {
        let auth = auth_for(&url, opts)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("store/", env!("CARGO_PKG_VERSION")));
        if url.scheme() == "http" {
            // No system roots for a plain-HTTP cache: loading them parses every file in
            // /etc/ssl/certs, about 5 ms per process (each `store cargo` unit is one). A
            // redirect to https then fails verification, closed.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let client = builder.build().map_err(CacheError::Client)?;
        Ok(HttpCache {
            base: url.http_base(),
            url,
            client,
            auth,
            stall_timeout: opts.stall_timeout,
            request_timeout: opts.request_timeout,
            attempts: opts.attempts.max(1),
            backoff_base: opts.backoff_base,
        })
    }

    pub fn url(&self) -> &CacheUrl {
        &self.url
    }

    /// The URL of an object to read: its path under the cache's, with the key's query if
    /// any.
    fn object_url(&self, key: &str) -> Result<Url, CacheError> {
        self.url_of(ObjectKey::parse(key)?)
    }

    fn url_of(&self, key: ObjectKey<'_>) -> Result<Url, CacheError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CacheError::invalid_key(key.path(), "the cache URL cannot take a path"))?
            .pop_if_empty()
            .extend(key.path().split('/'));
        url.set_query(key.query());
        Ok(url)
    }

    fn request(&self, method: Method, url: &Url) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, url.clone());
        match &self.auth {
            Auth::None => builder,
            Auth::Bearer(token) => builder.bearer_auth(token.expose()),
            Auth::Basic { user, password } => {
                builder.basic_auth(user, password.as_ref().map(Secret::expose))
            }
        }
    }

    /// The object's bytes, or `None`; over `limit` bytes is [`CacheError::TooLarge`].
    /// Each try, body included, is bounded by `request_timeout`; failures while reading
    /// the body are retried like the others.
    pub async fn get_bytes(&self, key: &str, limit: usize) -> Result<Option<Bytes>, CacheError> {
        let url = &self.object_url(key)?;
        let cache = &self.url.to_string();
        let this = self;
        self.retrying(move || async move {
            let attempt = async {
                let Some(resp) = this.get_once(url).await? else {
                    return Ok(None);
                };
                if resp.content_length().is_some_and(|n| n > limit as u64) {
                    return Err(CacheError::TooLarge {
                        cache: cache.clone(),
                        key: key.to_owned(),
                        limit,
                    });
                }
                let stream = this.body_stream(url, resp);
                collect_limited(stream, cache, key, limit).await.map(Some)
            };
            tokio::time::timeout(this.request_timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(timed_out("GET", url, this.request_timeout)))
        })
        .await
    }

    /// One GET, up to the response headers.
    async fn get_once(&self, url: &Url) -> Result<Option<Response>, CacheError> {
        let send = self.request(Method::GET, url).send();
        let resp = match tokio::time::timeout(self.stall_timeout, send).await {
            Err(_) => return Err(stalled("GET", url, self.stall_timeout)),
            Ok(Err(e)) => return Err(transport("GET", url.as_str(), e)),
            Ok(Ok(resp)) => resp,
        };
        Ok(self.found("GET", url, resp.status())?.then_some(resp))
    }

    /// `Ok(true)` for success, `Ok(false)` for absent, else the error.
    fn found(
        &self,
        method: &'static str,
        url: &Url,
        status: StatusCode,
    ) -> Result<bool, CacheError> {
        match classify_status(status.as_u16()) {
            StatusClass::Success => Ok(true),
            StatusClass::Absent => Ok(false),
            StatusClass::Denied => {
                tracing::info!(
                    "{method} {url}: treating HTTP {} as absent, as Nix does",
                    status.as_u16()
                );
                Ok(false)
            }
            StatusClass::Transient | StatusClass::Fatal => Err(status_error(method, url, status)),
        }
    }

    /// The response body as a stream that fails when no chunk arrives for
    /// `stall_timeout`, and ends after its first error.
    fn body_stream(&self, url: &Url, resp: Response) -> ByteStream {
        let stall = self.stall_timeout;
        let url = Arc::new(url.clone());
        let body = Box::pin(resp.bytes_stream());
        Box::pin(futures_util::stream::unfold(Some(body), move |state| {
            let url = Arc::clone(&url);
            async move {
                let mut body = state?;
                match tokio::time::timeout(stall, body.next()).await {
                    Ok(None) => None,
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(Some(Err(e))) => {
                        let e = transport("GET", url.as_str(), e);
                        Some((Err(io::Error::other(e)), None))
                    }
                    Err(_) => {
                        let e = stalled("GET", &url, stall);
                        Some((Err(io::Error::new(io::ErrorKind::TimedOut, e)), None))
                    }
                }
            }
        }))
    }

    async fn head_once(&self, url: &Url) -> Result<bool, CacheError> {
        let send = self.request(Method::HEAD, url).send();
        match tokio::time::timeout(self.request_timeout, send).await {
            Err(_) => Err(timed_out("HEAD", url, self.request_timeout)),
            Ok(Err(e)) => Err(transport("HEAD", url.as_str(), e)),
            Ok(Ok(resp)) => self.found("HEAD", url, resp.status()),
        }
    }

    async fn put_once(
        &self,
        url: &Url,
        body: &PutBody,
        content_type: &'static str,
    ) -> Result<(), CacheError> {
        let (len, stream): (u64, ByteStream) = match body {
            PutBody::Bytes(bytes) => (bytes.len() as u64, chunks(bytes.clone())),
            PutBody::File(path) => {
                let reading = |e| CacheError::io(format!("reading {}", path.display()), e);
                let file = tokio::fs::File::open(path).await.map_err(reading)?;
                let len = file.metadata().await.map_err(reading)?.len();
                (len, Box::pin(ReaderStream::with_capacity(file, CHUNK)))
            }
        };
        let progress = Arc::new(Progress::new());
        let seen = Arc::clone(&progress);
        let stream = stream.inspect(move |_| seen.touch());
        let send = self
            .request(Method::PUT, url)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        let mut send = std::pin::pin!(send);
        let tick =
            (self.stall_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        let resp = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = ticker.tick() => {
                    if progress.idle() >= self.stall_timeout {
                        return Err(stalled("PUT", url, self.stall_timeout));
                    }
                }
            }
        };
        let resp = resp.map_err(|e| transport("PUT", url.as_str(), e))?;
        let status = resp.status();
        match classify_status(status.as_u16()) {
            StatusClass::Success => Ok(()),
            _ => Err(status_error("PUT", url, status)),
        }
    }

    /// Runs `op` up to `attempts` times while it fails transiently.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, CacheError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CacheError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    if attempt >= self.attempts {
                        return Err(if attempt > 1 {
                            CacheError::GaveUp {
                                attempts: attempt,
                                last: Box::new(e),
                            }
                        } else {
                            e
                        });
                    }
                    let delay = backoff_delay(self.backoff_base, attempt, jitter());
                    tracing::warn!("{}; retrying in {} ms", Chain(&e), delay.as_millis());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl Backend for HttpCache {
    async fn get(&self, key: &str) -> Result<Option<ByteStream>, CacheError> {
        let url = &self.object_url(key)?;
        let this = self;
        let resp = self.retrying(move || this.get_once(url)).await?;
        Ok(resp.map(|resp| self.body_stream(url, resp)))
    }

    async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        let url = &self.object_url(key)?;
        let this = self;
        self.retrying(move || this.head_once(url)).await
    }

    async fn put(
        &self,
        key: &str,
        body: PutBody,
        content_type: &'static str,
    ) -> Result<(), CacheError> {
        let url = &self.url_of(ObjectKey::parse_for_writing(key)?)?;
        let body = &body;
        let this = self;
        self.retrying(move || this.put_once(url, body, content_type))
            .await
    }
}

/// The auth to use: bearer token, URL credentials, netrc, in that order.
fn auth_for(url: &CacheUrl, opts: &ClientOptions) -> Result<Auth, CacheError> {
    if let Some(token) = &opts.bearer_token {
        return Ok(Auth::Bearer(Secret::new(token.clone())));
    }
    if let Some((user, password)) = url.credentials() {
        return Ok(Auth::Basic {
            user,
            password: password.map(Secret::new),
        });
    }
    let (Some(path), Some(host)) = (&opts.netrc_file, url.host()) else {
        return Ok(Auth::None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CacheError::io(format!("reading {}", path.display()), e))?;
    let netrc = Netrc::parse(&text).map_err(|source| CacheError::Netrc {
        path: path.clone(),
        source,
    })?;
    Ok(match netrc.credentials_for(host) {
        Some(c) => Auth::Basic {
            user: c.login,
            password: c.password,
        },
        None => Auth::None,
    })
}

/// The bytes as a stream of chunks, so uploads report progress.
fn chunks(bytes: Bytes) -> ByteStream {
    let len = bytes.len();
    let pieces = (0..len)
        .step_by(CHUNK)
        .map(move |start| Ok(bytes.slice(start..len.min(start + CHUNK))));
    Box::pin(futures_util::stream::iter(pieces))
}

/// When an upload last made progress.
struct Progress {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// `base · 2^(attempt - 1 + jitter/2)`, at most [`MAX_BACKOFF`]; `jitter` in [0, 1).
fn backoff_delay(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let exponent = f64::from(attempt.saturating_sub(1).min(30)) + jitter.clamp(0.0, 1.0) / 2.0;
    let secs = base.as_secs_f64() * exponent.exp2();
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// A random number in [0, 1), from the std hasher's random keys.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn transport(method: &'static str, url: &str, e: reqwest::Error) -> CacheError {
    CacheError::Transport {
        method,
        url: url.to_owned(),
        source: e.without_url(),
    }
}

fn status_error(method: &'static str, url: &Url, status: StatusCode) -> CacheError {
    CacheError::Status {
        method,
        url: url.to_string(),
        status: status.as_u16(),
    }
}

fn stalled(method: &'static str, url: &Url, after: Duration) -> CacheError {
    CacheError::Stalled {
        method,
        url: url.to_string(),
        secs: after.as_secs_f64(),
    }
}

fn timed_out(method: &'static str, url: &Url, after: Duration) -> CacheError {
    CacheError::TimedOut {
        method,
        url: url.to_string(),
        secs: after.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(url: &str) -> HttpCache {
        let opts = ClientOptions {
            netrc_file: None,
            ..ClientOptions::default()
        };
        HttpCache::new(url.parse().unwrap(), &opts).unwrap()
    }

    #[test]
    fn object_urls() {
        let c = cache("https://u:p@cache.example.org/base/?priority=3");
        let u = c.object_url("nar/x.nar.xz").unwrap();
        assert_eq!(u.as_str(), "https://cache.example.org/base/nar/x.nar.xz");
        let u = c.object_url("realisations/sha256:ab!out.doi").unwrap();
        assert_eq!(
            u.as_str(),
            "https://cache.example.org/base/realisations/sha256:ab!out.doi"
        );
        let u = c.object_url("100% sure.nar").unwrap();
        assert_eq!(
            u.as_str(),
            "https://cache.example.org/base/100%25%20sure.nar"
        );
        let c = cache("http://127.0.0.1:8080");
        let u = c.object_url("nix-cache-info").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/nix-cache-info");
        assert!(c.object_url("../x").is_err());
        // A narinfo URL with a query (harmonia's) keeps it; percent signs are escaped.
        let u = c.object_url("nar/a.nar?hash=a").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/nar/a.nar?hash=a");
        assert!(!format!("{c:?}").contains("u:p"));
    }

    #[test]
    fn backoff_follows_nix() {
        let base = Duration::from_millis(250);
        assert_eq!(backoff_delay(base, 1, 0.0), base);
        assert_eq!(backoff_delay(base, 3, 0.0), Duration::from_millis(1000));
        let high = backoff_delay(base, 2, 0.999_999);
        assert!(high > Duration::from_millis(700) && high < Duration::from_millis(708));
        assert_eq!(backoff_delay(base, 1000, 0.5), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn auth_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let netrc = dir.path().join("netrc");
        std::fs::write(&netrc, "machine h login n password np\n").unwrap();
        let opts = |token: Option<&str>| ClientOptions {
            netrc_file: Some(netrc.clone()),
            bearer_token: token.map(str::to_owned),
            ..ClientOptions::default()
        };
        let kind = |url: &str, o: &ClientOptions| match auth_for(&url.parse().unwrap(), o).unwrap()
        {
            Auth::None => "none".to_owned(),
            Auth::Bearer(t) => format!("bearer {}", t.expose()),
            Auth::Basic { user, .. } => format!("basic {user}"),
        };
        assert_eq!(kind("http://h/", &opts(Some("t"))), "bearer t");
        assert_eq!(kind("http://u:p@h/", &opts(None)), "basic u");
        assert_eq!(kind("http://h/", &opts(None)), "basic n");
        assert_eq!(kind("http://other/", &opts(None)), "none");
        std::fs::write(&netrc, "machine h login n password np oops\n").unwrap();
        let e = auth_for(&"http://h/".parse().unwrap(), &opts(None))
            .err()
            .unwrap();
        assert!(matches!(e, CacheError::Netrc { .. }), "{e:?}");
    }
}
