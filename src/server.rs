//! The running proxy: start-up, the state every connection shares ([`Shared`]: the snapshot
//! in force, the listeners, the counts, the drain), applying a new snapshot with its
//! listeners, and shutdown. Accepting is [`crate::listener`]'s; one connection's life is
//! [`crate::connection`]'s.
//!
//! Tunnels outlive hyper's view of their connection, so shutdown waits on the `TaskTracker`
//! every connection and tunnel is entered in, not on hyper.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::drain::Drain;
use crate::limits::{BudgetExhausted, ConnGuard, Counts};
use crate::listener::{self, Kind, Listener};
use crate::logging::{self, Throttle};
use crate::metrics::{EarlyClose, Metrics};
use crate::reload::{self, ReloadStatus};
use crate::snapshot::Snapshot;
use crate::sync::lock;

/// Why the server could not start or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address that cannot be bound (in use, not on this host…): the machine's state, not
    /// the file's. Says where the address is written.
    #[error("{0}")]
    Bind(ConfigError),
    /// Shutdown began: a reload finishing now changes nothing.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug met while carrying the state of the config in force (backend health, tunnel
    /// counts) over to a new one: that reload is rejected, not the reloader's end.
    #[error("internal error while applying the config: {0}")]
    Internal(String),
}

/// State shared by the accept loops, connections, tunnels and the reloader.
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Listeners, or `None` once shutdown took them: a reload finishing after that must not
    /// start accepting again.
    listeners: Mutex<Option<Vec<Listener>>>,
    /// What the connection limits count.
    counts: Arc<Counts>,
    /// Paces the lines about connections closed past the limits.
    over_capacity_log: Arc<Mutex<Throttle>>,
    pub(crate) tracker: TaskTracker,
    /// Fired when the shutdown grace is over: live tunnels close.
    pub(crate) drain: Arc<Drain>,
    /// The rules for client certificates, for tunnels that check theirs again.
    pub(crate) recheck: Arc<crate::recheck::Recheck>,
    pub(crate) reload_status: watch::Sender<ReloadStatus>,
    pub(crate) metrics: Metrics,
    /// Each backend's open connections, across routes and configs.
    pub(crate) loads: crate::load::Loads,
    /// Set when shutdown begins: the readiness probe fails from then on.
    stopping: AtomicBool,
    /// When accepting last found no descriptor: the readiness probe fails meanwhile.
    pub(crate) shortage: crate::descriptors::Shortage,
}

