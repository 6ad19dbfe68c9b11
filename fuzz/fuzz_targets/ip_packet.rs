//! Parses arbitrary bytes as an IP packet. For accepted packets: the accessors must agree with
//! the bytes, and rewriting addresses, ports and ICMP identifier there and back must give the
//! same bytes, keeping valid checksums valid on the way.
//!
//! Seeds: `python3 fuzz/gen_corpus.py`. Run: `cargo +nightly fuzz run ip_packet`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use node_core::packet::properties::{
    assert_accessors_agree, assert_round_trip, rewrite_there_and_back, Rewrite,
};
use node_core::packet::{IpPacket, IpVersion, Transport};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = IpPacket::parse(data.to_vec()) else {
        return;
    };
    assert_accessors_agree(&packet, data);
    let there = rewrite_from_input(data, packet.version());
    let back = rewrite_there_and_back(packet.clone(), &there);
    // A first fragment has a transport checksum that `checksums_valid` cannot check.
    let valid = packet.checksums_valid() && packet.transport() != Transport::Fragment;
    assert_round_trip(&packet, &back, valid);
});

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

