#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::properties::{
    assert_accessors_agree, assert_round_trip, rewrite_there_and_back, Rewrite,
};
use super::*;

const V4_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const V4_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn udp4(payload: &[u8]) -> Vec<u8> {
    IpPacket::udp(sock(V4_A, 5353), sock(V4_B, 53), payload)
        .unwrap()
        .into_inner()
}

fn udp6(payload: &[u8]) -> Vec<u8> {
    IpPacket::udp(sock(V6_A, 5353), sock(V6_B, 53), payload)
        .unwrap()
        .into_inner()
}

fn tcp(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    IpPacket::tcp(
        sock(src, 40000),
        sock(dst, 443),
        1,
        2,
        TcpFlags::ACK,
        b"hello",
    )
    .unwrap()
    .into_inner()
}

fn parse(bytes: &[u8]) -> Result<IpPacket<&[u8]>, PacketError> {
    IpPacket::parse(bytes)
}

/// Recomputes the IPv4 header checksum after a test edits the header by hand.
fn fix_ipv4_checksum(bytes: &mut [u8]) {
    let header_len = usize::from(bytes[0] & 0xf) * 4;
    bytes[10..12].copy_from_slice(&[0, 0]);
    let check = checksum::finish(checksum::sum(&bytes[..header_len]), Zero::Positive);
    bytes[10..12].copy_from_slice(&check.to_be_bytes());
}

fn set_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

// --- Rejections ---

#[test]
fn rejects_empty_and_unknown_versions() {
    assert_eq!(parse(&[]).unwrap_err(), PacketError::Empty);
    assert_eq!(
        parse(&[0x55; 40]).unwrap_err(),
        PacketError::UnknownVersion(5)
    );
}

#[test]
fn rejects_truncated_ipv4() {
    let bytes = udp4(b"abc");
    assert_eq!(
        parse(&bytes[..19]).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv4,
            required: 20,
            available: 19
        }
    );
    // Total length promises more than the buffer holds.
    assert_eq!(
        parse(&bytes[..bytes.len() - 1]).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv4,
            required: bytes.len(),
            available: bytes.len() - 1
        }
    );
}

#[test]
fn rejects_ipv4_header_length_below_five() {
    let mut bytes = udp4(b"abc");
    bytes[0] = 0x44;
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Ipv4HeaderLength { ihl: 4 }
    );
}

#[test]
fn rejects_ipv4_options_past_the_buffer() {
    let mut bytes = udp4(b"");
    bytes.truncate(24);
    bytes[0] = 0x47; // 28-byte header
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv4,
            required: 28,
            available: 24
        }
    );
}

#[test]
fn rejects_ipv4_total_length_below_header() {
    let mut bytes = udp4(b"abc");
    set_u16(&mut bytes, 2, 19);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Ipv4TotalLength {
            total_length: 19,
            header_length: 20
        }
    );
}

#[test]
fn rejects_trailing_bytes() {
    let mut bytes = udp4(b"abc");
    bytes.push(0);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::TrailingBytes {
            layer: Layer::Ipv4,
            declared: 31,
            available: 32
        }
    );
    let mut bytes = udp6(b"abc");
    bytes.push(0);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::TrailingBytes {
            layer: Layer::Ipv6,
            declared: 51,
            available: 52
        }
    );
}

#[test]
fn rejects_truncated_ipv6() {
    let bytes = udp6(b"abc");
    assert_eq!(
        parse(&bytes[..39]).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv6,
            required: 40,
            available: 39
        }
    );
    assert_eq!(
        parse(&bytes[..50]).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv6,
            required: 51,
            available: 50
        }
    );
}

#[test]
fn rejects_jumbogram_payload_length() {
    let mut bytes = udp6(b"abc");
    set_u16(&mut bytes, 4, 0);
    assert!(matches!(
        parse(&bytes).unwrap_err(),
        PacketError::TrailingBytes {
            layer: Layer::Ipv6,
            declared: 40,
            ..
        }
    ));
}

#[test]
fn rejects_udp_length_mismatch() {
    for bytes in [udp4(b"abcd"), udp6(b"abcd")] {
        let udp = bytes.len() - 12;
        for wrong in [11, 13, 0] {
            let mut bytes = bytes.clone();
            set_u16(&mut bytes, udp + 4, wrong);
            assert_eq!(
                parse(&bytes).unwrap_err(),
                PacketError::UdpLength {
                    udp_length: wrong,
                    ip_payload_length: 12
                }
            );
        }
    }
}

