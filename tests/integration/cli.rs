//! The `wsgate` binary: --version, --help, `check`, and `run` with a bad config.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `wsgate args…` from `/` (so relative paths must resolve against the config's folder)
/// and fails the test if it does not exit within [`TIMEOUT`].
fn wsgate(args: &[&str]) -> Output {
    let mut command = Command::new(wsgate_bin());
    command.args(args).current_dir("/");
    exited(command, &format!("wsgate {args:?}"))
}

/// Runs `command` to its end, output captured; fails the test (killing it) if it does not
/// exit within [`TIMEOUT`].
fn exited(mut command: Command, what: &str) -> Output {
    let mut child = command
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not exit within {TIMEOUT:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `wsgate run` child, killed when the test ends, failed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wsgate run --config config` from `dir`, logging text at `rust_log`: the process and its
/// log lines.
fn run_text(
    config: &str,
    dir: &Path,
    rust_log: &str,
) -> (Running, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(wsgate_bin());
    command.args(["run", "--config", config]).current_dir(dir);
    running(command, rust_log)
}

/// `command` (a `wsgate run`, or a shell that execs one) started logging text at `rust_log`:
/// the process and its log lines.
fn running(mut command: Command, rust_log: &str) -> (Running, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(child.stderr.take().unwrap());
    (Running(child), lines)
}

/// The soft and hard open-files limits of process `pid` (`self` for this one), as the kernel
/// reports them.
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = (limits.lines().find(|l| l.starts_with("Max open files"))).unwrap();
    let field = |n: usize| line.split_whitespace().nth(n).unwrap().parse().unwrap();
    (field(3), field(4))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(path: &Path) -> Output {
    wsgate(&["check", "--config", path.to_str().unwrap()])
}

const ROUTE: &str = "[[route]]\nname = \"chat\"\npath = \"/ws\"\nbackends = [\"127.0.0.1:9001\"]\n";

/// Line numbers in test configs: [`CONFIG_HEAD`] takes this many lines before the body.
fn head_lines() -> usize {
    CONFIG_HEAD.lines().count()
}

fn assert_clean_failure(out: &Output) {
    assert!(!out.status.success(), "expected a failure: {}", text(out));
    assert!(
        !text(out).contains("panicked"),
        "wsgate panicked: {}",
        text(out)
    );
}

#[test]
fn version_prints_the_crate_version() {
    let out = wsgate(&["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&out)
    );
}

#[test]
fn help_names_the_subcommands() {
    let out = wsgate(&["--help"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("run") && stdout.contains("check"),
        "{stdout}"
    );
}

#[test]
fn zero_or_too_many_threads_is_a_usage_error() {
    for threads in ["0", "1025", "18446744073709551615"] {
        let out = wsgate(&["run", "--config", "/nonexistent.toml", "--threads", threads]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let said = "must be at least 1 and at most 1024";
        assert!(text(&out).contains(said), "{}", text(&out));
    }
}

/// tokio's own knob for its worker count is not wsgate's (`--threads` is): a value tokio would
/// panic on is never read.
#[test]
fn tokios_worker_threads_variable_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), ROUTE);
    let mut command = wsgate_command(&config, "info");
    let mut child = WsgateChild::spawn(command.env("TOKIO_WORKER_THREADS", "abc"));
    let lines = stderr_lines(child.stderr.take().unwrap());
    wait_for_line(&lines, "wsgate started");
    send_signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_accepts_a_good_config_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout:?}");
    // rcgen's default validity ends in 4096.
    assert!(
        stdout.contains("certificates valid until 4096-01-01T00:00:00Z"),
        "{stdout:?}"
    );
}

#[test]
fn check_warns_about_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (cert, key) = pki().leaf_until(SERVER_NAMES, Some((2020, 6, 30)));
    std::fs::write(dir.path().join("server.crt"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let out = check(&path);
    // Loadable (a running proxy keeps serving it), but the operator is told.
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WARNING: certificate")
            && stdout.contains("server.crt expired at 2020-06-30T00:00:00Z"),
        "{stdout:?}"
    );
    // And warned about on stderr, as `run` does at every load.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: ")
            && stderr.contains("server.crt: certificate has expired; clients will refuse it"),
        "{stderr:?}"
    );
}

/// A chain is only as valid as its intermediates: one run out, or about to, is warned about
/// and decides the summary's date (the leaf here runs to 4096).
#[test]
fn check_warns_about_an_intermediate_that_has_expired_or_expires_soon() {
    let now = time::OffsetDateTime::now_utc();
    let cases = [
        (
            now - time::Duration::days(30),
            "has expired; clients will refuse it unless they find another path to a root they trust",
        ),
        (
            now + time::Duration::days(5),
            "expires in 5 day(s); is its renewal working?",
        ),
    ];
    for (until, said) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), ROUTE);
        let issuing = pki().intermediate_until("issuing CA", until);
        let (cert, key) = issuing.leaf(SERVER_NAMES);
        let chain = cert + &issuing.ca_pem();
        std::fs::write(dir.path().join("server.crt"), chain).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let out = check(&path);
        assert!(out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warning =
            format!("server.crt: chain's intermediate certificate 2 (\"CN=issuing CA\") {said}");
        assert!(stderr.contains(&warning), "{stderr:?}\n{warning}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("4096"), "{stdout:?}");
    }
    // A leaf run out itself is named, whatever ended before it: no other path saves it.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let issuing = pki().intermediate_until("issuing CA", now - time::Duration::days(30));
    let (cert, key) = issuing.leaf_until(SERVER_NAMES, Some((2020, 6, 30)));
    std::fs::write(dir.path().join("server.crt"), cert + &issuing.ca_pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let stderr = String::from_utf8_lossy(&check(&path).stderr).into_owned();
    let said = "server.crt: certificate has expired; clients will refuse it\n";
    assert!(stderr.contains(said), "{stderr:?}");
}

#[test]
fn check_names_file_line_and_key_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[timeouts]\nidle = \"forever\"\n\n{ROUTE}"),
    );
    let out = check(&path);
    assert_clean_failure(&out);
    let line = head_lines() + 2;
    let all = text(&out);
    assert!(all.contains(&format!("wsgate.toml:{line}:")), "{all}");
    assert!(all.contains("idle"), "{all}");
}

#[test]
fn check_names_file_line_and_key_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("{ROUTE}\n[limits]\nmax_conections = 5\n"),
    );
    let out = check(&path);
    assert_clean_failure(&out);
    let line = head_lines() + ROUTE.lines().count() + 3;
    let all = text(&out);
    assert!(all.contains(&format!("wsgate.toml:{line}:")), "{all}");
    assert!(all.contains("max_conections"), "{all}");
}

#[test]
fn check_warns_about_a_route_that_can_never_be_chosen_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let shadowed = ROUTE.replace("name = \"chat\"", "name = \"b\"");
    let path = write_config(dir.path(), &format!("{ROUTE}{shadowed}"));
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
    assert!(stdout.contains("2 route(s)"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: ")
            && stderr.contains("route[1].path: route \"b\" can never be chosen: route \"chat\""),
        "{stderr}"
    );
}

#[test]
fn check_names_a_missing_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    std::fs::remove_file(dir.path().join("server.crt")).unwrap();
    let out = check(&path);
    assert_clean_failure(&out);
    // The place is the value naming the file.
    let expected = ":5:27: tls.certificates[0].cert: cannot read certificate";
    assert!(text(&out).contains(expected), "{}", text(&out));
    assert!(text(&out).contains("server.crt"), "{}", text(&out));
    pki().write_leaf(dir.path(), "server", SERVER_NAMES);
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    let out = check(&path);
    let expected = ":5:47: tls.certificates[0].key: cannot read private key";
    assert!(text(&out).contains(expected), "{}", text(&out));
}

#[test]
fn check_refuses_a_key_that_does_not_match_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (_, other_key) = pki().leaf(&["localhost"]);
    std::fs::write(dir.path().join("server.key"), other_key).unwrap();
    let out = check(&path);
    assert_clean_failure(&out);
}

#[test]
fn check_warns_about_a_certificate_not_valid_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (cert, key) = pki().leaf_valid(SERVER_NAMES, Some(((2999, 1, 1), (3001, 1, 1))));
    std::fs::write(dir.path().join("server.crt"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.crt: certificate is not valid before 2999-01-01T00:00:00Z"),
        "{stderr:?}"
    );
    // The summary says so too, not that the certificates are valid until some date.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WARNING: certificate")
            && stdout.contains("server.crt is not valid before 2999-01-01T00:00:00Z"),
        "{stdout:?}"
    );
}

/// A route `/` for each of `hosts`, named `r0`, `r1`…
fn routes_for_hosts(hosts: &[&str]) -> String {
    (hosts.iter().enumerate())
        .map(|(i, host)| {
            format!("[[route]]\nname = \"r{i}\"\nhost = \"{host}\"\npath = \"/\"\nbackends = [\"127.0.0.1:9001\"]\n")
        })
        .collect()
}

/// A route whose host no certificate names loads, with a warning at its `host`: its clients
/// would get the first certificate, which browsers refuse for that name. A name the
/// certificates cover (by a wildcard too), or a wildcard route, gets none.
#[test]
fn check_warns_about_a_route_host_no_certificate_names() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_for_hosts(&["chat.example.org", "localhost", "*.example.org"]);
    let path = write_config(dir.path(), &routes);
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = head_lines() + 3;
    let at = format!("wsgate.toml:{line}:8: route[0].host: no certificate in tls.certificates names \"chat.example.org\"");
    assert!(stderr.contains(&at), "{stderr}");
    assert_eq!(
        stderr
            .matches("no certificate in tls.certificates names")
            .count(),
        1,
        "{stderr}"
    );
}

/// Thousands of routes may warn alike (hosts no certificate names): `check` prints every
/// warning, but a running wsgate logs the first 20 and how many more, not a flood at every
/// reload; a certificate's validity first, whatever else there is to say.
#[test]
fn check_prints_every_warning_and_run_logs_twenty_and_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let hosts: Vec<String> = (0..25).map(|i| format!("h{i}.example.org")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let path = write_config(dir.path(), &routes_for_hosts(&hosts));
    let (cert, key) = pki().leaf_until(SERVER_NAMES, Some((2020, 6, 30)));
    std::fs::write(dir.path().join("server.crt"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let warned = "no certificate in tls.certificates names";
    let expired = "certificate has expired";
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(warned).count(), 25, "{stderr}");
    assert_eq!(stderr.matches(expired).count(), 1, "{stderr}");

    let mut child = spawn_wsgate_logging(&path, "info");
    let lines = stderr_lines(child.stderr.take().unwrap());
    let seen = lines_until(&lines, "wsgate started");
    let logged = seen.iter().filter(|line| line.contains(warned)).count();
    assert_eq!(logged, 19, "{seen:#?}");
    assert_eq!(
        seen.iter().filter(|l| l.contains(expired)).count(),
        1,
        "{seen:#?}"
    );
    let more = seen.iter().find(|line| line.contains("more warnings"));
    assert!(
        more.is_some_and(|line| line.contains("\"more\":6") && line.contains("wsgate check")),
        "{seen:#?}"
    );
}

/// A route for an IP address: its clients send no name, and get the first certificate, which
/// is fine where that names the address (and warned about where it does not).
#[test]
fn check_warns_about_a_route_address_the_first_certificate_does_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes_for_hosts(&["127.0.0.1", "10.0.0.1"]);
    let path = write_config(dir.path(), &routes);
    pki().write_leaf(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned = "no certificate in tls.certificates names";
    assert!(
        stderr.contains(&format!("route[1].host: {warned} \"10.0.0.1\"")),
        "{stderr}"
    );
    assert_eq!(stderr.matches(warned).count(), 1, "{stderr}");
    // Named by a later certificate only, which such clients never get: said so, and what to
    // do, not that no certificate names it.
    let body = std::fs::read_to_string(&path).unwrap().replace(
        r#"{ cert = "server.crt", key = "server.key" }"#,
        r#"{ cert = "server.crt", key = "server.key" }, { cert = "ip.crt", key = "ip.key" }"#,
    );
    std::fs::write(&path, body).unwrap();
    pki().write_leaf(dir.path(), "ip", &["ip.example.org", "10.0.0.1"]);
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let later = "route[1].host: only tls.certificates[1] names \"10.0.0.1\"";
    assert!(
        stderr.contains(later) && stderr.contains("list that one first"),
        "{stderr}"
    );
    assert!(!stderr.contains(warned), "{stderr}");
}

/// A later certificate that SNI can never pick (no DNS name in its subjectAltName, or every
/// name already covered by an earlier one) loads, with a warning naming its line.
#[test]
fn check_warns_about_certificates_sni_never_picks() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{CONFIG_HEAD}{ROUTE}").replace(
        r#"{ cert = "server.crt", key = "server.key" }"#,
        r#"{ cert = "server.crt", key = "server.key" },
  { cert = "cn.crt", key = "cn.key" },
  { cert = "again.crt", key = "again.key" },
  { cert = "new.crt", key = "new.key" },
  { cert = "dot.crt", key = "dot.key" },"#,
    );
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, &body).unwrap();
    pki().write_leaf(dir.path(), "server", SERVER_NAMES);
    let (cert, key) = pki().leaf_cn_only("legacy.test");
    std::fs::write(dir.path().join("cn.crt"), cert).unwrap();
    std::fs::write(dir.path().join("cn.key"), key).unwrap();
    pki().write_leaf(
        dir.path(),
        "again",
        &["localhost", "example.com", "*.example.com"],
    );
    pki().write_leaf(dir.path(), "new", &["localhost", "new.test"]);
    // SNI is compared without a trailing dot: "localhost." is the first certificate's name.
    pki().write_leaf(dir.path(), "dot", &["localhost."]);
    let out = check(&path);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.certificates[1]: ")
            && stderr.contains("cn.crt is never served: its subjectAltName holds no DNS name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tls.certificates[2]: ")
            && stderr.contains(
                "again.crt is never served: an earlier certificate with the same kind of key"
            ),
        "{stderr}"
    );
    assert!(!stderr.contains("new.crt"), "it serves new.test: {stderr}");
    assert!(
        stderr.contains("tls.certificates[4]: ") && stderr.contains("dot.crt is never served"),
        "{stderr}"
    );
}

/// Each way a PEM file goes wrong gets words an operator can act on.
#[test]
fn check_says_what_is_wrong_with_a_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (cert, key) = pki().leaf(SERVER_NAMES);
    std::fs::write(dir.path().join("server.key"), &key).unwrap();
    let crt = dir.path().join("server.crt");
    let cut_short = &cert[..cert.find("-----END").unwrap()];
    std::fs::write(&crt, cut_short).unwrap();
    let out = text(&check(&path));
    assert!(
        out.contains(
            "no \"-----END CERTIFICATE-----\" line after its BEGIN line (is the file cut short?)"
        ),
        "{out}"
    );
    // The CA first, then the server's own certificate: a bundle in the wrong order.
    std::fs::write(&crt, format!("{}{cert}", pki().ca_pem())).unwrap();
    let out = text(&check(&path));
    assert!(
        out.contains("server.key is not the first in")
            && out.contains("put the server's own certificate first"),
        "{out}"
    );
    std::fs::write(&crt, &cert).unwrap();
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("server.key"), encrypted).unwrap();
    let out = text(&check(&path));
    assert!(out.contains("the key is encrypted"), "{out}");
    std::fs::write(dir.path().join("server.key"), &cert).unwrap();
    let out = text(&check(&path));
    assert!(out.contains("no private key in it"), "{out}");
    // Well-formed PEM, but no key rustls can sign with (an RSA-1024 or secp256k1 key reads so).
    let foreign =
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("server.key"), foreign).unwrap();
    let out = text(&check(&path));
    assert!(
        out.contains("tls.certificates[0].key: cannot use private key")
            && out.contains("not a key wsgate can sign with (RSA of 2048 bits or more"),
        "{out}"
    );
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    assert!(check(&path).status.success());
}

#[test]
fn check_names_a_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = check(&path);
    assert_clean_failure(&out);
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));
}

#[test]
fn check_says_an_empty_config_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, "").unwrap();
    let out = check(&path);
    assert_clean_failure(&out);
    assert!(
        text(&out).contains("wsgate.toml: config file is empty"),
        "{}",
        text(&out)
    );
}

/// `wsgate check … | head -0`: output nobody reads is no reason to panic (exit 101); the
/// exit code still gives the verdict.
#[test]
fn check_whose_output_is_not_read_exits_with_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), ROUTE);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[proxy\n").unwrap();
    for (path, code) in [(good, 0), (bad, 2)] {
        // Pipes whose reading ends are closed before wsgate writes: every write fails.
        let (_, stdout) = std::io::pipe().unwrap();
        let (_, stderr) = std::io::pipe().unwrap();
        let status = Command::new(wsgate_bin())
            .args(["check", "--config"])
            .arg(&path)
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{}", path.display());
    }
}

#[test]
fn run_with_a_bad_config_exits_non_zero_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[timeouts]\nidle = \"forever\"\n\n{ROUTE}"),
    );
    let out = wsgate(&["run", "--config", path.to_str().unwrap()]);
    assert_clean_failure(&out);
    assert!(text(&out).contains("idle"), "{}", text(&out));
}

#[test]
fn run_with_a_missing_certificate_exits_non_zero_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    let out = wsgate(&["run", "--config", path.to_str().unwrap()]);
    assert_clean_failure(&out);
}

/// A `RUST_LOG` that silences wsgate's lines does not silence why it cannot start: with
/// `off`, the JSON line gives way to the words on stderr; a typo that sets no level for
/// wsgate (`warning`, read as a module's name) is said, and its lines are logged at info.
#[test]
fn a_rust_log_silencing_wsgate_neither_hides_why_it_cannot_start_nor_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[timeouts]\nidle = \"forever\"\n\n{ROUTE}"),
    );
    let run_json = |rust_log: &str| {
        let mut command = Command::new(wsgate_bin());
        command
            .args(["run", "--log-format", "json", "--config"])
            .arg(&path);
        command.env("RUST_LOG", rust_log);
        let out = exited(command, "run");
        assert_clean_failure(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run_json("off");
    assert!(
        said.starts_with("error: ") && said.contains("idle"),
        "{said}"
    );
    let said = run_json("warning");
    assert!(
        said.contains("RUST_LOG sets no level for wsgate's own lines"),
        "{said}"
    );
    assert!(said.contains(r#""message":"cannot start""#), "{said}");
}

/// A bad config at start-up is refused with check's message, word for word, paths as given
/// (a relative `--config`, a certificate beside it), whatever `run` makes of them later.
#[test]
fn run_refuses_a_bad_config_with_checks_message() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_config(&conf, &format!("[timeouts]\nidle = \"forever\"\n\n{ROUTE}"));
    let in_dir = |subcommand: &str| {
        let mut command = Command::new(wsgate_bin());
        command.args([subcommand, "--config", "conf/wsgate.toml"]);
        command.current_dir(dir.path());
        let out = exited(command, subcommand);
        assert_clean_failure(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = in_dir("check");
    assert!(said.starts_with("error: conf/wsgate.toml:"), "{said}");
    assert_eq!(in_dir("run"), said);
    write_config(&conf, ROUTE);
    std::fs::remove_file(conf.join("server.key")).unwrap();
    let said = in_dir("check");
    assert!(said.contains("conf/server.key"), "{said}");
    assert!(!said.contains(&*dir.path().to_string_lossy()), "{said}");
    assert_eq!(in_dir("run"), said);
    // A listen address in use, which only `run` finds: named by the path as given too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let config = write_config(&conf, ROUTE);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:0", &at.to_string())).unwrap();
    let said = in_dir("run");
    let named = |line: &str| line.starts_with("error: conf/wsgate.toml:2:11: proxy.listen[0]");
    assert!(said.lines().any(named), "{said}");
}

/// docs/configuration.md's complete example is config/example.toml, but for its certificate
/// paths (the file's point at the dev certificates) and the file's opening comment.
#[test]
fn the_documented_complete_example_is_the_shipped_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let (_, rest) = doc
        .split_once("## A complete example\n\n```toml\n")
        .unwrap();
    let (documented, _) = rest.split_once("```\n").unwrap();
    let shipped = std::fs::read_to_string(root.join("config/example.toml")).unwrap();
    let (_, shipped) = shipped.split_once('\n').unwrap();
    let shipped = shipped
        .replace("../certs/localhost", "tls/example")
        .replace("../certs/dev-ca", "tls/backend-ca");
    assert_eq!(documented, shipped);
}

/// `toml`, a config the docs show, passes `check` with no warning, test certificate files
/// standing in for the ones it names at `cert` and `key`.
fn documented_config_passes_check(toml: &str, cert: &str, key: &str) {
    assert!(toml.contains("[[route]]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = pki().write_leaf(dir.path(), "tls", SERVER_NAMES);
    let toml = toml
        .replace(cert, cert_file.to_str().unwrap())
        .replace(key, key_file.to_str().unwrap());
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "{}\n{toml}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
}

/// The config in docs/operations.md's Kubernetes example, its ConfigMap's `wsgate.toml`.
#[test]
fn the_documented_kubernetes_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let (_, rest) = doc.split_once("  wsgate.toml: |\n").unwrap();
    // The block scalar runs to the first line with text that is not indented under it
    // (blank lines inside it belong to it).
    let inside = |line: &&str| line.trim().is_empty() || line.starts_with("    ");
    let lines: Vec<&str> = rest.lines().take_while(inside).collect();
    let toml = lines
        .iter()
        .map(|line| line.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    documented_config_passes_check(&toml, "/etc/wsgate-tls/tls.crt", "/etc/wsgate-tls/tls.key");
}

/// The config README.md shows.
#[test]
fn the_readmes_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (_, rest) = readme.split_once("## A config\n").unwrap();
    let (_, rest) = rest.split_once("```toml\n").unwrap();
    let (toml, _) = rest.split_once("```\n").unwrap();
    documented_config_passes_check(toml, "/etc/wsgate/tls/tls.crt", "/etc/wsgate/tls/tls.key");
}

#[test]
fn the_shipped_configs_pass_check() {
    for name in ["config/wsgate.toml", "config/example.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let out = check(&path);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("ok"), "{name}: {}", text(&out));
    }
}

#[test]
fn an_invalid_rust_log_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    // A config that cannot start: the process says its piece and exits.
    let out = Command::new(wsgate_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "wsgate=[")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("RUST_LOG is not a valid filter; logging at info"),
        "{}",
        text(&out)
    );
}

