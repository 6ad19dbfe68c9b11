//! The [`Node`]: every connection of one client or gateway, and the routing of datagrams to them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519::{PublicKey, StaticSecret};
use is::stun::StunMessage;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::candidate::IceCandidate;
use crate::connection::{
    ConnEvent, Connection, ConnectionConfig, ConnectionParams, Identity, Inbound, Path,
    TransactionId,
};
use crate::crypto::Decryption;
use crate::datagram::{classify, DatagramKind};
use crate::handshake_guard::{HandshakeGuard, Verdict};
use crate::ids::RelayId;
use crate::packet::IpPacket;
use crate::pool::{Buffer, BufferPool};
use crate::turn::{Allocation, CHANNEL_DATA_HEADER_LEN};
use crate::types::{Credentials, Psk, Role, Transmit};
use crate::wireguard::ConnIndex;
use crate::{CandidateKind, Error, Event, FailReason, PeerId, Stats};

mod relays;
mod retired;

pub use retired::RETIRED_GRACE;

use relays::FromRelay;
pub use relays::{RELAY_RETRY_INITIAL, RELAY_RETRY_MAX};

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// There was no connection to this peer.
    Created,
    /// The connection had the same key, PSK and credentials and was kept.
    Kept,
    /// Something changed, so the old connection and its tunnel were dropped.
    Replaced,
}

/// A snapshot of one connection, for callers and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The 24-bit index in this node's WireGuard session indices.
    pub index: u32,
    /// The ICE-nominated path, if any.
    pub path: Option<Path>,
    /// The kind of the peer's candidate that path sends to (with [`Path::relay`], whether the
    /// path is direct, through the NAT's public address, or through a relay).
    pub remote_kind: Option<CandidateKind>,
    /// Whether ICE currently has a working pair.
    pub ice_connected: bool,
    /// Whether a WireGuard session has been established.
    pub established: bool,
    /// Whether the connection is idle (sparse keep-alives).
    pub idle: bool,
    /// Signalled remote candidates it holds (at most [`crate::MAX_REMOTE_CANDIDATES`]).
    pub remote_candidates: usize,
    /// WireGuard handshake initiations it has sent.
    pub handshakes_initiated: u64,
    /// Which preshared key its tunnel uses ([`crate::Psk::fingerprint`]).
    pub psk_fingerprint: [u8; 8],
}

/// How many relays no longer used a node still recognises by their address (their late
/// answers are dropped as a relay's, not taken for a peer's). The portal decides how many
/// relays come and go, so this is bounded.
pub const FORMER_RELAYS_KEPT: usize = 16;

/// How long an answer to one of our binding requests is taken. ICE retries a check long
/// before (every few hundred milliseconds while checking, every 25 s at the slowest), so an
/// answer this late is of no use.
pub const STUN_ANSWER_WINDOW: Duration = Duration::from_secs(30);

/// How many of our binding requests are remembered at most, whatever their age: the bound on
/// [`STUN_ANSWER_WINDOW`]'s table when many connections check at once.
pub const MAX_STUN_REQUESTS: usize = 65_536;

/// How many idle buffers the pool keeps.
const POOL_CAPACITY: usize = 256;

/// The sans-IO core of a client or gateway: many connections to remote peers, each WireGuard over
/// a path found by ICE.
///
/// # Driving it
/// Every method that changes state takes `now`; time must never go backwards. After any call,
/// drain [`Node::poll_transmit`] and [`Node::poll_event`], then ask [`Node::poll_timeout`] when
/// to call [`Node::handle_timeout`] next. Calling `handle_timeout` early is harmless.
///
/// # Routing
/// Datagrams are routed by what they carry, never by where they come from: STUN requests by the
/// ICE username fragment, STUN responses by transaction, WireGuard handshake initiations by the
/// sender's static key, every other WireGuard message by its receiver index (`idx >> 8` is the
/// connection). Two peers behind one NAT that reuse the same public address in turn thus each
/// reach their own connection.
///
/// All randomness (keys, ICE credentials, tie-breakers, transaction ids, session indices) comes
/// from the seed given at construction.
pub struct Node<TId> {
    role: Role,
    private_key: StaticSecret,
    public_key: PublicKey,
    rng: ChaCha20Rng,
    /// boringtun's clock for this node's tunnels counts from here.
    epoch: Instant,
    /// The wall-clock time at `epoch` (see [`Node::set_wall_clock`]).
    wall_at_epoch: SystemTime,

