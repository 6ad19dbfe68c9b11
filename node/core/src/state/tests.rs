//! Tests of the client and gateway tunnels.
//!
//! [`World`] drives one client and one gateway over an in-memory, zero-latency link with a
//! virtual clock, and plays the portal: it turns each side's egress messages into the other
//! side's ingress messages and answers connection requests for the resources its policy allows.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::crypto::Decryption;
use crate::ids::{ClientId, GatewayId, ResourceId};
use crate::packet::{IpPacket, Transport};
use crate::portal::messages::{
    AuthorizeFlow, ClientCandidates, ClientEgress, ClientIngress, ClientInit, ConnectionDetails,
    FlowClient, GatewayCandidates, GatewayEgress, GatewayIngress, GatewayInit, GatewayInstance,
    GatewayRestarted,
};
use crate::portal::{
    AccessRevoked, Authorization, IceCredentials, Interface, IpNetwork, PresharedKey,
    ResourceAddress, ResourceDescription,
};
use crate::{FailReason, Transmit, MAX_PENDING_DECRYPTIONS};

const CID: ClientId = ClientId(1);
const GID: GatewayId = GatewayId(1);
/// The number the gateway's process joined with.
const GATEWAY_INSTANCE: u64 = 77;
/// A range.
const R1: ResourceId = ResourceId(1);
/// A host.
const R2: ResourceId = ResourceId(2);
/// An IPv6 range.
const R3: ResourceId = ResourceId(3);
/// Unix time when every test starts.
const WALL_SECS: u64 = 1_700_000_000;

fn client_addr() -> SocketAddr {
    "192.0.2.1:50000".parse().unwrap()
}

/// A second address of the client's, added after [`client_addr`]: its pairs rank below.
fn client_addr2() -> SocketAddr {
    "192.0.2.2:50000".parse().unwrap()
}

fn gateway_addr() -> SocketAddr {
    "198.51.100.1:51820".parse().unwrap()
}

fn interface() -> Interface {
    Interface {
        ipv4: Ipv4Addr::new(100, 64, 0, 1),
        ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    }
}

fn v4() -> IpAddr {
    IpAddr::V4(interface().ipv4)
}

