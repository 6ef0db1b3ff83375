//! The backend leg: dial a route's backends in turn (those put aside after a failure last, see
//! `health`), forward the upgrade request, and return either a checked 101 with the raw backend
//! socket, or the backend's non-101 answer to relay.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use crate::error::{out_of_descriptors, ProxyError};
use crate::health::{self, Health, Leave};
use crate::metrics::Metrics;
use crate::race::{Event, Race};
use crate::routes::Route;
use crate::websocket;

/// A backend that accepted the upgrade.
pub(crate) struct Tunnel {
    /// The 101 head to pass to the client.
    pub head: response::Parts,
    pub socket: TcpStream,
    /// Bytes the backend sent right behind its 101.
    pub early: Bytes,
}

/// What the backend said to the upgrade.
pub(crate) enum Answer {
    Upgraded(Tunnel),
    /// Anything but 101: relayed as is, never spliced. The backend connection, if it is
    /// still needed to read the body, must be driven (on the server's task tracker).
    NotUpgraded(NonUpgrade),
}

/// A backend's answer other than 101, to relay.
pub(crate) struct NonUpgrade {
    pub response: Response<Incoming>,
    /// The body's first frame, already read (`None` for an empty body).
    pub first: Option<Frame<Bytes>>,
    pub backend: Option<BackendConn>,
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

/// Dials the route's backends in turn and forwards `request`; the whole exchange (connect and
/// the backend's complete answer head) must fit in `timing.timeout`. `tried` names, for the
/// log line, the backend that answered; failing that, the one the error is about (the first
/// out of time for a 504, the last that closed or failed otherwise).
pub(crate) async fn open(
    route: &Route,
    request: Request<Empty<Bytes>>,
    protocols: &[&str],
    timing: Timing,
    tried: &mut Option<String>,
    metrics: &Metrics,
) -> Result<Answer, ProxyError> {
    let deadline = tokio::time::Instant::now() + timing.timeout;
    match tokio::time::timeout_at(
        deadline,
        exchange(route, request, protocols, deadline, timing, tried, metrics),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => Err(ProxyError::BackendTimeout),
    }
}

async fn exchange(
    route: &Route,
    mut request: Request<Empty<Bytes>>,
    protocols: &[&str],
    deadline: tokio::time::Instant,
    timing: Timing,
    tried: &mut Option<String>,
    metrics: &Metrics,
) -> Result<Answer, ProxyError> {
    let offer = websocket::Offer::of(request.headers(), protocols)?;
    let mut turns = Turns {
        fair_share: share_of(deadline, route.config.backends.len()),
        backends: route.backends_in_turn(),
        later: Vec::new(),
        again: None,
        resume: Vec::new(),
        timed_out: None,
        gone: Vec::new(),
        gone_error: None,
        connect_error: None,
    };
    // The leaves of backends whose address closed before answering: held until the request
    // is done with them, as their next addresses are tried (`again`) without asking again.
    let mut held = Vec::new();
    for closed in 1.. {
        // The leave is held until the try has ended: answered, or failed.
        let (backend, dialed, began, leave) =
            connect_in_turn(route, &mut turns, deadline, timing, tried, metrics).await?;
        // Copied only when there is somewhere to send it again.
        let others = dialed.more || turns.left() > 0;
        let copy = (others && closed < MAX_CLOSED).then(|| copy_of(&request));
        let answered = attempt(dialed.socket, request, &offer).await;
        // Anything but a close before answering: the backend takes connections.
        if !matches!(answered, Err(Attempt::Gone(_))) {
            back_in_turn(route, backend);
        }
        let error = match answered {
            Ok(answer) => return Ok(answer),
            Err(Attempt::Failed(error)) => return Err(error),
            Err(Attempt::Gone(error)) => error,
        };
        // Died before a byte of answer (a backend restarting, killed mid-deploy): nothing of
        // it reached the client, and another address of the name (a headless Service's next
        // pod), or the next backend, may take the request. Counted: failover hides it from
        // clients, not from operators.
        metrics.backend_closed_early(&route.config.name, backend);
        // Put aside once this request goes to none of its other addresses: one pod of a
        // headless Service closing is no reason to skip the name, whose next address is tried
        // right after; but a request given up here (MAX_CLOSED) is a reason.
        if !dialed.more || copy.is_none() {
            put_aside(route, backend, &error, timing.cooldown, began, metrics);
        }
        turns.gone.push(dialed.addr);
        turns.gone_error = Some((backend, error));
        let Some(copy) = copy else {
            return Err(turns.outcome(tried));
        };
        tracing::debug!(route = %route.config.name, backend, "backend closed before answering; trying another");
        // Its other addresses, unless those left had gone unanswered already (the name has
        // just been put aside: the next backend, rather than those again).
        turns.again = dialed.more.then_some(backend);
        held.push(leave);
        request = copy;
    }
    Err(turns.outcome(tried))
}

/// How many backends (or addresses) may close before answering one request before it is
/// given up: a failing deploy whose every pod accepts and closes must not get each request
/// once per pod.
const MAX_CLOSED: usize = 3;

/// Where a request is in its route's backends, across the backends it tries.
struct Turns<'a, 'r, I: ExactSizeIterator<Item = &'a str>> {
    /// The time each backend would get if every one were slow: a try whose share of what was
    /// left came to much less (earlier backends took the rest) is not the backend's failure
    /// when it runs out.
    fair_share: Duration,
    /// The backends not tried yet, in round-robin order.
    backends: I,
    /// Backends another request is trying again after a failure (see [`crate::health`]):
    /// tried only once `backends` are all tried.
    later: Vec<&'a str>,
    /// A backend to try again first: one of its addresses closed before answering, and it
    /// may have others.
    again: Option<&'a str>,
    /// Backends whose connect was dropped when another answered first, not for being silent
    /// (see [`settle_losers`]): next in turn if this request needs another, with the leave
    /// they were tried with (a cool-down's retry stays this request's).
    resume: Vec<(&'a str, Leave<'r>)>,
    /// The first backend that did not answer in its share: what a 504 is about.
    timed_out: Option<&'a str>,
    /// Addresses that closed before answering: not tried again in this request (a backend
    /// listed twice, or a name's other addresses, are).
    gone: Vec<SocketAddr>,
    /// The last of those, and why it failed: the answer if nothing else is left to try.
    gone_error: Option<(&'a str, ProxyError)>,
    /// The last failed connect's error, in the OS's words: what a 502 says when no backend
    /// could be connected to (refused, unresolvable, unreachable).
    connect_error: Option<String>,
}

impl<'a, 'r, I: ExactSizeIterator<Item = &'a str>> Turns<'a, 'r, I> {
    /// The refusal once every backend failed: if any of them was merely slow, the request ran
    /// out of time, and the line names that one (the others' failures are in the metrics).
    fn outcome(&mut self, tried: &mut Option<String>) -> ProxyError {
        if let Some(slow) = self.timed_out {
            *tried = Some(slow.to_string());
            return ProxyError::BackendTimeout;
        }
        match self.gone_error.take() {
            Some((backend, error)) => {
                *tried = Some(backend.to_string());
                error
            }
            None => ProxyError::BackendUnavailable(
                self.connect_error
                    .take()
                    .unwrap_or_else(|| "no address to connect to".to_string()),
            ),
        }
    }

