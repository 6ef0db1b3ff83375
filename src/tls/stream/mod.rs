//! A TLS connection, a client's to wsgate (the server side, [`accept`]) or wsgate's to a
//! backend with `backend_tls` (the client side, [`connect`]), run on rustls's unbuffered API
//! so that its buffers are ours: each
//! is lent from [`crate::pool::TLS`] only while bytes wait in it, and an idle connection holds
//! none. (rustls's buffered connection keeps a 4 KiB read buffer for the connection's whole
//! life: with many quiet tunnels, that was the largest part of what each one cost.)
//!
//! Three buffers, each empty and given back most of the time: `incoming` holds TLS bytes
//! read but not yet taken by rustls (a record's start, while the rest is on its way);
//! `plain` holds decrypted bytes not yet read; `outgoing` holds TLS bytes not yet written.
//! The stream is the usual `AsyncRead` + `AsyncBufRead` + `AsyncWrite`, with tokio-rustls's
//! meaning: a write is taken once encrypted, flushed as the socket takes it; shutdown sends
//! `close_notify`, then the TCP FIN; a TCP close without `close_notify` reads as
//! `UnexpectedEof`. One task polls both ways (hyper, then the splice): a read may write what
//! rustls has to send (a key update's answer), so the stream is not to be split across tasks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use std::ops::DerefMut;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{AlertDescription, ClientConfig, ServerConfig};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use held::Held;

mod held;

/// The most plaintext one TLS record carries.
const MAX_FRAGMENT: usize = 16 * 1024;
/// What one record adds to its plaintext at most: header, explicit nonce (TLS 1.2), content
/// type (TLS 1.3) and tag, rounded up.
const RECORD_OVERHEAD: usize = 64;
/// The most `incoming` may hold unprocessed: rustls joins a handshake message split over
/// records there (during the handshake, or a key update after it), and allows such messages
/// up to 64 KiB; one record more may be on its way behind them. What is past it is refused,
/// as rustls's own buffered connection refuses it ("message buffer full"): a client sending a
/// handshake message a byte per padded record must not make a connection hold megabytes.
const MAX_HELD: usize = 64 * 1024 + 20 * 1024;

/// Which end of TLS a stream is: the server's (a client's connection to wsgate) or the
/// client's (wsgate's to a backend with `backend_tls`). Both run on the same state machine.
pub(crate) trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;

    /// rustls's `process_tls_records`, which each side has on its own.
    fn process_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process_records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// A TLS connection over `io`: the server side unless said otherwise.
pub(crate) struct TlsStream<IO, C = UnbufferedServerConnection> {
    io: IO,
    conn: C,
    incoming: Held,
    plain: Held,
    outgoing: Held,
    /// The client's `close_notify` arrived: its plaintext ends once `plain` is read.
    peer_closed: bool,
    /// The TCP connection's read side reached its end.
    eof: bool,
    /// Our `close_notify` is written into `outgoing` (or could not be: rustls had failed).
    close_queued: bool,
    /// rustls failed (its alert is in `outgoing`): every later read and write fails the same
    /// way, without asking rustls again (it would take the same bad record again). Boxed:
    /// every idle tunnel carries the field, few ever fill it.
    failed: Option<Box<rustls::Error>>,
    /// A write to the socket failed, this way.
    write_failed: Option<io::ErrorKind>,
}

/// The bytes a connection opened with, read before TLS began (to tell TLS from plain HTTP),
/// for the handshake to start from.
pub(crate) struct Opening(Held);

impl Opening {
    pub(crate) fn new() -> Opening {
        Opening(Held::default())
    }

    /// Reads once more from `io` into the opening: the bytes read, or 0 at the end of stream.
    pub(crate) fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_read_from(cx, io)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.data()
    }
}

/// Runs the server side of a TLS handshake over `io`, starting from the bytes already read.
pub(crate) async fn accept<IO>(
    io: IO,
    opening: Opening,
    config: Arc<ServerConfig>,
) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    handshake(io, conn, opening.0).await
}

/// Runs the client side of a TLS handshake with the server `name` over `io`.
pub(crate) async fn connect<IO>(
    io: IO,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsStream<IO, UnbufferedClientConnection>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid_data)?;
    handshake(io, conn, Held::default()).await
}

async fn handshake<IO, C>(io: IO, conn: C, incoming: Held) -> io::Result<TlsStream<IO, C>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    let mut tls = TlsStream {
        io,
        conn,
        incoming,
        plain: Held::default(),
        outgoing: Held::default(),
        peer_closed: false,
        eof: false,
        close_queued: false,
        failed: None,
        write_failed: None,
    };
    std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

