//! Which backend a request goes to next: the route's backends from its round-robin turn, those
//! put aside after a failure last (see `health`), each connect raced against the next once it
//! has gone unanswered for `timeouts.attempt_delay` (see `race`), and the backends that fail,
//! or stay silent while another answers, put aside.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dial::{
    connect, lookup_unanswered, no_answer, share_of, Counting, Dialed, Progress, Window,
};
use super::Leg;
use crate::config::Balance;
use crate::error::{out_of_descriptors, ProxyError};
use crate::health::{self, Health, Leave};
use crate::load::Busy;
use crate::race::{Event, Race};
use crate::routes::Route;

/// Where a request is in its route's backends, across the backends it tries.
pub(super) struct Turns<'a, I: ExactSizeIterator<Item = &'a str>> {
    /// The time each backend would get if every one were slow: a try whose share of what was
    /// left came to much less (earlier backends took the rest) is not the backend's failure
    /// when it runs out.
    fair_share: Duration,
    /// The whole time, connects and answer, from the request's start.
    whole: Duration,
    /// The tries so far that reached a backend, or failed to (see [`Turns::asking`]): a
    /// backend silent through its share took a try's time as surely as one that answered.
    tried: usize,
    /// The backends not tried yet, in round-robin order.
    backends: I,
    /// Backends another request is trying again after a failure (see [`crate::health`]):
    /// tried only once `backends` are all tried.
    later: VecDeque<&'a str>,
    /// A backend to try again first: one of its addresses closed before answering, and it
    /// may have others.
    pub(super) again: Option<&'a str>,
    /// Backends whose connect was dropped when another answered first, not for being silent
    /// (see [`settle_losers`]): next in turn if this request needs another, tried then
    /// without asking. A cool-down's retry claim is not kept for that: the try ended, and
    /// another request may try the backend meanwhile (the docs: skipped "until that try has
    /// ended"), rather than it waiting out this request's answer from the winner.
    resume: VecDeque<&'a str>,
    /// The first backend that did not answer in its share: what a 504 is about.
    pub(super) timed_out: Option<&'a str>,
    /// That backend's name lookup had not answered by then.
    lookup_stalled: bool,
    /// Addresses that closed before answering: not tried again in this request (a backend
    /// listed twice, or a name's other addresses, are).
    pub(super) gone: Vec<SocketAddr>,
    /// The last of those, and why it failed: the answer if nothing else is left to try.
    pub(super) gone_error: Option<(&'a str, ProxyError)>,
    /// The last failed connect's error, in the OS's words: what a 502 says when no backend
    /// could be connected to (refused, unresolvable, unreachable).
    connect_error: Option<String>,
}

impl<'r> Turns<'r, crate::routes::InTurn<'r>> {
    /// A request's turns through `route`'s backends, with its whole connect time to `deadline`.
    pub(super) fn new(route: &'r Route, deadline: Instant) -> Self {
        Turns {
            fair_share: share_of(deadline, route.config.backends.len()),
            whole: deadline.saturating_duration_since(Instant::now()),
            tried: 0,
            backends: route.backends_in_turn(),
            later: VecDeque::new(),
            again: None,
            resume: VecDeque::new(),
            timed_out: None,
            lookup_stalled: false,
            gone: Vec::new(),
            gone_error: None,
            connect_error: None,
        }
    }
}

