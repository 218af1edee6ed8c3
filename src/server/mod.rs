//! `store serve`: the local store as a Nix binary cache over HTTP/1.1 (axum), with
//! authenticated uploads (what `nix copy --to http://…` sends).
//!
//! ```text
//! GET|HEAD /nix-cache-info          StoreDir, WantMassQuery: 1, Priority
//! GET|HEAD /<hash32>.narinfo        rendered from the DB (+ our signature if configured)
//! GET|HEAD /nar/<hash32>-<narhash>.nar[.zst]   the NAR, produced from the store tree
//! GET|HEAD /nar/<upload name>       the same, under a name a client uploaded it with
//! PUT      /nar/<file>              stage an upload (bounded, temp + rename, invisible)
//! PUT      /<hash32>.narinfo        check, then import the staged NAR it names
//! PUT      /nix-cache-info          accepted as a no-op if it names our store dir
//! ```
//!
//! Headers: `Content-Type` `text/x-nix-cache-info`, `text/x-nix-narinfo`,
//! `application/x-nix-nar`; `Content-Length` for narinfos, plain NARs and cached zstd
//! NARs (a zstd NAR compressed on the fly is chunked); `Cache-Control: public,
//! max-age=31536000, immutable` for narinfos and NARs of valid paths, `max-age=300` for
//! nix-cache-info, `no-store` for every error. See [`names`] for the URL scheme and
//! [`error`] for the statuses.
//!
//! Reads are anonymous unless a read token is configured; uploads always need the upload
//! token (see [`auth`]), which is also accepted for reads. An uploaded narinfo must pass
//! [`crate::trust::check_narinfo`], the same check substitution uses, and its NAR is
//! imported with [`LocalStore::import_nar`]; see the `upload` module.
//!
//! Performance: narinfos are served from an in-memory map of rendered bytes (module `lookup`)
//! without touching the file system; every accepted socket gets `TCP_NODELAY`; NARs are
//! streamed from blocking tasks in 256 KiB chunks (module `stream`); zstd NARs are kept
//! compressed under `<state>/serve/nar-cache/` after the first complete download, so
//! later downloads are plain file reads with a known length. Figures against nginx:
//! bench/CACHE.md ("`store serve` against nginx").
//!
//! Server directories under the store's state dir: `serve/staging/` (uploaded NARs
//! waiting for their narinfo), `serve/nar-cache/` and `serve/aliases/` (the NAR names
//! clients uploaded under, which they may ask for later; see module `alias`). Files there are
//! replaced with temp + rename only ([`crate::temp_file`]); the temp files of a killed
//! server are swept when the next one opens (and every 10 minutes), staged uploads nobody
//! claims after an hour. `nar-cache/` and `aliases/` each have a size budget with least-recently-used
//! eviction (module `budget`; `--no-nar-cache` turns the NAR cache off).
//!
//! Connections are accepted and supervised by module `conn`: a connection limit, header,
//! keep-alive and send timeouts, and a minimum pace for request bodies (module `pace`).

mod alias;
pub mod auth;
pub mod budget;
pub mod conn;
pub mod error;
mod lookup;
pub mod names;
pub mod pace;
mod routes;
mod stream;
mod upload;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::format::keys::{SecretKey, TrustedKeys};
use crate::store::layout::Layout;
use crate::store::LocalStore;
pub use auth::{Token, TokenError};
pub use budget::{Usage, DEFAULT_ALIAS_CACHE_SIZE, DEFAULT_NAR_CACHE_SIZE};
pub use conn::Limits;
pub use error::ApiError;
pub use names::NarEncoding;

/// Default `Priority` in nix-cache-info (cache.nixos.org uses 40, so a local cache
/// configured next to it is preferred).
pub const DEFAULT_PRIORITY: i32 = 30;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Default limit of one uploaded (compressed) NAR, in bytes.
pub const DEFAULT_MAX_UPLOAD: u64 = 8 << 30;

