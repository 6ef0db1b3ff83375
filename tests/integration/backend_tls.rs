//! `backend_tls`: a route's backends spoken to in TLS (`wss://` backends), their certificates
//! checked against the route's CA file and the backend's host or `server_name`; a backend
//! that fails the check is as one that closed before answering.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::admin::{metrics, sample, scrape_until, ADMIN};
use crate::support::*;

/// A backend CA's certificate written to a folder of its own; the route's `backend_tls` line.
fn trusting(ca: &Pki, dir: &tempfile::TempDir, server_name: Option<&str>) -> String {
    let path = dir.path().join("backend-ca.pem");
    std::fs::write(&path, ca.ca_pem()).unwrap();
    let name = server_name.map_or(String::new(), |n| format!(", server_name = \"{n}\""));
    format!("backend_tls = {{ ca = \"{}\"{name} }}\n", path.display())
}

fn tls_route(backends: &[std::net::SocketAddr], tls: &str) -> String {
    format!("{}\n{tls}\n", route("chat", "/ws", backends).trim_end())
}

#[tokio::test]
async fn a_tls_backend_is_reached_and_bytes_pass_both_ways() {
    let ca = Pki::new("backend CA");
    let mut backend = WsBackend::start_tls("secure", &ca, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&tls_route(&[backend.addr], &trusting(&ca, &dir, None))).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/ws?room=1").await;
    let seen = backend.next_request().await;
    assert_eq!(seen.target, "/ws?room=1");
    assert_eq!(seen.get("x-forwarded-proto"), Some("https"));
    assert_eq!(round_trip(&mut ws, "whoami").await, "secure");
    // Larger than a TLS record both ways, so the relay goes through many of them.
    let big = Message::binary(
        (0..3 << 20)
            .map(|i: u32| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    within("a send", ws.send(big.clone())).await.unwrap();
    assert!(
        next_message(&mut ws).await == big,
        "the big message came back changed"
    );
    // A close code reaches the backend through its TLS, and the backend's own back.
    let close = CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    };
    within("a close", ws.close(Some(close.clone())))
        .await
        .unwrap();
    assert_eq!(backend.next_message().await, Message::text("whoami"));
    assert!(
        backend.next_message().await == big,
        "the big message reached the backend changed"
    );
    assert_eq!(
        backend.next_message().await,
        Message::Close(Some(close.clone()))
    );
    assert_eq!(next_message(&mut ws).await, Message::Close(Some(close)));
}

#[tokio::test]
async fn a_backend_closing_its_tunnel_closes_the_clients() {
    let ca = Pki::new("backend CA");
    let backend = WsBackend::start_tls("secure", &ca, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&tls_route(&[backend.addr], &trusting(&ca, &dir, None))).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/ws").await;
    within("a send", ws.send(Message::text("close 4002 done")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(4002),
            reason: "done".into(),
        }))
    );
}

#[tokio::test]
async fn server_name_is_the_name_the_backends_certificate_is_checked_for() {
    let ca = Pki::new("backend CA");
    let backend = WsBackend::start_tls("named", &ca, &["app.internal"]).await;
    let dir = tempfile::tempdir().unwrap();
    // Dialed at 127.0.0.1, but the certificate names app.internal: so must the route.
    let named = tls_route(&[backend.addr], &trusting(&ca, &dir, Some("app.internal")));
    let proxy = start_proxy(&named).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "named"
    );
    // Without it, the certificate is checked for the address dialed, and fails.
    let unnamed = tls_route(&[backend.addr], &trusting(&ca, &dir, None));
    let proxy = start_proxy(&format!("{ADMIN}{unnamed}")).await;
    assert_eq!(upgrade_status(proxy.addr, "/ws").await, 502);
    let failed = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{}",error="tls"}}"#,
        backend.addr
    );
    scrape_until(proxy.server.admin_addr().unwrap(), &failed, 1.0).await;
}

