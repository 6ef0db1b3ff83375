//! A test stand-in for a socket whose bytes arrive, and are taken, in pieces of any size: a
//! pipe end that moves at most so many bytes per read and per write. Streaming code that is
//! right for one split and wrong for another (a record cut between reads, a frame between
//! writes) is caught by property tests run over it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// A pipe end moving at most `most` bytes per read and per write.
pub(crate) struct Trickle {
    pub(crate) io: DuplexStream,
    pub(crate) most: usize,
}

/// Runs `exchange` on a one-thread runtime with its clock paused, so that a minute's timeout
/// fires only once nothing can run (a lost wake-up), never for a case that is merely slow.
/// Whether it finished.
pub(crate) fn finishes(exchange: impl std::future::Future<Output = ()>) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let within = std::time::Duration::from_secs(60);
    runtime.block_on(async { tokio::time::timeout(within, exchange).await.is_ok() })
}

/// How many bytes a pipe end moves at a time: a few, a few hundred, or a few thousand.
pub(crate) fn piece_size() -> impl proptest::strategy::Strategy<Value = usize> {
    proptest::prop_oneof![1usize..8, 8usize..300, 300usize..5_000]
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut piece = vec![0u8; buf.remaining().min(self.most)];
        let mut small = ReadBuf::new(&mut piece);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let most = data.len().min(self.most);
        Pin::new(&mut self.io).poll_write(cx, &data[..most])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A pipe has no kernel connection to ask.
impl crate::splice::PeerSocket for Trickle {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        None
    }
}

/// The TLS stream over a pipe, as the relay's client side in tests.
impl crate::splice::PeerSocket for crate::tls::TlsStream<Trickle> {
    fn peer_error(&self) -> Option<io::ErrorKind> {
        None
    }

    fn failure(&self) -> Option<String> {
        self.failure().map(|e| e.to_string())
    }
}

/// `len` bytes of a pattern that differs by `seed`.
pub(crate) fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + seed * 13 + i / 251) as u8)
        .collect()
}

/// Writes `sent` to `io` and closes its sending side, while reading it to the end.
pub(crate) async fn send_and_take<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    sent: &[u8],
) -> Vec<u8> {
    let (mut reading, mut writing) = tokio::io::split(io);
    let write = async {
        writing.write_all(sent).await.unwrap();
        writing.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = reading.read_to_end(&mut got);
    let ((), read) = tokio::join!(write, read);
    read.unwrap();
    got
}

/// The stall detector itself: an exchange that can never finish is reported (at once, on the
/// paused clock), one that finishes is not.
#[test]
fn an_exchange_that_can_never_finish_is_reported() {
    assert!(!finishes(std::future::pending()));
    assert!(finishes(async {}));
}
