//! The load tool as a command: a bad value is a usage error (exit status 2); a wrong `--pid`
//! or a failing target ends the run with a clear error (exit status 1), never with figures
//! that measure nothing.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_wrong_pid_is_refused_before_any_load() {
    // The target does not even exist: the --pid error must come first.
    let out = bench(&["handshake", "ws://127.0.0.1:9/", "--pid", "999999999"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--pid"), "{}", stderr(&out));
}

#[test]
fn more_in_flight_than_memory_allows_is_refused_before_any_load() {
    // 1,000 × 4 × 64 MiB: 250 GiB the tool would try to hold. The target does not exist:
    // the refusal must come first.
    let out = bench(&[
        "throughput",
        "ws://127.0.0.1:9/",
        "-c",
        "1000",
        "-w",
        "4",
        "-s",
        "67108864",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in flight; at most 4096 MiB"),
        "{}",
        stderr(&out)
    );
}

/// More connections than this process may open files is refused before any load (it used to
/// start, and fail partway with errors that looked like the target's; at 4,294,967,295 it
/// grew by a gigabyte a second, then aborted).
#[test]
fn more_connections_than_open_files_are_refused_before_any_load() {
    for (args, count, hint) in [
        (
            &["handshake", "ws://127.0.0.1:9/", "-c", "4294967295"][..],
            "4294967295",
            "raise that or lower -c",
        ),
        (
            &["idle", "ws://127.0.0.1:9/", "-n", "4294967295"][..],
            "4294967295",
            "raise that or lower -n",
        ),
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let expected = format!("{count} connection(s) open at once need");
        for expected in [expected.as_str(), hint] {
            assert!(
                stderr(&out).contains(expected),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
}

/// The echo backend under an open-files limit too low to serve a connection: told to raise
/// it, not to lower options it does not have.
#[test]
fn an_echo_backend_without_open_files_says_so_in_its_own_terms() {
    let bin = env!("CARGO_BIN_EXE_wsgate-bench");
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n 40 && exec {bin} echo --listen 127.0.0.1:0"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 connection(s) open at once need"));
    assert!(stderr(&out).contains("raise that"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("lower"), "{}", stderr(&out));
}

#[test]
fn a_zero_length_window_is_refused() {
    let out = bench(&["latency", "ws://127.0.0.1:9/", "-d", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("longer than zero"),
        "{}",
        stderr(&out)
    );
}

/// Each bad value ends as a usage error (exit status 2, clap's message naming the option)
/// before anything is connected: the target does not even exist.
#[test]
fn bad_values_are_usage_errors() {
    for (args, option) in [
        (&["latency", "ws://127.0.0.1:9/", "-r", "0"][..], "--rate"),
        (&["latency", "ws://127.0.0.1:9/", "-r", "nan"][..], "--rate"),
        (
            &["latency", "ws://127.0.0.1:9/", "--rate", "inf"][..],
            "--rate",
        ),
        // Used to abort on the allocation (exit 134, with a backtrace).
        (
            &["bulk", "ws://127.0.0.1:9/", "-s", "100000000000"][..],
            "--size",
        ),
        (
            &["throughput", "ws://127.0.0.1:9/", "-s", "0"][..],
            "--size",
        ),
        // The URL and the TLS options its scheme needs, checked together.
        (&["latency", "wss://127.0.0.1:9/"][..], "--ca"),
        (&["latency", "ws://127.0.0.1:9/", "-k"][..], "--insecure"),
        // Verifying or not: both asked for is a slip, not a run that only seems to verify.
        (
            &["latency", "wss://127.0.0.1:9/", "-k", "--ca", "ca.pem"][..],
            "--ca",
        ),
        (&["latency", "http://127.0.0.1:9/"][..], "ws://"),
        // Used to go into the request line as written: `GET /x#frag`, a raw space, or a CR LF
        // adding a header of its own.
        (&["latency", "ws://127.0.0.1:9/x#frag"][..], "fragment"),
        (&["latency", "ws://127.0.0.1:9/a b"][..], "percent-encode"),
        (
            &["latency", "ws://127.0.0.1:9/x\r\nX-Injected: 1"][..],
            "percent-encode",
        ),
        (
            &["latency", "ws://127.0.0.1:9/caf\u{e9}"][..],
            "percent-encode",
        ),
        (
            &[
                "latency",
                "ws://127.0.0.1:9/",
                "--cert",
                "c.pem",
                "--key",
                "k.pem",
            ][..],
            "--cert",
        ),
        // Used to abort starting 65,535 threads.
        (
            &["handshake", "ws://127.0.0.1:9/", "--threads", "65535"][..],
            "--threads",
        ),
        // Its CPU would count twice.
        (
            &["handshake", "ws://127.0.0.1:9/", "--pid", "1", "--pid", "1"][..],
            "--pid",
        ),
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(option), "{args:?}: {}", stderr(&out));
    }
}

/// The built-in echo backend (plain ws://) on a free port of 127.0.0.1.
async fn echo_backend() -> SocketAddr {
    let any_port = "127.0.0.1:0".parse().unwrap();
    let lean = wsgate_bench::cli::EchoEngine::Lean;
    wsgate_bench::echo::spawn(any_port, None, lean)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_plain_echo_backend_fails_at_once_not_at_the_open_timeout() {
    let addr = echo_backend().await;
    let url = format!("wss://{addr}/");
    let out = tokio::task::spawn_blocking(move || {
        bench(&[
            "handshake",
            &url,
            "-k",
            "--open-timeout",
            "600s",
            "-d",
            "1s",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot open"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("no answer"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is it a ws:// port?"),
        "{}",
        stderr(&out)
    );
}

/// The other slip: ws:// to the TLS echo backend, which answers the plain request with a TLS
/// alert; said as such, not only as a connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_to_a_tls_echo_backend_says_it_answered_in_tls() {
    let echo = common::tls_echo(false).await;
    let out = bench_async(short_json(&["latency", &format!("ws://{}/", echo.addr)])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it answered in TLS: is it a wss:// port?"),
        "{}",
        stderr(&out)
    );
}

/// A refusal whose body says why in a line of plain text (as wsgate's to a plain request on
/// its TLS port does) is quoted in the error, not only its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusals_reason_in_its_body_is_quoted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let body = "this port speaks TLS: connect with wss:// (or https://)\n";
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    let out = bench_async(short_json(&["latency", &format!("ws://{addr}/")])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("400 Bad Request instead of 101 (\"this port speaks TLS"),
        "{}",
        stderr(&out)
    );
}

/// A target that echoes for a moment and then goes quiet, its connections open: the run's
/// rate would average work and silence, so it fails, saying so (it passed with exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stalls_partway_fails_a_steady_run() {
    let addr = upgrading(|mut tcp| async move {
        let quiet_from = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        while let Ok((opcode, payload)) = read_client_frame(&mut tcp).await {
            if tokio::time::Instant::now() < quiet_from
                && tcp.write_all(&self_frame(opcode, &payload)).await.is_err()
            {
                return;
            }
        }
    })
    .await;
    let url = format!("ws://{addr}/");
    for args in [&["throughput", &url, "-c", "2"][..], &["bulk", &url]] {
        let args = [args, &["-d", "2s", "--warmup", "50ms", "--json"]].concat();
        let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
        failed_as_stalled(&out);
    }
}

/// A run that failed for its target's stall: exit 1, said so, its quiet over a second.
fn failed_as_stalled(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(
        stderr(out).contains("the target stalled"),
        "{}",
        stderr(out)
    );
    let quiet = report(out)["longest_quiet_s"].as_f64().unwrap();
    assert!(quiet > 1.0, "{quiet}");
}

/// One tunnel stalls while the other echoes on: the total never goes quiet, and the run fails
/// on that tunnel (a proxy that wedged some of its tunnels is not measured working).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_stalls_while_the_others_echo_fails_the_run() {
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = upgrading(move |mut tcp| {
        // The probe is the first connection; the run's first stops echoing 300 ms in.
        let nth = accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let quiet_from =
            (nth == 1).then(|| tokio::time::Instant::now() + std::time::Duration::from_millis(300));
        async move {
            while let Ok((opcode, payload)) = read_client_frame(&mut tcp).await {
                let echoing = quiet_from.is_none_or(|t| tokio::time::Instant::now() < t);
                if echoing && tcp.write_all(&self_frame(opcode, &payload)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let url = format!("ws://{addr}/");
    let args = [
        "throughput",
        &url,
        "-c",
        "2",
        "-d",
        "2s",
        "--warmup",
        "50ms",
        "--json",
    ];
    let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        // Numbered in the order the connections finished opening, not the server's accepts.
        ["connection 1 of 2", "connection 2 of 2"]
            .iter()
            .any(|n| stderr(&out).contains(&format!("{n} had nothing come back"))),
        "{}",
        stderr(&out)
    );
    let report = report(&out);
    let tunnel = report["longest_connection_quiet_s"].as_f64().unwrap();
    let any = report["longest_quiet_s"].as_f64().unwrap();
    assert!(tunnel > 1.0 && any < 1.0, "{tunnel} {any}");
}

/// A target that stops answering upgrades for most of a handshake run: not averaged into a
/// rate, but a failed run, as a stall of the steady runs is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stalls_partway_fails_a_handshake_run() {
    use std::time::Duration;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // From the probe (the first connection) on: answered at once, except those arriving
        // from 0.4 s to 2.4 s after it, held until then.
        let mut first = None;
        while let Ok((tcp, _)) = listener.accept().await {
            let start = *first.get_or_insert_with(tokio::time::Instant::now);
            tokio::spawn(async move {
                let since = start.elapsed();
                if since > Duration::from_millis(400) && since < Duration::from_millis(2400) {
                    tokio::time::sleep_until(start + Duration::from_millis(2400)).await;
                }
                let _ = wsgate_bench::server::serve_conn(tcp).await;
            });
        }
    });
    let url = format!("ws://{addr}/");
    let args = [
        "handshake",
        &url,
        "-c",
        "2",
        "-d",
        "3s",
        "--warmup",
        "50ms",
        "--json",
    ];
    let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
    failed_as_stalled(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_during_a_steady_run_fails_the_run() {
    // Upgrades, then drops every connection 300 ms later.
    let addr = upgrading(|tcp| async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(tcp);
    })
    .await;
    let url = format!("ws://{addr}/");
    let out = tokio::task::spawn_blocking(move || {
        bench(&[
            "latency", &url, "-c", "2", "-r", "100", "-d", "1s", "--warmup", "50ms",
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the target failed during the run"),
        "{}",
        stderr(&out)
    );
}

/// Runs the tool off the test's runtime, which serves the targets meanwhile.
async fn bench_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .unwrap()
}

/// Arguments from string slices, with a short window and JSON output.
fn short_json(args: &[&str]) -> Vec<String> {
    let tail = ["-d", "300ms", "--warmup", "50ms", "--json"];
    args.iter().chain(&tail).map(|a| a.to_string()).collect()
}

/// The report printed on stdout (with --json) before any failure.
fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A target that upgrades every connection, then reads and drops whatever it is sent: no echo
/// ever comes back, and no connection fails.
async fn upgrades_and_never_echoes() -> SocketAddr {
    upgrading(|mut tcp| async move {
        let _ = tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await;
    })
    .await
}

/// A target on 127.0.0.1 that upgrades every connection, then hands it to `then`; the
/// connection ends when `then` is done with it.
async fn upgrading<F, Fut>(then: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let then = std::sync::Arc::new(then);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let then = then.clone();
            tokio::spawn(async move {
                if wsgate_bench::server::handshake(&mut tcp).await.is_ok() {
                    then(tcp).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_echoes_fails_the_run_after_its_report() {
    let url = format!("ws://{}/", upgrades_and_never_echoes().await);
    for (args, why) in [
        (
            &["latency", &url, "-c", "2", "-r", "100"][..],
            "no echo came back for a message of the measured window",
        ),
        (
            &["throughput", &url, "-c", "2"],
            "no echoed message came back",
        ),
        (&["bulk", &url], "not one echoed byte came back"),
    ] {
        let out = bench_async(short_json(args)).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        let report = report(&out);
        assert_eq!(report["messages"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }
}

/// A target that pushes messages of its own as fast as it can, echoing nothing: a throughput
/// run must not count them as echoes (it reported millions per second). They are not echoes
/// of what it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_pushing_messages_of_its_own_fails_a_throughput_run() {
    let addr = upgrading(|mut tcp| async move {
        let pushed = [0x82u8, 1, b'p'].repeat(1000);
        while tcp.write_all(&pushed).await.is_ok() {}
    })
    .await;
    let url = format!("ws://{addr}/");
    let out = bench_async(short_json(&["throughput", &url, "-c", "2"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not an echo"), "{}", stderr(&out));
}

/// How a misbehaving target answers each message.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Twice,
    FirstByteFlipped,
    OneByteShorter,
    OneByteLonger,
    AsText,
}

impl Reply {
    /// The frames sent back for a message of `opcode` with `payload` (unmasked).
    fn to(self, opcode: u8, mut payload: Vec<u8>) -> Vec<u8> {
        let mut opcode = opcode;
        match self {
            Reply::Twice => {
                return [self_frame(opcode, &payload), self_frame(opcode, &payload)].concat()
            }
            Reply::FirstByteFlipped => payload[0] ^= 0xFF,
            Reply::OneByteShorter => {
                payload.pop();
            }
            Reply::OneByteLonger => payload.push(0),
            Reply::AsText => opcode = 1,
        }
        self_frame(opcode, &payload)
    }

    /// What the tool's error says.
    fn why(self) -> &'static str {
        match self {
            // A copy arriving with another echo owed has the wrong number; one arriving with
            // none owed (latency, at a low rate) is a message too many.
            Reply::Twice => "twice",
            Reply::FirstByteFlipped => "came back beginning with ff",
            Reply::OneByteShorter => "came back with 63 B",
            Reply::OneByteLonger => "came back with 65 B or more",
            Reply::AsText => "was sent binary and came back text",
        }
    }
}

/// An unmasked server frame (FIN set).
fn self_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xFFFF => {
            f.push(126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Reads one client frame (masked, unfragmented): its opcode and unmasked payload.
async fn read_client_frame(tcp: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await?;
    let len = match head[1] & 0x7F {
        126 => u64::from(tcp.read_u16().await?),
        127 => tcp.read_u64().await?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    tcp.read_exact(&mut mask).await?;
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await?;
    payload
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b ^= mask[i & 3]);
    Ok((head[0] & 0x0F, payload))
}

/// A target that upgrades every connection and answers each message it is sent with `reply`.
async fn replying(reply: Reply) -> SocketAddr {
    upgrading(move |mut tcp| async move {
        while let Ok((opcode, payload)) = read_client_frame(&mut tcp).await {
            if tcp.write_all(&reply.to(opcode, payload)).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A reply that is not the echo of the message sent (a copy too many, a byte changed, one
/// byte short or over, text for binary) fails every steady run, naming what differed: each
/// was counted as an echo (bulk's MB/s doubled by a target echoing twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_is_not_the_echo_fails_every_steady_run() {
    let mut runs = Vec::new();
    for reply in [
        Reply::Twice,
        Reply::FirstByteFlipped,
        Reply::OneByteShorter,
        Reply::OneByteLonger,
        Reply::AsText,
    ] {
        let url = format!("ws://{}/", replying(reply).await);
        for args in [
            &["latency", &url, "-c", "1", "-r", "100", "-s", "64"][..],
            &["throughput", &url, "-c", "1", "-s", "64"],
            &["bulk", &url, "-s", "64"],
        ] {
            let (what, args) = (format!("{reply:?} {}", args[0]), short_json(args));
            runs.push(async move { (what, reply.why(), bench_async(args).await) });
        }
    }
    for (what, why, out) in futures_util::future::join_all(runs).await {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("not an echo") && err.contains(why),
            "{what}: {err}"
        );
        assert!(report(&out)["errors"].as_u64() > Some(0), "{what}");
    }
}

/// The tester's case: bulk at its defaults (64 KiB messages) against a target echoing each
/// message twice reported twice the MB/s, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_run_against_a_target_echoing_twice_fails() {
    let url = format!("ws://{}/", replying(Reply::Twice).await);
    let out = bench_async(short_json(&["bulk", &url])).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a message echoed twice"), "{err}");
}

/// Reads a request head (to its blank line) and answers `response`, then closes.
async fn answer(mut tcp: TcpStream, response: &[u8]) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = tcp.write_all(response).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_dies_during_a_handshake_run_fails_the_run() {
    // Upgrades the probe's connection, then closes its listener: later connects are refused
    // (or reset, those the backlog took before it closed).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let _ = wsgate_bench::server::handshake(&mut tcp).await;
        }
    });
    let url = format!("ws://{addr}/");
    let out = bench_async(short_json(&["handshake", &url, "-c", "2"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("connection attempts failed below HTTP"),
        "{err}"
    );
    assert!(err.contains("first: "), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    let report = report(&out);
    assert!(report["connection_errors"].as_u64() > Some(0), "{report}");
    assert_eq!(report["connection_errors"], report["errors"], "{report}");
}

/// A target that upgrades the probe at once, then every later connection only after a second:
/// a handshake run of 300 ms completes none, and says so rather than reporting nothing as a
/// success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_run_that_completes_none_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let _ = wsgate_bench::server::handshake(&mut tcp).await;
        }
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let _ = wsgate_bench::server::handshake(&mut tcp).await;
            });
        }
    });
    let url = format!("ws://{addr}/");
    let out = bench_async(short_json(&["handshake", &url, "-c", "2"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no handshake completed in the measured window"),
        "{}",
        stderr(&out)
    );
    assert_eq!(report(&out)["handshakes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_run_refused_over_http_is_measured_not_failed() {
    // A proxy at its connection limit: the probe is upgraded, every later upgrade gets a 503.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let _ = wsgate_bench::server::handshake(&mut tcp).await;
        }
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(answer(
                tcp,
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            ));
        }
    });
    let url = format!("ws://{addr}/");
    let out = bench_async(short_json(&["handshake", &url, "-c", "2"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = report(&out);
    assert!(report["errors"].as_u64() > Some(0), "{report}");
    assert_eq!(report["connection_errors"], 0, "{report}");
    let first = report["first_error"].as_str().unwrap_or_default();
    assert!(first.contains("503 Service Unavailable"), "{report}");
}

/// Tunnels that end before the memory is read (a target whose idle timeout is shorter than
/// `--settle`): the per-tunnel figures would divide the growth among the wrong number, so the
/// run fails after its report, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_whose_tunnels_end_before_the_reading_fails() {
    // Upgrades, then closes at once: every tunnel ends during the settle.
    let addr = upgrading(|tcp| async move { drop(tcp) }).await;
    let url = format!("ws://{addr}/");
    let args = [
        "idle", &url, "-n", "4", "--settle", "300ms", "--hold", "300ms", "--json",
    ];
    let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4 of the 4 tunnels ended before the memory was read"),
        "{}",
        stderr(&out)
    );
    assert_eq!(report(&out)["held"], 0);
}

/// A target that sends a message right behind each 101, in the same write, larger than the
/// tool's read buffer for an idle tunnel, and a ping later: the tunnels are held, not taken
/// for closed (a read into the buffer those first bytes filled read nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_whose_target_greets_each_tunnel_holds_them_all() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let Ok(answer) = wsgate_bench::server::response(&head) else {
                    return;
                };
                // A 300-byte binary message, unmasked, behind the 101.
                let mut flight = answer.into_bytes();
                flight.extend([0x82, 126, 0x01, 0x2c]);
                flight.extend([b'g'; 300]);
                if tcp.write_all(&flight).await.is_err() {
                    return;
                }
                // Then a ping, once the tunnel is held (within the settle): the read that
                // wakes for it is the one that found no room.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if tcp.write_all(&[0x89, 0]).await.is_ok() {
                    let _ = tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await;
                }
            });
        }
    });
    let url = format!("ws://{addr}/");
    let args = [
        "idle", &url, "-n", "4", "--settle", "300ms", "--hold", "300ms", "--json",
    ];
    let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = report(&out);
    assert_eq!(
        (&report["held"], &report["dropped"]),
        (&4.into(), &0.into()),
        "{report}"
    );
}

/// The process given with `--pid` ending mid-run (the proxy crashing) is when the report
/// matters most: it is printed, and the run fails saying what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_that_ends_during_the_run_keeps_the_report_and_fails_it() {
    // Stands in for the proxy: ended (and reaped at once, so that its /proc entry goes with
    // it) once the run's connections are open, the probe's and both of the run's.
    let mut proxy = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = proxy.id().to_string();
    let (opened, end_it) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Also if the test ends first (the sender dropped).
        let _ = end_it.recv();
        let _ = proxy.kill();
        let _ = proxy.wait();
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(wsgate_bench::server::serve_conn(tcp));
            accepted += 1;
            if accepted == 3 {
                let _ = opened.send(());
            }
        }
    });
    let url = format!("ws://{echo}/");
    let args = [
        "throughput",
        &url,
        "-c",
        "2",
        "-d",
        "2s",
        "--warmup",
        "50ms",
        "--pid",
        &pid,
        "--json",
    ];
    let out = bench_async(args.iter().map(|a| a.to_string()).collect()).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ended during the run"),
        "{}",
        stderr(&out)
    );
    assert!(
        report(&out)["messages"].as_u64() > Some(0),
        "the report is kept"
    );
}

