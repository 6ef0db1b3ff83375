//! A backend connection as the leg asks on it and the tunnel relays over it: plain TCP, or
//! TLS over it for a route with `backend_tls` (see [`crate::tls::BackendTls`]).

use rustls::client::UnbufferedClientConnection;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::tls::TlsStream;

/// A backend connection: plain on the left, TLS on the right. The TLS one is boxed: most
/// tunnels are plain, and each carries this for its whole life.
pub(crate) type BackendIo =
    Either<TcpStream, Box<TlsStream<TcpStream, UnbufferedClientConnection>>>;

/// The TCP connection, under any TLS.
pub(crate) fn tcp_of(io: &BackendIo) -> &TcpStream {
    match io {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref(),
    }
}

pub(crate) fn tcp_of_mut(io: &mut BackendIo) -> &mut TcpStream {
    match io {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_mut(),
    }
}
