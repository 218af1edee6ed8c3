//! Keys, signatures, narinfo files and the binary caches Nix wrote.

use std::collections::BTreeMap;

use serde_json::Value;
use store::format::cache_info::CacheInfo;
use store::format::hash::{Hash, HashAlgo};
use store::format::keys::{PublicKey, SecretKey, TrustedKeys};
use store::format::narinfo::{NarInfo, NarInfoError};

use super::{cases, nix_dir, read, read_bytes, root, s, test_keys, vectors};

#[test]
fn keys() {
    let keys = &vectors()["keys"];
    let sec_text = read(s(keys, "secret_key_file"));
    let pub_text = read(s(keys, "public_key_file"));
    assert_eq!(sec_text, s(keys, "secret"));
    assert_eq!(pub_text, s(keys, "public"));
    assert_eq!(keys["trailing_newline_in_files"], false);
    let sk = SecretKey::parse(&sec_text).unwrap();
    let pk = PublicKey::parse(&pub_text).unwrap();
    assert_eq!(sk.name(), s(keys, "name"));
    assert_eq!(pk.name(), s(keys, "name"));
    assert_eq!(*sk.to_nix_string(), sec_text);
    assert_eq!(pk.to_string(), pub_text);
    assert_eq!(sk.to_public(), pk);
    assert_eq!(sk.to_public().to_string(), pub_text);
    // A trailing newline is tolerated on read.
    assert_eq!(SecretKey::parse(&format!("{sec_text}\n")).unwrap(), sk);
    assert_eq!(PublicKey::parse(&format!("{pub_text}\n")).unwrap(), pk);
    // Secret key bytes never show up in Debug output.
    let b64 = sec_text.split_once(':').unwrap().1;
    assert!(!format!("{sk:?}").contains(&b64[..16]));
}

/// All narinfo files of a cache directory, by file name.
fn narinfos(dir: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join(dir)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".narinfo") {
            out.insert(name.clone(), read(&format!("{dir}/{name}")));
        }
    }
    out
}

