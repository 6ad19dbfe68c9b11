//! What must hold for every packet [`IpPacket::parse`] accepts, written once for the unit tests
//! and the `ip_packet` fuzz target (feature `testing`). Each function panics on a violation.

use std::net::IpAddr;

use super::{IpPacket, IpVersion, PacketError, Transport};

/// Addresses, ports and ICMP identifier to rewrite a packet to.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite {
    /// The new source address (of the packet's family).
    pub src: IpAddr,
    /// The new destination address.
    pub dst: IpAddr,
    /// The new source port, where the packet has ports.
    pub src_port: u16,
    /// The new destination port.
    pub dst_port: u16,
    /// The new ICMP echo identifier, where the packet is an echo.
    pub identifier: u16,
}

/// Rewrites `packet` to `to`, checks the result (the accessors read the new values, valid
/// checksums stay valid, the bytes still parse to the same shape), and rewrites it back.
pub fn rewrite_there_and_back(mut packet: IpPacket, to: &Rewrite) -> IpPacket {
    let valid = packet.checksums_valid();
    let original = packet.clone();
    let rewrite = "a parsed packet takes addresses of its own family";
    packet.set_source(to.src).expect(rewrite);
    packet.set_destination(to.dst).expect(rewrite);
    let ports = packet.set_source_port(to.src_port).is_ok();
    assert_eq!(packet.set_destination_port(to.dst_port).is_ok(), ports);
    let echo = packet.set_icmp_identifier(to.identifier).is_ok();

    assert_eq!(packet.source(), to.src);
    assert_eq!(packet.destination(), to.dst);
    if ports {
        assert_eq!(packet.source_port(), Ok(to.src_port));
        assert_eq!(packet.destination_port(), Ok(to.dst_port));
    }
    if echo {
        assert_eq!(packet.icmp_identifier(), Ok(to.identifier));
    }
    if valid {
        assert!(packet.checksums_valid(), "{original:?} became {packet:?}");
    }
    // Still a packet, with the same shape.
    let reparsed = IpPacket::parse(packet.as_bytes()).expect("a rewritten packet parses");
    assert_eq!(reparsed.transport(), packet.transport());

    packet.set_source(original.source()).expect(rewrite);
    packet
        .set_destination(original.destination())
        .expect(rewrite);
    if let (Ok(s), Ok(d)) = (original.source_port(), original.destination_port()) {
        packet.set_source_port(s).expect("the packet has ports");
        packet
            .set_destination_port(d)
            .expect("the packet has ports");
    }
    if let Ok(id) = original.icmp_identifier() {
        packet
            .set_icmp_identifier(id)
            .expect("the packet is an echo");
    }
    packet
}

/// Back is the same bytes, except that a checksum may have changed between the two encodings
/// of zero (0xFFFF, or 0x0000 for an all-zero ICMPv4 message, which no sender writes); never
/// when the checksums were valid.
pub fn assert_round_trip(original: &IpPacket, back: &IpPacket, valid: bool) {
    if valid {
        assert_eq!(back.as_bytes(), original.as_bytes());
        assert!(back.checksums_valid());
        return;
    }
    let (a, b) = (original.as_bytes(), back.as_bytes());
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            let word = |bytes: &[u8]| {
                let at = i & !1;
                u16::from_be_bytes([bytes[at], bytes.get(at + 1).copied().unwrap_or(0)])
            };
            let pair = [word(a), word(b)];
            assert!(
                pair == [0, 0xffff] || pair == [0xffff, 0],
                "byte {i} changed: {a:02x?} -> {b:02x?}"
            );
        }
    }
}

/// The accessors agree with the bytes `data` the packet was parsed from: version, addresses,
/// ports, lengths, ICMP fields, payload.
pub fn assert_accessors_agree(packet: &IpPacket, data: &[u8]) {
    let bytes = packet.as_bytes();
    assert_eq!(bytes, data);
    let _ = format!("{packet:?}");
    let (version, src, dst) = match data[0] >> 4 {
        4 => (IpVersion::V4, &data[12..16], &data[16..20]),
        6 => (IpVersion::V6, &data[8..24], &data[24..40]),
        v => panic!("accepted version {v}"),
    };
    assert_eq!(packet.version(), version);
    assert_eq!(octets(packet.source()), src);
    assert_eq!(octets(packet.destination()), dst);

    let payload = packet.payload();
    assert!(data.ends_with(payload));
    let end = data.len() - payload.len();
    match packet.transport() {
        Transport::Udp {
            src_port,
            dst_port,
            payload: p,
        } => {
            let header = &data[end - 8..end];
            assert_eq!(src_port, u16::from_be_bytes([header[0], header[1]]));
            assert_eq!(dst_port, u16::from_be_bytes([header[2], header[3]]));
            // The UDP length covers exactly what is left of the packet.
            assert_eq!(
                usize::from(u16::from_be_bytes([header[4], header[5]])),
                p.len() + 8
            );
            assert_eq!(packet.source_port(), Ok(src_port));
            assert_eq!(packet.destination_port(), Ok(dst_port));
            assert_eq!(p, payload);
        }
        Transport::Tcp {
            src_port,
            dst_port,
            payload: p,
            ..
        } => {
            assert_eq!(packet.source_port(), Ok(src_port));
            assert_eq!(packet.destination_port(), Ok(dst_port));
            assert_eq!(p, payload);
        }
        Transport::Icmpv4 {
            icmp_type,
            code,
            echo,
            payload: p,
        }
        | Transport::Icmpv6 {
            icmp_type,
            code,
            echo,
            payload: p,
        } => {
            let header = &data[end - 8..end];
            assert_eq!((icmp_type, code), (header[0], header[1]));
            if let Some(echo) = echo {
                assert_eq!(echo.identifier, u16::from_be_bytes([header[4], header[5]]));
                assert_eq!(echo.sequence, u16::from_be_bytes([header[6], header[7]]));
            }
            assert_eq!(packet.icmp_identifier().ok(), echo.map(|e| e.identifier));
            assert_eq!(packet.source_port(), Err(PacketError::NoPorts));
            assert_eq!(p, payload);
        }
        Transport::Other(protocol) => {
            assert_eq!(protocol, packet.protocol());
            assert_eq!(packet.source_port(), Err(PacketError::NoPorts));
            assert_eq!(packet.icmp_identifier(), Err(PacketError::NotIcmpEcho));
        }
        Transport::Fragment => {
            assert_eq!(packet.destination_port(), Err(PacketError::NoPorts));
            assert_eq!(packet.icmp_identifier(), Err(PacketError::NotIcmpEcho));
        }
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
