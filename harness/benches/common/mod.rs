//! What the benches share: the in-memory network's addresses and a packet to send.

#![allow(dead_code)] // each bench uses what it needs

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use harness::memnet::udp_packet;
use node_core::packet::IpPacket;

/// `10.0.0.d:port`, where the in-memory pairs live.
pub(crate) fn addr(d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)), port)
}

/// A UDP packet of `len` bytes from the client's tunnel address to a resource.
pub(crate) fn inner_packet(len: usize) -> IpPacket {
    let payload = vec![0x5A; len - 28];
    udp_packet(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 40000),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 96, 0, 1)), 7),
        &payload,
    )
}
