//! `store serve` end to end: the real binary on `127.0.0.1:0`, driven with reqwest. Reads
//! (nix-cache-info, narinfo bytes and signatures, NARs in both encodings, HEAD, 404s,
//! headers), uploads (the good flow as `nix copy` does it, and every refusal leaving the
//! path invalid), read tokens, shutdown, and real Nix 2.8 copying to and from the server.

mod common;
mod servekit;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use servekit::*;
use store::cache::compression::{compress, decompress, Compression};
use store::format::hash::{Hash, HashAlgo};
use store::format::keys::{SecretKey, TrustedKeys};
use store::format::narinfo::NarInfo;
use store::format::store_path::{StoreDir, StorePath};

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

const IMMUTABLE: Option<&str> = Some("public, max-age=31536000, immutable");

/// A directory with a subdir, an executable, a symlink and a 1 MiB file (several chunks).
fn dir_tree(p: &Path) {
    fs::create_dir_all(p.join("sub")).unwrap();
    fs::write(p.join("sub/a.txt"), b"a\n").unwrap();
    fs::write(p.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/a.txt", p.join("link")).unwrap();
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(p.join("big.bin"), big).unwrap();
}

fn base_name(logical: &str) -> StorePath {
    logical.rsplit('/').next().unwrap().parse().unwrap()
}

fn nar_dump(s: &TestStore, logical: &str) -> Vec<u8> {
    let out = s
        .cmd()
        .args(["nar", "dump"])
        .arg(s.real(logical))
        .output()
        .unwrap();
    assert_success(&out, "nar dump");
    out.stdout
}

fn path_info(s: &TestStore, logical: &str) -> Value {
    let v: Value = serde_json::from_str(&s.ok(&["path-info", "--json", logical])).unwrap();
    v[0].clone()
}

fn is_valid(s: &TestStore, logical: &str) -> bool {
    s.cmd()
        .args(["path-info", logical])
        .output()
        .unwrap()
        .status
        .success()
}

fn unzstd(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    decompress(Some("zstd"), data)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn serves_cache_info_narinfos_and_nars() {
    let s = TestStore::new();
    let dir = StoreDir::new(&s.store_dir).unwrap();
    let file = add_signed(&s, "hello.txt", file_tree(b"hello\n"));
    let tree = add_signed(&s, "tree", dir_tree);
    let srv = Server::start(&s, &[]);

    let r = srv.get("nix-cache-info").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("text/x-nix-cache-info"));
    assert_eq!(header(&r, "cache-control"), Some("public, max-age=300"));
    let text = r.text().await.unwrap();
    assert_eq!(
        text,
        "StoreDir: /ix/store\nWantMassQuery: 1\nPriority: 30\n"
    );

    for logical in [&file, &tree] {
        let hash = hash_part(logical);
        let r = srv.get(&format!("{hash}.narinfo")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some("text/x-nix-narinfo"));
        assert_eq!(header(&r, "cache-control"), IMMUTABLE);
        let len = header(&r, "content-length").unwrap().to_owned();
        let text = r.text().await.unwrap();
        assert_eq!(len, text.len().to_string());
        let ni = NarInfo::parse(&text, &dir).unwrap();
        assert_eq!(ni.to_text(&dir), text, "canonical Nix layout");
        let want = path_info(&s, logical);
        assert_eq!(ni.store_path(), &base_name(logical));
        assert_eq!(ni.nar_hash().to_sri(), want["narHash"].as_str().unwrap());
        assert_eq!(ni.nar_size(), want["narSize"].as_u64().unwrap());
        assert!(ni.references().is_empty());
        assert_eq!(ni.ca().unwrap().to_string(), want["ca"].as_str().unwrap());
        assert_eq!((ni.compression(), ni.file_hash()), (Some("zstd"), None));
        let url = format!("nar/{hash}-{}.nar.zst", ni.nar_hash().to_nix32());
        assert_eq!(ni.url(), url);
        assert_eq!(ni.sigs().len(), 1);
        store::trust::check_narinfo(&ni, &base_name(logical), &trusted(), &dir).unwrap();

        let h = srv.head(&format!("{hash}.narinfo")).await;
        assert_eq!(h.status(), 200);
        assert_eq!(header(&h, "content-length"), Some(len.as_str()));
        assert!(h.bytes().await.unwrap().is_empty());

        // zstd, compressed on the fly (chunked), then from the on-disk cache (with length).
        let nar = nar_dump(&s, logical);
        let h = srv.head(&url).await;
        assert_eq!(h.status(), 200);
        assert_eq!(header(&h, "content-length"), None, "unknown before caching");
        let r = srv.get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some("application/x-nix-nar"));
        assert_eq!(header(&r, "cache-control"), IMMUTABLE);
        assert_eq!(header(&r, "content-length"), None);
        let first = r.bytes().await.unwrap();
        assert_eq!(unzstd(&first), nar);
        let r = srv.get(&url).await;
        let cached_len = first.len().to_string();
        assert_eq!(header(&r, "content-length"), Some(cached_len.as_str()));
        assert_eq!(r.bytes().await.unwrap(), first);
        let h = srv.head(&url).await;
        assert_eq!(header(&h, "content-length"), Some(cached_len.as_str()));

        // The plain NAR under the same name without `.zst`.
        let plain = url.strip_suffix(".zst").unwrap();
        let nar_len = nar.len().to_string();
        let r = srv.get(plain).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), Some(nar_len.as_str()));
        assert_eq!(r.bytes().await.unwrap().as_ref(), nar.as_slice());
        let h = srv.head(plain).await;
        assert_eq!(header(&h, "content-length"), Some(nar_len.as_str()));
    }

    // Not found: absent path, malformed names, a NAR name with another NarHash.
    let absent = "00000000000000000000000000000000";
    let other = Hash::of(HashAlgo::Sha256, b"other").to_nix32();
    for rel in [
        format!("{absent}.narinfo"),
        "abc.narinfo".to_owned(),
        format!("{}.narinfo.x", hash_part(&file)),
        format!("nar/{}-{other}.nar.zst", hash_part(&file)),
        "nar/garbage.nar".to_owned(),
        "nar/%FF.nar".to_owned(),
        "nar/x/y".to_owned(),
        "index.html".to_owned(),
        "a/b/c".to_owned(),
    ] {
        let r = srv.get(&rel).await;
        assert_eq!(r.status(), 404, "{rel}");
        assert_eq!(header(&r, "cache-control"), Some("no-store"), "{rel}");
        assert_eq!(r.text().await.unwrap(), "Not Found\n");
    }
    let h = srv.head(&format!("{absent}.narinfo")).await;
    assert_eq!(h.status(), 404);
    let r = srv.client.post(srv.url("nix-cache-info")).send().await;
    assert_eq!(r.unwrap().status(), 405);
    // Uploads are off unless configured.
    let narinfo = format!("{absent}.narinfo");
    assert_eq!(srv.put(&narinfo, "x", Some(TOKEN)).await, 403);
}

