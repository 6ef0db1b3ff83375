//! Shared helpers for the integration tests: a test PKI made at test time, a proxy started
//! in-process on `127.0.0.1:0`, a TLS client that trusts the test CA (raw HTTP and WebSocket),
//! and backends on `127.0.0.1:0` (WebSocket echo, scripted raw bytes, black hole, closed port).
//!
//! Every wait is bounded by [`TIMEOUT`], so a hang fails the test instead of blocking the suite.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Upper bound for any single wait in a test.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The sample key of RFC 6455 section 1.3 and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Names the test server certificate covers. The TLS client always sends SNI `localhost`;
/// routing is by the `Host` header.
pub const SERVER_NAMES: &[&str] = &["localhost", "example.com", "*.example.com", "other.test"];

/// Awaits `fut`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Polls `cond` until it holds (bounded by [`TIMEOUT`]). For state that has no signal to await,
/// such as the proxy's connection count going down after a close.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

// ---------------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------------

/// A test CA (ECDSA P-256), made once per test binary.
pub struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    roots: Arc<rustls::RootCertStore>,
}

/// A date: (year, month, day).
pub type Ymd = (i32, u8, u8);

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new("wsgate test CA"))
}

impl Pki {
    /// A new CA named `name`. [`pki`] is the one every test client trusts; make others for
    /// rotations to a different issuer.
    pub fn new(name: &str) -> Pki {
        Pki::with(ca_params(name))
    }

    /// [`Pki::new`] valid until `until`, from a year before it.
    pub fn new_until(name: &str, until: time::OffsetDateTime) -> Pki {
        let mut params = ca_params(name);
        (params.not_before, params.not_after) = (until - time::Duration::days(365), until);
        Pki::with(params)
    }

    fn with(params: rcgen::CertificateParams) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        Pki {
            ca_cert,
            ca_key,
            roots: Arc::new(roots),
        }
    }
}

