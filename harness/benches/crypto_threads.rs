//! What spreading the AEAD over threads buys the packet path: a batch of packets of 1,420
//! bytes (64, what the event loop hands over under load, and 256) encapsulated by a client `Node` (deferred crypto), sealed by a `CryptoPool`, then
//! decapsulated, opened by a pool and finished by the gateway `Node` — the event loop's work
//! per batch, without the sockets. Pools of 1 thread (the loop's alone) up to the cores
//! available run in alternating rounds, and the median time per packet of each is printed with
//! its speed-up over one thread. On a machine whose cores are busy with other work (as in the
//! throughput benchmark, where both peers and iperf3 share them) the speed-up is not there to
//! take; this measures what the pipeline does with cores that are free.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

mod common;

use std::time::{Duration, Instant};

use common::{addr, inner_packet};
use harness::memnet::ConnectedPair;
use node::runtime::{Crypto, CryptoPool};
use node_core::crypto::Decryption;
use node_core::ids::GatewayId;
use node_core::packet::IpPacket;
use node_core::Transmit;

const PACKET_LEN: usize = 1420;
const BATCHES: [usize; 2] = [64, 256];
/// Packets per round, whatever the batch size.
const PACKETS_PER_ROUND: usize = 12_800;
const ROUNDS: usize = 15;

/// One batch through both nodes, the AEAD on `pool`.
fn batch(
    pair: &mut ConnectedPair,
    now: Instant,
    packet: &IpPacket,
    pool: &CryptoPool,
    size: usize,
    transmits: &mut Vec<Transmit>,
    decryptions: &mut Vec<Decryption>,
) {
    let client = pair.client_node();
    for _ in 0..size {
        client.encapsulate(GatewayId(1), packet, now).unwrap();
    }
    transmits.extend(std::iter::from_fn(|| client.poll_transmit()));
    assert_eq!(transmits.len(), size);
    pool.seal(transmits);
    let gateway = pair.gateway_node();
    for transmit in transmits.drain(..) {
        let none = gateway
            .decapsulate(addr(2, 6000), addr(1, 5000), &transmit.payload, now)
            .unwrap();
        assert!(none.is_none(), "opened later");
    }
    decryptions.extend(std::iter::from_fn(|| gateway.poll_decryption()));
    pool.open(decryptions);
    for decryption in decryptions.drain(..) {
        let (_, inner) = gateway.finish_decryption(decryption, now).unwrap().unwrap();
        assert_eq!(inner.as_bytes().len(), PACKET_LEN);
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let counts: Vec<usize> = (1..=cores).collect();
    let pools: Vec<CryptoPool> = counts
        .iter()
        .map(|&n| CryptoPool::new(n).unwrap())
        .collect();
    let mut pair = ConnectedPair::new(Instant::now());
    let now = pair.net.now();
    pair.client_node().set_deferred_crypto(true);
    pair.gateway_node().set_deferred_crypto(true);
    let packet = inner_packet(PACKET_LEN);
    let (mut transmits, mut decryptions) = (Vec::new(), Vec::new());
    println!(
        "crypto threads: batches of {PACKET_LEN} B packets, client encapsulate + seal, gateway decapsulate + open + finish; median of {ROUNDS} alternating rounds, {cores} cores"
    );
    for size in BATCHES {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); pools.len()];
        // Alternating rounds: load and frequency changes hit every pool alike.
        for round in 0..=ROUNDS {
            for (i, pool) in pools.iter().enumerate() {
                let start = Instant::now();
                for _ in 0..PACKETS_PER_ROUND / size {
                    batch(
                        &mut pair,
                        now,
                        &packet,
                        pool,
                        size,
                        &mut transmits,
                        &mut decryptions,
                    );
                }
                // The first round warms up.
                if round > 0 {
                    times[i].push(start.elapsed());
                }
            }
        }
        let per_packet = |t: &mut Vec<Duration>| {
            t.sort();
            t[t.len() / 2] / u32::try_from(PACKETS_PER_ROUND).unwrap()
        };
        let medians: Vec<Duration> = times.iter_mut().map(per_packet).collect();
        for (n, median) in counts.iter().zip(&medians) {
            println!(
                "  batch {size:>3}, {n} thread(s): {:>6.3} µs per packet, {:>5.2} Gbit/s of packets, speed-up {:.2}",
                median.as_secs_f64() * 1e6,
                (PACKET_LEN * 8) as f64 / median.as_secs_f64() / 1e9,
                medians[0].as_secs_f64() / median.as_secs_f64()
            );
        }
    }
}
