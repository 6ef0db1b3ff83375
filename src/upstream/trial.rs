//! A least-connections tunnel's first second: whether its backend ended it at once. A
//! backend that answers the upgrade and then drops every tunnel (its process failing on each
//! WebSocket session) holds none open, so least-connections would send it every new client;
//! [`REFUSALS_IN_A_ROW`] such tunnels in a row put it aside, as refusing as many upgrades
//! does, and its 101s prove nothing meanwhile: it is back in turn once a tunnel takes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::dial;
use super::turns::put_aside_said;
use crate::health::{self, Health, REFUSALS_IN_A_ROW};
use crate::metrics::Metrics;
use crate::splice::{CloseReason, Outcome, Peer};

/// A tunnel ended by its backend within this of its 101, before the backend sent a byte,
/// ended at once. No WebSocket server ends a session that way: one closing it sends a close
/// frame; one refusing a client after the upgrade (a bad token in its first message) does too.
const AT_ONCE: Duration = Duration::from_secs(1);

/// What a least-connections tunnel needs to judge its backend when it ends.
pub(crate) struct Trial {
    health: Arc<Health>,
    /// The address, when the backend is a name of several: that address is set aside, not
    /// the name (one bad pod of a headless Service).
    addr: Option<SocketAddr>,
    cooldown: Duration,
    /// Whether the route has another backend to send requests to meanwhile.
    others: bool,
    /// When the try began and the 101 came, on [`health::now`]'s clock; and when the request
    /// was sent.
    began: u64,
    upgraded: u64,
    asked: tokio::time::Instant,
}

impl Trial {
    /// The trial of a tunnel to `backend` (at `addr`, one of a name's several) of `route`,
    /// whose try `began` and whose request was `asked`; none where nothing could be put
    /// aside (`cooldown` zero).
    pub(super) fn of(
        route: &crate::routes::Route,
        (backend, addr): (&str, Option<SocketAddr>),
        cooldown: Duration,
        (began, asked): (u64, tokio::time::Instant),
    ) -> Option<Box<Trial>> {
        let health = route.shared_health_of(backend)?.clone();
        (!cooldown.is_zero()).then(|| {
            Box::new(Trial {
                health,
                addr,
                cooldown,
                others: route.has_others(),
                began,
                upgraded: health::now(),
                asked,
            })
        })
    }

    /// Judges the backend by how the tunnel ended: `at` is the route's name and the backend.
    pub(crate) fn ended(self, outcome: &Outcome, at: (&str, &str), metrics: &Metrics) {
        let (route, backend) = at;
        let by_backend = matches!(
            outcome.reason,
            CloseReason::Closed(Peer::Backend) | CloseReason::Error(Peer::Backend, _)
        );
        let lasted = health::now().saturating_sub(self.upgraded) >= AT_ONCE.as_millis() as u64;
        if !by_backend || outcome.backend_to_client > 0 || lasted {
            if self.health.tunnel_took() {
                if self.health.answered() {
                    tracing::info!(route, backend, "backend's tunnels take again; back in turn");
                }
                if let Some(addr) = self.addr {
                    dial::answered(backend, addr);
                }
            }
            return;
        }
        let in_a_row = self.health.ended_at_once();
        if in_a_row < REFUSALS_IN_A_ROW {
            return;
        }
        let error = format!(
            "ended {in_a_row} tunnels in a row within {AT_ONCE:?} of their 101, before sending a byte"
        );
        if let Some(addr) = self.addr {
            dial::set_aside(backend, addr, self.cooldown, self.asked, &error);
        }
        // The name too once every address of it has failed, as for a failed answer.
        let name = self.addr.is_none() || crate::resolve::all_failed(backend);
        if name && self.others {
            let said = (metrics, &error as &dyn std::fmt::Display);
            put_aside_said(&self.health, at, self.cooldown, self.began, said);
        }
    }
}
