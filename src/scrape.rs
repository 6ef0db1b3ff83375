//! The `/metrics` answer: rendered off the runtime's threads (and gzipped there, for a
//! scraper that takes it, as Prometheus does), and sent in pieces by a body that holds one of
//! a few places until its last piece is taken.
//!
//! Why: with thousands of routes that have seen traffic the text runs to megabytes (8 MB at
//! 5,000 routes) and takes tens of milliseconds to render, which on a runtime thread would
//! hold up every tunnel it serves; and every connection answered holds its text until the
//! scraper has read it, so scrapers that do not read (hung, or hostile) would hold one
//! each, up to the admin connection limit. A place is waited for briefly, then refused: a
//! Prometheus scrapes a target one request at a time, so only a stuck scraper ever waits.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::Shared;

/// Metrics texts held for their scrapers at once: a Prometheus pair, and room for a person
/// with `curl`.
const HELD_AT_ONCE: usize = 4;

/// How long a scrape waits for a place before it is refused.
const PLACE_WAIT: Duration = Duration::from_secs(5);

/// The most of the text handed to hyper at once: hyper takes pieces only while its write
/// queue has room (under 408 KiB queued: seven pieces), and the kernel only what the
/// connection's send buffer holds (kept small: `admin::SEND_BUFFER`), so a scraper that
/// stops reading leaves the rest here, in the text its place accounts for.
const PIECE: usize = 64 * 1024;

/// The places of one admin endpoint.
pub(crate) struct Places(Arc<Semaphore>);

impl Default for Places {
    fn default() -> Self {
        Places(Arc::new(Semaphore::new(HELD_AT_ONCE)))
    }
}

/// Why a scrape got no text.
pub(crate) enum Refused {
    /// Every place held (scrapers not reading what they were sent) for [`PLACE_WAIT`].
    Busy,
    /// The render failed (it panicked, or the runtime is shutting down).
    Failed,
}

/// Renders the metrics for a scrape, once a place is free; gzipped if `gzip`.
pub(crate) async fn render(
    places: &Places,
    shared: &Arc<Shared>,
    gzip: bool,
) -> Result<Text, Refused> {
    let place = place(places).await?;
    let open = shared.open_connections();
    // The generation as the reload counters have it, published with them: the config is
    // swapped in some milliseconds before its reload is counted, and a scrape in between
    // would show a generation its counters and last success time do not account for yet.
    // (Not held while rendering: a reload would wait for the scrape.)
    let generation = shared.reload_status.borrow().generation;
    let shared = shared.clone();
    let text = tokio::task::spawn_blocking(move || {
        let text = (shared.metrics).render(open, generation, &shared.loads);
        match gzip {
            true => gzipped(text.as_bytes()),
            false => Some(text.into_bytes()),
        }
    })
    .await
    .ok()
    .flatten()
    .ok_or(Refused::Failed)?;
    Ok(Text::new(Bytes::from(text), place))
}

/// `text` gzipped, at the fastest level: a metrics text, much repeated, shrinks about
/// fourteen-fold even so (4.3 MB to 300 KB), for a millisecond or two per megabyte.
fn gzipped(text: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let out = Vec::with_capacity(text.len() / 8);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    encoder.write_all(text).ok()?;
    encoder.finish().ok()
}

/// Whether a request's `Accept-Encoding` takes gzip: named with a weight above zero, or
/// covered by `*` without gzip refused by name (RFC 9110 §12.5.3).
pub(crate) fn takes_gzip(headers: &hyper::HeaderMap) -> bool {
    let mut any = false;
    // No quoted strings in this list: a stray quote must not hide the rest of it.
    for coding in crate::grammar::plain_elements(headers, &hyper::header::ACCEPT_ENCODING) {
        let (name, weight) = match coding.split_once(';') {
            Some((name, params)) => (name.trim(), weight(params)),
            None => (coding, true),
        };
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            return weight;
        }
        any |= name == "*" && weight;
    }
    any
}

