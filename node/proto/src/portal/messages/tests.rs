//! Round trips of every message and the tolerance rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::json;

use super::*;
use crate::ids::{ClientId, GatewayId, RelayId, ResourceId};
use crate::portal::frame::Frame;
use crate::portal::{
    AccessRevoked, Authorization, IceCredentials, Interface, IpNetwork, PresharedKey, PublicKey,
    Relay, RelaysPresence, ResourceAddress, ResourceDeleted, ResourceDescription,
};

const HOST_CANDIDATE: &str = "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host";

fn creds(u: &str) -> IceCredentials {
    IceCredentials {
        username: u.into(),
        password: format!("{u}-password-0123456789abc"),
    }
}

fn host_resource() -> ResourceDescription {
    ResourceDescription {
        id: ResourceId(7),
        name: "db".into(),
        address: ResourceAddress::Host {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        },
    }
}

fn cidr_resource() -> ResourceDescription {
    ResourceDescription {
        id: ResourceId(8),
        name: "office".into(),
        address: ResourceAddress::Cidr {
            address: "10.1.0.0/16".parse().unwrap(),
        },
    }
}

fn relay() -> Relay {
    Relay {
        id: RelayId(1),
        address: "203.0.113.9:3478".parse().unwrap(),
        username: "1700000000:c1".into(),
        password: "c2VjcmV0".into(),
        expires_at: 1_700_000_000,
    }
}

