//! What an unauthenticated handshake initiation may cost a node.
//!
//! Routing an initiation to its connection means decrypting the sender's static key, an X25519
//! operation: tens of microseconds, which a flood of forged initiations would spend for free.
//! So before that, as WireGuard does:
//!
//! 1. mac1 is checked (a keyed BLAKE2s over the message, keyed by our public key): datagrams
//!    that are not initiations for us at all cost a hash.
//! 2. Past [`HANDSHAKE_LOAD`] initiations a second the node is under load. Each source address
//!    then gets at most [`HANDSHAKES_PER_SOURCE`] a second (a burst of
//!    [`HANDSHAKE_SOURCE_BURST`]); the rest are dropped unanswered, so a flood costs a hash and
//!    a lookup per datagram, whoever knows our public key.
//! 3. Within its budget, an initiation must carry a valid mac2, a cookie bound to its source
//!    address, or it is answered with a cookie reply (only a sender that receives at that
//!    address can use the cookie).
//!
//! Step 3 is boringtun's `RateLimiter`, set to be always under load (the load is judged here)
//! and driven by the node's clock like its tunnels.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput as _, KeyInit as _};
use blake2::{Blake2s256, Blake2sMac, Digest as _};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::TunnResult;
use boringtun::x25519::PublicKey;
use mock_instant::MockClock;
use subtle::ConstantTimeEq as _;

/// The size of a handshake initiation, and where its macs start.
const INITIATION_LEN: usize = 148;
const MAC1_AT: usize = INITIATION_LEN - 32;

/// Handshake initiations a second before a node asks for cookies (boringtun's own device
/// uses the same figure).
pub const HANDSHAKE_LOAD: u64 = 100;
/// Initiations a second one source address may have processed while the node is under load.
pub const HANDSHAKES_PER_SOURCE: u32 = 20;
/// How many of them may come at once.
pub const HANDSHAKE_SOURCE_BURST: u32 = 5;
/// Source addresses whose budget is tracked at most; when all are in use, initiations from
/// other sources wait until one is idle again (as WireGuard's table does).
pub const MAX_HANDSHAKE_SOURCES: usize = 4096;

/// What to do with an initiation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go on: decrypt it and route it.
    Pass,
    /// Send the cookie reply written at this range of the destination buffer, nothing else.
    CookieReply(Range<usize>),
}

pub(crate) struct HandshakeGuard {
    /// HASH("mac1----" || our public key): the key of every initiation's mac1.
    mac1_key: [u8; 32],
    limiter: RateLimiter,
    epoch: Instant,
    high_water: Duration,
    /// Initiations seen in the current second, and when it began.
    second: (Instant, u64),
    sources: BTreeMap<IpAddr, Bucket>,
    /// When full sources were last forgotten: at most once per burst's refill time, so that a
    /// flood from ever new addresses does not cost a scan of the table per datagram.
    pruned_at: Instant,
}

