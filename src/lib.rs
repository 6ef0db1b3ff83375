//! wsgate: a TLS-terminating WebSocket reverse proxy.
