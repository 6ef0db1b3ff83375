//! The process around the proxy: SIGHUP and SIGTERM on the real binary, graceful shutdown with
//! its grace period, and certificate choice by SNI.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use futures_util::StreamExt;
use support::*;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

/// Stderr lines of a child process, delivered as they are written.
fn lines_of(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; fails after [`TIMEOUT`].
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no log line containing {needle:?} within {TIMEOUT:?}"),
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

#[test]
fn sighup_reloads_without_killing_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &route("a", "/a", &["127.0.0.1:9".parse().unwrap()]),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    wait_for_line(&lines, "wsgate started");

    signal(child.id(), "HUP");
    let reloaded = wait_for_line(&lines, "config reloaded");
    assert!(reloaded.contains("\"generation\":2"), "{reloaded}");
    signal(child.id(), "HUP");
    wait_for_line(&lines, "\"generation\":3");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the process"
    );

    signal(child.id(), "TERM");
    wait_for_line(&lines, "shutdown complete");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_then_closes_tunnels_after_the_grace() {
    let backend = WsBackend::start("one").await;
    let body = format!(
        "[timeouts]\nshutdown_grace = \"300ms\"\n\n{}",
        route("a", "/a", &[backend.addr])
    );
    let proxy = start_proxy(&body).await;
    let addr = proxy.addr;
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    let shutdown = tokio::spawn(proxy.server.shutdown());
    // The tunnel is closed once the grace is over: the client sees the stream end.
    let ended = within("the tunnel to be closed", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    within("shutdown to return", shutdown).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_that_covers_the_name_and_falls_back_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = pki().leaf(&["a.test", "127.0.0.1"]);
    let (b_cert, b_key) = pki().leaf(&["b.test", "*.wild.test"]);
    for (name, pem) in [
        ("a.crt", &a_cert),
        ("a.key", &a_key),
        ("b.crt", &b_cert),
        ("b.key", &b_key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let config = dir.path().join("wsgate.toml");
    std::fs::write(
        &config,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncertificates = [\n  { cert = \"a.crt\", key = \"a.key\" },\n  { cert = \"b.crt\", key = \"b.key\" },\n]\n",
    )
    .unwrap();
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let served = |sni: &'static str| async move {
        let tls = tls_connect_sni(addr, sni).await;
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    assert_eq!(served("a.test").await, der(&a_cert));
    assert_eq!(served("b.test").await, der(&b_cert));
    assert_eq!(served("x.wild.test").await, der(&b_cert));
    // An IP address as server name: the client sends no SNI, the first certificate answers.
    assert_eq!(served("127.0.0.1").await, der(&a_cert));
}

/// Reads the child's stderr until a line contains `needle`; fails after [`TIMEOUT`].
async fn next_line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    within(&format!("a log line containing {needle:?}"), async {
        loop {
            match lines.next_line().await.unwrap() {
                Some(line) if line.contains(needle) => return line,
                Some(_) => continue,
                None => panic!("wsgate exited before logging {needle:?}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_stop_the_accept_loop() {
    use tokio::io::AsyncBufReadExt;
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[backend.addr]));
    // A tiny descriptor limit, so a handful of connections exhausts it.
    let script = format!(
        "ulimit -n 40 && exec '{}' run --config '{}' --log-format json --threads 1",
        env!("CARGO_BIN_EXE_wsgate"),
        config.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = next_line_with(&mut lines, "\"listening\"").await;
    let addr: std::net::SocketAddr = listening
        .split("\"listen\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));

    // Plain TCP connections that never start TLS: each holds one of the proxy's descriptors.
    let mut hogs = Vec::new();
    for _ in 0..60 {
        hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    next_line_with(&mut lines, "accept failed; backing off").await;

    // Once they go away, the proxy accepts and serves again.
    drop(hogs);
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "after EMFILE").await, "after EMFILE");
    child.kill().await.unwrap();
}
