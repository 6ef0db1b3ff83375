//! The [`Snapshot`]: the config in force, as every new connection reads it: the validated
//! config, its compiled routes and its rustls config, built as one unit from the files on disk
//! (or not at all), with a fingerprint of those files so a reload can tell whether they changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{escape_controls, ClientAuth, Config, ConfigError};
use crate::fingerprint::{fingerprint_as_read, fingerprint_of, on_disk_fingerprint};
use crate::routes::RouteTable;
use crate::tls;

/// What [`Snapshot::renewed`] found.
pub(crate) enum Renewed {
    /// The certificate, key and CA files hold what is served.
    AsServed,
    /// One of them is gone or empty: being written, most likely.
    Gap,
    /// They changed: the hash they had as read, and the snapshot built from them.
    Read(u64, Box<Result<Snapshot, ConfigError>>),
}

/// Everything a new connection needs, built and validated as one unit.
pub(crate) struct Snapshot {
    pub(crate) config: Config,
    pub(crate) routes: RouteTable,
    pub(crate) tls: Arc<ServerConfig>,
    /// Who checks clients' certificates, if `tls.client_ca` is set.
    pub(crate) client_verifier: Option<Arc<dyn tls::ClientCertVerifier>>,
    /// How clients are checked: the same for configs that check them alike (see
    /// `tls::Served::client_scope`).
    pub(crate) client_scope: u64,
    /// When each served certificate expires.
    pub(crate) expiry: Vec<tls::Expiry>,
    /// The `tls.client_crl` file, and when the first of its lists is due to be replaced.
    pub(crate) crl_due: Option<(PathBuf, i64)>,
    pub(crate) generation: u64,
    /// Hash of the bytes of every file the config depends on.
    pub(crate) fingerprint: u64,
    /// Hash of the bytes of the certificate, key and CA files, as they were when read: tells a
    /// renewal apart while the config file on disk is rejected (see [`Snapshot::renewed`]).
    served: u64,
    /// What is wrong with the certificates (a name no route's host uses, say).
    tls_warnings: Vec<ConfigError>,
    /// The DNS names of each served certificate, in `tls.certificates` order: a renewal must
    /// keep them (see [`Snapshot::names_kept`]).
    names: Vec<Vec<String>>,
    /// The ticket keys and session caches, for the next config to resume clients' sessions
    /// with (see [`tls::Resumption`]).
    pub(crate) resumption: Arc<tls::Resumption>,
}

/// The most warnings logged as a config goes into force: one that warns about each of
/// thousands of routes (hosts no certificate names) would flood the log at every reload.
/// `wsgate check` prints them all.
const LOGGED_WARNINGS: usize = 20;

/// The routes (the table, their configs and warnings) freed a batch at a time by a task of
/// their own (see [`crate::memory::drop_gradually`]): the last holder of a replaced snapshot
/// may be any connection, on a thread that serves others. Freed here outside a runtime.
impl Drop for Snapshot {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            crate::memory::config_freed();
            return;
        };
        let table = std::mem::take(&mut self.routes);
        let configs = std::mem::take(&mut self.config.routes);
        let warnings = std::mem::take(&mut self.config.warnings);
        runtime.spawn(async move {
            table.drop_gradually().await;
            crate::memory::drop_gradually(configs.into_iter()).await;
            crate::memory::drop_gradually(warnings.into_iter()).await;
            crate::memory::config_freed();
        });
    }
}

impl Snapshot {
    /// Loads the config at `path` and everything it names, with sessions of its own: the
    /// first of a server (or `wsgate check`'s).
    pub(crate) fn build(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
        let fingerprint = on_disk_fingerprint(path);
        Self::build_hashed(path, generation, fingerprint, &Arc::default())
    }

    /// Like `build`, with the files' fingerprint taken by the caller *before* reading: a
    /// write landing during the build then still looks like a change afterwards, and is
    /// applied by its own event (never hidden under this hash).
    /// `resumption`: the sessions of the config in force, resumed by this one (if it has
    /// `session_resumption` on).
    pub(crate) fn build_hashed(
        path: &Path,
        generation: u64,
        fingerprint: u64,
        resumption: &Arc<tls::Resumption>,
    ) -> Result<Snapshot, ConfigError> {
        Self::from_config(Config::load(path)?, generation, fingerprint, resumption)
    }

    fn from_config(
        config: Config,
        generation: u64,
        fingerprint: u64,
        resumption: &Arc<tls::Resumption>,
    ) -> Result<Snapshot, ConfigError> {
        // Hashed before the PEM files are read: a write in between reads as a change later.
        let served_hash = served_hash(&config);
        let served = tls::server_config(&config, resumption)?;
        let backends = tls::backend_clients(&config)?;
        let routes = RouteTable::with_backend_tls(&config.routes, backends.routes);
        Ok(Snapshot {
            config,
            routes,
            tls: served.tls,
            client_verifier: served.client_verifier,
            client_scope: served.client_scope,
            expiry: presented(served.expiry, backends.expiry),
            crl_due: served.crl_due,
            generation,
            fingerprint,
            served: served_hash,
            tls_warnings: [served.warnings, backends.warnings].concat(),
            names: served.names,
            resumption: served.resumption,
        })
    }

