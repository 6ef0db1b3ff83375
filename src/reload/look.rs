//! A look at the files on disk: whether there is anything to build from them (the content in
//! force, the content last rejected, a file gone for a moment), the build if there is, and
//! whether the files held still while they were read. Blocking work (reading files, parsing
//! PEM): the reloader runs it off the async threads.

use std::path::Path;

use tokio::time::Instant;

use super::{Trigger, DEBOUNCE};
use crate::config::{Config, ConfigError, Location};
use crate::files::{absent_or_empty, NotThere};
use crate::fingerprint::{on_disk_fingerprint, on_disk_now, on_disk_stamp, read_hash, OnDisk};
use crate::snapshot::Snapshot;
use NotThere::{Absent, Empty};

/// What a look at the files found.
pub(super) enum Look {
    /// The content in force: nothing to do.
    InForce,
    /// The content last rejected, or lacking a file as last seen: not tried (or logged)
    /// again.
    StillRejected,
    /// The config file, or a certificate or key file it serves, is not there (deleted, to
    /// be written again): what is gone, the error naming it, the files' fingerprint if they
    /// were read (the same files are then not built again while it lasts), and their stamp
    /// and when it was taken (see [`holds_still`]: a file truncated by an in-place write
    /// that is still to come is gone only for that moment).
    Missing {
        what: &'static str,
        error: String,
        seen: Option<u64>,
        /// The hash of the config file's content, when a file it names is what is gone.
        config_file: Option<u64>,
        stamp: u64,
        stamped_at: Instant,
    },
    /// Something new, built (or not): its fingerprint, whether the disk held still while it
    /// was read, and the result.
    Built {
        on_disk: u64,
        /// The files' content and write times as they were before the read (see
        /// [`holds_still`]), and when.
        stamp: u64,
        stamped_at: Instant,
        settled: bool,
        /// Whether a file was written less than a [`DEBOUNCE`] before the read.
        fresh: bool,
        /// The hash of the config file's content.
        config_file: u64,
        /// The hash of the certificate, key and CA files of the config in force as they are
        /// now (see [`Snapshot::serves`]).
        served: u64,
        built: Box<Result<Snapshot, ConfigError>>,
    },
}

/// What a reload does with files that changed while it read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Patience {
    /// Nothing: read them again shortly.
    WaitForStill,
    /// Take what was read (they never held still).
    TakeAsRead,
}

/// Looks at the files at `path` (blocking work: reading files, parsing PEM) and builds a
/// snapshot of generation `generation` from them unless there is nothing to build: the
/// content `in_force`, or content `known` already (last rejected, or lacking a file), unless
/// asked by hand.
pub(super) fn look(
    path: &Path,
    trigger: Trigger,
    in_force: &Snapshot,
    known: [Option<u64>; 2],
    generation: u64,
) -> Look {
    // Stamped first: the config's parse, which the stamp needs for the names of the files
    // it serves (and which the fingerprint and the build then find made), is part of the
    // read that the files must hold still through.
    let stamped_at = Instant::now();
    let OnDisk {
        content: on_disk,
        stamp,
        fresh,
    } = on_disk_now(path, DEBOUNCE);
    let gone = absent_or_empty(path);
    if let (Trigger::Files, Some(gone)) = (trigger, gone) {
        let (what, error) = config_file_missing(path, gone);
        return Look::Missing {
            what,
            error,
            seen: None,
            config_file: None,
            stamp,
            stamped_at,
        };
    }
    if trigger == Trigger::Files && on_disk == in_force.fingerprint {
        return Look::InForce;
    }
    if trigger == Trigger::Files && known.contains(&Some(on_disk)) {
        return Look::StillRejected;
    }
    let built = Snapshot::build_hashed(path, generation, on_disk, &in_force.resumption)
        .and_then(|built| in_force.not_run_out_over(built));
    if built.is_err() {
        // What it read and parsed before failing is freed: memory to give back, as a
        // replaced snapshot's is (counted as it drops).
        crate::memory::config_freed();
    }
    // A served certificate renewed by `rm; cp` is gone for a moment, like a config file
    // written that way: wait for it rather than count a failure. A file the config in force
    // does not serve is a mistake in the new config: rejected. (SIGHUP reports either:
    // someone asked, and gets the error.)
    if let (Trigger::Files, Err(e)) = (trigger, &built) {
        if let Some((what, error)) = served_file_gone(path, &in_force.config, e) {
            return Look::Missing {
                what,
                error,
                seen: Some(on_disk),
                config_file: Some(read_hash(path)),
                stamp,
                stamped_at,
            };
        }
    }
    // Files written to while they were read: a failed build may be a file caught mid-write
    // (not a mistake to report), and a good one may mix old and new files, or hold a valid
    // prefix of a file still being written (not to be applied).
    let settled = on_disk_fingerprint(path) == on_disk;
    Look::Built {
        on_disk,
        stamp,
        stamped_at,
        settled,
        fresh,
        config_file: read_hash(path),
        served: in_force.served_hash(),
        built: Box::new(built),
    }
}

