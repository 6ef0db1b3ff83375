//! The close of a connection that got an answer rather than a tunnel (a refusal, or a
//! backend's relayed non-101): the answer is ended with TLS's `close_notify`, then what the
//! client still sends is read and dropped for a moment before the socket goes.
//!
//! Why: a socket closed with input unread makes the kernel answer with a reset, and a reset
//! can destroy an answer the client has not read yet (Windows throws its receive queue away);
//! a client's upload may well cross the answer. Bounded in bytes and time, so a refused
//! client cannot hold its slot for long (it holds it meanwhile, so that refused connections
//! cannot pile up beyond its limit), nor shutdown. A tunnel's own end is `splice::linger`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// How long a closing client may go on sending, and how much.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Reads and drops what `io` still sends, within the bounds above.
pub(crate) async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    let mut lingering = Lingering::new();
    std::future::poll_fn(|cx| lingering.poll(Pin::new(&mut *io), cx)).await;
}

/// A linger in progress, for a stream that has to drive it from its own `poll_shutdown`.
pub(crate) struct Lingering {
    budget: usize,
    until: Pin<Box<Sleep>>,
}

impl Lingering {
    pub(crate) fn new() -> Self {
        Lingering {
            budget: LINGER_BYTES,
            until: Box::pin(tokio::time::sleep(LINGER_TIME)),
        }
    }

    /// Ready once the client has closed (or failed), sent the budget, or the time is up.
    pub(crate) fn poll<S: AsyncRead>(
        &mut self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut sink = [0u8; 4096];
        while self.budget > 0 {
            let mut buf = ReadBuf::new(&mut sink);
            match io.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.budget = self.budget.saturating_sub(buf.filled().len());
                }
                // Closed, or failed: nothing left to make the close a reset.
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return self.until.as_mut().poll(cx),
            }
        }
        Poll::Ready(())
    }
}
