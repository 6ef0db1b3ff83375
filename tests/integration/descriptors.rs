//! The proxy out of file descriptors: accepting backs off and resumes, a backend connect that
//! finds none left is a 503 with Retry-After, and config files it cannot open are no rejected
//! config.

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr};

use crate::support::*;

/// The descriptor limit the proxy runs under: a handful of connections exhausts it.
const LIMIT: usize = 40;

type Lines = tokio::io::Lines<tokio::io::BufReader<ChildStderr>>;

/// `wsgate run` under `ulimit -n` [`LIMIT`] with JSON logs (the reloader's at debug), once
/// it has started and taken its first look at the files (the last start-up step that opens
/// descriptors).
struct Limited {
    child: Child,
    lines: Lines,
    pid: u32,
    addr: std::net::SocketAddr,
    /// The admin endpoint's address, if the config has one.
    admin: Option<std::net::SocketAddr>,
}

impl Limited {
    async fn start(config: &std::path::Path) -> Limited {
        let limit = format!("-n {LIMIT}");
        let script = run_under_ulimit(&limit, config, "--log-format json --threads 1");
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
        let seen = lines_until(&mut lines, "content did not change").await;
        let line = |needle: &str| seen.iter().find(|line| line.contains(needle)).cloned();
        let addr = listening_addr(&line("\"listening\"").unwrap_or_default());
        // Under wsgate's own reserve: said as such, not as room for "about 0" tunnels.
        assert!(
            line("leaves room for hardly any tunnels").is_some(),
            "{seen:#?}"
        );
        let admin = line("admin endpoint listening").map(|line| {
            let admin = line.split("\"admin\":\"").nth(1).unwrap_or_default();
            admin.split('"').next().unwrap_or_default().parse().unwrap()
        });
        Limited {
            child,
            lines,
            pid,
            addr,
            admin,
        }
    }

    /// Its descriptors numbered below the limit (one inherited from the test harness can sit
    /// above it, cargo's jobserver pipe, without taking a slot), but for regular files: the
    /// reloader opens the config and its certificates for a moment whenever it looks at
    /// them, and one counted then, gone a moment later, would make a count read too high.
    fn open(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .filter_map(|fd| {
                let fd = fd.ok()?;
                let number = fd.file_name().to_str()?.parse::<usize>().ok()?;
                let file = std::fs::metadata(fd.path()).ok()?.is_file();
                (number < LIMIT && !file).then_some(number)
            })
            .count()
    }

    /// Plain TCP connections that never start TLS, until it holds `until` descriptors, each
    /// counted once the proxy has accepted it.
    async fn hog(&self, until_open: usize) -> Vec<tokio::net::TcpStream> {
        let mut hogs = Vec::new();
        while self.open() < until_open {
            let before = self.open();
            hogs.push(tokio::net::TcpStream::connect(self.addr).await.unwrap());
            until("the proxy to accept a connection", || self.open() > before).await;
        }
        hogs
    }

    async fn line_with(&mut self, needle: &str) -> String {
        next_line_with(&mut self.lines, needle).await
    }

    /// More connections than descriptors (plain TCP, never starting TLS), once accepting has
    /// failed for want of one and backs off.
    async fn flooded(&mut self) -> Vec<tokio::net::TcpStream> {
        let mut hogs = Vec::new();
        for _ in 0..LIMIT + 20 {
            hogs.push(tokio::net::TcpStream::connect(self.addr).await.unwrap());
        }
        self.line_with("accept failed; backing off").await;
        hogs
    }
}

/// A [`Limited`] proxy with an admin endpoint and one route, `/a`, to `backend`; and the
/// folder of its config.
async fn with_admin(backend: std::net::SocketAddr) -> (Limited, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        route("a", "/a", &[backend])
    );
    let proxy = Limited::start(&write_config(dir.path(), &body)).await;
    (proxy, dir)
}

/// Reads the child's stderr until a line contains `needle`; fails after [`TIMEOUT`].
async fn next_line_with(lines: &mut Lines, needle: &str) -> String {
    lines_until(lines, needle).await.pop().unwrap_or_default()
}

