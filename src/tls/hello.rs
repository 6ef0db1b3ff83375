//! The first bytes of a connection: read until rustls has the client's hello, or found to be
//! a plain-HTTP request sent to the TLS port.
//!
//! Why not `tokio_rustls::LazyConfigAcceptor`: it hides the bytes it reads, and a client that
//! speaks `ws://` or `http://` to a `wss://` port (the commonest mistake there is) would get a
//! TLS alert it cannot show and a log line in rustls's words ("corrupt message of type
//! InvalidContentType"). Reading them here costs no extra read: the same reads, made the same
//! way, feed rustls, and only the first byte is looked at.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

/// What a connection opened with.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per connection; boxing would allocate per handshake"
)]
pub(crate) enum Hello {
    /// A TLS ClientHello, ready for a certificate.
    Tls(StartHandshake<TcpStream>),
    /// A plain-text request: its first byte was an ASCII capital, as an HTTP method starts,
    /// which no TLS record does (they start with a content type, 20–24, or SSLv2's 0x80).
    PlainHttp(TcpStream),
    /// A PROXY protocol header (v1 or v2) on a listener not told to expect one: a load
    /// balancer set up for it in front of a wsgate that is not.
    ProxyHeader,
}

/// Reads the connection's first bytes until they are a complete ClientHello, or are plain
/// HTTP or a PROXY header. Errors are rustls's (its alert sent to the client: what the socket
/// takes at once, all of it this early, its send buffer empty) or the socket's; a close
/// before the hello is `UnexpectedEof`.
pub(crate) async fn read(mut tcp: TcpStream) -> io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut opening = Opening::default();
    let sniffed = std::future::poll_fn(|cx| loop {
        let mut reader = Reading {
            tcp: &mut tcp,
            cx,
            opening: &mut opening,
        };
        match acceptor.read_tls(&mut reader) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        match sniff(opening.seen()) {
            Sniff::Tls => {}
            Sniff::Undecided => continue,
            Sniff::Not(other) => return Poll::Ready(Ok(Err(other))),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Poll::Ready(Ok(Ok(accepted))),
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write_all(&mut Alerting(&tcp));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    });
    Ok(match sniffed.await? {
        Ok(accepted) => Hello::Tls(StartHandshake::from_parts(accepted, tcp)),
        Err(NotTls::PlainHttp) => Hello::PlainHttp(tcp),
        Err(NotTls::ProxyHeader) => Hello::ProxyHeader,
    })
}

/// The signatures of the PROXY protocol's two versions.
const PROXY_V1: &[u8] = b"PROXY ";
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// TLS, as far as these bytes tell: rustls decides.
    Tls,
    /// The start of a PROXY signature: more bytes tell.
    Undecided,
    Not(NotTls),
}

/// What else a connection may open with that is worth telling apart (see [`Hello`]).
#[derive(Debug, PartialEq, Eq)]
enum NotTls {
    PlainHttp,
    ProxyHeader,
}

fn sniff(seen: &[u8]) -> Sniff {
    for signature in [PROXY_V1, PROXY_V2] {
        if seen.starts_with(signature) {
            return Sniff::Not(NotTls::ProxyHeader);
        }
        if !seen.is_empty() && signature.starts_with(seen) {
            return Sniff::Undecided;
        }
    }
    match seen.first() {
        Some(byte) if byte.is_ascii_uppercase() => Sniff::Not(NotTls::PlainHttp),
        _ => Sniff::Tls,
    }
}

/// A connection's first bytes, as many as [`sniff`] needs.
#[derive(Default)]
struct Opening {
    bytes: [u8; PROXY_V2.len()],
    len: usize,
}

impl Opening {
    fn note(&mut self, read: &[u8]) {
        let n = read.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&read[..n]);
        self.len += n;
    }

    fn seen(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What a plain-HTTP client is told, in the protocol it spoke.
const USE_TLS: &str = "this port speaks TLS: connect with wss:// (or https://)\n";

fn use_tls_answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{USE_TLS}",
        USE_TLS.len()
    )
}

/// Tells a plain-HTTP client to use TLS, then closes as a refusal closes (see `closing`):
/// what it still sends is read and dropped for a moment, so the answer is not lost to a reset.
pub(crate) async fn tell_to_use_tls(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let answer = async {
        tcp.write_all(use_tls_answer().as_bytes()).await?;
        tcp.shutdown().await
    };
    // Into an empty send buffer this cannot wait; the bound is for a peer that never reads.
    if let Ok(Ok(())) = tokio::time::timeout(crate::closing::LINGER_TIME, answer).await {
        crate::closing::linger(&mut tcp).await;
    }
}

/// The socket as `std::io`'s reader, for rustls: `WouldBlock` when it has nothing yet (the
/// task then waits for it). Through tokio's `poll_read`, not `try_read`: a read that leaves
/// the socket empty then marks it so, and the handshake's next read waits for the client
/// rather than spending a syscall to find nothing. Notes the opening bytes.
struct Reading<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
    opening: &'a mut Opening,
}

impl Read for Reading<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut read) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
        }
        self.opening.note(read.filled());
        Ok(read.filled().len())
    }
}

/// The socket as `std::io`'s writer, for rustls's alert: what the socket takes now.
struct Alerting<'a>(&'a TcpStream);

impl Write for Alerting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_tls_from_plain_http_and_a_proxy_header() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00];
        assert_eq!(sniff(&hello), Sniff::Tls);
        assert_eq!(
            sniff(&[0x80]),
            Sniff::Tls,
            "an SSLv2 hello: rustls refuses it"
        );
        assert_eq!(
            sniff(b"\x00\x01"),
            Sniff::Tls,
            "no TLS, no HTTP: rustls refuses it"
        );
        assert_eq!(
            sniff(b"GET /ws HTTP/1.1\r\n"),
            Sniff::Not(NotTls::PlainHttp)
        );
        assert_eq!(sniff(b"POST"), Sniff::Not(NotTls::PlainHttp));
        assert_eq!(
            sniff(b"PROXY TCP4 1.2.3.4"),
            Sniff::Not(NotTls::ProxyHeader)
        );
        assert_eq!(
            sniff(b"\r\n\r\n\0\r\nQUIT\n\x21"),
            Sniff::Not(NotTls::ProxyHeader)
        );
        for start in [&b"P"[..], b"PROX", b"\r\n\r"] {
            assert_eq!(sniff(start), Sniff::Undecided, "{start:?}");
        }
        let mut opening = Opening::default();
        for piece in [&b"\r\n\r"[..], b"\n\0\r\nQU", b"IT\n\x21\x11\x00\x0c"] {
            opening.note(piece);
        }
        assert_eq!(opening.seen(), PROXY_V2);
    }

    #[test]
    fn the_plain_http_answer_is_framed_by_its_length() {
        let answer = use_tls_answer();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, USE_TLS);
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }
}
