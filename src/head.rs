//! Reads a request head off the client's stream before hyper parses it, so that
//! `max_request_header_bytes` counts the bytes the client actually sent.
//!
//! hyper enforces only a read-buffer size with an 8 KiB floor, and the parsed request no longer
//! shows padding, line folds or spacing, so neither gives an exact size. The bytes read here are
//! handed to hyper in front of the stream ([`Prefixed`]), so nothing is lost or read twice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::closing::Lingering;
use crate::error::ProxyError;
use crate::path;
use crate::relay::Written;

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

/// Header fields a request may have: hyper's limit, checked here so that the refusal is ours.
const MAX_HEADERS: usize = 100;

/// The longest request target the `http` crate's `Uri` takes.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Whether a path starts with two separators, however spelled (`//`, `/\`, `/%2F`, `/%5C`,
/// `/／`: as [`path::canonical`] reads it):
/// Node's and Python's URL parsers read what follows as a host (`//localhost/admin` is path
/// `/admin` to them), so a backend would route such a request by another path than the one
/// wsgate matched (`/localhost/admin`, a catch-all's), past the specific route's rules.
fn reads_as_authority(path: &str) -> bool {
    match path.as_bytes() {
        [b'/', b'/' | b'\\', ..] => true,
        // Nothing but plain characters: nothing that could read as a second separator.
        _ if path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b)) =>
        {
            false
        }
        _ => path::canonical(path).starts_with("//"),
    }
}

/// The head as hyper is to read it, by the version its request line names (RFC 9110 §2.5):
/// a later minor version of HTTP/1 (`HTTP/1.2`) is processed as HTTP/1.1, the highest this
/// server speaks, as nginx and HAProxy do (hyper's parser takes only 1.0 and 1.1, and would
/// answer a bare 400); a later major version (`HTTP/2.0`: an HTTP/2 client that skipped ALPN,
/// or its connection preface) gets 505, and HTTP/0.x the answer to a version older than 1.1.
/// `len` is the head's length in `head`, whose bytes behind it are the client's next ones.
pub(crate) fn read_as_http_1_1(head: Bytes, len: usize) -> Result<Bytes, ProxyError> {
    let Some((at, major, minor)) = request_version(&head[..len]) else {
        return Ok(head);
    };
    match (major, minor) {
        (b'0', _) => Err(ProxyError::HttpTooOld),
        (b'1', b'2'..=b'9') => {
            let mut read = BytesMut::from(&head[..]);
            read[at + MINOR] = b'1';
            Ok(read.freeze())
        }
        (b'2'..=b'9', _) => Err(ProxyError::HttpVersionNotSupported),
        _ => Ok(head),
    }
}

/// The head with each `close` token of its `Connection` lines blanked out, in place (spaces:
/// its length, measured against the limit, stays). Told the connection ends after this
/// request, hyper appends `close` to the 101's `Connection`, a contradiction some clients
/// refuse (tungstenite). Nothing else changes: the connection carries one request whatever
/// it said (a refusal ends it once written, a relayed answer says `close` itself), and
/// `Connection` is not forwarded.
pub(crate) fn without_close(head: Bytes, len: usize) -> Bytes {
    let found = close_tokens(&head[..len]);
    if found.is_empty() {
        return head;
    }
    let mut edited = BytesMut::from(&head[..]);
    for at in found {
        edited[at..at + b"close".len()].fill(b' ');
    }
    edited.freeze()
}

/// Where each `close` token of a `Connection` line in `head` starts.
fn close_tokens(head: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut line_at = 0;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let at = line_at;
        line_at += line.len();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"connection") {
            continue;
        }
        let mut element_at = at + colon + 1;
        for element in line[colon + 1..].split(|&b| b == b',') {
            let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
            let lead = element.iter().take_while(|b| blank(b)).count();
            let token = element[lead..].iter().take_while(|b| !blank(b)).count();
            let rest = element[lead + token..].iter().all(blank);
            if rest && element[lead..lead + token].eq_ignore_ascii_case(b"close") {
                found.push(element_at + lead);
            }
            element_at += element.len() + 1;
        }
    }
    found
}

/// Where the minor digit sits in `HTTP/d.d`.
const MINOR: usize = b"HTTP/1.".len();

/// Where the request line's version starts, and its two digits, if the line ends in a
/// space and `HTTP/d.d`; anything else is left to the parser to refuse.
fn request_version(head: &[u8]) -> Option<(usize, u8, u8)> {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let lf = start + head[start..].iter().position(|&b| b == b'\n')?;
    let end = match head[..lf].last() {
        Some(b'\r') => lf - 1,
        _ => lf,
    };
    let at = end.checked_sub(MINOR + 1).filter(|&at| at > start)?;
    match &head[at - 1..end] {
        [b' ', b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Some((at, *major, *minor))
        }
        _ => None,
    }
}

