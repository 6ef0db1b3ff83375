//! The built-in echo backend (lean engine in [`crate::server`] by default): echoes text and
//! binary messages, answers pings, completes close handshakes, accepts any path and selects
//! the first offered subprotocol. Plain `ws://`, or
//! `wss://` with `--tls-cert/--tls-key`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{EchoArgs, EchoEngine};

/// Runs the echo server until the process is killed. Prints `LISTENING addr` once bound.
pub fn run(args: &EchoArgs) -> Result<()> {
    let runtime = crate::sys::runtime(args.threads)?;
    runtime.block_on(async {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls_acceptor(cert, key, args.tls_client_ca.as_deref())?)
            }
            _ => None,
        };
        let listener = bind(args.listen).await?;
        let addr = listener.local_addr()?;
        say_listening(&mut std::io::stdout().lock(), tls.is_some(), addr)
            .context("cannot write LISTENING to stdout")?;
        serve(listener, tls, args.engine).await;
        Ok(())
    })
}

/// Says where the backend listens, for whoever waits to connect; fallible, not `println!`: a
/// closed stdout is an error, not a panic.
fn say_listening(
    out: &mut impl std::io::Write,
    tls: bool,
    addr: SocketAddr,
) -> std::io::Result<()> {
    writeln!(out, "LISTENING {}://{addr}", if tls { "wss" } else { "ws" })?;
    out.flush()
}

/// Binds the listener (with a large backlog for handshake storms).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("create listening socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket.bind(addr).with_context(|| format!("bind {addr}"))?;
    socket
        .listen(4096)
        .with_context(|| format!("listen on {addr}"))
}

/// Builds a TLS acceptor from PEM files (the load tool's own
/// [`crypto_provider`](crate::target::crypto_provider)); with `client_ca`, one that requires
/// each client's certificate, signed by a CA in that file.
pub fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor> {
    let certs = crate::pem::certificates(cert)?;
    let key = crate::pem::private_key(key)?;
    // Set up as the proxies are in the comparison (TLS 1.3 only, TLS_AES_128_GCM_SHA256 and
    // X25519, no resumption): the direct wss row is their baseline, tickets would cost it work
    // they do not do, and each proxy's own TLS to it (`BACKEND_TLS=1`) then negotiates the
    // same parameters as the others', whatever its defaults.
    let mut provider = crate::target::crypto_provider();
    (provider.cipher_suites).retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let clients = match client_ca {
        Some(ca) => client_verifier(ca, provider.clone())?,
        None => rustls::server::WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS protocol versions")?
        .with_client_cert_verifier(clients)
        .with_single_cert(certs, key)
        .map_err(|e| anyhow!("TLS certificate/key: {e}"))?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A verifier requiring a client certificate that chains to a CA of the PEM file `ca`.
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::pem::certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("{}: {e}", ca.display()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| anyhow!("client CA {}: {e}", ca.display()))
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, engine: EchoEngine) {
    // Failed accepts since the last said, and when that was: out of descriptors, every
    // retry fails alike, and a line per retry (a hundred a second) would bury the rest.
    let mut unsaid = 0u64;
    let mut said_at: Option<std::time::Instant> = None;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) if unsaid > 0 => {
                let n = std::mem::take(&mut unsaid);
                crate::scenario::say(format_args!(
                    "echo: accept: working again, after {n} more failed accepts"
                ));
                c
            }
            Ok(c) => c,
            Err(e) => {
                let due =
                    said_at.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1));
                if due {
                    let more = match unsaid {
                        0 => String::new(),
                        n => format!(" ({n} more failed accepts since the last line)"),
                    };
                    crate::scenario::say(format_args!("echo: accept: {e}{more}"));
                    (unsaid, said_at) = (0, Some(std::time::Instant::now()));
                } else {
                    unsaid += 1;
                }
                // EMFILE and friends: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tls {
                None => handle(tcp, engine).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        handle(stream, engine).await;
                    }
                }
            }
        });
    }
}

/// Selects the first offered subprotocol, if any.
#[allow(clippy::result_large_err)]
fn select_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let first = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());
    if let Some(p) = first {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(stream: S, engine: EchoEngine) {
    match engine {
        // Errors end the connection; a benchmark backend has nobody to report them to.
        EchoEngine::Lean => {
            let _ = crate::server::serve_conn(stream).await;
        }
        EchoEngine::Tungstenite => handle_tungstenite(stream).await,
    }
}

async fn handle_tungstenite<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    // Any message the load tool may send (`--size` up to its MAX_SIZE), in one frame.
    let most = Some(crate::cli::MAX_SIZE as usize);
    let config = WebSocketConfig::default()
        .max_message_size(most)
        .max_frame_size(most);
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, select_subprotocol, Some(config))
            .await
    else {
        return;
    };
    // Echo in batches: take every message that is already readable, then flush once.
    'conn: while let Some(Ok(first)) = ws.next().await {
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            let echo = matches!(m, Message::Text(_) | Message::Binary(_));
            if echo && ws.feed(m).await.is_err() {
                break 'conn;
            }
            // Pings are answered and close replies queued by tungstenite itself; the flush
            // below sends them.
            msg = match ws.next().now_or_never() {
                Some(Some(Ok(m))) => Some(m),
                Some(Some(Err(_))) => break 'conn,
                Some(None) => None,
                None => None,
            };
        }
        if ws.flush().await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// Starts an echo server on `addr` in the current runtime (for tests); returns its address.
pub async fn spawn(
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    engine: EchoEngine,
) -> Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, tls, engine));
    Ok(local)
}
