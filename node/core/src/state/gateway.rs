//! The gateway's tunnel: authorizations with expiry, and the packet filter they drive.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use boringtun::x25519::StaticSecret;

use super::authorizations::Authorizations;
use super::icmp::prohibited_reply;
use super::{apply_relays_presence, earliest, replace_relays, WallClock};
use crate::crypto::Decryption;
use crate::ids::{ClientId, ResourceId};
use crate::packet::IpPacket;
use crate::pool::Buffer;
use crate::portal::messages::{
    AuthorizeFlow, ClientCandidates, FlowAccepted, FlowClient, GatewayEgress, GatewayIngress,
    GatewayInit,
};
use crate::portal::{AccessRevoked, ResourceDescription};
use crate::{Event, FailReason, Node, PublicKey, Role, Transmit};

/// Why a client lost access to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEndReason {
    /// The authorization reached its expiry.
    Expired,
    /// The portal revoked it.
    Revoked,
    /// The resource was deleted.
    ResourceDeleted,
    /// A fresh `init` from the portal no longer listed it.
    NotInInit,
}

/// What the gateway tells its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayEvent {
    /// Packets flow with this client.
    ClientConnected(ClientId),
    /// The connection to this client is gone; its authorizations stay.
    ClientDisconnected {
        /// The client.
        client: ClientId,
        /// Why.
        reason: FailReason,
    },
    /// A client may no longer reach a resource (e.g. to flush connection tracking).
    FlowEnded {
        /// The client.
        client: ClientId,
        /// The resource.
        resource: ResourceId,
        /// Why.
        reason: FlowEndReason,
    },
}

/// Counters of what the gateway dropped, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GatewayStats {
    /// Tunnel packets whose source is not the sending client's tunnel address.
    pub wrong_source: u64,
    /// Tunnel packets to a destination the client is not (or no longer) authorized for;
    /// each is answered with ICMP "administratively prohibited".
    pub unauthorized: u64,
    /// Tunnel packets from a client the gateway holds no record of.
    pub unknown_client: u64,
    /// TUN packets to an address that is no client's.
    pub unknown_destination: u64,
    /// TUN packets to a client from outside every resource it is authorized for.
    pub unauthorized_reply: u64,
    /// Packets the node refused to encrypt.
    pub encapsulate_errors: u64,
}

/// A client the portal authorized: its tunnel addresses.
#[derive(Debug, Clone, Copy)]
struct Client {
    ipv4: IpAddr,
    ipv6: IpAddr,
}

/// The gateway: a [`Node<ClientId>`](Node) plus clients, resources and authorizations.
///
/// See the [module docs](super) for how to drive it. A client's packet reaches the resource
/// network only if its source is the client's tunnel address and its destination lies in a
/// resource the client holds an unexpired authorization for. Authorizations end at their
/// expiry (checked per packet, and removed by [`GatewayState::handle_timeout`]), when the
/// portal revokes them, when their resource is deleted, or when a fresh `init` omits them;
/// never because a connection failed. A client with no authorization left is forgotten (its
/// packets are dropped), but its connection stays until it fails: the client is not told that
/// its access ended and keeps its side, so a later flow must find the same connection here
/// (closing it would leave the client sending into a session the gateway no longer has).
pub struct GatewayState {
    node: Node<ClientId>,
    clock: WallClock,
    clients: BTreeMap<ClientId, Client>,
    by_ip: BTreeMap<IpAddr, ClientId>,
    resources: BTreeMap<ResourceId, ResourceDescription>,
    authorizations: Authorizations,
    egress: VecDeque<GatewayEgress>,
    events: VecDeque<GatewayEvent>,
    stats: GatewayStats,
}

impl GatewayState {
    /// A gateway whose key and every other random choice come from `seed`. `wall_clock` is
    /// the wall-clock time at `now`: it maps the portal's unix expiry times onto instants.
    pub fn new(seed: u64, now: Instant, wall_clock: SystemTime) -> Self {
        Self::from_node(Node::new(Role::Gateway, seed, now), now, wall_clock)
    }

