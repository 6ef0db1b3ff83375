//! The request path: one upgrade request in, one answer out, and a tunnel when the backend
//! accepted. Builds the response of every refusal, from what [`crate::error`] decides of a
//! [`ProxyError`] (status, body, headers); each answer is handed to the [`access_log`] for the
//! connection's one line.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::access_log::{self, decide, Line};
use crate::client_cert;
use crate::connection::Conn;
use crate::error::ProxyError;
use crate::forwarding;
use crate::head::Prefixed;
use crate::recheck::Watch;
use crate::relay::{self, Relayed};
use crate::routes::{Route, Selection};
use crate::snapshot::Snapshot;
use crate::splice;
use crate::tls::TlsStream;
use crate::upstream::{self, Answer, BackendIo, Tunnel};
use crate::websocket;

pub(crate) type Body = Either<FixedBody, Relayed>;

/// Serves one request. Never fails: every refusal becomes a response here, whose end
/// `answered` is told of (the connection then closes: one request per connection).
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
    answered: Arc<Answered>,
) -> Result<Response<Body>, Infallible> {
    if !conn.first_request() {
        // The connection's line stays the first request's; this one is only refused. If it
        // asked for an upgrade, hyper hands the socket to this request's upgrade, not the
        // first's: kept in its place, so the connection is still closed properly.
        tracing::debug!(client = %conn.peer, "request behind a refused one refused unread");
        conn.keep_refused_upgrade(hyper::upgrade::on(&mut req));
        return Ok(refusal(&ProxyError::SecondRequest, None));
    }
    let mut log = Line::new(&conn);
    // Taken first: it needs the request mutably, the checks borrow it. A tunnel takes it.
    let mut upgrade = Some(hyper::upgrade::on(&mut req));
    let response = match route_and_forward(&mut req, &conn, &mut log, &mut upgrade).await {
        Ok(response) => response,
        Err(err) => refuse(&err, &mut log, Some(answered)),
    };
    if let Some(upgrade) = upgrade {
        conn.keep_refused_upgrade(upgrade);
    }
    Ok(response)
}

/// A body of wsgate's own: a refusal's fixed text, or the 101's empty body. It says when
/// hyper is done with it (written, or given up on), so that a refused connection can be
/// closed then. The header cannot say it for every refusal: a
/// 426's `Connection` names `Upgrade`, as RFC 9110 and the contract spell it, and a `close`
/// beside it would be hyper's doing if it were told to close up front.
pub(crate) struct FixedBody {
    body: Full<Bytes>,
    done: Option<Arc<Answered>>,
}

impl FixedBody {
    fn new(body: Bytes, done: Option<Arc<Answered>>) -> FixedBody {
        FixedBody {
            body: Full::new(body),
            done,
        }
    }
}

impl hyper::body::Body for FixedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for FixedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.notify.notify_one();
        }
    }
}

/// When a refusal's body is done with: written, or given up on.
#[derive(Default)]
pub(crate) struct Answered {
    pub(crate) notify: Notify,
}

/// The answer to a request hyper is never shown (a head over the limit, or one hyper would
/// not parse), as the request path would give it: decided (and counted) now, whatever
/// happens to its delivery. The caller writes it, logs the connection's end with
/// [`access_log::end_line`], then lets the client linger.
pub(crate) fn refuse_unparsed(err: &ProxyError, conn: &Conn) -> Vec<u8> {
    let mut log = Line::new(conn);
    let response = refuse(err, &mut log, None);
    raw_answer(response.status(), response.headers(), err.body())
}

/// The answer to a plain-HTTP client at the TLS port, in the HTTP it spoke: its status and
/// body are [`crate::error::Unanswered::PlainHttp`]'s.
pub(crate) fn use_tls_answer() -> Vec<u8> {
    use crate::error::{USE_TLS, USE_TLS_STATUS};
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    raw_answer(USE_TLS_STATUS, &headers, USE_TLS)
}