/// What rustls made of the bytes received so far, or of the data given it to seal.
enum Outcome {
    /// A record's plaintext was added to `plain`.
    Plaintext,
    /// It needs more bytes from the client for its next step.
    NeedMore,
    /// The client's `close_notify` arrived.
    PeerClosed,
    /// What [`Sealing`] asked for is in `outgoing`, or could not be put there.
    Sealed(io::Result<()>),
}

/// What rustls is to do once it takes application data (its `WriteTraffic` state).
#[derive(Clone, Copy)]
enum Sealing<'a> {
    /// Nothing: it is asked for what it makes of the bytes received.
    Not,
    /// Encrypt these (at most a record's worth).
    Data(&'a [u8]),
    /// Queue `close_notify`.
    CloseNotify,
}

/// Every record rustls can decrypt now, into `plain`, their bytes in `incoming` added to
/// `discard`: all of them at once, so the relay writes what came together in one write. Read
/// (`reading`), that is the plaintext the reader waits for; sealing, they wait in `plain`.
fn take_records<Data>(
    mut records: rustls::unbuffered::ReadTraffic<'_, '_, Data>,
    plain: &mut Held,
    discard: &mut usize,
    reading: bool,
) -> Result<Option<Outcome>, rustls::Error> {
    let mut taken = Ok(reading.then_some(Outcome::Plaintext));
    while let Some(record) = records.next_record() {
        match record {
            Ok(record) => {
                *discard += record.discard;
                plain.push(record.payload);
            }
            Err(e) => taken = Err(e),
        }
    }
    taken
}

/// What `sealing` asks of rustls once it takes application data, sealed into `outgoing`.
fn seal<Data>(
    mut traffic: rustls::unbuffered::WriteTraffic<'_, Data>,
    sealing: Sealing<'_>,
    outgoing: &mut Held,
) -> Outcome {
    match sealing {
        Sealing::Not => Outcome::NeedMore,
        Sealing::Data(data) => Outcome::Sealed(sealed(
            outgoing.fill_with(RECORD_OVERHEAD, |room| traffic.encrypt(data, room)),
        )),
        Sealing::CloseNotify => Outcome::Sealed(sealed(
            outgoing.fill_with(RECORD_OVERHEAD, |room| traffic.queue_close_notify(room)),
        )),
    }
}

impl<IO, C> TlsStream<IO, C> {
    /// The connection under TLS.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }

    pub(crate) fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// What TLS failed on, if it failed: the tunnel's line says it in TLS's words.
    pub(crate) fn failure(&self) -> Option<&rustls::Error> {
        self.failed.as_deref()
    }
}

