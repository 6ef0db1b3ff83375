//! The lean server side of the echo backend: the upgrade handshake and a streaming echo that
//! unmasks each client frame straight into the write buffer as a server frame (same opcode, same
//! FIN bit), so fragmented messages come back fragmented alike and no message is assembled.
//! Pings are answered with pongs, a close frame is answered with the same close and ends the
//! connection. A client that breaks the protocol (an unmasked or reserved frame, reserved bits
//! set with no extension agreed, a continuation with no message begun or a new message inside
//! a fragmented one, a length over 2^63, a bad control frame, a close with a code no endpoint
//! may send) gets a close with 1002, or 1007 for a
//! close reason that is not UTF-8 (RFC 6455 §7.4.1), before the connection is dropped, so a
//! proxy's test against this backend sees the answer a conforming server gives.

use std::{fmt, io};

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ws::{accept_key, payload_len, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// Generous beside wsgate's own limits (16 KiB of head and 100 fields by default, the head size
/// configurable), so that a request wsgate forwards, with the four fields it adds, is never
/// refused by the backend behind it in a test or a benchmark.
const MAX_HEAD: usize = 1024 * 1024;
const MAX_FIELDS: usize = 128;
/// Large reads matter for bulk transfers: measured on loopback, a 16 KiB buffer growing to 256 KiB
/// gave 1.45 GB/s each way, a 256 KiB one from the start 4.3 GB/s (and a third of the CPU per MB
/// on both sides).
const READ_BUF: usize = 256 * 1024;

/// Reads the upgrade request and answers it. Returns bytes received after the request head.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    // A client that never completes its head, or speaks TLS to this plain port, gets a 400
    // and a close at once (or after HEAD_TIMEOUT): a clear error, not its own timeout.
    let answer = match tokio::time::timeout(HEAD_TIMEOUT, read_head(s, &mut buf)).await {
        Ok(Ok(end)) => response(&buf[..end]).map(|resp| (resp, end)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "no complete request head in {HEAD_TIMEOUT:?}"
        )),
    };
    match answer {
        Ok((resp, end)) => {
            s.write_all(resp.as_bytes()).await?;
            s.flush().await?;
            Ok(buf.split_off(end))
        }
        Err(e) => {
            let _ = s.write_all(refusal(&e).as_bytes()).await;
            let _ = s.shutdown().await;
            Err(e)
        }
    }
}

/// A request for a WebSocket version other than 13: answered 426 with the version spoken
/// (RFC 6455 §4.4), where every other refusal is a 400.
#[derive(Debug)]
struct OtherVersion;

impl fmt::Display for OtherVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not WebSocket version 13")
    }
}

impl std::error::Error for OtherVersion {}

/// The answer to a request refused for `why`.
fn refusal(why: &anyhow::Error) -> String {
    let (status, extra) = match why.downcast_ref::<OtherVersion>() {
        Some(_) => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        None => ("400 Bad Request", ""),
    };
    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads into `buf` until the end of a request head; returns where the head ends. Bytes that
/// cannot begin an HTTP request (a TLS ClientHello, say) fail at once.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the upgrade request");
        }
        // Only the new bytes (and the three before them) can complete the blank line, so a large
        // head arriving in pieces is searched once, not once per piece.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(from + i + 4);
        }
        if buf.len() > MAX_HEAD {
            bail!("request head too large");
        }
        // The early refusal is for bytes that are no request at all, which show in the first piece.
        if from == 0 {
            let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
            if let Err(e) = httparse::Request::new(&mut headers).parse(buf) {
                bail!("not an HTTP request: {e}");
            }
        }
    }
}

/// The 101 response for an upgrade request head, or why it is not one.
pub fn response(head: &[u8]) -> Result<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => bail!("malformed request head"),
    }
    if req.method != Some("GET") {
        bail!("not a GET");
    }
    // An upgrade needs HTTP/1.1 (RFC 6455 §4.1); HTTP/1.0 has no 101 to answer with.
    if req.version != Some(1) {
        bail!("not HTTP/1.1");
    }
    let (mut key, mut upgrade, mut version_ok, mut protocol) = (None, false, false, None);
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            version_ok = value == "13";
        } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") && protocol.is_none() {
            protocol = value.split(',').map(str::trim).find(|p| !p.is_empty());
        }
    }
    let key = key.ok_or_else(|| anyhow!("no Sec-WebSocket-Key"))?;
    if !upgrade {
        bail!("not a WebSocket upgrade");
    }
    if !version_ok {
        return Err(OtherVersion.into());
    }
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    Ok(resp)
}

