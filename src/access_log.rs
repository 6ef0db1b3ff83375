//! The access log: each client connection's one end line, and the answer metrics that go
//! with it. The request path decides an answer ([`decide`]) or hands the connection to a
//! tunnel; the line is written once the connection is over ([`end_line`]), so it can say
//! whether the answer got through. Who writes it is one state per connection ([`EndLine`]).

use std::net::SocketAddr;

use hyper::StatusCode;
use tokio::time::Instant;
use tracing::Level;

use crate::connection::Conn;
use crate::error::{Side, Unanswered};
use crate::limits::Over;
use crate::metrics::EarlyClose;
use crate::server::Shared;
use crate::splice;
use crate::sync::lock;

/// Who writes a connection's end line: [`crate::connection`] (no request seen), the tunnel, or
/// [`end_line`] with the answer the request got.
pub(crate) enum EndLine {
    Connection,
    Tunnel,
    /// The client never got its 101 (the upgrade failed), and [`end_line`], which knows
    /// why, has not run yet: it writes this line.
    TunnelFailed(Box<Ending>),
    /// [`end_line`] ran first, with how hyper's part ended: the tunnel's task writes the line
    /// if the upgrade then fails.
    TunnelCut(NoTunnel),
    /// Boxed: a tunnel holds its `Conn` for life, and never has one.
    Answer(Box<Ending>),
    Written,
}

/// The answer a connection got, as its end line will tell it.
pub(crate) struct Ending {
    route: Option<String>,
    backend: Option<String>,
    /// The status the client got; 0 for none.
    status: u16,
    /// Who caused a refusal (sets the line's level); `None` for a relayed backend answer.
    side: Option<Side>,
    reason: String,
    /// Body bytes of a relayed backend answer handed to the client connection.
    bytes_out: u64,
    /// False when the client left before any answer (499): nothing was there to deliver.
    answered: bool,
    /// A relayed body was waiting on the backend when its delivery ended: a deadline that ran
    /// out then is the backend's slowness, not a client that stopped reading.
    backend_stalled: bool,
}

impl Ending {
    /// A client that left before it was answered (499).
    fn client_gone(route: Option<String>, backend: Option<String>) -> Ending {
        Ending {
            route,
            backend,
            status: CLIENT_GONE,
            side: None,
            reason: String::new(),
            bytes_out: 0,
            answered: false,
            backend_stalled: false,
        }
    }
}

/// Why a relayed answer was cut short, when its body broke off on the backend's side.
pub(crate) const BACKEND_BROKE_OFF: &str = "the backend broke off its body";

/// Why a relayed answer was cut short, when the backend sent more of it than is read of an
/// answer (see `upstream::ANSWER_MOST`): the backend's doing, though wsgate cut it.
pub(crate) const BACKEND_ANSWER_TOO_LONG: &str =
    "the backend's answer ran past 16 MiB: the rest is not relayed";

/// How the delivery of a connection's answer ended.
pub(crate) enum Delivery {
    Delivered,
    /// Not delivered by the connection's answer deadline (a client that stopped reading).
    Late,
    /// Shutdown's grace ran out first.
    Shutdown,
    /// The connection failed while the answer was sent; says which side broke (a client gone,
    /// a relayed body cut off by the backend).
    Failed(String),
}

/// The fields of a connection's log line gathered along the way.
pub(crate) struct Line<'a> {
    conn: &'a Conn,
    pub(crate) route: Option<String>,
    pub(crate) backend: Option<String>,
    /// When the request head was complete (the line is made as hyper hands over the request):
    /// the upgrade latency is measured from here.
    pub(crate) head_at: Instant,
    /// The line was written (or handed to the tunnel).
    pub(crate) written: bool,
}

impl<'a> Line<'a> {
    pub(crate) fn new(conn: &'a Conn) -> Self {
        Line {
            conn,
            route: None,
            backend: None,
            head_at: Instant::now(),
            written: false,
        }
    }
}

