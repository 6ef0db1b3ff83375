//! Live reload: every kind of file change is applied, bad configs never win, and live tunnels
//! are never touched. Real files in a temp folder, a real proxy, real clients; every wait is on
//! the proxy's reload status (a `watch` channel), never a guess.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// Saves like an editor: write a temporary file beside it, then rename it over the original.
fn rename_save(path: &Path, body: &str) {
    rename_over(path, &format!("{CONFIG_HEAD}{body}"));
}

/// Writes `text` to `path` as an editor saves: a file beside it, renamed over it.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_is_applied() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    let status = generation(&mut rx, 2).await;
    assert_eq!((status.successes, status.failures), (1, 0));
    assert!(status.last_success.is_some());
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 404);
    assert_eq!(which_backend(proxy.addr, "wss://localhost/b").await, "one");
}

/// A write in place through another path to the config file, twice: a hard link in another
/// folder here, and to the kernel a bind mount of the file alone (a container's `-v
/// ./wsgate.toml:/etc/wsgate/wsgate.toml`, edited on the host) is the same. The folder wsgate
/// sees the file in hears nothing of it; the file's own watch does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_through_a_hard_link_elsewhere_is_applied() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("linked.toml");
    std::fs::hard_link(proxy.config_path(), &link).unwrap();
    write_body(&link, &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    write_body(&link, &route("c", "/c", &[backend.addr]));
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(proxy.addr, "/c").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_by_rename_is_applied_twice_in_a_row() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    rename_save(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    rename_save(&proxy.config_path(), &route("c", "/c", &[backend.addr]));
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(proxy.addr, "/c").await, 101);
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 404);
}

/// A Kubernetes ConfigMap or Secret volume as kubelet's AtomicWriter lays it out: every file
/// is a symlink `name -> ..data/name`, `..data -> ..<stamp>`; an update writes a new stamped
/// folder, points a `..data_tmp` symlink at it and renames that over `..data`. Kubelet then
/// deletes the old stamped folder; `remove_old` does that too.
struct ConfigMap {
    dir: PathBuf,
    updates: usize,
    current: Option<String>,
    remove_old: bool,
}

impl ConfigMap {
    /// A volume holding `wsgate.toml` = [`CONFIG_HEAD`] + `body`, beside `server.crt`/`.key`
    /// written as plain files.
    fn create(dir: &Path, body: &str) -> ConfigMap {
        pki().write_leaf(dir, "server", SERVER_NAMES);
        ConfigMap::volume(
            dir,
            &[("wsgate.toml", format!("{CONFIG_HEAD}{body}"))],
            false,
        )
    }

    fn volume(dir: &Path, files: &[(&str, String)], remove_old: bool) -> ConfigMap {
        let mut map = ConfigMap {
            dir: dir.to_path_buf(),
            updates: 0,
            current: None,
            remove_old,
        };
        map.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        map
    }

    fn publish_config(&mut self, body: &str) {
        self.publish(&[("wsgate.toml", format!("{CONFIG_HEAD}{body}"))]);
    }

