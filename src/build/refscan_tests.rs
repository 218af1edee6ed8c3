//! Unit tests and the throughput measurement of the reference scanner.

use super::*;

const H1: &str = "0c7c2a1rbd0kc6w6nsr7bxx3jv2i5xsv";
const H2: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
const H3: &str = "3k5ilr9rjm7ibjw7mmcq0qy8ffg4x7ni";

fn sink() -> RefScanSink {
    RefScanSink::new([H1, H2, H3]).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A small deterministic generator (xorshift), so the tests need no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The obvious quadratic search, as the reference.
fn naive(data: &[u8], candidates: &[&str]) -> BTreeSet<String> {
    candidates
        .iter()
        .filter(|c| data.windows(32).any(|w| w == c.as_bytes()))
        .map(|c| c.to_string())
        .collect()
}

#[test]
fn finds_hash_parts_anywhere() {
    let text = format!(
        "prefix /ix/store/{H1}-hello/bin and {H3}suffix, not {}",
        &H2[..31]
    );
    let mut s = sink();
    s.write_all(text.as_bytes()).unwrap();
    assert_eq!(s.found(), set(&[H1, H3]));
}

#[test]
fn finds_inside_long_nix32_runs() {
    // Surrounded by nix32 characters on both sides, so only a sliding window finds it.
    let text = format!("{}{H1}{}{H2}", "abcd".repeat(100), "0123".repeat(7));
    let mut s = sink();
    s.feed(text.as_bytes());
    assert_eq!(s.found(), set(&[H1, H2]));
    // Off by one on either side is not a match.
    let mut s = sink();
    s.feed(&H1.as_bytes()[1..]);
    s.feed(b"-");
    s.feed(&H1.as_bytes()[..31]);
    assert!(s.found().is_empty());
}

#[test]
fn matches_straddling_chunk_boundaries() {
    let data = format!("xx{H1}--{H3}yy{H2}");
    for split in 0..=data.len() {
        let mut s = sink();
        s.feed(&data.as_bytes()[..split]);
        s.feed(&data.as_bytes()[split..]);
        assert_eq!(s.found(), set(&[H1, H2, H3]), "split at {split}");
    }
    // Three-way splits, including empty and tiny chunks.
    for a in 0..data.len() {
        for b in a..=data.len() {
            let mut s = sink();
            for part in [&data[..a], &data[a..b], &data[b..]] {
                s.feed(part.as_bytes());
            }
            assert_eq!(s.found(), set(&[H1, H2, H3]), "splits at {a}, {b}");
        }
    }
    // One byte at a time.
    let mut s = sink();
    for b in data.as_bytes() {
        s.feed(std::slice::from_ref(b));
    }
    assert_eq!(s.found(), set(&[H1, H2, H3]));
}

#[test]
fn agrees_with_naive_search_on_random_data() {
    let mut rng = Rng(0x5eed);
    let alphabet = nixbase32::ALPHABET;
    for round in 0..200 {
        let len = (rng.next() % 3000) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        // Mostly nix32 characters in some rounds, to exercise long runs.
        if round % 2 == 0 {
            for b in data.iter_mut() {
                if rng.next() % 50 != 0 {
                    *b = alphabet[(*b % 32) as usize];
                }
            }
        }
        for h in [H1, H2, H3] {
            if len > 40 && rng.next() % 2 == 0 {
                let at = (rng.next() as usize) % (len - 32);
                data[at..at + 32].copy_from_slice(h.as_bytes());
            }
        }
        let expected = naive(&data, &[H1, H2, H3]);
        let chunk = 1 + (rng.next() % 100) as usize;
        let mut s = sink();
        for part in data.chunks(chunk) {
            s.feed(part);
        }
        assert_eq!(s.found(), expected, "round {round}, chunk {chunk}");
    }
}

#[test]
fn rejects_bad_candidates() {
    assert!(RefScanSink::new(["short"]).is_err());
    // 'e' is not a nix32 character.
    assert!(RefScanSink::new(["e".repeat(32)]).is_err());
    assert!(RefScanSink::new(Vec::<String>::new())
        .unwrap()
        .found()
        .is_empty());
}

#[test]
fn scans_a_tree_through_its_nar() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/a"), format!("#!/ix/store/{H1}-sh/bin/sh\n")).unwrap();
    std::os::unix::fs::symlink(format!("/ix/store/{H3}-lib"), root.join("lib")).unwrap();
    let found = scan_path(&root, [H1, H2, H3]).unwrap();
    assert_eq!(found, set(&[H1, H3]));
}

