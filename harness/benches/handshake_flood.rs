//! What a flood of handshake initiations costs a running tunnel.
//!
//! Two connected `Node`s pass 1,280-byte packets from client to gateway (encapsulate +
//! decapsulate, one core); beside them, forged initiations arrive at the gateway at a given
//! rate. Three kinds of forgery, each measured on its own:
//!
//! - `garbage`: 148 bytes that look like an initiation, with a wrong mac1 (anyone can send);
//! - `mac1`: real initiations from a key the gateway does not know, with a valid mac1 (anyone
//!   who knows the gateway's public key can send: every client of the deployment), from one
//!   source address;
//! - `spoofed`: the same from a new source address each time;
//! - `x25519`: what each initiation cost before mac1 was checked first: the X25519 that
//!   decrypting the sender's static key takes, measured by itself.
//!
//! It prints the cost of one forged datagram, and the tunnel's throughput with a flood of
//! 100,000 initiations a second as a fraction of its throughput without: measured by
//! interleaving the flood's share of forgeries between data packets (the tunnel being
//! CPU-bound, each second of forgeries is a second not spent on data), and derived from the
//! per-datagram costs. Median of several rounds.
//!
//! `cargo bench -p harness --bench handshake_flood`

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm,
    clippy::cast_precision_loss
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use harness::memnet::{udp_packet, ConnectedPair};
use node_core::ids::{ClientId, GatewayId};
use node_core::packet::IpPacket;
use node_core::Node;

/// The flood rate the goal is stated at.
const FLOOD_PER_SECOND: f64 = 100_000.0;
const ROUNDS: usize = 5;
const PACKETS_PER_ROUND: usize = 20_000;

fn addr(d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)), port)
}

struct Pair {
    pair: ConnectedPair,
    packet: IpPacket,
}

impl Pair {
    fn new() -> Self {
        let packet = udp_packet(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 40000),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 96, 0, 1)), 7),
            &[0x5A; 1280 - 28],
        );
        Self {
            pair: ConnectedPair::new(Instant::now()),
            packet,
        }
    }

    fn client(&mut self) -> &mut Node<GatewayId> {
        self.pair.client_node()
    }

    fn gateway(&mut self) -> &mut Node<ClientId> {
        self.pair.gateway_node()
    }

    fn gateway_key(&mut self) -> PublicKey {
        self.gateway().public_key()
    }
}

/// Sends `packets` data packets, and `forged_per_packet` forged datagrams (on average) between
/// them; returns the time taken.
fn run(pair: &mut Pair, forgery: &Forgery, packets: usize, forged_per_packet: f64) -> Duration {
    let now = pair.pair.net.now();
    let packet = pair.packet.clone();
    let forged = &forgery.datagrams;
    let mut owed = 0.0;
    let mut next = 0;
    let start = Instant::now();
    for i in 0..packets {
        pair.client()
            .encapsulate(GatewayId(1), &packet, now)
            .unwrap();
        let transmit = pair.client().poll_transmit().unwrap();
        let gateway = pair.gateway();
        let inner = gateway
            .decapsulate(addr(2, 6000), addr(1, 5000), &transmit.payload, now)
            .unwrap();
        black_box(inner);
        owed += forged_per_packet;
        while owed >= 1.0 {
            owed -= 1.0;
            let datagram = &forged[next % forged.len()];
            let from_attacker = if forgery.spoofed {
                let spoofed = u32::try_from(next).unwrap().wrapping_mul(2_654_435_761);
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(spoofed)), 4444)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 4444)
            };
            next += 1;
            black_box(
                gateway
                    .decapsulate(addr(2, 6000), from_attacker, datagram, now)
                    .err(),
            );
            while let Some(t) = gateway.poll_transmit() {
                black_box(t);
            }
        }
        if i % 1024 == 0 {
            // The nodes' timers, as the event loop would run them.
            let client = pair.client();
            client.handle_timeout(now);
            while client.poll_transmit().is_some() {}
            let gateway = pair.gateway();
            gateway.handle_timeout(now);
            while gateway.poll_transmit().is_some() {}
        }
    }
    start.elapsed()
}

struct Forgery {
    name: &'static str,
    datagrams: Vec<Vec<u8>>,
    /// A new source address for every datagram.
    spoofed: bool,
}

