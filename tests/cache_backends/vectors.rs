//! The Nix 2.8 vector caches, read through both backends.

use super::*;

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