fn v6() -> IpAddr {
    IpAddr::V6(interface().ipv6)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn resource(rid: ResourceId) -> ResourceDescription {
    let address = match rid {
        R1 => ResourceAddress::Cidr {
            address: "10.0.0.0/24".parse().unwrap(),
        },
        R2 => ResourceAddress::Host {
            address: ip("10.0.1.5"),
        },
        R3 => ResourceAddress::Cidr {
            address: "fd10::/64".parse().unwrap(),
        },
        other => ResourceAddress::Cidr {
            address: IpNetwork::new(IpAddr::V4(Ipv4Addr::new(10, 9, other.0 as u8, 0)), 24)
                .unwrap(),
        },
    };
    ResourceDescription {
        id: rid,
        name: rid.to_string(),
        address,
    }
}

fn creds(u: &str) -> IceCredentials {
    IceCredentials {
        username: u.into(),
        password: format!("{u}-password-0123456789abc"),
    }
}

fn udp(src: IpAddr, dst: IpAddr, payload: &[u8]) -> IpPacket {
    IpPacket::udp(sock(src, 5353), sock(dst, 53), payload).unwrap()
}

/// The portal, as far as one client and one gateway see it.
struct Portal {
    client_key: crate::portal::PublicKey,
    gateway_key: crate::portal::PublicKey,
    psk: [u8; 32],
    /// The policy: resources the client may reach, and until when (unix seconds).
    allowed: BTreeMap<ResourceId, u64>,
    /// Resources whose `authorize_flow` the gateway does not get (it already has them).
    gateway_silent: BTreeSet<ResourceId>,
    /// Every `request_connection`, in order.
    requests: Vec<ResourceId>,
    /// Whether requests wait in `held` instead of being answered.
    hold: bool,
    held: Vec<ResourceId>,
}

impl Portal {
    fn authorize_flow(&self, rid: ResourceId) -> AuthorizeFlow {
        AuthorizeFlow {
            client: FlowClient {
                id: CID,
                public_key: self.client_key,
                ipv4: interface().ipv4,
                ipv6: interface().ipv6,
            },
            resource: resource(rid),
            client_ice: creds("cccc"),
            gateway_ice: creds("gggg"),
            preshared_key: PresharedKey::from_bytes(self.psk),
            expires_at: self.allowed.get(&rid).copied().unwrap_or(WALL_SECS + 3600),
        }
    }

    fn flow_authorized(&self, rid: ResourceId) -> ConnectionDetails {
        ConnectionDetails {
            resource_id: rid,
            gateway_id: GID,
            gateway_public_key: self.gateway_key,
            client_ice: creds("cccc"),
            gateway_ice: creds("gggg"),
            preshared_key: PresharedKey::from_bytes(self.psk),
            expires_at: self.allowed.get(&rid).copied().unwrap_or(WALL_SECS + 3600),
            gateway_instance: Some(GATEWAY_INSTANCE),
        }
    }
}

/// One client, one gateway, a link between them and the portal, on a virtual clock.
struct World {
    start: Instant,
    now: Instant,
    client: ClientState,
    gateway: GatewayState,
    portal: Portal,
    /// Whether the link carries datagrams.
    link_up: bool,
    /// Whether the gateway's binding requests are lost on their way (a one-way loss: the
    /// client's checks and the answers to them still get through).
    gateway_checks_lost: bool,
    /// Whether the gateway's NAT has no mapping for the client: what the client sends is
    /// dropped until the gateway sends to it (as after the NAT forgot its mappings).
    gateway_nat_closed: bool,
    /// How many `ice_candidates` messages of the client's the portal passed on.
    client_candidate_messages: usize,
    /// The local address of each binding request the client sent.
    client_checks: Vec<SocketAddr>,
    /// What reached the client's TUN device.
    client_tun: Vec<Vec<u8>>,
    /// What reached the resource network.
    gateway_tun: Vec<Vec<u8>>,
    client_events: Vec<ClientEvent>,
    gateway_events: Vec<GatewayEvent>,
}

impl World {
    /// The client knows R1, R2 and R3; the policy allows `allowed` for an hour.
    fn new(allowed: &[ResourceId]) -> Self {
        Self::with_client_clock(allowed, false)
    }

    /// [`World::new`], with a client that knows the wall clock (and so the authorizations'
    /// ends) if `clock`.
    fn with_client_clock(allowed: &[ResourceId], clock: bool) -> Self {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(WALL_SECS);
        let mut client = ClientState::new(1, now);
        if clock {
            client = client.with_wall_clock(now, wall);
        }
        let mut gateway = GatewayState::new(2, now, wall);
        client.add_local_address(client_addr(), now);
        gateway.add_local_address(gateway_addr(), now);
        let portal = Portal {
            client_key: client.public_key().to_bytes().into(),
            gateway_key: gateway.public_key().to_bytes().into(),
            psk: [7; 32],
            allowed: allowed.iter().map(|r| (*r, WALL_SECS + 3600)).collect(),
            gateway_silent: BTreeSet::new(),
            requests: Vec::new(),
            hold: false,
            held: Vec::new(),
        };
        let mut world = Self {
            start: now,
            now,
            client,
            gateway,
            portal,
            link_up: true,
            gateway_checks_lost: false,
            gateway_nat_closed: false,
            client_candidate_messages: 0,
            client_checks: Vec::new(),
            client_tun: Vec::new(),
            gateway_tun: Vec::new(),
            client_events: Vec::new(),
            gateway_events: Vec::new(),
        };
        world.client.handle_portal_message(
            ClientIngress::Init(ClientInit {
                interface: interface(),
                resources: vec![resource(R1), resource(R2), resource(R3)],
                relays: vec![],
                gateways: vec![],
            }),
            now,
        );
        world.gateway.handle_portal_message(
            GatewayIngress::Init(GatewayInit {
                relays: vec![],
                authorizations: vec![],
            }),
            now,
        );
        world.settle();
        world
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// A packet from the client's TUN device, and the timers it makes due at once (an idle
    /// connection checks its path before it sends).
    fn client_sends(&mut self, packet: &IpPacket) {
        self.client.handle_tun_packet(packet, self.now);
        self.run_for(Duration::ZERO);
    }

    /// A packet from the resource network.
    fn resource_sends(&mut self, packet: &IpPacket) {
        self.gateway.handle_tun_packet(packet, self.now);
        self.settle();
    }

    fn deliver_to_gateway(&mut self, transmit: Option<Transmit>) {
        let Some(t) = transmit.filter(|t| self.link_up && t.dst == gateway_addr()) else {
            return;
        };
        let from = t.src.unwrap_or_else(client_addr);
        if crate::connection::binding_request_id(&t.payload).is_some() {
            self.client_checks.push(from);
        }
        if self.gateway_nat_closed {
            return;
        }
        let packet = self
            .gateway
            .handle_network_input(gateway_addr(), from, &t.payload, self.now);
        self.gateway_tun
            .extend(packet.map(|p| p.as_bytes().to_vec()));
    }

    fn deliver_to_client(&mut self, transmit: Option<Transmit>) {
        let Some(t) =
            transmit.filter(|t| self.link_up && [client_addr(), client_addr2()].contains(&t.dst))
        else {
            return;
        };
        self.gateway_nat_closed = false;
        if self.gateway_checks_lost && crate::connection::binding_request_id(&t.payload).is_some() {
            return;
        }
        let packet = self
            .client
            .handle_network_input(t.dst, gateway_addr(), &t.payload, self.now);
        self.client_tun
            .extend(packet.map(|p| p.as_bytes().to_vec()));
    }

    /// Answers a connection request, or holds it.
    fn request(&mut self, rid: ResourceId) {
        if self.portal.hold {
            self.portal.held.push(rid);
            return;
        }
        if !self.portal.allowed.contains_key(&rid) {
            return;
        }
        if !self.portal.gateway_silent.contains(&rid) {
            let flow = self.portal.authorize_flow(rid);
            self.gateway
                .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), self.now);
        }
        let details = self.portal.flow_authorized(rid);
        self.client
            .handle_portal_message(ClientIngress::FlowAuthorized(details), self.now);
    }

    /// Answers the held requests.
    fn release(&mut self) {
        self.portal.hold = false;
        for rid in std::mem::take(&mut self.portal.held) {
            self.request(rid);
        }
        self.run_for(Duration::ZERO);
    }

    /// Moves messages, datagrams and events until nothing moves. Returns whether anything did.
    fn step(&mut self) -> bool {
        let mut moved = false;
        while let Some(message) = self.client.poll_portal_message() {
            moved = true;
            match message {
                ClientEgress::RequestConnection(r) => {
                    self.portal.requests.push(r.resource_id);
                    self.request(r.resource_id);
                }
                ClientEgress::IceCandidates(GatewayCandidates { candidates, .. }) => {
                    self.client_candidate_messages += 1;
                    let m = GatewayIngress::IceCandidates(ClientCandidates {
                        client_id: CID,
                        candidates,
                    });
                    self.gateway.handle_portal_message(m, self.now);
                }
                ClientEgress::InvalidateIceCandidates(GatewayCandidates { candidates, .. }) => {
                    let m = GatewayIngress::InvalidateIceCandidates(ClientCandidates {
                        client_id: CID,
                        candidates,
                    });
                    self.gateway.handle_portal_message(m, self.now);
                }
            }
        }
        while let Some(message) = self.gateway.poll_portal_message() {
            moved = true;
            let m = match message {
                GatewayEgress::IceCandidates(ClientCandidates { candidates, .. }) => {
                    ClientIngress::IceCandidates(GatewayCandidates {
                        gateway_id: GID,
                        candidates,
                    })
                }
                GatewayEgress::InvalidateIceCandidates(ClientCandidates { candidates, .. }) => {
                    ClientIngress::InvalidateIceCandidates(GatewayCandidates {
                        gateway_id: GID,
                        candidates,
                    })
                }
                // This portal tells the client of a flow when it tells the gateway.
                GatewayEgress::FlowAccepted(_) => continue,
            };
            self.client.handle_portal_message(m, self.now);
        }
        while let Some(t) = self.client.poll_transmit() {
            moved = true;
            self.deliver_to_gateway(Some(t));
        }
        while let Some(t) = self.gateway.poll_transmit() {
            moved = true;
            self.deliver_to_client(Some(t));
        }
        while let Some(e) = self.client.poll_event() {
            moved = true;
            self.client_events.push(e);
        }
        while let Some(e) = self.gateway.poll_event() {
            moved = true;
            self.gateway_events.push(e);
        }
        moved
    }

    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the world does not settle");
    }

    /// Runs timers and traffic for `duration` of virtual time.
    fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        for _ in 0..1_000_000 {
            self.settle();
            let next = [self.client.poll_timeout(), self.gateway.poll_timeout()]
                .into_iter()
                .flatten()
                .map(|(t, _)| t)
                .min();
            let Some(next) = next.filter(|t| *t <= deadline) else {
                self.now = deadline;
                self.client.handle_timeout(self.now);
                self.gateway.handle_timeout(self.now);
                self.settle();
                // What that moved may have made a timer due at once.
                let due = [self.client.poll_timeout(), self.gateway.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .any(|(t, _)| t <= deadline);
                if due {
                    continue;
                }
                return;
            };
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.gateway.handle_timeout(self.now);
        }
        panic!("timers do not advance");
    }

    /// Connects to the resources by sending one packet to each and running until delivered.
    fn connect(&mut self, targets: &[IpAddr]) {
        for (i, dst) in targets.iter().enumerate() {
            let src = if dst.is_ipv4() { v4() } else { v6() };
            self.client_sends(&udp(src, *dst, format!("hello {i}").as_bytes()));
        }
        self.run_for(Duration::from_secs(2));
        assert_eq!(
            self.gateway_tun.len(),
            targets.len(),
            "every first packet arrives"
        );
        assert!(self
            .client_events
            .contains(&ClientEvent::GatewayConnected(GID)));
        self.gateway_tun.clear();
    }
}

fn is_prohibited(bytes: &[u8], from: IpAddr, to: IpAddr) -> bool {
    let packet = IpPacket::parse(bytes).unwrap();
    let kind = match packet.transport() {
        Transport::Icmpv4 {
            icmp_type, code, ..
        } => (icmp_type, code) == (3, 13),
        Transport::Icmpv6 {
            icmp_type, code, ..
        } => (icmp_type, code) == (1, 1),
        Transport::Udp { .. }
        | Transport::Tcp { .. }
        | Transport::Other(_)
        | Transport::Fragment => false,
    };
    kind && packet.source() == from && packet.destination() == to && packet.checksums_valid()
}

