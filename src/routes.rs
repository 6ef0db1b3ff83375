//! The routing table: which route serves a (Host, path, offered subprotocols) triple. Pure, no
//! I/O, built once per config.
//!
//! Lookups are hash probes, never a scan of all routes: by exact host, by the host's wildcard
//! suffixes, then host-less routes; within each, by each of the path's segment prefixes
//! (longest first, and none deeper than the deepest route path there). So a lookup costs
//! O(wildcard depth × route depth) whatever the number of routes or the request's Host and
//! path. The probe order *is* the ranking: exact host, wildcard, no host; then longest path
//! prefix; then file order (the wildcard suffixes a host matches rank as one:
//! `*.b.example.com` and `*.example.com` are both "wildcard").

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Balance, HostPattern, RouteConfig};
use crate::health::{self, Health, Leave};
use crate::load::{Busy, Load, Loads};
use crate::path::{read_path, Read};
use crate::tls::BackendTls;

#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, Paths>,
    /// Keyed by suffix with its leading dot: ".example.com".
    wildcard: HashMap<String, Paths>,
    /// The most labels of any wildcard suffix: a host's longer suffixes match none, so a Host
    /// of thousands of labels costs as many probes as the wildcards are deep.
    wildcard_labels: usize,
    any_host: Paths,
}

/// Path prefix → indices into `routes`, in file order.
#[derive(Default)]
struct Paths {
    routes: HashMap<String, Vec<usize>>,
    /// The most segments of any key: a deeper prefix of a request's path matches none, so a
    /// path of thousands of segments costs as many probes as the routes are deep.
    depth: usize,
}

impl Paths {
    fn add(&mut self, key: String, index: usize) {
        self.depth = self.depth.max(depth(&key));
        self.routes.entry(key).or_default().push(index);
    }
}

pub struct Route {
    pub config: Arc<RouteConfig>,
    next_backend: AtomicUsize,
    /// Each of `config.backends`' health, in the same order: a backend listed twice shares
    /// one (the first place's), so it is put aside in both places.
    health: Box<[Arc<Health>]>,
    /// Each of `config.backends`' open connections, in the same order, shared the same way.
    load: Box<[Arc<Load>]>,
    /// TLS to the backends, for a route with `backend_tls`.
    pub(crate) backend_tls: Option<Arc<BackendTls>>,
}

/// A `T` (a health, a load) for each of `backends`, one shared by the places of a backend
/// listed twice.
fn per_backend<T: Default>(backends: &[String]) -> Box<[Arc<T>]> {
    // By name, not by a search of the list for each: a route may list thousands.
    let mut first: HashMap<&str, Arc<T>> = HashMap::with_capacity(backends.len());
    let each = backends.iter().map(|backend| {
        let shared = first.entry(backend.as_str()).or_default();
        Arc::clone(shared)
    });
    each.collect()
}

/// Where a round-robin walk starts for the request of turn `turn`: its place among the
/// backends up (or among them all, when every one is aside). The counter wraps (after 2^64
/// requests); the sums must not overflow.
fn round_robin_start(turn: usize, n: usize, aside: u128) -> usize {
    let up = n - (aside.count_ones() as usize).min(n);
    match up {
        0 => turn % n.max(1),
        up => (0..n)
            .filter(|&i| !is_set(aside, i))
            .nth(turn % up)
            .unwrap_or(0),
    }
}

/// How many of a route's backends can be put aside (the bits of `aside` in
/// [`Order::Walk`]): any after these are always taken as up.
const TRACKED: usize = 128;

fn is_set(bits: u128, i: usize) -> bool {
    i < TRACKED && bits & (1 << i) != 0
}

/// A route's backends in the order one request tries them (see [`Route::backends_in_turn`]).
pub(crate) struct InTurn<'a> {
    backends: &'a [String],
    order: Order,
    left: usize,
}

/// How [`InTurn`] goes through the backends.
enum Order {
    /// Round-robin: a walk round the list from `start` taking those up, then another taking
    /// those put aside. No allocation: this runs for every upgrade.
    Walk {
        start: usize,
        /// Bit `i`: backend `i` is put aside.
        aside: u128,
        /// Steps taken in the two walks (`0..2n`).
        step: usize,
    },
    /// Least connections: the indices, in order.
    Sorted(std::vec::IntoIter<usize>),
}

impl<'a> Iterator for InTurn<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let n = self.backends.len();
        let i = match &mut self.order {
            Order::Sorted(order) => order.next()?,
            Order::Walk { start, aside, step } => loop {
                if *step >= 2 * n {
                    return None;
                }
                let i = (*start + *step % n) % n;
                let first_walk = *step < n;
                *step += 1;
                if first_walk != is_set(*aside, i) {
                    break i;
                }
            },
        };
        self.left = self.left.saturating_sub(1);
        self.backends.get(i).map(String::as_str)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for InTurn<'_> {}

/// The outcome of a lookup.
pub enum Selection<'a> {
    /// No route's host and path match: 404.
    NoRoute,
    /// Some routes match by host and path, but none accepts the offered subprotocols: 400,
    /// in the name of `first`, the best-ranked of them.
    NoProtocolFits { first: &'a Route },
    Matched {
        route: &'a Route,
        /// The offered subprotocols to forward, in the client's order.
        protocols: Vec<&'a str>,
    },
}

