//! One allocation on one relay: the node's TURN client (RFC 8656), sans-IO.
//!
//! It learns the server-reflexive address (Binding), holds a relayed address (Allocate,
//! refreshed at half its lifetime) and binds channels to peers on demand. Channel data may be
//! sent on a channel whose ChannelBind is still in flight: the relay handles datagrams in order,
//! so data sent right behind the bind is relayed, and nothing waits for a round trip.
//!
//! Requests are retransmitted with a doubling timeout; when one goes unanswered
//! [`MAX_ATTEMPTS`] times the relay is considered gone and the allocation fails.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, DATA, REFRESH};
use stun_codec::{Message, MessageClass, Method, TransactionId};

use super::message::{self, RelayMessage, StunMessage};
use crate::ids::RelayId;

/// First retransmission timeout; it doubles with every attempt.
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Attempts per request before the relay is considered unreachable (0.5+1+2+4+8 = 15.5 s).
pub const MAX_ATTEMPTS: u32 = 5;
/// Channel bindings last 10 minutes on the relay.
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A ChannelBind also refreshes its peer's permission, which lasts 5 minutes (RFC 8656 §9):
/// refreshed at half the channel's lifetime, the permission would end just as the refresh
/// travels, and datagrams in that gap are dropped by the relay. A minute before it ends.
const CHANNEL_REFRESH: Duration = Duration::from_secs(240);
/// The node binds channels in the RFC 5766 range; the relay accepts the wider RFC 8656 one.
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4FFF;
/// Channels one allocation binds at most: the whole range. A peer past it gets no channel
/// (and no relayed path) until a released one may be reused.
pub const MAX_CHANNELS: usize = (LAST_CHANNEL - FIRST_CHANNEL) as usize + 1;
/// How long a released channel stays out of use: its binding may have just been refreshed, so
/// it lives on at the relay for up to [`CHANNEL_LIFETIME`], and RFC 8656 §12 keeps an expired
/// channel from being bound to another peer for 5 minutes more.
const CHANNEL_QUARANTINE: Duration = Duration::from_secs(CHANNEL_LIFETIME.as_secs() + 300);
/// A Binding to the relay this often keeps the NAT mapping towards it open and notices a relay
/// that went away long before the next refresh would.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// How long to wait before allocating again when an old allocation holds our 5-tuple.
const ALLOCATE_RETRY: Duration = Duration::from_secs(60);
/// UDP, as REQUESTED-TRANSPORT wants it (RFC 8656 §18.7).
const UDP: u8 = 17;

const UNAUTHORIZED: u16 = 401;
const ALLOCATION_MISMATCH: u16 = 437;
const WRONG_CREDENTIALS: u16 = 441;
const STALE_NONCE: u16 = 438;
const FORBIDDEN: u16 = 403;

/// What the portal tells a node about a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's identity.
    pub id: RelayId,
    /// Where it listens (UDP 3478 by default).
    pub server: SocketAddr,
    /// TURN REST username (`<unix-expiry>:<id>`).
    pub username: String,
    /// TURN REST password.
    pub password: String,
}

/// What an allocation tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllocationEvent {
    /// Our address as the relay sees it.
    ServerReflexive { addr: SocketAddr, base: SocketAddr },
    /// The relayed address peers can send to.
    Relayed { addr: SocketAddr, base: SocketAddr },
    /// The relayed address is gone (expired, deleted, or the relay forgot it).
    RelayedLost { addr: SocketAddr, base: SocketAddr },
    /// The relay does not answer or refuses us: the allocation is dead.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Binding,
    Allocate,
    Refresh { lifetime: Duration },
    ChannelBind { channel: u16, peer: SocketAddr },
}

impl RequestKind {
    /// The STUN method of the request, which its response must carry too.
    fn method(&self) -> Method {
        match self {
            Self::Binding => BINDING,
            Self::Allocate => ALLOCATE,
            Self::Refresh { .. } => REFRESH,
            Self::ChannelBind { .. } => CHANNEL_BIND,
        }
    }
}

#[derive(Debug)]
struct Pending {
    kind: RequestKind,
    bytes: Vec<u8>,
    attempts: u32,
    next_at: Instant,
    /// The credentials it was signed with, if any (a 401 then means they are wrong): its answer
    /// is signed with the same ones, also when the allocation moved to renewed credentials
    /// meanwhile.
    signed_with: Option<(String, String)>,
    /// Whether it carried renewed credentials the relay has not yet taken (see
    /// [`Allocation::previous_credentials`]).
    renewing: bool,
}

