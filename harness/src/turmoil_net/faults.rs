//! What happens to a datagram on its way: loss, latency, jitter, duplication, reordering, and
//! faults aimed at one class of packet (STUN, TURN, WireGuard).
//!
//! [`Faults`] decides, per datagram, from a seeded RNG; whoever forwards the datagram (a
//! [`super::FaultySocket`], a NAT host) carries the decision out. The decision is taken where the
//! bytes are visible, beside the sockets, never inside the protocol code. turmoil's own link
//! settings (latency, jitter, random link failure) are in [`super::links`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node_core::datagram::{classify, DatagramKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{lock, TURN_PORT};

/// A class of datagram, as a class fault aims at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PacketClass {
    /// STUN that is not to or from the TURN port: ICE connectivity checks.
    Stun,
    /// TURN: channel data, or STUN to or from the TURN port (allocations, refreshes, bindings
    /// with the relay).
    Turn,
    /// WireGuard handshakes, cookies and data (not wrapped in channel data).
    WireGuard,
}

impl PacketClass {
    /// The class of `bytes` travelling between `local` and `peer`; `None` for anything else.
    pub fn of(bytes: &[u8], local: SocketAddr, peer: SocketAddr, turn_port: u16) -> Option<Self> {
        match classify(bytes) {
            DatagramKind::Stun if local.port() == turn_port || peer.port() == turn_port => {
                Some(Self::Turn)
            }
            DatagramKind::Stun => Some(Self::Stun),
            DatagramKind::ChannelData => Some(Self::Turn),
            DatagramKind::WgHandshakeInit
            | DatagramKind::WgHandshakeResponse
            | DatagramKind::WgCookieReply
            | DatagramKind::WgData => Some(Self::WireGuard),
            DatagramKind::Unknown => None,
        }
    }
}

/// What a class fault does to the datagrams of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassFault {
    /// Drops them.
    Drop,
    /// Delays them by this much (on top of the link profile).
    Delay(Duration),
}

/// Which way a datagram goes, seen from whoever applies the faults: out of the host (or out of
/// the NAT to the outside), or into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Leaving.
    Egress,
    /// Arriving.
    Ingress,
}

/// Link quality applied per datagram. The default is a perfect link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkProfile {
    /// Added to every datagram.
    pub latency: Duration,
    /// A uniformly random extra delay in `0..=jitter`.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_delay`, so later ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
}

impl LinkProfile {
    /// A perfect link.
    pub const PERFECT: Self = Self {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
    };

    fn is_perfect(&self) -> bool {
        *self == Self::PERFECT
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do not forward it.
    Drop,
    /// Forward it after `delay` (zero: now), and a second copy after `duplicate` if set.
    Deliver {
        /// Delay of the datagram.
        delay: Duration,
        /// Delay of a duplicate, if any.
        duplicate: Option<Duration>,
    },
}

impl Verdict {
    const NOW: Self = Self::Deliver {
        delay: Duration::ZERO,
        duplicate: None,
    };

    /// The delays of the copies to forward (none when dropped).
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        let (a, b) = match self {
            Self::Drop => (None, None),
            Self::Deliver { delay, duplicate } => (Some(delay), duplicate),
        };
        a.into_iter().chain(b)
    }
}

/// What the faults did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Datagrams forwarded untouched (no delay, no copy).
    pub passed: u64,
    /// Lost to the profile's loss.
    pub lost: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Held back to be reordered.
    pub reordered: u64,
    /// Delayed by latency or jitter.
    pub delayed: u64,
    /// Dropped by a class fault, per class.
    pub dropped_by_class: BTreeMap<PacketClass, u64>,
    /// Delayed by a class fault, per class.
    pub delayed_by_class: BTreeMap<PacketClass, u64>,
}

#[derive(Debug)]
struct State {
    seed: u64,
    /// One random stream per flow (direction, local address, peer), drawn from in the flow's
    /// order. A single stream shared by every socket of a host would hand a datagram the draw
    /// of whichever datagram another socket happened to take first in the same step, an order
    /// tokio may pick differently in a run that skips ahead and in one stepped tick by tick.
    rngs: BTreeMap<(Direction, SocketAddr, SocketAddr), ChaCha8Rng>,
    egress: LinkProfile,
    ingress: LinkProfile,
    class_faults: BTreeMap<(PacketClass, Direction), ClassFault>,
    turn_port: u16,
    stats: FaultStats,
}

