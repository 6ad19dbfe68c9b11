use super::IpVersion;

/// Why a buffer is not accepted as an IP packet, or why a packet cannot be changed as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The buffer is empty, so it does not even carry an IP version.
    #[error("empty buffer")]
    Empty,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is not supported")]
    UnknownVersion(u8),
    /// A header, or the data a length field promises, extends past what is available: the end of
    /// the buffer for the IP header itself, the end of the IP packet for everything inside it.
    #[error("{layer:?} needs {required} bytes but only {available} are available")]
    Truncated {
        /// The header that is cut short.
        layer: Layer,
        /// Bytes the header (or, for IP, the whole packet) needs, counted from its start.
        required: usize,
        /// Bytes actually available from its start.
        available: usize,
    },
    /// The buffer is longer than the IP packet its length field declares.
    ///
    /// Rejected rather than trimmed so that the buffer handed back by `into_inner` never carries
    /// bytes nobody looked at. Neither a TUN device nor boringtun produces such padding. An IPv6
    /// payload length of 0 with data behind the header (a jumbogram) ends up here too: no tunnel
    /// MTU allows one.
    #[error("{layer:?} declares {declared} bytes but the buffer holds {available}")]
    TrailingBytes {
        /// The IP version whose length field disagrees with the buffer.
        layer: Layer,
        /// Bytes the IP header declares for the whole packet.
        declared: usize,
        /// Bytes in the buffer.
        available: usize,
    },
    /// The IPv4 header length (IHL, in 32-bit words) is below the minimum of 5.
    #[error("IPv4 header length of {ihl} words is below the minimum of 5")]
    Ipv4HeaderLength {
        /// The IHL field.
        ihl: u8,
    },
    /// The IPv4 total length is smaller than the header it has to include.
    #[error("IPv4 total length {total_length} is smaller than the {header_length} byte header")]
    Ipv4TotalLength {
        /// The total length field.
        total_length: u16,
        /// The header length from the IHL field, in bytes.
        header_length: usize,
    },
    /// A hop-by-hop options header appears anywhere but directly after the IPv6 header.
    #[error("IPv6 hop-by-hop options header is not the first extension header")]
    MisplacedHopByHop,
    /// An IPv6 routing header still has segments to visit, so the destination address is not the
    /// final destination: policy decisions and transport checksums would be taken against the
    /// wrong address.
    #[error("IPv6 routing header with {segments_left} segments left")]
    RoutingHeader {
        /// The segments left field.
        segments_left: u8,
    },
    /// An IPv4 header carries a loose or strict source route option (LSRR, SSRR): like an IPv6
    /// routing header with segments left, the destination address is then not the final one.
    #[error("IPv4 source route option {option:#04x}")]
    SourceRoute {
        /// The option type (0x83 loose, 0x89 strict).
        option: u8,
    },
    /// The IPv4 options cannot be walked (an option's length is below 2 or runs past the
    /// header), so whether one of them reroutes the packet is unknown.
    #[error("malformed IPv4 options")]
    MalformedIpv4Options,
    /// An authentication header declares a zero payload length, which cannot describe a header.
    #[error("IP authentication header has a zero payload length")]
    InvalidAuthHeader,
    /// The UDP length field does not cover exactly the IP payload.
    #[error("UDP length {udp_length} does not match the IP payload length {ip_payload_length}")]
    UdpLength {
        /// The UDP length field.
        udp_length: u16,
        /// Bytes of IP payload carrying the UDP datagram.
        ip_payload_length: usize,
    },
    /// The TCP data offset (in 32-bit words) is below the minimum header size of 5.
    #[error("TCP data offset of {data_offset} words is below the minimum of 5")]
    TcpDataOffset {
        /// The data offset field.
        data_offset: u8,
    },
    /// An address of the other IP version was given for this packet.
    #[error("cannot use an {address:?} address in an {packet:?} packet")]
    AddressFamilyMismatch {
        /// Version of the packet.
        packet: IpVersion,
        /// Version of the offered address.
        address: IpVersion,
    },
    /// Ports were asked for but the packet is not UDP or TCP, or is a fragment, whose transport
    /// header (if it has one) cannot be checked against the length of the whole datagram.
    #[error("packet has no ports")]
    NoPorts,
    /// An ICMP identifier was asked for but the packet is not an ICMP echo request or reply, or
    /// is a fragment.
    #[error("packet is not an ICMP echo request or reply")]
    NotIcmpEcho,
    /// A packet to be built would not fit the IP or transport length fields.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The payload length asked for.
        len: usize,
        /// The largest payload that fits.
        max: usize,
    },
}

/// The header a [`PacketError::Truncated`] or [`PacketError::TrailingBytes`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layer {
    /// The IPv4 header, or the IPv4 packet as declared by its total length.
    Ipv4,
    /// The IPv6 header, or the IPv6 packet as declared by its payload length.
    Ipv6,
    /// An IPv6 extension header (hop-by-hop, routing, fragment or destination options).
    Ipv6Extension,
    /// An IP authentication header, in IPv4 or IPv6.
    IpAuth,
    /// The UDP header.
    Udp,
    /// The TCP header, including its options.
    Tcp,
    /// The ICMPv4 header.
    Icmpv4,
    /// The ICMPv6 header.
    Icmpv6,
}
