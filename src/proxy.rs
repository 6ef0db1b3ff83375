//! The request path: one upgrade request in, one answer out, and a tunnel when the backend
//! accepted. This is the only place that turns a [`ProxyError`] into a response, and the place
//! that writes each connection's one log line once a request has been seen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::error::{ProxyError, Side};
use crate::head::Prefixed;
use crate::metrics::EarlyClose;
use crate::routes::Selection;
use crate::server::{lock, ClientSlot, ConnGuard, Shared};
use crate::splice;
use crate::upstream::{self, Answer, Tunnel};
use crate::websocket;

pub type Body = Either<Full<Bytes>, Relayed>;

/// What the request path knows about the connection it serves.
pub struct Conn {
    pub peer: SocketAddr,
    pub started: Instant,
    pub shared: Arc<Shared>,
    /// Counts this connection in `max_connections`; the tunnel keeps it for its whole life.
    guard: ConnGuard,
    /// Counts it in `max_connections_per_client`, if set: held as long as `guard`, and
    /// released by its drop.
    _client_slot: Option<ClientSlot>,
    /// Over `max_connections_per_client`: the only answer it gets is 429.
    over_client_limit: bool,
    /// Who writes the connection's end line, and with what.
    line: Mutex<EndLine>,
}

/// Who writes a connection's end line: the server (no request seen), the tunnel, or
/// [`end_line`] with the answer the request got.
enum EndLine {
    Server,
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

impl Conn {
    /// `client_slot`: `None` without a per-client limit, `Some(None)` over it.
    pub fn new(
        peer: SocketAddr,
        started: Instant,
        shared: Arc<Shared>,
        guard: ConnGuard,
        client_slot: Option<Option<ClientSlot>>,
    ) -> Self {
        Conn {
            peer,
            started,
            shared,
            guard,
            over_client_limit: matches!(client_slot, Some(None)),
            _client_slot: client_slot.flatten(),
            line: Mutex::new(EndLine::Server),
        }
    }
}

/// The answer a connection got, as its end line will tell it.
struct Ending {
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
}

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

/// Serves one request. Never fails: every refusal becomes a response here.
pub async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<Body>, Infallible> {
    let mut log = Line::new(&conn);
    match route_and_forward(&mut req, &conn, &mut log).await {
        Ok(response) => Ok(response),
        Err(err) => Ok(refuse(&err, &mut log)),
    }
}

/// The refusals decided when the connection was accepted: over `max_connections` (503) or
/// over `max_connections_per_client` (429). Checked before hyper is involved.
pub fn admit(conn: &Conn) -> Result<(), ProxyError> {
    if conn.guard.over_limit() {
        return Err(ProxyError::Overloaded);
    }
    if conn.over_client_limit {
        return Err(ProxyError::ClientOverLimit);
    }
    Ok(())
}

/// The answer to a request hyper is never shown (a head over the limit, or one hyper would
/// not parse), as the request path would give it: decided (and counted) now, whatever
/// happens to its delivery. The caller writes it, logs the connection's end with
/// [`end_line`], then lets the client [`linger`].
pub(crate) fn refuse_unparsed(err: &ProxyError, conn: &Conn) -> Vec<u8> {
    let mut log = Line::new(conn);
    let response = refuse(err, &mut log);
    let body = err.body();
    let mut head = format!("HTTP/1.1 {}\r\n", response.status());
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// Takes in (a bounded amount of) what a refused client is still sending: a close with
/// unread bytes in the socket is a reset, which can destroy the answer before the client
/// reads it. Bounded in bytes and time, so a refused client cannot hold its slot, or shutdown.
pub async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    let linger = async {
        let mut sink = [0u8; 4096];
        let mut budget = LINGER_BYTES;
        while budget > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, linger).await;
}

/// What a refused client may still send before its connection is closed under it.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// The fields of a connection's log line gathered along the way.
struct Line<'a> {
    conn: &'a Conn,
    route: Option<String>,
    backend: Option<String>,
    /// When the request head was complete (the line is made as hyper hands over the request):
    /// the upgrade latency is measured from here.
    head_at: Instant,
    /// The line was written (or handed to the tunnel).
    written: bool,
}

