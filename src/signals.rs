//! The process's signals: SIGHUP reloads (and never ends the process), SIGTERM, Ctrl-C and
//! SIGQUIT (nginx's graceful stop) shut down gracefully, a second one of those cuts the grace
//! short, and SIGUSR1 and SIGUSR2 (log reopening and binary upgrades elsewhere) are noted and
//! do nothing, rather than end the process as their default action would.

/// SIGHUP, once taken over: `None` where it cannot be (not Unix, or registration failed).
#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = Option<()>;

/// Sets SIGHUP, SIGUSR1 and SIGUSR2 aside (ignored) until wsgate takes them over ([`hangup`],
/// and the user signals once serving): the first thing `wsgate run` does, so that such a
/// signal in the moments before (a deploy hook's SIGHUP, a log-rotation job's `kill -USR1`
/// during a restart) is not the default action, which ends the process. Nothing is lost by
/// ignoring one then: the config has not been read yet, and start-up reads it.
///
/// It also unblocks every signal wsgate handles: a blocked mask survives `exec`, and a
/// launcher that blocked them (a multithreaded supervisor forking, a script's
/// `pthread_sigmask`) would leave SIGTERM and SIGHUP pending for ever, the process stoppable
/// only by SIGKILL, its tunnels cut without a drain. Go's runtime unblocks them likewise.
#[cfg(unix)]
pub fn ignore_until_taken_over() {
    const HANDLED: [libc::c_int; 6] = [
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
    ];
    // SAFETY: SIG_IGN installs no handler code, and this runs on the main thread before any
    // other thread exists (the threads started later inherit its mask); tokio's handlers,
    // installed later, replace the disposition. The set is initialised before it is used.
    unsafe {
        for signal in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(not(unix))]
pub fn ignore_until_taken_over() {}

/// SIGHUP, taken over from its default action (ending the process) from now on. Call it
/// before anything slow at start-up: a SIGHUP from a deploy hook during a restart must
/// reload, not end the process. Needs a running tokio runtime.
#[cfg(unix)]
pub fn hangup() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(
            |e| tracing::warn!(error = %e, "cannot take over SIGHUP; reload by file change only"),
        )
        .ok()
}

#[cfg(not(unix))]
pub fn hangup() -> Hangup {
    None
}

/// The next SIGHUP; never, where there is none.
pub(crate) async fn recv_hangup(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        return signal.recv().await;
    }
    let _ = hangup;
    std::future::pending().await
}

/// Serves until SIGTERM (Kubernetes, systemd), Ctrl-C or SIGQUIT, then shuts `server` down
/// gracefully; a second such signal during the grace closes the live tunnels at once, as
/// operators expect of Ctrl-C twice. `termination` is registered before the server starts
/// ([`Termination::register`]), so a signal sent as soon as the port answers drains rather
/// than kills. `started` runs first; systemd, if it started the process, is told it is ready
/// then, and stopping when the drain begins.
pub async fn serve_until_terminated(
    server: crate::Server,
    mut termination: Termination,
    started: impl FnOnce(),
) {
    started();
    ignore_user_signals();
    let systemd = crate::systemd::ready(server.reload_status());
    termination.recv().await;
    systemd.stopping();
    let closer = server.closer();
    // Polled first, so the shutdown's first line comes before a second signal's.
    let mut shutdown = Box::pin(server.shutdown());
    tokio::select! {
        biased;
        () = &mut shutdown => return,
        () = termination.recv() => {
            tracing::warn!("second signal: closing every connection now");
            closer.close_now();
        }
    }
    shutdown.await;
}

/// SIGTERM, SIGINT and SIGQUIT, registered once so that a second one sent after the first
/// is seen, however soon after it is handled. (Not one sent before the first is handled: the
/// kernel keeps one pending signal of each kind, so two `kill -TERM` back to back, within
/// microseconds, are one; a SIGINT behind a SIGTERM is not merged.)
pub struct Termination {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    quit: Option<tokio::signal::unix::Signal>,
}

impl Termination {
    /// Takes the signals over from their default action (ending the process at once): call
    /// it before the server starts listening. Needs a running tokio runtime.
    pub fn register() -> Termination {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Each one that cannot be registered is said, and the other still works: losing
            // SIGTERM silently would turn every rollout into a hard kill.
            let register = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| tracing::warn!(error = %e, "cannot handle {name}; it ends the process at once"))
                    .ok()
            };
            Termination {
                term: register(SignalKind::terminate(), "SIGTERM"),
                int: register(SignalKind::interrupt(), "SIGINT"),
                quit: register(SignalKind::quit(), "SIGQUIT"),
            }
        }
        #[cfg(not(unix))]
        Termination {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = next(&mut self.term) => {}
                Some(()) = next(&mut self.int) => {}
                Some(()) = next(&mut self.quit) => {}
                // Both streams ended (the runtime's signal driver is gone): no signal will come.
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGUSR1 and SIGUSR2, noted and otherwise ignored: a log-rotation job's `kill -USR1` (nginx
/// reopens its log files on it) must not end a proxy that logs to stderr, and has no files to
/// reopen.
fn ignore_user_signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        for (kind, name) in [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ] {
            let mut signal = match signal(kind) {
                Ok(signal) => signal,
                Err(error) => {
                    // Ignored since start-up (see `ignore_until_taken_over`): it stays so.
                    tracing::warn!(%error, "cannot take over {name}; it is ignored, without a line");
                    continue;
                }
            };
            tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    tracing::info!("{name}: nothing to do (logs go to stderr; SIGHUP reloads)");
                }
            });
        }
    }
}

/// The next delivery of `signal`; never, if it is not registered.
#[cfg(unix)]
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}
