//! IP packets as the tunnel sees them.
//!
//! [`IpPacket`] is a view over a buffer holding exactly one IPv4 or IPv6 packet. Parsing is
//! strict where the node relies on the bytes and lenient where real software is sloppy:
//!
//! - Strict: the IP header and every length field. IPv4 needs IHL ≥ 5 and a total length
//!   covering the header and equal to the buffer; IPv6 needs a payload length equal to the rest
//!   of the buffer. Trailing bytes are rejected ([`PacketError::TrailingBytes`]), not trimmed, so
//!   the buffer [`IpPacket::into_inner`] hands back is exactly the packet. UDP, TCP, ICMPv4 and
//!   ICMPv6 headers are parsed in full and must fit the IP payload: the UDP length equals it, the
//!   TCP data offset is at least 5 and within it, an ICMP header has its 8 bytes. IPv6 extension
//!   headers must be well formed, hop-by-hop first, and a routing header must have no segments
//!   left (otherwise the destination is not the final one); for the same reason IPv4 options
//!   must be well formed and hold no source route (LSRR, SSRR).
//! - Lenient: other IPv4 options, IPv6 extension headers we do not act on, authentication headers,
//!   unknown protocols ([`Transport::Other`]), and checksums, which are not verified on parse
//!   (WireGuard already authenticates the bytes; [`IpPacket::checksums_valid`] exists for tests).
//! - Fragments: any packet that is part of a fragmented datagram is [`Transport::Fragment`],
//!   first fragment included, since its transport header cannot be checked against the length of
//!   the whole datagram. Fragments have no ports or ICMP identifier. Address rewrites still keep
//!   the transport checksum of a first fragment right, so the reassembled datagram is valid.
//!
//! Rewrites update checksums incrementally (RFC 1624), which is O(1) and keeps a wrong checksum
//! exactly as wrong as it was: rewriting a field and then rewriting it back restores every byte,
//! unless a checksum held the unusual encoding of zero (see `checksum`), which is then written in
//! the usual one.

mod build;
mod checksum;
mod error;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod properties;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use etherparse::{
    ip_number, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6RawExtHeaderSlice,
    TcpHeaderSlice, TcpSlice, UdpHeaderSlice,
};

pub use error::{Layer, PacketError};
pub use etherparse::IpNumber;

use checksum::Zero;

/// IP version of a packet or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// The version of `addr`.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }
}

/// The transport layer of an [`IpPacket`], borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// A UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// The datagram's data.
        payload: &'a [u8],
    },
    /// A TCP segment.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number, meaningful only with [`TcpFlags::ACK`].
        ack: u32,
        /// Control bits.
        flags: TcpFlags,
        /// The segment's data, after any options.
        payload: &'a [u8],
    },
    /// An ICMPv4 message.
    Icmpv4 {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
        /// Identifier and sequence number of an echo request or reply.
        echo: Option<IcmpEcho>,
        /// Everything after the 8-byte header.
        payload: &'a [u8],
    },
    /// An ICMPv6 message.
    Icmpv6 {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
        /// Identifier and sequence number of an echo request or reply.
        echo: Option<IcmpEcho>,
        /// Everything after the 8-byte header.
        payload: &'a [u8],
    },
    /// A protocol this module does not parse: its bytes are [`IpPacket::payload`].
    Other(IpNumber),
    /// Part of a fragmented datagram; the protocol is [`IpPacket::protocol`].
    Fragment,
}

/// The fields an ICMP echo request or reply adds to the ICMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpEcho {
    /// Identifier; plays the role of a port for NAT.
    pub identifier: u16,
    /// Sequence number.
    pub sequence: u16,
}

