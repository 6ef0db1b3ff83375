//! Graceful shutdown: new connections are refused at once, live tunnels get
//! `timeouts.shutdown_grace` and are then closed (both sides), and shutdown returns; nothing
//! else (a client that never speaks, an idle TLS connection) may hold it past the grace.

use std::time::{Duration, Instant};

use crate::admin::{admin_request, proxy_with_admin};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn config_with_grace(grace: &str, extra: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "[timeouts]\nshutdown_grace = \"{grace}\"\n{extra}\n{}",
        route("a", "/a", &[backend])
    )
}

/// Waits until connects to `addr` are refused (the listener is closed); returns when.
pub(crate) async fn refused(addr: std::net::SocketAddr) -> Instant {
    within("new connections to be refused", async {
        // Each attempt is a real connect; a socket that still accepted is dropped at once.
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    Instant::now()
}

/// What the stream yields once pings and pongs are skipped: the end of the tunnel.
pub(crate) async fn tunnel_end(
    ws: &mut Ws,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    within("the tunnel to be closed", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_at_once_and_closes_tunnels_after_the_grace() {
    // Long enough that a loaded machine's pauses fit in it: the checks inside it are of
    // order (refused at once, carrying bytes meanwhile, closed after it), not of speed.
    const GRACE: Duration = Duration::from_secs(3);
    let backend = RawBackend::start().await;
    let proxy = start_proxy(&config_with_grace("3s", "", backend.addr)).await;
    let addr = proxy.addr;
    let (mut client, mut back, _, _) =
        raw_tunnel(addr, &backend, &Req::upgrade("localhost", "/a")).await;

    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.server.shutdown());
    let refused_at = refused(addr).await;
    assert!(
        refused_at - started < GRACE / 2,
        "refusing took {:?}",
        refused_at - started
    );

    // Inside the grace the tunnel still carries bytes both ways.
    client
        .send(frame(true, OP_TEXT, b"in the grace", true))
        .await;
    let up = back
        .read_exact(frame(true, OP_TEXT, b"in the grace", true).len())
        .await;
    assert_eq!(up, frame(true, OP_TEXT, b"in the grace", true));
    back.send(frame(true, OP_TEXT, b"reply", false)).await;
    assert_eq!(
        client
            .read_exact(frame(true, OP_TEXT, b"reply", false).len())
            .await,
        frame(true, OP_TEXT, b"reply", false)
    );
    assert!(
        started.elapsed() < GRACE,
        "the checks inside the grace took too long to mean anything: {:?}",
        started.elapsed()
    );

    // Then both legs are closed, not before the grace is over.
    client.read_to_end().await;
    let closed_after = started.elapsed();
    assert!(closed_after >= GRACE, "closed after only {closed_after:?}");
    back.read_to_end().await;
    within("shutdown to return", shutdown).await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_websocket_tunnel_after_a_short_grace() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace("300ms", "", backend.addr)).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");
    let shutdown = tokio::spawn(proxy.server.shutdown());
    let ended = tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    within("shutdown to return", shutdown).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_as_soon_as_the_last_tunnel_ends() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace("30s", "", backend.addr)).await;
    let addr = proxy.addr;
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.server.shutdown());
    refused(addr).await;
    assert_eq!(round_trip(&mut ws, "last words").await, "last words");
    ws.send(Message::Close(None)).await.unwrap();
    tunnel_end(&mut ws).await;
    // The close handshake is done; the client hangs up (the tunnel relays half-closes, so it
    // lives until both sides have).
    drop(ws);
    within("shutdown to return once no tunnel is left", shutdown)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_nothing_open_returns_at_once() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace("30s", "", backend.addr)).await;
    let started = Instant::now();
    within("shutdown to return", proxy.server.shutdown()).await;
    // Far under the 30 s grace: not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_starts_tls_does_not_hold_shutdown_past_the_grace() {
    // A long handshake timeout, so only the shutdown can end this connection in time.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace(
        "300ms",
        "handshake = \"20s\"\n",
        backend.addr,
    ))
    .await;
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Make sure the proxy has accepted it: a full TLS exchange on another connection.
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);
    let returned = tokio::time::timeout(Duration::from_secs(3), proxy.server.shutdown()).await;
    assert!(
        returned.is_ok(),
        "shutdown still waiting 3 s after it began (grace 300 ms) for a connection \
         that never sent a ClientHello"
    );
    let mut buf = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let read = within("the silent connection to be closed", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_without_a_request_does_not_hold_shutdown_past_the_grace() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace(
        "300ms",
        "handshake = \"20s\"\n",
        backend.addr,
    ))
    .await;
    let mut idle = raw_client(proxy.addr).await;
    let returned = tokio::time::timeout(Duration::from_secs(3), proxy.server.shutdown()).await;
    assert!(
        returned.is_ok(),
        "shutdown still waiting 3 s after it began (grace 300 ms) for an idle TLS connection"
    );
    idle.read_to_end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_live_tunnels_after_the_grace_and_exits_zero() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_with_grace("300ms", "", backend.addr));
    let (child, lines, addr) = started_wsgate(&config);
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    send_signal(child.id(), "TERM");
    let ended = tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    let status = exit_after(child, lines, &["shutdown complete"]).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A `wsgate run` whose port has just been bound (its start not finished yet), with its
