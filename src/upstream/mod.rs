//! The backend leg: dial a route's backends in turn (those put aside after a failure last, see
//! `health`), forward the upgrade request, and return either a checked 101 with the raw backend
//! socket, or the backend's non-101 answer to relay. Which backend is next is `turns`'s;
//! connecting to one, through its name's addresses, is `dial`'s.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::TRANSFER_ENCODING;
use hyper::http::response;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::Balance;
use crate::error::ProxyError;
use crate::load::{Busy, Loads};
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::websocket;

mod dial;
mod stream;
mod turns;

pub(crate) use stream::{tcp_of, tcp_of_mut, BackendIo};

use turns::{back_in_turn, connect_in_turn, put_aside, Try, Turns};

/// A backend that accepted the upgrade.
pub(crate) struct Tunnel {
    /// The 101 head to pass to the client.
    pub(crate) head: response::Parts,
    pub(crate) socket: BackendIo,
    /// Bytes the backend sent right behind its 101.
    pub(crate) early: Bytes,
    /// The tunnel, counted in its backend's open connections until dropped.
    pub(crate) busy: Counted,
}

/// A backend connection counted in its backend's open connections, and in its address's
/// (`None` only where connects are not counted: some unit tests).
pub(crate) type Counted = (Busy, Option<Busy>);

/// What the backend said to the upgrade.
pub(crate) enum Answer {
    Upgraded(Tunnel),
    /// Anything but 101: relayed as is, never spliced. The backend connection, if it is
    /// still needed to read the body, must be driven (on the server's task tracker).
    NotUpgraded(NonUpgrade),
}

/// A backend's answer other than 101, to relay.
pub(crate) struct NonUpgrade {
    pub(crate) response: Response<Incoming>,
    /// The body's first frame, already read (`None` for an empty body).
    pub(crate) first: Option<Frame<Bytes>>,
    pub(crate) backend: Option<BackendConn>,
}

/// A backend connection that still has an answer's body to read (hyper does not name the
/// type of an upgradeable connection).
pub(crate) type BackendConn =
    std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

/// How the backend leg is timed (from `[timeouts]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// For the whole exchange: connect, and the backend's complete answer head.
    pub(crate) timeout: Duration,
    /// How long a backend that failed is first put aside; zero: never.
    pub(crate) cooldown: Duration,
    /// How long a connect may go unanswered before the next address or backend is dialed
    /// beside it; zero: one at a time.
    pub(crate) attempt_delay: Duration,
}

/// One request's backend leg: its route, how it is timed and when its time runs out, and
/// where its failures are counted; what each step of dialing and asking needs.
#[derive(Clone, Copy)]
struct Leg<'r> {
    route: &'r Route,
    timing: Timing,
    /// The end of the whole exchange: connect, and the backend's complete answer head.
    deadline: tokio::time::Instant,
    metrics: &'r Metrics,
    /// Where backends' open connections are counted.
    loads: &'r Loads,
}

/// Dials the route's backends in turn and forwards `request`; the whole exchange (connect and
/// the backend's complete answer head) must fit in `timing.timeout`. `tried` names, for the
/// log line, the backend that answered; failing that, the one the error is about (for a 504,
/// the one that took the connection and did not answer, else the first out of time to
/// connect; the last that closed or failed otherwise).
pub(crate) async fn open(
    route: &Route,
    request: Request<Empty<Bytes>>,
    protocols: &[&str],
    timing: Timing,
    tried: &mut Option<String>,
    (metrics, loads): (&Metrics, &Loads),
) -> Result<Answer, ProxyError> {
    let deadline = tokio::time::Instant::now() + timing.timeout;
    let leg = Leg {
        route,
        timing,
        deadline,
        metrics,
        loads,
    };
    // Each stage inside keeps the deadline itself (every connect, the answer), and says what
    // ran out (a hung backend is put aside); this is only the net under them, a moment
    // later, so that theirs fire first even when the task's budget would let this one win.
    let net = deadline + Duration::from_millis(50);
    match tokio::time::timeout_at(net, exchange(leg, request, protocols, tried)).await {
        Ok(answer) => answer,
        Err(_) => Err(ProxyError::BackendTimeout),
    }
}

async fn exchange(
    leg: Leg<'_>,
    mut request: Request<Empty<Bytes>>,
    protocols: &[&str],
    tried: &mut Option<String>,
) -> Result<Answer, ProxyError> {
    let Leg {
        route, deadline, ..
    } = leg;
    let offer = websocket::Offer::of(request.headers(), protocols)?;
    let mut turns = Turns::new(route, deadline);
    // The leaves of backends whose address closed before answering: held until the request
    // is done with them, as their next addresses are tried (`again`) without asking again.
    let mut held = Vec::new();
    // Closes before answering so far; a handshake stalled is not one (see `after_close`).
    let mut closed = 0;
    loop {
        // The leave is held until the try has ended: answered, or failed.
        let (won, dialed) = connect_in_turn(leg, &mut turns, tried).await?;
        // Copied only when there is somewhere to send it again.
        let others = dialed.more() || dialed.redial || turns.left() > 0;
        let copy = others.then(|| copy_of(&request));
        let asked = tokio::time::Instant::now();
        // Connected as the time ran out: the backend is not to start on a request whose
        // client gets its 504 (a timeout polls what it bounds once more, past its deadline).
        if asked >= deadline {
            return Err(ProxyError::BackendTimeout);
        }
        let reached = Reached::of(&won, &dialed, (&mut turns, closed), (asked, deadline));
        let busy = (won.busy, dialed.busy);
        let secured = AtomicBool::new(route.backend_tls.is_none());
        let answering = async {
            let handshake_by = reached.share.map(|share| asked + share);
            let socket = secure_by(handshake_by, route, reached.backend, dialed.socket).await?;
            secured.store(true, Ordering::Relaxed);
            attempt(socket, request, &offer, busy).await
        };
        let Ok(answered) = tokio::time::timeout_at(deadline, answering).await else {
            let secured = secured.load(Ordering::Relaxed);
            return Err(unanswered(leg, reached, secured));
        };
        note_answer(leg, reached, &answered);
        let error = match answered {
            Ok(Answer::NotUpgraded(mut refusal)) => {
                let headers = refusal.response.headers_mut();
                crate::forwarding::unname_backend(headers, reached.backend, reached.addr);
                return Ok(Answer::NotUpgraded(refusal));
            }
            Ok(answer) => return Ok(answer),
            Err(Attempt::Failed(error)) => return Err(error),
            Err(Attempt::Gone(error)) => error,
        };
        let go_on = after_close(
            leg,
            &mut turns,
            reached,
            error,
            (&mut closed, copy.is_some()),
        );
        let Some(copy) = copy.filter(|_| go_on) else {
            return Err(turns.outcome(tried));
        };
        tracing::debug!(
            route = route.config.name.as_str(),
            backend = reached.backend,
            "backend closed before answering; trying another"
        );
        held.push(won.leave);
        request = copy;
    }
}

/// Where one try of a request reached, and when: what its failure is held against.
#[derive(Clone, Copy)]
struct Reached<'a> {
    backend: &'a str,
    /// The address connected to.
    addr: std::net::SocketAddr,
    /// Whether `addr` is one of the backend name's several (see `Dialed::several`).
    several: bool,
    /// Whether the name has another address to try after it.
    more: bool,
    /// Whether `addr` may be dialed again (see `Dialed::redial`).
    redial: bool,
    /// The TLS handshake's share of the time, if another try is left after this one.
    share: Option<Duration>,
    /// Its even share of the whole time (see `Turns::asking`): a try given less than half of
    /// it is not to blame when it runs out.
    even: Duration,
    /// When the try began, on [`crate::health::now`]'s clock.
    began: u64,
    /// When the connection was made and the request about to be sent.
    asked: tokio::time::Instant,
}

