//! A lean WebSocket client: the HTTP/1.1 upgrade and a frame codec.
//!
//! The load generator must not be the bottleneck, so messages are pre-built masked frames that
//! are copied into the write buffer (their first few payload bytes overwritten with their
//! number), and received data frames are counted and skipped without buffering their payloads,
//! only their type, length and number checked against the message whose echo is owed. Reads
//! and writes are driven from one task by [`WsConn::poll_drive`], so a connection never blocks
//! writing while the peer waits for it to read.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::target::{Stream, Target};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A cheap per-process pseudo-random source (xorshift), good enough for mask keys and
/// Sec-WebSocket-Key nonces of a benchmark client.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            (t ^ (std::process::id() as u64) << 32) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// The expected Sec-WebSocket-Accept for a key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Builds a complete client (masked) frame.
pub fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(len + 14);
    f.push(0x80 | opcode);
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// Payload bytes at the start of each message sent that carry its number on its connection
/// (little-endian; fewer in a smaller message, the number then taken modulo what they hold).
const NUMBER_BYTES: usize = 8;

/// A message the tool sends over and over: a pre-built masked frame, copied into the write
/// buffer as is but for its first payload bytes, which are overwritten with its number on the
/// connection. Every reply can then be checked cheaply to be the echo owed (same type, same
/// length, same number): a message echoed twice or out of order, or one that is not an echo,
/// would otherwise be counted as one.
#[derive(Debug, Clone)]
pub struct Message {
    frame: Vec<u8>,
    /// Where the payload starts in `frame`.
    payload_at: usize,
    mask: [u8; 4],
    echo: Echo,
}

impl Message {
    /// A binary message of `size` bytes, with a random mask.
    pub fn binary(size: usize) -> Message {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Message::new(OP_BINARY, &payload, (random_u64() as u32).to_ne_bytes())
    }

    fn new(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Message {
        let frame = masked_frame(opcode, payload, mask);
        Message {
            payload_at: frame.len() - payload.len(),
            frame,
            mask,
            echo: Echo {
                opcode,
                len: payload.len() as u64,
            },
        }
    }

    /// Writes `number` into `frame`, a copy of this message's frame.
    fn number(&self, frame: &mut [u8], number: u64) {
        let bytes = number.to_le_bytes();
        let payload = &mut frame[self.payload_at..];
        for (i, b) in payload.iter_mut().take(NUMBER_BYTES).enumerate() {
            *b = bytes[i] ^ self.mask[i & 3];
        }
    }
}

/// What the echo of a [`Message`] must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Echo {
    opcode: u8,
    len: u64,
}

impl Echo {
    /// Payload bytes that carry the message's number.
    fn numbered(&self) -> usize {
        self.len.min(NUMBER_BYTES as u64) as usize
    }
}

/// A reply that is not the echo owed: the run counts it as an error rather than as an echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAnEcho {
    /// A message came back when every message sent had been echoed already.
    Unasked { sent: u64 },
    /// Text for binary, or binary for text.
    Opcode { message: u64, sent: u8, got: u8 },
    /// More payload than the message sent had (known at the frame that exceeds it).
    Longer { message: u64, sent: u64, got: u64 },
    /// Less payload than the message sent had.
    Shorter { message: u64, sent: u64, got: u64 },
    /// Its first bytes, the message's number as sent, differ.
    Number {
        message: u64,
        sent: [u8; NUMBER_BYTES],
        got: [u8; NUMBER_BYTES],
        len: usize,
    },
}

impl std::fmt::Display for NotAnEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an echo: ")?;
        match self {
            NotAnEcho::Unasked { sent } => write!(
                f,
                "a message came back when all {sent} sent on the connection had been echoed \
                 (the target sends messages of its own, or echoes some twice)"
            ),
            NotAnEcho::Opcode { message, sent, got } => write!(
                f,
                "message {message} was sent {} and came back {}",
                opcode_name(*sent),
                opcode_name(*got)
            ),
            NotAnEcho::Longer { message, sent, got } => write!(
                f,
                "message {message} of {sent} B came back with {got} B or more"
            ),
            NotAnEcho::Shorter { message, sent, got } => {
                write!(f, "message {message} of {sent} B came back with {got} B")
            }
            NotAnEcho::Number {
                message,
                sent,
                got,
                len,
            } => write!(
                f,
                "message {message} came back beginning with {}, sent beginning with {} (its \
                 number on the connection): a message echoed twice or out of order, or altered",
                hex(&got[..*len]),
                hex(&sent[..*len])
            ),
        }
    }
}

