//! Backend names to addresses. An IP literal is its own address; a name goes through the
//! system resolver (getaddrinfo, which blocks, so on tokio's blocking pool, a bounded number at
//! a time), and its answer is reused for a few seconds.
//!
//! Why a cache: a reconnect storm (a load balancer failing over, a deploy) brings thousands of
//! upgrades a second, and asking the resolver for each would queue them behind a few dozen
//! lookups, through cluster DNS with its search domains, and turn a healthy backend into
//! 504s. So a name is asked at most once per [`FRESH`], requests for a name whose lookup is in
//! flight wait for that lookup rather than starting their own, and a failed lookup falls back
//! on the name's last answer if it is at most [`STALE`] old, so that a resolver blip
//! (CoreDNS restarting) does not fail upgrades to backends that are up. getaddrinfo gives no
//! TTL; five seconds is what Envoy re-resolves at by default, short beside a Kubernetes
//! endpoint change.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

/// How long a name's answer is used without asking again.
const FRESH: Duration = Duration::from_secs(5);
/// How long after it was asked a name's last answer stands in for a failed lookup.
const STALE: Duration = Duration::from_secs(60);
/// How long a failed lookup's error is the answer: one lookup a second per name while the
/// resolver is down, not one per request.
const FAILED: Duration = Duration::from_secs(1);

/// Name lookups in flight at once. getaddrinfo blocks a thread of tokio's blocking pool until
/// the resolver answers, even after the request that asked has given up; unbounded, a slow
/// resolver under load would take the whole pool, and the reloads that need it too.
const MAX_LOOKUPS: usize = 32;
static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

static NAMES: LazyLock<Names> = LazyLock::new(Names::default);

/// The addresses of a `host:port` backend: an IP literal at once, a name from the cache or
/// through the system resolver.
pub(crate) async fn resolve(backend: &str) -> io::Result<Arc<[SocketAddr]>> {
    if let Ok(addr) = backend.parse::<SocketAddr>() {
        return Ok(Arc::new([addr]));
    }
    NAMES.get(backend, system_lookup).await
}

/// One getaddrinfo call on the blocking pool, at most [`MAX_LOOKUPS`] at a time.
async fn system_lookup(name: String) -> Lookup {
    let permit = LOOKUPS.acquire().await.map_err(io::Error::other)?;
    let addrs = tokio::task::spawn_blocking(move || {
        // Held until the resolver answers, however long after the caller gave up.
        let _permit = permit;
        name.to_socket_addrs().map(Iterator::collect::<Vec<_>>)
    })
    .await
    .map_err(io::Error::other)??;
    Ok(addrs.into())
}

type Lookup = io::Result<Arc<[SocketAddr]>>;

/// What a lookup gave, shared by everyone who waited for it (`io::Error` is not `Clone`).
type Answer = Result<Arc<[SocketAddr]>, Arc<io::Error>>;

/// The names asked so far (those of backends configured since start: a bounded set).
#[derive(Default)]
struct Names(Mutex<HashMap<String, Entry>>);

struct Entry {
    /// The latest lookup, perhaps still in flight.
    latest: Arc<OnceCell<Answer>>,
    asked: Instant,
    /// The last answer that had addresses, and when it was asked.
    good: Option<(Arc<[SocketAddr]>, Instant)>,
}

impl Entry {
    /// Whether the latest lookup can still be used (or waited for).
    fn usable(&self) -> bool {
        match self.latest.get() {
            None => true,
            Some(Ok(_)) => self.asked.elapsed() < FRESH,
            Some(Err(_)) => self.asked.elapsed() < FAILED,
        }
    }

    /// A new lookup in place of the latest, which becomes the fallback if it had addresses.
    fn renew(&mut self) {
        if let Some(Ok(addrs)) = self.latest.get() {
            self.good = Some((addrs.clone(), self.asked));
        }
        self.latest = Arc::default();
        self.asked = Instant::now();
    }

    fn fallback(&self) -> Option<Arc<[SocketAddr]>> {
        let (addrs, asked) = self.good.as_ref()?;
        (asked.elapsed() < STALE).then(|| addrs.clone())
    }
}

impl Names {
    async fn get<F, Fut>(&self, name: &str, lookup: F) -> Lookup
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Lookup>,
    {
        let (latest, fallback) = self.latest(name);
        // Whoever comes first runs the lookup; the others wait for it. If that request gives
        // up (its connect timeout), the next one waiting takes the lookup over.
        let answer = latest
            .get_or_init(|| async { lookup(name.to_owned()).await.map_err(Arc::new) })
            .await;
        match (answer, fallback) {
            (Ok(addrs), _) => Ok(addrs.clone()),
            (Err(error), Some(addrs)) => {
                tracing::debug!(backend = name, %error, "name lookup failed; using its last answer");
                Ok(addrs)
            }
            (Err(error), None) => Err(io::Error::new(error.kind(), error.to_string())),
        }
    }

