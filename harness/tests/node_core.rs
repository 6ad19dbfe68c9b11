//! The connection core driven through the in-memory network, with time advanced by the test.

// Test code: panics are the failure report, and the simulated clock needs one real starting point.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use harness::memnet::{HostId, MemNet, NatId, Peer};
use node_core::datagram::DatagramKind;
use node_core::{Event, FailReason, Upsert};
use tracing_subscriber::layer::SubscriberExt;

fn pair(net: &mut MemNet) -> (HostId, HostId) {
    let client = net.add_client("client", 1, addr(10, 0, 0, 1, 5000), None, 1);
    let gateway = net.add_gateway("gateway", 1, addr(10, 0, 0, 2, 6000), None, 2);
    (client, gateway)
}

#[test]
fn connect_and_exchange_packets_both_ways() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));

    assert_eq!(established_at(&net, client).len(), 1);
    assert_eq!(established_at(&net, gateway).len(), 1);
    let info = net.connection(client, gateway).unwrap();
    assert!(info.ice_connected && info.established);
    let path = info.path.unwrap();
    assert_eq!(path.remote, addr(10, 0, 0, 2, 6000), "host-host pair");

    net.send(client, gateway, b"ping").unwrap();
    net.run_for(Duration::from_millis(100));
    net.send(gateway, client, b"pong").unwrap();
    net.run_for(Duration::from_millis(100));

    assert_eq!(payloads(&net, gateway, client), vec![b"ping".to_vec()]);
    assert_eq!(payloads(&net, client, gateway), vec![b"pong".to_vec()]);
    assert!(
        net.host(client).errors.is_empty(),
        "{:?}",
        net.host(client).errors
    );
    assert!(
        net.host(gateway).errors.is_empty(),
        "{:?}",
        net.host(gateway).errors
    );
}

#[test]
fn packets_sent_before_the_connection_is_up_are_delivered_once_it_is() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.send(client, gateway, b"early").unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(payloads(&net, gateway, client), vec![b"early".to_vec()]);
}

#[test]
fn eight_clients_to_one_gateway() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let nat = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000);
    let gateway = net.add_gateway("gateway", 1, addr(203, 0, 113, 10, 6000), None, 100);
    let clients: Vec<HostId> = (1..=8u8)
        .map(|i| {
            // Half of them share one NAT, the others are reachable directly.
            let (a, behind) = if i % 2 == 0 {
                (addr(192, 168, 1, i, 5000), Some(nat))
            } else {
                (addr(203, 0, 113, i, 5000), None)
            };
            net.add_client(&format!("client{i}"), u64::from(i), a, behind, u64::from(i))
        })
        .collect();
    for &c in &clients {
        net.connect(c, gateway);
    }
    net.run_for(Duration::from_secs(3));
    assert_eq!(established_at(&net, gateway).len(), 8);

    for (i, &c) in clients.iter().enumerate() {
        net.send(c, gateway, format!("from client {i}").as_bytes())
            .unwrap();
        net.send(gateway, c, format!("to client {i}").as_bytes())
            .unwrap();
    }
    net.run_for(Duration::from_millis(200));

    for (i, &c) in clients.iter().enumerate() {
        assert_eq!(
            payloads(&net, gateway, c),
            vec![format!("from client {i}").into_bytes()]
        );
        assert_eq!(
            all_payloads(&net, c),
            vec![format!("to client {i}").into_bytes()]
        );
    }
}

/// The public address `nat` maps the inside socket `inside` to.
fn mapped(net: &MemNet, nat: NatId, inside: SocketAddr) -> SocketAddr {
    let mappings = net.nat(nat).mappings();
    let mapping = mappings.iter().find(|m| m.inside == inside);
    mapping.map(|m| m.public).unwrap()
}

