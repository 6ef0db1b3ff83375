//! `proxy.proxy_protocol`: behind an L4 load balancer, the PROXY protocol header (v1 or v2)
//! names the real client, which then appears in `X-Forwarded-For`; a connection without a
//! valid header is closed before TLS.

use std::net::SocketAddr;

use crate::admin::{metrics, sample, scrape_until, ADMIN};
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ON: &str = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nproxy_protocol = true\n\n[tls]\ncertificates = [ { cert = \"server.crt\", key = \"server.key\" } ]\n\n";

/// A proxy with `proxy_protocol = true` and `body` (limits, routes…).
async fn proxy_with_header(body: &str) -> (tempfile::TempDir, wsgate::Server, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    std::fs::write(&path, format!("{ON}{body}")).unwrap();
    let server = wsgate::Server::start(&path).await.unwrap();
    let addr = server.local_addrs()[0];
    (dir, server, addr)
}

/// The one route these tests use: /ws to `backend`.
fn chat(backend: &RawBackend) -> String {
    route("chat", "/ws", &[backend.addr])
}

/// Upgrades through the proxy after sending `prefix`; returns what the backend saw.
async fn upgrade_after(
    addr: SocketAddr,
    backend: &RawBackend,
    prefix: &[u8],
) -> (RawConn<Tls>, RawConn<tokio::net::TcpStream>, Head) {
    let mut client = RawConn::new(tls_connect_after(addr, "localhost", prefix).await);
    client.send(Req::upgrade("localhost", "/ws").bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(client.read_head().await.status, 101);
    (client, back, seen)
}

/// A v2 header from `source` to `destination` (same address family), with a TLV as AWS adds.
fn v2(command: ppp::v2::Command, source: &str, destination: &str) -> Vec<u8> {
    let addresses: (SocketAddr, SocketAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | command,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .write_tlv(ppp::v2::Type::NoOp, b"aws-vpce-0123")
    .unwrap()
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_header_names_the_client_and_the_tunnel_is_transparent() {
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&chat(&backend)).await;
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
    let (mut client, mut back, seen) = upgrade_after(addr, &backend, header).await;
    assert_eq!(seen.list("x-forwarded-for"), ["203.0.113.7"]);
    // The header is consumed exactly: TLS and the tunnel behind it are untouched.
    let frame = frame(true, OP_TEXT, b"through", true);
    client.send(&frame).await;
    assert_eq!(back.read_exact(frame.len()).await, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_header_with_tlvs_names_an_ipv6_client() {
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&chat(&backend)).await;
    let header = v2(
        ppp::v2::Command::Proxy,
        "[2001:db8::7]:40000",
        "[2001:db8::1]:443",
    );
    let (_client, _back, seen) = upgrade_after(addr, &backend, &header).await;
    assert_eq!(seen.list("x-forwarded-for"), ["2001:db8::7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_local_header_keeps_the_socket_peer() {
    // LOCAL is what a balancer sends for its own health checks.
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&chat(&backend)).await;
    let header = v2(ppp::v2::Command::Local, "198.51.100.1:1", "10.0.0.1:443");
    let (_client, _back, seen) = upgrade_after(addr, &backend, &header).await;
    assert_eq!(seen.list("x-forwarded-for"), ["127.0.0.1"]);
    // The spec: LOCAL is accepted whatever family it names, its block discarded; here
    // AF_INET with no addresses at all.
    let bare = b"\r\n\r\n\0\r\nQUIT\n\x20\x11\x00\x00";
    let (_client, _back, seen) = upgrade_after(addr, &backend, bare).await;
    assert_eq!(seen.list("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_in_ipv6_form_is_the_ipv4_client() {
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&chat(&backend)).await;
    let header = b"PROXY TCP6 ::ffff:203.0.113.91 ::1 5 443\r\n";
    let (_client, _back, seen) = upgrade_after(addr, &backend, header).await;
    assert_eq!(seen.list("x-forwarded-for"), ["203.0.113.91"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_arriving_in_pieces_is_assembled() {
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&chat(&backend)).await;
    let header = b"PROXY TCP4 192.0.2.55 10.0.0.1 51000 443\r\n";
    // 9-byte pieces, and a cut right after the source port's space (where a naive parser
    // sees an empty destination port); the parser's side of that cut is unit-tested.
    let cut = header.len() - b"443\r\n".len();
    let nine: Vec<&[u8]> = header.chunks(9).collect();
    for pieces in [nine, vec![&header[..cut], &header[cut..]]] {
        // Each piece in its own write on a no-delay socket; the TLS handshake follows.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        for piece in pieces {
            tcp.write_all(piece).await.unwrap();
            tcp.flush().await.unwrap();
        }
        let tls = tls_handshake_on(tcp, "localhost").await.unwrap();
        let mut client = RawConn::new(tls);
        client.send(Req::upgrade("localhost", "/ws").bytes()).await;
        let seen = backend.accept().await.read_head().await;
        assert_eq!(seen.list("x-forwarded-for"), ["192.0.2.55"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_header_is_closed_before_tls() {
    let backend = RawBackend::start().await;
    let (_dir, server, addr) = proxy_with_header(&chat(&backend)).await;
    // A client that reached the proxy directly, bypassing the balancer.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tls_handshake_on(tcp, "localhost").await;
    assert!(tls.is_err(), "TLS must not start without a PROXY header");
    // Garbage that is not a header at all.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"HELLO THERE\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    // Closed with our bytes unread: an orderly close or a reset, but never an answer.
    match within("the close", tcp.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "no answer: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    until("both connections to be let go", || {
        server.active_connections() == 0
    })
    .await;
}

/// A balancer sending the PROXY protocol to a wsgate not told to expect it (the annotation
/// set, the config key not): the TLS handshake fails, with no HTTP answer, and the line says
/// what is wrong, for either version of the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_where_none_is_expected_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::start().await;
    let (_child, lines, addr) = started_wsgate(&write_config(dir.path(), &chat(&backend)));
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec();
    let v2 = v2(ppp::v2::Command::Proxy, "203.0.113.7:51000", "10.0.0.1:443");
    for header in [v1, v2] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&header).await.unwrap();
        assert!(tls_handshake_on(tcp, "localhost").await.is_err());
        let line = tokio::task::block_in_place(|| wait_for_line(&lines, "connection closed"));
        assert!(
            line.contains("a PROXY protocol header, but proxy_protocol is off"),
            "{line}"
        );
    }
}

/// Two proxies in front, each adding its header, to a wsgate expecting one: the second is
/// named as such, not as a header wsgate does not expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_header_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::start().await;
    let path = write_config(dir.path(), "");
    std::fs::write(&path, format!("{ON}{}", chat(&backend))).unwrap();
    let (_child, lines, addr) = started_wsgate(&path);
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[&header[..], &header[..]].concat())
        .await
        .unwrap();
    assert!(tls_handshake_on(tcp, "localhost").await.is_err());
    let line = tokio::task::block_in_place(|| wait_for_line(&lines, "connection closed"));
    assert!(line.contains("a second PROXY protocol header"), "{line}");
}

/// A header that starts as one does and is broken after is named as malformed, of its
/// version; bytes that are no header at all as what a client without the balancer sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_is_told_from_no_header_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::start().await;
    let path = write_config(dir.path(), "");
    std::fs::write(&path, format!("{ON}{}", chat(&backend))).unwrap();
    let (_child, lines, addr) = started_wsgate(&path);
    let mut bad_v2 = v2(ppp::v2::Command::Proxy, "203.0.113.7:51000", "10.0.0.1:443");
    bad_v2[12] = 0x22; // version 2, command 2: none
    let cases: [(&[u8], &str); 3] = [
        (
            b"PROXY TCP4 999.1.1.1 10.0.0.1 51000 443\r\n",
            "malformed PROXY protocol v1 header",
        ),
        (&bad_v2, "malformed PROXY protocol v2 header"),
        (
            b"HELLO THERE\r\n\r\n",
            "not a PROXY protocol header (is the load balancer",
        ),
    ];
    for (bytes, reason) in cases {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let line = tokio::task::block_in_place(|| wait_for_line(&lines, "connection closed"));
        assert!(line.contains(reason), "{reason}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_line_that_ends_too_soon_is_refused_at_once() {
    // `PROXY TCP4 1.2.3.4\r\n` is complete (its CRLF is in) but short of fields: refused as
    // a bad header at once, not held until the handshake timeout, which is set far away.
    let backend = RawBackend::start().await;
    let slow = "[timeouts]\nhandshake = \"60s\"\n\n";
    let (_dir, server, addr) = proxy_with_header(&format!("{slow}{}", chat(&backend))).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 1.2.3.4\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Closed well within the suite's bound (seconds), with the 60 s timeout far away.
    match within("the refusal of a short v1 line", tcp.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "no answer: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    until("the connection to be let go", || {
        server.active_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_limit_counts_the_real_client_and_ipv6_by_its_64() {
    let backend = RawBackend::start().await;
    let body = format!(
        "[limits]\nmax_connections_per_client = 1\n\n{}",
        chat(&backend)
    );
    let (_dir, _server, addr) = proxy_with_header(&body).await;
    let status_from = |header: &'static [u8]| async move {
        let mut client = RawConn::new(tls_connect_after(addr, "localhost", header).await);
        client.send(Req::upgrade("localhost", "/ws").bytes()).await;
        (client.read_head().await.status, client)
    };

    // One tunnel each for two IPv4 clients behind the same balancer address.
    let held_a = upgrade_after(addr, &backend, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\r\n").await;
    let held_b = upgrade_after(addr, &backend, b"PROXY TCP4 203.0.113.8 10.0.0.1 1 443\r\n").await;
    let (status, _) = status_from(b"PROXY TCP4 203.0.113.7 10.0.0.1 2 443\r\n").await;
    assert_eq!(status, 429);

    // Another address in the same IPv6 /64 is the same client; another /64 is not.
    let held_c = upgrade_after(
        addr,
        &backend,
        b"PROXY TCP6 2001:db8:0:1::1 2001:db8::2 1 443\r\n",
    )
    .await;
    let (status, _) = status_from(b"PROXY TCP6 2001:db8:0:1::2 2001:db8::2 1 443\r\n").await;
    assert_eq!(status, 429);
    let _held_d = upgrade_after(
        addr,
        &backend,
        b"PROXY TCP6 2001:db8:0:2::1 2001:db8::2 1 443\r\n",
    )
    .await;
    drop((held_a, held_b, held_c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_for_global_capacity_takes_no_per_client_place() {
    let backend = RawBackend::start().await;
    let body = format!(
        "[limits]\nmax_connections = 1\nmax_connections_per_client = 1\n\n{}",
        chat(&backend)
    );
    let (_dir, server, addr) = proxy_with_header(&body).await;
    const X: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\r\n";
    const Y: &[u8] = b"PROXY TCP4 203.0.113.8 10.0.0.1 1 443\r\n";

    // X holds the only place; Y connects while the proxy is full and sends nothing, so the
    // proxy holds that connection (bound for a 503) with its limits decided: the global
    // place is decided at accept and the per-client one before TLS starts, so the proxy's
    // half of the handshake, which the client has once `tls_connect_after` returns, comes
    // after both.
    let tunnel_x = upgrade_after(addr, &backend, X).await;
    let refused_y = RawConn::new(tls_connect_after(addr, "localhost", Y).await);

    drop(tunnel_x);
    until("X's tunnel to be released", || {
        server.active_connections() == 0
    })
    .await;
    // Y's next connection: the refused one must not have taken Y's only place.
    let _tunnel_y = upgrade_after(addr, &backend, Y).await;
    drop(refused_y);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_never_completes_is_counted_as_a_bad_header() {
    // Not a TLS handshake timeout: TLS never started.
    let backend = RawBackend::start().await;
    let fast = "[timeouts]\nhandshake = \"300ms\"\n\n";
    let (_dir, server, addr) = proxy_with_header(&format!("{fast}{ADMIN}{}", chat(&backend))).await;
    let admin = server.admin_addr().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 1.2.").await.unwrap();
    let text = scrape_until(
        admin,
        r#"wsgate_connections_closed_early_total{reason="bad_proxy_header"}"#,
        1.0,
    )
    .await;
    let timeouts = r#"wsgate_connections_closed_early_total{reason="handshake_timeout"}"#;
    assert_eq!(sample(&text, timeouts).unwrap_or(0.0), 0.0, "{text}");
    assert_eq!(sample(&metrics(admin).await, timeouts).unwrap_or(0.0), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_checks_connect_and_close_is_no_bad_header() {
    // A load balancer's or kubelet's tcpSocket check sends nothing: an alert on bad headers
    // must not fire for it.
    let backend = RawBackend::start().await;
    let (_dir, server, addr) = proxy_with_header(&format!("{ADMIN}{}", chat(&backend))).await;
    let admin = server.admin_addr().unwrap();
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    let text = scrape_until(
        admin,
        r#"wsgate_connections_closed_early_total{reason="no_request"}"#,
        1.0,
    )
    .await;
    let bad = r#"wsgate_connections_closed_early_total{reason="bad_proxy_header"}"#;
    assert_eq!(sample(&text, bad).unwrap_or(0.0), 0.0, "{text}");
}
