//! Crash injection through the real binary: commands killed with SIGKILL, then the
//! invariants a kill at any instant must keep (store-format.md, "Temp data").
//!
//! * `killed_push_*`: the regression tests of the push's temp data leak (compressed NARs
//!   in `<state>/tmp`, `.tmp-*` objects in a `file://` cache), killed at the moment both
//!   exist and reclaimed by the rerun, or by `gc`.
//! * `crash_harness`: kills `copy --to file://`, `realise` (from a `file://` cache), `add`,
//!   `gc`, `copy --to http://` (a `store serve` upload) and the `serve` process itself at
//!   seeded random moments, `STORE_CRASH_INJECTIONS` times (default 60), and after each
//!   checks that `verify --all` passes, that every valid path's references are valid, that
//!   no narinfo of a cache lacks its NAR or has a short one, that the rerun succeeds and
//!   that no temp data is left once it is done. The seed is printed, and taken from
//!   `STORE_CRASH_SEED` when set, so a failure can be replayed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The closure in the Nix 2.8 vector caches (three paths with references).
const VEC_ROOT: &str = "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c";
const NIX_DIR: &str = "/nix/store";
const UPLOAD_TOKEN: &str = "crash-upload-token-0123456789";
/// How long any one command may take before the test fails.
const LIMIT: Duration = Duration::from_secs(120);

/// Writes `count` files of `size` random bytes and adds each; returns their store paths.
fn add_random_files(
    s: &TestStore,
    rng: &mut Rng,
    tag: &str,
    count: usize,
    size: usize,
) -> Vec<String> {
    (0..count)
        .map(|i| {
            let f = s.scratch().join(format!("{tag}-{i}"));
            fs::write(&f, rng.bytes(size)).unwrap();
            let p = s.ok(&["add", f.to_str().unwrap()]).trim().to_owned();
            fs::remove_file(&f).unwrap();
            p
        })
        .collect()
}

/// A directory of `files` random files, `size` bytes each, under the scratch dir.
fn random_tree(s: &TestStore, rng: &mut Rng, tag: &str, files: usize, size: usize) -> PathBuf {
    let dir = s.scratch().join(tag);
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..files {
        let sub = if i % 2 == 0 { "" } else { "sub/" };
        fs::write(dir.join(format!("{sub}f{i}")), rng.bytes(size)).unwrap();
    }
    dir
}

