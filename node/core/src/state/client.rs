//! The client's tunnel: resources, on-demand connections to gateways, packets held back meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use boringtun::x25519::StaticSecret;

use super::{apply_relays_presence, earliest, replace_relays, ResourceTable};
use crate::crypto::Decryption;
use crate::ids::{GatewayId, ResourceId};
use crate::packet::IpPacket;
use crate::pool::Buffer;
use crate::portal::messages::{
    ClientEgress, ClientIngress, ClientInit, ConnectionDetails, GatewayCandidates, GatewayInstance,
    GatewayRestarted, RequestConnection,
};
use crate::portal::{Interface, IpNetwork, ResourceDescription};
use crate::{Event, FailReason, Node, PublicKey, Role, Transmit, Upsert};

/// Packets held back per resource while its connection is pending; the oldest go first.
pub const PENDING_QUEUE_CAPACITY: usize = 32;

/// How long a connection request may stay unanswered before its packets are dropped and the
/// next packet asks again (the portal's refusal arrives as a reply the tunnel does not see).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long before its authorization ends traffic to a resource asks the portal for a new one
/// (at most half the authorization's length), so a flow in use never meets the gateway's expiry.
pub const AUTHORIZATION_RENEW_BEFORE: Duration = Duration::from_secs(60);

/// How much earlier than the gateway the client takes an authorization to be over: a packet it
/// still sends over the old one must arrive before the gateway drops it, clocks a little apart.
pub const AUTHORIZATION_GUARD: Duration = Duration::from_secs(2);

/// What the client tells its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The portal assigned (new) tunnel addresses: configure the TUN device.
    InterfaceUpdated(Interface),
    /// The networks to route into the TUN device changed; this is the full set.
    RoutesUpdated(BTreeSet<IpNetwork>),
    /// Packets flow to this gateway.
    GatewayConnected(GatewayId),
    /// The connection to this gateway is gone; the next packet for its resources asks again.
    GatewayDisconnected {
        /// The gateway.
        gateway: GatewayId,
        /// Why.
        reason: FailReason,
    },
}

/// Counters of what the client dropped, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// TUN packets whose destination is in no resource.
    pub no_resource: u64,
    /// Held-back packets dropped because their queue was full (the oldest go).
    pub queue_overflow: u64,
    /// Held-back packets dropped because the connection failed, the request timed out or the
    /// resource went away.
    pub queue_dropped: u64,
    /// Packets from a gateway whose source is in no resource that gateway serves.
    pub unexpected_source: u64,
    /// Packets from a gateway addressed to anything but this client's tunnel addresses.
    pub unexpected_destination: u64,
    /// Packets the node refused to encrypt.
    pub encapsulate_errors: u64,
}

/// Packets held back for one resource, bounded.
#[derive(Debug, Default)]
struct PacketQueue(VecDeque<IpPacket>);

impl PacketQueue {
    /// Queues a copy of `packet`; returns whether the oldest had to go.
    fn push<B: AsRef<[u8]>>(&mut self, packet: &IpPacket<B>) -> bool {
        let Ok(copy) = IpPacket::parse(packet.as_bytes().to_vec()) else {
            return false;
        };
        let overflow = self.0.len() >= PENDING_QUEUE_CAPACITY;
        if overflow {
            self.0.pop_front();
        }
        self.0.push_back(copy);
        overflow
    }

    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Where a resource's packets go.
#[derive(Debug)]
enum Route {
    /// A connection was requested and not answered yet.
    Requested {
        deadline: Instant,
        queue: PacketQueue,
    },
    /// The portal named the gateway; `queue` holds packets until its connection is up.
    Gateway {
        gateway: GatewayId,
        queue: PacketQueue,
        /// The authorization's lifetime on this side, if the client knows the wall clock.
        term: Option<Term>,
    },
}

/// When an authorization is to be renewed, and when it is over for the client.
#[derive(Debug, Clone, Copy)]
struct Term {
    /// From here a packet to the resource asks for a new authorization (once).
    renew_at: Instant,
    /// From here packets are held back until the new one arrives.
    ends: Instant,
    /// A renewal was asked for.
    renewing: bool,
}

impl Term {
    fn new(expires: Instant, now: Instant) -> Self {
        let ends = expires
            .checked_sub(AUTHORIZATION_GUARD)
            .unwrap_or(now)
            .max(now);
        let left = ends.saturating_duration_since(now);
        Self {
            renew_at: ends - AUTHORIZATION_RENEW_BEFORE.min(left / 2),
            ends,
            renewing: false,
        }
    }
}

impl Route {
    fn queue_mut(&mut self) -> &mut PacketQueue {
        match self {
            Route::Requested { queue, .. } | Route::Gateway { queue, .. } => queue,
        }
    }

