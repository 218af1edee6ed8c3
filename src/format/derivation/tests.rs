//! Unit tests of the derivation parser, printer, hashes and derived paths. The vectors
//! themselves are checked in full by `tests/derivation_vectors.rs`.
use std::collections::{BTreeMap, BTreeSet};

use super::derived_path::{DerivedPath, DerivedPathError, OutputsSpec};
use super::hash::{derivation_closure, topological_order, DrvGraphError, ModuloHasher};
use super::*;

const VEC_C: &str =
    include_str!("../../../tests/fixtures/nix-2.8/drv/scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv");
const VEC_B: &str =
    include_str!("../../../tests/fixtures/nix-2.8/drv/nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv");
const FOD_FLAT: &str = include_str!(
    "../../../tests/fixtures/nix-2.8/drv/wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv"
);

fn dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

fn parse(text: &str, name: &str) -> Result<Derivation, DerivationError> {
    Derivation::parse(text.as_bytes(), &dir(), name)
}

fn sp(base: &str) -> StorePath {
    base.parse().unwrap()
}

/// The three vector derivations by path, as a lookup.
fn lookup_map() -> BTreeMap<StorePath, Derivation> {
    [
        ("scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv", VEC_C),
        ("nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv", VEC_B),
        (
            "wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv",
            FOD_FLAT,
        ),
    ]
    .into_iter()
    .map(|(p, t)| {
        let p = sp(p);
        let d = Derivation::parse_store_drv(t.as_bytes(), &dir(), &p).unwrap();
        (p, d)
    })
    .collect()
}

fn lookup(
    map: &BTreeMap<StorePath, Derivation>,
) -> impl FnMut(&StorePath) -> Result<Derivation, String> + '_ {
    |p| map.get(p).cloned().ok_or_else(|| format!("no {p}"))
}

#[test]
fn vectors_round_trip_and_paths() {
    let map = lookup_map();
    for (p, d) in &map {
        let text = d.print(&dir());
        let orig = [VEC_B, VEC_C, FOD_FLAT]
            .into_iter()
            .find(|t| *t == text)
            .is_some();
        assert!(orig, "{p} does not print back");
        assert_eq!(&d.drv_path(&dir()).unwrap(), p);
        let mut h = ModuloHasher::new(&dir());
        assert_eq!(h.check_output_paths(d, &mut lookup(&map)).unwrap(), None);
    }
    let c = &map[&sp("scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv")];
    assert!(!c.is_fixed_output());
    assert_eq!(
        c.output_path("out").unwrap().as_str(),
        "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c"
    );
    let f = &map[&sp("wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv")];
    assert!(f.is_fixed_output());
    assert_eq!(f.fixed_output().unwrap().1.method_algo(), "sha256");
}

#[test]
fn fill_output_paths_reproduces_the_evaluator() {
    let map = lookup_map();
    let b = &map[&sp("nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv")];
    let mut fresh = b.clone();
    for (o, out) in fresh.outputs.iter_mut() {
        *out = DerivationOutput::Deferred;
        fresh.env.insert(o.clone(), String::new());
    }
    let mut h = ModuloHasher::new(&dir());
    h.fill_output_paths(&mut fresh, &mut lookup(&map)).unwrap();
    assert_eq!(&fresh, b);
    assert!(h
        .memoised(&sp("wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv"))
        .is_some());
}

#[test]
fn closure_and_order() {
    let map = lookup_map();
    let c = sp("scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv");
    let closure = derivation_closure(&dir(), [&c], &mut lookup(&map)).unwrap();
    assert_eq!(closure.len(), 3);
    let order = topological_order::<()>(&dir(), &closure).unwrap();
    let names: Vec<&str> = order.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["vec-fod-flat.drv", "vec-b.drv", "vec-c.drv"]);
    let missing = derivation_closure(&dir(), [&c], &mut |_: &StorePath| {
        Err::<Derivation, _>("gone")
    });
    assert!(matches!(missing, Err(DrvGraphError::Lookup { .. })));
}