#[test]
fn client_reaches_authorized_resource_and_reply_comes_back() {
    let mut w = World::new(&[R1, R3]);
    let echo = IpPacket::icmp_echo_request(v4(), ip("10.0.0.7"), 9, 1, b"ping").unwrap();
    w.client_sends(&echo);
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.gateway_tun, vec![echo.as_bytes().to_vec()], "unchanged");
    assert_eq!(w.portal.requests, vec![R1]);

    let reply = IpPacket::icmp_echo_reply(ip("10.0.0.7"), v4(), 9, 1, b"ping").unwrap();
    w.resource_sends(&reply);
    assert_eq!(w.client_tun, vec![reply.as_bytes().to_vec()]);

    // UDP, both ways, over the established connection; and IPv6 to another resource.
    let query = udp(v4(), ip("10.0.0.53"), b"query");
    w.client_sends(&query);
    let answer = IpPacket::udp(sock(ip("10.0.0.53"), 53), sock(v4(), 5353), b"answer").unwrap();
    w.resource_sends(&answer);
    let query6 = udp(v6(), ip("fd10::8"), b"query6");
    w.client_sends(&query6);
    w.run_for(Duration::from_secs(1));
    let answer6 = IpPacket::udp(sock(ip("fd10::8"), 53), sock(v6(), 5353), b"answer6").unwrap();
    w.resource_sends(&answer6);

    assert_eq!(
        w.gateway_tun,
        vec![
            echo.as_bytes().to_vec(),
            query.as_bytes().to_vec(),
            query6.as_bytes().to_vec()
        ]
    );
    assert_eq!(
        w.client_tun,
        vec![
            reply.as_bytes().to_vec(),
            answer.as_bytes().to_vec(),
            answer6.as_bytes().to_vec()
        ]
    );
    assert_eq!(w.portal.requests, vec![R1, R3]);
    assert_eq!(w.client.stats(), &ClientStats::default());
    assert_eq!(w.gateway.stats(), &GatewayStats::default());
}

#[test]
fn connections_report_the_kind_of_their_path() {
    let mut w = World::new(&[R1]);
    assert!(w.client.node().connection(GID).is_none());
    w.connect(&[ip("10.0.0.7")]);
    let client = w.client.node().connection(GID).unwrap();
    let gateway = w.gateway.node().connection(CID).unwrap();
    // One link between two host candidates: each side sends to the other's host candidate.
    assert_eq!(client.path.unwrap().remote, gateway_addr());
    assert_eq!(client.path.unwrap().relay, None);
    assert_eq!(client.remote_kind, Some(crate::CandidateKind::Host));
    assert_eq!(gateway.path.unwrap().remote, client_addr());
    assert_eq!(gateway.remote_kind, Some(crate::CandidateKind::Host));
}

#[test]
fn a_restarted_gateway_fails_its_connection_and_the_next_packet_asks_anew() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    assert_eq!(w.portal.requests, vec![R1]);
    w.client.handle_portal_message(
        ClientIngress::GatewayRestarted(GatewayRestarted { gateway_id: GID }),
        w.now,
    );
    w.settle();
    assert_failed_as_restarted_and_asks_again(&mut w);
}

/// The client's connection failed as one to a restarted gateway, and the route went with it:
/// the next packet asks the portal again.
fn assert_failed_as_restarted_and_asks_again(w: &mut World) {
    assert!(w.client.node().connection(GID).is_none());
    assert!(w.client_events.contains(&ClientEvent::GatewayDisconnected {
        gateway: GID,
        reason: FailReason::PeerRestarted,
    }));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"again"));
    assert_eq!(w.portal.requests, vec![R1, R1]);
}

/// The client's `init` after a rejoin, naming the gateway's process `instance`.
fn rejoin_init(instance: u64) -> ClientIngress {
    ClientIngress::Init(ClientInit {
        interface: interface(),
        resources: vec![resource(R1), resource(R2), resource(R3)],
        relays: vec![],
        gateways: vec![GatewayInstance {
            gateway_id: GID,
            instance,
        }],
    })
}

#[test]
fn a_rejoin_naming_another_gateway_process_fails_the_connection() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    // The gateway restarted while the client was cut off from the portal: the push saying
    // so was lost, and only the init after the rejoin tells.
    w.client
        .handle_portal_message(rejoin_init(GATEWAY_INSTANCE + 1), w.now);
    w.settle();
    assert_failed_as_restarted_and_asks_again(&mut w);
}

#[test]
fn a_rejoin_naming_the_same_gateway_process_keeps_the_connection() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.client
        .handle_portal_message(rejoin_init(GATEWAY_INSTANCE), w.now);
    w.settle();
    assert!(w
        .client
        .node()
        .connection(GID)
        .is_some_and(|c| c.established));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"still"));
    assert_eq!(w.portal.requests, vec![R1], "no new request");
    assert_eq!(w.gateway_tun.len(), 1, "sent on the kept connection");
}

/// The gateway gets new parameters for a connection (a new preshared key, after a portal
/// restart) before the client does.
fn gateway_gets_a_new_psk(w: &mut World, psk: u8) {
    w.portal.psk = [psk; 32];
    let flow = w.portal.authorize_flow(R1);
    w.gateway
        .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), w.now);
    w.settle();
}

#[test]
fn data_the_client_sent_on_the_old_session_arrives_after_the_gateway_replaced_its_connection() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    gateway_gets_a_new_psk(&mut w, 8);
    // The client has not been told yet: it sends on the session it has.
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"in flight"));
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"in flight").as_bytes()]
    );
    assert_eq!(w.gateway.node().retired_connections(), 1);
    // A second replacement keeps one: the cap is one per peer.
    gateway_gets_a_new_psk(&mut w, 9);
    assert_eq!(w.gateway.node().retired_connections(), 1);
    // After the grace, none, and the old session opens nothing any more.
    w.run_for(crate::RETIRED_GRACE + Duration::from_secs(1));
    assert_eq!(w.gateway.node().retired_connections(), 0);
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"too late"));
    assert_eq!(w.gateway_tun.len(), 1);
}

#[test]
fn unauthorized_destination_is_answered_with_icmp_prohibited() {
    let mut w = World::new(&[R1, R2]);
    w.connect(&[ip("10.0.0.7"), ip("10.0.1.5")]);
    // The revocation reaches the gateway; the client still routes R2 there.
    w.gateway.handle_portal_message(
        GatewayIngress::AccessRevoked(AccessRevoked {
            client_id: CID,
            resource_id: R2,
        }),
        w.now,
    );
    w.settle();

    let dropped = udp(v4(), ip("10.0.1.5"), b"secret");
    w.client_sends(&dropped);

    assert!(w.gateway_tun.is_empty(), "nothing reaches the resource");
    assert_eq!(w.gateway.stats().unauthorized, 1);
    assert_eq!(w.client_tun.len(), 1);
    assert!(is_prohibited(&w.client_tun[0], ip("10.0.1.5"), v4()));
    let reply = IpPacket::parse(w.client_tun[0].as_slice()).unwrap();
    assert!(reply.payload().starts_with(dropped.as_bytes()), "quotes it");

    // R1 is still fine.
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"fine"));
    assert_eq!(w.gateway_tun.len(), 1);
}

