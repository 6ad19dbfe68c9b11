//! An in-memory network for driving [`Node`]s with simulated time.
//!
//! Hosts are clients and gateways; a datagram is delivered after a fixed latency, NAT boxes
//! rewrite source addresses on the way out, and a signalling channel stands in for the portal
//! (it relays ICE candidates between peers after its own latency). Time moves only when
//! [`MemNet::run_until`] jumps to the next deadline, so a minute of simulated time costs
//! microseconds and every run is exactly reproducible.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use node_core::datagram::{classify, DatagramKind};
use node_core::ids::{ClientId, GatewayId, RelayId};
use node_core::packet::IpPacket;
use node_core::turn::RelayConfig;
use node_core::{
    ConnectionInfo, Credentials, Error, Event, Node, Psk, PublicKey, Role, Transmit, Upsert,
};

use crate::nat::{Filtering, NatConfig, NatTable};
use crate::SIM_EPOCH_UNIX_SECS;

/// A host in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(usize);

/// A NAT box in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatId(usize);

/// The node a host runs, with its own identity.
pub enum Peer {
    /// A client: its connections are to gateways.
    Client {
        /// Its identity.
        id: ClientId,
        /// The node.
        node: Node<GatewayId>,
    },
    /// A gateway: its connections are to clients.
    Gateway {
        /// Its identity.
        id: GatewayId,
        /// The node.
        node: Node<ClientId>,
    },
    /// A TURN relay.
    Relay {
        /// Its identity.
        id: RelayId,
        /// The relay's sans-IO server.
        server: Box<relay_sim::Server>,
    },
}

/// The TURN REST secret the relays share with the (simulated) portal.
pub const RELAY_SECRET: &str = "memnet-relay-secret";

#[derive(Debug, Clone, Copy)]
enum Identity {
    Client(ClientId),
    Gateway(GatewayId),
    Relay,
}

/// An IP packet that came out of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Simulated time since the start.
    pub at: Duration,
    /// The host whose tunnel it came through, as the receiving node attributed it.
    pub from: HostId,
    /// The inner packet's bytes.
    pub packet: Vec<u8>,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Simulated time since the start.
    pub at: Duration,
    /// The host it happened on.
    pub host: String,
    /// What happened.
    pub what: String,
}

/// A host: a node plus where it sits in the network.
pub struct Host {
    /// Its name in the timeline.
    pub name: String,
    /// The address its socket is bound to (behind a NAT: the inside address).
    pub addr: SocketAddr,
    /// The address inside tunnels.
    pub tunnel_ip: IpAddr,
    /// The NAT in front of it.
    pub nat: Option<NatId>,
    /// Its node.
    pub peer: Peer,
    /// Inner packets delivered to it, in order.
    pub received: Vec<Received>,
    /// Errors `decapsulate` or `encapsulate` returned, by kind.
    pub errors: Vec<String>,
    online: bool,
    /// Offline, but its kernel answers what is sent to it with ICMP port unreachable.
    refuses: bool,
}

/// The parameters both ends of a connection were given; upserting them again keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// The preshared key.
    pub psk: Psk,
    /// ICE credentials of the client's end.
    pub client_creds: Credentials,
    /// ICE credentials of the gateway's end.
    pub gateway_creds: Credentials,
}

enum Delivery {
    Datagram {
        to: HostId,
        local: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Candidate {
        to: HostId,
        from: HostId,
        candidate: String,
        invalidate: bool,
    },
    /// An ICMP port unreachable for a datagram `to` sent to `dst`.
    Unreachable { to: HostId, dst: SocketAddr },
}

/// Which datagrams a [`MemNet::set_filter`] predicate sees.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// When it was sent.
    pub at: Instant,
    /// Sending host.
    pub from: HostId,
    /// Receiving host.
    pub to: HostId,
    /// What the datagram looks like.
    pub kind: DatagramKind,
    /// For STUN, the message type (0x0001 is a binding request).
    pub stun_type: Option<u16>,
}

type Filter = Box<dyn FnMut(&InFlight) -> bool>;

/// The network, its hosts and the clock.
pub struct MemNet {
    start: Instant,
    now: Instant,
    latency: Duration,
    signal_latency: Duration,
    hosts: Vec<Host>,
    nats: Vec<NatTable>,
    queue: BTreeMap<(Instant, u64), Delivery>,
    seq: u64,
    psk_counter: u8,
    filter: Option<Filter>,
    timeline: Vec<Entry>,
    events: Vec<(Duration, HostId, Event<PeerRef>)>,
    echo: bool,
    auto_signal: bool,
    held_signals: Vec<Signal>,
}