impl std::error::Error for NotAnEcho {}

fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        OP_TEXT => "text",
        OP_BINARY => "binary",
        _ => "a continuation",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the upgrade request and reads the 101 response. Returns bytes that arrived after the
/// response head (frames the server already sent).
pub async fn upgrade(stream: &mut Stream, target: &Target) -> Result<Vec<u8>> {
    let key_bytes = [random_u64().to_ne_bytes(), random_u64().to_ne_bytes()].concat();
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.url.path, target.url.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("send upgrade request to {}", target.addr))?;
    stream
        .flush()
        .await
        .with_context(|| format!("send upgrade request to {}", target.addr))?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .with_context(|| format!("read upgrade response from {}", target.addr))?;
        if n == 0 {
            // A TLS record (an alert, 0x15, or a handshake, 0x16, then version 3.x): a TLS
            // server refusing the plain request, the URL's scheme not matching the port.
            let tls = matches!(buf[..], [0x15 | 0x16, 0x03, ..]);
            bail!(
                "{} closed the connection instead of answering the upgrade{}",
                target.addr,
                if tls {
                    " (it answered in TLS: is it a wss:// port?)"
                } else {
                    ""
                }
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find_head_end(&buf) {
            break i;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            bail!("{}: upgrade response head too large", target.addr);
        }
    };
    check_response(&buf[..head_end], &key).map_err(|e| {
        let said = said_in(&buf[head_end..]);
        anyhow::Error::new(Answered(format!("{}: {e}{said}", target.addr)))
    })?;
    Ok(buf.split_off(head_end))
}

/// The server answered the upgrade, but not with a valid 101 (a 503 at its connection limit, a
/// 404): the connection itself worked. Marks such an error apart from a failed connection (a
/// refused connect, a reset, a TLS failure, a timeout); see [`is_answered`].
#[derive(Debug)]
pub struct Answered(pub(crate) String);

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Answered {}

/// Whether an error of [`open`] is the server's HTTP answer rather than a failed connection.
pub fn is_answered(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Answered>().is_some()
}

/// The first line of a refusal's body, if already read and plain text (wsgate's and many
/// servers' bodies say why in a line: `this port speaks TLS: connect with wss://`), for the
/// error; an HTML page's first line says nothing and is left out.
fn said_in(body: &[u8]) -> String {
    const MOST: usize = 160;
    let line = body.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return String::new();
    };
    let line = line.trim();
    if line.is_empty() || line.starts_with('<') || line.chars().any(char::is_control) {
        return String::new();
    }
    let cut: String = line.chars().take(MOST).collect();
    let more = if cut.len() < line.len() { "…" } else { "" };
    format!(" ({cut:?}{more})")
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a response head for a valid 101 upgrade answering `key`.
pub fn check_response(head: &[u8], key: &str) -> Result<()> {
    let text = std::str::from_utf8(head).map_err(|_| anyhow!("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("").trim();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status:?}");
    }
    if code != "101" {
        bail!("server answered {code} {reason} instead of 101");
    }
    let mut upgrade_ok = false;
    let mut accept_ok = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value == accept_key(key);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // The client offers none (RFC 6455 §4.1: it must then fail the connection).
            bail!("101 response picks subprotocol {value:?}, which was not offered");
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            bail!("101 response uses extension {value:?}, which was not offered");
        }
    }
    if !upgrade_ok {
        bail!("101 response without Upgrade: websocket");
    }
    if !accept_ok {
        bail!("101 response with a missing or wrong Sec-WebSocket-Accept");
    }
    Ok(())
}

/// Connects (TCP, TLS) and upgrades; returns the ready connection.
pub async fn open(target: &Target, read_buffer: usize) -> Result<WsConn> {
    let opening = async {
        let mut stream = target.connect().await?;
        let leftover = upgrade(&mut stream, target).await?;
        Ok(WsConn::new(stream, read_buffer, &leftover))
    };
    // A silent target (dropped SYNs, a TLS port that never answers, a wss:// URL on a plain
    // port) must end in an error, not a hang.
    let limit = target.open_timeout;
    tokio::time::timeout(limit, opening)
        .await
        .unwrap_or_else(|_| {
            bail!(
                "{}: no answer within {limit:?} (TCP connect, TLS handshake and upgrade)",
                target.addr
            )
        })
}

