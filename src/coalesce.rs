//! Relaying small messages in batches while busy: a runtime thread that spent most of its last
//! window (a millisecond or more) working, on many small reads, waits `proxy.coalesce` before
//! it sleeps for new events. What arrives meanwhile is then read in fewer reads and relayed in
//! fewer writes, and the peers writing to wsgate find it awake instead of having to wake it,
//! which is what a busy proxy's messages cost most on loopback and on a shared machine: the
//! interrupt coalescing of network cards, in the proxy. A thread idle or lightly loaded, busy
//! with handshakes beside a trickle of messages, or relaying large reads (a bulk transfer,
//! which gains nothing from it), never waits, so a message's latency is untouched there;
//! under load a message may wait up to the pause.
//!
//! The runtime's park hooks ([`install`]) measure each thread's busy share; the relay counts
//! its reads (`read`); the config in force sets the pause (`set_pause`), process-wide: the
//! last server started or reloaded in a process wins; the metrics show how many were taken
//! (`pauses`). Only a runtime built with [`install`] pauses: the `wsgate` binary's when it has
//! one worker thread. With several, the events a pausing thread would gather are taken up by
//! another thread waiting for them, so nothing is batched and the pause only costs (measured:
//! 5 % more CPU per message on two workers). A server run on another runtime, as the tests
//! run it, relays every message at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a thread's work is summed over before it decides whether to pause.
const WINDOW: Duration = Duration::from_millis(1);

/// Reads of this many bytes and more, on average, are not small: a bulk transfer reads whole
/// TLS records (16 KiB), and a pause would only delay them.
const SMALL_READ: u64 = 2048;

/// Relay reads a window must hold per millisecond for a pause to be worth taking: 40,000 a
/// second, at which a pause of 50 µs gathers two or more. The floor does not depend on the
/// pause: a thread busy with handshakes beside a trickle of messages must not pause, however
/// long the pause is set.
const READS_PER_MS: u128 = 40;

/// The pause of the config in force, in nanoseconds; zero: never pause.
static PAUSE_NS: AtomicU64 = AtomicU64::new(0);

/// Pauses taken, by every thread, since start.
static PAUSES: AtomicU64 = AtomicU64::new(0);

/// Puts the config's pause in force (at start and at each reload).
pub(crate) fn set_pause(pause: Duration) {
    let ns = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
    PAUSE_NS.store(ns, Ordering::Relaxed);
}

/// Pauses taken since start, for the metrics.
pub(crate) fn pauses() -> u64 {
    PAUSES.load(Ordering::Relaxed)
}

/// Adds the hooks that measure and pause to the runtime `builder` makes: for a runtime of one
/// worker thread (see the module's doc).
pub fn install(builder: &mut tokio::runtime::Builder) {
    timer_slack::remember();
    builder
        .on_thread_start(timer_slack::restore)
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark);
}

/// The relay read `bytes` on this thread.
pub(crate) fn read(bytes: usize) {
    // `try_with`: never a panic on a thread being torn down.
    let _ = THREAD.try_with(|t| {
        let mut state = t.get();
        state.window.reads += 1;
        state.window.bytes += bytes as u64;
        t.set(state);
    });
}

/// One thread's work over the current window.
#[derive(Clone, Copy, Default, Debug)]
struct Window {
    /// Time spent working (between an unpark and the next park; a pause is not work).
    busy: Duration,
    reads: u64,
    bytes: u64,
}

impl Window {
    /// Whether a thread whose last window, `elapsed` long, held this work should pause
    /// before each sleep of the next: busy at least half the time, on small reads coming
    /// fast enough that a pause gathers some.
    fn worth_pausing(&self, elapsed: Duration) -> bool {
        let busy = self.busy * 2 >= elapsed;
        let small = self.bytes < self.reads.saturating_mul(SMALL_READ);
        let fast = u128::from(self.reads) * 1_000_000 >= READS_PER_MS * elapsed.as_nanos();
        busy && small && fast
    }
}

