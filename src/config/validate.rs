//! The rules a config must keep beyond its TOML types: addresses that can be bound side by
//! side, certificate files, sane routes (unique names, reachable paths), bounds on timeouts
//! and limits, and the warnings for what loads but is surely a mistake; each value's own
//! syntax is `values`' to check. Turns [`RawConfig`] into [`Config`], every error located.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::Location;
use super::locate::LineIndex;
use super::raw::{
    HumanDuration, RawBackendTls, RawCertificate, RawConfig, RawLimits, RawRoute, RawTimeouts,
    RawTls,
};
use super::values::{
    backend, bindable, certificate_name, host_pattern, origin, overlap, overlap_message,
    route_name, route_path, server_name, split_port, subprotocol, surrounded_by_space,
};
use super::{
    BackendTlsConfig, Balance, CertificatePaths, ClientAuth, ClientAuthConfig, Config, ConfigError,
    HostPattern, Limits, RouteConfig, Timeouts,
};

/// The longest accepted timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest: the runtime's timers tick in milliseconds, so anything less ("1ns", "500us")
/// would be a millisecond anyway, and is a slip of the unit.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The bounds of `proxy.coalesce` but zero. Shorter, a pause costs about what it saves (a
/// sleep is a few microseconds of system work): "5ns" is a slip of the unit. Longer, each
/// message relayed under load waits out more for little more batching, and the thread's
/// other work (new connections, handshakes) with it.
const COALESCE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(10)..=Duration::from_micros(100);

/// The error written first in the file among those kept: the one to report when a config
/// has several, so that an operator fixing them top-down meets them in that order.
#[derive(Default)]
struct Earliest(Option<ConfigError>);

impl Earliest {
    /// `result`'s value, or none, its error kept if it comes before the one kept so far.
    fn keep<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if self.0.as_ref().is_none_or(|kept| e.written_before(kept)) {
                    self.0 = Some(e);
                }
                None
            }
        }
    }

    /// The error kept: one is, wherever a value was missing.
    fn error(self, path: &Path) -> ConfigError {
        (self.0).unwrap_or_else(|| ConfigError::new(path, "invalid config"))
    }
}

