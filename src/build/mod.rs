//! Building derivation outputs: running a builder in isolation and checking what it produced.
//!
//! * [`sandbox`]: runs one builder process, in Linux namespaces (the default) or directly on
//!   the host (`--no-sandbox`), with Nix 2.8's environment, logging, timeouts and cleanup.
//! * [`refscan`]: finds which candidate store paths an output refers to (hash-part scanning
//!   over the output's NAR, like Nix).
//! * [`canonicalise`]: puts a freshly built output into canonical store form in place.

pub mod canonicalise;
pub mod refscan;
pub mod sandbox;
