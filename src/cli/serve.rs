//! `store serve`: serve the local store as a Nix binary cache over HTTP, optionally
//! accepting signed uploads (`nix copy --to http://…`). See `store::server` for the
//! protocol. Limits come from flags, then the config file's `[serve]` table, then the
//! defaults in `store::server`; the keys trusted for uploads from `--trusted-public-keys`,
//! `STORE_TRUSTED_PUBLIC_KEYS` or the config file's `trusted-public-keys`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use store::format::keys::TrustedKeys;
use store::server::{self, conn, pace, Limits, NarEncoding, Server, ServerConfig, Token};
use store::server::{UploadConfig, Usage};
use tokio::signal::unix::{signal, Signal, SignalKind};
use zeroize::Zeroizing;

use super::config::ServeFile;
use super::{GlobalArgs, TrustArgs};

/// How long requests in flight may take to finish after SIGINT/SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// Serve the store as a Nix binary cache over HTTP (prints the bound address on stderr)
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How NARs are announced in narinfos (both are served on request)
    #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
    pub compression: CompressionArg,
    /// zstd level (1-22)
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_ZSTD_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression_level: i32,
    /// Priority announced in nix-cache-info (lower is preferred)
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_PRIORITY)]
    pub priority: i32,
    /// Also sign every narinfo served with this secret key (Nix format)
    #[arg(long, value_name = "FILE")]
    pub sign_with: Option<PathBuf>,
    /// Accept uploads authenticated with the token in FILE (bearer, or as the password
    /// of basic auth, e.g. from a netrc file)
    #[arg(long, value_name = "FILE")]
    pub upload_token_file: Option<PathBuf>,
    /// Require the token in FILE (or the upload token) for reads too
    #[arg(long, value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// Public keys ("name:base64 …") one of which must have signed an uploaded path
    /// [env: STORE_TRUSTED_PUBLIC_KEYS; config: trusted-public-keys]
    #[arg(long, value_name = "KEYS")]
    pub trusted_public_keys: Option<String>,
    /// Largest accepted NAR upload in bytes (as sent, i.e. compressed)
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_MAX_UPLOAD)]
    pub max_upload_size: u64,
    /// Do not keep zstd NARs compressed under the state dir (compress on every download)
    #[arg(long)]
    pub no_nar_cache: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Limits of `store serve`; each also comes from the config file's `[serve]` table.
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// Connections open at once; more wait to be accepted [default: 1024]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Seconds a client may take to send a request head [default: 30]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: Option<u64>,
    /// Seconds a kept-alive connection may stay idle [default: 60]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout: Option<u64>,
    /// Seconds a response may go without the client reading a byte [default: 60]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout: Option<u64>,
    /// Seconds of each window in which a request body must keep up --min-body-rate
    /// [default: 30]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: Option<u64>,
    /// Bytes per second a request body must average over each window [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub min_body_rate: Option<u64>,
    /// Size of the compressed NAR cache in bytes; least recently used NARs are removed
    /// [default: 8 GiB]
    #[arg(long, value_name = "BYTES")]
    pub nar_cache_size: Option<u64>,
    /// Size of the upload aliases in bytes; least recently used are removed [default: 256 MiB]
    #[arg(long, value_name = "BYTES")]
    pub alias_cache_size: Option<u64>,
}

