//! Backend names to addresses. An IP literal is its own address; a name goes through the
//! system resolver (getaddrinfo, which blocks, so on tokio's blocking pool, a bounded number at
//! a time), and its answer is reused for a few seconds.
//!
//! Why a cache: a reconnect storm (a load balancer failing over, a deploy) brings thousands of
//! upgrades a second, and asking the resolver for each would queue them behind a few dozen
//! lookups through cluster DNS and its search domains, and turn a healthy backend into 504s.
//! So a name is looked up at most once per [`FRESH`], by a task of its own that stores its
//! answer whoever is still waiting (a request that runs out of time does not waste it), and
//! while a name is looked up again, its last answer (up to [`STALE`] old) is used at once, so
//! a slow resolver delays no request for a name it knew. A lookup that fails for the
//! resolver's own reasons (a timeout, "temporary failure": CoreDNS restarting) is a warning,
//! and the last answer stands in for it; one that says the name does not exist is believed at
//! once (the addresses may already be someone else's). getaddrinfo gives no TTL; five seconds
//! is what Envoy re-resolves at by default, short beside a Kubernetes endpoint change.
//!
//! A name's addresses are taken in turn ([`in_turn`]): the connects to a headless Service's
//! name start at each of its pods in turn, as nginx, HAProxy and Envoy spread over a name's
//! addresses, rather than all at the first the resolver listed for the five seconds its
//! answer is reused (a reconnect storm would land on one pod). An address that failed to take
//! a connection (a pod on a dead node, still in the answer until the node is declared gone)
//! is set aside for a cool-down as a backend is (see `health`), and dialed last meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::error::out_of_descriptors;
use crate::sync::lock;

/// How long an answer is used without looking the name up again.
const FRESH: Duration = Duration::from_secs(5);
/// How long an answer may stand in while the name is looked up again, or when that lookup
/// failed for the resolver's own reasons.
const STALE: Duration = Duration::from_secs(60);
/// How long a failed lookup is the answer: one lookup a second per name while the resolver
/// is down, not one per request.
const FAILED: Duration = Duration::from_secs(1);
/// Names not asked for this long are forgotten (backends of configs replaced since).
const FORGET: Duration = Duration::from_secs(600);

/// Name lookups in flight at once. getaddrinfo blocks a thread of tokio's blocking pool until
/// the resolver answers; unbounded, a slow resolver under load would take the whole pool, and
/// the reloads that need it too.
const MAX_LOOKUPS: usize = 32;
static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

static NAMES: LazyLock<Arc<Names>> = LazyLock::new(Arc::default);

/// The addresses of a `host:port` backend: an IP literal at once, a name from the cache or
/// through the system resolver.
pub(crate) async fn resolve(backend: &str) -> io::Result<Arc<[SocketAddr]>> {
    if let Ok(addr) = backend.parse::<SocketAddr>() {
        return Ok(Arc::new([addr]));
    }
    NAMES.get(backend, system_lookup).await
}

/// The order to dial a backend's addresses in (see [`in_turn`]).
pub(crate) struct Order {
    pub(crate) addrs: Vec<SocketAddr>,
    /// Whether every address to dial is set aside.
    pub(crate) all_aside: bool,
    /// Where in `addrs` the addresses taken in turn are: after the one tried again after its
    /// cool-down, if any, and before those set aside.
    pub(crate) in_turn: std::ops::Range<usize>,
}