/// A config that asks for JSON logs and does not load says why in JSON: the log pipeline it
/// was written for reads that, whatever else in the file is wrong.
#[test]
fn a_config_that_cannot_start_is_reported_in_the_log_format_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let twice = format!("{ROUTE}{ROUTE}");
    let path = write_config(dir.path(), &twice);
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        src.replace("[proxy]\n", "[proxy]\nlog_format = \"json\"\n"),
    )
    .unwrap();
    let out = Command::new(wsgate_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = (stderr.lines())
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("no cannot-start line: {stderr}"));
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not JSON: {line}"
    );
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(line.contains("duplicate route name"), "{line}");
}

#[test]
fn a_rust_log_of_only_commas_logs_at_info() {
    // No directive at all would mean errors only: a blank RUST_LOG means the default.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (_child, lines) = run_text(path.to_str().unwrap(), Path::new("/"), ", ,");
    let line = wait_for_line(&lines, "wsgate started");
    assert!(line.contains("INFO"), "{line}");
}

#[test]
fn a_relative_config_path_is_followed_when_its_folder_is_replaced() {
    // Started from the config's own folder, which a deploy then swaps for a new one: the
    // path, not the folder the process started in, is what gets watched and read.
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_config(&conf, ROUTE);
    let (_child, lines) = run_text("wsgate.toml", &conf, "info");
    wait_for_line(&lines, "wsgate started");
    let fresh = root.path().join("conf.new");
    std::fs::create_dir(&fresh).unwrap();
    write_config(&fresh, &ROUTE.replace("\"chat\"", "\"chat2\""));
    std::fs::rename(&conf, root.path().join("conf.old")).unwrap();
    std::fs::rename(&fresh, &conf).unwrap();
    let line = wait_for_line(&lines, "config reloaded");
    assert!(line.contains("generation=2"), "{line}");
}

