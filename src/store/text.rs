//! `add_text`: a file given as bytes becomes a `text` path (what `builtins.toFile` and
//! the writing of `.drv` files do in Nix), with references that must already be valid.
//! The file goes through the same install protocol as every other path.
//! `read_derivation` reads such a file back when it is a `.drv`.

use crate::format::path_meta::PathMeta;
use std::collections::BTreeSet;

use super::{AddOutcome, LocalStore, PathInfo, StoreError};
use crate::format::ca::ContentAddress;
use crate::format::derivation::Derivation;
use crate::format::hash::{Hash, HashAlgo};
use crate::format::nar::NarWriter;
use crate::format::store_path::{StorePath, StorePathName};
use crate::fsnar::{self, RestoreOptions};

impl LocalStore {
    /// The derivation in the valid `.drv` path `path`.
    pub fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreError> {
        self.query_valid(path)?;
        let printed = self.print_path(path);
        let bytes = std::fs::read(self.layout.real_path(path))
            .map_err(|e| StoreError::io(format!("cannot read '{printed}'"), e))?;
        Derivation::parse_store_drv(&bytes, self.store_dir(), path).map_err(|source| {
            StoreError::InvalidDerivation {
                path: printed,
                source,
            }
        })
    }

    /// Adds `contents` as the text path `name` with `references` (Nix's
    /// `addTextToStore`). Refuses unless every reference is valid. If the path is already
    /// valid nothing is written.
    pub fn add_text(
        &self,
        name: &StorePathName,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<AddOutcome, StoreError> {
        let content_hash = Hash::of(HashAlgo::Sha256, contents);
        let path = self
            .store_dir()
            .make_text_path(&content_hash, references, name)?;
        let printed = self.print_path(&path);
        let missing: Vec<String> = {
            let db = self.db();
            let mut missing = Vec::new();
            for r in references {
                if !db.is_valid(r)? {
                    missing.push(self.print_path(r));
                }
            }
            missing
        };
        if !missing.is_empty() {
            return Err(StoreError::MissingReferences {
                path: printed,
                missing,
            });
        }
        let nar_err = |source| StoreError::Nar {
            context: format!("cannot serialise '{printed}'"),
            source,
        };
        let mut writer = NarWriter::new(Vec::with_capacity(contents.len() + 200));
        writer
            .regular_bytes(b"", false, contents)
            .map_err(|e| nar_err(e.into()))?;
        let (nar, nar_size) = writer.finish().map_err(|e| nar_err(e.into()))?;
        let nar_hash = Hash::of(HashAlgo::Sha256, &nar);
        let info = PathInfo {
            meta: PathMeta {
                path,
                nar_hash,
                nar_size,
                references: references.clone(),
                deriver: None,
                sigs: BTreeSet::new(),
                ca: Some(ContentAddress::Text(content_hash)),
            },
            registration_time: 0,
            ultimate: false,
        };
        self.install(info, |dest| {
            fsnar::restore(&nar[..], dest, RestoreOptions::canonical()).map_err(nar_err)?;
            Ok(())
        })
    }
}
