//! Passive health of a route's backends: one that failed to take a connection (refused, no
//! address, silent past its share of the connect timeout or for `timeouts.attempt_delay` while
//! another backend answered, or closed before a byte of answer), or that took it and did not
//! answer the upgrade in time (a hung process), or, on a route with `balance =
//! "least_connections"`, answered 502, 503, 504 or a bad 101, or refused five upgrades in a
//! row, is put aside for a cool-down,
//! `timeouts.backend_cooldown` (1 s by default) doubling with each failure in a row up to
//! 30 s, and the route's requests go to its other backends meanwhile. No probes of its own:
//! once the cool-down is over, one request tries it again (the others whose turn it is go on to the
//! next backend until that try has ended, so a blackholed backend's retry holds up one
//! request, not every request whose turn it is while the connect waits). A route whose
//! backends are all put aside still tries them all, so putting aside never refuses a request
//! by itself; it only spares the requests a failing backend would have cost time (a refused
//! connect, a blackholed one's share of `timeouts.connect`), and keeps its share of the load
//! from piling onto the backend after it in the list.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest cool-down (unless the first is longer): a backend back after a long outage gets
/// traffic within this.
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// The bits of [`Health::state`] that count failures; the rest hold the time.
const FAILURE_BITS: u32 = 16;

/// One backend's health, as the route's requests found it.
#[derive(Default)]
pub(crate) struct Health {
    /// The time (milliseconds on [`now`]'s clock) until which it is put aside, and below it,
    /// in [`FAILURE_BITS`], its failures in a row since it last answered. One word, so that a
    /// failure and an answer racing each other leave one state or the other, never a backend
    /// put aside with no failure for an answer to clear.
    state: AtomicU64,
    /// When it was last put aside: a try that began before then was on its way with the one
    /// that put it aside, and its failure adds nothing.
    aside_since: AtomicU64,
    /// The claim of the one request trying it again after a cool-down ([`Leave`]); 0: none.
    probe: AtomicU64,
    /// Upgrades it refused in a row (answered other than 101), since its last 101: see
    /// [`REFUSALS_IN_A_ROW`].
    refused: AtomicU32,
}

/// Upgrades in a row a backend may refuse, on a route with `balance = "least_connections"`,
/// before it is put aside as one that failed: a backend refusing every upgrade (a 500, or a
/// 404 from a deploy whose WebSocket path is broken) holds no tunnel, so least-connections
/// would send it every new client. Five, as Envoy's consecutive-5xx ejection: a refusal a
/// client's own request provoked (a stale token) comes between others' 101s, not five times
/// in a row.
pub(crate) const REFUSALS_IN_A_ROW: u32 = 5;

/// What a failure did to a backend's health: put it aside for this long, in the `nth` failure
/// in a row.
pub(crate) struct PutAside {
    pub(crate) cool_down: Duration,
    pub(crate) nth: u32,
}

/// A request's leave to try a backend now: after a failure, the one request trying it again
/// holds the claim to it, given back when this is dropped (its try ended, or the request was).
#[derive(Default)]
pub(crate) struct Leave<'a> {
    probe: Option<(&'a Health, u64)>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if let Some((health, claim)) = self.probe {
            // A later claim is not this one's to give back.
            let _ = (health.probe).compare_exchange(claim, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

fn unpack(state: u64) -> (u64, u32) {
    let failures = (state & ((1 << FAILURE_BITS) - 1)) as u32;
    (state >> FAILURE_BITS, failures)
}

fn pack(until: u64, failures: u32) -> u64 {
    let failures = u64::from(failures.min((1 << FAILURE_BITS) - 1));
    (until.min(u64::MAX >> FAILURE_BITS) << FAILURE_BITS) | failures
}

impl Health {
    /// Whether requests may go to it at `now` (from [`now`]).
    pub(crate) fn is_up(&self, now: u64) -> bool {
        unpack(self.state.load(Ordering::Relaxed)).0 <= now
    }

    /// Whether a request whose turn it is may try it now, and if so its leave: any request
    /// while it has not failed, and while it is put aside (a request gets to it then only
    /// when the route's other backends failed too: its last resort); after a failure and its
    /// cool-down, one request at a time. `None`: another request is trying it again.
    pub(crate) fn leave(&self) -> Option<Leave<'_>> {
        let (until, failures) = unpack(self.state.load(Ordering::Relaxed));
        if failures == 0 || until > now() {
            return Some(Leave::default());
        }
        static CLAIMS: AtomicU64 = AtomicU64::new(1);
        let claim = CLAIMS.fetch_add(1, Ordering::Relaxed);
        (self.probe)
            .compare_exchange(0, claim, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(Leave {
            probe: Some((self, claim)),
        })
    }

    /// Notes a failure to take a connection of a try that `began` (on [`now`]'s clock);
    /// `first` is the first cool-down (`timeouts.backend_cooldown`, more than zero). Only a
    /// backend that is up is put aside (further): a try that was on its way when another put
    /// it aside, or that tried it as a last resort, fails as that one did and adds nothing,
    /// so a burst of them does not stretch the cool-down to its maximum at once.
    pub(crate) fn failed(&self, first: Duration, began: u64) -> Option<PutAside> {
        let now = now();
        if began < self.aside_since.load(Ordering::Relaxed) {
            return None;
        }
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            let (until, failures) = unpack(state);
            // Aside still, or the try began while it was (a last resort, failing now that
            // the cool-down is over): the retry after the cool-down, which holds the claim,
            // is the one that counts.
            if until > now || began < until {
                return None;
            }
            let nth = failures.saturating_add(1);
            let cool_down = cool_down(first, nth);
            let until =
                now.saturating_add(u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX));
            let next = pack(until, nth);
            match (self.state).compare_exchange(state, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.aside_since.store(now, Ordering::Relaxed);
                    let nth = unpack(next).1;
                    return Some(PutAside { cool_down, nth });
                }
                Err(now_state) => state = now_state,
            }
        }
    }

    /// Notes an upgrade it refused; how many in a row now.
    pub(crate) fn refused(&self) -> u32 {
        self.refused
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Notes an upgrade it accepted: its refusals in a row are over.
    pub(crate) fn upgraded(&self) {
        // Read first: a backend that accepts (nearly all of them) writes nothing.
        if self.refused.load(Ordering::Relaxed) != 0 {
            self.refused.store(0, Ordering::Relaxed);
        }
    }

    /// Notes an answer (any answer: the backend takes connections). Whether it had failed
    /// until now.
    pub(crate) fn answered(&self) -> bool {
        // Read first: answers from a backend that is fine (all of them, nearly) write nothing.
        self.state.load(Ordering::Relaxed) != 0 && self.state.swap(0, Ordering::Relaxed) != 0
    }

    #[cfg(test)]
    pub(crate) fn ever_put_aside(&self) -> bool {
        self.aside_since.load(Ordering::Relaxed) != 0
    }
}

