//! One connection to a remote peer: an ICE agent that finds and keeps a path, and a WireGuard
//! tunnel that runs over it.
//!
//! A [`Connection`] knows nothing of the other connections or of how datagrams reach it: the
//! node routes STUN by ICE credentials and WireGuard by session index, and hands the connection
//! the shared transmit queue and buffer pool.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::Opening;
use boringtun::x25519::{PublicKey, StaticSecret};
use is::stun::{StunMessage, StunPacket};
use is::{BackupChecks, IceAgentEvent, IceConnectionState};

use crate::candidate::IceCandidate;
use crate::crypto::Seal;
use crate::ice::Ice;
use crate::ids::RelayId;
use crate::pool::{Buffer, BufferPool, DEVICE_HEADROOM};
use crate::turn::CHANNEL_DATA_HEADER_LEN;
use crate::types::{Credentials, Psk, Role, Transmit};
use crate::wireguard::{ConnIndex, Output, SessionIdx, Tunnel};
use crate::{CandidateKind, Error, FailReason};

mod config;
mod timer;
mod wake;

pub use config::{
    ConnectionConfig, BETTER_PATH_RETRY, CONTROLLED_MIGRATION_GRACE, HANDSHAKE_DEADLINE,
    ICE_SETUP_TIMEOUT, IDLE_AFTER, IDLE_STUN_INTERVAL, MAX_REMOTE_CANDIDATES, MIGRATION_GRACE,
    ROLLOVER_DEBOUNCE, WAKE_HOLD,
};
use timer::{Timer, TimerTable};
pub use wake::MAX_WAKE_HELD;
use wake::{Verdict, Waking};

/// WireGuard's message type of a handshake initiation.
const HANDSHAKE_INITIATION: u8 = 1;

/// Where packets for the peer go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// The local address to send from (a host candidate's base).
    pub local: SocketAddr,
    /// The remote address to send to.
    pub remote: SocketAddr,
    /// The relay whose allocation `local` is, when the path is relayed.
    pub relay: Option<RelayId>,
}

impl Path {
    /// Bytes to leave in front of the WireGuard packet, for a TURN channel-data header when the
    /// path is relayed.
    fn header_len(&self) -> usize {
        match self.relay {
            Some(_) => CHANNEL_DATA_HEADER_LEN,
            None => 0,
        }
    }
}

/// What a WireGuard datagram gave.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Nothing for the device (a handshake, a keep-alive).
    Nothing,
    /// A decrypted IP packet.
    Packet(Buffer),
    /// A data packet's ciphertext, to open (deferred crypto).
    Open(Opening, Buffer),
}

/// What the node learns from a connection after a call into it.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    NewLocalCandidate(IceCandidate),
    InvalidatedLocalCandidate(IceCandidate),
    Established,
    Idle,
    Failed(FailReason),
}

/// The parameters that decide whether an upsert keeps a connection or replaces it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) remote_key: PublicKey,
    pub(crate) psk: Psk,
    pub(crate) local_creds: Credentials,
    pub(crate) remote_creds: Credentials,
}

pub(crate) struct Connection {
    pub(crate) index: ConnIndex,
    pub(crate) identity: Identity,
    /// Which preshared key the tunnel uses (`Psk::fingerprint`), hashed once: observers read
    /// it after every input.
    pub(crate) psk_fingerprint: [u8; 8],
    role: Role,
    ice: Ice,
    tunnel: Tunnel,
    span: tracing::Span,

    path: Option<Path>,
    /// Since when handshake initiations have gone out without a new session.
    rekey_since: Option<Instant>,
    /// Handshake initiations sent, for observers of handshake storms.
    handshakes_initiated: u64,
    /// Our relayed candidates' addresses and their relays: a path from one of them is relayed.
    relayed: BTreeMap<SocketAddr, RelayId>,
    /// Where the peer's last authenticated data packet came from (our local address, the
    /// peer's), and when: the controlled side's route until ICE nominates a pair, and for a
    /// while proof that the path works, whatever ICE's checks say (see [`Connection::wake`]).
    peer_data: Option<(SocketAddr, SocketAddr, Instant)>,
    /// The client's one remote candidate learned from where the gateway's authenticated
    /// packets come from (see [`Connection::follow_peer`]); a newer one replaces it.
    learned_remote: Option<is::Candidate>,
    /// Peer-reflexive remote candidates learned from checks that a relay delivered (counted
    /// apart, see [`Connection::handle_stun`]); at most
    /// [`ConnectionConfig::max_peer_reflexive`].
    relayed_peer_reflexive: BTreeSet<SocketAddr>,
    ice_connected_at: Option<Instant>,
    established: bool,
    idle: bool,
    /// Packets held while the path is in doubt, until a path is proven.
    waking: Option<Waking>,
    /// The nominated pair's last [`UNANSWERED_IN_DOUBT`] checks are unanswered, as of the last
    /// timer or STUN message (kept here, not asked of ICE for every packet sent).
    path_silent: bool,
    /// When something other than a packet to send (new candidates) woke the connection from
    /// idle, until a check on the nominated pair is answered or a wake's hold ends: the path
    /// is as much in doubt as an idle one's, though the connection is no longer idle.
    unproven_since: Option<Instant>,
    last_activity: Instant,
    last_rollover: Option<Instant>,
    timers: TimerTable,
    config: ConnectionConfig,

    events: VecDeque<ConnEvent>,
    /// Transaction ids of the binding requests sent since the node last asked, so that it
    /// routes their answers without asking every connection.
    sent_requests: Vec<(Instant, TransactionId, SocketAddr)>,
}

/// The priority of a remote candidate learned from authenticated packets: the highest RFC 8445
/// allows, so that a pair on it outranks every pair on a signalled candidate.
const LEARNED_PRIORITY: u32 = (1 << 31) - 1;

/// Unanswered checks on the nominated pair (the newest may be in flight) that put its path in
/// doubt: two checks a second apart lost in a row happen on a path that died, rarely on a
/// lossy one, where it costs the packets meanwhile a round trip.
const UNANSWERED_IN_DOUBT: usize = 3;

/// [`UNANSWERED_IN_DOUBT`] while packets wait for a path (see `wake.rs`): the check sent at
/// the wake unanswered and the next in flight. A pair that answered meanwhile (the peer's checks
/// from where we now are, after our NAT rebound) then carries them a second sooner than in
/// steady state, where a single lost check must not move the path; and a pair whose own last
/// idle check went unanswered is not taken for working.
const UNANSWERED_IN_DOUBT_WAKING: usize = 2;

