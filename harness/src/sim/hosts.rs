//! What each simulated host runs: the production portal, relay, client and gateway code, on
//! turmoil's sockets and clock. Shared state between a host and the test driver lives in
//! `Rc<RefCell<..>>` cells, because turmoil re-runs a host's closure when the host restarts and
//! everything runs on one thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use node::runtime::{
    run, ChannelDevice, Clock, Connector, DatagramSocket, Observed, WebSocketLink,
};
use node_core::engine::{ClientEngine, EngineEvent, GatewayEngine};
use node_core::packet::{IpPacket, TcpFlags, Transport};
use node_core::state::{ClientEvent, GatewayEvent};
use node_core::state::{ClientState, GatewayState};
use tokio::sync::mpsc;

use super::hostile::{Attack, GatewayTap, HostileLink};
use super::model::FLOOD;
use crate::turmoil_net::faulty_socket::FaultyNetwork;
use crate::turmoil_net::{
    sim_time, sim_wall_clock, Faults, NatShim, RoamingSocket, Trace, TurmoilClock, TurmoilListener,
    TurmoilNetwork,
};

/// The portal's TCP port inside the simulation.
pub const PORTAL_PORT: u16 = 8080;

/// Opens turmoil TCP connections to the portal host.
#[derive(Debug, Clone)]
pub struct TurmoilConnector {
    /// The portal host's name.
    pub host: String,
}

impl Connector for TurmoilConnector {
    type Stream = turmoil::net::TcpStream;

    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> {
        turmoil::net::TcpStream::connect((self.host.clone(), PORTAL_PORT))
    }
}

/// A packet that left a node's device, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Simulated time.
    pub at: Duration,
    /// The packet.
    pub packet: Vec<u8>,
}

/// Handshake initiations a node's connections sent, summed over its connections past and
/// present: each connection counts from zero, so they are told apart by index.
#[derive(Debug, Default)]
pub struct Handshakes {
    total: Cell<u64>,
    by_connection: RefCell<BTreeMap<u32, u64>>,
}

impl Handshakes {
    /// Takes the counts of the node's connections now, by index.
    pub fn observe(&self, connections: impl Iterator<Item = (u32, u64)>) {
        let mut seen = self.by_connection.borrow_mut();
        let now: BTreeMap<u32, u64> = connections.collect();
        for (index, count) in &now {
            let before = seen.get(index).copied().unwrap_or(0);
            self.total
                .set(self.total.get() + count.saturating_sub(before));
        }
        *seen = now;
    }

    /// The node process restarted: its connections (whose indices come from the same seed)
    /// count from zero again.
    pub fn restart(&self) {
        self.by_connection.borrow_mut().clear();
    }

    /// Initiations sent so far.
    pub fn total(&self) -> u64 {
        self.total.get()
    }
}

/// The driver's side of a client host: inject packets into its device, read what comes out.
#[derive(Debug, Default)]
pub struct DeviceTap {
    /// Sender into the running host's device; replaced on every (re)start.
    pub inject: RefCell<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Packets the device wrote, in order.
    pub received: RefCell<Vec<Seen>>,
    /// Tells the running host to rebind its socket to a new inside port; replaced on every
    /// (re)start.
    pub roam: RefCell<Option<mpsc::UnboundedSender<()>>>,
    /// Tells the running host to misbehave (see [`super::hostile`]); replaced on every
    /// (re)start.
    pub attack: RefCell<Option<mpsc::UnboundedSender<Attack>>>,
    /// The path ICE nominated for the connection to the gateway, with its connection index,
    /// as of the client's last step; `None` while there is no connection or no path.
    pub path: RefCell<Option<(u32, node_core::Path)>>,
    /// Whether that path goes through a relay (either end's), as of the client's last step.
    pub relayed: std::cell::Cell<bool>,
    /// Times a connection moved from a relayed path to a direct one.
    pub upgrades: std::cell::Cell<u64>,
    /// The client's handshake initiations.
    pub handshakes: Handshakes,
    /// The relayed candidates its connections hold, as of its last step.
    pub relayed_candidates: RefCell<BTreeSet<SocketAddr>>,
    /// Which preshared key its established connection to the gateway uses, as of its last
    /// step.
    pub psk: Cell<Option<[u8; 8]>>,
    /// Its own relayed addresses (one per allocation), as of its last step.
    pub own_relayed: RefCell<Vec<SocketAddr>>,
}