/// Everything `serve` needs.
pub struct ServerConfig {
    pub store: Arc<LocalStore>,
    /// How NARs are announced in narinfos (both encodings are served either way).
    pub encoding: NarEncoding,
    pub zstd_level: i32,
    pub priority: i32,
    /// Adds a signature by this key to every narinfo served.
    pub sign_with: Option<SecretKey>,
    /// Enables uploads.
    pub upload: Option<UploadConfig>,
    /// When set, reads need this token (or the upload token) too.
    pub read_token: Option<Token>,
    /// Keep zstd NARs compressed on disk after the first complete download.
    pub nar_cache: bool,
    /// Budget of `serve/nar-cache/` in bytes (least recently used files go first).
    pub nar_cache_size: u64,
    /// Budget of `serve/aliases/` in bytes.
    pub alias_cache_size: u64,
    /// Connection limits and timeouts.
    pub limits: Limits,
}

impl ServerConfig {
    /// Anonymous reads, zstd, priority [`DEFAULT_PRIORITY`], no uploads, NAR cache on.
    pub fn new(store: Arc<LocalStore>) -> Self {
        ServerConfig {
            store,
            encoding: NarEncoding::Zstd,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            priority: DEFAULT_PRIORITY,
            sign_with: None,
            upload: None,
            read_token: None,
            nar_cache: true,
            nar_cache_size: DEFAULT_NAR_CACHE_SIZE,
            alias_cache_size: DEFAULT_ALIAS_CACHE_SIZE,
            limits: Limits::default(),
        }
    }
}

/// What the server keeps under the state dir, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub nar_cache: Usage,
    pub aliases: Usage,
}

/// The server's directories under the state dir.
struct ServeDirs {
    staging: PathBuf,
    nar_cache: PathBuf,
    aliases: PathBuf,
}

impl ServeDirs {
    fn new(layout: &Layout) -> Self {
        let base = layout.state_dir().join("serve");
        ServeDirs {
            staging: base.join("staging"),
            nar_cache: base.join("nar-cache"),
            aliases: base.join("aliases"),
        }
    }
}

/// Upload settings.
#[derive(Debug)]
pub struct UploadConfig {
    pub token: Token,
    /// Uploaded narinfos need a valid signature by one of these (must not be empty).
    pub trusted_keys: TrustedKeys,
    /// Largest accepted NAR upload (as sent, i.e. compressed), in bytes.
    pub max_nar_size: u64,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("uploads need at least one trusted public key")]
    NoTrustedKeys,
    #[error("cannot create '{path}'")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the store database to watch it for changes")]
    Probe(#[source] rusqlite::Error),
}

impl From<ServeError> for io::Error {
    fn from(e: ServeError) -> Self {
        io::Error::other(e)
    }
}

/// The shared state of all handlers.
pub(crate) struct State {
    pub store: Arc<LocalStore>,
    pub config: ServerConfig,
    pub cache_info: bytes::Bytes,
    pub renderer: lookup::Renderer,
    pub infos: Arc<lookup::InfoCache>,
    pub staging_dir: PathBuf,
    /// `serve/nar-cache/` and its budget.
    pub nar_cache: Arc<budget::Budget>,
    /// `serve/aliases/` and its budget.
    pub aliases: budget::Budget,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Upload,
}

impl State {
    /// Checks the request's credentials for `access`. Reads are open unless a read token
    /// is set; the upload token is good for reads too.
    pub(crate) fn authorize(
        &self,
        headers: &axum::http::HeaderMap,
        access: Access,
    ) -> Result<(), ApiError> {
        let upload = self.config.upload.as_ref().map(|u| &u.token);
        let accepted: &[Option<&Token>] = match access {
            Access::Read if self.config.read_token.is_none() => return Ok(()),
            Access::Read => &[self.config.read_token.as_ref(), upload],
            Access::Upload if upload.is_none() => return Err(ApiError::UploadsDisabled),
            Access::Upload => &[upload],
        };
        match auth::presented(headers) {
            auth::Presented::Nothing => Err(ApiError::Unauthenticated),
            auth::Presented::Malformed => Err(ApiError::BadCredentials),
            auth::Presented::Secret(s) => {
                // Check every candidate, so the time does not tell which one matched.
                let ok = accepted
                    .iter()
                    .flatten()
                    .fold(false, |ok, t| t.matches(&s) | ok);
                if ok {
                    Ok(())
                } else {
                    Err(ApiError::BadCredentials)
                }
            }
        }
    }
}

