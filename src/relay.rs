//! Relays a backend's non-101 answer to the client at the client's pace: its body is handed
//! to hyper only so far ahead of what hyper has written to the client ([`Written`]), so a
//! client that does not read leaves the rest at the backend, not in wsgate's buffers.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::Response;

use crate::access_log::{self, decide, Line};
use crate::connection::Conn;
use crate::forwarding;
use crate::sync::lock;
use crate::upstream;

/// The backend's non-101 answer, passed on: its body read (by `backend`, if still needed) as
/// the client takes it.
pub(crate) fn answer(
    conn: &Arc<Conn>,
    log: &mut Line<'_>,
    non_upgrade: upstream::NonUpgrade,
) -> Response<Relayed> {
    if let Some(backend) = non_upgrade.backend {
        // The client's side of a body cut short is in the connection's line; this is why.
        // It ends when hyper drops the body (the client connection gone), or on the drain:
        // shutdown must not rest on that drop alone.
        let shared = conn.shared.clone();
        conn.shared.tracker.spawn(async move {
            tokio::select! {
                ended = backend => if let Err(error) = ended {
                    tracing::debug!(%error, "backend connection failed while relaying its refusal");
                },
                () = shared.drain.started() => {}
            }
        });
    }
    let response = forwarding::relay_refusal(non_upgrade.response);
    decide(log, response.status(), None, "backend refused the upgrade");
    let conn = conn.clone();
    response.map(|body| Relayed::new(non_upgrade.first, body, conn))
}

/// How far a relayed body may run ahead of what hyper has written to the client.
const RELAY_AHEAD: u64 = 64 * 1024;

/// A relayed backend answer's body, counting the bytes handed to the client connection into
/// its end line.
pub(crate) struct Relayed {
    /// The body's first frame, read before the answer was passed on.
    first: Option<Frame<Bytes>>,
    body: Incoming,
    conn: Arc<Conn>,
    sent: u64,
    /// The last poll of the backend's body found nothing yet.
    stalled: bool,
}

impl Relayed {
    fn new(first: Option<Frame<Bytes>>, body: Incoming, conn: Arc<Conn>) -> Self {
        Relayed {
            first,
            body,
            conn,
            sent: 0,
            stalled: false,
        }
    }
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Far enough ahead of what the client has taken: the rest waits at the backend (and
        // in the kernel's buffers), not in hyper's.
        if !self.conn.written.within(self.sent, RELAY_AHEAD, cx) {
            self.stalled = false;
            return Poll::Pending;
        }
        let polled = match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(first))),
            None => Pin::new(&mut self.body).poll_frame(cx),
        };
        // hyper polls the body only when the client connection can take more: pending here
        // means the backend, not the client, holds the answer up.
        self.stalled = polled.is_pending();
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len());
        let rest = self.body.size_hint();
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(rest.lower() + first as u64);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + first as u64);
        }
        hint
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        access_log::record_relayed(&self.conn, self.sent, self.stalled);
    }
}

/// What hyper has written through a [`crate::head::Prefixed`] stream: a relayed body is
/// passed to hyper only so far ahead of it. hyper buffers what it is given up to its buffer
/// size, which is sized for the largest request head (`max_request_header_bytes`, up to
/// 1 MiB), and a client that does not read would otherwise have that much of an answer held
/// for it.
#[derive(Default)]
pub(crate) struct Written {
    bytes: AtomicU64,
    /// The body waiting for more to be written.
    waiting: Mutex<Option<Waker>>,
}

impl Written {
    /// Counts `n` more bytes written, and wakes the body waiting for them.
    pub(crate) fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::AcqRel);
        if let Some(waker) = lock(&self.waiting).take() {
            waker.wake();
        }
    }

    /// Whether `given` bytes handed to hyper are at most `ahead` past what it has written;
    /// if not, `cx` is woken once more is written.
    fn within(&self, given: u64, ahead: u64, cx: &Context<'_>) -> bool {
        let fits = || given <= self.bytes.load(Ordering::Acquire) + ahead;
        if fits() {
            return true;
        }
        *lock(&self.waiting) = Some(cx.waker().clone());
        // Written meanwhile: its wake may have found no waker yet.
        fits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_too_far_ahead_waits_for_writes_and_is_woken_by_them() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let cx = Context::from_waker(&waker);
        let written = Written::default();
        assert!(written.within(100, 100, &cx));
        assert!(!written.within(101, 100, &cx));
        written.add(1);
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "woken by the write"
        );
        assert!(written.within(101, 100, &cx));
    }
}
