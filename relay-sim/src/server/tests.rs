//! Unit tests of the server core: every error code, expiry, permissions, relaying.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytecodec::EncodeExt as _;
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::rfc8656::attributes::{AddressFamily, RequestedAddressFamily};
use stun_codec::{MessageClass, MessageEncoder, Method, TransactionId};

use super::*;
use crate::attributes::{Attribute, ChannelNumber, StunMessage};
use crate::auth::rest_credentials;
use crate::message::decode_stun;

const SECRET: &str = "s3cret";
const REALM: &str = "zta";
const UNIX: u64 = 1_700_000_000;
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn listen() -> SocketAddr {
    "203.0.113.1:3478".parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Harness {
    server: Server,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::new(REALM, SECRET, RELAY_IP);
        config.relay_ports = 50000..=50999;
        f(&mut config);
        let now = Instant::now();
        Self {
            server: Server::new(config, [7; 32], now, UNIX).unwrap(),
            now,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.server.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    /// A datagram from a client to the listening port.
    fn client_sends(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Transmit> {
        self.server.handle_input(self.now, from, listen(), bytes);
        self.transmits()
    }

    /// A datagram from a peer to a relay address.
    fn peer_sends(&mut self, from: SocketAddr, relay: SocketAddr, bytes: &[u8]) -> Vec<Transmit> {
        self.server.handle_input(self.now, from, relay, bytes);
        self.transmits()
    }

    /// Sends a request and returns the single response.
    fn request(&mut self, from: SocketAddr, msg: StunMessage) -> StunMessage {
        let bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
        let out = self.client_sends(from, &bytes);
        assert_eq!(out.len(), 1, "one response expected: {out:?}");
        assert_eq!(out[0].dst, from);
        assert_eq!(out[0].src, listen());
        decode_stun(&out[0].payload).unwrap()
    }
}

struct Client {
    addr: SocketAddr,
    username: String,
    password: String,
    nonce: Option<String>,
    next_tid: u32,
}

impl Client {
    fn new(addr_str: &str) -> Self {
        Self::with_credentials(addr_str, rest_credentials(SECRET, UNIX + 3600, "alice"))
    }

    fn with_credentials(addr_str: &str, (username, password): (String, String)) -> Self {
        Self {
            addr: addr(addr_str),
            username,
            password,
            nonce: None,
            next_tid: 0,
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut id = [0; 12];
        id[..4].copy_from_slice(&self.next_tid.to_be_bytes());
        id[4..8].copy_from_slice(&self.addr.port().to_be_bytes().repeat(2));
        TransactionId::new(id)
    }

    fn unsigned(&mut self, method: Method, attributes: Vec<Attribute>) -> StunMessage {
        let mut msg = StunMessage::new(MessageClass::Request, method, self.tid());
        for a in attributes {
            msg.add_attribute(a);
        }
        msg
    }

    fn sign(&self, mut msg: StunMessage) -> StunMessage {
        let username = Username::new(self.username.clone()).unwrap();
        let realm = Realm::new(REALM.to_owned()).unwrap();
        msg.add_attribute(username.clone());
        msg.add_attribute(realm.clone());
        msg.add_attribute(Nonce::new(self.nonce.clone().unwrap()).unwrap());
        let mi =
            MessageIntegrity::new_long_term_credential(&msg, &username, &realm, &self.password)
                .unwrap();
        msg.add_attribute(mi);
        msg
    }

    fn signed(&mut self, method: Method, attributes: Vec<Attribute>) -> StunMessage {
        let msg = self.unsigned(method, attributes);
        self.sign(msg)
    }

    /// Gets a nonce from a 401.
    fn login(&mut self, h: &mut Harness) {
        let msg = self.unsigned(ALLOCATE, vec![RequestedTransport::new(17).into()]);
        let response = h.request(self.addr, msg);
        assert_eq!(code(&response), Some(401));
        self.nonce = Some(
            response
                .get_attribute::<Nonce>()
                .unwrap()
                .value()
                .to_owned(),
        );
    }

    fn call(&mut self, h: &mut Harness, method: Method, attributes: Vec<Attribute>) -> StunMessage {
        let msg = self.signed(method, attributes);
        let response = h.request(self.addr, msg);
        if code(&response).is_none() {
            check_integrity(&response, self);
        }
        response
    }

    /// Logs in and allocates; returns the relayed address.
    fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        self.login(h);
        let response = self.call(h, ALLOCATE, vec![RequestedTransport::new(17).into()]);
        assert_eq!(code(&response), None, "{response:?}");
        response
            .get_attribute::<XorRelayAddress>()
            .unwrap()
            .address()
    }

    fn permit(&mut self, h: &mut Harness, peer: SocketAddr) {
        let r = self.call(h, CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()]);
        assert_eq!(code(&r), None, "{r:?}");
    }

    fn bind(&mut self, h: &mut Harness, channel: u16, peer: SocketAddr) -> Option<u16> {
        let r = self.call(
            h,
            CHANNEL_BIND,
            vec![
                ChannelNumber::new(channel).into(),
                XorPeerAddress::new(peer).into(),
            ],
        );
        code(&r)
    }
}

fn code(msg: &StunMessage) -> Option<u16> {
    match msg.class() {
        MessageClass::ErrorResponse => Some(msg.get_attribute::<ErrorCode>().unwrap().code()),
        MessageClass::SuccessResponse => None,
        MessageClass::Request | MessageClass::Indication => panic!("not a response: {msg:?}"),
    }
}

fn check_integrity(msg: &StunMessage, c: &Client) {
    let mi = msg
        .get_attribute::<MessageIntegrity>()
        .expect("signed response");
    mi.check_long_term_credential(
        &Username::new(c.username.clone()).unwrap(),
        &Realm::new(REALM.to_owned()).unwrap(),
        &c.password,
    )
    .unwrap();
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut msg = StunMessage::new(MessageClass::Indication, SEND, TransactionId::new([9; 12]));
    msg.add_attribute(XorPeerAddress::new(peer));
    msg.add_attribute(Data::new(data.to_vec()).unwrap());
    MessageEncoder::new().encode_into_bytes(msg).unwrap()
}

/// A signed request carrying an attribute type this crate does not know.
fn with_unknown_attribute(c: &mut Client, method: Method, codepoint: u16) -> StunMessage {
    let msg = c.unsigned(method, vec![RequestedTransport::new(17).into()]);
    let mut bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
    bytes.extend_from_slice(&codepoint.to_be_bytes());
    bytes.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
    let len = u16::try_from(bytes.len() - 20).unwrap();
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let decoded = decode_stun(&bytes).unwrap();
    assert_eq!(decoded.unknown_attributes().count(), 1);
    c.sign(decoded)
}

// ---- STUN ------------------------------------------------------------------------------------

#[test]
fn binding_returns_the_mapped_address() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let msg = c.unsigned(BINDING, vec![]);
    let r = h.request(c.addr, msg);
    assert_eq!(code(&r), None);
    assert_eq!(
        r.get_attribute::<XorMappedAddress>().unwrap().address(),
        c.addr
    );
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let msg = with_unknown_attribute(&mut c, ALLOCATE, 0x7777);
    let r = h.request(c.addr, msg);
    assert_eq!(code(&r), Some(420));
    let unknown = r.get_attribute::<UnknownAttributes>().unwrap();
    assert_eq!(
        unknown
            .unknowns()
            .iter()
            .map(|t| t.as_u16())
            .collect::<Vec<_>>(),
        [0x7777]
    );
    // comprehension-optional ones are ignored
    let msg = with_unknown_attribute(&mut c, ALLOCATE, 0x8777);
    assert_eq!(code(&h.request(c.addr, msg)), None);
    // and Binding checks too
    let mut msg = c.unsigned(BINDING, vec![]);
    msg = {
        let mut bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
        bytes.extend_from_slice(&[0x00, 0x03, 0, 4, 0, 0, 0, 0]); // CHANGE-REQUEST (RFC 5780)
        bytes[2..4].copy_from_slice(&8u16.to_be_bytes());
        decode_stun(&bytes).unwrap()
    };
    assert_eq!(code(&h.request(c.addr, msg)), Some(420));
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let mut h = Harness::new();
    let c = addr("192.0.2.1:1000");
    assert!(h.client_sends(c, &[0xff, 0, 1, 2]).is_empty()); // neither STUN nor ChannelData
    assert!(h.client_sends(c, &[0, 1, 0, 4, 0x21, 0x12]).is_empty()); // truncated STUN
    assert!(h.client_sends(c, &[0x40, 0, 0, 9, 1]).is_empty()); // truncated ChannelData
    assert!(h.client_sends(c, &[]).is_empty());
    // A valid Binding request with its FINGERPRINT corrupted.
    let mut msg = StunMessage::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    msg.add_attribute(stun_codec::rfc5389::attributes::Fingerprint::new(&msg).unwrap());
    let mut bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(h.client_sends(c, &bytes).is_empty());
    assert_eq!(h.server.stats().malformed, 5);
}

#[test]
fn responses_and_indications_from_clients_are_dropped() {
    let mut h = Harness::new();
    let msg = StunMessage::new(
        MessageClass::SuccessResponse,
        BINDING,
        TransactionId::new([1; 12]),
    );
    let bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
    assert!(h.client_sends(addr("192.0.2.1:1"), &bytes).is_empty());
    assert_eq!(h.server.stats().dropped_other, 1);
}

#[test]
fn unknown_method_is_400() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let msg = c.unsigned(Method::new(0x0ff).unwrap(), vec![]);
    assert_eq!(code(&h.request(c.addr, msg)), Some(400));
}

