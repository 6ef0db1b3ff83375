//! Throughput: C connections each keep W messages of S bytes in flight; every echo received is
//! replaced by a new message. `bulk` is the same on one connection with 64 KiB messages,
//! reported in MB/s (10^6 bytes) each way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::task::JoinSet;

use super::quiet::{self, Clock, Quiet};
use super::{join_with_grace, measure_window, open_many, target_url, Errors, Phase, MEASURE, STOP};
use crate::cli::{BulkArgs, ClientArgs, MeasureArgs, ThroughputArgs};
use crate::procstat::CpuWindow;
use crate::report::Report;
use crate::target::Target;
use crate::ws::{Message, WsConn};

struct Counters {
    recv_msgs: AtomicU64,
    recv_bytes: AtomicU64,
    clock: Clock,
    /// Nothing echoed on any connection.
    any: Quiet,
    /// Nothing echoed on each connection: one tunnel stalled while the others went on is a
    /// target that does not work, however steady the total looks.
    each: Vec<Quiet>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    recv_msgs: u64,
    recv_bytes: u64,
    /// The longest quiet so far, the one still going on included.
    quiet_ns: u64,
    /// The longest quiet so far on one connection, and which.
    conn_quiet: (u64, usize),
}

impl Counters {
    fn new(connections: usize) -> Counters {
        Counters {
            recv_msgs: AtomicU64::new(0),
            recv_bytes: AtomicU64::new(0),
            clock: Clock::new(),
            any: Quiet::default(),
            each: (0..connections).map(|_| Quiet::default()).collect(),
        }
    }

    /// Bytes came back on connection `conn`: the quiets before them end (counted if in the
    /// measured window).
    fn echoed(&self, conn: usize, measured: bool) {
        let now = self.clock.now_ns();
        self.any.heard(now, measured);
        if let Some(quiet) = self.each.get(conn) {
            quiet.heard(now, measured);
        }
    }

    /// The counts now; the first call opens the measured window.
    fn snapshot(&self) -> Snapshot {
        let now = self.clock.now_ns();
        let conn_quiet = (self.each.iter().enumerate())
            .map(|(i, quiet)| (quiet.longest(now), i))
            .max()
            .unwrap_or_default();
        Snapshot {
            recv_msgs: self.recv_msgs.load(Ordering::Relaxed),
            recv_bytes: self.recv_bytes.load(Ordering::Relaxed),
            quiet_ns: self.any.longest(now),
            conn_quiet,
        }
    }
}

impl Snapshot {
    /// The counts from `earlier` to this one; the longest quiets of the window ending here.
    fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            recv_msgs: self.recv_msgs - earlier.recv_msgs,
            recv_bytes: self.recv_bytes - earlier.recv_bytes,
            ..*self
        }
    }
}

/// Why the figures do not measure the target, if it went quiet for too long of a window of
/// `secs` (see [`quiet::stall`]): all of it, or one of `connections`.
fn stalled(delta: &Snapshot, secs: f64, connections: u32) -> Option<String> {
    if let Some(quiet) = quiet::stall(delta.quiet_ns, secs) {
        return Some(format!(
            "nothing came back for {quiet:.1} s of the {secs:.1} s measured window: the target \
             stalled, so the rate is an average over work and silence"
        ));
    }
    let (conn_quiet, conn) = delta.conn_quiet;
    quiet::stall(conn_quiet, secs).map(|quiet| {
        format!(
            "connection {} of {connections} had nothing come back for {quiet:.1} s of the \
             {secs:.1} s measured window while the others did: a tunnel stalled, so the \
             figures are not those of a working target",
            conn + 1
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
    let counters = Arc::new(Counters::new(conns.len()));
    let message = Arc::new(Message::binary(size));

    let mut tasks = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        tasks.spawn(keep_window_full(
            (i, conn),
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
    (index, mut conn): (usize, WsConn),
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
                counters.echoed(index, phase.get() == MEASURE);
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
        .num("longest_quiet_s", quiet_secs(&p), "s with nothing echoed")
        .num(
            "longest_connection_quiet_s",
            Duration::from_nanos(p.delta.conn_quiet.0).as_secs_f64(),
            "s with nothing echoed on one connection",
        );
    p.errors.report(&mut r);
    if p.delta.recv_msgs == 0 {
        r.fail(nothing_echoed("no echoed message", p.window.secs));
    } else if let Some(why) = stalled(&p.delta, secs, args.connections) {
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
    } else if let Some(why) = stalled(&p.delta, secs, 1) {
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

    const S: u64 = 1_000_000_000;

    #[test]
    fn one_connection_stalled_while_the_others_went_on_fails_the_run() {
        let c = Counters::new(3);
        c.snapshot();
        // Connections 0 and 2 echo all along; connection 1 once, at the start.
        c.each[1].heard(S / 10, true);
        for quiet in [&c.any, &c.each[0], &c.each[2]] {
            for t in 1..=20 {
                quiet.heard(t * S / 4, true);
            }
        }
        let last = c.each.iter().map(|q| q.longest(5 * S)).collect::<Vec<_>>();
        assert!(last[1] > 4 * S && last[0] <= S / 4, "{last:?}");
        let delta = Snapshot {
            quiet_ns: c.any.longest(5 * S),
            conn_quiet: (last[1], 1),
            ..Snapshot::default()
        };
        let why = stalled(&delta, 5.0, 3).expect("a stalled tunnel");
        assert!(
            why.starts_with("connection 2 of 3 had nothing come back"),
            "{why}"
        );
        let fine = Snapshot {
            conn_quiet: (S / 2, 1),
            ..delta
        };
        assert_eq!(stalled(&fine, 5.0, 3), None);
    }
}