#[tokio::test]
async fn plain_nars_extra_signature_and_fresh_signatures() {
    let s = TestStore::new();
    let dir = StoreDir::new(&s.store_dir).unwrap();
    let path = add_signed(&s, "tree", dir_tree);
    let keys = s.scratch();
    let (sec2, pub2) = (keys.join("srv.sec"), keys.join("srv.pub"));
    let (sec3, pub3) = (keys.join("late.sec"), keys.join("late.pub"));
    for (name, sec, public) in [("srv-1", &sec2, &pub2), ("late-1", &sec3, &pub3)] {
        let cmd = format!(
            "key generate --name {name} --secret-file {} --public-file {}",
            sec.display(),
            public.display()
        );
        s.ok(&words(&cmd));
    }
    let flags = format!(
        "--compression none --priority 7 --sign-with {}",
        sec2.display()
    );
    let srv = Server::start(&s, &words(&flags));
    let info = srv.get("nix-cache-info").await.text().await.unwrap();
    assert!(info.ends_with("Priority: 7\n"), "{info}");

    let ni = srv.narinfo(&path, &dir).await;
    assert_eq!(ni.compression(), Some("none"));
    assert!(ni.url().ends_with(".nar") && ni.url().starts_with("nar/"));
    assert_eq!(ni.file_hash(), Some(ni.nar_hash()));
    assert_eq!(ni.file_size(), Some(ni.nar_size()));
    assert_eq!(ni.sigs().len(), 2);
    let p = base_name(&path);
    let only = |f: &Path| TrustedKeys::parse_list(&fs::read_to_string(f).unwrap()).unwrap();
    store::trust::check_narinfo(&ni, &p, &only(&pub2), &dir).unwrap();
    store::trust::check_narinfo(&ni, &p, &trusted(), &dir).unwrap();
    let r = srv.get(ni.url()).await;
    let len = ni.nar_size().to_string();
    assert_eq!(header(&r, "content-length"), Some(len.as_str()));
    assert_eq!(r.bytes().await.unwrap().to_vec(), nar_dump(&s, &path));

    // A signature added while serving shows up (the in-memory narinfo is invalidated).
    s.ok(&["sign", "--secret-file", sec3.to_str().unwrap(), &path]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ni = srv.narinfo(&path, &dir).await;
        if ni.sigs().len() == 3 {
            store::trust::check_narinfo(&ni, &p, &only(&pub3), &dir).unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "new signature never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn staging_dir(s: &TestStore) -> PathBuf {
    s.root().join("ix/var/serve/staging")
}

/// A source store with a file path and a tree path, both signed, and its read server.
fn source() -> (TestStore, Server, String, String) {
    let s = TestStore::new();
    let file = add_signed(&s, "hello.txt", file_tree(b"hello\n"));
    let tree = add_signed(&s, "tree", dir_tree);
    let srv = Server::start(&s, &[]);
    (s, srv, file, tree)
}

#[tokio::test]
async fn upload_flow_imports_paths() {
    let (src, src_srv, file, tree) = source();
    let (dst, srv) = upload_target("");
    let dir = StoreDir::new(&dst.store_dir).unwrap();

    // 1. As served (zstd), with a bearer token.
    let ni = src_srv.narinfo(&file, &dir).await;
    let nar = src_srv.fetch(ni.url()).await;
    assert_eq!(srv.put(ni.url(), nar, Some(TOKEN)).await, 204);
    assert!(!is_valid(&dst, &file), "a staged NAR is not a valid path");
    let narinfo_url = format!("{}.narinfo", hash_part(&file));
    let text = ni.to_text(&dir);
    assert_eq!(srv.put(&narinfo_url, text.clone(), Some(TOKEN)).await, 204);
    let mut want = path_info(&src, &file);
    want["registrationTime"] = path_info(&dst, &file)["registrationTime"].clone();
    assert_eq!(path_info(&dst, &file), want);
    // Idempotent: uploading the narinfo again is fine (nothing staged any more).
    assert_eq!(srv.put(&narinfo_url, text, Some(TOKEN)).await, 204);
    let served = srv.narinfo(&file, &dir).await;
    assert_eq!(served.nar_hash(), ni.nar_hash());
    assert_eq!(served.sigs(), ni.sigs());

    // 2. As Nix 2.8 uploads: xz, named by FileHash, with basic auth (from a netrc file).
    let ni = src_srv.narinfo(&tree, &dir).await;
    let plain = src_srv.fetch(ni.url().strip_suffix(".zst").unwrap()).await;
    let mut xz = compress(Compression::Xz, None, Vec::new()).unwrap();
    std::io::Write::write_all(&mut xz, &plain).unwrap();
    let xz = xz.finish().unwrap();
    let file_hash = Hash::of(HashAlgo::Sha256, &xz);
    let mut nix_style = ni.clone();
    let url = format!("nar/{}.nar.xz", file_hash.to_nix32());
    nix_style.set_url(&url).unwrap();
    nix_style.set_compression(Some("xz")).unwrap();
    nix_style.set_file_hash(Some(file_hash)).unwrap();
    nix_style.set_file_size(Some(xz.len() as u64));
    let basic = |rel: &str| srv.client.put(srv.url(rel)).basic_auth("nix", Some(TOKEN));
    let r = basic(&url).body(xz).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let tree_narinfo = format!("{}.narinfo", hash_part(&tree));
    let r = basic(&tree_narinfo)
        .body(nix_style.to_text(&dir))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 204);
    assert!(is_valid(&dst, &tree));
    let served = srv.narinfo(&tree, &dir).await;
    assert_eq!(unzstd(&srv.fetch(served.url()).await), plain);
    dst.ok(&["verify", &tree]);

    // The name the client uploaded under stays readable (Nix keeps its own narinfo and
    // asks for that name later; it also HEADs it before uploading).
    assert_eq!(srv.head(&url).await.status(), 200);
    let mut back = Vec::new();
    let sent = srv.fetch(&url).await;
    decompress(Some("xz"), &sent[..])
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(
        back, plain,
        "any label but none/br is sniffed, like Nix 2.8 does"
    );

    // 3. Same contents under another name, NAR not re-uploaded (Nix skips it when the
    // HEAD above says it exists): imported from the path the alias names.
    let copy = add_signed(&src, "hello-copy.txt", file_tree(b"hello\n"));
    let mut ni = src_srv.narinfo(&copy, &dir).await;
    ni.set_url(src_srv.narinfo(&file, &dir).await.url())
        .unwrap();
    let copy_narinfo = format!("{}.narinfo", hash_part(&copy));
    assert_eq!(
        srv.put(&copy_narinfo, ni.to_text(&dir), Some(TOKEN)).await,
        204
    );
    assert!(is_valid(&dst, &copy));
    dst.ok(&["verify", &copy]);

    let left: Vec<_> = fs::read_dir(staging_dir(&dst)).unwrap().collect();
    assert!(
        left.is_empty(),
        "staged uploads are removed after import: {left:?}"
    );
}

#[tokio::test]
async fn refused_uploads_store_nothing() {
    let (_src, src_srv, file, tree) = source();
    let (dst, srv) = upload_target(" --max-upload-size 200000");
    let dir = StoreDir::new(&dst.store_dir).unwrap();
    let ni = src_srv.narinfo(&file, &dir).await;
    let nar = src_srv.fetch(ni.url()).await;
    let tree_ni = src_srv.narinfo(&tree, &dir).await;
    let tree_nar = src_srv.fetch(tree_ni.url()).await;
    let narinfo_url = format!("{}.narinfo", hash_part(&file));
    let key = SecretKey::parse(&fs::read_to_string(SEC).unwrap()).unwrap();
    let text = ni.to_text(&dir);

    // Credentials: none (401 with a challenge), wrong bearer, wrong basic (403).
    let r = srv
        .client
        .put(srv.url(ni.url()))
        .body(nar.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").unwrap().starts_with("Basic"));
    assert_eq!(header(&r, "connection"), Some("close"));
    assert_eq!(srv.put(ni.url(), nar.clone(), Some("wrong")).await, 403);
    let r = srv
        .client
        .put(srv.url(ni.url()))
        .basic_auth("nix", Some("wrong"));
    assert_eq!(r.body(nar.clone()).send().await.unwrap().status(), 403);
    assert_eq!(srv.put(&narinfo_url, text.clone(), None).await, 401);
    assert_eq!(
        srv.put(&narinfo_url, text.clone(), Some("wrong")).await,
        403
    );
    // Nothing was staged by the refused NAR uploads: the narinfo finds no NAR.
    assert_eq!(srv.put(&narinfo_url, text.clone(), Some(TOKEN)).await, 409);

    // Bad names, too large, bad or foreign narinfos, nix-cache-info.
    for bad in ["nar/..%2Fescape.nar", "nar/UPPER.nar", "nar/x.txt"] {
        assert_eq!(srv.put(bad, "x", Some(TOKEN)).await, 400, "{bad}");
    }
    assert_eq!(
        srv.put("nar/big.nar", vec![0; 200_001], Some(TOKEN)).await,
        413
    );
    assert_eq!(srv.put(&narinfo_url, "garbage\n", Some(TOKEN)).await, 400);
    let foreign = text.replace("/ix/store/", "/nix/store/");
    assert_eq!(srv.put(&narinfo_url, foreign, Some(TOKEN)).await, 400);
    let cache_info = |t: &'static str| srv.put("nix-cache-info", t, Some(TOKEN));
    assert_eq!(cache_info("StoreDir: /ix/store\n").await, 204);
    assert_eq!(cache_info("StoreDir: /nix/store\n").await, 409);
    assert_eq!(cache_info("StoreDir /x\n").await, 400);

    // Stage the real NAR; every narinfo below is refused and leaves the path invalid.
    assert_eq!(srv.put(ni.url(), nar.clone(), Some(TOKEN)).await, 204);
    let mut unsigned = ni.clone();
    unsigned.clear_sigs();
    let mut untrusted = unsigned.clone();
    untrusted.sign(&SecretKey::generate("evil-1").unwrap(), &dir);
    let mut impostor = unsigned.clone();
    impostor.sign(
        &SecretKey::from_seed("test-cache-1", &[9; 32]).unwrap(),
        &dir,
    );
    let mut bad_url = ni.clone();
    bad_url.set_url("http://elsewhere/nar/x.nar").unwrap();
    let mut missing_nar = ni.clone();
    missing_nar.set_url("nar/notstaged.nar.zst").unwrap();
    let ghost: StorePath = "7rjj86a15146cq1d5qy3nnxn4xq0hjwl-ghost".parse().unwrap();
    let mut missing_ref = ni.clone();
    missing_ref.set_ca(None);
    missing_ref.set_references([ghost]);
    missing_ref.clear_sigs();
    missing_ref.sign(&key, &dir);
    let other_hash = format!("{}.narinfo", hash_part(&tree));
    let cases = [
        ("unsigned", &narinfo_url, unsigned.to_text(&dir), 403),
        ("untrusted key", &narinfo_url, untrusted.to_text(&dir), 403),
        (
            "trusted name, other key",
            &narinfo_url,
            impostor.to_text(&dir),
            403,
        ),
        ("for another path", &other_hash, text.clone(), 400),
        ("URL outside nar/", &narinfo_url, bad_url.to_text(&dir), 400),
        (
            "NAR not staged",
            &narinfo_url,
            missing_nar.to_text(&dir),
            409,
        ),
        (
            "missing reference",
            &narinfo_url,
            missing_ref.to_text(&dir),
            409,
        ),
    ];
    for (what, url, body, want) in cases {
        assert_eq!(srv.put(url, body, Some(TOKEN)).await, want, "{what}");
        assert!(!is_valid(&dst, &file) && !is_valid(&dst, &tree), "{what}");
    }

    // The tree's NAR under the file's narinfo: the NarHash check refuses it, and the bad
    // staged NAR is dropped.
    let mut swapped = ni.clone();
    let swapped_url = format!("nar/{}", tree_ni.url().rsplit('/').next().unwrap());
    swapped.set_url(&swapped_url).unwrap();
    assert_eq!(srv.put(&swapped_url, tree_nar, Some(TOKEN)).await, 204);
    assert_eq!(
        srv.put(&narinfo_url, swapped.to_text(&dir), Some(TOKEN))
            .await,
        422
    );
    assert!(!is_valid(&dst, &file));
    assert!(!staging_dir(&dst).join(&swapped_url[4..]).exists());
    // Data that is not compressed in any known way.
    let mut junk = ni.clone();
    junk.set_url("nar/junk.nar.zst").unwrap();
    assert_eq!(
        srv.put("nar/junk.nar.zst", "not zstd", Some(TOKEN)).await,
        204
    );
    assert_eq!(
        srv.put(&narinfo_url, junk.to_text(&dir), Some(TOKEN)).await,
        422
    );
    assert!(!is_valid(&dst, &file));

    // After all that, the genuine narinfo still imports the staged NAR.
    assert_eq!(srv.put(&narinfo_url, text, Some(TOKEN)).await, 204);
    assert!(is_valid(&dst, &file));
    dst.ok(&["verify", &file]);
}

#[tokio::test]
async fn read_token_guards_reads() {
    let s = TestStore::new();
    let path = add_signed(&s, "hello.txt", file_tree(b"hello\n"));
    let (rt, ut) = (s.scratch().join("read"), s.scratch().join("upload"));
    fs::write(&rt, READ_TOKEN).unwrap();
    fs::write(&ut, TOKEN).unwrap();
    let flags = format!(
        "--read-token-file {} --upload-token-file {} --trusted-public-keys {}",
        rt.display(),
        ut.display(),
        public_key()
    );
    let srv = Server::start(&s, &words(&flags));
    let narinfo = format!("{}.narinfo", hash_part(&path));
    for rel in ["nix-cache-info", narinfo.as_str()] {
        let url = srv.url(rel);
        assert_eq!(srv.get(rel).await.status(), 401, "{rel}");
        assert_eq!(srv.head(rel).await.status(), 401, "{rel}");
        let wrong = srv.client.get(&url).bearer_auth("nope").send().await;
        assert_eq!(wrong.unwrap().status(), 403, "{rel}");
        for tok in [READ_TOKEN, TOKEN] {
            let r = srv.client.get(&url).bearer_auth(tok).send().await;
            assert_eq!(r.unwrap().status(), 200, "{rel}");
            let r = srv.client.get(&url).basic_auth("x", Some(tok)).send().await;
            assert_eq!(r.unwrap().status(), 200, "{rel}");
        }
    }
    let r = srv
        .client
        .get(srv.url(&narinfo))
        .bearer_auth(READ_TOKEN)
        .send()
        .await;
    let dir = StoreDir::new("/ix/store").unwrap();
    let ni = NarInfo::parse_bytes(&r.unwrap().bytes().await.unwrap(), &dir).unwrap();
    assert_eq!(srv.get(ni.url()).await.status(), 401);
    let r = srv
        .client
        .get(srv.url(ni.url()))
        .bearer_auth(READ_TOKEN)
        .send()
        .await;
    assert_eq!(
        unzstd(&r.unwrap().bytes().await.unwrap()),
        nar_dump(&s, &path)
    );
    // The read token does not allow uploads.
    assert_eq!(srv.put("nar/x.nar", "x", Some(READ_TOKEN)).await, 403);
}

#[test]
fn sigterm_stops_the_server_and_bad_flags_are_refused() {
    let s = TestStore::new();
    let mut srv = Server::start(&s, &[]);
    let pid = srv.child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

    let tok = s.scratch().join("token");
    fs::write(&tok, "t0k").unwrap();
    let serve = format!(
        "serve --listen 127.0.0.1:0 --upload-token-file {}",
        tok.display()
    );
    let err = s.fails(&words(&serve));
    assert!(err.contains("trusted-public-keys"), "{err}");
    fs::write(&tok, "\n").unwrap();
    let err = s.fails(&words(&format!(
        "{serve} --trusted-public-keys {}",
        public_key()
    )));
    assert!(err.contains("invalid token file"), "{err}");
}

/// Real Nix 2.8: `nix copy --to` our server (xz, netrc basic auth), then `nix copy
/// --from` it into a fresh Nix store with signature checking on.
#[tokio::test]
async fn nix_copies_to_and_from_the_server() {
    if !nix_available("nix_copies_to_and_from_the_server") {
        return;
    }
    let s = TestStore::with_store_dir("/nix/store");
    let tok = s.scratch().join("token");
    fs::write(&tok, TOKEN).unwrap();
    let pk = public_key();
    let flags = format!(
        "--upload-token-file {} --trusted-public-keys {pk}",
        tok.display()
    );
    let srv = Server::start(&s, &words(&flags));
    let work = s.scratch().join("nix");
    fs::create_dir_all(&work).unwrap();
    let (root_a, root_b) = (work.join("a"), work.join("b"));
    let netrc = work.join("netrc");
    let host = srv
        .base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    fs::write(
        &netrc,
        format!("machine {host} login nix password {TOKEN}\n"),
    )
    .unwrap();
    let config = format!(
        "build-users-group =\nsandbox = false\nexperimental-features = nix-command\n\
         substituters =\nnetrc-file = {}\ntrusted-public-keys = {pk}\n",
        netrc.display()
    );
    let nix = |line: String| {
        let argv = words(&line);
        let mut c = nix_cmd(argv[0], &work);
        c.env("NIX_CONFIG", &config).args(&argv[1..]);
        stdout_of(c)
    };
    let tree = s.scratch().join("from-nix");
    dir_tree(&tree);
    let add = format!(
        "nix-store --store {} --add {}",
        root_a.display(),
        tree.display()
    );
    let path = nix(add).trim().to_owned();
    nix(format!(
        "nix store sign --key-file {SEC} --store {} {path}",
        root_a.display()
    ));

    nix(format!(
        "nix copy --store {} --to {} {path}",
        root_a.display(),
        srv.base
    ));
    assert!(
        is_valid(&s, &path),
        "nix copy --to did not make the path valid"
    );
    s.ok(&["verify", &path]);
    assert_eq!(
        path_info(&s, &path)["signatures"].as_array().unwrap().len(),
        1
    );

    // Nix now has its own narinfo (URL nar/<FileHash>.nar.xz) cached for the server.
    nix(format!(
        "nix copy --from {} --to {} {path}",
        srv.base,
        root_b.display()
    ));
    let info = nix(format!(
        "nix path-info --json --store {} {path}",
        root_b.display()
    ));
    let got: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(got[0]["narHash"], path_info(&s, &path)["narHash"]);
}
