//! Connecting to one backend: its name resolved, its addresses dialed from the next in turn
//! (see `resolve`), raced as RFC 8305 races them (see `race`), and those that fail to take a
//! connection set aside for a cool-down, so a name's dead pod is dialed last meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Timing;
use crate::error::out_of_descriptors;
use crate::load::{Busy, Loads};
use crate::race::{Event, Race};

/// How far one backend's connect has got, for the race across backends to judge it by: when
/// its latest address was dialed (µs after the connect began, plus one; 0: none yet, its
/// name still being resolved), and whether that was its last.
#[derive(Debug)]
pub(super) struct Progress {
    began: tokio::time::Instant,
    dialed: AtomicU64,
    /// Every address of the name was set aside when it was ordered (see [`Dial`]).
    all_aside: AtomicBool,
    /// The connect is dropped for the process's own trouble (out of descriptors): its
    /// addresses are not to blame (see [`Unanswered`]).
    disarmed: AtomicBool,
    /// Addresses set aside as the connect was dropped unanswered (see [`Unanswered`]), for
    /// the metrics when another backend took the request.
    silent: AtomicU32,
    /// How its tries failed so far, but for one that is the connect's own error (see
    /// [`Progress::earlier`]).
    failed: std::sync::Mutex<Vec<std::io::ErrorKind>>,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            began: tokio::time::Instant::now(),
            dialed: AtomicU64::new(0),
            all_aside: AtomicBool::new(false),
            disarmed: AtomicBool::new(false),
            silent: AtomicU32::new(0),
            failed: std::sync::Mutex::default(),
        }
    }

    /// How its tries failed, taken for the metrics: those before an address that answered
    /// (the request never sees them), before the last when all failed (the connect's error
    /// is the last one's), or before the connect was dropped (another backend answered, or
    /// the time ran out). A route's only address dialed three times, or a name's three
    /// addresses each refusing, are three failed connects, not one.
    pub(super) fn earlier(&self) -> Vec<std::io::ErrorKind> {
        std::mem::take(&mut *self.failures())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Vec<std::io::ErrorKind>> {
        crate::sync::lock(&self.failed)
    }

    fn dialed(&self, last: bool) {
        let since = self.began.elapsed().as_micros();
        let at = u64::try_from(since).unwrap_or(u64::MAX >> 2) + 1;
        self.dialed
            .store(at << 1 | u64::from(last), Ordering::Relaxed);
    }

    /// Whether no address has been dialed yet: its name is still being looked up.
    pub(super) fn looking_up(&self) -> bool {
        self.dialed.load(Ordering::Relaxed) == 0
    }

    /// Whether it has waited on its name's lookup for `delay` or more: a resolver that has not
    /// answered in that long (queries dropped, CoreDNS down) will most often not answer within
    /// the request's time, and each request meeting the lookup in flight would wait `delay`.
    pub(super) fn lookup_stalled_for(&self, delay: Duration) -> bool {
        self.looking_up() && self.began.elapsed() >= delay
    }

    /// How many of its addresses were set aside as it was dropped unanswered.
    pub(super) fn silent(&self) -> u32 {
        self.silent.load(Ordering::Relaxed)
    }

    pub(super) fn disarm(&self) {
        self.disarmed.store(true, Ordering::Relaxed);
    }

    /// Whether every address has been dialed, the last at least `delay` ago; or the name's
    /// addresses had all failed lately, and the connect has been under way that long.
    pub(super) fn silent_for(&self, delay: Duration) -> bool {
        if self.all_aside.load(Ordering::Relaxed) && self.began.elapsed() >= delay {
            return true;
        }
        let state = self.dialed.load(Ordering::Relaxed);
        let (at, last) = (state >> 1, state & 1 == 1);
        if at == 0 || !last {
            return false;
        }
        let dialed_at = self.began + Duration::from_micros(at - 1);
        dialed_at.elapsed() >= delay
    }
}

