//! Step 4 of a local build, [`Job::collect_outputs`]: each output is checked to exist,
//! canonicalised, hashed and scanned for references in one pass over its NAR, held to its
//! declared hash if fixed, and then either compared with the valid path (`check`) or
//! described and signed for registration.

use crate::format::path_meta::PathMeta;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::prepare::Prepared;
use super::{BuildError, Job};
use crate::build::canonicalise::canonicalise_output;
use crate::build::refscan::{RefScanError, RefScanSink};
use crate::format::ca::ContentAddress;
use crate::format::derivation::{FixedOutputHash, OutputHashMode};
use crate::format::hash::{Hash, HashAlgo, HashSink, Hasher};
use crate::format::narinfo::fingerprint;
use crate::format::store_path::StorePath;
use crate::fsnar;
use crate::store::PathInfo;

/// What the build made of one output, ready to compare or register.
struct Examined {
    nar_hash: Hash,
    nar_size: u64,
    references: BTreeSet<StorePath>,
    /// Set for a fixed output.
    ca: Option<ContentAddress>,
}

impl Job<'_> {
    /// Examines every output, in name order (the first failure is the error). With `check`
    /// each is compared with its valid path and nothing is returned; otherwise the signed
    /// info of each output.
    pub(super) fn collect_outputs(
        &self,
        prepared: &Prepared,
        valid: &BTreeMap<String, PathInfo>,
    ) -> Result<Vec<(String, PathInfo)>, BuildError> {
        // An output may refer to its input closure and to the outputs themselves.
        let mut candidates: Vec<StorePath> = prepared.closure.iter().cloned().collect();
        candidates.extend(self.outputs.values().map(|p| (*p).clone()));
        let mut results = Vec::new();
        for (name, path) in &self.outputs {
            let examined = self.examine_output(name, path, &prepared.dest(name), &candidates)?;
            if self.config.check {
                self.compare_with_valid(path, &valid[*name], &examined)?;
            } else {
                results.push(((*name).to_owned(), self.signed_info(path, examined)));
            }
        }
        Ok(results)
    }

    /// The output `name` (store path `path`) that the build left at `built`: it must exist;
    /// it is canonicalised in place, then hashed and scanned, then checked if fixed.
    fn examine_output(
        &self,
        name: &str,
        path: &StorePath,
        built: &Path,
        candidates: &[StorePath],
    ) -> Result<Examined, BuildError> {
        let printed_path = self.store.print_path(path);
        if fs::symlink_metadata(built).is_err() {
            return Err(BuildError::MissingOutput {
                drv: self.printed.clone(),
                output: name.to_owned(),
                path: printed_path,
            });
        }
        canonicalise_output(built).map_err(|source| BuildError::Canonicalise {
            drv: self.printed.clone(),
            path: printed_path.clone(),
            source: Box::new(source),
        })?;
        let (nar_hash, nar_size, references) =
            hash_and_scan(built, candidates).map_err(|source| BuildError::Scan {
                drv: self.printed.clone(),
                path: printed_path.clone(),
                source: Box::new(source),
            })?;
        let ca = self.check_fixed_output(&printed_path, built, &nar_hash, &references)?;
        Ok(Examined {
            nar_hash,
            nar_size,
            references,
            ca,
        })
    }

    /// For a fixed-output derivation, the output at `built` must have the declared hash
    /// and no references; returns its content address. `None` for any other derivation.
    fn check_fixed_output(
        &self,
        printed_path: &str,
        built: &Path,
        nar_hash: &Hash,
        references: &BTreeSet<StorePath>,
    ) -> Result<Option<ContentAddress>, BuildError> {
        let Some((_, fod)) = self.drv.fixed_output() else {
            return Ok(None);
        };
        let got = fixed_output_hash(fod, nar_hash, built).map_err(|source| BuildError::Io {
            drv: self.printed.clone(),
            context: format!("cannot hash output '{printed_path}'"),
            source,
        })?;
        if got != fod.hash {
            return Err(BuildError::FixedOutputMismatch {
                drv: self.printed.clone(),
                specified: fod.hash.to_sri(),
                got: got.to_sri(),
            });
        }
        if !references.is_empty() {
            let refs: Vec<String> = references
                .iter()
                .map(|r| self.store.print_path(r))
                .collect();
            return Err(BuildError::FixedOutputReferences {
                drv: self.printed.clone(),
                refs: refs.join(", "),
            });
        }
        Ok(Some(fod.content_address()))
    }

    /// With `check`: the rebuilt output must have the NAR hash of the valid path `before`.
    fn compare_with_valid(
        &self,
        path: &StorePath,
        before: &PathInfo,
        examined: &Examined,
    ) -> Result<(), BuildError> {
        if before.nar_hash == examined.nar_hash {
            return Ok(());
        }
        Err(BuildError::NotDeterministic {
            drv: self.printed.clone(),
            path: self.store.print_path(path),
            expected: before.nar_hash.to_sri(),
            got: examined.nar_hash.to_sri(),
        })
    }

    /// The info to register for output `path`: built here (ultimate), deriver set, signed
    /// with every configured key.
    fn signed_info(&self, path: &StorePath, examined: Examined) -> PathInfo {
        let Examined {
            nar_hash,
            nar_size,
            references,
            ca,
        } = examined;
        let fingerprint = fingerprint(
            self.store.store_dir(),
            path,
            &nar_hash,
            nar_size,
            &references,
        );
        let sigs = self
            .config
            .signing_keys
            .iter()
            .map(|k| k.sign(&fingerprint))
            .collect();
        PathInfo {
            meta: PathMeta {
                path: path.clone(),
                nar_hash,
                nar_size,
                references,
                deriver: Some(self.drv_path.clone()),
                sigs,
                ca,
            },
            registration_time: 0,
            ultimate: true,
        }
    }
}

