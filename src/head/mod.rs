//! Reads a request head off the client's stream before hyper parses it, so that
//! `max_request_header_bytes` counts the bytes the client actually sent.
//!
//! hyper enforces only a read-buffer size with an 8 KiB floor, and the parsed request no longer
//! shows padding, line folds or spacing, so neither gives an exact size. The bytes read here are
//! handed to hyper in front of the stream ([`Prefixed`]), so nothing is lost or read twice.
//!
//! Layout: `check` is what a complete head must be before hyper reads it (and its two
//! rewrites); `prefixed` the stream hyper then reads, the head put back in front.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

mod check;
mod prefixed;

pub(crate) use check::{check, no_body, read_as_http_1_1, without_close};
pub(crate) use prefixed::Prefixed;

/// What reading the head found.
pub(crate) enum Head {
    /// The head is complete within the limit: its length, through its empty line (more bytes
    /// may follow it).
    Complete(usize),
    /// More than the limit arrived without the head ending.
    TooLarge,
    /// The client closed (or half-closed) before the head was complete.
    Closed,
}

/// Reads until the head's empty line, or until more than the limit's bytes show it is too
/// large. `limit` is asked once, when the first bytes arrive: a reload while the client was
/// quiet applies to its request. Returns the bytes read, which [`Prefixed`] must put back in
/// front of the stream, and the limit applied (0 if nothing came).
pub(crate) async fn read<T: AsyncRead + Unpin>(
    io: &mut T,
    limit: impl FnOnce() -> usize,
) -> io::Result<(Head, Bytes, usize)> {
    // Most heads are a few hundred bytes: grow as needed rather than reserve the limit.
    let mut buf = BytesMut::with_capacity(1024);
    let mut scan = Scan::default();
    let mut limit = Some(limit);
    let mut max = 0;
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().clamp(1024, 8192));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((Head::Closed, buf.freeze(), max));
        }
        if let Some(limit) = limit.take() {
            max = limit();
        }
        if let Some(end) = scan.head_end(&buf) {
            let head = if end <= max {
                Head::Complete(end)
            } else {
                Head::TooLarge
            };
            return Ok((head, buf.freeze(), max));
        }
        if buf.len() > max {
            return Ok((Head::TooLarge, buf.freeze(), max));
        }
    }
}

/// Where the search for the end of the head stands: each byte is looked at about once, however
/// the head is split over reads (a head trickling in byte by byte must not cost O(n²)).
#[derive(Default)]
struct Scan {
    /// Where the request line starts, once a byte other than CR or LF has arrived.
    start: Option<usize>,
    /// Bytes already searched.
    scanned: usize,
}