fn parse(text: &str) -> NarInfo {
    NarInfo::parse(text, &nix_dir()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn signatures() {
    let (sk, trusted) = test_keys();
    let dir = nix_dir();
    let public = vectors()["signatures"]["public_key"].as_str().unwrap();
    assert_eq!(sk.to_public().to_string(), public);
    for case in cases("signatures") {
        let path = dir.parse_path(s(case, "store_path")).unwrap();
        let text = read(&format!("caches/none/{}.narinfo", path.hash_str()));
        let info = parse(&text);
        let fp = s(case, "fingerprint");
        assert_eq!(info.fingerprint(&dir), fp);
        let sigs: Vec<&str> = case["sigs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(Value::as_str)
            .collect();
        assert_eq!(sigs.len(), 1);
        assert_eq!(sk.sign(fp).to_string(), sigs[0]);
        assert_eq!(trusted.verify(fp, sigs[0]), Ok(true));
        assert_eq!(
            info.sigs().iter().map(String::as_str).collect::<Vec<_>>(),
            sigs
        );
        assert_eq!(info.verify(&trusted, &dir), Ok(true));
        assert_eq!(info.count_valid_signatures(&trusted, &dir), Ok(1));
    }
}

/// Parsing and printing every narinfo Nix wrote gives the same bytes; each verifies
/// under the test key and matches the recorded fingerprint and `nix path-info --json`.
#[test]
fn caches() {
    let (_, trusted) = test_keys();
    let dir = nix_dir();
    let mut count = 0;
    for (cache, meta) in vectors()["caches"].as_object().unwrap() {
        let cache_dir = s(meta, "dir");
        let info_text = read(&format!("{cache_dir}/nix-cache-info"));
        assert_eq!(info_text, "StoreDir: /nix/store\n");
        let ci = CacheInfo::parse(&info_text).unwrap();
        assert_eq!(
            (ci.to_text(), ci.store_dir.clone()),
            (info_text, dir.clone())
        );
        let files = narinfos(cache_dir);
        assert_eq!(files.len(), 3, "{cache}");
        let path_infos = meta["path_info_json"].as_array().unwrap();
        for (file, text) in files {
            let want = &meta["narinfos"][&file];
            assert_eq!(text, s(want, "text"), "{cache}/{file}");
            let info =
                NarInfo::parse_bytes(&read_bytes(&format!("{cache_dir}/{file}")), &dir).unwrap();
            assert_eq!(info.to_text(&dir), text, "{cache}/{file}");
            assert_eq!(format!("{}.narinfo", info.store_path().hash_str()), file);
            assert_eq!(info.fingerprint(&dir), s(want, "fingerprint"));
            assert_eq!(info.verify(&trusted, &dir), Ok(true), "{cache}/{file}");
            let full = dir.display_path(info.store_path());
            let pi = path_infos
                .iter()
                .find(|p| p["path"] == full.as_str())
                .unwrap();
            assert_matches_path_info(&info, pi);
            let sigs: Vec<&str> = pi["signatures"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(Value::as_str)
                .collect();
            assert_eq!(
                info.sigs().iter().map(String::as_str).collect::<Vec<_>>(),
                sigs
            );
            // The NAR file is where the URL says, with FileHash and FileSize.
            let file_bytes = read_bytes(&format!("{cache_dir}/{}", info.url()));
            assert_eq!(info.file_size(), Some(file_bytes.len() as u64));
            assert_eq!(
                info.file_hash(),
                Some(&Hash::of(HashAlgo::Sha256, &file_bytes))
            );
            assert_eq!(info.compression(), Some(cache.as_str()));
            count += 1;
        }
    }
    assert_eq!(count, 9);
}

/// `NarInfo::uncompressed` plus deriver, CA and signature rebuilds caches/none exactly;
/// re-signing is deterministic; unsigned fields may change, signed ones may not.
#[test]
fn rebuild_and_resign() {
    let (sk, trusted) = test_keys();
    let dir = nix_dir();
    for (file, text) in narinfos("caches/none") {
        let info = parse(&text);
        let refs = info.references().iter().cloned();
        let mut built = NarInfo::uncompressed(
            info.store_path().clone(),
            *info.nar_hash(),
            info.nar_size(),
            refs,
        )
        .unwrap();
        built.set_deriver(info.deriver().cloned());
        built.set_ca(info.ca().copied());
        assert_eq!(built.verify(&trusted, &dir), Ok(false));
        built.sign(&sk, &dir);
        built.sign(&sk, &dir);
        assert_eq!(built, info, "{file}");
        assert_eq!(built.to_text(&dir), text, "{file}");

        let mut edited = info.clone();
        edited.set_url("nar/elsewhere.nar.xz").unwrap();
        edited.set_compression(Some("xz")).unwrap();
        edited.set_deriver(None);
        edited.set_system(Some("x86_64-linux")).unwrap();
        edited.set_ca(None);
        assert_eq!(edited.verify(&trusted, &dir), Ok(true));
        edited
            .set_nar(*info.nar_hash(), info.nar_size() + 8)
            .unwrap();
        assert_eq!(edited.verify(&trusted, &dir), Ok(false));

        let mut malformed = info.clone();
        malformed.add_sig("test-cache-1:AAAA").unwrap();
        assert!(malformed.verify(&trusted, &dir).is_err());
        assert_eq!(info.verify(&TrustedKeys::new(), &dir), Ok(false));
        // Only vec-a.txt (a text path) is content-addressed; it needs no signature.
        assert_eq!(
            info.is_content_addressed(&dir),
            info.ca().is_some(),
            "{file}"
        );
    }
}

/// Checks a parsed narinfo against `nix path-info --json` output.
fn assert_matches_path_info(info: &NarInfo, pi: &Value) {
    let dir = nix_dir();
    let full = |p| dir.display_path(p);
    assert_eq!(full(info.store_path()), s(pi, "path"));
    assert_eq!(info.nar_hash().to_sri(), s(pi, "narHash"));
    assert_eq!(Some(info.nar_size()), pi["narSize"].as_u64());
    let refs: Vec<String> = info.references().iter().map(full).collect();
    assert_eq!(Value::from(refs), pi["references"]);
    assert_eq!(info.deriver().map(full).as_deref(), pi["deriver"].as_str());
    assert_eq!(info.url(), s(pi, "url"));
    assert_eq!(
        info.file_hash().map(Hash::to_sri).as_deref(),
        pi["downloadHash"].as_str()
    );
    assert_eq!(info.file_size(), pi["downloadSize"].as_u64());
    assert_eq!(
        info.ca().map(|c| c.to_string()).as_deref(),
        pi["ca"].as_str()
    );
}

/// Per case: does the signature of the edited root narinfo verify under the test key?
/// Content checks (NarHash, NarSize against the NAR) happen later, at substitution.
#[test]
fn negative_caches() {
    let (_, trusted) = test_keys();
    let dir = nix_dir();
    let expected: BTreeMap<&str, bool> = [
        ("bad-signature", false),
        ("unsigned", false),
        ("wrong-key-same-name", false),
        ("unknown-key-name", false),
        ("bad-narhash-unsigned-edit", false),
        ("bad-narhash", true),
        ("bad-narsize", true),
        ("filehash-wrong", true),
        ("missing-nar", true),
        ("nar-content-corrupted", true),
    ]
    .into();
    let all = vectors()["negative_caches"]["cases"].as_object().unwrap();
    assert_eq!(all.len(), expected.len());
    for (name, case) in all {
        let text = read(s(case, "narinfo"));
        assert_eq!(text, s(case, "narinfo_text"), "{name}");
        let info = parse(&text);
        assert_eq!(info.to_text(&dir), text, "{name}");
        assert_eq!(
            info.verify(&trusted, &dir),
            Ok(expected[name.as_str()]),
            "{name}"
        );
        // What the later content check will see.
        let nar = std::fs::read(root().join(s(case, "dir")).join(info.url()));
        let content_ok = nar.as_ref().is_ok_and(|nar| {
            Hash::of(HashAlgo::Sha256, nar) == *info.nar_hash()
                && nar.len() as u64 == info.nar_size()
        });
        let bad_content = [
            "bad-narhash",
            "bad-narhash-unsigned-edit",
            "bad-narsize",
            "missing-nar",
            "nar-content-corrupted",
        ];
        assert_eq!(content_ok, !bad_content.contains(&name.as_str()), "{name}");
        // The other narinfos of the copy are untouched and valid.
        for (file, other) in narinfos(s(case, "dir")) {
            if !s(case, "narinfo").ends_with(&file) {
                assert_eq!(
                    parse(&other).verify(&trusted, &dir),
                    Ok(true),
                    "{name}/{file}"
                );
            }
        }
    }
}

/// Our decision per `narinfo_parsing` case: `None` = accepted, `Some(prefix)` = refused
/// with an error whose Debug form starts with `prefix`.
fn decision(case: &str) -> Option<&'static str> {
    Some(match case {
        "baseline-unsigned"
        | "narhash-sri"
        | "narhash-base16"
        | "unknown-field"
        | "deriver-unknown-deriver"
        | "missing-FileHash-FileSize"
        | "missing-Compression"
        | "missing-References"
        | "storepath-other-name"
        | "system-field" => return None,
        "no-final-newline" => "NoFinalNewline",
        "crlf-line-endings" => "ControlChar { line: 1, ch: '\\r' }",
        "narhash-no-type" => "Hash { line: 6, field: NarHash, source: MissingType",
        "no-space-after-colon" => "NoSpaceAfterColon { line: 3 }",
        "narsize-zero" => "BadValue { line: 7, field: NarSize",
        "missing-URL" => "Missing { field: Url }",
        "missing-StorePath" => "Missing { field: StorePath }",
        "missing-NarHash" => "Missing { field: NarHash }",
        "missing-NarSize" => "Missing { field: NarSize }",
        "references-full-paths" => "StorePath { line: 8, field: References",
        "references-twice" => "Duplicate { line: 9, field: References }",
        other => panic!("no decision for narinfo_parsing case {other}"),
    })
}

#[test]
fn narinfo_parsing() {
    let dir = nix_dir();
    let baseline =
        read("negative/narinfo-parse/baseline-unsigned/a8z667l486sd21m8rs058ir3b2sh8k14.narinfo");
    let mut stricter_than_nix = vec![];
    for case in cases("narinfo_parsing") {
        let name = s(case, "case");
        let text = read(s(case, "narinfo"));
        let cache_dir = s(case, "narinfo").rsplit_once('/').unwrap().0.to_owned();
        assert!(CacheInfo::parse(&read(&format!("{cache_dir}/nix-cache-info"))).is_ok());
        let nix_accepted = case["nix_path_info_rc"] == 0;
        match (NarInfo::parse(&text, &dir), decision(name)) {
            (Ok(info), None) => {
                assert!(nix_accepted, "{name}: we accept what Nix refused");
                assert_matches_path_info(&info, &case["nix_path_info_json"]);
                let printed = info.to_text(&dir);
                assert_eq!(NarInfo::parse(&printed, &dir).as_ref(), Ok(&info), "{name}");
                if ["narhash-sri", "narhash-base16", "unknown-field"].contains(&name) {
                    assert_eq!(printed, baseline, "{name} prints normalised");
                }
                if ["baseline-unsigned", "system-field", "storepath-other-name"].contains(&name) {
                    assert_eq!(printed, text, "{name} round-trips");
                }
            }
            (Err(e), Some(want)) => {
                assert!(format!("{e:?}").starts_with(want), "{name}: {e:?}");
                let _: &NarInfoError = &e;
                if nix_accepted {
                    stricter_than_nix.push(name);
                }
            }
            (got, want) => panic!("{name}: got {got:?}, decided {want:?}"),
        }
    }
    assert_eq!(stricter_than_nix, ["no-space-after-colon"]);
    assert_eq!(cases("narinfo_parsing").len(), 21);
}