#[test]
fn a_reload_changing_the_log_format_says_it_waits_for_a_restart() {
    // Started without --log-format, so the config's key chose text.
    let (_dir, path, _child, lines) = started_text();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, in_proxy(&text, "log_format = \"json\"")).unwrap();
    let line = wait_for_line(&lines, "read at start only");
    assert!(line.contains("WARN"), "{line}");
    wait_for_line(&lines, "config reloaded");
    // Back to the format in use: nothing to say.
    std::fs::write(&path, &text).unwrap();
    let before = lines_until(&lines, "config reloaded");
    assert!(
        !before.iter().any(|l| l.contains("log_format")),
        "{before:?}"
    );
}

/// A socket's `SO_REUSEPORT` is set when it is bound: a reload turning `reuse_port` on or off
/// says the listeners already open keep theirs, and applies the rest.
#[test]
fn a_reload_changing_reuse_port_says_it_applies_to_listeners_opened_from_then_on() {
    let (_dir, path, _child, lines) = started_text();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, in_proxy(&text, "reuse_port = true")).unwrap();
    let line = wait_for_line(
        &lines,
        "proxy.reuse_port applies to listeners opened from now on",
    );
    assert!(
        line.contains("WARN") && line.contains("listeners=1"),
        "{line}"
    );
    let line = wait_for_line(&lines, "config reloaded");
    assert!(line.contains("generation=2"), "{line}");
}

