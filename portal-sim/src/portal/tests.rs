use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use node_proto::portal::frame::{ReplyStatus, PHX_REPLY};
use node_proto::portal::ResourceAddress;
use serde_json::{json, Value};

use super::*;
use crate::credentials::verify;

const SECRET: &str = "relay-secret";
const CANDIDATE: &str = "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host";

fn seed_file() -> SeedFile {
    SeedFile::parse(include_str!("../../examples/seed.json")).unwrap()
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn portal(seed: u64, generation: u64) -> Portal {
    let mut config = PortalConfig::new(SECRET, seed);
    config.generation = generation;
    Portal::new(&seed_file(), config)
}

/// A test driver: numbers sockets and sorts the outputs by socket.
struct World {
    portal: Portal,
    next: u64,
    refs: u64,
    now: SystemTime,
}

const C1: Identity = Identity::Client(ClientId(1));
const C2: Identity = Identity::Client(ClientId(2));
const G1: Identity = Identity::Gateway(GatewayId(1));
const G3: Identity = Identity::Gateway(GatewayId(3));

fn key(identity: Identity) -> PublicKey {
    let b = match identity {
        Identity::Client(ClientId(n)) => n as u8,
        Identity::Gateway(GatewayId(n)) => 100 + n as u8,
    };
    PublicKey::from_bytes([b; 32])
}

impl World {
    fn new(portal: Portal) -> Self {
        Self {
            portal,
            next: 1,
            refs: 1,
            now: t0(),
        }
    }

    /// Connects `conn` as `identity` and sends its join with `public_key`, leaving the
    /// portal's answers to the caller.
    fn connect_and_join(&mut self, conn: ConnId, identity: Identity, public_key: PublicKey) {
        self.portal.connect(conn, identity);
        let room = identity.room();
        self.send(conn, room, "phx_join", json!({"public_key": public_key}));
    }

    /// Connects and joins; returns the socket and drains the join's outputs.
    fn join(&mut self, identity: Identity) -> ConnId {
        let conn = ConnId(self.next);
        self.next += 1;
        self.connect_and_join(conn, identity, key(identity));
        let out = self.drain();
        assert_eq!(out[0].0, conn);
        assert_eq!(out[0].1.payload["status"], "ok", "{:?}", out[0].1);
        assert_eq!(out[1].1.event, "init");
        conn
    }

    fn send(&mut self, conn: ConnId, topic: &str, event: &str, payload: Value) -> u64 {
        let r = self.refs;
        self.refs += 1;
        let text =
            json!({"topic": topic, "event": event, "payload": payload, "ref": r}).to_string();
        self.portal.handle_text(conn, &text, self.now);
        r
    }

    fn drain(&mut self) -> Vec<(ConnId, Frame)> {
        std::iter::from_fn(|| self.portal.poll_output())
            .map(|o| match o {
                Output::Send { conn, text } => (conn, Frame::parse(&text).unwrap()),
                Output::Close { conn, reason } => panic!("unexpected close of {conn:?}: {reason}"),
            })
            .collect()
    }

    /// Sends a client's request, and has every gateway told of the flow accept it; returns
    /// what the portal sent but the replies to those acceptances.
    fn request(&mut self, conn: ConnId, rid: u64) -> Vec<(ConnId, Frame)> {
        self.send(
            conn,
            "client",
            "request_connection",
            json!({"resource_id": rid}),
        );
        let mut out = self.drain();
        let told: Vec<(ConnId, AuthorizeFlow)> = out
            .iter()
            .filter(|(_, f)| f.event == "authorize_flow")
            .map(|(c, f)| (*c, authorize_flow(f)))
            .collect();
        for (gateway, flow) in told {
            self.accept(gateway, &flow);
            out.extend(self.drain().into_iter().filter(|(c, _)| *c != gateway));
        }
        out
    }

    /// The gateway on `conn` answers the `authorize_flow` it got.
    fn accept(&mut self, conn: ConnId, flow: &AuthorizeFlow) -> u64 {
        self.send(
            conn,
            "gateway",
            "flow_accepted",
            json!({
                "client_id": flow.client.id,
                "resource_id": flow.resource.id,
                "ice_ufrag": flow.gateway_ice.username,
            }),
        )
    }
}

fn reply_status(frame: &Frame) -> ReplyStatus {
    assert_eq!(frame.event, PHX_REPLY);
    frame.as_reply().unwrap().status
}

fn authorize_flow(frame: &Frame) -> AuthorizeFlow {
    match GatewayIngress::from_frame(frame).unwrap() {
        Some(GatewayIngress::AuthorizeFlow(a)) => a,
        other => panic!("not authorize_flow: {other:?}"),
    }
}

fn flow_authorized(frame: &Frame) -> ConnectionDetails {
    match ClientIngress::from_frame(frame).unwrap() {
        Some(ClientIngress::FlowAuthorized(d)) => d,
        other => panic!("not flow_authorized: {other:?}"),
    }
}

#[test]
fn init_carries_interface_resources_and_relays() {
    let mut w = World::new(portal(1, 0));
    let conn = ConnId(1);
    w.portal.connect(conn, C1);
    w.send(
        conn,
        "client:c1",
        "phx_join",
        json!({"public_key": key(C1)}),
    );
    let out = w.drain();
    let Some(ClientIngress::Init(init)) = ClientIngress::from_frame(&out[1].1).unwrap() else {
        panic!("no init");
    };
    assert_eq!(out[1].1.topic, "client:c1");
    assert_eq!(init.interface.ipv4, Ipv4Addr::new(100, 64, 0, 1));
    let ids: Vec<_> = init.resources.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, vec![1, 2], "only resources with a policy");
    assert_eq!(init.relays.len(), 1);
}