#[test]
fn wrong_source_from_an_authenticated_client_is_dropped() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.client_sends(&udp(ip("100.64.0.99"), ip("10.0.0.7"), b"spoofed"));
    w.client_sends(&udp(ip("fd00::99"), ip("fd10::1"), b"unrouted"));
    assert!(w.gateway_tun.is_empty());
    assert!(w.client_tun.is_empty(), "a spoofed source is not answered");
    assert_eq!(w.gateway.stats().wrong_source, 1);
    // The IPv6 packet was not even sent: R3 is not allowed, so no gateway serves it.
    assert_eq!(w.portal.requests, vec![R1, R3]);
}

#[test]
fn pending_packets_make_one_request_and_arrive_in_order() {
    let mut w = World::new(&[R1]);
    let packets: Vec<IpPacket> = (0..5u8)
        .map(|i| udp(v4(), ip("10.0.0.53"), &[i; 10]))
        .collect();
    // Two before the portal answers, three after it answered but before the connection is up.
    for p in &packets[..2] {
        w.client.handle_tun_packet(p, w.now);
        assert!(
            w.client.poll_transmit().is_none(),
            "sent before a connection exists"
        );
    }
    w.settle();
    assert_eq!(w.client.gateway_of(R1), Some(GID));
    for p in &packets[2..] {
        w.client.handle_tun_packet(p, w.now);
        w.settle();
    }
    assert!(w.gateway_tun.is_empty());
    w.run_for(Duration::from_secs(2));

    assert_eq!(w.portal.requests, vec![R1], "exactly one request");
    let expected: Vec<Vec<u8>> = packets.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(w.gateway_tun, expected);
    assert_eq!(w.client.stats().queue_overflow, 0);
}

#[test]
fn pending_queue_overflow_drops_the_oldest() {
    let mut w = World::new(&[R1]);
    w.portal.hold = true;
    let packets: Vec<IpPacket> = (0..40u8)
        .map(|i| udp(v4(), ip("10.0.0.53"), &[i; 10]))
        .collect();
    for p in &packets {
        w.client_sends(p);
    }
    assert_eq!(w.portal.requests, vec![R1]);
    assert_eq!(w.client.stats().queue_overflow, 8);
    w.release();
    w.run_for(Duration::from_secs(2));

    let expected: Vec<Vec<u8>> = packets[8..].iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(w.gateway_tun, expected);
}

#[test]
fn unanswered_request_times_out_and_the_next_packet_asks_again() {
    let mut w = World::new(&[R1]);
    w.portal.hold = true;
    w.client_sends(&udp(v4(), ip("10.0.0.53"), b"a"));
    w.run_for(REQUEST_TIMEOUT);
    assert_eq!(w.client.stats().queue_dropped, 1);
    w.client_sends(&udp(v4(), ip("10.0.0.53"), b"b"));
    assert_eq!(w.portal.requests, vec![R1, R1]);
}

#[test]
fn packets_without_a_resource_are_dropped() {
    let mut w = World::new(&[R1]);
    w.client_sends(&udp(v4(), ip("192.168.1.1"), b"nowhere"));
    assert_eq!(w.client.stats().no_resource, 1);
    assert!(w.portal.requests.is_empty());
}

#[test]
fn authorization_expiry_removes_access_at_the_expiry() {
    let mut w = World::new(&[R1, R2]);
    w.portal.allowed.insert(R2, WALL_SECS + 60);
    w.connect(&[ip("10.0.0.7"), ip("10.0.1.5")]);

    w.run_for(Duration::from_secs(60) - w.elapsed() - Duration::from_millis(1));
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"just in time"));
    assert_eq!(w.gateway_tun.len(), 1);

    w.run_for(Duration::from_millis(1));
    assert_eq!(w.elapsed(), Duration::from_secs(60));
    assert!(w.gateway_events.contains(&GatewayEvent::FlowEnded {
        client: CID,
        resource: R2,
        reason: FlowEndReason::Expired,
    }));
    assert!(!w.gateway.is_authorized(CID, R2, w.now));
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"too late"));
    assert_eq!(w.gateway_tun.len(), 1);
    assert!(is_prohibited(
        w.client_tun.last().unwrap(),
        ip("10.0.1.5"),
        v4()
    ));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"still fine"));
    assert_eq!(w.gateway_tun.len(), 2);
}

#[test]
fn a_client_in_use_renews_its_authorization_before_the_gateway_ends_it() {
    let mut w = World::with_client_clock(&[R2], true);
    w.portal.allowed.insert(R2, WALL_SECS + 300);
    w.connect(&[ip("10.0.1.5")]);
    assert_eq!(w.portal.requests, [R2]);
    // The portal's next authorization runs longer.
    w.portal.allowed.insert(R2, WALL_SECS + 900);
    // Traffic before the renewal point asks for nothing.
    w.run_for(Duration::from_secs(200) - w.elapsed());
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"early"));
    assert_eq!(w.portal.requests, [R2]);
    // Within the last minute: one request, and the packet still goes at once.
    w.run_for(Duration::from_secs(250) - w.elapsed());
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"renewing"));
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"renewing too"));
    assert_eq!(w.portal.requests, [R2, R2]);
    assert_eq!(w.gateway_tun.len(), 3);
    // Past the first authorization's end, the gateway holds the second one.
    w.run_for(Duration::from_secs(400) - w.elapsed());
    assert!(w.gateway.is_authorized(CID, R2, w.now));
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"later"));
    assert_eq!(w.gateway_tun.len(), 4);
    assert!(!w
        .gateway_events
        .iter()
        .any(|e| matches!(e, GatewayEvent::FlowEnded { .. })));
}

#[test]
fn an_idle_connection_near_its_authorizations_end_holds_the_packet_for_the_new_one() {
    let mut w = World::with_client_clock(&[R2], true);
    w.portal.allowed.insert(R2, WALL_SECS + 300);
    w.connect(&[ip("10.0.1.5")]);
    w.portal.allowed.insert(R2, WALL_SECS + 900);
    w.run_for(Duration::from_secs(260) - w.elapsed());
    assert!(w.client.node().connection(GID).unwrap().idle);
    // Held back, asked for, then sent: one request, one packet, nothing refused.
    w.portal.hold = true;
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"after idling"));
    assert_eq!(w.portal.requests, [R2, R2]);
    assert!(w.gateway_tun.is_empty(), "held back until the answer");
    w.release();
    assert_eq!(w.gateway_tun.len(), 1);
    assert!(w
        .client_tun
        .iter()
        .all(|p| !is_prohibited(p, ip("10.0.1.5"), v4())));
}

#[test]
fn an_idle_client_asks_again_after_its_authorization_ended_and_loses_nothing() {
    let mut w = World::with_client_clock(&[R2], true);
    w.portal.allowed.insert(R2, WALL_SECS + 60);
    w.connect(&[ip("10.0.1.5")]);
    w.portal.allowed.insert(R2, WALL_SECS + 3600);
    // Idle past the end: the gateway dropped it.
    w.run_for(Duration::from_secs(120) - w.elapsed());
    assert!(!w.gateway.is_authorized(CID, R2, w.now));
    // The next packet is held back, asked for and delivered, not refused by the gateway.
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"after a break"));
    assert_eq!(w.portal.requests, [R2, R2]);
    assert_eq!(w.gateway_tun.len(), 1);
    assert_eq!(
        w.gateway_tun[0],
        udp(v4(), ip("10.0.1.5"), b"after a break").as_bytes()
    );
    assert!(w
        .client_tun
        .iter()
        .all(|p| !is_prohibited(p, ip("10.0.1.5"), v4())));
}