/// The parameters of a test CA named `name`.
fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Pki {
    /// An intermediate CA named `name`, signed by this one: its leaves chain to this CA
    /// through it (a client shows its [`Pki::ca_pem`] after its own certificate).
    pub fn intermediate(&self, name: &str) -> Pki {
        self.intermediate_with(ca_params(name))
    }

    /// [`Pki::intermediate`] valid until `until`, from a year before it.
    pub fn intermediate_until(&self, name: &str, until: time::OffsetDateTime) -> Pki {
        let mut params = ca_params(name);
        (params.not_before, params.not_after) = (until - time::Duration::days(365), until);
        self.intermediate_with(params)
    }

    fn intermediate_with(&self, params: rcgen::CertificateParams) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params
            .signed_by(&ca_key, &self.ca_cert, &self.ca_key)
            .unwrap();
        Pki {
            ca_cert,
            ca_key,
            roots: self.roots.clone(),
        }
    }

    /// A leaf certificate for `names`, signed by the CA: (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_until(names, None)
    }

    /// [`Pki::leaf`] whose validity ends on (year, month, day) if given.
    pub fn leaf_until(&self, names: &[&str], not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let validity = not_after.map(|(year, month, day)| ((year - 2, 1, 1), (year, month, day)));
        self.leaf_valid(names, validity)
    }

    /// [`Pki::leaf`] valid from and until the given (year, month, day), if given.
    pub fn leaf_valid(&self, names: &[&str], validity: Option<(Ymd, Ymd)>) -> (String, String) {
        self.leaf_for(names, validity, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `name`, signed by the CA, valid from and until the given
    /// (year, month, day) if given: (cert PEM, key PEM).
    pub fn client_leaf(&self, name: &str, validity: Option<(Ymd, Ymd)>) -> (String, String) {
        self.leaf_for(
            &[name],
            validity,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// [`Pki::client_leaf`] valid from a minute ago until `until`, to the second.
    pub fn client_leaf_until(&self, name: &str, until: std::time::SystemTime) -> (String, String) {
        let purpose = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
        self.leaf_to_the_second(&[name], until, purpose)
    }

    /// [`Pki::leaf`] valid from a minute ago until `until`, to the second.
    pub fn leaf_until_time(
        &self,
        names: &[&str],
        until: std::time::SystemTime,
    ) -> (String, String) {
        let purpose = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
        self.leaf_to_the_second(names, until, purpose)
    }

    /// [`Pki::leaf`] valid for a day that ended yesterday: one that has run out.
    pub fn leaf_ran_out(&self, names: &[&str]) -> (String, String) {
        let now = time::OffsetDateTime::now_utc();
        let purpose = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
        self.leaf_between(
            names,
            now - time::Duration::days(2),
            now - time::Duration::days(1),
            purpose,
        )
    }

    /// [`Pki::leaf`] valid from tomorrow: one that is not valid yet.
    pub fn leaf_not_yet_valid(&self, names: &[&str]) -> (String, String) {
        let now = time::OffsetDateTime::now_utc();
        let purpose = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
        self.leaf_between(
            names,
            now + time::Duration::days(1),
            now + time::Duration::days(90),
            purpose,
        )
    }

    fn leaf_to_the_second(
        &self,
        names: &[&str],
        until: std::time::SystemTime,
        purpose: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let from = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        self.leaf_between(names, from, time::OffsetDateTime::from(until), purpose)
    }

    fn leaf_between(
        &self,
        names: &[&str],
        from: time::OffsetDateTime,
        until: time::OffsetDateTime,
        purpose: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.not_before = from;
        params.not_after = until;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![purpose];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A revocation list of this CA revoking the certificates `revoked` (PEM), due to be
    /// replaced at `next_update`.
    pub fn crl(
        &self,
        revoked: &[&str],
        next_update: time::OffsetDateTime,
    ) -> rcgen::CertificateRevocationList {
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = (revoked.iter())
            .map(|pem| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial_of(pem)),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(1),
            next_update,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.ca_cert, &self.ca_key).unwrap()
    }

    fn leaf_for(
        &self,
        names: &[&str],
        validity: Option<(Ymd, Ymd)>,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// [`Pki::leaf`] with a key for `algorithm` (`rcgen::PKCS_ED25519`,
    /// `rcgen::PKCS_ECDSA_P384_SHA384`) rather than an ECDSA P-256 one: (cert PEM, key PEM).
    pub fn leaf_keyed(
        &self,
        names: &[&str],
        algorithm: &'static rcgen::SignatureAlgorithm,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf naming `cn` only in its subject's common name (no subjectAltName), as old
    /// tooling made them: (cert PEM, key PEM).
    pub fn leaf_cn_only(&self, cn: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf for `names` as `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    /// A TLS server config serving a new leaf for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        self.server_config_for(names, rustls::DEFAULT_VERSIONS)
    }

    /// [`Pki::server_config`] speaking only `versions` of TLS.
    pub fn server_config_for(
        &self,
        names: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::no_client_auth();
        self.server_config_checking(names, versions, verifier)
    }

    /// [`Pki::server_config_for`] that asks every client for a certificate `clients` issued,
    /// and refuses one without.
    pub fn server_config_asking(
        &self,
        names: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
        clients: &Pki,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            clients.roots.clone(),
            provider,
        )
        .build()
        .unwrap();
        self.server_config_checking(names, versions, verifier)
    }

    fn server_config_checking(
        &self,
        names: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<rustls::ServerConfig> {
        let (chain, key) = parsed(&self.leaf(names));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A TLS 1.2-only client that resumes by session ID alone (no tickets), keeping its
    /// sessions across connections.
    pub fn tls12_session_id_client(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::in_memory_sessions(8)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// The `[proxy]` and `[tls]` sections every test config starts with.
pub const CONFIG_HEAD: &str = r#"[proxy]
listen = ["127.0.0.1:0"]

[tls]
certificates = [ { cert = "server.crt", key = "server.key" } ]

"#;

/// Writes `server.crt`/`server.key` (for [`SERVER_NAMES`]) and `wsgate.toml` =
/// [`CONFIG_HEAD`] + `body` into `dir`; returns the config path.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    pki().write_leaf(dir, "server", SERVER_NAMES);
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, format!("{CONFIG_HEAD}{body}")).unwrap();
    path
}

/// A proxy running in-process on the test's runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub server: wsgate::Server,
}

impl Proxy {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("wsgate.toml")
    }

    /// Its reload status once the watcher has first looked at its files (a change made after
    /// is seen through a watch), and the generation then.
    pub async fn watched(&self) -> (tokio::sync::watch::Receiver<wsgate::ReloadStatus>, u64) {
        let mut status = self.server.reload_status();
        let before = status.borrow().generation;
        first_look(&mut status).await;
        (status, before)
    }
}

/// Starts a proxy whose config is [`CONFIG_HEAD`] + `body` (routes, timeouts, limits).
pub async fn start_proxy(body: &str) -> Proxy {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), body);
    let server = match within("the proxy to start", wsgate::Server::start(&path)).await {
        Ok(server) => server,
        Err(err) => panic!("proxy failed to start: {err}\nconfig:\n{CONFIG_HEAD}{body}"),
    };
    let addr = server.local_addrs()[0];
    Proxy { addr, dir, server }
}

/// With `RUST_LOG` set (e.g. `RUST_LOG=wsgate=debug cargo test …`), the proxy's log lines go
/// to the test output.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A config body with one route `name` on `path` (no host) to `backends`.
pub fn route(name: &str, path: &str, backends: &[SocketAddr]) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath = \"{path}\"\nbackends = {}\n\n",
        backends_list(backends)
    )
}

/// `["127.0.0.1:1", "127.0.0.1:2"]`
pub fn backends_list(backends: &[SocketAddr]) -> String {
    let items: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;
pub type Ws = WebSocketStream<Tls>;

/// A TLS connection to the proxy with SNI `localhost`, trusting the test CA.
pub async fn tls_connect(addr: SocketAddr) -> Tls {
    tls_connect_sni(addr, "localhost").await
}

pub async fn tls_connect_sni(addr: SocketAddr, sni: &str) -> Tls {
    tls_connect_after(addr, sni, b"").await
}

/// A TLS connection whose first bytes on the wire are `prefix` (a PROXY protocol header, as a
/// load balancer sends it).
pub async fn tls_connect_after(addr: SocketAddr, sni: &str, prefix: &[u8]) -> Tls {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("TCP connect to the proxy");
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(prefix).await.unwrap();
    tls_handshake_on(tcp, sni)
        .await
        .expect("TLS handshake with the proxy")
}

/// The TLS handshake, with SNI `sni` and trusting the test CA, on a TCP connection already
/// open (one accepted before a reload, or that sent a PROXY header first).
pub async fn tls_handshake_on(tcp: TcpStream, sni: &str) -> std::io::Result<Tls> {
    let connector = tokio_rustls::TlsConnector::from(pki().client_config());
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    within("the TLS handshake", connector.connect(name, tcp)).await
}

/// A raw connection to the proxy over TLS.
pub async fn raw_client(addr: SocketAddr) -> RawConn<Tls> {
    RawConn::new(tls_connect(addr).await)
}

/// Sends `request` on a new TLS connection and reads the whole response (head, then the body
/// by `Content-Length`, or until the connection closes).
pub async fn request(addr: SocketAddr, request: impl AsRef<[u8]>) -> (Head, Vec<u8>) {
    let mut conn = raw_client(addr).await;
    conn.send(request).await;
    let head = conn.read_head().await;
    let body = conn.read_body(&head).await;
    (head, body)
}

/// A WebSocket client over TLS (`client_async`). `url` is `wss://host/path` (the `Host` header
/// comes from it); `headers` are added to the request.
pub async fn ws_connect(
    addr: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let tls = tls_connect(addr).await;
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async_with_config(req, tls, Some(config)),
    )
    .await
}

/// [`ws_connect`] that must succeed.
pub async fn ws_connect_ok(addr: SocketAddr, url: &str) -> Ws {
    match ws_connect(addr, url, &[]).await {
        Ok((ws, _)) => ws,
        Err(err) => panic!("WebSocket handshake to {url} failed: {err:?}"),
    }
}

/// The next data or close message (pings and pongs skipped), bounded by [`TIMEOUT`].
pub async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("a WebSocket message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(msg)) => return msg,
                Some(Err(err)) => panic!("WebSocket error: {err}"),
                None => panic!("WebSocket stream ended"),
            }
        }
    })
    .await
}

/// Sends `text` and returns the text that comes back.
pub async fn round_trip<S>(ws: &mut WebSocketStream<S>, text: &str) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("a send", ws.send(Message::text(text)))
        .await
        .unwrap();
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Connects to `url` through the proxy and asks the echo backend its name.
pub async fn which_backend(addr: SocketAddr, url: &str) -> String {
    let mut ws = ws_connect_ok(addr, url).await;
    let name = round_trip(&mut ws, "whoami").await;
    let _ = ws.close(None).await;
    name
}

// ---------------------------------------------------------------------------------------------
// Which certificate the proxy serves
// ---------------------------------------------------------------------------------------------

/// A client config trusting every CA in `cas`. With `any_name`, a certificate that chains to
/// one of them is accepted even if it does not cover the server name, so a test can see which
/// certificate the proxy falls back to for a name none covers.
pub fn client_config_trusting(cas: &[&Pki], any_name: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.ca_cert.der().clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if any_name {
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Arc::new(config)
}

/// Full WebPKI verification except the name check.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A certificate chain and key as PEM, `(cert, key)`, parsed.
pub fn parsed(
    (cert, key): &(String, String),
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    (chain, key)
}

/// A client trusting the test CA ([`pki`]) that shows the certificate `(cert PEM, key PEM)`.
pub fn client_config_showing(shown: &(String, String)) -> Arc<rustls::ClientConfig> {
    client_config_for(Some(shown), rustls::DEFAULT_VERSIONS)
}

/// A client trusting the test CA ([`pki`]), speaking `versions`, that shows `shown` (if any)
/// to a server that asks, and keeps its sessions to resume.
pub fn client_config_for(
    shown: Option<&(String, String)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki().roots.clone());
    let config = match shown.map(parsed) {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
    };
    Arc::new(config)
}

/// A WebSocket connection to `url` at `addr` over TLS with `config`, sending `headers`.
pub async fn ws_connect_with(
    addr: SocketAddr,
    url: &str,
    config: Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, HeaderValue::from_str(value).unwrap());
    }
    let tls = tls_connect_with(addr, "localhost", config).await;
    within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(req, tls),
    )
    .await
    .map(|(ws, _)| ws)
}