    fn into_queue(self) -> PacketQueue {
        match self {
            Route::Requested { queue, .. } | Route::Gateway { queue, .. } => queue,
        }
    }

    fn gateway(&self) -> Option<GatewayId> {
        match self {
            Route::Requested { .. } => None,
            Route::Gateway { gateway, .. } => Some(*gateway),
        }
    }
}

/// What the client knows of its connection to a gateway.
#[derive(Debug, Clone, Copy, Default)]
struct GatewayLink {
    /// Whether the connection is established.
    established: bool,
    /// The number of the gateway process it was made with, when the portal said.
    instance: Option<u64>,
}

/// The client: a [`Node<GatewayId>`](Node) plus resources, routes and pending connections.
///
/// See the [module docs](super) for how to drive it. Packets for a resource without a
/// connection are held back ([`PENDING_QUEUE_CAPACITY`] per resource) while one connection
/// request is outstanding, and sent in order once the gateway's connection is established.
pub struct ClientState {
    node: Node<GatewayId>,
    interface: Option<Interface>,
    resources: BTreeMap<ResourceId, ResourceDescription>,
    /// Networks to resources; of several resources with one network, the lowest id.
    table: ResourceTable<ResourceId>,
    routes: BTreeMap<ResourceId, Route>,
    /// Gateways with a connection in the node.
    gateways: BTreeMap<GatewayId, GatewayLink>,
    egress: VecDeque<ClientEgress>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
    /// Maps the portal's unix expiry times onto instants, once the runtime told the time.
    clock: Option<super::WallClock>,
    /// See [`ClientState::ignoring_revocations`].
    ignores_revocations: bool,
}

impl ClientState {
    /// A client whose key and every other random choice come from `seed`.
    pub fn new(seed: u64, now: Instant) -> Self {
        Self::from_node(Node::new(Role::Client, seed, now))
    }

    /// A client with its static key and the 32-byte seed of its other random choices (see
    /// [`Node::from_secrets`]).
    pub fn from_secrets(private_key: StaticSecret, rng_seed: [u8; 32], now: Instant) -> Self {
        Self::from_node(Node::from_secrets(Role::Client, private_key, rng_seed, now))
    }

    /// A client with a configured static key.
    pub fn with_private_key(private_key: StaticSecret, seed: u64, now: Instant) -> Self {
        Self::from_node(Node::with_private_key(Role::Client, private_key, seed, now))
    }

    /// Tells the client the wall-clock time `wall` at `now`, from which its handshake
    /// timestamps count (see [`Node::set_wall_clock`]): the host's clock in the binary.
    pub fn with_wall_clock(mut self, now: Instant, wall: SystemTime) -> Self {
        self.node.set_wall_clock(now, wall);
        self.clock = Some(super::WallClock::new(now, wall));
        self
    }

    /// Keeps its routes when access is revoked, a resource deleted or an authorization over,
    /// as a client its user changed would: the client is the user's, so only the gateway's
    /// checks enforce a policy. The simulation runs one such client to check that they do; the
    /// binaries never do this.
    pub fn ignoring_revocations(mut self) -> Self {
        self.ignores_revocations = true;
        self
    }

    fn from_node(node: Node<GatewayId>) -> Self {
        Self {
            node,
            interface: None,
            resources: BTreeMap::new(),
            table: ResourceTable::new(),
            routes: BTreeMap::new(),
            gateways: BTreeMap::new(),
            egress: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
            clock: None,
            ignores_revocations: false,
        }
    }

    /// The WireGuard public key to join the portal with.
    pub fn public_key(&self) -> PublicKey {
        self.node.public_key()
    }

    /// The node underneath, for its connections and counters.
    pub fn node(&self) -> &Node<GatewayId> {
        &self.node
    }

    /// What the tunnel dropped.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The tunnel addresses, once the portal sent them.
    pub fn interface(&self) -> Option<Interface> {
        self.interface
    }

    /// The gateway packets to `rid` go to, once the portal named one.
    pub fn gateway_of(&self, rid: ResourceId) -> Option<GatewayId> {
        self.routes.get(&rid).and_then(Route::gateway)
    }

    /// A local address peers may reach this client on.
    pub fn add_local_address(&mut self, addr: SocketAddr, now: Instant) {
        self.node.add_local_address(addr);
        self.drain_node(now);
    }

