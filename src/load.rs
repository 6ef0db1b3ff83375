//! How many connections each of a route's backends has open now: its tunnels, and the
//! upgrades under way to it (from the connect on). What `balance = "least_connections"`
//! picks by, and what `wsgate_backend_connections_open` shows.
//!
//! A count is shared, not copied, by the route of the same name in the next config (see
//! `RouteTable::continue_from`): a tunnel opened before a reload still counts, and still
//! leaves, in the count its route's requests read after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One backend's open connections, in one route.
#[derive(Default)]
pub(crate) struct Load(AtomicUsize);

impl Load {
    pub(crate) fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connection counted in its backend's [`Load`], until dropped: when its connect fails,
/// its upgrade is refused, or its tunnel ends.
pub(crate) struct Busy(Arc<Load>);

impl Busy {
    pub(crate) fn on(load: &Arc<Load>) -> Busy {
        load.0.fetch_add(1, Ordering::Relaxed);
        Busy(load.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_counts_until_it_is_dropped() {
        let load = Arc::new(Load::default());
        let first = Busy::on(&load);
        let second = Busy::on(&load);
        assert_eq!(load.now(), 2);
        drop(first);
        assert_eq!(load.now(), 1);
        drop(second);
        assert_eq!(load.now(), 0);
    }
}
