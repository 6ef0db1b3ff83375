//! Echo round-trip latency at a fixed total rate, open loop.
//!
//! A pacer thread (precise timer slack) walks the schedule `start + j / rate` and hands send `j`
//! to connection `j % C`. Latency is measured from the scheduled time (corrected for coordinated
//! omission), and also from the moment the message was handed to its connection ("service"
//! time). The difference of the two is the tool's own send lag, reported too. A tool too busy
//! to read the echoes as they come adds its own wait to both, which neither shows: such a run
//! fails (see `tool_bound`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{open_many, target_url, Errors};
use crate::cli::LatencyArgs;
use crate::procstat::{allowed_cpus, this_thread_cpu_us, CpuSnapshot, CpuWindow};
use crate::report::Report;
use crate::stats::{self, connection_for, scheduled_offset, Percentiles};
use crate::target::Target;
use crate::ws::{Message, WsConn};

/// How long to wait for outstanding replies after the last send.
const DRAIN: Duration = Duration::from_secs(2);

struct ConnResult {
    corrected: Histogram<u64>,
    service: Histogram<u64>,
    send_lag: Histogram<u64>,
    lost: u64,
}

impl ConnResult {
    fn new() -> ConnResult {
        ConnResult {
            corrected: stats::histogram(),
            service: stats::histogram(),
            send_lag: stats::histogram(),
            lost: 0,
        }
    }

    fn add(&mut self, other: &ConnResult) {
        self.corrected.add(&other.corrected).ok();
        self.service.add(&other.service).ok();
        self.send_lag.add(&other.send_lag).ok();
        self.lost += other.lost;
    }
}

pub async fn run(args: &LatencyArgs) -> Result<Report> {
    // clap refuses such a rate; this guards callers that build the arguments themselves.
    if !crate::cli::valid_rate(args.rate) {
        bail!("--rate must be a number of messages per second from 0.000001 to 10000000");
    }
    let span = args.measure.warmup + args.measure.duration;
    check_backlog(args.rate, args.size, span)?;
    let target = Arc::new(Target::new(&args.client).await?);
    super::probe(&target).await?;
    let conns = open_many(&target, args.connections, 64, 16 * 1024).await?;
    let errors = Arc::new(Errors::default());
    let message = Arc::new(Message::binary(args.size));

    // 20 ms ahead: time for the tasks and the pacer thread to start before the first send is due.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + args.measure.warmup;
    let end = measure_from + args.measure.duration;

    let (senders, mut tasks) = spawn_drivers(conns, &errors, &message, measure_from, end);
    let window_span = (start, measure_from, end);
    let pacer = spawn_pacer(senders, window_span, args.rate, args.connections)?;

    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = CpuSnapshot::take(&args.client.pids);
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = CpuSnapshot::take(&args.client.pids);
    let window = CpuWindow::between(&cpu_start, &cpu_end);

    let mut total = ConnResult::new();
    while let Some(res) = tasks.join_next().await {
        if let Ok(r) = res {
            total.add(&r);
        }
    }
    let pacer_us = pacer.join().unwrap_or(0);
    let mut r = report(args, &target, &total, &window);
    errors.report(&mut r);
    let measured = total.corrected.len();
    if let Some(why) = shortfall(measured, total.lost, args.rate, args.measure.duration) {
        r.fail(why);
    }
    let cpus = allowed_cpus().map_or(usize::MAX, |cpus| cpus.len().max(1));
    let busy = ToolCpu {
        tool_us: window.tool_us,
        pacer_us,
        secs: window.secs,
    };
    if let Some(why) = tool_bound(busy, args.client.threads, cpus) {
        r.fail(why);
    }
    Ok(r)
}

/// The tool's CPU over the measured window: all of it, and its pacer thread's share.
#[derive(Clone, Copy)]
struct ToolCpu {
    tool_us: u64,
    pacer_us: u64,
    secs: f64,
}

