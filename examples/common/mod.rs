//! A wss:// client that trusts one CA file, shared by the examples.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;

pub type Error = Box<dyn std::error::Error>;

pub async fn connect(url: &str, ca: &Path) -> Result<WebSocketStream<TlsStream<TcpStream>>, Error> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().ok_or("URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(host)?, tcp)
        .await?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}
