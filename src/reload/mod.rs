//! Live configuration: the reloader that rebuilds the [`Snapshot`] when the config file or a
//! file it names changes (noticed by [`crate::watch`]), on SIGHUP, or on a poll, and swaps it
//! in.
//!
//! A reload builds a complete new snapshot (config parsed and validated, every PEM loaded and
//! checked, routes compiled, new listeners bound) or nothing; then it is swapped in atomically.
//! A connection takes the snapshot's `Arc` when it is accepted and again for its request, and
//! a tunnel keeps what its request had, so a live tunnel never sees a reload.
//! Bursts of events are debounced into one look, a content fingerprint skips reloads that would
//! change nothing, and files caught mid-write are read again rather than applied or reported.
//!
//! Layout: `look` is what a look at the files finds (blocking work, run off the async
//! threads; whether they changed is told by [`crate::fingerprint`], of which the [`Snapshot`]
//! keeps the files' it was built from); `decide` what to do about what it found; `memory`
//! what failed and what was said about it, as pure rules; `renew` the renewal of the
//! certificates in force while the file on disk is not going into force; `status` what is
//! published about reloads, and the log line with it. This module is the state machine
//! around them: when to look, and what becomes of each look (published, logged, and the
//! certificates in force renewed when the files on disk are not going into force). A SIGHUP
//! is served at once, unless a file was written a moment before it (then after the files
//! have held still).
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

mod decide;
mod look;
mod memory;
mod renew;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WatchMode};
use crate::server::Shared;
use crate::signals::{recv_hangup, Hangup};
use crate::tls;
use crate::watch::{self, Events, Wanted, Watches};
use look::{holds_still, look, Look, Patience};
use memory::Memory;
use status::publish;
pub use status::ReloadStatus;

/// Quiet time after the last file event before a reload: coalesces an editor's or
/// Kubernetes' burst of events into one reload, well inside the one-second promise.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Why a reload was asked for: file events skip no-op changes, a manual one always reloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Files,
    Manual,
}

/// [`Watches::refresh`] off the async threads: notify's watch and unwatch wait for its own
/// thread to add the watch, which resolves the path, so a folder on a hung mount would hold
/// an async thread (with `--threads 1`, every connection) until it answers.
async fn refresh_off_thread(
    watches: &mut Option<Watches>,
    wanted: Option<Wanted>,
    mode: WatchMode,
) -> bool {
    let Some(mut taken) = watches.take() else {
        return false;
    };
    let refreshed = tokio::task::spawn_blocking(move || {
        let added = taken.refresh(wanted, mode);
        (taken, added)
    });
    match refreshed.await {
        Ok((taken, added)) => {
            *watches = Some(taken);
            added
        }
        // It panicked (said by the panic hook): no watches from here on, the files polled.
        Err(_) => false,
    }
}

/// Starts watching the config's folders, SIGHUP (`hangup`, registered by the caller before
/// anything else, so a SIGHUP during start-up cannot kill the process) and `manual`, and
/// reloading, until `stop`. The watches are in place when this returns, and the files are
/// checked once more right after, so a write during start-up is not missed.
pub(crate) async fn spawn_reloader(
    shared: Arc<Shared>,
    path: PathBuf,
    manual: mpsc::UnboundedReceiver<()>,
    hangup: Hangup,
    stop: CancellationToken,
) {
    let (events_tx, events) = tokio::sync::watch::channel(());
    let mut state = Reloader {
        shared,
        path,
        events,
        asks: Asks {
            manual,
            hangup,
            asked: 0,
        },
        stop,
        watches: Some(Watches::new(events_tx.clone())),
        memory: Memory::default(),
        short_of_files: None,
        retrying: false,
        // What runs before any config asks: said only if the config asks otherwise.
        mode: WatchMode::Events,
        renewals_deferred: 0,
        owed: false,
        unsettled_said: None,
        unsettled_files_said: false,
    };
    state.announce_mode(state.watch_mode());
    // `wanted` says which files are mounts of their own as it looks them up; a config that
    // polls takes no watches, so the files of the config in force (just read) are looked at
    // here, off the async threads (they may sit on a slow mount), without reading it again.
    if state.watch_mode() == WatchMode::Poll {
        let files = state.shared.current().config.watched_files();
        // It panicked (said by the panic hook): only a warning is missing.
        let _ = tokio::task::spawn_blocking(move || watch::say_own_mounts(&files)).await;
    }
    let (wanted, mode) = (state.wanted().await, state.watch_mode());
    refresh_off_thread(&mut state.watches, wanted, mode).await;
    // Covers writes between the start-up read and the watches taking.
    events_tx.send_replace(());
    tokio::spawn(async move {
        // Shutting down: the watches and the shared state went with the reloader. A SIGHUP
        // from here on (a deploy hook's, say) does nothing, and the log says so rather than
        // seem to lose it, until the runtime ends with the process.
        let mut hangup = state.run().await;
        if hangup.is_none() {
            return;
        }
        while recv_hangup(&mut hangup).await.is_some() {
            tracing::info!("SIGHUP: not reloading, shutting down");
        }
    });
}

