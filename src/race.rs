//! Connect attempts raced as RFC 8305 ("Happy Eyeballs") races them: one at a time while
//! each answers quickly, the next started beside a slow one once `timeouts.attempt_delay` has
//! passed (or at once when one fails), the first to succeed used and the others dropped.
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
    future: Pin<Box<F>>,
}

/// What happened next in a race.
pub(crate) enum Event<T, O> {
    /// An attempt ended, this way.
    Ended(T, O),
    /// It is time to start another attempt beside those under way.
    Start,
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

    pub(crate) fn start(&mut self, tag: T, future: F) {
        let began = Instant::now();
        self.racing.push(Attempt {
            tag,
            began,
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
    /// another. An attempt that ended in failure lets the next start at once: see
    /// [`Race::failed`].
    pub(crate) async fn next(&mut self, more: bool) -> Event<T, F::Output> {
        let start_at = self.next_at.filter(|_| more && !self.delay.is_zero());
        let mut timer = pin!(tokio::time::sleep_until(
            start_at.unwrap_or_else(Instant::now)
        ));
        let ended = poll_fn(|cx| {
            for (i, attempt) in self.racing.iter_mut().enumerate() {
                if let Poll::Ready(output) = attempt.future.as_mut().poll(cx) {
                    return Poll::Ready(Some((i, output)));
                }
            }
            if start_at.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match ended {
            Some((i, output)) => {
                let attempt = self.racing.remove(i);
                Event::Ended(attempt.tag, output)
            }
            None => Event::Start,
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

    /// Runs a race over attempts given as (duration, succeeds), returns the winner's index
    /// and when, on the paused clock, each attempt began.
    async fn run(delay_ms: u64, attempts: &[(u64, bool)]) -> (Option<usize>, Vec<u64>) {
        let origin = Instant::now();
        let mut race = Race::new(Duration::from_millis(delay_ms));
        let (mut next, mut began) = (0, Vec::new());
        loop {
            if race.wants_another() && next < attempts.len() {
                let (ms, ok) = attempts[next];
                race.start(next, after(ms, ok));
                began.push((Instant::now() - origin).as_millis() as u64);
                next += 1;
            }
            if race.is_empty() {
                return (None, began);
            }
            match race.next(next < attempts.len()).await {
                Event::Start => {}
                Event::Ended(i, Ok(())) => return (Some(i), began),
                Event::Ended(_, Err(())) => race.failed(),
            }
        }
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
