//! `store cargo` end to end on the fixture workspaces (tests/fixtures/cargo), driving the
//! real binary and real cargo against crates.io. One recording is shared by the cases:
//! checkout A (its own CARGO_HOME, store root A) records `ws-a` and pushes it to a `file://`
//! cache; each case then builds a fresh checkout at another path, with another CARGO_HOME
//! and a fresh store, from that cache (or a damaged copy of it) and checks every unit's
//! outcome in the `--report`.
//!
//! The crates come from the registry through cargo. Where it cannot be reached the cases
//! print a loud SKIPPED line; with `STORE_REQUIRE_REGISTRY=1` (as CI sets) they fail.
//!
//! Units are rustc runs and build-script runs (`<package> (build script run)`); a build
//! script's own rustc probes (proc-macro2 compiles small files into its OUT_DIR) are not
//! units and do not appear in reports.

mod cargokit;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use cargokit::*;
use common::{assert_success, bare_cmd, copy_dir, file_url, fixture, run_with_timeout, text};

/// The recording every case builds from.
struct Shared {
    /// Where the shared data lives (removed at the start of the next run).
    dir: PathBuf,
    a: Checkout,
    config: PathBuf,
    cache: PathBuf,
    recorded: Report,
    /// What `store cargo --record` printed on stdout.
    stdout: String,
    app_output: Vec<u8>,
}

impl Shared {
    fn cache_url(&self) -> String {
        file_url(&self.cache)
    }

    /// A fresh checkout of `workspace` for one case, in `parent`.
    fn checkout(parent: &Path, workspace: &str) -> Checkout {
        Checkout::new(parent, "b", workspace)
    }
}

/// The shared recording, made once per test binary; `None` when the registry cannot be
/// reached (after a loud SKIPPED line; a failure with `STORE_REQUIRE_REGISTRY=1`).
fn shared(test: &str) -> Option<&'static Shared> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    match SHARED.get_or_init(record_shared) {
        Ok(s) => Some(s),
        Err(why) => {
            if std::env::var("STORE_REQUIRE_REGISTRY").as_deref() == Ok("1") {
                panic!("{test}: STORE_REQUIRE_REGISTRY=1 but crates.io is unusable: {why}");
            }
            eprintln!("\n*** SKIPPED {test}: crates.io cannot be reached: {why} ***\n");
            None
        }
    }
}

/// Fetches ws-a's crates into checkout A's CARGO_HOME (the registry probe: Err on
/// failure), then records the build and pushes it to the shared cache.
fn record_shared() -> Result<Shared, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("store-cargo-tests");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let a = Checkout::new(&dir, "a", "ws-a");
    let mut fetch = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    a.cargo_env(&mut fetch);
    fetch.args(["fetch", "--locked"]);
    let out = run_with_timeout(fetch, BUILD_LIMIT);
    if !out.status.success() {
        return Err(format!("cargo fetch: {}", text(&out.stderr).trim()));
    }
    let config = dir.join("config.toml");
    let secret = fixture("keys/test-cache-1.sec");
    std::fs::write(
        &config,
        format!("secret-key-files = \"{}\"\n", secret.display()),
    )
    .unwrap();
    let cache = dir.join("cache");
    let run = a
        .store_cargo(
            &["--config", config.to_str().unwrap()],
            &["--record", "--push-to", &file_url(&cache)],
            &["build", "--locked"],
        )
        .ok();
    let app_output = a.run_app();
    Ok(Shared {
        dir,
        stdout: text(&run.out.stdout),
        recorded: run.report,
        app_output,
        a,
        config,
        cache,
    })
}

fn key() -> String {
    common::test_public_key()
}

/// Every unit of `run` was compiled (a miss) with `reason`, and none was installed.
fn all_compiled_because(run: &Run, reason: &str) {
    let units = run.report.units();
    assert!(!units.is_empty(), "{}", run.stderr());
    for e in units {
        assert_eq!(e.outcome, "compiled", "{e:?}");
        assert_eq!(e.reason.as_deref(), Some(reason), "{e:?}");
    }
    let installed = run
        .report
        .entries
        .iter()
        .filter(|e| matches!(e.outcome.as_str(), "substituted" | "local"));
    assert_eq!(installed.count(), 0, "{}", run.stderr());
}