/// A source's budget: tokens, refilled at [`HANDSHAKES_PER_SOURCE`] a second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl HandshakeGuard {
    /// A guard for the node with `public_key`; its cookie secrets come from `rng`.
    pub(crate) fn new(
        public_key: &PublicKey,
        now: Instant,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Self {
        // The limiter reads boringtun's clock at construction.
        MockClock::set_time(Duration::ZERO);
        Self {
            mac1_key: mac1_key(public_key),
            // Always under load: it is asked only when this guard judges the node is.
            limiter: RateLimiter::new_with_rng(public_key, 0, rng),
            epoch: now,
            high_water: Duration::ZERO,
            second: (now, 0),
            sources: BTreeMap::new(),
            pruned_at: now,
        }
    }

    /// Checks the initiation `datagram` from `src`; a cookie reply is written into `dst`.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Result<Verdict, WireGuardError> {
        if !self.mac1_valid(datagram) {
            return Err(WireGuardError::InvalidMac);
        }
        if now.saturating_duration_since(self.second.0) >= Duration::from_secs(1) {
            self.second = (now, 0);
        }
        self.second.1 += 1;
        if self.second.1 <= HANDSHAKE_LOAD {
            return Ok(Verdict::Pass);
        }
        if !self.take_token(src, now) {
            return Err(WireGuardError::UnderLoad);
        }
        self.high_water = self
            .high_water
            .max(now.saturating_duration_since(self.epoch));
        MockClock::set_time(self.high_water);
        let base = dst.as_ptr() as usize;
        match self.limiter.verify_packet(Some(src), datagram, dst) {
            Ok(_) => Ok(Verdict::Pass),
            Err(TunnResult::WriteToNetwork(reply)) => {
                let start = (reply.as_ptr() as usize).saturating_sub(base);
                Ok(Verdict::CookieReply(start..start + reply.len()))
            }
            Err(TunnResult::Err(error)) => Err(error),
            Err(
                TunnResult::Done
                | TunnResult::WriteToTunnelV4(..)
                | TunnResult::WriteToTunnelV6(..),
            ) => Err(WireGuardError::InvalidPacket),
        }
    }

    /// Whether `datagram` is an initiation whose mac1 is keyed with our public key.
    fn mac1_valid(&self, datagram: &[u8]) -> bool {
        if datagram.len() != INITIATION_LEN {
            return false;
        }
        let Some(expected) = mac1(&self.mac1_key, datagram) else {
            return false;
        };
        expected.ct_eq(&datagram[MAC1_AT..MAC1_AT + 16]).into()
    }

    fn take_token(&mut self, src: IpAddr, now: Instant) -> bool {
        let burst = f64::from(HANDSHAKE_SOURCE_BURST);
        if !self.sources.contains_key(&src) && self.sources.len() >= MAX_HANDSHAKE_SOURCES {
            // Forget the sources whose budget is full again: they cost nothing to recreate.
            let full = Duration::from_secs_f64(burst / f64::from(HANDSHAKES_PER_SOURCE));
            if now.saturating_duration_since(self.pruned_at) < full {
                return false;
            }
            self.pruned_at = now;
            self.sources
                .retain(|_, b| now.saturating_duration_since(b.at) < full);
            if self.sources.len() >= MAX_HANDSHAKE_SOURCES {
                return false;
            }
        }
        let bucket = self.sources.entry(src).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(HANDSHAKES_PER_SOURCE)).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How many sources have a budget tracked.
    pub(crate) fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

/// Writes a valid mac1 into a 148-byte handshake initiation for the node whose static key is
/// `public_key`: what anyone who knows a node's public key can do (for the fuzz targets).
#[cfg(any(test, feature = "testing"))]
pub fn sign_mac1(public_key: &PublicKey, initiation: &mut [u8]) {
    if initiation.len() != INITIATION_LEN {
        return;
    }
    if let Some(mac) = mac1(&mac1_key(public_key), initiation) {
        initiation[MAC1_AT..MAC1_AT + 16].copy_from_slice(&mac);
    }
}

/// WireGuard's mac1 key for a responder: BLAKE2s("mac1----" || its public key).
fn mac1_key(public_key: &PublicKey) -> [u8; 32] {
    let mut hash = Blake2s256::new();
    blake2::Digest::update(&mut hash, b"mac1----");
    blake2::Digest::update(&mut hash, public_key.as_bytes());
    hash.finalize().into()
}

/// The mac1 of an initiation (`INITIATION_LEN` bytes): a keyed BLAKE2s over what precedes it.
fn mac1(key: &[u8; 32], initiation: &[u8]) -> Option<[u8; 16]> {
    let mut mac = Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(key).ok()?;
    blake2::digest::Update::update(&mut mac, initiation.get(..MAC1_AT)?);
    Some(mac.finalize_fixed().into())
}

#[cfg(test)]
mod tests {
    // Any instant serves as the origin; panics are the failure report.
    #![allow(clippy::disallowed_methods, clippy::unwrap_used)]

    use boringtun::noise::Tunn;
    use boringtun::x25519::StaticSecret;

    use super::*;

    struct Peer {
        tunn: Tunn,
    }

    impl Peer {
        /// An initiator towards `responder`.
        fn new(responder: &PublicKey, seed: u8) -> Self {
            MockClock::set_time(Duration::ZERO);
            let tunn = Tunn::new(
                StaticSecret::from([seed; 32]),
                *responder,
                None,
                None,
                1,
                None,
            );
            Self { tunn }
        }

        fn initiation(&mut self) -> Vec<u8> {
            let mut buf = [0; 256];
            match self.tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(bytes) => bytes.to_vec(),
                TunnResult::Done
                | TunnResult::Err(_)
                | TunnResult::WriteToTunnelV4(..)
                | TunnResult::WriteToTunnelV6(..) => panic!("no initiation"),
            }
        }

