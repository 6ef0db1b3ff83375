//! Prometheus metrics: the counters the accept loop, the request path, tunnels and reloads
//! bump, and the gauges read from live state when scraped, rendered in the OpenMetrics text
//! format for the admin endpoint.
//!
//! The only per-message cost is a tunnel's [`Meter`]: two atomic adds when a poll moved bytes,
//! so rates of long-lived tunnels are live rather than booked at their end. Everything else is
//! per request or per tunnel end. Label values come from the config (route names, backends)
//! or from small fixed sets, and a reload retires the series of the routes and backends it
//! removes (see [`Metrics::routes`]), so the number of series stays bounded by the config in
//! force, not by every config since start.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::load::Loads;
use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;
use crate::splice::{CloseReason, Outcome, Peer};
use crate::sync::lock;

/// The `route` label of a request no route matched.
const NO_ROUTE: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    route: String,
    /// `client_to_backend` or `backend_to_client`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    route: String,
    /// As written in the config.
    backend: String,
    /// `refused`, `timeout`, `unresolvable`, `error`, or `closed` (before answering).
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    route: String,
    /// As written in the config.
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendOnlyLabels {
    /// As written in the config.
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    /// `IP:port`, as connected to.
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EarlyLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Why a connection ended before any request was answered: the `reason` label of
/// `wsgate_connections_closed_early_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EarlyClose {
    /// `proxy.proxy_protocol` is on and the connection did not start with a valid header.
    BadProxyHeader,
    TlsFailed,
    HandshakeTimeout,
    NoRequest,
    BadRequest,
    HeadTooLarge,
    AnswerLate,
    Shutdown,
    /// Beyond `max_connections` (or `max_connections_per_client`) and the refusal budget:
    /// closed at once.
    OverCapacity,
}

impl EarlyClose {
    fn label(self) -> &'static str {
        match self {
            EarlyClose::BadProxyHeader => "bad_proxy_header",
            EarlyClose::TlsFailed => "tls_failed",
            EarlyClose::HandshakeTimeout => "handshake_timeout",
            EarlyClose::NoRequest => "no_request",
            EarlyClose::BadRequest => "bad_request",
            EarlyClose::HeadTooLarge => "head_too_large",
            EarlyClose::AnswerLate => "answer_late",
            EarlyClose::Shutdown => "shutdown",
            EarlyClose::OverCapacity => "over_capacity",
        }
    }
}

/// Buckets for the time from request head to the backend's 101: 0.5 ms to ~8 s.
fn upgrade_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