/// What reached the resource network behind a gateway.
#[derive(Debug, Default)]
pub struct ResourceLog {
    /// Packets that arrived, in order.
    pub arrived: RefCell<Vec<Seen>>,
}

/// Runs the portal; its server handle is published for the driver (admin calls, restarts).
pub async fn portal_host(
    portal: portal_sim::Portal,
    unix_epoch_secs: u64,
    handle: Rc<RefCell<Option<portal_sim::server::Server>>>,
) -> turmoil::Result {
    let server = portal_sim::server::Server::with_sleeper(
        portal,
        crate::turmoil_net::turmoil_io::portal_clock(unix_epoch_secs),
        crate::turmoil_net::turmoil_io::portal_sleeper(),
    );
    *handle.borrow_mut() = Some(server.clone());
    let listener =
        TurmoilListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORTAL_PORT)).await?;
    server.serve(listener).await?;
    Ok(())
}

/// Runs a TURN relay listening on UDP 3478 of its public address; every datagram it sends or
/// receives goes through `faults`.
pub async fn relay_host(
    public_ip: Ipv4Addr,
    secret: String,
    seed: u64,
    unix_epoch_secs: u64,
    faults: Faults,
    tap: Rc<RelayTap>,
) -> turmoil::Result {
    let net = FaultyNetwork::new(TurmoilNetwork::new(unix_epoch_secs), faults);
    let mut config = relay_sim::Config::new("sim", secret, public_ip);
    config.relay_ports = 49152..=49999;
    // turmoil gives every host an address in 192.168.0.0/16: the relays' peers (NATs, nodes,
    // other relays) are all there.
    config.allow_peers = vec![relay_sim::IpNet::new(
        Ipv4Addr::new(192, 168, 0, 0).into(),
        16,
    )?];
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let now = TurmoilClock.now();
    let server =
        relay_sim::Server::new(config, key, now, relay_sim::net::Network::unix_time(&net))?;
    let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), crate::turmoil_net::TURN_PORT);
    tap.allocations.borrow_mut().clear();
    tap.expiries.borrow_mut().clear();
    relay_sim::runtime::run_observed(&net, server, listen, std::future::pending(), |server| {
        *tap.allocations.borrow_mut() = server.allocations().collect();
        // In simulated time, which the driver reads too (the relay's instants have their own
        // base).
        let (now, at) = (TurmoilClock.now(), sim_time());
        *tap.expiries.borrow_mut() = server
            .allocations()
            .map(|a| (a.relay, at + a.expires.saturating_duration_since(now)))
            .collect();
        tap.stats.set(*server.stats());
    })
    .await?;
    Ok(())
}

/// A relay's allocations as of its last step, for the driver's checks.
#[derive(Debug, Default)]
pub struct RelayTap {
    /// Every allocation, with its permissions and channels.
    pub allocations: RefCell<Vec<relay_sim::AllocationInfo>>,
    /// When each allocation (by relayed address) expires, in simulated time.
    pub expiries: RefCell<BTreeMap<SocketAddr, Duration>>,
    /// The running relay's counters (from zero at each restart).
    pub stats: Cell<relay_sim::Stats>,
}

/// Settings of a client or gateway host.
#[derive(Debug, Clone)]
pub struct NodeHost {
    /// Host name, for the trace.
    pub name: String,
    /// The portal token.
    pub token: String,
    /// Seeds the node.
    pub seed: u64,
    /// The portal host's name.
    pub portal: String,
    /// A client that keeps its routes after revocations (see
    /// [`ClientState::ignoring_revocations`]).
    pub disobeys: bool,
}