/// An HTTP/1.1 answer written by wsgate itself rather than hyper, framed by its length.
fn raw_answer(status: hyper::StatusCode, headers: &hyper::HeaderMap, body: &str) -> Vec<u8> {
    // Like every answer hyper writes (RFC 9110 §6.6.1: an origin with a clock sends one).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut head = format!("HTTP/1.1 {status}\r\ndate: {date}\r\n");
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// Routes the request, checks it, and forwards it to the route's backends: the backend's
/// answer relayed, or a tunnel on its way once the client has its 101.
async fn route_and_forward(
    req: &mut Request<Incoming>,
    conn: &Arc<Conn>,
    log: &mut Line<'_>,
    upgrade: &mut Option<OnUpgrade>,
) -> Result<Response<Body>, ProxyError> {
    // Before the snapshot: the rules a tunnel's client certificate is checked again after
    // are those this request is checked under, or older.
    let rules_seen = conn.shared.recheck.epoch();
    // The config in force now, not at accept: a reload between the TLS handshake and the
    // request head must route this request by the new table.
    let snapshot = &conn.shared.current();
    let (route, protocols) = checked_route(req, snapshot, log)?;
    let checked = conn.take_client_certificate();
    let certificate = client_cert::at_request(checked, snapshot.client_verifier.as_ref())?;
    if route.config.require_client_certificate && certificate.is_none() {
        return Err(ProxyError::ClientCertificateRequired);
    }
    let backend_request =
        forwarding::backend_request(req, &protocols, conn.peer, certificate.as_ref());
    let answer = upstream::open(
        route,
        backend_request,
        &protocols,
        upstream::Timing {
            timeout: conn.connect_timeout,
            cooldown: snapshot.config.timeouts.backend_cooldown,
            attempt_delay: snapshot.config.timeouts.attempt_delay,
        },
        &mut log.backend,
        (&conn.shared.metrics, &conn.shared.loads),
    )
    .await?;
    match answer {
        Answer::NotUpgraded(answer) => Ok(relay::answer(conn, log, answer).map(Either::Right)),
        Answer::Upgraded(tunnel) => {
            let on_client_upgrade = upgrade.take().ok_or(ProxyError::Internal("no upgrade"))?;
            let head = forwarding::client_switching_head(&tunnel.head);
            spawn_tunnel(
                conn.clone(),
                log,
                on_client_upgrade,
                tunnel,
                TunnelRules {
                    idle: route.config.idle.unwrap_or(snapshot.config.timeouts.idle),
                    recheck: (snapshot.config.client_auth.as_ref())
                        .is_some_and(|auth| auth.recheck_tunnels)
                        .then_some(rules_seen),
                },
            );
            Ok(head.map(|()| Either::Left(FixedBody::new(Bytes::new(), None))))
        }
    }
}

/// The route the request takes, and the offered subprotocols to forward, once the request
/// has passed every check; the route is named in the line as soon as it is known.
fn checked_route<'a>(
    req: &'a Request<Incoming>,
    snapshot: &'a Snapshot,
    log: &mut Line<'_>,
) -> Result<(&'a Route, Vec<&'a str>), ProxyError> {
    // (Connection limits were checked by `admit` before hyper read the request.)
    let host = websocket::request_host(req.uri(), req.headers())?;
    // HTTP/1.1 without Host is malformed wherever it was headed (RFC 9112 §3.2): 400 before
    // routing, not a 404 when only host-bound routes have the path. (HTTP/1.0, which may
    // leave Host out, is refused as too old once a route is known.)
    if host.is_none() && req.version() >= hyper::Version::HTTP_11 {
        return Err(ProxyError::BadHost(crate::error::HostFault::Missing));
    }
    let offered = websocket::offered_protocols(req.headers());
    let selection = snapshot.routes.select(host, req.uri().path(), &offered);
    match &selection {
        Selection::NoRoute => return Err(ProxyError::NoRoute),
        // Named before the checks, so a refusal's line says which route refused; when no
        // route takes the offered subprotocols, the one that ranked first.
        Selection::Matched { route, .. } | Selection::NoProtocolFits { first: route } => {
            log.route = Some(route.config.name.clone())
        }
    }
    websocket::check_request(req.method(), req.version(), req.headers())?;
    let Selection::Matched { route, protocols } = selection else {
        return Err(ProxyError::NoSubprotocol);
    };
    let origin = websocket::origin(req.headers());
    if !route.allows_origin(origin) {
        return Err(ProxyError::OriginDenied(websocket::origin_in_words(origin)));
    }
    Ok((route, protocols))
}

/// What a tunnel keeps of the config it opened under.
struct TunnelRules {
    idle: std::time::Duration,
    /// Whether its client's certificate is checked again when the rules for it change
    /// (`tls.recheck_tunnels`): from which of their generations on, if so.
    recheck: Option<u64>,
}