/// TCP control bits, as in byte 13 of the TCP header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push.
    pub const PSH: Self = Self(0x08);
    /// The acknowledgment number is valid.
    pub const ACK: Self = Self(0x10);
    /// The urgent pointer is valid.
    pub const URG: Self = Self(0x20);
    /// ECN echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion window reduced.
    pub const CWR: Self = Self(0x80);

    /// The flags from the raw byte.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// tcpdump's letters: `[S.]` is SYN-ACK.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LETTERS: [(TcpFlags, char); 8] = [
            (TcpFlags::SYN, 'S'),
            (TcpFlags::FIN, 'F'),
            (TcpFlags::RST, 'R'),
            (TcpFlags::PSH, 'P'),
            (TcpFlags::URG, 'U'),
            (TcpFlags::ECE, 'E'),
            (TcpFlags::CWR, 'W'),
            (TcpFlags::ACK, '.'),
        ];
        f.write_str("[")?;
        for (flag, letter) in LETTERS {
            if self.contains(flag) {
                write!(f, "{letter}")?;
            }
        }
        f.write_str("]")
    }
}

/// What sits at [`Layout::transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Udp,
    Tcp,
    Icmpv4,
    Icmpv6,
    Other,
    /// `first`: the fragment at offset 0, which carries the transport header (unchecked).
    Fragment {
        first: bool,
    },
}

/// Offsets found by [`IpPacket::parse`], so that accessors never parse again.
#[derive(Debug, Clone, Copy)]
struct Layout {
    version: IpVersion,
    /// The upper-layer protocol: after the IPv4 authentication header and IPv6 extension headers.
    protocol: IpNumber,
    /// Start of the upper-layer header (of the fragment data, for a fragment).
    transport: usize,
    /// Start of the transport payload; `transport` when there is no header to skip.
    payload: usize,
    kind: Kind,
}

/// One IPv4 or IPv6 packet in a buffer `B`, checked as described in the [module docs](self).
///
/// The whole buffer is the packet. Accessors read fixed offsets found at parse time, so they are
/// O(1); they never panic, even if `B` were to return a different slice later (they would then
/// read garbage).
#[derive(Clone)]
pub struct IpPacket<B = Vec<u8>> {
    buf: B,
    layout: Layout,
}

const ICMPV4_ECHO_REPLY: u8 = 0;
const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;

impl<B: AsRef<[u8]>> IpPacket<B> {
    /// Parses `buf` as exactly one IP packet.
    pub fn parse(buf: B) -> Result<Self, PacketError> {
        let layout = Layout::parse(buf.as_ref())?;
        Ok(Self { buf, layout })
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The buffer back; it holds exactly [`IpPacket::as_bytes`].
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// IP version.
    pub fn version(&self) -> IpVersion {
        self.layout.version
    }

    /// Source address.
    pub fn source(&self) -> IpAddr {
        self.address(self.source_offset())
    }

    /// Destination address.
    pub fn destination(&self) -> IpAddr {
        self.address(self.destination_offset())
    }

    /// The upper-layer protocol, after any IPv6 extension headers or authentication header.
    pub fn protocol(&self) -> IpNumber {
        self.layout.protocol
    }

    /// The transport header and payload.
    pub fn transport(&self) -> Transport<'_> {
        let bytes = self.as_bytes();
        let t = self.layout.transport;
        let payload = self.payload();
        match self.layout.kind {
            Kind::Udp => Transport::Udp {
                src_port: read_u16(bytes, t),
                dst_port: read_u16(bytes, t + 2),
                payload,
            },
            Kind::Tcp => Transport::Tcp {
                src_port: read_u16(bytes, t),
                dst_port: read_u16(bytes, t + 2),
                seq: read_u32(bytes, t + 4),
                ack: read_u32(bytes, t + 8),
                flags: TcpFlags(read_u8(bytes, t + 13)),
                payload,
            },
            Kind::Icmpv4 => Transport::Icmpv4 {
                icmp_type: read_u8(bytes, t),
                code: read_u8(bytes, t + 1),
                echo: self.echo(),
                payload,
            },
            Kind::Icmpv6 => Transport::Icmpv6 {
                icmp_type: read_u8(bytes, t),
                code: read_u8(bytes, t + 1),
                echo: self.echo(),
                payload,
            },
            Kind::Other => Transport::Other(self.layout.protocol),
            Kind::Fragment { .. } => Transport::Fragment,
        }
    }

