//! Listeners come and go with reloads: an added address starts accepting, a removed one stops
//! (connects are refused) while tunnels opened through it continue, a listener that stays is the
//! same socket, and a reload with an address that cannot be bound changes nothing at all.
//! Extra listeners use other loopback addresses (Linux routes all of 127/8 to `lo`).

use std::net::SocketAddr;

use crate::support::*;

/// Asserts nothing accepts connections on `addr`.
async fn assert_refused(addr: SocketAddr, why: &str) {
    let connected = within("a connect", tokio::net::TcpStream::connect(addr)).await;
    assert!(connected.is_err(), "{addr} still accepts: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_while_their_tunnels_continue() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    let head = head_listening(&["127.0.0.1:0", "127.0.0.2:0"]);
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    generation(&mut rx, 2).await;
    let addrs = proxy.server.local_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(
        addrs[0], proxy.addr,
        "the listener that stays is the same socket"
    );
    let second = addrs[1];
    assert_eq!(second.ip().to_string(), "127.0.0.2");
    let mut through_second = ws_connect_ok(second, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut through_second, "hello").await, "hello");

    write_body(&proxy.config_path(), &body);
    generation(&mut rx, 3).await;
    assert_eq!(proxy.server.local_addrs(), vec![proxy.addr]);
    assert_refused(second, "the listener was removed").await;
    assert_eq!(round_trip(&mut through_second, "alive").await, "alive");
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);
    until("the probes to close", || {
        proxy.server.active_connections() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reload_can_remove_one_listener_and_add_another() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    let with = |extra: &str| format!("{}{body}", head_listening(&["127.0.0.1:0", extra]));
    std::fs::write(proxy.config_path(), with("127.0.0.2:0")).unwrap();
    generation(&mut rx, 2).await;
    let two = proxy.server.local_addrs()[1];
    let mut tunnel = ws_connect_ok(two, "wss://localhost/a").await;

    std::fs::write(proxy.config_path(), with("127.0.0.3:0")).unwrap();
    generation(&mut rx, 3).await;
    let addrs = proxy.server.local_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0], proxy.addr);
    assert_eq!(addrs[1].ip().to_string(), "127.0.0.3");
    assert_refused(two, "127.0.0.2 was removed").await;
    assert_eq!(which_backend(addrs[1], "wss://localhost/a").await, "one");
    assert_eq!(round_trip(&mut tunnel, "alive").await, "alive");
}

/// Moving a port to the unspecified address in one save cannot work (the old listener holds
/// it until the reload is applied): rejected, and the error says whose listener is in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_port_in_one_save_names_the_own_listener_in_the_way() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    let moved = format!("0.0.0.0:{}", proxy.addr.port());
    std::fs::write(
        proxy.config_path(),
        format!("{}{body}", head_listening(&[&moved])),
    )
    .unwrap();
    let status = failures(&mut rx, 1).await;
    let error = status.last_error.unwrap_or_default();
    let ours = format!("held by this wsgate's own listener {}", proxy.addr);
    assert!(error.contains(&ours), "{error}");
    assert_eq!(
        upgrade_status(proxy.addr, "/a").await,
        101,
        "nothing changed"
    );
}