#[test]
fn joins_of_foreign_topics_or_without_a_key_are_refused() {
    let mut w = World::new(portal(1, 0));
    w.portal.connect(ConnId(1), C1);
    for (topic, payload) in [
        ("gateway", json!({"public_key": key(C1)})),
        ("client:c2", json!({"public_key": key(C1)})),
        ("client", json!({"public_key": "short"})),
    ] {
        w.send(ConnId(1), topic, "phx_join", payload);
        let out = w.drain();
        assert_eq!(out.len(), 1, "{topic}");
        assert_eq!(reply_status(&out[0].1), ReplyStatus::Error);
    }
    w.request(ConnId(1), 1)
        .iter()
        .for_each(|(_, f)| assert_eq!(f.as_reply().unwrap().reason(), "not_joined"));
}

#[test]
fn an_allowed_request_authorizes_a_flow_on_both_sides_with_one_psk() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);

    let out = w.request(c1, 1);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!((out[0].0, reply_status(&out[0].1)), (c1, ReplyStatus::Ok));
    assert_eq!(out[1].0, g1);
    let authorize = authorize_flow(&out[1].1);
    assert_eq!(out[2].0, c1);
    let details = flow_authorized(&out[2].1);

    assert_eq!(details.gateway_id, GatewayId(1));
    assert_eq!(details.gateway_public_key, key(G1));
    assert_eq!(authorize.client.id, ClientId(1));
    assert_eq!(authorize.client.public_key, key(C1));
    assert_eq!(authorize.client.ipv4, Ipv4Addr::new(100, 64, 0, 1));
    assert_eq!(authorize.resource.id, ResourceId(1));
    assert_eq!(authorize.preshared_key, details.preshared_key);
    assert_eq!(
        w.portal.preshared_key(ClientId(1), GatewayId(1)),
        Some(details.preshared_key)
    );
    assert_eq!(authorize.client_ice, details.client_ice);
    assert_eq!(authorize.gateway_ice, details.gateway_ice);
    assert_ne!(details.client_ice, details.gateway_ice);

    // A second resource through the same gateway keeps the pair's keys.
    let out = w.request(c1, 2);
    assert_eq!(
        flow_authorized(&out[2].1).preshared_key,
        details.preshared_key
    );
}

#[test]
fn a_client_hears_of_a_flow_only_when_its_gateway_accepts_it() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    w.send(
        c1,
        "client",
        "request_connection",
        json!({"resource_id": 1}),
    );
    let out = w.drain();
    assert_eq!(out.len(), 2, "the client hears nothing yet: {out:?}");
    assert_eq!(out[1].0, g1);
    let flow = authorize_flow(&out[1].1);

    // An answer naming other parameters (an older authorize_flow's), or from a gateway that
    // does not serve the flow, tells the client nothing.
    let mut stale = flow.clone();
    stale.gateway_ice.username = "older".into();
    w.accept(g1, &stale);
    let out = w.drain();
    let g2 = w.join(Identity::Gateway(GatewayId(2)));
    w.accept(g2, &flow);
    let out: Vec<_> = out.into_iter().chain(w.drain()).collect();
    assert!(out.iter().all(|(c, _)| *c != c1), "{out:?}");

    w.accept(g1, &flow);
    let out = w.drain();
    let told: Vec<_> = out.iter().filter(|(c, _)| *c == c1).collect();
    assert_eq!(told.len(), 1, "{out:?}");
    let details = flow_authorized(&told[0].1);
    assert_eq!(details.gateway_id, GatewayId(1));
    assert_eq!(details.preshared_key, flow.preshared_key);
    assert_eq!(details.gateway_ice, flow.gateway_ice);
    assert_eq!(details.client_ice, flow.client_ice);
    assert_eq!(details.expires_at, flow.expires_at);
}

