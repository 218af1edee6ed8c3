//! `store gc [--dry-run] [--max-freed SIZE] [--print-dead | --print-live]`: delete the
//! store paths no root keeps alive (like `nix-store --gc`), honouring the config keys
//! keep-outputs and keep-derivations.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use store::store::{GcOptions, GcReport, LocalStore};

use super::GlobalArgs;

/// Delete the store paths that no GC root keeps alive
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Compute what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Stop once at least SIZE bytes are freed (suffixes K, M, G, T: powers of 1024)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_freed: Option<u64>,
    /// Print the dead paths; delete nothing
    #[arg(long, conflicts_with = "print_live")]
    pub print_dead: bool,
    /// Print the live paths; delete nothing
    #[arg(long)]
    pub print_live: bool,
}

/// `123`, `10K`, `1.5M`, `2G`, `1T` (binary units; a trailing `B`/`iB` is accepted).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("invalid size '{s}': unknown suffix '{c}'"),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .with_context(|| format!("size '{s}' is too large"));
    }
    let f: f64 = num
        .parse()
        .ok()
        .filter(|f: &f64| f.is_finite() && *f >= 0.0)
        .with_context(|| format!("invalid size '{s}'"))?;
    let bytes = f * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        bail!("size '{s}' is too large");
    }
    Ok(bytes as u64)
}

pub fn options(g: &GlobalArgs, max_freed: Option<u64>) -> Result<GcOptions> {
    let s = super::settings(g)?;
    Ok(GcOptions {
        keep_outputs: s.keep_outputs,
        keep_derivations: s.keep_derivations,
        max_freed,
    })
}

pub fn run(g: &GlobalArgs, args: GcArgs) -> Result<ExitCode> {
    let opts = options(g, args.max_freed)?;
    let store = super::open_store(g)?;
    if args.dry_run || args.print_dead || args.print_live {
        let a = store
            .gc_analyse(&opts)
            .context("cannot compute the live paths")?;
        let print = |v: &[_]| -> Vec<String> { v.iter().map(|p| store.print_path(p)).collect() };
        if g.json {
            super::print_json(&serde_json::json!({
                "live": print(&a.live),
                "dead": print(&a.dead),
                "deadNarSize": a.dead_nar_size,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        if args.print_dead {
            print(&a.dead).iter().for_each(|p| println!("{p}"));
        } else if args.print_live {
            print(&a.live).iter().for_each(|p| println!("{p}"));
        } else {
            println!(
                "{} store paths would be deleted ({} of NAR), {} are alive",
                a.dead.len(),
                mib(a.dead_nar_size),
                a.live.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = store
        .collect_garbage(&opts)
        .context("garbage collection failed")?;
    summary(g, &store, &report)
}

/// Prints what was deleted, as Nix does: `N store paths deleted, X MiB freed`.
pub fn summary(g: &GlobalArgs, store: &LocalStore, r: &GcReport) -> Result<ExitCode> {
    if g.json {
        let deleted: Vec<String> = r.deleted.iter().map(|p| store.print_path(p)).collect();
        super::print_json(&serde_json::json!({
            "deleted": deleted,
            "bytesFreed": r.bytes_freed,
            "leftoversRemoved": r.leftovers,
        }))?;
    } else {
        println!(
            "{} store paths deleted, {} freed",
            r.deleted.len(),
            mib(r.bytes_freed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("10K").unwrap(), 10 << 10);
        assert_eq!(parse_size("2m").unwrap(), 2 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4T").unwrap(), 4 << 40);
        for bad in ["", "K", "1X", "-1", "1e400", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
