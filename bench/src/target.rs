//! The target: URL parsing, TLS client configuration and connecting (TCP, then TLS for wss://).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cli::ClientArgs;

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Host as written (without brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// Value for the Host header.
    pub authority: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("ws://") {
            (false, r)
        } else {
            bail!("URL {s:?} must start with ws:// or wss://");
        };
        check_no_fragment(s)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("URL {s:?} needs a host (and no user info)");
        }
        // Both go into the request as written: a character a request cannot carry would be
        // sent raw (a CR or LF would even add headers of its own).
        check_chars(s, authority, "[]")?;
        check_chars(s, &path, "/?")?;
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| anyhow!("URL {s:?}: unclosed '['"))?;
            let host = &v6[..end];
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                bail!("URL {s:?}: {host:?} between '[' and ']' is no IPv6 address");
            }
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => match p.strip_prefix(':') {
                    Some(p) => parse_port(p, s)?,
                    None => bail!("URL {s:?}: ':' and a port, or nothing, after ']'"),
                },
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            bail!("URL {s:?} needs a host");
        }
        // An IPv6 address goes in brackets; a host name has no ':' (`h:1:2` is no authority).
        if !authority.starts_with('[') && host.contains(':') {
            bail!("URL {s:?}: a host with ':' in it (an IPv6 address goes in brackets: ws://[::1]:9001/)");
        }
        Ok(Url {
            tls,
            host,
            port,
            path,
            authority: authority.to_string(),
        })
    }
}

/// Refuses a fragment: a WebSocket URI has none (RFC 6455 §3), and a client never sends one.
fn check_no_fragment(url: &str) -> Result<()> {
    if url.contains('#') {
        bail!(
            "URL {url:?} has a fragment ('#'), which a WebSocket URL must not have (RFC 6455 §3)"
        );
    }
    Ok(())
}

/// Refuses what `part` of `url` (its authority, or its path and query) could not carry as
/// written into the request line or Host header: any character outside RFC 3986's grammar
/// for it (controls, space, non-ASCII, quotes, angle brackets...), or a `%` not starting a
/// percent-encoded byte. Refused rather than percent-encoded here, so that the target is sent
/// exactly what was written on the command line.
fn check_chars(url: &str, part: &str, extra: &str) -> Result<()> {
    let bytes = part.as_bytes();
    for (i, c) in part.char_indices() {
        if c == '%' && !bytes.get(i + 1..i + 3).is_some_and(is_hex_pair) {
            bail!("URL {url:?}: a '%' that does not start a percent-encoded byte (%XX)");
        }
        if !(is_pchar(c) || extra.contains(c)) {
            bail!(
                "URL {url:?}: {c:?} cannot be sent in a request; percent-encode it (its UTF-8 \
                 bytes as %XX)"
            );
        }
    }
    Ok(())
}

/// RFC 3986's `pchar` (unreserved, sub-delims, `:`, `@`), with `%` (checked apart).
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

fn is_hex_pair(pair: &[u8]) -> bool {
    pair.iter().all(u8::is_ascii_hexdigit)
}

fn parse_port(p: &str, url: &str) -> Result<u16> {
    p.parse()
        .map_err(|_| anyhow!("URL {url:?}: invalid port {p:?}"))
}

/// Of a name's several addresses (`localhost`: `127.0.0.1` and `::1`), the first that takes a
/// TCP connection within `wait`, as a browser would fall back: the target may listen on one
/// family only. A single address is taken as it is, untried.
async fn listening(addrs: &[SocketAddr], wait: std::time::Duration) -> Option<SocketAddr> {
    if let [only] = addrs {
        return Some(*only);
    }
    for &addr in addrs {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(wait, connect).await {
            return Some(addr);
        }
    }
    None
}

/// Everything needed to open connections to the target.
#[derive(Clone)]
pub struct Target {
    pub url: Url,
    pub addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// TLS as rustls's defaults, not the comparison's one suite and group (`--tls-defaults`).
    tls_defaults: bool,
    /// How long one connection may take to become a WebSocket.
    pub open_timeout: std::time::Duration,
}

impl Target {
    /// Resolves the host once and builds the TLS config (fresh, resumption disabled).
    pub async fn new(args: &ClientArgs) -> Result<Target> {
        let url = Url::parse(&args.url)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .with_context(|| format!("cannot resolve {}", url.host))?
            .collect();
        let addr = listening(&addrs, args.open_timeout)
            .await
            .or(addrs.first().copied())
            .ok_or_else(|| anyhow!("{} has no address", url.host))?;
        let tls = if url.tls {
            let identity = args.cert.as_deref().zip(args.key.as_deref());
            let config = client_config(
                args.ca.as_deref(),
                args.insecure,
                args.tls_defaults,
                identity,
            )?;
            let name = args.sni.clone().unwrap_or_else(|| url.host.clone());
            let name = ServerName::try_from(name.clone())
                .map_err(|_| anyhow!("invalid TLS server name {name:?}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            if args.ca.is_some()
                || args.insecure
                || args.sni.is_some()
                || args.tls_defaults
                || args.cert.is_some()
            {
                bail!(
                    "--ca, --insecure, --sni, --tls-defaults and --cert only apply to wss:// URLs"
                );
            }
            None
        };
        Ok(Target {
            url,
            addr,
            tls,
            tls_defaults: args.tls_defaults,
            open_timeout: args.open_timeout,
        })
    }

    /// Opens TCP (and TLS for wss://) with clear errors.
    pub async fn connect(&self) -> Result<Stream> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                anyhow!("connect to {} refused", self.addr)
            } else {
                anyhow!("connect to {}: {e}", self.addr)
            }
        })?;
        tcp.set_nodelay(true)
            .with_context(|| format!("set TCP_NODELAY on connection to {}", self.addr))?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    anyhow!(
                        "TLS handshake with {} failed: {e}{}",
                        self.addr,
                        tls_hint(&e, self.tls_defaults)
                    )
                })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// The crypto the load tool and the echo backend use, the same mix as wsgate's: aws-lc-rs for