#[test]
fn rejects_truncated_udp_header() {
    let mut bytes = udp4(b"");
    bytes.truncate(27);
    set_u16(&mut bytes, 2, 27);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Udp,
            required: 8,
            available: 7
        }
    );
}

#[test]
fn rejects_tcp_data_offset_below_five() {
    for mut bytes in [tcp(V4_A.into(), V4_B.into()), tcp(V6_A.into(), V6_B.into())] {
        let t = bytes.len() - 25;
        bytes[t + 12] = 4 << 4;
        assert_eq!(
            parse(&bytes).unwrap_err(),
            PacketError::TcpDataOffset { data_offset: 4 }
        );
    }
}

#[test]
fn rejects_tcp_data_offset_past_payload() {
    let mut bytes = tcp(V4_A.into(), V4_B.into());
    bytes[20 + 12] = 7 << 4; // 28-byte header in a 25-byte segment
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Tcp,
            required: 28,
            available: 25
        }
    );
}

#[test]
fn rejects_short_icmp() {
    let mut v4 = IpPacket::icmp_echo_request(V4_A.into(), V4_B.into(), 1, 1, b"")
        .unwrap()
        .into_inner();
    v4.truncate(27);
    set_u16(&mut v4, 2, 27);
    assert_eq!(
        parse(&v4).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Icmpv4,
            required: 8,
            available: 7
        }
    );
    let mut v6 = IpPacket::icmp_echo_request(V6_A.into(), V6_B.into(), 1, 1, b"")
        .unwrap()
        .into_inner();
    v6.truncate(44);
    set_u16(&mut v6, 4, 4);
    assert_eq!(
        parse(&v6).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Icmpv6,
            required: 8,
            available: 4
        }
    );
}

// --- IPv6 extension headers ---

/// Puts an extension header of type `kind` between the IPv6 header and its payload.
///
/// The transport checksum stays valid: its pseudo-header counts only the upper-layer packet.
fn insert_extension(bytes: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    assert_eq!((body.len() + 2) % 8, 0);
    let mut out = bytes[..40].to_vec();
    out.push(bytes[6]);
    out.push(u8::try_from((body.len() + 2) / 8 - 1).unwrap());
    out.extend_from_slice(body);
    out.extend_from_slice(&bytes[40..]);
    out[6] = kind;
    let payload_len = u16::try_from(out.len() - 40).unwrap();
    set_u16(&mut out, 4, payload_len);
    out
}

#[test]
fn accepts_hop_by_hop_then_udp() {
    // Router alert option, then PadN filling the 8 bytes.
    let bytes = insert_extension(&udp6(b"abc"), 0, &[5, 2, 0, 0, 1, 0]);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.protocol(), IpNumber::UDP);
    assert_eq!(packet.source_port(), Ok(5353));
    assert_eq!(packet.destination_port(), Ok(53));
    assert_eq!(packet.payload(), b"abc");
    assert!(packet.checksums_valid());
}

#[test]
fn accepts_destination_options_and_finished_routing_header() {
    let udp = udp6(b"abc");
    let bytes = insert_extension(&udp, 60, &[1, 4, 0, 0, 0, 0]);
    let bytes = insert_extension(&bytes, 43, &[0, 0, 0, 0, 0, 0]);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.destination_port(), Ok(53));
    assert!(packet.checksums_valid());
}

#[test]
fn rejects_misplaced_hop_by_hop() {
    let bytes = insert_extension(&udp6(b"abc"), 0, &[1, 4, 0, 0, 0, 0]);
    let bytes = insert_extension(&bytes, 60, &[1, 4, 0, 0, 0, 0]);
    assert_eq!(parse(&bytes).unwrap_err(), PacketError::MisplacedHopByHop);
}

#[test]
fn rejects_routing_header_with_segments_left() {
    let bytes = insert_extension(&udp6(b"abc"), 43, &[0, 1, 0, 0, 0, 0]);
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::RoutingHeader { segments_left: 1 }
    );
}

