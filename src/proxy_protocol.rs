//! The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of TLS: an L4 load balancer
//! that terminates TCP (AWS NLB, HAProxy in TCP mode, a cloud TCP proxy…) announces the real
//! client's address in a header before the TLS bytes. With `proxy.proxy_protocol` on, wsgate
//! reads that header and uses the address in logs, metrics and `X-Forwarded-For`.
//!
//! The header is consumed exactly: the bytes behind it are the client's TLS handshake, which
//! must reach rustls untouched, and wrapping every connection in a replay buffer would cost
//! memory for the tunnel's whole life. So the socket is peeked, parsed, and only the header's
//! own bytes are read.

use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// v1 headers are at most 107 bytes; v2 ones carry TLVs (AWS adds a few dozen bytes). More
/// than this is not a header a load balancer sends.
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// A TCP connect and close (a load balancer's or kubelet's `tcpSocket` check): no client.
    #[error("closed before sending anything")]
    Nothing,
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("not a PROXY protocol header (is the load balancer set to send one?)")]
    Invalid,
    /// One that starts as a header of this version does, and is broken after (a bad address
    /// or port, a line ended by a bare LF, a version or command that is none, TLVs that do
    /// not add up): a balancer or something posing as one, not a client without a header.
    #[error("malformed PROXY protocol v{0} header")]
    Malformed(u8),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `tcp`: the client address it names, or `None` when
/// it names none (v2 `LOCAL`, a load balancer's own health check; v1 `UNKNOWN`; a Unix socket),
/// in which case the socket's peer is the client.
pub(crate) async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut seen: Vec<u8> = Vec::new();
    let mut peeked = [0u8; 512];
    loop {
        let n = match tcp.peek(&mut peeked).await {
            Ok(0) if seen.is_empty() => return Err(HeaderError::Nothing),
            Ok(0) => return Err(HeaderError::Closed),
            Ok(n) => n,
            Err(e) if seen.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(HeaderError::Nothing)
            }
            Err(e) => return Err(e.into()),
        };
        let start = seen.len();
        seen.extend_from_slice(&peeked[..n]);
        match parse(&seen) {
            Parsed::Header { length, client } => {
                // Take only the header's bytes; the TLS handshake behind them stays queued.
                // (A header shorter than what was consumed as header already cannot be.)
                let rest = length.checked_sub(start).ok_or(HeaderError::Invalid)?;
                let mut header_rest = vec![0u8; rest];
                tcp.read_exact(&mut header_rest).await?;
                return Ok(client);
            }
            Parsed::Incomplete if seen.len() >= MAX_HEADER => return Err(HeaderError::TooLong),
            Parsed::Incomplete => {
                // Everything seen so far is header: consume it, so the next peek waits for
                // new bytes instead of returning the same ones.
                let mut consumed = vec![0u8; n];
                tcp.read_exact(&mut consumed).await?;
            }
            Parsed::Invalid => return Err(invalid(&seen)),
            Parsed::TooLong => return Err(HeaderError::TooLong),
        }
    }
}

