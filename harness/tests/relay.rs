//! Relayed connectivity: the node's allocation client against the relay-sim server core, both
//! running in the in-memory network.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use harness::memnet::{HostId, MemNet, Peer};
use node_core::Event;

struct RelayedPair {
    net: MemNet,
    client: HostId,
    gateway: HostId,
    relays: Vec<HostId>,
}

/// Client and gateway behind their own NATs, with direct traffic between them blocked, so the
/// only way is through a relay.
fn relayed_pair(relays: usize) -> RelayedPair {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let nat_c = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000);
    let nat_g = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 50000);
    let client = net.add_client("client", 1, addr(192, 168, 1, 2, 5000), Some(nat_c), 1);
    let gateway = net.add_gateway("gateway", 1, addr(10, 0, 0, 2, 6000), Some(nat_g), 2);
    let relays: Vec<HostId> = (0..relays)
        .map(|i| {
            let n = u8::try_from(i).unwrap() + 1;
            net.add_relay(
                &format!("relay{n}"),
                u64::from(n),
                addr(203, 0, 113, n, 3478),
                10 + u64::from(n),
            )
        })
        .collect();
    let relay_set = relays.clone();
    net.set_filter(move |p| {
        let involves_relay = relay_set.contains(&p.from) || relay_set.contains(&p.to);
        !involves_relay
    });
    for &r in &relays {
        net.use_relay(client, r);
        net.use_relay(gateway, r);
    }
    net.run_for(Duration::from_secs(1));
    RelayedPair {
        net,
        client,
        gateway,
        relays,
    }
}

fn relayed_addresses(net: &MemNet, host: HostId) -> usize {
    match &net.host(host).peer {
        Peer::Client { node, .. } => node.relayed_addresses().count(),
        Peer::Gateway { node, .. } => node.relayed_addresses().count(),
        Peer::Relay { .. } => 0,
    }
}

#[test]
fn allocations_give_relayed_candidates() {
    let w = relayed_pair(2);
    assert_eq!(relayed_addresses(&w.net, w.client), 2);
    assert_eq!(relayed_addresses(&w.net, w.gateway), 2);
}

#[test]
fn connects_through_a_relay_when_direct_paths_are_blocked() {
    let mut w = relayed_pair(1);
    w.net.connect(w.client, w.gateway);
    w.net.run_for(Duration::from_secs(5));
    assert_eq!(
        established_at(&w.net, w.client).len(),
        1,
        "{:#?}",
        w.net.timeline()
    );
    let path = w.net.connection(w.client, w.gateway).unwrap().path.unwrap();
    let gw_path = w.net.connection(w.gateway, w.client).unwrap().path.unwrap();
    assert!(
        path.relay.is_some() || gw_path.relay.is_some(),
        "{path:?} / {gw_path:?}"
    );

    for i in 0..20u8 {
        w.net.send(w.client, w.gateway, &[i; 100]).unwrap();
        w.net.send(w.gateway, w.client, &[i; 200]).unwrap();
        w.net.run_for(Duration::from_millis(50));
    }
    w.net.run_for(Duration::from_millis(200));
    assert_eq!(payloads(&w.net, w.gateway, w.client).len(), 20);
    assert_eq!(payloads(&w.net, w.client, w.gateway).len(), 20);
    assert!(failures(&w.net, w.client).is_empty());
}

#[test]
fn relayed_connection_survives_refreshes_and_idle() {
    let mut w = relayed_pair(1);
    w.net.connect(w.client, w.gateway);
    w.net.run_for(Duration::from_secs(15 * 60));
    assert!(
        failures(&w.net, w.client).is_empty(),
        "{:?}",
        failures(&w.net, w.client)
    );
    w.net
        .send(w.client, w.gateway, b"after a quarter hour")
        .unwrap();
    w.net.run_for(Duration::from_millis(500));
    assert_eq!(
        payloads(&w.net, w.gateway, w.client),
        vec![b"after a quarter hour".to_vec()]
    );
}

