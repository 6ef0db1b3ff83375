//! Tells systemd how wsgate is doing when it runs as a `Type=notify` unit (the sd_notify
//! protocol): ready once every listener accepts, so that `systemctl start` returns only then
//! (and fails on a config that does not start); the config generation in force, and why the
//! files on disk are not in force when they are not, as the unit's status line in `systemctl
//! status`; stopping once the drain begins. Not started by systemd (no `NOTIFY_SOCKET`),
//! nothing is sent.
//!
//! The protocol is one datagram of `KEY=value` lines to the socket `NOTIFY_SOCKET` names: a
//! path, or `@name` for a socket in Linux's abstract namespace (which systemd's own manager
//! and some container runtimes use, sd_notify(3)); written here, as the crate that did it
//! took `@name` for a file.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::reload::ReloadStatus;
use crate::sync::lock;

/// The longest reason the status line gives: the journal has the whole error.
const MAX_REASON: usize = 160;

/// What systemd has been told, from ready on. The status updates and the stop share a lock,
/// so that no update (a reload under way when the signal came) is sent after the stop.
pub(crate) struct Notifier(Option<Arc<Mutex<Told>>>);

#[derive(PartialEq)]
enum Told {
    Ready,
    Stopping,
}

/// Says wsgate is ready, then keeps the unit's status line in step with `status` until
/// [`Notifier::stopping`].
pub(crate) fn ready(mut status: watch::Receiver<ReloadStatus>) -> Notifier {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Notifier(None);
    }
    let mut said = status_line(&status.borrow_and_update());
    send(&format!("READY=1\nSTATUS={said}\n"));
    let told = Arc::new(Mutex::new(Told::Ready));
    let updates = told.clone();
    tokio::spawn(async move {
        // Every look at the files changes the status (its count of looks); only a new line
        // is sent.
        while status.changed().await.is_ok() {
            let line = status_line(&status.borrow_and_update());
            let told = lock(&updates);
            if *told == Told::Stopping {
                return;
            }
            if line != said {
                send(&format!("STATUS={line}\n"));
                said = line;
            }
        }
    });
    Notifier(Some(told))
}

impl Notifier {
    /// Says the drain has begun; the status line stays as this says it.
    pub(crate) fn stopping(self) {
        let Some(told) = self.0 else { return };
        let mut told = lock(&told);
        *told = Told::Stopping;
        send("STOPPING=1\nSTATUS=shutting down: no new connections; live tunnels drain\n");
    }
}

fn send(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify(socket.as_bytes(), message) {
        let socket = socket.to_string_lossy();
        tracing::warn!(error = %e, %socket, "cannot notify systemd at NOTIFY_SOCKET");
    }
}

/// Sends `message` to the socket `NOTIFY_SOCKET` names (`socket`): a path, or `@name` in the
/// abstract namespace.
fn notify(socket: &[u8], message: &str) -> io::Result<()> {
    let addr = match socket.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(socket))?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    if sent < message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "message cut short",
        ));
    }
    Ok(())
}

/// One line: the generation in force, the reloads so far, and what keeps the files on disk
/// out of force, if something does.
fn status_line(status: &ReloadStatus) -> String {
    let reloads = match status.successes {
        1 => "reload",
        _ => "reloads",
    };
    let mut line = format!(
        "config generation {} in force ({} {reloads} applied, {} rejected)",
        status.generation, status.successes, status.failures
    );
    if let Some(error) = &status.last_error {
        // A status line is one line (the protocol's messages are newline-separated).
        let reason: String = error
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(MAX_REASON)
            .collect();
        line.push_str("; the files on disk are not: ");
        line.push_str(&reason);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_a_socket_by_path_or_by_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str().as_bytes(), "READY=1\n").unwrap();
        let name = format!("wsgate-test-notify-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let by_name = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        notify(format!("@{name}").as_bytes(), "STOPPING=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let n = by_name.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
        let missing = notify(dir.path().join("none").as_os_str().as_bytes(), "READY=1\n");
        assert!(missing.is_err());
    }

    #[test]
    fn the_status_line_is_one_line_naming_the_generation_and_what_keeps_the_files_out() {
        let mut status = ReloadStatus {
            generation: 3,
            successes: 2,
            failures: 1,
            ..ReloadStatus::default()
        };
        assert_eq!(
            status_line(&status),
            "config generation 3 in force (2 reloads applied, 1 rejected)"
        );
        let one = ReloadStatus {
            successes: 1,
            ..status.clone()
        };
        assert!(status_line(&one).contains("(1 reload applied, 1 rejected)"));
        status.last_error = Some(format!("w.toml:4:1: route\n  {}", "x".repeat(400)));
        let line = status_line(&status);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("; the files on disk are not: w.toml:4:1: route x"),
            "{line}"
        );
        assert!(line.len() < 300, "{line}");
    }
}
