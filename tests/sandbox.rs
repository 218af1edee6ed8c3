//! The build sandbox, end to end: isolation (closure, writes, network), identity and
//! environment, limits, failures and the log, fixed-output network access, `--no-sandbox`.
//!
//! The builders are `/bin/sh` and `/bin/bash` scripts using the host's coreutils, made visible
//! by binding `/bin`, `/usr`, `/lib` and `/lib64` read-only as sandbox paths. When namespaces
//! are unavailable the sandboxed tests print a loud SKIPPED line, or fail when
//! `STORE_REQUIRE_SANDBOX=1`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sandbox_or_skip;
use store::build::sandbox::{
    run, standard_env, BuildSpec, BuildStatus, EnvParams, SandboxError, SandboxMode,
};

const STORE_DIR: &str = "/ix/store";
const INPUT: &str = "/ix/store/0c7c2a1rbd0kc6w6nsr7bxx3jv2i5xsv-input";
const SECRET: &str = "/ix/store/3k5ilr9rjm7ibjw7mmcq0qy8ffg4x7ni-secret";
const OUT: &str = "/ix/store/zf9g5qf0gx2ldxkk3jk5hk3fh9mwkjsd-out";

/// A physical store under a temp root with an input and a secret (present but not an
/// input), a build dir, and a spec running `script` with `shell`.
struct Fixture {
    tmp: tempfile::TempDir,
    spec: BuildSpec,
}

impl Fixture {
    fn new(shell: &str, script: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let real_store = tmp.path().join("root/ix/store");
        std::fs::create_dir_all(&real_store).unwrap();
        let input = real(&real_store, INPUT);
        std::fs::create_dir(&input).unwrap();
        std::fs::write(input.join("data"), "input data\n").unwrap();
        let secret = real(&real_store, SECRET);
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("data"), "secret\n").unwrap();
        let build_dir = tmp.path().join("build");
        std::fs::create_dir(&build_dir).unwrap();

        let drv_env: BTreeMap<String, String> = [("out", OUT), ("PATH", "/bin:/usr/bin")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let env = standard_env(
            &drv_env,
            &EnvParams {
                store_dir: STORE_DIR,
                build_top: "/build",
                cores: 1,
                fixed_output: false,
                impure_vars: &BTreeMap::new(),
            },
        );
        let sandbox_paths = ["/bin", "/usr", "/lib", "/lib64"]
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| (PathBuf::from(p), PathBuf::from(p)))
            .collect();
        let spec = BuildSpec {
            builder: PathBuf::from(shell),
            args: vec!["-c".into(), script.into()],
            env,
            store_dir: STORE_DIR.into(),
            inputs: vec![(INPUT.into(), input)],
            outputs: vec![(OUT.into(), tmp.path().join("out-result"))],
            build_dir,
            sandbox_paths,
            network: false,
            timeout: Some(Duration::from_secs(60)),
            max_silent: None,
            scratch_pool: None,
        };
        Fixture { tmp, spec }
    }

    fn run(&self, mode: SandboxMode) -> (BuildStatus, String) {
        let mut log = Vec::new();
        let status = run(&self.spec, mode, &mut log).unwrap();
        (status, String::from_utf8_lossy(&log).into_owned())
    }

    fn result(&self) -> PathBuf {
        self.tmp.path().join("out-result")
    }

    /// Whether anything but the root and build dir is left next to the build dir.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".sandbox"))
            .collect()
    }
}

fn real(real_store: &Path, logical: &str) -> PathBuf {
    real_store.join(Path::new(logical).file_name().unwrap())
}

