use std::process::ExitCode;

use clap::Parser;
use wsgate_bench::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match wsgate_bench::scenario::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
