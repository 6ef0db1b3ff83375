//! Tunnels whose client showed a certificate, checked again (`tls.recheck_tunnels`): when a
//! reload changes how client certificates are checked (`tls.client_ca`, `tls.client_auth`,
//! what `tls.client_crl`'s lists say), each such tunnel checks its client's certificate
//! against the new rules, and closes if they refuse it: a revoked device is cut off, not
//! left relaying until it hangs up.
//!
//! A tunnel looks at one atomic per wake-up and is woken once per change by a `Notify`, as
//! for the drain (`crate::drain`): a reload that changes nothing about clients wakes no one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use rustls_pki_types::CertificateDer;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::sync::lock;
use crate::tls::ClientCertVerifier;

/// The rules client certificates are checked against now, for the tunnels to check theirs.
pub(crate) struct Recheck {
    /// Bumped with each change of `rules`.
    epoch: AtomicU64,
    notify: Arc<Notify>,
    /// `None`: no client certificate is asked for any more, and none is refused.
    rules: Mutex<Option<Arc<dyn ClientCertVerifier>>>,
    /// The scope of the rules last published (`Snapshot::client_scope`), or of the config
    /// started with.
    published: AtomicU64,
}

impl Recheck {
    /// For a process started with client checks of scope `scope`: the tunnels it opens are
    /// checked under those until a change.
    pub(crate) fn starting(scope: u64) -> Recheck {
        Recheck {
            epoch: AtomicU64::new(0),
            notify: Arc::default(),
            rules: Mutex::new(None),
            published: AtomicU64::new(scope),
        }
    }

    /// Puts `rules` of scope `scope` in force for the tunnels, and wakes them to check their
    /// clients, if the rules last published (or started with) were of another scope. Against
    /// those rather than the config in force before: a reload that turned rechecks off, then
    /// one that turned them back on, may have changed the rules in between.
    pub(crate) fn publish(&self, scope: u64, rules: Option<Arc<dyn ClientCertVerifier>>) {
        if self.published.swap(scope, Ordering::AcqRel) == scope {
            return;
        }
        *lock(&self.rules) = rules;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// The rules' generation: read before the snapshot a request is routed by, it is one the
    /// request's checks saw (a publish follows its snapshot's swap).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the rules in force refuse `chain` (the client's certificate first).
    fn refuses(&self, chain: &[CertificateDer<'static>]) -> bool {
        let rules = lock(&self.rules).clone();
        rules.is_some_and(|rules| crate::client_cert::verify(chain, &*rules).is_err())
    }
}

/// One tunnel's client certificate, and what it has seen of [`Recheck`].
pub(crate) struct Watch {
    shared: Arc<Recheck>,
    chain: Vec<CertificateDer<'static>>,
    seen: u64,
    /// Registered for the next change; `None` until the first poll, and after a change.
    wakeup: Option<Pin<Box<OwnedNotified>>>,
}

impl Watch {
    /// A watch over `chain`, checked at each change of `shared` after epoch `seen`, the one
    /// its request was checked under ([`Recheck::epoch`]): a change while the backend was
    /// answering is checked at the tunnel's first poll.
    pub(crate) fn new(
        shared: &Arc<Recheck>,
        chain: Vec<CertificateDer<'static>>,
        seen: u64,
    ) -> Watch {
        Watch {
            seen,
            shared: shared.clone(),
            chain,
            wakeup: None,
        }
    }

    /// Whether rules put in force since the last look refuse the client; registers `cx` to
    /// be woken at the next change. As for the drain, the tunnel's one task polls it for the
    /// tunnel's whole life, so a registration holds until the change it waits for.
    pub(crate) fn poll_refused(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let epoch = self.shared.epoch();
            if epoch != self.seen {
                self.seen = epoch;
                self.wakeup = None;
                if self.shared.refuses(&self.chain) {
                    return true;
                }
            }
            if self.wakeup.is_some() {
                return false;
            }
            let mut notified = Box::pin(self.shared.notify.clone().notified_owned());
            let _ = notified.as_mut().poll(cx);
            self.wakeup = Some(notified);
            // A change between the look above and the registration is looked at now.
            if self.shared.epoch() == self.seen {
                return false;
            }
        }
    }
}