/// Run as a systemd `Type=notify` unit (`NOTIFY_SOCKET` set): READY=1 once it listens, with the
/// generation in force as its status; a new status line naming the error when a reload is
/// rejected; STOPPING=1 once SIGTERM starts the drain. A config that does not start sends
/// nothing, so `systemctl start` fails.
#[test]
fn systemd_is_told_ready_the_status_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket).unwrap();
    systemd.set_read_timeout(Some(TIMEOUT)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).expect("a notification in time");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let config = write_config(dir.path(), ROUTE);
    let mut command = wsgate_command(&config, "info");
    let mut child = WsgateChild::spawn(command.env("NOTIFY_SOCKET", &socket));
    let lines = stderr_lines(child.stderr.take().unwrap());
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=config generation 1 in force (0 reloads applied, 0 rejected)"),
        "{ready}"
    );
    // Ready means accepting: the listener is up by then.
    let addr = listening_addr(&wait_for_line(&lines, "\"listening\""));
    std::net::TcpStream::connect(addr).unwrap();

    std::fs::write(&config, format!("{CONFIG_HEAD}[[route]]\nname = \"x\"\n")).unwrap();
    let rejected = next();
    assert!(
        rejected.contains("STATUS=config generation 1 in force (0 reloads applied, 1 rejected); the files on disk are not: "),
        "{rejected}"
    );
    assert!(rejected.contains("wsgate.toml"), "{rejected}");

    send_signal(child.id(), "TERM");
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());

    // A config that does not start: no READY=1, and status 2.
    std::fs::write(&config, "[proxy\n").unwrap();
    let status = wsgate_command(&config, "info")
        .env("NOTIFY_SOCKET", &socket)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    systemd.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let after = systemd
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(after.is_err(), "{after:?}");
}