impl Pending {
    fn is_signed(&self) -> bool {
        self.signed_with.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    bound: bool,
    /// When to send the next ChannelBind for it: a refresh, or none while one is in flight.
    refresh_at: Option<Instant>,
    /// No connection uses the peer any more: the channel is no longer refreshed, and is
    /// forgotten (free for another peer) at this instant, unless the peer is wanted again.
    released: Option<Instant>,
}

/// One allocation on one relay.
#[derive(Debug)]
pub(crate) struct Allocation {
    config: RelayConfig,
    /// The local address the relay's answers arrive on, once one has.
    local: Option<SocketAddr>,
    realm: Option<Realm>,
    nonce: Option<Nonce>,
    server_reflexive: Option<SocketAddr>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    pending: BTreeMap<TransactionId, Pending>,
    channels: BTreeMap<u16, Channel>,
    channel_by_peer: BTreeMap<SocketAddr, u16>,
    next_channel: u16,
    rng: ChaCha20Rng,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<AllocationEvent>,
    failed: bool,
    /// A 437 to Allocate was answered by deleting and allocating once; a second one is final.
    mismatch_retried: bool,
    /// When to try allocating again after the relay refused our 5-tuple.
    retry_allocate_at: Option<Instant>,
    /// Credentials announced after the ones in use: the allocation moves to them on its next
    /// refresh (or uses them when it has to be made again).
    next_credentials: Option<(String, String)>,
    /// The credentials in use before a move to renewed ones, until the relay takes those: a
    /// relay that refuses them (441: it holds an allocation to the very username that made it,
    /// as RFC 8656 has it) gets these back, and the move waits for the allocation to be made
    /// again.
    previous_credentials: Option<(String, String)>,
    /// The relay refused to move the allocation to renewed credentials: not tried again on it.
    renewal_refused: bool,
}

impl Allocation {
    /// Starts a Binding (for the server-reflexive address) and an Allocate.
    pub(crate) fn new(config: RelayConfig, seed: u64, now: Instant) -> Self {
        let mut allocation = Self {
            config,
            local: None,
            realm: None,
            nonce: None,
            server_reflexive: None,
            relayed: None,
            refresh_at: None,
            keepalive_at: Some(now + KEEPALIVE_INTERVAL),
            pending: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_by_peer: BTreeMap::new(),
            next_channel: FIRST_CHANNEL,
            rng: ChaCha20Rng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            failed: false,
            mismatch_retried: false,
            retry_allocate_at: None,
            next_credentials: None,
            previous_credentials: None,
            renewal_refused: false,
        };
        allocation.send(RequestKind::Binding, now);
        allocation.send(RequestKind::Allocate, now);
        allocation
    }

    pub(crate) fn id(&self) -> RelayId {
        self.config.id
    }

    /// Keeps fresh credentials, for the next refresh or the next time the allocation is made.
    pub(crate) fn set_next_credentials(&mut self, username: String, password: String) {
        if username != self.config.username || password != self.config.password {
            self.next_credentials = Some((username, password));
        }
    }

    /// Switches to the credentials announced last, if there are any; returns the ones they
    /// replace.
    fn take_next_credentials(&mut self) -> Option<(String, String)> {
        let (username, password) = self.next_credentials.take()?;
        let previous = (
            std::mem::replace(&mut self.config.username, username),
            std::mem::replace(&mut self.config.password, password),
        );
        Some(previous)
    }

    /// Moves the live allocation to the credentials announced last, before the ones it was
    /// made with expire: the requests from here on carry them.
    fn renew_credentials(&mut self) {
        if self.renewal_refused || self.previous_credentials.is_some() || self.relayed.is_none() {
            return;
        }
        if let Some(previous) = self.take_next_credentials() {
            tracing::debug!(target: "node::turn", rid = %self.config.id, "moving the allocation to renewed credentials");
            self.previous_credentials = Some(previous);
        }
    }

    /// The relay refused renewed credentials on this allocation: back to the ones it knows,
    /// keeping the new ones for when it has to be made again.
    fn undo_renewal(&mut self) {
        let Some((username, password)) = self.previous_credentials.take() else {
            return;
        };
        tracing::info!(target: "node::turn", rid = %self.config.id, "relay keeps the allocation to its first credentials; renewed ones wait for the next allocation");
        self.renewal_refused = true;
        self.next_credentials = Some((
            std::mem::replace(&mut self.config.username, username),
            std::mem::replace(&mut self.config.password, password),
        ));
    }

    /// The relay's settings, with the credentials announced last: what to allocate with again
    /// once this allocation is gone.
    pub(crate) fn into_config(mut self) -> RelayConfig {
        self.take_next_credentials();
        self.config
    }

    pub(crate) fn server(&self) -> SocketAddr {
        self.config.server
    }

    pub(crate) fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    pub(crate) fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    pub(crate) fn server_reflexive(&self) -> Option<SocketAddr> {
        self.server_reflexive
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed
    }

    /// The channel to `peer`, binding one if there is none yet. Data may be sent on it at once,
    /// also while its ChannelBind is still in flight (it is queued right behind the bind).
    pub(crate) fn channel_to(&mut self, peer: SocketAddr, now: Instant) -> Option<u16> {
        if self.failed || self.relayed.is_none() || peer.is_ipv4() != self.config.server.is_ipv4() {
            return None;
        }
        if let Some(&channel) = self.channel_by_peer.get(&peer) {
            // Wanted again while released: the same channel, bound afresh.
            if let Some(c) = self
                .channels
                .get_mut(&channel)
                .filter(|c| c.released.is_some())
            {
                c.released = None;
                c.refresh_at = None;
                self.send(RequestKind::ChannelBind { channel, peer }, now);
            }
            return Some(channel);
        }
        let channel = self.free_channel()?;
        self.channels.insert(
            channel,
            Channel {
                peer,
                bound: false,
                refresh_at: None,
                released: None,
            },
        );
        self.channel_by_peer.insert(peer, channel);
        tracing::debug!(target: "node::turn", rid = %self.config.id, %peer, channel, "binding channel");
        self.send(RequestKind::ChannelBind { channel, peer }, now);
        Some(channel)
    }