/// The child's stderr lines up to and including the first containing `needle`.
async fn lines_until(lines: &mut Lines, needle: &str) -> Vec<String> {
    within(&format!("a log line containing {needle:?}"), async {
        let mut seen = Vec::new();
        loop {
            match lines.next_line().await.unwrap() {
                Some(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                None => panic!("wsgate exited before logging {needle:?}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_stop_the_accept_loop() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[backend.addr]));
    let mut proxy = Limited::start(&config).await;

    // More connections than descriptors: accepting fails, and backs off.
    let mut hogs = Vec::new();
    for _ in 0..LIMIT + 20 {
        hogs.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    proxy.line_with("accept failed; backing off").await;

    // Once they go away, the proxy accepts and serves again.
    drop(hogs);
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "after EMFILE").await, "after EMFILE");
    proxy.child.kill().await.unwrap();
}

/// The admin endpoint answers while the proxy is out of descriptors: a liveness probe failing
/// then would have a working process killed, and every live tunnel with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_answers_while_the_proxy_is_out_of_descriptors() {
    let backend = WsBackend::start("one").await;
    let (mut proxy, _dir) = with_admin(backend.addr).await;
    let admin = proxy.admin.unwrap();
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    let hogs = proxy.flooded().await;

    // Probes one after another, as a kubelet sends them, and a scrape: each answered, alive
    // but not ready for more clients.
    for path in ["/healthz", "/readyz", "/healthz", "/metrics", "/healthz"] {
        let answer = admin_get(admin, path).await;
        if path == "/readyz" {
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
            assert!(answer.ends_with("out of open files\n"), "{answer:?}");
            continue;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
        if path == "/metrics" {
            // The failed accepts are counted, for an alert to see.
            let failed = crate::admin::sample(&answer, "wsgate_accept_errors_total");
            assert!(failed.is_some_and(|n| n > 0.0), "{answer}");
        }
    }
    // And the live tunnel kept working throughout.
    assert_eq!(round_trip(&mut ws, "still here").await, "still here");
    // Failed accepts left out of the log (one line a second) are counted when the burst ends.
    within("accepts failing on", async {
        let failed = |answer: &str| crate::admin::sample(answer, "wsgate_accept_errors_total");
        while failed(&admin_get(admin, "/metrics").await).is_none_or(|n| n < 3.0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // Ready again once the connections holding the descriptors are gone.
    drop(hogs);
    let rest = proxy
        .line_with("accept failed; the rest of the burst")
        .await;
    assert!(!rest.contains("\"suppressed\":0"), "{rest}");
    within("ready again", async {
        while !admin_get(admin, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy.child.kill().await.unwrap();
}

/// Scrapers keeping their admin connections open spend the admin endpoint's reserve of
/// descriptors: out of them, a probe still gets its answer, the oldest of those connections
/// closed to make room (as a connection over the admin limit closes the oldest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_is_answered_when_kept_open_scrapes_spent_the_reserve() {
    let backend = WsBackend::start("one").await;
    let (mut proxy, _dir) = with_admin(backend.addr).await;
    let admin = proxy.admin.unwrap();
    let hogs = proxy.flooded().await;
    // Six scrapers keeping their connections open, each scraping every 200 ms (so no idle
    // timeout frees them): the reserve (four) spent, and what the hogs left.
    let mut scrapers = Vec::new();
    for _ in 0..6 {
        let mut scraper = tokio::net::TcpStream::connect(admin).await.unwrap();
        let (answered, mut first) = tokio::sync::mpsc::channel::<()>(1);
        scrapers.push(tokio::spawn(async move {
            // Until the proxy closes it.
            while !keep_alive_get(&mut scraper).await.is_empty() {
                _ = answered.try_send(());
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }));
        within("a scrape's answer", first.recv()).await;
    }
    for path in ["/healthz", "/healthz", "/readyz"] {
        let answer = admin_get(admin, path).await;
        // Liveness holds; readiness may say 503 out of descriptors (the docs): answered.
        let expected = if path == "/healthz" {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 "
        };
        assert!(answer.starts_with(expected), "{path}: {answer:?}");
    }
    scrapers.iter().for_each(|scraper| scraper.abort());
    drop(hogs);
    proxy.child.kill().await.unwrap();
}

/// Out of descriptors, admin connections kept open stay open while no one else waits for
/// one: accept(2) fails for want of a descriptor after each connection taken, queue empty or
/// not, and that alone gives no reserved descriptor up and closes no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_open_admin_connections_stay_open_while_no_one_waits() {
    let backend = WsBackend::start("one").await;
    let (mut proxy, _dir) = with_admin(backend.addr).await;
    let admin = proxy.admin.unwrap();
    let hogs = proxy.flooded().await;
    // As many scrapers as the reserve holds, one after another, each answered; the last two
    // once the first have been served for over a second, so that their age (a connection
    // just accepted is never closed for a descriptor) does not keep them open.
    let mut scrapers = Vec::new();
    for i in 0..4 {
        if i == 2 {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        let mut scraper = tokio::net::TcpStream::connect(admin).await.unwrap();
        let answer = within("a scrape's answer", keep_alive_get(&mut scraper)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        scrapers.push(scraper);
    }
    // Every one of them still open and answering.
    for (i, scraper) in scrapers.iter_mut().enumerate() {
        let answer = within("a second scrape's answer", keep_alive_get(scraper)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "scraper {i}: {answer:?}"
        );
    }
    drop(hogs);
    proxy.child.kill().await.unwrap();
}

/// Out of descriptors with no client queued, probes served from the admin endpoint's reserve
/// are no failed accepts, and neither is an accept that finds no client waiting:
/// `wsgate_accept_errors_total` counts only what failed, as the log's lines do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_served_from_the_reserve_or_with_no_one_waiting_are_not_failures() {
    let backend = WsBackend::start("one").await;
    let (proxy, _dir) = with_admin(backend.addr).await;
    let admin = proxy.admin.unwrap();
    let hogs = proxy.hog(LIMIT).await;
    for _ in 0..3 {
        let answer = admin_get(admin, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    let metrics = admin_get(admin, "/metrics").await;
    let failed = crate::admin::sample(&metrics, "wsgate_accept_errors_total");
    assert_eq!(failed.unwrap_or_default(), 0.0, "{metrics}");
    drop(hogs);
}

/// GET /healthz on a kept-open admin connection: the answer's first bytes (empty if the
/// connection was closed).
async fn keep_alive_get(scraper: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
    if scraper.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = [0u8; 512];
    let n = scraper.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// GET `path` on the admin endpoint at `admin`: the whole answer.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut probe = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    probe.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    within(path, probe.read_to_string(&mut answer))
        .await
        .unwrap();
    answer
}

/// The proxy's own descriptor limit met while connecting to a backend is wsgate's trouble, not
/// the backend's: 503 with Retry-After (not a 502 blaming a healthy backend), and the next
/// connection after a descriptor frees up is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_at_the_backend_connect_is_a_503_with_retry_after() {
    let backend = WsBackend::start("one").await;
    out_of_descriptors_at_the_backend(&backend.addr.to_string()).await;
}

/// The same with a backend named, not an IP: the name lookup is what finds no descriptor
/// left (getaddrinfo opens /etc/hosts), and that is no "unresolvable" 502 either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_at_the_name_lookup_is_a_503_with_retry_after() {
    let backend = WsBackend::start("one").await;
    out_of_descriptors_at_the_backend(&format!("localhost:{}", backend.addr.port())).await;
}

async fn out_of_descriptors_at_the_backend(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[timeouts]\nhandshake = \"60s\"\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nbackends = [\"{backend}\"]\n"
    );
    let mut proxy = Limited::start(&write_config(dir.path(), &body)).await;

    // All descriptors but one held: the next client is accepted, and its backend connect is
    // the one that finds none left.
    let mut hogs = proxy.hog(LIMIT - 1).await;
    let (head, body) = request(proxy.addr, Req::upgrade("localhost", "/a").bytes()).await;
    assert_eq!(head.status, 503, "{head:?}");
    assert_eq!(head.get("retry-after"), Some("1"));
    assert_eq!(String::from_utf8_lossy(&body), "server busy, retry later\n");
    let refused = proxy.line_with("\"status\":503").await;
    assert!(refused.contains("\"route\":\"a\""), "{refused}");

    // One descriptor back, and the proxy serves again.
    drop(hogs.pop());
    until("the proxy to close the dropped connection", || {
        proxy.open() < LIMIT - 1
    })
    .await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "after EMFILE").await, "after EMFILE");
    proxy.child.kill().await.unwrap();
}

/// Config files that cannot be read for want of descriptors are the process's trouble, not a
/// bad config: no rejection is logged or counted; every SIGHUP meanwhile is answered, and the
/// reload it asked for is done once descriptors are back; then a change applies as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_while_reloading_is_no_rejected_config() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[backend.addr]));
    let mut proxy = Limited::start(&config).await;

    // Every descriptor taken, then reloads asked for: the files cannot be opened.
    let hogs = proxy.hog(LIMIT).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        send_signal(proxy.pid, "HUP");
        seen.extend(lines_until(&mut proxy.lines, "out of open files").await);
    }
    assert!(seen.last().unwrap().contains("WARN"), "{seen:#?}");
    // Two of its looks every 0.6 s while the shortage lasts (a debug line each): not
    // announced again.
    for _ in 0..2 {
        seen.extend(lines_until(&mut proxy.lines, "still cannot be opened").await);
    }

    // Descriptors back: the reload asked for is done, with nothing changed on disk.
    drop(hogs);
    seen.extend(lines_until(&mut proxy.lines, "config reloaded").await);
    assert!(
        seen.last().unwrap().contains("\"generation\":2"),
        "{seen:#?}"
    );
    let warnings = seen.iter().filter(|l| l.contains("out of open files"));
    assert_eq!(warnings.count(), 2, "one per SIGHUP: {seen:#?}");

    // And a real change applies as usual; never a rejection on the way.
    write_body(&config, &route("b", "/b", &[backend.addr]));
    seen.extend(lines_until(&mut proxy.lines, "config reloaded").await);
    assert!(
        !seen.iter().any(|line| line.contains("rejected")),
        "{seen:#?}"
    );
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/b").await;
    assert_eq!(round_trip(&mut ws, "after").await, "after");
    proxy.child.kill().await.unwrap();
}
