//! Regressions from reviews of the exact head limit and the Host checks: leading blank lines,
//! heads hyper would refuse on its own (too many fields, beyond its buffer, malformed, a bad
//! Content-Length or Transfer-Encoding, an unparsable target) answered and counted by the
//! proxy; connection limits applied before the head and to idle connections; a refused client
//! lingering without delaying shutdown; hosts that are not plain names; absolute targets with
//! default ports; clients half-closing, vanishing or resetting around the 101.

use crate::admin::{metrics, sample, scrape_until, ADMIN};
use crate::support::*;

fn ws() -> Req {
    Req::upgrade("chat.example.com", "/ws")
}

/// One route `/ws` (optionally with a host) to a closed port: a request that gets routed
/// comes back 502, one refused before routing gets its 4xx.
async fn proxy_to_nowhere(extra: &str, host: Option<&str>) -> Proxy {
    let nowhere = closed_port().await;
    let host = host
        .map(|h| format!("host = \"{h}\"\n"))
        .unwrap_or_default();
    start_proxy(&format!(
        "{extra}\n[[route]]\nname = \"chat\"\n{host}path = \"/ws\"\nbackends = {}\n\n",
        backends_list(&[nowhere])
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_blank_lines_do_not_escape_the_head_limit() {
    let proxy = proxy_to_nowhere("[limits]\nmax_request_header_bytes = 1024\n", None).await;
    // Without the leading blank lines this head is a 431 (reject.rs proves it).
    let mut sent = b"\r\n\r\n".to_vec();
    sent.extend(ws().add("X-Big", &"a".repeat(3000)).bytes());
    let (head, _) = request(proxy.addr, sent).await;
    assert_eq!(head.status, 431, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_neither_a_path_nor_a_url_is_400() {
    // hyper reads each of these as "/": with a catch-all route they would be routed (a 502
    // here), and the backend asked for "/" instead of what the client sent.
    let nowhere = closed_port().await;
    let proxy = start_proxy(&route("all", "/", &[nowhere])).await;
    for target in ["chat.example.com:443", "ws", "/ws#top", "*"] {
        let req = Req::upgrade("chat.example.com:443", target);
        let (head, _) = request(proxy.addr, req.bytes()).await;
        assert_eq!(head.status, 400, "{target}: {head:?}");
    }
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 502, "a path is routed: {head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_list_host_is_not_routed() {
    let proxy = proxy_to_nowhere("", Some("*.example.com")).await;
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("evil.test,chat.example.com", "/ws").bytes(),
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_and_a_host_naming_the_default_port_agree() {
    let proxy = proxy_to_nowhere("", None).await;
    // https://chat.example.com/ws and chat.example.com:443 are the same authority.
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com:443", "https://chat.example.com/ws").bytes(),
    )
    .await;
    assert_eq!(head.status, 502, "refused before routing: {head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_header_fields_get_the_proxys_431() {
    let proxy = proxy_to_nowhere("", None).await;
    let mut req = ws();
    for i in 0..120 {
        req = req.add(&format!("X-H{i}"), "v");
    }
    let sent = req.bytes();
    assert!(sent.len() < 4096, "{} bytes, far below 16384", sent.len());
    // The documented field limit (as HAProxy's), answered like every refusal: plain text.
    let (head, body) = request(proxy.addr, sent).await;
    assert_eq!(head.status, 431, "{head:?}");
    assert_eq!(body, b"request header fields too large\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_gets_a_plain_text_400() {
    let proxy = proxy_to_nowhere("", None).await;
    let (head, body) = request(proxy.addr, ws().add("Bad Name", "v").bytes()).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(head.get("content-type"), Some("text/plain; charset=utf-8"));
    assert!(
        head.get("date").is_some_and(|d| d.ends_with(" GMT")),
        "{head:?}"
    );
    assert_eq!(body, b"malformed request\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_closing_right_after_its_request_still_gets_its_tunnel() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    client.shutdown_write().await;
    let mut back = backend.accept().await;
    let seen = back
        .try_read_head()
        .await
        .expect("the proxy dropped the backend connection before sending the request");
    back.send(switching(&seen, "")).await;
    let head = client.try_read_head().await;
    assert_eq!(head.map(|h| h.status), Some(101), "no 101 for the client");
    // The half-close is passed on.
    back.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_beyond_hypers_buffer_gets_the_same_431_as_one_just_over_the_limit() {
    let proxy = proxy_to_nowhere("", None).await;
    // 16 KiB + 1 byte: the proxy's own 431 (plain text naming the reason)...
    let (near, near_body) = request(
        proxy.addr,
        ws().add("X-Big", &"a".repeat(16 * 1024)).bytes(),
    )
    .await;
    assert_eq!(near.status, 431, "{near:?}");
    assert_eq!(near_body, b"request header fields too large\n");
    // ...but 18 KiB gets hyper's: no body, no content type.
    let (far, far_body) = request(
        proxy.addr,
        ws().add("X-Big", &"a".repeat(18 * 1024)).bytes(),
    )
    .await;
    assert_eq!(far.status, 431, "{far:?}");
    assert_eq!(
        far.get("content-type"),
        Some("text/plain; charset=utf-8"),
        "{far:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&far_body),
        "request header fields too large\n"
    );
}

// Second review: heads hyper would refuse, limits before the head, lingering, odd hosts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_content_length_gets_the_proxys_400() {
    let proxy = proxy_to_nowhere(ADMIN, None).await;
    let (head, body) = request(proxy.addr, ws().add("Content-Length", "abc").bytes()).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(
        head.get("content-type"),
        Some("text/plain; charset=utf-8"),
        "{head:?}"
    );
    assert_eq!(String::from_utf8_lossy(&body), "malformed request\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_chunked_transfer_encoding_gets_the_proxys_400() {
    let proxy = proxy_to_nowhere("", None).await;
    let (head, _) = request(proxy.addr, ws().add("Transfer-Encoding", "gzip").bytes()).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(
        head.get("content-type"),
        Some("text/plain; charset=utf-8"),
        "{head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_target_gets_the_proxys_400_and_is_counted() {
    let proxy = proxy_to_nowhere(ADMIN, None).await;
    let admin = proxy.server.admin_addr().unwrap();
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", "http://[::1/ws").bytes(),
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="-",status="400"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        head.get("content-type"),
        Some("text/plain; charset=utf-8"),
        "{head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_hosts_with_ports_are_routed() {
    let proxy = proxy_to_nowhere("", None).await;
    for host in [
        "127.0.0.1:8443",
        "[::1]:8443",
        "[::1]",
        "Chat.Example.COM.:8443",
        "xn--bcher-kva.example",
    ] {
        let (head, _) = request(proxy.addr, Req::upgrade(host, "/ws").bytes()).await;
        assert_eq!(head.status, 502, "{host}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_hosts_are_refused() {
    let proxy = proxy_to_nowhere("", None).await;
    for host in [
        "chat.example.com:+443",
        "a:+1",
        "..",
        "a..b",
        ".",
        "...example.com",
        "-",
    ] {
        let (head, _) = request(proxy.addr, Req::upgrade(host, "/ws").bytes()).await;
        assert_eq!(head.status, 400, "{host}: {head:?}");
    }
}

/// A proxy (with `timeouts`) to a raw backend, and a client that sends its upgrade request,
/// closes TLS and its socket and goes: returns the proxy, the backend's end and the request.
async fn client_gone_after_its_request(
    timeouts: &str,
) -> (Proxy, RawConn<tokio::net::TcpStream>, Head) {
    let backend = RawBackend::start().await;
    let config = format!(
        "{ADMIN}[timeouts]\n{timeouts}\n\n{}",
        route("chat", "/ws", &[backend.addr])
    );
    let proxy = start_proxy(&config).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    client.shutdown_write().await;
    drop(client);
    let mut back = backend.accept().await;
    let seen = back.try_read_head().await.expect("request forwarded");
    (proxy, back, seen)
}

/// A client that sends its request, closes TLS (close_notify) and the socket while the
/// backend is slow: it is gone, so neither a tunnel nor its slot may outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_101_does_not_keep_a_tunnel() {
    let (proxy, mut back, seen) = client_gone_after_its_request("idle = \"60s\"").await;
    back.send(switching(&seen, "")).await;
    // With a 60 s idle timeout, only noticing the client is gone frees the slot in time.
    until("the vanished client's slot to be freed", || {
        proxy.server.active_connections() == 0
    })
    .await;
    back.expect_closed().await;
    // Its 101 never reached it: a client gone (499), counted once, and no tunnel.
    let admin = proxy.server.admin_addr().unwrap();
    let gone = r#"wsgate_requests_total{route="chat",status="499"}"#;
    let text = scrape_until(admin, gone, 1.0).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="chat",status="101"}"#),
        None
    );
}

/// Same with the backend never answering: the slot goes by the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_backend_is_slow_frees_its_slot_by_connect() {
    let (proxy, mut back, _) = client_gone_after_its_request("connect = \"1s\"").await;
    until("the slot to be freed by the connect timeout", || {
        proxy.server.active_connections() == 0
    })
    .await;
    back.expect_closed().await;
}

/// Beyond max_connections the answer is 503 whatever the head looks like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_a_bad_head_still_gets_503() {
    let proxy = proxy_to_nowhere("[limits]\nmax_connections = 1\n", None).await;
    let _holder = raw_client(proxy.addr).await;
    until("the first connection to be counted", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let (head, _) = request(proxy.addr, ws().add("Bad Name", "v").bytes()).await;
    assert_eq!(head.status, 503, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_after_tls_counts_against_the_per_client_limit() {
    let proxy = proxy_to_nowhere("[limits]\nmax_connections_per_client = 1\n", None).await;
    let _holder = raw_client(proxy.addr).await;
    until("the first connection to be counted", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 429, "{head:?}");
}

/// A client's connections count against its limit from the accept on, TLS handshake included,
/// and those past it hold no place in `max_connections`: one client stalling handshakes
/// cannot fill the proxy for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_excess_holds_no_global_place_even_before_tls() {
    let limits = "[limits]\nmax_connections = 2\nmax_connections_per_client = 1\n";
    let proxy = proxy_to_nowhere(limits, None).await;
    // A TCP connection that never starts TLS holds the client's one place...
    let _stalled = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    until("the stalled connection to be counted", || {
        proxy.server.active_connections() == 1
    })
    .await;
    // ...so the next one is over the client's limit from the start. The proxy decides that
    // before its side of the TLS handshake, so with the handshake done it is settled.
    let mut over = raw_client(proxy.addr).await;
    assert_eq!(proxy.server.active_connections(), 1);
    over.send(ws().bytes()).await;
    let head = over.read_head().await;
    assert_eq!(head.status, 429, "{head:?}");
}

/// A refused client that has its answer but keeps the socket open must not hold shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_refused_client_does_not_delay_shutdown() {
    let proxy = proxy_to_nowhere("", None).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().add("Bad Name", "v").bytes()).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 400);
    let _body = client.read_body(&head).await;
    // The client keeps its socket open: shutdown must not wait for it (the grace is for
    // tunnels), so it ends within the test's limit, far below the 25 s answer deadline.
    within(
        "shutdown with a refused client still connected",
        proxy.server.shutdown(),
    )
    .await;
    drop(client);
}

/// Same for a refusal hyper makes (a 404): for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_404_client_does_not_delay_shutdown() {
    let proxy = proxy_to_nowhere("", None).await;
    let mut client = raw_client(proxy.addr).await;
    client
        .send(Req::upgrade("chat.example.com", "/nothing").bytes())
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 404);
    // The client keeps its socket open: shutdown must not wait for it (the grace is for
    // tunnels), so it ends within the test's limit, far below the 25 s answer deadline.
    within(
        "shutdown with a refused client still connected",
        proxy.server.shutdown(),
    )
    .await;
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_431_is_counted_once_and_not_as_an_early_close() {
    let proxy = proxy_to_nowhere(ADMIN, None).await;
    let admin = proxy.server.admin_addr().unwrap();
    let (head, _) = request(proxy.addr, ws().add("X-Big", &"a".repeat(17000)).bytes()).await;
    assert_eq!(head.status, 431);
    until("closed", || proxy.server.active_connections() == 0).await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="-",status="431"}"#),
        Some(1.0),
        "{text}"
    );
    let early: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("early") && !l.starts_with('#') && !l.ends_with(" 0") && !l.ends_with(" 0.0")
        })
        .collect();
    assert!(early.is_empty(), "{early:?}");
}

/// The head arrives one byte per TLS record, after leading blank lines, then early bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_one_byte_records_with_early_bytes() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    let mut sent = b"\r\n".to_vec();
    sent.extend(ws().bytes());
    for b in &sent {
        client.send([*b]).await;
    }
    client.send(b"EARLY").await;
    let mut back = backend.accept().await;
    let seen = back.try_read_head().await.expect("forwarded");
    back.send(switching(&seen, "")).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101);
    assert_eq!(back.read_exact(5).await, b"EARLY");
}

