//! Client certificates (`tls.client_ca`, `tls.client_auth`, a route's
//! `require_client_certificate`): who gets through the TLS handshake, who gets 403, and what
//! backends learn of a verified certificate (`X-Forwarded-Client-Cert`, never the client's
//! own).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The `[tls]` keys asking clients for a certificate of `ca`, written into `dir`, in `mode`.
pub(crate) fn asking(ca: &Pki, dir: &tempfile::TempDir, mode: &str) -> String {
    let path = dir.path().join("client-ca.pem");
    std::fs::write(&path, ca.ca_pem()).unwrap();
    format!(
        "client_ca = \"{}\"\nclient_auth = \"{mode}\"\n\n",
        path.display()
    )
}

/// A proxy asking clients for certificates of `ca` in `mode` (its CA file in `dir`), routing
/// every path to `backend`.
async fn start_asking(ca: &Pki, dir: &tempfile::TempDir, mode: &str, backend: &WsBackend) -> Proxy {
    let routes = route("r", "/", &[backend.addr]);
    start_proxy(&format!("{}{routes}", asking(ca, dir, mode))).await
}

/// [`start_asking`], with its reload status once it has first looked at its files, and
/// its generation then.
async fn asking_proxy(
    ca: &Pki,
    dir: &tempfile::TempDir,
    mode: &str,
    backend: &WsBackend,
) -> (
    Proxy,
    tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    u64,
) {
    let proxy = start_asking(ca, dir, mode, backend).await;
    let (status, before) = proxy.watched().await;
    (proxy, status, before)
}

/// The `X-Forwarded-Client-Cert` hash of the certificate `pem`.
fn hash_of(pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &der_of(pem));
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_verified_certificate_is_told_to_the_backend_and_a_claimed_one_never() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let mut backend = WsBackend::start("devices").await;
    let proxy = start_asking(&clients, &dir, "required", &backend).await;
    let shown = clients.client_leaf("device-7", None);
    let spoofed = [("X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\"")];
    let config = client_config_showing(&shown);
    let mut ws = ws_connect_with(proxy.addr, "wss://localhost/", config, &spoofed)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut ws, "whoami").await, "devices");
    let seen = backend.next_request().await;
    let told = seen.list("x-forwarded-client-cert");
    assert_eq!(
        told,
        [format!(
            "Hash={};Subject=\"CN=device-7\";DNS=\"device-7\"",
            hash_of(&shown.0)
        )],
        "{:?}",
        seen.headers
    );
}

/// Whether the proxy at `addr` answers an upgrade over TLS showing `shown` (or nothing): the
/// status, or `None` if the connection fails first.
pub(crate) async fn answer(
    addr: std::net::SocketAddr,
    path: &str,
    shown: Option<&(String, String)>,
) -> Option<u16> {
    let config = match shown {
        Some(pair) => client_config_showing(pair),
        None => pki().client_config(),
    };
    answer_with(addr, path, config).await.0
}

