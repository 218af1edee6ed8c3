//! Building derivations with `store realise`, end to end through the binary, without Nix:
//! recipes written here are instantiated with `store instantiate` (store-format.md §9) and
//! built with `/bin/sh` builders in the sandbox, with the host's `/bin /lib /lib64 /usr`
//! visible as sandbox paths (dash is dynamically linked).
//!
//! Covered: a build happens once and a second realise does nothing; output selection
//! (`DRV^out,dev`, `DRV^*`) and recipes given directly; a failing builder (exit code, log
//! tail, nothing registered); `--keep-going`; `--keep-failed`; `--check` (deterministic and
//! not); concurrent `store realise` processes building once; `store log`; references found
//! by scanning (inputs, self, sibling outputs); fixed-output derivations (flat, recursive,
//! wrong hash); a small DAG with a source, built with `--max-jobs 2`; `--out-link`.
//!
//! When user namespaces are unavailable the tests print a loud SKIPPED line, or fail with
//! `STORE_REQUIRE_SANDBOX=1` (as `tests/sandbox.rs`).

mod buildkit;
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use buildkit::*;
use common::*;
use serde_json::Value;

#[test]
fn builds_once_then_valid() {
    if !sandbox_or_skip("builds_once_then_valid") {
        return;
    }
    let b = Builds::new();
    // Different content every time it is built: a rebuild would show.
    let d = b.drv(
        "once",
        r#"
name = "once"
builder = "/bin/sh"
args = ["-c", "read u < /proc/sys/kernel/random/uuid; echo $u > $out"]
"#,
    );
    assert!(!b.valid(d.out()));
    let printed = b.realise_ok(&[&d.path]);
    assert_eq!(printed, vec![d.out().to_owned()]);
    assert!(b.valid(d.out()));
    let first = b.read(d.out());
    assert_eq!(first.trim().len(), 36, "{first:?}");
    let info = b.info(d.out());
    assert_eq!(info["path"], d.out());
    assert!(info["narHash"].as_str().unwrap().starts_with("sha256-"));
    // Read-only, like every store path.
    let mode = fs::metadata(b.s.real(d.out())).unwrap().permissions();
    assert!(mode.readonly(), "{mode:?}");

    // Again, without the sandbox paths: /bin/sh would not even exist for a builder, so
    // success means nothing was built; and the content is the same.
    let mut c = b.s.cmd();
    c.args(["realise", &d.path]);
    let out = run_timed(c);
    assert_success(&out, "second realise");
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), vec![d.out()]);
    assert_eq!(b.read(d.out()), first);
    // The JSON report says so too.
    let out = b.realise(&["--json", &d.path]);
    assert_success(&out, "realise --json");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["built"], serde_json::json!([]), "{report}");
    assert_eq!(report["substituted"], serde_json::json!([]), "{report}");
    assert_eq!(report["realised"], serde_json::json!([d.out()]), "{report}");
    // The output path itself is also accepted, and is a no-op.
    assert_eq!(b.realise_ok(&[d.out()]), vec![d.out().to_owned()]);
    assert_eq!(b.read(d.out()), first);
    // The .drv's own closure is untouched and the output knows its deriver.
    assert!(b.valid(&d.path));
    if let Some(deriver) = info.get("deriver") {
        assert_eq!(deriver, &Value::String(d.path.clone()));
    }
}

#[test]
fn outputs_selection_and_recipes() {
    if !sandbox_or_skip("outputs_selection_and_recipes") {
        return;
    }
    let b = Builds::new();
    let f = b.recipe(
        "multi",
        r#"
name = "multi"
builder = "/bin/sh"
outputs = ["out", "dev", "lib"]
args = ["-c", "echo out > $out; echo dev > $dev; /bin/mkdir $lib; echo lib > $lib/file"]
"#,
    );
    let d = b.instantiate(&f);
    let (out, dev, lib) = (&d.outputs["out"], &d.outputs["dev"], &d.outputs["lib"]);
    assert_eq!(
        b.realise_ok(&[&format!("{}^lib", d.path)]),
        vec![lib.clone()]
    );
    assert_eq!(b.read(&format!("{lib}/file")), "lib\n");
    let two = b.realise_ok(&[&format!("{}^out,dev", d.path)]);
    assert_eq!(lines_set(&two), set(&[out, dev]));
    let all = b.realise_ok(&[&format!("{}^*", d.path)]);
    assert_eq!(lines_set(&all), set(&[out, dev, lib]));
    let plain = b.realise_ok(&[&d.path]);
    assert_eq!(lines_set(&plain), set(&[out, dev, lib]));
    assert_eq!(b.read(dev), "dev\n");
    // Nix 2.8's `!` separator.
    assert_eq!(
        b.realise_ok(&[&format!("{}!dev", d.path)]),
        vec![dev.clone()]
    );
    // An output the derivation does not have.
    let err = b.realise_fails(&[&format!("{}^nope", d.path)]);
    assert!(err.contains("nope"), "{err}");

    // A recipe file given directly: instantiated, then built.
    let r = b.recipe(
        "direct",
        r#"
name = "direct"
builder = "/bin/sh"
args = ["-c", "echo direct > $out"]
"#,
    );
    let want = b.instantiate(&r);
    assert_eq!(
        b.realise_ok(&[r.to_str().unwrap()]),
        vec![want.out().to_owned()]
    );
    assert_eq!(b.read(want.out()), "direct\n");
}