    /// This config with its certificates and keys read again, as generation `generation`, if
    /// their files changed since they were read ([`Renewed::Read`], with the hash of those
    /// files as they were before this read them). For a config file on disk that is rejected
    /// (or cannot bind): a certificate renewal must not wait for someone to fix that file, or
    /// a typo becomes an expired certificate.
    pub(crate) fn renewed(&self, generation: u64) -> Renewed {
        let config = &self.config;
        let read = served_hash(config);
        // A file gone or emptied is no renewal (the "file gone" wait covers it, as a reload
        // does: it is about to be written); it is renewed once back.
        let gap = |file: &PathBuf| crate::files::absent_or_empty(file).is_some();
        if read == self.served {
            return Renewed::AsServed;
        }
        if config.tls_files().iter().any(gap) {
            return Renewed::Gap;
        }
        // Fingerprinted as this config file with the files now read: that config file back
        // on disk with these files is this snapshot, and with the files it had before is not.
        // (Taken before the build reads them, as for any build.)
        let files = config.watched_files();
        let fingerprint = fingerprint_as_read(&files, (&config.path, config.source_hash));
        let renewed = Self::from_config(config.clone(), generation, fingerprint, &self.resumption)
            .and_then(|renewed| self.names_kept(renewed))
            .and_then(|renewed| self.not_run_out_over(renewed));
        Renewed::Read(read, Box::new(renewed))
    }

    /// `next`, unless it swaps a certificate in force for one that has run out, read from
    /// the same file (see [`tls::run_out_over_valid`]): as a config reloaded or a renewal,
    /// refused, the one in force staying.
    pub(crate) fn not_run_out_over(&self, next: Snapshot) -> Result<Snapshot, ConfigError> {
        match tls::run_out_over_valid(&self.expiry, &next.expiry) {
            Some(why) => Err(ConfigError::new(&self.config.path, why)),
            None => Ok(next),
        }
    }

    /// `renewed`, if its certificates still name, between them, every DNS name the ones in
    /// force name. Certificates that drop a name are no renewal (one for other names, swapped
    /// in with a new config file that was rejected): served under this config, they would
    /// fail the handshakes of clients it serves. They go into force with a config file that
    /// is accepted, or not at all; unless the certificate in force that named it has run out
    /// (it serves no one any more: a renewal, whatever it names, can only help; the reloader
    /// looks at the files again as a leaf in force runs out, for this).
    fn names_kept(&self, renewed: Snapshot) -> Result<Snapshot, ConfigError> {
        let config = &self.config;
        let named_now = renewed.names.concat();
        for (served, paths) in self.names.iter().zip(&config.certificates) {
            if tls::run_out(&self.expiry, &paths.cert) {
                continue;
            }
            if let Some(dropped) = served
                .iter()
                .find(|name| !tls::names_cover(&named_now, name))
            {
                let message = format!(
                    "{}: no certificate in tls.certificates now names {dropped:?}, which this one in force does: not a renewal, so not served while the config file on disk is not in force",
                    paths.cert.display()
                );
                return Err(ConfigError::at(&config.path, &paths.cert_location, message));
            }
        }
        Ok(renewed)
    }

    /// The hash of this config's certificate, key and CA files as they are on disk now.
    pub(crate) fn served_hash(&self) -> u64 {
        served_hash(&self.config)
    }

    /// Whether `hash` (a [`Snapshot::served_hash`]) is of this config's certificate, key and
    /// CA files as they were read.
    pub(crate) fn serves(&self, hash: u64) -> bool {
        hash == self.served
    }

