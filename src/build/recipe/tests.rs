//! Unit tests of recipes: placeholders, coercion, checks, and instantiation into a
//! throwaway store (the fixed-output vectors give the exact `.drv` paths Nix gave).
use std::fs;

use super::*;
use crate::format::store_path::StoreDir;
use crate::store::Layout;

fn store(root: &Path) -> LocalStore {
    let dir = StoreDir::new("/nix/store").unwrap();
    LocalStore::open(Layout::new(dir, Some(root))).unwrap()
}

fn expand_with(text: &str) -> Result<String, RecipeError> {
    expand(text, Path::new("r.toml"), "args[0]", |r| {
        Ok(match r {
            Ref::Input { name, output } => format!("<{name}:{output}>"),
            Ref::Source(name) => format!("<src:{name}>"),
        })
    })
}

#[test]
fn placeholders() {
    assert_eq!(
        expand_with("a ${inputs.x} ${inputs.y-z.dev} ${sources.s_1} $out $${literal} $").unwrap(),
        "a <x:out> <y-z:dev> <src:s_1> $out ${literal} $"
    );
    for bad in [
        "${inputs}",
        "${inputs.}",
        "${x}",
        "${sources.a.b}",
        "${inputs.a",
        "${inputs.a.o t}",
    ] {
        assert!(
            matches!(expand_with(bad), Err(RecipeError::Placeholder { .. })),
            "{bad}"
        );
    }
}

#[test]
fn coercion_like_nix() {
    let v = EnvValue::List(vec![
        EnvValue::String("a".into()),
        EnvValue::Integer(1),
        EnvValue::Bool(true),
    ]);
    assert_eq!(v.coerce(), "a 1 1");
    assert_eq!(EnvValue::Bool(false).coerce(), "");
    assert_eq!(EnvValue::Integer(-3).coerce(), "-3");
}

fn recipe(text: &str) -> Recipe {
    Recipe::parse(text, Path::new("r.toml")).unwrap()
}

#[test]
fn checks() {
    let ok = "name = \"x\"\nbuilder = \"/bin/sh\"\n";
    assert!(check_recipe(&recipe(ok), Path::new("r")).is_ok());
    let bad = [
        "name = \"x.drv\"\nbuilder = \"b\"",
        "name = \"a b\"\nbuilder = \"b\"",
        "name = \"x\"\nbuilder = \"b\"\noutputs = []",
        "name = \"x\"\nbuilder = \"b\"\noutputs = [\"out\", \"out\"]",
        "name = \"x\"\nbuilder = \"b\"\noutputs = [\"drv\"]",
        "name = \"x\"\nbuilder = \"b\"\nenv.out = \"1\"",
        "name = \"x\"\nbuilder = \"b\"\nenv.name = \"1\"",
        "name = \"x\"\nbuilder = \"b\"\nenv.__structuredAttrs = true",
        "name = \"x\"\nbuilder = \"b\"\noutputs = [\"out\", \"dev\"]\noutput_hash = \"sha256-nrfHq4Ju/HPrZpJX6vls3x0XmScBEuJAytpPfgZKT6w=\"",
        "name = \"x\"\nbuilder = \"b\"\noutput_hash_mode = \"flat\"",
        "name = \"x\"\nbuilder = \"b\"\nsystem = \"a\\\"b\"",
    ];
    for text in bad {
        assert!(
            check_recipe(&recipe(text), Path::new("r")).is_err(),
            "{text}"
        );
    }
    assert!(Recipe::parse("name = \"x\"\nbuilder = \"b\"\nunknown = 1", Path::new("r")).is_err());
    assert!(Recipe::parse("builder = \"b\"", Path::new("r")).is_err());
}

const FOD_FLAT: &str = r#"
name = "vec-fod-flat"
system = "x86_64-linux"
builder = "/bin/sh"
args = ["-c", "printf 'fixed output content\\n' > $out"]
output_hash_mode = "flat"
output_hash_algo = "sha256"
output_hash = "sha256-nrfHq4Ju/HPrZpJX6vls3x0XmScBEuJAytpPfgZKT6w="
"#;

const FOD_REC: &str = r#"
name = "vec-fod-rec"
system = "x86_64-linux"
builder = "/bin/sh"
args = ["-c", "/bin/mkdir $out; printf 'inside a recursive FOD\\n' > $out/file; /bin/ln -s file $out/link"]
output_hash_mode = "recursive"
output_hash_algo = "sha256"
output_hash = "1dv6vbygy3wv958vsjvzhgvi33sc01aqhmv1ywwqhp1nbbz8s6g9"
"#;

#[test]
fn fixed_output_recipes_give_nix_drv_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("root"));
    let mut inst = Instantiator::new(&s);
    for (text, want) in [
        (
            FOD_FLAT,
            "wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv",
        ),
        (FOD_REC, "309ph4nykyrjhny25ha2z14b6x5m7qnl-vec-fod-rec.drv"),
    ] {
        let file = tmp.path().join("r.toml");
        fs::write(&file, text).unwrap();
        let got = inst.instantiate_recipe(&recipe(text), &file).unwrap();
        assert_eq!(got.drv_path.as_str(), want);
        let info = s.query_valid(&got.drv_path).unwrap();
        assert!(matches!(
            info.ca,
            Some(crate::format::ca::ContentAddress::Text(_))
        ));
        let on_disk = fs::read(s.layout().real_path(&got.drv_path)).unwrap();
        assert_eq!(on_disk, got.drv.print(s.store_dir()).into_bytes());
    }
}

