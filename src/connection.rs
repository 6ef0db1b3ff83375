//! One client connection, from accept to its answer or its tunnel: the PROXY header if the
//! listener expects one, the per-client slot, TLS and the request head under the handshake
//! deadline, refusals that need no routing, then hyper with [`crate::proxy::handle`] as the
//! service. A connection that ends before any answer gets its one log line from here
//! ([`access_log::early_close`]).
//!
//! Tunnels outlive hyper's view of their connection, so the connection's guards (its
//! `limits::ConnGuard` and its client slot) travel in [`Conn`] into the tunnel's own task
//! (tracked on its own, so a shutdown waits for it).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::access_log::{self, Delivery, EndLine};
use crate::client_cert;
use crate::closing::{linger, LINGER_TIME};
use crate::error::{ProxyError, Unanswered};
use crate::head::{self, Head, Prefixed};
use crate::limits::{ClientSlot, ConnGuard, Over};
use crate::proxy;
use crate::proxy_protocol;
use crate::relay::Written;
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::tls::{self, Hello, TlsStream};

/// One client connection: TLS under the handshake deadline, then hyper until the request is
/// answered (or upgraded, after which the tunnel owns the guard).
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut guard: ConnGuard,
) {
    if let Some(opened) = handshake(tcp, peer, &shared, &mut guard).await {
        answer(opened, shared, guard).await;
    }
}

/// A connection through its handshake: the client known, TLS up, the request head read.
struct Opened {
    peer: SocketAddr,
    started: Instant,
    /// The handshake's deadline, and how long it was given (`timeouts.handshake` at accept).
    deadline: Instant,
    handshake: std::time::Duration,
    client_slot: Option<ClientSlot>,
    tls: TlsStream<TcpStream>,
    /// The client's certificate, as checked at the handshake.
    client_certificate: Option<client_cert::Checked>,
    /// The head's length, `None` if over the limit.
    head: Option<usize>,
    /// The bytes read with the head, and the head limit applied.
    head_bytes: Bytes,
    max_head: usize,
}

/// The PROXY header, the per-client slot, TLS and the request head, under the handshake
/// deadline; `None` if the connection ended on the way (its line, if any, written).
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    guard: &mut ConnGuard,
) -> Option<Opened> {
    let started = Instant::now();
    crate::socket::tune(&tcp, peer);
    let snapshot = shared.current();
    let deadline = started + snapshot.config.timeouts.handshake;
    // The connection's line, when it ends on the way.
    let early_close = |peer, why: Unanswered, over| {
        access_log::early_close(shared, peer, started, &why, over);
        None
    };
    let (peer, tcp) = match proxy_header(tcp, peer, shared, &snapshot, deadline).await {
        Ok(known) => known,
        Err(why) => return early_close(peer, why, guard.over()),
    };
    // Taken as soon as the client is known, so its connections still in the TLS handshake or
    // idle before their request count; one over the limit gets 429 once its head is in (see
    // `admit`), like the global limit's 503, so the client gets an answer.
    let per_client = snapshot.config.limits.max_connections_per_client;
    let Ok(client_slot) = guard.client_slot(peer.ip(), per_client) else {
        shared.over_capacity(peer, "client's connection limit");
        return None;
    };
    let handshake = tls_handshake(tcp, shared, snapshot.config.proxy_protocol);
    let (mut tls, client_certificate) = match in_time(shared, deadline, handshake, "TLS").await {
        Ok(Handshaken::Tls(tls, certificate)) => (tls, certificate),
        // Answered outside the handshake's deadline: the answer's linger has its own bound.
        Ok(Handshaken::PlainHttp(mut tcp)) => {
            let answer = proxy::use_tls_answer();
            let told = tokio::select! {
                told = tls::tell_to_use_tls(&mut tcp, &answer) => told,
                _ = shared.drain.started() => false,
            };
            // Logged once the answer is out, as every refusal is: the linger is the client's.
            early_close(peer, Unanswered::PlainHttp, guard.over());
            if told {
                linger_unless_draining(&mut tcp, shared).await;
            }
            return None;
        }
        Err(why) => return early_close(peer, why, guard.over()),
    };
    // The limit in force when the head starts to come, not at accept: a reload in between
    // applies to this request, as its routes do.
    let limit = || shared.current().config.limits.max_request_header_bytes;
    let read_head = read_request_head(&mut tls, limit);
    let (head, head_bytes, max_head) =
        match in_time(shared, deadline, read_head, "request head").await {
            Ok(read) => read,
            Err(why) => {
                if matches!(why, Unanswered::NoRequest | Unanswered::ClosedMidHead) {
                    answer_close_notify(&mut tls, shared).await;
                }
                return early_close(peer, why, guard.over());
            }
        };
    Some(Opened {
        peer,
        started,
        deadline,
        handshake: snapshot.config.timeouts.handshake,
        client_slot,
        tls,
        client_certificate,
        head,
        head_bytes,
        max_head,
    })
}