/// Whether a coding's parameters (`q=0.5`) leave it a weight above zero. A weight that is no
/// qvalue (`q=2`, `q=.5`, `q=abc`: RFC 9110 §12.4.2 allows 0 to 1 with up to three decimals)
/// counts as zero: gzip is for scrapers that say so plainly.
fn weight(params: &str) -> bool {
    let q = params.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case("q").then(|| value.trim())
    });
    q.is_none_or(above_zero)
}

/// Whether `q` is a qvalue above zero: "1", "1.", "1.0" to "1.000", or "0.001" to "0.999".
fn above_zero(q: &str) -> bool {
    let (whole, decimals) = q.split_once('.').unwrap_or((q, ""));
    let decimals_ok = decimals.len() <= 3 && decimals.bytes().all(|b| b.is_ascii_digit());
    match whole {
        "1" => decimals_ok && decimals.bytes().all(|b| b == b'0'),
        "0" => decimals_ok && decimals.bytes().any(|b| b != b'0'),
        _ => false,
    }
}

/// A place for one more text, waited for up to [`PLACE_WAIT`].
async fn place(places: &Places) -> Result<OwnedSemaphorePermit, Refused> {
    match tokio::time::timeout(PLACE_WAIT, places.0.clone().acquire_owned()).await {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(_closed)) => Err(Refused::Failed),
        Err(_late) => Err(Refused::Busy),
    }
}

/// A rendered metrics text as a response body, in pieces of [`PIECE`], holding its place
/// until the last is taken (or the body is dropped with the connection).
pub(crate) struct Text {
    rest: Bytes,
    place: Option<OwnedSemaphorePermit>,
}

impl Text {
    fn new(text: Bytes, place: OwnedSemaphorePermit) -> Self {
        Text {
            rest: text,
            place: Some(place),
        }
    }
}

