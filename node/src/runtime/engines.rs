//! The client's and the gateway's engines: a tunnel state and its portal session, as one
//! [`Engine`] for the event loop. Production binaries and the simulation run exactly these.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::{ControlCommand, ControlInput, Engine, PortalDriver};
use crate::ids::ResourceId;
use crate::packet::IpPacket;
use crate::pool::Buffer;
use crate::portal::messages::{ClientEgress, ClientIngress, GatewayEgress, GatewayIngress};
use crate::portal::{ChannelConfig, Event, JoinPayload, RequestId};
use crate::tunnel::{ClientEvent, ClientTunnel, GatewayEvent, GatewayTunnel};
use crate::Transmit;

/// Something an engine reports to whoever runs it (logs, the simulation's checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent<T> {
    /// The tunnel's own event.
    Tunnel(T),
    /// The portal room is joined.
    PortalConnected,
    /// The portal connection was lost; it reconnects by itself.
    PortalDisconnected(String),
    /// The portal session gave up for good (e.g. a certificate error): stop and tell the user.
    PortalFatal(String),
}

/// Packets for the device and transmits produced directly by a call.
#[derive(Debug, Default)]
struct Outputs {
    transmits: VecDeque<Transmit>,
    device: VecDeque<Buffer>,
}

/// A client: [`ClientTunnel`] plus its portal session.
pub struct ClientEngine {
    tunnel: ClientTunnel,
    portal: PortalDriver<ClientIngress, ClientEgress>,
    requests: BTreeMap<RequestId, ResourceId>,
    out: Outputs,
    events: VecDeque<EngineEvent<ClientEvent>>,
}

impl ClientEngine {
    /// A client whose portal session joins `topic`; `seed` decides its randomness.
    pub fn new(tunnel: ClientTunnel, topic: &str, seed: u64) -> Self {
        let join = JoinPayload {
            public_key: tunnel.public_key().into(),
        };
        Self {
            tunnel,
            portal: PortalDriver::new(ChannelConfig::new(topic, join), seed),
            requests: BTreeMap::new(),
            out: Outputs::default(),
            events: VecDeque::new(),
        }
    }

    /// The tunnel state.
    pub fn tunnel(&self) -> &ClientTunnel {
        &self.tunnel
    }

    /// The tunnel state, to act on it directly.
    pub fn tunnel_mut(&mut self) -> &mut ClientTunnel {
        &mut self.tunnel
    }

