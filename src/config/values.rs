//! The syntax of single values, each checked on its own: route names, hosts, paths,
//! subprotocols, origins, backends and listen addresses. Each check returns the value in the
//! form it is compared in, or the message that says what is wrong and how to write it;
//! `validate` puts the file, line and key in front.

use std::net::SocketAddr;

use super::HostPattern;

/// A route's name: it labels the route's log lines and metric series, so it must read the
/// same there as here. Not empty, no whitespace around it, no control character (a newline
/// would start a forged line in a text log; metrics escape only `\n`, `"` and `\\`), no
/// invisible one (a bidi override, a zero-width space: `error::is_hidden`), and not `-`,
/// which is what the log and metrics say for a request no route took.
/// The first character of `text` no one sees (a zero-width or no-break space pasted with a
/// name): told as such, not as a name outside ASCII to write in punycode.
fn invisible(text: &str) -> Option<u32> {
    let c = text.chars().find(|&c| super::error::is_unseen(c))?;
    Some(u32::from(c))
}

pub(super) fn route_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(message) = surrounded_by_space(name) {
        return Err(message);
    }
    if name.contains(char::is_control) {
        return Err(format!(
            "{name:?} has a control character: a name labels log lines and metrics, write it in plain text"
        ));
    }
    // A bidi override or a zero-width character passes through logs and metrics raw, so the
    // name would read one way here and another (or not at all) there.
    if let Some(c) = name.chars().find(|&c| super::error::is_hidden(c)) {
        return Err(format!(
            "{name:?} has an invisible character (U+{:04X}): a name labels log lines and metrics, so it must be visible text",
            u32::from(c)
        ));
    }
    if name == "-" {
        return Err(
            "\"-\" is what log lines and metrics show for a request no route took: choose another name"
                .to_string(),
        );
    }
    Ok(())
}

pub(super) fn host_pattern(text: &str) -> Result<HostPattern, String> {
    if let Some(message) = surrounded_by_space(text) {
        return Err(message);
    }
    let host = text.to_ascii_lowercase();
    // One trailing dot (the fully qualified form) is dropped, as it is from a request's Host.
    let host = host.strip_suffix('.').unwrap_or(&host);
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    // The rules a request's Host is held to: a route no Host can match is a mistake.
    if name.is_empty() || !name.split('.').all(crate::grammar::is_label) {
        return Err(host_pattern_problem(text, name));
    }
    // A name ending in a number is an IPv4 address (as for a backend's host, see
    // `host_part`): written plainly, as browsers send it, and never under a wildcard, which
    // would take addresses (`*.0.0.1` for 10.0.0.1): addresses have no subdomains.
    let last = name.rsplit('.').next().unwrap_or(name);
    if is_number(last) {
        if wildcard {
            return Err(format!(
                "{text:?} is a wildcard over an IPv4 address, which has no subdomains: write the address itself (\"10.0.0.7\"), or a wildcard over a name"
            ));
        }
        if name.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!(
                "{text:?} ends in a number but is not an IPv4 address written as four decimal numbers 0-255 (\"10.0.0.7\"), as browsers send it"
            ));
        }
    }
    Ok(if wildcard {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

/// Why `name`, the host of the route host `text` (its `*.` taken off), can match no request,
/// in the words that say how to write it.
fn host_pattern_problem(text: &str, name: &str) -> String {
    let example = "write \"chat.example.com\" or \"*.example.com\"";
    if text.is_empty() {
        return format!("must not be empty: leave `host` out to match every host, or {example}");
    }
    // With a scope id (`fe80::1%eth0`) too, and under a wildcard: its colons are no port's.
    let unscoped = text
        .trim_start_matches("*.")
        .split('%')
        .next()
        .unwrap_or(text);
    if text.starts_with('[') || unscoped.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!(
            "{text:?} is an IPv6 address, which a route's host cannot be: leave `host` out to match every host"
        );
    }
    if let Some(name) = url_host(text) {
        return format!("{text:?} is a URL: write the host name alone ({name:?})");
    }
    if let Some((host, _)) = text.split_once(':') {
        return format!("{text:?} has a port, which a route's host leaves out: write {host:?}");
    }
    if let Some(c) = invisible(text) {
        return format!("{text:?} has an invisible character (U+{c:04X}): delete it");
    }
    if !text.is_ascii() {
        return format!(
            "{text:?} is outside ASCII: write the name in its punycode form (\"xn--…\", as `idn2` or a browser's address bar shows it)"
        );
    }
    if name.contains('*') || text.starts_with('*') {
        return format!(
            "{text:?} has a wildcard other than one leading \"*.\" before a name: {example}"
        );
    }
    format!(
        "{text:?} is not a host name (dot-separated labels of letters, digits, '-' and '_', none empty, none starting or ending with '-'): {example}"
    )
}

pub(super) fn route_path(text: &str) -> Result<String, String> {
    written_problem(text)?;
    read_problem(text)?;
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// What is wrong with `text`, a route path, as written: what no request path holds.
fn written_problem(text: &str) -> Result<(), String> {
    // Before the rules below, whose messages would be about '%' escapes or whitespace.
    if text.contains(char::is_control) {
        return Err(format!(
            "{text:?} has a control character (NUL, a tab, a newline…): no request path holds one, so this route could not be reached"
        ));
    }
    if !text.starts_with('/') || text.contains(['?', '#']) || text.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?} is not a path prefix (one starts with '/', and has no query, fragment or whitespace)"
        ));
    }
    // The escapes requests may carry (see `head::check`): others are refused with 400.
    if !crate::path::escapes_sound(text) {
        return Err(format!(
            "{text:?} has a '%' that does not start an escape of two hex digits (write '%25' for a '%'), an escape of a control character (NUL, a tab, a line feed, DEL…), or escapes that are no UTF-8: requests with one are refused, so this route could not be reached"
        ));
    }
    Ok(())
}