/// The config file at `path` deleted or truncated (`gone`), and not written yet: nothing to
/// try; what is gone, and the error naming it.
/// Between a delete and the new file (`rm; cp`, a deploy script), or truncated by a slow
/// generator (`generate-config > wsgate.toml`): an empty file is never a config. Only a
/// clear "not there" (a dangling link included): an unreadable folder is an error to report,
/// not a file to wait for.
fn config_file_missing(path: &Path, gone: NotThere) -> (&'static str, String) {
    let (what, why) = match gone {
        Absent => (
            "config file",
            format!("config file {}", crate::files::not_found(path)),
        ),
        Empty => ("config file's content", "config file is empty".to_string()),
    };
    (what, format!("{}: {why}", path.display()))
}

/// Whether `what`, a [`Look::Missing`]'s, is the config file (gone or emptied), as
/// [`config_file_missing`] says it, rather than a file it serves.
pub(super) fn is_config_file(what: &str) -> bool {
    what.starts_with("config file")
}

/// Whether `error`, the failure to build the config at `path`, is only that a file the
/// config `in_force` serves (a certificate, a key, a client or backend CA file, a backend
/// client certificate or key, a client revocation list) is clearly not there (a dangling link included), or is there but
/// empty (truncated by `cat new.key > tls.key` or a two-step write, not written yet), as a
/// config file's absence or emptiness is: what is gone, and an error naming it and its
/// config line. `None` for any other failure, so a real mistake saved in the same moment is
/// still reported as one.
fn served_file_gone(
    path: &Path,
    in_force: &Config,
    error: &ConfigError,
) -> Option<(&'static str, String)> {
    let config = Config::load(path).ok()?;
    let served = in_force.tls_files();
    let served = |file: &Path| served.iter().any(|f| f == file);
    let named = named_files(&config).into_iter();
    named
        .filter(|(_, file, at)| error.location.as_ref() == Some(*at) && served(file))
        .find_map(|(what, file, at)| gone_at(path, what, file, at))
}

/// The first of the files the config in force serves (see [`served_file_gone`]) that is gone
/// or empty now, as [`served_file_gone`] says it: for a file gone while the config file on
/// disk is rejected, which no look reads (its content is what was rejected).
///
/// Not a file named through the config file's folder while that folder is gone (a relative
/// `../secrets/tls.crt` goes through it): the file may be where it was, and what is gone is
/// the config file, said as such.
pub(super) fn in_force_file_gone(in_force: &Config) -> Option<(&'static str, String)> {
    let folder = (in_force.path.parent()).filter(|folder| !folder.as_os_str().is_empty());
    let folder_gone = folder.filter(|folder| matches!(folder.try_exists(), Ok(false)));
    (named_files(in_force).into_iter())
        .filter(|(_, file, _)| !folder_gone.is_some_and(|folder| file.starts_with(folder)))
        .find_map(|(what, file, at)| gone_at(&in_force.path, what, file, at))
}

