//! [`PathMeta`]: what is known about one store path whatever carries it — a narinfo, a NAR
//! to import, a row of the store's database. Those types hold a `PathMeta` and add their
//! own fields (a narinfo its file URL and compression, a database row its registration),
//! so the seven fields are written once. See store-format.md §4 (narinfo) and "Database".

use std::collections::BTreeSet;

use super::ca::ContentAddress;
use super::hash::Hash;
use super::keys::Signature;
use super::narinfo::NarInfo;
use super::store_path::StorePath;

/// The metadata of one store path: its NAR's hash and size, references, deriver,
/// signatures and content address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMeta {
    pub path: StorePath,
    /// sha256 of the path's NAR serialisation.
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// May include `path` itself (a self-reference).
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    /// Signatures of the path's fingerprint, as a set (stored and printed sorted by their
    /// `name:base64` text).
    pub sigs: BTreeSet<Signature>,
    pub ca: Option<ContentAddress>,
}

/// Parses signature texts (a narinfo's `Sig:` values, a database `sigs` column), keeping
/// the well-formed ones. A malformed signature cannot verify under any key, so dropping it
/// changes no trust decision; a narinfo's own check (`TrustedKeys::count_valid`) sees the
/// raw text before this runs.
pub fn parse_signatures<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeSet<Signature> {
    texts
        .into_iter()
        .filter_map(|t| Signature::parse(t).ok())
        .collect()
}

impl From<&NarInfo> for PathMeta {
    /// The metadata a narinfo gives for its path. Malformed signatures are dropped (see
    /// [`parse_signatures`]).
    fn from(info: &NarInfo) -> Self {
        PathMeta {
            path: info.store_path().clone(),
            nar_hash: *info.nar_hash(),
            nar_size: info.nar_size(),
            references: info.references().clone(),
            deriver: info.deriver().cloned(),
            sigs: parse_signatures(info.sigs().iter().map(String::as_str)),
            ca: info.ca().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::HashAlgo;
    use crate::format::keys::SecretKey;
    use crate::format::store_path::StorePathHash;

    #[test]
    fn a_narinfo_gives_its_metadata_with_well_formed_signatures_only() {
        let path = StorePath::from_parts(StorePathHash::new([3; 20]), &"x".parse().unwrap());
        let nar_hash = Hash::of(HashAlgo::Sha256, b"nar");
        let mut ni = NarInfo::new(path.clone(), "nar/x.nar", nar_hash, 120).unwrap();
        let good = SecretKey::from_seed("k", &[5; 32]).unwrap().sign("fp");
        ni.add_sig(&good.to_string()).unwrap();
        ni.add_sig("k:AA").unwrap(); // too short: can never verify
        let meta = PathMeta::from(&ni);
        assert_eq!(meta.path, path);
        assert_eq!((meta.nar_hash, meta.nar_size), (nar_hash, 120));
        assert_eq!(meta.sigs, BTreeSet::from([good]));
    }
}