    /// Stops refreshing the channels to peers outside `in_use`; each is forgotten once its
    /// binding cannot be alive any more ([`CHANNEL_QUARANTINE`]). Returns how many it released.
    pub(crate) fn release_channels_except(
        &mut self,
        in_use: &std::collections::BTreeSet<SocketAddr>,
        now: Instant,
    ) -> usize {
        let mut released = 0;
        for (number, c) in &mut self.channels {
            if c.released.is_none() && !in_use.contains(&c.peer) {
                tracing::debug!(target: "node::turn", rid = %self.config.id, peer = %c.peer, channel = number, "channel released");
                c.released = Some(now + CHANNEL_QUARANTINE);
                c.refresh_at = None;
                released += 1;
            }
        }
        released
    }

    /// The channels whose `deadline` has come, with their peers.
    fn channels_due(
        &self,
        deadline: impl Fn(&Channel) -> Option<Instant>,
        now: Instant,
    ) -> Vec<(u16, SocketAddr)> {
        self.channels
            .iter()
            .filter(|(_, c)| deadline(c).is_some_and(|t| t <= now))
            .map(|(n, c)| (*n, c.peer))
            .collect()
    }

    /// Channels held, released ones included (at most [`MAX_CHANNELS`]).
    #[cfg(test)]
    fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn free_channel(&mut self) -> Option<u16> {
        let span = usize::from(LAST_CHANNEL - FIRST_CHANNEL) + 1;
        for _ in 0..span {
            let candidate = self.next_channel;
            self.next_channel = if candidate == LAST_CHANNEL {
                FIRST_CHANNEL
            } else {
                candidate + 1
            };
            if !self.channels.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Handles a parsed datagram from this relay that arrived on `local`. Returns the peer and
    /// its datagram when the message carried one.
    pub(crate) fn handle<'a>(
        &mut self,
        message: RelayMessage<'a>,
        local: SocketAddr,
        now: Instant,
    ) -> Option<(SocketAddr, Cow<'a, [u8]>)> {
        match message {
            RelayMessage::ChannelData { channel, payload } => {
                let Some(c) = self.channels.get(&channel) else {
                    tracing::debug!(target: "node::turn", rid = %self.config.id, channel, "data on an unknown channel");
                    return None;
                };
                Some((c.peer, Cow::Borrowed(payload)))
            }
            RelayMessage::Stun(message) => {
                if message.method() == DATA && message.class() == MessageClass::Indication {
                    // Rare: the node binds channels, so a copy out of the message is fine.
                    return message::data_indication(&message)
                        .map(|(peer, data)| (peer, Cow::Owned(data.to_vec())));
                }
                self.handle_response(*message, local, now);
                None
            }
        }
    }

    fn handle_response(&mut self, response: StunMessage, local: SocketAddr, now: Instant) {
        let Some(request) = self.pending.remove(&response.transaction_id()) else {
            // Late answers to retransmitted or abandoned requests end here.
            tracing::debug!(target: "node::turn", rid = %self.config.id, method = ?response.method(), "response to no pending request");
            return;
        };
        // The answer must be to the method we asked (RFC 8489 §6.3): a Binding success with a
        // relayed address must not complete an Allocate that shares its transaction id.
        if response.method() != request.kind.method() {
            tracing::debug!(target: "node::turn", rid = %self.config.id, method = ?response.method(), "response of another method");
            self.pending.insert(response.transaction_id(), request);
            return;
        }
        if !self.integrity_ok(&response, &request) {
            tracing::debug!(target: "node::turn", rid = %self.config.id, "response with bad MESSAGE-INTEGRITY");
            self.pending.insert(response.transaction_id(), request);
            return;
        }
        if self.local.is_none() {
            self.local = Some(local);
        }
        match response.class() {
            MessageClass::SuccessResponse => {
                if request.renewing && self.previous_credentials.take().is_some() {
                    tracing::debug!(target: "node::turn", rid = %self.config.id, "allocation moved to renewed credentials");
                }
                self.on_success(request.kind, &response, now);
            }
            MessageClass::ErrorResponse => self.on_error(request, &response, now),
            MessageClass::Request | MessageClass::Indication => {
                tracing::debug!(target: "node::turn", rid = %self.config.id, "unexpected message class");
            }
        }
    }

    /// Success responses to anything but a Binding must carry MESSAGE-INTEGRITY made with our
    /// key (RFC 8489 §9.2.4), so nobody without the password can forge a relayed address or a
    /// channel. That includes the first, unauthenticated Allocate: a relay using long-term
    /// credentials always challenges it (RFC 8656 §7.2), so an unsigned success to it is forged
    /// (found by the `relay_ops` fuzz target). A wrong one is dropped and the real answer may
    /// still come. Error responses (401, 438) cannot be protected and are taken as they are.
    fn integrity_ok(&self, response: &StunMessage, request: &Pending) -> bool {
        // An error cannot grant anything; at worst it makes us retry. A relay that signs a 437
        // with the key of the allocation in the way (a previous holder of our NAT port) must
        // still be heard, or we would retransmit into it until the relay counts as dead.
        if response.class() != MessageClass::SuccessResponse {
            return true;
        }
        let integrity = response.get_attribute::<MessageIntegrity>();
        let (Some(realm), Some(integrity)) = (&self.realm, integrity) else {
            // A Binding carries no credentials and is answered unsigned.
            return !request.is_signed() && matches!(request.kind, RequestKind::Binding);
        };
        let (username, password) = request
            .signed_with
            .as_ref()
            .map_or((&self.config.username, &self.config.password), |(u, p)| {
                (u, p)
            });
        let Ok(username) = Username::new(username.clone()) else {
            return false;
        };
        integrity
            .check_long_term_credential(&username, realm, password)
            .is_ok()
    }

    fn on_success(&mut self, kind: RequestKind, response: &StunMessage, now: Instant) {
        let base = self.local.unwrap_or(self.config.server);
        match kind {
            RequestKind::Binding => {
                if let Some(mapped) = response.get_attribute::<XorMappedAddress>() {
                    let moved = self
                        .server_reflexive
                        .is_some_and(|known| known != mapped.address());
                    self.set_server_reflexive(mapped.address(), base);
                    if moved && self.relayed.is_some() {
                        // Our NAT gave us a new public port: the relay keys allocations by
                        // 5-tuple, so ours is now unreachable (and expires on its own).
                        tracing::info!(target: "node::turn", rid = %self.config.id, mapped = %mapped.address(), "public address changed; allocating again");
                        self.reset(now);
                    }
                }
            }
            RequestKind::Allocate => {
                if let Some(mapped) = response.get_attribute::<XorMappedAddress>() {
                    self.set_server_reflexive(mapped.address(), base);
                }
                let lifetime = response
                    .get_attribute::<Lifetime>()
                    .map_or(Duration::from_secs(600), Lifetime::lifetime);
                self.refresh_at = Some(now + lifetime / 2);
                if let Some(relayed) = response.get_attribute::<XorRelayAddress>() {
                    let addr = relayed.address();
                    tracing::info!(target: "node::turn", rid = %self.config.id, relayed = %addr, ?lifetime, "allocated");
                    self.relayed = Some(addr);
                    self.events
                        .push_back(AllocationEvent::Relayed { addr, base });
                }
            }
            RequestKind::Refresh { lifetime } => {
                if lifetime.is_zero() {
                    tracing::debug!(target: "node::turn", rid = %self.config.id, "allocation deleted");
                    return;
                }
                let granted = response
                    .get_attribute::<Lifetime>()
                    .map_or(lifetime, Lifetime::lifetime);
                self.refresh_at = Some(now + granted / 2);
            }
            RequestKind::ChannelBind { channel, peer } => {
                if let Some(c) = self.channels.get_mut(&channel) {
                    if c.peer == peer {
                        c.bound = true;
                        // A channel released meanwhile stays unrefreshed.
                        if c.released.is_none() {
                            c.refresh_at = Some(now + CHANNEL_REFRESH);
                        }
                    }
                }
            }
        }
    }

    fn on_error(&mut self, request: Pending, response: &StunMessage, now: Instant) {
        let code = response
            .get_attribute::<ErrorCode>()
            .map_or(0, ErrorCode::code);
        let rid = self.config.id;
        let current = Some((&self.config.username, &self.config.password));
        let stale = request.signed_with.as_ref().map(|(u, p)| (u, p)) != current;
        match code {
            // Renewed credentials on a relay that holds an allocation to the username that made
            // it: back to that one.
            WRONG_CREDENTIALS if request.renewing => {
                self.undo_renewal();
                self.send(request.kind, now);
            }
            // Signed with credentials the allocation has since left (the request was in flight
            // during a move, or before an undone one): asked again with the current ones.
            UNAUTHORIZED | WRONG_CREDENTIALS if request.is_signed() && stale => {
                self.send(request.kind, now);
            }
            // Our credentials expired (or were replaced); newer ones start a new allocation.
            UNAUTHORIZED if request.is_signed() && self.next_credentials.is_some() => {
                tracing::info!(target: "node::turn", rid = %rid, "credentials refused; allocating with the new ones");
                self.reset(now);
            }
            UNAUTHORIZED if !request.is_signed() => {
                // The expected first answer: it brings the realm and nonce to authenticate with.
                self.realm = response.get_attribute::<Realm>().cloned();
                self.nonce = response.get_attribute::<Nonce>().cloned();
                if self.realm.is_none() || self.nonce.is_none() {
                    tracing::debug!(target: "node::turn", rid = %rid, "401 without realm or nonce");
                    return self.fail();
                }
                self.send(request.kind, now);
            }
            STALE_NONCE => {
                self.nonce = response.get_attribute::<Nonce>().cloned();
                self.send(request.kind, now);
            }
            // The 5-tuple now belongs to another allocation (our NAT mapping moved onto a port
            // someone else allocated from): ours is gone from here.
            WRONG_CREDENTIALS
                if matches!(
                    request.kind,
                    RequestKind::Refresh { lifetime } if !lifetime.is_zero()
                ) || matches!(request.kind, RequestKind::ChannelBind { .. }) =>
            {
                tracing::info!(target: "node::turn", rid = %rid, "relay knows our 5-tuple under other credentials; allocating again");
                self.reset(now);
            }
            ALLOCATION_MISMATCH => match request.kind {
                RequestKind::Allocate if !self.mismatch_retried => {
                    // A previous allocation from this 5-tuple is still there (ours, from before
                    // a lost response): delete it and try once more.
                    self.mismatch_retried = true;
                    self.send(
                        RequestKind::Refresh {
                            lifetime: Duration::ZERO,
                        },
                        now,
                    );
                    self.send(RequestKind::Allocate, now);
                }
                RequestKind::Allocate => {
                    // Someone else's allocation holds this 5-tuple (a previous holder of our
                    // NAT port); only its expiry frees it. The relay still answers Bindings, so
                    // the server-reflexive address stays; allocating is tried again later.
                    tracing::info!(target: "node::turn", rid = %rid, "5-tuple still allocated on the relay; trying again later");
                    self.retry_allocate_at = Some(now + ALLOCATE_RETRY);
                }
                RequestKind::Refresh { .. } | RequestKind::ChannelBind { .. } => {
                    // The relay forgot us (it restarted): start over.
                    tracing::info!(target: "node::turn", rid = %rid, "relay lost our allocation; allocating again");
                    self.reset(now);
                }
                RequestKind::Binding => {}
            },
            // A peer the relay's policy refuses (a private host candidate, say): expected, and
            // the path through that peer simply does not exist.
            FORBIDDEN if matches!(request.kind, RequestKind::ChannelBind { .. }) => {
                tracing::debug!(target: "node::turn", rid = %rid, kind = ?request.kind, "relay refuses that peer");
                if let RequestKind::ChannelBind { channel, peer } = request.kind {
                    self.forget_channel(channel, peer);
                }
            }
            // Deleting an allocation that is not ours (or already gone): nothing to undo.
            _ if matches!(request.kind, RequestKind::Refresh { lifetime } if lifetime.is_zero()) => {
                tracing::debug!(target: "node::turn", rid = %rid, code, "relay refused the deletion");
            }
            _ => {
                tracing::warn!(target: "node::turn", rid = %rid, code, kind = ?request.kind, "relay refused request");
                match request.kind {
                    RequestKind::ChannelBind { channel, peer } => {
                        self.forget_channel(channel, peer)
                    }
                    RequestKind::Allocate | RequestKind::Refresh { .. } => self.fail(),
                    RequestKind::Binding => {}
                }
            }
        }
    }

    fn set_server_reflexive(&mut self, addr: SocketAddr, base: SocketAddr) {
        if self.server_reflexive != Some(addr) {
            self.server_reflexive = Some(addr);
            self.events
                .push_back(AllocationEvent::ServerReflexive { addr, base });
        }
    }

    fn forget_channel(&mut self, channel: u16, peer: SocketAddr) {
        self.channels.remove(&channel);
        if self.channel_by_peer.get(&peer) == Some(&channel) {
            self.channel_by_peer.remove(&peer);
        }
    }

    /// Drops the relayed address and every channel, and allocates anew.
    fn reset(&mut self, now: Instant) {
        self.previous_credentials = None;
        self.renewal_refused = false;
        self.take_next_credentials();
        self.lose_relayed();
        self.channels.clear();
        self.channel_by_peer.clear();
        self.pending.clear();
        self.refresh_at = None;
        self.send(RequestKind::Allocate, now);
    }

    fn lose_relayed(&mut self) {
        if let Some(addr) = self.relayed.take() {
            let base = self.local.unwrap_or(self.config.server);
            self.events
                .push_back(AllocationEvent::RelayedLost { addr, base });
        }
    }

    fn fail(&mut self) {
        if self.failed {
            return;
        }
        tracing::info!(target: "node::turn", rid = %self.config.id, "relay failed");
        self.failed = true;
        self.lose_relayed();
        self.pending.clear();
        self.channels.clear();
        self.channel_by_peer.clear();
        self.refresh_at = None;
        self.keepalive_at = None;
        self.events.push_back(AllocationEvent::Failed);
    }

    /// Deletes the allocation on the relay (best effort, not retransmitted).
    pub(crate) fn release(&mut self, now: Instant) {
        if self.relayed.is_some() && !self.failed {
            self.send(
                RequestKind::Refresh {
                    lifetime: Duration::ZERO,
                },
                now,
            );
        }
        self.pending.clear();
    }

    /// Sends every pending request once more, now, as the same transaction: its schedule of
    /// retransmissions and its deadline stay as they are. For a caller that has reason to think
    /// the relay answers again (see `Node::try_relays_now`).
    pub(crate) fn resend_pending(&mut self) {
        if self.failed {
            return;
        }
        self.transmits
            .extend(self.pending.values().map(|p| p.bytes.clone()));
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        let due: Vec<TransactionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.attempts >= MAX_ATTEMPTS {
                tracing::info!(target: "node::turn", rid = %self.config.id, kind = ?p.kind, "request unanswered");
                self.fail();
                return;
            }
            p.attempts += 1;
            p.next_at = now + INITIAL_RTO * 2u32.pow(p.attempts - 1);
            self.transmits.push_back(p.bytes.clone());
        }
        if self.retry_allocate_at.is_some_and(|t| t <= now) {
            self.retry_allocate_at = None;
            self.mismatch_retried = false;
            self.send(RequestKind::Allocate, now);
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.keepalive_at = Some(now + KEEPALIVE_INTERVAL);
            if !self
                .pending
                .values()
                .any(|p| p.kind == RequestKind::Binding)
            {
                self.send(RequestKind::Binding, now);
            }
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            self.renew_credentials();
            self.send(
                RequestKind::Refresh {
                    lifetime: Duration::from_secs(600),
                },
                now,
            );
        }
        for (channel, peer) in self.channels_due(|c| c.released, now) {
            self.forget_channel(channel, peer);
        }
        for (channel, peer) in self.channels_due(|c| c.refresh_at, now) {
            if let Some(c) = self.channels.get_mut(&channel) {
                c.refresh_at = None;
            }
            self.send(RequestKind::ChannelBind { channel, peer }, now);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let pending = self.pending.values().map(|p| p.next_at);
        let channels = self
            .channels
            .values()
            .flat_map(|c| c.refresh_at.into_iter().chain(c.released));
        pending
            .chain(channels)
            .chain(self.refresh_at)
            .chain(self.keepalive_at)
            .chain(self.retry_allocate_at)
            .min()
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<AllocationEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, kind: RequestKind, now: Instant) {
        let id = message::transaction_id(&mut self.rng);
        let (method, authenticate): (Method, bool) = match kind {
            RequestKind::Binding => (BINDING, false),
            RequestKind::Allocate => (ALLOCATE, self.realm.is_some()),
            RequestKind::Refresh { .. } => (REFRESH, true),
            RequestKind::ChannelBind { .. } => (CHANNEL_BIND, true),
        };
        let mut request: StunMessage = Message::new(MessageClass::Request, method, id);
        match kind {
            RequestKind::Binding => {}
            RequestKind::Allocate => {
                request.add_attribute(RequestedTransport::new(UDP));
            }
            RequestKind::Refresh { lifetime } => {
                if let Ok(l) = Lifetime::new(lifetime) {
                    request.add_attribute(l);
                }
            }
            RequestKind::ChannelBind { channel, peer } => {
                let Ok(number) = ChannelNumber::new(channel) else {
                    return;
                };
                request.add_attribute(number);
                request.add_attribute(XorPeerAddress::new(peer));
            }
        }
        if authenticate && !self.authenticate(&mut request) {
            return;
        }
        let signed_with =
            authenticate.then(|| (self.config.username.clone(), self.config.password.clone()));
        let Some(bytes) = message::encode(request) else {
            tracing::debug!(target: "node::turn", "could not encode request");
            return;
        };
        self.transmits.push_back(bytes.clone());
        self.pending.insert(
            id,
            Pending {
                kind,
                bytes,
                attempts: 1,
                next_at: now + INITIAL_RTO,
                signed_with,
                renewing: authenticate && self.previous_credentials.is_some(),
            },
        );
    }

    /// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY; false if we cannot yet.
    fn authenticate(&self, request: &mut StunMessage) -> bool {
        let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) else {
            return false;
        };
        let Ok(username) = Username::new(self.config.username.clone()) else {
            return false;
        };
        request.add_attribute(username.clone());
        request.add_attribute(realm.clone());
        request.add_attribute(nonce.clone());
        match MessageIntegrity::new_long_term_credential(
            request,
            &username,
            realm,
            &self.config.password,
        ) {
            Ok(integrity) => {
                request.add_attribute(integrity);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]

    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    const SECRET: &str = "test-secret";
    const UNIX: u64 = 1_800_000_000;

    fn client() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 40000)
    }

