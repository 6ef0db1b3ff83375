//! Requests the proxy refuses itself, before any backend is involved.

use crate::support::*;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

/// A proxy with one route `/ws` to a backend that must never be reached (a closed port, so a
/// request that leaks through gets a 502 rather than a 4xx).
async fn proxy(extra: &str) -> Proxy {
    let nowhere = closed_port().await;
    start_proxy(&format!("{extra}\n{}", route("chat", "/ws", &[nowhere]))).await
}

async fn status_of(req: Req) -> (Head, Vec<u8>) {
    let proxy = proxy("").await;
    request(proxy.addr, req.bytes()).await
}

fn ws() -> Req {
    Req::upgrade("chat.example.com", "/ws")
}

/// The handshake timeout of the tests of connections that never complete their head.
// Long enough for a client's TLS handshake on a loaded machine (one test needs it done in time).
const HANDSHAKE: &str = "[timeouts]\nhandshake = \"1s\"\n";
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Asserts the connection was closed no earlier than the handshake timeout: `since` is taken
/// before the client connects, so before the proxy's deadline starts. A lower bound only:
/// a proxy that closed such a connection at once would fail it.
fn assert_closed_no_earlier_than_the_timeout(since: std::time::Instant) {
    let held = since.elapsed();
    assert!(
        held >= HANDSHAKE_TIMEOUT,
        "closed after {held:?}, before the {HANDSHAKE_TIMEOUT:?} handshake timeout"
    );
}