/// The time one backend's connect has.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    /// The end of its share of the request's time: its addresses split that, each giving way
    /// to the next at the end of its own share.
    pub(super) until: tokio::time::Instant,
    /// The end of the request's time, which a connect may go on using past its share when
    /// nothing is left to try in its place (see [`crate::race::Event::Expired`]).
    pub(super) deadline: tokio::time::Instant,
}

/// Connects to one of `backend`'s addresses within `window`, but for the `gone` ones, starting
/// at each in turn, those that failed lately last (see [`crate::resolve::in_turn`]). Each
/// address gets an equal share of the time left, like each backend, and the next is dialed
/// beside one unanswered for `timing.attempt_delay`: a name whose first address is blackholed
/// (a pod on a node that is gone, or an IPv6 address without a route to it on a dual-stack
/// cluster) must not use up the time its next, working, address needed. `None` if every
/// address is among the `gone` ones. `alone`: the backend is its route's only one (see
/// [`connect_one`]).
pub(super) async fn connect(
    backend: &str,
    gone: Vec<SocketAddr>,
    window: Window,
    timing: Timing,
    alone: bool,
    progress: Arc<Progress>,
    counting: Counting<'_>,
) -> std::io::Result<Option<Dialed>> {
    // Resolution failures carry no kind of their own (getaddrinfo's are "uncategorized"):
    // mark them NotFound, as a name that resolves to nothing is; but the process out of
    // descriptors stays what it is (a 503, not the backend's fault).
    let addrs = crate::resolve::resolve(backend).await.map_err(|e| {
        if out_of_descriptors(&e) {
            e
        } else {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot resolve the name: {e}"),
            )
        }
    })?;
    let mut dial = Dial {
        backend: None,
        timing,
        progress: &progress,
        split: true,
        loads: Some(counting.loads),
    };
    // One address (an IP, a Service's cluster IP) is the common case: nothing to order, and
    // its failures are the backend's (see `health`).
    if let ([addr], true) = (&addrs[..], gone.is_empty()) {
        // One count for the address, however many times it is dialed beside itself.
        let busy = dial
            .loads
            .take()
            .map(|loads| Busy::on(&loads.lock().at(*addr)));
        let dialed = connect_one(*addr, window, dial, alone).await?;
        return Ok(Some(Dialed { busy, ..dialed }));
    }
    let mut order =
        crate::resolve::in_turn(backend, &addrs, &gone, timing.cooldown, timing.timeout);
    if order.addrs.is_empty() {
        return Ok(None);
    }
    if counting.fewest_first {
        // Least-connections among the name's addresses (a headless Service's pods), ties in
        // turn (the sort is stable); one tried again after its cool-down still first, those
        // set aside still last. Each count read once: they fall as tunnels end, without the
        // lock, and a sort whose keys change under it may panic.
        let loads = counting.loads.lock();
        if let Some(in_turn) = order.addrs.get_mut(order.in_turn.clone()) {
            in_turn.sort_by_cached_key(|addr| loads.now_at(*addr));
        }
    }
    dial.backend = Some(backend);
    progress.all_aside.store(order.all_aside, Ordering::Relaxed);
    connect_any(&order.addrs, window, dial).await.map(Some)
}

/// Connections [`connect_one`] may dial to a single address: with one pod of three dead
/// behind it, one request in 27 meets it each time, rather than one in three. Bounded, as
/// a server that is simply slow to answer gets each of them.
const SINGLE_ADDRESS_TRIES: usize = 3;

/// Connects to a backend's single address: an IP, or its name's only one, which is often a
/// Service's cluster IP or a load balancer's, passing each new connection on to one of the
/// pods behind it. So a route's only backend (nothing else to race it against) gets another
/// connection beside one unanswered for the attempt delay, or at once after a refusal: it
/// may reach a live pod where the first met a dead one (its node gone, and not yet out of
/// the Service's endpoints). At most [`SINGLE_ADDRESS_TRIES`]; with racing off, one, with
/// all the time. For the same reason, the route's only backend is dialed again after a
/// close before answering ([`Dialed::redial`]).
async fn connect_one(
    addr: SocketAddr,
    window: Window,
    dial: Dial<'_>,
    alone: bool,
) -> std::io::Result<Dialed> {
    if !alone {
        return connect_any(&[addr], window, dial).await;
    }
    let dialed = if dial.timing.attempt_delay.is_zero() {
        connect_any(&[addr], window, dial).await?
    } else {
        // Each with all the time: they are to run beside each other, not to take turns (with
        // an attempt delay over a third of the time, thirds would drop each before the next
        // began).
        let dial = Dial {
            split: false,
            ..dial
        };
        connect_any(&[addr; SINGLE_ADDRESS_TRIES], window, dial).await?
    };
    // The same address is no further one to go on to after a close before answering, but
    // it may be dialed again: a pod behind a cluster IP that is shutting down closes the
    // connections it had accepted, and the next one goes to another.
    Ok(Dialed {
        further: 0,
        redial: true,
        ..dialed
    })
}

