//! Building valid packets, for tests and the simulation.
//!
//! The bytes come from etherparse's `PacketBuilder`, which computes the checksums.

use std::net::{IpAddr, SocketAddr};

use etherparse::err::packet::BuildWriteError;
use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader};

use super::{IpPacket, IpVersion, PacketError, TcpFlags};
use super::{ICMP_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};

/// Hop limit of built packets; any value that survives a few hops would do.
const TTL: u8 = 64;
/// Window of built TCP segments.
const TCP_WINDOW: u16 = 65535;
const TCP_HEADER_LEN: usize = 20;

impl IpPacket {
    /// A UDP datagram from `src` to `dst`.
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Self, PacketError> {
        let ip = ip_builder(src.ip(), dst.ip(), UDP_HEADER_LEN, payload.len())?;
        let mut bytes = Vec::new();
        let written = ip.udp(src.port(), dst.port()).write(&mut bytes, payload);
        parse_built(written, bytes, payload.len())
    }

    /// A TCP segment from `src` to `dst` without options.
    ///
    /// `ack` is written as given; it means something only with [`TcpFlags::ACK`].
    pub fn tcp(
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: u32,
        flags: TcpFlags,
        payload: &[u8],
    ) -> Result<Self, PacketError> {
        let ip = ip_builder(src.ip(), dst.ip(), TCP_HEADER_LEN, payload.len())?;
        let mut header = TcpHeader::new(src.port(), dst.port(), seq, TCP_WINDOW);
        header.acknowledgment_number = ack;
        header.fin = flags.contains(TcpFlags::FIN);
        header.syn = flags.contains(TcpFlags::SYN);
        header.rst = flags.contains(TcpFlags::RST);
        header.psh = flags.contains(TcpFlags::PSH);
        header.ack = flags.contains(TcpFlags::ACK);
        header.urg = flags.contains(TcpFlags::URG);
        header.ece = flags.contains(TcpFlags::ECE);
        header.cwr = flags.contains(TcpFlags::CWR);
        let mut bytes = Vec::new();
        let written = ip.tcp_header(header).write(&mut bytes, payload);
        parse_built(written, bytes, payload.len())
    }

    /// An ICMP (v4 or v6, after the addresses) echo request.
    pub fn icmp_echo_request(
        src: IpAddr,
        dst: IpAddr,
        identifier: u16,
        seq: u16,
        payload: &[u8],
    ) -> Result<Self, PacketError> {
        let ip = ip_builder(src, dst, ICMP_HEADER_LEN, payload.len())?;
        let mut bytes = Vec::new();
        let written = match src {
            IpAddr::V4(_) => ip
                .icmpv4_echo_request(identifier, seq)
                .write(&mut bytes, payload),
            IpAddr::V6(_) => ip
                .icmpv6_echo_request(identifier, seq)
                .write(&mut bytes, payload),
        };
        parse_built(written, bytes, payload.len())
    }

    /// An ICMP (v4 or v6, after the addresses) echo reply.
    pub fn icmp_echo_reply(
        src: IpAddr,
        dst: IpAddr,
        identifier: u16,
        seq: u16,
        payload: &[u8],
    ) -> Result<Self, PacketError> {
        let ip = ip_builder(src, dst, ICMP_HEADER_LEN, payload.len())?;
        let mut bytes = Vec::new();
        let written = match src {
            IpAddr::V4(_) => ip
                .icmpv4_echo_reply(identifier, seq)
                .write(&mut bytes, payload),
            IpAddr::V6(_) => ip
                .icmpv6_echo_reply(identifier, seq)
                .write(&mut bytes, payload),
        };
        parse_built(written, bytes, payload.len())
    }
}

/// The IP layer, once the addresses agree and the payload fits the length fields.
fn ip_builder(
    src: IpAddr,
    dst: IpAddr,
    transport_header_len: usize,
    payload_len: usize,
) -> Result<PacketBuilderStep<IpHeaders>, PacketError> {
    let ip_overhead = match src {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        // The IPv6 payload length does not count the fixed header.
        IpAddr::V6(_) => 0,
    };
    let max = usize::from(u16::MAX) - ip_overhead - transport_header_len;
    if payload_len > max {
        return Err(PacketError::PayloadTooLarge {
            len: payload_len,
            max,
        });
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ok(PacketBuilder::ipv4(s.octets(), d.octets(), TTL)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ok(PacketBuilder::ipv6(s.octets(), d.octets(), TTL)),
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => {
            Err(PacketError::AddressFamilyMismatch {
                packet: IpVersion::of(src),
                address: IpVersion::of(dst),
            })
        }
    }
}

/// Parses what etherparse wrote, so a built packet passes the same checks as a received one.
fn parse_built(
    written: Result<(), BuildWriteError>,
    bytes: Vec<u8>,
    payload_len: usize,
) -> Result<IpPacket, PacketError> {
    // `ip_builder` checked the lengths, and writing to a Vec cannot fail otherwise.
    written.map_err(|_| PacketError::PayloadTooLarge {
        len: payload_len,
        max: 0,
    })?;
    IpPacket::parse(bytes)
}