impl<'a> Line<'a> {
    fn new(conn: &'a Conn) -> Self {
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
    /// hyper drops the request future when the client goes away mid-request (say, while the
    /// backend is being dialled): the connection still gets its line.
    fn drop(&mut self) {
        if !self.written {
            // Counted and worded by `end_line`, which knows why the request was dropped.
            self.written = true;
            *lock(&self.conn.line) = EndLine::Answer(Box::new(Ending {
                route: self.route.take(),
                backend: self.backend.take(),
                status: CLIENT_GONE,
                side: None,
                reason: String::new(),
                bytes_out: 0,
                answered: false,
            }));
        }
    }
}

/// nginx's status for a client that left before its answer: logs and metrics use it too.
const CLIENT_GONE: u16 = 499;

async fn route_and_forward(
    req: &mut Request<Incoming>,
    conn: &Arc<Conn>,
    log: &mut Line<'_>,
) -> Result<Response<Body>, ProxyError> {
    // The config in force now, not at accept: a reload between the TLS handshake and the
    // request head must route this request by the new table.
    let snapshot = &conn.shared.current();
    // Taken first: it needs the request mutably, the checks below borrow it. (Connection
    // limits were checked by `admit` before hyper read the request.)
    let on_client_upgrade = hyper::upgrade::on(&mut *req);
    let host = websocket::request_host(req.uri(), req.headers())?;
    let offered = websocket::offered_protocols(req.headers());
    let selection = snapshot.routes.select(host, req.uri().path(), &offered);
    match &selection {
        Selection::NoRoute => return Err(ProxyError::NoRoute),
        // Named before the checks, so a refusal's line says which route refused.
        Selection::Matched { route, .. } => log.route = Some(route.config.name.clone()),
        Selection::NoProtocolFits => {}
    }
    websocket::check_request(req.method(), req.version(), req.headers())?;
    let Selection::Matched { route, protocols } = selection else {
        return Err(ProxyError::NoSubprotocol);
    };
    if !route.allows_origin(websocket::origin(req.headers())) {
        return Err(ProxyError::OriginDenied);
    }

    let backend_request = upstream::backend_request(req, &protocols, conn.peer);
    let timeout = snapshot.config.timeouts.connect;
    let answer = upstream::open(
        route,
        backend_request,
        &protocols,
        timeout,
        &mut log.backend,
        &conn.shared.metrics,
    )
    .await?;
    match answer {
        Answer::Refused(response, backend) => Ok(relay(conn, log, response, backend)),
        Answer::Upgraded(tunnel) => {
            let head = upstream::client_switching_head(&tunnel.head);
            spawn_tunnel(
                conn.clone(),
                log,
                on_client_upgrade,
                tunnel,
                route.config.idle.unwrap_or(snapshot.config.timeouts.idle),
            );
            Ok(head.map(|()| Either::Left(Full::new(Bytes::new()))))
        }
    }
}

/// The backend's refusal, passed on: its body read (by `backend`, if still needed) as the
/// client takes it.
fn relay(
    conn: &Arc<Conn>,
    log: &mut Line<'_>,
    response: Response<Incoming>,
    backend: Option<upstream::BackendConn>,
) -> Response<Body> {
    if let Some(backend) = backend {
        conn.shared.tracker.spawn(backend);
    }
    let response = upstream::relay_refusal(response);
    decide(log, response.status(), None, "backend refused the upgrade");
    let conn = conn.clone();
    response.map(|body| {
        Either::Right(Relayed {
            body,
            conn,
            sent: 0,
        })
    })
}

/// Once the client's 101 is on the wire, hyper hands over its socket: splice it to the backend.
fn spawn_tunnel(
    conn: Arc<Conn>,
    log: &mut Line<'_>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    tunnel: Tunnel,
    idle: std::time::Duration,
) {
    // The tunnel writes the connection's line when it ends.
    log.written = true;
    *lock(&conn.line) = EndLine::Tunnel;
    let route = log.route.clone().unwrap_or_default();
    let took = log.head_at.elapsed();
    let backend = log.backend.clone().unwrap_or_default();
    let shared = conn.shared.clone();
    // Only the socket and its early bytes move into the task: the head would be held for the
    // tunnel's whole life.
    let Tunnel { socket, early, .. } = tunnel;
    shared.tracker.spawn(async move {
        let upgraded = on_upgrade.await;
        // Built in a plain function so that nothing but the splice itself is held across the
        // await below: every byte of this future is kept for the tunnel's whole life.
        let Some(splice) = client_splice(upgraded, socket, early, idle, &conn, &route) else {
            // The 101 never reached the client: why is known to `end_line`, and whichever
            // of the two comes second writes the line.
            let ending = Ending {
                route: Some(route),
                backend: Some(backend),
                status: CLIENT_GONE,
                side: None,
                reason: String::new(),
                bytes_out: 0,
                answered: false,
            };
            // (`end_line` runs whenever hyper's part of the connection ends, which drain and
            // the answer deadline bound: a TunnelFailed left here is always written.)
            let mut line = lock(&conn.line);
            return match std::mem::replace(&mut *line, EndLine::Written) {
                EndLine::TunnelCut(cause) => {
                    drop(line);
                    no_tunnel_line(&conn, ending, cause, None);
                }
                EndLine::Tunnel => *line = EndLine::TunnelFailed(Box::new(ending)),
                // Only this task leaves the Tunnel state.
                other => *line = other,
            };
        };
        // Counted once the client has its 101, so 101s and opened tunnels always agree.
        conn.shared.metrics.upgraded(&route, took);
        conn.shared.metrics.tunnel_started();
        let outcome = splice.await;
        conn.shared.metrics.tunnel_closed(&route, &outcome);
        tracing::info!(
            client = %conn.peer,
            route,
            backend,
            status = 101,
            bytes_in = outcome.client_to_backend,
            bytes_out = outcome.backend_to_client,
            duration_ms = conn.started.elapsed().as_millis() as u64,
            reason = %outcome.reason,
            "tunnel closed"
        );
    });
}

type ClientSplice = splice::Splice<TlsStream<TcpStream>, TcpStream>;
type ClientIo = TokioIo<Prefixed<TlsStream<TcpStream>>>;

fn client_splice(
    upgraded: hyper::Result<hyper::upgrade::Upgraded>,
    backend: TcpStream,
    backend_early: Bytes,
    idle: std::time::Duration,
    conn: &Conn,
    route: &str,
) -> Option<ClientSplice> {
    let client = upgraded.ok()?.downcast::<ClientIo>().ok()?;
    let (tls, unread) = client.io.into_inner().into_parts();
    // The client's early bytes: what hyper read past the head, then what it never got to of
    // the bytes read with the head (nearly always nothing).
    let early = if unread.is_empty() {
        client.read_buf
    } else {
        [client.read_buf, unread].concat().into()
    };
    // The TLS stream is its own buffered reader (rustls's plaintext buffer).
    let splice = splice::Splice::new(tls, early, backend, backend_early, idle, &conn.shared.drain);
    Some(splice.metered(conn.shared.metrics.meter(route)))
}

/// Decides the refusal's log line and builds its response.
fn refuse(err: &ProxyError, log: &mut Line<'_>) -> Response<Body> {
    let (status, side) = err.status();
    decide(log, status, Some(side), &err.to_string());
    let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(
        err.body().as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in err.extra_headers() {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    response
}

/// Counts the answer now, and leaves the connection's line for [`end_line`].
fn decide(log: &mut Line<'_>, status: StatusCode, side: Option<Side>, reason: &str) {
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
    }));
}