    /// The next backend to try, and its leave to be tried if it needs none asked for: one
    /// this request tries again (`again`: it has just been tried, and holds its leave),
    /// resumes (`resume`) or has put off (`later`); `None`: ask first.
    fn next(&mut self) -> Option<(&'a str, Option<Leave<'r>>)> {
        if let Some(backend) = self.again.take() {
            return Some((backend, Some(Leave::default())));
        }
        if !self.resume.is_empty() {
            let (backend, leave) = self.resume.remove(0);
            return Some((backend, Some(leave)));
        }
        match self.backends.next() {
            Some(backend) => Some((backend, None)),
            None if self.later.is_empty() => None,
            None => Some((self.later.remove(0), Some(Leave::default()))),
        }
    }

    /// How many backends are left to try after the one being tried.
    fn left(&self) -> usize {
        self.resume.len() + self.backends.len() + self.later.len()
    }
}

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

/// Forwards `request` on `socket` and takes the backend's answer.
async fn attempt(
    socket: TcpStream,
    request: Request<Empty<Bytes>>,
    offer: &websocket::Offer<'_>,
) -> Result<Answer, Attempt> {
    let heard = Arc::new(AtomicBool::new(false));
    let socket = Heard {
        socket,
        heard: heard.clone(),
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
    let tunnel = take_tunnel(response, (!conn_done).then_some(conn)).await?;
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
    let mut codings = websocket::tokens(response.headers(), &TRANSFER_ENCODING);
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
    })
}