/// A node's peer in events: the raw id and whether it is a client.
pub type PeerRef = (u64, bool);

/// A candidate on its way through the signalling channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// Who sent it.
    pub from: HostId,
    /// Who it is for.
    pub to: HostId,
    /// The candidate.
    pub candidate: String,
    /// Whether it invalidates rather than adds.
    pub invalidate: bool,
}

impl MemNet {
    /// An empty network whose clock starts at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            now: start,
            latency: Duration::from_millis(10),
            signal_latency: Duration::from_millis(50),
            hosts: Vec::new(),
            nats: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            psk_counter: 0,
            filter: None,
            timeline: Vec::new(),
            events: Vec::new(),
            echo: false,
            auto_signal: true,
            held_signals: Vec::new(),
        }
    }

    /// One-way latency of every link.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    /// Print timeline entries as they happen.
    pub fn set_echo(&mut self, echo: bool) {
        self.echo = echo;
    }

    /// With `false`, candidates are held back (see [`MemNet::take_signals`]) instead of relayed.
    pub fn set_auto_signal(&mut self, on: bool) {
        self.auto_signal = on;
    }

    /// Candidates held back while auto-signalling is off.
    pub fn take_signals(&mut self) -> Vec<Signal> {
        std::mem::take(&mut self.held_signals)
    }

    /// Hands `to` a list of candidates from `from` in one signalling message.
    pub fn deliver_candidates(&mut self, to: HostId, from: HostId, candidates: &[&str]) {
        let now = self.now;
        let from_id = self.identity(from);
        match (&mut self.hosts[to.0].peer, from_id) {
            (Peer::Client { node, .. }, Identity::Gateway(id)) => {
                node.add_remote_candidates(id, candidates.iter().copied(), now);
            }
            (Peer::Gateway { node, .. }, Identity::Client(id)) => {
                node.add_remote_candidates(id, candidates.iter().copied(), now);
            }
            (Peer::Client { .. } | Peer::Gateway { .. } | Peer::Relay { .. }, _) => {}
        }
        self.flush();
    }

    /// Every event the nodes emitted, with when and where.
    pub fn events(&self) -> &[(Duration, HostId, Event<PeerRef>)] {
        &self.events
    }

    /// What `host` knows about its connection to `peer`.
    pub fn connection(&self, host: HostId, peer: HostId) -> Option<ConnectionInfo> {
        match (&self.hosts[host.0].peer, self.identity(peer)) {
            (Peer::Client { node, .. }, Identity::Gateway(id)) => node.connection(id),
            (Peer::Gateway { node, .. }, Identity::Client(id)) => node.connection(id),
            (Peer::Client { .. } | Peer::Gateway { .. } | Peer::Relay { .. }, _) => None,
        }
    }

    /// Drops every datagram for which `drop` returns true.
    pub fn set_filter(&mut self, drop: impl FnMut(&InFlight) -> bool + 'static) {
        self.filter = Some(Box::new(drop));
    }

    /// Removes the filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Everything that happened so far.
    pub fn timeline(&self) -> &[Entry] {
        &self.timeline
    }

    /// A NAT box with public address `public_ip`: endpoint-independent mapping and filtering,
    /// and new mappings take the lowest free port from `first_port`, so an expired mapping's
    /// port is reused.
    pub fn add_nat(&mut self, public_ip: IpAddr, first_port: u16) -> NatId {
        // Its inside hosts join as they are added (`add_host`).
        let config = NatConfig::new(public_ip, [])
            .filtering(Filtering::EndpointIndependent)
            .ports(first_port..=u16::MAX);
        self.nats.push(NatTable::new(config));
        NatId(self.nats.len() - 1)
    }

    /// A client host with a node built from `seed`.
    pub fn add_client(
        &mut self,
        name: &str,
        id: u64,
        addr: SocketAddr,
        nat: Option<NatId>,
        seed: u64,
    ) -> HostId {
        let mut node = Node::new(Role::Client, seed, self.now);
        node.add_local_address(addr);
        let tunnel_ip = IpAddr::V4(Ipv4Addr::new(100, 64, (id >> 8) as u8, id as u8));
        self.add_host(
            name,
            addr,
            tunnel_ip,
            nat,
            Peer::Client {
                id: ClientId(id),
                node,
            },
        )
    }

    /// A gateway host with a node built from `seed`.
    pub fn add_gateway(
        &mut self,
        name: &str,
        id: u64,
        addr: SocketAddr,
        nat: Option<NatId>,
        seed: u64,
    ) -> HostId {
        let mut node = Node::new(Role::Gateway, seed, self.now);
        node.add_local_address(addr);
        let tunnel_ip = IpAddr::V4(Ipv4Addr::new(100, 96, (id >> 8) as u8, id as u8));
        self.add_host(
            name,
            addr,
            tunnel_ip,
            nat,
            Peer::Gateway {
                id: GatewayId(id),
                node,
            },
        )
    }

    fn add_host(
        &mut self,
        name: &str,
        addr: SocketAddr,
        tunnel_ip: IpAddr,
        nat: Option<NatId>,
        peer: Peer,
    ) -> HostId {
        if let Some(nat) = nat {
            self.nats[nat.0].add_inside_host(addr.ip());
        }
        self.hosts.push(Host {
            name: name.to_owned(),
            addr,
            tunnel_ip,
            nat,
            peer,
            received: Vec::new(),
            errors: Vec::new(),
            online: true,
            refuses: false,
        });
        HostId(self.hosts.len() - 1)
    }

    /// A TURN relay listening on `addr` (port 3478), public.
    pub fn add_relay(&mut self, name: &str, id: u64, addr: SocketAddr, seed: u64) -> HostId {
        let IpAddr::V4(public_ip) = addr.ip() else {
            panic!("relays are IPv4")
        };
        let mut config = relay_sim::Config::new("memnet", RELAY_SECRET, public_ip);
        config.listen_port = addr.port();
        // Hosts here get private addresses (10.x, 192.168.x) that every host can reach.
        config.allow_peers = [
            (Ipv4Addr::new(10, 0, 0, 0), 8),
            (Ipv4Addr::new(192, 168, 0, 0), 16),
        ]
        .into_iter()
        .map(|(ip, prefix)| relay_sim::IpNet::new(ip.into(), prefix).expect("a network"))
        .collect();
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let server = relay_sim::Server::new(config, key, self.now, SIM_EPOCH_UNIX_SECS)
            .expect("a valid relay configuration");
        let peer = Peer::Relay {
            id: RelayId(id),
            server: Box::new(server),
        };
        self.add_host(name, addr, addr.ip(), None, peer)
    }

    /// Tells `host`'s node to use `relay`, with credentials as the portal would mint them.
    pub fn use_relay(&mut self, host: HostId, relay: HostId) {
        let (id, server) = match &self.hosts[relay.0].peer {
            Peer::Relay { id, .. } => (*id, self.hosts[relay.0].addr),
            Peer::Client { .. } | Peer::Gateway { .. } => panic!("{relay:?} is not a relay"),
        };
        let name = self.hosts[host.0].name.clone();
        let (username, password) =
            relay_sim::auth::rest_credentials(RELAY_SECRET, SIM_EPOCH_UNIX_SECS + 86_400, &name);
        let config = RelayConfig {
            id,
            server,
            username,
            password,
        };
        let now = self.now;
        match &mut self.hosts[host.0].peer {
            Peer::Client { node, .. } => node.add_relay(config, now),
            Peer::Gateway { node, .. } => node.add_relay(config, now),
            Peer::Relay { .. } => panic!("{host:?} is a relay"),
        }
        self.record(host, format!("use relay {id}"));
        self.flush();
    }

    /// Tells `host`'s node to stop using `relay`, as the portal does when a relay goes away.
    pub fn drop_relay(&mut self, host: HostId, relay: HostId) {
        let Peer::Relay { id, .. } = &self.hosts[relay.0].peer else {
            panic!("{relay:?} is not a relay")
        };
        let (id, now) = (*id, self.now);
        match &mut self.hosts[host.0].peer {
            Peer::Client { node, .. } => node.remove_relay(id, now),
            Peer::Gateway { node, .. } => node.remove_relay(id, now),
            Peer::Relay { .. } => panic!("{host:?} is a relay"),
        }
        self.record(host, format!("drop relay {id}"));
        self.flush();
    }

    fn pair_mut(&mut self, a: HostId, b: HostId) -> (&mut Peer, &mut Peer) {
        assert_ne!(a, b);
        if a.0 < b.0 {
            let (left, right) = self.hosts.split_at_mut(b.0);
            (&mut left[a.0].peer, &mut right[0].peer)
        } else {
            let (left, right) = self.hosts.split_at_mut(a.0);
            (&mut right[0].peer, &mut left[b.0].peer)
        }
    }

    /// A host.
    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.0]
    }

    /// A host, to act on its node directly.
    pub fn host_mut(&mut self, id: HostId) -> &mut Host {
        &mut self.hosts[id.0]
    }

    /// A NAT box.
    pub fn nat(&self, id: NatId) -> &NatTable {
        &self.nats[id.0]
    }

    /// A NAT box, to change it (flush its mappings, as a reboot does; set its timeout).
    pub fn nat_mut(&mut self, id: NatId) -> &mut NatTable {
        &mut self.nats[id.0]
    }

    /// Takes a host off the network (or back on): nothing reaches it or leaves it.
    pub fn set_online(&mut self, host: HostId, online: bool) {
        self.hosts[host.0].online = online;
        self.hosts[host.0].refuses = false;
        let what = if online { "back online" } else { "offline" };
        self.record(host, what.to_owned());
    }

    /// Ends a host's process while its machine stays up: nothing it had is left, and what is
    /// sent to it is answered with ICMP port unreachable, which the sender's node is told of
    /// (as a real socket's error queue does). [`MemNet::set_online`] brings it back.
    pub fn kill_process(&mut self, host: HostId) {
        self.hosts[host.0].online = false;
        self.hosts[host.0].refuses = true;
        self.record(host, "process killed".to_owned());
    }

    /// Gives `host` a new address (behind its NAT: DHCP on another network, say). What was
    /// made from the old one stays behind: the NAT's mappings of it, the relays' allocations.
    /// Its node is told, as the runtime tells it when netlink reports the change.
    pub fn change_address(&mut self, host: HostId, addr: SocketAddr) {
        if let Some(nat) = self.hosts[host.0].nat {
            self.nats[nat.0].add_inside_host(addr.ip());
        }
        self.hosts[host.0].addr = addr;
        let now = self.now;
        match &mut self.hosts[host.0].peer {
            Peer::Client { node, .. } => node.handle_network_change(&[addr], now),
            Peer::Gateway { node, .. } => node.handle_network_change(&[addr], now),
            Peer::Relay { .. } => panic!("{host:?} is a relay"),
        }
        self.record(host, format!("address changed to {addr}"));
        self.flush();
    }

    /// Fresh parameters for a connection between `client` and `gateway`.
    pub fn new_params(&mut self, client: HostId, gateway: HostId) -> ConnParams {
        self.psk_counter = self.psk_counter.wrapping_add(1);
        let psk = Psk([self.psk_counter; 32]);
        let (Peer::Client { node: c, .. }, Peer::Gateway { node: g, .. }) =
            self.pair_mut(client, gateway)
        else {
            panic!("{client:?} and {gateway:?} are not a client and a gateway")
        };
        let client_creds = c.new_credentials();
        let gateway_creds = g.new_credentials();
        ConnParams {
            psk,
            client_creds,
            gateway_creds,
        }
    }

    /// Connects `client` and `gateway` with fresh parameters, as the portal would.
    pub fn connect(&mut self, client: HostId, gateway: HostId) -> ConnParams {
        let params = self.new_params(client, gateway);
        self.upsert(client, gateway, &params);
        params
    }

    /// Gives both ends `params` (the portal's connection setup). Returns what each end did.
    pub fn upsert(
        &mut self,
        client: HostId,
        gateway: HostId,
        params: &ConnParams,
    ) -> (Upsert, Upsert) {
        let at_client = self.upsert_one(client, gateway, params, None);
        let at_gateway = self.upsert_one(gateway, client, params, None);
        (at_client, at_gateway)
    }

    /// Gives only `host` its side of `params` for the connection to `peer`, with `peer`'s real
    /// public key unless `remote_key` overrides it (to model a misconfiguration).
    pub fn upsert_one(
        &mut self,
        host: HostId,
        peer: HostId,
        params: &ConnParams,
        remote_key: Option<PublicKey>,
    ) -> Upsert {
        let now = self.now;
        let peer_key = match &self.hosts[peer.0].peer {
            Peer::Client { node, .. } => node.public_key(),
            Peer::Gateway { node, .. } => node.public_key(),
            Peer::Relay { .. } => panic!("{peer:?} is a relay"),
        };
        let remote_key = remote_key.unwrap_or(peer_key);
        let peer_id = self.identity(peer);
        let outcome = match (&mut self.hosts[host.0].peer, peer_id) {
            (Peer::Client { node, .. }, Identity::Gateway(id)) => node.upsert_connection(
                id,
                remote_key,
                params.psk.clone(),
                params.client_creds.clone(),
                params.gateway_creds.clone(),
                now,
            ),
            (Peer::Gateway { node, .. }, Identity::Client(id)) => node.upsert_connection(
                id,
                remote_key,
                params.psk.clone(),
                params.gateway_creds.clone(),
                params.client_creds.clone(),
                now,
            ),
            (Peer::Client { .. } | Peer::Gateway { .. } | Peer::Relay { .. }, _) => {
                panic!("{host:?} and {peer:?} cannot have a connection")
            }
        };
        let name = match peer_id {
            Identity::Client(id) => id.to_string(),
            Identity::Gateway(id) => id.to_string(),
            Identity::Relay => "relay".to_owned(),
        };
        self.record(host, format!("upsert {name}: {outcome:?}"));
        self.flush();
        outcome
    }

    /// Sends `payload` in a UDP packet from `from`'s tunnel address to `to`'s through the tunnel.
    pub fn send(&mut self, from: HostId, to: HostId, payload: &[u8]) -> Result<(), Error> {
        let src = SocketAddr::new(self.hosts[from.0].tunnel_ip, 40000);
        let dst = SocketAddr::new(self.hosts[to.0].tunnel_ip, 7);
        let packet = udp_packet(src, dst, payload);
        self.send_packet(from, to, &packet)
    }

    /// Sends an IP packet from `from` through its tunnel to `to`.
    pub fn send_packet(
        &mut self,
        from: HostId,
        to: HostId,
        packet: &IpPacket,
    ) -> Result<(), Error> {
        let now = self.now;
        let to_id = self.identity(to);
        let result = match (&mut self.hosts[from.0].peer, to_id) {
            (Peer::Client { node, .. }, Identity::Gateway(id)) => node.encapsulate(id, packet, now),
            (Peer::Gateway { node, .. }, Identity::Client(id)) => node.encapsulate(id, packet, now),
            (Peer::Client { .. } | Peer::Gateway { .. } | Peer::Relay { .. }, _) => {
                panic!("{from:?} and {to:?} cannot have a connection")
            }
        };
        match result {
            Ok(()) => {
                // Out at once, with whatever the node queued before it, in order.
                self.flush();
                Ok(())
            }
            Err(e) => {
                self.hosts[from.0].errors.push(format!("{e}"));
                Err(e)
            }
        }
    }

    /// Runs the network for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs the network until `deadline`: delivers datagrams and fires timers in time order.
    pub fn run_until(&mut self, deadline: Instant) {
        loop {
            self.flush();
            let next_delivery = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.next_timer();
            let Some(next) = [next_delivery, next_timer].into_iter().flatten().min() else {
                break;
            };
            if next > deadline {
                break;
            }
            self.now = self.now.max(next);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery);
            }
            let now = self.now;
            for host in &mut self.hosts {
                if !host.online {
                    continue;
                }
                let due = host_timeout(&mut host.peer).is_some_and(|t| t <= now);
                if due {
                    match &mut host.peer {
                        Peer::Client { node, .. } => node.handle_timeout(now),
                        Peer::Gateway { node, .. } => node.handle_timeout(now),
                        Peer::Relay { server, .. } => server.handle_timeout(now),
                    }
                }
            }
        }
        self.now = self.now.max(deadline);
    }

    fn next_timer(&mut self) -> Option<Instant> {
        self.hosts
            .iter_mut()
            .filter(|h| h.online)
            .filter_map(|h| host_timeout(&mut h.peer))
            .min()
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.now;
        match delivery {
            Delivery::Datagram {
                to,
                local,
                from,
                bytes,
            } => {
                let host = &mut self.hosts[to.0];
                if !host.online {
                    return;
                }
                let result = match &mut host.peer {
                    Peer::Client { node, .. } => node
                        .decapsulate(local, from, &bytes, now)
                        .map(|r| r.map(|(id, p)| (id.0, false, p.as_bytes().to_vec()))),
                    Peer::Gateway { node, .. } => node
                        .decapsulate(local, from, &bytes, now)
                        .map(|r| r.map(|(id, p)| (id.0, true, p.as_bytes().to_vec()))),
                    Peer::Relay { server, .. } => {
                        server.handle_input(now, from, local, &bytes);
                        Ok(None)
                    }
                };
                match result {
                    Ok(Some((peer, peer_is_client, packet))) => {
                        let from = self.find_peer(peer, peer_is_client);
                        let at = now - self.start;
                        let sender = self.hosts.get(from.0).map_or("?", |h| h.name.as_str());
                        let what = format!("tunnel packet from {sender}, {} bytes", packet.len());
                        self.record(to, what);
                        self.hosts[to.0]
                            .received
                            .push(Received { at, from, packet });
                    }
                    Ok(None) => {}
                    Err(e) => self.hosts[to.0].errors.push(format!("{e}")),
                }
            }
            Delivery::Unreachable { to, dst } => {
                let host = &mut self.hosts[to.0];
                if !host.online {
                    return;
                }
                match &mut host.peer {
                    Peer::Client { node, .. } => node.handle_unreachable(dst, now),
                    Peer::Gateway { node, .. } => node.handle_unreachable(dst, now),
                    Peer::Relay { .. } => {}
                }
                self.record(to, format!("ICMP: {dst} unreachable"));
            }
            Delivery::Candidate {
                to,
                from,
                candidate,
                invalidate,
            } => {
                let from_id = self.identity(from);
                match (&mut self.hosts[to.0].peer, from_id) {
                    (Peer::Client { node, .. }, Identity::Gateway(id)) => {
                        if invalidate {
                            node.remove_remote_candidate(id, &candidate, now);
                        } else {
                            node.add_remote_candidate(id, &candidate, now);
                        }
                    }
                    (Peer::Gateway { node, .. }, Identity::Client(id)) => {
                        if invalidate {
                            node.remove_remote_candidate(id, &candidate, now);
                        } else {
                            node.add_remote_candidate(id, &candidate, now);
                        }
                    }
                    (Peer::Client { .. } | Peer::Gateway { .. } | Peer::Relay { .. }, _) => {}
                }
            }
        }
    }

    fn identity(&self, host: HostId) -> Identity {
        match &self.hosts[host.0].peer {
            Peer::Client { id, .. } => Identity::Client(*id),
            Peer::Gateway { id, .. } => Identity::Gateway(*id),
            Peer::Relay { .. } => Identity::Relay,
        }
    }

    fn find_peer(&self, id: u64, is_client: bool) -> HostId {
        let found = self.hosts.iter().position(|h| match h.peer {
            Peer::Client { id: c, .. } => is_client && c.0 == id,
            Peer::Gateway { id: g, .. } => !is_client && g.0 == id,
            Peer::Relay { .. } => false,
        });
        HostId(found.unwrap_or(usize::MAX))
    }

    /// Moves every pending transmit into the network and every event into the timeline.
    fn flush(&mut self) {
        for i in 0..self.hosts.len() {
            let host = HostId(i);
            loop {
                let transmit = match &mut self.hosts[i].peer {
                    Peer::Client { node, .. } => node.poll_transmit().map(Datagram::from),
                    Peer::Gateway { node, .. } => node.poll_transmit().map(Datagram::from),
                    Peer::Relay { server, .. } => {
                        while server.poll_event().is_some() {}
                        server.poll_transmit().map(|t| Datagram {
                            src: Some(t.src),
                            dst: t.dst,
                            payload: t.payload,
                        })
                    }
                };
                let Some(transmit) = transmit else { break };
                self.route(host, transmit);
            }
            loop {
                let event = match &mut self.hosts[i].peer {
                    Peer::Client { node, .. } => {
                        node.poll_event().map(|e| erase(e, |g| g.0, false))
                    }
                    Peer::Gateway { node, .. } => {
                        node.poll_event().map(|e| erase(e, |c| c.0, true))
                    }
                    Peer::Relay { .. } => None,
                };
                let Some(event) = event else { break };
                self.handle_event(host, event);
            }
        }
    }

    fn handle_event(&mut self, host: HostId, event: Event<PeerRef>) {
        self.events
            .push((self.now - self.start, host, event.clone()));
        match &event {
            Event::NewIceCandidate {
                connection: (id, is_client),
                candidate,
            }
            | Event::InvalidateIceCandidate {
                connection: (id, is_client),
                candidate,
            } => {
                let invalidate = matches!(event, Event::InvalidateIceCandidate { .. });
                let to = self.find_peer(*id, *is_client);
                let verb = if invalidate { "invalidate" } else { "signal" };
                self.record(host, format!("{verb} candidate {candidate}"));
                if !self.auto_signal {
                    self.held_signals.push(Signal {
                        from: host,
                        to,
                        candidate: candidate.clone(),
                        invalidate,
                    });
                } else if to.0 < self.hosts.len() {
                    let at = self.now + self.signal_latency;
                    let seq = self.next_seq();
                    self.queue.insert(
                        (at, seq),
                        Delivery::Candidate {
                            to,
                            from: host,
                            candidate: candidate.clone(),
                            invalidate,
                        },
                    );
                }
            }
            Event::ConnectionEstablished((id, c)) => {
                self.record(
                    host,
                    format!("connection to {} established", peer_name(*id, *c)),
                );
            }
            Event::ConnectionIdle((id, c)) => {
                self.record(host, format!("connection to {} idle", peer_name(*id, *c)));
            }
            Event::ConnectionFailed {
                connection: (id, c),
                reason,
            } => {
                self.record(
                    host,
                    format!("connection to {} failed: {reason}", peer_name(*id, *c)),
                );
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn record(&mut self, host: HostId, what: String) {
        let entry = Entry {
            at: self.now - self.start,
            host: self.hosts[host.0].name.clone(),
            what,
        };
        if self.echo {
            println!(
                "{:>9.3}s  {:<10} {}",
                entry.at.as_secs_f64(),
                entry.host,
                entry.what
            );
        }
        self.timeline.push(entry);
    }

    fn route(&mut self, from: HostId, transmit: Datagram) {
        let sender = &self.hosts[from.0];
        if !sender.online {
            return;
        }
        // A socket bound to the unspecified address sends from the host's address, whatever
        // address the node meant: one that is gone ([`MemNet::change_address`]) is not used.
        let src = match transmit.src {
            Some(src) if src.ip() == sender.addr.ip() => src,
            Some(_) | None => sender.addr,
        };
        let sender_nat = sender.nat;
        let now = self.now;
        let elapsed = now - self.start;
        let public_src = match sender_nat {
            Some(nat) => self.nats[nat.0].outbound(src, transmit.dst, elapsed),
            None => Some(src),
        };
        let resolved = public_src.and_then(|public_src| {
            let (to, local) = self.resolve(transmit.dst, public_src, sender_nat, elapsed)?;
            Some((to, local, public_src))
        });
        // The in-memory network keeps no NAT trace: what the tables report is dropped.
        for nat in &mut self.nats {
            while nat.poll_event().is_some() {}
        }
        let Some((to, local, public_src)) = resolved else {
            return;
        };
        if self.hosts[to.0].refuses {
            let seq = self.next_seq();
            self.queue.insert(
                (now + self.latency * 2, seq),
                Delivery::Unreachable {
                    to: from,
                    dst: transmit.dst,
                },
            );
            return;
        }
        if !self.hosts[to.0].online {
            return;
        }
        let in_flight = InFlight {
            at: now,
            from,
            to,
            kind: classify(&transmit.payload),
            stun_type: None,
        };
        let in_flight = InFlight {
            stun_type: (in_flight.kind == DatagramKind::Stun)
                .then(|| u16::from_be_bytes([transmit.payload[0], transmit.payload[1]])),
            ..in_flight
        };
        if let Some(filter) = &mut self.filter {
            if filter(&in_flight) {
                return;
            }
        }
        // Seen from inside the same NAT the sender's own address is what arrives.
        let seen_from = match (sender_nat, self.hosts[to.0].nat) {
            (Some(a), Some(b))
                if a == b && transmit.dst.ip() != self.nats[a.0].config().public_ip =>
            {
                src
            }
            (Some(_) | None, Some(_) | None) => public_src,
        };
        let at = now + self.latency;
        let seq = self.next_seq();
        self.queue.insert(
            (at, seq),
            Delivery::Datagram {
                to,
                local,
                from: seen_from,
                bytes: transmit.payload,
            },
        );
    }

    /// Which host receives a datagram from `from` (as the outside sees it) for `dst`, and on
    /// which of its addresses; `elapsed` is simulated time since the start.
    fn resolve(
        &mut self,
        dst: SocketAddr,
        from: SocketAddr,
        sender_nat: Option<NatId>,
        elapsed: Duration,
    ) -> Option<(HostId, SocketAddr)> {
        // A relay receives on every port of its address.
        if let Some(relay) = self
            .hosts
            .iter()
            .position(|h| matches!(h.peer, Peer::Relay { .. }) && h.addr.ip() == dst.ip())
        {
            return Some((HostId(relay), dst));
        }
        if let Some(nat) = self
            .nats
            .iter_mut()
            .find(|n| n.config().public_ip == dst.ip())
        {
            let inside = nat.inbound(dst.port(), from, elapsed)?;
            let host = self.hosts.iter().position(|h| h.addr == inside)?;
            return Some((HostId(host), inside));
        }
        // Public hosts are reachable from anywhere, hosts behind a NAT only from behind the same one.
        let host = self
            .hosts
            .iter()
            .position(|h| h.addr == dst && (h.nat.is_none() || h.nat == sender_nat))?;
        Some((HostId(host), dst))
    }
}

fn peer_name(id: u64, is_client: bool) -> String {
    if is_client {
        ClientId(id).to_string()
    } else {
        GatewayId(id).to_string()
    }
}

/// Events of clients and gateways in one type: the peer's raw id and whether it is a client.
fn erase<T>(event: Event<T>, raw: fn(T) -> u64, peer_is_client: bool) -> Event<(u64, bool)> {
    let id = |t: T| (raw(t), peer_is_client);
    match event {
        Event::NewIceCandidate {
            connection,
            candidate,
        } => Event::NewIceCandidate {
            connection: id(connection),
            candidate,
        },
        Event::InvalidateIceCandidate {
            connection,
            candidate,
        } => Event::InvalidateIceCandidate {
            connection: id(connection),
            candidate,
        },
        Event::ConnectionEstablished(c) => Event::ConnectionEstablished(id(c)),
        Event::ConnectionIdle(c) => Event::ConnectionIdle(id(c)),
        Event::ConnectionFailed { connection, reason } => Event::ConnectionFailed {
            connection: id(connection),
            reason,
        },
    }
}

/// A client (10.0.0.1:5000, id 1) and a gateway (10.0.0.2:6000, id 1) on one network, connected
/// directly and given two simulated seconds to settle: what the benchmarks drive.
pub struct ConnectedPair {
    /// The network.
    pub net: MemNet,
    /// The client host.
    pub client: HostId,
    /// The gateway host.
    pub gateway: HostId,
}

impl ConnectedPair {
    /// The pair, connected, at `start` plus the two seconds it took.
    pub fn new(start: Instant) -> Self {
        let addr = |d: u8, port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)), port);
        let mut net = MemNet::new(start);
        let client = net.add_client("client", 1, addr(1, 5000), None, 1);
        let gateway = net.add_gateway("gateway", 1, addr(2, 6000), None, 2);
        net.connect(client, gateway);
        net.run_for(Duration::from_secs(2));
        Self {
            net,
            client,
            gateway,
        }
    }

    /// The client's node.
    pub fn client_node(&mut self) -> &mut Node<GatewayId> {
        match &mut self.net.host_mut(self.client).peer {
            Peer::Client { node, .. } => node,
            Peer::Gateway { .. } | Peer::Relay { .. } => unreachable!("the client host"),
        }
    }

    /// The gateway's node.
    pub fn gateway_node(&mut self) -> &mut Node<ClientId> {
        match &mut self.net.host_mut(self.gateway).peer {
            Peer::Gateway { node, .. } => node,
            Peer::Client { .. } | Peer::Relay { .. } => unreachable!("the gateway host"),
        }
    }
}

/// A UDP packet with a valid checksum.
pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> IpPacket {
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
        }
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => {
            panic!("mixed address families")
        }
    };
    let builder = builder.udp(src.port(), dst.port());
    let mut bytes = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut bytes, payload)
        .expect("writing to a Vec cannot fail");
    IpPacket::parse(bytes).expect("a built packet parses")
}

/// A datagram on its way into the network, from a node or a relay.
struct Datagram {
    src: Option<SocketAddr>,
    dst: SocketAddr,
    payload: Vec<u8>,
}

impl From<Transmit> for Datagram {
    fn from(t: Transmit) -> Self {
        Self {
            src: t.src,
            dst: t.dst,
            payload: t.payload.to_vec(),
        }
    }
}

fn host_timeout(peer: &mut Peer) -> Option<Instant> {
    match peer {
        Peer::Client { node, .. } => node.poll_timeout().map(|(t, _)| t),
        Peer::Gateway { node, .. } => node.poll_timeout().map(|(t, _)| t),
        Peer::Relay { server, .. } => server.poll_timeout(),
    }
}
