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
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is no URL: {e}"))?;
    if uri.scheme_str() != Some("wss") {
        return Err(
            format!("{url:?}: only wss:// URLs (wsgate serves WebSockets over TLS)").into(),
        );
    }
    // An IPv6 address is written in brackets in a URL, and without them to connect.
    let host = (uri.host().ok_or("the URL has no host")?)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // A port that is no number in range (`:99999`) is an error, not the default.
    let written = uri.authority().and_then(|a| a.as_str().rsplit_once(':'));
    let written = written
        .map(|(_, port)| port)
        .filter(|port| !port.ends_with(']'));
    let port = match written.map(str::parse::<u16>) {
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            return Err(format!("{url:?}: {:?} is no port", written.unwrap_or_default()).into())
        }
        None => 443,
    };
    let mut roots = rustls::RootCertStore::empty();
    let unreadable =
        |e: &dyn std::fmt::Display| format!("cannot read CA file {}: {e}", ca.display());
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| unreadable(&e))? {
        roots.add(cert.map_err(|e| unreadable(&e))?)?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in CA file {}", ca.display()).into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = (TcpStream::connect((host.as_str(), port)).await).map_err(|e| {
        let at = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        format!("cannot connect to {at}: {e}")
    })?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(host)?, tcp)
        .await?;
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => Ok(ws),
        // The refusal's status and its body's words, not the bytes of the body.
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            let body = answer.body().as_deref().unwrap_or_default();
            let said = String::from_utf8_lossy(body);
            Err(format!("refused: {} {}", answer.status(), said.trim()).into())
        }
        Err(e) => Err(e.into()),
    }
}
