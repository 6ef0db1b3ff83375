//! One direction of the relay: the bytes read during the handshake go out first, then what
//! the reader sends is written on as it comes, then its half-close is passed on.
//!
//! The two directions hold their bytes differently, so an idle one holds no buffer of ours:
//! client → backend writes a record's worth straight out of the reader's own buffer (the TLS
//! stream's plaintext), and gathers smaller records into a pooled buffer first, so a client sending
//! a byte per TLS record costs one write per buffer, not one per byte; backend → client
//! borrows a buffer from a small per-thread pool for each read. Either keeps a pooled buffer
//! only while its bytes wait to be written.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use super::{CloseReason, Peer};

use crate::pool::RELAY_SIZE as BUF_SIZE;
/// Plaintext the TLS reader hands over at once from which client → backend writes without
/// gathering: a quarter of a full record. Below it, pieces are copied together first, so the
/// backend gets at least this much per write while the client keeps sending.
const GATHER_BELOW: usize = BUF_SIZE / 4;

/// A direction fails on its reading or its writing side; the caller knows which peer that is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    Read(io::ErrorKind),
    Write(io::ErrorKind),
}

impl Failure {
    pub(super) fn blame(self, reader: Peer, writer: Peer) -> CloseReason {
        match self {
            Failure::Read(kind) => CloseReason::Error(reader, kind),
            Failure::Write(kind) => CloseReason::Error(writer, kind),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// One direction of the relay.
pub(super) struct Direction {
    /// Bytes read during the HTTP handshake that still have to go out.
    early: Bytes,
    /// A pooled buffer holding read-but-unwritten bytes `[pos, end)`; `None` while idle.
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// Something was written since the last flush.
    unflushed: bool,
    /// The reader hit EOF and the writer is being shut down.
    pub(super) eof: bool,
    pub(super) finished: bool,
    /// The last write found the writer full, with bytes still to go.
    pub(super) stuck: bool,
    pub(super) bytes: u64,
    /// The reader failed (or its connection was reset, which a write to it took first): the
    /// direction ends with that failure once what it read before is written, not at once,
    /// so a client's last frame in front of its reset or a broken record still reaches the
    /// backend, as the kernel hands out what arrived before a reset.
    read_failed: Option<io::ErrorKind>,
}

impl Direction {
    pub(super) fn new(early: Bytes) -> Direction {
        Direction {
            early,
            buf: None,
            pos: 0,
            end: 0,
            unflushed: false,
            eof: false,
            finished: false,
            stuck: false,
            bytes: 0,
            read_failed: None,
        }
    }

    /// The reader's connection was reset (a write to it said so): its end of stream, once
    /// what it sent before is relayed, is that failure, not a half-close to pass on.
    pub(super) fn reader_reset(&mut self) {
        self.read_failed
            .get_or_insert(io::ErrorKind::ConnectionReset);
    }

    /// Its reader ended the stream and the half-close was passed on: nothing of it is left
    /// to relay, and its reader is read no more.
    pub(super) fn over(&self) -> bool {
        self.finished && self.eof
    }

    /// How the reader failed, if it did.
    pub(super) fn read_failure(&self) -> Option<io::ErrorKind> {
        self.read_failed
    }

    /// Client → backend: the reader keeps its own buffer (the TLS stream's plaintext, one
    /// record or a few small ones at a time). A record's worth is written from it directly;
    /// smaller records are gathered into a pooled buffer, written out when it is full or the
    /// reader has nothing more now.
    pub(super) fn poll_from_buffered<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        ready!(self.poll_early(cx, writer, active))?;
        loop {
            if self.eof {
                let held = ready!(self.poll_write_held(cx, writer, active));
                // The reader failed first: that is how the tunnel ends, whatever became of
                // what it had sent before (the writer may have gone meanwhile, too).
                if let (Some(kind), Err(_)) = (self.read_failed, &held) {
                    release(self.buf.take());
                    return Poll::Ready(Err(Failure::Read(kind)));
                }
                held?;
                return self.poll_finish(cx, writer);
            }
            let data = match Pin::new(&mut *reader).poll_fill_buf(cx) {
                Poll::Ready(Ok(data)) => data,
                Poll::Ready(Err(e)) if is_eof(&e) => &[],
                Poll::Ready(Err(e)) => {
                    // Bytes gathered before it are still to go: end once they have.
                    self.read_failed.get_or_insert(e.kind());
                    &[]
                }
                Poll::Pending => {
                    ready!(self.poll_write_held(cx, writer, active))?;
                    return self.poll_idle_flush(cx, writer);
                }
            };
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            crate::coalesce::read(data.len());
            if self.buf.is_none() && data.len() >= GATHER_BELOW {
                let written = poll_write_some(cx, writer, data);
                self.stuck = written.is_pending();
                let n = ready!(written)?;
                Pin::new(&mut *reader).consume(n);
                self.wrote(n, active);
                continue;
            }
            let buf = self.buf.get_or_insert_with(acquire);
            let n = data.len().min(buf.len() - self.end);
            buf[self.end..self.end + n].copy_from_slice(&data[..n]);
            self.end += n;
            Pin::new(&mut *reader).consume(n);
            if self.end == BUF_SIZE {
                ready!(self.poll_write_held(cx, writer, active))?;
            }
        }
    }

    /// Backend → client: borrow a pooled buffer for each read, give it back while idle.
    pub(super) fn poll_from_raw<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        ready!(self.poll_early(cx, writer, active))?;
        loop {
            ready!(self.poll_write_held(cx, writer, active))?;
            if self.eof {
                return self.poll_finish(cx, writer);
            }
            let mut buf = acquire();
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => self.eof = true,
                Poll::Ready(Ok(())) => {
                    self.end = read.filled().len();
                    crate::coalesce::read(self.end);
                    self.pos = 0;
                    self.buf = Some(buf);
                    continue;
                }
                Poll::Ready(Err(e)) if is_eof(&e) => self.eof = true,
                Poll::Ready(Err(e)) => {
                    release(Some(buf));
                    return Poll::Ready(Err(Failure::Read(e.kind())));
                }
                Poll::Pending => {
                    release(Some(buf));
                    return self.poll_idle_flush(cx, writer);
                }
            }
            release(Some(buf));
        }
    }