/// A stdout that cannot be written (a closed pipe, a full disk) ends the run with a one-line
/// error and the failure status, not a panic (it was exit 101, "failed printing to stdout").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_cannot_be_written_is_an_error_not_a_panic() {
    let url = format!("ws://{}/", echo_backend().await);
    let args = short_json(&["handshake", &url, "-c", "1"]);
    let full = tokio::task::spawn_blocking({
        let args = args.clone();
        move || {
            let dev_full = std::fs::File::create("/dev/full").unwrap();
            Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
                .args(&args)
                .stdout(dev_full)
                .output()
                .unwrap()
        }
    });
    let closed_pipe = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end closed before the tool writes anything: its write gets EPIPE.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    });
    for (out, why) in [
        (full.await.unwrap(), "No space left on device"),
        (closed_pipe.await.unwrap(), "Broken pipe"),
    ] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: cannot write the report to stdout") && last.contains(why),
            "{err}"
        );
    }
}

/// Blocks until process `pid` (a child of this one) has exited, without reaping it: it stays
/// a zombie (state Z) until waited for.
fn wait_exited_unreaped(pid: u32) {
    // SAFETY: waitid writes only into the zeroed siginfo it is given.
    let waited = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
    };
    assert_eq!(waited, 0, "{}", std::io::Error::last_os_error());
}