impl Route {
    /// The backends in the order to try them for one request: those up first, then those put
    /// aside (see [`health`]), so a refused connect moves on to the next backend and a request
    /// is never refused without trying them all. Among each, from the next round-robin
    /// position, wrapping around; or, with `balance = "least_connections"`, the fewest open
    /// connections first, ties from that position. The position counts the backends that are
    /// up, so they share the load evenly: a backend put aside does not hand its share to the
    /// one after it.
    pub(crate) fn backends_in_turn(&self) -> InTurn<'_> {
        let backends = &self.config.backends;
        let turn = self.next_backend.fetch_add(1, Ordering::Relaxed);
        let now = health::now();
        let aside = (self.health.iter().take(TRACKED).enumerate())
            .filter(|(_, h)| !h.is_up(now))
            .fold(0u128, |aside, (i, _)| aside | 1 << i);
        let n = backends.len();
        let order = match self.config.balance {
            Balance::RoundRobin => Order::Walk {
                start: round_robin_start(turn, n, aside),
                aside,
                step: 0,
            },
            Balance::LeastConnections => Order::Sorted(self.least_loaded(turn, aside)),
        };
        InTurn {
            backends,
            order,
            left: n,
        }
    }

    /// The backends' indices, those up first, each part by its open connections, fewest
    /// first, ties in turn from `turn`'s round-robin position (among those up, so that a
    /// backend put aside does not hand its share of the ties to the one after it). Each
    /// count read once: they move as this runs.
    fn least_loaded(&self, turn: usize, aside: u128) -> std::vec::IntoIter<usize> {
        let n = self.config.backends.len();
        if n == 0 {
            return Vec::new().into_iter();
        }
        let start = round_robin_start(turn, n, aside);
        let mut keyed: Vec<(bool, usize, usize)> = (self.load.iter().enumerate())
            .map(|(i, load)| (is_set(aside, i), load.now(), (i + n - start) % n))
            .collect();
        keyed.sort_unstable();
        let order: Vec<usize> = (keyed.into_iter())
            .map(|(_, _, from_start)| (from_start + start) % n)
            .collect();
        order.into_iter()
    }

    /// Whether a request whose turn `backend` is may try it now, and its leave to (see
    /// [`Health::leave`]).
    pub(crate) fn leave(&self, backend: &str) -> Option<Leave<'_>> {
        match self.health_of(backend) {
            Some(health) => health.leave(),
            None => Some(Leave::default()),
        }
    }

    /// The health of `backend`, one of this route's (the first, if listed twice).
    pub(crate) fn health_of(&self, backend: &str) -> Option<&Health> {
        self.shared_health_of(backend).map(|health| &**health)
    }

    fn shared_health_of(&self, backend: &str) -> Option<&Arc<Health>> {
        let index = self.config.backends.iter().position(|b| b == backend)?;
        self.health.get(index)
    }

    fn load_of(&self, backend: &str) -> Option<&Arc<Load>> {
        let index = self.config.backends.iter().position(|b| b == backend)?;
        self.load.get(index)
    }

    /// A connection to `backend`, one of this route's, counted open until dropped (in no
    /// count, for a backend not of this route).
    pub(crate) fn busy(&self, backend: &str) -> Busy {
        (self.load_of(backend)).map_or_else(|| Busy::on(&Arc::default()), Busy::on)
    }

    /// Whether requests have other backends to go to while one of them is put aside.
    pub(crate) fn has_others(&self) -> bool {
        let backends = &self.config.backends;
        backends.iter().any(|b| *b != backends[0])
    }

    /// The offered protocols this route allows, in the client's order; `None` if the route has
    /// an allow-list and nothing offered is on it. Without a list the offer passes unchanged.
    fn fit_protocols<'a>(&self, offered: &[&'a str]) -> Option<Vec<&'a str>> {
        let Some(allowed) = &self.config.subprotocols else {
            return Some(offered.to_vec());
        };
        let kept: Vec<&str> = offered
            .iter()
            .copied()
            .filter(|p| allowed.iter().any(|a| a == p))
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    /// Browsers always send Origin, so an allow-list stops cross-site pages; a request without
    /// Origin (not a browser) passes.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        match (&self.config.origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(origin)) => {
                // One trailing `/` (some clients send "https://host/"), not any number.
                let origin = origin.trim();
                let origin = origin.strip_suffix('/').unwrap_or(origin);
                list.iter().any(|o| o.eq_ignore_ascii_case(origin))
            }
        }
    }
}

impl RouteTable {
    pub fn new(configs: &[Arc<RouteConfig>]) -> RouteTable {
        RouteTable::with_backend_tls(configs, Vec::new())
    }

    /// Frees the table a batch at a time (see [`crate::memory::drop_gradually`]).
    pub(crate) async fn drop_gradually(self) {
        use crate::memory::drop_gradually;
        drop_gradually(self.routes.into_iter()).await;
        drop_gradually(self.exact.into_iter()).await;
        drop_gradually(self.wildcard.into_iter()).await;
        drop_gradually(self.any_host.routes.into_iter()).await;
    }

