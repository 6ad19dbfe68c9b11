//! Structure-aware: a relay (`relay_sim::Server`) and a node's TURN client talking over a wire
//! the fuzzer controls, with an attacker on it.
//!
//! The input decodes (`arbitrary`) into a short list of [`Op`]s: let the honest traffic through
//! (`Pump`), let time pass, or act as an attacker who sees every datagram but knows no password
//! nor the TURN secret: well-formed STUN requests with random attributes and forged, expired or
//! wrong-password credentials (and nonces captured off the wire), ChannelData on any channel,
//! datagrams from peers to relayed addresses, replays of captured datagrams (to either side,
//! truncated, bit-flipped or extended), and forged responses to the node carrying the
//! transaction ids of its real requests.
//!
//! Properties:
//! - nothing panics;
//! - the relay never allocates for an unauthenticated request: allocations are only created
//!   while honest traffic or a replay from the node's own 5-tuple is delivered, and every
//!   allocation belongs to the node's 5-tuple;
//! - the relay never sends from a relayed address to a peer without a permission;
//! - the node never takes a relayed address the relay did not give it, even from an attacker
//!   who knows its transaction ids;
//! - attributes after MESSAGE-INTEGRITY are ignored (RFC 8489 section 14.5): an allocation
//!   holds permissions only for peers its owner signed for (the node: its peer; a user: the
//!   peers of its CreatePermission requests), also after captured requests were replayed from
//!   their 5-tuple with an XOR-PEER-ADDRESS appended;
//! - the relay's quotas hold against a user with valid credentials of its own (what any client
//!   of the portal has): at most `MAX_ALLOCATIONS_PER_USER` allocations per user and
//!   `MAX_PERMISSIONS_PER_ALLOCATION` permissions per allocation, the requests past them refused.
//!
//! Seeds: `arbitrary`-encoded, so not written by `gen_corpus.py` but kept from a fuzzing run,
//! minimised with `cargo +nightly fuzz cmin relay_ops`. Run: `cargo +nightly fuzz run relay_ops`;
//! `cargo +nightly fuzz fmt relay_ops <file>` prints an input as its list of operations.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Once;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use common::{add_fingerprint, add_integrity, attribute, attributes, channel_data, is_stun, stun};
use libfuzzer_sys::fuzz_target;
use node_core::ids::{GatewayId, RelayId};
use node_core::turn::RelayConfig;
use node_core::{Credentials, Node, Psk, PublicKey, Role, StaticSecret};

const SECRET: &str = "fuzz-secret";
const REALM: &str = "fuzz";
const UNIX: u64 = 1_800_000_000;
const RELAY_IP: [u8; 4] = [203, 0, 113, 1];
const RELAY: SocketAddr = v4([203, 0, 113, 1], 3478);
const NODE: SocketAddr = v4([192, 0, 2, 10], 40000);
/// The node's peer: its candidate makes the node ask for a permission and a channel.
const PEER: SocketAddr = v4([198, 51, 100, 7], 51820);
const PEER_CANDIDATE: &str = "candidate:1 1 udp 2130706431 198.51.100.7 51820 typ host";
/// At most this many operations per input: sequences stay short and cheap.
const MAX_OPS: usize = 24;

const fn v4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), port)
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The honest network: every queued datagram between node and relay is delivered, until
    /// both are quiet.
    Pump,
    /// Time passes (in quarter seconds) and both sides run their timers.
    Advance(u8),
    /// A STUN message to the relay's listening port.
    Request {
        from: Src,
        method: Method,
        class: Class,
        creds: Creds,
        attrs: Vec<Attr>,
        fingerprint: bool,
    },
    /// ChannelData to the relay's listening port.
    ChannelData {
        from: Src,
        channel: u16,
        /// A length field that may disagree with the payload.
        declared: Option<u16>,
        payload: Vec<u8>,
    },
    /// A datagram from the outside to a relay port (one that was allocated, or any).
    FromPeer {
        from: Src,
        port: Option<u16>,
        payload: Vec<u8>,
    },
    /// A captured datagram the node sent to the relay, sent again (edited) from `from`.
    ReplayToRelay { index: u8, from: Src, edit: Edit },
    /// A captured datagram the relay sent to the node, sent again (edited) from the relay.
    ReplayToNode { index: u8, edit: Edit },
    /// A STUN response to the node from the relay's address, with a transaction id it used.
    ForgeToNode {
        tid: Tid,
        method: Method,
        class: Class,
        attrs: Vec<Attr>,
        creds: Creds,
    },
    /// ChannelData to the node from the relay's address.
    ChannelDataToNode { channel: u16, payload: Vec<u8> },
    /// A captured request of the node's (or of a user's), sent again from its 5-tuple with an
    /// XOR-PEER-ADDRESS appended after its MESSAGE-INTEGRITY (the header's length counting it).
    ReplayWithPeer { index: u8, peer: u8, of_user: bool },
    /// A relay user with valid credentials of its own, from an attacker's address.
    User { from: u8, action: UserAction },
}