/// The most of a backend's answer read ahead: all of its head, or a piece of its body.
const BACKEND_BUFFER: usize = 64 * 1024;

/// Tries the backends in turn, starting at the route's round-robin position; a refused,
/// unresolvable or silent backend moves on to the next (a name's other addresses first,
/// after one of them closed before answering).
///
/// Each attempt gets an equal share of the time left (the last one all of it), so one
/// blackholed backend, whose SYNs go unanswered, cannot eat the whole connect timeout while
/// a healthy one waits its turn; and once it has gone unanswered for `attempt_delay`, the
/// next backend is dialed beside it (see [`crate::race`]), the first to answer taken. A
/// backend that fails, or is left unanswered while another answers, is put aside for
/// `cooldown` (see [`crate::health`]).
async fn connect_in_turn<'a, 'r>(
    route: &'r Route,
    turns: &mut Turns<'a, 'r, impl ExactSizeIterator<Item = &'a str>>,
    deadline: tokio::time::Instant,
    timing: Timing,
    tried: &mut Option<String>,
    metrics: &Metrics,
) -> Result<(&'a str, Dialed, u64, Leave<'r>), ProxyError> {
    let mut race = Race::new(timing.attempt_delay);
    // The last backend that failed, or what `tried` said before: named if the attempts left
    // do not count (every address of theirs closed before answering already).
    let mut before = tried.clone();
    loop {
        if race.wants_another() {
            if let Some((backend, leave)) = next_backend(route, turns) {
                let share = share_of(deadline, turns.left() + 1);
                let until = tokio::time::Instant::now() + share;
                let progress = Arc::new(Progress::new());
                let connecting =
                    connect(backend, turns.gone.clone(), until, timing, progress.clone());
                let attempt = Try {
                    backend,
                    share,
                    began: health::now(),
                    leave,
                    progress,
                };
                race.start(attempt, tokio::time::timeout_at(until, connecting));
            }
        }
        // Named before the connect: if the request's time runs out during it, the oldest
        // attempt under way is the backend its 504 is about.
        *tried = match race.under_way().next() {
            Some((attempt, _)) => Some(attempt.backend.to_string()),
            None => return Err(turns.outcome(tried)),
        };
        let (attempt, connected) = match race.next(turns.left() > 0).await {
            Event::Start => continue,
            Event::Ended(attempt, connected) => (attempt, connected),
        };
        let error = match connected {
            Ok(Ok(Some(dialed))) => {
                settle_losers(route, race, attempt.backend, turns, timing, metrics);
                *tried = Some(attempt.backend.to_string());
                return Ok((attempt.backend, dialed, attempt.began, attempt.leave));
            }
            // Every address of it closed before answering already: nothing to count.
            Ok(Ok(None)) => {
                if race.is_empty() {
                    tried.clone_from(&before);
                }
                race.failed();
                continue;
            }
            // The process's descriptors, not the backend: trying others would only fail too.
            Ok(Err(e)) if out_of_descriptors(&e) => {
                // The others' connects are dropped for the process's trouble, not theirs.
                for (other, _) in race.under_way() {
                    other.progress.disarm();
                }
                return Err(ProxyError::OutOfDescriptors);
            }
            Ok(Err(e)) => e,
            Err(_) => no_answer(),
        };
        race.failed();
        let backend = attempt.backend;
        before = Some(backend.to_string());
        if error.kind() == std::io::ErrorKind::TimedOut && turns.timed_out.is_none() {
            turns.timed_out = Some(backend);
        }
        // Failover hides a dead backend from clients; the counter shows it to operators.
        metrics.backend_connect_failed(&route.config.name, backend, &error);
        let cut_short =
            error.kind() == std::io::ErrorKind::TimedOut && attempt.share < turns.fair_share / 2;
        if !cut_short {
            put_aside(
                route,
                backend,
                &error,
                timing.cooldown,
                attempt.began,
                metrics,
            );
        }
        tracing::debug!(route = %route.config.name, backend, %error, "backend connect failed");
        turns.connect_error = Some(error.to_string());
    }
}

