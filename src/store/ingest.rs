//! Making paths valid: `add` (a tree on disk becomes a `source` path) and `import_nar`
//! (a NAR stream with known metadata, the entry point substitution uses).
//!
//! Both follow the same protocol, [`super::stage`]'s stage-then-commit for one path: lock
//! the path, return early if it is already valid, build the tree in a private temp dir
//! inside the store's filesystem (canonicalised as it is written: 0444/0555 files, 0555
//! dirs, mtime 1), check its NAR hash and size, `syncfs`, rename into place, fsync the store
//! dir, and register it in one transaction whose references are already valid. Substitution
//! stages many paths in parallel and commits them in batches instead.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::stage::{InstallLock, Stage, StageOptions, Staged};
use super::{LocalStore, PathInfo, StoreError};
use crate::error_chain::Chain;
use crate::format::ca::ContentAddress;
use crate::format::hash::{Hash, HashAlgo, Hasher};
use crate::format::path_meta::PathMeta;
use crate::format::store_path::StorePathName;
use crate::fsnar::{self, FsNarError, RestoreOptions};

/// The metadata that comes with a NAR to import (from a narinfo, typically): a
/// [`PathMeta`], which is all an import needs.
pub type NarImport = PathMeta;

/// Why `LocalStore::stage_nar` failed: opening the stream, or the import.
#[derive(Debug)]
pub enum ImportError<E> {
    Open(E),
    Store(StoreError),
}

impl<E> From<StoreError> for ImportError<E> {
    fn from(e: StoreError) -> Self {
        ImportError::Store(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ImportError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Open(e) => e.fmt(f),
            ImportError::Store(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ImportError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImportError::Open(e) => e.source(),
            ImportError::Store(e) => e.source(),
        }
    }
}

/// What an add or import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOutcome {
    pub info: PathInfo,
    /// False when the path was already valid and nothing was written.
    pub installed: bool,
}

impl LocalStore {
    /// Adds the tree at `src` as a `source` path named `name` (what `nix-store --add`
    /// does). The tree is hashed first; if the path is already valid nothing is copied.
    /// Otherwise it is copied (and hashed again, to catch a tree that changes under us).
    pub fn add_tree(&self, src: &Path, name: &StorePathName) -> Result<AddOutcome, StoreError> {
        // The caller names `src`; these say which step failed.
        let nar_err = |context: &str| {
            let context = context.to_owned();
            move |source| StoreError::Nar { context, source }
        };
        let (nar_hash, nar_size) =
            super::hash_tree(src).map_err(nar_err("cannot hash the tree"))?;
        let path = self
            .store_dir()
            .make_source_path(&nar_hash, [], false, name);
        self.add_temp_root(&path)?; // gc: before checking validity (see roots.rs)
        let info = PathInfo {
            meta: PathMeta {
                path: path.clone(),
                nar_hash,
                nar_size,
                references: BTreeSet::new(),
                deriver: None,
                sigs: BTreeSet::new(),
                ca: Some(ContentAddress::source(nar_hash)),
            },
            registration_time: 0,
            ultimate: false,
        };
        self.install(info, |dest| {
            let (digest, size) = fsnar::copy_tree_hashing(src, dest)
                .map_err(nar_err("cannot copy the tree into the store"))?;
            if Hash::sha256(digest) != nar_hash || size != nar_size {
                return Err(StoreError::SourceChanged(src.display().to_string()));
            }
            Ok(())
        })
    }

    /// Imports a NAR whose metadata is known. Refuses before reading anything unless every
    /// reference is valid (or is the path itself). The stream is hashed and counted while it
    /// is unpacked, and is cut off after `nar_size` bytes; nothing becomes visible unless
    /// size, hash and (for content-addressed paths) the content address all match. If the
    /// path is already valid the stream is not read.
    pub fn import_nar(&self, meta: NarImport, nar: impl Read) -> Result<AddOutcome, StoreError> {
        self.import_nar_with(meta, || Ok::<_, std::convert::Infallible>(nar))
            .map_err(|e| match e {
                ImportError::Store(e) => e,
                ImportError::Open(never) => match never {},
            })
    }

    /// [`LocalStore::import_nar`], with the stream opened by `open` only once the path's
    /// lock is held and the path is known not to be valid.
    fn import_nar_with<R: Read, E>(
        &self,
        meta: NarImport,
        open: impl FnOnce() -> Result<R, E>,
    ) -> Result<AddOutcome, ImportError<E>> {
        // gc: temp roots before checking validity, for the path and its references.
        self.add_temp_roots(std::iter::once(&meta.path).chain(&meta.references))?;
        let printed = self.print_path(&meta.path);
        let missing: Vec<String> = {
            let db = self.db();
            let mut missing = Vec::new();
            for r in meta.references.iter().filter(|r| **r != meta.path) {
                if !db.is_valid(r).map_err(StoreError::from)? {
                    missing.push(self.print_path(r));
                }
            }
            missing
        };
        if !missing.is_empty() {
            return Err(StoreError::MissingReferences {
                path: printed,
                missing,
            }
            .into());
        }
        Ok(self.complete(self.stage_nar(meta, StageOptions::default(), open)?)?)
    }

    /// The first half of [`LocalStore::import_nar`]: checks the metadata, then locks the
    /// path and, unless it is valid, opens the stream with `open` and unpacks and checks
    /// the NAR into the staging dir (see [`super::stage`]). References need not be valid
    /// yet; the commit checks them.
    pub(crate) fn stage_nar<R: Read, E>(
        &self,
        meta: NarImport,
        opts: StageOptions<'_>,
        open: impl FnOnce() -> Result<R, E>,
    ) -> Result<Stage, ImportError<E>> {
        let info = self.import_info(meta)?;
        let expect = info.clone();
        self.stage(info, opts, move |dest| {
            let nar = open().map_err(ImportError::Open)?;
            Ok(self.unpack_checked(&expect, dest, nar)?)
        })
    }

