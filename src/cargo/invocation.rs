//! One rustc command line as cargo writes it: what it compiles, where the outputs go, which
//! files it reads by path. Pure: no file system.

use std::path::{Path, PathBuf};

/// A parsed rustc invocation (the arguments after the rustc program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// All arguments, as given.
    pub args: Vec<String>,
    pub crate_name: Option<String>,
    pub crate_types: Vec<String>,
    /// `--emit` kinds (`dep-info`, `metadata`, `link`, …), in order.
    pub emit: Vec<String>,
    pub out_dir: Option<PathBuf>,
    /// `-C extra-filename` (added to every output file name).
    pub extra_filename: String,
    pub target: Option<String>,
    /// The input file (`src/lib.rs`), as given.
    pub input: Option<String>,
    /// Why the invocation can never be cached, whatever its source (first reason found).
    pub blocker: Option<&'static str>,
}

/// Options that take a value as the next argument (or joined with `=`).
const WITH_VALUE: &[&str] = &[
    "--crate-name",
    "--crate-type",
    "--emit",
    "--out-dir",
    "--target",
    "--extern",
    "--cfg",
    "--check-cfg",
    "--edition",
    "--error-format",
    "--json",
    "--cap-lints",
    "--remap-path-prefix",
    "--color",
    "--diagnostic-width",
    "--print",
    "--explain",
    "--sysroot",
    "--env-set",
    "-L",
    "-l",
    "-C",
    "-Z",
    "-o",
    "-A",
    "-W",
    "-D",
    "-F",
];

/// An argument split into option and value (`--out-dir X`, `--out-dir=X`, `-Cfoo=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// An option with its value (`-C` with `opt-level=2`, …).
    Opt(String, String),
    /// A flag without value, or something unknown kept as is.
    Flag(String),
    /// A positional argument (the input file).
    Positional(String),
}

/// Splits `args` into [`Arg`]s. A value-taking option at the very end keeps an empty value.
pub fn split(args: &[String]) -> Vec<Arg> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(opt) = WITH_VALUE.iter().find(|o| a == *o) {
            let v = it.next().cloned().unwrap_or_default();
            out.push(Arg::Opt((*opt).to_owned(), v));
        } else if let Some((o, v)) = a.split_once('=').filter(|(o, _)| WITH_VALUE.contains(o)) {
            out.push(Arg::Opt(o.to_owned(), v.to_owned()));
        } else if let Some(opt) = ["-C", "-L", "-l", "-Z", "-A", "-W", "-D", "-F"]
            .iter()
            .find(|o| a.starts_with(*o) && a.len() > 2)
        {
            out.push(Arg::Opt((*opt).to_owned(), a[2..].to_owned()));
        } else if a.starts_with('-') && a != "-" {
            out.push(Arg::Flag(a.clone()));
        } else {
            out.push(Arg::Positional(a.clone()));
        }
    }
    out
}

impl Invocation {
    /// Parses the arguments cargo passes to rustc.
    pub fn parse(args: &[String]) -> Invocation {
        let mut inv = Invocation {
            args: args.to_vec(),
            crate_name: None,
            crate_types: Vec::new(),
            emit: Vec::new(),
            out_dir: None,
            extra_filename: String::new(),
            target: None,
            input: None,
            blocker: None,
        };
        for arg in split(args) {
            inv.note(arg);
        }
        if inv.input.is_none() {
            inv.block("no input file");
        }
        if inv.out_dir.is_none() {
            inv.block("no --out-dir");
        }
        if inv.crate_types.is_empty() {
            inv.crate_types.push("bin".to_owned());
        }
        inv
    }

    fn block(&mut self, why: &'static str) {
        self.blocker.get_or_insert(why);
    }

    fn note(&mut self, arg: Arg) {
        match arg {
            Arg::Opt(o, v) => match o.as_str() {
                "--crate-name" => self.crate_name = Some(v),
                "--crate-type" => self.crate_types.extend(v.split(',').map(str::to_owned)),
                "--emit" => self.emit.extend(v.split(',').map(str::to_owned)),
                "--out-dir" => self.out_dir = Some(PathBuf::from(v)),
                "--target" => self.target = Some(v),
                "--print" => self.block("--print"),
                "--explain" => self.block("--explain"),
                "-o" => self.block("-o (output file named by the caller)"),
                "-C" => self.note_codegen(&v),
                "-Z" => self.block("unstable -Z options"),
                _ => {}
            },
            Arg::Flag(f) => match f.as_str() {
                "--test" => self.block("test harness"),
                "-" => self.block("input from stdin"),
                f if f.starts_with('@') => self.block("argument file"),
                f if f.starts_with("-V") || f == "--version" || f == "-vV" => {
                    self.block("version query")
                }
                _ => {}
            },
            Arg::Positional(p) if p.starts_with('@') => self.block("argument file"),
            Arg::Positional(p) => {
                if self.input.replace(p).is_some() {
                    self.block("several input files");
                }
            }
        }
    }

    fn note_codegen(&mut self, v: &str) {
        let (k, val) = v.split_once('=').unwrap_or((v, ""));
        match k {
            "extra-filename" => self.extra_filename = val.to_owned(),
            "incremental" => self.block("incremental compilation"),
            "target-cpu" if val == "native" => self.block("-C target-cpu=native"),
            "split-debuginfo" if val != "off" => self.block("split debuginfo"),
            "profile-generate" | "profile-use" => self.block("profile-guided optimisation"),
            _ => {}
        }
    }

    /// Only lib, rlib, proc-macro and bin outputs are cached.
    pub fn unsupported_crate_type(&self) -> Option<&str> {
        self.crate_types
            .iter()
            .map(String::as_str)
            .find(|t| !matches!(*t, "lib" | "rlib" | "proc-macro" | "bin"))
    }

