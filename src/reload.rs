//! Live configuration: the [`Snapshot`] every connection reads, and the watcher that rebuilds
//! it when the config file or a certificate changes, or on SIGHUP.
//!
//! A reload builds a complete new snapshot (config parsed and validated, every PEM loaded and
//! checked, routes compiled, new listeners bound) or nothing; then it is swapped in atomically.
//! Connections take the snapshot's `Arc` when they start, so a live tunnel never sees a reload.
//!
//! The watcher follows the *folders* of the files, not their inodes: editors save by rename,
//! Kubernetes swaps a `..data` symlink, cert-manager rewrites Secrets, and an inode watch goes
//! deaf after the first of those. Any event in a watched folder triggers a debounced check, and
//! a content fingerprint skips reloads that would change nothing.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rustls::ServerConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::routes::RouteTable;
use crate::server::Shared;
use crate::tls;

/// Quiet time after the last file event before a reload: coalesces an editor's or
/// Kubernetes' burst of events into one reload, well inside the one-second promise.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Everything a new connection needs, built and validated as one unit.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub tls: Arc<ServerConfig>,
    /// When each served certificate expires.
    pub expiry: Vec<tls::Expiry>,
    pub generation: u64,
    /// Hash of the bytes of every file the config depends on.
    fingerprint: u64,
}

impl Snapshot {
    /// Loads the config at `path` and everything it names.
    pub fn build(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
        let config = Config::load(path)?;
        let (tls, expiry) = tls::server_config(&config)?;
        warn_about_expiry(&expiry);
        let routes = RouteTable::new(&config.routes);
        // Same file set as `on_disk_fingerprint` hashes when the disk matches this config.
        let fingerprint = fingerprint(&config.watched_files());
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

fn warn_about_expiry(expiry: &[tls::Expiry]) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for cert in expiry {
        let left = cert.not_after - now;
        if left <= 0 {
            tracing::warn!(file = %cert.file.display(), expired_seconds_ago = -left, "certificate has expired; clients will refuse it");
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(file = %cert.file.display(), days_left = left / 86400, "certificate expires soon; is its renewal working?");
        }
    }
}

/// Reload results, published for tests and the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// Generation of the config in force; 1 at start.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_success: Option<SystemTime>,
}

/// Hash of the files' contents; a missing file hashes as such, so its return is a change.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let files: BTreeSet<&PathBuf> = files.iter().collect();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// Why a reload was asked for: file events skip no-op changes, a manual one always reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Files,
    Manual,
}

/// Starts watching the config's folders, SIGHUP and `manual`, and reloading, until `stop`.
/// The watches are in place when this returns, so a write right after start is not missed.
pub(crate) fn spawn_watcher(
    shared: Arc<Shared>,
    path: PathBuf,
    manual: mpsc::UnboundedReceiver<()>,
    stop: CancellationToken,
) {
    let (events_tx, events) = mpsc::unbounded_channel::<()>();
    let on_event = move |event: notify::Result<notify::Event>| {
        // Our own reads of the files show up as access events: reacting to them would loop.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = events_tx.send(());
        }
    };
    let watcher = match notify::recommended_watcher(on_event) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config for changes; only SIGHUP reloads");
            None
        }
    };
    let mut state = WatchState {
        watcher,
        watched: BTreeSet::new(),
        rejected: None,
    };
    state.refresh_watches(&shared, &path);
    let hangup = hangup_signal();
    tokio::spawn(async move {
        state
            .run(&shared, &path, events, manual, hangup, stop)
            .await;
    });
}

struct WatchState {
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    /// The content of a rejected config: the same bytes are not retried (or logged) again.
    rejected: Option<u64>,
}

impl WatchState {
    async fn run(
        &mut self,
        shared: &Arc<Shared>,
        path: &Path,
        mut events: mpsc::UnboundedReceiver<()>,
        mut manual: mpsc::UnboundedReceiver<()>,
        mut hangup: Hangup,
        stop: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = events.recv() => Trigger::Files,
                Some(()) = manual.recv() => Trigger::Manual,
                Some(()) = recv_hangup(&mut hangup) => Trigger::Manual,
            };
            let trigger = match first {
                // A manual reload asked for while a burst settles is served at once.
                Trigger::Files => tokio::select! {
                    _ = stop.cancelled() => return,
                    () = debounce(&mut events) => Trigger::Files,
                    Some(()) = manual.recv() => Trigger::Manual,
                    Some(()) = recv_hangup(&mut hangup) => Trigger::Manual,
                },
                Trigger::Manual => Trigger::Manual,
            };
            reload(shared, path, trigger, &mut self.rejected).await;
            // A folder that just started being watched may have changed between the reload's
            // read and the watch: look once more (cheap: unchanged content is skipped).
            while self.refresh_watches(shared, path) {
                reload(shared, path, Trigger::Files, &mut self.rejected).await;
            }
        }
    }

    /// Watches the folder of every file the config depends on (and stops watching the rest);
    /// true if a folder is watched now that was not before.
    ///
    /// A folder that does not exist yet (a Secret mounted later, a path still to be created)
    /// is covered by watching its nearest existing ancestor, and retried on every refresh, so
    /// its creation is noticed and it is watched from then on.
    fn refresh_watches(&mut self, shared: &Shared, path: &Path) -> bool {
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        let wanted = wanted_folders(&relevant_files(shared, path));
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        self.watched.retain(|folder| wanted.contains(folder));
        let mut added = false;
        for folder in &wanted {
            if self.watched.contains(folder) {
                continue;
            }
            // Only recorded when the watch took: a failed one is tried again next time.
            match watcher.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(folder.clone());
                    added = true;
                }
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), error = %e, "cannot watch folder")
                }
            }
        }
        added
    }
}

