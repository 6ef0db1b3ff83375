//! The rules a config must keep beyond its TOML types: addresses that can be bound side by
//! side, certificate files, sane routes (paths, hosts, origins, subprotocols, backends), and
//! the warnings for what loads but is surely a mistake. Turns [`RawConfig`] into [`Config`].

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::Location;
use super::raw::{HumanDuration, RawCertificate, RawConfig, RawLimits, RawRoute, RawTimeouts};
use super::{CertificatePaths, Config, ConfigError, HostPattern, Limits, RouteConfig, Timeouts};

/// The longest accepted timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks a [`RawConfig`] against the rules, with the source at hand to locate errors.
pub(super) struct Validator<'a> {
    pub(super) src: &'a str,
    pub(super) path: &'a Path,
}

impl Validator<'_> {
    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let lines = LineIndex::new(self.src);
        Checker {
            src: self.src,
            path: self.path,
            lines,
        }
        .config(raw)
    }
}

/// Where each line of the source starts, so that locating a span is a binary search: a
/// config with a warning per route (thousands of shadowed routes, say) would otherwise read
/// the file from its start once per warning, which is quadratic.
struct LineIndex {
    /// Byte offsets of the first byte of each line; the first is 0.
    starts: Vec<usize>,
    /// The last place located: its byte offset and its column. Spans are located mostly in
    /// file order, so the next one on the same line counts characters from there, not from
    /// the line's start: thousands of inline tables on one line (`certificates = [{…}, …]`)
    /// would make counting from the start quadratic again.
    last: Cell<(usize, usize)>,
}

impl LineIndex {
    fn new(src: &str) -> LineIndex {
        let after_newlines = src.match_indices('\n').map(|(at, _)| at + 1);
        LineIndex {
            starts: std::iter::once(0).chain(after_newlines).collect(),
            last: Cell::new((0, 1)),
        }
    }

    /// The place of `span` in `src`, as `error::locate` finds it: the line, and the column
    /// counted in characters, of the span's start (clamped to the text, and moved back to a
    /// character boundary).
    fn locate(&self, src: &str, span: &Range<usize>, key: &str) -> Location {
        let mut start = span.start.min(src.len());
        while start > 0 && !src.is_char_boundary(start) {
            start -= 1;
        }
        // The last line starting at or before `start`; there is always one (offset 0).
        let line = self.starts.partition_point(|&s| s <= start).max(1);
        let line_start = self.starts[line - 1];
        let (last, last_column) = self.last.get();
        let column = if (line_start..=start).contains(&last) {
            last_column + src[last..start].chars().count()
        } else {
            src[line_start..start].chars().count() + 1
        };
        self.last.set((start, column));
        Location {
            line,
            column,
            key: key.to_string(),
        }
    }
}

/// The [`Validator`] at work: the source, its path and its line index.
struct Checker<'a> {
    src: &'a str,
    path: &'a Path,
    lines: LineIndex,
}

