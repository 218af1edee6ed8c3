//! Against real Nix 2.8 (when installed; `STORE_REQUIRE_NIX=1` makes its absence a
//! failure): a recipe DAG and the equivalent Nix expression instantiate to the same `.drv`
//! paths and bytes, and `store derivation show` prints what `nix show-derivation` prints.
//!
//! The Nix expression is written from the recipe TOML by [`NixWriter`] (independently of
//! the crate's recipe code): one `derivation { … }` per recipe file, placeholders turned
//! into interpolations, sources into path literals.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Writes a Nix expression equivalent to a recipe file and the recipes it uses.
#[derive(Default)]
struct NixWriter {
    /// Recipe file → the let-bound variable holding its derivation.
    vars: BTreeMap<PathBuf, String>,
    bindings: Vec<String>,
}

impl NixWriter {
    /// The variable of the recipe at `file`, writing its binding (and its inputs') first.
    fn recipe(&mut self, file: &Path) -> String {
        let file = file.canonicalize().unwrap();
        if let Some(v) = self.vars.get(&file) {
            return v.clone();
        }
        let dir = file.parent().unwrap().to_path_buf();
        let doc: toml::Table = fs::read_to_string(&file).unwrap().parse().unwrap();
        let mut inputs = BTreeMap::new();
        if let Some(t) = doc.get("inputs").and_then(|v| v.as_table()) {
            for (name, rel) in t {
                let v = self.recipe(&dir.join(rel.as_str().unwrap()));
                inputs.insert(name.clone(), v);
            }
        }
        let mut sources = BTreeMap::new();
        if let Some(t) = doc.get("sources").and_then(|v| v.as_table()) {
            for (name, rel) in t {
                let p = dir.join(rel.as_str().unwrap()).canonicalize().unwrap();
                sources.insert(name.clone(), p.display().to_string());
            }
        }
        let s = |v: &toml::Value| nix_string(v.as_str().unwrap(), &inputs, &sources);
        let mut attrs = vec![
            format!("name = {};", s(&doc["name"])),
            format!("builder = {};", s(&doc["builder"])),
        ];
        attrs.push(match doc.get("system") {
            Some(v) => format!("system = {};", s(v)),
            None => "system = builtins.currentSystem;".to_owned(),
        });
        if let Some(args) = doc.get("args") {
            let items: Vec<String> = args.as_array().unwrap().iter().map(s).collect();
            attrs.push(format!("args = [ {} ];", items.join(" ")));
        }
        if let Some(outs) = doc.get("outputs") {
            let items: Vec<String> = outs.as_array().unwrap().iter().map(s).collect();
            attrs.push(format!("outputs = [ {} ];", items.join(" ")));
        }
        for (key, attr) in [
            ("output_hash", "outputHash"),
            ("output_hash_algo", "outputHashAlgo"),
            ("output_hash_mode", "outputHashMode"),
        ] {
            if let Some(v) = doc.get(key) {
                attrs.push(format!("{attr} = {};", s(v)));
            }
        }
        if let Some(env) = doc.get("env").and_then(|v| v.as_table()) {
            for (k, v) in env {
                attrs.push(format!("\"{k}\" = {};", nix_value(v, &inputs, &sources)));
            }
        }
        let var = format!("r{}", self.vars.len());
        self.bindings.push(format!(
            "  {var} = derivation {{\n    {}\n  }};",
            attrs.join("\n    ")
        ));
        self.vars.insert(file, var.clone());
        var
    }

    fn expression(&self, roots: &[String]) -> String {
        let attrs: Vec<String> = roots
            .iter()
            .enumerate()
            .map(|(i, v)| format!("root{i} = {v};"))
            .collect();
        format!(
            "let\n{}\nin {{ {} }}\n",
            self.bindings.join("\n"),
            attrs.join(" ")
        )
    }
}

fn nix_value(
    v: &toml::Value,
    inputs: &BTreeMap<String, String>,
    sources: &BTreeMap<String, String>,
) -> String {
    match v {
        toml::Value::String(s) => nix_string(s, inputs, sources),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| nix_value(i, inputs, sources))
                .collect();
            format!("[ {} ]", items.join(" "))
        }
        other => panic!("unsupported env value {other:?}"),
    }
}

