//! wsgate: a TLS-terminating WebSocket reverse proxy.
//!
//! One connection's path through the crate:
//!
//! ```text
//! listener    accept → limit guard (over it: the refusal budget, else closed)
//! connection  PROXY header → per-client slot → TLS and the request head under the handshake
//!             deadline → refusals needing no route (503/429/431/414/505/400) → hyper HTTP/1.1
//! proxy       snapshot → Host (400) → route select (404) → websocket checks (400/426)
//!             → subprotocols (400) → origin (403) → upstream
//! upstream    dial backends in turn, those put aside last (502/504; 503 out of
//!             descriptors) → forward the upgrade
//!             → non-101: relay, close → 101: check Accept/Upgrade/protocol (502)
//!             → client gets the 101
//! splice      bytes both ways, idle timer, half-close, drain
//! access_log  one line per connection, written when it is over (answer, tunnel, or neither)
//! reload      watch (folder events) / SIGHUP / poll → build a whole new snapshot or nothing
//!             → swap; tunnels untouched
//! ```
//!
//! Layout, one module per concept:
//! - [`config`]: TOML → validated `Config` (raw, shape, validate, values, error, locate,
//!   wording);
//!   [`routes`]: the route table (pure); `path`: a request path in the form a backend may
//!   read it (pure); [`websocket`]: RFC 6455 rules (pure); `grammar`: the pieces of HTTP
//!   syntax they, the forwarded headers and the config share (pure); `head`: the request
//!   head read before hyper;
//! - `snapshot`: the config in force, built as one unit; `fingerprint`: whether the files it
//!   is built from changed; `watch`: which folders to watch, and the watches; `reload`: when
//!   and how a new snapshot replaces the old (`reload::look`: what a look at the files finds;
//!   `reload::status`: what is published and logged about reloads);
//! - `server`: start-up, shared state, shutdown; `listener`: binding and accepting;
//!   `connection`: one connection until its answer or tunnel; `closing`: the lingering close
//!   of a connection that got an answer instead; `limits`: connection counts
//!   and per-client slots; `proxy_protocol`: the PROXY header; `tls`: PEM → rustls with SNI
//!   (`tls::expiry`: when the certificates run out, and the warnings about it;
//!   `tls::stream`: a client's TLS connection, its buffers lent only while bytes wait in
//!   them); `pool`: the per-thread buffer pools the TLS streams and the relay borrow from;
//! - `proxy`, `upstream`, `splice`: the request path, the backend leg, the tunnel
//!   (`upstream::turns`: which backend a request tries next; `upstream::dial`: connecting to
//!   one, through its name's addresses; `splice::direction`: one way of it; `splice::linger`:
//!   its close; `splice::outcome`: how it ended; `splice::peer`: what it asks of a socket);
//!   `relay`: a backend's non-101 answer, passed on at the client's pace; `resolve`: backend
//!   names to addresses, briefly cached, taken in turn; `race`: connect attempts, the next
//!   started beside a slow one (RFC 8305's way); `health`: backends put aside for a while
//!   after they failed to take a connection; `load`: each backend's open connections, for
//!   `least_connections`; `socket`: TCP options and the send queue both
//!   legs share; `files`: reading a config or PEM file safely; `forwarding`: which headers
//!   cross, each way; `client_cert`: what backends are told of a client's verified
//!   certificate; `drain`: the signal that ends them all at the end of a shutdown; `recheck`: tunnels'
//!   client certificates checked again when the rules for them change;
//!   `error`: each refusal's status, body and headers, in one place;
//! - `access_log`: each connection's end line; `metrics`: Prometheus counters; `admin`: the
//!   plain-HTTP metrics and probe endpoint; `logging`: the process's log set-up,
//!   `log_queue`: its lines written to stderr by a thread of their own, and `log_text`: the
//!   text format's fields, as logfmt reads them;
//!   `descriptors`: the open-files limit, raised at start and checked against
//!   `max_connections`; `memory`: giving memory freed after a burst of connections back to
//!   the system (`malloc_trim`); [`coalesce`]: a busy runtime thread's short wait for
//!   more before it sleeps, so small messages are relayed in batches; [`signals`]: SIGHUP, SIGTERM, Ctrl-C, SIGQUIT and the
//!   ignored SIGUSR1 and SIGUSR2; `systemd`: readiness and status for a `Type=notify` unit;
//!   `sync`: locking that survives a panic; `trickle` (tests only): a pipe end that moves
//!   a few bytes at a time, for the streaming code's property tests.

#![warn(unreachable_pub)]

mod access_log;
mod admin;
mod client_cert;
mod closing;
pub mod coalesce;
pub mod config;
mod connection;
pub mod descriptors;
mod drain;
mod error;
mod files;
mod fingerprint;
mod forwarding;
mod grammar;
mod head;
mod health;
mod limits;
mod listener;
mod load;
mod log_queue;
mod log_text;
mod logging;
mod memory;
mod metrics;
mod path;
mod pool;
mod proxy;
mod proxy_protocol;
mod race;
mod recheck;
mod relay;
mod reload;
mod resolve;
pub mod routes;
mod scrape;
mod server;
pub mod signals;
mod snapshot;
mod socket;
mod splice;
mod sync;
mod systemd;
mod tls;
#[cfg(test)]
mod trickle;
mod upstream;
mod watch;
pub mod websocket;

/// Why [`websocket`]'s checks refuse a request, with the status and body it is answered with.
pub use error::ProxyError;
pub use logging::{init as init_logging, Logging};
pub use reload::ReloadStatus;
pub use server::{Closer, Error, Server};

/// Loads and fully validates a config file (TOML, keys, certificates, routes) without serving;
/// returns a one-line summary and warnings: what loads but is surely a mistake, and the
/// certificates that have expired, will within two weeks, or are not valid yet (what `run`
/// warns about at every load).
pub fn check(path: &std::path::Path) -> Result<(String, Vec<String>), config::ConfigError> {
    tls::install_default_provider();
    let snapshot = snapshot::Snapshot::build(path, 1)?;
    Ok((snapshot.summary(), snapshot.warnings()))
}