    /// An IP packet read from the TUN device. The datagram that carries it, if one can go now,
    /// is queued for [`ClientState::poll_transmit`].
    pub fn handle_tun_packet<B: AsRef<[u8]>>(&mut self, packet: &IpPacket<B>, now: Instant) {
        let dst = packet.destination();
        let Some((_, &rid)) = self.table.longest_match(dst) else {
            self.stats.no_resource += 1;
            tracing::debug!(%dst, "no resource for destination: dropped");
            return;
        };
        // An authorization that is over: asked for anew, like the first time, with the packets
        // held back (the gateway would drop them). So is one near its end on an idle
        // connection: the answer may replace the connection (a portal restart since brings a
        // new preshared key), and a packet waiting in the old one for a handshake would be lost
        // with it.
        if let Some(Route::Gateway {
            gateway,
            term: Some(term),
            ..
        }) = self.routes.get(&rid)
        {
            let idle = self.node.connection(*gateway).is_some_and(|c| c.idle);
            if now >= term.ends || (now >= term.renew_at && !term.renewing && idle) {
                tracing::debug!(%rid, idle, "authorization over or ending: asking again");
                let queue = self
                    .routes
                    .remove(&rid)
                    .map(Route::into_queue)
                    .unwrap_or_default();
                self.request(rid, queue, now);
            }
        }
        if !self.routes.contains_key(&rid) {
            tracing::debug!(%rid, "requesting a connection");
            self.request(rid, PacketQueue::default(), now);
        }
        let Some(route) = self.routes.get_mut(&rid) else {
            return;
        };
        let gateway = match route {
            Route::Gateway { gateway, term, .. }
                if self.gateways.get(gateway).is_some_and(|g| g.established) =>
            {
                // In use near its end: a new authorization is asked for while this one still
                // carries the traffic.
                if let Some(term) = term.as_mut().filter(|t| !t.renewing && now >= t.renew_at) {
                    term.renewing = true;
                    tracing::debug!(%rid, "authorization ending: asking for a new one");
                    Self::ask(&mut self.egress, rid);
                }
                *gateway
            }
            Route::Gateway { gateway, queue, .. } => {
                tracing::trace!(%rid, gid = %gateway, "connection not up yet: packet held back");
                if queue.push(packet) {
                    self.stats.queue_overflow += 1;
                }
                return;
            }
            Route::Requested { queue, .. } => {
                tracing::debug!(%rid, "connection already requested: packet held back");
                if queue.push(packet) {
                    self.stats.queue_overflow += 1;
                    tracing::debug!(%rid, "pending queue full: dropped the oldest packet");
                }
                return;
            }
        };
        if let Err(error) = self.node.encapsulate(gateway, packet, now) {
            self.stats.encapsulate_errors += 1;
            tracing::debug!(gid = %gateway, %rid, %error, "cannot encapsulate");
        }
    }

    /// A datagram from the network. Returns the packet for the TUN device, if it carried one
    /// from a gateway that serves its source.
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
        let (gateway, packet) = result.ok().flatten()?;
        self.accept_inbound(gateway, packet)
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
        let (gateway, packet) = result.ok().flatten()?;
        self.accept_inbound(gateway, packet)
    }

    /// A packet `gateway` sent: for the device if it is for us, from a resource of `gateway`.
    fn accept_inbound(
        &mut self,
        gateway: GatewayId,
        packet: IpPacket<Buffer>,
    ) -> Option<IpPacket<Buffer>> {
        let dst = packet.destination();
        if !self.is_own_address(dst) {
            self.stats.unexpected_destination += 1;
            tracing::debug!(gid = %gateway, %dst, "packet for another address: dropped");
            return None;
        }
        let src = packet.source();
        if !self.is_served_by(gateway, src) {
            self.stats.unexpected_source += 1;
            tracing::debug!(gid = %gateway, %src, "source in no resource of this gateway: dropped");
            return None;
        }
        Some(packet)
    }

    /// Whether `ip` is one of the tunnel addresses the portal gave this client: a gateway may
    /// send nothing else into the device, where the host would route it on.
    fn is_own_address(&self, ip: IpAddr) -> bool {
        self.interface.is_some_and(|i| match ip {
            IpAddr::V4(ip) => ip == i.ipv4,
            IpAddr::V6(ip) => ip == i.ipv6,
        })
    }

