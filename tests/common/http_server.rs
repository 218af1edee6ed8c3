//! A small HTTP binary-cache server for tests, with failure injection.
//!
//! It serves a directory on 127.0.0.1 (port 0, or a listener you bound): GET and HEAD
//! answer with the file (404 if missing), PUT stores the body atomically (temp file +
//! rename, parents created) and answers 201. Every request is logged (method, raw path,
//! headers). Per path you can force behaviours:
//!
//! * [`TestServer::set_behaviour`]: applies to every request for the path;
//! * [`TestServer::queue_behaviours`]: one per request, in order, before the set one;
//! * [`TestServer::require_authorization`]: 401 unless `Authorization` matches.
//!
//! Paths are the raw request paths with their leading `/` (one is added if missing).
//! Use it from a test file with `#[path = "common/http_server.rs"] mod http_server;`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the server does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Serve the file or store the upload.
    Normal,
    /// Answer with this status and an empty body.
    Status(u16),
    /// Never answer (until the server is dropped).
    Hang,
    /// Send the headers (full Content-Length) and the first N bytes, then drop the
    /// connection.
    DropAfter(usize),
    /// Send the headers and the first N bytes, then send nothing more (connection open).
    StallAfter(usize),
    /// Send the body `chunk` bytes at a time, waiting `interval` before each chunk.
    Trickle { chunk: usize, interval: Duration },
    /// Answer 200 with these bytes instead of the file (GET/HEAD only).
    Body(Bytes),
    /// Answer 302 with this `Location`.
    Redirect(String),
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// The raw request path, e.g. `/nar/x.nar.xz`.
    pub path: String,
    /// The raw query after `?`, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Shared {
    dir: PathBuf,
    set: Mutex<HashMap<String, Behaviour>>,
    queued: Mutex<HashMap<String, VecDeque<Behaviour>>>,
    authorization: Mutex<Option<String>>,
    log: Mutex<Vec<RecordedRequest>>,
}

/// A running test server; stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn normalise(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

impl TestServer {
    /// Serves `dir` on 127.0.0.1 with a port chosen by the OS.
    pub async fn start(dir: impl Into<PathBuf>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_on(listener, dir).await
    }

    /// Serves `dir` on an already bound listener.
    pub async fn start_on(listener: TcpListener, dir: impl Into<PathBuf>) -> TestServer {
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            dir: dir.into(),
            ..Shared::default()
        });
        let (shutdown, mut stopped) = watch::channel(false);
        let app = Router::new()
            .fallback(handle)
            .with_state((Arc::clone(&shared), shutdown.subscribe()));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        TestServer {
            url: format!("http://{addr}"),
            addr,
            shared,
            shutdown,
            task,
        }
    }

    /// The served directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Applies `b` to every later request for `path` (after any queued ones).
    pub fn set_behaviour(&self, path: &str, b: Behaviour) {
        lock(&self.shared.set).insert(normalise(path), b);
    }

    /// Applies these, one per request, to the next requests for `path`.
    pub fn queue_behaviours(&self, path: &str, bs: impl IntoIterator<Item = Behaviour>) {
        lock(&self.shared.queued)
            .entry(normalise(path))
            .or_default()
            .extend(bs);
    }

    /// The next `n` requests for `path` get `status`.
    pub fn fail_times(&self, path: &str, status: u16, n: usize) {
        self.queue_behaviours(path, std::iter::repeat_n(Behaviour::Status(status), n));
    }

    /// Forgets all set and queued behaviours.
    pub fn clear_behaviours(&self) {
        lock(&self.shared.set).clear();
        lock(&self.shared.queued).clear();
    }

    /// With `Some(v)`, requests whose `Authorization` header is not exactly `v` get 401.
    pub fn require_authorization(&self, value: Option<&str>) {
        *lock(&self.shared.authorization) = value.map(str::to_owned);
    }

    /// Every request so far: method and raw path.
    pub fn requests(&self) -> Vec<(Method, String)> {
        lock(&self.shared.log)
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    }

    /// Every request so far, with headers.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    /// How many `method` requests for `path` were made.
    pub fn count(&self, method: &Method, path: &str) -> usize {
        let path = normalise(path);
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.method == *method && r.path == path)
            .count()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

type AppState = (Arc<Shared>, watch::Receiver<bool>);