/// A TLS connection to `addr` sending SNI `sni` (none for an IP address), with `config`.
pub async fn tls_connect_with(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Tls {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    within("the TLS handshake", async {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("TCP connect to the proxy");
        connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni:?}: {e}"))
    })
    .await
}

/// The DER of the leaf certificate the peer presented on `tls`.
pub fn peer_leaf(tls: &Tls) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a peer certificate")[0]
        .to_vec()
}

/// The DER of the leaf the proxy at `addr` serves for SNI `localhost` (test CA only).
pub async fn served_leaf(addr: SocketAddr) -> Vec<u8> {
    peer_leaf(&tls_connect(addr).await)
}

/// The leaf the proxy serves for `sni` (an IP address sends no SNI). Verified against the
/// test CA; with `any_name` a certificate that does not cover `sni` is accepted too.
pub async fn served(addr: SocketAddr, sni: &str, any_name: bool) -> Vec<u8> {
    let config = client_config_trusting(&[pki()], any_name);
    peer_leaf(&tls_connect_with(addr, sni, config).await)
}

/// The serial number of the first certificate in `pem`, as its DER writes it.
pub fn serial_of(pem: &str) -> Vec<u8> {
    let der = der_of(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial().to_vec()
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------------

/// How long a test waits for a change to be applied. The promise is 1 s after the last write
/// (measured outside the suite, as timings are: about 0.3 s, see docs/operations.md); a test
/// only tells applied from missed, and a watcher that missed the change is found by nothing
/// before the next recheck (60 s by default), so 5 s leaves a loaded 2-core CI machine running
/// test binaries side by side its pauses without letting a miss through.
pub const APPLIED_WITHIN: Duration = Duration::from_secs(5);

/// Waits until the reload status satisfies `done`; fails after [`APPLIED_WITHIN`].
pub async fn status_where(
    rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    what: &str,
    done: impl Fn(&wsgate::ReloadStatus) -> bool,
) -> wsgate::ReloadStatus {
    let waited = tokio::time::timeout(APPLIED_WITHIN, rx.wait_for(|s| done(s)))
        .await
        .map(|seen| seen.map(|status| status.clone()));
    match waited {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => panic!("reload status channel closed while waiting for {what}"),
        Err(_) => panic!("not {what} within {APPLIED_WITHIN:?}: {:?}", *rx.borrow()),
    }
}

/// Waits for the config of generation `n` to be in force.
pub async fn generation(
    rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    n: u64,
) -> wsgate::ReloadStatus {
    status_where(rx, &format!("generation {n}"), |s| s.generation == n).await
}

/// Waits for the watcher's look at the files right after start-up: a change made after it is
/// seen through a watch, not by that look.
pub async fn first_look(rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>) {
    status_where(rx, "the start-up look", |s| s.checks >= 1).await;
}

/// Waits for the `n`th rejected reload.
pub async fn failures(
    rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    n: u64,
) -> wsgate::ReloadStatus {
    status_where(rx, &format!("{n} failed reload(s)"), |s| s.failures == n).await
}

/// Writes [`CONFIG_HEAD`] + `body` to `path` in place.
pub fn write_body(path: &Path, body: &str) {
    std::fs::write(path, format!("{CONFIG_HEAD}{body}")).unwrap();
}

/// A config head listening on `listen` (in this order), with the test certificate.
pub fn head_listening(listen: &[&str]) -> String {
    let items: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
    CONFIG_HEAD.replace("[\"127.0.0.1:0\"]", &format!("[{}]", items.join(", ")))
}

/// Status of a new WebSocket upgrade to `path` on `addr`: 101 or the refusal's status.
pub async fn upgrade_status(addr: SocketAddr, path: &str) -> u16 {
    let (head, _) = request(addr, Req::upgrade("localhost", path).bytes()).await;
    head.status
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 request built line by line, for raw requests.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    /// A valid WebSocket upgrade request for `host` and `target` with [`KEY`].
    pub fn upgrade(host: &str, target: &str) -> Req {
        Req {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), host.into()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), KEY.into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        }
    }

    /// A plain GET (no upgrade headers).
    pub fn get(host: &str, target: &str) -> Req {
        Req {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![("Host".into(), host.into())],
        }
    }

    pub fn method(mut self, method: &str) -> Req {
        self.method = method.into();
        self
    }

    pub fn version(mut self, version: &str) -> Req {
        self.version = version.into();
        self
    }

    /// Replaces every `name` header with one `name: value` (added if absent).
    pub fn set(mut self, name: &str, value: &str) -> Req {
        match self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(i) => {
                self.headers[i].1 = value.into();
                let mut seen = 0;
                self.headers.retain(|(n, _)| {
                    if n.eq_ignore_ascii_case(name) {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.headers.push((name.into(), value.into())),
        }
        self
    }

    /// Adds one more `name: value` line.
    pub fn add(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn remove(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// A parsed request or response head.
#[derive(Clone)]
pub struct Head {
    pub start_line: String,
    /// Response status (0 for a request head).
    pub status: u16,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The head exactly as it came, including the final CRLF CRLF.
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.raw))
    }
}

impl Head {
    fn parse(raw: Vec<u8>) -> Head {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_string();
        let status = if start_line.starts_with("HTTP/") {
            start_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {start_line:?}"))
        } else {
            0
        };
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?}"));
                (name.trim().to_string(), value.trim().to_string())
            })
            .collect();
        Head {
            start_line,
            status,
            headers,
            raw,
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The comma-separated elements of every `name` line, trimmed, in order.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// [`Head::list`], lowercased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.list(name)
            .into_iter()
            .map(|t| t.to_ascii_lowercase())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The request target (second word of a request line).
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or_default()
    }
}

/// A byte stream with a read buffer, for either side of a raw exchange.
pub struct RawConn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

fn is_closed(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn new(stream: S) -> Self {
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes and flushes `bytes`.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.try_send(bytes).await.expect("write");
    }

    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        let bytes = bytes.as_ref();
        within("a write", async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
    }

    /// Reads more bytes into the buffer; `Ok(0)` on a clean or abrupt close.
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(err) if is_closed(&err) => 0,
            Err(err) => panic!("read error: {err}"),
        }
    }

    /// Reads one head; `None` if the peer closed first (bytes read so far are kept).
    pub async fn try_read_head(&mut self) -> Option<Head> {
        within("a head", async {
            loop {
                if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let raw: Vec<u8> = self.buf.drain(..pos + 4).collect();
                    return Some(Head::parse(raw));
                }
                if self.fill().await == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// Reads one head, failing the test if the peer closes first.
    pub async fn read_head(&mut self) -> Head {
        match self.try_read_head().await {
            Some(head) => head,
            None => panic!(
                "connection closed before a complete head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        within("bytes", async {
            while self.buf.len() < n {
                if self.fill().await == 0 {
                    panic!(
                        "connection closed after {} of {n} expected bytes",
                        self.buf.len()
                    );
                }
            }
            self.buf.drain(..n).collect()
        })
        .await
    }

    /// Reads until the peer closes (cleanly or not) and returns everything left.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        within("the connection to close", async {
            while self.fill().await > 0 {}
            std::mem::take(&mut self.buf)
        })
        .await
    }

    /// Reads a response body: `Content-Length` bytes, or until close.
    pub async fn read_body(&mut self, head: &Head) -> Vec<u8> {
        match head.get("content-length") {
            Some(len) => self.read_exact(len.parse().expect("Content-Length")).await,
            None if head.status == 101 => Vec::new(),
            None => self.read_to_end().await,
        }
    }

    /// Asserts the peer closes without sending anything more.
    pub async fn expect_closed(&mut self) {
        let rest = self.read_to_end().await;
        assert!(
            rest.is_empty(),
            "expected a close, got {} more bytes: {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest)
        );
    }

    /// Asserts the peer sends nothing more and ends TLS properly: a `close_notify`, not a bare
    /// FIN (which rustls reads as a truncation) or a reset.
    pub async fn expect_close_notify(&mut self) {
        let end = within("the connection to close", async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(err) => return Err(err),
                }
            }
        })
        .await;
        assert!(
            self.buf.is_empty(),
            "expected a close, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        if let Err(err) = end {
            panic!("the connection ended without a close_notify: {err}");
        }
    }

    /// Shuts down our write side (TLS close_notify + FIN, or FIN), keeping the read side.
    pub async fn shutdown_write(&mut self) {
        within("shutdown", self.stream.shutdown())
            .await
            .expect("shutdown");
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket frames by hand (client frames are masked)
// ---------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame; masked with a fixed key when `mask` (client → server frames must be).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A close frame payload: code + reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// What the WebSocket echo backend saw of an upgrade request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()))
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// A tokio-tungstenite echo backend. It records each upgrade request, picks the first offered
/// subprotocol, echoes data messages and reports every message it receives. Text commands:
/// `whoami` → its name; `close <code> <reason>` → it closes with that code;
/// `ping <payload>` → it sends a ping.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub name: String,
    requests: mpsc::UnboundedReceiver<Seen>,
    messages: mpsc::UnboundedReceiver<Message>,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBackend {
    pub async fn start(name: &str) -> WsBackend {
        WsBackend::start_with(name, None).await
    }

    /// The same backend speaking TLS (`wss://`) with `pki`'s leaf for `names`.
    pub async fn start_tls(name: &str, pki: &Pki, names: &[&str]) -> WsBackend {
        WsBackend::start_with(name, Some(pki.server_config(names))).await
    }

    /// The same backend speaking TLS as `tls` says.
    pub async fn start_with(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (msg_tx, messages) = mpsc::unbounded_channel();
        let backend_name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let req_tx = req_tx.clone();
                let msg_tx = msg_tx.clone();
                let name = backend_name.clone();
                match &tls {
                    None => tokio::spawn(echo_connection(tcp, name, req_tx, msg_tx)),
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                        tokio::spawn(async move {
                            // A client that fails the handshake (one that does not trust
                            // this certificate) simply goes.
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                echo_connection(tls, name, req_tx, msg_tx).await;
                            }
                        })
                    }
                };
            }
        });
        WsBackend {
            addr,
            name: name.to_string(),
            requests,
            messages,
            task,
        }
    }

    /// The next upgrade request this backend accepted.
    pub async fn next_request(&mut self) -> Seen {
        within("the backend to see a request", self.requests.recv())
            .await
            .expect("backend stopped")
    }

    /// The next message this backend received (pings and pongs included).
    pub async fn next_message(&mut self) -> Message {
        within("the backend to receive a message", self.messages.recv())
            .await
            .expect("backend stopped")
    }
}

