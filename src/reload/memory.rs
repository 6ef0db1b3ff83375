//! What the reloader remembers between looks at the files: which contents failed, and what
//! was said about them, so that a failure is neither built nor counted again while it lasts,
//! and each piece of news is said once. Pure: the reloader passes in what it knows beside
//! (the config in force, the error last published), so the rules are table-tested below.

use super::Trigger;

/// Hashes of file contents, as [`crate::fingerprint`] makes them.
type Hash = u64;

/// The reloader's memory of failures and of what it said.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// The content of a rejected config: the same bytes are not retried (or logged) again.
    rejected: Option<Hash>,
    /// The content of files lacking one (deleted, to be written again): the same bytes are
    /// not built again (at every poll) while it lasts.
    lacking: Option<Hash>,
    /// The content of the config file on disk, when it (or a file it names) was rejected or
    /// failed to bind (said then): failing alike again while only files it names change is
    /// no news, and a file it names gone is no news of that config file unless it is the one
    /// in force.
    failing_config: Option<Hash>,
    /// The content of all the files when that config file failed: with the config file in
    /// force, only files it names can fail, and each new content of them that fails is a
    /// reload that failed again (a second certificate rotation as wrong as the first).
    failing_files: Option<Hash>,
    /// The files gone said since all were last there (each one's error, and the content of
    /// the config file naming it): not said again while they stay gone, a SIGHUP's answer
    /// between.
    missing_said: Vec<(String, Option<Hash>)>,
    /// The hash of the certificate, key and CA files of the config in force as the last look
    /// found them: a look that finds them changed since sees a renewal under way.
    served_seen: Option<Hash>,
    /// Why the last renewal of the certificates in force failed: not said again.
    renewal_failed: Option<(String, Hash)>,
    /// A file the config in force serves, said gone while the config file on disk is not in
    /// force: not said again until it is back.
    gap_said: Option<String>,
}

/// What a file gone is, news-wise.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gone {
    /// To be said.
    News,
    /// Said already while it stayed gone.
    SaidAlready,
    /// A file named by a config file on disk that fails anyway: the renewal of the
    /// certificates in force says it.
    ForTheRenewal,
}

/// What a failed renewal of the certificates in force is, news-wise.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RenewalFailure {
    /// Said already: as it failed before, or as why the files on disk are not in force.
    SaidAlready,
    /// Said beside the rejection of the same look (one change brought both), not counted.
    BesideRejection,
    /// A rejected reload of its own: counted and said.
    News,
}

impl Memory {
    /// The contents known to fail (rejected, or lacking a file): a look finding them again
    /// builds nothing.
    pub(super) fn known(&self) -> [Option<Hash>; 2] {
        [self.rejected, self.lacking]
    }

    /// A certificate in force ran out: content rejected while it was valid (a certificate
    /// not valid now written over it) may be good now, and is built again, not skipped as
    /// known to fail. (Failing as it did, it is no news: see `failing_config`.)
    pub(super) fn retry_rejected(&mut self) {
        self.rejected = None;
    }

    /// Back to what is in force (the files went back to it, or were applied): a failure like
    /// one said before is news again, as is a renewal failing as one did before.
    pub(super) fn forget_failures(&mut self) {
        *self = Memory {
            served_seen: self.served_seen,
            ..Memory::default()
        };
    }

    /// A look the files triggered found every file there: one gone again is news again.
    pub(super) fn all_files_there(&mut self) {
        self.missing_said.clear();
    }

    /// The files on disk built: whatever was rejected before is not what is there now.
    pub(super) fn built(&mut self) {
        self.rejected = None;
    }

    /// A file gone, said by `error`, from the files on disk whose content was `seen` if they
    /// were read, with the config file's (`config_file`) if a file it names is gone; the
    /// config file in force is `in_force`.
    pub(super) fn gone(
        &mut self,
        error: String,
        (seen, config_file): (Option<Hash>, Option<Hash>),
        in_force: Hash,
    ) -> Gone {
        self.lacking = seen;
        if config_file.is_some() && config_file == self.failing_config {
            // A served file gone while the config file on disk is one that failed (rejected,
            // or not bindable): said by the renewal, as a file of the config in force gone
            // (the failure said stays why the files on disk are not in force). Once it is
            // back, that config file is as it was: tried and failing as before, no news.
            if config_file != Some(in_force) {
                return Gone::ForTheRenewal;
            }
        } else {
            // The config file gone, or another saved since: news, whatever it holds once back
            // (a content rejected before included), and whatever failed before is no longer
            // why the files on disk are not in force.
            (self.rejected, self.failing_config, self.failing_files) = (None, None, None);
        }
        // Said once while it stays gone, for this config file.
        let said = (error, config_file);
        if self.missing_said.contains(&said) {
            return Gone::SaidAlready;
        }
        self.missing_said.push(said);
        Gone::News
    }