/// A client broke the protocol: the close code it is answered with, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    why: &'static str,
}

impl Violation {
    fn protocol(why: &'static str) -> Violation {
        Violation { code: 1002, why }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (answered with close {})", self.why, self.code)
    }
}

impl std::error::Error for Violation {}

/// Whether a close frame received may carry `code` (RFC 6455 §7.4: 1004–1006 and 1015 are
/// never sent, 1016–2999 are reserved for the protocol, 3000–4999 are for applications).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What the echo state machine wants after consuming input.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep reading.
    More,
    /// A close frame was answered: write what is queued and end the connection.
    Close,
}

/// Streaming client-frame → server-frame echo.
#[derive(Debug, Default)]
pub struct Echoer {
    /// Payload bytes of the current data frame still to unmask and copy.
    remaining: u64,
    mask: [u8; 4],
    /// Offset into the current frame's payload (mask phase).
    offset: usize,
    /// A fragmented message is under way: its first frame came without FIN.
    in_message: bool,
}

impl Echoer {
    /// Consumes client bytes from `input`, appending the echo to `out`. Returns bytes consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, Next), Violation> {
        let mut pos = 0;
        loop {
            pos += self.echo_payload(&input[pos..], out);
            if self.remaining > 0 {
                return Ok((pos, Next::More));
            }
            let rest = &input[pos..];
            let Some(head) = ClientHead::decode(rest)? else {
                return Ok((pos, Next::More));
            };
            match head.opcode() {
                OP_CONT | OP_TEXT | OP_BINARY => {
                    self.in_message = self.next_in_message(head)?;
                    push_header(out, head.b0, head.len);
                    pos += head.hdr;
                    self.remaining = head.len;
                    self.mask = head.mask;
                    self.offset = 0;
                }
                OP_PING | OP_PONG | OP_CLOSE => match answer_control(head, rest, out)? {
                    Some((total, Next::More)) => pos += total,
                    Some((total, Next::Close)) => return Ok((pos + total, Next::Close)),
                    None => return Ok((pos, Next::More)),
                },
                _ => return Err(Violation::protocol("reserved opcode")),
            }
        }
    }

    /// Whether a fragmented message is under way after the data frame `head` (RFC 6455 §5.4:
    /// a continuation only inside a message, a new message only outside one).
    fn next_in_message(&self, head: ClientHead) -> Result<bool, Violation> {
        match (head.opcode(), self.in_message) {
            (OP_CONT, false) => Err(Violation::protocol(
                "continuation frame with no message begun",
            )),
            (OP_TEXT | OP_BINARY, true) => {
                Err(Violation::protocol("new message inside a fragmented one"))
            }
            _ => Ok(head.b0 & 0x80 == 0),
        }
    }

    /// Unmasks into `out` what `input` holds of the current data frame's payload; returns the
    /// bytes taken.
    #[inline]
    fn echo_payload(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        if self.remaining == 0 {
            return 0;
        }
        let take = self.remaining.min(input.len() as u64) as usize;
        unmask_into(out, &input[..take], self.mask, self.offset);
        self.offset += take;
        self.remaining -= take as u64;
        take
    }
}

/// A client frame's head, decoded.
#[derive(Debug, Clone, Copy)]
struct ClientHead {
    /// The first byte, echoed as is: FIN, RSV bits and opcode.
    b0: u8,
    len: u64,
    /// Bytes of the head, mask key included: where the payload starts.
    hdr: usize,
    mask: [u8; 4],
}

impl ClientHead {
    /// The head at the start of `rest`, or None until all of it is in. An unmasked frame fails
    /// as soon as its second byte is in.
    #[inline]
    fn decode(rest: &[u8]) -> Result<Option<ClientHead>, Violation> {
        if rest.len() < 2 {
            return Ok(None);
        }
        if rest[1] & 0x80 == 0 {
            return Err(Violation::protocol("client frame without mask"));
        }
        // No extension is agreed (the handshake answers none), so none may use them.
        if rest[0] & 0x70 != 0 {
            return Err(Violation::protocol(
                "reserved bits set, no extension agreed",
            ));
        }
        let Some((len, hdr)) = payload_len(rest) else {
            return Ok(None);
        };
        // RFC 6455 §5.2: the 64-bit length's most significant bit must be 0.
        if len > i64::MAX as u64 {
            return Err(Violation::protocol("payload length over 2^63"));
        }
        let Some(key) = rest.get(hdr..hdr + 4) else {
            return Ok(None);
        };
        Ok(Some(ClientHead {
            b0: rest[0],
            len,
            hdr: hdr + 4,
            mask: [key[0], key[1], key[2], key[3]],
        }))
    }

    fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }
}

/// Answers the control frame at the start of `rest` once it is all in: a ping with a pong, a
/// close with a close (and `Next::Close`), a pong with nothing. Returns the frame's length and
/// what next, or None until then.
fn answer_control(
    head: ClientHead,
    rest: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<(usize, Next)>, Violation> {
    if head.len > 125 || head.b0 & 0x80 == 0 {
        return Err(Violation::protocol(
            "control frame fragmented or over 125 bytes",
        ));
    }
    let total = head.hdr + head.len as usize;
    let Some(masked) = rest.get(head.hdr..total) else {
        return Ok(None);
    };
    let payload: Vec<u8> = masked
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ head.mask[i & 3])
        .collect();
    match head.opcode() {
        OP_PING => {
            push_header(out, 0x80 | OP_PONG, payload.len() as u64);
            out.extend_from_slice(&payload);
        }
        OP_CLOSE => {
            check_close(&payload)?;
            // Echo the status code back (RFC 6455 §5.5.1), without the reason.
            let code = &payload[..payload.len().min(2)];
            push_header(out, 0x80 | OP_CLOSE, code.len() as u64);
            out.extend_from_slice(code);
            return Ok(Some((total, Next::Close)));
        }
        _ => {}
    }
    Ok(Some((total, Next::More)))
}

/// A received close's payload: empty, or a code an endpoint may send and a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), Violation> {
    match payload {
        [] => Ok(()),
        [_] => Err(Violation::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            if !sendable_close_code(u16::from_be_bytes([*hi, *lo])) {
                return Err(Violation::protocol("close code no endpoint may send"));
            }
            std::str::from_utf8(reason)
                .map(|_| ())
                .map_err(|_| Violation {
                    code: 1007,
                    why: "close reason not UTF-8",
                })
        }
    }
}

/// The close frame answering `v`.
fn violation_close(v: Violation, out: &mut Vec<u8>) {
    push_header(out, 0x80 | OP_CLOSE, 2);
    out.extend_from_slice(&v.code.to_be_bytes());
}

/// Appends `src` unmasked with `mask`, `offset` bytes into the frame's payload; 8 bytes at a time.
pub fn unmask_into(out: &mut Vec<u8>, src: &[u8], mask: [u8; 4], offset: usize) {
    let rot = [
        mask[offset & 3],
        mask[(offset + 1) & 3],
        mask[(offset + 2) & 3],
        mask[(offset + 3) & 3],
    ];
    let m64 = u64::from_ne_bytes([
        rot[0], rot[1], rot[2], rot[3], rot[0], rot[1], rot[2], rot[3],
    ]);
    let start = out.len();
    out.extend_from_slice(src);
    let mut chunks = out[start..].chunks_exact_mut(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(word) ^ m64).to_ne_bytes());
    }
    // Whole 8-byte chunks keep the mask phase, so the tail starts at phase 0 of `rot`.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rot[i & 3];
    }
}