/// How often the files are checked while a wanted folder cannot be watched (or there is no
/// watcher at all), at the cost of reading a few small files: with the [`DEBOUNCE`] a good
/// read waits to see them hold still, a change is in force within a second of its write.
pub(crate) const POLL: Duration = Duration::from_millis(600);

/// How many times files that change while being read are read again (every [`DEBOUNCE`])
/// before what was read is taken as it is.
const MAX_REREADS: usize = 10;

/// The reloader: what it serves and listens to, and its memory between looks at the files.
struct Reloader {
    shared: Arc<Shared>,
    /// The config file, as given on the command line.
    path: PathBuf,
    /// Changes in the watched folders.
    events: Events,
    asks: Asks,
    stop: CancellationToken,
    /// `None` only if a refresh panicked: then the files are polled for.
    watches: Option<Watches>,
    /// What failed, and what was said about it.
    memory: Memory,
    /// The last look could not read the files for want of open files: look again after a
    /// [`POLL`], not at the next recheck, as what asked for that look (a SIGHUP that could
    /// not be served is served once the files can be read).
    short_of_files: Option<Trigger>,
    /// This look retries one the shortage stopped (not a new SIGHUP): it is not announced
    /// again.
    retrying: bool,
    /// How the files are watched for changes now.
    mode: WatchMode,
    /// Renewals in a row left to the look a write since brings.
    renewals_deferred: u8,
    /// A SIGHUP (or manual reload) whose tries ran out while the files kept changing: owed
    /// its answer, which the next look gives (as one asked for by hand) once they hold still.
    owed: bool,
    /// The count of asks by hand when the files kept changing under one was last said: said
    /// once per ask, not at every round of tries while they go on changing.
    unsettled_said: Option<u64>,
    /// Files kept changing through the last try of a look their events brought, said since
    /// a look last settled: once per run of writes, not every round while a writer goes on.
    unsettled_files_said: bool,
}

impl Reloader {
    /// Serves until `stop`; then gives back SIGHUP, all else dropped.
    async fn run(mut self) -> Hangup {
        self.serve().await;
        self.asks.hangup
    }

    async fn serve(&mut self) {
        let mut looked = Instant::now();
        loop {
            let Some(trigger) = self.next_look(looked).await else {
                return;
            };
            if !self.look_and_watch(trigger).await {
                return;
            }
            looked = Instant::now();
            // Counted once the watches are in place again: from here on, a change is seen.
            self.shared
                .reload_status
                .send_modify(|status| status.checks += 1);
        }
    }