/// The sha256 NAR hash, the NAR size and the references among `candidates` of the tree at
/// `path`, in one pass over its NAR.
fn hash_and_scan(
    path: &Path,
    candidates: &[StorePath],
) -> Result<(Hash, u64, BTreeSet<StorePath>), RefScanError> {
    struct Tee<'a> {
        hash: &'a mut HashSink,
        scan: &'a mut RefScanSink,
    }
    impl Write for Tee<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.hash.write_all(buf)?;
            self.scan.feed(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut hash = HashSink::new(HashAlgo::Sha256);
    let mut scan = RefScanSink::new(candidates.iter().map(|p| p.hash_str()))?;
    fsnar::dump(
        path,
        Tee {
            hash: &mut hash,
            scan: &mut scan,
        },
    )?;
    let (nar_hash, nar_size) = hash.finish();
    let found = scan.into_found();
    let refs = candidates
        .iter()
        .filter(|p| found.contains(p.hash_str()))
        .cloned()
        .collect();
    Ok((nar_hash, nar_size, refs))
}

/// The hash of the fixed output at `tree` as `fod` declares it (algorithm and mode), to
/// compare with the declared one; `nar_hash` is its sha256 NAR hash, already known.
fn fixed_output_hash(fod: &FixedOutputHash, nar_hash: &Hash, tree: &Path) -> io::Result<Hash> {
    let algo = fod.hash.algo();
    match fod.mode {
        OutputHashMode::Recursive if algo == HashAlgo::Sha256 => Ok(*nar_hash),
        OutputHashMode::Recursive => {
            let mut h = Hasher::new(algo);
            fsnar::dump(tree, &mut h).map_err(io::Error::other)?;
            Ok(h.finish())
        }
        OutputHashMode::Flat => {
            let meta = fs::symlink_metadata(tree)?;
            if !meta.file_type().is_file() {
                return Err(io::Error::other(
                    "a flat fixed output must be a single regular file",
                ));
            }
            let mut h = Hasher::new(algo);
            io::copy(&mut fs::File::open(tree)?, &mut h)?;
            Ok(h.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_of(tree: &Path) -> Vec<u8> {
        let mut nar = Vec::new();
        fsnar::dump(tree, &mut nar).unwrap();
        nar
    }

    #[test]
    fn hash_and_scan_hashes_the_nar_and_finds_only_mentioned_candidates() {
        let tmp = tempfile::tempdir().unwrap();
        let mentioned: StorePath = "7rjj86a15146cq0bhw5dds9nn1lrnxpl-dep".parse().unwrap();
        let other: StorePath = "0c5x8v6ha7mb3rw2i7qv5mbf1plwm8ac-other".parse().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("f"), format!("uses /ix/store/{mentioned}/bin")).unwrap();
        let (hash, size, refs) = hash_and_scan(&out, &[mentioned.clone(), other]).unwrap();
        let nar = nar_of(&out);
        assert_eq!(hash, Hash::of(HashAlgo::Sha256, &nar));
        assert_eq!(size, nar.len() as u64);
        assert_eq!(refs, BTreeSet::from([mentioned]));
    }

    #[test]
    fn fixed_output_hash_follows_the_declared_mode_and_algorithm() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"fixed output content\n").unwrap();
        let nar_sha256 = Hash::of(HashAlgo::Sha256, &nar_of(&file));
        let fod = |mode, hash| FixedOutputHash { mode, hash };

        // Flat: the file's own bytes, in the declared algorithm.
        let flat = Hash::of(HashAlgo::Sha1, b"fixed output content\n");
        let got = fixed_output_hash(&fod(OutputHashMode::Flat, flat), &nar_sha256, &file);
        assert_eq!(got.unwrap(), flat);
        // Recursive sha256: the NAR hash already computed, not a second pass.
        let unrelated = Hash::of(HashAlgo::Sha256, b"not the nar");
        let rec = fod(OutputHashMode::Recursive, nar_sha256);
        assert_eq!(
            fixed_output_hash(&rec, &unrelated, &file).unwrap(),
            unrelated
        );
        // Recursive with another algorithm: the NAR hashed again.
        let rec_sha1 = fod(OutputHashMode::Recursive, flat);
        assert_eq!(
            fixed_output_hash(&rec_sha1, &nar_sha256, &file).unwrap(),
            Hash::of(HashAlgo::Sha1, &nar_of(&file))
        );
        // A flat output must be a regular file.
        let err = fixed_output_hash(&fod(OutputHashMode::Flat, flat), &nar_sha256, tmp.path());
        assert!(err.unwrap_err().to_string().contains("single regular file"));
    }
}
