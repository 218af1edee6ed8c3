//! The backend contract on `s3://` (a real S3 server, s3s-fs), plus what only S3 has:
//! prefixes, multipart uploads that leave no parts behind, and object metadata
//! (Content-Type, Cache-Control) for a CDN in front of the bucket.

use super::*;
use object_store::aws::AmazonS3Builder;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use s3_server::S3Server;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn s3_cache(server: &S3Server, bucket_and_prefix: &str, params: &str) -> Cache {
    S3Server::set_process_env();
    let url = format!("{}{params}", server.url(bucket_and_prefix));
    open(&url, &fast_opts())
}

/// A plain object_store client for the bucket, to look behind the backend's back.
fn raw(server: &S3Server, bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(s3_server::REGION)
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_access_key_id(s3_server::ACCESS_KEY)
        .with_secret_access_key(s3_server::SECRET_KEY)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_s3() {
    let Some(server) = S3Server::start("contract_s3", &["cache"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = s3_cache(&server, "cache", "");
    super::contract::contract(&cache, tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prefix_metadata_and_file_view() {
    let Some(server) = S3Server::start("s3_prefix_metadata_and_file_view", &["bkt"]) else {
        return;
    };
    let cache = s3_cache(&server, "bkt/team/nix", "&narinfo-max-age=42");
    assert_eq!(cache.url().scheme(), "s3");
    let info = cache.init_for_writing(&nix_store()).await.unwrap();
    assert_eq!(info.store_dir, nix_store());
    let nar = Bytes::from(sample(1000, 3));
    cache
        .put(
            "nar/abc.nar",
            PutBody::Bytes(nar.clone()),
            content_type::NAR,
        )
        .await
        .unwrap();
    // The objects sit under the prefix; s3s-fs keeps them as plain files, so the bucket
    // directory is readable as a file:// cache.
    assert_eq!(
        std::fs::read(server.bucket_dir("bkt").join("team/nix/nar/abc.nar")).unwrap(),
        nar
    );
    assert_eq!(
        std::fs::read_to_string(server.bucket_dir("bkt").join("team/nix/nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let store = raw(&server, "bkt");
    let got = store.get(&"team/nix/nar/abc.nar".into()).await.unwrap();
    assert_eq!(
        got.attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some(content_type::NAR)
    );
    assert_eq!(
        got.attributes
            .get(&Attribute::CacheControl)
            .map(|v| v.as_ref()),
        Some("public, max-age=31536000, immutable")
    );
    let info = store.get(&"team/nix/nix-cache-info".into()).await.unwrap();
    assert_eq!(
        info.attributes
            .get(&Attribute::CacheControl)
            .map(|v| v.as_ref()),
        Some("public, max-age=42")
    );
    // Absent keys and a missing bucket.
    assert!(!cache.exists("nar/none.nar").await.unwrap());
    let nobucket = s3_cache(&server, "nobucket", "");
    let e = nobucket.cache_info().await.unwrap_err();
    assert!(!e.to_string().contains(s3_server::SECRET_KEY), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_and_failures_leave_none() {
    let Some(server) = S3Server::start("large_files_go_up_in_parts", &["mpu"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = s3_cache(&server, "mpu", "&part-size=5242880&upload-parts=2");
    let big = sample((12 << 20) + 12345, 9);
    let src = tmp.path().join("big.nar");
    std::fs::write(&src, &big).unwrap();
    cache
        .put("nar/big.nar", PutBody::File(src.clone()), content_type::NAR)
        .await
        .unwrap();
    let got = read_stream(&cache, "nar/big.nar").await.unwrap().unwrap();
    assert!(got == big, "read back {} bytes that differ", got.len());
    let meta = raw(&server, "mpu")
        .head(&"nar/big.nar".into())
        .await
        .unwrap();
    // A multipart ETag ends in -<parts>.
    assert!(
        meta.e_tag
            .as_deref()
            .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
        "{:?}",
        meta.e_tag
    );
    // A file that vanishes is an error before anything is written.
    let gone = tmp.path().join("gone.nar");
    let e = cache
        .put("nar/gone.nar", PutBody::File(gone), content_type::NAR)
        .await
        .unwrap_err();
    assert!(matches!(e, CacheError::Io { .. }), "{e:?}");
    assert!(!cache.exists("nar/gone.nar").await.unwrap());

    // Through a proxy that cuts every connection sending more than 1 MiB, parts never
    // arrive: the put fails after its retries, and the upload is aborted (the small
    // requests pass), so no object and no unfinished upload is left.
    let limits = Limits {
        up: 1 << 20,
        down: usize::MAX,
        down_cuts: 0,
    };
    let proxy = CuttingProxy::start(server.port, limits).await;
    let url = format!(
        "s3://mpu?endpoint=http://127.0.0.1:{}&region={}&part-size=5242880",
        proxy.port,
        s3_server::REGION
    );
    let cut = open(&url, &fast_opts());
    let e = cut
        .put("nar/cut.nar", PutBody::File(src), content_type::NAR)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nar/cut.nar"), "{e}");
    assert!(!cache.exists("nar/cut.nar").await.unwrap());
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
    assert!(proxy.cuts() > 0);
}

/// Concurrent multipart uploads share one memory budget (2 parts here): an upload waiting
/// for budget must not stop its own parts in flight, which hold the budget it waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_multipart_uploads_share_the_budget() {
    let Some(server) =
        S3Server::start("concurrent_multipart_uploads_share_the_budget", &["budget"])
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = s3_cache(&server, "budget", "&part-size=5242880&upload-parts=2");
    let files: Vec<_> = (0..3u8)
        .map(|i| {
            let f = tmp.path().join(format!("f{i}"));
            std::fs::write(&f, sample((11 << 20) + i as usize, i)).unwrap();
            f
        })
        .collect();
    let puts = files.iter().enumerate().map(|(i, f)| {
        let key = format!("nar/f{i}.nar");
        let cache = &cache;
        async move {
            cache
                .put(&key, PutBody::File(f.clone()), content_type::NAR)
                .await
        }
    });
    let all = futures_util::future::join_all(puts);
    let results = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the uploads deadlocked");
    for r in results {
        r.unwrap();
    }
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_downloads_resume_with_a_range() {
    let Some(server) = S3Server::start("dropped_downloads_resume_with_a_range", &["dl1"]) else {
        return;
    };
    let cache = s3_cache(&server, "dl1", "");
    let big = Bytes::from(sample(3 << 20, 5));
    cache
        .put("nar/dl.nar", PutBody::Bytes(big.clone()), content_type::NAR)
        .await
        .unwrap();
    // The first two responses are cut after 1 MiB: the body is resumed from where it
    // stopped, not fetched again.
    let limits = Limits {
        up: usize::MAX,
        down: 1 << 20,
        down_cuts: 2,
    };
    let proxy = CuttingProxy::start(server.port, limits).await;
    let url = format!(
        "s3://dl1?endpoint=http://127.0.0.1:{}&region={}",
        proxy.port,
        s3_server::REGION
    );
    let through = open(&url, &fast_opts());
    let got = read_stream(&through, "nar/dl.nar").await.unwrap().unwrap();
    assert!(got == big, "read back {} bytes that differ", got.len());
    assert_eq!(proxy.cuts(), 2, "both cuts happened");
    // Resumed, not restarted: about 3 MiB went back in all, not 1 + 1 + 3.
    let down = proxy.down.load(Ordering::SeqCst);
    assert!(
        down < big.len() + (64 << 10),
        "{down} bytes for {}",
        big.len()
    );
}

/// A TCP proxy to 127.0.0.1:`to` that drops a connection once the client has sent more
/// than `up` bytes on it, or once the first `down_cuts` connections to send more than `down`
/// bytes back have done so.
struct CuttingProxy {
    port: u16,
    cuts: Arc<AtomicUsize>,
    /// Bytes passed back to the client.
    down: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
struct Limits {
    up: usize,
    down: usize,
    down_cuts: usize,
}

impl CuttingProxy {
    async fn start(to: u16, limits: Limits) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let counter = cuts.clone();
        let down = Arc::new(AtomicUsize::new(0));
        let sent = down.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(("127.0.0.1", to))
                    .await
                    .unwrap();
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                let (c1, c2) = (counter.clone(), counter.clone());
                let up = tokio::spawn(pipe(cr, uw, limits.up, c1, usize::MAX, Arc::default()));
                let down = pipe(ur, cw, limits.down, c2, limits.down_cuts, sent.clone());
                tokio::spawn(async move {
                    down.await;
                    up.abort();
                });
            }
        });
        CuttingProxy {
            port,
            cuts,
            down,
            task,
        }
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until EOF, or until more than `limit` bytes passed while fewer
/// than `max_cuts` cuts have happened (counted in `cuts`).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    limit: usize,
    cuts: Arc<AtomicUsize>,
    max_cuts: usize,
    total: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut passed = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        passed += n;
        let cut = passed > limit
            && cuts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                    (c < max_cuts).then_some(c + 1)
                })
                .is_ok();
        if cut {
            return;
        }
        total.fetch_add(n, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
