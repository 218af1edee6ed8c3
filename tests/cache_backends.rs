//! Cache backends: one contract suite run against `file://` and `http://` (the in-test
//! server of `common/http_server.rs`), HTTP failure handling (retries, absence, stalls,
//! dropped connections, auth), and the Nix 2.8 vector caches read through both.

#[path = "common/http_server.rs"]
mod http_server;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use futures_util::StreamExt;
use http_server::{Behaviour, TestServer};
use store::cache::compression::decompress;
use store::cache::{
    blocking_reader, content_type, Backend, Cache, CacheError, CacheUrl, ClientOptions, PutBody,
};
use store::format::narinfo::{NarInfo, MAX_NARINFO_SIZE};
use store::format::store_path::StoreDir;

const VECTOR_CACHES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nix-2.8/caches");

/// A hash part no cache here has.
const ABSENT_HASH: &str = "00000000000000000000000000000000";

fn nix_store() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

/// Short timeouts and no real backoff, so failure tests run fast.
fn fast_opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(3),
        attempts: 5,
        backoff_base: Duration::from_millis(1),
        netrc_file: None,
        bearer_token: None,
        ..ClientOptions::default()
    }
}

fn open(url: &str, opts: &ClientOptions) -> Cache {
    let url: CacheUrl = url.parse().unwrap();
    Cache::open(&url, opts).unwrap()
}

fn file_cache(dir: &Path) -> Cache {
    open(&format!("file://{}", dir.display()), &fast_opts())
}

async fn http_cache(dir: &Path) -> (TestServer, Cache) {
    let server = TestServer::start(dir).await;
    let cache = open(&server.url, &fast_opts());
    (server, cache)
}

async fn read_stream(cache: &Cache, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
    let Some(mut stream) = cache.get(key).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(|e| CacheError::from_stream_error(key, e))?);
    }
    Ok(Some(out))
}

