//! A peer's connection as the relay sees it beyond reads and writes: whether the kernel
//! holds an error for it, how many bytes the kernel still holds for it, and its TCP under any
//! TLS. Asked while a direction is stuck (has its reader gone? does its writer's peer still
//! take bytes?), and when a side is to be ended without TLS's close_notify.

use std::io;

/// A peer's connection, asked whether it has failed without anything reading from it, and
/// whether the peer still takes bytes while the proxy's writes to it wait.
pub(crate) trait PeerSocket {
    /// The error the kernel holds for the connection (a reset that arrived), if any.
    fn peer_error(&self) -> Option<io::ErrorKind>;

    /// Bytes the kernel holds for the peer (see [`crate::socket::queued`]), if it can say.
    fn queued(&self) -> Option<u32> {
        None
    }

    /// The TCP connection under any TLS, to end it without TLS's close_notify.
    fn tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        None
    }

    /// What failed in a layer above TCP, in its own words (TLS's, behind an error whose kind
    /// alone says only "invalid data": a renegotiation refused, a record that failed to
    /// decrypt), for the tunnel's line.
    fn failure(&self) -> Option<String> {
        None
    }
}

impl PeerSocket for tokio::net::TcpStream {
    /// Only an error that ends the connection: `SO_ERROR` also hands out (and clears) soft
    /// errors of a connection still alive, such as an ICMP "host unreachable" on the way or
    /// a smaller path MTU, and those must not cut a slow but healthy tunnel.
    fn peer_error(&self) -> Option<io::ErrorKind> {
        let kind = socket2::SockRef::from(self).take_error().ok()??.kind();
        use io::ErrorKind::*;
        matches!(
            kind,
            ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
        )
        .then_some(kind)
    }

    fn queued(&self) -> Option<u32> {
        crate::socket::queued(self)
    }

    fn tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        Some(self)
    }
}

/// A backend's connection, plain or TLS: as its TCP connection, and for TLS what failed.
impl PeerSocket for crate::upstream::BackendIo {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        crate::upstream::tcp_of(self).peer_error()
    }

    fn queued(&self) -> Option<u32> {
        crate::upstream::tcp_of(self).queued()
    }

    fn tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        Some(crate::upstream::tcp_of_mut(self))
    }

    fn failure(&self) -> Option<String> {
        match self {
            tokio_util::either::Either::Right(tls) => tls.failure().map(|e| e.to_string()),
            tokio_util::either::Either::Left(_) => None,
        }
    }
}

impl PeerSocket for crate::tls::TlsStream<tokio::net::TcpStream> {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        self.get_ref().peer_error()
    }

    fn queued(&self) -> Option<u32> {
        self.get_ref().queued()
    }

    fn tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        Some(self.get_mut())
    }

    fn failure(&self) -> Option<String> {
        self.failure().map(|e| e.to_string())
    }
}
