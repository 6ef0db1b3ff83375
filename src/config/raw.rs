//! The config file as written: serde's view of the TOML, every key spanned so an error can
//! point at it, unknown keys rejected. Defaults live here, and in docs/configuration.md.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Balance, ClientAuth, LogFormat, TlsVersion, WatchMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) proxy: RawProxy,
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) reload: RawReload,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) log_format: LogFormat,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
    #[serde(default)]
    pub(super) reuse_port: bool,
    #[serde(default = "defaults::coalesce")]
    pub(super) coalesce: Spanned<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    #[serde(default)]
    pub(super) watch: WatchMode,
    #[serde(default = "defaults::recheck")]
    pub(super) recheck: Spanned<HumanDuration>,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            watch: WatchMode::default(),
            recheck: defaults::recheck(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificates: Spanned<Vec<Spanned<RawCertificate>>>,
    #[serde(default)]
    pub(super) min_version: TlsVersion,
    #[serde(default = "defaults::session_resumption")]
    pub(super) session_resumption: bool,
    /// Clients are asked for a certificate signed by a CA in this file.
    pub(super) client_ca: Option<Spanned<String>>,
    /// Whether a client without one gets through the handshake (only with `client_ca`).
    pub(super) client_auth: Option<Spanned<ClientAuth>>,
    /// Revocation lists the client certificates are checked against (only with `client_ca`).
    pub(super) client_crl: Option<Spanned<String>>,
    /// Whether tunnels check their client's certificate again when the rules change.
    pub(super) recheck_tunnels: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default = "defaults::handshake")]
    pub(super) handshake: Spanned<HumanDuration>,
    #[serde(default = "defaults::connect")]
    pub(super) connect: Spanned<HumanDuration>,
    #[serde(default = "defaults::idle")]
    pub(super) idle: Spanned<HumanDuration>,
    #[serde(default = "defaults::shutdown_grace")]
    pub(super) shutdown_grace: Spanned<HumanDuration>,
    #[serde(default = "defaults::backend_cooldown")]
    pub(super) backend_cooldown: Spanned<HumanDuration>,
    #[serde(default = "defaults::attempt_delay")]
    pub(super) attempt_delay: Spanned<HumanDuration>,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            handshake: defaults::handshake(),
            connect: defaults::connect(),
            idle: defaults::idle(),
            shutdown_grace: defaults::shutdown_grace(),
            backend_cooldown: defaults::backend_cooldown(),
            attempt_delay: defaults::attempt_delay(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "defaults::max_request_header_bytes")]
    pub(super) max_request_header_bytes: Spanned<i64>,
    #[serde(default = "defaults::max_connections")]
    pub(super) max_connections: Spanned<i64>,
    pub(super) max_connections_per_client: Option<Spanned<i64>>,
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
pub(super) struct RawRoute {
    pub(super) name: Spanned<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) path: Spanned<String>,
    pub(super) subprotocols: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) backends: Spanned<Vec<Spanned<String>>>,
    pub(super) balance: Option<Spanned<Balance>>,
    pub(super) idle: Option<Spanned<HumanDuration>>,
    pub(super) backend_tls: Option<Spanned<RawBackendTls>>,
    pub(super) require_client_certificate: Option<Spanned<bool>>,
}

/// `backend_tls = { ca = "…", server_name = "…", cert = "…", key = "…" }`: the route's
/// backends speak TLS, and wsgate shows them a client certificate if `cert` and `key` name
/// one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    pub(super) ca: Spanned<String>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
}

/// Defaults, documented in docs/configuration.md; keep the two in step.
mod defaults {
    use super::HumanDuration;
    use std::time::Duration;
    use toml::Spanned;

    fn secs(s: u64) -> Spanned<HumanDuration> {
        Spanned::new(0..0, HumanDuration(Duration::from_secs(s)))
    }
    pub(super) fn handshake() -> Spanned<HumanDuration> {
        secs(10)
    }
    pub(super) fn connect() -> Spanned<HumanDuration> {
        secs(5)
    }
    pub(super) fn idle() -> Spanned<HumanDuration> {
        secs(300)
    }
    pub(super) fn shutdown_grace() -> Spanned<HumanDuration> {
        secs(30)
    }
    pub(super) fn backend_cooldown() -> Spanned<HumanDuration> {
        secs(1)
    }
    /// RFC 8305's recommended Connection Attempt Delay.
    pub(super) fn attempt_delay() -> Spanned<HumanDuration> {
        Spanned::new(0..0, HumanDuration(Duration::from_millis(250)))
    }
    pub(super) fn coalesce() -> Spanned<HumanDuration> {
        Spanned::new(0..0, HumanDuration(Duration::from_micros(50)))
    }
    pub(super) fn recheck() -> Spanned<HumanDuration> {
        secs(60)
    }
    pub(super) fn max_request_header_bytes() -> Spanned<i64> {
        Spanned::new(0..0, 16384)
    }
    pub(super) fn max_connections() -> Spanned<i64> {
        Spanned::new(0..0, 10000)
    }
    pub(super) fn session_resumption() -> bool {
        true
    }
}

/// A duration written like "500ms", "10s" or "5m".
#[derive(Clone, Copy, Debug)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

/// Only a string: its `expecting` is what serde's "invalid type" message asks for
/// (`idle = 10` says "expected a duration string like "10s"", not "expected a string").
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration string like \"10s\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
        // humantime joins digits across spaces ("1 0s" is 10 s): a typo would be a value ten
        // times another, taken without a word.
        if split_number(text) {
            return Err(E::custom(format!(
                "invalid duration {text:?}: a space inside a number (write \"10s\" or \"1s 500ms\")"
            )));
        }
        // The Greek small mu (U+03BC), which keyboards give for "µ", is read as the micro
        // sign (U+00B5) that humantime knows.
        humantime::parse_duration(&text.trim().replace('\u{3bc}', "\u{b5}"))
            .map(HumanDuration)
            .map_err(|e| match e {
                // Written right, but more than a duration holds (about 584 years): said as
                // what it is, not as a spelling mistake.
                humantime::DurationError::NumberOverflow => E::custom(format!(
                    "invalid duration {text:?}: too long (no setting takes more than 30 days), or finer than a nanosecond"
                )),
                _ => E::custom(format!(
                    "invalid duration {text:?}: write it like \"50us\", \"500ms\", \"10s\" or \"5m\" (units are case-sensitive)"
                )),
            })
    }
}

/// Whether `text` has two digits with only white space between them (`"1 0s"`; `"1s 500ms"`
/// and `"5 s"` have none).
fn split_number(text: &str) -> bool {
    let pieces: Vec<&str> = text.split_whitespace().collect();
    pieces.windows(2).any(|pair| {
        pair[0].ends_with(|c: char| c.is_ascii_digit())
            && pair[1].starts_with(|c: char| c.is_ascii_digit())
    })
}