/// [`answer`] over TLS with `config` (which may hold a session to resume), and whether the
/// session was resumed.
pub(crate) async fn answer_with(
    addr: std::net::SocketAddr,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> (Option<u16>, bool) {
    // Over TLS 1.3 a refused certificate is said after the client's handshake is over, in an
    // alert that fails the first read.
    // Over TLS 1.2 the refusal comes within the handshake.
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = within("the TLS handshake", connector.connect(name, tcp)).await else {
        return (None, false);
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (status_of(&mut tls, path).await, resumed)
}

/// The status of the answer to an upgrade request for `path` sent on `tls`, or `None` if the
/// connection fails first.
pub(crate) async fn status_of(tls: &mut Tls, path: &str) -> Option<u16> {
    let request = Req::upgrade("localhost", path).bytes();
    tls.write_all(request.as_ref()).await.ok()?;
    let mut head = vec![0; 1024];
    let n = within("an answer or a refusal", tls.read(&mut head))
        .await
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    head.split(' ').nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn required_refuses_a_client_without_a_certificate_or_with_a_strangers() {
    let (clients, stranger) = (Pki::new("device CA"), Pki::new("someone else's CA"));
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let proxy = start_asking(&clients, &dir, "required", &backend).await;
    assert_eq!(answer(proxy.addr, "/", None).await, None);
    let strange = stranger.client_leaf("device-7", None);
    assert_eq!(answer(proxy.addr, "/", Some(&strange)).await, None);
    // The right CA's, but made for servers only (extended key usage serverAuth).
    let server_only = clients.leaf(&["device-7"]);
    assert_eq!(answer(proxy.addr, "/", Some(&server_only)).await, None);
    let shown = clients.client_leaf("device-7", None);
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, Some(101));
}

#[tokio::test]
async fn optional_lets_routes_choose_and_403s_where_one_is_required() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let mut public = WsBackend::start("public").await;
    let devices = WsBackend::start("devices").await;
    let body = format!(
        "{}{}{}require_client_certificate = true\n",
        asking(&clients, &dir, "optional"),
        route("public", "/", &[public.addr]),
        route("devices", "/devices", &[devices.addr]),
    );
    let proxy = start_proxy(&body).await;
    // No certificate: the public route, and no claim of one reaches its backend.
    let spoofed = [("X-Forwarded-Client-Cert", "Hash=00")];
    let mut ws = ws_connect_with(
        proxy.addr,
        "wss://localhost/",
        pki().client_config(),
        &spoofed,
    )
    .await
    .unwrap();
    assert_eq!(round_trip(&mut ws, "whoami").await, "public");
    let seen = public.next_request().await;
    assert_eq!(seen.get("x-forwarded-client-cert"), None);
    let (head, body) = request(proxy.addr, Req::upgrade("localhost", "/devices").bytes()).await;
    assert_eq!(head.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "client certificate required\n"
    );
    // With one, both.
    let shown = clients.client_leaf("device-7", None);
    assert_eq!(
        answer(proxy.addr, "/devices", Some(&shown)).await,
        Some(101)
    );
    let config = client_config_showing(&shown);
    let mut ws = ws_connect_with(proxy.addr, "wss://localhost/devices", config, &[])
        .await
        .unwrap();
    within(
        "a send",
        futures_util::SinkExt::send(&mut ws, Message::text("whoami")),
    )
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("devices"));
}

#[tokio::test]
async fn a_renewed_client_ca_file_is_applied_to_new_handshakes() {
    let (old, new) = (Pki::new("old device CA"), Pki::new("new device CA"));
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let (proxy, mut status, before) = asking_proxy(&old, &dir, "required", &backend).await;
    let (kept, renewed) = (old.client_leaf("a", None), new.client_leaf("b", None));
    let config = client_config_showing(&kept);
    let mut ws = ws_connect_with(proxy.addr, "wss://localhost/", config, &[])
        .await
        .unwrap();
    assert_eq!(answer(proxy.addr, "/", Some(&renewed)).await, None);
    std::fs::write(dir.path().join("client-ca.pem"), new.ca_pem()).unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(answer(proxy.addr, "/", Some(&renewed)).await, Some(101));
    assert_eq!(answer(proxy.addr, "/", Some(&kept)).await, None);
    // The tunnel that showed the old CA's certificate is untouched.
    assert_eq!(round_trip(&mut ws, "whoami").await, "devices");
}

#[test]
fn client_auth_and_required_routes_need_a_client_ca_named_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("client_auth = \"optional\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n", "tls.client_auth: needs tls.client_ca"),
        ("[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\nrequire_client_certificate = true\n", "route[0].require_client_certificate: needs tls.client_ca"),
        ("client_ca = \"missing.pem\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n", "tls.client_ca: cannot read certificate"),
    ];
    for (body, expected) in cases {
        let path = write_config(dir.path(), body);
        let message = wsgate::check(&path).unwrap_err().to_string();
        assert!(message.contains(expected), "{message}");
    }
    let body = format!(
        "{}[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n",
        asking(&Pki::new("device CA"), &dir, "optional")
    );
    let (summary, _) = wsgate::check(&write_config(dir.path(), &body)).unwrap();
    assert!(
        summary.contains("1 route(s), client certificates optional"),
        "{summary}"
    );
}