    /// Whether `src` lies in a resource routed to `gateway`.
    fn is_served_by(&self, gateway: GatewayId, src: IpAddr) -> bool {
        let best = self
            .table
            .longest_match(src)
            .and_then(|(_, rid)| self.routes.get(rid))
            .and_then(Route::gateway);
        if best == Some(gateway) {
            return true;
        }
        // A less specific resource of this gateway may contain it too.
        self.routes.iter().any(|(rid, route)| {
            route.gateway() == Some(gateway)
                && self
                    .resources
                    .get(rid)
                    .is_some_and(|r| r.address.contains(src))
        })
    }

    /// A message from the portal.
    pub fn handle_portal_message(&mut self, message: ClientIngress, now: Instant) {
        match message {
            ClientIngress::Init(init) => self.handle_init(init, now),
            ClientIngress::FlowAuthorized(details) => self.handle_flow_authorized(details, now),
            ClientIngress::IceCandidates(GatewayCandidates {
                gateway_id,
                candidates,
            }) => {
                self.node.add_remote_candidates(
                    gateway_id,
                    candidates.iter().map(String::as_str),
                    now,
                );
            }
            ClientIngress::InvalidateIceCandidates(GatewayCandidates {
                gateway_id,
                candidates,
            }) => {
                for candidate in &candidates {
                    self.node
                        .remove_remote_candidate(gateway_id, candidate, now);
                }
            }
            ClientIngress::ResourceCreatedOrUpdated(resource) => {
                tracing::debug!(rid = %resource.id, address = ?resource.address, "resource created or updated");
                self.resources.insert(resource.id, resource);
                self.rebuild_table();
            }
            ClientIngress::ResourceDeleted(deleted) => {
                tracing::info!(rid = %deleted.id, "resource deleted");
                if !self.ignores_revocations {
                    self.remove_resource(deleted.id);
                }
            }
            ClientIngress::AccessRevoked(revoked) => {
                tracing::info!(rid = %revoked.resource_id, "access revoked");
                if !self.ignores_revocations {
                    self.remove_resource(revoked.resource_id);
                }
            }
            ClientIngress::RelaysPresence(presence) => {
                apply_relays_presence(&mut self.node, &presence, now);
            }
            // Its checks would go unanswered until ICE gave every pair up (seconds each);
            // the next packet asks for a connection to the new process instead.
            ClientIngress::GatewayRestarted(GatewayRestarted { gateway_id }) => {
                tracing::info!(gid = %gateway_id, "gateway restarted");
                self.node
                    .fail_connection(gateway_id, FailReason::PeerRestarted);
            }
        }
        self.drain_node(now);
    }

    /// The portal refused a connection request (its reply to `request_connection` was an
    /// error): the held-back packets are dropped and the next packet asks again.
    pub fn handle_connection_request_failed(&mut self, rid: ResourceId) {
        if let Some(Route::Requested { .. }) = self.routes.get(&rid) {
            if let Some(route) = self.routes.remove(&rid) {
                tracing::debug!(%rid, "connection request refused");
                self.drop_queue(route.into_queue());
            }
        }
    }

    fn handle_init(&mut self, init: ClientInit, now: Instant) {
        let ClientInit {
            interface,
            resources,
            relays,
            gateways,
        } = init;
        tracing::info!(
            ipv4 = %interface.ipv4,
            ipv6 = %interface.ipv6,
            resources = resources.len(),
            relays = relays.len(),
            "init"
        );
        if self.interface != Some(interface) {
            self.interface = Some(interface);
            self.events
                .push_back(ClientEvent::InterfaceUpdated(interface));
        }
        let listed: BTreeSet<ResourceId> = resources.iter().map(|r| r.id).collect();
        let gone: Vec<ResourceId> = self
            .resources
            .keys()
            .filter(|rid| !listed.contains(rid))
            .copied()
            .collect();
        for rid in gone {
            self.resources.remove(&rid);
            if let Some(route) = self.routes.remove(&rid) {
                self.drop_queue(route.into_queue());
            }
        }
        for resource in resources {
            self.resources.insert(resource.id, resource);
        }
        self.rebuild_table();
        replace_relays(&mut self.node, &relays, now);
        // A `gateway_restarted` sent while this client was cut off is lost: a connection to
        // another process of a gateway than the one running now is dead.
        for GatewayInstance {
            gateway_id,
            instance,
        } in gateways
        {
            let held = self.gateways.get(&gateway_id).and_then(|g| g.instance);
            if held.is_some_and(|held| held != instance) {
                tracing::info!(gid = %gateway_id, "gateway restarted while the portal was away");
                self.node
                    .fail_connection(gateway_id, FailReason::PeerRestarted);
            }
        }
    }