/// One backend's connect attempt, as it races the others.
struct Try<'a, 'r> {
    backend: &'a str,
    /// Its share of the time: see `Turns::fair_share`.
    share: Duration,
    /// When it began, on [`health::now`]'s clock.
    began: u64,
    /// Held until the try has ended: answered, or failed.
    leave: Leave<'r>,
    /// How far its connect has got: see [`Progress`].
    progress: Arc<Progress>,
}

/// How far one backend's connect has got, for the race across backends to judge it by: when
/// its latest address was dialed (µs after the connect began, plus one; 0: none yet, its
/// name still being resolved), and whether that was its last.
#[derive(Debug)]
struct Progress {
    began: tokio::time::Instant,
    dialed: AtomicU64,
    /// Every address of the name was set aside when it was ordered (see [`Dial`]).
    all_aside: AtomicBool,
    /// The connect is dropped for the process's own trouble (out of descriptors): its
    /// addresses are not to blame (see [`Unanswered`]).
    disarmed: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            began: tokio::time::Instant::now(),
            dialed: AtomicU64::new(0),
            all_aside: AtomicBool::new(false),
            disarmed: AtomicBool::new(false),
        }
    }

    fn dialed(&self, last: bool) {
        let since = self.began.elapsed().as_micros();
        let at = u64::try_from(since).unwrap_or(u64::MAX >> 2) + 1;
        self.dialed
            .store(at << 1 | u64::from(last), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.disarmed.store(true, Ordering::Relaxed);
    }

    /// Whether every address has been dialed, the last at least `delay` ago; or the name's
    /// addresses had all failed lately, and the connect has been under way that long.
    fn silent_for(&self, delay: Duration) -> bool {
        if self.all_aside.load(Ordering::Relaxed) && self.began.elapsed() >= delay {
            return true;
        }
        let state = self.dialed.load(Ordering::Relaxed);
        let (at, last) = (state >> 1, state & 1 == 1);
        if at == 0 || !last {
            return false;
        }
        let dialed_at = self.began + Duration::from_micros(at - 1);
        dialed_at.elapsed() >= delay
    }
}

/// The next backend to try now, with its leave to be tried; a backend that another request
/// is trying again after its failure is put off until the others have been tried.
fn next_backend<'a, 'r>(
    route: &'r Route,
    turns: &mut Turns<'a, 'r, impl ExactSizeIterator<Item = &'a str>>,
) -> Option<(&'a str, Leave<'r>)> {
    loop {
        let (backend, leave) = turns.next()?;
        let leave = leave.or_else(|| route.leave(backend));
        match leave {
            Some(leave) => return Some((backend, leave)),
            None => turns.later.push(backend),
        }
    }
}

/// `winner` answered first: the attempts still under way are dropped. One that has dialed
/// every address of its name and heard nothing for `attempt_delay` is as good as silent (a
/// connect on a working network takes a round trip) and is put aside, as a backend whose
/// connect timed out would be; the others (still resolving, on to a further address, or
/// only just started) owe nothing, and are next in turn should this request need another
/// backend (the winner closing before it answers).
fn settle_losers<'a, 'r, F: std::future::Future>(
    route: &Route,
    race: Race<Try<'a, 'r>, F>,
    winner: &str,
    turns: &mut Turns<'a, 'r, impl ExactSizeIterator<Item = &'a str>>,
    timing: Timing,
    metrics: &Metrics,
) {
    let mut resume = Vec::new();
    for attempt in race.into_tags() {
        // The same backend, listed twice: its other connect answered.
        if attempt.backend == winner {
            continue;
        }
        if !attempt.progress.silent_for(timing.attempt_delay) {
            resume.push((attempt.backend, attempt.leave));
            continue;
        }
        let error = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer to the connect for over {:?}, while another backend answered",
                timing.attempt_delay
            ),
        );
        metrics.backend_connect_failed(&route.config.name, attempt.backend, &error);
        put_aside(
            route,
            attempt.backend,
            &error,
            timing.cooldown,
            attempt.began,
            metrics,
        );
    }
    resume.append(&mut turns.resume);
    turns.resume = resume;
}