// ---- authentication --------------------------------------------------------------------------

#[test]
fn allocate_without_credentials_is_401_with_realm_and_nonce() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let msg = c.unsigned(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let r = h.request(c.addr, msg);
    assert_eq!(code(&r), Some(401));
    assert_eq!(r.get_attribute::<Realm>().unwrap().text(), REALM);
    assert!(!r.get_attribute::<Nonce>().unwrap().value().is_empty());
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn wrong_expired_or_malformed_credentials_are_401() {
    let mut h = Harness::new();
    for credentials in [
        rest_credentials("other-secret", UNIX + 3600, "alice"), // wrong password
        rest_credentials(SECRET, UNIX - 1, "alice"),            // expired
        ("alice".to_owned(), "pw".to_owned()),                  // not a REST username
    ] {
        let mut c = Client::with_credentials("192.0.2.1:1000", credentials);
        c.login(&mut h);
        let r = c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()]);
        assert_eq!(code(&r), Some(401));
        assert!(r.get_attribute::<Nonce>().is_some());
    }
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn credentials_expire_with_the_callers_clock() {
    let mut h = Harness::new();
    let mut c = Client::with_credentials(
        "192.0.2.1:1000",
        rest_credentials(SECRET, UNIX + 100, "alice"),
    );
    c.allocate(&mut h);
    h.advance(Duration::from_secs(101));
    c.login(&mut h); // fresh nonce: the old one is still valid, but be explicit
    let r = c.call(&mut h, REFRESH, vec![]);
    assert_eq!(code(&r), Some(401));
    // The caller can move wall-clock time independently of the monotonic clock.
    h.server.set_unix_time(h.now, UNIX);
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), None);
}

