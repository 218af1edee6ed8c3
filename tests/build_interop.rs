//! Building against real Nix 2.8 (when installed; `STORE_REQUIRE_NIX=1` makes its absence a
//! failure): derivations made by `nix-instantiate` and built by `nix-store --realise` in a
//! chroot store, and by `store realise` in ours, give the same output paths, NAR hashes and
//! sizes, references and content addresses.
//!
//! The `.drv` closure reaches our store the way it would in practice: `nix copy
//! --derivation` to a signed `file://` cache, from which `store realise` substitutes the
//! `.drv` files and input sources before building. Nix builds in its sandbox (it forces it
//! for a chroot store), ours in its own; both get the host's `/bin /lib /lib64 /usr`
//! (dash is dynamically linked).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd`, killing it after [`TIMEOUT`].
fn run_timed(cmd: Command) -> Output {
    run_with_timeout(cmd, TIMEOUT)
}

/// Our store (logical dir `/nix/store`), a Nix chroot store, a signed cache between them.
struct Pair {
    s: TestStore,
    scratch: PathBuf,
    chroot: PathBuf,
    cache: PathBuf,
}

impl Pair {
    fn new() -> Self {
        let s = TestStore::with_store_dir("/nix/store");
        let scratch = s.scratch();
        Pair {
            chroot: scratch.join("nix-chroot"),
            cache: scratch.join("cache"),
            scratch,
            s,
        }
    }

    fn nix(&self, program: &str) -> Command {
        let mut c = nix_cmd(program, &self.scratch);
        c.arg("--store").arg(&self.chroot);
        c
    }

    /// `nix-instantiate FILE` into the chroot store.
    fn instantiate(&self, file: &Path) -> String {
        let mut c = self.nix("nix-instantiate");
        c.arg(file);
        stdout_of(c).trim().to_owned()
    }

    /// `nix-store --realise DRV` in the chroot store, in Nix's sandbox.
    fn nix_realise(&self, drv: &str) -> Output {
        let mut c = self.nix("nix-store");
        c.args([
            "--realise",
            drv,
            "--max-jobs",
            "2",
            "--option",
            "sandbox-paths",
        ])
        .arg(sandbox_paths());
        run_timed(c)
    }

    /// Copies the `.drv` closure (derivations and input sources) to the signed cache.
    fn push_derivation(&self, drv: &str) {
        let url = format!(
            "file://{}?compression=none&secret-key={}",
            self.cache.display(),
            fixture("keys/test-cache-1.sec").display()
        );
        let mut c = self.nix("nix");
        c.args(["copy", "--to", &url, "--derivation", drv]);
        stdout_of(c);
    }

    /// `store realise DRV…` substituting from the cache and building the rest.
    fn our_realise(&self, args: &[&str]) -> Output {
        let mut c = self.s.cmd();
        c.arg("realise")
            .arg("--substituters")
            .arg(file_url(&self.cache))
            .arg("--trusted-public-keys")
            .arg(test_public_key())
            .arg("--sandbox-paths")
            .arg(sandbox_paths())
            .args(args);
        run_timed(c)
    }

