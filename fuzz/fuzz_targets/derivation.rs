//! Fuzz target for the `.drv` parser: any bytes must parse or fail without panicking, and
//! whatever parses must be canonical (print back to the same bytes) and hash without
//! panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use store::format::derivation::hash::ModuloHasher;
use store::format::derivation::Derivation;
use store::format::store_path::{StoreDir, StorePath};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = StoreDir::new("/nix/store") else {
        return;
    };
    let Ok(drv) = Derivation::parse(data, &dir, "fuzz") else {
        return;
    };
    assert_eq!(drv.print(&dir).as_bytes(), data);
    assert!(drv.drv_path(&dir).is_ok());
    let mut hasher = ModuloHasher::new(&dir);
    // Input derivations are unknown here: hashing must fail cleanly or succeed.
    let mut lookup = |_: &StorePath| Err::<Derivation, _>("no input derivations");
    let _ = hasher.hash(&drv, true, &mut lookup);
    let _ = hasher.output_paths(&drv, &mut lookup);
});
