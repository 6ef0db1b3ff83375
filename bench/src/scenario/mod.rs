//! The scenarios, and what they share: the measured window, error collection, opening many
//! connections at a bounded concurrency.

pub mod handshake;
pub mod idle;
pub mod latency;
mod quiet;
pub mod throughput;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The most message bytes a run may leave queued in the tool's write buffers (throughput's in
/// flight, latency's scheduled): past it a run is refused up front, not aborted on allocation.
const MAX_QUEUED: u64 = 4 << 30;

/// What each queued message costs the tool beside its payload: its frame header and the
/// bookkeeping of its send (its times, its place in the write buffer). Counted with the
/// payload against [`MAX_QUEUED`]: a billion 1-byte messages are 64 GiB, not 1.
const PER_MESSAGE: u64 = 64;

use crate::cli::{Command, MeasureArgs};
use crate::procstat::{CpuSnapshot, CpuWindow};
use crate::report::Report;
use crate::target::Target;
use crate::ws::{self, WsConn};

/// A line on stderr, if it can be written: a warning lost to a full disk or a closed pipe must
/// not end the run (`eprintln!` panics then) and take its report with it.
pub(crate) fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs a command to completion, printing its report.
pub fn run(command: Command) -> Result<()> {
    match crate::sys::raise_nofile_limit() {
        Ok(limit) => check_open_files(&command, limit)?,
        Err(e) => say(format_args!(
            "warning: cannot raise the open-files limit: {e}"
        )),
    }
    if let Command::Echo(args) = &command {
        return crate::echo::run(args);
    }
    let Some(client) = command.client() else {
        bail!("not a load scenario");
    };
    let json = client.json;
    // Before any load: a wrong --pid must not cost the target a run.
    crate::procstat::processes_cpu_us(&client.pids).context("--pid")?;
    let runtime = crate::sys::runtime(client.threads)?;
    let report = runtime.block_on(async {
        match &command {
            Command::Echo(_) => unreachable!("handled above"),
            Command::Handshake(a) => handshake::run(a).await,
            Command::Latency(a) => latency::run(a).await,
            Command::Throughput(a) => throughput::run(a).await,
            Command::Bulk(a) => throughput::run_bulk(a).await,
            Command::Idle(a) => idle::run(a).await,
        }
    })?;
    if let Some(e) = report.get("first_error").and_then(|v| v.as_str()) {
        say(format_args!("warning: errors during the run; first: {e}"));
    }
    // Held connections and stragglers are dropped with the runtime, without waiting for them.
    runtime.shutdown_background();
    report
        .write_to(&mut std::io::stdout().lock(), json)
        .context("cannot write the report to stdout")?;
    verdict(&command, &report)
}

/// Descriptors the tool needs beside its connections: the runtime's, the standard streams,
/// /proc files read for CPU and memory.
const OWN_FILES: u64 = 64;

/// Refuses a run that would hold more connections than this process may open files (`limit`,
/// its open-files limit once raised): it would fail partway, its connections' errors then
/// looking like the target's.
fn check_open_files(command: &Command, limit: u64) -> Result<()> {
    let connections = command.connections();
    if connections + OWN_FILES > limit {
        // Named by the option that sets the count, where there is one.
        let lower = match command {
            Command::Echo(_) | Command::Bulk(_) => "",
            Command::Idle(_) => " or lower -n",
            Command::Handshake(_) | Command::Latency(_) | Command::Throughput(_) => " or lower -c",
        };
        bail!(
            "{connections} connection(s) open at once need {} open files, and this process may \
             open {limit} (its hard limit, `ulimit -Hn`): raise that{lower}",
            connections + OWN_FILES
        );
    }
    Ok(())
}

/// Whether the printed figures measure the target: a run whose report says they do not, or a
/// steady run with any error, fails.
fn verdict(command: &Command, report: &Report) -> Result<()> {
    // Refusals are part of what the handshake and idle runs measure; in a steady-state run
    // a failed connection leaves the rest of the window unmeasured, so its figures are not.
    let steady = matches!(
        command,
        Command::Latency(_) | Command::Throughput(_) | Command::Bulk(_)
    );
    match report.get("errors").and_then(|v| v.as_u64()) {
        Some(n) if steady && n > 0 => bail!(
            "the target failed during the run ({n} errors): the figures above do not measure it"
        ),
        _ => {}
    }
    match report.failure() {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// Connection-level failures, in percent of the attempts, above which a run fails (the
/// handshake scenario's attempts, the idle one's tunnels). A loaded server may drop a rare
/// connection; a dying one drops most.
pub const MAX_BROKEN_PCT: u64 = 1;

/// Whether `broken` connection-level failures out of `attempts` exceed [`MAX_BROKEN_PCT`].
fn too_many_broken(broken: u64, attempts: u64) -> bool {
    broken * 100 > attempts * MAX_BROKEN_PCT
}

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const STOP: u8 = 2;

/// Phase of a run, shared with the workers.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

impl Phase {
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, p: u8) {
        self.0.store(p, Ordering::Relaxed)
    }
}

/// Counts errors and keeps the first message.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    pub fn add(&self, e: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            if first.is_none() {
                *first = Some(format!("{e:#}"));
            }
        }
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    pub fn first(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
    /// Adds `errors` and, if any, `first_error` to a report.
    pub fn report(&self, r: &mut Report) {
        r.int("errors", self.count(), "");
        if let Some(first) = self.first() {
            r.text("first_error", &first);
        }
    }
}

/// Warm-up, then the measured window: returns the CPU used in it (by the processes `pids` and
/// the tool) and the workers' counters (`snap`) at its start and end. Sets MEASURE at its start
/// and STOP at its end.
pub async fn measure_window<T>(
    phase: &Phase,
    pids: &[u32],
    measure: &MeasureArgs,
    snap: impl Fn() -> T,
) -> Result<(CpuWindow, T, T)> {
    tokio::time::sleep(measure.warmup).await;
    phase.set(MEASURE);
    let first = snap();
    let start = CpuSnapshot::take(pids);
    tokio::time::sleep(measure.duration).await;
    let last = snap();
    let end = CpuSnapshot::take(pids);
    phase.set(STOP);
    Ok((CpuWindow::between(&start, &end), first, last))
}

/// One connection and upgrade, so a down or refusing target gives one clear error up front.
pub async fn probe(target: &Target) -> Result<()> {
    let conn = ws::open(target, 4096)
        .await
        .with_context(|| format!("cannot open a WebSocket to {}", target_url(target)))?;
    conn.close_now().await;
    Ok(())
}

pub fn target_url(target: &Target) -> String {
    format!(
        "{}://{}{}",
        if target.url.tls { "wss" } else { "ws" },
        target.url.authority,
        target.url.path
    )
}

/// Opens `n` connections, at most `concurrency` at a time. Fails on the first error.
pub async fn open_many(
    target: &Arc<Target>,
    n: u32,
    concurrency: u32,
    read_buffer: usize,
) -> Result<Vec<WsConn>> {
    let sem = Arc::new(Semaphore::new(concurrency as usize));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            ws::open(&target, read_buffer).await
        });
    }
    let mut conns = Vec::with_capacity(n as usize);
    while let Some(res) = set.join_next().await {
        let conn = res.context("connection task failed")??;
        conns.push(conn);
    }
    Ok(conns)
}

/// Waits for tasks until `grace` passes, then aborts the rest.
pub async fn join_with_grace<T: 'static>(set: &mut JoinSet<T>, grace: Duration) -> Vec<T> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(Some(res)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok(v) = res {
            out.push(v);
        }
    }
    set.abort_all();
    out
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