impl Body for Text {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.place = None;
            return Poll::Ready(None);
        }
        let size = self.rest.len().min(PIECE);
        // A copy, not a slice: a slice would keep the whole text allocated for as long as
        // hyper holds its last pieces unwritten, after the place is given up.
        let piece = Bytes::copy_from_slice(&self.rest[..size]);
        bytes::Buf::advance(&mut self.rest, size);
        if self.rest.is_empty() {
            // Taken whole (the text freed): the place is free for the next scrape.
            self.rest = Bytes::new();
            self.place = None;
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polled(text: &mut Text) -> Option<Bytes> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(text).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    /// Sent in pieces, with an exact length (a Content-Length, not chunks), and its place
    /// held until the last piece is taken.
    #[test]
    fn a_text_goes_in_pieces_and_frees_its_place_when_taken_whole() {
        let places = Places::default();
        let place = places.0.clone().try_acquire_owned().unwrap();
        let whole: Vec<u8> = (0..PIECE * 2 + 10).map(|i| (i % 251) as u8).collect();
        let mut text = Text::new(Bytes::from(whole.clone()), place);
        assert_eq!(text.size_hint().exact(), Some(whole.len() as u64));
        let mut got = Vec::new();
        for expected in [PIECE, PIECE, 10] {
            assert_eq!(places.0.available_permits(), HELD_AT_ONCE - 1, "held");
            let piece = polled(&mut text).unwrap();
            assert_eq!(piece.len(), expected);
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, whole);
        assert!(text.is_end_stream());
        assert_eq!(places.0.available_permits(), HELD_AT_ONCE, "freed");
        assert!(polled(&mut text).is_none());
    }

    /// Yields until `places` has `free` places, within a second.
    async fn until_free(places: &Places, free: usize) {
        let settled = async {
            while places.0.available_permits() != free {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(1), settled)
            .await
            .expect("the places settle");
    }

    /// Through hyper: a HEAD is answered with the text's length and gives its place back at
    /// once; a GET whose client does not read holds its place (the text is larger than
    /// what the connection and hyper buffer), and gives it back when the connection drops.
    #[tokio::test]
    async fn through_hyper_a_place_is_held_only_while_its_text_waits_for_a_reader() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let places = Arc::new(Places::default());
        let serve = |places: Arc<Places>| {
            let (client, server) = tokio::io::duplex(16 * 1024);
            let service = hyper::service::service_fn(move |_| {
                let places = places.clone();
                async move {
                    let place = place(&places).await.ok().expect("a place");
                    let text = Text::new(Bytes::from(vec![b'm'; 1 << 20]), place);
                    Ok::<_, Infallible>(hyper::Response::new(text))
                }
            });
            let io = hyper_util::rt::TokioIo::new(server);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            client
        };
        let mut head = serve(places.clone());
        head.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0; 4096];
        let n = head.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
        assert!(
            answer.contains("\r\ncontent-length: 1048576\r\n"),
            "{answer}"
        );
        until_free(&places, HELD_AT_ONCE).await;

        let mut unread = serve(places.clone());
        unread
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        until_free(&places, HELD_AT_ONCE - 1).await;
        // However long hyper is let run, the text cannot all go: still held.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(places.0.available_permits(), HELD_AT_ONCE - 1);
        drop(unread);
        until_free(&places, HELD_AT_ONCE).await;
    }

    #[test]
    fn gzip_is_taken_when_asked_for_with_a_weight() {
        let asking = |value: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(hyper::header::ACCEPT_ENCODING, value.parse().unwrap());
            takes_gzip(&headers)
        };
        // Prometheus's, and others'.
        assert!(asking("gzip"));
        assert!(asking("identity, gzip;q=0.5"));
        assert!(asking("GZIP"));
        assert!(asking("*"));
        assert!(asking("br, *;q=0.1"));
        assert!(!asking("gzip;q=0"));
        assert!(!asking("gzip; q=0.000"));
        assert!(!asking("*, gzip;q=0"));
        assert!(!asking("identity"));
        assert!(!asking("br, deflate"));
        assert!(!takes_gzip(&hyper::HeaderMap::new()));
        assert!(!asking(""), "no coding wanted");
        assert!(asking("x-gzip"));
        assert!(asking("*;q=0, gzip"), "named, it is taken");
        assert!(asking("gzip ; Q = 1.000"));
        assert!(!asking("gzip;q=0."));
        // Weights that are no qvalue count as zero.
        for odd in [
            "q=2", "q=.5", "q=1e3", "q=inf", "q=abc", "q=", "q=-1", "q=0.0001",
        ] {
            assert!(!asking(&format!("gzip;{odd}")), "{odd}");
        }
        // A stray quote does not hide what follows it.
        assert!(!asking("*, x\"y, gzip;q=0"));
        let text = b"wsgate_requests_total{route=\"a\",status=\"101\"} 1\n".repeat(1000);
        let packed = gzipped(&text).unwrap();
        assert!(packed.len() * 10 < text.len(), "{} bytes", packed.len());
        let mut unpacked = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(&packed[..]);
        std::io::Read::read_to_end(&mut decoder, &mut unpacked).unwrap();
        assert_eq!(unpacked, text);
    }

    /// Scrapers holding every place: the next waits, and is refused if none frees in time; a
    /// place freed (a text dropped with its connection) lets the next in.
    #[tokio::test(start_paused = true)]
    async fn a_scrape_waits_for_a_place_then_is_refused() {
        let places = Places::default();
        let held: Vec<_> = (0..HELD_AT_ONCE)
            .map(|_| places.0.clone().try_acquire_owned().unwrap())
            .collect();
        assert!(matches!(place(&places).await, Err(Refused::Busy)));
        let waiting = tokio::spawn(async move { place(&places).await.is_ok() });
        drop(held);
        assert!(waiting.await.unwrap(), "a place freed is taken");
    }
}
