//! Pure, synchronous Nix 2.8 formats: hashes and their encodings, store paths,
//! content addresses, NAR, narinfo, signing keys and signature checks, nix-cache-info
//! and derivations.
//!
//! Nothing in here touches the file system or the network; everything works on
//! bytes, strings, `io::Read` and `io::Write`. See `store-format.md`.

pub mod ca;
pub mod cache_info;
pub mod closure_index;
pub mod derivation;
pub mod ed25519;
pub mod hash;
pub mod keys;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod path_meta;
pub mod store_path;