#[test]
fn rejects_extension_header_past_the_packet() {
    let mut bytes = udp6(b"");
    bytes[6] = 60;
    bytes[41] = 1; // 16 bytes of options in an 8-byte payload
    assert_eq!(
        parse(&bytes).unwrap_err(),
        PacketError::Truncated {
            layer: Layer::Ipv6Extension,
            required: 16,
            available: 8
        }
    );
}

#[test]
fn rejects_auth_header_with_zero_length() {
    let bytes = insert_extension(&udp6(b"abc"), 51, &[0; 14]);
    let mut bytes = bytes;
    bytes[41] = 0;
    assert_eq!(parse(&bytes).unwrap_err(), PacketError::InvalidAuthHeader);
}

// --- Fragments and other protocols ---

#[test]
fn later_ipv4_fragment_has_no_transport() {
    let mut bytes = udp4(b"abcdefgh");
    set_u16(&mut bytes, 6, 1); // offset 8 bytes, no more fragments
    fix_ipv4_checksum(&mut bytes);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.transport(), Transport::Fragment);
    assert_eq!(packet.protocol(), IpNumber::UDP);
    assert_eq!(packet.source_port(), Err(PacketError::NoPorts));
    assert_eq!(packet.icmp_identifier(), Err(PacketError::NotIcmpEcho));
    assert_eq!(packet.payload(), &bytes[20..]);
    assert!(packet.checksums_valid());
}

#[test]
fn later_fragment_need_not_look_like_a_header() {
    let mut bytes = udp4(b"");
    bytes.truncate(23);
    set_u16(&mut bytes, 2, 23);
    set_u16(&mut bytes, 6, 0x2001); // more fragments, offset 8
    fix_ipv4_checksum(&mut bytes);
    assert_eq!(parse(&bytes).unwrap().transport(), Transport::Fragment);
}

#[test]
fn ipv6_fragment_header() {
    // Offset 1 (8 bytes), no more fragments.
    let bytes = insert_extension(&udp6(b"abc"), 44, &[0, 8, 0, 0, 0, 1]);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.transport(), Transport::Fragment);
    assert_eq!(packet.protocol(), IpNumber::UDP);
    assert_eq!(packet.payload(), &bytes[48..]);
    assert_eq!(packet.destination_port(), Err(PacketError::NoPorts));

    // An atomic fragment (offset 0, no more fragments) is a whole datagram.
    let bytes = insert_extension(&udp6(b"abc"), 44, &[0, 0, 0, 0, 0, 1]);
    assert_eq!(parse(&bytes).unwrap().destination_port(), Ok(53));
}

#[test]
fn first_fragment_rewrite_keeps_the_datagram_checksum() {
    for original in [udp4(b"abcdefgh"), tcp(V4_A.into(), V4_B.into())] {
        let mut bytes = original.clone();
        set_u16(&mut bytes, 6, 0x2000); // more fragments, offset 0
        fix_ipv4_checksum(&mut bytes);
        let mut packet = IpPacket::parse(bytes).unwrap();
        assert_eq!(packet.transport(), Transport::Fragment);
        packet
            .set_source(Ipv4Addr::new(192, 0, 2, 7).into())
            .unwrap();
        packet
            .set_destination(Ipv4Addr::new(198, 51, 100, 9).into())
            .unwrap();

        // Reassembled, that is the whole datagram again.
        let mut bytes = packet.into_inner();
        set_u16(&mut bytes, 6, 0);
        fix_ipv4_checksum(&mut bytes);
        assert!(parse(&bytes).unwrap().checksums_valid());
    }
}

#[test]
fn unknown_protocol_and_ipv4_options_are_accepted() {
    let mut bytes = vec![0x46, 0, 0, 28, 0, 0, 0, 0, 64, 47, 0, 0];
    bytes.extend_from_slice(&V4_A.octets());
    bytes.extend_from_slice(&V4_B.octets());
    bytes.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    bytes.extend_from_slice(&[9; 4]);
    fix_ipv4_checksum(&mut bytes);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.transport(), Transport::Other(IpNumber(47)));
    assert_eq!(packet.payload(), &[9; 4]);
    assert_eq!(packet.source_port(), Err(PacketError::NoPorts));
    assert!(packet.checksums_valid());
    assert_eq!(
        format!("{packet:?}"),
        "IpPacket { 10.0.0.1 -> 10.0.0.2 proto=47 len=28 }"
    );
}