/// What is wrong with `text`, a route path, as requests are matched: what would match more
/// or other than it says, or nothing at all.
fn read_problem(text: &str) -> Result<(), String> {
    // Requests are matched as `path::canonical` reads them, with `;parameters` cut and
    // empty segments dropped, so a route holding either, however spelled (`%3B`, `；`),
    // would match more than it says ("/;v1" every path).
    let read = crate::path::canonical(text);
    if read.contains(';') {
        return Err(format!(
            "{text:?} has a ';parameter' (however spelled): requests are matched with parameters cut off, so write the path without it"
        ));
    }
    if read.contains("//") {
        return Err(format!(
            "{text:?} has an empty segment ('//'): requests are matched with empty segments dropped, so write one '/'"
        ));
    }
    let lower = text.to_ascii_lowercase();
    if text.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
        return Err(format!(
            "{text:?} has a '\\' or an encoded '/' or '\\': requests are matched with these read as '/', so write '/'"
        ));
    }
    if crate::path::has_best_fit_separator(text) {
        return Err(format!(
            "{text:?} has what Windows' best fit reads as '/' or '\\' (one of ∕ ⁄ ∖ ¥ ₩): requests are matched with these read as '/', so write '/'"
        ));
    }
    // A path written in a form requests are not matched in (`／`, `ａ`, a decomposed accent):
    // the form to write, unless that is no route path either (`‥` is `..`).
    let decoded = crate::path::percent_decode(text);
    if read != String::from_utf8_lossy(&decoded) {
        return Err(match route_path(&read) {
            Ok(_) => format!(
                "{text:?} is matched in its Unicode normal form (NFKC), as normalising backends read it: write {read:?}"
            ),
            Err(_) => format!(
                "{text:?} is read as {read:?} in its Unicode normal form (NFKC), as normalising backends read it, and that cannot be a route path"
            ),
        });
    }
    // A request path with a dot segment matches no route (`routes::select` answers 404 for
    // it): no request could ever reach such a route.
    if crate::path::has_dot_segment(text) {
        return Err(format!(
            "{text:?} has a '.' or '..' segment: requests with one never match a route, so this one could not be reached"
        ));
    }
    if read.split('/').any(|segment| segment.ends_with(['.', ' '])) {
        return Err(format!(
            "{text:?} has a segment ending in '.' or a space: requests are matched without them, as Windows servers read them, so write the path without them"
        ));
    }
    Ok(())
}