/// the handshake, ring's cipher suites on x86-64 (ring's AES-GCM uses VAES/AVX2 where the CPU
/// has it: twice aws-lc-rs's rate on the benchmark machine). The bulk scenario is bound by the
/// load CPU, so a cheaper client raises the ceiling every target is measured against.
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if cfg!(target_arch = "x86_64") {
        provider.cipher_suites = rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec();
    }
    provider
}

/// A rustls client config with [`crypto_provider`] and TLS session resumption disabled, so
/// every connection does a full handshake.
///
/// Unless `tls_defaults`, it offers only TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519, so every
/// proxy under test negotiates the same parameters whatever its own defaults. With `identity`
/// (certificate chain and key files), it shows that certificate to a server that asks.
pub fn client_config(
    ca: Option<&Path>,
    insecure: bool,
    tls_defaults: bool,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig> {
    let mut provider = crypto_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls_defaults {
        rustls::DEFAULT_VERSIONS
    } else {
        provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        &[&rustls::version::TLS13]
    };
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let ca = ca.ok_or_else(|| {
            anyhow!(
                "wss:// needs --ca PEM (the CA that signed the target's certificate) or --insecure"
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in crate::pem::certificates(ca).context("CA file")? {
            roots
                .add(cert)
                .with_context(|| format!("add CA certificate from {}", ca.display()))?;
        }
        if roots.is_empty() {
            bail!("no certificate found in {}", ca.display());
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = crate::pem::certificates(cert)?;
            let key = crate::pem::private_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow!("client certificate/key: {e}"))?
        }
    };
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// A hint for a TLS handshake that failed: on an answer that was not TLS (the URL's scheme
/// and the target's port do not match, the usual slip), or refused for its version or suite
/// when only the comparison's TLS 1.3 suite and group were offered.
fn tls_hint(e: &std::io::Error, tls_defaults: bool) -> &'static str {
    use rustls::AlertDescription::{HandshakeFailure, InsufficientSecurity, ProtocolVersion};
    let error = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match error {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            " (the target answered in plain text, not TLS: is it a ws:// port?)"
        }
        Some(rustls::Error::AlertReceived(
            ProtocolVersion | HandshakeFailure | InsufficientSecurity,
        )) if !tls_defaults => {
            " (only TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519 was offered, the comparison's \
             setting: --tls-defaults offers rustls's defaults, TLS 1.2 included)"
        }
        _ => "",
    }
}

/// Accepts any certificate and signature (`--insecure`): skips the client's verification work
/// entirely, so the load generator spends its CPU on load.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS client connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("wss://127.0.0.1:8443/echo?x=1").unwrap();
        assert!(u.tls);
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8443);
        assert_eq!(u.path, "/echo?x=1");
        assert_eq!(u.authority, "127.0.0.1:8443");

        let u = Url::parse("ws://localhost").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 80, "/"));
        let u = Url::parse("wss://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        let u = Url::parse("ws://[::1]:9001?q").unwrap();
        assert_eq!((u.port, u.path.as_str()), (9001, "/?q"));

        // Every character RFC 3986 allows, percent-encoded bytes included, goes through.
        let u = Url::parse("ws://h/a-b._~%2F%c3%a9:@!$&'()*+,;=?q=%5Bx%5D/y?").unwrap();
        assert_eq!(u.path, "/a-b._~%2F%c3%a9:@!$&'()*+,;=?q=%5Bx%5D/y?");

        assert!(Url::parse("http://x/").is_err());
        assert!(Url::parse("ws://host:notaport/").is_err());
        assert!(Url::parse("ws:///").is_err());
    }

    #[test]
    fn refuses_what_a_request_line_cannot_carry() {
        for (url, why) in [
            ("ws://h/x#frag", "fragment"),
            ("ws://h/#", "fragment"),
            ("ws://h#frag", "fragment"),
            ("ws://h/a b", "' '"),
            ("ws://h/x\r\nX-Injected: 1", "'\\r'"),
            ("ws://h\r\nX-Injected: 1/", "'\\r'"),
            ("ws://h/\t", "'\\t'"),
            ("ws://h/caf\u{e9}", "'é'"),
            ("ws://h/<x>", "'<'"),
            ("ws://h/a\"b", "'\"'"),
            ("ws://h/[x]", "'['"),
            ("ws://h/%", "'%'"),
            ("ws://h/%2", "'%'"),
            ("ws://h/%zz", "'%'"),
            ("ws://[::1]45013/", "after ']'"),
            ("ws://[nope]:1/", "no IPv6 address"),
            ("ws://::1:45013/", "in brackets"),
            ("ws://127.0.0.1:45001:45001/", "in brackets"),
        ] {
            let err = format!("{:#}", Url::parse(url).unwrap_err());
            assert!(err.contains(why), "{url:?}: {err}");
        }
    }

    #[test]
    fn wss_needs_ca_or_insecure() {
        let err = client_config(None, false, false, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ca"), "{err}");
        assert!(client_config(None, true, false, None).is_ok());
        assert!(client_config(None, true, true, None).is_ok());
    }
}
