//! Property tests: generated narinfos print → parse → print identically, and the parser
//! never panics on mangled input.

use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use store::format::ca::ContentAddress;
use store::format::hash::{Hash, HashAlgo};
use store::format::narinfo::NarInfo;
use store::format::store_path::{StoreDir, StorePath, StorePathHash, StorePathName};

fn arb_store_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[A-Za-z0-9+._?=-]{1,40}").prop_map(|(h, name)| {
        let name = StorePathName::new(&name).expect("generated name is valid");
        StorePath::from_parts(StorePathHash::new(h), &name)
    })
}

fn arb_sha256() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash::sha256)
}

fn arb_ca() -> impl Strategy<Value = ContentAddress> {
    let algo = prop::sample::select(HashAlgo::ALL.to_vec());
    prop_oneof![
        arb_sha256().prop_map(ContentAddress::Text),
        (any::<bool>(), algo, any::<[u8; 64]>()).prop_map(|(recursive, algo, bytes)| {
            let hash = Hash::new(algo, &bytes[..algo.size()]).expect("size matches");
            ContentAddress::Fixed { recursive, hash }
        }),
    ]
}

/// Text that fits a narinfo value: printable, no control characters.
const TEXT: &str = "[ -~]{1,30}";

prop_compose! {
    fn arb_narinfo()(
        path in arb_store_path(),
        url in TEXT,
        (compression, file_hash, file_size) in (
            option::of(prop_oneof![
                Just("none".to_owned()), Just("xz".to_owned()), TEXT.prop_map(String::from),
            ]),
            option::of(arb_sha256()),
            option::of(any::<u64>()),
        ),
        nar_hash in arb_sha256(),
        nar_size in 1..u64::MAX,
        refs in vec(arb_store_path(), 0..6),
        self_ref in any::<bool>(),
        deriver in option::of(arb_store_path()),
        system in option::of(TEXT),
        sigs in btree_set("[a-z0-9.-]{1,12}:[A-Za-z0-9+/]{10,88}={0,2}", 0..4),
        ca in option::of(arb_ca()),
    ) -> NarInfo {
        let mut info = NarInfo::new(path.clone(), &url, nar_hash, nar_size).expect("valid");
        info.set_compression(compression.as_deref()).expect("valid compression");
        info.set_file_hash(file_hash).expect("sha256");
        info.set_file_size(file_size);
        info.set_references(refs.into_iter().chain(self_ref.then_some(path)));
        info.set_deriver(deriver);
        info.set_system(system.as_deref()).expect("valid system");
        for sig in &sigs {
            info.add_sig(sig).expect("valid sig");
        }
        info.set_ca(ca);
        info
    }
}

fn dirs() -> impl Strategy<Value = StoreDir> {
    prop_oneof![
        Just(StoreDir::new("/nix/store").expect("valid")),
        "(/[a-z0-9._-]{1,8}){1,3}".prop_filter_map("valid store dir", |d| StoreDir::new(&d).ok()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_parse_print(info in arb_narinfo(), dir in dirs()) {
        let text = info.to_text(&dir);
        let parsed = NarInfo::parse(&text, &dir);
        prop_assert_eq!(parsed.as_ref(), Ok(&info), "{}", text);
        let again = parsed.map(|p| p.to_text(&dir)).unwrap_or_default();
        prop_assert_eq!(again, text);
        prop_assert_eq!(info.fingerprint(&dir).matches(';').count(), 4);
    }

    /// Lines of a valid narinfo dropped, duplicated, swapped or cut: never a panic, and
    /// whatever parses prints to something that parses to the same value.
    #[test]
    fn mangled_never_panics(
        info in arb_narinfo(),
        edits in vec((0usize..20, 0usize..4, 0usize..200), 0..4),
    ) {
        let dir = StoreDir::new("/nix/store").expect("valid");
        let text = info.to_text(&dir);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for (line, op, cut) in edits {
            if lines.is_empty() {
                break;
            }
            let i = line % lines.len();
            match op {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                2 => { let j = cut % lines.len(); lines.swap(i, j); }
                _ => {
                    let l = &lines[i];
                    let at = (0..=cut.min(l.len())).rev().find(|k| l.is_char_boundary(*k)).unwrap_or(0);
                    lines[i] = l[..at].to_owned();
                }
            }
        }
        let mangled = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        if let Ok(p) = NarInfo::parse(&mangled, &dir) {
            let reparsed = NarInfo::parse(&p.to_text(&dir), &dir);
            prop_assert_eq!(reparsed.as_ref(), Ok(&p));
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(([A-Za-z]{1,10}|StorePath|NarHash|References|Sig|CA)(: ?)[ -~\t\r]{0,60}\n?){0,8}") {
        let dir = StoreDir::new("/nix/store").expect("valid");
        if let Ok(p) = NarInfo::parse(&text, &dir) {
            let reparsed = NarInfo::parse(&p.to_text(&dir), &dir);
            prop_assert_eq!(reparsed.as_ref(), Ok(&p));
        }
    }
}
