//! `store cargo`: compiled crates as store paths. A rustc wrapper ([`wrapper`]) turns each
//! cacheable rustc invocation of a cargo build into a unit whose store path follows from
//! its key ([`key`]): installed from the local store or a trusted substituter when valid
//! there, else compiled (and, when recording, added to the store signed). The session
//! journal ([`journal`]) feeds the report, the summary and the build's manifest
//! ([`manifest`]). See store-format.md §11.

pub mod build_script;
pub mod check;
pub mod digests;
pub mod invocation;
pub mod journal;
pub mod key;
pub mod local;
pub mod manifest;
pub mod source;
pub mod toolchain;
pub mod unit;
pub mod wrapper;

pub use wrapper::{Mode, Wrapper};

/// Environment variable naming the session dir of a `store cargo` run (journal).
pub const SESSION_ENV: &str = "STORE_CARGO_SESSION";
/// Environment variable with the mode of a `store cargo` run (`record` or `use`).
pub const MODE_ENV: &str = "STORE_CARGO_MODE";
/// Set to `0` to compile path and workspace crates every time, as plain cargo does
/// (no local units, §11.6).
pub const LOCAL_ENV: &str = "STORE_CARGO_LOCAL";
