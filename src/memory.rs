//! Gives memory freed after a burst of connections back to the system. glibc's malloc keeps
//! what its per-thread arenas freed for reuse, so a burst of 5,000 connections left the
//! process 36 MB larger for good (an audit's slowloris: 8 MB before, 44 MB after every
//! connection had ended), memory a container's limit goes on charging. Once enough
//! connections have ended since the last time, `malloc_trim` returns the free pages.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// How often the count of ended connections is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Connections that must have ended since the last trim for another: a burst's worth, so a
/// quiet proxy never trims, and a busy one at most every [`LOOK_EVERY`].
const ENDED_BEFORE_TRIM: u64 = 1_000;

pub(crate) fn spawn_trimmer(shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = LastTrim(shared.ended_connections());
        loop {
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if last.due(shared.ended_connections()) {
                // It walks every arena's free lists: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

/// The count of ended connections at the last trim (or at start).
struct LastTrim(u64);

impl LastTrim {
    /// Whether a burst's worth of connections ended since the last trim, `ended` being the
    /// count now; if so, this one is the last from now on.
    fn due(&mut self, ended: u64) -> bool {
        let due = ended.saturating_sub(self.0) >= ENDED_BEFORE_TRIM;
        if due {
            self.0 = ended;
        }
        due
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only takes glibc's own arena locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_once_per_burst_of_ended_connections() {
        let mut last = LastTrim(500);
        // A quiet proxy never trims.
        assert!(!last.due(500));
        assert!(!last.due(500 + ENDED_BEFORE_TRIM - 1));
        assert!(last.due(500 + ENDED_BEFORE_TRIM));
        // Counted from that trim on, not from the start.
        assert!(!last.due(500 + ENDED_BEFORE_TRIM + 1));
        assert!(!last.due(499 + 2 * ENDED_BEFORE_TRIM));
        assert!(last.due(500 + 3 * ENDED_BEFORE_TRIM));
    }
}