// --- Accessors and builders ---

#[test]
fn udp_accessors() {
    let packet = IpPacket::udp(sock(V4_A, 5353), sock(V4_B, 53), &[7; 32]).unwrap();
    assert_eq!(packet.version(), IpVersion::V4);
    assert_eq!(packet.source(), IpAddr::from(V4_A));
    assert_eq!(packet.destination(), IpAddr::from(V4_B));
    assert_eq!(packet.protocol(), IpNumber::UDP);
    assert_eq!(packet.source_port(), Ok(5353));
    assert_eq!(packet.destination_port(), Ok(53));
    assert_eq!(packet.icmp_identifier(), Err(PacketError::NotIcmpEcho));
    assert_eq!(packet.payload(), &[7; 32]);
    assert!(packet.checksums_valid());
    assert_eq!(
        format!("{packet:?}"),
        "IpPacket { 10.0.0.1:5353 -> 10.0.0.2:53 UDP len=60 }"
    );
}

#[test]
fn tcp_accessors() {
    let flags = TcpFlags::SYN | TcpFlags::ACK;
    let packet = IpPacket::tcp(sock(V6_A, 40000), sock(V6_B, 443), 7, 9, flags, b"x").unwrap();
    assert_eq!(
        packet.transport(),
        Transport::Tcp {
            src_port: 40000,
            dst_port: 443,
            seq: 7,
            ack: 9,
            flags,
            payload: b"x"
        }
    );
    assert!(packet.checksums_valid());
    assert_eq!(
        format!("{packet:?}"),
        "IpPacket { [fd00::1]:40000 -> [fd00::2]:443 TCP [S.] len=61 }"
    );
}

#[test]
fn icmp_accessors() {
    let request = IpPacket::icmp_echo_request(V4_A.into(), V4_B.into(), 7, 1, b"ping").unwrap();
    assert_eq!(
        request.transport(),
        Transport::Icmpv4 {
            icmp_type: 8,
            code: 0,
            echo: Some(IcmpEcho {
                identifier: 7,
                sequence: 1
            }),
            payload: b"ping"
        }
    );
    assert_eq!(request.icmp_identifier(), Ok(7));
    assert_eq!(request.source_port(), Err(PacketError::NoPorts));
    assert!(request.checksums_valid());
    assert_eq!(
        format!("{request:?}"),
        "IpPacket { 10.0.0.1 -> 10.0.0.2 ICMPv4 echo-request id=7 seq=1 len=32 }"
    );

    let reply = IpPacket::icmp_echo_reply(V6_B.into(), V6_A.into(), 7, 1, b"ping").unwrap();
    assert_eq!(reply.protocol(), IpNumber::IPV6_ICMP);
    assert_eq!(reply.icmp_identifier(), Ok(7));
    assert!(reply.checksums_valid());
    assert_eq!(
        format!("{reply:?}"),
        "IpPacket { fd00::2 -> fd00::1 ICMPv6 echo-reply id=7 seq=1 len=52 }"
    );
}

#[test]
fn icmp_error_is_not_echo() {
    let mut bytes = IpPacket::icmp_echo_request(V4_A.into(), V4_B.into(), 7, 1, b"")
        .unwrap()
        .into_inner();
    bytes[20] = 3; // destination unreachable
    let mut packet = IpPacket::parse(bytes).unwrap();
    assert_eq!(packet.icmp_identifier(), Err(PacketError::NotIcmpEcho));
    assert_eq!(packet.set_icmp_identifier(1), Err(PacketError::NotIcmpEcho));
    assert_eq!(packet.set_source_port(1), Err(PacketError::NoPorts));
}