    /// UDP or TCP source port.
    pub fn source_port(&self) -> Result<u16, PacketError> {
        Ok(read_u16(self.as_bytes(), self.port_offset()?))
    }

    /// UDP or TCP destination port.
    pub fn destination_port(&self) -> Result<u16, PacketError> {
        Ok(read_u16(self.as_bytes(), self.port_offset()? + 2))
    }

    /// Identifier of an ICMP echo request or reply.
    pub fn icmp_identifier(&self) -> Result<u16, PacketError> {
        self.echo()
            .map(|echo| echo.identifier)
            .ok_or(PacketError::NotIcmpEcho)
    }

    /// The transport payload: after the UDP, TCP or ICMP header; for other protocols and for
    /// fragments, everything after the IP header and its extensions.
    pub fn payload(&self) -> &[u8] {
        self.as_bytes()
            .get(self.layout.payload..)
            .unwrap_or_default()
    }

    /// Whether the IPv4 header checksum and the transport checksum are what a sender computes.
    ///
    /// An IPv4 UDP checksum of zero ("none") counts as valid; in IPv6 it does not. A receiver
    /// would also accept the other encoding of a zero checksum, this does not. For a fragment
    /// only the IPv4 header can be checked.
    pub fn checksums_valid(&self) -> bool {
        let bytes = self.as_bytes();
        let ip_header_ok = match self.layout.version {
            IpVersion::V4 => Ipv4HeaderSlice::from_slice(bytes)
                .is_ok_and(|h| h.header_checksum() == h.to_header().calc_header_checksum()),
            IpVersion::V6 => true,
        };
        ip_header_ok && self.transport_checksum_valid()
    }

