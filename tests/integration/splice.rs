//! The tunnel after a 101: bytes unchanged both ways, half-close, vanished peers, idle
//! timeout, and tunnels counted in the connection limit.

use std::time::Duration;

use crate::admin::{scrape_until, ADMIN};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn ws() -> Req {
    Req::upgrade("chat.example.com", "/ws")
}

/// A conversation of frames of every kind: fragmented text with a ping in the middle, a
/// binary message needing a 64-bit length, a pong, and a close with a code.
fn conversation(masked: bool) -> Vec<u8> {
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    [
        frame(false, OP_TEXT, b"hel", masked),
        frame(true, OP_PING, b"mid-message ping", masked),
        frame(false, OP_CONT, b"lo, ", masked),
        frame(true, OP_CONT, "wörld".as_bytes(), masked),
        frame(true, OP_BINARY, &big, masked),
        frame(true, OP_BINARY, &[], masked),
        frame(true, OP_PONG, b"unsolicited", masked),
        frame(true, OP_CLOSE, &close_payload(4321, "done"), masked),
    ]
    .concat()
}

/// Writes `bytes` in uneven pieces, so frame and record boundaries do not line up.
async fn send_in_pieces<S>(conn: &mut RawConn<S>, bytes: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut rest = bytes;
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        conn.send(&rest[..n]).await;
        rest = &rest[n..];
        size = size * 3 + 1;
    }
}

