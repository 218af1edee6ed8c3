//! `store cargo` end to end without a network: a workspace whose dependencies come from a
//! vendored directory source (cargo's `[source]` replacement), so their units are
//! cacheable like registry crates. A library, a proc-macro and a crate with a build script
//! that generates code; recorded in one checkout, substituted in another; a tampered NAR;
//! and `--check-sample` catching a compiler that is not deterministic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_success, bare_cmd, fixture, test_public_key};
use serde_json::Value;

/// Writes the workspace (app + vendored tinylib, tinymacro, tinygen) under `dir`.
fn workspace(dir: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n\
         tinylib = \"1.0.0\"\ntinymacro = \"1.0.0\"\ntinygen = \"1.0.0\"\n",
    );
    w(
        "src/main.rs",
        "#[tinymacro::keep]\nfn answer() -> u32 { tinylib::double(tinygen::N) }\n\
         fn main() { println!(\"answer {}\", answer()); }\n",
    );
    w(
        ".cargo/config.toml",
        "[source.crates-io]\nreplace-with = \"vendored\"\n\n[source.vendored]\ndirectory = \"vendor\"\n",
    );
    let vendored = |name: &str, extra_toml: &str, files: &[(&str, &str)]| {
        w(
            &format!("vendor/{name}/Cargo.toml"),
            &format!(
                "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\nedition = \"2021\"\n{extra_toml}"
            ),
        );
        for (rel, text) in files {
            w(&format!("vendor/{name}/{rel}"), text);
        }
        // Cargo checks the files listed (none) and locks the package checksum.
        let sum = format!("{:0>64}", format!("{:x}", name.len() * 7919));
        w(
            &format!("vendor/{name}/.cargo-checksum.json"),
            &format!("{{\"files\":{{}},\"package\":\"{sum}\"}}"),
        );
    };
    vendored(
        "tinylib",
        "",
        &[("src/lib.rs", "pub fn double(x: u32) -> u32 { x * 2 }\n")],
    );
    vendored(
        "tinymacro",
        "\n[lib]\nproc-macro = true\n",
        &[(
            "src/lib.rs",
            "use proc_macro::TokenStream;\n#[proc_macro_attribute]\n\
             pub fn keep(_a: TokenStream, item: TokenStream) -> TokenStream { item }\n",
        )],
    );
    vendored(
        "tinygen",
        "build = \"build.rs\"\n",
        &[
            (
                "build.rs",
                "fn main() {\n    let out = std::env::var(\"OUT_DIR\").unwrap();\n    \
                 std::fs::write(format!(\"{out}/gen.rs\"), \"pub const N: u32 = 21;\").unwrap();\n    \
                 println!(\"cargo:rerun-if-changed=build.rs\");\n}\n",
            ),
            ("src/lib.rs", "include!(concat!(env!(\"OUT_DIR\"), \"/gen.rs\"));\n"),
        ],
    );
}

struct Env {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let config = base.join("config.toml");
        fs::write(
            &config,
            format!(
                "secret-key-files = \"{}\"\n",
                fixture("keys/test-cache-1.sec").display()
            ),
        )
        .unwrap();
        Env {
            _tmp: tmp,
            base,
            config,
        }
    }

    /// A checkout of the workspace at `rel`.
    fn checkout(&self, rel: &str) -> PathBuf {
        let dir = self.base.join(rel);
        workspace(&dir);
        dir
    }

    /// `store --root <base>/<root> cargo ARGS` in `checkout`, offline, with its own HOME.
    fn cargo(
        &self,
        checkout: &Path,
        root: &str,
        args: &[&str],
        extra_env: &[(&str, &Path)],
    ) -> Output {
        let mut c = bare_cmd(&self.base);
        c.current_dir(checkout)
            .env("STORE_CONFIG", &self.config)
            .env("CARGO_HOME", self.base.join(format!("cargo-home-{root}")))
            .env("CARGO_NET_OFFLINE", "true")
            .env("CARGO_TERM_COLOR", "never")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC")
            .arg("--root")
            .arg(self.base.join(root))
            .arg("cargo")
            .args(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_success(&out, &args);
        out
    }

    fn report(&self, name: &str) -> (String, PathBuf) {
        let p = self.base.join(name);
        (p.display().to_string(), p)
    }
}

