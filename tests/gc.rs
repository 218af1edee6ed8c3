//! Garbage collection through the library: roots (direct, indirect, dangling), temp roots,
//! keep-derivations / keep-outputs, `delete_paths` refusals, `max_freed`, recovery from a
//! crash mid-deletion, and collection running concurrently with an adder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use store::format::hash::{Hash, HashAlgo};
use store::format::store_path::{StoreDir, StorePath};
use store::store::gc::GcError;
use store::store::{GcOptions, Layout, LocalStore, NarImport, Verdict};

fn layout(root: &Path) -> Layout {
    Layout::new(StoreDir::new("/ix/store").unwrap(), Some(root))
}

fn open(root: &Path) -> LocalStore {
    LocalStore::open(layout(root)).unwrap()
}

/// Imports a one-file path with `size` bytes of content and the given references.
fn add_sized(
    s: &LocalStore,
    name: &str,
    refs: &[&StorePath],
    deriver: Option<&StorePath>,
    size: usize,
) -> StorePath {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    let mut content = format!("{name}\n").into_bytes();
    for r in refs {
        content.extend_from_slice(s.print_path(r).as_bytes());
    }
    content.resize(content.len().max(size), b'x');
    fs::write(&f, &content).unwrap();
    let mut nar = Vec::new();
    store::fsnar::dump(&f, &mut nar).unwrap();
    let nar_hash = Hash::of(HashAlgo::Sha256, &nar);
    let path = s.store_dir().make_source_path(
        &nar_hash,
        refs.iter().copied(),
        false,
        &name.parse().unwrap(),
    );
    let meta = NarImport {
        path: path.clone(),
        nar_hash,
        nar_size: nar.len() as u64,
        references: refs.iter().map(|r| (*r).clone()).collect(),
        deriver: deriver.cloned(),
        sigs: BTreeSet::new(),
        ca: None,
    };
    s.import_nar(meta, &nar[..]).unwrap();
    path
}

fn add(s: &LocalStore, name: &str, refs: &[&StorePath]) -> StorePath {
    add_sized(s, name, refs, None, 0)
}

/// Every valid path is on disk, intact, and all its references are valid.
fn check_invariant(s: &LocalStore) {
    for p in s.all_valid().unwrap() {
        let info = s.query_valid(&p).unwrap();
        for r in &info.references {
            assert!(s.is_valid(r).unwrap(), "{p} refers to invalid {r}");
        }
        assert_eq!(s.verify_path(&p).unwrap(), Verdict::Ok, "{p}");
    }
}

fn gc(s: &LocalStore) -> Vec<StorePath> {
    let mut d = s.collect_garbage(&GcOptions::default()).unwrap().deleted;
    d.sort();
    d
}

fn sorted(v: &[&StorePath]) -> Vec<StorePath> {
    let mut v: Vec<StorePath> = v.iter().map(|p| (*p).clone()).collect();
    v.sort();
    v
}

#[test]
fn direct_indirect_and_dangling_roots() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c, d) = {
        let s = open(root.path());
        let a = add(&s, "a", &[]);
        let b = add(&s, "b", &[&a]);
        let c = add(&s, "c", &[&a]);
        let d = add(&s, "d", &[]);
        (a, b, c, d)
    }; // the adder's temp roots go with it
    let s = open(root.path());
    let l = layout(root.path());
    std::os::unix::fs::symlink(l.real_path(&d), l.gc_roots_dir().join("direct")).unwrap();
    let result = root.path().join("result");
    s.add_indirect_root(&result, &b).unwrap();
    assert_eq!(fs::read_link(&result).unwrap(), l.real_path(&b));
    // s itself holds b as a temp root now; a fresh store sees only the links.
    drop(s);
    let s = open(root.path());
    let analysis = s.gc_analyse(&GcOptions::default()).unwrap();
    assert_eq!(analysis.dead, vec![c.clone()]);
    assert_eq!(gc(&s), vec![c.clone()]);
    assert!(!l.real_path(&c).exists());
    assert!(s.is_valid(&a).unwrap() && s.is_valid(&b).unwrap() && s.is_valid(&d).unwrap());
    check_invariant(&s);
    // Re-pointing the link drops b (and a with it).
    s.add_indirect_root(&result, &d).unwrap();
    drop(s);
    let s = open(root.path());
    assert_eq!(gc(&s), sorted(&[&a, &b]));
    // Removing the user's link drops d; the dangling gcroot goes too.
    fs::remove_file(&result).unwrap();
    fs::remove_file(l.gc_roots_dir().join("direct")).unwrap();
    assert_eq!(gc(&s), vec![d.clone()]);
    assert_eq!(
        fs::read_dir(l.gc_roots_dir().join("auto")).unwrap().count(),
        0
    );
    assert!(s.all_valid().unwrap().is_empty());
}