#[test]
fn integrity_differing_in_one_byte_is_401() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let msg = c.signed(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
    // MESSAGE-INTEGRITY is the last attribute: its 20-byte value ends the message.
    for at in [bytes.len() - 20, bytes.len() - 1] {
        let mut forged = bytes.clone();
        forged[at] ^= 0x01;
        let out = h.client_sends(c.addr, &forged);
        assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), Some(401));
    }
    let out = h.client_sends(c.addr, &bytes);
    assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), None);
}

#[test]
fn integrity_without_username_is_400() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let mut msg = c.unsigned(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    msg.add_attribute(MessageIntegrity::new_short_term_credential(&msg, "x").unwrap());
    assert_eq!(code(&h.request(c.addr, msg)), Some(400));
}

#[test]
fn stale_nonce_is_438_with_a_new_nonce() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    h.advance(Duration::from_secs(601));
    let r = c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()]);
    assert_eq!(code(&r), Some(438));
    let fresh = r.get_attribute::<Nonce>().unwrap().value().to_owned();
    assert_ne!(Some(&fresh), c.nonce.as_ref());
    c.nonce = Some("not-one-of-ours".to_owned());
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(438)
    );
    c.nonce = Some(fresh);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        None
    );
}

#[test]
fn nonce_is_bound_to_the_client_address() {
    let mut h = Harness::new();
    let mut a = Client::new("192.0.2.1:1000");
    a.login(&mut h);
    let mut b = Client::new("192.0.2.1:1001");
    b.nonce = a.nonce.clone();
    assert_eq!(
        code(&b.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(438)
    );
}

/// `signed` encoded, with `extra` appended after its MESSAGE-INTEGRITY and the header's length
/// fixed up: what anyone who captured the request can produce without the key.
fn append_after_integrity(signed: StunMessage, extra: Attribute) -> Vec<u8> {
    let mut bytes = MessageEncoder::new().encode_into_bytes(signed).unwrap();
    let mut carrier = StunMessage::new(MessageClass::Request, BINDING, TransactionId::new([0; 12]));
    carrier.add_attribute(extra);
    let carrier = MessageEncoder::new().encode_into_bytes(carrier).unwrap();
    bytes.extend_from_slice(&carrier[20..]);
    let len = u16::try_from(bytes.len() - 20).unwrap();
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

#[test]
fn peer_appended_after_integrity_to_create_permission_is_ignored() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let (signed_peer, appended) = (addr("198.51.100.1:1"), addr("198.51.100.66:1"));
    let msg = c.signed(
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(signed_peer).into()],
    );
    let bytes = append_after_integrity(msg, XorPeerAddress::new(appended).into());
    let out = h.client_sends(c.addr, &bytes);
    // The signed part stands on its own and is served (RFC 8489 section 14.5: ignore, not refuse).
    assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), None);
    let permissions = &h.server.allocations().next().unwrap().permissions;
    assert_eq!(permissions, &[signed_peer.ip()]);
}

#[test]
fn peer_appended_after_integrity_to_channel_bind_is_ignored() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    // A signed ChannelBind without a peer is incomplete; appending one must not complete it.
    let msg = c.signed(CHANNEL_BIND, vec![ChannelNumber::new(0x4000).into()]);
    let appended = addr("198.51.100.66:1");
    let bytes = append_after_integrity(msg, XorPeerAddress::new(appended).into());
    let out = h.client_sends(c.addr, &bytes);
    assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), Some(400));
    let allocation = h.server.allocations().next().unwrap();
    assert!(allocation.channels.is_empty());
    assert!(allocation.permissions.is_empty());
    // A complete signed ChannelBind with a second peer appended binds the signed peer only.
    let signed_peer = addr("198.51.100.1:1");
    let msg = c.signed(
        CHANNEL_BIND,
        vec![
            ChannelNumber::new(0x4000).into(),
            XorPeerAddress::new(signed_peer).into(),
        ],
    );
    let bytes = append_after_integrity(msg, XorPeerAddress::new(appended).into());
    let out = h.client_sends(c.addr, &bytes);
    assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), None);
    let allocation = h.server.allocations().next().unwrap();
    assert_eq!(allocation.channels, [(0x4000, signed_peer)]);
    assert_eq!(allocation.permissions, [signed_peer.ip()]);
}

#[test]
fn unknown_attribute_after_integrity_is_ignored() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let msg = c.signed(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let mut bytes = append_after_integrity(msg, Lifetime::from_u32(60).into());
    // Turn the appended LIFETIME into an unknown comprehension-required attribute (0x7F01).
    let at = bytes.len() - 8;
    bytes[at..at + 2].copy_from_slice(&0x7F01u16.to_be_bytes());
    let out = h.client_sends(c.addr, &bytes);
    assert_eq!(code(&decode_stun(&out[0].payload).unwrap()), None);
}

// ---- Allocate ------------------------------------------------------------------------------

#[test]
fn allocate_succeeds_with_relayed_and_mapped_addresses() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let r = c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()]);
    assert_eq!(code(&r), None);
    let relay = r.get_attribute::<XorRelayAddress>().unwrap().address();
    assert_eq!(relay.ip(), RELAY_IP);
    assert!((50000..=50999).contains(&relay.port()));
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(600)
    );
    assert_eq!(
        r.get_attribute::<XorMappedAddress>().unwrap().address(),
        c.addr
    );
    assert_eq!(
        h.events(),
        [Event::AllocationCreated {
            relay,
            five_tuple: FiveTuple {
                client: c.addr,
                server: listen()
            }
        }]
    );
    assert_eq!(
        h.server.poll_timeout_reason(),
        Some((h.now + Duration::from_secs(600), TimerKind::Allocation))
    );
}