fn garbage() -> Vec<Vec<u8>> {
    (0..256u32)
        .map(|i| {
            let mut d = vec![0u8; 148];
            d[0] = 1;
            d[4..8].copy_from_slice(&i.to_le_bytes());
            for (j, b) in d[8..].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
            }
            d
        })
        .collect()
}

fn valid_mac1(responder: PublicKey) -> Vec<Vec<u8>> {
    (0..256u32)
        .map(|i| {
            let mut tunn = Tunn::new(
                StaticSecret::from([(i % 251) as u8 + 3; 32]),
                responder,
                None,
                None,
                i,
                None,
            );
            let mut buf = [0u8; 256];
            match tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(b) => b.to_vec(),
                _ => unreachable!(),
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per data packet, and per forged datagram of `forged`.
fn costs(pair: &mut Pair, forged: &Forgery) -> (f64, f64) {
    let (mut data, mut per_forged) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let alone = run(pair, forged, PACKETS_PER_ROUND, 0.0).as_secs_f64();
        let with = run(pair, forged, PACKETS_PER_ROUND, 1.0).as_secs_f64();
        data.push(alone / PACKETS_PER_ROUND as f64);
        per_forged.push((with - alone) / PACKETS_PER_ROUND as f64);
    }
    (median(data), median(per_forged).max(0.0))
}

/// Throughput with the flood over throughput without, measured by interleaving.
fn measured_ratio(pair: &mut Pair, forged: &Forgery, per_data: f64) -> f64 {
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        // Forgeries per data packet so that they arrive at the flood rate while data flows at
        // the rate it reaches under the flood: found by iterating from the rate without.
        let mut rate = 1.0 / per_data;
        let mut taken = 0.0;
        for _ in 0..3 {
            let per_packet = FLOOD_PER_SECOND / rate;
            taken = run(pair, forged, PACKETS_PER_ROUND, per_packet).as_secs_f64();
            rate = PACKETS_PER_ROUND as f64 / taken;
        }
        let alone = run(pair, forged, PACKETS_PER_ROUND, 0.0).as_secs_f64();
        ratios.push(alone / taken);
    }
    median(ratios)
}

fn x25519_cost(responder: &StaticSecret, forged: &[Vec<u8>]) -> f64 {
    let public = PublicKey::from(responder);
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for datagram in forged.iter().cycle().take(2_000) {
            if let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) {
                black_box(parse_handshake_anon(responder, &public, &init).is_ok());
            }
        }
        rounds.push(start.elapsed().as_secs_f64() / 2_000.0);
    }
    median(rounds)
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: a smoke run is enough there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut pair = Pair::new();
    let key = pair.gateway_key();
    let kinds = [
        Forgery {
            name: "garbage",
            datagrams: garbage(),
            spoofed: false,
        },
        Forgery {
            name: "mac1",
            datagrams: valid_mac1(key),
            spoofed: false,
        },
        Forgery {
            name: "spoofed",
            datagrams: valid_mac1(key),
            spoofed: true,
        },
    ];
    println!("handshake flood at {FLOOD_PER_SECOND:.0} initiations/s against a Node pair (1,280 B packets, one core)");
    if quick {
        for forgery in &kinds {
            run(&mut pair, forgery, 100, 1.0);
        }
        println!("(smoke run; `cargo bench` measures)");
        return;
    }
    println!(
        "{:<8} {:>14} {:>14} {:>18} {:>18}",
        "forgery", "data ns/pkt", "forged ns/dgram", "ratio (measured)", "ratio (derived)"
    );
    for forged in &kinds {
        let name = forged.name;
        let (per_data, per_forged) = costs(&mut pair, forged);
        let measured = measured_ratio(&mut pair, forged, per_data);
        let derived = (1.0 - FLOOD_PER_SECOND * per_forged).max(0.0);
        println!(
            "{name:<8} {:>14.0} {:>14.0} {:>18.3} {:>18.3}",
            per_data * 1e9,
            per_forged * 1e9,
            measured,
            derived
        );
    }
    let secret = StaticSecret::from([2u8; 32]);
    let x = x25519_cost(&secret, &kinds[1].datagrams);
    println!(
        "x25519   {:>14} {:>14.0} {:>18} {:>18.3}   (each initiation before mac1 was checked first)",
        "-",
        x * 1e9,
        "-",
        (1.0 - FLOOD_PER_SECOND * x).max(0.0)
    );
}