/// A runtime thread's measure of itself.
#[derive(Clone, Copy, Default)]
struct Thread {
    /// When it last woke up; `None` before its first park.
    unparked: Option<Instant>,
    window_start: Option<Instant>,
    window: Window,
    /// What the last whole window decided.
    pausing: bool,
    /// Its timer slack is lowered (see [`timer_slack`]).
    precise: bool,
}

impl Thread {
    /// The thread is about to sleep at `now`: closes the window if it is a millisecond old,
    /// and says whether to wait `pause` first.
    fn pause_now(&mut self, now: Instant, pause: Duration) -> Option<Duration> {
        if let Some(unparked) = self.unparked {
            self.window.busy += now.saturating_duration_since(unparked);
        }
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            self.pausing = self.window.worth_pausing(elapsed);
            (self.window, self.window_start) = (Window::default(), Some(now));
        }
        let pausing = self.pausing && !pause.is_zero();
        // Precise timers only while pausing: the usual slack back after, so that the
        // thread's other sleeps are as before.
        if pausing != self.precise {
            self.precise = pausing;
            match pausing {
                true => timer_slack::lower(),
                false => timer_slack::restore(),
            }
        }
        pausing.then_some(pause)
    }

    /// The thread woke up at `now`.
    fn unparked(&mut self, now: Instant) {
        self.unparked = Some(now);
        self.window_start.get_or_insert(now);
    }
}

thread_local! {
    static THREAD: Cell<Thread> = Cell::new(Thread::default());
}

fn before_park() {
    let pause = Duration::from_nanos(PAUSE_NS.load(Ordering::Relaxed));
    let pause = THREAD.try_with(|t| {
        let mut state = t.get();
        let pause = state.pause_now(Instant::now(), pause);
        t.set(state);
        pause
    });
    if let Ok(Some(pause)) = pause {
        PAUSES.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(pause);
    }
}

fn after_unpark() {
    let _ = THREAD.try_with(|t| {
        let mut state = t.get();
        state.unparked(Instant::now());
        t.set(state);
    });
}

/// The timer slack of the runtime's threads: lowered from Linux's default 50 µs to 1 µs while a
/// thread pauses (a pause of tens of microseconds would otherwise last twice as long or
/// more), and the process's own put back after. Put back as a value, not by asking for the
/// thread's default: a thread takes the slack of the one that started it as its default, so a
/// thread started by a pausing one (the blocking pool's, for a reload or a name lookup) would
/// keep 1 µs for its life.
#[cfg(target_os = "linux")]
mod timer_slack {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The slack the process started with, in nanoseconds; zero before [`remember`].
    static USUAL: AtomicUsize = AtomicUsize::new(0);

    /// Notes the calling thread's slack as the one to put back.
    pub(super) fn remember() {
        // SAFETY: PR_GET_TIMERSLACK reads the calling thread's slack; it takes no pointer.
        let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
        if let Ok(slack) = usize::try_from(slack) {
            USUAL.store(slack, Ordering::Relaxed);
        }
    }

    /// Lowers the calling thread's slack to 1 µs, for a pause to last what it says.
    pub(super) fn lower() {
        set(1_000);
    }

    /// Puts the remembered slack back on the calling thread (nothing if none was noted).
    pub(super) fn restore() {
        match USUAL.load(Ordering::Relaxed) {
            0 => {}
            usual => set(usual),
        }
    }

    /// `ns`: a `usize`, as wide as the kernel's `unsigned long` on every Linux target.
    fn set(ns: usize) {
        // SAFETY: PR_SET_TIMERSLACK takes a plain number and changes only the calling
        // thread's slack; a failure (an old kernel) leaves it as it was, only less precise.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
        }
    }
}

/// Elsewhere the timer slack is left as it is: a pause is only less precise.
#[cfg(not(target_os = "linux"))]
mod timer_slack {
    pub(super) fn remember() {}
    pub(super) fn lower() {}
    pub(super) fn restore() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_micros(50);

    fn window(busy_us: u64, reads: u64, bytes_each: u64) -> Window {
        Window {
            busy: Duration::from_micros(busy_us),
            reads,
            bytes: reads * bytes_each,
        }
    }