/// [`UNANSWERED_IN_DOUBT`] for a path through our own relay allocation: one check lost and the
/// next not answered yet. The relay knows the allocation by our 5-tuple, so when our NAT rebinds
/// the port (nothing tells us) the path drops everything at once, and a packet sent onto it is
/// lost. Any other path survives the rebinding, since the peer follows our authenticated packets
/// to the new address: there a packet is better sent at once.
const UNANSWERED_IN_DOUBT_OWN_RELAY: usize = 2;

/// Unanswered checks on the nominated pair (the newest may be in flight) of a connection
/// holding packets for a path in doubt, after which our candidates go to the peer again (see
/// `Waking::resignal_once`): the check sent at the wake and its first retransmission, half a
/// second or so. A path that works answers the first.
const UNANSWERED_TO_RESIGNAL: usize = 2;

/// Unanswered checks after which a pair fails while no path exists, or the connection is idle:
/// `is`' own default (about 20 s at a 3 s interval), so a hole punch waits for the peer's checks.
const SETUP_STUN_RETRANSMITS: usize = 9;

/// How long a binding request from the peer keeps a pair possible while ours go unanswered,
/// when no path exists or the connection is idle: `is`' own 15 s.
const SETUP_PEER_REQUEST_WINDOW: Duration = Duration::from_secs(15);

/// The stream of a connection's seed that its tunnel draws from.
const TUNNEL_RNG_STREAM: u64 = 0x7475_6e6e;

/// A STUN transaction id.
pub(crate) type TransactionId = [u8; 12];

pub(crate) struct ConnectionParams {
    pub(crate) role: Role,
    pub(crate) index: ConnIndex,
    pub(crate) identity: Identity,
    pub(crate) private_key: StaticSecret,
    pub(crate) seed: u64,
    pub(crate) tie_breaker: u64,
    pub(crate) epoch: Instant,
    /// The wall-clock time at `now` when the connection is made (its handshake timestamps).
    pub(crate) wall: SystemTime,
    pub(crate) span: tracing::Span,
    pub(crate) config: ConnectionConfig,
}

impl Connection {
    pub(crate) fn new(p: ConnectionParams, local_addrs: &[SocketAddr], now: Instant) -> Self {
        // The tunnel's randomness: the connection's seed on a stream of its own, so ICE (on
        // the first stream) draws what it always drew.
        let mut tunnel_rng = ChaCha20Rng::seed_from_u64(p.seed);
        tunnel_rng.set_stream(TUNNEL_RNG_STREAM);
        let tunnel = Tunnel::new(
            now,
            p.epoch,
            p.wall,
            p.private_key,
            p.identity.remote_key,
            p.identity.psk.0,
            p.index,
            tunnel_rng,
        );
        let ice = Ice::new(
            p.role,
            &p.identity.local_creds,
            &p.identity.remote_creds,
            p.tie_breaker,
            p.seed,
        );

        let mut conn = Self {
            index: p.index,
            psk_fingerprint: p.identity.psk.fingerprint(),
            identity: p.identity,
            role: p.role,
            ice,
            tunnel,
            span: p.span,
            path: None,
            rekey_since: None,
            handshakes_initiated: 0,
            relayed: BTreeMap::new(),
            peer_data: None,
            learned_remote: None,
            relayed_peer_reflexive: BTreeSet::new(),
            ice_connected_at: None,
            established: false,
            idle: false,
            waking: None,
            path_silent: false,
            unproven_since: None,
            last_activity: now,
            last_rollover: None,
            timers: TimerTable::default(),
            config: p.config,
            events: VecDeque::new(),
            sent_requests: Vec::new(),
        };
        conn.timers.set(Timer::WireGuardTick, now);
        conn.timers
            .set(Timer::IceSetup, now + p.config.ice_setup_timeout);
        conn.timers.set(Timer::Idle, now + p.config.idle_after);
        conn.timers
            .set(Timer::BetterPath, now + p.config.better_path_retry);
        conn.apply_stun_timing();
        // The client nominates a pair that answers over a better one whose checks stopped
        // being answered, as soon as its packets would wait for the latter (a path in doubt),
        // instead of when ICE gives it up seconds later; back to the better one once it answers.
        conn.ice
            .agent_mut()
            .set_unanswered_to_switch(Some(UNANSWERED_IN_DOUBT));
        for addr in local_addrs {
            conn.add_local_address(*addr);
        }
        conn
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// The binding requests sent since the last call, by transaction id.
    pub(crate) fn take_sent_requests(
        &mut self,
    ) -> std::vec::Drain<'_, (Instant, TransactionId, SocketAddr)> {
        self.sent_requests.drain(..)
    }

    pub(crate) fn path(&self) -> Option<Path> {
        self.path
    }

    /// Whether the nominated path goes through a relay, ours or the peer's.
    fn path_is_relayed(&self) -> bool {
        self.path.is_some_and(|p| p.relay.is_some())
            || self.path_remote_kind() == Some(CandidateKind::Relayed)
    }

    /// The kind of the peer's candidate the nominated path sends to.
    pub(crate) fn path_remote_kind(&self) -> Option<CandidateKind> {
        self.ice.remote_candidate_kind(self.path?.remote)
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.idle
    }

    pub(crate) fn is_established(&self) -> bool {
        self.established
    }

    pub(crate) fn ice_state(&self) -> IceConnectionState {
        self.ice.agent().state()
    }

    pub(crate) fn local_ufrag(&self) -> &str {
        &self.identity.local_creds.ufrag
    }

    /// Addresses of the peer's candidates, to open permissions and channels on our relays.
    pub(crate) fn remote_candidate_addrs(&self) -> Vec<SocketAddr> {
        self.ice.remote_candidate_addrs()
    }

    pub(crate) fn local_candidates(&self) -> Vec<IceCandidate> {
        self.ice.local_candidates()
    }

    pub(crate) fn add_local_address(&mut self, addr: SocketAddr) {
        let Ok(candidate) = IceCandidate::host(addr) else {
            tracing::debug!(parent: &self.span, %addr, "not a usable host candidate");
            return;
        };
        self.add_local_candidate(candidate, None);
    }

    /// Adds a local candidate; `relay` names the relay of a relayed one.
    pub(crate) fn add_local_candidate(&mut self, candidate: IceCandidate, relay: Option<RelayId>) {
        if let Some(relay) = relay {
            self.relayed.insert(candidate.addr(), relay);
        }
        if let Some(added) = self
            .ice
            .seeded()
            .add_local_candidate(candidate.as_ice().clone())
        {
            let added = IceCandidate::from(added.clone());
            self.events.push_back(ConnEvent::NewLocalCandidate(added));
        }
    }