// tungstenite's handshake callback returns its (large) error response type.
#[allow(clippy::result_large_err)]
async fn echo_connection<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    name: String,
    req_tx: mpsc::UnboundedSender<Seen>,
    msg_tx: mpsc::UnboundedSender<Message>,
) {
    let callback = move |req: &Request, mut resp: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let seen = Seen {
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            headers,
        };
        if let Some(first) = seen.list("sec-websocket-protocol").first() {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(first).unwrap(),
            );
        }
        let _ = req_tx.send(seen);
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let _ = msg_tx.send(msg.clone());
        let reply = match msg {
            Message::Text(t) if t.as_str() == "whoami" => Some(Message::text(name.clone())),
            Message::Text(t) if t.as_str().starts_with("close ") => {
                let mut parts = t.as_str().splitn(3, ' ').skip(1);
                let code: u16 = parts.next().unwrap().parse().unwrap();
                let reason = parts.next().unwrap_or("").to_string();
                Some(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                })))
            }
            Message::Text(t) if t.as_str().starts_with("ping ") => {
                Some(Message::Ping(t.as_str()[5..].to_string().into()))
            }
            Message::Text(_) | Message::Binary(_) => Some(msg),
            _ => None,
        };
        if let Some(reply) = reply {
            if ws.send(reply).await.is_err() {
                return;
            }
        } else if ws.flush().await.is_err() {
            return;
        }
    }
}

