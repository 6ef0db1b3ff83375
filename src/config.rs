//! The TOML config file: `RawConfig` (serde, unknown keys rejected) is validated once into a
//! typed [`Config`]. Every error names the file, the line and column, and the key, because an
//! operator editing by hand (or a reload log line) needs to know exactly where to look.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file as given.
    pub path: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub certificates: Vec<CertificatePaths>,
    pub tls_min_version: TlsVersion,
    /// Clients may resume TLS sessions (tickets; session IDs for TLS 1.2).
    pub session_resumption: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub log_format: LogFormat,
    /// Every connection starts with a PROXY protocol header naming the real client.
    pub proxy_protocol: bool,
    /// How changes to the config's files are noticed.
    pub watch: WatchMode,
    /// The plain-HTTP admin listener (metrics, health), if configured.
    pub admin: Option<SocketAddr>,
    /// Where each `listen` address and the admin one are written, for bind errors.
    listen_locations: Vec<Location>,
    admin_location: Option<Location>,
    /// In file order.
    pub routes: Vec<RouteConfig>,
    /// What loads but is surely a mistake (a route that can never be chosen), each pointing
    /// at its place like an error: logged at every load, printed by `wsgate check`.
    pub warnings: Vec<ConfigError>,
}

/// One certificate chain and its key, paths resolved against the config's folder.
#[derive(Clone, Debug)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the entry is written, so certificate errors can point at it: the entry, its
    /// `cert` value and its `key` value.
    pub location: Location,
    pub cert_location: Location,
    pub key_location: Location,
}

/// A place in the config file: 1-based line and column, and the key written there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub key: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub handshake: Duration,
    pub connect: Duration,
    pub idle: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); `None` = no such limit.
    pub max_connections_per_client: Option<usize>,
}

/// The oldest TLS version offered to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How changes to the config's files are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// File system events (inotify), with a check every second for a folder that cannot be
    /// watched.
    #[default]
    Events,
    /// A check every second, for file systems that deliver no events (NFS, SMB, some FUSE
    /// mounts, bind mounts edited from outside a VM).
    Poll,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<HostPattern>,
    /// Starts with '/', no trailing '/' except the root.
    pub path: String,
    pub subprotocols: Option<Vec<String>>,
    /// ASCII-lowercased, without a trailing '/'.
    pub origins: Option<Vec<String>>,
    /// `host:port`, as written.
    pub backends: Vec<String>,
    /// This route's tunnels' idle timeout, instead of `timeouts.idle`.
    pub idle: Option<Duration>,
}

/// serde names Rust types in its messages ("expected i64"); an operator reads "an integer".
fn plain_types(message: &str) -> String {
    ["i64", "u64", "u32", "u16", "usize"]
        .iter()
        .fold(message.to_string(), |m, t| {
            m.replace(&format!("expected {t}"), "expected an integer")
        })
}

/// A route's host rule, lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: ".example.com" for "*.example.com".
    Wildcard(String),
}

/// A config that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                l.line,
                l.column,
                l.key,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl ConfigError {
    pub fn at(file: &Path, location: &Location, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            location: Some(location.clone()),
            message: message.into(),
        }
    }
}

// ---- the file as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: RawProxy,
    tls: RawTls,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    admin: Option<RawAdmin>,
    #[serde(default)]
    reload: RawReload,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default)]
    watch: WatchMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Spanned<Vec<Spanned<RawCertificate>>>,
    #[serde(default)]
    min_version: TlsVersion,
    #[serde(default = "defaults::session_resumption")]
    session_resumption: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default = "defaults::handshake")]
    handshake: Spanned<HumanDuration>,
    #[serde(default = "defaults::connect")]
    connect: Spanned<HumanDuration>,
    #[serde(default = "defaults::idle")]
    idle: Spanned<HumanDuration>,
    #[serde(default = "defaults::shutdown_grace")]
    shutdown_grace: Spanned<HumanDuration>,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            handshake: defaults::handshake(),
            connect: defaults::connect(),
            idle: defaults::idle(),
            shutdown_grace: defaults::shutdown_grace(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "defaults::max_request_header_bytes")]
    max_request_header_bytes: Spanned<i64>,
    #[serde(default = "defaults::max_connections")]
    max_connections: Spanned<i64>,
    max_connections_per_client: Option<Spanned<i64>>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_request_header_bytes: defaults::max_request_header_bytes(),
            max_connections: defaults::max_connections(),
            max_connections_per_client: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    host: Option<Spanned<String>>,
    path: Spanned<String>,
    subprotocols: Option<Spanned<Vec<Spanned<String>>>>,
    origins: Option<Spanned<Vec<Spanned<String>>>>,
    backends: Spanned<Vec<Spanned<String>>>,
    idle: Option<Spanned<HumanDuration>>,
}