#[test]
fn relay_ports_come_from_the_seed() {
    let relay = |seed_extra: bool| {
        let mut h = Harness::new();
        if seed_extra {
            h.server = Server::new(h.server.config().clone(), [8; 32], h.now, UNIX).unwrap();
        }
        Client::new("192.0.2.1:1000").allocate(&mut h)
    };
    assert_eq!(relay(false), relay(false));
    assert_ne!(relay(false), relay(true));
}

#[test]
fn retransmitted_allocate_gets_the_same_response() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let msg = c.signed(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
    let first = h.client_sends(c.addr, &bytes);
    let second = h.client_sends(c.addr, &bytes);
    assert_eq!(first, second);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.stats().allocations_created, 1);
}

#[test]
fn second_allocate_on_the_same_five_tuple_is_437() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let r = c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()]);
    assert_eq!(code(&r), Some(437));
    // error responses to authenticated requests are signed
    check_integrity(&r, &c);
}

#[test]
fn requests_without_allocation_are_437() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), Some(437));
    let peer = XorPeerAddress::new(addr("198.51.100.1:9"));
    assert_eq!(
        code(&c.call(&mut h, CREATE_PERMISSION, vec![peer.clone().into()])),
        Some(437)
    );
    assert_eq!(
        code(&c.call(
            &mut h,
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4000).into(), peer.into()]
        )),
        Some(437)
    );
}

#[test]
fn other_username_on_an_allocation_is_441() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let (username, password) = rest_credentials(SECRET, UNIX + 3600, "mallory");
    c.username = username;
    c.password = password;
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), Some(441));
}

#[test]
fn renewed_credentials_of_the_same_user_keep_the_allocation() {
    let mut h = Harness::new();
    let mut c = Client::with_credentials(
        "192.0.2.1:1000",
        rest_credentials(SECRET, UNIX + 300, "alice"),
    );
    c.allocate(&mut h);
    let old = (c.username.clone(), c.password.clone());
    // The portal's renewal, an hour later in expiry: the same allocation takes it.
    (c.username, c.password) = rest_credentials(SECRET, UNIX + 4200, "alice");
    let refreshed = c.call(&mut h, REFRESH, vec![]);
    assert_eq!(refreshed.class(), MessageClass::SuccessResponse);
    assert_eq!(h.server.stats().credentials_renewed, 1);
    assert_eq!(h.server.stats().allocations_created, 1);
    // The old credentials still work until they expire (requests in flight), but do not take
    // the allocation back.
    (c.username, c.password) = old;
    assert_eq!(
        c.call(&mut h, REFRESH, vec![]).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.stats().credentials_renewed, 1);
    // Past the old expiry, only the renewed ones are accepted; nothing was lost on the way.
    h.advance(Duration::from_secs(301));
    c.login(&mut h);
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), Some(401));
    assert_eq!(h.server.stats().expired_credentials, 1);
    (c.username, c.password) = rest_credentials(SECRET, UNIX + 4200, "alice");
    c.login(&mut h);
    assert_eq!(
        c.call(&mut h, REFRESH, vec![]).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.stats().allocations_expired, 0);
}

#[test]
fn expired_credentials_are_counted_only_when_genuine() {
    let mut h = Harness::new();
    let mut c = Client::with_credentials(
        "192.0.2.1:1000",
        rest_credentials(SECRET, UNIX - 1, "alice"),
    );
    c.login(&mut h);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(401)
    );
    assert_eq!(h.server.stats().expired_credentials, 1);
    // The same expired username with a guessed password is just a wrong MAC.
    c.password = "guess".to_owned();
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(401)
    );
    assert_eq!(h.server.stats().expired_credentials, 1);
}

#[test]
fn non_udp_transport_is_442_and_missing_transport_is_400() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(6).into()])),
        Some(442)
    );
    assert_eq!(code(&c.call(&mut h, ALLOCATE, vec![])), Some(400));
}

#[test]
fn ipv6_relay_is_440_and_dont_fragment_is_420() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let udp: Attribute = RequestedTransport::new(17).into();
    let v6 = RequestedAddressFamily::new(AddressFamily::V6).into();
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![udp.clone(), v6])),
        Some(440)
    );
    let r = c.call(&mut h, ALLOCATE, vec![udp.clone(), DontFragment.into()]);
    assert_eq!(code(&r), Some(420));
    assert_eq!(
        r.get_attribute::<UnknownAttributes>().unwrap().unknowns()[0].as_u16(),
        DontFragment::CODEPOINT
    );
    let v4 = RequestedAddressFamily::new(AddressFamily::V4).into();
    assert_eq!(code(&c.call(&mut h, ALLOCATE, vec![udp, v4])), None);
}

#[test]
fn allocation_limit_is_508() {
    let mut h = Harness::with(|c| c.max_allocations = 1);
    Client::new("192.0.2.1:1000").allocate(&mut h);
    let mut c = Client::new("192.0.2.1:1001");
    c.login(&mut h);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(508)
    );
}