    /// The files on disk, whose content is `on_disk` (the config file's `config_file`; the
    /// certificate files' of the config in force, `served`), failed to build, in a look
    /// `trigger` asked for; whether that is news. `facts`: whether the certificate files
    /// read are those served, whether the error is the one last said, and the content of the
    /// config file in force.
    pub(super) fn failed(
        &mut self,
        (on_disk, config_file, served): (Hash, Hash, Hash),
        trigger: Trigger,
        facts: Facts,
    ) -> bool {
        let same_config = self.failing_config.replace(config_file) == Some(config_file);
        let same_files = self.failing_files.replace(on_disk) == Some(on_disk);
        (self.rejected, self.lacking) = (Some(on_disk), None);
        // The certificates of the config in force renewed since the last look (and not back
        // to what is served): their renewal says how that went.
        let renewing = self.served_seen != Some(served) && !facts.served_read;
        self.served_seen = Some(served);
        // A config file not in force failing as it did when said, or failing now while the
        // certificates of the config in force are renewed: only files it names changed. No
        // news, nor a failure to count; a SIGHUP is answered all the same. The config file
        // in force can fail only by the files it names, and those failing with new content
        // are its reload failing again; the same content failing again (tried once more
        // when a certificate in force ran out) is not news.
        let quiet = match facts.in_force == config_file {
            true => same_config && facts.said && same_files,
            false => same_config && (facts.said || renewing),
        };
        trigger == Trigger::Manual || !quiet
    }

    /// The files on disk built, from a config file whose content is `config_file`, but could
    /// not be applied: wsgate's own failure (`internal`, then that content, `on_disk`, is not
    /// tried again: it would fail alike) or an address that cannot be bound (the machine's
    /// state, not the file's: the very same content is retried on the next event, the port
    /// may be free by then). Whether that is news: the same config file failing as last said
    /// (`said`; a certificate renewed meanwhile, the address still taken) is not; another
    /// config file is, and so is a failure after another.
    pub(super) fn not_applied(
        &mut self,
        (on_disk, config_file): (Hash, Hash),
        internal: bool,
        trigger: Trigger,
        said: bool,
    ) -> bool {
        let same_config = self.failing_config.replace(config_file) == Some(config_file);
        self.failing_files = Some(on_disk);
        self.lacking = None;
        if internal {
            self.rejected = Some(on_disk);
            return true;
        }
        trigger == Trigger::Manual || !(same_config && said)
    }

    /// Whether the config file on disk (not `in_force`) is not the one in force, as last
    /// said: gone, or one that failed (rejected, or not bindable).
    pub(super) fn disk_not_in_force(&self, in_force: Hash) -> bool {
        match self.failing_config {
            Some(config) => config != in_force,
            None => self.missing_said.iter().any(|(_, config)| config.is_none()),
        }
    }

    /// The certificates in force were renewed.
    pub(super) fn renewed(&mut self) {
        self.renewal_failed = None;
    }

    /// The certificate files on disk are those in force again: whether a failure of theirs
    /// had been said (and their being back is news).
    pub(super) fn renewal_back(&mut self) -> bool {
        self.renewal_failed.take().is_some()
    }

    /// A renewal of the certificates in force, from files whose content is `read`, failed
    /// with `error`; `said`: as why the files on disk are not in force, or by this look's
    /// rejection; `rejected`: this look rejected the config file on disk too, and whether by
    /// hand. Beside a rejection the files triggered (one change, a Kubernetes volume swapped,
    /// that brought a bad config and a certificate without its key: one reload rejected), it
    /// is said, not counted; so is the same failure again beside a SIGHUP's, which asks to be
    /// told everything. Other files failing alike are news, as any new content is.
    pub(super) fn renewal_failed(
        &mut self,
        (error, read): (String, Hash),
        said: bool,
        rejected: Option<Trigger>,
    ) -> RenewalFailure {
        let again = self.renewal_failed.as_ref() == Some(&(error.clone(), read));
        let news = match rejected {
            _ if said => RenewalFailure::SaidAlready,
            Some(Trigger::Manual) if again => RenewalFailure::BesideRejection,
            _ if again => RenewalFailure::SaidAlready,
            Some(Trigger::Files) => RenewalFailure::BesideRejection,
            _ => RenewalFailure::News,
        };
        self.renewal_failed = Some((error, read));
        news
    }