impl<'a> Reached<'a> {
    /// Where `won` reached (`dialed`), asked at `asked` to answer by `deadline`: `closed`
    /// closes before answering so far, and what is left of the `turns` after it, set its
    /// share of the time.
    fn of<'r>(
        won: &Try<'a, 'r>,
        dialed: &dial::Dialed,
        (turns, closed): (
            &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
            usize,
        ),
        (asked, deadline): (tokio::time::Instant, tokio::time::Instant),
    ) -> Reached<'a> {
        // With another backend or address to try after it, the TLS handshake gets a share of
        // the time: a backend that takes the connection and never finishes it (a plain server
        // on the port, a hung one) has had nothing of the request, and the next may take it.
        // The last try has all the time left, and its 504 says what it did not do.
        let redials = match dialed.redial {
            true => MAX_CLOSED.saturating_sub(closed + 1),
            false => 0,
        };
        let after = turns.left() + dialed.further + redials;
        let (share, even) = turns.asking(after, deadline.saturating_duration_since(asked));
        Reached {
            backend: won.backend,
            addr: dialed.addr,
            several: dialed.several,
            more: dialed.more(),
            redial: dialed.redial,
            share,
            even,
            began: won.began,
            asked,
        }
    }

    /// The backend, and its address if that is one of the name's several: whose failure it is.
    fn at(&self) -> (&str, Option<std::net::SocketAddr>) {
        (self.backend, self.several.then_some(self.addr))
    }
}

/// What an answer (or a failure other than a close) tells of the backend's health: one that
/// cannot serve is put aside on a least-connections route (see [`cannot_serve`]); any other
/// answer says the backend takes connections, and takes it back into turn.
fn note_answer(leg: Leg<'_>, reached: Reached<'_>, answered: &Result<Answer, Attempt>) {
    let route = leg.route;
    let cannot = cannot_serve(answered);
    let least = route.config.balance == Balance::LeastConnections;
    let cannot = cannot.or_else(|| refused_too_often(route, reached.backend, answered));
    if let Some(error) = cannot.as_ref().filter(|_| least) {
        answer_failed(leg, reached.at(), error, (reached.began, reached.asked));
    } else if !matches!(answered, Err(Attempt::Gone(_))) {
        // Anything but a close before answering: the backend takes connections.
        back_in_turn(route, reached.backend);
        // Every answer that serves, so that failures in a row are counted between answers
        // only; not one saying it cannot serve, which must not take an address another
        // route set aside for it back into turn (the set-aside is the name's, for all).
        if reached.several && cannot.is_none() {
            dial::answered(reached.backend, reached.addr);
        }
    }
}

/// A try that died before a byte of answer (a backend restarting, killed mid-deploy), or whose
/// TLS handshake stalled in its share: counts it, holds it against the backend, and sets up
/// `turns` for the next try. True if the request may go on to another (`closes`: the closes
/// before answering so far, and whether the request was copied for another try).
///
/// Nothing of the answer reached the client, so another address of the name (a headless
/// Service's next pod), or the next backend, may take the request. Counted: failover hides
/// it from clients, not from operators. A TLS handshake not finished in its share is as a
/// connect unanswered in its own: counted as a timeout, the request's 504 if no other backend
/// answers, and not among the closes, which give the request up after [`MAX_CLOSED`] (before
/// it reaches a backend that works).
fn after_close<'a>(
    leg: Leg<'_>,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
    reached: Reached<'a>,
    error: ProxyError,
    closes: (&mut usize, bool),
) -> bool {
    let ((closed, copied), backend) = (closes, reached.backend);
    let stalled = matches!(error, ProxyError::BackendTimeout);
    let verdict = CloseVerdict::of(Close {
        stalled,
        refused_tls: matches!(error, ProxyError::BackendTls(_)),
        redial: reached.redial,
        several: reached.several,
        more: reached.more,
        fair_share: reached.share >= Some(reached.even / 2),
        copied,
        closed: *closed,
    });
    *closed += usize::from(verdict.counted);
    let stall = stalled.then(|| std::io::Error::new(std::io::ErrorKind::TimedOut, STALLED));
    let name = &leg.route.config.name;
    let reason: &dyn std::fmt::Display = match &stall {
        Some(stall) => {
            leg.metrics.backend_connect_failed(name, backend, stall);
            turns.timed_out.get_or_insert(backend);
            stall
        }
        None => {
            leg.metrics.backend_closed_early(name, backend, &error);
            &error
        }
    };
    if verdict.set_aside_address {
        let cooldown = leg.timing.cooldown;
        dial::set_aside(backend, reached.addr, cooldown, reached.asked, reason);
    }
    if verdict.put_aside {
        put_aside(leg, backend, reason, reached.began);
    }
    if !verdict.redial {
        turns.gone.push(reached.addr);
    }
    turns.gone_error = Some((backend, error));
    if verdict.go_on {
        turns.again = verdict.again.then_some(backend);
    }
    verdict.go_on
}

/// A try that closed before answering, or stalled in its TLS handshake, as [`after_close`]
/// judges it.
#[derive(Debug, Clone, Copy)]
struct Close {
    /// The TLS handshake stalled in its share (else: closed before a byte of answer).
    stalled: bool,
    /// The backend refused wsgate's TLS handshake (its certificate).
    refused_tls: bool,
    /// The address may be dialed again (see `Dialed::redial`: the route's only address).
    redial: bool,
    /// The address is one of the backend name's several.
    several: bool,
    /// The name has another address to try after it.
    more: bool,
    /// The try had at least half its even share of the time (its stall is its own).
    fair_share: bool,
    /// The request was copied for another try.
    copied: bool,
    /// Closes before answering in this request so far, this one not included.
    closed: usize,
}

/// What [`after_close`] does about a [`Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CloseVerdict {
    /// Counted among the closes that give the request up at [`MAX_CLOSED`].
    counted: bool,
    /// The request goes on to another try.
    go_on: bool,
    /// The address is set aside for the cool-down (one of a name's several).
    set_aside_address: bool,
    /// The backend is put aside (see [`crate::health`]).
    put_aside: bool,
    /// The address may be dialed again in this request.
    redial: bool,
    /// The next try is this backend again: its other addresses, or its only one once more.
    again: bool,
}

impl CloseVerdict {
    fn of(close: Close) -> CloseVerdict {
        // The same address dialed again counts every try, its stalls too.
        let counted = !close.stalled || close.redial;
        let go_on = close.copied && close.closed + usize::from(counted) < MAX_CLOSED;
        // A stall in a share cut short (the time nearly out) is not held against it, as a
        // connect's is not. Nor is a stall of the route's only address: it is dialed again
        // anyway, and a slow handshake there may merely be slower than its share.
        let blamed = !close.stalled || (!close.redial && close.fair_share);
        // A certificate refused would be refused again: its address is not dialed once
        // more; nor is one whose handshake stalled, which would stall again, unless it is
        // the route's only address (a cluster IP), whose next connection may reach another
        // pod.
        let redial = close.redial && !close.refused_tls;
        CloseVerdict {
            counted,
            go_on,
            // That address of a name's several is set aside, as one that refused the connect
            // is: a pod that takes connections and drops them (killed, or crashing on each)
            // would otherwise cost every request whose turn starts there a connection and a
            // round trip.
            set_aside_address: close.several && blamed,
            // Put aside once this request goes to none of its other addresses: one pod of a
            // headless Service closing is no reason to skip the name, whose next address is
            // tried right after; but a request given up here (MAX_CLOSED) is a reason.
            put_aside: (!close.more || !go_on) && blamed,
            redial,
            // Its other addresses, unless those left had gone unanswered already (the name
            // has just been put aside: the next backend, rather than those again); or the
            // route's only address once more.
            again: go_on && (close.more || redial),
        }
    }
}

/// A backend took the connection but did not answer the upgrade within the time (its
/// process hung, or overloaded): 504, and the backend put aside (see [`answer_failed`]), so
/// that the route's next requests go to its others meanwhile. Not if the tries before it (or
/// its own slow connect) left it less than half of its even share of the time to answer in.
/// `secured`: whether its TLS handshake (if any) was done.
fn unanswered(leg: Leg<'_>, reached: Reached<'_>, secured: bool) -> ProxyError {
    if reached.asked.elapsed() >= reached.even / 2 {
        let what = match secured {
            true => "took the connection but did not answer the upgrade in time",
            false => "took the connection but did not finish the TLS handshake in time",
        };
        let error = std::io::Error::new(std::io::ErrorKind::TimedOut, what);
        (leg.metrics).backend_connect_failed(&leg.route.config.name, reached.backend, &error);
        answer_failed(leg, reached.at(), &error, (reached.began, reached.asked));
    }
    ProxyError::BackendTimeout
}

