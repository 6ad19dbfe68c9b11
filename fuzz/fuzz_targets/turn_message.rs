//! Arbitrary datagrams from arbitrary sources into the relay's server core, and the same bytes
//! into a node's TURN client as if they came from its relay.
//!
//! Properties: nothing panics; the relay never allocates for a request it could not
//! authenticate (no input can carry a valid MESSAGE-INTEGRITY without the secret); the node
//! never takes a relayed address from an unauthenticated answer.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use node_core::ids::{GatewayId, RelayId};
use node_core::turn::RelayConfig;
use node_core::{Node, Role};

const SECRET: &str = "fuzz-secret";
const UNIX: u64 = 1_800_000_000;

fn v4(d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, d)), port)
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let relay = v4(1, 3478);
    let mut server = relay_sim::Server::new(
        relay_sim::Config::new("fuzz", SECRET, Ipv4Addr::new(203, 0, 113, 1)),
        [3; 32],
        start,
        UNIX,
    )
    .expect("valid config");
    let mut client: Node<GatewayId> = Node::new(Role::Client, 1, start);
    let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 3600, "c1");
    client.add_relay(
        RelayConfig {
            id: RelayId(1),
            server: relay,
            username,
            password,
        },
        start,
    );
    let local = v4(9, 40000);

    // Chunks: [source selector][length][bytes...]
    let mut rest = data;
    let mut now = start;
    while let [selector, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*selector & 0x0F) * 100);
        let from = v4(10 + (selector >> 4), 40000 + u16::from(selector & 0x3));
        let to = if selector & 0x80 == 0 {
            relay
        } else {
            v4(1, 49152)
        };
        server.handle_input(now, from, to, datagram);
        server.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
        assert_eq!(
            server.allocation_count(),
            0,
            "allocated without credentials"
        );

        let _ = client.decapsulate(local, relay, datagram, now);
        client.handle_timeout(now);
        while client.poll_transmit().is_some() {}
        while client.poll_event().is_some() {}
        assert_eq!(
            client.relayed_address(RelayId(1)),
            None,
            "relayed address from a forged answer"
        );
    }
});
