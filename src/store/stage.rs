//! Two-phase installs: *stage* a path (lock it, build and check its tree in a private
//! staging dir inside the store's filesystem) and later *commit* a batch of staged paths
//! (one `syncfs`, the renames, one fsync of the store dir, one registration transaction).
//!
//! Staging can run for many paths in parallel and in any order; committing is what has to
//! follow reference order. A batch pays the durability cost once: that is what makes
//! substituting a thousand small paths cheap. Nothing staged is visible in the store dir
//! before its commit, and a staged path keeps its install lock until it is committed or
//! dropped, so another process never fetches it a second time meanwhile.
//!
//! Staged trees live in one staging dir per [`LocalStore`] (a temp dir, see
//! [`super::lock::TempDir`]), shared by everything staged at the same time and removed
//! when the last of them is gone.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::RenameFlags;

use super::lock::TempDir;
use super::path_lock::PathLock;
use super::{LocalStore, PathInfo, StoreError};
use crate::error_chain::Chain;
use crate::format::derivation::{Derivation, DRV_EXTENSION};
use crate::format::store_path::StorePath;
use crate::fsnar;

/// `.drv` files larger than this are not parsed for their outputs.
const MAX_DRV_SIZE: u64 = 64 << 20;

/// A path whose tree is built and checked but not yet visible: commit it with
/// `LocalStore::commit_staged`, or drop it to throw it away.
#[derive(Debug)]
pub struct Staged {
    info: PathInfo,
    tree: PathBuf,
    moved: bool,
    _lock: PathLock,
    _area: Arc<TempDir>,
}

impl Staged {
    pub fn info(&self) -> &PathInfo {
        &self.info
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.moved {
            if let Err(e) = fsnar::make_writable_and_remove(&self.tree) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove staged tree {}: {e}", self.tree.display());
                }
            }
        }
    }
}

/// The install lock of one store path, held until dropped (or moved into a [`Staged`]).
#[derive(Debug)]
pub struct InstallLock(PathLock);

/// What staging a path gave.
#[derive(Debug)]
pub enum Stage {
    /// The path was valid already (perhaps installed by another process while we waited
    /// for its lock); nothing was built.
    Valid(PathInfo),
    Staged(Staged),
}

/// How `LocalStore::stage_nar` (and the store's own staging) behaves; the default
/// suits a caller that commits each path at once.
#[derive(Clone, Copy)]
pub struct StageOptions<'a> {
    /// Called with `true` before staging blocks on an install lock that another process
    /// holds, and with `false` once it has it. A caller that keeps staged paths
    /// uncommitted must commit what it can while it waits: the other process may in turn
    /// be waiting for one of those paths' locks. Default: does nothing.
    pub waiting: &'a dyn Fn(bool),
}

fn never_notes(_: bool) {}

impl Default for StageOptions<'_> {
    fn default() -> Self {
        StageOptions {
            waiting: &never_notes,
        }
    }
}

impl LocalStore {
    /// Locks `info.path` and, unless it is valid already, has `build` create its
    /// (canonicalised, checked) tree at the path it is given, inside the staging dir.
    /// References need not be valid yet; they must be by the time of the commit.
    pub(super) fn stage<E: From<StoreError>>(
        &self,
        info: PathInfo,
        opts: StageOptions<'_>,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Stage, E> {
        let waiting = opts.waiting;
        // Rooted before validity is checked, so a collection cannot take it from under us.
        self.add_temp_root(&info.path)?;
        let lock = match self.path_locks.try_lock(&info.path) {
            Ok(Some(lock)) => InstallLock(lock),
            Ok(None) => {
                // Held by someone else: no need to wait if it is valid already.
                if let Some(existing) = self.query(&info.path)? {
                    return Ok(Stage::Valid(existing));
                }
                waiting(true);
                let lock = self.lock_for_install(&info.path);
                waiting(false);
                lock?
            }
            Err(e) => {
                let what = format!("cannot lock '{}'", self.print_path(&info.path));
                return Err(StoreError::io(what, e).into());
            }
        };
        // It may be valid already, or someone else may have installed it while we waited.
        if let Some(existing) = self.query(&info.path)? {
            return Ok(Stage::Valid(existing));
        }
        Ok(Stage::Staged(self.stage_locked(lock, info, build)?))
    }