/// How one backend's addresses are dialed.
#[derive(Clone, Copy)]
struct Dial<'a> {
    /// The name, if its addresses' failures (and answers) are noted one by one (it has
    /// several).
    backend: Option<&'a str>,
    timing: Timing,
    progress: &'a Progress,
    /// Whether the addresses split the window's time among them; if not (the same address
    /// dialed again), each may use all of it.
    split: bool,
    /// Where each address's open connections are counted: each connect counts in its
    /// address's from its start on (`None`: not counted).
    loads: Option<&'a Loads>,
}

/// How a backend's connections are counted at their addresses: in `loads`, always (a route
/// that balances by them must see every route's connections, and those made while the name
/// had one address); and whether its addresses are dialed fewest first (least-connections).
#[derive(Clone, Copy)]
pub(super) struct Counting<'a> {
    pub(super) loads: &'a Loads,
    pub(super) fewest_first: bool,
}

impl Dial<'_> {
    /// The time the next of `remaining` addresses has, and when it is to give way to the
    /// next: see [`Window`]. Past the window's share (this backend kept on as the route's
    /// last hope, or its name slow to resolve), the addresses split what is left of the
    /// request's time instead of nothing.
    fn share(&self, window: Window, remaining: usize) -> Duration {
        let now = tokio::time::Instant::now();
        let until = match window.until > now {
            true => window.until,
            false => window.deadline,
        };
        share_of(until, if self.split { remaining } else { 1 })
    }

    /// Notes that a connect to `addr` that `began` then failed (its name has others to dial
    /// meanwhile).
    fn failed(&self, addr: SocketAddr, began: tokio::time::Instant, error: &dyn std::fmt::Display) {
        if let Some(backend) = self.backend {
            set_aside(backend, addr, self.timing.cooldown, began, error);
        }
    }
}

/// Sets `backend`'s address `addr` aside for a cool-down (see [`crate::resolve::set_aside`]),
/// and says so when that is news: one of a name's several addresses failed.
pub(super) fn set_aside(
    backend: &str,
    addr: SocketAddr,
    cooldown: Duration,
    began: tokio::time::Instant,
    error: &dyn std::fmt::Display,
) {
    if cooldown.is_zero() {
        return;
    }
    if let Some(cool_down) = crate::resolve::set_aside(backend, addr, cooldown, began) {
        tracing::warn!(
            backend,
            %addr,
            %error,
            "backend address set aside for {cool_down:?}: the name's other addresses are dialed first until it is tried again"
        );
    }
}

/// `backend`'s address `addr` answered the upgrade (a connect alone is no answer: a hung
/// pod takes connections): back in turn if it was set aside.
pub(super) fn answered(backend: &str, addr: SocketAddr) {
    if crate::resolve::answered(backend, addr) {
        tracing::info!(backend, %addr, "backend address answers again; back in turn");
    }
}