/// With `reuse_port` on, start-up warns if the kernel would reset the connections queued on a
/// stopping wsgate's listeners rather than hand them over (`net.ipv4.tcp_migrate_req` 0), and
/// says nothing where it hands them over: whichever this machine does.
#[test]
fn reuse_port_warns_at_start_when_a_handover_would_reset_queued_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, in_proxy(&text, "reuse_port = true")).unwrap();
    let (_child, lines) = run_text(path.to_str().unwrap(), Path::new("/"), "info");
    let start = lines_until(&lines, "wsgate started");
    let warned = start
        .iter()
        .any(|l| l.contains("net.ipv4.tcp_migrate_req is 0"));
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
    let resets = migrate.as_ref().is_ok_and(|value| value.trim() == "0");
    assert_eq!(warned, resets, "tcp_migrate_req 0: {resets}; {start:?}");
    let unreadable = start
        .iter()
        .any(|l| l.contains("tcp_migrate_req cannot be read"));
    assert_eq!(unreadable, migrate.is_err(), "{start:?}");
}

/// `wsgate run` logging text at info, on a config of [`ROUTE`] in a folder of its own, once it
/// has started: the folder, the config's path, the process and its log lines.
fn started_text() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Running,
    std::sync::mpsc::Receiver<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let (child, lines) = run_text(path.to_str().unwrap(), Path::new("/"), "info");
    wait_for_line(&lines, "wsgate started");
    (dir, path, child, lines)
}

