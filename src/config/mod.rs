//! The TOML config file: read as written (`raw`, serde, unknown keys rejected), validated
//! once (`validate`) into a typed [`Config`]. Every error names the file, the line and
//! column, and the key (`error`; found by `locate`, in words by `wording`), because an
//! operator editing by hand (or a reload log line) needs to know exactly where to look.

mod error;
mod locate;
mod raw;
mod shape;
mod validate;
mod values;
mod wording;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub(crate) use error::escape_controls;
pub use error::{ConfigError, Location};
use raw::RawConfig;
use validate::Validator;
pub(crate) use values::certificate_name;

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
    /// Clients are asked for a certificate, if `tls.client_ca` is set.
    pub client_auth: Option<ClientAuthConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub log_format: LogFormat,
    /// Every connection starts with a PROXY protocol header naming the real client.
    pub proxy_protocol: bool,
    /// Listeners are bound with `SO_REUSEPORT`, so a second wsgate (a new version taking
    /// over) can listen on the same addresses.
    pub reuse_port: bool,
    /// How long a busy runtime thread relaying small messages waits for more before it
    /// sleeps (see [`crate::coalesce`]); zero: never. Only on a runtime the hooks are
    /// installed in (the binary's), and process-wide.
    pub coalesce: Duration,
    /// How changes to the config's files are noticed.
    pub watch: WatchMode,
    /// How often the files are read again while every folder is watched, in case a change
    /// made no event.
    pub recheck: Duration,
    /// The plain-HTTP admin listener (metrics, health), if configured.
    pub admin: Option<SocketAddr>,
    /// Where each `listen` address and the admin one are written, for bind errors.
    listen_locations: Vec<Location>,
    admin_location: Option<Location>,
    /// In file order.
    pub routes: Vec<Arc<RouteConfig>>,
    /// What loads but is surely a mistake (a route that can never be chosen), each pointing
    /// at its place like an error: logged at every load, printed by `wsgate check`.
    pub warnings: Vec<ConfigError>,
    /// Hash of the bytes this was read from (a byte order mark included), as the reload's
    /// fingerprints take a file's: a
    /// snapshot whose certificates are renewed while another config file is on disk is still
    /// fingerprinted as this one with its new certificates.
    pub(crate) source_hash: u64,
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

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub handshake: Duration,
    pub connect: Duration,
    pub idle: Duration,
    pub shutdown_grace: Duration,
    /// How long a backend that failed to take a connection is first put aside; zero: never.
    pub backend_cooldown: Duration,
    /// How long a backend connect may go unanswered before the next address or backend is
    /// dialed beside it; zero: one at a time.
    pub attempt_delay: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); `None` = no such limit.
    pub max_connections_per_client: Option<usize>,
}

/// `tls.client_ca` and `tls.client_auth`: which client certificates are taken, and whether a
/// client must show one.
#[derive(Clone, Debug)]
pub struct ClientAuthConfig {
    /// A PEM file of the CA certificates a client's certificate must chain to.
    pub ca: PathBuf,
    pub ca_location: Location,
    pub mode: ClientAuth,
    /// `tls.client_crl`: a file of revocation lists (PEM, or one DER list), and its line.
    pub crl: Option<(PathBuf, Location)>,
    /// `tls.recheck_tunnels`: tunnels check their client's certificate again when a reload
    /// changes how clients are checked, and close if it is refused.
    pub recheck_tunnels: bool,
}

/// Whether a client without a certificate gets through the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Refused in the handshake.
    #[default]
    Required,
    /// Taken; only routes with `require_client_certificate` refuse it (403).
    Optional,
}

/// How a route spreads its requests over its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The one with the fewest connections open now (tunnels, and upgrades under way), ties
    /// in turn: tunnels live for hours, so a backend restarted, or added, takes the new ones
    /// until it has caught up.
    LeastConnections,
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
    /// File system events (inotify), with a check every 0.6 s for a folder that cannot be
    /// watched.
    #[default]
    Events,
    /// A check every 0.6 s, for file systems that deliver no events (NFS, SMB, some FUSE
    /// mounts, bind mounts edited from outside a VM).
    Poll,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<HostPattern>,
    /// Where `host` is written, for a warning about it.
    pub host_location: Option<Location>,
    /// Starts with '/', no trailing '/' except the root.
    pub path: String,
    pub subprotocols: Option<Vec<String>>,
    /// ASCII-lowercased, without a trailing '/'.
    pub origins: Option<Vec<String>>,
    /// `host:port`, as written.
    pub backends: Vec<String>,
    /// How requests are spread over `backends`.
    pub balance: Balance,
    /// This route's tunnels' idle timeout, instead of `timeouts.idle`.
    pub idle: Option<Duration>,
    /// TLS to the backends, if the route asks for it.
    pub backend_tls: Option<BackendTlsConfig>,
    /// Requests without a verified client certificate get 403.
    pub require_client_certificate: bool,
}