type UpgradeHistograms = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The label sets of the route-labelled series that exist (a [`Family`] cannot list its
/// own), so a reload can retire those of the routes and backends it removed; and the routes
/// with live tunnels, whose series stay.
///
/// A series is created, and entered here, under this lock; a reload removes series, and their
/// entries, under it too. So every series in a family is listed here: none escapes retirement.
#[derive(Default)]
struct Series {
    /// Live tunnels by route. Each holds a [`Meter`] with handles on its route's byte
    /// counters: removing those series would leave it counting into counters no scrape sees.
    live: HashMap<String, usize>,
    requests: HashSet<RequestLabels>,
    upgrade_seconds: HashSet<RouteLabels>,
    tunnel_bytes: HashSet<BytesLabels>,
    tunnels_closed: HashSet<ClosedLabels>,
    backend_failures: HashSet<BackendLabels>,
    backend_put_aside: HashSet<PairLabels>,
}

/// Runs `f` on the series `labels` of `family`, created and entered in its `index` in
/// `series` if it is new. An existing series costs what `get_or_create` would: a read lock.
fn bump<S, M, C>(
    series: &Mutex<Series>,
    family: &Family<S, M, C>,
    index: fn(&mut Series) -> &mut HashSet<S>,
    labels: S,
    f: impl FnOnce(&M),
) where
    S: Clone + Hash + Eq,
    C: MetricConstructor<M>,
{
    if let Some(metric) = family.get(&labels) {
        return f(&metric);
    }
    let mut series = lock(series);
    f(&family.get_or_create(&labels));
    index(&mut series).insert(labels);
}

fn inc(counter: &Counter) {
    counter.inc();
}

/// Removes from `family` (and from its `index`) the series `keep` refuses.
fn retain<S, M, C>(family: &Family<S, M, C>, index: &mut HashSet<S>, keep: impl Fn(&S) -> bool)
where
    S: Clone + Hash + Eq,
    C: MetricConstructor<M>,
{
    index.retain(|labels| {
        let kept = keep(labels);
        if !kept {
            family.remove(labels);
        }
        kept
    });
}

/// Every metric wsgate exports. Cheap to bump from any task: all handles are atomics.
pub(crate) struct Metrics {
    registry: Registry,
    accepted: Counter,
    accept_errors: Counter,
    open: Gauge,
    tunnels_open: Gauge,
    requests: Family<RequestLabels, Counter>,
    upgrade_seconds: UpgradeHistograms,
    tunnel_bytes: Family<BytesLabels, Counter>,
    tunnels_closed: Family<ClosedLabels, Counter>,
    closed_early: Family<EarlyLabels, Counter>,
    backend_failures: Family<BackendLabels, Counter>,
    backend_put_aside: Family<PairLabels, Counter>,
    backend_connections: Family<BackendOnlyLabels, Gauge>,
    address_connections: Family<AddressLabels, Gauge>,
    /// The backends and addresses those two have series for, to retire those no longer
    /// counted; held through a scrape's refresh, so that two scrapes at once cannot remove
    /// each other's series.
    connections_shown: Mutex<(HashSet<BackendOnlyLabels>, HashSet<AddressLabels>)>,
    certificate_expiry: Family<FileLabels, Gauge>,
    /// The files `certificate_expiry` has series for, to retire the ones a reload drops.
    certificate_files: Mutex<Vec<FileLabels>>,
    crl_next_update: Family<FileLabels, Gauge>,
    /// The file `crl_next_update` has a series for.
    crl_file: Mutex<Option<FileLabels>>,
    /// The route-labelled series, to retire those of routes and backends a reload drops.
    series: Arc<Mutex<Series>>,
    reloads: Family<ResultLabels, Counter>,
    generation: Gauge,
    last_reload: Gauge<f64, AtomicU64>,
    files_in_force: Gauge,
    log_lines_dropped: Counter,
    coalesce_pauses: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            accepted: Counter::default(),
            accept_errors: Counter::default(),
            open: Gauge::default(),
            tunnels_open: Gauge::default(),
            requests: Family::default(),
            upgrade_seconds: Family::new_with_constructor(upgrade_histogram),
            tunnel_bytes: Family::default(),
            tunnels_closed: Family::default(),
            closed_early: Family::default(),
            backend_failures: Family::default(),
            backend_put_aside: Family::default(),
            backend_connections: Family::default(),
            address_connections: Family::default(),
            connections_shown: Mutex::default(),
            certificate_expiry: Family::default(),
            certificate_files: Mutex::default(),
            crl_next_update: Family::default(),
            crl_file: Mutex::default(),
            series: Arc::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            last_reload: Gauge::default(),
            files_in_force: Gauge::default(),
            log_lines_dropped: Counter::default(),
            coalesce_pauses: Counter::default(),
            registry: Registry::with_prefix("wsgate"),
        };
        let registry = &mut metrics.registry;
        // name, help, metric: one line each, the names as docs/operations.md lists them.
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:ident;)*) => {
                $(registry.register($name, $help, metrics.$metric.clone());)*
            };
        }
        register! {
            "connections_accepted", "Client TCP connections accepted", accepted;
            "accept_errors", "Accepts that failed, on any listener (out of open files, mostly: each is retried)", accept_errors;
            "connections_open", "Client connections open now, tunnels included (what max_connections limits)", open;
            "tunnels_open", "WebSocket tunnels open now", tunnels_open;
            "requests", "Upgrade requests answered, by route (- if none matched) and status (101 = tunnel opened; 499 = client left first)", requests;
            "upgrade_duration_seconds", "Time from the complete request head to the backend's checked 101, by route", upgrade_seconds;
            "tunnel_bytes", "Bytes relayed by tunnels, by route and direction, counted as they move", tunnel_bytes;
            "tunnels_closed", "Tunnels ended, by route and reason", tunnels_closed;
            "connections_closed_early", "Connections ended before a request was answered, by reason", closed_early;
            "backend_connect_failures", "Failed TCP connects to a backend, and connections it closed before answering (error closed) or whose TLS handshake failed (error tls), by route, backend and error; the request moves on to the next backend", backend_failures;
            "backend_put_aside", "Times a backend was put aside after it failed to take a connection (timeouts.backend_cooldown), or, with balance least_connections, answered 502, 503, 504 or a bad 101, or refused five upgrades in a row, by route and backend; the route's requests go to its other backends meanwhile", backend_put_aside;
            "backend_connections_open", "Connections open now to each backend, from every route: tunnels, and upgrades under way from their connect on (what balance least_connections picks by)", backend_connections;
            "backend_address_connections_open", "Connections open now to each backend address (a headless Service's pods, one by one), from every route", address_connections;
            "certificate_expiry_timestamp_seconds", "Unix time at which each certificate chain wsgate presents (by file: served, or a backend client certificate) stops being valid: the first end among its leaf and the intermediates sent with it", certificate_expiry;
            "client_crl_next_update_timestamp_seconds", "Unix time at which the first of the revocation lists in tls.client_crl is due to be replaced (their earliest nextUpdate)", crl_next_update;
            "config_reloads", "Config reloads, by result (success, failure)", reloads;
            "config_generation", "Generation of the config in force (1 at start, +1 per applied reload)", generation;
            "config_last_reload_success_timestamp_seconds", "Unix time of the last applied reload (0 if none since start)", last_reload;
            "config_files_in_force", "1 if the config files on disk are the config in force; 0 while a rejected change or a deleted file keeps an older config serving", files_in_force;
            "log_lines_dropped", "Log lines dropped because stderr's reader fell behind (the queue to it full), or lost in a write that failed", log_lines_dropped;
            "coalesce_pauses", "Pauses of proxy.coalesce taken: a runtime thread busy relaying many small messages waiting for more before it sleeps", coalesce_pauses;
        }
        // The config in force at start is the one on disk.
        metrics.files_in_force.set(1);
        // Both results exist from the start at 0, so `increase()` sees the first failure.
        for result in ["success", "failure"] {
            drop(metrics.reloads.get_or_create(&ResultLabels { result }));
        }
        metrics
    }
}

