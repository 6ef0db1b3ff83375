//! The request head as the proxy reads it before hyper: the exact size limit (leading blank
//! lines and whitespace included, heads in one-byte records, early bytes behind it), heads
//! hyper would refuse on its own (too many fields, beyond its buffer, malformed, a bad
//! Content-Length or Transfer-Encoding, an unparsable target) answered and counted by the
//! proxy, hosts that are not plain names, and absolute targets with default ports.

use crate::admin::{metrics, sample, ADMIN};
use crate::support::*;

pub(crate) fn ws() -> Req {
    Req::upgrade("chat.example.com", "/ws")
}

/// One route `/ws` (optionally with a host) to a closed port: a request that gets routed
/// comes back 502, one refused before routing gets its 4xx.
pub(crate) async fn proxy_to_nowhere(extra: &str, host: Option<&str>) -> Proxy {
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

/// The raw characters the HTTP library refuses in a target (documented: RFC 3986 forbids
/// them, browsers encode them) get a 400 before routing; the others it takes are routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_characters_the_parser_refuses_are_400_and_the_rest_are_routed() {
    let proxy = proxy_to_nowhere("", None).await;
    let status = |target: &'static str| async move {
        request(proxy.addr, Req::upgrade("localhost", target).bytes())
            .await
            .0
            .status
    };
    for target in ["/ws?f=\"q\"", "/ws?f=<x>", "/ws/<x>", "/ws/`x"] {
        assert_eq!(status(target).await, 400, "{target}");
    }
    // Routed: the backend is unreachable, so 502.
    for target in ["/ws/\"q\"", "/ws?f={x}|`^"] {
        assert_eq!(status(target).await, 502, "{target}");
    }
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

/// A target longer than the HTTP library parses (64 KiB), within a larger head limit: 414,
/// not a 400 for a head that is well formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_over_64_kib_is_414() {
    let proxy = proxy_to_nowhere("[limits]\nmax_request_header_bytes = 1048576\n", None).await;
    let long = format!("/ws/{}", "a".repeat(70_000));
    let (head, body) = request(proxy.addr, Req::upgrade("chat.example.com", &long).bytes()).await;
    assert_eq!(head.status, 414, "{head:?}");
    assert_eq!(body, b"request target too long\n");
    // Just within it, the request is routed (502: its backend's port is closed).
    let within = format!("/ws/{}", "a".repeat(65_000));
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", &within).bytes(),
    )
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

/// A header name of 64 KiB or more (which hyper refuses with a bare 431 of its own), in a head
/// within a larger head limit: the proxy's 431, with its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_over_64_kib_gets_the_proxys_431() {
    let proxy = proxy_to_nowhere("[limits]\nmax_request_header_bytes = 1048576\n", None).await;
    let (head, body) = request(proxy.addr, ws().add(&"X".repeat(65_536), "v").bytes()).await;
    assert_eq!(head.status, 431, "{head:?}");
    assert_eq!(body, b"request header fields too large\n");
    // Just within it, the request is routed (502: its backend's port is closed).
    let (head, _) = request(proxy.addr, ws().add(&"X".repeat(65_535), "v").bytes()).await;
    assert_eq!(head.status, 502, "{head:?}");
}

/// A client that ends TLS with its `close_notify` before its request is complete (or before
/// any) gets one back before the connection closes, as RFC 8446 §6.1 asks: it reads a clean
/// end, not a truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_tls_before_its_request_gets_a_close_notify_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = proxy_to_nowhere("", None).await;
    let partial = b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\n".as_slice();
    for sent in [partial, b""] {
        let mut tls = tls_connect(proxy.addr).await;
        tls.write_all(sent).await.unwrap();
        // Sends the close_notify and shuts the TCP sending side.
        tls.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let read = within("the proxy's close", tls.read_to_end(&mut rest)).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Ok(0),
            "{} bytes sent",
            sent.len()
        );
    }
}