/// What a batch of received bytes contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Complete data messages (text or binary, FIN seen).
    pub messages: u64,
    /// Payload bytes of data frames.
    pub payload_bytes: u64,
}

/// Incremental parser for server-to-client frames. Data payloads are skipped, not buffered;
/// once messages are sent ([`WsConn::send`]), each reply is checked to be the echo owed.
#[derive(Debug, Default)]
pub struct FrameParser {
    /// Payload bytes of the current data frame still to skip.
    skip: u64,
    /// Whether the current data frame ends a message.
    fin: bool,
    /// The current data frame's mask key (a server must not mask, but one that does is read
    /// right).
    mask: Option<[u8; 4]>,
    /// Payload bytes of the current data frame already skipped.
    frame_pos: u64,
    /// A message has begun and not ended.
    in_message: bool,
    /// Payload bytes of the current message already skipped (all its frames).
    message_pos: u64,
    /// The first payload bytes of the current message, its number if it is an echo.
    number: [u8; NUMBER_BYTES],
    owed: Owed,
}

/// The echoes a connection is owed.
#[derive(Debug, Default)]
struct Owed {
    /// What each must be; none before a message is sent (an idle tunnel's messages are not
    /// echoes).
    echo: Option<Echo>,
    /// Messages sent.
    sent: u64,
    /// Replies begun: the one under way is the echo of message `begun - 1`.
    begun: u64,
}

/// A control frame the connection must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    Ping(Vec<u8>),
    Close(Option<u16>),
}

impl FrameParser {
    /// Records a message sent, whose echo is now owed; returns its number on the connection.
    fn owe(&mut self, echo: Echo) -> u64 {
        self.owed.echo = Some(echo);
        self.owed.sent += 1;
        self.owed.sent - 1
    }

    /// Consumes what it can from `buf`; returns bytes consumed. Control frames are pushed to
    /// `controls` (only once complete). A reply that is not the echo owed is a [`NotAnEcho`].
    pub fn parse(
        &mut self,
        buf: &[u8],
        got: &mut Received,
        controls: &mut Vec<Control>,
    ) -> Result<usize> {
        let mut pos = 0;
        loop {
            pos += self.skip_payload(&buf[pos..], got)?;
            if self.skip > 0 {
                return Ok(pos);
            }
            let rest = &buf[pos..];
            let Some(head) = FrameHead::decode(rest) else {
                return Ok(pos);
            };
            if head.rsv != 0 {
                bail!("server sent a frame with reserved bits set (no extension was agreed)");
            }
            match head.opcode {
                OP_CONT | OP_TEXT | OP_BINARY => {
                    pos += head.hdr;
                    self.start_data(head, got)?;
                }
                OP_PING | OP_PONG | OP_CLOSE => match take_control(head, rest, controls)? {
                    Some(total) => pos += total,
                    None => return Ok(pos),
                },
                other => bail!("server sent a frame with reserved opcode {other:#x}"),
            }
        }
    }

    /// Skips what `available` holds of the current data frame's payload, checking the bytes
    /// that carry an echo's number and ending the message if this frame ends one; returns the
    /// bytes skipped.
    #[inline]
    fn skip_payload(&mut self, available: &[u8], got: &mut Received) -> Result<usize> {
        if self.skip == 0 {
            return Ok(0);
        }
        let take = self.skip.min(available.len() as u64);
        if let Some(echo) = self.owed.echo {
            // Only the first few bytes of a message: the rest is skipped unread.
            if self.message_pos < echo.numbered() as u64 {
                self.read_number(&available[..take as usize], echo)?;
            }
        }
        self.skip -= take;
        self.frame_pos += take;
        self.message_pos += take;
        got.payload_bytes += take;
        if self.skip == 0 && self.fin {
            self.end_message(got)?;
        }
        Ok(take as usize)
    }

