//! The lingering close of an ended tunnel: each side still connected is shut, then read and
//! dropped until it closes, because closing a socket with input unread makes the kernel
//! reset it and throw away what it has not sent yet (nginx's lingering close).

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CloseReason, Peer, PeerSocket, Splice};

/// How long an ended tunnel's client may take to read the rest and close (see
/// [`Splice::linger`]), and how long it may stay quiet meanwhile.
const LINGER_TIME: Duration = Duration::from_secs(10);
const LINGER_QUIET: Duration = Duration::from_secs(1);
/// How much a side may still send before it is closed anyway: many socket buffers' worth of
/// last words. A peer still sending past it is streaming, not finishing, and reading it at
/// full speed for [`LINGER_TIME`] would cost a core (an audit's flooding backend: 7.5 GB).
const LINGER_BYTES: usize = 4 << 20;

impl<C, B> Splice<C, B>
where
    C: AsyncBufRead + AsyncWrite + PeerSocket + Unpin,
    B: AsyncRead + AsyncWrite + PeerSocket + Unpin,
{
    /// After the relay ended with `reason`: lets each side take in what is still on its way
    /// to it before its connection is closed. A socket closed with unread input makes the
    /// kernel answer with a reset and throw away what it has not sent yet: the tail of the
    /// backend's last message, megabytes on a slow link, when the client went on sending after
    /// the backend had gone (or the tail of the client's last message, the other way round).
    /// So each side still connected is shut (for the client: TLS close_notify, then FIN, once
    /// the TLS layer's bytes are out), and what it still sends is read and dropped until it
    /// closes or is quiet for [`LINGER_QUIET`], for at most [`LINGER_TIME`] and
    /// [`LINGER_BYTES`], or until shutdown (nginx's lingering close). A side that had closed
    /// already costs one read.
    /// Not after an idle timeout, a shutdown or a client certificate refused on recheck, which
    /// cut the tunnel on purpose, nor for a
    /// side whose own connection failed. After the backend's failed, the client's TLS is not
    /// ended properly (no close_notify, only the FIN): the stream was cut, and a client must
    /// be able to tell that from a backend that closed.
    pub(crate) async fn linger(self, reason: CloseReason) {
        let Splice {
            client,
            backend,
            up,
            down,
            drain,
            ..
        } = self;
        if matches!(
            reason,
            CloseReason::IdleTimeout
                | CloseReason::HalfClosedTimeout
                | CloseReason::Shutdown
                | CloseReason::ClientCertificateRefused
        ) {
            return;
        }
        let failed = |peer| matches!(reason, CloseReason::Error(p, _) if p == peer);
        // A side whose direction finished was shut then (its half-close passed on): shut
        // again, it would only cost a syscall, or a second write of a close_notify that
        // failed the first time.
        let client = async {
            if !failed(Peer::Client) {
                linger_on(client, failed(Peer::Backend), down.finished).await;
            }
        };
        let backend = async {
            if !failed(Peer::Backend) {
                linger_on(backend, false, up.finished).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER_TIME, async { tokio::join!(client, backend) }) => {}
            () = drain.started() => {}
        }
    }
}

/// Shuts `io`'s sending side unless it is `shut` already (`cut`: its TCP only, once what is
/// written is out, so a TLS peer reads a truncation), then reads and drops what it still sends
/// until it closes or is quiet for [`LINGER_QUIET`] (see [`Splice::linger`]).
async fn linger_on<S: AsyncRead + AsyncWrite + PeerSocket + Unpin>(
    mut io: S,
    cut: bool,
    shut: bool,
) {
    let shut = shut || (cut && shut_tcp_only(&mut io).await);
    if !shut {
        let _ = io.shutdown().await;
    }
    // In the boxed linger future (see `proxy`), not in every tunnel's task.
    let mut sink = [0u8; 4096];
    let mut budget = LINGER_BYTES;
    // A peer quiet for a moment has nothing in flight to make the close a reset.
    while let Ok(Ok(n)) = tokio::time::timeout(LINGER_QUIET, io.read(&mut sink)).await {
        budget = budget.saturating_sub(n);
        if n == 0 || budget == 0 {
            break;
        }
    }
}

