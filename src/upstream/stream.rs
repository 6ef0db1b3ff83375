//! A backend connection as the leg asks on it and the tunnel relays over it: plain TCP, or
//! TLS over it for a route with `backend_tls` (see [`crate::tls::BackendTls`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::client::UnbufferedClientConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsStream;

/// A backend connection. The TLS one is boxed: most tunnels are plain, and each carries this
/// for its whole life.
pub(crate) enum BackendIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream, UnbufferedClientConnection>>),
}

impl BackendIo {
    /// The TCP connection, under any TLS.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            BackendIo::Plain(tcp) => tcp,
            BackendIo::Tls(tls) => tls.get_ref(),
        }
    }

    pub(crate) fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            BackendIo::Plain(tcp) => tcp,
            BackendIo::Tls(tls) => tls.get_mut(),
        }
    }
}

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            BackendIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            BackendIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            BackendIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendIo::Plain(tcp) => tcp.is_write_vectored(),
            BackendIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            BackendIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    /// For TLS: `close_notify`, then the TCP FIN (a half-close passed on).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            BackendIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