fn sample(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Copies a directory tree (the vector caches are not written to).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The contract every backend must meet.

async fn contract(cache: &Cache, scratch: &Path) {
    let nix = nix_store();

    // Absent objects are Ok(None) / Ok(false), not errors.
    assert!(cache.get("missing").await.unwrap().is_none());
    assert!(!cache.exists("missing").await.unwrap());
    assert!(cache
        .get_bytes("nar/missing.nar", 10)
        .await
        .unwrap()
        .is_none());
    assert!(cache.narinfo(ABSENT_HASH, &nix).await.unwrap().is_none());
    assert!(!cache.has_narinfo(ABSENT_HASH).await.unwrap());
    let e = cache.cache_info().await.unwrap_err();
    assert!(matches!(e, CacheError::NotACache { .. }), "{e:?}");

    // Invalid keys are refused by every operation.
    for bad in [
        "",
        "/abs",
        "../up",
        "a/../b",
        "a//b",
        "x#y",
        "x?y#z",
        "../x?y",
        "?y",
        "http://h/x",
        "a\\b",
    ] {
        let body = PutBody::Bytes(Bytes::from_static(b"x"));
        let results = [
            cache.get(bad).await.err(),
            cache.exists(bad).await.err(),
            cache.put(bad, body, content_type::NAR).await.err(),
            cache.get_bytes(bad, 10).await.err(),
        ];
        for e in results {
            assert!(
                matches!(e, Some(CacheError::InvalidKey { .. })),
                "{bad:?}: {e:?}"
            );
        }
    }
    for bad in ["short", "../../../../../../../../etc/passwd/x"] {
        let e = cache.narinfo(bad, &nix).await.unwrap_err();
        assert!(matches!(e, CacheError::InvalidKey { .. }), "{e:?}");
    }

    // Round trips, from bytes and from a file, in nested directories.
    let small = Bytes::from_static(b"hello cache");
    cache
        .put(
            "log/x-y.drv",
            PutBody::Bytes(small.clone()),
            content_type::LOG,
        )
        .await
        .unwrap();
    assert!(cache.exists("log/x-y.drv").await.unwrap());
    assert_eq!(
        read_stream(cache, "log/x-y.drv").await.unwrap().unwrap(),
        small
    );
    assert_eq!(
        cache
            .get_bytes("log/x-y.drv", small.len())
            .await
            .unwrap()
            .unwrap(),
        small
    );
    let e = cache
        .get_bytes("log/x-y.drv", small.len() - 1)
        .await
        .unwrap_err();
    assert!(matches!(e, CacheError::TooLarge { .. }), "{e:?}");
    // A read key may carry a query (a narinfo URL as harmonia writes it); the path names
    // the object. A key to write may not.
    let with_query = "log/x-y.drv?hash=abc";
    assert!(cache.exists(with_query).await.unwrap());
    assert_eq!(
        read_stream(cache, with_query).await.unwrap().unwrap(),
        small
    );
    let body = PutBody::Bytes(Bytes::from_static(b"x"));
    let e = cache.put(with_query, body, content_type::LOG).await.err();
    assert!(matches!(e, Some(CacheError::InvalidKey { .. })), "{e:?}");

    let big = sample(3 << 20, 7);
    let src = scratch.join("big.nar");
    std::fs::write(&src, &big).unwrap();
    cache
        .put("nar/deep/er/big.nar", PutBody::File(src), content_type::NAR)
        .await
        .unwrap();
    assert_eq!(
        read_stream(cache, "nar/deep/er/big.nar")
            .await
            .unwrap()
            .unwrap(),
        big
    );

    // Empty objects exist.
    cache
        .put("empty", PutBody::Bytes(Bytes::new()), content_type::NAR)
        .await
        .unwrap();
    assert!(cache.exists("empty").await.unwrap());
    assert_eq!(cache.get_bytes("empty", 0).await.unwrap().unwrap().len(), 0);

    // Overwrites replace the whole object.
    cache
        .put(
            "log/x-y.drv",
            PutBody::Bytes(Bytes::from_static(b"v2")),
            content_type::LOG,
        )
        .await
        .unwrap();
    assert_eq!(
        &cache.get_bytes("log/x-y.drv", 100).await.unwrap().unwrap()[..],
        b"v2"
    );

    // nix-cache-info and narinfos through the helpers.
    let info_text = "StoreDir: /nix/store\nPriority: 41\n";
    cache
        .put(
            "nix-cache-info",
            PutBody::Bytes(info_text.into()),
            content_type::CACHE_INFO,
        )
        .await
        .unwrap();
    let info = cache.cache_info().await.unwrap();
    assert_eq!((info.store_dir, info.priority), (nix.clone(), Some(41)));
    let vector = std::fs::read_to_string(format!(
        "{VECTOR_CACHES}/xz/a8z667l486sd21m8rs058ir3b2sh8k14.narinfo"
    ))
    .unwrap();
    let hash = "a8z667l486sd21m8rs058ir3b2sh8k14";
    cache
        .put(
            &format!("{hash}.narinfo"),
            PutBody::Bytes(vector.clone().into()),
            content_type::NARINFO,
        )
        .await
        .unwrap();
    assert!(cache.has_narinfo(hash).await.unwrap());
    let got = cache.narinfo(hash, &nix).await.unwrap().unwrap();
    assert_eq!(got, NarInfo::parse(&vector, &nix).unwrap());

    // Concurrent writers of one key: every read sees one complete version.
    let versions: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(sample(200_000, i))).collect();
    let key = "nar/contended.nar";
    cache
        .put(key, PutBody::Bytes(versions[0].clone()), content_type::NAR)
        .await
        .unwrap();
    let writers = versions.iter().map(|v| async move {
        for _ in 0..5 {
            cache
                .put(key, PutBody::Bytes(v.clone()), content_type::NAR)
                .await
                .unwrap();
        }
    });
    let reader = async {
        for _ in 0..20 {
            let got = cache.get_bytes(key, 1 << 20).await.unwrap().unwrap();
            assert!(
                versions.contains(&got),
                "a reader saw a partial object ({} bytes)",
                got.len()
            );
        }
    };
    futures_util::future::join(futures_util::future::join_all(writers), reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = file_cache(&tmp.path().join("cache"));
    contract(&cache, tmp.path()).await;
    // No temp files left next to the objects.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("cache/nar"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_http() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    std::fs::create_dir(&root).unwrap();
    let (server, cache) = http_cache(&root).await;
    contract(&cache, tmp.path()).await;
    // The absent narinfo was asked for with HEAD, as Nix's isValidPath does.
    assert!(server.count(&Method::HEAD, &format!("/{ABSENT_HASH}.narinfo")) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cache_under_a_path_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("sub/dir")).unwrap();
    let server = TestServer::start(tmp.path()).await;
    let cache = open(&format!("{}/sub/dir/?priority=3", server.url), &fast_opts());
    assert_eq!(cache.url().priority(), Some(3));
    cache
        .put(
            "nar/a b%.nar",
            PutBody::Bytes("x".into()),
            content_type::NAR,
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("sub/dir/nar/a b%.nar")).unwrap(),
        b"x"
    );
    assert_eq!(
        &cache.get_bytes("nar/a b%.nar", 1).await.unwrap().unwrap()[..],
        b"x"
    );
    assert_eq!(
        server.requests().last().unwrap(),
        &(Method::GET, "/sub/dir/nar/a%20b%25.nar".to_owned())
    );
}

