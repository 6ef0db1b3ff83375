//! The admin endpoint: plain HTTP on `[admin] listen`, serving Prometheus metrics and the
//! liveness and readiness probes. It is a listener of its own so that it needs no certificate,
//! can stay off the public network, and keeps answering while the proxy drains on shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, HOST, VARY};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::listener::{Acceptor, Reserve};
use crate::scrape;
use crate::server::Shared;
use crate::sync::lock;

/// Admin connections served at once. Scrapers and probes need a handful, and the endpoint
/// must not become a way to exhaust the process. One more closes the oldest: refusing the
/// newcomer instead would let a few idle connections starve the kubelet's probes.
const MAX_CONNECTIONS: usize = 64;

/// How long a connection is served before it may be closed for its descriptor: a probe or a
/// scrape is answered well within it, so out of descriptors, the one just accepted is not
/// closed for the next one before its answer.
const SERVED_FIRST: Duration = Duration::from_secs(1);

/// Any admin connection ends after this long, idle keep-alive included; clients reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Time for a client to send a complete request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let live = Arc::new(Live::default());
    let places = Arc::new(scrape::Places::default());
    let oldest = live.clone();
    let reserve = Arc::new(Reserve::new(move || oldest.close_oldest()));
    let mut acceptor = Acceptor::new(&listener, &stop, &shared, Some(&reserve));
    while let Some((tcp, _)) = acceptor.next().await {
        small_send_buffer(&tcp);
        let (id, evict) = live.admit();
        let (shared, live, reserve) = (shared.clone(), live.clone(), reserve.clone());
        let places = places.clone();
        // Not on the proxy's task tracker: an open scrape connection must not delay shutdown.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, serve(tcp, shared, places)) => {}
                _ = evict.cancelled() => {}
            }
            live.leave(id);
            // The connection's descriptor is closed: back into reserve with it, if one was
            // given up for it, before anything else takes it.
            reserve.refill();
            live.room_made(id);
        });
    }
}

/// An admin connection's send buffer: enough for a scrape to flow at tens of MB/s, where the
/// kernel would let it grow to megabytes, which a scraper that does not read would hold (a
/// metrics text is rendered whole; see `scrape`), on each of the connections it may open.
const SEND_BUFFER: usize = 64 * 1024;

fn small_send_buffer(tcp: &TcpStream) {
    if let Err(error) = socket2::SockRef::from(tcp).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!(%error, "admin connection: send buffer not set");
    }
}

/// The admin connections open now, oldest first.
#[derive(Default)]
struct Live {
    connections: Mutex<VecDeque<(u64, CancellationToken, Instant)>>,
    next_id: AtomicU64,
    /// The connection closed for its descriptor that has not ended yet: the room is coming,
    /// and closing another for the same accept would only cost a scraper its connection.
    making_room: Mutex<Option<u64>>,
}

impl Live {
    /// Counts a new connection in, closing the oldest if that makes one too many.
    fn admit(&self) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut connections = lock(&self.connections);
        if connections.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest, _)) = connections.pop_front() {
                tracing::debug!("admin connection limit reached; oldest connection closed");
                oldest.cancel();
            }
        }
        connections.push_back((id, token.clone(), Instant::now()));
        (id, token)
    }

    /// Closes the oldest connection, for its descriptor (the process is out of them, and a
    /// probe waits), unless one closed for that has not ended yet, or the oldest has been
    /// served for less than [`SERVED_FIRST`]; whether room is coming.
    fn close_oldest(&self) -> bool {
        let mut making_room = lock(&self.making_room);
        if making_room.is_some() {
            return true;
        }
        let mut connections = lock(&self.connections);
        match connections.front() {
            Some((_, _, since)) if since.elapsed() >= SERVED_FIRST => {}
            _ => return false,
        }
        let Some((id, oldest, _)) = connections.pop_front() else {
            return false;
        };
        oldest.cancel();
        *making_room = Some(id);
        true
    }

    /// Connection `id` ended, its descriptor back in the reserve: if it was closed for that,
    /// room made.
    fn room_made(&self, id: u64) {
        let mut making_room = lock(&self.making_room);
        if *making_room == Some(id) {
            *making_room = None;
        }
    }

    fn leave(&self, id: u64) {
        lock(&self.connections).retain(|(live, _, _)| *live != id);
    }
}

