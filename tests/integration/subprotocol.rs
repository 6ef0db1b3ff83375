//! Sec-WebSocket-Protocol: filtered by the route's allow-list, in the client's order.

use crate::support::*;

fn allow_list_route(backend: std::net::SocketAddr) -> String {
    format!(
        "[[route]]\nname = \"chat\"\npath = \"/ws\"\nsubprotocols = [\"chat.v2\", \"chat.v1\"]\nbackends = [\"{backend}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_offers_are_forwarded_in_client_order() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&allow_list_route(backend.addr)).await;
    let (mut ws, resp) = ws_connect(
        proxy.addr,
        "wss://chat.example.com/ws",
        &[("Sec-WebSocket-Protocol", "chat.v1, chat.v3, chat.v2")],
    )
    .await
    .expect("upgrade");
    let seen = backend.next_request().await;
    assert_eq!(seen.list("sec-websocket-protocol"), ["chat.v1", "chat.v2"]);
    // The echo backend picks the first offer; the client sees that choice.
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat.v1")
    );
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_across_several_header_lines_are_all_considered() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&allow_list_route(backend.addr)).await;
    let req = Req::upgrade("chat.example.com", "/ws")
        .add("Sec-WebSocket-Protocol", "chat.v3")
        .add("Sec-WebSocket-Protocol", "chat.v2, chat.v9");
    let mut client = raw_client(proxy.addr).await;
    client.send(req.bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    assert_eq!(seen.list("sec-websocket-protocol"), ["chat.v2"]);
    back.send(switching(&seen, "Sec-WebSocket-Protocol: chat.v2\r\n"))
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.get("sec-websocket-protocol"), Some("chat.v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allowed_offer_is_400() {
    use crate::admin::{scrape_until, ADMIN};
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", allow_list_route(backend.addr))).await;
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", "/ws")
            .add("Sec-WebSocket-Protocol", "chat.v3, graphql-ws")
            .bytes(),
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
    // Counted (and logged) against the route that refused, not as routeless.
    let admin = proxy.server.admin_addr().unwrap();
    scrape_until(
        admin,
        r#"wsgate_requests_total{route="chat",status="400"}"#,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_offer_on_a_route_with_an_allow_list_is_400() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&allow_list_route(backend.addr)).await;
    let (head, _) = request(proxy.addr, Req::upgrade("chat.example.com", "/ws").bytes()).await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_the_offer_is_forwarded_unchanged() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (_ws, resp) = ws_connect(
        proxy.addr,
        "wss://chat.example.com/ws",
        &[("Sec-WebSocket-Protocol", "x.b, x.a")],
    )
    .await
    .expect("upgrade");
    let seen = backend.next_request().await;
    assert_eq!(seen.list("sec-websocket-protocol"), ["x.b", "x.a"]);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("x.b")
    );
}

/// Forwarded as offered only when it is what browsers can send: a list of distinct tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_that_is_no_list_of_distinct_tokens_is_400() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    for offer in ["a b", "a;q=1", "\"a\"", "chat, chat"] {
        let req = Req::upgrade("chat.example.com", "/ws").add("Sec-WebSocket-Protocol", offer);
        let (head, body) = request(proxy.addr, req.bytes()).await;
        assert_eq!(head.status, 400, "{offer}: {head:?}");
        assert_eq!(body, b"invalid Sec-WebSocket-Protocol\n", "{offer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_offer_no_protocol_header_is_invented() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (_ws, resp) = ws_connect(proxy.addr, "wss://chat.example.com/ws", &[])
        .await
        .expect("upgrade");
    let seen = backend.next_request().await;
    assert!(seen.get("sec-websocket-protocol").is_none(), "{seen:?}");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_may_choose_no_protocol() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&allow_list_route(backend.addr)).await;
    let req = Req::upgrade("chat.example.com", "/ws").add("Sec-WebSocket-Protocol", "chat.v2");
    let (_client, _back, head, _seen) = raw_tunnel(proxy.addr, &backend, &req).await;
    assert!(!head.has("sec-websocket-protocol"), "{head:?}");
}
