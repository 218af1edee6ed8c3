//! `store`: a Nix-compatible immutable store with signed binary substitution.
//!
//! The normative description of every format and on-disk structure lives in
//! `store-format.md` at the top of the repository.
//!
//! # Layers
//!
//! Every module sits in one layer and imports (`crate::…`) only modules of lower layers,
//! never a sibling of its own layer nor anything above. `tests/architecture.rs` holds the
//! same table and fails on any import that breaks it; change both together.
//!
//! | Layer | Modules | What they own |
//! |---|---|---|
//! | 0 | [`format`](mod@format), [`schedule`], [`error`], [`error_chain`] | pure, synchronous codecs (hashes, store paths, NAR, narinfo, keys, nix-cache-info, derivations), the dependency-ordered ready queue, the error naming an operation and a path, and the printer of an error with its causes. No file system (`std::fs`), no network, no tokio, only `io::Read`/`io::Write`. |
//! | 1 | [`fsnar`], [`temp_file`] | file trees to NAR and back (dump, hash, strict unpack, canonicalisation); temp files locked by their owner and the sweep that reclaims those of dead owners. |
//! | 2 | [`store`], [`cache`], [`trust`] | the local store (blocking file system and SQLite: layout, metadata, locks, atomic installs, build logs); binary cache backends (async); the fail-closed trust policy for narinfos. |
//! | 3 | [`substitute`], [`push`], [`build`] | making paths valid from trusted caches; pushing closures to a cache; building one derivation (recipes, sandbox, reference scanning, canonicalisation). |
//! | 4 | [`realise`], [`cargo`] | substitute-or-build over a derivation graph; compiled crates as store paths (the rustc wrapper, unit keys, the session journal and manifest). |
//! | 5 | [`server`] | `store serve`: the store as a binary cache over HTTP. |
//! | 6 | `cli` (in the binary, with main.rs) | the command line; the only place that uses `anyhow`. |

pub mod build;
pub mod cache;
pub mod cargo;
pub mod error;
pub mod error_chain;
pub mod format;
pub mod fsnar;
pub mod push;
pub mod realise;
pub mod schedule;
pub mod server;
pub mod store;
pub mod substitute;
pub mod temp_file;
pub mod trust;
