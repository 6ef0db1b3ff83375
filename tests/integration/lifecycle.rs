//! The process around the proxy under resource exhaustion. SIGHUP is in `reload.rs`; SIGTERM
//! and graceful shutdown in `shutdown.rs`; certificate choice by SNI in `sni.rs`.

use std::process::Stdio;

use crate::support::*;

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
    let addr = listening_addr(&listening);

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