    /// Writes out the pooled buffer's bytes, if it holds any, and gives the buffer back once
    /// they are all written; a writer that cannot take them now keeps them held.
    fn poll_write_held<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<Result<()>> {
        let Some(buf) = self.buf.take() else {
            return Poll::Ready(Ok(()));
        };
        while self.pos < self.end {
            let written = poll_write_some(cx, writer, &buf[self.pos..self.end]);
            self.stuck = written.is_pending();
            match written {
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.wrote(n, active);
                }
                other => {
                    self.buf = Some(buf);
                    return other.map_ok(|_| ());
                }
            }
        }
        (self.pos, self.end) = (0, 0);
        release(Some(buf));
        Poll::Ready(Ok(()))
    }

    /// Its writer is broken: what is left for it is dropped (the buffer back to the pool),
    /// and the direction is over.
    pub(super) fn abandon(&mut self) {
        self.finished = true;
        release(self.buf.take());
    }

    fn poll_early<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<Result<()>> {
        while self.early.has_remaining() {
            let written = poll_write_some(cx, writer, &self.early);
            self.stuck = written.is_pending();
            let n = ready!(written)?;
            self.early.advance(n);
            self.wrote(n, active);
        }
        // Drop the handshake-time buffer: it may pin hyper's whole read buffer.
        self.early = Bytes::new();
        Poll::Ready(Ok(()))
    }

    /// The reader has nothing now: push out what was written so the peer sees it.
    fn poll_idle_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<()>> {
        if self.unflushed {
            ready!(Pin::new(writer).poll_flush(cx)).map_err(|e| Failure::Write(e.kind()))?;
            self.unflushed = false;
        }
        Poll::Pending
    }

    /// Pass the half-close on: flush and shut down the writer's sending side. Unless the
    /// reader failed: a stream cut short is not a close, and the tunnel ends with the failure.
    fn poll_finish<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<()>> {
        if let Some(kind) = self.read_failed {
            return Poll::Ready(Err(Failure::Read(kind)));
        }
        match ready!(Pin::new(writer).poll_shutdown(cx)) {
            // The peer may already be gone; the other direction decides what that means.
            Ok(()) | Err(_) => {}
        }
        self.finished = true;
        Poll::Ready(Ok(()))
    }

    fn wrote(&mut self, n: usize, active: &mut bool) {
        self.bytes += n as u64;
        self.unflushed = true;
        *active = true;
    }
}

fn poll_write_some<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    writer: &mut W,
    data: &[u8],
) -> Poll<Result<usize>> {
    match ready!(Pin::new(writer).poll_write(cx, data)) {
        Ok(0) => Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero))),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(Failure::Write(e.kind()))),
    }
}

/// A TCP close without TLS close_notify is how most clients end a WebSocket after its close
/// frames; treat it as a plain end of stream, not a failure.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

fn acquire() -> Box<[u8]> {
    crate::pool::RELAY.take()
}