    fn publish(&mut self, files: &[(&str, String)]) {
        self.updates += 1;
        let stamp = format!(
            "..2026_11_25_00_00_{:02}.{}",
            self.updates,
            std::process::id()
        );
        std::fs::create_dir(self.dir.join(&stamp)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.join(&stamp).join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(stamp) {
            if self.remove_old {
                std::fs::remove_dir_all(self.dir.join(old)).unwrap();
            }
        }
    }
}

/// A Kubernetes-style volume in `dir` whose config file holds `body`, and wsgate serving
/// from it.
async fn serving_configmap(dir: &Path, body: &str) -> (ConfigMap, wsgate::Server) {
    let map = ConfigMap::create(dir, body);
    let server = wsgate::Server::start(dir.join("wsgate.toml"))
        .await
        .unwrap();
    (map, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_applied_twice_in_a_row() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut map, server) = serving_configmap(dir.path(), &route("a", "/a", &[backend.addr])).await;
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    map.publish_config(&route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(addr, "/b").await, 101);
    map.publish_config(&route("c", "/c", &[backend.addr]));
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(addr, "/c").await, 101);
    assert_eq!(upgrade_status(addr, "/b").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_and_created_again_is_applied() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    std::fs::remove_file(proxy.config_path()).unwrap();
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_gone_for_a_while_is_no_failure() {
    // `rm wsgate.toml; …; cp new.toml wsgate.toml`.
    let gap = |path: &Path| std::fs::remove_file(path).unwrap();
    a_gap_in_the_config_is_no_failure(gap, "wsgate.toml: config file not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_empty_for_a_while_is_no_failure() {
    // `generate-config > wsgate.toml` with a generator that takes its time: truncated first.
    let gap = |path: &Path| std::fs::write(path, "").unwrap();
    a_gap_in_the_config_is_no_failure(gap, "wsgate.toml: config file is empty").await;
}

/// The gap `make_gap` leaves before the new config is written is not a rejected reload
/// (that would trip failure alerts), but it is visible (`said`) while it lasts.
async fn a_gap_in_the_config_is_no_failure(make_gap: impl FnOnce(&Path), said: &str) {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    make_gap(&proxy.config_path());
    let gone = status_where(&mut rx, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(error.ends_with(said), "{error}");
    assert_eq!((gone.generation, gone.failures), (1, 0));
    assert_eq!(
        upgrade_status(proxy.addr, "/a").await,
        101,
        "still in force"
    );

    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    let back = generation(&mut rx, 2).await;
    assert_eq!((back.failures, back.last_error), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_gone_for_a_while_is_no_failure() {
    // A renewal script doing `rm tls.crt; …; cp new.crt tls.crt`: like a config file written
    // that way, the gap must not count as a rejected reload.
    let gone = |file: &Path| std::fs::remove_file(file).unwrap();
    let said = ":5:27: tls.certificates[0].cert: ";
    let (backend, proxy, mut rx) =
        a_gap_in_a_served_file_is_no_failure("server.crt", gone, said, "not found").await;
    let crt = proxy.dir.path().join("server.crt");

    // Asked for by hand, the same gap is an error: whoever sent SIGHUP gets an answer.
    std::fs::remove_file(&crt).unwrap();
    proxy.server.reload();
    let refused = status_where(&mut rx, "the manual reload refused", |s| s.failures == 1).await;
    assert!(
        refused
            .last_error
            .unwrap_or_default()
            .contains("cannot read certificate"),
        "a manual reload reports the missing file"
    );

    // A mistake saved while the file is gone is reported as the mistake it is: here a new
    // certificate entry whose key is another certificate's.
    let dir = proxy.dir.path();
    pki().write_leaf(dir, "other", &["other.test"]);
    pki().write_leaf(dir, "third", &["third.test"]);
    let mismatched = CONFIG_HEAD.replace(
        "certificates = [ ",
        "certificates = [ { cert = \"other.crt\", key = \"third.key\" }, ",
    );
    let body = route("a", "/a", &[backend.addr]);
    std::fs::write(proxy.config_path(), format!("{mismatched}{body}")).unwrap();
    let refused = failures(&mut rx, 2).await;
    let error = refused.last_error.unwrap_or_default();
    assert!(error.contains("does not match certificate"), "{error}");
}

/// Certificate rotations that each fail (a certificate that does not match the key in force)
/// are each a rejected reload, said and counted: the second is no repeat of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_certificate_rotation_is_counted() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let crt = proxy.dir.path().join("server.crt");
    let in_force = std::fs::read_to_string(&crt).unwrap();
    let mut wrong = String::new();
    for n in 1..=2 {
        wrong = pki().leaf(SERVER_NAMES).0;
        rename_over(&crt, &wrong);
        let refused = failures(&mut rx, n).await;
        let error = refused.last_error.unwrap_or_default();
        assert!(error.contains("does not match certificate"), "{error}");
        assert_eq!(refused.generation, 1, "the certificate in force stays");
    }
    // The same wrong certificate saved again is no new failure: looked at (the checks count
    // up), then the one in force put back, which a later look sees.
    let checks = rx.borrow().checks;
    rename_over(&crt, &wrong);
    status_where(&mut rx, "a look at it", |s| s.checks > checks).await;
    rename_over(&crt, &in_force);
    let back = status_where(&mut rx, "the certificate back", |s| s.last_error.is_none()).await;
    assert_eq!((back.failures, back.generation), (2, 1), "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_emptied_for_a_while_is_no_failure() {
    // `cat new.key > tls.key`, or a tool writing the file in two steps: truncated first.
    let emptied = |file: &Path| std::fs::write(file, "").unwrap();
    let said = ":5:47: tls.certificates[0].key: ";
    a_gap_in_a_served_file_is_no_failure("server.key", emptied, said, "is empty").await;
}

/// The gap `make_gap` leaves in `name`, a certificate or key file a proxy serves, is visible
/// (an error at `said` ending `why`) but is no rejected reload, and the file's content back
/// ends it. Returns the backend, the proxy (its route `/a`) and its reload status, for more.
async fn a_gap_in_a_served_file_is_no_failure(
    name: &str,
    make_gap: impl FnOnce(&Path),
    said: &str,
    why: &str,
) -> (
    WsBackend,
    Proxy,
    tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
) {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let file = proxy.dir.path().join(name);
    first_look(&mut rx).await;
    let served = served_leaf(proxy.addr).await;
    let pem = std::fs::read(&file).unwrap();
    make_gap(&file);
    let gone = status_where(&mut rx, "the gap seen", |s| s.last_error.is_some()).await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains(said) && error.ends_with(&format!("{name} {why}")),
        "{error}"
    );
    assert_eq!((gone.generation, gone.failures), (1, 0));
    assert_eq!(served_leaf(proxy.addr).await, served, "still in force");

    std::fs::write(&file, pem).unwrap();
    let back = status_where(&mut rx, "the file seen back", |s| s.last_error.is_none()).await;
    assert_eq!((back.generation, back.failures), (1, 0));
    (backend, proxy, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_identical_content_does_nothing() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    write_body(&proxy.config_path(), &body);
    rename_save(&proxy.config_path(), &body);
    // A real change afterwards is the signal that the watcher has seen everything before it.
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    let status = status_where(&mut rx, "a reload", |s| s.successes > 0).await;
    assert_eq!(
        (status.generation, status.successes, status.failures),
        (2, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_toml_is_rejected_until_fixed() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    write_body(&proxy.config_path(), "[[route]\nname = \"b\"\n");
    let status = failures(&mut rx, 1).await;
    let error = status.last_error.unwrap();
    assert!(error.contains("wsgate.toml:"), "{error}");
    assert!(error.contains(":7:"), "the error names the line: {error}");
    assert_eq!(status.generation, 1);
    assert_eq!(
        upgrade_status(proxy.addr, "/a").await,
        101,
        "the old config still serves"
    );

    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
}

/// A named pipe where the config was, then a key that is `/dev/zero`: each is refused at once
/// (not waited on for a writer, not read until memory runs out), and reloads go on.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_or_a_device_in_place_of_a_file_is_refused_and_reloads_go_on() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    std::fs::remove_file(proxy.config_path()).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(proxy.config_path())
        .status();
    assert!(made.unwrap().success());
    let error = failures(&mut rx, 1).await.last_error.unwrap();
    assert!(error.contains("not a regular file"), "{error}");

    rename_save(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);

    std::os::unix::fs::symlink("/dev/zero", proxy.dir.path().join("zero.key")).unwrap();
    let head = CONFIG_HEAD.replace("server.key", "zero.key");
    let body = route("c", "/c", &[backend.addr]);
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    let error = failures(&mut rx, 2).await.last_error.unwrap();
    assert!(
        error.contains("zero.key") && error.contains("not a regular file"),
        "{error}"
    );
    assert_eq!(
        upgrade_status(proxy.addr, "/b").await,
        101,
        "the old config still serves"
    );

    rename_save(&proxy.config_path(), &body);
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(proxy.addr, "/c").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_mistake_made_again_after_a_revert_is_reported_again() {
    // bad, then back to the config in force (nothing to reload), then the same bad content:
    // the operator made the mistake again and must see it again.
    let backend = WsBackend::start("one").await;
    let good = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&good).await;
    let mut rx = proxy.server.reload_status();
    let bad = "[[route]\nname = \"b\"\n";
    write_body(&proxy.config_path(), bad);
    let status = failures(&mut rx, 1).await;
    write_body(&proxy.config_path(), &good);
    assert!(status.last_error.is_some());
    // Seen once last_error clears: the files hold the config in force again.
    let status = status_where(&mut rx, "the revert seen", |s| s.last_error.is_none()).await;
    assert_eq!((status.generation, status.failures), (1, 1));
    write_body(&proxy.config_path(), bad);
    failures(&mut rx, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_is_rejected_and_applied_once_it_appears() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let body = route("b", "/b", &[backend.addr]);
    let config = format!(
        "{}{body}",
        CONFIG_HEAD
            .replace("server.crt", "new.crt")
            .replace("server.key", "new.key")
    );
    std::fs::write(proxy.config_path(), config).unwrap();
    let status = failures(&mut rx, 1).await;
    let error = status.last_error.unwrap();
    assert!(
        error.contains("new.crt") && error.contains("tls.certificates[0].cert"),
        "{error}"
    );
    assert_eq!(
        upgrade_status(proxy.addr, "/a").await,
        101,
        "the old config still serves"
    );

    pki().write_leaf(proxy.dir.path(), "new", SERVER_NAMES);
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_route_name_is_rejected() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let twice = format!(
        "{}{}",
        route("x", "/x", &[backend.addr]),
        route("x", "/y", &[backend.addr])
    );
    write_body(&proxy.config_path(), &twice);
    let status = failures(&mut rx, 1).await;
    assert!(status.last_error.unwrap().contains("duplicate route name"));
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);
    assert_eq!(upgrade_status(proxy.addr, "/x").await, 404);
}

/// A typo left in the config file must not turn into an expired certificate: renewals of the
/// certificate in force are served while the file on disk stays rejected (`spoil` makes it
/// so), and the rejection is not reported again for them.
async fn a_renewal_is_served_while_the_config_file_is(spoil: impl FnOnce(&str) -> String) {
    let spoiled = |config: &Path| {
        let good = std::fs::read_to_string(config).unwrap();
        std::fs::write(config, spoil(&good)).unwrap();
    };
    a_renewal_is_served_while(spoiled, "a failed reload", |s| s.failures == 1).await;
}

/// Renewals of the certificate in force served while the config file, as `spoil` leaves it,
/// is not going into force: once the reloader has said so (`said`, described by `what`), the
/// renewals are applied, and nothing more is counted as failed.
async fn a_renewal_is_served_while(
    spoil: impl FnOnce(&Path),
    what: &str,
    said: impl Fn(&wsgate::ReloadStatus) -> bool,
) {
    let CertFolderProxy {
        server,
        addr,
        config,
        folder,
        ..
    } = &CertFolderProxy::start().await;
    let (addr, mut rx) = (*addr, server.reload_status());
    spoil(config);
    let counted = status_where(&mut rx, what, said).await.failures;

    let renewed = renew_in_place(folder);
    let status = generation(&mut rx, 2).await;
    assert_eq!(served_leaf(addr).await, der_of(&renewed));
    assert!(
        status.last_error.is_some(),
        "the file on disk is still not in force"
    );
    let renewed = renew_in_place(folder);
    let status = generation(&mut rx, 3).await;
    assert_eq!(served_leaf(addr).await, der_of(&renewed));
    assert_eq!(status.failures, counted, "the error is not counted again");
    assert_eq!(
        upgrade_status(addr, "/a").await,
        101,
        "the routes in force stay"
    );
}

/// Appended to a good config, a route without its path: a config rejected.
const ROUTE_WITHOUT_PATH: &str = "[[route]]\nname = \"a\"\n";

/// A proxy serving a certificate folder, whose config file on disk is then rejected (a route
/// without its path appended), and its reload status once that is counted.
async fn proxy_with_a_rejected_config() -> (
    CertFolderProxy,
    tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
) {
    let proxy = CertFolderProxy::start().await;
    let mut rx = proxy.server.reload_status();
    let good = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(&proxy.config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
    failures(&mut rx, 1).await;
    (proxy, rx)
}

/// Renewals that drop a name the certificate in force serves, written while the config file
/// on disk is rejected: each refused, and each said and counted, not only the first (their
/// errors read alike, but their files are new).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_renewal_dropping_a_served_name_is_refused_and_counted() {
    let (proxy, mut rx) = proxy_with_a_rejected_config().await;
    let served = served_leaf(proxy.addr).await;
    for failed in 2..=3 {
        let (cert, key) = pki().leaf(&["other.example"]);
        std::fs::write(proxy.folder.join("tls.key"), key).unwrap();
        std::fs::write(proxy.folder.join("tls.crt"), &cert).unwrap();
        let status = failures(&mut rx, failed).await;
        assert_eq!(status.generation, 1, "{status:?}");
    }
    assert_eq!(served_leaf(proxy.addr).await, served);
}

/// A renewal refused for a name it drops goes into force when the certificate in force that
/// named it runs out (serving no one, it has nothing left to keep): then, not at the next
/// recheck, a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_refused_for_its_names_is_served_once_the_certificate_in_force_runs_out() {
    // Time for start-up and two rejected reloads on a loaded machine before it runs out.
    let runs_out = std::time::SystemTime::now() + std::time::Duration::from_secs(8);
    let proxy = CertFolderProxy::serving(pki().leaf_until_time(SERVER_NAMES, runs_out)).await;
    let mut rx = proxy.server.reload_status();
    let good = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(&proxy.config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
    failures(&mut rx, 1).await;
    let (cert, key) = pki().leaf(&["other.example"]);
    std::fs::write(proxy.folder.join("tls.key"), key).unwrap();
    std::fs::write(proxy.folder.join("tls.crt"), &cert).unwrap();
    let status = failures(&mut rx, 2).await;
    assert_eq!(
        status.generation, 1,
        "refused while the one in force is valid"
    );

    // What the reloader waits for is the clock.
    let left = runs_out.duration_since(std::time::SystemTime::now());
    tokio::time::sleep(left.unwrap_or_default()).await;
    generation(&mut rx, 2).await;
    assert_eq!(served(proxy.addr, "localhost", true).await, der_of(&cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_served_while_the_config_file_is_rejected() {
    a_renewal_is_served_while_the_config_file_is(|good| format!("{good}{ROUTE_WITHOUT_PATH}"))
        .await;
}

/// A renewal that cannot go into force (a certificate file that holds no certificate) while
/// the config file is rejected is a failed reload like any other: counted, once, and the
/// certificate in force stays; the renewal written after it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_renewal_while_the_config_file_is_rejected_counts_as_a_failure() {
    let (proxy, mut rx) = proxy_with_a_rejected_config().await;
    let (addr, folder) = (proxy.addr, &proxy.folder);
    let served = served_leaf(addr).await;
    std::fs::write(folder.join("tls.crt"), "not a certificate\n").unwrap();
    let status = failures(&mut rx, 2).await;
    assert_eq!(status.generation, 1, "nothing went into force");
    assert_eq!(served_leaf(addr).await, served);

    let renewed = renew_in_place(folder);
    let status = generation(&mut rx, 2).await;
    assert_eq!(served_leaf(addr).await, der_of(&renewed));
    assert_eq!(status.failures, 2, "the bad renewal is counted once");
}

/// The files of a [`CertFolderProxy`]: its config file, certificate and key, as they are now.
fn files_of(proxy: &CertFolderProxy) -> Vec<(PathBuf, Vec<u8>)> {
    let files = [
        &proxy.config,
        &proxy.folder.join("tls.crt"),
        &proxy.folder.join("tls.key"),
    ];
    (files.into_iter())
        .map(|path| (path.clone(), std::fs::read(path).unwrap()))
        .collect()
}

/// A config file rejected, a renewal served meanwhile, then the config file and the
/// certificate it had put back together (a restore of both volumes from one backup): that is
/// a change, served, not the config in force come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_put_back_with_the_config_file_after_a_renewal_is_served() {
    let proxy = CertFolderProxy::start().await;
    let (addr, mut rx) = (proxy.addr, proxy.server.reload_status());
    let (before, served) = (files_of(&proxy), served_leaf(addr).await);
    let good = String::from_utf8(before[0].1.clone()).unwrap();
    std::fs::write(&proxy.config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
    failures(&mut rx, 1).await;
    let renewed = renew_in_place(&proxy.folder);
    generation(&mut rx, 2).await;
    assert_eq!(served_leaf(addr).await, der_of(&renewed));

    for (path, bytes) in &before {
        std::fs::write(path, bytes).unwrap();
    }
    let status = generation(&mut rx, 3).await;
    assert_eq!(status.last_error, None);
    assert_eq!(served_leaf(addr).await, served);
}

/// A config file rejected, a renewal served meanwhile, then the config file mended as it was:
/// the files are the config in force again (its certificate the renewed one), nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_mended_after_a_renewal_is_back_to_the_config_in_force() {
    let (proxy, mut rx) = proxy_with_a_rejected_config().await;
    let renewed = renew_in_place(&proxy.folder);
    generation(&mut rx, 2).await;
    let spoiled = std::fs::read_to_string(&proxy.config).unwrap();
    let good = spoiled.strip_suffix(ROUTE_WITHOUT_PATH).unwrap();
    std::fs::write(&proxy.config, good).unwrap();
    let status = status_where(&mut rx, "the files back in force", |s| {
        s.last_error.is_none()
    })
    .await;
    assert_eq!(status.generation, 2, "{status:?}");
    assert_eq!(served_leaf(proxy.addr).await, der_of(&renewed));
}

/// A certificate rejected, then put back, then the config file rejected, then the certificate
/// spoiled the same way again: a new failure, said and counted, not taken for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_renewal_like_one_put_right_before_is_counted_again() {
    let proxy = CertFolderProxy::start().await;
    let mut rx = proxy.server.reload_status();
    let cert = proxy.folder.join("tls.crt");
    let good = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    failures(&mut rx, 1).await;
    std::fs::write(&cert, &good).unwrap();
    status_where(&mut rx, "the certificate back", |s| s.last_error.is_none()).await;
    let config = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(&proxy.config, format!("{config}{ROUTE_WITHOUT_PATH}")).unwrap();
    failures(&mut rx, 2).await;

    std::fs::write(&cert, "not a certificate\n").unwrap();
    let status = failures(&mut rx, 3).await;
    assert_eq!(status.generation, 1, "nothing went into force");
}

/// A writer rewriting the rejected config file with the same bytes nonstop (a sync loop)
/// brings a look every time; a renewal of the certificate in force is not held off by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_served_while_the_rejected_file_is_rewritten_nonstop() {
    let (proxy, mut rx) = proxy_with_a_rejected_config().await;
    let (addr, config, folder) = (proxy.addr, &proxy.config, &proxy.folder);
    let spoiled = std::fs::read_to_string(config).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rewriter = {
        let (stop, config) = (stop.clone(), config.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&config, &spoiled).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let renewed = renew_in_place(folder);
    // No last write to count a second from: a few looks' time.
    let renewal = rx.wait_for(|s| s.generation == 2);
    let renewed_in_time = tokio::time::timeout(std::time::Duration::from_secs(5), renewal)
        .await
        .is_ok();
    assert!(renewed_in_time, "not renewed: {:?}", *rx.borrow());
    assert_eq!(served_leaf(addr).await, der_of(&renewed));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rewriter.join().unwrap();
}

/// A config file deleted (a deploy script's `rm; …; cp`, stalled) or truncated and not written
/// yet (a slow generator) is waited for, not counted as a failure: the certificates in force
/// are renewed meanwhile all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_served_while_the_config_file_is_gone_or_empty() {
    let gone = |config: &Path| std::fs::remove_file(config).unwrap();
    let said = |s: &wsgate::ReloadStatus| {
        s.failures == 0
            && (s.last_error.as_ref()).is_some_and(|e| e.ends_with("config file not found"))
    };
    a_renewal_is_served_while(gone, "the config file seen gone", said).await;
    let emptied = |config: &Path| std::fs::write(config, "").unwrap();
    let said = |s: &wsgate::ReloadStatus| {
        s.failures == 0
            && (s.last_error.as_ref()).is_some_and(|e| e.ends_with("config file is empty"))
    };
    a_renewal_is_served_while(emptied, "the config file seen empty", said).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_served_while_the_config_file_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    a_renewal_is_served_while_the_config_file_is(|good| {
        good.replace("\"127.0.0.1:0\"", &format!("\"127.0.0.1:0\", \"{busy}\""))
    })
    .await;
    drop(taken);
}

/// A SIGHUP sent right behind a write still going on (a script's `kill -HUP` after starting a
/// slow write, or one sent during an editor's save) is served once the file holds still: the
/// half written is neither applied nor reported as a failed reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_by_hand_waits_for_a_file_still_being_written() {
    // Cut inside route b: its name is written, its path and backends not yet.
    a_reload_by_hand_during_a_write_cut_at(|whole| whole.find("path = \"/b\"").unwrap()).await;
}

/// A SIGHUP that finds the config file empty (an in-place write truncated it, its bytes still
/// to come) waits for the write, as for one written a moment ago; one that finds it empty for
/// good is answered with the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_by_hand_waits_for_an_emptied_config_file() {
    let (proxy, mut rx, _backend) = a_reload_by_hand_during_a_write_cut_at(|_| 0).await;
    std::fs::write(proxy.config_path(), "").unwrap();
    proxy.server.reload();
    let refused = status_where(&mut rx, "the manual reload refused", |s| s.failures == 1).await;
    let error = refused.last_error.unwrap_or_default();
    assert!(error.ends_with("config file is empty"), "{error}");
}

/// A config routing `/a` rewritten in place to route `/b` too, in two writes 30 ms apart, the
/// first ending at `cut` of the whole, with a SIGHUP sent between them: served once the file
/// holds still, with the whole file (one success, no failure). The proxy, its reload status
/// and its backend.
async fn a_reload_by_hand_during_a_write_cut_at(
    cut: fn(&str) -> usize,
) -> (
    Proxy,
    tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    WsBackend,
) {
    use std::io::Write;
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let whole = format!(
        "{CONFIG_HEAD}{}{}",
        route("a", "/a", &[backend.addr]),
        route("b", "/b", &[backend.addr])
    );
    let cut = cut(&whole);
    let mut file = std::fs::File::create(proxy.config_path()).unwrap();
    file.write_all(&whole.as_bytes()[..cut]).unwrap();
    proxy.server.reload();
    // Pacing a slow writer: the rest comes well within the reload's wait for still files.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    file.write_all(&whole.as_bytes()[cut..]).unwrap();
    drop(file);
    let status = generation(&mut rx, 2).await;
    assert_eq!((status.successes, status.failures), (1, 0), "{status:?}");
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    (proxy, rx, backend)
}

/// A `wsgate run` process on a config routing `/a`, logging the reloader's waits (its debug
/// lines are what these tests await): its folder, config, process and log lines.
fn reloader_logging() -> (
    tempfile::TempDir,
    PathBuf,
    WsgateChild,
    std::sync::mpsc::Receiver<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[CLOSED]));
    let (child, lines, _) = started_wsgate_logging(&config, "info,wsgate::reload=debug");
    (dir, config, child, lines)
}

/// [`reloader_logging`], its config file then rejected (a route without its path appended).
fn reloader_with_a_rejected_config() -> (
    tempfile::TempDir,
    PathBuf,
    WsgateChild,
    std::sync::mpsc::Receiver<String>,
) {
    let (dir, config, child, lines) = reloader_logging();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
    wait_for_line(&lines, "config reload rejected");
    (dir, config, child, lines)
}

/// `config` (a config file's text) with a first certificate whose file is not there: it
/// loads, and is rejected when built.
fn naming_a_missing_certificate(config: &str) -> String {
    config.replace(
        "certificates = [",
        "certificates = [ { cert = \"nothere.crt\", key = \"server.key\" },",
    )
}

/// No backend listens there: these tests look at the reloads only.
const CLOSED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

/// The config emptied by an in-place write whose content comes while the look that found it
/// empty waits for the files to hold still: it is not taken for gone (no warning, the gauge
/// of files in force untouched), and the content applies.
#[test]
fn an_emptied_config_written_during_the_wait_is_not_taken_for_gone() {
    let (_dir, config, _child, lines) = reloader_logging();
    std::fs::write(&config, "").unwrap();
    let before = lines_until(&lines, "waiting for them to hold still");
    write_body(&config, &route("b", "/b", &[CLOSED]));
    let after = lines_until(&lines, "config reloaded");
    let said: Vec<_> = before.iter().chain(&after).collect();
    assert!(!said.iter().any(|l| l.contains("gone;")), "{said:#?}");
}

/// A served key deleted while the config file on disk is rejected (so no look reads it): said
/// gone once, naming the file and its line, as with a config in force (a restart would fail
/// on it), and said back once it is.
#[test]
fn a_served_key_gone_while_the_config_file_is_rejected_is_said() {
    let (dir, _config, _child, lines) = reloader_with_a_rejected_config();
    let key = dir.path().join("server.key");
    let held = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let said = wait_for_line(
        &lines,
        "key file gone; the certificates in force are still served",
    );
    assert!(said.contains("server.key not found"), "{said}");
    assert!(said.contains("tls.certificates[0].key"), "{said}");
    std::fs::write(&key, held).unwrap();
    wait_for_line(&lines, "the files the config in force serves are back");
}

/// A served key deleted while the config file on disk loads but is not in force (it names a
/// certificate that is not there, or an address already taken): said gone as while that file
/// is not in force, not as a wait for it to come back (it would not go into force then); and
/// once the key is back, that config file's failure, said already, is not said again.
#[test]
fn a_served_key_gone_while_the_config_on_disk_fails_is_said_as_such() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let head = naming_a_missing_certificate(CONFIG_HEAD);
    let failing = [
        (head, "nothere.crt", "nothing to build"),
        (
            CONFIG_HEAD.replace("127.0.0.1:0\"", &format!("127.0.0.1:0\", \"{busy}\"")),
            "cannot listen",
            "still cannot bind",
        ),
    ];
    for (head, failure, looked_again) in failing {
        let (dir, config, child, lines) = reloader_logging();
        let body = route("a", "/a", &[CLOSED]);
        std::fs::write(&config, format!("{head}{body}")).unwrap();
        assert!(wait_for_line(&lines, "config reload rejected").contains(failure));
        let key = dir.path().join("server.key");
        let held = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let mut said = lines_until(&lines, "key file gone");
        // A SIGHUP meanwhile is answered, whatever was said before (the config file failing
        // as it did first); the key's return then is as quiet as without it.
        if failure == "nothere.crt" {
            send_signal(child.id(), "HUP");
            assert!(wait_for_line(&lines, "config reload rejected").contains(failure));
        }
        std::fs::write(&key, held).unwrap();
        said.extend(lines_until(&lines, "serves are back"));
        // Touched: the look this brings is concluded after the one the key's return brought.
        std::fs::write(&config, format!("{head}{body}")).unwrap();
        said.extend(lines_until(&lines, looked_again));
        let gone = said.iter().find(|l| l.contains("key file gone")).unwrap();
        assert!(
            gone.contains("the config file on disk is not in force"),
            "{said:#?}"
        );
        assert!(!said.iter().any(|l| l.contains("rejected;")), "{said:#?}");
    }
    drop(taken);
}

/// A served key deleted, then the config file saved while it is gone: a config file that
/// failed before and was fixed meanwhile, or one that just failed and was put back, waits for
/// that key (said as such, the failure before no longer why the files are not in force), and
/// goes into force once it is back.
#[test]
fn a_config_saved_while_a_served_key_is_gone_waits_for_it() {
    let (dir, config, child, lines) = reloader_logging();
    let good = std::fs::read_to_string(&config).unwrap();
    let failing = naming_a_missing_certificate(&good);
    let key = dir.path().join("server.key");
    let held = std::fs::read(&key).unwrap();
    let waits = "key file gone; the current config stays in force until it is back";
    let rejected = "config reload rejected";
    let back = "config files are back to the config in force";
    // Each step: a file written (or deleted), then the line that says it.
    let save = |text: &str, said: &str| {
        std::fs::write(&config, text).unwrap();
        wait_for_line(&lines, said)
    };
    let remove_key = |said: &str| {
        std::fs::remove_file(&key).unwrap();
        wait_for_line(&lines, said)
    };
    let restore_key = || {
        std::fs::write(&key, &held).unwrap();
        wait_for_line(&lines, back)
    };
    // Failed before, fixed while the key is gone.
    save(&failing, rejected);
    remove_key("key file gone; the certificates in force are still served");
    save(&good, waits);
    restore_key();
    // In force, the key gone, another good config saved (said again: someone saved it), a
    // failing one, and then the first put back; the failing one again is said again (the
    // wait was the last word).
    remove_key(waits);
    save(&good.replace("\"a\"", "\"a2\""), waits);
    save(&failing, rejected);
    save(&good, waits);
    save(&failing, rejected);
    save(&good, waits);
    restore_key();
    // In force, the key gone and a SIGHUP answered: the certificate gone next is still one
    // of the config on disk, which is in force.
    remove_key(waits);
    send_signal(child.id(), "HUP");
    wait_for_line(&lines, rejected);
    std::fs::remove_file(dir.path().join("server.crt")).unwrap();
    let said = wait_for_line(&lines, "certificate file gone");
    assert!(said.contains("until it is back"), "{said}");
}

/// A served key deleted with the config file on disk in force: a SIGHUP right behind it is
/// answered with the rejection naming the key (which says it gone), and no line says the
/// config file on disk is not in force; a key that does not match written then is a
/// rejection, not a key "back".
#[test]
fn a_served_key_gone_then_asked_for_or_spoiled_with_the_config_in_force_says_no_gap() {
    let (dir, _config, child, lines) = reloader_logging();
    let key = dir.path().join("server.key");
    std::fs::remove_file(&key).unwrap();
    send_signal(child.id(), "HUP");
    let mut said = lines_until(&lines, "config reload rejected");
    let (_, other_key) = pki().leaf(SERVER_NAMES);
    std::fs::write(&key, other_key).unwrap();
    said.extend(lines_until(&lines, "does not match"));
    let wrong = ["not in force", "serves are back"];
    assert!(
        !said.iter().any(|l| wrong.iter().any(|w| l.contains(w))),
        "{said:#?}"
    );
}

/// Two served files gone, one back: the other, still gone, is not said gone again.
#[test]
fn a_served_file_still_gone_is_said_once() {
    let (dir, _config, _child, lines) = reloader_logging();
    let (key, cert) = (dir.path().join("server.key"), dir.path().join("server.crt"));
    let (held_key, held_cert) = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
    std::fs::remove_file(&key).unwrap();
    let mut said = lines_until(&lines, "key file gone");
    std::fs::remove_file(&cert).unwrap();
    said.extend(lines_until(&lines, "certificate file gone"));
    std::fs::write(&cert, held_cert).unwrap();
    said.extend(lines_until(&lines, "a file gone, said already"));
    std::fs::write(&key, held_key).unwrap();
    said.extend(lines_until(
        &lines,
        "config files are back to the config in force",
    ));
    let gone = said.iter().filter(|l| l.contains("key file gone")).count();
    assert_eq!(gone, 1, "{said:#?}");
}

/// A renewal of the certificates in force rejected while the config file on disk is, and then
/// undone: said back, so the last line about them is no stale error.
#[test]
fn a_rejected_renewal_undone_is_said_back() {
    let (dir, _config, _child, lines) = reloader_with_a_rejected_config();
    let cert = dir.path().join("server.crt");
    let held = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, "garbage\n").unwrap();
    wait_for_line(&lines, "renewed certificate files rejected");
    std::fs::write(&cert, held).unwrap();
    wait_for_line(&lines, "certificate files are back to those in force");
}

