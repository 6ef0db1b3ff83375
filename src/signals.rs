//! The process's signals: SIGHUP reloads (and never ends the process), SIGTERM and Ctrl-C
//! shut down gracefully, a second one of those cuts the grace short.

/// SIGHUP, once taken over: `None` where it cannot be (not Unix, or registration failed).
#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = Option<()>;

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

/// Serves until SIGTERM (Kubernetes, systemd) or Ctrl-C, then shuts `server` down
/// gracefully; a second such signal during the grace closes the live tunnels at once, as
/// operators expect of Ctrl-C twice. `started` runs once the signals are registered; systemd,
/// if it started the process, is told it is ready then, and stopping when the drain begins.
pub async fn serve_until_terminated(server: crate::Server, started: impl FnOnce()) {
    let mut termination = Termination::register();
    started();
    let systemd = crate::systemd::ready(server.reload_status());
    termination.recv().await;
    systemd.stopping();
    let closer = server.closer();
    tokio::spawn(async move {
        termination.recv().await;
        tracing::warn!("second signal: closing every connection now");
        closer.close_now();
    });
    server.shutdown().await;
}

/// SIGTERM and SIGINT, registered once so that a second one sent right after the first is
/// not missed.
struct Termination {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Termination {
    fn register() -> Termination {
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
                // Both streams ended (the runtime's signal driver is gone): no signal will come.
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
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
