//! New connections per second: TCP connect + TLS handshake (full, no resumption) + upgrade.
//!
//! Each worker opens one connection after another. A handshake is timed from the start of the
//! TCP connect until the 101 response has been read and checked. The percentiles are of the
//! handshakes begun in the measured window, those that end after it included (a target that
//! stalls at the window's end must show in them): they are waited for a few seconds past the
//! window, and one still under way then counts with that wait as its time (a lower bound),
//! and is reported as `unfinished`. The connection is then closed without waiting: a close
//! frame (1000) and the TLS close_notify are sent, then the socket is closed (the server's
//! close reply, if any, is not awaited).
//!
//! A server that answers without upgrading (a 503 at its connection limit, say) is part of what
//! is measured: counted in `errors`, the run goes on. Errors are counted in the window in which
//! they end, as the handshakes are; the warm-up's apart, in `warmup_errors`. Connections that
//! fail below HTTP (refused, reset, TLS failure, timeout) are counted apart in
//! `connection_errors` too; above
//! [`MAX_BROKEN_PCT`] % of the attempts they fail the run (after its report): the target died
//! or broke, and the figures would measure that. So does a stall: no attempt answered (an
//! upgrade, or a refusal) for over a second and a quarter of the window (`longest_quiet_s`),
//! whose handshakes/s would be an average over work and silence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::quiet::{self, Clock, Quiet};
use super::{
    join_with_grace, measure_window, probe, target_url, too_many_broken, Errors, Phase,
    MAX_BROKEN_PCT, MEASURE, STOP, WARMUP,
};
use crate::cli::HandshakeArgs;
use crate::report::Report;
use crate::stats::{self, Percentiles};
use crate::target::Target;
use crate::ws;

/// What the workers count.
#[derive(Default)]
struct Counts {
    /// Upgrades completed, warm-up included.
    done: AtomicU64,
    /// The failed attempts that ended in the measured window, as the upgrades counted are
    /// those that ended in it.
    errors: Errors,
    /// Of `errors`, those that got no HTTP answer.
    broken: Errors,
    /// The failed attempts that ended in the warm-up: not part of the measurement, but
    /// reported apart (a target refusing at first shows).
    warmup_errors: AtomicU64,
    /// The times of the handshakes begun in the measured window.
    times: Mutex<Option<Histogram<u64>>>,
    /// Handshakes begun in the measured window and not over yet.
    under_way: AtomicU64,
    /// Time with no attempt answered (an upgrade or a refusal: the target at work).
    quiet: Quiet,
    clock: Clock,
}

/// How long past the window the handshakes begun in it are waited for.
const GRACE: Duration = Duration::from_secs(3);