impl Shared {
    /// A connection past `limit` and the refusal budget, closed without an answer: counted,
    /// and logged at most once a second (one client or a storm can cause thousands a second).
    pub(crate) fn over_capacity(&self, client: SocketAddr, limit: &str) {
        self.metrics.closed_early(EarlyClose::OverCapacity);
        logging::throttled(
            &self.over_capacity_log,
            |suppressed| tracing::warn!(%client, suppressed, "{limit} and refusal budget exhausted; closed without an answer"),
            |suppressed| {
                tracing::warn!(suppressed, "connection limits and refusal budget exhausted: the rest of the burst closed without an answer")
            },
        );
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Open client connections, tunnels included.
    pub(crate) fn open_connections(&self) -> usize {
        self.counts.open()
    }

    pub(crate) fn ended_connections(&self) -> u64 {
        self.counts.ended()
    }

    /// A place for a connection just accepted from `peer`, within `max_connections` (or in
    /// the refusal budget beyond it); and within the per-client limit too, unless the client
    /// is only known once its PROXY header is in.
    pub(crate) fn admit_connection(&self, peer: SocketAddr) -> Result<ConnGuard, BudgetExhausted> {
        let config = &self.current().config;
        let max = config.limits.max_connections;
        if config.proxy_protocol {
            return ConnGuard::new(&self.counts, max);
        }
        let per_client = config.limits.max_connections_per_client;
        ConnGuard::for_client(&self.counts, max, peer.ip(), per_client)
    }

    /// Whether shutdown (or [`Closer::close_now`]) has begun: new requests get 503 and
    /// `/readyz` fails.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Binds the listeners `next` adds, then swaps it in, then stops the listeners it drops:
    /// a listener that stays is never paused, and a bind failure changes nothing. Once
    /// shutdown has taken the listeners nothing changes either: the new sockets close unused.
    pub(crate) async fn apply(self: &Arc<Self>, next: Snapshot) -> Result<(), Error> {
        let current = self.current();
        // Health is kept only while putting aside was on and stays on: what was counted with
        // it off (a refusal streak, on a least-connections route) must not put a backend
        // aside the moment it is turned on.
        let cooling = |s: &Snapshot| !s.config.timeouts.backend_cooldown.is_zero();
        let cooling = cooling(&current) && cooling(&next);
        // On the blocking pool: tens of thousands of routes take milliseconds to carry over,
        // which a thread that accepts and relays must not spend. (Reloads are applied one at
        // a time, so `current` stays the table in force meanwhile.)
        let (shared, was) = (self.clone(), current.clone());
        let next = tokio::task::spawn_blocking(move || {
            let mut next = next;
            next.routes.continue_from(&was.routes, cooling);
            next.routes.count_in(&shared.loads);
            next
        });
        let next = next.await.map_err(|e| match e.try_into_panic() {
            Ok(panic) => Error::Internal(panic_message(panic.as_ref())),
            // The pool takes no more work once the runtime is shutting down.
            Err(_) => Error::ShuttingDown,
        })?;
        let before = (
            current.config.limits.max_connections,
            current.config.reuse_port,
        );
        drop(current);
        let next = Arc::new(next);
        let wanted = listener::wanted(&next.config);
        let (added, held) = self.listeners_to_add(&wanted)?;
        let bound = listener::bind_all(&added, &held, &next.config)?;
        let (removed, old) = self.swap_in(next.clone(), added, bound, &wanted)?;
        // Its routes are freed a batch at a time, whoever lets go of it last (see
        // `Snapshot`'s `Drop`).
        drop(old);
        let recheck = (next.config.client_auth.as_ref()).is_some_and(|auth| auth.recheck_tunnels);
        if recheck {
            (self.recheck).publish(next.client_scope, next.client_verifier.clone());
        }
        // Once in force: a reload rejected (a bind failure) changes nothing.
        if !cooling {
            let routes = next.config.routes.iter();
            crate::resolve::forget_aside(
                routes.flat_map(|r| r.backends.iter().map(String::as_str)),
            );
        }
        next.log_warnings();
        let kept_open = held.len().saturating_sub(removed.len());
        warn_what_waits(&next.config, before.0, before.1, kept_open);
        self.metrics.certificates(&next);
        self.metrics.routes(&next.config.routes);
        close_removed(removed).await;
        Ok(())
    }

    /// The listeners of `wanted` not open yet, and the addresses of those that are (a new
    /// one must not collide with them).
    fn listeners_to_add(&self, wanted: &[Wanted]) -> Result<(Vec<Wanted>, Vec<SocketAddr>), Error> {
        let guard = lock(&self.listeners);
        let listeners = guard.as_ref().ok_or(Error::ShuttingDown)?;
        let added = (wanted.iter().copied())
            .filter(|&(kind, addr)| !listeners.iter().any(|l| l.is(kind, addr)))
            .collect();
        Ok((added, listeners.iter().map(|l| l.local).collect()))
    }

    /// Puts `next` in force with its new listeners (`added`, bound as `bound`) accepting: the
    /// listeners `wanted` no longer has, to be closed, and the snapshot replaced. Under the
    /// listeners' lock: shutdown, which takes them, sees either the old snapshot and
    /// listeners or the new ones, never a mix.
    fn swap_in(
        self: &Arc<Self>,
        next: Arc<Snapshot>,
        added: Vec<Wanted>,
        bound: Vec<tokio::net::TcpListener>,
        wanted: &[Wanted],
    ) -> Result<(Vec<Listener>, Arc<Snapshot>), Error> {
        let mut guard = lock(&self.listeners);
        let listeners = guard.as_mut().ok_or(Error::ShuttingDown)?;
        crate::coalesce::set_pause(next.config.coalesce);
        let old = self.snapshot.swap(next);
        for ((kind, configured), socket) in added.into_iter().zip(bound) {
            listeners.push(Listener::start(self, kind, configured, socket));
        }
        let (kept, removed) = listeners
            .drain(..)
            .partition(|l| wanted.iter().any(|&(kind, addr)| l.is(kind, addr)));
        *listeners = kept;
        Ok((removed, old))
    }
}

/// A listener a config asks for: what it serves, and where.
type Wanted = (Kind, SocketAddr);

/// Stops the listeners a reload removed; their live connections continue.
async fn close_removed(removed: Vec<Listener>) {
    for listener in removed {
        match listener.kind {
            Kind::Proxy => {
                tracing::info!(listen = %listener.local, "listener removed; its live connections continue")
            }
            Kind::Admin => tracing::info!(admin = %listener.local, "admin listener removed"),
        }
        listener.close().await;
    }
}

/// Warns of what a config just swapped in (`next`) asks for that the process cannot give it
/// as it stands: descriptors for a raised `max_connections`, and `reuse_port` on the
/// `kept_open` listeners bound before.
fn warn_what_waits(
    next: &Config,
    max_connections_before: usize,
    reuse_port_before: bool,
    kept_open: usize,
) {
    let max_connections = next.limits.max_connections;
    if max_connections != max_connections_before {
        crate::descriptors::warn_if_short(max_connections);
    }
    if next.reuse_port && !reuse_port_before {
        listener::warn_if_handover_resets(next);
    }
    if next.reuse_port != reuse_port_before && kept_open > 0 {
        // A socket's SO_REUSEPORT counts when it is bound: one already listening cannot be
        // changed, and binding it again beside itself is what the option decides.
        tracing::warn!(
            reuse_port = next.reuse_port,
            listeners = kept_open,
            "proxy.reuse_port applies to listeners opened from now on: the ones already open keep how they were bound until wsgate is restarted"
        );
    }
}

/// Ends the server's service now, from anywhere: every live tunnel and unfinished connection
/// is closed, and from then on `/readyz` fails and a new connection is closed at once (the
/// drain cannot be undone). Meant for a second SIGTERM during [`Server::shutdown`]'s grace.
#[derive(Clone)]
pub struct Closer(Arc<Shared>);

impl Closer {
    pub fn close_now(&self) {
        self.0.stopping.store(true, Ordering::Release);
        self.0.drain.start();
    }
}

/// How long exiting waits, after the grace, for the connections the drain closes: each
/// ends at once on it, so only a stuck one waits this long.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A running proxy on the current tokio runtime.
pub struct Server {
    shared: Arc<Shared>,
    manual_reload: mpsc::UnboundedSender<()>,
    stop_watching: CancellationToken,
}

impl Shared {
    /// The state of a server starting on `snapshot`, generation 1, with no listener yet.
    fn starting(mut snapshot: Snapshot) -> Arc<Shared> {
        let (reload_status, _) = watch::channel(ReloadStatus {
            generation: 1,
            ..ReloadStatus::default()
        });
        let client_scope = snapshot.client_scope;
        crate::coalesce::set_pause(snapshot.config.coalesce);
        let loads = crate::load::Loads::default();
        snapshot.routes.count_in(&loads);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            listeners: Mutex::new(Some(Vec::new())),
            counts: Arc::default(),
            over_capacity_log: Arc::default(),
            tracker: TaskTracker::new(),
            drain: Arc::new(Drain::default()),
            recheck: Arc::new(crate::recheck::Recheck::starting(client_scope)),
            reload_status,
            metrics: Metrics::default(),
            loads,
            stopping: AtomicBool::new(false),
            shortage: Default::default(),
        });
        shared.metrics.certificates(&shared.current());
        shared
    }
}

