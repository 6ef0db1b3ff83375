//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load generator and echo backend for benchmarking WebSocket proxies.
#[derive(Debug, Parser)]
#[command(name = "wsgate-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the built-in WebSocket echo backend.
    Echo(EchoArgs),
    /// New TCP + TLS + upgrade connections per second (no TLS resumption).
    Handshake(HandshakeArgs),
    /// Echo round-trip latency at a fixed total rate (corrected for coordinated omission).
    Latency(LatencyArgs),
    /// Echoed messages per second over many connections with a window of messages in flight.
    Throughput(ThroughputArgs),
    /// MB/s each way on one connection with large messages.
    Bulk(BulkArgs),
    /// Open and hold many idle tunnels (for measuring the proxy's memory per tunnel).
    Idle(IdleArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Runtime worker threads (1 = single-threaded runtime), at most 1024.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Ask every client for a certificate signed by a CA in this PEM file, and refuse one
    /// without (mutual TLS, as a backend behind a proxy with a client certificate).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Echo implementation: the lean frame-streaming one, or tokio-tungstenite (for comparison).
    #[arg(long, value_enum, default_value_t = EchoEngine::Lean)]
    pub engine: EchoEngine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EchoEngine {
    Lean,
    Tungstenite,
}

/// Options shared by every client scenario (the windowed ones add [`MeasureArgs`]).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Target URL: ws://host:port/path or wss://host:port/path.
    pub url: String,
    /// Trust this CA certificate (PEM) for wss://.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Skip certificate verification for wss:// (benchmarking only).
    #[arg(long, short = 'k', conflicts_with = "ca")]
    pub insecure: bool,
    /// TLS server name to send and verify (default: the URL's host).
    #[arg(long)]
    pub sni: Option<String>,
    /// Offer rustls' default TLS versions, cipher suites and groups instead of only TLS 1.3 with
    /// TLS_AES_128_GCM_SHA256 and X25519.
    #[arg(long)]
    pub tls_defaults: bool,
    /// Show this client certificate chain (PEM) to a wss:// server that asks; needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// PID of the proxy process; repeat for several (e.g. nginx master and worker). Its CPU time
    /// over the measured window is reported per operation (idle: over opening and holding the
    /// tunnels, per tunnel, beside its memory per tunnel).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Load generator runtime threads (1 = single-threaded runtime), at most 1024.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Longest a connection may take to become a WebSocket (TCP connect, TLS handshake and
    /// upgrade): a silent target is an error, not a hang. Far above any handshake under load.
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub open_timeout: Duration,
}

impl ClientArgs {
    /// What clap's attributes cannot check, as a usage error before anything is connected: a
    /// URL that parses, and the TLS options its scheme needs (`wss://`: `--ca` or
    /// `--insecure`) or has no use for (`ws://`).
    pub fn usage_error(&self) -> Option<String> {
        let url = match crate::target::Url::parse(&self.url) {
            Ok(url) => url,
            Err(e) => return Some(format!("{e:#}")),
        };
        let tls_options =
            self.ca.is_some() || self.insecure || self.sni.is_some() || self.cert.is_some();
        match url.tls {
            true if self.ca.is_none() && !self.insecure => Some(
                "wss:// needs --ca PEM (the CA that signed the target's certificate) or --insecure".into(),
            ),
            false if tls_options || self.tls_defaults => {
                Some("--ca, --insecure, --sni, --cert, --key and --tls-defaults only apply to wss:// URLs".into())
            }
            _ if has_duplicate(&self.pids) => {
                Some("--pid names the same process twice: its CPU would count twice".into())
            }
            _ => None,
        }
    }
}

fn has_duplicate(pids: &[u32]) -> bool {
    let mut sorted = pids.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

impl Command {
    /// The connections a load scenario holds open at once (each a file descriptor).
    pub fn connections(&self) -> u64 {
        u64::from(match self {
            Command::Echo(_) | Command::Bulk(_) => 1,
            Command::Handshake(a) => a.concurrency,
            Command::Latency(a) => a.connections,
            Command::Throughput(a) => a.connections,
            Command::Idle(a) => a.count,
        })
    }

    /// What clap's attributes cannot check (see [`ClientArgs::usage_error`]), and an idle
    /// `--hold` shorter than its `--settle`: the memory is read `--settle` after READY, within
    /// the hold.
    pub fn usage_error(&self) -> Option<String> {
        if let Command::Idle(a) = self {
            if a.hold.is_some_and(|hold| hold < a.settle) {
                return Some(format!(
                    "--hold ({:?}) is shorter than --settle ({:?}): the memory is read --settle after READY, while the tunnels are held",
                    a.hold.unwrap_or_default(),
                    a.settle
                ));
            }
        }
        self.client()?.usage_error()
    }

    /// Its name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Echo(_) => "echo",
            Command::Handshake(_) => "handshake",
            Command::Latency(_) => "latency",
            Command::Throughput(_) => "throughput",
            Command::Bulk(_) => "bulk",
            Command::Idle(_) => "idle",
        }
    }

    /// The client options of a load scenario; `None` for the echo backend.
    pub fn client(&self) -> Option<&ClientArgs> {
        match self {
            Command::Echo(_) => None,
            Command::Handshake(a) => Some(&a.client),
            Command::Latency(a) => Some(&a.client),
            Command::Throughput(a) => Some(&a.client),
            Command::Bulk(a) => Some(&a.client),
            Command::Idle(a) => Some(&a.client),
        }
    }
}