async fn serve(tcp: TcpStream, shared: Arc<Shared>, places: Arc<scrape::Places>) {
    let service = service_fn(move |req| {
        let (shared, places) = (shared.clone(), places.clone());
        async move { Ok::<_, Infallible>(respond(&req, &shared, &places).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// The answer to an admin request: the metrics (a body of their own), or a short text.
async fn respond<B>(
    req: &Request<B>,
    shared: &Arc<Shared>,
    places: &scrape::Places,
) -> Response<Either<Full<Bytes>, scrape::Text>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response.map(Either::Left);
    }
    if !has_one_host(req) {
        return no_host().map(Either::Left);
    }
    match req.uri().path() {
        "/metrics" => metrics(shared, places, scrape::takes_gzip(req.headers())).await,
        path => probe(path, shared).map(Either::Left),
    }
}

/// The answer to a `/metrics` request, gzipped if `gzip`.
async fn metrics(
    shared: &Arc<Shared>,
    places: &scrape::Places,
    gzip: bool,
) -> Response<Either<Full<Bytes>, scrape::Text>> {
    match scrape::render(places, shared, gzip).await {
        Ok(body) => {
            let mut response = Response::new(Either::Right(body));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
            if gzip {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(scrape::Refused::Busy) => {
            let busy = "busy: other scrapers have not taken their answers yet\n";
            text(StatusCode::SERVICE_UNAVAILABLE, busy).map(Either::Left)
        }
        Err(scrape::Refused::Failed) => {
            let failed = "the metrics could not be rendered\n";
            text(StatusCode::INTERNAL_SERVER_ERROR, failed).map(Either::Left)
        }
    }
}

/// The answer to a probe, or to a path the endpoint does not serve.
fn probe(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    match path {
        // Alive as long as the runtime answers at all.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // Not ready once shutdown began: a load balancer should stop sending new clients.
        "/readyz" if shared.is_stopping() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        // Nor while out of descriptors: no new client could be accepted, and one sent here
        // would wait in the listen queue (liveness stays: the process is working).
        "/readyz" if shared.shortage.now() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "out of open files\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

/// The 400 for a request without one Host header, closing the connection: a client that
/// sends such requests is not one to keep an admin connection open for.
fn no_host() -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::BAD_REQUEST, "a request needs one Host header\n");
    (response.headers_mut()).insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// RFC 9112 §3.2 makes a server refuse an HTTP/1.1 request with no Host or several; hyper
/// leaves that check to the service.
fn has_one_host<B>(req: &Request<B>) -> bool {
    match req.headers().get_all(HOST).iter().count() {
        0 => req.version() < Version::HTTP_11,
        n => n == 1,
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections as if admitted this long ago, oldest first.
    fn admitted(ages: &[Duration]) -> (Live, Vec<CancellationToken>) {
        let live = Live::default();
        let tokens: Vec<_> = ages.iter().map(|_| CancellationToken::new()).collect();
        let mut connections = lock(&live.connections);
        for (id, (age, token)) in ages.iter().zip(&tokens).enumerate() {
            connections.push_back((id as u64, token.clone(), Instant::now() - *age));
        }
        drop(connections);
        (live, tokens)
    }

    #[test]
    fn the_oldest_is_closed_once_served_long_enough_and_one_at_a_time() {
        let (live, tokens) = admitted(&[Duration::from_secs(5), Duration::from_secs(3)]);
        assert!(live.close_oldest());
        assert!(tokens[0].is_cancelled() && !tokens[1].is_cancelled());
        // Its room is coming: no other is closed for it meanwhile, whoever else ends.
        live.leave(0);
        live.room_made(1);
        assert!(live.close_oldest());
        assert!(!tokens[1].is_cancelled());
        // Once it has ended, the next shortage closes the next.
        live.room_made(0);
        assert!(live.close_oldest());
        assert!(tokens[1].is_cancelled());
    }

    #[test]
    fn a_connection_just_accepted_is_not_closed_for_its_descriptor() {
        let (live, tokens) = admitted(&[Duration::from_millis(10)]);
        assert!(!live.close_oldest(), "no room coming");
        assert!(!tokens[0].is_cancelled());
        let (empty, _) = admitted(&[]);
        assert!(!empty.close_oldest());
    }
}
