//! A WireGuard tunnel whose clock is the node's `now`.
//!
//! boringtun reads `Instant::now()` internally. With its `mock-instant` feature that clock is a
//! per-thread mock, so before every call into a [`Tunn`] the mock is set to this tunnel's
//! elapsed time. Each tunnel keeps its own high-water mark so it never sees time go backwards,
//! even when several nodes with different epochs share one thread (as in the simulation).

use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Deferred, Opening, Sealing, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use mock_instant::MockClock;
use rand_chacha::ChaCha20Rng;

/// A 24-bit connection index: boringtun shifts it left by 8 and numbers its sessions in the low
/// byte, so `receiver_idx >> 8` of any incoming packet names the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnIndex(u32);

impl ConnIndex {
    /// The largest value that survives boringtun's shift.
    pub const MAX: u32 = (1 << 24) - 1;

    /// `None` if `v` does not fit in 24 bits.
    pub fn new(v: u32) -> Option<Self> {
        (v <= Self::MAX).then_some(Self(v))
    }

    /// The connection an incoming session index belongs to.
    pub fn from_session_index(idx: u32) -> Self {
        Self(idx >> 8)
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A handshake initiation answered with a cookie reply is sent again at once, with the cookie
/// (mac2), at most this often. WireGuard waits for the next retry (`REKEY_TIMEOUT`, 5 s), so a
/// client whose handshake met a gateway under load (a flood of initiations from someone else)
/// would wait that long for its tunnel; mac2 is what lets the gateway take it at once. The
/// limit keeps one resend per attempt: an on-path party that knows the gateway's public key
/// could otherwise answer each resend with a cookie of its own, and storm handshakes.
pub(crate) const COOKIE_RESEND_INTERVAL: Duration = Duration::from_secs(5);

/// WireGuard's message type of a cookie reply (a 64-byte message).
const COOKIE_REPLY: u8 = 3;
const COOKIE_REPLY_LEN: usize = 64;

/// A session index formatted as `(connection|session)`, e.g. `(3428714|1)`.
#[derive(Debug, Clone, Copy)]
pub struct SessionIdx(pub u32);

impl std::fmt::Display for SessionIdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}|{})", self.0 >> 8, self.0 & 0xFF)
    }
}

/// A [`Tunn`] driven by explicit time.
pub(crate) struct Tunnel {
    tunn: Tunn,
    epoch: Instant,
    high_water: Duration,
    /// When the newest session's handshake completed, as last seen. boringtun forgets a session
    /// 180 s after its handshake (and with it the time), but keeps counting towards its 540 s
    /// error from that moment, so the age of an idle connection's keys has to be kept here.
    session_since: Option<Instant>,
    /// The tunnel's start, from which boringtun counts its timers.
    started: Instant,
    /// When a cookie reply last made the initiation go again at once.
    cookie_resent: Option<Instant>,
}