/// Connects to the first of `addrs` that answers, each in its share of the window, the next
/// dialed beside one unanswered for the attempt delay (see [`crate::race`]); the last ones
/// dialed may go on to the window's deadline. Notes each address's failures and answers (see
/// [`Dial`]).
async fn connect_any(
    addrs: &[SocketAddr],
    window: Window,
    dial: Dial<'_>,
) -> std::io::Result<Dialed> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "name resolved to no address");
    let count = addrs.len();
    let delay = dial.timing.attempt_delay;
    // What each address would get if every one were slow: one whose share came to much less
    // (those before it took the rest) is not to blame when it runs out.
    let fair_share = dial.share(window, count);
    let mut race = Unanswered {
        race: Race::new(delay),
        dial,
    };
    let mut next = 0;
    // Whether `last` is among the failures noted in `progress` (one cut short is not).
    let mut last_counted = false;
    loop {
        // None started with no time left: it could only connect for a request given up.
        let time_left = tokio::time::Instant::now() < window.deadline;
        if race.race.wants_another() && next < count && time_left {
            let share = dial.share(window, count - next);
            let addr = addrs[next];
            let connecting = tokio::time::timeout_at(window.deadline, TcpStream::connect(addr));
            let began = tokio::time::Instant::now();
            let busy = dial.loads.map(|loads| Busy::on(&loads.lock().at(addr)));
            race.race
                .start((addr, share, began, busy), connecting, began + share);
            next += 1;
            dial.progress.dialed(next == count);
        }
        if race.race.is_empty() {
            // The last failure is the connect's error; those before it are the tries' own.
            if last_counted {
                dial.progress.failures().pop();
            }
            return Err(last);
        }
        let more = next < count && time_left;
        // `None`: out of time, its share's or the request's.
        let ((addr, share, began, busy), connected) = match race.race.next(more).await {
            Event::Start => continue,
            Event::Ended(tag, connected) => (tag, connected.ok()),
            Event::Expired(tag) => (tag, None),
        };
        match connected {
            Some(Ok(socket)) => {
                let dialed = won(&race, socket, addr, count - next);
                return Ok(Dialed { busy, ..dialed });
            }
            Some(Err(e)) if out_of_descriptors(&e) => {
                dial.progress.disarm();
                return Err(e);
            }
            Some(Err(e)) => {
                dial.failed(addr, began, &e);
                dial.progress.failures().push(e.kind());
                (last, last_counted) = (e, true);
            }
            None => {
                last = no_answer();
                // One whose share was cut short (or came to nothing) is not to blame.
                last_counted = !share.is_zero() && share >= fair_share / 2;
                if last_counted {
                    (dial.progress.failures()).push(std::io::ErrorKind::TimedOut);
                    dial.failed(addr, began, &last);
                }
            }
        }
        race.race.failed();
    }
}

/// `addr` answered the connect first: the socket, with what is left to go on to if it closes
/// before answering — the addresses `untried` (how many), and those given up on here before
/// they had waited the attempt delay (the others are set aside as the race ends, and would
/// only be waited on again) — and the failures it hides.
fn won<F: std::future::Future>(
    race: &Unanswered<'_, F>,
    socket: TcpStream,
    addr: SocketAddr,
    untried: usize,
) -> Dialed {
    crate::socket::tune(&socket, addr);
    let delay = race.dial.timing.attempt_delay;
    let now = tokio::time::Instant::now();
    let cut_off = (race.race.under_way()).filter(|(_, began)| now - *began < delay);
    let further = untried + cut_off.count();
    // Those left unanswered for the delay count as silent (see [`Unanswered`]): another
    // address's, or the same address's tries through a cluster IP that met a dead pod (or a
    // connect slower than the delay it is set to exceed).
    let silent = (race.race.under_way()).filter(|(_, b)| now - *b >= delay);
    let mut hidden = race.dial.progress.earlier();
    if !delay.is_zero() {
        hidden.extend(silent.map(|_| std::io::ErrorKind::TimedOut));
    }
    Dialed {
        socket,
        addr,
        further,
        redial: false,
        several: race.dial.backend.is_some(),
        hidden,
        busy: None,
    }
}

/// A name's addresses racing to connect. However the race ends (an address answered,
/// another backend did, the request ran out of time or went), the addresses still unanswered
/// after the attempt delay are as good as silent, and are set aside (see [`Dial::failed`]).
struct Unanswered<'d, F: std::future::Future> {
    /// Each connect's address, its share of the time, when it began, and its count in the
    /// address's open connections.
    race: Race<(SocketAddr, Duration, tokio::time::Instant, Option<Busy>), F>,
    dial: Dial<'d>,
}

