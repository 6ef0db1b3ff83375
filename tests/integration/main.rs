//! The integration suite, one test binary: real sockets on 127.0.0.1, real TLS (rcgen
//! certificates made at test time), real WebSocket clients and backends.
//!
//! One binary rather than one per file: every test binary links the whole TLS stack, and
//! seventeen of them cost gigabytes of disk and minutes of linking on a CI machine.

mod support;

mod admin;
mod backend;
mod backend_tls;
mod cli;
mod client_cert;
mod departures;
mod descriptors;
mod head;
mod limits;
mod listeners;
mod logging;
mod model;
mod origin;
mod proxy_protocol;
mod readme;
mod reject;
mod reload;
mod revocation;
mod routing;
mod shutdown;
mod sni;
mod splice;
mod subprotocol;
mod upgrade;
