//! Route choice: host ranking, wildcards, segment prefixes, subprotocol fit, round-robin.

use std::net::SocketAddr;

use crate::admin::{close, metrics, sample, scrape_until, ADMIN};
use crate::support::*;

fn host_route(
    name: &str,
    host: Option<&str>,
    path: &str,
    extra: &str,
    backend: SocketAddr,
) -> String {
    let host = host
        .map(|h| format!("host = \"{h}\"\n"))
        .unwrap_or_default();
    format!(
        "[[route]]\nname = \"{name}\"\n{host}path = \"{path}\"\n{extra}backends = [\"{backend}\"]\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_no_host_then_longest_prefix() {
    let any = WsBackend::start("any").await;
    let wild = WsBackend::start("wild").await;
    let exact = WsBackend::start("exact").await;
    let exact_admin = WsBackend::start("exact-admin").await;
    // Written in the opposite order of their rank, so file order cannot explain the result.
    let config = [
        host_route("any", None, "/", "", any.addr),
        host_route("any-admin", None, "/ws/admin", "", any.addr),
        host_route("wild", Some("*.example.com"), "/", "", wild.addr),
        host_route("exact", Some("chat.example.com"), "/", "", exact.addr),
        host_route(
            "exact-admin",
            Some("chat.example.com"),
            "/ws/admin",
            "",
            exact_admin.addr,
        ),
    ]
    .concat();
    let proxy = start_proxy(&config).await;
    let cases = [
        ("wss://chat.example.com/ws/admin/x", "exact-admin"),
        ("wss://chat.example.com/ws/admin", "exact-admin"),
        ("wss://chat.example.com/ws", "exact"),
        ("wss://chat.example.com/", "exact"),
        ("wss://foo.example.com/ws/admin", "wild"),
        ("wss://other.test/ws", "any"),
        ("wss://other.test/ws/admin", "any"),
    ];
    for (url, want) in cases {
        assert_eq!(which_backend(proxy.addr, url).await, want, "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_in_the_host_header_is_ignored() {
    let exact = WsBackend::start("exact").await;
    let any = WsBackend::start("any").await;
    let config = [
        host_route("exact", Some("chat.example.com"), "/ws", "", exact.addr),
        host_route("any", None, "/ws", "", any.addr),
    ]
    .concat();
    let proxy = start_proxy(&config).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://chat.example.com:8443/ws").await,
        "exact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_no_route_covers_is_404() {
    let exact = WsBackend::start("exact").await;
    let proxy = start_proxy(&host_route(
        "exact",
        Some("chat.example.com"),
        "/ws",
        "",
        exact.addr,
    ))
    .await;
    for host in ["other.test", "example.com", "chat.example.com.evil.test"] {
        let (head, _) = request(proxy.addr, Req::upgrade(host, "/ws").bytes()).await;
        assert_eq!(head.status, 404, "{host}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_host_matches_a_subdomain() {
    let wild = WsBackend::start("wild").await;
    let proxy = start_proxy(&host_route(
        "wild",
        Some("*.example.com"),
        "/ws",
        "",
        wild.addr,
    ))
    .await;
    assert_eq!(
        which_backend(proxy.addr, "wss://api.example.com/ws").await,
        "wild"
    );
    let (head, _) = request(proxy.addr, Req::upgrade("example.net", "/ws").bytes()).await;
    assert_eq!(head.status, 404, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefixes_match_whole_segments() {
    let backend = WsBackend::start("ws").await;
    let proxy = start_proxy(&route("ws", "/ws", &[backend.addr])).await;
    for target in ["/ws", "/ws/", "/ws/room/1", "/ws?room=1"] {
        let url = format!("wss://chat.example.com{target}");
        assert_eq!(which_backend(proxy.addr, &url).await, "ws", "{target}");
    }
    for target in ["/wsx", "/w", "/", "/other/ws"] {
        let (head, _) = request(proxy.addr, Req::upgrade("chat.example.com", target).bytes()).await;
        assert_eq!(head.status, 404, "{target}: {head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_routes_are_taken_in_file_order() {
    let first = WsBackend::start("first").await;
    let second = WsBackend::start("second").await;
    let config = [
        host_route("first", Some("chat.example.com"), "/ws", "", first.addr),
        host_route("second", Some("chat.example.com"), "/ws", "", second.addr),
    ]
    .concat();
    let proxy = start_proxy(&config).await;
    for _ in 0..3 {
        assert_eq!(
            which_backend(proxy.addr, "wss://chat.example.com/ws").await,
            "first"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_ranked_route_whose_subprotocols_fit_wins() {
    let v2 = WsBackend::start("v2").await;
    let v1 = WsBackend::start("v1").await;
    let config = [
        host_route(
            "v2",
            Some("chat.example.com"),
            "/ws",
            "subprotocols = [\"chat.v2\"]\n",
            v2.addr,
        ),
        host_route("v1", None, "/ws", "subprotocols = [\"chat.v1\"]\n", v1.addr),
    ]
    .concat();
    let proxy = start_proxy(&config).await;
    for (offer, want) in [
        ("chat.v1", "v1"),
        ("chat.v2", "v2"),
        ("chat.v1, chat.v2", "v2"),
    ] {
        let (mut ws, _) = ws_connect(
            proxy.addr,
            "wss://chat.example.com/ws",
            &[("Sec-WebSocket-Protocol", offer)],
        )
        .await
        .unwrap_or_else(|e| panic!("offer {offer}: {e:?}"));
        assert_eq!(round_trip(&mut ws, "whoami").await, want, "offer {offer}");
    }
    // Candidates exist but none fits.
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", "/ws")
            .add("Sec-WebSocket-Protocol", "chat.v3")
            .bytes(),
    )
    .await;
    assert_eq!(head.status, 400, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_used_round_robin() {
    let a = WsBackend::start("a").await;
    let b = WsBackend::start("b").await;
    let proxy = start_proxy(&route("rr", "/ws", &[a.addr, b.addr])).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(which_backend(proxy.addr, "wss://chat.example.com/ws").await);
    }
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "not round-robin: {names:?}");
    }
}

/// Opens a tunnel through `proxy` and asserts which backend took it; the tunnel stays open.
async fn held_on(proxy: &Proxy, want: &str) -> Ws {
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut ws, "whoami").await, want);
    ws
}

fn least_connections_to(backends: &[SocketAddr], extra: &str) -> String {
    let backends = backends_list(backends);
    format!("{ADMIN}[[route]]\nname = \"lc\"\npath = \"/ws\"\nbalance = \"least_connections\"\nbackends = {backends}\n\n{extra}")
}

fn open_to(backend: SocketAddr) -> String {
    format!(r#"wsgate_backend_connections_open{{backend="{backend}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_tunnels_to_the_backend_with_fewest_open() {
    let a = WsBackend::start("a").await;
    let b = WsBackend::start("b").await;
    let proxy = start_proxy(&least_connections_to(&[a.addr, b.addr], "")).await;
    let admin = proxy.server.admin_addr().expect("admin endpoint bound");
    // Level: in turn.
    let mut held = vec![
        held_on(&proxy, "a").await,
        held_on(&proxy, "b").await,
        held_on(&proxy, "a").await,
    ];
    close(held.remove(1)).await;
    scrape_until(admin, &open_to(b.addr), 0.0).await;
    // b has none open, a two: round-robin would send the next two to b and a; this, both to b.
    held.push(held_on(&proxy, "b").await);
    held.push(held_on(&proxy, "b").await);
    let text = metrics(admin).await;
    assert_eq!(sample(&text, &open_to(a.addr)), Some(2.0), "{text}");
    assert_eq!(sample(&text, &open_to(b.addr)), Some(2.0), "{text}");
    // Each address too (here, each backend's only one).
    let at = format!(
        r#"wsgate_backend_address_connections_open{{address="{}"}}"#,
        b.addr
    );
    assert_eq!(sample(&text, &at), Some(2.0), "{text}");
    // A reload keeps the counts, and a backend's count is one across routes: a tunnel to a
    // through another route weighs on this one's choice.
    let (mut status, before) = proxy.watched().await;
    let other = format!(
        "[[route]]\nname = \"other\"\npath = \"/other\"\nbackends = [\"{}\"]\n\n",
        a.addr
    );
    write_body(
        &proxy.config_path(),
        &least_connections_to(&[a.addr, b.addr], &other),
    );
    generation(&mut status, before + 1).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/other").await;
        assert_eq!(round_trip(&mut ws, "whoami").await, "a");
        others.push(ws);
    }
    // Two of this route's and two of the other's: the reload lost none.
    scrape_until(admin, &open_to(a.addr), 4.0).await;
    // b has two, a four: both to b (counted per route, it would be a tie, then a).
    held.push(held_on(&proxy, "b").await);
    held.push(held_on(&proxy, "b").await);
}

/// An upgrade through `proxy` that `backend` answers with `answer` (its bytes as they are):
/// the status the client gets.
async fn answered_by(proxy: &Proxy, backend: &RawBackend, answer: &str) -> u16 {
    let mut client = raw_client(proxy.addr).await;
    client
        .send(Req::upgrade("chat.example.com", "/ws").bytes())
        .await;
    let mut back = backend.accept().await;
    back.read_head().await;
    back.send(answer).await;
    client.read_head().await.status
}

/// A least-connections route (60 s cool-down) over a good backend holding one tunnel and a
/// scripted one holding none, so the next choice: the admin address, and the scripted
/// backend's put-aside series.
struct BesideGood {
    proxy: Proxy,
    failing: RawBackend,
    admin: SocketAddr,
    aside: String,
    held: Vec<Ws>,
    _good: WsBackend,
}

impl BesideGood {
    async fn start() -> BesideGood {
        let good = WsBackend::start("good").await;
        let failing = RawBackend::start().await;
        let cooldown = "[timeouts]\nbackend_cooldown = \"60s\"\n\n";
        let config = format!(
            "{cooldown}{}",
            least_connections_to(&[good.addr, failing.addr], "")
        );
        let proxy = start_proxy(&config).await;
        let admin = proxy.server.admin_addr().expect("admin endpoint bound");
        let held = vec![held_on(&proxy, "good").await];
        let aside = format!(
            r#"wsgate_backend_put_aside_total{{route="lc",backend="{}"}}"#,
            failing.addr
        );
        BesideGood {
            proxy,
            failing,
            admin,
            aside,
            held,
            _good: good,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_puts_aside_a_backend_that_cannot_serve_but_not_one_that_erred() {
    let unavailable = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    let bad_accept = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n";
    let erred = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    for (answer, status, put_aside) in [
        (unavailable, 503, true),
        (bad_accept, 502, true),
        (erred, 500, false),
    ] {
        let BesideGood {
            proxy,
            failing,
            admin,
            aside,
            mut held,
            _good,
        } = BesideGood::start().await;
        // The failing backend, with no tunnel, is the next choice.
        assert_eq!(answered_by(&proxy, &failing, answer).await, status);
        let counted = sample(&metrics(admin).await, &aside);
        if put_aside {
            // For its cool-down: the next tunnels go to the backend that has them all.
            for _ in 0..3 {
                held.push(held_on(&proxy, "good").await);
            }
            assert!(failing.waiting().await.is_none(), "not dialed again");
            assert_eq!(counted, Some(1.0), "{status}");
        } else {
            // An error a client's request can provoke: the backend stays first choice.
            assert_eq!(answered_by(&proxy, &failing, answer).await, status);
            assert_eq!(counted, None, "{status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_puts_aside_a_backend_that_refuses_five_upgrades_in_a_row() {
    let BesideGood {
        proxy,
        failing: broken,
        admin,
        aside,
        mut held,
        _good,
    } = BesideGood::start().await;
    // A deploy whose WebSocket path is broken: every upgrade answered 404. With no tunnel,
    // it is every request's first choice, until the fifth refusal in a row.
    let not_found = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    for _ in 0..5 {
        assert_eq!(answered_by(&proxy, &broken, not_found).await, 404);
    }
    for _ in 0..3 {
        held.push(held_on(&proxy, "good").await);
    }
    assert!(broken.waiting().await.is_none(), "not dialed again");
    assert_eq!(sample(&metrics(admin).await, &aside), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_takes_a_backends_server_error_as_an_answer() {
    let good = WsBackend::start("good").await;
    let failing = RawBackend::start().await;
    let proxy = start_proxy(&route("rr", "/ws", &[good.addr, failing.addr])).await;
    let unavailable = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    for _ in 0..2 {
        assert_eq!(
            which_backend(proxy.addr, "wss://chat.example.com/ws").await,
            "good"
        );
        assert_eq!(answered_by(&proxy, &failing, unavailable).await, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_is_skipped_for_the_next_one() {
    let refused = closed_port().await;
    let b = WsBackend::start("b").await;
    let proxy = start_proxy(&route("rr", "/ws", &[refused, b.addr])).await;
    for _ in 0..4 {
        assert_eq!(
            which_backend(proxy.addr, "wss://chat.example.com/ws").await,
            "b"
        );
    }
}

/// Routes by host only: a request the proxy misreads as the other host would reach it.
async fn two_hosts() -> (Proxy, WsBackend, WsBackend) {
    let chat = WsBackend::start("chat").await;
    let admin = WsBackend::start("admin").await;
    let config = [
        host_route("chat", Some("chat.example.com"), "/ws", "", chat.addr),
        host_route("admin", Some("*.example.com"), "/ws", "", admin.addr),
    ]
    .concat();
    (start_proxy(&config).await, chat, admin)
}

async fn status_for(proxy: &Proxy, req: Req) -> u16 {
    let mut client = raw_client(proxy.addr).await;
    client.send(req.bytes()).await;
    client.read_head().await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_must_name_the_host_it_is_sent_with() {
    let (proxy, _chat, _admin) = two_hosts().await;
    let mut agreeing = Req::upgrade("chat.example.com", "/ws");
    agreeing.target = "https://chat.example.com/ws".into();
    assert_eq!(status_for(&proxy, agreeing).await, 101);
    // RFC 9112 §3.2.2 routes by the target; the backend would route by Host. Never both.
    let mut disagreeing = Req::upgrade("chat.example.com", "/ws");
    disagreeing.target = "https://admin.example.com/ws".into();
    assert_eq!(status_for(&proxy, disagreeing).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_a_plain_host_and_port_is_400() {
    let (proxy, _chat, _admin) = two_hosts().await;
    for host in [
        "x@chat.example.com",
        "chat.example.com/ws",
        "chat.example.com:https",
    ] {
        let status = status_for(&proxy, Req::upgrade(host, "/ws")).await;
        assert_eq!(status, 400, "{host}");
    }
}
