//! The layer map, enforced. [`LAYERS`] is the single source of truth; the table in
//! `src/lib.rs`'s crate doc mirrors it (checked here too). A module imports (`crate::…`)
//! only modules of lower layers; `src/format/` never mentions tokio, `std::fs` or the
//! store; only the command line (`src/cli/`, `src/main.rs`) uses `anyhow`; no file's
//! non-test code exceeds [`MAX_FILE_LINES`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Layer → the top-level modules in it. The binary's `cli` is the top.
const LAYERS: &[(u8, &[&str])] = &[
    (0, &["format", "schedule", "error", "error_chain"]),
    (1, &["fsnar", "temp_file"]),
    (2, &["store", "cache", "trust"]),
    (3, &["substitute", "push", "build"]),
    (4, &["realise", "cargo"]),
    (5, &["server"]),
    (6, &["cli"]),
];

/// The most lines a source file's non-test code may have (style.md: about 800 per file).
const MAX_FILE_LINES: usize = 800;

fn layer_of() -> BTreeMap<&'static str, u8> {
    LAYERS
        .iter()
        .flat_map(|(layer, mods)| mods.iter().map(move |m| (*m, *layer)))
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_owned()),
        None => Some(first),
    }
}

/// The file's code with comments removed (line comments, including doc comments, and
/// block comments). String literals are kept: they do not name modules.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by `crate::X` paths in `code`, including each first name of
/// a `crate::{X, Y::…}` group.
fn crate_imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // e.g. `my_crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && is_ident(c) => {
                        let name: String =
                            group[i..].chars().take_while(|c| is_ident(*c)).collect();
                        found.push(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            found.push(name);
        }
    }
    found
}

fn all_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

#[test]
fn every_module_is_in_the_layer_table() {
    let layers = layer_of();
    let mut missing = Vec::new();
    for (file, _) in all_files() {
        if let Some(m) = module_of(&file) {
            if !layers.contains_key(m.as_str()) {
                missing.push(format!("{} (module {m})", file.display()));
            }
        }
    }
    assert!(missing.is_empty(), "not in LAYERS: {missing:#?}");
}

#[test]
fn no_import_goes_up_or_sideways() {
    let layers = layer_of();
    let mut bad = Vec::new();
    for (file, text) in all_files() {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let own = layers[module.as_str()];
        for import in crate_imports(&code_of(&text)) {
            if import == module || import == "self" || import == "super" {
                continue;
            }
            match layers.get(import.as_str()) {
                Some(&layer) if layer < own => {}
                Some(&layer) => bad.push(format!(
                    "{}: `{module}` (layer {own}) imports `crate::{import}` (layer {layer})",
                    file.display()
                )),
                None => bad.push(format!(
                    "{}: `crate::{import}` is not in LAYERS",
                    file.display()
                )),
            }
        }
    }
    assert!(bad.is_empty(), "imports that break the layer map: {bad:#?}");
}

#[test]
fn format_has_no_io_runtime_or_store() {
    let mut bad = Vec::new();
    for (file, text) in all_files() {
        if module_of(&file).as_deref() != Some("format") {
            continue;
        }
        let code = code_of(&text);
        for banned in ["tokio", "std::fs", "crate::store", "fs::"] {
            if code.contains(banned) {
                bad.push(format!("{} mentions `{banned}`", file.display()));
            }
        }
        // `use std::{fs, …}` names the file system too.
        for (at, _) in code.match_indices("std::{") {
            let group = &code[at..];
            let group = &group[..group.find('}').unwrap_or(group.len())];
            if group.split(|c: char| !is_ident(c)).any(|w| w == "fs") {
                bad.push(format!("{} imports `std::fs`", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn only_the_command_line_uses_anyhow() {
    let mut bad = Vec::new();
    for (file, text) in all_files() {
        let module = module_of(&file);
        let main = file.file_name().is_some_and(|n| n == "main.rs") && module.is_none();
        if main || module.as_deref() == Some("cli") {
            continue;
        }
        if code_of(&text).contains("anyhow") {
            bad.push(file.display().to_string());
        }
    }
    assert!(bad.is_empty(), "anyhow outside the command line: {bad:#?}");
}

#[test]
fn the_crate_doc_mirrors_the_layer_table() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut documented: Vec<(u8, Vec<String>)> = Vec::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let mut cells = row.split(" | ");
        let Ok(layer) = cells.next().unwrap_or("").trim().parse::<u8>() else {
            continue; // the header
        };
        let modules: Vec<String> = cells
            .next()
            .unwrap_or("")
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        documented.push((layer, modules));
    }
    let expected: Vec<(u8, Vec<String>)> = LAYERS
        .iter()
        .map(|(l, mods)| (*l, mods.iter().map(|m| (*m).to_owned()).collect()))
        .collect();
    assert_eq!(
        documented, expected,
        "src/lib.rs's layer table differs from LAYERS"
    );
    // And every `pub mod` of the library is in it.
    let layers = layer_of();
    for line in lib.lines() {
        if let Some(m) = line
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
        {
            assert!(layers.contains_key(m), "`pub mod {m}` is not in LAYERS");
        }
    }
}

#[test]
fn the_import_scanner_sees_every_form() {
    let code = code_of(
        "use crate::format::hash;\n\
         // use crate::server;\n\
         use crate::{store::{self, Layout}, trust};\n\
         let x = crate::cache::Cache::open(); /* crate::push */ my_crate::realise();\n",
    );
    assert_eq!(crate_imports(&code), ["format", "store", "trust", "cache"]);
}

/// The lines of a file that are not test code: a file named `tests.rs` is all test code
/// (a `#[cfg(test)] mod tests;`); elsewhere, everything from the inline
/// `#[cfg(test)] mod tests {` on is.
fn non_test_lines(file: &Path, text: &str) -> usize {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return 0;
    }
    let lines: Vec<&str> = text.lines().collect();
    let test_module = lines.windows(2).position(|w| {
        w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests {")
    });
    test_module.unwrap_or(lines.len())
}

#[test]
fn no_source_file_is_too_long() {
    let mut long = Vec::new();
    for (file, text) in all_files() {
        let n = non_test_lines(&file, &text);
        if n > MAX_FILE_LINES {
            long.push(format!("{} ({n} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines of non-test code; split where a reader would: {long:?}"
    );
}

#[test]
fn the_line_counter_skips_test_code() {
    let text = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
    assert_eq!(non_test_lines(Path::new("src/a.rs"), text), 2);
    assert_eq!(non_test_lines(Path::new("src/a/tests.rs"), text), 0);
    assert_eq!(
        non_test_lines(Path::new("src/b.rs"), "fn a() {}\nfn b() {}\n"),
        2
    );
}
