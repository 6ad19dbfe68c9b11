//! A lock-free pool of packet buffers.
//!
//! Every datagram and IP packet the node hands out lives in a [`Buffer`] taken from the pool and
//! given back when dropped, so the steady state allocates nothing per packet. The queue is
//! lock-free, so a runtime may drop buffers on another thread than the one that took them.

use std::fmt;
use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Large enough for any UDP datagram, and so for a GSO batch or a TURN-framed WireGuard packet.
pub const BUFFER_SIZE: usize = 65_536 + 64;

/// Bytes left free in front of every decrypted IP packet, so that a device can write its own
/// header there (a TUN device with offload needs a 10-byte virtio-net header) instead of
/// copying the packet behind one.
pub const DEVICE_HEADROOM: usize = 16;

/// Hands out [`Buffer`]s and takes them back.
#[derive(Clone)]
pub struct BufferPool {
    free: Arc<ArrayQueue<Vec<u8>>>,
}

impl BufferPool {
    /// A pool that keeps up to `capacity` idle buffers; more may be in use at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            free: Arc::new(ArrayQueue::new(capacity.max(1))),
        }
    }

    /// A buffer whose whole [`BUFFER_SIZE`] bytes are in view; narrow it with [`Buffer::set_range`].
    pub fn pull(&self) -> Buffer {
        // A recycled buffer keeps its old bytes: writers overwrite what they use.
        let storage = self.free.pop().unwrap_or_else(|| vec![0; BUFFER_SIZE]);
        Buffer {
            storage,
            range: 0..BUFFER_SIZE,
            pool: Some(Arc::clone(&self.free)),
        }
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("idle", &self.free.len())
            .finish()
    }
}

/// A packet buffer that returns to its pool when dropped. It dereferences to the bytes in view.
pub struct Buffer {
    storage: Vec<u8>,
    range: Range<usize>,
    pool: Option<Arc<ArrayQueue<Vec<u8>>>>,
}

impl Buffer {
    /// A buffer that belongs to no pool, holding exactly `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self {
            storage: bytes.to_vec(),
            range: 0..bytes.len(),
            pool: None,
        }
    }

    /// A buffer that belongs to no pool, holding a copy of `bytes` after `headroom` free bytes.
    pub fn with_headroom(bytes: &[u8], headroom: usize) -> Self {
        let mut storage = vec![0; headroom + bytes.len()];
        storage[headroom..].copy_from_slice(bytes);
        Self {
            storage,
            range: headroom..headroom + bytes.len(),
            pool: None,
        }
    }

    /// The whole underlying storage, for writers that place data at an offset.
    pub(crate) fn storage_mut(&mut self) -> &mut [u8] {
        &mut self.storage
    }

    /// Narrows the view to `range` of the underlying storage.
    ///
    /// # Panics
    /// If `range` is not within the storage: callers pass ranges they just wrote.
    pub(crate) fn set_range(&mut self, range: Range<usize>) {
        assert!(range.start <= range.end && range.end <= self.storage.len());
        self.range = range;
    }

    /// Bytes before the view that a header may be written into (e.g. TURN channel data).
    pub fn headroom(&self) -> usize {
        self.range.start
    }

    /// Bytes the view may grow to at the back, counted from its start.
    pub fn capacity(&self) -> usize {
        self.storage.len() - self.range.start
    }

    /// Makes the view `len` bytes long, filling bytes it gains with `value`.
    ///
    /// # Panics
    /// If `len` exceeds [`Buffer::capacity`].
    pub fn resize(&mut self, len: usize, value: u8) {
        assert!(len <= self.capacity(), "buffer capacity exceeded");
        let old_end = self.range.end;
        self.range.end = self.range.start + len;
        if self.range.end > old_end {
            self.storage[old_end..self.range.end].fill(value);
        }
    }

    /// Appends `bytes` to the view.
    ///
    /// # Panics
    /// If the view would exceed [`Buffer::capacity`].
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.range.end;
        assert!(
            end + bytes.len() <= self.storage.len(),
            "buffer capacity exceeded"
        );
        self.storage[end..end + bytes.len()].copy_from_slice(bytes);
        self.range.end = end + bytes.len();
    }

    /// Widens the view by `n` bytes to the front and returns them, to write a header in place.
    ///
    /// # Panics
    /// If `n` exceeds [`Buffer::headroom`].
    pub fn prepend(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.range.start, "not enough headroom");
        self.range.start -= n;
        let start = self.range.start;
        &mut self.storage[start..start + n]
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.range.clone()]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.range.clone()]
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes)", self.range.len())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // A full pool means a burst is over: let the extra buffer go.
            let _ = pool.push(std::mem::take(&mut self.storage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled() {
        let pool = BufferPool::new(2);
        let mut a = pool.pull();
        let ptr = a.storage_mut().as_ptr();
        drop(a);
        let mut b = pool.pull();
        assert_eq!(
            b.storage_mut().as_ptr(),
            ptr,
            "the dropped buffer comes back"
        );
    }

    #[test]
    fn prepend_writes_into_headroom() {
        let pool = BufferPool::new(1);
        let mut b = pool.pull();
        b.storage_mut()[4..7].copy_from_slice(b"abc");
        b.set_range(4..7);
        assert_eq!(&*b, b"abc");
        assert_eq!(b.headroom(), 4);
        b.prepend(2).copy_from_slice(b"xy");
        assert_eq!(&*b, b"xyabc");
    }

    #[test]
    fn a_view_grows_and_shrinks_at_the_back_within_its_storage() {
        let pool = BufferPool::new(1);
        let mut b = pool.pull();
        b.storage_mut()[10..13].copy_from_slice(b"abc");
        b.set_range(10..13);
        assert_eq!(b.capacity(), BUFFER_SIZE - 10);
        b.extend_from_slice(b"de");
        assert_eq!(&*b, b"abcde");
        b.resize(7, 0);
        assert_eq!(&*b, b"abcde\0\0");
        b.resize(2, 0);
        assert_eq!(&*b, b"ab");
        b.resize(b.capacity(), 1);
        assert_eq!(b.len(), BUFFER_SIZE - 10);
    }
}