/// RFC 9110 token characters, which is what a subprotocol name must be (RFC 6455 §4.1).
pub(super) fn subprotocol(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(crate::grammar::is_tchar) {
        return Err(format!(
            "{text:?} is not a valid subprotocol name (an HTTP token)"
        ));
    }
    Ok(text.to_string())
}

/// An `origins` entry, normalised as requests' `Origin` is compared with it (lowercase, one
/// trailing `/` dropped: see `routes::Route::allows_origin`). It must be an origin as browsers
/// serialise one (RFC 6454 §6.2): `scheme "://" host [":" port]`, the host a name, an IPv4
/// address or a bracketed IPv6 address in the form browsers write it; anything else would
/// match no request. Not `null`: any page can send that (a sandboxed frame, a `file:` page),
/// so allowing it would allow everyone.
pub(super) fn origin(text: &str) -> Result<String, String> {
    let example = "write it like \"https://chat.example.com\" or \"https://chat.example.com:8443\"";
    if let Some(message) = surrounded_by_space(text) {
        return Err(message);
    }
    let lower = text.to_ascii_lowercase();
    let normalized = lower.strip_suffix('/').unwrap_or(&lower);
    if normalized == "null" {
        return Err("\"null\" is refused: any page can send it (sandboxed frames, file: pages), so allowing it would allow everyone".to_string());
    }
    let Some((scheme, authority)) = normalized.split_once("://") else {
        return Err(format!("{text:?} is not an origin: {example}"));
    };
    if !is_scheme(scheme) {
        return Err(format!(
            "{text:?} has no valid scheme (letters, digits, '+', '-', '.', starting with a letter): {example}"
        ));
    }
    if authority.contains('*') {
        return Err(format!(
            "{text:?} has a wildcard, which origins do not support: list each origin (\"https://a.example.com\", \"https://b.example.com\")"
        ));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{text:?} has a path, query, fragment or user name, which an Origin never holds: {example}"
        ));
    }
    // An IPv6 address without its brackets (`https://::1`), or with one missing: its colons
    // would read as a port's.
    let bare_v6 = authority.trim_start_matches('[').trim_end_matches(']');
    let v6 = bare_v6.parse::<std::net::Ipv6Addr>().is_ok()
        || (authority.starts_with('[') != authority.contains(']'));
    if v6 && !(authority.starts_with('[') && authority.contains(']')) {
        return Err(format!(
            "{text:?}: an IPv6 address is written in brackets in an origin, as browsers send it (\"{scheme}://[::1]:8443\")"
        ));
    }
    let (host, port) = split_port(authority);
    // Browsers write the port as a plain number, without leading zeros.
    let origin = format!("{scheme}://{host}");
    if let Some(problem) = port.and_then(|port| port_problem(text, &origin, port, 1)) {
        // Browsers leave the scheme's default port out: `https://a.com:0443` is written
        // `https://a.com`, not `https://a.com:443`, which matches no browser's Origin.
        let default = match scheme {
            "https" => Some("443"),
            "http" => Some("80"),
            _ => None,
        };
        let port = port.map(|port| port.trim_start_matches('0'));
        return Err(match default.is_some_and(|default| port == Some(default)) {
            true => format!("{text:?} has a port with a leading zero: write {origin:?}"),
            false => problem,
        });
    }
    if matches!(scheme, "http" | "https") {
        host_part(host, true)
            .map_err(|why| format!("{text:?} does not name a host as browsers write it: {why}"))?;
    } else if !is_app_host(host) {
        return Err(format!(
            "{text:?} does not name a host: an app's own scheme takes letters, digits, '-', '_' and '.' (\"app://.\", \"tauri://localhost\")"
        ));
    }
    Ok(normalized.to_string())
}