/// The order to dial `backend`'s `addrs` in, but for the `gone` ones: from its next address
/// in turn, those set aside ([`set_aside`]) last.
///
/// Once an address's cool-down is over, the one request that finds it so tries it again
/// first; for the others it stays last until that try has failed (a longer cool-down) or
/// answered (back in turn), or, for a try abandoned on the way, for `hold` (the longest a
/// try can take: the connect timeout) and a first cool-down, so a silent or hung pod's retry
/// costs one request, not every one whose turn it is while the retry waits.
pub(crate) fn in_turn(
    backend: &str,
    addrs: &[SocketAddr],
    gone: &[SocketAddr],
    first: Duration,
    hold: Duration,
) -> Order {
    let now = Instant::now();
    let mut names = lock(&NAMES.0);
    let (turn, aside) = match names.get_mut(backend) {
        Some(entry) => {
            let turn = entry.turn;
            entry.turn = turn.wrapping_add(1);
            // Addresses the name no longer has are forgotten; all of them, if setting aside
            // has been turned off (`timeouts.backend_cooldown = "0s"`).
            entry
                .aside
                .retain(|a| !first.is_zero() && addrs.contains(&a.addr));
            if entry.aside.is_empty() {
                entry.failed_in_a_row = 0;
            }
            let mut retry = None;
            for aside in &mut entry.aside {
                if aside.until <= now && !gone.contains(&aside.addr) && retry.is_none() {
                    // A first cool-down past the longest the try can take: its failure,
                    // noted as it ends, comes before another request could claim it too.
                    (aside.until, aside.retried) = (now + hold + first, true);
                    retry = Some(aside.addr);
                }
            }
            (turn, (entry.aside.as_slice(), retry))
        }
        None => (0, (&[][..], None)),
    };
    let (aside, retry) = aside;
    // Every address on the list but the one retried now, its cool-down over or not: the
    // others whose cool-down is over wait for a request of their own to retry them.
    let is_aside =
        |addr: &&SocketAddr| Some(**addr) != retry && aside.iter().any(|a| a.addr == **addr);
    let left = addrs
        .iter()
        .filter(|a| !gone.contains(a) && Some(**a) != retry);
    let (mut up, down): (Vec<SocketAddr>, Vec<SocketAddr>) =
        left.copied().partition(|a| !is_aside(&a));
    // The turn goes round the addresses in turn only: one set aside does not hand its turn
    // to the address after it, which would take twice the others' share meanwhile.
    if !up.is_empty() {
        let turn = turn % up.len();
        up.rotate_left(turn);
    }
    // The address being tried again goes first: its try is what ends its cool-down.
    let mut order: Vec<SocketAddr> = retry.into_iter().collect();
    let retried = order.len();
    order.append(&mut up);
    let up = order.len();
    order.extend(down);
    Order {
        all_aside: up == 0 && !order.is_empty(),
        addrs: order,
        in_turn: retried..up,
    }
}

/// Sets `backend`'s address `addr` aside after a try of it that `began` then failed to take a
/// connection: for `first`, doubling with each failure in a row as a backend's cool-down
/// does. The cool-down, if this failure set it: not one of a try that was on its way when
/// another set it aside (a hung pod's tries all end a whole connect timeout after they
/// began, well after the first of them set it aside), nor one made while it is aside
/// unless it is the retry after its cool-down.
pub(crate) fn set_aside(
    backend: &str,
    addr: SocketAddr,
    first: Duration,
    began: Instant,
) -> Option<Duration> {
    let now = Instant::now();
    let mut names = lock(&NAMES.0);
    let entry = names.get_mut(backend)?;
    let set = match entry.aside.iter_mut().find(|a| a.addr == addr) {
        Some(aside) if began < aside.since => None,
        Some(aside) if aside.until > now && !aside.retried => None,
        Some(aside) => {
            aside.failures = aside.failures.saturating_add(1);
            let cool_down = crate::health::cool_down(first, aside.failures);
            (aside.since, aside.until, aside.retried) = (now, now + cool_down, false);
            Some(cool_down)
        }
        None => {
            entry.aside.push(Aside {
                addr,
                since: now,
                until: now + first,
                failures: 1,
                retried: false,
            });
            Some(first)
        }
    };
    if set.is_some() {
        entry.failed_in_a_row = entry.failed_in_a_row.saturating_add(1);
    }
    set
}

/// Whether `backend`'s address `addr` is set aside now, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn is_aside(backend: &str, addr: SocketAddr) -> bool {
    let names = lock(&NAMES.0);
    let aside = names.get(backend).map(|entry| entry.aside.as_slice());
    aside.unwrap_or_default().iter().any(|a| a.addr == addr)
}

