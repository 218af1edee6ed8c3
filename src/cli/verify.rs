//! `store verify [--all | PATH…]`: recompute NAR hashes and report corrupt or missing paths.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use store::store::Verdict;

use super::GlobalArgs;

/// Check that valid paths still have the contents they were registered with
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check every valid path
    #[arg(long, conflicts_with = "paths")]
    pub all: bool,
    /// Paths to check
    pub paths: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    checked: usize,
    ok: usize,
    corrupt: Vec<Problem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Problem {
    path: String,
    problem: &'static str,
    detail: String,
}

pub fn run(g: &GlobalArgs, args: VerifyArgs) -> Result<ExitCode> {
    if !args.all && args.paths.is_empty() {
        bail!("give store paths to verify, or --all");
    }
    let store = super::open_store(g)?;
    let paths = if args.all {
        store.all_valid()?
    } else {
        let mut v = Vec::new();
        for a in &args.paths {
            v.push(store.parse_user_path(a)?);
        }
        v
    };
    let mut report = Report {
        checked: paths.len(),
        ok: 0,
        corrupt: Vec::new(),
    };
    for p in &paths {
        let printed = store.print_path(p);
        let (problem, detail) = match store.verify_path(p)? {
            Verdict::Ok => {
                report.ok += 1;
                continue;
            }
            Verdict::Missing => ("missing", format!("path '{printed}' is missing")),
            Verdict::Corrupt { expected, got } => (
                "modified",
                format!(
                    "path '{printed}' was modified! expected hash '{}', got '{}'",
                    expected.to_sri(),
                    got.to_sri()
                ),
            ),
            Verdict::Unreadable(why) => ("unreadable", format!("path '{printed}': {why}")),
        };
        if !g.json {
            eprintln!("error: {detail}");
        }
        report.corrupt.push(Problem {
            path: printed,
            problem,
            detail,
        });
    }
    if g.json {
        super::print_json(&report)?;
    } else if !g.quiet {
        eprintln!(
            "checked {} paths: {} ok, {} bad",
            report.checked,
            report.ok,
            report.corrupt.len()
        );
    }
    Ok(if report.corrupt.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