/// The config file's folder deleted, its certificates named through it (`../secrets/…`) and
/// still where they were: the config file is gone, not its certificates.
#[test]
fn a_config_folder_gone_is_said_as_the_config_file_gone_not_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, secrets) = (dir.path().join("conf"), dir.path().join("secrets"));
    std::fs::create_dir(&secrets).unwrap();
    pki().write_leaf(&secrets, "server", SERVER_NAMES);
    let head = CONFIG_HEAD.replace("\"server.", "\"../secrets/server.");
    let body = format!("{head}{}", route("a", "/a", &[CLOSED]));
    let write_config = || {
        std::fs::create_dir(&conf).unwrap();
        let config = conf.join("wsgate.toml");
        std::fs::write(&config, &body).unwrap();
        config
    };
    let config = write_config();
    let (_child, lines, _) = started_wsgate_logging(&config, "info,wsgate::reload=debug");
    std::fs::remove_dir_all(&conf).unwrap();
    let mut said = lines_until(&lines, "config file gone");
    write_config();
    said.extend(lines_until(
        &lines,
        "config files are back to the config in force",
    ));
    assert!(
        !said.iter().any(|l| l.contains("certificate file gone")),
        "{said:#?}"
    );
}

/// The config file gone, said once: a SIGHUP's answer between, and a renewal of the
/// certificates in force after it, do not make it news again.
#[test]
fn a_config_file_gone_is_said_once_across_a_sighup() {
    let (dir, config, child, lines) = reloader_logging();
    let held = std::fs::read(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    let mut said = lines_until(&lines, "config file gone");
    send_signal(child.id(), "HUP");
    said.extend(lines_until(&lines, "config reload rejected"));
    pki().write_leaf(dir.path(), "server", SERVER_NAMES);
    said.extend(lines_until(
        &lines,
        "certificates renewed for the config in force",
    ));
    std::fs::write(&config, held).unwrap();
    said.extend(lines_until(
        &lines,
        "config files are back to the config in force",
    ));
    let gone = said
        .iter()
        .filter(|l| l.contains("config file gone"))
        .count();
    assert_eq!(gone, 1, "{said:#?}");
}

/// A served key deleted while the config file on disk is the one in force is said gone as
/// such, not as gone while that file is not in force; once it is back, a config file then
/// rejected says nothing of files back.
#[test]
fn a_served_key_gone_with_the_config_in_force_is_said_as_such() {
    let dir = tempfile::tempdir().unwrap();
    // Looked at again every second, whatever the events.
    let body = format!(
        "[reload]\nrecheck = \"1s\"\n\n{}",
        route("a", "/a", &[CLOSED])
    );
    let config = write_config(dir.path(), &body);
    let (_child, lines, _) = started_wsgate_logging(&config, "info,wsgate::reload=debug");
    let key = dir.path().join("server.key");
    let held = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let mut said = lines_until(&lines, "key file gone; the current config stays in force");
    // Other looks at the same files (the recheck) say nothing more: two, so that the first
    // has been concluded (the reloader takes one at a time) while the key was still gone.
    for _ in 0..2 {
        said.extend(lines_until(
            &lines,
            "config files as last rejected or missing",
        ));
    }
    std::fs::write(&key, held).unwrap();
    said.extend(lines_until(
        &lines,
        "config files are back to the config in force",
    ));
    let not_in_force = "the config file on disk is not in force";
    assert!(!said.iter().any(|l| l.contains(not_in_force)), "{said:#?}");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
    let said = lines_until(&lines, "config reload rejected");
    assert!(
        !said.iter().any(|l| l.contains("serves are back")),
        "{said:#?}"
    );
}

/// A SIGHUP that comes while a look waits on a config file gone is answered as a SIGHUP: the
/// error of the file gone, not the wait's warning.
#[test]
fn a_sighup_during_the_wait_on_a_file_gone_is_answered_with_the_error() {
    let (_dir, config, child, lines) = reloader_logging();
    std::fs::remove_file(&config).unwrap();
    wait_for_line(&lines, "waiting for them to hold still");
    // SAFETY: a signal to the child this test started, which is still running.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let seen = lines_until(&lines, "config reload rejected");
    assert!(!seen.iter().any(|l| l.contains("gone;")), "{seen:#?}");
}

/// A SIGHUP that finds the config file empty, written long enough ago not to count as fresh
/// (as a read in the middle of an in-place write's truncation sees it), waits for its
/// content rather than answering "config file is empty".
#[test]
fn a_sighup_finding_an_old_empty_config_waits_for_its_content() {
    let (_dir, config, child, lines) = reloader_logging();
    std::fs::write(&config, "").unwrap();
    wait_for_line(&lines, "content gone");
    // Older than a debounce: its write time says nothing of a write under way.
    std::thread::sleep(Duration::from_millis(300));
    send_signal(child.id(), "HUP");
    // Pacing a slow writer: its bytes come well within the reload's wait.
    std::thread::sleep(Duration::from_millis(30));
    write_body(&config, &route("b", "/b", &[CLOSED]));
    let seen = lines_until(&lines, "config reloaded");
    assert!(!seen.iter().any(|l| l.contains("rejected")), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_style_reload_always_rebuilds() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    proxy.server.reload();
    generation(&mut rx, 2).await;
    proxy.server.reload();
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_survive_twenty_reloads_that_remove_their_route_and_backend() {
    let one = WsBackend::start("one").await;
    let two = WsBackend::start("two").await;
    let proxy = start_proxy(&route("chat", "/chat", &[one.addr])).await;
    let mut rx = proxy.server.reload_status();
    let mut tunnels = Vec::new();
    for _ in 0..100 {
        tunnels.push(ws_connect_ok(proxy.addr, "wss://localhost/chat").await);
    }
    for round in 0..20u64 {
        // Even rounds remove the route, odd ones bring it back on the other backend.
        let body = if round % 2 == 0 {
            route("other", "/other", &[two.addr])
        } else {
            route("chat", "/chat", &[two.addr])
        };
        write_body(&proxy.config_path(), &body);
        generation(&mut rx, round + 2).await;
        if round % 2 == 0 {
            assert_eq!(
                upgrade_status(proxy.addr, "/chat").await,
                404,
                "round {round}"
            );
        }
        for (i, ws) in tunnels.iter_mut().enumerate() {
            let text = format!("round {round} tunnel {i}");
            assert_eq!(round_trip(ws, &text).await, text);
        }
    }
    assert_eq!(rx.borrow().failures, 0);
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/chat").await,
        "two"
    );
    // Connections of the probes above end asynchronously; the 100 tunnels remain.
    until("only the 100 tunnels to remain", || {
        proxy.server.active_connections() == 100
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_while_old_tunnels_continue() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let before = served_leaf(proxy.addr).await;
    let mut old = ws_connect_ok(proxy.addr, "wss://localhost/a").await;

    // A renewal as a tool would do it: the new pair written over the old files.
    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(proxy.dir.path().join("server.key"), key).unwrap();
    std::fs::write(proxy.dir.path().join("server.crt"), cert).unwrap();
    generation(&mut rx, 2).await;

    let after = served_leaf(proxy.addr).await;
    assert_ne!(before, after, "new handshakes get the new certificate");
    assert_eq!(round_trip(&mut old, "still here").await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_in_place_edit_is_applied_not_just_the_first() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("r1", "/r1", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    for n in 2..=6u64 {
        let path = format!("/r{n}");
        write_body(&proxy.config_path(), &route("r", &path, &[backend.addr]));
        generation(&mut rx, n).await;
        assert_eq!(upgrade_status(proxy.addr, &path).await, 101, "edit {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_applied_as_one_reload_of_the_last_content() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("r", "/r", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    for n in 0..10 {
        write_body(
            &proxy.config_path(),
            &route("r", &format!("/burst{n}"), &[backend.addr]),
        );
    }
    let status = generation(&mut rx, 2).await;
    assert_eq!(status.failures, 0);
    // The burst took microseconds, far less than the debounce: the first reload after it
    // already carries the last write.
    assert_eq!(upgrade_status(proxy.addr, "/burst9").await, 101);
    assert_eq!(upgrade_status(proxy.addr, "/burst8").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_rewritten_piece_by_piece_nonstop_is_never_reported_half_written() {
    // In place, in ten pieces 2 ms apart, over and over for longer than the debounce's cap:
    // reads land mid-write. None may count as a failure, and the last content wins.
    rewritten_piece_by_piece_nonstop(std::time::Duration::from_millis(1500), false).await;
}

/// The same with a SIGHUP (a manual reload) into the writes, and for longer than its tries
/// (about 3 s): its last try, taking what it reads, must not report the half file it caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_into_a_config_rewritten_nonstop_never_reports_it_half_written() {
    rewritten_piece_by_piece_nonstop(std::time::Duration::from_millis(4000), true).await;
}

/// The config file rewritten in place, piece by piece, nonstop for `lasting` (with a manual
/// reload asked for as it starts, if `by_hand`): no failure counted, and the last content
/// wins.
async fn rewritten_piece_by_piece_nonstop(lasting: std::time::Duration, by_hand: bool) {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("r", "/r", &[backend.addr])).await;
    let rx = proxy.server.reload_status();
    let path = proxy.config_path();
    let addr = backend.addr;
    let body = move |n: usize| {
        let route = route("r", &format!("/p{n}"), &[addr]);
        format!("{CONFIG_HEAD}{route}")
    };
    let writer = nonstop(lasting, (), move |(), n| write_in_pieces(&path, &body(n))).await;
    if by_hand {
        proxy.server.reload();
    }
    let ((), last) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let last_path = format!("/p{last}");
    within("the last content to be in force", async {
        while upgrade_status(proxy.addr, &last_path).await != 101 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(rx.borrow().failures, 0, "{:?}", rx.borrow().last_error);
}

/// A config file rejected (said), then rewritten in place piece by piece with the same bytes
/// for longer than a SIGHUP's tries, the SIGHUP sent as the writes start: once the writer
/// stops, the SIGHUP is answered (said and counted again), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_whose_tries_ran_out_is_answered_once_the_files_hold_still() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("r", "/r", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let path = proxy.config_path();
    let text = format!(
        "{CONFIG_HEAD}{}{ROUTE_WITHOUT_PATH}",
        route("r", "/r", &[backend.addr])
    );
    std::fs::write(&path, &text).unwrap();
    failures(&mut rx, 1).await;
    let lasting = std::time::Duration::from_millis(4000);
    let writer = nonstop(lasting, (), move |(), _| write_in_pieces(&path, &text)).await;
    proxy.server.reload();
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let status = failures(&mut rx, 2).await;
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("route[1]"), "{error}");
}

/// The same with the config file swapped in Kubernetes-style (`..data` to a new folder) over
/// and over: each swap also brings a look of its own to watch the new folder, and the SIGHUP
/// owed its answer is answered by one of them once the swaps stop, not left to the recheck a
/// minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_into_a_volume_swapped_nonstop_is_answered_once_the_swaps_stop() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let good = route("r", "/r", &[backend.addr]);
    let (mut map, server) = serving_configmap(dir.path(), &good).await;
    let mut rx = server.reload_status();
    first_look(&mut rx).await;
    let bad = format!("{good}{ROUTE_WITHOUT_PATH}");
    map.publish_config(&bad);
    failures(&mut rx, 1).await;
    let lasting = std::time::Duration::from_millis(4500);
    let swapped = bad.clone();
    let writer = nonstop(lasting, map, move |map, n| {
        map.publish_config(&format!("{swapped}# {n}\n"));
        // Not a wait for anything: a swap every 20 ms.
        std::thread::sleep(std::time::Duration::from_millis(20));
    })
    .await;
    server.reload();
    let (mut map, _) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    map.publish_config(&bad);
    let status = failures(&mut rx, 2).await;
    assert!(status.last_error.is_some_and(|e| e.contains("route[1]")));
}

/// Runs `round` (given `state` and the round's number, from 1) over and over on a thread of
/// its own for `lasting`, once its first round is done: the writer to join, which hands back
/// `state` and the number of rounds.
async fn nonstop<T: Send + 'static>(
    lasting: std::time::Duration,
    mut state: T,
    mut round: impl FnMut(&mut T, usize) + Send + 'static,
) -> std::thread::JoinHandle<(T, usize)> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < lasting {
            if n == 1 {
                let _ = started_tx.send(());
            }
            n += 1;
            round(&mut state, n);
        }
        (state, n)
    });
    let started = tokio::task::spawn_blocking(move || started_rx.recv());
    started.await.unwrap().unwrap();
    writer
}

/// A config file rewritten in place piece by piece nonstop, for several rounds of tries,
/// each time a different mistake (so no round can end by applying what it read: the mistake
/// comes first, so no prefix of the file is valid either; with the route last, a round whose
/// last read caught only the sections above it applied that): that the files kept changing
/// is a WARN once, not once every round (about 3 s) while the writer goes on; and what it
/// last wrote is judged once it stops.
#[test]
fn files_that_keep_changing_are_said_once_per_run_of_writes() {
    let dir = tempfile::tempdir().unwrap();
    let closed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[closed]));
    let (mut child, lines, _) = started_wsgate_logging(&config, "info,wsgate::reload=debug");
    wait_for_line(&lines, "content did not change");
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        n += 1;
        let unnamed = format!("[[route]]\npath = \"/p{n}\"\n");
        write_in_pieces(&config, &format!("{unnamed}{CONFIG_HEAD}"));
    }
    let seen = lines_until(&lines, "config reload rejected");
    let said = |needle: &str| seen.iter().filter(|line| line.contains(needle)).count();
    let warned = said("nothing applied until they hold still");
    let rounds = warned + said("still changing while being read; nothing applied");
    assert!(
        rounds >= 2,
        "the writes outlasted one round of tries: {seen:#?}"
    );
    assert_eq!(warned, 1, "{seen:#?}");
    child.kill().unwrap();
}

