//! The network and clock the runtime needs, as traits, so that a simulation (turmoil) can stand
//! in for the operating system. [`TokioNetwork`] is the real implementation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// A bound UDP socket.
pub trait UdpSocketLike: Send + Sync + 'static {
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Receives one datagram into `buf`.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    /// Sends one datagram to `target`.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;
}

/// Sockets and clocks.
pub trait Network {
    /// The socket type.
    type Socket: UdpSocketLike;
    /// Binds a UDP socket.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Socket>>;
    /// The monotonic clock, as a std `Instant` (a simulation converts its own).
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch (simulated or real).
    fn unix_time(&self) -> u64;
    /// Waits until `deadline` on this network's clock.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

/// The operating system's network and clocks, through tokio.
#[derive(Debug, Clone, Copy)]
pub struct TokioNetwork {
    /// SO_RCVBUF and SO_SNDBUF asked for on every socket (the kernel caps them at
    /// `net.core.rmem_max`/`wmem_max`). The default 4 MiB absorbs bursts that overflow Linux's
    /// 208 KiB default.
    pub socket_buffer: usize,
}

impl Default for TokioNetwork {
    fn default() -> Self {
        Self {
            socket_buffer: 4 << 20,
        }
    }
}

impl TokioNetwork {
    fn bind_std(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: a smaller buffer than asked for is not an error.
        if let Err(error) = socket.set_recv_buffer_size(self.socket_buffer) {
            tracing::debug!(target: "relay", %error, "cannot set SO_RCVBUF");
        }
        if let Err(error) = socket.set_send_buffer_size(self.socket_buffer) {
            tracing::debug!(target: "relay", %error, "cannot set SO_SNDBUF");
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }
}

impl UdpSocketLike for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        tokio::net::UdpSocket::send_to(self, buf, target)
    }
}

impl Network for TokioNetwork {
    type Socket = tokio::net::UdpSocket;

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Socket>> {
        let socket = self
            .bind_std(addr)
            .and_then(tokio::net::UdpSocket::from_std);
        std::future::ready(socket)
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    #[allow(clippy::disallowed_methods)] // the runtime is where real wall-clock time is read
    fn unix_time(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}
