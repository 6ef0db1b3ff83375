//! TLS to backends, for routes with `backend_tls`: the client config each such route gets,
//! built with the rest of a snapshot from the CA file it names and the client certificate it
//! shows backends that ask for one (so a reload, or a file renewed on disk, gets a new one),
//! and the handshake on a connected backend socket, its certificate checked against the
//! route's `server_name` or the backend's own host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::{chain_warning, load_certified_key, provider, read_chain, Chain, Expiry, TlsStream};
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
/// `backend_tls`), when the client certificates among it expire, and what is off about their
/// chains. Routes naming the same CA file and client certificate share one client config, and
/// so its cache of sessions to resume.
pub(crate) fn backend_clients(config: &Config) -> Result<BackendClients, ConfigError> {
    let mut configs: HashMap<Files<'_>, Arc<ClientConfig>> = HashMap::new();
    let mut out = BackendClients::default();
    for route in &config.routes {
        let Some(tls) = &route.backend_tls else {
            out.routes.push(None);
            continue;
        };
        let files = (
            tls.ca.as_path(),
            (tls.client.as_ref()).map(|c| (&*c.cert, &*c.key)),
        );
        let client = match configs.get(&files) {
            Some(client) => client.clone(),
            None => {
                let client = client_config(config, tls, &mut out)?;
                configs.insert(files, client.clone());
                client
            }
        };
        // Checked with the config, where an error names its key: not reached.
        let server_name = (tls.server_name.as_deref())
            .map(certificate_name)
            .transpose()
            .map_err(|message| ConfigError::new(&config.path, message))?;
        out.routes.push(Some(Arc::new(BackendTls {
            config: client,
            server_name,
        })));
    }
    Ok(out)
}

/// What [`backend_clients`] builds.
#[derive(Default)]
pub(crate) struct BackendClients {
    pub(crate) routes: Vec<Option<Arc<BackendTls>>>,
    /// When each client certificate expires (one shared by routes of different CA files
    /// listed for each).
    pub(crate) expiry: Vec<Expiry>,
    /// Client certificate chains that load but are surely a mistake.
    pub(crate) warnings: Vec<ConfigError>,
}

/// A CA file, and a client certificate and its key if any.
type Files<'a> = (&'a Path, Option<(&'a Path, &'a Path)>);

/// A client config trusting the certificates of `tls.ca`, showing `tls.client`'s certificate
/// to a backend that asks for one (its expiry and any warning about its chain added to
/// `out`), TLS 1.2 and 1.3, offering HTTP/1.1 alone (a WebSocket upgrade is HTTP/1.1's).
fn client_config(
    config: &Config,
    tls: &BackendTlsConfig,
    out: &mut BackendClients,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let at = |message| ConfigError::at(&config.path, &tls.ca_location, message);
    let (roots, anchors) = trusted(&tls.ca).map_err(at)?;
    let dated = super::expiry::anchor_warnings(&tls.ca, &anchors);
    out.warnings.extend(dated.into_iter().map(at));
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| at(e.to_string()))?
        .with_root_certificates(roots);
    let mut client = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(paths) => {
            let key = load_certified_key(paths, Chain::Client, &provider)
                .map_err(|refused| refused.at(config, paths))?;
            out.expiry
                .extend(Expiry::of(&paths.cert, &key.cert, Chain::Client));
            (out.warnings).extend(chain_warning(config, paths, &key, Chain::Client));
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

/// The certificates of the CA file `path`, each one a trust anchor; with them as they are in
/// the file.
pub(super) fn trusted(
    path: &Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let certificates = read_chain(path, Chain::Trusted).map_err(|refused| refused.message)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in certificates.iter().enumerate() {
        roots.add(der.clone()).map_err(|e| {
            format!(
                "certificate {} in {} cannot be trusted as a CA: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok((roots, certificates))
}

/// The host of `host:port` as `backends` writes it, without an IPv6 address's brackets.
fn host_of(backend: &str) -> &str {
    let host = backend.rsplit_once(':').map_or(backend, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
impl BackendTls {
    /// TLS to backends that trusts no certificate, for tests whose backends never get as far
    /// as showing one.
    pub(crate) fn trusting_nothing() -> BackendTls {
        let config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("the provider's versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        BackendTls {
            config: Arc::new(config),
            server_name: None,
        }
    }
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