/// Writes `text` to `path` in place, in ten pieces 2 ms apart.
fn write_in_pieces(path: &Path, text: &str) {
    let mut file = std::fs::File::create(path).unwrap();
    for piece in text.as_bytes().chunks(text.len().div_ceil(10)) {
        std::io::Write::write_all(&mut file, piece).unwrap();
        // Not a wait for anything: the writer pauses mid-file, as slow writers do.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A writer that pauses mid-file for less than the debounce, over and over (a slow script, a
/// config management tool writing in pieces): a valid prefix that lacks a rule still to come
/// (here the route's `origins`) must never be applied, only the finished file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_prefix_of_a_file_still_being_written_is_never_applied() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let path = proxy.config_path();
    let (prefix, rest) = (
        format!("{CONFIG_HEAD}{}", route("admin", "/admin", &[backend.addr])),
        "origins = [\"https://admin.example.com\"]\n",
    );
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut file, prefix.as_bytes()).unwrap();
            for _ in 0..10 {
                // Not a wait for anything: the writer pauses mid-file, as slow writers do;
                // well under the 150 ms debounce, so that a loaded machine's late wake-up
                // does not make the pause one.
                std::thread::sleep(std::time::Duration::from_millis(40));
                std::io::Write::write_all(&mut file, b"\n").unwrap();
            }
            std::io::Write::write_all(&mut file, rest.as_bytes()).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let status = generation(&mut rx, 2).await;
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        "applied while being written"
    );
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("localhost", "/admin")
            .add("Origin", "https://evil.example.net")
            .bytes(),
    )
    .await;
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!((status.successes, status.failures), (1, 0));
    writer.join().unwrap();
}