/// The cool-down after the `nth` failure in a row, the first being `first`.
pub(crate) fn cool_down(first: Duration, nth: u32) -> Duration {
    let doublings = nth.saturating_sub(1).min(16);
    let longest = MAX_COOL_DOWN.max(first);
    first.saturating_mul(1 << doublings).min(longest)
}

/// Milliseconds since the first call in this process, at least 1 (a time of 0 stands for
/// "never").
pub(crate) fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(1);

    /// Its cool-down over, as if that much time had passed.
    fn cooled(health: &Health) {
        let (_, failures) = unpack(health.state.load(Ordering::Relaxed));
        health.state.store(pack(1, failures), Ordering::Relaxed);
    }

    /// A try begun while the backend was aside fails after the cool-down has ended: it adds
    /// nothing (the docs' "one made while it is aside"); a try begun after it counts.
    #[test]
    fn a_try_begun_while_aside_adds_nothing_when_it_fails_after_the_cool_down() {
        let health = Health::default();
        let t = now();
        // Put aside until t: over now.
        health.state.store(pack(t, 1), Ordering::Relaxed);
        assert!(health.failed(FIRST, t - 1).is_none());
        assert_eq!(unpack(health.state.load(Ordering::Relaxed)), (t, 1));
        let again = health.failed(FIRST, t).expect("the retry's failure counts");
        assert_eq!(again.nth, 2);
    }

    #[test]
    fn a_failure_puts_a_backend_aside_and_an_answer_brings_it_back() {
        let health = Health::default();
        assert!(health.is_up(now()));
        let aside = health.failed(FIRST, now()).unwrap();
        assert_eq!((aside.cool_down, aside.nth), (FIRST, 1));
        assert!(!health.is_up(now()));
        assert!(health.is_up(now() + 1_000), "up again after the cool-down");
        assert!(health.answered(), "it had failed");
        assert!(health.is_up(now()));
        assert!(!health.answered(), "nothing to bring back");
    }

    #[test]
    fn failures_while_aside_or_of_tries_begun_before_add_nothing() {
        let health = Health::default();
        let began = now();
        health.failed(FIRST, began).unwrap();
        for _ in 0..100 {
            assert!(health.failed(FIRST, now()).is_none());
        }
        cooled(&health);
        // A try that began before it was put aside, failing only now.
        assert!(health.failed(FIRST, began.saturating_sub(1)).is_none());
        assert_eq!(unpack(health.state.load(Ordering::Relaxed)).1, 1);
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
        health.failed(FIRST, now()).unwrap();
        cooled(&health);
        assert_eq!(health.failed(FIRST, now()).unwrap().nth, 2);
    }

    #[test]
    fn after_a_failure_one_request_at_a_time_tries_the_backend_again() {
        let health = Health::default();
        let (a, b) = (health.leave(), health.leave());
        assert!(a.is_some() && b.is_some(), "anyone, before");
        drop((a, b));
        health.failed(FIRST, now()).unwrap();
        assert!(
            health.leave().is_some(),
            "anyone, as a last resort while aside"
        );
        cooled(&health);
        let probe = health.leave().expect("the one trying it again");
        assert!(health.leave().is_none(), "one at a time");
        drop(probe);
        let probe = health.leave().expect("its leave given back, the next may");
        // It answered: anyone again, the claim still held or not.
        assert!(health.answered());
        assert!(health.leave().is_some() && health.leave().is_some());
        drop(probe);
        assert_eq!(health.probe.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_answer_racing_a_failure_leaves_a_consistent_state() {
        // The failure lands first, then the answer: up, no failure left.
        let health = Health::default();
        health.failed(FIRST, now()).unwrap();
        cooled(&health);
        health.failed(FIRST, now()).unwrap();
        assert!(health.answered());
        assert!(health.is_up(now()) && !health.answered());
        // The answer lands first, then the failure: aside, and the next answer clears it.
        health.failed(FIRST, now()).unwrap();
        assert!(!health.is_up(now()));
        assert!(health.answered());
        assert!(health.is_up(now()));
    }
}