/// Every value of `results`, or the error among them written first (see [`Earliest`]).
fn all_or_earliest<T, const N: usize>(
    path: &Path,
    results: [Result<T, ConfigError>; N],
) -> Result<[T; N], ConfigError> {
    let mut first = Earliest::default();
    let values: Vec<T> = results.into_iter().filter_map(|r| first.keep(r)).collect();
    values.try_into().map_err(|_| first.error(path))
}

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

    /// A file named at `key`, resolved against the config file's folder: a name, without
    /// whitespace around it (a stray space in `"tls.crt "` would read as a file not found,
    /// next to one `ls` shows).
    fn file(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let written = value.get_ref();
        if written.trim().is_empty() {
            return Err(self.error(&value.span(), key, "must name a file"));
        }
        if let Some(message) = surrounded_by_space(written) {
            return Err(self.error(&value.span(), key, message));
        }
        Ok(self.path.parent().unwrap_or(Path::new(".")).join(written))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // Every part is checked, and the mistake reported is the one written first: fixed
        // top-down, a file with several shows them in the order they are read.
        let mut first = Earliest::default();
        let listen = first.keep(self.listen(&raw.proxy.listen));
        // Its own rules whatever `proxy.listen` is; beside it only once that is valid.
        let admin = match &raw.admin {
            Some(admin) => first.keep(
                self.admin(&admin.listen, listen.as_deref().unwrap_or_default())
                    .map(Some),
            ),
            None => Some(None),
        };
        let certificates = first.keep(self.certificates(&raw.tls.certificates));
        let client_auth = first.keep(self.client_auth(&raw.tls, &raw.routes));
        let timeouts = first.keep(self.timeouts(&raw.timeouts));
        let limits = first.keep(self.limits(&raw.limits));
        let recheck = first.keep(self.recheck(&raw.reload.recheck));
        let coalesce = first.keep(self.coalesce(&raw.proxy.coalesce));
        let mut warnings = Vec::new();
        let routes = first.keep(self.routes(&raw.routes, &mut warnings));
        let (
            Some(listen),
            Some(admin),
            Some(certificates),
            Some(client_auth),
            Some(timeouts),
            Some(limits),
            Some(recheck),
            Some(coalesce),
            Some(routes),
        ) = (
            listen,
            admin,
            certificates,
            client_auth,
            timeouts,
            limits,
            recheck,
            coalesce,
            routes,
        )
        else {
            return Err(first.error(self.path));
        };
        let listen_locations = (raw.proxy.listen.get_ref().iter().enumerate())
            .map(|(i, text)| self.locate(&text.span(), &format!("proxy.listen[{i}]")))
            .collect();
        let admin_location =
            (raw.admin.as_ref()).map(|admin| self.locate(&admin.listen.span(), "admin.listen"));
        let mut config = Config {
            path: self.path.to_path_buf(),
            admin,
            listen,
            listen_locations,
            admin_location,
            certificates,
            tls_min_version: raw.tls.min_version,
            session_resumption: raw.tls.session_resumption,
            client_auth,
            timeouts,
            limits,
            log_format: raw.proxy.log_format,
            proxy_protocol: raw.proxy.proxy_protocol,
            reuse_port: raw.proxy.reuse_port,
            coalesce,
            watch: raw.reload.watch,
            recheck,
            routes,
            warnings,
            // The file's, byte order mark included, is set by `Config::from_toml_str`.
            source_hash: 0,
        };
        self.unguarded_balance(&raw.routes, &mut config);
        Ok(config)
    }

    /// Least-connections with putting aside off: a backend that refuses every connection
    /// never has one open, so it would be every request's first try. A warning: the config
    /// works, at a cost to every request while a backend is down.
    fn unguarded_balance(&self, raw: &[RawRoute], config: &mut Config) {
        if !config.timeouts.backend_cooldown.is_zero() {
            return;
        }
        for (i, (route, checked)) in raw.iter().zip(&config.routes).enumerate() {
            // A name may have several addresses (a headless Service), to pick among alike.
            let name = |b: &String| b.parse::<std::net::SocketAddr>().is_err();
            let several = (checked.backends.iter()).any(|b| Some(b) != checked.backends.first())
                || checked.backends.iter().any(name);
            let Some(balance) = route.balance.as_ref().filter(|_| several) else {
                continue;
            };
            if *balance.get_ref() == Balance::LeastConnections {
                let message = "with timeouts.backend_cooldown = \"0s\", a backend that refuses every connection never has one open, and would be every request's first try: keep the cool-down on with least_connections";
                let key = format!("route[{i}].balance");
                config
                    .warnings
                    .push(self.error(&balance.span(), &key, message));
            }
        }
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
        // Not for an IPv6 address without brackets ("::1"): its last colon is no port's.
        let unbracketed_v6 = !written.starts_with('[') && written.matches(':').count() > 1;
        if let (host, Some(port)) = super::values::split_port(written) {
            let problem = super::values::port_problem(written, host, port, 0);
            if let Some(problem) = problem.filter(|_| !unbracketed_v6) {
                return Err(error(problem));
            }
        }
        let addr: SocketAddr = written.parse().map_err(|_| {
            // `[fe80::1%eth0]:443`: a scope id is read as a number only.
            let scope = match written.contains('%') {
                true => {
                    "; a scope id is the interface's number (`ip link` lists them), not its name"
                }
                false => "",
            };
            error(format!(
                "{written:?} is not an IP:port address (e.g. {example}){scope}"
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
        let mut out = Vec::new();
        for (i, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("tls.certificates[{i}]");
            let c = entry.get_ref();
            out.push(CertificatePaths {
                cert: self.file(&c.cert, &format!("{key}.cert"))?,
                key: self.file(&c.key, &format!("{key}.key"))?,
                location: self.locate(&entry.span(), &key),
                cert_location: self.locate(&c.cert.span(), &format!("{key}.cert")),
                key_location: self.locate(&c.key.span(), &format!("{key}.key")),
            });
        }
        Ok(out)
    }

    /// `tls.client_ca`, `tls.client_auth` and `tls.client_crl`, the last two and a route's
    /// `require_client_certificate` only with the first.
    fn client_auth(
        &self,
        tls: &RawTls,
        routes: &[RawRoute],
    ) -> Result<Option<ClientAuthConfig>, ConfigError> {
        let Some(ca) = &tls.client_ca else {
            // Every setting that needs it, the one written first reported.
            let needs = "needs tls.client_ca, the CA file client certificates are checked against";
            let mut first = Earliest::default();
            let mut refuse = |span: Range<usize>, key: &str| {
                first.keep::<()>(Err(self.error(&span, key, needs)));
            };
            if let Some(mode) = &tls.client_auth {
                refuse(mode.span(), "tls.client_auth");
            }
            if let Some(crl) = &tls.client_crl {
                refuse(crl.span(), "tls.client_crl");
            }
            if let Some(recheck) = tls.recheck_tunnels.as_ref().filter(|r| *r.get_ref()) {
                refuse(recheck.span(), "tls.recheck_tunnels");
            }
            for (i, route) in routes.iter().enumerate() {
                let flag = route.require_client_certificate.as_ref();
                if let Some(flag) = flag.filter(|flag| *flag.get_ref()) {
                    refuse(
                        flag.span(),
                        &format!("route[{i}].require_client_certificate"),
                    );
                }
            }
            return match first.0 {
                Some(error) => Err(error),
                None => Ok(None),
            };
        };
        let ca_path = self.file(ca, "tls.client_ca")?;
        let crl = match &tls.client_crl {
            Some(crl) => Some((
                self.file(crl, "tls.client_crl")?,
                self.locate(&crl.span(), "tls.client_crl"),
            )),
            None => None,
        };
        Ok(Some(ClientAuthConfig {
            ca: ca_path,
            ca_location: self.locate(&ca.span(), "tls.client_ca"),
            mode: tls
                .client_auth
                .as_ref()
                .map_or_else(ClientAuth::default, |m| *m.get_ref()),
            crl,
            recheck_tunnels: tls.recheck_tunnels.as_ref().is_some_and(|r| *r.get_ref()),
        }))
    }

    /// A timeout: at least [`MIN_TIMEOUT`], at most [`MAX_TIMEOUT`].
    fn timeout(&self, d: &Spanned<HumanDuration>, key: &str) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value < MIN_TIMEOUT || value > MAX_TIMEOUT {
            // Deadlines are computed as now + timeout: a huge one would overflow.
            let read = self.read_as(d);
            let message = format!("must be at least 1ms and at most 30 days ({read})");
            Err(self.error(&d.span(), key, message))
        } else {
            Ok(value)
        }
    }

    /// How a refused duration was read, said as read: "5M" is five months to the parser, not
    /// five minutes.
    fn read_as(&self, d: &Spanned<HumanDuration>) -> String {
        let hint = match self.src.get(d.span()).is_some_and(|t| t.contains('M')) {
            true => "; `M` is months, minutes are `m`",
            false => "",
        };
        format!("read as {}{hint}", as_read(d.get_ref().0))
    }

    /// `reload.recheck`: a timeout, and at least a second (each look reads and hashes every
    /// file; a tiny period would keep a core busy doing it).
    fn recheck(&self, d: &Spanned<HumanDuration>) -> Result<Duration, ConfigError> {
        // Both bounds said, whichever was crossed: "0s" is told the real floor, not "longer
        // than zero".
        let value = d.get_ref().0;
        if value < Duration::from_secs(1) || value > MAX_TIMEOUT {
            let message = format!(
                "must be at least 1s and at most 30 days ({})",
                self.read_as(d)
            );
            return Err(self.error(&d.span(), "reload.recheck", message));
        }
        Ok(value)
    }

    /// `proxy.coalesce`: a pause of a busy thread, which every message relayed meanwhile may
    /// wait for (see `COALESCE`); zero turns it off.
    fn coalesce(&self, d: &Spanned<HumanDuration>) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if !value.is_zero() && !COALESCE.contains(&value) {
            let message = format!(
                "must be from 10us to 100us, or 0s to never wait ({})",
                self.read_as(d)
            );
            return Err(self.error(&d.span(), "proxy.coalesce", message));
        }
        Ok(value)
    }

    /// `timeouts.backend_cooldown` and `timeouts.attempt_delay`: as a timeout, but zero turns
    /// what they time off (`off`: what zero means, for the message).
    fn zero_or_timeout(
        &self,
        d: &Spanned<HumanDuration>,
        key: &str,
        off: &str,
    ) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value > MAX_TIMEOUT || (!value.is_zero() && value < MIN_TIMEOUT) {
            let read = self.read_as(d);
            let message = format!("must be from 1ms to 30 days, or 0s {off} ({read})");
            return Err(self.error(&d.span(), key, message));
        }
        Ok(value)
    }

    fn timeouts(&self, raw: &RawTimeouts) -> Result<Timeouts, ConfigError> {
        let positive =
            |d: &Spanned<HumanDuration>, name: &str| self.timeout(d, &format!("timeouts.{name}"));
        let [handshake, connect, idle, shutdown_grace, backend_cooldown, attempt_delay] =
            all_or_earliest(
                self.path,
                [
                    positive(&raw.handshake, "handshake"),
                    positive(&raw.connect, "connect"),
                    positive(&raw.idle, "idle"),
                    positive(&raw.shutdown_grace, "shutdown_grace"),
                    self.zero_or_timeout(
                        &raw.backend_cooldown,
                        "timeouts.backend_cooldown",
                        "to never put a backend aside",
                    ),
                    self.zero_or_timeout(
                        &raw.attempt_delay,
                        "timeouts.attempt_delay",
                        "to dial one backend address at a time",
                    ),
                ],
            )?;
        Ok(Timeouts {
            handshake,
            connect,
            idle,
            shutdown_grace,
            backend_cooldown,
            attempt_delay,
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
                    format!(
                        "{n} is out of range: must be from {} to {}",
                        range.start,
                        range.end - 1
                    ),
                ))
            }
        };
        let mut first = Earliest::default();
        let header_bytes = in_range(
            &raw.max_request_header_bytes,
            "max_request_header_bytes",
            1024..1_048_577,
        );
        let header_bytes = first.keep(header_bytes);
        let connections = first.keep(in_range(
            &raw.max_connections,
            "max_connections",
            1..10_000_001,
        ));
        let per_client = (raw.max_connections_per_client.as_ref())
            .map(|v| in_range(v, "max_connections_per_client", 1..10_000_001));
        let per_client = first.keep(per_client.transpose());
        let (Some(max_request_header_bytes), Some(max_connections), Some(per_client)) =
            (header_bytes, connections, per_client)
        else {
            return Err(first.error(self.path));
        };
        Ok(Limits {
            max_request_header_bytes,
            max_connections,
            max_connections_per_client: per_client,
        })
    }

    /// The routes, checked; `warnings` gets what loads but is surely a mistake.
    fn routes(
        &self,
        raw: &[RawRoute],
        warnings: &mut Vec<ConfigError>,
    ) -> Result<Vec<Arc<RouteConfig>>, ConfigError> {
        // Spans, not lines: a line is found only for a message.
        let mut first_seen: HashMap<&str, Range<usize>> = HashMap::new();
        // Earlier routes by the requests they match (host, path key): a later one there may
        // never get a request.
        let mut same_place: HashMap<(Option<HostPattern>, String), Place> = HashMap::new();
        if raw.is_empty() {
            // Valid (a proxy being set up, routes to come by reload), but it serves nothing.
            let message = "no [[route]]: every request gets 404";
            warnings.push(self.error(&(0..0), "route", message));
        }
        let mut out: Vec<Arc<RouteConfig>> = Vec::with_capacity(raw.len());
        for (i, route) in raw.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let name = route.name.get_ref().as_str();
            let named = route_name(name)
                .map_err(|m| self.error(&route.name.span(), &key("name"), m))
                .and_then(|()| match first_seen.insert(name, route.name.span()) {
                    Some(first) => Err(self.error(
                        &route.name.span(),
                        &key("name"),
                        format!(
                            "duplicate route name {name:?} (first at line {})",
                            self.locate(&first, "").line
                        ),
                    )),
                    None => Ok(()),
                });
            // The name need not be the route's first key: the mistake written first wins.
            let mut first = Earliest::default();
            let named = first.keep(named);
            let (Some(()), Some(checked)) = (named, first.keep(self.route(i, name, route))) else {
                return Err(first.error(self.path));
            };
            out.push(Arc::new(checked));
            self.default_ports(i, route, &out[i], warnings);
            self.listed_twice(i, route, &out[i], warnings);
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
            let places: Vec<(&Place, bool)> = (covering.into_iter())
                .filter_map(|host| {
                    let place = same_place.get(&(host.clone(), path.clone()))?;
                    Some((place, host == this.host))
                })
                .collect();
            let shadow = (places.iter())
                .find_map(|(earlier, same_host)| Some((earlier.shadow(&out, this)?, *same_host)));
            if shadow.is_none() {
                if let Some(earlier) = shadowed_together(&places, this) {
                    let names: Vec<String> = earlier
                        .iter()
                        .map(|&e| format!("{:?}", out[e].name))
                        .collect();
                    let message = format!(
                        "route {name:?} can never be chosen: each of its subprotocols is allowed by an earlier route with its host (or a wildcard covering it) and the same path, which comes first for every request offering it (routes {})",
                        names.join(", ")
                    );
                    warnings.push(self.error(&route.path.span(), &key("path"), message));
                }
            }
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
                .add(i, this);
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

    /// An `origins` or `subprotocols` entry the same as an earlier one (as compared: origins
    /// normalised, subprotocols exactly): harmless, but a slip, often of an entry meant to
    /// be another one (`v1` twice where `v2` was meant).
    fn listed_twice(
        &self,
        i: usize,
        route: &RawRoute,
        checked: &RouteConfig,
        warnings: &mut Vec<ConfigError>,
    ) {
        let lists = [
            ("origins", &route.origins, &checked.origins),
            ("subprotocols", &route.subprotocols, &checked.subprotocols),
        ];
        for (field, raw, compared) in lists {
            let (Some(raw), Some(compared)) = (raw, compared) else {
                continue;
            };
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (j, (entry, text)) in raw.get_ref().iter().zip(compared).enumerate() {
                if let Some(&first) = seen.get(text.as_str()) {
                    let message = format!("{text:?} is listed twice (first as route[{i}].{field}[{first}]): one entry is enough, or another was meant");
                    let key = format!("route[{i}].{field}[{j}]");
                    warnings.push(self.error(&entry.span(), &key, message));
                } else {
                    seen.insert(text, j);
                }
            }
        }
    }

    /// One route's rules checked, `name` already (`route[i]`). Of several mistakes, the one
    /// written first is reported, whatever order its keys are in.
    fn route(&self, i: usize, name: &str, route: &RawRoute) -> Result<RouteConfig, ConfigError> {
        let key = |field: &str| format!("route[{i}].{field}");
        let mut first = Earliest::default();
        let host = first.keep(
            (route.host.as_ref())
                .map(|h| {
                    host_pattern(h.get_ref()).map_err(|m| self.error(&h.span(), &key("host"), m))
                })
                .transpose(),
        );
        let path = first.keep(
            route_path(route.path.get_ref())
                .map_err(|m| self.error(&route.path.span(), &key("path"), m)),
        );
        let subprotocols =
            first.keep(self.list(&route.subprotocols, Field(i, "subprotocols"), subprotocol));
        let origins = first.keep(self.list(&route.origins, Field(i, "origins"), origin));
        let backends = first.keep(self.backends(&route.backends, Field(i, "backends")));
        let idle = first.keep(
            (route.idle.as_ref())
                .map(|d| self.timeout(d, &key("idle")))
                .transpose(),
        );
        let backend_tls = first.keep(
            (route.backend_tls.as_ref())
                .map(|tls| self.backend_tls(tls, &key("backend_tls")))
                .transpose(),
        );
        let (
            Some(host),
            Some(path),
            Some(subprotocols),
            Some(origins),
            Some(backends),
            Some(idle),
            Some(backend_tls),
        ) = (
            host,
            path,
            subprotocols,
            origins,
            backends,
            idle,
            backend_tls,
        )
        else {
            return Err(first.error(self.path));
        };
        let config = RouteConfig {
            name: name.to_string(),
            host,
            host_location: (route.host.as_ref()).map(|h| self.locate(&h.span(), &key("host"))),
            path,
            subprotocols,
            origins,
            backends,
            balance: (route.balance.as_ref()).map_or_else(Balance::default, |b| *b.get_ref()),
            idle,
            backend_tls,
            require_client_certificate: (route.require_client_certificate.as_ref())
                .is_some_and(|flag| *flag.get_ref()),
        };
        self.named_for_tls(i, route, config)
    }

    /// A route with `backend_tls` but no `server_name` checks each backend's certificate for
    /// the backend's own host: one that no certificate can name is an error at its entry.
    fn named_for_tls(
        &self,
        i: usize,
        raw: &RawRoute,
        config: RouteConfig,
    ) -> Result<RouteConfig, ConfigError> {
        if (config.backend_tls.as_ref()).is_none_or(|tls| tls.server_name.is_some()) {
            return Ok(config);
        }
        for (j, entry) in raw.backends.get_ref().iter().enumerate() {
            let (host, _) = split_port(entry.get_ref());
            certificate_name(host).map(drop).map_err(|m| {
                let key = format!("route[{i}].backends[{j}]");
                self.error(
                    &entry.span(),
                    &key,
                    format!("{m}: give the route's backend_tls a server_name"),
                )
            })?;
        }
        Ok(config)
    }

    /// A route's `backend_tls`: the CA file named (relative to the config's folder), and a
    /// server name, if given, that a certificate can be valid for.
    fn backend_tls(
        &self,
        spanned: &Spanned<RawBackendTls>,
        key: &str,
    ) -> Result<BackendTlsConfig, ConfigError> {
        let raw = spanned.get_ref();
        let ca_key = format!("{key}.ca");
        let ca = self.file(&raw.ca, &ca_key)?;
        let server_name = (raw.server_name.as_ref())
            .map(|name| {
                server_name(name.get_ref())
                    .map_err(|m| self.error(&name.span(), &format!("{key}.server_name"), m))
            })
            .transpose()?;
        Ok(BackendTlsConfig {
            ca,
            server_name,
            ca_location: self.locate(&raw.ca.span(), &ca_key),
            client: self.client_certificate(spanned, key)?,
        })
    }

    /// A `backend_tls`'s `cert` and `key`: both, each naming a file, or neither.
    fn client_certificate(
        &self,
        spanned: &Spanned<RawBackendTls>,
        key: &str,
    ) -> Result<Option<CertificatePaths>, ConfigError> {
        let raw = spanned.get_ref();
        let alone = |given: &Spanned<String>, has: &str, lacks: &str| {
            let message = format!(
                "a client certificate needs both `cert` and `key`: add `{lacks}` beside `{has}`"
            );
            Err(self.error(&given.span(), &format!("{key}.{has}"), message))
        };
        let (cert, private) = match (&raw.cert, &raw.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(private)) => (cert, private),
            (Some(cert), None) => return alone(cert, "cert", "key"),
            (None, Some(private)) => return alone(private, "key", "cert"),
        };
        Ok(Some(CertificatePaths {
            cert: self.file(cert, &format!("{key}.cert"))?,
            key: self.file(private, &format!("{key}.key"))?,
            // Where a pair's mistakes are reported, as a served entry's are at the entry.
            location: self.locate(&spanned.span(), key),
            cert_location: self.locate(&cert.span(), &format!("{key}.cert")),
            key_location: self.locate(&private.span(), &format!("{key}.key")),
        }))
    }

    /// An optional allow-list: if present, non-empty, every entry checked (and normalized);
    /// an error points at the entry (`route[0].origins[1]`).
    fn list(
        &self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
        key: Field,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = raw else { return Ok(None) };
        if list.get_ref().is_empty() {
            return Err(self.error(
                &list.span(),
                &key.to_string(),
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
        key: Field,
    ) -> Result<Vec<String>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.error(&raw.span(), &key.to_string(), "needs at least one backend"));
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

/// A list of route `.0`'s, named `.1`: spelled out (`route[3].origins`) only for a message,
/// not for each of thousands of routes that have none.
#[derive(Clone, Copy)]
struct Field(usize, &'static str);

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route[{}].{}", self.0, self.1)
    }
}

/// The earlier routes that, together, take every request `later` would, when no one of them
/// does: one allowing each of its subprotocols, at one of the `places` ranking with it (its
/// host's, or a covering wildcard's, at its path). A request offering any of them goes to the
/// first of those that allows one. In file order, each once.
fn shadowed_together(places: &[(&Place, bool)], later: &RouteConfig) -> Option<Vec<usize>> {
    let list = later.subprotocols.as_ref()?;
    let first_allowing = |protocol: &String| {
        (places.iter())
            .filter_map(|(place, _)| place.by_protocol.get(protocol)?.first().copied())
            .min()
    };
    let mut earlier: Vec<usize> = list.iter().map(first_allowing).collect::<Option<_>>()?;
    earlier.sort_unstable();
    earlier.dedup();
    Some(earlier)
}

/// The earlier routes at one place (host, path key), indexed for [`Place::shadow`].
#[derive(Default)]
struct Place {
    /// The first route without a subprotocol list: it takes every later request here.
    open: Option<usize>,
    /// The routes with a list, by each protocol on it, in file order.
    by_protocol: HashMap<String, Vec<usize>>,
}

impl Place {
    fn add(&mut self, i: usize, route: &RouteConfig) {
        match &route.subprotocols {
            None => {
                self.open.get_or_insert(i);
            }
            Some(list) => {
                for protocol in list {
                    self.by_protocol
                        .entry(protocol.clone())
                        .or_default()
                        .push(i);
                }
            }
        }
    }

    /// The first earlier route here that takes every request `later` would (see
    /// [`takes_all_of`]). A route whose list holds all of `later`'s protocols holds its
    /// rarest one: only those are tried, not every earlier route, so thousands of routes at
    /// one place, each with protocols of its own, are checked in linear time.
    fn shadow(&self, routes: &[Arc<RouteConfig>], later: &RouteConfig) -> Option<usize> {
        let listed = later.subprotocols.as_ref().and_then(|list| {
            let holders = |p: &String| self.by_protocol.get(p);
            let rarest = list
                .iter()
                .map(holders)
                .min_by_key(|h| h.map_or(0, Vec::len))??;
            (rarest.iter().copied()).find(|&e| takes_all_of(&routes[e], later))
        });
        match (self.open, listed) {
            (Some(open), Some(listed)) => Some(open.min(listed)),
            (open, listed) => open.or(listed),
        }
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

/// A refused duration in the unit an operator thinks in: days, to a tenth, once past the
/// 30-day bound by that much (humantime would say "1month 13h 26m 24s" for 31 days);
/// humantime's own exact form otherwise.
fn as_read(value: Duration) -> String {
    const DAY: f64 = 86_400.0;
    let days = value.as_secs_f64() / DAY;
    let rounded = (days * 10.0).round() / 10.0;
    // Rounded only where that cannot hide why a value was refused: "30d 1s" is over the
    // bound, and "30 days" would say it is not.
    match days >= 1.0 && rounded > 30.0 {
        true => format!("{rounded} days"),
        false => humantime::format_duration(value).to_string(),
    }
}
