//! What the `client` and `gateway` binaries share: their common options, logging, the portal
//! endpoint, the local addresses they advertise, and the driver that runs an engine on a TUN
//! device and a UDP socket until a signal or a fatal portal error stops it.

use std::cell::RefCell;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};
use tracing_subscriber::EnvFilter;

use crate::pool::Buffer;
use crate::runtime::{
    run, BatchSocket, ClientEngine, Command, ControlCommand, ControlInput, DatagramSocket, Engine,
    EngineEvent, GatewayEngine, RecvBatch, TcpConnector, TokioClock, TunDevice, WebSocketLink,
};
use crate::tunnel::{ClientEvent, GatewayEvent};
use crate::Transmit;

/// Options of both binaries.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The portal, `ws://host:port` (the path and token are added). TLS (`wss://`) is not
    /// supported yet: put the portal behind a TLS-terminating tunnel or keep it on a trusted
    /// network.
    #[arg(long, env = "ZTA_PORTAL_URL")]
    pub portal_url: String,
    /// The token this node connects to the portal with (from the portal's seed file).
    #[arg(long, env = "ZTA_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Local address of the UDP socket for the tunnels (STUN, TURN, WireGuard). IPv4 only.
    #[arg(long, env = "ZTA_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// More addresses to advertise to peers as host candidates (`IP` with the bound port, or
    /// `IP:PORT`, e.g. a port forwarded to us on a NAT), comma-separated. Always advertised: the
    /// listen address, or when its IP is unspecified the address of the interface that routes
    /// to the portal.
    #[arg(long, env = "ZTA_ADVERTISE", value_delimiter = ',', value_parser = parse_advertise)]
    pub advertise: Vec<Advertise>,
    /// MTU of the TUN device (the path must carry it plus 64 bytes of IPv4, UDP, WireGuard
    /// and TURN overhead).
    #[arg(long, env = "ZTA_TUN_MTU", default_value_t = 1280,
          value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,
    /// Log filter (tracing-subscriber `EnvFilter` syntax), e.g. `info,node=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, env = "ZTA_LOG_JSON")]
    pub log_json: bool,
    /// Seed of the node's randomness (its WireGuard key, ICE credentials); random if absent.
    #[arg(long, env = "ZTA_SEED")]
    pub seed: Option<u64>,
}

/// An address to advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    /// This IP with the port the socket is bound to.
    Ip(IpAddr),
    /// Exactly this address.
    Socket(SocketAddr),
}

fn parse_advertise(s: &str) -> Result<Advertise, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Advertise::Socket(addr));
    }
    s.parse::<IpAddr>()
        .map(Advertise::Ip)
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT"))
}

/// Installs the global log subscriber, on standard error.
pub fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Where to reach the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalEndpoint {
    /// `host:port` to open TCP to.
    pub connect: String,
    /// The WebSocket URL, with the node's path and token.
    pub url: String,
}

