//! The [`Snapshot`]: the config in force, as every new connection reads it: the validated
//! config, its compiled routes and its rustls config, built as one unit from the files on disk
//! (or not at all), with a fingerprint of those files so a reload can tell whether they changed.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;

use crate::config::{escape_controls, Config, ConfigError};
use crate::routes::RouteTable;
use crate::tls;

/// Everything a new connection needs, built and validated as one unit.
pub(crate) struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub tls: Arc<ServerConfig>,
    /// When each served certificate expires.
    pub expiry: Vec<tls::Expiry>,
    pub generation: u64,
    /// Hash of the bytes of every file the config depends on.
    pub(crate) fingerprint: u64,
    /// Hash of the bytes of the certificate and key files, as they were when read: tells a
    /// renewal apart while the config file on disk is rejected (see [`Snapshot::renewed`]).
    served: u64,
    /// What is wrong with the certificates (a name no route's host uses, say).
    tls_warnings: Vec<ConfigError>,
}

impl Snapshot {
    /// Loads the config at `path` and everything it names.
    pub(crate) fn build(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
        Self::build_hashed(path, generation, on_disk_fingerprint(path))
    }

    /// Like `build`, with the files' fingerprint taken by the caller *before* reading: a
    /// write landing during the build then still looks like a change afterwards, and is
    /// applied by its own event (never hidden under this hash).
    pub(crate) fn build_hashed(
        path: &Path,
        generation: u64,
        fingerprint: u64,
    ) -> Result<Snapshot, ConfigError> {
        Self::from_config(Config::load(path)?, generation, fingerprint)
    }

    fn from_config(
        config: Config,
        generation: u64,
        fingerprint: u64,
    ) -> Result<Snapshot, ConfigError> {
        // Hashed before the PEM files are read: a write in between reads as a change later.
        let served_hash = served_hash(&config);
        let served = tls::server_config(&config)?;
        let routes = RouteTable::new(&config.routes);
        Ok(Snapshot {
            config,
            routes,
            tls: served.tls,
            expiry: served.expiry,
            generation,
            fingerprint,
            served: served_hash,
            tls_warnings: served.warnings,
        })
    }

    /// This config with its certificates and keys read again, as generation `generation`, if
    /// their files changed since they were read. For a config file on disk that is rejected
    /// (or cannot bind): a certificate renewal must not wait for someone to fix that file,
    /// or a typo becomes an expired certificate.
    /// With the renewal, the hash of the files as they were before it read them.
    pub(crate) fn renewed(&self, generation: u64) -> Option<(u64, Result<Snapshot, ConfigError>)> {
        let read = served_hash(&self.config);
        // A file gone is no renewal (the "file gone" wait covers it); it is renewed once back.
        let gone = |file: &PathBuf| matches!(file.try_exists(), Ok(false));
        if read == self.served || served_files(&self.config).iter().any(gone) {
            return None;
        }
        let renewed = Self::from_config(self.config.clone(), generation, self.fingerprint);
        Some((read, renewed))
    }

    /// The hash of this config's certificate and key files as they are on disk now.
    pub(crate) fn served_hash(&self) -> u64 {
        served_hash(&self.config)
    }
}

/// The hash of the certificate and key files `config` serves, as they are on disk now.
fn served_hash(config: &Config) -> u64 {
    fingerprint_of(&served_files(config), false)
}

/// The certificate and key files `config` serves.
fn served_files(config: &Config) -> Vec<PathBuf> {
    (config.certificates.iter())
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect()
}