/// Waits until no event arrived for [`DEBOUNCE`], swallowing the burst.
async fn debounce(events: &mut mpsc::UnboundedReceiver<()>) {
    // Capped: a neighbour file written more often than DEBOUNCE must not postpone forever.
    let until = tokio::time::Instant::now() + DEBOUNCE * 4;
    loop {
        let wait = until.min(tokio::time::Instant::now() + DEBOUNCE);
        match tokio::time::timeout_at(wait, events.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < until => continue,
            _ => return,
        }
    }
}

/// The folders to watch for `files`: each file's folder, and the folder of its symlink
/// target (a file reached through a symlink into another folder changes there); a folder
/// that does not exist is replaced by its nearest existing ancestor.
fn wanted_folders(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let resolved: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect();
    files
        .iter()
        .chain(&resolved)
        .filter_map(|file| {
            let absolute = absolute(file);
            absolute
                .ancestors()
                .skip(1)
                .find(|dir| dir.is_dir())
                .map(Path::to_path_buf)
        })
        .collect()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The files of the config in force plus those the file on disk names (if it parses): a
/// rejected config waiting for its missing certificate must see that certificate appear.
fn relevant_files(shared: &Shared, path: &Path) -> Vec<PathBuf> {
    let mut files = shared.current().config.watched_files();
    if let Ok(candidate) = Config::load(path) {
        files.extend(candidate.watched_files());
    }
    files
}

/// Fingerprint of the config on disk and the files it names: what a snapshot built now would
/// depend on. (Not the files of the config in force: once a reload drops a certificate, that
/// file's content must not make the same config look changed.)
fn on_disk_fingerprint(path: &Path) -> u64 {
    match Config::load(path) {
        Ok(config) => fingerprint(&config.watched_files()),
        Err(_) => fingerprint(&[path.to_path_buf()]),
    }
}

/// Builds and applies a new snapshot, or keeps the current one and says why.
async fn reload(shared: &Arc<Shared>, path: &Path, trigger: Trigger, rejected: &mut Option<u64>) {
    let current = shared.current();
    let generation = current.generation + 1;
    let previously_rejected = *rejected;
    let path = path.to_path_buf();
    // Reading files and parsing PEM is blocking work: keep it off the threads that accept.
    let built = tokio::task::spawn_blocking(move || {
        let on_disk = on_disk_fingerprint(&path);
        let unchanged = on_disk == current.fingerprint || Some(on_disk) == previously_rejected;
        if trigger == Trigger::Files && unchanged {
            return (on_disk, None);
        }
        // The hash taken before reading: a write landing during the build then still looks
        // like a change afterwards, and is applied by its own event.
        let built = Snapshot::build(&path, generation).map(|mut snapshot| {
            snapshot.fingerprint = on_disk;
            snapshot
        });
        (on_disk, Some(built))
    })
    .await;
    // `remember`: the content to skip until it changes, for rejections the content decides.
    let (remember, result) = match built {
        Ok((_, None)) => {
            tracing::debug!("config files touched but their content did not change; nothing to do");
            return;
        }
        // An address that cannot be bound is the machine's state, not the file's: once the
        // port is free, touching the file (or SIGHUP) must retry the very same content.
        Ok((_, Some(Ok(snapshot)))) => (
            None,
            shared.apply(snapshot).await.map_err(|e| e.to_string()),
        ),
        Ok((on_disk, Some(Err(e)))) => (Some(on_disk), Err(e.to_string())),
        Err(e) => (None, Err(format!("reload task failed: {e}"))),
    };
    shared.reload_status.send_modify(|status| match result {
        Ok(()) => {
            *rejected = None;
            status.generation = generation;
            status.successes += 1;
            status.last_success = Some(SystemTime::now());
            shared.metrics.reloaded(status, true);
            tracing::info!(generation, "config reloaded");
        }
        Err(error) => {
            *rejected = remember;
            status.failures += 1;
            shared.metrics.reloaded(status, false);
            tracing::error!(generation = status.generation, %error, "config reload rejected; the current config stays in force");
            status.last_error = Some(error);
        }
    });
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(unix)]
async fn recv_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
