//! Short runs of every scenario against the built-in echo backend on 127.0.0.1:0. They check
//! that work was done without errors; no timing is asserted.

mod common;

use std::net::SocketAddr;

use clap::Parser;
use wsgate_bench::cli::{Cli, Command, EchoEngine};
use wsgate_bench::report::Report;
use wsgate_bench::scenario;

async fn echo_backend_with(engine: EchoEngine) -> SocketAddr {
    wsgate_bench::echo::spawn("127.0.0.1:0".parse().unwrap(), None, engine)
        .await
        .unwrap()
}

async fn echo_backend() -> SocketAddr {
    echo_backend_with(EchoEngine::Lean).await
}

fn command(args: &[&str]) -> Command {
    Cli::try_parse_from(std::iter::once("wsgate-bench").chain(args.iter().copied()))
        .unwrap()
        .command
}

async fn run(command: Command) -> anyhow::Result<Report> {
    match command {
        Command::Handshake(a) => scenario::handshake::run(&a).await,
        Command::Latency(a) => scenario::latency::run(&a).await,
        Command::Throughput(a) => scenario::throughput::run(&a).await,
        Command::Bulk(a) => scenario::throughput::run_bulk(&a).await,
        Command::Idle(a) => scenario::idle::run(&a).await,
        Command::Echo(_) => unreachable!(),
    }
}

fn num(r: &Report, key: &str) -> f64 {
    r.get(key)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("{key} missing in {}", r.to_json()))
}

fn assert_clean(r: &Report, count_key: &str) {
    assert!(num(r, count_key) > 0.0, "no {count_key}: {}", r.to_json());
    assert_eq!(num(r, "errors"), 0.0, "{}", r.to_json());
}

const SHORT: [&str; 4] = ["-d", "300ms", "--warmup", "50ms"];

