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
}

/// Reads the connection's first bytes until they are a complete ClientHello, or are plain
/// HTTP. Errors are rustls's (its alert sent to the client, best effort, as
/// `LazyConfigAcceptor` does) or the socket's; a close before the hello is `UnexpectedEof`.
pub(crate) async fn read(mut tcp: TcpStream) -> io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut first = None;
    let sniffed = std::future::poll_fn(|cx| loop {
        let mut reader = Reading {
            tcp: &mut tcp,
            cx,
            first: &mut first,
        };
        match acceptor.read_tls(&mut reader) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        if first.is_some_and(|byte: u8| byte.is_ascii_uppercase()) {
            return Poll::Ready(Ok(None));
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Poll::Ready(Ok(Some(accepted))),
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write_all(&mut Alerting(&tcp));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    });
    Ok(match sniffed.await? {
        Some(accepted) => Hello::Tls(StartHandshake::from_parts(accepted, tcp)),
        None => Hello::PlainHttp(tcp),
    })
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
/// rather than spending a syscall to find nothing. Notes the first byte read.
struct Reading<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
    first: &'a mut Option<u8>,
}

impl Read for Reading<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut read) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
        }
        let read = read.filled();
        if let (None, Some(&byte)) = (&self.first, read.first()) {
            *self.first = Some(byte);
        }
        Ok(read.len())
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
    fn the_plain_http_answer_is_framed_by_its_length() {
        let answer = use_tls_answer();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, USE_TLS);
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }
}