    /// The served file said gone (while the config file on disk is not in force), if one is.
    pub(super) fn gap_said(&self) -> Option<&str> {
        self.gap_said.as_deref()
    }

    /// A served file gone, said by `error`: whether that is news (not said last).
    pub(super) fn gap(&mut self, error: String) -> bool {
        let news = self.gap_said.as_ref() != Some(&error);
        self.gap_said = Some(error);
        news
    }

    /// The served files are all there: whether one had been said gone (and their being back
    /// is news).
    pub(super) fn gap_over(&mut self) -> bool {
        self.gap_said.take().is_some()
    }
}

/// What the reloader knows beside its memory when files fail to build.
#[derive(Clone, Copy, Debug)]
pub(super) struct Facts {
    /// The certificate files read are those the config in force serves.
    pub(super) served_read: bool,
    /// The error is the one last published as why the files on disk are not in force.
    pub(super) said: bool,
    /// The content of the config file in force.
    pub(super) in_force: Hash,
}

#[cfg(test)]
mod tests {
    use super::{Facts, Gone, Memory, RenewalFailure, Trigger};

    const IN_FORCE: u64 = 1;
    const OTHER: u64 = 2;
    const SERVED: u64 = 10;
    const RENEWED: u64 = 11;

    fn facts(served_read: bool, said: bool) -> Facts {
        Facts {
            served_read,
            said,
            in_force: IN_FORCE,
        }
    }

    #[test]
    fn a_failure_is_news_once_while_its_config_file_stays() {
        let mut memory = Memory::default();
        let read = (100, OTHER, SERVED);
        assert!(memory.failed(read, Trigger::Files, facts(true, false)));
        assert_eq!(memory.known(), [Some(100), None]);
        // Published: the same failure again is no news, but a SIGHUP is always answered.
        assert!(!memory.failed(read, Trigger::Files, facts(true, true)));
        assert!(memory.failed(read, Trigger::Manual, facts(true, true)));
        // Another failure of the same config file (a file it names changed) is news.
        assert!(memory.failed(read, Trigger::Files, facts(true, false)));
        // So is the same error from another config file.
        assert!(memory.failed((101, 3, SERVED), Trigger::Files, facts(true, true)));
    }

    #[test]
    fn the_config_in_force_failing_by_new_files_is_news_each_time() {
        let mut memory = Memory::default();
        assert!(memory.failed((100, IN_FORCE, SERVED), Trigger::Files, facts(true, false)));
        // A certificate rotated again to one that fails alike: another failed reload.
        let again = (101, IN_FORCE, RENEWED);
        assert!(memory.failed(again, Trigger::Files, facts(false, true)));
        // The same files failing again (retried once a certificate in force ran out): not.
        memory.retry_rejected();
        assert!(!memory.failed(again, Trigger::Files, facts(false, true)));
    }

    #[test]
    fn a_failure_while_the_served_certificates_renew_is_left_to_the_renewal() {
        let mut memory = Memory::default();
        assert!(memory.failed((100, OTHER, SERVED), Trigger::Files, facts(true, false)));
        // The served files changed since the last look: the renewal says how that went.
        let renewing = (101, OTHER, RENEWED);
        assert!(!memory.failed(renewing, Trigger::Files, facts(false, false)));
        // Unless the failing config file is the one in force: then it is its own reload's.
        let mut memory = Memory::default();
        assert!(memory.failed((100, IN_FORCE, SERVED), Trigger::Files, facts(true, false)));
        let renewing = (101, IN_FORCE, RENEWED);
        assert!(memory.failed(renewing, Trigger::Files, facts(false, false)));
    }

    #[test]
    fn a_file_gone_is_said_once_per_config_file_until_all_are_there() {
        let mut memory = Memory::default();
        let gone =
            |memory: &mut Memory, config| memory.gone("key gone".into(), (None, config), IN_FORCE);
        assert_eq!(gone(&mut memory, Some(IN_FORCE)), Gone::News);
        assert_eq!(gone(&mut memory, Some(IN_FORCE)), Gone::SaidAlready);
        // Another config file saved meanwhile naming the same gone file: news of that one.
        assert_eq!(gone(&mut memory, Some(OTHER)), Gone::News);
        memory.all_files_there();
        assert_eq!(gone(&mut memory, Some(IN_FORCE)), Gone::News);
    }

