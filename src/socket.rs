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
/// Unsent bytes the kernel holds before a write waits (see [`tune`]).
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets `socket`'s options; a failure costs only the option, never the connection.
///
/// - `TCP_NODELAY`: small writes (a 101, a WebSocket frame) go out at once; Nagle would hold
///   each back for the peer's delayed ACK.
/// - TCP keepalive: a peer that vanished without a word (a phone that lost its network, a NAT
///   that forgot the flow) is found within about two minutes of quiet, not at the tunnel's
///   idle timeout, which a route may set to days: until then it would hold a connection slot
///   and its descriptors. The probes are the kernel's, with no cost to an idle tunnel's
///   memory, and invisible to the WebSocket on top.
/// - `TCP_NOTSENT_LOWAT`: a write waits once this much is queued but not yet sent, and goes on
///   as soon as the peer takes some. Without it the kernel queues up to its whole send buffer
///   (4 MiB here) and wakes the writer only when a third of that has drained, which a slow
///   reader (a phone on a poor link) takes longer to read than the idle timeout: the tunnel
///   looked idle with data moving the whole time, and was cut. It also keeps a slow reader's
///   backlog, and the latency of whatever is sent behind it, small.
pub(crate) fn tune(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let sock = SockRef::from(socket);
    let _ = sock.set_tcp_keepalive(&keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// Bytes the kernel holds for the peer, not yet sent or not yet acknowledged: while a writer
/// waits, a count that changes says the peer is still taking bytes (see `splice`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn queued(socket: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one int through the pointer, which is
    // valid for the call, and only reads the descriptor, borrowed from a live socket.
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut bytes) };
    if done == 0 {
        u32::try_from(bytes).ok()
    } else {
        None
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn queued(_: &TcpStream) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_option_is_set() {
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
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn the_queue_counts_bytes_the_peer_has_not_taken() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        assert_eq!(queued(&socket), Some(0));
        // The peer never reads: write until the kernel takes no more, and what the peer
        // could not take stays queued on this side.
        let chunk = [7u8; 64 * 1024];
        loop {
            match socket.try_write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write failed: {e}"),
            }
        }
        assert!(queued(&socket).unwrap() > 0);
    }
}
