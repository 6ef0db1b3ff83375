//! The `wsgate` command: parses the command line, sets up logging and the runtime, and hands
//! over to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.

use std::io::IsTerminal;
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
        /// Worker threads (default: one per CPU; 1 runs a single-threaded runtime).
        #[arg(long, value_parser = at_least_one)]
        threads: Option<usize>,
    },
    /// Load and fully validate a config file, then exit.
    Check {
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
                    eprintln!("warning: {warning}");
                }
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
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

/// `--threads 0` would silently mean "the default": refuse it instead.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn run(path: PathBuf, format: Option<Format>, threads: Option<usize>) -> ExitCode {
    let mut runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|n| *n > 1) {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before anything slow (reading the config, certificates): a SIGHUP from a deploy hook
    // during a restart must reload, not end the process. The handler stays installed for
    // the process's life; the server takes its own stream of the signal.
    #[cfg(unix)]
    runtime.block_on(async {
        let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    });
    let config_format = Config::load(&path)
        .map(|c| c.log_format)
        .unwrap_or_default();
    let json = match format {
        Some(Format::Json) => true,
        Some(Format::Text) => false,
        None => config_format == LogFormat::Json,
    };
    init_logging(json);
    let in_use = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    wsgate::logging_set_up(in_use, format.is_some());
    let code = serve(&runtime, &path, json);
    // Tasks on the blocking pool (a name lookup, a file read on a slow mount) must not hold
    // the exit past the grace the server already gave its connections.
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}

/// How long exiting waits for stray blocking tasks.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn serve(runtime: &tokio::runtime::Runtime, path: &Path, json: bool) -> ExitCode {
    runtime.block_on(async {
        let server = match wsgate::Server::start(path).await {
            Ok(server) => server,
            Err(e) => {
                // Said once: a structured line for a log collector, a plain one otherwise.
                if json {
                    tracing::error!(error = %e, "cannot start");
                } else {
                    eprintln!("error: {e}");
                }
                // 2 is a bad config; an address in use is the machine's state, not the file's.
                return match e {
                    wsgate::Error::Config(_) => ExitCode::from(2),
                    wsgate::Error::Bind(_) | wsgate::Error::ShuttingDown => ExitCode::FAILURE,
                };
            }
        };
        let mut termination = Termination::register();
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "wsgate started");
        termination.recv().await;
        // A second signal cuts the grace short, as operators expect of Ctrl-C twice.
        let closer = server.closer();
        tokio::spawn(async move {
            termination.recv().await;
            tracing::warn!("second signal: closing live tunnels now");
            closer.close_now();
        });
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn init_logging(json: bool) {
    // Blank, or nothing but commas: no directive at all, which would log errors only.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| v.split(',').any(|d| !d.trim().is_empty()));
    let parsed = from_env
        .as_deref()
        .map(tracing_subscriber::EnvFilter::try_new);
    let mut filter = match &parsed {
        Some(Ok(filter)) => filter.clone(),
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    // Libraries' own warnings are for their developers, and wsgate logs what matters itself:
    // the file watcher's (a watch on a deleted folder going away, on every Kubernetes volume
    // update), and the TLS library's (any client can trigger one per connection, with an
    // odd SNI, say, and the connection's own line already names the TLS failure). Unless
    // RUST_LOG asks for them by name.
    for library in ["notify", "rustls"] {
        if from_env.as_deref().is_some_and(|v| names(v, library)) {
            continue;
        }
        if let Ok(quiet) = format!("{library}=error").parse() {
            filter = filter.add_directive(quiet);
        }
    }
    // Colours only for a person at a terminal: a file, a pipe or journald gets plain text.
    let colour = std::io::stderr().is_terminal()
        && !std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    if let Some(Err(e)) = parsed {
        tracing::warn!(error = %e, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// Whether a `RUST_LOG` value has a directive for `library` (or one of its modules), not
/// merely one mentioning it (`tokio_rustls` is not `rustls`).
fn names(filter: &str, library: &str) -> bool {
    filter.split(',').any(|directive| {
        let target = directive
            .trim()
            .split(['=', '['])
            .next()
            .unwrap_or_default();
        target == library || target.starts_with(&format!("{library}::"))
    })
}

/// SIGTERM (Kubernetes, systemd) or Ctrl-C, registered once so that a second one sent right
/// after the first is not missed.
struct Termination {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Termination {
    fn register() -> Termination {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate());
            let int = signal(SignalKind::interrupt());
            Termination {
                signals: term.ok().zip(int.ok()),
            }
        }
        #[cfg(not(unix))]
        Termination {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = self.signals.as_mut() {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