/// Parses a complete head as hyper will, so that whatever hyper would refuse with a bare
/// status of its own gets the proxy's refusal instead: too many header fields → 431, anything
/// malformed → 400.
pub(crate) fn check(head: &[u8]) -> Result<(), ProxyError> {
    // Bytes outside ASCII have no meaning in a target (RFC 9112 §3.2: browsers escape them):
    // refused as such before the parser, which takes some of them and not others.
    let request_line = head
        .split(|&b| b == b'\n')
        .find(|line| !matches!(line, [] | [b'\r']));
    if let Some(line) = request_line.filter(|line| !line.is_ascii()) {
        return Err(non_ascii_line(line));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::TooManyFields),
        // Partial cannot happen: `read` found the end of the head.
        Ok(httparse::Status::Partial) | Err(_) => return Err(ProxyError::MalformedRequest),
    }
    // What hyper checks beyond the syntax: a target that parses as a URI, and a framing it
    // understands. An upgrade request has no body, so any framing header is refused here.
    let target = request.path.unwrap_or_default();
    // The longest target the `http` crate parses: beyond it, 414 rather than hyper's 400.
    if target.len() > MAX_TARGET {
        return Err(ProxyError::UriTooLong);
    }
    let Ok(uri) = target.parse::<hyper::Uri>() else {
        return Err(ProxyError::MalformedRequest);
    };
    // A GET's target is origin-form or absolute-form (RFC 9112 §3.2), without a fragment.
    // hyper also takes "host:port" (CONNECT's form) and "ws", and reads both as path "/", and
    // drops a "#fragment": the backend would get a different target than the client sent.
    let absolute = uri.scheme().is_some() && uri.authority().is_some();
    if !(target.starts_with('/') || absolute) || target.contains('#') {
        return Err(ProxyError::MalformedRequest);
    }
    if reads_as_authority(uri.path()) {
        return Err(ProxyError::MalformedRequest);
    }
    // A path escape that is broken, NUL or no UTF-8 (`%u002e`, `.%00.`, the overlong
    // `%c0%ae`) is read as a dot or a separator by some backends and not by others: each
    // would let a path ride a route it does not belong to. Refused.
    if !path::escapes_sound(uri.path()) {
        return Err(ProxyError::BadPath);
    }
    for header in request.headers.iter() {
        let name = header.name;
        // Values the proxy reads as token lists or addresses must be plain ASCII: a byte it
        // would skip (say, a `Connection` token it then fails to strip) is refused instead.
        if is_parsed(name) && !header.value.is_ascii() {
            return Err(ProxyError::MalformedRequest);
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ProxyError::UnexpectedBody);
        }
        if name.eq_ignore_ascii_case("content-length") {
            no_body(header.value)?;
        }
    }
    Ok(())
}

/// A `Content-Length` value, as hyper reads it: an upgrade request's must say zero, however
/// written ("00"). Anything but a length is malformed; any other length a body.
pub(crate) fn no_body(content_length: &[u8]) -> Result<(), ProxyError> {
    let value = std::str::from_utf8(content_length)
        .unwrap_or_default()
        .trim();
    // Digits only, as hyper reads it: u64's parser would also take "+0".
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::MalformedRequest);
    }
    match value.parse::<u64>() {
        Ok(0) => Ok(()),
        Ok(_) => Err(ProxyError::UnexpectedBody),
        Err(_) => Err(ProxyError::MalformedRequest),
    }
}

/// The refusal of a request line with a byte outside ASCII: a bad path if the byte is in the
/// target, a malformed request if it is in the method or the version (no path to speak of).
fn non_ascii_line(line: &[u8]) -> ProxyError {
    let first = line.iter().position(|&b| b == b' ');
    let last = line.iter().rposition(|&b| b == b' ');
    match (first, last) {
        (Some(first), Some(last))
            if first < last && line[..first].is_ascii() && line[last..].is_ascii() =>
        {
            ProxyError::BadPath
        }
        _ => ProxyError::MalformedRequest,
    }
}

/// Fields whose values the proxy parses.
fn is_parsed(name: &str) -> bool {
    // Every `Sec-WebSocket-*`, as the docs say: the ones the proxy does not read
    // (`-Extensions`) go to the backend, whose own parser must not meet a byte it may skip.
    let websocket = name
        .get(..SEC_WEBSOCKET.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SEC_WEBSOCKET));
    websocket || PARSED.iter().any(|p| name.eq_ignore_ascii_case(p))
}