#[test]
fn cycles_are_errors() {
    let mut map = lookup_map();
    let b = sp("nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv");
    let c = sp("scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv");
    // A lookup that is not a real store: b now claims to need c, which needs b.
    let mut bad_b = map[&b].clone();
    bad_b
        .input_drvs
        .insert(c.clone(), BTreeSet::from(["out".to_owned()]));
    map.insert(b.clone(), bad_b);
    let mut h = ModuloHasher::new(&dir());
    let top = map[&c].clone();
    let err = h.hash(&top, true, &mut lookup(&map)).unwrap_err();
    assert!(matches!(err, DrvGraphError::Cycle(_)), "{err}");
    let closure = derivation_closure(&dir(), [&c], &mut lookup(&map)).unwrap();
    assert!(matches!(
        topological_order::<()>(&dir(), &closure),
        Err(DrvGraphError::Cycle(_))
    ));
}

#[test]
fn missing_input_output_is_an_error() {
    let map = lookup_map();
    let mut c = map[&sp("scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv")].clone();
    c.input_drvs
        .values_mut()
        .for_each(|o| _ = o.insert("lib".to_owned()));
    let mut h = ModuloHasher::new(&dir());
    let err = h.hash(&c, true, &mut lookup(&map)).unwrap_err();
    assert!(matches!(err, DrvGraphError::NoSuchOutput { .. }), "{err}");
}

