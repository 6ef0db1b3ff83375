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
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use rustls::ServerConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LogFormat, WatchMode};
use crate::routes::RouteTable;
use crate::server::{lock, Shared};
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
        Self::build_hashed(path, generation, on_disk_fingerprint(path))
    }

    /// Like `build`, with the files' fingerprint taken by the caller *before* reading: a
    /// write landing during the build then still looks like a change afterwards, and is
    /// applied by its own event (never hidden under this hash).
    fn build_hashed(
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

/// Reload results, published for tests and the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// Generation of the config in force; 1 at start.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    /// Why the files on disk are not in force, if they are not: set by a rejection, cleared
    /// by a successful reload or by the files going back to the config in force.
    pub last_error: Option<String>,
    pub last_success: Option<SystemTime>,
    /// Times the watcher looked at the files, whatever it found (a change, a rejection, the
    /// same content), and watched their folders again: lets a test await "the watcher has
    /// seen this event, and will see the next one".
    pub checks: u64,
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

/// Starts watching the config's folders, SIGHUP (`hangup`, registered by the caller before
/// anything else, so a SIGHUP during start-up cannot kill the process) and `manual`, and
/// reloading, until `stop`. The watches are in place when this returns, and the files are
/// checked once more right after, so a write during start-up is not missed.
pub(crate) fn spawn_watcher(
    shared: Arc<Shared>,
    path: PathBuf,
    manual: mpsc::UnboundedReceiver<()>,
    hangup: Hangup,
    stop: CancellationToken,
) {
    let (events_tx, events) = mpsc::unbounded_channel::<()>();
    let lost = Arc::new(Mutex::new(BTreeSet::new()));
    let on_event = {
        let lost = lost.clone();
        let events_tx = events_tx.clone();
        move |event: notify::Result<notify::Event>| {
            match event {
                // Our own reads of the files show up as access events: reacting would loop.
                // A writer closing a file it wrote is news: its last write is done.
                Ok(e)
                    if matches!(e.kind, EventKind::Access(a)
                        if a != AccessKind::Close(AccessMode::Write)) =>
                {
                    return
                }
                // A watched folder deleted or renamed takes its watch with it (the watch
                // follows the inode): remember the paths, so the next refresh watches anew.
                Ok(e)
                    if matches!(
                        e.kind,
                        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) =>
                {
                    lock(&lost).extend(e.paths);
                }
                Ok(_) => {}
                // Events may have been lost with it (a queue overflow, say): look anyway.
                Err(e) => tracing::warn!(error = %e, "file watch error; checking the config files"),
            }
            let _ = events_tx.send(());
        }
    };
    let make_watcher = move || notify::recommended_watcher(on_event.clone());
    let mut state = WatchState::new(Box::new(make_watcher), lost);
    if watch_mode(&shared) == WatchMode::Poll {
        tracing::info!("reload.watch = \"poll\": checking the config files every second");
    }
    state.refresh_watches(Some(wanted_now(&shared, &path)), watch_mode(&shared));
    // Covers writes between the start-up read and the watches taking.
    let _ = events_tx.send(());
    tokio::spawn(async move {
        state
            .run(&shared, &path, events, manual, hangup, stop)
            .await;
    });
}

/// A folder's identity: a folder deleted and made again, or swapped by rename, is a new one
/// at the same path, and needs a new watch.
#[cfg(unix)]
fn folder_id(folder: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(folder).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn folder_id(folder: &Path) -> Option<(u64, u64)> {
    folder.is_dir().then_some((0, 0))
}

/// How often the files are checked while a wanted folder cannot be watched (or there is no
/// watcher at all): the one-second promise holds, at the cost of reading a few small files.
const POLL: Duration = Duration::from_secs(1);

/// How often the files are checked even while every folder is watched: a watch can die
/// without an event (its file system unmounted and mounted again, an event queue overflow
/// notify does not report), and this bounds how long such a loss can go unnoticed.
const RECHECK: Duration = Duration::from_secs(60);

type MakeWatcher = Box<dyn FnMut() -> notify::Result<RecommendedWatcher> + Send + Sync>;

struct WatchState {
    watcher: Option<RecommendedWatcher>,
    make_watcher: MakeWatcher,
    /// Watched folders and the identity each had when its watch was taken.
    watched: BTreeMap<PathBuf, Option<(u64, u64)>>,
    /// Paths reported deleted or renamed since the last refresh (filled by the watcher).
    lost: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// A wanted folder could not be watched (or there is no watcher): poll until it can.
    degraded: bool,
    /// Folders whose watch failed, already reported.
    unwatchable: BTreeSet<PathBuf>,
    /// The content of a rejected config: the same bytes are not retried (or logged) again.
    rejected: Option<u64>,
    /// Content that failed to bind, and why: retried on every event (the port may have been
    /// freed), but the same failure again is not logged or counted again.
    unbindable: Option<(u64, String)>,
}

impl WatchState {
    fn new(make_watcher: MakeWatcher, lost: Arc<Mutex<BTreeSet<PathBuf>>>) -> WatchState {
        WatchState {
            // Made when events are wanted (not in poll mode, which takes no inotify instance).
            watcher: None,
            make_watcher,
            watched: BTreeMap::new(),
            lost,
            degraded: false,
            unwatchable: BTreeSet::new(),
            rejected: None,
            unbindable: None,
        }
    }

    async fn run(
        &mut self,
        shared: &Arc<Shared>,
        path: &Path,
        mut events: mpsc::UnboundedReceiver<()>,
        mut manual: mpsc::UnboundedReceiver<()>,
        mut hangup: Hangup,
        stop: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = events.recv() => Wake::Event,
                Some(()) = manual.recv() => Wake::Manual,
                Some(()) = recv_hangup(&mut hangup) => Wake::Manual,
                _ = poll.tick(), if self.degraded => Wake::Poll,
                _ = recheck.tick(), if !self.degraded => Wake::Poll,
            };
            let trigger = match first {
                // A manual reload asked for while a burst settles is served at once.
                Wake::Event => tokio::select! {
                    _ = stop.cancelled() => return,
                    () = debounce(&mut events) => Trigger::Files,
                    Some(()) = manual.recv() => Trigger::Manual,
                    Some(()) = recv_hangup(&mut hangup) => Trigger::Manual,
                },
                Wake::Poll => Trigger::Files,
                Wake::Manual => Trigger::Manual,
            };
            if !self
                .reload_settled(shared, path, trigger, &mut events, &stop)
                .await
            {
                return;
            }
            // A folder that just started being watched may have changed between the reload's
            // read and the watch: look once more (cheap: unchanged content is skipped).
            while self.refresh_watches(self.wanted_in(shared, path).await, watch_mode(shared)) {
                if !self
                    .reload_settled(shared, path, Trigger::Files, &mut events, &stop)
                    .await
                {
                    return;
                }
            }
            // Counted once the watches are in place again: from here on, a change is seen.
            shared
                .reload_status
                .send_modify(|status| status.checks += 1);
        }
    }

    /// [`Self::reload`], again after a pause while the files change under it; false if
    /// `stop` came first.
    /// Files that never hold still (rewritten nonstop) are taken as they were last read after
    /// [`MAX_REREADS`] tries, about three seconds, so a change still takes effect.
    async fn reload_settled(
        &mut self,
        shared: &Arc<Shared>,
        path: &Path,
        trigger: Trigger,
        events: &mut mpsc::UnboundedReceiver<()>,
        stop: &CancellationToken,
    ) -> bool {
        for tries_left in (0..MAX_REREADS).rev() {
            let patience = match tries_left {
                0 => Patience::TakeAsRead,
                _ => Patience::WaitForStill,
            };
            if self.reload(shared, path, trigger, patience, events).await == Read::Settled {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
        true
    }

    /// [`Self::wanted`], unless the config in force polls: then no folder is watched, and
    /// every poll would read the config a second time for nothing.
    async fn wanted_in(&self, shared: &Arc<Shared>, path: &Path) -> Option<Wanted> {
        match watch_mode(shared) {
            WatchMode::Poll => Some(Wanted::new()),
            WatchMode::Events => self.wanted(shared, path).await,
        }
    }

    /// The folders to watch now, found off the async threads: it reads the config and looks
    /// at folders, which may sit on a slow mount, and accepting must not wait for that.
    async fn wanted(&self, shared: &Arc<Shared>, path: &Path) -> Option<Wanted> {
        let (shared, path) = (shared.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || wanted_now(&shared, &path))
            .await
            .ok()
    }

    /// Watches the `wanted` folders (and stops watching the rest); true if a folder is watched
    /// now that was not before, or is watched anew because it was replaced (deleted and made
    /// again, or swapped by rename). `None` (the lookup failed) changes nothing.
    ///
    /// A folder that does not exist yet (a Secret mounted later, a path still to be created)
    /// is covered by watching its nearest existing ancestor, and retried on every refresh, so
    /// its creation is noticed and it is watched from then on.
    fn refresh_watches(&mut self, wanted: Option<Wanted>, mode: WatchMode) -> bool {
        let Some(wanted) = wanted else {
            return false;
        };
        let lost = std::mem::take(&mut *lock(&self.lost));
        if mode == WatchMode::Poll {
            // Events would only duplicate the polling (or never come: that is why it is on);
            // dropping the watcher gives back its inotify instance.
            self.watcher = None;
            self.watched.clear();
            self.degraded = true;
            return false;
        }
        if self.watcher.is_none() {
            match (self.make_watcher)() {
                Ok(watcher) => self.watcher = Some(watcher),
                // Said once: later refreshes try again quietly, polling meanwhile.
                Err(e) if !self.degraded => {
                    tracing::error!(error = %e, "cannot watch the config for changes; checking it every second instead");
                }
                Err(_) => {}
            }
        }
        let Some(watcher) = self.watcher.as_mut() else {
            self.degraded = true;
            return false;
        };
        for gone in self.watched.keys().filter(|f| !wanted.contains_key(*f)) {
            let _ = watcher.unwatch(gone);
        }
        self.watched.retain(|folder, _| wanted.contains_key(folder));
        let mut added = false;
        self.degraded = false;
        for (folder, &id) in &wanted {
            if let Some(known) = self.watched.get(folder) {
                if *known == id && !lost.contains(folder) {
                    continue;
                }
                // Replaced: the old watch follows the old folder (or died with it).
                let _ = watcher.unwatch(folder);
                self.watched.remove(folder);
            }
            // Only recorded when the watch took: a failed one is polled for and tried again.
            match watcher.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(folder.clone(), id);
                    added = true;
                }
                Err(e) => {
                    self.degraded = true;
                    // Gone since it was looked up (a Kubernetes volume's folder replaced by
                    // the next update): nothing wrong, the poll finds what replaced it.
                    let vanished = matches!(e.kind, notify::ErrorKind::PathNotFound);
                    // Said once per folder, not on every poll while it lasts.
                    if !vanished && self.unwatchable.insert(folder.clone()) {
                        tracing::warn!(folder = %folder.display(), error = %e, "cannot watch folder; checking it every second instead");
                    }
                }
            }
        }
        self.unwatchable
            .retain(|folder| !self.watched.contains_key(folder));
        added
    }
}

