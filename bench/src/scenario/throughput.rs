//! Throughput: C connections each keep W messages of S bytes in flight; every echo received is
//! replaced by a new message. `bulk` is the same on one connection with 64 KiB messages,
//! reported in MB/s (10^6 bytes) each way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::task::JoinSet;

use super::{join_with_grace, measure_window, open_many, target_url, Errors, Phase, MEASURE, STOP};
use crate::cli::{BulkArgs, ClientArgs, MeasureArgs, ThroughputArgs};
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::target::Target;
use crate::ws::{Message, WsConn};

struct Counters {
    recv_msgs: AtomicU64,
    recv_bytes: AtomicU64,
    /// What the two below count from.
    clock: Instant,
    /// When bytes last came back, in ns from `clock`.
    last_echo_ns: AtomicU64,
    /// The longest time in the measured window with nothing coming back, up to the last echo.
    longest_quiet_ns: AtomicU64,
    /// When the measured window opened (the first snapshot), in ns from `clock`; `u64::MAX`
    /// before. A quiet that began in the warm-up counts from here, not from its start.
    window_ns: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    recv_msgs: u64,
    recv_bytes: u64,
    /// The longest quiet so far, the one still going on included.
    quiet_ns: u64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            recv_msgs: AtomicU64::new(0),
            recv_bytes: AtomicU64::new(0),
            clock: Instant::now(),
            last_echo_ns: AtomicU64::new(0),
            longest_quiet_ns: AtomicU64::new(0),
            window_ns: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bytes came back: the quiet before them ends (counted if in the measured window).
    fn echoed(&self, measured: bool) {
        self.echoed_at(self.now_ns(), measured);
    }

    fn echoed_at(&self, now: u64, measured: bool) {
        // The latest wins: a thread storing an older time after a newer one would lengthen
        // the next gap.
        let before = self.last_echo_ns.fetch_max(now, Ordering::Relaxed);
        if measured {
            let gap = now.saturating_sub(self.quiet_from(before));
            (self.longest_quiet_ns).fetch_max(gap, Ordering::Relaxed);
        }
    }

    /// Where a quiet since the echo at `before` counts from: the window's opening if it began
    /// earlier (an echo between the phase's change and the first snapshot counts nothing, as
    /// the window is not open yet).
    fn quiet_from(&self, before: u64) -> u64 {
        match self.window_ns.load(Ordering::Relaxed) {
            u64::MAX => u64::MAX,
            opened => before.max(opened),
        }
    }

    /// The counts now; the first call opens the measured window.
    fn snapshot(&self) -> Snapshot {
        self.snapshot_at(self.now_ns())
    }

    fn snapshot_at(&self, now: u64) -> Snapshot {
        self.window_ns.fetch_min(now, Ordering::Relaxed);
        let still_quiet =
            now.saturating_sub(self.quiet_from(self.last_echo_ns.load(Ordering::Relaxed)));
        Snapshot {
            recv_msgs: self.recv_msgs.load(Ordering::Relaxed),
            recv_bytes: self.recv_bytes.load(Ordering::Relaxed),
            quiet_ns: self
                .longest_quiet_ns
                .load(Ordering::Relaxed)
                .max(still_quiet),
        }
    }
}

impl Snapshot {
    /// The counts from `earlier` to this one; the longest quiet of the window ending here.
    fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            recv_msgs: self.recv_msgs - earlier.recv_msgs,
            recv_bytes: self.recv_bytes - earlier.recv_bytes,
            quiet_ns: self.quiet_ns,
        }
    }
}

/// A measured window with a quiet this long, and longer than a quarter of the window, did
/// not measure the target's rate: it stopped answering for much of it, and the figures are
/// an average over work and silence.
const STALL: Duration = Duration::from_secs(1);

/// Why the figures do not measure the target, if it went quiet for `quiet_ns` of a window of
/// `secs`.
fn stalled(quiet_ns: u64, secs: f64) -> Option<String> {
    let quiet = Duration::from_nanos(quiet_ns);
    (quiet > STALL && quiet.as_secs_f64() > secs / 4.0).then(|| {
        format!(
            "nothing came back for {:.1} s of the {secs:.1} s measured window: the target \
             stalled, so the rate is an average over work and silence",
            quiet.as_secs_f64()
        )
    })
}

