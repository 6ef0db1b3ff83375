//! The WebSocket opening handshake rules (RFC 6455 §4, RFC 9110 §7.6) as pure functions over
//! request and response heads: no I/O, so every rule is table-tested here.
//!
//! Header tokens are parsed as comma lists, case-insensitively, across every line of a header:
//! `Connection: keep-alive, Upgrade` (Firefox) and `Upgrade: WebSocket` broke several proxies.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, ORIGIN, TRANSFER_ENCODING, UPGRADE};
use hyper::http::uri::Authority;
use hyper::{Method, Uri, Version};
use sha1::{Digest, Sha1};

use crate::error::{HostFault, ProxyError};
use crate::grammar::{has_token, is_label, is_tchar, split_outside_quotes, tokens};
use crate::head;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub(crate) const SEC_WEBSOCKET_VERSION: HeaderName =
    HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
pub(crate) const SEC_WEBSOCKET_PROTOCOL: HeaderName =
    HeaderName::from_static("sec-websocket-protocol");
const SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request asks for a WebSocket at all; a route match plus `false` here is a 426.
fn asks_for_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, &UPGRADE, "websocket")
}

/// The request's `Origin`, for a route's allow-list. Browsers send one line; with two, the
/// check and the backend could read different ones, so two (or one that is not text) read
/// as a value no list holds.
pub fn origin(headers: &HeaderMap) -> Option<&str> {
    let mut origins = headers.get_all(ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(o), None) => Some(o.to_str().unwrap_or(NO_ORIGIN)),
        (Some(_), Some(_)) => Some(NO_ORIGIN),
    }
}

/// An `Origin` no allow-list entry can equal (entries are URLs).
const NO_ORIGIN: &str = "\u{0}";

/// The longest `Origin` a log line repeats in full: it is the client's to make long.
const ORIGIN_SHOWN: usize = 128;

/// An `Origin`, as [`origin`] read it, in words for a refusal's log line: cut to
/// [`ORIGIN_SHOWN`] characters, and one that cannot be shown said so.
pub(crate) fn origin_in_words(origin: Option<&str>) -> String {
    match origin {
        None => "(none)".to_string(),
        Some(NO_ORIGIN) => "(several Origin fields, or one that is not text)".to_string(),
        Some(origin) => match origin.char_indices().nth(ORIGIN_SHOWN) {
            Some((cut, _)) => format!("{}…", &origin[..cut]),
            None => origin.to_string(),
        },
    }
}