/// A head exactly at the limit with a lot of early bytes in the same write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_at_the_limit_with_many_early_bytes() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let base = ws().add("X-Pad", "").bytes().len();
    let head = ws().add("X-Pad", &"p".repeat(16384 - base)).bytes();
    assert_eq!(head.len(), 16384);
    let mut client = raw_client(proxy.addr).await;
    let mut sent = head.clone();
    sent.extend(vec![b'e'; 40000]);
    client.send(&sent).await;
    let mut back = backend.accept().await;
    let seen = back.try_read_head().await.expect("forwarded");
    back.send(switching(&seen, "")).await;
    let h = client.read_head().await;
    assert_eq!(h.status, 101, "{h:?}");
    assert_eq!(back.read_exact(40000).await, vec![b'e'; 40000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_before_the_101() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nidle = \"60s\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.try_read_head().await.expect("request forwarded");
    client.stream.get_ref().0.set_zero_linger().unwrap();
    // The reset is in the proxy's socket as soon as the drop returns (loopback).
    drop(client);
    back.send(switching(&seen, "")).await;
    back.expect_closed().await;
    until("slot freed", || proxy.server.active_connections() == 0).await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, r#"wsgate_requests_total{route="chat",status="101"}"#),
        None,
        "{text}"
    );
}