/// Runs a client on `socket`; its device is tapped by the driver, and on the tap's roam
/// signal the socket is rebound to the next of `roam_ports` (the node keeps running).
pub async fn client_host(
    cfg: NodeHost,
    socket: NatShim,
    nat: SocketAddr,
    roam_ports: Rc<std::cell::Cell<u16>>,
    tap: Rc<DeviceTap>,
    trace: Trace,
    unix_epoch_secs: u64,
) -> turmoil::Result {
    let now = TurmoilClock.now();
    let local = socket.local_addr();
    let socket = Rc::new(RoamingSocket::new(socket));
    let (roam_tx, mut roam_rx) = mpsc::unbounded_channel();
    *tap.roam.borrow_mut() = Some(roam_tx);
    tap.path.borrow_mut().take();
    tap.handshakes.restart();
    {
        let (socket, trace, name) = (Rc::clone(&socket), trace.clone(), cfg.name.clone());
        tokio::task::spawn_local(async move {
            while roam_rx.recv().await.is_some() {
                let port = roam_ports.get();
                roam_ports.set(if port >= ROAM_PORTS_END {
                    ROAM_PORTS_START
                } else {
                    port + 1
                });
                let inside = SocketAddr::new(local.ip(), port);
                match NatShim::bind(inside, nat).await {
                    Ok(new) => {
                        trace.record(&name, format_args!("roamed to {inside}"));
                        socket.replace(new);
                    }
                    Err(error) => {
                        trace.record(&name, format_args!("roam to {inside} failed: {error}"))
                    }
                }
            }
        });
    }
    let mut tunnel =
        ClientState::new(cfg.seed, now).with_wall_clock(now, sim_wall_clock(unix_epoch_secs));
    if cfg.disobeys {
        tunnel = tunnel.ignoring_revocations();
    }
    tunnel.add_local_address(local, now);
    let engine = ClientEngine::new(tunnel, "client", cfg.seed.wrapping_add(1));
    let (host, traced, tapped) = (cfg.name.clone(), trace.clone(), Rc::clone(&tap));
    let mut engine = Observed::new(engine, move |engine: &mut ClientEngine| {
        engine.drain_events(&host, &traced, Some(&tapped));
    });
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let mut link = HostileLink::new(link(&cfg, "client"), frames);
    let (mut device, inject, mut out) = ChannelDevice::new();
    *tap.inject.borrow_mut() = Some(inject);
    let reader = Rc::clone(&tap);
    tokio::task::spawn_local(async move {
        while let Some(packet) = out.recv().await {
            reader.received.borrow_mut().push(Seen {
                at: sim_time(),
                packet,
            });
        }
    });
    trace.record(&cfg.name, "started");
    let (_keep, mut commands) = mpsc::unbounded_channel();
    let (attack_tx, attack_rx) = mpsc::unbounded_channel();
    *tap.attack.borrow_mut() = Some(attack_tx);
    tokio::task::spawn_local(misbehave(
        attack_rx,
        frames_tx,
        Rc::clone(&socket),
        cfg.name.clone(),
        trace.clone(),
    ));
    run(
        &mut engine,
        &*socket,
        &TurmoilClock,
        &mut device,
        &mut link,
        &mut commands,
    )
    .await?;
    Ok(())
}

