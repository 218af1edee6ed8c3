//! Hash encodings, store paths and content addresses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use store::format::ca::ContentAddress;
use store::format::hash::{compress_hash, Encoding, Hash, HashAlgo};
use store::format::nixbase32;
use store::format::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

use super::{cases, hex, nix_dir, read_bytes, s, vectors};

/// Every textual form of `h` parses back to `h`, typed and untyped.
fn assert_parses_back(h: &Hash, forms: [&str; 4]) {
    let algo = h.algo();
    let [base16, base32, sri, base64] = forms;
    for body in [base16, base32, base64] {
        assert_eq!(Hash::parse_any(body, Some(algo)).as_ref(), Ok(h), "{body}");
        let typed = format!("{algo}:{body}");
        assert_eq!(Hash::parse_prefixed(&typed).as_ref(), Ok(h), "{typed}");
        assert!(Hash::parse_prefixed(body).is_err(), "untyped {body}");
    }
    assert_eq!(Hash::parse_prefixed(sri).as_ref(), Ok(h), "{sri}");
    assert_eq!(Hash::parse_any(sri, Some(algo)).as_ref(), Ok(h), "{sri}");
    assert_eq!(Hash::parse_any(sri, None).as_ref(), Ok(h), "{sri}");
    let other = HashAlgo::ALL.into_iter().find(|a| *a != algo).unwrap();
    assert!(
        Hash::parse_any(sri, Some(other)).is_err(),
        "{sri} as {other}"
    );
}