#[tokio::test]
async fn an_untrusted_backend_is_skipped_for_the_next_one() {
    // [untrusted, trusted]: the first request finds the untrusted one's certificate refused
    // and goes on to the trusted one, as after a backend that closed before answering; the
    // client never sees the failure.
    let (ca, stranger) = (Pki::new("backend CA"), Pki::new("someone else's CA"));
    let untrusted = WsBackend::start_tls("untrusted", &stranger, &["127.0.0.1"]).await;
    let trusted = WsBackend::start_tls("trusted", &ca, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let body = tls_route(&[untrusted.addr, trusted.addr], &trusting(&ca, &dir, None));
    let proxy = start_proxy(&format!("[timeouts]\nbackend_cooldown = \"1h\"\n\n{body}")).await;
    for _ in 0..3 {
        assert_eq!(
            which_backend(proxy.addr, "wss://localhost/ws").await,
            "trusted"
        );
    }
}

/// A backend that takes every connection and closes it at once.
async fn closing() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_never_finishes_the_tls_handshake_is_skipped_for_the_next_one() {
    // [silent, trusted]: the silent one takes the connection and never answers the
    // ClientHello (a hung server, or a plain one waiting for a request line). Nothing of the
    // request reached it: after its share of the connect time the trusted one takes it.
    let ca = Pki::new("backend CA");
    let silent = BlackHole::start().await;
    let trusted = WsBackend::start_tls("trusted", &ca, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let body = tls_route(&[silent.addr, trusted.addr], &trusting(&ca, &dir, None));
    let timeouts = "[timeouts]\nconnect = \"2s\"\nbackend_cooldown = \"1h\"\n\n";
    let proxy = start_proxy(&format!("{timeouts}{body}")).await;
    for _ in 0..3 {
        assert_eq!(
            which_backend(proxy.addr, "wss://localhost/ws").await,
            "trusted"
        );
    }
    // Three of them first: each had an even share of what was left, and is no close (which
    // would give the request up after three), so the fourth is reached.
    let more = [BlackHole::start().await, BlackHole::start().await];
    let behind = [silent.addr, more[0].addr, more[1].addr, trusted.addr];
    let body = tls_route(&behind, &trusting(&ca, &dir, None));
    let proxy = start_proxy(&format!("[timeouts]\nconnect = \"3s\"\n\n{body}")).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "trusted"
    );
    // Nor after two that closed (a third close would give the request up).
    let behind = [closing().await, closing().await, silent.addr, trusted.addr];
    let body = tls_route(&behind, &trusting(&ca, &dir, None));
    let proxy = start_proxy(&format!("[timeouts]\nconnect = \"3s\"\n\n{body}")).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "trusted"
    );
    // Alone, it has the whole time, and its client a 504.
    let proxy = start_proxy(&format!(
        "[timeouts]\nconnect = \"1s\"\n\n{}",
        tls_route(&[silent.addr], &trusting(&ca, &dir, None))
    ))
    .await;
    let (head, _) = request(proxy.addr, Req::upgrade("localhost", "/ws").bytes()).await;
    assert_eq!(head.status, 504);
}

#[tokio::test]
async fn backends_that_never_finish_the_tls_handshake_are_a_504_with_or_without_others() {
    // Four silent ones (more than a request tries after closes), or one silent and one
    // refusing: out of time, not a backend error.
    let ca = Pki::new("backend CA");
    let dir = tempfile::tempdir().unwrap();
    let holes = [
        BlackHole::start().await,
        BlackHole::start().await,
        BlackHole::start().await,
        BlackHole::start().await,
    ];
    let four: Vec<_> = holes.iter().map(|hole| hole.addr).collect();
    for backends in [four, vec![holes[0].addr, closed_port().await]] {
        let body = tls_route(&backends, &trusting(&ca, &dir, None));
        let proxy = start_proxy(&format!("[timeouts]\nconnect = \"1s\"\n\n{body}")).await;
        let (head, _) = request(proxy.addr, Req::upgrade("localhost", "/ws").bytes()).await;
        assert_eq!(head.status, 504, "{backends:?}");
    }
}

