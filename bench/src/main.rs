//! The `wsgate-bench` command: parses the command line and runs the chosen scenario (or the
//! echo backend); exit status 1 when it fails, 2 on a usage error (clap's).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use wsgate_bench::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(error) = cli.command.client().and_then(|c| c.usage_error()) {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, error)
            .exit();
    }
    match wsgate_bench::scenario::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