/// `backend`'s address `addr` took a connection: back in turn, its failures forgotten.
/// Whether it had failed until now.
pub(crate) fn answered(backend: &str, addr: SocketAddr) -> bool {
    let mut names = lock(&NAMES.0);
    let Some(entry) = names.get_mut(backend) else {
        return false;
    };
    let before = entry.aside.len();
    entry.aside.retain(|a| a.addr != addr);
    entry.failed_in_a_row = 0;
    entry.aside.len() != before
}

/// Whether every address `backend` resolved to lately has failed since it last answered
/// (set aside, its cool-down over or not: with hung pods, each failure takes the whole
/// connect timeout, longer than a first cool-down), or as many tries of them in a row as it
/// has addresses.
pub(crate) fn all_failed(backend: &str) -> bool {
    let names = lock(&NAMES.0);
    let Some(entry) = names.get(backend) else {
        return false;
    };
    let Some((addrs, _)) = &entry.good else {
        return false;
    };
    let failed = |addr: &SocketAddr| entry.aside.iter().any(|a| a.addr == *addr);
    !addrs.is_empty() && (addrs.iter().all(failed) || entry.failed_in_a_row >= addrs.len())
}

/// Every address of these backends set aside is back in turn: a reload turned setting aside
/// off (`timeouts.backend_cooldown = "0s"`), and one that turns it on again starts afresh,
/// as the routes' backends do.
pub(crate) fn forget_aside<'a>(backends: impl IntoIterator<Item = &'a str>) {
    let mut names = lock(&NAMES.0);
    for backend in backends {
        if let Some(entry) = names.get_mut(backend) {
            entry.forget_failures();
        }
    }
}

/// One getaddrinfo call on the blocking pool, at most [`MAX_LOOKUPS`] at a time.
async fn system_lookup(name: String) -> io::Result<Arc<[SocketAddr]>> {
    let permit = LOOKUPS.acquire().await.map_err(io::Error::other)?;
    let addrs = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let addrs = name.to_socket_addrs().map(distinct);
        addrs.map_err(|e| {
            if descriptors_left() {
                e
            } else {
                io::Error::from_raw_os_error(libc::EMFILE)
            }
        })
    })
    .await
    .map_err(io::Error::other)??;
    Ok(addrs.into())
}

/// An answer's addresses, each once, in the resolver's order: an address listed twice (in
/// /etc/hosts under two lines, or by a DNS server) would take two turns of the name's, and
/// be counted twice where a name's addresses are counted.
fn distinct(addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    addrs.filter(|addr| seen.insert(*addr)).collect()
}

/// Whether the process can still open a descriptor. getaddrinfo that could open neither
/// /etc/hosts nor a socket to the resolver says "Name or service not known" (glibc), not
/// EMFILE: the process's own trouble would pass for a name that does not exist. Asked only
/// after a lookup failed.
fn descriptors_left() -> bool {
    match std::fs::File::open("/dev/null") {
        Ok(_) => true,
        Err(e) => !out_of_descriptors(&e),
    }
}

/// A failed lookup's error for each request that waited for it: the OS error code kept where
/// there is one (the process out of descriptors is told apart by it), the words otherwise.
fn copy_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

/// Whether a failed lookup says the name does not exist (glibc's and musl's words for
/// EAI_NONAME and EAI_NODATA; the standard library keeps only the words): the resolver
/// answered, and an old address is no stand-in.
fn name_is_gone(error: &io::Error) -> bool {
    let text = error.to_string();
    [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
        "Name has no usable address",
    ]
    .iter()
    .any(|words| text.contains(words))
}

/// What a lookup gave, shared by everyone who waited for it (`io::Error` is not `Clone`).
type Answer = Result<Arc<[SocketAddr]>, Arc<io::Error>>;

/// The names looked up lately.
#[derive(Default)]
struct Names(Mutex<HashMap<String, Entry>>);