#[tokio::test]
async fn a_plain_backend_on_a_tls_route_is_502_with_the_reason_logged_not_sent() {
    let plain = WsBackend::start("plain").await;
    let (ca, dir) = (Pki::new("backend CA"), tempfile::tempdir().unwrap());
    let proxy = start_proxy(&tls_route(&[plain.addr], &trusting(&ca, &dir, None))).await;
    let (head, body) = request(proxy.addr, Req::upgrade("localhost", "/ws").bytes()).await;
    assert_eq!(head.status, 502);
    assert_eq!(String::from_utf8_lossy(&body), "backend error\n");
}

#[tokio::test]
async fn a_renewed_ca_file_is_trusted_from_the_next_handshake() {
    // The backend's certificate is renewed by a new CA, and the route's CA file rewritten
    // with it (a cert-manager Secret's ca.crt): the reload that follows trusts it.
    let (old, new) = (Pki::new("old backend CA"), Pki::new("new backend CA"));
    let backend = WsBackend::start_tls("renewed", &new, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&tls_route(&[backend.addr], &trusting(&old, &dir, None))).await;
    let mut status = proxy.server.reload_status();
    let before = status.borrow().generation;
    assert_eq!(upgrade_status(proxy.addr, "/ws").await, 502);
    first_look(&mut status).await;
    std::fs::write(dir.path().join("backend-ca.pem"), new.ca_pem()).unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "renewed"
    );
}

#[test]
fn a_ca_file_that_cannot_be_trusted_is_named_with_its_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("backend-ca.pem");
    let body = format!(
        "[[route]]\nname = \"chat\"\npath = \"/ws\"\nbackends = [\"127.0.0.1:9443\"]\nbackend_tls = {{ ca = \"{}\" }}\n",
        ca.display()
    );
    let path = write_config(dir.path(), &body);
    let at = format!("{}:11:22: route[0].backend_tls.ca: ", path.display());
    let (_, key) = pki().leaf(&["localhost"]);
    let cases = [
        (None, "cannot read certificate"),
        (Some("not a certificate\n".to_string()), "no certificate in"),
        (Some(key), "it holds a private key"),
    ];
    for (content, expected) in cases {
        if let Some(content) = &content {
            std::fs::write(&ca, content).unwrap();
        }
        let message = wsgate::check(&path).unwrap_err().to_string();
        assert!(message.starts_with(&at), "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&ca.display().to_string()), "{message}");
    }
    std::fs::write(&ca, Pki::new("backend CA").ca_pem()).unwrap();
    assert!(wsgate::check(&path).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_gone_for_a_while_is_no_failure_and_its_return_is_applied() {
    // A Secret's ca.crt renewed by `rm; cp`: the gap is waited out, as a served certificate's
    // is, and the tunnels and the config in force are untouched meanwhile.
    let (old, new) = (Pki::new("old backend CA"), Pki::new("new backend CA"));
    let backend = WsBackend::start_tls("secure", &old, &["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&tls_route(&[backend.addr], &trusting(&old, &dir, None))).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/ws").await;
    let ca = dir.path().join("backend-ca.pem");
    std::fs::remove_file(&ca).unwrap();
    let gone = status_where(&mut rx, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains("route[0].backend_tls.ca: ") && error.ends_with("backend-ca.pem not found"),
        "{error}"
    );
    assert_eq!((gone.generation, gone.failures), (1, 0));
    assert_eq!(round_trip(&mut ws, "whoami").await, "secure");
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "secure"
    );
    // Back with another CA's certificate: applied, and the backend no longer trusted.
    std::fs::write(&ca, new.ca_pem()).unwrap();
    let back = generation(&mut rx, 2).await;
    assert_eq!((back.failures, back.last_error), (0, None));
    assert_eq!(upgrade_status(proxy.addr, "/ws").await, 502);
    assert_eq!(round_trip(&mut ws, "still here").await, "still here");
}

#[tokio::test]
async fn a_backend_speaking_only_tls_1_2_is_reached() {
    // A full TLS 1.2 handshake ends on the server's Finished, after which the client speaks
    // first: wsgate must not wait to read there.
    let ca = Pki::new("backend CA");
    let tls12 = ca.server_config_for(&["127.0.0.1"], &[&rustls::version::TLS12]);
    let backend = WsBackend::start_with("tls12", Some(tls12)).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&tls_route(&[backend.addr], &trusting(&ca, &dir, None))).await;
    for _ in 0..2 {
        assert_eq!(
            which_backend(proxy.addr, "wss://localhost/ws").await,
            "tls12"
        );
    }
}

/// What a TLS backend at one address does with the first connection it takes, once it has
/// the ClientHello (in the handshake, not the connect).
#[derive(Clone, Copy)]
enum First {
    /// Resets it: a pod going away behind a cluster IP.
    Reset,
    /// Holds it and never answers: a hung pod behind it.
    Stall,
}

/// A TLS backend at one address that does `first` with the first connection it takes and
/// serves every later one: `(its address, its WebSocket backend)`.
async fn odd_first(ca: &Pki, first: First) -> (std::net::SocketAddr, WsBackend) {
    let backend = WsBackend::start_tls("after the first", ca, &["127.0.0.1"]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = backend.addr;
    tokio::spawn(async move {
        let (mut taken, _) = listener.accept().await.unwrap();
        let _ = tokio::io::AsyncReadExt::read(&mut taken, &mut [0u8; 1]).await;
        let _held = match first {
            First::Reset => {
                taken.set_zero_linger().unwrap();
                drop(taken);
                None
            }
            First::Stall => Some(taken),
        };
        // Later connections go on to the real backend, byte for byte.
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut to = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut to).await;
            });
        }
    });
    (addr, backend)
}

