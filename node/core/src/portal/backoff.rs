//! Reconnect delays: exponential, capped, with seeded jitter so that many nodes restarted by the
//! same portal outage do not all come back in the same instant, yet a given seed always waits
//! the same.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// How reconnect delays grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// How much of each delay is random, in percent (0 = none, 100 = anywhere in `0..=base`).
    pub jitter_percent: u8,
}

/// 0.5 s doubling up to 10 s, half of each delay random. The cap is what a node that failed a
/// few times waits at worst once the portal or the network is back: 10 s keeps the rejoin
/// after a long outage to about 20 s (with a connect attempt's timeout). The price is the load
/// of a fleet that lost the portal: N nodes try at most N / 5 times a second (refused at once
/// while it is down; each a TLS handshake once it is back).
impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            jitter_percent: 50,
        }
    }
}

/// The state of a backoff: how many attempts failed since the last success.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: ChaCha20Rng,
}

impl Backoff {
    /// A backoff whose jitter comes from `rng`.
    pub fn new(config: BackoffConfig, rng: ChaCha20Rng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    /// The un-jittered delay of the next attempt: `initial * 2^attempt`, capped at `max`.
    pub fn base(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// The delay before the next attempt; every call counts as one more failed attempt.
    ///
    /// The delay is `base * (1 - j) + uniform(0, base * j)` with `j` the jitter fraction, so it
    /// never exceeds `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base();
        self.attempt = self.attempt.saturating_add(1);
        let jitter_percent = u32::from(self.config.jitter_percent.min(100));
        let jitter_span = base * jitter_percent / 100;
        let fixed = base.saturating_sub(jitter_span);
        let random = if jitter_span.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(jitter_span.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.gen_range(0..=nanos))
        };
        fixed + random
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets the failures: the next delay is short again. Called after a successful join.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn backoff(seed: u64) -> Backoff {
        Backoff::new(BackoffConfig::default(), ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn grows_and_is_capped() {
        let mut b = backoff(1);
        let mut bases = Vec::new();
        for _ in 0..12 {
            let base = b.base();
            let delay = b.next_delay();
            assert!(delay <= base, "{delay:?} > {base:?}");
            assert!(delay >= base / 2, "{delay:?} < half of {base:?}");
            assert!(delay <= Duration::from_secs(10));
            bases.push(base);
        }
        assert!(bases.windows(2).all(|w| w[0] <= w[1]), "{bases:?}");
        assert_eq!(bases[0], Duration::from_millis(500));
        assert_eq!(bases[1], Duration::from_secs(1));
        assert_eq!(*bases.last().unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let delays = |seed| {
            let mut b = backoff(seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(delays(7), delays(8));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff(3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.base(), Duration::from_millis(500));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = backoff(4);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(10));
        }
    }
}
