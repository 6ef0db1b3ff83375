//! What the proxy does with backends that fail, refuse or answer wrongly.

use std::net::SocketAddr;

use crate::admin::{scrape_until, ADMIN};
use crate::support::*;

fn ws() -> Req {
    Req::upgrade("chat.example.com", "/ws")
}

fn assert_no_address(body: &[u8], addrs: &[SocketAddr]) {
    let text = String::from_utf8_lossy(body);
    assert!(body.len() < 512, "error body is {} bytes", body.len());
    for addr in addrs {
        assert!(
            !text.contains(&addr.to_string()),
            "body names {addr}: {text:?}"
        );
        assert!(
            !text.contains(&addr.port().to_string()),
            "body names port {}: {text:?}",
            addr.port()
        );
    }
    assert!(
        !text.contains("127.0.0.1"),
        "body names an address: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_refusing_is_502_without_addresses() {
    let a = closed_port().await;
    let b = closed_port().await;
    let proxy = start_proxy(&route("chat", "/ws", &[a, b])).await;
    let (head, body) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 502, "{head:?}");
    assert_no_address(&body, &[a, b]);
}

/// A route's only backend is dialed again at once after a refusal (another pod may be
/// behind its address), three times in all: each refused connect is counted, not only the
/// last, which is the one the request's 502 is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_connect_to_a_routes_only_backend_is_counted() {
    let refusing = closed_port().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[refusing]))).await;
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 502, "{head:?}");
    let failed = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{refusing}",error="refused"}}"#
    );
    scrape_until(proxy.server.admin_addr().unwrap(), &failed, 3.0).await;
}

