//! Accepting and supervising connections: the limits that keep anonymous clients from
//! making the server unavailable by holding connections open.
//!
//! * At most [`Limits::max_connections`] connections are served at once (lowered at start
//!   to what the descriptor limit allows, see [`connection_cap`]). A connection accepted
//!   while all are taken closes the one that has waited longest for a request (in the
//!   head or idle phase), so clients that hold connections without using them cannot
//!   lock others out; if every connection is busy with a request, it waits for one to
//!   end, and clients after it wait in the kernel's listen queue (queued, not refused).
//! * Every connection is watched through the phases of HTTP/1.1 keep-alive, and closed
//!   when one lasts too long:
//!
//!   ```text
//!   phase      begins                                 closed after
//!   head       at accept, or at the first byte read   header_timeout without a complete
//!              on an idle connection                  request head
//!   handling   when the head is complete              no limit (the server's own work;
//!                                                     reading the body is paced, see pace)
//!   sending    when the handler has answered          send_timeout without a byte written
//!   idle       when the response has been sent        keep_alive_timeout without a byte read
//!   ```
//! * Request bodies must keep up a minimum rate (module `pace`).
//! * An `accept` error never ends the loop: running out of descriptors or memory pauses
//!   accepting for [`ACCEPT_PAUSE`], a connection reset before it was accepted is skipped.
//! * [`raise_fd_limit`] raises the soft `RLIMIT_NOFILE` to the hard limit (the CLI calls it
//!   at start).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::pace::{Pace, Paced};

/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`Limits::keep_alive_timeout`].
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`Limits::send_timeout`].
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Descriptors kept back from connections for everything else (the database, NAR files,
/// staged uploads, the listener).
const RESERVED_FDS: u64 = 64;
/// How often a connection waiting for a slot asks again for room.
const DISPLACE_RETRY: Duration = Duration::from_millis(100);
/// How long accepting pauses after an error that a lack of resources causes.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// How long connections may take; every field bounds what one client can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the listen queue.
    pub max_connections: usize,
    /// Time to send a complete request head (from accept, or from its first byte on a
    /// kept-alive connection).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests.
    pub keep_alive_timeout: Duration,
    /// Time a response may go without a byte written (a client that stops reading).
    pub send_timeout: Duration,
    /// The pace request bodies must keep.
    pub body: Pace,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            body: Pace::default(),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in
/// effect (`None`: unlimited).
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The most connections the current soft `RLIMIT_NOFILE` allows: two descriptors each
/// (the socket, and a NAR or upload file), after [`RESERVED_FDS`].
pub fn connection_cap() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(1),
        None => usize::MAX,
    }
}

/// Accepts and serves connections until `shutdown` completes, then stops accepting, lets
/// requests in flight finish, and returns once every connection is closed.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    // Semaphore permits are counted in u32 when taken all at once.
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(limits);
    let open = Arc::new(Registry::default());
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = loop {
            if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                break Some(slot);
            }
            // Full: make room, and again while none is made (the one asked may have
            // begun a request meanwhile).
            open.displace_longest_waiting();
            tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => break slot.ok(),
                () = tokio::time::sleep(DISPLACE_RETRY) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(slot) = slot else { break };
        let entry = open.enter();
        let (app, limits, stop) = (app.clone(), Arc::clone(&limits), stop_rx.clone());
        tokio::spawn(connection(tcp, app, limits, stop, (slot, entry)));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it is closed.
    let _ = slots.acquire_many(max as u32).await;
}

/// Logs an `accept` error, pausing after those that more attempts would only repeat.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) {
        tracing::debug!("a connection went away before it was accepted: {e}");
        return;
    }
    tracing::warn!("cannot accept connections: {e}; pausing for {ACCEPT_PAUSE:?}");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// Serves one connection until it ends, its watchdog closes it, or (after shutdown) its