    /// Waits for a reason to look at the files (last looked at `looked`), and says what asked
    /// for the look; `None` if `stop` came first.
    async fn next_look(&mut self, looked: Instant) -> Option<Trigger> {
        // The files are looked at again after a while without a reason to: every `POLL`
        // while a folder is not watched, and every `reload.recheck` (a minute) even while
        // all are, because a watch can die or miss a change without an event (its file
        // system mounted again, a queue overflow notify does not report, a write through
        // mmap).
        let current = self.shared.current();
        let degraded = self.watches.as_ref().is_none_or(Watches::degraded);
        let period = match degraded || self.short_of_files.is_some() {
            true => POLL,
            false => current.config.recheck,
        };
        // And as a leaf in force runs out: a renewal refused for the names it served is
        // taken then (see `Snapshot::names_kept`).
        let leaf_ends = (tls::until_a_leaf_runs_out(&current.expiry))
            .and_then(|until| Instant::now().checked_add(until));
        let due = leaf_ends.map_or(looked + period, |end| end.min(looked + period));
        drop(current);
        let first = tokio::select! {
            _ = self.stop.cancelled() => return None,
            Ok(()) = self.events.changed() => Wake::Event,
            () = self.asks.by_hand() => Wake::Manual,
            _ = tokio::time::sleep_until(due) => Wake::Poll,
        };
        if matches!(first, Wake::Poll) && leaf_ends.is_some_and(|end| end <= Instant::now()) {
            self.memory.retry_rejected();
        }
        let trigger = match first {
            // A manual reload asked for while a burst settles is served at once.
            Wake::Event => tokio::select! {
                _ = self.stop.cancelled() => return None,
                () = debounce(&mut self.events) => Trigger::Files,
                () = self.asks.by_hand() => Trigger::Manual,
            },
            Wake::Poll => {
                self.retrying = self.short_of_files.is_some();
                self.short_of_files.unwrap_or(Trigger::Files)
            }
            Wake::Manual => Trigger::Manual,
        };
        match std::mem::take(&mut self.owed) {
            true => Some(Trigger::Manual),
            false => Some(trigger),
        }
    }

    /// [`Self::reload_settled`], then the folders the files are in now watched; false if
    /// `stop` came first.
    async fn look_and_watch(&mut self, mut trigger: Trigger) -> bool {
        loop {
            if !self.reload_settled(trigger).await {
                return false;
            }
            self.announce_mode(self.watch_mode());
            // A folder that just started being watched may have changed between the reload's
            // read and the watch: look once more (cheap: unchanged content is skipped).
            let (wanted, mode) = (self.wanted_in().await, self.watch_mode());
            if !refresh_off_thread(&mut self.watches, wanted, mode).await {
                return true;
            }
            trigger = match std::mem::take(&mut self.owed) {
                true => Trigger::Manual,
                false => Trigger::Files,
            };
        }
    }

    /// [`Self::reload`], again after a pause while the files change under it; false if
    /// `stop` came first. A SIGHUP (or manual reload) during a pause makes the rest of the
    /// tries manual: served by this loop, not by a second rebuild after it.
    /// Files that never hold still (rewritten nonstop) are taken as they were last read after
    /// [`MAX_REREADS`] tries, about three seconds, so a change still takes effect.
    async fn reload_settled(&mut self, mut trigger: Trigger) -> bool {
        for tries_left in (0..MAX_REREADS).rev() {
            let patience = match tries_left {
                0 => Patience::TakeAsRead,
                _ => Patience::WaitForStill,
            };
            let asked = trigger;
            let mut read = self.reload(&mut trigger, patience).await;
            // A SIGHUP taken during the last try's wait for still files, which did not hold
            // still: served now, by a read of its own.
            if tries_left == 0 && read == Read::Unsettled && asked != trigger {
                read = self.reload(&mut trigger, patience).await;
            }
            // After the last try nothing would serve a SIGHUP taken here: leave it queued.
            if read == Read::Settled {
                self.unsettled_files_said = false;
                break;
            }
            // A SIGHUP's tries ran out on files that kept changing (said so): the look their
            // next write brings answers it, as one asked for by hand.
            if tries_left == 0 {
                self.owed |= trigger == Trigger::Manual;
                break;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(DEBOUNCE) => {}
                () = self.asks.by_hand() => trigger = Trigger::Manual,
            }
        }
        true
    }

    /// Says how the files are watched, when the config in force changed it (or asks to poll
    /// at start).
    fn announce_mode(&mut self, mode: WatchMode) {
        if mode == std::mem::replace(&mut self.mode, mode) {
            return;
        }
        match mode {
            WatchMode::Poll => {
                tracing::info!(
                    "reload.watch = \"poll\": checking the config files every {} s",
                    POLL.as_secs_f64()
                )
            }
            WatchMode::Events => {
                tracing::info!(
                    "reload.watch = \"events\": watching the config's folders for changes"
                )
            }
        }
    }

    /// How the config in force asks for its files to be watched.
    fn watch_mode(&self) -> WatchMode {
        self.shared.current().config.watch
    }

    /// [`Self::wanted`], unless the config in force polls: then no folder is watched, and
    /// every poll would read the config a second time for nothing.
    async fn wanted_in(&self) -> Option<Wanted> {
        match self.watch_mode() {
            WatchMode::Poll => Some(Wanted::new()),
            WatchMode::Events => self.wanted().await,
        }
    }

