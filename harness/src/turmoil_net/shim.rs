//! The socket of a host behind a NAT, and the header it shares with its NAT.
//!
//! Every datagram between an inside host and its NAT starts with a header naming the real far
//! end: the destination on the way out, the source on the way in.
//!
//! ```text
//! IPv4: 4 | a b c d | port (BE)                 7 bytes
//! IPv6: 6 | 16 address bytes | port (BE)         19 bytes
//! ```

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use super::scratch::Scratch;
use super::turmoil_io::bindable;

/// The longest header.
pub const MAX_HEADER_LEN: usize = 19;

/// Appends the header for `addr` to `out`.
pub fn encode_header(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// `payload` behind the header for `addr`.
pub fn encapsulate(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    encode_header(addr, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Splits a datagram into the address in its header and the payload; `None` if malformed.
pub fn decapsulate(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&family, rest) = bytes.split_first()?;
    let (ip, rest): (IpAddr, &[u8]) = match family {
        4 => {
            let (ip, rest) = rest.split_first_chunk::<4>()?;
            (Ipv4Addr::from(*ip).into(), rest)
        }
        6 => {
            let (ip, rest) = rest.split_first_chunk::<16>()?;
            (Ipv6Addr::from(*ip).into(), rest)
        }
        _ => return None,
    };
    let (port, payload) = rest.split_first_chunk::<2>()?;
    Some((SocketAddr::new(ip, u16::from_be_bytes(*port)), payload))
}

/// The socket of a host behind a NAT: sends go to the NAT with the real destination in a header;
/// receives come only from the NAT, with the real source taken from the header.
///
/// turmoil delivers a datagram addressed to the inside host's own IP, which a real NAT never
/// would: the shim drops anything that does not come from its NAT (counted in
/// [`NatShim::dropped_direct`]). [`super::links::isolate_inside`] stops such datagrams in the
/// network as well.
#[derive(Debug)]
pub struct NatShim {
    socket: turmoil::net::UdpSocket,
    local: SocketAddr,
    nat: SocketAddr,
    dropped_direct: AtomicU64,
    dropped_malformed: AtomicU64,
    scratch: Scratch,
}

impl NatShim {
    /// Binds `inside`'s port (give the host's own turmoil IP: it is the inside address the
    /// socket reports), sending through the NAT's inside
    /// address `nat` ([`super::NatHandle::inside_addr`]).
    pub async fn bind(inside: SocketAddr, nat: SocketAddr) -> io::Result<Self> {
        let socket = turmoil::net::UdpSocket::bind(bindable(inside)).await?;
        let local = SocketAddr::new(inside.ip(), socket.local_addr()?.port());
        Ok(Self {
            socket,
            local,
            nat,
            dropped_direct: AtomicU64::new(0),
            dropped_malformed: AtomicU64::new(0),
            scratch: Scratch::default(),
        })
    }

    /// The inside address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Datagrams dropped because they did not come from the NAT.
    pub fn dropped_direct(&self) -> u64 {
        self.dropped_direct.load(Ordering::Relaxed)
    }

    /// Datagrams from the NAT without a valid header.
    pub fn dropped_malformed(&self) -> u64 {
        self.dropped_malformed.load(Ordering::Relaxed)
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut scratch = self.scratch.lend(buf.len() + MAX_HEADER_LEN);
        loop {
            let (n, from) = self.socket.recv_from(&mut scratch).await?;
            if from != self.nat {
                self.dropped_direct.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(inside = %self.local, %from, "shim: dropped datagram not from the NAT");
                continue;
            }
            let Some((src, payload)) = scratch.get(..n).and_then(decapsulate) else {
                self.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let len = payload.len().min(buf.len());
            buf[..len].copy_from_slice(&payload[..len]);
            return Ok((len, src));
        }
    }

    async fn send(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.socket
            .send_to(&encapsulate(dst, buf), self.nat)
            .await?;
        Ok(buf.len())
    }
}

impl node::runtime::DatagramSocket for NatShim {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.recv(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.send(buf, dst)
    }
}

impl relay_sim::net::UdpSocketLike for NatShim {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.recv(buf)
    }

    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        self.send(buf, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_v4_and_v6() {
        for addr in [
            SocketAddr::from(([192, 168, 0, 7], 3478)),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 51820)),
        ] {
            let datagram = encapsulate(addr, b"payload");
            assert_eq!(decapsulate(&datagram), Some((addr, &b"payload"[..])));
        }
        assert_eq!(decapsulate(&[]), None);
        assert_eq!(decapsulate(&[4, 1, 2, 3]), None);
        assert_eq!(decapsulate(&[5, 1, 2, 3, 4, 0, 1]), None);
        let empty = encapsulate(SocketAddr::from(([10, 0, 0, 1], 1)), &[]);
        assert_eq!(empty.len(), 7);
        assert_eq!(decapsulate(&empty).map(|(_, p)| p.len()), Some(0));
    }
}