    fn transport_checksum_valid(&self) -> bool {
        let Some(segment) = self.as_bytes().get(self.layout.transport..) else {
            return false;
        };
        let (src, dst) = (self.source(), self.destination());
        match self.layout.kind {
            Kind::Udp => {
                let Ok(header) = UdpHeaderSlice::from_slice(segment) else {
                    return false;
                };
                let payload = self.payload();
                let expected =
                    match (src, dst) {
                        (IpAddr::V4(_), IpAddr::V4(_)) if header.checksum() == 0 => return true,
                        (IpAddr::V4(s), IpAddr::V4(d)) => header
                            .to_header()
                            .calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                        (IpAddr::V6(s), IpAddr::V6(d)) => header
                            .to_header()
                            .calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => {
                            return false
                        }
                    };
                expected.is_ok_and(|sum| sum == header.checksum())
            }
            Kind::Tcp => {
                let Ok(tcp) = TcpSlice::from_slice(segment) else {
                    return false;
                };
                let expected = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        tcp.calc_checksum_ipv4(s.octets(), d.octets())
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        tcp.calc_checksum_ipv6(s.octets(), d.octets())
                    }
                    (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => {
                        return false
                    }
                };
                expected.is_ok_and(|sum| sum == tcp.checksum())
            }
            // etherparse's ICMP slices insist on exact lengths for some types, so sum by hand.
            Kind::Icmpv4 => {
                let zero = if is_zero_except_checksum(segment) {
                    Zero::Negative
                } else {
                    Zero::Positive
                };
                let words = checksum::sum(segment).saturating_sub(u64::from(read_u16(segment, 2)));
                checksum::finish(words, zero) == read_u16(segment, 2)
            }
            Kind::Icmpv6 => {
                let words = (self.pseudo_header_sum(segment.len()) + checksum::sum(segment))
                    .saturating_sub(u64::from(read_u16(segment, 2)));
                checksum::finish(words, Zero::Positive) == read_u16(segment, 2)
            }
            Kind::Other | Kind::Fragment { .. } => true,
        }
    }

    /// Words of the IPv6 pseudo-header for an upper-layer packet of `len` bytes.
    fn pseudo_header_sum(&self, len: usize) -> u64 {
        let bytes = self.as_bytes();
        let addresses = bytes.get(8..40).unwrap_or_default();
        checksum::sum(addresses) + len as u64 + u64::from(self.layout.protocol.0)
    }

    fn echo(&self) -> Option<IcmpEcho> {
        let bytes = self.as_bytes();
        let t = self.layout.transport;
        let icmp_type = read_u8(bytes, t);
        let is_echo = match self.layout.kind {
            Kind::Icmpv4 => matches!(icmp_type, ICMPV4_ECHO_REQUEST | ICMPV4_ECHO_REPLY),
            Kind::Icmpv6 => matches!(icmp_type, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY),
            Kind::Udp | Kind::Tcp | Kind::Other | Kind::Fragment { .. } => false,
        };
        is_echo.then(|| IcmpEcho {
            identifier: read_u16(bytes, t + 4),
            sequence: read_u16(bytes, t + 6),
        })
    }

    fn port_offset(&self) -> Result<usize, PacketError> {
        match self.layout.kind {
            Kind::Udp | Kind::Tcp => Ok(self.layout.transport),
            Kind::Icmpv4 | Kind::Icmpv6 | Kind::Other | Kind::Fragment { .. } => {
                Err(PacketError::NoPorts)
            }
        }
    }

    fn source_offset(&self) -> usize {
        match self.layout.version {
            IpVersion::V4 => 12,
            IpVersion::V6 => 8,
        }
    }

    fn destination_offset(&self) -> usize {
        match self.layout.version {
            IpVersion::V4 => 16,
            IpVersion::V6 => 24,
        }
    }

    fn address(&self, at: usize) -> IpAddr {
        let bytes = self.as_bytes();
        match self.layout.version {
            IpVersion::V4 => IpAddr::from(read_array::<4>(bytes, at)),
            IpVersion::V6 => IpAddr::from(read_array::<16>(bytes, at)),
        }
    }

    /// The transport checksum, which covers the pseudo-header (and so the addresses) for all
    /// but ICMPv4.
    fn transport_checksum(&self) -> Option<Field> {
        let t = self.layout.transport;
        let field = match (self.layout.kind, self.layout.protocol) {
            (Kind::Udp, _) | (Kind::Fragment { first: true }, ip_number::UDP) => Field {
                at: t + 6,
                zero: Zero::Negative,
                zero_is_none: true,
            },
            (Kind::Tcp, _) | (Kind::Fragment { first: true }, ip_number::TCP) => Field {
                at: t + 16,
                zero: Zero::Positive,
                zero_is_none: false,
            },
            (Kind::Icmpv6, _) | (Kind::Fragment { first: true }, ip_number::IPV6_ICMP) => Field {
                at: t + 2,
                zero: Zero::Positive,
                zero_is_none: false,
            },
            (Kind::Icmpv4, _) => Field {
                at: t + 2,
                zero: Zero::Positive,
                zero_is_none: false,
            },
            (Kind::Other | Kind::Fragment { .. }, _) => return None,
        };
        // A tiny first fragment may stop before the field; its datagram is broken anyway.
        (field.at + 2 <= self.as_bytes().len()).then_some(field)
    }

    /// The transport checksum if it covers the addresses.
    fn pseudo_header_checksum(&self) -> Option<Field> {
        match (self.layout.version, self.layout.protocol) {
            (IpVersion::V4, ip_number::ICMP) => None,
            // ICMPv6 carried in IPv4 is parsed as `Other`, so only a first fragment gets here.
            (IpVersion::V4, ip_number::IPV6_ICMP) => None,
            _ => self.transport_checksum(),
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> IpPacket<B> {
    /// Rewrites the source address, updating the checksums that cover it.
    pub fn set_source(&mut self, addr: IpAddr) -> Result<(), PacketError> {
        let at = self.source_offset();
        self.set_address(at, addr)
    }

    /// Rewrites the destination address, updating the checksums that cover it.
    pub fn set_destination(&mut self, addr: IpAddr) -> Result<(), PacketError> {
        let at = self.destination_offset();
        self.set_address(at, addr)
    }

    /// Rewrites the UDP or TCP source port, updating the transport checksum.
    pub fn set_source_port(&mut self, port: u16) -> Result<(), PacketError> {
        let at = self.port_offset()?;
        self.set_transport_u16(at, port);
        Ok(())
    }

    /// Rewrites the UDP or TCP destination port, updating the transport checksum.
    pub fn set_destination_port(&mut self, port: u16) -> Result<(), PacketError> {
        let at = self.port_offset()? + 2;
        self.set_transport_u16(at, port);
        Ok(())
    }

    /// Rewrites the identifier of an ICMP echo request or reply, updating the ICMP checksum.
    pub fn set_icmp_identifier(&mut self, identifier: u16) -> Result<(), PacketError> {
        if self.echo().is_none() {
            return Err(PacketError::NotIcmpEcho);
        }
        let at = self.layout.transport + 4;
        self.set_transport_u16(at, identifier);
        Ok(())
    }

    fn set_address(&mut self, at: usize, addr: IpAddr) -> Result<(), PacketError> {
        let packet = self.layout.version;
        let new: &[u8] = match (packet, addr) {
            (IpVersion::V4, IpAddr::V4(a)) => &a.octets(),
            (IpVersion::V6, IpAddr::V6(a)) => &a.octets(),
            (IpVersion::V4, IpAddr::V6(_)) | (IpVersion::V6, IpAddr::V4(_)) => {
                return Err(PacketError::AddressFamilyMismatch {
                    packet,
                    address: IpVersion::of(addr),
                })
            }
        };
        let transport = self.pseudo_header_checksum();
        let bytes = self.buf.as_mut();
        let mut old = [0; 16];
        let old = old.get_mut(..new.len()).unwrap_or_default();
        if let Some(current) = bytes.get(at..at + new.len()) {
            old.copy_from_slice(current);
        }
        let old = &*old;
        if packet == IpVersion::V4 {
            let header = Field {
                at: 10,
                zero: Zero::Positive,
                zero_is_none: false,
            };
            header.update(bytes, old, new);
        }
        if let Some(field) = transport {
            field.update(bytes, old, new);
        }
        write(bytes, at, new);
        Ok(())
    }

    /// Writes a port or ICMP identifier, which the transport checksum covers.
    fn set_transport_u16(&mut self, at: usize, value: u16) {
        let field = self.transport_checksum();
        let is_icmpv4 = self.layout.kind == Kind::Icmpv4;
        let t = self.layout.transport;
        let bytes = self.buf.as_mut();
        let old = read_array::<2>(bytes, at);
        let new = value.to_be_bytes();
        write(bytes, at, &new);
        if let Some(mut field) = field {
            // Without a pseudo-header an ICMPv4 message can sum to zero, and RFC 1071 then
            // gives 0xFFFF. The scan stops at the first non-zero byte, nearly always the type.
            if is_icmpv4 && is_zero_except_checksum(bytes.get(t..).unwrap_or_default()) {
                field.zero = Zero::Negative;
            }
            field.update(bytes, &old, &new);
        }
    }
}

/// A checksum field and how to encode it.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    zero: Zero,
    /// UDP: a zero field means "no checksum" and stays zero.
    zero_is_none: bool,
}

impl Field {
    /// Updates the field for the checksummed words `old` becoming `new`.
    fn update(self, bytes: &mut [u8], old: &[u8], new: &[u8]) {
        let check = read_u16(bytes, self.at);
        if self.zero_is_none && check == 0 {
            return;
        }
        let updated = checksum::update(check, old, new, self.zero);
        write(bytes, self.at, &updated.to_be_bytes());
    }
}

impl Layout {
    fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        let first = *bytes.first().ok_or(PacketError::Empty)?;
        match first >> 4 {
            4 => Self::parse_v4(bytes),
            6 => Self::parse_v6(bytes),
            version => Err(PacketError::UnknownVersion(version)),
        }
    }

    fn parse_v4(bytes: &[u8]) -> Result<Self, PacketError> {
        let header = Ipv4HeaderSlice::from_slice(bytes).map_err(|e| {
            use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
            match e {
                HeaderSliceError::Len(len) => truncated(Layer::Ipv4, len),
                HeaderSliceError::Content(HeaderError::UnexpectedVersion { version_number }) => {
                    PacketError::UnknownVersion(version_number)
                }
                HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { ihl }) => {
                    PacketError::Ipv4HeaderLength { ihl }
                }
            }
        })?;
        let header_len = header.slice().len();
        let total_len = usize::from(header.total_len());
        if total_len < header_len {
            return Err(PacketError::Ipv4TotalLength {
                total_length: header.total_len(),
                header_length: header_len,
            });
        }
        check_len(Layer::Ipv4, total_len, bytes.len())?;
        check_ipv4_options(header.options())?;

        let fragment = header
            .is_fragmenting_payload()
            .then_some(header.fragments_offset().value() == 0);
        let mut protocol = header.protocol();
        let mut transport = header_len;
        // A later fragment starts somewhere inside the datagram, not with a header.
        if protocol == ip_number::AUTH && fragment != Some(false) {
            let rest = bytes.get(transport..).unwrap_or_default();
            let auth = IpAuthHeaderSlice::from_slice(rest).map_err(auth_error)?;
            transport += auth.slice().len();
            protocol = auth.next_header();
        }
        Self::transport(IpVersion::V4, bytes, transport, protocol, fragment)
    }

    fn parse_v6(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() < IPV6_HEADER_LEN {
            return Err(PacketError::Truncated {
                layer: Layer::Ipv6,
                required: IPV6_HEADER_LEN,
                available: bytes.len(),
            });
        }
        let payload_len = usize::from(read_u16(bytes, 4));
        check_len(Layer::Ipv6, IPV6_HEADER_LEN + payload_len, bytes.len())?;

        let mut protocol = IpNumber(read_u8(bytes, 6));
        let mut transport = IPV6_HEADER_LEN;
        let mut fragment = None;
        let mut first_extension = true;
        loop {
            let rest = bytes.get(transport..).unwrap_or_default();
            let (len, next) = match protocol {
                ip_number::IPV6_HOP_BY_HOP if !first_extension => {
                    return Err(PacketError::MisplacedHopByHop)
                }
                ip_number::IPV6_HOP_BY_HOP | ip_number::IPV6_DEST_OPTIONS => {
                    let ext = Ipv6RawExtHeaderSlice::from_slice(rest)
                        .map_err(|e| truncated(Layer::Ipv6Extension, e))?;
                    (ext.slice().len(), ext.next_header())
                }
                ip_number::IPV6_ROUTE => {
                    let ext = Ipv6RawExtHeaderSlice::from_slice(rest)
                        .map_err(|e| truncated(Layer::Ipv6Extension, e))?;
                    // Routing type, then segments left.
                    let segments_left = read_u8(ext.payload(), 1);
                    if segments_left != 0 {
                        return Err(PacketError::RoutingHeader { segments_left });
                    }
                    (ext.slice().len(), ext.next_header())
                }
                ip_number::IPV6_FRAG => {
                    let ext = Ipv6FragmentHeaderSlice::from_slice(rest)
                        .map_err(|e| truncated(Layer::Ipv6Extension, e))?;
                    if ext.is_fragmenting_payload() {
                        let first = ext.fragment_offset().value() == 0;
                        fragment = Some(first && fragment != Some(false));
                        if !first {
                            // The rest is the middle of the datagram, not headers.
                            transport += ext.slice().len();
                            protocol = ext.next_header();
                            break;
                        }
                    }
                    (ext.slice().len(), ext.next_header())
                }
                ip_number::AUTH => {
                    let auth = IpAuthHeaderSlice::from_slice(rest).map_err(auth_error)?;
                    (auth.slice().len(), auth.next_header())
                }
                _ => break,
            };
            transport += len;
            protocol = next;
            first_extension = false;
        }
        Self::transport(IpVersion::V6, bytes, transport, protocol, fragment)
    }

    /// Checks the upper-layer header at `transport`; `fragment` is `Some(first)` for fragments.
    fn transport(
        version: IpVersion,
        bytes: &[u8],
        transport: usize,
        protocol: IpNumber,
        fragment: Option<bool>,
    ) -> Result<Self, PacketError> {
        let layout = |kind, header_len: usize| Layout {
            version,
            protocol,
            transport,
            payload: transport + header_len,
            kind,
        };
        if let Some(first) = fragment {
            return Ok(layout(Kind::Fragment { first }, 0));
        }
        let segment = bytes.get(transport..).unwrap_or_default();
        match (protocol, version) {
            (ip_number::UDP, _) => {
                let udp =
                    UdpHeaderSlice::from_slice(segment).map_err(|e| truncated(Layer::Udp, e))?;
                if usize::from(udp.length()) != segment.len() {
                    return Err(PacketError::UdpLength {
                        udp_length: udp.length(),
                        ip_payload_length: segment.len(),
                    });
                }
                Ok(layout(Kind::Udp, UDP_HEADER_LEN))
            }
            (ip_number::TCP, _) => {
                let tcp = TcpHeaderSlice::from_slice(segment).map_err(|e| {
                    use etherparse::err::tcp::{HeaderError, HeaderSliceError};
                    match e {
                        HeaderSliceError::Len(len) => truncated(Layer::Tcp, len),
                        HeaderSliceError::Content(HeaderError::DataOffsetTooSmall {
                            data_offset,
                        }) => PacketError::TcpDataOffset { data_offset },
                    }
                })?;
                Ok(layout(Kind::Tcp, tcp.slice().len()))
            }
            (ip_number::ICMP, IpVersion::V4) => {
                check_icmp(Layer::Icmpv4, segment)?;
                Ok(layout(Kind::Icmpv4, ICMP_HEADER_LEN))
            }
            (ip_number::IPV6_ICMP, IpVersion::V6) => {
                check_icmp(Layer::Icmpv6, segment)?;
                Ok(layout(Kind::Icmpv6, ICMP_HEADER_LEN))
            }
            // Including ICMP of the wrong IP version, which nothing should send.
            _ => Ok(layout(Kind::Other, 0)),
        }
    }
}

