//! The contract every cache backend meets, run against `file://` and `http://` (and
//! `s3://` in s3.rs), and `init_for_writing` on both.

use super::*;

// ---------------------------------------------------------------------------------------
// The contract every backend must meet.

pub(super) async fn contract(cache: &Cache, scratch: &Path) {
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
