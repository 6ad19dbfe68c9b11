//! What each simulated host runs: the production portal, relay, client and gateway code, on
//! turmoil's sockets and clock. Shared state between a host and the test driver lives in
//! `Rc<RefCell<..>>` cells, because turmoil re-runs a host's closure when the host restarts and
//! everything runs on one thread.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use node::packet::{IpPacket, Transport};
use node::runtime::{
    run, ChannelDevice, ClientEngine, Clock, Connector, DatagramSocket, Engine, EngineEvent,
    GatewayEngine, WebSocketLink,
};
use node::tunnel::{ClientTunnel, GatewayTunnel};
use tokio::sync::mpsc;

use crate::world::{
    sim_time, sim_wall_clock, Trace, TurmoilClock, TurmoilListener, TurmoilNetwork,
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

/// The driver's side of a client host: inject packets into its device, read what comes out.
#[derive(Debug, Default)]
pub struct DeviceTap {
    /// Sender into the running host's device; replaced on every (re)start.
    pub inject: RefCell<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Packets the device wrote, in order.
    pub received: RefCell<Vec<Seen>>,
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
    let server = portal_sim::server::Server::new(
        portal,
        crate::world::turmoil_io::portal_clock(unix_epoch_secs),
    );
    *handle.borrow_mut() = Some(server.clone());
    let listener =
        TurmoilListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORTAL_PORT)).await?;
    server.serve(listener).await?;
    Ok(())
}

/// Runs a TURN relay listening on UDP 3478 of its public address.
pub async fn relay_host(
    public_ip: Ipv4Addr,
    secret: String,
    seed: u64,
    unix_epoch_secs: u64,
) -> turmoil::Result {
    let net = TurmoilNetwork::new(unix_epoch_secs);
    let mut config = relay_sim::Config::new("sim", secret, public_ip);
    config.relay_ports = 49152..=49999;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let now = TurmoilClock.now();
    let server =
        relay_sim::Server::new(config, key, now, relay_sim::net::Network::unix_time(&net))?;
    let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), crate::world::TURN_PORT);
    relay_sim::runtime::run(&net, server, listen, std::future::pending()).await?;
    Ok(())
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
}

/// Runs a client on `socket`; its device is tapped by the driver.
pub async fn client_host<S: DatagramSocket>(
    cfg: NodeHost,
    socket: S,
    tap: Rc<DeviceTap>,
    trace: Trace,
) -> turmoil::Result {
    let now = TurmoilClock.now();
    let local = socket.local_addr()?;
    let mut tunnel = ClientTunnel::new(cfg.seed, now);
    tunnel.add_local_address(local, now);
    let engine = ClientEngine::new(tunnel, "client", cfg.seed.wrapping_add(1));
    let mut engine = Traced {
        inner: engine,
        host: cfg.name.clone(),
        trace: trace.clone(),
    };
    let mut link = link(&cfg, "client");
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

/// Runs a gateway on `socket`, with the resource network behind its device: every UDP datagram
/// and ICMP echo request is answered, and everything that arrives is logged.
pub async fn gateway_host<S: DatagramSocket>(
    cfg: NodeHost,
    socket: S,
    unix_epoch_secs: u64,
    resources: Rc<ResourceLog>,
    trace: Trace,
) -> turmoil::Result {
    let now = TurmoilClock.now();
    let local = socket.local_addr()?;
    let mut tunnel = GatewayTunnel::new(cfg.seed, now, sim_wall_clock(unix_epoch_secs));
    tunnel.add_local_address(local, now);
    let engine = GatewayEngine::new(tunnel, "gateway", cfg.seed.wrapping_add(1));
    let mut engine = Traced {
        inner: engine,
        host: cfg.name.clone(),
        trace: trace.clone(),
    };
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

fn link(cfg: &NodeHost, kind: &str) -> WebSocketLink<TurmoilConnector> {
    WebSocketLink::new(
        TurmoilConnector {
            host: cfg.portal.clone(),
        },
        format!(
            "ws://{}:{PORTAL_PORT}/{kind}/websocket?token={}",
            cfg.portal, cfg.token
        ),
    )
}

/// The resources' answer: UDP echoed back, ICMP echo requests replied to.
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

/// An engine whose events are written into the trace.
struct Traced<E> {
    inner: E,
    host: String,
    trace: Trace,
}

/// Engines whose events can be traced.
trait Events {
    fn drain_events(&mut self, host: &str, trace: &Trace);
}

impl Events for ClientEngine {
    fn drain_events(&mut self, host: &str, trace: &Trace) {
        while let Some(event) = self.poll_event() {
            trace.record(host, describe(&event));
        }
    }
}

impl Events for GatewayEngine {
    fn drain_events(&mut self, host: &str, trace: &Trace) {
        while let Some(event) = self.poll_event() {
            trace.record(host, describe(&event));
        }
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

impl<E: Engine + Events> Engine for Traced<E> {
    fn handle_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        now: std::time::Instant,
    ) {
        self.inner.handle_datagram(local, from, bytes, now);
        self.inner.drain_events(&self.host, &self.trace);
    }
    fn handle_device_packet(&mut self, packet: Vec<u8>, now: std::time::Instant) {
        self.inner.handle_device_packet(packet, now);
        self.inner.drain_events(&self.host, &self.trace);
    }
    fn handle_timeout(&mut self, now: std::time::Instant) {
        self.inner.handle_timeout(now);
        self.inner.drain_events(&self.host, &self.trace);
    }
    fn poll_timeout(&mut self) -> Option<std::time::Instant> {
        self.inner.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<node::Transmit> {
        self.inner.poll_transmit()
    }
    fn poll_device_packet(&mut self) -> Option<node::pool::Buffer> {
        self.inner.poll_device_packet()
    }
    fn handle_control(&mut self, input: node::runtime::ControlInput, now: std::time::Instant) {
        self.inner.handle_control(input, now);
        self.inner.drain_events(&self.host, &self.trace);
    }
    fn poll_control(&mut self) -> Option<node::runtime::ControlCommand> {
        self.inner.poll_control()
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