/// Waits for `proxy`'s tunnel to be released, and counted as closed for `reason` (on a config
/// with the admin endpoint, route `chat`).
async fn released_as(proxy: &Proxy, reason: &str) {
    until("the tunnel to be released", || {
        proxy.server.active_connections() == 0
    })
    .await;
    let closed = format!("wsgate_tunnels_closed_total{{route=\"chat\",reason=\"{reason}\"}}");
    scrape_until(proxy.server.admin_addr().unwrap(), &closed, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_byte_for_byte_from_client_to_backend() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let bytes = conversation(true);
    send_in_pieces(&mut client, &bytes).await;
    assert!(
        back.read_exact(bytes.len()).await == bytes,
        "bytes changed on the way"
    );
}

/// TLS records of at most 32 bytes (the smallest fragment rustls will write): the proxy
/// gathers them into fewer, larger writes to the backend, across many of its buffers, and
/// not a byte may move, go missing or wait for more to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_tiny_tls_records_pass_byte_for_byte_and_without_waiting_for_more() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut config = (*pki().client_config()).clone();
    config.max_fragment_size = Some(32);
    let tls = tls_connect_with(proxy.addr, "localhost", std::sync::Arc::new(config)).await;
    let mut client = RawConn::new(tls);
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(client.read_head().await.status, 101);

    let bytes = conversation(true);
    client.send(&bytes).await;
    assert!(
        back.read_exact(bytes.len()).await == bytes,
        "bytes changed on the way"
    );
    // A last few bytes alone: written on as soon as they are in, not held for company.
    client.send(b"tail").await;
    assert_eq!(back.read_exact(4).await, b"tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_byte_for_byte_from_backend_to_client() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let bytes = conversation(false);
    send_in_pieces(&mut back, &bytes).await;
    assert!(
        client.read_exact(bytes.len()).await == bytes,
        "bytes changed on the way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_right_behind_the_backends_101_reach_the_client() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    let first = frame(true, OP_TEXT, b"welcome", false);
    // One write: the 101 and the first frame share a segment.
    let mut answer = switching(&seen, "").into_bytes();
    answer.extend_from_slice(&first);
    back.send(&answer).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(client.read_exact(first.len()).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_right_behind_the_clients_request_reach_the_backend_after_its_101() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    let first = frame(true, OP_TEXT, b"eager", true);
    let mut bytes = ws().bytes();
    bytes.extend_from_slice(&first);
    client.send(&bytes).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(back.read_exact(first.len()).await, first);
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_reaches_a_real_peer() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    for (data, opcode, fin) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted", OpCode::Data(Data::Continue), true),
    ] {
        within(
            "send",
            ws.send(Message::Frame(Frame::message(data, opcode, fin))),
        )
        .await
        .unwrap();
    }
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_pongs_pass_both_ways() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;

    // Client ping → backend; the backend's pong → client.
    within("send", ws.send(Message::Ping("from-client".into())))
        .await
        .unwrap();
    assert_eq!(
        backend.next_message().await,
        Message::Ping("from-client".into())
    );
    let pong = within("a pong", async {
        loop {
            match ws.next().await.expect("stream ended").expect("ws error") {
                Message::Pong(p) => return p,
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"from-client");

    // Backend ping → client; the client's pong → backend.
    within("send", ws.send(Message::text("ping from-backend")))
        .await
        .unwrap();
    let ping = match within("a ping", ws.next())
        .await
        .expect("stream ended")
        .expect("ws error")
    {
        Message::Ping(p) => p,
        other => panic!("expected a ping, got {other:?}"),
    };
    assert_eq!(&ping[..], b"from-backend");
    // tungstenite queues the pong; a flush sends it.
    within("flush", ws.flush()).await.unwrap();
    assert_eq!(
        backend.next_message().await,
        Message::text("ping from-backend")
    );
    assert_eq!(
        backend.next_message().await,
        Message::Pong("from-backend".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_code_from_the_client_reaches_the_backend() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    let close = CloseFrame {
        code: CloseCode::from(4001),
        reason: "client-bye".into(),
    };
    within("close", ws.close(Some(close.clone())))
        .await
        .unwrap();
    assert_eq!(
        backend.next_message().await,
        Message::Close(Some(close.clone()))
    );
    // The backend's echoed close comes back.
    assert_eq!(next_message(&mut ws).await, Message::Close(Some(close)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_code_from_the_backend_reaches_the_client() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    within("send", ws.send(Message::text("close 4002 server-bye")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(4002),
            reason: "server-bye".into(),
        }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_message_passes_both_ways() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    let payload: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let message = Message::binary(payload);
    // The echo backend reads the whole message before echoing it, so sending first is safe.
    within("send 16 MiB", ws.send(message.clone()))
        .await
        .unwrap();
    let back = next_message(&mut ws).await;
    assert!(back == message, "the 16 MiB message came back changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_close_is_passed_on_and_the_backend_can_still_answer() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let last = frame(true, OP_TEXT, b"last words", true);
    client.send(&last).await;
    client.shutdown_write().await;
    assert_eq!(
        back.read_to_end().await,
        last,
        "backend should see the bytes, then EOF"
    );
    let reply = frame(true, OP_TEXT, b"still here", false);
    back.send(&reply).await;
    assert_eq!(client.read_exact(reply.len()).await, reply);
    back.shutdown_write().await;
    client.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_half_close_is_passed_on_and_the_client_can_still_send() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let last = frame(true, OP_TEXT, b"server done", false);
    back.send(&last).await;
    back.shutdown_write().await;
    assert_eq!(
        client.read_to_end().await,
        last,
        "client should see the bytes, then EOF"
    );
    let more = frame(true, OP_TEXT, b"client not done", true);
    client.send(&more).await;
    assert_eq!(back.read_exact(more.len()).await, more);
    client.shutdown_write().await;
    back.expect_closed().await;
}

/// A backend that half-closed and then went (its socket closed: the reset answers what the
/// client sends it next) ends the tunnel soon, though the client sends nothing more: not after
/// the half-closed wait (30 s, beyond the test's patience).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_gone_after_its_half_close_ends_the_tunnel() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[backend.addr]))).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    back.shutdown_write().await;
    client.expect_closed().await;
    drop(back);
    client
        .send(&frame(true, OP_TEXT, b"anyone there?", true))
        .await;
    // Its reset came after its FIN: it had closed cleanly.
    released_as(&proxy, "backend_closed").await;
}

/// The same the other way: a client that half-closed and then went, and the backend's answer
/// meets its reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_its_half_close_ends_the_tunnel() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[backend.addr]))).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    client.shutdown_write().await;
    back.expect_closed().await;
    drop(client);
    back.send(&frame(true, OP_TEXT, b"too late", false)).await;
    released_as(&proxy, "client_closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_backend_closes_the_client() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    back.send(b"last words").await;
    assert_eq!(client.read_exact(10).await, b"last words");
    // Vanish: a reset, not a (half-)close.
    back.stream.set_zero_linger().unwrap();
    drop(back);
    // The client is told the stream was cut, not that it ended: no TLS close_notify.
    let end = within("the client's connection to end", async {
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client.stream, &mut rest)
            .await
            .map(|_| rest)
    })
    .await;
    match end {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(rest) => panic!("a close_notify after {} more bytes", rest.len()),
    }
    until("the tunnel to be released", || {
        proxy.server.active_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_closes_the_backend() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    // Vanish: a reset without a TLS close_notify.
    client.stream.get_ref().0.set_zero_linger().unwrap();
    drop(client);
    back.read_to_end().await;
    until("the tunnel to be released", || {
        proxy.server.active_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_on_both_sides() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nidle = \"300ms\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    // Before the tunnel opens: its idle clock starts after this, so a late start here
    // cannot make the timeout look early.
    let started = std::time::Instant::now();
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    client.read_to_end().await;
    back.read_to_end().await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    released_as(&proxy, "idle_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_idle_timeout_overrides_the_global_one() {
    let backend = RawBackend::start().await;
    // Globally an hour, far past the test's time limit: only the route's 300 ms can close it.
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nidle = \"1h\"\n\n[[route]]\nname = \"quick\"\npath = \"/ws\"\nidle = \"300ms\"\nbackends = [\"{}\"]\n",
        backend.addr
    ))
    .await;
    // Before the tunnel opens: its idle clock starts after this, so a late start here
    // cannot make the timeout look early.
    let started = std::time::Instant::now();
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    client.read_to_end().await;
    back.read_to_end().await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the route's idle timeout: {:?}",
        started.elapsed()
    );
    let closed = r#"wsgate_tunnels_closed_total{route="quick",reason="idle_timeout"}"#;
    scrape_until(proxy.server.admin_addr().unwrap(), closed, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tunnel_outlives_the_idle_timeout() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nidle = \"2s\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    // Traffic every 200 ms for about 3 s, past the idle timeout: pacing, not synchronisation
    // (a 1.8 s stall of the test between two messages is what it takes to fail it).
    for i in 0..15 {
        let text = format!("tick {i}");
        assert_eq!(round_trip(&mut ws, &text).await, text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client reading steadily but slower than the backend sends keeps the proxy's writes
/// waiting most of the time; the bytes it takes are traffic all the same, so the tunnel is not
/// idle. (Without `TCP_NOTSENT_LOWAT` the kernel woke the proxy's write only once a third of
/// its send buffer, some megabytes, had drained: far longer than the idle timeout at this
/// pace, and the tunnel was cut with most of the data undelivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_still_reading_outlives_the_idle_timeout() {
    const PIECE: usize = 16 << 10;
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nidle = \"1s\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    // Far more than the kernels buffer on the way: the proxy is held up for the whole test.
    // Made before the tunnel opens, so the backend starts sending at once.
    let data = (0..241u8).collect::<Vec<u8>>().repeat((16 << 20) / 241);
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let sender = tokio::spawn(async move {
        let _ = back.try_send(&data).await;
    });
    // About 650 KB/s for four idle timeouts: pacing, not synchronisation. (Slower, the
    // client's own kernel would hold back its window for longer than the timeout while the
    // client reads what it already has: nothing would move on the proxy's side.)
    let mut got = Vec::new();
    for _ in 0..160 {
        got.extend(client.read_exact(PIECE).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        proxy.server.active_connections(),
        1,
        "the tunnel was cut while its client was still reading"
    );
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 241) as u8),
        "the slow reader's bytes came through changed"
    );
    sender.abort();
}

/// A client that takes nothing any more is idle however much waits for it: the tunnel ends at
/// the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stopped_reading_is_idle() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nidle = \"500ms\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let (_client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let sender = tokio::spawn(async move {
        let data = vec![7u8; 64 << 20];
        let _ = back.try_send(&data).await;
    });
    released_as(&proxy, "idle_timeout").await;
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_in_the_connection_limit_for_their_whole_life() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "[limits]\nmax_connections = 2\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let mut first = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    let mut second = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut first, "1").await, "1");
    assert_eq!(round_trip(&mut second, "2").await, "2");
    assert_eq!(proxy.server.active_connections(), 2);

    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 503, "{head:?}");
    assert!(head.has("retry-after"), "503 without Retry-After: {head:?}");
    until("the refused connection to be released", || {
        proxy.server.active_connections() == 2
    })
    .await;

    // Closing one tunnel frees its place.
    within("close", first.close(None)).await.unwrap();
    drop(first);
    until("the closed tunnel to be released", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let mut third = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut third, "3").await, "3");
    assert_eq!(round_trip(&mut second, "2 again").await, "2 again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_own_limit_gets_429_while_tunnels_hold_their_places() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "[limits]\nmax_connections_per_client = 2\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let mut first = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    let mut second = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut first, "1").await, "1");

    let (head, body) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 429, "{head:?}");
    assert_eq!(head.get("retry-after"), Some("1"));
    assert_eq!(body, b"too many connections from your address\n");

    // The refused connection took no place, and a closed tunnel gives its place back.
    within("close", first.close(None)).await.unwrap();
    drop(first);
    until("the closed tunnel to be released", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let mut third = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut third, "3").await, "3");
    assert_eq!(round_trip(&mut second, "2").await, "2");
}

/// A per-client limit switched on by a reload holds the tunnels opened before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_client_limit_set_by_a_reload_counts_the_tunnels_already_open() {
    let backend = WsBackend::start("echo").await;
    let chat = route("chat", "/ws", &[backend.addr]);
    let proxy = start_proxy(&chat).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await);
    }
    let mut rx = proxy.server.reload_status();
    write_body(
        &proxy.config_path(),
        &format!("[limits]\nmax_connections_per_client = 2\n\n{chat}"),
    );
    generation(&mut rx, 2).await;
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 429, "{head:?}");
    for (n, ws) in open.iter_mut().enumerate() {
        assert_eq!(round_trip(ws, &n.to_string()).await, n.to_string());
    }
}

