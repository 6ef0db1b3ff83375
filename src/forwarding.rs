//! What crosses the proxy in each direction's headers: the upgrade request as the backend
//! gets it (hop-by-hop and spoofable headers dropped, `X-Forwarded-*` set here), the 101 and
//! the refusals as the client gets them. Pure functions of the headers, no I/O.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::header::{
    CONNECTION, CONTENT_LOCATION, HOST, LOCATION, SEC_WEBSOCKET_VERSION, UPGRADE, VIA,
};
use hyper::http::response;
use hyper::{Request, Response, StatusCode};

use crate::websocket::SEC_WEBSOCKET_PROTOCOL;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Hop-by-hop headers (RFC 9110 §7.6.1), and the framing hyper writes anew: never passed on,
/// either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Proxy authentication: wsgate asks for no proxy credentials and forwards none, so neither
/// side's can mean anything past it (a challenge would only confuse the client).
const PROXY_AUTH: &[&str] = &[
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-authentication-info",
];

/// The client's headers this proxy sets itself, or that name the client in ways it does not
/// keep up (a client could claim any address in them to a backend that reads them instead of
/// X-Forwarded-For). Dropped by name, not only when the client's `Connection` list names them,
/// so a client cannot make us drop what we add (Traefik CVE-2024-45410).
const SET_HERE: &[&str] = &[
    "sec-websocket-protocol",
    // Checked to be 13, said once, but a client may say it as `13,` or over two lines, which
    // strict backends refuse: said here, once.
    "sec-websocket-version",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// Headers by which some frameworks, CDNs and web servers take a client's address, URL or
/// method from the request instead of from the connection and request line: a client
/// claiming them through wsgate would be believed (`X-Original-URL: /admin` routes old IIS
/// and Symfony apps past a path rule; `True-Client-IP` and `CF-Connecting-IP` name whatever
/// address the client likes). wsgate keeps none of them up, so none is forwarded.
const CLAIMS: &[&str] = &[
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether the client's header `name` is never forwarded, whatever its `Connection` says.
/// Besides the lists: every `X-Forwarded-*` but `-For` (which gets the client's address
/// appended), and `Front-End-Https`. wsgate is where TLS ends, so the scheme, port, prefix or
/// server a client claims there (`X-Forwarded-Port`, `-Prefix`, `-Ssl`, `-Scheme`…, which
/// Spring and Rack trust) can only be a lie.
fn not_forwarded(name: &str) -> bool {
    [HOP_BY_HOP, PROXY_AUTH, SET_HERE, CLAIMS]
        .iter()
        .any(|list| list.contains(&name))
        || (name.starts_with("x-forwarded-") && name != X_FORWARDED_FOR.as_str())
        || name == "front-end-https"
        || underscored_alias(name)
}

/// A name with `_` for `-` that CGI, WSGI, Rack and PHP backends read as the same header as one
/// this proxy sets or strips (both spellings become `HTTP_X_FORWARDED_FOR`): a client could
/// spoof it past the dashed name's handling. (nginx drops every name with `_`; only these are
/// dropped here.)
fn underscored_alias(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    dashed == X_FORWARDED_FOR.as_str()
        || dashed.starts_with("sec-websocket-")
        || not_forwarded(&dashed)
}

/// The header names a message's own `Connection` lists: hop-by-hop too (RFC 9110 §7.6.1).
/// Split at every comma, quoted or not: `Connection` holds no quoted strings, and a stray
/// quote must not hide the names after it from being stripped (stripping too much is safe).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    (crate::grammar::plain_elements(headers, &CONNECTION))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Headers a client's `Connection` list may not remove: the handshake itself depends on them.
fn is_protected(name: &str) -> bool {
    name == "host" || name.starts_with("sec-websocket-") || name.starts_with("x-forwarded-")
}

/// The request line and headers to send to the backend: the client's, as they may be
/// forwarded, with the client's address and its verified certificate's
/// `X-Forwarded-Client-Cert` (if it showed one) added.
pub(crate) fn backend_request(
    client: &Request<impl Sized>,
    protocols: &[&str],
    peer: SocketAddr,
    certificate: Option<&HeaderValue>,
) -> Request<Empty<Bytes>> {
    let mut headers = HeaderMap::with_capacity(client.headers().len() + 4);
    let named = connection_named(client.headers());
    // A client naming X-Forwarded-For drops its own value (hop-by-hop, as it says), never the
    // address this proxy adds; the other protected names it cannot strip at all.
    let own_xff_dropped = named.iter().any(|n| n == "x-forwarded-for");
    for (name, value) in client.headers() {
        let n = name.as_str();
        let named_here = named.iter().any(|c| c == n) && !is_protected(n);
        if not_forwarded(n) || named_here || (own_xff_dropped && name == X_FORWARDED_FOR) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    if !protocols.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&protocols.join(", ")) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
    append_forwarded_for(&mut headers, peer);
    // This hop, after any the client's `Via` names (RFC 9110 §7.6.3: a gateway must say it).
    headers.append(VIA, HeaderValue::from_static("1.1 wsgate"));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(host) = client.headers().get(HOST) {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    // The client's own is never forwarded (`not_forwarded`: an `X-Forwarded-` name).
    if let Some(certificate) = certificate {
        headers.insert(X_FORWARDED_CLIENT_CERT, certificate.clone());
    }
    let mut request = Request::new(Empty::new());
    // Origin-form, exactly as the client sent it (an absolute-form target loses its authority,
    // which Host and X-Forwarded-Host carry).
    if let Some(pq) = client.uri().path_and_query() {
        *request.uri_mut() = hyper::Uri::from(pq.clone());
    }
    *request.headers_mut() = headers;
    request
}

/// The client's `X-Forwarded-For` list (all its lines, empty elements left out) with the
/// client's address appended: one line, so a backend reading only the first line or only
/// the last element gets what it expects. An element with a `"` is left out too: no address
/// has one, and a backend reading the list quote-aware would see the address wsgate
/// appends inside the client's string.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    let mut list: Vec<&str> = crate::grammar::plain_elements(headers, &X_FORWARDED_FOR)
        .filter(|element| !element.contains('"'))
        .collect();
    list.push(&ip);
    let joined = list.join(", ");
    // The head's checks let through only bytes a header value may hold, so the join is one
    // too; were it ever not, the client's own lines must still not reach the backend
    // unappended, as if they were the whole path: the address alone then (an IP is ASCII).
    let value = HeaderValue::from_str(&joined)
        .or_else(|_| HeaderValue::from_str(&ip))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(X_FORWARDED_FOR, value);
}

/// The 101 the client gets: the backend's headers (extensions, chosen protocol, cookies…)
/// without its hop-by-hop ones, with the upgrade tokens set by us.
pub(crate) fn client_switching_head(backend: &response::Parts) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let named = connection_named(&backend.headers);
    for (name, value) in &backend.headers {
        let n = name.as_str();
        // The handshake's own headers (the Accept, the protocol and extensions chosen) were
        // checked as the client will see them: a backend naming them in its Connection does
        // not take them from the client, as a client's cannot from the backend.
        let named_here = named.iter().any(|c| c == n) && !n.starts_with("sec-websocket-");
        if !HOP_BY_HOP.contains(&n) && !PROXY_AUTH.contains(&n) && !named_here {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    response
}

/// Strips hop-by-hop headers from a relayed refusal and marks it as the connection's last.
pub(crate) fn relay_refusal<B>(mut response: Response<B>) -> Response<B> {
    // Our own version, whatever the backend spoke (RFC 9110 §2.5): an HTTP/1.0 answer passed
    // on as 1.0 would go out delimited by the close, and a body cut short would look whole.
    *response.version_mut() = hyper::Version::HTTP_11;
    let upgrade_required = response.status() == StatusCode::UPGRADE_REQUIRED;
    let headers = response.headers_mut();
    let named = connection_named(headers);
    // The framing too (in HOP_BY_HOP): hyper decoded the body, and frames it anew from what it
    // knows (its length, else chunked). A backend sending both Content-Length and
    // Transfer-Encoding would otherwise have its answer refused by hyper's encoder, and the
    // client get nothing.
    let dropped = named.iter().map(String::as_str);
    for name in dropped
        .chain(HOP_BY_HOP.iter().copied())
        .chain(PROXY_AUTH.iter().copied())
    {
        headers.remove(name);
    }
    // A 426 must say which upgrade it wants (RFC 9110 §15.5.22): the backend's `Upgrade` went
    // with the hop-by-hop headers, so say it again, for this hop. A backend's 426 is how it
    // asks for another `Sec-WebSocket-Version` (RFC 6455 §4.4), which is passed on. Its
    // `Connection` says `close` too, unlike wsgate's own 426 (see `error.rs`): that one's
    // connection is closed when its body is done with (`proxy::FixedBody`), a relayed
    // answer's by hyper, which only the `close` token asks; without it the connection would
    // wait for a second request until the head's deadline.
    if upgrade_required {
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade, close"));
    } else {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Makes a backend's answer's `Location` and `Content-Location` relative where they name the
/// backend itself, as configured (`named`) or as dialed (`at`): a backend that builds them
/// from its own address (a pod's IP and port) would send the client past the proxy, to an
/// address it cannot reach, and tell it internals. Relative, they resolve against the URL the
/// client asked for, through wsgate (nginx's `proxy_redirect default` does the like).
pub(crate) fn unname_backend(headers: &mut HeaderMap, named: &str, at: SocketAddr) {
    for name in [LOCATION, CONTENT_LOCATION] {
        let relative = headers
            .get(&name)
            .and_then(|value| value.to_str().ok())
            .and_then(|url| relative_if_at(url, named, at))
            .and_then(|relative| HeaderValue::from_str(&relative).ok());
        if let Some(relative) = relative {
            headers.insert(name, relative);
        }
    }
}

/// `url` without its scheme and authority, if it is absolute and its authority is the
/// backend's; `None` if it is anything else.
fn relative_if_at(url: &str, named: &str, at: SocketAddr) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // Credentials in the URL are not part of the address.
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let port_given = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    let address = if port_given {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    let backends = address.eq_ignore_ascii_case(named) || address.parse() == Ok(at);
    // What follows the authority could read as one itself once alone (`//evil.example/x`,
    // `/\evil.example`, which browsers take for `//`, also with a tab or newline between,
    // which browsers drop from a URL first): the backend's address, unreachable, is better
    // than a redirect to another site.
    let mut squeezed = path.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r'));
    let another_authority =
        squeezed.next() == Some('/') && matches!(squeezed.next(), Some('/' | '\\'));
    if !backends || another_authority {
        return None;
    }
    Some(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/chat?room=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn forwarded(headers: &[(&str, &str)], protocols: &[&str]) -> HeaderMap {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let forwarded = backend_request(&request(headers), protocols, peer, None);
        assert_eq!(forwarded.uri(), "/chat?room=1");
        forwarded.headers().clone()
    }

    #[test]
    fn only_wsgates_word_on_a_client_certificate_reaches_the_backend() {
        let claims = [
            ("x-forwarded-client-cert", "Hash=00;Subject=\"CN=admin\""),
            ("x_forwarded_client_cert", "Hash=00"),
        ];
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let none = backend_request(&request(&claims), &[], peer, None);
        assert_eq!(
            values(none.headers(), "x-forwarded-client-cert"),
            Vec::<&str>::new()
        );
        assert_eq!(
            values(none.headers(), "x_forwarded_client_cert"),
            Vec::<&str>::new()
        );
        let ours = HeaderValue::from_static("Hash=ab");
        let verified = backend_request(&request(&claims), &[], peer, Some(&ours));
        assert_eq!(
            values(verified.headers(), "x-forwarded-client-cert"),
            ["Hash=ab"]
        );
        assert_eq!(
            values(verified.headers(), "x_forwarded_client_cert"),
            Vec::<&str>::new()
        );
    }

    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        let all = headers.get_all(name).iter();
        all.map(|v| v.to_str().unwrap()).collect()
    }

    /// Each client header: forwarded as it came (`Some(value)`) or not at all (`None`).
    #[test]
    fn the_backend_gets_the_client_headers_but_the_ones_set_or_dropped_here() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("host", "chat.example.com", Some("chat.example.com")),
            (
                "origin",
                "https://chat.example.com",
                Some("https://chat.example.com"),
            ),
            ("cookie", "a=1", Some("a=1")),
            (
                "sec-websocket-key",
                "dGhlIHNhbXBsZSBub25jZQ==",
                Some("dGhlIHNhbXBsZSBub25jZQ=="),
            ),
            (
                "sec-websocket-extensions",
                "permessage-deflate",
                Some("permessage-deflate"),
            ),
            ("x_custom", "kept", Some("kept")),
            // Hop-by-hop, framing, proxy credentials.
            ("keep-alive", "timeout=5", None),
            ("te", "trailers", None),
            ("proxy-authorization", "Basic eA==", None),
            ("content-length", "0", None),
            // What only this proxy may say about the client or the connection.
            ("x-forwarded-proto", "http", Some("https")),
            ("x-forwarded-host", "evil.test", Some("chat.example.com")),
            ("x-forwarded-port", "80", None),
            ("x-forwarded-prefix", "/admin", None),
            ("forwarded", "for=10.0.0.1", None),
            ("x-real-ip", "10.0.0.1", None),
            ("front-end-https", "off", None),
            // Underscore spellings a CGI-style backend reads as the dashed names.
            ("x_forwarded_for", "10.0.0.1", None),
            ("x_real_ip", "10.0.0.1", None),
            ("sec_websocket_protocol", "admin", None),
        ];
        for (name, value, expected) in cases {
            let headers = forwarded(&[("host", "chat.example.com"), (name, value)], &[]);
            let got = values(&headers, name);
            assert_eq!(got.first().copied(), *expected, "{name}: {got:?}");
        }
    }

    #[test]
    fn upgrade_tokens_protocols_and_the_client_address_are_set_here() {
        let headers = forwarded(
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
                ("sec-websocket-protocol", "chat.v2, admin"),
                ("x-forwarded-for", "203.0.113.1, , 198.51.100.2"),
                ("x-forwarded-for", "198.51.100.3"),
                ("sec-websocket-version", "13, "),
                ("sec-websocket-version", ""),
            ],
            &["chat.v2"],
        );
        assert_eq!(values(&headers, "upgrade"), ["websocket"]);
        assert_eq!(values(&headers, "sec-websocket-version"), ["13"]);
        assert_eq!(values(&headers, "connection"), ["Upgrade"]);
        assert_eq!(values(&headers, "sec-websocket-protocol"), ["chat.v2"]);
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["203.0.113.1, 198.51.100.2, 198.51.100.3, 192.0.2.7"]
        );
        // No protocol left to forward: none sent, not an empty one.
        assert!(forwarded(&[("sec-websocket-protocol", "x")], &[])
            .get("sec-websocket-protocol")
            .is_none());
    }

    #[test]
    fn a_clients_connection_list_drops_what_it_names_but_not_the_handshake() {
        let headers = forwarded(
            &[
                (
                    "connection",
                    "Upgrade, x-trace, host, sec-websocket-key, x-forwarded-for",
                ),
                ("host", "chat.example.com"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("x-trace", "1"),
                ("x-forwarded-for", "10.0.0.1"),
            ],
            &[],
        );
        assert!(headers.get("x-trace").is_none());
        assert_eq!(values(&headers, "host"), ["chat.example.com"]);
        assert!(headers.get("sec-websocket-key").is_some());
        // Its own X-Forwarded-For goes, as it asked; the address added here stays.
        assert_eq!(values(&headers, "x-forwarded-for"), ["192.0.2.7"]);
    }

    #[test]
    fn the_client_gets_the_backends_101_and_refusals_without_hop_by_hop_headers() {
        let backend = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("set-cookie", "s=1")
            .body(())
            .unwrap();
        let (parts, ()) = backend.into_parts();
        let switching = client_switching_head(&parts);
        let headers = switching.headers();
        assert_eq!(switching.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(values(headers, "connection"), ["Upgrade"]);
        assert_eq!(
            values(headers, "sec-websocket-extensions"),
            ["permessage-deflate"]
        );
        assert_eq!(values(headers, "set-cookie"), ["s=1"]);
        for gone in ["x-hop", "keep-alive", "proxy-authenticate"] {
            assert!(headers.get(gone).is_none(), "{gone}");
        }

        let refusal = Response::builder()
            .status(401)
            .version(hyper::Version::HTTP_10)
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("transfer-encoding", "chunked")
            .header("content-length", "5")
            .header("www-authenticate", "Bearer")
            .body(())
            .unwrap();
        let relayed = relay_refusal(refusal);
        let headers = relayed.headers();
        assert_eq!(relayed.status(), 401);
        assert_eq!(relayed.version(), hyper::Version::HTTP_11);
        assert_eq!(values(headers, "connection"), ["close"]);
        assert_eq!(values(headers, "www-authenticate"), ["Bearer"]);
        for gone in ["x-hop", "transfer-encoding", "content-length"] {
            assert!(headers.get(gone).is_none(), "{gone}");
        }
    }

    /// `Connection` holds no quoted strings: a stray quote hides no name after it from being
    /// stripped, in a 101, a relayed refusal, or the request forwarded.
    #[test]
    fn a_stray_quote_in_connection_hides_no_name_from_being_stripped() {
        let backend = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade, \"x, x-hop")
            .header("x-hop", "secret")
            .body(())
            .unwrap();
        assert!(crate::grammar::has_token(
            backend.headers(),
            &CONNECTION,
            "upgrade"
        ));
        let (parts, ()) = backend.into_parts();
        assert!(client_switching_head(&parts)
            .headers()
            .get("x-hop")
            .is_none());
        let refusal = Response::builder()
            .status(403)
            .header("connection", "\"x, x-hop")
            .header("x-hop", "secret")
            .body(())
            .unwrap();
        assert!(relay_refusal(refusal).headers().get("x-hop").is_none());
        let headers = forwarded(
            &[("connection", "Upgrade, \"x, x-trace"), ("x-trace", "1")],
            &[],
        );
        assert!(headers.get("x-trace").is_none());
    }

    /// A byte outside ASCII in a backend's `Connection` line (a client's is refused with 400
    /// before this) hides no other name on it from being stripped.
    #[test]
    fn obs_text_in_connection_hides_no_name_from_being_stripped() {
        let line = HeaderValue::from_bytes(b"upgrade, x-secret, caf\xe9").unwrap();
        let backend = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", line.clone())
            .header("x-secret", "1")
            .body(())
            .unwrap();
        let (parts, ()) = backend.into_parts();
        let head = client_switching_head(&parts);
        assert!(head.headers().get("x-secret").is_none());
        let refusal = Response::builder()
            .status(403)
            .header("connection", line)
            .header("x-secret", "1")
            .body(())
            .unwrap();
        assert!(relay_refusal(refusal).headers().get("x-secret").is_none());
    }

    /// No address holds a `"`: such an element of the client's list is left out, so a backend
    /// reading the list quote-aware cannot find the address appended here inside it.
    #[test]
    fn an_x_forwarded_for_element_with_a_quote_is_left_out() {
        let headers = forwarded(
            &[("x-forwarded-for", "203.0.113.1, \"a, b\", 198.51.100.2, \"")],
            &[],
        );
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["203.0.113.1, 198.51.100.2, 192.0.2.7"]
        );
    }

    #[test]
    fn a_relayed_426_names_the_upgrade_it_wants_and_keeps_the_versions() {
        let refusal = Response::builder()
            .status(426)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13, 8")
            .body(())
            .unwrap();
        let relayed = relay_refusal(refusal);
        let headers = relayed.headers();
        assert_eq!(values(headers, "upgrade"), ["websocket"]);
        assert_eq!(values(headers, "connection"), ["Upgrade, close"]);
        assert_eq!(values(headers, "sec-websocket-version"), ["13, 8"]);
    }

    /// Header names a client may send, the ones set or stripped here among them, spelled as
    /// clients spell them (case, `_` for `-`), each with whether it is never forwarded,
    /// whatever the client's `Connection` says: hop-by-hop, proxy credentials, the ones set
    /// here, and their `_` spellings.
    const NAMES: &[(&str, bool)] = &[
        ("host", false),
        ("origin", false),
        ("cookie", false),
        ("x-custom", false),
        ("X-Forwarded-For", false),
        ("x_forwarded_for", true),
        ("X-Forwarded-Proto", true),
        ("x-forwarded-host", true),
        ("x-forwarded-port", true),
        ("X_Forwarded_Proto", true),
        ("forwarded", true),
        ("x-real-ip", true),
        ("x_real_ip", true),
        ("connection", true),
        ("keep-alive", true),
        ("proxy-connection", true),
        ("te", true),
        ("trailer", true),
        ("transfer-encoding", true),
        ("upgrade", true),
        ("content-length", true),
        ("proxy-authorization", true),
        ("sec-websocket-key", false),
        ("sec-websocket-protocol", true),
        ("sec_websocket_protocol", true),
        ("sec-websocket-extensions", false),
        ("front-end-https", true),
        ("True-Client-IP", true),
        ("cf_connecting_ip", true),
        ("x-original-url", true),
        ("X-HTTP-Method-Override", true),
        ("via", false),
    ];

    /// A value for any of them: addresses, token lists naming other headers, empty ones.
    const VALUES: &[&str] = &[
        "",
        "a",
        "10.0.0.1",
        "10.0.0.1, 10.0.0.2",
        " , ,",
        "Upgrade",
        "keep-alive, Upgrade",
        "cookie, x-custom",
        "via, cookie",
        "host, X-Forwarded-For",
        "x-real-ip,sec-websocket-key",
        "websocket",
        "h2c",
        "https",
        "chat.example.com",
    ];

    proptest::proptest! {
        /// Whatever headers a client sends, the backend gets one `Upgrade: websocket`, one
        /// `Connection: Upgrade`, `X-Forwarded-Proto: https`, the client's `Host` as
        /// `X-Forwarded-Host`, one `X-Forwarded-For` line ending in the client's address, no
        /// other hop-by-hop, proxy-auth or spoofable header, nothing the client's `Connection`
        /// named but the handshake's own headers, and every other header as it came.
        #[test]
        fn whatever_a_client_sends_the_backend_gets_the_proxys_own_framing(
            sent in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12),
        ) {
            let sent: Vec<(&str, &str)> = sent.iter().map(|&(n, v)| (NAMES[n].0, VALUES[v])).collect();
            let client = request(&sent);
            let got = forwarded(&sent, &[]);
            let one = |name: &str| values(&got, name);
            proptest::prop_assert_eq!(one("upgrade"), ["websocket"]);
            proptest::prop_assert_eq!(one("connection"), ["Upgrade"]);
            proptest::prop_assert_eq!(one("x-forwarded-proto"), ["https"]);
            let host = client.headers().get(HOST).map(|h| h.to_str().unwrap());
            proptest::prop_assert_eq!(one("x-forwarded-host").first().copied(), host);
            let xff = one("x-forwarded-for");
            proptest::prop_assert_eq!(xff.len(), 1);
            proptest::prop_assert!(xff[0] == "192.0.2.7" || xff[0].ends_with(", 192.0.2.7"));
            // What the client's Connection lines name, read here, not by the code under test.
            let named: Vec<String> = (client.headers().get_all(CONNECTION).iter())
                .flat_map(|v| v.to_str().unwrap().split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            // The client's hops (unless its Connection named them), then this one.
            let via = one("via");
            proptest::prop_assert_eq!(via.last().copied(), Some("1.1 wsgate"));
            let mut theirs: Vec<&str> = (client.headers().get_all("via").iter())
                .map(|v| v.to_str().unwrap())
                .collect();
            if named.iter().any(|c| c == "via") {
                theirs.clear();
            }
            proptest::prop_assert_eq!(&via[..via.len() - 1], &theirs[..]);
            for (name, value) in client.headers() {
                let n = name.as_str();
                let ours = ["upgrade", "connection", "x-forwarded-for", "x-forwarded-proto",
                    "x-forwarded-host", "via"];
                if ours.contains(&n) {
                    continue;
                }
                let protected = n == "host"
                    || n.starts_with("sec-websocket-")
                    || n.starts_with("x-forwarded-");
                let never = NAMES.iter().any(|(m, never)| *never && m.eq_ignore_ascii_case(n));
                let dropped = never || (named.iter().any(|c| c == n) && !protected);
                let kept = got.get_all(name).iter().any(|v| v == value);
                proptest::prop_assert_eq!(kept, !dropped, "{}: {:?}", n, value);
            }
            for name in got.keys() {
                let n = name.as_str();
                // Every `_` name above is an alias of one set or stripped here.
                proptest::prop_assert!(!n.contains('_'), "{}", n);
                proptest::prop_assert!(
                    !["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "content-length", "proxy-authorization", "forwarded", "x-real-ip",
                        "x-forwarded-port", "front-end-https"].contains(&n),
                    "{}",
                    n
                );
            }
        }
    }

    #[test]
    fn a_location_naming_the_backend_is_made_relative_and_any_other_is_kept() {
        let at: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let named = "app.internal:8080";
        let relative = |url| relative_if_at(url, named, at);
        assert_eq!(
            relative("http://10.0.0.7:8080/x?y#z").as_deref(),
            Some("/x?y#z")
        );
        assert_eq!(relative("WS://App.Internal:8080").as_deref(), Some("/"));
        assert_eq!(
            relative("http://u:p@10.0.0.7:8080?q").as_deref(),
            Some("/?q")
        );
        assert_eq!(relative("https://chat.example.com/x"), None);
        assert_eq!(relative("http://10.0.0.7:8081/x"), None);
        assert_eq!(relative("/already/relative"), None);
        assert_eq!(relative("mailto://10.0.0.7:8080/x"), None);
        assert_eq!(relative("http://10.0.0.7:8080//evil.example/x"), None);
        assert_eq!(relative("http://10.0.0.7:8080/\\evil.example/x"), None);
        assert_eq!(relative("http://10.0.0.7:8080/\t/evil.example/x"), None);
        assert_eq!(relative("http://10.0.0.7:8080/\t\\evil.example/x"), None);
        assert_eq!(relative("http://10.0.0.7:8080/\r\n/evil.example"), None);
        assert_eq!(
            relative("http://10.0.0.7:8080/a\t/b").as_deref(),
            Some("/a\t/b")
        );
        // A default port stands for itself when left out.
        let at80: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            relative_if_at("http://[::1]/a", "[::1]:80", at80).as_deref(),
            Some("/a")
        );
        assert_eq!(relative_if_at("https://[::1]/a", "[::1]:80", at80), None);

        let mut headers = HeaderMap::new();
        headers.insert(
            LOCATION,
            HeaderValue::from_static("http://10.0.0.7:8080/next"),
        );
        headers.insert(
            CONTENT_LOCATION,
            HeaderValue::from_static("https://cdn.example/x"),
        );
        unname_backend(&mut headers, named, at);
        assert_eq!(headers[LOCATION], "/next");
        assert_eq!(headers[CONTENT_LOCATION], "https://cdn.example/x");
    }
}