// ---------------------------------------------------------------------------------------
// init_for_writing

#[tokio::test]
async fn init_for_writing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("new/cache");
    let cache = file_cache(&root);
    let info = cache.init_for_writing(&nix_store()).await.unwrap();
    assert_eq!(info.store_dir, nix_store());
    assert_eq!(
        std::fs::read_to_string(root.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    for dir in ["nar", "log", "realisations"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    // Again: nothing changes; an existing file is kept.
    std::fs::write(
        root.join("nix-cache-info"),
        "StoreDir: /nix/store\nPriority: 7\n",
    )
    .unwrap();
    let info = cache.init_for_writing(&nix_store()).await.unwrap();
    assert_eq!(info.priority, Some(7));
    // Another store dir is refused.
    let e = cache
        .init_for_writing(&StoreDir::new("/ix/store").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, CacheError::WrongStoreDir { .. }), "{e:?}");
    assert!(e.to_string().contains("'/nix/store'"), "{e}");
}

#[tokio::test]
async fn init_for_writing_http_creates_a_missing_cache_info() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, cache) = http_cache(tmp.path()).await;
    // Like Nix's HTTP store: a missing nix-cache-info is created with a PUT.
    let info = cache.init_for_writing(&nix_store()).await.unwrap();
    assert_eq!(info.store_dir, nix_store());
    assert_eq!(server.count(&Method::PUT, "/nix-cache-info"), 1);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    // An existing one is read, not rewritten, and must be for our store dir.
    cache.init_for_writing(&nix_store()).await.unwrap();
    assert_eq!(server.count(&Method::PUT, "/nix-cache-info"), 1);
    let other = StoreDir::new("/ix/store").unwrap();
    let e = cache.init_for_writing(&other).await.unwrap_err();
    assert!(matches!(e, CacheError::WrongStoreDir { .. }), "{e:?}");
    // A server that refuses the PUT leaves a clear error.
    let tmp2 = tempfile::tempdir().unwrap();
    let (server2, cache2) = http_cache(tmp2.path()).await;
    server2.set_behaviour("/nix-cache-info", http_server::Behaviour::Status(405));
    let e = cache2.init_for_writing(&nix_store()).await.unwrap_err();
    assert!(e.to_string().contains("405"), "{e}");
}

// ---------------------------------------------------------------------------------------
// HTTP status handling and retries

async fn served(content: &[u8]) -> (tempfile::TempDir, TestServer, Cache) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("obj"), content).unwrap();
    let (server, cache) = http_cache(tmp.path()).await;
    (tmp, server, cache)
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let (_tmp, server, cache) = served(b"payload").await;
    server.fail_times("obj", 500, 2);
    assert_eq!(
        &cache.get_bytes("obj", 100).await.unwrap().unwrap()[..],
        b"payload"
    );
    assert_eq!(server.count(&Method::GET, "/obj"), 3);

    server.queue_behaviours("obj", [Behaviour::Status(429), Behaviour::Status(503)]);
    assert!(cache.exists("obj").await.unwrap());
    assert_eq!(server.count(&Method::HEAD, "/obj"), 3);

    server.queue_behaviours("obj", [Behaviour::Status(408)]);
    assert_eq!(
        read_stream(&cache, "obj").await.unwrap().unwrap(),
        b"payload"
    );
    assert_eq!(server.count(&Method::GET, "/obj"), 5);
}