impl Drop for Line<'_> {
    /// The request future is dropped when its connection is given up mid-request (the answer
    /// deadline passed, or the end of a shutdown's grace, while the backend was dialled, or
    /// hyper failing on the client's socket): the connection still gets its line. A client
    /// that merely vanishes meanwhile is seen only when its answer is written: with half-close
    /// allowed, hyper does not read from a client whose request is in flight.
    fn drop(&mut self) {
        if !self.written {
            // Counted and worded by `end_line`, which knows why the request was dropped.
            self.written = true;
            let ending = Ending::client_gone(self.route.take(), self.backend.take());
            *lock(&self.conn.line) = EndLine::Answer(Box::new(ending));
        }
    }
}

/// nginx's status for a client that left before its answer: logs and metrics use it too.
const CLIENT_GONE: u16 = 499;

/// Counts the answer now, and leaves the connection's line for [`end_line`].
pub(crate) fn decide(log: &mut Line<'_>, status: StatusCode, side: Option<Side>, reason: &str) {
    log.written = true;
    log.conn
        .shared
        .metrics
        .answered(log.route.as_deref(), status.as_u16());
    *lock(&log.conn.line) = EndLine::Answer(Box::new(Ending {
        route: log.route.take(),
        backend: log.backend.take(),
        status: status.as_u16(),
        side,
        reason: reason.to_string(),
        bytes_out: 0,
        answered: true,
        backend_stalled: false,
    }));
}

/// The upgrade is on its way: the tunnel's task writes the connection's line when it ends
/// ([`tunnel_line`], or [`tunnel_not_opened`] if the client never gets its 101).
pub(crate) fn tunnel_takes_line(log: &mut Line<'_>) {
    log.written = true;
    *lock(&log.conn.line) = EndLine::Tunnel;
}

/// Whether the request path has the connection's end line (a request was seen): then
/// [`end_line`] writes it (or the tunnel does), not [`crate::connection`].
pub(crate) fn has_line(conn: &Conn) -> bool {
    !matches!(*lock(&conn.line), EndLine::Connection)
}

/// Writes the line of a connection that got an answer (or whose request was dropped before
/// one, or whose 101 did not go out), saying how its delivery ended. Nothing for a tunnel
/// that opened: it writes its own line.
pub(crate) fn end_line(conn: &Conn, delivery: Delivery) {
    let mut line = lock(&conn.line);
    let ending = match std::mem::replace(&mut *line, EndLine::Written) {
        EndLine::Answer(ending) => ending,
        EndLine::TunnelFailed(ending) => {
            drop(line);
            let why = match &delivery {
                Delivery::Failed(why) => Some(why.as_str()),
                _ => None,
            };
            return no_tunnel_line(conn, *ending, NoTunnel::from(&delivery), why);
        }
        // Whether the 101 went out only the tunnel's task knows: it writes the line if not.
        EndLine::Tunnel => {
            // Only the cause is kept: this stays in every open tunnel's `Conn`.
            *line = EndLine::TunnelCut(NoTunnel::from(&delivery));
            return;
        }
        EndLine::TunnelCut(_) | EndLine::Connection | EndLine::Written => return,
    };
    drop(line);
    let mut ending = *ending;
    // A client that stopped reading; a backend too slow with its body is its own reason.
    if matches!(delivery, Delivery::Late) && !ending.backend_stalled {
        conn.shared.metrics.closed_early(EarlyClose::AnswerLate);
    }
    if !ending.answered {
        return unanswered_line(conn, &mut ending, delivery);
    }
    // A relayed answer the backend broke off, or held up, is the backend's fault, whoever
    // decided the answer: its line is a warning, like any other backend fault.
    let backend_cut = match &delivery {
        Delivery::Late => ending.backend_stalled,
        Delivery::Failed(why) => why == BACKEND_BROKE_OFF || why == BACKEND_ANSWER_TOO_LONG,
        Delivery::Delivered | Delivery::Shutdown => false,
    };
    if backend_cut {
        ending.side = Some(Side::Backend);
    }
    let cut = match delivery {
        Delivery::Delivered => None,
        Delivery::Late if ending.backend_stalled => Some(
            "answer not delivered in time: the backend was too slow sending its body".to_string(),
        ),
        Delivery::Late => Some("answer not delivered in time".to_string()),
        Delivery::Shutdown => Some("shutdown before the answer was delivered".to_string()),
        Delivery::Failed(why) => Some(format!("answer not delivered in full: {why}")),
    };
    write_line(conn, &ending, cut.as_deref());
}