#[test]
fn removing_the_relay_in_use_migrates_to_the_other() {
    let mut w = relayed_pair(2);
    w.net.connect(w.client, w.gateway);
    w.net.run_for(Duration::from_secs(5));
    let path = w.net.connection(w.client, w.gateway).unwrap().path.unwrap();
    let used = path.relay.or(w
        .net
        .connection(w.gateway, w.client)
        .unwrap()
        .path
        .unwrap()
        .relay);
    let used = used.expect("relayed");
    let (gone, other) = if used.0 == 1 {
        (w.relays[0], w.relays[1])
    } else {
        (w.relays[1], w.relays[0])
    };
    let _ = other;
    w.net.set_online(gone, false);
    w.net.drop_relay(w.client, gone);
    w.net.drop_relay(w.gateway, gone);
    w.net.run_for(Duration::from_secs(5));
    w.net
        .send(w.client, w.gateway, b"through the other relay")
        .unwrap();
    w.net.run_for(Duration::from_millis(500));
    assert_eq!(
        payloads(&w.net, w.gateway, w.client),
        vec![b"through the other relay".to_vec()],
        "{:#?}",
        w.net.timeline()
    );
    assert!(failures(&w.net, w.client).is_empty());
}

#[test]
fn late_relay_responses_after_removal_are_dropped_quietly() {
    let mut w = relayed_pair(1);
    w.net.drop_relay(w.client, w.relays[0]);
    // The relay still answers the deallocation; the node has no state for it any more.
    w.net.run_for(Duration::from_secs(1));
    let errors = &w.net.host(w.client).errors;
    assert!(
        errors.iter().all(|e| e.contains("no allocation")),
        "{errors:?}"
    );
    assert!(!errors.is_empty(), "the relay's answer arrived");
}

/// Connects the pair and returns the relay its path goes through: its host and its id.
fn connect_through_a_relay(w: &mut RelayedPair) -> (HostId, u64) {
    w.net.connect(w.client, w.gateway);
    w.net.run_for(Duration::from_secs(5));
    let client_path = w.net.connection(w.client, w.gateway).unwrap().path.unwrap();
    let gateway_path = w.net.connection(w.gateway, w.client).unwrap().path.unwrap();
    let used = client_path.relay.or(gateway_path.relay).expect("relayed");
    let host = if used.0 == 1 {
        w.relays[0]
    } else {
        w.relays[1]
    };
    (host, used.0)
}

#[test]
fn a_relay_that_dies_silently_is_noticed_and_left() {
    let mut w = relayed_pair(2);
    let (gone, _) = connect_through_a_relay(&mut w);
    // No word from the portal: the nodes must find out themselves.
    w.net.set_online(gone, false);
    let died = w.net.elapsed();
    let bound =
        node_core::turn::KEEPALIVE_INTERVAL + Duration::from_secs(16) + Duration::from_secs(5);
    w.net.run_for(bound);
    assert_eq!(
        relayed_addresses(&w.net, w.client),
        1,
        "the dead relay was given up"
    );
    assert_eq!(
        relayed_addresses(&w.net, w.gateway),
        1,
        "the dead relay was given up"
    );
    w.net
        .send(w.client, w.gateway, b"after the relay died")
        .unwrap();
    w.net.send(w.gateway, w.client, b"reply").unwrap();
    w.net.run_for(Duration::from_secs(1));
    assert_eq!(
        payloads(&w.net, w.gateway, w.client),
        vec![b"after the relay died".to_vec()],
        "relay died at {died:?}: {:#?}",
        w.net.timeline()
    );
    assert_eq!(
        payloads(&w.net, w.client, w.gateway),
        vec![b"reply".to_vec()]
    );
}