/// The second client behind a NAT gets the first one's public IP:port while the gateway still
/// has a live connection to the first. Routing by receiver index and ICE username keeps every
/// packet with its own connection.
#[test]
fn nat_port_reuse_does_not_misroute() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let nat = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000);
    let gateway = net.add_gateway("gateway", 1, addr(203, 0, 113, 10, 6000), None, 100);
    let a = net.add_client("client-a", 1, addr(192, 168, 1, 2, 5000), Some(nat), 1);
    let b = net.add_client("client-b", 2, addr(192, 168, 1, 3, 5000), Some(nat), 2);
    net.set_online(b, false);

    net.connect(a, gateway);
    net.run_for(Duration::from_secs(2));
    net.send(a, gateway, b"a1").unwrap();
    net.run_for(Duration::from_millis(100));
    let public_a = mapped(&net, nat, addr(192, 168, 1, 2, 5000));

    // A disappears and the NAT forgets it (a reboot); B comes up on the same public port.
    net.set_online(a, false);
    net.nat_mut(nat).flush();
    net.set_online(b, true);
    net.connect(b, gateway);
    net.run_for(Duration::from_secs(2));
    let public_b = mapped(&net, nat, addr(192, 168, 1, 3, 5000));
    assert_eq!(public_a, public_b, "the NAT reused the port");
    assert!(
        net.connection(gateway, a).is_some(),
        "the gateway still has A"
    );
    assert_eq!(established_at(&net, b).len(), 1);

    net.send(b, gateway, b"b1").unwrap();
    net.send(gateway, b, b"to b").unwrap();
    // Goes to the shared public address, where B now sits: as data, or, once the gateway's
    // checks on A's path went unanswered and the packet waits for an answer, as those checks.
    net.send(gateway, a, b"to a").unwrap();
    net.run_for(Duration::from_secs(5));

    assert_eq!(payloads(&net, gateway, a), vec![b"a1".to_vec()]);
    assert_eq!(payloads(&net, gateway, b), vec![b"b1".to_vec()]);
    assert_eq!(all_payloads(&net, b), vec![b"to b".to_vec()]);
    assert!(
        net.host(b)
            .errors
            .iter()
            .any(|e| e.contains("WireGuard") || e.contains("STUN message for no connection")),
        "B saw A's traffic and dropped it: {:?}",
        net.host(b).errors
    );
}

#[test]
fn psk_change_on_upsert_replaces_the_tunnel() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    let first = net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let old_index = net.connection(gateway, client).unwrap().index;

    let mut second = first.clone();
    second.psk = node_core::Psk([0xAB; 32]);
    let outcome = net.upsert(client, gateway, &second);
    assert_eq!(outcome, (Upsert::Replaced, Upsert::Replaced));
    let info = net.connection(gateway, client).unwrap();
    assert_ne!(info.index, old_index, "a new connection with a new index");
    assert!(!info.established, "no session carried over");

    net.run_for(Duration::from_secs(2));
    assert_eq!(established_at(&net, gateway).len(), 2);
    net.send(client, gateway, b"after").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(payloads(&net, gateway, client), vec![b"after".to_vec()]);
}

/// Fails `host`'s only connection within the handshake deadline (measured from the start,
/// ICE connects within the first few hundred milliseconds).
fn assert_handshake_timeout(net: &MemNet, host: HostId) {
    let failed = failures(net, host);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].1, FailReason::HandshakeTimeout);
    let at = failed[0].0;
    assert!(
        at >= node_core::HANDSHAKE_DEADLINE
            && at <= node_core::HANDSHAKE_DEADLINE + Duration::from_secs(1),
        "failed at {at:?}"
    );
    assert!(established_at(net, host).is_empty());
}

#[test]
fn psk_mismatch_fails_within_the_handshake_deadline() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    let params = net.new_params(client, gateway);
    let mut other = params.clone();
    other.psk = node_core::Psk([0xCD; 32]);
    net.upsert_one(client, gateway, &params, None);
    net.upsert_one(gateway, client, &other, None);
    net.run_for(Duration::from_secs(30));
    assert_handshake_timeout(&net, client);
    assert!(
        net.connection(client, gateway).is_none(),
        "failed connections are removed"
    );
    assert!(all_payloads(&net, gateway).is_empty());
}

#[test]
fn handshake_deadline_fires_at_15s_with_a_wrong_key() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    let params = net.new_params(client, gateway);
    let stranger = node_core::PublicKey::from(&node_core::StaticSecret::from([7; 32]));
    net.upsert_one(client, gateway, &params, None);
    net.upsert_one(gateway, client, &params, Some(stranger));
    net.run_for(Duration::from_secs(30));
    assert_handshake_timeout(&net, client);
    assert!(
        net.connection(client, gateway).is_none(),
        "failed connections are removed"
    );
}

