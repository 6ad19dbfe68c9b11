#![allow(clippy::unwrap_used)]

use super::*;

const EXAMPLE: &str = include_str!("../../examples/seed.json");

fn example() -> Directory {
    Directory::from_seed(&SeedFile::parse(EXAMPLE).unwrap())
}

fn client(id: u64, token: &str, last_octet: u8) -> Client {
    Client {
        id: ClientId(id),
        name: format!("client {id}"),
        token: TokenDigest::of(token.as_bytes()),
        ipv4: Ipv4Addr::new(100, 64, 9, last_octet),
        ipv6: Ipv6Addr::new(0xfd00, 0x2021, 0x1111, 9, 0, 0, 0, u16::from(last_octet)),
    }
}

#[test]
fn the_changes_of_a_directory_rebuild_it() {
    let mut dir = example();
    dir.key_owners.insert(
        PublicKey::from_bytes([3; 32]),
        Identity::Client(ClientId(1)),
    );
    let mut rebuilt = Directory::default();
    for change in dir.changes() {
        rebuilt.apply(&change).unwrap();
    }
    assert_eq!(rebuilt, dir);
}

#[test]
fn token_digests_print_and_parse_as_hex() {
    let digest = TokenDigest::of(b"client-token-1");
    let text = digest.to_string();
    assert_eq!(text.len(), 40);
    assert_eq!(text.parse::<TokenDigest>().unwrap(), digest);
    for bad in ["", "zz", &text[..39], &format!("{text}0"), &"g".repeat(40)] {
        assert_eq!(bad.parse::<TokenDigest>(), Err(BadTokenDigest), "{bad:?}");
    }
}

#[test]
fn changes_are_json_with_an_op() {
    let change = Change::RemovePolicy {
        client_id: ClientId(1),
        resource_id: ResourceId(2),
    };
    let text = serde_json::to_string(&change).unwrap();
    assert_eq!(
        text,
        r#"{"op":"remove_policy","client_id":1,"resource_id":2}"#
    );
    assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), change);
    let owner = Change::OwnKey {
        public_key: PublicKey::from_bytes([0; 32]),
        node: Identity::Gateway(GatewayId(4)),
    };
    let text = serde_json::to_string(&owner).unwrap();
    assert!(text.contains(r#""node":{"gateway":4}"#), "{text}");
    assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), owner);
    assert!(serde_json::from_str::<Change>(
        r#"{"op":"remove_policy","client_id":1,"resource_id":2,"x":1}"#
    )
    .is_err());
}

#[test]
fn refused_changes_change_nothing() {
    let dir = example();
    let taken_token = TokenDigest::of(b"gateway-token-1");
    let mut clash = client(7, "fresh", 7);
    clash.token = taken_token;
    let mut outside = client(7, "fresh", 7);
    outside.ipv4 = Ipv4Addr::new(10, 0, 0, 7);
    let mut same_address = client(7, "fresh", 7);
    same_address.ipv6 = dir.clients[&ClientId(1)].ipv6;
    let cases = [
        (Change::AddClient { client: clash }, ChangeError::TokenInUse),
        (
            Change::AddClient { client: outside },
            ChangeError::OutsideClientRange(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        ),
        (
            Change::AddClient {
                client: same_address,
            },
            ChangeError::AddressInUse {
                address: IpAddr::V6(dir.clients[&ClientId(1)].ipv6),
                owner: ClientId(1),
            },
        ),
        (
            Change::AddPolicy {
                policy: PolicySeed {
                    client_id: ClientId(1),
                    resource_id: ResourceId(77),
                    duration_secs: None,
                },
            },
            ChangeError::UnknownResource(ResourceId(77)),
        ),
        (
            Change::RemovePolicy {
                client_id: ClientId(2),
                resource_id: ResourceId(1),
            },
            ChangeError::UnknownPolicy(ClientId(2), ResourceId(1)),
        ),
        (
            Change::RemoveGateway { id: GatewayId(9) },
            ChangeError::UnknownGateway(GatewayId(9)),
        ),
        (
            Change::EndSessions {
                client_id: ClientId(9),
            },
            ChangeError::UnknownClient(ClientId(9)),
        ),
        (
            Change::RemoveRelay { id: RelayId(9) },
            ChangeError::UnknownRelay(RelayId(9)),
        ),
    ];
    for (change, expected) in cases {
        let mut after = dir.clone();
        assert_eq!(after.apply(&change), Err(expected), "{change:?}");
        assert_eq!(after, dir, "{change:?} changed the directory");
    }
}

#[test]
fn a_node_may_keep_its_own_token_and_addresses_when_changed() {
    let mut dir = example();
    let mut alice = dir.clients[&ClientId(1)].clone();
    alice.name = "renamed".into();
    dir.apply(&Change::AddClient {
        client: alice.clone(),
    })
    .unwrap();
    assert_eq!(dir.clients[&ClientId(1)], alice);
}

#[test]
fn removals_take_their_policies_and_key_owners_along() {
    let mut dir = example();
    let key = PublicKey::from_bytes([1; 32]);
    dir.apply(&Change::OwnKey {
        public_key: key,
        node: Identity::Client(ClientId(1)),
    })
    .unwrap();
    // A node owns one key: its next one replaces it.
    let next = PublicKey::from_bytes([2; 32]);
    dir.apply(&Change::OwnKey {
        public_key: next,
        node: Identity::Client(ClientId(1)),
    })
    .unwrap();
    assert_eq!(dir.key_owners.len(), 1);
    assert_eq!(dir.key_owners[&next], Identity::Client(ClientId(1)));

    dir.apply(&Change::RemoveClient { id: ClientId(1) })
        .unwrap();
    assert!(dir.policies.keys().all(|(c, _)| *c != ClientId(1)));
    assert!(dir.key_owners.is_empty());
    dir.apply(&Change::RemoveResource { id: ResourceId(3) })
        .unwrap();
    assert!(dir.policies.keys().all(|(_, r)| *r != ResourceId(3)));
}
