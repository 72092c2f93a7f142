//! A per-thread scratch buffer, so building a key allocates once (the finished text) instead
//! of once per growth step of a fresh `String`.
//!
//! The buffer is taken out of the thread-local while in use, so a `CacheKey` impl that builds
//! another key while writing (re-entrancy) gets a fresh buffer instead of a conflict.

use std::cell::Cell;

use crate::CacheKey;
use crate::writer::KeyWriter;

/// Buffers that grew past this are dropped rather than kept, so one huge key does not pin
/// memory on a thread forever.
const MAX_KEPT_CAPACITY: usize = 4 * 1024;

thread_local! {
    static SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// An empty buffer: this thread's scratch buffer if it is free, a new one otherwise.
pub(crate) fn take() -> String {
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    buf
}

/// Returns a buffer from [`take`] for reuse.
pub(crate) fn give_back(buf: String) {
    if buf.capacity() <= MAX_KEPT_CAPACITY {
        // Fails only while the thread is being torn down; the buffer is then just dropped.
        let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
    }
}

/// Writes `value` at the top level into a scratch buffer and hands the text to `f`.
pub(crate) fn with_top_level<T, R>(value: &T, f: impl FnOnce(&str) -> R) -> R
where
    T: CacheKey + ?Sized,
{
    let mut buf = take();
    value.write_key(KeyWriter::top(&mut buf));
    let result = f(&buf);
    give_back(buf);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_empty() {
        let mut buf = take();
        buf.push_str("leftover");
        let capacity = buf.capacity();
        give_back(buf);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        let _ = take();
        give_back(String::with_capacity(MAX_KEPT_CAPACITY + 1));
        assert!(take().capacity() <= MAX_KEPT_CAPACITY);
    }

    #[test]
    fn threads_building_keys_at_once_get_their_own_text() {
        use std::sync::{Arc, Barrier};

        const THREADS: usize = 8;
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..2_000).all(|i| {
                        let key = crate::Key::of(&(thread, "a-b", i));
                        key.as_str() == format!("{thread}-'a-b'-{i}")
                    })
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().ok(), Some(true));
        }
    }

    #[test]
    fn writing_a_key_inside_a_key_does_not_conflict() {
        struct Inner;
        impl CacheKey for Inner {
            fn write_key(&self, out: KeyWriter<'_>) {
                // Re-enters the scratch buffer while the outer write holds it.
                let inner = ("x", 1).key_text();
                out.write_str(&inner);
            }
        }
        assert_eq!(("a", Inner).key_text(), "a-'x-1'");
    }
}
