//! The AEAD of data packets spread over threads.
//!
//! The loop hands over a whole batch (up to a few hundred datagrams to seal, or the data
//! packets of one read to open), the batch is cut into one share per thread, the loop's own
//! thread does the first share while each crypto thread does one of the others, and the loop
//! goes on once all of it is back, appended in order: each packet keeps its place in the
//! batch, so the order within each flow is the order the loop made them in, however the work
//! was spread.
//!
//! Waking a sleeping thread costs tens of microseconds (on a virtual machine more), as much
//! as sealing a whole batch, so a thread that finished waits a little for the next one
//! spinning on an atomic flag, and only then sleeps (`park`); handing work to a thread that
//! spins costs an atomic store. It never yields in a loop: on a machine whose cores are busy
//! (the tunnel's peers, the kernel's network stack) that takes their time (a rayon pool, which
//! does, cost 10 % of such a machine in `sched_yield`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};

use super::{Crypto, Inline};
use node_core::crypto::Decryption;
use node_core::Transmit;

/// Batches smaller than this stay on the loop's thread: handing over costs more than sealing
/// a few packets (about a microsecond each at full size).
const PARALLEL_FROM: usize = 8;

/// Checks of a flag before a waiting thread sleeps: some tens of microseconds, about the
/// time between two batches under load.
const SPIN_ROUNDS: u32 = 2_000;

/// A share of a batch, owned by whoever works on it: datagrams to seal or packets to open
/// (one of the two is empty).
#[derive(Default)]
struct Share {
    seal: Vec<Transmit>,
    open: Vec<Decryption>,
}

impl Share {
    fn run(&mut self) {
        Inline.seal(&mut self.seal);
        Inline.open(&mut self.open);
    }
}

/// A crypto thread's mailbox: a share in, the same share out.
#[derive(Default)]
struct Slot {
    work: Mutex<Option<Share>>,
    has_work: AtomicBool,
    done: Mutex<Option<Share>>,
    has_done: AtomicBool,
    stop: AtomicBool,
    /// The thread waiting for `done` (the loop's).
    waiter: Mutex<Option<Thread>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these is a bug the process dies of anyway; the data in
    // them stays whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until `flag` is set: spinning first, then sleeping until unparked.
fn wait_for(flag: &AtomicBool, stop: &AtomicBool) {
    for _ in 0..SPIN_ROUNDS {
        if flag.load(Ordering::Acquire) || stop.load(Ordering::Acquire) {
            return;
        }
        std::hint::spin_loop();
    }
    // A park returns at once after an unpark that came first, so no wake-up is lost.
    while !flag.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
        std::thread::park();
    }
}