    fn handle_flow_authorized(&mut self, details: ConnectionDetails, now: Instant) {
        let ConnectionDetails {
            resource_id: rid,
            gateway_id: gid,
            gateway_public_key,
            client_ice,
            gateway_ice,
            preshared_key,
            expires_at,
            gateway_instance,
        } = details;
        if !self.resources.contains_key(&rid) {
            tracing::debug!(%rid, %gid, "flow for an unknown resource: ignored");
            return;
        }
        let outcome = self.node.upsert_connection(
            gid,
            PublicKey::from(*gateway_public_key.as_bytes()),
            preshared_key.into(),
            client_ice.into(),
            gateway_ice.into(),
            now,
        );
        let established = match outcome {
            Upsert::Created | Upsert::Replaced => false,
            Upsert::Kept => self.node.connection(gid).is_some_and(|c| c.established),
        };
        self.gateways.insert(
            gid,
            GatewayLink {
                established,
                instance: gateway_instance,
            },
        );
        tracing::info!(%rid, %gid, ?outcome, "flow authorized");
        if outcome != Upsert::Kept {
            self.rebind_other_routes(gid, rid, now);
        }
        let queue = self
            .routes
            .remove(&rid)
            .map(Route::into_queue)
            .unwrap_or_default();
        // A client that ignores expiries keeps no term: it never asks again while it holds
        // the route.
        let term = self
            .clock
            .filter(|_| !self.ignores_revocations)
            .map(|clock| Term::new(clock.instant_at(expires_at), now));
        self.routes.insert(
            rid,
            Route::Gateway {
                gateway: gid,
                queue,
                term,
            },
        );
        if established {
            self.flush(gid, now);
        }
    }

    /// Asks the portal for a connection to `rid`, holding `queue` back until it answers.
    fn request(&mut self, rid: ResourceId, queue: PacketQueue, now: Instant) {
        Self::ask(&mut self.egress, rid);
        self.routes.insert(
            rid,
            Route::Requested {
                deadline: now + REQUEST_TIMEOUT,
                queue,
            },
        );
    }

    /// Queues the request for a connection to `rid` (or a new authorization for it).
    fn ask(egress: &mut VecDeque<ClientEgress>, rid: ResourceId) {
        egress.push_back(ClientEgress::RequestConnection(RequestConnection {
            resource_id: rid,
        }));
    }

    /// A new connection to `gid` (new keys, PSK or credentials: the gateway may have restarted
    /// and lost the authorizations of our other flows) serves the flow for `rid`; the
    /// resources bound to `gid` through the previous one are asked for again, their held-back
    /// packets kept, so that the gateway learns of them before their packets arrive.
    fn rebind_other_routes(&mut self, gid: GatewayId, rid: ResourceId, now: Instant) {
        let others: Vec<ResourceId> = self
            .routes
            .iter()
            .filter(|(other, route)| **other != rid && route.gateway() == Some(gid))
            .map(|(other, _)| *other)
            .collect();
        for other in others {
            let Some(route) = self.routes.remove(&other) else {
                continue;
            };
            tracing::debug!(rid = %other, %gid, "new connection to the gateway: asking again");
            self.request(other, route.into_queue(), now);
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

    /// Advances timers: the node's, and connection requests that went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        let expired: Vec<ResourceId> = self
            .routes
            .iter()
            .filter(|(_, r)| matches!(r, Route::Requested { deadline, .. } if *deadline <= now))
            .map(|(rid, _)| *rid)
            .collect();
        for rid in expired {
            if let Some(route) = self.routes.remove(&rid) {
                tracing::debug!(%rid, "connection request unanswered: held-back packets dropped");
                self.drop_queue(route.into_queue());
            }
        }
        self.drain_node(now);
    }

    /// When to call [`ClientState::handle_timeout`] next, and why.
    pub fn poll_timeout(&mut self) -> Option<(Instant, &'static str)> {
        let request = self
            .routes
            .values()
            .filter_map(|r| match r {
                Route::Requested { deadline, .. } => Some(*deadline),
                Route::Gateway { .. } => None,
            })
            .min()
            .map(|t| (t, "connection request"));
        earliest(self.node.poll_timeout(), request)
    }

    /// The next datagram to send: the node's queue is the only one, so datagrams leave in
    /// the order they were made.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.node.poll_transmit()
    }

