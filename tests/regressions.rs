//! Regressions found by review: a PROXY v1 line split inside its fields, a 503 that took a
//! per-client place, and the version 426 without its Upgrade header.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;

const PP_HEAD: &str = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nproxy_protocol = true\n\n[tls]\ncertificates = [ { cert = \"server.crt\", key = \"server.key\" } ]\n\n";

/// A proxy with `proxy_protocol = true` and `body` (limits, routes...).
async fn proxy_with_header(body: &str) -> (tempfile::TempDir, wsgate::Server, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    std::fs::write(&path, format!("{PP_HEAD}{body}")).unwrap();
    let server = wsgate::Server::start(&path).await.unwrap();
    let addr = server.local_addrs()[0];
    (dir, server, addr)
}

/// Upgrades through the proxy after sending `prefix`; returns both sides of the tunnel.
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
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    (client, back, seen)
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

/// A v1 header whose first TCP segment ends right after the source port's trailing space
/// ("... 51000 ") is a perfectly valid partial header, but ppp reports the empty destination
/// port as *invalid* (not incomplete), so wsgate refuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_header_split_before_the_destination_port_is_accepted() {
    let backend = RawBackend::start().await;
    let (_dir, _server, addr) = proxy_with_header(&route("chat", "/ws", &[backend.addr])).await;

    let connector = tokio_rustls::TlsConnector::from(pki().client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
    let tls = within("the split header and TLS", async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 ")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        tcp.write_all(b"443\r\n")
            .await
            .expect("the proxy refused a valid v1 header sent in two segments");
        connector.connect(name, tcp).await
    })
    .await
    .expect("TLS after a v1 header sent in two segments");
    let mut client = RawConn::new(tls);
    client.send(Req::upgrade("localhost", "/ws").bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    assert_eq!(seen.list("x-forwarded-for"), ["203.0.113.7"]);
}

// ---------------------------------------------------------------------------------------------
// Per-client limit
// ---------------------------------------------------------------------------------------------

/// A connection refused with 503 (over `max_connections`) still takes a place in its client's
/// `max_connections_per_client`, so the same client's next connection, after capacity is
/// free again, gets 429 although that client has no connection that counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_for_global_capacity_takes_no_per_client_place() {
    let backend = RawBackend::start().await;
    let (_dir, server, addr) = proxy_with_header(&format!(
        "[limits]\nmax_connections = 1\nmax_connections_per_client = 1\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    const X: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\r\n";
    const Y: &[u8] = b"PROXY TCP4 203.0.113.8 10.0.0.1 1 443\r\n";

    // X holds the only place.
    let tunnel_x = upgrade_after(addr, &backend, X).await;
    // Y connects while the server is full: this connection will be refused with 503.
    let refused_y = RawConn::new(tls_connect_after(addr, "localhost", Y).await);
    // Let the server finish its side of the handshake and reach the limits.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // X leaves: capacity is free again.
    drop(tunnel_x);
    until("X's tunnel to be released", || {
        server.active_connections() == 0
    })
    .await;

    // Y's first real connection: Y has nothing open that counts.
    let mut client = RawConn::new(tls_connect_after(addr, "localhost", Y).await);
    client.send(Req::upgrade("localhost", "/ws").bytes()).await;
    let status = within("an answer", async {
        tokio::select! {
            head = client.read_head() => head.status,
            mut back = backend.accept() => {
                let seen = back.read_head().await;
                back.send(switching(&seen, "")).await;
                client.read_head().await.status
            }
        }
    })
    .await;
    assert_eq!(
        status, 101,
        "the 503-refused connection took Y's per-client place"
    );
    drop(refused_y);
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