/// A Nix string literal for recipe text, placeholders turned into interpolations.
fn nix_string(
    text: &str,
    inputs: &BTreeMap<String, String>,
    sources: &BTreeMap<String, String>,
) -> String {
    let mut out = String::from("\"");
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("\\${");
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').unwrap();
            let body = &r[..end];
            let interp = if let Some(i) = body.strip_prefix("inputs.") {
                match i.split_once('.') {
                    Some((name, o)) => format!("{}.{o}", inputs[name]),
                    None => inputs[i].clone(),
                }
            } else {
                sources[body.strip_prefix("sources.").unwrap()].clone()
            };
            out.push_str(&format!("${{{interp}}}"));
            rest = &r[end + 1..];
            continue;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' => out.push_str("\\$"),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    out.push('"');
    out
}

/// A DAG exercising what the examples do not: a recursive fixed-output input, three
/// outputs, a string that needs every escape, `$${`, and a source directory.
fn write_generated_dag(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("src-tree/sub")).unwrap();
    fs::write(dir.join("src-tree/a.txt"), "tree file\n").unwrap();
    fs::write(dir.join("src-tree/sub/b"), "nested\n").unwrap();
    fs::write(
        dir.join("fod-rec.toml"),
        r#"
name = "gen-fod-rec"
builder = "/bin/sh"
args = ["-c", "/bin/mkdir $out; printf 'inside a recursive FOD\\n' > $out/file; /bin/ln -s file $out/link"]
output_hash_mode = "recursive"
output_hash_algo = "sha256"
output_hash = "1dv6vbygy3wv958vsjvzhgvi33sc01aqhmv1ywwqhp1nbbz8s6g9"
"#,
    )
    .unwrap();
    fs::write(
        dir.join("sri.toml"),
        r#"
name = "gen-fod-sri"
builder = "/bin/sh"
args = ["-c", "printf 'fixed output content\\n' > $out"]
output_hash = "sha256-nrfHq4Ju/HPrZpJX6vls3x0XmScBEuJAytpPfgZKT6w="
"#,
    )
    .unwrap();
    fs::write(
        dir.join("three.toml"),
        r#"
name = "gen-three"
system = "x86_64-linux"
builder = "${inputs.rec}/file"
outputs = ["out", "lib", "bin"]
args = ["quote \" backslash \\ tab \t cr \r nl \n dollar $x $${not.a.placeholder} ✓", "${sources.tree}/sub/b"]
inputs.rec = "fod-rec.toml"
inputs.sri = "sri.toml"
sources.tree = "src-tree"

[env]
FLAT = "${inputs.sri}"
NUMBER = 42
NO = false
LIST = ["a", 1, true, "${inputs.rec}"]
"#,
    )
    .unwrap();
    fs::write(
        dir.join("top.toml"),
        r#"
name = "gen-top"
builder = "/bin/sh"
args = ["-c", "echo ${inputs.three.lib} ${inputs.three.bin} ${inputs.three} > $out"]
inputs.three = "three.toml"
"#,
    )
    .unwrap();
    dir.join("top.toml")
}

#[test]
fn recipes_instantiate_like_nix() {
    if !nix_available("recipes_instantiate_like_nix") {
        return;
    }
    let s = TestStore::with_store_dir("/nix/store");
    let scratch = s.scratch();
    let nix_root = scratch.join("nix-chroot");

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/recipes");
    let generated = write_generated_dag(&scratch.join("gen"));
    let roots = [
        examples.join("hello.toml"),
        examples.join("libgreet.toml"),
        generated.clone(),
        generated.with_file_name("three.toml"),
    ];

    let mut writer = NixWriter::default();
    let vars: Vec<String> = roots.iter().map(|r| writer.recipe(r)).collect();
    let expr_file = scratch.join("recipes.nix");
    fs::write(&expr_file, writer.expression(&vars)).unwrap();

    let root_args: Vec<&str> = roots.iter().map(|r| r.to_str().unwrap()).collect();
    let mut args = vec!["instantiate"];
    args.extend(&root_args);
    let ours: Vec<String> = s.ok(&args).lines().map(str::to_owned).collect();
    assert_eq!(ours.len(), roots.len());

    for (i, our_drv) in ours.iter().enumerate() {
        let mut nix = nix_cmd("nix-instantiate", &scratch);
        nix.arg("--store")
            .arg(&nix_root)
            .arg(&expr_file)
            .args(["-A", &format!("root{i}")]);
        let nix_drv = stdout_of(nix).trim().to_owned();
        assert_eq!(our_drv, &nix_drv, "{}: drv path", roots[i].display());

        // The same bytes on both sides.
        let nix_bytes = fs::read(format!("{}{nix_drv}", nix_root.display())).unwrap();
        assert_eq!(fs::read(s.real(our_drv)).unwrap(), nix_bytes);

        // And the same show-derivation JSON, recursively.
        let mut show = nix_cmd("nix", &scratch);
        show.arg("show-derivation")
            .arg("--store")
            .arg(&nix_root)
            .args(["-r", &nix_drv]);
        let nix_json: Value = serde_json::from_str(&stdout_of(show)).unwrap();
        let our_json: Value =
            serde_json::from_str(&s.ok(&["derivation", "show", "-r", our_drv])).unwrap();
        assert_eq!(
            our_json,
            nix_json,
            "{}: show-derivation",
            roots[i].display()
        );
    }

    // The source path is what Nix's path literal gives (a `source` path, same hash).
    let info: Value =
        serde_json::from_str(&s.ok(&["path-info", "--json", "-r", &ours[0]])).unwrap();
    let greeting = info
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"].as_str().unwrap().ends_with("-greeting.txt"))
        .expect("greeting.txt is in the closure of hello.drv");
    let mut nix_info = nix_cmd("nix", &scratch);
    nix_info
        .args(["path-info", "--json", "--store"])
        .arg(&nix_root)
        .arg(greeting["path"].as_str().unwrap());
    let nix_info: Value = serde_json::from_str(&stdout_of(nix_info)).unwrap();
    assert_eq!(nix_info[0]["narHash"], greeting["narHash"]);
    assert_eq!(nix_info[0]["ca"], greeting["ca"]);
}