/// A backend the test scripts by hand: accept a connection, read the head, write whatever
/// bytes the test wants.
pub struct RawBackend {
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl RawBackend {
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        RawBackend { addr, listener }
    }

    /// The next connection from the proxy.
    pub async fn accept(&self) -> RawConn<TcpStream> {
        let (tcp, _) = within(
            "the proxy to connect to the backend",
            self.listener.accept(),
        )
        .await
        .unwrap();
        tcp.set_nodelay(true).unwrap();
        RawConn::new(tcp)
    }

    /// Takes `times` connections from the proxy in a row, each closed (reset, if `reset`)
    /// once its request head is in: a route's only backend is dialed again after each, up to
    /// three times.
    pub async fn close_unanswered(&self, times: usize, reset: bool) {
        for _ in 0..times {
            let mut back = self.accept().await;
            back.read_head().await;
            if reset {
                back.stream.set_zero_linger().unwrap();
            }
        }
    }

    /// A connection from the proxy already waiting to be accepted, if there is one: the
    /// listener is asked once, without waiting.
    pub async fn waiting(&self) -> Option<TcpStream> {
        let once = std::future::poll_fn(|cx| match self.listener.poll_accept(cx) {
            std::task::Poll::Ready(accepted) => std::task::Poll::Ready(Some(accepted)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        });
        once.await.map(|accepted| accepted.unwrap().0)
    }
}

/// A 101 answer for a request head: correct Accept, plus `extra` header lines (each ending
/// in CRLF).
pub fn switching(request: &Head, extra: &str) -> String {
    let key = request.get("sec-websocket-key").expect("forwarded key");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_for(key)
    )
}

