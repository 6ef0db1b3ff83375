//! Clients that half-close, vanish or reset around the 101: a half-close right after the
//! request still gets its tunnel; a client gone keeps neither a tunnel nor its slot.

use crate::admin::{metrics, sample, scrape_until, ADMIN};
use crate::head::ws;
use crate::support::*;

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
