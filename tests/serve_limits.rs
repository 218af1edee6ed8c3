//! `store serve` under hostile or careless clients: connections that never finish a
//! request head, idle kept-alive connections, more connections than descriptors,
//! trickling upload bodies, an absurd `Content-Length`, and the size budgets of the NAR
//! cache and the upload aliases. Settings come from flags and from the config file.
//!
//! Every wait has a generous upper bound (a loaded 2-core machine must not fail them);
//! nothing asserts that something happened quickly.

mod common;
mod servekit;

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use servekit::*;
use store::format::store_path::StoreDir;

/// The longest any single wait may take before the test fails.
const BOUND: Duration = Duration::from_secs(60);
/// A hash part no path has.
const NO_SUCH_HASH: &str = "a8z667l486sd21m8rs058ir3b2sh8k14";

fn addr(srv: &Server) -> String {
    srv.base.trim_start_matches("http://").to_owned()
}

/// A connection that has sent the start of a request head and nothing more.
fn partial_head(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    c
}

/// Reads until the server closes the connection; what it sent, or `None` if it was still
/// open after [`BOUND`].
fn read_until_closed(c: &mut TcpStream) -> Option<String> {
    c.set_read_timeout(Some(BOUND)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// One request on a fresh connection (`Connection: close`); the whole response.
fn request(addr: &str, head: &str, body: &[u8]) -> Option<String> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let _ = c.write_all(body);
    read_until_closed(&mut c)
}

fn get_cache_info(addr: &str) -> Option<String> {
    request(
        addr,
        "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
}

fn serve_dir(s: &TestStore, sub: &str) -> PathBuf {
    s.root().join("ix/var/serve").join(sub)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `store serve` with at most `n` descriptors (soft and hard limit).
fn start_with_fd_limit(s: &TestStore, n: u64, args: &[&str]) -> Server {
    use std::os::unix::process::CommandExt;
    let mut cmd = Server::command(s, args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        });
    }
    Server::spawn(cmd)
}

#[test]
fn idle_connections_cannot_lock_others_out() {
    let s = TestStore::new();
    // More idle connections than the server has descriptors, and a head timeout far
    // longer than the test: only the connection limit can keep the server available.
    let srv = start_with_fd_limit(
        &s,
        128,
        &["--max-connections", "8", "--header-timeout", "3600"],
    );
    let a = addr(&srv);
    let mut idle: Vec<TcpStream> = (0..150).map(|_| partial_head(&a)).collect();
    let answer = get_cache_info(&a).expect("a normal request is answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("StoreDir: /ix/store"), "{answer}");
    // The oldest idle connections made room and were closed, without an answer.
    for c in &mut idle[..100] {
        assert_eq!(read_until_closed(c).as_deref(), Some(""));
    }
    let log = srv.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn partial_heads_and_idle_connections_time_out() {
    let s = TestStore::new();
    let srv = Server::start(&s, &["--header-timeout", "1", "--keep-alive-timeout", "1"]);
    let a = addr(&srv);
    let mut partial = partial_head(&a);
    assert_eq!(
        read_until_closed(&mut partial).as_deref(),
        Some(""),
        "a head not finished in time"
    );
    // A kept-alive connection: answered, then closed once idle.
    let mut kept = TcpStream::connect(&a).unwrap();
    kept.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut kept).expect("an idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"));
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let s = TestStore::new();
    let src = s.scratch().join("big");
    // Far more than the socket buffers of both ends hold.
    let size = 32 << 20;
    fs::write(&src, vec![7u8; size]).unwrap();
    let path = s.ok(&["add", src.to_str().unwrap()]).trim().to_owned();
    let mut cmd = Server::command(&s, &["--send-timeout", "1"]);
    cmd.env("STORE_LOG", "debug");
    let srv = Server::spawn(cmd);
    let a = addr(&srv);
    let narinfo = request(
        &a,
        &format!(
            "GET /{}.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            hash_part(&path)
        ),
        b"",
    )
    .unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .trim_end_matches(".zst")
        .to_owned();
    let mut c = TcpStream::connect(&a).unwrap();
    c.write_all(format!("GET /{url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    // Read nothing until the server says it gave up on us.
    let start = std::time::Instant::now();
    while !srv
        .log
        .lock()
        .unwrap()
        .contains("the client stopped reading")
    {
        assert!(
            start.elapsed() < BOUND,
            "the stalled response is never cut off"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = read_until_closed(&mut c).expect("the connection is closed");
    assert!(got.starts_with("HTTP/1.1 200"));
    assert!(got.len() < size, "cut off before the end");
}

#[test]
fn a_trickling_upload_is_cut_off() {
    let (s, srv) = upload_target(" --body-timeout 1 --min-body-rate 1000");
    let a = addr(&srv);
    let mut c = TcpStream::connect(&a).unwrap();
    let head = format!(
        "PUT /nar/slow.nar.zst HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 100000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    let mut writer = c.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // One byte every 50 ms (20 B/s) until the server stops taking them.
        for _ in 0..(BOUND.as_millis() / 50) {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let answer = read_until_closed(&mut c).expect("a trickling body is cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    trickle.join().unwrap();
    assert_eq!(files_in(&serve_dir(&s, "staging")), Vec::<String>::new());
}

#[test]
fn an_enormous_narinfo_is_refused_at_once() {
    let (_s, srv) = upload_target("");
    let head = format!(
        "PUT /{NO_SUCH_HASH}.narinfo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 1000000000000\r\n\r\n"
    );
    // The server must answer without waiting for a body that never comes.
    let answer = request(&addr(&srv), &head, b"StorePath: ").expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let head = head.replace(&format!("{NO_SUCH_HASH}.narinfo"), "nix-cache-info");
    let answer = request(&addr(&srv), &head, b"StoreDir: ").expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn settings_come_from_the_config_file() {
    let s = TestStore::new();
    let tok = s.scratch().join("token");
    fs::write(&tok, TOKEN).unwrap();
    let config = s.scratch().join("config.toml");
    let text = format!(
        "trusted-public-keys = \"{}\"\n[serve]\nheader-timeout = 1\nmax-connections = 4\n",
        public_key()
    );
    fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap();
    // Uploads need trusted keys: these come from the file alone.
    let srv = Server::start(
        &s,
        &[
            "--config",
            cfg,
            "--upload-token-file",
            tok.to_str().unwrap(),
        ],
    );
    let body = "StoreDir: /ix/store\n";
    let head = format!(
        "PUT /nix-cache-info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let answer = request(&addr(&srv), &head, body.as_bytes()).expect("answered");
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let mut partial = partial_head(&addr(&srv));
    assert_eq!(read_until_closed(&mut partial).as_deref(), Some(""));
    // An unknown key in the table is an error.
    fs::write(&config, "[serve]\nmax-connection = 4\n").unwrap();
    let err = s.fails(&["--config", cfg, "serve", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("max-connection"), "{err}");
}

/// Adds `n` small signed paths.
fn small_paths(s: &TestStore, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let content = format!("path number {i}\n");
            add_signed(s, &format!("p{i}"), move |p| fs::write(p, content).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn the_nar_cache_keeps_to_its_budget_least_recently_used_first() {
    const BLOCK: u64 = 4096;
    let s = TestStore::new();
    let paths = small_paths(&s, 12);
    let budget = (10 * BLOCK).to_string();
    let srv = Server::start(&s, &["--nar-cache-size", &budget]);
    assert!(srv
        .log
        .lock()
        .unwrap()
        .contains("nar-cache 0 B in 0 files of 40.0 KiB"));
    let dir = StoreDir::new(&s.store_dir).unwrap();
    let mut urls = Vec::new();
    for p in &paths {
        urls.push(srv.narinfo(p, &dir).await.url().to_owned());
    }
    let cached = |url: &str| serve_dir(&s, "nar-cache").join(url.trim_start_matches("nar/"));
    let first = srv.fetch(&urls[0]).await;
    for url in &urls[1..] {
        srv.fetch(url).await;
        // The first NAR is read again after every other one: always the most recent.
        assert_eq!(srv.fetch(&urls[0]).await, first);
        assert!(cached(url).exists(), "{url} is cached once downloaded");
    }
    assert!(cached(&urls[0]).exists(), "used most recently: kept");
    assert!(!cached(&urls[1]).exists(), "used least recently: evicted");
    assert!(cached(&urls[11]).exists());
    let used: u64 = files_in(&serve_dir(&s, "nar-cache"))
        .iter()
        .map(|f| {
            fs::metadata(serve_dir(&s, "nar-cache").join(f))
                .unwrap()
                .len()
        })
        .map(|len| len.div_ceil(BLOCK) * BLOCK)
        .sum();
    assert!(used <= 10 * BLOCK, "{used}");
    // An evicted NAR is still served (compressed again).
    let again = srv.fetch(&urls[1]).await;
    assert!(!again.is_empty());
}

#[tokio::test]
async fn upload_aliases_keep_to_their_budget() {
    let src = TestStore::new();
    let paths = small_paths(&src, 3);
    let src_srv = Server::start(&src, &[]);
    let (dst, srv) = upload_target(" --alias-cache-size 8192");
    let dir = StoreDir::new(&dst.store_dir).unwrap();
    let mut names = Vec::new();
    for p in &paths {
        let ni = src_srv.narinfo(p, &dir).await;
        let nar = src_srv.fetch(ni.url()).await;
        assert_eq!(srv.put(ni.url(), nar, Some(TOKEN)).await, 204);
        let narinfo = format!("{}.narinfo", hash_part(p));
        assert_eq!(srv.put(&narinfo, ni.to_text(&dir), Some(TOKEN)).await, 204);
        names.push(ni.url().trim_start_matches("nar/").to_owned());
    }
    // Two blocks: the third alias evicts down to 15/16 of that, keeping the newest.
    assert_eq!(files_in(&serve_dir(&dst, "aliases")), [names[2].clone()]);
}