impl Checker<'_> {
    fn locate(&self, span: &Range<usize>, key: &str) -> Location {
        self.lines.locate(self.src, span, key)
    }

    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, &self.locate(span, key), message)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = self.listen(&raw.proxy.listen)?;
        let listen_locations = (raw.proxy.listen.get_ref().iter().enumerate())
            .map(|(i, text)| self.locate(&text.span(), &format!("proxy.listen[{i}]")))
            .collect();
        let admin_location =
            (raw.admin.as_ref()).map(|admin| self.locate(&admin.listen.span(), "admin.listen"));
        let mut warnings = Vec::new();
        Ok(Config {
            path: self.path.to_path_buf(),
            admin: raw
                .admin
                .as_ref()
                .map(|admin| self.admin(&admin.listen, &listen))
                .transpose()?,
            listen,
            listen_locations,
            admin_location,
            certificates: self.certificates(&raw.tls.certificates)?,
            tls_min_version: raw.tls.min_version,
            session_resumption: raw.tls.session_resumption,
            timeouts: self.timeouts(&raw.timeouts)?,
            limits: self.limits(&raw.limits)?,
            log_format: raw.proxy.log_format,
            proxy_protocol: raw.proxy.proxy_protocol,
            watch: raw.reload.watch,
            recheck: self.recheck(&raw.reload.recheck)?,
            routes: self.routes(&raw.routes, &mut warnings)?,
            warnings,
        })
    }

    fn listen(&self, raw: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<SocketAddr>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(&raw.span(), "proxy.listen", "needs at least one address"));
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for (i, text) in raw.get_ref().iter().enumerate() {
            let key = format!("proxy.listen[{i}]");
            let addr = self.socket_addr(text, &key, "\"0.0.0.0:8443\" or \"[::]:8443\"")?;
            if addrs.contains(&addr) {
                return Err(self.error(&text.span(), &key, format!("{addr} is listed twice")));
            }
            if let Some(other) = addrs.iter().find(|a| overlap(**a, addr)) {
                return Err(self.error(&text.span(), &key, overlap_message(addr, *other)));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// A listen address (`key`, written like `example`): an IP and a port, and one a TCP
    /// listener can be bound to (see [`bindable`]).
    fn socket_addr(
        &self,
        text: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let error = |message| self.error(&text.span(), key, message);
        let written = text.get_ref();
        if let Some(message) = surrounded_by_space(written) {
            return Err(error(message));
        }
        let addr: SocketAddr = written.parse().map_err(|_| {
            error(format!(
                "{written:?} is not an IP:port address (e.g. {example})"
            ))
        })?;
        bindable(written, addr).map_err(error)?;
        Ok(addr)
    }

    fn admin(
        &self,
        raw: &Spanned<String>,
        proxy: &[SocketAddr],
    ) -> Result<SocketAddr, ConfigError> {
        let addr = self.socket_addr(raw, "admin.listen", "\"127.0.0.1:9090\"")?;
        // Port 0 (any free port, for tests) cannot collide.
        if addr.port() != 0 && proxy.contains(&addr) {
            return Err(self.error(
                &raw.span(),
                "admin.listen",
                format!("{addr} is also in proxy.listen"),
            ));
        }
        if let Some(other) = proxy.iter().find(|a| overlap(**a, addr)) {
            return Err(self.error(&raw.span(), "admin.listen", overlap_message(addr, *other)));
        }
        Ok(addr)
    }

    fn certificates(
        &self,
        raw: &Spanned<Vec<Spanned<RawCertificate>>>,
    ) -> Result<Vec<CertificatePaths>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(
                &raw.span(),
                "tls.certificates",
                "needs at least one certificate",
            ));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for (i, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("tls.certificates[{i}]");
            let c = entry.get_ref();
            for (field, value) in [("cert", &c.cert), ("key", &c.key)] {
                if value.get_ref().trim().is_empty() {
                    return Err(self.error(
                        &value.span(),
                        &format!("{key}.{field}"),
                        "must name a file",
                    ));
                }
            }
            out.push(CertificatePaths {
                cert: base.join(c.cert.get_ref()),
                key: base.join(c.key.get_ref()),
                location: self.locate(&entry.span(), &key),
                cert_location: self.locate(&c.cert.span(), &format!("{key}.cert")),
                key_location: self.locate(&c.key.span(), &format!("{key}.key")),
            });
        }
        Ok(out)
    }

    /// A timeout: longer than zero, at most [`MAX_TIMEOUT`].
    fn timeout(&self, d: &Spanned<HumanDuration>, key: &str) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value.is_zero() || value > MAX_TIMEOUT {
            // Deadlines are computed as now + timeout: a huge one would overflow.
            // Said as read: "5M" is five months to the parser, not five minutes.
            let read = humantime::format_duration(value);
            let hint = match value.is_zero() {
                true => "",
                false => "; `m` is minutes, `M` months",
            };
            Err(self.error(
                &d.span(),
                key,
                format!("must be longer than zero and at most 30 days (read as {read}{hint})"),
            ))
        } else {
            Ok(value)
        }
    }

    /// `reload.recheck`: a timeout, and at least a second (each look reads and hashes every
    /// file; a tiny period would keep a core busy doing it).
    fn recheck(&self, d: &Spanned<HumanDuration>) -> Result<Duration, ConfigError> {
        let value = self.timeout(d, "reload.recheck")?;
        if value < Duration::from_secs(1) {
            return Err(self.error(&d.span(), "reload.recheck", "must be at least 1s"));
        }
        Ok(value)
    }

    fn timeouts(&self, raw: &RawTimeouts) -> Result<Timeouts, ConfigError> {
        let positive =
            |d: &Spanned<HumanDuration>, name: &str| self.timeout(d, &format!("timeouts.{name}"));
        Ok(Timeouts {
            handshake: positive(&raw.handshake, "handshake")?,
            connect: positive(&raw.connect, "connect")?,
            idle: positive(&raw.idle, "idle")?,
            shutdown_grace: positive(&raw.shutdown_grace, "shutdown_grace")?,
        })
    }

    fn limits(&self, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let in_range = |v: &Spanned<i64>, name: &str, range: Range<i64>| {
            let n = *v.get_ref();
            if range.contains(&n) {
                Ok(n as usize)
            } else {
                Err(self.error(
                    &v.span(),
                    &format!("limits.{name}"),
                    format!("{n} is out of range ({}..={})", range.start, range.end - 1),
                ))
            }
        };
        Ok(Limits {
            max_request_header_bytes: in_range(
                &raw.max_request_header_bytes,
                "max_request_header_bytes",
                1024..1_048_577,
            )?,
            max_connections: in_range(&raw.max_connections, "max_connections", 1..10_000_001)?,
            max_connections_per_client: raw
                .max_connections_per_client
                .as_ref()
                .map(|v| in_range(v, "max_connections_per_client", 1..10_000_001))
                .transpose()?,
        })
    }

    /// The routes, checked; `warnings` gets what loads but is surely a mistake.
    fn routes(
        &self,
        raw: &[RawRoute],
        warnings: &mut Vec<ConfigError>,
    ) -> Result<Vec<RouteConfig>, ConfigError> {
        // Spans, not lines: a line is found only for a message.
        let mut first_seen: HashMap<&str, Range<usize>> = HashMap::new();
        // Earlier routes by the requests they match (host, path key): a later one there may
        // never get a request.
        let mut same_place: HashMap<(Option<HostPattern>, String), Vec<usize>> = HashMap::new();
        if raw.is_empty() {
            // Valid (a proxy being set up, routes to come by reload), but it serves nothing.
            let message = "no [[route]]: every request gets 404";
            warnings.push(self.error(&(0..0), "route", message));
        }
        let mut out: Vec<RouteConfig> = Vec::with_capacity(raw.len());
        for (i, route) in raw.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let name = route.name.get_ref().as_str();
            route_name(name).map_err(|m| self.error(&route.name.span(), &key("name"), m))?;
            if let Some(first) = first_seen.insert(name, route.name.span()) {
                let first = self.locate(&first, "").line;
                return Err(self.error(
                    &route.name.span(),
                    &key("name"),
                    format!("duplicate route name {name:?} (first at line {first})"),
                ));
            }
            out.push(self.route(i, name, route)?);
            self.default_ports(i, route, &out[i], warnings);
            let this = &out[i];
            let path = crate::routes::route_key(&this.path);
            // A wildcard ranks with every other wildcard: an earlier one whose suffix covers
            // this one's takes its requests as surely as an earlier one with the same host.
            let covering: Vec<Option<HostPattern>> = match &this.host {
                Some(HostPattern::Wildcard(suffix)) => (suffix.match_indices('.'))
                    .map(|(at, _)| Some(HostPattern::Wildcard(suffix[at..].to_string())))
                    .collect(),
                host => vec![host.clone()],
            };
            let shadow = covering.into_iter().find_map(|host| {
                let earlier = same_place.get(&(host.clone(), path.clone()))?;
                let shadow = earlier.iter().find(|&&e| takes_all_of(&out[e], this))?;
                Some((*shadow, host == this.host))
            });
            if let Some((shadow, same_host)) = shadow {
                // A warning, not an error: equal routes taken in file order is the documented
                // rule, and a config relying on it must keep loading.
                let line = self.locate(&raw[shadow].name.span(), "").line;
                let host = if same_host {
                    "the same host"
                } else {
                    "a wildcard host covering this one's"
                };
                let message = format!(
                    "route {name:?} can never be chosen: route {:?} (line {line}) has {host} and the same path and comes first, and its subprotocol rule fits every request this one's does",
                    out[shadow].name
                );
                warnings.push(self.error(&route.path.span(), &key("path"), message));
            }
            same_place
                .entry((this.host.clone(), path))
                .or_default()
                .push(i);
        }
        Ok(out)
    }

    /// `origins` entries with their scheme's default port, which browsers never send: the
    /// entry allows nobody. A warning, as the config is valid, but surely not what was meant.
    /// (`checked` is `route` as validated: its origins normalised, as they are compared.)
    fn default_ports(
        &self,
        i: usize,
        route: &RawRoute,
        checked: &RouteConfig,
        warnings: &mut Vec<ConfigError>,
    ) {
        let entries = route.origins.iter().flat_map(|list| list.get_ref().iter());
        let normalised = checked.origins.iter().flatten();
        for (j, (entry, text)) in entries.zip(normalised).enumerate() {
            let without = (text
                .strip_suffix(":443")
                .filter(|t| t.starts_with("https://")))
            .or_else(|| {
                text.strip_suffix(":80")
                    .filter(|t| t.starts_with("http://"))
            });
            if let Some(without) = without {
                let message = format!("browsers leave the scheme's default port out of Origin, so {text:?} matches none: write {without:?}");
                warnings.push(self.error(
                    &entry.span(),
                    &format!("route[{i}].origins[{j}]"),
                    message,
                ));
            }
        }
    }

    /// One route's rules checked, `name` already (`route[i]`).
    fn route(&self, i: usize, name: &str, route: &RawRoute) -> Result<RouteConfig, ConfigError> {
        let key = |field: &str| format!("route[{i}].{field}");
        let host = (route.host.as_ref())
            .map(|h| host_pattern(h.get_ref()).map_err(|m| self.error(&h.span(), &key("host"), m)))
            .transpose()?;
        Ok(RouteConfig {
            name: name.to_string(),
            host,
            path: route_path(route.path.get_ref())
                .map_err(|m| self.error(&route.path.span(), &key("path"), m))?,
            subprotocols: self.list(&route.subprotocols, &key("subprotocols"), subprotocol)?,
            origins: self.list(&route.origins, &key("origins"), origin)?,
            backends: self.backends(&route.backends, &key("backends"))?,
            idle: (route.idle.as_ref())
                .map(|d| self.timeout(d, &key("idle")))
                .transpose()?,
        })
    }

    /// An optional allow-list: if present, non-empty, every entry checked (and normalized);
    /// an error points at the entry (`route[0].origins[1]`).
    fn list(
        &self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = raw else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(self.error(
                &list.span(),
                key,
                "an empty list would refuse everything; leave the key out to allow all",
            ));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(j, entry)| {
                check(entry.get_ref())
                    .map_err(|m| self.error(&entry.span(), &format!("{key}[{j}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn backends(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(&raw.span(), key, "needs at least one backend"));
        }
        raw.get_ref()
            .iter()
            .enumerate()
            .map(|(j, b)| {
                backend(b.get_ref()).map_err(|m| self.error(&b.span(), &format!("{key}[{j}]"), m))
            })
            .collect()
    }
}

/// Whether `first`, ranked before `later` with the same host and path, is chosen for every
/// request `later` would take: its subprotocol rule fits wherever `later`'s does.
fn takes_all_of(first: &RouteConfig, later: &RouteConfig) -> bool {
    match (&first.subprotocols, &later.subprotocols) {
        (None, _) => true,
        // `later` without a list also takes requests that offer no subprotocol at all.
        (Some(_), None) => false,
        (Some(first), Some(later)) => later.iter().all(|p| first.contains(p)),
    }
}

/// A route's name: it labels the route's log lines and metric series, so it must read the
/// same there as here. Not empty, no whitespace around it, no control character (a newline
/// would start a forged line in a text log; metrics escape only `\n`, `"` and `\\`), and
/// not `-`, which is what the log and metrics say for a request no route took.
fn route_name(name: &str) -> Result<(), String> {
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
    if name == "-" {
        return Err(
            "\"-\" is what log lines and metrics show for a request no route took: choose another name"
                .to_string(),
        );
    }
    Ok(())
}

fn host_pattern(text: &str) -> Result<HostPattern, String> {
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
    if name.is_empty() || !name.split('.').all(crate::websocket::is_label) {
        return Err(format!(
            "{text:?} is not a host name: write \"chat.example.com\" or \"*.example.com\", without a port"
        ));
    }
    Ok(if wildcard {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn route_path(text: &str) -> Result<String, String> {
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
    if !crate::routes::escapes_sound(text) {
        return Err(format!(
            "{text:?} has a '%' that does not start an escape of two hex digits (write '%25' for a '%'), an escape of NUL, or escapes that are no UTF-8: requests with one are refused, so this route could not be reached"
        ));
    }
    // Requests are matched as `routes::canonical` reads them, with `;parameters` cut and
    // empty segments dropped, so a route holding either, however spelled (`%3B`, `；`),
    // would match more than it says ("/;v1" every path).
    let read = crate::routes::canonical(text);
    if read.contains(';') || read.contains("//") {
        return Err(format!(
            "{text:?} has a ';parameter' or an empty segment (however spelled): requests are matched without them, so write the path without"
        ));
    }
    let lower = text.to_ascii_lowercase();
    if text.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
        return Err(format!(
            "{text:?} has a '\\' or an encoded '/' or '\\': requests are matched with these read as '/', so write '/'"
        ));
    }
    // A path written in a form requests are not matched in (`／`, `ａ`, a decomposed accent):
    // the form to write, unless that is no route path either (`‥` is `..`).
    let decoded = crate::routes::percent_decode(text);
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
    // Requests with a dot segment are refused before routing (routes.rs): no request could
    // ever reach such a route.
    if crate::routes::has_dot_segment(text) {
        return Err(format!(
            "{text:?} has a '.' or '..' segment: requests with one never match a route, so this one could not be reached"
        ));
    }
    if read.split('/').any(|segment| segment.ends_with(['.', ' '])) {
        return Err(format!(
            "{text:?} has a segment ending in '.' or a space: requests are matched without them, as Windows servers read them, so write the path without them"
        ));
    }
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// RFC 9110 token characters, which is what a subprotocol name must be (RFC 6455 §4.1).
fn subprotocol(text: &str) -> Result<String, String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if text.is_empty() || !text.bytes().all(tchar) {
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
fn origin(text: &str) -> Result<String, String> {
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
    let (host, port) = split_port(authority);
    if let Some(port) = port {
        // Browsers write the port as a plain number, without leading zeros.
        if port_number(port).is_none() || port.starts_with('0') {
            return Err(format!(
                "{text:?} has a port that is not a number from 1 to 65535 (without leading zeros)"
            ));
        }
    }
    host_part(host, true)
        .map_err(|why| format!("{text:?} does not name a host as browsers write it: {why}"))?;
    Ok(normalized.to_string())
}

/// A URI scheme (RFC 3986 §3.1): a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && (scheme.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `authority` split at its port's `:`, if it has one (a bracketed IPv6 address's own colons
/// are not one).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => {
            (&authority[..at], Some(&authority[at + 1..]))
        }
        _ => (authority, None),
    }
}

/// A TCP port written as plain digits (no sign, no space), 1 to 65535.
fn port_number(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    (digits && text.len() <= 5)
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)
}

/// What is wrong with `host` as the host of a backend or an origin, if anything: it must be
/// a DNS name (labels of letters, digits, `-` and `_`, as `websocket::is_label` allows; one
/// trailing dot, the fully qualified form), an IPv4 address, or a bracketed IPv6 address,
/// without a scope id. `canonical`: an IP address written only as browsers serialise it
/// (`[::1]`, not `[0::1]`), since an origin is compared as a string.
fn host_part(host: &str, canonical: bool) -> Result<(), String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = (v6.parse())
            .map_err(|_| format!("{v6:?} is not an IPv6 address (without a scope id)"))?;
        if canonical && ip.to_string() != v6 {
            return Err(format!("write the IPv6 address as [{ip}]"));
        }
        return Ok(());
    }
    if !host.is_ascii() {
        return Err("a name outside ASCII is written in its punycode form (\"xn--…\", as `idn2` or a browser's address bar shows it)".to_string());
    }
    if let Some(c) = host.chars().find(|c| c.is_ascii_control()) {
        return Err(format!("it holds the control character {c:?}"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    // A name ending in a number is an IPv4 address to resolvers (`127.1`, `0x7f.1`, `010.1.1.1`
    // read by inet_aton as 127.0.0.1, 127.0.0.1, 8.1.1.1), so it must be one, written plainly.
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return match host.parse::<std::net::Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "{host:?} ends in a number but is not an IPv4 address written as four decimal numbers 0-255 (\"10.0.0.7\")"
            )),
        };
    }
    if name.is_empty() || !name.split('.').all(crate::websocket::is_label) {
        return Err(format!(
            "{host:?} is not a host name (dot-separated labels of letters, digits, '-' and '_', none empty, none starting or ending with '-'), an IPv4 address or a bracketed IPv6 address"
        ));
    }
    Ok(())
}