impl<'a, I: ExactSizeIterator<Item = &'a str>> Turns<'a, I> {
    /// The refusal once every backend failed: if any of them was merely slow, the request ran
    /// out of time, and the line names that one (the others' failures are in the metrics).
    pub(super) fn outcome(&mut self, tried: &mut Option<String>) -> ProxyError {
        if let Some(slow) = self.timed_out {
            *tried = Some(slow.to_string());
            return match self.lookup_stalled {
                true => ProxyError::BackendLookupTimeout,
                false => ProxyError::BackendTimeout,
            };
        }
        match self.gone_error.take() {
            Some((backend, error)) => {
                *tried = Some(backend.to_string());
                error
            }
            None => ProxyError::BackendUnavailable(
                self.connect_error
                    .take()
                    .unwrap_or_else(|| "no address to connect to".to_string()),
            ),
        }
    }

    /// The next backend to try, and its leave to be tried if it needs none asked for: one
    /// this request tries again (`again`: it has just been tried, and holds its leave),
    /// resumes (`resume`) or has put off (`later`); `None`: ask first.
    fn next<'r>(&mut self) -> Option<(&'a str, Option<Leave<'r>>)> {
        if let Some(backend) = self.again.take() {
            return Some((backend, Some(Leave::default())));
        }
        if let Some(backend) = self.resume.pop_front() {
            return Some((backend, Some(Leave::default())));
        }
        match self.backends.next() {
            Some(backend) => Some((backend, None)),
            None => (self.later.pop_front()).map(|backend| (backend, Some(Leave::default()))),
        }
    }

    /// A try reaching its backend with `remaining` time, and `after` tries possible after it
    /// (backends left, the name's next addresses, or the same address dialed again): the time
    /// its TLS handshake gets, and its even share of the whole.
    ///
    /// The handshake gets an even share of `remaining` among the tries left, and no less than
    /// the route's even share of the whole (or half of what remains, if less), so that a slow
    /// handshake is not cut shorter than a connect would be; `None` for the last try, which
    /// has all the time left. The even share is what the try would have had if every try
    /// before it had been quick: one whose time came to less than half of it (those before
    /// it took the rest) is not to blame when it runs out.
    pub(super) fn asking(
        &mut self,
        after: usize,
        remaining: Duration,
    ) -> (Option<Duration>, Duration) {
        let tries = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        let even = self.whole / tries(self.tried + 1 + after);
        self.tried += 1;
        if after == 0 {
            return (None, even);
        }
        let share = (remaining / tries(after + 1)).max(self.fair_share.min(remaining / 2));
        ((share < remaining).then_some(share), even)
    }

    /// How many backends are left to try after the one being tried.
    pub(super) fn left(&self) -> usize {
        self.resume.len() + self.backends.len() + self.later.len()
    }
}

/// Tries the backends in turn, starting at the route's round-robin position; a refused,
/// unresolvable or silent backend moves on to the next (a name's other addresses first,
/// after one of them closed before answering).
///
/// Each attempt gets an equal share of the time left (the last one all of it), so one
/// blackholed backend, whose SYNs go unanswered, cannot eat the whole connect timeout while
/// a healthy one waits its turn; and once it has gone unanswered for `attempt_delay`, the
/// next backend is dialed beside it (see [`crate::race`]), the first to answer taken. A
/// backend that fails, or is left unanswered while another answers, is put aside for
/// `cooldown` (see [`crate::health`]).
pub(super) async fn connect_in_turn<'a, 'r>(
    leg: Leg<'r>,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
    tried: &mut Option<String>,
) -> Result<(Try<'a, 'r>, Dialed), ProxyError>
where
    'r: 'a,
{
    let deadline = leg.deadline;
    let mut race = Race::new(leg.timing.attempt_delay);
    // The last backend that failed, or what `tried` said before: named if the attempts left
    // do not count (every address of theirs closed before answering already).
    let mut before = tried.clone();
    loop {
        // None started with no time left: it could only connect for a request given up.
        if race.wants_another() && Instant::now() < deadline {
            if let Some((attempt, connecting, until)) = dial_next(leg, turns) {
                race.start(attempt, connecting, until);
            }
        }
        // Named before the connect: if the request's time runs out during it, the oldest
        // attempt under way is the backend its 504 is about.
        match race.under_way().next() {
            Some((attempt, _)) => name(tried, attempt.backend),
            None => return Err(turns.outcome(tried)),
        }
        // `None`: out of time, its share's or the request's.
        let more = turns.left() > 0 && Instant::now() < deadline;
        let (attempt, connected) = match race.next(more).await {
            Event::Start => continue,
            Event::Ended(attempt, connected) => (attempt, connected.ok()),
            Event::Expired(attempt) => (attempt, None),
        };
        let error = match connected {
            Some(Ok(Some(dialed))) => {
                let hidden = dialed.hidden.iter().copied();
                count_hidden(leg, attempt.backend, hidden);
                settle_losers(leg, race, attempt.backend, turns);
                name(tried, attempt.backend);
                return Ok((attempt, dialed));
            }
            // Every address of it closed before answering already: nothing to count.
            Some(Ok(None)) => {
                if race.is_empty() {
                    tried.clone_from(&before);
                }
                race.failed();
                continue;
            }
            // The process's descriptors, not the backend: trying others would only fail too.
            Some(Err(e)) if out_of_descriptors(&e) => {
                // The others' connects are dropped for the process's trouble, not theirs.
                for (other, _) in race.under_way() {
                    other.progress.disarm();
                }
                return Err(ProxyError::OutOfDescriptors);
            }
            Some(Err(e)) => e,
            None if attempt.progress.looking_up() => lookup_unanswered(),
            None => no_answer(),
        };
        race.failed();
        before = Some(attempt.backend.to_string());
        note_failure(leg, turns, &attempt, &error);
    }
}