/// How the config in force asks for its files to be watched.
fn watch_mode(shared: &Shared) -> WatchMode {
    shared.current().config.watch
}

/// Folders to watch, each with its identity when looked at.
type Wanted = BTreeMap<PathBuf, Option<(u64, u64)>>;

fn wanted_now(shared: &Shared, path: &Path) -> Wanted {
    let folders = wanted_folders(&relevant_files(shared, path));
    folders
        .into_iter()
        .map(|folder| {
            let id = folder_id(&folder);
            (folder, id)
        })
        .collect()
}

/// Whether `error`, the failure to build the config at `path`, is only that a certificate or
/// key file the config `in_force` serves is clearly not there (a dangling link included):
/// what is gone, and an error naming it and its config line. `None` for any other failure,
/// so a real mistake saved in the same moment is still reported as one.
fn served_file_gone(
    path: &Path,
    in_force: &Config,
    error: &ConfigError,
) -> Option<(&'static str, String)> {
    let config = Config::load(path).ok()?;
    let served =
        |file: &Path| (in_force.certificates.iter()).any(|c| c.cert == file || c.key == file);
    config.certificates.iter().find_map(|c| {
        [
            ("certificate file", &c.cert, &c.cert_location),
            ("key file", &c.key, &c.key_location),
        ]
        .into_iter()
        .find(|(_, file, at)| {
            error.location.as_ref() == Some(*at)
                && served(file)
                && matches!(file.try_exists(), Ok(false))
        })
        .map(|(what, file, at)| {
            let gone = ConfigError::at(path, at, format!("{} not found", file.display()));
            (what, gone.to_string())
        })
    })
}

