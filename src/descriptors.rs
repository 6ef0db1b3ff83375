//! The process's open-files limit. Each client connection takes a descriptor and each tunnel
//! a second one, so the limit a process starts with decides how many tunnels fit; and the soft
//! limit most start with (1024, kept low for programs that still use `select(2)`) is far below
//! the hard limit the system allows. It is raised to the hard limit at start, as Go's runtime
//! does by itself and nginx's `worker_rlimit_nofile` does when asked, and what is left is
//! checked against what `limits.max_connections` asks for.

use std::fs::File;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::out_of_descriptors;
use crate::sync::lock;

/// Descriptors the process holds beside its connections' (listeners, the runtime, file
/// watches, config reads, the log, the admin endpoint's reserve), with room to spare.
const OWN: u64 = 64;

/// When accepting last found no descriptor left, for the readiness probe: a process out of
/// them is alive but cannot take another client. Looking at that moment alone would not do:
/// with clients queued, each descriptor that frees up is taken by the next accept within its
/// back-off, so a probe may find one free in between.
#[derive(Default)]
pub(crate) struct Shortage(Mutex<Option<Instant>>);

/// How long after accepting last found no descriptor the process still counts as short.
const SHORT_FOR: Duration = Duration::from_secs(2);

impl Shortage {
    /// Accepting found no descriptor left.
    pub(crate) fn noted(&self) {
        *lock(&self.0) = Some(Instant::now());
    }

    /// Whether the process is out of descriptors: none can be opened now, or accepting found
    /// none within the last [`SHORT_FOR`].
    pub(crate) fn now(&self) -> bool {
        let lately = lock(&self.0).is_some_and(|at| at.elapsed() < SHORT_FOR);
        lately || matches!(File::open("/dev/null"), Err(e) if out_of_descriptors(&e))
    }
}

/// The soft limit of open files, if it can be read.
pub fn limit() -> Option<u64> {
    rlimit().map(|(soft, _)| soft)
}

/// Raises the soft limit of open files to the hard one; the limits before and after if it
/// was raised.
pub fn raise() -> Option<(u64, u64)> {
    let (soft, hard) = rlimit()?;
    if soft >= hard {
        return None;
    }
    set_soft(hard).then_some((soft, hard))
}

/// Says when the limit leaves room for fewer tunnels than `max_connections` asks for: past
/// it, connections fail to be accepted, and backends to be reached, before the limit meant
/// to refuse them with a clear 503 comes into play.
pub(crate) fn warn_if_short(max_connections: usize) {
    let Some(limit) = limit() else { return };
    let fit = limit.saturating_sub(OWN) / 2;
    if fit < max_connections as u64 {
        // Below `OWN` wsgate still serves (it starts with far fewer), but not many.
        let room = match fit {
            0 => "hardly any tunnels".to_string(),
            fit => format!("about {fit} tunnels"),
        };
        tracing::warn!(
            limit,
            max_connections,
            "the open-files limit (ulimit -n) leaves room for {room} (two descriptors each, after {OWN} kept for wsgate's own), fewer than limits.max_connections: raise it (LimitNOFILE= in a systemd unit, ulimit -n, the container's nofile limit) to at least {}, or lower max_connections",
            2 * max_connections as u64 + OWN
        );
    }
}

// `rlim_t` is `u64` on Linux and macOS, but `i64` on the BSDs: hence the casts.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn rlimit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur as u64, limit.rlim_max as u64))
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn set_soft(soft: u64) -> bool {
    let Some((_, hard)) = rlimit() else {
        return false;
    };
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit only reads the struct it is given, which lives across the call.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

#[cfg(not(unix))]
fn rlimit() -> Option<(u64, u64)> {
    None
}

#[cfg(not(unix))]
fn set_soft(_: u64) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_read_is_the_one_the_kernel_reports() {
        // /proc/self/limits: "Max open files  <soft>  <hard>  files".
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert_eq!(limit(), Some(soft));
    }
}