#[test]
fn allocations_per_user_are_capped_at_486() {
    let mut h = Harness::new();
    for i in 0..MAX_ALLOCATIONS_PER_USER {
        let port = 1000 + u16::try_from(i).unwrap();
        Client::new(&format!("192.0.2.1:{port}")).allocate(&mut h);
    }
    // The same user with renewed credentials (another expiry) shares the quota.
    let renewed = rest_credentials(SECRET, UNIX + 7200, "alice");
    let mut c = Client::with_credentials("192.0.2.2:1000", renewed);
    c.login(&mut h);
    let allocate = vec![RequestedTransport::new(17).into()];
    assert_eq!(code(&c.call(&mut h, ALLOCATE, allocate.clone())), Some(486));
    assert_eq!(h.server.stats().allocation_quota_refusals, 1);
    assert_eq!(h.server.allocation_count(), MAX_ALLOCATIONS_PER_USER);
    // Another user is not affected.
    let mut bob = Client::with_credentials(
        "192.0.2.3:1000",
        rest_credentials(SECRET, UNIX + 3600, "bob"),
    );
    bob.allocate(&mut h);
    // Freeing one of alice's makes room for her again.
    let mut first = Client::new("192.0.2.1:1000");
    first.login(&mut h);
    let r = first.call(&mut h, REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert_eq!(code(&r), None);
    assert_eq!(code(&c.call(&mut h, ALLOCATE, allocate)), None);
}

#[test]
fn exhausted_port_range_is_508() {
    let mut h = Harness::with(|c| c.relay_ports = 50000..=50001);
    Client::new("192.0.2.1:1000").allocate(&mut h);
    Client::new("192.0.2.1:1001").allocate(&mut h);
    let mut c = Client::new("192.0.2.1:1002");
    c.login(&mut h);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(508)
    );
    // A port the runtime cannot bind is released and never handed out again.
    h.server.relay_port_unusable(50000);
    let freed = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::AllocationFreed { .. }))
        .count();
    assert_eq!(freed, 1);
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        Some(508)
    );
}

#[test]
fn even_port_reservation_and_token() {
    let mut h = Harness::new();
    let mut a = Client::new("192.0.2.1:1000");
    a.login(&mut h);
    let r = a.call(
        &mut h,
        ALLOCATE,
        vec![
            RequestedTransport::new(17).into(),
            EvenPort::new(true).into(),
        ],
    );
    assert_eq!(code(&r), None);
    let port = r
        .get_attribute::<XorRelayAddress>()
        .unwrap()
        .address()
        .port();
    assert_eq!(port % 2, 0);
    let token = r.get_attribute::<ReservationToken>().unwrap().token();

    let mut b = Client::new("192.0.2.1:1001");
    b.login(&mut h);
    let with_even = vec![
        RequestedTransport::new(17).into(),
        ReservationToken::new(token).into(),
        EvenPort::new(false).into(),
    ];
    assert_eq!(code(&b.call(&mut h, ALLOCATE, with_even)), Some(400));
    let wrong = vec![
        RequestedTransport::new(17).into(),
        ReservationToken::new(token ^ 1).into(),
    ];
    assert_eq!(code(&b.call(&mut h, ALLOCATE, wrong)), Some(508));
    let r = b.call(
        &mut h,
        ALLOCATE,
        vec![
            RequestedTransport::new(17).into(),
            ReservationToken::new(token).into(),
        ],
    );
    assert_eq!(
        r.get_attribute::<XorRelayAddress>()
            .unwrap()
            .address()
            .port(),
        port + 1
    );

    // An unused reservation expires.
    let mut c = Client::new("192.0.2.1:1002");
    c.login(&mut h);
    let r = c.call(
        &mut h,
        ALLOCATE,
        vec![
            RequestedTransport::new(17).into(),
            EvenPort::new(true).into(),
        ],
    );
    let token = r.get_attribute::<ReservationToken>().unwrap().token();
    h.advance(Duration::from_secs(31));
    let mut d = Client::new("192.0.2.1:1003");
    d.login(&mut h);
    let r = d.call(
        &mut h,
        ALLOCATE,
        vec![
            RequestedTransport::new(17).into(),
            ReservationToken::new(token).into(),
        ],
    );
    assert_eq!(code(&r), Some(508));
}

// ---- lifetimes -------------------------------------------------------------------------------

#[test]
fn lifetime_is_capped_and_may_be_shorter() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.login(&mut h);
    let r = c.call(
        &mut h,
        ALLOCATE,
        vec![
            RequestedTransport::new(17).into(),
            Lifetime::from_u32(60).into(),
        ],
    );
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(60)
    );
    let r = c.call(&mut h, REFRESH, vec![Lifetime::from_u32(100_000).into()]);
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(3600)
    );
    let r = c.call(&mut h, REFRESH, vec![]);
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::from_secs(600)
    );
}

#[test]
fn allocation_expires_and_frees_its_port() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    h.events();
    let deadline = h.server.poll_timeout().unwrap();
    h.server.handle_timeout(deadline - Duration::from_millis(1)); // early: no-op
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(599));
    assert!(h.events().is_empty());
    assert_eq!(
        code(&c.call(&mut h, REFRESH, vec![Lifetime::from_u32(10).into()])),
        None
    );
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.events(),
        [Event::AllocationFreed {
            relay,
            reason: FreeReason::Expired
        }]
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.poll_timeout(), None);
    c.login(&mut h); // the nonce has expired too
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), Some(437));
    // A new Allocate on the same 5-tuple works again.
    assert_eq!(
        code(&c.call(&mut h, ALLOCATE, vec![RequestedTransport::new(17).into()])),
        None
    );
}

