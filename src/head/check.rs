//! What a complete request head must be before hyper reads it, and the two rewrites it gets:
//! whatever hyper would refuse with a bare status of its own gets the proxy's refusal instead
//! (too many fields → 431, a target too long → 414, anything malformed → 400, a declared body
//! → 400), a later HTTP/1 minor version is read as 1.1, and `close` tokens are blanked out of
//! `Connection` (the 101 must not say `close`).

use bytes::{Bytes, BytesMut};

use crate::error::ProxyError;
use crate::path;

/// Header fields a request may have: hyper's limit, checked here so that the refusal is ours.
const MAX_HEADERS: usize = 100;

/// The longest header name hyper takes, plus one.
const NAME_TOO_LONG: usize = 1 << 16;

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
        return Err(ProxyError::PathReadsAsHost);
    }
    // A path escape that is broken, NUL or no UTF-8 (`%u002e`, `.%00.`, the overlong
    // `%c0%ae`) is read as a dot or a separator by some backends and not by others: each
    // would let a path ride a route it does not belong to. Refused.
    if !path::escapes_sound(uri.path()) {
        return Err(ProxyError::BadPath);
    }
    for header in request.headers.iter() {
        let name = header.name;
        if name.len() >= NAME_TOO_LONG {
            return Err(ProxyError::FieldNameTooLong);
        }
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
            assert_eq!(get(sneaky), Err(ProxyError::PathReadsAsHost), "{sneaky}");
        }
        // What Windows' best fit reads as `\` (¥, ₩) or `/` (∕) reads as no host to a URL
        // parser: only a dot segment's end, there.
        let best_fit = ["/%C2%A5100", "/%E2%82%A9/pay", "/%E2%88%95x"];
        for fine in ["/", "/admin//x", "/a%2Fb", "/%2Ex", "http://a/x"]
            .into_iter()
            .chain(best_fit)
        {
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
        let named = |len: usize| format!("GET / HTTP/1.1\r\n{}: v\r\n\r\n", "X".repeat(len));
        assert_eq!(check(named(65_535).as_bytes()), Ok(()));
        assert_eq!(
            check(named(65_536).as_bytes()),
            Err(ProxyError::FieldNameTooLong)
        );
    }
}