#[test]
fn upsert_rollover_is_debounced() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    let params = net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let inits = record_sends(&mut net, client, DatagramKind::WgHandshakeInit);

    assert_eq!(
        net.upsert(client, gateway, &params),
        (Upsert::Kept, Upsert::Kept)
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(inits.borrow().len(), 1, "the first upsert rolls over");

    // Within the debounce window: kept, but no new handshake.
    net.run_for(Duration::from_secs(5));
    net.upsert(client, gateway, &params);
    net.run_for(Duration::from_secs(1));
    assert_eq!(inits.borrow().len(), 1, "debounced");

    net.run_for(node_core::ROLLOVER_DEBOUNCE);
    net.upsert(client, gateway, &params);
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        inits.borrow().len(),
        2,
        "after the window it rolls over again"
    );

    net.send(client, gateway, b"still there").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        payloads(&net, gateway, client),
        vec![b"still there".to_vec()]
    );
}

#[test]
fn idle_connection_sends_sparse_keepalives_and_wakes_up() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let last_activity = net.elapsed();
    net.send(client, gateway, b"hello").unwrap();
    net.run_for(Duration::from_millis(100));

    let stun = record_sends(&mut net, client, DatagramKind::Stun);
    net.run_for(Duration::from_secs(120));

    let idle: Vec<Duration> = events_of(&net, client)
        .into_iter()
        .filter_map(|(t, e)| matches!(e, Event::ConnectionIdle(_)).then_some(t))
        .collect();
    assert_eq!(idle.len(), 1, "{idle:?}");
    let idle_at = idle[0];
    assert!(idle_at >= last_activity + node_core::IDLE_AFTER);
    assert!(idle_at <= last_activity + node_core::IDLE_AFTER + Duration::from_secs(1));
    assert!(net.connection(client, gateway).unwrap().idle);

    let sent = stun.borrow().clone();
    let while_idle: Vec<Duration> = sent
        .iter()
        .copied()
        .filter(|t| *t > idle_at + Duration::from_secs(1))
        .collect();
    assert!(
        while_idle.len() >= 3,
        "keep-alives continue while idle: {sent:?}"
    );
    for w in while_idle.windows(2) {
        assert!(
            w[1] - w[0] >= node_core::IDLE_STUN_INTERVAL,
            "sparse: {while_idle:?}"
        );
    }
    assert!(
        established_at(&net, client).len() == 1 && failures(&net, client).is_empty(),
        "an idle connection stays up"
    );

    // Traffic wakes it up: keep-alives are frequent again.
    stun.borrow_mut().clear();
    let woke = net.elapsed();
    net.send(client, gateway, b"wake").unwrap();
    net.run_for(Duration::from_millis(100));
    assert!(!net.connection(client, gateway).unwrap().idle);
    net.run_for(Duration::from_secs(15));
    let after: Vec<Duration> = stun
        .borrow()
        .iter()
        .copied()
        .filter(|t| *t > woke)
        .collect();
    assert!(after.len() >= 3, "active again: {after:?}");
    assert_eq!(
        payloads(&net, gateway, client),
        vec![b"hello".to_vec(), b"wake".to_vec()]
    );
}