impl Scan {
    /// The length of the head through its empty line, if it has arrived. Like hyper's parser
    /// (httparse), a bare LF ends a line as well as CRLF, and empty lines before the request
    /// line are skipped (RFC 9112 §2.2), not taken for the end (they still count in the size).
    fn head_end(&mut self, buf: &[u8]) -> Option<usize> {
        if self.start.is_none() {
            self.start = buf[self.scanned..]
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .map(|p| p + self.scanned);
        }
        let Some(start) = self.start else {
            self.scanned = buf.len();
            return None;
        };
        let from = self.scanned.max(start);
        let mut i = from;
        let mut end = None;
        while let Some(offset) = buf[i..].iter().position(|&b| b == b'\n') {
            let lf = i + offset;
            match &buf[lf + 1..] {
                [b'\n', ..] => end = Some(lf + 2),
                [b'\r', b'\n', ..] => end = Some(lf + 3),
                _ => i = lf + 1,
            }
            if end.is_some() {
                break;
            }
        }
        // A bare CR (one not followed by LF) is in no head hyper reads (RFC 9112 §2.2): the
        // head "ends" there, to be refused at once, not when the handshake timeout runs out on
        // a client whose lines end in CR alone. Only within the head: the bytes after it (early
        // WebSocket frames) may hold any.
        let head = &buf[from..end.unwrap_or(buf.len())];
        if let Some(cr) = (head.windows(2)).position(|w| w[0] == b'\r' && w[1] != b'\n') {
            return Some(from + cr + 2);
        }
        if end.is_none() {
            // The terminator may straddle reads: look again from just before the last two bytes.
            self.scanned = buf.len().saturating_sub(2).max(start);
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    fn end_of(buf: &[u8]) -> Option<usize> {
        Scan::default().head_end(buf)
    }

    #[test]
    fn a_head_fed_byte_by_byte_is_found_once_complete() {
        let head = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut scan = Scan::default();
        for n in 1..head.len() {
            assert_eq!(scan.head_end(&head[..n]), None, "{n}");
        }
        assert_eq!(scan.head_end(head), Some(head.len()));
    }

    #[test]
    fn the_head_ends_at_its_empty_line() {
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nxyz"), Some(27));
        assert_eq!(end_of(b"GET / HTTP/1.1\nHost: a\n\nxyz"), Some(24));
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(end_of(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(end_of(b"\r\n\r\n"), None);
        // A bare CR ends the head where it is (it is refused), a CR at the very end waits.
        assert_eq!(end_of(b"GET / HTTP/1.1\rHost: a\r\r"), Some(16));
        assert_eq!(end_of(b"GET / HTTP/1.1\r\nX: a\rb"), Some(22));
        assert_eq!(end_of(b"GET / HTTP/1.1\r"), None);
        // A CR in the early bytes after a complete head is theirs, not the head's.
        assert_eq!(
            end_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x81\x05\rhello"),
            Some(27)
        );
    }

    #[tokio::test]
    async fn reads_stop_at_the_limit_and_give_back_every_byte() {
        let sent = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nearly".to_vec();
        let (head, bytes, max) = read(&mut &sent[..], || 27).await.unwrap();
        assert_eq!(max, 27);
        assert!(matches!(head, Head::Complete(_)));
        assert_eq!(&bytes[..], &sent[..]);
        let (head, _, _) = read(&mut &sent[..], || 26).await.unwrap();
        assert!(matches!(head, Head::TooLarge));
        let (head, _, _) = read(&mut &sent[..20], || 1000).await.unwrap();
        assert!(matches!(head, Head::Closed));
    }

    /// Hands out one chunk per read, as a socket would when the client's writes trickle in.
    struct Chunks(Vec<&'static [u8]>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.0.is_empty() {
                buf.put_slice(self.0.remove(0));
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_terminator_split_across_reads_is_found() {
        let mut io = Chunks(vec![
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"\n",
            b"never read",
        ]);
        let (head, bytes, _) = read(&mut io, || 100).await.unwrap();
        assert!(matches!(head, Head::Complete(_)));
        assert_eq!(bytes.len(), 27);
    }

    #[tokio::test]
    async fn reads_stop_at_the_end_of_the_head_and_the_rest_is_handed_over() {
        use futures_util::FutureExt;
        let head = b"GET / HTTP/1.1\r\n\r\n";
        let prefix = Bytes::from([&head[..], b"early"].concat());
        let mut io = Prefixed::new(
            prefix,
            head.len(),
            &b"later"[..],
            Arc::default(),
            Arc::default(),
        );
        let mut read = vec![0; 8];
        let mut all = Vec::new();
        // In small reads, as hyper may make them: the head, and not a byte more.
        while let Some(n) = io.read(&mut read).now_or_never() {
            all.extend_from_slice(&read[..n.unwrap()]);
        }
        assert_eq!(all, head);
        let (rest, unread) = io.into_parts();
        assert_eq!((rest, &unread[..]), (&b"later"[..], &b"early"[..]));
    }

    proptest::proptest! {
        /// However the bytes are split over reads, the search stops at the place a search of
        /// all of them at once finds, and finds nothing where that finds nothing: the end of
        /// a head never depends on how its bytes arrived.
        #[test]
        fn where_a_head_ends_does_not_depend_on_how_it_arrived(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"\r\n\r\nGa: \x81".to_vec()),
                0..40,
            ),
            cuts in proptest::collection::vec(1usize..8, 0..40),
        ) {
            let whole = end_of(&bytes);
            let mut scan = Scan::default();
            let mut found = None;
            let mut len = 0;
            for cut in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                len = (len + cut).min(bytes.len());
                found = scan.head_end(&bytes[..len]);
                if found.is_some() || len == bytes.len() {
                    break;
                }
            }
            proptest::prop_assert_eq!(found, whole);
        }
    }
}
