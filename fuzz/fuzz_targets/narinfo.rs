//! Fuzz target for the narinfo parser: any bytes must parse or fail without panicking,
//! and whatever parses must print to text that parses back to the same value and prints
//! identically.

#![no_main]

use libfuzzer_sys::fuzz_target;
use store::format::narinfo::NarInfo;
use store::format::store_path::StoreDir;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = StoreDir::new("/nix/store") else {
        return;
    };
    let from_bytes = NarInfo::parse_bytes(data, &dir);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(from_bytes.is_err());
        return;
    };
    let parsed = NarInfo::parse(text, &dir);
    assert_eq!(parsed, from_bytes);
    if let Ok(info) = parsed {
        let printed = info.to_text(&dir);
        let again = NarInfo::parse(&printed, &dir);
        assert_eq!(again.as_ref(), Ok(&info), "printed: {printed:?}");
        assert_eq!(info.to_text(&dir), printed);
        let fingerprint = info.fingerprint(&dir);
        assert!(fingerprint.starts_with("1;/nix/store/"));
    }
});
