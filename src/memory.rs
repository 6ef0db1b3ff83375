//! Memory the serving threads must not spend long on: large values freed a batch at a time
//! ([`drop_gradually`]), and memory freed after a burst of connections given back to the
//! system. glibc's malloc keeps what its per-thread arenas freed for reuse, so a burst of
//! 5,000 connections left the process 36 MB larger for good (an audit's slowloris: 8 MB
//! before, 44 MB after every connection had ended), memory a container's limit goes on
//! charging. Every [`LOOK_EVERY`], if a connection has ended or a config been freed since
//! the last look, `malloc_trim` returns the free pages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// How many items [`drop_gradually`] frees between yields: a few hundred routes, well under a
/// millisecond.
const FREED_AT_ONCE: usize = 256;

/// Frees what `items` yields a batch at a time, letting the runtime's other tasks run between
/// batches: a replaced config of tens of thousands of routes takes tens of milliseconds to
/// free, which must not stall the worker thread of whichever connection let go of it last
/// (every tunnel and handshake on that thread would wait). A thread of its own freeing it
/// was tried: each free takes the lock of glibc's arena the memory came from, and the serving
/// thread was measured waiting on those locks (`__lll_lock_wait_private`) meanwhile, with
/// stalls of 17–33 ms against 7–24 ms this way (30,000 routes, 2 cores).
pub(crate) async fn drop_gradually<I: Iterator>(mut items: I) {
    loop {
        if items.by_ref().take(FREED_AT_ONCE).count() < FREED_AT_ONCE {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// How often the count of ended connections and freed configs is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Configs freed: replaced ones once their last holder let go, and those a reload read and
/// rejected. A static, as a config is freed where no server state is at hand (the last
/// `Arc` of a snapshot dropped by whichever connection held it). Freeing 30,000 routes'
/// config left its memory in glibc's arenas: a quiet proxy (no connection ending) reloaded
/// 40 times by its ConfigMap grew to 586 MB resident and stayed there (docs/operations.md
/// has the figures since).
static CONFIGS_FREED: AtomicU64 = AtomicU64::new(0);

/// Counts a config freed (see [`CONFIGS_FREED`]): the trimmer's next look gives its memory
/// back.
pub(crate) fn config_freed() {
    CONFIGS_FREED.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
pub(crate) fn configs_freed() -> u64 {
    CONFIGS_FREED.load(Ordering::Relaxed)
}

/// Connections ended and configs freed so far: either leaves memory to give back.
fn releases(shared: &Shared) -> u64 {
    shared.ended_connections() + CONFIGS_FREED.load(Ordering::Relaxed)
}

pub(crate) fn spawn_trimmer(shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last = LastTrim(releases(&shared));
        loop {
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if last.due(releases(&shared)) {
                // It walks every arena's free lists: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

/// The count of [`releases`] at the last trim (or at start).
struct LastTrim(u64);

impl LastTrim {
    /// Whether a connection ended (or a config was freed) since the last trim, `ended` being
    /// the count now; if so, this one is the last from now on. Any connection: a hundred
    /// that each held a megabyte-sized head (`max_request_header_bytes` raised) left 200 MB
    /// behind, which waiting for a thousand to end kept until the next burst. A proxy where
    /// none ended has nothing new to give back, and a busy one trims at most every
    /// [`LOOK_EVERY`].
    fn due(&mut self, ended: u64) -> bool {
        let due = ended > self.0;
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

    #[tokio::test]
    async fn items_dropped_gradually_are_all_dropped_with_yields_between_batches() {
        let items = std::sync::Arc::new(());
        let many = vec![items.clone(); 3 * FREED_AT_ONCE + 1];
        let mut dropping = std::pin::pin!(drop_gradually(many.into_iter()));
        let mut yields = 0;
        while futures_poll(&mut dropping).is_pending() {
            yields += 1;
        }
        assert_eq!((yields, std::sync::Arc::strong_count(&items)), (3, 1));
    }

    /// Polls `future` once.
    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        std::pin::Pin::new(future).poll(&mut std::task::Context::from_waker(waker))
    }

    #[test]
    fn a_trim_is_due_once_connections_ended_since_the_last() {
        let mut last = LastTrim(500);
        // A quiet proxy never trims.
        assert!(!last.due(500));
        assert!(last.due(501));
        // Counted from that trim on, not from the start.
        assert!(!last.due(501));
        assert!(last.due(3_000));
        assert!(!last.due(3_000));
    }
}