impl<F: std::future::Future> Drop for Unanswered<'_, F> {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        let delay = self.dial.timing.attempt_delay;
        // Without a delay, nothing was raced: an address still dialing has had no time of its
        // own to answer in (the request went, or ran out of time).
        if delay.is_zero() || self.dial.progress.disarmed.load(Ordering::Relaxed) {
            return;
        }
        for (&(addr, _, _, _), began) in self.race.under_way() {
            if now - began >= delay && self.dial.backend.is_some() {
                let error = "no answer to the connect, while another address or backend answered";
                self.dial.failed(addr, began, &error);
                self.dial.progress.silent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A backend connection, the address it went to, and how many addresses the name has after
/// it (to go on to if this one closes before answering).
#[derive(Debug)]
pub(super) struct Dialed {
    pub(super) socket: TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) further: usize,
    /// Whether `addr` itself may be dialed again if it closes before answering: the route's
    /// only backend at a single address (see [`connect_one`]), where the next connection may
    /// reach another server behind it.
    pub(super) redial: bool,
    /// Whether `addr` is one of the name's several addresses, whose failures are its own (set
    /// aside, rather than the name put aside), and whose answer is noted ([`answered`]).
    pub(super) several: bool,
    /// How the connects to the name's other addresses (or the same one, see
    /// [`connect_one`]) failed before this one answered: the request never sees those
    /// failures, so they are counted for the operator (a headless Service's dead pod).
    pub(super) hidden: Vec<std::io::ErrorKind>,
    /// The connection, counted in `addr`'s open connections.
    pub(super) busy: Option<Busy>,
}

impl Dialed {
    /// Whether the name has an address after this one.
    pub(super) fn more(&self) -> bool {
        self.further > 0
    }
}

/// An equal share of the time left until `deadline` for each of `remaining` tries (the last
/// one gets all of it).
pub(super) fn share_of(deadline: tokio::time::Instant, remaining: usize) -> Duration {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    left / u32::try_from(remaining).unwrap_or(u32::MAX).max(1)
}

pub(super) fn no_answer() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connect")
}