/// Lines `name=yes|no` printed by the isolation script.
fn verdicts(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("CHECK "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn builder_sees_only_its_closure_and_writes_only_its_outputs() {
    if !sandbox_or_skip("builder_sees_only_its_closure_and_writes_only_its_outputs") {
        return;
    }
    let script = format!(
        r#"
check() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then echo "CHECK $name=yes"; else echo "CHECK $name=no"; fi; }}
check read_input cat {INPUT}/data
check read_secret cat {SECRET}/data
check list_secret ls {SECRET}
check write_input sh -c 'echo x > {INPUT}/data'
check create_in_input touch {INPUT}/new
check chmod_input chmod u+w {INPUT}/data
check write_root touch /evil
check write_etc sh -c 'echo x >> /etc/passwd'
check write_usr touch /usr/evil
check write_build touch /build/ok
check write_tmp touch /tmp/ok
check write_dev_shm touch /dev/shm/ok
check dev_null sh -c 'echo x > /dev/null'
check remount mount -o remount,rw {INPUT}
echo "STORE $(ls {STORE_DIR} | tr '\n' ' ')"
mkdir $out && cat {INPUT}/data > $out/copy
"#
    );
    let fx = Fixture::new("/bin/sh", &script);
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(0), "log:\n{log}");
    let v = verdicts(&log);
    let expect = [
        ("read_input", "yes"),
        ("read_secret", "no"),
        ("list_secret", "no"),
        ("write_input", "no"),
        ("create_in_input", "no"),
        ("chmod_input", "no"),
        ("write_root", "no"),
        ("write_etc", "no"),
        ("write_usr", "no"),
        ("write_build", "yes"),
        ("write_tmp", "yes"),
        ("write_dev_shm", "yes"),
        ("dev_null", "yes"),
        ("remount", "no"),
    ];
    for (k, want) in expect {
        assert_eq!(v.get(k).map(String::as_str), Some(want), "{k}; log:\n{log}");
    }
    let store_line = log.lines().find(|l| l.starts_with("STORE ")).unwrap();
    let mut listed: Vec<&str> = store_line["STORE ".len()..].split_whitespace().collect();
    listed.sort();
    let base = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Only the input: the secret is in the real store but not in the closure, and the
    // output does not exist yet when the builder lists the store.
    assert_eq!(listed, vec![base(INPUT)], "log:\n{log}");
    // The output was moved out; the input and the secret are untouched.
    let copy = std::fs::read_to_string(fx.result().join("copy")).unwrap();
    assert_eq!(copy, "input data\n");
    let real_store = fx.tmp.path().join("root/ix/store");
    let input = std::fs::read_to_string(real(&real_store, INPUT).join("data")).unwrap();
    assert_eq!(input, "input data\n");
    assert!(!real(&real_store, INPUT).join("new").exists());
    assert!(fx.spec.build_dir.join("ok").exists());
    assert!(!Path::new("/evil").exists());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[test]
fn builder_sees_exactly_its_environment_and_identity() {
    if !sandbox_or_skip("builder_sees_exactly_its_environment_and_identity") {
        return;
    }
    let script = "env; echo \"PID $$\"; echo \"ID $(id -u):$(id -g) $(id -un):$(id -gn)\"; \
                  echo \"HOST $(cat /proc/sys/kernel/hostname) $(cat /proc/sys/kernel/domainname)\"; \
                  echo \"CWD $(pwd)\"; echo \"PROCS $(ls /proc | grep -c '^[0-9]')\"";
    let fx = Fixture::new("/bin/sh", script);
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(0), "log:\n{log}");
    let env: BTreeMap<String, String> = log
        .lines()
        .take_while(|l| !l.starts_with("PID "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(env, fx.spec.env, "log:\n{log}");
    let line = |p: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p} in log:\n{log}"))
            .to_owned()
    };
    assert_eq!(line("PID "), "1");
    assert_eq!(line("ID "), "1000:100 nixbld:nixbld");
    assert_eq!(line("HOST "), "localhost (none)");
    assert_eq!(line("CWD "), "/build");
    // sh, the command substitution's subshell, ls and grep at most.
    let procs: u32 = line("PROCS ").parse().unwrap();
    assert!(procs <= 4, "{procs} processes visible; log:\n{log}");
}