/// Serves for good. See [`serve_with_shutdown`].
pub async fn serve(listener: TcpListener, config: ServerConfig) -> io::Result<()> {
    serve_with_shutdown(listener, config, std::future::pending()).await
}

/// Opens the server (see [`Server::open`]) and runs it until `shutdown` completes (see
/// [`Server::run`]).
pub async fn serve_with_shutdown(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    Server::open(config)?.run(listener, shutdown).await
}

/// A server whose directories are ready: created, swept and measured.
pub struct Server {
    state: Arc<State>,
    probe: lookup::ChangeProbe,
}

impl Server {
    /// Checks the configuration, creates the server directories, removes the temp files
    /// that killed servers left there (never a live server's: their locks tell) and reads
    /// what the budgets hold, each directory scanned once (blocking).
    pub fn open(config: ServerConfig) -> Result<Server, ServeError> {
        if config
            .upload
            .as_ref()
            .is_some_and(|u| u.trusted_keys.is_empty())
        {
            return Err(ServeError::NoTrustedKeys);
        }
        let dirs = ServeDirs::new(config.store.layout());
        for dir in [&dirs.staging, &dirs.nar_cache, &dirs.aliases] {
            std::fs::create_dir_all(dir).map_err(|source| ServeError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        upload::sweep(&dirs.staging, &[&dirs.nar_cache, &dirs.aliases]);
        let probe = lookup::ChangeProbe::open(&config.store.layout().db_path())
            .map_err(ServeError::Probe)?;
        let state = Arc::new(State {
            store: Arc::clone(&config.store),
            cache_info: routes::cache_info_text(&config),
            renderer: lookup::Renderer {
                encoding: config.encoding,
                sign_with: config.sign_with.clone(),
            },
            infos: Arc::default(),
            staging_dir: dirs.staging,
            nar_cache: Arc::new(budget::Budget::open(dirs.nar_cache, config.nar_cache_size)),
            aliases: budget::Budget::open(dirs.aliases, config.alias_cache_size),
            config,
        });
        Ok(Server { state, probe })
    }

    /// What `nar-cache/` and `aliases/` held when the server opened.
    pub fn disk_usage(&self) -> DiskUsage {
        DiskUsage {
            nar_cache: self.state.nar_cache.opened(),
            aliases: self.state.aliases.opened(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish, and returns once every connection is closed (callers wanting a deadline
    /// wrap this in a timeout).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let Server { state, probe } = self;
        let mut limits = state.config.limits.clone();
        let cap = conn::connection_cap();
        if limits.max_connections > cap {
            tracing::warn!(
                "serving at most {cap} connections instead of {}: the descriptor limit allows no more",
                limits.max_connections
            );
            limits.max_connections = cap;
        }
        let background = [
            tokio::spawn(lookup::watch(Arc::clone(&state.infos), probe)),
            tokio::spawn(upload::sweep_periodically(Arc::clone(&state))),
        ];
        conn::run(listener, router(state), limits, shutdown).await;
        for task in background {
            task.abort();
        }
        Ok(())
    }
}

fn router(state: Arc<State>) -> Router {
    use axum::routing::get;
    Router::new()
        .route(
            "/nix-cache-info",
            get(routes::get_cache_info).put(upload::put_cache_info),
        )
        .route("/nar/{file}", get(routes::get_nar).put(upload::put_nar))
        .route("/{file}", get(routes::get_narinfo).put(upload::put_narinfo))
        .fallback(routes::fallback)
        .with_state(state)
}