/// Whether the proxy's socket connected to `backend` (the backend's end of it) can take no
/// more bytes: a poll for writing, without waiting, on the proxy's own socket, found among
/// this process's descriptors (the proxy runs in it) by its two addresses. Linux only, as
/// the proxy's stuck-reader probe is.
fn proxy_cannot_write_to(backend: &tokio::net::TcpStream) -> bool {
    use std::os::fd::{BorrowedFd, RawFd};
    let (ours, theirs) = (backend.peer_addr().unwrap(), backend.local_addr().unwrap());
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
    let fds = fds.filter_map(|fd| fd.file_name().to_str()?.parse::<RawFd>().ok());
    for fd in fds {
        // SAFETY: borrowed only for two address queries and a zero-timeout poll, none of
        // which changes the descriptor; one closed meanwhile fails them (or, reused, is some
        // other socket, whose addresses do not match).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let addr = |a: std::io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
        if addr(sock.local_addr()) != Some(ours) || addr(sock.peer_addr()) != Some(theirs) {
            continue;
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid `pollfd`, and a timeout of 0: it returns at once.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
        return poll.revents & libc::POLLOUT == 0;
    }
    panic!("no socket of the proxy's from {ours} to {theirs} in this process");
}

/// Sends far more than every buffer on the way holds, so the writes block once they are full.
fn flood<S>(mut conn: RawConn<S>) -> tokio::task::JoinHandle<RawConn<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            if conn.try_send(&chunk).await.is_err() {
                break;
            }
        }
        conn
    })
}