/// Once the client's 101 is on the wire, hyper hands over its socket: splice it to the backend.
fn spawn_tunnel(
    conn: Arc<Conn>,
    log: &mut Line<'_>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    tunnel: Tunnel,
    rules: TunnelRules,
) {
    access_log::tunnel_takes_line(log);
    let route = log.route.clone().unwrap_or_default();
    let took = log.head_at.elapsed();
    let backend = log.backend.clone().unwrap_or_default();
    let shared = conn.shared.clone();
    // Only the socket and its early bytes move into the task: the head would be held for the
    // tunnel's whole life.
    let Tunnel {
        socket,
        early,
        busy,
        ..
    } = tunnel;
    // Boxed: what only opening the tunnel needs would otherwise be held in this future for
    // the tunnel's whole life (a task keeps room for its captures in every later state). And
    // tokio allocates a task in steps of 128 bytes: 8 bytes more here once cost 128 per
    // tunnel (2026-12-06: 5,455 → 5,624 bytes in use per idle tunnel; boxed, 5,498).
    let mut opening = Box::new((on_upgrade, socket, early, rules));
    shared.tracker.spawn(async move {
        let upgraded = (&mut opening.0).await;
        // Moved out of the task's captures, so that the box is freed here.
        let (_, socket, early, rules) = {
            let opening = opening;
            *opening
        };
        // Built in a plain function so that nothing but the splice itself is held across the
        // await below: every byte of this future is kept for the tunnel's whole life.
        let Some(mut splice) = client_splice(upgraded, socket, early, rules, &conn, &route) else {
            return access_log::tunnel_not_opened(&conn, route, backend);
        };
        // Counted once the client has its 101, so 101s and opened tunnels always agree.
        conn.shared.metrics.upgraded(&route, took);
        let open = conn.shared.metrics.tunnel_started();
        let outcome = (&mut splice).await;
        // The backend's side is over: it has one connection less to balance by.
        drop(busy);
        open.closed(&route, &outcome);
        let detail = splice.client_failure();
        access_log::tunnel_line(&conn, &route, &backend, &outcome, detail.as_deref());
        // Still counted among the connections while the client takes in the rest. Boxed: this
        // future's size is held for the tunnel's whole life, the lingering only at its end
        // (unboxed, it took 4.5 KiB more per idle tunnel).
        Box::pin(splice.linger(outcome.reason)).await;
    });
}

type ClientSplice = splice::Splice<TlsStream<TcpStream>, BackendIo>;
type ClientIo = TokioIo<Prefixed<TlsStream<TcpStream>>>;

fn client_splice(
    upgraded: hyper::Result<hyper::upgrade::Upgraded>,
    backend: BackendIo,
    backend_early: Bytes,
    rules: TunnelRules,
    conn: &Conn,
    route: &str,
) -> Option<ClientSplice> {
    // An upgrade that failed is a client gone before its 101 was out.
    let (tls, early) = client_stream(upgraded.ok()?)?;
    let chain = (tls.client_chain()).filter(|chain| !chain.is_empty());
    let watch = (chain.zip(rules.recheck))
        .map(|(chain, seen)| Watch::new(&conn.shared.recheck, chain.to_vec(), seen));
    // The TLS stream is its own buffered reader (its plaintext buffer).
    let drain = &conn.shared.drain;
    let splice = splice::Splice::new(tls, early, backend, backend_early, rules.idle, drain);
    let splice = match watch {
        Some(watch) => splice.rechecked(watch),
        None => splice,
    };
    Some(splice.metered(conn.shared.metrics.meter(route)))
}

/// The client's TLS stream, as hyper hands it over after the request, and the bytes read
/// behind the request head: the client's early bytes, for a tunnel.
pub(crate) fn client_stream(
    upgraded: hyper::upgrade::Upgraded,
) -> Option<(TlsStream<TcpStream>, Bytes)> {
    let Ok(client) = upgraded.downcast::<ClientIo>() else {
        // Not the client's doing: the connection was served over another type than this.
        tracing::error!("internal error: the upgraded connection has an unexpected type");
        return None;
    };
    let (tls, unread) = client.io.into_inner().into_parts();
    // hyper's buffer holds nothing past the head (`Prefixed` ends its reads there), but
    // should it ever, those bytes came first.
    let early = if client.read_buf.is_empty() {
        unread
    } else {
        [client.read_buf, unread].concat().into()
    };
    Some((tls, early))
}

/// Decides the refusal's log line and builds its response; `done` is told when its body has
/// been written.
fn refuse(err: &ProxyError, log: &mut Line<'_>, done: Option<Arc<Answered>>) -> Response<Body> {
    let (status, side) = err.status();
    decide(log, status, Some(side), &err.to_string());
    refusal(err, done)
}

/// The answer to `err`: its status, fixed body and headers.
fn refusal(err: &ProxyError, done: Option<Arc<Answered>>) -> Response<Body> {
    let body = Bytes::from_static(err.body().as_bytes());
    let mut response = Response::new(Either::Left(FixedBody::new(body, done)));
    *response.status_mut() = err.status().0;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in err.extra_headers() {
        headers.insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_is_a_400_framed_by_its_length() {
        let answer = String::from_utf8(use_tls_answer()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert_eq!(body, crate::error::USE_TLS);
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
    }

    #[test]
    fn every_refusal_builds_its_answer() {
        // Every refusal is built here, with the status and headers its client is promised.
        for (err, code) in crate::error::every_refusal() {
            let answer = refusal(&err, None);
            assert_eq!(answer.status().as_u16(), code, "{err}");
            let headers = answer.headers();
            for (name, value) in err.extra_headers() {
                assert_eq!(headers[name], *value, "{err}");
            }
            // A 426 names the upgrade in `Connection` instead (closed all the same).
            if code != 426 {
                assert_eq!(headers[CONNECTION], "close", "{err}");
            }
        }
    }
}