    /// A gateway with its static key and the 32-byte seed of its other random choices (see
    /// [`Node::from_secrets`]).
    pub fn from_secrets(
        private_key: StaticSecret,
        rng_seed: [u8; 32],
        now: Instant,
        wall_clock: SystemTime,
    ) -> Self {
        let node = Node::from_secrets(Role::Gateway, private_key, rng_seed, now);
        Self::from_node(node, now, wall_clock)
    }

    /// A gateway with a configured static key.
    pub fn with_private_key(
        private_key: StaticSecret,
        seed: u64,
        now: Instant,
        wall_clock: SystemTime,
    ) -> Self {
        let node = Node::with_private_key(Role::Gateway, private_key, seed, now);
        Self::from_node(node, now, wall_clock)
    }

    fn from_node(mut node: Node<ClientId>, now: Instant, wall_clock: SystemTime) -> Self {
        node.set_wall_clock(now, wall_clock);
        Self {
            node,
            clock: WallClock::new(now, wall_clock),
            clients: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            resources: BTreeMap::new(),
            authorizations: Authorizations::default(),
            egress: VecDeque::new(),
            events: VecDeque::new(),
            stats: GatewayStats::default(),
        }
    }

    /// The WireGuard public key to join the portal with.
    pub fn public_key(&self) -> PublicKey {
        self.node.public_key()
    }

    /// The node underneath, for its connections and counters.
    pub fn node(&self) -> &Node<ClientId> {
        &self.node
    }

    /// The node, to act as a gateway that misbehaves.
    #[cfg(test)]
    pub(crate) fn node_mut(&mut self) -> &mut Node<ClientId> {
        &mut self.node
    }

    /// What the tunnel dropped.
    pub fn stats(&self) -> &GatewayStats {
        &self.stats
    }

