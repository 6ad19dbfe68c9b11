//! Packets for a path in doubt wait for proof that a path works.
//!
//! An idle connection checks its path only every [`super::IDLE_STUN_INTERVAL`], so a path that
//! died meanwhile (its relay gone, direct UDP blocked, a NAT mapping forgotten, the peer
//! restarted) is found out only by the checks the next packet starts; an active connection
//! whose checks stopped being answered keeps sending onto its path until ICE gives it up; and
//! one whose every pair failed has nowhere to send until ICE finds another or the connection
//! fails. Sent at once, a packet would be lost on the dead path, and a single
//! datagram (a DNS query, a ping, a UDP probe) is not sent again by anyone. Held back, it goes
//! out on the path as soon as a check or a packet from the peer proves it, or on the pair ICE
//! moves to, or, if the connection fails, on the caller's next connection
//! ([`crate::Node::take_unsent`]). The cost is one round trip on the first packets after a
//! silence.

use std::collections::VecDeque;
use std::time::Instant;

use super::Path;
use crate::pool::{Buffer, BufferPool};

/// Packets held per waking connection at most; later ones go out at once on the current path,
/// as they would without the hold (a burst that long is not worth delaying, and the hold must
/// not grow with what the device sends).
pub const MAX_WAKE_HELD: usize = 64;

/// A connection whose path is in doubt, until a path is proven.
#[derive(Debug)]
pub(super) struct Waking {
    /// The path the packets are for: the nominated one, which may change meanwhile.
    path: Path,
    /// When the connection woke: a check on the nominated pair answered since proves it.
    since: Instant,
    /// The packets go out by then if ICE still takes the path for working.
    deadline: Instant,
    /// A path proven since: where an authenticated packet of the peer's arrived from, or the
    /// nominated one once a check on it was answered.
    proven: Option<Path>,
    /// A new WireGuard session is wanted before the packets go: `Some(None)` until the path is
    /// proven and the handshake initiated, then `Some(Some(when))`.
    new_session: Option<Option<Instant>>,
    /// Whether the held packets are to be sealed by the caller (deferred crypto).
    pub(super) defer: bool,
    /// Whether our candidates went to the peer again (see [`Waking::resignal_once`]).
    resignalled: bool,
    held: VecDeque<Buffer>,
}

/// What to do with the held packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing is known yet.
    Wait,
    /// ICE nominated another pair: it once succeeded, maybe long ago, so it is checked anew.
    Recheck,
    /// The path is proven and a new session wanted: initiate the handshake; the packets wait
    /// for the session.
    Handshake,
    /// Send them once the tunnel has a session newer than the handshake initiated then.
    Session(Instant),
    /// Send them: a check on the path was answered or the peer's packets arrive on it.
    Proven,
    /// Send them: nothing proved the path in time, while ICE still takes it for working.
    Deadline,
}

impl Waking {
    pub(super) fn new(path: Path, since: Instant, deadline: Instant) -> Self {
        Self {
            path,
            since,
            deadline,
            proven: None,
            new_session: None,
            defer: false,
            resignalled: false,
            held: VecDeque::new(),
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Holds a copy of `packet`, to be sealed by the caller if `defer`; false when
    /// [`MAX_WAKE_HELD`] are held already.
    pub(super) fn hold(&mut self, packet: &[u8], pool: &BufferPool, defer: bool) -> bool {
        if self.held.len() >= MAX_WAKE_HELD {
            return false;
        }
        self.defer = defer;
        let mut buf = pool.pull();
        buf.storage_mut()[..packet.len()].copy_from_slice(packet);
        buf.set_range(0..packet.len());
        self.held.push_back(buf);
        true
    }

    /// An authenticated packet of the peer's arrived over `path`.
    pub(super) fn note_peer_packet(&mut self, path: Path) {
        self.proven = Some(path);
    }

    /// True the first time it is asked: our candidates are to be signalled to the peer again,
    /// once per wake. A peer whose own NAT forgot its mappings while the connection idled (or
    /// whose relay allocations went with them) is unreachable on every pair until it sends
    /// something itself, which an idle peer does only at its next keep-alive, up to
    /// [`super::IDLE_STUN_INTERVAL`] later. Candidates arriving through the portal make it
    /// check its pairs at once, and its checks open its NAT again.
    pub(super) fn resignal_once(&mut self) -> bool {
        !std::mem::replace(&mut self.resignalled, true)
    }

    /// The packets are to go in a new WireGuard session, set up once the path is proven.
    pub(super) fn want_new_session(&mut self) {
        self.new_session.get_or_insert(None);
    }

    /// What to do now, with the connection's current path, when a check on the nominated pair
    /// was last answered and whether ICE is connected. A pair ICE nominates anew is proven by
    /// an answer since the wake, also one that came before the nomination: ICE may move it back
    /// and forth between pairs that both answer, faster than a round trip, when checks are
    /// duplicated or reordered on the way. While it is not, the packets wait past the
    /// deadline: either ICE finds a pair again or the connection fails, and they go to the
    /// next one.
    pub(super) fn judge(
        &mut self,
        path: Option<Path>,
        last_response: Option<Instant>,
        ice_connected: bool,
        now: Instant,
    ) -> Verdict {
        let Some(path) = path else {
            return Verdict::Wait;
        };
        if self.proven != Some(path) {
            let answered = last_response.is_some_and(|at| at >= self.since);
            let moved = path != self.path;
            self.path = path;
            if answered {
                self.proven = Some(path);
            } else if moved {
                return Verdict::Recheck;
            }
        }
        if now >= self.deadline && ice_connected {
            return Verdict::Deadline;
        }
        if self.proven != Some(path) {
            return Verdict::Wait;
        }
        match &mut self.new_session {
            None => Verdict::Proven,
            Some(Some(since)) => Verdict::Session(*since),
            Some(initiated @ None) => {
                *initiated = Some(now);
                Verdict::Handshake
            }
        }
    }

    pub(super) fn into_held(self) -> VecDeque<Buffer> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    // Any instant serves as the origin: nothing here reads the clock again.
    #![allow(clippy::disallowed_methods)]

    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn a_packet_past_the_cap_is_not_held() {
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let path = Path {
            local: addr,
            remote: addr,
            relay: None,
        };
        let pool = BufferPool::new(1500);
        let now = Instant::now();
        let mut waking = Waking::new(path, now, now);
        for i in 0..MAX_WAKE_HELD {
            assert!(waking.hold(&[i as u8; 40], &pool, false), "packet {i}");
        }
        assert!(!waking.hold(&[0; 40], &pool, false), "cap + 1 goes at once");
        let held = waking.into_held();
        assert_eq!(held.len(), MAX_WAKE_HELD);
        assert!(held.iter().enumerate().all(|(i, p)| p[..] == [i as u8; 40]));
    }
}