    /// [`RouteTable::new`], each route with its backends' TLS (`backend_tls[i]` for the
    /// `i`th; missing ones plain), built by [`crate::tls::backend_clients`].
    pub(crate) fn with_backend_tls(
        configs: &[Arc<RouteConfig>],
        backend_tls: Vec<Option<Arc<BackendTls>>>,
    ) -> RouteTable {
        let mut backend_tls = backend_tls.into_iter();
        let mut table = RouteTable {
            routes: Vec::with_capacity(configs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            wildcard_labels: 0,
            any_host: Paths::default(),
        };
        for (index, config) in configs.iter().enumerate() {
            let paths = match &config.host {
                Some(HostPattern::Exact(h)) => table.exact.entry(h.clone()).or_default(),
                Some(HostPattern::Wildcard(s)) => {
                    let labels = s.matches('.').count();
                    table.wildcard_labels = table.wildcard_labels.max(labels);
                    table.wildcard.entry(s.clone()).or_default()
                }
                None => &mut table.any_host,
            };
            paths.add(route_key(&config.path), index);
            table.routes.push(Route {
                config: config.clone(),
                next_backend: AtomicUsize::new(0),
                health: per_backend(&config.backends),
                load: per_backend(&config.backends),
                backend_tls: backend_tls.next().flatten(),
            });
        }
        table
    }

    /// Counts each route's connections to a backend in the backend's count in `loads`,
    /// shared by every route naming it and by the tables before and after this one (see
    /// [`crate::load`]). Before the table goes into force.
    pub(crate) fn count_in(&mut self, loads: &Loads) {
        loads.lock().sweep();
        for route in &mut self.routes {
            // Locked route by route, not for the whole table: every connect takes the lock
            // to count at its address, and must not wait out tens of thousands of routes.
            let mut loads = loads.lock();
            for (backend, load) in route.config.backends.iter().zip(route.load.iter_mut()) {
                *load = loads.of(backend);
            }
        }
    }

    /// Continues each route's backend rotation where the route of the same name in `old` (the
    /// table in force) has it: frequent reloads (a Kubernetes sync loop) must not skew the
    /// spread by restarting every rotation. With `keep_health`, its backends share their
    /// health with `old`'s, by name: one put aside stays aside, and what requests still on
    /// `old` learn (a failure, an answer) while this table is bound and swapped in, or after,
    /// is this table's too (without, putting aside is off: all start afresh, as do the
    /// backends of a route whose `balance` changed).
    pub(crate) fn continue_from(&mut self, old: &RouteTable, keep_health: bool) {
        let routes: HashMap<&str, &Route> = (old.routes.iter())
            .map(|r| (r.config.name.as_str(), r))
            .collect();
        for route in &mut self.routes {
            let Some(old) = routes.get(route.config.name.as_str()) else {
                continue;
            };
            let at = old.next_backend.load(Ordering::Relaxed);
            route.next_backend.store(at, Ordering::Relaxed);
            // Another balance judges its backends by other rules (a refusal streak counts
            // with least-connections only): start afresh.
            if !keep_health || old.config.balance != route.config.balance {
                continue;
            }
            let backends = route.config.backends.iter();
            for (backend, health) in backends.zip(route.health.iter_mut()) {
                if let Some(was) = old.shared_health_of(backend) {
                    *health = was.clone();
                }
            }
        }
    }

    /// Picks the route for a request. `host` is the Host header (a port is ignored), `path`
    /// the request path without its query.
    pub fn select<'a>(
        &'a self,
        host: Option<&str>,
        path: &str,
        offered: &[&'a str],
    ) -> Selection<'a> {
        let path = match read_path(path) {
            Read::Matched(path) => path,
            // "/public/../admin" must not ride the "/public" route to a backend that resolves it.
            Read::DotSegment => return Selection::NoRoute,
        };
        let host = host.map(normalize_host);
        let mut first = None;
        for class in self.host_classes(host.as_deref()) {
            let depth = match class.iter().map(|paths| paths.depth).max() {
                Some(depth) if depth > 0 => depth,
                _ => continue, // no route in this class
            };
            for prefix in prefixes(cut_to_depth(&path, depth)) {
                for &index in in_file_order(&class, prefix).iter() {
                    let route = &self.routes[index];
                    first.get_or_insert(route);
                    if let Some(protocols) = route.fit_protocols(offered) {
                        return Selection::Matched { route, protocols };
                    }
                }
            }
        }
        match first {
            Some(first) => Selection::NoProtocolFits { first },
            None => Selection::NoRoute,
        }
    }

    /// The path indexes to probe, by host class in rank order: exact host, every wildcard
    /// suffix that covers it, then routes without a host.
    fn host_classes(&self, host: Option<&str>) -> [Vec<&Paths>; 3] {
        let exact = host.and_then(|h| self.exact.get(h));
        // ".b.example.com", ".example.com", ".com" for "a.b.example.com"; the host itself
        // never matches its own wildcard ("*.example.com" does not cover "example.com").
        let wildcards = host.into_iter().flat_map(|h| {
            (h.rmatch_indices('.').take(self.wildcard_labels))
                .filter_map(|(i, _)| self.wildcard.get(&h[i..]))
        });
        [
            exact.into_iter().collect(),
            wildcards.collect(),
            vec![&self.any_host],
        ]
    }
}

/// The routes keyed `prefix` in any of `class`'s indexes, in file order.
fn in_file_order<'a>(class: &[&'a Paths], prefix: &str) -> Cow<'a, [usize]> {
    let mut hits = class.iter().filter_map(|paths| paths.routes.get(prefix));
    let Some(first) = hits.next() else {
        return Cow::Borrowed(&[]);
    };
    let rest: Vec<usize> = hits.flatten().copied().collect();
    if rest.is_empty() {
        return Cow::Borrowed(first);
    }
    let mut all: Vec<usize> = first.iter().copied().chain(rest).collect();
    all.sort_unstable();
    Cow::Owned(all)
}

/// How many segments a route key or path has ("/" and "/a" one, "/a/b" two).
fn depth(path: &str) -> usize {
    path.bytes().filter(|&b| b == b'/').count()
}

/// `path` cut to its first `depth` segments: its deeper prefixes match no key `depth` deep.
fn cut_to_depth(path: &str, depth: usize) -> &str {
    match path.match_indices('/').nth(depth) {
        Some((i, _)) if i > 0 => &path[..i],
        _ => path,
    }
}

/// Lowercased host without its port or a trailing dot.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The path's whole-segment prefixes, longest first: "/a/b/" → "/a/b", "/a", "/".
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let mut next = Some(if trimmed.is_empty() { "/" } else { trimmed });
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) => Some("/"),
            Some(i) => Some(&current[..i]),
            None => None,
        };
        Some(current)
    })
}

