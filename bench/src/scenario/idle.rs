//! Idle tunnels: open N at a bounded concurrency, print `READY n=N` once all are up, hold them.
//!
//! With `--pid`, the proxy's RSS is read before connecting and `--settle` after READY, and the
//! report gives KiB per tunnel; system-wide kernel memory (slab, TCP socket buffers) is reported
//! beside it, and that includes the tool's and the backend's sockets. The proxy's CPU time from
//! before the first connect to the end of the hold is reported per tunnel opened: the handshakes'
//! cost plus whatever holding idle tunnels costs it (timers, keep-alive pings).
//!
//! SIGINT and SIGTERM are handled from before the first connection: after READY (during the
//! settle too, which then ends with the memory read at once) one ends the hold and the run
//! reports; before READY it ends the run with an error, not the process by the signal.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

use super::{probe, target_url, Errors};
use crate::cli::IdleArgs;
use crate::procstat::{self, CpuSnapshot, CpuWindow};
use crate::report::Report;
use crate::target::Target;
use crate::ws;

#[derive(Debug, Clone, Copy)]
struct Memory {
    proxy_rss_kib: Option<u64>,
    slab_kib: Option<u64>,
    tcp_mem_kib: Option<u64>,
}

/// Memory now; the proxy's RSS is empty if `pids` is, or if one of them ended (a crash
/// during the run, which the report then says).
fn memory(pids: &[u32]) -> Memory {
    Memory {
        proxy_rss_kib: (!pids.is_empty())
            .then(|| procstat::processes_rss_kib(pids).ok())
            .flatten(),
        slab_kib: procstat::slab_kib(),
        tcp_mem_kib: procstat::tcp_mem_kib(),
    }
}

pub async fn run(args: &IdleArgs) -> Result<Report> {
    // Before anything is opened: from here on a SIGINT or SIGTERM is the run's to handle (by
    // default it would end the process at once, with no report), whenever it comes.
    let mut stop = Stop::install()?;
    let opened = tokio::select! {
        opened = open(args) => opened?,
        signal = stop.next() => bail!(Interrupted(signal)),
    };
    let Opened {
        target,
        before,
        cpu_start,
        tunnels,
    } = opened;
    print_ready(args.client.json, tunnels.up, args.count as u64 - tunnels.up)?;

    // A signal during the settle ends it and the hold: the memory is read at once, and the
    // report says how long the settle lasted.
    let ready = Instant::now();
    let stopped = wait(Some(args.settle), &mut stop).await;
    let pids = &args.client.pids;
    let reading = Reading {
        before,
        after: memory(pids),
        held: tunnels.up - tunnels.dropped.count(),
        settle_secs: ready.elapsed().as_secs_f64(),
    };
    if !stopped {
        let rest = args.hold.map(|hold| hold.saturating_sub(args.settle));
        wait(rest, &mut stop).await;
    }
    let cpu = CpuWindow::between(&cpu_start, &CpuSnapshot::take(pids));
    Ok(report(&target, tunnels, &reading, &cpu))
}

/// What is known once the tunnels are open.
struct Opened {
    target: Arc<Target>,
    /// Memory before the tunnels were opened.
    before: Memory,
    cpu_start: CpuSnapshot,
    tunnels: Tunnels,
}

/// Checks the target, reads memory and CPU, and opens the tunnels.
async fn open(args: &IdleArgs) -> Result<Opened> {
    let pids = &args.client.pids;
    // The proxy's memory per tunnel is what `--pid` is given for: a process whose memory
    // cannot be read (a kernel thread, another user's) is said before anything is opened,
    // not left out of the report.
    if !pids.is_empty() {
        procstat::processes_rss_kib(pids).context("the memory of the process given with --pid")?;
    }
    let target = Arc::new(Target::new(&args.client).await?);
    probe(&target).await?;
    let before = memory(pids);
    let cpu_start = CpuSnapshot::take(pids);
    let tunnels = open_tunnels(&target, args.count, args.concurrency).await?;
    Ok(Opened {
        target,
        before,
        cpu_start,
        tunnels,
    })
}