#[test]
fn temp_roots_of_live_and_dead_processes() {
    let root = tempfile::tempdir().unwrap();
    let adder = open(root.path());
    let a = add(&adder, "a", &[]);
    let b = add(&adder, "b", &[]);
    let collector = open(root.path());
    assert!(gc(&collector).is_empty(), "the adder is alive");
    drop(adder);
    // A roots file nobody holds (its process died) protects nothing and is removed.
    let stale = layout(root.path())
        .temp_locks_dir()
        .join("999999-0-0.roots");
    fs::write(&stale, format!("{a}\n")).unwrap();
    collector.add_temp_root(&b).unwrap();
    assert_eq!(gc(&collector), vec![a.clone()]);
    assert!(!stale.exists());
    assert!(collector.is_valid(&b).unwrap());
}

#[test]
fn keep_derivations_and_keep_outputs() {
    let root = tempfile::tempdir().unwrap();
    let (drv, out, drv2, out2) = {
        let s = open(root.path());
        let drv = add(&s, "x.drv", &[]);
        let out = add_sized(&s, "x", &[], Some(&drv), 0);
        let drv2 = add(&s, "y.drv", &[]);
        let out2 = add_sized(&s, "y", &[], Some(&drv2), 0);
        let outs = |o: &StorePath| BTreeMap::from([("out".to_owned(), o.clone())]);
        s.register_derivation_outputs(&drv, &outs(&out)).unwrap();
        s.register_derivation_outputs(&drv2, &outs(&out2)).unwrap();
        assert_eq!(s.valid_derivers(&out).unwrap(), [drv.clone()].into());
        (drv, out, drv2, out2)
    };
    let l = layout(root.path());
    std::os::unix::fs::symlink(l.real_path(&out), l.gc_roots_dir().join("out")).unwrap();
    std::os::unix::fs::symlink(l.real_path(&drv2), l.gc_roots_dir().join("drv2")).unwrap();
    let s = open(root.path());
    let dead = |o: &GcOptions| {
        let mut d = s.gc_analyse(o).unwrap().dead;
        d.sort();
        d
    };
    let both = GcOptions {
        keep_outputs: true,
        keep_derivations: true,
        max_freed: None,
    };
    assert!(dead(&both).is_empty());
    let defaults = GcOptions::default();
    assert_eq!(dead(&defaults), vec![out2.clone()]);
    let neither = GcOptions {
        keep_derivations: false,
        ..defaults.clone()
    };
    assert_eq!(dead(&neither), sorted(&[&drv, &out2]));
    let r = s.collect_garbage(&neither).unwrap();
    assert_eq!(r.deleted.len(), 2);
    assert!(s.is_valid(&out).unwrap() && !s.is_valid(&drv).unwrap());
    check_invariant(&s);
}