/// A folder above the config's own swapped by rename (a deploy tool's `mv new current`), twice:
/// the swap is seen from the folder above, and the new folders are watched in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_above_the_config_swapped_by_rename_is_applied_twice_in_a_row() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let release = |name: &str, path: &str| {
        let conf = dir.path().join(name).join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        write_config(&conf, &route("r", path, &[backend.addr]));
    };
    release("site", "/a");
    let server = wsgate::Server::start(dir.path().join("site/conf/wsgate.toml"))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    first_look(&mut rx).await;
    for (n, path) in [(2, "/b"), (3, "/c")] {
        release("new", path);
        std::fs::rename(dir.path().join("site"), dir.path().join(format!("old{n}"))).unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join("site")).unwrap();
        generation(&mut rx, n).await;
        assert_eq!(upgrade_status(addr, path).await, 101);
    }
}

/// A folder above the config's moved away and back (the same folder: a deploy tool setting
/// it aside and restoring it): the watches below it, which went with the move, are taken
/// again, so an in-place edit after it is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_after_a_folder_above_was_moved_away_and_back_is_applied() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("site/conf");
    std::fs::create_dir_all(&conf).unwrap();
    let config = write_config(&conf, &route("a", "/a", &[backend.addr]));
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    first_look(&mut rx).await;
    let checks = rx.borrow().checks;
    std::fs::rename(dir.path().join("site"), dir.path().join("aside")).unwrap();
    std::fs::rename(dir.path().join("aside"), dir.path().join("site")).unwrap();
    // The look the move brings, its watches taken again after it.
    status_where(&mut rx, "a look after the move", |s| s.checks > checks).await;
    write_body(&config, &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(addr, "/b").await, 101);
}

/// A writer replacing the config by rename nonstop with the same bytes (a sync loop): looks
/// come at the debounce's pace, not one after another as fast as the reloader can read.
#[test]
fn a_file_replaced_nonstop_is_looked_at_at_the_debounces_pace() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[CLOSED]));
    let text = std::fs::read_to_string(&config).unwrap();
    let temp = config.with_extension("toml.new");
    looked_at_at_the_debounces_pace(&config, || {
        std::fs::write(&temp, &text).unwrap();
        std::fs::rename(&temp, &config).unwrap();
    });
}

/// wsgate on `config` while `replace` runs nonstop for 2 s, its content the same each time:
/// the looks that found nothing new come at most one a debounce (150 ms, 600 ms at most
/// while events go on), not back to back (hundreds).
fn looked_at_at_the_debounces_pace(config: &Path, mut replace: impl FnMut()) {
    let (mut child, lines, _) = started_wsgate_logging(config, "info,wsgate::reload=debug");
    let unchanged = "content did not change";
    wait_for_line(&lines, unchanged);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        replace();
    }
    // A change after them, applied once every look before it is logged: the lines up to its
    // reload are all the looks, however late their lines come.
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("\n# the writes are over\n");
    std::fs::write(config, text).unwrap();
    let looks = (lines_until(&lines, "config reloaded").iter())
        .filter(|line| line.contains(unchanged))
        .count();
    assert!(looks <= 30, "{looks} looks in 2 s");
    child.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_that_deletes_the_old_folder_like_kubelet_is_applied_twice() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    pki().write_leaf(dir.path(), "server", SERVER_NAMES);
    let config = |body: &str| vec![("wsgate.toml", format!("{CONFIG_HEAD}{body}"))];
    let mut map = ConfigMap::volume(
        dir.path(),
        &config(&route("a", "/a", &[backend.addr])),
        true,
    );
    let server = wsgate::Server::start(dir.path().join("wsgate.toml"))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    map.publish(&config(&route("b", "/b", &[backend.addr])));
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(addr, "/b").await, 101);
    map.publish(&config(&route("c", "/c", &[backend.addr])));
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(addr, "/c").await, 101);
    assert_eq!(upgrade_status(addr, "/b").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_with_identical_content_does_nothing() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let body = route("a", "/a", &[backend.addr]);
    let (mut map, server) = serving_configmap(dir.path(), &body).await;
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    // A new folder and a new `..data` link, same bytes: nothing to apply.
    map.publish_config(&body);
    map.publish_config(&body);
    // A real change afterwards: the watcher handles events in order, so had the identical
    // updates reloaded, the generation would now be past 2.
    map.publish_config(&route("b", "/b", &[backend.addr]));
    let status = status_where(&mut rx, "a reload", |s| s.successes > 0).await;
    assert_eq!(
        (status.generation, status.successes, status.failures),
        (2, 1, 0)
    );
    assert_eq!(upgrade_status(addr, "/b").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_a_certificate_with_identical_bytes_does_nothing() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let before = served_leaf(proxy.addr).await;
    for file in ["server.crt", "server.key"] {
        let path = proxy.dir.path().join(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    let status = status_where(&mut rx, "a reload", |s| s.successes > 0).await;
    assert_eq!(
        (status.generation, status.successes, status.failures),
        (2, 1, 0)
    );
    assert_eq!(served_leaf(proxy.addr).await, before);
}

/// `[proxy]` + `[tls]` naming one certificate by absolute paths.
fn head_with_cert(cert: &Path, key: &Path) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\ncertificates = [ {{ cert = \"{}\", key = \"{}\" }} ]\n\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_rotated_by_a_data_swap_serves_the_new_certificate() {
    // cert-manager + kubelet: the certificate lives in a Secret volume of its own folder; the
    // config file does not change at all.
    let backend = WsBackend::start("one").await;
    let conf = tempfile::tempdir().unwrap();
    let secret = tempfile::tempdir().unwrap();
    let pair = |(cert, key): (String, String)| vec![("tls.crt", cert), ("tls.key", key)];
    let first = pki().leaf(SERVER_NAMES);
    let mut volume = ConfigMap::volume(secret.path(), &pair(first.clone()), true);
    let config = conf.path().join("wsgate.toml");
    let head = head_with_cert(
        &secret.path().join("tls.crt"),
        &secret.path().join("tls.key"),
    );
    std::fs::write(
        &config,
        format!("{head}{}", route("a", "/a", &[backend.addr])),
    )
    .unwrap();
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    assert_eq!(served_leaf(addr).await, der_of(&first.0));
    let mut old = ws_connect_ok(addr, "wss://localhost/a").await;

    for n in 2..=3u64 {
        let renewed = pki().leaf(SERVER_NAMES);
        volume.publish(&pair(renewed.clone()));
        generation(&mut rx, n).await;
        assert_eq!(served_leaf(addr).await, der_of(&renewed.0), "renewal {n}");
        assert_eq!(round_trip(&mut old, "still here").await, "still here");
    }
}

/// Certificates of the config in force renewed while the config file on disk is rejected (it
/// loads, but names a certificate that is not there): the renewal goes into force, and the
/// config file, failing as it did, is neither said nor counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_while_the_config_is_rejected_counts_no_new_failure() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let path = proxy.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    let failing = naming_a_missing_certificate(&good);
    std::fs::write(&path, failing).unwrap();
    failures(&mut rx, 1).await;
    for n in 2..=3 {
        let (cert, _) = pki().write_leaf(proxy.dir.path(), "server", SERVER_NAMES);
        let status = generation(&mut rx, n).await;
        assert_eq!(status.failures, 1, "{status:?}");
        let served = served_leaf(proxy.addr).await;
        assert_eq!(served, der_of(&std::fs::read_to_string(cert).unwrap()));
    }
}

/// A config file that cannot bind: another one failing alike is said and counted (someone
/// saved it); a certificate of the config in force then renewed in two steps, its key second,
/// is one failed renewal while the certificate waits for its key, and the renewal once the key
/// is there, the bind failure not said or counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_in_two_steps_beside_an_unbindable_config_counts_one_failure() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let path = proxy.config_path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    for (n, name) in [(1, "b"), (2, "c")] {
        let body = route(name, &format!("/{name}"), &[backend.addr]);
        std::fs::write(
            &path,
            format!("{}{body}", head_listening(&["127.0.0.1:0", &busy])),
        )
        .unwrap();
        let status = failures(&mut rx, n).await;
        assert!(status
            .last_error
            .is_some_and(|e| e.contains("cannot listen")));
    }
    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(proxy.dir.path().join("server.crt"), &cert).unwrap();
    // The renewal's failure; the bind failure stays why the files on disk are not in force.
    let status = failures(&mut rx, 3).await;
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot listen")),
        "{status:?}"
    );
    std::fs::write(proxy.dir.path().join("server.key"), key).unwrap();
    let status = generation(&mut rx, 2).await;
    assert_eq!(status.failures, 3, "{status:?}");
    assert_eq!(served_leaf(proxy.addr).await, der_of(&cert));
    drop(taken);
}

/// A config file that cannot bind, then failing otherwise (a certificate it adds written with
/// the wrong key), then mended but for the address: the bind failure is news again, said and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_failure_after_another_failure_is_said_again() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let (cert, key) = pki().leaf(SERVER_NAMES);
    let dir = proxy.dir.path();
    std::fs::write(dir.join("b.crt"), &cert).unwrap();
    std::fs::write(dir.join("b.key"), &key).unwrap();
    let head = head_listening(&["127.0.0.1:0", &busy]).replace(
        "certificates = [",
        "certificates = [ { cert = \"b.crt\", key = \"b.key\" },",
    );
    let body = route("a", "/a", &[backend.addr]);
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    let status = failures(&mut rx, 1).await;
    assert!(status
        .last_error
        .is_some_and(|e| e.contains("cannot listen")));
    let (_, other_key) = pki().leaf(SERVER_NAMES);
    std::fs::write(dir.join("b.key"), other_key).unwrap();
    let status = failures(&mut rx, 2).await;
    assert!(status
        .last_error
        .is_some_and(|e| e.contains("does not match")));
    std::fs::write(dir.join("b.key"), key).unwrap();
    let status = failures(&mut rx, 3).await;
    assert!(status
        .last_error
        .is_some_and(|e| e.contains("cannot listen")));
    drop(taken);
}

/// One volume swap bringing a bad config file and, for the config in force, a certificate
/// without its key: one reload rejected, counted once (the certificates in force stay, their
/// files' failure said beside it, not as a second rejection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_swap_of_a_bad_config_and_a_broken_certificate_is_one_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let head = CONFIG_HEAD
        .replace("server.crt", "tls.crt")
        .replace("server.key", "tls.key");
    let config = |body: &str| format!("{head}{body}");
    let (cert, key) = pki().leaf(SERVER_NAMES);
    let good = config(&route("a", "/a", &[CLOSED]));
    let files = |config: String, cert: &str, key: &str| {
        vec![
            ("wsgate.toml", config),
            ("tls.crt", cert.to_string()),
            ("tls.key", key.to_string()),
        ]
    };
    let mut volume = ConfigMap::volume(dir.path(), &files(good.clone(), &cert, &key), false);
    let server = wsgate::Server::start(dir.path().join("wsgate.toml"))
        .await
        .unwrap();
    let mut rx = server.reload_status();
    first_look(&mut rx).await;
    let looks = rx.borrow().checks;
    let (other, _) = pki().leaf(SERVER_NAMES);
    volume.publish(&files(format!("{good}{ROUTE_WITHOUT_PATH}"), &other, &key));
    let status = status_where(&mut rx, "the swap looked at", |s| {
        s.failures > 0 && s.checks > looks
    })
    .await;
    assert_eq!((status.failures, status.generation), (1, 1), "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("route[1]")),
        "{status:?}"
    );
    assert_eq!(served_leaf(server.local_addrs()[0]).await, der_of(&cert));
}