fn status(code: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn handle(
    State((shared, stopped)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().to_owned();
    lock(&shared.log).push(RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers: headers.clone(),
    });
    if let Some(required) = lock(&shared.authorization).clone() {
        let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if given != Some(required.as_bytes()) {
            return status(401);
        }
    }
    let behaviour = {
        let queued = lock(&shared.queued)
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        queued
            .or_else(|| lock(&shared.set).get(&path).cloned())
            .unwrap_or(Behaviour::Normal)
    };
    match behaviour {
        Behaviour::Status(code) => return status(code),
        Behaviour::Redirect(location) => {
            let mut r = status(302);
            if let Ok(v) = header::HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Behaviour::Hang => {
            wait_for_shutdown(stopped).await;
            return status(503);
        }
        _ => {}
    }
    let Some(file) = local_path(&shared.dir, &path) else {
        return status(400);
    };
    match method {
        Method::GET | Method::HEAD => serve(&method, &file, behaviour, stopped),
        Method::PUT => match store(&file, body).await {
            Ok(()) => status(201),
            Err(_) => status(500),
        },
        _ => status(405),
    }
}

async fn wait_for_shutdown(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The file for a request path: percent-decoded, no `.`/`..`/empty components.
fn local_path(dir: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path.strip_prefix('/')?)?;
    let mut out = dir.to_path_buf();
    for component in decoded.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return None;
        }
        out.push(component);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn serve(
    method: &Method,
    file: &Path,
    behaviour: Behaviour,
    stopped: watch::Receiver<bool>,
) -> Response {
    let data = match behaviour {
        Behaviour::Body(ref bytes) => bytes.clone(),
        _ => match std::fs::read(file) {
            Ok(data) => Bytes::from(data),
            Err(_) => return status(404),
        },
    };
    let len = data.len();
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        match behaviour {
            Behaviour::DropAfter(n) => {
                let first = data.slice(..n.min(len));
                // Wait a little before failing, so the headers and bytes go out first.
                let drop = futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Bytes, io::Error>(io::Error::other("injected connection drop"))
                });
                let first = futures_util::stream::iter([Ok::<Bytes, io::Error>(first)]);
                Body::from_stream(first.chain(drop))
            }
            Behaviour::StallAfter(n) => {
                let first = data.slice(..n.min(len));
                let stall = futures_util::stream::once(async move {
                    wait_for_shutdown(stopped).await;
                    Err::<Bytes, io::Error>(io::Error::other("server stopped"))
                });
                let first = futures_util::stream::iter([Ok::<Bytes, io::Error>(first)]);
                Body::from_stream(first.chain(stall))
            }
            Behaviour::Trickle { chunk, interval } => {
                let chunk = chunk.max(1);
                let pieces: Vec<Bytes> = (0..len)
                    .step_by(chunk)
                    .map(|start| data.slice(start..len.min(start + chunk)))
                    .collect();
                let stream = futures_util::stream::iter(pieces).then(move |piece| async move {
                    tokio::time::sleep(interval).await;
                    Ok::<Bytes, io::Error>(piece)
                });
                Body::from_stream(stream)
            }
            _ => Body::from(data),
        }
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}

/// Stores an upload atomically.
async fn store(file: &Path, body: Body) -> io::Result<()> {
    let data = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(io::Error::other)?;
    let dir = file.parent().ok_or_else(|| io::Error::other("no parent"))?;
    std::fs::create_dir_all(dir)?;
    let temp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(temp.path(), &data)?;
    temp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// A [`TestServer`] with a runtime of its own, for tests that drive the `store` binary
/// synchronously.
pub struct BlockingServer {
    pub server: TestServer,
    _rt: tokio::runtime::Runtime,
}

impl BlockingServer {
    pub fn serve(dir: &Path) -> BlockingServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(TestServer::start(dir));
        BlockingServer { server, _rt: rt }
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// Paths requested with `method`, in order.
    pub fn paths(&self, method: &Method) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p)
            .collect()
    }

    /// Every request (any method) under `/nar/`.
    pub fn nar_requests(&self) -> Vec<String> {
        self.server
            .requests()
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.starts_with("/nar/"))
            .collect()
    }

    /// GET requests under `/nar/`.
    pub fn nar_gets(&self) -> Vec<String> {
        self.paths(&Method::GET)
            .into_iter()
            .filter(|p| p.starts_with("/nar/"))
            .collect()
    }
}