impl Tunnel {
    /// A tunnel whose ephemeral keys and cookie secrets come from `rng`, and whose handshake
    /// timestamps (TAI64N) count from `wall`, the wall-clock time at `now`: nothing it sends
    /// depends on the host's clock or random source, so a seed repeats a run byte for byte.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        now: Instant,
        epoch: Instant,
        wall: SystemTime,
        private: StaticSecret,
        remote: PublicKey,
        psk: [u8; 32],
        index: ConnIndex,
        rng: ChaCha20Rng,
    ) -> Self {
        let high_water = now.saturating_duration_since(epoch);
        // Tunn::new reads the clock for its timers and rate limiter.
        MockClock::set_time(high_water);
        let tunn = Tunn::new_with(
            private,
            remote,
            Some(psk),
            None,
            index.get(),
            None,
            Box::new(rng),
            wall,
        );
        Self {
            tunn,
            epoch,
            high_water,
            session_since: None,
            started: epoch + high_water,
            cookie_resent: None,
        }
    }

    fn set_clock(&mut self, now: Instant) {
        self.high_water = self
            .high_water
            .max(now.saturating_duration_since(self.epoch));
        MockClock::set_time(self.high_water);
    }

    pub(crate) fn encapsulate(&mut self, now: Instant, packet: &[u8], dst: &mut [u8]) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        Output::from_result(base, self.tunn.encapsulate(packet, dst))
    }

    /// [`Tunnel::encapsulate`], leaving the encryption of a data packet to the caller.
    pub(crate) fn encapsulate_deferred(
        &mut self,
        now: Instant,
        packet: &[u8],
        dst: &mut [u8],
    ) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        Output::from_deferred(base, self.tunn.encapsulate_deferred(packet, dst))
    }

    /// [`Tunnel::decapsulate`], leaving the decryption of a data packet to the caller, who
    /// hands the result to [`Tunnel::finish_open`].
    pub(crate) fn decapsulate_deferred(
        &mut self,
        now: Instant,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        let out = Output::from_deferred(
            base,
            self.tunn.decapsulate_deferred(Some(src), datagram, dst),
        );
        self.after_cookie(now, datagram, out, dst)
    }

    /// Finishes a data packet opened away from the tunnel; `packet` starts where the
    /// ciphertext did.
    pub(crate) fn finish_open(
        &mut self,
        now: Instant,
        opening: &Opening,
        opened: Result<usize, WireGuardError>,
        packet: &mut [u8],
    ) -> Output {
        self.set_clock(now);
        let base = packet.as_ptr() as usize;
        Output::from_result(base, self.tunn.finish_open(opening, opened, packet))
    }

    /// `datagram` empty means "flush what boringtun queued", as boringtun documents.
    pub(crate) fn decapsulate(
        &mut self,
        now: Instant,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        let out = Output::from_result(base, self.tunn.decapsulate(Some(src), datagram, dst));
        self.after_cookie(now, datagram, out, dst)
    }

    /// `out`, what `datagram` produced; for a cookie reply boringtun took (see
    /// [`COOKIE_RESEND_INTERVAL`]), the initiation sent again with the cookie instead.
    fn after_cookie(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: Output,
        dst: &mut [u8],
    ) -> Output {
        let cookie = datagram.len() == COOKIE_REPLY_LEN && datagram[0] == COOKIE_REPLY;
        if !cookie || !matches!(out, Output::Done) {
            return out;
        }
        if self
            .cookie_resent
            .is_some_and(|at| now < at + COOKIE_RESEND_INTERVAL)
        {
            return out;
        }
        self.cookie_resent = Some(now);
        self.handshake_initiation(now, dst, true)
    }

    pub(crate) fn update_timers(&mut self, now: Instant, dst: &mut [u8]) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        Output::from_result(base, self.tunn.update_timers(dst))
    }

    /// When boringtun's timers may next act, without a packet in between: [`Tunnel::update_timers`]
    /// is due then. `None` when only a packet can make them act (the handshake gave up).
    pub(crate) fn timers_due(&self) -> Option<Instant> {
        self.tunn.next_timer_at().map(|since| self.started + since)
    }

    pub(crate) fn handshake_initiation(
        &mut self,
        now: Instant,
        dst: &mut [u8],
        force: bool,
    ) -> Output {
        self.set_clock(now);
        let base = dst.as_ptr() as usize;
        Output::from_result(base, self.tunn.format_handshake_initiation(dst, force))
    }

    /// How long ago the current session's handshake completed, if there is a session.
    pub(crate) fn time_since_last_handshake(&mut self, now: Instant) -> Option<Duration> {
        self.set_clock(now);
        let age = self.tunn.time_since_last_handshake();
        if let Some(age) = age {
            self.session_since = now.checked_sub(age);
        }
        age
    }

    /// How long ago the newest session's handshake completed, even once boringtun dropped the
    /// session; `None` before the first one.
    pub(crate) fn session_age(&mut self, now: Instant) -> Option<Duration> {
        self.time_since_last_handshake(now);
        self.session_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Whether a session exists that data can be sent on.
    pub(crate) fn has_session(&mut self, now: Instant) -> bool {
        self.time_since_last_handshake(now).is_some()
    }
}