    /// Stops using a local candidate (its relay is gone) and tells the peer to stop too.
    pub(crate) fn remove_local_candidate(&mut self, candidate: &IceCandidate, now: Instant) {
        let _guard = self.span.clone().entered();
        if self.ice.seeded().invalidate_candidate(candidate.as_ice()) {
            tracing::debug!(%candidate, "invalidated local candidate");
            self.events
                .push_back(ConnEvent::InvalidatedLocalCandidate(candidate.clone()));
        }
        self.relayed.remove(&candidate.addr());
        if self.path.is_some_and(|p| p.local == candidate.addr()) {
            // Until ICE nominates another pair there is no path; packets wait in boringtun.
            tracing::info!("path lost with its candidate");
            self.path = None;
            self.apply_stun_timing();
        }
        if self
            .peer_data
            .is_some_and(|(local, _, _)| local == candidate.addr())
        {
            self.peer_data = None;
        }
        self.ice.agent_mut().handle_timeout(now);
    }

    /// Always added, also after a pair was nominated: ICE may have settled on a peer-reflexive
    /// pair before the signalled candidates arrived, and refusing them leaves it stuck there.
    /// Unless the connection already has [`ConnectionConfig::max_remote_candidates`] signalled
    /// candidates: then another one is dropped (`false`), since every candidate costs checks,
    /// and a channel on every relay. One it holds already is then left as it is: the agent
    /// would hold it a second time once its pairs failed and were removed, so repeating held
    /// candidates would grow the list past the cap.
    pub(crate) fn add_remote_candidate(&mut self, candidate: &IceCandidate, now: Instant) -> bool {
        let _guard = self.span.clone().entered();
        if self.signalled_remote_candidates() >= self.config.max_remote_candidates {
            let ice = candidate.as_ice();
            let held = self
                .ice
                .agent()
                .remote_candidates()
                .any(|c| c.addr() == ice.addr() && c.kind() == ice.kind());
            if held {
                return true;
            }
            tracing::debug!(%candidate, "too many remote candidates: dropped");
            return false;
        }
        tracing::debug!(%candidate, "adding remote candidate");
        self.ice
            .seeded()
            .add_remote_candidate(candidate.as_ice().clone());
        if !self.ice.agent().state().is_connected() {
            self.timers.set(Timer::IceSetup, now + self.setup_timeout());
        }
        self.mark_active(now);
        true
    }

    /// How long ICE may look for a path from a new remote candidate on. An established
    /// connection that lost its paths waits at least as long as it may stay disconnected
    /// ([`Connection::migration_grace`]): on the gateway, the candidates that woke it (an idle
    /// client's new address) come before the client's next check, which is what brings the
    /// path back.
    fn setup_timeout(&self) -> Duration {
        if self.established {
            self.config.ice_setup_timeout.max(self.migration_grace())
        } else {
            self.config.ice_setup_timeout
        }
    }

    /// How long ICE may stay disconnected before the connection fails: longer on the gateway
    /// (see [`CONTROLLED_MIGRATION_GRACE`]).
    fn migration_grace(&self) -> Duration {
        match self.role {
            Role::Client => self.config.migration_grace,
            Role::Gateway => self.config.controlled_migration_grace,
        }
    }

    /// How many signalled remote candidates it holds (the cap of [`Self::add_remote_candidate`]).
    pub(crate) fn signalled_remote_candidates(&self) -> usize {
        self.ice
            .agent()
            .remote_candidates()
            .filter(|c| c.kind() != is::CandidateKind::PeerReflexive)
            .count()
    }

    pub(crate) fn remove_remote_candidate(&mut self, candidate: &IceCandidate, now: Instant) {
        let _guard = self.span.clone().entered();
        if self.ice.seeded().invalidate_candidate(candidate.as_ice()) {
            tracing::debug!(%candidate, "invalidated remote candidate");
        }
        self.ice.agent_mut().handle_timeout(now);
    }

    /// Stops using the peer's relayed candidates on `ip`, a relay that is gone.
    pub(crate) fn remove_remote_relayed_on(&mut self, ip: IpAddr, now: Instant) {
        self.remove_remote_relayed_where(|addr| addr.ip() == ip, now);
    }

    /// Stops using the peer's relayed candidate at `addr`, an allocation that is gone; whether
    /// it had one.
    pub(crate) fn remove_remote_relayed_at(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.remove_remote_relayed_where(|a| a == addr, now)
    }

    fn remove_remote_relayed_where(
        &mut self,
        gone: impl Fn(SocketAddr) -> bool,
        now: Instant,
    ) -> bool {
        let on_relay: Vec<is::Candidate> = self
            .ice
            .agent()
            .remote_candidates()
            .filter(|c| c.kind() == is::CandidateKind::Relayed && gone(c.addr()))
            .collect();
        let any = !on_relay.is_empty();
        for candidate in on_relay {
            self.remove_remote_candidate(&IceCandidate::from(candidate), now);
        }
        any
    }