impl Metrics {
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    pub(crate) fn answered(&self, route: Option<&str>, status: u16) {
        let route = route.unwrap_or(NO_ROUTE).to_string();
        let labels = RequestLabels { route, status };
        let index: fn(&mut Series) -> &mut HashSet<_> = |s| &mut s.requests;
        bump(&self.series, &self.requests, index, labels, inc);
    }

    /// The backend's 101 came `took` after the request head; the client gets it now.
    pub(crate) fn upgraded(&self, route: &str, took: Duration) {
        self.answered(Some(route), 101);
        let labels = RouteLabels {
            route: route.to_string(),
        };
        let index: fn(&mut Series) -> &mut HashSet<_> = |s| &mut s.upgrade_seconds;
        bump(&self.series, &self.upgrade_seconds, index, labels, |h| {
            h.observe(took.as_secs_f64());
        });
    }

    /// A tunnel starts relaying: counted open until its [`OpenTunnel`] is dropped.
    pub(crate) fn tunnel_started(&self) -> OpenTunnel<'_> {
        self.tunnels_open.inc();
        OpenTunnel(self)
    }

    /// The byte counters of `route`'s tunnels, for a tunnel to feed as it relays. Until the
    /// meter is dropped, `route` counts as having a live tunnel: a reload keeps its series.
    pub(crate) fn meter(&self, route: &str) -> Meter {
        // Counted live and handed its counters in one step: a reload between the two could
        // otherwise remove the series this meter is about to hold.
        let mut series = lock(&self.series);
        *series.live.entry(route.to_string()).or_default() += 1;
        let mut counter = |direction| {
            let labels = BytesLabels {
                route: route.to_string(),
                direction,
            };
            let counter = self.tunnel_bytes.get_or_create_owned(&labels);
            series.tunnel_bytes.insert(labels);
            counter
        };
        Meter {
            up: counter("client_to_backend"),
            down: counter("backend_to_client"),
            reported: (0, 0),
            _live: Live {
                series: self.series.clone(),
                route: route.to_string(),
            },
        }
    }

    /// The tunnel's bytes were fed by its [`Meter`] as they moved.
    fn tunnel_closed(&self, route: &str, outcome: &Outcome) {
        let labels = ClosedLabels {
            route: route.to_string(),
            reason: close_label(&outcome.reason),
        };
        let index: fn(&mut Series) -> &mut HashSet<_> = |s| &mut s.tunnels_closed;
        bump(&self.series, &self.tunnels_closed, index, labels, inc);
    }

    pub(crate) fn closed_early(&self, reason: EarlyClose) {
        self.closed_early
            .get_or_create(&EarlyLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// A backend connection that ended before a byte of answer: closed (or reset), or, to a
    /// backend spoken to in TLS, its handshake failed.
    pub(crate) fn backend_closed_early(&self, route: &str, backend: &str, error: &ProxyError) {
        let error = match error {
            ProxyError::BackendTls(_) => "tls",
            _ => "closed",
        };
        self.backend_failed(route, backend, error);
    }

    pub(crate) fn backend_connect_failed(&self, route: &str, backend: &str, error: &io::Error) {
        let error = match error.kind() {
            io::ErrorKind::ConnectionRefused => "refused",
            io::ErrorKind::TimedOut => "timeout",
            // upstream maps name resolution failures to NotFound.
            io::ErrorKind::NotFound => "unresolvable",
            _ => "error",
        };
        self.backend_failed(route, backend, error);
    }

    fn backend_failed(&self, route: &str, backend: &str, error: &'static str) {
        let labels = BackendLabels {
            route: route.to_string(),
            backend: backend.to_string(),
            error,
        };
        let index: fn(&mut Series) -> &mut HashSet<_> = |s| &mut s.backend_failures;
        bump(&self.series, &self.backend_failures, index, labels, inc);
    }

    /// A backend put aside after a failure (see `health`).
    pub(crate) fn backend_put_aside(&self, route: &str, backend: &str) {
        let labels = PairLabels {
            route: route.to_string(),
            backend: backend.to_string(),
        };
        let index: fn(&mut Series) -> &mut HashSet<_> = |s| &mut s.backend_put_aside;
        bump(&self.series, &self.backend_put_aside, index, labels, inc);
    }

    /// The routes now configured (a reload was applied): the series of routes, and of
    /// route-and-backend pairs, no longer in the config go away, so a generator that renames
    /// routes or rotates backends (per-tenant routes, per-pod addresses) does not grow
    /// /metrics, and memory, without bound.
    ///
    /// A route that still has live tunnels keeps its series: their [`Meter`]s hold its byte
    /// counters, and a counter removed under them would stop showing what they relay, and
    /// read as a reset. Its series go at the first reload after its last tunnel ended (until
    /// then they show the final counts, which a scrape would otherwise miss). Backend series
    /// go with their pair whatever the tunnels: a tunnel never fails a connect.
    //
    // A request that chose a dropped route on the previous config and ends after this (its
    // backend answers late, its client leaves) counts into a series created again by `bump`,
    // from 0: that single event lands in a fresh, listed series, which the next reload
    // retires. Acceptable: it is rare, bounded by the requests in flight at the reload, and
    // nothing is counted into a series no scrape sees. A tunnel closing on a dropped route
    // cannot do this: its route is live, so its `tunnels_closed` series was kept.
    pub(crate) fn routes(&self, routes: &[std::sync::Arc<RouteConfig>]) {
        let names: HashSet<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        let pairs: HashSet<(&str, &str)> = (routes.iter())
            .flat_map(|r| r.backends.iter().map(|b| (r.name.as_str(), b.as_str())))
            .collect();
        let mut series = lock(&self.series);
        let Series {
            live,
            requests,
            upgrade_seconds,
            tunnel_bytes,
            tunnels_closed,
            backend_failures,
            backend_put_aside,
        } = &mut *series;
        let kept =
            |route: &str| route == NO_ROUTE || names.contains(route) || live.contains_key(route);
        retain(&self.requests, requests, |l| kept(&l.route));
        retain(&self.upgrade_seconds, upgrade_seconds, |l| kept(&l.route));
        retain(&self.tunnel_bytes, tunnel_bytes, |l| kept(&l.route));
        retain(&self.tunnels_closed, tunnels_closed, |l| kept(&l.route));
        retain(&self.backend_failures, backend_failures, |l| {
            pairs.contains(&(l.route.as_str(), l.backend.as_str()))
        });
        retain(&self.backend_put_aside, backend_put_aside, |l| {
            pairs.contains(&(l.route.as_str(), l.backend.as_str()))
        });
    }

    /// The certificates now served, and the revocation lists clients are checked against:
    /// series of files no longer in the config go away, so an alert on a replaced
    /// certificate does not keep firing.
    pub(crate) fn certificates(&self, snapshot: &Snapshot) {
        self.revocation_lists(snapshot.crl_due.as_ref());
        let expiry = &snapshot.expiry;
        let files: Vec<FileLabels> = expiry
            .iter()
            .map(|cert| FileLabels {
                file: cert.file.display().to_string(),
            })
            .collect();
        // New values first, old series removed after: a scrape in between never sees none.
        for (labels, cert) in files.iter().zip(expiry) {
            self.certificate_expiry
                .get_or_create(labels)
                .set(cert.not_after);
        }
        let mut previous = lock(&self.certificate_files);
        for gone in previous.iter().filter(|old| !files.contains(old)) {
            self.certificate_expiry.remove(gone);
        }
        *previous = files;
    }

    fn revocation_lists(&self, due: Option<&(PathBuf, i64)>) {
        let file = due.map(|(file, next)| {
            let labels = FileLabels {
                file: file.display().to_string(),
            };
            self.crl_next_update.get_or_create(&labels).set(*next);
            labels
        });
        let mut previous = lock(&self.crl_file);
        if let Some(gone) = previous.as_ref().filter(|old| file.as_ref() != Some(*old)) {
            self.crl_next_update.remove(gone);
        }
        *previous = file;
    }

    /// Each backend's and each backend address's open connections, as `loads` counts them;
    /// the series of those it no longer counts (out of the config, their last connection
    /// gone) go away.
    fn backend_loads(&self, loads: &Loads) {
        let mut shown = lock(&self.connections_shown);
        let backends = loads.open().into_iter();
        let backends = backends.map(|(backend, open)| (BackendOnlyLabels { backend }, open));
        refresh(&self.backend_connections, &mut shown.0, backends);
        let addresses = loads.open_at().into_iter();
        let addresses = addresses.map(|(addr, open)| {
            let address = addr.to_string();
            (AddressLabels { address }, open)
        });
        refresh(&self.address_connections, &mut shown.1, addresses);
    }

    pub(crate) fn reloaded(&self, status: &ReloadStatus, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        if let Some(at) = status.last_success {
            let unix = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_reload.set(unix.as_secs_f64());
        }
    }

    /// Whether the files on disk are the config in force (no rejection or missing file
    /// pending): the signal for "someone's change is not serving", however long ago it was.
    pub(crate) fn files_in_force(&self, yes: bool) {
        self.files_in_force.set(i64::from(yes));
    }

    /// The OpenMetrics text, with the gauges that mirror live state refreshed first.
    pub(crate) fn render(&self, open_connections: usize, generation: u64, loads: &Loads) -> String {
        self.open
            .set(i64::try_from(open_connections).unwrap_or(i64::MAX));
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.backend_loads(loads);
        // Counted by the logger's writer; a counter's value is set, not added to, here.
        let dropped = crate::logging::dropped_lines();
        (self.log_lines_dropped.inner()).store(dropped, std::sync::atomic::Ordering::Relaxed);
        let pauses = crate::coalesce::pauses();
        (self.coalesce_pauses.inner()).store(pauses, std::sync::atomic::Ordering::Relaxed);
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Sets `family`'s gauges to `now`, and removes those of labels `shown` had but `now` has not;
/// `shown` becomes `now`'s labels.
fn refresh<L>(
    family: &Family<L, Gauge>,
    shown: &mut HashSet<L>,
    now: impl Iterator<Item = (L, usize)>,
) where
    L: Clone + Eq + Hash + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let mut seen = HashSet::new();
    for (labels, open) in now {
        family
            .get_or_create(&labels)
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        seen.insert(labels);
    }
    for gone in shown.difference(&seen) {
        family.remove(gone);
    }
    *shown = seen;
}

/// One tunnel in `wsgate_tunnels_open`. The count comes down on drop, so a tunnel whose task
/// never reaches [`OpenTunnel::closed`] (a panic, a runtime shut down under it) is not left
/// counted open for the rest of the process's life.
#[must_use]
pub(crate) struct OpenTunnel<'a>(&'a Metrics);

impl OpenTunnel<'_> {
    /// Counts how the tunnel ended, on `route`.
    pub(crate) fn closed(self, route: &str, outcome: &Outcome) {
        self.0.tunnel_closed(route, outcome);
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.tunnels_open.dec();
    }
}