/// A client that resets while its backend has stopped reading (so the proxy, holding the
/// client's bytes back, is not reading from it) is noticed by the stuck tunnel's probe (the
/// kernel's error for the socket, through TLS), not at the idle timeout (an hour here, past
/// the test's time limit), and its tunnel is counted as the client's error. (The probe's
/// timing, and a half-close or a write taking the reset first, are unit-tested in
/// src/splice/mod.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_behind_a_backend_that_stopped_reading_is_noticed() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nidle = \"1h\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let (client, back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    client.stream.get_ref().0.set_zero_linger().unwrap();
    let client_flood = flood(client);
    // The reset comes once the proxy's socket to the backend takes no more: with a backend
    // that never reads, that is for good, and the proxy holds the client's bytes back from
    // its next write on (its reader, the client, no longer read: the stuck case).
    until("the proxy's writes to the backend to be held up", || {
        proxy_cannot_write_to(&back.stream)
    })
    .await;
    client_flood.abort();
    let _ = client_flood.await;
    released_as(&proxy, "client_error").await;
}

/// A client whose TLS fails inside the tunnel (a record that does not decrypt, a
/// renegotiation attempt) is logged in TLS's words, not only as "invalid data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tls_failure_in_the_tunnel_is_logged_in_tls_words() {
    use tokio::io::AsyncWriteExt;
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[backend.addr]));
    let (_child, lines, addr) = started_wsgate(&config);
    let (mut client, _back, _, _) = raw_tunnel(addr, &backend, &ws()).await;
    // An application-data record of 32 bytes that no key decrypts, under the TLS layer.
    let tcp = client.stream.get_mut().0;
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend([0x5a; 32]);
    tcp.write_all(&record).await.unwrap();
    let line = tokio::task::block_in_place(|| wait_for_line(&lines, "tunnel closed"));
    assert!(line.contains("client error: invalid data ("), "{line}");
    assert!(line.to_lowercase().contains("decrypt"), "{line}");
}