/// The IP packet must end exactly where the buffer does.
fn check_len(layer: Layer, declared: usize, available: usize) -> Result<(), PacketError> {
    if declared > available {
        return Err(PacketError::Truncated {
            layer,
            required: declared,
            available,
        });
    }
    if declared < available {
        return Err(PacketError::TrailingBytes {
            layer,
            declared,
            available,
        });
    }
    Ok(())
}

fn check_icmp(layer: Layer, segment: &[u8]) -> Result<(), PacketError> {
    if segment.len() < ICMP_HEADER_LEN {
        return Err(PacketError::Truncated {
            layer,
            required: ICMP_HEADER_LEN,
            available: segment.len(),
        });
    }
    Ok(())
}

/// etherparse counts from where it started slicing, which for us is the start of `layer`.
/// Option types of the IPv4 loose and strict source routes (RFC 791).
const IPV4_LSRR: u8 = 0x83;
const IPV4_SSRR: u8 = 0x89;

/// Walks the IPv4 options: end of list and no-op are one byte, every other option carries its
/// length. A source route is refused; so are options that cannot be walked, since what they
/// hide is unknown.
fn check_ipv4_options(options: &[u8]) -> Result<(), PacketError> {
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            0 => return Ok(()),
            1 => at += 1,
            IPV4_LSRR | IPV4_SSRR => return Err(PacketError::SourceRoute { option: kind }),
            _ => {
                let len = usize::from(
                    *options
                        .get(at + 1)
                        .ok_or(PacketError::MalformedIpv4Options)?,
                );
                if len < 2 || at + len > options.len() {
                    return Err(PacketError::MalformedIpv4Options);
                }
                at += len;
            }
        }
    }
    Ok(())
}