/// A relay whose process died while its machine stays up answers with ICMP port unreachable:
/// the nodes leave it at the first one, not after seconds of unanswered datagrams.
#[test]
fn a_relay_whose_process_died_is_left_at_its_first_icmp_error() {
    let mut w = relayed_pair(2);
    let (gone, used) = connect_through_a_relay(&mut w);
    let other = 3 - used;
    w.net.kill_process(gone);
    // The first datagram each way goes to the dead relay and is refused.
    w.net.send(w.client, w.gateway, b"into the gap").unwrap();
    w.net.send(w.gateway, w.client, b"into the gap").unwrap();
    w.net.run_for(Duration::from_millis(500));
    w.net
        .send(w.client, w.gateway, b"half a second later")
        .unwrap();
    w.net.send(w.gateway, w.client, b"reply").unwrap();
    w.net.run_for(Duration::from_millis(500));
    let received = |to, from| -> Vec<Vec<u8>> {
        payloads(&w.net, to, from)
            .into_iter()
            .filter(|p| p.as_slice() != b"into the gap")
            .collect()
    };
    assert_eq!(
        received(w.gateway, w.client),
        vec![b"half a second later".to_vec()],
        "{:#?}",
        w.net.timeline()
    );
    assert_eq!(received(w.client, w.gateway), vec![b"reply".to_vec()]);
    for host in [w.client, w.gateway] {
        let path = w
            .net
            .connection(host, host_peer(&w, host))
            .unwrap()
            .path
            .unwrap();
        assert_ne!(
            path.relay.map(|r| r.0),
            Some(used),
            "still on the dead relay"
        );
        assert!(path.relay.is_none_or(|r| r.0 == other));
    }
    // Each node dropped its own allocation there at once, and the gateway's relayed candidate
    // there went from the client's connection too (its checks to it were refused).
    let (client, gateway) = (
        unreachable(&w.net, w.client),
        unreachable(&w.net, w.gateway),
    );
    assert_eq!((client.0, gateway.0), (1, 1), "allocations dropped on ICMP");
    assert!(
        client.1 + gateway.1 >= 1,
        "no peer candidate dropped on ICMP"
    );
}

/// ICMP errors that ended one of the host's allocations, and a peer's relayed candidate.
fn unreachable(net: &MemNet, host: HostId) -> (u64, u64) {
    let stats = match &net.host(host).peer {
        Peer::Client { node, .. } => node.stats(),
        Peer::Gateway { node, .. } => node.stats(),
        Peer::Relay { .. } => return (0, 0),
    };
    (stats.unreachable_relays, stats.unreachable_peer_candidates)
}

fn host_peer(w: &RelayedPair, host: HostId) -> HostId {
    if host == w.client {
        w.gateway
    } else {
        w.client
    }
}

fn relay_allocations(net: &MemNet, relay: HostId) -> usize {
    match &net.host(relay).peer {
        Peer::Relay { server, .. } => server.allocation_count(),
        Peer::Client { .. } | Peer::Gateway { .. } => panic!("not a relay"),
    }
}

#[test]
fn a_stopping_node_gives_its_allocations_back() {
    let mut w = relayed_pair(2);
    for &r in &w.relays {
        assert_eq!(relay_allocations(&w.net, r), 2, "client's and gateway's");
    }
    // What the event loop does on a clean stop (a signal): without it, each allocation would
    // stay on its relay until it expires, counted against the node's quota there.
    let now = w.net.now();
    match &mut w.net.host_mut(w.client).peer {
        Peer::Client { node, .. } => node.release_relays(now),
        _ => unreachable!(),
    }
    w.net.run_for(Duration::from_millis(200));
    for &r in &w.relays {
        assert_eq!(relay_allocations(&w.net, r), 1, "the gateway's is left");
    }
}

/// Whether `from`'s path to `to` goes through a relay, either end's.
fn on_a_relay(net: &MemNet, from: HostId, to: HostId) -> bool {
    let conn = net.connection(from, to).unwrap();
    conn.path.unwrap().relay.is_some()
        || conn.remote_kind == Some(node_core::CandidateKind::Relayed)
}