/// The measured window of the scenarios that run one: all but idle, whose measurement is the
/// tunnels' opening and holding.
#[derive(Debug, Clone, Args)]
pub struct MeasureArgs {
    /// Measured window (e.g. 10s, 500ms).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_measured)]
    pub duration: Duration,
    /// Warm-up before the measured window (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Concurrent workers, each opening one connection after another.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Connections (tunnels); the rate is spread evenly over them.
    #[arg(long, short = 'c', default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Total messages per second over all connections.
    #[arg(long, short = 'r', default_value_t = 5000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Message payload size in bytes (1 to 64 MiB).
    #[arg(long, short = 's', default_value_t = 64, value_parser = size_parser())]
    pub size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Connections (tunnels).
    #[arg(long, short = 'c', default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Message payload size in bytes (1 to 64 MiB).
    #[arg(long, short = 's', default_value_t = 64, value_parser = size_parser())]
    pub size: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'w', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
}

#[derive(Debug, Clone, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Message payload size in bytes (1 to 64 MiB).
    #[arg(long, short = 's', default_value_t = 65536, value_parser = size_parser())]
    pub size: usize,
    /// Messages in flight on the connection.
    #[arg(long, short = 'w', default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Tunnels to open and hold.
    #[arg(long, short = 'n', default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Connections being set up at once.
    #[arg(long, short = 'c', default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Hold the tunnels this long after READY, then report and exit (default: until killed).
    #[arg(long, value_parser = parse_window)]
    pub hold: Option<Duration>,
    /// Wait this long after READY before reading the proxy's memory.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// Largest `--size`: 64 MiB, a thousand times the bulk default. Every connection's write buffer
/// holds a copy of each message in flight, so a far larger size only ends in an allocation
/// failure (an abort, not an error).
pub const MAX_SIZE: u64 = 64 * 1024 * 1024;

/// `--size`: 1 byte to [`MAX_SIZE`].
fn size_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_SIZE)
}

/// A send rate, from [`MIN_RATE`] to [`MAX_RATE`] messages per second. The schedule divides by
/// it: zero or NaN leaves every due time undefined, a rate so small that the gap between sends
/// is no `Duration` stops the pacer, and one so large that the gap rounds to nothing puts every
/// send at the start, so the pacer would never reach the window's end.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid rate {s:?} (examples: 5000, 2.5e4)"))?;
    if !valid_rate(rate) {
        return Err(format!(
            "{s:?} must be a number of messages per second from {MIN_RATE} to {MAX_RATE}"
        ));
    }
    Ok(rate)
}

/// One message in about 12 days.
pub const MIN_RATE: f64 = 1e-6;
/// Far beyond what one core can send, or a loopback carry.
pub const MAX_RATE: f64 = 1e7;