/// A client that ended TLS with its `close_notify` before a complete request gets one back
/// (RFC 8446 §6.1: each side sends it before closing its writing side); without it, a strict
/// client reads the close as a truncation. Bounded as a refusal's close is, and by shutdown.
async fn answer_close_notify(tls: &mut TlsStream<TcpStream>, shared: &Shared) {
    tokio::select! {
        _ = tokio::time::timeout(LINGER_TIME, tls.shutdown()) => {}
        _ = shared.drain.started() => {}
    }
}

/// Answers the request whose head `opened` holds: a refusal that needs no routing, or hyper
/// with the request path as its service.
async fn answer(opened: Opened, shared: Arc<Shared>, guard: ConnGuard) {
    let Opened {
        peer,
        started,
        deadline,
        handshake,
        client_slot,
        mut tls,
        client_certificate,
        head,
        head_bytes,
        max_head,
    } = opened;
    // Reading the head is bounded by `handshake` and the backend by `connect`; delivering the
    // answer is bounded too, so a client that stops reading cannot hold its slot forever.
    // `connect` from the config in force now, which the request path then uses too: a reload
    // since the accept must not cut short a backend answer the new timeout allows, nor one
    // after this line give the backend longer than this deadline leaves.
    // Delivering gets as long again as the handshake had.
    let connect_timeout = shared.current().config.timeouts.connect;
    let answer_by = deadline + connect_timeout + handshake;
    let conn = Conn {
        client_certificate: Mutex::new(client_certificate.map(Box::new)),
        peer,
        started,
        shared,
        connect_timeout,
        guard,
        _client_slot: client_slot,
        line: Mutex::new(EndLine::Connection),
        served: AtomicBool::new(false),
        refused_upgrade: Mutex::new(None),
        written: Arc::default(),
    };
    let conn = Arc::new(conn);
    // Refusals that need no routing are answered here, and hyper never sees the request.
    let checked = admit(&conn).and_then(|()| match head {
        Some(len) => {
            let head_bytes = head::read_as_http_1_1(head_bytes, len)?;
            head::check(&head_bytes[..len])?;
            Ok((head::without_close(head_bytes, len), len))
        }
        None => Err(ProxyError::HeadTooLarge),
    });
    match checked {
        Ok((head_bytes, head_len)) => {
            let shut = Arc::new(Notify::new());
            let written = conn.written.clone();
            let client = Prefixed::new(head_bytes, head_len, tls, shut.clone(), written);
            serve_http(client, conn, deadline, max_head, answer_by, &shut).await;
        }
        Err(err) => refuse_before_hyper(&mut tls, &err, &conn, answer_by).await,
    }
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

/// The TLS handshake, with the certificates (and TLS settings) in force when the client's
/// hello starts to arrive, not at accept: a client that connected just before a rotation, or
/// one slow to start, still gets the new certificate.
async fn tls_handshake(
    tcp: TcpStream,
    shared: &Shared,
    header_taken: bool,
) -> Result<Handshaken, Unanswered> {
    let unanswered = |e: io::Error| match gone(&e) {
        // A TCP connect and close (a load balancer's or kubelet's tcpSocket check), or a
        // client dropping mid-handshake: no TLS problem to alert on. A client that does not
        // trust the certificate sends an alert, which is a TLS failure.
        true => Unanswered::GoneDuringTls(e),
        false => Unanswered::TlsFailed(e),
    };
    let (tcp, opening) = match tls::read_hello(tcp).await.map_err(unanswered)? {
        Hello::Tls(tcp, opening) => (tcp, opening),
        Hello::PlainHttp(tcp) => return Ok(Handshaken::PlainHttp(tcp)),
        Hello::ProxyHeader if header_taken => return Err(Unanswered::SecondProxyHeader),
        Hello::ProxyHeader => return Err(Unanswered::UnexpectedProxyHeader),
    };
    // A handshake record first: an unknown record type later is garbage after a hello, not a
    // client that never spoke TLS.
    let opened_tls = opening.bytes().first() == Some(&HANDSHAKE_RECORD);
    let current = shared.current();
    let tls = tls::accept(tcp, opening, current.tls.clone())
        .await
        .map_err(|e| match opened_tls && no_tls_record(&e) {
            true => garbled_after_tls(),
            false => unanswered(e),
        })?;
    let certificate = client_cert::at_handshake(&tls, current.client_verifier.as_ref())
        .map_err(|e| Unanswered::TlsFailed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    Ok(Handshaken::Tls(tls, certificate))
}

/// How a connection's TLS handshake ended, if it did not fail.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per connection; boxing would allocate per handshake"
)]
enum Handshaken {
    /// With the client's certificate, as checked.
    Tls(TlsStream<TcpStream>, Option<client_cert::Checked>),
    /// The client spoke plain HTTP to the TLS port: it is told to use TLS.
    PlainHttp(TcpStream),
}

