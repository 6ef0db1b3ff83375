//! wsgate-bench: a load generator and echo backend for benchmarking WebSocket proxies.
//!
//! Modules, one per concept:
//! - [`cli`]: command-line arguments (clap).
//! - [`target`]: the `ws://` / `wss://` URL, TLS client config, TCP/TLS connect.
//! - [`ws`]: a lean WebSocket client: the HTTP upgrade and a frame codec that never copies payloads
//!   it does not need.
//! - [`echo`]: the built-in echo backend: its listener and TLS, on the lean engine of [`server`]
//!   by default (tokio-tungstenite on request).
//! - [`server`]: the lean echo engine: the server's side of the upgrade and a streaming
//!   frame echo that assembles no message.
//! - `pem`: the certificate and key files its TLS is given, read with limits.
//! - [`sys`]: the runtime and the process's open-files limit.
//! - [`stats`]: HDR histograms, percentiles and the coordinated-omission-free send schedule.
//! - [`procstat`]: CPU time and memory of the proxy process and of the tool itself.
//! - [`report`]: human-readable table or JSON.
//! - [`scenario`]: handshake, latency, throughput, bulk and idle.

pub mod cli;
pub mod echo;
mod pem;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod server;
pub mod stats;
pub mod sys;
pub mod target;
pub mod ws;