/// Accepts one connection within the time limit, in a thread.
fn listener() -> (u16, std::thread::JoinHandle<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok((mut s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                return buf.contains("hello");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    (port, h)
}

fn connect_script(port: u16) -> String {
    format!(
        "if echo hello > /dev/tcp/127.0.0.1/{port}; then echo NET=yes; else echo NET=no; fi; \
         echo \"LO $(cat /sys/class/net/lo/operstate 2>/dev/null)\""
    )
}

#[test]
fn builder_cannot_reach_the_network_but_fixed_output_can() {
    if !sandbox_or_skip("builder_cannot_reach_the_network_but_fixed_output_can") {
        return;
    }
    let (port, accepted) = listener();
    let fx = Fixture::new("/bin/bash", &connect_script(port));
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(0), "log:\n{log}");
    assert!(log.contains("NET=no"), "log:\n{log}");

    let mut fod = Fixture::new("/bin/bash", &connect_script(port));
    fod.spec.network = true;
    let (status, log) = fod.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(0), "log:\n{log}");
    assert!(log.contains("NET=yes"), "log:\n{log}");
    assert!(accepted.join().unwrap(), "the listener saw no hello");
}

#[test]
fn timeout_and_silence_kill_the_builder_and_its_children() {
    if !sandbox_or_skip("timeout_and_silence_kill_the_builder_and_its_children") {
        return;
    }
    let mut fx = Fixture::new(
        "/bin/sh",
        "sleep 300 & while true; do echo tick; sleep 0.1; done",
    );
    fx.spec.timeout = Some(Duration::from_millis(700));
    let start = Instant::now();
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::TimedOut, "log:\n{log}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(log.contains("tick"));

    let mut fx = Fixture::new("/bin/sh", "echo started; sleep 300");
    fx.spec.max_silent = Some(Duration::from_millis(500));
    let start = Instant::now();
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::SilentTooLong, "log:\n{log}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(log, "started\n");
    assert!(fx.leftovers().is_empty());

    // A background process outliving the builder does not hold the build up.
    let fx = Fixture::new("/bin/sh", "sleep 300 & echo bye");
    let start = Instant::now();
    let (status, _) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn failing_builder_reports_its_exit_code_and_log() {
    if !sandbox_or_skip("failing_builder_reports_its_exit_code_and_log") {
        return;
    }
    let fx = Fixture::new(
        "/bin/sh",
        "echo to-stdout; echo to-stderr >&2; mkdir $out; exit 3",
    );
    let (status, log) = fx.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(3));
    assert!(!status.success());
    assert_eq!(log, "to-stdout\nto-stderr\n");
    // Outputs of failed builds are discarded.
    assert!(!fx.result().exists());
    assert!(fx.leftovers().is_empty());

    let mut fx = Fixture::new("/bin/sh", "true");
    fx.spec.builder = "/no/such/builder".into();
    let err = run(&fx.spec, SandboxMode::Namespaces, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, SandboxError::Exec { .. }), "{err:?}");
}

#[test]
fn a_failing_setup_step_is_reported_by_name_and_leaves_nothing() {
    if !sandbox_or_skip("a_failing_setup_step_is_reported_by_name_and_leaves_nothing") {
        return;
    }
    // /etc/passwd is a file in the sandbox: nothing can be mounted below it.
    let mut fx = Fixture::new("/bin/sh", "true");
    let host_file = fx.tmp.path().join("host-file");
    std::fs::write(&host_file, "x").unwrap();
    fx.spec
        .sandbox_paths
        .push(("/etc/passwd/below".into(), host_file));
    let err = run(&fx.spec, SandboxMode::Namespaces, &mut Vec::new()).unwrap_err();
    match &err {
        SandboxError::Setup { step, source } => {
            assert!(step.ends_with("/etc/passwd/below"), "{step}");
            assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR), "{source}");
        }
        _ => panic!("{err:?}"),
    }
    assert!(!fx.result().exists());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

