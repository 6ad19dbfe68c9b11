//! A `Node` with live connections, fed arbitrary UDP datagrams from arbitrary sources.
//!
//! Setup (deterministic, built once per process, see `WORLD`): a client behind a NAT and a
//! public gateway, both allocated on one relay, connected through the in-memory network
//! (`harness::memnet`) until the WireGuard session is up on both ends. Then the input
//! is a sequence of datagrams delivered straight to one node's `decapsulate`, all at the same
//! instant (no timer runs, so nothing may change on its own):
//!
//! ```text
//! [node: client or gateway] ([source] [kind] [len] [len bytes of payload])*
//! ```
//!
//! `source` picks who it claims to come from: an unknown IPv4 or IPv6 host, the peer's real
//! address (spoofed), the relay's TURN port (spoofed), another port of the relay, an unknown
//! host's TURN port, the node's own address. `kind` puts a plausible header in front of the
//! payload: raw bytes, a STUN message, an ICE binding request with our real username fragments
//! and a forged MESSAGE-INTEGRITY, ChannelData on a channel the relay really bound, each
//! WireGuard message type with a receiver index the node really uses, and a Data indication
//! carrying WireGuard data from the peer's relayed address.
//!
//! Properties, for every datagram (none can authenticate: no input knows a key or a password):
//! - nothing panics;
//! - no packet comes out of the tunnel;
//! - no connection is created, removed or changed (`Node::connection` snapshot: index, path,
//!   ICE state, session, idleness), the relayed address stays, and no event is emitted;
//! - a rejected datagram (`Err`) adds exactly one to exactly one drop counter of
//!   `Node::stats`, the one its error names; an accepted-but-ignored one (`Ok(None)`) adds
//!   nothing and only happens for TURN messages from the relay's own address (a relay's
//!   unsigned ChannelData or Data indication whose content was then dropped further in is
//!   counted there, as an `Err`), and for initiations answered with a cookie reply (counted
//!   under `cookie_replies` alone);
//! - the handshake guard tracks at most `MAX_HANDSHAKE_SOURCES` sources: initiations with a
//!   valid mac1 (anyone can sign one with the node's public key) come from any of 2^24
//!   addresses, and the setup persists across inputs, so the table fills up and stays full.
//!
//! Seeds: `python3 fuzz/gen_corpus.py`. Run: `cargo +nightly fuzz run node_datagram`.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{add_fingerprint, attribute, channel_data, stun, xor_address_v4, Bytes};
use harness::memnet::{ConnParams, HostId, MemNet, Peer};
use libfuzzer_sys::fuzz_target;
use node_core::ids::RelayId;
use node_core::{
    sign_mac1, ConnectionInfo, Error, Node, PeerId, PublicKey, Stats, MAX_HANDSHAKE_SOURCES,
};

const RELAY: SocketAddr = v4([203, 0, 113, 1], 3478);
const CLIENT_INSIDE: SocketAddr = v4([192, 168, 1, 2], 5000);
const CLIENT_NAT_IP: [u8; 4] = [198, 51, 100, 1];
const GATEWAY: SocketAddr = v4([203, 0, 113, 20], 6000);

const fn v4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), port)
}

/// The connected world, and what an attacker could have learned by watching the wire.
struct Setup {
    net: MemNet,
    client: HostId,
    gateway: HostId,
    relay: HostId,
    params: ConnParams,
}

fn setup() -> Setup {
    // The simulation's clock starts at an arbitrary point: nothing reads real time after this.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut net = MemNet::new(start);
    let nat = net.add_nat(IpAddr::V4(Ipv4Addr::from(CLIENT_NAT_IP)), 40000);
    let client = net.add_client("client", 1, CLIENT_INSIDE, Some(nat), 1);
    let gateway = net.add_gateway("gateway", 1, GATEWAY, None, 2);
    let relay = net.add_relay("relay", 1, RELAY, 3);
    net.use_relay(client, relay);
    net.use_relay(gateway, relay);
    net.run_for(Duration::from_secs(1));
    let params = net.connect(client, gateway);
    // Step until both ends have the session (about 0.1 s simulated) rather than a fixed time.
    for _ in 0..100 {
        let up = |a, b| {
            net.connection(a, b)
                .is_some_and(|i| i.established && i.path.is_some())
        };
        if up(client, gateway) && up(gateway, client) {
            break;
        }
        net.run_for(Duration::from_millis(20));
    }
    for (host, peer) in [(client, gateway), (gateway, client)] {
        let info = net.connection(host, peer);
        assert!(
            info.as_ref().is_some_and(|i| i.established),
            "setup: the connection must be up before fuzzing ({info:?})"
        );
        // Without an allocation the relayed-address and ChannelData properties would hold
        // vacuously.
        let relayed = match &net.host(host).peer {
            Peer::Client { node, .. } => node.relayed_address(RelayId(1)),
            Peer::Gateway { node, .. } => node.relayed_address(RelayId(1)),
            Peer::Relay { .. } => None,
        };
        assert!(
            relayed.is_some(),
            "setup: every node must hold an allocation"
        );
    }
    Setup {
        net,
        client,
        gateway,
        relay,
        params,
    }
}

