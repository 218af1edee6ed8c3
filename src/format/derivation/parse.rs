//! The strict ATerm parser of `.drv` files (grammar in the parent module's doc). It walks
//! the fixed structure with a cursor, without recursion, and checks the canonical form as
//! it goes so that printing what it accepts gives back the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    valid_output_name, Derivation, DerivationError, DerivationOutput, FixedOutputHash, MAX_DRV_SIZE,
};
use crate::format::store_path::{StoreDir, StorePath, StorePathName};

impl Derivation {
    /// Parses a `.drv` file. `name` is the derivation name (the `.drv` path's name without
    /// `.drv`); it is needed to check the path of a fixed output.
    pub fn parse(bytes: &[u8], dir: &StoreDir, name: &str) -> Result<Self, DerivationError> {
        if bytes.len() > MAX_DRV_SIZE {
            return Err(DerivationError::TooLarge(bytes.len()));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| DerivationError::NotUtf8(e.valid_up_to()))?;
        let mut c = Cursor { s: text, pos: 0 };
        let drv = c.derivation(dir, name)?;
        if c.pos != text.len() {
            return Err(DerivationError::Trailing { offset: c.pos });
        }
        drv.validate(dir)?;
        Ok(drv)
    }
}

/// A position in the text being parsed.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

/// Checks that `items` are strictly increasing under `key`.
fn check_sorted<T, K: Ord + ?Sized>(
    field: &'static str,
    items: &[T],
    key: impl Fn(&T) -> &K,
    show: impl Fn(&T) -> String,
) -> Result<(), DerivationError> {
    for pair in items.windows(2) {
        if key(&pair[0]) >= key(&pair[1]) {
            return Err(DerivationError::NotSorted {
                field,
                item: show(&pair[1]),
            });
        }
    }
    Ok(())
}

/// One output tuple: all three fields empty (deferred), a path only (input-addressed), or
/// path, algorithm and hash (fixed).
fn output(
    dir: &StoreDir,
    name: &str,
    path: &str,
    algo: &str,
    hash: &str,
) -> Result<DerivationOutput, DerivationError> {
    if !valid_output_name(name) {
        return Err(DerivationError::OutputName(name.to_owned()));
    }
    Ok(match (path.is_empty(), algo.is_empty(), hash.is_empty()) {
        (true, true, true) => DerivationOutput::Deferred,
        (false, true, true) => DerivationOutput::InputAddressed(parse_path(dir, "outputs", path)?),
        (false, false, false) => DerivationOutput::Fixed {
            path: parse_path(dir, "outputs", path)?,
            hash: FixedOutputHash::parse_drv(name, algo, hash)?,
        },
        (true, false, _) => return Err(DerivationError::UnsupportedOutput(name.to_owned())),
        _ => return Err(DerivationError::BadOutputTuple(name.to_owned())),
    })
}

impl<'a> Cursor<'a> {
    /// `Derive(outputs, inputDrvs, inputSrcs, system, builder, args, env)`.
    fn derivation(&mut self, dir: &StoreDir, name: &str) -> Result<Derivation, DerivationError> {
        StorePathName::new(name).map_err(|e| DerivationError::Name(name.to_owned(), e))?;
        self.expect("Derive(")?;
        let outputs = self.outputs(dir)?;
        self.expect(",")?;
        let input_drvs = self.input_drvs(dir)?;
        self.expect(",")?;
        let input_srcs = self.input_srcs(dir)?;
        self.expect(",")?;
        let system = self.string()?;
        self.expect(",")?;
        let builder = self.string()?;
        self.expect(",")?;
        let args = self.list(Cursor::string)?;
        self.expect(",")?;
        let env = self.env()?;
        self.expect(")")?;
        Ok(Derivation {
            name: name.to_owned(),
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        })
    }

    /// `[("name","path","algo","hash"),…]`, sorted by name; each tuple is one kind of output.
    fn outputs(
        &mut self,
        dir: &StoreDir,
    ) -> Result<BTreeMap<String, DerivationOutput>, DerivationError> {
        let outputs = self.list(|c| {
            c.expect("(")?;
            let o = c.string()?;
            c.expect(",")?;
            let path = c.string()?;
            c.expect(",")?;
            let algo = c.string()?;
            c.expect(",")?;
            let hash = c.string()?;
            c.expect(")")?;
            Ok((o, path, algo, hash))
        })?;
        check_sorted("outputs", &outputs, |o| &o.0, |o| o.0.clone())?;
        let mut out_map = BTreeMap::new();
        for (o, path, algo, hash) in outputs {
            let output = output(dir, &o, &path, &algo, &hash)?;
            out_map.insert(o, output);
        }
        Ok(out_map)
    }

