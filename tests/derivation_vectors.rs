//! The Nix 2.8 derivation vectors (`tests/fixtures/nix-2.8/drv`, `vectors.json`
//! `derivations`) against `format::derivation`: byte-exact parse and print, the `.drv`
//! store paths and their fingerprints, `hashDerivationModulo` (masked and not) and its
//! preimages, output paths, and the `nix show-derivation` JSON. Then property tests: the
//! parser never panics on random or mutated input, and generated derivations round-trip.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::Value;
use store::format::derivation::hash::{ModuloHasher, ModuloPreimage};
use store::format::derivation::json::show_derivations;
use store::format::derivation::{Derivation, DerivationOutput, FixedOutputHash, OutputHashMode};
use store::format::hash::{Hash, HashAlgo};
use store::format::store_path::{StoreDir, StorePath, StorePathName};

fn dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixture(rel)).unwrap()
}

/// Every vector derivation, by store path.
fn all_drvs() -> BTreeMap<StorePath, Derivation> {
    let v = common::vectors();
    v["derivations"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let p = dir()
                .parse_path(case["drv_path"].as_str().unwrap())
                .unwrap();
            let bytes = read(case["drv_file"].as_str().unwrap());
            let d = Derivation::parse_store_drv(&bytes, &dir(), &p).unwrap();
            (p, d)
        })
        .collect()
}

fn lookup(
    map: &BTreeMap<StorePath, Derivation>,
) -> impl FnMut(&StorePath) -> Result<Derivation, String> + '_ {
    |p| {
        map.get(p)
            .cloned()
            .ok_or_else(|| format!("{p} not in the vectors"))
    }
}

#[test]
fn every_vector_matches() {
    let v = common::vectors();
    let map = all_drvs();
    let cases = v["derivations"]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let attr = case["attr"].as_str().unwrap();
        let drv_path = dir()
            .parse_path(case["drv_path"].as_str().unwrap())
            .unwrap();
        let bytes = read(case["drv_file"].as_str().unwrap());
        let drv = &map[&drv_path];

        // Parse then print, byte for byte.
        assert_eq!(drv.print(&dir()).as_bytes(), &bytes[..], "{attr}: print");

        // The .drv path, its references and its fingerprint.
        assert_eq!(drv.drv_path(&dir()).unwrap(), drv_path, "{attr}: drv path");
        let refs: Vec<String> = drv
            .references()
            .iter()
            .map(|r| dir().display_path(r))
            .collect();
        let want_refs: Vec<&str> = case["drv_references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(refs, want_refs, "{attr}: references");
        let mut kind = "text".to_owned();
        for r in &refs {
            kind = format!("{kind}:{r}");
        }
        let fp = format!(
            "{kind}:sha256:{}:/nix/store:{}.drv",
            Hash::of(HashAlgo::Sha256, &bytes).to_hex(),
            drv.name
        );
        assert_eq!(fp, case["drv_fingerprint_string"].as_str().unwrap());

        // hashDerivationModulo, unmasked (what dependants use), and its preimage.
        let mut hasher = ModuloHasher::new(&dir());
        let hashes = hasher.hash(drv, false, &mut lookup(&map)).unwrap();
        let want = case["hash_derivation_modulo"].as_object().unwrap();
        for (o, h) in &hashes {
            assert_eq!(h.to_hex(), want[o].as_str().unwrap(), "{attr}: modulo {o}");
        }
        let fixed = case["fixed_output"].as_bool().unwrap();
        assert_eq!(drv.is_fixed_output(), fixed);
        if fixed {
            let pre = hasher.preimage(drv, false, &mut lookup(&map)).unwrap();
            assert_eq!(
                pre,
                ModuloPreimage::Fixed(want["preimage"].as_str().unwrap().to_owned())
            );
        } else {
            // The masked text whose hash names the outputs.
            let pre = hasher.preimage(drv, true, &mut lookup(&map)).unwrap();
            assert_eq!(
                pre.as_str(),
                case["masked_drv_for_output_paths"].as_str().unwrap(),
                "{attr}: masked"
            );
            let masked = hasher.hash(drv, true, &mut lookup(&map)).unwrap();
            for h in masked.values() {
                assert_eq!(
                    h.to_hex(),
                    case["masked_drv_sha256_base16"].as_str().unwrap()
                );
            }
        }

        // Output paths, computed and recorded, and their fingerprints.
        let paths = hasher.output_paths(drv, &mut lookup(&map)).unwrap();
        let want_paths = case["outputs"].as_object().unwrap();
        assert_eq!(paths.len(), want_paths.len());
        for (o, p) in &paths {
            assert_eq!(dir().display_path(p), want_paths[o].as_str().unwrap());
            assert_eq!(drv.output_path(o), Some(p));
        }
        assert_eq!(
            hasher.check_output_paths(drv, &mut lookup(&map)).unwrap(),
            None
        );
        for (o, fp) in case["output_fingerprint_strings"].as_object().unwrap() {
            let fp = fp.as_str().unwrap();
            let name = fp.rsplit(':').next().unwrap();
            assert_eq!(paths[o].name(), name, "{attr}: output name {o}");
        }

        // nix show-derivation.
        let json = serde_json::to_value(show_derivations(&dir(), [(&drv_path, drv)])).unwrap();
        let want: Value =
            serde_json::from_slice(&read(case["show_derivation"].as_str().unwrap())).unwrap();
        assert_eq!(json, want, "{attr}: show-derivation");
    }
}

