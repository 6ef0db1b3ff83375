//! Listeners: binding the addresses a config asks for, and the accept loop that hands each
//! connection to [`crate::connection`] once the connection limit lets it in.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::Config;
use crate::connection;
use crate::error::out_of_descriptors;
use crate::limits::{BudgetExhausted, Over};
use crate::logging::{self, Throttle};
use crate::server::{Error, Shared};
use crate::sync::lock;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `proxy.listen`: TLS and WebSocket upgrades.
    Proxy,
    /// `admin.listen`: metrics and probes over plain HTTP.
    Admin,
}

/// One bound socket and its accept loop.
pub(crate) struct Listener {
    pub(crate) kind: Kind,
    /// The address as the config writes it (port 0 included).
    configured: SocketAddr,
    /// The address bound.
    pub(crate) local: SocketAddr,
    /// Bound with `SO_REUSEPORT` (`proxy.reuse_port` on when it was bound, whatever the
    /// config says now): another process may listen on its address too.
    pub(crate) shared_port: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Stops accepting, without waiting for the socket to close (its accept loop closes it
    /// when it sees this).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops accepting and waits until the socket is closed, so that whoever asked (a reload,
    /// shutdown) can rely on it: a connect after this is refused. Live connections continue.
    pub(crate) async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Starts accepting on `socket`, bound for `configured`.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        kind: Kind,
        configured: SocketAddr,
        socket: TcpListener,
    ) -> Listener {
        let local = socket.local_addr().unwrap_or(configured);
        let shared_port = crate::socket::port_shared(&socket);
        let stop = CancellationToken::new();
        let task = match kind {
            Kind::Proxy => {
                tracing::info!(listen = %local, "listening");
                tokio::spawn(accept_loop(socket, shared.clone(), stop.clone()))
            }
            Kind::Admin => {
                tracing::info!(admin = %local, "admin endpoint listening (/metrics, /healthz, /readyz)");
                tokio::spawn(admin::accept_loop(socket, shared.clone(), stop.clone()))
            }
        };
        Listener {
            kind,
            configured,
            local,
            shared_port,
            stop,
            task,
        }
    }

    /// Whether this is the listener `config` asks for with (`kind`, `addr`).
    pub(crate) fn is(&self, kind: Kind, addr: SocketAddr) -> bool {
        self.kind == kind && self.configured == addr
    }
}

/// Every listener `config` asks for, proxy ones in config order, then the admin one.
pub(crate) fn wanted(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let proxy = config.listen.iter().map(|&addr| (Kind::Proxy, addr));
    proxy
        .chain(config.admin.map(|addr| (Kind::Admin, addr)))
        .collect()
}

/// Binds every address of `wanted`, or none: an error names the address's place in `config`,
/// and which of this process's own listeners (`held`) is in the way, if one is.
pub(crate) fn bind_all(
    wanted: &[(Kind, SocketAddr)],
    held: &[SocketAddr],
    config: &Config,
) -> Result<Vec<TcpListener>, Error> {
    wanted
        .iter()
        .map(|&(kind, addr)| {
            bind(addr, config.reuse_port).map_err(|e| {
                let message = bind_error_words(&e, addr, held, config.reuse_port);
                Error::Bind(config.listener_error(addr, kind == Kind::Admin, message))
            })
        })
        .collect()
}

/// Why `addr` could not be bound, and what to do about an address in use: this process's
/// own listener (one of `held`) in the way, or, with `reuse_port`, a holder that did not ask
/// to share it.
fn bind_error_words(e: &io::Error, addr: SocketAddr, held: &[SocketAddr], reuse: bool) -> String {
    let mut message = format!("cannot listen on {addr}: {e}");
    // The very address too: held by a listener of the other kind (the admin endpoint's port
    // given to the proxy in one save).
    let ours = held.iter().find(|&&h| takes_port_of(h, addr));
    match (e.kind(), ours) {
        (io::ErrorKind::AddrInUse, Some(ours)) => {
            message.push_str(&format!(" (held by this wsgate's own listener {ours}, which this config drops: remove it in one save, then add {addr} in the next)"));
        }
        // A port is shared only between sockets that all asked to share it.
        (io::ErrorKind::AddrInUse, None) if reuse => message.push_str(
            " (with reuse_port, the process holding it must have bound it with reuse_port on too, as the same user: a wsgate started without it needs one restart)",
        ),
        _ => {}
    }
    message
}

/// Whether a socket listening on `held` keeps `addr` from being bound: the same port in the
/// same family, on the same address or with either one the unspecified address.
fn takes_port_of(held: SocketAddr, addr: SocketAddr) -> bool {
    held.port() == addr.port()
        && held.is_ipv4() == addr.is_ipv4()
        && (held.ip() == addr.ip() || held.ip().is_unspecified() || addr.ip().is_unspecified())
}

/// With `reuse_port` on, warns if the kernel will not hand the connections queued on a
/// listener it closes to the one taking over (`net.ipv4.tcp_migrate_req`, Linux 5.14+): a
/// handover then resets them.
pub(crate) fn warn_if_handover_resets(config: &Config) {
    if !cfg!(target_os = "linux") || !config.reuse_port {
        return;
    }
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(value) if value.trim() != "0" => {}
        Ok(_) => tracing::warn!("proxy.reuse_port is on, but net.ipv4.tcp_migrate_req is 0: when a wsgate stops, the connections queued on its listeners that it has not accepted yet are reset instead of handed to the one taking over (sysctl -w net.ipv4.tcp_migrate_req=1)"),
        // Linux before 5.14 has no such setting, and always resets them.
        Err(e) => tracing::warn!(error = %e, "proxy.reuse_port is on, but net.ipv4.tcp_migrate_req cannot be read (Linux before 5.14 has none): when a wsgate stops, the connections queued on its listeners that it has not accepted yet may be reset instead of handed to the one taking over"),
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Off by default: two processes sharing a port split its connections between them, which
    // is what a new version taking over wants, and what a second wsgate started by mistake
    // must not get silently.
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut acceptor = Acceptor::new(&listener, &stop, &shared, None);
    while let Some((stream, peer)) = acceptor.next().await {
        shared.metrics.accepted();
        match shared.admit_connection(peer) {
            Ok(guard) => {
                let serve = connection::serve(stream, peer, shared.clone(), guard);
                shared.tracker.spawn(serve);
            }
            Err(BudgetExhausted(Over::Connections)) => {
                shared.over_capacity(peer, "connection limit")
            }
            Err(BudgetExhausted(Over::Client)) => {
                shared.over_capacity(peer, "client's connection limit")
            }
        }
    }
}