/// A backend, `host:port` as `resolve::resolve` hands it to the system resolver (see
/// [`host_part`] for the host; no userinfo, no `*`, no list, no `%` escape: none of them is a
/// name a resolver could answer for). The port is plain digits, 1 to 65535.
fn backend(text: &str) -> Result<String, String> {
    let example = "(e.g. \"10.0.0.7:9001\", \"app:9001\", \"[::1]:9001\")";
    if let Some(message) = surrounded_by_space(text) {
        return Err(message);
    }
    let (host, port) = split_port(text);
    let Some(port) = port else {
        return Err(format!("{text:?} is not host:port {example}"));
    };
    if port_number(port).is_none() {
        return Err(format!(
            "{text:?} has a port that is not a number from 1 to 65535 {example}"
        ));
    }
    host_part(host, false).map_err(|why| format!("{text:?} is not host:port: {why}"))?;
    Ok(text.to_string())
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
fn bindable(written: &str, addr: SocketAddr) -> Result<(), String> {
    let ip = addr.ip();
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().to_ipv4_mapped().is_some() {
            let plain = SocketAddr::new(ip.to_canonical(), addr.port());
            return Err(format!(
                "{written:?} is an IPv4 address in IPv6 form: write it as {plain}"
            ));
        }
        // fe80::/10 (`Ipv6Addr::is_unicast_link_local` is newer than the supported Rust).
        let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
        if v6.scope_id() != 0 && !link_local {
            let plain = SocketAddr::new(ip, addr.port());
            return Err(format!(
                "{written:?} has a scope id, which only a link-local address (fe80::/10) uses: write it as {plain}"
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
fn surrounded_by_space(written: &str) -> Option<String> {
    let trimmed = written.trim();
    (trimmed != written).then(|| format!("{written:?} has whitespace around it: write {trimmed:?}"))
}

/// Two different addresses that cannot both be bound: the same port (not 0) in the same
/// family, one of them the unspecified address, which takes the port on every address.
/// (`[::]` is bound IPv6-only, so it does not collide with `0.0.0.0`.)
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a != b
        && a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn overlap_message(addr: SocketAddr, other: SocketAddr) -> String {
    format!("{addr} overlaps {other}: an unspecified address takes the port on every address")
}

#[cfg(test)]
mod tests {
    use super::LineIndex;

    /// The index finds what `error::locate` finds by reading the text, at every offset
    /// (inside a character, past the end, on a newline, in a CRLF file).
    #[test]
    fn the_line_index_locates_as_reading_the_text_does() {
        let src = "a = 1\r\n\nname = \"é✓\" # ü\n\n[x]\ny = \"z\"";
        let lines = LineIndex::new(src);
        for start in 0..src.len() + 3 {
            let span = start..start + 1;
            assert_eq!(
                lines.locate(src, &span, "k"),
                super::super::error::locate(src, &span, "k"),
                "at {start}"
            );
        }
        // Out of order too: backwards, and jumping between lines.
        for start in (0..src.len() + 3).rev().chain([30, 3, 31, 9, 2]) {
            let span = start..start;
            assert_eq!(
                lines.locate(src, &span, "k"),
                super::super::error::locate(src, &span, "k"),
                "at {start}, backwards"
            );
        }
        assert_eq!(LineIndex::new("").locate("", &(0..0), "k").line, 1);
    }
}
