//! Bytes held in a buffer lent from the TLS pool: no buffer while there are no bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::unbuffered::{EncodeError, EncryptError};
use tokio::io::{AsyncRead, ReadBuf};

use super::{invalid_data, MAX_HELD};
use crate::pool::TLS as POOL;

/// The most [`Held::shrink`] keeps in a buffer of their own: a stalled client's hello or a
/// record's first segment, where the pooled buffer would be mostly empty.
const SHRINK_UP_TO: usize = 4 * 1024;

/// Bytes `[start, end)` of a buffer lent from the pool, or no buffer while there are none.
#[derive(Default)]
pub(super) struct Held {
    pub(super) buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

/// A buffer still held when its stream goes (a connection cut mid-record) goes back too.
impl Drop for Held {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            POOL.give(buf);
        }
    }
}

impl Held {
    pub(super) fn data(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[self.start..self.end],
            None => &[],
        }
    }

    pub(super) fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(buf) => &mut buf[self.start..self.end],
            None => &mut [],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// How many more bytes fit, once what is held is moved to the front.
    pub(super) fn room(&self) -> usize {
        self.buf.as_ref().map_or(POOL.size, |buf| buf.len()) - self.len()
    }

    /// Drops `n` bytes from the front; an emptied buffer goes back to the pool.
    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if let Some(buf) = self.buf.take() {
                POOL.give(buf);
            }
        }
    }

    /// Free space behind the held bytes, at least `at_least` bytes of it: a buffer from the
    /// pool, the held bytes moved to the front, or the held bytes moved to a pooled buffer (from
    /// a small one, see [`Held::shrink`]) or to a larger one, where that is too little.
    pub(super) fn spare(&mut self, at_least: usize) -> &mut [u8] {
        let len = self.len();
        let buf = self.buf.get_or_insert_with(|| POOL.take());
        if buf.len() - self.end < at_least && buf.len() - len >= at_least {
            buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, len);
        } else if buf.len() - self.end < at_least {
            let mut moved = match len + at_least <= POOL.size {
                true => POOL.take(),
                false => vec![0u8; len + at_least].into_boxed_slice(),
            };
            moved[..len].copy_from_slice(&buf[self.start..self.end]);
            POOL.give(std::mem::replace(buf, moved));
            (self.start, self.end) = (0, len);
        }
        &mut buf[self.end..]
    }

    /// Keeps only the bytes held, not the buffer around them: for a connection about to wait
    /// with a record's start received (a client stalled mid-handshake, or between the
    /// segments of a record), which may wait long. The next read moves them to a pooled
    /// buffer again.
    fn shrink(&mut self) {
        if let Some(buf) = self
            .buf
            .as_mut()
            .filter(|buf| buf.len() > self.end - self.start)
        {
            let kept: Box<[u8]> = buf[self.start..self.end].into();
            POOL.give(std::mem::replace(buf, kept));
            (self.start, self.end) = (0, self.end - self.start);
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Lets `fill` write into the free space (at least `at_least` bytes of it), growing it to
    /// what `fill` says it needs if that was too little.
    pub(super) fn fill_with<E: NeedsRoom>(
        &mut self,
        at_least: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let mut want = at_least;
        loop {
            match fill(self.spare(want)) {
                Ok(n) => {
                    self.end += n;
                    // Nothing written (an encoder with nothing to add): a buffer just lent
                    // goes back rather than stay with nothing in it.
                    self.consume(0);
                    return Ok(());
                }
                Err(e) => match e.needs() {
                    Some(needed) if needed > want => want = needed,
                    _ => {
                        // An error with nothing written: a buffer just lent goes back.
                        self.consume(0);
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Reads from `io` into the free space: the bytes read, 0 at the end of stream.
    pub(super) fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut IO,
    ) -> Poll<io::Result<usize>> {
        if self.len() >= MAX_HELD {
            return Poll::Ready(Err(invalid_data(rustls::Error::General(
                "message buffer full".into(),
            ))));
        }
        // What is held is a record's start: the rest of a pooled buffer behind it, or, past
        // that (a handshake message spread over records), half as much again, up to the limit.
        let at_least = match POOL.size.checked_sub(self.len()) {
            Some(rest) if rest > 0 => rest,
            _ => (self.len() / 2).min(MAX_HELD - self.len()),
        };
        let mut read = ReadBuf::new(self.spare(at_least));
        let polled = Pin::new(io).poll_read(cx, &mut read);
        let n = read.filled().len();
        self.end += n;
        match polled {
            // Nothing held: a buffer lent for this read goes back. A record's small start held
            // while the connection waits: just those bytes are kept. A larger part of a record
            // keeps its buffer: the rest is on its way (a large record, or a long handshake
            // message, in small segments), and trading it to and fro would copy it each time.
            _ if self.is_empty() => self.consume(0),
            Poll::Pending if self.len() <= SHRINK_UP_TO => self.shrink(),
            _ => {}
        }
        polled.map_ok(|()| n)
    }
}

/// What rustls's encoders fail with when the room given is too small, and how much they need.
pub(super) trait NeedsRoom {
    fn needs(&self) -> Option<usize>;
}

impl NeedsRoom for EncodeError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(short) => Some(short.required_size),
            _ => None,
        }
    }
}

impl NeedsRoom for EncryptError {
    fn needs(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(short) => Some(short.required_size),
            _ => None,
        }
    }
}