/// A config's text with `line` added to its `[proxy]` section.
fn in_proxy(text: &str, line: &str) -> String {
    text.replacen("[proxy]\n", &format!("[proxy]\n{line}\n"), 1)
}

/// Too few open files to start at all is said in words (it used to end in a panic inside the
/// signal set-up).
#[test]
fn too_low_an_open_files_limit_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), ROUTE);
    let script = run_under_ulimit("-n 8", &path, "");
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    let out = exited(sh, "wsgate under ulimit -n 8");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("error: the open-files limit (ulimit -n) is 8; wsgate needs at least 32, plus one per client connection and another per tunnel"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    // With JSON logs, as a JSON line, as any other failure to start.
    let script = run_under_ulimit("-n 8", &path, "--log-format json");
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    let out = exited(sh, "wsgate under ulimit -n 8, JSON logs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    let line = said.trim();
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "one JSON line: {said}"
    );
    assert!(line.contains("\"message\":\"cannot start\""), "{line}");
    assert!(
        line.contains("the open-files limit (ulimit -n) is 8;"),
        "{line}"
    );
}

/// The soft open-files limit most processes start with (1024) fits about 500 tunnels: `run`
/// raises it to the hard limit, says so, and warns when even that leaves room for fewer
/// tunnels than `limits.max_connections`.
#[test]
fn run_raises_the_open_files_limit_to_the_hard_one_and_says_when_it_is_short() {
    let (_, hard) = open_files_limits("self");
    assert!(
        hard > 100,
        "this test needs a hard limit above 100, not {hard}"
    );
    // More connections than the hard limit has room for (but within the key's range).
    let max_connections = hard.min(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let body = format!("[limits]\nmax_connections = {max_connections}\n\n{ROUTE}");
    let path = write_config(dir.path(), &body);
    let script = run_under_ulimit("-S -n 100", &path, "");
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    let (child, lines) = running(sh, "info");
    let seen = lines_until(&lines, "wsgate started");
    let said = |needle: &str| seen.iter().any(|l| l.contains(needle));
    assert!(
        said(&format!(
            "open-files limit (ulimit -n) raised from 100 to the hard limit, {hard}"
        )),
        "{seen:#?}"
    );
    let (soft, _) = open_files_limits(&child.0.id().to_string());
    assert_eq!(soft, hard, "the soft limit of the running process");
    if 2 * max_connections + 64 > hard {
        assert!(said("leaves room for"), "{seen:#?}");
        assert!(said("WARN"), "{seen:#?}");
    }
}
