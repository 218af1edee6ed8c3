//! Reference-scanning throughput over a tree, as the builder's output scan does it: the
//! tree's NAR serialisation streamed through a [`RefScanSink`] looking for `--candidates`
//! random hash parts (an input closure of that size). Used by `bench/build.py`.
//!
//! ```text
//! cargo build --release --example refscan_tree
//! target/release/examples/refscan_tree TREE [--reps N] [--candidates N]
//! ```
//!
//! One warm-up pass (fills the page cache), then N timed passes of dump+scan and, for
//! reference, N of the dump alone into a sink. Prints one JSON object per timed pass:
//! `{"kind": "scan"|"dump", "nar_bytes": …, "secs": …}`.

use std::path::PathBuf;
use std::time::Instant;

use store::build::refscan::RefScanSink;
use store::fsnar;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut tree = None;
    let mut reps = 3usize;
    let mut n_candidates = 1000usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--candidates" => {
                n_candidates = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--candidates N")
            }
            _ if tree.is_none() => tree = Some(PathBuf::from(a)),
            _ => panic!("usage: refscan_tree TREE [--reps N] [--candidates N]"),
        }
    }
    let tree = tree.expect("usage: refscan_tree TREE [--reps N] [--candidates N]");

    // Deterministic pseudo-random hash parts (xorshift), none of which occurs in the tree
    // with any real probability: the scan has to look at every byte.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let candidates: Vec<String> = (0..n_candidates)
        .map(|_| {
            (0..32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    NIX32[(x % 32) as usize] as char
                })
                .collect()
        })
        .collect();

    let scan = || {
        let mut sink = RefScanSink::new(&candidates).expect("valid candidates");
        let start = Instant::now();
        let size = fsnar::dump(&tree, &mut sink).expect("dump");
        let secs = start.elapsed().as_secs_f64();
        assert!(sink.found().is_empty(), "a random candidate was found");
        (size, secs)
    };
    let dump = || {
        let start = Instant::now();
        let size = fsnar::dump(&tree, std::io::sink()).expect("dump");
        (size, start.elapsed().as_secs_f64())
    };
    scan(); // warm-up
    for kind in ["scan", "dump"] {
        for _ in 0..reps {
            let (size, secs) = if kind == "scan" { scan() } else { dump() };
            println!("{{\"kind\": \"{kind}\", \"nar_bytes\": {size}, \"secs\": {secs:.6}}}");
        }
    }
}