/// A route's path as the table keys it: two routes with the same key match the same requests.
pub(crate) fn route_key(path: &str) -> String {
    // Route paths have no dot segment (validated): matched as written if one slipped through.
    let matched = match read_path(path) {
        Read::Matched(matched) => matched,
        Read::DotSegment => Cow::Borrowed(path),
    };
    let key = matched.trim_end_matches('/').to_string();
    if key.is_empty() {
        "/".to_string()
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(
        name: &str,
        host: Option<&str>,
        path: &str,
        protocols: Option<&[&str]>,
    ) -> Arc<RouteConfig> {
        Arc::new(RouteConfig {
            name: name.into(),
            host: host.map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.into()),
                None => HostPattern::Exact(h.into()),
            }),
            host_location: None,
            path: path.into(),
            subprotocols: protocols.map(|p| p.iter().map(|s| s.to_string()).collect()),
            origins: None,
            backends: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            balance: Default::default(),
            idle: None,
            backend_tls: None,
            require_client_certificate: false,
        })
    }

    fn pick(table: &RouteTable, host: Option<&str>, path: &str, offered: &[&str]) -> String {
        match table.select(host, path, offered) {
            Selection::NoRoute => "404".into(),
            Selection::NoProtocolFits { .. } => "400".into(),
            Selection::Matched { route, protocols } => {
                format!(
                    "{}{}",
                    route.config.name,
                    if protocols.is_empty() {
                        String::new()
                    } else {
                        format!(" {protocols:?}")
                    }
                )
            }
        }
    }

    #[test]
    fn paths_match_on_whole_segments() {
        let table = RouteTable::new(&[route("ws", None, "/ws", None)]);
        for (path, expected) in [
            ("/ws", "ws"),
            ("/ws/", "ws"),
            ("/ws/a/b", "ws"),
            ("/wsx", "404"),
            ("/", "404"),
            ("/w", "404"),
        ] {
            assert_eq!(pick(&table, None, path, &[]), expected, "{path}");
        }
    }

    #[test]
    fn a_path_a_backend_reads_as_a_routes_is_matched_as_one() {
        // Each of these reaches "/orig" at a backend that decodes, merges slashes or reads
        // ;parameters: none may slip past its route's rules to the catch-all.
        let table = RouteTable::new(&[
            route("all", None, "/", None),
            route("orig", None, "/orig", None),
            route("café", None, "/caf%C3%A9", None),
        ]);
        for (path, expected) in [
            ("/or%69g", "orig"),
            ("/%6Frig/x", "orig"),
            ("//orig", "orig"),
            ("/orig//x", "orig"),
            ("/orig;jsessionid=1", "orig"),
            ("/orig;x/y", "orig"),
            ("/;x/orig", "orig"),
            ("/caf%c3%a9", "café"),
            // Fullwidth letters, which NFKC makes ASCII.
            ("/%EF%BD%8F%EF%BD%92%EF%BD%89%EF%BD%87", "orig"),
            ("/orig%EF%BC%8Fx", "orig"),
            // Other compatibility forms (superscript, mathematical, circled letters) and a
            // decomposed accent: NFKC reads them as the plain letters.
            ("/%E1%B5%92rig", "orig"),
            ("/%F0%9D%90%A8rig", "orig"),
            ("/%E2%93%9Erig", "orig"),
            ("/cafe%CC%81", "café"),
            // A separator however spelled: what a decoding server or Node's URL parser reads.
            ("/orig%2Fx", "orig"),
            ("/orig%2f", "orig"),
            ("/orig%5Cx", "orig"),
            ("/orig\\x", "orig"),
            ("%2Forig", "orig"),
            // Other reserved characters stay encoded.
            ("/orig%3Fx", "all"),
            ("/ORIG", "all"),
            ("/origin", "all"),
            ("/%", "all"),
            ("/%zz", "all"),
            ("/or%+69g", "all"),
            ("/%é", "all"),
            ("/%aé", "all"),
            ("/orig%", "all"),
        ] {
            assert_eq!(pick(&table, None, path, &[]), expected, "{path}");
        }
    }

    #[test]
    fn the_root_path_matches_everything() {
        let table = RouteTable::new(&[route("all", None, "/", None)]);
        assert_eq!(pick(&table, Some("x.test"), "/anything/at/all", &[]), "all");
        assert_eq!(pick(&table, None, "/", &[]), "all");
    }

    #[test]
    fn exact_host_beats_wildcard_beats_no_host_whatever_the_path_length() {
        let table = RouteTable::new(&[
            route("nohost", None, "/a/b/c", None),
            route("wild", Some("*.example.com"), "/a/b", None),
            route("exact", Some("chat.example.com"), "/", None),
        ]);
        assert_eq!(
            pick(&table, Some("chat.example.com"), "/a/b/c", &[]),
            "exact"
        );
        assert_eq!(
            pick(&table, Some("other.example.com"), "/a/b/c", &[]),
            "wild"
        );
        assert_eq!(pick(&table, Some("other.test"), "/a/b/c", &[]), "nohost");
    }

    #[test]
    fn longer_prefix_then_file_order_break_ties() {
        let table = RouteTable::new(&[
            route("short", None, "/a", None),
            route("long", None, "/a/b", None),
            route("long-second", None, "/a/b", None),
        ]);
        assert_eq!(pick(&table, None, "/a/b/c", &[]), "long");
        assert_eq!(pick(&table, None, "/a/x", &[]), "short");
    }

    #[test]
    fn hosts_are_case_insensitive_and_ports_are_ignored() {
        let table = RouteTable::new(&[route("exact", Some("chat.example.com"), "/", None)]);
        for host in [
            "CHAT.Example.com",
            "chat.example.com:8443",
            "chat.example.com.",
        ] {
            assert_eq!(pick(&table, Some(host), "/", &[]), "exact", "{host}");
        }
        assert_eq!(pick(&table, None, "/", &[]), "404");
    }

    #[test]
    fn a_wildcard_covers_any_depth_of_subdomain_but_not_the_bare_domain() {
        let table = RouteTable::new(&[
            route("narrow", Some("*.eu.example.com"), "/", None),
            route("wide", Some("*.example.com"), "/", None),
        ]);
        assert_eq!(pick(&table, Some("a.example.com"), "/", &[]), "wide");
        assert_eq!(pick(&table, Some("a.eu.example.com"), "/", &[]), "narrow");
        assert_eq!(pick(&table, Some("x.a.eu.example.com"), "/", &[]), "narrow");
        assert_eq!(pick(&table, Some("example.com"), "/", &[]), "404");
    }

    #[test]
    fn wildcards_rank_as_one_class_then_by_path_then_by_file_order() {
        let table = RouteTable::new(&[
            route("wide", Some("*.example.com"), "/", None),
            route("narrow", Some("*.eu.example.com"), "/", None),
            route("deep", Some("*.example.com"), "/api/ws", None),
        ]);
        assert_eq!(pick(&table, Some("a.eu.example.com"), "/", &[]), "wide");
        assert_eq!(
            pick(&table, Some("a.eu.example.com"), "/api/ws/x", &[]),
            "deep"
        );
    }

    #[test]
    fn a_host_of_many_labels_is_matched_by_its_last_ones() {
        let table = RouteTable::new(&[route("w", Some("*.example.com"), "/", None)]);
        let long = format!("{}example.com", "a.".repeat(10_000));
        assert_eq!(pick(&table, Some(&long), "/", &[]), "w");
        assert_eq!(pick(&table, Some(&format!("{long}.org")), "/", &[]), "404");
    }

    #[test]
    fn a_path_deeper_than_every_route_is_matched_by_its_first_segments() {
        let table = RouteTable::new(&[
            route("a", None, "/a", None),
            route("ab", Some("h.test"), "/a/b", None),
        ]);
        let deep = format!("/a/b{}", "/x".repeat(10_000));
        assert_eq!(pick(&table, Some("h.test"), &deep, &[]), "ab");
        assert_eq!(pick(&table, None, &deep, &[]), "a");
        assert_eq!(
            pick(&table, None, &format!("/z{}", "/a".repeat(10_000)), &[]),
            "404"
        );
        assert_eq!(cut_to_depth("/a/b/c/", 2), "/a/b");
        assert_eq!(cut_to_depth("/a/b", 2), "/a/b");
        assert_eq!(cut_to_depth("/", 1), "/");
    }

    #[test]
    fn the_first_candidate_whose_subprotocols_fit_wins() {
        let table = RouteTable::new(&[
            route("v2", None, "/chat", Some(&["chat.v2"])),
            route("v1", None, "/chat", Some(&["chat.v1"])),
        ]);
        assert_eq!(
            pick(&table, None, "/chat", &["chat.v1", "chat.v2"]),
            "v2 [\"chat.v2\"]"
        );
        assert_eq!(
            pick(&table, None, "/chat", &["chat.v1"]),
            "v1 [\"chat.v1\"]"
        );
        assert_eq!(pick(&table, None, "/chat", &["chat.v9"]), "400");
        assert_eq!(pick(&table, None, "/chat", &[]), "400");
    }

    #[test]
    fn a_route_without_a_list_forwards_the_offer_unchanged() {
        let table = RouteTable::new(&[route("open", None, "/", None)]);
        assert_eq!(pick(&table, None, "/", &["b", "a"]), "open [\"b\", \"a\"]");
    }

    #[test]
    fn dot_segments_never_match_a_route() {
        let table = RouteTable::new(&[route("pub", None, "/public", None)]);
        assert_eq!(pick(&table, None, "/public/../admin", &[]), "404");
        assert_eq!(pick(&table, None, "/public/%2E%2e/admin", &[]), "404");
        for sneaky in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/..%2Fadmin",
            "/public/..%5cadmin",
            "/public/.%2E%2F/admin",
            "/public/.",
            // What Windows servers read as a dot segment, trailing dots and spaces dropped.
            "/public/...",
            "/public/.%20./admin",
            "/public/..%20/admin",
        ] {
            assert_eq!(pick(&table, None, sneaky, &[]), "404", "{sneaky}");
        }
        // The compatibility forms NFKC reads as dots and separators (Windows' best fit too).
        for lookalike in [
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public/\u{FF0E}\u{FF0E}/admin",
            "/public/%E2%80%A5/admin",
            "/public/..%EF%BC%8Fadmin",
            "/public/..%EF%BC%BCadmin",
            "/public/%EF%B9%92.",
            // U+FE30 is ".." and U+2025 too, in NFKC.
            "/public/%EF%B8%B0/admin",
            "/public/%EF%B8%B0%EF%B9%A8admin",
            // And what Windows' best fit reads as separators, which NFKC keeps.
            "/public/..%E2%88%95admin",
            "/public/..%E2%81%84admin",
            "/public/..%E2%88%96admin",
            "/public/..%C2%A5admin",
            "/public/..%E2%82%A9admin",
        ] {
            assert_eq!(pick(&table, None, lookalike, &[]), "404", "{lookalike}");
        }
        for fine in [
            "/public/a.b",
            "/public/a%2Fb",
            "/public/.well-known",
            "/public/;x",
            "/public/%C2%A5100",
            "/public/a%E2%88%95b",
            "/public/%C2%BD",
        ] {
            assert_ne!(pick(&table, None, fine, &[]), "404", "{fine}");
        }
    }

    #[test]
    fn what_windows_best_fit_reads_as_a_separator_is_matched_as_one() {
        let table = RouteTable::new(&[
            route("admin", None, "/admin", None),
            route("all", None, "/", None),
        ]);
        for split in [
            "/admin%E2%88%95x",
            "/admin%C2%A5x",
            "/admin%E2%81%84",
            "/admin\u{2216}x",
        ] {
            assert_eq!(pick(&table, None, split, &[]), "admin", "{split}");
        }
        // `¥admin¥` is `\admin\` to such a backend.
        assert_eq!(pick(&table, None, "/%C2%A5admin%C2%A5", &[]), "admin");
        assert_eq!(pick(&table, None, "/adminx", &[]), "all");
        // Not where NFKC makes one of something else: `½` is `1⁄2`, `￥` is `¥`, which no
        // backend reads as separators.
        let table = RouteTable::new(&[
            route("v1", None, "/v1", None),
            route("admin", None, "/admin", None),
            route("all", None, "/", None),
        ]);
        assert_eq!(pick(&table, None, "/v%C2%BD", &[]), "all");
        assert_eq!(pick(&table, None, "/admin%EF%BF%A5x", &[]), "all");
    }

    #[test]
    fn a_segment_is_matched_without_its_trailing_dots_and_spaces() {
        let table = RouteTable::new(&[route("f", None, "/f", None), route("all", None, "/", None)]);
        for windows in ["/f.", "/f%2E", "/f%20", "/f. .", "/f./x", "/f%2e%20/x"] {
            assert_eq!(pick(&table, None, windows, &[]), "f", "{windows}");
        }
        for other in ["/f.x", "/.f", "/fx."] {
            assert_eq!(pick(&table, None, other, &[]), "all", "{other}");
        }
    }

    #[test]
    fn a_reloaded_route_goes_on_rotating_where_it_was() {
        let old = RouteTable::new(&[route("r", None, "/", None), route("s", None, "/s", None)]);
        let Selection::Matched { route: r, .. } = old.select(None, "/", &[]) else {
            panic!()
        };
        assert_eq!(r.backends_in_turn().next(), Some("a:1"));
        let mut new = RouteTable::new(&[route("n", None, "/n", None), route("r", None, "/", None)]);
        new.continue_from(&old, true);
        let Selection::Matched { route: r, .. } = new.select(None, "/", &[]) else {
            panic!()
        };
        assert_eq!(r.backends_in_turn().next(), Some("b:2"));
        let Selection::Matched { route: n, .. } = new.select(None, "/n", &[]) else {
            panic!()
        };
        assert_eq!(
            n.backends_in_turn().next(),
            Some("a:1"),
            "a new route starts afresh"
        );
    }

    #[test]
    fn backends_rotate_and_wrap_around() {
        let table = RouteTable::new(&[route("r", None, "/", None)]);
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        let turns: Vec<Vec<&str>> = (0..3).map(|_| route.backends_in_turn().collect()).collect();
        assert_eq!(
            turns,
            [
                ["a:1", "b:2", "c:3"],
                ["b:2", "c:3", "a:1"],
                ["c:3", "a:1", "b:2"]
            ]
        );
    }

    #[test]
    fn a_backend_put_aside_is_tried_last_and_the_others_share_its_load() {
        let table = RouteTable::new(&[route("r", None, "/", None)]);
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        route
            .health_of("a:1")
            .unwrap()
            .failed(Duration::from_secs(1), health::now())
            .unwrap();
        let turns: Vec<Vec<&str>> = (0..4).map(|_| route.backends_in_turn().collect()).collect();
        assert_eq!(
            turns,
            [
                ["b:2", "c:3", "a:1"],
                ["c:3", "b:2", "a:1"],
                ["b:2", "c:3", "a:1"],
                ["c:3", "b:2", "a:1"]
            ]
        );
        for backend in ["b:2", "c:3"] {
            route
                .health_of(backend)
                .unwrap()
                .failed(Duration::from_secs(1), health::now())
                .unwrap();
        }
        let all_aside: Vec<&str> = route.backends_in_turn().collect();
        assert_eq!(all_aside.len(), 3, "all tried, in turn: {all_aside:?}");
        assert!(route.health_of("a:1").unwrap().answered());
        assert_eq!(route.backends_in_turn().next(), Some("a:1"), "back in turn");
    }

    #[test]
    fn every_backend_comes_once_in_each_turn_however_many_are_aside() {
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).backends = (0..200).map(|i| format!("b{i}:1")).collect();
        let table = RouteTable::new(&[config]);
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        // Beyond the first 128, a backend is never put aside, but still comes once.
        for aside in [3, 64, 127, 150, 199] {
            let backend = format!("b{aside}:1");
            route
                .health_of(&backend)
                .unwrap()
                .failed(Duration::from_secs(60), health::now());
        }
        for _ in 0..3 {
            let turn = route.backends_in_turn();
            assert_eq!(turn.len(), 200);
            let mut seen: Vec<&str> = turn.collect();
            let last: Vec<&str> = seen[197..].to_vec();
            assert_eq!(last.len(), 3, "the three tracked ones aside come last");
            for tracked in ["b3:1", "b64:1", "b127:1"] {
                assert!(last.contains(&tracked), "{last:?}");
            }
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 200);
        }
    }

    #[test]
    fn a_backend_listed_twice_is_put_aside_in_both_places() {
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).backends = vec!["a:1".into(), "b:2".into(), "a:1".into()];
        let table = RouteTable::new(&[config]);
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        route
            .health_of("a:1")
            .unwrap()
            .failed(Duration::from_secs(60), health::now());
        for _ in 0..3 {
            let turn: Vec<&str> = route.backends_in_turn().collect();
            assert_eq!(turn[0], "b:2", "{turn:?}");
        }
    }

    #[test]
    fn a_reloaded_route_keeps_its_backends_health_by_name() {
        let old = RouteTable::new(&[route("r", None, "/", None)]);
        let Selection::Matched { route: was, .. } = old.select(None, "/", &[]) else {
            panic!()
        };
        was.health_of("b:2")
            .unwrap()
            .failed(Duration::from_secs(1), health::now())
            .unwrap();
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).backends.reverse();
        let mut new = RouteTable::new(&[config]);
        new.continue_from(&old, true);
        let Selection::Matched { route: r, .. } = new.select(None, "/", &[]) else {
            panic!()
        };
        let now = health::now();
        let up = |b: &str| r.health_of(b).unwrap().is_up(now);
        assert_eq!((up("a:1"), up("b:2"), up("c:3")), (true, false, true));
        // What a request still on the old table learns after the new one took over is the
        // new one's too: a failure, and then an answer.
        was.health_of("c:3")
            .unwrap()
            .failed(Duration::from_secs(1), health::now())
            .unwrap();
        assert!(!up("c:3"));
        assert!(was.health_of("b:2").unwrap().answered());
        assert!(up("b:2"));
        // Reloaded with another balance: all start afresh.
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).balance = Balance::LeastConnections;
        let mut other = RouteTable::new(&[config]);
        other.continue_from(&new, true);
        let Selection::Matched { route: o, .. } = other.select(None, "/", &[]) else {
            panic!()
        };
        assert!(o.health_of("c:3").unwrap().is_up(now));
        // Reloaded with putting aside turned off: all start afresh.
        was.health_of("b:2")
            .unwrap()
            .failed(Duration::from_secs(1), health::now())
            .unwrap();
        let mut off = RouteTable::new(&[route("r", None, "/", None)]);
        off.continue_from(&new, false);
        let Selection::Matched { route: r, .. } = off.select(None, "/", &[]) else {
            panic!()
        };
        assert!(r.health_of("b:2").unwrap().is_up(now));
    }

    fn least_connections(backends: &[&str]) -> RouteTable {
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).backends = backends.iter().map(ToString::to_string).collect();
        Arc::make_mut(&mut config).balance = Balance::LeastConnections;
        RouteTable::new(&[config])
    }

    fn the_route(table: &RouteTable) -> &Route {
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        route
    }

    /// Each backend counted in `loads`, with its open connections, by name.
    fn open_in(loads: &Loads) -> Vec<(String, usize)> {
        let mut open = loads.open();
        open.sort();
        open
    }

    /// `["a:1 2"]`: backend `a:1`, 2 open.
    fn counted(each: &[&str]) -> Vec<(String, usize)> {
        let split = |e: &&str| {
            e.split_once(' ')
                .map(|(b, n)| (b.to_string(), n.parse().unwrap()))
        };
        each.iter().filter_map(split).collect()
    }

    #[test]
    fn least_connections_tries_the_fewest_open_first_ties_in_turn() {
        let loads = Loads::default();
        let mut table = least_connections(&["a:1", "b:2", "c:3"]);
        table.count_in(&loads);
        let route = the_route(&table);
        // All at 0: in turn, as round-robin.
        let firsts: Vec<&str> = (0..3)
            .map(|_| route.backends_in_turn().next().unwrap())
            .collect();
        assert_eq!(firsts, ["a:1", "b:2", "c:3"]);
        let a = [route.busy("a:1"), route.busy("a:1")];
        let _c = route.busy("c:3");
        for _ in 0..3 {
            let turn: Vec<&str> = route.backends_in_turn().collect();
            assert_eq!(
                turn,
                ["b:2", "c:3", "a:1"],
                "fewest first, failover included"
            );
        }
        let _b = [route.busy("b:2"), route.busy("b:2")];
        // a:1 and b:2 at 2, c:3 at 1: the tie between the two in turn.
        let turns: Vec<Vec<&str>> = (0..2).map(|_| route.backends_in_turn().collect()).collect();
        assert_eq!(turns, [["c:3", "a:1", "b:2"], ["c:3", "b:2", "a:1"]]);
        drop(a);
        assert_eq!(route.backends_in_turn().next(), Some("a:1"));
        assert_eq!(open_in(&loads), counted(&["a:1 0", "b:2 2", "c:3 1"]));
    }

    #[test]
    fn least_connections_passes_over_a_backend_put_aside_unless_all_are() {
        let table = least_connections(&["a:1", "b:2", "c:3"]);
        let route = the_route(&table);
        let _b = route.busy("b:2");
        let _c = [route.busy("c:3"), route.busy("c:3")];
        let put_aside = |backend: &str| {
            let health = route.health_of(backend).unwrap();
            health.failed(Duration::from_secs(60), health::now());
        };
        put_aside("a:1");
        for _ in 0..2 {
            let turn: Vec<&str> = route.backends_in_turn().collect();
            assert_eq!(turn, ["b:2", "c:3", "a:1"], "the idle one is aside");
        }
        put_aside("b:2");
        put_aside("c:3");
        let turn: Vec<&str> = route.backends_in_turn().collect();
        assert_eq!(turn, ["a:1", "b:2", "c:3"], "all aside: fewest first");
    }

    #[test]
    fn least_connections_shares_ties_evenly_among_the_backends_up() {
        let table = least_connections(&["a:1", "b:2", "c:3"]);
        let route = the_route(&table);
        let health = route.health_of("a:1").unwrap();
        health.failed(Duration::from_secs(60), health::now());
        let firsts: Vec<&str> = (0..4)
            .map(|_| route.backends_in_turn().next().unwrap())
            .collect();
        assert_eq!(
            firsts,
            ["b:2", "c:3", "b:2", "c:3"],
            "not two turns to the one after it"
        );
    }

    #[test]
    fn a_backend_listed_twice_counts_its_connections_once_in_both_places() {
        let loads = Loads::default();
        let mut table = least_connections(&["a:1", "b:2", "a:1"]);
        table.count_in(&loads);
        let route = the_route(&table);
        let _a = route.busy("a:1");
        for _ in 0..3 {
            let turn: Vec<&str> = route.backends_in_turn().collect();
            assert_eq!(turn[0], "b:2", "{turn:?}");
        }
        assert_eq!(open_in(&loads), counted(&["a:1 1", "b:2 0"]));
    }

    #[test]
    fn a_backend_has_one_count_across_routes_and_reloads() {
        let loads = Loads::default();
        let mut old = least_connections(&["a:1", "b:2"]);
        old.count_in(&loads);
        let before = the_route(&old).busy("b:2");
        // The next config: b:2 dropped, and named by another route.
        let mut other = route("other", None, "/other", None);
        Arc::make_mut(&mut other).backends = vec!["b:2".into()];
        let mut lone = least_connections(&["a:1"]);
        lone.count_in(&loads);
        drop(old);
        assert_eq!(
            open_in(&loads),
            counted(&["a:1 0", "b:2 1"]),
            "its tunnel lives on"
        );
        // And the one after: b:2 back, also named by another route.
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).backends = vec!["b:2".into(), "a:1".into()];
        Arc::make_mut(&mut config).balance = Balance::LeastConnections;
        let mut new = RouteTable::new(&[config, other]);
        new.count_in(&loads);
        drop(lone);
        let r = the_route(&new);
        assert_eq!(
            r.backends_in_turn().next(),
            Some("a:1"),
            "b:2 still has its tunnel"
        );
        let Selection::Matched { route: o, .. } = new.select(None, "/other", &[]) else {
            panic!()
        };
        let _through_other = o.busy("b:2");
        assert_eq!(open_in(&loads), counted(&["a:1 0", "b:2 2"]));
        drop(before);
        assert_eq!(open_in(&loads), counted(&["a:1 0", "b:2 1"]));
    }

    proptest::proptest! {
        /// Whatever the loads and which backends are aside (past the 128 tracked too): every
        /// backend comes once, those up before those aside, each part fewest open first.
        #[test]
        fn least_connections_tries_each_backend_once_up_first_fewest_first(
            backends in proptest::collection::vec((0usize..4, proptest::bool::weighted(0.2)), 1..200),
            turns in 0usize..5,
        ) {
            let names: Vec<String> = (0..backends.len()).map(|i| format!("b{i}:1")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let table = least_connections(&refs);
            let route = the_route(&table);
            let mut held = Vec::new();
            for (name, &(open, aside)) in names.iter().zip(&backends) {
                held.extend((0..open).map(|_| route.busy(name)));
                if aside {
                    let health = route.health_of(name).unwrap();
                    health.failed(Duration::from_secs(60), health::now());
                }
            }
            for _ in 0..turns {
                drop(route.backends_in_turn());
            }
            let turn: Vec<&str> = route.backends_in_turn().collect();
            let mut seen = turn.clone();
            seen.sort_unstable();
            let mut all = refs.clone();
            all.sort_unstable();
            proptest::prop_assert_eq!(seen, all);
            let index = |name: &str| names.iter().position(|n| n == name).unwrap();
            // Aside as the route sees it: only the first 128 are tracked.
            let key = |name: &&str| {
                let i = index(name);
                (i < TRACKED && backends[i].1, backends[i].0)
            };
            let keys: Vec<(bool, usize)> = turn.iter().map(key).collect();
            proptest::prop_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{:?}", keys);
        }
    }

    #[test]
    fn origins_compare_case_insensitively_and_a_missing_origin_passes() {
        let mut config = route("r", None, "/", None);
        Arc::make_mut(&mut config).origins = Some(vec!["https://chat.example.com".into()]);
        let table = RouteTable::new(&[config]);
        let Selection::Matched { route, .. } = table.select(None, "/", &[]) else {
            panic!()
        };
        assert!(route.allows_origin(Some("HTTPS://Chat.Example.com")));
        assert!(route.allows_origin(Some("https://chat.example.com/")));
        assert!(!route.allows_origin(Some("https://chat.example.com//")));
        assert!(route.allows_origin(None));
        assert!(!route.allows_origin(Some("https://evil.example")));
        assert!(!route.allows_origin(Some("null")));
    }

    #[test]
    fn ten_thousand_routes_select_correctly() {
        let configs: Vec<Arc<RouteConfig>> = (0..10_000)
            .map(|i| {
                route(
                    &format!("r{i}"),
                    Some(&format!("h{i}.example.com")),
                    &format!("/svc{i}"),
                    None,
                )
            })
            .collect();
        let table = RouteTable::new(&configs);
        assert_eq!(table.routes.len(), 10_000);
        assert_eq!(
            pick(&table, Some("h7777.example.com"), "/svc7777/ws", &[]),
            "r7777"
        );
        assert_eq!(
            pick(&table, Some("h7777.example.com"), "/svc7778/ws", &[]),
            "404"
        );
    }
}