/// An error that only says the client's connection went away, or that the client ended its
/// handshake by choice (a `close_notify` or `user_canceled` alert).
fn gone(e: &io::Error) -> bool {
    let dropped = matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    );
    dropped || crate::error::leaving_alert(e).is_some()
}

/// The content type of a TLS handshake record, which a ClientHello comes in.
const HANDSHAKE_RECORD: u8 = 22;

/// See [`crate::error::NoTlsRecordAfterHello`].
fn garbled_after_tls() -> Unanswered {
    let why = crate::error::NoTlsRecordAfterHello;
    Unanswered::TlsFailed(io::Error::new(io::ErrorKind::InvalidData, why))
}

/// rustls's error for a record of no TLS content type.
fn no_tls_record(e: &io::Error) -> bool {
    let invalid = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
    crate::error::tls_error(e) == Some(&invalid)
}

/// hyper serves the request (its head already read from the stream into `client`, within
/// `max_head`) until it is answered by `answer_by`; then the connection's line is written,
/// unless a tunnel took it over. `shut` is `client`'s: told once the answer is out and the
/// lingering close has begun.
async fn serve_http(
    client: Prefixed<TlsStream<TcpStream>>,
    conn: Arc<Conn>,
    deadline: Instant,
    max_head: usize,
    answer_by: Instant,
    shut: &Notify,
) {
    let shared = conn.shared.clone();
    let answered = Arc::new(proxy::Answered::default());
    let service = {
        let (conn, answered) = (conn.clone(), answered.clone());
        service_fn(move |req| proxy::handle(req, conn.clone(), answered.clone()))
    };
    let serving = http_server(deadline, max_head)
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades();
    // Set once the connection's line is written, as its answer went out.
    let mut lined = false;
    // In a block of its own, so that the pinned future is dropped at its end.
    let ended = {
        let mut serving = std::pin::pin!(serving);
        let mut closing = false;
        loop {
            tokio::select! {
                // The arms that end the connection's answer come before its deadlines.
                biased;
                result = serving.as_mut() => break Ended::Served(result),
                // The answer is out, a close_notify behind it: its line is written now, not
                // when the client's linger, which hyper drives on, is over.
                () = shut.notified(), if !lined && access_log::has_line(&conn) => {
                    lined = true;
                    access_log::end_line(&conn, Delivery::Delivered);
                }
                // A refusal written: one request per connection, so it ends here (hyper
                // closes it once it is idle), whatever the answer's `Connection` said.
                () = answered.notify.notified(), if !closing => {
                    closing = true;
                    serving.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(answer_by) => break Ended::Late,
                _ = shared.drain.started() => break Ended::Drained,
            }
        }
    };
    if lined {
        return;
    }
    // Past the select the request's future (and a relayed body) is dropped: an answer given
    // or a client gone has left its line to write, a tunnel writes its own.
    if !access_log::has_line(&conn) {
        // Admitted (a connection over a limit is refused before hyper): over none.
        let why = unanswered(ended);
        return access_log::early_close(&shared, conn.peer, conn.started, &why, None);
    }
    access_log::end_line(&conn, delivery(ended));
    let refused = crate::sync::lock(&conn.refused_upgrade).take();
    if let Some(upgrade) = refused {
        close_refused(upgrade, &shared).await;
    }
}

/// hyper's settings for the one request of a connection.
fn http_server(deadline: Instant, max_head: usize) -> http1::Builder {
    let mut http = http1::Builder::new();
    // Keep-alive stays on (hyper's default, so not set here): with it off hyper adds "close"
    // to the 101's Connection header, which clients reject (and to a 426's, which names
    // `Upgrade` alone). A refusal ends the connection once written (`Answered`, in
    // `serve_http`); relayed answers say "close".
    http.timer(TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
        // hyper's floor is 8 KiB; the exact limit was measured by head::read. The margin
        // keeps hyper from refusing a head within the limit that arrives with early bytes.
        .max_buf_size((max_head + 1024).max(8192))
        // A client may shut its sending side right after the request (its half-close is
        // passed on once the tunnel runs); without this hyper would drop the request.
        .half_close(true);
    http
}

/// How the delivery of an answer given ended.
fn delivery(ended: Ended) -> Delivery {
    match ended {
        Ended::Served(Ok(())) => Delivery::Delivered,
        // (Never bytes behind the request that hyper failed to parse: it reads the head
        // alone, see `head::Prefixed`.)
        Ended::Served(Err(e)) => Delivery::Failed(which_side_failed(&e)),
        Ended::Late => Delivery::Late,
        Ended::Drained => Delivery::Shutdown,
    }
}

/// hyper ends a connection whose request asked for an upgrade by handing its socket to the
/// upgrade, whatever the answer was, without shutting it: dropped as it is, a refused client
/// would get a bare FIN where TLS wants a `close_notify` (a truncation, to a strict client),
/// or a reset that can destroy the answer if it sent anything more. So it is closed as every
/// other refusal is: `close_notify`, then a brief linger.
async fn close_refused(upgrade: OnUpgrade, shared: &Shared) {
    // Ready at once: hyper has handed the socket over, or dropped it with the connection.
    let Some((mut io, _)) = upgrade.await.ok().and_then(proxy::client_stream) else {
        return;
    };
    let close = async {
        if io.shutdown().await.is_ok() {
            linger(&mut io).await;
        }
    };
    // One bound for both: a client that reads nothing cannot take the close_notify either.
    tokio::select! {
        _ = tokio::time::timeout(LINGER_TIME, close) => {}
        _ = shared.drain.started() => {}
    }
}

/// `e`'s causes, the nearest first.
fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |cause| cause.source())
}

