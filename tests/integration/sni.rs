//! Certificate choice by SNI: the certificate whose names cover the requested name, the first
//! configured one for any other name (or none), and the choice follows reloads.

use std::path::Path;

use crate::support::*;

/// Writes `<stem>.crt`/`.key` for each (stem, names) into `dir` and a config listing them in
/// that order; returns the config path and each certificate's DER.
fn write_sni_config(dir: &Path, certs: &[(&str, &[&str])]) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let mut ders = Vec::new();
    let mut entries = Vec::new();
    for (stem, names) in certs {
        let (cert, key) = pki().leaf(names);
        std::fs::write(dir.join(format!("{stem}.crt")), &cert).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key).unwrap();
        ders.push(der_of(&cert));
        entries.push(format!(
            "  {{ cert = \"{stem}.crt\", key = \"{stem}.key\" }},\n"
        ));
    }
    let config = dir.join("wsgate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\ncertificates = [\n{}]\n",
            entries.concat()
        ),
    )
    .unwrap();
    (config, ders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_gets_its_certificate_and_an_unknown_name_gets_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (config, der) = write_sni_config(
        dir.path(),
        &[("a", &["a.test"]), ("b", &["b.test", "*.wild.test"])],
    );
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    assert_eq!(served(addr, "a.test", false).await, der[0]);
    assert_eq!(served(addr, "b.test", false).await, der[1]);
    assert_eq!(served(addr, "x.wild.test", false).await, der[1]);
    assert_eq!(
        served(addr, "B.Test", false).await,
        der[1],
        "names are case-insensitive"
    );
    assert_eq!(served(addr, "unknown.test", true).await, der[0]);
    // A wildcard covers one label only.
    assert_eq!(served(addr, "y.x.wild.test", true).await, der[0]);
    // An IP address as server name: the client sends no SNI at all.
    assert_eq!(served(addr, "127.0.0.1", true).await, der[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_is_the_first_configured_certificate_whatever_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let (config, der) = write_sni_config(dir.path(), &[("b", &["b.test"]), ("a", &["a.test"])]);
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    assert_eq!(served(addr, "a.test", false).await, der[1]);
    assert_eq!(served(addr, "unknown.test", true).await, der[0]);
    assert_eq!(served(addr, "127.0.0.1", true).await, der[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_added_and_removed_by_a_reload_change_the_choice() {
    let dir = tempfile::tempdir().unwrap();
    let (config, der) = write_sni_config(dir.path(), &[("a", &["a.test"])]);
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    assert_eq!(served(addr, "c.test", true).await, der[0]);
    let mut held = tls_connect_with(addr, "a.test", pki().client_config()).await;

    let (_, both) = write_sni_config(dir.path(), &[("a", &["a.test"]), ("c", &["c.test"])]);
    generation(&mut rx, 2).await;
    assert_eq!(served(addr, "c.test", false).await, both[1]);
    assert_eq!(served(addr, "a.test", false).await, both[0]);

    let (_, only_c) = write_sni_config(dir.path(), &[("c", &["c.test"])]);
    generation(&mut rx, 3).await;
    assert_eq!(
        served(addr, "a.test", true).await,
        only_c[0],
        "a.test falls back"
    );
    // A TLS session opened before stays up across both reloads.
    let mut conn = RawConn::new(&mut held);
    conn.send(Req::upgrade("localhost", "/none").bytes()).await;
    assert_eq!(conn.read_head().await.status, 404);
}

/// Certificates for the same names with different kinds of key (ECDSA P-256 first, then
/// Ed25519 and ECDSA P-384, as an RSA one would be beside an ECDSA one): each client gets the
/// first it can take, by the signature schemes and (over TLS 1.2) the suites it offers; none
/// is a "never served" certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_certificates_of_several_kinds_of_key_serves_each_client_one_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    let (config, der) = write_sni_config(dir.path(), &[("ec", &["a.test"])]);
    let mut extra = Vec::new();
    for (stem, algorithm) in [
        ("ed", &rcgen::PKCS_ED25519),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let (cert, key) = pki().leaf_keyed(&["a.test"], algorithm);
        std::fs::write(dir.path().join(format!("{stem}.crt")), &cert).unwrap();
        std::fs::write(dir.path().join(format!("{stem}.key")), key).unwrap();
        extra.push(format!(
            "  {{ cert = \"{stem}.crt\", key = \"{stem}.key\" }},\n"
        ));
    }
    let text = std::fs::read_to_string(&config).unwrap();
    let all = text.replace(
        "key = \"ec.key\" },\n",
        &format!("key = \"ec.key\" }},\n{}", extra.concat()),
    );
    std::fs::write(&config, all).unwrap();
    let (_, warnings) = wsgate::check(&config).unwrap();
    assert!(
        !warnings.iter().any(|w| w.contains("never served")),
        "{warnings:#?}"
    );
    let leaf = |stem: &str| {
        der_of(&std::fs::read_to_string(dir.path().join(format!("{stem}.crt"))).unwrap())
    };

    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    // Every kind offered (any client's default): the first listed.
    assert_eq!(served(addr, "a.test", false).await, der[0]);
    // A client that verifies one kind of signature only, over TLS 1.3 and over TLS 1.2; and
    // without a name (the first certificate's names then).
    let suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    let (tls13, tls12): (Vec<_>, Vec<_>) = suites.into_iter().partition(|s| s.tls13().is_some());
    for (only, stem) in [(ED25519, "ed"), (P384, "p384")] {
        for (suites, sni) in [
            (tls13.clone(), true),
            (tls12.clone(), true),
            (tls13.clone(), false),
        ] {
            let tls = tls_connect_with(addr, "a.test", verifying_only(only, suites, sni)).await;
            assert_eq!(peer_leaf(&tls), leaf(stem), "{stem}, SNI sent: {sni}");
        }
    }
}

/// RSA first and ECDSA beside it, the pair operators serve: a TLS 1.3 client that verifies
/// RSA only with PKCS#1 (which TLS 1.3 does not allow) and ECDSA gets the ECDSA certificate,
/// one that verifies RSA-PSS alone the RSA one, and a TLS 1.2 client offering only ECDHE-RSA
/// suites the RSA one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_certificate_beside_an_ecdsa_one_goes_to_the_clients_that_take_it() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, key) = pki().leaf_keyed(&["a.test"], &rcgen::PKCS_RSA_SHA256);
    std::fs::write(dir.path().join("rsa.crt"), &rsa).unwrap();
    std::fs::write(dir.path().join("rsa.key"), key).unwrap();
    let (config, der) = write_sni_config(dir.path(), &[("ec", &["a.test"])]);
    let text = std::fs::read_to_string(&config).unwrap();
    let both = text.replace(
        "certificates = [\n",
        "certificates = [\n  { cert = \"rsa.crt\", key = \"rsa.key\" },\n",
    );
    std::fs::write(&config, both).unwrap();
    let (rsa, ecdsa) = (der_of(&rsa), der[0].clone());
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    assert_eq!(served(addr, "a.test", false).await, rsa, "the first listed");
    let suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    let (tls13, tls12): (Vec<_>, Vec<_>) = suites.into_iter().partition(|s| s.tls13().is_some());
    let rsa_kx: Vec<_> = (tls12.into_iter())
        .filter(|s| format!("{:?}", s.suite()).contains("ECDHE_RSA"))
        .collect();
    for (only, suites, expected) in [
        (PKCS1_OR_ECDSA, tls13.clone(), &ecdsa),
        (PSS, tls13, &rsa),
        (PKCS1_OR_ECDSA, rsa_kx, &rsa),
    ] {
        let tls = tls_connect_with(addr, "a.test", verifying_only(only, suites, true)).await;
        assert_eq!(&peer_leaf(&tls), expected);
    }
}

const PKCS1_OR_ECDSA: Verifies = &[
    (
        rustls::SignatureScheme::RSA_PKCS1_SHA256,
        &[webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256],
    ),
    (
        rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
        &[webpki::aws_lc_rs::ECDSA_P256_SHA256],
    ),
];
const PSS: Verifies = &[(
    rustls::SignatureScheme::RSA_PSS_SHA256,
    &[webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
)];

/// Signature schemes a client verifies, and with what.
type Verifies = &'static [(
    rustls::SignatureScheme,
    &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm],
)];
const ED25519: Verifies = &[(
    rustls::SignatureScheme::ED25519,
    &[webpki::aws_lc_rs::ED25519],
)];
const P384: Verifies = &[(
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    &[webpki::aws_lc_rs::ECDSA_P384_SHA384],
)];

/// [`client_offering`] that verifies only the signatures `only` maps, so offers those schemes
/// alone; sending SNI or not.
fn verifying_only(
    only: Verifies,
    suites: Vec<rustls::SupportedCipherSuite>,
    sni: bool,
) -> std::sync::Arc<rustls::ClientConfig> {
    client_with(suites, Some(only), sni)
}

/// A client that speaks only TLS 1.2, trusting the test CA.
fn tls12_only() -> std::sync::Arc<rustls::ClientConfig> {
    let mut suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    suites.retain(|s| s.tls13().is_none());
    client_offering(suites)
}

/// A client (aws-lc-rs) that offers only `suites`, with the TLS versions they belong to,
/// trusting the test CA.
fn client_offering(
    suites: Vec<rustls::SupportedCipherSuite>,
) -> std::sync::Arc<rustls::ClientConfig> {
    client_with(suites, None, true)
}

/// A client (aws-lc-rs) offering `suites` at their TLS version, verifying only the
/// signatures `only` maps if given, sending SNI if `sni`, trusting the test CA.
fn client_with(
    suites: Vec<rustls::SupportedCipherSuite>,
    only: Option<Verifies>,
    sni: bool,
) -> std::sync::Arc<rustls::ClientConfig> {
    let tls13 = suites.iter().any(|s| s.tls13().is_some());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = suites;
    if let Some(only) = only {
        provider.signature_verification_algorithms.mapping = only;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(&pki().ca_pem()).into()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_sni = sni;
    std::sync::Arc::new(config)
}

/// wsgate encrypts records with ring on x86-64 and handshakes with aws-lc-rs: a client on
/// aws-lc-rs alone must get every suite (TLS 1.3 and 1.2, AES-GCM and ChaCha20) and carry a
/// multi-record message through a tunnel both ways with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cipher_suite_carries_a_tunnel() {
    use futures_util::SinkExt as _;
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    use tokio_tungstenite::tungstenite::Message;
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let suites = [
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    // Over four full records each way, with bytes that are not one repeated value.
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for suite in suites {
        let tls = tls_connect_with(proxy.addr, "localhost", client_offering(vec![suite])).await;
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite(),
            Some(suite),
            "{suite:?} not negotiated"
        );
        let (mut ws, _) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async("wss://localhost/a", tls),
        )
        .await
        .unwrap_or_else(|e| panic!("upgrade over {suite:?}: {e}"));
        assert_eq!(round_trip(&mut ws, "hello").await, "hello", "{suite:?}");
        within("a send", ws.send(Message::binary(payload.clone())))
            .await
            .unwrap();
        match next_message(&mut ws).await {
            Message::Binary(back) => assert!(back == payload, "{suite:?} changed the bytes"),
            other => panic!("expected the binary echo over {suite:?}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_served_by_default_and_refused_with_min_version_1_3() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let tls = tls_connect_with(proxy.addr, "localhost", tls12_only()).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    let mut rx = proxy.server.reload_status();
    let head = CONFIG_HEAD.replace("[tls]\n", "[tls]\nmin_version = \"1.3\"\n");
    std::fs::write(
        proxy.config_path(),
        format!("{head}{}", route("a", "/a", &[backend.addr])),
    )
    .unwrap();
    generation(&mut rx, 2).await;
    let connector = tokio_rustls::TlsConnector::from(tls12_only());
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = within("the TLS 1.2 handshake", connector.connect(name, tcp)).await;
    assert!(
        refused.is_err(),
        "TLS 1.2 accepted with min_version = \"1.3\""
    );
    // TLS 1.3 clients are served.
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);
}