/// A route's `backend_tls`: whom its backends' certificates must chain to, and the name they
/// must be valid for.
#[derive(Clone, Debug)]
pub struct BackendTlsConfig {
    /// A PEM file of trusted CA certificates.
    pub ca: PathBuf,
    /// The name sent as SNI and checked against the certificate; `None`: each backend's own
    /// host, as written in `backends`.
    pub server_name: Option<String>,
    /// Where `ca` is written, for an error about the file.
    pub ca_location: Location,
    /// The client certificate and key shown to backends that ask for one (mutual TLS).
    pub client: Option<CertificatePaths>,
}

/// A route's host rule, lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: ".example.com" for "*.example.com".
    Wildcard(String),
}

/// The last config file [`Config::load`] parsed, and what came of it. One reload looks at
/// the same bytes several times (their files' fingerprint before the build, the build, the
/// check that nothing was written meanwhile, the wait for the files to hold still): parsing
/// a large table each time made a reload several times slower than a `check`.
struct LastLoad {
    path: PathBuf,
    bytes: Vec<u8>,
    result: Result<Config, ConfigError>,
}

static LAST_LOAD: std::sync::Mutex<Option<LastLoad>> = std::sync::Mutex::new(None);

impl Config {
    /// Reads and validates the file at `path` (parsed again only if its bytes changed).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, |loaded| loaded.cloned().map_err(Clone::clone))
    }

    /// The log format the config at `path` asks for, also when it does not load (a mistake
    /// elsewhere in it): the error saying so must come out in the format the operator's log
    /// pipeline reads. Text if the file does not even parse as TOML, or says nothing.
    pub fn log_format_of(path: &Path) -> LogFormat {
        Self::load_with(path, |loaded| match loaded {
            Ok(config) => config.log_format,
            Err(_) => {
                let asked = crate::files::read(path).ok().and_then(|bytes| {
                    let table: toml::Table = std::str::from_utf8(&bytes).ok()?.parse().ok()?;
                    let format = table.get("proxy")?.get("log_format")?.as_str()?;
                    Some(format == "json")
                });
                match asked {
                    Some(true) => LogFormat::Json,
                    _ => LogFormat::Text,
                }
            }
        })
    }

    /// What `look` makes of the config at `path` as [`Config::load`] would return it, without
    /// a copy of it: the look at a config's files that a reload takes several times must not
    /// copy a table of thousands of routes each time. `look` runs under the cache's lock, so
    /// it must not load a config itself.
    pub(crate) fn load_with<T>(
        path: &Path,
        look: impl FnOnce(Result<&Config, &ConfigError>) -> T,
    ) -> T {
        let bytes = match crate::files::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                let message = format!("cannot read config file: {e}");
                return look(Err(&ConfigError::new(path, message).caused_by(Some(&e))));
            }
        };
        // Named as what it is (a file truncated and not yet written, say), not as the first
        // of the many things an empty config lacks.
        if bytes.is_empty() {
            return look(Err(&ConfigError::new(path, "config file is empty")));
        }
        let mut last = crate::sync::lock(&LAST_LOAD);
        if let Some(last) = last.as_ref().filter(|l| l.path == path && l.bytes == bytes) {
            return look(last.result.as_ref());
        }
        let result = match std::str::from_utf8(&bytes) {
            Ok(src) => Config::from_toml_str(src, path),
            Err(e) => Err(ConfigError::not_utf8(path, &bytes, e)),
        };
        let last = last.insert(LastLoad {
            path: path.to_path_buf(),
            bytes,
            result,
        });
        look(last.result.as_ref())
    }

    /// Parses and validates `src`; `path` names the file in errors and its folder anchors
    /// relative paths.
    pub fn from_toml_str(src: &str, path: &Path) -> Result<Config, ConfigError> {
        // The file's content as read, byte order mark included: what a look at the file
        // hashes, to tell whether this is the config on disk.
        let source_hash = crate::fingerprint::bytes_hash(src.as_bytes());
        // A byte order mark (Windows editors write one) is no character an editor shows: left
        // in, every column of the first line would be one off.
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        let toml_error = |e: toml::de::Error| ConfigError::from_toml(&e, src, path);
        // Parsed once, for the shape check and then for serde.
        let root = toml::de::DeTable::parse(src).map_err(|e| toml_error(syntax_first(src, e)))?;
        shape::check(root.get_ref(), src, path)
            .map_err(|refused| written_first(&root, refused, src, path))?;
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(root)).map_err(toml_error)?;
        let mut config = Validator { src, path }.config(raw)?;
        config.source_hash = source_hash;
        Ok(config)
    }

    /// An error about the listener on `addr` (the admin one if `admin`), pointing at where
    /// the address is written.
    pub(crate) fn listener_error(
        &self,
        addr: SocketAddr,
        admin: bool,
        message: String,
    ) -> ConfigError {
        let location = match admin {
            true => self.admin_location.as_ref(),
            false => (self.listen.iter().position(|&a| a == addr))
                .and_then(|i| self.listen_locations.get(i)),
        };
        match location {
            Some(location) => ConfigError::at(&self.path, location, message),
            None => ConfigError::new(&self.path, message),
        }
    }

    /// The files routes name for their backends' TLS (CA files, client certificates and
    /// keys), each once.
    pub(crate) fn backend_tls_files(&self) -> impl Iterator<Item = &Path> {
        let mut seen = std::collections::HashSet::new();
        (self.routes.iter())
            .filter_map(|r| r.backend_tls.as_ref())
            .flat_map(|tls| {
                let client = tls.client.iter();
                let client = client.flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
                std::iter::once(tls.ca.as_path()).chain(client)
            })
            .filter(move |file| seen.insert(*file))
    }

    /// How many client certificate files routes show their backends.
    pub(crate) fn backend_client_certificates(&self) -> usize {
        let clients = (self.routes.iter())
            .filter_map(|r| r.backend_tls.as_ref())
            .filter_map(|tls| tls.client.as_ref());
        let files: std::collections::HashSet<&Path> = clients.map(|c| c.cert.as_path()).collect();
        files.len()
    }

    /// The config file and every file it names: what the reload watcher follows.
    pub(crate) fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.tls_files());
        files
    }

    /// Every certificate, key and CA file the config names, each once: what a snapshot is
    /// built from besides the config file, and renewed from.
    pub(crate) fn tls_files(&self) -> Vec<PathBuf> {
        let served = (self.certificates.iter()).flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
        let client_ca = (self.client_auth.iter()).flat_map(|auth| {
            let crl = auth.crl.iter().map(|(crl, _)| crl.as_path());
            std::iter::once(auth.ca.as_path()).chain(crl)
        });
        let mut seen = std::collections::HashSet::new();
        (served.chain(client_ca).chain(self.backend_tls_files()))
            .filter(|file| seen.insert(*file))
            .map(Path::to_path_buf)
            .collect()
    }
}

