//! Cache backends: one contract suite run against `file://` and `http://` (the in-test
//! server of `common/http_server.rs`) with `init_for_writing` (`cache_backends/contract.rs`),
//! HTTP failure handling: retries, absence, stalls, dropped connections, auth, hostile
//! narinfos (`cache_backends/http_failures.rs`), the same contract and S3's own features on
//! `s3://` against s3s-fs (`cache_backends/s3.rs`), and the Nix 2.8 vector caches read
//! through both (`cache_backends/vectors.rs`). This file holds the helpers they share.

#[path = "cache_backends/contract.rs"]
mod contract;
#[path = "cache_backends/http_failures.rs"]
mod http_failures;
#[path = "common/http_server.rs"]
mod http_server;
#[path = "cache_backends/s3.rs"]
mod s3;
#[path = "common/s3_server.rs"]
mod s3_server;
#[path = "cache_backends/vectors.rs"]
mod vectors;

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