/// A client's last frame right in front of a record that does not decrypt, read by the proxy
/// in one go, still reaches the backend before the tunnel ends as the client's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_frame_right_before_a_broken_record_reaches_the_backend() {
    use std::io::Write;
    use tokio::io::AsyncWriteExt;
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[backend.addr]))).await;
    let (mut client, mut back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let last = frame(true, OP_CLOSE, &close_payload(1000, "bye"), true);
    // The frame's record, then 32 bytes no key decrypts, in one write.
    let (tcp, tls) = client.stream.get_mut();
    tls.writer().write_all(&last).unwrap();
    let mut flight = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut flight).unwrap();
    }
    flight.extend([0x17, 0x03, 0x03, 0x00, 0x20]);
    flight.extend([0x5a; 32]);
    tcp.write_all(&flight).await.unwrap();
    assert_eq!(back.read_exact(last.len()).await, last);
    back.expect_closed().await;
    let closed = r#"wsgate_tunnels_closed_total{route="chat",reason="client_error"}"#;
    scrape_until(proxy.server.admin_addr().unwrap(), closed, 1.0).await;
}

/// A backend that aborts while the client uploads to it faster than it reads: the proxy's
/// write meets the reset first, after which the backend's stream reads as ended. The client
/// must still be told its stream was cut (a FIN without TLS close_notify), not that the
/// backend closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_aborting_under_an_upload_cuts_the_client_without_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[backend.addr]))).await;
    let (client, back, _, _) = raw_tunnel(proxy.addr, &backend, &ws()).await;
    let (mut from_proxy, mut to_proxy) = tokio::io::split(client.stream);
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 16];
        while to_proxy.write_all(&chunk).await.is_ok() {}
    });
    until("the proxy's writes to the backend to be held up", || {
        proxy_cannot_write_to(&back.stream)
    })
    .await;
    back.stream.set_zero_linger().unwrap();
    drop(back);
    let end = within("the client's connection to end", async {
        let mut rest = Vec::new();
        from_proxy.read_to_end(&mut rest).await.map(|_| rest)
    })
    .await;
    upload.abort();
    match end {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(rest) => panic!("a close_notify after {} more bytes", rest.len()),
    }
    let closed = r#"wsgate_tunnels_closed_total{route="chat",reason="backend_error"}"#;
    scrape_until(proxy.server.admin_addr().unwrap(), closed, 1.0).await;
}
