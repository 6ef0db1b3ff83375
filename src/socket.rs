//! The TCP options every proxied connection gets, on the client's side and the backend's.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Quiet time before the kernel first checks that the peer is still there.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Between unanswered checks.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered checks after which the connection is dead (its reads fail, the tunnel ends).
const KEEPALIVE_PROBES: u32 = 5;

/// Sets `socket`'s options; a failure costs only the option, never the connection.
///
/// - `TCP_NODELAY`: small writes (a 101, a WebSocket frame) go out at once; Nagle would hold
///   each back for the peer's delayed ACK.
/// - TCP keepalive: a peer that vanished without a word (a phone that lost its network, a NAT
///   that forgot the flow) is found within about two minutes of quiet, not at the tunnel's
///   idle timeout, which a route may set to days: until then it would hold a connection slot
///   and its descriptors. The probes are the kernel's, with no cost to an idle tunnel's
///   memory, and invisible to the WebSocket on top.
pub(crate) fn tune(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = SockRef::from(socket).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_options_are_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&socket);
        let sock = SockRef::from(&socket);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    }
}