    /// Every output path of `drv` and the derivations below it (`nix show-derivation -r`).
    fn all_outputs(&self, drv: &str) -> BTreeSet<String> {
        let mut c = self.nix("nix");
        c.args(["show-derivation", "-r", drv]);
        let v: Value = serde_json::from_str(&stdout_of(c)).unwrap();
        v.as_object()
            .unwrap()
            .values()
            .flat_map(|d| {
                d["outputs"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|o| o["path"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// path → (narHash, narSize, sorted references, ca) from `path-info --json -r` output.
type Infos = BTreeMap<String, (String, u64, Vec<String>, Option<String>)>;

fn infos(json: &str) -> Infos {
    let v: Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let mut refs: Vec<String> = i["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            refs.sort();
            (
                i["path"].as_str().unwrap().to_owned(),
                (
                    i["narHash"].as_str().unwrap().to_owned(),
                    i["narSize"].as_u64().unwrap(),
                    refs,
                    i.get("ca").and_then(|c| c.as_str()).map(str::to_owned),
                ),
            )
        })
        .collect()
}

/// A DAG of `derivation`s with `/bin/sh` builders: flat and recursive fixed-output inputs
/// (content made by the builder), a derivation with three outputs that refer to each other,
/// a file and a directory source, four levels, a reference to a path that is only in the
/// input closure (not a direct input), and an input read but not referred to.
fn write_dag(dir: &Path, flat_hash: &str, rec_hash: &str) -> PathBuf {
    fs::write(dir.join("input.txt"), "an input source file\n").unwrap();
    fs::create_dir_all(dir.join("srcdir/sub")).unwrap();
    fs::write(dir.join("srcdir/a"), "#!/bin/sh\necho a\n").unwrap();
    fs::write(dir.join("srcdir/sub/b"), "b\n").unwrap();
    let expr = r#"
let
  mk = attrs: derivation ({ system = builtins.currentSystem; builder = "/bin/sh"; } // attrs);
  fodFlat = mk {
    name = "bi-fod-flat";
    args = [ "-c" "printf 'flat fixed output\\n' > $out" ];
    outputHashAlgo = "sha256";
    outputHash = "FLAT_HASH";
  };
  fodRec = mk {
    name = "bi-fod-rec";
    args = [ "-c" "/bin/mkdir $out; printf 'inside a recursive FOD\\n' > $out/file; /bin/ln -s file $out/link" ];
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = "REC_HASH";
  };
  multi = mk {
    name = "bi-multi";
    outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "echo ${fodFlat} > $out; echo $lib > $dev; /bin/mkdir -p $lib/share; /bin/cat ${fodRec}/file > $lib/share/f; /bin/ln -s ${fodRec} $lib/rec" ];
  };
  l1 = mk {
    name = "bi-l1";
    args = [ "-c" "/bin/cat ${./input.txt} > $out; echo ${multi.dev} >> $out" ];
  };
  l2 = mk {
    name = "bi-l2";
    args = [ "-c" "/bin/mkdir $out; /bin/cp ${./srcdir}/a $out/a; /bin/chmod +x $out/a; /bin/cp -r ${./srcdir}/sub $out/sub; echo ${l1} > $out/l1; echo > $out/empty" ];
  };
  l3 = mk {
    name = "bi-l3";
    args = [ "-c" "read x < ${l2}/l1; echo $x > $out; echo ${multi} >> $out" ];
  };
  top = mk {
    name = "bi-top";
    outputs = [ "out" "bin" ];
    args = [ "-c" "echo ${l3} ${multi.lib} > $out; /bin/mkdir $bin; echo '#!/bin/sh' > $bin/run; echo $out >> $bin/run; /bin/chmod 555 $bin/run" ];
  };
in top
"#
    .replace("FLAT_HASH", flat_hash)
    .replace("REC_HASH", rec_hash);
    let f = dir.join("dag.nix");
    fs::write(&f, expr).unwrap();
    f
}

#[test]
fn builds_like_nix() {
    if !nix_available("builds_like_nix") || !sandbox_or_skip("builds_like_nix") {
        return;
    }
    let p = Pair::new();
    let dir = p.scratch.join("expr");
    fs::create_dir_all(&dir).unwrap();

    // The fixed-output hashes, from content made here the way the builders make it.
    let flat_file = p.scratch.join("flat");
    fs::write(&flat_file, "flat fixed output\n").unwrap();
    let flat_hash =
        p.s.ok(&["hash", "file", "--base16", flat_file.to_str().unwrap()])
            .trim()
            .to_owned();
    let tree = p.scratch.join("rec-tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("file"), "inside a recursive FOD\n").unwrap();
    std::os::unix::fs::symlink("file", tree.join("link")).unwrap();
    let mut h = nix_cmd("nix", &p.scratch);
    h.args(["hash", "path", "--base32"]).arg(&tree);
    let rec_hash = stdout_of(h).trim().to_owned();

    let expr = write_dag(&dir, &flat_hash, &rec_hash);
    let drv = p.instantiate(&expr);
    assert!(drv.ends_with("-bi-top.drv"), "{drv}");
    p.push_derivation(&drv);

    let nix_out = p.nix_realise(&drv);
    assert_success(&nix_out, "nix-store --realise");
    let nix_printed: BTreeSet<String> = text(&nix_out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(nix_printed.len(), 2, "{nix_printed:?}");

    let ours = p.our_realise(&["--max-jobs", "2", &drv]);
    assert_success(&ours, "store realise");
    let our_printed: BTreeSet<String> = text(&ours.stdout).lines().map(str::to_owned).collect();
    assert_eq!(our_printed, nix_printed, "printed output paths");

    // Every output of every derivation in the DAG, with its closure.
    let outputs: Vec<String> = p.all_outputs(&drv).into_iter().collect();
    assert_eq!(outputs.len(), 10, "{outputs:?}");
    let mut c = p.nix("nix");
    c.args(["path-info", "--json", "-r"]).args(&outputs);
    let theirs = infos(&stdout_of(c));
    let mut args = vec!["path-info", "--json", "-r"];
    args.extend(outputs.iter().map(String::as_str));
    let mine = infos(&p.s.ok(&args));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "closures differ"
    );
    for (path, want) in &theirs {
        let got = &mine[path];
        assert_eq!(
            (&got.0, got.1, &got.2),
            (&want.0, want.1, &want.2),
            "{path}: (narHash, narSize, references) differ from Nix's"
        );
        if want.3.is_some() {
            assert_eq!(got.3, want.3, "{path}: ca");
        }
    }
    // The cases the DAG was made for.
    let by_name = |suffix: &str| {
        outputs
            .iter()
            .find(|o| o.ends_with(suffix))
            .unwrap_or_else(|| panic!("no output ending in {suffix}"))
            .clone()
    };
    let l3 = &theirs[&by_name("-bi-l3")];
    assert!(l3.2.contains(&by_name("-bi-l1")), "l1 only via l2: {l3:?}");
    assert!(!l3.2.contains(&by_name("-bi-l2")), "{l3:?}");
    assert!(theirs[&by_name("-bi-fod-flat")].3.is_some());

    // The files themselves are identical (not just the recorded hashes).
    for path in &outputs {
        let mut a = nix_cmd("nix", &p.scratch);
        a.args(["hash", "path"]).arg(p.s.real(path));
        assert_eq!(stdout_of(a).trim(), theirs[path].0, "{path} on disk");
    }

    // Realising again is a no-op in ours, printing the same paths.
    let again = p.our_realise(&[&drv]);
    assert_success(&again, "second store realise");
    let again: BTreeSet<String> = text(&again.stdout).lines().map(str::to_owned).collect();
    assert_eq!(again, nix_printed);
}

#[test]
fn wrong_fixed_output_hash_fails_like_nix() {
    if !nix_available("wrong_fixed_output_hash_fails_like_nix")
        || !sandbox_or_skip("wrong_fixed_output_hash_fails_like_nix")
    {
        return;
    }
    let p = Pair::new();
    let expr = p.scratch.join("bad.nix");
    // Declares the sha256 of "hello\n", writes something else.
    fs::write(
        &expr,
        r#"
derivation {
  name = "bi-badfod";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "printf 'not hello\\n' > $out" ];
  outputHashAlgo = "sha256";
  outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
}
"#,
    )
    .unwrap();
    let drv = p.instantiate(&expr);
    let mut q = p.nix("nix-store");
    q.args(["-q", "--outputs", &drv]);
    let out_path = stdout_of(q).trim().to_owned();
    p.push_derivation(&drv);

    let nix = p.nix_realise(&drv);
    assert!(!nix.status.success(), "Nix accepted the wrong hash");
    let nix_err = text(&nix.stderr);
    assert!(nix_err.contains("hash mismatch"), "{nix_err}");

    let ours = p.our_realise(&[&drv]);
    let err = text(&ours.stderr);
    assert!(
        !ours.status.success(),
        "store realise accepted the wrong hash: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Every form of the declared and the actual sha256, as Nix prints them (SRI) and the
    // other encodings.
    let forms = |content: &str| -> Vec<String> {
        let f = p.scratch.join("content");
        fs::write(&f, content).unwrap();
        ["--base16", "--base32", "--base64", "--sri"]
            .iter()
            .map(|e| {
                let mut c = nix_cmd("nix", &p.scratch);
                c.args(["hash", "file", e]).arg(&f);
                stdout_of(c).trim().to_owned()
            })
            .collect()
    };
    let specified = forms("hello\n");
    let got = forms("not hello\n");
    assert!(
        nix_err.contains(&specified[3]) && nix_err.contains(&got[3]),
        "{nix_err}"
    );
    assert!(
        specified.iter().any(|h| err.contains(h.as_str())),
        "ours does not name the declared hash ({specified:?}): {err}"
    );
    assert!(
        got.iter().any(|h| err.contains(h.as_str())),
        "ours does not name the actual hash ({got:?}): {err}"
    );

    // Nothing registered on either side, and nothing left in our store dir.
    let out = p.s.cmd().args(["path-info", &out_path]).output().unwrap();
    assert!(!out.status.success(), "{out_path} registered in ours");
    assert!(!p.s.real(&out_path).exists(), "{out_path} left on disk");
    let mut c = p.nix("nix-store");
    c.args(["--check-validity", &out_path]);
    assert!(!c.output().unwrap().status.success());
}

#[test]
fn substitutes_what_the_cache_has_and_builds_the_rest() {
    if !nix_available("substitutes_what_the_cache_has_and_builds_the_rest")
        || !sandbox_or_skip("substitutes_what_the_cache_has_and_builds_the_rest")
    {
        return;
    }
    let p = Pair::new();
    let expr = p.scratch.join("chain.nix");
    fs::write(
        &expr,
        r#"
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  a = mk "bs-a" "echo a > $out";
  b = mk "bs-b" "echo ${a} > $out";
  c = mk "bs-c" "echo ${b} > $out";
in { inherit a b c; }
"#,
    )
    .unwrap();
    let drv = |attr: &str| {
        let mut c = p.nix("nix-instantiate");
        c.arg(&expr).args(["-A", attr]);
        stdout_of(c).trim().to_owned()
    };
    let (b_drv, c_drv) = (drv("b"), drv("c"));
    // Nix builds b (and a); the cache gets c's .drv closure and b's output closure.
    let nb = p.nix_realise(&b_drv);
    assert_success(&nb, "nix-store --realise b");
    let b_out = text(&nb.stdout).trim().to_owned();
    p.push_derivation(&c_drv);
    let url = format!(
        "file://{}?compression=none&secret-key={}",
        p.cache.display(),
        fixture("keys/test-cache-1.sec").display()
    );
    let mut c = p.nix("nix");
    c.args(["copy", "--to", &url, &b_out]);
    stdout_of(c);

    let ours = p.our_realise(&["--json", &c_drv]);
    assert_success(&ours, "store realise --json c");
    let report: Value = serde_json::from_str(&text(&ours.stdout))
        .unwrap_or_else(|e| panic!("--json: {e}: {}", text(&ours.stdout)));
    let built: Vec<&str> = report["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["drv"].as_str().unwrap())
        .collect();
    assert_eq!(built, vec![c_drv.as_str()], "only c is built: {report}");
    let substituted: BTreeSet<&str> = report["substituted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert!(substituted.contains(b_out.as_str()), "{report}");

    // The result is what Nix builds.
    let nc = p.nix_realise(&c_drv);
    assert_success(&nc, "nix-store --realise c");
    let c_out = text(&nc.stdout).trim().to_owned();
    assert_eq!(report["realised"], serde_json::json!([c_out]), "{report}");
    let mut c = p.nix("nix");
    c.args(["path-info", "--json", "-r", &c_out]);
    let theirs = infos(&stdout_of(c));
    let mine = infos(&p.s.ok(&["path-info", "--json", "-r", &c_out]));
    for (path, want) in &theirs {
        let got = mine
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing in ours"));
        assert_eq!(
            (&got.0, got.1, &got.2),
            (&want.0, want.1, &want.2),
            "{path}"
        );
    }
    assert_eq!(mine.len(), theirs.len());
}