/// Opens a tunnel through the proxy to `backend` with raw bytes on both sides: sends `req`,
/// lets the backend answer a 101, and returns (client, backend, 101 head seen by the client,
/// request head seen by the backend).
pub async fn raw_tunnel(
    addr: SocketAddr,
    backend: &RawBackend,
    req: &Req,
) -> (RawConn<Tls>, RawConn<TcpStream>, Head, Head) {
    let (mut client, mut back, seen) = raw_request(addr, backend, req).await;
    back.send(switching(&seen, "")).await;
    let head = client.read_head().await;
    assert_eq!(head.status, 101, "expected 101, got {:?}", head.start_line);
    (client, back, head, seen)
}

/// Sends `req` through the proxy at `addr` with raw bytes, and has `backend` read it: returns
/// (client, backend, request head seen by the backend), the backend's answer still to come.
pub async fn raw_request(
    addr: SocketAddr,
    backend: &RawBackend,
    req: &Req,
) -> (RawConn<Tls>, RawConn<TcpStream>, Head) {
    let mut client = raw_client(addr).await;
    client.send(req.bytes()).await;
    let mut back = backend.accept().await;
    let seen = back.read_head().await;
    (client, back, seen)
}

/// Accepts connections and never answers (for connect/answer timeouts).
pub struct BlackHole {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        BlackHole { addr, task }
    }
}