#[test]
fn flat_hashes() {
    let mut checked = 0;
    for case in cases("flat_hashes") {
        let input = data_encoding::BASE64
            .decode(s(case, "input_base64").as_bytes())
            .unwrap();
        for algo in HashAlgo::ALL {
            let want = &case[algo.name()];
            let h = Hash::of(algo, &input);
            let forms = ["base16", "base32", "sri", "base64"].map(|k| s(want, k));
            assert_eq!(h.encode(Encoding::Base16), forms[0], "{algo} base16");
            assert_eq!(h.encode(Encoding::Nix32), forms[1], "{algo} nix32");
            assert_eq!(h.encode(Encoding::Sri), forms[2], "{algo} sri");
            assert_eq!(h.encode(Encoding::Base64), forms[3], "{algo} base64");
            assert_eq!(h.to_string(), format!("{algo}:{}", forms[1]));
            assert_parses_back(&h, forms);
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
}

#[test]
fn digest_encodings() {
    for case in cases("digest_encodings") {
        let algo: HashAlgo = s(case, "type").parse().unwrap();
        let bytes = hex(s(case, "base16"));
        let h = Hash::new(algo, &bytes).unwrap();
        assert_eq!(h.to_hex(), s(case, "base16"));
        assert_eq!(h.to_nix32(), s(case, "base32"));
        assert_eq!(h.to_sri(), s(case, "sri"));
        let decoded = nixbase32::decode(s(case, "base32").as_bytes(), algo.size()).unwrap();
        assert_eq!(decoded, bytes);
        let b64 = h.encode(Encoding::Base64);
        assert_parses_back(
            &h,
            [s(case, "base16"), s(case, "base32"), s(case, "sri"), &b64],
        );
    }
}

#[test]
fn compress_hash_vectors() {
    for case in cases("compress_hash") {
        let folded = compress_hash::<20>(&hex(s(case, "sha256_base16")));
        assert_eq!(folded.to_vec(), hex(s(case, "compressed20_base16")));
        assert_eq!(nixbase32::encode(&folded), s(case, "compressed20_base32"));
    }
}

/// The store path whose hash part is the fold of sha256(`fingerprint`).
fn path_of_fingerprint(fingerprint: &str, name: &str) -> String {
    let digest = Hash::of(HashAlgo::Sha256, fingerprint.as_bytes());
    format!(
        "{}-{name}",
        nixbase32::encode(&compress_hash::<20>(digest.digest()))
    )
}

fn name(s: &str) -> StorePathName {
    StorePathName::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn trees() {
    let dir = nix_dir();
    for case in cases("trees") {
        let tree = s(case, "name");
        let sums = &case["nix_hash_path_sha256"];
        let h = Hash::parse_any(s(sums, "base16"), Some(HashAlgo::Sha256)).unwrap();
        assert_eq!(h.to_nix32(), s(sums, "base32"), "{tree}");
        assert_eq!(h.to_sri(), s(sums, "sri"), "{tree}");
        // The NAR file is what was hashed.
        let nar = read_bytes(s(case, "nar"));
        assert_eq!(Hash::of(HashAlgo::Sha256, &nar), h, "{tree}");
        assert_eq!(Some(nar.len() as u64), case["nar_size"].as_u64(), "{tree}");
        let sha1 = Hash::of(HashAlgo::Sha1, &nar);
        assert_eq!(
            sha1.to_nix32(),
            s(case, "nix_hash_path_sha1_base32"),
            "{tree}"
        );

        let add = &case["nix_store_add"];
        let fp = format!("source:sha256:{}:/nix/store:{tree}", h.to_hex());
        assert_eq!(fp, s(add, "fingerprint_string"));
        let fp_hash = Hash::of(HashAlgo::Sha256, fp.as_bytes()).to_hex();
        assert_eq!(fp_hash, s(add, "fingerprint_sha256_base16"));
        let path = dir.make_source_path(&h, [], false, &name(tree));
        assert_eq!(dir.display_path(&path), s(add, "store_path"));
        assert_eq!(path.as_str(), path_of_fingerprint(&fp, tree));
        let info = &add["path_info"];
        assert_eq!(s(info, "narHash"), h.to_sri());
        assert_eq!(s(info, "ca"), ContentAddress::source(h).to_string());
        assert_eq!(info["references"], Value::Array(vec![]));

        let fixed = &case["nix_store_add_fixed"];
        let mut kinds = vec![("recursive_sha1", true, sha1)];
        for (key, algo) in [
            ("flat_sha256", HashAlgo::Sha256),
            ("flat_sha1", HashAlgo::Sha1),
            ("flat_md5", HashAlgo::Md5),
        ] {
            if let Some(v) = fixed.get(key) {
                let file_hash = Hash::new(algo, &hex(s(v, "file_hash_base16"))).unwrap();
                kinds.push((key, false, file_hash));
            }
        }
        for (key, recursive, fh) in kinds {
            let want = &fixed[key];
            let r = if recursive { "r:" } else { "" };
            let inner = format!("fixed:out:{r}{}:{}:", fh.algo(), fh.to_hex());
            assert_eq!(inner, s(want, "inner_string"), "{tree} {key}");
            let inner_hex = Hash::of(HashAlgo::Sha256, inner.as_bytes()).to_hex();
            let fp = format!("output:out:sha256:{inner_hex}:/nix/store:{tree}");
            assert_eq!(fp, s(want, "fingerprint_string"), "{tree} {key}");
            let p = dir.make_fixed_output_path(recursive, &fh, [], false, &name(tree));
            let p = p.unwrap();
            assert_eq!(dir.display_path(&p), s(want, "store_path"), "{tree} {key}");
            // The CA form gives the same path.
            let ca = ContentAddress::Fixed {
                recursive,
                hash: fh,
            };
            let again = ca.store_path(&dir, &name(tree), [], false).unwrap();
            assert_eq!(again, p);
            assert_eq!(ca.to_string().parse::<ContentAddress>(), Ok(ca));
        }
        if let Some(flat) = case.get("nix_hash_file_sha256") {
            let want = Hash::new(
                HashAlgo::Sha256,
                &hex(s(&fixed["flat_sha256"], "file_hash_base16")),
            );
            assert_eq!(flat.as_str(), Some(want.unwrap().to_nix32().as_str()));
        }
    }
}

#[test]
fn alt_store_dir() {
    let trees: BTreeMap<&str, &Value> = cases("trees").iter().map(|c| (s(c, "name"), c)).collect();
    for case in cases("alt_store_dir") {
        let tree = s(case, "tree");
        let dir = StoreDir::new(s(case, "store_dir")).unwrap();
        let base16 = s(&trees[tree]["nix_hash_path_sha256"], "base16");
        let h = Hash::parse_any(base16, Some(HashAlgo::Sha256)).unwrap();
        let fp = format!("source:sha256:{base16}:{dir}:{tree}");
        assert_eq!(fp, s(case, "fingerprint_string"));
        let path = dir.make_source_path(&h, [], false, &name(tree));
        assert_eq!(dir.display_path(&path), s(case, "store_path"));
        assert_eq!(dir.parse_path(s(case, "store_path")), Ok(path));
        assert!(nix_dir().parse_path(s(case, "store_path")).is_err());
    }
}

#[test]
fn store_path_names() {
    for case in cases("store_path_names") {
        let n = s(case, "name");
        let result = s(case, "result");
        let parsed = StorePathName::new(n);
        if case["rc"] == 0 {
            assert_eq!(parsed.as_ref().map(StorePathName::as_str), Ok(n));
            let path = nix_dir().parse_path(result).unwrap();
            assert_eq!(path.name(), n);
        } else {
            let err = parsed.unwrap_err();
            if n.len() > 211 {
                assert!(matches!(err, StorePathError::NameTooLong(_)), "{err:?}");
            } else {
                assert!(matches!(err, StorePathError::IllegalChar { .. }), "{err:?}");
            }
            // The base name in Nix's message is refused as a store path too.
            let base = result.split('\'').nth(1).unwrap();
            assert!(base.parse::<StorePath>().is_err(), "{base}");
        }
    }
}

fn full_paths(v: &Value) -> Vec<StorePath> {
    let dir = nix_dir();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| dir.parse_path(p.as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn text_paths() {
    let dir = nix_dir();
    for case in cases("text_paths") {
        let path = dir.parse_path(s(case, "store_path")).unwrap();
        let h = Hash::of(HashAlgo::Sha256, s(case, "contents").as_bytes());
        let refs = full_paths(&case["references"]);
        let ref_part: String = refs
            .iter()
            .map(|r| format!(":{}", dir.display_path(r)))
            .collect();
        let fp = format!(
            "text{ref_part}:sha256:{}:/nix/store:{}",
            h.to_hex(),
            path.name()
        );
        assert_eq!(fp, s(case, "fingerprint_string"));
        assert_eq!(path_of_fingerprint(&fp, path.name()), path.as_str());
        let made = dir.make_text_path(&h, &refs, &name(path.name())).unwrap();
        assert_eq!(made, path);
        let ca = ContentAddress::Text(h);
        assert_eq!(ca.to_string(), s(case, "ca"));
        assert_eq!(
            ca.store_path(&dir, &name(path.name()), &refs, false),
            Ok(path)
        );
        let sha1 = Hash::of(HashAlgo::Sha1, b"x");
        assert!(dir.make_text_path(&sha1, &refs, &name("x")).is_err());
    }
}

#[test]
fn source_paths() {
    let dir = nix_dir();
    for case in cases("source_paths") {
        let path = dir.parse_path(s(case, "store_path")).unwrap();
        let h = Hash::parse_prefixed(s(case, "narHash")).unwrap();
        let fp = format!("source:sha256:{}:/nix/store:{}", h.to_hex(), path.name());
        assert_eq!(fp, s(case, "fingerprint_string"));
        assert_eq!(
            dir.make_source_path(&h, [], false, &name(path.name())),
            path
        );
        assert_eq!(ContentAddress::source(h).to_string(), s(case, "ca"));
    }
}

/// Every `ca` string in the vectors parses, prints back identically, and (where the
/// references are known) implies its own store path.
#[test]
fn ca_strings() {
    let v = vectors();
    let dir = nix_dir();
    let mut all: BTreeSet<String> = BTreeSet::new();
    let mut add = |x: &Value| {
        if let Some(ca) = x.get("ca").and_then(Value::as_str) {
            all.insert(ca.to_owned());
        }
    };
    cases("trees")
        .iter()
        .for_each(|c| add(&c["nix_store_add"]["path_info"]));
    cases("text_paths").iter().for_each(&mut add);
    cases("source_paths").iter().for_each(&mut add);
    v["closure"]["path_info"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(&mut add);
    let local = v["local_db_rows"]["ValidPaths"].as_array().unwrap();
    local.iter().for_each(&mut add);
    assert!(all.len() >= 15, "{all:?}");
    for ca in &all {
        let parsed: ContentAddress = ca.parse().unwrap_or_else(|e| panic!("{ca}: {e}"));
        assert_eq!(&parsed.to_string(), ca);
    }
    // Recompute each CA path of the local DB from its CA, name and references.
    let mut refs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in v["local_db_rows"]["Refs"].as_array().unwrap() {
        refs.entry(s(r, "referrer"))
            .or_default()
            .push(s(r, "reference"));
    }
    let mut recomputed = 0;
    for row in local {
        let full = s(row, "path");
        let path = dir.parse_path(full).unwrap();
        let db_hash = Hash::parse_prefixed(s(row, "hash")).unwrap();
        assert_eq!(s(row, "hash"), format!("sha256:{}", db_hash.to_hex()));
        let Some(ca) = row["ca"].as_str() else {
            continue;
        };
        let ca: ContentAddress = ca.parse().unwrap();
        let mine = refs.get(full).cloned().unwrap_or_default();
        let self_ref = mine.contains(&full);
        let others: Vec<StorePath> = mine
            .iter()
            .filter(|r| **r != full)
            .map(|r| dir.parse_path(r).unwrap())
            .collect();
        let got = ca.store_path(&dir, &name(path.name()), &others, self_ref);
        assert_eq!(got, Ok(path), "{full}");
        recomputed += 1;
    }
    assert!(recomputed >= 14, "{recomputed}");
}