/// The syntax error written first on the line of `parsed`, the one the parser stopped at: it
/// reports the first it notices, which is not always the first written (the bad escape in
/// `"C:\dir\", key = "k"` is noticed after the missing comma its `\"` leads to, further
/// on). Only on that line: past a mistake the parser reads on as best it can, and what it
/// finds after one (a string left open swallows the lines below it, and a backslash there
/// reads as a bad escape) is no mistake of the file's.
fn syntax_first(src: &str, parsed: toml::de::Error) -> toml::de::Error {
    let start = |e: &toml::de::Error| e.span().map_or(usize::MAX, |span| span.start);
    let stopped = start(&parsed);
    let line_start = src
        .get(..stopped)
        .map_or(0, |before| before.rfind('\n').map_or(0, |at| at + 1));
    let (_, errors) = toml::de::DeTable::parse_recoverable(src);
    let same_line = |e: &toml::de::Error| (line_start..stopped).contains(&start(e));
    match errors.into_iter().filter(same_line).min_by_key(start) {
        Some(first) => first,
        None => parsed,
    }
}

/// What the shape check `refused`, or serde's first mistake in the document if that is
/// written before it (an unknown key above a misspelt word, the misspelt key a date-time
/// sits under): the keys-and-types stage reports the one written first, as every stage
/// does. Date-times are read as text for this, so that serde reads past them.
fn written_first(
    root: &toml::Spanned<toml::de::DeTable<'_>>,
    refused: ConfigError,
    src: &str,
    path: &Path,
) -> ConfigError {
    let mut as_text = root.clone();
    shape::datetimes_as_text(as_text.get_mut());
    match RawConfig::deserialize(toml::de::Deserializer::from(as_text)) {
        Err(e) => {
            let serde = ConfigError::from_toml(&e, src, path);
            if serde.written_before(&refused) {
                serde
            } else {
                refused
            }
        }
        Ok(_) => refused,
    }
}

#[cfg(test)]
mod tests;
