//! Revocation lists for client certificates (`tls.client_crl`): a revoked certificate is
//! refused in the handshake, and after a new list also on resumption and at a request that
//! was waiting, while tunnels already open run on (unless `tls.recheck_tunnels` has them
//! check again); a list that cannot be used is an error at its line, and one overdue a
//! warning.

use crate::admin::{metrics, sample, scrape_until, ADMIN};
use crate::client_cert::{answer, answer_with, asking, status_of};
use crate::support::*;
use tokio_tungstenite::tungstenite::Message;

/// A week from now: a list's `nextUpdate` that is not overdue.
fn in_a_week() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(7)
}

/// The `[tls]` keys asking for certificates of `ca` (required), checked against the lists in
/// `dir`'s `clients.crl`, which holds `lists`; tunnels rechecked if `recheck`.
fn rechecking(ca: &Pki, dir: &tempfile::TempDir, lists: &[u8], recheck: bool) -> String {
    let file = dir.path().join("clients.crl");
    std::fs::write(&file, lists).unwrap();
    format!(
        "{}client_crl = \"{}\"\nrecheck_tunnels = {recheck}\n\n",
        asking(ca, dir, "required"),
        file.display()
    )
}

/// [`rechecking`]'s keys, without rechecks, and a route to `backend`.
fn revoking(ca: &Pki, dir: &tempfile::TempDir, lists: &[u8], backend: &WsBackend) -> String {
    let routes = route("r", "/", &[backend.addr]);
    format!("{}{routes}", rechecking(ca, dir, lists, false))
}

/// A proxy started on [`revoking`]'s config, its reload status once it has first looked at
/// its files, and its generation then.
async fn revoking_proxy(
    ca: &Pki,
    dir: &tempfile::TempDir,
    lists: &[u8],
    backend: &WsBackend,
) -> (
    Proxy,
    tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    u64,
) {
    let proxy = start_proxy(&revoking(ca, dir, lists, backend)).await;
    let (status, before) = proxy.watched().await;
    (proxy, status, before)
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_the_others_taken_from_a_pem_or_a_der_list() {
    let clients = Pki::new("device CA");
    let backend = WsBackend::start("devices").await;
    let (lost, kept) = (
        clients.client_leaf("lost-phone", None),
        clients.client_leaf("device-7", None),
    );
    let list = clients.crl(&[&lost.0], in_a_week());
    for lists in [list.pem().unwrap().into_bytes(), list.der().to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let proxy = start_proxy(&revoking(&clients, &dir, &lists, &backend)).await;
        assert_eq!(answer(proxy.addr, "/", Some(&lost)).await, None);
        assert_eq!(answer(proxy.addr, "/", Some(&kept)).await, Some(101));
    }
}

#[tokio::test]
async fn a_new_list_refuses_handshakes_resumptions_and_waiting_requests_but_not_tunnels() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let none_revoked = clients.crl(&[], in_a_week()).pem().unwrap();
    let (proxy, mut status, before) =
        revoking_proxy(&clients, &dir, none_revoked.as_bytes(), &backend).await;
    let shown = clients.client_leaf("device-7", None);
    let client = client_config_for(Some(&shown), &[&rustls::version::TLS13]);
    assert_eq!(
        answer_with(proxy.addr, "/", client.clone()).await,
        (Some(101), false)
    );
    let mut tunnel = ws_connect_with(proxy.addr, "wss://localhost/", client.clone(), &[])
        .await
        .unwrap();
    assert_eq!(round_trip(&mut tunnel, "whoami").await, "devices");
    let mut waiting =
        tls_connect_with(proxy.addr, "localhost", client_config_showing(&shown)).await;

    let other = clients.client_leaf("device-8", None);
    let other = client_config_for(Some(&other), &[&rustls::version::TLS13]);
    assert_eq!(
        answer_with(proxy.addr, "/", other.clone()).await,
        (Some(101), false)
    );
    assert_eq!(
        answer_with(proxy.addr, "/", other.clone()).await,
        (Some(101), true)
    );

    // The list issued again with nothing new: sessions resume on.
    let again = clients.crl(&[], in_a_week()).pem().unwrap();
    assert_ne!(again, none_revoked);
    std::fs::write(dir.path().join("clients.crl"), again).unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(
        answer_with(proxy.addr, "/", other.clone()).await,
        (Some(101), true)
    );

    let revoked = clients.crl(&[&shown.0], in_a_week()).pem().unwrap();
    std::fs::write(dir.path().join("clients.crl"), revoked).unwrap();
    generation(&mut status, before + 2).await;
    // Sessions begun before the list are not resumed: a full handshake, checked against it
    // (a refusal then comes in a TLS alert, CertificateRevoked).
    assert_eq!(answer_with(proxy.addr, "/", client.clone()).await.0, None);
    assert_eq!(
        answer_with(proxy.addr, "/", other.clone()).await,
        (Some(101), false)
    );
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, None);
    // Its handshake came before the list, its request after: judged by the list in force.
    assert_eq!(status_of(&mut waiting, "/").await, Some(403));
    assert_eq!(round_trip(&mut tunnel, "whoami").await, "devices");
}

