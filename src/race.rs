//! Connect attempts raced as RFC 8305 ("Happy Eyeballs") races them: one at a time while
//! each answers quickly, the next started beside a slow one once `timeouts.attempt_delay` has
//! passed, or its share of the time (or at once when one fails), the first to succeed used
//! and the others dropped.
//!
//! A backend whose SYNs are dropped (its node gone, a firewall) then costs a request the
//! delay, not its whole share of the connect timeout; a slow but working one is not given up
//! on, since its attempt keeps running beside the next.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

/// Attempts under way, each with a tag (what it is an attempt at) and when it began.
pub(crate) struct Race<T, F> {
    racing: Vec<Attempt<T, F>>,
    /// Zero: one attempt at a time, the next only once the last has failed.
    delay: Duration,
    /// When another attempt may start beside those under way (never, with no delay); `None`:
    /// now (nothing is under way, or one has just failed).
    next_at: Option<Instant>,
}

struct Attempt<T, F> {
    tag: T,
    began: Instant,
    /// The end of its share of the time (see [`Event::Expired`]); `None` once past it and
    /// racing on.
    expires: Option<Instant>,
    future: Pin<Box<F>>,
}

/// What woke [`Race::next`]: the attempts by their place in the race.
enum Woke<O> {
    Ended(usize, O),
    Start,
    Expired(usize),
}

/// What happened next in a race.
pub(crate) enum Event<T, O> {
    /// An attempt ended, this way.
    Ended(T, O),
    /// It is time to start another attempt beside those under way.
    Start,
    /// One at a time (no delay): an attempt ran out of its share of the time while more could
    /// start in its place, and was dropped. Racing, the next starts beside it instead
    /// ([`Event::Start`]) and it runs on: the next may fail at once (a refused backend), and
    /// it may still answer; but only one attempt past its share runs on, so when another's
    /// share ends, the one before it is dropped (this event) for the next to start. With
    /// none left to start, one past its share is never dropped: it may answer before the
    /// whole time is up, and nothing else could.
    Expired(T),
}

impl<T, F: Future> Race<T, F> {
    pub(crate) fn new(delay: Duration) -> Race<T, F> {
        Race {
            racing: Vec::new(),
            delay,
            next_at: None,
        }
    }

    /// Whether another attempt should start now, if there is one to start: nothing is under
    /// way, the last failed, or (racing) the delay since the last start has passed.
    pub(crate) fn wants_another(&self) -> bool {
        match self.next_at {
            None => true,
            Some(at) => !self.delay.is_zero() && Instant::now() >= at,
        }
    }

    /// Starts an attempt, with its share of the time ending at `expires`.
    pub(crate) fn start(&mut self, tag: T, future: F, expires: Instant) {
        let began = Instant::now();
        self.racing.push(Attempt {
            tag,
            began,
            expires: Some(expires),
            future: Box::pin(future),
        });
        self.next_at = Some(began + self.delay);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.racing.is_empty()
    }

    /// The attempts still under way, oldest first.
    pub(crate) fn under_way(&self) -> impl Iterator<Item = (&T, Instant)> {
        self.racing.iter().map(|a| (&a.tag, a.began))
    }

    /// Ends the race: the tags of the attempts still under way, oldest first (their attempts
    /// dropped).
    pub(crate) fn into_tags(self) -> impl Iterator<Item = T> {
        self.racing.into_iter().map(|a| a.tag)
    }