    /// Every authorization and when it ends, by (client, resource).
    pub fn authorizations(&self) -> impl Iterator<Item = (ClientId, ResourceId, Instant)> + '_ {
        self.authorizations.iter()
    }

    /// Whether `cid` may reach `rid` at `now`.
    pub fn is_authorized(&self, cid: ClientId, rid: ResourceId, now: Instant) -> bool {
        self.authorizations
            .expiry(cid, rid)
            .is_some_and(|expires| now < expires)
    }

    /// A local address peers may reach this gateway on.
    pub fn add_local_address(&mut self, addr: SocketAddr, now: Instant) {
        self.node.add_local_address(addr);
        self.drain_node(now);
    }

    /// A datagram from the network. Returns the packet for the resource network (the TUN
    /// device) if a client sent one it may send; an unauthorized destination is answered with
    /// ICMP through the tunnel ([`GatewayState::poll_transmit`]).
    pub fn handle_network_input(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<IpPacket<Buffer>> {
        let result = self.node.decapsulate(local, from, datagram, now);
        self.drain_node(now);
        // Errors are counted and logged by the node.
        let (cid, packet) = result.ok().flatten()?;
        self.accept_inbound(cid, packet, now)
    }

    /// Leaves the AEAD of data packets to the runtime (see [`crate::crypto`]).
    pub fn set_deferred_crypto(&mut self, on: bool) {
        self.node.set_deferred_crypto(on);
    }

    /// The next data packet to open (deferred crypto, see [`crate::crypto`]).
    pub fn poll_decryption(&mut self) -> Option<Decryption> {
        self.node.poll_decryption()
    }

    /// A data packet from [`Self::poll_decryption`], opened or not. Returns what
    /// [`Self::handle_network_input`] would have for its datagram.
    pub fn handle_decryption(&mut self, job: Decryption, now: Instant) -> Option<IpPacket<Buffer>> {
        let result = self.node.finish_decryption(job, now);
        self.drain_node(now);
        // Errors are counted and logged by the node.
        let (cid, packet) = result.ok().flatten()?;
        self.accept_inbound(cid, packet, now)
    }

    /// A packet client `cid` sent: for the resource network if it may send it; an
    /// unauthorized destination is answered with ICMP.
    fn accept_inbound(
        &mut self,
        cid: ClientId,
        packet: IpPacket<Buffer>,
        now: Instant,
    ) -> Option<IpPacket<Buffer>> {
        let Some(client) = self.clients.get(&cid) else {
            self.stats.unknown_client += 1;
            tracing::debug!(%cid, "packet from a client without authorizations: dropped");
            return None;
        };
        let src = packet.source();
        if src != client.ipv4 && src != client.ipv6 {
            // Not answered: the source may be anyone's.
            self.stats.wrong_source += 1;
            tracing::debug!(%cid, %src, "source is not the client's tunnel address: dropped");
            return None;
        }
        let dst = packet.destination();
        if self.allows(cid, dst, now) {
            return Some(packet);
        }
        self.stats.unauthorized += 1;
        tracing::debug!(%cid, %dst, "destination not authorized: dropped");
        if let Some(reply) = prohibited_reply(&packet) {
            self.encapsulate_to(cid, &reply, now);
        }
        None
    }

    /// An IP packet from the resource network (read from the TUN device). If it is reply
    /// traffic of an authorized flow, the datagram that carries it is queued for
    /// [`GatewayState::poll_transmit`].
    pub fn handle_tun_packet<B: AsRef<[u8]>>(&mut self, packet: &IpPacket<B>, now: Instant) {
        let dst = packet.destination();
        let Some(&cid) = self.by_ip.get(&dst) else {
            self.stats.unknown_destination += 1;
            tracing::trace!(%dst, "TUN packet for no client: dropped");
            return;
        };
        let src = packet.source();
        if !self.allows(cid, src, now) {
            self.stats.unauthorized_reply += 1;
            tracing::debug!(%cid, %src, "TUN packet from outside the client's resources: dropped");
            return;
        }
        self.encapsulate_to(cid, packet, now);
    }

    /// Whether `cid` holds an unexpired authorization for a resource containing `ip`.
    fn allows(&self, cid: ClientId, ip: IpAddr, now: Instant) -> bool {
        self.authorizations.of_client(cid).any(|(rid, expires)| {
            now < expires
                && self
                    .resources
                    .get(&rid)
                    .is_some_and(|r| r.address.contains(ip))
        })
    }

    fn encapsulate_to<B: AsRef<[u8]>>(
        &mut self,
        cid: ClientId,
        packet: &IpPacket<B>,
        now: Instant,
    ) {
        if let Err(error) = self.node.encapsulate(cid, packet, now) {
            self.stats.encapsulate_errors += 1;
            tracing::debug!(%cid, %error, "cannot encapsulate");
        }
    }

    /// A message from the portal.
    pub fn handle_portal_message(&mut self, message: GatewayIngress, now: Instant) {
        match message {
            GatewayIngress::Init(init) => self.handle_init(init, now),
            GatewayIngress::AuthorizeFlow(flow) => self.handle_authorize_flow(flow, now),
            GatewayIngress::IceCandidates(ClientCandidates {
                client_id,
                candidates,
            }) => {
                self.node.add_remote_candidates(
                    client_id,
                    candidates.iter().map(String::as_str),
                    now,
                );
            }
            GatewayIngress::InvalidateIceCandidates(ClientCandidates {
                client_id,
                candidates,
            }) => {
                for candidate in &candidates {
                    self.node.remove_remote_candidate(client_id, candidate, now);
                }
            }
            GatewayIngress::ResourceCreatedOrUpdated(resource) => {
                tracing::debug!(rid = %resource.id, address = ?resource.address, "resource created or updated");
                self.resources.insert(resource.id, resource);
            }
            GatewayIngress::ResourceDeleted(deleted) => {
                let rid = deleted.id;
                tracing::info!(%rid, "resource deleted");
                self.resources.remove(&rid);
                let ended = self.authorizations.remove_resource(rid);
                self.end_flows(ended, FlowEndReason::ResourceDeleted);
            }
            GatewayIngress::AccessRevoked(AccessRevoked {
                client_id: cid,
                resource_id: rid,
            }) => {
                if self.authorizations.remove(cid, rid) {
                    self.end_flows(vec![(cid, rid)], FlowEndReason::Revoked);
                } else {
                    tracing::debug!(%cid, %rid, "revoked access that was not authorized");
                }
            }
            GatewayIngress::RelaysPresence(presence) => {
                apply_relays_presence(&mut self.node, &presence, now);
            }
        }
        self.drain_node(now);
    }

    fn handle_init(&mut self, init: GatewayInit, now: Instant) {
        let GatewayInit {
            relays,
            authorizations,
        } = init;
        tracing::info!(
            relays = relays.len(),
            authorizations = authorizations.len(),
            "init"
        );
        replace_relays(&mut self.node, &relays, now);
        let listed: BTreeMap<(ClientId, ResourceId), u64> = authorizations
            .iter()
            .map(|a| ((a.client_id, a.resource_id), a.expires_at))
            .collect();
        let revoked = self
            .authorizations
            .retain(|flow| listed.contains_key(&flow));
        self.end_flows(revoked, FlowEndReason::NotInInit);
        for ((cid, rid), expires_at) in listed {
            if self.authorizations.expiry(cid, rid).is_some() {
                self.authorizations
                    .insert(cid, rid, self.clock.instant_at(expires_at));
            } else {
                // Without the client's key and addresses there is nothing to authorize yet.
                tracing::debug!(%cid, %rid, "init lists an authorization this gateway never had");
            }
        }
        // A listed authorization may now be past its expiry.
        self.expire(now);
    }

    fn handle_authorize_flow(&mut self, flow: AuthorizeFlow, now: Instant) {
        let AuthorizeFlow {
            client,
            resource,
            client_ice,
            gateway_ice,
            preshared_key,
            expires_at,
        } = flow;
        let FlowClient {
            id: cid,
            public_key,
            ipv4,
            ipv6,
        } = client;
        let rid = resource.id;
        let expires = self.clock.instant_at(expires_at);
        if expires <= now {
            tracing::info!(%cid, %rid, expires_at, "authorization already expired: ignored");
            return;
        }
        self.set_client(
            cid,
            Client {
                ipv4: IpAddr::V4(ipv4),
                ipv6: IpAddr::V6(ipv6),
            },
        );
        self.resources.insert(rid, resource);
        self.authorizations.insert(cid, rid, expires);
        // The client hears of the flow only through this answer: a client told of
        // parameters this gateway never got would replace a working connection with one
        // nobody answers. It leaves before the candidates the upsert brings, so that the
        // client holds the connection they are for.
        self.egress
            .push_back(GatewayEgress::FlowAccepted(FlowAccepted {
                client_id: cid,
                resource_id: rid,
                ice_ufrag: gateway_ice.username.clone(),
            }));
        // Unchanged parameters keep the connection and re-announce our candidates (the
        // client may have lost its state); anything changed replaces it.
        let outcome = self.node.upsert_connection(
            cid,
            PublicKey::from(*public_key.as_bytes()),
            preshared_key.into(),
            gateway_ice.into(),
            client_ice.into(),
            now,
        );
        tracing::info!(%cid, %rid, expires_at, ?outcome, "flow authorized");
    }

    fn set_client(&mut self, cid: ClientId, client: Client) {
        if let Some(old) = self.clients.insert(cid, client) {
            for ip in [old.ipv4, old.ipv6] {
                if self.by_ip.get(&ip) == Some(&cid) {
                    self.by_ip.remove(&ip);
                }
            }
        }
        for ip in [client.ipv4, client.ipv6] {
            if let Some(other) = self.by_ip.insert(ip, cid).filter(|other| *other != cid) {
                tracing::warn!(%cid, other = %other, %ip, "tunnel address moved to another client");
            }
        }
    }

    /// The node is about to stop: its relay allocations are given back (see
    /// [`Node::release_relays`]); the datagrams that do it come out of `poll_transmit`.
    pub fn close(&mut self, now: Instant) {
        self.node.release_relays(now);
        self.drain_node(now);
    }

    /// The network reported `dst` unreachable: see [`Node::handle_unreachable`].
    pub fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
        self.node.handle_unreachable(dst, now);
        self.drain_node(now);
    }

    /// The host's addresses changed: see [`Node::handle_network_change`].
    pub fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
        self.node.handle_network_change(addrs, now);
        self.drain_node(now);
    }

    /// Removes the authorizations that expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.expire(now);
        self.drain_node(now);
    }

    fn expire(&mut self, now: Instant) {
        let expired = self.authorizations.expire(now);
        self.end_flows(expired, FlowEndReason::Expired);
    }

    /// Logs and reports ended flows (given in (client, resource) order) and forgets clients
    /// left without any authorization (keeping their connections, see [`GatewayState`]).
    fn end_flows(&mut self, ended: Vec<(ClientId, ResourceId)>, reason: FlowEndReason) {
        for &(cid, rid) in &ended {
            match reason {
                FlowEndReason::Expired => tracing::info!(%cid, %rid, "authorization expired"),
                FlowEndReason::Revoked => tracing::info!(%cid, %rid, "access revoked"),
                FlowEndReason::ResourceDeleted => {
                    tracing::info!(%cid, %rid, "resource deleted: access ended")
                }
                FlowEndReason::NotInInit => {
                    tracing::info!(%cid, %rid, "authorization not in init: revoked")
                }
            }
            self.events.push_back(GatewayEvent::FlowEnded {
                client: cid,
                resource: rid,
                reason,
            });
        }
        for (cid, _) in ended {
            if self.clients.contains_key(&cid) && !self.authorizations.has_client(cid) {
                self.forget_client(cid);
            }
        }
    }

    fn forget_client(&mut self, cid: ClientId) {
        let Some(client) = self.clients.remove(&cid) else {
            return;
        };
        for ip in [client.ipv4, client.ipv6] {
            if self.by_ip.get(&ip) == Some(&cid) {
                self.by_ip.remove(&ip);
            }
        }
        tracing::info!(%cid, "no authorization left: client forgotten");
    }

    /// When to call [`GatewayState::handle_timeout`] next, and why.
    pub fn poll_timeout(&mut self) -> Option<(Instant, &'static str)> {
        let expiry = self
            .authorizations
            .next_expiry()
            .map(|t| (t, "authorization expiry"));
        earliest(self.node.poll_timeout(), expiry)
    }

    /// The next datagram to send: the node's queue is the only one, so datagrams leave in
    /// the order they were made.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.node.poll_transmit()
    }

    /// The next message for the portal.
    pub fn poll_portal_message(&mut self) -> Option<GatewayEgress> {
        self.egress.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GatewayEvent> {
        self.events.pop_front()
    }

    fn drain_node(&mut self, _now: Instant) {
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::NewIceCandidate {
                    connection,
                    candidate,
                } => self.push_candidate(connection, candidate, false),
                Event::InvalidateIceCandidate {
                    connection,
                    candidate,
                } => self.push_candidate(connection, candidate, true),
                Event::ConnectionEstablished(cid) => {
                    tracing::info!(%cid, "connected to client");
                    self.events.push_back(GatewayEvent::ClientConnected(cid));
                }
                Event::ConnectionIdle(cid) => tracing::debug!(%cid, "connection idle"),
                Event::ConnectionFailed { connection, reason } => {
                    tracing::info!(cid = %connection, %reason, "connection to client failed; authorizations kept");
                    // Only the client sets connections up: what was held for it is lost.
                    let unsent = self.node.take_unsent(connection).len();
                    if unsent > 0 {
                        tracing::debug!(cid = %connection, unsent, "held packets dropped");
                    }
                    self.events.push_back(GatewayEvent::ClientDisconnected {
                        client: connection,
                        reason,
                    });
                }
            }
        }
    }

    /// Queues a candidate for the portal, in the same message as the previous one if that was
    /// of the same kind and for the same client.
    fn push_candidate(&mut self, client: ClientId, candidate: String, invalidate: bool) {
        match (self.egress.back_mut(), invalidate) {
            (Some(GatewayEgress::IceCandidates(last)), false)
            | (Some(GatewayEgress::InvalidateIceCandidates(last)), true)
                if last.client_id == client =>
            {
                last.candidates.push(candidate);
                return;
            }
            (
                Some(
                    GatewayEgress::IceCandidates(_)
                    | GatewayEgress::InvalidateIceCandidates(_)
                    | GatewayEgress::FlowAccepted(_),
                )
                | None,
                _,
            ) => {}
        }
        let candidates = ClientCandidates {
            client_id: client,
            candidates: vec![candidate],
        };
        self.egress.push_back(if invalidate {
            GatewayEgress::InvalidateIceCandidates(candidates)
        } else {
            GatewayEgress::IceCandidates(candidates)
        });
    }
}