    connections: BTreeMap<TId, Connection>,
    /// Packets a failed connection held while its path was in doubt (at most
    /// [`crate::MAX_WAKE_HELD`] each), until the caller takes them with
    /// [`Node::take_unsent`] to send on a new connection.
    unsent: BTreeMap<TId, Vec<Buffer>>,
    by_index: BTreeMap<ConnIndex, TId>,
    /// Connections just replaced by new parameters, still opening the data their peer sent on
    /// the old session (see [`retired`]); at most one per peer.
    retired: retired::Retired<TId>,
    by_key: BTreeMap<[u8; 32], TId>,
    by_ufrag: BTreeMap<String, TId>,
    /// Our outstanding binding requests and the connection that sent each. Answers are routed
    /// by it, so a flood of forged answers costs one lookup each, not a check per connection.
    /// Each with where it went: the answer must come from there.
    stun_requests: BTreeMap<TransactionId, (TId, SocketAddr)>,
    /// The same requests, oldest first, to forget them after [`STUN_ANSWER_WINDOW`].
    stun_requests_sent: VecDeque<(Instant, TransactionId)>,
    local_addrs: BTreeSet<SocketAddr>,

    allocations: BTreeMap<RelayId, Allocation>,
    /// Relays whose allocation failed (unreachable, refused), waiting to be tried again: the
    /// portal does not know a relay restarted, so the node keeps trying what it announced.
    relay_retries: BTreeMap<RelayId, relays::Retry>,
    /// The wait before the current try of a relay that failed, while it has not worked again.
    retry_delays: BTreeMap<RelayId, std::time::Duration>,
    /// When a new connection last made the relays be tried at once (see
    /// [`Node::try_relays_now`]).
    relays_tried_at: Option<Instant>,
    /// Servers of relays no longer used, newest last, at most [`FORMER_RELAYS_KEPT`]: their late
    /// answers are a relay's, not a peer's, which the port alone cannot tell (a peer's NAT may
    /// well map it to 3478).
    former_relays: VecDeque<SocketAddr>,
    /// A connection went away: the relays' channels to peers no connection uses any more are
    /// released at the next timeout.
    channels_to_release: bool,
    /// The timing of connections created from here on.
    connection_config: ConnectionConfig,

    /// What an unauthenticated handshake initiation may cost (mac1, cookies under load).
    handshake_guard: HandshakeGuard,
    pool: BufferPool,
    /// What connections produced, before relayed transmits are wrapped for their relay.
    staged: VecDeque<Transmit>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event<TId>>,
    stats: Stats,
    /// Whether data packets' AEAD is left to the runtime (see [`crate::crypto`]).
    deferred_crypto: bool,
    /// Data packets to open, at most [`MAX_PENDING_DECRYPTIONS`].
    decryptions: VecDeque<Decryption>,
}

/// Data packets waiting to be opened beyond which more are dropped: a runtime takes them after
/// every batch of datagrams it reads, so only one that stopped taking them reaches it.
pub const MAX_PENDING_DECRYPTIONS: usize = 4096;