/// A shared, changeable set of faults with its own seeded RNG; clones share it, so the test
/// driver keeps one to change faults while the hosts forward through another.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    /// No faults yet; randomness from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                seed,
                rngs: BTreeMap::new(),
                egress: LinkProfile::PERFECT,
                ingress: LinkProfile::PERFECT,
                class_faults: BTreeMap::new(),
                turn_port: TURN_PORT,
                stats: FaultStats::default(),
            })),
        }
    }

    /// Sets the link profile for one direction.
    pub fn set_profile(&self, direction: Direction, profile: LinkProfile) {
        let profile = sanitize(profile);
        let mut state = lock(&self.state);
        match direction {
            Direction::Egress => state.egress = profile,
            Direction::Ingress => state.ingress = profile,
        }
    }

    /// Sets `fault` for `class` in both directions.
    pub fn set_class_fault(&self, class: PacketClass, fault: ClassFault) {
        self.set_class_fault_one_way(class, Direction::Egress, fault);
        self.set_class_fault_one_way(class, Direction::Ingress, fault);
    }

    /// Sets `fault` for `class` in one direction only.
    pub fn set_class_fault_one_way(
        &self,
        class: PacketClass,
        direction: Direction,
        fault: ClassFault,
    ) {
        lock(&self.state)
            .class_faults
            .insert((class, direction), fault);
    }

    /// Removes the faults on `class`, both directions.
    pub fn clear_class_fault(&self, class: PacketClass) {
        let mut state = lock(&self.state);
        state.class_faults.remove(&(class, Direction::Egress));
        state.class_faults.remove(&(class, Direction::Ingress));
    }

    /// Removes every fault (profiles back to perfect); the RNG and the counters stay.
    pub fn clear(&self) {
        let mut state = lock(&self.state);
        state.egress = LinkProfile::PERFECT;
        state.ingress = LinkProfile::PERFECT;
        state.class_faults.clear();
    }

    /// The port that makes STUN count as TURN (default [`TURN_PORT`]).
    pub fn set_turn_port(&self, port: u16) {
        lock(&self.state).turn_port = port;
    }

    /// The counters.
    pub fn stats(&self) -> FaultStats {
        lock(&self.state).stats.clone()
    }

    /// Decides the fate of `bytes` going `direction` between `local` and `peer`.
    pub fn decide(
        &self,
        direction: Direction,
        bytes: &[u8],
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Verdict {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let profile = match direction {
            Direction::Egress => state.egress,
            Direction::Ingress => state.ingress,
        };
        if state.class_faults.is_empty() && profile.is_perfect() {
            state.stats.passed += 1;
            return Verdict::NOW;
        }
        let mut delay = Duration::ZERO;
        if let Some(class) = PacketClass::of(bytes, local, peer, state.turn_port) {
            match state.class_faults.get(&(class, direction)) {
                Some(ClassFault::Drop) => {
                    *state.stats.dropped_by_class.entry(class).or_default() += 1;
                    return Verdict::Drop;
                }
                Some(ClassFault::Delay(extra)) => {
                    *state.stats.delayed_by_class.entry(class).or_default() += 1;
                    delay += *extra;
                }
                None => {}
            }
        }
        let seed = state.seed;
        let rng = state
            .rngs
            .entry((direction, local, peer))
            .or_insert_with(|| ChaCha8Rng::seed_from_u64(flow_seed(seed, direction, local, peer)));
        if profile.loss > 0.0 && rng.gen_bool(profile.loss) {
            state.stats.lost += 1;
            return Verdict::Drop;
        }
        delay += profile.latency;
        if !profile.jitter.is_zero() {
            delay += Duration::from_nanos(rng.gen_range(0..=nanos(profile.jitter)));
        }
        if !delay.is_zero() {
            state.stats.delayed += 1;
        }
        if profile.reorder > 0.0 && rng.gen_bool(profile.reorder) {
            state.stats.reordered += 1;
            delay += profile.reorder_delay;
        }
        let duplicate = if profile.duplicate > 0.0 && rng.gen_bool(profile.duplicate) {
            state.stats.duplicated += 1;
            Some(delay)
        } else {
            None
        };
        if delay.is_zero() && duplicate.is_none() {
            state.stats.passed += 1;
        }
        Verdict::Deliver { delay, duplicate }
    }
}

/// The seed of one flow's stream: `seed` and the flow mixed with SplitMix64's finalizer, so
/// that neighbouring ports get unrelated streams.
fn flow_seed(seed: u64, direction: Direction, local: SocketAddr, peer: SocketAddr) -> u64 {
    let words = [
        u64::from(direction == Direction::Egress),
        addr_word(local),
        addr_word(peer),
    ];
    words.into_iter().fold(seed, |h, w| mix(h ^ mix(w)))
}