#[test]
fn refresh_with_lifetime_zero_deletes() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    h.events();
    let r = c.call(&mut h, REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert_eq!(
        r.get_attribute::<Lifetime>().unwrap().lifetime(),
        Duration::ZERO
    );
    assert_eq!(
        h.events(),
        [Event::AllocationFreed {
            relay,
            reason: FreeReason::Deleted
        }]
    );
    assert_eq!(h.server.poll_timeout(), None);
    assert_eq!(code(&c.call(&mut h, REFRESH, vec![])), Some(437));
}

// ---- permissions and relaying ----------------------------------------------------------------

#[test]
fn peer_without_permission_is_dropped_and_counted() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let peer = addr("198.51.100.1:5000");
    assert!(h.peer_sends(peer, relay, b"hi").is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 1);
    assert!(h
        .client_sends(c.addr, &send_indication(peer, b"hi"))
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 2);
    // A permission is per IP: any port of the permitted IP passes.
    c.permit(&mut h, addr("198.51.100.1:1"));
    assert_eq!(h.peer_sends(peer, relay, b"hi").len(), 1);
    assert!(h
        .peer_sends(addr("198.51.100.2:5000"), relay, b"hi")
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 3);
}

#[test]
fn create_permission_needs_an_ipv4_peer() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    assert_eq!(code(&c.call(&mut h, CREATE_PERMISSION, vec![])), Some(400));
    let v6 = XorPeerAddress::new(addr("[2001:db8::1]:9")).into();
    assert_eq!(
        code(&c.call(&mut h, CREATE_PERMISSION, vec![v6])),
        Some(443)
    );
}

#[test]
fn send_and_data_indications() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let peer = addr("198.51.100.1:5000");
    c.permit(&mut h, peer);
    let out = h.client_sends(c.addr, &send_indication(peer, b"to peer"));
    assert_eq!(
        out,
        [Transmit {
            src: relay,
            dst: peer,
            payload: b"to peer".to_vec()
        }]
    );

    let out = h.peer_sends(peer, relay, b"to client");
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src, out[0].dst), (listen(), c.addr));
    let msg = decode_stun(&out[0].payload).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (MessageClass::Indication, DATA)
    );
    assert_eq!(
        msg.get_attribute::<XorPeerAddress>().unwrap().address(),
        peer
    );
    assert_eq!(msg.get_attribute::<Data>().unwrap().data(), b"to client");
    assert_eq!(
        (
            h.server.stats().send_indications,
            h.server.stats().data_indications
        ),
        (1, 1)
    );

    // Send indications without allocation are dropped and counted.
    assert!(h
        .client_sends(addr("192.0.2.9:9"), &send_indication(peer, b"x"))
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_allocation, 1);
}

#[test]
fn permission_expires() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let peer = addr("198.51.100.1:5000");
    c.permit(&mut h, peer);
    h.advance(Duration::from_secs(299));
    assert_eq!(h.peer_sends(peer, relay, b"x").len(), 1);
    c.permit(&mut h, peer); // refresh
    h.advance(Duration::from_secs(299));
    assert_eq!(h.peer_sends(peer, relay, b"x").len(), 1);
    h.advance(Duration::from_secs(1));
    assert!(h.peer_sends(peer, relay, b"x").is_empty());
    assert!(h
        .server
        .allocations()
        .next()
        .unwrap()
        .permissions
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 1);
}

#[test]
fn channel_data_both_directions() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let peer = addr("198.51.100.1:5000");
    assert_eq!(c.bind(&mut h, 0x4001, peer), None);
    // unpadded and padded ChannelData from the client
    for frame in [
        &[0x40, 0x01, 0, 3, b'a', b'b', b'c'][..],
        &[0x40, 0x01, 0, 3, b'a', b'b', b'c', 0][..],
    ] {
        let out = h.client_sends(c.addr, frame);
        assert_eq!(
            out,
            [Transmit {
                src: relay,
                dst: peer,
                payload: b"abc".to_vec()
            }]
        );
    }
    // the peer's datagram comes back as ChannelData, not a Data indication
    let out = h.peer_sends(peer, relay, b"xyz");
    assert_eq!(
        out,
        [Transmit {
            src: listen(),
            dst: c.addr,
            payload: vec![0x40, 0x01, 0, 3, b'x', b'y', b'z']
        }]
    );
    // the binding installed a permission for the peer's IP: other ports of it get Data indications
    let out = h.peer_sends(addr("198.51.100.1:5001"), relay, b"q");
    assert_eq!(decode_stun(&out[0].payload).unwrap().method(), DATA);
    // an unbound channel is dropped and counted
    assert!(h.client_sends(c.addr, &[0x40, 0x02, 0, 1, 0]).is_empty());
    let stats = *h.server.stats();
    assert_eq!(
        (
            stats.channel_data_from_clients,
            stats.channel_data_to_clients,
            stats.dropped_unbound_channel
        ),
        (2, 1, 1)
    );
}

#[test]
fn channel_bind_rules_are_400() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let (p1, p2) = (addr("198.51.100.1:1"), addr("198.51.100.2:2"));
    assert_eq!(c.bind(&mut h, 0x3fff, p1), Some(400));
    assert_eq!(c.bind(&mut h, 0x8000, p1), Some(400));
    assert_eq!(c.bind(&mut h, 0x7fff, p1), None); // RFC 8656 range, beyond RFC 5766's 0x4FFF
    assert_eq!(c.bind(&mut h, 0x7fff, p1), None); // refresh of the same pair
    assert_eq!(c.bind(&mut h, 0x7fff, p2), Some(400)); // channel taken
    assert_eq!(c.bind(&mut h, 0x4000, p1), Some(400)); // peer taken
    assert_eq!(
        code(&c.call(&mut h, CHANNEL_BIND, vec![XorPeerAddress::new(p1).into()])),
        Some(400)
    );
    assert_eq!(
        code(&c.call(
            &mut h,
            CHANNEL_BIND,
            vec![ChannelNumber::new(0x4000).into()]
        )),
        Some(400)
    );
    assert_eq!(c.bind(&mut h, 0x4000, addr("[2001:db8::1]:1")), Some(443));
}