/// A backend that fails is put aside for longer than any test runs: which backend takes each
/// request does not depend on how fast the test runs.
const SET_ASIDE_LONG: &str = "[timeouts]\nbackend_cooldown = \"1h\"\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_put_aside_and_the_others_share_its_load() {
    // [refusing, a, b]: the first request finds the refusing one and goes on to `a`; from
    // then on `a` and `b` take turns, the refusing one is not dialed again, and its share
    // does not pile onto `a`, the one after it.
    let refusing = closed_port().await;
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let body = route("chat", "/ws", &[refusing, a.addr, b.addr]);
    let proxy = start_proxy(&format!("{SET_ASIDE_LONG}{ADMIN}{body}")).await;
    for expected in [&a, &b, &a, &b, &a, &b] {
        let _tunnel = raw_tunnel(proxy.addr, expected, &ws()).await;
    }
    let admin = proxy.server.admin_addr().unwrap();
    let failed = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{refusing}",error="refused"}}"#
    );
    scrape_until(admin, &failed, 1.0).await;
    let aside = format!(r#"wsgate_backend_put_aside_total{{route="chat",backend="{refusing}"}}"#);
    scrape_until(admin, &aside, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_gets_the_next_dialed_beside_it_and_is_put_aside() {
    // [silent, a, b] with an hour to connect: the first request waits on the silent backend
    // (its SYNs unanswered) only for `timeouts.attempt_delay` before `a` is dialed beside it,
    // not for its 20-minute share; `a` answers, the silent one is put aside, and the next
    // requests go to `b` and `a` in turn without waiting on it again.
    let silent = Unreachable::start();
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let body = route("chat", "/ws", &[silent.addr, a.addr, b.addr]);
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"1h\"\nbackend_cooldown = \"1h\"\n\n{ADMIN}{body}"
    ))
    .await;
    for expected in [&a, &b, &a, &b] {
        let _tunnel = raw_tunnel(proxy.addr, expected, &ws()).await;
    }
    let admin = proxy.server.admin_addr().unwrap();
    let aside = format!(
        r#"wsgate_backend_put_aside_total{{route="chat",backend="{}"}}"#,
        silent.addr
    );
    scrape_until(admin, &aside, 1.0).await;
    let failed = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{}",error="timeout"}}"#,
        silent.addr
    );
    scrape_until(admin, &failed, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_attempt_delay_backends_are_dialed_one_at_a_time() {
    // `attempt_delay = "0s"`: the silent backend keeps its whole share (the connect timeout
    // split between the two), and only then is `good` dialed; it still serves the upgrade.
    let silent = Unreachable::start();
    let good = RawBackend::start().await;
    let body = route("chat", "/ws", &[silent.addr, good.addr]);
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"4s\"\nattempt_delay = \"0s\"\n\n{body}"
    ))
    .await;
    let mut client = raw_client(proxy.addr).await;
    // Before the request goes: the proxy's connect clock starts after this.
    let asked = std::time::Instant::now();
    client.send(ws().bytes()).await;
    let mut back = good.accept().await;
    let waited = asked.elapsed();
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(client.read_head().await.status, 101);
    // Not a timing: the order of events. `good` is dialed only once the silent backend's
    // half of the 4 s has run out (and `good` has the other half to answer in).
    assert!(
        waited >= std::time::Duration::from_millis(1900),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_cooldown_a_failed_backend_is_tried_by_one_request_at_a_time() {
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let body = route("chat", "/ws", &[a.addr, b.addr]);
    let proxy = start_proxy(&format!(
        "[timeouts]\nbackend_cooldown = \"50ms\"\n\n{body}"
    ))
    .await;
    // Turn 0: `a` closes before answering (put aside for 50 ms), `b` answers.
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut failing = a.accept().await;
    failing.read_head().await;
    drop(failing);
    let mut back = b.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(client.read_head().await.status, 101);
    // The cool-down's own time: no event says it is over.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let _turn_1 = raw_tunnel(proxy.addr, &b, &ws()).await;
    // Turn 2, `a`'s: this request tries it again, and its answer is held back.
    let mut probing = raw_client(proxy.addr).await;
    probing.send(ws().bytes()).await;
    let mut probe = a.accept().await;
    let seen = probe.read_head().await;
    let _turn_3 = raw_tunnel(proxy.addr, &b, &ws()).await;
    // Turn 4, `a`'s again, while the probe waits: `b` takes it.
    let _turn_4 = raw_tunnel(proxy.addr, &b, &ws()).await;
    probe.send(switching(&seen, "")).await;
    assert_eq!(probing.read_head().await.status, 101);
    // `a` answered: back in turn for every request.
    let _turn_5 = raw_tunnel(proxy.addr, &b, &ws()).await;
    let _turn_6 = raw_tunnel(proxy.addr, &a, &ws()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_backends_are_all_put_aside_still_tries_them() {
    // Putting aside never refuses a request by itself: with every backend aside, each is
    // tried in turn, and one that answers again is back.
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let body = route("chat", "/ws", &[a.addr, b.addr]);
    let proxy = start_proxy(&format!("{SET_ASIDE_LONG}{body}")).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    for backend in [&a, &b] {
        let mut conn = backend.accept().await;
        conn.read_head().await;
        drop(conn);
    }
    assert_eq!(client.read_head().await.status, 502);
    // Both aside now; the next request still reaches one of them, which answers.
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = b.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    assert_eq!(client.read_head().await.status, 101);
    // `b` is back in turn, `a` still aside: the next requests go to `b`.
    let _next = raw_tunnel(proxy.addr, &b, &ws()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_before_answering_is_skipped_for_the_next_one() {
    // A backend killed mid-deploy: it took the connection and the request, then reset (or
    // closed) without a word. Nothing reached the client yet: the next backend answers.
    for reset in [true, false] {
        let (a, b) = (RawBackend::start().await, RawBackend::start().await);
        let body = route("chat", "/ws", &[a.addr, b.addr]);
        let proxy = start_proxy(&format!("{SET_ASIDE_LONG}{body}")).await;
        let mut client = raw_client(proxy.addr).await;
        client.send(ws().bytes()).await;
        let mut first = a.accept().await;
        first.read_head().await;
        if reset {
            first.stream.set_zero_linger().unwrap();
        }
        drop(first);
        let mut second = b.accept().await;
        let seen = second.read_head().await;
        second.send(switching(&seen, "")).await;
        let head = client.read_head().await;
        assert_eq!(head.status, 101, "reset: {reset}: {head:?}");
        // The tunnel is the second backend's.
        client.send(b"ping").await;
        assert_eq!(second.read_exact(4).await, b"ping");
        // `a` is put aside for a while: the next requests, `a`'s turn included, go to `b`.
        let _turn_of_b = raw_tunnel(proxy.addr, &b, &ws()).await;
        let _turn_of_a = raw_tunnel(proxy.addr, &b, &ws()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_began_its_answer_is_not_tried_again_elsewhere() {
    // Half a 101, then gone: it read the request and ran its upgrade handler, so the request
    // is not repeated on the next backend (which would take it and never answer: a 504).
    let (a, b) = (RawBackend::start().await, RawBackend::start().await);
    let proxy = start_proxy(&route("chat", "/ws", &[a.addr, b.addr])).await;
    for answer in ["HTTP/1.1 101 Switch", "HTTP/1.1 100 Continue\r\n\r\n"] {
        let mut client = raw_client(proxy.addr).await;
        client.send(ws().bytes()).await;
        let mut first = a.accept().await;
        first.read_head().await;
        first.send(answer).await;
        drop(first);
        let head = client.read_head().await;
        assert_eq!(head.status, 502, "{answer:?}: {head:?}");
        // Round-robin: the next request starts at `b`.
        let _turn_of_b = raw_tunnel(proxy.addr, &b, &ws()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_given_up_after_three_backends_closed_on_it() {
    // A failing deploy: every backend accepts and closes. Three tries, then 502; the fourth
    // backend never sees the request (had it, it would hold it unanswered: a 504).
    let backends = [
        RawBackend::start().await,
        RawBackend::start().await,
        RawBackend::start().await,
        RawBackend::start().await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let proxy = start_proxy(&route("chat", "/ws", &addrs)).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    for backend in &backends[..3] {
        let mut conn = backend.accept().await;
        conn.read_head().await;
        drop(conn);
    }
    let head = client.read_head().await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(
        backends[3].waiting().await.is_none(),
        "the fourth backend was dialed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_backend_dying_before_answering_is_502() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!("{ADMIN}{}", route("chat", "/ws", &[backend.addr]))).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    // Dialed again after each close (a cluster IP's next connection may reach another pod),
    // three times in all.
    backend.close_unanswered(3, true).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 502, "{head:?}");
    // Counted against the backend, as a failed connect is.
    let failed = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{}",error="closed"}}"#,
        backend.addr
    );
    scrape_until(proxy.server.admin_addr().unwrap(), &failed, 3.0).await;
}

/// A route's only backend at one address (a Kubernetes Service's cluster IP, whose pods are
/// behind it) that closes before answering is dialed again: the next connection may reach a
/// pod that is not shutting down, and the client gets its tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_backend_closing_before_answering_is_dialed_again() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    backend.close_unanswered(2, true).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    back.send(switching(&seen, "")).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    client.send("ping").await;
    assert_eq!(back.read_exact(4).await, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_before_its_answer_is_logged_in_the_os_words() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[backend.addr]));
    let (mut child, lines, addr) = started_wsgate(&config);
    let mut client = raw_client(addr).await;
    client.send(ws().bytes()).await;
    backend.close_unanswered(3, true).await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    // The cause, not hyper's "connection error" in front of it.
    assert!(
        line.contains("backend connection failed: Connection reset by peer"),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A 502's line says what went wrong with the backend: no connect (and why, in the OS's
/// words), no HTTP answer, or an answer cut short; not all of them "connection failed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_failure_is_logged_as_what_went_wrong() {
    let closed_port = closed_port().await;
    let garbage = RawBackend::start().await;
    let short = RawBackend::start().await;
    let silent = RawBackend::start().await;
    let routes = format!(
        "[timeouts]\nconnect = \"3s\"\n\n{}{}{}{}[[route]]\nname = \"nowhere\"\npath = \"/nowhere\"\nbackends = [\"backend.invalid:9001\"]\n",
        route("closed", "/closed", &[closed_port]),
        route("garbage", "/garbage", &[garbage.addr]),
        route("short", "/short", &[short.addr]),
        route("silent", "/silent", &[silent.addr]),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &routes);
    let (mut child, lines, addr) = started_wsgate(&config);
    let refused = |path: &str| {
        let path = path.to_string();
        async move {
            let mut client = raw_client(addr).await;
            client.send(Req::upgrade("localhost", &path).bytes()).await;
            client
        }
    };

    let mut client = refused("/closed").await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(
        line.contains("backend unavailable: Connection refused"),
        "{line}"
    );

    let mut client = refused("/nowhere").await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(
        line.contains("backend unavailable: cannot resolve the name"),
        "{line}"
    );

    let mut client = refused("/garbage").await;
    let mut back = garbage.accept().await;
    back.read_head().await;
    back.send("SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(line.contains("backend sent a malformed answer: "), "{line}");

    // An HTTP version no backend server speaks, whatever the status.
    let mut client = refused("/garbage").await;
    let mut back = garbage.accept().await;
    back.read_head().await;
    back.send("HTTP/1.2 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(line.contains("invalid HTTP version parsed"), "{line}");

    let mut client = refused("/short").await;
    let mut back = short.accept().await;
    back.read_head().await;
    back.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
        .await;
    drop(back);
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(
        line.contains("backend closed the connection before completing its answer"),
        "{line}"
    );

    let mut client = refused("/silent").await;
    silent.close_unanswered(3, false).await;
    assert_eq!(client.read_head().await.status, 502);
    let line = wait_for_line(&lines, "connection closed");
    assert!(
        line.contains("backend closed the connection without answering"),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_backend_is_502() {
    let proxy = start_proxy(
        "[timeouts]\nconnect = \"3s\"\n\n[[route]]\nname = \"chat\"\npath = \"/ws\"\nbackends = [\"backend.invalid:9001\"]\n",
    )
    .await;
    let (head, body) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(!String::from_utf8_lossy(&body).contains("backend.invalid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_504_after_the_connect_timeout() {
    let hole = BlackHole::start().await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"300ms\"\n\n{}",
        route("chat", "/ws", &[hole.addr])
    ))
    .await;
    let started = std::time::Instant::now();
    let (head, body) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 504, "{head:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_no_address(&body, &[hole.addr]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_drops_syns_does_not_eat_the_whole_connect_timeout() {
    // The first backend in turn never answers the TCP handshake; it gets its share of the
    // connect timeout, and the healthy one after it still serves the upgrade.
    let silent = Unreachable::start();
    let good = WsBackend::start("good").await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"2s\"\n\n{}",
        route("chat", "/ws", &[silent.addr, good.addr])
    ))
    .await;
    for turn in 0..2 {
        assert_eq!(
            which_backend(proxy.addr, "wss://localhost/ws").await,
            "good",
            "request {turn}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_that_drop_syns_or_refuse_are_504_within_the_connect_timeout() {
    let silent = Unreachable::start();
    let refused = closed_port().await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"400ms\"\n\n{}",
        route("chat", "/ws", &[silent.addr, refused])
    ))
    .await;
    for _ in 0..2 {
        let (head, body) = request(proxy.addr, ws().bytes()).await;
        assert_eq!(head.status, 504, "{head:?}");
        assert_no_address(&body, &[silent.addr, refused]);
    }
}

/// One at a time (`attempt_delay = "0s"`), [silent, silent, hung]: each silent backend takes
/// its even third of `connect`, and the hung one (it takes the connection and never answers)
/// has its even third to answer in, so it failed as surely as they did: put aside and counted
/// like them. The time the silent ones took before it is no excuse for it (it was, when only
/// the tries that reached a backend counted in the even share: 3 s, not 1 s, to blame). The
/// hung one is blamed for a wait of half its share or more: 0.5 s of slack for a stalled proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_tried_after_silent_ones_is_put_aside_like_them() {
    let (first, second) = (Unreachable::start(), Unreachable::start());
    let hung = BlackHole::start().await;
    let body = route("chat", "/ws", &[first.addr, second.addr, hung.addr]);
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"3s\"\nattempt_delay = \"0s\"\nbackend_cooldown = \"1h\"\n\n{ADMIN}{body}"
    ))
    .await;
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 504, "{head:?}");
    let admin = proxy.server.admin_addr().unwrap();
    for addr in [first.addr, second.addr, hung.addr] {
        let failed = format!(
            r#"wsgate_backend_connect_failures_total{{route="chat",backend="{addr}",error="timeout"}}"#
        );
        scrape_until(admin, &failed, 1.0).await;
        let aside = format!(r#"wsgate_backend_put_aside_total{{route="chat",backend="{addr}"}}"#);
        scrape_until(admin, &aside, 1.0).await;
    }
}

/// A 504's line names the backend that did not answer, not whichever was tried last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_is_logged_against_the_backend_that_timed_out() {
    let silent = Unreachable::start();
    let refused = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[timeouts]\nconnect = \"400ms\"\n\n{}",
        route("chat", "/ws", &[silent.addr, refused])
    );
    let (mut child, lines, addr) = started_wsgate(&write_config(dir.path(), &body));
    // Round-robin: one request tries the silent backend first, the next one second.
    for _ in 0..2 {
        let (head, _) = request(addr, ws().bytes()).await;
        assert_eq!(head.status, 504, "{head:?}");
    }
    let logged = within(
        "two 504 lines",
        tokio::task::spawn_blocking(move || {
            [0, 1].map(|_| wait_for_line(&lines, "\"status\":504"))
        }),
    )
    .await
    .unwrap();
    for line in logged {
        assert!(
            line.contains(&format!("\"backend\":\"{}\"", silent.addr)),
            "{line}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_sends_half_an_answer_is_504() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"300ms\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 504, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_101_answer_is_relayed_as_is_and_the_connection_ends() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"chat\"\r\n\
         X-Reason: token-expired\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nlog in first",
    )
    .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 401, "{head:?}");
    assert_eq!(head.get("www-authenticate"), Some("Bearer realm=\"chat\""));
    assert_eq!(head.get("x-reason"), Some("token-expired"));
    assert_eq!(client.read_body(&head).await, b"log in first");
    // Never spliced: the client connection ends (with a TLS close_notify, as any answer's
    // end), and so does the backend one.
    client.expect_close_notify().await;
    back.expect_closed().await;
}

/// A refusal body far larger than the 64 KiB it may run ahead of the client (with the head
/// limit, and so hyper's buffer, at 1 MiB): relayed whole, the pace set by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_refusal_body_is_relayed_whole_at_the_clients_pace() {
    let backend = RawBackend::start().await;
    let limits = "[limits]\nmax_request_header_bytes = 1048576\n\n";
    let proxy = start_proxy(&format!(
        "{limits}{}",
        route("chat", "/ws", &[backend.addr])
    ))
    .await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    let body: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = [head.as_bytes(), &body].concat();
    let reading = async {
        let head = client.read_head().await;
        assert_eq!(head.status, 403, "{head:?}");
        client.read_body(&head).await
    };
    let (_, got) = tokio::join!(back.send(answer), reading);
    assert!(
        got == body,
        "{} of {} bytes, or changed",
        got.len(),
        body.len()
    );
    client.expect_close_notify().await;
}

/// A refusal whose body never ends (or whose framing never yields a byte of it) is read to
/// 16 MiB, framing included, and its relay ends there: not at the connection's deadline,
/// a core parsing all along. The log says so, not that the backend broke it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_refusal_body_is_cut_after_16_mib() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[backend.addr]));
    for chunk in ["1000\r\n", "0000000000000000"] {
        let (_child, lines, addr) = started_wsgate(&config);
        let (mut client, mut back, _) = raw_request(addr, &backend, &ws()).await;
        back.send("HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        // 4 KiB chunks, or a chunk size of zeros never ended, until the proxy lets go.
        let piece = match chunk {
            "1000\r\n" => [chunk.as_bytes(), &[b'x'; 4096], b"\r\n"].concat(),
            _ => chunk.repeat(4096).into_bytes(),
        };
        // The head is passed on before the body is fed: with 16 MiB of framing already in
        // when it is read, the proxy would find the body broken from its start, and 502.
        let head = client.read_head().await;
        assert_eq!(head.status, 500, "{head:?}");
        let feeding = async { while back.try_send(&piece).await.is_ok() {} };
        let ((), got) = tokio::join!(feeding, async { client.read_to_end().await.len() });
        assert!(got < 17 << 20, "{got} bytes relayed");
        let line = line_containing(lines, "backend refused the upgrade").await;
        assert!(line.contains("answer ran past 16 MiB"), "{line}");
        assert!(line.contains("\"level\":\"WARN\""), "{line}");
    }
}

/// Interim answers that never end are read to 16 MiB too, then 502: the backend was up and
/// answering, badly, and its line says so rather than that its connection failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_interim_answers_are_a_malformed_answer() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[backend.addr]));
    let (_child, lines, addr) = started_wsgate(&config);
    let (mut client, mut back, _) = raw_request(addr, &backend, &ws()).await;
    let piece = "HTTP/1.1 100 Continue\r\n\r\n".repeat(256);
    let feeding = async { while back.try_send(&piece).await.is_ok() {} };
    let ((), head) = tokio::join!(feeding, client.read_head());
    assert_eq!(head.status, 502, "{head:?}");
    let line = line_containing(lines, "interim (1xx) answers").await;
    assert!(
        line.contains("backend sent a malformed answer: over 16 MiB of interim (1xx) answers"),
        "{line}"
    );
    assert!(line.contains("502"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answer_head_up_to_64_kib_is_relayed_and_a_larger_one_is_502() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    for (size, status) in [(60 * 1024, 403), (70 * 1024, 502)] {
        let mut client = raw_client(proxy.addr).await;
        client.send(ws().bytes()).await;
        let mut back = backend.accept().await;
        back.read_head().await;
        let big = "a".repeat(size);
        let answer = format!("HTTP/1.1 403 Forbidden\r\nX-Big: {big}\r\nContent-Length: 0\r\n\r\n");
        let _ = back.try_send(answer).await;
        let head = client.read_head().await;
        assert_eq!(head.status, status, "{size}");
        if status == 403 {
            assert_eq!(head.get("x-big").map(str::len), Some(size));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answer_of_up_to_100_fields_is_relayed_and_more_is_502() {
    for (fields, status) in [(99, 403), (101, 502)] {
        let (head, _) = answered_with(None, |_| {
            let many: String = (0..fields).map(|i| format!("X-{i}: {i}\r\n")).collect();
            format!("HTTP/1.1 403 Forbidden\r\n{many}Content-Length: 0\r\n\r\n")
        })
        .await;
        assert_eq!(head.status, status, "{fields} fields");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_framed_both_ways_is_relayed_chunked() {
    // Content-Length beside chunked: the body is the chunked one (RFC 9112 §6.3), and the
    // relay must frame it one way only, or the client would get nothing at all.
    let (head, body) = answered_with(None, |_| {
        "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n"
            .to_string()
    })
    .await;
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(head.get("content-length"), None, "{head:?}");
    assert_eq!(head.get("transfer-encoding"), Some("chunked"), "{head:?}");
    assert_eq!(body, b"5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_with_stray_bytes_behind_it_is_still_relayed() {
    // hyper's backend connection fails on the bytes past the body, after it has handed over
    // the complete answer: the answer stands, the stray bytes go nowhere.
    let (head, body) = answered_with(None, |_| {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nabcEXTRA".to_string()
    })
    .await;
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(body, b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_refusals_are_relayed_with_their_status() {
    for (status, reason) in [
        (403, "Forbidden"),
        (404, "Not Found"),
        (500, "Internal Server Error"),
        (200, "OK"),
        (426, "Upgrade Required"),
    ] {
        let backend = RawBackend::start().await;
        let timeouts = "[timeouts]\nhandshake = \"60s\"\n\n";
        let body = format!("{timeouts}{}", route("chat", "/ws", &[backend.addr]));
        let proxy = start_proxy(&body).await;
        let mut client = raw_client(proxy.addr).await;
        client.send(ws().bytes()).await;
        let mut back = backend.accept().await;
        back.read_head().await;
        back.send(format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 4\r\n\r\nnope"
        ))
        .await;
        let head = client.read_head().await;
        assert_eq!(head.status, status, "{head:?}");
        if status == 426 {
            assert_eq!(head.get("upgrade"), Some("websocket"), "{head:?}");
            // `close` closes it (wsgate's own 426 closes as its body ends).
            assert_eq!(head.get("connection"), Some("Upgrade, close"), "{head:?}");
        }
        assert_eq!(client.read_body(&head).await, b"nope");
        // Closed behind it, not left waiting for a second request until the head's
        // deadline (a minute here, past the wait for the close).
        client.expect_closed().await;
    }
}

/// A backend that builds its redirect from its own address would send the client past the
/// proxy, to an address it cannot reach: made relative, it resolves through wsgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_the_backends_own_address_is_made_relative() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let own = format!("http://{}/ws/elsewhere?room=2", backend.addr);
    for (location, relayed) in [
        (own.as_str(), "/ws/elsewhere?room=2"),
        ("https://chat.example.com/ws", "https://chat.example.com/ws"),
    ] {
        let mut client = raw_client(proxy.addr).await;
        client.send(ws().bytes()).await;
        let mut back = backend.accept().await;
        back.read_head().await;
        back.send(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
        let head = client.read_head().await;
        assert_eq!(head.status, 307, "{head:?}");
        assert_eq!(head.get("location"), Some(relayed), "{head:?}");
        let raw = String::from_utf8_lossy(&head.raw).into_owned();
        assert!(!raw.contains(&backend.addr.to_string()), "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bytes_sent_behind_the_request_never_reach_a_refusing_backend() {
    // RFC 9931 / request smuggling: bytes after the upgrade request are not HTTP to the backend.
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    let mut bytes = ws().bytes();
    let smuggled = b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n".to_vec();
    bytes.extend_from_slice(&smuggled);
    client.send(&bytes).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 403, "{head:?}");
    let leaked = back.read_to_end().await;
    assert!(
        leaked.is_empty(),
        "backend got {:?}",
        String::from_utf8_lossy(&leaked)
    );
    client.read_to_end().await;
}

/// Sends an upgrade (with `offer` as Sec-WebSocket-Protocol, if any) and answers it with
/// `answer(request head)`; returns the client's answer and what follows it.
async fn answered_with(offer: Option<&str>, answer: impl Fn(&Head) -> String) -> (Head, Vec<u8>) {
    let mut req = ws();
    if let Some(offer) = offer {
        req = req.add("Sec-WebSocket-Protocol", offer);
    }
    answered_to(req, answer).await
}

/// Sends `req` and answers it with `answer(request head)`; returns the client's answer and
/// what follows it.
async fn answered_to(req: Req, answer: impl Fn(&Head) -> String) -> (Head, Vec<u8>) {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(req.bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    back.send(answer(&seen)).await;
    // A frame right behind the 101 that must not reach the client if the 101 is refused.
    back.send(frame(true, OP_TEXT, b"leak", false)).await;
    let head = client.read_head().await;
    let body = client.read_body(&head).await;
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_a_wrong_accept_is_502() {
    let (head, body) = answered_with(None, |_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            .to_string()
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(!String::from_utf8_lossy(&body).contains("leak"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_without_an_accept_is_502() {
    let (head, _) = answered_with(None, |_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_string()
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

/// A 101 with a right Accept for the request `seen`, and `lines` for its other headers.
fn accepted_with(seen: &Head, lines: &str) -> String {
    let key = seen.get("sec-websocket-key").unwrap();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n{lines}Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(key)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_does_not_upgrade_to_exactly_websocket_is_502() {
    for upgrade in [
        "",
        "Upgrade: h2c\r\n",
        "Upgrade: websocket, h2c\r\n",
        "Upgrade: websocket\r\nUpgrade: h2c\r\n",
        "Upgrade:\r\nUpgrade: websocket\r\n",
        "Upgrade: websocket,\r\n",
    ] {
        let lines = format!("{upgrade}Connection: Upgrade\r\n");
        let (head, _) = answered_with(None, |seen| accepted_with(seen, &lines)).await;
        assert_eq!(head.status, 502, "{upgrade:?}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_whose_connection_lacks_upgrade_is_502() {
    for connection in ["", "Connection: keep-alive\r\n"] {
        let lines = format!("Upgrade: websocket\r\n{connection}");
        let (head, _) = answered_with(None, |seen| accepted_with(seen, &lines)).await;
        assert_eq!(head.status, 502, "{connection:?}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_choosing_a_protocol_that_was_not_offered_is_502() {
    let (head, _) = answered_with(Some("chat.v1"), |seen| {
        switching(seen, "Sec-WebSocket-Protocol: chat.v9\r\n")
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_choosing_a_protocol_when_none_was_offered_is_502() {
    let (head, _) = answered_with(None, |seen| {
        switching(seen, "Sec-WebSocket-Protocol: chat.v1\r\n")
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_an_empty_protocol_is_502() {
    // Clients refuse an empty Sec-WebSocket-Protocol as malformed, whatever they offered.
    for offer in [None, Some("chat.v1")] {
        let (head, _) = answered_with(offer, |seen| {
            switching(seen, "Sec-WebSocket-Protocol: \r\n")
        })
        .await;
        assert_eq!(head.status, 502, "{offer:?}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_choosing_an_offered_protocol_in_a_malformed_way_is_502() {
    // One protocol chosen, but not as one value: clients fail such a handshake.
    for lines in [
        "Sec-WebSocket-Protocol: chat.v1,\r\n",
        "Sec-WebSocket-Protocol: chat.v1\r\nSec-WebSocket-Protocol: \r\n",
        "Sec-WebSocket-Protocol: chat.v1\r\nSec-WebSocket-Protocol: chat.v1\r\n",
    ] {
        let (head, _) =
            answered_with(Some("chat.v1, chat.v2"), |seen| switching(seen, lines)).await;
        assert_eq!(head.status, 502, "{lines:?}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_accepting_an_extension_the_client_did_not_offer_is_502() {
    // The client offered none; clients fail a handshake that accepts one (RFC 6455 §4.1).
    let (head, body) = answered_with(None, |seen| {
        switching(seen, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(!String::from_utf8_lossy(&body).contains("leak"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_101_is_502() {
    let (head, _) = answered_with(None, |seen| {
        switching(seen, "").replacen("HTTP/1.1", "HTTP/1.0", 1)
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_cannot_be_passed_on_as_it_is_is_502() {
    for answer in [
        // Chunk framing broken from the body's first byte: nothing of it can be relayed.
        "HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        // A transfer coding the client never asked for, which framing anew would hide.
        "HTTP/1.1 500 X\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        // A status beyond the five classes.
        "HTTP/1.1 900 X\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (head, body) = answered_with(None, |_| answer.to_string()).await;
        assert_eq!(head.status, 502, "{answer:?}: {head:?}");
        assert_eq!(body, b"backend error\n", "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_body_comes_later_is_relayed_whole_and_framed_as_sent() {
    // The head in time, the body in two pieces, the second past the connect timeout: the
    // answer is the backend's, with its length, not a 504.
    let backend = RawBackend::start().await;
    let config = format!(
        "[timeouts]\nconnect = \"1s\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    );
    let proxy = start_proxy(&config).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\n")
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 503, "{head:?}");
    assert_eq!(head.get("content-length"), Some("10"), "{head:?}");
    back.send("hello").await;
    // Not a wait for anything: the second piece must come after the connect timeout.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    back.send("world").await;
    assert_eq!(client.read_body(&head).await, b"helloworld");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_407_is_502() {
    // A backend cannot ask the client for proxy credentials: wsgate is no forward proxy.
    let (head, _) = answered_with(None, |_| {
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\
         Content-Length: 0\r\n\r\n"
            .to_string()
    })
    .await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_proxy_challenge_is_not_passed_on() {
    let (head, body) = answered_with(None, |_| {
        "HTTP/1.1 403 Forbidden\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\
         Content-Length: 2\r\n\r\nno"
            .to_string()
    })
    .await;
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(head.get("proxy-authenticate"), None, "{head:?}");
    assert_eq!(body, b"no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_choosing_a_protocol_the_proxy_filtered_out_is_502() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&format!(
        "[[route]]\nname = \"chat\"\npath = \"/ws\"\nsubprotocols = [\"chat.v2\"]\nbackends = [\"{}\"]\n",
        backend.addr
    ))
    .await;
    let mut client = raw_client(proxy.addr).await;
    client
        .send(
            ws().add("Sec-WebSocket-Protocol", "chat.v1, chat.v2")
                .bytes(),
        )
        .await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    assert_eq!(seen.list("sec-websocket-protocol"), ["chat.v2"]);
    back.send(switching(&seen, "Sec-WebSocket-Protocol: chat.v1\r\n"))
        .await;
    let head = client.read_head().await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_without_an_answer_is_502() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    backend.close_unanswered(3, false).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 502, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_a_relayed_refusal_is_dropped_in_time() {
    let backend = RawBackend::start().await;
    let body = format!(
        "{ADMIN}[timeouts]\nhandshake = \"1s\"\nconnect = \"1s\"\n\n{}",
        route("chat", "/ws", &[backend.addr])
    );
    let proxy = start_proxy(&body).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    // A refusal far larger than the socket buffers, to a client that never reads it.
    let size = 32 << 20;
    let head = format!("HTTP/1.1 403 Forbidden\r\nContent-Length: {size}\r\n\r\n");
    let writer = tokio::spawn(async move {
        let _ = back.try_send(head).await;
        let _ = back.try_send(vec![b'x'; size]).await;
    });
    until("the stuck connection to be dropped", || {
        proxy.server.active_connections() == 0
    })
    .await;
    // Counted (and logged) as undelivered, beside the 403's own line.
    let admin = proxy.server.admin_addr().unwrap();
    let late = r#"wsgate_connections_closed_early_total{reason="answer_late"}"#;
    scrape_until(admin, late, 1.0).await;
    drop(client);
    writer.abort();
}

/// A backend that answers the upgrade with a 403 whose chunked body stops after "hello",
/// then does `end` with its connection; returns the proxy's line for the connection, which
/// must be written once, when the connection is over, saying how it ended.
async fn line_of_a_refusal_cut_short(end: impl FnOnce(RawConn<tokio::net::TcpStream>)) -> String {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let timeouts = "[timeouts]\nhandshake = \"1s\"\nconnect = \"1s\"\n\n";
    let body = format!("{timeouts}{}", route("chat", "/ws", &[backend.addr]));
    let (mut child, lines, addr) = started_wsgate(&write_config(dir.path(), &body));
    let mut client = raw_client(addr).await;
    client.send(ws().bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send("HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    assert_eq!(client.read_head().await.status, 403);
    end(back);
    client.read_to_end().await;
    let line = line_containing(lines, "backend refused the upgrade").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("\"status\":403"), "{line}");
    assert!(line.contains("\"bytes_out\":5"), "{line}");
    // The backend's doing, whoever decided the answer: a warning.
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_the_backend_resets_is_logged_as_a_warning_and_a_client_close_is_not() {
    let backend = RawBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[backend.addr]));
    let (mut child, lines, addr) = started_wsgate(&config);
    // The backend vanishes: a reset, not a close.
    let (mut client, back, _, _) = raw_tunnel(addr, &backend, &ws()).await;
    back.stream.set_zero_linger().unwrap();
    drop(back);
    client.read_to_end().await;
    let line = wait_for_line(&lines, "tunnel closed");
    assert!(line.contains("backend error"), "{line}");
    assert!(line.contains("\"level\":\"WARN\""), "{line}");
    // The client closes: everyday life, at info.
    let (mut client, mut back, _, _) = raw_tunnel(addr, &backend, &ws()).await;
    client.shutdown_write().await;
    back.read_to_end().await;
    drop(back);
    client.read_to_end().await;
    let line = wait_for_line(&lines, "tunnel closed");
    assert!(line.contains("client closed"), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_refusal_whose_backend_leaves_mid_body_is_logged_cut_short() {
    let line = line_of_a_refusal_cut_short(drop).await;
    assert!(
        line.contains("answer not delivered in full: the backend broke off its body"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_refusal_whose_body_stalls_is_logged_once_when_it_is_dropped() {
    let (keep, kept) = std::sync::mpsc::channel();
    let line = line_of_a_refusal_cut_short(move |back| keep.send(back).unwrap()).await;
    // The client read all it was given: the backend is the one that held the answer up.
    assert!(
        line.contains("answer not delivered in time: the backend was too slow sending its body"),
        "{line}"
    );
    drop(kept);
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

/// The handshake's headers are the 101's substance, checked as the client will see them: a
/// backend naming them in its Connection (hop-by-hop, it says) does not strip the Accept, the
/// protocol or the extension it chose from the client, which would fail or misread the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_keeps_the_handshake_headers_the_backend_named_in_connection() {
    let offer = "Sec-WebSocket-Extensions";
    let req = (ws().add("Sec-WebSocket-Protocol", "chat")).add(offer, "permessage-deflate");
    let (head, _) = answered_to(req, |seen| {
        accepted_with(
            seen,
            "Upgrade: websocket\r\nConnection: Upgrade, Sec-WebSocket-Accept, \
             Sec-WebSocket-Protocol, Sec-WebSocket-Extensions\r\n\
             Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
        )
    })
    .await;
    assert_eq!(head.status, 101, "{head:?}");
    assert!(head.has("sec-websocket-accept"), "{head:?}");
    assert_eq!(head.get("sec-websocket-protocol"), Some("chat"), "{head:?}");
    assert_eq!(head.get(offer), Some("permessage-deflate"), "{head:?}");
}

/// An HTTP/1.0 backend's refusal, its body ended by its close, reaches the client as HTTP/1.1
/// with a body framed anew (chunked): a body cut short would otherwise look complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_refusal_is_relayed_as_http_1_1_with_its_body_framed() {
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(Req::upgrade("localhost", "/ws").bytes()).await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send("HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nforbidden")
        .await;
    drop(back);
    let head = client.read_head().await;
    assert!(head.start_line.starts_with("HTTP/1.1 403"), "{head:?}");
    assert_eq!(head.get("transfer-encoding"), Some("chunked"), "{head:?}");
    let body = String::from_utf8(client.read_to_end().await).unwrap();
    assert_eq!(body, "9\r\nforbidden\r\n0\r\n\r\n");
}

/// In the text log, the lines about a backend put aside quote the route, as the connection's
/// line does (`route="chat"`): a search for the route finds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_about_a_backend_put_aside_quote_the_route() {
    let (refusing, live) = (closed_port().await, WsBackend::start("one").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("chat", "/ws", &[refusing, live.addr]));
    let mut command = std::process::Command::new(wsgate_bin());
    command
        .args(["run", "--log-format", "text", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = WsgateChild::spawn(&mut command);
    let lines = stderr_lines(child.stderr.take().unwrap());
    let listening = wait_for_line(&lines, "listening");
    let addr: SocketAddr = (listening.split("listen=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {listening}"));
    assert_eq!(which_backend(addr, "wss://localhost/ws").await, "one");
    let aside = tokio::task::spawn_blocking(move || wait_for_line(&lines, "put aside"))
        .await
        .unwrap();
    assert!(
        aside.contains(r#"route="chat""#) && aside.contains(&format!("backend=\"{refusing}\"")),
        "{aside}"
    );
}