/// Whether [`parse_rate`] would take `rate`.
pub fn valid_rate(rate: f64) -> bool {
    (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// The longest duration taken: a run, a warm-up or a hold past it is a typo, and past the
/// clock's range one would end the tool with a panic, not an error.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration that must be longer than zero (a measured window, a timeout): a zero-length
/// window would report rates from nothing.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

/// The shortest measured window: below it a rate is of a handful of operations and the
/// timers' granularity, and the proxy's CPU (counted by /proc in 10 ms ticks) is one tick
/// or none.
pub const MIN_WINDOW: Duration = Duration::from_millis(100);

/// A measured window: at least [`MIN_WINDOW`].
pub fn parse_measured(s: &str) -> Result<Duration, String> {
    match parse_window(s)? {
        d if d < MIN_WINDOW => Err(format!(
            "{s:?} is too short to measure: at least {}ms (a rate over less is of a handful \
             of operations, and /proc counts the proxy's CPU in 10 ms ticks)",
            MIN_WINDOW.as_millis()
        )),
        d => Ok(d),
    }
}

/// Parses `10`, `10s`, `500ms`, `2m`, `1.5s`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("{s:?} is longer than 30 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wsgate-bench").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_window("0s").is_err());
        assert!(parse_window("0ms").is_err());
        for huge in ["31d", "100000000000000000000", "721h", "1e30s"] {
            assert!(parse_duration(huge).is_err(), "{huge:?} accepted");
        }
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        assert_eq!(parse_window("2s").unwrap(), Duration::from_secs(2));
        for short in ["1us", "0.001s", "99ms"] {
            assert!(parse_measured(short).is_err(), "{short:?} accepted");
        }
        assert_eq!(parse_measured("100ms").unwrap(), MIN_WINDOW);
        assert!(parse_measured("0s")
            .unwrap_err()
            .contains("longer than zero"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("2.5e4"), Ok(25_000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("1e7"), Ok(1e7));
        for bad in [
            "0", "-1", "nan", "NaN", "inf", "-inf", "1e400", "1e300", "1e-300", "fast", "",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_and_shared_options() {
        let cli = parse(&[
            "latency",
            "wss://127.0.0.1:8443/",
            "--insecure",
            "--pid",
            "1",
            "--pid",
            "2",
        ])
        .unwrap();
        let Command::Latency(a) = cli.command else {
            panic!("not latency")
        };
        assert_eq!(a.client.url, "wss://127.0.0.1:8443/");
        assert!(a.client.insecure && !a.client.json);
        assert_eq!(a.client.pids, vec![1, 2]);
        assert_eq!(a.measure.duration, Duration::from_secs(10));
        assert_eq!(a.client.threads, 1);
        assert_eq!((a.connections, a.rate, a.size), (100, 5000.0, 64));

        let cli = parse(&[
            "throughput",
            "ws://h/",
            "-c",
            "1000",
            "-s",
            "64",
            "-w",
            "8",
            "--json",
        ])
        .unwrap();
        let Command::Throughput(a) = cli.command else {
            panic!("not throughput")
        };
        assert_eq!(
            (a.connections, a.size, a.window, a.client.json),
            (1000, 64, 8, true)
        );

        let Command::Bulk(a) = parse(&["bulk", "ws://h/"]).unwrap().command else {
            panic!("not bulk")
        };
        assert_eq!((a.size, a.window), (65536, 8));

        let Command::Idle(a) = parse(&["idle", "ws://h/", "-n", "5000", "--hold", "30s"])
            .unwrap()
            .command
        else {
            panic!("not idle")
        };
        assert_eq!((a.count, a.hold), (5000, Some(Duration::from_secs(30))));
        assert_eq!(a.concurrency, 64);

        let Command::Handshake(a) = parse(&["handshake", "ws://h/", "-d", "500ms"])
            .unwrap()
            .command
        else {
            panic!("not handshake")
        };
        assert_eq!(
            (a.concurrency, a.measure.duration),
            (32, Duration::from_millis(500))
        );

        let Command::Echo(a) = parse(&["echo", "--listen", "127.0.0.1:0", "--threads", "2"])
            .unwrap()
            .command
        else {
            panic!("not echo")
        };
        assert_eq!((a.listen.port(), a.threads), (0, 2));
        assert_eq!(a.engine, EchoEngine::Lean);
    }

    #[test]
    fn the_command_line_is_consistent() {
        // Duplicate short flags and the like panic here rather than at a user's run.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn idle_has_no_measured_window_and_the_others_keep_theirs() {
        // Idle measures the opening and the hold: a window would be ignored, so it is refused.
        for window in [
            &["-d", "5s"][..],
            &["--duration", "5s"],
            &["--warmup", "1s"],
        ] {
            let mut args = vec!["idle", "ws://h/"];
            args.extend(window);
            let err = parse(&args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{window:?}"
            );
        }
        let Command::Idle(a) = parse(&["idle", "ws://h/", "-c", "8"]).unwrap().command else {
            panic!("not idle")
        };
        assert_eq!(a.concurrency, 8);

        for scenario in ["handshake", "latency", "throughput", "bulk"] {
            let cli = parse(&[scenario, "ws://h/", "-d", "2s", "--warmup", "250ms"]);
            let measure = match cli.unwrap().command {
                Command::Handshake(a) => a.measure,
                Command::Latency(a) => a.measure,
                Command::Throughput(a) => a.measure,
                Command::Bulk(a) => a.measure,
                _ => panic!("not {scenario}"),
            };
            assert_eq!(
                (measure.duration, measure.warmup),
                (Duration::from_secs(2), Duration::from_millis(250)),
                "{scenario}"
            );
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["latency"]).is_err(), "URL is required");
        assert!(parse(&["latency", "ws://h/", "-c", "0"]).is_err());
        for scenario in ["latency", "throughput", "bulk"] {
            for size in ["0", "67108865", "100000000000"] {
                let err = parse(&[scenario, "ws://h/", "-s", size]).unwrap_err();
                assert_eq!(
                    err.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{scenario} -s {size}"
                );
            }
            let cli = parse(&[scenario, "ws://h/", "--size", "67108864"]);
            assert!(cli.is_ok(), "{scenario}: 64 MiB is the largest size");
        }
        for rate in ["0", "nan", "inf"] {
            let err = parse(&["latency", "ws://h/", "-r", rate]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{rate}"
            );
        }
        assert!(parse(&["handshake", "ws://h/", "--threads", "0"]).is_err());
        assert!(parse(&["idle", "ws://h/", "--hold", "soon"]).is_err());
        let Command::Idle(a) = parse(&["idle", "ws://h/", "--hold", "500ms", "--settle", "2s"])
            .unwrap()
            .command
        else {
            panic!("not idle");
        };
        let short = Command::Idle(a).usage_error().unwrap_or_default();
        assert!(short.contains("shorter than --settle"), "{short}");
        assert!(
            parse(&["echo", "--tls-cert", "c.pem"]).is_err(),
            "needs --tls-key"
        );
        assert!(parse(&["frobnicate"]).is_err());
    }
}
