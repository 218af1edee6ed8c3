//! Fuzz target: the strict NAR reader and `fsnar::restore` on arbitrary bytes.
//!
//! Properties checked: nothing panics; the parser and restore agree on validity (and on
//! NarSize/NarHash); a failed restore leaves nothing behind; a valid NAR is canonical, i.e.
//! dumping the restored tree gives back exactly the input bytes.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run nar_reader -- -dict=fuzz/nar.dict`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use store::format::nar::validate_nar;
use store::fsnar;

static WORKDIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let parsed = validate_nar(data);

    let base = WORKDIR
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path();
    let dst = base.join("out");
    let restored = fsnar::restore(data, &dst, true);
    match (&parsed, &restored) {
        (Ok(summary), Ok(stats)) => {
            assert_eq!(summary.nar_size, data.len() as u64);
            assert_eq!(summary.nar_size, stats.nar_size);
            assert_eq!(summary.nar_sha256, stats.nar_sha256);
            let mut again = Vec::new();
            fsnar::dump(&dst, &mut again).expect("dump of a restored tree");
            assert!(again == data, "a valid NAR must be canonical");
        }
        (Err(_), Err(_)) => {
            assert!(
                dst.symlink_metadata().is_err(),
                "failed restore left {dst:?}"
            );
        }
        (p, r) => panic!("parser and restore disagree: {p:?} vs {r:?}"),
    }
    fsnar::make_writable_and_remove(&dst).expect("cleanup");
    let leftovers = std::fs::read_dir(base).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "restore wrote outside its target");
});