#[tokio::test]
async fn redirects_are_followed() {
    let (tmp, server, cache) = served(b"payload").await;
    std::fs::write(tmp.path().join("moved"), b"moved here").unwrap();
    server.set_behaviour("obj", Behaviour::Redirect("/moved".into()));
    let got = cache.get_bytes("obj", 100).await.unwrap().unwrap();
    assert_eq!(&got[..], b"moved here");
    assert!(cache.exists("obj").await.unwrap());
    server.set_behaviour("obj", Behaviour::Redirect("/nowhere".into()));
    assert!(cache.get("obj").await.unwrap().is_none());
    assert_eq!(server.count(&Method::GET, "/moved"), 1);
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_five_tries() {
    let (_tmp, server, cache) = served(b"payload").await;
    server.set_behaviour("obj", Behaviour::Status(500));
    let e = cache.get_bytes("obj", 100).await.unwrap_err();
    assert!(matches!(e, CacheError::GaveUp { attempts: 5, .. }), "{e:?}");
    assert!(e.is_transient());
    let shown = store::error_chain::Chain(&e).to_string();
    assert!(
        shown.contains("after 5 attempts") && shown.contains("HTTP error 500"),
        "{shown}"
    );
    assert!(shown.contains(&format!("{}/obj", server.url)), "{shown}");
    assert_eq!(server.count(&Method::GET, "/obj"), 5);
    // A single try is configured: no retry, the plain error.
    let once = open(
        &server.url,
        &ClientOptions {
            attempts: 1,
            ..fast_opts()
        },
    );
    let e = once.exists("obj").await.unwrap_err();
    assert!(matches!(e, CacheError::Status { status: 500, .. }), "{e:?}");
    assert_eq!(server.count(&Method::HEAD, "/obj"), 1);
}

#[tokio::test]
async fn fatal_statuses_are_not_retried() {
    let (_tmp, server, cache) = served(b"payload").await;
    for status in [400, 405, 501, 505, 511] {
        server.clear_requests();
        server.set_behaviour("obj", Behaviour::Status(status));
        let e = cache.get_bytes("obj", 100).await.unwrap_err();
        assert!(
            matches!(e, CacheError::Status { status: s, .. } if s == status),
            "{status}: {e:?}"
        );
        assert!(!e.is_transient());
        let e = cache.exists("obj").await.unwrap_err();
        assert!(matches!(e, CacheError::Status { .. }), "{e:?}");
        assert_eq!(server.requests().len(), 2, "{status}");
    }
}

#[tokio::test]
async fn denied_and_gone_are_absent() {
    let (_tmp, server, cache) = served(b"payload").await;
    for status in [401, 403, 404, 407, 410] {
        server.clear_requests();
        server.set_behaviour("obj", Behaviour::Status(status));
        assert!(cache.get("obj").await.unwrap().is_none(), "{status}");
        assert!(
            cache.get_bytes("obj", 100).await.unwrap().is_none(),
            "{status}"
        );
        assert!(!cache.exists("obj").await.unwrap(), "{status}");
        assert_eq!(server.requests().len(), 3, "{status}");
    }
    // But a refused upload is an error.
    server.set_behaviour("obj", Behaviour::Status(403));
    let e = cache
        .put("obj", PutBody::Bytes("x".into()), content_type::NAR)
        .await
        .unwrap_err();
    assert!(matches!(e, CacheError::Status { status: 403, .. }), "{e:?}");
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// The log of this whole test binary (a global subscriber: thread-local ones miss events
/// when tests run in parallel, because tracing caches per-callsite interest globally).
fn global_log() -> &'static LogCapture {
    static LOG: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        capture
    })
}

