//! Against real Nix 2.8 (when `nix-store` is installed; CI installs it and sets
//! `STORE_REQUIRE_NIX=1` so these never pass silently): on generated trees, our NAR bytes,
//! `hash path` output and `add` store paths equal Nix's.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::*;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NAME_BYTES: &[u8] = b"abcXYZ019-_.+=~@ \xc3\xa9";

fn gen_tree(rng: &mut Rng, dir: &Path, depth: u32) {
    fs::create_dir(dir).unwrap();
    let n = rng.below(if depth == 0 { 12 } else { 6 });
    for i in 0..n {
        let mut name: Vec<u8> = (0..1 + rng.below(8))
            .map(|_| NAME_BYTES[rng.below(NAME_BYTES.len() as u64) as usize])
            .collect();
        name.extend(format!("{i}").bytes());
        let name = String::from_utf8_lossy(&name).into_owned();
        let p = dir.join(&name);
        match rng.below(10) {
            0..=5 => {
                let size = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(16),
                    2 => rng.below(5000),
                    _ => 60_000 + rng.below(200_000),
                };
                let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                fs::write(&p, data).unwrap();
                let mode = [0o644, 0o755, 0o600, 0o744, 0o655, 0o444][rng.below(6) as usize];
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            }
            6 => symlink(
                ["target", "../x", "/abs/path", ""][rng.below(3) as usize],
                &p,
            )
            .unwrap(),
            _ if depth < 4 => gen_tree(rng, &p, depth + 1),
            _ => fs::write(&p, b"leaf").unwrap(),
        }
    }
}

#[test]
fn generated_trees_match_nix() {
    if !nix_available("generated_trees_match_nix") {
        return;
    }
    let s = TestStore::with_store_dir("/nix/store");
    let scratch = s.scratch();
    let nix_root = scratch.join("nix-chroot");
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let tree = scratch.join(format!("tree-{seed}"));
        if seed % 4 == 0 {
            // A single file or a symlink as the root, too.
            let data: Vec<u8> = (0..rng.below(3000)).map(|_| rng.next() as u8).collect();
            fs::write(&tree, data).unwrap();
        } else {
            gen_tree(&mut rng, &tree, 0);
        }
        let t = tree.to_str().unwrap();

        let mut dump = nix_cmd("nix-store", scratch.as_path());
        dump.args(["--dump", t]);
        let nix_nar = dump.output().unwrap();
        assert_success(&nix_nar, "nix-store --dump");
        let ours = s.cmd().args(["nar", "dump", t]).output().unwrap();
        assert_success(&ours, "store nar dump");
        assert!(
            ours.stdout == nix_nar.stdout,
            "seed {seed}: NAR bytes differ"
        );

        for args in [
            &["path"][..],
            &["path", "--base32"],
            &["path", "--type", "sha1", "--base16"],
        ] {
            let mut nix = nix_cmd("nix", scratch.as_path());
            nix.arg("hash").args(args).arg(t);
            let mut cmd = vec!["hash"];
            cmd.extend_from_slice(args);
            cmd.push(t);
            assert_eq!(s.ok(&cmd), stdout_of(nix), "seed {seed}: hash {args:?}");
        }

        let mut add = nix_cmd("nix-store", scratch.as_path());
        add.arg("--store").arg(&nix_root).args(["--add", t]);
        assert_eq!(s.ok(&["add", t]), stdout_of(add), "seed {seed}: store path");
    }
}

#[test]
fn nix_reads_what_we_add() {
    if !nix_available("nix_reads_what_we_add") {
        return;
    }
    // Our store tree, restored by Nix from our NAR, hashes the same under Nix.
    let s = TestStore::with_store_dir("/nix/store");
    let scratch = s.scratch();
    let tree = extract_tree("vec-tree", &scratch);
    let p = s.ok(&["add", tree.to_str().unwrap()]).trim().to_owned();
    let nar = s
        .cmd()
        .args(["nar", "dump"])
        .arg(s.real(&p))
        .output()
        .unwrap();
    assert_success(&nar, "dump");
    let out = scratch.join("restored-by-nix");
    let mut restore = nix_cmd("nix-store", scratch.as_path());
    restore
        .args(["--restore"])
        .arg(&out)
        .stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &nar.stdout).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let mut nix_hash = nix_cmd("nix", scratch.as_path());
    nix_hash.args(["hash", "path"]).arg(&out);
    let info: serde_json::Value =
        serde_json::from_str(&s.ok(&["path-info", "--json", &p])).unwrap();
    assert_eq!(
        stdout_of(nix_hash).trim(),
        info[0]["narHash"].as_str().unwrap()
    );
}
