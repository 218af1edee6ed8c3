//! The trust policy for paths that come from elsewhere (a substituter, or an upload to
//! `store serve`). It fails closed: a narinfo is acceptable only if it is for the path that
//! was asked for and carries at least one valid signature by a trusted key, whatever the
//! path's kind (content-addressed paths get no exemption, unlike Nix 2.8).

use thiserror::Error;

use crate::format::keys::{KeyError, TrustedKeys};
use crate::format::narinfo::NarInfo;
use crate::format::store_path::{StoreDir, StorePath};

/// Why a narinfo is not trusted.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("asked for '{asked}' but got a narinfo for '{got}'")]
    WrongPath { asked: String, got: String },
    #[error("'{path}' has no signature by a trusted key ({sigs} signature(s) present)")]
    Unsigned { path: String, sigs: usize },
    #[error("'{path}' has a malformed signature")]
    BadSignature {
        path: String,
        #[source]
        source: KeyError,
    },
    #[error("no trusted public keys are configured (set trusted-public-keys)")]
    NoTrustedKeys,
}

/// Checks that `info` describes `asked` and is signed by one of `keys`.
pub fn check_narinfo(
    info: &NarInfo,
    asked: &StorePath,
    keys: &TrustedKeys,
    store_dir: &StoreDir,
) -> Result<(), TrustError> {
    if info.store_path() != asked {
        return Err(TrustError::WrongPath {
            asked: store_dir.display_path(asked),
            got: store_dir.display_path(info.store_path()),
        });
    }
    if keys.is_empty() {
        return Err(TrustError::NoTrustedKeys);
    }
    let path = || store_dir.display_path(asked);
    match info.verify(keys, store_dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TrustError::Unsigned {
            path: path(),
            sigs: info.sigs().len(),
        }),
        Err(source) => Err(TrustError::BadSignature {
            path: path(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::{Hash, HashAlgo};
    use crate::format::keys::SecretKey;

    #[test]
    fn fails_closed() {
        let dir = StoreDir::new("/nix/store").unwrap();
        let p: StorePath = "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c".parse().unwrap();
        let q: StorePath = "a8z667l486sd21m8rs058ir3b2sh8k14-other".parse().unwrap();
        let key = SecretKey::from_seed("k-1", &[7; 32]).unwrap();
        let other = SecretKey::from_seed("k-1", &[8; 32]).unwrap();
        let keys = TrustedKeys::from_keys([key.to_public()]).unwrap();
        let mut info =
            NarInfo::new(p.clone(), "nar/x.nar", Hash::of(HashAlgo::Sha256, b"n"), 8).unwrap();
        assert!(matches!(
            check_narinfo(&info, &p, &keys, &dir),
            Err(TrustError::Unsigned { .. })
        ));
        info.sign(&other, &dir);
        assert!(
            check_narinfo(&info, &p, &keys, &dir).is_err(),
            "same name, other key"
        );
        info.sign(&key, &dir);
        check_narinfo(&info, &p, &keys, &dir).unwrap();
        assert!(matches!(
            check_narinfo(&info, &q, &keys, &dir),
            Err(TrustError::WrongPath { .. })
        ));
        assert!(matches!(
            check_narinfo(&info, &p, &TrustedKeys::new(), &dir),
            Err(TrustError::NoTrustedKeys)
        ));
    }
}