#[tokio::test]
async fn a_lone_tls_backend_reset_during_the_handshake_is_dialed_again() {
    // A reset is a close, not a certificate refused: as with a plain backend, the route's
    // only address is dialed again, and the failure counted as a close.
    a_lone_tls_backend_is_dialed_again_after(First::Reset, "closed").await;
}

#[tokio::test]
async fn a_lone_tls_backend_stalled_in_the_handshake_is_dialed_again() {
    // The route's only address, a cluster IP say: the next connection may reach another
    // pod, so a stall has a share of the time (half, then a quarter: the address is tried at
    // most three times, the last with all that is left), and the address is dialed again
    // after it, the stall counted as a timeout.
    a_lone_tls_backend_is_dialed_again_after(First::Stall, "timeout").await;
}

/// A route's only backend, at one address, doing `first` with its first connection: the
/// request reaches it on the next, and the first is counted as `error`.
async fn a_lone_tls_backend_is_dialed_again_after(first: First, error: &str) {
    let ca = Pki::new("backend CA");
    let (addr, _backend) = odd_first(&ca, first).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&format!(
        "{ADMIN}[timeouts]\nconnect = \"2s\"\n\n{}",
        tls_route(&[addr], &trusting(&ca, &dir, None))
    ))
    .await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/ws").await,
        "after the first"
    );
    let counted = format!(
        r#"wsgate_backend_connect_failures_total{{route="chat",backend="{addr}",error="{error}"}}"#
    );
    scrape_until(proxy.server.admin_addr().unwrap(), &counted, 1.0).await;
}

/// A client certificate `issuer` signed for wsgate, written as `client.crt` and `client.key`
/// into `dir`, valid as given (if given).
fn write_client(issuer: &Pki, dir: &tempfile::TempDir, validity: Option<(Ymd, Ymd)>) {
    let (cert, key) = issuer.client_leaf("wsgate", validity);
    std::fs::write(dir.path().join("client.crt"), cert).unwrap();
    std::fs::write(dir.path().join("client.key"), key).unwrap();
}