    /// Keeps the bytes of `payload` (the next of the current frame) that carry the echo's
    /// number, and checks the number once all are in.
    fn read_number(&mut self, payload: &[u8], echo: Echo) -> Result<()> {
        let numbered = echo.numbered();
        let from = self.message_pos as usize;
        let count = payload.len().min(numbered - from);
        for (i, &b) in payload[..count].iter().enumerate() {
            let key = self
                .mask
                .map_or(0, |m| m[(self.frame_pos as usize + i) & 3]);
            self.number[from + i] = b ^ key;
        }
        if from + count < numbered {
            return Ok(());
        }
        let message = self.owed.begun - 1;
        let sent = message.to_le_bytes();
        if self.number[..numbered] != sent[..numbered] {
            bail!(NotAnEcho::Number {
                message,
                sent,
                got: self.number,
                len: numbered,
            });
        }
        Ok(())
    }

    /// Starts skipping a data frame's payload, after checking that it continues a message
    /// begun or begins one, and that, as an echo, it is of the type and (so far) no longer
    /// than the message owed. An empty frame ending a message ends it at once: it has no
    /// payload whose end would.
    #[inline]
    fn start_data(&mut self, head: FrameHead, got: &mut Received) -> Result<()> {
        match (head.opcode, self.in_message) {
            (OP_CONT, false) => bail!("server sent a continuation frame with no message begun"),
            (OP_CONT, true) => {}
            (_, true) => bail!("server began a message before ending the one before"),
            (opcode, false) => self.begin_message(opcode)?,
        }
        if let Some(echo) = self.owed.echo {
            let len = self.message_pos + head.len;
            if len > echo.len {
                bail!(NotAnEcho::Longer {
                    message: self.owed.begun - 1,
                    sent: echo.len,
                    got: len,
                });
            }
        }
        self.fin = head.fin;
        self.skip = head.len;
        self.mask = head.mask;
        self.frame_pos = 0;
        if head.len == 0 && head.fin {
            self.end_message(got)?;
        }
        Ok(())
    }

    /// A message begins: as a reply, it must be owed and of the type sent.
    fn begin_message(&mut self, opcode: u8) -> Result<()> {
        self.in_message = true;
        self.message_pos = 0;
        let Some(echo) = self.owed.echo else {
            return Ok(());
        };
        let message = self.owed.begun;
        if message >= self.owed.sent {
            bail!(NotAnEcho::Unasked {
                sent: self.owed.sent
            });
        }
        self.owed.begun += 1;
        if opcode != echo.opcode {
            bail!(NotAnEcho::Opcode {
                message,
                sent: echo.opcode,
                got: opcode,
            });
        }
        Ok(())
    }

    /// The current message has ended: counted, once, as an echo, checked to be as long as
    /// the message owed.
    fn end_message(&mut self, got: &mut Received) -> Result<()> {
        self.in_message = false;
        if let Some(echo) = self.owed.echo {
            if self.message_pos != echo.len {
                bail!(NotAnEcho::Shorter {
                    message: self.owed.begun - 1,
                    sent: echo.len,
                    got: self.message_pos,
                });
            }
        }
        got.messages += 1;
        Ok(())
    }
}

/// Takes the control frame at the start of `rest` once it is all in, pushing pings and closes to
/// `controls`; returns its length, or None until then. Control frames are rare, so their
/// payload is copied out.
fn take_control(
    head: FrameHead,
    rest: &[u8],
    controls: &mut Vec<Control>,
) -> Result<Option<usize>> {
    if head.len > 125 {
        bail!("server sent a control frame of {} bytes", head.len);
    }
    let total = head.hdr + head.len as usize;
    let Some(payload) = rest.get(head.hdr..total) else {
        return Ok(None);
    };
    let mut payload = payload.to_vec();
    if let Some(m) = head.mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i & 3];
        }
    }
    match head.opcode {
        OP_PING => controls.push(Control::Ping(payload)),
        OP_CLOSE => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            controls.push(Control::Close(code));
        }
        _ => {}
    }
    Ok(Some(total))
}

/// The payload length a frame's head gives and the bytes the head takes up to there (2, 4 or
/// 10; a mask key follows), or None until those bytes are in. Shared by the client's parser and
/// the echo backend's: both are hot paths, so it is inlined and allocates nothing.
#[inline]
pub(crate) fn payload_len(rest: &[u8]) -> Option<(u64, usize)> {
    if rest.len() < 2 {
        return None;
    }
    match rest[1] & 0x7F {
        126 if rest.len() < 4 => None,
        126 => Some((u16::from_be_bytes([rest[2], rest[3]]) as u64, 4)),
        127 if rest.len() < 10 => None,
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[2..10]);
            Some((u64::from_be_bytes(b), 10))
        }
        n => Some((n as u64, 2)),
    }
}

