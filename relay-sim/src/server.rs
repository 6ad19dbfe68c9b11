//! The sans-IO TURN server (RFC 8489 STUN, RFC 8656 TURN over UDP).
//!
//! # Driving a [`Server`]
//!
//! The server never reads a clock, never touches a socket and draws every random value from the
//! seeded generator given to [`Server::new`]. Its driver:
//!
//! 1. feeds every received datagram to [`Server::handle_input`] with the current time, the sender
//!    and the local address it arrived on (the listening address, or a relay address);
//! 2. after **every** call into the server, drains [`Server::poll_event`] (bind a socket on
//!    [`Event::AllocationCreated`], close it on [`Event::AllocationFreed`]) and then
//!    [`Server::poll_transmit`] (send `payload` from the socket whose port is `src.port()` to
//!    `dst`);
//! 3. calls [`Server::handle_timeout`] once [`Server::poll_timeout`] has passed. A call before the
//!    deadline, or twice for the same instant, does nothing.
//!
//! `now` must never go backwards. Wall-clock time (for the expiry of REST credentials) is derived
//! from the Unix time given at construction plus elapsed `now`; [`Server::set_unix_time`] resyncs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use stun_codec::rfc5389::attributes::{
    MessageIntegrity, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily, RequestedAddressFamily,
};
use stun_codec::{AttributeType, MessageClass, TransactionId};
use tracing::{debug, trace};

use crate::allocation::{Allocation, FiveTuple};
use crate::attributes::{self, Attribute, ChannelNumber, StunMessage};
use crate::auth::{self, NonceCheck, NonceKey, RestUsername};
use crate::channel_data::{self, ChannelData};
use crate::config::{Config, ConfigError};
use crate::error::RequestError;
use crate::message::{self, Credentials, Datagram, Received, Response};
use crate::peers::DeniedRange;
use crate::stats::Stats;

/// Allocations one user holds at once, besides [`Config::max_allocations`] for all users; an
/// Allocate beyond it is refused with 486 Allocation Quota Reached (coturn's `user-quota`).
///
/// The user is the id of the REST username (after `<expiry>:`), so that a node's renewed
/// credentials share its quota. A node holds one allocation per relay, plus those of earlier
/// 5-tuples (restarts, NAT rebinding) until they expire: 8 leaves room for that while one leaked
/// credential cannot take the relay's ports.
pub const MAX_ALLOCATIONS_PER_USER: usize = 8;

/// Permissions (distinct peer IPs) one allocation holds; a CreatePermission or ChannelBind that
/// would add more is refused with 508 Insufficient Capacity.
///
/// RFC 8656 sets no number. A node keeps one allocation per relay for all its connections and a
/// permission per peer IP it reaches through it (server-reflexive and relayed addresses; private
/// host candidates are refused anyway), so a gateway needs about one per client network: 256
/// serves a busy gateway and bounds what one allocation holds to some 30 KiB.
pub const MAX_PERMISSIONS_PER_ALLOCATION: usize = 256;

/// XOR-PEER-ADDRESS attributes in one CreatePermission; a request with more is refused as a whole
/// with 508 Insufficient Capacity (RFC 8656 section 9.2: a valid request the server cannot
/// satisfy for a capacity limit), so that one datagram does bounded work.
///
/// ICE agents ask for one peer per request (the node uses ChannelBind, one peer by definition);
/// 8 leaves room for clients that batch a peer's candidates.
pub const MAX_PEERS_PER_CREATE_PERMISSION: usize = 8;

/// UDP, the only REQUESTED-TRANSPORT served.
const PROTOCOL_UDP: u8 = 17;
/// Random probes for a free relay port before scanning the range.
const PORT_PROBES: usize = 32;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local address to send from: the listening address (to clients) or a relay address (to
    /// peers). The runtime picks the socket by `src.port()`.
    pub src: SocketAddr,
    /// Where to send it.
    pub dst: SocketAddr,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// Something the runtime must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A relay port is in use: bind a socket on it (any local IP; `relay.ip()` is the public one).
    AllocationCreated {
        /// The relayed transport address advertised to the client.
        relay: SocketAddr,
        /// The allocation's client 5-tuple.
        five_tuple: FiveTuple,
    },
    /// A relay port is free again: close its socket.
    AllocationFreed {
        /// The relayed transport address that was released.
        relay: SocketAddr,
        /// Why.
        reason: FreeReason,
    },
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeReason {
    /// Refresh with LIFETIME 0.
    Deleted,
    /// Its lifetime ran out.
    Expired,
    /// The runtime could not bind its port ([`Server::relay_port_unusable`]).
    PortUnusable,
}

/// What a timer guards; [`Server::poll_timeout_reason`] says which one is due next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TimerKind {
    /// Expiry of an allocation.
    Allocation,
    /// Expiry of a permission.
    Permission,
    /// Expiry of a channel binding.
    Channel,
    /// Expiry of a port reserved with EVEN-PORT's R bit.
    Reservation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(u16),
    Permission(u16, IpAddr),
    Channel(u16, u16),
    Reservation(u64),
}