/// Threads doing the AEAD of data packets for one node: the loop's own and the crypto threads.
pub struct CryptoPool {
    slots: Vec<Arc<Slot>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl CryptoPool {
    /// `threads` threads in all, the loop's one of them (the others named `crypto-N`); one or
    /// zero means the loop's alone.
    pub fn new(threads: usize) -> io::Result<Self> {
        let mut pool = Self {
            slots: Vec::new(),
            threads: Vec::new(),
        };
        for i in 1..threads.max(1) {
            let slot = Arc::new(Slot::default());
            let worker = Arc::clone(&slot);
            let thread = std::thread::Builder::new()
                .name(format!("crypto-{i}"))
                .spawn(move || work(&worker))?;
            pool.slots.push(slot);
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// How many threads do the crypto, the loop's included.
    pub fn threads(&self) -> usize {
        self.slots.len() + 1
    }

    /// Runs every item of `items` through `run`, spread over the threads, and puts them back
    /// in their order; `part` is where a [`Share`] holds such items.
    fn spread<T>(
        &self,
        items: &mut Vec<T>,
        part: fn(&mut Share) -> &mut Vec<T>,
        run: fn(&mut Vec<T>),
    ) {
        // A crypto thread that died (a bug) leaves the work to the loop from then on.
        let lost = self.slots.iter().any(|s| s.stop.load(Ordering::Acquire));
        if self.slots.is_empty() || items.len() < PARALLEL_FROM || lost {
            return run(items);
        }
        let share = items.len().div_ceil(self.threads());
        // Cut from the back: the last thread gets the last share. If slot `i` gets a share,
        // so does every one before it.
        let mut handed = 0;
        for (i, slot) in self.slots.iter().enumerate().rev() {
            let start = share * (i + 1);
            if start >= items.len() {
                continue;
            }
            let mut theirs = Share::default();
            *part(&mut theirs) = items.split_off(start);
            *lock(&slot.waiter) = Some(std::thread::current());
            *lock(&slot.work) = Some(theirs);
            slot.has_work.store(true, Ordering::Release);
            if let Some(thread) = self.threads.get(i) {
                thread.thread().unpark();
            }
            handed = handed.max(i + 1);
        }
        run(items);
        for slot in &self.slots[..handed] {
            wait_for(&slot.has_done, &slot.stop);
            slot.has_done.store(false, Ordering::Relaxed);
            match lock(&slot.done).take() {
                Some(mut done) => items.append(part(&mut done)),
                None => tracing::error!("a crypto thread died: its share of the batch is lost"),
            }
        }
    }
}

/// Tells the loop a crypto thread died, so that it does not wait for it for ever.
struct Obituary<'a>(&'a Slot);

impl Drop for Obituary<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop.store(true, Ordering::Release);
            if let Some(waiter) = lock(&self.0.waiter).as_ref() {
                waiter.unpark();
            }
        }
    }
}

/// A crypto thread: runs the shares it is given until told to stop.
fn work(slot: &Slot) {
    let _obituary = Obituary(slot);
    loop {
        wait_for(&slot.has_work, &slot.stop);
        if slot.stop.load(Ordering::Acquire) {
            return;
        }
        slot.has_work.store(false, Ordering::Relaxed);
        let Some(mut share) = lock(&slot.work).take() else {
            continue;
        };
        share.run();
        *lock(&slot.done) = Some(share);
        slot.has_done.store(true, Ordering::Release);
        if let Some(waiter) = lock(&slot.waiter).as_ref() {
            waiter.unpark();
        }
    }
}

impl Drop for CryptoPool {
    fn drop(&mut self) {
        for (slot, thread) in self.slots.iter().zip(&self.threads) {
            slot.stop.store(true, Ordering::Release);
            thread.thread().unpark();
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a crypto thread panicked");
            }
        }
    }
}

impl Crypto for CryptoPool {
    fn seal(&self, transmits: &mut Vec<Transmit>) {
        self.spread(transmits, |share| &mut share.seal, |t| Inline.seal(t));
    }

    fn open(&self, decryptions: &mut Vec<Decryption>) {
        self.spread(decryptions, |share| &mut share.open, |d| Inline.open(d));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use node_core::pool::Buffer;

    #[test]
    fn one_thread_is_the_loops_own() {
        assert_eq!(CryptoPool::new(0).unwrap().threads(), 1);
        assert_eq!(CryptoPool::new(1).unwrap().threads(), 1);
        assert_eq!(CryptoPool::new(3).unwrap().threads(), 3);
    }

    #[test]
    fn every_item_comes_back_once_in_its_place() {
        let dst = "192.0.2.1:9".parse().unwrap();
        for threads in [1, 2, 3, 8] {
            let pool = CryptoPool::new(threads).unwrap();
            for len in [0_u16, 1, 7, 8, 9, 64, 257] {
                let mut items: Vec<Transmit> = (0..len)
                    .map(|i| Transmit::new(dst, Buffer::from_slice(&i.to_be_bytes())))
                    .collect();
                // Twice: the threads take a second batch after the first.
                for _ in 0..2 {
                    pool.seal(&mut items);
                    let order: Vec<u16> = items
                        .iter()
                        .map(|t| u16::from_be_bytes([t.payload[0], t.payload[1]]))
                        .collect();
                    assert_eq!(order, (0..len).collect::<Vec<_>>(), "{threads} threads");
                }
            }
        }
    }
}