/// Puts `backend` aside after it failed to take a connection (see [`crate::health`]), and
/// says so when that is news. Not in a route with no other backend to send requests to.
/// `began`: when the failed try began (on [`health::now`]'s clock). Counted, as each failure
/// is: a backend put aside is a backend to look at.
fn put_aside(
    route: &Route,
    backend: &str,
    error: &dyn std::fmt::Display,
    cooldown: Duration,
    began: u64,
    metrics: &Metrics,
) {
    if !route.has_others() || cooldown.is_zero() {
        return;
    }
    let Some(aside) = route
        .health_of(backend)
        .and_then(|h| h.failed(cooldown, began))
    else {
        return;
    };
    metrics.backend_put_aside(&route.config.name, backend);
    tracing::warn!(
        route = %route.config.name,
        backend,
        %error,
        failures_in_a_row = aside.nth,
        "backend put aside for {:?}: requests go to the route's other backends until it is \
         tried again",
        aside.cool_down
    );
}

/// Notes that `backend` answered; says so if it was put aside until now.
fn back_in_turn(route: &Route, backend: &str) {
    if route.health_of(backend).is_some_and(Health::answered) {
        tracing::info!(route = %route.config.name, backend, "backend answers again; back in turn");
    }
}

/// Connects to one of `backend`'s addresses by `deadline`, but for the `gone` ones, starting
/// at each in turn, those that failed lately last (see [`crate::resolve::in_turn`]). Each
/// address gets an equal share of the time left, like each backend, and the next is dialed
/// beside one unanswered for `timing.attempt_delay`: a name whose first address is
/// blackholed (a pod on a node that is gone, or an IPv6 address without a route to it on a
/// dual-stack cluster) must not use up the time its next, working, address needed.
/// `None` if every address is among the `gone` ones.
async fn connect(
    backend: &str,
    gone: Vec<SocketAddr>,
    deadline: tokio::time::Instant,
    timing: Timing,
    progress: Arc<Progress>,
) -> std::io::Result<Option<Dialed>> {
    // Resolution failures carry no kind of their own (getaddrinfo's are "uncategorized"):
    // mark them NotFound, as a name that resolves to nothing is; but the process out of
    // descriptors stays what it is (a 503, not the backend's fault).
    let addrs = crate::resolve::resolve(backend).await.map_err(|e| {
        if out_of_descriptors(&e) {
            e
        } else {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot resolve the name: {e}"),
            )
        }
    })?;
    let mut dial = Dial {
        backend: None,
        timing,
        progress: &progress,
    };
    // One address (an IP, a Service's cluster IP) is the common case: nothing to order, and
    // its failures are the backend's (see `health`).
    if addrs.len() == 1 && gone.is_empty() {
        return connect_any(&addrs, deadline, dial).await.map(Some);
    }
    let order = crate::resolve::in_turn(backend, &addrs, &gone, timing.cooldown);
    if order.addrs.is_empty() {
        return Ok(None);
    }
    dial.backend = Some((backend, order.failed_lately));
    progress.all_aside.store(order.all_aside, Ordering::Relaxed);
    connect_any(&order.addrs, deadline, dial).await.map(Some)
}

/// How one backend's addresses are dialed.
#[derive(Clone, Copy)]
struct Dial<'a> {
    /// The name, if its addresses' failures are noted one by one (it has several), and
    /// whether any failed lately (then an answer is noted too).
    backend: Option<(&'a str, bool)>,
    timing: Timing,
    progress: &'a Progress,
}

impl Dial<'_> {
    /// Notes that `addr` failed to take a connection (its name has others to dial meanwhile).
    fn failed(&self, addr: SocketAddr, error: &dyn std::fmt::Display) {
        let Some((backend, _)) = self.backend else {
            return;
        };
        if self.timing.cooldown.is_zero() {
            return;
        }
        if let Some(cool_down) = crate::resolve::set_aside(backend, addr, self.timing.cooldown) {
            tracing::warn!(
                backend,
                %addr,
                %error,
                "backend address set aside for {cool_down:?}: the name's other addresses are dialed first until it is tried again"
            );
        }
    }

    fn answered(&self, addr: SocketAddr) {
        if let Some((backend, true)) = self.backend {
            if crate::resolve::answered(backend, addr) {
                tracing::info!(backend, %addr, "backend address answers again; back in turn");
            }
        }
    }
}

