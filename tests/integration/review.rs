//! Regressions from the review of the exact head limit and Host checks: leading blank lines,
//! heads hyper would refuse on its own (too many fields, beyond its buffer, malformed), hosts
//! that are not plain names, absolute targets with default ports, and a client half-closing
//! right behind its request.

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