/// Records checkout `a` into store `root-a` and pushes it to `cache`: (cache URL, the
/// run's output, the report's path).
fn record_and_push(env: &Env, a: &Path, cache: &Path) -> (String, Output, PathBuf) {
    let url = format!("file://{}", cache.display());
    let (ra, ra_path) = env.report("a.json");
    let args = [
        "--record",
        "--push-to",
        &url,
        "--report",
        &ra,
        "--",
        "build",
    ];
    let out = env.cargo(a, "root-a", &args, &[]);
    (url, out, ra_path)
}

fn read_report(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// (crate, outcome, reason) of every entry, sorted.
fn outcomes(report: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["crate"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn run_app(checkout: &Path) -> String {
    let out = Command::new(checkout.join("target/debug/app"))
        .output()
        .unwrap();
    assert_success(&out, "app");
    String::from_utf8(out.stdout).unwrap()
}

/// The cacheable units of the workspace: three libraries, the build script, its run.
const UNITS: [&str; 5] = [
    "build_script_build",
    "tinygen",
    "tinygen (build script run)",
    "tinylib",
    "tinymacro",
];

fn names_with(outs: &[(String, String, String)], outcome: &str) -> Vec<String> {
    outs.iter()
        .filter(|(_, o, _)| o == outcome)
        .map(|(c, _, _)| c.clone())
        .collect()
}

#[test]
fn recorded_in_one_checkout_substituted_in_another() {
    let env = Env::new();
    let a = env.checkout("ci/checkout");
    let cache = env.base.join("cache");
    let (url, out, ra_path) = record_and_push(&env, &a, &cache);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store cargo: 0 substituted"), "{stderr}");
    let a_report = read_report(&ra_path);
    assert_eq!(names_with(&outcomes(&a_report), "recorded"), UNITS);
    let manifest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(manifest.ends_with("-cargo-manifest"), "{manifest}");
    assert_eq!(a_report["manifest"].as_str(), Some(manifest.as_str()));

    // Another checkout path (the vendor dir moves too), another CARGO_HOME, a fresh store
    // that trusts only the public key.
    let b = env.checkout("dev/elsewhere/checkout");
    let (rb, rb_path) = env.report("b.json");
    let key = test_public_key();
    let args = [
        "--substituters",
        &url,
        "--trusted-public-keys",
        &key,
        "--report",
        &rb,
        "--",
        "build",
    ];
    env.cargo(&b, "root-b", &args, &[]);
    let b_outs = outcomes(&read_report(&rb_path));
    assert_eq!(names_with(&b_outs, "substituted"), UNITS, "{b_outs:?}");
    assert_eq!(names_with(&b_outs, "uncacheable"), ["app"]);
    assert_eq!(run_app(&a), "answer 42\n");
    assert_eq!(run_app(&b), run_app(&a));

    // Nothing to do the second time: cargo runs no rustc at all.
    env.cargo(&b, "root-b", &args, &[]);
    assert_eq!(outcomes(&read_report(&rb_path)), []);

    // A tampered NAR is refused and the unit compiled; the build still succeeds.
    let tinylib = a_report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["crate"] == "tinylib")
        .unwrap()["store_path"]
        .as_str()
        .unwrap()
        .to_owned();
    tamper_nar_of(&cache, &tinylib);
    fs::remove_dir_all(b.join("target")).unwrap();
    env.cargo(&b, "root-c", &args, &[]);
    let c_outs = outcomes(&read_report(&rb_path));
    let lib = c_outs.iter().find(|(c, _, _)| c == "tinylib").unwrap();
    assert_eq!(
        (lib.1.as_str(), lib.2.as_str()),
        ("compiled", "download failed or rejected")
    );
    assert_eq!(names_with(&c_outs, "substituted").len(), UNITS.len() - 1);
    assert_eq!(run_app(&b), "answer 42\n");

    // A key the cache did not sign with: every unit compiled.
    fs::remove_dir_all(b.join("target")).unwrap();
    let other = other_public_key(&env.base);
    let other = other.as_str();
    let args = [
        "--substituters",
        &url,
        "--trusted-public-keys",
        other,
        "--report",
        &rb,
        "--",
        "build",
    ];
    env.cargo(&b, "root-d", &args, &[]);
    let d_outs = outcomes(&read_report(&rb_path));
    assert_eq!(names_with(&d_outs, "compiled"), UNITS, "{d_outs:?}");
    assert!(d_outs
        .iter()
        .filter(|(_, o, _)| o == "compiled")
        .all(|(_, _, r)| r == "untrusted entry"));
}

/// The public key of a freshly generated key pair (one the cache never signed with).
fn other_public_key(dir: &Path) -> String {
    let mut c = bare_cmd(dir);
    c.args(["key", "generate", "--name", "other-key", "--secret-file"])
        .arg(dir.join("other.sec"))
        .arg("--public-file")
        .arg(dir.join("other.pub"));
    assert_success(&c.output().unwrap(), "key generate");
    fs::read_to_string(dir.join("other.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Flips a byte in the middle of the NAR file that the narinfo of `printed` points to.
fn tamper_nar_of(cache: &Path, printed: &str) {
    let hash = &Path::new(printed).file_name().unwrap().to_str().unwrap()[..32];
    let narinfo = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let nar = cache.join(url);
    let mut bytes = fs::read(&nar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&nar, bytes).unwrap();
}

/// A `rustc` that gives tinylib another `-C metadata` on every run, as a compiler that is
/// not deterministic would give other bytes.
fn flaky_rustc(dir: &Path) -> PathBuf {
    let real = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let real = PathBuf::from(String::from_utf8(real.stdout).unwrap().trim()).join("bin/rustc");
    fs::create_dir_all(dir).unwrap();
    let script = dir.join("rustc");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" --crate-name tinylib \"*) exec '{}' \"$@\" -C metadata=$$$(date +%N) ;;\nesac\nexec '{}' \"$@\"\n",
            real.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn check_sample_keeps_a_nondeterministic_unit_out_of_the_manifest() {
    let env = Env::new();
    let a = env.checkout("ci/checkout");
    let rustc = flaky_rustc(&env.base.join("flaky"));
    let (r, r_path) = env.report("r.json");
    let out = env.cargo(
        &a,
        "root",
        &[
            "--record",
            "--check-sample",
            "10",
            "--report",
            &r,
            "--",
            "build",
        ],
        &[("RUSTC", &rustc)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not reproduce"), "{stderr}");
    let report = read_report(&r_path);
    let checked = report["checked"].as_array().unwrap();
    assert_eq!(
        checked.len(),
        4,
        "every recorded rustc unit is rebuilt: {checked:?}"
    );
    let bad: Vec<&Value> = checked
        .iter()
        .filter(|c| !c["differing"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(bad.len(), 1, "{checked:?}");
    let tinylib = bad[0]["store_path"].as_str().unwrap();
    assert!(tinylib.ends_with("-cargo-tinylib-1.0.0"), "{tinylib}");

    // The manifest lists the other units, not tinylib.
    let manifest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let text = fs::read_to_string(
        env.base
            .join("root/ix/store")
            .join(Path::new(&manifest).file_name().unwrap()),
    )
    .unwrap();
    assert!(!text.contains(tinylib), "{text}");
    assert!(text.contains("tinymacro"), "{text}");

    // Known nondeterministic: never recorded again. The unit stays usable where it was
    // built (one of its possible outputs); once gone, it is compiled and not recorded.
    let listed = fs::read_to_string(env.base.join("root/ix/var/cargo/nondeterministic")).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let mut delete = bare_cmd(&env.base);
    delete
        .arg("--root")
        .arg(env.base.join("root"))
        .args(["delete", tinylib]);
    assert_success(&delete.output().unwrap(), "delete");
    fs::remove_dir_all(a.join("target")).unwrap();
    env.cargo(
        &a,
        "root",
        &["--record", "--report", &r, "--", "build"],
        &[("RUSTC", &rustc)],
    );
    let outs = outcomes(&read_report(&r_path));
    let lib = outs.iter().find(|(c, _, _)| c == "tinylib").unwrap();
    assert_eq!(
        (lib.1.as_str(), lib.2.as_str()),
        ("compiled", "not recorded: nondeterministic")
    );
}

#[test]
fn plain_cargo_with_the_wrapper_in_its_config_substitutes() {
    let env = Env::new();
    let a = env.checkout("ci/checkout");
    let cache = env.base.join("cache");
    let (url, _, ra_path) = record_and_push(&env, &a, &cache);
    let recorded: Vec<String> = read_report(&ra_path)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "recorded")
        .map(|e| e["store_path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded.len(), UNITS.len());

    // No `store cargo`: cargo itself, with the wrapper in .cargo/config.toml and the
    // store's settings in the environment.
    let b = env.checkout("dev/checkout");
    let config = b.join(".cargo/config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[build]\nrustc-wrapper = \"{}\"\n",
        env!("CARGO_BIN_EXE_store")
    ));
    fs::write(&config, text).unwrap();
    let root_b = env.base.join("root-b");
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    c.current_dir(&b)
        .arg("build")
        .env("CARGO_HOME", env.base.join("cargo-home-b"))
        .env("CARGO_NET_OFFLINE", "true")
        .env("HOME", &env.base)
        .env("STORE_ROOT", &root_b)
        .env("STORE_SUBSTITUTERS", &url)
        .env("STORE_TRUSTED_PUBLIC_KEYS", test_public_key())
        .env_remove("STORE_CONFIG")
        .env_remove("STORE_DIR")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC")
        .env_remove("CARGO_TARGET_DIR");
    let out = c.output().unwrap();
    assert_success(&out, "cargo build with the wrapper");
    assert_eq!(run_app(&b), "answer 42\n");
    // Every recorded unit is now valid in B's store: it was substituted, not compiled.
    for p in &recorded {
        let mut info = bare_cmd(&env.base);
        info.arg("--root").arg(&root_b).args(["path-info", p]);
        assert_success(&info.output().unwrap(), p);
    }
}

/// Makes the app package a library too, whose lib reads `src/data.txt` (`include_str!`)
/// and `APP_GREETING` (`option_env!`).
fn add_app_lib(dir: &Path) {
    fs::write(
        dir.join("src/lib.rs"),
        "pub const DATA: &str = include_str!(\"data.txt\");\n\
         pub fn greeting() -> &'static str { option_env!(\"APP_GREETING\").unwrap_or(\"hello\") }\n",
    )
    .unwrap();
    fs::write(dir.join("src/data.txt"), "data 1").unwrap();
    fs::write(
        dir.join("src/main.rs"),
        "#[tinymacro::keep]\nfn answer() -> u32 { tinylib::double(tinygen::N) }\n\
         fn main() { println!(\"answer {} {} {}\", answer(), app::greeting(), app::DATA); }\n",
    )
    .unwrap();
}

/// (crate types, outcome, reason) of the app's entries (its lib and its bin), sorted.
fn app_outcomes(report: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["crate"] == "app")
        .map(|e| {
            assert_eq!(e["source_kind"], "local", "{e}");
            (
                e["crate_types"][0].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn both(outcome: &str, reason: &str) -> Vec<(String, String, String)> {
    ["bin", "lib"]
        .iter()
        .map(|t| (t.to_string(), outcome.to_owned(), reason.to_owned()))
        .collect()
}

#[test]
fn unchanged_path_crates_come_from_the_local_store_only() {
    let env = Env::new();
    let a = env.checkout("one/checkout");
    add_app_lib(&a);
    let no_inc = ("CARGO_INCREMENTAL", Path::new("0"));
    let url = format!("file://{}", env.base.join("cache").display());
    let (r, r_path) = env.report("r.json");
    let args = ["--record", "--push-to", &url, "--report", &r, "--", "build"];
    let out = env.cargo(&a, "root-a", &args, &[no_inc]);
    let report = read_report(&r_path);
    let first = app_outcomes(&report);
    assert_eq!(first, both("compiled", "no local unit for these inputs"));
    // Kept locally, but in no manifest and in no cache.
    let manifest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let text = fs::read_to_string(
        env.base
            .join("root-a/ix/store")
            .join(Path::new(&manifest).file_name().unwrap()),
    )
    .unwrap();
    assert!(
        text.contains("tinylib") && !text.contains("-cargo-app-"),
        "{text}"
    );
    for e in report["entries"].as_array().unwrap() {
        let p = e["store_path"].as_str().unwrap();
        let hash = &Path::new(p).file_name().unwrap().to_str().unwrap()[..32];
        let pushed = env.base.join(format!("cache/{hash}.narinfo")).exists();
        assert_eq!(pushed, e["crate"] != "app", "{p}");
    }

    // Nothing changed, a fresh target dir: both from the local store.
    let build = |dir: &Path, extra: &[(&str, &Path)]| {
        let mut vars = vec![no_inc];
        vars.extend_from_slice(extra);
        env.cargo(dir, "root-a", &["--report", &r, "--", "build"], &vars);
        app_outcomes(&read_report(&r_path))
    };
    fs::remove_dir_all(a.join("target")).unwrap();
    assert_eq!(build(&a, &[]), both("local", ""));
    assert_eq!(run_app(&a), "answer 42 hello data 1\n");

    // The same sources at another path (and another CARGO_HOME) hit too.
    let b = env.checkout("two/elsewhere/checkout");
    add_app_lib(&b);
    assert_eq!(build(&b, &[]), both("local", ""));
    assert_eq!(run_app(&b), "answer 42 hello data 1\n");

    // An edited source, a changed included file, a changed env-dep: compiled.
    let lib = a.join("src/lib.rs");
    let mut source = fs::read_to_string(&lib).unwrap();
    source.push_str("pub fn more() {}\n");
    fs::write(&lib, source).unwrap();
    let changed = [
        ("bin", "compiled", "no local unit for these inputs"),
        ("lib", "compiled", "sources changed"),
    ]
    .map(|(t, o, r)| (t.to_owned(), o.to_owned(), r.to_owned()));
    assert_eq!(build(&a, &[]), changed);
    fs::write(a.join("src/data.txt"), "data 2").unwrap();
    assert_eq!(build(&a, &[]), changed);
    assert_eq!(run_app(&a), "answer 42 hello data 2\n");
    assert_eq!(build(&a, &[("APP_GREETING", Path::new("hi"))]), changed);
    assert_eq!(run_app(&a), "answer 42 hi data 2\n");

    // Back to the variable unset: that candidate is still kept.
    fs::remove_dir_all(a.join("target")).unwrap();
    assert_eq!(build(&a, &[]), both("local", ""));
    assert_eq!(run_app(&a), "answer 42 hello data 2\n");

    // Turned off: compiled as plain cargo does.
    fs::remove_dir_all(a.join("target")).unwrap();
    let off = build(&a, &[("STORE_CARGO_LOCAL", Path::new("0"))]);
    assert_eq!(off, both("uncacheable", "local source"));
}