#[tokio::test]
async fn an_intermediate_is_looked_up_in_its_issuers_list_and_needs_its_own() {
    // client_ca holds the root; clients show their certificate and the intermediate that
    // issued it. Each needs a list of its issuer: the root's for the intermediate, the
    // intermediate's for the client's (one left out must not let its clients in).
    let root = Pki::new("device root CA");
    let issuing = root.intermediate("device issuing CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let roots_list = root.crl(&[], in_a_week()).pem().unwrap();
    let (proxy, mut status, before) =
        revoking_proxy(&root, &dir, roots_list.as_bytes(), &backend).await;
    let (leaf, key) = issuing.client_leaf("device-7", None);
    let shown = (format!("{leaf}{}", issuing.ca_pem()), key);
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, None);
    let issuings_list = issuing.crl(&[], in_a_week()).pem().unwrap();
    std::fs::write(
        dir.path().join("clients.crl"),
        format!("{roots_list}{issuings_list}"),
    )
    .unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, Some(101));
    // The root revokes the intermediate: its clients are out.
    let revoking_it = root.crl(&[&issuing.ca_pem()], in_a_week()).pem().unwrap();
    std::fs::write(
        dir.path().join("clients.crl"),
        format!("{revoking_it}{issuings_list}"),
    )
    .unwrap();
    generation(&mut status, before + 2).await;
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, None);
}

#[tokio::test]
async fn a_list_file_that_would_refuse_every_client_or_hide_a_revocation_is_rejected() {
    // Each of these loads in rustls and fails only in handshakes: told at the reload, which
    // is rejected, the lists in force kept.
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let (lost, kept) = (
        clients.client_leaf("lost-phone", None),
        clients.client_leaf("device-7", None),
    );
    let in_force = clients.crl(&[&lost.0], in_a_week()).pem().unwrap();
    let (proxy, mut status, _) =
        revoking_proxy(&clients, &dir, in_force.as_bytes(), &backend).await;
    let older = clients.crl(&[], in_a_week()).pem().unwrap();
    let rekeyed = Pki::new("device CA").crl(&[], in_a_week()).pem().unwrap();
    let strangers = Pki::new("someone else's CA")
        .crl(&[], in_a_week())
        .pem()
        .unwrap();
    let rejected = [
        // Appended to the new list instead of replacing it, older first: rustls would take
        // the first, and the revocation of `lost` would be lost.
        (format!("{older}{in_force}"), "revocation lists 1 and 2 in"),
        (rekeyed, "is not signed by the key of certificate 1 of"),
        (
            strangers,
            "has no revocation list of CN=device CA (certificate 1 of",
        ),
    ];
    for (n, (lists, expected)) in rejected.into_iter().enumerate() {
        std::fs::write(dir.path().join("clients.crl"), lists).unwrap();
        let failed = status_where(&mut status, expected, |s| s.failures == n as u64 + 1).await;
        let error = failed.last_error.unwrap_or_default();
        assert!(
            error.contains("tls.client_crl: ") && error.contains(expected),
            "{error}"
        );
        assert_eq!(answer(proxy.addr, "/", Some(&lost)).await, None);
        assert_eq!(answer(proxy.addr, "/", Some(&kept)).await, Some(101));
    }
}