/// A backend took the connection and failed the request (hung, or a server error under
/// least-connections): put aside as one that failed to take the connection is; for one of a
/// name's several addresses (`at`: the backend, and that address), the address set aside,
/// and the name only once all its addresses have failed, or as many tries of them in a row
/// (one bad pod of a headless Service is no reason to skip the others). `when`: when the
/// try began (on [`crate::health::now`]'s clock), and when the request was sent.
fn answer_failed(
    leg: Leg<'_>,
    at: (&str, Option<std::net::SocketAddr>),
    error: &dyn std::fmt::Display,
    when: (u64, tokio::time::Instant),
) {
    let ((backend, addr), (began, asked)) = (at, when);
    if let Some(addr) = addr {
        dial::set_aside(backend, addr, leg.timing.cooldown, asked, error);
    }
    // The name too once every address of it has failed since it last answered, or as many
    // tries in a row (all its pods hung): its turns go to the route's other backends
    // meanwhile.
    if addr.is_none() || crate::resolve::all_failed(backend) {
        put_aside(leg, backend, error, began);
    }
}

/// An answer that says the backend cannot serve: 502, 503 or 504 (it is down, overloaded, or
/// draining: not a status a client's request can provoke from a working app, as a 500 can),
/// or an answer or 101 that fails its checks. With `balance = "least_connections"`, such a
/// backend, holding no tunnel, would be every request's first choice: it is put aside
/// instead, as one that refuses connections is. (Round-robin sends it its turns only, and
/// takes such answers as answers.)
fn cannot_serve(answered: &Result<Answer, Attempt>) -> Option<String> {
    match answered {
        Ok(Answer::NotUpgraded(answer))
            if (502..=504).contains(&answer.response.status().as_u16()) =>
        {
            Some(format!(
                "answered the upgrade with {}",
                answer.response.status()
            ))
        }
        Err(Attempt::Failed(ProxyError::Internal(_))) => None,
        Err(Attempt::Failed(error)) => Some(error.to_string()),
        _ => None,
    }
}

/// Counts `backend`'s refusals in a row (answers other than 101) and says so once they are
/// [`crate::health::REFUSALS_IN_A_ROW`] or more: on a least-connections route, a failure, as
/// [`cannot_serve`]'s are (see the constant for why). A 101 ends the count.
fn refused_too_often(
    route: &Route,
    backend: &str,
    answered: &Result<Answer, Attempt>,
) -> Option<String> {
    let health = route.health_of(backend)?;
    match answered {
        Ok(Answer::Upgraded(_)) => {
            health.upgraded();
            None
        }
        Ok(Answer::NotUpgraded(answer)) if route.config.balance == Balance::LeastConnections => {
            let in_a_row = health.refused();
            (in_a_row >= crate::health::REFUSALS_IN_A_ROW).then(|| {
                let status = answer.response.status();
                format!("refused {in_a_row} upgrades in a row, the last with {status}")
            })
        }
        _ => None,
    }
}

/// How many backends (or addresses, or a route's only address dialed again) may close before
/// answering one request before it is given up: a failing deploy whose every pod accepts and
/// closes must not get each request once per pod.
const MAX_CLOSED: usize = 3;

/// How one backend's exchange failed.
enum Attempt {
    /// Its connection closed or reset before any answer: another backend may be tried.
    Gone(ProxyError),
    Failed(ProxyError),
}

impl From<ProxyError> for Attempt {
    fn from(error: ProxyError) -> Attempt {
        Attempt::Failed(error)
    }
}

/// The upgrade request again, for the next backend (it has no body).
fn copy_of(request: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut copy = Request::new(Empty::new());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// The backend connection, with TLS over it if the route asks for that. A failed handshake
/// is as a close before answering: nothing of the request has reached the backend, and
/// another may take it. Refused by TLS itself (a certificate not trusted, no protocol in
/// common), it is a TLS failure, which the same backend would repeat; closed or reset
/// midway, it is a close like any other (a pod going away behind a cluster IP, whose next
/// connection may reach another). (A TLS 1.3 backend refusing the client certificate says
/// so after the handshake, to the request's first read: see [`ProxyError::backend_gone`].)
/// Not finished `by` (if given), it is as a connect not answered in its share: a timeout
/// (see `exchange`).
async fn secure_by(
    by: Option<tokio::time::Instant>,
    route: &Route,
    backend: &str,
    socket: TcpStream,
) -> Result<BackendIo, Attempt> {
    let Some(by) = by else {
        return secure(route, backend, socket).await;
    };
    match tokio::time::timeout_at(by, secure(route, backend, socket)).await {
        Ok(secured) => secured,
        Err(_) => Err(Attempt::Gone(ProxyError::BackendTimeout)),
    }
}

/// Why a backend whose TLS handshake did not finish in its share of the time is put aside.
const STALLED: &str =
    "took the connection but did not finish the TLS handshake in its share of the time";

/// [`secure_by`] without a time of its own.
async fn secure(route: &Route, backend: &str, socket: TcpStream) -> Result<BackendIo, Attempt> {
    let Some(tls) = &route.backend_tls else {
        return Ok(Either::Left(socket));
    };
    match tls.connect(backend, socket).await {
        Ok(tls) => Ok(Either::Right(Box::new(tls))),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(Attempt::Gone(ProxyError::BackendTls(e.to_string())))
        }
        Err(e) => Err(Attempt::Gone(ProxyError::BackendFailed(format!(
            "backend closed the connection during the TLS handshake: {e}"
        )))),
    }
}