/// The host of an app's own scheme, as Chromium-based shells write its origin: Electron
/// apps' `app://.` (electron-builder) and `app://-` (electron-serve), `tauri://localhost`,
/// `capacitor://localhost`, `chrome-extension://<id>`. Such hosts are no DNS names, so not
/// held to a name's rules; only to the characters those shells put there.
fn is_app_host(host: &str) -> bool {
    !host.is_empty()
        && (host.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A URI scheme (RFC 3986 §3.1): a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && (scheme.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `authority` split at its port's `:`, if it has one (a bracketed IPv6 address's own colons
/// are not one).
pub(super) fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => {
            (&authority[..at], Some(&authority[at + 1..]))
        }
        _ => (authority, None),
    }
}

/// What is wrong with `port`, the port of `written` after `host`, if anything: one rule for
/// listen addresses, backends and origins, a number from `lowest` to 65535 in plain digits
/// (no sign, no space, no leading zero: one spelling of each port, as browsers write it in
/// `Origin`).
pub(super) fn port_problem(written: &str, host: &str, port: &str, lowest: u16) -> Option<String> {
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    // Its value, however many zeros lead it (`021444` is 21444, with a leading zero).
    let significant = port.trim_start_matches('0');
    let number = (digits && significant.len() <= 5)
        .then(|| match significant {
            "" => Some(0),
            significant => significant.parse::<u16>().ok(),
        })
        .flatten()
        .filter(|&p| p >= lowest);
    match number {
        None => Some(format!(
            "{written:?} has a port that is not a number from {lowest} to 65535"
        )),
        Some(n) if port.starts_with('0') && port != "0" => {
            let plain = format!("{host}:{n}");
            Some(format!(
                "{written:?} has a port with a leading zero: write {plain:?}"
            ))
        }
        Some(_) => None,
    }
}

/// What is wrong with `host` as the host of a backend or an origin, if anything: it must be
/// a DNS name (labels of letters, digits, `-` and `_`, as `grammar::is_label` allows; one
/// trailing dot, the fully qualified form), an IPv4 address, or a bracketed IPv6 address,
/// without a scope id. `canonical`: an IP address written only as browsers serialise it
/// (`[::1]`, not `[0::1]`), since an origin is compared as a string.
fn host_part(host: &str, canonical: bool) -> Result<(), String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = (v6.parse())
            .map_err(|_| format!("{v6:?} is not an IPv6 address (without a scope id)"))?;
        let url_form = url_form(ip);
        if canonical && url_form != v6 {
            return Err(format!("write the IPv6 address as [{url_form}]"));
        }
        return Ok(());
    }
    if let Some(c) = invisible(host) {
        return Err(format!(
            "it has an invisible character (U+{c:04X}): delete it"
        ));
    }
    if !host.is_ascii() {
        return Err("a name outside ASCII is written in its punycode form (\"xn--…\", as `idn2` or a browser's address bar shows it)".to_string());
    }
    if let Some(c) = host.chars().find(|c| c.is_ascii_control()) {
        return Err(format!("it holds the control character {c:?}"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    // A name ending in a number is an IPv4 address to resolvers (`127.1`, `0x7f.1`, `010.1.1.1`
    // read by inet_aton as 127.0.0.1, 127.0.0.1, 8.1.1.1) and to browsers (the URL standard's
    // "ends in a number", hex `0x1` included), so it must be one, written plainly.
    let last = name.rsplit('.').next().unwrap_or(name);
    if is_number(last) {
        return match host.parse::<std::net::Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "{host:?} ends in a number but is not an IPv4 address written as four decimal numbers 0-255 (\"10.0.0.7\")"
            )),
        };
    }
    if name.is_empty() || !name.split('.').all(crate::grammar::is_label) {
        return Err(format!(
            "{host:?} is not a host name (dot-separated labels of letters, digits, '-' and '_', none empty, none starting or ending with '-'), an IPv4 address or a bracketed IPv6 address"
        ));
    }
    Ok(())
}

