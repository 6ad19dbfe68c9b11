//! [`TunnelEngine`]: a client's or a gateway's state and its portal session, as one [`Engine`]
//! for the event loop. [`ClientEngine`] and [`GatewayEngine`] are its two instances;
//! production binaries and the simulation run exactly these.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::{ControlCommand, ControlInput, Engine, PortalDriver};
use crate::crypto::Decryption;
use crate::ids::ResourceId;
use crate::packet::IpPacket;
use crate::pool::Buffer;
use crate::portal::messages::{ClientEgress, ClientIngress, GatewayEgress, GatewayIngress};
use crate::portal::{ChannelConfig, Event, JoinPayload, Message, RequestId};
use crate::state::{ClientEvent, ClientState, GatewayEvent, GatewayState};
use crate::{PublicKey, Transmit};

/// A client's or a gateway's state, as a [`TunnelEngine`] drives it: the calls both share.
pub trait RoleState {
    /// What the portal sends to this role.
    type Ingress: Message;
    /// What this role sends to the portal.
    type Egress: Message;
    /// What the state reports.
    type Event;

    /// The node's WireGuard public key, announced when joining the portal.
    fn public_key(&self) -> PublicKey;
    /// A datagram from the network; returns the packet for the device, if it carried one.
    fn handle_network_input(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<IpPacket<Buffer>>;
    /// A packet from the device; the datagram that carries it, when one can go, is queued for
    /// [`RoleState::poll_transmit`].
    fn handle_tun_packet(&mut self, packet: &IpPacket<&[u8]>, now: Instant);
    /// Leaves the AEAD of data packets to the runtime (see [`crate::crypto`]).
    fn set_deferred_crypto(&mut self, on: bool);
    /// The next data packet to open.
    fn poll_decryption(&mut self) -> Option<Decryption>;
    /// A data packet from [`RoleState::poll_decryption`]; returns the packet for the device,
    /// if it carried one.
    fn handle_decryption(&mut self, job: Decryption, now: Instant) -> Option<IpPacket<Buffer>>;
    /// A message from the portal.
    fn handle_portal_message(&mut self, message: Self::Ingress, now: Instant);
    /// A deadline passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The node is about to stop.
    fn close(&mut self, now: Instant);
    /// The network reported `dst` unreachable.
    fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant);
    /// The host's addresses changed.
    fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant);
    /// The next deadline, with why.
    fn poll_timeout(&mut self) -> Option<(Instant, &'static str)>;
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next message for the portal.
    fn poll_portal_message(&mut self) -> Option<Self::Egress>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// The resource `message` asks a connection for: the engine remembers it by request, so
    /// that a refusal reaches [`RoleState::handle_connection_request_failed`].
    fn requested_resource(message: &Self::Egress) -> Option<ResourceId> {
        let _ = message;
        None
    }
    /// The portal refused the connection request for `resource`.
    fn handle_connection_request_failed(&mut self, resource: ResourceId) {
        let _ = resource;
    }
}

/// The calls both states have as inherent methods of the same names, forwarded.
macro_rules! forward_role_state {
    ($ingress:ty, $egress:ty, $event:ty) => {
        type Ingress = $ingress;
        type Egress = $egress;
        type Event = $event;

        fn public_key(&self) -> PublicKey {
            self.public_key()
        }
        fn handle_network_input(
            &mut self,
            local: SocketAddr,
            from: SocketAddr,
            datagram: &[u8],
            now: Instant,
        ) -> Option<IpPacket<Buffer>> {
            self.handle_network_input(local, from, datagram, now)
        }
        fn handle_tun_packet(&mut self, packet: &IpPacket<&[u8]>, now: Instant) {
            self.handle_tun_packet(packet, now);
        }
        fn set_deferred_crypto(&mut self, on: bool) {
            self.set_deferred_crypto(on);
        }
        fn poll_decryption(&mut self) -> Option<Decryption> {
            self.poll_decryption()
        }
        fn handle_decryption(&mut self, job: Decryption, now: Instant) -> Option<IpPacket<Buffer>> {
            self.handle_decryption(job, now)
        }
        fn handle_portal_message(&mut self, message: $ingress, now: Instant) {
            self.handle_portal_message(message, now);
        }
        fn handle_timeout(&mut self, now: Instant) {
            self.handle_timeout(now);
        }
        fn close(&mut self, now: Instant) {
            self.close(now);
        }
        fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
            self.handle_unreachable(dst, now);
        }
        fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
            self.handle_network_change(addrs, now);
        }
        fn poll_timeout(&mut self) -> Option<(Instant, &'static str)> {
            self.poll_timeout()
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.poll_transmit()
        }
        fn poll_portal_message(&mut self) -> Option<$egress> {
            self.poll_portal_message()
        }
        fn poll_event(&mut self) -> Option<$event> {
            self.poll_event()
        }
    };
}

impl RoleState for ClientState {
    forward_role_state!(ClientIngress, ClientEgress, ClientEvent);

    fn requested_resource(message: &ClientEgress) -> Option<ResourceId> {
        match message {
            ClientEgress::RequestConnection(r) => Some(r.resource_id),
            ClientEgress::IceCandidates(_) | ClientEgress::InvalidateIceCandidates(_) => None,
        }
    }
    fn handle_connection_request_failed(&mut self, resource: ResourceId) {
        self.handle_connection_request_failed(resource);
    }
}

impl RoleState for GatewayState {
    forward_role_state!(GatewayIngress, GatewayEgress, GatewayEvent);
}

