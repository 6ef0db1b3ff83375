//! The handshake rules as a model: requests built from every combination of right and wrong
//! parts (host, path, method, version, `Upgrade`, `Connection`, key, version, `Origin`,
//! subprotocol offer, a declared body), some of them over several lines, each sent through a
//! real proxy to a real echo backend, and each answer checked against the statuses the issue
//! and docs/configuration.md give for the request's faults: a request with none gets its 101,
//! one with a single fault gets that fault's status, and one with several gets the status of
//! one of them, never anything else.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::runtime::Runtime;

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
    // A quoted string is one element, whatever commas and words it holds.
    (Some("x=\"a, websocket, b\""), Some(426)),
    (None, Some(426)),
];
const CONNECTIONS: &[Part] = &[
    (Some("Upgrade"), None),
    (Some("keep-alive, Upgrade"), None),
    (Some("keep-alive\nUpgrade"), None),
    (Some("keep-alive"), Some(400)),
    (Some("x=\"a, upgrade, b\""), Some(400)),
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

/// The parts a request is made of, each a list of ways to write it, the right ones first.
const REQUEST: [&[Part]; 11] = [
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

/// One way of writing each part (an index into its list), mostly the first, right one, so
/// that single faults (and the 101) come up often: with a model's eleven parts, about a third
/// of the requests have none wrong, a third one.
fn choices<T, const N: usize>(parts: [&[T]; N]) -> impl Strategy<Value = [usize; N]> {
    parts.map(|ways| prop_oneof![8 => Just(0usize), 2 => 0..ways.len()])
}

/// The parts `choice` picks.
fn chosen<T: Copy, const N: usize>(parts: [&[T]; N], choice: &[usize; N]) -> [T; N] {
    std::array::from_fn(|i| parts[i][choice[i]])
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

/// A runtime for the proxy and its backend, built by `start` on it, and `cases` random
/// choices of `strategy` checked by `check`, which runs its requests on that runtime.
fn run_model<S: Strategy, T>(
    cases: u32,
    start: impl std::future::Future<Output = T>,
    strategy: S,
    check: impl Fn(&Runtime, &T, S::Value) -> Result<(), TestCaseError> + Sync,
) where
    T: Sync,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = runtime.block_on(start);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |choice| check(&runtime, &started, choice));
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[test]
fn every_handshake_gets_the_status_its_faults_call_for() {
    let start = async {
        let backend = WsBackend::start("echo").await;
        let config = format!(
            "[[route]]\nname = \"chat\"\nhost = \"chat.example.com\"\npath = \"/ws\"\n\
             subprotocols = [\"chat.v2\", \"chat.v1\"]\norigins = [\"https://chat.example.com\"]\n\
             backends = [\"{}\"]\n",
            backend.addr
        );
        let proxy = start_proxy(&config).await;
        (backend, proxy)
    };
    run_model(
        160,
        start,
        choices(REQUEST),
        |runtime, (_, proxy), choice| {
            let parts = chosen(REQUEST, &choice);
            let req = request_of(&parts);
            let head = runtime.block_on(async {
                let mut client = raw_client(proxy.addr).await;
                client.send(req.bytes()).await;
                client.read_head().await
            });
            let mut parts = parts;
            // HTTP/1.0 may leave Host out: such a request is routed as one without a host, and
            // this route has one.
            let [(host, host_fault), _, _, (version, _), ..] = &mut parts;
            if host.is_none() && *version == Some("HTTP/1.0") {
                *host_fault = Some(404);
            }
            let faults: Vec<u16> = parts.iter().filter_map(|(_, fault)| *fault).collect();
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
        },
    );
}

/// One header line (or lines) of a backend's 101, and whether a client would refuse it.
type Line = (&'static [&'static str], bool);

const STATUS_LINES: &[Line] = &[
    (&["HTTP/1.1 101 Switching Protocols"], false),
    (&["HTTP/1.1 101 "], false),
    (&["HTTP/1.1 101 OK then"], false),
    (&["HTTP/1.0 101 Switching Protocols"], true),
];
const ANSWER_UPGRADES: &[Line] = &[
    (&["Upgrade: websocket"], false),
    (&["upgrade: WebSocket"], false),
    (&["Upgrade: websocket, h2c"], true),
    (&["Upgrade: websocket", "Upgrade: h2c"], true),
    (&[], true),
];
const ANSWER_CONNECTIONS: &[Line] = &[
    (&["Connection: Upgrade"], false),
    (&["Connection: keep-alive", "connection: upgrade"], false),
    (&["Connection: keep-alive"], true),
    (&["Connection: x=\"a, upgrade, b\""], true),
    (&[], true),
];
/// `{accept}` stands for the right value.
const ANSWER_ACCEPTS: &[Line] = &[
    (&["Sec-WebSocket-Accept: {accept}"], false),
    (
        &["Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
        true,
    ),
    (
        &[
            "Sec-WebSocket-Accept: {accept}",
            "Sec-WebSocket-Accept: {accept}",
        ],
        true,
    ),
    (&[], true),
];
/// The client offered `chat.v1, chat.v2`.
const ANSWER_PROTOCOLS: &[Line] = &[
    (&[], false),
    (&["Sec-WebSocket-Protocol: chat.v2"], false),
    (&["Sec-WebSocket-Protocol: chat.v9"], true),
    (&["Sec-WebSocket-Protocol: chat.v1, chat.v2"], true),
];
/// The client offered `permessage-deflate`.
const ANSWER_EXTENSIONS: &[Line] = &[
    (&[], false),
    (
        &["Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"],
        false,
    ),
    (&["Sec-WebSocket-Extensions: x-webkit-deflate-frame"], true),
    (
        &["Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate"],
        true,
    ),
];

/// The parts a backend's 101 is made of, as [`REQUEST`] for a request.
const ANSWER: [&[Line]; 6] = [
    STATUS_LINES,
    ANSWER_UPGRADES,
    ANSWER_CONNECTIONS,
    ANSWER_ACCEPTS,
    ANSWER_PROTOCOLS,
    ANSWER_EXTENSIONS,
];

/// A backend's 101 of any right and wrong parts, early tunnel bytes right behind it: the
/// client gets the 101, those bytes, and a tunnel exactly when every part is right, and a
/// 502 (never a tunnel) otherwise.
#[test]
fn a_backends_101_opens_a_tunnel_exactly_when_every_part_is_right() {
    let start = async {
        let backend = RawBackend::start().await;
        let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
        (backend, proxy)
    };
    run_model(
        96,
        start,
        choices(ANSWER),
        |runtime, (backend, proxy), answer| {
            let lines = chosen(ANSWER, &answer);
            let wrong = lines.iter().any(|(_, wrong)| *wrong);
            let req = Req::upgrade("chat.example.com", "/ws")
                .add("Sec-WebSocket-Protocol", "chat.v1, chat.v2")
                .add("Sec-WebSocket-Extensions", "permessage-deflate");
            let (head, written) = runtime.block_on(async {
                let mut client = raw_client(proxy.addr).await;
                client.send(req.bytes()).await;
                let mut back = backend.accept().await;
                let seen = back.read_head().await;
                let key = seen.get("sec-websocket-key").expect("forwarded key");
                let accept = accept_for(key);
                let mut written = String::new();
                for line in lines.iter().flat_map(|(lines, _)| lines.iter()) {
                    written.push_str(&line.replace("{accept}", &accept));
                    written.push_str("\r\n");
                }
                written.push_str("\r\n");
                back.send(format!("{written}early")).await;
                let head = client.read_head().await;
                if head.status == 101 {
                    assert_eq!(client.read_exact(5).await, b"early", "{written}");
                    client.send("ping").await;
                    assert_eq!(back.read_exact(4).await, b"ping", "{written}");
                }
                (head, written)
            });
            let expected = if wrong { 502 } else { 101 };
            prop_assert_eq!(head.status, expected, "{}", written);
            Ok(())
        },
    );
}
