//! The byte relay between a client and a backend once the backend's 101 has been checked.
//!
//! Most WebSocket tunnels are idle most of the time, so an idle tunnel holds no relay buffer:
//! - client → backend reads straight out of the TLS stream's plaintext buffer (`AsyncBufRead`),
//!   which the stream holds only while decrypted bytes wait in it (`tls::stream`);
//! - backend → client borrows a buffer from a small per-thread pool only for the duration of a
//!   read, and keeps it only while read bytes wait to be written (the way HAProxy does it,
//!   rather than `copy_bidirectional`'s two 8 KiB buffers held for the tunnel's whole life).
//!
//! A half-close is passed on; a failed read ends both sides once what was read before it is
//! written on (a client's last frame in front of its reset still reaches the backend), a
//! failed write only the direction writing to the broken peer (what that peer sent before it
//! went is still delivered); and the idle timer is re-armed lazily (only when it fires) so
//! traffic never touches the timer wheel.
//!
//! Layout: `direction` is one way of the relay (its buffers borrowed from `crate::pool`),
//! `peer` what the relay asks of a connection beyond reads and writes, `linger` the close once
//! the relay is over, `outcome` what a finished tunnel reports; this module is the tunnel
//! itself, both directions under one idle timer, its probe of readers no longer read, and the
//! drain.

mod direction;
mod linger;
mod outcome;
mod peer;
#[cfg(test)]
mod test_peers;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::drain::Drain;
use crate::metrics::Meter;
use crate::recheck::Watch;
use direction::{Direction, Failure};
pub(crate) use outcome::{CloseReason, Outcome, Peer};
pub(crate) use peer::PeerSocket;

/// The idle timeout of a tunnel one of whose directions is over, if its own is longer.
const HALF_CLOSED_IDLE: Duration = Duration::from_secs(30);
/// How often the reader of a stuck or finished direction is checked for having gone (see
/// [`Splice::probe`]).
const PROBE: Duration = Duration::from_secs(2);
/// The first look at a direction that just got stuck, and the step its looks grow by (see
/// [`Splice::peer_took_some`]). Soon, because the write that waits does not mean the peer has
/// stopped taking bytes: its kernel goes on taking what was in flight until its receive
/// window closes, on loopback within a millisecond (later on a busy machine), across a
/// network within a few round trips. Counted as the tunnel's activity at a look 2 s later,
/// that drain kept a reader that stopped as the write began open for up to 2 s past its idle
/// timeout; looked at soon, and then at doubling steps, it costs a fraction of the step the
/// drain ended in. The steps start again from the first after the write moved (a reader that
/// had been reading: its drain comes after the write's last progress).
const FIRST_LOOK: Duration = Duration::from_millis(100);
/// [`PROBE`] in steps of [`FIRST_LOOK`].
const PROBE_STEPS: u8 = (PROBE.as_millis() / FIRST_LOOK.as_millis()) as u8;
const _: () = assert!(PROBE.as_millis() / FIRST_LOOK.as_millis() <= u8::MAX as u128);

/// The relay of one tunnel, as a hand-written future: an `async fn` would store its
/// arguments twice (once as arguments, once as locals), and the TLS stream alone is over 1 KiB;
/// per idle tunnel, that is memory held for nothing.
pub(crate) struct Splice<C, B> {
    client: C,
    backend: B,
    /// Client → backend.
    up: Direction,
    /// Backend → client.
    down: Direction,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// 0: the timer is set for the idle deadline only; else it is set for a look at the
    /// readers nobody reads, and looks come every `looks` × [`FIRST_LOOK`].
    looks: u8,
    /// What the kernel held for each stuck direction's peer (up, down) when last looked at.
    queued: [Option<u32>; 2],
    drain: Arc<Drain>,
    /// Registered with `drain` on the first poll.
    wakeup: Option<Pin<Box<OwnedNotified>>>,
    /// The client's certificate, checked again when the rules for it change.
    recheck: Option<Box<Watch>>,
    first_eof: Option<Peer>,
    /// The first failed write, and to whom.
    write_failure: Option<(Peer, io::ErrorKind)>,
    /// Live byte counters, fed as bytes move so a long tunnel shows up in rates.
    meter: Option<Meter>,
}