    /// `[("drv path",["out",…]),…]`, both levels sorted.
    fn input_drvs(
        &mut self,
        dir: &StoreDir,
    ) -> Result<BTreeMap<StorePath, BTreeSet<String>>, DerivationError> {
        let input_drvs = self.list(|c| {
            c.expect("(")?;
            let p = c.string()?;
            let path = parse_path(dir, "inputDrvs", &p)?;
            c.expect(",")?;
            let outs = c.list(Cursor::string)?;
            check_sorted("inputDrvs outputs", &outs, |o| o.as_str(), |o| o.clone())?;
            c.expect(")")?;
            Ok((path, outs))
        })?;
        check_sorted("inputDrvs", &input_drvs, |d| &d.0, |d| d.0.to_string())?;
        Ok(input_drvs
            .into_iter()
            .map(|(p, outs)| (p, outs.into_iter().collect()))
            .collect())
    }

    /// `["path",…]`, sorted.
    fn input_srcs(&mut self, dir: &StoreDir) -> Result<BTreeSet<StorePath>, DerivationError> {
        let input_srcs = self.list(|c| {
            let p = c.string()?;
            parse_path(dir, "inputSrcs", &p)
        })?;
        check_sorted("inputSrcs", &input_srcs, |p| p, StorePath::to_string)?;
        Ok(input_srcs.into_iter().collect())
    }

    /// `[("key","value"),…]`, sorted by key.
    fn env(&mut self) -> Result<BTreeMap<String, String>, DerivationError> {
        let env = self.list(|c| {
            c.expect("(")?;
            let k = c.string()?;
            c.expect(",")?;
            let v = c.string()?;
            c.expect(")")?;
            Ok((k, v))
        })?;
        check_sorted("env", &env, |e| e.0.as_str(), |e| e.0.clone())?;
        Ok(env.into_iter().collect())
    }

    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.pos..]
    }

    fn expect(&mut self, lit: &'static str) -> Result<(), DerivationError> {
        if self.rest().starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(DerivationError::Expected {
                offset: self.pos,
                expected: lit,
            })
        }
    }

    /// `"[" [item *("," item)] "]"`.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, DerivationError>,
    ) -> Result<Vec<T>, DerivationError> {
        self.expect("[")?;
        let mut items = Vec::new();
        if self.rest().first() == Some(&b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            match self.rest().first() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {
                    return Err(DerivationError::Expected {
                        offset: self.pos,
                        expected: "',' or ']'",
                    })
                }
            }
        }
    }

    /// A quoted string with the canonical escapes only.
    fn string(&mut self) -> Result<String, DerivationError> {
        let start = self.pos;
        self.expect("\"")?;
        let bytes = self.s.as_bytes();
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Err(DerivationError::Unterminated { offset: start });
            };
            match b {
                b'"' => {
                    out.push_str(&self.s[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.s[run..self.pos]);
                    let unescaped = match bytes.get(self.pos + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(_) => {
                            let ch = self.s[self.pos + 1..].chars().next().unwrap_or('?');
                            return Err(DerivationError::BadEscape {
                                offset: self.pos,
                                ch,
                            });
                        }
                        None => return Err(DerivationError::Unterminated { offset: start }),
                    };
                    out.push(unescaped);
                    self.pos += 2;
                    run = self.pos;
                }
                b'\n' | b'\r' | b'\t' => {
                    return Err(DerivationError::RawControl {
                        offset: self.pos,
                        ch: b as char,
                    })
                }
                _ => self.pos += 1,
            }
        }
    }
}

fn parse_path(dir: &StoreDir, field: &'static str, s: &str) -> Result<StorePath, DerivationError> {
    dir.parse_path(s).map_err(|source| DerivationError::Path {
        field,
        path: s.to_owned(),
        source,
    })
}