/// One volume swap bringing a bad config file and, in the place of the certificate in force,
/// one for other names (meant for the new config): one reload rejected; the certificate is no
/// renewal of the one in force (it drops a name that one serves), so the certificate in force
/// stays, its clients' handshakes unbroken. A renewal after it, keeping the names, is served;
/// the config file mended is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_other_names_swapped_in_with_a_rejected_config_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let head = CONFIG_HEAD
        .replace("server.crt", "tls.crt")
        .replace("server.key", "tls.key");
    let good = format!("{head}{}", route("a", "/a", &[CLOSED]));
    let bad = format!("{good}{ROUTE_WITHOUT_PATH}");
    let files = |config: &str, (cert, key): &(String, String)| {
        vec![
            ("wsgate.toml", config.to_string()),
            ("tls.crt", cert.clone()),
            ("tls.key", key.clone()),
        ]
    };
    let first = pki().leaf(SERVER_NAMES);
    let mut volume = ConfigMap::volume(dir.path(), &files(&good, &first), false);
    let config = dir.path().join("wsgate.toml");
    let mut child = spawn_wsgate_logging(&config, "info");
    let lines = stderr_lines(child.stderr.take().unwrap());
    let addr = listening_addr(&wait_for_line(&lines, "\"listening\""));
    wait_for_line(&lines, "wsgate started");

    let other = pki().leaf(&["other.example"]);
    volume.publish(&files(&bad, &other));
    let rejected = wait_for_line(&lines, "config reload rejected");
    assert!(rejected.contains("route[1]"), "{rejected}");
    let beside = wait_for_line(&lines, "the certificates in force are not renewed either");
    assert!(
        beside.contains("now names \\\"localhost\\\", which this one in force does"),
        "{beside}"
    );
    assert_eq!(served_leaf(addr).await, der_of(&first.0));

    let renewed = pki().leaf(SERVER_NAMES);
    volume.publish(&files(&bad, &renewed));
    wait_for_line(&lines, "certificates renewed for the config in force");
    assert_eq!(served_leaf(addr).await, der_of(&renewed.0));
    let mended = format!("{head}{}", route("b", "/b", &[CLOSED]));
    volume.publish(&files(&mended, &renewed));
    let reloaded = wait_for_line(&lines, "config reloaded");
    assert!(reloaded.contains("\"generation\":3"), "{reloaded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_named_by_a_reload_is_watched_from_then_on() {
    let backend = WsBackend::start("one").await;
    let conf = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let body = route("a", "/a", &[backend.addr]);
    let config = conf.path().join("wsgate.toml");
    let (cert, key) = pki().write_leaf(first.path(), "tls", SERVER_NAMES);
    std::fs::write(&config, format!("{}{body}", head_with_cert(&cert, &key))).unwrap();
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();

    let (cert, key) = pki().write_leaf(second.path(), "tls", SERVER_NAMES);
    std::fs::write(&config, format!("{}{body}", head_with_cert(&cert, &key))).unwrap();
    generation(&mut rx, 2).await;
    let switched = served_leaf(addr).await;
    assert_eq!(switched, der_of(&std::fs::read_to_string(&cert).unwrap()));

    // Renewed in place in the new folder, which the proxy did not know at start.
    let (new_cert, new_key) = pki().leaf(SERVER_NAMES);
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, &new_cert).unwrap();
    generation(&mut rx, 3).await;
    assert_eq!(served_leaf(addr).await, der_of(&new_cert));
}

/// Names a certificate in `later` (a folder that does not exist yet) and waits until that
/// config has been rejected twice, so the watch refresh after the first rejection is done.
async fn reject_twice_naming(
    proxy: &Proxy,
    rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    later: &Path,
    body: &str,
) {
    let head = head_with_cert(&later.join("tls.crt"), &later.join("tls.key"));
    std::fs::write(proxy.config_path(), format!("{head}{body}")).unwrap();
    failures(rx, 1).await;
    std::fs::write(
        proxy.config_path(),
        format!("{head}# still missing\n{body}"),
    )
    .unwrap();
    failures(rx, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_created_after_the_reload_named_it_is_noticed_and_watched() {
    // A Secret mounted after the ConfigMap that names it: the folder does not exist when the
    // reload is rejected, so the proxy must notice it appear and then follow rotations in it.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let elsewhere = tempfile::tempdir().unwrap();
    let later = elsewhere.path().join("secret").join("tls");
    let body = route("b", "/b", &[backend.addr]);
    reject_twice_naming(&proxy, &mut rx, &later, &body).await;
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 101);

    std::fs::create_dir_all(&later).unwrap();
    let (cert, key) = pki().write_leaf(&later, "tls", SERVER_NAMES);
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    assert_eq!(
        served_leaf(proxy.addr).await,
        der_of(&std::fs::read_to_string(&cert).unwrap())
    );

    // cert-manager renews in place, in the folder the proxy did not see at first.
    let (new_cert, new_key) = pki().leaf(SERVER_NAMES);
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, &new_cert).unwrap();
    generation(&mut rx, 3).await;
    assert_eq!(served_leaf(proxy.addr).await, der_of(&new_cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_renamed_into_place_is_served_while_old_tunnels_continue() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let mut old = ws_connect_ok(proxy.addr, "wss://localhost/a").await;
    let before = served_leaf(proxy.addr).await;

    let other_ca = Pki::new("wsgate second test CA");
    let (cert, key) = other_ca.leaf(SERVER_NAMES);
    // Each file replaced atomically, as most renewal tools do.
    for (name, pem) in [("server.key", &key), ("server.crt", &cert)] {
        let tmp = proxy.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, proxy.dir.path().join(name)).unwrap();
    }
    let status = generation(&mut rx, 2).await;
    assert_eq!(status.failures, 0, "{:?}", status.last_error);

    let client = client_config_trusting(&[pki(), &other_ca], false);
    let tls = tls_connect_with(proxy.addr, "localhost", client).await;
    let after = peer_leaf(&tls);
    assert_ne!(after, before);
    assert_eq!(
        after,
        der_of(&cert),
        "new handshakes get the new certificate"
    );
    assert_eq!(round_trip(&mut old, "still here").await, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_its_new_key_is_rejected_until_the_key_arrives() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let before = served_leaf(proxy.addr).await;

    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(proxy.dir.path().join("server.crt"), &cert).unwrap();
    let status = failures(&mut rx, 1).await;
    let error = status.last_error.unwrap();
    assert!(error.contains("server.key"), "{error}");
    assert_eq!(status.generation, 1);
    assert_eq!(served_leaf(proxy.addr).await, before, "the old pair serves");

    std::fs::write(proxy.dir.path().join("server.key"), &key).unwrap();
    generation(&mut rx, 2).await;
    assert_eq!(served_leaf(proxy.addr).await, der_of(&cert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_config_edited_in_place_at_its_target_is_applied() {
    // `/etc/wsgate/wsgate.toml -> /srv/config/wsgate.toml` (stow, Nix, a hostPath): the
    // operator edits the file the link points to.
    let backend = WsBackend::start("one").await;
    let etc = tempfile::tempdir().unwrap();
    let srv = tempfile::tempdir().unwrap();
    // The certificate in a third folder, so only following the link can notice the edit.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki().write_leaf(certs.path(), "server", SERVER_NAMES);
    let head = head_with_cert(&cert, &key);
    let target = srv.path().join("wsgate.toml");
    std::fs::write(
        &target,
        format!("{head}{}", route("a", "/a", &[backend.addr])),
    )
    .unwrap();
    let link = etc.path().join("wsgate.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let server = wsgate::Server::start(&link).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();

    std::fs::write(
        &target,
        format!("{head}{}", route("b", "/b", &[backend.addr])),
    )
    .unwrap();
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(addr, "/b").await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_exchanging_messages_during_twenty_reloads_see_no_error() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let one = WsBackend::start("one").await;
    let two = WsBackend::start("two").await;
    let with_chat = |backend: std::net::SocketAddr| {
        format!(
            "{}{}",
            route("chat", "/chat", &[backend]),
            route("other", "/other", &[backend])
        )
    };
    let proxy = start_proxy(&with_chat(one.addr)).await;
    let mut rx = proxy.server.reload_status();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut ws = ws_connect_ok(proxy.addr, "wss://localhost/chat").await;
        let (stop, echoed) = (stop.clone(), echoed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("tunnel {i} message {n}");
                assert_eq!(round_trip(&mut ws, &text).await, text);
                n += 1;
                echoed.fetch_add(1, Ordering::Relaxed);
            }
            (ws, n)
        }));
    }

    for round in 0..20u64 {
        // Every fourth round removes the route, the next brings it back; odd rounds point the
        // routes at the other backend. Live tunnels must notice none of it.
        let backend = if round % 2 == 0 { two.addr } else { one.addr };
        let removed = round % 4 == 0;
        let body = if removed {
            route("other", "/other", &[backend])
        } else {
            with_chat(backend)
        };
        let seen = echoed.load(Ordering::Relaxed);
        write_body(&proxy.config_path(), &body);
        generation(&mut rx, round + 2).await;
        if removed {
            assert_eq!(
                upgrade_status(proxy.addr, "/chat").await,
                404,
                "round {round}"
            );
        }
        // Traffic flows between reloads: every reload happens mid-conversation.
        until("the tunnels to exchange more messages", || {
            echoed.load(Ordering::Relaxed) >= seen + 100
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut tunnels = Vec::new();
    for task in tasks {
        let (mut ws, sent) = within("a tunnel task", task).await.expect("tunnel task");
        assert!(sent > 0);
        // Still spliced to the backend it was opened on.
        assert_eq!(round_trip(&mut ws, "whoami").await, "one");
        tunnels.push(ws);
    }
    assert_eq!(rx.borrow().failures, 0);
    assert_eq!(
        which_backend(proxy.addr, "wss://localhost/chat").await,
        "one"
    );
    until("only the 100 tunnels to remain", || {
        proxy.server.active_connections() == 100
    })
    .await;
}

#[test]
fn sighup_reloads_the_running_binary_without_killing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &route("a", "/a", &["127.0.0.1:9".parse().unwrap()]),
    );
    let (mut child, lines, addr) = started_wsgate(&config);

    send_signal(child.id(), "HUP");
    let reloaded = wait_for_line(&lines, "config reloaded");
    assert!(reloaded.contains("\"generation\":2"), "{reloaded}");
    send_signal(child.id(), "HUP");
    wait_for_line(&lines, "\"generation\":3");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the process"
    );
    // Still serving: the route answers (502: its backend port is closed).
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(upgrade_status(addr, "/a")), 502);
    assert_eq!(rt.block_on(upgrade_status(addr, "/nope")), 404);

    send_signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

/// A SIGHUP that comes while a reload the files triggered waits for them to hold still is
/// served by that reload (the files, still as read, are what it asks to be read), not by a
/// second rebuild of the same files right after: one generation, one log line.
#[test]
fn a_sighup_during_a_reloads_wait_is_served_by_it() {
    const CLOSED: &str = "127.0.0.1:9";
    let closed = [CLOSED.parse().unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &closed));
    let (mut child, lines, _) = started_wsgate_logging(&config, "info,wsgate::reload=debug");

    write_body(&config, &route("b", "/b", &closed));
    wait_for_line(&lines, "waiting for them to hold still");
    send_signal(child.id(), "HUP");
    let reloaded = wait_for_line(&lines, "config reloaded");
    assert!(reloaded.contains("\"generation\":2"), "{reloaded}");
    // A second rebuild, if any, would come at once: a rewrite of the same bytes after it is
    // the next thing the reloader says something about.
    std::fs::write(&config, std::fs::read(&config).unwrap()).unwrap();
    let next = wait_for_line(&lines, "wsgate::reload");
    assert!(next.contains("content did not change"), "{next}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A TCP connection accepted before a renewal whose TLS handshake comes after it: the
/// handshake is new, so it gets the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_after_a_renewal_gets_the_new_certificate_on_an_older_connection() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    until("the connection accepted", || {
        proxy.server.active_connections() == 1
    })
    .await;

    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(proxy.dir.path().join("server.key"), key).unwrap();
    std::fs::write(proxy.dir.path().join("server.crt"), &cert).unwrap();
    generation(&mut rx, 2).await;

    let tls = tls_handshake_on(tcp, "localhost").await.unwrap();
    assert_eq!(peer_leaf(&tls), der_of(&cert));
}

