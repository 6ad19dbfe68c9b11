//! The AEAD of data packets spread over threads.
//!
//! The loop hands over a whole batch (up to a few hundred datagrams to seal, or the data
//! packets of one read to open), the batch is cut into one share per thread, the loop's own
//! thread does one share while the pool's threads do the others, and the loop goes on once all
//! of it is done. Every packet stays in its place in the batch, so the order within each flow
//! is the order the loop made them in, however the work was spread.

use std::io;

use super::{Crypto, Inline};
use node_core::crypto::Decryption;
use node_core::Transmit;

/// Batches smaller than this stay on the loop's thread: waking the pool costs more than
/// sealing a few packets (about a microsecond each at full size).
const PARALLEL_FROM: usize = 8;

/// Threads doing the AEAD of data packets for one node: the loop's own and a pool.
#[derive(Debug)]
pub struct CryptoPool {
    /// The threads besides the loop's; none when the loop does it all.
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl CryptoPool {
    /// `threads` threads in all, the loop's one of them (the others named `crypto-N`); one or
    /// zero means the loop's alone.
    pub fn new(threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        if threads == 1 {
            return Ok(Self {
                pool: None,
                threads,
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads - 1)
            .thread_name(|i| format!("crypto-{i}"))
            .build()
            .map_err(io::Error::other)?;
        Ok(Self {
            pool: Some(pool),
            threads,
        })
    }

    /// How many threads do the crypto, the loop's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on every item, one share of them on this thread and the others on the pool.
    fn spread<T: Send>(&self, items: &mut [T], work: fn(&mut T)) {
        let Some(pool) = self.pool.as_ref().filter(|_| items.len() >= PARALLEL_FROM) else {
            items.iter_mut().for_each(work);
            return;
        };
        let share = items.len().div_ceil(self.threads);
        let (mine, others) = items.split_at_mut(share);
        pool.in_place_scope(|scope| {
            for chunk in others.chunks_mut(share) {
                scope.spawn(move |_| chunk.iter_mut().for_each(work));
            }
            mine.iter_mut().for_each(work);
        });
    }
}

impl Crypto for CryptoPool {
    fn seal(&self, transmits: &mut [Transmit]) {
        if self.pool.is_none() {
            return Inline.seal(transmits);
        }
        self.spread(transmits, Transmit::seal);
    }

    fn open(&self, decryptions: &mut [Decryption]) {
        if self.pool.is_none() {
            return Inline.open(decryptions);
        }
        self.spread(decryptions, Decryption::run);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_thread_is_the_loops_own() {
        assert_eq!(CryptoPool::new(0).unwrap().threads(), 1);
        assert_eq!(CryptoPool::new(1).unwrap().threads(), 1);
        assert_eq!(CryptoPool::new(3).unwrap().threads(), 3);
    }

    #[test]
    fn every_item_is_worked_on_once_in_its_place() {
        fn double(x: &mut u64) {
            *x *= 2;
        }
        for threads in [1, 2, 3, 8] {
            let pool = CryptoPool::new(threads).unwrap();
            for len in [0, 1, 7, 8, 9, 64, 257] {
                let mut items: Vec<u64> = (0..len).collect();
                pool.spread(&mut items, double);
                let expected: Vec<u64> = (0..len).map(|x| x * 2).collect();
                assert_eq!(items, expected, "{threads} threads, {len} items");
            }
        }
    }
}