#[test]
fn builders_reject_mixed_families_and_oversized_payloads() {
    assert_eq!(
        IpPacket::udp(sock(V4_A, 1), sock(V6_B, 2), b"").unwrap_err(),
        PacketError::AddressFamilyMismatch {
            packet: IpVersion::V4,
            address: IpVersion::V6
        }
    );
    assert!(matches!(
        IpPacket::icmp_echo_reply(V6_A.into(), V4_B.into(), 1, 1, b""),
        Err(PacketError::AddressFamilyMismatch { .. })
    ));
    let big = vec![0; 65536];
    assert_eq!(
        IpPacket::udp(sock(V4_A, 1), sock(V4_B, 2), &big).unwrap_err(),
        PacketError::PayloadTooLarge {
            len: 65536,
            max: 65507
        }
    );
    assert_eq!(
        IpPacket::udp(sock(V6_A, 1), sock(V6_B, 2), &big).unwrap_err(),
        PacketError::PayloadTooLarge {
            len: 65536,
            max: 65527
        }
    );
    assert!(IpPacket::udp(sock(V4_A, 1), sock(V4_B, 2), &big[..65507]).is_ok());
    assert!(IpPacket::icmp_echo_request(V6_A.into(), V6_B.into(), 1, 1, &big[..65527]).is_ok());
}

#[test]
fn packets_compare_by_bytes() {
    let bytes = udp4(b"abc");
    let owned = IpPacket::parse(bytes.clone()).unwrap();
    assert_eq!(owned, parse(&bytes).unwrap());
}

// --- Rewrites ---

fn all_kinds(v4: bool) -> Vec<IpPacket> {
    let (a, b): (IpAddr, IpAddr) = if v4 {
        (V4_A.into(), V4_B.into())
    } else {
        (V6_A.into(), V6_B.into())
    };
    vec![
        IpPacket::udp(sock(a, 5353), sock(b, 53), b"query").unwrap(),
        IpPacket::tcp(sock(a, 40000), sock(b, 443), 1, 2, TcpFlags::PSH, b"data").unwrap(),
        IpPacket::icmp_echo_request(a, b, 7, 1, b"ping").unwrap(),
        IpPacket::icmp_echo_reply(b, a, 7, 1, b"pong!").unwrap(),
    ]
}

#[test]
fn rewrites_keep_checksums_valid() {
    for v4 in [true, false] {
        let (new_src, new_dst): (IpAddr, IpAddr) = if v4 {
            (
                Ipv4Addr::new(100, 64, 0, 1).into(),
                Ipv4Addr::new(172, 16, 3, 4).into(),
            )
        } else {
            (
                "2001:db8::1".parse().unwrap(),
                "2001:db8::ffff:2".parse().unwrap(),
            )
        };
        for mut packet in all_kinds(v4) {
            let original = packet.clone();
            packet.set_source(new_src).unwrap();
            packet.set_destination(new_dst).unwrap();
            match packet.transport() {
                Transport::Udp { .. } | Transport::Tcp { .. } => {
                    packet.set_source_port(1).unwrap();
                    packet.set_destination_port(65535).unwrap();
                    assert_eq!(packet.source_port(), Ok(1));
                    assert_eq!(packet.destination_port(), Ok(65535));
                }
                Transport::Icmpv4 { .. } | Transport::Icmpv6 { .. } => {
                    packet.set_icmp_identifier(0xbeef).unwrap();
                    assert_eq!(packet.icmp_identifier(), Ok(0xbeef));
                }
                Transport::Other(_) | Transport::Fragment => unreachable!(),
            }
            assert_eq!(packet.source(), new_src);
            assert_eq!(packet.destination(), new_dst);
            assert!(packet.checksums_valid(), "{packet:?}");
            assert_ne!(packet, original);
        }
    }
}

#[test]
fn rewrite_rejects_the_other_family() {
    let mut packet = IpPacket::parse(udp4(b"")).unwrap();
    assert_eq!(
        packet.set_source(V6_A.into()),
        Err(PacketError::AddressFamilyMismatch {
            packet: IpVersion::V4,
            address: IpVersion::V6
        })
    );
    let mut packet = IpPacket::parse(udp6(b"")).unwrap();
    assert!(packet.set_destination(V4_A.into()).is_err());
    assert_eq!(packet.destination(), IpAddr::from(V6_B));
}

#[test]
fn ipv4_udp_without_checksum_stays_without() {
    let mut bytes = udp4(b"abc");
    set_u16(&mut bytes, 26, 0);
    let mut packet = IpPacket::parse(bytes).unwrap();
    assert!(packet.checksums_valid());
    packet.set_source(Ipv4Addr::new(1, 2, 3, 4).into()).unwrap();
    packet.set_destination_port(9).unwrap();
    assert_eq!(&packet.as_bytes()[26..28], &[0, 0]);
    assert!(packet.checksums_valid());
}