    /// Waits for an attempt to end, or (if `more` attempts could start) for the time to start
    /// another, or for an attempt's share of the time to end. An attempt that ended in
    /// failure (or expired) lets the next start at once: see [`Race::failed`].
    pub(crate) async fn next(&mut self, more: bool) -> Event<T, F::Output> {
        let start_at = self.next_at.filter(|_| more && !self.delay.is_zero());
        let mut timer = pin!(tokio::time::sleep_until(
            start_at.unwrap_or_else(Instant::now)
        ));
        let expiring = self.racing.iter().enumerate();
        let expiring = expiring.filter_map(|(i, a)| Some((a.expires?, i))).min();
        let expiring = expiring.filter(|_| more);
        let mut expiry = pin!(tokio::time::sleep_until(
            expiring.map_or_else(Instant::now, |(at, _)| at)
        ));
        let woke = poll_fn(|cx| {
            for (i, attempt) in self.racing.iter_mut().enumerate() {
                if let Poll::Ready(output) = attempt.future.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Ended(i, output));
                }
            }
            if start_at.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Start);
            }
            if let Some((_, i)) = expiring {
                if expiry.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Expired(i));
                }
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Ended(i, output) => Event::Ended(self.racing.remove(i).tag, output),
            Woke::Start => Event::Start,
            Woke::Expired(i) if self.delay.is_zero() => Event::Expired(self.racing.remove(i).tag),
            Woke::Expired(i) => {
                // One attempt past its share runs on, the latest: with shares shorter than
                // the delay (a name of fifty pods), keeping each would hold a socket per
                // address for every request waiting out the time.
                self.racing[i].expires = None;
                let older = (self.racing.iter().enumerate())
                    .position(|(j, a)| j != i && a.expires.is_none());
                if let Some(j) = older {
                    return Event::Expired(self.racing.remove(j).tag);
                }
                self.next_at = None;
                Event::Start
            }
        }
    }

    /// The attempt that just ended failed: the next may start at once.
    pub(crate) fn failed(&mut self) {
        self.next_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt that succeeds (`Ok`) or fails (`Err`) after a while, on the paused clock.
    async fn after(ms: u64, ok: bool) -> Result<(), ()> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ok.then_some(()).ok_or(())
    }

    /// Runs a race over attempts given as (duration, succeeds), each with a share of the
    /// time longer than any of them; returns the winner's index and when, on the paused
    /// clock, each attempt began.
    async fn run(delay_ms: u64, attempts: &[(u64, bool)]) -> (Option<usize>, Vec<u64>) {
        run_with_shares(delay_ms, 1_000_000, attempts).await
    }

    /// [`run`], each attempt with a share of `share_ms`.
    async fn run_with_shares(
        delay_ms: u64,
        share_ms: u64,
        attempts: &[(u64, bool)],
    ) -> (Option<usize>, Vec<u64>) {
        let origin = Instant::now();
        let mut race = Race::new(Duration::from_millis(delay_ms));
        let (mut next, mut began) = (0, Vec::new());
        loop {
            if race.wants_another() && next < attempts.len() {
                let (ms, ok) = attempts[next];
                let expires = Instant::now() + Duration::from_millis(share_ms);
                race.start(next, after(ms, ok), expires);
                began.push((Instant::now() - origin).as_millis() as u64);
                next += 1;
            }
            if race.is_empty() {
                return (None, began);
            }
            match race.next(next < attempts.len()).await {
                Event::Start => {}
                Event::Ended(i, Ok(())) => return (Some(i), began),
                Event::Ended(_, Err(())) | Event::Expired(_) => race.failed(),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_past_its_share_gives_way_to_the_next() {
        // One at a time: the first, silent, is dropped at the end of its share.
        let (winner, began) = run_with_shares(0, 1000, &[(100_000, true), (10, true)]).await;
        assert_eq!((winner, began), (Some(1), vec![0, 1000]));
    }

    #[tokio::test(start_paused = true)]
    async fn racing_an_attempt_past_its_share_runs_on_beside_the_next() {
        // The delay is longer than the share: the second starts at the end of the first's
        // share (600 ms), fails at once, and the first, still running, answers at 900.
        let (winner, began) = run_with_shares(1000, 600, &[(900, true), (5, false)]).await;
        assert_eq!((winner, began), (Some(0), vec![0, 600]));
    }

    /// Shares shorter than the delay: each attempt past its share gives way to the next, and
    /// only the latest of them runs on beside it, not every one (a socket each).
    #[tokio::test(start_paused = true)]
    async fn racing_only_one_attempt_past_its_share_runs_on() {
        let origin = Instant::now();
        let mut race = Race::new(Duration::from_millis(250));
        let (mut started, mut most) = (0, 0);
        loop {
            if race.wants_another() && started < 50 {
                let expires = Instant::now() + Duration::from_millis(100);
                race.start(started, after(100_000, false), expires);
                started += 1;
            }
            most = most.max(race.racing.len());
            if started == 50 {
                break;
            }
            match race.next(true).await {
                Event::Start => {}
                Event::Expired(_) => race.failed(),
                Event::Ended(..) => unreachable!("none ends within the time"),
            }
        }
        assert_eq!(most, 2, "the one in its share, and one past it");
        assert_eq!(
            origin.elapsed(),
            Duration::from_millis(4900),
            "one each 100 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_left_to_start_an_attempt_past_its_share_may_still_win() {
        // The second fails at once; the first, slow, answers at 3 s, past its share of 1 s,
        // and is the request's only hope by then.
        let start = Instant::now();
        let (winner, began) = run_with_shares(250, 1000, &[(3000, true), (5, false)]).await;
        assert_eq!((winner, began), (Some(0), vec![0, 250]));
        assert_eq!(start.elapsed(), Duration::from_millis(3000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_first_attempt_is_the_only_one() {
        assert_eq!(
            run(250, &[(10, true), (10, true)]).await,
            (Some(0), vec![0])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_attempt_gets_the_next_started_beside_it_after_the_delay() {
        // The first never answers in time; the second, started at 250 ms, wins at 260.
        let (winner, began) = run(250, &[(100_000, true), (10, true)]).await;
        assert_eq!((winner, began), (Some(1), vec![0, 250]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_still_wins_if_it_answers_first() {
        // The first answers at 300 ms, the second (from 250 ms) would at 350.
        assert_eq!(
            run(250, &[(300, true), (100, true)]).await,
            (Some(0), vec![0, 250])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_at_once() {
        let (winner, began) = run(250, &[(5, false), (100_000, false), (20, true)]).await;
        assert_eq!((winner, began), (Some(2), vec![0, 5, 255]));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_delay_attempts_go_one_at_a_time() {
        let (winner, began) = run(0, &[(1000, false), (1000, true)]).await;
        assert_eq!((winner, began), (Some(1), vec![0, 1000]));
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_ends_the_race_empty() {
        assert_eq!(
            run(250, &[(300, false), (10, false)]).await,
            (None, vec![0, 250])
        );
    }
}