#[test]
fn expiries_are_removed_in_time_and_key_order() {
    let now = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(WALL_SECS);
    let mut gateway = GatewayState::new(3, now, wall);
    let flow = |cid: u64, rid: ResourceId, secs: u64| {
        let mut f = Portal {
            client_key: crate::portal::PublicKey::from_bytes([cid as u8; 32]),
            gateway_key: crate::portal::PublicKey::from_bytes([0; 32]),
            psk: [1; 32],
            allowed: BTreeMap::from([(rid, WALL_SECS + secs)]),
            gateway_silent: BTreeSet::new(),
            requests: vec![],
            hold: false,
            held: vec![],
        }
        .authorize_flow(rid);
        f.client.id = ClientId(cid);
        f.client.ipv4 = Ipv4Addr::new(100, 64, 0, cid as u8);
        f.client.ipv6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, cid as u16);
        GatewayIngress::AuthorizeFlow(f)
    };
    for (cid, rid, secs) in [(2, R1, 60), (1, R2, 60), (3, R1, 30), (1, R1, 60)] {
        gateway.handle_portal_message(flow(cid, rid, secs), now);
    }
    let drain = |g: &mut GatewayState| {
        std::iter::from_fn(|| g.poll_event())
            .filter_map(|e| match e {
                GatewayEvent::FlowEnded {
                    client,
                    resource,
                    reason: FlowEndReason::Expired,
                } => Some((client, resource)),
                GatewayEvent::ClientConnected(_)
                | GatewayEvent::ClientDisconnected { .. }
                | GatewayEvent::FlowEnded { .. } => None,
            })
            .collect::<Vec<_>>()
    };
    let t30 = now + Duration::from_secs(30);
    let t60 = now + Duration::from_secs(60);
    assert!(gateway.poll_timeout().unwrap().0 <= t30);

    gateway.handle_timeout(t30 - Duration::from_millis(1));
    assert!(drain(&mut gateway).is_empty());
    gateway.handle_timeout(t30);
    assert_eq!(drain(&mut gateway), vec![(ClientId(3), R1)]);
    assert!(gateway.poll_timeout().unwrap().0 <= t60);
    assert!(
        gateway.node().connection(ClientId(3)).is_none(),
        "forgotten"
    );

    gateway.handle_timeout(t60);
    assert_eq!(
        drain(&mut gateway),
        vec![(ClientId(1), R1), (ClientId(1), R2), (ClientId(2), R1)]
    );
    assert_eq!(gateway.authorizations().count(), 0);
    assert_eq!(gateway.node().connections().count(), 0);
}

#[test]
fn gateway_init_revokes_exactly_the_unlisted_authorizations() {
    let mut w = World::new(&[R1, R2]);
    w.connect(&[ip("10.0.0.7"), ip("10.0.1.5")]);
    w.gateway_events.clear();
    w.gateway.handle_portal_message(
        GatewayIngress::Init(GatewayInit {
            relays: vec![],
            authorizations: vec![Authorization {
                client_id: CID,
                resource_id: R1,
                expires_at: WALL_SECS + 7200,
            }],
        }),
        w.now,
    );
    w.settle();
    assert_eq!(
        w.gateway_events,
        vec![GatewayEvent::FlowEnded {
            client: CID,
            resource: R2,
            reason: FlowEndReason::NotInInit,
        }]
    );
    let left: Vec<_> = w.gateway.authorizations().collect();
    assert_eq!(
        left,
        vec![(CID, R1, w.start + Duration::from_secs(7200))],
        "kept, with the new expiry"
    );
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"ok"));
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"no"));
    assert_eq!(w.gateway_tun.len(), 1);
    assert!(is_prohibited(
        w.client_tun.last().unwrap(),
        ip("10.0.1.5"),
        v4()
    ));
}

#[test]
fn the_gateway_gives_a_dead_connection_up_long_after_the_client() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.link_up = false;
    // Both sides' checks go unanswered from the same moment. The client gives up
    // MIGRATION_GRACE after its ICE lost every path; the gateway waits for an idle client's
    // next check, which may come from a new address, CONTROLLED_MIGRATION_GRACE.
    let (mut client_failed, mut gateway_failed) = (None, None);
    for _ in 0..600 {
        w.run_for(Duration::from_secs(1));
        let client_gone = w
            .client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::GatewayDisconnected { gateway: GID, .. }));
        let gateway_gone = w
            .gateway_events
            .iter()
            .any(|e| matches!(e, GatewayEvent::ClientDisconnected { client: CID, .. }));
        if client_gone {
            client_failed.get_or_insert(w.elapsed());
        }
        if gateway_gone {
            gateway_failed.get_or_insert(w.elapsed());
            break;
        }
    }
    let (client, gateway) = (client_failed.unwrap(), gateway_failed.unwrap());
    let apart = crate::CONTROLLED_MIGRATION_GRACE - crate::MIGRATION_GRACE;
    assert!(
        gateway >= client + apart - Duration::from_secs(5),
        "the client failed at {client:?}, the gateway at {gateway:?}"
    );
}

#[test]
fn access_survives_a_connection_failure() {
    let mut w = World::new(&[R1, R2]);
    w.connect(&[ip("10.0.0.7"), ip("10.0.1.5")]);
    w.link_up = false;
    // Idle connections probe sparsely, so noticing the loss takes a few minutes.
    w.run_for(Duration::from_secs(300));
    assert!(w
        .gateway_events
        .iter()
        .any(|e| matches!(e, GatewayEvent::ClientDisconnected { client: CID, .. })));
    assert!(w
        .client_events
        .iter()
        .any(|e| matches!(e, ClientEvent::GatewayDisconnected { gateway: GID, .. })));
    assert_eq!(
        w.client.gateway_of(R1),
        None,
        "the client forgot the binding"
    );
    assert_eq!(w.gateway.authorizations().count(), 2, "the gateway did not");

    // The client reconnects through R1; the gateway hears nothing new about R2.
    w.link_up = true;
    w.portal.gateway_silent.insert(R2);
    w.connect(&[ip("10.0.0.7")]);
    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"still mine"));
    assert_eq!(w.gateway_tun.len(), 1, "R2 still authorized at the gateway");
    assert_eq!(w.portal.requests, vec![R1, R2, R1, R2]);
}

/// A client connected to R1 (10.0.0.7) whose connection has gone idle.
fn idle_world() -> World {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.run_for(crate::IDLE_AFTER * 3);
    assert!(w.client.node().connection(GID).unwrap().idle);
    w
}

#[test]
fn the_first_packet_after_an_idle_spell_waits_for_the_path_and_is_not_lost() {
    let mut w = idle_world();
    // The path is down when the packet is sent: it waits instead of going into the void.
    w.link_up = false;
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"after a silence"));
    w.run_for(Duration::from_secs(2));
    assert!(w.gateway_tun.is_empty());
    // The path is back within the hold: the next check is answered and the packet goes.
    w.link_up = true;
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"after a silence").as_bytes()]
    );
    // Awake now: the next packet goes at once.
    w.client
        .handle_tun_packet(&udp(v4(), ip("10.0.0.7"), b"at once"), w.now);
    w.settle();
    assert_eq!(w.gateway_tun.len(), 2);
}