impl Snapshot {
    /// What loads but is surely a mistake (a route that can never be chosen), and what is
    /// wrong with the certificates' validity: logged when the snapshot goes into force (not
    /// at every build: a file still being written is built several times), printed by
    /// `wsgate check`.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let config = (self.config.warnings.iter())
            .chain(&self.tls_warnings)
            .map(ToString::to_string);
        config
            .chain(validity_warnings(&self.expiry, &self.config))
            .collect()
    }

    pub(crate) fn log_warnings(&self) {
        for warning in self.warnings() {
            tracing::warn!("{warning}");
        }
    }

    /// `wsgate check`'s line: what the config holds, and when the first certificate runs
    /// out (or which one already has).
    pub(crate) fn summary(&self) -> String {
        let config = &self.config;
        let admin = match config.admin {
            Some(addr) => format!(", admin on {addr}"),
            None => String::new(),
        };
        let expiry = match self.expiry.iter().min_by_key(|e| e.not_after) {
            None => String::new(),
            Some(first) if first.not_after > unix_now() => {
                format!(", certificates valid until {}", rfc3339(first.not_after))
            }
            Some(first) => format!(
                ", WARNING: certificate {} expired at {}",
                first.file.display(),
                rfc3339(first.not_after)
            ),
        };
        let summary = format!(
            "{}: ok: {} listener(s), {} certificate(s), {} route(s){admin}{expiry}",
            config.path.display(),
            config.listen.len(),
            config.certificates.len(),
            config.routes.len(),
        );
        // File names come from the config: no control character reaches the terminal.
        escape_controls(&summary)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Certificates this close to their end get a warning at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong, or soon will be, with the served certificates' validity, one line each
/// naming its file and where `config` names it: expired, expiring within [`EXPIRY_WARNING`],
/// or not valid yet (a clock or an issuer ahead of this machine's). Logged at every load and
/// printed by `wsgate check`.
fn validity_warnings(expiry: &[tls::Expiry], config: &Config) -> Vec<String> {
    let now = unix_now();
    let soon = EXPIRY_WARNING.as_secs() as i64;
    (expiry.iter())
        .filter_map(|cert| {
            let file = cert.file.display();
            let left = cert.not_after - now;
            let message = if cert.not_before > now {
                let from = rfc3339(cert.not_before);
                format!("{file}: certificate is not valid before {from}; clients will refuse it until then")
            } else if left <= 0 {
                format!("{file}: certificate has expired; clients will refuse it")
            } else if left < soon {
                let when = match left / 86400 {
                    0 => "less than a day".to_string(),
                    days => format!("{days} day(s)"),
                };
                format!("{file}: certificate expires in {when}; is its renewal working?")
            } else {
                return None;
            };
            Some((&cert.file, message))
        })
        .map(|(file, message)| {
            let entry = config.certificates.iter().find(|c| &c.cert == file);
            match entry {
                Some(c) => ConfigError::at(&config.path, &c.cert_location, message).to_string(),
                None => escape_controls(&message),
            }
        })
        .collect()
}

/// Unix seconds as an RFC 3339 time, or as the number if out of range.
fn rfc3339(unix: i64) -> String {
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

/// Hash of the files' contents; a missing file hashes as such, so its return is a change.
/// With `written`, also of when each was last written, and its size and inode: a file written
/// again with the same bytes then hashes differently.
fn fingerprint_of(files: &[PathBuf], written: bool) -> u64 {
    let files: BTreeSet<&PathBuf> = files.iter().collect();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        crate::files::read(file).ok().hash(&mut hasher);
        if written {
            write_times(file).hash(&mut hasher);
        }
    }
    hasher.finish()
}

#[cfg(unix)]
fn write_times(file: &Path) -> Option<[i64; 6]> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    let (size, inode) = (m.size() as i64, m.ino() as i64);
    Some([
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        size,
        inode,
    ])
}

#[cfg(not(unix))]
fn write_times(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// The files a snapshot built now from the config at `path` would depend on: the config file,
/// and the files it names if it parses. (Not the files of the config in force: once a reload
/// drops a certificate, that file's content must not make the same config look changed.)
fn on_disk_files(path: &Path) -> Vec<PathBuf> {
    match Config::load(path) {
        Ok(config) => config.watched_files(),
        Err(_) => vec![path.to_path_buf()],
    }
}

/// Fingerprint of the content of [`on_disk_files`]: what a snapshot built now would hold.
pub(crate) fn on_disk_fingerprint(path: &Path) -> u64 {
    fingerprint_of(&on_disk_files(path), false)
}

/// Like [`on_disk_fingerprint`], and of when the files were last written: tells whether
/// anything was written to them since, even the same bytes.
pub(crate) fn on_disk_stamp(path: &Path) -> u64 {
    fingerprint_of(&on_disk_files(path), true)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

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
