//! Building derivation outputs: from recipes to `.drv` files, and from `.drv` files to
//! valid, registered outputs.
//!
//! * [`recipe`]: reads TOML recipes and instantiates them into `.drv` files, the way Nix's
//!   `derivation` builtin does for an expression.
//! * [`sandbox`]: runs one builder process, in Linux namespaces (the default) or directly on
//!   the host (`--no-sandbox`), with Nix 2.8's environment, logging, timeouts and cleanup.
//! * [`refscan`]: finds which candidate store paths an output refers to (hash-part scanning
//!   over the output's NAR, like Nix).
//! * [`canonicalise`]: puts a freshly built output into canonical store form in place.

pub mod canonicalise;
pub mod local;
pub mod recipe;
pub mod refscan;
pub mod sandbox;