/// boringtun drops an idle session's keys after 180 s and the whole tunnel, with an error, at
/// 540 s unless a handshake happened: the client renews idle sessions, so hours of silence
/// leave the connection up and usable at once.
#[test]
fn an_idle_connection_outlives_wireguard_key_lifetimes() {
    let errors = ErrorCounter::default();
    let subscriber = tracing_subscriber::registry().with(errors.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.send(client, gateway, b"before").unwrap();
    net.run_for(Duration::from_secs(2));

    net.run_for(Duration::from_secs(3 * 3600));
    for host in [client, gateway] {
        assert!(
            failures(&net, host).is_empty(),
            "{:?}",
            failures(&net, host)
        );
    }
    assert_eq!(established_at(&net, client).len(), 1);

    net.send(client, gateway, b"after").unwrap();
    net.send(gateway, client, b"back").unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(
        payloads(&net, gateway, client),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    assert_eq!(payloads(&net, client, gateway), vec![b"back".to_vec()]);
    assert_eq!(errors.0.load(Ordering::Relaxed), 0, "an ERROR was logged");
}

/// Counts ERROR events (on this thread, where the test installs it).
#[derive(Clone, Default)]
struct ErrorCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_malformed_candidate_does_not_spoil_the_list() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.set_auto_signal(false);
    net.connect(client, gateway);
    let signals = net.take_signals();
    assert_eq!(signals.len(), 2, "{signals:?}");
    for s in &signals {
        let list = ["candidate:garbage", s.candidate.as_str(), "not even close"];
        net.deliver_candidates(s.to, s.from, &list);
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(established_at(&net, client).len(), 1);
    assert_eq!(established_at(&net, gateway).len(), 1);
}

#[test]
fn same_seed_same_timeline() {
    fn run() -> Vec<String> {
        let mut net = MemNet::new(Instant::now());
        let (client, gateway) = pair(&mut net);
        net.connect(client, gateway);
        net.run_for(Duration::from_secs(30));
        net.send(client, gateway, b"x").unwrap();
        net.run_for(Duration::from_secs(30));
        net.timeline()
            .iter()
            .map(|e| format!("{:?} {} {}", e.at, e.host, e.what))
            .collect()
    }
    assert_eq!(run(), run());
}

/// Client and gateway close to each other, the portal far away: ICE nominates a peer-reflexive
/// pair before the client's candidates reach the gateway. They must still be taken, and the
/// connection must not suffer for it.
#[test]
fn candidates_arriving_after_a_peer_reflexive_nomination_are_used() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let nat = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000);
    let client = net.add_client("client", 1, addr(192, 168, 1, 2, 5000), Some(nat), 1);
    let gateway = net.add_gateway("gateway", 1, addr(203, 0, 113, 10, 6000), None, 2);
    net.set_auto_signal(false);
    net.connect(client, gateway);
    let signals = net.take_signals();
    let (to_client, to_gateway): (Vec<_>, Vec<_>) = signals.iter().partition(|s| s.to == client);
    for s in &to_client {
        net.deliver_candidates(s.to, s.from, &[s.candidate.as_str()]);
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        established_at(&net, gateway).len(),
        1,
        "nominated peer-reflexive"
    );

    for s in &to_gateway {
        net.deliver_candidates(s.to, s.from, &[s.candidate.as_str()]);
    }
    net.run_for(Duration::from_secs(60));
    net.send(client, gateway, b"late").unwrap();
    net.send(gateway, client, b"still here").unwrap();
    net.run_for(Duration::from_millis(200));
    assert!(failures(&net, client).is_empty() && failures(&net, gateway).is_empty());
    assert_eq!(payloads(&net, gateway, client), vec![b"late".to_vec()]);
    assert_eq!(
        payloads(&net, client, gateway),
        vec![b"still here".to_vec()]
    );
}

#[test]
fn garbage_is_dropped_and_counted_without_touching_connections() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let now = net.now();
    let harness::memnet::Peer::Gateway { node, .. } = &mut net.host_mut(gateway).peer else {
        unreachable!()
    };
    let junk: [&[u8]; 5] = [
        b"",
        b"hello world",
        &[
            4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        &[1; 148],
        &[
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];
    for bytes in junk {
        assert!(node
            .decapsulate(addr(10, 0, 0, 2, 6000), addr(10, 0, 0, 1, 5000), bytes, now)
            .is_err());
    }
    assert_eq!(node.stats().total_dropped(), 5, "{:?}", node.stats());
    net.send(client, gateway, b"unharmed").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(payloads(&net, gateway, client), vec![b"unharmed".to_vec()]);
}

#[test]
fn a_dead_path_fails_the_connection_after_the_grace() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    net.set_filter(|_| true);
    let cut = net.elapsed();
    net.run_for(Duration::from_secs(120));
    let failed = failures(&net, client);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].1, FailReason::IceDisconnected);
    // ICE gives up after its unanswered checks (sparse ones once the connection is idle, so
    // about a minute here), then the grace runs.
    assert!(
        failed[0].0 >= cut + node_core::MIGRATION_GRACE,
        "{failed:?}"
    );
    assert!(failed[0].0 <= cut + Duration::from_secs(90), "{failed:?}");
}

#[test]
fn a_peer_on_the_turn_port_is_a_peer() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    // A client whose (NAT's) port happens to be TURN's well-known one.
    let client = net.add_client("client", 1, addr(10, 0, 0, 1, 3478), None, 1);
    let gateway = net.add_gateway("gateway", 1, addr(10, 0, 0, 2, 6000), None, 2);
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));

    let info = net.connection(gateway, client).unwrap();
    assert!(info.ice_connected && info.established, "{info:?}");
    assert_eq!(info.path.unwrap().remote, addr(10, 0, 0, 1, 3478));
    net.send(client, gateway, b"ping").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(payloads(&net, gateway, client), vec![b"ping".to_vec()]);
}

