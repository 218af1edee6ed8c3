//! `store gc` and `store delete` through the binary.

mod common;

use common::TestStore;

#[test]
fn gc_and_delete_commands() {
    let t = TestStore::new();
    let mut paths = Vec::new();
    for name in ["keep", "drop1", "drop2"] {
        let d = t.scratch().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), name).unwrap();
        paths.push(t.ok(&["add", d.to_str().unwrap()]).trim().to_owned());
    }
    let roots = t.root().join("ix/var/gcroots");
    std::fs::create_dir_all(&roots).unwrap();
    std::os::unix::fs::symlink(&paths[0], roots.join("keep")).unwrap();

    let mut dead: Vec<String> = t
        .ok(&["gc", "--print-dead"])
        .lines()
        .map(Into::into)
        .collect();
    dead.sort();
    let mut expect = paths[1..].to_vec();
    expect.sort();
    assert_eq!(dead, expect);
    assert_eq!(t.ok(&["gc", "--print-live"]).trim(), paths[0]);
    assert!(t
        .ok(&["gc", "--dry-run"])
        .starts_with("2 store paths would be deleted"));

    let err = t.fails(&["delete", &paths[0]]);
    assert!(
        err.contains("it is a root") && err.contains("gcroots/keep"),
        "{err}"
    );
    assert!(t
        .ok(&["delete", &paths[1]])
        .starts_with("1 store paths deleted, "));
    let out = t.ok(&["gc", "--max-freed", "1K"]);
    assert!(out.starts_with("1 store paths deleted, "), "{out}");
    assert!(t
        .ok(&["gc"])
        .starts_with("0 store paths deleted, 0.00 MiB freed"));
    assert!(t.real(&paths[0]).exists() && !t.real(&paths[2]).exists());
    t.fails(&["gc", "--max-freed", "12Q"]);
}