/// Channel numbers the relay bound for the allocation whose client is at `public_ip`.
fn bound_channels(net: &MemNet, relay: HostId, public_ip: IpAddr) -> Vec<u16> {
    let Peer::Relay { server, .. } = &net.host(relay).peer else {
        return Vec::new();
    };
    server
        .allocations()
        .filter(|a| a.five_tuple.client.ip() == public_ip)
        .flat_map(|a| a.channels.into_iter().map(|(n, _)| n))
        .collect()
}

/// What the attacker knows about the node under test.
struct Target {
    /// Our ICE ufrag, then the peer's: a binding request to us carries "ours:theirs".
    ufrags: (String, String),
    /// 24-bit connection indices in use.
    indices: Vec<u32>,
    /// The peer's address on the nominated path.
    peer: SocketAddr,
    /// The node's own (bound) address.
    local: SocketAddr,
    /// Channels bound on the relay for this node.
    channels: Vec<u16>,
    /// The node's static public key: anyone can sign a valid mac1 with it.
    public_key: PublicKey,
}

thread_local! {
    /// The connected world, built on the first input. Building it costs about 6 ms (two
    /// WireGuard handshakes and ICE under the sanitizer), 50 times more than an input, so it is
    /// reused: sound because the properties say no input may change any observable state, and
    /// every datagram is checked against the snapshot taken right after the setup. A crash
    /// file replayed on its own runs in a fresh world; `NODE_DATAGRAM_FRESH=1` rebuilds the
    /// world for every input to rule out hidden state carried between inputs.
    static WORLD: RefCell<Option<Setup>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let fresh = std::env::var_os("NODE_DATAGRAM_FRESH").is_some();
    WORLD.with_borrow_mut(|world| {
        if fresh || world.is_none() {
            *world = Some(setup());
        }
        if let Some(s) = world {
            run(s, data);
        }
    });
});

fn run(s: &mut Setup, data: &[u8]) {
    let mut input = Bytes::new(data);
    let on_gateway = input.u8() & 1 == 1;
    let now = s.net.now();
    let (host, peer_host) = if on_gateway {
        (s.gateway, s.client)
    } else {
        (s.client, s.gateway)
    };
    let info = s
        .net
        .connection(host, peer_host)
        .expect("setup established the connection");
    let (ours, theirs) = if on_gateway {
        (&s.params.gateway_creds, &s.params.client_creds)
    } else {
        (&s.params.client_creds, &s.params.gateway_creds)
    };
    let public_ip = if on_gateway {
        GATEWAY.ip()
    } else {
        IpAddr::V4(Ipv4Addr::from(CLIENT_NAT_IP))
    };
    let target = Target {
        ufrags: (ours.ufrag.clone(), theirs.ufrag.clone()),
        indices: vec![info.index],
        peer: info.path.map_or(GATEWAY, |p| p.remote),
        local: s.net.host(host).addr,
        channels: bound_channels(&s.net, s.relay, public_ip),
        public_key: match &s.net.host(host).peer {
            Peer::Client { node, .. } => node.public_key(),
            Peer::Gateway { node, .. } => node.public_key(),
            Peer::Relay { .. } => unreachable!("the target host is a node"),
        },
    };
    match &mut s.net.host_mut(host).peer {
        Peer::Client { node, .. } => feed(node, &target, &mut input, now),
        Peer::Gateway { node, .. } => feed(node, &target, &mut input, now),
        Peer::Relay { .. } => unreachable!("the target host is a node"),
    }
}