impl LimitArgs {
    /// Flags over the config file over the defaults.
    fn merge(&self, file: &ServeFile) -> Result<(Limits, u64, u64)> {
        let secs = |flag: Option<u64>, file: Option<u64>, name: &str, default: Duration| match flag
            .or(file)
        {
            Some(0) => bail!("[serve] {name} must be at least 1 second"),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        let max_connections = match self
            .max_connections
            .map(|n| n as usize)
            .or(file.max_connections)
        {
            Some(0) => bail!("[serve] max-connections must be at least 1"),
            Some(n) => n,
            None => conn::DEFAULT_MAX_CONNECTIONS,
        };
        let limits = Limits {
            max_connections,
            header_timeout: secs(
                self.header_timeout,
                file.header_timeout,
                "header-timeout",
                conn::DEFAULT_HEADER_TIMEOUT,
            )?,
            keep_alive_timeout: secs(
                self.keep_alive_timeout,
                file.keep_alive_timeout,
                "keep-alive-timeout",
                conn::DEFAULT_KEEP_ALIVE_TIMEOUT,
            )?,
            send_timeout: secs(
                self.send_timeout,
                file.send_timeout,
                "send-timeout",
                conn::DEFAULT_SEND_TIMEOUT,
            )?,
            body: pace::Pace {
                window: secs(
                    self.body_timeout,
                    file.body_timeout,
                    "body-timeout",
                    pace::DEFAULT_BODY_TIMEOUT,
                )?,
                min_rate: self
                    .min_body_rate
                    .or(file.min_body_rate)
                    .unwrap_or(pace::DEFAULT_MIN_BODY_RATE),
            },
        };
        let nar_cache = self
            .nar_cache_size
            .or(file.nar_cache_size)
            .unwrap_or(server::DEFAULT_NAR_CACHE_SIZE);
        let aliases = self
            .alias_cache_size
            .or(file.alias_cache_size)
            .unwrap_or(server::DEFAULT_ALIAS_CACHE_SIZE);
        Ok((limits, nar_cache, aliases))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    None,
}

pub fn run(g: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let trust = TrustArgs {
        substituters: None,
        trusted_public_keys: args.trusted_public_keys.clone(),
        refresh: false,
    };
    let settings = super::settings_with(g, &trust)?;
    let store = Arc::new(super::open_store_with(&settings)?);
    match conn::raise_fd_limit() {
        Ok(soft) => tracing::debug!("descriptor limit: {soft:?}"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let mut config = ServerConfig::new(store);
    (
        config.limits,
        config.nar_cache_size,
        config.alias_cache_size,
    ) = args.limits.merge(&settings.serve)?;
    config.encoding = match args.compression {
        CompressionArg::Zstd => NarEncoding::Zstd,
        CompressionArg::None => NarEncoding::Plain,
    };
    config.zstd_level = args.compression_level;
    config.priority = args.priority;
    config.nar_cache = !args.no_nar_cache;
    if let Some(f) = &args.sign_with {
        config.sign_with = Some(super::key::read_secret_key(f)?);
    }
    if let Some(f) = &args.read_token_file {
        config.read_token = Some(read_token(f)?);
    }
    if let Some(f) = &args.upload_token_file {
        let keys = settings.trusted_public_keys.join(" ");
        let trusted_keys = TrustedKeys::parse_list(&keys).context("invalid trusted public keys")?;
        if trusted_keys.is_empty() {
            bail!("uploads need at least one key in --trusted-public-keys (or trusted-public-keys in the config file)");
        }
        config.upload = Some(UploadConfig {
            token: read_token(f)?,
            trusted_keys,
            max_nar_size: args.max_upload_size,
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("store-serve")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_server(args.listen, config, g.quiet));
    // Blocking tasks still streaming to clients that were cut off must not hold us up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_server(listen: SocketAddr, config: ServerConfig, quiet: bool) -> Result<()> {
    // Before the address is printed, so a signal sent as soon as it is seen is handled.
    let mut signals = Signals::new()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("cannot get the bound address")?;
    let (nar_cache_size, alias_cache_size) = (config.nar_cache_size, config.alias_cache_size);
    let uploads = config.upload.is_some();
    let server = Server::open(config).context("cannot start the server")?;
    if !quiet {
        // Before the address line, which tells scripts that the server is up.
        let used = server.disk_usage();
        eprintln!(
            "store serve: nar-cache {} of {}, aliases {} of {}",
            usage_text(used.nar_cache),
            size_text(nar_cache_size),
            usage_text(used.aliases),
            size_text(alias_cache_size),
        );
    }
    // Tests and scripts read this line to learn the port; keep its shape.
    eprintln!("store serve: listening on http://{addr}");
    if !quiet && uploads {
        eprintln!("store serve: uploads enabled");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server.run(listener, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        joined = &mut server => return joined.context("the server task failed")?.context("server error"),
        () = signals.next() => {}
    }
    tracing::info!("shutting down; waiting up to {GRACE:?} for requests in flight");
    let _ = stop_tx.send(());
    tokio::select! {
        joined = server => joined.context("the server task failed")?.context("server error")?,
        () = tokio::time::sleep(GRACE) => tracing::warn!("requests still running after {GRACE:?}; exiting"),
        () = signals.next() => tracing::warn!("second signal; exiting now"),
    }
    Ok(())
}

/// `12.0 MiB in 40 files`.
fn usage_text(u: Usage) -> String {
    format!("{} in {} files", size_text(u.bytes), u.files)
}

/// A size in the largest binary unit that keeps it at least 1.
fn size_text(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

/// SIGINT and SIGTERM, listened to from creation on.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let install = |kind| signal(kind).context("cannot install a signal handler");
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Reads a token file; its contents never appear in errors.
fn read_token(path: &Path) -> Result<Token> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file '{}'", path.display()))?,
    );
    Token::new(&text).with_context(|| format!("invalid token file '{}'", path.display()))
}