/// A server frame's head, decoded.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    /// The RSV1-3 bits, which no extension was agreed to use.
    rsv: u8,
    opcode: u8,
    len: u64,
    /// Bytes of the head, mask key included: where the payload starts.
    hdr: usize,
    /// A server must not mask, but a masked frame is still read right.
    mask: Option<[u8; 4]>,
}

impl FrameHead {
    /// The head at the start of `rest`, or None until all of it is in.
    #[inline]
    fn decode(rest: &[u8]) -> Option<FrameHead> {
        let (len, hdr) = payload_len(rest)?;
        let head = FrameHead {
            fin: rest[0] & 0x80 != 0,
            rsv: rest[0] & 0x70,
            opcode: rest[0] & 0x0F,
            len,
            hdr,
            mask: None,
        };
        if rest[1] & 0x80 == 0 {
            return Some(head);
        }
        let key = rest.get(hdr..hdr + 4)?;
        Some(FrameHead {
            hdr: hdr + 4,
            mask: Some([key[0], key[1], key[2], key[3]]),
            ..head
        })
    }
}

/// Frames waiting to be written. Each goes out in its own write (its own TLS record, its own
/// syscall), as from an application sending messages one by one: coalescing frames queued
/// together would let every proxy relay a batch for the CPU of one message, and make "CPU per
/// message" a figure per batch.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Where each queued frame ends in `buf`.
    ends: VecDeque<usize>,
    need_flush: bool,
}