/// A connection whose TLS is done before a reload lowers `max_request_header_bytes`, and whose
/// request comes after: the request is read under the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_reload_is_read_under_the_new_head_limit_on_an_older_connection() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let mut early = raw_client(proxy.addr).await;
    let lower = format!(
        "[limits]\nmax_request_header_bytes = 1024\n\n{}",
        route("a", "/a", &[backend.addr])
    );
    write_body(&proxy.config_path(), &lower);
    generation(&mut rx, 2).await;

    let big = Req::upgrade("localhost", "/a").add("X-Pad", &"p".repeat(2000));
    early.send(big.bytes()).await;
    assert_eq!(early.read_head().await.status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_reload_is_routed_by_the_new_config_on_an_older_connection() {
    // The design reads the config at each request: a client that connected (TLS done) before
    // a reload and sends its upgrade after it is routed by the config in force.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let mut early_b = raw_client(proxy.addr).await;
    let mut early_a = raw_client(proxy.addr).await;
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;

    early_b.send(Req::upgrade("localhost", "/b").bytes()).await;
    assert_eq!(early_b.read_head().await.status, 101, "the new route");
    early_a.send(Req::upgrade("localhost", "/a").bytes()).await;
    assert_eq!(early_a.read_head().await.status, 404, "the removed route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_nonstop_next_to_the_config_does_not_starve_reloads() {
    // A log or pid file in the config's folder keeps the watcher busy; debouncing must not
    // wait for a quiet moment that never comes, and a manual reload must not queue behind it.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let noisy = proxy.dir.path().join("app.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ticks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&noisy, format!("tick {ticks}\n")).unwrap();
                ticks += 1;
                // The write rate, not a synchronisation: faster than the debounce window.
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
            ticks
        })
    };
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    proxy.server.reload();
    generation(&mut rx, 3).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
}

/// Another program busy in a folder: every 20 ms it appends to `neighbour.log`, and every
/// fifth time it also saves `state.json` by rename, as editors and config tools save. Counts
/// its writes; stops when dropped. (Where the watcher's events name exactly what changed: see
/// `watch::NAMES_ARE_EXACT`.)
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Neighbour {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writes: tokio::sync::watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Neighbour {
    fn start(dir: &Path) -> Neighbour {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, writes) = tokio::sync::watch::channel(0u64);
        let (dir, stopping) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut log = std::fs::File::create(dir.join("neighbour.log")).unwrap();
            let mut ticks = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                std::io::Write::write_all(&mut log, format!("tick {ticks}\n").as_bytes()).unwrap();
                if ticks.is_multiple_of(5) {
                    let tmp = dir.join("state.json.tmp");
                    std::fs::write(&tmp, format!("{{\"tick\": {ticks}}}")).unwrap();
                    std::fs::rename(&tmp, dir.join("state.json")).unwrap();
                }
                ticks += 1;
                count.send_replace(ticks);
                // The write rate, not a synchronisation: faster than the debounce window.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Neighbour {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    /// Waits for `more` writes after those done so far.
    async fn writes_more(&mut self, more: u64) {
        let target = *self.writes.borrow() + more;
        let done = self.writes.wait_for(|&n| n >= target);
        within("the neighbour's writes", done).await.unwrap();
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes of a neighbour that a watcher taking them for changes would have looked at the files
/// for: it waits for 0.15 s without an event, and at most 0.6 s, before it looks.
#[cfg(any(target_os = "linux", target_os = "android"))]
const NEIGHBOUR_WRITES: u64 = 60;

#[cfg(any(target_os = "linux", target_os = "android"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_written_nonstop_in_the_config_folder_is_no_change_and_no_delay() {
    // A log or a state file in /etc or /tmp, beside the config: its writes are not the
    // config's, so the watcher does not even look (the looks are counted); the config's own
    // edits, by rename and in place, are applied all the same while it writes.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    first_look(&mut rx).await;
    let looks = rx.borrow().checks;
    let mut neighbour = Neighbour::start(proxy.dir.path());

    neighbour.writes_more(NEIGHBOUR_WRITES).await;
    assert_eq!(
        rx.borrow().checks,
        looks,
        "the neighbour's writes alone made a look"
    );

    rename_save(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    let status = status_where(&mut rx, "generation 2, and its look counted", |s| {
        s.generation == 2 && s.checks > looks
    })
    .await;
    assert_eq!(
        (status.checks, status.successes, status.failures),
        (looks + 1, 1, 0)
    );
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);

    neighbour.writes_more(NEIGHBOUR_WRITES).await;
    assert_eq!(
        rx.borrow().checks,
        looks + 1,
        "the neighbour's writes alone made a look"
    );

    write_body(&proxy.config_path(), &route("c", "/c", &[backend.addr]));
    let status = generation(&mut rx, 3).await;
    assert_eq!((status.successes, status.failures), (2, 0));
    drop(neighbour);
    assert_eq!(upgrade_status(proxy.addr, "/c").await, 101);
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 404);
}

/// A proxy configured in `conf`, its certificate in `<secrets>/tls/` (`folder`), routing /a
/// to a backend it keeps running.
struct CertFolderProxy {
    server: wsgate::Server,
    /// Its listener.
    addr: std::net::SocketAddr,
    /// Its config file, in a folder of its own.
    config: PathBuf,
    folder: PathBuf,
    _conf: tempfile::TempDir,
    secrets: tempfile::TempDir,
    _backend: WsBackend,
}

impl CertFolderProxy {
    async fn start() -> CertFolderProxy {
        Self::serving(pki().leaf(SERVER_NAMES)).await
    }

    /// Serving `leaf` (cert and key PEM).
    async fn serving((cert, key): (String, String)) -> CertFolderProxy {
        let backend = WsBackend::start("one").await;
        let (conf, secrets) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folder = secrets.path().join("tls");
        std::fs::create_dir(&folder).unwrap();
        let (cert, key) = [("tls.crt", cert), ("tls.key", key)]
            .map(|(name, pem)| {
                std::fs::write(folder.join(name), pem).unwrap();
                folder.join(name)
            })
            .into();
        let config = conf.path().join("wsgate.toml");
        let body = route("a", "/a", &[backend.addr]);
        std::fs::write(&config, format!("{}{body}", head_with_cert(&cert, &key))).unwrap();
        let server = wsgate::Server::start(&config).await.unwrap();
        CertFolderProxy {
            addr: server.local_addrs()[0],
            server,
            config,
            folder,
            _conf: conf,
            secrets,
            _backend: backend,
        }
    }
}

/// A certificate file written over with one that has run out (a stale backup restored, a
/// sync gone backwards) does not replace the valid one in force: the reload is rejected,
/// saying so, and the next good write goes in. Also while the config file on disk is
/// rejected (a renewal, not a reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_has_run_out_does_not_replace_a_valid_one() {
    type Leaf = fn(&[&str]) -> (String, String);
    let (ran_out, not_yet): (Leaf, Leaf) = (
        |names| pki().leaf_ran_out(names),
        |names| pki().leaf_not_yet_valid(names),
    );
    let cases = [
        (false, ran_out, "ran out at"),
        (true, ran_out, "ran out at"),
        (false, not_yet, "is not valid yet"),
    ];
    for (config_rejected, bad, said) in cases {
        let proxy = CertFolderProxy::start().await;
        let mut rx = proxy.server.reload_status();
        let mut failed = 0;
        if config_rejected {
            let good = std::fs::read_to_string(&proxy.config).unwrap();
            std::fs::write(&proxy.config, format!("{good}{ROUTE_WITHOUT_PATH}")).unwrap();
            failed = failures(&mut rx, 1).await.failures;
        }
        let served = served_leaf(proxy.addr).await;
        let (cert, key) = bad(SERVER_NAMES);
        std::fs::write(proxy.folder.join("tls.key"), key).unwrap();
        std::fs::write(proxy.folder.join("tls.crt"), cert).unwrap();
        let status = failures(&mut rx, failed + 1).await;
        assert_eq!(status.generation, 1, "{status:?}");
        // (A renewal's failure is said in the log; the status keeps the config file's.)
        let error = status.last_error.unwrap_or_default();
        assert!(config_rejected || error.contains(said), "{error}");
        assert_eq!(served_leaf(proxy.addr).await, served, "the valid one stays");

        let renewed = renew_in_place(&proxy.folder);
        generation(&mut rx, 2).await;
        assert_eq!(served_leaf(proxy.addr).await, der_of(&renewed));
    }
}

/// A certificate that has run out, refused over the valid one in force, goes in once that one
/// runs out too: as a reload of the config file on disk (in force all along, nothing about it
/// rejected), not as a renewal beside a config file said not in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_goes_in_as_a_reload_when_the_one_in_force_runs_out() {
    // Time for start-up and the refused write on a loaded machine before it runs out.
    let runs_out = std::time::SystemTime::now() + std::time::Duration::from_secs(8);
    let proxy = CertFolderProxy::serving(pki().leaf_until_time(SERVER_NAMES, runs_out)).await;
    let mut rx = proxy.server.reload_status();
    let (cert, key) = pki().leaf_ran_out(SERVER_NAMES);
    std::fs::write(proxy.folder.join("tls.key"), key).unwrap();
    std::fs::write(proxy.folder.join("tls.crt"), &cert).unwrap();
    let status = failures(&mut rx, 1).await;
    assert_eq!(status.generation, 1, "{status:?}");

    // What the reloader waits for is the clock.
    let left = runs_out.duration_since(std::time::SystemTime::now());
    tokio::time::sleep(left.unwrap_or_default()).await;
    let status = generation(&mut rx, 2).await;
    assert_eq!(
        status.last_error, None,
        "the files on disk are in force: {status:?}"
    );
    // Served: a client refuses it as the certificate that ran out (by its notAfter).
    let der = der_of(&cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let not_after = parsed.validity().not_after.timestamp();
    let connector = tokio_rustls::TlsConnector::from(pki().client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let refused = connector.connect(name, tcp).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!("not valid after {not_after}")),
        "{refused}"
    );
}

/// Rewrites the leaf in `folder` in place, key first; returns the new certificate.
fn renew_in_place(folder: &Path) -> String {
    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(folder.join("tls.key"), key).unwrap();
    std::fs::write(folder.join("tls.crt"), &cert).unwrap();
    cert
}