impl<TId: PeerId> Node<TId> {
    /// A node whose static key, like everything else random, comes from `seed`.
    pub fn new(role: Role, seed: u64, now: Instant) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self::from_parts(role, StaticSecret::from(key), rng, now)
    }

    /// A node with a given static key and the 32-byte seed of its generator (ICE credentials,
    /// tie-breakers, session indices): what the binaries take from the OS's random source.
    pub fn from_secrets(
        role: Role,
        private_key: StaticSecret,
        rng_seed: [u8; 32],
        now: Instant,
    ) -> Self {
        Self::from_parts(role, private_key, ChaCha20Rng::from_seed(rng_seed), now)
    }

    /// A node with a given static key (from configuration).
    pub fn with_private_key(
        role: Role,
        private_key: StaticSecret,
        seed: u64,
        now: Instant,
    ) -> Self {
        Self::from_parts(role, private_key, ChaCha20Rng::seed_from_u64(seed), now)
    }

    fn from_parts(role: Role, private_key: StaticSecret, rng: ChaCha20Rng, now: Instant) -> Self {
        let public_key = PublicKey::from(&private_key);
        Self {
            role,
            public_key,
            private_key,
            handshake_guard: HandshakeGuard::new(&public_key, now, &mut guard_rng(&rng)),
            rng,
            epoch: now,
            wall_at_epoch: UNIX_EPOCH,
            connections: BTreeMap::new(),
            unsent: BTreeMap::new(),
            by_index: BTreeMap::new(),
            retired: retired::Retired::new(),
            by_key: BTreeMap::new(),
            by_ufrag: BTreeMap::new(),
            stun_requests: BTreeMap::new(),
            stun_requests_sent: VecDeque::new(),
            local_addrs: BTreeSet::new(),
            allocations: BTreeMap::new(),
            relay_retries: BTreeMap::new(),
            retry_delays: BTreeMap::new(),
            relays_tried_at: None,
            former_relays: VecDeque::new(),
            channels_to_release: false,
            connection_config: ConnectionConfig::default(),
            pool: BufferPool::new(POOL_CAPACITY),
            staged: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            deferred_crypto: false,
            decryptions: VecDeque::new(),
        }
    }

    /// Leaves the AEAD of data packets to the runtime (see [`crate::crypto`]): transmits come
    /// out of [`Node::poll_transmit`] to be sealed, and data packets out of
    /// [`Node::poll_decryption`] to be opened and handed to [`Node::finish_decryption`]. Off by
    /// default: everything is done in the call that receives or sends.
    pub fn set_deferred_crypto(&mut self, on: bool) {
        self.deferred_crypto = on;
    }

    /// The next data packet to open, oldest first.
    pub fn poll_decryption(&mut self) -> Option<Decryption> {
        self.decryptions.pop_front()
    }

    /// Finishes a data packet from [`Node::poll_decryption`], [run](Decryption::run) or not
    /// (then it is opened here). Returns what [`Node::decapsulate`] would have.
    pub fn finish_decryption(
        &mut self,
        mut job: Decryption,
        now: Instant,
    ) -> Result<Delivered<TId>, Error> {
        job.run();
        let from = job.from;
        let result = self.finish_decryption_inner(job, now);
        self.settle_inbound(from, result, now)
    }

    fn finish_decryption_inner(
        &mut self,
        job: Decryption,
        now: Instant,
    ) -> Result<Delivered<TId>, Error> {
        // The connection may have gone while the packet was opened.
        let id = *self
            .by_index
            .get(&job.index)
            .ok_or(Error::UnroutableWireGuard)?;
        let conn = self
            .connections
            .get_mut(&id)
            .ok_or(Error::UnroutableWireGuard)?;
        let opened = job.opened.unwrap_or(Err(WireGuardError::InvalidAeadTag));
        let inner = conn.finish_open(job.local, job.from, &job.opening, opened, job.buf, now);
        self.drain_connection_events(id);
        inner_packet(id, inner?)
    }

    /// Sets the timing of the connections created from now on (the defaults are what the
    /// binaries run; tests shorten a deadline to reach it sooner).
    pub fn set_connection_config(&mut self, config: ConnectionConfig) {
        self.connection_config = config;
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// How many sources of handshake initiations the load guard tracks (at most
    /// [`crate::MAX_HANDSHAKE_SOURCES`]).
    pub fn handshake_sources(&self) -> usize {
        self.handshake_guard.tracked_sources()
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Counters of what was dropped and why.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The buffer pool the node's packets come from; runtimes read into its buffers too.
    pub fn buffer_pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Fresh ICE credentials from this node's generator (for tests and for a portal-less setup).
    pub fn new_credentials(&mut self) -> Credentials {
        const ICE_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut s = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ICE_CHARS[self.rng.gen_range(0..ICE_CHARS.len())]))
                .collect()
        };
        Credentials {
            ufrag: s(8),
            password: s(24),
        }
    }

    /// A local address that peers may reach this node on: a host candidate for every connection.
    pub fn add_local_address(&mut self, addr: SocketAddr) {
        if !self.local_addrs.insert(addr) {
            return;
        }
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.add_local_address(addr);
                self.drain_connection_events(id);
            }
        }
    }

    /// The host's own addresses changed (the runtime heard it from the OS): `addrs` are the
    /// addresses peers may reach this node on now, as [`Node::add_local_address`] took them.
    ///
    /// Everything made from an address that is gone went with it: its host candidate, the
    /// NAT's mappings of it (so the server-reflexive candidates), and the allocations on the
    /// relays, which know this node by a 5-tuple that no longer exists. Those candidates are
    /// withdrawn from every connection (the peers are told), the new addresses become host
    /// candidates, and every relay is allocated on anew, a relay waiting for a retry included.
    /// A connection whose path used an address that is gone checks the new pairs at once.
    /// Nothing is asked of the relays for the old allocations: a request from the new 5-tuple
    /// cannot reach them, and they expire on their own.
    pub fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
        let gone: Vec<SocketAddr> = self
            .local_addrs
            .iter()
            .filter(|a| !addrs.contains(a))
            .copied()
            .collect();
        if gone.is_empty() && addrs.iter().all(|a| self.local_addrs.contains(a)) {
            return;
        }
        tracing::info!(?gone, now = ?addrs, "local addresses changed");
        for addr in gone {
            self.local_addrs.remove(&addr);
            if let Ok(candidate) = IceCandidate::host(addr) {
                self.remove_local_candidate_everywhere(&candidate, now);
            }
        }
        for &addr in addrs {
            self.add_local_address(addr);
        }
        self.reallocate_relays(now);
        self.flush_staged(now);
    }

    /// Creates the connection to `id`, keeps it if nothing changed, or replaces it.
    ///
    /// Keeping re-announces the local candidates and rolls over to a fresh WireGuard session
    /// (debounced). A changed key, PSK or ICE credentials replace the connection, tunnel and
    /// all: a tunnel whose PSK no longer matches must never be reused.
    pub fn upsert_connection(
        &mut self,
        id: TId,
        remote_key: PublicKey,
        psk: Psk,
        local_creds: Credentials,
        remote_creds: Credentials,
        now: Instant,
    ) -> Upsert {
        let identity = Identity {
            remote_key,
            psk,
            local_creds,
            remote_creds,
        };
        let outcome = match self.connections.get_mut(&id) {
            Some(conn) if conn.identity == identity => {
                conn.refresh(now, &self.pool, &mut self.staged);
                self.drain_connection_events(id);
                self.flush_staged(now);
                return Upsert::Kept;
            }
            Some(conn) => {
                let _guard = conn.span().enter();
                tracing::info!("key, PSK or ICE credentials changed: replacing the connection");
                drop(_guard);
                Upsert::Replaced
            }
            None => Upsert::Created,
        };
        self.try_relays_now(now);
        // Packets the old connection held for its path go out on the new one, after its
        // handshake; so do those of one that failed and whose packets the caller left.
        let mut held = Vec::new();
        if let Some(mut old) = self.detach(id) {
            held = old.take_held();
            if outcome == Upsert::Replaced && old.is_established() {
                self.retired.retire(id, old, now);
            }
        }
        held.extend(self.unsent.remove(&id).unwrap_or_default());

        let index = self.free_index();
        let params = ConnectionParams {
            role: self.role,
            index,
            private_key: self.private_key.clone(),
            seed: self.rng.next_u64(),
            tie_breaker: self.rng.next_u64(),
            epoch: self.epoch,
            wall: self.wall_at(now),
            span: id.span(),
            identity,
            config: self.connection_config,
        };
        let local_addrs: Vec<SocketAddr> = self.local_addrs.iter().copied().collect();
        let mut conn = Connection::new(params, &local_addrs, now);
        for (candidate, relay) in self.relay_candidates() {
            conn.add_local_candidate(candidate, relay);
        }
        {
            let _guard = conn.span().enter();
            tracing::info!(local_idx = index.get(), "new connection");
        }
        self.by_index.insert(index, id);
        self.by_key.insert(conn.identity.remote_key.to_bytes(), id);
        self.by_ufrag.insert(conn.local_ufrag().to_owned(), id);
        for packet in held {
            match conn.encapsulate(&packet, now, &self.pool, self.deferred_crypto) {
                Ok(Some(transmit)) => self.staged.push_back(transmit),
                Ok(None) => {}
                Err(error) => {
                    self.stats.wireguard_errors += 1;
                    tracing::debug!(%error, "held packet");
                }
            }
        }
        self.connections.insert(id, conn);
        self.drain_connection_events(id);
        self.flush_staged(now);
        outcome
    }

    /// The packets the connection to `id` held when it failed (see [`Connection`]'s wake
    /// hold), for the caller to send once it has a new connection; the node keeps them until
    /// then, or until the next connection to `id` is made, which sends them.
    pub fn take_unsent(&mut self, id: TId) -> Vec<Buffer> {
        self.unsent.remove(&id).unwrap_or_default()
    }

    /// Tells the node the wall-clock time `wall` at `now` (the host's clock, or the
    /// simulation's). Its tunnels' handshake timestamps (TAI64N) count from it; a peer accepts
    /// an initiation only if its timestamp is newer than the last it took for the same key, so a
    /// node that keeps its key across restarts needs a clock that does too. Without it the
    /// timestamps count from the Unix epoch.
    pub fn set_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        let since_epoch = now.saturating_duration_since(self.epoch);
        self.wall_at_epoch = wall.checked_sub(since_epoch).unwrap_or(UNIX_EPOCH);
    }

    fn wall_at(&self, now: Instant) -> SystemTime {
        let since_epoch = now.saturating_duration_since(self.epoch);
        self.wall_at_epoch
            .checked_add(since_epoch)
            .unwrap_or(self.wall_at_epoch)
    }

    fn free_index(&mut self) -> ConnIndex {
        loop {
            let candidate = self.rng.gen_range(1..=ConnIndex::MAX);
            if let Some(index) = ConnIndex::new(candidate) {
                if !self.by_index.contains_key(&index) && !self.retired.holds_index(index) {
                    return index;
                }
            }
        }
    }

    /// Fails the connection to `id` at once, as if it had failed by itself: a
    /// [`Event::ConnectionFailed`] with `reason`, and what it held for its path goes to
    /// [`Node::take_unsent`]. Returns whether there was one.
    pub fn fail_connection(&mut self, id: TId, reason: FailReason) -> bool {
        let Some(conn) = self.connections.get_mut(&id) else {
            return false;
        };
        conn.fail(reason);
        self.drain_connection_events(id);
        true
    }

    /// Drops the connection to `id` and its tunnel. Returns whether there was one.
    pub fn remove_connection(&mut self, id: TId) -> bool {
        self.retired.remove(id);
        self.detach(id).is_some()
    }

    /// Removes the connection to `id` from every index and returns it.
    fn detach(&mut self, id: TId) -> Option<Connection> {
        let conn = self.connections.remove(&id)?;
        self.by_index.remove(&conn.index);
        self.channels_to_release = true;
        if self.by_key.get(&conn.identity.remote_key.to_bytes()) == Some(&id) {
            self.by_key.remove(&conn.identity.remote_key.to_bytes());
        }
        if self.by_ufrag.get(conn.local_ufrag()) == Some(&id) {
            self.by_ufrag.remove(conn.local_ufrag());
        }
        Some(conn)
    }

    /// Adds one signalled remote candidate; a malformed one is logged and ignored.
    pub fn add_remote_candidate(&mut self, id: TId, candidate: &str, now: Instant) {
        self.add_remote_candidates(id, [candidate], now);
    }

    /// Adds signalled remote candidates, host candidates first; malformed ones are skipped.
    pub fn add_remote_candidates<'a>(
        &mut self,
        id: TId,
        candidates: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) {
        let Some(conn) = self.connections.get_mut(&id) else {
            tracing::debug!(peer = %id, "candidate for unknown connection");
            return;
        };
        let mut candidates = IceCandidate::parse_list(candidates);
        let before = candidates.len();
        candidates.retain(|candidate| conn.add_remote_candidate(candidate, now));
        self.stats.remote_candidates_dropped += (before - candidates.len()) as u64;
        self.drain_connection_events(id);
        // Permissions and channels on our relays, before the first check needs them.
        for candidate in &candidates {
            self.bind_channels_to(candidate.addr(), now);
        }
        self.flush_staged(now);
    }

    /// Invalidates a remote candidate, e.g. of a relay the peer no longer uses.
    pub fn remove_remote_candidate(&mut self, id: TId, candidate: &str, now: Instant) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return;
        };
        match IceCandidate::parse(candidate) {
            Ok(c) => conn.remove_remote_candidate(&c, now),
            Err(error) => tracing::debug!(%error, candidate, "ignoring invalidation"),
        }
        self.drain_connection_events(id);
    }

    /// The relayed candidates its connections hold, ours and the peers': a relay that was
    /// withdrawn or died must leave none behind.
    pub fn relayed_candidates(&self) -> BTreeSet<SocketAddr> {
        self.connections
            .values()
            .flat_map(|c| c.relayed_candidates())
            .collect()
    }

    /// How many replaced connections still open data sent on their sessions (see
    /// [`RETIRED_GRACE`]): at most one per peer.
    pub fn retired_connections(&self) -> usize {
        self.retired.len()
    }

    /// A snapshot of the connection to `id`.
    pub fn connection(&self, id: TId) -> Option<ConnectionInfo> {
        self.connections.get(&id).map(|c| ConnectionInfo {
            index: c.index.get(),
            path: c.path(),
            remote_kind: c.path_remote_kind(),
            ice_connected: c.ice_state().is_connected(),
            established: c.is_established(),
            idle: c.is_idle(),
            remote_candidates: c.signalled_remote_candidates(),
            handshakes_initiated: c.handshakes_initiated(),
            psk_fingerprint: c.psk_fingerprint,
        })
    }

    /// The peers this node has connections to.
    pub fn connections(&self) -> impl Iterator<Item = TId> + '_ {
        self.connections.keys().copied()
    }

    /// Encrypts an IP packet for the peer `id` and queues the datagram for
    /// [`Node::poll_transmit`], behind everything queued before it (a ChannelBind the datagram
    /// needs is queued in front of it).
    ///
    /// Nothing is queued while there is no path or session yet: boringtun holds the packet
    /// until the handshake completes.
    pub fn encapsulate<B: AsRef<[u8]>>(
        &mut self,
        id: TId,
        packet: &IpPacket<B>,
        now: Instant,
    ) -> Result<(), Error> {
        let Some(conn) = self.connections.get_mut(&id) else {
            self.stats.unknown_connection += 1;
            return Err(Error::UnknownConnection);
        };
        match conn.encapsulate(packet.as_bytes(), now, &self.pool, self.deferred_crypto) {
            Ok(Some(transmit)) => {
                if let Some(t) = self.wrap_relayed(transmit, now) {
                    self.transmits.push_back(t);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.stats.wireguard_errors += 1;
                Err(e)
            }
        }
    }

    /// Handles a datagram that arrived on `local` from `from`.
    ///
    /// Returns the decrypted IP packet and who sent it, if the datagram carried one. Errors
    /// are counted in [`Node::stats`] and logged at DEBUG; they never affect other connections.
    pub fn decapsulate(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Delivered<TId>, Error> {
        let result = self.decapsulate_inner(local, from, datagram, now, true);
        self.settle_inbound(from, result, now)
    }

    /// What a datagram from `from` gave, after its transmits are queued; a drop is counted and
    /// logged.
    fn settle_inbound<T>(
        &mut self,
        from: SocketAddr,
        result: Result<T, Error>,
        now: Instant,
    ) -> Result<T, Error> {
        self.flush_staged(now);
        if let Err(error) = &result {
            self.stats.record(error);
            tracing::debug!(%from, %error, "dropped datagram");
        }
        result
    }

    fn decapsulate_inner(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        direct: bool,
    ) -> Result<Delivered<TId>, Error> {
        let kind = classify(datagram);
        // Only what arrives directly can be from a relay; what a relay delivered is from a peer.
        if direct && matches!(kind, DatagramKind::Stun | DatagramKind::ChannelData) {
            match self.handle_from_relay(local, from, datagram, now)? {
                FromRelay::NotRelay => {}
                FromRelay::Handled => return Ok(None),
                FromRelay::Peer(peer, relayed, payload) => {
                    // A drop is logged with the relay as its source: name the peer too.
                    return self
                        .decapsulate_inner(relayed, peer, &payload, now, false)
                        .inspect_err(|error| {
                            tracing::debug!(%peer, %relayed, %error, "relayed datagram dropped");
                        });
                }
            }
        }
        let id = match kind {
            DatagramKind::Stun => {
                self.handle_stun(local, from, datagram, now)?;
                return Ok(None);
            }
            DatagramKind::WgHandshakeInit => {
                match self.check_handshake_init(local, from, datagram, now)? {
                    Verdict::Pass => self.route_handshake_init(datagram)?,
                    Verdict::CookieReply(_) => return Ok(None),
                }
            }
            DatagramKind::WgHandshakeResponse => route_by_index(&self.by_index, datagram, 8)?,
            DatagramKind::WgCookieReply => route_by_index(&self.by_index, datagram, 4)?,
            DatagramKind::WgData => match route_by_index(&self.by_index, datagram, 4) {
                Ok(id) => id,
                Err(error) => {
                    return self
                        .open_retired(local, from, datagram, now)
                        .unwrap_or(Err(error));
                }
            },
            DatagramKind::ChannelData => return Err(Error::UnexpectedChannelData),
            DatagramKind::Unknown => return Err(Error::UnknownDatagram),
        };
        let conn = self
            .connections
            .get_mut(&id)
            .ok_or(Error::UnroutableWireGuard)?;
        let inner = conn.decapsulate(
            local,
            from,
            datagram,
            now,
            &self.pool,
            &mut self.staged,
            self.deferred_crypto,
        );
        let index = conn.index;
        self.drain_connection_events(id);
        match inner? {
            Inbound::Packet(bytes) => inner_packet(id, Some(bytes)),
            Inbound::Nothing => Ok(None),
            Inbound::Open(opening, buf) => {
                if self.decryptions.len() >= MAX_PENDING_DECRYPTIONS {
                    return Err(Error::DecryptionQueueFull);
                }
                self.decryptions.push_back(Decryption {
                    opening,
                    buf,
                    opened: None,
                    local,
                    from,
                    index,
                });
                Ok(None)
            }
        }
    }

    /// A data packet for a connection replaced within [`RETIRED_GRACE`], opened with its
    /// session (inline: the deferred path finishes against the current connection). `None` if
    /// no retired connection has its index.
    fn open_retired(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<Result<Delivered<TId>, Error>> {
        let (id, conn) = self.retired.get_mut(receiver_index(datagram, 4)?, now)?;
        // It sends nothing (its peer has moved on, or will at its next message) and reports
        // nothing: what it learns of paths is the new connection's to learn.
        let mut silenced = VecDeque::new();
        let inner = conn.decapsulate(local, from, datagram, now, &self.pool, &mut silenced, false);
        while conn.poll_event().is_some() {}
        let _ = conn.take_sent_requests();
        Some(match inner {
            Ok(Inbound::Packet(bytes)) => inner_packet(id, Some(bytes)),
            Ok(Inbound::Nothing | Inbound::Open(..)) => Ok(None),
            Err(error) => Err(error),
        })
    }

    /// Checks an initiation before it costs an X25519 (see [`HandshakeGuard`]); a cookie reply
    /// is queued back the way the initiation came.
    fn check_handshake_init(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Verdict, Error> {
        let mut buf = self.pool.pull();
        let header = CHANNEL_DATA_HEADER_LEN;
        let verdict = self
            .handshake_guard
            .check(now, from.ip(), datagram, &mut buf.storage_mut()[header..])
            .map_err(Error::WireGuard)?;
        if let Verdict::CookieReply(range) = &verdict {
            self.stats.cookie_replies += 1;
            buf.set_range(header + range.start..header + range.end);
            let via = self
                .allocations
                .values()
                .find(|a| a.relayed() == Some(local))
                .map(Allocation::id);
            self.staged.push_back(Transmit {
                src: Some(local),
                dst: from,
                payload: buf,
                via,
                seal: None,
            });
        }
        Ok(verdict)
    }

    /// A handshake initiation carries no index of ours, only the sender's encrypted static key.
    fn route_handshake_init(&self, datagram: &[u8]) -> Result<TId, Error> {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
            return Err(Error::UnknownDatagram);
        };
        let half = parse_handshake_anon(&self.private_key, &self.public_key, &init)
            .map_err(Error::WireGuard)?;
        self.by_key
            .get(&half.peer_static_public)
            .copied()
            .ok_or(Error::UnroutableWireGuard)
    }

    fn handle_stun(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), Error> {
        let message = StunMessage::parse(datagram).map_err(|_| Error::MalformedStun)?;
        let id = if message.is_binding_request() {
            // USERNAME is "<our ufrag>:<their ufrag>" in a request sent to us.
            let (ours, _) = message.split_username().ok_or(Error::MalformedStun)?;
            self.by_ufrag.get(ours).copied()
        } else {
            let txid: Option<TransactionId> = datagram.get(8..20).and_then(|t| t.try_into().ok());
            let request = txid.and_then(|t| self.stun_requests.get(&t).copied());
            if request.is_some_and(|(_, to)| to != from) {
                return Err(Error::AsymmetricStun);
            }
            request.map(|(id, _)| id).filter(|id| {
                self.connections
                    .get(id)
                    .is_some_and(|c| c.accepts(&message))
            })
        };
        let id = id.ok_or(Error::UnroutableStun)?;
        let conn = self.connections.get_mut(&id).ok_or(Error::UnroutableStun)?;
        let accepted = conn.handle_stun(local, from, message, now, &self.pool, &mut self.staged);
        self.drain_connection_events(id);
        if accepted {
            Ok(())
        } else {
            Err(Error::UnroutableStun)
        }
    }

    /// Drives timers of every connection; failed connections are removed here.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.retired.expire(now);
        while let Some(&(sent, txid)) = self.stun_requests_sent.front() {
            if now.saturating_duration_since(sent) < STUN_ANSWER_WINDOW {
                break;
            }
            self.stun_requests_sent.pop_front();
            self.stun_requests.remove(&txid);
        }
        self.handle_relay_timeouts(now);
        let ids: Vec<TId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.handle_timeout(now, &self.pool, &mut self.staged);
                self.drain_connection_events(id);
            }
        }
        self.flush_staged(now);
    }

    /// When [`Node::handle_timeout`] wants to be called next, and why.
    pub fn poll_timeout(&mut self) -> Option<(Instant, &'static str)> {
        let relays = self
            .allocations
            .values()
            .filter_map(|a| a.poll_timeout())
            .map(|t| (t, "relay"))
            .chain(self.relay_retries.values().map(|r| (r.at, "relay retry")));
        self.connections
            .values_mut()
            .filter_map(Connection::poll_timeout)
            .chain(relays)
            .min_by_key(|(t, _)| *t)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the caller.
    pub fn poll_event(&mut self) -> Option<Event<TId>> {
        self.events.pop_front()
    }

    fn drain_connection_events(&mut self, id: TId) {
        let mut failed = false;
        if let Some(conn) = self.connections.get_mut(&id) {
            for (sent, txid, to) in conn.take_sent_requests() {
                if self.stun_requests_sent.len() == MAX_STUN_REQUESTS {
                    if let Some((_, oldest)) = self.stun_requests_sent.pop_front() {
                        self.stun_requests.remove(&oldest);
                    }
                }
                self.stun_requests.insert(txid, (id, to));
                self.stun_requests_sent.push_back((sent, txid));
            }
            while let Some(event) = conn.poll_event() {
                let event = match event {
                    ConnEvent::NewLocalCandidate(c) => Event::NewIceCandidate {
                        connection: id,
                        candidate: c.to_sdp_string(),
                    },
                    ConnEvent::InvalidatedLocalCandidate(c) => Event::InvalidateIceCandidate {
                        connection: id,
                        candidate: c.to_sdp_string(),
                    },
                    ConnEvent::Established => Event::ConnectionEstablished(id),
                    ConnEvent::Idle => Event::ConnectionIdle(id),
                    ConnEvent::Failed(reason) => {
                        failed = true;
                        Event::ConnectionFailed {
                            connection: id,
                            reason,
                        }
                    }
                };
                self.events.push_back(event);
            }
        }
        if failed {
            if let Some(held) = self.detach(id).map(|mut c| c.take_held()) {
                if !held.is_empty() {
                    self.unsent.insert(id, held);
                }
            }
        }
    }
}