impl Server {
    /// Loads and validates the config file, binds every listener, starts serving and watching
    /// the config for changes.
    pub async fn start(config_path: impl AsRef<Path>) -> Result<Server, Error> {
        // First of all: from here on a SIGHUP (a deploy hook during a restart) reloads, and
        // never kills the process, even one still starting.
        let hangup = crate::signals::hangup();
        crate::tls::install_default_provider();
        // Absolute from the start: a relative path would be followed through the working
        // folder as it was at start-up, and go stale if that folder is replaced (the watch
        // promise is about paths). Symlinks stay as they are, to be followed on every read.
        let path = crate::watch::absolute(config_path.as_ref());
        let snapshot = match Snapshot::build(&path, 1) {
            Ok(snapshot) => snapshot,
            // Said as `wsgate check` says it, with the paths as given (read again, from the
            // same working folder, only to word the error).
            Err(e) => {
                return Err(Snapshot::build(config_path.as_ref(), 1)
                    .err()
                    .unwrap_or(e)
                    .into())
            }
        };
        snapshot.log_warnings();
        crate::descriptors::warn_if_short(snapshot.config.limits.max_connections);
        listener::warn_if_handover_resets(&snapshot.config);
        let wanted = listener::wanted(&snapshot.config);
        let sockets = listener::bind_all(&wanted, &[], &snapshot.config).map_err(|e| match e {
            // Named as the config error above is: by the path as given.
            Error::Bind(mut e) => {
                e.file = config_path.as_ref().to_path_buf();
                Error::Bind(e)
            }
            other => other,
        })?;
        let shared = Shared::starting(snapshot);
        let started: Vec<Listener> = wanted
            .into_iter()
            .zip(sockets)
            .map(|((kind, addr), socket)| Listener::start(&shared, kind, addr, socket))
            .collect();
        *lock(&shared.listeners) = Some(started);
        let (manual_reload, manual) = mpsc::unbounded_channel();
        let stop_watching = CancellationToken::new();
        reload::spawn_reloader(shared.clone(), path, manual, hangup, stop_watching.clone()).await;
        crate::memory::spawn_trimmer(shared.clone(), stop_watching.clone());
        Ok(Server {
            shared,
            manual_reload,
            stop_watching,
        })
    }