/// A proxy whose certificate folder `replace` swaps for a new one holding a renewed
/// certificate (returned): the renewal is served, and so is a later one written in place in
/// the new folder, which needs a watch on it.
async fn renewals_are_seen_after_the_folder_is_replaced(
    replace: impl FnOnce(&Path, &Path) -> String,
) {
    let CertFolderProxy {
        server,
        addr,
        folder,
        secrets,
        ..
    } = &CertFolderProxy::start().await;
    let (addr, mut rx) = (*addr, server.reload_status());

    let second = replace(folder, secrets.path());
    generation(&mut rx, 2).await;
    assert_eq!(served_leaf(addr).await, der_of(&second));

    let third = renew_in_place(folder);
    generation(&mut rx, 3).await;
    assert_eq!(served_leaf(addr).await, der_of(&third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_deleted_and_made_again_is_still_watched_afterwards() {
    // The watch on a folder goes with its inode: once the folder is deleted, a watch on the
    // path must be taken again, or every later renewal in the new folder goes unnoticed. The
    // folder's parent is not watched (nothing else the config names is there).
    renewals_are_seen_after_the_folder_is_replaced(|folder, _| {
        std::fs::remove_dir_all(folder).unwrap();
        std::fs::create_dir(folder).unwrap();
        renew_in_place(folder)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_swapped_by_rename_is_watched_at_its_path_afterwards() {
    // `mv tls tls.old && mv tls.new tls`: the old watch follows the old folder away.
    renewals_are_seen_after_the_folder_is_replaced(|folder, secrets| {
        let staged = secrets.join("tls.new");
        std::fs::create_dir(&staged).unwrap();
        let renewed = renew_in_place(&staged);
        std::fs::rename(folder, secrets.join("tls.old")).unwrap();
        std::fs::rename(&staged, folder).unwrap();
        renewed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_from_before_a_reload_resumes_after_it() {
    // One ticket key for the process: after a reload (a renewal, a route edit) reconnecting
    // clients resume instead of paying for a full handshake.
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let client = pki().client_config(); // one session store for both connections
    let mut first = RawConn::new(tls_connect_with(proxy.addr, "localhost", client.clone()).await);
    // Reading the answer takes in the session ticket sent after the handshake.
    first
        .send(Req::upgrade("localhost", "/nowhere").bytes())
        .await;
    assert_eq!(first.read_head().await.status, 404);

    resumes_after_a_reload(&proxy, &backend, client).await;
}

/// Reloads `proxy`'s config, then asserts `client` resumes the session it has.
async fn resumes_after_a_reload(
    proxy: &Proxy,
    backend: &WsBackend,
    client: std::sync::Arc<rustls::ClientConfig>,
) {
    let mut rx = proxy.server.reload_status();
    write_body(&proxy.config_path(), &route("b", "/b", &[backend.addr]));
    generation(&mut rx, 2).await;
    let second = tls_connect_with(proxy.addr, "localhost", client).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

/// A TLS 1.2 client without ticket support resumes by session ID: the server's cache of those
/// is the process's too, not the config's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_session_id_from_before_a_reload_resumes_after_it() {
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("a", "/a", &[backend.addr])).await;
    let client = pki().tls12_session_id_client();
    let first = tls_connect_with(proxy.addr, "localhost", client.clone()).await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    drop(first);

    resumes_after_a_reload(&proxy, &backend, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_false_sends_no_tickets_and_honours_none() {
    let backend = WsBackend::start("one").await;
    let body = route("a", "/a", &[backend.addr]);
    let proxy = start_proxy(&body).await;
    let mut rx = proxy.server.reload_status();
    let client = pki().client_config(); // one session store for every connection
    let handshake = |client| async {
        let mut conn = RawConn::new(tls_connect_with(proxy.addr, "localhost", client).await);
        // Reading an answer takes in any session ticket sent after the handshake.
        conn.send(Req::upgrade("localhost", "/nowhere").bytes())
            .await;
        assert_eq!(conn.read_head().await.status, 404);
        conn.stream.get_ref().1.handshake_kind()
    };
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(handshake(client.clone()).await, Some(Full));
    assert_eq!(
        handshake(client.clone()).await,
        Some(Resumed),
        "on by default"
    );
    // A client holding tickets from before, kept aside until resumption is back on.
    let before = pki().client_config();
    assert_eq!(handshake(before.clone()).await, Some(Full));

    let off = CONFIG_HEAD.replace("[tls]\n", "[tls]\nsession_resumption = false\n");
    std::fs::write(proxy.config_path(), format!("{off}{body}")).unwrap();
    generation(&mut rx, 2).await;
    // The client still holds tickets from before: none is honoured, none is added.
    assert_eq!(handshake(client.clone()).await, Some(Full));
    assert_eq!(handshake(client.clone()).await, Some(Full));
    let fresh = pki().client_config();
    assert_eq!(handshake(fresh.clone()).await, Some(Full));
    assert_eq!(handshake(fresh).await, Some(Full), "a ticket was sent");

    write_body(&proxy.config_path(), &body);
    generation(&mut rx, 3).await;
    let fresh = pki().client_config();
    assert_eq!(handshake(fresh.clone()).await, Some(Full));
    assert_eq!(
        handshake(fresh).await,
        Some(Resumed),
        "back on after a reload"
    );
    // Off was off, not paused: a ticket issued before is not honoured when it is back on.
    assert_eq!(handshake(before).await, Some(Full), "a ticket from before");
}

/// Points the symlink `link` at `target` atomically, as a deploy script does (`ln -s` beside
/// it, then `mv -T` over it); what it pointed at before stays.
fn repoint(link: &Path, target: &str) {
    let tmp = link.with_extension("tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_reached_through_a_repointed_symlink_is_followed() {
    // `current -> v1` becomes `current -> v2`, v1 kept: nothing changes in v1 or in v2, only
    // in the folder holding the link, which must be watched too.
    let backend = WsBackend::start("one").await;
    let (conf, secrets) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for version in ["v1", "v2"] {
        std::fs::create_dir(secrets.path().join(version)).unwrap();
        pki().write_leaf(&secrets.path().join(version), "tls", SERVER_NAMES);
    }
    let current = secrets.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let config = conf.path().join("wsgate.toml");
    let body = route("a", "/a", &[backend.addr]);
    let head = head_with_cert(&current.join("tls.crt"), &current.join("tls.key"));
    std::fs::write(&config, format!("{head}{body}")).unwrap();
    let server = wsgate::Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    first_look(&mut rx).await;

    repoint(&current, "v2");
    generation(&mut rx, 2).await;
    let v2 = std::fs::read_to_string(secrets.path().join("v2/tls.crt")).unwrap();
    assert_eq!(served_leaf(addr).await, der_of(&v2));
    // And v2 is watched from then on.
    let renewed = renew_in_place(&secrets.path().join("v2"));
    generation(&mut rx, 3).await;
    assert_eq!(served_leaf(addr).await, der_of(&renewed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_folder_reached_through_a_repointed_symlink_is_followed() {
    let backend = WsBackend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    // Each release complete in its folder: nothing but the link is in the parent.
    for (release, path) in [("r1", "/a"), ("r2", "/b")] {
        std::fs::create_dir(dir.path().join(release)).unwrap();
        write_config(
            &dir.path().join(release),
            &route("a", path, &[backend.addr]),
        );
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("r1", &current).unwrap();
    let server = wsgate::Server::start(current.join("wsgate.toml"))
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut rx = server.reload_status();
    assert_eq!(upgrade_status(addr, "/a").await, 101);
    first_look(&mut rx).await;

    repoint(&current, "r2");
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(addr, "/b").await, 101);
    assert_eq!(upgrade_status(addr, "/a").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_polling_chosen_every_kind_of_save_is_still_applied() {
    // `reload.watch = "poll"` takes no watch at all (the unit test of `Watches::refresh` shows
    // it): the once-a-second check sees these.
    let backend = WsBackend::start("one").await;
    let poll = "[reload]\nwatch = \"poll\"\n\n";
    let proxy = start_proxy(&format!("{poll}{}", route("a", "/a", &[backend.addr]))).await;
    let mut rx = proxy.server.reload_status();
    write_body(
        &proxy.config_path(),
        &format!("{poll}{}", route("b", "/b", &[backend.addr])),
    );
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    rename_save(
        &proxy.config_path(),
        &format!("{poll}{}", route("c", "/c", &[backend.addr])),
    );
    generation(&mut rx, 3).await;
    assert_eq!(upgrade_status(proxy.addr, "/c").await, 101);
    // Back to events: a save is seen through a watch again.
    write_body(&proxy.config_path(), &route("d", "/d", &[backend.addr]));
    generation(&mut rx, 4).await;
    write_body(&proxy.config_path(), &route("e", "/e", &[backend.addr]));
    generation(&mut rx, 5).await;
    assert_eq!(upgrade_status(proxy.addr, "/e").await, 101);
}

/// A change the kernel reports no event for (a write through a shared mapping: inotify(7)
/// says so) is still applied: while every folder is watched, the files are read again every
/// `reload.recheck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_makes_no_file_event_is_applied_by_the_recheck() {
    let backend = WsBackend::start("one").await;
    let recheck = "[reload]\nrecheck = \"1s\"\n\n";
    let proxy = start_proxy(&format!("{recheck}{}", route("a", "/a", &[backend.addr]))).await;
    let mut rx = proxy.server.reload_status();
    // After the start-up look, which would find the change itself.
    first_look(&mut rx).await;
    // Held open until the end: closing a file opened for writing is itself an event.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(proxy.config_path())
        .unwrap();
    // SAFETY: the file is this test's own, and nothing truncates it while it is mapped.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let at = (map.windows(11).position(|w| w == b"path = \"/a\""))
        .expect("the route's path in the file");
    map[at + 9] = b'b';
    map.flush().unwrap();
    generation(&mut rx, 2).await;
    assert_eq!(upgrade_status(proxy.addr, "/b").await, 101);
    assert_eq!(upgrade_status(proxy.addr, "/a").await, 404);
    drop((map, file));
}

#[test]
fn a_config_rewritten_nonstop_is_applied_as_last_read_with_a_warning() {
    // A generator rewriting the file in a loop never lets it hold still: after a few seconds
    // of re-reads, what was read last is applied anyway (it was valid), and the log says why.
    let dir = tempfile::tempdir().unwrap();
    let closed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = write_config(dir.path(), &route("a", "/a", &[closed]));
    let (mut child, lines, addr) = started_wsgate(&config);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir, config) = (stop.clone(), dir.path().to_path_buf(), config.clone());
        std::thread::spawn(move || {
            // Renamed over, so every read sees a whole (valid) file, each time a new one.
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let temp = dir.join("wsgate.toml.tmp");
                let body = format!("{}# write {n}\n", route("b", "/b", &[closed]));
                write_body(&temp, &body);
                std::fs::rename(&temp, &config).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let warned = wait_for_line(&lines, "kept changing");
    let reloaded = wait_for_line(&lines, "config reloaded");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(warned.contains("WARN"), "{warned}");
    assert!(reloaded.contains("\"generation\":2"), "{reloaded}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(upgrade_status(addr, "/a")),
        404,
        "the old route"
    );
    assert_eq!(rt.block_on(upgrade_status(addr, "/b")), 502, "the new one");
    child.kill().unwrap();
}

/// Started in a folder reached through a link (`cd /srv/app/current`, `current -> v1`) with a
/// relative `--config`: the config is watched through the link (the shell's `$PWD`), so a
/// deploy flipping the link to the next release is applied.
#[test]
fn a_relative_config_in_a_folder_reached_through_a_link_follows_a_flip_of_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let closed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (release, path) in [("v1", "/a"), ("v2", "/b")] {
        std::fs::create_dir(dir.path().join(release)).unwrap();
        write_config(&dir.path().join(release), &route(release, path, &[closed]));
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let mut command = wsgate_command(Path::new("wsgate.toml"), "info");
    command.current_dir(&current).env("PWD", &current);
    let mut child = WsgateChild::spawn(&mut command);
    let lines = stderr_lines(child.stderr.take().unwrap());
    let addr = listening_addr(&wait_for_line(&lines, "\"listening\""));
    wait_for_line(&lines, "wsgate started");

    let next = dir.path().join("current.next");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let reloaded = wait_for_line(&lines, "config reloaded");
    assert!(reloaded.contains("\"generation\":2"), "{reloaded}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(upgrade_status(addr, "/a")), 404, "v1's route");
    assert_eq!(rt.block_on(upgrade_status(addr, "/b")), 502, "v2's");
}

/// How a step of [`every_kind_of_save_after_every_other_is_applied`] writes the config.
#[derive(Clone, Copy, Debug)]
enum Save {
    InPlace,
    Rename,
    DeleteAndCreate,
}

impl Save {
    fn write(self, path: &Path, body: &str) {
        match self {
            Save::InPlace => write_body(path, body),
            Save::Rename => rename_save(path, body),
            Save::DeleteAndCreate => {
                std::fs::remove_file(path).unwrap();
                write_body(path, body);
            }
        }
    }
}

/// The reload status once `done` says so. This test is about the order of saves, not their
/// speed (each single-save test holds the one-second promise): 17 waits in a row get 10 s
/// each on a loaded machine.
async fn in_order(
    rx: &mut tokio::sync::watch::Receiver<wsgate::ReloadStatus>,
    done: impl Fn(&wsgate::ReloadStatus) -> bool,
) -> wsgate::ReloadStatus {
    let within = std::time::Duration::from_secs(10);
    let waited = tokio::time::timeout(within, rx.wait_for(|s| done(s)))
        .await
        .map(|seen| seen.map(|status| status.clone()));
    match waited {
        Ok(Ok(status)) => status,
        _ => panic!("the reload status did not get there: {:?}", *rx.borrow()),
    }
}

/// Every kind of save, a broken config among them, follows every other (a de Bruijn sequence
/// of the four, 16 steps and back to the first): each valid one is applied and each broken one
/// rejected, whatever came before it, so no save leaves the watcher deaf to the next kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_save_after_every_other_is_applied() {
    const SAVES: [Save; 3] = [Save::InPlace, Save::Rename, Save::DeleteAndCreate];
    // 3: a broken config, saved each of the three ways in turn.
    const STEPS: [usize; 17] = [0, 0, 1, 0, 2, 0, 3, 1, 1, 2, 1, 3, 2, 2, 3, 3, 0];
    let backend = WsBackend::start("one").await;
    let proxy = start_proxy(&route("r0", "/r0", &[backend.addr])).await;
    let mut rx = proxy.server.reload_status();
    let (mut generation_now, mut failures_now, mut served) = (1, 0, "/r0".to_string());
    for (n, &step) in STEPS.iter().enumerate() {
        let n = n + 1;
        if step == 3 {
            let save = SAVES[failures_now as usize % 3];
            save.write(
                &proxy.config_path(),
                &format!("[[route]]\nname = \"r{n}\"\nbogus = {n}\n"),
            );
            failures_now += 1;
            let status = in_order(&mut rx, |s| s.failures == failures_now).await;
            assert_eq!(
                status.generation, generation_now,
                "step {n}: {save:?}, broken"
            );
        } else {
            let save = SAVES[step];
            let path = format!("/r{n}");
            save.write(
                &proxy.config_path(),
                &route(&format!("r{n}"), &path, &[backend.addr]),
            );
            generation_now += 1;
            in_order(&mut rx, |s| s.generation == generation_now).await;
            assert_eq!(
                upgrade_status(proxy.addr, &served).await,
                404,
                "step {n}: {save:?}"
            );
            served = path;
        }
        assert_eq!(upgrade_status(proxy.addr, &served).await, 101, "step {n}");
    }
}
