//! Turning build descriptions into derivations in the local store. [`recipe`] reads TOML
//! recipes and instantiates them into `.drv` files, the way Nix's `derivation` builtin
//! does for an expression. Building derivations is not done here yet.

pub mod recipe;