/// A label the URL standard and `inet_aton` read as a number: decimal digits, or `0x` with
/// hex digits (or none) after it.
fn is_number(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// An IPv6 address as browsers write it in a URL, and so in `Origin` (the WHATWG URL
/// standard's IPv6 serializer): RFC 5952's form, lowercase hex with the first longest run of
/// two or more zero pieces as `::`, but an IPv4-mapped address in hex too (`::ffff:7f00:1`),
/// where Rust's `Display` writes it dotted (`::ffff:127.0.0.1`), a form no browser sends.
fn url_form(ip: std::net::Ipv6Addr) -> String {
    let pieces = ip.segments();
    let mut longest: Option<std::ops::Range<usize>> = None;
    let mut i = 0;
    while i < pieces.len() {
        let start = i;
        while i < pieces.len() && pieces[i] == 0 {
            i += 1;
        }
        if i - start >= 2 && longest.as_ref().is_none_or(|run| i - start > run.len()) {
            longest = Some(start..i);
        }
        i = i.max(start + 1);
    }
    let hex = |pieces: &[u16]| {
        let hex: Vec<String> = pieces.iter().map(|p| format!("{p:x}")).collect();
        hex.join(":")
    };
    match longest {
        Some(run) => format!("{}::{}", hex(&pieces[..run.start]), hex(&pieces[run.end..])),
        None => hex(&pieces),
    }
}

/// A backend, `host:port` as `resolve::resolve` hands it to the system resolver (see
/// [`host_part`] for the host; no userinfo, no `*`, no list, no `%` escape: none of them is a
/// name a resolver could answer for). The port is plain digits, 1 to 65535.
pub(super) fn backend(text: &str) -> Result<String, String> {
    let example = "(e.g. \"10.0.0.7:9001\", \"app:9001\", \"[::1]:9001\")";
    if let Some(message) = surrounded_by_space(text) {
        return Err(message);
    }
    // The most likely mistake of all: a URL where an address belongs.
    if let Some((scheme, rest)) = text.split_once("://") {
        return Err(url_instead(text, scheme, rest));
    }
    let (host, port) = split_port(text);
    let Some(port) = port else {
        return Err(format!("{text:?} is not host:port {example}"));
    };
    if let Some(problem) = port_problem(text, host, port, 1) {
        return Err(problem);
    }
    host_part(host, false).map_err(|why| format!("{text:?} is not host:port: {why}"))?;
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
        // An IPv4 address in IPv6 form is that IPv4 address (the kernel connects to it so).
        if let Some(kind) = no_peer(ip.to_canonical()) {
            return Err(format!(
                "{text:?} is {kind}, which names no server to connect to: write the backend's own address"
            ));
        }
        if is_link_local(ip) {
            return Err(format!(
                "{text:?} is a link-local address, reachable only through the interface a scope id would name, which a backend cannot: use the backend's global or unique local address (or a name)"
            ));
        }
    }
    Ok(text.to_string())
}