#[test]
fn channel_binding_expires() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let peer = addr("198.51.100.1:1");
    assert_eq!(c.bind(&mut h, 0x4000, peer), None);
    h.advance(Duration::from_secs(290));
    c.permit(&mut h, peer); // keep the permission, not the channel
    h.advance(Duration::from_secs(290));
    assert_eq!(
        c.call(&mut h, REFRESH, vec![]).class(),
        MessageClass::SuccessResponse
    );
    c.permit(&mut h, peer);
    assert_eq!(h.client_sends(c.addr, &[0x40, 0, 0, 1, 7]).len(), 1);
    h.advance(Duration::from_secs(20)); // 600 s after the bind
    assert!(h.client_sends(c.addr, &[0x40, 0, 0, 1, 7]).is_empty());
    assert_eq!(h.server.stats().dropped_unbound_channel, 1);
    // data from the peer now arrives as a Data indication
    let out = h.peer_sends(peer, relay, b"x");
    assert_eq!(decode_stun(&out[0].payload).unwrap().method(), DATA);
    // and the channel number can be bound to another peer
    c.login(&mut h);
    assert_eq!(c.bind(&mut h, 0x4000, addr("198.51.100.2:2")), None);
}

#[test]
fn two_allocations_relay_to_each_other_inside_the_relay() {
    let mut h = Harness::new();
    let mut a = Client::new("192.0.2.1:1000");
    let mut b = Client::new("192.0.2.2:2000");
    let relay_a = a.allocate(&mut h);
    let relay_b = b.allocate(&mut h);
    assert_eq!(a.bind(&mut h, 0x4000, relay_b), None);
    // without b's permission for a's relay address, the datagram stops at b's relay
    assert!(h.client_sends(a.addr, &[0x40, 0, 0, 2, 1, 2]).is_empty());
    assert_eq!(h.server.stats().dropped_no_permission, 1);
    b.permit(&mut h, relay_a);
    let out = h.client_sends(a.addr, &[0x40, 0, 0, 2, 1, 2]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].src, out[0].dst), (listen(), b.addr));
    let msg = decode_stun(&out[0].payload).unwrap();
    assert_eq!(
        msg.get_attribute::<XorPeerAddress>().unwrap().address(),
        relay_a
    );
    // b answers with a Send indication; a gets it on its channel
    let out = h.client_sends(b.addr, &send_indication(relay_a, b"pong"));
    assert_eq!(
        out,
        [Transmit {
            src: listen(),
            dst: a.addr,
            payload: vec![0x40, 0, 0, 4, b'p', b'o', b'n', b'g']
        }]
    );
    assert_eq!(h.server.stats().relayed_internally, 3);
}

/// Peers refused by default, one per range, and the relay's own listening port.
const DENIED_PEERS: [&str; 13] = [
    "0.0.0.0:1",
    "0.1.2.3:1",
    "127.0.0.1:1",
    "10.0.0.1:1",
    "172.16.0.1:1",
    "172.31.255.254:1",
    "192.168.1.1:1",
    "169.254.169.254:80",
    "224.0.0.1:1",
    "239.255.255.250:1900",
    "255.255.255.255:1",
    "203.0.113.1:3478",
    "203.0.113.1:22",
];

#[test]
fn denied_peers_are_403_for_create_permission_and_channel_bind() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let public = addr("198.51.100.1:1");
    for (i, peer) in DENIED_PEERS.iter().map(|p| addr(p)).enumerate() {
        let r = c.call(
            &mut h,
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(peer).into()],
        );
        assert_eq!(code(&r), Some(403), "{peer}");
        // One denied peer refuses the whole request: the public one is not installed either.
        let r = c.call(
            &mut h,
            CREATE_PERMISSION,
            vec![
                XorPeerAddress::new(public).into(),
                XorPeerAddress::new(peer).into(),
            ],
        );
        assert_eq!(code(&r), Some(403), "{peer}");
        let channel = 0x4000 + u16::try_from(i).unwrap();
        assert_eq!(c.bind(&mut h, channel, peer), Some(403), "{peer}");
    }
    let allocation = h.server.allocations().next().unwrap();
    assert!(allocation.permissions.is_empty());
    assert!(allocation.channels.is_empty());
    assert_eq!(
        h.server.stats().forbidden_peers,
        3 * DENIED_PEERS.len() as u64
    );
}

#[test]
fn send_indication_to_a_denied_peer_is_dropped_and_counted() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    // A permission for the relay's own address, through one of its relay ports, is allowed
    // (relaying between allocations stays inside the relay) ...
    c.permit(&mut h, addr("203.0.113.1:50999"));
    // ... but it does not reach the relay's other ports.
    for peer in ["203.0.113.1:3478", "10.0.0.1:1", "127.0.0.1:53"] {
        assert!(h
            .client_sends(c.addr, &send_indication(addr(peer), b"x"))
            .is_empty());
    }
    assert_eq!(h.server.stats().forbidden_peers, 3);
    assert_eq!(h.server.stats().send_indications, 0);
}