/// The admin endpoint's address given to the proxy in the same save: the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_admin_port_to_the_proxy_in_one_save_names_the_own_listener_in_the_way() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&format!("{}{body}", crate::admin::ADMIN)).await;
    let admin = proxy.server.admin_addr().expect("admin endpoint bound");
    let mut rx = proxy.server.reload_status();
    let listen = admin.to_string();
    std::fs::write(
        proxy.config_path(),
        format!("{}{body}", head_listening(&[&listen])),
    )
    .unwrap();
    let status = failures(&mut rx, 1).await;
    let error = status.last_error.unwrap_or_default();
    let ours = format!("held by this wsgate's own listener {admin}");
    assert!(error.contains(&ours), "{error}");
    assert_eq!(proxy.server.admin_addr(), Some(admin), "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_addrs_follow_the_config_order() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    let head = head_listening(&["127.0.0.2:0", "127.0.0.1:0"]);
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    generation(&mut rx, 2).await;
    let addrs = proxy.server.local_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0].ip().to_string(), "127.0.0.2");
    assert_eq!(
        addrs[1], proxy.addr,
        "127.0.0.1:0 is still the same listener"
    );
    for addr in addrs {
        assert_eq!(upgrade_status(addr, "/a").await, 101, "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_stays_keeps_connections_waiting_in_its_backlog() {
    // A connection accepted by the kernel before the reload, whose TLS handshake only starts
    // after it: a listener that were closed and bound again would have reset it.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let early = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = head_listening(&["127.0.0.1:0", "127.0.0.2:0"]);
    std::fs::write(
        proxy.config_path(),
        format!("{head}{}", route("a", "/a", &[backend.addr])),
    )
    .unwrap();
    generation(&mut rx, 2).await;

    let tls =
        (tls_handshake_on(early, "localhost").await).expect("the early connection still works");
    let mut conn = RawConn::new(tls);
    conn.send(Req::upgrade("localhost", "/a").bytes()).await;
    assert_eq!(conn.read_head().await.status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_cannot_be_bound_rejects_the_whole_reload() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    // Looks counted from here on are this test's.
    let before = status_where(&mut rx, "the start-up look", |s| s.checks >= 1).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    // Listed before the busy one: binding it must not survive the failure.
    let free = free_addr("127.0.0.3");
    let head = head_listening(&["127.0.0.1:0", &free.to_string(), &busy.to_string()]);
    let body = format!("{head}{}", route("b", "/b", &[backend.addr]));
    std::fs::write(proxy.config_path(), &body).unwrap();
    let status = failures(&mut rx, 1).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains(&busy.to_string()),
        "{:?}",
        status.last_error
    );
    let error = status.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(":2:") && error.contains("proxy.listen[2]"),
        "{error}"
    );
    assert_eq!(status.generation, 1);
    assert_eq!(proxy.server.local_addrs(), vec![proxy.addr]);
    assert_refused(free, "a rejected reload binds nothing").await;

    // The same content saved again: tried again (the port could be free by now), but the same
    // failure is not logged or counted again. (Awaited from the end of the rejecting look:
    // its count may come after its failure was published.)
    let rejecting = status_where(&mut rx, "the rejecting look", |s| s.checks > before.checks);
    let checks = rejecting.await.checks;
    std::fs::write(proxy.config_path(), &body).unwrap();
    let status = status_where(&mut rx, "another look", |s| s.checks > checks).await;
    assert_eq!((status.generation, status.failures), (1, 1));

    // Another mistake in between, then the busy address again: that is news again.
    std::fs::write(proxy.config_path(), "[proxy").unwrap();
    failures(&mut rx, 2).await;
    std::fs::write(proxy.config_path(), &body).unwrap();
    let status = failures(&mut rx, 3).await;
    assert!(status
        .last_error
        .unwrap_or_default()
        .contains("proxy.listen[2]"));
    assert_eq!(
        upgrade_status(proxy.addr, "/a").await,
        101,
        "nothing changed"
    );
    assert_eq!(
        upgrade_status(proxy.addr, "/b").await,
        404,
        "nothing changed"
    );

    // Once the address is free, saving the very same file again applies it: a busy port is
    // the machine's state, not the file's, so its content is not written off as rejected.
    drop(taken);
    std::fs::write(proxy.config_path(), &body).unwrap();
    generation(&mut rx, 2).await;
    assert_eq!(proxy.server.local_addrs(), vec![proxy.addr, free, busy]);
    for addr in [proxy.addr, free, busy] {
        assert_eq!(upgrade_status(addr, "/b").await, 101, "{addr}");
    }
}

/// The config of a wsgate listening on `listen` with `reuse_port`, one route `/a` to `backend`,
/// and its admin endpoint on `admin`, if given.
fn reusing_port(listen: &str, admin: Option<SocketAddr>, backend: SocketAddr) -> String {
    let head = head_listening(&[listen]).replace("[proxy]\n", "[proxy]\nreuse_port = true\n");
    let admin = admin.map_or(String::new(), |a| format!("[admin]\nlisten = \"{a}\"\n\n"));
    format!("{head}{admin}{}", route("a", "/a", &[backend]))
}

/// A new version taking over: with `proxy.reuse_port`, a second wsgate listens on the addresses
/// a running one holds; the first, sent SIGTERM, stops accepting (its admin endpoint too)
/// while its tunnel runs on in the grace, and every connection from then on is the second's.
/// The port never closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reuse_port_a_second_wsgate_takes_over_the_port_without_closing_it() {
    let backend = WsBackend::start("echo").await;
    let admin = free_addr("127.0.0.1");
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old_config = write_config(old_dir.path(), "");
    let config = |listen: &str| reusing_port(listen, Some(admin), backend.addr);
    std::fs::write(&old_config, config("127.0.0.1:0")).unwrap();
    let (mut old, old_lines, addr) =
        started_wsgate_logging(&old_config, "info,wsgate::server=debug");
    // Opened before the second process exists: this tunnel is the first one's.
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    let new_config = write_config(new_dir.path(), "");
    std::fs::write(&new_config, config(&addr.to_string())).unwrap();
    let (_new, _new_lines, new_addr) = started_wsgate(&new_config);
    assert_eq!(new_addr, addr);

    send_signal(old.id(), "TERM");
    // Logged once its listener is closed: a connect before may still be its own (and get
    // its 503, as the shutdown began), one after is the second's.
    let old_lines = within(
        "the first wsgate to stop accepting",
        tokio::task::spawn_blocking(move || {
            wait_for_line(&old_lines, "listeners closed");
            old_lines
        }),
    )
    .await
    .unwrap();
    for n in 0..10 {
        let mut fresh = ws_connect_ok(addr, "wss://localhost/a").await;
        let text = format!("after {n}");
        assert_eq!(round_trip(&mut fresh, &text).await, text);
        // The first one's would say 503, shutting down.
        let ready = crate::admin::admin_request(admin, "GET", "/readyz").await;
        assert_eq!(ready.0, 200, "{ready:?}");
    }
    // The first one's tunnel runs on in its grace, beside the second one's.
    assert_eq!(round_trip(&mut ws, "in the grace").await, "in the grace");
    drop(ws);
    let status = within(
        "the first wsgate to exit once its tunnel is gone",
        tokio::task::spawn_blocking(move || {
            wait_for_line(&old_lines, "shutdown complete");
            old.wait().unwrap()
        }),
    )
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `reuse_port` turned on by a reload leaves the admin listener bound as it was, its address
/// its own: in a drain it answers until the end (`/readyz` failing), as without `reuse_port`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_bound_before_reuse_port_was_turned_on_answers_through_a_drain() {
    admin_answers_through_a_drain_once_reuse_port_is_turned(true).await;
}