const SEC_WEBSOCKET: &str = "sec-websocket-";

const PARSED: [&str; 5] = ["connection", "upgrade", "host", "origin", "x-forwarded-for"];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_tokens_of_connection_lines_are_blanked_and_nothing_else() {
        let head = "GET http://a:80/ HTTP/1.1\r\nHost: a\r\nConnection: close, Upgrade\r\n\
                    connection:CLOSE\r\nConnection: closed\r\nX-Connection: close\r\n\
                    X-Note: Connection: close\r\n\r\n";
        let behind = "Connection: close\r\n";
        let bytes = Bytes::from(format!("{head}{behind}"));
        let edited = without_close(bytes.clone(), head.len());
        let want = head
            .replacen("Connection: close,", "Connection:      ,", 1)
            .replacen("connection:CLOSE", "connection:     ", 1);
        assert_eq!(edited, Bytes::from(format!("{want}{behind}")));
        let none = Bytes::from_static(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(without_close(none.clone(), none.len()), none);
    }

    fn end_of(buf: &[u8]) -> Option<usize> {
        Scan::default().head_end(buf)
    }

    /// What [`read_as_http_1_1`] makes of a head (with `next` behind it): the bytes hyper gets.
    fn as_read(head: &str, next: &str) -> Result<String, ProxyError> {
        let bytes = Bytes::from(format!("{head}{next}"));
        let read = read_as_http_1_1(bytes, head.len())?;
        Ok(String::from_utf8(read.to_vec()).unwrap())
    }

    #[test]
    fn a_later_http_1_minor_version_is_read_as_1_1() {
        for line_end in ["\r\n", "\n"] {
            let head = format!("GET /ws HTTP/1.2{line_end}Host: a{line_end}{line_end}");
            let read = as_read(&head, "early").unwrap();
            assert_eq!(read, head.replace("HTTP/1.2", "HTTP/1.1") + "early");
        }
        assert_eq!(
            as_read("\r\nGET / HTTP/1.9\r\n\r\n", "").unwrap(),
            "\r\nGET / HTTP/1.1\r\n\r\n"
        );
        // Only the request line's version: a header value that looks like one is no version.
        let head = "GET / HTTP/1.1\r\nX: a HTTP/1.2\r\n\r\n";
        assert_eq!(as_read(head, "").unwrap(), head);
    }

    #[test]
    fn versions_hyper_reads_or_refuses_itself_are_left_alone() {
        for head in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.10\r\n\r\n",
            "GET / HTTP/1.x\r\n\r\n",
            "GET / http/1.2\r\n\r\n",
            "GET /HTTP/1.2\r\n\r\n",
            "HTTP/1.2\r\n\r\n",
            "GET / HTTP/12\r\n\r\n",
        ] {
            assert_eq!(as_read(head, "").unwrap(), head, "{head:?}");
        }
    }

    /// Up to 20 bytes, mostly from `alphabet`, now and then any byte.
    fn bytes_among(alphabet: &'static [u8]) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let byte = proptest::prop_oneof![
            4 => proptest::sample::select(alphabet.to_vec()),
            1 => proptest::num::u8::ANY,
        ];
        proptest::collection::vec(byte, 0..20)
    }

    proptest::proptest! {
        /// Whatever the bytes, reading the version panics on none, and changes at most the one
        /// minor digit of an `HTTP/1.x` request line, to `1`: the head checked is the head
        /// hyper parses and the backend gets, but for that digit.
        #[test]
        fn reading_the_version_changes_at_most_one_minor_digit(
            (blank, before, version, end, after) in (
                bytes_among(b"\r\n"),
                bytes_among(b" GET/a\n"),
                proptest::option::of((b'0'..=b'9', b'0'..=b'9')),
                proptest::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b""]),
                bytes_among(b"\r\n X:1"),
            ),
            cut in 0usize..64,
        ) {
            let mut head = [blank, before].concat();
            if let Some((major, minor)) = version {
                head.extend_from_slice(&[b' ', b'H', b'T', b'T', b'P', b'/', major, b'.', minor]);
            }
            head.extend_from_slice(end);
            head.extend_from_slice(&after);
            let len = cut.min(head.len());
            let bytes = Bytes::from(head.clone());
            if let Ok(read) = read_as_http_1_1(bytes, len) {
                proptest::prop_assert_eq!(read.len(), head.len());
                let changed: Vec<usize> =
                    (0..head.len()).filter(|&i| read[i] != head[i]).collect();
                proptest::prop_assert!(changed.len() <= 1);
                if let [at] = changed[..] {
                    proptest::prop_assert!(at < len);
                    proptest::prop_assert_eq!(read[at], b'1');
                    proptest::prop_assert_eq!(&head[at - MINOR..at], b"HTTP/1.");
                }
            }
        }
    }

    #[test]
    fn a_later_major_version_is_505_and_http_0_is_too_old() {
        let preface = "PRI * HTTP/2.0\r\n\r\n";
        assert_eq!(
            as_read(preface, "SM\r\n\r\n"),
            Err(ProxyError::HttpVersionNotSupported)
        );
        assert_eq!(
            as_read("GET / HTTP/3.0\r\n\r\n", ""),
            Err(ProxyError::HttpVersionNotSupported)
        );
        assert_eq!(
            as_read("GET / HTTP/0.9\r\n\r\n", ""),
            Err(ProxyError::HttpTooOld)
        );
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

    #[test]
    fn a_path_a_url_parser_reads_as_a_host_is_refused() {
        let get =
            |target: &str| check(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        for sneaky in [
            "//localhost/admin",
            "/\\localhost/admin",
            "/%2Fx/admin",
            "/%5cx",
            "http://a//x/admin",
            "/%EF%BC%8Fevil.example/admin",
        ] {
            assert_eq!(get(sneaky), Err(ProxyError::MalformedRequest), "{sneaky}");
        }
        for fine in ["/", "/admin//x", "/a%2Fb", "/%2Ex", "http://a/x"] {
            assert_eq!(get(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn a_target_backends_could_read_differently_is_refused() {
        let get = |target: &[u8]| {
            let head = [b"GET ", target, b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
            check(&head)
        };
        for sneaky in [
            &b"/ws/%u002e%u002e/admin"[..],
            b"/ws/..%00/admin",
            b"/ws/%c0%ae%c0%ae/admin",
            b"/ws/%",
            b"/ws/\xc3\xa9",
            b"/ws?q=\xc3\xa9",
            b"/ws/\xff",
            b"/\x80",
        ] {
            let shown = String::from_utf8_lossy(sneaky);
            assert_eq!(get(sneaky), Err(ProxyError::BadPath), "{shown}");
        }
        // Outside the target it is no path: the request line itself is malformed.
        for line in [
            &b"G\xc3\xa9T /ws HTTP/1.1"[..],
            b"GET /ws HTTP/1.\xff",
            b"GET\xa0/ws",
        ] {
            let head = [line, b"\r\nHost: a\r\n\r\n"].concat();
            let shown = String::from_utf8_lossy(line);
            assert_eq!(check(&head), Err(ProxyError::MalformedRequest), "{shown}");
        }
        // A query's escapes are the application's business.
        for fine in [&b"/ws/caf%C3%A9"[..], b"/ws?discount=100%", b"/ws?q=%u00e9"] {
            assert_eq!(get(fine), Ok(()), "{}", String::from_utf8_lossy(fine));
        }
    }

    #[test]
    fn what_hyper_would_refuse_is_refused_here() {
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(check(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n"),
            Err(ProxyError::MalformedRequest)
        );
        assert_eq!(
            check(b"GET /\x01 HTTP/1.1\r\n\r\n"),
            Err(ProxyError::MalformedRequest)
        );
        let framed = |line: &str| check(format!("GET / HTTP/1.1\r\n{line}\r\n\r\n").as_bytes());
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nConnection: Upgrade, X-Secret\x80\r\n\r\n"),
            Err(ProxyError::MalformedRequest)
        );
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nSec-WebSocket-Extensions: x\xe9\r\n\r\n"),
            Err(ProxyError::MalformedRequest)
        );
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nX-Note: caf\xc3\xa9\r\n\r\n"),
            Ok(())
        );
        assert_eq!(framed("Content-Length: 0"), Ok(()));
        for bad in ["abc", "+0", "-0", "", "1 2"] {
            assert_eq!(
                framed(&format!("Content-Length: {bad}")),
                Err(ProxyError::MalformedRequest),
                "{bad:?}"
            );
        }
        assert_eq!(framed("Content-Length: 5"), Err(ProxyError::UnexpectedBody));
        assert_eq!(
            framed("Transfer-Encoding: gzip"),
            Err(ProxyError::UnexpectedBody)
        );
        assert_eq!(
            check(b"GET http://[::1/ws HTTP/1.1\r\n\r\n"),
            Err(ProxyError::MalformedRequest)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(check(head.as_bytes()), Err(ProxyError::TooManyFields));
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
}