#[test]
fn a_request_without_policy_or_for_an_unknown_resource_gets_an_error_and_no_flow() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let _g3 = w.join(G3);
    for rid in [3, 99] {
        let out = w.request(c1, rid);
        assert_eq!(
            out.len(),
            1,
            "no authorize_flow, no flow_authorized: {out:?}"
        );
        assert_eq!(out[0].0, c1);
        assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
    }
    // Candidates for a gateway without a flow are not relayed.
    w.send(
        c1,
        "client",
        "ice_candidates",
        json!({"gateway_id": 3, "candidates": [CANDIDATE]}),
    );
    let out = w.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
}

#[test]
fn a_request_with_no_gateway_of_the_site_online_is_refused() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let out = w.request(c1, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "offline");
}

#[test]
fn candidates_reach_the_right_peer_and_only_it() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let c2 = w.join(C2);
    let g1 = w.join(G1);
    let g2 = w.join(Identity::Gateway(GatewayId(2)));
    let g3 = w.join(G3);
    let out = w.request(c1, 1);
    let gid = flow_authorized(&out[2].1).gateway_id;
    let (gw, other_gw) = if gid == GatewayId(1) {
        (g1, g2)
    } else {
        (g2, g1)
    };
    let _ = w.request(c2, 3);

    w.send(
        c1,
        "client",
        "ice_candidates",
        json!({"gateway_id": gid, "candidates": ["candidate:junk", CANDIDATE]}),
    );
    let out = w.drain();
    let pushes: Vec<_> = out.iter().filter(|(_, f)| f.event != PHX_REPLY).collect();
    assert_eq!(pushes.len(), 1, "{out:?}");
    assert_eq!(pushes[0].0, gw);
    assert_ne!(pushes[0].0, other_gw);
    assert_eq!(
        pushes[0].1.payload,
        json!({"client_id": 1, "candidates": [CANDIDATE]})
    );

    w.send(
        gw,
        "gateway",
        "invalidate_ice_candidates",
        json!({"client_id": 1, "candidates": [CANDIDATE]}),
    );
    let out = w.drain();
    let pushes: Vec<_> = out.iter().filter(|(_, f)| f.event != PHX_REPLY).collect();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, c1);
    assert_eq!(pushes[0].1.event, "invalidate_ice_candidates");
    assert_eq!(pushes[0].1.payload["gateway_id"], json!(gid));

    // g3 serves c2, not c1: its candidates for c1 go nowhere.
    w.send(
        g3,
        "gateway",
        "ice_candidates",
        json!({"client_id": 1, "candidates": [CANDIDATE]}),
    );
    let out = w.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, g3);
    assert_eq!(reply_status(&out[0].1), ReplyStatus::Error);
    assert!(out.iter().all(|(conn, _)| *conn != c1 && *conn != c2));
}

#[test]
fn a_restart_rotates_psks_and_forgets_sessions() {
    let psk_of = |generation| {
        let mut w = World::new(portal(1, generation));
        let c1 = w.join(C1);
        w.join(G1);
        let out = w.request(c1, 1);
        flow_authorized(&out[2].1).preshared_key
    };
    assert_eq!(
        psk_of(0),
        psk_of(0),
        "deterministic for a seed and generation"
    );
    assert_ne!(psk_of(0), psk_of(1), "a restart rotates the PSK");

    // Sessions and flows live only in memory.
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    w.join(G1);
    w.request(c1, 1);
    let mut restarted = World::new(portal(1, 1));
    assert!(!restarted.portal.is_joined(C1));
    restarted.portal.handle_text(
        c1,
        r#"{"topic":"client","event":"request_connection","payload":{"resource_id":1},"ref":1}"#,
        t0(),
    );
    assert_eq!(
        restarted.drain(),
        vec![],
        "old sockets mean nothing to the new portal"
    );
    restarted.join(G1);
    assert!(restarted.portal.is_joined(G1));
    assert!(!restarted.portal.is_joined(C1));
}