/// Connects to the first of `addrs` that answers, each in its share of the time to
/// `deadline`, the next dialed beside one unanswered for the attempt delay (see
/// [`crate::race`]); notes each address's failures and answers (see [`Dial`]).
async fn connect_any(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
    dial: Dial<'_>,
) -> std::io::Result<Dialed> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "name resolved to no address");
    let count = addrs.len();
    let delay = dial.timing.attempt_delay;
    // What each address would get if every one were slow: one whose share came to much less
    // (those before it took the rest) is not to blame when it runs out.
    let fair_share = share_of(deadline, count);
    let mut race = Unanswered {
        race: Race::new(delay),
        dial,
    };
    let mut next = 0;
    loop {
        if race.race.wants_another() && next < count {
            let share = share_of(deadline, count - next);
            let addr = addrs[next];
            let connecting = tokio::time::timeout(share, TcpStream::connect(addr));
            race.race.start((addr, share), connecting);
            next += 1;
            dial.progress.dialed(next == count);
        }
        if race.race.is_empty() {
            return Err(last);
        }
        let ((addr, share), connected) = match race.race.next(next < count).await {
            Event::Start => continue,
            Event::Ended(tag, connected) => (tag, connected),
        };
        match connected {
            Ok(Ok(socket)) => {
                crate::socket::tune(&socket);
                dial.answered(addr);
                // Left to go on to if this one closes before answering: those not tried yet,
                // and those given up on here before they had waited `delay` (the others are
                // set aside as the race ends, and would only be waited on again).
                let now = tokio::time::Instant::now();
                let more =
                    next < count || (race.race.under_way()).any(|(_, began)| now - began < delay);
                return Ok(Dialed { socket, addr, more });
            }
            Ok(Err(e)) if out_of_descriptors(&e) => {
                dial.progress.disarm();
                return Err(e);
            }
            Ok(Err(e)) => {
                dial.failed(addr, &e);
                last = e;
            }
            Err(_) => {
                last = no_answer();
                if share >= fair_share / 2 {
                    dial.failed(addr, &last);
                }
            }
        }
        race.race.failed();
    }
}

/// A name's addresses racing to connect. However the race ends (an address answered,
/// another backend did, the request ran out of time or went), the addresses still unanswered
/// after the attempt delay are as good as silent, and are set aside (see [`Dial::failed`]).
struct Unanswered<'d, F: std::future::Future> {
    race: Race<(SocketAddr, Duration), F>,
    dial: Dial<'d>,
}

impl<F: std::future::Future> Drop for Unanswered<'_, F> {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        let delay = self.dial.timing.attempt_delay;
        // Without a delay, nothing was raced: an address still dialing has had no time of its
        // own to answer in (the request went, or ran out of time).
        if delay.is_zero() || self.dial.progress.disarmed.load(Ordering::Relaxed) {
            return;
        }
        for (&(addr, _), began) in self.race.under_way() {
            if now - began >= delay {
                let error = "no answer to the connect, while another address or backend answered";
                self.dial.failed(addr, &error);
            }
        }
    }
}

/// A backend connection, the address it went to, and whether the name has addresses after
/// it (to go on to if this one closes before answering).
#[derive(Debug)]
struct Dialed {
    socket: TcpStream,
    addr: SocketAddr,
    more: bool,
}

/// An equal share of the time left until `deadline` for each of `remaining` tries (the last
/// one gets all of it).
fn share_of(deadline: tokio::time::Instant, remaining: usize) -> Duration {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    left / u32::try_from(remaining).unwrap_or(u32::MAX).max(1)
}

fn no_answer() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connect")
}

