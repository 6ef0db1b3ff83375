//! The connection limits: `max_connections` over all clients, `max_connections_per_client`
//! for one client, and the small budget of connections past them that still get a polite
//! refusal (503 or 429) instead of a close.
//!
//! A connection holds its places through guards that move with it into its tunnel, so a
//! tunnel counts for its whole life and every exit path gives its places back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Connections past a limit that still get their refusal (TLS, then the answer). Past this
/// many at once they are closed right away, so overload cannot turn the refusals themselves
/// into unbounded handshake work.
const MAX_REFUSING: usize = 256;

/// The counts the limits are held to.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Connections counted in `max_connections`.
    active: AtomicUsize,
    /// Connections past a limit, waiting for their refusal.
    refusing: AtomicUsize,
    /// Open connections per client key (see [`client_key`]), counted with or without a
    /// per-client limit: one set by a reload counts the connections already open.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Connections ended since start, refused ones included.
    ended: AtomicU64,
}

impl Counts {
    /// Open client connections, tunnels included: what `max_connections` limits.
    pub(crate) fn open(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Connections `client` holds in its per-client count (those over its limit not among
    /// them).
    pub(crate) fn of_client(&self, client: IpAddr) -> usize {
        let open = lock(&self.per_client);
        open.get(&client_key(client)).copied().unwrap_or(0)
    }

    /// Connections ended since start, refused ones included.
    pub(crate) fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// A place in the refusal budget, if one is left.
    fn take_refusal(&self) -> bool {
        take_below(&self.refusing, MAX_REFUSING)
    }
}

/// Adds one to `counter` if it is below `max`. Compared and added in one step: adding first
/// and taking it back when over would let two connections arriving together at the limit
/// both see the other's passing count, and both be refused with a place still free.
fn take_below(counter: &AtomicUsize, max: usize) -> bool {
    (counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    }))
    .is_ok()
}

/// The limit a connection is over: its only answer is that limit's refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Over {
    /// `max_connections`: 503.
    Connections,
    /// `max_connections_per_client`: 429.
    Client,
}

/// The connection could not even be given its refusal: close it. The limit it was over.
#[derive(Debug)]
pub(crate) struct BudgetExhausted(pub(crate) Over);

/// Counts one open client connection (tunnel included) until dropped: in `max_connections`,
/// or, for a connection over a limit, in the refusal budget.
pub(crate) struct ConnGuard {
    counts: Arc<Counts>,
    over: Option<Over>,
    /// The client's place, when the client was known at accept (see [`ConnGuard::for_client`]).
    /// Boxed: taken out when the connection settles its client (and held elsewhere), the
    /// field stays in the connection for its life, a tunnel's included.
    early: Option<Box<ClientSlot>>,
}

impl ConnGuard {
    /// A place for a connection just accepted, beyond `max` one in the refusal budget.
    pub(crate) fn new(counts: &Arc<Counts>, max: usize) -> Result<ConnGuard, BudgetExhausted> {
        let mut over = None;
        if !take_below(&counts.active, max) {
            if !counts.take_refusal() {
                return Err(BudgetExhausted(Over::Connections));
            }
            over = Some(Over::Connections);
        }
        Ok(ConnGuard {
            counts: counts.clone(),
            over,
            early: None,
        })
    }

    /// A place for a connection just accepted from `client`, known at accept (no PROXY header
    /// to wait for), within its client's limit (`per_client`) first: one over it never holds
    /// a place in `max` (`max_connections`), not even until its task runs, when a burst of
    /// accepts from one client would crowd everyone else out meanwhile.
    pub(crate) fn for_client(
        counts: &Arc<Counts>,
        max: usize,
        client: IpAddr,
        per_client: Option<usize>,
    ) -> Result<ConnGuard, BudgetExhausted> {
        let Some(slot) = ClientSlot::take(counts, client, per_client.unwrap_or(usize::MAX)) else {
            if !counts.take_refusal() {
                return Err(BudgetExhausted(Over::Client));
            }
            return Ok(ConnGuard {
                counts: counts.clone(),
                over: Some(Over::Client),
                early: None,
            });
        };
        // Over `max`, it gets its 503 and holds no place of its client's: the slot goes.
        let mut guard = ConnGuard::new(counts, max)?;
        if guard.over.is_none() {
            guard.early = Some(Box::new(slot));
        }
        Ok(guard)
    }