#[test]
fn gateway_init_lists_current_authorizations() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    w.join(Identity::Gateway(GatewayId(2)));
    let gid = flow_authorized(&w.request(c1, 1)[2].1).gateway_id;
    let conn = if gid == GatewayId(1) { g1 } else { ConnId(3) };
    let identity = Identity::Gateway(gid);
    w.portal.disconnect(conn);
    let new = ConnId(10);
    w.connect_and_join(new, identity, key(identity));
    let out = w.drain();
    let Some(GatewayIngress::Init(init)) = GatewayIngress::from_frame(&out[1].1).unwrap() else {
        panic!("no init");
    };
    // The live flow, with its policy's duration, and every other pair the policies allow on
    // this gateway's site (so a portal restart, which forgets flows, revokes nothing); nothing
    // of another site.
    let listed: Vec<(ClientId, ResourceId, u64)> = init
        .authorizations
        .iter()
        .map(|a| (a.client_id, a.resource_id, a.expires_at))
        .collect();
    assert_eq!(
        listed,
        vec![
            (ClientId(1), ResourceId(1), 1_700_000_000 + 28_800),
            (
                ClientId(1),
                ResourceId(2),
                1_700_000_000 + DEFAULT_AUTHORIZATION.as_secs()
            ),
        ]
    );
}

/// A flow announced on a gateway socket that was already dead never arrived; the gateway's next
/// join must bring it (the init only extends authorizations the gateway already has).
#[test]
fn a_rejoining_gateway_gets_its_live_flows_again() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    w.portal.disconnect(g1);
    let g2 = w.join(Identity::Gateway(GatewayId(2)));
    let out = w.request(c1, 1);
    let details = flow_authorized(&out[2].1);
    assert_eq!(details.gateway_id, GatewayId(2));
    let announced = authorize_flow(&out[1].1);

    // The socket was half-open: the portal learns of it only when the gateway comes back.
    let identity = Identity::Gateway(GatewayId(2));
    let new = ConnId(10);
    w.connect_and_join(new, identity, key(identity));
    let mut again = Vec::new();
    while let Some(output) = w.portal.poll_output() {
        match output {
            Output::Send { conn, text } if conn == new => {
                let frame = Frame::parse(&text).unwrap();
                if frame.event == "authorize_flow" {
                    again.push(authorize_flow(&frame));
                }
            }
            Output::Close { conn, .. } => assert_eq!(conn, g2),
            Output::Send { conn, .. } => panic!("unexpected send to {conn:?}"),
        }
    }
    assert_eq!(again, vec![announced]);

    // A restarted gateway (another key) lost its flows with its connections: nothing to repeat.
    let newer = ConnId(11);
    let restarted = PublicKey::from_bytes([200; 32]);
    w.connect_and_join(newer, identity, restarted);
    let repeated = std::iter::from_fn(|| w.portal.poll_output())
        .filter(|o| matches!(o, Output::Send { text, .. } if text.contains("authorize_flow")))
        .count();
    assert_eq!(repeated, 0);
}

#[test]
fn authorizations_expire() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    w.join(G1);
    w.join(Identity::Gateway(GatewayId(2)));
    let out = w.request(c1, 2);
    let details = flow_authorized(&out[2].1);
    assert_eq!(
        details.expires_at,
        1_700_000_000 + DEFAULT_AUTHORIZATION.as_secs(),
        "no duration in the policy: the default"
    );
    let gid = details.gateway_id;
    let send_candidates = |w: &mut World| {
        w.send(
            c1,
            "client",
            "ice_candidates",
            json!({"gateway_id": gid, "candidates": [CANDIDATE]}),
        );
        w.drain()
    };
    assert_eq!(send_candidates(&mut w).len(), 2, "relayed + reply");
    w.now += DEFAULT_AUTHORIZATION;
    // The flow expired (the gateway stops forwarding data), but the policy still lets the pair
    // talk: a connection may keep migrating and the next request renews the flow.
    assert_eq!(
        send_candidates(&mut w).len(),
        2,
        "policy still allows signalling"
    );
    w.portal.revoke(ClientId(1), ResourceId(2));
    w.portal.revoke(ClientId(1), ResourceId(1));
    w.drain();
    let out = send_candidates(&mut w);
    assert_eq!(out.len(), 1, "expired and no policy: not relayed");
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
}

