//! Encapsulate + decapsulate of one 1,280-byte packet: through two `Node`s, and through two raw
//! boringtun `Tunn`s side by side, so the node's overhead shows as a ratio of the two.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use common::{addr, inner_packet};
use criterion::{criterion_group, Criterion, Throughput};
use harness::memnet::ConnectedPair;
use node_core::ids::{ClientId, GatewayId};
use node_core::packet::IpPacket;

const PACKET_LEN: usize = 1280;

/// Two connected nodes, ready to pass packets from client to gateway.
struct NodePair {
    pair: ConnectedPair,
    now: Instant,
}

impl NodePair {
    fn new() -> Self {
        let pair = ConnectedPair::new(Instant::now());
        let now = pair.net.now();
        Self { pair, now }
    }

    fn round_trip(&mut self, packet: &IpPacket) {
        let tx = self.pair.client_node();
        tx.encapsulate(GatewayId(1), packet, self.now).unwrap();
        let transmit = tx.poll_transmit().unwrap();
        let (from, inner) = self
            .pair
            .gateway_node()
            .decapsulate(addr(2, 6000), addr(1, 5000), &transmit.payload, self.now)
            .unwrap()
            .unwrap();
        assert_eq!(from, ClientId(1));
        black_box(inner);
    }
}

/// Two raw tunnels with reusable buffers.
struct RawPair {
    a: Tunn,
    b: Tunn,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl RawPair {
    fn new() -> Self {
        let (a, b) = raw_pair();
        Self {
            a,
            b,
            out: vec![0; 65536],
            back: vec![0; 65536],
        }
    }

    fn round_trip(&mut self, packet: &IpPacket) {
        let len = match self.a.encapsulate(packet.as_bytes(), &mut self.out) {
            TunnResult::WriteToNetwork(o) => o.len(),
            _ => unreachable!(),
        };
        match self.b.decapsulate(None, &self.out[..len], &mut self.back) {
            TunnResult::WriteToTunnelV4(p, _) => {
                black_box(p);
            }
            _ => unreachable!(),
        }
    }
}

fn bench_tunnels(c: &mut Criterion) {
    let packet = inner_packet(PACKET_LEN);
    assert_eq!(packet.as_bytes().len(), PACKET_LEN);
    let mut nodes = NodePair::new();
    let mut raw = RawPair::new();

    let mut group = c.benchmark_group("encapsulate+decapsulate 1280 B");
    group.throughput(Throughput::Bytes(PACKET_LEN as u64));
    group.bench_function("node", |b| b.iter(|| nodes.round_trip(&packet)));
    group.bench_function("raw boringtun", |b| b.iter(|| raw.round_trip(&packet)));
    group.finish();
}

/// The two side by side in alternating rounds, so load from elsewhere on the machine hits both
/// alike; the median of the per-round ratios is the figure to quote.
fn print_ratio() {
    const ROUNDS: usize = 41;
    const ITERATIONS: u32 = 20_000;
    let packet = inner_packet(PACKET_LEN);
    let mut nodes = NodePair::new();
    let mut raw = RawPair::new();
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut node_total, mut raw_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            nodes.round_trip(&packet);
        }
        let node_time = start.elapsed();
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            raw.round_trip(&packet);
        }
        let raw_time = start.elapsed();
        node_total += node_time;
        raw_total += raw_time;
        ratios.push(node_time.as_secs_f64() / raw_time.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let per_packet = |d: Duration| d / (ITERATIONS * ROUNDS as u32);
    println!(
        "node {:?} vs raw boringtun {:?} per packet; node/raw median ratio {:.3} (min {:.3}, max {:.3}) over {ROUNDS} alternating rounds",
        per_packet(node_total),
        per_packet(raw_total),
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1],
    );
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

criterion_group!(benches, bench_tunnels);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only when benchmarking: `cargo test --all-targets` runs this binary as a quick check.
    if std::env::args().any(|a| a == "--bench") {
        print_ratio();
    }
}