fn release(buf: Option<Box<[u8]>>) {
    if let Some(buf) = buf {
        crate::pool::RELAY.give(buf);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::drain::Drain;
    use crate::splice::Splice;

    #[tokio::test]
    async fn early_bytes_go_first_and_half_close_is_passed_on() {
        let (client, mut client_peer) = duplex(64);
        let (backend, mut backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        let relay = tokio::spawn(async move {
            let early_up = Bytes::from_static(b"early-up ");
            let early_down = Bytes::from_static(b"early-down ");
            Splice::new(
                BufReader::new(client),
                early_up,
                backend,
                early_down,
                Duration::from_secs(60),
                &drain,
            )
            .await
        });
        client_peer.write_all(b"hello").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early-up hello");
        backend_peer.write_all(b"bye").await.unwrap();
        backend_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early-down bye");
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::Closed(Peer::Client));
        assert_eq!(outcome.client_to_backend, 14);
        assert_eq!(outcome.backend_to_client, 14);
    }

    /// Hands out its plaintext as rustls does, a record at a time, here a byte per record;
    /// after `pending_after` bytes it has nothing more for now (Pending), at the end EOF, or
    /// `then` (a reset, say).
    struct TinyRecords {
        data: Vec<u8>,
        pos: usize,
        pending_after: usize,
        then: Option<io::ErrorKind>,
    }

    impl TinyRecords {
        /// `data`, then EOF, with nothing pending on the way.
        fn of(data: &[u8]) -> TinyRecords {
            TinyRecords {
                data: data.to_vec(),
                pos: 0,
                pending_after: usize::MAX,
                then: None,
            }
        }

        /// A client's last small records, then its reset.
        fn then_reset(data: &[u8]) -> TinyRecords {
            let then = Some(io::ErrorKind::ConnectionReset);
            TinyRecords {
                then,
                ..Self::of(data)
            }
        }
    }

    impl AsyncRead for TinyRecords {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            unreachable!("read through its buffer")
        }
    }

    impl AsyncBufRead for TinyRecords {
        fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
            let this = self.get_mut();
            if this.pos == this.pending_after {
                return Poll::Pending;
            }
            if let (true, Some(kind)) = (this.pos == this.data.len(), this.then) {
                return Poll::Ready(Err(kind.into()));
            }
            let end = (this.pos + 1).min(this.data.len());
            Poll::Ready(Ok(&this.data[this.pos..end]))
        }

        fn consume(self: Pin<&mut Self>, n: usize) {
            self.get_mut().pos += n;
        }
    }

    /// Takes everything, and notes the size of each write and whether it was shut down.
    #[derive(Default)]
    struct Writes {
        sizes: Vec<usize>,
        bytes: Vec<u8>,
        shut: bool,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.sizes.push(data.len());
            this.bytes.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// One poll of a new client → backend direction.
    fn relay_once<R, W>(reader: &mut R, writer: &mut W) -> Poll<Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut direction = Direction::new(Bytes::new());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        direction.poll_from_buffered(&mut cx, reader, writer, &mut false)
    }

    #[test]
    fn a_byte_per_tls_record_is_written_a_buffer_at_a_time() {
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut reader = TinyRecords::of(&data);
        let mut writer = Writes::default();
        assert!(matches!(
            relay_once(&mut reader, &mut writer),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writer.sizes, [BUF_SIZE, BUF_SIZE, 40_000 - 2 * BUF_SIZE]);
        assert_eq!(writer.bytes, data);
    }

    #[test]
    fn gathered_bytes_go_out_as_soon_as_the_reader_has_no_more() {
        let mut reader = TinyRecords {
            pending_after: 5,
            ..TinyRecords::of(b"hello world")
        };
        let mut writer = Writes::default();
        assert!(relay_once(&mut reader, &mut writer).is_pending());
        assert_eq!(
            (writer.sizes.as_slice(), writer.bytes.as_slice()),
            (&[5][..], &b"hello"[..])
        );
    }

    /// A client's close frame, gathered (small records), then its reset in the same read:
    /// the frame still goes out, then the failure ends the direction, without a half-close.
    #[test]
    fn bytes_gathered_before_a_failed_read_are_written_first() {
        let (mut reader, mut writer) = (TinyRecords::then_reset(b"close frame"), Writes::default());
        assert!(ended_by_a_reset_read(relay_once(&mut reader, &mut writer)));
        assert_eq!(
            (writer.bytes.as_slice(), writer.shut),
            (&b"close frame"[..], false)
        );
    }

    /// A backend whose reset a write took first: what it sent before is relayed, then its
    /// end of stream is the failure it is, not a half-close (a close_notify) to pass on.
    #[test]
    fn the_end_of_a_reset_readers_stream_is_a_failure() {
        let mut direction = Direction::new(Bytes::new());
        direction.reader_reset();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut reader = io::Cursor::new(b"last words".to_vec());
        let mut writer = Writes::default();
        let relayed = direction.poll_from_raw(&mut cx, &mut reader, &mut writer, &mut false);
        assert!(ended_by_a_reset_read(relayed));
        assert_eq!(
            (writer.bytes.as_slice(), writer.shut),
            (&b"last words"[..], false)
        );
    }

    /// A client's close frame then its reset, as above, with the backend gone too (the write
    /// of the gathered bytes meets its reset): the client's failure, which came first, is
    /// still the one reported.
    #[test]
    fn a_failed_read_is_reported_even_if_its_last_bytes_cannot_be_written() {
        let mut reader = TinyRecords::then_reset(b"close frame");
        let mut writer = crate::splice::test_peers::ResetAfter::closed(b"");
        assert!(ended_by_a_reset_read(relay_once(&mut reader, &mut writer)));
    }

    fn ended_by_a_reset_read(relayed: Poll<Result<()>>) -> bool {
        matches!(
            relayed,
            Poll::Ready(Err(Failure::Read(io::ErrorKind::ConnectionReset)))
        )
    }
}