/// Checks a request head against RFC 6455 §4.2.1, in the order that gives the most useful
/// answer: the method and version first, then whether it is an upgrade at all.
pub fn check_request(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if method != Method::GET {
        return Err(ProxyError::MethodNotGet);
    }
    if version < Version::HTTP_11 {
        return Err(ProxyError::HttpTooOld);
    }
    if !asks_for_websocket(headers) {
        return Err(ProxyError::NotUpgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(ProxyError::NoConnectionUpgrade);
    }
    match headers.get_all(HOST).iter().count() {
        1 => {}
        0 => return Err(ProxyError::BadHost(HostFault::Missing)),
        _ => return Err(ProxyError::BadHost(HostFault::Repeated)),
    }
    // A body on an upgrade request is a smuggling vector: the bytes after the head belong to
    // the tunnel, so a declared body makes the framing ambiguous. The length is read by the
    // helper `head::check` reads it with (which, serving, has already refused these).
    if headers.contains_key(TRANSFER_ENCODING) {
        return Err(ProxyError::UnexpectedBody);
    }
    for length in headers.get_all(CONTENT_LENGTH) {
        head::no_body(length.as_bytes())?;
    }
    version_is_13(headers)?;
    match single(headers, &SEC_WEBSOCKET_KEY) {
        Some(key) if is_valid_key(key) => {}
        _ => return Err(ProxyError::BadKey),
    }
    if !protocols_are_tokens(headers) {
        return Err(ProxyError::BadProtocolOffer);
    }
    Ok(())
}

/// The Host the request is for, checked: one well-formed `host[:port]` with no userinfo, and,
/// when the target is in absolute form, the same host and port as the target's authority
/// (RFC 9112 §3.2.2 has the target win; a Host that disagrees would route this request one
/// way and the backend another, so it is refused rather than rewritten). `None` when the
/// request has no Host at all, which [`check_request`] refuses once a route is known.
pub fn request_host<'a>(uri: &Uri, headers: &'a HeaderMap) -> Result<Option<&'a str>, ProxyError> {
    let mut values = headers.get_all(HOST).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (None, _) if uri.authority().is_none() => return Ok(None),
        (None, _) => return Err(ProxyError::BadHost(HostFault::Missing)),
        (Some(_), Some(_)) => return Err(ProxyError::BadHost(HostFault::Repeated)),
    };
    let malformed = ProxyError::BadHost(HostFault::Malformed);
    let host = value.to_str().map_err(|_| malformed.clone())?;
    let parsed: Authority = host.parse().map_err(|_| malformed.clone())?;
    // "user@a.example.com" would match "*.example.com" by its suffix.
    let port = host.strip_prefix(parsed.host());
    if !is_host(parsed.host()) || !port.is_some_and(is_port) {
        return Err(malformed);
    }
    if let Some(target) = uri.authority() {
        // Ports compare with the scheme's default filled in: https://a/ and "a:443" agree.
        // Any other scheme (`ftp://host/ws`) asks for something this is not.
        let scheme = uri.scheme_str().unwrap_or_default();
        let is = |name: &str| scheme.eq_ignore_ascii_case(name);
        let default = match () {
            _ if is("https") || is("wss") => 443,
            _ if is("http") || is("ws") => 80,
            _ => return Err(ProxyError::MalformedRequest),
        };
        // A user name or an empty port is the target's fault, whatever the Host says.
        if target.as_str().contains('@') || target.as_str().ends_with(':') {
            return Err(ProxyError::MalformedRequest);
        }
        let same = same_name(target.host(), parsed.host())
            && target.port_u16().unwrap_or(default) == parsed.port_u16().unwrap_or(default);
        if !same {
            return Err(ProxyError::BadHost(HostFault::NotTarget));
        }
    }
    Ok(Some(host))
}

/// A host a route can be chosen by: a DNS name (letters, digits, '-', '_', '.') or a
/// bracketed IPv6 literal. The URI grammar also allows "user@", "*", "," and other
/// sub-delimiters, which would let "evil.test,chat.example.com" match "*.example.com".
fn is_host(host: &str) -> bool {
    if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return literal.parse::<std::net::Ipv6Addr>().is_ok();
    }
    // One trailing root dot is allowed.
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty() && name.split('.').all(is_label)
}

/// Host names compare case-insensitively, with a trailing root dot ignored; IPv6 literals as
/// the addresses they are (`[::1]` and `[0:0::1]` are one).
fn same_name(a: &str, b: &str) -> bool {
    let literal = |h: &str| {
        let inner = h.strip_prefix('[')?.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()
    };
    if let (Some(a), Some(b)) = (literal(a), literal(b)) {
        return a == b;
    }
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// What follows the host in an authority: nothing, or ":" and a port. The URI grammar allows
/// an empty port ("a.example.com:"), which only adds a spelling for backends to disagree on.
fn is_port(rest: &str) -> bool {
    match rest.strip_prefix(':') {
        // Digits only: u16's parser would also take "+443".
        Some(port) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok()
        }
        None => rest.is_empty(),
    }
}

/// The header's value if it occurs exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

fn single_value_is(headers: &HeaderMap, name: &HeaderName, expected: &str) -> bool {
    single(headers, name).is_some_and(|v| v.as_bytes().trim_ascii() == expected.as_bytes())
}

/// The one version RFC 6455 defines, said once; said more than once (over lines, or as a
/// list), the head is malformed (400), unless a value is another version: then the client
/// is told which one to speak (426).
fn version_is_13(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut said = 0;
    for line in headers.get_all(&SEC_WEBSOCKET_VERSION) {
        // Empty list elements are no values (RFC 9110 §5.6.1): `13,` is 13.
        let values = line
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii);
        for value in values.filter(|value| !value.is_empty()) {
            if value != b"13" {
                return Err(ProxyError::UnsupportedVersion);
            }
            said += 1;
        }
    }
    match said {
        0 => Err(ProxyError::UnsupportedVersion),
        1 => Ok(()),
        _ => Err(ProxyError::RepeatedVersion),
    }
}