/// hyper's own words for a failed answer ("error writing a body to connection") name neither
/// side: an error of the body is the backend's (a relayed body cut off), any other the
/// client connection's, named by its I/O error where there is one.
fn which_side_failed(e: &hyper::Error) -> String {
    // The relayed body's errors are the backend connection's own hyper errors.
    let from_body = std::error::Error::source(e).is_some_and(|c| c.is::<hyper::Error>());
    if e.is_user() && from_body {
        // Cut by wsgate past what it reads of an answer, or broken off by the backend.
        let why = match crate::upstream::past_answer_most(e) {
            true => access_log::BACKEND_ANSWER_TOO_LONG,
            false => access_log::BACKEND_BROKE_OFF,
        };
        return why.to_string();
    }
    if e.is_user() {
        return e.to_string();
    }
    match sources(e).find_map(|cause| cause.downcast_ref::<io::Error>()) {
        Some(io) => format!("the client's connection failed: {io}"),
        None => format!("the client's connection failed: {e}"),
    }
}

/// Reads the request head (see [`head::read`]): its length (`None` if over the limit), the
/// bytes read, and the limit applied.
async fn read_request_head(
    tls: &mut TlsStream<TcpStream>,
    limit: impl FnOnce() -> usize,
) -> Result<(Option<usize>, Bytes, usize), Unanswered> {
    match head::read(tls, limit).await {
        Ok((Head::Complete(len), read, max)) => Ok((Some(len), read, max)),
        Ok((Head::TooLarge, read, max)) => Ok((None, read, max)),
        Ok((Head::Closed, read, _)) if read.is_empty() => Err(Unanswered::NoRequest),
        Ok((Head::Closed, ..)) => Err(Unanswered::ClosedMidHead),
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
        linger_unless_draining(tls, shared).await;
    }
}