/// Throughput on 1 GiB: half random bytes, half text-like (lower-case words, digits,
/// punctuation, like the `big` bench tree), with a few hash parts planted in it. Run with
/// `cargo test --release --lib refscan_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn refscan_throughput() {
    const SIZE: usize = 1 << 30;
    let mut rng = Rng(42);
    let mut data = vec![0u8; SIZE];
    rng.fill(&mut data[..SIZE / 2]);
    let words: Vec<&[u8]> = [
        "the ",
        "store ",
        "path ",
        "build ",
        "of ",
        "a ",
        "derivation ",
        "output ",
        "is ",
        "hashed ",
        "1970 ",
        "with ",
        "lib/",
        "x86_64-linux ",
        "\n",
        "= ",
        "{ ",
        "} ",
    ]
    .iter()
    .map(|w| w.as_bytes())
    .collect();
    let mut at = SIZE / 2;
    while at < SIZE {
        let w = words[(rng.next() % words.len() as u64) as usize];
        let n = w.len().min(SIZE - at);
        data[at..at + n].copy_from_slice(&w[..n]);
        at += n;
    }
    for (i, h) in [H1, H3].iter().enumerate() {
        let at = SIZE / 3 * (i + 1);
        data[at..at + 32].copy_from_slice(h.as_bytes());
    }
    let candidates: Vec<String> = (0..1000)
        .map(|_| {
            let mut b = [0u8; 20];
            rng.fill(&mut b);
            nixbase32::encode(&b)
        })
        .chain([H1, H2, H3].map(String::from))
        .collect();
    for round in 0..3 {
        let mut s = RefScanSink::new(&candidates).unwrap();
        let start = std::time::Instant::now();
        for chunk in data.chunks(1 << 20) {
            s.feed(chunk);
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(s.found(), set(&[H1, H3]));
        eprintln!(
            "refscan round {round}: 1 GiB in {secs:.3} s = {:.2} GiB/s",
            1.0 / secs
        );
    }
}

/// Throughput of [`scan_path`] (NAR dump + scan) over a real tree, e.g. the `big` bench tree:
/// `REFSCAN_TREE=/tmp/store-bench/trees/big cargo test --release --lib refscan_tree_throughput
/// -- --ignored --nocapture`. Includes reading the files (from the page cache when warm).
#[test]
#[ignore]
fn refscan_tree_throughput() {
    let Some(tree) = std::env::var_os("REFSCAN_TREE") else {
        eprintln!("SKIPPED refscan_tree_throughput: set REFSCAN_TREE to a tree");
        return;
    };
    let tree = std::path::PathBuf::from(tree);
    let candidates = [H1, H2, H3];
    for round in 0..3 {
        let start = std::time::Instant::now();
        let mut s = RefScanSink::new(candidates).unwrap();
        let size = fsnar::dump(&tree, &mut s).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        fsnar::dump(&tree, &mut std::io::sink()).unwrap();
        let dump_only = start.elapsed().as_secs_f64();
        eprintln!(
            "refscan tree round {round}: {:.2} GiB NAR scanned in {secs:.3} s = {:.2} GiB/s \
             (dump alone {dump_only:.3} s)",
            size as f64 / (1u64 << 30) as f64,
            size as f64 / (1u64 << 30) as f64 / secs
        );
    }
}