#[test]
fn failing_builder_reports_and_registers_nothing() {
    if !sandbox_or_skip("failing_builder_reports_and_registers_nothing") {
        return;
    }
    let b = Builds::new();
    let d = b.drv(
        "fails",
        r#"
name = "fails"
builder = "/bin/sh"
args = ["-c", "echo early-line; echo partial > $out; echo tail-marker-42 >&2; exit 7"]
"#,
    );
    let err = b.realise_fails(&[&d.path]);
    assert!(err.contains("exit code 7"), "exit code missing: {err}");
    assert!(err.contains("tail-marker-42"), "log tail missing: {err}");
    assert!(err.contains(&d.path), "the failed .drv is not named: {err}");
    assert!(!b.valid(d.out()));
    assert!(
        !b.s.real(d.out()).exists(),
        "a failed build left its output in the store"
    );
    // And a second try fails the same way (nothing cached as a success).
    let err = b.realise_fails(&[&d.path]);
    assert!(err.contains("exit code 7"), "{err}");

    // A builder that exits 0 without creating its output is a failure too.
    let d = b.drv(
        "no-output",
        r#"
name = "no-output"
builder = "/bin/sh"
args = ["-c", "echo nothing"]
"#,
    );
    let err = b.realise_fails(&[&d.path]);
    assert!(err.contains(d.out()) || err.contains("out"), "{err}");
    assert!(!b.valid(d.out()));
}

#[test]
fn keep_going_builds_what_it_can() {
    if !sandbox_or_skip("keep_going_builds_what_it_can") {
        return;
    }
    let b = Builds::new();
    b.recipe(
        "bad",
        r#"
name = "bad"
builder = "/bin/sh"
args = ["-c", "exit 1"]
"#,
    );
    let above_bad = b.drv(
        "above-bad",
        r#"
name = "above-bad"
builder = "/bin/sh"
args = ["-c", "echo ${inputs.bad} > $out"]
inputs.bad = "bad.toml"
"#,
    );
    let bad = b.instantiate(&b.recipes.join("bad.toml"));
    b.recipe(
        "good-dep",
        r#"
name = "good-dep"
builder = "/bin/sh"
args = ["-c", "/bin/sleep 0.3; echo dep > $out"]
"#,
    );
    let good = b.drv(
        "good",
        r#"
name = "good"
builder = "/bin/sh"
args = ["-c", "echo ${inputs.dep} > $out"]
inputs.dep = "good-dep.toml"
"#,
    );
    let good_dep = b.instantiate(&b.recipes.join("good-dep.toml"));
    let err = b.realise_fails(&[
        "--keep-going",
        "--max-jobs",
        "1",
        &bad.path,
        &above_bad.path,
        &good.path,
    ]);
    assert!(err.contains(&bad.path), "{err}");
    assert!(b.valid(good_dep.out()), "keep-going did not build good-dep");
    assert!(b.valid(good.out()), "keep-going did not build good: {err}");
    assert!(!b.valid(bad.out()));
    assert!(!b.valid(above_bad.out()));
}

/// The build dir (the builder's working directory, holding `marker`) that the error message
/// names: either that dir itself (as Nix prints it) or the dir holding it as `build/`.
fn dir_named_in(err: &str, marker: &str) -> Option<PathBuf> {
    err.split(|c: char| c.is_whitespace() || "'\"`‘’“”".contains(c))
        .map(|t| t.trim_end_matches([':', ',', '.', ';', ')']))
        .filter(|t| t.starts_with('/'))
        .map(PathBuf::from)
        .flat_map(|p| [p.clone(), p.join("build")])
        .find(|p| p.join(marker).is_file())
}