    /// The folders to watch now, found off the async threads: it reads the config and looks
    /// at folders, which may sit on a slow mount, and accepting must not wait for that.
    async fn wanted(&self) -> Option<Wanted> {
        let (shared, path) = (self.shared.clone(), self.path.clone());
        let wanted = move || {
            let files = relevant_files(&shared, &path);
            watch::say_own_mounts(&files);
            watch::wanted(&files)
        };
        tokio::task::spawn_blocking(wanted).await.ok()
    }

    /// Builds and applies a new snapshot, or keeps the current one and says why. `trigger`
    /// becomes manual if a SIGHUP this look serves came while it waited (see
    /// [`Self::decide_settled`]).
    async fn reload(&mut self, trigger: &mut Trigger, patience: Patience) -> Read {
        let current = self.shared.current();
        let generation = current.generation + 1;
        // Events so far are of writes this read will see: only one arriving from now on says
        // the files were written to again.
        self.events.mark_unchanged();
        let (path_owned, asked) = (self.path.clone(), *trigger);
        let known = self.memory.known();
        // Reading files and parsing PEM is blocking work: keep it off the threads that accept.
        let looked = tokio::task::spawn_blocking(move || {
            look(&path_owned, asked, &current, known, generation)
        })
        .await;
        let outcome = match looked {
            Ok(look) => self.decide_settled(look, trigger, patience).await,
            Err(e) => Outcome::Rejected(format!("reload task failed: {e}")),
        };
        let read = match outcome {
            Outcome::Unsettled => Read::Unsettled,
            _ => Read::Settled,
        };
        self.conclude(generation, outcome, *trigger).await;
        read
    }

    /// [`Self::decide`], once files that triggered the look have held still after it.
    async fn decide_settled(
        &mut self,
        look: Look,
        trigger: &mut Trigger,
        patience: Patience,
    ) -> Outcome {
        // A file read between two writes of a writer that pauses between them (in place,
        // piece by piece) may have held still while it was read, and still be no finished
        // content: a failure may be a file cut short, and a success a valid prefix that
        // lacks a rule still to come (an `origins` list). So what the files triggered is
        // decided only once they have held still from before the read, through it, for a
        // debounce's time at least (a
        // file rewritten nonstop is taken as last read after MAX_REREADS, if good; if bad,
        // reported once it holds still: only then is its error its content's).
        // Asked for by hand, the files are taken at once, unless one was written a moment
        // ago: a SIGHUP sent right behind a write (or during one) may have caught it halfway.
        if matches!(look, Look::Built { .. }) && !self.built_settles(&look, trigger, patience).await
        {
            return Outcome::Unsettled;
        }
        // A file gone may be one an in-place write truncated a moment ago, its content about
        // to come (two writes in a row, the second's read landing between its truncation and
        // its bytes): "gone" only once it has stayed so for a debounce, whatever the patience
        // (as a failed build is reported only once its files held still).
        if let Look::Missing {
            stamp, stamped_at, ..
        } = &look
        {
            if !self.holds_still_serving(*stamp, *stamped_at, trigger).await {
                tracing::debug!("a config file gone came back while waited on; reading them again");
                // The last try: a file truncated and written nonstop is said as any file
                // that keeps changing.
                if patience == Patience::TakeAsRead {
                    self.say_kept_changing(*trigger);
                }
                return Outcome::Unsettled;
            }
            // A SIGHUP came meanwhile: it asks for the files, and is answered as one (the
            // error of a file gone), by a read of its own.
            if *trigger == Trigger::Manual {
                return Outcome::Unsettled;
            }
        }
        self.decide(look, *trigger, patience).await
    }

