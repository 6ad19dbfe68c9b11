//! A deterministic trace of what happened in a simulation: (simulated time, host, event), hashed
//! with a fixed hasher (FNV-1a 64) so that two runs with the same seed can be compared by one
//! number, across processes and Rust versions.
//!
//! Record only what is deterministic: addresses, ports, counts, kinds, and the bytes of the
//! datagrams the NATs carry ([`Trace::digest`]: every key, nonce, timestamp and ciphertext in
//! them comes from the case's seed and the simulated clock); never tokio `Instant`s (each host's
//! runtime has its own base).

use std::fmt::{self, Display, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{lock, sim_time};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Debug)]
struct Inner {
    hash: u64,
    events: u64,
    digested: u64,
    lines: Option<Vec<String>>,
    scratch: String,
}

impl Inner {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }
}

/// A shared trace; clones record into the same one.
#[derive(Debug, Clone)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    /// An empty trace that keeps only the hash and the count.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty trace that also keeps every event as a line (for debugging a hash mismatch).
    pub fn with_lines() -> Self {
        Self::build(Some(Vec::new()))
    }

    fn build(lines: Option<Vec<String>>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                hash: FNV_OFFSET,
                events: 0,
                digested: 0,
                lines,
                scratch: String::new(),
            })),
        }
    }

    /// Records `event` on `host` at the current simulated time (zero outside a running host:
    /// the test driver uses [`Trace::record_at`] with `sim.elapsed()`).
    pub fn record(&self, host: &str, event: impl Display) {
        self.record_at(sim_time(), host, event);
    }

    /// Records `event` on `host` at simulated time `at`.
    pub fn record_at(&self, at: Duration, host: &str, event: impl Display) {
        let mut inner = lock(&self.inner);
        let mut scratch = std::mem::take(&mut inner.scratch);
        scratch.clear();
        // Writing to a String cannot fail.
        let _ = write!(scratch, "{event}");
        inner.feed(&at.as_nanos().to_le_bytes());
        inner.feed(host.as_bytes());
        inner.feed(&[0xff]);
        inner.feed(scratch.as_bytes());
        inner.feed(&[0xfe]);
        inner.events += 1;
        if let Some(lines) = &mut inner.lines {
            lines.push(format!("{:>10.3}s {host:<10} {scratch}", at.as_secs_f64()));
        }
        inner.scratch = scratch;
    }

    /// Feeds `bytes` (a datagram) into the hash, at the current simulated time, without an
    /// event line: the hash then says whether two runs sent the same bytes, not only the same
    /// events.
    pub fn digest(&self, bytes: &[u8]) {
        let mut inner = lock(&self.inner);
        inner.feed(&sim_time().as_nanos().to_le_bytes());
        inner.feed(&(bytes.len() as u64).to_le_bytes());
        inner.feed(bytes);
        inner.digested += 1;
    }

    /// How many datagrams went into the hash through [`Trace::digest`].
    pub fn digested(&self) -> u64 {
        lock(&self.inner).digested
    }

    /// The hash of everything recorded so far.
    pub fn hash(&self) -> u64 {
        lock(&self.inner).hash
    }

    /// How many events were recorded.
    pub fn len(&self) -> u64 {
        lock(&self.inner).events
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The recorded lines (empty unless built with [`Trace::with_lines`]).
    pub fn lines(&self) -> Vec<String> {
        lock(&self.inner).lines.clone().unwrap_or_default()
    }
}

impl Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} events, hash {:016x}", self.len(), self.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_events_same_hash_and_order_matters() {
        let a = Trace::new();
        let b = Trace::with_lines();
        for t in [&a, &b] {
            t.record_at(Duration::from_millis(10), "h1", "tx 1");
            t.record_at(Duration::from_millis(20), "h2", format_args!("rx {}", 2));
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(b.lines().len(), 2);
        let c = Trace::new();
        c.record_at(Duration::from_millis(20), "h2", "rx 2");
        c.record_at(Duration::from_millis(10), "h1", "tx 1");
        assert_ne!(a.hash(), c.hash());
        // Field boundaries count: ("h1", "x") differs from ("h", "1x").
        let d = Trace::new();
        d.record_at(Duration::ZERO, "h1", "x");
        let e = Trace::new();
        e.record_at(Duration::ZERO, "h", "1x");
        assert_ne!(d.hash(), e.hash());
    }
}