/// A backend socket that notes whether the backend has sent a byte yet: a connection that
/// failed before then carried no answer, and the request may go to the next backend.
struct Heard {
    socket: TcpStream,
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend name with two addresses (a headless Service's two pods): the first takes the
    /// connection and closes it unanswered (its pod killed), the second answers. The request
    /// goes to the second.
    #[tokio::test]
    async fn an_address_that_closes_before_answering_leaves_the_name_s_next_one() {
        let (good_addr, _answering) = answering_backend().await;
        let dying = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Only a key for the cache: the seeded addresses are what is dialled.
        let name = "two-pods.test:9001".to_string();
        crate::resolve::seed(&name, &[dying.local_addr().unwrap(), good_addr]);
        tokio::spawn(async move { drop(dying.accept().await) });
        // Another backend, so that the name could be put aside.
        let table = table_of(vec![name, "127.0.0.1:1".into()]);
        let answer = open_on(&table).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        assert_eq!(tunnel.socket.peer_addr().unwrap(), good_addr);
        // One pod gone is no reason to put the name aside: its next address answered.
        assert!(!name_health(&table).ever_put_aside());
    }

    /// Every address of a name closing before answering (a failing deploy): the request is
    /// given up after three closes, with addresses of the name left, and the name is put
    /// aside, so the route's next requests go to its other backend.
    #[tokio::test]
    async fn a_name_whose_addresses_all_close_is_put_aside() {
        let mut addrs = Vec::new();
        for _ in 0..4 {
            let dying = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(dying.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((socket, _)) = dying.accept().await {
                    drop(socket);
                }
            });
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
    async fn answering_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
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
        let config = crate::config::RouteConfig {
            name: "chat".into(),
            host: None,
            path: "/".into(),
            subprotocols: None,
            origins: None,
            backends,
            idle: None,
        };
        crate::routes::RouteTable::new(&[config])
    }

    fn the_route(table: &crate::routes::RouteTable) -> &Route {
        let crate::routes::Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!("the route");
        };
        route
    }

    /// The health of the route's first backend.
    fn name_health(table: &crate::routes::RouteTable) -> &Health {
        let route = the_route(table);
        route.health_of(&route.config.backends[0]).unwrap()
    }

    /// An upgrade request through the table's route.
    async fn open_on(table: &crate::routes::RouteTable) -> Result<Answer, ProxyError> {
        let request = Request::builder()
            .uri("/")
            .header("host", "pods.test")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .unwrap();
        let (metrics, mut tried) = (Metrics::default(), None);
        let timing = Timing {
            timeout: Duration::from_secs(5),
            cooldown: Duration::from_secs(1),
            attempt_delay: Duration::from_millis(250),
        };
        open(the_route(table), request, &[], timing, &mut tried, &metrics).await
    }

    /// A name's first address silent (its SYNs dropped: a listen queue of one, filled), its
    /// second working: the second is reached within the time, not after it. One at a time,
    /// after the first's share of the time; raced, after `attempt_delay`.
    #[tokio::test(start_paused = true)]
    async fn a_silent_address_leaves_time_for_the_next_one() {
        let silent = Unreachable::start();
        let working = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let working_addr = working.local_addr().unwrap();
        let addrs = [silent.addr, working_addr];

        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let progress = Progress::new();
        let dialed = connect_any(&addrs, deadline, dial_with(Duration::ZERO, &progress))
            .await
            .unwrap();
        assert_eq!(dialed.socket.peer_addr().unwrap(), working_addr);
        assert_eq!((dialed.addr, dialed.more), (working_addr, false));
        // The silent address had its half of the time, and the working one got through in
        // the other half.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2500), "{took:?}");
        assert!(tokio::time::Instant::now() < deadline);

        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let delay = Duration::from_millis(250);
        let dialed = connect_any(&addrs, deadline, dial_with(delay, &progress))
            .await
            .unwrap();
        assert_eq!(dialed.addr, working_addr);
        // Dialed beside the silent one once it had gone unanswered for the delay; the silent
        // one, given up on after waiting that long, is none to go on to.
        let took = start.elapsed();
        assert!(
            took >= delay && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert!(!dialed.more);

        let deadline = start + Duration::from_secs(6);
        let error = connect_any(&[silent.addr], deadline, dial_with(delay, &progress))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    /// Dialing addresses of no name, with this attempt delay.
    fn dial_with(attempt_delay: Duration, progress: &Progress) -> Dial<'_> {
        let timing = Timing {
            timeout: Duration::from_secs(5),
            cooldown: Duration::from_secs(1),
            attempt_delay,
        };
        Dial {
            backend: None,
            timing,
            progress,
        }
    }

    /// An address where SYNs go unanswered: a listen queue of one, filled.
    struct Unreachable {
        addr: SocketAddr,
        _listener: socket2::Socket,
        _filler: std::net::TcpStream,
    }

    impl Unreachable {
        fn start() -> Unreachable {
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
                _listener: listener,
                _filler: filler,
            }
        }
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
        let answer = open_on(&table).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        assert_eq!(tunnel.socket.peer_addr().unwrap(), good);
        let took = start.elapsed();
        // The silent backend's share alone would have been 2.5 s.
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(name_health(&table).ever_put_aside());
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
        let answer = open_on(&table).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        assert_eq!(tunnel.socket.peer_addr().unwrap(), good);
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
        let answer = open_on(&table).await;
        let Ok(Answer::Upgraded(tunnel)) = answer else {
            panic!("no tunnel: {:?}", answer.err());
        };
        assert_eq!(tunnel.socket.peer_addr().unwrap(), good);
        assert!(!name_health(&table).ever_put_aside());
    }