struct PumpResult {
    window: CpuWindow,
    delta: Snapshot,
    errors: Arc<Errors>,
    target: String,
}

async fn pump(
    client: &ClientArgs,
    measure: &MeasureArgs,
    connections: u32,
    size: usize,
    window: u32,
) -> Result<PumpResult> {
    check_in_flight(connections, window, size)?;
    let target = Arc::new(Target::new(client).await?);
    super::probe(&target).await?;
    let conns = open_many(&target, connections, 64, read_buffer(size)).await?;
    let phase = Arc::new(Phase::default());
    let errors = Arc::new(Errors::default());
    let counters = Arc::new(Counters::new());
    let message = Arc::new(Message::binary(size));

    let mut tasks = JoinSet::new();
    for conn in conns {
        tasks.spawn(keep_window_full(
            conn,
            window,
            message.clone(),
            phase.clone(),
            errors.clone(),
            counters.clone(),
        ));
    }

    let (cpu, first, last) =
        measure_window(&phase, &client.pids, measure, || counters.snapshot()).await?;
    join_with_grace(&mut tasks, Duration::from_millis(500)).await;
    Ok(PumpResult {
        window: cpu,
        delta: last.since(&first),
        errors,
        target: target_url(&target),
    })
}

/// The most bytes a run may keep in flight: each connection's write buffer holds a copy of
/// every message it has in flight, so connections × window × size is memory the tool needs,
/// and past this it would abort on allocation halfway through instead of refusing at once.
const MAX_IN_FLIGHT: u64 = super::MAX_QUEUED;

fn check_in_flight(connections: u32, window: u32, size: usize) -> Result<()> {
    let each = size as u64 + super::PER_MESSAGE;
    let in_flight = u64::from(connections) * u64::from(window) * each;
    if in_flight > MAX_IN_FLIGHT {
        bail!(
            "{connections} connections × {window} in flight × {size} B (and {} B of bookkeeping each) is {} MiB in flight; at most {} MiB: lower -c, -w or -s",
            super::PER_MESSAGE,
            in_flight >> 20,
            MAX_IN_FLIGHT >> 20
        );
    }
    Ok(())
}

/// The read buffer of each connection for messages of `size` bytes.
fn read_buffer(size: usize) -> usize {
    // Large messages: large reads (few syscalls); small ones: 16 KiB per connection is plenty.
    if size >= 16 * 1024 {
        256 * 1024
    } else {
        16 * 1024
    }
}

/// One connection: sends `window` messages, then a new one for each echo received, until the
/// run's end (STOP). A failure after STOP is not counted: the measured window is over. Each
/// reply is checked to be the echo owed (see [`WsConn::send`]): a target echoing a message
/// twice, or sending messages of its own, would otherwise have its extra messages replaced
/// and counted as echoes (bulk's MB/s doubled).
async fn keep_window_full(
    mut conn: WsConn,
    window: u32,
    message: Arc<Message>,
    phase: Arc<Phase>,
    errors: Arc<Errors>,
    counters: Arc<Counters>,
) {
    for _ in 0..window {
        conn.send(&message);
    }
    while phase.get() != STOP {
        match conn.recv().await {
            Ok((got, _)) => {
                counters.echoed(phase.get() == MEASURE);
                counters
                    .recv_msgs
                    .fetch_add(got.messages, Ordering::Relaxed);
                counters
                    .recv_bytes
                    .fetch_add(got.payload_bytes, Ordering::Relaxed);
                for _ in 0..got.messages {
                    conn.send(&message);
                }
            }
            Err(e) => {
                if phase.get() != STOP {
                    errors.add(&e);
                }
                return;
            }
        }
    }
}

