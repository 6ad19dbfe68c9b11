//! What must hold for every packet [`IpPacket::parse`] accepts, written once for the unit tests
//! and the `ip_packet` fuzz target (feature `testing`). Each function panics on a violation.

use std::net::IpAddr;

use super::IpPacket;

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