/// Bound with `reuse_port`, turned off by a reload since: a wsgate started on that config
/// could not bind beside it, so there is no one to hand its address to, and it answers
/// through a drain too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_whose_reuse_port_was_turned_off_answers_through_a_drain() {
    admin_answers_through_a_drain_once_reuse_port_is_turned(false).await;
}

/// A wsgate with an admin endpoint, `proxy.reuse_port` turned `on` (or off) by a reload: its
/// admin endpoint answers through the drain of a shutdown, `/readyz` failing.
async fn admin_answers_through_a_drain_once_reuse_port_is_turned(on: bool) {
    let backend = WsBackend::start("echo").await;
    let admin = free_addr("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    // The same listeners (as the config writes them), with and without the option.
    let with = reusing_port("127.0.0.1:0", Some(admin), backend.addr);
    let without = with.replace("reuse_port = true\n", "");
    let (first, then) = if on { (without, with) } else { (with, without) };
    std::fs::write(&path, first).unwrap();
    let server = wsgate::Server::start(&path).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    first_look(&mut rx).await;
    std::fs::write(&path, then).unwrap();
    generation(&mut rx, 2).await;
    // A tunnel keeps the drain going.
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    let shutdown = tokio::spawn(server.shutdown());
    // Ready until the shutdown task has begun; answering all along (a refused connect fails).
    within("/readyz to fail", async {
        while crate::admin::admin_request(admin, "GET", "/readyz").await.0 != 503 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Still there once the proxy's listeners are closed.
    crate::shutdown::refused(addr).await;
    let ready = crate::admin::admin_request(admin, "GET", "/readyz").await;
    assert_eq!(ready, (503, "shutting down\n".to_string()));
    assert_eq!(round_trip(&mut ws, "in the grace").await, "in the grace");
    drop(ws);
    within("the shutdown once the tunnel is gone", shutdown)
        .await
        .unwrap();
}

/// Without `reuse_port` (the default), a second wsgate on a held address does not start: a
/// second process started by mistake must not silently take half the connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_port_a_second_wsgate_cannot_listen_beside_the_first() {
    let backend = WsBackend::start("echo").await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first_config = write_config(first_dir.path(), &route("a", "/a", &[backend.addr]));
    let (_first, _lines, addr) = started_wsgate(&first_config);
    let second = write_config(second_dir.path(), "");
    let body =
        reusing_port(&addr.to_string(), None, backend.addr).replace("reuse_port = true\n", "");
    // `wsgate run` on `body`, which must fail to start (status 1): what it says.
    let refused = |body: String| {
        std::fs::write(&second, body).unwrap();
        let out = std::process::Command::new(wsgate_bin())
            .args(["run", "--config"])
            .arg(&second)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(body);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    // Asking to share it is not enough: the holder did not. The error says so.
    let stderr = refused(reusing_port(&addr.to_string(), None, backend.addr));
    let hint = "with reuse_port, the process holding it must have bound it with reuse_port on too";
    assert!(stderr.contains(hint), "{stderr}");
}

/// With `reuse_port`, a port moves to an overlapping address in one save: the new socket is
/// bound beside the old one (without it, the kernel refuses that, and it takes two saves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reuse_port_a_port_moves_to_the_wildcard_address_in_one_save() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let port = free_addr("127.0.0.1").port();
    let on = |listen: String| reusing_port(&listen, None, backend.addr);
    std::fs::write(proxy.config_path(), on(format!("127.0.0.1:{port}"))).unwrap();
    generation(&mut rx, 2).await;
    std::fs::write(proxy.config_path(), on(format!("0.0.0.0:{port}"))).unwrap();
    generation(&mut rx, 3).await;
    let wildcard: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    assert_eq!(proxy.server.local_addrs(), vec![wildcard]);
    let through = SocketAddr::from(([127, 0, 0, 1], port));
    let mut ws = ws_connect_ok(through, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "moved").await, "moved");
}