/// What a user with valid credentials asks its relay for.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum UserAction {
    Allocate,
    /// CreatePermission requests for `count` distinct peers, at most
    /// `MAX_PEERS_PER_CREATE_PERMISSION` per request.
    Permissions { count: u16 },
    ChannelBind { channel: u16, peer: u8 },
}

/// Who a datagram claims to come from.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Src {
    /// The node's own 5-tuple (spoofed).
    Node,
    /// The node's peer (spoofed).
    Peer,
    Attacker(u8),
    AttackerV6(u8),
}

impl Src {
    fn addr(self) -> SocketAddr {
        match self {
            Self::Node => NODE,
            Self::Peer => PEER,
            Self::Attacker(n) => v4([198, 18, 0, n], 1024 + u16::from(n)),
            Self::AttackerV6(n) => SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n))),
                2048,
            ),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Method {
    Binding,
    Allocate,
    Refresh,
    Send,
    Data,
    CreatePermission,
    ChannelBind,
    Other(u16),
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Self::Binding => 0x001,
            Self::Allocate => 0x003,
            Self::Refresh => 0x004,
            Self::Send => 0x006,
            Self::Data => 0x007,
            Self::CreatePermission => 0x008,
            Self::ChannelBind => 0x009,
            Self::Other(m) => m & 0x0FFF,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// RFC 8489 §5: the class bits are interleaved with the method bits.
fn message_type(method: Method, class: Class) -> u16 {
    let m = method.code();
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// What the attacker signs with. None of these is a credential the relay may accept.
#[derive(Arbitrary, Debug, Clone)]
enum Creds {
    None,
    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY all made up.
    Garbage {
        username: String,
        realm: String,
        nonce: Vec<u8>,
        mac: [u8; 20],
    },
    /// A REST credential that expired `ago` seconds before now, with its correct password
    /// (leaked credentials outlive their expiry), and a nonce seen on the wire.
    Expired {
        ago: u16,
        nonce: u8,
    },
    /// The node's real username with a wrong password, and a nonce seen on the wire.
    WrongPassword {
        password: String,
        nonce: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum Attr {
    Lifetime(u32),
    RequestedTransport(u8),
    XorPeer { peer: Src, port: u16 },
    ChannelNumber(u16),
    Data(Vec<u8>),
    XorRelayed { ip: [u8; 4], port: u16 },
    XorMapped { ip: [u8; 4], port: u16 },
    ErrorCode { class: u8, number: u8 },
    EvenPort(u8),
    ReservationToken([u8; 8]),
    DontFragment,
    Raw { kind: u16, value: Vec<u8> },
}

/// A transaction id: one the node really used (seen on the wire), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tid {
    Seen(u8),
    Any([u8; 12]),
}

#[derive(Arbitrary, Debug, Clone)]
enum Edit {
    None,
    Truncate(u16),
    Flip { at: u16, xor: u8 },
    Append(Vec<u8>),
}

impl Edit {
    fn apply(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Self::None => {}
            Self::Truncate(n) => bytes.truncate(usize::from(*n)),
            Self::Flip { at, xor } => {
                if !bytes.is_empty() {
                    let i = usize::from(*at) % bytes.len();
                    bytes[i] ^= xor;
                }
            }
            Self::Append(more) => bytes.extend_from_slice(more),
        }
        bytes
    }
}

/// The relay, the node, the wire between them, and what an eavesdropper collected.
struct World {
    now: Instant,
    start: Instant,
    server: relay_sim::Server,
    node: Node<GatewayId>,
    to_relay: VecDeque<Vec<u8>>,
    to_node: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Every datagram the node sent to the relay, and the relay to the node.
    sent_by_node: Vec<Vec<u8>>,
    sent_to_node: Vec<Vec<u8>>,
    /// Transaction ids of the node's requests, and nonces the relay handed out (to anyone).
    tids: Vec<[u8; 12]>,
    nonces: Vec<Vec<u8>>,
    /// Relayed addresses the relay gave the node's 5-tuple.
    granted: BTreeSet<SocketAddr>,
    /// Whether delivering the current op may legitimately create an allocation.
    honest: bool,
    /// The nonce the relay last gave each address.
    nonce_for: BTreeMap<SocketAddr, Vec<u8>>,
    /// Addresses a user with valid credentials sent from: allocations of theirs are legitimate.
    users: BTreeSet<SocketAddr>,
    /// The users' signed requests, and the peers they signed permissions for.
    sent_by_users: Vec<(SocketAddr, Vec<u8>)>,
    user_peers: BTreeSet<IpAddr>,
    /// Transaction ids made up so far.
    tids_made: u64,
}

impl World {
    fn new() -> Self {
        // The clock starts at an arbitrary point: nothing reads real time after this.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let server = relay_sim::Server::new(
            relay_sim::Config::new(REALM, SECRET, Ipv4Addr::from(RELAY_IP)),
            [5; 32],
            start,
            UNIX,
        )
        .expect("a valid relay configuration");
        let mut node: Node<GatewayId> = Node::new(Role::Client, 1, start);
        node.add_local_address(NODE);
        let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 3600, "c1");
        node.add_relay(
            RelayConfig {
                id: RelayId(1),
                server: RELAY,
                username,
                password,
            },
            start,
        );
        // A connection with the peer's candidate: the node asks the relay for a permission
        // and a channel to it.
        let peer_key = PublicKey::from(&StaticSecret::from([7; 32]));
        let local = node.new_credentials();
        let remote = Credentials {
            ufrag: "peer".to_owned(),
            password: "peer-password-peer-password".to_owned(),
        };
        node.upsert_connection(GatewayId(1), peer_key, Psk([1; 32]), local, remote, start);
        node.add_remote_candidate(GatewayId(1), PEER_CANDIDATE, start);
        let mut world = Self {
            now: start,
            start,
            server,
            node,
            to_relay: VecDeque::new(),
            to_node: VecDeque::new(),
            sent_by_node: Vec::new(),
            sent_to_node: Vec::new(),
            tids: Vec::new(),
            nonces: Vec::new(),
            granted: BTreeSet::new(),
            honest: false,
            nonce_for: BTreeMap::new(),
            users: BTreeSet::new(),
            sent_by_users: Vec::new(),
            user_peers: BTreeSet::new(),
            tids_made: 0,
        };
        world.collect();
        world
    }

    /// Moves what both sides want to send onto the wire, recording what an eavesdropper sees,
    /// and checks the properties.
    fn collect(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            let bytes = t.payload.to_vec();
            if t.dst == RELAY {
                if is_stun(&bytes) {
                    let mut tid = [0; 12];
                    tid.copy_from_slice(&bytes[8..20]);
                    self.tids.push(tid);
                }
                self.sent_by_node.push(bytes.clone());
                self.to_relay.push_back(bytes);
            }
            // ICE checks straight to the peer go nowhere: nobody answers them.
        }
        while self.node.poll_event().is_some() {}
        let allocations: Vec<_> = self.server.allocations().collect();
        while let Some(t) = self.server.poll_transmit() {
            if is_stun(&t.payload) {
                for (kind, value) in attributes(&t.payload) {
                    if kind == 0x0015 {
                        if self.nonces.len() < 64 {
                            self.nonces.push(value.to_vec());
                        }
                        if self.nonce_for.len() < 1024 || self.nonce_for.contains_key(&t.dst) {
                            self.nonce_for.insert(t.dst, value.to_vec());
                        }
                    }
                }
            }
            if t.src.port() != RELAY.port() {
                // From a relayed address to a peer: only where the client allowed it.
                let allowed = allocations
                    .iter()
                    .any(|a| a.relay == t.src && a.permissions.contains(&t.dst.ip()));
                assert!(allowed, "relayed to {} without a permission", t.dst);
            } else if t.dst == NODE {
                self.sent_to_node.push(t.payload.clone());
                self.to_node.push_back((t.src, t.payload));
            }
        }
        while self.server.poll_event().is_some() {}
        self.check();
    }

    fn check(&mut self) {
        let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.server.allocations() {
            let max = relay_sim::MAX_PERMISSIONS_PER_ALLOCATION;
            assert!(
                a.permissions.len() <= max,
                "{} holds {} permissions, more than {max}",
                a.relay,
                a.permissions.len()
            );
            *per_user.entry(a.username.clone()).or_default() += 1;
            if self.users.contains(&a.five_tuple.client) {
                assert!(
                    a.permissions.iter().all(|ip| self.user_peers.contains(ip)),
                    "a user's allocation has permissions it never signed for: {:?}",
                    a.permissions
                );
                continue;
            }
            assert_eq!(
                a.five_tuple.client, NODE,
                "the relay allocated for {} without credentials",
                a.five_tuple.client
            );
            // The node only ever asks for its peer: anything else came from bytes after the
            // integrity of a replayed request.
            assert!(
                a.permissions.iter().all(|ip| *ip == PEER.ip()),
                "the node's allocation has permissions it never asked for: {:?}",
                a.permissions
            );
            assert!(
                a.channels.iter().all(|(_, peer)| *peer == PEER),
                "the node's allocation has channels it never asked for: {:?}",
                a.channels
            );
            self.granted.insert(a.relay);
        }
        // Usernames are `<expiry>:<user>`; every user op signs with one expiry per user.
        let max = relay_sim::MAX_ALLOCATIONS_PER_USER;
        for (user, n) in per_user {
            assert!(n <= max, "user {user} holds {n} allocations, more than {max}");
        }
        if let Some(relayed) = self.node.relayed_address(RelayId(1)) {
            assert!(
                self.granted.contains(&relayed),
                "the node took the relayed address {relayed}, which the relay never gave it"
            );
        }
    }

    fn pump(&mut self) {
        for _ in 0..16 {
            if self.to_relay.is_empty() && self.to_node.is_empty() {
                break;
            }
            // One datagram at a time, so that what the relay sends is checked against the
            // permissions of that moment.
            while let Some(bytes) = self.to_relay.pop_front() {
                self.server.handle_input(self.now, NODE, RELAY, &bytes);
                self.collect();
            }
            while let Some((from, bytes)) = self.to_node.pop_front() {
                let _ = self.node.decapsulate(NODE, from, &bytes, self.now);
                self.collect();
            }
        }
    }

    fn deliver_to_relay(&mut self, from: SocketAddr, local: SocketAddr, bytes: &[u8]) {
        let created = self.server.stats().allocations_created;
        self.server.handle_input(self.now, from, local, bytes);
        if !self.honest {
            assert_eq!(
                self.server.stats().allocations_created,
                created,
                "an attacker's datagram from {from} created an allocation: {bytes:02x?}"
            );
        }
        self.collect();
    }

    fn deliver_to_node(&mut self, bytes: &[u8]) {
        let _ = self.node.decapsulate(NODE, RELAY, bytes, self.now);
        self.collect();
    }

    fn apply(&mut self, op: &Op) {
        self.honest = false;
        match op {
            Op::Pump => {
                self.honest = true;
                self.pump();
            }
            Op::Advance(quarters) => {
                self.now += Duration::from_millis(250 * u64::from(*quarters));
                self.server.handle_timeout(self.now);
                self.node.handle_timeout(self.now);
                self.collect();
            }
            Op::Request {
                from,
                method,
                class,
                creds,
                attrs,
                fingerprint,
            } => {
                let tid = self.fresh_tid();
                let bytes = self.message(message_type(*method, *class), tid, attrs, creds);
                let mut bytes = bytes;
                if *fingerprint {
                    add_fingerprint(&mut bytes);
                }
                self.deliver_to_relay(from.addr(), RELAY, &bytes);
            }
            Op::ChannelData {
                from,
                channel,
                declared,
                payload,
            } => {
                let mut bytes = channel_data(*channel, payload);
                if let Some(len) = declared {
                    bytes[2..4].copy_from_slice(&len.to_be_bytes());
                }
                self.deliver_to_relay(from.addr(), RELAY, &bytes);
            }
            Op::FromPeer {
                from,
                port,
                payload,
            } => {
                let port = match port {
                    Some(p) => *p,
                    None => self.granted.first().map_or(49152, SocketAddr::port),
                };
                self.deliver_to_relay(from.addr(), SocketAddr::new(RELAY.ip(), port), payload);
            }
            Op::ReplayToRelay { index, from, edit } => {
                let Some(bytes) = pick(&self.sent_by_node, *index) else {
                    return;
                };
                // A replay from the node's own 5-tuple is the node's request again: TURN has
                // no replay protection beyond the nonce, so it may re-create what it made.
                self.honest = matches!(from, Src::Node);
                let bytes = edit.apply(bytes);
                self.deliver_to_relay(from.addr(), RELAY, &bytes);
            }
            Op::ReplayToNode { index, edit } => {
                let Some(bytes) = pick(&self.sent_to_node, *index) else {
                    return;
                };
                let bytes = edit.apply(bytes);
                self.deliver_to_node(&bytes);
            }
            Op::ForgeToNode {
                tid,
                method,
                class,
                attrs,
                creds,
            } => {
                let tid = match tid {
                    Tid::Seen(i) => match pick(&self.tids, *i) {
                        Some(t) => t,
                        None => return,
                    },
                    Tid::Any(t) => *t,
                };
                let bytes = self.message(message_type(*method, *class), tid, attrs, creds);
                self.deliver_to_node(&bytes);
            }
            Op::ChannelDataToNode { channel, payload } => {
                self.deliver_to_node(&channel_data(*channel, payload));
            }
            Op::ReplayWithPeer {
                index,
                peer,
                of_user,
            } => {
                let captured = if *of_user {
                    pick(&self.sent_by_users, *index)
                } else {
                    pick(&self.sent_by_node, *index).map(|b| (NODE, b))
                };
                let Some((from, bytes)) = captured else {
                    return;
                };
                // 198.18.1.0/24: no request is ever signed for those.
                let appended = v4([198, 18, 1, *peer], 9);
                let Some(bytes) = with_peer_after_integrity(&bytes, appended) else {
                    return;
                };
                // From the request's own 5-tuple: what the relay makes of the request itself
                // is legitimate, only the appended peer is not.
                self.honest = true;
                self.deliver_to_relay(from, RELAY, &bytes);
            }
            Op::User { from, action } => {
                self.honest = true;
                self.user(Src::Attacker(*from).addr(), *action);
            }
        }
    }

    /// A request of a user with valid credentials (user `u<n>`, two users in all, so that
    /// several addresses share one user's quota), after the unauthenticated round trip that
    /// gets the address its nonce.
    fn user(&mut self, from: SocketAddr, action: UserAction) {
        self.users.insert(from);
        if !self.nonce_for.contains_key(&from) {
            let tid = self.fresh_tid();
            let mut body = Vec::new();
            attribute(&mut body, 0x0019, &[17, 0, 0, 0]);
            let bytes = stun(message_type(Method::Allocate, Class::Request), tid, &body);
            self.deliver_to_relay(from, RELAY, &bytes);
        }
        let Some(nonce) = self.nonce_for.get(&from).cloned() else {
            return;
        };
        let name = format!("u{}", from.port() % 2);
        let (username, password) = relay_sim::auth::rest_credentials(SECRET, UNIX + 3600, &name);
        let requests: Vec<(Method, Vec<u8>)> = match action {
            UserAction::Allocate => {
                let mut body = Vec::new();
                attribute(&mut body, 0x0019, &[17, 0, 0, 0]);
                vec![(Method::Allocate, body)]
            }
            UserAction::Permissions { count } => {
                let per = relay_sim::MAX_PEERS_PER_CREATE_PERMISSION;
                let peers: Vec<u16> = (0..count.min(600)).collect();
                peers
                    .chunks(per)
                    .map(|chunk| {
                        let mut body = Vec::new();
                        for n in chunk {
                            let [hi, lo] = n.to_be_bytes();
                            let ip = [198, 51, hi, lo];
                            self.user_peers.insert(IpAddr::from(ip));
                            attribute(&mut body, 0x0012, &common::xor_address_v4(ip, 1));
                        }
                        (Method::CreatePermission, body)
                    })
                    .collect()
            }
            UserAction::ChannelBind { channel, peer } => {
                let mut body = Vec::new();
                let [a, b] = channel.to_be_bytes();
                attribute(&mut body, 0x000C, &[a, b, 0, 0]);
                let ip = [198, 51, 0, peer];
                self.user_peers.insert(IpAddr::from(ip));
                attribute(&mut body, 0x0012, &common::xor_address_v4(ip, 1));
                vec![(Method::ChannelBind, body)]
            }
        };
        for (method, mut body) in requests {
            attribute(&mut body, 0x0006, username.as_bytes());
            attribute(&mut body, 0x0014, REALM.as_bytes());
            attribute(&mut body, 0x0015, &nonce);
            let tid = self.fresh_tid();
            let mut bytes = stun(message_type(method, Class::Request), tid, &body);
            add_integrity(&mut bytes, &username, REALM, &password);
            if self.sent_by_users.len() < 64 {
                self.sent_by_users.push((from, bytes.clone()));
            }
            self.deliver_to_relay(from, RELAY, &bytes);
        }
    }

    fn fresh_tid(&mut self) -> [u8; 12] {
        self.tids_made += 1;
        let n = self.tids_made;
        let mut tid = [0xA5; 12];
        tid[..8].copy_from_slice(&n.to_be_bytes());
        tid
    }

    /// A STUN message with `attrs`, signed as `creds` says.
    fn message(&self, msg_type: u16, tid: [u8; 12], attrs: &[Attr], creds: &Creds) -> Vec<u8> {
        let mut body = Vec::new();
        for a in attrs.iter().take(8) {
            encode(&mut body, a);
        }
        let signed = match creds {
            Creds::None => None,
            Creds::Garbage {
                username,
                realm,
                nonce,
                mac,
            } => {
                attribute(&mut body, 0x0006, truncated(username.as_bytes(), 512));
                attribute(&mut body, 0x0014, truncated(realm.as_bytes(), 512));
                attribute(&mut body, 0x0015, truncated(nonce, 512));
                attribute(&mut body, 0x0008, mac);
                None
            }
            Creds::Expired { ago, nonce } => {
                let expiry = UNIX + self.elapsed_secs() - u64::from(*ago).max(1);
                let (username, password) = relay_sim::auth::rest_credentials(SECRET, expiry, "x");
                Some((username, password, *nonce))
            }
            Creds::WrongPassword { password, nonce } => {
                let (username, _) = relay_sim::auth::rest_credentials(SECRET, UNIX + 3600, "c1");
                Some((username, password.clone(), *nonce))
            }
        };
        if let Some((username, _, nonce)) = &signed {
            attribute(&mut body, 0x0006, username.as_bytes());
            attribute(&mut body, 0x0014, REALM.as_bytes());
            let nonce = pick(&self.nonces, *nonce).unwrap_or_else(|| b"no-nonce-yet".to_vec());
            attribute(&mut body, 0x0015, &nonce);
        }
        let mut message = stun(msg_type, tid, &body);
        if let Some((username, password, _)) = &signed {
            add_integrity(&mut message, username, REALM, password);
        }
        message
    }

    fn elapsed_secs(&self) -> u64 {
        (self.now - self.start).as_secs()
    }
}