impl<IO> TlsStream<IO, UnbufferedServerConnection> {
    /// The certificate chain the client showed (`tls.client_ca`), its own first: verified in
    /// this handshake, or restored from a resumed session's ticket or cache entry.
    pub(crate) fn client_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Whether the handshake resumed an earlier session.
    pub(crate) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

impl<IO, C: Side> TlsStream<IO, C> {
    /// Lets rustls take what `incoming` holds, until it has plaintext for the reader, needs
    /// more bytes, or fails; or, sealing, until it has sealed. What it has to send
    /// (handshake messages, alerts, a key update) goes into `outgoing`, for the next flush.
    /// On failure, the alert telling the client so is in `outgoing` too.
    fn process(&mut self, sealing: Sealing<'_>) -> Result<Outcome, rustls::Error> {
        loop {
            if let Some(e) = &self.failed {
                return Err(rustls::Error::clone(e));
            }
            match self.step(sealing) {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// rustls failed: its alert goes into `outgoing`, and the failure is kept.
    fn fail(&mut self, e: rustls::Error) -> rustls::Error {
        if self.failed.is_none() {
            self.queue_alert();
            if self.outgoing.is_empty() && self.conn.protocol_version().is_none() {
                if let Some(alert) = unsaid_alert(&e) {
                    self.outgoing.push(&alert);
                }
            }
            self.failed = Some(Box::new(e.clone()));
        }
        e
    }

    /// One state of rustls's: `None` where rustls has more to say first. Always over the real
    /// `incoming`, as rustls asks, sealing too: records decrypted on the way wait in `plain`
    /// for the reader (which is not waiting on the socket while they are there).
    fn step(&mut self, sealing: Sealing<'_>) -> Result<Option<Outcome>, rustls::Error> {
        let Self {
            conn,
            incoming,
            plain,
            outgoing,
            peer_closed,
            ..
        } = self;
        let reading = matches!(sealing, Sealing::Not);
        let UnbufferedStatus { mut discard, state } = conn.process_records(incoming.data_mut());
        let step = match state {
            Ok(ConnectionState::ReadTraffic(records)) => {
                take_records(records, plain, &mut discard, reading)
            }
            Ok(ConnectionState::EncodeTlsData(mut message)) => {
                encode(&mut message, outgoing).map(|()| None)
            }
            // It goes out with `outgoing`, before anything written after it.
            Ok(ConnectionState::TransmitTlsData(sent)) => {
                sent.done();
                Ok(None)
            }
            Ok(ConnectionState::WriteTraffic(traffic)) => {
                Ok(Some(seal(traffic, sealing, outgoing)))
            }
            Ok(ConnectionState::PeerClosed) if !reading => {
                *peer_closed = true;
                Ok(None)
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) if reading => {
                Ok(Some(Outcome::PeerClosed))
            }
            Ok(ConnectionState::Closed) => {
                Ok(Some(Outcome::Sealed(Err(io::ErrorKind::BrokenPipe.into()))))
            }
            // Never offered: the config sets no `max_early_data_size`.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                Err(rustls::Error::General("early data not accepted".into()))
            }
            // `BlockedHandshake`: rustls waits for the client.
            Ok(_) if reading => Ok(Some(Outcome::NeedMore)),
            Ok(_) => Ok(Some(Outcome::Sealed(Err(
                io::ErrorKind::NotConnected.into()
            )))),
            Err(e) => Err(e),
        };
        incoming.consume(discard);
        step
    }

    /// After a failure, rustls has its alert for the client ready: into `outgoing` with it.
    /// rustls is asked only while it has something to send: asked once more, it would take
    /// the record that failed again. And with the real `incoming`, as always: rustls keeps
    /// positions in it (of a handshake message being joined), and an empty slice in its place
    /// would make it index out of range.
    fn queue_alert(&mut self) {
        while self.conn.wants_write() {
            let Self {
                conn,
                incoming,
                outgoing,
                ..
            } = self;
            let UnbufferedStatus { discard, state } = conn.process_records(incoming.data_mut());
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut message)) => {
                    encode(&mut message, outgoing).is_ok()
                }
                _ => false,
            };
            incoming.consume(discard);
            if !encoded {
                return;
            }
        }
    }

    /// Encrypts data (at most a record's worth) into `outgoing`, or queues `close_notify`.
    fn seal(&mut self, sealing: Sealing<'_>) -> io::Result<()> {
        match self.process(sealing) {
            Ok(Outcome::Sealed(sealed)) => sealed,
            // Not reached: sealing ends in `Sealed` or a failure.
            Ok(_) => Err(io::ErrorKind::NotConnected.into()),
            Err(e) => Err(invalid_data(e)),
        }
    }
}

