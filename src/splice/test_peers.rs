//! Stand-ins shared by the relay's unit tests (the tunnel's, a direction's, the linger's):
//! pipes as peers, which have no kernel connection to ask; a connection its peer has reset;
//! and a relay with no early bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader, DuplexStream, ReadBuf};

use super::{PeerSocket, Splice};
use crate::drain::Drain;

/// In-memory pipes have no kernel connection to ask.
impl PeerSocket for DuplexStream {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        None
    }
}

impl<T: PeerSocket + AsyncRead> PeerSocket for BufReader<T> {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        self.get_ref().peer_error()
    }
}

/// A relay with no early bytes either way.
pub(super) fn without_early<C, B>(
    client: C,
    backend: B,
    idle: Duration,
    drain: &Arc<Drain>,
) -> Splice<C, B>
where
    C: AsyncBufRead + AsyncWrite + PeerSocket + Unpin,
    B: AsyncRead + AsyncWrite + PeerSocket + Unpin,
{
    Splice::new(client, Bytes::new(), backend, Bytes::new(), idle, drain)
}

/// A connection after its peer reset it: what arrived before is still read, then the
/// end; every write fails with `.1`, as the kernel says it: `BrokenPipe` if the peer had
/// closed cleanly first (its FIN, then a reset answering a later write), `ConnectionReset`
/// if it aborted.
pub(super) struct ResetAfter(io::Cursor<Vec<u8>>, io::ErrorKind);

impl ResetAfter {
    pub(super) fn closed(read: &[u8]) -> ResetAfter {
        ResetAfter(io::Cursor::new(read.to_vec()), io::ErrorKind::BrokenPipe)
    }

    pub(super) fn aborted(read: &[u8]) -> ResetAfter {
        ResetAfter(
            io::Cursor::new(read.to_vec()),
            io::ErrorKind::ConnectionReset,
        )
    }
}

impl AsyncRead for ResetAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetAfter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(self.1.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

impl PeerSocket for ResetAfter {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        None
    }
}