/// Defaults, documented in docs/configuration.md; keep the two in step.
mod defaults {
    use super::HumanDuration;
    use std::time::Duration;
    use toml::Spanned;

    fn secs(s: u64) -> Spanned<HumanDuration> {
        Spanned::new(0..0, HumanDuration(Duration::from_secs(s)))
    }
    pub fn handshake() -> Spanned<HumanDuration> {
        secs(10)
    }
    pub fn connect() -> Spanned<HumanDuration> {
        secs(5)
    }
    pub fn idle() -> Spanned<HumanDuration> {
        secs(300)
    }
    pub fn shutdown_grace() -> Spanned<HumanDuration> {
        secs(30)
    }
    pub fn max_request_header_bytes() -> Spanned<i64> {
        Spanned::new(0..0, 16384)
    }
    pub fn max_connections() -> Spanned<i64> {
        Spanned::new(0..0, 10000)
    }
    pub fn session_resumption() -> bool {
        true
    }
}

/// A duration written like "500ms", "10s" or "5m".
#[derive(Clone, Copy, Debug)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: write it like \"500ms\", \"10s\" or \"5m\""
                ))
            })
    }
}

/// The longest accepted timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

// ---- loading and validation ---------------------------------------------------------------

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            location: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Config::from_toml_str(&src, path)
    }

    /// Parses and validates `src`; `path` names the file in errors and its folder anchors
    /// relative paths.
    pub fn from_toml_str(src: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // A document that parses is its own map of keys; one that does not is read line
            // by line around the error.
            let key = match DeTable::parse(src) {
                Ok(root) => path_to(root.get_ref(), "", &span),
                Err(_) => Some(key_at(src, span.start)).filter(|k| !k.is_empty()),
            };
            // A top-level problem ("missing field `tls`") is reported on the whole document:
            // the field is the key.
            let key = key.unwrap_or_else(|| {
                first_quoted(e.message())
                    .unwrap_or("(top level)")
                    .to_string()
            });
            ConfigError {
                file: path.to_path_buf(),
                location: Some(locate(src, &span, &key)),
                message: plain_types(e.message().trim()),
            }
        })?;
        Validator { src, path }.config(raw)
    }

    /// An error about the listener on `addr` (the admin one if `admin`), pointing at where
    /// the address is written.
    pub fn listener_error(&self, addr: SocketAddr, admin: bool, message: String) -> ConfigError {
        let location = match admin {
            true => self.admin_location.as_ref(),
            false => (self.listen.iter().position(|&a| a == addr))
                .and_then(|i| self.listen_locations.get(i)),
        };
        match location {
            Some(location) => ConfigError::at(&self.path, location, message),
            None => ConfigError {
                file: self.path.clone(),
                location: None,
                message,
            },
        }
    }

    /// The config file and every file it names: what the reload watcher follows.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for c in &self.certificates {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
        files
    }
}

