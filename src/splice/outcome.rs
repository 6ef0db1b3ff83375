//! What a finished tunnel reports to the rest of the crate (its access-log line, its
//! metrics): the bytes it moved each way, and how it ended and on whose side.

use std::fmt;
use std::io;

/// How a tunnel ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Both sides finished; the named one finished first.
    Closed(Peer),
    /// One side failed (reset, TLS error); the other was closed once what that side had sent
    /// was delivered.
    Error(Peer, io::ErrorKind),
    IdleTimeout,
    /// One direction was over, and the other side then sent nothing for the half-closed wait.
    HalfClosedTimeout,
    Shutdown,
    /// The client's certificate, checked again under rules a reload put in force
    /// (`tls.recheck_tunnels`), was refused.
    ClientCertificateRefused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Client,
    Backend,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |p: &Peer| match p {
            Peer::Client => "client",
            Peer::Backend => "backend",
        };
        match self {
            CloseReason::Closed(p) => write!(f, "{} closed", side(p)),
            CloseReason::Error(p, kind) => write!(f, "{} error: {kind}", side(p)),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HalfClosedTimeout => f.write_str("half-closed timeout"),
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::ClientCertificateRefused => {
                f.write_str("client certificate refused on recheck (tls.recheck_tunnels)")
            }
        }
    }
}

/// What a finished tunnel reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
    pub reason: CloseReason,
}