/// rustls checks no trust anchor's dates: a CA of `client_ca` or of a route's
/// `backend_tls.ca` that has expired is still trusted, and said (other TLS stacks refuse what
/// it issued), naming its key.
#[test]
fn an_expired_ca_is_warned_about_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ended = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    let ca = Pki::new_until("old device CA", ended);
    let backend_ca = dir.path().join("backend-ca.pem");
    std::fs::write(&backend_ca, ca.ca_pem()).unwrap();
    let body = format!(
        "{}[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\nbackend_tls = {{ ca = \"{}\" }}\n",
        asking(&ca, &dir, "optional"),
        backend_ca.display()
    );
    let (_, warnings) = wsgate::check(&write_config(dir.path(), &body)).unwrap();
    for key in ["tls.client_ca", "route[0].backend_tls.ca"] {
        let said = warnings.iter().find(|w| w.contains(key));
        let said = said.unwrap_or_else(|| panic!("{key}: {warnings:#?}"));
        assert!(
            said.contains("CA certificate 1 (\"CN=old device CA\") expired at"),
            "{said}"
        );
        assert!(said.contains("wsgate still trusts it"), "{said}");
    }
}

/// A client's own certificate pasted where its CA belongs loads, and no certificate chains to
/// it: said, for `client_ca` and a route's `backend_tls.ca` alike.
#[test]
fn a_certificate_that_is_no_ca_named_as_a_ca_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, _) = Pki::new("device CA").client_leaf("device-7", None);
    let pasted = dir.path().join("device-7.pem");
    std::fs::write(&pasted, &leaf).unwrap();
    let body = format!(
        "client_ca = \"{0}\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\nbackend_tls = {{ ca = \"{0}\" }}\n",
        pasted.display()
    );
    let (_, warnings) = wsgate::check(&write_config(dir.path(), &body)).unwrap();
    for key in ["tls.client_ca", "route[0].backend_tls.ca"] {
        let said = warnings.iter().find(|w| w.contains(key));
        let said = said.unwrap_or_else(|| panic!("{key}: {warnings:#?}"));
        assert!(said.contains("is no CA certificate"), "{said}");
    }
    // The CA itself is not.
    let body = format!(
        "{}[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n",
        asking(&Pki::new("device CA"), &dir, "optional")
    );
    let (_, warnings) = wsgate::check(&write_config(dir.path(), &body)).unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("no CA")),
        "{warnings:#?}"
    );
}

#[tokio::test]
async fn a_resumed_session_is_checked_against_the_client_ca_in_force() {
    // rustls restores a resumed session's certificate as it was checked when the session
    // began: wsgate checks it again, so a CA taken out of client_ca is out for resumed
    // sessions too (TLS 1.3 tickets, TLS 1.2 session IDs and tickets alike).
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (old, new) = (Pki::new("old device CA"), Pki::new("new device CA"));
        let dir = tempfile::tempdir().unwrap();
        let mut backend = WsBackend::start("devices").await;
        let (proxy, mut status, before) = asking_proxy(&old, &dir, "required", &backend).await;
        let shown = old.client_leaf("device-7", None);
        let client = client_config_for(Some(&shown), &[version]);
        assert_eq!(
            answer_with(proxy.addr, "/", client.clone()).await,
            (Some(101), false)
        );
        // Resumed under the same config: taken, and the backend told of the certificate.
        let mut ws = ws_connect_with(proxy.addr, "wss://localhost/", client.clone(), &[])
            .await
            .unwrap();
        assert_eq!(round_trip(&mut ws, "whoami").await, "devices");
        let _first = backend.next_request().await;
        let seen = backend.next_request().await;
        let told = seen.get("x-forwarded-client-cert").unwrap_or_default();
        assert!(
            told.contains("Subject=\"CN=device-7\""),
            "{version:?}: {told}"
        );
        assert_eq!(
            answer_with(proxy.addr, "/", client.clone()).await,
            (Some(101), true)
        );
        std::fs::write(dir.path().join("client-ca.pem"), new.ca_pem()).unwrap();
        generation(&mut status, before + 1).await;
        let (answered, resumed) = answer_with(proxy.addr, "/", client.clone()).await;
        assert_eq!(answered, None, "{version:?}: resumed {resumed}");
    }
}