/// Why the latencies measure this tool rather than the target, if they do: its `threads`
/// runtime threads were (nearly) always busy (the pacer's CPU left out: it only schedules
/// the sends), or all its threads together (nearly) filled the `cpus` CPUs it may run on (a
/// `taskset` to one CPU: the pacer's share is then the runtime's loss). Echoes then waited in
/// its sockets for it to read them, and that wait is in every figure (service time
/// included), while its send lag, taken as a message is handed to the socket, does not show
/// it. Or its pacer was: at a rate beyond what it can schedule it never sleeps, and sends go
/// out late and in bursts.
fn tool_bound(cpu: ToolCpu, threads: u16, cpus: usize) -> Option<String> {
    let busy = |us: u64| us as f64 / 1e6 / cpu.secs.max(1e-9);
    let pacer = busy(cpu.pacer_us);
    let runtime = busy(cpu.tool_us.saturating_sub(cpu.pacer_us));
    let whole = busy(cpu.tool_us);
    let room = (usize::from(threads) + 1).min(cpus);
    let (pct, on) = if runtime >= 0.9 * f64::from(threads) {
        (runtime, format!("{threads} runtime thread(s)"))
    } else if whole >= 0.9 * room as f64 {
        (
            whole,
            format!("the {room} CPU(s) it may use (its runtime and pacer threads together)"),
        )
    } else if pacer >= 0.9 {
        return Some(format!(
            "this tool's pacer thread was {:.0} % busy: the rate is more than it can schedule, \
             so sends went out late and in bursts, and the latencies above are its own as much \
             as the target's; lower --rate",
            pacer * 100.0
        ));
    } else {
        return None;
    };
    Some(format!(
        "this tool was {:.0} % busy on {on}: echoes waited for it to read them, so the \
         latencies above are its own as much as the target's; give it more --threads (and a \
         CPU of its own) or lower --rate",
        pct * 100.0
    ))
}

/// The most bytes a run may schedule: open loop, what a target that falls behind has not taken
/// waits in this tool's write buffers, so rate × size × run time is memory the tool may need,
/// and past this it would abort on allocation halfway through instead of refusing at once.
const MAX_SCHEDULED: f64 = super::MAX_QUEUED as f64;

fn check_backlog(rate: f64, size: usize, span: Duration) -> Result<()> {
    let each = (size as u64 + super::PER_MESSAGE) as f64;
    let scheduled = rate * each * span.as_secs_f64();
    if scheduled > MAX_SCHEDULED {
        bail!(
            "--rate {rate} × {size} B over {:.1} s (warm-up included) is {:.0} MiB to send, \
             which a target that falls behind leaves queued in this tool; at most {} MiB: lower \
             -r, -s or -d",
            span.as_secs_f64(),
            scheduled / f64::from(1u32 << 20),
            MAX_SCHEDULED as u64 >> 20
        );
    }
    Ok(())
}

/// Why a run with `measured` echoes in the window and `lost` messages never echoed does not
/// measure the target's latency, if it does not. A lost message has no latency to record, so
/// the percentiles of a run that lost any leave out exactly the slowest.
fn shortfall(measured: u64, lost: u64, rate: f64, window: Duration) -> Option<String> {
    let behind = format!("the target (or this tool) did not keep up with --rate {rate}");
    if lost > 0 && measured == 0 {
        Some(format!(
            "no echo came back for a message of the measured window, and {lost} messages got \
             none within {DRAIN:?} of the last send: {behind}"
        ))
    } else if lost > 0 {
        Some(format!(
            "{lost} messages got no echo within {DRAIN:?} of the last send: {behind}, and the \
             percentiles above leave those messages out"
        ))
    } else if measured == 0 {
        Some(format!(
            "no message was due in the {window:?} window at --rate {rate}"
        ))
    } else {
        None
    }
}

/// One task per connection, [`drive`]n by the sends it is handed on its channel; returns the
/// channels' senders, in the order of `conns`, and the tasks.
fn spawn_drivers(
    conns: Vec<WsConn>,
    errors: &Arc<Errors>,
    message: &Arc<Message>,
    measure_from: Instant,
    end: Instant,
) -> (Vec<mpsc::UnboundedSender<Instant>>, JoinSet<ConnResult>) {
    let mut senders = Vec::with_capacity(conns.len());
    let mut tasks = JoinSet::new();
    for conn in conns {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let (errors, message) = (errors.clone(), message.clone());
        tasks.spawn(async move {
            let mut r = ConnResult::new();
            if let Err(e) = drive(conn, rx, &message, measure_from, end + DRAIN, &mut r).await {
                errors.add(&e);
            }
            r
        });
    }
    (senders, tasks)
}