/// `request` with an XOR-PEER-ADDRESS for `peer` appended after its last attribute, the
/// header's length counting it; `None` unless it is a whole STUN message.
fn with_peer_after_integrity(request: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(request) {
        return None;
    }
    let declared = u16::from_be_bytes(request.get(2..4)?.try_into().ok()?);
    if usize::from(declared) + 20 != request.len() {
        return None;
    }
    let IpAddr::V4(ip) = peer.ip() else {
        return None;
    };
    let mut out = request.to_vec();
    attribute(&mut out, 0x0012, &common::xor_address_v4(ip.octets(), peer.port()));
    out[2..4].copy_from_slice(&(declared + 12).to_be_bytes());
    Some(out)
}

fn truncated(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

fn pick<T: Clone>(items: &[T], index: u8) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    items.get(usize::from(index) % items.len()).cloned()
}

fn encode(out: &mut Vec<u8>, attr: &Attr) {
    let xor = |ip: [u8; 4], port: u16| common::xor_address_v4(ip, port);
    match attr {
        Attr::Lifetime(secs) => attribute(out, 0x000D, &secs.to_be_bytes()),
        Attr::RequestedTransport(proto) => attribute(out, 0x0019, &[*proto, 0, 0, 0]),
        Attr::XorPeer { peer, port } => {
            let value = match peer.addr().ip() {
                IpAddr::V4(ip) => xor(ip.octets(), *port),
                IpAddr::V6(_) => xor([0; 4], *port),
            };
            attribute(out, 0x0012, &value);
        }
        Attr::ChannelNumber(n) => {
            let [a, b] = n.to_be_bytes();
            attribute(out, 0x000C, &[a, b, 0, 0]);
        }
        Attr::Data(data) => attribute(out, 0x0013, truncated(data, 1200)),
        Attr::XorRelayed { ip, port } => attribute(out, 0x0016, &xor(*ip, *port)),
        Attr::XorMapped { ip, port } => attribute(out, 0x0020, &xor(*ip, *port)),
        Attr::ErrorCode { class, number } => {
            attribute(out, 0x0009, &[0, 0, class % 8, number % 100]);
        }
        Attr::EvenPort(flags) => attribute(out, 0x0018, &[*flags]),
        Attr::ReservationToken(token) => attribute(out, 0x0022, token),
        Attr::DontFragment => attribute(out, 0x001A, &[]),
        Attr::Raw { kind, value } => attribute(out, *kind, truncated(value, 256)),
    }
}