#[tokio::test]
async fn a_session_begun_before_client_ca_cannot_resume_past_it() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let routes = route("r", "/", &[backend.addr]);
    let proxy = start_proxy(&routes).await;
    let (mut status, before) = proxy.watched().await;
    let client = client_config_for(None, &[&rustls::version::TLS13]);
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), false)
    );
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), true)
    );
    let asked = format!(
        "{CONFIG_HEAD}{}{routes}",
        asking(&clients, &dir, "required")
    );
    std::fs::write(proxy.config_path(), asked).unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(answer_with(proxy.addr, "/", client.clone()).await.0, None);
    assert_eq!(answer(proxy.addr, "/", None).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_file_gone_for_a_while_is_no_failure() {
    // A Secret's ca.crt renewed by `rm; cp`: the gap is waited out, the config in force kept.
    let (old, new) = (Pki::new("old device CA"), Pki::new("new device CA"));
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let (proxy, mut status, before) = asking_proxy(&old, &dir, "required", &backend).await;
    let ca = dir.path().join("client-ca.pem");
    std::fs::remove_file(&ca).unwrap();
    let gone = status_where(&mut status, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains("tls.client_ca: ") && error.ends_with("client-ca.pem not found"),
        "{error}"
    );
    assert_eq!((gone.generation, gone.failures), (before, 0));
    let shown = old.client_leaf("device-7", None);
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, Some(101));
    std::fs::write(&ca, new.ca_pem()).unwrap();
    let back = generation(&mut status, before + 1).await;
    assert_eq!((back.failures, back.last_error), (0, None));
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, None);
}

#[tokio::test]
async fn a_request_is_judged_by_the_client_ca_in_force_when_it_is_routed() {
    // A client that shakes hands under one config and sends its head after a reload is judged
    // by the config it is routed by: a CA taken out refuses it (403), and with no client_ca
    // left nothing is told of its certificate.
    let (old, new) = (Pki::new("old device CA"), Pki::new("new device CA"));
    let dir = tempfile::tempdir().unwrap();
    let mut backend = WsBackend::start("devices").await;
    let routes = route("r", "/", &[backend.addr]);
    let proxy = start_proxy(&format!("{}{routes}", asking(&old, &dir, "required"))).await;
    let (mut status, before) = proxy.watched().await;
    let kept = client_config_showing(&old.client_leaf("device-7", None));
    let mut early = tls_connect_with(proxy.addr, "localhost", kept).await;
    std::fs::write(dir.path().join("client-ca.pem"), new.ca_pem()).unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(status_of(&mut early, "/").await, Some(403));
    let renewed = client_config_showing(&new.client_leaf("device-8", None));
    let mut early = tls_connect_with(proxy.addr, "localhost", renewed).await;
    std::fs::write(proxy.config_path(), format!("{CONFIG_HEAD}{routes}")).unwrap();
    generation(&mut status, before + 2).await;
    assert_eq!(status_of(&mut early, "/").await, Some(101));
    let seen = backend.next_request().await;
    assert_eq!(
        seen.get("x-forwarded-client-cert"),
        None,
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn sessions_begun_under_other_client_cas_are_not_resumed_but_begun_anew() {
    // A change of client_ca ends the resumption of sessions begun before it: a client gets a
    // full handshake checked by the new CAs, not a resumed session refused again and again.
    // Sessions survive a reload that leaves client_ca as it is.
    let (old, new) = (Pki::new("old device CA"), Pki::new("new device CA"));
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let routes = route("r", "/", &[backend.addr]);
    let proxy = start_proxy(&format!("{}{routes}", asking(&old, &dir, "optional"))).await;
    let (mut status, before) = proxy.watched().await;
    let client = client_config_for(None, &[&rustls::version::TLS13]);
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), false)
    );
    // A reload that changes nothing about clients: the session resumes.
    let renamed = routes.replace("name = \"r\"", "name = \"renamed\"");
    std::fs::write(
        proxy.config_path(),
        format!("{CONFIG_HEAD}{}{renamed}", asking(&old, &dir, "optional")),
    )
    .unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), true)
    );
    std::fs::write(dir.path().join("client-ca.pem"), new.ca_pem()).unwrap();
    generation(&mut status, before + 2).await;
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), false)
    );
}

#[tokio::test]
async fn a_resumed_session_whose_certificate_has_expired_since_is_refused() {
    // Within one way of checking clients, sessions resume, and rustls restores their
    // certificate unchecked: one that has run out since the session began is refused.
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let proxy = start_asking(&clients, &dir, "required", &backend).await;
    // X.509 times count whole seconds: valid for the next seven at least, time for two
    // upgrades on a loaded machine.
    let now = std::time::SystemTime::now();
    let unix = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix + 8);
    let shown = clients.client_leaf_until("device-7", until);
    let client = client_config_for(Some(&shown), &[&rustls::version::TLS13]);
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), false)
    );
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), true)
    );
    // Nothing to await but the clock.
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(1100)).await;
    let (answered, resumed) = answer_with(proxy.addr, "/", client.clone()).await;
    assert_eq!((answered, resumed), (None, true));
}