#[test]
fn deleting_a_resource_tells_its_clients_and_gateways() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let c2 = w.join(C2);
    let g1 = w.join(G1);
    let g3 = w.join(G3);
    assert!(w.portal.remove_resource(ResourceId(1)));
    let out = w.drain();
    let targets: Vec<_> = out.iter().map(|(c, f)| (*c, f.event.as_str())).collect();
    assert_eq!(
        targets,
        vec![(c1, "resource_deleted"), (g1, "resource_deleted")],
        "not c2 (no policy), not g3 (other site)"
    );
    let _ = (c2, g3);
    assert!(!w.portal.remove_resource(ResourceId(1)));
    let out = w.request(c1, 1);
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
}

#[test]
fn revoking_access_tells_the_client_and_the_flows_gateway() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    w.request(c1, 1);
    assert!(w.portal.revoke(ClientId(1), ResourceId(1)));
    let out = w.drain();
    let targets: Vec<_> = out.iter().map(|(c, f)| (*c, f.event.as_str())).collect();
    assert_eq!(
        targets,
        vec![(g1, "access_revoked"), (c1, "access_revoked")]
    );
    assert_eq!(out[0].1.payload, json!({"client_id": 1, "resource_id": 1}));
    let out = w.request(c1, 1);
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
    assert!(!w.portal.revoke(ClientId(1), ResourceId(1)));
}

#[test]
fn new_resources_and_policies_are_pushed() {
    let mut w = World::new(portal(1, 0));
    let c2 = w.join(C2);
    let g3 = w.join(G3);
    let resource = ResourceSeed {
        id: ResourceId(40),
        name: "printer".into(),
        site: "lab".into(),
        address: ResourceAddress::Host {
            address: "172.16.0.9".parse().unwrap(),
        },
    };
    w.portal.add_resource(resource).unwrap();
    let out = w.drain();
    assert_eq!(
        out.len(),
        1,
        "only the lab gateway: no client has a policy yet"
    );
    assert_eq!(
        (out[0].0, out[0].1.event.as_str()),
        (g3, "resource_created_or_updated")
    );

    w.portal.add_policy(PolicySeed {
        client_id: ClientId(2),
        resource_id: ResourceId(40),
        duration_secs: Some(60),
    });
    let out = w.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, out[0].1.event.as_str()),
        (c2, "resource_created_or_updated")
    );
    let out = w.request(c2, 40);
    assert_eq!(flow_authorized(&out[2].1).expires_at, 1_700_000_060);
}

#[test]
fn relay_presence_and_credentials() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    w.portal.add_relay(
        RelaySeed {
            id: RelayId(2),
            address: "198.51.100.3:3478".parse().unwrap(),
        },
        w.now,
    );
    let out = w.drain();
    assert_eq!(out.len(), 2);
    for (conn, frame) in &out {
        assert_eq!(frame.event, "relays_presence");
        let relay = match (
            *conn == c1,
            ClientIngress::from_frame(frame),
            GatewayIngress::from_frame(frame),
        ) {
            (true, Ok(Some(ClientIngress::RelaysPresence(p))), _) => p.connected[0].clone(),
            (false, _, Ok(Some(GatewayIngress::RelaysPresence(p)))) => p.connected[0].clone(),
            other => panic!("{other:?}"),
        };
        let id = if *conn == c1 { "c1" } else { "g1" };
        assert_eq!(relay.username, format!("{}:{id}", relay.expires_at));
        assert!(relay.expires_at > 1_700_000_000);
        assert!(verify(
            SECRET,
            &relay.username,
            &relay.password,
            1_700_000_000
        ));
        assert!(!verify(
            "wrong",
            &relay.username,
            &relay.password,
            1_700_000_000
        ));
    }
    let _ = g1;
    assert!(w.portal.remove_relay(RelayId(2)));
    let out = w.drain();
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|(_, f)| f.payload["disconnected_ids"] == json!([2])));
    assert!(!w.portal.remove_relay(RelayId(2)));
}

#[test]
fn a_second_socket_replaces_the_first() {
    let mut w = World::new(portal(1, 0));
    let old = w.join(C1);
    w.portal.connect(ConnId(9), C1);
    assert_eq!(
        w.portal.poll_output(),
        Some(Output::Close {
            conn: old,
            reason: "replaced by a newer connection".into()
        })
    );
    w.portal.disconnect(old);
    assert!(!w.portal.is_joined(C1));
}

