//! Content-address assertions (the narinfo `CA:` field and the DB `ca` column):
//! `text:sha256:<nix32>` and `fixed:[r:]<algo>:<nix32>`. See store-format.md.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::hash::{Hash, HashAlgo, HashError};
use super::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// How a content-addressed path was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentAddress {
    /// A text file (`builtins.toFile`, `.drv`): sha256 of the bytes.
    Text(Hash),
    /// A fixed-output path: the hash of the flat file or (recursive) of its NAR.
    Fixed { recursive: bool, hash: Hash },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaError {
    #[error("content address '{0}' has an unknown method")]
    Method(String),
    #[error("invalid hash in content address '{ca}'")]
    Hash {
        ca: String,
        #[source]
        source: HashError,
    },
    #[error("text content address '{0}' must use sha256")]
    TextAlgo(String),
}

impl ContentAddress {
    /// The `source` CA of a NAR hash, as given by `nix-store --add`.
    pub fn source(nar_hash: Hash) -> Self {
        ContentAddress::Fixed {
            recursive: true,
            hash: nar_hash,
        }
    }

    pub fn hash(&self) -> &Hash {
        match self {
            ContentAddress::Text(h) | ContentAddress::Fixed { hash: h, .. } => h,
        }
    }

    /// The store path this content address implies.
    pub fn store_path<'a>(
        &self,
        dir: &StoreDir,
        name: &StorePathName,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        match self {
            ContentAddress::Text(h) => {
                if self_ref {
                    return Err(StorePathError::FixedWithReferences);
                }
                dir.make_text_path(h, refs, name)
            }
            ContentAddress::Fixed { recursive, hash } => {
                dir.make_fixed_output_path(*recursive, hash, refs, self_ref, name)
            }
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text(h) => write!(f, "text:{h}"),
            ContentAddress::Fixed { recursive, hash } => {
                write!(f, "fixed:{}{hash}", if *recursive { "r:" } else { "" })
            }
        }
    }
}

impl FromStr for ContentAddress {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        let hash = |h: &str| {
            h.parse::<Hash>().map_err(|source| CaError::Hash {
                ca: s.to_owned(),
                source,
            })
        };
        if let Some(rest) = s.strip_prefix("text:") {
            let h = hash(rest)?;
            if h.algo() != HashAlgo::Sha256 {
                return Err(CaError::TextAlgo(s.to_owned()));
            }
            Ok(ContentAddress::Text(h))
        } else if let Some(rest) = s.strip_prefix("fixed:r:") {
            Ok(ContentAddress::Fixed {
                recursive: true,
                hash: hash(rest)?,
            })
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            Ok(ContentAddress::Fixed {
                recursive: false,
                hash: hash(rest)?,
            })
        } else {
            Err(CaError::Method(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            "text:sha256:0bdq0l6v0hb0h7m7r3cwrwdrj7l4hbzg3qwphz2dr1jmgpmywkc9",
            "fixed:r:sha256:0bdq0l6v0hb0h7m7r3cwrwdrj7l4hbzg3qwphz2dr1jmgpmywkc9",
            "fixed:sha1:kpcd173cq987hw957sx6m0868wv3x6d9",
        ] {
            let ca: ContentAddress = s.parse().unwrap();
            assert_eq!(ca.to_string(), s);
        }
        assert!("nar:sha256:x".parse::<ContentAddress>().is_err());
        assert!("text:sha1:kpcd173cq987hw957sx6m0868wv3x6d9"
            .parse::<ContentAddress>()
            .is_err());
    }
}