#[derive(Default)]
struct Entry {
    /// The last lookup's answer, and when it came.
    last: Option<(Answer, Instant)>,
    /// The last answer with addresses, and when it came; forgotten when the name is gone.
    good: Option<(Arc<[SocketAddr]>, Instant)>,
    /// The lookup in flight: it sends its answer here.
    pending: Option<watch::Receiver<Option<Answer>>>,
    asked: Option<Instant>,
    /// Connects to the name so far: where the next starts among its addresses.
    turn: usize,
    /// Its addresses that failed to take a connection lately.
    aside: Vec<Aside>,
    /// Tries of its addresses that failed in a row, whichever addresses, no answer between:
    /// as many as it has addresses, and it is as good as all failed. (Its addresses set aside
    /// alone would not say so while one was never tried: a hung pod retried after its
    /// cool-down takes the whole request, so the pod after it in turn may never be reached.)
    failed_in_a_row: usize,
}

/// An address set aside: until when, after how many failures in a row, and whether a
/// request is trying it again after its cool-down (the others still dial it last meanwhile).
struct Aside {
    addr: SocketAddr,
    /// When it was set aside, or its cool-down last renewed: a try that began before then was
    /// on its way with the one that did, and its failure says nothing new.
    since: Instant,
    until: Instant,
    failures: u32,
    retried: bool,
}

/// What a request for a name does now.
enum Plan {
    Answer(Answer),
    Wait(watch::Receiver<Option<Answer>>),
}

impl Entry {
    /// Every address back in turn, and no failure in a row counted.
    fn forget_failures(&mut self) {
        self.aside.clear();
        self.failed_in_a_row = 0;
    }

    fn recent_good(&self, now: Instant) -> Option<Arc<[SocketAddr]>> {
        let (addrs, at) = self.good.as_ref()?;
        (now - *at < STALE).then(|| addrs.clone())
    }
}

impl Names {
    async fn get<F, Fut>(self: &Arc<Self>, name: &str, lookup: F) -> io::Result<Arc<[SocketAddr]>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = io::Result<Arc<[SocketAddr]>>> + Send + 'static,
    {
        let answer = match self.plan(name, lookup) {
            Plan::Answer(answer) => answer,
            Plan::Wait(mut pending) => loop {
                if let Some(answer) = pending.borrow_and_update().clone() {
                    break answer;
                }
                if pending.changed().await.is_err() {
                    break Err(Arc::new(io::Error::other("the name lookup was lost")));
                }
            },
        };
        answer.map_err(|e| copy_error(&e))
    }

    /// An answer now (recent enough, or standing in while the name is looked up again), or
    /// the lookup to wait for, started if none is in flight.
    fn plan<F, Fut>(self: &Arc<Self>, name: &str, lookup: F) -> Plan
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = io::Result<Arc<[SocketAddr]>>> + Send + 'static,
    {
        let now = Instant::now();
        let mut names = lock(&self.0);
        // The name is copied only the first time it is asked for.
        if !names.contains_key(name) {
            names.insert(name.to_owned(), Entry::default());
        }
        let Some(entry) = names.get_mut(name) else {
            return Plan::Answer(Err(Arc::new(io::Error::other("name cache entry lost"))));
        };
        entry.asked = Some(now);
        match &entry.last {
            Some((Ok(addrs), at)) if now - *at < FRESH => return Plan::Answer(Ok(addrs.clone())),
            Some((Err(error), at)) if now - *at < FAILED => {
                return Plan::Answer(entry.recent_good(now).ok_or(error.clone()));
            }
            _ => {}
        }
        // A lookup whose task died (it cannot, short of a panic) is started again.
        let alive = (entry.pending.as_ref()).is_some_and(|pending| pending.has_changed().is_ok());
        let pending = match &entry.pending {
            Some(pending) if alive => pending.clone(),
            _ => {
                let pending = self.start(name, lookup);
                entry.pending = Some(pending.clone());
                pending
            }
        };
        match entry.recent_good(now) {
            Some(addrs) => Plan::Answer(Ok(addrs)),
            None => Plan::Wait(pending),
        }
    }