#[tokio::test]
async fn lists_that_cannot_be_used_are_errors_at_their_line_and_an_overdue_one_a_warning() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n";
    let alone = format!("client_crl = \"clients.crl\"\n\n{route}");
    let message = wsgate::check(&write_config(dir.path(), &alone))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(":7:14: tls.client_crl: needs tls.client_ca"),
        "{message}"
    );
    let (certificate, _) = clients.client_leaf("device-7", None);
    let unusable: [(&[u8], &str); 3] = [
        (b"", "clients.crl: the file is empty"),
        (
            certificate.as_bytes(),
            "holds no `-----BEGIN X509 CRL-----` block",
        ),
        (&[0x30, 0x03, 0x02, 0x01, 0x01], "revocation list in"),
    ];
    for (lists, expected) in unusable {
        let config = write_config(dir.path(), &revoking(&clients, &dir, lists, &backend));
        let message = wsgate::check(&config).unwrap_err().to_string();
        assert!(message.contains("tls.client_crl: "), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    // An intermediate trusted as an anchor is checked by nothing above it: one its root's
    // list revokes cannot be one.
    let issuing = clients.intermediate("device issuing CA");
    let revoking_it = clients
        .crl(&[&issuing.ca_pem()], in_a_week())
        .pem()
        .unwrap();
    let its_own = issuing.crl(&[], in_a_week()).pem().unwrap();
    let lists = format!("{revoking_it}{its_own}");
    let config = write_config(
        dir.path(),
        &revoking(&issuing, &dir, lists.as_bytes(), &backend),
    );
    let message = wsgate::check(&config).unwrap_err().to_string();
    assert!(
        message.contains("(CN=device issuing CA) is revoked by revocation list 1 in"),
        "{message}"
    );
    // A root beside its intermediate in client_ca: rustls stops at the intermediate, so the
    // root's list is not needed for the intermediate's clients (a warning, not an error).
    std::fs::write(
        dir.path().join("client-ca.pem"),
        [clients.ca_pem(), issuing.ca_pem()].concat(),
    )
    .unwrap();
    std::fs::write(dir.path().join("clients.crl"), &its_own).unwrap();
    let (_, warnings) = wsgate::check(&config).unwrap();
    assert!(
        warnings.iter().any(|w| w
            .contains("has no revocation list of CN=device CA (certificate 1 of")
            && w.contains("also in client_ca")),
        "{warnings:?}"
    );
    std::fs::remove_file(dir.path().join("clients.crl")).unwrap();
    let message = wsgate::check(&dir.path().join("wsgate.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("tls.client_crl: cannot read revocation lists"),
        "{message}"
    );

    let hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let overdue = clients.crl(&[], hour_ago).pem().unwrap();
    let config = revoking(&clients, &dir, overdue.as_bytes(), &backend);
    let (summary, warnings) = wsgate::check(&write_config(dir.path(), &config)).unwrap();
    assert!(
        summary.contains("client certificates required (and not revoked)")
            && summary.contains(", WARNING: a revocation list was due to be replaced at "),
        "{summary}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("tls.client_crl: ")
            && w.contains("clients.crl (of CN=device CA) was due to be replaced at")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_file_gone_for_a_while_is_waited_for_then_applied() {
    // A list replaced by `rm; cp`: the gap is no failure, the lists in force are kept.
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let none_revoked = clients.crl(&[], in_a_week()).der().to_vec();
    let (proxy, mut status, before) = revoking_proxy(&clients, &dir, &none_revoked, &backend).await;
    let file = dir.path().join("clients.crl");
    std::fs::remove_file(&file).unwrap();
    let gone = status_where(&mut status, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains("tls.client_crl: ") && error.ends_with("clients.crl not found"),
        "{error}"
    );
    assert_eq!((gone.generation, gone.failures), (before, 0));
    let shown = clients.client_leaf("device-7", None);
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, Some(101));
    std::fs::write(&file, clients.crl(&[&shown.0], in_a_week()).der()).unwrap();
    let back = generation(&mut status, before + 1).await;
    assert_eq!((back.failures, back.last_error), (0, None));
    assert_eq!(answer(proxy.addr, "/", Some(&shown)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_first_next_update_is_exported_until_the_key_goes() {
    // Two lists in the file (a root's and, say, an intermediate's): the one due first counts,
    // since an alert must fire before any list goes stale.
    let (root, other) = (Pki::new("device CA"), Pki::new("kiosk CA"));
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let (soon, later) = (in_a_week(), in_a_week() + time::Duration::days(30));
    let lists = [
        other.crl(&[], later).pem().unwrap(),
        root.crl(&[], soon).pem().unwrap(),
    ]
    .concat();
    let file = dir.path().join("clients.crl");
    std::fs::write(&file, lists).unwrap();
    let tls = asking(&root, &dir, "required");
    let routes = route("r", "/", &[backend.addr]);
    let crl = format!("client_crl = \"{}\"\n\n", file.display());
    let proxy = start_proxy(&format!("{tls}{crl}{ADMIN}{routes}")).await;
    let (admin, mut status) = (
        proxy.server.admin_addr().unwrap(),
        proxy.server.reload_status(),
    );
    let series = format!(
        r#"wsgate_client_crl_next_update_timestamp_seconds{{file="{}"}}"#,
        file.display()
    );
    let text = metrics(admin).await;
    assert_eq!(
        sample(&text, &series),
        Some(soon.unix_timestamp() as f64),
        "{text}"
    );
    let before = status.borrow().generation;
    let without = format!("{CONFIG_HEAD}{tls}{ADMIN}{routes}");
    std::fs::write(proxy.config_path(), without).unwrap();
    generation(&mut status, before + 1).await;
    let text = metrics(admin).await;
    assert_eq!(sample(&text, &series), None, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_recheck_tunnels_a_new_list_closes_the_tunnels_of_the_clients_it_revokes() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let file = dir.path().join("clients.crl");
    let tls = rechecking(
        &clients,
        &dir,
        &clients.crl(&[], in_a_week()).der()[..],
        true,
    );
    let routes = route("r", "/", &[backend.addr]);
    let proxy = start_proxy(&format!("{tls}{ADMIN}{routes}")).await;
    let admin = proxy.server.admin_addr().unwrap();
    let (mut status, before) = proxy.watched().await;
    let (lost, kept) = (
        clients.client_leaf("lost-phone", None),
        clients.client_leaf("device-7", None),
    );
    let url = "wss://localhost/";
    let mut lost_tunnel = ws_connect_with(proxy.addr, url, client_config_showing(&lost), &[])
        .await
        .unwrap();
    let mut kept_tunnel = ws_connect_with(proxy.addr, url, client_config_showing(&kept), &[])
        .await
        .unwrap();
    // A reload that changes nothing about clients wakes no tunnel.
    let renamed = routes.replace("name = \"r\"", "name = \"renamed\"");
    std::fs::write(
        proxy.config_path(),
        format!("{CONFIG_HEAD}{tls}{ADMIN}{renamed}"),
    )
    .unwrap();
    generation(&mut status, before + 1).await;
    assert_eq!(round_trip(&mut lost_tunnel, "whoami").await, "devices");

    std::fs::write(&file, clients.crl(&[&lost.0], in_a_week()).der()).unwrap();
    generation(&mut status, before + 2).await;
    let ended = crate::shutdown::tunnel_end(&mut lost_tunnel).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    assert_eq!(round_trip(&mut kept_tunnel, "whoami").await, "devices");
    let series = r#"wsgate_tunnels_closed_total{route="r",reason="client_certificate_refused"}"#;
    scrape_until(admin, series, 1.0).await;
}

#[test]
fn recheck_tunnels_needs_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let body = "recheck_tunnels = true\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9\"]\n";
    let message = wsgate::check(&write_config(dir.path(), body))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(":7:19: tls.recheck_tunnels: needs tls.client_ca"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_put_in_force_while_the_backend_answers_is_checked_by_the_new_tunnel() {
    // The request passed its check under the old list; the tunnel opens under the new one.
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = RawBackend::start().await;
    let none = clients.crl(&[], in_a_week()).der().to_vec();
    let tls = rechecking(&clients, &dir, &none, true);
    let routes = route("r", "/", &[backend.addr]);
    // The backend holds its answer while the reload is awaited (up to the suite's limit):
    // the default 5 s connect timeout must not answer 504 first.
    let timeouts = "[timeouts]\nconnect = \"60s\"\n\n";
    let proxy = start_proxy(&format!("{tls}{timeouts}{ADMIN}{routes}")).await;
    let admin = proxy.server.admin_addr().unwrap();
    let (mut status, before) = proxy.watched().await;
    let lost = clients.client_leaf("lost-phone", None);
    let (addr, config) = (proxy.addr, client_config_showing(&lost));
    let client =
        tokio::spawn(async move { ws_connect_with(addr, "wss://localhost/", config, &[]).await });
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    let file = dir.path().join("clients.crl");
    std::fs::write(&file, clients.crl(&[&lost.0], in_a_week()).der()).unwrap();
    generation(&mut status, before + 1).await;
    back.send(switching(&seen, "")).await;
    let mut ws = client.await.unwrap().unwrap();
    let ended = crate::shutdown::tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
    let series = r#"wsgate_tunnels_closed_total{route="r",reason="client_certificate_refused"}"#;
    scrape_until(admin, series, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechecks_turned_back_on_check_against_the_rules_changed_meanwhile() {
    let clients = Pki::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = WsBackend::start("devices").await;
    let none = clients.crl(&[], in_a_week()).der().to_vec();
    let routes = route("r", "/", &[backend.addr]);
    let on = rechecking(&clients, &dir, &none, true);
    let proxy = start_proxy(&format!("{on}{routes}")).await;
    let (mut status, before) = proxy.watched().await;
    let lost = clients.client_leaf("lost-phone", None);
    let config = client_config_showing(&lost);
    let mut ws = ws_connect_with(proxy.addr, "wss://localhost/", config, &[])
        .await
        .unwrap();
    // Off, then a list revoking the tunnel's client: the tunnel is left alone.
    let off = on.replace("recheck_tunnels = true", "recheck_tunnels = false");
    std::fs::write(proxy.config_path(), format!("{CONFIG_HEAD}{off}{routes}")).unwrap();
    generation(&mut status, before + 1).await;
    let revoking = clients.crl(&[&lost.0], in_a_week());
    std::fs::write(dir.path().join("clients.crl"), revoking.der()).unwrap();
    generation(&mut status, before + 2).await;
    assert_eq!(round_trip(&mut ws, "whoami").await, "devices");
    // On again, nothing else changed: the rules changed since they were last put to
    // tunnels, so they are put to them now.
    std::fs::write(proxy.config_path(), format!("{CONFIG_HEAD}{on}{routes}")).unwrap();
    generation(&mut status, before + 3).await;
    let ended = crate::shutdown::tunnel_end(&mut ws).await;
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}