/// One tunnel's handle on its route's byte counters. Adds what moved since the last report:
/// two atomic adds when a poll moved bytes, none while the tunnel is idle.
pub(crate) struct Meter {
    up: Counter,
    down: Counter,
    /// Totals already added.
    reported: (u64, u64),
    /// Keeps the route's series through reloads while the tunnel lives.
    _live: Live,
}

/// One live tunnel on `route`, in [`Series::live`] until dropped.
struct Live {
    series: Arc<Mutex<Series>>,
    route: String,
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut series = lock(&self.series);
        if let Some(count) = series.live.get_mut(&self.route) {
            *count -= 1;
            if *count == 0 {
                series.live.remove(&self.route);
            }
        }
    }
}

impl Meter {
    pub(crate) fn report(&mut self, up: u64, down: u64) {
        let (old_up, old_down) = self.reported;
        if up > old_up {
            self.up.inc_by(up - old_up);
        }
        if down > old_down {
            self.down.inc_by(down - old_down);
        }
        self.reported = (up, down);
    }
}

fn close_label(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Closed(Peer::Client) => "client_closed",
        CloseReason::Closed(Peer::Backend) => "backend_closed",
        CloseReason::Error(Peer::Client, _) => "client_error",
        CloseReason::Error(Peer::Backend, _) => "backend_error",
        CloseReason::IdleTimeout => "idle_timeout",
        CloseReason::HalfClosedTimeout => "half_closed_timeout",
        CloseReason::Shutdown => "shutdown",
        CloseReason::ClientCertificateRefused => "client_certificate_refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_tunnel_is_counted_open_until_it_ends_even_if_its_task_panics() {
        let metrics = Arc::new(Metrics::default());
        let open = metrics.tunnel_started();
        assert_eq!(metrics.tunnels_open.get(), 1);
        let ended = Outcome {
            client_to_backend: 0,
            backend_to_client: 0,
            reason: CloseReason::Closed(Peer::Client),
        };
        open.closed("chat", &ended);
        assert_eq!(metrics.tunnels_open.get(), 0);
        let text = metrics.render(0, 1, &Loads::default());
        let closed = r#"wsgate_tunnels_closed_total{route="chat",reason="client_closed"} 1"#;
        assert!(text.contains(closed), "{text}");

        let in_task = metrics.clone();
        let task = tokio::spawn(async move {
            let _open = in_task.tunnel_started();
            panic!("a bug in a tunnel");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(metrics.tunnels_open.get(), 0);
    }

    fn route(name: &str, backends: &[&str]) -> std::sync::Arc<RouteConfig> {
        std::sync::Arc::new(RouteConfig {
            name: name.to_string(),
            host: None,
            host_location: None,
            path: format!("/{name}"),
            subprotocols: None,
            origins: None,
            backends: backends.iter().map(ToString::to_string).collect(),
            balance: Default::default(),
            idle: None,
            backend_tls: None,
            require_client_certificate: false,
        })
    }

    fn client_closed() -> Outcome {
        Outcome {
            client_to_backend: 0,
            backend_to_client: 0,
            reason: CloseReason::Closed(Peer::Client),
        }
    }

    #[test]
    fn a_reload_retires_the_series_of_the_routes_and_backends_it_drops() {
        let metrics = Metrics::default();
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        for name in ["a", "b"] {
            metrics.answered(Some(name), 502);
            metrics.backend_connect_failed(name, "old:1", &refused);
            metrics.backend_connect_failed(name, "kept:1", &refused);
            metrics.backend_put_aside(name, "old:1");
            metrics.backend_put_aside(name, "kept:1");
            let mut meter = metrics.meter(name);
            metrics.upgraded(name, Duration::from_millis(1));
            let open = metrics.tunnel_started();
            meter.report(3, 4);
            open.closed(name, &client_closed());
        }
        metrics.answered(None, 404);

        metrics.routes(&[route("b", &["kept:1", "new:1"])]);
        let text = metrics.render(0, 2, &Loads::default());
        assert!(!text.contains(r#"route="a""#), "{text}");
        assert!(!text.contains(r#"backend="old:1""#), "{text}");
        for kept in [
            r#"wsgate_requests_total{route="b",status="101"} 1"#,
            r#"wsgate_requests_total{route="b",status="502"} 1"#,
            r#"wsgate_requests_total{route="-",status="404"} 1"#,
            r#"wsgate_upgrade_duration_seconds_count{route="b"} 1"#,
            r#"wsgate_tunnel_bytes_total{route="b",direction="client_to_backend"} 3"#,
            r#"wsgate_tunnel_bytes_total{route="b",direction="backend_to_client"} 4"#,
            r#"wsgate_tunnels_closed_total{route="b",reason="client_closed"} 1"#,
            r#"wsgate_backend_connect_failures_total{route="b",backend="kept:1",error="refused"} 1"#,
            r#"wsgate_backend_put_aside_total{route="b",backend="kept:1"} 1"#,
        ] {
            assert!(text.contains(kept), "{kept}: {text}");
        }

        // A request still in flight on the old config counts into a series created again,
        // from 0, and listed: the next reload retires it too.
        metrics.answered(Some("a"), 499);
        let again = r#"wsgate_requests_total{route="a",status="499"} 1"#;
        assert!(metrics.render(0, 2, &Loads::default()).contains(again));
        metrics.routes(&[route("b", &["kept:1"])]);
        assert!(!metrics
            .render(0, 3, &Loads::default())
            .contains(r#"route="a""#));
    }

    #[test]
    fn a_route_with_live_tunnels_keeps_its_series_until_the_reload_after_they_end() {
        let metrics = Metrics::default();
        let mut first = metrics.meter("a");
        let second = metrics.meter("a");
        first.report(5, 0);
        metrics.answered(Some("a"), 101);

        metrics.routes(&[]);
        // Still the series a scrape sees: bytes moved after the reload are in it.
        first.report(7, 0);
        let bytes = r#"wsgate_tunnel_bytes_total{route="a",direction="client_to_backend"} 7"#;
        assert!(metrics.render(0, 2, &Loads::default()).contains(bytes));
        drop(first);
        metrics.routes(&[]);
        assert!(
            metrics.render(0, 3, &Loads::default()).contains(bytes),
            "one tunnel still lives"
        );

        // The last one ended: its final counts stay in view until the next reload.
        drop(second);
        assert!(metrics.render(0, 3, &Loads::default()).contains(bytes));
        metrics.routes(&[]);
        assert!(!metrics
            .render(0, 4, &Loads::default())
            .contains(r#"route="a""#));
        assert!(lock(&metrics.series).live.is_empty());
    }
}