    /// Looks `name` up in a task of its own, which stores the answer when it comes.
    fn start<F, Fut>(self: &Arc<Self>, name: &str, lookup: F) -> watch::Receiver<Option<Answer>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = io::Result<Arc<[SocketAddr]>>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let looking = lookup(name.to_owned());
        let (names, name) = (Arc::clone(self), name.to_owned());
        tokio::spawn(async move {
            let answer = looking.await.map_err(Arc::new);
            names.store(&name, &answer);
            let _ = tx.send(Some(answer));
        });
        rx
    }

    fn store(&self, name: &str, answer: &Answer) {
        let now = Instant::now();
        let mut names = lock(&self.0);
        // The process out of descriptors says nothing about the name: not its answer for a
        // second, or every request for it would be refused that long after one frees up.
        if let Err(error) = answer {
            if out_of_descriptors(error) {
                if let Some(entry) = names.get_mut(name) {
                    entry.pending = None;
                }
                return;
            }
        }
        // Not one with a lookup in flight: its answer is awaited (a resolver stuck that long).
        names.retain(|_, entry| {
            entry.pending.is_some() || entry.asked.is_some_and(|at| now - at < FORGET)
        });
        let entry = names.entry(name.to_owned()).or_default();
        entry.pending = None;
        entry.last = Some((answer.clone(), now));
        match answer {
            Ok(addrs) => {
                // Down to one address: its failures are the backend's now (see `health`), and
                // a count kept here would double its cool-down the day the name grows again.
                if addrs.len() < 2 {
                    entry.forget_failures();
                }
                entry.good = Some((addrs.clone(), now));
            }
            Err(error) if name_is_gone(error) => entry.good = None,
            Err(error) => {
                if entry.recent_good(now).is_some() {
                    tracing::warn!(backend = name, %error, "backend name lookup failed; using its last answer (at most 60 s old)");
                }
            }
        }
    }
}

/// Makes `name` resolve to `addrs` for an hour of the test's clock, for tests elsewhere in the
/// crate (the system resolver here knows one address per name). The answer is dated an hour
/// ahead (a time in the future reads as just now), so no lookup of the name ever starts: the
/// system resolver's "no such name", arriving in real time while a test's clock is paused,
/// would take the addresses away between two requests of its own choosing.
#[cfg(test)]
pub(crate) fn seed(name: &str, addrs: &[SocketAddr]) {
    let dated = Instant::now() + Duration::from_secs(3600);
    let entry = Entry {
        last: Some((Ok(addrs.into()), dated)),
        good: Some((addrs.into(), dated)),
        asked: Some(Instant::now()),
        pending: None,
        turn: 0,
        aside: Vec::new(),
        failed_in_a_row: 0,
    };
    lock(&NAMES.0).insert(name.to_owned(), entry);
}