/// What a connect attempt comes to: `Err` if the request's time ran out first.
type Connected = Result<std::io::Result<Option<Dialed>>, tokio::time::error::Elapsed>;

/// Starts the connect to the next backend in turn, if any is left: the attempt, its connect
/// (ending at the request's `deadline` at the latest), and when its share of the time ends.
fn dial_next<'a, 'r>(
    leg: Leg<'r>,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
) -> Option<(Try<'a, 'r>, impl Future<Output = Connected> + 'a, Instant)>
where
    'r: 'a,
{
    let Leg {
        route,
        deadline,
        timing,
        loads,
        ..
    } = leg;
    let (backend, leave) = next_backend(route, turns)?;
    let share = share_of(deadline, turns.left() + 1);
    let until = Instant::now() + share;
    let progress = Arc::new(Progress::new());
    let alone = route.config.backends.len() == 1;
    let window = Window { until, deadline };
    let connecting = connect(
        backend,
        turns.gone.clone(),
        window,
        timing,
        alone,
        progress.clone(),
        Counting {
            loads,
            fewest_first: route.config.balance == Balance::LeastConnections,
        },
    );
    let attempt = Try {
        backend,
        share,
        began: health::now(),
        leave,
        progress,
        busy: route.busy(backend),
    };
    Some((
        attempt,
        tokio::time::timeout_at(deadline, connecting),
        until,
    ))
}

/// Notes that `attempt`'s backend failed to take the connection: counted, named in the
/// request's refusal should nothing else answer, and put aside unless its share was cut
/// short by the backends tried before it.
fn note_failure<'a, 'r>(
    leg: Leg<'_>,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
    attempt: &Try<'a, 'r>,
    error: &std::io::Error,
) {
    let route = leg.route;
    let backend = attempt.backend;
    turns.tried += 1;
    let timed_out = error.kind() == std::io::ErrorKind::TimedOut;
    if timed_out && turns.timed_out.is_none() {
        turns.timed_out = Some(backend);
        turns.lookup_stalled = attempt.progress.looking_up();
    }
    // Failover hides a dead backend from clients; the counter shows it to operators, each
    // failed try (its addresses', or its only address dialed again).
    count_hidden(leg, backend, attempt.progress.earlier().into_iter());
    (leg.metrics).backend_connect_failed(&route.config.name, backend, error);
    let cut_short = timed_out && attempt.share < turns.fair_share / 2;
    if !cut_short {
        put_aside(leg, backend, error, attempt.began);
    }
    tracing::debug!(route = route.config.name.as_str(), backend, %error, "backend connect failed");
    turns.connect_error = Some(error.to_string());
}

/// Names `backend` in `tried`, unless it is named there already (the common case: one
/// attempt, named as it starts and again as it answers).
fn name(tried: &mut Option<String>, backend: &str) {
    if tried.as_deref() != Some(backend) {
        *tried = Some(backend.to_string());
    }
}

/// One backend's connect attempt, as it races the others.
pub(super) struct Try<'a, 'r> {
    pub(super) backend: &'a str,
    /// Its share of the time: see [`Turns::asking`].
    share: Duration,
    /// When it began, on [`health::now`]'s clock.
    pub(super) began: u64,
    /// Held until the try has ended: answered, or failed.
    pub(super) leave: Leave<'r>,
    /// How far its connect has got: see [`Progress`].
    progress: Arc<Progress>,
    /// The attempt, counted in its backend's open connections from its connect on.
    pub(super) busy: Busy,
}

/// The next backend to try now, with its leave to be tried; a backend that another request
/// is trying again after its failure is put off until the others have been tried.
fn next_backend<'a, 'r>(
    route: &'r Route,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
) -> Option<(&'a str, Leave<'r>)> {
    loop {
        let (backend, leave) = turns.next()?;
        let leave = leave.or_else(|| route.leave(backend));
        match leave {
            Some(leave) => return Some((backend, leave)),
            None => turns.later.push_back(backend),
        }
    }
}

/// Counts connect failures of `backend`'s addresses that the request never saw (another
/// address or backend took it): failover hides them from clients, not from operators.
fn count_hidden(leg: Leg<'_>, backend: &str, kinds: impl Iterator<Item = std::io::ErrorKind>) {
    for kind in kinds {
        let error = std::io::Error::from(kind);
        (leg.metrics).backend_connect_failed(&leg.route.config.name, backend, &error);
    }
}

/// `winner` answered first: the attempts still under way are dropped. One that has dialed
/// every address of its name and heard nothing for `attempt_delay` is as good as silent (a
/// connect on a working network takes a round trip) and is put aside, as a backend whose
/// connect timed out would be; so is one that has waited that long for its name's lookup
/// (else, while a resolver drops queries, every request whose turn it is would wait
/// `attempt_delay` for it, for as long as the lookup lasts). The others (on to a further
/// address, or only just started) owe nothing, and are next in turn should this request
/// need another backend (the winner closing before it answers).
fn settle_losers<'a, 'r, F: Future>(
    leg: Leg<'_>,
    race: Race<Try<'a, 'r>, F>,
    winner: &str,
    turns: &mut Turns<'a, impl ExactSizeIterator<Item = &'a str>>,
) {
    let delay = leg.timing.attempt_delay;
    let mut resume = VecDeque::new();
    for attempt in race.into_tags() {
        // The same backend, listed twice: its other connect answered.
        if attempt.backend == winner {
            continue;
        }
        // Its addresses that failed before it was dropped (refused, or silent past their
        // share) are failures the request never saw.
        count_hidden(leg, attempt.backend, attempt.progress.earlier().into_iter());
        let lookup_stalled = attempt.progress.lookup_stalled_for(delay);
        if !lookup_stalled && !attempt.progress.silent_for(delay) {
            // Its addresses left silent (set aside as its connect was dropped) are failures
            // the request never saw, as those an answering address hides.
            let silent = usize::try_from(attempt.progress.silent()).unwrap_or(usize::MAX);
            let timeouts = std::iter::repeat_n(std::io::ErrorKind::TimedOut, silent);
            count_hidden(leg, attempt.backend, timeouts);
            // Its claim, if a retry's, is given back here (dropped with `attempt`).
            resume.push_back(attempt.backend);
            continue;
        }
        let what = match lookup_stalled {
            true => "its name lookup",
            false => "the connect",
        };
        let error = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer to {what} for over {delay:?}, while another backend answered"),
        );
        (leg.metrics).backend_connect_failed(&leg.route.config.name, attempt.backend, &error);
        put_aside(leg, attempt.backend, &error, attempt.began);
    }
    resume.append(&mut turns.resume);
    turns.resume = resume;
}