/// What a look at the files found.
enum Look {
    /// The content in force: nothing to do.
    InForce,
    /// The content last rejected: not tried (or logged) again.
    StillRejected,
    /// The config file, or a certificate or key file it serves, is not there (deleted, to
    /// be written again): what is gone, the error naming it, and the files' fingerprint if
    /// they were read (the same files are then not built again while it lasts).
    Missing(&'static str, String, Option<u64>),
    /// Something new, built (or not): its fingerprint, whether the disk held still while it
    /// was read, and the result.
    Built(u64, bool, Box<Result<Snapshot, ConfigError>>),
}

/// The log format the process logs in, and whether `--log-format` chose it, as set up at
/// start (the logger is the process's, set up once): what a reload's `proxy.log_format` is
/// compared with.
static LOGGING: OnceLock<(LogFormat, bool)> = OnceLock::new();

/// Tells reloads the log format logging was set up with, and whether the command line chose
/// it (then the config's key does not matter).
pub fn logging_set_up(format: LogFormat, by_flag: bool) {
    let _ = LOGGING.set((format, by_flag));
}

/// A reload set `proxy.log_format` to `format`: say so if it is not the format in use,
/// rather than seem to ignore the key.
fn log_format_changed(format: LogFormat) {
    if let Some(&(in_use, false)) = LOGGING.get() {
        if format != in_use {
            let log_format = match format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            };
            tracing::warn!(log_format, "proxy.log_format is read at start only: the log format stays as it is until wsgate is restarted");
        }
    }
}