#[test]
fn ipv6_udp_zero_checksum_is_invalid() {
    let mut bytes = udp6(b"abc");
    set_u16(&mut bytes, 46, 0);
    assert!(!parse(&bytes).unwrap().checksums_valid());
}

#[test]
fn udp_checksum_that_becomes_zero_is_written_as_ffff() {
    let mut packet = IpPacket::parse(udp4(b"abc")).unwrap();
    let check = u32::from(read_u16(packet.as_bytes(), 26));
    // The checksum moves by minus the change in the port: move it onto zero.
    let port = u16::try_from((5353 + check) % 0xffff).unwrap();
    packet.set_source_port(port).unwrap();
    assert_eq!(&packet.as_bytes()[26..28], &[0xff, 0xff]);
    assert!(packet.checksums_valid());
}

#[test]
fn all_zero_icmpv4_message_keeps_ffff() {
    let mut packet = IpPacket::icmp_echo_reply(V4_A.into(), V4_B.into(), 0, 0, b"").unwrap();
    assert_eq!(&packet.as_bytes()[22..24], &[0xff, 0xff]);
    assert!(packet.checksums_valid());
    let original = packet.clone();
    packet.set_icmp_identifier(5).unwrap();
    assert!(packet.checksums_valid());
    packet.set_icmp_identifier(0).unwrap();
    assert_eq!(packet, original);
}

#[test]
fn non_canonical_zero_is_written_canonically() {
    // A TCP checksum of 0xFFFF is never what a sender computes; RFC 1624 updates yield 0x0000.
    let mut bytes = tcp(V4_A.into(), V4_B.into());
    set_u16(&mut bytes, 36, 0xffff);
    let mut packet = IpPacket::parse(bytes.clone()).unwrap();
    packet.set_source_port(1).unwrap();
    packet.set_source_port(40000).unwrap();
    assert_eq!(read_u16(packet.as_bytes(), 36), 0);
    // Every other byte is back.
    set_u16(&mut bytes, 36, 0);
    assert_eq!(packet.as_bytes(), &bytes[..]);
}

#[test]
fn no_op_rewrite_leaves_bytes_alone() {
    let mut bytes = tcp(V4_A.into(), V4_B.into());
    set_u16(&mut bytes, 36, 0xffff);
    let mut packet = IpPacket::parse(bytes.clone()).unwrap();
    packet.set_source(V4_A.into()).unwrap();
    packet.set_source_port(40000).unwrap();
    assert_eq!(packet.as_bytes(), &bytes[..]);
}

#[test]
fn works_over_borrowed_mutable_buffers() {
    let mut bytes = udp4(b"abc");
    let mut packet = IpPacket::parse(&mut bytes[..]).unwrap();
    packet.set_destination_port(5353).unwrap();
    assert!(packet.checksums_valid());
    assert_eq!(read_u16(&bytes, 22), 5353);
}

// --- Properties ---

/// Calls every accessor and checks they agree with each other and with the bytes; then
/// rewrites every field there and back.
fn exercise(bytes: &[u8]) {
    let Ok(packet) = IpPacket::parse(bytes.to_vec()) else {
        return;
    };
    // A first fragment has a transport checksum that `checksums_valid` cannot check.
    let valid = packet.checksums_valid() && packet.transport() != Transport::Fragment;
    assert_accessors_agree(&packet, bytes);
    assert_eq!(IpVersion::of(packet.source()), packet.version());
    assert_eq!(IpVersion::of(packet.destination()), packet.version());

    let (src, dst) = match packet.version() {
        IpVersion::V4 => (
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::from(Ipv4Addr::new(255, 255, 255, 255)),
        ),
        IpVersion::V6 => (
            IpAddr::from(Ipv6Addr::UNSPECIFIED),
            "2001:db8::9".parse().unwrap(),
        ),
    };
    let to = Rewrite {
        src,
        dst,
        src_port: 0,
        dst_port: 0xffff,
        identifier: 0,
    };
    let rewritten = rewrite_there_and_back(packet.clone(), &to);
    assert_round_trip(&packet, &rewritten, valid);
}

