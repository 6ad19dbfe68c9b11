//! The operating system's sockets and clock, through tokio.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Clock, Connector, DatagramSocket};

/// A tokio UDP socket.
#[derive(Debug)]
pub struct TokioSocket(pub tokio::net::UdpSocket);

impl DatagramSocket for TokioSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.0.recv_from(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.0.send_to(buf, dst)
    }
}

/// tokio's clock (real time, or paused time in tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(deadline.into())
    }
}

/// Opens TCP connections to the portal.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    /// The portal's address (host:port, resolved on every connect).
    pub addr: String,
}

impl Connector for TcpConnector {
    type Stream = tokio::net::TcpStream;

    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> {
        let addr = self.addr.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            // Small messages answered at once: no Nagle (see `PortalConnector`).
            stream.set_nodelay(true)?;
            Ok(stream)
        }
    }
}