#[test]
fn heartbeats_are_answered_and_junk_is_survived() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    w.send(c1, "phoenix", "heartbeat", json!({}));
    let out = w.drain();
    assert_eq!(reply_status(&out[0].1), ReplyStatus::Ok);
    for junk in [
        "",
        "{",
        "[1]",
        "\u{0}",
        r#"{"topic":"client","event":"x","payload":{},"ref":1}"#,
    ] {
        w.portal.handle_text(c1, junk, w.now);
    }
    w.send(
        c1,
        "client",
        "request_connection",
        json!({"resource_id": "one"}),
    );
    let replies = w.drain();
    assert_eq!(
        replies.len(),
        2,
        "unknown event and invalid payload get error replies"
    );
    assert!(replies
        .iter()
        .all(|(_, f)| reply_status(f) == ReplyStatus::Error));
}

#[test]
fn only_whole_tokens_authenticate() {
    let portal = portal(1, 0);
    assert_eq!(portal.authenticate(b"client-token-1"), Some(C1));
    assert_eq!(portal.authenticate(b"gateway-token-3"), Some(G3));
    for wrong in [
        &b""[..],
        b"client-token-",
        b"client-token-1 ",
        b"client-token-10",
    ] {
        assert_eq!(portal.authenticate(wrong), None, "{wrong:?}");
    }
}

/// Gateways find a client's connection by its key: a node that could join with another node's
/// key would take over its handshakes.
#[test]
fn a_key_another_node_owns_is_refused_also_while_it_is_offline() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    for (conn, thief, stolen) in [(ConnId(20), C2, key(C1)), (ConnId(21), G3, key(C1))]
        .into_iter()
        .chain([(ConnId(22), C2, key(G1)), (ConnId(23), G3, key(G1))])
    {
        w.connect_and_join(conn, thief, stolen);
        let out = w.drain();
        assert_eq!(out.len(), 1, "{thief}: only the error reply, no init");
        assert_eq!(out[0].0, conn);
        assert_eq!(reply_status(&out[0].1), ReplyStatus::Error);
        assert_eq!(out[0].1.as_reply().unwrap().reason(), "public_key_in_use");
        assert!(!w.portal.is_joined(thief), "{thief}");
        w.portal.disconnect(conn);
    }
    // The gateway still gets the holder's key with a flow.
    let out = w.request(c1, 1);
    assert_eq!(authorize_flow(&out[1].1).client.public_key, key(C1));

    // The holder joins again with its key on the same socket, then from a new socket.
    w.send(c1, "client", "phx_join", json!({"public_key": key(C1)}));
    let out = w.drain();
    assert_eq!(reply_status(&out[0].1), ReplyStatus::Ok);
    let newer = ConnId(30);
    w.connect_and_join(newer, C1, key(C1));
    let out: Vec<Output> = std::iter::from_fn(|| w.portal.poll_output()).collect();
    assert!(out.contains(&Output::Close {
        conn: c1,
        reason: "replaced by a newer connection".into()
    }));
    assert!(w.portal.is_joined(C1));

    // Once the holder is offline, the key is still its own.
    w.portal.disconnect(newer);
    w.connect_and_join(ConnId(31), C2, key(C1));
    let out = w.drain();
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "public_key_in_use");
    w.portal.disconnect(ConnId(31));
    // And after a restart from the stored directory, which holds the owners.
    let mut config = PortalConfig::new(SECRET, 1);
    config.generation = 1;
    let restarted = Portal::with_directory(w.portal.directory().clone(), config);
    let mut w = World::new(restarted);
    w.connect_and_join(ConnId(40), C2, key(C1));
    let out = w.drain();
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "public_key_in_use");
    w.portal.disconnect(ConnId(40));
    // A key its owner replaced with another is free.
    w.connect_and_join(ConnId(41), C1, PublicKey::from_bytes([77; 32]));
    let out = w.drain();
    assert_eq!(reply_status(&out[0].1), ReplyStatus::Ok);
    w.connect_and_join(ConnId(42), C2, key(C1));
    let out = w.drain();
    assert_eq!(reply_status(&out[0].1), ReplyStatus::Ok);
    let _ = g1;
}

