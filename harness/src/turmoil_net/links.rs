//! Faults on turmoil's links: per-link latency and jitter, random link failure, keeping outsiders
//! away from inside hosts, and the swizzle fault.
//!
//! One-way partitions are turmoil's own: `sim.partition_oneway(from, to)` and
//! `sim.repair_oneway(from, to)` from the test driver (or `turmoil::partition_oneway` from inside
//! a host). They act on links between turmoil hosts: a host behind a NAT reaches the outside
//! only over its NAT's links, so partition the NAT (all its inside hosts), or use a class fault
//! or profile on the NAT's [`super::Faults`] for one inside host.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use turmoil::Sim;

/// Sets the latency of the links between `a` and `b` to `latency` plus up to `jitter` (turmoil
/// draws it from an exponential distribution between the two bounds, from its seeded RNG).
/// Jitter reorders datagrams too: a later one may draw a shorter delay.
pub fn set_link_latency(sim: &Sim<'_>, a: &str, b: &str, latency: Duration, jitter: Duration) {
    sim.set_link_latency(a, b, latency);
    if !jitter.is_zero() {
        sim.set_link_max_message_latency(a, b, latency + jitter);
    }
}

/// turmoil's random link failure between `a` and `b`: each send fails the link with probability
/// `fail_rate`, dropping the datagram and everything in flight on the link; the next send repairs
/// it (repair rate 1). Burst loss, not independent loss: for that use a [`super::LinkProfile`].
pub fn set_link_failure(sim: &mut Sim<'_>, a: &str, b: &str, fail_rate: f64) {
    sim.set_link_fail_rate(a, b, fail_rate.clamp(0.0, 1.0));
}

/// Stops every datagram from `outsiders` to `inside` hosts at the network, as a NAT would (the
/// shim drops them too). Leave out hosts that inside hosts reach over TCP (the portal): TCP is
/// not NATed, and its replies come straight back.
pub fn isolate_inside(sim: &Sim<'_>, inside: &[&str], outsiders: &[&str]) {
    for outsider in outsiders {
        for host in inside {
            sim.partition_oneway(*outsider, *host);
        }
    }
}

/// How the swizzle stops a host's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwizzleMode {
    /// Drops everything (turmoil `partition`/`repair`).
    Partition,
    /// Holds everything and delivers it on restore (turmoil `hold`/`release`): "clogging".
    Hold,
}

/// One step of a swizzle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwizzleAction {
    /// Stop every link of the host.
    Stop(String),
    /// Restore the host's links to the hosts that are not stopped.
    Restore(String),
}

/// A step and when it is due (simulated time since the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwizzleStep {
    /// When.
    pub at: Duration,
    /// What.
    pub action: SwizzleAction,
}

/// The swizzle fault (FoundationDB's "swizzle-clogging"): stop the links of a random subset of
/// hosts one by one, then restore them one by one in another random order. Plan it with a seeded
/// RNG, then call [`Swizzle::apply_due`] from the driver loop after every step of the sim.
#[derive(Debug, Clone)]
pub struct Swizzle {
    hosts: Vec<String>,
    mode: SwizzleMode,
    steps: VecDeque<SwizzleStep>,
    stopped: BTreeSet<String>,
}

impl Swizzle {
    /// Plans a swizzle over `hosts` (the links considered are those between them): a random
    /// non-empty subset is stopped one host every `interval` from `start`, then restored one
    /// every `interval` in a random order.
    pub fn plan<R: Rng>(
        rng: &mut R,
        hosts: &[&str],
        start: Duration,
        interval: Duration,
        mode: SwizzleMode,
    ) -> Self {
        let mut subset: Vec<&str> = hosts.to_vec();
        subset.shuffle(rng);
        let count = if subset.is_empty() {
            0
        } else {
            rng.gen_range(1..=subset.len())
        };
        subset.truncate(count);
        let mut restore = subset.clone();
        restore.shuffle(rng);
        let actions = subset
            .iter()
            .map(|h| SwizzleAction::Stop((*h).to_owned()))
            .chain(
                restore
                    .iter()
                    .map(|h| SwizzleAction::Restore((*h).to_owned())),
            );
        let steps = actions
            .zip(0u32..)
            .map(|(action, i)| SwizzleStep {
                at: start + interval * i,
                action,
            })
            .collect();
        Self {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            mode,
            steps,
            stopped: BTreeSet::new(),
        }
    }

    /// The steps not applied yet.
    pub fn pending(&self) -> impl Iterator<Item = &SwizzleStep> {
        self.steps.iter()
    }

    /// The hosts stopped now.
    pub fn stopped(&self) -> &BTreeSet<String> {
        &self.stopped
    }

    /// Whether every step was applied (all links restored).
    pub fn is_done(&self) -> bool {
        self.steps.is_empty()
    }

    /// Applies the steps due at `sim.elapsed()`; returns how many.
    pub fn apply_due(&mut self, sim: &Sim<'_>) -> usize {
        let now = sim.elapsed();
        let mut applied = 0;
        while self.steps.front().is_some_and(|s| s.at <= now) {
            let Some(step) = self.steps.pop_front() else {
                break;
            };
            self.apply(sim, &step.action);
            applied += 1;
        }
        applied
    }

    fn apply(&mut self, sim: &Sim<'_>, action: &SwizzleAction) {
        match action {
            SwizzleAction::Stop(host) => {
                for other in self.others(host) {
                    match self.mode {
                        SwizzleMode::Partition => sim.partition(host.as_str(), other),
                        SwizzleMode::Hold => sim.hold(host.as_str(), other),
                    }
                }
                self.stopped.insert(host.clone());
            }
            SwizzleAction::Restore(host) => {
                self.stopped.remove(host);
                for other in self.others(host) {
                    match self.mode {
                        SwizzleMode::Partition => sim.repair(host.as_str(), other),
                        SwizzleMode::Hold => sim.release(host.as_str(), other),
                    }
                }
            }
        }
        tracing::debug!(?action, "swizzle");
    }

    /// The hosts whose link to `host` follows `host`'s state: not `host`, not stopped.
    fn others<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.hosts
            .iter()
            .map(String::as_str)
            .filter(move |o| *o != host && !self.stopped.contains(*o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn plan_is_seeded_and_restores_what_it_stops() {
        let hosts = ["a", "b", "c", "d", "e"];
        let plan = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Swizzle::plan(
                &mut rng,
                &hosts,
                Duration::from_secs(1),
                Duration::from_secs(2),
                SwizzleMode::Partition,
            )
            .pending()
            .cloned()
            .collect::<Vec<_>>()
        };
        let steps = plan(3);
        assert_eq!(steps, plan(3));
        let n = steps.len() / 2;
        assert!(n >= 1 && steps.len() == 2 * n);
        let stopped: BTreeSet<_> = steps[..n]
            .iter()
            .map(|s| match &s.action {
                SwizzleAction::Stop(h) => h.clone(),
                SwizzleAction::Restore(h) => panic!("restore {h} before all stops"),
            })
            .collect();
        let restored: BTreeSet<_> = steps[n..]
            .iter()
            .map(|s| match &s.action {
                SwizzleAction::Restore(h) => h.clone(),
                SwizzleAction::Stop(h) => panic!("stop {h} after a restore"),
            })
            .collect();
        assert_eq!(stopped, restored);
        assert_eq!(steps[0].at, Duration::from_secs(1));
        assert_eq!(steps[1].at, Duration::from_secs(3));
    }
}
