//! New connections per second: TCP connect + TLS handshake (full, no resumption) + upgrade.
//!
//! Each worker opens one connection after another. A handshake is timed from the start of the
//! TCP connect until the 101 response has been read and checked. The connection is then closed
//! without waiting: a close frame (1000) and the TLS close_notify are sent, then the socket is
//! closed (the server's close reply, if any, is not awaited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;

use super::{join_with_grace, measure_window, probe, target_url, Errors, Phase, MEASURE, STOP};
use crate::cli::HandshakeArgs;
use crate::report::Report;
use crate::stats::{self, Percentiles};
use crate::target::Target;
use crate::ws;

pub async fn run(args: &HandshakeArgs) -> Result<Report> {
    let target = Arc::new(Target::new(&args.client).await?);
    probe(&target).await?;
    let phase = Arc::new(Phase::default());
    let errors = Arc::new(Errors::default());
    let done = Arc::new(AtomicU64::new(0));

    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (target, phase, errors, done) =
            (target.clone(), phase.clone(), errors.clone(), done.clone());
        workers.spawn(async move {
            let mut hist = stats::histogram();
            while phase.get() != STOP {
                let t0 = Instant::now();
                match ws::open(&target, 256).await {
                    Ok(conn) => {
                        let took = t0.elapsed();
                        if phase.get() == MEASURE {
                            stats::record(&mut hist, took);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        conn.close_now().await;
                    }
                    Err(e) => {
                        if phase.get() != STOP {
                            errors.add(&e);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist
        });
    }

    let (window, first, last) = measure_window(&phase, &args.client.pids, &args.measure, || {
        done.load(Ordering::Relaxed)
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
    errors.report(&mut r);
    Ok(r)
}
