//! The proxy out of file descriptors: accepting backs off and resumes, and a backend connect
//! that finds none left is a 503 with Retry-After.

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

/// The proxy's own descriptor limit met while connecting to a backend is wsgate's trouble, not
/// the backend's: 503 with Retry-After (not a 502 blaming a healthy backend), and the next
/// connection after a descriptor frees up is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_at_the_backend_connect_is_a_503_with_retry_after() {
    use tokio::io::AsyncBufReadExt;
    const LIMIT: usize = 40;
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[timeouts]\nhandshake = \"60s\"\n{}",
        route("a", "/a", &[backend.addr])
    );
    let config = write_config(dir.path(), &body);
    let script = format!(
        "ulimit -n {LIMIT} && exec '{}' run --config '{}' --log-format json --threads 1",
        env!("CARGO_BIN_EXE_wsgate"),
        config.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "info,wsgate::reload=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = next_line_with(&mut lines, "\"listening\"").await;
    let addr = listening_addr(&listening);
    // Descriptors numbered below the limit: one inherited from the test harness can sit above
    // it (cargo's jobserver pipe) without taking a slot.
    let open = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| fd.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < LIMIT)
            .count()
    };

    // The reloader's first look at the files (after its watches are set) is the last start-up
    // step that opens descriptors.
    next_line_with(&mut lines, "content did not change").await;

    // Plain TCP connections that never start TLS hold all descriptors but one, each counted
    // once the proxy has accepted it: the next client is accepted, and its backend connect is
    // the one that finds none left.
    let mut hogs = Vec::new();
    while open() < LIMIT - 1 {
        let before = open();
        hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        until("the proxy to accept a connection", || open() > before).await;
    }
    let (head, body) = request(addr, Req::upgrade("localhost", "/a").bytes()).await;
    assert_eq!(head.status, 503, "{head:?}");
    assert_eq!(head.get("retry-after"), Some("1"));
    assert_eq!(String::from_utf8_lossy(&body), "server busy, retry later\n");
    let refused = next_line_with(&mut lines, "\"status\":503").await;
    assert!(refused.contains("\"route\":\"a\""), "{refused}");

    // One descriptor back, and the proxy serves again.
    drop(hogs.pop());
    until("the proxy to close the dropped connection", || {
        open() < LIMIT - 1
    })
    .await;
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "after EMFILE").await, "after EMFILE");
    child.kill().await.unwrap();
}