#[tokio::test]
async fn absence_and_retries_are_logged_without_secrets() {
    let capture = global_log();
    let (_tmp, server, _) = served(b"payload").await;
    let opts = ClientOptions {
        bearer_token: Some("tok-hunter2".into()),
        ..fast_opts()
    };
    let cache = open(&server.url, &opts);
    server.set_behaviour("obj", Behaviour::Status(403));
    assert!(cache.get("obj").await.unwrap().is_none());
    server.set_behaviour("obj", Behaviour::Normal);
    server.fail_times("obj", 502, 1);
    assert!(cache.exists("obj").await.unwrap());
    let log: String = capture
        .text()
        .lines()
        .filter(|l| l.contains(&server.url))
        .collect();
    assert!(
        log.contains("treating HTTP 403 as absent, as Nix does"),
        "{log}"
    );
    assert!(log.contains("HTTP error 502; retrying in"), "{log}");
    assert!(!capture.text().contains("tok-hunter2"), "{log}");
}

#[tokio::test]
async fn uploads_send_type_and_length_and_retry_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, cache) = http_cache(tmp.path()).await;
    let data = sample(1 << 20, 3);
    let src = tmp.path().join("src.nar");
    std::fs::write(&src, &data).unwrap();
    server.fail_times("nar/up.nar", 503, 2);
    cache
        .put("nar/up.nar", PutBody::File(src), content_type::NAR)
        .await
        .unwrap();
    assert_eq!(std::fs::read(tmp.path().join("nar/up.nar")).unwrap(), data);
    let puts: Vec<_> = server
        .recorded()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .collect();
    assert_eq!(puts.len(), 3);
    for r in &puts {
        assert_eq!(r.headers["content-type"], "application/x-nix-nar");
        assert_eq!(r.headers["content-length"], data.len().to_string().as_str());
        assert!(!r.headers.contains_key("transfer-encoding"));
    }
    cache
        .put(
            "x.narinfo",
            PutBody::Bytes("StorePath: x\n".into()),
            content_type::NARINFO,
        )
        .await
        .unwrap();
    let last = server.recorded().pop().unwrap();
    assert_eq!(last.headers["content-type"], "text/x-nix-narinfo");
    assert_eq!(last.headers["content-length"], "13");
}

