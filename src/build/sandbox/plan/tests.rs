//! Unit tests of the steps of the sandbox plan that decide without touching the file system
//! (the whole plan runs in `tests/sandbox.rs`).

use super::*;

fn planner() -> Planner {
    Planner {
        root: PathBuf::from("/scratch/root"),
        ops: Vec::new(),
    }
}

/// An op as text: its kind, its path under the root and what it carries.
fn show(op: &Op) -> String {
    let s = |c: &CString| c.to_string_lossy().into_owned();
    match op {
        Op::Mkdir { path, mode } => format!("mkdir {} {mode:o}", s(path)),
        Op::Tmpfs { path, data } => format!("tmpfs {} {}", s(path), s(data)),
        Op::Bind {
            src, dst, readonly, ..
        } => format!("bind {} {} ro={readonly}", s(src), s(dst)),
        Op::Proc { path } => format!("proc {}", s(path)),
        Op::Devpts { path } => format!("devpts {}", s(path)),
        Op::Symlink { target, path } => format!("symlink {} -> {}", s(path), s(target)),
        Op::File { path, contents } => {
            format!("file {} {}", s(path), String::from_utf8_lossy(contents))
        }
        Op::Touch { path } => format!("touch {}", s(path)),
        Op::ReadOnlyChildren { top, children } => format!("ro {} {}", s(top), children.len()),
    }
}

fn shown(p: &Planner) -> Vec<String> {
    p.ops.iter().map(show).collect()
}

fn message(e: SandboxError) -> String {
    match e {
        SandboxError::InvalidSpec(m) => m,
        e => panic!("not an invalid spec: {e}"),
    }
}

#[test]
fn the_store_dir_may_not_be_under_a_directory_the_sandbox_makes() {
    for bad in [
        "/build",
        "/build/store",
        "/dev/s",
        "/proc/s",
        "/tmp/store",
        "/etc/nix",
    ] {
        let e = message(check_store_dir(Path::new(bad)).unwrap_err());
        assert!(e.contains("cannot be under"), "{bad}: {e}");
    }
    // Prefixes count by component, not by character.
    for good in ["/nix/store", "/ix/store", "/builder/store", "/tmpstore"] {
        check_store_dir(Path::new(good)).unwrap();
    }
}

#[test]
fn sandbox_paths_directly_in_the_store_are_bound_there_the_rest_sorted() {
    let spec = BuildSpec {
        store_dir: "/ix/store".into(),
        inputs: vec![("/ix/store/aaaa-in".into(), "/phys/aaaa-in".into())],
        sandbox_paths: vec![
            ("/usr/lib".into(), "/host/lib".into()),
            ("/ix/store/bbbb-sp".into(), "/host/bbbb".into()),
            ("/bin".into(), "/host/bin".into()),
            ("/ix/store/x/deeper".into(), "/host/deeper".into()),
        ],
        ..Default::default()
    };
    let (in_store, host) = split_sandbox_paths(&spec).unwrap();
    assert_eq!(
        in_store,
        vec![
            (
                Path::new("/ix/store/aaaa-in"),
                Path::new("/phys/aaaa-in"),
                "input"
            ),
            (
                Path::new("/ix/store/bbbb-sp"),
                Path::new("/host/bbbb"),
                "sandbox path"
            ),
        ]
    );
    assert_eq!(
        host,
        vec![
            (Path::new("/bin"), Path::new("/host/bin")),
            (Path::new("/ix/store/x/deeper"), Path::new("/host/deeper")),
            (Path::new("/usr/lib"), Path::new("/host/lib")),
        ]
    );
}

#[test]
fn a_sandbox_path_inside_must_be_normal_and_absolute() {
    for bad in ["rel", "/a/../b", "/", "/a/"] {
        let spec = BuildSpec {
            store_dir: "/ix/store".into(),
            sandbox_paths: vec![(bad.into(), "/host/x".into())],
            ..Default::default()
        };
        let e = message(split_sandbox_paths(&spec).unwrap_err());
        assert!(e.contains("sandbox path"), "{bad}: {e}");
    }
}

