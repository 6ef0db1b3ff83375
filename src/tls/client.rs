//! TLS to backends, for routes with `backend_tls`: the client config each such route gets,
//! built with the rest of a snapshot from the CA file it names (so a reload, or a CA file
//! renewed on disk, gets a new one), and the handshake on a connected backend socket, its
//! certificate checked against the route's `server_name` or the backend's own host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{provider, read_chain, Chain, TlsStream};
use crate::config::{certificate_name, BackendTlsConfig, Config, ConfigError};

/// How a route's backend connections are secured.
pub(crate) struct BackendTls {
    config: Arc<ClientConfig>,
    /// The route's `server_name`; `None`: each backend's own host.
    server_name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// Runs the TLS handshake with `backend` (its `host:port` as written) over `socket`: a
    /// stream that, like a client's, holds no buffer while idle.
    pub(crate) async fn connect(
        &self,
        backend: &str,
        socket: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream, UnbufferedClientConnection>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            // Checked with the config: not reached.
            None => certificate_name(host_of(backend))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        };
        super::stream::connect(socket, self.config.clone(), name).await
    }
}

/// Each route's backend TLS, in the config's route order (`None` for a route without
/// `backend_tls`). Routes naming the same CA file share one client config, and so its cache
/// of sessions to resume.
pub(crate) fn backend_clients(
    config: &Config,
) -> Result<Vec<Option<Arc<BackendTls>>>, ConfigError> {
    let mut configs: HashMap<&Path, Arc<ClientConfig>> = HashMap::new();
    let mut out = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let Some(tls) = &route.backend_tls else {
            out.push(None);
            continue;
        };
        let client = match configs.get(tls.ca.as_path()) {
            Some(client) => client.clone(),
            None => {
                let client = client_config(tls)
                    .map_err(|message| ConfigError::at(&config.path, &tls.ca_location, message))?;
                configs.insert(&tls.ca, client.clone());
                client
            }
        };
        // Checked with the config, where an error names its key: not reached.
        let server_name = (tls.server_name.as_deref())
            .map(certificate_name)
            .transpose()
            .map_err(|message| ConfigError::new(&config.path, message))?;
        out.push(Some(Arc::new(BackendTls {
            config: client,
            server_name,
        })));
    }
    Ok(out)
}

/// A client config trusting the certificates of `tls.ca`, TLS 1.2 and 1.3, offering HTTP/1.1
/// alone (a WebSocket upgrade is HTTP/1.1's).
fn client_config(tls: &BackendTlsConfig) -> Result<Arc<ClientConfig>, String> {
    let path = &tls.ca;
    let certificates = read_chain(path, Chain::Trusted).map_err(|refused| refused.message)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in certificates.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            format!(
                "certificate {} in {} cannot be trusted as a CA: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    let mut client = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

/// The host of `host:port` as `backends` writes it, without an IPv6 address's brackets.
fn host_of(backend: &str) -> &str {
    let host = backend.rsplit_once(':').map_or(backend, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_host_is_its_name_without_port_brackets_or_final_dot() {
        assert_eq!(host_of("app.internal:9443"), "app.internal");
        assert_eq!(host_of("[::1]:9443"), "::1");
        assert_eq!(host_of("10.0.0.7:9443"), "10.0.0.7");
        let names = [
            ("app.internal.", "app.internal"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("10.0.0.7", "10.0.0.7"),
        ];
        for (written, checked) in names {
            let name = certificate_name(written).unwrap();
            assert_eq!(name.to_str(), checked, "{written}");
        }
    }
}
