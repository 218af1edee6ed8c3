//! The CI pattern: build a recipe, sign what was built with the config's secret key, push the
//! closure and its build logs with `--push-to`; then a fresh store gets the same outputs from
//! that cache by substitution, without building, trusting only that key.

mod common;

use std::fs;

use common::*;
use serde_json::Value;

#[test]
fn build_sign_push_then_substitute() {
    if !sandbox_or_skip("build_sign_push_then_substitute") {
        return;
    }
    let s = TestStore::new();
    let dir = s.scratch();
    let (sec, publ) = (dir.join("ci.sec"), dir.join("ci.pub"));
    s.ok(&[
        "key",
        "generate",
        "--name",
        "ci-test-1",
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        publ.to_str().unwrap(),
    ]);
    let public = fs::read_to_string(&publ).unwrap().trim().to_owned();
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "secret-key-files = [\"{}\"]\nsandbox-paths = [\"/bin\", \"/lib\", \"/lib64\", \"/usr\"]\n",
            sec.display()
        ),
    )
    .unwrap();
    fs::write(
        dir.join("dep.toml"),
        r#"name = "dep"
builder = "/bin/sh"
args = ["-c", "echo building dep; echo dep > $out"]
"#,
    )
    .unwrap();
    fs::write(
        dir.join("top.toml"),
        r#"name = "top"
builder = "/bin/sh"
args = ["-c", "echo building top; /bin/cat ${inputs.dep} > $out; echo ${inputs.dep} >> $out"]
inputs.dep = "dep.toml"
"#,
    )
    .unwrap();
    let cache = dir.join("cache");
    let url = file_url(&cache);
    let report: Value = serde_json::from_str(&s.ok(&[
        "--config",
        config.to_str().unwrap(),
        "--json",
        "realise",
        "--push-to",
        &url,
        dir.join("top.toml").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["built"].as_array().unwrap().len(), 2, "{report}");
    let top = report["realised"][0].as_str().unwrap().to_owned();
    // Signed, with its deriver and the reference found by scanning.
    let infos: Vec<Value> =
        serde_json::from_str(&s.ok(&["path-info", "--json", "-r", &top])).unwrap();
    assert_eq!(infos.len(), 2);
    let top_info = infos.iter().find(|i| i["path"] == top.as_str()).unwrap();
    assert!(top_info["signatures"][0]
        .as_str()
        .unwrap()
        .starts_with("ci-test-1:"));
    assert_eq!(top_info["references"].as_array().unwrap().len(), 1);
    assert!(top_info["deriver"].as_str().unwrap().ends_with("-top.drv"));
    // The logs went along.
    let logs: Vec<String> = fs::read_dir(cache.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    let top_log = logs.iter().find(|l| l.ends_with("-top.drv")).unwrap();
    assert_eq!(
        fs::read_to_string(cache.join("log").join(top_log)).unwrap(),
        "building top\n"
    );
    assert_eq!(
        s.ok(&["log", top_info["deriver"].as_str().unwrap()]),
        "building top\n"
    );

    // A fresh store: the same recipe is substituted, not built.
    let t = TestStore::new();
    let report: Value = serde_json::from_str(&t.ok(&[
        "--json",
        "realise",
        "--substituters",
        &url,
        "--trusted-public-keys",
        &public,
        dir.join("top.toml").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["built"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(
        report["substituted"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert_eq!(report["realised"][0].as_str().unwrap(), top);
    let out = t.cmd().args(["verify", "--all"]).output().unwrap();
    assert_success(&out, "verify --all");
}

#[test]
fn failed_builds_exit_like_nix() {
    if !sandbox_or_skip("failed_builds_exit_like_nix") {
        return;
    }
    let s = TestStore::new();
    let dir = s.scratch();
    fs::write(
        dir.join("fails.toml"),
        "name = \"fails\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo no; exit 3\"]\n",
    )
    .unwrap();
    // A fixed output whose declared hash is not that of what the builder writes.
    fs::write(
        dir.join("wrong.toml"),
        "name = \"wrong\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"echo x > $out\"]\n\
         output_hash = \"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"\n",
    )
    .unwrap();
    let code = |recipe: &str| {
        let out = s
            .cmd()
            .args(["realise", "--sandbox-paths", "/bin /lib /lib64 /usr"])
            .arg(dir.join(recipe))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, err) = code("fails.toml");
    assert_eq!(c, Some(100), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    let (c, err) = code("wrong.toml");
    assert_eq!(c, Some(102), "{err}");
    assert!(err.contains("specified:") && err.contains("got:"), "{err}");
}