/// The pacer thread: hands each send its scheduled time, on the connection whose turn it is,
/// until `end`; returns its own CPU time (µs) from `measure_from` on. A thread of its own, not a task: it sleeps
/// blocking, with a precise timer slack (a per-thread setting) the runtime's threads need not have.
fn spawn_pacer(
    senders: Vec<mpsc::UnboundedSender<Instant>>,
    (start, measure_from, end): (Instant, Instant, Instant),
    rate: f64,
    connections: u32,
) -> std::io::Result<std::thread::JoinHandle<u64>> {
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            crate::sys::precise_timer_slack();
            let mut j = 0u64;
            let mut oversleep = Oversleep::default();
            let mut measured_from = None;
            loop {
                let due = start + scheduled_offset(j, rate);
                if due >= end {
                    break;
                }
                if due >= measure_from && measured_from.is_none() {
                    measured_from = Some(this_thread_cpu_us());
                }
                oversleep.wait_until(due);
                // A closed channel means that connection failed; its error is recorded.
                let _ = senders[connection_for(j, connections)].send(due);
                j += 1;
            }
            // No send due in the window: none of its CPU was.
            measured_from.map_or(0, |from| this_thread_cpu_us().saturating_sub(from))
        })
}

/// The report, without the errors: the run's totals over the measured window.
fn report(args: &LatencyArgs, target: &Target, total: &ConnResult, window: &CpuWindow) -> Report {
    let messages = total.corrected.len();
    let secs = args.measure.duration.as_secs_f64();
    let (service, send_lag) = (
        Percentiles::of(&total.service),
        Percentiles::of(&total.send_lag),
    );
    let mut r = Report::new("latency", &target_url(target));
    r.int("connections", args.connections as u64, "")
        .num("rate", args.rate, "msg/s target")
        .int("size", args.size as u64, "B")
        .num("duration_s", secs, "s")
        .int("messages", messages, "sent in the window, echoed")
        .num("msgs_per_s", echo_rate(messages, secs, args.rate), "msg/s")
        .percentiles("", &Percentiles::of(&total.corrected))
        .num("service_p50_us", service.p50_us, "µs")
        .num("service_p99_us", service.p99_us, "µs")
        .num("send_lag_p50_us", send_lag.p50_us, "µs")
        .num("send_lag_p99_us", send_lag.p99_us, "µs")
        .int("lost", total.lost, "no reply")
        .cpu(window, messages as f64, "msg");
    r
}

/// Echoes per second over a window of `secs`, of `messages` sent on a schedule at `rate`: at
/// most `rate`. A window holds the whole sends due in it, one more than `rate × secs` at
/// worst, so the plain quotient exceeds the rate when the window is short (one send in a
/// window shorter than the interval between two read as more than the rate), while the sends
/// went at the rate.
fn echo_rate(messages: u64, secs: f64, rate: f64) -> f64 {
    (messages as f64 / secs).min(rate)
}

/// Wakes close to a deadline without spinning (the backend and the runtime thread may share this
/// core): sleeps until the deadline minus the typical oversleep of the OS timer, learned as a
/// moving average. It may wake a little early; the latency of a message sent early is then
/// measured from when it was actually sent (see [`drive`]), so it is never understated.
#[derive(Debug, Default)]
struct Oversleep {
    estimate_ns: f64,
}

impl Oversleep {
    /// Upper bound for the learned oversleep.
    const MAX_NS: f64 = 100_000.0;

    fn wait_until(&mut self, due: Instant) {
        let wake = due - Duration::from_nanos(self.estimate_ns as u64);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
            let late = Instant::now().saturating_duration_since(wake).as_nanos() as f64;
            self.estimate_ns = (0.9 * self.estimate_ns + 0.1 * late).min(Self::MAX_NS);
        }
    }
}