    #[test]
    fn a_busy_thread_on_many_small_reads_pauses() {
        // 1,000 tunnels echoing 64-byte messages: 200 reads in a millisecond, 80 % busy.
        assert!(window(800, 200, 90).worth_pausing(WINDOW));
    }

    #[test]
    fn a_lightly_loaded_thread_never_pauses() {
        // 5,000 messages a second: a few reads a millisecond, a fifth of it busy.
        assert!(!window(200, 10, 90).worth_pausing(WINDOW));
        // Busy, but with few reads (handshakes, beside a trickle of messages): a pause would
        // gather next to nothing, and hold up the handshakes.
        assert!(!window(950, 20, 90).worth_pausing(WINDOW));
    }

    #[test]
    fn a_bulk_transfer_never_pauses() {
        assert!(!window(900, 60, 16 * 1024).worth_pausing(WINDOW));
    }

    /// A thread's windows as the hooks keep them, at instants given, not read from a clock.
    #[test]
    fn a_window_decides_for_the_next_and_an_idle_gap_ends_the_pausing() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut thread = Thread::default();
        thread.unparked(at(0));
        thread.window.reads = 100;
        thread.window.bytes = 6_400;
        // A millisecond of work on small reads: from this park on, it pauses.
        assert_eq!(thread.pause_now(at(1_000), PAUSE), Some(PAUSE));
        // Off in the config: no pause, whatever the window said.
        thread.unparked(at(1_100));
        assert_eq!(thread.pause_now(at(1_200), Duration::ZERO), None);
        // Then a long idle gap: the window spanning it was not busy, so no pause after it.
        thread.unparked(at(50_000));
        assert_eq!(thread.pause_now(at(50_010), PAUSE), None);
    }

    /// The calling thread's timer slack, in nanoseconds.
    #[cfg(target_os = "linux")]
    fn slack() -> i32 {
        // SAFETY: reads the calling thread's slack; no pointer.
        unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) }
    }

    /// Lowered while pausing, the usual slack back after, also on a thread started meanwhile
    /// (which takes its starter's slack as its own default).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_timer_slack_is_lowered_only_while_pausing() {
        std::thread::spawn(|| {
            timer_slack::remember();
            let usual = slack();
            let t0 = Instant::now();
            let at = |us: u64| t0 + Duration::from_micros(us);
            let mut thread = Thread::default();
            thread.unparked(at(0));
            (thread.window.reads, thread.window.bytes) = (100, 6_400);
            assert_eq!(thread.pause_now(at(1_000), PAUSE), Some(PAUSE));
            assert_eq!(slack(), 1_000);
            // A thread started now: its own default is 1 µs, put back to the usual by the
            // runtime's start hook.
            let started = std::thread::spawn(|| {
                let inherited = slack();
                timer_slack::restore();
                (inherited, slack())
            });
            assert_eq!(started.join().unwrap(), (1_000, usual));
            // An idle gap ends the pausing, and the usual slack is back.
            thread.unparked(at(50_000));
            assert_eq!(thread.pause_now(at(50_010), PAUSE), None);
            assert_eq!(slack(), usual);
        })
        .join()
        .unwrap();
    }

    /// The start hook [`install`] adds puts the usual slack on every thread the runtime starts,
    /// the blocking pool's among them, also when the thread starting it is pausing.
    #[cfg(target_os = "linux")]
    #[test]
    fn threads_started_while_pausing_get_the_usual_slack() {
        std::thread::spawn(|| {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            install(&mut builder);
            let usual = slack();
            let runtime = builder.build().unwrap();
            let started = runtime.block_on(async {
                timer_slack::lower();
                tokio::task::spawn_blocking(slack).await.unwrap()
            });
            assert_eq!(started, usual);
            assert_ne!(usual, 1_000, "the usual slack is not the lowered one");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pause_is_taken_and_counted() {
        let before = pauses();
        THREAD.with(|t| {
            let mut state = t.get();
            state.pausing = true;
            state.unparked(Instant::now());
            t.set(state);
        });
        set_pause(Duration::from_micros(1));
        before_park();
        set_pause(Duration::ZERO);
        assert!(pauses() > before);
    }
}