/// A `--pid` process that has exited but is not reaped yet (a zombie) has ended: it used to be
/// read as alive, using no CPU (proxy_cpu_us 0, exit status 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pid_left_a_zombie_has_ended_before_or_during_the_run() {
    // Before the run: refused before any connection, as a PID that is gone.
    let mut zombie = Command::new("true").spawn().unwrap();
    wait_exited_unreaped(zombie.id());
    let pid = zombie.id().to_string();
    let out = bench(&["handshake", "ws://127.0.0.1:9/", "--pid", &pid]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--pid") && err.contains("has ended"), "{err}");
    zombie.wait().unwrap();

    // During the run: the stand-in proxy (`cat`, ending when its input does) is made a zombie
    // once the probe is served, before the run's first connection is answered.
    let mut proxy = Command::new("cat").stdin(Stdio::piped()).spawn().unwrap();
    let proxy_pid = proxy.id();
    let mut input = proxy.stdin.take();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((probe, _)) = listener.accept().await {
            tokio::spawn(wsgate_bench::server::serve_conn(probe));
        }
        while let Ok((tcp, _)) = listener.accept().await {
            if let Some(input) = input.take() {
                drop(input);
                tokio::task::spawn_blocking(move || wait_exited_unreaped(proxy_pid))
                    .await
                    .unwrap();
            }
            tokio::spawn(wsgate_bench::server::serve_conn(tcp));
        }
    });
    let url = format!("ws://{addr}/");
    let pid = proxy_pid.to_string();
    let out = bench_async(short_json(&["handshake", &url, "-c", "1", "--pid", &pid])).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ended during the run"), "{err}");
    assert!(report(&out).get("proxy_cpu_us").is_none(), "{err}");
    proxy.wait().unwrap();
}

