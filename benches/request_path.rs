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

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_and_route");
    for n in [10usize, 10_000] {
        let routes = table(n);
        let target = n / 2;
        let host = format!("h{target}.example.com:8443");
        let path = format!("/svc{target}/ws/room/42");
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

    // The lookup alone, to see what share of the path it is.
    let mut group = c.benchmark_group("route_only");
    for n in [10usize, 10_000] {
        let routes = table(n);
        let target = n / 2;
        let host = format!("h{target}.example.com:8443");
        let path = format!("/svc{target}/ws/room/42");
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

criterion_group!(benches, request_path);
criterion_main!(benches);