/// The refusal of `seen`, which is no valid header: malformed if it starts as one does.
fn invalid(seen: &[u8]) -> HeaderError {
    if seen.starts_with(b"PROXY ") {
        HeaderError::Malformed(1)
    } else if seen.starts_with(V2_SIGNATURE) {
        HeaderError::Malformed(2)
    } else {
        HeaderError::Invalid
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Header {
        /// Bytes of the header, from the start of the connection.
        length: usize,
        client: Option<SocketAddr>,
    },
    Incomplete,
    Invalid,
    /// A v2 header announcing more than [`MAX_HEADER`] bytes.
    TooLong,
}

/// The longest v1 header: one line, CRLF included.
const V1_MAX: usize = 107;

fn parse(input: &[u8]) -> Parsed {
    // A v1 header is one line, complete once its CRLF is in (or once 107 bytes are in without
    // one): until then it waits, after that it is valid or refused at once. ppp cannot judge
    // this itself: it calls a line cut inside its fields (say, after the source port's space)
    // invalid, and a line that ends too soon (`PROXY TCP4 1.2.3.4\r\n`) "missing" fields —
    // incomplete, however many bytes follow its CRLF, so the connection would wait out the
    // handshake timeout.
    let v1_prefix = &b"PROXY "[..input.len().min(6)];
    if input.starts_with(v1_prefix) {
        // A bare LF ends the line too, as an invalid one: no valid header has an LF without
        // its CR, and waiting on would hold the connection until the handshake timeout.
        let line_ended = input.contains(&b'\n');
        if !line_ended && input.len() < V1_MAX {
            return match v1_hopeless(input) {
                true => Parsed::Invalid,
                false => Parsed::Incomplete,
            };
        }
        // Complete (a shorter input matching the prefix is a prefix of `PROXY `, without
        // CRLF): whatever ppp says, "need more" is no longer an answer.
        return match v1::Header::try_from(input) {
            Ok(header) if is_v1_line(header.header.as_ref()) => v1_header(&header),
            _ => Parsed::Invalid,
        };
    }
    // Neither `PROXY ` nor the v2 signature, nor a beginning of one: no header (ppp would
    // wait on some, `P OXY` say, for bytes that cannot make it one).
    let v2_prefix = &V2_SIGNATURE[..input.len().min(V2_SIGNATURE.len())];
    if !input.starts_with(v2_prefix) {
        return Parsed::Invalid;
    }
    if let Some(decided) = v2_fixed_part(input) {
        return decided;
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => v1_header(&header),
        // A TLV running past the header's end says the header is not what it claims to be
        // (HAProxy refuses it too); well-formed TLVs are skipped, none is needed here.
        HeaderResult::V2(Ok(header)) if header.tlvs().any(|tlv| tlv.is_err()) => Parsed::Invalid,
        HeaderResult::V2(Ok(header)) => Parsed::Header {
            length: header.len(),
            client: match (header.command, header.protocol, header.addresses) {
                (v2::Command::Local, ..) => None,
                (_, v2::Protocol::Stream, v2::Addresses::IPv4(a)) => {
                    Some(client(a.source_address.into(), a.source_port))
                }
                (_, v2::Protocol::Stream, v2::Addresses::IPv6(a)) => {
                    Some(client(a.source_address.into(), a.source_port))
                }
                // Addresses of another transport (UDP, or none named) are no TCP client's:
                // the peer stays, as HAProxy keeps it.
                (_, v2::Protocol::Datagram | v2::Protocol::Unspecified, _) => None,
                (_, _, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            },
        },
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Invalid,
    }
}

/// The client a header names, an IPv4 address sent in IPv6 form (`::ffff:a.b.c.d`) read as
/// the IPv4 address it is: logs, limits and `X-Forwarded-For` all show the one form.
fn client(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

/// The v2 signature, which starts every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a v2 header's fixed 16 bytes decide before its address block is in, where ppp would
/// wait for the whole header: a version or command that is none (refused once its byte is
/// in), a length over the limit (refused once it is in, not after the handshake timeout),
/// and a `LOCAL` header, which the spec says to accept whatever family it names and discard
/// its block (a balancer's health check may name its own family with no addresses, which ppp
/// refuses). `None` leaves the header to ppp.
fn v2_fixed_part(input: &[u8]) -> Option<Parsed> {
    if input.len() <= V2_SIGNATURE.len() || !input.starts_with(V2_SIGNATURE) {
        return None;
    }
    let version_command = input[12];
    if version_command >> 4 != 2 || version_command & 0x0f > 1 {
        return Some(Parsed::Invalid);
    }
    let Some(&[_, _, high, low]) = input.get(12..16) else {
        return Some(Parsed::Incomplete);
    };
    let length = 16 + usize::from(u16::from_be_bytes([high, low]));
    if length > MAX_HEADER {
        return Some(Parsed::TooLong);
    }
    let local = version_command == 0x20;
    match local {
        true if input.len() >= length => Some(Parsed::Header {
            length,
            client: None,
        }),
        true => Some(Parsed::Incomplete),
        false => None,
    }
}

/// Whether a v1 line not ended yet can no longer become a header, so that it is refused at
/// once rather than at the handshake timeout: a CR with a byte behind it (the line has no LF
/// yet, so not its CRLF), a protocol that none of `TCP4`, `TCP6` and `UNKNOWN` begins with,
/// or, in a TCP line, a byte no address or port has. (An `UNKNOWN` line's rest is anything.)
fn v1_hopeless(input: &[u8]) -> bool {
    if input.iter().rev().skip(1).any(|&b| b == b'\r') {
        return true;
    }
    let rest = input.get(6..).unwrap_or_default();
    let known = [&b"TCP4"[..], b"TCP6", b"UNKNOWN"];
    let Some(end) = rest.iter().position(|&b| b == b' ' || b == b'\r') else {
        return !known.iter().any(|protocol| protocol.starts_with(rest));
    };
    match &rest[..end] {
        b"UNKNOWN" => false,
        b"TCP4" | b"TCP6" => {
            !(rest[end..].iter()).all(|&b| b.is_ascii_hexdigit() || b" .:\r".contains(&b))
        }
        _ => true,
    }
}

/// Whether a line ppp accepted as a v1 header is one: one line, ended by its only CR and LF,
/// with ports of digits only. ppp reads past a bare LF in an `UNKNOWN` line to the next CRLF
/// (and takes `PROXY UNKNOWN \n` when nothing follows it), so its answer would hang on how
/// the bytes arrived, where a bare LF ends the line here, as an invalid one, at once.
fn is_v1_line(line: &str) -> bool {
    line.strip_suffix("\r\n")
        .is_some_and(|line| !line.contains(['\r', '\n']))
        && ports_are_digits(line)
}

/// Whether a v1 line's ports (its last two fields, if it names addresses) are plain decimal
/// digits, as the spec writes them: ppp reads them with Rust's parser, which also takes `+1`.
fn ports_are_digits(line: &str) -> bool {
    let fields: Vec<&str> = line.trim_end_matches("\r\n").split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "TCP4" | "TCP6", _, _, source, destination] => [source, destination]
            .iter()
            .all(|port| port.bytes().all(|b| b.is_ascii_digit())),
        _ => true,
    }
}

fn v1_header(header: &v1::Header) -> Parsed {
    Parsed::Header {
        length: header.header.len(),
        client: match header.addresses {
            v1::Addresses::Tcp4(a) => Some(client(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(client(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    #[test]
    fn v1_headers_give_the_client_and_their_exact_length() {
        let tcp4 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01";
        assert_eq!(
            parse(tcp4),
            Parsed::Header {
                length: tcp4.len() - 3,
                client: client("203.0.113.7:51000")
            }
        );
        let tcp6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n";
        assert_eq!(
            parse(tcp6),
            Parsed::Header {
                length: tcp6.len(),
                client: client("[2001:db8::1]:51000")
            }
        );
        let mapped = b"PROXY TCP6 ::ffff:203.0.113.7 ::1 51000 443\r\n";
        assert_eq!(
            parse(mapped),
            Parsed::Header {
                length: mapped.len(),
                client: client("203.0.113.7:51000")
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                length: unknown.len(),
                client: None
            }
        );
    }

    #[test]
    fn v2_headers_with_tlvs_give_the_client_and_their_exact_length() {
        let addrs: (SocketAddr, SocketAddr) = (
            "198.51.100.9:40000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addrs,
        )
        .write_tlv(v2::Type::NoOp, b"padding")
        .unwrap()
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                length: header.len(),
                client: client("198.51.100.9:40000")
            }
        );
        // A TLV that claims more bytes than the header holds: refused, not skipped.
        let mut bad = header.clone();
        let last = bad.len() - 1;
        bad[last - b"padding".len() - 1] = 0x7f;
        assert_eq!(parse(&bad), Parsed::Invalid);
        let mut short = header.clone();
        short[15] -= 1;
        short.pop();
        assert_eq!(parse(&short), Parsed::Invalid);
        // Addresses over UDP, or with no transport named: no TCP client's, the peer stays.
        for protocol in [v2::Protocol::Datagram, v2::Protocol::Unspecified] {
            let other =
                v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, protocol, addrs)
                    .build()
                    .unwrap();
            let parsed = parse(&other);
            let expected = Parsed::Header {
                length: other.len(),
                client: None,
            };
            assert_eq!(parsed, expected, "{protocol:?}");
        }
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local),
            Parsed::Header {
                length: local.len(),
                client: None
            }
        );
    }

    #[test]
    fn a_v2_fixed_part_decides_what_it_can_at_once() {
        let fixed = |version_command: u8, family: u8, length: u16| {
            let mut header = V2_SIGNATURE.to_vec();
            header.extend([version_command, family]);
            header.extend(length.to_be_bytes());
            header
        };
        // LOCAL naming AF_INET with no addresses: accepted, its block (none) discarded.
        let local = fixed(0x20, 0x11, 0);
        assert_eq!(
            parse(&[&local[..], b"\x16\x03\x01"].concat()),
            Parsed::Header {
                length: 16,
                client: None
            }
        );
        // LOCAL with a block: the block is skipped whatever is in it.
        let mut with_block = fixed(0x20, 0x11, 5);
        assert_eq!(parse(&with_block), Parsed::Incomplete);
        with_block.extend(b"abcde");
        assert_eq!(
            parse(&with_block),
            Parsed::Header {
                length: 21,
                client: None
            }
        );
        // A version or command byte that is none: refused before the length is in.
        for bad in [0x11, 0x31, 0x22, 0x2f] {
            assert_eq!(
                parse(&fixed(bad, 0x11, 12)[..13]),
                Parsed::Invalid,
                "{bad:#x}"
            );
        }
        // More than the limit announced: refused once the length is in.
        assert_eq!(parse(&fixed(0x21, 0x11, 65535)), Parsed::TooLong);
        assert_eq!(parse(&fixed(0x21, 0x11, 12)[..14]), Parsed::Incomplete);
    }

    #[test]
    fn partial_headers_wait_and_anything_else_is_invalid() {
        assert_eq!(parse(b"PROX"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 10.0.0"), Parsed::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0\r\nQU"), Parsed::Incomplete);
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 "),
            Parsed::Incomplete
        );
        // A TLS ClientHello from a client that was not meant to come through the balancer.
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Parsed::Invalid
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid);
        // Damaged at its start, whatever follows.
        assert_eq!(
            parse(b"P OXY T\rP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Parsed::Invalid
        );
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX\n\x21"), Parsed::Invalid);
        assert_eq!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Invalid
        );
    }

    /// Asserts that `input` is refused, named in words if it is not.
    fn refused(input: &[u8]) {
        let lossy = String::from_utf8_lossy(input);
        assert_eq!(parse(input), Parsed::Invalid, "{lossy:?}");
    }

    #[test]
    fn a_v1_line_that_ends_too_soon_is_refused_at_once() {
        // Its CRLF is in, so it is complete: no more bytes can make it valid, and the ones
        // behind it (a ClientHello, an HTTP request) are no part of it.
        for trailing in [
            &b""[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ] {
            for line in [
                &b"PROXY TCP4 1.2.3.4\r\n"[..],
                b"PROXY\r\n",
                b"PROXY \r\n",
                b"PROXY TCP4\r\n",
                b"PROXY TCP4 \r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
                b"PROXY TCP6 ::1 ::1 1\r\n",
                b"PROXY TCP6 ::1\r\n",
                b"PROXY TCP\r\n",
                b"PROXY UNKNOW\r\n",
                // A CR that is not the line's end, the line's CRLF behind it.
                b"PROXY TCP4 1.2.3.4\rX 5.6.7.8 1 2\r\n",
                // Ports are decimal digits, nothing else.
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 443\r\n",
                b"PROXY TCP6 ::1 ::1 1 +443\r\n",
                // A line ended by a bare LF: no CR can come before it any more.
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                b"PROXY UNKNOWN\n",
                b"PROXY UNKNOWN \n",
                b"PROXY UNKNOWN 1.2.3.4\n",
            ] {
                refused(&[line, trailing].concat());
            }
        }
    }

    #[test]
    fn a_v1_line_that_cannot_become_a_header_is_refused_before_its_end() {
        // No LF in: without these refusals, each would wait out the handshake timeout.
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\x16\x03"[..],
            b"PROXY TCP4 1.2.3.4\rX",
            b"PROXY UNKNOWN \r ",
            b"PROXY X",
            b"PROXY TCPX",
            b"PROXY TCP44",
            b"PROXY UNKNOWNX",
            b"PROXY TCP5 1.2.3.4",
            b"PROXY TCP4 1.2.3.4%",
            b"PROXY TCP6 fe80::1%eth0",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1",
            b"PROXY TCP4 \x16\x03\x01",
        ] {
            refused(line);
        }
        // Every prefix of a valid line, and an UNKNOWN line's anything, still wait.
        for line in [
            &b"PROXY TCP6 2001:DB8::a 10.0.0.1 51000 443\r"[..],
            b"PROXY UNKNOWN whatever % + x",
            b"PROXY UNKNOWN\r",
        ] {
            for cut in 0..=line.len() {
                assert_eq!(
                    parse(&line[..cut]),
                    Parsed::Incomplete,
                    "{:?}",
                    &line[..cut]
                );
            }
        }
    }

    #[test]
    fn a_complete_v1_line_is_valid_whatever_follows_it() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for trailing in [&b""[..], b"\x16\x03\x01", b"GET / HTTP/1.1\r\n\r\n"] {
            assert_eq!(
                parse(&[&line[..], trailing].concat()),
                Parsed::Header {
                    length: line.len(),
                    client: client("1.2.3.4:1")
                }
            );
        }
    }

    #[test]
    fn a_v1_line_split_anywhere_waits_for_its_crlf() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\x16\x03\x01";
        let end = line.len() - 3;
        // Every cut before the LF is incomplete (including one between CR and LF)...
        for cut in 0..end {
            assert_eq!(parse(&line[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        // ...and every one from the LF on is the header.
        for cut in end..=line.len() {
            assert_eq!(
                parse(&line[..cut]),
                Parsed::Header {
                    length: end,
                    client: client("1.2.3.4:1")
                },
                "cut at {cut}"
            );
        }
        // Short shapes wait too until their CRLF: only the CRLF says the line is short.
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\r"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\r\n"), Parsed::Invalid);
    }

    #[test]
    fn a_v1_line_without_crlf_in_its_107_bytes_is_refused() {
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(106, b'1');
        assert_eq!(parse(&long), Parsed::Incomplete);
        long.push(b'1');
        assert_eq!(parse(&long), Parsed::Invalid);
        long.extend_from_slice(b" 1 2\r\n");
        assert_eq!(parse(&long), Parsed::Invalid);
    }

    /// Headers as balancers send them, a ClientHello, and an HTTP request: the seeds the
    /// property below damages.
    fn seeds() -> Vec<Vec<u8>> {
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0, 19]);
        v2.extend([203, 0, 113, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x01, 0xbb]);
        v2.extend([0x03, 0, 4, 1, 2, 3, 4]);
        vec![
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 51000 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            b"GET / HTTP/1.1\r\n".to_vec(),
        ]
    }

    /// A byte as a header line is made of, mostly: its separators, digits and address
    /// punctuation; now and then any byte.
    fn line_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        proptest::prop_oneof![
            3 => proptest::sample::select(b"\r\n 0123456789.:".to_vec()),
            1 => proptest::num::u8::ANY,
        ]
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing panics on none, a header is never longer than the
        /// bytes in, and what a prefix decided (a header, or a refusal) the whole says too:
        /// the reader acts on a prefix, and more bytes must not have changed its mind.
        #[test]
        fn a_decision_on_a_prefix_stands_whatever_follows(
            seed in 0usize..7,
            edits in proptest::collection::vec((0usize..64, line_byte(), 0u8..3), 0..4),
            tail in proptest::collection::vec(line_byte(), 0..24),
        ) {
            let mut input = seeds().swap_remove(seed);
            // Each edit replaces a byte, puts one in, or takes one out.
            for (at, byte, how) in edits {
                let at = at % input.len().max(1);
                match how {
                    0 if at < input.len() => input[at] = byte,
                    1 => input.insert(at.min(input.len()), byte),
                    _ if at < input.len() => drop(input.remove(at)),
                    _ => input.push(byte),
                }
            }
            input.extend(tail);
            let whole = parse(&input);
            if let Parsed::Header { length, .. } = whole {
                proptest::prop_assert!(length <= input.len());
            }
            for cut in 0..input.len() {
                match parse(&input[..cut]) {
                    Parsed::Incomplete => {}
                    decided => proptest::prop_assert_eq!(&decided, &whole, "cut at {}", cut),
                }
            }
        }
    }
}