/// The table against a plain reading of the documented rules: rank every route, take the
/// first that fits. Slow, obviously right, and compared on random tables and requests.
#[cfg(test)]
mod reference {
    use super::*;
    use proptest::prelude::*;

    const HOSTS: &[Option<&str>] = &[
        None,
        Some("a.example.com"),
        Some("b.example.com"),
        Some(".example.com"),
        Some(".a.example.com"),
    ];
    const PATHS: &[&str] = &["/", "/a", "/ab", "/a/b", "/a/b/c"];
    const REQUEST_HOSTS: &[Option<&str>] = &[
        None,
        Some("a.example.com"),
        Some("A.Example.COM:8443"),
        Some("x.a.example.com"),
        Some("b.example.com."),
        Some("example.com"),
        Some("other.test"),
    ];
    const REQUEST_PATHS: &[&str] = &["/", "/a", "/a/", "/ab", "/abc", "/a/b", "/a/bc", "/a/b/c/d"];
    const PROTOCOLS: &[&str] = &["p1", "p2"];

    /// Host rank: 0 exact, 1 any wildcard, then no host; `None` if the route's host does not
    /// match.
    fn host_rank(pattern: &Option<HostPattern>, host: Option<&str>) -> Option<usize> {
        match (pattern, host) {
            (None, _) => Some(usize::MAX),
            (Some(HostPattern::Exact(h)), Some(host)) => (h == host).then_some(0),
            (Some(HostPattern::Wildcard(suffix)), Some(host)) => {
                (host.ends_with(suffix.as_str()) && host.len() > suffix.len()).then_some(1)
            }
            (Some(_), None) => None,
        }
    }