struct Validator<'a> {
    src: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, &locate(self.src, span, key), message)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = self.listen(&raw.proxy.listen)?;
        let listen_locations = (raw.proxy.listen.get_ref().iter().enumerate())
            .map(|(i, text)| locate(self.src, &text.span(), &format!("proxy.listen[{i}]")))
            .collect();
        let admin_location = (raw.admin.as_ref())
            .map(|admin| locate(self.src, &admin.listen.span(), "admin.listen"));
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
            let addr: SocketAddr = text.get_ref().trim().parse().map_err(|_| {
                self.error(
                    &text.span(),
                    &key,
                    format!(
                        "{:?} is not an IP:port address (e.g. \"0.0.0.0:8443\" or \"[::]:8443\")",
                        text.get_ref()
                    ),
                )
            })?;
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

    fn admin(
        &self,
        raw: &Spanned<String>,
        proxy: &[SocketAddr],
    ) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = raw.get_ref().trim().parse().map_err(|_| {
            self.error(
                &raw.span(),
                "admin.listen",
                format!(
                    "{:?} is not an IP:port address (e.g. \"127.0.0.1:9090\")",
                    raw.get_ref()
                ),
            )
        })?;
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
                location: locate(self.src, &entry.span(), &key),
                cert_location: locate(self.src, &c.cert.span(), &format!("{key}.cert")),
                key_location: locate(self.src, &c.key.span(), &format!("{key}.key")),
            });
        }
        Ok(out)
    }

    /// A timeout: longer than zero, at most [`MAX_TIMEOUT`].
    fn timeout(&self, d: &Spanned<HumanDuration>, key: &str) -> Result<Duration, ConfigError> {
        let value = d.get_ref().0;
        if value.is_zero() || value > MAX_TIMEOUT {
            // Deadlines are computed as now + timeout: a huge one would overflow.
            Err(self.error(
                &d.span(),
                key,
                "must be longer than zero and at most 30 days",
            ))
        } else {
            Ok(value)
        }
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
        // Spans, not lines: finding a line reads the file up to it, once per route would make
        // a large table's check quadratic.
        let mut first_seen: HashMap<&str, Range<usize>> = HashMap::new();
        // Earlier routes by the requests they match (host, path key): a later one there may
        // never get a request.
        let mut same_place: HashMap<(Option<HostPattern>, String), Vec<usize>> = HashMap::new();
        let mut out: Vec<RouteConfig> = Vec::with_capacity(raw.len());
        for (i, route) in raw.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            let name = route.name.get_ref().trim();
            if name.is_empty() {
                return Err(self.error(&route.name.span(), &key("name"), "must not be empty"));
            }
            if let Some(first) = first_seen.insert(name, route.name.span()) {
                let first = locate(self.src, &first, "").line;
                return Err(self.error(
                    &route.name.span(),
                    &key("name"),
                    format!("duplicate route name {name:?} (first at line {first})"),
                ));
            }
            out.push(RouteConfig {
                name: name.to_string(),
                host: match &route.host {
                    Some(h) => Some(
                        host_pattern(h.get_ref())
                            .map_err(|m| self.error(&h.span(), &key("host"), m))?,
                    ),
                    None => None,
                },
                path: route_path(route.path.get_ref())
                    .map_err(|m| self.error(&route.path.span(), &key("path"), m))?,
                subprotocols: self.list(&route.subprotocols, &key("subprotocols"), subprotocol)?,
                origins: self.list(&route.origins, &key("origins"), origin)?,
                backends: self.backends(&route.backends, &key("backends"))?,
                idle: route
                    .idle
                    .as_ref()
                    .map(|d| self.timeout(d, &key("idle")))
                    .transpose()?,
            });
            let this = &out[i];
            let place = (this.host.clone(), crate::routes::route_key(&this.path));
            let earlier = same_place.entry(place).or_default();
            if let Some(&shadow) = earlier.iter().find(|&&e| takes_all_of(&out[e], this)) {
                // A warning, not an error: equal routes taken in file order is the documented
                // rule, and a config relying on it must keep loading.
                let line = locate(self.src, &raw[shadow].name.span(), "").line;
                let message = format!(
                    "route {name:?} can never be chosen: route {:?} (line {line}) has the same host and path and comes first, and its subprotocol rule fits every request this one's does",
                    out[shadow].name
                );
                warnings.push(self.error(&route.path.span(), &key("path"), message));
            }
            earlier.push(i);
        }
        Ok(out)
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

fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let host = text.trim().to_ascii_lowercase();
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
    // Requests are matched with `;parameters` cut and empty segments dropped (routes.rs), so
    // a route written with either would match more than it says ("/;v1" every path).
    if text.contains(';') || text.trim_end_matches('/').contains("//") {
        return Err(format!(
            "{text:?} has a ';parameter' or an empty segment: requests are matched without them, so write the path without"
        ));
    }
    if !text.starts_with('/') || text.contains(['?', '#']) || text.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?} is not a path prefix (one starts with '/', and has no query, fragment or whitespace)"
        ));
    }
    // RFC 3986's pct-encoded: no request carries a '%' that does not start an escape.
    let bytes = text.as_bytes();
    let broken_escape = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if broken_escape {
        return Err(format!(
            "{text:?} has a '%' that does not start an escape of two hex digits (write '%25' for a '%')"
        ));
    }
    // Requests with a dot segment are refused before routing (routes.rs): no request could
    // ever reach such a route.
    if crate::routes::has_dot_segment(text) {
        return Err(format!(
            "{text:?} has a '.' or '..' segment: requests with one never match a route, so this one could not be reached"
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

fn origin(text: &str) -> Result<String, String> {
    let normalized = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let ok = normalized.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty() && !rest.is_empty() && !rest.contains('/')
    });
    if !ok {
        return Err(format!(
            "{text:?} is not an origin: write it like \"https://chat.example.com\""
        ));
    }
    Ok(normalized)
}

fn backend(text: &str) -> Result<String, String> {
    let bad = || {
        format!("{text:?} is not host:port (e.g. \"10.0.0.7:9001\", \"app:9001\", \"[::1]:9001\")")
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && !host.contains([':', '/', ' '])
    };
    if port_ok && host_ok {
        Ok(text.to_string())
    } else {
        Err(bad())
    }
}

// ---- positions ------------------------------------------------------------------------------

/// Line and column (1-based, in characters) of `span.start`, and the key to name.
fn locate(src: &str, span: &Range<usize>, key: &str) -> Location {
    let start = span.start.min(src.len());
    let before = &src[..floor_char_boundary(src, start)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location {
        line,
        column,
        key: key.to_string(),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted path (`route[1]`, `tls.certificates[0].pass`) of the deepest key or value
/// written exactly at `span`: serde's errors point at the key for an unknown field, at the
/// value for a wrong type, and at the table (its header, or its braces) for a missing field.
fn path_to(table: &DeTable<'_>, prefix: &str, span: &Range<usize>) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = match prefix {
            "" => key.get_ref().to_string(),
            _ => format!("{prefix}.{}", key.get_ref()),
        };
        if key.span() == *span {
            return Some(path);
        }
        value_path(value, path, span)
    })
}

fn value_path(value: &Spanned<DeValue<'_>>, path: String, span: &Range<usize>) -> Option<String> {
    // Inner first: the `[[route]]` array and its element share the header's span.
    let inner = match value.get_ref() {
        DeValue::Table(table) => path_to(table, &path, span),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, item)| value_path(item, format!("{path}[{i}]"), span)),
        _ => None,
    };
    inner.or_else(|| (value.span() == *span).then_some(path))
}