impl<C, B> Splice<C, B>
where
    C: AsyncBufRead + AsyncWrite + PeerSocket + Unpin,
    B: AsyncRead + AsyncWrite + PeerSocket + Unpin,
{
    /// What the client's TLS failed on, if it did: the detail behind an `invalid data` end.
    pub(crate) fn client_failure(&self) -> Option<String> {
        self.client.failure()
    }

    /// Relays until both directions have finished, one fails, the tunnel idles out, or
    /// `drain` fires. `client_early` / `backend_early` are bytes each side sent right behind
    /// its handshake that the HTTP layer already read; they go out first.
    pub(crate) fn new(
        client: C,
        client_early: Bytes,
        backend: B,
        backend_early: Bytes,
        idle: Duration,
        drain: &Arc<Drain>,
    ) -> Self {
        let now = Instant::now();
        Splice {
            client,
            backend,
            up: Direction::new(client_early),
            down: Direction::new(backend_early),
            idle,
            last_activity: now,
            timer: Box::pin(sleep_until(now + idle)),
            looks: 0,
            queued: [None; 2],
            drain: drain.clone(),
            wakeup: None,
            recheck: None,
            first_eof: None,
            write_failure: None,
            meter: None,
        }
    }

    /// Closes the tunnel when rules a reload puts in force refuse its client's certificate.
    pub(crate) fn rechecked(mut self, watch: Watch) -> Self {
        self.recheck = Some(Box::new(watch));
        self
    }

    /// Feeds the tunnel's bytes to `meter` as they move.
    pub(crate) fn metered(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    fn report(&mut self) {
        if let Some(meter) = &mut self.meter {
            meter.report(self.up.bytes, self.down.bytes);
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut active = false;
        // A direction ending (a half-close passed on, or its writer gone) is news on the
        // tunnel like a byte: the half-closed wait below counts from it, not from the last
        // byte, which on a quiet tunnel may be long past.
        let finished_before = (self.up.finished, self.down.finished);
        if !self.up.finished {
            match self
                .up
                .poll_from_buffered(cx, &mut self.client, &mut self.backend, &mut active)
            {
                Poll::Ready(Ok(())) => _ = self.first_eof.get_or_insert(Peer::Client),
                Poll::Ready(Err(Failure::Write(kind))) => self.write_failed(Peer::Backend, kind),
                Poll::Ready(Err(e)) => return Poll::Ready(e.blame(Peer::Client, Peer::Backend)),
                Poll::Pending => {}
            }
        }
        if !self.down.finished {
            match self
                .down
                .poll_from_raw(cx, &mut self.backend, &mut self.client, &mut active)
            {
                Poll::Ready(Ok(())) => _ = self.first_eof.get_or_insert(Peer::Backend),
                Poll::Ready(Err(Failure::Write(kind))) => self.write_failed(Peer::Client, kind),
                Poll::Ready(Err(e)) => return Poll::Ready(e.blame(Peer::Backend, Peer::Client)),
                Poll::Pending => {}
            }
        }
        if self.up.finished && self.down.finished {
            return Poll::Ready(self.ending());
        }
        active |= (self.up.finished, self.down.finished) != finished_before;
        if active {
            self.last_activity = Instant::now();
            self.report();
        }
        // Once one direction is over (a WebSocket whose backend closed, whose client has not
        // yet), a quiet tunnel waits for its other side briefly, not the whole idle timeout:
        // HAProxy's `timeout client-fin`. From the half-close passed on, not from the EOF
        // read: until then the writer may still be handing its last bytes to a slow peer,
        // whose progress the timer does not see (a slow client gets the idle timeout for them).
        if (self.up.finished || self.down.finished) && self.idle > HALF_CLOSED_IDLE {
            self.idle = HALF_CLOSED_IDLE;
            self.timer.as_mut().reset(self.last_activity + self.idle);
            // That replaced any probe the timer was set for: a stuck direction sets it again.
            self.looks = 0;
        }
        // A write that moved and waits again is a new wait (a reader still reading): its
        // drain is looked at soon too. At most once per look, not once per write: right after
        // a restart the next write that waits finds `looks` at 1.
        if active && self.stuck() && self.looks > 1 {
            self.looks = 0;
        }
        if self.probed() && self.looks == 0 {
            self.looks = if self.stuck() { 1 } else { PROBE_STEPS };
            self.queued = self.queue_sizes();
            let look = Instant::now() + self.look_every();
            if look < self.timer.deadline() {
                self.timer.as_mut().reset(look);
            }
        }
        Poll::Pending
    }

    fn look_every(&self) -> Duration {
        FIRST_LOOK * u32::from(self.looks)
    }

    /// A direction holds bytes its writer does not take (a peer that stopped reading): its
    /// reader is not read meanwhile, so nothing would notice that reader going.
    fn stuck(&self) -> bool {
        self.up.stuck || self.down.stuck
    }

    /// A direction's reader is read no more, stuck or [over](Direction::over): nothing but
    /// the [probe](Self::probe) would notice it going.
    fn probed(&self) -> bool {
        self.stuck() || self.up.over() || self.down.over()
    }

    /// What the kernel holds for the peer of each stuck direction.
    fn queue_sizes(&self) -> [Option<u32>; 2] {
        [
            self.up.stuck.then(|| self.backend.queued()).flatten(),
            self.down.stuck.then(|| self.client.queued()).flatten(),
        ]
    }

    /// Whether a stuck direction's peer took bytes since the last look: a slow reader is
    /// still reading. The proxy's write waits all the while, and the kernel wakes it only
    /// once a good part of its queue has drained (at the slowest, a sixteenth of the peer's
    /// receive buffer has to be free before its window opens at all): at a slow enough pace,
    /// longer than the idle timeout, with bytes moving the whole time.
    fn peer_took_some(&mut self) -> bool {
        let now = self.queue_sizes();
        let then = std::mem::replace(&mut self.queued, now);
        now.iter()
            .zip(&then)
            .any(|(now, then)| matches!((now, then), (Some(now), Some(then)) if now != then))
    }

    /// Whether the reader of a stuck direction has gone (its reset arrived, unread): then the
    /// tunnel ends now rather than at the idle timeout, and its slot is free. What that reader
    /// sent before it went, still waiting for the stuck writer, is dropped with it, as a reset
    /// drops data in flight.
    ///
    /// A reset a write to that reader already took (the other direction's), or a failure the
    /// reader reported while bytes it sent before wait, is as good as one still held: that
    /// peer is gone either way.
    ///
    /// So for the reader of a direction that is over: a peer that half-closed and then went
    /// (its reset answering what the other side sent it since) leaves nothing to read and
    /// nothing to write to; without the probe the tunnel would wait for the other side's next
    /// byte, or the half-closed wait.
    fn probe(&self) -> Option<CloseReason> {
        let gone = |direction: &Direction, socket: &dyn PeerSocket, peer| {
            let kind = if direction.stuck {
                direction.read_failure().or_else(|| socket.peer_error())
            } else if direction.over() {
                socket.peer_error()
            } else {
                None
            };
            // EPIPE: the reset followed the peer's FIN, still unread behind the stuck bytes:
            // it had closed cleanly (see `ending`).
            kind.map(|kind| match kind {
                io::ErrorKind::BrokenPipe => CloseReason::Closed(peer),
                kind => CloseReason::Error(peer, kind),
            })
        };
        gone(&self.up, &self.client, Peer::Client)
            .or_else(|| gone(&self.down, &self.backend, Peer::Backend))
    }

    /// A write to `to` failed: its connection is broken (typically its reset answering bytes
    /// sent after it closed), so what is left for it is dropped and that direction ends. The
    /// other direction runs on to its own end rather than ending with it: it still delivers
    /// what `to` sent before it went (a backend's last message and close frame must not be
    /// thrown away because the client sent a ping meanwhile), and the same broken connection
    /// soon ends its reads with an EOF or an error.
    ///
    /// A reset (ECONNRESET: an abort, not a close) is also the other direction's news: the
    /// end of stream it then reads from `to` is a stream cut short, so it ends the tunnel as
    /// `to`'s failure rather than being passed on as a half-close (a TLS close_notify would
    /// tell the client its backend closed when it crashed).
    fn write_failed(&mut self, to: Peer, kind: io::ErrorKind) {
        let (this, other) = match to {
            Peer::Backend => (&mut self.up, &mut self.down),
            Peer::Client => (&mut self.down, &mut self.up),
        };
        this.abandon();
        if kind == io::ErrorKind::ConnectionReset {
            other.reader_reset();
        }
        self.write_failure.get_or_insert((to, kind));
    }

    /// How a tunnel whose directions have both finished ended: a failed write counts as the
    /// failure it is, unless the peer it failed on had closed its side cleanly (the write
    /// only met the reset of a connection already closed); else whoever closed first.
    ///
    /// The kernel tells the two apart: a reset that follows the peer's FIN fails the write
    /// with EPIPE (`BrokenPipe`), a reset without one (a crash, an abort, a close with unread
    /// input) with ECONNRESET, after which the peer's stream reads as ended all the same.
    fn ending(&self) -> CloseReason {
        let closed_cleanly = |peer| match peer {
            Peer::Backend => self.down.eof,
            Peer::Client => self.up.eof,
        };
        match (self.write_failure, self.first_eof) {
            (Some((peer, kind)), _)
                if kind == io::ErrorKind::ConnectionReset || !closed_cleanly(peer) =>
            {
                CloseReason::Error(peer, kind)
            }
            (_, Some(first)) => CloseReason::Closed(first),
            // Not reached: a direction ends by its reader's EOF or by a failed write.
            (failure, None) => {
                let (peer, kind) = failure.unwrap_or((Peer::Client, io::ErrorKind::Other));
                CloseReason::Error(peer, kind)
            }
        }
    }

    /// Re-armed only when it fires: traffic costs an `Instant::now()`, not a timer reset.
    /// While a direction is stuck or [over](Direction::over) it also fires every [`PROBE`],
    /// to [`Self::probe`], and for a stuck one to see whether its peer
    /// [took some](Self::peer_took_some) of what waits for it: first after [`FIRST_LOOK`],
    /// then at doubling steps up to [`PROBE`], from the first again once the write moved.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.stuck() && self.peer_took_some() {
                self.last_activity = now;
            }
            let deadline = self.last_activity + self.idle;
            if deadline <= now {
                return Poll::Ready(match self.up.finished || self.down.finished {
                    true => CloseReason::HalfClosedTimeout,
                    false => CloseReason::IdleTimeout,
                });
            }
            self.looks = match self.probed() {
                false => 0,
                true => self.looks.saturating_mul(2).clamp(1, PROBE_STEPS),
            };
            if self.looks == 0 {
                self.timer.as_mut().reset(deadline);
                continue;
            }
            if let Some(gone) = self.probe() {
                return Poll::Ready(gone);
            }
            let look = now + self.look_every();
            self.timer.as_mut().reset(deadline.min(look));
        }
        Poll::Pending
    }
}