/// Carries out the driver's attacks: portal frames on the node's portal link, datagrams
/// straight from the node's socket, spread over [`FLOOD`].
async fn misbehave(
    mut attacks: mpsc::UnboundedReceiver<Attack>,
    frames: mpsc::UnboundedSender<String>,
    socket: Rc<RoamingSocket>,
    name: String,
    trace: Trace,
) {
    while let Some(attack) = attacks.recv().await {
        match attack {
            Attack::Frame(frame) => {
                trace.record(
                    &name,
                    format_args!("sends a frame of {} bytes", frame.len()),
                );
                let _ = frames.send(frame);
            }
            Attack::Datagrams { dst, datagrams } => {
                trace.record(
                    &name,
                    format_args!("floods {dst} with {} datagrams", datagrams.len()),
                );
                let millis = usize::try_from(FLOOD.as_millis()).unwrap_or(1000);
                let per_ms = datagrams.len().div_ceil(millis).max(1);
                for chunk in datagrams.chunks(per_ms) {
                    for datagram in chunk {
                        let _ = socket.send_to(datagram, dst).await;
                    }
                    crate::turmoil_net::timers::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// The inside ports a roaming client moves through, in turn.
pub const ROAM_PORTS_START: u16 = 52_000;
/// See [`ROAM_PORTS_START`].
pub const ROAM_PORTS_END: u16 = 52_999;

/// Runs a gateway on `socket`, with the resource network behind its device: every UDP datagram
/// and ICMP echo request is answered, and everything that arrives is logged.
pub async fn gateway_host<S: DatagramSocket>(
    cfg: NodeHost,
    socket: S,
    unix_epoch_secs: u64,
    resources: Rc<ResourceLog>,
    observed: Rc<GatewayTap>,
    trace: Trace,
) -> turmoil::Result {
    let now = TurmoilClock.now();
    let local = socket.local_addr()?;
    let mut tunnel = GatewayState::new(cfg.seed, now, sim_wall_clock(unix_epoch_secs));
    tunnel.add_local_address(local, now);
    let engine = GatewayEngine::new(tunnel, "gateway", cfg.seed.wrapping_add(1));
    let (host, traced) = (cfg.name.clone(), trace.clone());
    observed.public_key.set(Some(engine.state().public_key()));
    observed.handshakes.restart();
    let mut engine = Observed::new(engine, move |engine: &mut GatewayEngine| {
        engine.drain_events(&host, &traced, None);
        let stats = engine.state().stats();
        observed.wrong_source.set(stats.wrong_source);
        observed
            .refused
            .set(stats.unauthorized + stats.unknown_client);
        let node = engine.state().node();
        observed.stats.borrow_mut().clone_from(node.stats());
        // Snapshots are taken once per input: this runs after every one.
        let connections: Vec<_> = node
            .connections()
            .filter_map(|cid| Some((cid, node.connection(cid)?)))
            .collect();
        observed.handshakes.observe(
            connections
                .iter()
                .map(|(_, c)| (c.index, c.handshakes_initiated)),
        );
        *observed.relayed_candidates.borrow_mut() = node.relayed_candidates();
        *observed.own_relayed.borrow_mut() = node.relayed_addresses().collect();
        let mut psks = observed.psks.borrow_mut();
        psks.clear();
        psks.extend(
            connections
                .iter()
                .filter(|(_, c)| c.established)
                .map(|(cid, c)| (*cid, c.psk_fingerprint)),
        );
        drop(psks);
        let mut held = observed.remote_candidates.borrow_mut();
        held.clear();
        held.extend(
            connections
                .iter()
                .map(|(cid, c)| (*cid, c.remote_candidates)),
        );
    });
    let mut link = link(&cfg, "gateway");
    let (mut device, inject, mut out) = ChannelDevice::new();
    tokio::task::spawn_local(async move {
        while let Some(packet) = out.recv().await {
            resources.arrived.borrow_mut().push(Seen {
                at: sim_time(),
                packet: packet.clone(),
            });
            if let Some(reply) = echo(&packet) {
                let _ = inject.send(reply);
            }
        }
    });
    trace.record(&cfg.name, "started");
    let (_keep, mut commands) = mpsc::unbounded_channel();
    run(
        &mut engine,
        &socket,
        &TurmoilClock,
        &mut device,
        &mut link,
        &mut commands,
    )
    .await?;
    Ok(())
}

fn link(cfg: &NodeHost, kind: &str) -> WebSocketLink<TurmoilConnector, TurmoilClock> {
    WebSocketLink::with_clock(
        TurmoilConnector {
            host: cfg.portal.clone(),
        },
        format!(
            "ws://{}:{PORTAL_PORT}/{kind}/websocket?token={}",
            cfg.portal, cfg.token
        ),
        TurmoilClock,
    )
}

/// The resources' answer: UDP echoed back, ICMP echo requests replied to, and a TCP segment
/// with a payload answered by one carrying the same payload (acknowledging it; there is no
/// connection state: the probes check delivery, not TCP).
fn echo(bytes: &[u8]) -> Option<Vec<u8>> {
    let packet = IpPacket::parse(bytes).ok()?;
    let (src, dst) = (packet.source(), packet.destination());
    let reply = match packet.transport() {
        Transport::Udp {
            src_port,
            dst_port,
            payload,
        } => IpPacket::udp(
            SocketAddr::new(dst, dst_port),
            SocketAddr::new(src, src_port),
            payload,
        ),
        Transport::Icmpv4 {
            echo: Some(echo), ..
        }
        | Transport::Icmpv6 {
            echo: Some(echo), ..
        } if is_request(&packet) => {
            IpPacket::icmp_echo_reply(dst, src, echo.identifier, echo.sequence, packet.payload())
        }
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            payload,
            ..
        } if !payload.is_empty() => IpPacket::tcp(
            SocketAddr::new(dst, dst_port),
            SocketAddr::new(src, src_port),
            1,
            seq.wrapping_add(u32::try_from(payload.len()).unwrap_or(0)),
            TcpFlags::ACK | TcpFlags::PSH,
            payload,
        ),
        Transport::Tcp { .. }
        | Transport::Icmpv4 { .. }
        | Transport::Icmpv6 { .. }
        | Transport::Other(_)
        | Transport::Fragment => return None,
    };
    reply.ok().map(IpPacket::into_inner)
}

fn is_request<B: AsRef<[u8]>>(packet: &IpPacket<B>) -> bool {
    match packet.transport() {
        Transport::Icmpv4 { icmp_type, .. } => icmp_type == 8,
        Transport::Icmpv6 { icmp_type, .. } => icmp_type == 128,
        Transport::Udp { .. }
        | Transport::Tcp { .. }
        | Transport::Other(_)
        | Transport::Fragment => false,
    }
}

/// Engines whose events are written into the trace (the hosts' observers).
trait Events {
    fn drain_events(&mut self, host: &str, trace: &Trace, tap: Option<&DeviceTap>);
}

impl Events for ClientEngine {
    fn drain_events(&mut self, host: &str, trace: &Trace, tap: Option<&DeviceTap>) {
        while let Some(event) = self.poll_event() {
            let node = self.state().node();
            let line = if let EngineEvent::Tunnel(ClientEvent::GatewayConnected(gid)) = &event {
                with_conn(describe(&event), node.connection(*gid).map(|c| c.index))
            } else {
                describe(&event)
            };
            trace.record(host, line);
        }
        if let Some(tap) = tap {
            let node = self.state().node();
            // Snapshots are taken once per input: this runs after every one.
            let connections: Vec<_> = node
                .connections()
                .filter_map(|gid| node.connection(gid))
                .collect();
            tap.handshakes.observe(
                connections
                    .iter()
                    .map(|c| (c.index, c.handshakes_initiated)),
            );
            *tap.relayed_candidates.borrow_mut() = node.relayed_candidates();
            *tap.own_relayed.borrow_mut() = node.relayed_addresses().collect();
            tap.psk.set(
                connections
                    .iter()
                    .find(|c| c.established)
                    .map(|c| c.psk_fingerprint),
            );
            let conn = connections.first();
            let now = conn.as_ref().and_then(|c| c.path.map(|p| (c.index, p)));
            let relayed = conn.as_ref().is_some_and(|c| {
                c.path.is_some_and(|p| p.relay.is_some())
                    || c.remote_kind == Some(node_core::CandidateKind::Relayed)
            });
            let mut seen = tap.path.borrow_mut();
            if *seen != now {
                let same_connection = seen.zip(now).is_some_and(|(a, b)| a.0 == b.0);
                if same_connection && tap.relayed.get() && !relayed {
                    tap.upgrades.set(tap.upgrades.get() + 1);
                }
                tap.relayed.set(relayed);
                if let Some((index, path)) = now {
                    let relayed = if path.relay.is_some() {
                        " via our relay"
                    } else {
                        ""
                    };
                    trace.record(
                        host,
                        format_args!(
                            "conn {index} path {} -> {}{relayed}",
                            path.local, path.remote
                        ),
                    );
                }
                *seen = now;
            }
        }
    }
}

impl Events for GatewayEngine {
    fn drain_events(&mut self, host: &str, trace: &Trace, _: Option<&DeviceTap>) {
        while let Some(event) = self.poll_event() {
            let node = self.state().node();
            let line = if let EngineEvent::Tunnel(GatewayEvent::ClientConnected(cid)) = &event {
                with_conn(describe(&event), node.connection(*cid).map(|c| c.index))
            } else {
                describe(&event)
            };
            trace.record(host, line);
        }
    }
}

/// `line`, naming the connection by its index (the high 24 bits of its WireGuard session
/// indices, as in the nodes' `(conn|session)` logs) when known.
fn with_conn(line: String, index: Option<u32>) -> String {
    match index {
        Some(index) => format!("{line} conn {index}"),
        None => line,
    }
}

fn describe<T: std::fmt::Debug>(event: &EngineEvent<T>) -> String {
    match event {
        EngineEvent::Tunnel(e) => format!("{e:?}"),
        EngineEvent::PortalConnected => "portal joined".to_owned(),
        EngineEvent::PortalDisconnected(reason) => format!("portal lost: {reason}"),
        EngineEvent::PortalFatal(reason) => format!("portal fatal: {reason}"),
    }
}

/// The tunnel address the seed file gives client `id`.
pub fn client_tunnel_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        100,
        64,
        0,
        u8::try_from(id).unwrap_or(u8::MAX),
    ))
}
