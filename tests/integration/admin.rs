//! The admin endpoint: Prometheus metrics that follow real traffic and reloads, liveness and
//! readiness probes (readiness fails once shutdown begins), and its own listener, which a
//! reload can add, move or remove like any other.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// Closes `ws` as a client does: close frame, read to the end, drop the connection.
pub(crate) async fn close(mut ws: Ws) {
    use futures_util::StreamExt;
    ws.close(None).await.unwrap();
    within("the close handshake", async {
        while ws.next().await.is_some() {}
    })
    .await;
}

/// A proxy with the admin endpoint and one route, `chat` at `/chat`, to `backend`.
pub(crate) async fn proxy_with_admin(backend: &WsBackend) -> Proxy {
    start_proxy(&format!(
        "{ADMIN}{}",
        route("chat", "/chat", &[backend.addr])
    ))
    .await
}

/// One plain-HTTP GET (or `method`) to the admin endpoint: status and body.
pub(crate) async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    admin_exchange(addr, &request).await
}

/// Sends `request` as it is to the admin endpoint and reads the answer to its end.
async fn admin_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    within("an admin answer", async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    })
    .await
}

pub(crate) async fn metrics(addr: SocketAddr) -> String {
    let (status, body) = admin_request(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// The value of the sample `series` (name with labels, exactly as exported), if present.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// Scrapes until `series` has `value`. Metrics have no signal to await; tunnels are counted
/// closed by their own task, a moment after the client sees the close.
pub(crate) async fn scrape_until(addr: SocketAddr, series: &str, value: f64) -> String {
    within(&format!("{series} to be {value}"), async {
        loop {
            let text = metrics(addr).await;
            if sample(&text, series) == Some(value) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_upgrades_refusals_and_tunnels() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().expect("admin endpoint bound");

    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/chat").await;
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    assert_eq!(upgrade_status(proxy.addr, "/nowhere").await, 404);

    let text = scrape_until(admin, "wsgate_tunnels_open", 1.0).await;
    // Bytes count while the tunnel lives: "hello" as a masked client frame (2 + 4 + 5 bytes)
    // up, and as a server frame (2 + 5) down.
    let bytes = |direction: &str| {
        format!(r#"wsgate_tunnel_bytes_total{{route="chat",direction="{direction}"}}"#)
    };
    scrape_until(admin, &bytes("client_to_backend"), 11.0).await;
    scrape_until(admin, &bytes("backend_to_client"), 7.0).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="chat",status="101"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="-",status="404"}"#),
        Some(1.0),
        "{text}"
    );
    // The refused connection counts until its close is done (close_notify, then the client's
    // close taken in): only the tunnel's is left then.
    scrape_until(admin, "wsgate_connections_open", 1.0).await;
    assert_eq!(
        sample(&text, "wsgate_connections_accepted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"wsgate_upgrade_duration_seconds_count{route="chat"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wsgate_config_generation"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    // OpenMetrics' HELP is an escaped string: a raw `"` in one fails a strict parser.
    for help in text.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(!help.contains('"'), "{help}");
    }

    close(ws).await;
    let text = scrape_until(admin, "wsgate_tunnels_open", 0.0).await;
    // The backend ends the close handshake (RFC 6455 §7.1.1), so it usually closes first.
    let closed: f64 = ["client_closed", "backend_closed"]
        .iter()
        .filter_map(|reason| {
            let series =
                format!(r#"wsgate_tunnels_closed_total{{route="chat",reason="{reason}"}}"#);
            sample(&text, &series)
        })
        .sum();
    assert_eq!(closed, 1.0, "{text}");
    for direction in ["client_to_backend", "backend_to_client"] {
        let series =
            format!(r#"wsgate_tunnel_bytes_total{{route="chat",direction="{direction}"}}"#);
        // "hello" in a frame plus a close frame, at least.
        assert!(
            sample(&text, &series).unwrap_or(0.0) >= 7.0,
            "{series}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_before_a_request_are_counted_by_reason() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    // A TCP connect and close, as a load balancer's or kubelet's tcpSocket check does: a
    // client gone, not a TLS failure to alert on.
    drop(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    scrape_until(
        admin,
        r#"wsgate_connections_closed_early_total{reason="no_request"}"#,
        1.0,
    )
    .await;
    // Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink).await;
    scrape_until(
        admin,
        r#"wsgate_connections_closed_early_total{reason="tls_failed"}"#,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_unknown_paths_or_methods_are_refused() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    assert_eq!(
        admin_request(admin, "GET", "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        admin_request(admin, "GET", "/readyz").await,
        (200, "ready\n".into())
    );
    assert_eq!(admin_request(admin, "GET", "/secret").await.0, 404);
    assert_eq!(admin_request(admin, "POST", "/metrics").await.0, 405);
    let (status, body) = admin_request(admin, "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""));
    // Plain HTTP only: the proxy's TLS listener is not the admin endpoint.
    assert_ne!(admin, proxy.addr);
}

/// A scraper taking gzip (Prometheus asks for it) gets the metrics gzipped, with their length;
/// one refusing it by weight, plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzipped_for_a_scraper_that_takes_it() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    let scrape = |accept: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: a\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        within("the metrics", tcp.read_to_end(&mut raw))
            .await
            .unwrap();
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(raw[..end].to_vec())
            .unwrap()
            .to_ascii_lowercase();
        (head, raw[end + 4..].to_vec())
    };
    let (head, body) = scrape("gzip, deflate").await;
    assert!(head.contains("\r\ncontent-encoding: gzip"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{head}"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    assert!(text.contains("wsgate_connections_accepted_total"), "{text}");
    let (head, body) = scrape("gzip;q=0, identity").await;
    assert!(!head.contains("content-encoding"), "{head}");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("wsgate_connections_accepted_total"), "{text}");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is answered 400; HTTP/1.0
/// never needed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_exactly_one_host_is_refused() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    let no_host = "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
    let two_hosts = "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n";
    let old = "GET /healthz HTTP/1.0\r\n\r\n";
    let (status, body) = admin_exchange(admin, no_host).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "a request needs one Host header\n")
    );
    assert_eq!(admin_exchange(admin, two_hosts).await.0, 400);
    assert_eq!(admin_exchange(admin, old).await, (200, "ok\n".into()));
    // Closed with its answer, though the client did not ask: not kept open for more.
    for path in ["/healthz", "/metrics"] {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        within("the answer", tcp.read_to_end(&mut raw))
            .await
            .unwrap();
        let text = String::from_utf8(raw).unwrap().to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 400 "), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_during_shutdown_while_metrics_still_answer() {
    let backend = WsBackend::start("one").await;
    let body = format!(
        "{ADMIN}[timeouts]\nshutdown_grace = \"30s\"\n\n{}",
        route("chat", "/chat", &[backend.addr])
    );
    let proxy = start_proxy(&body).await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/chat").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    let Proxy { server, dir, .. } = proxy;
    let shutdown = tokio::spawn(server.shutdown());
    within("readiness to fail", async {
        while admin_request(admin, "GET", "/readyz").await != (503, "shutting down\n".into()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The tunnel holds shutdown in its grace; the admin endpoint keeps answering meanwhile.
    assert_eq!(round_trip(&mut ws, "during").await, "during");
    assert_eq!(
        sample(&metrics(admin).await, "wsgate_tunnels_open"),
        Some(1.0)
    );

    close(ws).await;
    within("shutdown to finish", shutdown).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin closed at the end"
    );
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_the_admin_endpoint_and_is_counted() {
    let backend = WsBackend::start("one").await;
    let body = route("chat", "/chat", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    assert_eq!(proxy.server.admin_addr(), None);

    let port = free_addr("127.0.0.1");
    write_body(
        &proxy.config_path(),
        &format!("[admin]\nlisten = \"{port}\"\n\n{body}"),
    );
    generation(&mut rx, 2).await;
    assert_eq!(proxy.server.admin_addr(), Some(port));
    let text = metrics(port).await;
    assert_eq!(
        sample(&text, r#"wsgate_config_reloads_total{result="success"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wsgate_config_generation"),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "wsgate_config_last_reload_success_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(
        sample(&text, "wsgate_config_files_in_force"),
        Some(1.0),
        "{text}"
    );
    // Exported at 0 before the first failure, so an alert on increase() sees that failure.
    assert_eq!(
        sample(&text, r#"wsgate_config_reloads_total{result="failure"}"#),
        Some(0.0),
        "{text}"
    );

    // A bad reload is counted as a failure, and the endpoint stays.
    write_body(
        &proxy.config_path(),
        &format!("[admin]\nlisten = \"{port}\"\nbogus = 1\n\n{body}"),
    );
    failures(&mut rx, 1).await;
    let text = metrics(port).await;
    assert_eq!(
        sample(&text, r#"wsgate_config_reloads_total{result="failure"}"#),
        Some(1.0),
        "{text}"
    );
    // The files on disk are not what serves: visible for as long as it lasts.
    assert_eq!(
        sample(&text, "wsgate_config_files_in_force"),
        Some(0.0),
        "{text}"
    );

    write_body(&proxy.config_path(), &body);
    generation(&mut rx, 3).await;
    assert_eq!(proxy.server.admin_addr(), None);
    assert!(tokio::net::TcpStream::connect(port).await.is_err());
    assert_eq!(upgrade_status(proxy.addr, "/chat").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_hidden_by_failover_are_counted_per_backend() {
    let good = WsBackend::start("good").await;
    let refused = closed_port().await;
    let body = format!(
        // One at a time: a slow name lookup must not be raced (and lost) to the good backend.
        "{ADMIN}[timeouts]\nattempt_delay = \"0s\"\n\n[[route]]\nname = \"chat\"\npath = \"/chat\"\nbackends = [\"{refused}\", \"backend.invalid:9001\", \"{}\"]\n",
        good.addr
    );
    let proxy = start_proxy(&body).await;
    let admin = proxy.server.admin_addr().unwrap();
    // Round-robin starts at the first backend: both bad ones are tried before the good one.
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/chat").await,
        "good"
    );
    let text = metrics(admin).await;
    let failures = |backend: &str, error: &str| {
        let series = format!(
            r#"wsgate_backend_connect_failures_total{{route="chat",backend="{backend}",error="{error}"}}"#
        );
        sample(&text, &series)
    };
    assert_eq!(
        failures(&refused.to_string(), "refused"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        failures("backend.invalid:9001", "unresolvable"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="chat",status="101"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_exported_and_follows_a_rotation() {
    let backend = WsBackend::start("one").await;
    let body = format!("{ADMIN}{}", route("chat", "/chat", &[backend.addr]));
    let proxy = start_proxy(&body).await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut rx = proxy.server.reload_status();
    let series = |file: &str| {
        let path = proxy.dir.path().join(file);
        format!(
            r#"wsgate_certificate_expiry_timestamp_seconds{{file="{}"}}"#,
            path.display()
        )
    };
    // rcgen's default notAfter: 4096-01-01T00:00:00Z.
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, &series("server.crt")),
        Some(67_090_118_400.0),
        "{text}"
    );

    // Rotated to another file that expires on 2030-03-31: the old series goes away.
    let (cert, key) = pki().leaf_until(SERVER_NAMES, Some((2030, 3, 31)));
    std::fs::write(proxy.dir.path().join("next.crt"), cert).unwrap();
    std::fs::write(proxy.dir.path().join("next.key"), key).unwrap();
    let head = CONFIG_HEAD
        .replace("server.crt", "next.crt")
        .replace("server.key", "next.key");
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    generation(&mut rx, 2).await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, &series("next.crt")),
        Some(1_901_145_600.0),
        "{text}"
    );
    assert_eq!(sample(&text, &series("server.crt")), None, "{text}");
}

/// Whether some sample of `text` is labelled `route="{name}"`.
fn has_route(text: &str, name: &str) -> bool {
    let label = format!(r#"route="{name}""#);
    text.lines().any(|line| line.contains(&label))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_retires_the_series_of_a_route_it_removes() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("a", "/a", &[backend.addr]))).await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut rx = proxy.server.reload_status();
    close(ws_connect_ok(proxy.addr, "wss://localhost/a").await).await;
    // The tunnel is over, its lingering too: nothing on route a is live any more.
    let text = scrape_until(admin, "wsgate_connections_open", 0.0).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="a",status="101"}"#),
        Some(1.0),
        "{text}"
    );

    // A generator renamed the route.
    let renamed = format!("{ADMIN}{}", route("b", "/b", &[backend.addr]));
    write_body(&proxy.config_path(), &renamed);
    generation(&mut rx, 2).await;
    let ws = ws_connect_ok(proxy.addr, "wss://localhost/b").await;
    let text = scrape_until(
        admin,
        r#"wsgate_requests_total{route="b",status="101"}"#,
        1.0,
    )
    .await;
    assert!(!has_route(&text, "a"), "{text}");
    assert_eq!(
        sample(&text, r#"wsgate_upgrade_duration_seconds_count{route="b"}"#),
        Some(1.0),
        "{text}"
    );
    close(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_keeps_its_series_while_its_tunnels_live() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("a", "/a", &[backend.addr]))).await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut rx = proxy.server.reload_status();
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");

    let b = route("b", "/b", &[backend.addr]);
    write_body(&proxy.config_path(), &format!("{ADMIN}{b}"));
    generation(&mut rx, 2).await;
    // The tunnel outlives its route, and what it relays still shows: "hello" as a masked
    // client frame is 11 bytes, twice now.
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    let up = r#"wsgate_tunnel_bytes_total{route="a",direction="client_to_backend"}"#;
    scrape_until(admin, up, 22.0).await;

    // Its end is counted in the kept series, in view until the next reload retires them.
    close(ws).await;
    let text = scrape_until(admin, "wsgate_connections_open", 0.0).await;
    assert!(has_route(&text, "a"), "{text}");
    let c = route("c", "/c", &[backend.addr]);
    write_body(&proxy.config_path(), &format!("{ADMIN}{b}{c}"));
    generation(&mut rx, 3).await;
    let text = metrics(admin).await;
    assert!(!has_route(&text, "a"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_the_probes() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    // Far more silent connections than the endpoint serves at once (64).
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    let (status, body) = admin_request(admin, "GET", "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The oldest ones were closed to make room: they read an end, not a hang.
    let mut first = idle.remove(0);
    let mut buf = [0u8; 1];
    let read = within(
        "the oldest idle connection to be closed",
        first.read(&mut buf),
    )
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// The metrics table of docs/operations.md is the registry's: every family a scrape shows is
/// documented there (a counter under its `_total` name), and every one documented is
/// registered (families with no sample yet are not in a scrape, so the source is read).
#[tokio::test]
async fn the_documented_metrics_are_the_registered_ones() {
    let backend = WsBackend::start("one").await;
    let body = route("chat", "/ws", &[backend.addr]);
    let proxy = start_proxy(&format!("{ADMIN}{body}")).await;
    let text = metrics(proxy.server.admin_addr().unwrap()).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let documented: Vec<&str> = (doc.lines())
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("wsgate_"))
        .collect();
    for family in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = match family.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            _ => family.split(' ').next().unwrap_or_default().to_string(),
        };
        assert!(
            documented.contains(&name.as_str()),
            "{name} is not in operations.md"
        );
    }
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    for name in &documented {
        let bare = name.trim_start_matches("wsgate_");
        let registered = [bare, bare.trim_end_matches("_total")]
            .iter()
            .any(|bare| source.contains(&format!("\"{bare}\", \"")));
        assert!(registered, "{name} is documented but not registered");
    }
}