#[test]
fn a_resource_in_a_client_tunnel_range_is_refused_at_runtime() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = w.join(G1);
    for address in ["100.64.0.2", "fd00:2021:1111::2"] {
        let resource = ResourceSeed {
            id: ResourceId(1),
            name: "database".into(),
            site: "hq".into(),
            address: ResourceAddress::Host {
                address: address.parse().unwrap(),
            },
        };
        let error = w.portal.add_resource(resource).unwrap_err();
        assert!(
            matches!(
                error,
                ResourceError::OverlapsClientTunnel {
                    id: ResourceId(1),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(w.drain().is_empty(), "nobody hears of it");
    }
    // The resource it would have replaced is unchanged.
    let out = w.request(c1, 1);
    assert_eq!(out[1].0, g1);
    assert_eq!(
        authorize_flow(&out[1].1).resource.address,
        ResourceAddress::Host {
            address: "10.0.0.5".parse().unwrap()
        }
    );
}

#[test]
fn a_hand_built_seed_with_a_resource_in_a_client_tunnel_range_skips_it() {
    let mut seed = seed_file();
    seed.resources[0].address = ResourceAddress::Cidr {
        address: "100.64.0.0/24".parse().unwrap(),
    };
    let mut w = World::new(Portal::new(&seed, PortalConfig::new(SECRET, 1)));
    let c1 = w.join(C1);
    let _g1 = w.join(G1);
    let out = w.request(c1, 1);
    assert_eq!(out[0].1.as_reply().unwrap().reason(), "unauthorized");
}

#[test]
fn joined_nodes_get_fresh_relay_credentials_at_half_their_lifetime() {
    let mut config = PortalConfig::new(SECRET, 1);
    config.relay_credentials_lifetime = Duration::from_secs(3600);
    let mut w = World::new(Portal::new(&seed_file(), config));
    assert_eq!(w.portal.poll_timeout(), None, "nobody joined");
    let c1 = w.join(C1);
    let half = t0() + Duration::from_secs(1800);
    assert_eq!(w.portal.poll_timeout(), Some(half));
    // Not before it is due.
    w.portal.handle_timeout(half - Duration::from_secs(1));
    assert!(w.drain().is_empty());
    let relays = w.portal.directory().relays.len();
    for round in 1..=3u64 {
        let at = t0() + Duration::from_secs(1800 * round);
        assert_eq!(w.portal.poll_timeout(), Some(at));
        w.portal.handle_timeout(at);
        let out = w.drain();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, c1);
        let Ok(Some(ClientIngress::RelaysPresence(p))) = ClientIngress::from_frame(&out[0].1)
        else {
            panic!("{:?}", out[0].1);
        };
        assert!(p.disconnected_ids.is_empty());
        assert_eq!(p.connected.len(), relays);
        let now_unix = 1_700_000_000 + 1800 * round;
        for relay in &p.connected {
            assert_eq!(relay.expires_at, now_unix + 3600);
            assert!(verify(
                SECRET,
                &relay.username,
                &relay.password,
                now_unix + 3599
            ));
        }
    }
    assert_eq!(w.portal.metrics().credential_renewals, 3);
    // A node that left its room gets none.
    w.send(c1, C1.room(), "phx_leave", json!({}));
    w.drain();
    assert_eq!(w.portal.poll_timeout(), None);
}

/// The clients that got `gateway_restarted` for `gid` in `out`.
fn told_of_restart(out: &[(ConnId, Frame)], gid: GatewayId) -> Vec<ConnId> {
    out.iter()
        .filter(|(_, frame)| {
            matches!(
                ClientIngress::from_frame(frame),
                Ok(Some(ClientIngress::GatewayRestarted(r))) if r.gateway_id == gid
            )
        })
        .map(|(conn, _)| *conn)
        .collect()
}

#[test]
fn a_gateway_that_joins_with_a_new_key_is_announced_to_its_clients() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let c2 = w.join(C2);
    let g1 = w.join(G1);
    let before = flow_authorized(&w.request(c1, 1)[2].1);

    // The same process reconnecting (same key) is no news to anyone.
    w.portal.disconnect(g1);
    let again = ConnId(10);
    w.connect_and_join(again, G1, key(G1));
    assert!(told_of_restart(&w.drain(), GatewayId(1)).is_empty());

    // A new process: the client with a connection is told; the other one, with no policy on
    // the gateway's site, is not.
    w.portal.disconnect(again);
    w.connect_and_join(ConnId(11), G1, PublicKey::from_bytes([200; 32]));
    assert_eq!(told_of_restart(&w.drain(), GatewayId(1)), vec![c1]);
    assert_ne!(c2, c1);

    // The next connection to it starts afresh.
    let after = flow_authorized(&w.request(c1, 1)[2].1);
    assert_eq!(after.gateway_public_key, PublicKey::from_bytes([200; 32]));
    assert_ne!(after.preshared_key, before.preshared_key);
    assert_ne!(after.client_ice, before.client_ice);
}