/// A decrypted IP packet and the peer it came from, if a datagram carried one.
type Delivered<TId> = Option<(TId, IpPacket<Buffer>)>;

/// The IP packet in a decrypted data packet; a keep-alive carries none.
fn inner_packet<TId>(id: TId, bytes: Option<Buffer>) -> Result<Delivered<TId>, Error> {
    match bytes {
        Some(bytes) => {
            let packet = IpPacket::parse(bytes).map_err(Error::InvalidInnerPacket)?;
            Ok(Some((id, packet)))
        }
        None => Ok(None),
    }
}

/// Routes a WireGuard message by the receiver index at `offset`: the top 24 bits are ours.
fn route_by_index<TId: Copy>(
    by_index: &BTreeMap<ConnIndex, TId>,
    datagram: &[u8],
    offset: usize,
) -> Result<TId, Error> {
    let index = receiver_index(datagram, offset).ok_or(Error::UnknownDatagram)?;
    by_index
        .get(&index)
        .copied()
        .ok_or(Error::UnroutableWireGuard)
}

/// The connection a WireGuard message's receiver index at `offset` names.
fn receiver_index(datagram: &[u8], offset: usize) -> Option<ConnIndex> {
    let bytes = datagram.get(offset..offset + 4)?;
    let idx = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    Some(ConnIndex::from_session_index(idx))
}

/// The handshake guard's generator: the node's, on a stream of its own, so that what the node
/// draws from its own stream stays as it was.
fn guard_rng(rng: &ChaCha20Rng) -> ChaCha20Rng {
    const GUARD_RNG_STREAM: u64 = 0x6775_6172;
    let mut guard = rng.clone();
    guard.set_stream(GUARD_RNG_STREAM);
    guard
}