/// `file`, which the config at `path` names at `at`, as gone (`what`: how to say a file of its
/// kind gone, and emptied) and the error naming it, if it is absent or empty.
fn gone_at(
    path: &Path,
    [gone, emptied]: [&'static str; 2],
    file: &Path,
    at: &Location,
) -> Option<(&'static str, String)> {
    let (what, why) = match absent_or_empty(file)? {
        Absent => (gone, crate::files::not_found(file)),
        Empty => (emptied, "is empty".to_string()),
    };
    let error = ConfigError::at(path, at, format!("{} {why}", file.display()));
    Some((what, error.to_string()))
}

/// The certificate, key, CA and revocation list files `config` names, each with how to say
/// one of its kind gone (and emptied), and where it is named.
fn named_files(config: &Config) -> Vec<([&'static str; 2], &Path, &Location)> {
    let backend_tls = (config.routes.iter()).filter_map(|r| r.backend_tls.as_ref());
    let clients = backend_tls.clone().filter_map(|tls| tls.client.as_ref());
    let certificates = (config.certificates.iter()).chain(clients).flat_map(|c| {
        [
            (
                ["certificate file", "certificate file's content"],
                c.cert.as_path(),
                &c.cert_location,
            ),
            (
                ["key file", "key file's content"],
                c.key.as_path(),
                &c.key_location,
            ),
        ]
    });
    let client_cas = (config.client_auth.iter()).map(|auth| (&auth.ca, &auth.ca_location));
    let cas = (backend_tls.map(|tls| (&tls.ca, &tls.ca_location)))
        .chain(client_cas)
        .map(|(ca, at)| (["CA file", "CA file's content"], ca.as_path(), at));
    let crls = (config.client_auth.iter()).filter_map(|auth| auth.crl.as_ref());
    let crls = crls.map(|(crl, at)| {
        (
            ["revocation list file", "revocation list file's content"],
            crl.as_path(),
            at,
        )
    });
    certificates.chain(cas).chain(crls).collect()
}

/// Whether the files at `path`, stamped `stamp` at `stamped_at` before they were read, still
/// have that stamp now that they have been read, and a [`DEBOUNCE`] after `stamped_at`: no write
/// came while they were read, nor in the debounce's time from the stamp on. (Not a debounce's
/// time after the read: a large config is read for longer than that, and its writer would be
/// caught in the read's time all the same.) Content and write times, not events: a neighbour
/// file written nonstop in the same folder is no write to them, and a writer that rewrote the
/// same first pieces in the meantime is one.
pub(super) async fn holds_still(path: &Path, stamp: u64, stamped_at: Instant) -> bool {
    tokio::time::sleep_until(stamped_at + DEBOUNCE).await;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || on_disk_stamp(&path) == stamp)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A folder with a self-signed certificate and key, and a config serving them.
    struct Files {
        dir: tempfile::TempDir,
        config: PathBuf,
    }

    const CONFIG: &str = r#"[proxy]
listen = ["127.0.0.1:0"]

[tls]
certificates = [ { cert = "server.crt", key = "server.key" } ]
"#;

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(dir.path().join("server.crt"), cert.cert.pem()).unwrap();
            std::fs::write(dir.path().join("server.key"), cert.key_pair.serialize_pem()).unwrap();
            let config = dir.path().join("wsgate.toml");
            std::fs::write(&config, CONFIG).unwrap();
            Files { dir, config }
        }

        fn in_force(&self) -> Snapshot {
            Snapshot::build(&self.config, 1).unwrap()
        }

        fn write_config(&self, body: &str) {
            std::fs::write(&self.config, body).unwrap();
        }
    }

    fn missing(look: &Look) -> Option<(&'static str, &str, Option<u64>)> {
        match look {
            Look::Missing {
                what, error, seen, ..
            } => Some((*what, error.as_str(), *seen)),
            _ => None,
        }
    }

    /// The build a look made, if it made one: whether it held still, and its result.
    fn built(look: Look) -> Option<(u64, bool, Result<Snapshot, ConfigError>)> {
        match look {
            Look::Built {
                on_disk,
                settled,
                built,
                ..
            } => Some((on_disk, settled, *built)),
            _ => None,
        }
    }

    /// A rejected build and a replaced snapshot both leave memory the trimmer is to give
    /// back (other tests count too, in parallel: only a rise is certain).
    #[tokio::test]
    async fn a_rejected_build_and_a_dropped_snapshot_count_as_configs_freed() {
        let files = Files::new();
        let in_force = files.in_force();
        let before = crate::memory::configs_freed();
        files.write_config("[proxy]\nlisten = 5\n");
        let (_, _, rejected) = built(look(
            &files.config,
            Trigger::Manual,
            &in_force,
            [None; 2],
            2,
        ))
        .unwrap();
        assert!(rejected.is_err());
        assert!(crate::memory::configs_freed() > before);
        let before = crate::memory::configs_freed();
        drop(in_force);
        // Freed a batch at a time by a task of its own, which counts it at the end.
        let counted = async {
            while crate::memory::configs_freed() == before {
                tokio::task::yield_now().await;
            }
        };
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), counted).await;
        assert!(waited.is_ok(), "the dropped snapshot was never counted");
    }

    #[test]
    fn the_content_in_force_is_built_again_only_when_asked_by_hand() {
        let files = Files::new();
        let in_force = files.in_force();
        let look_by = |trigger| look(&files.config, trigger, &in_force, [None; 2], 2);
        assert!(matches!(look_by(Trigger::Files), Look::InForce));
        let (on_disk, settled, snapshot) = built(look_by(Trigger::Manual)).unwrap();
        assert_eq!(on_disk, in_force.fingerprint);
        assert!(settled);
        assert_eq!(snapshot.unwrap().generation, 2);
    }

    #[test]
    fn new_content_is_built_and_a_rejected_one_is_not_tried_again() {
        let files = Files::new();
        let in_force = files.in_force();
        files.write_config(&format!("{CONFIG}\n[limits]\nmax_connections = 10\n"));
        let (_, settled, snapshot) =
            built(look(&files.config, Trigger::Files, &in_force, [None; 2], 2))
                .expect("a changed config is built");
        assert!(settled);
        assert_eq!(snapshot.unwrap().config.limits.max_connections, 10);

        files.write_config(&format!("{CONFIG}\n[limits]\nmax_connections = \"many\"\n"));
        let (on_disk, _, rejected) =
            built(look(&files.config, Trigger::Files, &in_force, [None; 2], 2)).unwrap();
        assert!(rejected.is_err());
        let again = look(
            &files.config,
            Trigger::Files,
            &in_force,
            [Some(on_disk), None],
            2,
        );
        assert!(matches!(again, Look::StillRejected));
        // A SIGHUP is answered with the error again.
        let asked = look(
            &files.config,
            Trigger::Manual,
            &in_force,
            [Some(on_disk), None],
            2,
        );
        assert!(built(asked).is_some_and(|(_, _, b)| b.is_err()));
    }

    /// Content that cannot be read is told apart by why: a folder put where a rejected
    /// over-large file was is a new mistake, to be tried and logged once too; the file
    /// growing is not.
    #[test]
    fn unreadable_configs_in_each_other_s_place_are_each_tried() {
        let files = Files::new();
        let in_force = files.in_force();
        let look_at = |rejected| {
            look(
                &files.config,
                Trigger::Files,
                &in_force,
                [rejected, None],
                2,
            )
        };
        let rejected = |look: Look| built(look).map(|(on_disk, _, b)| (on_disk, b.is_err()));
        files.write_config(&"#".repeat(5 << 20));
        let (large, failed) = rejected(look_at(None)).expect("an over-large file is built");
        assert!(failed);
        files.write_config(&"#".repeat(6 << 20));
        assert!(matches!(look_at(Some(large)), Look::StillRejected));
        std::fs::remove_file(&files.config).unwrap();
        std::fs::create_dir(&files.config).unwrap();
        let (folder, failed) = rejected(look_at(Some(large))).expect("a folder is tried");
        assert!(failed && folder != large);
        assert!(matches!(look_at(Some(folder)), Look::StillRejected));
        std::fs::remove_dir(&files.config).unwrap();
        files.write_config(&"#".repeat(5 << 20));
        let (again, failed) = rejected(look_at(Some(folder))).expect("a large file is tried");
        assert!(failed && again == large);
    }

    #[test]
    fn a_config_file_deleted_or_truncated_is_waited_for_unless_asked_by_hand() {
        let files = Files::new();
        let in_force = files.in_force();
        files.write_config("");
        let empty = look(&files.config, Trigger::Files, &in_force, [None; 2], 2);
        let (what, error, seen) = missing(&empty).unwrap();
        assert_eq!((what, seen), ("config file's content", None));
        assert!(
            error.ends_with("wsgate.toml: config file is empty"),
            "{error}"
        );

        std::fs::remove_file(&files.config).unwrap();
        let gone = look(&files.config, Trigger::Files, &in_force, [None; 2], 2);
        let (what, error, _) = missing(&gone).unwrap();
        assert_eq!(what, "config file");
        assert!(
            error.ends_with("wsgate.toml: config file not found"),
            "{error}"
        );
        let asked = look(&files.config, Trigger::Manual, &in_force, [None; 2], 2);
        assert!(built(asked).is_some_and(|(_, _, b)| b.is_err()));
    }

    /// An in-place write caught between its truncation and its bytes: the file is gone only
    /// once it stays so (its stamp, taken before the look, no longer holds once written), and
    /// a SIGHUP that finds it empty waits as for a file written a moment ago, whatever its
    /// write time says (a read in the middle of the truncation sees the time of the write
    /// before).
    #[tokio::test]
    async fn an_emptied_config_file_is_waited_on_before_it_counts_as_gone_or_empty() {
        let files = Files::new();
        let in_force = files.in_force();
        files.write_config("");
        let Look::Missing {
            stamp, stamped_at, ..
        } = look(&files.config, Trigger::Files, &in_force, [None; 2], 2)
        else {
            panic!("an empty config file is missing");
        };
        files.write_config(&format!("{CONFIG}\n[limits]\nmax_connections = 10\n"));
        assert!(!holds_still(&files.config, stamp, stamped_at).await);

        files.write_config("");
        let asked = look(&files.config, Trigger::Manual, &in_force, [None; 2], 2);
        assert!(matches!(asked, Look::Built { fresh: true, .. }));
    }

    #[test]
    fn a_served_certificate_gone_is_waited_for_and_a_new_one_missing_is_rejected() {
        let files = Files::new();
        let in_force = files.in_force();
        std::fs::remove_file(files.dir.path().join("server.crt")).unwrap();
        let gone = look(&files.config, Trigger::Files, &in_force, [None; 2], 2);
        let (what, error, seen) = missing(&gone).unwrap();
        assert_eq!(what, "certificate file");
        assert!(error.contains("server.crt not found"), "{error}");
        assert_eq!(seen, Some(on_disk_fingerprint(&files.config)));

        // A file the config in force does not serve: a mistake in the new config.
        files.write_config(&CONFIG.replace("server.crt", "other.crt"));
        let new = look(&files.config, Trigger::Files, &in_force, [None; 2], 2);
        assert!(built(new).is_some_and(|(_, _, b)| b.is_err()));
    }

    #[tokio::test]
    async fn files_hold_still_until_written_to_even_with_the_same_bytes() {
        let files = Files::new();
        let (stamped_at, stamp) = (Instant::now(), on_disk_stamp(&files.config));
        assert!(holds_still(&files.config, stamp, stamped_at).await);
        // Replaced by a file with the same content, as an editor saves.
        let new = files.dir.path().join("wsgate.toml.new");
        std::fs::write(&new, CONFIG).unwrap();
        std::fs::rename(&new, &files.config).unwrap();
        assert!(!holds_still(&files.config, stamp, stamped_at).await);
    }
}