impl Timer {
    fn kind(self) -> TimerKind {
        match self {
            Self::Allocation(_) => TimerKind::Allocation,
            Self::Permission(..) => TimerKind::Permission,
            Self::Channel(..) => TimerKind::Channel,
            Self::Reservation(_) => TimerKind::Reservation,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    port: u16,
    expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortParity {
    Any,
    Even,
    /// Even, and the next port free too (it gets reserved).
    EvenPair,
}

/// What a successful request handler produced.
enum Reply {
    Response(Response),
    /// Already-encoded bytes (a retransmitted Allocate).
    Encoded(Box<[u8]>),
}

/// Information about a live allocation, for inspection by tests and simulations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocationInfo {
    /// The relayed transport address.
    pub relay: SocketAddr,
    /// The client 5-tuple.
    pub five_tuple: FiveTuple,
    /// When it expires.
    pub expires: Instant,
    /// Peer IPs with a permission (live or not yet swept).
    pub permissions: Vec<IpAddr>,
    /// Channel numbers and their peers.
    pub channels: Vec<(u16, SocketAddr)>,
    /// The username it was created with.
    pub username: String,
}

/// The TURN server state machine. See the module documentation for the driver contract.
pub struct Server {
    config: Config,
    realm: Realm,
    rng: ChaCha20Rng,
    epoch: Instant,
    unix_reference: (Instant, u64),
    nonces: NonceKey,
    allocations: BTreeMap<u16, Allocation>,
    by_five_tuple: BTreeMap<FiveTuple, u16>,
    /// Allocations held per user (REST id), for [`MAX_ALLOCATIONS_PER_USER`].
    per_user: BTreeMap<Box<str>, usize>,
    reservations: BTreeMap<u64, Reservation>,
    reserved_ports: BTreeSet<u16>,
    unusable_ports: BTreeSet<u16>,
    timers: BTreeSet<(Instant, Timer)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("realm", &self.config.realm)
            .field("public_ip", &self.config.public_ip)
            .field("allocations", &self.allocations.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Creates a server.
    ///
    /// `seed` drives every random choice (nonce key, relay ports, tokens, transaction ids of Data
    /// indications). `now` is the server's epoch; `unix_time` is the Unix time (seconds) at `now`.
    pub fn new(
        config: Config,
        seed: [u8; 32],
        now: Instant,
        unix_time: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let realm = Realm::new(config.realm.clone()).map_err(|_| ConfigError::InvalidRealm)?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let nonces = NonceKey::new(rng.gen(), config.nonce_lifetime);
        Ok(Self {
            config,
            realm,
            rng,
            epoch: now,
            unix_reference: (now, unix_time),
            nonces,
            allocations: BTreeMap::new(),
            by_five_tuple: BTreeMap::new(),
            per_user: BTreeMap::new(),
            reservations: BTreeMap::new(),
            reserved_ports: BTreeSet::new(),
            unusable_ports: BTreeSet::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since construction.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of allocations held (including expired ones not yet swept by `handle_timeout`).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Permissions held over all allocations (including expired ones not yet swept). Walks
    /// every allocation: for a periodic snapshot, not for every datagram.
    pub fn permission_count(&self) -> usize {
        self.allocations.values().map(|a| a.permissions.len()).sum()
    }

    /// Channels bound over all allocations (including expired ones not yet swept). Walks every
    /// allocation, like [`Server::permission_count`].
    pub fn channel_count(&self) -> usize {
        self.allocations.values().map(|a| a.channels.len()).sum()
    }

    /// The live allocations, ordered by relay port.
    pub fn allocations(&self) -> impl Iterator<Item = AllocationInfo> + '_ {
        self.allocations.values().map(|a| AllocationInfo {
            relay: self.relay_addr(a.relay_port),
            five_tuple: a.five_tuple,
            expires: a.expires,
            permissions: a.permissions.keys().copied().collect(),
            channels: a.channels.iter().map(|(n, c)| (*n, c.peer)).collect(),
            username: a.username.to_string(),
        })
    }

    /// Resynchronises wall-clock time: `unix_time` (seconds) is the Unix time at `now`.
    pub fn set_unix_time(&mut self, now: Instant, unix_time: u64) {
        self.unix_reference = (now, unix_time);
    }

    /// Whether datagrams arriving on `local` are relay traffic from peers (else client traffic).
    pub fn is_relay_port(&self, local: SocketAddr) -> bool {
        self.config.relay_ports.contains(&local.port())
    }

    /// Handles one received datagram. `local` is the address it arrived on.
    pub fn handle_input(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        bytes: &[u8],
    ) {
        if self.is_relay_port(local) {
            self.handle_peer_datagram(now, from, local.port(), bytes);
            return;
        }
        let five_tuple = FiveTuple {
            client: from,
            server: local,
        };
        match message::classify(bytes) {
            Ok(Datagram::Stun(msg)) => self.handle_stun(now, five_tuple, &msg),
            Ok(Datagram::ChannelData(frame)) => {
                self.handle_client_channel_data(now, five_tuple, frame)
            }
            Err(error) => {
                self.stats.malformed += 1;
                debug!(target: "relay", %from, %error, len = bytes.len(), "dropping malformed datagram");
            }
        }
    }

    /// Fires the timers due at `now`. Calling it early or twice is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Allocation(port) => {
                    if self.allocations.get(&port).is_some_and(|a| !a.is_live(now)) {
                        self.free_allocation(port, FreeReason::Expired);
                    }
                }
                Timer::Permission(port, ip) => {
                    if let Some(a) = self.allocations.get_mut(&port) {
                        if a.expire_permission(ip, now) {
                            debug!(target: "relay", port, peer = %ip, "permission expired");
                        }
                    }
                }
                Timer::Channel(port, channel) => {
                    if let Some(a) = self.allocations.get_mut(&port) {
                        if a.expire_channel(channel, now) {
                            debug!(target: "relay", port, channel, "channel binding expired");
                        }
                    }
                }
                Timer::Reservation(token) => {
                    if let Some(r) = self.reservations.get(&token).copied() {
                        if now >= r.expires {
                            self.reservations.remove(&token);
                            self.reserved_ports.remove(&r.port);
                            debug!(target: "relay", port = r.port, "port reservation expired");
                        }
                    }
                }
            }
        }
    }

    /// When [`Server::handle_timeout`] must be called next, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Like [`Server::poll_timeout`], with what the timer guards.
    pub fn poll_timeout_reason(&self) -> Option<(Instant, TimerKind)> {
        self.timers.first().map(|(at, timer)| (*at, timer.kind()))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Tells the server that the runtime cannot bind `port`: its allocation is released and the
    /// port is not handed out again.
    pub fn relay_port_unusable(&mut self, port: u16) {
        self.unusable_ports.insert(port);
        self.free_allocation(port, FreeReason::PortUnusable);
    }

    fn relay_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.config.public_ip, port))
    }

    fn unix_now(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_reference;
        unix.saturating_add(now.saturating_duration_since(at).as_secs())
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    // ---- client side -------------------------------------------------------------------------

    fn handle_stun(&mut self, now: Instant, five_tuple: FiveTuple, received: &Received) {
        let msg = &received.message;
        match msg.class() {
            MessageClass::Request => {
                self.stats.requests += 1;
                self.handle_request(now, five_tuple, received);
            }
            MessageClass::Indication if msg.method() == SEND => {
                self.handle_send_indication(now, five_tuple, msg);
            }
            MessageClass::Indication
            | MessageClass::SuccessResponse
            | MessageClass::ErrorResponse => {
                self.stats.dropped_other += 1;
                trace!(target: "relay", client = %five_tuple.client, class = %msg.class(), method = %msg.method(), "dropping unexpected STUN message");
            }
        }
    }

    fn handle_request(&mut self, now: Instant, five_tuple: FiveTuple, received: &Received) {
        let msg = &received.message;
        let method = msg.method();
        let mut credentials = None;
        let outcome = if method == BINDING {
            self.binding(five_tuple, msg)
        } else if [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            match self.authenticate(now, five_tuple, received) {
                Ok(c) => {
                    let result = self.authenticated_request(now, five_tuple, msg, &c);
                    credentials = Some(c);
                    result
                }
                Err(e) => Err(e),
            }
        } else {
            Err(RequestError::BadRequest("unknown method"))
        };
        let bytes = match outcome {
            Ok(Reply::Encoded(bytes)) => Some(bytes.into_vec()),
            Ok(Reply::Response(response)) => {
                let bytes = response.encode(credentials.as_ref());
                if method == ALLOCATE {
                    self.remember_allocate_response(five_tuple, bytes.as_deref());
                }
                bytes
            }
            Err(error) => {
                self.stats.error_responses += 1;
                debug!(target: "relay", client = %five_tuple.client, %method, %error, "request refused");
                self.error_response(now, five_tuple, msg, &error)
                    .encode(credentials.as_ref())
            }
        };
        match bytes {
            Some(payload) => self.transmits.push_back(Transmit {
                src: five_tuple.server,
                dst: five_tuple.client,
                payload,
            }),
            None => {
                self.stats.dropped_other += 1;
                debug!(target: "relay", client = %five_tuple.client, %method, "response does not encode");
            }
        }
    }

    fn error_response(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &StunMessage,
        error: &RequestError,
    ) -> Response {
        let mut response = Response::error(msg.method(), msg.transaction_id(), error.error_code());
        match error {
            RequestError::Unauthorized(_) | RequestError::StaleNonce => {
                response.push(self.realm.clone());
                let nonce = self.nonces.issue(five_tuple.client, self.elapsed(now));
                if let Ok(nonce) = Nonce::new(nonce) {
                    response.push(nonce);
                }
            }
            RequestError::UnknownAttributes(types) => {
                response.push(UnknownAttributes::new(
                    types.iter().map(|t| AttributeType::new(*t)).collect(),
                ));
            }
            RequestError::BadRequest(_)
            | RequestError::Forbidden(_)
            | RequestError::AllocationQuotaReached
            | RequestError::AllocationMismatch(_)
            | RequestError::AddressFamilyNotSupported
            | RequestError::WrongCredentials
            | RequestError::UnsupportedTransport(_)
            | RequestError::PeerAddressFamilyMismatch
            | RequestError::InsufficientCapacity(_) => {}
        }
        response
    }

    fn binding(&mut self, five_tuple: FiveTuple, msg: &StunMessage) -> Result<Reply, RequestError> {
        check_unknown(msg)?;
        let mut response = Response::success(BINDING, msg.transaction_id());
        response.push(XorMappedAddress::new(five_tuple.client));
        Ok(Reply::Response(response))
    }

    /// RFC 8489 section 9.2.4, in its order: integrity present, fields present, nonce, username,
    /// integrity value.
    fn authenticate(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        received: &Received,
    ) -> Result<Credentials, RequestError> {
        let msg = &received.message;
        let (Some(integrity), Some(integrity_input)) = (
            msg.get_attribute::<MessageIntegrity>(),
            received.integrity_input.as_deref(),
        ) else {
            return Err(RequestError::Unauthorized("no MESSAGE-INTEGRITY"));
        };
        let (Some(username), Some(realm), Some(nonce)) = (
            msg.get_attribute::<Username>(),
            msg.get_attribute::<Realm>(),
            msg.get_attribute::<Nonce>(),
        ) else {
            return Err(RequestError::BadRequest(
                "MESSAGE-INTEGRITY without USERNAME, REALM or NONCE",
            ));
        };
        match self
            .nonces
            .check(nonce.value(), five_tuple.client, self.elapsed(now))
        {
            NonceCheck::Valid => {}
            NonceCheck::Stale => return Err(RequestError::StaleNonce),
        }
        if realm.text() != self.config.realm {
            return Err(RequestError::Unauthorized("wrong realm"));
        }
        let rest: RestUsername = username
            .name()
            .parse()
            .map_err(|_| RequestError::Unauthorized("username is not <expiry>:<id>"))?;
        let password = auth::rest_password(&self.config.auth_secret, username.name());
        // Not stun_codec's own check, which compares with `==` (see `auth` on why that matters).
        let key = auth::long_term_key(username.name(), realm.text(), &password);
        if !auth::verify_message_integrity(&key, integrity_input, &integrity.hmac_sha1()) {
            return Err(RequestError::Unauthorized(
                "MESSAGE-INTEGRITY does not match",
            ));
        }
        // Checked after the MAC, so that the count is of genuine credentials that ran out (a
        // node the portal did not renew in time), not of anyone's guesses.
        if !rest.is_valid_at(self.unix_now(now)) {
            self.stats.expired_credentials += 1;
            return Err(RequestError::Unauthorized("credentials expired"));
        }
        Ok(Credentials {
            username: username.clone(),
            realm: realm.clone(),
            password,
        })
    }

    fn authenticated_request(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &StunMessage,
        credentials: &Credentials,
    ) -> Result<Reply, RequestError> {
        check_unknown(msg)?;
        let method = msg.method();
        if method == ALLOCATE {
            return self.allocate(now, five_tuple, msg, credentials);
        }
        let port = self.allocation_for(now, five_tuple, credentials)?;
        if method == REFRESH {
            self.refresh(now, port, msg)
        } else if method == CREATE_PERMISSION {
            self.create_permission(now, port, msg)
        } else {
            self.channel_bind(now, port, msg)
        }
    }

    /// The live allocation of a 5-tuple, created with the same user's credentials.
    ///
    /// RFC 8656 wants the very USERNAME the allocation was made with (441 otherwise). Ours also
    /// takes renewed credentials of the same user (the id after `<expiry>:`, which only the
    /// portal can sign for): the portal re-issues them before they expire, and the node moves
    /// its allocation over on the next refresh instead of losing it at expiry. The allocation
    /// keeps whichever credentials expire last.
    fn allocation_for(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        credentials: &Credentials,
    ) -> Result<u16, RequestError> {
        let allocation = self
            .by_five_tuple
            .get(&five_tuple)
            .and_then(|port| self.allocations.get_mut(port))
            .filter(|a| a.is_live(now))
            .ok_or(RequestError::AllocationMismatch(
                "no allocation on this 5-tuple",
            ))?;
        let presented = credentials.username.name();
        if *allocation.username != *presented {
            if user_of(&allocation.username) != user_of(presented) {
                return Err(RequestError::WrongCredentials);
            }
            if expiry_of(presented) > expiry_of(&allocation.username) {
                debug!(target: "relay", port = allocation.relay_port, user = user_of(presented), "allocation moved to renewed credentials");
                allocation.username = presented.into();
                self.stats.credentials_renewed += 1;
            }
        }
        Ok(allocation.relay_port)
    }

    fn allocate(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        msg: &StunMessage,
        credentials: &Credentials,
    ) -> Result<Reply, RequestError> {
        if let Some(existing) = self
            .by_five_tuple
            .get(&five_tuple)
            .and_then(|p| self.allocations.get(p))
        {
            if existing.is_live(now) {
                if existing.allocate_transaction == msg.transaction_id()
                    && !existing.allocate_response.is_empty()
                {
                    trace!(target: "relay", client = %five_tuple.client, "retransmitted Allocate");
                    return Ok(Reply::Encoded(existing.allocate_response.clone()));
                }
                return Err(RequestError::AllocationMismatch(
                    "allocation exists on this 5-tuple",
                ));
            }
            let port = existing.relay_port;
            self.free_allocation(port, FreeReason::Expired);
        }
        let transport = msg
            .get_attribute::<RequestedTransport>()
            .ok_or(RequestError::BadRequest("no REQUESTED-TRANSPORT"))?;
        if transport.protocol() != PROTOCOL_UDP {
            return Err(RequestError::UnsupportedTransport(transport.protocol()));
        }
        if msg.get_attribute::<DontFragment>().is_some() {
            // The relay cannot set DF on relayed datagrams: RFC 8656 section 7.2 says to treat the
            // attribute as an unknown comprehension-required one.
            return Err(RequestError::UnknownAttributes(vec![
                DontFragment::CODEPOINT,
            ]));
        }
        let requested_family = msg
            .get_attribute::<RequestedAddressFamily>()
            .map(|f| f.address_family());
        let additional_family = msg
            .get_attribute::<AdditionalAddressFamily>()
            .map(|f| f.address_family());
        let even_port = msg.get_attribute::<EvenPort>().map(EvenPort::is_requested);
        let token = msg
            .get_attribute::<ReservationToken>()
            .map(ReservationToken::token);
        if requested_family.is_some() && additional_family.is_some() {
            return Err(RequestError::BadRequest(
                "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY",
            ));
        }
        if token.is_some()
            && (even_port.is_some() || requested_family.is_some() || additional_family.is_some())
        {
            return Err(RequestError::BadRequest(
                "RESERVATION-TOKEN with EVEN-PORT or an address family",
            ));
        }
        match requested_family {
            Some(AddressFamily::V6) => return Err(RequestError::AddressFamilyNotSupported),
            Some(AddressFamily::V4) | None => {}
        }
        match additional_family {
            Some(AddressFamily::V4) => {
                return Err(RequestError::BadRequest("ADDITIONAL-ADDRESS-FAMILY IPv4"))
            }
            // Dual allocation is not offered: the client gets the IPv4 relayed address only.
            Some(AddressFamily::V6) | None => {}
        }
        let user = user_of(credentials.username.name());
        if self.per_user.get(user).copied().unwrap_or(0) >= MAX_ALLOCATIONS_PER_USER {
            self.stats.allocation_quota_refusals += 1;
            debug!(target: "relay", client = %five_tuple.client, user, max = MAX_ALLOCATIONS_PER_USER, "allocation quota reached");
            return Err(RequestError::AllocationQuotaReached);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return Err(RequestError::InsufficientCapacity(
                "allocation limit reached",
            ));
        }
        let (port, new_token) =
            match (token, even_port) {
                (Some(token), _) => {
                    let reservation = self.reservations.remove(&token).ok_or(
                        RequestError::InsufficientCapacity("unknown reservation token"),
                    )?;
                    self.reserved_ports.remove(&reservation.port);
                    self.timers
                        .remove(&(reservation.expires, Timer::Reservation(token)));
                    (reservation.port, None)
                }
                (None, Some(true)) => {
                    let port = self.pick_port(PortParity::EvenPair).ok_or(
                        RequestError::InsufficientCapacity("no free even/odd port pair"),
                    )?;
                    let token = self.rng.gen::<u64>();
                    let next = port.saturating_add(1);
                    let expires = now + self.config.reservation_lifetime;
                    self.reservations.insert(
                        token,
                        Reservation {
                            port: next,
                            expires,
                        },
                    );
                    self.reserved_ports.insert(next);
                    self.timers.insert((expires, Timer::Reservation(token)));
                    (port, Some(token))
                }
                (None, Some(false)) => (
                    self.pick_port(PortParity::Even)
                        .ok_or(RequestError::InsufficientCapacity("no free even port"))?,
                    None,
                ),
                (None, None) => (
                    self.pick_port(PortParity::Any)
                        .ok_or(RequestError::InsufficientCapacity("no free relay port"))?,
                    None,
                ),
            };
        let lifetime = self.granted_lifetime(msg.get_attribute::<Lifetime>());
        let expires = now + lifetime;
        let allocation = Allocation::new(
            five_tuple,
            port,
            credentials.username.name(),
            expires,
            msg.transaction_id(),
        );
        self.allocations.insert(port, allocation);
        self.by_five_tuple.insert(five_tuple, port);
        *self.per_user.entry(user.into()).or_default() += 1;
        self.timers.insert((expires, Timer::Allocation(port)));
        self.stats.allocations_created += 1;
        let relay = self.relay_addr(port);
        debug!(target: "relay", client = %five_tuple.client, %relay, lifetime_s = lifetime.as_secs(), "allocation created");
        self.events
            .push_back(Event::AllocationCreated { relay, five_tuple });

        let mut response = Response::success(ALLOCATE, msg.transaction_id());
        response.push(XorRelayAddress::new(relay));
        response.push(lifetime_attribute(lifetime));
        if let Some(token) = new_token {
            response.push(ReservationToken::new(token));
        }
        response.push(XorMappedAddress::new(five_tuple.client));
        Ok(Reply::Response(response))
    }

    fn remember_allocate_response(&mut self, five_tuple: FiveTuple, bytes: Option<&[u8]>) {
        let (Some(port), Some(bytes)) = (self.by_five_tuple.get(&five_tuple), bytes) else {
            return;
        };
        if let Some(a) = self.allocations.get_mut(port) {
            if a.allocate_response.is_empty() {
                a.allocate_response = bytes.into();
            }
        }
    }

    /// The client's LIFETIME capped at the maximum; absent or zero means the default.
    fn granted_lifetime(&self, requested: Option<&Lifetime>) -> Duration {
        match requested.map(Lifetime::lifetime) {
            Some(d) if !d.is_zero() => d.min(self.config.max_lifetime),
            Some(_) | None => self.config.default_lifetime,
        }
    }

    fn pick_port(&mut self, parity: PortParity) -> Option<u16> {
        let (lo, hi) = (
            *self.config.relay_ports.start(),
            *self.config.relay_ports.end(),
        );
        let fits = |server: &Self, port: u16| -> bool {
            let free = |p: u16| {
                !server.allocations.contains_key(&p)
                    && !server.reserved_ports.contains(&p)
                    && !server.unusable_ports.contains(&p)
            };
            match parity {
                PortParity::Any => free(port),
                PortParity::Even => port.is_multiple_of(2) && free(port),
                PortParity::EvenPair => {
                    port.is_multiple_of(2) && port < hi && free(port) && free(port + 1)
                }
            }
        };
        for _ in 0..PORT_PROBES {
            let port = self.rng.gen_range(lo..=hi);
            if fits(self, port) {
                return Some(port);
            }
        }
        let span = u32::from(hi - lo) + 1;
        let start = self.rng.gen_range(0..span);
        (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .find(|&port| fits(self, port))
    }

    fn refresh(
        &mut self,
        now: Instant,
        port: u16,
        msg: &StunMessage,
    ) -> Result<Reply, RequestError> {
        match msg
            .get_attribute::<RequestedAddressFamily>()
            .map(|f| f.address_family())
        {
            Some(AddressFamily::V6) => return Err(RequestError::PeerAddressFamilyMismatch),
            Some(AddressFamily::V4) | None => {}
        }
        let requested = msg.get_attribute::<Lifetime>();
        let mut response = Response::success(REFRESH, msg.transaction_id());
        if requested.is_some_and(|l| l.lifetime().is_zero()) {
            self.free_allocation(port, FreeReason::Deleted);
            response.push(Lifetime::from_u32(0));
            return Ok(Reply::Response(response));
        }
        let lifetime = self.granted_lifetime(requested);
        let expires = now + lifetime;
        if let Some(a) = self.allocations.get_mut(&port) {
            let old = std::mem::replace(&mut a.expires, expires);
            self.timers.remove(&(old, Timer::Allocation(port)));
            self.timers.insert((expires, Timer::Allocation(port)));
        }
        debug!(target: "relay", port, lifetime_s = lifetime.as_secs(), "allocation refreshed");
        response.push(lifetime_attribute(lifetime));
        Ok(Reply::Response(response))
    }

    fn create_permission(
        &mut self,
        now: Instant,
        port: u16,
        msg: &StunMessage,
    ) -> Result<Reply, RequestError> {
        let peers: Vec<SocketAddr> = msg
            .attributes()
            .filter_map(|a| {
                if let Attribute::XorPeerAddress(p) = a {
                    Some(p.address())
                } else {
                    None
                }
            })
            .collect();
        if peers.is_empty() {
            return Err(RequestError::BadRequest("no XOR-PEER-ADDRESS"));
        }
        if peers.len() > MAX_PEERS_PER_CREATE_PERMISSION {
            self.stats.permission_quota_refusals += 1;
            debug!(target: "relay", port, peers = peers.len(), max = MAX_PEERS_PER_CREATE_PERMISSION, "too many peers in one CreatePermission");
            return Err(RequestError::InsufficientCapacity(
                "too many XOR-PEER-ADDRESS in one request",
            ));
        }
        if peers.iter().any(SocketAddr::is_ipv6) {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        // One refused peer refuses the request: nothing is installed (RFC 8656 section 9.2).
        for peer in &peers {
            self.check_peer(*peer)?;
        }
        let ips: BTreeSet<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        self.check_permission_room(port, &ips)?;
        for peer in peers {
            self.install_permission(now, port, peer.ip());
        }
        Ok(Reply::Response(Response::success(
            CREATE_PERMISSION,
            msg.transaction_id(),
        )))
    }

    /// Refuses (508, counted) permissions for `ips` that would take the allocation past
    /// [`MAX_PERMISSIONS_PER_ALLOCATION`]; refreshing held ones always fits.
    fn check_permission_room(
        &mut self,
        port: u16,
        ips: &BTreeSet<IpAddr>,
    ) -> Result<(), RequestError> {
        let Some(a) = self.allocations.get(&port) else {
            return Ok(());
        };
        let new = ips
            .iter()
            .filter(|ip| !a.permissions.contains_key(ip))
            .count();
        if a.permissions.len() + new <= MAX_PERMISSIONS_PER_ALLOCATION {
            return Ok(());
        }
        self.stats.permission_quota_refusals += 1;
        debug!(target: "relay", port, held = a.permissions.len(), new, max = MAX_PERMISSIONS_PER_ALLOCATION, "permission limit reached");
        Err(RequestError::InsufficientCapacity(
            "permission limit of the allocation reached",
        ))
    }

    fn install_permission(&mut self, now: Instant, port: u16, ip: IpAddr) {
        let expires = now + self.config.permission_lifetime;
        if let Some(a) = self.allocations.get_mut(&port) {
            if let Some(old) = a.permit(ip, expires) {
                self.timers.remove(&(old, Timer::Permission(port, ip)));
            } else {
                debug!(target: "relay", port, peer = %ip, "permission installed");
            }
            self.timers.insert((expires, Timer::Permission(port, ip)));
        }
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        port: u16,
        msg: &StunMessage,
    ) -> Result<Reply, RequestError> {
        let channel = msg
            .get_attribute::<ChannelNumber>()
            .ok_or(RequestError::BadRequest("no CHANNEL-NUMBER"))?;
        if !channel.is_valid() {
            return Err(RequestError::BadRequest(
                "channel number outside 0x4000-0x7FFF",
            ));
        }
        let peer = msg
            .get_attribute::<XorPeerAddress>()
            .ok_or(RequestError::BadRequest("no XOR-PEER-ADDRESS"))?
            .address();
        if peer.is_ipv6() {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        self.check_peer(peer)?;
        self.check_permission_room(port, &BTreeSet::from([peer.ip()]))?;
        let channel = channel.value();
        let expires = now + self.config.channel_lifetime;
        let Some(a) = self.allocations.get_mut(&port) else {
            return Err(RequestError::AllocationMismatch(
                "no allocation on this 5-tuple",
            ));
        };
        // An expired binding still blocks its channel and peer until its timer sweeps it, which
        // happens at the same instant: sweep here so that rebinding after expiry works.
        a.expire_channel(channel, now);
        if let Some(&bound) = a.channel_by_peer.get(&peer) {
            a.expire_channel(bound, now);
        }
        a.check_bind(channel, peer)
            .map_err(|_| RequestError::BadRequest("channel or peer already bound"))?;
        match a.bind(channel, peer, expires) {
            Some(old) => {
                self.timers.remove(&(old, Timer::Channel(port, channel)));
            }
            None => debug!(target: "relay", port, channel, %peer, "channel bound"),
        }
        self.timers.insert((expires, Timer::Channel(port, channel)));
        self.install_permission(now, port, peer.ip());
        Ok(Reply::Response(Response::success(
            CHANNEL_BIND,
            msg.transaction_id(),
        )))
    }

    fn handle_send_indication(&mut self, now: Instant, five_tuple: FiveTuple, msg: &StunMessage) {
        let Some(port) = self.live_allocation_port(now, five_tuple) else {
            self.stats.dropped_no_allocation += 1;
            trace!(target: "relay", client = %five_tuple.client, "Send indication without allocation");
            return;
        };
        let (Some(peer), Some(data)) = (
            msg.get_attribute::<XorPeerAddress>(),
            msg.get_attribute::<Data>(),
        ) else {
            self.stats.dropped_other += 1;
            trace!(target: "relay", client = %five_tuple.client, "Send indication without XOR-PEER-ADDRESS or DATA");
            return;
        };
        // Unknown comprehension-required attributes make an indication void (RFC 8489 6.3.2).
        if !attributes::unknown_comprehension_required(msg).is_empty() {
            self.stats.dropped_other += 1;
            return;
        }
        let peer = peer.address();
        if let Some(denied) = self.denied_peer(peer) {
            self.stats.forbidden_peers += 1;
            trace!(target: "relay", port, %peer, %denied, "Send indication to a denied peer");
            return;
        }
        if !self
            .allocations
            .get(&port)
            .is_some_and(|a| a.has_permission(peer.ip(), now))
        {
            self.stats.dropped_no_permission += 1;
            trace!(target: "relay", port, %peer, "Send indication to a peer without permission");
            return;
        }
        self.stats.send_indications += 1;
        self.relay_to_peer(now, port, peer, data.data());
    }

    fn handle_client_channel_data(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
        frame: ChannelData<'_>,
    ) {
        let Some(port) = self.live_allocation_port(now, five_tuple) else {
            self.stats.dropped_no_allocation += 1;
            trace!(target: "relay", client = %five_tuple.client, "ChannelData without allocation");
            return;
        };
        let Some(allocation) = self.allocations.get(&port) else {
            return;
        };
        let Some(peer) = allocation.channel_peer(frame.channel(), now) else {
            self.stats.dropped_unbound_channel += 1;
            trace!(target: "relay", port, channel = frame.channel(), "ChannelData on an unbound channel");
            return;
        };
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        self.stats.channel_data_from_clients += 1;
        self.relay_to_peer(now, port, peer, frame.payload());
    }

    /// Refuses a peer of a denied range (counted; see [`DeniedRange`]).
    fn check_peer(&mut self, peer: SocketAddr) -> Result<(), RequestError> {
        match self.denied_peer(peer) {
            None => Ok(()),
            Some(denied) => {
                self.stats.forbidden_peers += 1;
                debug!(target: "relay", %peer, %denied, "peer refused");
                Err(RequestError::Forbidden(denied.as_str()))
            }
        }
    }

    /// The range `peer` is refused in, unless the configuration allows it.
    fn denied_peer(&self, peer: SocketAddr) -> Option<DeniedRange> {
        let ip = peer.ip().to_canonical();
        if self
            .config
            .allow_peers
            .iter()
            .any(|net| crate::peers::contains(net, ip))
        {
            return None;
        }
        if ip == IpAddr::V4(self.config.public_ip) {
            // Another allocation's relayed address is served inside the relay (`relay_to_peer`);
            // any other port of ours (the listening port, whatever else runs on the host) is not.
            return (!self.config.relay_ports.contains(&peer.port())).then_some(DeniedRange::Relay);
        }
        DeniedRange::of(ip)
    }

    fn live_allocation_port(&self, now: Instant, five_tuple: FiveTuple) -> Option<u16> {
        let port = *self.by_five_tuple.get(&five_tuple)?;
        self.allocations
            .get(&port)
            .filter(|a| a.is_live(now))
            .map(|_| port)
    }

    /// Sends `payload` from relay port `port` to `peer`; a peer that is one of this relay's own
    /// relayed addresses gets it directly, without a trip through the network.
    fn relay_to_peer(&mut self, now: Instant, port: u16, peer: SocketAddr, payload: &[u8]) {
        let src = self.relay_addr(port);
        if peer.ip() == IpAddr::V4(self.config.public_ip)
            && self.config.relay_ports.contains(&peer.port())
        {
            self.stats.relayed_internally += 1;
            self.handle_peer_datagram(now, src, peer.port(), payload);
            return;
        }
        trace!(target: "relay", %src, %peer, len = payload.len(), "relaying to peer");
        self.transmits.push_back(Transmit {
            src,
            dst: peer,
            payload: payload.to_vec(),
        });
    }

    // ---- peer side ---------------------------------------------------------------------------

    fn handle_peer_datagram(&mut self, now: Instant, from: SocketAddr, port: u16, payload: &[u8]) {
        let Some(allocation) = self.allocations.get(&port).filter(|a| a.is_live(now)) else {
            self.stats.dropped_no_allocation += 1;
            trace!(target: "relay", port, %from, "peer datagram for a port without allocation");
            return;
        };
        if !allocation.has_permission(from.ip(), now) {
            self.stats.dropped_no_permission += 1;
            trace!(target: "relay", port, %from, "peer datagram without permission");
            return;
        }
        let five_tuple = allocation.five_tuple;
        let frame = match allocation.peer_channel(from, now) {
            Some(channel) => {
                let frame = channel_data::encode(channel, payload);
                if frame.is_some() {
                    self.stats.channel_data_to_clients += 1;
                }
                frame
            }
            None => {
                let frame = self.data_indication(from, payload);
                if frame.is_some() {
                    self.stats.data_indications += 1;
                }
                frame
            }
        };
        let Some(payload) = frame else {
            self.stats.dropped_other += 1;
            trace!(target: "relay", port, %from, len = payload.len(), "peer datagram too large to relay");
            return;
        };
        trace!(target: "relay", port, %from, client = %five_tuple.client, "relaying to client");
        self.transmits.push_back(Transmit {
            src: five_tuple.server,
            dst: five_tuple.client,
            payload,
        });
    }

    fn data_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let data = Data::new(payload.to_vec()).ok()?;
        let mut msg = StunMessage::new(
            MessageClass::Indication,
            DATA,
            TransactionId::new(self.rng.gen()),
        );
        msg.add_attribute(XorPeerAddress::new(peer));
        msg.add_attribute(data);
        message::encode(msg)
    }

    fn free_allocation(&mut self, port: u16, reason: FreeReason) {
        let Some(a) = self.allocations.remove(&port) else {
            return;
        };
        self.by_five_tuple.remove(&a.five_tuple);
        let user = user_of(&a.username);
        if let Some(count) = self.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_user.remove(user);
            }
        }
        self.timers.remove(&(a.expires, Timer::Allocation(port)));
        for (ip, expires) in &a.permissions {
            self.timers
                .remove(&(*expires, Timer::Permission(port, *ip)));
        }
        for (channel, c) in &a.channels {
            self.timers
                .remove(&(c.expires, Timer::Channel(port, *channel)));
        }
        match reason {
            FreeReason::Deleted => self.stats.allocations_deleted += 1,
            FreeReason::Expired => self.stats.allocations_expired += 1,
            FreeReason::PortUnusable => {}
        }
        let relay = self.relay_addr(port);
        debug!(target: "relay", client = %a.five_tuple.client, %relay, ?reason, "allocation freed");
        self.events
            .push_back(Event::AllocationFreed { relay, reason });
    }
}

/// The user an allocation counts against: the id of a REST username `<expiry>:<id>`, or the whole
/// username if it is not one (it cannot be: it passed authentication).
fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, id)| id)
}

/// The expiry of a REST username (0 if it is not one).
fn expiry_of(username: &str) -> u64 {
    username
        .parse::<RestUsername>()
        .map_or(0, |rest| rest.expiry_unix())
}

fn check_unknown(msg: &StunMessage) -> Result<(), RequestError> {
    let unknown = attributes::unknown_comprehension_required(msg);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(RequestError::unknown(&unknown))
    }
}

fn lifetime_attribute(lifetime: Duration) -> Lifetime {
    Lifetime::from_u32(u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take a real Instant as their base
mod tests;