/// The properties mean something only if honest traffic alone gets the node an allocation with
/// a permission and a channel for its peer; checked once per process, before the first input.
fn check_honest_exchange() {
    let mut world = World::new();
    world.apply(&Op::Pump);
    assert!(
        world.node.relayed_address(RelayId(1)).is_some(),
        "setup: honest traffic must get the node a relayed address"
    );
    let bound = world.server.allocations().any(|a| {
        a.permissions.contains(&PEER.ip()) && a.channels.iter().any(|&(_, peer)| peer == PEER)
    });
    assert!(
        bound,
        "setup: honest traffic must bind a channel to the peer"
    );
    // The quotas are reachable: a user's allocation fills up at the permission cap, and one
    // user's ninth allocation (from a ninth address) is refused. Users are `u0` and `u1` by
    // the parity of the attacker's port, so even numbers are one user.
    let mut world = World::new();
    world.apply(&Op::User {
        from: 0,
        action: UserAction::Allocate,
    });
    // A replay of the user's first CreatePermission with a peer appended after its integrity:
    // `check` asserts that it adds nothing (what it would catch, the quota not yet in the way).
    world.apply(&Op::User {
        from: 0,
        action: UserAction::Permissions { count: 1 },
    });
    world.apply(&Op::ReplayWithPeer {
        index: 1,
        peer: 1,
        of_user: true,
    });
    let count = u16::try_from(relay_sim::MAX_PERMISSIONS_PER_ALLOCATION + 1).unwrap_or(u16::MAX);
    world.apply(&Op::User {
        from: 0,
        action: UserAction::Permissions { count },
    });
    let held = world
        .server
        .allocations()
        .map(|a| a.permissions.len())
        .max();
    assert_eq!(
        held,
        Some(relay_sim::MAX_PERMISSIONS_PER_ALLOCATION),
        "setup: a user's permissions must stop at the cap"
    );
    for from in (0..2 * relay_sim::MAX_ALLOCATIONS_PER_USER as u8 + 2).step_by(2) {
        world.apply(&Op::User {
            from,
            action: UserAction::Allocate,
        });
    }
    assert_eq!(
        world.server.allocations().count(),
        relay_sim::MAX_ALLOCATIONS_PER_USER,
        "setup: a user's allocations must stop at the cap"
    );
}

fuzz_target!(|ops: Vec<Op>| {
    static HONEST: Once = Once::new();
    HONEST.call_once(check_honest_exchange);
    let mut world = World::new();
    for op in ops.iter().take(MAX_OPS) {
        world.apply(op);
    }
    // However the attacker interfered, honest traffic afterwards keeps the properties.
    world.apply(&Op::Pump);
});