    /// A name of three addresses (a headless Service's three pods): requests start at each
    /// in turn, not all at the first the resolver listed.
    #[tokio::test]
    async fn a_names_addresses_are_taken_in_turn() {
        let mut pods = Vec::new();
        for _ in 0..3 {
            pods.push(answering_backend().await);
        }
        let addrs: Vec<SocketAddr> = pods.iter().map(|(addr, _)| *addr).collect();
        let name = "three-pods.test:9001".to_string();
        crate::resolve::seed(&name, &addrs);
        let table = table_of(vec![name]);
        let mut reached = Vec::new();
        for _ in 0..4 {
            let answer = open_on(&table).await;
            let Ok(Answer::Upgraded(tunnel)) = answer else {
                panic!("no tunnel: {:?}", answer.err());
            };
            reached.push(tunnel.socket.peer_addr().unwrap());
        }
        assert_eq!(reached, [addrs[0], addrs[1], addrs[2], addrs[0]]);
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
        let mut reached = Vec::new();
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            let answer = open_on(&table).await;
            let Ok(Answer::Upgraded(tunnel)) = answer else {
                panic!("no tunnel: {:?}", answer.err());
            };
            reached.push(tunnel.socket.peer_addr().unwrap());
        }
        // Only the first request waited on the silent pod (on the paused clock: the order of
        // events, not a timing).
        let took = start.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(!reached.contains(&silent.addr));
        assert_eq!(reached[0], live_1);
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
            let answer = open_on(&table).await;
            let Ok(Answer::Upgraded(tunnel)) = answer else {
                panic!("no tunnel: {:?}", answer.err());
            };
            assert_eq!(tunnel.socket.peer_addr().unwrap(), good);
        }
        assert!(name_health(&table).ever_put_aside());
    }

    /// With no attempt delay nothing is raced: a connect dropped while its address is still
    /// dialing (the request gone, or out of time) blames no address.
    #[tokio::test(start_paused = true)]
    async fn without_a_delay_a_dropped_connect_sets_no_address_aside() {
        let silent = Unreachable::start();
        let (live, _answering) = answering_backend().await;
        let name = "dropped-while-dialing.test:9001".to_string();
        let addrs = [silent.addr, live];
        crate::resolve::seed(&name, &addrs);
        let timing = Timing {
            timeout: Duration::from_secs(5),
            cooldown: Duration::from_secs(1),
            attempt_delay: Duration::ZERO,
        };
        let deadline = tokio::time::Instant::now() + timing.timeout;
        let connecting = connect(
            &name,
            Vec::new(),
            deadline,
            timing,
            Arc::new(Progress::new()),
        );
        let dropped = tokio::time::timeout(Duration::from_millis(100), connecting).await;
        assert!(
            dropped.is_err(),
            "the silent address is dialed first, alone"
        );
        let order = crate::resolve::in_turn(&name, &addrs, &[], timing.cooldown);
        assert!(!order.failed_lately);
    }
}
