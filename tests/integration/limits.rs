//! Connection limits applied before the head is read and to idle connections, and refused
//! clients lingering without delaying shutdown.

use crate::head::{proxy_to_nowhere, ws};
use crate::support::*;

/// Beyond max_connections the answer is 503 whatever the head looks like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_a_bad_head_still_gets_503() {
    let proxy = proxy_to_nowhere("[limits]\nmax_connections = 1\n", None).await;
    let _holder = raw_client(proxy.addr).await;
    until("the first connection to be counted", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let (head, _) = request(proxy.addr, ws().add("Bad Name", "v").bytes()).await;
    assert_eq!(head.status, 503, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_after_tls_counts_against_the_per_client_limit() {
    let proxy = proxy_to_nowhere("[limits]\nmax_connections_per_client = 1\n", None).await;
    let _holder = raw_client(proxy.addr).await;
    until("the first connection to be counted", || {
        proxy.server.active_connections() == 1
    })
    .await;
    let (head, _) = request(proxy.addr, ws().bytes()).await;
    assert_eq!(head.status, 429, "{head:?}");
}

/// A client's connections count against its limit from the accept on, TLS handshake included,
/// and those past it hold no place in `max_connections`: one client stalling handshakes
/// cannot fill the proxy for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_excess_holds_no_global_place_even_before_tls() {
    let limits = "[limits]\nmax_connections = 2\nmax_connections_per_client = 1\n";
    let proxy = proxy_to_nowhere(limits, None).await;
    // A TCP connection that never starts TLS holds the client's one place...
    let _stalled = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Counted against the client, not only accepted: the place is taken in the connection's
    // own task, which a busy machine may run after the next connection's.
    until("the stalled connection to be counted", || {
        proxy.server.client_connections(proxy.addr.ip()) == 1
    })
    .await;
    // ...so the next one is over the client's limit from the start. The proxy decides that
    // before its side of the TLS handshake, so with the handshake done it is settled.
    let mut over = raw_client(proxy.addr).await;
    assert_eq!(proxy.server.active_connections(), 1);
    over.send(ws().bytes()).await;
    let head = over.read_head().await;
    assert_eq!(head.status, 429, "{head:?}");
}

/// A refused client that has its answer but keeps the socket open must not hold shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_refused_client_does_not_delay_shutdown() {
    let proxy = proxy_to_nowhere("", None).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(ws().add("Bad Name", "v").bytes()).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 400);
    let _body = client.read_body(&head).await;
    // The client keeps its socket open: shutdown waits for it no longer than the linger's
    // second (the grace is for tunnels), far below the 25 s answer deadline.
    within(
        "shutdown with a refused client still connected",
        proxy.server.shutdown(),
    )
    .await;
    drop(client);
}

/// Same for a refusal hyper makes (a 404), to an upgrade request (whose socket hyper hands
/// back) and to a plain GET (which hyper closes, lingering): for comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_404_client_does_not_delay_shutdown() {
    for req in [
        Req::upgrade("chat.example.com", "/nothing"),
        Req::get("chat.example.com", "/nothing"),
    ] {
        a_lingering_client_does_not_delay_shutdown(req).await;
    }
}

async fn a_lingering_client_does_not_delay_shutdown(req: Req) {
    let proxy = proxy_to_nowhere("", None).await;
    let mut client = raw_client(proxy.addr).await;
    client.send(req.bytes()).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 404);
    // Still sending: the proxy lingers, taking it in.
    client.send(b"more").await;
    // The client keeps its socket open: shutdown waits for it no longer than the linger's
    // second (the grace is for tunnels), far below the 25 s answer deadline.
    within(
        "shutdown with a refused client still connected",
        proxy.server.shutdown(),
    )
    .await;
    drop(client);
}

/// A connection over a limit that never sends its request (it times out in the TLS handshake,
/// here) never gets its refusal, and its line says it was the excess, so that under overload
/// the log counts every connection that was turned away, not only those that asked first.
#[test]
fn an_excess_connection_that_times_out_says_which_limit_it_was_over() {
    for (limits, over) in [
        (
            "max_connections = 1",
            "; over max_connections, its 503 not sent",
        ),
        (
            "max_connections_per_client = 1",
            "; over max_connections_per_client, its 429 not sent",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("[timeouts]\nhandshake = \"300ms\"\n\n[limits]\n{limits}\n\n");
        let (_child, lines, addr) = started_wsgate(&write_config(dir.path(), &body));
        // Accepted in this order: the first takes the one place, the second is over it.
        let _first = std::net::TcpStream::connect(addr).unwrap();
        let _second = std::net::TcpStream::connect(addr).unwrap();
        let ends = [
            wait_for_line(&lines, "connection closed"),
            wait_for_line(&lines, "connection closed"),
        ];
        let timed_out = "handshake timeout (TLS)";
        assert!(ends.iter().all(|l| l.contains(timed_out)), "{ends:?}");
        let excess: Vec<_> = ends.iter().filter(|l| l.contains(over)).collect();
        assert_eq!(excess.len(), 1, "{limits}: {ends:?}");
        assert!(excess[0].contains("\"status\":0"), "{excess:?}");
    }
}
