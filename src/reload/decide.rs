//! What to do about what a look at the files found: apply a good build (binding its new
//! listeners), remember a rejected one, and say a file gone; each as news or not, by the
//! rules of [`super::memory`].

use super::look::{Look, Patience};
use super::memory::{Facts, Gone};
use super::{Outcome, Reloader, Trigger};
use crate::server::Error;
use crate::snapshot::Snapshot;

impl Reloader {
    /// What to do about what [`look()`](super::look::look) found: apply a good build, remember a rejected one.
    pub(super) async fn decide(
        &mut self,
        look: Look,
        trigger: Trigger,
        patience: Patience,
    ) -> Outcome {
        match look {
            Look::InForce => {
                tracing::debug!("config files touched but their content did not change");
                self.memory.forget_failures();
                Outcome::InForce
            }
            Look::StillRejected => {
                // (A test awaits this line.)
                tracing::debug!("config files as last rejected or missing; nothing to build");
                Outcome::Nothing
            }
            Look::Missing {
                what,
                error,
                seen,
                config_file,
                ..
            } => self.missing(what, error, (seen, config_file)),
            // Good or bad, what was read may be no file's finished content, or a mix of old
            // and new files (a certificate with the key of another, a route without the
            // `origins` of its next line): never applied, not even on the last try.
            Look::Built { settled: false, .. } => match patience {
                Patience::WaitForStill => {
                    tracing::debug!("config files changed while being read; reading them again");
                    Outcome::Unsettled
                }
                // Said, as a SIGHUP's answer too; the next write brings another look. (Not
                // concluded as a look that found nothing new: what is on disk is not known.)
                Patience::TakeAsRead => {
                    self.say_kept_changing(trigger);
                    Outcome::Unsettled
                }
            },
            // Files that held still while they were read.
            Look::Built {
                on_disk,
                config_file,
                served,
                built,
                ..
            } => {
                // Every file there, unless asked by hand (a SIGHUP builds whatever is there):
                // one gone again is news again.
                if trigger == Trigger::Files {
                    self.memory.all_files_there();
                }
                let read = (on_disk, config_file, served);
                self.built(*built, read, trigger, patience).await
            }
        }
    }

    /// What to do with files that held still while they were read, `read` (their content,
    /// the config file's, and whether the certificates of the config in force changed), and
    /// `built` into a snapshot or not.
    async fn built(
        &mut self,
        built: Result<Snapshot, crate::config::ConfigError>,
        read: (u64, u64, u64),
        trigger: Trigger,
        patience: Patience,
    ) -> Outcome {
        let (on_disk, config_file, _) = read;
        match built {
            Ok(snapshot) => {
                // Taken as read after MAX_REREADS: they never held still in the debounce
                // after the read (but did while it lasted).
                if patience == Patience::TakeAsRead {
                    tracing::warn!(
                        "config files kept changing while being read; applying them as last read"
                    );
                }
                self.memory.built();
                self.apply_built(snapshot, trigger, (on_disk, config_file))
                    .await
            }
            Err(e) if e.for_now => Outcome::Unreadable(e.to_string()),
            Err(e) => self.failed(read, e.to_string(), trigger),
        }
    }

    /// A file gone (`what`, said by `error`) from the files on disk: `read` is their content
    /// if they were read, and the config file's if a file it names is gone (see
    /// [`Memory::gone`](super::memory::Memory::gone)).
    fn missing(
        &mut self,
        what: &'static str,
        error: String,
        read: (Option<u64>, Option<u64>),
    ) -> Outcome {
        let in_force = self.shared.current().config.source_hash;
        match self.memory.gone(error.clone(), read, in_force) {
            Gone::News => Outcome::Missing(what, error),
            Gone::ForTheRenewal => Outcome::Nothing,
            Gone::SaidAlready => {
                // (A test awaits this line.)
                tracing::debug!(%error, "a file gone, said already");
                Outcome::Nothing
            }
        }
    }

    /// The files on disk failed to build with `error`, in a look `trigger` asked for: `read`
    /// is their content, the config file's, and the certificate files' of the config in force
    /// (see [`Memory::failed`](super::memory::Memory::failed)).
    fn failed(&mut self, read: (u64, u64, u64), error: String, trigger: Trigger) -> Outcome {
        let current = self.shared.current();
        let facts = Facts {
            served_read: current.serves(read.2),
            said: self.said(&error),
            in_force: current.config.source_hash,
        };
        if !self.memory.failed(read, trigger, facts) {
            tracing::debug!("config file failing as already said, or for a renewal");
            return Outcome::Nothing;
        }
        Outcome::Rejected(error)
    }

    /// [`Self::apply`], and the log switched to the new config's format if it asks for
    /// another.
    async fn apply_built(
        &mut self,
        snapshot: Snapshot,
        trigger: Trigger,
        read: (u64, u64),
    ) -> Outcome {
        let format = snapshot.config.log_format;
        let format_in_force = self.shared.current().config.log_format;
        let outcome = self.apply(snapshot, trigger, read).await;
        if matches!(outcome, Outcome::Applied) && format != format_in_force {
            crate::logging::format_changed(format);
        }
        outcome
    }

    /// Swaps `snapshot` in, binding its new listeners; nothing new if it failed to bind exactly
    /// as the last file-triggered try of this content did (not logged or counted again).
    /// `(on_disk, config_file)`: the content it was built from, and its config file's.
    async fn apply(
        &mut self,
        snapshot: Snapshot,
        trigger: Trigger,
        (on_disk, config_file): (u64, u64),
    ) -> Outcome {
        let e = match self.shared.apply(snapshot).await {
            Ok(()) => return Outcome::Applied,
            Err(Error::ShuttingDown) => return Outcome::Nothing,
            Err(e) => e,
        };
        let failure = e.to_string();
        let internal = matches!(e, Error::Internal(_));
        let said = self.said(&failure);
        if !(self.memory).not_applied((on_disk, config_file), internal, trigger, said) {
            tracing::debug!(error = %failure, "still cannot bind; the current config stays in force");
            return Outcome::Nothing;
        }
        Outcome::Rejected(failure)
    }
}