    /// Whether the portal room is joined.
    pub fn is_joined(&self) -> bool {
        self.portal.is_joined()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EngineEvent<ClientEvent>> {
        self.events.pop_front()
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(event) = self.portal.poll_event() {
                progress = true;
                match event {
                    Event::Message(message) => self.tunnel.handle_portal_message(message, now),
                    Event::Reply { id, result } => {
                        if let (Some(rid), Err(error)) = (self.requests.remove(&id), result) {
                            tracing::debug!(%rid, %error, "connection request refused");
                            self.tunnel.handle_connection_request_failed(rid);
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
            while let Some(message) = self.tunnel.poll_portal_message() {
                progress = true;
                let rid = match &message {
                    ClientEgress::RequestConnection(r) => Some(r.resource_id),
                    ClientEgress::IceCandidates(_) | ClientEgress::InvalidateIceCandidates(_) => {
                        None
                    }
                };
                match self.portal.send(&message) {
                    Ok(id) => {
                        if let Some(rid) = rid {
                            self.requests.insert(id, rid);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "cannot encode a portal message"),
                }
            }
            while let Some(event) = self.tunnel.poll_event() {
                progress = true;
                self.events.push_back(EngineEvent::Tunnel(event));
            }
            if !progress {
                return;
            }
        }
    }
}

impl Engine for ClientEngine {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        if let Some(packet) = self.tunnel.handle_network_input(local, from, bytes, now) {
            self.out.device.push_back(packet.into_inner());
        }
        self.drain(now);
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.handle_device_bytes(&packet, now);
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        // Parsed in place: the tunnel only reads the packet (it encrypts into a pooled buffer).
        match IpPacket::parse(packet) {
            Ok(packet) => {
                if let Some(t) = self.tunnel.handle_tun_packet(&packet, now) {
                    self.out.transmits.push_back(t);
                }
            }
            Err(error) => tracing::debug!(%error, "invalid packet from the device"),
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tunnel.handle_timeout(now);
        self.portal.handle_timeout(now);
        self.drain(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let tunnel = self.tunnel.poll_timeout().map(|(t, _)| t);
        [tunnel, self.portal.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out
            .transmits
            .pop_front()
            .or_else(|| self.tunnel.poll_transmit())
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        self.out.device.pop_front()
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.portal.handle_control(input, now);
        self.drain(now);
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.portal.poll_control()
    }
}

/// A gateway: [`GatewayTunnel`] plus its portal session.
pub struct GatewayEngine {
    tunnel: GatewayTunnel,
    portal: PortalDriver<GatewayIngress, GatewayEgress>,
    out: Outputs,
    events: VecDeque<EngineEvent<GatewayEvent>>,
}

impl GatewayEngine {
    /// A gateway whose portal session joins `topic`; `seed` decides its randomness.
    pub fn new(tunnel: GatewayTunnel, topic: &str, seed: u64) -> Self {
        let join = JoinPayload {
            public_key: tunnel.public_key().into(),
        };
        Self {
            tunnel,
            portal: PortalDriver::new(ChannelConfig::new(topic, join), seed),
            out: Outputs::default(),
            events: VecDeque::new(),
        }
    }

    /// The tunnel state.
    pub fn tunnel(&self) -> &GatewayTunnel {
        &self.tunnel
    }

    /// The tunnel state, to act on it directly.
    pub fn tunnel_mut(&mut self) -> &mut GatewayTunnel {
        &mut self.tunnel
    }

    /// Whether the portal room is joined.
    pub fn is_joined(&self) -> bool {
        self.portal.is_joined()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EngineEvent<GatewayEvent>> {
        self.events.pop_front()
    }

    fn drain(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(event) = self.portal.poll_event() {
                progress = true;
                match event {
                    Event::Message(message) => self.tunnel.handle_portal_message(message, now),
                    Event::Reply { .. } | Event::OpenSocket | Event::CloseSocket => {}
                    Event::Connected => self.events.push_back(EngineEvent::PortalConnected),
                    Event::Disconnected { reason } => self
                        .events
                        .push_back(EngineEvent::PortalDisconnected(reason.to_string())),
                    Event::Fatal { error } => {
                        tracing::error!(%error, "portal session failed for good");
                        self.events
                            .push_back(EngineEvent::PortalFatal(error.to_string()));
                    }
                }
            }
            while let Some(message) = self.tunnel.poll_portal_message() {
                progress = true;
                if let Err(error) = self.portal.send(&message) {
                    tracing::debug!(%error, "cannot encode a portal message");
                }
            }
            while let Some(event) = self.tunnel.poll_event() {
                progress = true;
                self.events.push_back(EngineEvent::Tunnel(event));
            }
            if !progress {
                return;
            }
        }
    }
}

impl Engine for GatewayEngine {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        if let Some(packet) = self.tunnel.handle_network_input(local, from, bytes, now) {
            self.out.device.push_back(packet.into_inner());
        }
        self.drain(now);
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.handle_device_bytes(&packet, now);
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        // Parsed in place: the tunnel only reads the packet (it encrypts into a pooled buffer).
        match IpPacket::parse(packet) {
            Ok(packet) => {
                if let Some(t) = self.tunnel.handle_tun_packet(&packet, now) {
                    self.out.transmits.push_back(t);
                }
            }
            Err(error) => tracing::debug!(%error, "invalid packet from the device"),
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tunnel.handle_timeout(now);
        self.portal.handle_timeout(now);
        self.drain(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let tunnel = self.tunnel.poll_timeout().map(|(t, _)| t);
        [tunnel, self.portal.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out
            .transmits
            .pop_front()
            .or_else(|| self.tunnel.poll_transmit())
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        self.out.device.pop_front()
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.portal.handle_control(input, now);
        self.drain(now);
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.portal.poll_control()
    }
}
