//! Relaying small messages in batches while busy: a runtime thread that spent most of its last
//! millisecond working, on many small reads, waits `proxy.coalesce` before it sleeps for new
//! events. What arrives meanwhile is then read in fewer reads and relayed in fewer writes, and
//! the peers writing to wsgate find it awake instead of having to wake it, which is what a
//! busy proxy's messages cost most on loopback and on a shared machine: the interrupt
//! coalescing of network cards, in the proxy. A thread idle or lightly loaded, or relaying
//! large reads (a bulk transfer, which gains nothing from it), never waits, so a message's
//! latency is untouched there; under load a message may wait up to the pause.
//!
//! The runtime's park hooks ([`install`]) measure each thread's busy share; the relay counts
//! its reads ([`read`]); the config in force sets the pause ([`set_pause`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a thread's work is summed over before it decides whether to pause.
const WINDOW: Duration = Duration::from_millis(1);

/// Reads of this many bytes and more, on average, are not small: a bulk transfer reads whole
/// TLS records (16 KiB), and a pause would only delay them.
const SMALL_READ: u64 = 2048;

/// A pause is worth taking when at least this many reads are expected to arrive during it,
/// at the window's rate: fewer, and it only adds a sleep to what was there anyway.
const EXPECTED_DURING_PAUSE: u128 = 2;

/// The pause of the config in force, in nanoseconds; zero: never pause.
static PAUSE_NS: AtomicU64 = AtomicU64::new(0);

/// Puts the config's pause in force (at start and at each reload).
pub(crate) fn set_pause(pause: Duration) {
    let ns = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
    PAUSE_NS.store(ns, Ordering::Relaxed);
}

/// Adds the hooks that measure and pause to the runtime `builder` makes.
pub fn install(builder: &mut tokio::runtime::Builder) {
    builder
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
    /// Time spent working (between an unpark and the next park).
    busy: Duration,
    reads: u64,
    bytes: u64,
}

impl Window {
    /// Whether a thread whose last window, `elapsed` long, held this work should pause for
    /// `pause` before each sleep of the next: busy at least half the time, on small reads
    /// coming fast enough that a pause gathers some.
    fn worth_pausing(&self, elapsed: Duration, pause: Duration) -> bool {
        let busy = self.busy * 2 >= elapsed;
        let small = self.bytes < self.reads.saturating_mul(SMALL_READ);
        let gathers =
            u128::from(self.reads) * pause.as_nanos() >= EXPECTED_DURING_PAUSE * elapsed.as_nanos();
        !pause.is_zero() && busy && small && gathers
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
    /// Its timer slack has been lowered (see [`pause`]).
    precise: bool,
}

thread_local! {
    static THREAD: Cell<Thread> = Cell::new(Thread::default());
}

fn before_park() {
    let Ok(mut state) = THREAD.try_with(Cell::get) else {
        return;
    };
    let now = Instant::now();
    if let Some(unparked) = state.unparked {
        state.window.busy += now.saturating_duration_since(unparked);
    }
    let start = *state.window_start.get_or_insert(now);
    let pause = Duration::from_nanos(PAUSE_NS.load(Ordering::Relaxed));
    let elapsed = now.saturating_duration_since(start);
    if elapsed >= WINDOW {
        state.pausing = state.window.worth_pausing(elapsed, pause);
        (state.window, state.window_start) = (Window::default(), Some(now));
    }
    let pausing = state.pausing && !pause.is_zero();
    if pausing && !state.precise {
        state.precise = true;
        precise_timers();
    }
    let _ = THREAD.try_with(|t| t.set(state));
    if pausing {
        std::thread::sleep(pause);
    }
}

fn after_unpark() {
    let _ = THREAD.try_with(|t| {
        let mut state = t.get();
        let now = Instant::now();
        state.unparked = Some(now);
        state.window_start.get_or_insert(now);
        t.set(state);
    });
}

/// Lowers this thread's timer slack from Linux's default 50 µs to 1 µs: a pause of tens of
/// microseconds would otherwise last twice as long or more.
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain number and changes only the calling thread's
    // timer slack; a failure (an old kernel) leaves the default, which is only less precise.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0);
    }
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
        assert!(window(800, 200, 90).worth_pausing(WINDOW, PAUSE));
    }

    #[test]
    fn a_lightly_loaded_thread_never_pauses() {
        // 5,000 messages a second: a few reads a millisecond, a fifth of it busy.
        assert!(!window(200, 10, 90).worth_pausing(WINDOW, PAUSE));
        // Busy, but the reads are few (handshakes): a pause would gather next to nothing.
        assert!(!window(950, 20, 90).worth_pausing(WINDOW, PAUSE));
    }

    #[test]
    fn a_bulk_transfer_never_pauses() {
        assert!(!window(900, 60, 16 * 1024).worth_pausing(WINDOW, PAUSE));
    }

    #[test]
    fn no_pause_set_is_never_a_pause() {
        assert!(!window(1000, 1000, 64).worth_pausing(WINDOW, Duration::ZERO));
    }

    #[test]
    fn the_hooks_measure_and_pause_as_the_window_decided() {
        set_pause(PAUSE);
        after_unpark();
        for _ in 0..100 {
            read(64);
        }
        // A whole window of work, then a park: it decides to pause.
        let busy_until = Instant::now() + WINDOW;
        while Instant::now() < busy_until {
            std::hint::spin_loop();
        }
        before_park();
        assert!(THREAD.with(Cell::get).pausing);
        set_pause(Duration::ZERO);
    }
}