#[test]
fn keep_failed_keeps_the_build_dir() {
    if !sandbox_or_skip("keep_failed_keeps_the_build_dir") {
        return;
    }
    let b = Builds::new();
    let d = b.drv(
        "kept",
        r#"
name = "kept"
builder = "/bin/sh"
args = ["-c", "echo partial > marker-file; exit 3"]
"#,
    );
    let err = b.realise_fails(&["--keep-failed", &d.path]);
    assert!(err.contains("exit code 3"), "{err}");
    let dir = dir_named_in(&err, "marker-file")
        .unwrap_or_else(|| panic!("no kept build dir holding marker-file is named in: {err}"));
    assert_eq!(
        fs::read_to_string(dir.join("marker-file")).unwrap(),
        "partial\n"
    );
    assert!(!b.valid(d.out()));
    // It survives the next store command (which cleans stale temp dirs).
    b.s.ok(&["init"]);
    assert!(dir.join("marker-file").is_file(), "{}", dir.display());
    // Without --keep-failed the build dir is not kept (so none is named).
    let err = b.realise_fails(&[&d.path]);
    assert!(dir_named_in(&err, "marker-file").is_none(), "{err}");
    // Clean up what we asked to keep (it may live outside the test's temp dir).
    if !dir.starts_with(b.s.dir.path()) {
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn check_detects_nondeterminism() {
    if !sandbox_or_skip("check_detects_nondeterminism") {
        return;
    }
    let b = Builds::new();
    let det = b.drv(
        "det",
        r#"
name = "det"
builder = "/bin/sh"
args = ["-c", "/bin/mkdir $out; echo same > $out/a; /bin/ln -s a $out/link"]
"#,
    );
    b.realise_ok(&[&det.path]);
    let before = b.info(det.out());
    assert_eq!(b.realise_ok(&["--check", &det.path]), vec![det.out()]);
    assert_eq!(b.info(det.out())["narHash"], before["narHash"]);

    let nondet = b.drv(
        "nondet",
        r#"
name = "nondet"
builder = "/bin/sh"
args = ["-c", "read u < /proc/sys/kernel/random/uuid; echo $u > $out"]
"#,
    );
    b.realise_ok(&[&nondet.path]);
    let content = b.read(nondet.out());
    let err = b.realise_fails(&["--check", &nondet.path]);
    assert!(
        err.to_lowercase().contains("determinis"),
        "--check does not report non-determinism: {err}"
    );
    assert!(
        err.contains(&nondet.path) || err.contains(nondet.out()),
        "{err}"
    );
    // The registered output is unchanged.
    assert!(b.valid(nondet.out()));
    assert_eq!(b.read(nondet.out()), content);
}

#[test]
fn concurrent_realise_builds_once() {
    if !sandbox_or_skip("concurrent_realise_builds_once") {
        return;
    }
    let b = Builds::new();
    // The builder reports each run through a FIFO in a host dir bound (read-only: writing to
    // a FIFO is allowed on a read-only mount) into the sandbox. Outside /tmp, which is a
    // fresh tmpfs in the sandbox.
    let counter = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fifo = counter.path().join("fifo");
    let st = Command::new("mkfifo")
        .args(["-m", "666"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    // Opening read+write never blocks and keeps the pipe open, so the builders' writes
    // never block either and stay buffered until we read them.
    let mut pipe = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let d = b.drv(
        "contended",
        &format!(
            r#"
name = "contended"
builder = "/bin/sh"
args = ["-c", "echo built >> {}; /bin/sleep 1; echo done > $out"]
"#,
            fifo.display()
        ),
    );
    let paths = format!("{} {}", sandbox_paths(), counter.path().display());
    let children: Vec<_> = (0..3)
        .map(|_| {
            let mut c = b.s.cmd();
            c.args(["realise", "--sandbox-paths", &paths, &d.path]);
            std::thread::spawn(move || run_timed(c))
        })
        .collect();
    for c in children {
        let out = c.join().unwrap();
        assert_success(&out, "concurrent realise");
        assert_eq!(text(&out.stdout).trim(), d.out());
    }
    writeln!(pipe, "end").unwrap();
    let mut runs = 0;
    for line in BufReader::new(pipe).lines() {
        match line.unwrap().as_str() {
            "built" => runs += 1,
            "end" => break,
            other => panic!("unexpected line {other:?} in the FIFO"),
        }
    }
    assert_eq!(
        runs, 1,
        "3 concurrent realise processes ran the builder {runs} times"
    );
    assert_eq!(b.read(d.out()), "done\n");
}

#[test]
fn log_of_a_build() {
    if !sandbox_or_skip("log_of_a_build") {
        return;
    }
    let b = Builds::new();
    let d = b.drv(
        "logged",
        r#"
name = "logged"
builder = "/bin/sh"
args = ["-c", "echo log-line-stdout-abc; echo log-line-stderr-def >&2; echo x > $out"]
"#,
    );
    b.realise_ok(&[&d.path]);
    for arg in [&d.path, d.out()] {
        let log = b.s.ok(&["log", arg]);
        assert!(
            log.contains("log-line-stdout-abc"),
            "store log {arg}: {log}"
        );
        assert!(
            log.contains("log-line-stderr-def"),
            "store log {arg}: {log}"
        );
    }
    // A path that was never built has no log.
    let never = b.drv(
        "never",
        "name = \"never\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo > $out\"]\n",
    );
    let err = b.s.fails(&["log", &never.path]);
    assert!(!err.is_empty());
}

#[test]
fn references_found_by_scanning() {
    if !sandbox_or_skip("references_found_by_scanning") {
        return;
    }
    let b = Builds::new();
    b.recipe(
        "dep",
        "name = \"dep\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo dep > $out\"]\n",
    );
    let dep = b.instantiate(&b.recipes.join("dep.toml"));
    let user = b.drv(
        "user",
        r#"
name = "user"
builder = "/bin/sh"
args = ["-c", "echo ${inputs.dep} > $out"]
inputs.dep = "dep.toml"
"#,
    );
    // An input it reads but does not mention in its output.
    let nonuser = b.drv(
        "nonuser",
        r#"
name = "nonuser"
builder = "/bin/sh"
args = ["-c", "read x < ${inputs.dep}; echo $x > $out"]
inputs.dep = "dep.toml"
"#,
    );
    let selfref = b.drv(
        "selfref",
        "name = \"selfref\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo $out > $out\"]\n",
    );
    // Sibling outputs: out mentions dev (in a file inside a directory), dev mentions nothing.
    let multi = b.drv(
        "sib",
        r#"
name = "sib"
builder = "/bin/sh"
outputs = ["out", "dev"]
args = ["-c", "/bin/mkdir -p $out/share; echo $dev > $out/share/where; /bin/ln -s ${inputs.dep} $out/dep-link; echo dev > $dev"]
inputs.dep = "dep.toml"
"#,
    );
    b.realise_ok(&[&user.path, &nonuser.path, &selfref.path, &multi.path]);
    assert_eq!(b.references(user.out()), set(&[dep.out()]));
    assert_eq!(b.read(nonuser.out()), "dep\n");
    assert_eq!(b.references(nonuser.out()), set(&[]));
    assert_eq!(b.references(selfref.out()), set(&[selfref.out()]));
    assert_eq!(
        b.references(multi.out()),
        set(&[&multi.outputs["dev"], dep.out()])
    );
    assert_eq!(b.references(&multi.outputs["dev"]), set(&[]));
    assert_eq!(b.references(dep.out()), set(&[]));
    // The closure is complete (what `path-info -r` walks).
    let v: Value =
        serde_json::from_str(&b.s.ok(&["path-info", "--json", "-r", multi.out()])).unwrap();
    let closure: BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        closure,
        set(&[multi.out(), &multi.outputs["dev"], dep.out()])
    );
}

#[test]
fn fixed_output_derivations() {
    if !sandbox_or_skip("fixed_output_derivations") {
        return;
    }
    let b = Builds::new();
    let content = b"fixed output content\n";
    // Flat, by the content's sha256 in SRI form.
    let sri = b.hash_forms(content)[3].clone();
    let flat = b.drv(
        "flat",
        &format!(
            r#"
name = "flat"
builder = "/bin/sh"
args = ["-c", "printf 'fixed output content\\n' > $out"]
output_hash = "{sri}"
"#
        ),
    );
    assert_eq!(b.realise_ok(&[&flat.path]), vec![flat.out()]);
    assert_eq!(b.read(flat.out()).as_bytes(), content);
    let info = b.info(flat.out());
    assert_eq!(b.references(flat.out()), set(&[]));
    if let Some(ca) = info.get("ca") {
        assert!(ca.as_str().unwrap().starts_with("fixed:sha256:"), "{ca}");
    }

    // Recursive: the hash of a tree made here the way the builder makes it.
    let tree = b.s.scratch().join("rec-tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("file"), "inside a recursive FOD\n").unwrap();
    std::os::unix::fs::symlink("file", tree.join("link")).unwrap();
    let rec_hash =
        b.s.ok(&["hash", "path", "--base32", tree.to_str().unwrap()])
            .trim()
            .to_owned();
    let rec = b.drv(
        "rec",
        &format!(
            r#"
name = "rec"
builder = "/bin/sh"
args = ["-c", "/bin/mkdir $out; printf 'inside a recursive FOD\\n' > $out/file; /bin/ln -s file $out/link"]
output_hash_mode = "recursive"
output_hash_algo = "sha256"
output_hash = "{rec_hash}"
"#
        ),
    );
    assert_eq!(b.realise_ok(&[&rec.path]), vec![rec.out()]);
    // The same path `store add` gives for the tree.
    assert_eq!(
        b.s.ok(&["add", tree.to_str().unwrap(), "--name", "rec"])
            .trim(),
        rec.out()
    );

    // A wrong declared hash: fails, names both hashes, registers nothing.
    let wrong = b"what the builder really writes\n";
    let wrong_forms = b.hash_forms(wrong);
    let bad = b.drv(
        "badfod",
        &format!(
            r#"
name = "badfod"
builder = "/bin/sh"
args = ["-c", "printf 'what the builder really writes\\n' > $out"]
output_hash = "{sri}"
"#
        ),
    );
    let err = b.realise_fails(&[&bad.path]);
    let expected_forms = b.hash_forms(content);
    assert!(
        expected_forms.iter().any(|h| err.contains(h.as_str())),
        "the declared hash ({expected_forms:?}) is not in: {err}"
    );
    assert!(
        wrong_forms.iter().any(|h| err.contains(h.as_str())),
        "the actual hash ({wrong_forms:?}) is not in: {err}"
    );
    assert!(!b.valid(bad.out()));
    assert!(!b.s.real(bad.out()).exists());
    // The good FOD with the same hash is untouched.
    assert!(b.valid(flat.out()));
}

#[test]
fn dag_with_source_and_parallel_jobs() {
    if !sandbox_or_skip("dag_with_source_and_parallel_jobs") {
        return;
    }
    let b = Builds::new();
    fs::write(b.recipes.join("greeting.txt"), "hello from a source\n").unwrap();
    b.recipe(
        "leaf",
        "name = \"leaf\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"/bin/sleep 0.2; echo leaf > $out\"]\n",
    );
    for side in ["left", "right"] {
        b.recipe(
            side,
            &format!(
                r#"
name = "{side}"
builder = "/bin/sh"
args = ["-c", "/bin/sleep 0.2; /bin/cat ${{inputs.leaf}} > $out; echo {side} >> $out"]
inputs.leaf = "leaf.toml"
"#
            ),
        );
    }
    let top = b.drv(
        "top",
        r#"
name = "top"
builder = "/bin/sh"
args = ["-c", "/bin/cat ${inputs.left} ${inputs.right} ${sources.greeting} > $out; echo ${inputs.left} >> $out"]
inputs.left = "left.toml"
inputs.right = "right.toml"
sources.greeting = "greeting.txt"
"#,
    );
    let left = b.instantiate(&b.recipes.join("left.toml"));
    assert_eq!(
        b.realise_ok(&["--max-jobs", "2", &top.path]),
        vec![top.out()]
    );
    assert_eq!(
        b.read(top.out()),
        format!(
            "leaf\nleft\nleaf\nright\nhello from a source\n{}\n",
            left.out()
        )
    );
    // Only the path it mentions is a reference (not right, not the source).
    assert_eq!(b.references(top.out()), set(&[left.out()]));
}

#[test]
fn out_link_points_at_the_output() {
    if !sandbox_or_skip("out_link_points_at_the_output") {
        return;
    }
    let b = Builds::new();
    let d = b.drv(
        "linked",
        "name = \"linked\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo linked > $out\"]\n",
    );
    let link = b.s.scratch().join("result");
    b.realise_ok(&["--out-link", link.to_str().unwrap(), &d.path]);
    let target = fs::read_link(&link).expect("--out-link made no symlink");
    assert_eq!(
        target.file_name(),
        Path::new(d.out()).file_name(),
        "{}",
        target.display()
    );
}

#[test]
fn limits_and_leftover_processes() {
    if !sandbox_or_skip("limits_and_leftover_processes") {
        return;
    }
    let b = Builds::new();
    let slow = b.drv(
        "slow",
        "name = \"slow\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"/bin/sleep 30; echo x > $out\"]\n",
    );
    for (flag, want) in [
        ("--timeout", "timed out"),
        ("--max-silent-time", "no output"),
    ] {
        let start = std::time::Instant::now();
        let err = b.realise_fails(&[flag, "1", &slow.path]);
        assert!(err.contains(want), "{flag}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{flag} took {:?}",
            start.elapsed()
        );
        assert!(!b.valid(slow.out()));
    }
    // A process the builder leaves behind, holding the log pipe, neither delays the build nor
    // survives it (the sandbox's PID namespace goes with the builder).
    let bg = b.drv(
        "bg",
        "name = \"bg\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"/bin/sleep 30 & echo x > $out\"]\n",
    );
    let start = std::time::Instant::now();
    assert_eq!(b.realise_ok(&[&bg.path]), vec![bg.out()]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn log_of_a_failed_build_and_only_closure_references() {
    if !sandbox_or_skip("log_of_a_failed_build_and_only_closure_references") {
        return;
    }
    let b = Builds::new();
    let f = b.drv(
        "f",
        "name = \"f\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo failing-log-line; exit 5\"]\n",
    );
    b.realise_fails(&[&f.path]);
    let log = b.s.ok(&["log", &f.path]);
    assert!(log.contains("failing-log-line"), "{log}");

    // A valid path that is not in the input closure is not a reference even when the
    // output names it (only the inputs' closure and the outputs are candidates).
    let other = b.drv(
        "other",
        "name = \"other\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo other > $out\"]\n",
    );
    b.realise_ok(&[&other.path]);
    let naming = b.drv(
        "naming",
        &format!(
            "name = \"naming\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo {} > $out\"]\n",
            other.out()
        ),
    );
    b.realise_ok(&[&naming.path]);
    assert_eq!(b.read(naming.out()), format!("{}\n", other.out()));
    assert_eq!(b.references(naming.out()), set(&[]));
}

#[test]
fn outputs_are_canonicalised_and_fods_may_not_refer() {
    use std::os::unix::fs::MetadataExt;
    if !sandbox_or_skip("outputs_are_canonicalised_and_fods_may_not_refer") {
        return;
    }
    let b = Builds::new();
    let d = b.drv(
        "perms",
        r#"
name = "perms"
builder = "/bin/sh"
args = ["-c", "/bin/mkdir -p $out/d; echo a > $out/d/f; /bin/chmod 4777 $out/d/f; /bin/ln $out/d/f $out/hard; echo b > $out/plain; /bin/chmod 600 $out/plain; /bin/chmod 777 $out/d; /bin/touch -d 2020-01-01 $out/d/f; /bin/ln -s /nowhere $out/dangling"]
"#,
    );
    b.realise_ok(&[&d.path]);
    let root = b.s.real(d.out());
    for (rel, mode) in [
        ("", 0o555),
        ("d", 0o555),
        ("d/f", 0o555),
        ("hard", 0o555),
        ("plain", 0o444),
    ] {
        let m = fs::symlink_metadata(root.join(rel)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{rel}: {:o}", m.mode());
        assert_eq!(m.mtime(), 1, "{rel}");
    }
    // No hard link leaves the output, and the two names still have the same bytes.
    assert_eq!(fs::metadata(root.join("d/f")).unwrap().nlink(), 1);
    assert_eq!(fs::read(root.join("hard")).unwrap(), b"a\n");
    assert_eq!(
        fs::read_link(root.join("dangling")).unwrap(),
        Path::new("/nowhere")
    );

    // A fixed output that refers to a store path (its input) is refused, even with the
    // right hash.
    b.recipe(
        "dep",
        "name = \"dep\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo dep > $out\"]\n",
    );
    let dep = b.instantiate(&b.recipes.join("dep.toml"));
    let sri = b.hash_forms(format!("{}\n", dep.out()).as_bytes())[3].clone();
    let fod = b.drv(
        "fodref",
        &format!(
            r#"
name = "fodref"
builder = "/bin/sh"
args = ["-c", "echo ${{inputs.dep}} > $out"]
inputs.dep = "dep.toml"
output_hash = "{sri}"
"#
        ),
    );
    let err = b.realise_fails(&[&fod.path]);
    assert!(err.contains(dep.out()) || err.contains("refer"), "{err}");
    assert!(!b.valid(fod.out()));
    assert!(b.valid(dep.out()));
}
