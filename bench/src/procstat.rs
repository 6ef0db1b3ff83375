//! CPU time and memory from /proc: the proxy's (by PID) and the tool's own.

use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};

/// Clock ticks per second for /proc/PID/stat times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The fields of /proc/PID/stat after the command name: the state (field 3) is the first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    // The command name (field 2) may contain spaces and ')': fields resume after the last ')'.
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The state letter (field 3) from the text of /proc/PID/stat: `R`, `S`, `Z`...
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

/// A `--pid` process that has exited but whose parent has not reaped it yet: its /proc entry
/// stays (a zombie, state `Z`, or `X` while it goes), but there is no process left to
/// measure, so it is treated as one whose entry is gone.
#[derive(Debug)]
pub struct Ended {
    pub pid: u32,
    pub state: char,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (pid, state) = (self.pid, self.state);
        write!(
            f,
            "process {pid} has ended (state {state} in /proc/{pid}/stat: exited, not yet reaped)"
        )
    }
}

impl std::error::Error for Ended {}

/// CPU time (user + system) of a process in microseconds; an error if it has ended, reaped
/// or not.
pub fn process_cpu_us(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("read {path} (is process {pid} running?)"))?;
    if let Some(state @ ('Z' | 'X')) = parse_stat_state(&stat) {
        return Err(Ended { pid, state }.into());
    }
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| anyhow!("cannot parse {path}"))?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

/// Sum of CPU µs over several processes.
pub fn processes_cpu_us(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| process_cpu_us(p)).sum()
}

/// The calling thread's CPU time (user + system) in microseconds, to the nanosecond
/// (/proc's figures are in 10 ms ticks).
pub fn this_thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, valid for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// This process's CPU time (user + system) in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `Key: value kB` field from /proc/PID/status or /proc/meminfo text.
pub fn parse_kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read {path} (is process {pid} running?)"))?;
    parse_kib_field(&text, "VmRSS").ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// Sum of RSS over several processes, in KiB.
pub fn processes_rss_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Kernel slab memory (system-wide) in KiB.
pub fn slab_kib() -> Option<u64> {
    parse_kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab")
}

/// The TCP `mem` field (pages, system-wide) of /proc/net/sockstat text.
pub fn parse_sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(word) = it.next() {
        if word == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// TCP socket buffer memory in KiB (sockstat pages × page size), system-wide.
pub fn tcp_mem_kib() -> Option<u64> {
    let pages = parse_sockstat_tcp_mem(&std::fs::read_to_string("/proc/net/sockstat").ok()?)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page / 1024)
}

/// The one CPU this process may run on, if it is pinned to exactly one (`taskset -c N`).
pub fn pinned_cpu() -> Option<usize> {
    let cpus = allowed_cpus()?;
    match cpus[..] {
        [cpu] => Some(cpu),
        _ => None,
    }
}

/// The CPUs this process may run on (its affinity: `taskset` narrows it), if they can be read.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: sched_getaffinity writes into the zeroed set whose size we pass; CPU_ISSET only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set));
        Some(cpus.collect())
    }
}

/// (busy, total) clock ticks of CPU `n` from /proc/stat text; idle and iowait are not busy.
pub fn parse_cpu_ticks(stat: &str, n: usize) -> Option<(u64, u64)> {
    let label = format!("cpu{n}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&label))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn cpu_ticks(n: usize) -> Option<(u64, u64)> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?, n)
}

/// CPU times at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    pub at: Instant,
    pub proxy_us: Option<u64>,
    /// A process given with `--pid` could not be read.
    pub proxy_lost: bool,
    pub tool_us: u64,
    /// (busy, total) ticks of the CPU the tool is pinned to: it shares that CPU with the
    /// backend in `compare.sh`, and a saturated CPU there means a client-bound run.
    pub load_cpu: Option<(u64, u64)>,
}

