//! How many connections each backend has open now: its tunnels, and the upgrades under way
//! to it (from the connect on), from every route that names it. What `balance =
//! "least_connections"` picks by, and what `wsgate_backend_connections_open` shows.
//!
//! One count per backend, as written, in [`Loads`]: shared by every route naming it (a
//! backend's load is what all of them send it; with thousands of per-tenant routes over a
//! few backends, each route's own share would be too small to tell them apart), and by the
//! configs before and after a reload, so a tunnel opened under one config still counts,
//! and still leaves, in the count the next one reads, even across a reload that dropped its
//! backend for a while. Each connection is also counted at the address it went to: what a
//! least-connections route picks by among a name's several addresses (a headless Service's
//! pods).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::sync::lock;

/// One backend's open connections.
#[derive(Debug, Default)]
pub(crate) struct Load(AtomicUsize);

impl Load {
    pub(crate) fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connection counted in its backend's [`Load`], until dropped: when its connect fails,
/// its upgrade is refused, or its tunnel ends.
#[derive(Debug)]
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

/// Every backend's [`Load`] that a route table or a connection still holds, by backend as
/// written; and every address's that a connection holds.
#[derive(Default)]
pub(crate) struct Loads(Mutex<Counts>);

#[derive(Default)]
struct Counts {
    backends: Held<String>,
    addresses: Held<SocketAddr>,
}

/// Counts by key, let go once nothing holds them.
struct Held<K> {
    counts: HashMap<K, Weak<Load>>,
    /// Entries after the last sweep of those let go: the next comes at twice as many, so a
    /// name's addresses churning (pods replaced) cannot grow the map without bound, at a cost
    /// per insert that stays constant.
    swept: usize,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Held {
            counts: HashMap::new(),
            swept: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Held<K> {
    fn of<Q>(&mut self, key: &Q) -> Arc<Load>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(load) = self.counts.get(key).and_then(Weak::upgrade) {
            return load;
        }
        if self.counts.len() >= (2 * self.swept).max(64) {
            self.sweep();
        }
        let load = Arc::new(Load::default());
        self.counts.insert(key.to_owned(), Arc::downgrade(&load));
        load
    }

    fn now<Q>(&self, key: &Q) -> usize
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        (self.counts.get(key).and_then(Weak::upgrade)).map_or(0, |load| load.now())
    }

    fn sweep(&mut self) {
        self.counts.retain(|_, load| load.strong_count() > 0);
        self.swept = self.counts.len();
    }

    /// Each key something still holds, with its count.
    fn open(&mut self) -> Vec<(K, usize)>
    where
        K: Clone,
    {
        self.sweep();
        let each = self.counts.iter();
        (each.filter_map(|(key, load)| Some((key.clone(), load.upgrade()?.now())))).collect()
    }
}

impl Loads {
    pub(crate) fn lock(&self) -> Registry<'_> {
        Registry(lock(&self.0))
    }

    /// Each backend that has a count now (configured, or with connections left from a config
    /// before), with its open connections, in no particular order.
    pub(crate) fn open(&self) -> Vec<(String, usize)> {
        self.lock().0.backends.open()
    }

    /// Each address that has a count now (a connection to it open), with its open
    /// connections, in no particular order.
    pub(crate) fn open_at(&self) -> Vec<(SocketAddr, usize)> {
        self.lock().0.addresses.open()
    }
}

/// [`Loads`], locked.
pub(crate) struct Registry<'a>(std::sync::MutexGuard<'a, Counts>);

impl Registry<'_> {
    /// `backend`'s count: the one it has, or a new one.
    pub(crate) fn of(&mut self, backend: &str) -> Arc<Load> {
        self.0.backends.of(backend)
    }

    /// The count of `addr`, an address a connection went to: the one it has, or a new one.
    pub(crate) fn at(&mut self, addr: SocketAddr) -> Arc<Load> {
        self.0.addresses.of(&addr)
    }

    /// The connections open to `addr` (0 for one that has none).
    pub(crate) fn now_at(&self, addr: SocketAddr) -> usize {
        self.0.addresses.now(&addr)
    }

    /// Lets go of the counts nothing holds any more.
    pub(crate) fn sweep(&mut self) {
        self.0.backends.sweep();
        self.0.addresses.sweep();
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

    #[test]
    fn a_backend_keeps_its_count_while_anything_holds_it() {
        let loads = Loads::default();
        let held = loads.lock().of("a:1");
        let tunnel = Busy::on(&held);
        assert!(Arc::ptr_eq(&held, &loads.lock().of("a:1")));
        // Its table gone (a reload dropped the backend), its tunnel still counts in it.
        drop(held);
        assert_eq!(loads.open(), [("a:1".to_string(), 1)]);
        let again = loads.lock().of("a:1");
        assert_eq!(again.now(), 1, "listed again: its tunnel is still counted");
        drop((again, tunnel));
        assert!(loads.open().is_empty(), "let go once nothing holds it");
        assert_eq!(loads.lock().of("a:1").now(), 0);
    }
}
