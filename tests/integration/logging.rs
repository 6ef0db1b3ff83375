//! The log's reader falling behind: lines queue, then drop, and serving never waits on it.

use std::io::BufRead;
use std::net::SocketAddr;

use crate::admin::{admin_request, close, metrics, sample, ADMIN};
use crate::support::*;

/// The address in a JSON log line's `field`.
fn address_in(line: &str, field: &str) -> SocketAddr {
    let key = format!("\"{field}\":\"");
    line.split(key.as_str())
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {field} address in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_stopped_reading_holds_up_no_connection() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("{ADMIN}{}", route("a", "/a", &[backend.addr])),
    );
    let mut child = WsgateChild::spawn(&mut wsgate_command(&config, "info"));
    // Read up to the start, then never again: a log shipper that hung.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut proxy, mut admin) = (None, None);
    tokio::task::block_in_place(|| {
        for line in (&mut stderr).lines() {
            let line = line.unwrap();
            if line.contains("\"listening\"") {
                proxy = Some(address_in(&line, "listen"));
            } else if line.contains("admin endpoint listening") {
                admin = Some(address_in(&line, "admin"));
            } else if line.contains("wsgate started") {
                break;
            }
        }
    });
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());
    // A connection's line each, a few hundred bytes: the pipe (64 KiB) is full many times
    // over. Written from the threads that serve, the next line would block them all.
    for _ in 0..1_000 {
        drop(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    let mut ws = ws_connect_ok(proxy, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "still serving").await, "still serving");
    assert_eq!(admin_request(admin, "GET", "/healthz").await.0, 200);
    // Queued, not dropped (yet): the queue holds thousands of lines.
    let text = metrics(admin).await;
    assert_eq!(sample(&text, "wsgate_log_lines_dropped_total"), Some(0.0));
    // Read again: the lines held back come through, the tunnel's among them.
    close(ws).await;
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    line_containing(seen, "\"tunnel closed\"").await;
}