#[test]
fn a_connection_woken_by_a_new_candidate_holds_its_first_packet_until_the_path_answers() {
    let mut w = idle_world();
    // The path died while both idled; then the gateway signals a new candidate (its relay or
    // its NAT changed), which makes the connection active, though nothing proved the path.
    w.link_up = false;
    let candidate = "candidate:9 1 udp 1694498815 203.0.113.9 40000 typ srflx".to_string();
    w.client.handle_portal_message(
        ClientIngress::IceCandidates(GatewayCandidates {
            gateway_id: GID,
            candidates: vec![candidate],
        }),
        w.now,
    );
    w.settle();
    assert!(!w.client.node().connection(GID).unwrap().idle);
    w.run_for(Duration::from_millis(500));
    // The packet waits for an answer instead of going into the void.
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"after new candidates"));
    w.run_for(Duration::from_secs(1));
    assert!(w.gateway_tun.is_empty());
    w.link_up = true;
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"after new candidates").as_bytes()]
    );
}

#[test]
fn an_idle_client_whose_path_goes_unanswered_signals_its_candidates_again_and_the_gateway_checks() {
    let mut w = idle_world();
    // The gateway's NAT forgot its mappings while both idled: nothing of the client's reaches
    // the gateway until the gateway sends, and an idle gateway checks only every 25 s.
    w.gateway_nat_closed = true;
    let signalled = w.client_candidate_messages;
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"after a silence"));
    w.run_for(Duration::from_millis(500));
    assert!(w.gateway_tun.is_empty());
    assert_eq!(
        w.client_candidate_messages, signalled,
        "not before a check went unanswered"
    );
    // Once the check and its retransmission are unanswered, the candidates go through the
    // portal; the gateway checks at once, its checks open its NAT, and the packet goes.
    w.run_for(Duration::from_millis(1_500));
    assert_eq!(w.client_candidate_messages, signalled + 1, "once per wake");
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"after a silence").as_bytes()]
    );
}

/// The client's wake-ups over `span` of simulated time, each timer due counted once.
fn client_wakeups(w: &mut World, span: Duration) -> usize {
    let end = w.now + span;
    let mut wakeups = 0;
    while let Some((t, _)) = w.client.poll_timeout().filter(|(t, _)| *t <= end) {
        w.now = w.now.max(t);
        w.client.handle_timeout(w.now);
        w.gateway.handle_timeout(w.now);
        w.settle();
        wakeups += 1;
    }
    wakeups
}

#[test]
fn an_idle_connection_wakes_its_node_only_when_a_timer_is_due_and_still_renews_its_session() {
    let mut w = idle_world();
    let handshakes = |w: &World| {
        w.client
            .node()
            .connection(GID)
            .unwrap()
            .handshakes_initiated
    };
    let before = handshakes(&w);
    // Ten idle minutes: STUN keep-alives every 25 s, the relay's refreshes, and boringtun's
    // timers only when one is due: the session is renewed (every 300 s) all the same.
    let idle = client_wakeups(&mut w, Duration::from_secs(600));
    let connection = w.client.node().connection(GID).unwrap();
    assert!(connection.idle && connection.established);
    assert!(handshakes(&w) - before >= 2, "the idle session was renewed");
    assert!(idle <= 60, "{idle} wake-ups in 600 s idle");
    // A packet makes it active: the 250 ms tick is back.
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"awake"));
    w.settle();
    let active = client_wakeups(&mut w, Duration::from_secs(10));
    assert!(active >= 40, "{active} wake-ups in 10 s active");
}

#[test]
fn the_fallback_pair_is_checked_every_idle_interval_while_active_not_while_idle_and_at_a_wake() {
    let mut w = World::new(&[R1]);
    w.client.add_local_address(client_addr2(), w.now);
    w.connect(&[ip("10.0.0.7")]);
    let count =
        |w: &World, addr: SocketAddr| w.client_checks.iter().filter(|a| **a == addr).count();
    // Both pairs answered before the connection went idle; the better one carries the data.
    assert!(count(&w, client_addr2()) >= 1);
    // Active for 20 s (a packet a second): the nominated pair is checked every second, the
    // fallback once per idle interval at most.
    w.client_checks.clear();
    for i in 0..20u8 {
        w.client_sends(&udp(v4(), ip("10.0.0.7"), &[i; 8]));
        w.run_for(Duration::from_secs(1));
    }
    assert!(count(&w, client_addr()) >= 15, "{:?}", w.client_checks);
    assert!(count(&w, client_addr2()) <= 1, "{:?}", w.client_checks);
    // Ten idle minutes: keep-alives every 25 s on the nominated pair, none on the fallback.
    w.run_for(crate::IDLE_AFTER * 2);
    assert!(w.client.node().connection(GID).unwrap().idle);
    w.client_checks.clear();
    w.run_for(Duration::from_secs(600));
    assert!(count(&w, client_addr()) >= 20, "{:?}", w.client_checks);
    assert_eq!(count(&w, client_addr2()), 0);
    // A packet wakes it: the fallback is checked again at once, and the packet arrives.
    w.gateway_tun.clear();
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"awake"));
    w.run_for(Duration::from_millis(500));
    assert!(count(&w, client_addr2()) >= 1);
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"awake").as_bytes()]
    );
}

#[test]
fn a_packet_for_an_active_path_whose_checks_go_unanswered_waits_for_an_answer() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    // Active, and then the path stops carrying anything: after two checks a second apart go
    // unanswered, and before ICE gives the pair up, a packet waits instead of being lost.
    w.link_up = false;
    w.run_for(Duration::from_millis(2_600));
    assert!(w
        .client_events
        .iter()
        .all(|e| !matches!(e, ClientEvent::GatewayDisconnected { .. })));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"into the silence"));
    assert!(w.gateway_tun.is_empty());
    w.link_up = true;
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        w.gateway_tun,
        [udp(v4(), ip("10.0.0.7"), b"into the silence").as_bytes()]
    );
}

#[test]
fn an_answer_goes_at_once_over_the_path_the_peers_packet_just_came_over() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    // The gateway's own checks go unanswered from now on (as after the client's NAT rebound,
    // where they go to the old mapping), while the client's traffic and checks get through:
    // the gateway's path is in doubt, and ICE keeps it for the client's checks.
    w.gateway_checks_lost = true;
    for i in 0..8 {
        w.client_sends(&udp(v4(), ip("10.0.0.7"), format!("ping {i}").as_bytes()));
        w.run_for(Duration::from_millis(500));
    }
    w.gateway_tun.clear();
    w.client_tun.clear();
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"question"));
    assert_eq!(w.gateway_tun.len(), 1, "the question arrives");
    // The answer leaves at once: the question just proved the path it goes back on.
    w.resource_sends(&udp(ip("10.0.0.7"), v4(), b"answer"));
    assert_eq!(
        w.client_tun,
        [udp(ip("10.0.0.7"), v4(), b"answer").as_bytes()]
    );
}

