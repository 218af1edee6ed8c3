//! `store`: a Nix-compatible immutable store with signed binary substitution.
//!
//! The normative description of every format and on-disk structure lives in
//! `store-format.md` at the top of the repository. Layers, each using only those below it:
//!
//! * [`format`]: pure, synchronous codecs (hashes, store paths, NAR, narinfo, keys,
//!   nix-cache-info). No file system, no network, only `io::Read`/`io::Write`.
//! * [`fsnar`]: file trees to NAR and back (dump, hash, strict unpack, canonicalisation).
//! * [`store`]: the local store: layout, SQLite metadata, locks, atomic installs.
//! * [`build`]: recipes to `.drv` files; running builders in a sandbox, reference scanning,
//!   output canonicalisation.
//! * `cli` (in the binary): the command line, the only place that uses `anyhow`.

pub mod build;
pub mod cache;
pub mod format;
pub mod fsnar;
pub mod push;
pub mod schedule;
pub mod server;
pub mod store;
pub mod substitute;
pub mod trust;