    /// Like [`LocalStore::stage_nar`] for a path whose install lock the caller holds
    /// and knows not to be valid, with the NAR at hand.
    pub(crate) fn stage_nar_locked(
        &self,
        lock: InstallLock,
        meta: NarImport,
        nar: impl Read,
    ) -> Result<Staged, StoreError> {
        let info = self.import_info(meta)?;
        let expect = info.clone();
        self.stage_locked(lock, info, move |dest| {
            self.unpack_checked(&expect, dest, nar)
        })
    }

    /// The path info an import registers, once the content address (if any) is checked to
    /// give the path.
    fn import_info(&self, meta: NarImport) -> Result<PathInfo, StoreError> {
        if let Some(ca) = &meta.ca {
            let refs = meta.references.iter().filter(|r| **r != meta.path);
            let self_ref = meta.references.contains(&meta.path);
            let name = StorePathName::new(meta.path.name())?;
            let expected = ca.store_path(self.store_dir(), &name, refs, self_ref)?;
            if expected != meta.path {
                return Err(StoreError::CaMismatch {
                    path: self.print_path(&meta.path),
                    what: format!("{ca} gives {}", self.print_path(&expected)),
                });
            }
        }
        Ok(PathInfo {
            meta,
            registration_time: 0,
            ultimate: false,
        })
    }

    /// Unpacks `nar` at `dest` (canonical), reading at most NarSize + 1 bytes, and checks
    /// its size, hash and content address against `info`.
    fn unpack_checked(
        &self,
        info: &PathInfo,
        dest: &Path,
        nar: impl Read,
    ) -> Result<(), StoreError> {
        let printed = self.print_path(&info.path);
        // One byte more than announced is enough to notice an oversized stream.
        let bound = info.nar_size.saturating_add(1);
        let mut limited = nar.take(bound);
        let restored = fsnar::restore(&mut limited, dest, RestoreOptions::canonical());
        let read = bound - limited.limit();
        let stats = match restored {
            Ok(stats) => stats,
            Err(_) if read > info.nar_size => {
                return Err(StoreError::SizeMismatch {
                    path: printed,
                    expected: info.nar_size,
                    got: read,
                })
            }
            Err(source) => {
                // Writing the tree is our side (a full disk); anything else is the NAR's.
                let context = match &source {
                    FsNarError::Io(_) => format!("cannot unpack '{printed}'"),
                    _ => format!("invalid NAR for '{printed}'"),
                };
                return Err(StoreError::Nar { context, source });
            }
        };
        if stats.nar_size != info.nar_size {
            return Err(StoreError::SizeMismatch {
                path: printed,
                expected: info.nar_size,
                got: stats.nar_size,
            });
        }
        let got_hash = Hash::sha256(stats.nar_sha256);
        if got_hash != info.nar_hash {
            return Err(StoreError::HashMismatch {
                path: printed,
                expected: info.nar_hash.to_string(),
                got: got_hash.to_string(),
            });
        }
        if let Some(ca) = &info.ca {
            let contents = stats.root_file_sha256.map(Hash::sha256);
            check_content_address(ca, &info.nar_hash, contents, dest).map_err(|what| {
                StoreError::CaMismatch {
                    path: printed,
                    what,
                }
            })?;
        }
        Ok(())
    }

    /// The shared install protocol for one path: stage it, then commit it alone. `build`
    /// must create the (canonicalised) tree at the path it is given and check it; it is
    /// only called when the path is not yet valid.
    pub(super) fn install<E: From<StoreError>>(
        &self,
        info: PathInfo,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<AddOutcome, E> {
        Ok(self.complete(self.stage(info, StageOptions::default(), build)?)?)
    }

    /// The end of a one-path install: nothing to do if it was valid, else commit it alone.
    fn complete(&self, stage: Stage) -> Result<AddOutcome, StoreError> {
        match stage {
            Stage::Valid(info) => Ok(AddOutcome {
                info,
                installed: false,
            }),
            Stage::Staged(staged) => {
                let mut infos = self.commit_staged(vec![staged])?;
                Ok(AddOutcome {
                    info: infos.remove(0),
                    installed: true,
                })
            }
        }
    }
}

/// Checks a content address against the unpacked tree: recursive hashes are NAR hashes
/// (already checked for sha256, recomputed otherwise); flat and text hashes cover the
/// bytes of a single regular file (`contents`: their sha256 if the unpacking computed it).
fn check_content_address(
    ca: &ContentAddress,
    nar_hash: &Hash,
    contents: Option<Hash>,
    tree: &Path,
) -> Result<(), String> {
    let (recursive, expected) = match ca {
        ContentAddress::Text(h) => (false, *h),
        ContentAddress::Fixed { recursive, hash } => (*recursive, *hash),
    };
    let got = if recursive {
        if expected.algo() == HashAlgo::Sha256 {
            *nar_hash
        } else {
            let mut h = Hasher::new(expected.algo());
            fsnar::dump(tree, &mut h).map_err(|e| Chain(&e).to_string())?;
            h.finish()
        }
    } else if let Some(h) = contents.filter(|_| expected.algo() == HashAlgo::Sha256) {
        h
    } else {
        let meta = fs::symlink_metadata(tree).map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() {
            return Err(format!("{ca} requires a single regular file"));
        }
        let mut h = Hasher::new(expected.algo());
        io::copy(&mut File::open(tree).map_err(|e| e.to_string())?, &mut h)
            .map_err(|e| e.to_string())?;
        h.finish()
    };
    if got == expected {
        Ok(())
    } else {
        Err(format!("expected {expected}, got {got}"))
    }
}