/// The memory reading the per-tunnel figures come from.
struct Reading {
    before: Memory,
    after: Memory,
    /// Tunnels still open when `after` was read.
    held: u64,
    /// From READY to the reading: `--settle`, or less if a signal cut it short.
    settle_secs: f64,
}

/// SIGINT and SIGTERM, handled by the run from before anything is opened.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    fn install() -> Result<Stop> {
        let handle = |kind| signal(kind).context("cannot handle SIGINT and SIGTERM");
        Ok(Stop {
            interrupt: handle(SignalKind::interrupt())?,
            terminate: handle(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM; returns its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Waits `limit` (forever if none) or until a signal; returns whether a signal ended it.
async fn wait(limit: Option<Duration>, stop: &mut Stop) -> bool {
    let Some(limit) = limit else {
        stop.next().await;
        return true;
    };
    tokio::select! {
        _ = tokio::time::sleep(limit) => false,
        _ = stop.next() => true,
    }
}

/// A signal came before the tunnels were open: there is nothing to report.
#[derive(Debug)]
pub struct Interrupted(&'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted by {} before the tunnels were open (before READY): nothing to report",
            self.0
        )
    }
}

impl std::error::Error for Interrupted {}

/// The tunnels once all tries to open them are over. The tasks holding them go on counting in
/// `dropped` until the runtime ends.
struct Tunnels {
    /// Opened.
    up: u64,
    /// Time from the first try to the last one's end.
    open_secs: f64,
    errors: Arc<Errors>,
    /// Ended since they were opened.
    dropped: Arc<Errors>,
}

/// Opens `count` tunnels, at most `concurrency` at a time, each held by its own task; returns
/// when every try has succeeded or failed. Fails if none could be opened.
async fn open_tunnels(target: &Arc<Target>, count: u32, concurrency: u32) -> Result<Tunnels> {
    let sem = Arc::new(Semaphore::new(concurrency as usize));
    let errors = Arc::new(Errors::default());
    let dropped = Arc::new(Errors::default());
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let t0 = Instant::now();
    for _ in 0..count {
        tokio::spawn(open_and_hold(
            target.clone(),
            sem.clone(),
            errors.clone(),
            dropped.clone(),
            ready_tx.clone(),
        ));
    }
    // The channel ends once every task has reported: each drops its sender after its report.
    drop(ready_tx);
    let mut up = 0u64;
    while let Some(ok) = ready_rx.recv().await {
        up += ok as u64;
    }
    let open_secs = t0.elapsed().as_secs_f64();
    if up == 0 {
        bail!(
            "no tunnel could be opened: {}",
            errors.first().unwrap_or_default()
        );
    }
    Ok(Tunnels {
        up,
        open_secs,
        errors,
        dropped,
    })
}

/// One tunnel: opens it under a permit of `sem` (released once open, so the count held is not
/// bounded by it), reports on `ready` whether it came up, then holds it until it ends.
async fn open_and_hold(
    target: Arc<Target>,
    sem: Arc<Semaphore>,
    errors: Arc<Errors>,
    dropped: Arc<Errors>,
    ready: mpsc::UnboundedSender<bool>,
) {
    let permit = sem.acquire_owned().await;
    let conn = ws::open(&target, 256).await;
    drop(permit);
    let mut conn = match conn {
        Ok(c) => {
            let _ = ready.send(true);
            c
        }
        Err(e) => {
            errors.add(&e);
            let _ = ready.send(false);
            return;
        }
    };
    drop(ready);
    // Hold: answer pings; any end of the tunnel is counted.
    loop {
        if let Err(e) = conn.recv().await {
            dropped.add(&e);
            return;
        }
    }
}

/// Says that the tunnels are up (and how many failed, if any), for whoever waits to measure.
fn print_ready(json: bool, up: u64, failed: u64) -> Result<()> {
    // On stdout for a person or a script waiting for it; on stderr with --json, so that
    // stdout is one JSON document.
    let mut out: Box<dyn Write> = match json {
        true => Box::new(std::io::stderr().lock()),
        false => Box::new(std::io::stdout().lock()),
    };
    if failed == 0 {
        writeln!(out, "READY n={up}")?;
    } else {
        writeln!(out, "READY n={up} failed={failed}")?;
    }
    out.flush()?;
    Ok(())
}

/// The report: memory grown between the reading's `before` and `after` is divided among the
/// tunnels it `held`, CPU used while opening and holding them among the tunnels opened.
fn report(target: &Target, tunnels: Tunnels, reading: &Reading, cpu: &CpuWindow) -> Report {
    let Reading {
        before,
        after,
        held,
        settle_secs,
    } = *reading;
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if held > 0 => Some((b as f64 - a as f64) / held as f64),
        _ => None,
    };
    let Tunnels {
        up,
        open_secs,
        errors,
        dropped,
    } = tunnels;
    let mut r = Report::new("idle", &target_url(target));
    r.int("tunnels", up, "opened")
        .int("held", held, "still open at measurement")
        .num("open_s", open_secs, "s")
        .num("opens_per_s", up as f64 / open_secs.max(1e-9), "/s")
        .num(
            "settle_s",
            settle_secs,
            "s from READY to the memory reading",
        );
    if let (Some(b), Some(a)) = (before.proxy_rss_kib, after.proxy_rss_kib) {
        r.int("proxy_rss_before_kib", b, "KiB")
            .int("proxy_rss_after_kib", a, "KiB");
    }
    if let Some(v) = per(before.proxy_rss_kib, after.proxy_rss_kib) {
        r.num("proxy_rss_kib_per_tunnel", v, "KiB");
    }
    if let Some(v) = per(before.slab_kib, after.slab_kib) {
        r.num("kernel_slab_kib_per_tunnel", v, "KiB (system-wide)");
    }
    if let Some(v) = per(before.tcp_mem_kib, after.tcp_mem_kib) {
        r.num("kernel_tcp_mem_kib_per_tunnel", v, "KiB (system-wide)");
    }
    // Per tunnel opened, not held: the opening is most of the CPU, and a tunnel dropped during
    // the hold cost its handshake all the same.
    r.cpu(cpu, up as f64, "tunnel");
    // Memory is divided among the tunnels held when it was read: with some gone by then (an
    // idle timeout shorter than --settle, say), the figure is not per idle tunnel any more.
    if held < up {
        r.fail(format!(
            "{} of the {up} tunnels ended before the memory was read: the per-tunnel figures do not measure idle tunnels (is the target's idle timeout shorter than --settle?)",
            up - held
        ));
    }
    if before.proxy_rss_kib.is_some() && after.proxy_rss_kib.is_none() {
        r.fail(
            "a process given with --pid ended before its memory was read (did the proxy crash?)",
        );
    }
    // Read again, not taken from `held`: this counts the drops during the whole hold.
    r.int("dropped", dropped.count(), "during hold");
    if let Some(why) = dropped.first() {
        r.text("first_drop", &why);
        // The memory figures stand (read with every tunnel up), but a target that ends idle
        // tunnels during the hold is worth a word where a person looks, not only a field.
        if held == up && !cpu.proxy_lost {
            super::say(format_args!(
                "warning: {} of the {up} tunnels ended after the memory was read, during the \
                 hold (first: {why}): the target closes idle tunnels",
                dropped.count()
            ));
        }
    }
    // Fewer tunnels than asked for: the figures are per tunnel held, but not of the run asked
    // for (5,000 idle tunnels), and the proxy refusing or failing them is worth a failure.
    let asked = up + errors.count();
    if super::too_many_broken(errors.count(), asked) {
        r.fail(format!(
            "{} of the {asked} tunnels could not be opened, more than {} %: the figures are of \
             the {up} opened, not of the run asked for; first: {}",
            errors.count(),
            super::MAX_BROKEN_PCT,
            errors.first().unwrap_or_default()
        ));
    }
    errors.report(&mut r);
    r
}