/// The fatal alert, as a plaintext record, that rustls leaves unsent for `e` when its
/// handshake-message joiner fails (a hello declaring a message over 64 KiB, a record of
/// another type in the middle of a split hello, too many empty records): it returns those
/// errors without the alert it sends for every other malformed message (RFC 8446 §6: the
/// peer should hear why). Sent only before a version is agreed, when nothing has been sent
/// and no key is in use, so plaintext is what the peer expects.
fn unsaid_alert(e: &rustls::Error) -> Option<[u8; 7]> {
    let description = match e {
        rustls::Error::InvalidMessage(_) => AlertDescription::DecodeError,
        rustls::Error::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => return None,
    };
    // Content type alert (21), TLS 1.2 on the record (as rustls writes its own first
    // records), length 2, level fatal (2).
    Some([21, 3, 3, 0, 2, 2, u8::from(description)])
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Side> TlsStream<IO, C> {
    /// Drives the handshake to its end: the peer's `Finished` taken (or, for the client, its
    /// own sent), and everything rustls had to send written.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_out(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.process(Sealing::Not) {
                Ok(Outcome::Plaintext) => {}
                // A close_notify right behind the client's Finished (a TLS health check, `s_client
                // </dev/null`): the handshake is done, and the first read is the end of stream.
                Ok(Outcome::PeerClosed) if !self.conn.is_handshaking() => self.peer_closed = true,
                Ok(Outcome::PeerClosed) => return Poll::Ready(Err(handshake_eof())),
                // Something to send, or the handshake over with nothing to send: the top of the
                // loop writes it, or returns. (A full TLS 1.2 handshake ends, for the client, on
                // the server's Finished: reading on would wait for a peer waiting for us.)
                Ok(Outcome::NeedMore | Outcome::Sealed(_))
                    if !self.outgoing.is_empty() || !self.conn.is_handshaking() => {}
                Ok(Outcome::NeedMore | Outcome::Sealed(_)) => {
                    if ready!(self.incoming.poll_read_from(cx, &mut self.io))? == 0 {
                        return Poll::Ready(Err(handshake_eof()));
                    }
                }
                Err(e) => {
                    // The alert, if the socket takes it now; the failure is what counts.
                    let _ = self.poll_write_out(cx);
                    return Poll::Ready(Err(invalid_data(e)));
                }
            }
        }
    }

    /// Writes `outgoing` until it is empty (then it goes back to the pool).
    /// A failed write is kept: what `outgoing` held can never be sent and is dropped, and
    /// every later write fails the same way (reads do not: what the client sent before it
    /// went is still to be read).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.write_failed {
            return Poll::Ready(Err(kind.into()));
        }
        while !self.outgoing.is_empty() {
            let failure = match ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.data()))
            {
                Ok(0) => io::ErrorKind::WriteZero.into(),
                Ok(n) => {
                    self.outgoing.consume(n);
                    continue;
                }
                Err(e) => e,
            };
            self.write_failed = Some(failure.kind());
            self.outgoing.consume(self.outgoing.len());
            return Poll::Ready(Err(failure));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Side + Unpin> AsyncBufRead for TlsStream<IO, C> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            // What is decrypted goes to the reader, unless another full record still fits
            // beside it: small records are handed over together.
            if this.peer_closed || (!this.plain.is_empty() && this.plain.room() < MAX_FRAGMENT) {
                break;
            }
            match this.process(Sealing::Not) {
                Ok(Outcome::Plaintext) => continue,
                Ok(Outcome::PeerClosed) => this.peer_closed = true,
                Ok(Outcome::NeedMore | Outcome::Sealed(_)) => {
                    // rustls's own messages (a key update's answer, session tickets) go out
                    // now if the socket takes them, else with the next write or flush. A
                    // failed write is the writer's to report: the client may have sent its
                    // last bytes and gone, and those are still to be read.
                    let _ = this.poll_write_out(cx);
                    if !this.plain.is_empty() {
                        break;
                    }
                    if this.eof {
                        return Poll::Ready(Err(truncated(&this.incoming)));
                    }
                    if ready!(this.incoming.poll_read_from(cx, &mut this.io))? == 0 {
                        this.eof = true;
                    }
                }
                Err(e) => {
                    let _ = this.poll_write_out(cx);
                    // What was decrypted before the failure is read first; the failure is
                    // kept, and is the next read's answer.
                    if !this.plain.is_empty() {
                        break;
                    }
                    return Poll::Ready(Err(invalid_data(e)));
                }
            }
        }
        Poll::Ready(Ok(this.plain.data()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().plain.consume(amt);
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Side + Unpin> AsyncRead for TlsStream<IO, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Side + Unpin> AsyncWrite for TlsStream<IO, C> {
    /// Takes up to a record's worth once it is encrypted, as tokio-rustls does; the bytes go
    /// out as the socket takes them. Waits only while the last record is still unwritten.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_write_out(cx))?;
        let n = data.len().min(MAX_FRAGMENT);
        this.seal(Sealing::Data(&data[..n]))?;
        // Started now; what the socket does not take waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// `close_notify`, then the TCP FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            ready!(this.poll_write_out(cx))?;
            this.close_queued = true;
            // A connection rustls has failed has no close_notify to send: only the FIN.
            let _ = this.seal(Sealing::CloseNotify);
        }
        ready!(this.poll_write_out(cx))?;
        // As tokio-rustls: a connection the peer has already ended is shut.
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            done => Poll::Ready(done),
        }
    }
}

/// A record sealed into `outgoing`, or why not, in I/O's terms.
fn sealed(done: Result<(), EncryptError>) -> io::Result<()> {
    done.map_err(|e| io::Error::other(e.to_string()))
}

/// Encodes one of rustls's messages into `outgoing`.
fn encode<Data>(
    message: &mut rustls::unbuffered::EncodeTlsData<'_, Data>,
    outgoing: &mut Held,
) -> Result<(), rustls::Error> {
    outgoing
        .fill_with(0, |room| message.encode(room))
        .map_err(|e| rustls::Error::General(e.to_string()))
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The peer closed TCP during the handshake.
fn handshake_eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")
}

/// The peer closed TCP without `close_notify`. Between records, as most WebSocket clients
/// end after their close frames, that is an end (the splice passes it on as a half-close);
/// in the middle of one (`unread`: a record's first bytes), the stream was cut: an aborted
/// connection, which the splice takes as the client's failure (the other side closed at
/// once), and the head's reader as a client gone.
fn truncated(unread: &Held) -> io::Error {
    if !unread.is_empty() {
        return io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "peer closed connection in the middle of a TLS record",
        );
    }
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

#[cfg(test)]
mod tests;
