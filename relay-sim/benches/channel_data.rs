//! Throughput of the server core (ChannelData forwarding, in-process, one core) and memory held
//! per allocation.
//!
//! `cargo bench -p relay-sim --bench channel_data` prints, before criterion's figures:
//! - packets/s for ChannelData client→peer and peer→client, and for Send/Data indications;
//! - bytes of RSS per allocation (60,000 allocations, bare and with one permission and one
//!   channel each) and the allocations that fit in 1 GiB.

// A benchmark measures real time; set-up failures are bugs to panic on.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytecodec::{DecodeExt as _, EncodeExt as _};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use relay_sim::attributes::{Attribute, ChannelNumber, StunMessage};
use relay_sim::auth::rest_credentials;
use relay_sim::{Config, Server};
use stun_codec::rfc5389::attributes::{MessageIntegrity, Nonce, Realm, Username};
use stun_codec::rfc5766::attributes::{Data, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, SEND};
use stun_codec::{MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

const SECRET: &str = "bench";
const REALM: &str = "bench";
const UNIX: u64 = 1_700_000_000;
const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 1000));

fn server(now: Instant) -> Server {
    let mut config = Config::new(REALM, SECRET, Ipv4Addr::new(10, 0, 0, 1));
    config.relay_ports = 1024..=65535;
    config.listen_port = 1000;
    config.max_allocations = 1_000_000;
    Server::new(config, [1; 32], now, UNIX).unwrap()
}

fn encode(msg: StunMessage) -> Vec<u8> {
    MessageEncoder::new().encode_into_bytes(msg).unwrap()
}

fn decode(bytes: &[u8]) -> StunMessage {
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(bytes)
        .unwrap()
        .unwrap()
}

struct Client {
    addr: SocketAddr,
    username: Username,
    password: String,
    nonce: String,
    tid: u64,
}

impl Client {
    fn request(
        &mut self,
        server: &mut Server,
        now: Instant,
        method: Method,
        attrs: Vec<Attribute>,
        sign: bool,
    ) -> StunMessage {
        self.tid += 1;
        let mut id = [0; 12];
        id[..8].copy_from_slice(&self.tid.to_be_bytes());
        id[8..10].copy_from_slice(&self.addr.port().to_be_bytes());
        let mut msg = StunMessage::new(MessageClass::Request, method, TransactionId::new(id));
        for a in attrs {
            msg.add_attribute(a);
        }
        if sign {
            let realm = Realm::new(REALM.to_owned()).unwrap();
            msg.add_attribute(self.username.clone());
            msg.add_attribute(realm.clone());
            msg.add_attribute(Nonce::new(self.nonce.clone()).unwrap());
            let mi = MessageIntegrity::new_long_term_credential(
                &msg,
                &self.username,
                &realm,
                &self.password,
            )
            .unwrap();
            msg.add_attribute(mi);
        }
        server.handle_input(now, self.addr, LISTEN, &encode(msg));
        while server.poll_event().is_some() {}
        let response = server.poll_transmit().unwrap();
        while server.poll_transmit().is_some() {}
        decode(&response.payload)
    }

    /// Authenticates and allocates; returns the client and its relayed address.
    fn allocate(server: &mut Server, now: Instant, addr: SocketAddr) -> (Self, SocketAddr) {
        let (username, password) = rest_credentials(SECRET, UNIX + 86_400, "bench");
        let mut c = Self {
            addr,
            username: Username::new(username).unwrap(),
            password,
            nonce: String::new(),
            tid: 0,
        };
        let udp = || vec![Attribute::from(RequestedTransport::new(17))];
        let r = c.request(server, now, ALLOCATE, udp(), false);
        c.nonce = r.get_attribute::<Nonce>().unwrap().value().to_owned();
        let r = c.request(server, now, ALLOCATE, udp(), true);
        let relay = r.get_attribute::<XorRelayAddress>().unwrap().address();
        (c, relay)
    }

    fn bind(&mut self, server: &mut Server, now: Instant, channel: u16, peer: SocketAddr) {
        let attrs = vec![
            ChannelNumber::new(channel).into(),
            XorPeerAddress::new(peer).into(),
        ];
        let r = self.request(server, now, CHANNEL_BIND, attrs, true);
        assert_eq!(r.class(), MessageClass::SuccessResponse);
    }

    fn permit(&mut self, server: &mut Server, now: Instant, peer: SocketAddr) {
        let r = self.request(
            server,
            now,
            CREATE_PERMISSION,
            vec![XorPeerAddress::new(peer).into()],
            true,
        );
        assert_eq!(r.class(), MessageClass::SuccessResponse);
    }
}

fn client_addr(i: u32) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(0x0a01_0000 + (i >> 8)),
        10_000 + (i & 0xff) as u16,
    ))
}

/// One allocation with a channel to an external peer.
fn setup() -> (Server, Instant, SocketAddr, SocketAddr, SocketAddr) {
    let now = Instant::now();
    let mut s = server(now);
    let (mut c, relay) = Client::allocate(&mut s, now, client_addr(0));
    let peer: SocketAddr = "192.0.2.1:7000".parse().unwrap();
    c.bind(&mut s, now, 0x4000, peer);
    (s, now, c.addr, relay, peer)
}