#[test]
fn delete_refuses_live_and_referenced_paths() {
    let root = tempfile::tempdir().unwrap();
    let (a, b, c, d) = {
        let s = open(root.path());
        let a = add(&s, "a", &[]);
        let b = add(&s, "b", &[&a]);
        let c = add(&s, "c", &[]);
        let d = add(&s, "d", &[&c]);
        (a, b, c, d)
    };
    let l = layout(root.path());
    std::os::unix::fs::symlink(l.real_path(&b), l.gc_roots_dir().join("b")).unwrap();
    let s = open(root.path());
    let o = GcOptions::default();
    let msg = |r: Result<_, GcError>| match r {
        Err(e @ GcError::Refused { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let m = msg(s.delete_paths(std::slice::from_ref(&b), &o));
    assert!(m.contains("is a root") && m.contains("gcroots/b"), "{m}");
    let m = msg(s.delete_paths(std::slice::from_ref(&a), &o));
    assert!(
        m.contains(&format!("referenced by live path '{}'", s.print_path(&b))),
        "{m}"
    );
    let m = msg(s.delete_paths(std::slice::from_ref(&c), &o));
    assert!(
        m.contains(&s.print_path(&d)) && m.contains("not being deleted"),
        "{m}"
    );
    // A refusal deletes nothing, even what could go.
    msg(s.delete_paths(&[d.clone(), c.clone(), a.clone()], &o));
    assert!(s.is_valid(&d).unwrap());
    let r = s.delete_paths(&[c.clone(), d.clone()], &o).unwrap();
    assert_eq!(r.deleted, [d.clone(), c.clone()], "referrers first");
    assert!(!l.real_path(&c).exists() && !l.real_path(&d).exists());
    check_invariant(&s);
}

#[test]
fn max_freed_deletes_referrers_first_and_stops() {
    let root = tempfile::tempdir().unwrap();
    let chain = {
        let s = open(root.path());
        let mut chain: Vec<StorePath> = Vec::new();
        for i in 0..10 {
            let refs: Vec<&StorePath> = chain.last().into_iter().collect();
            chain.push(add_sized(&s, &format!("p{i}"), &refs, None, 64 << 10));
        }
        chain
    };
    let s = open(root.path());
    let o = GcOptions {
        max_freed: Some(150 << 10),
        ..GcOptions::default()
    };
    let r = s.collect_garbage(&o).unwrap();
    assert!(r.bytes_freed >= 150 << 10, "{r:?}");
    assert!(r.deleted.len() >= 2 && r.deleted.len() < 10, "{r:?}");
    // The top of the chain went first; what is left is the bottom, intact.
    let expect: Vec<StorePath> = chain.iter().rev().take(r.deleted.len()).cloned().collect();
    assert_eq!(r.deleted, expect);
    check_invariant(&s);
    assert_eq!(gc(&s).len(), 10 - r.deleted.len());
}

#[test]
fn interrupted_deletion_is_finished_by_the_next_run() {
    let root = tempfile::tempdir().unwrap();
    let l = layout(root.path());
    let s = open(root.path());
    let live = add(&s, "live", &[]);
    // Trash left by a collection that crashed while removing (read-only, as store trees are).
    let trash = l.trash_dir().join("00000000000000000000000000000000-old");
    fs::create_dir_all(trash.join("sub")).unwrap();
    fs::write(trash.join("sub/f"), vec![7u8; 10_000]).unwrap();
    for p in [trash.join("sub"), trash.clone()] {
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    }
    // A dir whose rows were deleted but that was not yet renamed (or that an install left
    // between its rename and its registration).
    let hash = "11111111111111111111111111111111";
    let leftover = l.real_store().join(format!("{hash}-gone"));
    fs::create_dir(&leftover).unwrap();
    fs::write(leftover.join("f"), b"x").unwrap();
    // An unregistered dir that a live process holds as a temp root is left alone.
    let installing: StorePath = format!("{}-busy", "2".repeat(32)).parse().unwrap();
    fs::create_dir(l.real_path(&installing)).unwrap();
    s.add_temp_root(&installing).unwrap();
    let collector = open(root.path());
    let r = collector.collect_garbage(&GcOptions::default()).unwrap();
    assert_eq!(r.leftovers, 1);
    assert!(r.bytes_freed >= 10_000, "{r:?}");
    assert!(!trash.exists() && !leftover.exists());
    assert!(l.real_path(&installing).exists());
    assert!(collector.is_valid(&live).unwrap());
    assert_eq!(fs::read_dir(l.trash_dir()).unwrap().count(), 0);
}

#[test]
fn collection_runs_concurrently_with_an_adder() {
    let root = tempfile::tempdir().unwrap();
    let rootp = root.path().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (rootp, stop) = (rootp.clone(), stop.clone());
        std::thread::spawn(move || {
            let s = open(&rootp);
            let mut rounds = 0;
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) || rounds < 3 {
                deleted += s
                    .collect_garbage(&GcOptions::default())
                    .unwrap()
                    .deleted
                    .len();
                rounds += 1;
            }
            (rounds, deleted)
        })
    };
    // Garbage made by short-lived stores, in parallel; some of it refers to live paths.
    let shared: Arc<std::sync::Mutex<Vec<StorePath>>> = Arc::default();
    let garbage = {
        let (rootp, stop, shared) = (rootp.clone(), stop.clone(), shared.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = open(&rootp);
                let g = add(&s, &format!("g{n}"), &[]);
                let live = shared.lock().unwrap().last().cloned();
                let refs: Vec<&StorePath> =
                    [Some(&g), live.as_ref()].into_iter().flatten().collect();
                add(&s, &format!("h{n}"), &refs);
                n += 1;
            }
        })
    };
    let adder = open(&rootp);
    let mut mine: Vec<StorePath> = Vec::new();
    for i in 0..60 {
        // Each new path refers to one made earlier (kept alive only by temp roots).
        let refs: Vec<&StorePath> = mine.get(i / 2).into_iter().collect();
        let p = add(&adder, &format!("m{i}"), &refs);
        mine.push(p.clone());
        shared.lock().unwrap().push(p);
        for p in &mine {
            assert!(adder.is_valid(p).unwrap(), "{p} was collected");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, deleted) = collector.join().unwrap();
    garbage.join().unwrap();
    assert!(
        rounds >= 3 && deleted > 0,
        "rounds {rounds}, deleted {deleted}"
    );
    for p in &mine {
        assert_eq!(adder.verify_path(p).unwrap(), Verdict::Ok, "{p}");
    }
    check_invariant(&adder);
    drop(adder);
    let s = open(&rootp);
    gc(&s);
    assert!(s.all_valid().unwrap().is_empty());
}