pub async fn run(args: &HandshakeArgs) -> Result<Report> {
    let target = Arc::new(Target::new(&args.client).await?);
    probe(&target).await?;
    let phase = Arc::new(Phase::default());
    let counts = Arc::new(Counts::default());
    *lock(&counts.times) = Some(stats::histogram());

    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(worker(target.clone(), phase.clone(), counts.clone()));
    }

    let (window, (first, _), (last, quiet_ns)) =
        measure_window(&phase, &args.client.pids, &args.measure, || {
            let quiet = counts.quiet.longest(counts.clock.now_ns());
            (counts.done.load(Ordering::Relaxed), quiet)
        })
        .await?;
    let handshakes = last - first;
    // Each worker returns once the handshake it had under way at the window's end is over.
    join_with_grace(&mut workers, GRACE).await;
    let unfinished = counts.under_way.load(Ordering::Relaxed);
    let mut hist = lock(&counts.times).take().unwrap_or_else(stats::histogram);
    for _ in 0..unfinished {
        // As long as they were waited for, at least: the window's end and the grace.
        stats::record(&mut hist, GRACE);
    }

    let mut r = Report::new("handshake", &target_url(&target));
    r.int("concurrency", args.concurrency as u64, "")
        .num("duration_s", window.secs, "s")
        .int("handshakes", handshakes, "")
        .num("handshakes_per_s", handshakes as f64 / window.secs, "/s")
        .percentiles("handshake_", &Percentiles::of(&hist))
        .int(
            "unfinished",
            unfinished,
            "still under way past the window and grace",
        )
        .cpu(&window, handshakes as f64, "handshake")
        .num(
            "longest_quiet_s",
            Duration::from_nanos(quiet_ns).as_secs_f64(),
            "s with no attempt answered",
        );
    // Connections failing below HTTP first: a target gone mid-run is that, and its silence
    // after is what follows from it, not a stall of a target still there.
    let broken = &counts.broken;
    // Both counts are of the measured window: the upgrades and the failures that ended in it.
    let attempts = handshakes + counts.errors.count();
    if too_many_broken(broken.count(), attempts) {
        r.fail(format!(
            "{} of {attempts} connection attempts failed below HTTP (refused, reset, TLS \
             failure or timeout), more than {MAX_BROKEN_PCT} %: the target failed during the \
             run; first: {}",
            broken.count(),
            broken.first().unwrap_or_default()
        ));
    }
    // Refusals are answers, measured as such (see above); no answer at all is a failure.
    if handshakes == 0 && counts.errors.count() == 0 {
        r.fail("no handshake completed in the measured window: the target did not answer in time");
    } else if let Some(quiet) = quiet::stall(quiet_ns, window.secs) {
        r.fail(format!(
            "no attempt was answered for {quiet:.1} s of the {:.1} s measured window: the \
             target stalled, so handshakes/s is an average over work and silence",
            window.secs
        ));
    }
    counts.errors.report(&mut r);
    r.int(
        "warmup_errors",
        counts.warmup_errors.load(Ordering::Relaxed),
        "in the warm-up, not counted above",
    );
    r.int(
        "connection_errors",
        broken.count(),
        "refused, reset, TLS or timeout",
    );
    // The proxy's work on refused attempts (a TLS handshake each, a 503 or a 404) is in its
    // CPU too: per attempt beside per upgrade, which alone would overstate an upgrade's cost.
    if let (Some(proxy), true) = (window.proxy_us, attempts > handshakes) {
        let per = proxy as f64 / attempts as f64;
        r.num(
            "proxy_cpu_us_per_attempt",
            per,
            "µs, refused attempts included",
        );
    }
    Ok(r)
}

/// One worker: opens one connection after another until STOP; returns the handshake times of
/// the measured window. An error is counted, and followed by a short pause, so that a dead
/// target is not hammered in a busy loop.
async fn worker(target: Arc<Target>, phase: Arc<Phase>, counts: Arc<Counts>) {
    while phase.get() != STOP {
        let t0 = Instant::now();
        let measured = phase.get() == MEASURE;
        counts
            .under_way
            .fetch_add(u64::from(measured), Ordering::Relaxed);
        let opened = ws::open(&target, 256).await;
        counts
            .under_way
            .fetch_sub(u64::from(measured), Ordering::Relaxed);
        match opened {
            Ok(conn) => {
                let took = t0.elapsed();
                if let (true, Some(hist)) = (measured, lock(&counts.times).as_mut()) {
                    stats::record(hist, took);
                }
                counts.done.fetch_add(1, Ordering::Relaxed);
                // Heard in the window it ends in, as it is counted.
                counts
                    .quiet
                    .heard(counts.clock.now_ns(), phase.get() == MEASURE);
                conn.close_now().await;
            }
            Err(e) => {
                counts.failed(phase.get(), &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Counts {
    /// Counts a failed attempt in the phase in which it ended, as an upgrade is counted in
    /// the window in which it ends: in the warm-up apart, after STOP not at all.
    fn failed(&self, phase: u8, e: &anyhow::Error) {
        match phase {
            WARMUP => {
                self.warmup_errors.fetch_add(1, Ordering::Relaxed);
            }
            MEASURE => {
                self.errors.add(e);
                if ws::is_answered(e) {
                    self.quiet.heard(self.clock.now_ns(), true);
                } else {
                    self.broken.add(e);
                }
            }
            _ => {}
        }
    }
}

/// The histogram, whatever a worker that panicked holding it left.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_counts_in_the_phase_it_ends_in() {
        let counts = Counts::default();
        let refused = anyhow::Error::new(ws::Answered("server answered 503".into()));
        let reset = anyhow::anyhow!("read: connection reset");
        counts.failed(WARMUP, &refused);
        counts.failed(WARMUP, &reset);
        counts.failed(MEASURE, &refused);
        counts.failed(MEASURE, &reset);
        counts.failed(STOP, &reset);
        assert_eq!(counts.warmup_errors.load(Ordering::Relaxed), 2);
        assert_eq!((counts.errors.count(), counts.broken.count()), (2, 1));
        assert_eq!(
            counts.errors.first().as_deref(),
            Some("server answered 503")
        );
    }
}