/// The portal endpoint of a node with `role` (`client` or `gateway`) and `token`, from the base
/// URL given by the user.
pub fn portal_endpoint(base: &str, role: &str, token: &str) -> anyhow::Result<PortalEndpoint> {
    if base.starts_with("wss://") {
        anyhow::bail!("--portal-url {base:?}: TLS (wss://) is not supported yet, use ws://");
    }
    let rest = base
        .strip_prefix("ws://")
        .with_context(|| format!("--portal-url {base:?} must start with ws://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        anyhow::bail!("--portal-url {base:?} has no host");
    }
    // A bracketed IPv6 literal holds colons of its own.
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    if token.is_empty() {
        anyhow::bail!("--token is empty");
    }
    Ok(PortalEndpoint {
        url: format!(
            "ws://{authority}/{role}/websocket?token={}",
            percent_encode(token)
        ),
        connect,
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The UDP socket of a node: bound to `--listen`, and reporting to the event loop the host
/// address datagrams arrive on.
///
/// The loop hands the engine one local address for every datagram, and the engine's ICE agent
/// pairs candidates by it: a socket bound to `0.0.0.0` must not report `0.0.0.0`, or no pair
/// with a host candidate ever succeeds. So a socket bound to the unspecified address reports the
/// address of the interface that routes to the portal (the primary one), and that is the host
/// candidate advertised. Datagrams arriving on other interfaces are attributed to it too, which
/// is why they are not advertised unless asked for (`--advertise`).
#[derive(Debug)]
pub struct HostSocket {
    socket: BatchSocket,
    local: SocketAddr,
}

impl HostSocket {
    /// Binds `listen`; an unspecified IP is replaced, in what the loop sees, by the local IP the
    /// kernel picks to reach `toward`.
    pub async fn bind(listen: SocketAddr, toward: &str) -> anyhow::Result<Self> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind UDP {listen}"))?;
        let bound = socket.local_addr()?;
        let local = if bound.ip().is_unspecified() {
            SocketAddr::new(primary_ip(toward, bound).await?, bound.port())
        } else {
            bound
        };
        let socket = BatchSocket::new(socket).context("cannot set up the UDP socket")?;
        Ok(Self { socket, local })
    }

    /// The host address the loop reports.
    pub fn host_address(&self) -> SocketAddr {
        self.local
    }
}

/// The local IP the kernel would send from to reach `toward` (`host:port`), in the family of
/// `bound`. Connecting a UDP socket sends nothing.
async fn primary_ip(toward: &str, bound: SocketAddr) -> anyhow::Result<IpAddr> {
    let target = tokio::net::lookup_host(toward)
        .await
        .with_context(|| format!("cannot resolve {toward}"))?
        .find(|a| a.is_ipv4() == bound.is_ipv4())
        .with_context(|| format!("{toward} has no address of the family of {bound}"))?;
    let any: SocketAddr = if bound.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = tokio::net::UdpSocket::bind(any).await?;
    probe
        .connect(target)
        .await
        .with_context(|| format!("no route to the portal {target}"))?;
    Ok(probe.local_addr()?.ip())
}

impl DatagramSocket for HostSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.socket.recv_from(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.socket.send_to(buf, dst)
    }

    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<()>> {
        self.socket.recv_batch(batch)
    }

    fn send_batch(&self, transmits: &mut Vec<Transmit>) -> impl Future<Output = ()> {
        self.socket.send_batch(transmits)
    }
}

/// The host candidates of `socket`: its host address, then the `--advertise` ones.
pub fn local_addresses(socket: &HostSocket, advertise: &[Advertise]) -> Vec<SocketAddr> {
    let port = socket.local.port();
    let mut addrs = vec![socket.local];
    for addr in advertise.iter().map(|a| match *a {
        Advertise::Ip(ip) => SocketAddr::new(ip, port),
        Advertise::Socket(addr) => addr,
    }) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

/// An engine whose events can be taken out.
pub trait Observed: Engine {
    /// The tunnel's events.
    type Event: Debug;
    /// The next event.
    fn next_event(&mut self) -> Option<EngineEvent<Self::Event>>;
}

impl Observed for ClientEngine {
    type Event = ClientEvent;
    fn next_event(&mut self) -> Option<EngineEvent<ClientEvent>> {
        self.poll_event()
    }
}

impl Observed for GatewayEngine {
    type Event = GatewayEvent;
    fn next_event(&mut self) -> Option<EngineEvent<GatewayEvent>> {
        self.poll_event()
    }
}

/// An engine whose events go to `handler` after every input, so the binary can act on them
/// (configure the TUN device, log, stop) inside the event loop.
pub struct Watched<E, H> {
    engine: E,
    handler: H,
}

impl<E: Observed, H: FnMut(EngineEvent<E::Event>)> Watched<E, H> {
    /// `engine`, with `handler` called for each of its events.
    pub fn new(engine: E, handler: H) -> Self {
        Self { engine, handler }
    }

    fn dispatch(&mut self) {
        while let Some(event) = self.engine.next_event() {
            (self.handler)(event);
        }
    }
}

impl<E: Observed, H: FnMut(EngineEvent<E::Event>)> Engine for Watched<E, H> {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.engine.handle_datagram(local, from, bytes, now);
        self.dispatch();
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.engine.handle_device_packet(packet, now);
        self.dispatch();
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        self.engine.handle_device_bytes(packet, now);
        self.dispatch();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.dispatch();
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.engine.poll_transmit()
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        self.engine.poll_device_packet()
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.engine.handle_control(input, now);
        self.dispatch();
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.engine.poll_control()
    }
}

/// Raised from inside the loop when the node must stop (the portal session failed for good).
#[derive(Debug, Clone, Default)]
pub struct Fatal(Rc<(Notify, RefCell<Option<String>>)>);

impl Fatal {
    /// Asks the driver to stop, with the reason to tell the user.
    pub fn raise(&self, reason: String) {
        self.0 .1.borrow_mut().get_or_insert(reason);
        self.0 .0.notify_one();
    }

    async fn wait(&self) -> String {
        self.0 .0.notified().await;
        self.0 .1.borrow().clone().unwrap_or_default()
    }
}

/// Runs `engine` until SIGINT or SIGTERM (`Ok`), a [`Fatal`] error or an I/O failure (`Err`).
/// Must run inside a `LocalSet` (the portal link spawns local tasks).
pub async fn drive<E: Engine, S: DatagramSocket>(
    engine: &mut E,
    socket: &S,
    device: &mut TunDevice,
    link: &mut WebSocketLink<TcpConnector>,
    fatal: &Fatal,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let (commands_tx, mut commands) = mpsc::unbounded_channel::<Command<E>>();
    let looped = run(engine, socket, &TokioClock, device, link, &mut commands);
    tokio::pin!(looped);
    let outcome = tokio::select! {
        result = &mut looped => return result.context("the event loop failed"),
        _ = sigint.recv() => Ok("SIGINT"),
        _ = sigterm.recv() => Ok("SIGTERM"),
        reason = fatal.wait() => Err(reason),
    };
    // Closing the command channel ends the loop at its next turn.
    drop(commands_tx);
    looped.await.context("the event loop failed")?;
    match outcome {
        Ok(signal) => {
            tracing::info!(signal, "Stopped");
            Ok(())
        }
        Err(reason) => Err(anyhow::anyhow!(
            "the portal session failed for good: {reason}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_endpoint_adds_path_token_and_port() {
        let e = portal_endpoint("ws://192.0.2.10:8080", "client", "a b&c").unwrap();
        assert_eq!(e.connect, "192.0.2.10:8080");
        assert_eq!(
            e.url,
            "ws://192.0.2.10:8080/client/websocket?token=a%20b%26c"
        );
        let e = portal_endpoint("ws://portal.example.net/", "gateway", "t").unwrap();
        assert_eq!(e.connect, "portal.example.net:80");
        assert_eq!(e.url, "ws://portal.example.net/gateway/websocket?token=t");
        let e = portal_endpoint("ws://[2001:db8::1]", "client", "t").unwrap();
        assert_eq!(e.connect, "[2001:db8::1]:80");
    }

    #[test]
    fn portal_endpoint_refuses_bad_urls() {
        for bad in ["wss://x", "http://x:1", "ws://", "x:8080"] {
            assert!(portal_endpoint(bad, "client", "t").is_err(), "{bad}");
        }
        assert!(portal_endpoint("ws://x:1", "client", "").is_err());
    }

    #[test]
    fn advertise_takes_ips_and_socket_addresses() {
        assert_eq!(
            parse_advertise("203.0.113.7").unwrap(),
            Advertise::Ip("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            parse_advertise("203.0.113.7:4000").unwrap(),
            Advertise::Socket("203.0.113.7:4000".parse().unwrap())
        );
        assert!(parse_advertise("example.net").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unspecified_bind_reports_the_address_towards_the_portal() {
        let socket = HostSocket::bind("0.0.0.0:0".parse().unwrap(), "127.0.0.1:9")
            .await
            .unwrap();
        let host = socket.host_address();
        assert_eq!(host.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_ne!(host.port(), 0);
        assert_eq!(socket.local_addr().unwrap(), host);
        let extra = [
            Advertise::Ip("203.0.113.7".parse().unwrap()),
            Advertise::Socket("203.0.113.8:4000".parse().unwrap()),
            Advertise::Ip(host.ip()),
        ];
        assert_eq!(
            local_addresses(&socket, &extra),
            vec![
                host,
                SocketAddr::new("203.0.113.7".parse().unwrap(), host.port()),
                "203.0.113.8:4000".parse().unwrap(),
            ]
        );
    }
}
