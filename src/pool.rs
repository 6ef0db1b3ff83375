//! Buffers lent per thread: a connection borrows one only while bytes wait in it and gives it
//! back when they are gone, so an idle connection holds none, and a busy one reuses the same
//! few instead of allocating per read.

use std::cell::RefCell;
use std::thread::LocalKey;

/// The relay's buffers' size: one full TLS record of plaintext.
pub(crate) const RELAY_SIZE: usize = 16 * 1024;

/// Buffers kept per worker thread between uses, for each pool; beyond that they are freed.
const KEEP: usize = 64;

/// One size of buffer, lent per thread.
pub(crate) struct Pool {
    free: &'static LocalKey<RefCell<Vec<Box<[u8]>>>>,
    /// Every buffer this pool lends is this long.
    pub(crate) size: usize,
}

thread_local! {
    static RELAY_FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static TLS_FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// The relay's buffers.
pub(crate) static RELAY: Pool = Pool {
    free: &RELAY_FREE,
    size: RELAY_SIZE,
};

/// TLS's buffers: the largest record TLS allows on the wire (2^14 bytes of plaintext, 2,048 of
/// expansion, the 5-byte header), with room to spare so a record's worth of plaintext and a
/// few small records fit too.
pub(crate) static TLS: Pool = Pool {
    free: &TLS_FREE,
    size: 20 * 1024,
};

impl Pool {
    /// A buffer of [`Pool::size`] bytes, from the pool if it has one.
    pub(crate) fn take(&self) -> Box<[u8]> {
        self.free
            .with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    /// Gives a buffer back; one of another size (grown for a rare large message) is freed.
    pub(crate) fn give(&self, buf: Box<[u8]>) {
        if buf.len() != self.size {
            return;
        }
        // `try_with`: a buffer given back while its thread is ending is only freed.
        let _ = self.free.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_lent_again_and_a_grown_one_is_not_kept() {
        let buf = TLS.take();
        assert_eq!(buf.len(), TLS.size);
        let at = buf.as_ptr();
        TLS.give(buf);
        let again = TLS.take();
        assert_eq!(again.as_ptr(), at, "the same buffer, reused");
        TLS.give(vec![0u8; TLS.size * 2].into_boxed_slice());
        assert_eq!(
            TLS.take().len(),
            TLS.size,
            "the grown one was freed, not lent"
        );
        TLS.give(again);
    }
}