    /// The bound address of every proxy listener, in config order (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let order = self.shared.current().config.listen.clone();
        order
            .iter()
            .filter_map(|&addr| self.bound(Kind::Proxy, addr))
            .collect()
    }

    /// The bound address of the admin endpoint, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let addr = self.shared.current().config.admin?;
        self.bound(Kind::Admin, addr)
    }

    fn bound(&self, kind: Kind, addr: SocketAddr) -> Option<SocketAddr> {
        let guard = lock(&self.shared.listeners);
        let listeners = guard.as_deref().unwrap_or_default();
        listeners.iter().find(|l| l.is(kind, addr)).map(|l| l.local)
    }

    /// Open client connections, tunnels included.
    pub fn active_connections(&self) -> usize {
        self.shared.open_connections()
    }

    /// Open connections counted against `client`'s `max_connections_per_client` (taken once
    /// its address is known, a moment after the accept that [`Server::active_connections`]
    /// counts).
    pub fn client_connections(&self, client: std::net::IpAddr) -> usize {
        self.shared.counts.of_client(client)
    }

    pub fn reload_status(&self) -> watch::Receiver<ReloadStatus> {
        self.shared.reload_status.subscribe()
    }

    /// Reloads now, like SIGHUP; watch [`Server::reload_status`] for the outcome.
    pub fn reload(&self) {
        let _ = self.manual_reload.send(());
    }

    /// A handle that ends the shutdown grace early (a second SIGTERM, an impatient operator).
    pub fn closer(&self) -> Closer {
        Closer(self.shared.clone())
    }

    /// Stops accepting, lets live tunnels run for the configured grace, then closes them.
    /// The admin endpoint answers until the end, with `/readyz` failing, unless it was bound
    /// with `proxy.reuse_port` on and the config still has it: then it stops with the other
    /// listeners.
    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.stop_watching.cancel();
        let grace = self.shared.current().config.timeouts.shutdown_grace;
        // Said before the first await: a second signal's line must come after it.
        tracing::info!(connections = self.active_connections(), grace = ?grace, "shutting down: no new connections");
        let listeners = lock(&self.shared.listeners).take().unwrap_or_default();
        // The admin endpoint answers through the grace (`/readyz` failing, metrics of the
        // drain), unless its address is shared with a wsgate taking over: bound with
        // `reuse_port`, and the config still asking for it (one started without it could not
        // bind there). Probes and scrapes there are the new process's business from now on.
        let handing_over = self.shared.current().config.reuse_port;
        let (now, admin): (Vec<Listener>, Vec<Listener>) = listeners
            .into_iter()
            .partition(|l| l.kind == Kind::Proxy || (l.shared_port && handing_over));
        for listener in now {
            listener.close().await;
        }
        // (A test awaits this line: a connect from now on is refused, or another process's.)
        tracing::debug!("listeners closed");
        let tracker = &self.shared.tracker;
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::info!(
                connections = self.active_connections(),
                "shutdown grace over; closing the connections still open"
            );
            self.shared.drain.start();
            // Every task ends on the drain; one that does not (a bug, a write no peer takes)
            // must not hold the exit: the runtime drops what is left.
            if tokio::time::timeout(CLOSE_WAIT, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    tasks = tracker.len(),
                    "connections not closed {} s after the grace; exiting anyway",
                    CLOSE_WAIT.as_secs()
                );
            }
        }
        for listener in admin {
            listener.close().await;
        }
        tracing::info!("shutdown complete");
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::shutdown`] (a test, a program embedding wsgate)
    /// stops watching and accepting: its ports are free once its accept loops see it. Live
    /// connections run on until they end, or the runtime does.
    fn drop(&mut self) {
        self.stop_watching.cancel();
        for listener in lock(&self.shared.listeners).take().unwrap_or_default() {
            listener.stop();
        }
    }
}

/// What a panic said, if it said it as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("a panic").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while a reload carries state over is that reload's error, said in its words.
    #[tokio::test]
    async fn a_panic_on_the_blocking_pool_becomes_an_error_with_its_message() {
        let said = |task: tokio::task::JoinHandle<()>| async {
            let panic = task.await.unwrap_err().into_panic();
            Error::Internal(panic_message(panic.as_ref())).to_string()
        };
        let text = tokio::task::spawn_blocking(|| panic!("carried {} over", 2));
        let fixed = tokio::task::spawn_blocking(|| std::panic::panic_any(7u8));
        let expected = "internal error while applying the config: carried 2 over";
        assert_eq!(said(text).await, expected);
        assert!(said(fixed).await.ends_with(": a panic"));
    }
}