fn client_ingress() -> Vec<ClientIngress> {
    vec![
        ClientIngress::Init(ClientInit {
            interface: Interface {
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            },
            resources: vec![host_resource(), cidr_resource()],
            relays: vec![relay()],
            gateways: vec![GatewayInstance {
                gateway_id: GatewayId(2),
                instance: 77,
            }],
        }),
        ClientIngress::FlowAuthorized(ConnectionDetails {
            resource_id: ResourceId(7),
            gateway_id: GatewayId(2),
            gateway_public_key: PublicKey::from_bytes([2; 32]),
            client_ice: creds("cccc"),
            gateway_ice: creds("gggg"),
            preshared_key: PresharedKey::from_bytes([9; 32]),
            expires_at: 1_700_003_600,
            gateway_instance: Some(77),
        }),
        ClientIngress::IceCandidates(GatewayCandidates {
            gateway_id: GatewayId(2),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        ClientIngress::InvalidateIceCandidates(GatewayCandidates {
            gateway_id: GatewayId(2),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        ClientIngress::GatewayRestarted(GatewayRestarted {
            gateway_id: GatewayId(2),
        }),
        ClientIngress::ResourceCreatedOrUpdated(cidr_resource()),
        ClientIngress::ResourceDeleted(ResourceDeleted { id: ResourceId(8) }),
        ClientIngress::AccessRevoked(AccessRevoked {
            client_id: ClientId(1),
            resource_id: ResourceId(7),
        }),
        ClientIngress::RelaysPresence(RelaysPresence {
            connected: vec![relay()],
            disconnected_ids: vec![RelayId(4)],
        }),
    ]
}

fn client_egress() -> Vec<ClientEgress> {
    vec![
        ClientEgress::RequestConnection(RequestConnection {
            resource_id: ResourceId(7),
        }),
        ClientEgress::IceCandidates(GatewayCandidates {
            gateway_id: GatewayId(2),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        ClientEgress::InvalidateIceCandidates(GatewayCandidates {
            gateway_id: GatewayId(2),
            candidates: vec![],
        }),
    ]
}

fn gateway_ingress() -> Vec<GatewayIngress> {
    vec![
        GatewayIngress::Init(GatewayInit {
            relays: vec![relay()],
            authorizations: vec![Authorization {
                client_id: ClientId(1),
                resource_id: ResourceId(7),
                expires_at: 1_700_003_600,
            }],
        }),
        GatewayIngress::AuthorizeFlow(AuthorizeFlow {
            client: FlowClient {
                id: ClientId(1),
                public_key: PublicKey::from_bytes([1; 32]),
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            },
            resource: host_resource(),
            client_ice: creds("cccc"),
            gateway_ice: creds("gggg"),
            preshared_key: PresharedKey::from_bytes([9; 32]),
            expires_at: 1_700_003_600,
        }),
        GatewayIngress::IceCandidates(ClientCandidates {
            client_id: ClientId(1),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        GatewayIngress::InvalidateIceCandidates(ClientCandidates {
            client_id: ClientId(1),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        GatewayIngress::ResourceCreatedOrUpdated(host_resource()),
        GatewayIngress::ResourceDeleted(ResourceDeleted { id: ResourceId(7) }),
        GatewayIngress::AccessRevoked(AccessRevoked {
            client_id: ClientId(1),
            resource_id: ResourceId(7),
        }),
        GatewayIngress::RelaysPresence(RelaysPresence {
            connected: vec![],
            disconnected_ids: vec![RelayId(1)],
        }),
    ]
}

fn gateway_egress() -> Vec<GatewayEgress> {
    vec![
        GatewayEgress::IceCandidates(ClientCandidates {
            client_id: ClientId(1),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        GatewayEgress::InvalidateIceCandidates(ClientCandidates {
            client_id: ClientId(1),
            candidates: vec![HOST_CANDIDATE.into()],
        }),
        GatewayEgress::FlowAccepted(FlowAccepted {
            client_id: ClientId(1),
            resource_id: ResourceId(2),
            ice_ufrag: "gwufrag".into(),
        }),
    ]
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(messages: Vec<M>) {
    let mut events = Vec::new();
    for message in messages {
        let text = Frame::message("client", &message, Some(3))
            .unwrap()
            .to_text();
        let frame = Frame::parse(&text).unwrap();
        assert_eq!(frame.event, message.event());
        let decoded = M::from_frame(&frame).unwrap().unwrap();
        assert_eq!(decoded, message, "{text}");
        events.push(message.event());
    }
    events.sort_unstable();
    let mut all = M::EVENTS.to_vec();
    all.sort_unstable();
    assert_eq!(events, all, "every event is covered");
}

#[test]
fn every_message_round_trips() {
    round_trip(client_ingress());
    round_trip(client_egress());
    round_trip(gateway_ingress());
    round_trip(gateway_egress());
}

#[test]
fn wire_format_is_stable() {
    let payload = ClientIngress::ResourceCreatedOrUpdated(host_resource())
        .to_payload()
        .unwrap();
    assert_eq!(
        payload,
        json!({"id": 7, "name": "db", "type": "host", "address": "10.0.0.5"})
    );
    let payload = ClientEgress::RequestConnection(RequestConnection {
        resource_id: ResourceId(7),
    })
    .to_payload()
    .unwrap();
    assert_eq!(payload, json!({"resource_id": 7}));
    let details = client_ingress().swap_remove(1).to_payload().unwrap();
    assert_eq!(
        details["preshared_key"],
        PresharedKey::from_bytes([9; 32]).to_base64()
    );
    assert_eq!(details["client_ice"]["username"], "cccc");
}

#[test]
fn unknown_fields_are_ignored() {
    let decoded = ClientIngress::from_event(
        "resource_deleted",
        json!({"id": 3, "added_in_v2": {"nested": true}}),
    )
    .unwrap();
    assert_eq!(
        decoded,
        Some(ClientIngress::ResourceDeleted(ResourceDeleted {
            id: ResourceId(3)
        }))
    );
    let frame = Frame::parse(
        r#"{"topic":"gateway","event":"access_revoked","payload":{"client_id":1,"resource_id":2,"why":"x"},"ref":null,"join_ref":"9"}"#,
    )
    .unwrap();
    assert!(matches!(
        GatewayIngress::from_frame(&frame),
        Ok(Some(GatewayIngress::AccessRevoked(_)))
    ));
}

#[test]
fn unknown_events_decode_to_none() {
    assert_eq!(
        ClientIngress::from_event("config_changed", json!({})).unwrap(),
        None
    );
    assert_eq!(
        GatewayEgress::from_event("request_connection", json!({"resource_id": 1})).unwrap(),
        None,
        "events of another direction are unknown too"
    );
}

#[test]
fn one_bad_list_element_is_skipped() {
    let init = ClientIngress::from_event(
        "init",
        json!({
            "interface": {"ipv4": "100.64.0.1", "ipv6": "fd00::1"},
            "resources": [
                {"id": 7, "name": "db", "type": "host", "address": "10.0.0.5"},
                {"id": 9, "name": "wiki", "type": "dns", "address": "wiki.example.com"},
                {"id": 10, "name": "bad", "type": "cidr", "address": "10.0.0.1/8"},
                {"id": 8, "name": "office", "type": "cidr", "address": "10.1.0.0/16", "x": 1},
            ],
            "relays": [
                {"id": 1, "address": "nope"},
                {"id": 1, "address": "203.0.113.9:3478", "username": "1700000000:c1",
                 "password": "c2VjcmV0", "expires_at": 1700000000}
            ],
        }),
    )
    .unwrap();
    let Some(ClientIngress::Init(init)) = init else {
        panic!("not an init: {init:?}");
    };
    assert_eq!(init.resources, vec![host_resource(), cidr_resource()]);
    assert_eq!(init.relays, vec![relay()]);

    let candidates = GatewayIngress::from_event(
        "ice_candidates",
        json!({"client_id": 1, "candidates": ["candidate:garbage", HOST_CANDIDATE, 42]}),
    )
    .unwrap();
    let Some(GatewayIngress::IceCandidates(candidates)) = candidates else {
        panic!("not candidates: {candidates:?}");
    };
    assert_eq!(
        candidates.candidates.len(),
        2,
        "non-strings dropped by decoding"
    );
    let parsed = candidates.parse();
    assert_eq!(parsed.len(), 1, "malformed strings dropped by parsing");
    assert_eq!(parsed[0].addr(), "10.0.0.1:5000".parse().unwrap());
}

#[test]
fn invalid_payloads_are_typed_errors() {
    for (event, payload) in [
        ("resource_deleted", json!({"id": "seven"})),
        ("flow_authorized", json!({"resource_id": 1})),
        ("init", json!([1, 2])),
        (
            "resource_created_or_updated",
            json!({"id": 1, "name": "x", "type": "dns"}),
        ),
    ] {
        assert!(
            matches!(
                ClientIngress::from_event(event, payload),
                Err(ProtocolError::InvalidPayload { .. })
            ),
            "{event}"
        );
    }
    let bad_key = GatewayIngress::from_event(
        "authorize_flow",
        json!({"client": {"id": 1, "public_key": "short", "ipv4": "100.64.0.1", "ipv6": "fd00::1"}}),
    );
    assert!(matches!(bad_key, Err(ProtocolError::InvalidPayload { .. })));
}

#[test]
fn truncated_or_garbage_frames_are_typed_errors() {
    let text = Frame::message("client", &client_ingress()[1], None)
        .unwrap()
        .to_text();
    for cut in [0, 1, text.len() / 2, text.len() - 1] {
        assert!(
            matches!(
                Frame::parse(&text[..cut]),
                Err(ProtocolError::MalformedFrame(_))
            ),
            "cut at {cut}"
        );
    }
    for junk in [
        "null",
        "[]",
        "\"frame\"",
        "{\"topic\":1,\"event\":\"x\"}",
        "\u{0}",
    ] {
        assert!(Frame::parse(junk).is_err(), "{junk}");
    }
}

#[test]
fn resource_addresses_contain() {
    let host = host_resource().address;
    assert!(host.contains("10.0.0.5".parse().unwrap()));
    assert!(!host.contains("10.0.0.6".parse().unwrap()));
    assert_eq!(host.network(), "10.0.0.5/32".parse::<IpNetwork>().unwrap());
    assert!(cidr_resource()
        .address
        .contains("10.1.200.3".parse().unwrap()));
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(text: &str) {
        let Ok(frame) = Frame::parse(text) else {
            return;
        };
        assert_eq!(Frame::parse(&frame.to_text()).unwrap(), frame);
        let _ = frame.as_reply();
        let _ = ClientIngress::from_frame(&frame);
        let _ = ClientEgress::from_frame(&frame);
        let _ = GatewayIngress::from_frame(&frame);
        let _ = GatewayEgress::from_frame(&frame);
    }

    proptest! {
        #[test]
        fn on_arbitrary_text(text in ".{0,200}") {
            decode_all(&text);
        }

        #[test]
        fn on_mutated_frames(index in 0usize..8, cut in 0usize..400, junk in ".{0,8}") {
            let message = &client_ingress()[index];
            let text = Frame::message("client", message, Some(1)).unwrap().to_text();
            let cut = cut.min(text.len());
            let cut = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            decode_all(&format!("{}{junk}{}", &text[..cut], &text[cut..]));
        }
    }
}
