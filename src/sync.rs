//! Locking that survives a panic elsewhere: every lock in the crate goes through [`lock`].

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not. Every lock in the crate guards state that a panic cannot
/// leave half-written (a list swapped whole, a count changed in one step, a timestamp), so
/// serving goes on rather than turn one panic into a panic on every later connection.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