impl<C, B> Future for Splice<C, B>
where
    C: AsyncBufRead + AsyncWrite + PeerSocket + Unpin,
    B: AsyncRead + AsyncWrite + PeerSocket + Unpin,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let reason = match this.poll_relay(cx) {
            Poll::Ready(reason) => reason,
            Poll::Pending if this.drain.poll_started(&mut this.wakeup, cx) => CloseReason::Shutdown,
            Poll::Pending if this.recheck.as_mut().is_some_and(|w| w.poll_refused(cx)) => {
                CloseReason::ClientCertificateRefused
            }
            Poll::Pending => ready!(this.poll_idle(cx)),
        };
        this.report();
        Poll::Ready(Outcome {
            client_to_backend: this.up.bytes,
            backend_to_client: this.down.bytes,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_peers::{without_early, ResetAfter};
    use super::*;
    use crate::trickle::{finishes, pattern, piece_size, send_and_take, Trickle};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadBuf};

    /// A peer for the probe: reads come from a pipe the test feeds, writes are taken, never
    /// taken (a peer that stopped reading), or fail; what the kernel says of the connection
    /// is whatever the test sets.
    struct Scripted {
        read: DuplexStream,
        write: Write,
        kernel: Arc<Kernel>,
    }

    /// What the kernel says of a scripted peer's connection.
    #[derive(Default)]
    struct Kernel {
        error: std::sync::Mutex<Option<io::ErrorKind>>,
        queued: std::sync::Mutex<Option<u32>>,
        /// For [`Write::Room`]: bytes it may take, and the write waiting for room.
        room: std::sync::Mutex<(usize, Option<std::task::Waker>)>,
    }

    impl Kernel {
        fn fails(&self, kind: io::ErrorKind) {
            *self.error.lock().unwrap() = Some(kind);
        }

        fn holds(&self, bytes: u32) {
            *self.queued.lock().unwrap() = Some(bytes);
        }

        fn makes_room(&self, bytes: usize) {
            let mut room = self.room.lock().unwrap();
            room.0 += bytes;
            if let Some(waker) = room.1.take() {
                waker.wake();
            }
        }

        fn take_room(&self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<usize>> {
            let mut room = self.room.lock().unwrap();
            if room.0 == 0 {
                room.1 = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let taken = room.0.min(wanted);
            room.0 -= taken;
            Poll::Ready(Ok(taken))
        }
    }

    #[derive(Clone, Copy)]
    enum Write {
        Stuck,
        /// Takes what room the test makes (a reader reading), and is woken when it does.
        Room,
        /// Takes bytes and its close.
        Takes,
        /// Takes bytes, never its close (a TLS peer not reading the close_notify).
        StuckOnClose,
        Fails(io::ErrorKind),
    }

    impl Scripted {
        /// The peer, the test's end of its pipe, and what its kernel says.
        fn new(write: Write) -> (Scripted, DuplexStream, Arc<Kernel>) {
            let (read, feed) = duplex(1 << 16);
            let kernel = Arc::new(Kernel::default());
            let peer = Scripted {
                read,
                write,
                kernel: kernel.clone(),
            };
            (peer, feed, kernel)
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.read).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.write {
                Write::Room => self.kernel.take_room(cx, data.len()),
                // Never woken: only the tunnel's timer polls it again.
                Write::Stuck => Poll::Pending,
                Write::StuckOnClose | Write::Takes => Poll::Ready(Ok(data.len())),
                Write::Fails(kind) => Poll::Ready(Err(kind.into())),
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.write {
                Write::StuckOnClose => Poll::Pending,
                _ => Poll::Ready(Ok(())),
            }
        }
    }

    impl PeerSocket for Scripted {
        fn peer_error(&self) -> Option<io::ErrorKind> {
            *self.kernel.error.lock().unwrap()
        }

        fn queued(&self) -> Option<u32> {
            *self.kernel.queued.lock().unwrap()
        }
    }

    /// A relay whose client sent bytes its backend, which stopped reading, does not take;
    /// writes to the client `client_write`, the backend having sent `backend_sent`.
    struct StuckUp {
        relay: tokio::task::JoinHandle<Outcome>,
        /// The client's kernel, whose error is for the probe to find.
        client: Arc<Kernel>,
        /// The backend's kernel, whose queue the looks read.
        backend: Arc<Kernel>,
        /// The backend's end of its pipe: dropping it is the backend's FIN.
        backend_feed: DuplexStream,
        _client_feed: DuplexStream,
        started: Instant,
    }

    impl StuckUp {
        async fn start(client_write: Write, backend_sent: &[u8]) -> StuckUp {
            Self::idling(client_write, backend_sent, Duration::from_secs(300)).await
        }

        async fn idling(client_write: Write, backend_sent: &[u8], idle: Duration) -> StuckUp {
            let (client, mut client_feed, client_kernel) = Scripted::new(client_write);
            let (backend, mut backend_feed, backend_kernel) = Scripted::new(Write::Stuck);
            backend_kernel.holds(64 * 1024);
            client_feed.write_all(b"never taken").await.unwrap();
            backend_feed.write_all(backend_sent).await.unwrap();
            let drain = Arc::new(Drain::default());
            StuckUp {
                relay: tokio::spawn(async move {
                    without_early(BufReader::new(client), backend, idle, &drain).await
                }),
                client: client_kernel,
                backend: backend_kernel,
                backend_feed,
                _client_feed: client_feed,
                started: Instant::now(),
            }
        }

        fn client_fails(&self, kind: io::ErrorKind) {
            self.client.fails(kind);
        }
    }

    /// A client that sent bytes a backend that stopped reading does not take, then reset:
    /// found by the probe after [`PROBE`], not at the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_directions_reader_that_reset_is_found_by_the_probe() {
        let stuck = StuckUp::start(Write::Stuck, b"").await;
        tokio::time::sleep(PROBE * 3 + PROBE / 2).await;
        assert!(
            !stuck.relay.is_finished(),
            "a slow reader is not cut by the probe"
        );
        stuck.client_fails(io::ErrorKind::ConnectionReset);
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(
            outcome.reason,
            CloseReason::Error(Peer::Client, io::ErrorKind::ConnectionReset)
        );
        let found_after = stuck.started.elapsed() - (PROBE * 3 + PROBE / 2);
        assert!(
            found_after <= PROBE,
            "found {found_after:?} after the reset"
        );
    }

    /// A backend whose kernel goes on taking what was in flight as the proxy's write begins
    /// to wait (its receive window not yet closed), and whose reader had stopped: the tunnel
    /// is idle from that drain, seen at the first look, not from a look 2 s later.
    #[tokio::test(start_paused = true)]
    async fn a_peers_kernel_taking_what_was_in_flight_is_activity_seen_soon() {
        let idle = Duration::from_secs(5);
        let stuck = StuckUp::idling(Write::Stuck, b"", idle).await;
        tokio::task::yield_now().await;
        stuck.backend.holds(16 * 1024);
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        assert_eq!(stuck.started.elapsed(), FIRST_LOOK + idle);
    }

    /// The same, the peer's kernel taking what was in flight only after the first look (a busy
    /// machine): seen at the next look, 200 ms later, not at one 2 s later.
    #[tokio::test(start_paused = true)]
    async fn a_drain_that_begins_after_the_first_look_is_seen_at_the_next() {
        let idle = Duration::from_secs(5);
        let stuck = StuckUp::idling(Write::Stuck, b"", idle).await;
        tokio::time::sleep(FIRST_LOOK + FIRST_LOOK / 2).await;
        stuck.backend.holds(16 * 1024);
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        assert_eq!(stuck.started.elapsed(), FIRST_LOOK * 3 + idle);
    }

    /// A drain lasting about a second is looked at in doubling steps: the looks at 0.1, 0.3,
    /// 0.7 and 1.5 s see it move, the one at 3.1 s does not.
    #[tokio::test(start_paused = true)]
    async fn a_drain_that_lasts_is_looked_at_in_doubling_steps() {
        let idle = Duration::from_secs(5);
        let stuck = StuckUp::idling(Write::Stuck, b"", idle).await;
        tokio::task::yield_now().await;
        for left in (1..=8u32).rev() {
            stuck.backend.holds(left * 1024);
            tokio::time::sleep(Duration::from_millis(130)).await;
        }
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        assert_eq!(stuck.started.elapsed(), FIRST_LOOK * 15 + idle);
    }

    /// A reader that had been reading, the proxy's write going out and waiting again each
    /// time, then stopped: its kernel's drain behind the last write is looked at soon after
    /// that write, not at a look the earlier waits had grown to.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_read_then_stopped_is_idle_from_its_last_drain() {
        let (client, mut client_feed, _) = Scripted::new(Write::Takes);
        let (backend, _backend_feed, kernel) = Scripted::new(Write::Room);
        kernel.holds(60_000);
        client_feed.write_all(&[7u8; 60_000]).await.unwrap();
        let drain = Arc::new(Drain::default());
        let idle = Duration::from_secs(5);
        let started = Instant::now();
        let relay = tokio::spawn(async move {
            without_early(BufReader::new(client), backend, idle, &drain).await
        });
        // 100 bytes taken every 0.5 s, a last time at 4.2 s; its kernel drains 20 ms after.
        let takes = (1..=8).map(|i| 500 * i).chain([4200]);
        for (i, at) in (0u32..).zip(takes) {
            tokio::time::sleep_until(started + Duration::from_millis(at)).await;
            assert!(!relay.is_finished(), "cut while reading");
            kernel.makes_room(100);
            tokio::time::sleep(Duration::from_millis(20)).await;
            kernel.holds(59_900 - 100 * i);
        }
        let last_drain = started.elapsed();
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        let late = started.elapsed() - last_drain - idle;
        assert!(late <= FIRST_LOOK, "idled out {late:?} late");
    }

    /// A reader taking a little now and then, more slowly than any look: each take is the
    /// tunnel's activity, and it outlives the idle timeout while it reads; once it stops,
    /// the tunnel idles out one idle timeout after the last look that saw it take some.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_active_at_each_look_that_sees_it_take_some() {
        let idle = Duration::from_secs(5);
        let stuck = StuckUp::idling(Write::Stuck, b"", idle).await;
        for left in (1..=4u32).rev() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(!stuck.relay.is_finished(), "cut while reading");
            stuck.backend.holds(left * 1024);
        }
        let last_take = stuck.started.elapsed();
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        let seen_within = stuck.started.elapsed() - idle - last_take;
        assert!(
            seen_within <= PROBE,
            "idled out {:?} after the last take",
            stuck.started.elapsed() - last_take
        );
    }

    /// A reader whose reset followed its FIN (EPIPE) had closed cleanly: found by the probe,
    /// and said so.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_directions_reader_that_closed_then_reset_closed_cleanly() {
        let stuck = StuckUp::start(Write::Stuck, b"").await;
        stuck.client_fails(io::ErrorKind::BrokenPipe);
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::Closed(Peer::Client));
    }

    /// The other side half-closing while the probe waits does not switch the probe off.
    #[tokio::test(start_paused = true)]
    async fn a_half_close_while_stuck_keeps_the_probe_going() {
        let stuck = StuckUp::start(Write::Stuck, b"").await;
        tokio::time::sleep(PROBE / 2).await;
        stuck.client_fails(io::ErrorKind::ConnectionReset);
        drop(stuck.backend_feed);
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(
            outcome.reason,
            CloseReason::Error(Peer::Client, io::ErrorKind::ConnectionReset)
        );
        assert!(
            stuck.started.elapsed() <= PROBE * 2,
            "{:?}",
            stuck.started.elapsed()
        );
    }

    /// Both sides stopped reading; the client resets, and the write to it takes the reset the
    /// probe would have found: still found, not left to the half-closed wait.
    #[tokio::test(start_paused = true)]
    async fn a_reset_a_write_already_took_is_found_by_the_probe() {
        let reset = Write::Fails(io::ErrorKind::ConnectionReset);
        let stuck = StuckUp::start(reset, b"meets the reset").await;
        let outcome = stuck.relay.await.unwrap();
        assert_eq!(
            outcome.reason,
            CloseReason::Error(Peer::Client, io::ErrorKind::ConnectionReset)
        );
        assert!(
            stuck.started.elapsed() <= PROBE,
            "{:?}",
            stuck.started.elapsed()
        );
    }

    /// A peer that half-closed and then went (its reset answering what the other side sent
    /// it since: EPIPE after a FIN, ECONNRESET without one): found by the probe, not left to
    /// the half-closed wait or to the other side's next byte.
    #[tokio::test(start_paused = true)]
    async fn a_half_closed_peer_that_went_is_found_by_the_probe() {
        for (gone, kind, reason) in [
            (
                Peer::Backend,
                io::ErrorKind::BrokenPipe,
                CloseReason::Closed(Peer::Backend),
            ),
            (
                Peer::Client,
                io::ErrorKind::ConnectionReset,
                CloseReason::Error(Peer::Client, io::ErrorKind::ConnectionReset),
            ),
        ] {
            let (client, client_feed, client_kernel) = Scripted::new(Write::Takes);
            let (backend, backend_feed, backend_kernel) = Scripted::new(Write::Takes);
            // The peer that goes half-closes first; the other's pipe stays open.
            let (kernel, _open, half_closes) = match gone {
                Peer::Backend => (backend_kernel, client_feed, backend_feed),
                Peer::Client => (client_kernel, backend_feed, client_feed),
            };
            drop(half_closes);
            let drain = Arc::new(Drain::default());
            let idle = Duration::from_secs(300);
            let started = Instant::now();
            let relay = tokio::spawn(async move {
                without_early(BufReader::new(client), backend, idle, &drain).await
            });
            tokio::time::sleep(PROBE * 3 + PROBE / 2).await;
            assert!(
                !relay.is_finished(),
                "a half-closed peer still there is waited for"
            );
            kernel.fails(kind);
            let outcome = relay.await.unwrap();
            assert_eq!(outcome.reason, reason);
            assert_eq!(started.elapsed(), PROBE * 4);
        }
    }

    #[tokio::test]
    async fn a_backend_gone_after_its_last_words_still_gets_them_delivered() {
        // The backend sent 1 MiB and closed; the client, which has not read it yet, sends a
        // ping that the backend's reset refuses. The 1 MiB still reaches the client.
        let last_words: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let backend = ResetAfter::closed(&last_words);
        let (client, mut client_peer) = duplex(64 * 1024);
        let drain = Arc::new(Drain::default());
        client_peer.write_all(b"ping").await.unwrap();
        let relay = tokio::spawn(async move {
            let idle = Duration::from_secs(60);
            without_early(BufReader::new(client), backend, idle, &drain).await
        });
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert!(
            got == last_words,
            "{} of {} bytes",
            got.len(),
            last_words.len()
        );
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::Closed(Peer::Backend));
        assert_eq!(outcome.backend_to_client, 1 << 20);
        assert_eq!(outcome.client_to_backend, 0);
    }

    #[tokio::test]
    async fn writes_failing_both_ways_end_the_tunnel_with_the_failure() {
        let backend = ResetAfter::closed(b"late");
        let client = BufReader::new(ResetAfter::closed(b"ping"));
        let drain = Arc::new(Drain::default());
        let idle = Duration::from_secs(60);
        let outcome = without_early(client, backend, idle, &drain).await;
        // The first failure: the write to the backend, which never closed cleanly.
        assert_eq!(
            outcome.reason,
            CloseReason::Error(Peer::Backend, io::ErrorKind::BrokenPipe)
        );
    }

    /// A backend that aborts (a crash: a reset with no FIN before it) while the client sends
    /// is a backend error, although its stream then reads as ended.
    #[tokio::test]
    async fn a_reset_without_a_close_is_an_error_whatever_is_read_after() {
        let (client, mut client_peer) = duplex(1 << 16);
        let drain = Arc::new(Drain::default());
        let relay = tokio::spawn(async move {
            let idle = Duration::from_secs(60);
            let backend = ResetAfter::aborted(b"partial");
            without_early(BufReader::new(client), backend, idle, &drain).await
        });
        client_peer.write_all(b"upload").await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"partial", "what it sent before it went is delivered");
        assert_eq!(
            relay.await.unwrap().reason,
            CloseReason::Error(Peer::Backend, io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_is_closed_after_the_idle_timeout() {
        let (client, _client_peer) = duplex(64);
        let (backend, _backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        let started = Instant::now();
        let outcome = without_early(
            BufReader::new(client),
            backend,
            Duration::from_secs(300),
            &drain,
        )
        .await;
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_half_closed_tunnel_is_closed_after_thirty_seconds() {
        let (client, mut client_peer) = duplex(64);
        let (backend, _backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        // The client half-closes and then neither side sends anything.
        client_peer.shutdown().await.unwrap();
        let started = Instant::now();
        let idle = Duration::from_secs(300);
        let outcome = without_early(BufReader::new(client), backend, idle, &drain).await;
        assert_eq!(outcome.reason, CloseReason::HalfClosedTimeout);
        assert_eq!(started.elapsed().as_secs(), HALF_CLOSED_IDLE.as_secs());
    }

    /// A backend that closed, to a client that takes its last bytes but not (yet) the close:
    /// it may be a slow link still draining them, so the idle timeout applies, not the short
    /// half-closed wait.
    #[tokio::test(start_paused = true)]
    async fn a_close_the_client_has_not_taken_waits_for_the_idle_timeout() {
        let (client, _feed, _) = Scripted::new(Write::StuckOnClose);
        let (backend, mut backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        backend_peer.write_all(b"last words").await.unwrap();
        backend_peer.shutdown().await.unwrap();
        let started = Instant::now();
        let idle = Duration::from_secs(300);
        let outcome = without_early(BufReader::new(client), backend, idle, &drain).await;
        assert_eq!(outcome.reason, CloseReason::IdleTimeout);
        assert_eq!(started.elapsed(), idle);
        assert_eq!(
            outcome.backend_to_client, 10,
            "the last words were passed on"
        );
    }

    /// The wait after a half-close counts from the half-close: on a tunnel quiet for longer
    /// than that wait, the other side still gets to answer.
    #[tokio::test(start_paused = true)]
    async fn a_half_close_after_a_long_quiet_still_lets_the_other_side_answer() {
        let (client, mut client_peer) = duplex(64);
        let (backend, mut backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        let idle = Duration::from_secs(300);
        let relay = tokio::spawn(async move {
            without_early(BufReader::new(client), backend, idle, &drain).await
        });
        tokio::time::sleep(HALF_CLOSED_IDLE * 2).await;
        client_peer.shutdown().await.unwrap();
        let mut eof = [0u8; 1];
        assert_eq!(
            backend_peer.read(&mut eof).await.unwrap(),
            0,
            "half-close passed on"
        );
        backend_peer.write_all(b"last words").await.unwrap();
        backend_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(
            relay.await.unwrap().reason,
            CloseReason::Closed(Peer::Client)
        );
    }

    #[tokio::test]
    async fn drain_ends_the_tunnel() {
        let (client, _c) = duplex(64);
        let (backend, _b) = duplex(64);
        let drain = Arc::new(Drain::default());
        drain.start();
        let outcome = without_early(
            BufReader::new(client),
            backend,
            Duration::from_secs(300),
            &drain,
        )
        .await;
        assert_eq!(outcome.reason, CloseReason::Shutdown);
    }

    /// The drain started while the tunnel waits on both sides: its wake-up must reach it.
    #[tokio::test(start_paused = true)]
    async fn drain_wakes_a_waiting_tunnel() {
        let (client, mut client_peer) = duplex(64);
        let (backend, mut backend_peer) = duplex(64);
        let drain = Arc::new(Drain::default());
        let relay = tokio::spawn({
            let drain = drain.clone();
            async move {
                let idle = Duration::from_secs(300);
                without_early(BufReader::new(client), backend, idle, &drain).await
            }
        });
        // A byte through proves the tunnel runs and is parked on its reads again.
        client_peer.write_all(b"x").await.unwrap();
        let mut at_backend = [0u8; 1];
        backend_peer.read_exact(&mut at_backend).await.unwrap();
        assert_eq!(&at_backend, b"x");
        tokio::task::yield_now().await;
        drain.start();
        let started = Instant::now();
        let outcome = relay.await.unwrap();
        assert_eq!(outcome.reason, CloseReason::Shutdown);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "ended at once, not by a timer"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever each side sends (early bytes behind its handshake included), however the
        /// pipes split it (any room, reads and writes of any size on the relay's side), and
        /// whichever side ends first: each side gets exactly the other's bytes, in order, then
        /// the end of the stream; the relay ends as closed, having counted what it moved.
        #[test]
        fn bytes_pass_both_ways_unchanged_however_they_are_split(
            (up, down) in (0usize..200_000, 0usize..200_000),
            (early_up, early_down) in (0usize..100, 0usize..100),
            (client_most, backend_most) in (piece_size(), piece_size()),
            (client_room, backend_room) in (1usize..70_000, 1usize..70_000),
        ) {
            let exchange = async move {
                let (client, client_peer) = duplex(client_room);
                let (backend, backend_peer) = duplex(backend_room);
                let (early_up, early_down) = (pattern(early_up, 1), pattern(early_down, 2));
                let (up, down) = (pattern(up, 3), pattern(down, 4));
                let drain = Arc::new(Drain::default());
                let relay = Splice::new(
                    BufReader::new(Trickle { io: client, most: client_most }),
                    Bytes::from(early_up.clone()),
                    Trickle { io: backend, most: backend_most },
                    Bytes::from(early_down.clone()),
                    Duration::from_secs(600),
                    &drain,
                );
                let (outcome, got_down, got_up) = tokio::join!(
                    relay,
                    send_and_take(client_peer, &up),
                    send_and_take(backend_peer, &down),
                );
                assert!(got_up == [early_up, up].concat(), "client → backend changed");
                assert!(got_down == [early_down, down].concat(), "backend → client changed");
                assert!(matches!(outcome.reason, CloseReason::Closed(_)), "{:?}", outcome.reason);
                assert_eq!(outcome.client_to_backend, got_up.len() as u64);
                assert_eq!(outcome.backend_to_client, got_down.len() as u64);
            };
            // A stalled relay (a lost wake-up) fails the case rather than hanging the suite.
            proptest::prop_assert!(finishes(exchange), "the relay stalled");
        }
    }
}