    /// An upsert with unchanged parameters: wake up, re-announce, and roll over to a fresh
    /// WireGuard session unless one was rolled over recently.
    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let _guard = self.span.clone().entered();
        self.wake(now);
        for candidate in self.local_candidates() {
            self.events
                .push_back(ConnEvent::NewLocalCandidate(candidate));
        }
        // Only the client rolls over: the portal upserts both ends at once, and two handshake
        // initiations crossing each other leave neither side with the session the other uses.
        let (Some(path), Role::Client) = (self.path, self.role) else {
            return;
        };
        if self
            .last_rollover
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.rollover_debounce)
        {
            tracing::debug!("roll-over debounced");
            return;
        }
        self.last_rollover = Some(now);
        if let Some(waking) = &mut self.waking {
            // The peer may have lost our session (that is why the portal upserted): the
            // initiation goes once the path is proven, and the held packets after the new
            // session, not into the old one.
            tracing::debug!("rolling over to a fresh WireGuard session once the path answers");
            waking.want_new_session();
            return;
        }
        tracing::debug!("rolling over to a fresh WireGuard session");
        self.initiate_handshake(path, now, pool, transmits);
    }

    fn mark_active(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
        self.timers
            .set(Timer::Idle, self.last_activity + self.config.idle_after);
        if self.idle {
            self.idle = false;
            self.unproven_since = Some(now);
            self.apply_stun_timing();
            // The idle tick may be up to a second away; a handshake this activity starts is
            // retried on the active one.
            self.timers.set(Timer::WireGuardTick, now);
            tracing::debug!(parent: &self.span, "connection active again");
        }
    }

    /// ICE's check timing for what the connection is doing. While data flows on a nominated
    /// path, checks go every `active_stun_interval` and a pair fails after
    /// `active_stun_retransmits` unanswered ones, so a dead path is left within seconds; before a
    /// path exists every pair gets `is`' full count (hole punching waits for the peer's checks);
    /// an idle connection checks every `idle_stun_interval`.
    fn apply_stun_timing(&mut self) {
        let (interval, retransmits, peer_request_window) = if self.idle {
            let interval = self.config.idle_stun_interval;
            (interval, SETUP_STUN_RETRANSMITS, SETUP_PEER_REQUEST_WINDOW)
        } else if self.path.is_some() {
            // Our peer answers every check, so its requests arriving while ours go unanswered
            // mean a one-way path: it may keep the pair only as long as one check interval.
            let interval = self.config.active_stun_interval;
            (interval, self.config.active_stun_retransmits, interval * 2)
        } else {
            let interval = self.config.active_stun_interval;
            (interval, SETUP_STUN_RETRANSMITS, SETUP_PEER_REQUEST_WINDOW)
        };
        let agent = self.ice.agent_mut();
        agent.set_max_stun_rto(interval);
        // The retransmission count stays `is`' own: it also sizes each pair's history of
        // checks, whose length sets the keep-alive interval (a short one would make an idle
        // connection's keep-alives ramp up to the idle interval instead of starting there).
        agent.set_unanswered_to_fail(retransmits);
        agent.set_recent_binding_request(peer_request_window);
        // The pairs below the nominated one are fallbacks: checked every idle interval while
        // data flows and not at all while idle (a wake checks them again, as they are overdue),
        // and at the full rate once the nominated pair stops answering. At the full rate, from
        // both peers, they were most of what a connection sent.
        agent.set_backup_checks(if self.idle {
            BackupChecks::WhenNominatedUnanswered
        } else {
            BackupChecks::Every(self.config.idle_stun_interval)
        });
    }

    /// The route for WireGuard packets: the nominated path, or, before ICE has nominated one
    /// on the controlled side, where the peer's last authenticated packet came from.
    fn route(&self) -> Option<Path> {
        self.path.or(self
            .peer_data
            .map(|(local, remote, _)| self.path_from(local, remote)))
    }

    fn path_from(&self, local: SocketAddr, remote: SocketAddr) -> Path {
        Path {
            local,
            remote,
            relay: self.relayed.get(&local).copied(),
        }
    }

    /// Encrypts `packet` for the peer; with `defer`, a data packet comes out unsealed, its
    /// [`Seal`] on the transmit.
    pub(crate) fn encapsulate(
        &mut self,
        packet: &[u8],
        now: Instant,
        pool: &BufferPool,
        defer: bool,
    ) -> Result<Option<Transmit>, Error> {
        self.wake(now);
        if let Some(waking) = &mut self.waking {
            if waking.hold(packet, pool, defer) {
                return Ok(None);
            }
        }
        self.seal_for_path(packet, now, pool, defer)
    }

    /// The connection is about to send. If its path is in doubt (it was idle, its nominated
    /// pair's last checks went unanswered, or ICE has no working pair left and may be checking
    /// new ones), its packets are held from now until a path is proven (see `wake.rs`); an idle
    /// path is checked at once.
    ///
    /// A path the peer's data came over within the last check interval is proven as a check
    /// answered then would be. It matters for the gateway, which follows a client whose NAT
    /// rebound to where its packets come from: its own ICE pair still points at the old
    /// mapping, and its checks there go unanswered for good. Held, the answer to the packet
    /// that just arrived would wait for a proof that never comes, until [`WAKE_HOLD`] ends.
    fn wake(&mut self, now: Instant) {
        let (idle, silent) = (self.idle, self.path_silent);
        let lost = !self.ice.agent().state().is_connected();
        let unproven = self.unproven_since.is_some_and(|since| {
            let answered = self.ice.agent().nominated_pair_last_response();
            answered.is_none_or(|at| at < since)
        });
        if !unproven {
            self.unproven_since = None;
        }
        let proven = self.peer_data.is_some_and(|(local, remote, at)| {
            Some(self.path_from(local, remote)) == self.route()
                && now < at + self.config.active_stun_interval
        });
        let doubt = (idle || unproven || lost || silent) && !proven;
        let (true, None, Some(path)) = (self.established && doubt, &self.waking, self.path) else {
            self.mark_active(now);
            return;
        };
        let deadline = now + self.config.wake_hold;
        tracing::debug!(parent: &self.span, remote = %path.remote, idle, unproven, lost, silent, "path in doubt: packets wait until one answers");
        self.waking = Some(Waking::new(path, now, deadline));
        self.ice
            .agent_mut()
            .set_unanswered_to_switch(Some(UNANSWERED_IN_DOUBT_WAKING));
        self.timers.set(Timer::Wake, deadline);
        // After the active timing is applied, which resets when each pair is checked next.
        self.mark_active(now);
        if idle || unproven {
            self.ice.agent_mut().check_nominated_now(now);
        }
    }

    /// Encrypts `packet` for the current route (see [`Connection::encapsulate`]).
    fn seal_for_path(
        &mut self,
        packet: &[u8],
        now: Instant,
        pool: &BufferPool,
        defer: bool,
    ) -> Result<Option<Transmit>, Error> {
        let mut buf = pool.pull();
        let Some(path) = self.route() else {
            // boringtun queues the packet until a session exists; the handshake initiation it
            // returns has nowhere to go yet and is sent again once ICE nominates a path.
            let _ = self.tunnel.encapsulate(now, packet, buf.storage_mut());
            return Ok(None);
        };
        let header = path.header_len();
        let dst = &mut buf.storage_mut()[header..];
        let result = if defer {
            self.tunnel.encapsulate_deferred(now, packet, dst)
        } else {
            self.tunnel.encapsulate(now, packet, dst)
        };
        match result {
            Output::Seal(sealing, range) => {
                let at = header + range.start..header + range.end;
                buf.set_range(at.clone());
                Ok(Some(Transmit {
                    src: Some(path.local),
                    dst: path.remote,
                    payload: buf,
                    via: path.relay,
                    seal: Some(Seal { sealing, at }),
                }))
            }
            Output::Network(range) => {
                buf.set_range(header + range.start..header + range.end);
                self.note_sent(&buf, now);
                Ok(Some(Transmit {
                    src: Some(path.local),
                    dst: path.remote,
                    payload: buf,
                    via: path.relay,
                    seal: None,
                }))
            }
            Output::Err(e) => Err(Error::WireGuard(e)),
            Output::Done | Output::Tunnel(_) | Output::Open(..) => Ok(None),
        }
    }

    /// Decrypts one WireGuard datagram; handshake messages produce transmits, data produces
    /// the inner IP packet's bytes, or with `defer` the ciphertext to open and hand to
    /// [`Connection::finish_open`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decapsulate(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
        defer: bool,
    ) -> Result<Inbound, Error> {
        let mut buf = pool.pull();
        // Answers go back where the message came from: that is the path the peer is using.
        let reply_path = self.path_from(local, from);
        // Room for a TURN header in front of an answer, or for the device's header in front
        // of a decrypted packet.
        let header = reply_path.header_len().max(DEVICE_HEADROOM);
        let dst = &mut buf.storage_mut()[header..];
        let result = if defer {
            self.tunnel
                .decapsulate_deferred(now, from.ip(), datagram, dst)
        } else {
            self.tunnel.decapsulate(now, from.ip(), datagram, dst)
        };
        self.rearm_idle_wireguard(now);
        let out = match result {
            Output::Open(opening, range) => {
                buf.set_range(header + range.start..header + range.end);
                // Nothing is known of the packet until it is opened.
                return Ok(Inbound::Open(opening, buf));
            }
            Output::Network(range) => {
                buf.set_range(header + range.start..header + range.end);
                transmits.push_back(Transmit {
                    src: Some(local),
                    dst: from,
                    payload: buf,
                    via: reply_path.relay,
                    seal: None,
                });
                if self.waking.is_some() {
                    // Perhaps the session the held packets wait for.
                    self.timers.set(Timer::Wake, now);
                }
                self.flush_queued(from, local, now, pool, transmits);
                Inbound::Nothing
            }
            Output::Tunnel(range) => {
                buf.set_range(header + range.start..header + range.end);
                self.accept_data(reply_path, now);
                Inbound::Packet(buf)
            }
            Output::Done | Output::Seal(..) => Inbound::Nothing,
            Output::Err(e) => return Err(Error::WireGuard(e)),
        };
        self.check_established(now);
        Ok(out)
    }

    /// Finishes a data packet [`Connection::decapsulate`] left to open: `buf` holds what
    /// `opened` says of it. Returns the inner IP packet, if it carried one.
    pub(crate) fn finish_open(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        opening: &Opening,
        opened: Result<usize, WireGuardError>,
        mut buf: Buffer,
        now: Instant,
    ) -> Result<Option<Buffer>, Error> {
        let start = buf.headroom();
        let result = self.tunnel.finish_open(now, opening, opened, &mut buf);
        let out = match result {
            Output::Tunnel(range) => {
                buf.set_range(start + range.start..start + range.end);
                self.accept_data(self.path_from(local, from), now);
                Some(buf)
            }
            Output::Err(e) => return Err(Error::WireGuard(e)),
            Output::Network(_) | Output::Seal(..) | Output::Open(..) | Output::Done => None,
        };
        self.check_established(now);
        Ok(out)
    }

    /// An authenticated data packet arrived over `reply_path`.
    fn accept_data(&mut self, reply_path: Path, now: Instant) {
        if let Some(waking) = &mut self.waking {
            waking.note_peer_packet(reply_path);
            // Sent on the next timeout, where there is a transmit queue.
            self.timers.set(Timer::Wake, now);
        }
        self.peer_data = Some((reply_path.local, reply_path.remote, now));
        self.follow_peer(reply_path, now);
        self.mark_active(now);
    }

    /// Where the peer's authenticated packets come from, when that is not where we send.
    ///
    /// The gateway answers there, as WireGuard does: a client whose NAT gave it a new public
    /// address (a flushed or expired mapping, a roam) keeps its nominated pair, so the
    /// gateway's ICE agent sees no new nomination and its own pair points at a mapping that no
    /// longer exists.
    ///
    /// The client, controlling, does not jump: if both sides followed each other, two NATs that
    /// map per destination port would hand out a new port on every turn. It gives the address
    /// to ICE as a remote candidate instead, above every signalled one, so that the agent
    /// checks it and nominates it once it works: the gateway's answers from its new mapping
    /// keep that mapping alive, while the one the client sends to may be refreshed by nothing
    /// any more.
    fn follow_peer(&mut self, reply_path: Path, now: Instant) {
        let Some(path) = self.path else {
            return;
        };
        if path == reply_path {
            return;
        }
        match self.role {
            Role::Gateway => {
                tracing::info!(
                    old = %path.remote,
                    new = %reply_path.remote,
                    "peer's authenticated packets come from a new address: following"
                );
                self.path = Some(reply_path);
            }
            Role::Client => {
                // Only a direct path has an address of the peer's to learn. Packets the peer
                // sends from its relayed candidate come from its relay: learnt above every
                // signalled candidate, that address would keep the connection on the relay
                // for good, whatever direct pair works.
                if reply_path.relay.is_some()
                    || self.ice.remote_candidate_kind(reply_path.remote)
                        == Some(CandidateKind::Relayed)
                    || self
                        .learned_remote
                        .as_ref()
                        .is_some_and(|c| c.addr() == reply_path.remote)
                {
                    return;
                }
                let candidate = is::Candidate::from_parts(
                    "learned".to_owned(),
                    1,
                    is::Protocol::Udp,
                    LEARNED_PRIORITY,
                    reply_path.remote,
                    is::CandidateKind::PeerReflexive,
                    None,
                    None,
                    None,
                );
                tracing::info!(
                    nominated = %path.remote,
                    learned = %reply_path.remote,
                    "peer's authenticated packets come from a new address: checking it"
                );
                if let Some(old) = self.learned_remote.replace(candidate.clone()) {
                    self.ice.seeded().invalidate_candidate(&old);
                }
                self.ice.seeded().add_remote_candidate(candidate);
                self.ice.agent_mut().handle_timeout(now);
            }
        }
    }

    /// After a handshake boringtun releases the packets it queued, one call at a time.
    fn flush_queued(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let path = self.path.unwrap_or(self.path_from(local, from));
        loop {
            let mut buf = pool.pull();
            let header = path.header_len();
            let result =
                self.tunnel
                    .decapsulate(now, from.ip(), &[], &mut buf.storage_mut()[header..]);
            match self.network_result(result, buf, header, path, now) {
                Some(t) => transmits.push_back(t),
                None => break,
            }
        }
    }

    /// Remembers when the current run of unanswered handshake initiations began.
    fn note_sent(&mut self, datagram: &[u8], now: Instant) {
        if datagram.first() == Some(&HANDSHAKE_INITIATION) {
            self.handshakes_initiated += 1;
            if self.rekey_since.is_none() {
                self.rekey_since = Some(now);
            }
        }
    }

    /// The addresses of the relayed candidates ICE holds, ours and the peer's.
    pub(crate) fn relayed_candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let agent = self.ice.agent();
        let relayed = |c: is::Candidate| (c.kind() == is::CandidateKind::Relayed).then(|| c.addr());
        agent
            .local_candidates()
            .filter_map(relayed)
            .chain(agent.remote_candidates().filter_map(relayed))
    }

    /// Handshake initiations this connection has sent.
    pub(crate) fn handshakes_initiated(&self) -> u64 {
        self.handshakes_initiated
    }

    /// An established connection whose handshakes go unanswered fails after the same deadline
    /// as a new one. boringtun itself would keep trying for 90 s and then log an error; the peer
    /// is gone by then (restarted, or its path is), and the caller should set up anew.
    fn check_rekey(&mut self, now: Instant) {
        let Some(since) = self.rekey_since else {
            return;
        };
        if self.handshake_completed_since(since, now) {
            self.rekey_since = None;
        } else if self.established
            && now.saturating_duration_since(since) >= self.config.handshake_deadline
        {
            self.fail(FailReason::HandshakeTimeout);
        }
    }

    /// Whether a WireGuard handshake completed at or after `since`.
    fn handshake_completed_since(&mut self, since: Instant, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(since);
        // boringtun stamps a session with the time it completed (patched: upstream stamps the
        // last timer tick), however long ago the last tick was.
        self.tunnel
            .time_since_last_handshake(now)
            .is_some_and(|age| age <= elapsed)
    }

    fn check_established(&mut self, now: Instant) {
        if !self.established && self.tunnel.has_session(now) {
            self.established = true;
            self.timers.stop(Timer::Handshake);
            tracing::info!(parent: &self.span, "WireGuard session established");
            self.events.push_back(ConnEvent::Established);
        }
    }

    /// Handles a STUN message that this connection's ICE agent accepts.
    pub(crate) fn handle_stun(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        message: StunMessage<'_>,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) -> bool {
        let _guard = self.span.clone().entered();
        let via_relay = self.relayed.contains_key(&local);
        if message.is_binding_request() && self.too_many_peer_reflexive(from, via_relay) {
            // Two address-and-port-dependent NATs feed each other: every check from a new
            // mapping teaches the other side a new peer-reflexive address, whose triggered
            // check opens yet another mapping. Past a handful, new ones are not learned.
            // Checks a relay delivered are counted apart: they cannot feed such a loop (our
            // answers and checks leave from the relay's one address), and a peer whose NAT
            // forgot its mappings reaches us through a relay from an address that is new,
            // while the direct ones may have filled their count long before.
            tracing::debug!(%from, via_relay, "check from yet another unknown address: ignored");
            return true;
        }
        let learned_via_relay =
            via_relay && message.is_binding_request() && !self.ice.has_remote_candidate(from);
        let accepted = self.ice.seeded().handle_packet(
            now,
            StunPacket {
                proto: is::Protocol::Udp,
                source: from,
                destination: local,
                message,
            },
        );
        if learned_via_relay && self.ice.has_remote_candidate(from) {
            let ice = &self.ice;
            self.relayed_peer_reflexive
                .retain(|addr| ice.has_remote_candidate(*addr));
            self.relayed_peer_reflexive.insert(from);
        }
        // `is` only re-evaluates its state (and nominates, on the controlled side) inside
        // handle_timeout; without this the connection would come up a timer period late.
        self.ice.agent_mut().handle_timeout(now);
        self.drain_ice(now, pool, transmits);
        self.release_held(now, pool, transmits);
        accepted
    }

    fn too_many_peer_reflexive(&self, from: SocketAddr, via_relay: bool) -> bool {
        self.ice.too_many_peer_reflexive(
            from,
            via_relay,
            &self.relayed_peer_reflexive,
            self.config.max_peer_reflexive,
        )
    }

    pub(crate) fn accepts(&self, message: &StunMessage<'_>) -> bool {
        self.ice.agent().accepts_message(message)
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<(Instant, &'static str)> {
        let mut earliest = self.ice.agent_mut().poll_timeout().map(|t| (t, "ice"));
        for timer in Timer::ALL {
            if let Some(t) = self.armed(timer) {
                if earliest.is_none_or(|(e, _)| t < e) {
                    earliest = Some((t, timer.reason()));
                }
            }
        }
        earliest
    }

    /// The deadline of `timer` as it counts now: going idle is measured only while ICE is
    /// connected (a connection still looking for a path is not idle, it is being set up).
    fn armed(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::Idle if !self.ice.agent().state().is_connected() => None,
            // An idle connection costs a relay nothing, and one woken up checks at once.
            Timer::BetterPath if self.idle || !self.path_is_relayed() => None,
            Timer::WireGuardTick
            | Timer::MigrationGrace
            | Timer::IceSetup
            | Timer::Handshake
            | Timer::Idle
            | Timer::Wake
            | Timer::BetterPath => self.timers.get(timer),
        }
    }

    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let _guard = self.span.clone().entered();
        // boringtun first, then ICE on every call (the agent keeps its own deadlines), then
        // the connection's own timers, each judged after what came before it changed state.
        for timer in Timer::ALL {
            if self.armed(timer).is_some_and(|t| now >= t) {
                self.on_timer(timer, now, pool, transmits);
            }
            if timer == Timer::WireGuardTick {
                self.ice.seeded().handle_timeout(now);
                self.drain_ice(now, pool, transmits);
                self.release_held(now, pool, transmits);
            }
        }
    }

    /// The packets held while the path was in doubt, if it is still waiting for one.
    pub(crate) fn take_held(&mut self) -> Vec<Buffer> {
        self.end_waking()
            .map(|w| w.into_held().into())
            .unwrap_or_default()
    }

    /// The wake that holds packets, if any, ended: its timer stops and ICE's steady-state
    /// switching threshold is back.
    fn end_waking(&mut self) -> Option<Waking> {
        let waking = self.waking.take()?;
        self.unproven_since = None;
        self.timers.stop(Timer::Wake);
        self.ice
            .agent_mut()
            .set_unanswered_to_switch(Some(UNANSWERED_IN_DOUBT));
        Some(waking)
    }

    /// Sends the packets held while the path was in doubt once a path is proven or the hold
    /// is over; a newly nominated pair is checked first.
    fn release_held(
        &mut self,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let in_doubt = match self.path.and_then(|p| p.relay) {
            Some(_) => UNANSWERED_IN_DOUBT_OWN_RELAY,
            None => UNANSWERED_IN_DOUBT,
        };
        let unanswered = self.ice.agent().nominated_pair_unanswered().map(|(n, _)| n);
        self.path_silent = unanswered.is_some_and(|n| n >= in_doubt);
        // Called on every timer and STUN message: the rest is only for held packets.
        if self.waking.is_none() {
            return;
        }
        let agent = self.ice.agent();
        let last_response = agent.nominated_pair_last_response();
        let connected = agent.state().is_connected();
        let path = self.path;
        if unanswered.is_some_and(|n| n >= UNANSWERED_TO_RESIGNAL)
            && self.waking.as_mut().is_some_and(Waking::resignal_once)
        {
            let candidates = self.ice.local_candidates();
            tracing::debug!(parent: &self.span, candidates = candidates.len(), "path unanswered: our candidates go to the peer again");
            self.events
                .extend(candidates.into_iter().map(ConnEvent::NewLocalCandidate));
        }
        let Some(waking) = &mut self.waking else {
            return;
        };
        let verdict = waking.judge(path, last_response, connected, now);
        let deadline = waking.deadline();
        let release = match verdict {
            Verdict::Wait => false,
            Verdict::Recheck => {
                self.ice.agent_mut().check_nominated_now(now);
                false
            }
            Verdict::Handshake => {
                if let Some(path) = path {
                    self.initiate_handshake(path, now, pool, transmits);
                }
                false
            }
            Verdict::Session(since) => self.handshake_completed_since(since, now),
            Verdict::Proven | Verdict::Deadline => true,
        };
        if !release {
            // A due timer (a packet of the peer's may have set it to now) is due again only at
            // the deadline; past it, without a working pair, ICE's own timers decide.
            if self.timers.get(Timer::Wake).is_some_and(|t| now >= t) {
                if now < deadline {
                    self.timers.set(Timer::Wake, deadline);
                } else {
                    self.timers.stop(Timer::Wake);
                }
            }
            return;
        }
        let Some(waking) = self.end_waking() else {
            return;
        };
        let defer = waking.defer;
        let held = waking.into_held();
        tracing::debug!(parent: &self.span, ?verdict, packets = held.len(), "sending the held packets");
        for packet in held {
            match self.seal_for_path(&packet, now, pool, defer) {
                Ok(Some(t)) => transmits.push_back(t),
                Ok(None) => {}
                Err(error) => tracing::debug!(parent: &self.span, %error, "held packet"),
            }
        }
    }

    fn on_timer(
        &mut self,
        timer: Timer,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        match timer {
            Timer::WireGuardTick => {
                self.update_wireguard_timers(now, pool, transmits);
                let next = now + self.config.wireguard_tick;
                match self.idle.then(|| self.idle_wireguard_due(now)) {
                    None => self.timers.set(Timer::WireGuardTick, next),
                    Some(Some(due)) => self.timers.set(Timer::WireGuardTick, due.max(next)),
                    Some(None) => self.timers.stop(Timer::WireGuardTick),
                }
            }
            Timer::MigrationGrace => self.fail(FailReason::IceDisconnected),
            Timer::IceSetup => self.fail(FailReason::IceTimeout),
            Timer::Handshake => {
                self.check_established(now);
                if !self.established {
                    self.fail(FailReason::HandshakeTimeout);
                }
            }
            // `handle_timeout` releases what is due right after the tick.
            Timer::Wake => {}
            Timer::BetterPath => {
                self.timers
                    .set(Timer::BetterPath, now + self.config.better_path_retry);
                let formed = self.ice.agent_mut().retry_better_pairs();
                if formed > 0 {
                    tracing::debug!(
                        pairs = formed,
                        "checking better pairs than the relayed path again"
                    );
                }
            }
            Timer::Idle => {
                self.idle = true;
                self.timers.stop(Timer::Idle);
                self.apply_stun_timing();
                tracing::debug!("connection idle");
                self.events.push_back(ConnEvent::Idle);
            }
        }
    }

    fn update_wireguard_timers(
        &mut self,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let mut buf = pool.pull();
        let route = self.route();
        let header = route.map_or(0, |p| p.header_len());
        let result = self
            .tunnel
            .update_timers(now, &mut buf.storage_mut()[header..]);
        match result {
            Output::Err(WireGuardError::ConnectionExpired) => {
                // An idle tunnel's keys age out after 9 minutes; WireGuard then handshakes again
                // with the next packet, so the connection itself stays.
                tracing::debug!("WireGuard session expired; the next packet starts a handshake");
            }
            Output::Err(e) => tracing::debug!(error = ?e, "WireGuard timers"),
            result @ (Output::Network(_)
            | Output::Tunnel(_)
            | Output::Seal(..)
            | Output::Open(..)
            | Output::Done) => {
                if let Some(path) = route {
                    if let Some(t) = self.network_result(result, buf, header, path, now) {
                        transmits.push_back(t);
                    }
                }
            }
        }
        self.check_established(now);
        self.check_rekey(now);
        self.check_session_age(now, pool, transmits);
    }

    /// When an idle connection must next drive its WireGuard timers: when boringtun's may act
    /// ([`Tunnel::timers_due`]), a handshake's deadline passes, or its session is due for renewal
    /// or too old (see `check_session_age`). Waking at these moments only, instead of every
    /// tick, is what lets a node with idle connections sleep for seconds at a time.
    fn idle_wireguard_due(&mut self, now: Instant) -> Option<Instant> {
        let rekey = self
            .rekey_since
            .map(|since| since + self.config.handshake_deadline);
        // Only the client renews, and not while a renewal is under way (its handshake's own
        // deadline is the one above): a moment that passed without acting would be due again
        // at every tick.
        let renews = matches!(self.role, Role::Client) && self.rekey_since.is_none();
        let session = self.tunnel.session_age(now).and_then(|age| {
            let since = now.checked_sub(age)?;
            Some(if renews {
                since + self.config.idle_rekey
            } else {
                since + self.config.session_give_up
            })
        });
        [self.tunnel.timers_due(), rekey, session]
            .into_iter()
            .flatten()
            .min()
    }

    /// A packet or a handshake of ours moved boringtun's timers while the connection is idle:
    /// one may now be due sooner than the tick armed before.
    fn rearm_idle_wireguard(&mut self, now: Instant) {
        if !self.idle {
            return;
        }
        let Some(due) = self.idle_wireguard_due(now) else {
            return;
        };
        let at = due.max(now);
        if self
            .timers
            .get(Timer::WireGuardTick)
            .is_none_or(|armed| at < armed)
        {
            self.timers.set(Timer::WireGuardTick, at);
        }
    }

    /// WireGuard renews keys only when data flows, and boringtun drops (and logs as an error)
    /// a session that reached 540 s. An idle connection is expected, so the client renews the
    /// session well before that, and a side whose session still gets that old has a peer that
    /// stopped renewing it: the connection fails instead, and is set up anew when needed.
    fn check_session_age(
        &mut self,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        if !self.established {
            return;
        }
        let Some(age) = self.tunnel.session_age(now) else {
            return;
        };
        if age >= self.config.session_give_up {
            self.fail(FailReason::SessionExpired);
            return;
        }
        let (Role::Client, Some(path), None) = (self.role, self.route(), self.rekey_since) else {
            return;
        };
        if age >= self.config.idle_rekey {
            tracing::debug!(?age, "renewing an idle session");
            self.initiate_handshake(path, now, pool, transmits);
        }
    }

    /// Turns a boringtun result that should go to the network into a transmit on `path`.
    fn network_result(
        &mut self,
        result: Output,
        mut buf: Buffer,
        header: usize,
        path: Path,
        now: Instant,
    ) -> Option<Transmit> {
        self.rearm_idle_wireguard(now);
        match result {
            Output::Network(range) => {
                buf.set_range(header + range.start..header + range.end);
                self.note_sent(&buf, now);
                if let Some(idx) = handshake_sender_index(&buf) {
                    tracing::debug!(local_idx = %SessionIdx(idx), remote = %path.remote, "sending WireGuard handshake");
                }
                Some(Transmit {
                    src: Some(path.local),
                    dst: path.remote,
                    payload: buf,
                    via: path.relay,
                    seal: None,
                })
            }
            Output::Err(e) => {
                tracing::debug!(error = ?e, "WireGuard");
                None
            }
            // Timers and flushes never defer.
            Output::Done | Output::Tunnel(_) | Output::Seal(..) | Output::Open(..) => None,
        }
    }

    fn drain_ice(&mut self, now: Instant, pool: &BufferPool, transmits: &mut VecDeque<Transmit>) {
        while let Some(t) = self.ice.agent_mut().poll_transmit() {
            let contents: &[u8] = &t.contents;
            if let Some(id) = binding_request_id(contents) {
                self.sent_requests.push((now, id, t.destination));
            }
            let path = self.path_from(t.source, t.destination);
            let header = path.header_len();
            let mut buf = pool.pull();
            let len = contents.len();
            buf.storage_mut()[header..header + len].copy_from_slice(contents);
            buf.set_range(header..header + len);
            transmits.push_back(Transmit {
                src: Some(t.source),
                dst: t.destination,
                payload: buf,
                via: path.relay,
                seal: None,
            });
        }
        while let Some(event) = self.ice.agent_mut().poll_event() {
            match event {
                IceAgentEvent::IceConnectionStateChange(state) => {
                    self.on_ice_state(state, now);
                }
                IceAgentEvent::NominatedSend {
                    source,
                    destination,
                    ..
                } => {
                    // Applied even while idle: the old path may be dead.
                    self.on_nominated(self.path_from(source, destination), now, pool, transmits);
                }
                IceAgentEvent::DiscoveredRecv { .. } | IceAgentEvent::IceRestart(_) => {}
            }
        }
    }

    fn on_ice_state(&mut self, state: IceConnectionState, now: Instant) {
        tracing::debug!(?state, "ICE state");
        match state {
            IceConnectionState::Connected | IceConnectionState::Completed => {
                self.timers.stop(Timer::IceSetup);
                self.timers.stop(Timer::MigrationGrace);
                if self.ice_connected_at.is_none() {
                    self.ice_connected_at = Some(now);
                    if !self.established {
                        self.timers
                            .set(Timer::Handshake, now + self.config.handshake_deadline);
                    }
                }
            }
            IceConnectionState::Disconnected => {
                self.timers
                    .set_if_unset(Timer::MigrationGrace, now + self.migration_grace());
            }
            // New candidates revived the checks; the setup deadline bounds them from here.
            IceConnectionState::New | IceConnectionState::Checking => {
                self.timers.stop(Timer::MigrationGrace);
            }
        }
    }

    fn on_nominated(
        &mut self,
        path: Path,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        if self.path == Some(path) {
            return;
        }
        tracing::info!(local = %path.local, remote = %path.remote, "path nominated");
        self.path = Some(path);
        self.apply_stun_timing();
        // The controlling side starts WireGuard as soon as there is a path; `force` resends an
        // initiation that boringtun produced earlier, when there was nowhere to send it.
        if self.role == Role::Client && !self.established {
            self.initiate_handshake(path, now, pool, transmits);
        }
    }

    /// Sends a handshake initiation on `path`, a new one even if boringtun has one in flight.
    fn initiate_handshake(
        &mut self,
        path: Path,
        now: Instant,
        pool: &BufferPool,
        transmits: &mut VecDeque<Transmit>,
    ) {
        let mut buf = pool.pull();
        let header = path.header_len();
        let result = self
            .tunnel
            .handshake_initiation(now, &mut buf.storage_mut()[header..], true);
        if let Some(t) = self.network_result(result, buf, header, path, now) {
            transmits.push_back(t);
        }
    }

    /// Fails the connection (once: later reasons are dropped); the node removes it when it
    /// sees the event. Also for a reason learned elsewhere (the portal's word on the peer).
    pub(crate) fn fail(&mut self, reason: FailReason) {
        if self
            .events
            .iter()
            .any(|e| matches!(e, ConnEvent::Failed(_)))
        {
            return;
        }
        tracing::info!(%reason, "connection failed");
        self.events.push_back(ConnEvent::Failed(reason));
    }
}

/// The transaction id of a STUN binding request (type 0x0001 behind the magic cookie).
pub(crate) fn binding_request_id(stun: &[u8]) -> Option<TransactionId> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if stun.get(0..2)? != [0x00, 0x01] || stun.get(4..8)? != MAGIC_COOKIE {
        return None;
    }
    stun.get(8..20)?.try_into().ok()
}

/// The sender index of a handshake initiation or response, for logs.
fn handshake_sender_index(packet: &[u8]) -> Option<u32> {
    match packet.first()? {
        1 | 2 => Some(u32::from_le_bytes(packet.get(4..8)?.try_into().ok()?)),
        _ => None,
    }
}