    /// Whether what `look` built may be decided on (see [`Self::decide_settled`]): a failure
    /// is its content's only once the files held still, whatever asked, on the last try too
    /// (a SIGHUP into a file rewritten nonstop must not report, and count, the half of it it
    /// caught; nor can the content alone tell: a file rewritten with the same bytes may be
    /// whole before and after a read that caught it half written).
    async fn built_settles(
        &mut self,
        look: &Look,
        trigger: &mut Trigger,
        patience: Patience,
    ) -> bool {
        let Look::Built {
            stamp,
            stamped_at,
            settled,
            fresh,
            built,
            ..
        } = look
        else {
            return true;
        };
        let wait_for_still = match *trigger {
            Trigger::Files => built.is_err() || (*settled && patience == Patience::WaitForStill),
            Trigger::Manual => *fresh && (built.is_err() || patience == Patience::WaitForStill),
        };
        if !wait_for_still {
            return true;
        }
        if self.holds_still_serving(*stamp, *stamped_at, trigger).await {
            return true;
        }
        // The last try (of a SIGHUP, which may have come during the wait, its answer then
        // owed: see `reload_settled`) is said.
        match patience {
            Patience::TakeAsRead => self.say_kept_changing(*trigger),
            Patience::WaitForStill => tracing::debug!(
                "config files written to again after they were read; reading them again"
            ),
        }
        false
    }

    /// Says that the files kept changing through a look's last try, so nothing was applied:
    /// a WARN once per SIGHUP (whose answer it is) and once per run of writes that never let
    /// them hold still (a writer that never stops would have it every round of tries), at
    /// debug after that.
    fn say_kept_changing(&mut self, trigger: Trigger) {
        let news = match trigger {
            Trigger::Manual => {
                self.unsettled_said.replace(self.asks.asked) != Some(self.asks.asked)
            }
            Trigger::Files => !std::mem::replace(&mut self.unsettled_files_said, true),
        };
        if news {
            tracing::warn!("config files kept changing while being read; nothing applied until they hold still");
        } else {
            tracing::debug!("config files still changing while being read; nothing applied");
        }
    }

    /// [`holds_still`], serving a SIGHUP (or manual reload) that comes meanwhile: the files
    /// were read before it, but if they hold still until after it, what was read is what it
    /// asks to be read, and it is answered as one asked for by hand (`trigger` made manual),
    /// not by a second rebuild of the same files right after. If they do not hold still,
    /// the reads that follow are manual.
    async fn holds_still_serving(
        &mut self,
        stamp: u64,
        stamped_at: Instant,
        trigger: &mut Trigger,
    ) -> bool {
        tracing::debug!("config files read; waiting for them to hold still");
        let still = holds_still(&self.path, stamp, stamped_at);
        tokio::pin!(still);
        loop {
            tokio::select! {
                still = &mut still => return still,
                () = self.asks.by_hand() => *trigger = Trigger::Manual,
            }
        }
    }

    /// Publishes and logs what a look came to, after renewing the certificates in force if
    /// the files on disk are not going into force.
    async fn conclude(&mut self, generation: u64, outcome: Outcome, trigger: Trigger) {
        // The files on disk are not going into force (rejected, now or before, unbindable, or
        // the config file gone or emptied for a while): the certificates in force are still
        // renewed. (A certificate or key file of theirs gone is no renewal: see `renewed`.)
        let renewal = match outcome {
            // A served file gone is said by the renewal only while the config file on disk
            // is not the one in force (else the look says it, or the rejection names it).
            Outcome::Nothing | Outcome::Rejected(_) => {
                let say_gaps = self.disk_not_in_force();
                self.renew(generation, say_gaps).await
            }
            // A served file gone, while the config on disk is the one in force, is said as
            // such (the look's own warning); the config file gone, a served file gone with it
            // is said by the renewal.
            Outcome::Missing(what, _) => {
                let config_gone = look::is_config_file(what);
                self.renew(generation, config_gone).await
            }
            _ => None,
        };
        let rejected = match &outcome {
            Outcome::Rejected(error) => Some(error.clone()),
            _ => None,
        };
        self.record(generation, outcome, trigger);
        if let Some(renewal) = renewal {
            let rejected = rejected.as_deref().map(|error| (error, trigger));
            self.record_renewal(generation, renewal, rejected);
        }
    }

    /// Whether `error` is why the files on disk are not in force, as last said.
    fn said(&self, error: &str) -> bool {
        self.shared.reload_status.borrow().last_error.as_deref() == Some(error)
    }

    /// Whether the config file on disk is not the one in force, as last said: gone, or one
    /// that failed (rejected, or not bindable).
    fn disk_not_in_force(&self) -> bool {
        let in_force = self.shared.current().config.source_hash;
        self.memory.disk_not_in_force(in_force)
    }