/// Why a client never got its 101, as far as hyper's end of the connection tells.
#[derive(Clone, Copy)]
pub(crate) enum NoTunnel {
    ClientGone,
    Late,
    Shutdown,
}

impl From<&Delivery> for NoTunnel {
    fn from(delivery: &Delivery) -> Self {
        match delivery {
            Delivery::Late => NoTunnel::Late,
            Delivery::Shutdown => NoTunnel::Shutdown,
            Delivery::Delivered | Delivery::Failed(_) => NoTunnel::ClientGone,
        }
    }
}

/// The line of a connection whose 101 never reached the client (`why`: the connection's
/// error, when known).
fn no_tunnel_line(conn: &Conn, mut ending: Ending, cause: NoTunnel, why: Option<&str>) {
    let metrics = &conn.shared.metrics;
    let reason = match cause {
        // `end_line` returned before counting it: a tunnel's answer is counted here.
        NoTunnel::Late => {
            metrics.closed_early(EarlyClose::AnswerLate);
            "no 101 delivered by the connection's deadline"
        }
        NoTunnel::Shutdown => {
            metrics.closed_early(EarlyClose::Shutdown);
            "shutdown before its 101 was delivered"
        }
        NoTunnel::ClientGone => {
            metrics.answered(ending.route.as_deref(), CLIENT_GONE);
            "client went away before its 101 was delivered"
        }
    };
    if !matches!(cause, NoTunnel::ClientGone) {
        ending.status = 0;
    }
    ending.reason = reason.to_string();
    write_line(conn, &ending, why);
}

/// A request dropped before its answer was decided: by the client leaving (499), or by
/// shutdown or the connection's deadline (status 0: the client got nothing, and did nothing
/// wrong).
fn unanswered_line(conn: &Conn, ending: &mut Ending, delivery: Delivery) {
    let metrics = &conn.shared.metrics;
    let reason = match delivery {
        Delivery::Shutdown => {
            metrics.closed_early(EarlyClose::Shutdown);
            "shutdown before the answer"
        }
        // Counted (as answer_late) by `end_line`, like any answer past the deadline.
        Delivery::Late => "no answer by the connection's deadline",
        Delivery::Delivered | Delivery::Failed(_) => {
            metrics.answered(ending.route.as_deref(), CLIENT_GONE);
            "client went away before the answer"
        }
    };
    if !matches!(delivery, Delivery::Delivered | Delivery::Failed(_)) {
        ending.status = 0;
    }
    ending.reason = reason.to_string();
    write_line(conn, ending, None);
}

/// Every connection's end line has this target, whatever wrote it, so one `RUST_LOG`
/// directive (`wsgate::access_log=info`, `…=off`) keeps or drops the whole access log.
const TARGET: &str = "wsgate::access_log";

/// A tunnel's end line.
/// `detail`: what the client's TLS failed on, if it did (the reason's error kind alone would
/// say only "invalid data").
pub(crate) fn tunnel_line(
    conn: &Conn,
    route: &str,
    backend: &str,
    outcome: &splice::Outcome,
    detail: Option<&str>,
) {
    // A backend that vanished (a reset, a crash) is a backend fault; a client that vanished
    // is everyday mobile life.
    let level = match outcome.reason {
        splice::CloseReason::Error(splice::Peer::Backend, _) => Level::WARN,
        _ => Level::INFO,
    };
    let fields = Fields {
        client: conn.peer,
        route,
        backend,
        status: 101,
        bytes_in: outcome.client_to_backend,
        bytes_out: outcome.backend_to_client,
        duration_ms: since(conn.started),
        reason: &match (outcome.reason, detail) {
            (reason @ splice::CloseReason::Error(splice::Peer::Client, _), Some(tls)) => {
                format!("{reason} ({tls})")
            }
            (reason, _) => reason.to_string(),
        },
    };
    emit(level, "tunnel closed", &fields);
}