/// The process number announced at join: from the engine's seed, through a stream of its own
/// so that it says nothing of the other numbers drawn from the seed.
fn instance_number(seed: u64) -> u64 {
    use rand::{RngCore as _, SeedableRng as _};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(INSTANCE_STREAM);
    rng.next_u64()
}

/// The stream of the engine's seed the process number comes from.
const INSTANCE_STREAM: u64 = 0x696e_7374;

/// Something an engine reports to whoever runs it (logs, the simulation's checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent<T> {
    /// The state's own event.
    Tunnel(T),
    /// The portal room is joined.
    PortalConnected,
    /// The portal connection was lost; it reconnects by itself.
    PortalDisconnected(String),
    /// The portal session gave up for good (e.g. a certificate error): stop and tell the user.
    PortalFatal(String),
}

/// A client: [`ClientState`] plus its portal session.
pub type ClientEngine = TunnelEngine<ClientState>;

/// A gateway: [`GatewayState`] plus its portal session.
pub type GatewayEngine = TunnelEngine<GatewayState>;

/// A client's or a gateway's state plus its portal session.
pub struct TunnelEngine<S: RoleState> {
    state: S,
    portal: PortalDriver<S::Ingress, S::Egress>,
    /// Connection requests in flight, by the portal request that carries them.
    requests: BTreeMap<RequestId, ResourceId>,
    /// Packets for the device, produced directly by a call.
    device: VecDeque<Buffer>,
    events: VecDeque<EngineEvent<S::Event>>,
}

impl<S: RoleState> TunnelEngine<S> {
    /// `state` with a portal session that joins `topic`; `seed` decides its randomness and
    /// the number of its process (see [`JoinPayload::instance`]), so it must be drawn anew
    /// for every process.
    pub fn new(state: S, topic: &str, seed: u64) -> Self {
        let join = JoinPayload {
            public_key: crate::portal::PublicKey::from_bytes(state.public_key().to_bytes()),
            instance: Some(instance_number(seed)),
        };
        Self {
            state,
            portal: PortalDriver::new(ChannelConfig::new(topic, join), seed),
            requests: BTreeMap::new(),
            device: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The client's or gateway's state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, to act on it directly.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// Whether the portal room is joined.
    pub fn is_joined(&self) -> bool {
        self.portal.is_joined()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EngineEvent<S::Event>> {
        self.events.pop_front()
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(event) = self.portal.poll_event() {
                progress = true;
                match event {
                    Event::Message(message) => self.state.handle_portal_message(message, now),
                    Event::Reply { id, result } => {
                        if let (Some(rid), Err(error)) = (self.requests.remove(&id), result) {
                            tracing::debug!(%rid, %error, "connection request refused");
                            self.state.handle_connection_request_failed(rid);
                        }
                    }
                    Event::Connected => self.events.push_back(EngineEvent::PortalConnected),
                    Event::Disconnected { reason } => self
                        .events
                        .push_back(EngineEvent::PortalDisconnected(reason.to_string())),
                    Event::Fatal { error } => {
                        tracing::error!(%error, "portal session failed for good");
                        self.events
                            .push_back(EngineEvent::PortalFatal(error.to_string()));
                    }
                    Event::OpenSocket | Event::CloseSocket => {}
                }
            }
            while let Some(message) = self.state.poll_portal_message() {
                progress = true;
                let rid = S::requested_resource(&message);
                match self.portal.send(&message) {
                    Ok(id) => {
                        if let Some(rid) = rid {
                            self.requests.insert(id, rid);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "cannot encode a portal message"),
                }
            }
            while let Some(event) = self.state.poll_event() {
                progress = true;
                self.events.push_back(EngineEvent::Tunnel(event));
            }
            if !progress {
                return;
            }
        }
    }
}

impl<S: RoleState> Engine for TunnelEngine<S> {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        if let Some(packet) = self.state.handle_network_input(local, from, bytes, now) {
            self.device.push_back(packet.into_inner());
        }
        self.drain(now);
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.handle_device_bytes(&packet, now);
    }

    fn set_deferred_crypto(&mut self, on: bool) {
        self.state.set_deferred_crypto(on);
    }

    fn close(&mut self, now: Instant) {
        self.state.close(now);
        self.drain(now);
    }

    fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
        self.state.handle_unreachable(dst, now);
        self.drain(now);
    }

    fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
        self.state.handle_network_change(addrs, now);
        // The portal's TCP connection was made from the old address too.
        self.portal.handle_network_change(now);
        self.drain(now);
    }

    fn poll_decryption(&mut self) -> Option<Decryption> {
        self.state.poll_decryption()
    }

    fn handle_decryption(&mut self, job: Decryption, now: Instant) {
        if let Some(packet) = self.state.handle_decryption(job, now) {
            self.device.push_back(packet.into_inner());
        }
        self.drain(now);
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        // Parsed in place: the state only reads the packet (it encrypts into a pooled buffer).
        match IpPacket::parse(packet) {
            Ok(packet) => self.state.handle_tun_packet(&packet, now),
            Err(error) => tracing::debug!(%error, "invalid packet from the device"),
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.state.handle_timeout(now);
        self.portal.handle_timeout(now);
        self.drain(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let state = self.state.poll_timeout().map(|(t, _)| t);
        [state, self.portal.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.state.poll_transmit()
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        self.device.pop_front()
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.portal.handle_control(input, now);
        self.drain(now);
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.portal.poll_control()
    }
}
