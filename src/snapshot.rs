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

use crate::config::{Config, ConfigError};
use crate::routes::RouteTable;
use crate::tls;

/// Everything a new connection needs, built and validated as one unit.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub tls: Arc<ServerConfig>,
    /// When each served certificate expires.
    pub expiry: Vec<tls::Expiry>,
    pub generation: u64,
    /// Hash of the bytes of every file the config depends on.
    pub(crate) fingerprint: u64,
}

impl Snapshot {
    /// Loads the config at `path` and everything it names.
    pub fn build(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
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
        let config = Config::load(path)?;
        let (tls, expiry) = tls::server_config(&config)?;
        warn_about_expiry(&expiry);
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let routes = RouteTable::new(&config.routes);
        Ok(Snapshot {
            config,
            routes,
            tls,
            expiry,
            generation,
            fingerprint,
        })
    }
}

/// Certificates this close to their end get a warning at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The certificates that have expired or will within [`EXPIRY_WARNING`], with the seconds
/// each has left (0 or less: expired).
pub(crate) fn expiring(expiry: &[tls::Expiry]) -> impl Iterator<Item = (&tls::Expiry, i64)> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    (expiry.iter())
        .map(move |cert| (cert, cert.not_after - now))
        .filter(|(_, left)| *left < EXPIRY_WARNING.as_secs() as i64)
}

fn warn_about_expiry(expiry: &[tls::Expiry]) {
    for (cert, left) in expiring(expiry) {
        if left <= 0 {
            tracing::warn!(file = %cert.file.display(), expired_seconds_ago = -left, "certificate has expired; clients will refuse it");
        } else {
            tracing::warn!(file = %cert.file.display(), days_left = left / 86400, "certificate expires soon; is its renewal working?");
        }
    }
}

/// Hash of the files' contents; a missing file hashes as such, so its return is a change.
/// With `written`, also of when each was last written, and its size and inode: a file written
/// again with the same bytes then hashes differently.
fn fingerprint(files: &[PathBuf], written: bool) -> u64 {
    let files: BTreeSet<&PathBuf> = files.iter().collect();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file).ok().hash(&mut hasher);
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
    fingerprint(&on_disk_files(path), false)
}

/// Like [`on_disk_fingerprint`], and of when the files were last written: tells whether
/// anything was written to them since, even the same bytes.
pub(crate) fn on_disk_stamp(path: &Path) -> u64 {
    fingerprint(&on_disk_files(path), true)
}