/// Logs and counts a connection that ended before any request was answered; `over` the limit
/// it was to be refused for, if any.
pub(crate) fn early_close(
    shared: &Shared,
    peer: SocketAddr,
    started: Instant,
    why: &Unanswered,
    over: Option<Over>,
) {
    shared.metrics.closed_early(why.kind());
    // Its refusal was due once its request came: under overload, the lines of the excess
    // that never got that far still say they were the excess.
    let reason = match over {
        None => why.to_string(),
        Some(Over::Connections) => format!("{why}; over max_connections, its 503 not sent"),
        Some(Over::Client) => {
            format!("{why}; over max_connections_per_client, its 429 not sent")
        }
    };
    let fields = Fields {
        client: peer,
        route: "-",
        backend: "-",
        status: why.status(),
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: since(started),
        reason: &reason,
    };
    emit(Level::INFO, "connection closed", &fields);
}

fn write_line(conn: &Conn, ending: &Ending, cut: Option<&str>) {
    let reason = match cut {
        Some(cut) => format!("{}; {cut}", ending.reason),
        None => ending.reason.clone(),
    };
    let level = match ending.side {
        None | Some(Side::Client) => Level::INFO,
        Some(Side::Backend) => Level::WARN,
        Some(Side::Internal) => Level::ERROR,
    };
    let fields = Fields {
        client: conn.peer,
        route: ending.route.as_deref().unwrap_or("-"),
        backend: ending.backend.as_deref().unwrap_or("-"),
        status: ending.status,
        bytes_in: 0,
        bytes_out: ending.bytes_out,
        duration_ms: since(conn.started),
        reason: &reason,
    };
    emit(level, "connection closed", &fields);
}

/// A connection's age in whole milliseconds, as its line gives it.
fn since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The fields of an access line, whoever writes it.
struct Fields<'a> {
    client: SocketAddr,
    /// `-` when there is none.
    route: &'a str,
    /// `-` when there is none.
    backend: &'a str,
    /// The status the client got; 0 for none.
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: u64,
    reason: &'a str,
}

/// Writes an access line. The one place its fields are named, so every line has them all,
/// in one order, under [`TARGET`]. (An event's level is fixed where it is written, hence a
/// copy per level.)
fn emit(level: Level, message: &str, fields: &Fields<'_>) {
    let Fields {
        client,
        route,
        backend,
        status,
        bytes_in,
        bytes_out,
        duration_ms,
        reason,
    } = fields;
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(target: TARGET, $level, client = %client, route, backend, status, bytes_in, bytes_out, duration_ms, reason, "{message}")
        };
    }
    match level {
        Level::ERROR => line!(Level::ERROR),
        Level::WARN => line!(Level::WARN),
        // Access lines are never quieter than info.
        _ => line!(Level::INFO),
    }
}

/// A relayed answer's body is done with (see [`crate::relay`]): how much of it was handed to
/// the client connection, and whether it was waiting on the backend then, for the end line.
pub(crate) fn record_relayed(conn: &Conn, bytes_out: u64, backend_stalled: bool) {
    if let EndLine::Answer(ending) = &mut *lock(&conn.line) {
        ending.bytes_out = bytes_out;
        ending.backend_stalled = backend_stalled;
    }
}

/// The tunnel's task found that the client's upgrade failed: the 101 never reached it. Why is
/// known to [`end_line`], and whichever of the two comes second writes the line. (`end_line`
/// runs whenever hyper's part of the connection ends, which drain and the answer deadline
/// bound: a `TunnelFailed` left here is always written.)
pub(crate) fn tunnel_not_opened(conn: &Conn, route: String, backend: String) {
    let ending = Ending::client_gone(Some(route), Some(backend));
    let mut line = lock(&conn.line);
    match std::mem::replace(&mut *line, EndLine::Written) {
        EndLine::TunnelCut(cause) => {
            drop(line);
            no_tunnel_line(conn, ending, cause, None);
        }
        EndLine::Tunnel => *line = EndLine::TunnelFailed(Box::new(ending)),
        // Only the tunnel's task leaves the Tunnel state.
        other => *line = other,
    }
}