/// Sends what is written, then the TCP FIN under any TLS; false if there is no TCP to reach.
async fn shut_tcp_only<S: AsyncWrite + PeerSocket + Unpin>(io: &mut S) -> bool {
    if io.flush().await.is_err() {
        // Its connection is broken too: nothing left to end properly.
        return true;
    }
    match io.tcp() {
        Some(tcp) => {
            let _ = tcp.shutdown().await;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{BufReader, DuplexStream, ReadBuf};

    use super::*;
    use crate::drain::Drain;
    use crate::splice::test_peers::{without_early, ResetAfter};
    use crate::splice::Outcome;

    /// `gone` sent 1 MiB and is gone; the other side, a real socket whose peer has not read
    /// yet, sent on (64 KiB the relay never reads). Closing that socket with its input unread
    /// would reset it and lose what the kernel had not delivered yet: the peer must read the
    /// whole 1 MiB, then a clean end.
    async fn last_words_reach_a_peer_still_sending(gone: Peer) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let last_words: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let gone_side = ResetAfter::closed(&last_words);
        peer.write_all(&[b'p'; 64 * 1024]).await.unwrap();
        let drain = Arc::new(Drain::default());
        let idle = Duration::from_secs(60);
        let relay = tokio::spawn(async move {
            match gone {
                Peer::Backend => {
                    let client = BufReader::new(socket);
                    let splice = without_early(client, gone_side, idle, &drain);
                    relay_then_linger(splice).await
                }
                Peer::Client => {
                    let client = BufReader::new(gone_side);
                    let splice = without_early(client, socket, idle, &drain);
                    relay_then_linger(splice).await
                }
            }
        });
        let mut got = Vec::new();
        let read = peer.read_to_end(&mut got).await;
        read.expect("a clean end, not a reset");
        assert!(
            got == last_words,
            "{} of {} bytes",
            got.len(),
            last_words.len()
        );
        drop(peer);
        assert_eq!(relay.await.unwrap().reason, CloseReason::Closed(gone));
    }

    async fn relay_then_linger<C, B>(mut splice: Splice<C, B>) -> Outcome
    where
        C: AsyncBufRead + AsyncWrite + PeerSocket + Unpin,
        B: AsyncRead + AsyncWrite + PeerSocket + Unpin,
    {
        let outcome = (&mut splice).await;
        splice.linger(outcome.reason).await;
        outcome
    }

    /// The backend is gone; the client floods on and never stops. It is read for
    /// [`LINGER_BYTES`], not for [`LINGER_TIME`].
    #[tokio::test]
    async fn a_peer_that_never_stops_sending_is_left_after_the_byte_budget() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let flood = tokio::spawn(async move {
            let chunk = [b'f'; 64 * 1024];
            let mut sent = 0usize;
            while peer.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let drain = Arc::new(Drain::default());
        let client = BufReader::new(socket);
        let splice = without_early(client, ResetAfter::closed(b""), LINGER_TIME, &drain);
        let ended = tokio::time::timeout(LINGER_TIME / 2, relay_then_linger(splice)).await;
        assert!(ended.is_ok(), "still lingering at half the linger time");
        let sent = flood.await.unwrap();
        assert!(sent >= LINGER_BYTES, "{sent}");
    }

    /// A pipe that counts its shutdowns.
    struct Counted(DuplexStream, Arc<AtomicUsize>);

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl PeerSocket for Counted {
        fn peer_error(&self) -> Option<io::ErrorKind> {
            None
        }
    }

    /// Both sides closed in turn, each half-close passed on: the linger shuts neither again
    /// (for a TLS client a second close_notify written, or a failed write, for nothing).
    #[tokio::test]
    async fn a_side_shut_by_its_half_close_is_not_shut_again() {
        let (client_end, mut client_peer) = tokio::io::duplex(1024);
        let (backend_end, mut backend_peer) = tokio::io::duplex(1024);
        let counts = [Arc::default(), Arc::default()];
        let [client_shut, backend_shut]: [Arc<AtomicUsize>; 2] = counts;
        let client = BufReader::new(Counted(client_end, client_shut.clone()));
        let backend = Counted(backend_end, backend_shut.clone());
        let drain = Arc::new(Drain::default());
        let splice = without_early(client, backend, LINGER_TIME, &drain);
        let relay = tokio::spawn(relay_then_linger(splice));
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        backend_peer.shutdown().await.unwrap();
        client_peer.read_to_end(&mut got).await.unwrap();
        drop((client_peer, backend_peer));
        relay.await.unwrap();
        let shut = |count: &AtomicUsize| count.load(Ordering::Relaxed);
        assert_eq!((shut(&client_shut), shut(&backend_shut)), (1, 1));
    }

    #[tokio::test]
    async fn a_client_still_sending_when_the_tunnel_ends_gets_everything_and_a_clean_close() {
        last_words_reach_a_peer_still_sending(Peer::Backend).await;
    }

    #[tokio::test]
    async fn a_backend_still_sending_when_the_tunnel_ends_gets_everything_and_a_clean_close() {
        last_words_reach_a_peer_still_sending(Peer::Client).await;
    }
}