#[test]
fn escapes_round_trip() {
    let mut d = parse(VEC_C, "vec-c").unwrap();
    d.args = vec![
        "quote \" backslash \\ nl \n cr \r tab \t bell \u{7} é ✓".to_owned(),
        String::new(),
    ];
    d.env.insert("weird".to_owned(), "\\n literally".to_owned());
    let text = d.print(&dir());
    assert!(text.contains(r#""quote \" backslash \\ nl \n cr \r tab \t bell "#));
    assert!(text.contains(r#"("weird","\\n literally")"#));
    assert_eq!(parse(&text, "vec-c").unwrap(), d);
}

#[test]
fn refuses_non_canonical_and_hostile_input() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{VEC_C}\n"), "trailing newline"),
        (VEC_C.replacen("Derive(", "Derive (", 1), "space"),
        (VEC_C.replacen("[(\"out\"", "[ (\"out\"", 1), "space in list"),
        (VEC_C.replacen("\\\"b=", "\\xb=", 1), "unknown escape"),
        (VEC_C.replacen("\\n", "\n", 1), "raw newline"),
        (VEC_C.replacen("(\"builder\",\"/bin/sh\"),", "", 1).replacen("])", ",(\"builder\",\"/bin/sh\")])", 1), "unsorted env"),
        (VEC_C.replacen("(\"name\",\"vec-c\"),", "(\"name\",\"vec-c\"),(\"name\",\"vec-c\"),", 1), "duplicate env"),
        (VEC_C.replacen("/nix/store/si47", "/nix/stor/si47", 1), "outside the store"),
        (VEC_C.replacen("si47kwc33psiwfxkyw4c9qwx7r6n5zca", "si47kwc33psiwfxkyw4c9qwx7r6n5zc", 1), "short hash"),
        (VEC_C.replacen("vec-b.drv\"", "vec-b\"", 1), "input not a drv"),
        (VEC_C.replacen("[\"out\"]", "[\"out\",\"out\"]", 1), "duplicate input output"),
        (VEC_C.replacen("(\"out\",\"/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c\",\"\",\"\")", "", 1), "no outputs"),
        (VEC_C.replacen("(\"out\",\"/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c\",\"\",\"\")", "(\"out\",\"\",\"r:sha256\",\"\")", 1), "floating CA"),
        (VEC_C.replacen("(\"out\",\"/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c\",\"\",\"\")", "(\"out\",\"\",\"sha256\",\"impure\")", 1), "impure"),
        (VEC_C.replacen("c\",\"\",\"\")", "c\",\"\",\"x\")", 1), "hash without algo"),
        (VEC_C.replacen("(\"out\",", "(\"o t\",", 1), "bad output name"),
        (FOD_FLAT.replacen("9eb7c7ab", "9EB7C7AB", 1), "uppercase hex"),
        (FOD_FLAT.replacen("9eb7c7ab", "9eb7c7a", 1), "short hex"),
        (FOD_FLAT.replacen("\"sha256\",\"9eb7", "\"sha257\",\"9eb7", 1), "unknown algo"),
        (FOD_FLAT.replacen("9eb7c7ab", "0eb7c7ab", 1), "fixed path mismatch"),
        (FOD_FLAT.replacen("[(\"out\"", "[(\"dev\",\"/nix/store/6fq6bx8wzpb332yg4i3080x2dc0gib41-vec-fod-flat\",\"\",\"\"),(\"out\"", 1), "fixed with two outputs"),
        ("".to_owned(), "empty"),
        ("Derive(".to_owned(), "truncated"),
        ("Derive([],[],[],\"\",\"\",[],[])".to_owned(), "no outputs at all"),
    ];
    for (text, what) in &cases {
        assert!(
            text != VEC_C && text != FOD_FLAT,
            "{what}: the mutation did not apply"
        );
        let name = if text.contains("fod-flat") {
            "vec-fod-flat"
        } else {
            "vec-c"
        };
        assert!(parse(text, name).is_err(), "{what} was accepted");
    }
    // Every prefix of a valid drv is refused.
    for i in 0..VEC_B.len() {
        if VEC_B.is_char_boundary(i) {
            assert!(parse(&VEC_B[..i], "vec-b").is_err(), "prefix {i}");
        }
    }
    assert!(matches!(
        Derivation::parse(b"Derive(\xff", &dir(), "x"),
        Err(DerivationError::NotUtf8(7))
    ));
    let big = vec![b'['; MAX_DRV_SIZE + 1];
    assert!(matches!(
        Derivation::parse(&big, &dir(), "x"),
        Err(DerivationError::TooLarge(_))
    ));
    assert!(parse(VEC_C, "bad name").is_err());
    assert!(parse(VEC_C, "").is_err());
}

#[test]
fn deferred_outputs_print_empty() {
    let mut d = parse(VEC_C, "vec-c").unwrap();
    d.outputs
        .insert("out".to_owned(), DerivationOutput::Deferred);
    let text = d.print(&dir());
    assert!(text.starts_with("Derive([(\"out\",\"\",\"\",\"\")]"));
    assert_eq!(parse(&text, "vec-c").unwrap(), d);
}

#[test]
fn derived_paths() {
    let d = dir();
    let drv = "/nix/store/nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv";
    let p = DerivedPath::parse(&format!("{drv}^out,dev"), &d).unwrap();
    let names = BTreeSet::from(["dev".to_owned(), "out".to_owned()]);
    assert_eq!(
        p,
        DerivedPath::Built {
            drv: sp("nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv"),
            outputs: OutputsSpec::Names(names)
        }
    );
    assert_eq!(p.display(&d), format!("{drv}^dev,out"));
    let all = DerivedPath::parse(&format!("{drv}!*"), &d).unwrap();
    assert_eq!(all.display(&d), format!("{drv}^*"));
    assert!(matches!(
        DerivedPath::parse(drv, &d).unwrap(),
        DerivedPath::Opaque(_)
    ));
    let b = lookup_map()[&sp("nrn1q6z289llhxhxahxg8r6cvm5c1039-vec-b.drv")].clone();
    let spec = OutputsSpec::Names(BTreeSet::from(["out".to_owned(), "lib".to_owned()]));
    assert_eq!(spec.select(&b), (vec!["out"], vec!["lib"]));
    for bad in [
        format!("{drv}^"),
        format!("{drv}^out,"),
        format!("{drv}^o t"),
        "/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c^out".to_owned(),
        "/tmp/x.drv^out".to_owned(),
    ] {
        assert!(DerivedPath::parse(&bad, &d).is_err(), "{bad}");
    }
    assert!(matches!(
        DerivedPath::parse("/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c^out", &d),
        Err(DerivedPathError::NotDrv(_))
    ));
}