/// A `.drv` that arrives any way at all (here `add_text`, as instantiation and
/// substitution both end in the same commit) gets its outputs recorded, so keep-outputs
/// keeps the output of a live derivation nobody instantiated here.
#[test]
fn outputs_of_any_registered_derivation_are_recorded() {
    let root = tempfile::tempdir().unwrap();
    let l = Layout::new(StoreDir::new("/nix/store").unwrap(), Some(root.path()));
    let s = LocalStore::open(l.clone()).unwrap();
    let vec = "wx32cw4ccghkwh8mnxc51wmrx4fqqvx4-vec-fod-flat.drv";
    let text = fs::read(format!("tests/fixtures/nix-2.8/drv/{vec}")).unwrap();
    let added = s
        .add_text(
            &"vec-fod-flat.drv".parse().unwrap(),
            &text,
            &BTreeSet::new(),
        )
        .unwrap();
    let drv = added.info.meta.path;
    assert_eq!(drv.as_str(), vec);
    let out: StorePath = "6fq6bx8wzpb332yg4i3080x2dc0gib41-vec-fod-flat"
        .parse()
        .unwrap();
    assert_eq!(
        s.derivation_outputs(&drv).unwrap(),
        BTreeMap::from([("out".to_owned(), out.clone())])
    );
    // Make the output valid (its content does not matter to the collector), root the .drv.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"fixed output content\n").unwrap();
    let mut nar = Vec::new();
    store::fsnar::dump(dir.path().join("f"), &mut nar).unwrap();
    let meta = NarImport {
        path: out.clone(),
        nar_hash: Hash::of(HashAlgo::Sha256, &nar),
        nar_size: nar.len() as u64,
        references: BTreeSet::new(),
        deriver: Some(drv.clone()),
        sigs: BTreeSet::new(),
        ca: None,
    };
    s.import_nar(meta, &nar[..]).unwrap();
    assert_eq!(s.valid_derivers(&out).unwrap(), [drv.clone()].into());
    std::os::unix::fs::symlink(l.real_path(&drv), l.gc_roots_dir().join("drv")).unwrap();
    drop(s); // and its temp roots
    let s = LocalStore::open(l).unwrap();
    let keep = GcOptions {
        keep_outputs: true,
        ..GcOptions::default()
    };
    assert!(s.gc_analyse(&keep).unwrap().dead.is_empty());
    assert_eq!(s.gc_analyse(&GcOptions::default()).unwrap().dead, vec![out]);
}
