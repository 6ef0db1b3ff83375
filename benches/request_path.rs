//! The request path without I/O, as `proxy.rs` runs it: the RFC 6455 checks, the Host rules,
//! the route lookup and the Origin check, with 10 and 10,000 routes, each on a host of its own
//! or all on one host (10,000 path prefixes side by side). Lookup must not grow with the
//! number of routes (hash maps by host and path prefix).
//!
//! `cargo bench --bench request_path`

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Uri, Version};
use wsgate::config::Config;
use wsgate::routes::{RouteTable, Selection};

/// Where the routes live: a host each, or all on one host.
#[derive(Clone, Copy)]
enum Hosts {
    Many,
    One,
}

/// Route `i`'s host.
fn host_of(i: usize, hosts: Hosts) -> String {
    match hosts {
        Hosts::Many => format!("h{i}.example.com"),
        Hosts::One => "chat.example.com".to_string(),
    }
}

fn table(n: usize, hosts: Hosts) -> RouteTable {
    let mut toml = String::from(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncertificates = [{ cert = \"c.pem\", key = \"k.pem\" }]\n",
    );
    for i in 0..n {
        let host = host_of(i, hosts);
        toml.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nhost = \"{host}\"\npath = \"/svc{i}/ws\"\nsubprotocols = [\"chat.v2\", \"chat.v1\"]\norigins = [\"https://{host}\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        ));
    }
    let config = match Config::from_toml_str(&toml, Path::new("bench.toml")) {
        Ok(config) => config,
        Err(e) => panic!("bench config: {e}"),
    };
    RouteTable::new(&config.routes)
}

fn request(host: &str, origin: &str) -> HeaderMap {
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
    h.insert(
        "origin",
        HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("x")),
    );
    h.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"),
    );
    h
}

/// A table of `n` routes, and the Host, Origin and target of a request for the one in the
/// middle.
fn fixture(n: usize, hosts: Hosts) -> (RouteTable, String, String, Uri) {
    let target = n / 2;
    let host = host_of(target, hosts);
    let uri = format!("/svc{target}/ws/room/42?token=abc")
        .parse()
        .unwrap_or_default();
    (
        table(n, hosts),
        format!("{host}:8443"),
        format!("https://{host}"),
        uri,
    )
}

const SIZES: [usize; 2] = [10, 10_000];

fn checks_and_lookup(c: &mut Criterion) {
    for (name, hosts) in [
        ("check_and_route", Hosts::Many),
        ("check_and_route_one_host", Hosts::One),
    ] {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let (routes, host, origin, uri) = fixture(n, hosts);
            let headers = request(&host, &origin);
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    let headers = black_box(&headers);
                    let checked =
                        wsgate::websocket::check_request(&Method::GET, Version::HTTP_11, headers);
                    let host = wsgate::websocket::request_host(black_box(&uri), headers);
                    let offered = wsgate::websocket::offered_protocols(headers);
                    let origin = wsgate::websocket::origin(headers);
                    let allowed = match routes.select(host.ok().flatten(), uri.path(), &offered) {
                        Selection::Matched { route, .. } => route.allows_origin(origin),
                        _ => false,
                    };
                    assert!(checked.is_ok() && allowed);
                })
            });
        }
        group.finish();
    }
}

/// The lookup alone, to see what share of the path it is.
fn lookup_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_only");
    for n in SIZES {
        let (routes, host, _, uri) = fixture(n, Hosts::Many);
        let offered = ["chat.v3", "chat.v1"];
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let selected =
                    routes.select(Some(black_box(&host)), black_box(uri.path()), &offered);
                assert!(matches!(selected, Selection::Matched { .. }));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checks_and_lookup, lookup_only);
criterion_main!(benches);