#[test]
fn allow_peers_lifts_the_default_denial() {
    let mut h = Harness::with(|c| {
        c.allow_peers = vec![
            "10.0.0.0/8".parse().unwrap(),
            "203.0.113.1/32".parse().unwrap(),
        ];
    });
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    let (private, own) = (addr("10.1.2.3:5000"), addr("203.0.113.1:3478"));
    c.permit(&mut h, private);
    assert_eq!(c.bind(&mut h, 0x4000, own), None);
    c.login(&mut h);
    assert_eq!(c.bind(&mut h, 0x4001, addr("192.168.1.1:1")), Some(403));
    let out = h.client_sends(c.addr, &send_indication(private, b"x"));
    assert_eq!(
        out,
        [Transmit {
            src: relay,
            dst: private,
            payload: b"x".to_vec()
        }]
    );
    assert_eq!(h.server.stats().forbidden_peers, 1);
}

/// A public peer address per index, none of them denied.
fn public_peer(i: usize) -> SocketAddr {
    let i = u16::try_from(i).unwrap();
    let [hi, lo] = i.to_be_bytes();
    SocketAddr::new(Ipv4Addr::new(198, 51, hi, lo).into(), 9)
}

#[test]
fn permissions_per_allocation_are_capped_at_508() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    for i in 0..MAX_PERMISSIONS_PER_ALLOCATION {
        c.permit(&mut h, public_peer(i));
    }
    let over = public_peer(MAX_PERMISSIONS_PER_ALLOCATION);
    let r = c.call(
        &mut h,
        CREATE_PERMISSION,
        vec![XorPeerAddress::new(over).into()],
    );
    assert_eq!(code(&r), Some(508));
    // A ChannelBind to a new peer IP needs a permission too.
    assert_eq!(c.bind(&mut h, 0x4000, over), Some(508));
    // Refreshing held permissions, alone or in a ChannelBind, still works.
    c.permit(&mut h, public_peer(0));
    assert_eq!(c.bind(&mut h, 0x4000, public_peer(1)), None);
    let allocation = h.server.allocations().next().unwrap();
    assert_eq!(allocation.permissions.len(), MAX_PERMISSIONS_PER_ALLOCATION);
    assert!(!allocation.permissions.contains(&over.ip()));
    assert_eq!(h.server.stats().permission_quota_refusals, 2);
    // Once one expires there is room again.
    h.advance(Duration::from_secs(301));
    c.login(&mut h);
    c.permit(&mut h, over);
}

#[test]
fn peers_per_create_permission_are_capped_at_508() {
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    c.allocate(&mut h);
    let peers = |n: usize| -> Vec<Attribute> {
        (0..n)
            .map(|i| XorPeerAddress::new(public_peer(i)).into())
            .collect()
    };
    let r = c.call(
        &mut h,
        CREATE_PERMISSION,
        peers(MAX_PEERS_PER_CREATE_PERMISSION + 1),
    );
    assert_eq!(code(&r), Some(508));
    // Refused as a whole: none of them is installed.
    assert!(h
        .server
        .allocations()
        .next()
        .unwrap()
        .permissions
        .is_empty());
    assert_eq!(h.server.stats().permission_quota_refusals, 1);
    let r = c.call(
        &mut h,
        CREATE_PERMISSION,
        peers(MAX_PEERS_PER_CREATE_PERMISSION),
    );
    assert_eq!(code(&r), None);
    assert_eq!(
        h.server.allocations().next().unwrap().permissions.len(),
        MAX_PEERS_PER_CREATE_PERMISSION
    );
}

#[test]
fn datagram_to_a_relay_port_without_allocation_is_dropped() {
    let mut h = Harness::new();
    assert!(h
        .peer_sends(addr("198.51.100.1:1"), addr("203.0.113.1:50000"), b"x")
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_allocation, 1);
}

#[test]
fn channel_data_without_allocation_is_dropped() {
    let mut h = Harness::new();
    assert!(h
        .client_sends(addr("192.0.2.1:1"), &[0x40, 0, 0, 0])
        .is_empty());
    assert_eq!(h.server.stats().dropped_no_allocation, 1);
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(42);
    let mut h = Harness::new();
    let mut c = Client::new("192.0.2.1:1000");
    let relay = c.allocate(&mut h);
    c.bind(&mut h, 0x4000, addr("198.51.100.1:1"));
    let valid: Vec<Vec<u8>> = vec![
        MessageEncoder::new()
            .encode_into_bytes(c.signed(ALLOCATE, vec![RequestedTransport::new(17).into()]))
            .unwrap(),
        MessageEncoder::new()
            .encode_into_bytes(c.signed(REFRESH, vec![Lifetime::from_u32(60).into()]))
            .unwrap(),
        MessageEncoder::new()
            .encode_into_bytes(c.signed(
                CHANNEL_BIND,
                vec![
                    ChannelNumber::new(0x4001).into(),
                    XorPeerAddress::new(addr("198.51.100.2:2")).into(),
                ],
            ))
            .unwrap(),
        send_indication(addr("198.51.100.1:1"), b"hello"),
        vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3],
    ];
    for i in 0..20_000u32 {
        let bytes = if i % 4 == 0 {
            let len = rng.gen_range(0..64);
            (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
        } else {
            let mut bytes = valid[rng.gen_range(0..valid.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                bytes.truncate(rng.gen_range(0..bytes.len()));
            }
            bytes
        };
        if i % 3 == 0 {
            h.peer_sends(addr("198.51.100.1:1"), relay, &bytes);
        } else {
            h.client_sends(c.addr, &bytes);
        }
        h.events();
    }
    assert!(h.server.stats().malformed > 0);
}