/// [`trusting`] `ca`, showing backends a client certificate `issuer` signed, written beside
/// the CA file.
fn showing(ca: &Pki, issuer: &Pki, dir: &tempfile::TempDir) -> String {
    write_client(issuer, dir, None);
    let files = format!(
        ", cert = \"{}\", key = \"{}\" }}",
        dir.path().join("client.crt").display(),
        dir.path().join("client.key").display()
    );
    trusting(ca, dir, None).replace(" }", &files)
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test]
async fn a_backend_asking_for_a_client_certificate_is_shown_the_routes() {
    let (ca, clients) = (Pki::new("backend CA"), Pki::new("client CA"));
    let dir = tempfile::tempdir().unwrap();
    let tls = showing(&ca, &clients, &dir);
    for versions in [TLS13, TLS12] {
        let asking = ca.server_config_asking(&["127.0.0.1"], versions, &clients);
        let mut backend = WsBackend::start_with("mutual", Some(asking)).await;
        let proxy = start_proxy(&format!("{ADMIN}{}", tls_route(&[backend.addr], &tls))).await;
        let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/ws").await;
        assert_eq!(backend.next_request().await.target, "/ws");
        assert_eq!(round_trip(&mut ws, "whoami").await, "mutual");
        // Its expiry is exported beside the served certificate's (rcgen's default notAfter:
        // 4096-01-01T00:00:00Z).
        let text = metrics(proxy.server.admin_addr().unwrap()).await;
        let series = format!(
            r#"wsgate_certificate_expiry_timestamp_seconds{{file="{}"}}"#,
            dir.path().join("client.crt").display()
        );
        assert_eq!(sample(&text, &series), Some(67_090_118_400.0), "{text}");
    }
}

