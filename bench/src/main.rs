//! The `wsgate-bench` command: parses the command line and runs the chosen scenario (or the
//! echo backend); exit status 1 when it fails, 2 on a usage error (clap's).

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use wsgate_bench::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(error) = cli.command.usage_error() {
        // Said with the subcommand's usage line, as clap's own errors are.
        let mut command = Cli::command();
        let name = cli.command.name();
        let sub = command.find_subcommand_mut(name).cloned();
        let mut sub = sub
            .unwrap_or(command)
            .bin_name(format!("wsgate-bench {name}"));
        sub.error(clap::error::ErrorKind::ValueValidation, error)
            .exit();
    }
    match wsgate_bench::scenario::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics when stderr cannot be written (a full disk, a
            // closed pipe): the exit status still says it failed.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
