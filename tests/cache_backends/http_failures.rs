//! How the HTTP backend handles failure: statuses and retries, logging, hanging and
//! dropping servers, auth, and hostile narinfos.

use super::*;

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