        fn take_cookie(&mut self, reply: &[u8]) {
            let mut buf = [0; 256];
            let result = self.tunn.decapsulate(None, reply, &mut buf);
            assert!(matches!(result, TunnResult::Done), "cookie not taken");
        }
    }

    fn responder() -> (PublicKey, HandshakeGuard, Instant) {
        let key = PublicKey::from(&StaticSecret::from([1; 32]));
        let now = Instant::now();
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(1);
        (key, HandshakeGuard::new(&key, now, &mut rng), now)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    #[test]
    fn forged_initiations_cost_a_hash_and_are_refused() {
        let (key, mut guard, now) = responder();
        let mut forged = vec![0x5a; 148];
        forged[..4].copy_from_slice(&[1, 0, 0, 0]);
        let mut dst = [0; 256];
        assert!(matches!(
            guard.check(now, ip(1), &forged, &mut dst),
            Err(WireGuardError::InvalidMac)
        ));
        // One for someone else's key carries a mac1 that is not ours.
        let other = PublicKey::from(&StaticSecret::from([2; 32]));
        let elsewhere = Peer::new(&other, 3).initiation();
        assert!(matches!(
            guard.check(now, ip(1), &elsewhere, &mut dst),
            Err(WireGuardError::InvalidMac)
        ));
        let ours = Peer::new(&key, 3).initiation();
        assert!(matches!(
            guard.check(now, ip(1), &ours, &mut dst),
            Ok(Verdict::Pass)
        ));
    }

    #[test]
    fn under_load_initiations_need_a_cookie_and_each_source_a_budget() {
        let (key, mut guard, now) = responder();
        let mut peer = Peer::new(&key, 3);
        let mut dst = [0; 256];
        for _ in 0..HANDSHAKE_LOAD {
            let init = peer.initiation();
            assert!(matches!(
                guard.check(now, ip(1), &init, &mut dst),
                Ok(Verdict::Pass)
            ));
        }
        // One more within the second: answered with a cookie, not processed.
        let init = peer.initiation();
        let Ok(Verdict::CookieReply(range)) = guard.check(now, ip(1), &init, &mut dst) else {
            panic!("expected a cookie reply");
        };
        peer.take_cookie(&dst[range]);
        // With the cookie, the rest of the source's burst passes, then its budget is spent.
        for _ in 1..HANDSHAKE_SOURCE_BURST {
            let init = peer.initiation();
            assert!(matches!(
                guard.check(now, ip(1), &init, &mut dst),
                Ok(Verdict::Pass)
            ));
        }
        let init = peer.initiation();
        assert!(matches!(
            guard.check(now, ip(1), &init, &mut dst),
            Err(WireGuardError::UnderLoad)
        ));
        // A second later the load is gone.
        let later = now + Duration::from_secs(1);
        let init = peer.initiation();
        assert!(matches!(
            guard.check(later, ip(1), &init, &mut dst),
            Ok(Verdict::Pass)
        ));
    }

    /// `sign_mac1` (what the fuzz targets forge initiations with) signs as boringtun does.
    #[test]
    fn sign_mac1_matches_a_real_initiation() {
        let (key, guard, _) = responder();
        let real = Peer::new(&key, 9).initiation();
        let mut forged = real.clone();
        forged[MAC1_AT..].fill(0);
        assert!(!guard.mac1_valid(&forged));
        sign_mac1(&key, &mut forged);
        assert_eq!(forged[..MAC1_AT + 16], real[..MAC1_AT + 16]);
        assert!(guard.mac1_valid(&forged));
    }

    #[test]
    fn tracked_sources_are_capped() {
        let (_, mut guard, now) = responder();
        for i in 0..MAX_HANDSHAKE_SOURCES {
            let source = IpAddr::from(std::net::Ipv6Addr::from(u128::try_from(i).unwrap()));
            assert!(guard.take_token(source, now));
        }
        assert_eq!(guard.tracked_sources(), MAX_HANDSHAKE_SOURCES);
        let one_more = IpAddr::from(std::net::Ipv6Addr::from(u128::MAX));
        assert!(
            !guard.take_token(one_more, now),
            "no room while all are busy"
        );
        assert_eq!(guard.tracked_sources(), MAX_HANDSHAKE_SOURCES);
        // Once their budgets are full again, they make room.
        assert!(guard.take_token(one_more, now + Duration::from_secs(1)));
        assert_eq!(guard.tracked_sources(), 1);
    }
}