#[test]
fn fuzz_regressions() {
    // IPv6 first fragment (behind destination options) whose TCP checksum is 0xFFFF.
    exercise(&[
        0x60, 0, 0, 0, 0, 0x25, 0x3c, 0x40, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa3, 1,
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 0x2c, 0, 1, 4, 0, 0xa3, 0, 0, 6, 0, 0,
        1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x50, 0x3d, 0x10, 0xc5, 0xff, 0xff,
        0, 0, 0x78,
    ]);
}

fn any_ip() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(a, b)| (
            IpAddr::from(Ipv4Addr::from(a)),
            IpAddr::from(Ipv4Addr::from(b))
        )),
        (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(a, b)| (
            IpAddr::from(Ipv6Addr::from(a)),
            IpAddr::from(Ipv6Addr::from(b))
        )),
    ]
}

/// Which builder, with its arguments.
#[derive(Debug, Clone)]
enum Built {
    Udp(u16, u16),
    Tcp(u16, u16, u32, u32, u8),
    EchoRequest(u16, u16),
    EchoReply(u16, u16),
}

fn any_built() -> impl Strategy<Value = (Built, (IpAddr, IpAddr), Vec<u8>)> {
    let built = prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| Built::Udp(s, d)),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>()
        )
            .prop_map(|(s, d, seq, ack, f)| Built::Tcp(s, d, seq, ack, f)),
        (any::<u16>(), any::<u16>()).prop_map(|(i, s)| Built::EchoRequest(i, s)),
        (any::<u16>(), any::<u16>()).prop_map(|(i, s)| Built::EchoReply(i, s)),
    ];
    (
        built,
        any_ip(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
}

fn build(built: &Built, (src, dst): (IpAddr, IpAddr), payload: &[u8]) -> IpPacket {
    match *built {
        Built::Udp(s, d) => IpPacket::udp(sock(src, s), sock(dst, d), payload),
        Built::Tcp(s, d, seq, ack, flags) => IpPacket::tcp(
            sock(src, s),
            sock(dst, d),
            seq,
            ack,
            TcpFlags::from_bits(flags),
            payload,
        ),
        Built::EchoRequest(id, seq) => IpPacket::icmp_echo_request(src, dst, id, seq, payload),
        Built::EchoReply(id, seq) => IpPacket::icmp_echo_reply(src, dst, id, seq, payload),
    }
    .unwrap()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_ip_looking_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 20..160),
        v6 in any::<bool>(),
        fix_length in any::<bool>(),
        protocol in prop_oneof![Just(1u8), Just(6), Just(17), Just(58), Just(0), Just(43), Just(44), Just(51), Just(60), any::<u8>()],
    ) {
        // Most random lengths are rejected early; consistent ones reach the transport parsers.
        if v6 && bytes.len() >= 40 {
            bytes[0] = 0x60 | (bytes[0] & 0xf);
            bytes[6] = protocol;
            if fix_length {
                let len = u16::try_from(bytes.len() - 40).unwrap();
                set_u16(&mut bytes, 4, len);
            }
        } else {
            bytes[0] = 0x40 | (bytes[0] & 0xf);
            bytes[9] = protocol;
            if fix_length {
                bytes[0] = 0x45;
                let len = u16::try_from(bytes.len()).unwrap();
                set_u16(&mut bytes, 2, len);
                bytes[6] &= 0x40; // not a fragment, maybe DF
            }
        }
        exercise(&bytes);
    }

    #[test]
    fn built_packets_parse_back((built, addrs, payload) in any_built()) {
        let packet = build(&built, addrs, &payload);
        let parsed = parse(packet.as_bytes()).unwrap();
        prop_assert!(parsed.checksums_valid());
        prop_assert_eq!(parsed.source(), addrs.0);
        prop_assert_eq!(parsed.destination(), addrs.1);
        prop_assert_eq!(parsed.payload(), &payload[..]);
        let echo = |identifier, sequence| Some(IcmpEcho { identifier, sequence });
        match (&built, parsed.transport()) {
            (Built::Udp(s, d), Transport::Udp { src_port, dst_port, .. }) => {
                prop_assert_eq!((*s, *d), (src_port, dst_port));
            }
            (Built::Tcp(s, d, seq, ack, f), t) => {
                prop_assert_eq!(t, Transport::Tcp {
                    src_port: *s,
                    dst_port: *d,
                    seq: *seq,
                    ack: *ack,
                    flags: TcpFlags::from_bits(*f),
                    payload: &payload,
                });
            }
            (Built::EchoRequest(id, seq), Transport::Icmpv4 { icmp_type: 8, code: 0, echo: e, .. })
            | (Built::EchoRequest(id, seq), Transport::Icmpv6 { icmp_type: 128, code: 0, echo: e, .. })
            | (Built::EchoReply(id, seq), Transport::Icmpv4 { icmp_type: 0, code: 0, echo: e, .. })
            | (Built::EchoReply(id, seq), Transport::Icmpv6 { icmp_type: 129, code: 0, echo: e, .. }) => {
                prop_assert_eq!(e, echo(*id, *seq));
            }
            (built, transport) => prop_assert!(false, "{built:?} parsed as {transport:?}"),
        }
        exercise(packet.as_bytes());
    }

    #[test]
    fn rewrites_keep_checksums_and_round_trip(
        (built, addrs, payload) in any_built(),
        new_v4 in any::<([u8; 4], [u8; 4])>(),
        new_v6 in any::<([u8; 16], [u8; 16])>(),
        src_port in any::<u16>(),
        dst_port in any::<u16>(),
        identifier in any::<u16>(),
    ) {
        let packet = build(&built, addrs, &payload);
        let (src, dst) = match packet.version() {
            IpVersion::V4 => (IpAddr::from(new_v4.0), IpAddr::from(new_v4.1)),
            IpVersion::V6 => (IpAddr::from(new_v6.0), IpAddr::from(new_v6.1)),
        };
        let to = Rewrite { src, dst, src_port, dst_port, identifier };
        let back = rewrite_there_and_back(packet.clone(), &to);
        prop_assert_eq!(back.as_bytes(), packet.as_bytes());
    }
}