fn channel_frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0x40, 0x00];
    frame.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    frame.resize(4 + len, 0xab);
    frame
}

fn send_indication(peer: SocketAddr, len: usize) -> Vec<u8> {
    let mut msg = StunMessage::new(MessageClass::Indication, SEND, TransactionId::new([3; 12]));
    msg.add_attribute(XorPeerAddress::new(peer));
    msg.add_attribute(Data::new(vec![0xab; len]).unwrap());
    encode(msg)
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group.throughput(Throughput::Elements(1));
    for len in [100usize, 1200] {
        let (mut s, now, client, relay, peer) = setup();
        let frame = channel_frame(len);
        group.bench_with_input(
            BenchmarkId::new("channel_data_client_to_peer", len),
            &frame,
            |b, frame| {
                b.iter(|| {
                    s.handle_input(now, client, LISTEN, black_box(frame));
                    black_box(s.poll_transmit())
                });
            },
        );
        let payload = vec![0xcd; len];
        group.bench_with_input(
            BenchmarkId::new("channel_data_peer_to_client", len),
            &payload,
            |b, payload| {
                b.iter(|| {
                    s.handle_input(now, peer, relay, black_box(payload));
                    black_box(s.poll_transmit())
                });
            },
        );
    }
    let now = Instant::now();
    let mut s = server(now);
    let (mut c, relay) = Client::allocate(&mut s, now, client_addr(0));
    let peer: SocketAddr = "192.0.2.2:7000".parse().unwrap();
    c.permit(&mut s, now, peer);
    let indication = send_indication(peer, 100);
    group.bench_function("send_indication_100", |b| {
        b.iter(|| {
            s.handle_input(now, c.addr, LISTEN, black_box(&indication));
            black_box(s.poll_transmit())
        });
    });
    let payload = vec![0xcd; 100];
    group.bench_function("data_indication_100", |b| {
        b.iter(|| {
            s.handle_input(now, peer, relay, black_box(&payload));
            black_box(s.poll_transmit())
        });
    });
    group.finish();
}

criterion_group!(benches, forward);

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn memory_per_allocation(with_channel: bool) {
    const N: u32 = 60_000;
    let now = Instant::now();
    let before = rss();
    let mut s = server(now);
    for i in 0..N {
        let (mut c, _) = Client::allocate(&mut s, now, client_addr(i));
        if with_channel {
            c.bind(&mut s, now, 0x4000, "192.0.2.1:7000".parse().unwrap());
        }
    }
    let after = rss();
    assert_eq!(s.allocation_count(), N as usize);
    let per = (after.saturating_sub(before)) as f64 / f64::from(N);
    let per_gib = (1u64 << 30) as f64 / per;
    let kind = if with_channel {
        "with 1 permission + 1 channel"
    } else {
        "bare"
    };
    println!("memory: {N} allocations ({kind}): {per:.0} bytes RSS each => {per_gib:.0} allocations per GiB");
    drop(s);
}

/// A plain timed loop, so the figure is printed as packets/s.
fn packets_per_second() {
    const PACKETS: u32 = 2_000_000;
    for len in [100usize, 1200] {
        let (mut s, now, client, relay, peer) = setup();
        let frame = channel_frame(len);
        let start = Instant::now();
        for _ in 0..PACKETS {
            s.handle_input(now, client, LISTEN, black_box(&frame));
            black_box(s.poll_transmit());
        }
        let up = rate(PACKETS, start.elapsed());
        let payload = vec![0xcd; len];
        let start = Instant::now();
        for _ in 0..PACKETS {
            s.handle_input(now, peer, relay, black_box(&payload));
            black_box(s.poll_transmit());
        }
        let down = rate(PACKETS, start.elapsed());
        println!("channel data, {len} B payload: client->peer {up:.0} packets/s, peer->client {down:.0} packets/s");
    }
    // Send/Data indications (the slow path, through stun_codec)
    let now = Instant::now();
    let mut s = server(now);
    let (mut c, relay) = Client::allocate(&mut s, now, client_addr(0));
    let peer: SocketAddr = "192.0.2.1:7000".parse().unwrap();
    c.permit(&mut s, now, peer);
    let indication = send_indication(peer, 100);
    const FEW: u32 = 200_000;
    let start = Instant::now();
    for _ in 0..FEW {
        s.handle_input(now, c.addr, LISTEN, black_box(&indication));
        black_box(s.poll_transmit());
    }
    let up = rate(FEW, start.elapsed());
    let payload = vec![0xcd; 100];
    let start = Instant::now();
    for _ in 0..FEW {
        s.handle_input(now, peer, relay, black_box(&payload));
        black_box(s.poll_transmit());
    }
    let down = rate(FEW, start.elapsed());
    println!("indications, 100 B payload: Send {up:.0} packets/s, Data {down:.0} packets/s");
}

fn rate(n: u32, elapsed: Duration) -> f64 {
    f64::from(n) / elapsed.as_secs_f64()
}

fn main() {
    // Under `cargo test --benches` (no --bench flag) only criterion's quick test mode runs.
    if std::env::args().any(|a| a == "--bench") {
        packets_per_second();
        memory_per_allocation(false);
        memory_per_allocation(true);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