/// A target refusing (503) its first connections after the probe, then upgrading every one:
/// the refusals, all in the warm-up, are not counted with the handshakes of the window (the
/// errors used to include the warm-up's, the handshakes not), but reported apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_run_counts_its_errors_in_the_same_window_as_its_handshakes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            accepted += 1;
            // The probe (the first) is upgraded, the next three are refused.
            if (2..=4).contains(&accepted) {
                tokio::spawn(answer(
                    tcp,
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                ));
            } else {
                tokio::spawn(async move {
                    let _ = wsgate_bench::server::handshake(&mut tcp).await;
                });
            }
        }
    });
    let url = format!("ws://{addr}/");
    // Three refusals, each followed by the tool's 10 ms pause, end well within a 1 s warm-up.
    let args = [
        "handshake",
        &url,
        "-c",
        "1",
        "-d",
        "300ms",
        "--warmup",
        "1s",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push("--json".into());
    let out = bench_async(args).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = report(&out);
    assert!(report["handshakes"].as_u64() > Some(0), "{report}");
    assert_eq!(
        (&report["errors"], &report["warmup_errors"]),
        (&0.into(), &3.into()),
        "{report}"
    );
}

/// Starts the tool with stdout and stderr piped.
fn spawn_bench(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `idle` with `args` (its READY on stderr with --json), sends it `signal` once READY is
/// said, and returns its output (stderr: what followed READY).
fn idle_signalled_after_ready(args: &[&str], signal: libc::c_int) -> Output {
    use std::io::{BufRead, Read};
    let mut child = spawn_bench(args);
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("READY") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "ended before READY");
    }
    // SAFETY: kill only sends a signal, to the child started above.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let mut rest = Vec::new();
    err.read_to_end(&mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stderr = rest;
    out
}