#[test]
fn packets_held_by_a_connection_that_fails_go_out_on_the_next_one() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.run_for(crate::IDLE_AFTER * 3);
    w.link_up = false;
    for i in 0..3u8 {
        w.client_sends(&udp(v4(), ip("10.0.0.7"), &[i; 8]));
    }
    // No check is answered: the connection fails, within the hold and the migration grace.
    let failed = |w: &World| {
        w.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::GatewayDisconnected { gateway: GID, .. }))
    };
    let start = w.now;
    while !failed(&w) && w.now - start < crate::WAKE_HOLD + crate::MIGRATION_GRACE {
        w.run_for(Duration::from_millis(100));
    }
    assert!(failed(&w));
    assert_eq!(w.portal.requests, [R1, R1], "the held packets asked again");
    assert!(w.gateway_tun.is_empty());
    w.link_up = true;
    w.run_for(Duration::from_secs(5));
    let expected: Vec<Vec<u8>> = (0..3u8)
        .map(|i| udp(v4(), ip("10.0.0.7"), &[i; 8]).as_bytes().to_vec())
        .collect();
    assert_eq!(w.gateway_tun, expected, "each once, in order");
}

/// The gateway restarts (new key, no authorizations) while the client still has a connection
/// to its previous incarnation. A flow for a second resource replaces the connection; the
/// first resource's route must not keep pointing at a gateway that forgot its authorization.
#[test]
fn new_connection_after_gateway_restart_asks_again_for_the_other_resources() {
    let mut w = World::new(&[R1, R2]);
    w.connect(&[ip("10.0.0.7")]);

    let wall = UNIX_EPOCH + Duration::from_secs(WALL_SECS) + w.elapsed();
    w.gateway = GatewayState::new(3, w.now, wall);
    w.gateway.add_local_address(gateway_addr(), w.now);
    w.gateway.handle_portal_message(
        GatewayIngress::Init(GatewayInit {
            relays: vec![],
            authorizations: vec![],
        }),
        w.now,
    );
    w.portal.gateway_key = w.gateway.public_key().to_bytes().into();

    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"to R2"));
    w.run_for(Duration::from_secs(2));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"to R1 again"));
    w.run_for(Duration::from_secs(2));
    let payloads: Vec<Vec<u8>> = w
        .gateway_tun
        .iter()
        .map(|p| IpPacket::parse(p.as_slice()).unwrap().payload().to_vec())
        .collect();
    assert_eq!(payloads, vec![b"to R2".to_vec(), b"to R1 again".to_vec()]);
    assert_eq!(w.portal.requests, vec![R1, R2, R1]);
}

/// The client's last authorization is revoked and it then asks for another resource on the
/// same gateway. The client kept its connection (it is not told the gateway's side ended), so
/// the gateway must have kept its side too: the new flow's first packet arrives at once.
#[test]
fn last_revoked_flow_keeps_the_connection_for_the_next_one() {
    let mut w = World::new(&[R1, R2]);
    w.connect(&[ip("10.0.0.7")]);
    let index = w.gateway.node().connection(CID).unwrap().index;
    let revoked = AccessRevoked {
        client_id: CID,
        resource_id: R1,
    };
    w.gateway
        .handle_portal_message(GatewayIngress::AccessRevoked(revoked), w.now);
    w.client
        .handle_portal_message(ClientIngress::AccessRevoked(revoked), w.now);
    w.settle();
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"revoked"));
    assert!(w.gateway_tun.is_empty());

    w.client_sends(&udp(v4(), ip("10.0.1.5"), b"to R2"));
    assert_eq!(w.gateway_tun.len(), 1, "arrives without a new handshake");
    assert_eq!(w.gateway.node().connection(CID).unwrap().index, index);
}

#[test]
fn same_flow_again_keeps_the_connection_and_resends_candidates() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    let index = w.gateway.node().connection(CID).unwrap().index;

    // The client lost its state and asked again: same keys, same credentials.
    let flow = w.portal.authorize_flow(R1);
    w.gateway
        .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), w.now);
    assert_eq!(w.gateway.node().connection(CID).unwrap().index, index);
    match w.gateway.poll_portal_message() {
        Some(GatewayEgress::FlowAccepted(a)) => {
            assert_eq!((a.client_id, a.resource_id), (CID, R1));
            assert_eq!(
                a.ice_ufrag,
                w.portal.authorize_flow(R1).gateway_ice.username
            );
        }
        other => panic!("expected the flow's acceptance first, got {other:?}"),
    }
    match w.gateway.poll_portal_message() {
        Some(GatewayEgress::IceCandidates(c)) => {
            assert_eq!(c.client_id, CID);
            assert!(!c.candidates.is_empty());
        }
        other => panic!("expected candidates, got {other:?}"),
    }
    w.settle();

    // A new PSK replaces the tunnel.
    w.portal.psk = [8; 32];
    let flow = w.portal.authorize_flow(R1);
    w.gateway
        .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), w.now);
    assert_ne!(w.gateway.node().connection(CID).unwrap().index, index);
}

#[test]
fn client_drops_tunnel_packets_from_outside_the_gateway_resources() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    // The gateway believes the client may reach 10.9.9.0/24; the client knows nothing of it.
    let mut flow = w.portal.authorize_flow(ResourceId(9));
    flow.resource = resource(ResourceId(9));
    w.gateway
        .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), w.now);
    w.settle();
    w.resource_sends(&udp(ip("10.9.9.1"), v4(), b"unsolicited"));
    assert!(w.client_tun.is_empty());
    assert_eq!(w.client.stats().unexpected_source, 1);
    // And the gateway refuses replies from outside the client's authorizations.
    w.resource_sends(&udp(ip("10.0.1.5"), v4(), b"not authorized"));
    assert_eq!(w.gateway.stats().unauthorized_reply, 1);
}

#[test]
fn client_drops_tunnel_packets_addressed_to_others() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    // A gateway that sends, from a resource it serves, a packet for another tunnel address:
    // the client's host would route it on.
    let stray = udp(ip("10.0.0.7"), ip("100.64.0.99"), b"not yours");
    w.gateway
        .node_mut()
        .encapsulate(CID, &stray, w.now)
        .unwrap();
    w.settle();
    assert!(w.client_tun.is_empty());
    assert_eq!(w.client.stats().unexpected_destination, 1);
    // Its own address still gets through.
    w.resource_sends(&udp(ip("10.0.0.7"), v4(), b"yours"));
    assert_eq!(w.client_tun.len(), 1);
}

#[test]
fn revoked_resource_is_no_longer_routed() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.client.handle_portal_message(
        ClientIngress::AccessRevoked(AccessRevoked {
            client_id: CID,
            resource_id: R1,
        }),
        w.now,
    );
    w.settle();
    assert!(w
        .client_events
        .iter()
        .any(|e| matches!(e, ClientEvent::RoutesUpdated(routes) if routes.len() == 2)));
    w.client_sends(&udp(v4(), ip("10.0.0.7"), b"gone"));
    assert_eq!(w.client.stats().no_resource, 1);
    assert!(w.gateway_tun.is_empty());
}

