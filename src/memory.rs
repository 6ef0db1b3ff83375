//! Memory the serving threads must not spend time on: large values freed on a thread of their
//! own ([`free_aside`]), and memory freed after a burst of connections given back to the
//! system. glibc's malloc keeps what its per-thread arenas freed for reuse, so a burst of
//! 5,000 connections left the process 36 MB larger for good (an audit's slowloris: 8 MB
//! before, 44 MB after every connection had ended), memory a container's limit goes on
//! charging. Every [`LOOK_EVERY`], if a connection has ended since the last look,
//! `malloc_trim` returns the free pages.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Frees `value` on a thread kept for that: a replaced config of tens of thousands of routes
/// takes tens of milliseconds to free, which must not stall the worker thread of whichever
/// connection let go of it last (all the tunnels and handshakes on that thread would wait).
/// Inline if that thread cannot be started.
pub(crate) fn free_aside<T: Send + 'static>(value: T) {
    type Garbage = Box<dyn Send>;
    static FREER: std::sync::OnceLock<Option<Sender<Garbage>>> = std::sync::OnceLock::new();
    let freer = FREER.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<Garbage>();
        let started = std::thread::Builder::new()
            .name("wsgate-free".into())
            .spawn(move || {
                // Below the serving threads: on a busy machine, freeing can wait for them.
                lower_priority();
                receive.into_iter().for_each(drop);
            });
        started.ok().map(|_| send)
    });
    let garbage: Garbage = Box::new(value);
    if let Some(freer) = freer {
        // A send fails only if the thread is gone; then the value comes back, freed here.
        drop(freer.send(garbage));
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19), on Linux.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; a failure leaves the priority as it was.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// How often the count of ended connections is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(10);

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
    /// Whether a connection ended since the last trim, `ended` being the count now; if so,
    /// this one is the last from now on. Any connection: a hundred that each held a
    /// megabyte-sized head (`max_request_header_bytes` raised) left 200 MB behind, which
    /// waiting for a thousand to end kept until the next burst. A proxy where none ended
    /// has nothing new to give back, and a busy one trims at most every [`LOOK_EVERY`].
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

    #[test]
    fn a_value_freed_aside_is_freed_on_the_freeing_thread() {
        /// Says on which thread it is dropped.
        struct Noted(Sender<Option<String>>);
        impl Drop for Noted {
            fn drop(&mut self) {
                let thread = std::thread::current().name().map(String::from);
                let _ = self.0.send(thread);
            }
        }
        let (noted, dropped) = std::sync::mpsc::channel();
        free_aside(Noted(noted));
        assert_eq!(dropped.recv().unwrap().as_deref(), Some("wsgate-free"));
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
