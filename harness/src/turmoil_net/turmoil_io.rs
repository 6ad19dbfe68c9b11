//! The node's, the relay's and the portal's I/O traits over turmoil.
//!
//! Sockets are `turmoil::net` sockets; the monotonic clock is tokio's (paused and driven by
//! turmoil); wall-clock time is a fixed epoch plus the simulation's elapsed time
//! ([`super::sim_wall_clock`]), the same on every host and in every run.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::{sim_time, sim_wall_clock};

/// A turmoil UDP socket, for the node ([`node::runtime::DatagramSocket`]) and the relay
/// ([`relay_sim::net::UdpSocketLike`]) alike.
///
/// turmoil 0.7.2 binds only the unspecified address (or loopback): [`TurmoilSocket::bind`] with
/// the host's own IP binds `0.0.0.0` and reports the IP it was given as its local address, which
/// is what a node must advertise as its host candidate.
#[derive(Debug)]
pub struct TurmoilSocket {
    socket: turmoil::net::UdpSocket,
    local: SocketAddr,
}

impl TurmoilSocket {
    /// Binds `addr`'s port on the current host; `addr`'s IP (the host's own, or unspecified) is
    /// what [`TurmoilSocket::local_addr`] reports.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = turmoil::net::UdpSocket::bind(bindable(addr)).await?;
        let local = SocketAddr::new(addr.ip(), socket.local_addr()?.port());
        Ok(Self { socket, local })
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The turmoil socket.
    pub fn inner(&self) -> &turmoil::net::UdpSocket {
        &self.socket
    }
}

/// What turmoil accepts to bind for `addr`: loopback as is, anything else as the unspecified
/// address of its family, same port.
pub fn bindable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        return addr;
    }
    let ip: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, addr.port())
}

impl node::runtime::DatagramSocket for TurmoilSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.socket.recv_from(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.socket.send_to(buf, dst)
    }
}

impl relay_sim::net::UdpSocketLike for TurmoilSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.socket.recv_from(buf)
    }

    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        self.socket.send_to(buf, target)
    }
}

/// The node's clock inside a turmoil host: tokio's paused clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilClock;

impl node::runtime::Clock for TurmoilClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        super::timers::sleep_until(deadline.into())
    }
}

/// The relay's network inside a turmoil host.
#[derive(Debug, Clone, Copy)]
pub struct TurmoilNetwork {
    /// Unix time (seconds) at the start of the simulation.
    pub unix_epoch_secs: u64,
}

impl TurmoilNetwork {
    /// A network whose wall clock starts at `unix_epoch_secs`.
    pub fn new(unix_epoch_secs: u64) -> Self {
        Self { unix_epoch_secs }
    }
}

impl relay_sim::net::Network for TurmoilNetwork {
    type Socket = TurmoilSocket;

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Socket>> {
        TurmoilSocket::bind(addr)
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn unix_time(&self) -> u64 {
        self.unix_epoch_secs + sim_time().as_secs()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        super::timers::sleep_until(deadline.into())
    }
}

/// A turmoil TCP listener for the portal's WebSocket server.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl std::fmt::Debug for TurmoilListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TurmoilListener")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl TurmoilListener {
    /// Binds `addr`'s port on the current host (see [`bindable`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        turmoil::net::TcpListener::bind(bindable(addr))
            .await
            .map(Self)
    }
}

impl portal_sim::server::Listener for TurmoilListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }
}

/// The portal's wall clock inside a turmoil host: `unix_epoch_secs` plus simulated time.
pub fn portal_clock(unix_epoch_secs: u64) -> portal_sim::server::Clock {
    std::sync::Arc::new(move || sim_wall_clock(unix_epoch_secs))
}

/// The portal's sleeps inside a turmoil host, on the world's timer board.
pub fn portal_sleeper() -> portal_sim::server::Sleeper {
    std::sync::Arc::new(|duration| Box::pin(super::timers::sleep(duration)))
}