#[test]
fn icmp_prohibited_replies_have_valid_checksums() {
    let cases = [
        udp(v4(), ip("10.0.0.7"), b"x"),
        udp(v6(), ip("fd10::7"), b"x"),
        IpPacket::icmp_echo_request(v4(), ip("10.0.0.7"), 1, 2, &[0; 3]).unwrap(),
        IpPacket::icmp_echo_request(v6(), ip("fd10::7"), 1, 2, &[0; 3]).unwrap(),
        udp(v4(), ip("10.0.0.7"), &[0xab; 1400]),
        udp(v6(), ip("fd10::7"), &[0xab; 1400]),
    ];
    for dropped in &cases {
        let reply = prohibited_reply(dropped).unwrap();
        assert!(reply.checksums_valid(), "{reply:?}");
        assert!(is_prohibited(
            reply.as_bytes(),
            dropped.destination(),
            dropped.source()
        ));
        let limit = if dropped.source().is_ipv4() {
            576
        } else {
            1280
        };
        assert!(reply.as_bytes().len() <= limit);
        let quoted = reply.payload();
        assert_eq!(quoted, &dropped.as_bytes()[..quoted.len()]);
        assert!(
            prohibited_reply(&reply).is_none(),
            "no error about an error"
        );
    }
}

#[test]
fn resource_table_finds_the_longest_prefix() {
    let mut table = ResourceTable::new();
    let net = |s: &str| s.parse::<IpNetwork>().unwrap();
    table.insert(net("10.0.0.0/8"), 'a');
    table.insert(net("10.1.0.0/16"), 'b');
    table.insert(net("10.1.2.3"), 'c');
    table.insert(net("0.0.0.0/0"), 'd');
    table.insert(net("fd00::/8"), 'e');
    table.insert(net("fd00:1::/32"), 'f');
    let find = |t: &ResourceTable<char>, s: &str| t.longest_match(ip(s)).map(|(_, v)| *v);
    assert_eq!(find(&table, "10.1.2.3"), Some('c'));
    assert_eq!(find(&table, "10.1.2.4"), Some('b'));
    assert_eq!(find(&table, "10.2.0.1"), Some('a'));
    assert_eq!(find(&table, "192.0.2.1"), Some('d'));
    assert_eq!(find(&table, "fd00:1::5"), Some('f'));
    assert_eq!(find(&table, "fd00:2::5"), Some('e'));
    assert_eq!(find(&table, "2001:db8::1"), None);
    assert_eq!(table.len(), 6);

    assert_eq!(table.remove(&net("10.1.0.0/16")), Some('b'));
    assert_eq!(find(&table, "10.1.2.4"), Some('a'));
    assert_eq!(table.remove(&net("10.1.0.0/16")), None);
    assert_eq!(
        table.longest_match(ip("10.1.2.3")).map(|(n, _)| n),
        Some(net("10.1.2.3/32"))
    );
}

#[test]
fn wall_clock_maps_unix_times_to_instants() {
    let now = Instant::now();
    let clock = WallClock::new(now, UNIX_EPOCH + Duration::from_secs(WALL_SECS));
    assert_eq!(
        clock.instant_at(WALL_SECS + 5),
        now + Duration::from_secs(5)
    );
    assert!(clock.instant_at(WALL_SECS - 5) <= now);
    assert!(clock.instant_at(u64::MAX) > now + Duration::from_secs(3600 * 24 * 365));
}

/// The client's next datagram for the gateway.
fn next_data_transmit(w: &mut World) -> Transmit {
    let t = w
        .client
        .poll_transmit()
        .expect("a datagram for the gateway");
    assert_eq!(t.dst, gateway_addr());
    t
}

#[test]
fn deferred_crypto_leaves_only_the_aead_to_the_runtime() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.client.set_deferred_crypto(true);
    w.gateway.set_deferred_crypto(true);
    let packets: Vec<IpPacket> = (0..3u8)
        .map(|i| udp(v4(), ip("10.0.0.7"), &[b'a' + i; 100]))
        .collect();
    let mut transmits = Vec::new();
    for packet in &packets {
        w.client.handle_tun_packet(packet, w.now);
        let t = next_data_transmit(&mut w);
        assert!(t.needs_seal());
        // Unsealed, the plain packet sits where the ciphertext goes.
        assert_eq!(
            &t.payload[16..16 + packet.as_bytes().len()],
            packet.as_bytes()
        );
        transmits.push(t);
    }

    // Unsealed, the gateway refuses it: the AEAD fails.
    let unsealed =
        w.gateway
            .handle_network_input(gateway_addr(), client_addr(), &transmits[0].payload, w.now);
    assert!(unsealed.is_none());
    let job = w.gateway.poll_decryption().expect("a data packet to open");
    assert!(w.gateway.handle_decryption(job, w.now).is_none());
    assert_eq!(w.gateway.node().stats().wireguard_errors, 1);

    // Sealed (in any order, as threads would), then opened in any order and finished in the
    // order they arrived: every packet comes out unchanged.
    for t in transmits.iter_mut().rev() {
        t.seal();
        assert!(!t.needs_seal());
        assert_ne!(&t.payload[16..32], &packets[0].as_bytes()[..16]);
    }
    for t in &transmits {
        let none = w
            .gateway
            .handle_network_input(gateway_addr(), client_addr(), &t.payload, w.now);
        assert!(none.is_none(), "nothing before it is opened");
    }
    let mut jobs: Vec<Decryption> = std::iter::from_fn(|| w.gateway.poll_decryption()).collect();
    assert_eq!(jobs.len(), 3);
    for job in jobs.iter_mut().rev() {
        job.run();
    }
    let out: Vec<Vec<u8>> = jobs
        .into_iter()
        .filter_map(|job| w.gateway.handle_decryption(job, w.now))
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let sent: Vec<Vec<u8>> = packets.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(out, sent);

    // A replay is refused before it costs an AEAD.
    w.gateway
        .handle_network_input(gateway_addr(), client_addr(), &transmits[1].payload, w.now);
    assert!(w.gateway.poll_decryption().is_none());
    assert_eq!(w.gateway.node().stats().wireguard_errors, 2);
}

#[test]
fn a_data_packet_beyond_the_pending_decryptions_cap_is_dropped() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.gateway.set_deferred_crypto(true);
    let packet = udp(v4(), ip("10.0.0.7"), b"x");
    for _ in 0..=MAX_PENDING_DECRYPTIONS {
        w.client.handle_tun_packet(&packet, w.now);
        let t = next_data_transmit(&mut w);
        w.gateway
            .handle_network_input(gateway_addr(), client_addr(), &t.payload, w.now);
    }
    assert_eq!(w.gateway.node().stats().decryption_queue_full, 1);
    let pending = std::iter::from_fn(|| w.gateway.poll_decryption()).count();
    assert_eq!(pending, MAX_PENDING_DECRYPTIONS);
}

#[test]
fn a_data_packet_opened_after_its_connection_went_is_dropped() {
    let mut w = World::new(&[R1]);
    w.connect(&[ip("10.0.0.7")]);
    w.gateway.set_deferred_crypto(true);
    w.client
        .handle_tun_packet(&udp(v4(), ip("10.0.0.7"), b"late"), w.now);
    let t = next_data_transmit(&mut w);
    w.gateway
        .handle_network_input(gateway_addr(), client_addr(), &t.payload, w.now);
    let mut job = w.gateway.poll_decryption().expect("a data packet to open");
    job.run();
    // A new preshared key (a portal restart): the gateway replaces the connection.
    w.portal.psk = [8; 32];
    let flow = w.portal.authorize_flow(R1);
    w.gateway
        .handle_portal_message(GatewayIngress::AuthorizeFlow(flow), w.now);
    let before = w.gateway.node().stats().unroutable_wireguard;
    assert!(w.gateway.handle_decryption(job, w.now).is_none());
    assert_eq!(w.gateway.node().stats().unroutable_wireguard, before + 1);
}
