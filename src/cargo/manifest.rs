//! The manifest of a recorded build: a text path listing every unit the build used, so it
//! references them all. One per lockfile × toolchain × target × profile in practice (its
//! contents, hence its path, follow from the units); a GC root locally and a pin in a cache.

use std::collections::BTreeSet;

use super::journal::{Entry, Outcome};
use super::source::SourceKind;
use crate::format::store_path::{StorePath, StorePathName};
use crate::store::{LocalStore, StoreError};

/// The manifest's store path name.
pub const NAME: &str = "cargo-manifest";

/// The manifest text for the units of `entries` that are valid in `store`, and those units.
pub fn contents(
    store: &LocalStore,
    entries: &[Entry],
) -> Result<(String, BTreeSet<StorePath>), StoreError> {
    let mut lines = BTreeSet::new();
    let mut units = BTreeSet::new();
    let mut toolchains = BTreeSet::new();
    for e in entries {
        // Units of path crates are local only (§11.6): never in a manifest.
        let usable = e.source_kind != SourceKind::Local
            && matches!(
                e.outcome,
                Outcome::Substituted | Outcome::Local | Outcome::Recorded
            );
        let (Some(printed), true) = (&e.store_path, usable) else {
            continue;
        };
        let path = store.parse_user_path(printed)?;
        if !store.is_valid(&path)? {
            continue;
        }
        if let Some(i) = &e.inputs {
            toolchains.insert(format!("toolchain {} {}", i.target, i.toolchain));
        }
        lines.insert(format!("unit {printed} {} {}", e.crate_name, e.version));
        units.insert(path);
    }
    let mut text = String::from("store-cargo-manifest 1\n");
    for l in toolchains.iter().chain(&lines) {
        text.push_str(l);
        text.push('\n');
    }
    Ok((text, units))
}

/// Adds the manifest of `entries` to the store; `None` if no unit is valid.
pub fn write(store: &LocalStore, entries: &[Entry]) -> Result<Option<StorePath>, StoreError> {
    let (text, units) = contents(store, entries)?;
    if units.is_empty() {
        return Ok(None);
    }
    let name = StorePathName::new(NAME).expect("a valid name");
    Ok(Some(
        store
            .add_text(&name, text.as_bytes(), &units)?
            .info
            .path
            .clone(),
    ))
}