/// An IPv4 UDP packet from 10.0.0.1:1000 to 10.0.0.2:2000 whose header carries `options`
/// (a multiple of 4 bytes). Checksums are left zero: parsing does not verify them.
fn ipv4_udp_with_options(options: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = header_len + 8 + 4;
    let mut bytes = vec![0u8; total];
    bytes[0] = 0x40 | u8::try_from(header_len / 4).unwrap();
    bytes[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    bytes[8] = 64;
    bytes[9] = 17;
    bytes[12..16].copy_from_slice(&[10, 0, 0, 1]);
    bytes[16..20].copy_from_slice(&[10, 0, 0, 2]);
    bytes[20..header_len].copy_from_slice(options);
    let udp = &mut bytes[header_len..];
    udp[0..2].copy_from_slice(&1000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&2000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&12u16.to_be_bytes());
    bytes
}

#[test]
fn ipv4_source_routes_are_rejected() {
    // Loose source route through 192.0.2.9, then end of options.
    let lsrr = [0x83, 7, 4, 192, 0, 2, 9, 0];
    assert_eq!(
        parse(&ipv4_udp_with_options(&lsrr)).unwrap_err(),
        PacketError::SourceRoute { option: 0x83 }
    );
    // Strict source route behind a no-op.
    let ssrr = [1, 0x89, 7, 4, 192, 0, 2, 9];
    assert_eq!(
        parse(&ipv4_udp_with_options(&ssrr)).unwrap_err(),
        PacketError::SourceRoute { option: 0x89 }
    );
}

#[test]
fn other_ipv4_options_are_accepted_and_malformed_ones_rejected() {
    // Router alert (RFC 2113), then end of options.
    let bytes = ipv4_udp_with_options(&[0x94, 4, 0, 0, 0, 0, 0, 0]);
    let packet = parse(&bytes).unwrap();
    assert_eq!(packet.source_port(), Ok(1000));
    // A source route after the end of the list is padding, not an option.
    assert!(parse(&ipv4_udp_with_options(&[0, 0x83, 7, 4])).is_ok());
    for malformed in [[0x94, 1, 0, 0], [0x94, 9, 0, 0], [1, 1, 1, 0x07]] {
        assert_eq!(
            parse(&ipv4_udp_with_options(&malformed)).unwrap_err(),
            PacketError::MalformedIpv4Options,
            "{malformed:02x?}"
        );
    }
}