fn truncated(layer: Layer, e: etherparse::err::LenError) -> PacketError {
    PacketError::Truncated {
        layer,
        required: e.required_len,
        available: e.len,
    }
}

fn auth_error(e: etherparse::err::ip_auth::HeaderSliceError) -> PacketError {
    use etherparse::err::ip_auth::{HeaderError, HeaderSliceError};
    match e {
        HeaderSliceError::Len(len) => truncated(Layer::IpAuth, len),
        HeaderSliceError::Content(HeaderError::ZeroPayloadLen) => PacketError::InvalidAuthHeader,
    }
}

/// Whether an ICMP message is all zeros apart from its checksum field.
fn is_zero_except_checksum(message: &[u8]) -> bool {
    message
        .iter()
        .enumerate()
        .all(|(i, byte)| *byte == 0 || i == 2 || i == 3)
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}

fn read_u8(bytes: &[u8], at: usize) -> u8 {
    bytes.get(at).copied().unwrap_or_default()
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(read_array(bytes, at))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(read_array(bytes, at))
}

fn write(bytes: &mut [u8], at: usize, data: &[u8]) {
    if let Some(dst) = bytes
        .get_mut(at..)
        .and_then(|rest| rest.get_mut(..data.len()))
    {
        dst.copy_from_slice(data);
    }
}

