//! The TCP options every proxied connection gets, on the client's side and the backend's.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::LazyLock;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Quiet time before the kernel first checks that the peer is still there, in seconds: one
/// of these per connection (see [`keepalive_for`]).
const KEEPALIVE_IDLE: RangeInclusive<u64> = 45..=75;
/// Between unanswered checks, in seconds, likewise.
const KEEPALIVE_INTERVAL: RangeInclusive<u64> = 8..=12;
/// Unanswered checks after which the connection is dead (its reads fail, the tunnel ends).
const KEEPALIVE_PROBES: u32 = 5;
/// Unsent bytes the kernel holds before a write waits (see [`tune`]).
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets the options of `socket`, connected to `peer`; a failure costs only the option, never
/// the connection.
///
/// - `TCP_NODELAY`: small writes (a 101, a WebSocket frame) go out at once; Nagle would hold
///   each back for the peer's delayed ACK.
/// - TCP keepalive: a peer that vanished without a word (a phone that lost its network, a NAT
///   that forgot the flow) is found within about two minutes of quiet, not at the tunnel's
///   idle timeout, which a route may set to days: until then it would hold a connection slot
///   and its descriptors. The probes are the kernel's, with no cost to an idle tunnel's
///   memory, and invisible to the WebSocket on top. Not on loopback, and spread in time (see
///   [`keepalive_for`]).
/// - `TCP_NOTSENT_LOWAT`: a write waits once this much is queued but not yet sent, and goes on
///   as soon as the peer takes some. Without it the kernel queues up to its whole send buffer
///   (4 MiB here) and wakes the writer only when a third of that has drained, which a slow
///   reader (a phone on a poor link) takes longer to read than the idle timeout: the tunnel
///   looked idle with data moving the whole time, and was cut. It also keeps a slow reader's
///   backlog, and the latency of whatever is sent behind it, small.
pub(crate) fn tune(socket: &TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let sock = SockRef::from(socket);
    if let Some(keepalive) = keepalive_for(peer) {
        let _ = sock.set_tcp_keepalive(&keepalive);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// The keepalive for a connection to `peer`: none on loopback, where a peer cannot vanish
/// without its kernel, which is ours, saying so (a sidecar's backend, a local balancer), and
/// where probes cost the most: the kernel fires the keepalive timers of connections opened
/// together (a reconnect storm) in the same tick, and over loopback every probe and its
/// answer go through the CPU's input backlog (`net.core.netdev_max_backlog`, 1,000 packets),
/// which thousands of them overflow; dropped five times in a row, live tunnels were ended as
/// dead (1,454 of 5,000 opened at once, two minutes later, in a test of 2026-12-06). Else
/// its timing is spread over [`KEEPALIVE_IDLE`] and [`KEEPALIVE_INTERVAL`] by the peer's
/// address, so that thousands of connections opened together probe over half a minute, not
/// in one tick (on a node, pods' traffic crosses veth pairs, which use that backlog too).
fn keepalive_for(peer: SocketAddr) -> Option<TcpKeepalive> {
    if peer.ip().to_canonical().is_loopback() {
        return None;
    }
    // Per process: a peer's spread is not the same in every replica.
    static SEED: LazyLock<std::hash::RandomState> = LazyLock::new(Default::default);
    let spread = SEED.hash_one(peer);
    let within = |range: RangeInclusive<u64>, bits: u64| {
        let width = range.end() - range.start() + 1;
        Duration::from_secs(range.start() + bits % width)
    };
    Some(
        TcpKeepalive::new()
            .with_time(within(KEEPALIVE_IDLE, spread))
            .with_interval(within(KEEPALIVE_INTERVAL, spread >> 32))
            .with_retries(KEEPALIVE_PROBES),
    )
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

/// Whether a connection waits in the listener's queue. Out of descriptors, accept(2) fails
/// with EMFILE before it looks at that queue, so the failure alone does not say a client
/// waits; and tokio keeps a listener ready until an accept finds nothing, so after every
/// accept in a shortage the next one fails that way. poll(2) takes no descriptor.
#[cfg(unix)]
pub(crate) fn connection_waiting(listener: &tokio::net::TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut waiting = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call; the descriptor is borrowed from a live
    // listener; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut waiting, 1, 0) };
    // A failed poll says nothing: taken as a connection waiting, as before this check.
    ready != 0 && (ready < 0 || waiting.revents & libc::POLLIN != 0)
}

#[cfg(not(unix))]
pub(crate) fn connection_waiting(_: &tokio::net::TcpListener) -> bool {
    true
}

/// Whether `listener` was bound with `SO_REUSEPORT`: another process may listen on its address.
#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
pub(crate) fn port_shared(listener: &tokio::net::TcpListener) -> bool {
    SockRef::from(listener).reuse_port().unwrap_or(false)
}

#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
pub(crate) fn port_shared(_: &tokio::net::TcpListener) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_waiting_to_be_accepted_is_seen() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!connection_waiting(&listener));
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(connection_waiting(&listener));
        let _accepted = listener.accept().await.unwrap();
        assert!(!connection_waiting(&listener));
    }

    #[tokio::test]
    async fn every_option_is_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&socket, socket.peer_addr().unwrap());
        let sock = SockRef::from(&socket);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(!sock.keepalive().unwrap(), "no keepalive on loopback");
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
    }

    /// Set on a socket, as a connection to `peer` gets it: its idle time, interval and
    /// probes, in seconds.
    fn keepalive_to(peer: &str) -> Option<(u64, u64, u32)> {
        let keepalive = keepalive_for(peer.parse().unwrap())?;
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        let socket = socket.unwrap();
        socket.set_tcp_keepalive(&keepalive).unwrap();
        assert!(socket.keepalive().unwrap());
        let secs = |d: Duration| d.as_secs();
        Some((
            secs(socket.tcp_keepalive_time().unwrap()),
            secs(socket.tcp_keepalive_interval().unwrap()),
            socket.tcp_keepalive_retries().unwrap(),
        ))
    }

    #[test]
    fn keepalive_is_spread_over_its_ranges_and_off_on_loopback() {
        for loopback in [
            "127.0.0.1:4000",
            "127.9.9.9:1",
            "[::1]:4000",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(
                keepalive_for(loopback.parse().unwrap()).is_none(),
                "{loopback}"
            );
        }
        let mut idle = std::collections::BTreeSet::new();
        for port in 40_000..40_200 {
            let (time, interval, probes) = keepalive_to(&format!("10.1.2.3:{port}")).unwrap();
            assert!(KEEPALIVE_IDLE.contains(&time), "{time}");
            assert!(KEEPALIVE_INTERVAL.contains(&interval), "{interval}");
            assert_eq!(probes, KEEPALIVE_PROBES);
            idle.insert(time);
        }
        // 200 connections from one host: spread over most of the range, not one tick.
        assert!(idle.len() > 20, "{idle:?}");
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