/// What a [`Tunn`] call produced, with the bytes it wrote given as a range of the destination
/// buffer so the buffer itself can move on (into a transmit) without copying.
#[derive(Debug)]
pub(crate) enum Output {
    Network(Range<usize>),
    Tunnel(Range<usize>),
    /// A data packet, unencrypted, to seal before sending.
    Seal(Sealing, Range<usize>),
    /// A data packet's ciphertext, to open and finish.
    Open(Opening, Range<usize>),
    Done,
    Err(WireGuardError),
}

/// Where `out`, a sub-slice of a destination starting at `base`, lies in it: boringtun hands
/// back sub-slices, and their position is all we keep.
fn range_in(base: usize, out: &[u8]) -> Range<usize> {
    let start = (out.as_ptr() as usize).saturating_sub(base);
    start..start + out.len()
}

impl Output {
    fn from_deferred(base: usize, deferred: Deferred<'_>) -> Self {
        match deferred {
            Deferred::Seal(sealing, out) => Self::Seal(sealing, range_in(base, out)),
            Deferred::Open(opening, out) => Self::Open(opening, range_in(base, out)),
            Deferred::Now(result) => Self::from_result(base, result),
        }
    }

    fn from_result(base: usize, result: TunnResult<'_>) -> Self {
        let range = |out: &[u8]| range_in(base, out);
        match result {
            TunnResult::WriteToNetwork(out) => Self::Network(range(out)),
            TunnResult::WriteToTunnelV4(out, _) | TunnResult::WriteToTunnelV6(out, _) => {
                Self::Tunnel(range(out))
            }
            TunnResult::Done => Self::Done,
            TunnResult::Err(e) => Self::Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng as _;

    use super::*;

    /// A handshake initiation from a fresh tunnel with this generator seed and wall clock.
    fn initiation(rng_seed: u64, wall: SystemTime) -> Vec<u8> {
        #[allow(clippy::disallowed_methods)] // any instant: the tunnel counts from `epoch`
        let epoch = Instant::now();
        let remote = PublicKey::from(&StaticSecret::from([2; 32]));
        let mut tunnel = Tunnel::new(
            epoch,
            epoch,
            wall,
            StaticSecret::from([1; 32]),
            remote,
            [3; 32],
            ConnIndex::new(7).unwrap(),
            ChaCha20Rng::seed_from_u64(rng_seed),
        );
        let mut buf = [0u8; 256];
        match tunnel.handshake_initiation(epoch, &mut buf, true) {
            Output::Network(range) => buf[range].to_vec(),
            Output::Tunnel(_)
            | Output::Seal(..)
            | Output::Open(..)
            | Output::Done
            | Output::Err(_) => panic!("no initiation"),
        }
    }

    fn tunnel(epoch: Instant, private: u8, remote: u8, index: u32) -> Tunnel {
        Tunnel::new(
            epoch,
            epoch,
            SystemTime::UNIX_EPOCH,
            StaticSecret::from([private; 32]),
            PublicKey::from(&StaticSecret::from([remote; 32])),
            [3; 32],
            ConnIndex::new(index).unwrap(),
            ChaCha20Rng::seed_from_u64(u64::from(index)),
        )
    }

    /// Two tunnels to each other, both counting from the returned instant.
    fn initiator_and_responder() -> (Instant, Tunnel, Tunnel) {
        #[allow(clippy::disallowed_methods)] // any instant: the tunnels count from `epoch`
        let epoch = Instant::now();
        (epoch, tunnel(epoch, 1, 2, 7), tunnel(epoch, 2, 1, 9))
    }

    /// The patched boringtun dates a session when its handshake completes, not at the last
    /// timer tick before: an idle connection drives its timers only when one is due, seconds
    /// apart, and a handshake that completed in between must not look older than it is.
    #[test]
    fn a_session_is_dated_when_its_handshake_completes_not_at_the_last_tick() {
        let (epoch, mut initiator, mut responder) = initiator_and_responder();
        let src: IpAddr = [192, 0, 2, 1].into();
        let (mut buf, mut out) = ([0u8; 256], [0u8; 256]);
        initiator.update_timers(epoch, &mut buf);
        responder.update_timers(epoch, &mut buf);

        let sent = epoch + Duration::from_millis(800);
        let Output::Network(range) = initiator.handshake_initiation(sent, &mut buf, true) else {
            panic!("no initiation");
        };
        let Output::Network(reply) = responder.decapsulate(sent, src, &buf[range], &mut out) else {
            panic!("no response");
        };
        initiator.decapsulate(sent, src, &out[reply], &mut buf);

        let later = epoch + Duration::from_millis(900);
        let age = initiator.time_since_last_handshake(later).unwrap();
        assert_eq!(age, Duration::from_millis(100), "dated at the last tick");
        let age = responder.time_since_last_handshake(later);
        assert_eq!(
            age, None,
            "the responder has no session before a data packet"
        );
    }

    /// Whether driving `tunnel`'s timers at `at` sends something.
    fn acts_at(tunnel: &mut Tunnel, at: Instant) -> bool {
        let mut buf = [0u8; 256];
        matches!(tunnel.update_timers(at, &mut buf), Output::Network(_))
    }

    /// An idle connection drives boringtun's timers only when `timers_due` says: each timer
    /// must be due at the moment it acts, not later (it would fire late) and not much sooner.
    #[test]
    fn the_timers_are_due_the_moment_they_act() {
        let (epoch, mut initiator, mut responder) = initiator_and_responder();
        let src: IpAddr = [192, 0, 2, 1].into();
        let (mut buf, mut out) = ([0u8; 256], [0u8; 256]);
        let ms = Duration::from_millis;

        // An unanswered initiation is sent again after 5 s.
        let sent = epoch + ms(300);
        let Output::Network(init) = initiator.handshake_initiation(sent, &mut buf, true) else {
            panic!("no initiation");
        };
        let init = buf[init].to_vec();
        assert_eq!(initiator.timers_due(), Some(sent + ms(5_000)));
        assert!(!acts_at(&mut initiator, sent + ms(4_999)));
        assert!(
            acts_at(&mut initiator, sent + ms(5_000)),
            "no retry when due"
        );

        // The responder got a data packet and sent nothing since its handshake response: it
        // sends a keep-alive 10 s after that response.
        let answered = epoch + ms(5_200);
        let Output::Network(reply) = responder.decapsulate(answered, src, &init, &mut out) else {
            panic!("no response");
        };
        let reply = out[reply].to_vec();
        // The retry's initiation is newer; the response is to the first, which still counts.
        initiator.decapsulate(answered, src, &reply, &mut buf);
        let header = [
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 7,
        ];
        let data_at = epoch + ms(6_000);
        let Output::Network(data) = initiator.encapsulate(data_at, &header, &mut buf) else {
            panic!("no data packet");
        };
        let data = buf[data].to_vec();
        let got = responder.decapsulate(data_at, src, &data, &mut out);
        assert!(matches!(got, Output::Tunnel(_)), "{got:?}");
        assert_eq!(responder.timers_due(), Some(answered + ms(10_000)));
        assert!(!acts_at(&mut responder, answered + ms(9_999)));
        assert!(
            acts_at(&mut responder, answered + ms(10_000)),
            "no keep-alive when due"
        );
    }

    #[test]
    fn the_generator_and_the_wall_clock_decide_every_byte_of_an_initiation() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        let first = initiation(1, wall);
        assert_eq!(first.len(), 148);
        assert_eq!(
            first,
            initiation(1, wall),
            "same seed and clock, other bytes"
        );
        // Another generator: another ephemeral key (bytes 8..40).
        assert_ne!(first[8..40], initiation(2, wall)[8..40]);
        // Another wall clock: the same ephemeral key, another (encrypted) timestamp.
        let later = initiation(1, wall + Duration::from_secs(1));
        assert_eq!(first[8..40], later[8..40]);
        assert_ne!(first[88..116], later[88..116]);
    }

    /// A gateway under load answers an initiation without mac2 with a cookie reply: the
    /// initiation goes again at once with the cookie, and the gateway takes it, instead of
    /// after WireGuard's 5 s retry. Once per [`COOKIE_RESEND_INTERVAL`]: a second cookie reply
    /// within it changes nothing.
    #[test]
    fn a_cookie_reply_sends_the_initiation_again_at_once_with_the_cookie() {
        use std::sync::Arc;

        use boringtun::noise::rate_limiter::RateLimiter;

        #[allow(clippy::disallowed_methods)] // any instant: the tunnels count from `epoch`
        let epoch = Instant::now();
        let mut initiator = tunnel(epoch, 1, 2, 7);
        let gateway_key = StaticSecret::from([2; 32]);
        let gateway_public = PublicKey::from(&gateway_key);
        // A limit of 0: always under load, every initiation needs a cookie.
        let limiter =
            RateLimiter::new_with_rng(&gateway_public, 0, &mut ChaCha20Rng::seed_from_u64(5));
        let mut gateway = Tunn::new_with(
            gateway_key,
            PublicKey::from(&StaticSecret::from([1; 32])),
            Some([3; 32]),
            None,
            9 << 8,
            Some(Arc::new(limiter)),
            Box::new(ChaCha20Rng::seed_from_u64(9)),
            SystemTime::UNIX_EPOCH,
        );
        let src: IpAddr = [192, 0, 2, 1].into();
        let (mut buf, mut out) = ([0u8; 256], [0u8; 256]);
        let at = epoch + Duration::from_millis(100);

        let Output::Network(init) = initiator.handshake_initiation(at, &mut buf, true) else {
            panic!("no initiation");
        };
        let TunnResult::WriteToNetwork(cookie) =
            gateway.decapsulate(Some(src), &buf[init], &mut out)
        else {
            panic!("no cookie reply under load");
        };
        assert_eq!(cookie.len(), COOKIE_REPLY_LEN);
        let cookie = cookie.to_vec();

        let Output::Network(again) = initiator.decapsulate(at, src, &cookie, &mut buf) else {
            panic!("the initiation was not sent again");
        };
        let again = buf[again].to_vec();
        let TunnResult::WriteToNetwork(response) = gateway.decapsulate(Some(src), &again, &mut out)
        else {
            panic!("the initiation with the cookie was not answered");
        };
        assert_eq!(response[0], 2, "a handshake response");

        // Another gateway with the same key but other cookie secrets refuses the resend's
        // mac2: its cookie reply is valid, and taken, but sends nothing within the interval.
        let mut other = Tunn::new_with(
            StaticSecret::from([2; 32]),
            PublicKey::from(&StaticSecret::from([1; 32])),
            Some([3; 32]),
            None,
            10 << 8,
            Some(Arc::new(RateLimiter::new_with_rng(
                &gateway_public,
                0,
                &mut ChaCha20Rng::seed_from_u64(6),
            ))),
            Box::new(ChaCha20Rng::seed_from_u64(10)),
            SystemTime::UNIX_EPOCH,
        );
        let TunnResult::WriteToNetwork(cookie) = other.decapsulate(Some(src), &again, &mut out)
        else {
            panic!("no cookie reply from the other gateway");
        };
        let cookie = cookie.to_vec();
        let soon = at + COOKIE_RESEND_INTERVAL - Duration::from_millis(1);
        let second = initiator.decapsulate(soon, src, &cookie, &mut buf);
        assert!(
            matches!(second, Output::Done),
            "resent twice within the interval: {second:?}"
        );
        // boringtun takes the same reply again (it keeps the last mac1): at most one resend
        // per interval, WireGuard's own retry rate.
        let later = initiator.decapsulate(at + COOKIE_RESEND_INTERVAL, src, &cookie, &mut buf);
        assert!(matches!(later, Output::Network(_)), "{later:?}");
    }
}