async fn drive(
    mut conn: WsConn,
    mut rx: mpsc::UnboundedReceiver<Instant>,
    message: &Message,
    measure_from: Instant,
    give_up: Instant,
    r: &mut ConnResult,
) -> Result<()> {
    // (scheduled, sent) of each message in flight; the echo preserves order.
    let mut in_flight: VecDeque<(Instant, Instant)> = VecDeque::new();
    let mut closed = false;
    loop {
        let step = poll_fn(|cx| {
            while !closed {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(scheduled)) => {
                        conn.send(message);
                        in_flight.push_back((scheduled, Instant::now()));
                    }
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            if closed && in_flight.is_empty() {
                return Poll::Ready(Ok(false));
            }
            conn.poll_drive(cx).map(|res| res.map(|_| true))
        });
        let more = match tokio::time::timeout_at(give_up.into(), step).await {
            Ok(res) => res?,
            Err(_) => {
                r.lost += in_flight.len() as u64;
                return Ok(());
            }
        };
        if !more {
            return Ok(());
        }
        let now = Instant::now();
        let got = conn.take_received()?;
        for _ in 0..got.messages {
            let Some((scheduled, sent)) = in_flight.pop_front() else {
                bail!("received more echoes than messages sent");
            };
            if scheduled >= measure_from {
                let corrected = stats::corrected_latency(scheduled, sent, now);
                stats::record(&mut r.corrected, corrected);
                stats::record(&mut r.service, now - sent);
                stats::record(&mut r.send_lag, sent.saturating_duration_since(scheduled));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_could_queue_more_than_the_limit_is_refused_up_front() {
        let span = Duration::from_secs(11);
        assert!(check_backlog(5000.0, 64, span).is_ok(), "the defaults");
        assert!(check_backlog(100.0, 1 << 20, span).is_ok());
        // A million 1-byte messages a second are their bookkeeping's size, not a few MiB.
        assert!(check_backlog(1e6, 1, Duration::from_secs(70)).is_err());
        let refused = check_backlog(5000.0, 1 << 20, span)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("55003 MiB to send"), "{refused}");
        assert!(refused.contains("at most 4096 MiB"), "{refused}");
    }

    #[test]
    fn the_echo_rate_is_never_above_the_rate_sent_at() {
        assert_eq!(
            echo_rate(1, 0.3, 1.0),
            1.0,
            "one send in a window of 0.3 intervals"
        );
        assert_eq!(echo_rate(3, 2.5, 1.0), 1.0);
        assert_eq!(echo_rate(5000, 1.0, 5000.0), 5000.0);
        assert_eq!(
            echo_rate(4000, 1.0, 5000.0),
            4000.0,
            "below it, as measured"
        );
    }

    #[test]
    fn a_run_that_kept_the_tool_busy_measures_the_tool() {
        let cpu = |tool_us, pacer_us| ToolCpu {
            tool_us,
            pacer_us,
            secs: 10.0,
        };
        assert_eq!(tool_bound(cpu(500_000, 0), 1, 2), None, "5 % busy");
        assert_eq!(tool_bound(cpu(8_500_000, 0), 1, 2), None, "85 %");
        let why = tool_bound(cpu(9_250_000, 0), 1, 2).unwrap();
        assert!(
            why.starts_with("this tool was 92 % busy on 1 runtime"),
            "{why}"
        );
        assert_eq!(
            tool_bound(cpu(9_250_000, 0), 2, 4),
            None,
            "92 % of two threads' time"
        );
        assert!(tool_bound(cpu(19_000_000, 0), 2, 4).is_some());
        // The pacer's share is not the runtime's, on two CPUs; on one, it is taken from it.
        let paced = cpu(10_300_000, 5_800_000);
        assert_eq!(
            tool_bound(paced, 1, 2),
            None,
            "45 % runtime, 103 % of two CPUs"
        );
        let behind = tool_bound(cpu(12_000_000, 9_500_000), 1, 2).unwrap();
        assert!(
            behind.starts_with("this tool's pacer thread was 95 % busy"),
            "{behind}"
        );
        let pinned = cpu(9_990_000, 4_200_000);
        let why = tool_bound(pinned, 1, 1).unwrap();
        assert!(
            why.contains("100 % busy on the 1 CPU(s) it may use"),
            "{why}"
        );
    }

    #[test]
    fn a_run_without_samples_or_with_lost_messages_is_a_shortfall() {
        let window = Duration::from_secs(10);
        assert_eq!(shortfall(50_000, 0, 5000.0, window), None);

        let why = shortfall(0, 14_009_856, 1e8, window).unwrap();
        assert!(why.contains("no echo came back"), "{why}");
        assert!(why.contains("14009856 messages"), "{why}");
        assert!(why.contains("--rate 100000000"), "{why}");

        let why = shortfall(49_990, 10, 5000.0, window).unwrap();
        assert!(why.starts_with("10 messages got no echo"), "{why}");
        assert!(why.contains("leave those messages out"), "{why}");

        let why = shortfall(0, 0, 0.01, Duration::from_millis(300)).unwrap();
        assert!(
            why.contains("no message was due in the 300ms window"),
            "{why}"
        );
    }
}