#[test]
fn a_relayed_connection_goes_direct_once_direct_udp_works() {
    let mut w = relayed_pair(1);
    w.net.connect(w.client, w.gateway);
    // Data flows on the relay for a minute: every direct pair fails and is given up.
    for i in 0..60u8 {
        w.net.send(w.client, w.gateway, &[i; 10]).unwrap();
        w.net.run_for(Duration::from_secs(1));
    }
    assert!(on_a_relay(&w.net, w.client, w.gateway));
    // From now on direct UDP between the NATs works.
    w.net.set_filter(|_| false);
    let unblocked = w.net.elapsed();
    let mut direct_after = None;
    let packets = 150u8;
    for i in 0..packets {
        w.net.send(w.client, w.gateway, &[i; 100]).unwrap();
        w.net.send(w.gateway, w.client, &[i; 200]).unwrap();
        w.net.run_for(Duration::from_millis(100));
        let direct =
            !on_a_relay(&w.net, w.client, w.gateway) && !on_a_relay(&w.net, w.gateway, w.client);
        match (direct, direct_after) {
            (true, None) => direct_after = Some(w.net.elapsed() - unblocked),
            (false, Some(at)) => panic!("back on a relay after going direct at {at:?}"),
            (true, Some(_)) | (false, None) => {}
        }
    }
    let direct_after = direct_after.expect("the connection went direct");
    assert!(
        direct_after <= Duration::from_secs(10),
        "direct only {direct_after:?} after direct UDP worked: {:#?}",
        w.net.timeline()
    );
    w.net.run_for(Duration::from_millis(500));
    // Nothing lost on the way from one path to the other.
    assert_eq!(
        payloads(&w.net, w.gateway, w.client).len(),
        usize::from(packets) + 60
    );
    assert_eq!(
        payloads(&w.net, w.client, w.gateway).len(),
        usize::from(packets)
    );
    assert!(failures(&w.net, w.client).is_empty());
}

/// The client's host gets a new address while its only path is through a relay: every
/// 5-tuple it had is gone, its allocation included (the relay knows it by the old one). Told
/// of the change, it withdraws its old candidates, allocates anew and signals the new ones,
/// and traffic is back both ways within the bound for a client's new public address.
#[test]
fn a_relayed_connection_follows_the_clients_new_address() {
    const BOUND: Duration = Duration::from_secs(2);
    let mut w = relayed_pair(1);
    connect_through_a_relay(&mut w);
    let relayed_before = relayed_address(&w.net, w.client);
    w.net.change_address(w.client, addr(192, 168, 1, 3, 5000));
    let changed = w.net.elapsed();
    let mut back = [None, None];
    for i in 0..50u8 {
        w.net.send(w.client, w.gateway, &[i; 10]).unwrap();
        w.net.send(w.gateway, w.client, &[i; 20]).unwrap();
        w.net.run_for(Duration::from_millis(100));
        for (slot, (to, from)) in back
            .iter_mut()
            .zip([(w.gateway, w.client), (w.client, w.gateway)])
        {
            if slot.is_none() && payloads(&w.net, to, from).iter().any(|p| p[0] == i) {
                *slot = Some(w.net.elapsed() - changed);
            }
        }
    }
    for (way, at) in ["client to gateway", "gateway to client"].iter().zip(back) {
        let at = at.unwrap_or_else(|| panic!("{way}: nothing after the change"));
        assert!(
            at <= BOUND,
            "{way}: back {at:?} after the change: {:#?}",
            w.net.timeline()
        );
    }
    assert_ne!(
        relayed_address(&w.net, w.client),
        relayed_before,
        "the client kept its allocation from the old address"
    );
    // Signalled after the change: the old host candidate withdrawn, the new one added.
    let signalled = |invalidated: bool, addr: &str| {
        w.net.events().iter().any(|(at, host, event)| {
            let candidate = match event {
                Event::NewIceCandidate { candidate, .. } if !invalidated => candidate,
                Event::InvalidateIceCandidate { candidate, .. } if invalidated => candidate,
                _ => return false,
            };
            *host == w.client && *at >= changed && candidate.contains(addr)
        })
    };
    assert!(signalled(true, "192.168.1.2 5000 typ host"));
    assert!(signalled(false, "192.168.1.3 5000 typ host"));
}

/// The client's relayed address on its one relay.
fn relayed_address(net: &MemNet, host: HostId) -> Option<SocketAddr> {
    match &net.host(host).peer {
        Peer::Client { node, .. } => node.relayed_addresses().next(),
        Peer::Gateway { node, .. } => node.relayed_addresses().next(),
        Peer::Relay { .. } => None,
    }
}
