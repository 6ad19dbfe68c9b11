//! A receive buffer a socket keeps between calls.
//!
//! An event loop makes a new receive future on every turn of its `select!`, so a socket layer
//! that made its own buffer per call (the datagram's full size, zeroed) paid for an allocation
//! and a 64 KiB memset on every wake-up of its host, a large share of a world's cost. A
//! [`Scratch`] lends one buffer per call and gets it back when the call ends, also when the
//! future is dropped half-way (the usual end of a receive in a `select!`).

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::lock;

/// One reusable buffer (see the module's documentation).
#[derive(Debug, Default)]
pub struct Scratch {
    home: Mutex<Vec<u8>>,
}

impl Scratch {
    /// A buffer of at least `len` bytes until the returned guard is dropped. Two calls at once
    /// each get one; the larger goes back.
    pub fn lend(&self, len: usize) -> Lent<'_> {
        let mut buf = std::mem::take(&mut *lock(&self.home));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Lent { buf, home: self }
    }
}

/// A buffer lent by a [`Scratch`], given back on drop.
#[derive(Debug)]
pub struct Lent<'a> {
    buf: Vec<u8>,
    home: &'a Scratch,
}

impl Deref for Lent<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut home = lock(&self.home.home);
        if home.len() < self.buf.len() {
            *home = std::mem::take(&mut self.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_buffer_comes_back_and_is_lent_again_without_a_new_allocation() {
        let scratch = Scratch::default();
        let first = scratch.lend(1500);
        let at = first.as_ptr();
        assert_eq!(first.len(), 1500);
        drop(first);
        let again = scratch.lend(1000);
        assert_eq!(again.as_ptr(), at, "the same buffer");
        assert!(again.len() >= 1000);
        // Lent twice at once: the second gets a buffer of its own.
        let other = scratch.lend(1000);
        assert_ne!(other.as_ptr(), at);
    }
}