/// Lingers after a refusal (see `closing`), unless shutdown's drain begins: a refused
/// connection must not hold the process past the grace.
async fn linger_unless_draining<S: tokio::io::AsyncRead + Unpin>(io: &mut S, shared: &Shared) {
    tokio::select! {
        () = linger(io) => {}
        _ = shared.drain.started() => {}
    }
}

/// What the request path knows about the connection it serves.
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    /// The client's certificate as checked at the handshake, until its request takes it.
    /// Boxed: every tunnel keeps its `Conn`, few ever had a certificate to check.
    client_certificate: Mutex<Option<Box<client_cert::Checked>>>,
    pub(crate) started: Instant,
    pub(crate) shared: Arc<Shared>,
    /// `timeouts.connect` for this connection's request, as its answer deadline counts it.
    pub(crate) connect_timeout: std::time::Duration,
    /// Counts this connection in `max_connections`; the tunnel keeps it for its whole life.
    guard: ConnGuard,
    /// Counts it in `max_connections_per_client`, if set: held as long as `guard`, and
    /// released by its drop.
    _client_slot: Option<ClientSlot>,
    /// Who writes the connection's end line, and with what.
    pub(crate) line: Mutex<EndLine>,
    /// Set by the first request hyper hands the service: see [`Conn::first_request`].
    served: AtomicBool,
    /// An upgrade request's socket, which hyper hands to the upgrade even when the answer was
    /// no 101 (see [`close_refused`]).
    refused_upgrade: Mutex<Option<OnUpgrade>>,
    /// What hyper has written to the client: a relayed body keeps only so far ahead.
    pub(crate) written: Arc<Written>,
}

impl Conn {
    /// Whether this is the connection's first request. hyper never gets to a second one
    /// (`Prefixed` ends its reads at the first head), but should it ever, such a request must
    /// not be served, as it was never read by `head::check` nor admitted.
    pub(crate) fn first_request(&self) -> bool {
        !self.served.swap(true, Ordering::AcqRel)
    }

    /// The client's certificate as checked at the handshake, for the (one) request to judge
    /// under the config it is routed by; the chain is not kept for the tunnel's life.
    pub(crate) fn take_client_certificate(&self) -> Option<client_cert::Checked> {
        crate::sync::lock(&self.client_certificate)
            .take()
            .map(|checked| *checked)
    }

    /// Keeps the upgrade of a request answered with anything but a 101, for [`close_refused`].
    pub(crate) fn keep_refused_upgrade(&self, upgrade: OnUpgrade) {
        *crate::sync::lock(&self.refused_upgrade) = Some(upgrade);
    }
}

/// The refusals that need no routing: shutdown begun (503), over `max_connections` (503) or
/// over `max_connections_per_client` (429). Checked before hyper is involved.
fn admit(conn: &Conn) -> Result<(), ProxyError> {
    // Another replica can take it; a tunnel here would be cut when the grace ends.
    if conn.shared.is_stopping() {
        return Err(ProxyError::ShuttingDown);
    }
    match conn.guard.over() {
        None => Ok(()),
        Some(Over::Connections) => Err(ProxyError::Overloaded),
        Some(Over::Client) => Err(ProxyError::ClientOverLimit),
    }
}
