//! A client's TLS connection, run on rustls's unbuffered API so that its buffers are ours: each
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

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::TLS as POOL;

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

/// A server-side TLS connection over `io`.
pub(crate) struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
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
    /// way, without asking rustls again (it would take the same bad record again).
    failed: Option<rustls::Error>,
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
    let mut tls = TlsStream {
        io,
        conn,
        incoming: opening.0,
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

/// What rustls made of the bytes received so far.
enum Progress {
    /// A record's plaintext was added to `plain`.
    Plaintext,
    /// It needs more bytes from the client for its next step.
    NeedMore,
    /// The client's `close_notify` arrived.
    PeerClosed,
}

impl<IO> TlsStream<IO> {
    /// The connection under TLS.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }

    pub(crate) fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Lets rustls take what `incoming` holds, until it has plaintext for the reader, needs
    /// more bytes, or fails. What it has to send (handshake messages, alerts, a key update)
    /// goes into `outgoing`, for the next flush. On failure, the alert telling the client so
    /// is in `outgoing` too.
    fn process(&mut self) -> Result<Progress, rustls::Error> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            match self.step() {
                Ok(Some(progress)) => return Ok(progress),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// rustls failed: its alert goes into `outgoing`, and the failure is kept.
    fn fail(&mut self, e: rustls::Error) -> rustls::Error {
        if self.failed.is_none() {
            self.queue_alert();
            self.failed = Some(e.clone());
        }
        e
    }

    /// One state of rustls's: `None` where rustls has more to say before it needs bytes.
    fn step(&mut self) -> Result<Option<Progress>, rustls::Error> {
        let Self {
            conn,
            incoming,
            plain,
            outgoing,
            ..
        } = self;
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming.data_mut());
        let progress = match state {
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    let record = record?;
                    discard += record.discard;
                    plain.push(record.payload);
                }
                Some(Progress::Plaintext)
            }
            Ok(ConnectionState::EncodeTlsData(mut message)) => {
                encode(&mut message, outgoing)?;
                None
            }
            // It goes out with `outgoing`, before anything written after it.
            Ok(ConnectionState::TransmitTlsData(sent)) => {
                sent.done();
                None
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Progress::PeerClosed),
            Ok(ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake) => {
                Some(Progress::NeedMore)
            }
            // Never offered: the config sets no `max_early_data_size`.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                return Err(rustls::Error::General("early data not accepted".into()))
            }
            Ok(_) => Some(Progress::NeedMore),
            Err(e) => {
                incoming.consume(discard);
                return Err(e);
            }
        };
        incoming.consume(discard);
        Ok(progress)
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
            let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming.data_mut());
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

    /// Encrypts `data` (at most a record's worth) into `outgoing`, or queues `close_notify`
    /// where `data` is `None`.
    fn seal(&mut self, data: Option<&[u8]>) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(invalid_data(e.clone()));
        }
        loop {
            let Self {
                conn,
                incoming,
                plain,
                outgoing,
                ..
            } = self;
            // The real `incoming`, as rustls asks; what it decrypts now waits in `plain`.
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(incoming.data_mut());
            let sealed = match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let sealed = outgoing.fill_with(RECORD_OVERHEAD, |room| match data {
                        Some(data) => traffic.encrypt(data, room),
                        None => traffic.queue_close_notify(room),
                    });
                    Some(Ok(sealed.map_err(|e| io::Error::other(e.to_string()))))
                }
                // Records the reader has not taken yet, decrypted on the way: they wait in
                // `plain` for it (it is not waiting on the socket while they are here).
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut taken = Ok(None);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.push(record.payload);
                            }
                            Err(e) => taken = Err(e),
                        }
                    }
                    taken.transpose()
                }
                Ok(ConnectionState::EncodeTlsData(mut message)) => {
                    encode(&mut message, outgoing).err().map(Err)
                }
                Ok(ConnectionState::TransmitTlsData(sent)) => {
                    sent.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => Some(Ok(Err(io::ErrorKind::BrokenPipe.into()))),
                Ok(_) => Some(Ok(Err(io::ErrorKind::NotConnected.into()))),
                Err(e) => Some(Err(e)),
            };
            self.incoming.consume(discard);
            match sealed {
                None => {}
                Some(Ok(sealed)) => return sealed,
                Some(Err(e)) => return Err(invalid_data(self.fail(e))),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Drives the handshake to its end: the client's `Finished` taken, and everything rustls
    /// had to send written.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_out(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.process() {
                Ok(Progress::Plaintext) => {}
                Ok(Progress::PeerClosed) => return Poll::Ready(Err(handshake_eof())),
                Ok(Progress::NeedMore) if !self.outgoing.is_empty() => {}
                Ok(Progress::NeedMore) => {
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

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for TlsStream<IO> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            // What is decrypted goes to the reader, unless another full record still fits
            // beside it: small records are handed over together.
            if this.peer_closed || (!this.plain.is_empty() && this.plain.room() < MAX_FRAGMENT) {
                break;
            }
            match this.process() {
                Ok(Progress::Plaintext) => continue,
                Ok(Progress::PeerClosed) => this.peer_closed = true,
                Ok(Progress::NeedMore) => {
                    // rustls's own messages (a key update's answer, session tickets) go out
                    // now if the socket takes them, else with the next write or flush. A
                    // failed write is the writer's to report: the client may have sent its
                    // last bytes and gone, and those are still to be read.
                    let _ = this.poll_write_out(cx);
                    if !this.plain.is_empty() {
                        break;
                    }
                    if this.eof {
                        return Poll::Ready(Err(truncated()));
                    }
                    if ready!(this.incoming.poll_read_from(cx, &mut this.io))? == 0 {
                        this.eof = true;
                    }
                }
                Err(e) => {
                    let _ = this.poll_write_out(cx);
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

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
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

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
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
        this.seal(Some(&data[..n]))?;
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
            let _ = this.seal(None);
        }
        ready!(this.poll_write_out(cx))?;
        // As tokio-rustls: a connection the peer has already ended is shut.
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            done => Poll::Ready(done),
        }
    }
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

/// What rustls's encoders fail with when the room given is too small, and how much they need.
trait NeedsRoom {
    fn needs(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(short) => Some(short.required_size),
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(short) => Some(short.required_size),
            _ => None,
        }
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The client closed TCP during the handshake.
fn handshake_eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")
}

/// The client closed TCP without `close_notify`: its stream may have been cut short.
fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

/// Bytes `[start, end)` of a buffer lent from the pool, or no buffer while there are none.
#[derive(Default)]
struct Held {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Held {
    fn data(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[self.start..self.end],
            None => &[],
        }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(buf) => &mut buf[self.start..self.end],
            None => &mut [],
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// How many more bytes fit, once what is held is moved to the front.
    fn room(&self) -> usize {
        self.buf.as_ref().map_or(POOL.size, |buf| buf.len()) - self.len()
    }

    /// Drops `n` bytes from the front; an emptied buffer goes back to the pool.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if let Some(buf) = self.buf.take() {
                POOL.give(buf);
            }
        }
    }

    /// Free space behind the held bytes, at least `at_least` bytes of it: a buffer from the
    /// pool, the held bytes moved to the front, or the held bytes moved to a pooled buffer (from
    /// a small one, see [`Held::shrink`]) or to a larger one, where that is too little.
    fn spare(&mut self, at_least: usize) -> &mut [u8] {
        let len = self.len();
        let buf = self.buf.get_or_insert_with(|| POOL.take());
        if buf.len() - self.end < at_least && buf.len() - len >= at_least {
            buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, len);
        } else if buf.len() - self.end < at_least {
            let mut moved = match len + at_least <= POOL.size {
                true => POOL.take(),
                false => vec![0u8; len + at_least].into_boxed_slice(),
            };
            moved[..len].copy_from_slice(&buf[self.start..self.end]);
            POOL.give(std::mem::replace(buf, moved));
            (self.start, self.end) = (0, len);
        }
        &mut buf[self.end..]
    }

    /// Keeps only the bytes held, not the buffer around them: for a connection about to wait
    /// with a record's start received (a client stalled mid-handshake, or between the
    /// segments of a record), which may wait long. The next read moves them to a pooled
    /// buffer again.
    fn shrink(&mut self) {
        if let Some(buf) = self
            .buf
            .as_mut()
            .filter(|buf| buf.len() > self.end - self.start)
        {
            let kept: Box<[u8]> = buf[self.start..self.end].into();
            POOL.give(std::mem::replace(buf, kept));
            (self.start, self.end) = (0, self.end - self.start);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Lets `fill` write into the free space (at least `at_least` bytes of it), growing it to
    /// what `fill` says it needs if that was too little.
    fn fill_with<E: NeedsRoom>(
        &mut self,
        at_least: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let mut want = at_least;
        loop {
            match fill(self.spare(want)) {
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) => match e.needs() {
                    Some(needed) if needed > want => want = needed,
                    _ => {
                        // An error with nothing written: a buffer just lent goes back.
                        self.consume(0);
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Reads from `io` into the free space: the bytes read, 0 at the end of stream.
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
    ) -> Poll<io::Result<usize>> {
        if self.len() >= MAX_HELD {
            return Poll::Ready(Err(invalid_data(rustls::Error::General(
                "message buffer full".into(),
            ))));
        }
        // What is held is a record's start: the rest of a pooled buffer behind it, or, past
        // that (a handshake message spread over records), half as much again, up to the limit.
        let at_least = match POOL.size.checked_sub(self.len()) {
            Some(rest) if rest > 0 => rest,
            _ => (self.len() / 2).min(MAX_HELD - self.len()),
        };
        let mut read = ReadBuf::new(self.spare(at_least));
        let polled = Pin::new(io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.end += n;
        match polled {
            // Nothing held: a buffer lent for this read goes back. A record's start held
            // while the connection waits: just those bytes are kept.
            _ if self.is_empty() => self.consume(0),
            Poll::Pending => self.shrink(),
            _ => {}
        }
        polled.map_ok(|()| n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    impl<IO> TlsStream<IO> {
        fn holds_a_buffer(&self) -> bool {
            [&self.incoming, &self.plain, &self.outgoing]
                .iter()
                .any(|held| held.buf.is_some())
        }
    }

    /// A server config for "localhost", and the roots a client trusts it with.
    fn pki() -> (Arc<ServerConfig>, rustls::RootCertStore) {
        crate::tls::install_default_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        (Arc::new(server), roots)
    }

    /// A server config for "localhost" and a client config trusting it.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let (server, roots) = pki();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, Arc::new(client))
    }

    /// A TCP connection on 127.0.0.1: the server's end and the client's.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    async fn handshake() -> (TlsStream<TcpStream>, Client) {
        let (server_config, client_config) = configs();
        handshake_with(server_config, client_config).await
    }

    async fn handshake_with(
        server_config: Arc<ServerConfig>,
        client_config: Arc<rustls::ClientConfig>,
    ) -> (TlsStream<TcpStream>, Client) {
        let (server, client) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            accept(server, Opening::new(), server_config),
            connector.connect(name, client)
        );
        (server.unwrap(), client.unwrap())
    }

    #[tokio::test]
    async fn a_connection_holds_no_buffer_between_exchanges() {
        let (mut server, mut client) = handshake().await;
        assert!(!server.holds_a_buffer(), "after the handshake");
        for round in 0..3 {
            client.write_all(b"ping").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await.unwrap();
            server.flush().await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            assert!(!server.holds_a_buffer(), "after exchange {round}");
        }
    }

    #[tokio::test]
    async fn what_exceeds_a_record_goes_out_a_record_at_a_time_both_ways() {
        let (mut server, mut client) = handshake().await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let n = server.write(&big).await.unwrap();
        assert_eq!(n, MAX_FRAGMENT, "one record's worth taken per write");
        let sent = big.clone();
        let echo = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; MAX_FRAGMENT];
            client.read_exact(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.flush().await.unwrap();
        assert_eq!(echo.await.unwrap(), big[..MAX_FRAGMENT]);
        assert!(!server.holds_a_buffer());
    }

    #[tokio::test]
    async fn close_notify_reads_as_the_end_and_a_bare_close_as_cut_short() {
        let (mut server, mut client) = handshake().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // The other way still works after the client's half-close.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");

        let (mut server, client) = handshake().await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let cut = server.fill_buf().await.unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
        assert!(cut.to_string().contains("close_notify"), "{cut}");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (mut server, mut client) = handshake().await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after the update").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the update");
        server.write_all(b"still here").await.unwrap();
        server.flush().await.unwrap();
        let mut reply = [0u8; 10];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"still here");
    }

    #[tokio::test]
    async fn a_malformed_hello_fails_the_handshake_with_an_alert_to_the_client() {
        let (server_config, _) = configs();
        let (server, mut client) = tcp_pair().await;
        // A handshake record whose content is no ClientHello.
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0x00, 0x00, 0x00])
            .await
            .unwrap();
        let failed = accept(server, Opening::new(), server_config).await;
        let e = failed.err().expect("the handshake fails");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()));
        let mut alert = Vec::new();
        client.read_to_end(&mut alert).await.unwrap();
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
    }

    /// `accept` over what a client sends, in a task of its own: its error, or `None` for a
    /// panic. The client's end stays open until it is over.
    async fn handshake_error_on(bytes: &[u8]) -> Option<io::Error> {
        let (server_config, _) = configs();
        let (server, mut client) = tcp_pair().await;
        client.write_all(bytes).await.unwrap();
        let task = tokio::spawn(accept(server, Opening::new(), server_config));
        let ended = task.await;
        drop(client);
        ended.ok()?.err()
    }

    /// rustls keeps positions in the buffer it is given (of a handshake message being
    /// joined): each of these once made it index past the end of an empty one.
    #[tokio::test]
    async fn a_broken_hello_is_refused_without_a_panic() {
        let cases: [&[u8]; 2] = [
            // A ClientHello's start (it says 100 bytes), then an alert record in between.
            &[0x16, 3, 1, 0, 5, 1, 0, 0, 100, 3, 0x15, 3, 1, 0, 2, 2, 40],
            // Two malformed handshake messages in one record.
            &[0x16, 3, 1, 0, 8, 0xff, 0, 0, 0, 0xff, 0, 0, 0],
        ];
        for bytes in cases {
            let e = handshake_error_on(bytes).await;
            let e = e.unwrap_or_else(|| panic!("accept panicked on {bytes:?}"));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bytes:?}: {e}");
        }
    }

    /// rustls does not drop a record it fails to decrypt: asked again, it would take the
    /// same record again (and, in a debug build, panic sending a second fatal alert).
    #[tokio::test]
    async fn a_record_that_does_not_decrypt_fails_every_later_read_and_write() {
        let (mut server, client) = handshake().await;
        let (mut tcp, _) = client.into_inner();
        let mut record = vec![0x17, 3, 3, 0, 32];
        record.extend([7u8; 32]);
        tcp.write_all(&record).await.unwrap();
        let first = server.fill_buf().await.unwrap_err();
        assert_eq!(first.kind(), io::ErrorKind::InvalidData);
        let again = server.fill_buf().await.unwrap_err();
        assert_eq!(again.to_string(), first.to_string());
        let write = server.write(b"x").await.unwrap_err();
        assert_eq!(write.to_string(), first.to_string());
        // The client was told, once: behind the session tickets, one alert record (an
        // encrypted one: TLS 1.3 hides its type), then the FIN of the shutdown.
        server.shutdown().await.unwrap();
        let mut told = Vec::new();
        tcp.read_to_end(&mut told).await.unwrap();
        let alert_len = 2 + 1 + 16;
        let (before, last) = told.split_at(told.len() - (5 + alert_len));
        assert_eq!(last[..5], [0x17, 3, 3, 0, alert_len as u8], "{told:?}");
        assert!(!before.ends_with(&last[..5]), "a second alert: {told:?}");
    }

    /// A handshake message a byte per record, each record padded to 16 KB: rustls keeps
    /// every record until the message is whole, and the buffer is capped as rustls's own is.
    #[tokio::test]
    async fn a_handshake_message_spread_over_padded_records_cannot_grow_the_buffer_unbounded() {
        use rustls::crypto::aws_lc_rs as provider;
        use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
        use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion};

        let (server_config, roots) = pki();
        let mut only_aes128 = provider::default_provider();
        only_aes128.cipher_suites = vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut client_config = rustls::ClientConfig::builder_with_provider(only_aes128.into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_config.enable_secret_extraction = true;
        let (mut server, client) = handshake_with(server_config, Arc::new(client_config)).await;
        let (mut tcp, conn) = client.into_inner();
        let secrets = conn.dangerous_extract_secrets().unwrap();
        let (mut seq, ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets.tx else {
            panic!("not AES-128-GCM")
        };
        let suite = provider::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let mut sealer = suite.tls13().unwrap().aead_alg.encrypter(key, iv);
        let writer = tokio::spawn(async move {
            for i in 0..200 {
                // A key update's header saying 65,535 bytes, then one byte per record; the
                // record's inner type (handshake) and 16,000 bytes of TLS 1.3 padding, spelt
                // out here: the sealer appends `typ`, 0, as one more byte of padding.
                let mut inner = if i == 0 {
                    vec![24, 0, 0xff, 0xff]
                } else {
                    vec![0]
                };
                inner.push(0x16);
                inner.resize(inner.len() + 16_000, 0);
                let message = OutboundPlainMessage {
                    typ: ContentType::from(0u8),
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(&inner),
                };
                let record = sealer.encrypt(message, seq).unwrap().encode();
                seq += 1;
                if tcp.write_all(&record).await.is_err() {
                    return;
                }
            }
        });
        // Bounded, so that a buffer taking all 200 records (3.2 MB) fails here, not hangs.
        let refused = tokio::time::timeout(Duration::from_secs(30), server.fill_buf()).await;
        writer.abort();
        let e = match refused {
            Ok(read) => read.map(|plain| plain.len()).expect_err("refused"),
            Err(_) => panic!("no refusal: incoming holds {} bytes", server.incoming.len()),
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("message buffer full"), "{e}");
        assert!(
            server.incoming.len() <= MAX_HELD,
            "{}",
            server.incoming.len()
        );
    }

    /// A real ClientHello for "localhost", as its records come off the wire.
    fn client_hello() -> Vec<u8> {
        let (_, client_config) = configs();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever a client opens with (a real hello with bytes changed, cut short, or with
        /// records of any type behind it), the handshake ends once the client has sent it and
        /// closed, with an error, and without a panic: a stuck handshake fails here at once,
        /// as the clock is paused and the bound elapses as soon as nothing else can happen.
        #[test]
        fn any_opening_ends_the_handshake_without_a_panic(
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            cut in proptest::num::usize::ANY,
            trailing in proptest::collection::vec(
                (
                    proptest::sample::select(vec![20u8, 21, 22, 23, 24, 0, 255]),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                    proptest::bool::ANY,
                ),
                0..4,
            ),
        ) {
            let mut wire = client_hello();
            for (at, byte) in flips {
                let at = at % wire.len();
                wire[at] = byte;
            }
            wire.truncate(cut % (wire.len() + 1));
            for (typ, fragment, honest_length) in trailing {
                let len = match honest_length {
                    true => fragment.len() as u16,
                    false => 0x4800,
                };
                wire.extend([typ, 3, 3]);
                wire.extend(len.to_be_bytes());
                wire.extend(fragment);
            }
            let (server_config, _) = configs();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let ended = runtime.block_on(async move {
                let (server, mut client) = tokio::io::duplex(1 << 20);
                client.write_all(&wire).await.unwrap();
                client.shutdown().await.unwrap();
                let handshake = accept(server, Opening::new(), server_config);
                tokio::time::timeout(Duration::from_secs(60), handshake).await
            });
            let Ok(handshake) = ended else {
                panic!("the handshake did not end after the client closed");
            };
            proptest::prop_assert!(handshake.is_err());
        }
    }

    /// A socket whose writes fail once told to, as a client's does once it has reset.
    struct WritesFail {
        tcp: TcpStream,
        failing: bool,
    }

    impl AsyncRead for WritesFail {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for WritesFail {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.failing {
                true => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                false => Pin::new(&mut self.tcp).poll_write(cx, data),
            }
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// The relay ends only the direction writing to a client its writes fail on: what that
    /// client sent before it went must still be read, not failed with the write's error.
    #[tokio::test]
    async fn a_failed_write_leaves_what_the_client_sent_to_be_read() {
        let (server_config, client_config) = configs();
        let (server, client) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").unwrap();
        let server = WritesFail {
            tcp: server,
            failing: false,
        };
        let (server, client) = tokio::join!(
            accept(server, Opening::new(), server_config),
            connector.connect(name, client)
        );
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        server.get_mut().failing = true;
        let failed = server.write(b"to a client gone").await.unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::BrokenPipe);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        let again = server.write(b"more").await.unwrap_err();
        assert_eq!(
            again.kind(),
            io::ErrorKind::BrokenPipe,
            "the failure is kept"
        );
        assert!(
            !server.holds_a_buffer(),
            "what could not be sent is dropped"
        );
    }

    /// A client that stalls with part of a record sent (its hello's first bytes, or a record
    /// cut between segments) keeps those bytes held while it waits, not a pooled buffer.
    #[tokio::test]
    async fn a_record_started_and_stalled_holds_only_its_bytes() {
        let (server_config, _) = configs();
        let (mut tcp, mut client) = tcp_pair().await;
        let hello = client_hello();
        client.write_all(&hello[..7]).await.unwrap();
        let mut opening = Opening::new();
        while opening.bytes().len() < 7 {
            tcp.readable().await.unwrap();
            let _ = std::future::poll_fn(|cx| Poll::Ready(opening.poll_read(cx, &mut tcp))).await;
        }
        let waits =
            std::future::poll_fn(|cx| Poll::Ready(opening.poll_read(cx, &mut tcp).is_pending()));
        assert!(waits.await, "nothing more has been sent");
        let held = opening.0.buf.as_ref().map(|buf| buf.len());
        assert_eq!(held, Some(7), "just the bytes held");
        // The rest of the hello: the handshake goes on from the bytes kept.
        client.write_all(&hello[7..]).await.unwrap();
        let server = tokio::spawn(accept(tcp, opening, server_config));
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], 0x16, "a ServerHello: the hello was read whole");
        drop(client);
        assert!(
            server.await.unwrap().is_err(),
            "the client left mid-handshake"
        );
    }
}