    /// Takes the install lock of `path` if nobody holds it: one `fcntl`, no waiting.
    pub(crate) fn try_lock_for_install(
        &self,
        path: &StorePath,
    ) -> Result<Option<InstallLock>, StoreError> {
        self.path_locks
            .try_lock(path)
            .map(|l| l.map(InstallLock))
            .map_err(|e| StoreError::io(format!("cannot lock '{}'", self.print_path(path)), e))
    }

    /// Takes the install lock of `path` (blocking while another process holds it). Whoever
    /// holds it is the only one who may make `path` valid; check validity again once it is
    /// held.
    pub(crate) fn lock_for_install(&self, path: &StorePath) -> Result<InstallLock, StoreError> {
        let lock = self
            .path_locks
            .lock(path)
            .map_err(|e| StoreError::io(format!("cannot lock '{}'", self.print_path(path)), e))?;
        Ok(InstallLock(lock))
    }

    /// Like [`LocalStore::stage`] for a path whose install lock the caller holds and knows
    /// not to be valid.
    pub(crate) fn stage_locked<E: From<StoreError>>(
        &self,
        lock: InstallLock,
        info: PathInfo,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<Staged, E> {
        self.add_temp_root(&info.path)?;
        let area = self.staging_area()?;
        let tree = area.path().join(info.path.as_str());
        // A tree left here by an earlier attempt in this process (its lock was released).
        if tree.symlink_metadata().is_ok() {
            fsnar::make_writable_and_remove(&tree)
                .map_err(|e| StoreError::io(format!("cannot clear {}", tree.display()), e))?;
        }
        let staged = Staged {
            info,
            tree,
            moved: false,
            _lock: lock.0,
            _area: area,
        };
        build(&staged.tree)?;
        Ok(staged)
    }

    /// Makes a batch of staged paths valid: one `syncfs`, the renames into the store dir,
    /// one fsync of the store dir, one transaction. Every reference of every path must be
    /// valid or in the batch; the batch is put in reference order here. On error, paths
    /// already renamed stay as unregistered leftovers, which the next install of the same
    /// path replaces: nothing becomes valid without its tree being complete.
    pub(crate) fn commit_staged(&self, batch: Vec<Staged>) -> Result<Vec<PathInfo>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = references_first(batch, |s| &s.info.path, |s| &s.info.references);
        // References outside the batch must stay valid until the batch is registered.
        self.add_temp_roots(batch.iter().flat_map(|s| &s.info.references))?;
        {
            let db = self.db();
            let in_batch: HashSet<&StorePath> = batch.iter().map(|s| &s.info.path).collect();
            for s in &batch {
                for r in s.info.references.iter().filter(|r| **r != s.info.path) {
                    if !in_batch.contains(r) && !db.is_valid(r)? {
                        return Err(StoreError::MissingReferences {
                            path: self.print_path(&s.info.path),
                            missing: vec![self.print_path(r)],
                        });
                    }
                }
            }
        }
        let started = std::time::Instant::now();
        let area = batch[0]._area.clone();
        sync_filesystem(area.path())
            .map_err(|e| StoreError::io("cannot sync the store's filesystem", e))?;
        for s in &mut batch {
            self.move_into_place(s)?;
        }
        File::open(self.layout.real_store())
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io("cannot sync the store dir after installing", e))?;
        let now = now();
        let mut infos: Vec<PathInfo> = batch.iter().map(|s| s.info.clone()).collect();
        for info in &mut infos {
            info.registration_time = now;
        }
        let drv_outputs: Vec<_> = batch
            .iter()
            .filter_map(|s| self.declared_outputs(&s.info.path))
            .collect();
        self.db().register_with_outputs(&infos, &drv_outputs)?;
        for info in &infos {
            tracing::debug!("installed {}", self.print_path(&info.path));
        }
        tracing::debug!(
            "committed {} path(s) in {:.1?}",
            infos.len(),
            started.elapsed()
        );
        Ok(infos)
    }

    /// The outputs a `.drv` path (now in place) declares, to record with its registration
    /// however it came (instantiated, substituted, imported), so that keep-outputs and
    /// `valid_derivers` know them. A `.drv` that does not parse is registered all the same
    /// (it is only bytes to us), without outputs.
    fn declared_outputs(
        &self,
        path: &StorePath,
    ) -> Option<(StorePath, BTreeMap<String, StorePath>)> {
        if !path.name().ends_with(DRV_EXTENSION) {
            return None;
        }
        let real = self.layout.real_path(path);
        let read = File::open(&real).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(MAX_DRV_SIZE + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        let parsed = match read {
            Ok(bytes) if bytes.len() as u64 <= MAX_DRV_SIZE => {
                Derivation::parse_store_drv(&bytes, self.store_dir(), path)
                    .map_err(|e| Chain(&e).to_string())
            }
            Ok(_) => Err(format!("larger than {MAX_DRV_SIZE} bytes")),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(drv) => Some((path.clone(), drv.owned_output_paths())),
            Err(e) => {
                tracing::warn!(
                    "'{}' is not a derivation we can read ({e}); its outputs are not recorded",
                    self.print_path(path)
                );
                None
            }
        }
    }

    fn move_into_place(&self, s: &mut Staged) -> Result<(), StoreError> {
        let printed = self.print_path(&s.info.path);
        let io_err = |what: &str, e| StoreError::io(format!("{what} '{printed}'"), e);
        let real = self.layout.real_path(&s.info.path);
        // The usual case, in one call: nothing is there. Anything else (something is there,
        // a directory that needs write permission to move, no renameat2) takes the way below.
        let cwd = rustix::fs::CWD;
        if rustix::fs::renameat_with(cwd, &s.tree, cwd, &real, RenameFlags::NOREPLACE).is_ok() {
            s.moved = true;
            return Ok(());
        }
        // A directory here that is not registered is what an interrupted install left
        // between its rename and its registration: replace it.
        match fs::symlink_metadata(&real) {
            Ok(_) => {
                tracing::warn!("replacing unregistered leftover {}", real.display());
                fsnar::make_writable_and_remove(&real)
                    .map_err(|e| io_err("cannot remove the unregistered leftover of", e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot inspect", e)),
        }
        fsnar::rename_tree(&s.tree, &real).map_err(|e| io_err("cannot move into place", e))?;
        s.moved = true;
        Ok(())
    }

    /// Starts writing back everything pending on the store's filesystem (a `syncfs`),
    /// ignoring errors: a hint that makes the next commit's sync cheaper, not a guarantee.
    pub(crate) fn flush_ahead(&self) {
        if let Err(e) = sync_filesystem(self.layout.real_store()) {
            tracing::debug!("early sync of the store's filesystem failed: {e}");
        }
    }

    /// The staging dir shared by everything currently staged by this store handle.
    fn staging_area(&self) -> Result<Arc<TempDir>, StoreError> {
        let mut slot = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(area) = slot.upgrade() {
            return Ok(area);
        }
        let area = Arc::new(
            TempDir::new(&self.layout)
                .map_err(|e| StoreError::io("cannot create a temp dir in the store", e))?,
        );
        *slot = Arc::downgrade(&area);
        Ok(area)
    }
}

/// The slot [`LocalStore`] keeps its staging dir in.
pub(super) type StagingSlot = std::sync::Mutex<Weak<TempDir>>;

/// Sorts `items` so that each comes after those of its references (`refs_of`) that are
/// among them (matched by `path_of`). Cycles do not stop it: their members come out in
/// some order.
pub fn references_first<T>(
    items: Vec<T>,
    path_of: impl Fn(&T) -> &StorePath,
    refs_of: impl Fn(&T) -> &BTreeSet<StorePath>,
) -> Vec<T> {
    let index: std::collections::HashMap<StorePath, usize> = items
        .iter()
        .enumerate()
        .map(|(i, t)| (path_of(t).clone(), i))
        .collect();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    let mut state = vec![0u8; slots.len()]; // 0 new, 1 visiting, 2 done
    for start in 0..slots.len() {
        // Iterative depth-first search (chains can be long).
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if expanded {
                state[i] = 2;
                if let Some(t) = slots[i].take() {
                    out.push(t);
                }
                continue;
            }
            if state[i] != 0 {
                continue;
            }
            state[i] = 1;
            stack.push((i, true));
            let Some(t) = slots[i].as_ref() else { continue };
            for r in refs_of(t) {
                if let Some(&j) = index.get(r) {
                    if j != i && state[j] == 0 {
                        stack.push((j, false));
                    }
                }
            }
        }
    }
    out
}

/// Flushes the filesystem holding `dir` (one `syncfs` instead of an fsync per file).
fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::format::hash::{Hash, HashAlgo, HashSink};
    use crate::format::store_path::{StoreDir, StorePathName};
    use crate::store::{Layout, NarImport};

    /// Metadata and NAR of a one-file path with `body`, referencing `refs`.
    fn file_path(
        store: &LocalStore,
        name: &str,
        body: &str,
        refs: &[&StorePath],
    ) -> (NarImport, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, body).unwrap();
        let mut nar = Vec::new();
        fsnar::dump(&f, &mut nar).unwrap();
        let mut sink = HashSink::new(HashAlgo::Sha256);
        io::Write::write_all(&mut sink, &nar).unwrap();
        let (nar_hash, nar_size) = sink.finish();
        let references: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
        let path = store
            .store_dir()
            .make_text_path(
                &Hash::of(HashAlgo::Sha256, body.as_bytes()),
                references.iter(),
                &StorePathName::new(name).unwrap(),
            )
            .unwrap();
        let meta = NarImport {
            path,
            nar_hash,
            nar_size,
            references,
            deriver: None,
            sigs: BTreeSet::new(),
            ca: None,
        };
        (meta, nar)
    }

    fn stage(store: &LocalStore, meta: NarImport, nar: &[u8]) -> Staged {
        match store
            .stage_nar(meta, StageOptions::default(), || Ok::<_, io::Error>(nar))
            .unwrap()
        {
            Stage::Staged(s) => s,
            Stage::Valid(_) => panic!("already valid"),
        }
    }

    #[test]
    fn batches_commit_in_reference_order_and_need_their_references() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(Layout::new(
            StoreDir::new("/ix/store").unwrap(),
            Some(root.path()),
        ))
        .unwrap();
        let (a, nar_a) = file_path(&store, "a", "a\n", &[]);
        let (b, nar_b) = file_path(&store, "b", "b\n", &[&a.path]);
        let (c, nar_c) = file_path(&store, "c", "c\n", &[&b.path]);
        let (pa, pb, pc) = (a.path.clone(), b.path.clone(), c.path.clone());

        // Staged paths are invisible, and a batch missing a reference is refused whole.
        let sb = stage(&store, b, &nar_b);
        assert!(!store.layout().real_path(&pb).exists());
        let err = store.commit_staged(vec![sb]).unwrap_err();
        assert!(matches!(err, StoreError::MissingReferences { .. }), "{err}");
        assert!(!store.is_valid(&pb).unwrap());
        assert!(!store.layout().real_path(&pb).exists());

        // Given out of order, a complete batch is sorted and committed in one go.
        let (b, _) = file_path(&store, "b", "b\n", &[&pa]);
        let batch = vec![
            stage(&store, c, &nar_c),
            stage(&store, b, &nar_b),
            stage(&store, a, &nar_a),
        ];
        let infos = store.commit_staged(batch).unwrap();
        let order: Vec<_> = infos.iter().map(|i| i.path.clone()).collect();
        assert_eq!(order, vec![pa.clone(), pb.clone(), pc.clone()]);
        for p in [&pa, &pb, &pc] {
            assert!(store.is_valid(p).unwrap());
            assert!(store.layout().real_path(p).exists());
        }
        // The staging dir is gone once nothing is staged.
        let leftovers: Vec<_> = fs::read_dir(store.layout().real_store())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Staging a valid path builds nothing.
        let (a2, _) = file_path(&store, "a", "a\n", &[]);
        assert!(matches!(
            store.stage_nar(a2, StageOptions::default(), || {
                Err::<&[u8], _>("must not open")
            }),
            Ok(Stage::Valid(_))
        ));
    }
}
