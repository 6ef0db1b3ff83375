//! The first bytes of a connection: read until they tell a TLS ClientHello from a plain-HTTP
//! request sent to the TLS port, or a PROXY header no one asked for.
//!
//! Why look: a client that speaks `ws://` or `http://` to a `wss://` port (the commonest
//! mistake there is) would otherwise get a TLS alert it cannot show and a log line in
//! rustls's words ("corrupt message of type InvalidContentType"). Looking costs no extra read:
//! the bytes read here are the ones the TLS handshake starts from.

use std::io;

use tokio::net::TcpStream;

use super::stream::Opening;

/// What a connection opened with.
pub(crate) enum Hello {
    /// TLS, as far as its first bytes tell: the handshake starts from them.
    Tls(TcpStream, Opening),
    /// A plain-text request: it opened with a method (ASCII capitals, and `-`) and a space, as
    /// an HTTP request line does, which no TLS record does (they start with a content type,
    /// 20–24, or SSLv2's 0x80).
    PlainHttp(TcpStream),
    /// A PROXY protocol header (v1 or v2) on a listener not told to expect one: a load
    /// balancer set up for it in front of a wsgate that is not.
    ProxyHeader,
}

/// Reads the connection's first bytes until they tell TLS from plain HTTP or a PROXY header.
/// A close before they do is `UnexpectedEof`.
pub(crate) async fn read(mut tcp: TcpStream) -> io::Result<Hello> {
    let mut opening = Opening::new();
    let sniffed = std::future::poll_fn(|cx| loop {
        match std::task::ready!(opening.poll_read(cx, &mut tcp)) {
            Ok(0) => return std::task::Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return std::task::Poll::Ready(Err(e)),
        }
        match sniff(opening.bytes()) {
            Sniff::Tls => return std::task::Poll::Ready(Ok(None)),
            Sniff::Undecided => {}
            Sniff::Not(other) => return std::task::Poll::Ready(Ok(Some(other))),
        }
    });
    Ok(match sniffed.await? {
        None => Hello::Tls(tcp, opening),
        Some(NotTls::PlainHttp) => Hello::PlainHttp(tcp),
        Some(NotTls::ProxyHeader) => Hello::ProxyHeader,
    })
}

/// The signatures of the PROXY protocol's two versions.
const PROXY_V1: &[u8] = b"PROXY ";
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest HTTP method taken for one: the registered ones are 16 bytes at most
/// (`BASELINE-CONTROL`).
const MAX_METHOD: usize = 20;

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// TLS, as far as these bytes tell: rustls decides.
    Tls,
    /// The start of a PROXY signature or of a method: more bytes tell.
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
    // A method and its space: capitals alone may be anything (an SSH banner starts
    // `SSH-2.0`, a stray byte is one), and get TLS's alert, as other bytes that are not TLS do.
    let method = seen
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-')
        .count();
    match seen.get(method) {
        _ if method == 0 || !seen[0].is_ascii_uppercase() || method > MAX_METHOD => Sniff::Tls,
        Some(b' ') => Sniff::Not(NotTls::PlainHttp),
        Some(_) => Sniff::Tls,
        None => Sniff::Undecided,
    }
}

/// Tells a plain-HTTP client to use TLS (`answer`: see `proxy::use_tls_answer`), and shuts
/// the write side: whether the answer is out. The caller then lingers as a refusal does (see
/// `closing`): what the client still sends is read and dropped for a moment, so the answer is
/// not lost to a reset.
pub(crate) async fn tell_to_use_tls(tcp: &mut TcpStream, answer: &[u8]) -> bool {
    use tokio::io::AsyncWriteExt;
    let answer = async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await
    };
    // Into an empty send buffer this cannot wait; the bound is for a peer that never reads.
    matches!(
        tokio::time::timeout(crate::closing::LINGER_TIME, answer).await,
        Ok(Ok(()))
    )
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
        assert_eq!(sniff(b"POST /"), Sniff::Not(NotTls::PlainHttp));
        assert_eq!(sniff(b"M-SEARCH * HTTP/1.1"), Sniff::Not(NotTls::PlainHttp));
        // Capitals that are no request line: TLS's alert, not an HTTP answer.
        for other in [
            &b"SSH-2.0-OpenSSH_9.0\r\n"[..],
            b"D\x05$",
            b"K\n",
            b"-GET /",
        ] {
            assert_eq!(sniff(other), Sniff::Tls, "{other:?}");
        }
        assert_eq!(
            sniff(&[b'A'; MAX_METHOD + 1]),
            Sniff::Tls,
            "too long a method"
        );
        assert_eq!(
            sniff(b"PROXY TCP4 1.2.3.4"),
            Sniff::Not(NotTls::ProxyHeader)
        );
        assert_eq!(
            sniff(b"\r\n\r\n\0\r\nQUIT\n\x21"),
            Sniff::Not(NotTls::ProxyHeader)
        );
        for start in [&b"P"[..], b"PROX", b"\r\n\r", b"K", b"GET", b"SSH"] {
            assert_eq!(sniff(start), Sniff::Undecided, "{start:?}");
        }
    }
}