/// backend, folder, process and log lines.
async fn bound_just_now() -> (
    WsBackend,
    tempfile::TempDir,
    WsgateChild,
    std::sync::mpsc::Receiver<String>,
) {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_with_grace("300ms", "", backend.addr));
    let mut child = spawn_wsgate(&config);
    let lines = stderr_lines(child.stderr.take().unwrap());
    wait_for_line(&lines, "\"listening\"");
    (backend, dir, child, lines)
}

/// A signal sent as soon as the port is bound (a rollout that replaces a pod just started)
/// drains: the handlers are in place before the listeners, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_the_port_is_bound_drains_and_exits_zero() {
    let (_backend, _dir, child, lines) = bound_just_now().await;
    send_signal(child.id(), "TERM");
    let status = exit_after(child, lines, &["shutdown complete"]).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

/// A launcher that blocked the stop and reload signals before starting wsgate (the mask
/// survives `exec`) does not leave them pending for ever: SIGHUP reloads, SIGTERM drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_blocked_by_the_launcher_are_handled_all_the_same() {
    use std::os::unix::process::CommandExt;
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_with_grace("300ms", "", backend.addr));
    let mut command = wsgate_command(&config, "info");
    // SAFETY: between fork and exec only async-signal-safe calls (sigemptyset, sigaddset,
    // pthread_sigmask), on memory of the child's own stack.
    unsafe {
        command.pre_exec(|| {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
                libc::sigaddset(&mut set, signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = WsgateChild::spawn(&mut command);
    let lines = stderr_lines(child.stderr.take().unwrap());
    wait_for_line(&lines, "wsgate started");
    send_signal(child.id(), "HUP");
    wait_for_line(&lines, "config reloaded");
    send_signal(child.id(), "TERM");
    let status = exit_after(child, lines, &["shutdown complete"]).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

/// SIGUSR1 and SIGUSR2 sent as soon as the port is bound (a log-rotation job's `kill -USR1`
/// landing on a restart) end nothing: the process then drains on SIGTERM as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_and_sigusr2_as_soon_as_the_port_is_bound_end_nothing() {
    let (_backend, _dir, child, lines) = bound_just_now().await;
    send_signal(child.id(), "USR1");
    send_signal(child.id(), "USR2");
    wait_for_line(&lines, "wsgate started");
    send_signal(child.id(), "TERM");
    let status = exit_after(child, lines, &["shutdown complete"]).await;
    assert!(
        status.success(),
        "exits 0 on SIGTERM, not killed by SIGUSR1, got {status:?}"
    );
}

/// SIGQUIT stops gracefully, as it does nginx; SIGUSR1 and SIGUSR2 (a log-rotation job's
/// habit) are noted and end nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_drains_and_sigusr1_and_sigusr2_end_nothing() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_with_grace("300ms", "", backend.addr));
    let (child, lines, addr) = started_wsgate(&config);
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    for name in ["USR1", "USR2"] {
        send_signal(child.id(), name);
        let needle = if name == "USR1" {
            "SIGUSR1: nothing to do"
        } else {
            "SIGUSR2: nothing to do"
        };
        let lines_back = line_seen_owned(&lines, needle).await;
        assert!(lines_back.contains("SIGHUP reloads"), "{lines_back}");
        assert_eq!(round_trip(&mut ws, name).await, name);
    }
    send_signal(child.id(), "QUIT");
    let ended = tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    let status = exit_after(child, lines, &["shutdown complete"]).await;
    assert!(status.success(), "SIGQUIT exits 0, got {status:?}");
}

/// The first line of `lines` containing `needle`, waited for without giving the lines away.
async fn line_seen_owned(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    tokio::task::block_in_place(|| wait_for_line(lines, needle))
}

/// Logging to a pipe whose reader went away (a log shipper that died) loses the lines, not
/// the process: it goes on serving, and SIGTERM still ends it with 0 (it used to panic, 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_closed_by_its_reader_ends_nothing() {
    use std::io::BufRead;
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_with_grace("300ms", "", backend.addr));
    let mut child = spawn_wsgate(&config);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line = || stderr.next().expect("a log line").unwrap();
    let addr = listening_addr(
        &std::iter::repeat_with(&mut next_line)
            .find(|l| l.contains("\"listening\""))
            .unwrap(),
    );
    while !next_line().contains("wsgate started") {}
    drop(stderr);

    // Each tunnel's end writes a line into the broken pipe; the next one is still served.
    for word in ["one", "two"] {
        let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
        assert_eq!(round_trip(&mut ws, word).await, word);
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    send_signal(child.id(), "TERM");
    let status = within(
        "wsgate to exit",
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

/// The exit status of `child`, once its log has had a line containing each of `needles`, in
/// order.
async fn exit_after(
    mut child: WsgateChild,
    lines: std::sync::mpsc::Receiver<String>,
    needles: &'static [&'static str],
) -> std::process::ExitStatus {
    within(
        "wsgate to exit",
        tokio::task::spawn_blocking(move || {
            for needle in needles {
                wait_for_line(&lines, needle);
            }
            child.wait().unwrap()
        }),
    )
    .await
    .unwrap()
}

/// Waits (`what`) until the process's log has a line containing `needle`; gives the lines back.
async fn line_seen(
    lines: std::sync::mpsc::Receiver<String>,
    what: &'static str,
    needle: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    within(
        what,
        tokio::task::spawn_blocking(move || {
            wait_for_line(&lines, needle);
            lines
        }),
    )
    .await
    .unwrap()
}

/// Sends SIGTERM to `child`; returns its first log line containing `needle`, once it has
/// exited after a complete shutdown.
async fn line_after_sigterm(
    mut child: WsgateChild,
    lines: std::sync::mpsc::Receiver<String>,
    needle: &'static str,
) -> String {
    send_signal(child.id(), "TERM");
    within(
        "the connection's end line",
        tokio::task::spawn_blocking(move || {
            let line = wait_for_line(&lines, needle);
            wait_for_line(&lines, "shutdown complete");
            let _ = child.wait();
            line
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_tls_is_logged_when_the_grace_ends() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    // A grace that leaves the server time to take the client's Finished (TLS 1.3's client
    // is done before the server has read it) on a loaded machine.
    let config = write_config(dir.path(), &config_with_grace("1s", "", backend.addr));
    let (child, lines, addr) = started_wsgate(&config);
    // TLS done, request never sent: no request-level line exists for this connection.
    let mut silent = raw_client(addr).await;

    let line = line_after_sigterm(child, lines, "shutdown during request head").await;
    assert!(line.contains("connection closed"), "{line}");
    assert!(silent.try_read_head().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_live_tunnels_without_waiting_for_the_grace_and_a_sighup_does_not()
{
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    // A grace far longer than the test's own time limit: only the second signal can end it.
    let config = write_config(dir.path(), &config_with_grace("1h", "", backend.addr));
    let (child, lines, addr) = started_wsgate(&config);
    let mut ws = ws_connect_ok(addr, "wss://localhost/a").await;
    assert_eq!(round_trip(&mut ws, "before").await, "before");

    send_signal(child.id(), "TERM");
    let lines = line_seen(lines, "shutdown to begin", "shutting down").await;
    assert_eq!(round_trip(&mut ws, "in the grace").await, "in the grace");
    // A SIGHUP in the grace (a deploy hook) neither reloads nor kills; the log says so.
    send_signal(child.id(), "HUP");
    let lines = line_seen(
        lines,
        "the SIGHUP to be answered",
        "SIGHUP: not reloading, shutting down",
    )
    .await;
    assert_eq!(round_trip(&mut ws, "after HUP").await, "after HUP");

    send_signal(child.id(), "TERM");
    let ended = tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    let status = exit_after(child, lines, &["second signal", "shutdown complete"]).await;
    assert!(status.success(), "exits 0, got {status:?}");
}

/// A `wsgate` process with a 200 ms shutdown grace, and a client's upgrade its backend has
/// read and not answered yet.
struct Asked {
    child: WsgateChild,
    lines: std::sync::mpsc::Receiver<String>,
    client: RawConn<Tls>,
    /// The backend's side of the connection the upgrade came on.
    backend: RawConn<tokio::net::TcpStream>,
    _listening: (RawBackend, tempfile::TempDir),
}

impl Asked {
    async fn of_a_backend() -> Asked {
        let listening = RawBackend::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &config_with_grace("200ms", "", listening.addr));
        let (child, lines, addr) = started_wsgate(&config);
        let mut client = raw_client(addr).await;
        client.send(Req::upgrade("localhost", "/a").bytes()).await;
        let mut backend = listening.accept().await;
        backend.read_head().await;
        Asked {
            child,
            lines,
            client,
            backend,
            _listening: (listening, dir),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_waiting_for_its_backend_at_the_end_of_the_grace_says_so() {
    // Not "client went away" (499): the client is still there, the shutdown ended it.
    // Every part bound: a part left out would be dropped here, the backend's connection
    // closed before answering.
    let Asked {
        child,
        lines,
        mut client,
        backend: _silent,
        _listening,
    } = Asked::of_a_backend().await;

    let line = line_after_sigterm(child, lines, "shutdown before the answer").await;
    assert!(line.contains("\"status\":0"), "{line}");
    assert!(line.contains("\"route\":\"a\""), "{line}");
    assert!(client.try_read_head().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_body_is_still_coming_when_the_grace_ends_does_not_hold_the_exit() {
    // The backend's connection is read by a task of its own while the client takes the body:
    // the drain ends it too, and the client's body is cut, not finished or hung.
    let Asked {
        child,
        lines,
        mut client,
        mut backend,
        _listening,
    } = Asked::of_a_backend().await;
    backend
        .send("HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nnot yet")
        .await;
    assert_eq!(client.read_head().await.status, 403);
    assert_eq!(client.read_exact(7).await, b"not yet");

    let line = line_after_sigterm(child, lines, "\"status\":403").await;
    assert!(line.contains("\"route\":\"a\""), "{line}");
    client.expect_closed().await;
}

/// Every connection's end line, whoever writes it (a tunnel, a refusal, a connection that
/// never sent a request), has the one target `wsgate::access_log`, so one `RUST_LOG` directive
/// keeps or drops the whole access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_line_has_the_access_log_target() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[backend.addr]));
    let (mut child, lines, addr) = started_wsgate(&config);
    let url = format!("wss://localhost:{}/a", addr.port());
    let mut ws = ws_connect_ok(addr, &url).await;
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
    drop(ws);
    assert_eq!(upgrade_status(addr, "/nowhere").await, 404);
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    let found = within(
        "the three end lines",
        // In whatever order the three connections end.
        tokio::task::spawn_blocking(move || {
            let needles = ["tunnel closed", "\"status\":404", "\"status\":0"];
            let mut found: [Option<String>; 3] = Default::default();
            while found.iter().any(Option::is_none) {
                let line = lines.recv_timeout(TIMEOUT).expect("an end line");
                if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                    found[i] = Some(line);
                }
            }
            found.map(Option::unwrap_or_default)
        }),
    )
    .await
    .unwrap();
    for line in &found {
        assert!(line.contains("\"target\":\"wsgate::access_log\""), "{line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_arriving_during_the_grace_gets_503_not_a_tunnel_to_be_cut() {
    // Connected before the shutdown, asking after it began: another replica should take it.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&config_with_grace("5s", "", backend.addr)).await;
    let addr = proxy.addr;
    let mut late = raw_client(addr).await;
    let shutdown = tokio::spawn(proxy.server.shutdown());
    refused(addr).await;
    late.send(Req::upgrade("localhost", "/a").bytes()).await;
    let head = late.read_head().await;
    assert_eq!(head.status, 503, "{head:?}");
    assert_eq!(head.get("retry-after"), Some("1"), "{head:?}");
    assert_eq!(
        late.read_body(&head).await,
        b"server shutting down, retry\n"
    );
    within("shutdown to return", shutdown).await.unwrap();
}

/// A server dropped without a shutdown (a test, a program embedding wsgate) frees its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dropped_without_shutdown_stops_accepting() {
    let backend = WsBackend::start("one").await;
    let Proxy { server, addr, .. } = start_proxy(&route("a", "/a", &[backend.addr])).await;
    assert_eq!(upgrade_status(addr, "/a").await, 101);
    drop(server);
    refused(addr).await;
}

/// Closing everything outside a shutdown (the drain cannot be undone) also says the server is
/// not ready, so a balancer stops sending it connections it would only close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_everything_makes_readiness_fail() {
    let backend = WsBackend::start("one").await;
    let proxy = proxy_with_admin(&backend).await;
    let admin = proxy.server.admin_addr().unwrap();
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/chat").await;
    proxy.server.closer().close_now();
    assert_eq!(
        admin_request(admin, "GET", "/readyz").await,
        (503, "shutting down\n".into())
    );
    let ended = tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}
