//! The request path without I/O: the RFC 6455 checks plus the route lookup, with 10 and 10,000
//! routes. Lookup must not grow with the number of routes (hash maps by host and path prefix).
//!
//! `cargo bench --bench request_path`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Version};
use wsgate::config::Config;
use wsgate::routes::{RouteTable, Selection};

fn table(n: usize) -> RouteTable {
    let mut toml = String::from(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncertificates = [{ cert = \"c.pem\", key = \"k.pem\" }]\n",
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nhost = \"h{i}.example.com\"\npath = \"/svc{i}/ws\"\nsubprotocols = [\"chat.v2\", \"chat.v1\"]\norigins = [\"https://h{i}.example.com\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        ));
    }
    let config = match Config::from_toml_str(&toml, Path::new("bench.toml")) {
        Ok(config) => config,
        Err(e) => panic!("bench config: {e}"),
    };
    RouteTable::new(&config.routes)
}

fn request(host: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "host",
        HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
    );
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    h.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat.v3, chat.v1"),
    );
    h.insert("origin", HeaderValue::from_static("https://example.com"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"),
    );
    h
}

/// A table of `n` routes, and the Host and path of a request for the one in the middle.
fn fixture(n: usize) -> (RouteTable, String, String) {
    let target = n / 2;
    (
        table(n),
        format!("h{target}.example.com:8443"),
        format!("/svc{target}/ws/room/42"),
    )
}

const SIZES: [usize; 2] = [10, 10_000];

fn checks_and_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_and_route");
    for n in SIZES {
        let (routes, host, path) = fixture(n);
        let headers = request(&host);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let checked = wsgate::websocket::check_request(
                    &Method::GET,
                    Version::HTTP_11,
                    black_box(&headers),
                );
                let offered = wsgate::websocket::offered_protocols(&headers);
                let host = headers.get("host").and_then(|h| h.to_str().ok());
                let matched = matches!(
                    routes.select(host, black_box(&path), &offered),
                    Selection::Matched { .. }
                );
                assert!(checked.is_ok() && matched);
            })
        });
    }
    group.finish();
}

/// The lookup alone, to see what share of the path it is.
fn lookup_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_only");
    for n in SIZES {
        let (routes, host, path) = fixture(n);
        let offered = ["chat.v3", "chat.v1"];
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let selected = routes.select(Some(black_box(&host)), black_box(&path), &offered);
                assert!(matches!(selected, Selection::Matched { .. }));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checks_and_lookup, lookup_only);
criterion_main!(benches);