/// An address whose SYNs go unanswered, like a host behind a firewall that drops packets:
/// its listen queue (backlog 0) is filled by one connection never accepted, so the kernel
/// drops every further SYN and a connect hangs.
pub struct Unreachable {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl Unreachable {
    pub fn start() -> Unreachable {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = std::net::TcpStream::connect(addr).unwrap();
        Unreachable {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// An address on 127.0.0.1 where nothing listens (connections are refused). The port stays
/// bound, without listening, for the life of the test binary: a port merely freed could be
/// handed to another test's listener running in parallel, which would then answer.
pub async fn closed_port() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    static HELD: std::sync::Mutex<Vec<Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// The `wsgate` binary.
pub fn wsgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wsgate")
}

/// A shell script that sets an open-files limit (`ulimit` takes `limit`: "-n 8", "-S -n 100")
/// and then becomes `wsgate run --config config` with `more` arguments: the child's pid is
/// wsgate's.
pub fn run_under_ulimit(limit: &str, config: &Path, more: &str) -> String {
    format!(
        "ulimit {limit} && exec '{}' run --config '{}' {more}",
        wsgate_bin(),
        config.display()
    )
}

// ---------------------------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------------------------

/// `wsgate run --config <config>` with JSON logs at `info` on a piped stderr.
pub fn spawn_wsgate(config: &Path) -> WsgateChild {
    spawn_wsgate_logging(config, "info")
}

/// A `wsgate` child process, killed (and reaped) when dropped: a test that fails midway
/// leaves no proxy running behind it.
pub struct WsgateChild(std::process::Child);

impl std::ops::Deref for WsgateChild {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for WsgateChild {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for WsgateChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`spawn_wsgate`], logging at `rust_log`.
pub fn spawn_wsgate_logging(config: &Path, rust_log: &str) -> WsgateChild {
    WsgateChild::spawn(&mut wsgate_command(config, rust_log))
}

/// The command [`spawn_wsgate_logging`] runs: `wsgate run` with JSON logs on a piped stderr.
pub fn wsgate_command(config: &Path, rust_log: &str) -> std::process::Command {
    let mut command = std::process::Command::new(wsgate_bin());
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", rust_log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

impl WsgateChild {
    pub fn spawn(command: &mut std::process::Command) -> WsgateChild {
        WsgateChild(command.spawn().unwrap())
    }
}

/// Stderr lines of a child process, delivered as they are written.
pub fn stderr_lines(
    stderr: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; fails after [`TIMEOUT`] or when the stream ends.
pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(err) => panic!("no log line containing {needle:?} ({err})"),
        }
    }
}

/// The lines up to and including the first one containing `needle`.
pub fn lines_until(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.contains(needle)) {
        seen.push(wait_for_line(lines, ""));
    }
    seen
}

/// [`wait_for_line`] off the async threads, for a test whose backends run on its runtime.
pub async fn line_containing(
    lines: std::sync::mpsc::Receiver<String>,
    needle: &'static str,
) -> String {
    tokio::task::spawn_blocking(move || wait_for_line(&lines, needle))
        .await
        .unwrap()
}

/// A `wsgate run` process on `config` that has started serving: the process, its log lines
/// (JSON), and its first listening address.
pub fn started_wsgate(
    config: &Path,
) -> (WsgateChild, std::sync::mpsc::Receiver<String>, SocketAddr) {
    started_wsgate_logging(config, "info")
}

/// [`started_wsgate`], logging at `rust_log`.
pub fn started_wsgate_logging(
    config: &Path,
    rust_log: &str,
) -> (WsgateChild, std::sync::mpsc::Receiver<String>, SocketAddr) {
    let mut child = spawn_wsgate_logging(config, rust_log);
    let lines = stderr_lines(child.stderr.take().unwrap());
    let addr = listening_addr(&wait_for_line(&lines, "\"listening\""));
    wait_for_line(&lines, "wsgate started");
    (child, lines, addr)
}

/// `kill -<name> <pid>`.
pub fn send_signal(pid: u32, name: &str) {
    // Sent from here, not by a `kill` process: spawning one takes milliseconds on a loaded
    // machine, and some tests need the signal inside a window (a reload's 150 ms wait).
    let signal = match name {
        "HUP" => libc::SIGHUP,
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "INT" => libc::SIGINT,
        other => panic!("no such signal in the tests: {other}"),
    };
    let pid = i32::try_from(pid).expect("a pid");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        sent,
        0,
        "kill -{name} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// The address in a JSON `"listening"` log line.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.split("\"listen\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// An address on `ip` that nothing listens on, for a test to put in a config. Its port is below
/// Linux's ephemeral range (32768 and up), which every bind to port 0 and every outgoing
/// connection of the other tests draws from: none of them can take it before the test binds it.
pub fn free_addr(ip: &str) -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread by process, so two test binaries running at once start apart.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 6_000) as u16;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 6_000;
        if let Ok(listener) = std::net::TcpListener::bind((ip, port)) {
            return listener.local_addr().unwrap();
        }
    }
}