    /// The lookup to use for `name` (a new one if the latest is too old), and the answer to
    /// fall back on if it fails.
    fn latest(&self, name: &str) -> (Arc<OnceCell<Answer>>, Option<Arc<[SocketAddr]>>) {
        let mut names = crate::sync::lock(&self.0);
        let entry = names.entry(name.to_owned()).or_insert_with(|| Entry {
            latest: Arc::default(),
            asked: Instant::now(),
            good: None,
        });
        if !entry.usable() {
            entry.renew();
        }
        (entry.latest.clone(), entry.fallback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn addrs(port: u16) -> Arc<[SocketAddr]> {
        Arc::new([SocketAddr::from(([10, 0, 0, 1], port))])
    }

    /// A resolver that counts its lookups and answers what `answers` says next.
    struct Scripted {
        asked: AtomicUsize,
        answers: Mutex<Vec<Option<u16>>>,
    }

    impl Scripted {
        fn new(answers: &[Option<u16>]) -> Scripted {
            Scripted {
                asked: AtomicUsize::new(0),
                answers: Mutex::new(answers.iter().rev().copied().collect()),
            }
        }

        async fn lookup(&self, _name: String) -> Lookup {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let next = self
                .answers
                .lock()
                .unwrap()
                .pop()
                .expect("an unscripted lookup");
            match next {
                Some(port) => Ok(addrs(port)),
                None => Err(io::Error::other("Temporary failure in name resolution")),
            }
        }

        fn asked(&self) -> usize {
            self.asked.load(Ordering::SeqCst)
        }
    }

    async fn get(names: &Names, resolver: &Scripted) -> io::Result<u16> {
        let got = names.get("svc:80", |name| resolver.lookup(name)).await?;
        Ok(got[0].port())
    }

    #[tokio::test]
    async fn literals_skip_the_resolver_and_names_go_through_it() {
        let literal = resolve("[::1]:9001").await.unwrap();
        assert_eq!(&literal[..], ["[::1]:9001".parse().unwrap()]);
        assert_eq!(LOOKUPS.available_permits(), MAX_LOOKUPS);
        let named = resolve("localhost:9001").await.unwrap();
        assert!(named
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9001));
        assert!(!named.is_empty());
        // The permit went back when the lookup ended.
        assert_eq!(LOOKUPS.available_permits(), MAX_LOOKUPS);
        let missing = resolve("no-such-backend.invalid:9001").await.unwrap_err();
        assert!(!missing.to_string().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_until_it_is_five_seconds_old() {
        let (names, resolver) = (Names::default(), Scripted::new(&[Some(1), Some(2)]));
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        tokio::time::advance(FRESH - Duration::from_millis(1)).await;
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        assert_eq!(resolver.asked(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&names, &resolver).await.unwrap(), 2);
        assert_eq!(resolver.asked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_during_a_lookup_wait_for_it() {
        let (names, resolver) = (Names::default(), Scripted::new(&[Some(1)]));
        let gate = tokio::sync::Notify::new();
        let slow = |name| async {
            gate.notified().await;
            resolver.lookup(name).await
        };
        let first = names.get("svc:80", slow);
        // Its own lookup would fail: the answer it gets is the first one's.
        let second = names.get("svc:80", |_| async {
            Err(io::Error::other("a second lookup"))
        });
        let release = async {
            tokio::task::yield_now().await;
            gate.notify_one();
        };
        let (first, second, ()) = tokio::join!(first, second, release);
        assert_eq!(first.unwrap()[0].port(), 1);
        assert_eq!(second.unwrap()[0].port(), 1);
        assert_eq!(resolver.asked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_falls_back_on_an_answer_up_to_a_minute_old() {
        let script = [Some(1), None, None, None];
        let (names, resolver) = (Names::default(), Scripted::new(&script));
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        tokio::time::advance(FRESH).await;
        // The resolver fails: the five-second-old answer stands in.
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        // Its error is held a second: no new lookup for the next request.
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        assert_eq!(resolver.asked(), 2);
        tokio::time::advance(STALE - FRESH - Duration::from_millis(1)).await;
        assert_eq!(get(&names, &resolver).await.unwrap(), 1);
        assert_eq!(resolver.asked(), 3);
        // A minute after the good answer was asked, the failure is the answer.
        tokio::time::advance(FAILED).await;
        let error = get(&names, &resolver).await.unwrap_err();
        assert!(error.to_string().contains("name resolution"), "{error}");
        assert_eq!(resolver.asked(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_resolved_fails_and_is_asked_again_after_a_second() {
        let (names, resolver) = (Names::default(), Scripted::new(&[None, Some(7)]));
        assert!(get(&names, &resolver).await.is_err());
        assert!(get(&names, &resolver).await.is_err());
        assert_eq!(resolver.asked(), 1);
        tokio::time::advance(FAILED).await;
        assert_eq!(get(&names, &resolver).await.unwrap(), 7);
    }
}