/// A key is the base64 encoding of exactly 16 bytes (RFC 6455 §4.1, item 7).
fn is_valid_key(key: &HeaderValue) -> bool {
    let raw = key.as_bytes().trim_ascii();
    raw.len() == 24 && BASE64.decode(raw).is_ok_and(|bytes| bytes.len() == 16)
}

/// The `Sec-WebSocket-Accept` value a server must send for `key`.
pub(crate) fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

/// Whether every subprotocol offered is a token, and none offered twice (RFC 6455 §4.1, as
/// browsers enforce it): forwarded as offered on a route without a list, anything else would
/// reach the backend as text each side may split differently (`a b`, `"a"`, `a;q=1`).
fn protocols_are_tokens(headers: &HeaderMap) -> bool {
    // A set: a head may hold thousands of them, and a list's lookups would be quadratic.
    let mut seen = std::collections::HashSet::new();
    for line in headers.get_all(&SEC_WEBSOCKET_PROTOCOL) {
        let Ok(line) = line.to_str() else {
            return false;
        };
        for protocol in line.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !protocol.bytes().all(is_tchar) || !seen.insert(protocol) {
                return false;
            }
        }
    }
    true
}

/// The subprotocols the client offered, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    tokens(headers, &SEC_WEBSOCKET_PROTOCOL).collect()
}

/// What the request forwarded to a backend offered: what its 101 is checked against.
pub(crate) struct Offer<'a> {
    pub(crate) key: HeaderValue,
    /// The subprotocols forwarded (a route's allow-list may have filtered the client's).
    pub(crate) protocols: &'a [&'a str],
    /// The names of the extensions offered (as the client offered them: forwarded as is).
    extensions: Vec<String>,
}

impl<'a> Offer<'a> {
    /// The offer of a request forwarded with `headers` and, filtered, `protocols`.
    pub(crate) fn of(headers: &HeaderMap, protocols: &'a [&'a str]) -> Result<Self, ProxyError> {
        let key = headers.get(&SEC_WEBSOCKET_KEY).ok_or(ProxyError::BadKey)?;
        Ok(Offer {
            key: key.clone(),
            protocols,
            extensions: extension_names(headers).map(str::to_owned).collect(),
        })
    }
}

/// The names in every `Sec-WebSocket-Extensions` line (RFC 6455 §9.1): each element's token
/// before its `;parameters`. A comma inside a quoted parameter value separates nothing.
fn extension_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let lines = headers.get_all(&SEC_WEBSOCKET_EXTENSIONS).iter();
    lines
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_outside_quotes)
        .filter_map(|element| element.split(';').next())
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// Checks a backend's 101 against the request we forwarded (RFC 6455 §4.2.2 / §4.1 client
/// rules): only a checked 101 may open a tunnel.
pub(crate) fn check_response(headers: &HeaderMap, offer: &Offer) -> Result<(), ProxyError> {
    let key = &offer.key;
    // Exactly "websocket" (RFC 6455 §4.1): a backend switching to that and something else
    // (`websocket, h2c`, or two lines) is not speaking the protocol the client asked for.
    // One line: a second one, even one that is no text, says something else too.
    let upgrade = single(headers, &UPGRADE).map(|v| v.as_bytes().trim_ascii());
    if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return Err(ProxyError::BadBackendUpgrade("Upgrade is not websocket"));
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(ProxyError::BadBackendUpgrade("Connection lacks upgrade"));
    }
    let expected = accept_for(key.as_bytes());
    if headers
        .get_all(&SEC_WEBSOCKET_ACCEPT)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ProxyError::BadBackendUpgrade(
            "repeated Sec-WebSocket-Accept",
        ));
    }
    if !single_value_is(headers, &SEC_WEBSOCKET_ACCEPT, &expected) {
        return Err(ProxyError::BadBackendUpgrade("wrong Sec-WebSocket-Accept"));
    }
    chosen_protocol_fits(headers, offer.protocols)?;
    chosen_extensions_fit(headers, &offer.extensions)
}