/// request in flight is done.
async fn connection(
    tcp: TcpStream,
    app: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    (_slot, entry): (OwnedSemaphorePermit, Entry),
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let activity = Arc::clone(&entry.activity);
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: Arc::clone(&activity),
    });
    let service = Service {
        app,
        activity: Arc::clone(&activity),
        pace: limits.body,
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        // Our watchdog bounds the head (and hyper's timer would need a runtime timer).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let watchdog = watch_over(&activity, &limits);
    tokio::pin!(watchdog);
    let mut stopping = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            reason = &mut watchdog => {
                tracing::debug!("closing a connection: {reason}");
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is in its request cycle (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Handling,
    Sending,
    Idle,
}

/// The open connections, so that a new one can displace the one that has waited longest
/// for a request.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
}

/// A connection's place in the [`Registry`], left when dropped.
struct Entry {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Registry {
    fn enter(self: &Arc<Self>) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        self.lock().insert(id, Arc::clone(&activity));
        Entry {
            registry: Arc::clone(self),
            id,
            activity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection that has been in the head or idle phase the longest to close.
    fn displace_longest_waiting(&self) {
        let open = self.lock();
        let waiting = open
            .values()
            .filter(|a| !a.displaced.load(Ordering::Relaxed))
            .filter_map(|a| {
                let (phase, since) = a.get();
                matches!(phase, Phase::Head | Phase::Idle).then_some((since, a))
            })
            .min_by_key(|(since, _)| *since);
        if let Some((_, a)) = waiting {
            a.displaced.store(true, Ordering::Relaxed);
            a.changed.notify_one();
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A connection's phase and since when it has been in it (for `Sending`, since the last
/// byte written), shared by its I/O, its service and its watchdog.
struct Activity {
    state: Mutex<(Phase, Instant)>,
    /// Wakes the watchdog when the phase changes or the connection is displaced.
    changed: Notify,
    /// Set when a new connection needs this one's place.
    displaced: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Mutex::new((Phase::Head, Instant::now())),
            changed: Notify::new(),
            displaced: AtomicBool::new(false),
        }
    }

    fn get(&self) -> (Phase, Instant) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (phase, Instant::now());
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection, a new request head begins.
    fn read(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == Phase::Idle {
            *s = (Phase::Head, Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Bytes were written: a response being sent made progress.
    fn wrote(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == Phase::Sending {
            s.1 = Instant::now();
        }
    }
}

/// Completes when the connection has spent too long in one phase, with the reason.
async fn watch_over(activity: &Activity, limits: &Limits) -> &'static str {
    loop {
        let (phase, since) = activity.get();
        let waiting = matches!(phase, Phase::Head | Phase::Idle);
        if waiting && activity.displaced.load(Ordering::Relaxed) {
            return "displaced by a new connection while waiting for a request";
        }
        let (limit, reason) = match phase {
            Phase::Head => (limits.header_timeout, "request head not complete in time"),
            Phase::Sending => (limits.send_timeout, "the client stopped reading"),
            Phase::Idle => (limits.keep_alive_timeout, "idle for too long"),
            Phase::Handling => {
                activity.changed.notified().await;
                continue;
            }
        };
        let deadline = since + limit;
        if Instant::now() >= deadline {
            return reason;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = activity.changed.notified() => {}
        }
    }
}

/// A socket that reports reads and writes to its connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl Watched {
    fn count(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.wrote();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.count(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service that paces request bodies and tracks the phase.
#[derive(Clone)]
struct Service {
    app: Router,
    activity: Arc<Activity>,
    pace: Pace,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        self.activity.set(Phase::Handling);
        let pace = self.pace;
        let req = req.map(|body| Body::new(Paced::new(body, pace)));
        let mut app = self.app.clone();
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let res = tower_service::Service::call(&mut app, req).await?;
            activity.set(Phase::Sending);
            Ok(res.map(|body| Body::new(Sent { body, activity })))
        })
    }
}

/// A response body that marks the connection idle once hyper is done with it.
struct Sent {
    body: Body,
    activity: Arc<Activity>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.activity.set(Phase::Idle);
    }
}

impl http_body::Body for Sent {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
