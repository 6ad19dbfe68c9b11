//! Parses arbitrary bytes as an IP packet. For accepted packets: the accessors must agree with
//! the bytes, and rewriting addresses, ports and ICMP identifier there and back must give the
//! same bytes, keeping valid checksums valid on the way.
//!
//! Seeds: `python3 fuzz/gen_corpus.py`. Run: `cargo +nightly fuzz run ip_packet`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use node_core::packet::properties::{assert_round_trip, rewrite_there_and_back, Rewrite};
use node_core::packet::{IpPacket, IpVersion, PacketError, Transport};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = IpPacket::parse(data.to_vec()) else {
        return;
    };
    check_accessors(&packet, data);
    let there = rewrite_from_input(data, packet.version());
    let back = rewrite_there_and_back(packet.clone(), &there);
    // A first fragment has a transport checksum that `checksums_valid` cannot check.
    let valid = packet.checksums_valid() && packet.transport() != Transport::Fragment;
    assert_round_trip(&packet, &back, valid);
});

fn check_accessors(packet: &IpPacket, data: &[u8]) {
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

/// What to rewrite to, taken from the input so that it varies with it.
fn rewrite_from_input(data: &[u8], version: IpVersion) -> Rewrite {
    // FNV-1a: cheap, and every input byte moves every value.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut next = || {
        for b in data {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let (a, b) = (next(), next());
    let (src, dst) = match version {
        IpVersion::V4 => (
            IpAddr::V4(Ipv4Addr::from((a >> 32) as u32)),
            IpAddr::V4(Ipv4Addr::from(a as u32)),
        ),
        IpVersion::V6 => (
            IpAddr::V6(Ipv6Addr::from(u128::from(a) << 64 | u128::from(b))),
            IpAddr::V6(Ipv6Addr::from(u128::from(b) << 64 | u128::from(a))),
        ),
    };
    Rewrite {
        src,
        dst,
        src_port: (b >> 48) as u16,
        dst_port: (b >> 32) as u16,
        identifier: (b >> 16) as u16,
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