fn with_short<'a>(mut args: Vec<&'a str>, pid: &'a str) -> Vec<&'a str> {
    args.extend(SHORT);
    args.extend(["--pid", pid]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_the_echo_backend() {
    let addr = echo_backend().await;
    let url = format!("ws://{addr}/any/path?x=1");
    let pid = std::process::id().to_string();

    let r = run(command(&with_short(
        vec!["handshake", &url, "-c", "4"],
        &pid,
    )))
    .await
    .unwrap();
    assert_clean(&r, "handshakes");
    assert!(num(&r, "handshake_p50_us") > 0.0);
    assert!(r.get("proxy_cpu_us_per_handshake").is_some());

    let r = run(command(&with_short(
        vec!["latency", &url, "-c", "10", "-r", "1000"],
        &pid,
    )))
    .await
    .unwrap();
    assert_clean(&r, "messages");
    assert_eq!(num(&r, "lost"), 0.0);
    assert!(num(&r, "p99_us") >= num(&r, "p50_us"));

    let r = run(command(&with_short(
        vec!["throughput", &url, "-c", "20", "-w", "4"],
        &pid,
    )))
    .await
    .unwrap();
    assert_clean(&r, "messages");

    let r = run(command(&with_short(vec!["bulk", &url], &pid)))
        .await
        .unwrap();
    assert_clean(&r, "messages");
    assert!(num(&r, "mb_per_s") > 0.0);

    let r = run(command(&[
        "idle", &url, "-n", "50", "--hold", "100ms", "--settle", "50ms", "--pid", &pid,
    ]))
    .await
    .unwrap();
    assert_eq!(num(&r, "tunnels"), 50.0);
    assert_eq!(num(&r, "held"), 50.0);
    assert_eq!(num(&r, "errors"), 0.0);
    assert!(r.get("proxy_rss_kib_per_tunnel").is_some());
    // The proxy's (here the test's own) CPU over opening and holding, per tunnel opened.
    assert!(num(&r, "proxy_cpu_us") >= 0.0);
    assert!(num(&r, "proxy_cpu_us_per_tunnel") >= 0.0);
    assert!(r.get("tool_cpu_us_per_tunnel").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_ca_and_sni() {
    let echo = common::tls_echo(false).await;
    let url = format!("wss://{}/", echo.addr);
    let ca = echo.cert.to_str().unwrap();
    let mut args = vec![
        "handshake",
        &url,
        "--ca",
        ca,
        "--sni",
        "localhost",
        "-c",
        "2",
    ];
    args.extend(SHORT);
    let r = run(command(&args)).await.unwrap();
    assert_clean(&r, "handshakes");

    let mut args = vec!["throughput", &url, "--insecure", "-c", "4"];
    args.extend(SHORT);
    let r = run(command(&args)).await.unwrap();
    assert_clean(&r, "messages");

    // Without the right name, verification fails with a clear error.
    let mut args = vec!["latency", &url, "--ca", ca, "--sni", "example.org"];
    args.extend(SHORT);
    let err = run(command(&args)).await.unwrap_err();
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_echo_asking_for_client_certificates_refuses_a_client_without() {
    let echo = common::tls_echo(true).await;
    let url = format!("wss://{}/", echo.addr);
    let mut args = vec!["latency", &url, "--insecure"];
    args.extend(SHORT);
    let err = run(command(&args)).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("CertificateRequired"),
        "{err:#}"
    );
    // Showing one (the same self-signed certificate, which the echo trusts) gets through.
    let (cert, key) = (echo.cert.to_str().unwrap(), echo.key.to_str().unwrap());
    let mut args = vec!["latency", &url, "--insecure", "--cert", cert, "--key", key];
    args.extend(SHORT);
    let r = run(command(&args)).await.unwrap();
    assert_clean(&r, "messages");
}

#[tokio::test]
async fn clear_errors_when_down_or_refusing() {
    // A port with nothing listening: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let err = run(command(&["latency", &url])).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!("connect to 127.0.0.1:{port} refused")),
        "{err:#}"
    );

    // A server that answers 404.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let url = format!("ws://{addr}/");
    let err = run(command(&["handshake", &url])).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("server answered 404 Not Found instead of 101"),
        "{err:#}"
    );

    // A server that accepts and never answers (a wss:// URL on a plain port looks the same).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let url = format!("ws://{addr}/");
    let err = run(command(&["latency", &url, "--open-timeout", "200ms"]))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("no answer within"), "{err:#}");
}

#[tokio::test]
async fn echo_backends_speak_websocket_to_a_standard_client() {
    for engine in [EchoEngine::Lean, EchoEngine::Tungstenite] {
        standard_client_against(echo_backend_with(engine).await).await;
    }
    // The load generator against the tungstenite engine too.
    let addr = echo_backend_with(EchoEngine::Tungstenite).await;
    let url = format!("ws://{addr}/");
    let r = run(command(&[
        "throughput",
        &url,
        "-c",
        "4",
        "-d",
        "200ms",
        "--warmup",
        "50ms",
    ]))
    .await
    .unwrap();
    assert_clean(&r, "messages");
}

async fn standard_client_against(addr: SocketAddr) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let mut req = format!("ws://{addr}/whatever")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );
    ws.close(None).await.unwrap();
    // The server completes the close handshake: a Close comes back, then the stream ends.
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => continue,
            None | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
}

/// One send in a window shorter than the interval between two: 1 message in 0.3 s read as 3.3
/// msg/s at a rate of 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_run_never_reports_more_echoes_per_second_than_its_rate() {
    let url = format!("ws://{}/", echo_backend().await);
    let args = [
        "latency", &url, "-c", "1", "-r", "1", "-d", "300ms", "--warmup", "0s",
    ];
    let r = run(command(&args)).await.unwrap();
    assert_clean(&r, "messages");
    assert!(num(&r, "msgs_per_s") <= 1.0, "{}", r.to_json());
}