/// Whether the request path has the connection's end line (a request was seen): then
/// [`end_line`] writes it (or the tunnel does), not the server.
pub(crate) fn has_line(conn: &Conn) -> bool {
    !matches!(*lock(&conn.line), EndLine::Server)
}

/// Writes the line of a connection that got an answer (or whose request was dropped before
/// one, or whose 101 did not go out), saying how its delivery ended. Nothing for a tunnel
/// that opened: it writes its own line.
pub(crate) fn end_line(conn: &Conn, delivery: Delivery) {
    if matches!(delivery, Delivery::Late) {
        conn.shared.metrics.closed_early(EarlyClose::AnswerLate);
    }
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
        EndLine::TunnelCut(_) | EndLine::Server | EndLine::Written => return,
    };
    drop(line);
    let mut ending = *ending;
    if !ending.answered {
        return unanswered_line(conn, &mut ending, delivery);
    }
    let cut = match delivery {
        Delivery::Delivered => None,
        Delivery::Late => Some("answer not delivered in time".to_string()),
        Delivery::Shutdown => Some("shutdown before the answer was delivered".to_string()),
        Delivery::Failed(why) => Some(format!("answer not delivered in full: {why}")),
    };
    write_line(conn, &ending, cut.as_deref());
}

/// Why a client never got its 101, as far as hyper's end of the connection tells.
#[derive(Clone, Copy)]
enum NoTunnel {
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
        // answer_late was counted by `end_line`.
        NoTunnel::Late => "no 101 delivered by the connection's deadline",
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

fn write_line(conn: &Conn, ending: &Ending, cut: Option<&str>) {
    let route = ending.route.as_deref().unwrap_or("-");
    let backend = ending.backend.as_deref().unwrap_or("-");
    let status = ending.status;
    let bytes_out = ending.bytes_out;
    let duration_ms = conn.started.elapsed().as_millis() as u64;
    let reason = match cut {
        Some(cut) => format!("{}; {cut}", ending.reason),
        None => ending.reason.clone(),
    };
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(client = %conn.peer, route, backend, status, bytes_in = 0u64, bytes_out, duration_ms, reason, "connection closed")
        };
    }
    match ending.side {
        None | Some(Side::Client) => line!(info),
        Some(Side::Backend) => line!(warn),
        Some(Side::Internal) => line!(error),
    }
}

/// A relayed backend answer's body, counting the bytes handed to the client connection into
/// its end line.
pub(crate) struct Relayed {
    body: Incoming,
    conn: Arc<Conn>,
    sent: u64,
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if let EndLine::Answer(ending) = &mut *lock(&self.conn.line) {
            ending.bytes_out = self.sent;
        }
    }
}