#[test]
fn a_second_checkout_builds_from_the_cache_only() {
    let Some(s) = shared("a_second_checkout_builds_from_the_cache_only") else {
        return;
    };
    let rec = &s.recorded;
    assert_eq!(rec.totals["substituted"], 0);
    assert!(rec.crates_with("recorded").is_superset(&BTreeSet::from([
        "itoa".to_owned(),
        "serde".to_owned(),
        "serde_core".to_owned(),
        "serde_derive".to_owned(),
        "bzip2_sys".to_owned(),
        "cc".to_owned(),
        "build_script_build".to_owned(),
        "bzip2-sys (build script run)".to_owned(),
        "serde (build script run)".to_owned(),
    ])));
    // Only the workspace's own crates are not cacheable (a debug build's are incremental).
    for e in &rec.entries {
        let expected =
            (e.source_kind == "local").then_some(("uncacheable", Some("incremental compilation")));
        let got = (e.outcome.as_str(), e.reason.as_deref());
        assert_eq!(got, expected.unwrap_or(("recorded", None)), "{e:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let b = Shared::checkout(d.path(), "ws-a");
    assert_ne!(b.dir, s.a.dir);
    let run = b.build_from(&s.cache_url(), &key(), &[]).ok();
    let keys_a: BTreeMap<&str, &str> = rec
        .units()
        .iter()
        .map(|e| (e.key.as_deref().unwrap(), e.krate.as_str()))
        .collect();
    let mut substituted = 0;
    for e in run.report.units() {
        assert_eq!(
            keys_a.get(e.key.as_deref().unwrap()),
            Some(&e.krate.as_str()),
            "{e:?}"
        );
        assert_eq!(e.outcome, "substituted", "{e:?}\n{}", run.stderr());
        substituted += 1;
    }
    assert_eq!(substituted, keys_a.len());
    // Nothing else ran rustc as a unit.
    for e in run.report.entries.iter().filter(|e| e.key.is_some()) {
        assert!(e.is_unit(), "{e:?}");
    }
    assert_eq!(b.run_app(), s.app_output);

    let again = b.build_from(&s.cache_url(), &key(), &[]).ok();
    assert!(
        again.report.entries.is_empty(),
        "{:?}",
        again.report.entries
    );
    assert_eq!(again.report.totals["compiled"], 0);
    assert_eq!(b.run_app(), s.app_output);

    // After `cargo clean`, every unit B installed comes from its own store.
    let clean = b.store_cargo(&[], &[], &["clean"]).ok();
    assert!(clean.report.entries.is_empty());
    assert!(!b.dir.join("target").exists());
    let rebuilt = b.store_cargo(&[], &[], &["build", "--locked"]).ok();
    let local: BTreeSet<String> = run
        .report
        .units()
        .iter()
        .filter(|e| e.outcome == "substituted")
        .map(|e| e.key.clone().unwrap())
        .collect();
    for e in rebuilt.report.units() {
        let key = e.key.clone().unwrap();
        let expected = if local.contains(&key) {
            "local"
        } else {
            "compiled"
        };
        assert_eq!(e.outcome, expected, "{e:?}");
    }
    let installed = rebuilt
        .report
        .units()
        .into_iter()
        .filter(|e| e.outcome == "local");
    assert_eq!(installed.count(), local.len());
    assert_eq!(b.run_app(), s.app_output);
}

/// A crate whose build script compiles C hits on a warm cache: the build-script run is a
/// unit (its OUT_DIR replayed), and the C objects carry no CARGO_HOME path
/// (`-ffile-prefix-map`), so the run could be recorded and the lib's key is the same here.
#[test]
fn c_compiled_by_a_build_script_hits_across_checkouts() {
    let Some(s) = shared("c_compiled_by_a_build_script_hits_across_checkouts") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let b = Shared::checkout(d.path(), "ws-a");
    let run = b.build_from(&s.cache_url(), &key(), &[]).ok();
    for name in ["bzip2_sys", "bzip2-sys (build script run)"] {
        let e = run
            .report
            .units()
            .into_iter()
            .find(|e| e.krate == *name)
            .unwrap();
        assert_eq!(e.outcome, "substituted", "{e:?}");
    }
}

#[test]
fn the_manifest_references_every_recorded_unit_and_pins_the_cache() {
    let Some(s) = shared("the_manifest_references_every_recorded_unit_and_pins_the_cache") else {
        return;
    };
    let manifest = s.recorded.manifest.clone().expect("a manifest");
    assert_eq!(s.stdout.trim(), manifest);
    assert!(manifest.ends_with("-cargo-manifest"), "{manifest}");
    let recorded: BTreeSet<String> = s
        .recorded
        .entries
        .iter()
        .filter(|e| e.outcome == "recorded")
        .map(|e| e.store_path.clone().unwrap())
        .collect();
    let info = |root: &Path| -> serde_json::Value {
        let mut c = bare_cmd(&s.dir);
        c.arg("--root")
            .arg(root)
            .args(["path-info", "--json", &manifest]);
        let out = c.output().unwrap();
        assert_success(&out, "path-info");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let refs = |v: &serde_json::Value| -> BTreeSet<String> {
        v[0]["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(refs(&info(&s.a.root)), recorded);
    let text = std::fs::read_to_string(format!("{}{manifest}", s.a.root.display())).unwrap();
    for p in &recorded {
        assert!(
            text.contains(p.as_str()),
            "{p} not in the manifest:\n{text}"
        );
    }

    // Realised elsewhere from the cache, the manifest brings every unit with it.
    let d = tempfile::tempdir().unwrap();
    let mut c = bare_cmd(d.path());
    c.arg("--root").arg(d.path().join("root"));
    c.args([
        "realise",
        "--substituters",
        &s.cache_url(),
        "--trusted-public-keys",
    ]);
    c.arg(key()).arg(&manifest);
    let out = run_with_timeout(c, BUILD_LIMIT);
    assert_success(&out, "realise the manifest");
    assert_eq!(refs(&info(&d.path().join("root"))), recorded);
}

/// A copy of the shared cache to damage.
fn cache_copy(s: &Shared, to: &Path) -> String {
    copy_dir(&s.cache, to);
    file_url(to)
}

#[test]
fn a_tampered_nar_is_compiled_locally() {
    let Some(s) = shared("a_tampered_nar_is_compiled_locally") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let cache_dir = d.path().join("cache");
    let url = cache_copy(s, &cache_dir);
    let itoa = s
        .recorded
        .units()
        .into_iter()
        .find(|e| e.krate == "itoa")
        .unwrap();
    let info =
        std::fs::read_to_string(narinfo(&cache_dir, itoa.store_path.as_ref().unwrap())).unwrap();
    let nar = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let nar = cache_dir.join(nar);
    let mut bytes = std::fs::read(&nar).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&nar, bytes).unwrap();

    let b = Shared::checkout(d.path(), "ws-a");
    let run = b.build_from(&url, &key(), &[]).ok();
    for e in run.report.units() {
        if e.krate == "itoa" {
            assert_eq!(e.outcome, "compiled", "{e:?}");
            assert_eq!(e.reason.as_deref(), Some("download failed or rejected"));
        } else {
            assert_eq!(e.outcome, "substituted", "{e:?}");
        }
    }
    let mut c = bare_cmd(d.path());
    c.arg("--root")
        .arg(&b.root)
        .args(["path-info", itoa.store_path.as_ref().unwrap()]);
    assert!(
        !c.output().unwrap().status.success(),
        "the tampered unit is not valid"
    );
    assert_eq!(b.run_app(), s.app_output);
}

#[test]
fn an_unsigned_cache_is_compiled_locally() {
    let Some(s) = shared("an_unsigned_cache_is_compiled_locally") else {
        return;
    };
    // Recorded and pushed without any signing key.
    let d = tempfile::tempdir().unwrap();
    let unsigned = d.path().join("unsigned-cache");
    let u = Checkout::new(d.path(), "u", "ws-a");
    let rec = u
        .store_cargo(
            &[],
            &["--record", "--push-to", &file_url(&unsigned)],
            &["build", "--locked"],
        )
        .ok();
    assert!(!rec.report.crates_with("recorded").is_empty());
    let some = narinfo(
        &unsigned,
        rec.report.units()[0].store_path.as_ref().unwrap(),
    );
    assert!(!std::fs::read_to_string(some).unwrap().contains("Sig:"));

    let b = Shared::checkout(d.path(), "ws-a");
    let run = b.build_from(&file_url(&unsigned), &key(), &[]).ok();
    all_compiled_because(&run, "untrusted entry");
    assert_eq!(b.run_app(), s.app_output);
}

#[test]
fn a_cache_signed_by_an_untrusted_key_is_compiled_locally() {
    let Some(s) = shared("a_cache_signed_by_an_untrusted_key_is_compiled_locally") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (sec, public) = (d.path().join("other.sec"), d.path().join("other.pub"));
    let mut c = bare_cmd(d.path());
    c.args(["key", "generate", "--name", "other-1", "--secret-file"]);
    c.arg(&sec).arg("--public-file").arg(&public);
    assert_success(&c.output().unwrap(), "key generate");
    let other = std::fs::read_to_string(&public).unwrap();

    let b = Shared::checkout(d.path(), "ws-a");
    let run = b.build_from(&s.cache_url(), other.trim(), &[]).ok();
    all_compiled_because(&run, "untrusted entry");
    assert_eq!(b.run_app(), s.app_output);
}

/// A build against an unusable cache succeeds, compiling every unit; no unit's wrapper
/// waits longer than `max_wait` for the cache, and once one found it unusable the others
/// do not wait for it (a few started before that may). Wall time is bounded only as a hang
/// guard: parallel tests load this machine.
fn unusable_cache(url: &str, max_wait: Duration) {
    let d = tempfile::tempdir().unwrap();
    let b = Shared::checkout(d.path(), "ws-a");
    let run = b.build_from(url, &key(), &[]).ok();
    assert!(
        run.elapsed < Duration::from_secs(180),
        "took {:?}",
        run.elapsed
    );
    all_compiled_because(&run, "substituters unavailable");
    let waits: Vec<f64> = run
        .report
        .units()
        .iter()
        .map(|e| e.overhead_ms / 1000.0)
        .collect();
    eprintln!("{url}: {:?} in all; waits (s) {waits:.1?}", run.elapsed);
    assert!(
        waits.iter().all(|w| *w < max_wait.as_secs_f64()),
        "{waits:?}"
    );
    let waited = waits.iter().filter(|w| **w > 5.0).count();
    assert!(
        waited <= 4,
        "{waited} units waited for the cache: {waits:?}"
    );
}

#[test]
fn a_cache_that_is_down_costs_little() {
    let Some(_) = shared("a_cache_that_is_down_costs_little") else {
        return;
    };
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    unusable_cache(&format!("http://127.0.0.1:{port}"), Duration::from_secs(15));
}

/// The wrapper's defaults: 2 attempts of at most 10 s each, so a unit waits about 20 s.
#[test]
fn a_cache_that_hangs_costs_at_most_its_timeout() {
    let Some(_) = shared("a_cache_that_hangs_costs_at_most_its_timeout") else {
        return;
    };
    let server = Hanging::start();
    unusable_cache(&server.url, Duration::from_secs(40));
}

#[test]
fn other_features_miss_exactly_the_units_they_change() {
    let Some(s) = shared("other_features_miss_exactly_the_units_they_change") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let b = Shared::checkout(d.path(), "ws-b");
    let run = b.build_from(&s.cache_url(), &key(), &[]).ok();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // serde and serde_core, their build scripts (compiled with the features' cfgs) and
    // those scripts' runs (CARGO_FEATURE_RC): every unit the feature reaches.
    assert_eq!(
        run.report.crates_with("compiled"),
        set(&[
            "build_script_build",
            "serde",
            "serde (build script run)",
            "serde_core",
            "serde_core (build script run)"
        ])
    );
    assert_eq!(
        run.report.crates_with("substituted"),
        set(&[
            "build_script_build",
            "itoa",
            "memchr",
            "proc-macro2 (build script run)",
            "proc_macro2",
            "quote",
            "quote (build script run)",
            "serde_derive",
            "syn",
            "unicode_ident"
        ])
    );
    for e in run
        .report
        .units()
        .into_iter()
        .filter(|e| e.outcome == "compiled" && e.crate_types != ["build-script-run"])
    {
        assert_eq!(e.reason.as_deref(), Some("not cached"));
        assert!(
            e.args().iter().any(|a| a == "--cfg feature=\"rc\""),
            "{e:?}"
        );
    }
}

#[test]
fn another_toolchain_misses_every_unit() {
    let Some(s) = shared("another_toolchain_misses_every_unit") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let real = stdout_line(rustc_cmd().args(["--print", "sysroot"]));
    let real = Path::new(&real).join("bin/rustc");
    // The same compiler under another version string.
    let fake = d.path().join("tools/rustc");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = -vV ]; then\n    \
             '{r}' \"$@\" | sed 's/^commit-hash: .*/commit-hash: 0000000000000000000000000000000000000000/'\n    \
             exit $?\n  fi\ndone\nexec '{r}' \"$@\"\n",
            r = real.display()
        ),
    )
    .unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&fake, exec).unwrap();

    let b = Shared::checkout(d.path(), "ws-a");
    let run = b
        .store_cargo_with(
            &[],
            &[
                "--substituters",
                &s.cache_url(),
                "--trusted-public-keys",
                &key(),
            ],
            &["build", "--locked"],
            &[("RUSTC", &fake)],
        )
        .ok();
    all_compiled_because(&run, "not cached");
    let toolchain_a = s.recorded.units()[0].input("toolchain");
    for e in run.report.units() {
        assert_ne!(e.input("toolchain"), toolchain_a, "{e:?}");
    }
    assert_eq!(b.run_app(), s.app_output);
}

