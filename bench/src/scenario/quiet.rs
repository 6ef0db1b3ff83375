//! The longest time in the measured window with nothing heard from the target (no echo, no
//! handshake done): a target that stalled for much of the window did not work at the rate
//! the window's average says, and the run must say so rather than report that average.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A quiet this long, and longer than a quarter of the window, is a stall: the figures are an
/// average over work and silence.
pub const STALL: Duration = Duration::from_secs(1);

/// Nanoseconds from one start, for the [`Quiet`]s of one run.
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The quiets of one stream of events (one connection's echoes, or a whole run's), on a
/// [`Clock`]'s time.
pub struct Quiet {
    /// When the target was last heard.
    last_ns: AtomicU64,
    /// The longest quiet in the measured window, up to the last time heard.
    longest_ns: AtomicU64,
    /// When the measured window opened (the first [`Quiet::longest`]); `u64::MAX` before. A
    /// quiet that began in the warm-up counts from there, not from its start.
    window_ns: AtomicU64,
}

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet {
            last_ns: AtomicU64::new(0),
            longest_ns: AtomicU64::new(0),
            window_ns: AtomicU64::new(u64::MAX),
        }
    }
}

impl Quiet {
    /// The target was heard at `now`: the quiet before ends (counted if `measured`).
    pub fn heard(&self, now: u64, measured: bool) {
        // The latest wins: a thread storing an older time after a newer one would lengthen
        // the next gap.
        let before = self.last_ns.fetch_max(now, Ordering::Relaxed);
        if measured {
            let gap = now.saturating_sub(self.quiet_from(before));
            self.longest_ns.fetch_max(gap, Ordering::Relaxed);
        }
    }

    /// The longest quiet of the window so far, the one still going on at `now` included. The
    /// first call opens the window.
    pub fn longest(&self, now: u64) -> u64 {
        self.window_ns.fetch_min(now, Ordering::Relaxed);
        let still = now.saturating_sub(self.quiet_from(self.last_ns.load(Ordering::Relaxed)));
        self.longest_ns.load(Ordering::Relaxed).max(still)
    }

    /// Where a quiet since `before` counts from: the window's opening if it began earlier
    /// (heard between the phase's change and the window's opening, it counts nothing: the
    /// window is not open yet).
    fn quiet_from(&self, before: u64) -> u64 {
        match self.window_ns.load(Ordering::Relaxed) {
            u64::MAX => u64::MAX,
            opened => before.max(opened),
        }
    }
}

/// The quiet, if `quiet_ns` of a window of `secs` is a stall (see [`STALL`]).
pub fn stall(quiet_ns: u64, secs: f64) -> Option<f64> {
    let quiet = Duration::from_nanos(quiet_ns);
    (quiet > STALL && quiet.as_secs_f64() > secs / 4.0).then_some(quiet.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_quiet_over_a_second_and_a_quarter_of_the_window_is_a_stall() {
        let ns = |secs: f64| (secs * 1e9) as u64;
        assert!(stall(ns(1.4), 2.0).is_some());
        assert!(stall(ns(0.9), 2.0).is_none(), "a second at most: a hiccup");
        assert!(
            stall(ns(1.2), 10.0).is_none(),
            "a small part of a long window"
        );
        assert!(stall(ns(3.0), 10.0).is_some());
    }

    #[test]
    fn a_quiet_begun_in_the_warm_up_counts_from_the_window_opening() {
        let q = Quiet::default();
        q.heard(S, false);
        q.longest(3 * S);
        q.heard(4 * S, true);
        assert_eq!(q.longest(4 * S + S / 2), S, "3 s quiet, 1 s of it measured");
        // Still quiet at the window's end: also counted from the opening.
        let q = Quiet::default();
        q.heard(S, false);
        q.longest(2 * S);
        assert_eq!(q.longest(5 * S), 3 * S);
    }

    #[test]
    fn a_quiet_inside_the_window_counts_whole() {
        let q = Quiet::default();
        q.heard(S, false);
        q.longest(S + 1);
        q.heard(2 * S, true);
        q.heard(5 * S, true);
        assert_eq!(q.longest(5 * S + 10), 3 * S);
    }

    #[test]
    fn never_heard_is_quiet_from_the_window_opening() {
        let q = Quiet::default();
        q.longest(2 * S);
        assert_eq!(q.longest(4 * S), 2 * S);
    }
}