    /// The next message for the portal.
    pub fn poll_portal_message(&mut self) -> Option<ClientEgress> {
        self.egress.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn remove_resource(&mut self, rid: ResourceId) {
        self.resources.remove(&rid);
        if let Some(route) = self.routes.remove(&rid) {
            self.drop_queue(route.into_queue());
        }
        self.rebuild_table();
    }

    fn drop_queue(&mut self, queue: PacketQueue) {
        self.stats.queue_dropped += queue.len();
    }

    /// Rebuilds the lookup table from the resources; tells the runtime if the routes changed.
    fn rebuild_table(&mut self) {
        let before: BTreeSet<IpNetwork> = self.table.iter().map(|(n, _)| n).collect();
        let mut table = ResourceTable::new();
        for (rid, resource) in &self.resources {
            let network = resource.address.network();
            if table.get(&network).is_none() {
                table.insert(network, *rid);
            }
        }
        self.table = table;
        let after: BTreeSet<IpNetwork> = self.table.iter().map(|(n, _)| n).collect();
        if before != after {
            self.events.push_back(ClientEvent::RoutesUpdated(after));
        }
    }

    /// Sends what was held back for the resources of `gateway`, each resource's in order.
    fn flush(&mut self, gateway: GatewayId, now: Instant) {
        let mut held = Vec::new();
        for (rid, route) in &mut self.routes {
            if route.gateway() == Some(gateway) {
                let queue = std::mem::take(route.queue_mut());
                if queue.len() > 0 {
                    tracing::debug!(%rid, gid = %gateway, packets = queue.len(), "sending held-back packets");
                }
                held.extend(queue.0);
            }
        }
        for packet in held {
            if let Err(error) = self.node.encapsulate(gateway, &packet, now) {
                self.stats.encapsulate_errors += 1;
                tracing::debug!(gid = %gateway, %error, "cannot encapsulate held-back packet");
            }
        }
    }

    /// Turns the node's events into portal messages, flushes and unbinds.
    fn drain_node(&mut self, now: Instant) {
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
                Event::ConnectionEstablished(gid) => {
                    tracing::info!(%gid, "connected to gateway");
                    self.gateways.entry(gid).or_default().established = true;
                    self.events.push_back(ClientEvent::GatewayConnected(gid));
                    self.flush(gid, now);
                }
                Event::ConnectionIdle(gid) => tracing::debug!(%gid, "connection idle"),
                Event::ConnectionFailed { connection, reason } => {
                    self.on_connection_failed(connection, reason, now);
                }
            }
        }
    }

    fn on_connection_failed(&mut self, gid: GatewayId, reason: FailReason, now: Instant) {
        tracing::info!(%gid, %reason, "connection to gateway failed");
        self.gateways.remove(&gid);
        let unbound: Vec<ResourceId> = self
            .routes
            .iter()
            .filter(|(_, r)| r.gateway() == Some(gid))
            .map(|(rid, _)| *rid)
            .collect();
        for rid in unbound {
            if let Some(route) = self.routes.remove(&rid) {
                self.drop_queue(route.into_queue());
            }
        }
        self.events.push_back(ClientEvent::GatewayDisconnected {
            gateway: gid,
            reason,
        });
        // What the connection held for a path that never answered asks for a new connection,
        // as if it were sent now.
        for packet in self.node.take_unsent(gid) {
            match IpPacket::parse(packet) {
                Ok(packet) => self.handle_tun_packet(&packet, now),
                Err(error) => tracing::debug!(%error, "held packet"),
            }
        }
    }

    /// Queues a candidate for the portal, in the same message as the previous one if that was
    /// of the same kind and for the same gateway.
    fn push_candidate(&mut self, gateway: GatewayId, candidate: String, invalidate: bool) {
        match (self.egress.back_mut(), invalidate) {
            (Some(ClientEgress::IceCandidates(last)), false)
            | (Some(ClientEgress::InvalidateIceCandidates(last)), true)
                if last.gateway_id == gateway =>
            {
                last.candidates.push(candidate);
                return;
            }
            (
                Some(
                    ClientEgress::IceCandidates(_)
                    | ClientEgress::InvalidateIceCandidates(_)
                    | ClientEgress::RequestConnection(_),
                )
                | None,
                _,
            ) => {}
        }
        let candidates = GatewayCandidates {
            gateway_id: gateway,
            candidates: vec![candidate],
        };
        self.egress.push_back(if invalidate {
            ClientEgress::InvalidateIceCandidates(candidates)
        } else {
            ClientEgress::IceCandidates(candidates)
        });
    }
}
