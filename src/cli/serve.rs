//! `store serve`: serve the local store as a Nix binary cache over HTTP, optionally
//! accepting signed uploads (`nix copy --to http://…`). See `store::server` for the
//! protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use store::format::keys::TrustedKeys;
use store::server::{self, NarEncoding, ServerConfig, Token, UploadConfig};
use tokio::signal::unix::{signal, Signal, SignalKind};
use zeroize::Zeroizing;

use super::GlobalArgs;

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
    #[arg(long, value_name = "KEYS", env = "STORE_TRUSTED_PUBLIC_KEYS")]
    pub trusted_public_keys: Option<String>,
    /// Largest accepted NAR upload in bytes (as sent, i.e. compressed)
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_MAX_UPLOAD)]
    pub max_upload_size: u64,
    /// Do not keep zstd NARs compressed under the state dir (compress on every download)
    #[arg(long)]
    pub no_nar_cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Zstd,
    None,
}

pub fn run(g: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let store = Arc::new(super::open_store(g)?);
    let mut config = ServerConfig::new(store);
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
        let keys = args.trusted_public_keys.as_deref().unwrap_or_default();
        let trusted_keys =
            TrustedKeys::parse_list(keys).context("invalid --trusted-public-keys")?;
        if trusted_keys.is_empty() {
            bail!("uploads need at least one key in --trusted-public-keys");
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
    // Tests and scripts read this line to learn the port; keep its shape.
    eprintln!("store serve: listening on http://{addr}");
    if !quiet && config.upload.is_some() {
        eprintln!("store serve: uploads enabled");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve_with_shutdown(listener, config, async {
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