/// A client fails the connection on an extension it did not offer (RFC 6455 §4.1), on one
/// accepted twice (RFC 7692 §7: two sets of deflate parameters for one stream), and on an
/// element it cannot read (an empty line, a name that is no token): a 502 here names the
/// backend's mistake instead of a tunnel the client drops.
fn chosen_extensions_fit(headers: &HeaderMap, offered: &[String]) -> Result<(), ProxyError> {
    let mut chosen: Vec<&str> = Vec::new();
    for line in headers.get_all(&SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(line) = line.to_str() else {
            return Err(ProxyError::BadBackendUpgrade(
                "unreadable Sec-WebSocket-Extensions",
            ));
        };
        for element in split_outside_quotes(line) {
            let name = element.split(';').next().unwrap_or_default().trim();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(ProxyError::BadBackendUpgrade(
                    "empty or malformed Sec-WebSocket-Extensions",
                ));
            }
            if !offered.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                return Err(ProxyError::BadBackendUpgrade(
                    "chose an extension that was not offered",
                ));
            }
            if chosen.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                return Err(ProxyError::BadBackendUpgrade("chose an extension twice"));
            }
            chosen.push(name);
        }
    }
    Ok(())
}

/// A server chooses one subprotocol (RFC 6455 §4.2.2): one header line holding exactly one of
/// those forwarded, or none at all. Clients fail the handshake on anything else, an empty
/// value or a stray comma (`a,`) included, so it must not open a tunnel.
fn chosen_protocol_fits(headers: &HeaderMap, forwarded: &[&str]) -> Result<(), ProxyError> {
    if !headers.contains_key(&SEC_WEBSOCKET_PROTOCOL) {
        return Ok(());
    }
    let Some(value) = single(headers, &SEC_WEBSOCKET_PROTOCOL) else {
        return Err(ProxyError::BadBackendUpgrade(
            "repeated Sec-WebSocket-Protocol",
        ));
    };
    match value.to_str().map(str::trim) {
        Ok("") => Err(ProxyError::BadBackendUpgrade(
            "empty Sec-WebSocket-Protocol",
        )),
        Ok(chosen) if forwarded.contains(&chosen) => Ok(()),
        _ => Err(ProxyError::BadBackendUpgrade(
            "chose a subprotocol that was not offered",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn a_refused_origin_is_shown_cut_short_and_an_unreadable_one_said_so() {
        let shown =
            |lines: &[(&'static str, &'static str)]| origin_in_words(origin(&headers(lines)));
        let evil = "https://evil.example";
        assert_eq!(shown(&[("origin", evil)]), evil);
        let twice = [("origin", evil), ("origin", "https://a.example")];
        assert_eq!(
            shown(&twice),
            "(several Origin fields, or one that is not text)"
        );
        let long = format!("https://{}.example", "é".repeat(200));
        let cut = origin_in_words(Some(&long));
        assert_eq!(cut.chars().count(), ORIGIN_SHOWN + 1, "{cut}");
        assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("host", "example.com"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", KEY),
        ]
    }

    fn check(lines: &[(&'static str, &'static str)]) -> Result<(), ProxyError> {
        check_request(&Method::GET, Version::HTTP_11, &headers(lines))
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut lines: Vec<_> = good().into_iter().filter(|(n, _)| *n != name).collect();
        lines.push((name, value));
        lines
    }

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        good().into_iter().filter(|(n, _)| *n != name).collect()
    }

    #[test]
    fn the_rfc_example_accept_is_computed() {
        assert_eq!(accept_for(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_complete_upgrade_passes() {
        assert_eq!(check(&good()), Ok(()));
        // An empty body, however its length is written (as `head::check` reads it).
        assert_eq!(check(&with("content-length", "0")), Ok(()));
        assert_eq!(check(&with("content-length", "00")), Ok(()));
        // And no length at all is no zero.
        let empty = check(&with("content-length", ""));
        assert_eq!(empty, Err(ProxyError::MalformedRequest));
    }

    #[test]
    fn tokens_are_case_insensitive_comma_lists_over_several_lines() {
        assert_eq!(check(&with("connection", "keep-alive, Upgrade")), Ok(()));
        assert_eq!(check(&with("upgrade", "WebSocket")), Ok(()));
        let mut split = with("connection", "keep-alive");
        split.push(("connection", "UPGRADE"));
        assert_eq!(check(&split), Ok(()));
    }

    #[test]
    fn each_fault_gets_its_own_refusal() {
        let cases: Vec<(Vec<(&'static str, &'static str)>, ProxyError)> = vec![
            (without("upgrade"), ProxyError::NotUpgrade),
            (with("upgrade", "h2c"), ProxyError::NotUpgrade),
            (without("connection"), ProxyError::NoConnectionUpgrade),
            (
                with("connection", "keep-alive"),
                ProxyError::NoConnectionUpgrade,
            ),
            // A quoted string is one element, whatever commas and words it holds.
            (
                with("connection", "x=\"a, upgrade, b\""),
                ProxyError::NoConnectionUpgrade,
            ),
            (
                with("upgrade", "x=\"a, websocket, b\""),
                ProxyError::NotUpgrade,
            ),
            (without("sec-websocket-key"), ProxyError::BadKey),
            (with("sec-websocket-key", "c2hvcnQ="), ProxyError::BadKey),
            (
                with("sec-websocket-key", "!!!!!!!!!!!!!!!!!!!!!!=="),
                ProxyError::BadKey,
            ),
            (
                with("sec-websocket-version", "8"),
                ProxyError::UnsupportedVersion,
            ),
            (
                without("sec-websocket-version"),
                ProxyError::UnsupportedVersion,
            ),
            (
                with("sec-websocket-version", "13, 13"),
                ProxyError::RepeatedVersion,
            ),
            (
                with("sec-websocket-version", "13, 8"),
                ProxyError::UnsupportedVersion,
            ),
            (
                with("sec-websocket-version", ", "),
                ProxyError::UnsupportedVersion,
            ),
            (without("host"), ProxyError::BadHost(HostFault::Missing)),
            (with("content-length", "5"), ProxyError::UnexpectedBody),
            (
                with("transfer-encoding", "chunked"),
                ProxyError::UnexpectedBody,
            ),
            (
                with("sec-websocket-protocol", "a b"),
                ProxyError::BadProtocolOffer,
            ),
            (
                with("sec-websocket-protocol", "a;q=1"),
                ProxyError::BadProtocolOffer,
            ),
            (
                with("sec-websocket-protocol", "\"a\""),
                ProxyError::BadProtocolOffer,
            ),
            (
                with("sec-websocket-protocol", "chat, chat"),
                ProxyError::BadProtocolOffer,
            ),
        ];
        for (lines, expected) in cases {
            assert_eq!(check(&lines), Err(expected.clone()), "{lines:?}");
        }
        // Tokens as lists go: over lines, with spaces and empty elements around them.
        let mut offer = with("sec-websocket-protocol", " chat.v2 ,, chat.v1");
        offer.push(("sec-websocket-protocol", "x-custom_1"));
        assert_eq!(check(&offer), Ok(()));
        let mut twice = with("sec-websocket-protocol", "chat");
        twice.push(("sec-websocket-protocol", "chat"));
        assert_eq!(check(&twice), Err(ProxyError::BadProtocolOffer));
        let mut version_twice = with("sec-websocket-version", "13");
        version_twice.push(("sec-websocket-version", "13"));
        assert_eq!(check(&version_twice), Err(ProxyError::RepeatedVersion));
        assert_eq!(check(&with("sec-websocket-version", "13, ")), Ok(()));
    }

    #[test]
    fn method_and_version_are_checked_first() {
        let h = headers(&good());
        assert_eq!(
            check_request(&Method::POST, Version::HTTP_11, &h),
            Err(ProxyError::MethodNotGet)
        );
        assert_eq!(
            check_request(&Method::GET, Version::HTTP_10, &h),
            Err(ProxyError::HttpTooOld)
        );
    }

    fn bad_host(fault: HostFault) -> ProxyError {
        ProxyError::BadHost(fault)
    }

    fn host_of(target: &str, hosts: &[&'static str]) -> Result<Option<String>, ProxyError> {
        let lines: Vec<_> = hosts.iter().map(|h| ("host", *h)).collect();
        let h = headers(&lines);
        request_host(&target.parse().unwrap(), &h).map(|o| o.map(str::to_owned))
    }

    #[test]
    fn the_host_is_one_plain_authority() {
        use HostFault::{Malformed, Repeated};
        assert_eq!(
            host_of("/ws", &["a.example.com:8443"]),
            Ok(Some("a.example.com:8443".into()))
        );
        assert_eq!(
            host_of("/ws", &["[::1]:8443"]),
            Ok(Some("[::1]:8443".into()))
        );
        assert_eq!(host_of("/ws", &[]), Ok(None));
        for bad in [
            "x@a.example.com",
            "a.example.com/x",
            "a b",
            "",
            ":8443",
            "a.example.com:x",
            "a.example.com:",
            "[::1]:",
            "evil.test,a.example.com",
            "*.example.com",
            "[::1",
            "[zz]:1",
            "..",
            "a..b",
            ".",
            "...example.com",
            "a:+1",
            "-",
            "a.-b.example.com",
        ] {
            assert_eq!(host_of("/ws", &[bad]), Err(bad_host(Malformed)), "{bad:?}");
        }
        assert_eq!(
            host_of("/ws", &["a.example.com", "b.example.com"]),
            Err(bad_host(Repeated))
        );
    }

    #[test]
    fn an_absolute_target_must_agree_with_host() {
        use HostFault::NotTarget;
        let target = "https://chat.example.com/ws";
        assert_eq!(
            host_of(target, &["Chat.Example.com"]),
            Ok(Some("Chat.Example.com".into()))
        );
        assert_eq!(
            host_of(target, &["admin.example.com"]),
            Err(bad_host(NotTarget))
        );
        assert_eq!(
            host_of(target, &["chat.example.com:444"]),
            Err(bad_host(NotTarget))
        );
        let ok = |h: &str| Ok(Some(h.to_string()));
        assert_eq!(
            host_of(target, &["chat.example.com:443"]),
            ok("chat.example.com:443")
        );
        let explicit = "https://chat.example.com:443/ws";
        assert_eq!(
            host_of(explicit, &["chat.example.com"]),
            ok("chat.example.com")
        );
        let literal = "https://[::1]/ws";
        assert_eq!(host_of(literal, &["[0:0::1]:443"]), ok("[0:0::1]:443"));
        assert_eq!(host_of(literal, &["[::2]"]), Err(bad_host(NotTarget)));
        let rooted = "https://chat.example.com./ws";
        assert_eq!(
            host_of(rooted, &["chat.example.com"]),
            ok("chat.example.com")
        );
        assert_eq!(host_of(target, &[]), Err(bad_host(HostFault::Missing)));
        assert_eq!(
            host_of("https://chat.example.com:/ws", &["chat.example.com"]),
            Err(ProxyError::MalformedRequest)
        );
        assert_eq!(
            host_of("https://u@chat.example.com/ws", &["chat.example.com"]),
            Err(ProxyError::MalformedRequest)
        );
        assert_eq!(
            host_of("HTTPS://chat.example.com/ws", &["chat.example.com"]),
            ok("chat.example.com")
        );
        assert_eq!(
            host_of("ftp://chat.example.com/ws", &["chat.example.com"]),
            Err(ProxyError::MalformedRequest)
        );
    }

    fn response(
        lines: &[(&'static str, &'static str)],
        forwarded: &[&str],
    ) -> Result<(), ProxyError> {
        let offer = Offer {
            key: HeaderValue::from_static(KEY),
            protocols: forwarded,
            extensions: vec!["permessage-deflate".into()],
        };
        check_response(&headers(lines), &offer)
    }

    #[test]
    fn a_correct_101_is_accepted_with_or_without_a_chosen_protocol() {
        let ok = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert_eq!(response(&ok, &[]), Ok(()));
        let mut chose = ok.to_vec();
        chose.push(("sec-websocket-protocol", "chat.v1"));
        assert_eq!(response(&chose, &["chat.v2", "chat.v1"]), Ok(()));
    }

    #[test]
    fn extension_names_are_the_tokens_before_their_parameters() {
        let offer = headers(&[
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits, x-a",
            ),
            (
                "sec-websocket-extensions",
                "x-b; p=\"1,2\"; q=\"\\\",x-c\", ,x-d",
            ),
        ]);
        let names: Vec<&str> = extension_names(&offer).collect();
        assert_eq!(names, ["permessage-deflate", "x-a", "x-b", "x-d"]);
    }

    #[test]
    fn a_101_may_accept_only_extensions_that_were_offered() {
        let ok = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        // Offered (see `response`): permessage-deflate, with any parameters, any case.
        let mut deflate = ok.to_vec();
        deflate.push((
            "sec-websocket-extensions",
            "Permessage-Deflate; server_no_context_takeover",
        ));
        assert_eq!(response(&deflate, &[]), Ok(()));
        let mut other = ok.to_vec();
        other.push((
            "sec-websocket-extensions",
            "permessage-deflate, x-webkit-deflate-frame",
        ));
        assert_eq!(
            response(&other, &[]),
            Err(ProxyError::BadBackendUpgrade(
                "chose an extension that was not offered"
            ))
        );
        // What a client could not read, or would fail on, is the backend's mistake too.
        for (value, why) in [
            ("", "empty or malformed Sec-WebSocket-Extensions"),
            (
                "permessage-deflate,",
                "empty or malformed Sec-WebSocket-Extensions",
            ),
            (
                "permessage deflate",
                "empty or malformed Sec-WebSocket-Extensions",
            ),
            (
                "permessage-deflate, permessage-deflate",
                "chose an extension twice",
            ),
        ] {
            let mut bad = ok.to_vec();
            bad.push(("sec-websocket-extensions", value));
            assert_eq!(
                response(&bad, &[]),
                Err(ProxyError::BadBackendUpgrade(why)),
                "{value:?}"
            );
        }
        // Twice over two lines is twice too.
        let mut two_lines = ok.to_vec();
        two_lines.push(("sec-websocket-extensions", "permessage-deflate"));
        two_lines.push((
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ));
        assert_eq!(
            response(&two_lines, &[]),
            Err(ProxyError::BadBackendUpgrade("chose an extension twice"))
        );
    }

    #[test]
    fn a_bad_101_is_refused() {
        let wrong_accept = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ];
        assert!(response(&wrong_accept, &[]).is_err());
        let unoffered = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "evil"),
        ];
        assert!(response(&unoffered, &["chat.v1"]).is_err());
        for offered in [&[][..], &["chat.v1"]] {
            let mut empty = unoffered.to_vec();
            empty[3] = ("sec-websocket-protocol", " ");
            assert!(response(&empty, offered).is_err(), "{offered:?}");
        }
        // One offered protocol, but not written as one choice: a stray comma, a second line
        // (empty or the same again).
        let offered = ["chat.v1", "chat.v2"];
        for value in ["chat.v1,", ", chat.v1", "chat.v1, chat.v2"] {
            let mut list = unoffered.to_vec();
            list[3] = ("sec-websocket-protocol", value);
            assert!(response(&list, &offered).is_err(), "{value:?}");
        }
        for second in ["", "chat.v1"] {
            let mut lines = unoffered.to_vec();
            lines[3] = ("sec-websocket-protocol", "chat.v1");
            lines.push(("sec-websocket-protocol", second));
            assert_eq!(
                response(&lines, &offered),
                Err(ProxyError::BadBackendUpgrade(
                    "repeated Sec-WebSocket-Protocol"
                )),
                "{second:?}"
            );
        }
        let not_websocket = [
            ("upgrade", "h2c"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(response(&not_websocket, &[]).is_err());
        let upgrade_only_quoted = [
            ("upgrade", "websocket"),
            ("connection", "x=\"a, upgrade, b\""),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(response(&upgrade_only_quoted, &[]).is_err());
        // Websocket and something else, on one line or two.
        let mut also_h2c = not_websocket.to_vec();
        also_h2c[0] = ("upgrade", "WebSocket, h2c");
        assert!(response(&also_h2c, &[]).is_err());
        also_h2c[0] = ("upgrade", "websocket");
        also_h2c.push(("upgrade", "h2c"));
        assert!(response(&also_h2c, &[]).is_err());
        // A second line that is no text is a second line all the same.
        let mut map = headers(&also_h2c[..3]);
        map.append(UPGRADE, HeaderValue::from_bytes(b"\xe9").unwrap());
        let key = HeaderValue::from_static(KEY);
        let offer = Offer {
            key,
            protocols: &[],
            extensions: Vec::new(),
        };
        assert!(check_response(&map, &offer).is_err());
        // Twice, even right twice: which one counts is anyone's guess (the log says which).
        let mut twice = unoffered[..3].to_vec();
        twice.push(twice[2]);
        assert_eq!(
            response(&twice, &[]),
            Err(ProxyError::BadBackendUpgrade(
                "repeated Sec-WebSocket-Accept"
            ))
        );
        assert_eq!(
            response(&wrong_accept, &[]),
            Err(ProxyError::BadBackendUpgrade("wrong Sec-WebSocket-Accept"))
        );
    }

    /// One header of a 101 as a backend may write it: its lines (none: left out), and
    /// whether a client would refuse the handshake for it.
    type Written = (&'static [&'static str], bool);

    const UPGRADES: &[Written] = &[
        (&["websocket"], false),
        (&["WebSocket"], false),
        (&[" websocket "], false),
        (&["websocket, h2c"], true),
        (&["websocket", "h2c"], true),
        (&["h2c"], true),
        (&[], true),
    ];
    const CONNECTIONS: &[Written] = &[
        (&["Upgrade"], false),
        (&["keep-alive, upgrade"], false),
        (&["keep-alive", "UPGRADE"], false),
        (&["keep-alive"], true),
        (&[], true),
    ];
    const ACCEPTS: &[Written] = &[
        (&["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="], false),
        (&[" s3pPLMBiTxaQ9kYGzzhZRbK+xOo= "], false),
        (&["AAAAAAAAAAAAAAAAAAAAAAAAAAA="], true),
        (
            &[
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            ],
            true,
        ),
        (&[], true),
    ];
    /// `chat.v1` and `chat.v2` were forwarded.
    const PROTOCOLS: &[Written] = &[
        (&[], false),
        (&["chat.v1"], false),
        (&[" chat.v2 "], false),
        (&["chat.v9"], true),
        (&[""], true),
        (&["chat.v1, chat.v2"], true),
        (&["chat.v1", "chat.v1"], true),
    ];
    /// `permessage-deflate` was offered.
    const EXTENSIONS: &[Written] = &[
        (&[], false),
        (&["permessage-deflate"], false),
        (&["permessage-deflate; server_no_context_takeover"], false),
        (&["permessage-deflate; x=\"a,b\""], false),
        (&["x-webkit-deflate-frame"], true),
        (&["permessage-deflate, permessage-deflate"], true),
        (&["permessage-deflate", "permessage-deflate"], true),
        (&[""], true),
        (&["permessage-deflate,"], true),
    ];

    /// A 101 of any right and wrong parts, every combination of them, opens a tunnel exactly
    /// when every part is one a client takes: one wrong part anywhere is a 502, never a tunnel
    /// the client drops.
    #[test]
    fn a_101_is_accepted_exactly_when_every_part_of_it_is_right() {
        let mut checked = 0;
        for upgrade in UPGRADES {
            for connection in CONNECTIONS {
                for accept in ACCEPTS {
                    for protocol in PROTOCOLS {
                        for extension in EXTENSIONS {
                            let written = [
                                ("upgrade", upgrade),
                                ("connection", connection),
                                ("sec-websocket-accept", accept),
                                ("sec-websocket-protocol", protocol),
                                ("sec-websocket-extensions", extension),
                            ];
                            a_101_of(&written);
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 5 * 5 * 7 * 9);
    }

    /// Checks one 101 of the model's parts against what the model says of it.
    fn a_101_of(written: &[(&'static str, &Written); 5]) {
        let mut lines = Vec::new();
        for (name, (values, _)) in written {
            lines.extend(values.iter().map(|value| (*name, *value)));
        }
        let wrong: Vec<&str> = (written.iter())
            .filter(|(_, (_, wrong))| *wrong)
            .map(|(name, _)| *name)
            .collect();
        let checked = response(&lines, &["chat.v1", "chat.v2"]);
        assert_eq!(checked.is_ok(), wrong.is_empty(), "{lines:?}: {wrong:?}");
    }
}
