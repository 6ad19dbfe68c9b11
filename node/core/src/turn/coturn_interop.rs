//! The allocation client against a real coturn `turnserver` on loopback, over real UDP sockets
//! and the real clock: allocate through the 401 challenge, bind a channel with data pipelined
//! behind the bind, and relay in both directions.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::allocation::{Allocation, AllocationEvent, RelayConfig};
use super::message::{channel_data_header, RelayMessage};
use crate::ids::RelayId;

const SECRET: &str = "interop-secret";

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_coturn(port: u16) -> Coturn {
    let log = std::env::temp_dir().join(format!("coturn-interop-{port}.log"));
    let child = Command::new("turnserver")
        .args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", "41000", "--max-port", "41999"])
        .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}")])
        .args(["--realm", "interop", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp"])
        .args(["--no-tcp-relay", "--allow-loopback-peers", "--simple-log", "--no-stdout-log"])
        .arg("--pidfile")
        .arg(std::env::temp_dir().join(format!("coturn-interop-{port}.pid")))
        .arg("--log-file")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is needed: apt-get install -y --no-install-recommends coturn (scripts/test.sh installs it)");
    Coturn(child)
}

/// Sends what the allocation wants to send, then feeds it what arrives until `done` or timeout.
fn drive(
    a: &mut Allocation,
    socket: &UdpSocket,
    server: SocketAddr,
    mut on_peer_data: impl FnMut(SocketAddr, &[u8]),
    mut done: impl FnMut(&mut Allocation) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let local = socket.local_addr().unwrap();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        while let Some(bytes) = a.poll_transmit() {
            socket.send_to(&bytes, server).unwrap();
        }
        if done(a) {
            return;
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from, server);
            let message = RelayMessage::parse(&buf[..n]).unwrap();
            if let Some((peer, data)) = a.handle(message, local, Instant::now()) {
                on_peer_data(peer, &data);
            }
        }
        let now = Instant::now();
        if a.poll_timeout().is_some_and(|t| t <= now) {
            a.handle_timeout(now);
        }
    }
    panic!("timed out talking to coturn");
}

#[test]
fn allocates_binds_and_relays_through_coturn() {
    let port = free_udp_port();
    let _coturn = start_coturn(port);
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // coturn compares the expiry with its own clock (and keeps it in 32 bits).
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = unix_now + 3600;
    let username = format!("{expiry}:interop");
    let password = relay_password(&username);
    let config = RelayConfig {
        id: RelayId(1),
        server,
        username,
        password,
    };
    let mut a = Allocation::new(config, 7, Instant::now());
    // coturn may still be starting: the retransmissions cover that.
    drive(
        &mut a,
        &socket,
        server,
        |_, _| {},
        |a| a.relayed().is_some(),
    );
    let relayed = a.relayed().unwrap();
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, AllocationEvent::Relayed { addr, .. } if *addr == relayed)));

    // Pipelined: the channel data goes out right behind the ChannelBind.
    let channel = a
        .channel_to(peer.local_addr().unwrap(), Instant::now())
        .unwrap();
    while let Some(bytes) = a.poll_transmit() {
        socket.send_to(&bytes, server).unwrap();
    }
    let mut data = channel_data_header(channel, 5).to_vec();
    data.extend_from_slice(b"hello");
    socket.send_to(&data, server).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], relayed));

    // And back: the peer's datagram arrives as channel data and is attributed to the peer.
    peer.send_to(b"world", relayed).unwrap();
    let got = std::cell::RefCell::new(None);
    drive(
        &mut a,
        &socket,
        server,
        |from, data| *got.borrow_mut() = Some((from, data.to_vec())),
        |_| got.borrow().is_some(),
    );
    assert_eq!(
        got.into_inner(),
        Some((peer.local_addr().unwrap(), b"world".to_vec()))
    );
}

fn relay_password(username: &str) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