/// Spawns `cmd` (output discarded) and SIGKILLs it once `now(elapsed)` says so; returns
/// whether it was killed (false: it ended first, with success or not).
fn kill_when(mut cmd: Command, mut now: impl FnMut(Duration) -> bool) -> bool {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if now(start.elapsed()) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        assert!(start.elapsed() < LIMIT, "{cmd:?} never ended");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `cmd` to completion; its duration. Panics with its output on failure.
fn run_ok(cmd: Command, what: &str) -> Duration {
    let start = Instant::now();
    let out = run_with_timeout(cmd, LIMIT);
    assert_success(&out, what);
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// Regression tests: the push's temp data

/// Kills `copy --to file://cache PATHS` as soon as both its compressed NAR in the state
/// dir and the cache object being written exist; true if it was killed with both left.
fn kill_push_mid_write(s: &TestStore, cache: &Path, paths: &[String]) -> bool {
    let mut c = s.cmd();
    c.args(["copy", "--to", &file_url(cache)]).args(paths);
    let state_tmp = s.root().join("ix/var/tmp");
    let both = || {
        let in_store = fs::read_dir(&state_tmp).is_ok_and(|mut d| d.next().is_some());
        in_store && !cache_temp_leftovers(cache).is_empty()
    };
    kill_when(c, |_| both()) && both()
}

#[test]
fn killed_push_is_reclaimed_by_the_rerun() {
    let s = TestStore::new();
    let cache = s.dir.path().join("cache");
    let mut rng = Rng::new(7);
    let mut hit = None;
    for attempt in 1..=5 {
        let paths = add_random_files(&s, &mut rng, &format!("a{attempt}"), 6, attempt << 21);
        if kill_push_mid_write(&s, &cache, &paths) {
            hit = Some(paths);
            break;
        }
    }
    let paths = hit.expect("the push always ended before it could be killed mid-write");
    let mut c = s.cmd();
    c.args(["copy", "--to", &file_url(&cache)]).args(&paths);
    run_ok(c, "rerun of the killed push");
    no_temp_in_store(&s).unwrap();
    no_temp_in_cache(&cache).unwrap();
    assert!(check_cache(&cache).unwrap() >= paths.len());
    check_store(&s).unwrap();
}

#[test]
fn killed_push_is_reclaimed_by_gc() {
    let s = TestStore::new();
    let cache = s.dir.path().join("cache");
    let mut rng = Rng::new(8);
    let hit = (1..=5).any(|attempt| {
        let paths = add_random_files(&s, &mut rng, &format!("g{attempt}"), 6, attempt << 21);
        kill_push_mid_write(&s, &cache, &paths)
    });
    assert!(
        hit,
        "the push always ended before it could be killed mid-write"
    );
    s.ok(&["gc"]);
    no_temp_in_store(&s).unwrap();
    check_store(&s).unwrap();
}

/// Names of the files under `dir`, recursively, that look like temp files.
fn temp_files_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(temp_files_below(&e.path()));
        } else if e.file_name().to_string_lossy().contains(".tmp") {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn killed_build_leaves_no_log_temp() {
    if !sandbox_or_skip("killed_build_leaves_no_log_temp") {
        return;
    }
    let s = TestStore::new();
    let recipe = s.scratch().join("slow.toml");
    fs::write(
        &recipe,
        "name = \"slow\"\nbuilder = \"/bin/sh\"\n\
         args = [\"-c\", \"echo started; /bin/sleep 2; echo x > $out\"]\n",
    )
    .unwrap();
    let out = s.ok(&["instantiate", "--json", recipe.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let drv = v[0]["drvPath"].as_str().unwrap().to_owned();
    let mut c = s.cmd();
    c.args(["realise", "--sandbox-paths", &sandbox_paths(), &drv]);
    let state = s.root().join("ix/var");
    let killed = kill_when(c, |t| {
        t > Duration::from_millis(500)
            && (!temp_files_below(&state.join("log")).is_empty()
                || !temp_files_below(&state.join("tmp")).is_empty())
    });
    assert!(killed, "the build ended before it could be killed");
    std::thread::sleep(Duration::from_secs(2)); // the builder's sleep ends
    s.ok(&["gc"]);
    let left = temp_files_below(&state);
    assert!(
        left.is_empty(),
        "temp files left under the state dir: {left:?}"
    );
    no_temp_in_store(&s).unwrap();
}

// ---------------------------------------------------------------------------------------
// The harness

/// What is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    CopyFile,
    Realise,
    Add,
    Gc,
    CopyHttp,
    ServeUpload,
}

const KINDS: [Kind; 6] = [
    Kind::CopyFile,
    Kind::Realise,
    Kind::Add,
    Kind::Gc,
    Kind::CopyHttp,
    Kind::ServeUpload,
];

/// A running `store serve` accepting uploads, killed by PID when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(s: &TestStore, token_file: &Path) -> Server {
        let mut cmd = s.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--upload-token-file"])
            .arg(token_file)
            .args(["--trusted-public-keys", &test_public_key()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let url = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("store serve exited before listening");
            }
            if let Some(addr) = line.trim().strip_prefix("store serve: listening on ") {
                break addr.to_owned();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, url }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fixed parts: a source store with a closure of references plus random data, a
/// complete `file://` cache of it, and a target store to realise, add and collect in.
struct Rig {
    seed: u64,
    rng: Rng,
    src: TestStore,
    /// Everything in `src` that is pushed and realised.
    roots: Vec<String>,
    full_cache: PathBuf,
    target: TestStore,
    token_file: PathBuf,
    config: PathBuf,
    secret_key: PathBuf,
    /// Uninterrupted duration of each kind, the range kills are drawn from.
    span: BTreeMap<Kind, Duration>,
    adds: usize,
}

impl Rig {
    fn new(seed: u64) -> Rig {
        let mut rng = Rng::new(seed);
        let src = TestStore::with_store_dir(NIX_DIR);
        let vectors = file_url(&fixture("caches/none"));
        src.ok(&[
            "realise",
            "--substituters",
            &vectors,
            "--trusted-public-keys",
            &test_public_key(),
            VEC_ROOT,
        ]);
        let mut roots = vec![VEC_ROOT.to_owned()];
        for (i, size) in [64 << 10, 256 << 10, 1 << 20, 2 << 20, 512 << 10, 3 << 20]
            .into_iter()
            .enumerate()
        {
            roots.extend(add_random_files(&src, &mut rng, &format!("r{i}"), 1, size));
        }
        let tree = random_tree(&src, &mut rng, "tree", 150, 4 << 10);
        roots.push(src.ok(&["add", tree.to_str().unwrap()]).trim().to_owned());
        let token_file = src.scratch().join("token");
        fs::write(&token_file, format!("{UPLOAD_TOKEN}\n")).unwrap();
        let config = src.scratch().join("config.toml");
        fs::write(&config, format!("bearer-token = \"{UPLOAD_TOKEN}\"\n")).unwrap();
        let mut rig = Rig {
            seed,
            rng,
            roots,
            full_cache: src.dir.path().join("full-cache"),
            target: TestStore::with_store_dir(NIX_DIR),
            token_file,
            config,
            secret_key: fixture("keys/test-cache-1.sec"),
            src,
            span: BTreeMap::new(),
            adds: 0,
        };
        rig.calibrate();
        rig
    }

    /// Runs each kind once uninterrupted, timing it; leaves the full cache written and
    /// the target store empty.
    fn calibrate(&mut self) {
        let full = file_url(&self.full_cache);
        let d = run_ok(self.copy_to(&full), "first push");
        self.span.insert(Kind::CopyFile, d);
        let d = run_ok(self.realise(), "first realise");
        self.span.insert(Kind::Realise, d);
        let d = run_ok(self.add(), "first add");
        self.span.insert(Kind::Add, d);
        let d = run_ok(self.gc(), "first gc");
        self.span.insert(Kind::Gc, d);
        // The first upload is slower than the later ones: take the faster of two.
        let d = (0..2)
            .map(|_| {
                let dest = TestStore::with_store_dir(NIX_DIR);
                let server = Server::start(&dest, &self.token_file);
                run_ok(self.copy_to(&server.url), "calibration upload")
            })
            .min()
            .unwrap();
        self.span.insert(Kind::CopyHttp, d);
        self.span.insert(Kind::ServeUpload, d);
    }

    fn copy_to(&self, url: &str) -> Command {
        let mut c = self.src.cmd();
        c.arg("--config").arg(&self.config);
        c.args(["copy", "--to", url, "--secret-key-file"])
            .arg(&self.secret_key)
            .args(&self.roots);
        c
    }

    fn realise(&self) -> Command {
        let mut c = self.target.cmd();
        c.args(["realise", "--substituters", &file_url(&self.full_cache)])
            .args(["--trusted-public-keys", &test_public_key()])
            .args(&self.roots);
        c
    }

    fn add(&mut self) -> Command {
        self.adds += 1;
        let tag = format!("add{}", self.adds);
        let tree = random_tree(&self.target, &mut self.rng, &tag, 64, 32 << 10);
        let mut c = self.target.cmd();
        c.arg("add").arg(tree);
        c
    }

    fn gc(&self) -> Command {
        let mut c = self.target.cmd();
        c.arg("gc");
        c
    }

    /// A random moment in the uninterrupted duration of `kind` (a little past it too,
    /// so that kills at the very end happen).
    fn moment(&mut self, kind: Kind) -> Duration {
        let span = self
            .span
            .get(&kind)
            .copied()
            .unwrap_or(Duration::from_millis(200));
        let micros = span.as_micros() as u64 * 6 / 5 + 1000;
        Duration::from_micros(self.rng.below(micros))
    }

    /// Runs `cmd` killed at a random moment of `kind`; true if the kill landed.
    fn inject(&mut self, kind: Kind, cmd: Command) -> bool {
        let at = self.moment(kind);
        kill_when(cmd, |t| t >= at)
    }

    /// One injection of `kind` with its checks and rerun; whether the kill landed.
    fn round(&mut self, kind: Kind) -> Result<bool, String> {
        match kind {
            Kind::CopyFile => self.round_copy_file(),
            Kind::Realise => {
                let hit = self.inject(kind, self.realise());
                check_store(&self.target)?;
                self.rerun(kind, self.realise())?;
                no_temp_in_store(&self.target)?;
                Ok(hit)
            }
            Kind::Add => {
                let cmd = self.add();
                let rerun = clone_cmd(&cmd);
                let hit = self.inject(kind, cmd);
                check_store(&self.target)?;
                self.rerun(kind, rerun)?;
                no_temp_in_store(&self.target)?;
                Ok(hit)
            }
            Kind::Gc => {
                // Something to collect: the closure (unrooted) and what `add` added.
                run_ok(self.realise(), "realise before gc");
                let hit = self.inject(kind, self.gc());
                check_store(&self.target)?;
                self.rerun(kind, self.gc())?;
                no_temp_in_store(&self.target)?;
                Ok(hit)
            }
            Kind::CopyHttp | Kind::ServeUpload => self.round_http(kind),
        }
    }

    fn round_copy_file(&mut self) -> Result<bool, String> {
        let cache = self.src.dir.path().join("cache");
        let _ = fs::remove_dir_all(&cache);
        let hit = self.inject(Kind::CopyFile, self.copy_to(&file_url(&cache)));
        check_cache(&cache)?;
        check_store(&self.src)?;
        self.rerun(Kind::CopyFile, self.copy_to(&file_url(&cache)))?;
        let n = check_cache(&cache)?;
        if n < self.roots.len() {
            return Err(format!("{n} narinfos after the rerun"));
        }
        no_temp_in_cache(&cache)?;
        no_temp_in_store(&self.src).map(|()| hit)
    }

    /// Kills the client (`CopyHttp`) or the server (`ServeUpload`) of an upload into a
    /// fresh store, then restarts what was killed and reruns the upload.
    fn round_http(&mut self, kind: Kind) -> Result<bool, String> {
        let dest = TestStore::with_store_dir(NIX_DIR);
        let mut server = Some(Server::start(&dest, &self.token_file));
        let url = server.as_ref().unwrap().url.clone();
        let hit = if kind == Kind::CopyHttp {
            self.inject(kind, self.copy_to(&url))
        } else {
            let at = self.moment(Kind::CopyHttp);
            let mut client = self
                .copy_to(&url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(at);
            let landed = client.try_wait().unwrap().is_none();
            server.take().unwrap().kill();
            wait_bounded(&mut client);
            landed
        };
        check_store(&dest)?;
        let server = server.unwrap_or_else(|| Server::start(&dest, &self.token_file));
        self.rerun(kind, self.copy_to(&server.url))?;
        let valid = check_store(&dest)?;
        if valid < self.roots.len() {
            return Err(format!("{valid} valid paths after the rerun"));
        }
        no_temp_in_store(&self.src)?;
        drop(server);
        // A restarted server reclaims at once what a killed one left in its own dirs.
        let serve_dir = dest.root().join("ix/var/serve");
        for dir in ["staging", "nar-cache", "aliases"] {
            let left = temp_files_below(&serve_dir.join(dir));
            if !left.is_empty() {
                return Err(format!(
                    "serve/{dir} kept temp files after the rerun: {left:?}"
                ));
            }
        }
        // With the server gone, its store's temp dirs are reclaimed by the next command.
        check_store(&dest)?;
        no_temp_in_store(&dest)?;
        Ok(hit)
    }

    fn rerun(&self, kind: Kind, cmd: Command) -> Result<(), String> {
        let out = run_with_timeout(cmd, LIMIT);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("rerun of {kind:?} failed: {}", text(&out.stderr)))
        }
    }
}

/// Waits (bounded by [`LIMIT`], then killed) for a child whose output is discarded.
fn wait_bounded(child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A second command with the same program, arguments and environment.
fn clone_cmd(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

#[test]
fn crash_harness() {
    let injections: usize = std::env::var("STORE_CRASH_INJECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("STORE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash harness: seed {seed} (STORE_CRASH_SEED), {injections} injections");
    let mut rig = Rig::new(seed);
    // (injections, kills that landed before the command ended)
    let mut tally: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..injections {
        let kind = KINDS[i % KINDS.len()];
        match rig.round(kind) {
            Ok(landed) => {
                let t = tally.entry(kind).or_default();
                t.0 += 1;
                t.1 += usize::from(landed);
            }
            Err(e) => panic!(
                "injection {i} ({kind:?}) broke an invariant: {e}\n\
                 replay with STORE_CRASH_SEED={} STORE_CRASH_INJECTIONS={}",
                rig.seed,
                i + 1
            ),
        }
    }
    eprintln!(
        "crash harness: seed {seed}: {injections} injections in {:.1} s, 0 failures",
        started.elapsed().as_secs_f64()
    );
    for (kind, (n, landed)) in &tally {
        eprintln!("  {kind:?}: {n} injections, {landed} killed before the end");
    }
    let landed: usize = tally.values().map(|t| t.1).sum();
    assert!(
        injections < KINDS.len() * 2 || landed * 2 >= injections,
        "only {landed} of {injections} kills landed before their command ended (seed {seed})"
    );
}
