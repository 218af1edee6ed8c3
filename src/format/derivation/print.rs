//! The ATerm printer: the exact bytes Nix 2.8 writes for a derivation (`unparse`), and
//! the variant `hashDerivationModulo` hashes (input derivations replaced by their hashes,
//! outputs optionally masked).

use std::collections::{BTreeMap, BTreeSet};

use super::{Derivation, DerivationOutput};
use crate::format::store_path::StoreDir;

impl Derivation {
    /// The `.drv` text, byte for byte as Nix writes it.
    pub fn print(&self, dir: &StoreDir) -> String {
        self.unparse(dir, false, None)
    }

    /// Nix's `unparse`. With `mask`, output paths and the env entries named after outputs
    /// are printed empty. With `inputs`, the input derivation list is replaced by it
    /// (hex hash → output names).
    pub(super) fn unparse(
        &self,
        dir: &StoreDir,
        mask: bool,
        inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
    ) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str("Derive([");
        self.push_outputs(&mut s, dir, mask);
        s.push_str("],[");
        self.push_input_drvs(&mut s, dir, inputs);
        s.push_str("],[");
        let srcs: Vec<String> = self
            .input_srcs
            .iter()
            .map(|p| dir.display_path(p))
            .collect();
        push_strings(&mut s, srcs.iter().map(String::as_str));
        s.push_str("],");
        push_string(&mut s, &self.system);
        s.push(',');
        push_string(&mut s, &self.builder);
        s.push_str(",[");
        push_strings(&mut s, self.args.iter().map(String::as_str));
        s.push_str("],[");
        self.push_env(&mut s, mask);
        s.push_str("])");
        s
    }

    /// `("name","path","algo","hash")` per output; with `mask`, paths are empty.
    fn push_outputs(&self, s: &mut String, dir: &StoreDir, mask: bool) {
        for (i, (name, out)) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            push_string(s, name);
            s.push(',');
            let path = match (mask, out.path()) {
                (false, Some(p)) => dir.display_path(p),
                _ => String::new(),
            };
            push_string(s, &path);
            s.push(',');
            match out {
                DerivationOutput::Fixed { hash, .. } => {
                    push_string(s, &hash.method_algo());
                    s.push(',');
                    push_string(s, &hash.hash.to_hex());
                }
                _ => s.push_str("\"\",\"\""),
            }
            s.push(')');
        }
    }

    /// `("drv path",["out",…])` per input derivation, or per entry of `inputs` if given.
    fn push_input_drvs(
        &self,
        s: &mut String,
        dir: &StoreDir,
        inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
    ) {
        let mut first = true;
        let mut input = |s: &mut String, key: &str, outs: &BTreeSet<String>| {
            if !first {
                s.push(',');
            }
            first = false;
            s.push('(');
            push_string(s, key);
            s.push_str(",[");
            push_strings(s, outs.iter().map(String::as_str));
            s.push_str("])");
        };
        match inputs {
            Some(inputs) => {
                for (key, outs) in inputs {
                    input(s, key, outs);
                }
            }
            None => {
                for (path, outs) in &self.input_drvs {
                    input(s, &dir.display_path(path), outs);
                }
            }
        }
    }

    /// `("key","value")` per env entry; with `mask`, entries named after outputs are empty.
    fn push_env(&self, s: &mut String, mask: bool) {
        for (i, (k, v)) in self.env.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            push_string(s, k);
            s.push(',');
            let masked = mask && self.outputs.contains_key(k);
            push_string(s, if masked { "" } else { v });
            s.push(')');
        }
    }
}

/// Appends `"<escaped>"`: `"` and `\` get a backslash, LF/CR/TAB become `\n`/`\r`/`\t`,
/// every other byte is written as is.
pub(super) fn push_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        out.push_str(esc);
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

fn push_strings<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, item);
    }
}