#[tokio::test]
async fn a_backend_refusing_the_client_certificate_is_a_tls_failure() {
    // No certificate, or one of a CA the backend does not trust: over TLS 1.3 the backend
    // refuses once the handshake is over on wsgate's side, over TLS 1.2 within it. Either
    // way a TLS failure, counted as one (error="tls"), and the address not dialed again.
    let (ca, clients, stranger) = (
        Pki::new("backend CA"),
        Pki::new("client CA"),
        Pki::new("someone else's client CA"),
    );
    let (none, strange) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let refused = [
        trusting(&ca, &none, None),
        showing(&ca, &stranger, &strange),
    ];
    for versions in [TLS13, TLS12] {
        let asking = ca.server_config_asking(&["127.0.0.1"], versions, &clients);
        let backend = WsBackend::start_with("mutual", Some(asking)).await;
        for tls in &refused {
            let proxy = start_proxy(&format!("{ADMIN}{}", tls_route(&[backend.addr], tls))).await;
            let (head, body) = request(proxy.addr, Req::upgrade("localhost", "/ws").bytes()).await;
            assert_eq!(head.status, 502, "{versions:?} {tls}");
            assert_eq!(String::from_utf8_lossy(&body), "backend error\n");
            let failed = format!(
                r#"wsgate_backend_connect_failures_total{{route="chat",backend="{}",error="tls"}}"#,
                backend.addr
            );
            scrape_until(proxy.server.admin_addr().unwrap(), &failed, 1.0).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_shown_from_the_next_handshake() {
    // The backends now trust only a new client CA, and wsgate's certificate is renewed by it
    // on disk, its key first gone for a while (`rm; cp`): the gap is waited out, the reload
    // that follows shows the new certificate, and a tunnel opened before keeps running.
    let (ca, old, new) = (
        Pki::new("backend CA"),
        Pki::new("old client CA"),
        Pki::new("new client CA"),
    );
    let dir = tempfile::tempdir().unwrap();
    let tls = showing(&ca, &old, &dir);
    let before = ca.server_config_asking(&["127.0.0.1"], TLS13, &old);
    let kept = WsBackend::start_with("old", Some(before)).await;
    let after = ca.server_config_asking(&["127.0.0.1"], TLS13, &new);
    let renewed = WsBackend::start_with("new", Some(after)).await;
    let routes = format!(
        "{}{}",
        tls_route(&[kept.addr], &tls),
        tls_route(&[renewed.addr], &tls)
            .replace("\"chat\"", "\"renewed\"")
            .replace("\"/ws\"", "\"/renewed\"")
    );
    let proxy = start_proxy(&routes).await;
    let mut status = proxy.server.reload_status();
    let generation_before = status.borrow().generation;
    first_look(&mut status).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/ws").await;
    assert_eq!(upgrade_status(proxy.addr, "/renewed").await, 502);
    std::fs::remove_file(dir.path().join("client.key")).unwrap();
    let gone = status_where(&mut status, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains("route[0].backend_tls.key: ") && error.ends_with("client.key not found"),
        "{error}"
    );
    assert_eq!((gone.generation, gone.failures), (generation_before, 0));
    write_client(&new, &dir, None);
    generation(&mut status, generation_before + 1).await;
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/renewed").await,
        "new"
    );
    assert_eq!(round_trip(&mut ws, "whoami").await, "old");
}

#[test]
fn a_client_certificate_and_key_are_checked_as_a_pair_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (Pki::new("backend CA"), Pki::new("client CA"));
    let tls = showing(&ca, &clients, &dir);
    let body = tls_route(&["127.0.0.1:9443".parse().unwrap()], &tls);
    let path = write_config(dir.path(), &body);
    let (summary, _) = wsgate::check(&path).unwrap();
    assert!(
        summary.contains("1 route(s), 1 backend client certificate(s)"),
        "{summary}"
    );
    let key = dir.path().join("client.key");
    let (_, other_key) = clients.client_leaf("wsgate", None);
    std::fs::write(&key, other_key).unwrap();
    let message = wsgate::check(&path).unwrap_err().to_string();
    let at = format!("{}:11:", path.display());
    assert!(
        message.starts_with(&at)
            && message.contains("route[0].backend_tls: ")
            && message.contains("does not match certificate"),
        "{message}"
    );
    std::fs::write(&key, "not a key\n").unwrap();
    let message = wsgate::check(&path).unwrap_err().to_string();
    assert!(
        message.contains("route[0].backend_tls.key: ")
            && message.contains("cannot read private key"),
        "{message}"
    );
    // An expired one loads (a backend that asks decides), with a warning at every load.
    write_client(&clients, &dir, Some(((2019, 1, 1), (2020, 6, 30))));
    let (_, warnings) = wsgate::check(&path).unwrap();
    let warned = warnings.iter().any(|w| {
        w.contains("route[0].backend_tls.cert: ")
            && w.ends_with(
                "client.crt: certificate has expired; backends asking for it will refuse it",
            )
    });
    assert!(warned, "{warnings:?}");
    // A certificate for both uses, served and shown to backends, is warned about once.
    let (cert, key) = pki().leaf_until(SERVER_NAMES, Some((2020, 6, 30)));
    std::fs::write(dir.path().join("server.crt"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let both = std::fs::read_to_string(&path)
        .unwrap()
        .replace("client.crt", "server.crt")
        .replace("client.key", "server.key");
    std::fs::write(&path, both).unwrap();
    let (_, warnings) = wsgate::check(&path).unwrap();
    let expired = (warnings.iter()).filter(|w| w.contains("server.crt: certificate has expired"));
    assert_eq!(expired.count(), 1, "{warnings:?}");
}

#[tokio::test]
async fn a_refused_client_certificate_is_logged_with_the_backends_alert() {
    // What the operator reads to tell "show a certificate" from "not this one", from the
    // binary's own log line.
    let (ca, clients, stranger) = (
        Pki::new("backend CA"),
        Pki::new("client CA"),
        Pki::new("someone else's client CA"),
    );
    let asking = ca.server_config_asking(&["127.0.0.1"], TLS13, &clients);
    let backend = WsBackend::start_with("mutual", Some(asking)).await;
    let (none, strange) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cases = [
        (trusting(&ca, &none, None), &none, "CertificateRequired"),
        (showing(&ca, &stranger, &strange), &strange, "UnknownCA"),
    ];
    for (tls, dir, alert) in cases {
        let path = write_config(dir.path(), &tls_route(&[backend.addr], &tls));
        let (_wsgate, lines, addr) = started_wsgate(&path);
        assert_eq!(upgrade_status(addr, "/ws").await, 502);
        let line = line_containing(lines, "connection closed").await;
        let reason = format!("backend TLS handshake failed: received fatal alert: {alert}");
        assert!(line.contains(&reason), "{line}");
    }
}
