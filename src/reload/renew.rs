//! Renewal of the certificates in force while the config file on disk is not going into
//! force (rejected, unbindable, or gone): the config in force with its certificate, key and
//! CA files read again and swapped in, and what is said about it; and a file of theirs gone,
//! said once, since no look at the config file on disk reads it.

use std::sync::Arc;

use super::memory::RenewalFailure;
use super::{look, status, Reloader, Trigger, DEBOUNCE};
use crate::server::Error;
use crate::snapshot::{Renewed, Snapshot};
use status::in_force;

/// How many renewals in a row wait for the look a write since brings (see
/// [`Reloader::renew`]) before one is applied anyway: one is what a key landing right behind
/// its certificate needs, and a writer rewriting the same bytes nonstop (a sync loop) must
/// not hold a renewal off for ever.
const MAX_DEFERRED_RENEWALS: u8 = 1;

/// What came of reading the certificates in force again.
pub(super) enum Renewal {
    Applied,
    /// Why, and the content of the files that failed.
    Failed(String, u64),
}

impl Reloader {
    /// The config in force with its certificates and keys read again, swapped in, if their
    /// files changed; `None` if they did not (or the process is shutting down). `say_gaps`: a
    /// file of theirs gone is said here (no look says it).
    pub(super) async fn renew(&mut self, generation: u64, say_gaps: bool) -> Option<Renewal> {
        let shared = &self.shared;
        let current = shared.current();
        let renewed = tokio::task::spawn_blocking(move || current.renewed(generation));
        let renewed = renewed.await.ok()?;
        if !matches!(renewed, Renewed::Gap) && self.memory.gap_over() {
            tracing::info!(
                "the files the config in force serves are back (the config file on disk is \
                 still not in force)"
            );
        }
        let (read, renewed) = match renewed {
            Renewed::Read(read, renewed) => (read, *renewed),
            // Back to what is served: a failure said before is news again.
            Renewed::AsServed => {
                if self.memory.renewal_back() {
                    tracing::info!("certificate files are back to those in force");
                }
                return None;
            }
            Renewed::Gap => {
                if say_gaps {
                    self.say_gap().await;
                }
                return None;
            }
        };
        // As for any reload: files still being written (a chain in pieces, a certificate
        // whose key comes next) are neither applied nor reported; their next write is looked
        // at anyway.
        tokio::time::sleep(DEBOUNCE).await;
        let current = shared.current();
        let still = tokio::task::spawn_blocking(move || current.served_hash() == read);
        if !still.await.unwrap_or(false) {
            return None;
        }
        // Written to since the look (a key landing right behind its certificate): the look
        // that write brings decides, from everything on disk. Renewed here, the files would
        // go into force said to be a renewal while the config file on disk is not in force,
        // when the file on disk may be exactly the one in force. A few times in a row only.
        let written = self.events.has_changed().unwrap_or(false);
        if written && self.renewals_deferred < MAX_DEFERRED_RENEWALS {
            self.renewals_deferred += 1;
            return None;
        }
        self.renewals_deferred = 0;
        match renewed {
            Ok(snapshot) => match shared.apply(snapshot).await {
                Ok(()) => Some(Renewal::Applied),
                Err(Error::ShuttingDown) => None,
                Err(e) => Some(Renewal::Failed(e.to_string(), read)),
            },
            // Out of open files: nothing is known; the next look tries again.
            Err(e) if e.for_now => None,
            Err(e) => Some(Renewal::Failed(e.to_string(), read)),
        }
    }

    /// A file the config in force serves gone, while the config file on disk is not in force
    /// (no look reads that file, so none says it gone): said once it has stayed gone for a
    /// [`DEBOUNCE`] (a renewal by `rm; cp` is not news), and once only, as a config file's
    /// gone is. What is served goes on; a restart would fail on it.
    async fn say_gap(&mut self) {
        // Off the async threads: it looks at files, which may sit on a slow mount.
        let gone = |current: Arc<Snapshot>| {
            tokio::task::spawn_blocking(move || look::in_force_file_gone(&current.config))
        };
        // Said already: nothing to wait for.
        let now = gone(self.shared.current()).await.ok().flatten();
        if now.as_ref().map(|(_, error)| error.as_str()) == self.memory.gap_said() {
            return;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let current = self.shared.current();
        let generation = current.generation;
        let Some((what, error)) = gone(current).await.ok().flatten() else {
            return;
        };
        if self.memory.gap(error.clone()) {
            tracing::warn!(generation, %error, "{what} gone; the certificates in force are still served (the config file on disk is not in force)");
        }
    }

    /// Publishes and logs a renewal of the certificates in force. A failed one (a certificate
    /// written before its key, say) is counted and said once for those files: the next write
    /// is looked at anyway (see [`Memory::renewal_failed`](super::memory::Memory::renewal_failed)). Not at all when it failed as the reload just `rejected` did (the config on disk
    /// is the one in force, and its certificate files are what is wrong): that error was said
    /// already. Nor counted when it failed otherwise in a look the files triggered that
    /// rejected them (one change, a Kubernetes volume swapped, that brought a bad config and a
    /// certificate without its key: one reload rejected), only said beside it; a SIGHUP's look
    /// may have come before the file's, and a failed renewal is counted then.
    pub(super) fn record_renewal(
        &mut self,
        generation: u64,
        renewal: Renewal,
        rejected: Option<(&str, Trigger)>,
    ) {
        let shared = &self.shared;
        let (error, read) = match renewal {
            Renewal::Failed(error, read) => (error, read),
            Renewal::Applied => {
                self.memory.renewed();
                shared
                    .reload_status
                    .send_modify(|status| in_force(shared, status, generation));
                tracing::info!(
                    generation,
                    "certificates renewed for the config in force; the config file on disk \
                     is not in force (rejected, unbindable, or missing)"
                );
                return;
            }
        };
        // Said already: by this look's rejection, or as why the files on disk are not in force.
        let said = rejected.is_some_and(|(rejection, _)| rejection == error) || self.said(&error);
        let rejected = rejected.map(|(_, trigger)| trigger);
        match self
            .memory
            .renewal_failed((error.clone(), read), said, rejected)
        {
            RenewalFailure::SaidAlready => return,
            RenewalFailure::BesideRejection => {
                tracing::warn!(
                    %error,
                    "the certificates in force are not renewed either: their files on disk are refused too"
                );
                return;
            }
            RenewalFailure::News => {}
        }
        // A rejected reload like any other: counted, and said with the generation that stays.
        let mut in_force = 0;
        shared.reload_status.send_modify(|reloads| {
            status::rejected(shared, reloads);
            in_force = reloads.generation;
        });
        tracing::error!(
            generation = in_force,
            %error,
            "renewed certificate files rejected; the certificates in force stay"
        );
    }
}
