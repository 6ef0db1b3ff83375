//! New connections per second: TCP connect + TLS handshake (full, no resumption) + upgrade.
//!
//! Each worker opens one connection after another. A handshake is timed from the start of the
//! TCP connect until the 101 response has been read and checked. The connection is then closed
//! without waiting: a close frame (1000) and the TLS close_notify are sent, then the socket is
//! closed (the server's close reply, if any, is not awaited).
//!
//! A server that answers without upgrading (a 503 at its connection limit, say) is part of what
//! is measured: counted in `errors`, the run goes on. Connections that fail below HTTP (refused,
//! reset, TLS failure, timeout) are counted apart in `connection_errors` too; above
//! [`MAX_BROKEN_PCT`] % of the attempts they fail the run (after its report): the target died
//! or broke, and the figures would measure that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{join_with_grace, measure_window, probe, target_url, Errors, Phase, MEASURE, STOP};
use crate::cli::HandshakeArgs;
use crate::report::Report;
use crate::stats::{self, Percentiles};
use crate::target::Target;
use crate::ws;

/// Connection-level failures, in percent of the attempts, above which the run fails. A loaded
/// server may drop a rare connection; a dying one drops most.
pub const MAX_BROKEN_PCT: u64 = 1;

/// What the workers count.
#[derive(Debug, Default)]
struct Counts {
    /// Upgrades completed, warm-up included.
    done: AtomicU64,
    /// Every failed attempt until STOP.
    errors: Errors,
    /// The failed attempts that got no HTTP answer.
    broken: Errors,
}

pub async fn run(args: &HandshakeArgs) -> Result<Report> {
    let target = Arc::new(Target::new(&args.client).await?);
    probe(&target).await?;
    let phase = Arc::new(Phase::default());
    let counts = Arc::new(Counts::default());

    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(worker(target.clone(), phase.clone(), counts.clone()));
    }

    let (window, first, last) = measure_window(&phase, &args.client.pids, &args.measure, || {
        counts.done.load(Ordering::Relaxed)
    })
    .await?;
    let handshakes = last - first;
    let mut hist = stats::histogram();
    for h in join_with_grace(&mut workers, Duration::from_secs(3)).await {
        hist.add(&h).ok();
    }

    let mut r = Report::new("handshake", &target_url(&target));
    r.int("concurrency", args.concurrency as u64, "")
        .num("duration_s", window.secs, "s")
        .int("handshakes", handshakes, "")
        .num("handshakes_per_s", handshakes as f64 / window.secs, "/s")
        .percentiles("handshake_", &Percentiles::of(&hist))
        .cpu(&window, handshakes as f64, "handshake");
    counts.errors.report(&mut r);
    let broken = &counts.broken;
    r.int(
        "connection_errors",
        broken.count(),
        "refused, reset, TLS or timeout",
    );
    // Both counts end at STOP: the upgrades done until then and the errors, which are not
    // counted after it.
    let attempts = last + counts.errors.count();
    if too_many_broken(broken.count(), attempts) {
        r.fail(format!(
            "{} of {attempts} connection attempts failed below HTTP (refused, reset, TLS \
             failure or timeout), more than {MAX_BROKEN_PCT} %: the target failed during the \
             run; first: {}",
            broken.count(),
            broken.first().unwrap_or_default()
        ));
    }
    Ok(r)
}

/// One worker: opens one connection after another until STOP; returns the handshake times of
/// the measured window. An error is counted, and followed by a short pause, so that a dead
/// target is not hammered in a busy loop.
async fn worker(target: Arc<Target>, phase: Arc<Phase>, counts: Arc<Counts>) -> Histogram<u64> {
    let mut hist = stats::histogram();
    while phase.get() != STOP {
        let t0 = Instant::now();
        match ws::open(&target, 256).await {
            Ok(conn) => {
                let took = t0.elapsed();
                if phase.get() == MEASURE {
                    stats::record(&mut hist, took);
                }
                counts.done.fetch_add(1, Ordering::Relaxed);
                conn.close_now().await;
            }
            Err(e) => {
                if phase.get() != STOP {
                    counts.errors.add(&e);
                    if !ws::is_answered(&e) {
                        counts.broken.add(&e);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    hist
}

/// Whether `broken` connection-level failures out of `attempts` exceed [`MAX_BROKEN_PCT`].
fn too_many_broken(broken: u64, attempts: u64) -> bool {
    broken * 100 > attempts * MAX_BROKEN_PCT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_one_percent_broken_fails() {
        assert!(!too_many_broken(0, 0));
        assert!(!too_many_broken(0, 1000));
        assert!(!too_many_broken(10, 1000), "exactly 1 % is tolerated");
        assert!(too_many_broken(11, 1000));
        assert!(too_many_broken(1, 50), "one in a short run is 2 %");
        assert!(too_many_broken(300, 300), "a dead target");
    }
}
