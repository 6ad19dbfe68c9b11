//! ICMP "destination unreachable, communication administratively prohibited" replies.
//!
//! ICMPv4 type 3 code 13 (RFC 1812 §5.2.7.1) and ICMPv6 type 1 code 1 (RFC 4443 §3.1), from the
//! dropped packet's destination back to its source, quoting as much of the dropped packet as
//! fits in 576 bytes (IPv4, RFC 1812 §4.3.2.3) or 1280 bytes (IPv6, RFC 4443 §2.4 (c)).
//! Checksums are computed by etherparse's builder.

use std::net::IpAddr;

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder};

use crate::packet::{IpPacket, Transport};

/// Hop limit of the replies.
const TTL: u8 = 64;
/// Largest ICMPv4 error (RFC 1812 §4.3.2.3): IPv4 header (20) + ICMP header (8) + quote.
const MAX_V4_QUOTE: usize = 576 - 20 - 8;
/// Largest ICMPv6 error (the IPv6 minimum MTU): IPv6 header (40) + ICMPv6 header (8) + quote.
const MAX_V6_QUOTE: usize = 1280 - 40 - 8;

/// ICMPv4 error types (RFC 1122 §3.2.2): never answered with another error.
const ICMPV4_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];
/// ICMPv6 types below this are errors (RFC 4443 §2.1).
const ICMPV6_FIRST_INFORMATIONAL: u8 = 128;

/// The "administratively prohibited" reply to `dropped`, or `None` where RFC 1122 §3.2.2 and
/// RFC 4443 §2.4 (e) forbid one: in answer to an ICMP error, to a fragment other than the
/// first, or to a source that is not a single host.
pub fn prohibited_reply<B: AsRef<[u8]>>(dropped: &IpPacket<B>) -> Option<IpPacket> {
    if !may_answer(dropped) {
        return None;
    }
    let (src, dst) = (dropped.destination(), dropped.source());
    let bytes = dropped.as_bytes();
    let mut out = Vec::new();
    let written = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let quote = bytes.get(..MAX_V4_QUOTE).unwrap_or(bytes);
            PacketBuilder::ipv4(s.octets(), d.octets(), TTL)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::FilterProhibited,
                ))
                .write(&mut out, quote)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let quote = bytes.get(..MAX_V6_QUOTE).unwrap_or(bytes);
            PacketBuilder::ipv6(s.octets(), d.octets(), TTL)
                .icmpv6(Icmpv6Type::DestinationUnreachable(
                    icmpv6::DestUnreachableCode::Prohibited,
                ))
                .write(&mut out, quote)
        }
        // A parsed packet's addresses are of one family.
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => return None,
    };
    written.ok()?;
    IpPacket::parse(out).ok()
}

fn may_answer<B: AsRef<[u8]>>(dropped: &IpPacket<B>) -> bool {
    let source = dropped.source();
    if source.is_unspecified() || source.is_multicast() || is_broadcast(source) {
        return false;
    }
    match dropped.transport() {
        Transport::Icmpv4 { icmp_type, .. } => !ICMPV4_ERRORS.contains(&icmp_type),
        Transport::Icmpv6 { icmp_type, .. } => icmp_type >= ICMPV6_FIRST_INFORMATIONAL,
        // Only the first fragment of an IPv4 datagram (offset 0, in bytes 6-7); IPv6 fragments
        // are not answered, finding their offset would mean walking the extension headers.
        Transport::Fragment => match source {
            IpAddr::V4(_) => dropped
                .as_bytes()
                .get(6..8)
                .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff == 0),
            IpAddr::V6(_) => false,
        },
        Transport::Udp { .. } | Transport::Tcp { .. } | Transport::Other(_) => true,
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}
