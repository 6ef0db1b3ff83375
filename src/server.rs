//! Listeners, the accept loops, the per-connection task (TLS, then hyper), and shutdown.
//!
//! Tunnels outlive hyper's view of their connection, so every connection carries its own
//! guards: a `limits::ConnGuard` counting it against `max_connections` and an entry in the
//! `TaskTracker`; both move into the tunnel after the upgrade.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{self, Delivery};
use crate::admin;
use crate::config::ConfigError;
use crate::error::{ProxyError, Unanswered};
use crate::head::{self, Head, Prefixed};
use crate::limits::{BudgetExhausted, ConnGuard, Counts};
use crate::metrics::{EarlyClose, Metrics};
use crate::proxy::{self, Conn};
use crate::proxy_protocol;
use crate::reload::{self, ReloadStatus};
use crate::snapshot::Snapshot;
use crate::splice::Drain;

/// Why the server could not start or a reload could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address that cannot be bound (in use, not on this host…): the machine's state, not
    /// the file's. Says where the address is written.
    #[error("{0}")]
    Bind(ConfigError),
}

/// State shared by the accept loops, connections, tunnels and the reloader.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Listeners, or `None` once shutdown took them: a reload finishing after that must not
    /// start accepting again.
    listeners: Mutex<Option<Vec<Listener>>>,
    /// What the connection limits count.
    counts: Arc<Counts>,
    /// Paces the lines about connections closed past the limits.
    over_capacity_log: Mutex<Throttle>,
    pub(crate) tracker: TaskTracker,
    /// Fired when the shutdown grace is over: live tunnels close.
    pub(crate) drain: Arc<Drain>,
    pub(crate) reload_status: watch::Sender<ReloadStatus>,
    pub(crate) metrics: Metrics,
    /// Set when shutdown begins: the readiness probe fails from then on.
    pub(crate) stopping: AtomicBool,
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `proxy.listen`: TLS and WebSocket upgrades.
    Proxy,
    /// `admin.listen`: metrics and probes over plain HTTP.
    Admin,
}

