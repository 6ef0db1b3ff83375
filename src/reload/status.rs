//! What the reloader publishes: the [`ReloadStatus`] (for tests and the reload metrics), and
//! the log line that goes with each change of it, decided while the status is updated and
//! logged once its lock is let go.

use std::time::SystemTime;

use super::{Outcome, POLL};
use crate::server::Shared;

/// Reload results, published for tests and for the reload counters (the admin endpoint reads
/// the generation from the snapshot in force).
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// Generation of the config in force; 1 at start.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    /// Why the files on disk are not in force, if they are not: set by a rejection, cleared
    /// by a successful reload or by the files going back to the config in force.
    pub last_error: Option<String>,
    pub last_success: Option<SystemTime>,
    /// Times the watcher looked at the files, whatever it found (a change, a rejection, the
    /// same content), and watched their folders again: lets a test await "the watcher has
    /// seen this event, and will see the next one".
    pub checks: u64,
}

/// Counts a successful reload: `generation` is in force from now on.
pub(super) fn in_force(shared: &Shared, status: &mut ReloadStatus, generation: u64) {
    status.generation = generation;
    status.successes += 1;
    status.last_success = Some(SystemTime::now());
    shared.metrics.reloaded(status, true);
}

/// Counts a rejected reload: the generation in force stays.
pub(super) fn rejected(shared: &Shared, status: &mut ReloadStatus) {
    status.failures += 1;
    shared.metrics.reloaded(status, false);
}

/// What a look at the files came to that is news, to log: each with the generation the log
/// line names (the one in force, or the one just put in force).
pub(super) enum News {
    /// The files cannot be read for want of open files.
    Unreadable(u64, String),
    /// A file is gone: what, and the error naming it.
    Missing(u64, &'static str, String),
    /// The files went back to the config in force after an error.
    BackInForce(u64),
    Reloaded(u64),
    Rejected(u64, String),
}

/// Publishes `outcome` in `status`, and the metrics with it (a reader of the status sees them
/// in step); what to log about it, if anything. `quiet`: a shortage of open files already said.
pub(super) fn publish(
    shared: &Shared,
    status: &mut ReloadStatus,
    generation: u64,
    outcome: Outcome,
    quiet: bool,
) -> Option<News> {
    let at = status.generation;
    let news = match outcome {
        Outcome::Nothing | Outcome::Unsettled => None,
        Outcome::Unreadable(error) => (!quiet).then_some(News::Unreadable(at, error)),
        // Said once while it stays gone: the reloader does not tell it again.
        Outcome::Missing(what, error) => {
            status.last_error = Some(error.clone());
            Some(News::Missing(at, what, error))
        }
        // Said once, so the last line about reloads is not a stale error.
        Outcome::InForce => (status.last_error.take()).map(|_| News::BackInForce(at)),
        Outcome::Applied => {
            status.last_error = None;
            in_force(shared, status, generation);
            Some(News::Reloaded(generation))
        }
        Outcome::Rejected(error) => {
            rejected(shared, status);
            status.last_error = Some(error.clone());
            Some(News::Rejected(at, error))
        }
    };
    shared.metrics.files_in_force(status.last_error.is_none());
    news
}

impl News {
    pub(super) fn log(self) {
        match self {
            News::Unreadable(generation, error) => {
                tracing::warn!(generation, %error, "cannot read the config files now: wsgate is out of open files (ulimit -n); the current config stays in force, looking again every {} s", POLL.as_secs_f64());
            }
            News::Missing(generation, what, error) => {
                tracing::warn!(generation, %error, "{what} gone; the current config stays in force until it is back");
            }
            News::BackInForce(generation) => {
                tracing::info!(generation, "config files are back to the config in force");
            }
            News::Reloaded(generation) => tracing::info!(generation, "config reloaded"),
            News::Rejected(generation, error) => {
                tracing::error!(generation, %error, "config reload rejected; the current config stays in force");
            }
        }
    }
}
