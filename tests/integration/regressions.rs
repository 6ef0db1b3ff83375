//! Regressions found by review: the version 426 without its Upgrade header, and hop-by-hop
//! headers a backend named in its 101's Connection reaching the client. (The PROXY protocol
//! and per-client limit ones live in proxy_protocol.rs.)

use crate::support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_does_not_pass_on_headers_the_backend_named_in_connection() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(Req::upgrade("localhost", "/ws").bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    let key = seen.get("sec-websocket-key").unwrap().to_string();
    back.send(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, X-Backend-Hop\r\nX-Backend-Hop: internal-secret\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    ))
    .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(
        !head.has("x-backend-hop"),
        "a header the backend marked hop-by-hop (named in its Connection) reached the client: {head:?}"
    );
}