/// Puts `backend` aside after it failed to take a connection (see [`crate::health`]), and
/// says so when that is news. Not in a route with no other backend to send requests to.
/// `began`: when the failed try began (on [`health::now`]'s clock). Counted, as each failure
/// is: a backend put aside is a backend to look at.
pub(super) fn put_aside(leg: Leg<'_>, backend: &str, error: &dyn std::fmt::Display, began: u64) {
    let Leg {
        route,
        timing,
        metrics,
        ..
    } = leg;
    let cooldown = timing.cooldown;
    if !route.has_others() || cooldown.is_zero() {
        return;
    }
    let Some(aside) = route
        .health_of(backend)
        .and_then(|h| h.failed(cooldown, began))
    else {
        return;
    };
    metrics.backend_put_aside(&route.config.name, backend);
    tracing::warn!(
        route = route.config.name.as_str(),
        backend,
        %error,
        failures_in_a_row = aside.nth,
        "backend put aside for {:?}: requests go to the route's other backends until it is \
         tried again",
        aside.cool_down
    );
}

/// Notes that `backend` answered; says so if it was put aside until now.
pub(super) fn back_in_turn(route: &Route, backend: &str) {
    if route.health_of(backend).is_some_and(Health::answered) {
        tracing::info!(
            route = route.config.name.as_str(),
            backend,
            "backend answers again; back in turn"
        );
    }
}