#[test]
fn outputs_must_be_in_the_store_dir_and_not_named_like_a_bound_path() {
    let store_dir = Path::new("/ix/store");
    let names: BTreeSet<OsString> = [OsString::from("aaaa-in")].into();
    let out = |p: &str| vec![(PathBuf::from(p), PathBuf::from("/dest"))];
    check_outputs(&out("/ix/store/cccc-out"), store_dir, &names).unwrap();
    let e = message(check_outputs(&out("/ix/store/aaaa-in"), store_dir, &names).unwrap_err());
    assert_eq!(e, "output '/ix/store/aaaa-in' is also an input");
    let e = message(check_outputs(&out("/elsewhere/cccc-out"), store_dir, &names).unwrap_err());
    assert!(e.contains("is not directly in the store dir"), "{e}");
}

#[test]
fn top_dirs_proc_and_tmp_are_made_under_the_root() {
    let mut p = planner();
    p.top_dirs().unwrap();
    p.proc_and_tmp().unwrap();
    assert_eq!(
        shown(&p),
        [
            "mkdir /scratch/root/etc 755",
            "mkdir /scratch/root/dev 755",
            "mkdir /scratch/root/proc 755",
            "mkdir /scratch/root/tmp 755",
            "mkdir /scratch/root/build 755",
            "proc /scratch/root/proc",
            "tmpfs /scratch/root/tmp mode=1777",
        ]
    );
}

#[test]
fn etc_without_network_is_written_not_bound() {
    let mut p = planner();
    p.etc(false).unwrap();
    assert_eq!(
        shown(&p),
        [
            format!("file /scratch/root/etc/passwd {PASSWD}"),
            format!("file /scratch/root/etc/group {GROUP}"),
            format!("file /scratch/root/etc/hosts {HOSTS}"),
        ]
    );
    assert!(PASSWD.contains(&format!(":{SANDBOX_UID}:{SANDBOX_GID}:")));
}

#[test]
fn etc_with_network_binds_the_hosts_name_service_files_read_only() {
    let mut p = planner();
    p.etc(true).unwrap();
    let ops = shown(&p);
    assert_eq!(
        ops[..2],
        [
            format!("file /scratch/root/etc/passwd {PASSWD}"),
            format!("file /scratch/root/etc/group {GROUP}"),
        ]
    );
    let mut expected = Vec::new();
    for name in ["/etc/hosts", "/etc/resolv.conf", "/etc/services"] {
        if Path::new(name).exists() {
            expected.push(format!("touch /scratch/root{name}"));
            expected.push(format!("bind {name} /scratch/root{name} ro=true"));
        }
    }
    assert_eq!(ops[2..], expected);
}

#[test]
fn dev_has_shm_pts_and_the_usual_links() {
    let mut p = planner();
    p.dev().unwrap();
    let ops = shown(&p);
    for dev in DEVICES {
        let bind = format!("bind /dev/{dev} /scratch/root/dev/{dev} ro=false");
        assert_eq!(
            ops.contains(&bind),
            Path::new("/dev").join(dev).exists(),
            "{dev}"
        );
    }
    let tail: Vec<&str> = ops
        .iter()
        .map(String::as_str)
        .skip_while(|o| !o.contains("shm"))
        .collect();
    assert_eq!(
        tail,
        [
            "mkdir /scratch/root/dev/shm 755",
            "tmpfs /scratch/root/dev/shm mode=1777",
            "mkdir /scratch/root/dev/pts 755",
            "devpts /scratch/root/dev/pts",
            "symlink /scratch/root/dev/ptmx -> pts/ptmx",
            "symlink /scratch/root/dev/fd -> /proc/self/fd",
            "symlink /scratch/root/dev/stdin -> /proc/self/fd/0",
            "symlink /scratch/root/dev/stdout -> /proc/self/fd/1",
            "symlink /scratch/root/dev/stderr -> /proc/self/fd/2",
        ]
    );
}

#[test]
fn store_names_and_normal_paths() {
    let store_dir = Path::new("/ix/store");
    assert_eq!(
        store_name(Path::new("/ix/store/aaaa-x"), store_dir, "input").unwrap(),
        OsStr::new("aaaa-x")
    );
    for bad in ["/ix/store", "/ix/store/a/b", "/ix/other/a", "ix/store/a"] {
        assert!(
            store_name(Path::new(bad), store_dir, "input").is_err(),
            "{bad}"
        );
    }
    assert!(check_abs(Path::new("/a/b"), "x").is_ok());
    let e = message(cstring(Path::new("/a\0b")).unwrap_err());
    assert!(e.contains("NUL"), "{e}");
}