    /// The limit this connection is over, if any.
    pub(crate) fn over(&self) -> Option<Over> {
        self.over
    }

    /// The connection's place among its `client`'s connections, within the per-client limit
    /// (`max`) if one is set: taken as soon as the client is known, before TLS, so connections
    /// still in their handshake count too. One over the client's limit leaves
    /// `max_connections` for the refusal budget, so a client's excess cannot crowd out
    /// everyone else's connections. A connection already over the global limit gets its 503
    /// and takes no client place.
    pub(crate) fn client_slot(
        &mut self,
        client: IpAddr,
        max: Option<usize>,
    ) -> Result<Option<ClientSlot>, BudgetExhausted> {
        if self.over.is_some() {
            return Ok(None);
        }
        // Taken at accept for the same client (a reload turning the PROXY protocol on since
        // then makes the header's address the client: the socket's place is given back).
        if let Some(early) = self.early.take() {
            if early.key == client_key(client) {
                return Ok(Some(*early));
            }
        }
        let max = max.unwrap_or(usize::MAX);
        if let Some(slot) = ClientSlot::take(&self.counts, client, max) {
            return Ok(Some(slot));
        }
        if !self.counts.take_refusal() {
            return Err(BudgetExhausted(Over::Client));
        }
        self.counts.active.fetch_sub(1, Ordering::AcqRel);
        self.over = Some(Over::Client);
        Ok(None)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let counter = match self.over {
            Some(_) => &self.counts.refusing,
            None => &self.counts.active,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
        self.counts.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one connection against its client's share of `max_connections_per_client` until
/// dropped; it moves into the tunnel with the connection.
pub(crate) struct ClientSlot {
    counts: Arc<Counts>,
    key: IpAddr,
}

impl ClientSlot {
    /// A slot for `client`, or `None` if it already holds `max` connections.
    fn take(counts: &Arc<Counts>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut open = lock(&counts.per_client);
        let open = open.entry(key).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.per_client);
        if let Some(open) = counts.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                // Only clients with open connections take memory.
                counts.remove(&self.key);
            }
        }
    }
}