    fn path_matches(route: &str, path: &str) -> bool {
        route == "/" || path == route || path.starts_with(&format!("{route}/"))
    }

    fn expected(
        configs: &[Arc<RouteConfig>],
        host: Option<&str>,
        path: &str,
        offered: &[&str],
    ) -> String {
        let host = host.map(normalize_host);
        let mut candidates: Vec<(usize, std::cmp::Reverse<usize>, usize)> = configs
            .iter()
            .enumerate()
            .filter(|(_, c)| path_matches(&c.path, path))
            .filter_map(|(i, c)| {
                let rank = host_rank(&c.host, host.as_deref())?;
                Some((rank, std::cmp::Reverse(c.path.len()), i))
            })
            .collect();
        if candidates.is_empty() {
            return "404".into();
        }
        candidates.sort();
        for (_, _, i) in candidates {
            let fits = match &configs[i].subprotocols {
                None => true,
                Some(list) => offered.iter().any(|p| list.iter().any(|a| a == p)),
            };
            if fits {
                return configs[i].name.clone();
            }
        }
        "400".into()
    }

    fn route_config() -> impl Strategy<Value = (usize, usize, Option<Vec<bool>>)> {
        (
            0..HOSTS.len(),
            0..PATHS.len(),
            proptest::option::of(proptest::collection::vec(any::<bool>(), PROTOCOLS.len())),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_table_agrees_with_the_documented_ranking(
            routes in proptest::collection::vec(route_config(), 0..12),
            host in 0..REQUEST_HOSTS.len(),
            path in 0..REQUEST_PATHS.len(),
            offered in proptest::collection::vec(any::<bool>(), PROTOCOLS.len()),
        ) {
            let configs: Vec<Arc<RouteConfig>> = routes
                .iter()
                .enumerate()
                .map(|(i, (h, p, protocols))| Arc::new(RouteConfig {
                    name: format!("r{i}"),
                    host: HOSTS[*h].map(|h| match h.strip_prefix('.') {
                        Some(_) => HostPattern::Wildcard(h.to_string()),
                        None => HostPattern::Exact(h.to_string()),
                    }),
                    host_location: None,
                    path: PATHS[*p].to_string(),
                    subprotocols: protocols.as_ref().map(|on| {
                        PROTOCOLS.iter().zip(on).filter(|(_, on)| **on).map(|(p, _)| p.to_string()).collect()
                    }),
                    origins: None,
                    backends: vec!["b:1".into()],
                    balance: Default::default(),
                    idle: None,
                    backend_tls: None,
                    require_client_certificate: false,
                }))
                .collect();
            let offered: Vec<&str> = PROTOCOLS.iter().zip(&offered).filter(|(_, on)| **on).map(|(p, _)| *p).collect();
            let table = RouteTable::new(&configs);
            let got = match table.select(REQUEST_HOSTS[host], REQUEST_PATHS[path], &offered) {
                Selection::NoRoute => "404".to_string(),
                Selection::NoProtocolFits { .. } => "400".to_string(),
                Selection::Matched { route, .. } => route.config.name.clone(),
            };
            prop_assert_eq!(got, expected(&configs, REQUEST_HOSTS[host], REQUEST_PATHS[path], &offered));
        }
    }
}