#[test]
fn dag_with_sources_and_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("root"));
    let d = tmp.path().join("recipes");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("hello.txt"), "hello\n").unwrap();
    fs::write(d.join("sub/fetch.toml"), FOD_FLAT).unwrap();
    fs::write(
        d.join("lib.toml"),
        r#"
name = "lib"
builder = "/bin/sh"
args = ["-c", "cat ${sources.greeting} ${inputs.fetched} > $out; echo > $dev"]
outputs = ["out", "dev"]
inputs.fetched = "sub/fetch.toml"
sources.greeting = "hello.txt"
"#,
    )
    .unwrap();
    fs::write(
        d.join("app.toml"),
        r#"
name = "app"
builder = "/bin/sh"
args = ["-c", "cat ${inputs.lib}/x ${inputs.lib.dev} > $out"]
env.LIBS = ["${inputs.lib}", 2]
inputs.lib = "lib.toml"
inputs.again = "./sub/../lib.toml"
"#,
    )
    .unwrap();
    let mut inst = Instantiator::new(&s);
    // `again` is declared but never used.
    assert!(matches!(
        inst.instantiate(&d.join("app.toml")),
        Err(RecipeError::Unused { .. })
    ));
    let app = fs::read_to_string(d.join("app.toml")).unwrap();
    fs::write(
        d.join("app.toml"),
        app.replace("inputs.again = \"./sub/../lib.toml\"\n", ""),
    )
    .unwrap();
    let got = inst.instantiate(&d.join("app.toml")).unwrap();
    let lib = inst.instantiate(&d.join("lib.toml")).unwrap();
    let want_inputs = BTreeSet::from(["dev".to_owned(), "out".to_owned()]);
    assert_eq!(got.drv.input_drvs.get(&lib.drv_path), Some(&want_inputs));
    assert_eq!(lib.drv.input_srcs.len(), 1);
    assert_eq!(lib.drv.input_drvs.len(), 1);
    assert_eq!(lib.drv.env["outputs"], "out dev");
    let lib_out = s.print_path(lib.drv.output_path("out").unwrap());
    assert_eq!(got.drv.env["LIBS"], format!("{lib_out} 2"));
    assert!(got.drv.args[1].starts_with(&format!("cat {lib_out}/x /nix/store/")));
    // Everything is valid with the right references, and the outputs check out.
    let info = s.query_valid(&got.drv_path).unwrap();
    assert_eq!(info.references, BTreeSet::from([lib.drv_path.clone()]));
    let mut h = ModuloHasher::new(s.store_dir());
    let drvs = inst.drvs.clone();
    let mut lookup = |p: &StorePath| drvs.get(p).cloned().ok_or(());
    assert_eq!(h.check_output_paths(&got.drv, &mut lookup).unwrap(), None);
}

#[test]
fn cycles_and_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("root"));
    let d = tmp.path();
    fs::write(
        d.join("a.toml"),
        "name = \"a\"\nbuilder = \"${inputs.b}\"\ninputs.b = \"b.toml\"\n",
    )
    .unwrap();
    fs::write(
        d.join("b.toml"),
        "name = \"b\"\nbuilder = \"${inputs.a}\"\ninputs.a = \"a.toml\"\n",
    )
    .unwrap();
    let mut inst = Instantiator::new(&s);
    assert!(matches!(
        inst.instantiate(&d.join("a.toml")),
        Err(RecipeError::Cycle { .. })
    ));
    assert!(matches!(
        inst.instantiate(&d.join("none.toml")),
        Err(RecipeError::Read { .. })
    ));
    fs::write(
        d.join("c.toml"),
        "name = \"c\"\nbuilder = \"${inputs.x}\"\n",
    )
    .unwrap();
    assert!(matches!(
        inst.instantiate(&d.join("c.toml")),
        Err(RecipeError::Undeclared { .. })
    ));
    fs::write(
        d.join("e.toml"),
        "name = \"e\"\nbuilder = \"${sources.s}\"\nsources.s = \"nope\"\n",
    )
    .unwrap();
    assert!(matches!(
        inst.instantiate(&d.join("e.toml")),
        Err(RecipeError::Source { .. })
    ));
    fs::write(
        d.join("f.toml"),
        "name = \"f\"\nbuilder = \"${inputs.c.dev}\"\ninputs.c = \"g.toml\"\n",
    )
    .unwrap();
    fs::write(d.join("g.toml"), "name = \"g\"\nbuilder = \"/bin/sh\"\n").unwrap();
    assert!(matches!(
        inst.instantiate(&d.join("f.toml")),
        Err(RecipeError::NoSuchOutput { .. })
    ));
}