fn feed<TId: PeerId>(node: &mut Node<TId>, target: &Target, input: &mut Bytes<'_>, now: Instant) {
    // Anything the setup left queued is not the fuzzer's doing.
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
    let before = Snapshot::of(node);
    while !input.is_empty() {
        let (from, from_relay) = source(input.u8(), target);
        let (datagram, spoofed) = build(input, target);
        let from = spoofed.unwrap_or(from);
        let stats = node.stats().clone();
        let result = node.decapsulate(target.local, from, &datagram, now);
        let after = node.stats().clone();
        match &result {
            Ok(Some(_)) => panic!("an unauthenticated datagram produced a tunnel packet"),
            Ok(None) if after.cookie_replies == stats.cookie_replies + 1 => {
                // A node under load answers an initiation with a valid mac1 by a cookie reply.
                let mut expected = stats.clone();
                expected.cookie_replies += 1;
                assert_eq!(after, expected, "a cookie reply moved other counters");
            }
            Ok(None) => {
                assert_eq!(
                    stats, after,
                    "an ignored datagram changed the drop counters"
                );
                assert!(
                    from_relay,
                    "a datagram from {from} was accepted without an error: {datagram:02x?}"
                );
            }
            Err(error) => check_counted(error, &stats, &after),
        }
        assert!(
            node.handshake_sources() <= MAX_HANDSHAKE_SOURCES,
            "the handshake guard tracks {} sources, more than {MAX_HANDSHAKE_SOURCES}",
            node.handshake_sources()
        );
        if let Some(event) = node.poll_event() {
            panic!("an unauthenticated datagram from {from} caused {event:?}");
        }
        while node.poll_transmit().is_some() {}
        assert_eq!(
            Snapshot::of(node),
            before,
            "a datagram from {from} changed connection state: {datagram:02x?}"
        );
    }
}

/// Everything a datagram that does not authenticate must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    connections: BTreeMap<String, Option<ConnectionInfo>>,
    relayed: Option<SocketAddr>,
}

impl Snapshot {
    fn of<TId: PeerId>(node: &Node<TId>) -> Self {
        Self {
            connections: node
                .connections()
                .map(|id| (format!("{id:?}"), node.connection(id)))
                .collect(),
            relayed: node.relayed_address(RelayId(1)),
        }
    }
}

/// The error's own counter went up by one, and nothing else moved.
fn check_counted(error: &Error, before: &Stats, after: &Stats) {
    assert_eq!(
        after.total_dropped(),
        before.total_dropped() + 1,
        "{error} was not counted exactly once: {before:?} -> {after:?}"
    );
    let mut expected = before.clone();
    let counter = match error {
        Error::UnknownConnection => &mut expected.unknown_connection,
        Error::UnknownDatagram => &mut expected.unknown_datagram,
        Error::MalformedStun => &mut expected.malformed_stun,
        Error::UnroutableStun => &mut expected.unroutable_stun,
        Error::AsymmetricStun => &mut expected.asymmetric_stun,
        Error::UnroutableWireGuard => &mut expected.unroutable_wireguard,
        Error::UnexpectedChannelData => &mut expected.unexpected_channel_data,
        Error::WireGuard(_) => &mut expected.wireguard_errors,
        Error::InvalidInnerPacket(_) => &mut expected.invalid_inner_packet,
        Error::Turn(_) => &mut expected.malformed_turn,
        Error::UnknownRelay => &mut expected.unknown_relay,
        other => panic!("an error without a counter: {other}"),
    };
    *counter += 1;
    assert_eq!(after, &expected, "{error} was counted under another reason");
}

/// Who the datagram claims to come from; true if that is the relay's TURN address.
fn source(selector: u8, target: &Target) -> (SocketAddr, bool) {
    let port = 1024 + u16::from(selector >> 3) * 997;
    let from = match selector & 7 {
        0 => v4([198, 18, 0, selector >> 3], port),
        1 => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                u16::from(selector),
            )),
            port,
        ),
        2 => target.peer,
        3 => RELAY,
        4 => SocketAddr::new(RELAY.ip(), 49152 + u16::from(selector >> 3)),
        // A relay we never used: its TURN port is counted as a forgotten relay.
        5 => v4([203, 0, 113, 99], 3478),
        6 => target.local,
        _ => SocketAddr::new(target.peer.ip(), target.peer.port().wrapping_add(1)),
    };
    (from, from == RELAY)
}

