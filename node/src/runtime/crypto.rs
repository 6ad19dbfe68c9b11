//! The AEAD of data packets spread over threads of its own.
//!
//! The loop hands over a whole batch (up to a few hundred datagrams to seal, or the data
//! packets of one read to open), the batch is split among the threads, and the loop goes on
//! once all of it is done: every packet stays in its place in the batch, so the order within
//! each flow is the order the loop made them in, however the work was spread. The loop itself
//! never does crypto while the pool has threads; with one thread the work stays on the loop,
//! where handing it over would only cost.

use std::io;

use rayon::prelude::*;

use super::{Crypto, Inline};
use node_core::crypto::Decryption;
use node_core::Transmit;

/// Batches smaller than this stay on the loop's thread: waking the pool costs more than
/// sealing a few packets.
const PARALLEL_FROM: usize = 8;

/// Packets each thread takes at a time: large enough that splitting costs little next to
/// the AEAD of a full-sized packet (about a microsecond each), small enough to keep every
/// thread busy with a batch of 64.
const CHUNK: usize = 8;

/// Threads doing the AEAD of data packets for one node.
#[derive(Debug)]
pub struct CryptoPool {
    pool: Option<rayon::ThreadPool>,
}

impl CryptoPool {
    /// A pool of `threads` threads (named `crypto-N`); one or zero means the loop's own
    /// thread.
    pub fn new(threads: usize) -> io::Result<Self> {
        if threads <= 1 {
            return Ok(Self { pool: None });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("crypto-{i}"))
            .build()
            .map_err(io::Error::other)?;
        Ok(Self { pool: Some(pool) })
    }

    /// How many threads do the crypto (1: the loop's).
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(1, rayon::ThreadPool::current_num_threads)
    }
}

impl Crypto for CryptoPool {
    fn seal(&self, transmits: &mut [Transmit]) {
        let needed = transmits.iter().filter(|t| t.needs_seal()).count();
        match &self.pool {
            Some(pool) if needed >= PARALLEL_FROM => pool.install(|| {
                transmits
                    .par_iter_mut()
                    .with_min_len(CHUNK)
                    .for_each(Transmit::seal);
            }),
            _ => Inline.seal(transmits),
        }
    }

    fn open(&self, decryptions: &mut [Decryption]) {
        match &self.pool {
            Some(pool) if decryptions.len() >= PARALLEL_FROM => pool.install(|| {
                decryptions
                    .par_iter_mut()
                    .with_min_len(CHUNK)
                    .for_each(Decryption::run);
            }),
            _ => Inline.open(decryptions),
        }
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
}
