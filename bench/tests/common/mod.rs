//! What the load tool's test files share: its echo backend over TLS, on a certificate made
//! at test time.

use std::net::SocketAddr;
use std::path::PathBuf;

use wsgate_bench::cli::EchoEngine;

/// A TLS echo backend for `localhost`, and its self-signed certificate and key.
#[allow(dead_code, reason = "each test file uses the fields it needs")]
pub struct TlsEcho {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

/// The built-in echo backend (lean engine) over TLS on a free port of 127.0.0.1; with
/// `asks_clients`, it requires a client certificate signed by its own certificate.
pub async fn tls_echo(asks_clients: bool) -> TlsEcho {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let clients = asks_clients.then_some(cert.as_path());
    let tls = wsgate_bench::echo::tls_acceptor(&cert, &key, clients).unwrap();
    let any_port = "127.0.0.1:0".parse().unwrap();
    let addr = wsgate_bench::echo::spawn(any_port, Some(tls), EchoEngine::Lean)
        .await
        .unwrap();
    TlsEcho {
        addr,
        cert,
        key,
        _dir: dir,
    }
}