#[test]
fn a_restarted_portal_announces_a_new_gateway_process_to_the_clients_its_policies_name() {
    // A restarted portal knows no connection, while the clients still hold theirs.
    let mut w = World::new(portal(1, 1));
    let c1 = w.join(C1);
    let _c2 = w.join(C2);
    let g1 = w.join(G1);
    w.portal.disconnect(g1);
    w.connect_and_join(ConnId(10), G1, PublicKey::from_bytes([200; 32]));
    assert_eq!(told_of_restart(&w.drain(), GatewayId(1)), vec![c1]);
}

#[test]
fn a_gateway_that_joins_with_a_new_process_number_is_announced_too() {
    // The binaries keep their key across restarts: the process number tells a restart apart.
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let _ = w.request(c1, 1);
    let join = |w: &mut World, conn: ConnId, instance: u64| {
        w.portal.disconnect(ConnId(conn.0 - 1));
        w.portal.connect(conn, G1);
        let payload = json!({"public_key": key(G1), "instance": instance});
        w.send(conn, G1.room(), "phx_join", payload);
        told_of_restart(&w.drain(), GatewayId(1))
    };
    assert!(join(&mut w, ConnId(10), 7).is_empty(), "its first join");
    assert!(
        join(&mut w, ConnId(11), 7).is_empty(),
        "the same process again"
    );
    assert_eq!(join(&mut w, ConnId(12), 8), vec![c1], "a new process");
}

/// Joins `identity` on a new socket `conn` as the process numbered `instance`; returns what
/// the portal sent to anyone.
fn join_as_process(
    w: &mut World,
    conn: ConnId,
    identity: Identity,
    instance: u64,
) -> Vec<(ConnId, Frame)> {
    w.portal.connect(conn, identity);
    let payload = json!({"public_key": key(identity), "instance": instance});
    w.send(conn, identity.room(), "phx_join", payload);
    w.drain()
}

/// The `init` sent to `conn` in `out`.
fn client_init(out: &[(ConnId, Frame)], conn: ConnId) -> ClientInit {
    let (_, frame) = out
        .iter()
        .find(|(c, f)| *c == conn && f.event == "init")
        .expect("an init");
    serde_json::from_value(frame.payload.clone()).unwrap()
}

/// A client cut off from the portal misses whatever was pushed meanwhile (a gateway's new
/// candidates, a gateway's restart): its rejoin brings the gateways' processes, and has the
/// gateways it has flows with signal their candidates again.
#[test]
fn a_rejoining_client_learns_its_gateways_processes_and_its_flows_are_announced_again() {
    let mut w = World::new(portal(1, 0));
    let c1 = w.join(C1);
    let g1 = ConnId(50);
    let _ = join_as_process(&mut w, g1, G1, 7);
    let out = w.request(c1, 1);
    let event = |name: &str| &out.iter().find(|(_, f)| f.event == name).unwrap().1;
    let first = authorize_flow(event("authorize_flow"));
    let details = flow_authorized(event("flow_authorized"));
    assert_eq!(details.gateway_instance, Some(7));

    // The client's socket died; the same process joins again.
    w.portal.disconnect(c1);
    let again = join_as_process(&mut w, ConnId(51), C1, 1);
    let expected = GatewayInstance {
        gateway_id: GatewayId(1),
        instance: 7,
    };
    assert_eq!(client_init(&again, ConnId(51)).gateways, vec![expected]);
    let announced: Vec<AuthorizeFlow> = again
        .iter()
        .filter(|(c, f)| *c == g1 && f.event == "authorize_flow")
        .map(|(_, f)| authorize_flow(f))
        .collect();
    assert_eq!(announced, vec![first], "the same parameters, once");

    // The gateway restarts while the client is away: its rejoin names the new process, and
    // no flow of the dead one is announced.
    w.portal.disconnect(ConnId(51));
    w.portal.disconnect(g1);
    let _ = join_as_process(&mut w, ConnId(52), G1, 8);
    let again = join_as_process(&mut w, ConnId(53), C1, 1);
    let listed = client_init(&again, ConnId(53)).gateways;
    assert_eq!(listed[0].instance, 8);
    assert!(!again.iter().any(|(_, f)| f.event == "authorize_flow"));
}