/// A connect whose time ran out before its name's lookup answered: the resolver's stall
/// (a DNS server down or dropping queries), not the backend's, and its line says so.
pub(super) fn lookup_unanswered() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "name lookup did not answer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::tests::{
        answering_backend, first_syn_dropped, listen_overflows, timing, Unreachable,
    };

    /// A connect to a route's only backend, `backend`, that fails: its error.
    async fn connect_alone(
        backend: &str,
        window: Window,
        timing: Timing,
        progress: &Arc<Progress>,
    ) -> std::io::Error {
        let progress = progress.clone();
        let connecting = connect(
            backend,
            Vec::new(),
            window,
            timing,
            true,
            progress,
            uncounted(),
        );
        connecting.await.unwrap_err()
    }

    /// Counted where no one reads the counts.
    fn uncounted() -> Counting<'static> {
        static LOADS: std::sync::LazyLock<Loads> = std::sync::LazyLock::new(Loads::default);
        Counting {
            loads: &LOADS,
            fewest_first: false,
        }
    }

    /// A name's first address silent (its SYNs dropped: a listen queue of one, filled), its
    /// second working: the second is reached within the time, not after it. One at a time,
    /// after the first's share of the time; raced, after `attempt_delay`.
    #[tokio::test(start_paused = true)]
    async fn a_silent_address_leaves_time_for_the_next_one() {
        let silent = Unreachable::start();
        let working = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let working_addr = working.local_addr().unwrap();
        let addrs = [silent.addr, working_addr];

        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let progress = Progress::new();
        let dialed = connect_any(
            &addrs,
            whole(deadline),
            dial_with(Duration::ZERO, &progress),
        )
        .await
        .unwrap();
        assert_eq!(dialed.socket.peer_addr().unwrap(), working_addr);
        assert_eq!((dialed.addr, dialed.more()), (working_addr, false));
        // The silent one's failure, hidden from the request, is there to be counted.
        assert_eq!(dialed.hidden, [std::io::ErrorKind::TimedOut]);
        // The silent address had its half of the time, and the working one got through in
        // the other half.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2500), "{took:?}");
        assert!(tokio::time::Instant::now() < deadline);

        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let delay = Duration::from_millis(250);
        let dialed = connect_any(&addrs, whole(deadline), dial_with(delay, &progress))
            .await
            .unwrap();
        assert_eq!(dialed.addr, working_addr);
        // Dialed beside the silent one once it had gone unanswered for the delay; the silent
        // one, given up on after waiting that long, is none to go on to.
        let took = start.elapsed();
        assert!(
            took >= delay && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert!(!dialed.more());
        assert_eq!(dialed.hidden, [std::io::ErrorKind::TimedOut], "left silent");

        // A refusal before an answer is hidden too; an answer at once hides nothing.
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused_addr = refused.local_addr().unwrap();
        drop(refused);
        let addrs = [refused_addr, working_addr];
        let dialed = connect_any(&addrs, whole(deadline), dial_with(delay, &progress))
            .await
            .unwrap();
        assert_eq!(dialed.hidden, [std::io::ErrorKind::ConnectionRefused]);
        let dialed = connect_any(
            &[working_addr],
            whole(deadline),
            dial_with(delay, &progress),
        )
        .await
        .unwrap();
        assert!(dialed.hidden.is_empty());

        let deadline = start + Duration::from_secs(6);
        let error = connect_any(&[silent.addr], whole(deadline), dial_with(delay, &progress))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    /// A route's only backend, at a single address that passes each new connection on to a
    /// pod of its own (a Service's cluster IP): another connection, dialed beside a first
    /// left unanswered, gets through where the first met a dead pod. Here the first SYN finds
    /// the listen queue full (dropped, and sent again only after a second, past the deadline)
    /// and the second finds room. A backend beside others is raced against them instead.
    #[tokio::test]
    async fn a_single_address_is_dialed_again_beside_an_unanswered_connect() {
        for alone in [true, false] {
            let silent = Unreachable::start();
            let dropped = listen_overflows();
            // Tries at 0, 300 and 600 ms: room made by 600 ms lets one in; the first try's
            // own SYN, sent again at 1 s, comes after the deadline.
            let timing = timing(Duration::from_millis(900), Duration::from_millis(300));
            let deadline = tokio::time::Instant::now() + timing.timeout;
            let backend = silent.addr.to_string();
            let progress = Arc::new(Progress::new());
            let connecting = tokio::spawn(async move {
                connect(
                    &backend,
                    Vec::new(),
                    whole(deadline),
                    timing,
                    alone,
                    progress,
                    uncounted(),
                )
                .await
            });
            // The first SYN dropped; then the queue is given room.
            first_syn_dropped(silent.addr, dropped).await;
            silent.make_room();
            let connected = connecting.await.unwrap();
            if alone {
                let dialed = connected.unwrap().unwrap();
                assert_eq!((dialed.addr, dialed.more()), (silent.addr, false));
            } else {
                let error = connected.unwrap_err();
                assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
            }
        }
    }

    /// A route's only backend refusing: dialed again at once after each refusal, three
    /// times; the connect's error is the last refusal, and the two before it are kept for
    /// the metrics (three failed connects, not one).
    #[tokio::test]
    async fn each_refused_try_of_a_lone_address_is_kept_for_the_metrics() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = refused.local_addr().unwrap().to_string();
        drop(refused);
        let timing = timing(Duration::from_secs(5), Duration::from_millis(250));
        let progress = Arc::new(Progress::new());
        let window = whole(tokio::time::Instant::now() + timing.timeout);
        let error = connect_alone(&backend, window, timing, &progress).await;
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        let refusal = std::io::ErrorKind::ConnectionRefused;
        assert_eq!(progress.earlier(), [refusal; SINGLE_ADDRESS_TRIES - 1]);
    }

    /// A route's only address dialed again with an attempt delay over a third of the time:
    /// the tries run beside each other, each with all the time, rather than each dropped at
    /// a third of it before the next begins (which would fail any connect slower than that).
    #[tokio::test(start_paused = true)]
    async fn dialing_one_address_again_does_not_split_the_time() {
        let silent = Unreachable::start();
        let timing = timing(Duration::from_millis(900), Duration::from_millis(400));
        let start = tokio::time::Instant::now();
        let progress = Arc::new(Progress::new());
        let window = whole(start + timing.timeout);
        let backend = silent.addr.to_string();
        let error = connect_alone(&backend, window, timing, &progress).await;
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), timing.timeout);
        // The third began at 800 ms, two delays in: none of the first two was given up.
        let state = progress.dialed.load(Ordering::Relaxed);
        assert_eq!(state & 1, 1, "the last try was dialed");
        assert_eq!(
            Duration::from_micros((state >> 1) - 1),
            2 * timing.attempt_delay
        );
    }

    /// Nothing is dialed once the time is up: a try started at the deadline could only
    /// connect for a request already answered 504. (An attempt delay longer than the time:
    /// the first try alone, to the end.)
    #[tokio::test(start_paused = true)]
    async fn no_try_starts_once_the_time_is_up() {
        let silent = Unreachable::start();
        let timing = timing(Duration::from_secs(1), Duration::from_secs(2));
        let progress = Arc::new(Progress::new());
        let window = whole(tokio::time::Instant::now() + timing.timeout);
        let backend = silent.addr.to_string();
        let error = connect_alone(&backend, window, timing, &progress).await;
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        // One dial, at 0 µs (stored plus one), and not the last of the three tries.
        assert_eq!(progress.dialed.load(Ordering::Relaxed), 1 << 1);
    }

    /// A name resolved only after its backend's share of the time ran out (a slow lookup,
    /// the other backends failed meanwhile): its addresses split what is left of the
    /// request's time, rather than each being given up at once, and blamed, for a share of
    /// nothing.
    #[tokio::test(start_paused = true)]
    async fn addresses_dialed_past_the_backends_share_split_the_time_left() {
        let silent = Unreachable::start();
        let (live, _answering) = answering_backend().await;
        let start = tokio::time::Instant::now();
        let window = Window {
            until: start,
            deadline: start + Duration::from_secs(5),
        };
        let progress = Progress::new();
        let dial = dial_with(Duration::ZERO, &progress);
        let dialed = connect_any(&[silent.addr, live], window, dial)
            .await
            .unwrap();
        assert_eq!(dialed.addr, live);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(2500),
            "half of what was left"
        );
    }

    /// The whole time to `deadline`, as for a route's only backend.
    fn whole(deadline: tokio::time::Instant) -> Window {
        Window {
            until: deadline,
            deadline,
        }
    }

    /// Dialing addresses of no name, with this attempt delay.
    fn dial_with(attempt_delay: Duration, progress: &Progress) -> Dial<'_> {
        let timing = timing(Duration::from_secs(5), attempt_delay);
        Dial {
            backend: None,
            timing,
            progress,
            split: true,
            loads: None,
        }
    }

    /// With no attempt delay nothing is raced: a connect dropped while its address is still
    /// dialing (the request gone, or out of time) blames no address.
    #[tokio::test(start_paused = true)]
    async fn without_a_delay_a_dropped_connect_sets_no_address_aside() {
        let silent = Unreachable::start();
        let (live, _answering) = answering_backend().await;
        let name = "dropped-while-dialing.test:9001".to_string();
        let addrs = [silent.addr, live];
        crate::resolve::seed(&name, &addrs);
        let timing = timing(Duration::from_secs(5), Duration::ZERO);
        let deadline = tokio::time::Instant::now() + timing.timeout;
        let connecting = connect(
            &name,
            Vec::new(),
            whole(deadline),
            timing,
            true,
            Arc::new(Progress::new()),
            uncounted(),
        );
        let dropped = tokio::time::timeout(Duration::from_millis(100), connecting).await;
        assert!(
            dropped.is_err(),
            "the silent address is dialed first, alone"
        );
        assert!(!crate::resolve::is_aside(&name, silent.addr));
    }
}