/// How many times files that change while being read are read again (every [`DEBOUNCE`])
/// before what was read is taken as it is.
const MAX_REREADS: usize = 20;

/// What a reload does with files that changed while it read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Patience {
    /// Nothing: read them again shortly.
    WaitForStill,
    /// Take what was read (they never held still).
    TakeAsRead,
}

/// Whether a reload read files that held still.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Settled,
    /// Written to while being read: nothing was applied, read them again shortly.
    Unsettled,
}

/// What a look at the files came to.
enum Outcome {
    /// Nothing new: the same rejected content, or the same bind failure.
    Nothing,
    /// The files changed while being read: nothing decided, read again shortly.
    Unsettled,
    /// A file is gone (the config file, or a certificate or key: the first names it, the
    /// error says which): the config in force stays, and nothing is counted (it is usually
    /// about to be written again).
    Missing(&'static str, String),
    /// The files hold the config in force (again).
    InForce,
    Applied,
    Rejected(String),
}

/// What woke the watcher.
enum Wake {
    Event,
    Manual,
    Poll,
}

/// Whether a file event arrives within [`DEBOUNCE`].
async fn written_again(events: &mut mpsc::UnboundedReceiver<()>) -> bool {
    matches!(
        tokio::time::timeout(DEBOUNCE, events.recv()).await,
        Ok(Some(()))
    )
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

/// The folders to watch for `files`: the folder of each file, and of every symlink met on the
/// way to it (the file itself, a folder above it, or a link its target goes through), so
/// repointing any of them is seen (`..data` in a Kubernetes volume, a `current -> releases/N`
/// folder). A folder that does not exist is replaced by its nearest existing ancestor.
///
/// Each folder is named by its real path: one folder watched under two names would have one
/// name's unwatch end the other's watch.
fn wanted_folders(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .flat_map(|file| {
            let mut paths = paths_through_links(&absolute(file));
            // The folder the file really sits in, however the links lead there.
            paths.extend(std::fs::canonicalize(file).ok());
            paths
        })
        .filter_map(|path| {
            let folder = path.ancestors().skip(1).find(|dir| dir.is_dir())?;
            Some(std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf()))
        })
        .collect()
}

/// `path`, and each symlink on it (the path itself or a folder above it) with, for every such
/// link, the path it leads to (followed in turn, at most [`MAX_LINKS`] links: a cycle ends).
fn paths_through_links(path: &Path) -> Vec<PathBuf> {
    let mut found = vec![path.to_path_buf()];
    let mut link_paths: Vec<PathBuf> = Vec::new();
    let (mut next, mut links) = (0, 0);
    while next < found.len() && links < MAX_LINKS {
        let current = found[next].clone();
        next += 1;
        for link in current.ancestors().filter(|a| a.is_symlink()) {
            let (Some(folder), Ok(target)) = (link.parent(), std::fs::read_link(link)) else {
                continue;
            };
            links += 1;
            let mut leads_to = folder.join(target);
            // Not `join("")`: a trailing '/' would make the next link look like a folder.
            match current.strip_prefix(link) {
                Ok(rest) if !rest.as_os_str().is_empty() => leads_to.push(rest),
                _ => {}
            }
            if !found.contains(&leads_to) {
                found.push(leads_to);
            }
            // The link itself is watched through its folder, which [`wanted_folders`] takes
            // from each path returned; it is not followed again (its target is, above).
            if !link_paths.iter().any(|l| l == link) {
                link_paths.push(link.to_path_buf());
            }
        }
    }
    found.extend(link_paths);
    found
}

/// Links followed per file, as the kernel's own limit on a path.
const MAX_LINKS: usize = 40;

pub(crate) fn absolute(path: &Path) -> PathBuf {
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

impl WatchState {
    /// Builds and applies a new snapshot, or keeps the current one and says why.
    async fn reload(
        &mut self,
        shared: &Arc<Shared>,
        path: &Path,
        trigger: Trigger,
        patience: Patience,
        events: &mut mpsc::UnboundedReceiver<()>,
    ) -> Read {
        let current = shared.current();
        let generation = current.generation + 1;
        let format_in_force = current.config.log_format;
        // Events so far are of writes this read will see: only one arriving from now on says
        // the files were written to again (see `written_again` below).
        while events.try_recv().is_ok() {}
        let previously_rejected = self.rejected;
        let path = path.to_path_buf();
        // Reading files and parsing PEM is blocking work: keep it off the threads that accept.
        let look = tokio::task::spawn_blocking(move || {
            // Between a delete and the new file (`rm; cp`, a deploy script): nothing to try.
            // Only a clear "not there" (a dangling link included): an unreadable folder is an
            // error to report, not a file to wait for.
            if trigger == Trigger::Files && matches!(path.try_exists(), Ok(false)) {
                let error = format!("{}: config file not found", path.display());
                return Look::Missing("config file", error, None);
            }
            let on_disk = on_disk_fingerprint(&path);
            if trigger == Trigger::Files && on_disk == current.fingerprint {
                return Look::InForce;
            }
            if trigger == Trigger::Files && Some(on_disk) == previously_rejected {
                return Look::StillRejected;
            }
            let built = Snapshot::build_hashed(&path, generation, on_disk);
            // A served certificate renewed by `rm; cp` is gone for a moment, like a config
            // file written that way: wait for it rather than count a failure. A file the
            // config in force does not serve is a mistake in the new config: rejected. (SIGHUP
            // reports either: someone asked, and gets the error.)
            if let (Trigger::Files, Err(e)) = (trigger, &built) {
                if let Some((what, error)) = served_file_gone(&path, &current.config, e) {
                    return Look::Missing(what, error, Some(on_disk));
                }
            }
            // Files written to while they were read: a failed build may be a file caught
            // mid-write (not a mistake to report), and a good one may mix old and new files,
            // or hold a valid prefix of a file still being written (not to be applied).
            let settled = on_disk_fingerprint(&path) == on_disk;
            Look::Built(on_disk, settled, Box::new(built))
        })
        .await;
        // A file read between two writes of a writer that pauses between them (in place,
        // piece by piece) may fail to build though it held still while it was read: a failure
        // is reported only if no write follows within a debounce's time (a file rewritten
        // nonstop is reported once it holds still: only then is its error its content's).
        let still_being_written = match &look {
            Ok(Look::Built(_, _, built)) if built.is_err() && trigger == Trigger::Files => {
                written_again(events).await
            }
            _ => false,
        };
        let outcome = match look {
            Ok(Look::Built(..)) if still_being_written => {
                tracing::debug!(
                    "config files written to again after a failed read; reading them again"
                );
                Outcome::Unsettled
            }
            Ok(Look::InForce) => {
                tracing::debug!("config files touched but their content did not change");
                // Back to what is in force: a rejected content saved again is news again.
                self.rejected = None;
                self.unbindable = None;
                Outcome::InForce
            }
            Ok(Look::StillRejected) => Outcome::Nothing,
            Ok(Look::Missing(what, error, seen)) => {
                // Whatever comes back is news, a content rejected before included; files
                // that still lack the same file are not built again (a poll every second).
                self.rejected = seen;
                Outcome::Missing(what, error)
            }
            Ok(Look::Built(_, false, _)) if patience == Patience::WaitForStill => {
                // Good or bad, what was read may be no file's finished content.
                tracing::debug!("config files changed while being read; reading them again");
                Outcome::Unsettled
            }
            Ok(Look::Built(on_disk, settled, built)) => match *built {
                Ok(snapshot) => {
                    if !settled {
                        tracing::warn!("config files kept changing while being read; applying them as last read");
                    }
                    self.rejected = None;
                    let format = snapshot.config.log_format;
                    let outcome = self.apply(shared, snapshot, on_disk, trigger).await;
                    if matches!(outcome, Outcome::Applied) && format != format_in_force {
                        log_format_changed(format);
                    }
                    outcome
                }
                Err(e) => {
                    self.rejected = settled.then_some(on_disk);
                    // Something else was saved since: that content failing to bind again
                    // would be news again.
                    self.unbindable = None;
                    Outcome::Rejected(e.to_string())
                }
            },
            Err(e) => Outcome::Rejected(format!("reload task failed: {e}")),
        };
        let read = match outcome {
            Outcome::Unsettled => Read::Unsettled,
            _ => Read::Settled,
        };
        self.record(shared, generation, outcome);
        read
    }

    /// Swaps `snapshot` in, binding its new listeners; nothing new if it failed to bind exactly
    /// as the last file-triggered try of this content did (not logged or counted again).
    async fn apply(
        &mut self,
        shared: &Arc<Shared>,
        snapshot: Snapshot,
        on_disk: u64,
        trigger: Trigger,
    ) -> Outcome {
        // An address that cannot be bound is the machine's state, not the file's: the very
        // same content is retried on the next event (the port may be free by then).
        let Err(e) = shared.apply(snapshot).await else {
            return Outcome::Applied;
        };
        let failure = (on_disk, e.to_string());
        if trigger == Trigger::Files && self.unbindable.as_ref() == Some(&failure) {
            tracing::debug!(error = %failure.1, "still cannot bind; the current config stays in force");
            return Outcome::Nothing;
        }
        self.unbindable = Some(failure);
        Outcome::Rejected(e.to_string())
    }

    /// Publishes what a look at the files came to and logs it.
    fn record(&mut self, shared: &Shared, generation: u64, outcome: Outcome) {
        shared.reload_status.send_modify(|status| {
            match outcome {
                Outcome::Nothing | Outcome::Unsettled => {}
                Outcome::Missing(what, error) => {
                    if status.last_error.as_ref() != Some(&error) {
                        tracing::warn!(generation = status.generation, %error, "{what} gone; the current config stays in force until it is back");
                        status.last_error = Some(error);
                    }
                }
                Outcome::InForce => {
                    // Said once, so the last line about reloads is not a stale error.
                    if status.last_error.take().is_some() {
                        tracing::info!(generation = status.generation, "config files are back to the config in force");
                    }
                }
                Outcome::Applied => {
                    self.rejected = None;
                    self.unbindable = None;
                    status.last_error = None;
                    status.generation = generation;
                    status.successes += 1;
                    status.last_success = Some(SystemTime::now());
                    shared.metrics.reloaded(status, true);
                    tracing::info!(generation, "config reloaded");
                }
                Outcome::Rejected(error) => {
                    status.failures += 1;
                    shared.metrics.reloaded(status, false);
                    tracing::error!(generation = status.generation, %error, "config reload rejected; the current config stays in force");
                    status.last_error = Some(error);
                }
            }
            shared.metrics.files_in_force(status.last_error.is_none());
        });
    }
}

#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = Option<()>;

/// SIGHUP, taken over from its default action (ending the process) from now on.
#[cfg(unix)]
pub(crate) fn hangup_signal() -> Hangup {
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
pub(crate) fn hangup_signal() -> Hangup {
    None
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The folders watched for `file` under `root`, relative to it.
    fn watched(root: &Path, file: &str) -> BTreeSet<String> {
        let real = std::fs::canonicalize(root).unwrap();
        wanted_folders(&[root.join(file)])
            .iter()
            .map(|f| f.strip_prefix(&real).unwrap().display().to_string())
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_folder_a_chain_of_links_passes_through_is_watched() {
        // certbot: live/cert.pem -> ../archive/v3/cert.pem, and a config naming it through
        // one more link of its own.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["etc", "live", "archive/v3"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        std::fs::write(root.join("archive/v3/cert.pem"), "x").unwrap();
        symlink("../archive/v3/cert.pem", root.join("live/cert.pem")).unwrap();
        symlink("../live/cert.pem", root.join("etc/tls.crt")).unwrap();
        assert_eq!(
            watched(root, "etc/tls.crt"),
            set(&["etc", "live", "archive/v3"])
        );
    }

    #[test]
    fn a_linked_folder_is_watched_where_the_link_is_and_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases/7")).unwrap();
        std::fs::write(root.join("releases/7/wsgate.toml"), "x").unwrap();
        symlink("releases/7", root.join("current")).unwrap();
        assert_eq!(
            watched(root, "current/wsgate.toml"),
            set(&["", "releases/7"])
        );
    }

    #[test]
    fn poll_mode_holds_no_watch_and_events_mode_takes_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let wanted: Wanted = [(dir.path().to_path_buf(), folder_id(dir.path()))].into();
        let mut state = quiet_watch_state();
        assert!(state.refresh_watches(Some(wanted.clone()), WatchMode::Events));
        assert!(state.watcher.is_some() && !state.degraded && state.watched.len() == 1);
        assert!(!state.refresh_watches(Some(wanted.clone()), WatchMode::Poll));
        assert!(state.watcher.is_none() && state.degraded && state.watched.is_empty());
        assert!(state.refresh_watches(Some(wanted), WatchMode::Events));
        assert!(state.watcher.is_some() && !state.degraded && state.watched.len() == 1);
    }

    fn quiet_watch_state() -> WatchState {
        let make = || notify::recommended_watcher(|_: notify::Result<notify::Event>| {});
        WatchState::new(Box::new(make), Arc::default())
    }

    #[test]
    fn a_folder_that_cannot_be_watched_is_polled_and_reported_once_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        // Under a plain file: not a folder that can be watched, whoever asks.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let bad = blocked.join("tls");
        let mut state = quiet_watch_state();
        let wanted: Wanted = [(bad.clone(), None)].into();
        assert!(!state.refresh_watches(Some(wanted.clone()), WatchMode::Events));
        assert!(state.degraded && state.unwatchable.contains(&bad));
        // Polled meanwhile: the same failure again is already reported.
        assert!(!state.refresh_watches(Some(wanted), WatchMode::Events));
        assert_eq!(state.unwatchable.len(), 1);
        // Once it can be watched, it is, and a later failure would be news again.
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir_all(&bad).unwrap();
        let wanted: Wanted = [(bad.clone(), folder_id(&bad))].into();
        assert!(state.refresh_watches(Some(wanted), WatchMode::Events));
        assert!(!state.degraded && state.unwatchable.is_empty());
    }

    #[test]
    fn a_folder_gone_before_its_watch_is_polled_for_without_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("..2026_12_02_05_00_00.1");
        let mut state = quiet_watch_state();
        assert!(!state.refresh_watches(Some([(gone, None)].into()), WatchMode::Events));
        assert!(state.degraded && state.unwatchable.is_empty());
    }

    #[test]
    fn a_cycle_of_links_ends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert_eq!(watched(root, "a"), set(&[""]));
        assert!(paths_through_links(&root.join("a")).len() <= MAX_LINKS + 3);
    }
}