/// With `--target <host>` cargo builds another unit graph: it puts the compile kind into
/// every `-C metadata` and builds host units (proc-macros, build-script deps) without
/// debuginfo. The toolchain and target in the keys are the same as without `--target`; the
/// arguments are not, so nothing recorded without `--target` is used, and nothing is wrong.
#[test]
fn an_explicit_host_target_is_another_unit_graph() {
    let Some(s) = shared("an_explicit_host_target_is_another_unit_graph") else {
        return;
    };
    let host = stdout_line(rustc_cmd().arg("-vV"));
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned();
    let d = tempfile::tempdir().unwrap();
    let b = Shared::checkout(d.path(), "ws-a");
    let run = b
        .build_from(&s.cache_url(), &key(), &["--target", &host])
        .ok();
    all_compiled_because(&run, "not cached");
    let a_units = s.recorded.units();
    for e in run
        .report
        .units()
        .into_iter()
        .filter(|e| e.crate_types != ["build-script-run"])
    {
        let a = a_units.iter().find(|a| a.krate == e.krate).unwrap();
        assert_eq!(
            (e.input("toolchain"), e.input("target")),
            (a.input("toolchain"), a.input("target"))
        );
        let metadata = |e: &Entry| e.args().into_iter().find(|a| a.starts_with("-C metadata="));
        assert_ne!(metadata(e), metadata(a), "{e:?}");
    }
}