pub async fn run(args: &ThroughputArgs) -> Result<Report> {
    let p = pump(
        &args.client,
        &args.measure,
        args.connections,
        args.size,
        args.window,
    )
    .await?;
    let secs = p.window.secs;
    let mut r = Report::new("throughput", &p.target);
    r.int("connections", args.connections as u64, "")
        .int("size", args.size as u64, "B")
        .int("window", args.window as u64, "in flight per connection")
        .num("duration_s", secs, "s")
        .int("messages", p.delta.recv_msgs, "echoed")
        .num("msgs_per_s", p.delta.recv_msgs as f64 / secs, "msg/s")
        .num(
            "mb_per_s",
            p.delta.recv_bytes as f64 / 1e6 / secs,
            "MB/s each way",
        )
        .cpu(&p.window, p.delta.recv_msgs as f64, "msg")
        .num("longest_quiet_s", quiet_secs(&p), "s with nothing echoed");
    p.errors.report(&mut r);
    if p.delta.recv_msgs == 0 {
        r.fail(nothing_echoed("no echoed message", p.window.secs));
    } else if let Some(why) = stalled(p.delta.quiet_ns, secs) {
        r.fail(why);
    }
    Ok(r)
}

pub async fn run_bulk(args: &BulkArgs) -> Result<Report> {
    let p = pump(&args.client, &args.measure, 1, args.size, args.window).await?;
    let secs = p.window.secs;
    let mut r = Report::new("bulk", &p.target);
    r.int("size", args.size as u64, "B")
        .int("window", args.window as u64, "in flight")
        .num("duration_s", secs, "s")
        .int("messages", p.delta.recv_msgs, "echoed")
        // One figure: in a closed echo loop what is sent comes back, so the bytes sent in the
        // window differ from those received by at most what is in flight.
        .num(
            "mb_per_s",
            p.delta.recv_bytes as f64 / 1e6 / secs,
            "MB/s each way",
        )
        .cpu(&p.window, p.delta.recv_bytes as f64 / 1e6, "mb")
        .num("longest_quiet_s", quiet_secs(&p), "s with nothing echoed");
    p.errors.report(&mut r);
    // Bytes, not messages: a message too large to end within the window still measures MB/s.
    if p.delta.recv_bytes == 0 {
        r.fail(nothing_echoed("not one echoed byte", p.window.secs));
    } else if let Some(why) = stalled(p.delta.quiet_ns, secs) {
        r.fail(why);
    }
    Ok(r)
}

fn quiet_secs(p: &PumpResult) -> f64 {
    Duration::from_nanos(p.delta.quiet_ns).as_secs_f64()
}

/// Why a run that received `nothing` in its measured window of `secs` does not measure the
/// target: a rate of zero would read as a (very slow) result.
fn nothing_echoed(nothing: &str, secs: f64) -> String {
    format!(
        "{nothing} came back in the {secs:.1} s measured window: the target answered nothing \
         (or not within the window), so there is no rate to report"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_over_a_second_and_a_quarter_of_the_window_is_a_stall() {
        let ns = |secs: f64| (secs * 1e9) as u64;
        assert!(stalled(ns(1.4), 2.0).is_some());
        assert!(
            stalled(ns(0.9), 2.0).is_none(),
            "a second at most: a hiccup"
        );
        assert!(
            stalled(ns(1.2), 10.0).is_none(),
            "a small part of a long window"
        );
        assert!(stalled(ns(3.0), 10.0).is_some());
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_quiet_begun_in_the_warm_up_counts_from_the_window_opening() {
        let c = Counters::new();
        c.echoed_at(S, false);
        let first = c.snapshot_at(3 * S);
        c.echoed_at(4 * S, true);
        let last = c.snapshot_at(4 * S + S / 2);
        assert_eq!(
            last.since(&first).quiet_ns,
            S,
            "3 s quiet, 1 s of it measured"
        );
        // Still quiet at the window's end: also counted from the opening.
        let c = Counters::new();
        c.echoed_at(S, false);
        let first = c.snapshot_at(2 * S);
        let last = c.snapshot_at(5 * S);
        assert_eq!(last.since(&first).quiet_ns, 3 * S);
    }

    #[test]
    fn a_quiet_inside_the_window_counts_whole() {
        let c = Counters::new();
        c.echoed_at(S, false);
        let first = c.snapshot_at(S + 1);
        c.echoed_at(2 * S, true);
        c.echoed_at(5 * S, true);
        let last = c.snapshot_at(5 * S + 10);
        assert_eq!(last.since(&first).quiet_ns, 3 * S);
    }
}