/// Whether `ip` is an IPv6 link-local address, fe80::/10.
fn is_link_local(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// What kind of address `ip` is if no TCP connection can go to it: the unspecified address
/// (Linux would take `0.0.0.0` for this host, other systems refuse it), a multicast group
/// or the broadcast address.
fn no_peer(ip: std::net::IpAddr) -> Option<&'static str> {
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if broadcast {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The host of `text` if it is a URL (`https://chat.example.com:443/ws`), where a host name
/// belongs.
fn url_host(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    Some(split_port(authority).0).filter(|host| !host.is_empty())
}

/// What to write instead of the URL `text` (`scheme://rest`) in `backends`.
fn url_instead(text: &str, scheme: &str, rest: &str) -> String {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let tls = scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("https");
    let alone = match split_port(authority) {
        (_, Some(_)) => authority.to_string(),
        (host, None) => format!("{host}:{}", if tls { 443 } else { 80 }),
    };
    if tls {
        return format!(
            "{text:?} is a URL: write the backend's host:port alone ({alone:?}), and give the \
             route `backend_tls = {{ ca = \"…\" }}` for TLS to it"
        );
    }
    format!("{text:?} is a URL: write the backend's host:port alone ({alone:?})")
}

/// A `backend_tls.server_name`: a host name or an IP address a certificate can be valid for,
/// written as `backends` writes hosts (no port).
pub(super) fn server_name(text: &str) -> Result<String, String> {
    if let Some(message) = surrounded_by_space(text) {
        return Err(message);
    }
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Ok(text.to_string());
    }
    if let Some(name) = url_host(text) {
        return Err(format!(
            "{text:?} is a URL: write the name alone ({name:?})"
        ));
    }
    if text.contains(':') && !text.starts_with('[') {
        return Err(format!("{text:?} has a port: write the name alone"));
    }
    host_part(text, false).map_err(|why| format!("{text:?} is not a server name: {why}"))?;
    certificate_name(text).map(drop)?;
    Ok(text.to_string())
}

/// The name a backend's certificate is checked for, from `host` as `backends` and
/// `server_name` write it (a name or an IP address): without an IPv6 address's brackets, and
/// without a fully qualified name's final dot (certificates name hosts without it). An error
/// where no certificate can hold it: a DNS name's labels are at most 63 bytes, the name at
/// most 253, which the host rules above do not limit.
pub(crate) fn certificate_name(
    host: &str,
) -> Result<rustls_pki_types::ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    rustls_pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// Whether `addr` (as `written`) is an address a TCP listener can be bound to, and bound
/// to as it reads:
/// - not an IPv4 address in IPv6 form (`[::ffff:127.0.0.1]:8443`): IPv6 listeners are bound
///   IPv6-only (so that `[::]` can sit beside `0.0.0.0`), which such an address cannot be;
/// - not a multicast or the broadcast address: TCP has no listener for a group;
/// - a scope id (`%2`) only on a link-local address (`fe80::/10`), the one kind whose scope
///   picks the interface. The kernel ignores it on any other, so `[::1%1]:P` is `[::1]:P`
///   bound twice, and would fail only when serving; refusing the id, rather than comparing
///   addresses without it, keeps one spelling of each address.
pub(super) fn bindable(written: &str, addr: SocketAddr) -> Result<(), String> {
    let ip = addr.ip();
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().to_ipv4_mapped().is_some() {
            let plain = SocketAddr::new(ip.to_canonical(), addr.port());
            return Err(format!(
                "{written:?} is an IPv4 address in IPv6 form: write it as {plain}"
            ));
        }
        let link_local = is_link_local(ip);
        if v6.scope_id() != 0 && !link_local {
            let plain = SocketAddr::new(ip, addr.port());
            return Err(format!(
                "{written:?} has a scope id, which only a link-local address (fe80::/10) uses: write it as {plain}"
            ));
        }
        // The kernel binds a link-local address only on the interface its scope id names.
        if v6.scope_id() == 0 && link_local {
            return Err(format!(
                "{written:?} is a link-local address without a scope id: add the interface's number (\"[fe80::1%2]:8443\", `ip -6 addr` shows it)"
            ));
        }
    }
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        let kind = if broadcast { "broadcast" } else { "multicast" };
        return Err(format!(
            "{written:?} is a {kind} address, which a TCP listener cannot be bound to: use a local unicast address"
        ));
    }
    Ok(())
}

/// What is wrong with a value that has whitespace (a space, a tab, a newline) at either end:
/// nothing ever reads it so, and it usually means another value was pasted in with it.
pub(super) fn surrounded_by_space(written: &str) -> Option<String> {
    let trimmed = written.trim();
    (trimmed != written).then(|| format!("{written:?} has whitespace around it: write {trimmed:?}"))
}

/// Two different addresses that cannot both be bound: the same port (not 0) in the same
/// family, one of them the unspecified address, which takes the port on every address.
/// (`[::]` is bound IPv6-only, so it does not collide with `0.0.0.0`.)
pub(super) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a != b
        && a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn overlap_message(addr: SocketAddr, other: SocketAddr) -> String {
    format!("{addr} overlaps {other}: an unspecified address takes the port on every address")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::url_form;

    #[test]
    fn ipv6_addresses_are_written_as_browsers_write_them() {
        for (ip, written) in [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("::ffff:127.0.0.1", "::ffff:7f00:1"),
            ("::ffff:7f00:1", "::ffff:7f00:1"),
        ] {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(url_form(ip), written, "{ip}");
        }
        // Elsewhere it is RFC 5952's form, which `Display` writes.
        for ip in ["fe80::1:2", "2001:db8:1:2:3:4:5:6", "0:0:1::", "::2:3"] {
            let ip: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(url_form(ip), ip.to_string());
        }
    }
}