/// A listener's accepting: the next connection, until `stop`. Accept errors neither stop nor
/// spin the loop: a peer gone between SYN and accept is skipped, and anything else (EMFILE and
/// friends) is counted and backs off for 50 ms, giving closing connections a moment, logged
/// at most once a second. Out of descriptors, one of the reserve's (if it has one) is given up
/// for the connection first; and with no connection waiting, nothing has failed: it only
/// backs off.
pub(crate) struct Acceptor<'a> {
    listener: &'a TcpListener,
    stop: &'a CancellationToken,
    shared: &'a Shared,
    reserve: Option<&'a Reserve>,
    failing: Arc<Mutex<Throttle>>,
    /// The listener's address, as failure lines name it.
    listen: Arc<str>,
}

impl<'a> Acceptor<'a> {
    pub(crate) fn new(
        listener: &'a TcpListener,
        stop: &'a CancellationToken,
        shared: &'a Shared,
        reserve: Option<&'a Reserve>,
    ) -> Acceptor<'a> {
        Acceptor {
            listener,
            stop,
            shared,
            reserve,
            failing: Arc::default(),
            listen: (listener.local_addr()).map_or_else(|_| "-".into(), |a| a.to_string().into()),
        }
    }

    /// The next connection, or `None` once `stop` is cancelled.
    pub(crate) async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                // The stop first: a connection ready beside it stays in the kernel's queue, for
                // the process taking the port over (`tcp_migrate_req`), rather than get a 503.
                biased;
                _ = self.stop.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            let e = match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => e,
            };
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
            ) {
                continue;
            }
            let short = out_of_descriptors(&e);
            if short {
                self.shared.shortage.noted();
                // No one waits (see `connection_waiting`): nothing failed, and there is
                // nothing to give a reserved descriptor up or close a connection for.
                if !crate::socket::connection_waiting(self.listener) {
                    match self.backed_off().await {
                        true => continue,
                        false => return None,
                    }
                }
                // Served with a reserved descriptor, the connection waiting is no failure.
                if self.reserve.is_some_and(Reserve::give_up_one) {
                    tracing::debug!("out of open files: a reserved one given up for it");
                    continue;
                }
            }
            self.shared.metrics.accept_failed();
            // The reserve spent (on connections kept open: scrapers' keep-alives): one of those
            // closed makes room, by the time the backoff below is over.
            if short && self.reserve.is_some_and(Reserve::make_room) {
                tracing::debug!("out of open files, the reserve spent: the oldest admin connection closed for it");
            }
            let (listen, ended) = (&self.listen, self.listen.clone());
            logging::throttled(
                &self.failing,
                |suppressed| tracing::error!(error = %e, %listen, suppressed, "accept failed; backing off"),
                move |suppressed| tracing::error!(listen = %ended, suppressed, "accept failed; the rest of the burst"),
            );
            if !self.backed_off().await {
                return None;
            }
        }
    }

    /// Waits 50 ms before the next accept: whether to go on (a listener being closed, by a
    /// reload removing it or a shutdown, does not wait this out).
    async fn backed_off(&self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            () = tokio::time::sleep(Duration::from_millis(50)) => true,
        }
    }
}

/// Descriptors held back for the admin endpoint, given up one at a time when accepting finds
/// none left, and taken back as its connections end: a liveness probe must keep being answered
/// while the proxy is out of open files (a failing probe gets a healthy process killed, and
/// every live tunnel with it), and so must a scrape that would show why. Once they are all
/// given up, to connections that stay open, `make_room` closes the oldest connection.
pub(crate) struct Reserve {
    held: Mutex<Vec<std::fs::File>>,
    make_room: Box<dyn Fn() -> bool + Send + Sync>,
}

/// How many [`Reserve`] holds: a probe or two and a scrape at once.
const RESERVED: usize = 4;

impl Reserve {
    /// A full reserve; `make_room` closes one of the connections served, if one is open
    /// (whether room is coming).
    pub(crate) fn new(make_room: impl Fn() -> bool + Send + Sync + 'static) -> Reserve {
        let reserve = Reserve {
            held: Mutex::new(Vec::with_capacity(RESERVED)),
            make_room: Box::new(make_room),
        };
        reserve.refill();
        reserve
    }

    /// Takes descriptors back into reserve, as many as are missing and free.
    pub(crate) fn refill(&self) {
        let mut held = lock(&self.held);
        while held.len() < RESERVED {
            // Any file will do; only its descriptor matters.
            match std::fs::File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(_) => return,
            }
        }
    }

    /// Gives one descriptor back to the process; whether there was one.
    fn give_up_one(&self) -> bool {
        lock(&self.held).pop().is_some()
    }

    /// Closes the oldest of the connections served (one closed for this and not ended yet
    /// does); whether room is coming. Its descriptor is free once its task has ended (soon,
    /// not now).
    fn make_room(&self) -> bool {
        (self.make_room)()
    }
}
