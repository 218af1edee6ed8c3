//! Builds a store for the GC benchmark (bench/gc.py): `groups` groups of `per_group`
//! paths, the first half of the groups reachable from one direct GC root each, the other
//! half dead (and each dead path also refers to a live one, so liveness must not follow
//! referrers).
//!
//! Inside a group, path j refers to paths j-1, j/2 and j/3 of the same group (so the last
//! path's closure is the whole group). Each path is a directory with two small files, one
//! naming its references; trees are canonical (modes, mtime 1), NAR hashes and sizes real
//! (`store verify --all` passes), paths `source` paths with references. To be quick it
//! writes the trees and registers them in batches of 1,000 directly, without the
//! per-path install protocol (no per-path lock, no syncfs): a development tool, not a way
//! to add paths.
//!
//! usage: cargo run --release --example gc_populate -- ROOT [GROUPS [PER_GROUP]]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use store::format::path_meta::PathMeta;

use store::format::store_path::{StoreDir, StorePath};
use store::store::{Db, Layout, PathInfo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(
        args.first()
            .ok_or("usage: gc_populate ROOT [GROUPS [PER_GROUP]]")?,
    );
    let groups: usize = args.get(1).map_or(Ok(20), |s| s.parse())?;
    let per_group: usize = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let live_groups = groups / 2;

    let layout = Layout::new(StoreDir::new("/ix/store")?, Some(root));
    layout.create()?;
    let mut db = Db::open(&layout.db_path(), layout.store_dir())?;
    let stage = layout.real_store().join(".populate-stage");
    let mut batch: Vec<PathInfo> = Vec::new();
    let mut all: Vec<Vec<StorePath>> = Vec::new();
    for g in 0..groups {
        let mut group: Vec<StorePath> = Vec::with_capacity(per_group);
        for j in 0..per_group {
            let mut refs: BTreeSet<StorePath> = [j.wrapping_sub(1), j / 2, j / 3]
                .into_iter()
                .filter(|&k| k < j)
                .map(|k| group[k].clone())
                .collect();
            if let Some(live) = g.checked_sub(live_groups).map(|l| &all[l]) {
                let live: &Vec<StorePath> = live;
                refs.insert(live[j].clone());
            }
            let _ = fs::remove_dir_all(&stage);
            fs::create_dir(&stage)?;
            let listing: Vec<String> = refs
                .iter()
                .map(|r| layout.store_dir().display_path(r))
                .collect();
            fs::write(stage.join("refs"), listing.join("\n"))?;
            fs::write(
                stage.join("data"),
                format!("group {g} path {j}\n").repeat(8),
            )?;
            store::fsnar::canonicalise(&stage)?;
            let (nar_hash, nar_size) = store::store::hash_tree(&stage)?;
            let name = format!("bench-{g}-{j}").parse()?;
            let path = layout
                .store_dir()
                .make_source_path(&nar_hash, refs.iter(), false, &name);
            fs::rename(&stage, layout.real_path(&path))?;
            batch.push(PathInfo {
                meta: PathMeta {
                    path: path.clone(),
                    nar_hash,
                    nar_size,
                    references: refs,
                    deriver: None,
                    sigs: BTreeSet::new(),
                    ca: None,
                },
                registration_time: 1,
                ultimate: false,
            });
            if batch.len() == 1000 {
                db.register(&batch)?;
                batch.clear();
            }
            group.push(path);
        }
        if g < live_groups {
            let last = layout
                .store_dir()
                .display_path(group.last().ok_or("empty group")?);
            std::os::unix::fs::symlink(last, layout.gc_roots_dir().join(format!("bench-{g}")))?;
        }
        all.push(group);
    }
    db.register(&batch)?;
    println!(
        "{} paths, {} alive from {live_groups} roots",
        groups * per_group,
        live_groups * per_group
    );
    Ok(())
}