impl Outbox {
    /// Queues a copy of `frame`; returns the copy, for the caller to number.
    fn queue(&mut self, frame: &[u8]) -> &mut [u8] {
        // A write backlog that never drains (bulk against a slow target) must not keep what
        // was written: drop it once it is most of the buffer.
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            for end in &mut self.ends {
                *end -= self.pos;
            }
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        self.ends.push_back(self.buf.len());
        &mut self.buf[start..]
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes every queued frame, one write each (a frame the socket takes in part is finished
    /// before the next starts), then flushes.
    fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let end = self.ends.front().copied().unwrap_or(self.buf.len());
            match Pin::new(&mut *io).poll_write(cx, &self.buf[self.pos..end]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.need_flush = true;
                    while self.ends.front().is_some_and(|&e| e <= self.pos) {
                        self.ends.pop_front();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.pos = 0;
        if self.need_flush {
            match Pin::new(io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A WebSocket client connection with a read buffer, a write buffer and a frame parser.
pub struct WsConn {
    io: Stream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    out: Outbox,
    parser: FrameParser,
    controls: Vec<Control>,
    mask: [u8; 4],
}

impl WsConn {
    pub fn new(io: Stream, read_buffer: usize, leftover: &[u8]) -> WsConn {
        let mut rbuf = vec![0u8; read_buffer.max(leftover.len()).max(256)];
        rbuf[..leftover.len()].copy_from_slice(leftover);
        WsConn {
            io,
            rbuf,
            rstart: 0,
            rend: leftover.len(),
            out: Outbox::default(),
            parser: FrameParser::default(),
            controls: Vec::new(),
            mask: (random_u64() as u32).to_ne_bytes(),
        }
    }

    /// Queues a pre-built frame, to go out in its own write.
    pub fn queue(&mut self, frame: &[u8]) {
        self.out.queue(frame);
    }

    /// Queues `message`, numbered as the next one sent on this connection (to go out in its
    /// own write); from then on every message received must be the echo owed, in order.
    pub fn send(&mut self, message: &Message) {
        let number = self.parser.owe(message.echo);
        let copy = self.out.queue(&message.frame);
        message.number(copy, number);
    }

    /// Bytes queued but not yet handed to the socket.
    pub fn pending_write(&self) -> usize {
        self.out.pending()
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_write_to(&mut self.io, cx)
    }

    /// Writes what it can, then reads. Ready with the number of bytes read (> 0) once data
    /// arrived; an error when the peer closed or the socket failed.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_write_pending(cx) {
            return Poll::Ready(Err(anyhow!("write: {e}")));
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        // Still full: bytes not parsed yet fill it (those that came right behind the 101 can).
        // Grow it: a read into no room reads nothing, which would look like a close.
        if self.rend == self.rbuf.len() {
            let len = self.rbuf.len();
            self.rbuf.resize(len * 2, 0);
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(anyhow!("connection closed by the server")));
                }
                self.rend += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(anyhow!("read: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Parses buffered bytes: counts data messages, answers pings, fails on a close frame.
    pub fn take_received(&mut self) -> Result<Received> {
        let mut got = Received::default();
        let n = self.parser.parse(
            &self.rbuf[self.rstart..self.rend],
            &mut got,
            &mut self.controls,
        )?;
        self.rstart += n;
        for control in std::mem::take(&mut self.controls) {
            match control {
                Control::Ping(payload) => {
                    let pong = masked_frame(OP_PONG, &payload, self.mask);
                    self.queue(&pong);
                }
                Control::Close(code) => {
                    let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
                    bail!("server sent a close frame (code {code})");
                }
            }
        }
        Ok(got)
    }

    /// Waits for data, returns what arrived and when.
    pub async fn recv(&mut self) -> Result<(Received, Instant)> {
        loop {
            poll_fn(|cx| self.poll_drive(cx)).await?;
            let now = Instant::now();
            let got = self.take_received()?;
            if got.messages > 0 || got.payload_bytes > 0 {
                return Ok((got, now));
            }
        }
    }

    /// Sends a close frame (1000) and TLS close_notify, then drops the connection without waiting
    /// for the server's close frame.
    pub async fn close_now(mut self) {
        let close = masked_frame(OP_CLOSE, &1000u16.to_be_bytes(), self.mask);
        self.queue(&close);
        let _ = poll_fn(|cx| self.poll_write_pending(cx)).await;
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `max` bytes a write and `budget` in all (then it is pending), and
    /// records each write's length.
    struct Recorder {
        max: usize,
        budget: usize,
        writes: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max).min(self.budget);
            if n == 0 {
                return Poll::Pending;
            }
            self.budget -= n;
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn each_queued_frame_goes_out_in_its_own_write() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Outbox::default();
        for len in [70, 70, 3] {
            out.queue(&vec![0; len]);
        }
        let mut io = Recorder {
            max: 1000,
            budget: usize::MAX,
            writes: vec![],
        };
        assert!(out.poll_write_to(&mut io, &mut cx).is_ready());
        assert_eq!(io.writes, [70, 70, 3]);
        assert_eq!(out.pending(), 0);
        // A frame the socket takes in part is finished before the next one starts.
        out.queue(&[0; 70]);
        out.queue(&[0; 5]);
        let mut io = Recorder {
            max: 50,
            budget: usize::MAX,
            writes: vec![],
        };
        assert!(out.poll_write_to(&mut io, &mut cx).is_ready());
        assert_eq!(io.writes, [50, 20, 5]);
        // Queued while the socket has taken only part of the buffer: what was written is
        // dropped, and the frames still go out whole, one write each.
        out.queue(&[1; 70]);
        out.queue(&[2; 30]);
        let mut io = Recorder {
            max: 60,
            budget: 80,
            writes: vec![],
        };
        assert!(out.poll_write_to(&mut io, &mut cx).is_pending());
        assert_eq!(io.writes, [60, 10, 10]);
        out.queue(&[3; 50]);
        assert_eq!(
            (out.buf.len(), out.pos),
            (70, 0),
            "the 80 bytes written dropped"
        );
        io.budget = usize::MAX;
        assert!(out.poll_write_to(&mut io, &mut cx).is_ready());
        assert_eq!(io.writes, [60, 10, 10, 20, 50]);
    }

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = masked_frame(opcode, payload, [0; 4]);
        // Strip the mask: clear the mask bit and remove the 4 zero key bytes.
        f[1] &= 0x7F;
        let hdr = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        f.drain(hdr..hdr + 4);
        if !fin {
            f[0] &= 0x7F;
        }
        f
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_refusals_plain_text_line_is_quoted() {
        let tls = b"this port speaks TLS: connect with wss:// (or https://)\n";
        assert_eq!(
            said_in(tls),
            " (\"this port speaks TLS: connect with wss:// (or https://)\")"
        );
        assert_eq!(said_in(b"<html>\r\n<head><title>400</title>"), "");
        assert_eq!(said_in(b""), "");
        assert_eq!(said_in(b"\x1b[31mred\n"), "");
        assert!(said_in(&[b'x'; 500]).ends_with("…)"));
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_response(ok, key).unwrap();
        let err = check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "server answered 404 Not Found instead of 101"
        );
        let bad = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert!(check_response(bad, key).is_err());
        let ok = std::str::from_utf8(ok).unwrap();
        for (unasked, expected) in [
            ("Sec-WebSocket-Protocol: chat\r\n", "subprotocol \"chat\""),
            (
                "sec-websocket-extensions: permessage-deflate\r\n",
                "extension \"permessage-deflate\"",
            ),
        ] {
            let head = ok.replace("\r\n\r\n", &format!("\r\n{unasked}\r\n"));
            let err = check_response(head.as_bytes(), key).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn an_http_answer_is_told_apart_from_a_failed_connection() {
        let answered = anyhow::Error::new(Answered("server answered 503".into()));
        assert!(is_answered(&answered));
        assert!(is_answered(&answered.context("opening")));
        assert!(!is_answered(&anyhow!("connect to 127.0.0.1:9 refused")));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!is_answered(&anyhow::Error::new(reset).context("read")));
    }

    #[test]
    fn masked_frame_lengths() {
        assert_eq!(
            masked_frame(OP_BINARY, &[0; 125], [1; 4]).len(),
            2 + 4 + 125
        );
        assert_eq!(
            masked_frame(OP_BINARY, &[0; 126], [1; 4]).len(),
            4 + 4 + 126
        );
        assert_eq!(
            masked_frame(OP_BINARY, &[0; 65536], [1; 4]).len(),
            10 + 4 + 65536
        );
        let f = masked_frame(OP_TEXT, b"ab", [1, 2, 3, 4]);
        assert_eq!(f, vec![0x81, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2]);
    }

    #[test]
    fn parser_counts_messages_across_splits() {
        let mut stream = Vec::new();
        stream.extend(server_frame(OP_BINARY, true, &[7; 64]));
        stream.extend(server_frame(OP_BINARY, false, &[7; 300]));
        stream.extend(server_frame(OP_PING, true, b"hi"));
        stream.extend(server_frame(OP_CONT, true, &[7; 70000]));
        stream.extend(server_frame(OP_TEXT, true, b""));
        // Feed in every chunking of a few sizes: totals must not depend on the split.
        for chunk in [1usize, 3, 7, 1000, stream.len()] {
            let mut parser = FrameParser::default();
            let mut got = Received::default();
            let mut controls = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            for piece in stream.chunks(chunk) {
                pending.extend_from_slice(piece);
                let n = parser.parse(&pending, &mut got, &mut controls).unwrap();
                pending.drain(..n);
            }
            assert!(pending.is_empty(), "chunk {chunk}");
            assert_eq!(got.messages, 3, "chunk {chunk}");
            assert_eq!(got.payload_bytes, 64 + 300 + 70000, "chunk {chunk}");
            assert_eq!(
                controls,
                vec![Control::Ping(b"hi".to_vec())],
                "chunk {chunk}"
            );
        }
    }

    /// The payload of `message` as sent numbered `number`, unmasked.
    fn payload_sent(message: &Message, number: u64) -> Vec<u8> {
        let mut frame = message.frame.clone();
        message.number(&mut frame, number);
        let payload = &frame[message.payload_at..];
        let unmasked = payload.iter().enumerate();
        unmasked.map(|(i, b)| b ^ message.mask[i & 3]).collect()
    }

    /// Feeds `stream` to a parser owed `sent` echoes of `message`, in chunks of `chunk` bytes.
    fn parse_replies(
        message: &Message,
        sent: u64,
        stream: &[u8],
        chunk: usize,
    ) -> Result<Received> {
        let mut parser = FrameParser::default();
        for _ in 0..sent {
            parser.owe(message.echo);
        }
        let (mut got, mut controls, mut pending) = (Received::default(), Vec::new(), Vec::new());
        for piece in stream.chunks(chunk) {
            pending.extend_from_slice(piece);
            let n = parser.parse(&pending, &mut got, &mut controls)?;
            pending.drain(..n);
        }
        Ok(got)
    }

    #[test]
    fn a_message_is_numbered_in_its_first_bytes_and_nothing_else_changes() {
        let message = Message::binary(300);
        let plain: Vec<u8> = (0..300).map(|i| (i % 251) as u8).collect();
        let sent = payload_sent(&message, 0x0102_0304_0506_0708);
        assert_eq!(sent[..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(sent[8..], plain[8..]);
        // A message shorter than the number carries its low bytes.
        assert_eq!(payload_sent(&Message::binary(3), 0x0102_0304), [4, 3, 2]);
    }

    #[test]
    fn echoes_owed_pass_however_split_or_fragmented() {
        let message = Message::binary(300);
        let mut stream = server_frame(OP_BINARY, true, &payload_sent(&message, 0));
        // Echo 1 fragmented (one byte of its number in the first frame), a ping between.
        let second = payload_sent(&message, 1);
        stream.extend(server_frame(OP_BINARY, false, &second[..1]));
        stream.extend(server_frame(OP_PING, true, b"hi"));
        stream.extend(server_frame(OP_CONT, false, &second[1..200]));
        stream.extend(server_frame(OP_CONT, true, &second[200..]));
        // Echo 2 masked, which a server must not do but is read right.
        let third = payload_sent(&message, 2);
        stream.extend(masked_frame(OP_BINARY, &third, [9, 8, 7, 6]));
        for chunk in [1usize, 3, 7, 1000, stream.len()] {
            let got = parse_replies(&message, 3, &stream, chunk).unwrap();
            assert_eq!((got.messages, got.payload_bytes), (3, 900), "chunk {chunk}");
        }
    }

    #[test]
    fn a_reply_that_is_not_the_echo_owed_is_an_error_naming_what_differs() {
        let message = Message::binary(64);
        let first = payload_sent(&message, 0);
        let mut flipped = first.clone();
        flipped[0] ^= 0xFF;
        let twice = [first.as_slice(), first.as_slice()].map(|p| server_frame(OP_BINARY, true, p));
        for (sent, stream, why) in [
            (2, twice.concat(), "message 1 came back beginning with 0000000000000000, sent beginning with 0100000000000000"),
            (1, twice.concat(), "a message came back when all 1 sent on the connection had been echoed"),
            (1, server_frame(OP_BINARY, true, &flipped), "message 0 came back beginning with ff00"),
            (1, server_frame(OP_BINARY, true, &first[..63]), "message 0 of 64 B came back with 63 B"),
            (1, server_frame(OP_BINARY, true, &[&first[..], &[0]].concat()), "message 0 of 64 B came back with 65 B or more"),
            (1, server_frame(OP_TEXT, true, &first), "message 0 was sent binary and came back text"),
        ] {
            for chunk in [1usize, 5, stream.len()] {
                let err = parse_replies(&message, sent, &stream, chunk).unwrap_err();
                assert!(err.downcast_ref::<NotAnEcho>().is_some(), "{err}");
                let err = err.to_string();
                assert!(err.starts_with("not an echo: ") && err.contains(why), "chunk {chunk}: {err}");
            }
        }
    }

    #[test]
    fn frames_out_of_place_or_with_reserved_bits_are_refused() {
        let message = Message::binary(4);
        let first = payload_sent(&message, 0);
        let mut rsv = server_frame(OP_BINARY, true, &first);
        rsv[0] |= 0x40;
        for (stream, why) in [
            (
                server_frame(OP_CONT, true, &first),
                "continuation frame with no message begun",
            ),
            (
                [
                    server_frame(OP_BINARY, false, &first[..2]),
                    server_frame(OP_BINARY, true, &first[2..]),
                ]
                .concat(),
                "began a message before ending the one before",
            ),
            (rsv, "reserved bits"),
        ] {
            let err = parse_replies(&message, 1, &stream, stream.len()).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn parser_reports_close() {
        let mut parser = FrameParser::default();
        let mut got = Received::default();
        let mut controls = Vec::new();
        let f = server_frame(OP_CLOSE, true, &1001u16.to_be_bytes());
        assert_eq!(parser.parse(&f, &mut got, &mut controls).unwrap(), f.len());
        assert_eq!(controls, vec![Control::Close(Some(1001))]);
    }

    #[test]
    fn parser_unmasks_a_masked_server_frame() {
        let mut parser = FrameParser::default();
        let mut got = Received::default();
        let mut controls = Vec::new();
        let mut f = masked_frame(OP_PING, b"hi", [1, 2, 3, 4]);
        f.extend(masked_frame(OP_BINARY, &[7; 300], [5, 6, 7, 8]));
        assert_eq!(parser.parse(&f, &mut got, &mut controls).unwrap(), f.len());
        assert_eq!(controls, vec![Control::Ping(b"hi".to_vec())]);
        assert_eq!((got.messages, got.payload_bytes), (1, 300));
    }
}