impl CpuSnapshot {
    /// The CPU times now. A process of `pids` that cannot be read (it ended: the proxy
    /// crashed mid-run) leaves `proxy_us` empty and `proxy_lost` set, not the run failed: its
    /// report is what says what happened.
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        let proxy = (!pids.is_empty()).then(|| processes_cpu_us(pids).ok());
        CpuSnapshot {
            at: Instant::now(),
            proxy_us: proxy.flatten(),
            proxy_lost: proxy.is_some_and(|us| us.is_none()),
            tool_us: self_cpu_us(),
            load_cpu: pinned_cpu().and_then(cpu_ticks),
        }
    }
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pub secs: f64,
    pub proxy_us: Option<u64>,
    /// A process given with `--pid` ended during the window: no CPU figure for it.
    pub proxy_lost: bool,
    pub tool_us: u64,
    /// How busy the tool's CPU was (all processes on it), in percent; `None` if not pinned.
    pub load_cpu_busy_pct: Option<f64>,
}

impl CpuWindow {
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot) -> CpuWindow {
        CpuWindow {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            proxy_us: match (a.proxy_us, b.proxy_us) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                _ => None,
            },
            proxy_lost: a.proxy_lost || b.proxy_lost,
            tool_us: b.tool_us.saturating_sub(a.tool_us),
            load_cpu_busy_pct: match (a.load_cpu, b.load_cpu) {
                (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                    Some(busy1.saturating_sub(busy0) as f64 * 100.0 / (total1 - total0) as f64)
                }
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (ng inx) (w)) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 1 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_state(stat), Some('S'));
        assert_eq!(parse_stat_state("7 (x) Z 1 7 7 0 -1"), Some('Z'));
        assert_eq!(parse_stat_state("garbage"), None);
    }

    /// A child that has exited, left unreaped (a zombie) until `reap` is called.
    fn zombie() -> std::process::Child {
        let child = std::process::Command::new("true").spawn().unwrap();
        // Waits for the exit without reaping (WNOWAIT): the /proc entry stays, in state Z.
        // SAFETY: waitid writes only into the zeroed siginfo it is given.
        let waited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(waited, 0, "{}", std::io::Error::last_os_error());
        child
    }

    #[test]
    fn a_zombie_is_an_ended_process_not_one_using_no_cpu() {
        let mut child = zombie();
        let err = process_cpu_us(child.id()).unwrap_err();
        assert!(err.downcast_ref::<Ended>().is_some(), "{err:#}");
        assert!(format!("{err:#}").contains("has ended (state Z"), "{err:#}");
        // As one whose entry is gone: the snapshot says the proxy was lost.
        let snapshot = CpuSnapshot::take(&[std::process::id(), child.id()]);
        assert!(snapshot.proxy_lost && snapshot.proxy_us.is_none());
        child.wait().unwrap();
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        process_cpu_us(pid).unwrap();
        assert!(process_cpu_us(u32::MAX).is_err());
    }

    #[test]
    fn parses_kib_fields_and_sockstat() {
        let status = "Name:\tx\nVmRSS:\t  12345 kB\nVmSwap:\t0 kB\n";
        assert_eq!(parse_kib_field(status, "VmRSS"), Some(12345));
        assert_eq!(parse_kib_field(status, "VmHWM"), None);
        let sockstat =
            "sockets: used 10\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 42\nUDP: inuse 1 mem 3\n";
        assert_eq!(parse_sockstat_tcp_mem(sockstat), Some(42));
    }

    #[test]
    fn parses_one_cpus_busy_and_total_ticks() {
        let stat = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                    cpu0 5 0 5 40 0 0 0 0 0 0\n\
                    cpu1 30 1 9 50 10 0 0 0 7 0\n\
                    intr 1 2 3\n";
        // busy = user + nice + system + irq + softirq + steal; idle and iowait are not.
        assert_eq!(parse_cpu_ticks(stat, 1), Some((40, 100)));
        assert_eq!(parse_cpu_ticks(stat, 0), Some((10, 50)));
        assert_eq!(parse_cpu_ticks(stat, 2), None);
    }
}