impl<B: AsRef<[u8]>> fmt::Debug for IpPacket<B> {
    /// One line, like `IpPacket { 10.0.0.1:5353 -> 10.0.0.2:53 UDP len=60 }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (src, dst) = (self.source(), self.destination());
        let len = self.as_bytes().len();
        f.write_str("IpPacket { ")?;
        match self.transport() {
            Transport::Udp {
                src_port, dst_port, ..
            } => {
                let (s, d) = (
                    SocketAddr::new(src, src_port),
                    SocketAddr::new(dst, dst_port),
                );
                write!(f, "{s} -> {d} UDP")?;
            }
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => {
                let (s, d) = (
                    SocketAddr::new(src, src_port),
                    SocketAddr::new(dst, dst_port),
                );
                write!(f, "{s} -> {d} TCP {flags:?}")?;
            }
            Transport::Icmpv4 {
                icmp_type,
                code,
                echo,
                ..
            }
            | Transport::Icmpv6 {
                icmp_type,
                code,
                echo,
                ..
            } => {
                let name = match self.layout.version {
                    IpVersion::V4 => "ICMPv4",
                    IpVersion::V6 => "ICMPv6",
                };
                write!(f, "{src} -> {dst} {name} ")?;
                match (echo, icmp_type) {
                    (Some(e), ICMPV4_ECHO_REQUEST | ICMPV6_ECHO_REQUEST) => {
                        write!(f, "echo-request id={} seq={}", e.identifier, e.sequence)?
                    }
                    (Some(e), _) => write!(f, "echo-reply id={} seq={}", e.identifier, e.sequence)?,
                    (None, _) => write!(f, "type={icmp_type} code={code}")?,
                }
            }
            Transport::Other(protocol) => write!(f, "{src} -> {dst} proto={}", protocol.0)?,
            Transport::Fragment => write!(
                f,
                "{src} -> {dst} proto={} fragment",
                self.layout.protocol.0
            )?,
        }
        write!(f, " len={len} }}")
    }
}

impl<B: AsRef<[u8]>, C: AsRef<[u8]>> PartialEq<IpPacket<C>> for IpPacket<B> {
    /// Packets are equal when their bytes are.
    fn eq(&self, other: &IpPacket<C>) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<B: AsRef<[u8]>> Eq for IpPacket<B> {}