#[test]
fn json_field_order_is_nix_order() {
    let map = all_drvs();
    let (p, d) = map.iter().next().unwrap();
    let text = serde_json::to_string(&show_derivations(&dir(), [(p, d)])).unwrap();
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    let keys = [
        "outputs",
        "inputSrcs",
        "inputDrvs",
        "system",
        "builder",
        "args",
        "env",
    ];
    assert!(keys.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{text}");
}

fn vector_texts() -> Vec<(String, Vec<u8>)> {
    all_drvs()
        .into_values()
        .map(|d| (d.name.clone(), d.print(&dir()).into_bytes()))
        .collect()
}

/// Store path names and output names.
fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+._?=-]{1,20}"
}

fn arb_path(suffix: &'static str) -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), arb_name()).prop_map(move |(h, n)| {
        let name = StorePathName::new(&format!("{n}{suffix}")).unwrap();
        StorePath::from_parts(store::format::store_path::StorePathHash::new(h), &name)
    })
}

/// Any text, biased towards the characters that need escaping.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[\"\\\\\n\r\t a-z$(){}\\[\\],]{0,30}", any::<String>(),]
}

fn arb_drv() -> impl Strategy<Value = Derivation> {
    let fixed = (any::<bool>(), any::<[u8; 32]>(), any::<bool>());
    (
        arb_name(),
        prop::collection::btree_set(arb_name(), 1..4),
        fixed,
        prop::collection::btree_map(
            arb_path(".drv"),
            prop::collection::btree_set(arb_name(), 0..3),
            0..3,
        ),
        prop::collection::btree_set(arb_path(""), 0..3),
        (arb_text(), arb_text()),
        prop::collection::vec(arb_text(), 0..4),
        prop::collection::btree_map(arb_text(), arb_text(), 0..5),
    )
        .prop_map(
            |(
                name,
                outs,
                (is_fixed, digest, rec),
                input_drvs,
                input_srcs,
                (system, builder),
                args,
                env,
            )| {
                let dir = dir();
                let outputs = if is_fixed {
                    let hash = FixedOutputHash {
                        mode: if rec {
                            OutputHashMode::Recursive
                        } else {
                            OutputHashMode::Flat
                        },
                        hash: Hash::sha256(digest),
                    };
                    let path = hash.output_path(&dir, &StorePathName::new(&name).unwrap());
                    BTreeMap::from([("out".to_owned(), DerivationOutput::Fixed { path, hash })])
                } else {
                    outs.into_iter()
                        .map(|o| {
                            let p = dir
                                .make_output_path(&o, &Hash::sha256(digest), &name)
                                .map(DerivationOutput::InputAddressed)
                                .unwrap_or(DerivationOutput::Deferred);
                            (o, p)
                        })
                        .collect()
                };
                Derivation {
                    name,
                    outputs,
                    input_drvs,
                    input_srcs,
                    system,
                    builder,
                    args,
                    env,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Derivation::parse(&bytes, &dir(), "x");
        let mut with_prefix = b"Derive([(\"out\",".to_vec();
        with_prefix.extend_from_slice(&bytes);
        let _ = Derivation::parse(&with_prefix, &dir(), "x");
    }

    #[test]
    fn mutated_vectors_never_panic_and_reprint_exactly(
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let texts = vector_texts();
        let (name, mut bytes) = texts[which % texts.len()].clone();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        if let Ok(d) = Derivation::parse(&bytes, &dir(), &name) {
            // Whatever is accepted is canonical.
            prop_assert_eq!(d.print(&dir()).into_bytes(), bytes);
        }
    }

    #[test]
    fn generated_derivations_round_trip(d in arb_drv()) {
        let text = d.print(&dir());
        let back = Derivation::parse(text.as_bytes(), &dir(), &d.name);
        prop_assert_eq!(back, Ok(d.clone()));
        let refs: BTreeSet<StorePath> = d.references();
        prop_assert_eq!(refs.len(), d.input_drvs.len() + d.input_srcs.len());
        prop_assert!(d.drv_path(&dir()).is_ok() || d.name.len() + 4 > 211);
    }
}