struct Listener {
    kind: Kind,
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Stops accepting and waits until the socket is closed, so that whoever asked (a reload,
    /// shutdown) can rely on it: a connect after this is refused. Live connections continue.
    async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Shared {
    /// A connection past `limit` and the refusal budget, closed without an answer: counted,
    /// and logged at most once a second (one client or a storm can cause thousands a second).
    fn over_capacity(&self, client: SocketAddr, limit: &str) {
        self.metrics.closed_early(EarlyClose::OverCapacity);
        if let Some(suppressed) = lock(&self.over_capacity_log).ready() {
            tracing::warn!(%client, suppressed, "{limit} and refusal budget exhausted; closed without an answer");
        }
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Open client connections, tunnels included.
    pub(crate) fn open_connections(&self) -> usize {
        self.counts.open()
    }

    /// Binds the listeners `next` adds, then swaps it in, then stops the listeners it drops:
    /// a listener that stays is never paused, and a bind failure changes nothing.
    pub(crate) async fn apply(self: &Arc<Self>, next: Snapshot) -> Result<(), Error> {
        let next = Arc::new(next);
        let wanted = wanted_listeners(&next.config);
        let added: Vec<(Kind, SocketAddr)> = {
            let guard = lock(&self.listeners);
            let Some(listeners) = guard.as_ref() else {
                return Ok(()); // shutting down
            };
            wanted
                .iter()
                .copied()
                .filter(|&(kind, addr)| !listeners.iter().any(|l| l.is(kind, addr)))
                .collect()
        };
        let bound = bind_all(&added, &next.config)?;
        self.snapshot.store(next.clone());
        self.metrics.certificates(&next.expiry);
        let removed: Vec<Listener> = {
            let mut guard = lock(&self.listeners);
            // Shutdown took the listeners while this reload was binding: the new sockets
            // close here, unused.
            let Some(listeners) = guard.as_mut() else {
                return Ok(());
            };
            for ((kind, configured), socket) in added.into_iter().zip(bound) {
                listeners.push(self.start_listener(kind, configured, socket));
            }
            let (kept, removed) = listeners
                .drain(..)
                .partition(|l| wanted.iter().any(|&(kind, addr)| l.is(kind, addr)));
            *listeners = kept;
            removed
        };
        for listener in removed {
            match listener.kind {
                Kind::Proxy => {
                    tracing::info!(listen = %listener.local, "listener removed; its live connections continue")
                }
                Kind::Admin => tracing::info!(admin = %listener.local, "admin listener removed"),
            }
            listener.close().await;
        }
        Ok(())
    }

    fn start_listener(
        self: &Arc<Self>,
        kind: Kind,
        configured: SocketAddr,
        socket: TcpListener,
    ) -> Listener {
        let local = socket.local_addr().unwrap_or(configured);
        let stop = CancellationToken::new();
        let task = match kind {
            Kind::Proxy => {
                tracing::info!(listen = %local, "listening");
                tokio::spawn(accept_loop(socket, self.clone(), stop.clone()))
            }
            Kind::Admin => {
                tracing::info!(admin = %local, "admin endpoint listening (/metrics, /healthz, /readyz)");
                tokio::spawn(admin::accept_loop(socket, self.clone(), stop.clone()))
            }
        };
        Listener {
            kind,
            configured,
            local,
            stop,
            task,
        }
    }
}

impl Listener {
    fn is(&self, kind: Kind, addr: SocketAddr) -> bool {
        self.kind == kind && self.configured == addr
    }
}

/// Every listener `config` asks for, proxy ones in config order, then the admin one.
fn wanted_listeners(config: &crate::config::Config) -> Vec<(Kind, SocketAddr)> {
    let proxy = config.listen.iter().map(|&addr| (Kind::Proxy, addr));
    proxy
        .chain(config.admin.map(|addr| (Kind::Admin, addr)))
        .collect()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the listener list half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bind_all(
    wanted: &[(Kind, SocketAddr)],
    config: &crate::config::Config,
) -> Result<Vec<TcpListener>, Error> {
    wanted
        .iter()
        .map(|&(kind, addr)| {
            bind(addr).map_err(|e| {
                let message = format!("cannot listen on {addr}: {e}");
                Error::Bind(config.listener_error(addr, kind == Kind::Admin, message))
            })
        })
        .collect()
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Like nginx: "[::]:443" means IPv6 only, so it can sit beside "0.0.0.0:443".
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog absorbs reconnect storms (every client of a restarted replica at once).
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// At most one log line a second for a condition that can repeat thousands of times a second
/// (descriptor exhaustion, overload), carrying the count of the lines left out.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut failing = Throttle::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.metrics.accepted();
                let max = shared.current().config.limits.max_connections;
                match ConnGuard::new(&shared.counts, max) {
                    Ok(guard) => {
                        shared
                            .tracker
                            .spawn(serve(stream, peer, shared.clone(), guard));
                    }
                    Err(BudgetExhausted) => shared.over_capacity(peer, "connection limit"),
                }
            }
            // The peer gave up between SYN and accept: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                // EMFILE and friends: neither spin nor stop; give closing connections a moment.
                if let Some(suppressed) = failing.ready() {
                    tracing::error!(error = %e, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: TLS under the handshake deadline, then hyper until the request is
/// answered (or upgraded, after which the tunnel owns the guard).
async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, mut guard: ConnGuard) {
    let started = Instant::now();
    let snapshot = shared.current();
    let deadline = started + snapshot.config.timeouts.handshake;
    let (peer, tcp) = match proxy_header(tcp, peer, &shared, &snapshot, deadline).await {
        Ok(known) => known,
        Err(why) => return early_close(&shared, peer, started, &why),
    };
    // Taken as soon as the client is known, so its connections still in the TLS handshake or
    // idle before their request count; one over the limit gets 429 once its head is in (see
    // `proxy::admit`), like the global limit's 503, so the client gets an answer.
    let per_client = snapshot.config.limits.max_connections_per_client;
    let Ok(client_slot) = guard.client_slot(peer.ip(), per_client) else {
        return shared.over_capacity(peer, "client's connection limit");
    };
    let handshake = tls_handshake(tcp, &snapshot);
    let mut tls = match in_time(&shared, deadline, handshake, "TLS").await {
        Ok(tls) => tls,
        Err(why) => return early_close(&shared, peer, started, &why),
    };
    let conn = Arc::new(Conn::new(peer, started, shared.clone(), guard, client_slot));
    let max_head = snapshot.config.limits.max_request_header_bytes;
    let read_head = read_request_head(&mut tls, max_head);
    let (head_too_large, head_bytes) =
        match in_time(&shared, deadline, read_head, "request head").await {
            Ok(read) => read,
            Err(why) => return early_close(&shared, peer, started, &why),
        };
    // Reading the head is bounded by `handshake` and the backend by `connect`; delivering the
    // answer is bounded too, so a client that stops reading cannot hold its slot forever.
    // `connect` from the config in force now, as the request path reads it: a reload since
    // the accept must not cut short a backend answer the new timeout still allows.
    let connect_timeout = shared.current().config.timeouts.connect;
    let answer_by = deadline + connect_timeout + (deadline - started);
    // Refusals that need no routing are answered here, and hyper never sees the request.
    let refusal = proxy::admit(&conn).err().or_else(|| match head_too_large {
        true => Some(ProxyError::HeadTooLarge),
        false => head::check(&head_bytes).err(),
    });
    if let Some(err) = refusal {
        return refuse_before_hyper(&mut tls, &err, &conn, answer_by).await;
    }
    serve_http(tls, head_bytes, conn, deadline, max_head, answer_by).await;
}

/// The client's address: the one the PROXY header names, if the listener expects one (read
/// under the handshake deadline, which the TLS handshake shares), else the socket's peer.
async fn proxy_header(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    snapshot: &Snapshot,
    deadline: Instant,
) -> Result<(SocketAddr, TcpStream), Unanswered> {
    let _ = tcp.set_nodelay(true);
    if !snapshot.config.proxy_protocol {
        return Ok((peer, tcp));
    }
    let header = in_time(
        shared,
        deadline,
        client_from_header(&mut tcp, peer),
        "PROXY header",
    );
    match header.await {
        Ok(client) => Ok((client, tcp)),
        // No valid header in time is a bad header, whatever it was waiting for.
        Err(Unanswered::Late(_)) => Err(Unanswered::ProxyHeaderLate),
        Err(other) => Err(other),
    }
}

async fn tls_handshake(
    tcp: TcpStream,
    snapshot: &Snapshot,
) -> Result<TlsStream<TcpStream>, Unanswered> {
    TlsAcceptor::from(snapshot.tls.clone())
        .accept(tcp)
        .await
        .map_err(|e| match gone(&e) {
            // A TCP connect and close (a load balancer's or kubelet's tcpSocket check), or a
            // client dropping mid-handshake: no TLS problem to alert on. A client that does
            // not trust the certificate sends an alert, which is a TLS failure.
            true => Unanswered::GoneDuringTls(e),
            false => Unanswered::TlsFailed(e),
        })
}

/// An error that only says the client's connection went away.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// hyper serves the request (`head` already read from `tls`, within `max_head`; `deadline`
/// for the rest of it) until it is answered by `answer_by`; then the connection's line is
/// written, unless a tunnel took it over.
async fn serve_http(
    tls: TlsStream<TcpStream>,
    head: Bytes,
    conn: Arc<Conn>,
    deadline: Instant,
    max_head: usize,
    answer_by: Instant,
) {
    let shared = conn.shared.clone();
    let service = {
        let conn = conn.clone();
        service_fn(move |req| proxy::handle(req, conn.clone()))
    };
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
        // Keep-alive stays on: with it off hyper adds "close" to the 101's Connection header,
        // which clients reject. Every answer that is not a 101 carries "Connection: close".
        // hyper's floor is 8 KiB; the exact limit was measured by head::read. The margin
        // keeps hyper from refusing a head within the limit that arrives with early bytes.
        .max_buf_size((max_head + 1024).max(8192))
        // A client may shut its sending side right after the request (its half-close is
        // passed on once the tunnel runs); without this hyper would drop the request.
        .half_close(true);
    let serving = http
        .serve_connection(TokioIo::new(Prefixed::new(head, tls)), service)
        .with_upgrades();
    let ended = tokio::select! {
        result = serving => Ended::Served(result),
        _ = tokio::time::sleep_until(answer_by) => Ended::Late,
        _ = shared.drain.started() => Ended::Drained,
    };
    // Past the select the request's future (and a relayed body) is dropped: an answer given
    // or a client gone has left its line to write, a tunnel writes its own.
    if access_log::has_line(&conn) {
        let delivery = match ended {
            Ended::Served(Ok(())) => Delivery::Delivered,
            Ended::Served(Err(e)) => Delivery::Failed(which_side_failed(&e)),
            Ended::Late => Delivery::Late,
            Ended::Drained => Delivery::Shutdown,
        };
        access_log::end_line(&conn, delivery);
        return;
    }
    early_close(&shared, conn.peer, conn.started, &unanswered(ended));
}

/// hyper's own words for a failed answer ("error writing a body to connection") name neither
/// side: an error of the body is the backend's (a relayed body cut off), any other the
/// client connection's, named by its I/O error where there is one.
fn which_side_failed(e: &hyper::Error) -> String {
    // The relayed body's errors are the backend connection's own hyper errors.
    let from_body = std::error::Error::source(e).is_some_and(|c| c.is::<hyper::Error>());
    if e.is_user() && from_body {
        return "the backend broke off its body".to_string();
    }
    if e.is_user() {
        return e.to_string();
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return format!("the client's connection failed: {io}");
        }
        source = cause.source();
    }
    format!("the client's connection failed: {e}")
}

/// Reads the request head (see [`head::read`]): whether it is over `max`, and the bytes read.
async fn read_request_head(
    tls: &mut TlsStream<TcpStream>,
    max: usize,
) -> Result<(bool, Bytes), Unanswered> {
    match head::read(tls, max).await {
        Ok((Head::Closed, read)) if read.is_empty() => Err(Unanswered::NoRequest),
        Ok((Head::Closed, _)) => Err(Unanswered::ClosedMidHead),
        Ok((head, read)) => Ok((matches!(head, Head::TooLarge), read)),
        // A TCP close without TLS's close_notify, or a reset: a client gone, not a TLS
        // failure.
        Err(e) if gone(&e) => Err(Unanswered::GoneMidHead(e)),
        Err(e) => Err(Unanswered::ReadFailed(e)),
    }
}

/// Why a connection hyper served ended without any request being answered.
fn unanswered(ended: Ended) -> Unanswered {
    match ended {
        Ended::Served(Ok(())) => Unanswered::NoRequest,
        Ended::Served(Err(e)) if e.is_parse_too_large() => Unanswered::HeadTooLarge,
        Ended::Served(Err(e)) if e.is_timeout() => Unanswered::Late("request head"),
        Ended::Served(Err(e)) => Unanswered::BadRequest(e),
        Ended::Late => Unanswered::AnswerLate,
        Ended::Drained => Unanswered::Shutdown,
    }
}

/// Runs one step of a connection's set-up under the handshake deadline, giving way to a
/// shutdown: a client that never finishes must not hold its slot, nor shutdown past the grace.
async fn in_time<T>(
    shared: &Shared,
    deadline: Instant,
    step: impl std::future::Future<Output = Result<T, Unanswered>>,
    what: &'static str,
) -> Result<T, Unanswered> {
    tokio::select! {
        done = tokio::time::timeout_at(deadline, step) => {
            done.unwrap_or(Err(Unanswered::Late(what)))
        }
        _ = shared.drain.started() => Err(Unanswered::ShutdownDuring(what)),
    }
}

/// The client named by the connection's PROXY protocol header (the socket's peer is the load
/// balancer); the peer itself when the header names no client (a balancer's health check).
async fn client_from_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, Unanswered> {
    match proxy_protocol::read_header(tcp).await {
        Ok(client) => {
            let client = client.unwrap_or(peer);
            tracing::debug!(%client, via = %peer, "PROXY protocol header");
            Ok(client)
        }
        Err(e) => Err(Unanswered::BadProxyHeader(e)),
    }
}

/// How hyper's part of a connection ended.
enum Ended {
    Served(hyper::Result<()>),
    /// The answer was not delivered by its deadline.
    Late,
    /// The shutdown grace ran out.
    Drained,
}

/// Logs and counts a connection that ended before any request was answered.
fn early_close(shared: &Shared, peer: SocketAddr, started: Instant, why: &Unanswered) {
    shared.metrics.closed_early(why.kind());
    let duration_ms = started.elapsed().as_millis() as u64;
    let reason = why.to_string();
    let reason = reason.as_str();
    tracing::info!(target: access_log::TARGET, client = %peer, route = "-", backend = "-", status = 0u16, bytes_in = 0u64, bytes_out = 0u64, duration_ms, reason, "connection closed");
}

/// Closes every live tunnel and unfinished connection now, from anywhere.
#[derive(Clone)]
pub struct Closer(Arc<Drain>);

impl Closer {
    pub fn close_now(&self) {
        self.0.start();
    }
}

/// Answers a refusal decided before hyper saw the request, by `answer_by` and unless
/// shutdown comes first; a client that does not take its answer in time is dropped (and
/// counted as such).
async fn refuse_before_hyper(
    tls: &mut TlsStream<TcpStream>,
    err: &ProxyError,
    conn: &Conn,
    answer_by: Instant,
) {
    let shared = &conn.shared;
    // Decided before anything can interrupt it, so the connection's line always has it.
    let answer = proxy::refuse_unparsed(err, conn);
    let write = async {
        tls.write_all(&answer).await?;
        tls.shutdown().await
    };
    let delivery = tokio::select! {
        done = tokio::time::timeout_at(answer_by, write) => match done {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(e)) => Delivery::Failed(format!("the client's connection failed: {e}")),
            Err(_) => Delivery::Late,
        },
        _ = shared.drain.started() => Delivery::Shutdown,
    };
    let delivered = matches!(delivery, Delivery::Delivered);
    access_log::end_line(conn, delivery);
    // Past `answer_by` by at most the linger's own second: the answer is out, and a client
    // still sending is taken in briefly so that closing does not reset the answer away.
    if delivered {
        tokio::select! {
            () = proxy::linger(tls) => {}
            _ = shared.drain.started() => {}
        }
    }
}

/// A running proxy on the current tokio runtime.
pub struct Server {
    shared: Arc<Shared>,
    manual_reload: mpsc::UnboundedSender<()>,
    stop_watching: CancellationToken,
}

impl Server {
    /// Loads and validates the config file, binds every listener, starts serving and watching
    /// the config for changes.
    pub async fn start(config_path: impl AsRef<Path>) -> Result<Server, Error> {
        // First of all: from here on a SIGHUP (a deploy hook during a restart) reloads, and
        // never kills the process, even one still starting.
        let hangup = reload::hangup_signal();
        crate::tls::install_default_provider();
        // Absolute from the start: a relative path would be followed through the working
        // folder as it was at start-up, and go stale if that folder is replaced (the watch
        // promise is about paths). Symlinks stay as they are, to be followed on every read.
        let path = crate::watch::absolute(config_path.as_ref());
        let snapshot = Snapshot::build(&path, 1)?;
        let wanted = wanted_listeners(&snapshot.config);
        let sockets = bind_all(&wanted, &snapshot.config)?;
        let (reload_status, _) = watch::channel(ReloadStatus {
            generation: 1,
            ..ReloadStatus::default()
        });
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            listeners: Mutex::new(Some(Vec::new())),
            counts: Arc::default(),
            over_capacity_log: Mutex::default(),
            tracker: TaskTracker::new(),
            drain: Arc::new(Drain::default()),
            reload_status,
            metrics: Metrics::default(),
            stopping: AtomicBool::new(false),
        });
        shared.metrics.certificates(&shared.current().expiry);
        let started: Vec<Listener> = wanted
            .into_iter()
            .zip(sockets)
            .map(|((kind, addr), socket)| shared.start_listener(kind, addr, socket))
            .collect();
        *lock(&shared.listeners) = Some(started);
        let (manual_reload, manual) = mpsc::unbounded_channel();
        let stop_watching = CancellationToken::new();
        reload::spawn_watcher(shared.clone(), path, manual, hangup, stop_watching.clone());
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

    pub fn reload_status(&self) -> watch::Receiver<ReloadStatus> {
        self.shared.reload_status.subscribe()
    }

    /// Reloads now, like SIGHUP; watch [`Server::reload_status`] for the outcome.
    pub fn reload(&self) {
        let _ = self.manual_reload.send(());
    }

    /// A handle that ends the shutdown grace early (a second SIGTERM, an impatient operator).
    pub fn closer(&self) -> Closer {
        Closer(self.shared.drain.clone())
    }

    /// Stops accepting, lets live tunnels run for the configured grace, then closes them.
    /// The admin endpoint answers until the end, with `/readyz` failing.
    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.stop_watching.cancel();
        let listeners = lock(&self.shared.listeners).take().unwrap_or_default();
        let (proxy, admin): (Vec<Listener>, Vec<Listener>) =
            listeners.into_iter().partition(|l| l.kind == Kind::Proxy);
        for listener in proxy {
            listener.close().await;
        }
        let grace = self.shared.current().config.timeouts.shutdown_grace;
        let tracker = &self.shared.tracker;
        tracker.close();
        tracing::info!(connections = self.active_connections(), grace = ?grace, "shutting down: no new connections");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::info!(
                connections = self.active_connections(),
                "shutdown grace over; closing live tunnels"
            );
            self.shared.drain.start();
            tracker.wait().await;
        }
        for listener in admin {
            listener.close().await;
        }
        tracing::info!("shutdown complete");
    }
}
