//! The drain: the one signal that ends every live tunnel and every connection still waiting
//! for its answer, when the shutdown grace is over.
//!
//! A tunnel checks it with one atomic load per wake-up and is woken once by the `Notify`:
//! tokio-util's `CancellationToken` costs a mutex on every poll, which showed up in the
//! per-message profile.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Context;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// The end of the service: once started, every live tunnel closes, and every connection not
/// yet answered gives up (at the end of the shutdown grace, or by [`crate::Closer`]).
#[derive(Debug, Default)]
pub(crate) struct Drain {
    started: AtomicBool,
    notify: Arc<Notify>,
}

impl Drain {
    pub(crate) fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Resolves once [`Drain::start`] has been called.
    pub(crate) async fn started(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a start() in between is not missed.
            notified.as_mut().enable();
            if self.is_started() {
                return;
            }
            notified.await;
        }
    }

    /// Whether draining started; the first call registers `cx` to be woken when it does.
    /// Only the first: polling the registration again on every poll of a busy tunnel would
    /// cost a lock each time, so the caller must be polled by one task for its whole life
    /// (a tunnel is: it is its connection's task), or the wake-up goes to a task no longer
    /// polling it.
    pub(crate) fn poll_started(
        &self,
        wakeup: &mut Option<Pin<Box<OwnedNotified>>>,
        cx: &mut Context<'_>,
    ) -> bool {
        if self.is_started() {
            return true;
        }
        if wakeup.is_none() {
            let mut notified = Box::pin(self.notify.clone().notified_owned());
            let _ = notified.as_mut().poll(cx);
            *wakeup = Some(notified);
            // A start() between the check above and the registration would be missed.
            return self.is_started();
        }
        false
    }
}
