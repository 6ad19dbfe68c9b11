//! Encapsulate + decapsulate of one 1,280-byte packet: through two `Node`s, and through two raw
//! boringtun `Tunn`s side by side, so the node's overhead shows as a ratio of the two.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use harness::memnet::{udp_packet, MemNet, Peer};

const PACKET_LEN: usize = 1280;

fn addr(d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)), port)
}

fn inner_packet() -> node::packet::IpPacket {
    let payload = vec![0x5A; PACKET_LEN - 28];
    udp_packet(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 40000),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 96, 0, 1)), 7),
        &payload,
    )
}

fn bench_node(c: &mut Criterion) {
    #[allow(clippy::disallowed_methods)]
    let mut net = MemNet::new(Instant::now());
    let client = net.add_client("client", 1, addr(1, 5000), None, 1);
    let gateway = net.add_gateway("gateway", 1, addr(2, 6000), None, 2);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let now = net.now();
    let packet = inner_packet();
    assert_eq!(packet.as_bytes().len(), PACKET_LEN);

    let (client_id, gateway_id) = (node::ids::ClientId(1), node::ids::GatewayId(1));
    let mut group = c.benchmark_group("encapsulate+decapsulate 1280 B");
    group.throughput(Throughput::Bytes(PACKET_LEN as u64));
    group.bench_function("node", |b| {
        b.iter(|| {
            let Peer::Client { node: tx, .. } = &mut net.host_mut(client).peer else {
                unreachable!()
            };
            let transmit = tx.encapsulate(gateway_id, &packet, now).unwrap().unwrap();
            let Peer::Gateway { node: rx, .. } = &mut net.host_mut(gateway).peer else {
                unreachable!()
            };
            let (from, inner) = rx
                .decapsulate(addr(2, 6000), addr(1, 5000), &transmit.payload, now)
                .unwrap()
                .unwrap();
            assert_eq!(from, client_id);
            black_box(inner);
        })
    });

    let (mut a, mut b_tunn) = raw_pair();
    let mut out = vec![0u8; 65536];
    let mut back = vec![0u8; 65536];
    group.bench_function("raw boringtun", |b| {
        b.iter(|| {
            let len = match a.encapsulate(packet.as_bytes(), &mut out) {
                TunnResult::WriteToNetwork(o) => o.len(),
                _ => unreachable!(),
            };
            match b_tunn.decapsulate(None, &out[..len], &mut back) {
                TunnResult::WriteToTunnelV4(p, _) => {
                    black_box(p);
                }
                _ => unreachable!(),
            }
        })
    });
    group.finish();
}

/// Two tunnels with a completed handshake.
fn raw_pair() -> (Tunn, Tunn) {
    let ka = StaticSecret::from([1; 32]);
    let kb = StaticSecret::from([2; 32]);
    let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
    let mut a = Tunn::new(ka, pb, Some([9; 32]), None, 1, None);
    let mut b = Tunn::new(kb, pa, Some([9; 32]), None, 2, None);
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(o) => o.to_vec(),
        _ => unreachable!(),
    };
    let resp = match b.decapsulate(None, &init, &mut buf2) {
        TunnResult::WriteToNetwork(o) => o.to_vec(),
        _ => unreachable!(),
    };
    let keepalive = match a.decapsulate(None, &resp, &mut buf) {
        TunnResult::WriteToNetwork(o) => o.to_vec(),
        _ => unreachable!(),
    };
    let _ = b.decapsulate(None, &keepalive, &mut buf2);
    (a, b)
}

criterion_group!(benches, bench_node);
criterion_main!(benches);