/// A datagram of the kind the next byte picks, with the payload from the input, and the source
/// it claims when the kind picks its own.
fn build(input: &mut Bytes<'_>, target: &Target) -> (Vec<u8>, Option<SocketAddr>) {
    let kind = input.u8();
    let len = usize::from(input.u8());
    if kind % 11 == 10 {
        // A handshake initiation with a valid mac1, from any of 2^24 addresses: past
        // HANDSHAKE_LOAD each source gets a budget in the guard, whose table is capped.
        let mut initiation = wireguard(1, None, input, 148);
        sign_mac1(&target.public_key, &mut initiation);
        let [_, a, b, c] = input.u32().to_be_bytes();
        return (initiation, Some(v4([10, a, b, c], 51820)));
    }
    let datagram = match kind % 11 {
        0 => input.take(len).to_vec(),
        // A STUN header (type from the input) in front of arbitrary attribute bytes.
        1 => {
            let msg_type = input.u16() & 0x3FFF;
            let tid = input.array();
            stun(msg_type, tid, input.take(len))
        }
        2 => binding_request(input, target, len),
        3 => {
            let channel = pick_channel(input, target);
            channel_data(channel, input.take(len))
        }
        4 => wireguard(1, None, input, 148),
        5 => {
            let idx = receiver_index(input, target);
            wireguard(2, Some((4, idx)), input, 92)
        }
        6 => {
            let idx = receiver_index(input, target);
            wireguard(3, Some((0, idx)), input, 64)
        }
        7 => wg_data(input, target, len),
        8 => {
            let channel = pick_channel(input, target);
            let inner = wg_data(input, target, len);
            channel_data(channel, &inner)
        }
        _ => {
            // A Data indication: the relay hands us a peer's datagram without integrity.
            let tid = input.array();
            let inner = wg_data(input, target, len);
            let mut attrs = Vec::new();
            let peer = match target.peer.ip() {
                IpAddr::V4(ip) => ip.octets(),
                IpAddr::V6(_) => [0; 4],
            };
            attribute(
                &mut attrs,
                0x0012,
                &xor_address_v4(peer, target.peer.port()),
            );
            attribute(&mut attrs, 0x0013, &inner);
            stun(0x0017, tid, &attrs)
        }
    };
    (datagram, None)
}

/// An ICE connectivity check addressed to us by our real username fragments, with a forged
/// MESSAGE-INTEGRITY and, when the input says so, a correct FINGERPRINT.
fn binding_request(input: &mut Bytes<'_>, target: &Target, len: usize) -> Vec<u8> {
    let flags = input.u8();
    let tid = input.array();
    let mut attrs = Vec::new();
    let username = format!("{}:{}", target.ufrags.0, target.ufrags.1);
    attribute(&mut attrs, 0x0006, username.as_bytes());
    // PRIORITY, then ICE-CONTROLLING or ICE-CONTROLLED with a tie-breaker.
    attribute(&mut attrs, 0x0024, &input.array::<4>());
    let role = if flags & 1 == 0 { 0x802A } else { 0x8029 };
    attribute(&mut attrs, role, &input.array::<8>());
    if flags & 2 != 0 {
        attribute(&mut attrs, 0x0025, &[]); // USE-CANDIDATE
    }
    attrs.extend_from_slice(input.take(len.min(64)));
    attribute(&mut attrs, 0x0008, &input.array::<20>());
    let mut message = stun(0x0001, tid, &attrs);
    if flags & 4 != 0 {
        add_fingerprint(&mut message);
    }
    message
}

fn pick_channel(input: &mut Bytes<'_>, target: &Target) -> u16 {
    let pick = input.u8();
    match target.channels.get(usize::from(pick)) {
        Some(c) if pick & 0x80 == 0 => *c,
        _ => 0x4000 | u16::from(pick),
    }
}

/// A receiver index: one of the node's own (top 24 bits) with a random low byte, or anything.
fn receiver_index(input: &mut Bytes<'_>, target: &Target) -> u32 {
    let pick = input.u8();
    match target.indices.get(usize::from(pick & 0x7F)) {
        Some(index) if pick & 0x80 == 0 => (index << 8) | u32::from(input.u8()),
        _ => input.u32(),
    }
}

/// A WireGuard message of `kind` (`len` bytes), with the receiver index at `index.0` after the
/// 4-byte type (`None`: no receiver index in this message type).
fn wireguard(kind: u8, index: Option<(usize, u32)>, input: &mut Bytes<'_>, len: usize) -> Vec<u8> {
    let mut out = vec![kind, 0, 0, 0];
    out.resize(len, 0);
    let body = input.take(len - 4);
    out[4..4 + body.len()].copy_from_slice(body);
    if let Some((at, idx)) = index {
        out[4 + at..8 + at].copy_from_slice(&idx.to_le_bytes());
    }
    out
}

/// A WireGuard transport message to one of our indices: counter, then at least the tag.
fn wg_data(input: &mut Bytes<'_>, target: &Target, len: usize) -> Vec<u8> {
    let idx = receiver_index(input, target);
    let mut out = vec![4, 0, 0, 0];
    out.extend_from_slice(&idx.to_le_bytes());
    out.extend_from_slice(&input.u64().to_le_bytes());
    out.extend_from_slice(input.take(len));
    out.resize(out.len().max(32), 0);
    out
}
