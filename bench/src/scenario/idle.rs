//! Idle tunnels: open N at a bounded concurrency, print `READY n=N` once all are up, hold them.
//!
//! With `--pid`, the proxy's RSS is read before connecting and `--settle` after READY, and the
//! report gives KiB per tunnel; system-wide kernel memory (slab, TCP socket buffers) is reported
//! beside it, and that includes the tool's and the backend's sockets. The proxy's CPU time from
//! before the first connect to the end of the hold is reported per tunnel opened: the handshakes'
//! cost plus whatever holding idle tunnels costs it (timers, keep-alive pings).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
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
    let target = Arc::new(Target::new(&args.client).await?);
    probe(&target).await?;
    let pids = &args.client.pids;
    let before = memory(pids);
    let cpu_start = CpuSnapshot::take(pids);
    let tunnels = open_tunnels(&target, args.count, args.concurrency).await?;
    print_ready(args.client.json, tunnels.up, args.count as u64 - tunnels.up)?;

    tokio::time::sleep(args.settle).await;
    let after = memory(pids);
    let held = tunnels.up - tunnels.dropped.count();
    match args.hold {
        Some(hold) => tokio::time::sleep(hold.saturating_sub(args.settle)).await,
        None => wait_for_signal().await?,
    }
    let cpu = CpuWindow::between(&cpu_start, &CpuSnapshot::take(pids));
    Ok(report(&target, tunnels, held, before, after, &cpu))
}

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

/// The report: memory grown between `before` and `after` is divided among the `held` tunnels,
/// CPU used while opening and holding them among the tunnels opened.
fn report(
    target: &Target,
    tunnels: Tunnels,
    held: u64,
    before: Memory,
    after: Memory,
    cpu: &CpuWindow,
) -> Report {
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
        .num("opens_per_s", up as f64 / open_secs.max(1e-9), "/s");
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
    }
    errors.report(&mut r);
    r
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
