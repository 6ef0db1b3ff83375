//! The `wsgate` command: parses the command line, sets up logging and the runtime, and hands
//! over to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wsgate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A TLS-terminating WebSocket reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config; reloads it when it changes or on SIGHUP.
    Run {
        /// The TOML config file.
        #[arg(long, short, env = "WSGATE_CONFIG")]
        config: PathBuf,
        /// Log format (overrides `[proxy] log_format`).
        #[arg(long, value_enum)]
        log_format: Option<Format>,
        /// Worker threads (default: one per CPU; 1 runs a single-threaded runtime; at most 1024).
        #[arg(long, value_parser = thread_count)]
        threads: Option<usize>,
    },
    /// Load and fully validate a config file, then exit.
    Check {
        /// The TOML config file.
        #[arg(long, short, env = "WSGATE_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => match wsgate::check(&config) {
            Ok((summary, warnings)) => {
                for warning in warnings {
                    say(std::io::stderr(), format_args!("warning: {warning}"));
                }
                say(std::io::stdout(), format_args!("{summary}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                say(std::io::stderr(), format_args!("error: {e}"));
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            log_format,
            threads,
        } => run(config, log_format, threads),
    }
}

/// Writes a line for the operator. `println!` and `eprintln!` panic when the stream is a pipe
/// whose reader is gone (`wsgate check … | true`); the exit code still tells the outcome.
fn say(mut out: impl Write, line: std::fmt::Arguments) {
    let _ = writeln!(out, "{line}");
}

/// The most worker threads `--threads` takes: far more than any machine has cores, and few
/// enough that a typo (an extra digit or five) is a usage error, not an attempt to start a
/// million threads or an allocation that aborts the process.
const MAX_THREADS: usize = 1024;

/// `--threads 0` would silently mean "the default": refuse it instead.
fn thread_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be at least 1 and at most {MAX_THREADS}")),
        Err(e) => Err(e.to_string()),
    }
}

fn run(path: PathBuf, format: Option<Format>, threads: Option<usize>) -> ExitCode {
    wsgate::signals::ignore_until_taken_over();
    let raised = wsgate::descriptors::raise();
    let in_use = match format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        // Logging starts before the server loads the config for good: a config that does not
        // load is reported by the server, in the format it asks for if that can be read.
        None => Config::log_format_of(&path),
    };
    let logging = wsgate::init_logging(in_use, format.is_some());
    if let Some(limit) = wsgate::descriptors::limit().filter(|&l| l < MIN_OPEN_FILES) {
        let error = format!(
            "the open-files limit (ulimit -n) is {limit}; wsgate needs at least {MIN_OPEN_FILES}, plus one per client connection and another per tunnel"
        );
        return cannot_start(logging, in_use, &error);
    }
    let mut runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    // By default a worker per CPU the process may use (its affinity and cgroup quota
    // counted), as tokio would choose, but said here: tokio would first read
    // TOKIO_WORKER_THREADS, and panic on a value that is not a number.
    let workers = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads != Some(1) {
        runtime.worker_threads(workers);
    }
    if workers == 1 {
        wsgate::coalesce::install(&mut runtime);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return cannot_start(logging, in_use, &format!("cannot start the runtime: {e}")),
    };
    // Before anything slow (reading the config, certificates): a SIGHUP from a deploy hook
    // during a restart must reload, not end the process. The handler stays installed for
    // the process's life; the server takes its own stream of the signal.
    runtime.block_on(async { drop(wsgate::signals::hangup()) });
    if let Some((was, now)) = raised {
        tracing::info!("open-files limit (ulimit -n) raised from {was} to the hard limit, {now}");
    }
    let ended = serve(&runtime, &path, in_use == LogFormat::Json);
    // Tasks on the blocking pool (a name lookup, a file read on a slow mount) must not hold
    // the exit past the grace the server already gave its connections.
    runtime.shutdown_timeout(EXIT_WAIT);
    // The lines still queued, written before anything said on stderr directly.
    drop(logging);
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, said)) => {
            if let Some(said) = said {
                say(std::io::stderr(), format_args!("error: {said}"));
            }
            code
        }
    }
}

/// Says once why wsgate cannot start, and fails: a structured line for a log collector with
/// JSON logs, words on stderr otherwise (once the lines before them are out).
fn cannot_start(logging: wsgate::Logging, format: LogFormat, error: &str) -> ExitCode {
    let logged = format == LogFormat::Json && cannot_start_logged(&error);
    drop(logging);
    if !logged {
        say(std::io::stderr(), format_args!("error: {error}"));
    }
    ExitCode::FAILURE
}

/// Logs the JSON `cannot start` line, unless `RUST_LOG` silences wsgate's errors (`off`): then
/// the words on stderr say it, as with text logs, rather than nothing at all.
fn cannot_start_logged(error: &dyn std::fmt::Display) -> bool {
    if !tracing::enabled!(tracing::Level::ERROR) {
        return false;
    }
    tracing::error!(%error, "cannot start");
    true
}

/// Below this many open files the runtime, the signal handlers and the listeners cannot all
/// be set up (and tokio's signal set-up panics when it runs out): refused with words instead.
/// (At rest the process holds about 18 with an admin endpoint: 32 leaves room for a few
/// connections, so that a limit this low is a small proxy, not one that accepts nothing.)
const MIN_OPEN_FILES: u64 = 32;

/// How long exiting waits for stray blocking tasks.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves until terminated; a failure to start is its exit code, and the words to say on
/// stderr (text logs: JSON logs log it).
fn serve(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    json: bool,
) -> Result<(), (ExitCode, Option<String>)> {
    runtime.block_on(async {
        // Before the listeners: a SIGTERM sent as soon as the port answers drains.
        let termination = wsgate::signals::Termination::register();
        let server = match wsgate::Server::start(path).await {
            Ok(server) => server,
            Err(e) => {
                // 2 is a bad config; an address in use is the machine's state, not the file's.
                let code = match e {
                    wsgate::Error::Config(_) => ExitCode::from(2),
                    wsgate::Error::Bind(_)
                    | wsgate::Error::ShuttingDown
                    | wsgate::Error::Internal(_) => ExitCode::FAILURE,
                };
                // Said once: a structured line for a log collector, a plain one otherwise
                // (once the lines before it are out).
                if json && cannot_start_logged(&e) {
                    return Err((code, None));
                }
                return Err((code, Some(e.to_string())));
            }
        };
        wsgate::signals::serve_until_terminated(server, termination, || {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "wsgate started");
        })
        .await;
        Ok(())
    })
}