fn assert_short_plain_text(body: &[u8]) {
    assert!(body.len() < 512, "error body is {} bytes", body.len());
    assert!(std::str::from_utf8(body).is_ok(), "error body is not text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_no_route_matches_is_404() {
    let (head, body) = status_of(Req::upgrade("chat.example.com", "/nothing-here")).await;
    assert_eq!(head.status, 404, "{head:?}");
    assert_short_plain_text(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_a_route_is_426_with_upgrade_headers() {
    // A handshake timeout of an hour: the close after the answer must be the proxy's own.
    let proxy = proxy("[timeouts]\nhandshake = \"1h\"\n").await;
    for req in [
        Req::get("chat.example.com", "/ws"),
        ws().set("Sec-WebSocket-Version", "8"),
    ] {
        let mut client = raw_client(proxy.addr).await;
        client.send(req.bytes()).await;
        let head = client.read_head().await;
        assert_eq!(head.status, 426, "{head:?}");
        // Exactly as RFC 9110 §15.5.22 and the contract spell them.
        assert_eq!(head.get_all("upgrade"), ["websocket"], "{head:?}");
        assert_eq!(head.get_all("connection"), ["Upgrade"], "{head:?}");
        // One request per connection: closed once the answer is out.
        client.read_body(&head).await;
        client.expect_closed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_426_is_never_served() {
    // A 426 does not say `close`, and the bytes behind its request are already read: the
    // second request, an upgrade that would reach the (closed) backend as a 502 if served,
    // is never read, nor answered. The 426 is the connection's last word.
    let proxy = proxy("[timeouts]\nhandshake = \"1h\"\n").await;
    for first in [
        Req::get("chat.example.com", "/ws"),
        ws().set("Sec-WebSocket-Version", "8"),
    ] {
        let mut client = raw_client(proxy.addr).await;
        let mut both = first.bytes();
        both.extend(ws().bytes());
        client.send(both).await;
        let head = client.read_head().await;
        assert_eq!(head.status, 426, "{head:?}");
        client.read_body(&head).await;
        // Closed properly, at once: no second answer in front of the close_notify.
        client.expect_close_notify().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_after_its_refusal_is_taken_in_not_reset() {
    // A socket closed with input unread is reset, and a reset can destroy an answer the client
    // has not read yet (Windows drops its receive queue). So after every refusal, hyper's
    // (404, 426, 400) as much as the proxy's own, what the client still sends is read and
    // dropped for a moment before the connection goes.
    let proxy = proxy("").await;
    for (req, status) in [
        (Req::get("chat.example.com", "/nothing"), 404),
        (Req::get("chat.example.com", "/ws"), 426),
        (ws().method("POST"), 400),
        (Req::upgrade("chat.example.com", "/nothing"), 404),
    ] {
        let mut client = raw_client(proxy.addr).await;
        client.send(req.bytes()).await;
        let head = client.read_head().await;
        assert_eq!(head.status, status, "{head:?}");
        client.read_body(&head).await;
        // An upload that crossed the answer: each write would fail once a reset came back.
        for n in 0..8 {
            let sent = client.try_send(vec![b'x'; 16 * 1024]).await;
            assert!(
                sent.is_ok(),
                "{status}: write {n} after the answer: {sent:?}"
            );
        }
        client.shutdown_write().await;
        client.expect_close_notify().await;
        // Gone from the proxy (its socket closed before its slot is freed): had the upload
        // been left unread, that close was a reset, which the client's socket now holds.
        until("the connection to end", || {
            proxy.server.active_connections() == 0
        })
        .await;
        let reset = client.stream.get_ref().0.take_error().unwrap();
        assert!(
            reset.is_none(),
            "{status}: the close was a reset: {reset:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_a_426_that_are_no_request_leave_its_line_as_delivered() {
    // Bytes behind the 426's request that are no request (a head over hyper's buffer) are
    // left unread: they are no failure to deliver the 426, which went out whole, and get no
    // answer of their own (a bare 400 from hyper, once, when it read on past the 426).
    let dir = tempfile::tempdir().unwrap();
    let nowhere = closed_port().await;
    let config = write_config(dir.path(), &route("chat", "/ws", &[nowhere]));
    let (mut child, lines, addr) = started_wsgate(&config);
    let mut client = raw_client(addr).await;
    let mut bytes = Req::get("chat.example.com", "/ws").bytes();
    bytes.extend(format!("GET /ws HTTP/1.1\r\nX: {}", "a".repeat(40_000)).as_bytes());
    let _ = client.try_send(bytes).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 426, "{head:?}");
    client.read_body(&head).await;
    assert!(client.try_read_head().await.is_none(), "a second answer");
    let line = line_containing(lines, "connection closed").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("\"status\":426"), "{line}");
    assert!(!line.contains("not delivered"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_request_ends_with_a_tls_close_notify() {
    // hyper hands an upgrade request's socket over unshut whatever the answer: the proxy must
    // still end TLS properly, for a request refused by routing (404) as by the checks (400).
    let proxy = proxy("").await;
    for (req, status) in [
        (Req::upgrade("chat.example.com", "/nothing-here"), 404),
        (ws().set("Sec-WebSocket-Key", "c2hvcnQ="), 400),
        (Req::get("chat.example.com", "/ws"), 426),
    ] {
        let mut client = raw_client(proxy.addr).await;
        client.send(req.bytes()).await;
        let head = client.read_head().await;
        assert_eq!(head.status, status, "{head:?}");
        client.read_body(&head).await;
        client.expect_close_notify().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_426_never_forwarded() {
    let (head, _) = status_of(
        ws().set("Upgrade", "h2c")
            .add("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    )
    .await;
    assert_eq!(head.status, 426, "{head:?}");
    assert_eq!(head.tokens("upgrade"), ["websocket"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_upgrade_is_400() {
    let (head, _) = status_of(ws().method("POST").add("Content-Length", "0")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upgrade_is_400() {
    let (head, _) = status_of(ws().version("HTTP/1.0")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_0_9_request_line_is_400() {
    let (head, body) = status_of(ws().version("HTTP/0.9")).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_eq!(body, b"websocket upgrade needs HTTP/1.1\n");
}

/// HTTP/2 spoken without ALPN (its connection preface, or a request line naming 2.0) gets 505
/// in HTTP/1.1, whose status line such a client can at least log; the log line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_2_request_line_is_505() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = closed_port().await;
    let config = write_config(dir.path(), &route("chat", "/ws", &[nowhere]));
    let (_child, lines, addr) = started_wsgate(&config);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let (head, body) = request(addr, preface).await;
    assert_eq!(head.status, 505, "{head:?}");
    assert_short_plain_text(&body);
    let line = line_containing(lines, "connection closed").await;
    assert!(line.contains("\"status\":505"), "{line}");
    assert!(line.contains("HTTP version 2 or later"), "{line}");
    let (head, _) = request(addr, ws().version("HTTP/2.0").bytes()).await;
    assert_eq!(head.status, 505, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_the_upgrade_token_is_400() {
    let (head, _) = status_of(ws().set("Connection", "keep-alive")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_token_outside_ascii_is_400() {
    // A token the proxy cannot read is one it would not strip as hop-by-hop: refused instead.
    let text = ws().set("Connection", "Upgrade, X-Secret-MARK").bytes();
    let at = text.windows(4).position(|w| w == b"MARK").unwrap();
    let raw = [&text[..at], &[0x80][..], &text[at + 4..]].concat();
    let proxy = proxy("").await;
    let (head, body) = request(proxy.addr, raw).await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_short_plain_text(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_host_is_400_whatever_the_path() {
    for path in ["/ws", "/nothing-here"] {
        let (head, body) = status_of(Req::upgrade("x", path).remove("Host")).await;
        assert_eq!(head.status, 400, "{path}: {head:?}");
        assert!(String::from_utf8_lossy(&body).contains("Host"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_an_empty_port_is_400() {
    let (head, _) = status_of(ws().set("Host", "chat.example.com:")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_400() {
    let (head, _) = status_of(ws().remove("Sec-WebSocket-Key")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_base64_is_400() {
    let (head, _) = status_of(ws().set("Sec-WebSocket-Key", "not base64 at all!!!!!!!")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_15_bytes_is_400() {
    // base64 of 15 bytes
    let (head, _) = status_of(ws().set("Sec-WebSocket-Key", "AAECAwQFBgcICQoLDA0O")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_17_bytes_is_400() {
    let (head, _) = status_of(ws().set("Sec-WebSocket-Key", "AAECAwQFBgcICQoLDA0ODxA=")).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_8_is_426_naming_version_13() {
    let (head, _) = status_of(ws().set("Sec-WebSocket-Version", "8")).await;
    assert_eq!(head.status, 426, "{head:?}");
    assert_eq!(head.get("sec-websocket-version"), Some("13"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_version_is_refused() {
    let (head, _) = status_of(ws().remove("Sec-WebSocket-Version")).await;
    assert!(
        head.status == 426 || head.status == 400,
        "expected 400 or 426, got {head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_larger_than_the_limit_is_431() {
    let proxy = proxy("[limits]\nmax_request_header_bytes = 4096\n").await;
    let (head, _) = request(proxy.addr, ws().add("X-Big", &"a".repeat(5000)).bytes()).await;
    assert_eq!(head.status, 431, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_100_header_fields_pass_and_101_are_431() {
    let proxy = proxy("").await;
    let fields = |n: usize| (0..n).fold(ws(), |req, i| req.add(&format!("X-{i}"), "v"));
    // The upgrade request's own fields plus these: 100 in all reach routing, 101 do not.
    // Field lines: every line after the request line that has a colon.
    let own = (ws().bytes().split(|&b| b == b'\n').skip(1))
        .filter(|l| l.contains(&b':'))
        .count();
    let (head, _) = request(proxy.addr, fields(100 - own).bytes()).await;
    assert_ne!(head.status, 431, "{head:?}");
    let (head, body) = request(proxy.addr, fields(101 - own).bytes()).await;
    assert_eq!(head.status, 431, "{head:?}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "request header fields too large\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_larger_than_the_default_16_kib_is_431() {
    let proxy = proxy("").await;
    let (head, _) = request(
        proxy.addr,
        ws().add("X-Big", &"a".repeat(17 * 1024)).bytes(),
    )
    .await;
    assert_eq!(head.status, 431, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_within_the_limit_is_not_431() {
    let proxy = proxy("[limits]\nmax_request_header_bytes = 4096\n").await;
    // Reaches routing (and the closed backend), so 502: the size check did not fire.
    let (head, _) = request(proxy.addr, ws().add("X-Big", &"a".repeat(2000)).bytes()).await;
    assert_eq!(head.status, 502, "{head:?}");
}

/// The request head as sent, `size` bytes long through its empty line, padded with one header
/// written `X-Pad:value` (no space, which hyper's parsed view would not show).
fn head_of(size: usize) -> Vec<u8> {
    let mut head = ws().bytes();
    let pad = "X-Pad:\r\n";
    let fill = size - head.len() - pad.len();
    let line = format!("X-Pad:{}\r\n", "a".repeat(fill));
    head.splice(head.len() - 2..head.len() - 2, line.into_bytes());
    assert_eq!(head.len(), size);
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_counts_the_bytes_sent_exactly() {
    let proxy = proxy("[limits]\nmax_request_header_bytes = 1024\n").await;
    // Exactly the limit reaches routing (and the closed backend: 502); one byte more is 431.
    let (head, _) = request(proxy.addr, head_of(1024)).await;
    assert_eq!(head.status, 502, "{head:?}");
    let (head, _) = request(proxy.addr, head_of(1025)).await;
    assert_eq!(head.status, 431, "{head:?}");
    // Empty lines before the request line (which HTTP lets a server skip) are bytes sent.
    let led = [&b"\r\n"[..], &head_of(1023)].concat();
    let (head, _) = request(proxy.addr, led).await;
    assert_eq!(head.status, 431, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_the_parser_drops_still_counts() {
    let proxy = proxy("[limits]\nmax_request_header_bytes = 1024\n").await;
    let padded = format!("{}a{}", " ".repeat(600), " ".repeat(600));
    let (head, _) = request(proxy.addr, ws().add("X-Padded", &padded).bytes()).await;
    assert_eq!(head.status, 431, "{head:?}");
}

/// Lines ended by CR alone never make a head: 400 at once, not a wait for the handshake
/// timeout (an hour here, so a wait would fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_bare_cr_line_ends_is_400_at_once() {
    let proxy = proxy("[timeouts]\nhandshake = \"1h\"\n").await;
    let (head, body) = request(
        proxy.addr,
        "GET /ws HTTP/1.1\rHost: chat.example.com\rUpgrade: websocket\r\r",
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
    assert_short_plain_text(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_head_is_closed_after_the_handshake_timeout() {
    let proxy = proxy(HANDSHAKE).await;
    let since = std::time::Instant::now();
    let mut client = raw_client(proxy.addr).await;
    client
        .send(b"GET /ws HTTP/1.1\r\nHost: chat.example.com\r\n")
        .await;
    // Either a bare close or a 408 then a close; never a hang.
    let rest = client.read_to_end().await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer {text:?}"
    );
    assert_closed_no_earlier_than_the_timeout(since);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout() {
    let proxy = proxy(HANDSHAKE).await;
    let since = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut raw = RawConn::new(tcp);
    raw.expect_closed().await;
    assert_closed_no_earlier_than_the_timeout(since);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_tls_hello_is_closed_after_the_handshake_timeout() {
    let proxy = proxy(HANDSHAKE).await;
    let since = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // The first bytes of a TLS record header announcing a ClientHello that never comes.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut raw = RawConn::new(tcp);
    raw.read_to_end().await;
    assert_closed_no_earlier_than_the_timeout(since);
}

/// A first byte that may begin a PROXY header or an HTTP method, and nothing after it: no
/// answer is decided on it (no 400, no alert), and the connection ends at the handshake
/// timeout like any other that never completes its hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_first_byte_is_closed_after_the_handshake_timeout() {
    let proxy = proxy(HANDSHAKE).await;
    let since = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"P").await.unwrap();
    let mut raw = RawConn::new(tcp);
    assert!(
        raw.read_to_end().await.is_empty(),
        "answered an undecided byte"
    );
    assert_closed_no_earlier_than_the_timeout(since);
}

/// A `ws://` (or `http://`) client at the TLS port is told, in the HTTP it spoke, to use TLS:
/// its request is never served in clear (its route's backend is down: served, it would get 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_told_to_use_tls() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = closed_port().await;
    let config = write_config(dir.path(), &route("chat", "/ws", &[nowhere]));
    let (mut child, lines, addr) = started_wsgate(&config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut raw = RawConn::new(tcp);
    raw.send(ws().bytes()).await;
    let head = raw.read_head().await;
    assert_eq!(head.status, 400, "{head:?}");
    let body = raw.read_body(&head).await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        "this port speaks TLS: connect with wss:// (or https://)\n"
    );
    assert!(raw.read_to_end().await.is_empty(), "more after the answer");
    // Logged once the answer is out, as every refusal is, while the client still holds its
    // end: the lingering close after it (up to a second) is not the connection's duration.
    let line = line_containing(lines, "connection closed").await;
    assert!(line.contains("\"status\":400"), "{line}");
    assert!(
        line.contains("plain HTTP request on the TLS port"),
        "{line}"
    );
    let duration = line.split("\"duration_ms\":").nth(1).and_then(|d| {
        let digits: String = d.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    assert!(duration.is_some_and(|ms| ms < 1000), "{line}");
    drop(raw);
    child.kill().unwrap();
}

/// Bytes that are neither TLS nor HTTP get TLS's answer (an alert, then the close), nothing
/// in HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_neither_tls_nor_http_get_no_http_answer() {
    let proxy = proxy("").await;
    // Capitals too, when no method and space follow (an SSH client's banner, junk).
    for junk in [
        &b"\x00\x01\x02 not a protocol\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.0\r\n",
        b"D\x05$\x08\xd9I\xd4\xdfE+",
    ] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut raw = RawConn::new(tcp);
        raw.send(junk).await;
        let rest = raw.read_to_end().await;
        assert!(
            !rest.windows(5).any(|w| w == b"HTTP/"),
            "{junk:?}: {rest:?}"
        );
        assert_eq!(
            rest.first(),
            Some(&0x15),
            "{junk:?}: an alert record: {rest:?}"
        );
    }
}

/// A hello that is TLS but malformed gets TLS's fatal alert before the close, also where
/// rustls itself leaves it unsaid: a handshake message declared over 64 KiB
/// (decode_error, 50), and a record of another type inside a hello split over two
/// (unexpected_message, 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_hello_is_answered_with_a_tls_alert() {
    let proxy = proxy("").await;
    let cases: [(&[u8], u8); 3] = [
        // A ClientHello declaring 16 MiB, in a 5-byte record.
        (b"\x16\x03\x01\x00\x05\x01\xff\xff\xff\x00", 50),
        // The same, as the black-box finding sent it: "hello" for a handshake message.
        (b"\x16\x03\x01\x00\x05hello", 50),
        // A ClientHello's first 4 bytes (declaring 100), then an alert record.
        (
            b"\x16\x03\x01\x00\x04\x01\x00\x00\x64\x15\x03\x01\x00\x02\x01\x00",
            10,
        ),
    ];
    for (hello, alert) in cases {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut raw = RawConn::new(tcp);
        raw.send(hello).await;
        let answer = raw.read_to_end().await;
        assert_eq!(answer, [0x15, 3, 3, 0, 2, 2, alert], "{hello:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_426_for_an_unsupported_version_names_the_protocol_to_upgrade_to() {
    let nowhere = closed_port().await;
    let proxy = start_proxy(&route("chat", "/ws", &[nowhere])).await;
    let req = Req::upgrade("localhost", "/ws").set("Sec-WebSocket-Version", "8");
    let (head, _) = request(proxy.addr, req.bytes()).await;
    assert_eq!(head.status, 426, "{head:?}");
    assert_eq!(head.get("sec-websocket-version"), Some("13"));
    // RFC 9110 §15.5.22: a 426 must carry Upgrade.
    assert_eq!(head.tokens("upgrade"), ["websocket"], "{head:?}");
}

/// ALPN never agrees to h2, agrees to http/1.1 from a longer list, and to http/1.0 for a client
/// offering only that, which then gets the HTTP answer to an HTTP/1.0 upgrade (400), not a
/// TLS alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_agrees_to_http_1_only() {
    let proxy = proxy("").await;
    let offering = |protocols: &[&[u8]]| {
        let mut config = (*pki().client_config()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    let tls = tls_connect_with(proxy.addr, "localhost", offering(&[b"h2", b"http/1.1"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls = tls_connect_with(proxy.addr, "localhost", offering(&[b"http/1.0"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    let mut client = RawConn::new(tls);
    client.send(ws().version("HTTP/1.0").bytes()).await;
    assert_eq!(client.read_head().await.status, 400);
    // h2 alone: nothing to agree on.
    let connector = tokio_rustls::TlsConnector::from(offering(&[b"h2"]));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
}

/// A client that ends its handshake itself (a `close_notify` after its hello, as scanners and
/// clients giving up do) is a client gone, not a TLS failure; a record of no TLS type after a
/// hello is garbage after TLS, not a client that never spoke it; bytes that never were TLS are
/// said to be so. Each in the connection's one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_ended_by_the_client_or_garbled_after_its_hello_is_said_as_such() {
    let nowhere = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[nowhere]));
    let (_child, lines, addr) = started_wsgate(&config);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(pki().client_config(), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let cases: [(Vec<u8>, &str); 3] = [
        (
            [&hello[..], b"\x15\x03\x03\x00\x02\x01\x00"].concat(),
            "\"closed during the TLS handshake: the client sent close_notify\"",
        ),
        (
            [&hello[..], b"\x63\x03\x03\x00\x05hello"].concat(),
            "\"TLS handshake failed: malformed TLS after a TLS start: a content type TLS does not have",
        ),
        (
            b"\x63\x03\x03\x00\x05hello".to_vec(),
            "\"TLS handshake failed: not TLS: the client sent bytes that are no TLS record",
        ),
    ];
    for (sent, _) in &cases {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = RawConn::new(tcp);
        raw.send(sent).await;
        raw.read_to_end().await;
    }
    // In any order: each line is written as its connection ends.
    let ended: Vec<String> = (0..cases.len())
        .map(|_| wait_for_line(&lines, "\"status\":0"))
        .collect();
    for (_, said) in cases {
        assert!(ended.iter().any(|l| l.contains(said)), "{said}: {ended:#?}");
    }
}