#[test]
fn no_sandbox_runs_on_the_host_with_the_exact_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let build_dir = tmp.path().join("build");
    std::fs::create_dir(&build_dir).unwrap();
    let out = tmp.path().join("out");
    let drv_env = BTreeMap::from([("out".to_owned(), out.to_string_lossy().into_owned())]);
    let top = SandboxMode::None.build_top(&build_dir);
    let env = standard_env(
        &drv_env,
        &EnvParams {
            store_dir: STORE_DIR,
            build_top: &top,
            cores: 2,
            fixed_output: false,
            impure_vars: &BTreeMap::new(),
        },
    );
    let spec = BuildSpec {
        builder: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "/usr/bin/env; echo \"CWD $(/bin/pwd)\"; /bin/mkdir $out; echo hi > $out/f".into(),
        ],
        env,
        store_dir: STORE_DIR.into(),
        outputs: vec![(out.clone(), tmp.path().join("result"))],
        build_dir: build_dir.clone(),
        timeout: Some(Duration::from_secs(30)),
        ..BuildSpec::default()
    };
    let mut log = Vec::new();
    let status = run(&spec, SandboxMode::None, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(status, BuildStatus::Exited(0), "log:\n{log}");
    let seen: BTreeMap<String, String> = log
        .lines()
        .take_while(|l| !l.starts_with("CWD "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(seen, spec.env);
    assert!(
        log.contains(&format!("CWD {}", build_dir.display())),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("result/f")).unwrap(),
        "hi\n"
    );

    let killed = BuildSpec {
        args: vec!["-c".into(), "kill -9 $$".into()],
        outputs: vec![],
        ..spec.clone()
    };
    let status = run(&killed, SandboxMode::None, &mut Vec::new()).unwrap();
    assert_eq!(status, BuildStatus::Signaled(9));

    let spec = BuildSpec {
        args: vec![
            "-c".into(),
            "/bin/sleep 300 & echo waiting; /bin/sleep 300".into(),
        ],
        outputs: vec![],
        timeout: Some(Duration::from_millis(500)),
        ..spec
    };
    let start = Instant::now();
    let status = run(&spec, SandboxMode::None, &mut Vec::new()).unwrap();
    assert_eq!(status, BuildStatus::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn pooled_scratch_dirs_are_reused_without_leaking_earlier_inputs_or_outputs() {
    if !sandbox_or_skip("pooled_scratch_dirs_are_reused_without_leaking_earlier_inputs_or_outputs")
    {
        return;
    }
    use std::sync::Arc;
    use store::build::sandbox::ScratchPool;
    // Build 1 has INPUT and fails after writing part of its output; build 2, through the
    // same one-dir pool, has SECRET as its only input: it must not see INPUT's mount point
    // nor build 1's partial output, and its own output must come out.
    let mut f = Fixture::new("/bin/sh", "echo partial > $out; ls /ix/store; exit 3");
    let pool_dir = f.tmp.path().join("pool");
    std::fs::create_dir(&pool_dir).unwrap();
    let pool = Arc::new(ScratchPool::new(pool_dir.clone()));
    f.spec.scratch_pool = Some(pool.clone());
    let (status, log) = f.run(SandboxMode::Namespaces);
    assert_eq!(status, BuildStatus::Exited(3), "{log}");
    assert!(
        log.contains("0c7c2a1rbd0kc6w6nsr7bxx3jv2i5xsv-input"),
        "{log}"
    );
    assert!(!f.result().exists());

    let real_store = f.tmp.path().join("root/ix/store");
    f.spec.inputs = vec![(SECRET.into(), real(&real_store, SECRET))];
    f.spec.args = vec![
        "-c".into(),
        "ls -a /ix/store; cat /ix/store/3k5ilr9rjm7ibjw7mmcq0qy8ffg4x7ni-secret/data > $out".into(),
    ];
    let (status, log) = f.run(SandboxMode::Namespaces);
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("-input"),
        "an earlier input's mount point is visible: {log}"
    );
    assert!(!log.contains("-out"), "an earlier output is visible: {log}");
    assert!(log.contains("-secret"), "{log}");
    assert_eq!(std::fs::read_to_string(f.result()).unwrap(), "secret\n");
    // One scratch dir, reused.
    assert_eq!(std::fs::read_dir(&pool_dir).unwrap().count(), 1);
}