/// Whom a per-client limit counts: an IPv4 address, or an IPv6 /64, the block one subscriber
/// (and one attacker) gets, so rotating through a prefix gains nothing.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn past_the_limit_a_connection_takes_a_refusal_place_until_none_is_left() {
        let counts = Arc::new(Counts::default());
        let first = ConnGuard::new(&counts, 1).unwrap();
        assert_eq!(first.over(), None);
        let refused: Vec<_> = (0..MAX_REFUSING)
            .map(|_| ConnGuard::new(&counts, 1).unwrap())
            .collect();
        assert!(refused.iter().all(|g| g.over() == Some(Over::Connections)));
        assert!(ConnGuard::new(&counts, 1).is_err());
        assert_eq!(counts.open(), 1);
        drop(refused);
        assert!(ConnGuard::new(&counts, 1).is_ok());
        drop(first);
        assert_eq!(counts.open(), 0);
    }

    #[test]
    fn a_connection_over_its_clients_limit_leaves_max_connections() {
        let counts = Arc::new(Counts::default());
        let mut a = ConnGuard::new(&counts, 10).unwrap();
        let slot = a.client_slot(ip("192.0.2.1"), Some(1)).unwrap();
        assert!(slot.is_some());
        let mut b = ConnGuard::new(&counts, 10).unwrap();
        assert!(b.client_slot(ip("192.0.2.1"), Some(1)).unwrap().is_none());
        assert_eq!(b.over(), Some(Over::Client));
        assert_eq!(counts.open(), 1);
        // Another client, and the same client once its first connection is gone.
        let mut c = ConnGuard::new(&counts, 10).unwrap();
        let c_slot = c.client_slot(ip("192.0.2.2"), Some(1)).unwrap();
        assert!(c_slot.is_some());
        drop((a, slot, b));
        let mut d = ConnGuard::new(&counts, 10).unwrap();
        let d_slot = d.client_slot(ip("192.0.2.1"), Some(1)).unwrap();
        assert!(d_slot.is_some());
        assert_eq!(lock(&counts.per_client).len(), 2);
        assert_eq!(counts.refusing.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_connection_over_the_global_limit_takes_no_client_place() {
        let counts = Arc::new(Counts::default());
        let _held = ConnGuard::new(&counts, 1).unwrap();
        let mut over = ConnGuard::new(&counts, 1).unwrap();
        assert!(over
            .client_slot(ip("192.0.2.1"), Some(1))
            .unwrap()
            .is_none());
        assert_eq!(over.over(), Some(Over::Connections));
        assert!(lock(&counts.per_client).is_empty());
    }

    /// Known at accept, the client's limit comes first: a burst from one client takes no place
    /// in `max_connections` beyond its own, whenever its tasks get to run.
    #[test]
    fn a_client_known_at_accept_is_held_to_its_limit_before_max_connections() {
        let counts = Arc::new(Counts::default());
        let a = ip("192.0.2.1");
        let mut first = ConnGuard::for_client(&counts, 2, a, Some(1)).unwrap();
        let burst: Vec<_> = (0..10)
            .map(|_| ConnGuard::for_client(&counts, 2, a, Some(1)).unwrap())
            .collect();
        assert!(burst.iter().all(|g| g.over() == Some(Over::Client)));
        assert_eq!(
            counts.open(),
            1,
            "the burst holds no place in max_connections"
        );
        // Another client still gets the last place.
        let b = ConnGuard::for_client(&counts, 2, ip("192.0.2.2"), Some(1)).unwrap();
        assert_eq!(b.over(), None);
        // The place taken at accept is the one the connection goes on with.
        let slot = first.client_slot(a, Some(1)).unwrap();
        assert!(slot.is_some());
        assert_eq!(counts.of_client(a), 1);
        // Over max_connections, a connection holds no place of its client's.
        let c = ip("192.0.2.3");
        let full = ConnGuard::for_client(&counts, 2, c, Some(1)).unwrap();
        assert_eq!(full.over(), Some(Over::Connections));
        assert_eq!(counts.of_client(c), 0);
    }

    /// A reload turning the PROXY protocol on between accept and the header: the client is
    /// the header's, and the socket peer's place is given back.
    #[test]
    fn a_place_taken_at_accept_for_another_address_is_given_back() {
        let counts = Arc::new(Counts::default());
        let mut guard = ConnGuard::for_client(&counts, 10, ip("10.0.0.1"), None).unwrap();
        assert_eq!(counts.of_client(ip("10.0.0.1")), 1);
        let slot = guard.client_slot(ip("203.0.113.7"), Some(1)).unwrap();
        assert!(slot.is_some());
        assert_eq!(counts.of_client(ip("10.0.0.1")), 0);
        assert_eq!(counts.of_client(ip("203.0.113.7")), 1);
    }

    #[test]
    fn connections_count_for_their_client_before_any_limit_is_set() {
        // A limit set by a reload holds the connections opened without one.
        let counts = Arc::new(Counts::default());
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut guard = ConnGuard::new(&counts, 10).unwrap();
            let slot = guard.client_slot(ip("192.0.2.1"), None).unwrap();
            assert!(slot.is_some());
            open.push((guard, slot));
        }
        let mut next = ConnGuard::new(&counts, 10).unwrap();
        assert!(next
            .client_slot(ip("192.0.2.1"), Some(2))
            .unwrap()
            .is_none());
        assert_eq!(next.over(), Some(Over::Client));
        drop(open);
        assert!(lock(&counts.per_client).is_empty());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