    /// What loads but is surely a mistake (a route that can never be chosen), and what is
    /// wrong with the certificates' validity: logged when the snapshot goes into force (not
    /// at every build: a file still being written is built several times), printed by
    /// `wsgate check`.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let (config, validity) = self.warnings_apart();
        config.chain(validity).collect()
    }

    /// The config's warnings, and those about the certificates' validity.
    fn warnings_apart(&self) -> (impl Iterator<Item = String> + '_, Vec<String>) {
        let config = (self.config.warnings.iter())
            .chain(&self.tls_warnings)
            .map(ToString::to_string);
        (config, tls::validity_warnings(&self.expiry, &self.config))
    }

    /// [`Self::warnings`], the first [`LOGGED_WARNINGS`] of them, then how many more: those
    /// about a certificate expired or about to be first, so that a config with many route
    /// warnings cannot push the one that will stop clients out of the log.
    pub(crate) fn log_warnings(&self) {
        let (config, validity) = self.warnings_apart();
        let warnings: Vec<String> = validity.into_iter().chain(config).collect();
        let more = warnings.len().saturating_sub(LOGGED_WARNINGS);
        for warning in warnings.into_iter().take(LOGGED_WARNINGS) {
            tracing::warn!("{warning}");
        }
        if more > 0 {
            tracing::warn!(
                more,
                "and {more} more warnings about this config, not logged: `wsgate check` lists them all"
            );
        }
    }

    /// `wsgate check`'s line: what the config holds, and when the first certificate runs
    /// out (or which one already has).
    pub(crate) fn summary(&self) -> String {
        let config = &self.config;
        let admin = match config.admin {
            Some(addr) => format!(", admin on {addr}"),
            None => String::new(),
        };
        let due = self.crl_due.as_ref().map(|(_, due)| *due);
        let expiry = tls::expiry_summary(&self.expiry) + &tls::lists_summary(due);
        let asked = match config.client_auth.as_ref() {
            None => "",
            Some(auth) => match (auth.mode, auth.crl.is_some()) {
                (ClientAuth::Required, false) => ", client certificates required",
                (ClientAuth::Required, true) => ", client certificates required (and not revoked)",
                (ClientAuth::Optional, false) => ", client certificates optional",
                (ClientAuth::Optional, true) => ", client certificates optional (and not revoked)",
            },
        };
        let clients = match config.backend_client_certificates() {
            0 => asked.to_string(),
            n => format!("{asked}, {n} backend client certificate(s)"),
        };
        let summary = format!(
            "{}: ok: {} listener(s), {} certificate(s), {} route(s){clients}{admin}{expiry}",
            config.path.display(),
            config.listen.len(),
            config.certificates.len(),
            config.routes.len(),
        );
        // File names come from the config: no control character reaches the terminal.
        escape_controls(&summary)
    }
}

/// The expiry of every certificate file wsgate presents, each once: one served that is also
/// a route's client certificate (a certificate for both uses) is warned about as served.
fn presented(served: Vec<tls::Expiry>, clients: Vec<tls::Expiry>) -> Vec<tls::Expiry> {
    let mut seen = std::collections::HashSet::new();
    let mut all = [served, clients].concat();
    all.retain(|cert| seen.insert(cert.file.clone()));
    all
}

/// The hash of the certificate, key and CA files `config` names, as they are on disk now.
fn served_hash(config: &Config) -> u64 {
    fingerprint_of(&config.tls_files(), false)
}

#[cfg(test)]
mod tests {
    use super::{Renewed, Snapshot};

    /// A self-signed certificate for `names` and its key, as `stem.crt` and `stem.key`; one
    /// that ran out in 2001 for names starting with `expired.`.
    fn leaf(dir: &std::path::Path, stem: &str, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let expired = names.iter().any(|n| n.starts_with("expired."));
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    /// A config in force with a certificate for each of `before`, whose files are then
    /// rewritten for `after`: what the renewal comes to.
    fn renew(before: &[&[&str]], after: &[&[&str]]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let mut list = Vec::new();
        for (i, names) in before.iter().enumerate() {
            leaf(dir.path(), &format!("c{i}"), names);
            list.push(format!("{{ cert = \"c{i}.crt\", key = \"c{i}.key\" }}"));
        }
        let config = dir.path().join("wsgate.toml");
        let route = "[[route]]\nname = \"r\"\npath = \"/r\"\nbackends = [\"127.0.0.1:1\"]\n";
        let head = format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\ncertificates = [ {} ]\n\n",
            list.join(", ")
        );
        std::fs::write(&config, head + route).unwrap();
        let snapshot = Snapshot::build(&config, 1).unwrap();
        for (i, names) in after.iter().enumerate() {
            leaf(dir.path(), &format!("c{i}"), names);
        }
        match snapshot.renewed(2) {
            Renewed::Read(_, built) => (*built).map(|_| ()).map_err(|e| e.to_string()),
            _ => Err("not read".into()),
        }
    }

    #[test]
    fn a_renewal_keeps_the_names_served_between_its_certificates() {
        // The same names, or more, or a wildcard for them: renewals.
        assert!(renew(&[&["a.example"]], &[&["a.example"]]).is_ok());
        assert!(renew(&[&["a.example"]], &[&["a.example", "b.example"]]).is_ok());
        assert!(renew(&[&["a.b.example"]], &[&["*.b.example"]]).is_ok());
        // A name moved from one certificate to another: still served.
        let moved = renew(
            &[&["a.example", "b.example"], &["b.example", "c.example"]],
            &[&["a.example", "b.example"], &["c.example"]],
        );
        assert!(moved.is_ok(), "{moved:?}");
        // A certificate for other names in the place of one in force: refused, naming it.
        let other = renew(&[&["localhost"]], &[&["other.example"]]);
        let error = other.unwrap_err();
        assert!(
            error.contains("c0.crt: no certificate in tls.certificates now names \"localhost\""),
            "{error}"
        );
        // A wildcard narrowed to some of its names: the others clients may use are dropped.
        assert!(renew(&[&["*.example.com"]], &[&["chat.example.com"]]).is_err());
        // A certificate in force that ran out serves no one: whatever replaces it can only
        // help.
        assert!(renew(&[&["expired.example"]], &[&["other.example"]]).is_ok());
    }
}