    pub fn is_proc_macro(&self) -> bool {
        self.crate_types.iter().any(|t| t == "proc-macro")
    }

    pub fn is_bin(&self) -> bool {
        self.crate_types.iter().any(|t| t == "bin")
    }

    /// Whether the compiled crate is a build script (cargo names it `build_script_*`).
    pub fn is_build_script(&self) -> bool {
        self.crate_name
            .as_deref()
            .is_some_and(|n| n.starts_with("build_script_"))
    }

    /// Whether a linker runs (its identity then goes into the key).
    pub fn links(&self) -> bool {
        self.emit_link() && (self.is_proc_macro() || self.is_bin())
    }

    fn emit_link(&self) -> bool {
        self.emit.is_empty() || self.emit.iter().any(|e| e == "link")
    }

    /// The file names rustc writes into `--out-dir` (Linux naming), or `None` for
    /// combinations this does not predict.
    pub fn output_names(&self) -> Option<Vec<String>> {
        let name = self.crate_name.as_deref()?;
        let x = &self.extra_filename;
        let mut out = Vec::new();
        for e in if self.emit.is_empty() {
            vec!["link".to_owned()]
        } else {
            self.emit.clone()
        } {
            match e.as_str() {
                "dep-info" => out.push(format!("{name}{x}.d")),
                "metadata" if !self.is_bin() => out.push(format!("lib{name}{x}.rmeta")),
                "link" => {
                    for t in &self.crate_types {
                        out.push(match t.as_str() {
                            "lib" | "rlib" => format!("lib{name}{x}.rlib"),
                            "proc-macro" => format!("lib{name}{x}.so"),
                            "bin" => format!("{name}{x}"),
                            _ => return None,
                        });
                    }
                }
                _ => return None,
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// The `--out-dir` (empty path if none; such invocations are blocked).
    pub fn out_dir(&self) -> &Path {
        self.out_dir.as_deref().unwrap_or(Path::new(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    const ITOA: &str =
        "--crate-name itoa --edition=2021 /h/.cargo/registry/src/i/itoa-1.0.19/src/lib.rs \
        --error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat \
        --crate-type lib --emit=dep-info,metadata,link -C embed-bitcode=no -C debuginfo=2 \
        -C metadata=a9c1468c251272ca -C extra-filename=-6c1e270c698fa6a6 \
        --out-dir /p/target/debug/deps -L dependency=/p/target/debug/deps --cap-lints allow";

    #[test]
    fn a_cargo_library_invocation_is_understood() {
        let inv = Invocation::parse(&v(ITOA));
        assert_eq!(inv.blocker, None);
        assert_eq!(inv.crate_name.as_deref(), Some("itoa"));
        assert_eq!(inv.crate_types, ["lib"]);
        assert_eq!(inv.emit, ["dep-info", "metadata", "link"]);
        assert_eq!(inv.out_dir(), Path::new("/p/target/debug/deps"));
        assert_eq!(inv.extra_filename, "-6c1e270c698fa6a6");
        assert_eq!(
            inv.output_names().unwrap(),
            [
                "itoa-6c1e270c698fa6a6.d",
                "libitoa-6c1e270c698fa6a6.rlib",
                "libitoa-6c1e270c698fa6a6.rmeta"
            ]
        );
        assert!(!inv.links());
    }

    #[test]
    fn proc_macros_and_binaries_name_their_linked_outputs() {
        let pm = Invocation::parse(&v(
            "--crate-name serde_derive a.rs --crate-type proc-macro --emit=dep-info,link \
             -C extra-filename=-1 --out-dir /o",
        ));
        assert_eq!(
            pm.output_names().unwrap(),
            ["libserde_derive-1.so", "serde_derive-1.d"]
        );
        assert!(pm.links());
        let bin = Invocation::parse(&v(
            "--crate-name rg m.rs --crate-type bin --emit=dep-info,link -C extra-filename=-2 --out-dir /o",
        ));
        assert_eq!(bin.output_names().unwrap(), ["rg-2", "rg-2.d"]);
    }

    #[test]
    fn what_cannot_be_cached_is_named() {
        for (args, why) in [
            (
                "a.rs --out-dir /o -C incremental=/i",
                "incremental compilation",
            ),
            (
                "- --out-dir /o --crate-name ___ --print=file-names",
                "--print",
            ),
            ("a.rs --out-dir /o --test", "test harness"),
            (
                "a.rs --out-dir /o -Ctarget-cpu=native",
                "-C target-cpu=native",
            ),
            ("a.rs", "no --out-dir"),
            ("-vV", "version query"),
            ("@args --out-dir /o", "argument file"),
        ] {
            assert_eq!(Invocation::parse(&v(args)).blocker, Some(why), "{args}");
        }
        let cdylib = Invocation::parse(&v("a.rs --out-dir /o --crate-type cdylib"));
        assert_eq!(cdylib.unsupported_crate_type(), Some("cdylib"));
    }

    #[test]
    fn split_handles_joined_and_separate_values() {
        assert_eq!(
            split(&v("-Copt-level=3 -L native=/x --cfg=a --cfg b -lfoo x.rs")),
            [
                Arg::Opt("-C".into(), "opt-level=3".into()),
                Arg::Opt("-L".into(), "native=/x".into()),
                Arg::Opt("--cfg".into(), "a".into()),
                Arg::Opt("--cfg".into(), "b".into()),
                Arg::Opt("-l".into(), "foo".into()),
                Arg::Positional("x.rs".into()),
            ]
        );
    }
}