/// Forwards `request` on `socket` and takes the backend's answer; `busy` counts it in the
/// backend's open connections, and goes with the tunnel if it opens.
async fn attempt(
    socket: BackendIo,
    request: Request<Empty<Bytes>>,
    offer: &websocket::Offer<'_>,
    busy: Counted,
) -> Result<Answer, Attempt> {
    let heard = Arc::new(AtomicBool::new(false));
    let socket = Heard {
        socket,
        heard: heard.clone(),
        read: 0,
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // The answer's head must fit (64 KiB: four times nginx's proxy_buffer_size ceiling),
        // and a relayed body is read in pieces no larger: hyper's default of 400 KiB let a
        // client that does not read a large refusal hold ~2 MiB of buffers until its deadline.
        .max_buf_size(BACKEND_BUFFER)
        .max_header_size(BACKEND_BUFFER)
        .handshake(TokioIo::new(socket))
        .await
        .map_err(|e| ProxyError::backend_failed(&e))?;
    let mut conn = conn.with_upgrades();
    let mut conn_done = false;
    let response = match answer_head(&mut sender, request, &mut conn, &mut conn_done).await {
        Ok(response) => response,
        // Not a byte of answer (not even a 100 Continue): the connection failed with the
        // request unanswered, closed or reset, whether or not the request was written.
        Err(e) if !heard.load(Ordering::Relaxed) => {
            return Err(Attempt::Gone(ProxyError::backend_gone(&e)))
        }
        Err(e) => return Err(ProxyError::backend_failed(&e).into()),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let answer = non_upgrade(response, conn, conn_done).await?;
        return Ok(Answer::NotUpgraded(answer));
    }
    // 101 is HTTP/1.1's (RFC 9110 §15.2.2 and RFC 6455 §4.1: an HTTP/1.0 server has no
    // upgrade); a client would have to accept a tunnel its backend never properly offered.
    if response.version() != Version::HTTP_11 {
        return Err(ProxyError::BadBackendUpgrade("101 not in HTTP/1.1").into());
    }
    websocket::check_response(response.headers(), offer)?;
    let tunnel = take_tunnel(response, (!conn_done).then_some(conn), busy).await?;
    Ok(Answer::Upgraded(tunnel))
}

/// A backend's answer other than 101, checked, to relay; `conn` is its connection, still to
/// be driven unless `conn_done`.
async fn non_upgrade<C>(
    mut response: Response<Incoming>,
    mut conn: C,
    mut conn_done: bool,
) -> Result<NonUpgrade, ProxyError>
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + Unpin + 'static,
{
    check_refusal(&response)?;
    // The body's first frame, if it came with the head, is read before anything is passed
    // on: a body broken from its start (bad chunk framing) gets the client a 502, where
    // hyper would drop the connection without even the head. A body still to come is not
    // waited for (the head goes out, and a body that breaks later cuts the answer short).
    let first = match arrived_frame(response.body_mut(), &mut conn, &mut conn_done).await {
        Some(Some(Err(e))) => {
            return Err(ProxyError::BadBackendAnswer(format!("body: {e}")));
        }
        Some(Some(Ok(frame))) => Some(frame),
        Some(None) | None => None,
    };
    // The rest of the body still has to flow; the connection ends when the client has it.
    let backend = (!conn_done).then(|| Box::pin(conn) as BackendConn);
    Ok(NonUpgrade {
        response,
        first,
        backend,
    })
}

/// Sends `request` and drives `conn` in this task until the answer's head is in (`conn_done`
/// tells whether the connection future has finished meanwhile): no extra task per upgrade,
/// and a timeout drops both together. With upgrades on, the connection future completes in
/// the very poll that delivers a 101, so its end is not an error by itself.
async fn answer_head<C>(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
    conn: &mut C,
    conn_done: &mut bool,
) -> Result<Response<Incoming>, hyper::Error>
where
    C: std::future::Future<Output = hyper::Result<()>> + Unpin,
{
    let send = sender.send_request(request);
    tokio::pin!(send);
    // The connection can fail after it handed over a complete answer (a backend that sends
    // stray bytes behind a refusal): that answer still stands, so the error only counts
    // when no answer comes.
    let mut conn_error = None;
    loop {
        tokio::select! {
            biased;
            response = &mut send => return match (response, conn_error) {
                (Ok(response), _) => Ok(response),
                (Err(_), Some(e)) | (Err(e), None) => Err(e),
            },
            ended = &mut *conn, if !*conn_done => {
                *conn_done = true;
                conn_error = ended.err();
            }
        }
    }
}

/// The body's next frame if the backend has already sent it (`Some(None)` at the body's
/// end), without waiting for more: a few rounds of the body asking for data and the
/// connection decoding what its socket holds.
async fn arrived_frame<C>(
    body: &mut Incoming,
    conn: &mut C,
    conn_done: &mut bool,
) -> Option<Option<hyper::Result<Frame<Bytes>>>>
where
    C: std::future::Future<Output = hyper::Result<()>> + Unpin,
{
    std::future::poll_fn(|cx| {
        for _ in 0..4 {
            if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            if *conn_done {
                break;
            }
            // Its error, if any, reaches the body too.
            if Pin::new(&mut *conn).poll(cx).is_ready() {
                *conn_done = true;
            }
        }
        Poll::Ready(None)
    })
    .await
}

/// A non-101 answer that cannot be passed on as it is: a status beyond the five classes
/// (RFC 9110 §15) or 407, or a transfer coding other than chunked, which the client never asked for
/// (wsgate sends no `TE`) and which would reach it undeclared once the answer is framed anew.
fn check_refusal(response: &Response<Incoming>) -> Result<(), ProxyError> {
    let status = response.status().as_u16();
    // 407 asks for credentials of a proxy the client never chose (wsgate is none).
    if status > 599 || status == 407 {
        return Err(ProxyError::BadBackendAnswer(format!("status {status}")));
    }
    let mut codings = crate::grammar::tokens(response.headers(), &TRANSFER_ENCODING);
    if let Some(coding) = codings.find(|c| !c.eq_ignore_ascii_case("chunked")) {
        let coding = coding.to_string();
        return Err(ProxyError::BadBackendAnswer(format!(
            "transfer coding {coding:?}"
        )));
    }
    Ok(())
}

/// The backend's socket behind its checked 101 (`conn`: its connection, unless it is done).
async fn take_tunnel(
    mut response: Response<Incoming>,
    conn: Option<impl std::future::Future<Output = hyper::Result<()>>>,
    busy: Counted,
) -> Result<Tunnel, ProxyError> {
    let on_upgrade = hyper::upgrade::on(&mut response);
    if let Some(conn) = conn {
        conn.await.map_err(|e| ProxyError::backend_failed(&e))?;
    }
    let upgraded = on_upgrade
        .await
        .map_err(|e| ProxyError::backend_failed(&e))?;
    let parts = upgraded
        .downcast::<TokioIo<Heard>>()
        .map_err(|_| ProxyError::Internal("unexpected upgraded stream type"))?;
    let (head, _) = response.into_parts();
    Ok(Tunnel {
        head,
        socket: parts.io.into_inner().socket,
        early: parts.read_buf,
        busy,
    })
}

/// The most of a backend's answer read ahead: all of its head, or a piece of its body.
const BACKEND_BUFFER: usize = 64 * 1024;

/// A backend socket that notes whether the backend has sent a byte yet: a connection that
/// failed before then carried no answer, and the request may go to the next backend.
struct Heard {
    socket: BackendIo,
    heard: Arc<AtomicBool>,
    /// Bytes read so far, framing included (see [`ANSWER_MOST`]).
    read: u64,
}

/// The most of a backend's answer read, head and body with their framing, before its
/// connection is given up: a refusal's body is relayed at the client's pace, but an endless
/// one, or framing that yields no byte of body (a chunk size of endless zeros, a stream of
/// 100 Continue heads), would keep a core parsing until the connection's deadline. Far above
/// any page a refusal carries; a 101's socket is taken over long before.
const ANSWER_MOST: u64 = 16 << 20;

/// The error of a backend connection that sent more than [`ANSWER_MOST`].
const ANSWER_TOO_LONG: &str = "answer over 16 MiB: the rest is not read";

/// Whether `e`, or an error it was caused by, is a backend connection's cut at
/// [`ANSWER_MOST`].
pub(crate) fn past_answer_most(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |cause| cause.source()).any(|cause| {
        (cause.downcast_ref::<std::io::Error>()).is_some_and(|io| io.to_string() == ANSWER_TOO_LONG)
    })
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.heard.store(true, Ordering::Relaxed);
            self.read += read;
            if self.read > ANSWER_MOST {
                let why = ANSWER_TOO_LONG;
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    why,
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a close or a stall before any answer decides, case by case: the intent of
    /// [`after_close`]'s rules pinned down (review: several flags combine there).
    #[test]
    fn a_close_before_any_answer_is_judged_by_its_kind_and_what_is_left() {
        // A lone backend at one address, not the route's only one: closed before answering.
        let plain = Close {
            stalled: false,
            refused_tls: false,
            redial: false,
            several: false,
            more: false,
            fair_share: true,
            copied: true,
            closed: 0,
        };
        let v = |counted, go_on, set_aside_address, put_aside, redial, again| CloseVerdict {
            counted,
            go_on,
            set_aside_address,
            put_aside,
            redial,
            again,
        };
        let cases = [
            // Counted; on to the next backend; put aside; not dialed again.
            ("close", plain, v(true, true, false, true, false, false)),
            // One of a name's several, with more: that address set aside, the name tried
            // again at its next address, and not put aside.
            (
                "close of one of several, more left",
                Close {
                    several: true,
                    more: true,
                    ..plain
                },
                v(true, true, true, false, false, true),
            ),
            // The last of its addresses: the name put aside too.
            (
                "close of the last of several",
                Close {
                    several: true,
                    ..plain
                },
                v(true, true, true, true, false, false),
            ),
            // The third close gives the request up, and blames the name even with more.
            (
                "third close",
                Close {
                    several: true,
                    more: true,
                    closed: MAX_CLOSED - 1,
                    ..plain
                },
                v(true, false, true, true, false, false),
            ),
            // A request not copied cannot go on; the backend is blamed.
            (
                "not copied",
                Close {
                    copied: false,
                    ..plain
                },
                v(true, false, false, true, false, false),
            ),
            // The route's only address: dialed once more, as its next connection may reach
            // another pod; a close is still blamed.
            (
                "close of the only address",
                Close {
                    redial: true,
                    ..plain
                },
                v(true, true, false, true, true, true),
            ),
            // A TLS stall with its fair share: not counted among the closes, blamed.
            (
                "stall",
                Close {
                    stalled: true,
                    ..plain
                },
                v(false, true, false, true, false, false),
            ),
            // A stall in a share cut short is not the backend's fault.
            (
                "stall in a share cut short",
                Close {
                    stalled: true,
                    fair_share: false,
                    several: true,
                    ..plain
                },
                v(false, true, false, false, false, false),
            ),
            // The only address stalling: counted (each redial is), not blamed, dialed again.
            (
                "stall of the only address",
                Close {
                    stalled: true,
                    redial: true,
                    ..plain
                },
                v(true, true, false, false, true, true),
            ),
            // Its certificate refused: not dialed again, even as the only address.
            (
                "TLS refused at the only address",
                Close {
                    refused_tls: true,
                    redial: true,
                    ..plain
                },
                v(true, true, false, true, false, false),
            ),
        ];
        for (what, close, expected) in cases {
            assert_eq!(CloseVerdict::of(close), expected, "{what}");
        }
    }
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::health::Health;

    /// A backend name with two addresses (a headless Service's two pods): the first takes the
    /// connection and closes it unanswered (its pod killed), the second answers. The request
    /// goes to the second.
    #[tokio::test]
    async fn an_address_that_closes_before_answering_leaves_the_name_s_next_one() {
        let (good_addr, _answering) = answering_backend().await;
        let dying = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Only a key for the cache: the seeded addresses are what is dialled.
        let name = "two-pods.test:9001".to_string();
        let dying_addr = dying.local_addr().unwrap();
        crate::resolve::seed(&name, &[dying_addr, good_addr]);
        tokio::spawn(async move { drop(dying.accept().await) });
        // Another backend, so that the name could be put aside.
        let table = table_of(vec![name.clone(), "127.0.0.1:1".into()]);
        assert_eq!(reached(&table).await, good_addr);
        // One pod gone is no reason to put the name aside: its next address answered. That
        // address is set aside, as one refusing connects is.
        assert!(!name_health(&table).ever_put_aside());
        assert!(crate::resolve::is_aside(&name, dying_addr));
    }

    /// Every address of a name closing before answering (a failing deploy): the request is
    /// given up after three closes, with addresses of the name left, and the name is put
    /// aside, so the route's next requests go to its other backend.
    #[tokio::test]
    async fn a_name_whose_addresses_all_close_is_put_aside() {
        let mut addrs = Vec::new();
        for _ in 0..4 {
            addrs.push(closing_backend().await);
        }
        let name = "four-pods.test:9001".to_string();
        crate::resolve::seed(&name, &addrs);
        let table = table_of(vec![name, "127.0.0.1:1".into()]);
        let answer = open_on(&table).await;
        assert!(
            matches!(answer, Err(ProxyError::BackendFailed(_))),
            "{:?}",
            answer.err()
        );
        assert!(name_health(&table).ever_put_aside());
    }

    /// A backend that answers each upgrade with a proper 101 (connections dialed and dropped
    /// unused, as the losers of a race are, are let go).
    pub(super) async fn answering_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_upgrade(socket));
            }
        });
        (addr, answering)
    }

    async fn answer_upgrade(mut socket: TcpStream) -> std::io::Result<()> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            socket.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap_or_default();
        let accept = websocket::accept_for(key.as_bytes());
        let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        socket.write_all(answer.as_bytes()).await
    }

    /// A table of one route, `/` to `backends`.
    fn table_of(backends: Vec<String>) -> crate::routes::RouteTable {
        balanced_table(backends, Balance::RoundRobin)
    }

    fn balanced_table(backends: Vec<String>, balance: Balance) -> crate::routes::RouteTable {
        let config = crate::config::RouteConfig {
            name: "chat".into(),
            host: None,
            host_location: None,
            path: "/".into(),
            subprotocols: None,
            origins: None,
            backends,
            balance,
            idle: None,
            backend_tls: None,
            require_client_certificate: false,
        };
        crate::routes::RouteTable::new(&[config.into()])
    }

    /// A name's two addresses, the first taking the connection and never finishing the TLS
    /// handshake (a hung pod of a headless Service), the second refusing: the stall had half
    /// of the time, its even share, so its address is set aside, though it was the route's
    /// only backend (whose even share of the whole would be all of it).
    #[tokio::test]
    async fn a_lone_names_address_stalled_in_the_tls_handshake_is_set_aside() {
        let (hung, _held) = hung_backend().await;
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = refused.local_addr().unwrap();
        let name = "stalled-tls-pod.test:9443".to_string();
        crate::resolve::seed(&name, &[hung, refused]);
        let config = crate::config::RouteConfig {
            backend_tls: None,
            ..the_route(&table_of(vec![name.clone()]))
                .config
                .as_ref()
                .clone()
        };
        let tls = Some(Arc::new(crate::tls::BackendTls::trusting_nothing()));
        let table = crate::routes::RouteTable::with_backend_tls(&[config.into()], vec![tls]);
        let answer = open_with(&table, timing(Duration::from_secs(1), Duration::ZERO)).await;
        assert!(matches!(answer, Err(ProxyError::BackendTimeout)));
        assert!(crate::resolve::is_aside(&name, hung));
    }

    fn the_route(table: &crate::routes::RouteTable) -> &Route {
        let crate::routes::Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!("the route");
        };
        route
    }

    /// Where an upgrade through the table's route went: the backend address that took it.
    async fn reached(table: &crate::routes::RouteTable) -> SocketAddr {
        let answer = open_on(table).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        tcp_of(&tunnel.socket).peer_addr().unwrap()
    }

    /// The health of the route's first backend.
    fn name_health(table: &crate::routes::RouteTable) -> &Health {
        let route = the_route(table);
        route.health_of(&route.config.backends[0]).unwrap()
    }

    /// An upgrade request through the table's route.
    async fn open_on(table: &crate::routes::RouteTable) -> Result<Answer, ProxyError> {
        let timing = timing(Duration::from_secs(5), Duration::from_millis(250));
        open_with(table, timing).await
    }

    /// An upgrade request through the table's route, with this timing.
    async fn open_with(
        table: &crate::routes::RouteTable,
        timing: Timing,
    ) -> Result<Answer, ProxyError> {
        open_counted(table, timing, &Metrics::default()).await
    }

    /// An upgrade request for the table's route.
    fn upgrade_request() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "pods.test")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .unwrap()
    }

    /// The same, counted in `metrics`.
    async fn open_counted(
        table: &crate::routes::RouteTable,
        timing: Timing,
        metrics: &Metrics,
    ) -> Result<Answer, ProxyError> {
        let request = upgrade_request();
        let mut tried = None;
        let counts = (metrics, &Loads::default());
        open(the_route(table), request, &[], timing, &mut tried, counts).await
    }

    /// Timing with this connect timeout and attempt delay, and a first cool-down of 1 s.
    pub(super) fn timing(timeout: Duration, attempt_delay: Duration) -> Timing {
        Timing {
            timeout,
            cooldown: Duration::from_secs(1),
            attempt_delay,
        }
    }

    /// An address where SYNs go unanswered: a listen queue of one, filled.
    pub(super) struct Unreachable {
        pub(super) addr: SocketAddr,
        listener: socket2::Socket,
        _filler: std::net::TcpStream,
    }

    impl Unreachable {
        pub(super) fn start() -> Unreachable {
            use socket2::{Domain, Socket, Type};
            let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            listener
                .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            listener.listen(0).unwrap();
            let addr = listener.local_addr().unwrap().as_socket().unwrap();
            let filler = std::net::TcpStream::connect(addr).unwrap();
            Unreachable {
                addr,
                listener,
                _filler: filler,
            }
        }

        /// Takes the connection that fills the listen queue: the next SYN is answered.
        pub(super) fn make_room(&self) {
            self.listener.accept().unwrap();
        }
    }

    /// Waits until a connect to `addr` has had its SYN dropped (the listen queue full): a
    /// socket of this namespace stays in SYN-SENT towards it, and the kernel has counted a
    /// drop since `dropped` (the count of [`listen_overflows`] before). The count is the
    /// whole namespace's, other tests' drops included; the socket's state is this one's.
    pub(super) async fn first_syn_dropped(addr: SocketAddr, dropped: u64) {
        // Real time (the tests' clock may be paused): a SYN never dropped fails, not hangs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while listen_overflows() == dropped || !syn_sent_to(addr) {
            assert!(
                std::time::Instant::now() < deadline,
                "no SYN to {addr} dropped within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether a socket is in SYN-SENT towards `addr` (an IPv4 address), by /proc/net/tcp.
    fn syn_sent_to(addr: SocketAddr) -> bool {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            panic!("IPv4 only");
        };
        let remote = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            addr.port()
        );
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02")
        })
    }

    /// SYNs the kernel dropped for a full listen queue, so far (this network namespace's).
    pub(super) fn listen_overflows() -> u64 {
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
        let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (tcp_ext.next().unwrap(), tcp_ext.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows");
        let value = values.split_whitespace().nth(at.unwrap()).unwrap();
        value.parse().unwrap()
    }

    /// A route whose first backend is silent and second refuses: the silent one, started
    /// first with half the time as its share, is the only one left once the other has
    /// refused, and is waited on to the end of the time (504 at `connect`, not at its share).
    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_left_alone_is_waited_on_to_the_end_of_the_time() {
        let silent = Unreachable::start();
        let table = table_of(vec![silent.addr.to_string(), "127.0.0.1:1".into()]);
        let start = tokio::time::Instant::now();
        let answer = open_on(&table).await;
        assert!(matches!(answer, Err(ProxyError::BackendTimeout)));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// The same with a backend that is slow to take the connection (its first SYN dropped,
    /// the kernel's second a second later), beside two refusing: it takes the request past
    /// its share of 0.9 s, within the time, rather than the client getting 504 at 0.9 s.
    #[tokio::test]
    async fn a_slow_backend_left_alone_may_answer_past_its_share() {
        let Unreachable {
            addr,
            listener,
            _filler,
        } = Unreachable::start();
        let refusing = ["127.0.0.1:1".into(), "127.0.0.1:2".into()];
        let table = table_of([vec![addr.to_string()], refusing.to_vec()].concat());
        let timing = timing(Duration::from_millis(2700), Duration::from_millis(250));
        let dropped = listen_overflows();
        let serving = async {
            // Its first SYN dropped; then the queue is given room, and the upgrade answered.
            first_syn_dropped(addr, dropped).await;
            let listener = std::net::TcpListener::from(listener);
            drop(listener.accept().unwrap());
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            answer_upgrade(socket).await.unwrap();
        };
        let (answer, ()) = tokio::join!(open_with(&table, timing), serving);
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        assert_eq!(tcp_of(&tunnel.socket).peer_addr().unwrap(), addr);
    }

    /// A route whose first backend is silent and second answers: with the attempts raced, the
    /// request is upgraded by the second once the first has gone unanswered for the delay,
    /// and the first is put aside.
    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_is_raced_by_the_next_and_put_aside() {
        let silent = Unreachable::start();
        let (good, _answering) = answering_backend().await;
        let table = table_of(vec![silent.addr.to_string(), good.to_string()]);
        let start = tokio::time::Instant::now();
        assert_eq!(reached(&table).await, good);
        let took = start.elapsed();
        // The silent backend's share alone would have been 2.5 s.
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(name_health(&table).ever_put_aside());
    }

    /// A backend that takes connections and never answers (its process hung): the request
    /// that meets it gets 504 at the end of the time, and it is put aside, so the route's
    /// next requests go to its other backend, its own turn included.
    #[tokio::test(start_paused = true)]
    async fn a_backend_that_takes_the_connection_and_never_answers_is_put_aside() {
        let (hung_addr, held) = hung_backend().await;
        let (good, _answering) = answering_backend().await;
        let table = table_of(vec![hung_addr.to_string(), good.to_string()]);
        let start = tokio::time::Instant::now();
        let answer = open_on(&table).await;
        assert!(matches!(answer, Err(ProxyError::BackendTimeout)));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(name_health(&table).ever_put_aside());
        assert_eq!(reached(&table).await, good);
        assert_eq!(reached(&table).await, good, "the hung one's turn");
        held.abort();
    }

    /// The same with one of a name's two addresses hung (a headless Service's pod): that
    /// address is set aside, not the name, whose other pod takes the next request.
    #[tokio::test(start_paused = true)]
    async fn a_names_address_that_never_answers_is_set_aside_not_the_name() {
        let (hung_addr, held) = hung_backend().await;
        let (good, _answering) = answering_backend().await;
        let name = "hung-pod.test:9001".to_string();
        crate::resolve::seed(&name, &[hung_addr, good]);
        let table = table_of(vec![name, "127.0.0.1:1".into()]);
        let answer = open_on(&table).await;
        assert!(matches!(answer, Err(ProxyError::BackendTimeout)));
        assert!(!name_health(&table).ever_put_aside());
        // The route's next turn is its other backend, refusing; then the name's good pod.
        assert_eq!(reached(&table).await, good);
        assert_eq!(reached(&table).await, good, "the hung pod dialed last");
        // Its cool-down over, one request tries it again: taking the connection is no
        // answer, so that try's 504 doubles the cool-down, rather than the connect putting it
        // back in turn and the next request meeting it again a second later.
        tokio::time::advance(Duration::from_secs(1)).await;
        let answer = open_on(&table).await;
        assert!(matches!(answer, Err(ProxyError::BackendTimeout)));
        tokio::time::advance(Duration::from_millis(1500)).await;
        let name = &the_route(&table).config.backends[0];
        let second = Duration::from_secs(1);
        let order = crate::resolve::in_turn(name, &[hung_addr, good], &[], second, second);
        assert_eq!(order.addrs, [good, hung_addr], "still aside, for 2 s");
        held.abort();
    }

    /// A name whose lookup never answers: 504 as for a backend that does not answer, said as
    /// the resolver's stall; and beside a working backend, that one answers.
    #[tokio::test(start_paused = true)]
    async fn a_name_lookup_that_never_answers_is_a_504_said_as_such() {
        let name = "stalled-lookup.test:9001".to_string();
        crate::resolve::seed_stalled(&name);
        let timing = timing(Duration::from_secs(2), Duration::from_millis(250));
        let answer = open_with(&table_of(vec![name.clone()]), timing).await;
        assert!(
            matches!(answer, Err(ProxyError::BackendLookupTimeout)),
            "{:?}",
            answer.err()
        );
        let (good, _answering) = answering_backend().await;
        let table = table_of(vec![name, good.to_string()]);
        assert_eq!(reached(&table).await, good);
    }

    /// A name whose lookup has not answered for `attempt_delay` while another backend
    /// answered is put aside, as a silent connect is: else every request whose turn it is
    /// would wait `attempt_delay` for it, for as long as the lookup lasts.
    #[tokio::test(start_paused = true)]
    async fn a_name_lookup_unanswered_while_another_answers_is_put_aside() {
        let name = "stalled-beside.test:9001".to_string();
        crate::resolve::seed_stalled(&name);
        let (good, _answering) = answering_backend().await;
        let table = table_of(vec![name, good.to_string()]);
        assert!(!name_health(&table).ever_put_aside());
        assert_eq!(reached(&table).await, good);
        assert!(name_health(&table).ever_put_aside());
    }

    /// Every address of a name hung: each 504 sets one aside, and once all are, the name is
    /// put aside too, so the route's next requests go to its other backend.
    #[tokio::test(start_paused = true)]
    async fn a_name_whose_addresses_all_never_answer_is_put_aside() {
        let (hung_a, held_a) = hung_backend().await;
        let (hung_b, held_b) = hung_backend().await;
        let (good, _answering) = answering_backend().await;
        let name = "hung-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[hung_a, hung_b]);
        let table = table_of(vec![name, good.to_string()]);
        // A 2 s connect time: each hung pod's 504 comes at its end.
        let timing = timing(Duration::from_secs(2), Duration::from_millis(250));
        let timed_out = |answer| matches!(answer, Err(ProxyError::BackendTimeout));
        // The name's turn, its first pod; the good backend's turn; the name's, its second.
        assert!(timed_out(open_with(&table, timing).await));
        assert!(!name_health(&table).ever_put_aside(), "one pod of two");
        assert_eq!(reached(&table).await, good);
        assert!(timed_out(open_with(&table, timing).await));
        assert!(name_health(&table).ever_put_aside(), "both pods");
        // The name's turn again: put aside, it goes to the good backend.
        assert_eq!(reached(&table).await, good);
        assert_eq!(reached(&table).await, good);
        held_a.abort();
        held_b.abort();
    }

    /// Every pod of a name hung, one request at a time: each 504 takes the whole connect
    /// time, past the first pod's cool-down, so that pod is tried again before the third
    /// pod is ever reached. Three tries failed in a row, as many as the name has addresses,
    /// put the name aside all the same, and the route's requests go to its other backend.
    #[tokio::test(start_paused = true)]
    async fn a_name_whose_pods_all_hang_is_put_aside_though_one_was_never_tried() {
        let (a, held_a) = hung_backend().await;
        let (b, held_b) = hung_backend().await;
        let (c, held_c) = hung_backend().await;
        let (good, _answering) = answering_backend().await;
        let name = "three-hung-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[a, b, c]);
        let table = table_of(vec![name, good.to_string()]);
        // Nothing raced: each try is one pod's, from connect to 504.
        let timing = timing(Duration::from_secs(5), Duration::ZERO);
        let mut timed_out = 0;
        for _ in 0..8 {
            if name_health(&table).ever_put_aside() {
                break;
            }
            match open_with(&table, timing).await {
                Err(ProxyError::BackendTimeout) => timed_out += 1,
                Ok(Answer::Upgraded(tunnel)) => {
                    assert_eq!(tcp_of(&tunnel.socket).peer_addr().unwrap(), good)
                }
                other => panic!("{:?}", other.err()),
            }
        }
        assert!(name_health(&table).ever_put_aside(), "{timed_out} 504s");
        assert_eq!(timed_out, 3);
        for _ in 0..4 {
            assert_eq!(reached(&table).await, good);
        }
        for held in [held_a, held_b, held_c] {
            held.abort();
        }
    }

    /// A name's address left silent while another backend took the request is set aside,
    /// and counted as a failure: the request never saw it, and neither would an operator.
    #[tokio::test(start_paused = true)]
    async fn a_names_silent_address_dropped_for_another_backend_is_counted() {
        let (silent_a, silent_b) = (Unreachable::start(), Unreachable::start());
        let (good, _answering) = answering_backend().await;
        let name = "silent-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[silent_a.addr, silent_b.addr]);
        let table = table_of(vec![name.clone(), good.to_string()]);
        let metrics = Metrics::default();
        let timing = timing(Duration::from_secs(5), Duration::from_millis(250));
        let answer = open_counted(&table, timing, &metrics).await;
        assert!(matches!(answer, Ok(Answer::Upgraded(_))));
        let text = metrics.render(0, 1, &crate::load::Loads::default());
        let series = format!(
            "wsgate_backend_connect_failures_total{{route=\"chat\",backend=\"{name}\",error=\"timeout\"}} 1"
        );
        assert!(text.contains(&series), "{text}");
    }

    /// A name's first address refusing, its second silent, while another backend takes the
    /// request: raced (the other dialed beside the silent one), or one after the other (the
    /// name's share of the time runs out). Either way its connect is dropped, and both its
    /// failures are counted, the refusal before it as well as the silence.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_connects_earlier_failures_are_counted() {
        for (n, delay) in [Duration::from_millis(250), Duration::ZERO]
            .into_iter()
            .enumerate()
        {
            let silent = Unreachable::start();
            let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let refused_addr = refused.local_addr().unwrap();
            drop(refused);
            let (good, _answering) = answering_backend().await;
            let name = format!("refused-then-silent-{n}.test:9001");
            crate::resolve::seed(&name, &[refused_addr, silent.addr]);
            let table = table_of(vec![name.clone(), good.to_string()]);
            let metrics = Metrics::default();
            let answer =
                open_counted(&table, timing(Duration::from_secs(5), delay), &metrics).await;
            assert!(matches!(answer, Ok(Answer::Upgraded(_))), "{delay:?}");
            let text = metrics.render(0, 1, &crate::load::Loads::default());
            for error in ["refused", "timeout"] {
                let series = format!(
                    "wsgate_backend_connect_failures_total{{route=\"chat\",backend=\"{name}\",error=\"{error}\"}} 1"
                );
                assert!(text.contains(&series), "{delay:?}: {text}");
            }
        }
    }

    /// A listener that takes connections and holds them unanswered (a hung process).
    async fn hung_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hung.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = hung.accept().await {
                held.push(socket);
            }
        });
        (addr, held)
    }

    /// A listener that takes connections and closes them unanswered (a pod being killed).
    async fn closing_backend() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        addr
    }

    /// Route `[A, B]`, A a name of two addresses, the first silent, the second closing
    /// unanswered: once A's second address and B are raced and A's wins, then closes, the
    /// request still has B (dropped from the race, not silent) to go to.
    #[tokio::test(start_paused = true)]
    async fn a_backend_dropped_from_the_race_is_still_there_if_the_winner_closes() {
        let silent = Unreachable::start();
        let closing = closing_backend().await;
        let (good, _answering) = answering_backend().await;
        let name = "silent-then-closing.test:9001".to_string();
        crate::resolve::seed(&name, &[silent.addr, closing]);
        let table = table_of(vec![name, good.to_string()]);
        let start = tokio::time::Instant::now();
        assert_eq!(reached(&table).await, good);
        // Straight on to B: the name's silent address, left behind unanswered, is not dialed
        // again first (on the paused clock, so the order of events, not a timing).
        let took = start.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    /// Route `[A, B]`, A a name of three addresses, the first two silent: B answers at the
    /// delay, while A is only dialing its second address. A is not put aside: it has an
    /// address it never got to try.
    #[tokio::test(start_paused = true)]
    async fn a_name_still_dialing_its_addresses_is_not_put_aside_when_another_answers() {
        let (first, second) = (Unreachable::start(), Unreachable::start());
        let (working, _) = answering_backend().await;
        let (good, _answering) = answering_backend().await;
        let name = "two-silent-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[first.addr, second.addr, working]);
        let table = table_of(vec![name, good.to_string()]);
        assert_eq!(reached(&table).await, good);
        assert!(!name_health(&table).ever_put_aside());
    }

    /// `n` answering backends: their addresses, and the tasks that answer.
    async fn pods(n: usize) -> (Vec<SocketAddr>, Vec<tokio::task::JoinHandle<()>>) {
        let mut pods = Vec::new();
        for _ in 0..n {
            pods.push(answering_backend().await);
        }
        pods.into_iter().unzip()
    }

    /// A name of three addresses (a headless Service's three pods): requests start at each
    /// in turn, not all at the first the resolver listed.
    #[tokio::test]
    async fn a_names_addresses_are_taken_in_turn() {
        let (addrs, _pods) = pods(3).await;
        let name = "three-pods.test:9001".to_string();
        crate::resolve::seed(&name, &addrs);
        let table = table_of(vec![name]);
        let mut answered_by = Vec::new();
        for _ in 0..4 {
            answered_by.push(reached(&table).await);
        }
        assert_eq!(answered_by, [addrs[0], addrs[1], addrs[2], addrs[0]]);
    }

    /// A tunnel through the table's route, its connections counted in `loads`, and the
    /// address it reached.
    async fn tunnel_counted(
        table: &crate::routes::RouteTable,
        loads: &Loads,
    ) -> (Tunnel, SocketAddr) {
        let request = upgrade_request();
        let timing = timing(Duration::from_secs(5), Duration::from_millis(250));
        let counts = (&Metrics::default(), loads);
        let answer = open(the_route(table), request, &[], timing, &mut None, counts).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        let addr = tcp_of(&tunnel.socket).peer_addr().unwrap();
        (tunnel, addr)
    }

    /// A name of three addresses (a headless Service's pods) on a least-connections route:
    /// each new tunnel goes to the address with the fewest open, ties in turn (round-robin
    /// would take the fourth and fifth to the first and second).
    #[tokio::test]
    async fn least_connections_picks_among_a_names_addresses_by_their_tunnels() {
        let (addrs, _pods) = pods(3).await;
        let name = "least-loaded-pods.test:9001".to_string();
        crate::resolve::seed(&name, &addrs);
        let loads = Loads::default();
        let mut table = balanced_table(vec![name.clone()], Balance::LeastConnections);
        table.count_in(&loads);
        let mut held = Vec::new();
        for want in &addrs {
            let (tunnel, reached) = tunnel_counted(&table, &loads).await;
            assert_eq!(reached, *want, "level: in turn");
            held.push(tunnel);
        }
        drop(held.remove(1));
        let (fourth, reached) = tunnel_counted(&table, &loads).await;
        assert_eq!(reached, addrs[1], "the one with none open");
        held.push(fourth);
        drop(held.remove(0));
        let (_fifth, reached) = tunnel_counted(&table, &loads).await;
        assert_eq!(reached, addrs[0], "the one with none open");
        assert_eq!(loads.open(), [(name, 3)], "the name counts them all");
    }

    /// A name that had one address (a pod drained away, one left) then two: the tunnels of
    /// the lone address's time count, so the new pod gets the next one, though the turn
    /// would start at the old.
    #[tokio::test]
    async fn least_connections_counts_an_address_while_it_is_its_names_only_one() {
        let (old, _a) = answering_backend().await;
        let (new, _b) = answering_backend().await;
        let name = "drained-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[old]);
        let loads = Loads::default();
        let mut table = balanced_table(vec![name.clone()], Balance::LeastConnections);
        table.count_in(&loads);
        let (_first, reached) = tunnel_counted(&table, &loads).await;
        assert_eq!(reached, old);
        crate::resolve::seed(&name, &[old, new]);
        let (_second, reached) = tunnel_counted(&table, &loads).await;
        assert_eq!(reached, new, "the old pod's tunnel was counted");
    }

    /// Least-connections sorts only the addresses in turn: one set aside after a failure stays
    /// last though it has no tunnel; and a connect that failed, or was dropped, leaves no
    /// count behind.
    #[tokio::test(start_paused = true)]
    async fn least_connections_keeps_a_set_aside_address_last_and_counts_only_live_ones() {
        let silent = Unreachable::start();
        let (live_1, _a) = answering_backend().await;
        let (live_2, _b) = answering_backend().await;
        let name = "one-silent-pod.test:9001".to_string();
        crate::resolve::seed(&name, &[silent.addr, live_1, live_2]);
        let loads = Loads::default();
        let mut table = balanced_table(vec![name.clone()], Balance::LeastConnections);
        table.count_in(&loads);
        // Starts at the silent one (all at 0, its turn), and reaches live_1 after the delay.
        let (_first, reached) = tunnel_counted(&table, &loads).await;
        assert_eq!(reached, live_1);
        let now_at = |addr| loads.lock().now_at(addr);
        assert_eq!((now_at(silent.addr), now_at(live_1)), (0, 1));
        // Set aside now, at 0 against 1 and 0: live_2, then live_1, never the silent one.
        let mut held = Vec::new();
        let start = tokio::time::Instant::now();
        for want in [live_2, live_1, live_2] {
            let (tunnel, reached) = tunnel_counted(&table, &loads).await;
            assert_eq!(reached, want);
            held.push(tunnel);
        }
        // None of them dialed the silent one first and waited the delay on it (the paused
        // clock: the order of events, not a timing).
        let took = start.elapsed();
        assert!(took < Duration::from_millis(250), "{took:?}");
        assert_eq!(now_at(silent.addr), 0);
        assert_eq!(loads.open(), [(name, 4)]);
    }

    /// A route's only backend at one address, silent: dialed again beside itself, and
    /// counted once at its address, as at the backend, however many of its connects are
    /// under way; and not at all once the request is gone.
    #[tokio::test(start_paused = true)]
    async fn a_lone_address_dialed_beside_itself_counts_once() {
        let silent = Unreachable::start();
        let loads = Loads::default();
        let mut table = table_of(vec![silent.addr.to_string()]);
        table.count_in(&loads);
        let mut request = Box::pin(tunnel_counted(&table, &loads));
        // Two attempt delays: three connects under way.
        tokio::select! {
            _ = &mut request => panic!("a silent backend answered"),
            _ = tokio::time::sleep(Duration::from_millis(600)) => {}
        }
        assert_eq!(loads.lock().now_at(silent.addr), 1);
        assert_eq!(loads.open(), [(silent.addr.to_string(), 1)]);
        drop(request);
        assert_eq!(loads.lock().now_at(silent.addr), 0);
    }

    /// A backend that answers every upgrade with `status`.
    async fn refusing_backend(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8];
                        socket.read_exact(&mut byte).await?;
                        head.push(byte[0]);
                    }
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                    socket.write_all(answer.as_bytes()).await
                });
            }
        });
        (addr, answering)
    }

    /// A name's address set aside (another route's least-connections saw it answer 503),
    /// reached by a round-robin request that gets 503 from it too: still set aside, as only
    /// an answer that serves takes an address back into turn; one that serves does.
    #[tokio::test]
    async fn an_address_answering_503_is_not_taken_back_into_turn() {
        let (unavailable, _a) = refusing_backend("503 Service Unavailable").await;
        let name = "draining-pod.test:9001".to_string();
        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        crate::resolve::seed(&name, &[unavailable, refused]);
        let at = tokio::time::Instant::now();
        crate::resolve::set_aside(&name, unavailable, Duration::from_secs(60), at);
        let table = table_of(vec![name.clone()]);
        let answer = open_on(&table).await;
        let Ok(Answer::NotUpgraded(answer)) = answer else {
            panic!("not the backend's answer: {:?}", answer.err());
        };
        assert_eq!(answer.response.status(), 503);
        assert!(crate::resolve::is_aside(&name, unavailable));
        // The same for an address that serves: back in turn.
        let (serving, _b) = answering_backend().await;
        let name = "back-pod.test:9001".to_string();
        crate::resolve::seed(&name, &[serving, refused]);
        crate::resolve::set_aside(&name, serving, Duration::from_secs(60), at);
        assert_eq!(reached(&table_of(vec![name.clone()])).await, serving);
        assert!(!crate::resolve::is_aside(&name, serving));
    }

    /// A name of three addresses, the first silent (a pod on a dead node): the first request
    /// starts at it and reaches the second after the delay; the silent one is set aside, so
    /// the next request that would start at it (the fourth) starts at a live one instead.
    #[tokio::test(start_paused = true)]
    async fn a_silent_address_of_a_name_is_dialed_last_while_set_aside() {
        let silent = Unreachable::start();
        let (live_1, _a) = answering_backend().await;
        let (live_2, _b) = answering_backend().await;
        let name = "one-dead-pod.test:9001".to_string();
        crate::resolve::seed(&name, &[silent.addr, live_1, live_2]);
        let table = table_of(vec![name]);
        let mut answered_by = Vec::new();
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            answered_by.push(reached(&table).await);
        }
        // Only the first request waited on the silent pod (on the paused clock: the order of
        // events, not a timing).
        let took = start.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(!answered_by.contains(&silent.addr));
        assert_eq!(answered_by[0], live_1);
    }

    /// Route `[A, B]`, A a name whose two addresses are both silent: the requests whose turn
    /// is A reach B after the delay, A's addresses are set aside one by one as they go
    /// unanswered, and once both are, A itself is put aside.
    #[tokio::test(start_paused = true)]
    async fn a_name_whose_addresses_are_all_silent_is_put_aside() {
        let (dead_1, dead_2) = (Unreachable::start(), Unreachable::start());
        let (good, _answering) = answering_backend().await;
        let name = "two-dead-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[dead_1.addr, dead_2.addr]);
        let table = table_of(vec![name, good.to_string()]);
        for _ in 0..6 {
            assert_eq!(reached(&table).await, good);
        }
        assert!(name_health(&table).ever_put_aside());
    }
}
