//! The `store` command line. Parses arguments, sets up logging, runs the subcommand and
//! turns an error into one line on stderr (with its cause chain) and a non-zero exit.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if cli::cargo::is_wrapper_call(&argv) {
        cli::init_logging(&cli::GlobalArgs::for_wrapper());
        return cli::cargo::wrap(&argv);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args.global);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            // Build failures exit like Nix's (100 + 1 timeout, 2 hash mismatch, 4 check).
            match e
                .chain()
                .find_map(|c| c.downcast_ref::<store::realise::RealiseError>())
                .and_then(store::realise::RealiseError::exit_status)
            {
                Some(code) => ExitCode::from(code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Writing to a closed pipe (`store nar dump … | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