fn addr_word(addr: SocketAddr) -> u64 {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (ip << 16) ^ u64::from(addr.port())
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Probabilities outside `0..=1` (or NaN) would make the RNG panic: clamp them.
fn sanitize(mut profile: LinkProfile) -> LinkProfile {
    for p in [
        &mut profile.loss,
        &mut profile.duplicate,
        &mut profile.reorder,
    ] {
        *p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun() -> Vec<u8> {
        let mut b = vec![0u8; 20];
        b[1] = 1;
        b[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        b
    }

    fn wireguard() -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[0] = 4;
        b
    }

    fn channel_data() -> Vec<u8> {
        vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]
    }

    const A: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        5000,
    );
    const B: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        6000,
    );
    const RELAY: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3)),
        TURN_PORT,
    );

    #[test]
    fn classes() {
        assert_eq!(
            PacketClass::of(&stun(), A, B, TURN_PORT),
            Some(PacketClass::Stun)
        );
        assert_eq!(
            PacketClass::of(&stun(), A, RELAY, TURN_PORT),
            Some(PacketClass::Turn)
        );
        assert_eq!(
            PacketClass::of(&stun(), RELAY, A, TURN_PORT),
            Some(PacketClass::Turn)
        );
        assert_eq!(
            PacketClass::of(&channel_data(), A, RELAY, TURN_PORT),
            Some(PacketClass::Turn)
        );
        assert_eq!(
            PacketClass::of(&wireguard(), A, B, TURN_PORT),
            Some(PacketClass::WireGuard)
        );
        assert_eq!(PacketClass::of(b"hello", A, B, TURN_PORT), None);
    }

    #[test]
    fn class_faults_hit_only_their_class_and_direction() {
        let faults = Faults::new(1);
        faults.set_class_fault(PacketClass::Stun, ClassFault::Drop);
        faults.set_class_fault_one_way(
            PacketClass::WireGuard,
            Direction::Egress,
            ClassFault::Delay(Duration::from_millis(50)),
        );
        assert_eq!(
            faults.decide(Direction::Egress, &stun(), A, B),
            Verdict::Drop
        );
        assert_eq!(
            faults.decide(Direction::Ingress, &stun(), A, B),
            Verdict::Drop
        );
        assert_eq!(
            faults.decide(Direction::Egress, &stun(), A, RELAY),
            Verdict::NOW
        );
        assert_eq!(
            faults.decide(Direction::Egress, &wireguard(), A, B),
            Verdict::Deliver {
                delay: Duration::from_millis(50),
                duplicate: None
            }
        );
        assert_eq!(
            faults.decide(Direction::Ingress, &wireguard(), A, B),
            Verdict::NOW
        );
        assert_eq!(
            faults.decide(Direction::Egress, b"other", A, B),
            Verdict::NOW
        );
        let stats = faults.stats();
        assert_eq!(stats.dropped_by_class.get(&PacketClass::Stun), Some(&2));
        assert_eq!(
            stats.delayed_by_class.get(&PacketClass::WireGuard),
            Some(&1)
        );
        faults.clear();
        assert_eq!(
            faults.decide(Direction::Egress, &stun(), A, B),
            Verdict::NOW
        );
    }

    #[test]
    fn profile_is_seeded() {
        let run = |seed| {
            let faults = Faults::new(seed);
            faults.set_profile(
                Direction::Egress,
                LinkProfile {
                    latency: Duration::from_millis(20),
                    jitter: Duration::from_millis(10),
                    loss: 0.2,
                    duplicate: 0.1,
                    reorder: 0.1,
                    reorder_delay: Duration::from_millis(100),
                },
            );
            (0..1000)
                .map(|_| faults.decide(Direction::Egress, b"x", A, B))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let lost = a.iter().filter(|v| **v == Verdict::Drop).count();
        assert!((120..280).contains(&lost), "{lost}");
        let dup = a.iter().filter(|v| v.delays().count() == 2).count();
        assert!((40..130).contains(&dup), "{dup}");
        assert!(a
            .iter()
            .flat_map(|v| v.delays())
            .all(|d| d >= Duration::from_millis(20) && d <= Duration::from_millis(130)));
    }

    #[test]
    fn bad_probabilities_are_clamped() {
        let faults = Faults::new(1);
        faults.set_profile(
            Direction::Ingress,
            LinkProfile {
                loss: f64::NAN,
                duplicate: 2.0,
                ..LinkProfile::PERFECT
            },
        );
        assert_eq!(
            faults
                .decide(Direction::Ingress, b"x", A, B)
                .delays()
                .count(),
            2
        );
    }
}