// ---------------------------------------------------------------------------------------
// Hanging, stalling, dropping and slow servers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_times_out() {
    let (_tmp, server, _) = served(b"payload").await;
    let opts = ClientOptions {
        attempts: 2,
        stall_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(600),
        ..fast_opts()
    };
    let cache = open(&server.url, &opts);
    server.set_behaviour("obj", Behaviour::Hang);
    let start = Instant::now();
    let e = cache.get("obj").await.err().unwrap();
    assert!(
        matches!(&e, CacheError::GaveUp { attempts: 2, last } if matches!(**last, CacheError::Stalled { .. })),
        "{e:?}"
    );
    let e = cache.exists("obj").await.unwrap_err();
    let shown = store::error_chain::Chain(&e).to_string();
    assert!(shown.contains("no complete answer within 0.6 s"), "{shown}");
    // An upload nobody answers stalls too.
    let body = PutBody::Bytes(Bytes::from(sample(100_000, 9)));
    let e = cache.put("obj", body, content_type::NAR).await.unwrap_err();
    let shown = store::error_chain::Chain(&e).to_string();
    assert!(
        shown.contains("PUT") && shown.contains("no progress"),
        "{shown}"
    );
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert_eq!(server.count(&Method::GET, "/obj"), 2);
    assert_eq!(server.count(&Method::PUT, "/obj"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_stall_is_an_error_while_reading() {
    let data = sample(100_000, 1);
    let (_tmp, server, cache) = served(&data).await;
    server.set_behaviour("obj", Behaviour::StallAfter(1000));
    let mut stream = cache.get("obj").await.unwrap().unwrap();
    let mut got = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("stream ended without error"),
        }
    };
    assert_eq!(got, 1000);
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let e = CacheError::from_stream_error("obj", err);
    assert!(matches!(e, CacheError::Stalled { .. }), "{e:?}");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after its error"
    );
    // get_bytes retries the whole body, then gives up.
    let e = cache.get_bytes("obj", 1 << 20).await.unwrap_err();
    assert!(matches!(e, CacheError::GaveUp { attempts: 5, .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_is_an_error_while_reading() {
    let data = sample(100_000, 2);
    let (_tmp, server, cache) = served(&data).await;
    server.set_behaviour("obj", Behaviour::DropAfter(5000));
    let e = read_stream(&cache, "obj").await.unwrap_err();
    assert!(matches!(e, CacheError::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
    // Through the blocking reader too, as the NAR unpacker will see it.
    let stream = cache.get("obj").await.unwrap().unwrap();
    let mut reader = blocking_reader(stream);
    let r = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map(|_| out.len())
    })
    .await
    .unwrap();
    assert!(r.is_err(), "{r:?}");
    // A small object: retried, then healthy.
    server.queue_behaviours("obj", [Behaviour::DropAfter(10)]);
    server.set_behaviour("obj", Behaviour::Normal);
    assert_eq!(
        cache.get_bytes("obj", 1 << 20).await.unwrap().unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_transfers_succeed() {
    let data = sample(2000, 4);
    let (_tmp, server, cache) = served(&data).await;
    server.set_behaviour(
        "obj",
        Behaviour::Trickle {
            chunk: 400,
            interval: Duration::from_millis(150),
        },
    );
    // 750 ms in total, more than the 500 ms stall timeout, but never 500 ms without data.
    assert_eq!(read_stream(&cache, "obj").await.unwrap().unwrap(), data);
    assert_eq!(server.count(&Method::GET, "/obj"), 1);
}

// ---------------------------------------------------------------------------------------
// Auth

#[tokio::test]
async fn bearer_token_is_sent() {
    let (_tmp, server, anonymous) = served(b"secret stuff").await;
    server.require_authorization(Some("Bearer tok-123"));
    // Without it: 401, which is absence.
    assert!(anonymous.get_bytes("obj", 100).await.unwrap().is_none());
    let opts = ClientOptions {
        bearer_token: Some("tok-123".into()),
        ..fast_opts()
    };
    let cache = open(&server.url, &opts);
    assert_eq!(
        &cache.get_bytes("obj", 100).await.unwrap().unwrap()[..],
        b"secret stuff"
    );
    assert!(cache.exists("obj").await.unwrap());
    cache
        .put("new", PutBody::Bytes("x".into()), content_type::NAR)
        .await
        .unwrap();
    assert!(!format!("{cache:?}").contains("tok-123"));
}

#[tokio::test]
async fn netrc_credentials_are_sent() {
    let (tmp, server, _) = served(b"secret stuff").await;
    let netrc = tmp.path().join("netrc");
    std::fs::write(
        &netrc,
        "machine example.org login bob password nope\n\
         machine 127.0.0.1 login alice password \"p w\"\n",
    )
    .unwrap();
    let expected = format!("Basic {}", data_encoding::BASE64.encode(b"alice:p w"));
    server.require_authorization(Some(&expected));
    let opts = ClientOptions {
        netrc_file: Some(netrc.clone()),
        ..fast_opts()
    };
    let cache = open(&server.url, &opts);
    assert_eq!(
        &cache.get_bytes("obj", 100).await.unwrap().unwrap()[..],
        b"secret stuff"
    );
    // A bad netrc fails at open, without quoting it.
    std::fs::write(
        &netrc,
        "machine 127.0.0.1 login alice password hunter2 junk\n",
    )
    .unwrap();
    let url: CacheUrl = server.url.parse().unwrap();
    let e = Cache::open(&url, &opts).unwrap_err();
    assert!(matches!(e, CacheError::Netrc { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("hunter2"));
    // Credentials in the URL work too and are not displayed.
    let with_creds = format!("http://alice:p%20w@{}", server.addr);
    let cache = open(&with_creds, &fast_opts());
    assert_eq!(
        &cache.get_bytes("obj", 100).await.unwrap().unwrap()[..],
        b"secret stuff"
    );
    assert!(!cache.url().to_string().contains("alice"));
}

// ---------------------------------------------------------------------------------------
// Hostile narinfos

#[tokio::test]
async fn hostile_narinfos_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = file_cache(tmp.path());
    let nix = nix_store();
    let vector = std::fs::read_to_string(format!(
        "{VECTOR_CACHES}/none/a8z667l486sd21m8rs058ir3b2sh8k14.narinfo"
    ))
    .unwrap();
    let put = |hash: &str, text: String| {
        std::fs::write(tmp.path().join(format!("{hash}.narinfo")), text).unwrap();
    };
    // Served under another hash.
    let other = "nk183nb5dfayh95z7ibawczbvbs8gv3z";
    put(other, vector.clone());
    let e = cache.narinfo(other, &nix).await.unwrap_err();
    assert!(matches!(e, CacheError::NarInfoMismatch { .. }), "{e:?}");
    // A URL escaping the cache, or pointing elsewhere.
    let hash = "a8z667l486sd21m8rs058ir3b2sh8k14";
    let url_line = vector.lines().find(|l| l.starts_with("URL: ")).unwrap();
    for evil in [
        "../../etc/passwd",
        "/etc/passwd",
        "https://evil.example/x.nar",
    ] {
        put(hash, vector.replace(url_line, &format!("URL: {evil}")));
        let e = cache.narinfo(hash, &nix).await.unwrap_err();
        assert!(matches!(e, CacheError::InvalidKey { .. }), "{evil}: {e:?}");
    }
    // Unparsable, and too large.
    put(hash, vector.replace("NarSize: 224", "NarSize: 0"));
    let e = cache.narinfo(hash, &nix).await.unwrap_err();
    assert!(matches!(e, CacheError::NarInfo { .. }), "{e:?}");
    put(hash, "x".repeat(MAX_NARINFO_SIZE + 1));
    let e = cache.narinfo(hash, &nix).await.unwrap_err();
    assert!(matches!(e, CacheError::TooLarge { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// The Nix 2.8 vector caches, through both backends

fn narinfo_hashes(cache_dir: &Path) -> Vec<String> {
    let mut hashes: Vec<String> = std::fs::read_dir(cache_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".narinfo").map(str::to_owned)
        })
        .collect();
    hashes.sort();
    hashes
}

/// Every narinfo parses like the file; every NAR decompresses to the caches/none NAR of
/// the same store path, and has its NarSize.
async fn check_vector_cache(cache: &Cache, dir: &Path, reference: &Cache) {
    let nix = nix_store();
    assert_eq!(cache.cache_info().await.unwrap().store_dir, nix);
    let hashes = narinfo_hashes(dir);
    assert_eq!(hashes.len(), 3);
    for hash in hashes {
        let text = std::fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
        let info = cache.narinfo(&hash, &nix).await.unwrap().unwrap();
        assert_eq!(info, NarInfo::parse(&text, &nix).unwrap());
        assert!(cache.has_narinfo(&hash).await.unwrap());
        let plain = reference
            .narinfo(info.store_path().hash_str(), &nix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(plain.store_path(), info.store_path());
        assert_eq!(plain.nar_hash(), info.nar_hash());
        let want = reference
            .get_bytes(plain.url(), 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let stream = cache.get(info.url()).await.unwrap().unwrap();
        let compressed = blocking_reader(stream);
        let label = info.compression().map(str::to_owned);
        let limit = info.nar_size() + 1;
        let got = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            decompress(label.as_deref(), compressed)?
                .take(limit)
                .read_to_end(&mut out)?;
            std::io::Result::Ok(out)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got.len() as u64, info.nar_size(), "{}", info.url());
        assert_eq!(got, want, "{}", info.url());
    }
    assert!(cache.narinfo(ABSENT_HASH, &nix).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_caches_through_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(Path::new(VECTOR_CACHES), tmp.path());
    let server = TestServer::start(tmp.path()).await;
    let reference = file_cache(&tmp.path().join("none"));
    for name in ["none", "xz", "zstd"] {
        let dir: PathBuf = tmp.path().join(name);
        check_vector_cache(&file_cache(&dir), &dir, &reference).await;
        let http = open(&format!("{}/{name}", server.url), &fast_opts());
        check_vector_cache(&http, &dir, &reference).await;
    }
    // The build log is plain text.
    let log = file_cache(&tmp.path().join("xz"))
        .get_bytes("log/scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv", 1 << 20)
        .await
        .unwrap();
    assert!(log.is_some());
}
