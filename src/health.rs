//! Passive health of a route's backends: one that failed to take a connection (refused, no
//! address, silent past its share of the connect timeout, or closed before a byte of answer)
//! is put aside for a cool-down, `timeouts.backend_cooldown` (1 s by default) doubling with
//! each failure in a row up to 30 s, and the route's requests go to its other backends
//! meanwhile. No probes of its own: once the
//! cool-down is over, one request tries it again (the others go on to the route's other
//! backends until that one's try has ended, so a blackholed backend's probe holds up one
//! request, not every request whose turn it is while the probe's connect waits). A route whose backends are all put aside still
//! tries them all, so putting aside never refuses a request by itself; it only spares the
//! requests a failing backend would have cost time (a refused connect, a blackholed one's share
//! of `timeouts.connect`), and keeps its share of the load from piling onto the backend after
//! it in the list.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest cool-down (unless the first is longer): a backend back after a long outage gets
/// traffic within this.
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// One backend's health, as the route's requests found it.
#[derive(Default)]
pub(crate) struct Health {
    /// Milliseconds (on [`now`]'s clock) until which the backend is put aside; 0: never.
    aside_until: AtomicU64,
    /// Failures in a row that put it aside (or kept it there), since it last answered.
    failures: AtomicU32,
    /// When (on [`now`]'s clock) a request began to try it again after a failure; 0: none.
    probe_since: AtomicU64,
}

/// What a failure did to a backend's health: put it aside for this long, in the `nth` failure
/// in a row.
pub(crate) struct PutAside {
    pub(crate) cool_down: Duration,
    pub(crate) nth: u32,
}

impl Health {
    /// Whether requests may go to it at `now` (from [`now`]).
    pub(crate) fn is_up(&self, now: u64) -> bool {
        self.aside_until.load(Ordering::Relaxed) <= now
    }

    /// Whether a request whose turn it is may try it now: any request, while it has not
    /// failed; after a failure, once its cool-down is over, one request at a time (the
    /// probe), a probe that never ended (its request dropped) counting for at most `hold`.
    pub(crate) fn may_try(&self, hold: Duration) -> bool {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let now = now();
        let since = self.probe_since.load(Ordering::Relaxed);
        let hold = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        if since != 0 && now.saturating_sub(since) < hold {
            return false;
        }
        (self.probe_since)
            .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Notes a failure to take a connection; `first` is the first cool-down
    /// (`timeouts.backend_cooldown`, more than zero). Only a backend that was up is put aside (further):
    /// requests that were already on their way to it when it was put aside, or that tried it
    /// as a last resort, fail as the one that put it aside did and add nothing, so a burst of
    /// them does not stretch the cool-down to its maximum at once.
    pub(crate) fn failed(&self, first: Duration) -> Option<PutAside> {
        let now = now();
        let until = self.aside_until.load(Ordering::Relaxed);
        if until > now {
            return None;
        }
        let nth = self.failures.load(Ordering::Relaxed).saturating_add(1);
        let cool_down = cool_down(first, nth);
        let aside_until = now + u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX);
        // Lost to a concurrent failure: that one put it aside.
        (self.aside_until)
            .compare_exchange(until, aside_until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.failures.store(nth, Ordering::Relaxed);
        self.probe_since.store(0, Ordering::Relaxed);
        Some(PutAside { cool_down, nth })
    }

    /// Notes an answer (any answer: the backend takes connections). Whether it was put aside
    /// until now.
    pub(crate) fn answered(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.aside_until.store(0, Ordering::Relaxed);
        self.probe_since.store(0, Ordering::Relaxed);
        self.failures.swap(0, Ordering::Relaxed) != 0
    }

    /// Takes over `old`'s state: the same backend in a reloaded route.
    pub(crate) fn continue_from(&self, old: &Health) {
        let until = old.aside_until.load(Ordering::Relaxed);
        self.aside_until.store(until, Ordering::Relaxed);
        let failures = old.failures.load(Ordering::Relaxed);
        self.failures.store(failures, Ordering::Relaxed);
    }
}

/// The cool-down after the `nth` failure in a row, the first being `first`.
fn cool_down(first: Duration, nth: u32) -> Duration {
    let doublings = nth.saturating_sub(1).min(16);
    let longest = MAX_COOL_DOWN.max(first);
    first.saturating_mul(1 << doublings).min(longest)
}

/// Milliseconds since the first call in this process, at least 1 (0 stands for "never put
/// aside").
pub(crate) fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(1);

    #[test]
    fn a_failure_puts_a_backend_aside_and_an_answer_brings_it_back() {
        let health = Health::default();
        assert!(health.is_up(now()));
        let aside = health.failed(FIRST).unwrap();
        assert_eq!((aside.cool_down, aside.nth), (FIRST, 1));
        assert!(!health.is_up(now()));
        assert!(health.is_up(now() + 1_000), "up again after the cool-down");
        assert!(health.answered(), "it was aside");
        assert!(health.is_up(now()));
        assert!(!health.answered(), "nothing to bring back");
    }

    #[test]
    fn failures_while_aside_add_nothing() {
        let health = Health::default();
        health.failed(FIRST).unwrap();
        for _ in 0..100 {
            assert!(health.failed(FIRST).is_none());
        }
        assert_eq!(health.failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_cool_down_doubles_with_each_failure_in_a_row_up_to_its_maximum() {
        let seconds: Vec<u64> = (1..=8).map(|n| cool_down(FIRST, n).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(cool_down(FIRST, u32::MAX), MAX_COOL_DOWN);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            cool_down(hour, 5),
            hour,
            "a first longer than the longest stays"
        );
        // The failure that comes once the cool-down is over counts as the next in a row.
        let health = Health::default();
        health.failed(FIRST).unwrap();
        health.aside_until.store(now() - 1, Ordering::Relaxed);
        assert_eq!(health.failed(FIRST).unwrap().nth, 2);
    }

    #[test]
    fn after_a_failure_one_request_at_a_time_tries_the_backend_again() {
        let (health, hold) = (Health::default(), Duration::from_secs(5));
        assert!(
            health.may_try(hold) && health.may_try(hold),
            "anyone, before"
        );
        health.failed(FIRST).unwrap();
        assert!(health.may_try(hold), "the probe");
        assert!(!health.may_try(hold), "one at a time");
        // The probe failed: aside again, and the next probe is one request again.
        health.aside_until.store(1, Ordering::Relaxed);
        assert_eq!(health.failed(FIRST).unwrap().nth, 2);
        assert!(health.may_try(hold) && !health.may_try(hold));
        // A probe whose request was dropped holds the backend for `hold` only.
        assert!(health.may_try(Duration::ZERO));
        // It answered: anyone again.
        assert!(health.answered());
        assert!(health.may_try(hold) && health.may_try(hold));
    }

    #[test]
    fn a_reloaded_route_keeps_its_backends_health() {
        let (old, new) = (Health::default(), Health::default());
        old.failed(FIRST).unwrap();
        new.continue_from(&old);
        assert!(!new.is_up(now()));
        assert!(new.answered());
    }
}