    fn server_addr() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 3478)
    }

    fn peer() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 51820)
    }

    fn setup(now: Instant) -> (Allocation, relay_sim::Server) {
        let server = relay_sim::Server::new(
            relay_sim::Config::new("test", SECRET, Ipv4Addr::new(203, 0, 113, 1)),
            [7; 32],
            now,
            UNIX,
        )
        .unwrap();
        let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 3600, "c1");
        let config = RelayConfig {
            id: RelayId(1),
            server: server_addr(),
            username,
            password,
        };
        (Allocation::new(config, 1, now), server)
    }

    /// Carries datagrams both ways until both sides are quiet; returns how many went to the relay.
    fn exchange(a: &mut Allocation, s: &mut relay_sim::Server, now: Instant) -> usize {
        let mut sent = 0;
        loop {
            let mut moved = false;
            while let Some(bytes) = a.poll_transmit() {
                s.handle_input(now, client(), server_addr(), &bytes);
                sent += 1;
                moved = true;
            }
            while s.poll_event().is_some() {}
            while let Some(t) = s.poll_transmit() {
                if t.dst == client() {
                    let message = RelayMessage::parse(&t.payload).unwrap();
                    a.handle(message, client(), now);
                    moved = true;
                }
            }
            if !moved {
                return sent;
            }
        }
    }

    fn events(a: &mut Allocation) -> Vec<AllocationEvent> {
        std::iter::from_fn(|| a.poll_event()).collect()
    }

    #[test]
    fn allocates_after_the_401_challenge() {
        let now = Instant::now();
        let (mut a, mut s) = setup(now);
        let sent = exchange(&mut a, &mut s, now);
        assert_eq!(
            sent, 3,
            "binding, unauthenticated allocate, authenticated allocate"
        );
        let events = events(&mut a);
        assert!(
            matches!(events[0], AllocationEvent::ServerReflexive { addr, .. } if addr == client())
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, AllocationEvent::Relayed { addr, .. } if addr.ip() == server_addr().ip())));
        assert!(a.relayed().is_some());
        assert_eq!(s.allocation_count(), 1);
    }

    /// Regression (relay_ops fuzz target): an on-path attacker who saw the transaction id of
    /// the first, unauthenticated Allocate answered it with an unsigned success carrying a
    /// relayed address of its choosing, once as an Allocate and once as a Binding response;
    /// both were taken. Now neither is, and the real exchange still completes.
    #[test]
    fn unsigned_or_mismatched_success_to_the_first_allocate_is_ignored() {
        use bytecodec::EncodeExt;

        let now = Instant::now();
        let (mut a, mut s) = setup(now);
        let requests: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let allocate = requests
            .iter()
            .find_map(|bytes| match RelayMessage::parse(bytes) {
                Ok(RelayMessage::Stun(m)) if m.method() == ALLOCATE => Some(m.transaction_id()),
                _ => None,
            })
            .unwrap();
        let forged: SocketAddr = "6.6.6.6:666".parse().unwrap();
        for method in [ALLOCATE, BINDING] {
            let mut response: StunMessage =
                Message::new(MessageClass::SuccessResponse, method, allocate);
            response.add_attribute(XorRelayAddress::new(forged));
            let bytes = stun_codec::MessageEncoder::new()
                .encode_into_bytes(response)
                .unwrap();
            a.handle(RelayMessage::parse(&bytes).unwrap(), client(), now);
            assert_eq!(a.relayed(), None, "took a forged {method:?} answer");
        }
        for bytes in requests {
            s.handle_input(now, client(), server_addr(), &bytes);
        }
        while let Some(t) = s.poll_transmit() {
            a.handle(RelayMessage::parse(&t.payload).unwrap(), client(), now);
        }
        exchange(&mut a, &mut s, now);
        assert!(a.relayed().is_some_and(|r| r != forged));
    }

    #[test]
    fn channel_data_may_follow_a_bind_in_flight_and_a_peer_is_bound_once() {
        let now = Instant::now();
        let (mut a, mut s) = setup(now);
        exchange(&mut a, &mut s, now);
        let channel = a.channel_to(peer(), now).unwrap();
        assert_eq!(
            a.channel_to(peer(), now),
            Some(channel),
            "in flight: same channel, no new bind"
        );
        let binds: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert_eq!(binds.len(), 1);
        // The data goes right behind the bind; the relay takes both in order.
        s.handle_input(now, client(), server_addr(), &binds[0]);
        let mut data = message::channel_data_header(channel, 5).to_vec();
        data.extend_from_slice(b"hello");
        s.handle_input(now, client(), server_addr(), &data);
        let to_peer: Vec<_> = std::iter::from_fn(|| s.poll_transmit())
            .filter(|t| t.dst == peer())
            .collect();
        assert_eq!(to_peer.len(), 1);
        assert_eq!(to_peer[0].payload, b"hello");
    }

    #[test]
    fn late_responses_are_ignored() {
        let now = Instant::now();
        let (mut a, mut s) = setup(now);
        // Every request is sent twice (a retransmission), so every answer arrives twice.
        let first: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit()).collect();
        for bytes in first.iter().chain(first.iter()) {
            s.handle_input(now, client(), server_addr(), bytes);
        }
        let answers: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(answers.len(), 4);
        for t in &answers {
            a.handle(RelayMessage::parse(&t.payload).unwrap(), client(), now);
        }
        let events = events(&mut a);
        assert_eq!(
            events.len(),
            1,
            "one server-reflexive address, no duplicates: {events:?}"
        );
        assert!(!a.is_failed());
    }

    #[test]
    fn a_silent_relay_fails_the_allocation_after_the_retransmissions() {
        let start = Instant::now();
        let (mut a, _) = setup(start);
        assert_eq!(std::iter::from_fn(|| a.poll_transmit()).count(), 2);
        let mut sent = 0;
        let mut now = start;
        while let Some(t) = a.poll_timeout() {
            now = t;
            a.handle_timeout(now);
            sent += std::iter::from_fn(|| a.poll_transmit()).count();
            if a.is_failed() {
                break;
            }
        }
        assert!(a.is_failed());
        assert_eq!(events(&mut a), vec![AllocationEvent::Failed]);
        assert_eq!(
            sent,
            2 * (MAX_ATTEMPTS as usize - 1),
            "retransmissions of both requests"
        );
        let waited = now - start;
        assert_eq!(
            waited,
            Duration::from_millis(15_500),
            "0.5 + 1 + 2 + 4 + 8 s"
        );
    }

    #[test]
    fn pending_requests_sent_again_reach_a_relay_that_came_back_within_their_schedule() {
        let start = Instant::now();
        let (mut a, mut s) = setup(start);
        // The relay is down: the first sends and the retransmissions up to the last are lost.
        let mut now = start;
        std::iter::from_fn(|| a.poll_transmit()).for_each(drop);
        while let Some(t) = a
            .poll_timeout()
            .filter(|t| *t < start + Duration::from_secs(8))
        {
            now = t;
            a.handle_timeout(now);
            std::iter::from_fn(|| a.poll_transmit()).for_each(drop);
        }
        // It is back; the last retransmission went before, and the next step is the failure.
        let deadline = a.poll_timeout().unwrap();
        assert_eq!(deadline, start + Duration::from_millis(15_500));
        now += Duration::from_secs(2);
        a.resend_pending();
        exchange(&mut a, &mut s, now);
        assert!(a.relayed().is_some(), "allocated with the copies sent now");
        assert!(!a.is_failed());
        assert!(
            a.poll_timeout().is_some_and(|t| t > deadline),
            "no failure due"
        );
        // An allocation that is failed sends nothing.
        let (mut failed, _) = setup(start);
        failed.fail();
        std::iter::from_fn(|| failed.poll_transmit()).for_each(drop);
        failed.resend_pending();
        assert_eq!(failed.poll_transmit(), None);
    }

    #[test]
    fn a_stale_nonce_is_replaced_and_the_request_repeated() {
        let now = Instant::now();
        let (mut a, mut s) = setup(now);
        exchange(&mut a, &mut s, now);
        a.nonce = Some(Nonce::new("not-the-relays-nonce".to_owned()).unwrap());
        a.channel_to(peer(), now).unwrap();
        exchange(&mut a, &mut s, now);
        let channel = *a
            .channels
            .values()
            .next()
            .map(|c| c.bound)
            .iter()
            .next()
            .unwrap();
        assert!(channel, "bound after the 438 retry");
    }

    /// An allocation made with credentials expiring `expires_in` after `now`, allocated.
    fn allocated_with(expires_in: u64, now: Instant) -> (Allocation, relay_sim::Server) {
        let (mut a, s) = setup(now);
        (a.config.username, a.config.password) =
            relay_sim::auth::rest_credentials(SECRET, UNIX + expires_in, "c1");
        let mut s = s;
        exchange(&mut a, &mut s, now);
        assert!(a.relayed().is_some());
        events(&mut a);
        (a, s)
    }

    /// Runs both sides on their own timers until `end`; returns the allocation's events.
    fn run_until(
        a: &mut Allocation,
        s: &mut relay_sim::Server,
        mut now: Instant,
        end: Instant,
    ) -> Vec<(Instant, AllocationEvent)> {
        let mut out = Vec::new();
        while now < end {
            now = [a.poll_timeout(), s.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .clamp(now, end);
            a.handle_timeout(now);
            s.handle_timeout(now);
            exchange(a, s, now);
            out.extend(std::iter::from_fn(|| a.poll_event()).map(|e| (now, e)));
        }
        out
    }

    #[test]
    fn renewed_credentials_move_the_allocation_without_losing_it() {
        let now = Instant::now();
        // Credentials good for 20 minutes; the portal's renewal comes after 10.
        let (mut a, mut s) = allocated_with(1200, now);
        let relayed = a.relayed();
        let mid = now + Duration::from_secs(600);
        assert!(run_until(&mut a, &mut s, now, mid).is_empty());
        let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 5000, "c1");
        a.set_next_credentials(username.clone(), password);
        // Well past the first expiry: the allocation lives on under the new credentials.
        let events = run_until(&mut a, &mut s, mid, now + Duration::from_secs(3600));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(a.relayed(), relayed);
        assert_eq!(a.config.username, username);
        assert!(a.previous_credentials.is_none());
        let stats = s.stats();
        assert_eq!(stats.credentials_renewed, 1);
        assert_eq!(stats.expired_credentials, 0);
        assert_eq!(stats.allocations_created, 1);
        assert_eq!(s.allocation_count(), 1);
    }

    #[test]
    fn a_relay_that_keeps_the_first_credentials_gets_them_back_until_they_expire() {
        let now = Instant::now();
        let (mut a, mut s) = allocated_with(1200, now);
        let relayed = a.relayed();
        // Another user's credentials stand for a relay that refuses the move (441), as RFC
        // 8656 relays do.
        let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 5000, "c9");
        a.set_next_credentials(username.clone(), password);
        let first_expiry = now + Duration::from_secs(1200);
        let events = run_until(&mut a, &mut s, now, first_expiry);
        assert!(
            events.is_empty(),
            "nothing lost before the expiry: {events:?}"
        );
        assert!(a.renewal_refused);
        assert_eq!(a.relayed(), relayed);
        assert_ne!(a.config.username, username);
        assert_eq!(s.stats().credentials_renewed, 0);
        // At the expiry the refused refresh makes the allocation again, with the new ones.
        let events = run_until(
            &mut a,
            &mut s,
            first_expiry,
            now + Duration::from_secs(1800),
        );
        assert!(
            events
                .iter()
                .any(|(_, e)| matches!(e, AllocationEvent::RelayedLost { .. })),
            "{events:?}"
        );
        assert_eq!(a.config.username, username);
    }

    fn peer_n(n: usize) -> SocketAddr {
        let n = u32::try_from(n).unwrap();
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xC612_0000 + n)), 51820)
    }

    #[test]
    fn channels_stop_at_the_range_and_released_ones_come_back_after_their_quarantine() {
        let now = Instant::now();
        let (mut a, _s) = allocated_with(3600, now);
        for n in 0..MAX_CHANNELS {
            assert!(a.channel_to(peer_n(n), now).is_some(), "channel {n}");
        }
        // Cap + 1: no channel for one more peer.
        let extra = peer_n(MAX_CHANNELS);
        assert_eq!(a.channel_to(extra, now), None);
        assert_eq!(a.channel_count(), MAX_CHANNELS);
        // Every peer but the first is no longer used.
        let first = a.channel_to(peer_n(0), now);
        let in_use = std::collections::BTreeSet::from([peer_n(0)]);
        assert_eq!(a.release_channels_except(&in_use, now), MAX_CHANNELS - 1);
        // Released, not yet free: a binding may still be alive at the relay.
        let later = now + CHANNEL_QUARANTINE - Duration::from_secs(1);
        a.handle_timeout(later);
        assert_eq!(a.channel_to(extra, later), None);
        // A released peer wanted again keeps its channel, bound afresh.
        let again = a.channel_to(peer_n(1), later);
        assert!(again.is_some());
        assert!(a
            .pending
            .values()
            .any(|p| matches!(p.kind, RequestKind::ChannelBind { peer, .. } if peer == peer_n(1))));
        // Past the quarantine the others are forgotten and their numbers serve new peers.
        let after = now + CHANNEL_QUARANTINE;
        a.handle_timeout(after);
        assert_eq!(a.channel_count(), 2);
        let fresh = a.channel_to(extra, after);
        assert!(fresh.is_some());
        assert_ne!(fresh, first);
        assert_ne!(fresh, again);
        assert_eq!(a.channel_to(peer_n(0), after), first);
    }
}