#[test]
fn show_derivation_of_files_and_vectors() {
    // No Nix needed: `derivation show` on the vector .drv files (outside any store)
    // prints exactly the recorded `nix show-derivation` JSON.
    let s = TestStore::with_store_dir("/nix/store");
    for name in [
        "scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv",
        "nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv",
        "wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv",
        "309ph4nykyrjhny25ha2z14b6x5m7qnl-vec-fod-rec.drv",
    ] {
        let file = fixture(&format!("drv/{name}"));
        let ours: Value =
            serde_json::from_str(&s.ok(&["derivation", "show", file.to_str().unwrap()])).unwrap();
        let want: Value = serde_json::from_str(
            &fs::read_to_string(fixture(&format!("drv/{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(ours, want, "{name}");
    }
    let bad = s.scratch().join("bad.drv");
    fs::write(&bad, "Derive([],").unwrap();
    let err = s.fails(&["derivation", "show", bad.to_str().unwrap()]);
    assert!(err.contains("invalid derivation"), "{err}");
    let err = s.fails(&[
        "derivation",
        "show",
        "/nix/store/scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv",
    ]);
    assert!(err.contains("not valid"), "{err}");
}

#[test]
fn instantiate_errors_are_clean() {
    // No Nix needed: bad recipes fail with a message, not a panic, and write nothing.
    let s = TestStore::with_store_dir("/nix/store");
    let d = s.scratch();
    let err = s.fails(&["instantiate", d.join("missing.toml").to_str().unwrap()]);
    assert!(err.contains("cannot read recipe"), "{err}");
    for (text, want) in [
        ("name = \"x\"\n", "missing field `builder`"),
        (
            "name = \"x\"\nbuilder = \"b\"\ncolour = 1\n",
            "unknown field",
        ),
        (
            "name = \"x\"\nbuilder = \"${inputs.y}\"\n",
            "undeclared input 'y'",
        ),
        (
            "name = \"x\"\nbuilder = \"${oops}\"\n",
            "unknown placeholder",
        ),
        (
            "name = \"x.drv\"\nbuilder = \"b\"\n",
            "may not end in '.drv'",
        ),
        (
            "name = \"x\"\nbuilder = \"b\"\noutput_hash = \"sha256-AAAA\"\n",
            "invalid output hash",
        ),
    ] {
        let f = d.join("r.toml");
        fs::write(&f, text).unwrap();
        let err = s.fails(&["instantiate", f.to_str().unwrap()]);
        assert!(err.contains(want), "{text}: {err}");
    }
    // A recipe that works prints one .drv path, and its JSON form names the outputs.
    let f = d.join("ok.toml");
    fs::write(
        &f,
        "name = \"ok\"\nbuilder = \"/bin/sh\"\noutputs = [\"out\", \"man\"]\n",
    )
    .unwrap();
    let out = s.ok(&["instantiate", "--json", f.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let drv = v[0]["drvPath"].as_str().unwrap();
    assert!(
        drv.starts_with("/nix/store/") && drv.ends_with("-ok.drv"),
        "{out}"
    );
    assert!(v[0]["outputs"]["man"]
        .as_str()
        .unwrap()
        .ends_with("-ok-man"));
    let shown: Value = serde_json::from_str(&s.ok(&["derivation", "show", drv])).unwrap();
    assert_eq!(shown[drv]["env"]["outputs"], "out man");
}