#[test]
fn forgotten_relays_are_remembered_up_to_their_cap() {
    use node_core::ids::{GatewayId, RelayId};
    use node_core::turn::RelayConfig;
    use node_core::{Error, Node, Role, FORMER_RELAYS_KEPT};

    let now = Instant::now();
    let mut node = Node::<GatewayId>::new(Role::Client, 7, now);
    let local = addr(10, 0, 0, 1, 5000);
    node.add_local_address(local);
    let server = |i: usize| addr(203, 0, 113, u8::try_from(i).unwrap(), 3478);
    for i in 1..=FORMER_RELAYS_KEPT + 1 {
        let id = RelayId(u64::try_from(i).unwrap());
        node.add_relay(
            RelayConfig {
                id,
                server: server(i),
                username: "1:c1".to_owned(),
                password: "p".to_owned(),
            },
            now,
        );
        node.remove_relay(id, now);
    }
    while node.poll_transmit().is_some() {}
    // A late STUN answer (binding success, no attributes).
    let mut answer = vec![0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    answer.extend_from_slice(&[7; 12]);
    let from_relay = |node: &mut Node<GatewayId>, i: usize| {
        matches!(
            node.decapsulate(local, server(i), &answer, now),
            Err(Error::UnknownRelay)
        )
    };
    // The newest FORMER_RELAYS_KEPT are still known as relays; the oldest is forgotten.
    for i in 2..=FORMER_RELAYS_KEPT + 1 {
        assert!(from_relay(&mut node, i), "relay {i}");
    }
    assert!(!from_relay(&mut node, 1));
}

#[test]
fn connection_timing_comes_from_the_node_config() {
    init_tracing();
    let mut net = MemNet::new(Instant::now());
    let (client, gateway) = pair(&mut net);
    let config = node_core::ConnectionConfig {
        idle_after: Duration::from_secs(5),
        ..Default::default()
    };
    match &mut net.host_mut(client).peer {
        Peer::Client { node, .. } => node.set_connection_config(config),
        _ => unreachable!(),
    }
    net.connect(client, gateway);
    net.run_for(Duration::from_secs(2));
    let last_activity = net.elapsed();
    net.send(client, gateway, b"hello").unwrap();
    net.run_for(Duration::from_secs(30));

    let idle: Vec<Duration> = events_of(&net, client)
        .into_iter()
        .filter_map(|(t, e)| matches!(e, Event::ConnectionIdle(_)).then_some(t))
        .collect();
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert!(idle[0] >= last_activity + config.idle_after, "{idle:?}");
    assert!(idle[0] <= last_activity + config.idle_after + Duration::from_secs(1));
    // The gateway kept the defaults: idle only 20 s after the client's "hello".
    let gateway_idle: Vec<Duration> = events_of(&net, gateway)
        .into_iter()
        .filter_map(|(t, e)| matches!(e, Event::ConnectionIdle(_)).then_some(t))
        .collect();
    assert_eq!(gateway_idle.len(), 1, "{gateway_idle:?}");
    assert!(gateway_idle[0] >= last_activity + node_core::IDLE_AFTER);
}

#[test]
fn remote_candidates_are_capped_per_connection() {
    use node_core::ids::GatewayId;
    use node_core::{Credentials, Node, Psk, PublicKey, Role, StaticSecret, MAX_REMOTE_CANDIDATES};

    let now = Instant::now();
    let mut node = Node::<GatewayId>::new(Role::Client, 7, now);
    node.add_local_address(addr(10, 0, 0, 1, 5000));
    let creds = |ufrag: &str| Credentials {
        ufrag: ufrag.to_owned(),
        password: "a-password-of-22-chars!".to_owned(),
    };
    let peer = PublicKey::from(&StaticSecret::from([9; 32]));
    node.upsert_connection(
        GatewayId(1),
        peer,
        Psk([1; 32]),
        creds("ours"),
        creds("them"),
        now,
    );
    let host = |i: usize| {
        let port = 10_000 + u16::try_from(i).unwrap();
        format!("candidate:{i} 1 udp 2130706431 10.0.0.2 {port} typ host")
    };
    let list: Vec<String> = (0..=MAX_REMOTE_CANDIDATES).map(host).collect();
    node.add_remote_candidates(GatewayId(1), list.iter().map(String::as_str), now);
    assert_eq!(node.stats().remote_candidates_dropped, 1);
    // One it has already is no new candidate, cap or not.
    node.add_remote_candidate(GatewayId(1), &host(0), now);
    assert_eq!(node.stats().remote_candidates_dropped, 1);
    assert_eq!(node.stats().total_dropped(), 0);
    let held = node.connection(GatewayId(1)).map(|c| c.remote_candidates);
    assert_eq!(held, Some(MAX_REMOTE_CANDIDATES));
}