#[test]
fn an_installed_registry_binary_is_substituted() {
    let Some(s) = shared("an_installed_registry_binary_is_substituted") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let a = Checkout::new(d.path(), "ia", "ws-b");
    let install = |c: &Checkout, global: &[&str], store_args: &[&str], dest: &str| {
        let dest = d.path().join(dest);
        let args = [
            "install",
            "--locked",
            "--root",
            dest.to_str().unwrap(),
            INSTALLED,
        ];
        let run = c.store_cargo(global, store_args, &args).ok();
        (
            run,
            dest.join("bin").join(INSTALLED.split('@').next().unwrap()),
        )
    };
    let config = s.config.to_str().unwrap();
    let (rec, bin_a) = install(
        &a,
        &["--config", config],
        &["--record", "--push-to", &file_url(&cache)],
        "installed-a",
    );
    let bins = |r: &Report| -> Vec<Entry> {
        r.units()
            .into_iter()
            .filter(|e| e.crate_types == ["bin"] && !e.krate.starts_with("build_script_"))
            .cloned()
            .collect()
    };
    assert_eq!(bins(&rec.report).len(), 1, "{:?}", rec.report.entries);
    assert_eq!(bins(&rec.report)[0].outcome, "recorded");

    let b = Checkout::new(d.path(), "ib", "ws-b");
    let trust = [
        "--substituters",
        &file_url(&cache),
        "--trusted-public-keys",
        &key(),
    ];
    let (run, bin_b) = install(&b, &[], &trust, "installed-b");
    assert!(!run.report.units().is_empty());
    for e in run.report.units() {
        assert_eq!(e.outcome, "substituted", "{e:?}");
    }
    assert_eq!(bins(&run.report)[0].key, bins(&rec.report)[0].key);
    assert_eq!(
        std::fs::read(&bin_a).unwrap(),
        std::fs::read(&bin_b).unwrap()
    );
    let mut c = Command::new(&bin_b);
    c.stdin(std::fs::File::open(Path::new(WORKSPACES).join("sample.json")).unwrap());
    let out = c.output().unwrap();
    assert_success(&out, "jsonxf");
    assert!(
        text(&out.stdout).contains("\n  \"a\": ["),
        "{}",
        text(&out.stdout)
    );
}