/// Makes `name`'s lookup one that never answers (a resolver down, dropping queries), for
/// tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn seed_stalled(name: &str) {
    let (never, pending) = watch::channel(None);
    // Kept for the life of the process: a lookup whose sender is gone counts as dead.
    std::mem::forget(never);
    let entry = Entry {
        pending: Some(pending),
        asked: Some(Instant::now()),
        ..Entry::default()
    };
    lock(&NAMES.0).insert(name.to_owned(), entry);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TEMPORARY: &str =
        "failed to lookup address information: Temporary failure in name resolution";
    const GONE: &str = "failed to lookup address information: Name or service not known";

    /// A resolver that counts its lookups and answers as scripted: a port, or an error's words;
    /// each answer comes `delay` after it is asked.
    #[derive(Clone)]
    struct Scripted(Arc<Script>);

    struct Script {
        asked: AtomicUsize,
        answers: Mutex<Vec<Result<u16, &'static str>>>,
        delay: Duration,
    }

    impl Scripted {
        fn new(answers: &[Result<u16, &'static str>], delay: Duration) -> Scripted {
            Scripted(Arc::new(Script {
                asked: AtomicUsize::new(0),
                answers: Mutex::new(answers.iter().rev().copied().collect()),
                delay,
            }))
        }

        fn lookup(&self) -> impl FnOnce(String) -> BoxedLookup {
            let script = self.0.clone();
            move |_name| {
                // Counted when asked, not when its task first runs.
                script.asked.fetch_add(1, Ordering::SeqCst);
                let next = script
                    .answers
                    .lock()
                    .unwrap()
                    .pop()
                    .expect("an unscripted lookup");
                Box::pin(async move {
                    tokio::time::sleep(script.delay).await;
                    match next {
                        Ok(port) => Ok(Arc::from([SocketAddr::from(([10, 0, 0, 1], port))])),
                        Err("EMFILE") => Err(io::Error::from_raw_os_error(libc::EMFILE)),
                        Err(words) => Err(io::Error::other(words)),
                    }
                })
            }
        }

        fn asked(&self) -> usize {
            self.0.asked.load(Ordering::SeqCst)
        }
    }

    type BoxedLookup =
        std::pin::Pin<Box<dyn Future<Output = io::Result<Arc<[SocketAddr]>>> + Send>>;

    async fn get(names: &Arc<Names>, resolver: &Scripted) -> Result<u16, String> {
        let got = names.get("svc:80", resolver.lookup()).await;
        got.map(|addrs| addrs[0].port()).map_err(|e| e.to_string())
    }

    /// Lets spawned lookups run to their end (time is paused: their delays pass at once).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test]
    async fn literals_skip_the_resolver_and_names_go_through_it() {
        let literal = resolve("[::1]:9001").await.unwrap();
        assert_eq!(&literal[..], ["[::1]:9001".parse().unwrap()]);
        let named = resolve("localhost:9001").await.unwrap();
        assert!(!named.is_empty());
        assert!(named
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9001));
    }

    #[test]
    fn an_address_answered_twice_is_kept_once_in_the_answers_order() {
        let [a, b]: [SocketAddr; 2] = ["10.0.0.2:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        assert_eq!(distinct([b, a, b, a, b].into_iter()), [b, a]);
    }

    #[test]
    fn a_name_that_does_not_exist_is_told_from_a_resolver_failure() {
        assert!(name_is_gone(&io::Error::other(GONE)));
        assert!(!name_is_gone(&io::Error::other(TEMPORARY)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_without_descriptors_is_no_answer_for_the_name() {
        let names: Arc<Names> = Arc::default();
        let resolver = Scripted::new(&[Err("EMFILE"), Ok(1)], FRESH);
        let failed = names.get("svc:80", resolver.lookup()).await.unwrap_err();
        assert!(out_of_descriptors(&failed), "{failed}");
        // Not remembered as the name's answer: the next request looks it up again at once.
        assert_eq!(get(&names, &resolver).await, Ok(1));
        assert_eq!(resolver.asked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_until_five_seconds_after_it_came() {
        let (names, resolver) = (Arc::default(), Scripted::new(&[Ok(1), Ok(2)], FRESH));
        // Five seconds to answer: counted from the answer, not the question.
        assert_eq!(get(&names, &resolver).await, Ok(1));
        tokio::time::advance(FRESH - Duration::from_millis(1)).await;
        assert_eq!(get(&names, &resolver).await, Ok(1));
        assert_eq!(resolver.asked(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        // Looked up again; meanwhile the last answer stands in.
        assert_eq!(get(&names, &resolver).await, Ok(1));
        assert_eq!(resolver.asked(), 2);
        settle().await;
        tokio::time::advance(FRESH).await;
        settle().await;
        assert_eq!(get(&names, &resolver).await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_during_a_lookup_share_it_and_one_that_gives_up_does_not_waste_it() {
        let (names, resolver) = (
            Arc::default(),
            Scripted::new(&[Ok(1)], Duration::from_secs(3)),
        );
        // The first request gives up before the answer (its connect share ran out).
        let gave_up = tokio::time::timeout(Duration::from_secs(1), get(&names, &resolver)).await;
        assert!(gave_up.is_err());
        // The next ones wait for the same lookup, which still lands.
        let (second, third) = tokio::join!(get(&names, &resolver), get(&names, &resolver));
        assert_eq!((second, third), (Ok(1), Ok(1)));
        assert_eq!(resolver.asked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolver_failure_is_covered_by_an_answer_up_to_a_minute_old() {
        let script = [Ok(1), Err(TEMPORARY), Err(TEMPORARY)];
        let (names, resolver) = (Arc::default(), Scripted::new(&script, Duration::ZERO));
        assert_eq!(get(&names, &resolver).await, Ok(1));
        tokio::time::advance(FRESH).await;
        assert_eq!(get(&names, &resolver).await, Ok(1));
        settle().await;
        // The failure is held a second, the old answer standing in: no lookup per request.
        assert_eq!(get(&names, &resolver).await, Ok(1));
        assert_eq!(resolver.asked(), 2);
        // A minute after the good answer came, the failure is the answer.
        tokio::time::advance(STALE - FRESH).await;
        let error = get(&names, &resolver).await.unwrap_err();
        assert!(error.contains("Temporary failure"), "{error}");
        assert_eq!(resolver.asked(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_no_longer_exists_is_believed_at_once() {
        let script = [Ok(1), Err(GONE), Ok(2)];
        let (names, resolver) = (Arc::default(), Scripted::new(&script, Duration::ZERO));
        assert_eq!(get(&names, &resolver).await, Ok(1));
        tokio::time::advance(FRESH).await;
        // The lookup that finds it gone runs while the old answer stands in...
        assert_eq!(get(&names, &resolver).await, Ok(1));
        settle().await;
        // ...and from its answer on, the old addresses are no stand-in.
        assert!(get(&names, &resolver).await.is_err());
        tokio::time::advance(FAILED).await;
        assert_eq!(get(&names, &resolver).await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_never_resolved_fails_and_is_looked_up_again_after_a_second() {
        let script = [Err(GONE), Ok(7)];
        let (names, resolver) = (Arc::default(), Scripted::new(&script, Duration::ZERO));
        assert!(get(&names, &resolver).await.is_err());
        assert!(get(&names, &resolver).await.is_err());
        assert_eq!(resolver.asked(), 1);
        tokio::time::advance(FAILED).await;
        assert_eq!(get(&names, &resolver).await, Ok(7));
    }

    /// A retry under way holds its address for the others until it ends, however long it
    /// takes within `hold` (a hung pod's retry takes the whole connect timeout): not claimed
    /// again a first cool-down later, which gave a hung pod a 504 each second under load.
    #[tokio::test(start_paused = true)]
    async fn a_retry_under_way_is_not_claimed_again_until_it_ends() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (a, b) = (addr(1), addr(2));
        let name = "retry-hold.test:9001";
        seed(name, &[a, b]);
        let (first, hold) = (Duration::from_secs(1), Duration::from_secs(5));
        let first_of = || in_turn(name, &[a, b], &[], first, hold).addrs[0];
        assert_eq!(set_aside(name, b, first, Instant::now()), Some(first));
        tokio::time::advance(first).await;
        assert_eq!(first_of(), b, "its retry");
        tokio::time::advance(first * 2).await;
        assert_eq!(first_of(), a, "the retry still under way");
        assert_eq!(first_of(), a);
        // The retry failed: aside for longer, its failures doubled.
        assert_eq!(set_aside(name, b, first, Instant::now()), Some(first * 2));
        tokio::time::advance(first * 2).await;
        assert_eq!(first_of(), b, "the next retry");
    }

    /// Tries failed in a row, as many as the name has addresses, make it all failed, though
    /// one address was never tried (the first retried instead); any answer starts the count
    /// again.
    #[tokio::test(start_paused = true)]
    async fn as_many_failures_in_a_row_as_addresses_are_all_failed() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let name = "in-a-row.test:9001";
        seed(name, &[a, b, c]);
        let first = Duration::from_secs(1);
        assert_eq!(set_aside(name, a, first, Instant::now()), Some(first));
        tokio::time::advance(first).await;
        assert_eq!(
            in_turn(name, &[a, b, c], &[], first, first).addrs[0],
            a,
            "retried"
        );
        assert_eq!(set_aside(name, a, first, Instant::now()), Some(first * 2));
        assert!(!all_failed(name), "two tries of three addresses");
        assert_eq!(set_aside(name, b, first, Instant::now()), Some(first));
        assert!(all_failed(name), "three in a row, c never tried");
        assert!(!answered(name, c));
        assert!(!all_failed(name), "c answered");
        // Addresses the name no longer has are forgotten, and their failures with them.
        assert_eq!(
            set_aside(name, a, first, Instant::now()),
            None,
            "still aside"
        );
        assert_eq!(
            set_aside(name, b, first * 4, Instant::now()),
            None,
            "still aside"
        );
        tokio::time::advance(first * 8).await;
        assert_eq!(set_aside(name, a, first, Instant::now()), Some(first * 4));
        assert_eq!(set_aside(name, b, first, Instant::now()), Some(first * 2));
        assert!(!all_failed(name), "two in a row of three");
        assert_eq!(in_turn(name, &[c], &[], first, first).addrs, [c]);
        assert_eq!(set_aside(name, c, first, Instant::now()), Some(first));
        assert!(!all_failed(name), "a and b gone: one failure in a row");
    }

    /// A try that was on its way when its address was set aside (a hung pod's next request,
    /// sent before the first one's 504 came) adds nothing when it fails, even after the
    /// cool-down: no longer cool-down, no failure in a row, and the retry still to come.
    #[tokio::test(start_paused = true)]
    async fn a_try_begun_before_its_address_was_set_aside_adds_nothing() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (a, b) = (addr(1), addr(2));
        let name = "on-its-way.test:9001";
        seed(name, &[a, b]);
        let first = Duration::from_secs(1);
        let (one, two) = (Instant::now(), Instant::now() + first);
        tokio::time::advance(first * 5).await;
        assert_eq!(set_aside(name, a, first, one), Some(first));
        tokio::time::advance(first * 2).await;
        assert_eq!(set_aside(name, a, first, two), None, "begun before");
        assert!(!all_failed(name), "one failure of two addresses");
        assert_eq!(
            in_turn(name, &[a, b], &[], first, first).addrs[0],
            a,
            "its retry"
        );
        assert_eq!(set_aside(name, a, first, Instant::now()), Some(first * 2));
        assert!(all_failed(name), "two in a row");
        forget_aside([name]);
        assert!(!all_failed(name), "forgotten");
    }

    /// One address of three set aside: dialed last, the other two first by turns; once its
    /// cool-down is over, the next request retries it first while the others still dial it
    /// last; failing again doubles
    /// its cool-down, and an answer puts it back in turn.
    #[tokio::test(start_paused = true)]
    async fn a_set_aside_address_is_dialed_last_then_retried_by_one_request() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let name = "set-aside.test:9001";
        seed(name, &[a, b, c]);
        let all = [a, b, c];
        let first = Duration::from_secs(1);
        let order = |gone: &[SocketAddr]| in_turn(name, &all, gone, first, first).addrs;
        assert_eq!(order(&[]), [a, b, c], "turn 0");
        assert_eq!(set_aside(name, b, first, Instant::now()), Some(first));
        // A try of it that was on its way adds nothing.
        assert_eq!(set_aside(name, b, first, Instant::now()), None);
        // The others take turns: b's turn is not handed to c, the address after it.
        assert_eq!(order(&[]), [c, a, b], "turn 1, b last");
        assert_eq!(order(&[]), [a, c, b], "turn 2, b last");
        tokio::time::advance(first).await;
        assert_eq!(order(&[]), [b, c, a], "turn 3: b retried first");
        assert_eq!(order(&[]), [a, c, b], "turn 4: still last for the others");
        assert_eq!(
            set_aside(name, b, first, Instant::now()),
            Some(first * 2),
            "its retry failed"
        );
        assert!(answered(name, b));
        assert!(!is_aside(name, b), "answered: back in turn");
        assert_eq!(order(&[]), [c, a, b], "turn 5: in turn with the others");
        assert_eq!(order(&[a]), [b, c], "turn 6: gone addresses left out");
        // Setting aside turned off by a reload: forgotten, not waiting for a request.
        assert_eq!(set_aside(name, c, first, Instant::now()), Some(first));
        forget_aside([name]);
        assert_eq!(order(&[]), [b, c, a], "turn 7: c in turn");
    }
}