    /// Publishes what a look at the files came to, then logs it.
    fn record(&mut self, generation: u64, outcome: Outcome, trigger: Trigger) {
        // Only a read that got through ends a shortage: a look that decided nothing (files
        // still being written) says nothing about it. A SIGHUP asked for is not forgotten.
        let was_short = self.short_of_files.is_some();
        match outcome {
            Outcome::Nothing | Outcome::Unsettled => {}
            Outcome::Unreadable(_) => {
                let asked = self.short_of_files.filter(|&t| t == Trigger::Manual);
                self.short_of_files = Some(asked.unwrap_or(trigger));
            }
            _ => self.short_of_files = None,
        }
        // Said when it starts, and to every SIGHUP: someone asked, and gets the answer.
        let retrying = std::mem::take(&mut self.retrying);
        let quiet = was_short && (trigger == Trigger::Files || retrying);
        if matches!(outcome, Outcome::Applied) {
            self.memory.forget_failures();
        }
        // Deferrals in a row: a look that decided something ends the row.
        if !matches!(outcome, Outcome::Nothing | Outcome::Unsettled) {
            self.renewals_deferred = 0;
        }
        // A look still short of descriptors is not announced again; said at debug level only
        // (a test awaits these looks).
        if quiet && matches!(outcome, Outcome::Unreadable(_)) {
            tracing::debug!(
                "config files still cannot be opened; looking again in {} s",
                POLL.as_secs_f64()
            );
        }
        let mut news = None;
        let shared = &self.shared;
        shared.reload_status.send_modify(|status| {
            news = publish(shared, status, generation, outcome, quiet);
        });
        // Logged with the status's lock let go: a log write that blocks (a full pipe) must not
        // hold up whoever reads the status.
        if let Some(news) = news {
            news.log();
        }
    }
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
    /// The files could not be read for want of the process's open files: nothing is known
    /// about them, so nothing is counted (see [`crate::config::ConfigError`]'s `for_now`).
    Unreadable(String),
    /// The files hold the config in force (again).
    InForce,
    Applied,
    Rejected(String),
}

/// What asks for a reload by hand: SIGHUP, and [`crate::Server`]'s manual reloads.
struct Asks {
    manual: mpsc::UnboundedReceiver<()>,
    hangup: Hangup,
    /// Asks received so far.
    asked: u64,
}

impl Asks {
    /// The next reload asked for by hand; never, once neither can ask any more.
    async fn by_hand(&mut self) {
        tokio::select! {
            Some(()) = self.manual.recv() => {}
            Some(()) = recv_hangup(&mut self.hangup) => {}
            else => std::future::pending().await,
        }
        // Asks queued meanwhile are served by this one, as SIGHUPs pending together are one:
        // each would otherwise be a rebuild of the same files (and a line) of its own.
        while self.manual.try_recv().is_ok() {}
        self.asked += 1;
    }
}

/// What woke the watcher.
enum Wake {
    Event,
    Manual,
    Poll,
}

/// Waits until no event arrived for [`DEBOUNCE`], swallowing the burst.
async fn debounce(events: &mut Events) {
    // Capped: a file written more often than DEBOUNCE must not postpone forever (one of the
    // files rewritten nonstop by a sync loop, or a neighbour where any name in a folder
    // matters: see `watch`'s `NAMES_ARE_EXACT`).
    let until = tokio::time::Instant::now() + DEBOUNCE * 4;
    loop {
        let wait = until.min(tokio::time::Instant::now() + DEBOUNCE);
        match tokio::time::timeout_at(wait, events.changed()).await {
            Ok(Ok(())) if tokio::time::Instant::now() < until => continue,
            _ => return,
        }
    }
}

/// The files of the config in force plus those the file on disk names (if it parses): a
/// rejected config waiting for its missing certificate must see that certificate appear.
fn relevant_files(shared: &Shared, path: &Path) -> Vec<PathBuf> {
    let mut files = shared.current().config.watched_files();
    Config::load_with(path, |candidate| {
        files.extend(candidate.iter().flat_map(|c| c.watched_files()));
    });
    files
}

#[cfg(test)]
mod tests {
    use super::POLL;

    /// The log lines say the poll's period as the config's documentation does (`reload.watch`
    /// in `config`): a new period must be documented too.
    #[test]
    fn the_poll_period_is_said_as_documented() {
        assert_eq!(format!("every {} s", POLL.as_secs_f64()), "every 0.6 s");
    }
}
