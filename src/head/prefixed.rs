//! The client's stream with the request head read before hyper put back in front of it: what
//! hyper reads, and what it may not (anything behind the head), and the lingering close it
//! gets when hyper ends the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::closing::Lingering;
use crate::relay::Written;

/// A stream with bytes already read from it put back in front, for hyper to parse the one
/// request it serves: reads hand out the request head and stop there.
///
/// What follows the head is never hyper's to read. Early WebSocket bytes go to the tunnel,
/// which takes them with the stream ([`Prefixed::into_parts`]); anything else behind a request
/// (one per connection) would be parsed as a second request once the first is answered, and
/// answered too: a refusal must be the connection's last word. So past the head a read stays
/// pending; hyper reads nothing while the request is served (`half_close`), and the closing
/// connection is ended by the server once the answer is out.
///
/// When hyper ends the connection (its answer written), the shutdown it asks for is a
/// lingering close ([`crate::closing`]): `close_notify`, then what the client still sends is read
/// and dropped, before hyper lets go of the stream. `shut` tells the server that the answer
/// is out, so that the connection's end need not wait for the linger's.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    /// How much of `prefix` hyper may still read: what is left of the head.
    head: usize,
    io: T,
    /// Set once the stream is shut, lingering.
    closing: Option<Lingering>,
    shut: Arc<Notify>,
    written: Arc<Written>,
}

impl<T> Prefixed<T> {
    /// `head` is the length of the request head that starts `prefix`; `shut` is told once the
    /// stream has been shut (the answer out, and a `close_notify` behind it); `written`
    /// counts what hyper writes through it.
    pub(crate) fn new(
        prefix: Bytes,
        head: usize,
        io: T,
        shut: Arc<Notify>,
        written: Arc<Written>,
    ) -> Self {
        let head = head.min(prefix.len());
        Prefixed {
            prefix,
            head,
            io,
            closing: None,
            shut,
            written,
        }
    }

    /// The stream and whatever of the prefix has not been read yet.
    pub(crate) fn into_parts(self) -> (T, Bytes) {
        (self.io, self.prefix)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head == 0 {
            // No waker kept: the connection's other events (its answer written, its
            // shutdown) wake its task, and nothing here ever becomes readable.
            return Poll::Pending;
        }
        let n = self.head.min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        self.head -= n;
        if self.prefix.is_empty() {
            // An emptied `Bytes` still holds its allocation: let it go.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.written.add(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.written.add(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.shut.notify_one();
            this.closing = Some(Lingering::new());
        }
        if let Some(lingering) = &mut this.closing {
            ready!(lingering.poll(Pin::new(&mut this.io), cx));
        }
        Poll::Ready(Ok(()))
    }
}