/// Best-effort dotted key for a byte offset, for errors the TOML parser reports by position
/// only: the enclosing `[table]` / `[[array]]` header plus the key written on that line.
fn key_at(src: &str, offset: usize) -> String {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let line_begin = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[line_begin..line_end];
    // The headers before the offset's line, and its own if it is one (read whole: a
    // repeated `[proxy]` is reported inside its brackets).
    let lines = src[..line_begin].split_inclusive('\n');
    for header in lines.chain([line]).map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|t| t.split("]]").next()) {
            let name = name.trim().trim_end_matches(']').to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = header.strip_prefix('[').and_then(|t| t.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let upto = &src[line_begin..offset.max(line_begin)];
    // The key is the last `name =` before the offset on its line, or the name at the offset.
    let key = upto
        .rsplit_once('=')
        .map(|(left, _)| last_ident(left))
        .filter(|k| !k.is_empty())
        .or_else(|| {
            // A table header names no key of its own: the table is the place.
            let line = line.trim();
            if line.starts_with('[') {
                return None;
            }
            line.split('=')
                .next()
                .map(|k| last_ident(k.trim()))
                .filter(|k| !k.is_empty())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The first `backquoted` word of a parser message.
fn first_quoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    rest.split_once('`').map(|(word, _)| word)
}

fn last_ident(text: &str) -> String {
    let ident: String = text
        .trim_end()
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '"')
        .collect();
    ident.chars().rev().filter(|c| *c != '"').collect()
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
    use super::*;

    const HEAD: &str = r#"[proxy]
listen = ["127.0.0.1:8443"]

[tls]
certificates = [{ cert = "a.crt", key = "a.key" }]
"#;

    fn parse(body: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            &format!("{HEAD}{body}"),
            Path::new("/etc/wsgate/wsgate.toml"),
        )
    }

    fn error(body: &str) -> String {
        match parse(body) {
            Ok(_) => panic!("expected an error for {body:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.timeouts.handshake, Duration::from_secs(10));
        assert_eq!(config.timeouts.connect, Duration::from_secs(5));
        assert_eq!(config.timeouts.idle, Duration::from_secs(300));
        assert_eq!(config.timeouts.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.limits.max_request_header_bytes, 16384);
        assert_eq!(config.limits.max_connections, 10000);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.admin, None);
        assert!(!config.proxy_protocol);
        assert_eq!(config.watch, WatchMode::Events);
        assert_eq!(config.tls_min_version, TlsVersion::Tls12);
        assert!(config.session_resumption);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn a_route_may_set_its_own_idle_timeout_within_the_same_bounds() {
        let route = |idle: &str| {
            format!(
                "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"b:1\"]\nidle = \"{idle}\"\n"
            )
        };
        let config = parse(&route("1h")).unwrap();
        assert_eq!(config.routes[0].idle, Some(Duration::from_secs(3600)));
        let zero = error(&route("0s"));
        assert!(
            zero.contains("route[0].idle: must be longer than zero"),
            "{zero}"
        );
        assert!(error(&route("soon")).contains("invalid duration"));
    }

    #[test]
    fn tls_min_version_is_1_2_or_1_3() {
        let head_with =
            |v: &str| HEAD.replace("[tls]\n", &format!("[tls]\nmin_version = \"{v}\"\n"));
        let load = |v: &str| Config::from_toml_str(&head_with(v), Path::new("/w.toml"));
        assert_eq!(load("1.3").unwrap().tls_min_version, TlsVersion::Tls13);
        let old = load("1.1").unwrap_err().to_string();
        assert!(
            old.contains("tls.min_version") && old.contains("1.3"),
            "{old}"
        );
    }

    #[test]
    fn the_admin_listener_is_checked_and_may_not_share_a_proxy_address() {
        let config = parse("[admin]\nlisten = \"127.0.0.1:9090\"\n").unwrap();
        assert_eq!(config.admin, Some("127.0.0.1:9090".parse().unwrap()));
        let bad = error("[admin]\nlisten = \"localhost:9090\"\n");
        assert!(
            bad.contains(":7:10: admin.listen: \"localhost:9090\" is not an IP:port"),
            "{bad}"
        );
        let overlapping = error("[admin]\nlisten = \"0.0.0.0:8443\"\n");
        assert!(
            overlapping.contains("admin.listen: 0.0.0.0:8443 overlaps 127.0.0.1:8443"),
            "{overlapping}"
        );
        assert!(parse("[admin]\nlisten = \"[::]:8443\"\n").is_ok());
        let shared = error("[admin]\nlisten = \"127.0.0.1:8443\"\n");
        assert!(
            shared.contains("admin.listen: 127.0.0.1:8443 is also in proxy.listen"),
            "{shared}"
        );
        let unknown = error("[admin]\nlisten = \"127.0.0.1:9090\"\npath = \"/m\"\n");
        assert!(unknown.contains("admin"), "{unknown}");
    }

    #[test]
    fn relative_certificate_paths_resolve_against_the_config_folder() {
        let config = parse("").unwrap();
        assert_eq!(config.certificates[0].cert, Path::new("/etc/wsgate/a.crt"));
        assert_eq!(config.watched_files().len(), 3);
    }

    #[test]
    fn a_full_route_is_normalized() {
        let config = parse(
            r#"
[timeouts]
idle = "500ms"
[[route]]
name = "chat"
host = "*.Example.COM"
path = "/ws/"
subprotocols = ["chat.v2"]
origins = ["HTTPS://Chat.Example.com/"]
backends = ["127.0.0.1:9001", "[::1]:9002", "app:80"]
"#,
        )
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(
            route.host,
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(route.path, "/ws");
        assert_eq!(
            route.origins.as_deref(),
            Some(&["https://chat.example.com".to_string()][..])
        );
        assert_eq!(config.timeouts.idle, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let cases = [
            ("[limits]\nmax_connectionz = 5\n", ":7:1: limits.max_connectionz:"),
            ("[proxy]\nlog_format = \"json\"\n", ":6:2: proxy: duplicate key"),
            ("[timeouts]\nidle = \"soon\"\n", ":7:8: timeouts.idle:"),
            ("[limits]\nmax_connections = 0\n", ":7:19: limits.max_connections:"),
            ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"nope\"]\n", ":9:13: route[0].backends[0]:"),
            (
                "[[route]]\nname = \"a\"\npath = \"/\"\nsubprotocols = [\"ok\", \"bad token\"]\nbackends = [\"h:1\"]\n",
                ":9:23: route[0].subprotocols[1]: \"bad token\" is not a valid subprotocol",
            ),
            (
                "[[route]]\nname = \"a\"\npath = \"/\"\norigins = [\"https://a.com\", \"nope\"]\nbackends = [\"h:1\"]\n",
                ":9:29: route[0].origins[1]: \"nope\" is not an origin",
            ),
            ("[[route]]\nname = \"a\"\npath = \"/a/../b\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a/../b\" has a '.' or '..' segment"),
            ("[[route]]\nname = \"a\"\npath = \"/a/%2E\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
            ("[[route]]\nname = \"a\"\npath = \"/a%2\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a%2\" has a '%' that does not start an escape"),
            ("[[route]]\nname = \"a\"\npath = \"/a%zz\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
            (
                "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n",
                ":11:8: route[1].name: duplicate route name \"a\" (first at line 7)",
            ),
            ("[[route]]\nname = \"a\"\npath = \"ws\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
            ("[[route]]\nname = \"a\"\npath = \"/;v1\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
            ("[[route]]\nname = \"a\"\npath = \"/a//b\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
            ("[[route]]\nname = \"a\"\nhost = \"a.com:443\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
            ("[[route]]\nname = \"a\"\nhost = \"a-.example.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
            ("[[route]]\nname = \"a\"\nhost = \"*.-x.example.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
            ("[[route]]\nname = \"a\"\nhost = \"a..com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
            ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = []\n", "route[0].backends: needs at least one"),
            ("[[route]]\nname = \"a\"\npath = \"/\"\norigins = []\nbackends = [\"h:1\"]\n", "route[0].origins:"),
        ];
        for (body, expected) in cases {
            let message = error(body);
            assert!(message.starts_with("/etc/wsgate/wsgate.toml:"), "{message}");
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }

    /// A route behind an earlier one with the same host and path, whose subprotocol rule fits
    /// every request it would take, could never be chosen: a warning (file order among equal
    /// routes is the documented rule, so such a config still loads).
    #[test]
    fn a_route_that_could_never_be_chosen_is_warned_about() {
        let route = |name: &str, host: &str, path: &str, protocols: &str| {
            format!("[[route]]\nname = \"{name}\"\n{host}path = \"{path}\"\n{protocols}backends = [\"h:1\"]\n")
        };
        let host = "host = \"a.com\"\n";
        let list = |p: &str| format!("subprotocols = [{p}]\n");
        let shadowed = [
            route("a", "", "/x", "") + &route("b", "", "/x/", ""),
            route("a", host, "/x", "")
                + &route("b", "host = \"A.com.\"\n", "/%78", &list("\"v1\"")),
            route("a", "", "/x", &list("\"v1\", \"v2\"")) + &route("b", "", "/x", &list("\"v2\"")),
        ];
        for body in &shadowed {
            let config = parse(body).unwrap();
            assert_eq!(config.routes.len(), 2);
            assert_eq!(config.warnings.len(), 1, "{body}");
            let message = config.warnings[0].to_string();
            assert!(
                message.contains(
                    ":8: route[1].path: route \"b\" can never be chosen: route \"a\" (line 7)"
                ),
                "{message}\n{body}"
            );
        }
        let reachable = [
            // Different host, different path, or a rule that fits requests the first refuses.
            route("a", host, "/x", "") + &route("b", "", "/x", ""),
            route("a", "", "/x", "") + &route("b", "", "/x/y", ""),
            route("a", "", "/x", &list("\"v1\"")) + &route("b", "", "/x", ""),
            route("a", "", "/x", &list("\"v1\"")) + &route("b", "", "/x", &list("\"v1\", \"v2\"")),
        ];
        for body in &reachable {
            let config = parse(body).unwrap();
            assert_eq!(config.routes.len(), 2);
            assert!(config.warnings.is_empty(), "{body}: {:?}", config.warnings);
        }
    }

    #[test]
    fn a_fully_qualified_route_host_is_the_host_without_its_dot() {
        let body = "[[route]]\nname = \"a\"\nhost = \"Chat.Example.com.\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
        let config = parse(body).unwrap();
        assert_eq!(
            config.routes[0].host,
            Some(HostPattern::Exact("chat.example.com".into()))
        );
    }

    #[test]
    fn serde_errors_name_the_key_they_are_about() {
        let head = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n";
        let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
        let cases = [
            // A missing field names its table: the header, or the inline table's braces.
            (format!("{head}[[route]]\npath = \"/\"\nbackends = [\"h:1\"]\n"), "w.toml:5:1: route[0]: missing field `name`"),
            (format!("{head}{route}[[route]]\npath = \"/\"\nbackends = [\"h:1\"]\n"), "w.toml:9:1: route[1]: missing field `name`"),
            (format!("{head}[[route]]\nname = \"a\"\npath = \"/\"\n[limits]\n"), "w.toml:5:1: route[0]: missing field `backends`"),
            ("[proxy]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n".into(), "w.toml:1:1: proxy: missing field `listen`"),
            ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }, { cert = \"c\" }]\n".into(), "w.toml:4:44: tls.certificates[1]: missing field `key`"),
            // An unknown field names itself, however deep.
            ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\", pass = \"x\" }]\n".into(), "w.toml:4:42: tls.certificates[0].pass: unknown field `pass`"),
            // A wrong type names the value.
            ("[proxy]\nlisten = \"127.0.0.1:1\"\n".into(), "w.toml:2:10: proxy.listen: invalid type"),
            (format!("{head}[limits]\nmax_connections = \"10\"\n"), "w.toml:6:19: limits.max_connections: invalid type: string \"10\", expected an integer"),
            // Nothing to point at: the field is the key.
            ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n".into(), "w.toml:1:1: tls: missing field `tls`"),
        ];
        for (body, expected) in cases {
            let err = Config::from_toml_str(&body, Path::new("w.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn bad_listen_addresses_are_named() {
        let err = Config::from_toml_str(
            "[proxy]\nlisten = [\"localhost:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
            Path::new("w.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.location.as_ref().map(|l| (l.line, l.key.as_str())),
            Some((2, "proxy.listen[0]"))
        );
        let err = Config::from_toml_str(
            "[proxy]\nlisten = [\"127.0.0.1:8443\", \"0.0.0.0:8443\", \"[::]:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
            Path::new("w.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.location.as_ref().map(|l| (l.line, l.key.as_str())),
            Some((2, "proxy.listen[1]"))
        );
        assert!(err.message.contains("overlaps 127.0.0.1:8443"), "{err}");
    }

    #[test]
    fn broken_toml_points_at_the_line() {
        let err = error("[[route]\nname = 1\n");
        assert!(err.contains(":6:"), "{err}");
        // An unclosed table header names the table, not a key made of it.
        let err = Config::from_toml_str("[proxy\n", Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.toml:1:7: proxy: "), "{err}");
    }

    #[test]
    fn missing_sections_are_reported() {
        let err =
            Config::from_toml_str("[proxy]\nlisten = [\"127.0.0.1:1\"]\n", Path::new("w.toml"))
                .unwrap_err();
        assert!(err.message.contains("tls"), "{err}");
        assert_eq!(err.location.as_ref().map(|l| l.key.as_str()), Some("tls"));
        let err = error("[tls2]\nx = 1\n");
        assert!(err.contains(": tls2: unknown field `tls2`"), "{err}");
    }
}
