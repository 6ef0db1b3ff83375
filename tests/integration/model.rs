//! The handshake rules as a model: requests built from every combination of right and wrong
//! parts (host, path, method, version, `Upgrade`, `Connection`, key, version, `Origin`,
//! subprotocol offer, a declared body), some of them over several lines, each sent through a
//! real proxy to a real echo backend, and each answer checked against the statuses the issue
//! and docs/configuration.md give for the request's faults: a request with none gets its 101,
//! one with a single fault gets that fault's status, and one with several gets the status of
//! one of them, never anything else.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::*;

/// One part of a request, written as sent, and the status it calls for if it is wrong.
type Part = (Option<&'static str>, Option<u16>);

const HOSTS: &[Part] = &[
    (Some("chat.example.com"), None),
    (Some("CHAT.Example.com:8443"), None),
    (Some("other.example.com"), Some(404)),
    (None, Some(400)),
    (Some("chat.example.com\nchat.example.com"), Some(400)),
];
const PATHS: &[Part] = &[
    (Some("/ws"), None),
    (Some("/ws/room?x=1"), None),
    (Some("/wsx"), Some(404)),
];
const METHODS: &[Part] = &[(Some("GET"), None), (Some("POST"), Some(400))];
const VERSIONS: &[Part] = &[(Some("HTTP/1.1"), None), (Some("HTTP/1.0"), Some(400))];
const UPGRADES: &[Part] = &[
    (Some("websocket"), None),
    (Some("WebSocket"), None),
    (Some("foo, websocket"), None),
    (Some("foo\nwebsocket"), None),
    (Some("h2c"), Some(426)),
    (None, Some(426)),
];
const CONNECTIONS: &[Part] = &[
    (Some("Upgrade"), None),
    (Some("keep-alive, Upgrade"), None),
    (Some("keep-alive\nUpgrade"), None),
    (Some("keep-alive"), Some(400)),
    (None, Some(400)),
];
const KEYS: &[Part] = &[
    (Some(KEY), None),
    (Some("c2hvcnQ="), Some(400)),
    (
        Some(concat!(
            "dGhlIHNhbXBsZSBub25jZQ==",
            "\n",
            "dGhlIHNhbXBsZSBub25jZQ=="
        )),
        Some(400),
    ),
    (None, Some(400)),
];
const WS_VERSIONS: &[Part] = &[
    (Some("13"), None),
    (Some("8"), Some(426)),
    (None, Some(426)),
];
const ORIGINS: &[Part] = &[
    (None, None),
    (Some("https://chat.example.com"), None),
    (Some("https://evil.example"), Some(403)),
    (
        Some("https://chat.example.com\nhttps://chat.example.com"),
        Some(403),
    ),
];
const BODIES: &[Part] = &[
    (None, None),
    (Some("Content-Length: 0"), None),
    (Some("Content-Length: 5"), Some(400)),
    (Some("Transfer-Encoding: chunked"), Some(400)),
];
const PROTOCOLS: &[Part] = &[
    (Some("chat.v1"), None),
    (Some("chat.v3, chat.v2"), None),
    (Some("chat.v3"), Some(400)),
];

/// The parts of one request, each an index into its list above.
type Choice = [usize; 11];

fn parts(choice: &Choice) -> [Part; 11] {
    let lists = [
        HOSTS,
        PATHS,
        METHODS,
        VERSIONS,
        UPGRADES,
        CONNECTIONS,
        KEYS,
        WS_VERSIONS,
        ORIGINS,
        PROTOCOLS,
        BODIES,
    ];
    std::array::from_fn(|i| lists[i][choice[i]])
}

fn choices() -> impl Strategy<Value = Choice> {
    let lens = [
        HOSTS.len(),
        PATHS.len(),
        METHODS.len(),
        VERSIONS.len(),
        UPGRADES.len(),
        CONNECTIONS.len(),
        KEYS.len(),
        WS_VERSIONS.len(),
        ORIGINS.len(),
        PROTOCOLS.len(),
        BODIES.len(),
    ];
    // Mostly right parts, so that single faults (and the 101) come up often.
    let part = |len: usize| prop_oneof![3 => Just(0usize), 2 => 0..len];
    lens.map(part)
}

/// The request the parts make: a value with a line break is sent as that header's lines, one
/// per line.
fn request_of(parts: &[Part; 11]) -> Req {
    let [host, path, method, version, upgrade, connection, key, ws_version, origin, protocol, body] =
        parts.map(|(sent, _)| sent);
    let mut req = Req::get("", path.unwrap_or_default())
        .remove("Host")
        .method(method.unwrap_or_default())
        .version(version.unwrap_or_default());
    if let Some((name, value)) = body.and_then(|line| line.split_once(": ")) {
        req = req.add(name, value);
    }
    let headers = [
        ("Host", host),
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", ws_version),
        ("Origin", origin),
        ("Sec-WebSocket-Protocol", protocol),
    ];
    for (name, value) in headers {
        for line in value.iter().flat_map(|value| value.split('\n')) {
            req = req.add(name, line);
        }
    }
    req
}

#[test]
fn every_handshake_gets_the_status_its_faults_call_for() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_backend, proxy) = runtime.block_on(async {
        let backend = WsBackend::start("echo").await;
        let config = format!(
            "[[route]]\nname = \"chat\"\nhost = \"chat.example.com\"\npath = \"/ws\"\n\
             subprotocols = [\"chat.v2\", \"chat.v1\"]\norigins = [\"https://chat.example.com\"]\n\
             backends = [\"{}\"]\n",
            backend.addr
        );
        (backend, start_proxy(&config).await)
    });
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&choices(), |choice| {
        let parts = parts(&choice);
        let req = request_of(&parts);
        let head = runtime.block_on(async {
            let mut client = raw_client(proxy.addr).await;
            client.send(req.bytes()).await;
            client.read_head().await
        });
        let mut faults: Vec<u16> = parts.iter().filter_map(|(_, fault)| *fault).collect();
        // HTTP/1.0 may leave Host out: such a request is routed as one without a host, and
        // this route has one.
        if parts[0].0.is_none() && parts[3].0 == Some("HTTP/1.0") {
            faults[0] = 404;
        }
        let said = format!(
            "{:?} for\n{}",
            head.start_line,
            String::from_utf8_lossy(&req.bytes())
        );
        match faults.as_slice() {
            [] => {
                prop_assert_eq!(head.status, 101, "{}", said);
                prop_assert_eq!(head.get("sec-websocket-accept"), Some(ACCEPT), "{}", said);
            }
            [fault] => prop_assert_eq!(head.status, *fault, "{}", said),
            several => prop_assert!(several.contains(&head.status), "{:?}: {}", several, said),
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