fn push_header(out: &mut Vec<u8>, b0: u8, len: u64) {
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Handshake, then echo until the client closes.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<()> {
    let leftover = handshake(&mut s).await?;
    // Reads go into spare capacity (never zeroed), so an idle tunnel's buffer stays unbacked.
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUF.max(leftover.len()));
    rbuf.extend_from_slice(&leftover);
    let mut start = 0usize;
    let mut out = Vec::new();
    let mut echo = Echoer::default();
    loop {
        if rbuf.len() > start {
            let (used, next) = match echo.feed(&rbuf[start..], &mut out) {
                Ok(fed) => fed,
                Err(v) => {
                    // `out` holds whole frames only: a violation is found at a frame's head.
                    violation_close(v, &mut out);
                    let _ = s.write_all(&out).await;
                    let _ = s.shutdown().await;
                    return Err(v.into());
                }
            };
            start += used;
            if !out.is_empty() {
                s.write_all(&out).await?;
                s.flush().await?;
                out.clear();
            }
            if next == Next::Close {
                let _ = s.shutdown().await;
                return Ok(());
            }
        }
        if start == rbuf.len() {
            rbuf.clear();
            start = 0;
        } else if rbuf.capacity() - rbuf.len() < READ_BUF / 4 {
            rbuf.drain(..start);
            start = 0;
        }
        if s.read_buf(&mut rbuf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::masked_frame;

    #[test]
    fn answers_upgrades_and_refuses_the_rest() {
        let req = b"GET /any HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                    Sec-WebSocket-Protocol: chat, superchat\r\n\r\n";
        let resp = response(req).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }

    #[test]
    fn http_1_0_is_400_and_another_websocket_version_426_with_13() {
        let upgrade = "GET /any HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";
        let old_http = upgrade.replacen("HTTP/1.1", "HTTP/1.0", 1);
        let why = response(old_http.as_bytes()).unwrap_err();
        assert!(refusal(&why).starts_with("HTTP/1.1 400 "), "{why}");
        let version_8 = upgrade.replace("Version: 13", "Version: 8");
        let answer = refusal(&response(version_8.as_bytes()).unwrap_err());
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        assert!(
            answer.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{answer}"
        );
    }

    #[test]
    fn echoes_frames_in_any_split() {
        let mut input = Vec::new();
        input.extend(masked_frame(OP_TEXT, b"hello", [1, 2, 3, 4]));
        input.extend(masked_frame(OP_PING, b"p", [5, 6, 7, 8]));
        input.extend(masked_frame(OP_BINARY, &[9u8; 70000], [9, 8, 7, 6]));
        input.extend(masked_frame(OP_CLOSE, &1000u16.to_be_bytes(), [1, 1, 1, 1]));
        let mut expected = vec![0x81, 5];
        expected.extend_from_slice(b"hello");
        expected.extend([0x8A, 1, b'p', 0x82, 127]);
        expected.extend(70000u64.to_be_bytes());
        expected.extend([9u8; 70000]);
        expected.extend([0x88, 2, 0x03, 0xE8]);
        for chunk in [1usize, 5, 1000, input.len()] {
            let mut e = Echoer::default();
            let mut out = Vec::new();
            let mut pending = Vec::new();
            let mut closed = false;
            for piece in input.chunks(chunk) {
                pending.extend_from_slice(piece);
                let (n, next) = e.feed(&pending, &mut out).unwrap();
                pending.drain(..n);
                closed |= next == Next::Close;
            }
            assert!(closed, "chunk {chunk}");
            assert_eq!(out, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn unmask_matches_bytewise_at_every_phase() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..77u8).collect();
        for offset in 0..8 {
            let mut out = vec![0xAA];
            unmask_into(&mut out, &src, mask, offset);
            let expected: Vec<u8> = std::iter::once(0xAA)
                .chain(
                    src.iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[(offset + i) & 3]),
                )
                .collect();
            assert_eq!(out, expected, "offset {offset}");
        }
    }

    #[test]
    fn refuses_unmasked_frames() {
        let mut out = Vec::new();
        let refused = |r: Result<_, Violation>| r.map_err(|v| v.code);
        assert_eq!(
            refused(Echoer::default().feed(&[0x82, 0x01, 0x00], &mut out)),
            Err(1002)
        );
        // As soon as the second byte is in, before the extended length.
        assert_eq!(
            refused(Echoer::default().feed(&[0x82, 126], &mut out)),
            Err(1002)
        );
    }

    #[test]
    fn a_close_with_a_code_no_endpoint_sends_is_a_protocol_error() {
        let close = |payload: &[u8]| {
            let frame = masked_frame(OP_CLOSE, payload, [3, 1, 4, 1]);
            let mut out = Vec::new();
            Echoer::default()
                .feed(&frame, &mut out)
                .map(|(_, next)| (next, out))
                .map_err(|v| v.code)
        };
        for ok in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let code = ok.to_be_bytes();
            let mut echoed = vec![0x88, 2];
            echoed.extend(code);
            assert_eq!(close(&code), Ok((Next::Close, echoed)), "{ok}");
        }
        assert_eq!(close(&[]), Ok((Next::Close, vec![0x88, 0])));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(close(&bad.to_be_bytes()), Err(1002), "{bad}");
        }
        assert_eq!(close(&[0x03]), Err(1002), "one byte");
        assert_eq!(close(&[0x03, 0xE8, 0xC3, 0x28]), Err(1007), "bad UTF-8");
        assert_eq!(
            close(&[0x03, 0xE8, b'o', b'k']).map(|c| c.0),
            Ok(Next::Close)
        );
    }

    /// What wsgate forwards at its limits (100 fields and the four it adds; a head over the
    /// default 16 KiB, as `max_request_header_bytes` allows) is taken, arriving in pieces that
    /// split the blank line, and the bytes behind the head are kept.
    #[tokio::test]
    async fn takes_the_largest_heads_wsgate_forwards() {
        let mut req = String::from(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        );
        for i in 0..99 {
            req.push_str(&format!("X-{i}: {}\r\n", "v".repeat(1000)));
        }
        req.push_str("\r\n");
        let mut sent = req.clone().into_bytes();
        sent.extend_from_slice(b"rest");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(1001) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let mut buf = Vec::new();
        let end = read_head(&mut server, &mut buf).await.unwrap();
        let _client = writer.await.unwrap();
        assert_eq!(end, req.len());
        assert!(response(&buf[..end]).unwrap().starts_with("HTTP/1.1 101"));
        assert!(
            buf[end..].starts_with(b"r"),
            "the bytes behind the head are kept"
        );
    }

    /// Over a real (in-memory) stream: the 1002 close is written before the connection ends.
    #[tokio::test]
    async fn a_client_breaking_the_protocol_is_told_1002_before_the_end() {
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(serve_conn(server));
        let req = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        client.write_all(req.as_bytes()).await.unwrap();
        client
            .write_all(&masked_frame(
                OP_CLOSE,
                &1005u16.to_be_bytes(),
                [9, 9, 9, 9],
            ))
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(got.starts_with(b"HTTP/1.1 101"));
        assert_eq!(got[head_end..], [0x88, 2, 0x03, 0xEA]);
        let err = served.await.unwrap().unwrap_err();
        assert_eq!(err.downcast_ref::<Violation>().map(|v| v.code), Some(1002));
    }

    #[test]
    fn fragments_out_of_place_reserved_bits_and_huge_lengths_are_protocol_errors() {
        let frame = |b0: u8, payload: &[u8]| {
            let mut f = masked_frame(b0 & 0x0F, payload, [1, 2, 3, 4]);
            f[0] = b0;
            f
        };
        let fed = |frames: &[Vec<u8>]| {
            let mut out = Vec::new();
            Echoer::default()
                .feed(&frames.concat(), &mut out)
                .map(|_| out)
                .map_err(|v| v.code)
        };
        // A fragmented message, a ping inside it: echoed alike.
        let fragmented = [frame(0x01, b"a"), frame(0x89, b""), frame(0x80, b"b")];
        let echoed = fed(&fragmented).expect("a fragmented message");
        assert_eq!(echoed, [0x01, 1, b'a', 0x8A, 0, 0x80, 1, b'b']);
        assert_eq!(fed(&[frame(0x80, b"x")]), Err(1002), "no message begun");
        assert_eq!(
            fed(&[frame(0x01, b"a"), frame(0x82, b"b")]),
            Err(1002),
            "a new message inside one"
        );
        assert_eq!(fed(&[frame(0xC1, b"x")]), Err(1002), "RSV1");
        assert_eq!(fed(&[frame(0x92, b"x")]), Err(1002), "RSV3");
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend((1u64 << 63).to_be_bytes());
        huge.extend([0; 4]);
        assert_eq!(fed(&[huge]), Err(1002), "length with its top bit set");
    }

    #[test]
    fn a_reserved_opcode_is_a_protocol_error_after_the_frames_before_it() {
        let mut input = masked_frame(OP_TEXT, b"hi", [1, 2, 3, 4]);
        input.extend(masked_frame(0x3, b"", [1, 2, 3, 4]));
        let mut out = Vec::new();
        let err = Echoer::default().feed(&input, &mut out).unwrap_err();
        assert_eq!(err.code, 1002);
        assert_eq!(
            out,
            [0x81, 2, b'h', b'i'],
            "the whole frame before it is echoed"
        );
    }
}