    #[test]
    fn a_file_gone_of_a_failing_config_file_is_left_to_the_renewal() {
        let mut memory = Memory::default();
        assert!(memory.failed((100, OTHER, SERVED), Trigger::Files, facts(true, false)));
        assert!(memory.disk_not_in_force(IN_FORCE));
        let gone = memory.gone("key gone".into(), (Some(200), Some(OTHER)), IN_FORCE);
        assert_eq!(gone, Gone::ForTheRenewal);
        // Still that config file's failure that keeps the disk out of force.
        assert_eq!(memory.known(), [Some(100), Some(200)]);
        // The config file itself gone: news, and what it failed with is forgotten.
        let gone = memory.gone("config gone".into(), (None, None), IN_FORCE);
        assert_eq!(gone, Gone::News);
        assert_eq!(memory.known(), [None, None]);
        assert!(memory.disk_not_in_force(IN_FORCE));
    }

    #[test]
    fn a_bind_failure_is_retried_but_said_once() {
        let mut memory = Memory::default();
        assert!(memory.not_applied((100, OTHER), false, Trigger::Files, false));
        // Not remembered as rejected: the port may be free by the next event.
        assert_eq!(memory.known(), [None, None]);
        assert!(!memory.not_applied((100, OTHER), false, Trigger::Files, true));
        assert!(memory.not_applied((100, OTHER), false, Trigger::Manual, true));
        // wsgate's own failure: that content is not tried again.
        assert!(memory.not_applied((100, OTHER), true, Trigger::Files, true));
        assert_eq!(memory.known(), [Some(100), None]);
    }

    #[test]
    fn the_disk_is_out_of_force_while_its_config_fails_or_is_gone() {
        let mut memory = Memory::default();
        assert!(!memory.disk_not_in_force(IN_FORCE));
        // The config in force's own files failing: the disk's config file is in force.
        memory.failed((100, IN_FORCE, SERVED), Trigger::Files, facts(true, false));
        assert!(!memory.disk_not_in_force(IN_FORCE));
        memory.forget_failures();
        memory.gone("config gone".into(), (None, None), IN_FORCE);
        assert!(memory.disk_not_in_force(IN_FORCE));
        memory.forget_failures();
        assert!(!memory.disk_not_in_force(IN_FORCE));
    }

    #[test]
    fn a_renewal_failure_is_said_once_and_counted_unless_beside_a_rejection() {
        let mut memory = Memory::default();
        let fail = |memory: &mut Memory, said, beside: bool| {
            let rejected = beside.then_some(Trigger::Files);
            memory.renewal_failed(("no key".into(), SERVED), said, rejected)
        };
        assert_eq!(fail(&mut memory, true, false), RenewalFailure::SaidAlready);
        memory.renewed();
        assert_eq!(
            fail(&mut memory, false, true),
            RenewalFailure::BesideRejection
        );
        assert_eq!(fail(&mut memory, false, false), RenewalFailure::SaidAlready);
        assert!(memory.renewal_back());
        assert!(!memory.renewal_back());
        assert_eq!(fail(&mut memory, false, false), RenewalFailure::News);
        memory.forget_failures();
        assert_eq!(fail(&mut memory, false, false), RenewalFailure::News);
        // Other files failing alike: news, beside a rejection or not.
        let other = |memory: &mut Memory, rejected| {
            memory.renewal_failed(("no key".into(), RENEWED), false, rejected)
        };
        assert_eq!(other(&mut memory, None), RenewalFailure::News);
        assert_eq!(other(&mut memory, None), RenewalFailure::SaidAlready);
        // The same again beside a SIGHUP's rejection: said (asked for), not counted.
        assert_eq!(
            other(&mut memory, Some(Trigger::Manual)),
            RenewalFailure::BesideRejection
        );
        let third = memory.renewal_failed(("no key".into(), 12), false, Some(Trigger::Files));
        assert_eq!(third, RenewalFailure::BesideRejection);
    }

    #[test]
    fn a_served_file_gone_is_said_once_until_back() {
        let mut memory = Memory::default();
        assert_eq!(memory.gap_said(), None);
        assert!(memory.gap("key gone".into()));
        assert!(!memory.gap("key gone".into()));
        assert_eq!(memory.gap_said(), Some("key gone"));
        assert!(memory.gap("cert gone".into()));
        assert!(memory.gap_over());
        assert!(!memory.gap_over());
        assert!(memory.gap("cert gone".into()));
    }
}
