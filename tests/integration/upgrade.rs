//! The happy path: a valid upgrade is forwarded (with the right headers) and a real WebSocket
//! peer on each side is happy.

use crate::support::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_reaches_an_echo_backend() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    within("send", ws.send(Message::binary(vec![0u8, 1, 2, 255])))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let seen = backend.next_request().await;
    assert_eq!(seen.target, "/ws");
}

/// Sends `req` through the proxy to a tungstenite echo backend and returns the client's answer.
async fn upgrade_via_echo(req: Req) -> Head {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(req.bytes()).await;
    client.read_head().await
}

fn assert_switched(head: &Head) {
    assert_eq!(head.status, 101, "got {:?}", head.start_line);
    assert_eq!(head.get("sec-websocket-accept"), Some(ACCEPT));
    assert!(head.tokens("upgrade").contains(&"websocket".to_string()));
    assert!(head.tokens("connection").contains(&"upgrade".to_string()));
    // A 101 saying "close" is self-contradictory and real clients (tungstenite) refuse it.
    assert!(
        !head.tokens("connection").contains(&"close".to_string()),
        "101 with Connection: close: {head:?}"
    );
}

/// RFC 9110 §2.5: a later minor version of HTTP/1 is served as HTTP/1.1 (as nginx and HAProxy
/// do), not refused; the backend gets an HTTP/1.1 request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_2_upgrade_is_served_as_http_1_1() {
    let head = upgrade_via_echo(Req::upgrade("chat.example.com", "/ws").version("HTTP/1.2")).await;
    assert_switched(&head);
    assert!(head.start_line.starts_with("HTTP/1.1 101"), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_websocket_in_any_case_is_accepted() {
    let head = upgrade_via_echo(
        Req::upgrade("chat.example.com", "/ws")
            .set("Upgrade", "WebSocket")
            .set("Connection", "upgrade"),
    )
    .await;
    assert_switched(&head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_keep_alive_comma_upgrade_is_accepted() {
    // What Firefox sends.
    let head = upgrade_via_echo(
        Req::upgrade("chat.example.com", "/ws").set("Connection", "keep-alive, Upgrade"),
    )
    .await;
    assert_switched(&head);
}

/// A client asking to close after its request still gets a 101 that says `Upgrade` alone:
/// "close" beside it would contradict the tunnel, and tungstenite refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_upgrade_gets_a_101_without_close() {
    for connection in ["close, Upgrade", "Upgrade, CLOSE"] {
        let head =
            upgrade_via_echo(Req::upgrade("chat.example.com", "/ws").set("Connection", connection))
                .await;
        assert_switched(&head);
        assert_eq!(head.tokens("connection"), ["upgrade"], "{connection}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_across_several_header_lines_are_accepted() {
    let head = upgrade_via_echo(
        Req::upgrade("chat.example.com", "/ws")
            .set("Connection", "keep-alive")
            .add("Connection", "UPGRADE"),
    )
    .await;
    assert_switched(&head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_list_with_websocket_among_other_tokens_is_accepted() {
    let head = upgrade_via_echo(
        Req::upgrade("chat.example.com", "/ws").set("Upgrade", "foo/1, WebSocket"),
    )
    .await;
    assert_switched(&head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_the_request_line_and_forwarded_headers() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let req = Req::upgrade("chat.example.com", "/ws/room?id=7&x=%20y")
        .set("Upgrade", "WebSocket")
        .set("Connection", "keep-alive, Upgrade")
        .add("Authorization", "Bearer t0ken")
        .add("Cookie", "a=1; b=2")
        .add("User-Agent", "wsgate-tests")
        .add("X-Custom", "kept");
    let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;

    assert_eq!(seen.start_line, "GET /ws/room?id=7&x=%20y HTTP/1.1");
    assert_eq!(seen.list("upgrade"), ["websocket"]);
    assert_eq!(seen.tokens("connection"), ["upgrade"]);
    assert_eq!(seen.get("sec-websocket-key"), Some(KEY));
    assert_eq!(seen.get("sec-websocket-version"), Some("13"));
    assert_eq!(seen.list("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.get("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.get("x-forwarded-host"), Some("chat.example.com"));
    assert_eq!(seen.get("authorization"), Some("Bearer t0ken"));
    assert_eq!(seen.get("cookie"), Some("a=1; b=2"));
    assert_eq!(seen.get("user-agent"), Some("wsgate-tests"));
    assert_eq!(seen.get("x-custom"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_claims_about_itself_are_replaced_or_dropped() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let req = Req::upgrade("chat.example.com", "/ws")
        .add("Forwarded", "for=10.0.0.1;proto=https;host=admin.internal")
        .add("X-Real-IP", "10.0.0.1")
        .add("X-Forwarded-Proto", "http")
        .add("X-Forwarded-Host", "admin.internal")
        // The same names with `_`, which CGI, WSGI and Rack backends read as the dashed ones.
        .add("X_Forwarded_For", "10.0.0.1")
        .add("X_Forwarded_Host", "admin.internal")
        .add("X_Real_IP", "10.0.0.1")
        .add("Proxy_Connection", "keep-alive")
        .add("X_Custom", "kept")
        .add("X-Forwarded-Port", "80")
        .add("X-Forwarded-Prefix", "/admin")
        .add("X-Forwarded-Ssl", "off")
        .add("Front-End-Https", "off")
        .add("Sec_WebSocket_Key", "AAAAAAAAAAAAAAAAAAAAAA==")
        // Addresses, URLs and methods some frameworks and CDNs take from the request.
        .add("True-Client-IP", "10.0.0.1")
        .add("CF-Connecting-IP", "10.0.0.1")
        .add("X-Client-IP", "10.0.0.1")
        .add("X-Original-URL", "/admin")
        .add("X-Rewrite-URL", "/admin")
        .add("X-HTTP-Method-Override", "POST")
        .add("Via", "1.1 edge");
    let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;
    // The client's hops, then this one.
    assert_eq!(seen.list("via"), ["1.1 edge", "1.1 wsgate"]);
    assert_eq!(seen.get("forwarded"), None, "{seen:?}");
    assert_eq!(seen.get("x-real-ip"), None, "{seen:?}");
    for alias in [
        "x_forwarded_for",
        "x_forwarded_host",
        "x_real_ip",
        "proxy_connection",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "front-end-https",
        "sec_websocket_key",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
    ] {
        assert_eq!(seen.get(alias), None, "{alias}: {seen:?}");
    }
    assert_eq!(seen.get("x_custom"), Some("kept"));
    assert_eq!(seen.list("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.list("x-forwarded-host"), ["chat.example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended_to_the_clients_one() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let req =
        Req::upgrade("chat.example.com", "/ws").add("X-Forwarded-For", "203.0.113.7, 10.0.0.1");
    let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;
    assert_eq!(
        seen.list("x-forwarded-for"),
        ["203.0.113.7", "10.0.0.1", "127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_x_forwarded_for_elements_are_left_out_of_the_list() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    for (lines, expected) in [
        (&[""][..], "127.0.0.1"),
        (&[" , 203.0.113.7,", ""][..], "203.0.113.7, 127.0.0.1"),
        (
            &["203.0.113.7", "10.0.0.1"][..],
            "203.0.113.7, 10.0.0.1, 127.0.0.1",
        ),
    ] {
        let req = lines
            .iter()
            .fold(Req::upgrade("chat.example.com", "/ws"), |req, line| {
                req.add("X-Forwarded-For", line)
            });
        let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;
        assert_eq!(seen.get_all("x-forwarded-for"), [expected], "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let req = Req::upgrade("chat.example.com", "/ws")
        .set("Connection", "Upgrade, X-Hop")
        .add("X-Hop", "secret")
        .add("Keep-Alive", "timeout=5")
        .add("Proxy-Connection", "keep-alive")
        .add("TE", "trailers");
    let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;
    for name in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!seen.has(name), "{name} reached the backend: {seen:?}");
    }
    assert_eq!(seen.tokens("connection"), ["upgrade"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cannot_strip_the_proxys_headers_by_naming_them_in_connection() {
    // Traefik CVE-2024-45410.
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let req = Req::upgrade("chat.example.com", "/ws")
        .set(
            "Connection",
            "Upgrade, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Upgrade",
        )
        .add("X-Forwarded-For", "203.0.113.7");
    let (_client, _back, _head, seen) = raw_tunnel(proxy.addr, &backend, &req).await;
    // The client's own value goes (it named it hop-by-hop); the proxy's address stays.
    assert_eq!(seen.get_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.get("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.get("x-forwarded-host"), Some("chat.example.com"));
    assert_eq!(seen.list("upgrade"), ["websocket"]);
    assert_eq!(seen.get("sec-websocket-key"), Some(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_101_reaches_the_client_with_its_accept() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (_client, _back, head, _seen) = raw_tunnel(
        proxy.addr,
        &backend,
        &Req::upgrade("chat.example.com", "/ws"),
    )
    .await;
    assert_switched(&head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_are_negotiated_end_to_end_and_compressed_frames_pass_unchanged() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    let offer = "permessage-deflate; client_max_window_bits";
    client
        .send(
            Req::upgrade("chat.example.com", "/ws")
                .add("Sec-WebSocket-Extensions", offer)
                .bytes(),
        )
        .await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    assert_eq!(seen.get("sec-websocket-extensions"), Some(offer));
    back.send(switching(
        &seen,
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n",
    ))
    .await;
    let head = client.read_head().await;
    assert_switched(&head);
    assert_eq!(
        head.get("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover")
    );

    // RSV1-flagged ("compressed") frames are opaque to the proxy.
    let mut to_backend = frame(
        true,
        OP_TEXT,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        true,
    );
    to_backend[0] |= 0x40;
    client.send(&to_backend).await;
    assert_eq!(back.read_exact(to_backend.len()).await, to_backend);
    let mut to_client = frame(
        true,
        OP_TEXT,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        false,
    );
    to_client[0] |= 0x40;
    back.send(&to_client).await;
    assert_eq!(client.read_exact(to_client.len()).await, to_client);
}