/// A signal just after READY, in the settle (1 s by default), used to end `idle` by the
/// signal with no report; in the hold it ends the hold. Either way the run reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_on_a_signal_at_any_point_after_ready() {
    let url = format!("ws://{}/", echo_backend().await);
    for (extra, signal) in [
        (&["--settle", "600s"][..], libc::SIGTERM),
        (&["--settle", "600s"], libc::SIGINT),
        (&["--settle", "0s"], libc::SIGINT),
        (&["--settle", "0s", "--hold", "600s"], libc::SIGTERM),
    ] {
        let mut args = vec![
            "idle".to_string(),
            url.clone(),
            "-n".into(),
            "3".into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            idle_signalled_after_ready(&args, signal)
        })
        .await
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{extra:?} {signal}: {}",
            stderr(&out)
        );
        let report = report(&out);
        assert_eq!(
            (&report["tunnels"], &report["held"]),
            (&3.into(), &3.into()),
            "{report}"
        );
        assert!(report["settle_s"].as_f64() < Some(600.0), "{report}");
    }
}

/// A signal before READY (here while the probe waits for a silent target) ends the run with a
/// clear error and the failure status, not the process by the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_interrupted_before_ready_fails_with_a_clear_error() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let url = format!("ws://{addr}/");
    let child = spawn_bench(&["idle", &url, "-n", "3", "--open-timeout", "600s"]);
    // The probe's connection, accepted and never answered: the tool is opening.
    let (_held, _) = silent.accept().await.unwrap();
    // SAFETY: kill only sends a signal, to the child started above.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted by SIGINT before the tunnels were open"),
        "{err}"
    );
}
