//! When the served certificates stop being valid, and what to say about it: the warnings at
//! every load (expired, expiring soon, not valid yet) and `wsgate check`'s summary, with
//! their dates in RFC 3339.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use super::Chain;
use crate::config::{escape_controls, CertificatePaths, Config, ConfigError};

/// When a certificate wsgate presents stops being valid (one it serves, or a client
/// certificate it shows backends): exported as a metric and warned about, since a renewal
/// that silently failed (cert-manager, certbot) is the classic outage.
#[derive(Clone, Debug)]
pub(crate) struct Expiry {
    pub file: PathBuf,
    /// Unix seconds of the leaf's notBefore and notAfter.
    pub not_before: i64,
    pub not_after: i64,
    /// Who checks it, for the warnings' words.
    role: Chain,
}

impl Expiry {
    /// The validity of `key`'s leaf, the first certificate of `file`'s chain (rustls has
    /// already parsed it, so this cannot fail on a certificate it accepted; `None` keeps it
    /// that way regardless).
    pub(super) fn of(file: &Path, key: &CertifiedKey, role: Chain) -> Option<Expiry> {
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert.first()?).ok()?;
        let validity = cert.validity();
        Some(Expiry {
            file: file.to_path_buf(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            role,
        })
    }
}

/// Certificates this close to their end get a warning at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong, or soon will be, with the validity of the certificates wsgate presents,
/// one line each naming its file and where `config` names it: expired, expiring within
/// [`EXPIRY_WARNING`], or not valid yet (a clock or an issuer ahead of this machine's).
/// Logged at every load and printed by `wsgate check`.
pub(crate) fn validity_warnings(expiry: &[Expiry], config: &Config) -> Vec<String> {
    let now = unix_now();
    let soon = EXPIRY_WARNING.as_secs() as i64;
    (expiry.iter())
        .filter_map(|cert| {
            let file = cert.file.display();
            let left = cert.not_after - now;
            let checkers = match cert.role {
                Chain::Client => "backends asking for it",
                Chain::Served | Chain::Trusted => "clients",
            };
            let message = if cert.not_before > now {
                let from = rfc3339(cert.not_before);
                format!("{file}: certificate is not valid before {from}; {checkers} will refuse it until then")
            } else if left <= 0 {
                format!("{file}: certificate has expired; {checkers} will refuse it")
            } else if left < soon {
                let when = time_left(left);
                format!("{file}: certificate expires in {when}; is its renewal working?")
            } else {
                return None;
            };
            Some((&cert.file, message))
        })
        .map(|(file, message)| match pair_of(config, file) {
            Some(c) => ConfigError::at(&config.path, &c.cert_location, message).to_string(),
            None => escape_controls(&message),
        })
        .collect()
}

/// The entry of `config` naming the certificate `file`: served, or a route's client
/// certificate.
fn pair_of<'a>(config: &'a Config, file: &Path) -> Option<&'a CertificatePaths> {
    let clients = (config.routes.iter())
        .filter_map(|r| r.backend_tls.as_ref())
        .filter_map(|tls| tls.client.as_ref());
    (config.certificates.iter())
        .chain(clients)
        .find(|c| c.cert == file)
}

/// `wsgate check`'s words on the certificates: when the first runs out, or which one already
/// has; empty without certificates.
pub(crate) fn expiry_summary(expiry: &[Expiry]) -> String {
    match expiry.iter().min_by_key(|e| e.not_after) {
        None => String::new(),
        Some(first) if first.not_after > unix_now() => {
            format!(", certificates valid until {}", rfc3339(first.not_after))
        }
        Some(first) => format!(
            ", WARNING: certificate {} expired at {}",
            first.file.display(),
            rfc3339(first.not_after)
        ),
    }
}

/// `wsgate check`'s words on the revocation lists clients are checked against, whose first
/// `nextUpdate` is `due` (Unix seconds), if any.
pub(crate) fn lists_summary(due: Option<i64>) -> String {
    match due {
        None => String::new(),
        Some(due) if due > unix_now() => {
            format!(", revocation lists due to be replaced at {}", rfc3339(due))
        }
        Some(due) => format!(
            ", WARNING: a revocation list was due to be replaced at {}",
            rfc3339(due)
        ),
    }
}

/// `left` seconds in days, to the nearest: a certificate made for 5 days reads "5" for the
/// first half day of its life, not "4" a second after it was made.
fn time_left(left: i64) -> String {
    match left / 86400 {
        0 => "less than a day".to_string(),
        _ => format!("{} day(s)", (left + 43200) / 86400),
    }
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as an RFC 3339 time, or as the number if out of range.
pub(super) fn rfc3339(unix: i64) -> String {
    // By hand, not humantime: a certificate may end before 1970 (or after 9999), and
    // humantime formats neither.
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: 400-year eras starting on 1 March, so leap days fall at the end).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, time_left};

    #[test]
    fn time_left_is_in_days_to_the_nearest() {
        let day = 86400;
        assert_eq!(time_left(day - 1), "less than a day");
        assert_eq!(time_left(day), "1 day(s)");
        assert_eq!(time_left(5 * day - 1), "5 day(s)");
        assert_eq!(time_left(5 * day - day / 2), "5 day(s)");
        assert_eq!(time_left(5 * day - day / 2 - 1), "4 day(s)");
    }

    #[test]
    fn certificate_dates_print_as_rfc3339_before_1970_and_after_9999_too() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(2_110_940_486), "2036-11-22T04:21:26Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-599_616_000), "1951-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
