//! The node's Prometheus metrics.
//!
//! [`Metered`] wraps the engine the event loop drives: it counts the datagrams and device packets
//! that go through it (and the WireGuard handshake messages among them), and once per period of
//! the loop's clock hands the engine and those counts to a callback. The binaries' callback is
//! [`NodeMetrics::update`], which copies the node's counters and the kind of every connection's
//! path into a shared [`NodeSnapshot`]; the `/metrics` endpoint renders that snapshot when it is
//! scraped ([`NodeMetrics::render`]). The engine itself knows nothing of metrics.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use node_core::crypto::Decryption;
use node_core::datagram::{classify, DatagramKind};
use node_core::engine::{ControlCommand, ControlInput, Engine, RoleState, TunnelEngine};
use node_core::pool::Buffer;
use node_core::state::{ClientState, GatewayState};
use node_core::{CandidateKind, ConnectionInfo, FailReason, Node, PeerId, Stats, Transmit};

/// Prefix of every node metric name.
pub const PREFIX: &str = "zta_node";

/// How often the binaries refresh the metrics snapshot.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What went through a [`Metered`] engine, counted by the runtime (bytes are UDP payloads and
/// whole IP packets).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams received on the UDP socket.
    pub datagrams_received: u64,
    /// Their bytes.
    pub udp_bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub udp_bytes_sent: u64,
    /// IP packets read from the device.
    pub device_packets_received: u64,
    /// Their bytes.
    pub device_bytes_received: u64,
    /// IP packets written to the device.
    pub device_packets_sent: u64,
    /// Their bytes.
    pub device_bytes_sent: u64,
    /// WireGuard handshake initiations received (directly or as TURN channel data).
    pub initiations_received: u64,
    /// WireGuard handshake initiations sent.
    pub initiations_sent: u64,
    /// WireGuard handshake responses received.
    pub responses_received: u64,
    /// WireGuard handshake responses sent.
    pub responses_sent: u64,
}

impl Traffic {
    fn datagram_received(&mut self, bytes: &[u8]) {
        self.datagrams_received += 1;
        self.udp_bytes_received += bytes.len() as u64;
        match handshake_kind(bytes) {
            Some(DatagramKind::WgHandshakeInit) => self.initiations_received += 1,
            Some(DatagramKind::WgHandshakeResponse) => self.responses_received += 1,
            _ => {}
        }
    }

    fn datagram_sent(&mut self, bytes: &[u8]) {
        self.datagrams_sent += 1;
        self.udp_bytes_sent += bytes.len() as u64;
        match handshake_kind(bytes) {
            Some(DatagramKind::WgHandshakeInit) => self.initiations_sent += 1,
            Some(DatagramKind::WgHandshakeResponse) => self.responses_sent += 1,
            _ => {}
        }
    }
}

/// The kind of a handshake message `bytes` carries, directly or inside TURN channel data; `None`
/// for everything else (data, STUN). Looks at a few header bytes only.
fn handshake_kind(bytes: &[u8]) -> Option<DatagramKind> {
    let mut kind = classify(bytes);
    if kind == DatagramKind::ChannelData {
        let len = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
        kind = classify(bytes.get(4..4 + len)?);
    }
    matches!(
        kind,
        DatagramKind::WgHandshakeInit | DatagramKind::WgHandshakeResponse
    )
    .then_some(kind)
}

/// An engine whose traffic is counted, and which calls `refresh` with itself and the counts
/// every `period` of the loop's clock (the first time at the first input or timeout at or
/// after `now`). Every call goes through to the engine; `poll_timeout` also wakes the loop for
/// the next refresh, and a timeout that is only the refresh's is not passed on.
pub struct Metered<E, F> {
    engine: E,
    traffic: Traffic,
    period: Option<Duration>,
    next_refresh: Option<Instant>,
    refresh: F,
}

impl<E: Engine, F: FnMut(&E, &Traffic)> Metered<E, F> {
    /// `engine`, counted; with a `period`, refreshed from `now` on, else never.
    pub fn new(engine: E, period: Option<Duration>, now: Instant, refresh: F) -> Self {
        Self {
            engine,
            traffic: Traffic::default(),
            period,
            next_refresh: period.map(|_| now),
            refresh,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The counts so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    fn refresh_if_due(&mut self, now: Instant) {
        if let (Some(period), Some(due)) = (self.period, self.next_refresh) {
            if now >= due {
                (self.refresh)(&self.engine, &self.traffic);
                self.next_refresh = Some(now + period);
            }
        }
    }
}

impl<E: Engine, F: FnMut(&E, &Traffic)> Engine for Metered<E, F> {
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.traffic.datagram_received(bytes);
        self.engine.handle_datagram(local, from, bytes, now);
        self.refresh_if_due(now);
    }

    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant) {
        self.traffic.device_packets_received += 1;
        self.traffic.device_bytes_received += packet.len() as u64;
        self.engine.handle_device_packet(packet, now);
        self.refresh_if_due(now);
    }

    fn handle_device_bytes(&mut self, packet: &[u8], now: Instant) {
        self.traffic.device_packets_received += 1;
        self.traffic.device_bytes_received += packet.len() as u64;
        self.engine.handle_device_bytes(packet, now);
        self.refresh_if_due(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
        }
        self.refresh_if_due(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match (self.engine.poll_timeout(), self.next_refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self.engine.poll_transmit()?;
        self.traffic.datagram_sent(&transmit.payload);
        Some(transmit)
    }

    fn poll_device_packet(&mut self) -> Option<Buffer> {
        let packet = self.engine.poll_device_packet()?;
        self.traffic.device_packets_sent += 1;
        self.traffic.device_bytes_sent += packet.len() as u64;
        Some(packet)
    }

    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        self.engine.handle_control(input, now);
        self.refresh_if_due(now);
    }

    fn poll_control(&mut self) -> Option<ControlCommand> {
        self.engine.poll_control()
    }

    fn set_deferred_crypto(&mut self, on: bool) {
        self.engine.set_deferred_crypto(on);
    }

    fn close(&mut self, now: Instant) {
        self.engine.close(now);
        self.refresh_if_due(now);
    }

    fn handle_unreachable(&mut self, dst: SocketAddr, now: Instant) {
        self.engine.handle_unreachable(dst, now);
        self.refresh_if_due(now);
    }

    fn handle_network_change(&mut self, addrs: &[SocketAddr], now: Instant) {
        self.engine.handle_network_change(addrs, now);
        self.refresh_if_due(now);
    }

    fn poll_decryption(&mut self) -> Option<Decryption> {
        self.engine.poll_decryption()
    }

    fn handle_decryption(&mut self, job: Decryption, now: Instant) {
        self.engine.handle_decryption(job, now);
        self.refresh_if_due(now);
    }
}

/// Connections by the kind of path they use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PathCounts {
    /// Straight to one of the peer's interface addresses.
    pub host: u64,
    /// To the public address of the peer's NAT, learned from a STUN server.
    pub server_reflexive: u64,
    /// To an address the peer's checks came from (a NAT mapping learned on the way).
    pub peer_reflexive: u64,
    /// Through a TURN relay, ours or the peer's.
    pub relayed: u64,
    /// No path nominated yet (or any more).
    pub none: u64,
}

impl PathCounts {
    /// Counts the connections of `node`.
    pub fn of<T: PeerId>(node: &Node<T>) -> Self {
        let mut counts = Self::default();
        for info in node.connections().filter_map(|id| node.connection(id)) {
            counts.add(&info);
        }
        counts
    }

    fn add(&mut self, info: &ConnectionInfo) {
        let counter = match (&info.path, info.remote_kind) {
            (None, _) => &mut self.none,
            (Some(path), _) if path.relay.is_some() => &mut self.relayed,
            (Some(_), Some(CandidateKind::Relayed)) => &mut self.relayed,
            (Some(_), Some(CandidateKind::ServerReflexive)) => &mut self.server_reflexive,
            (Some(_), Some(CandidateKind::Host)) => &mut self.host,
            // A nominated address the agent holds no candidate for can only have been learned
            // from a check: peer-reflexive.
            (Some(_), Some(CandidateKind::PeerReflexive) | None) => &mut self.peer_reflexive,
        };
        *counter += 1;
    }
}

/// What the metrics read from a client's or a gateway's state.
pub trait MeasuredState: RoleState {
    /// The node's counters.
    fn node_stats(&self) -> &Stats;
    /// The role's own drop counters, by reason.
    fn packet_drops(&self) -> Vec<(&'static str, u64)>;
    /// Connections by path kind.
    fn paths(&self) -> PathCounts;
}

impl MeasuredState for ClientState {
    fn node_stats(&self) -> &Stats {
        self.node().stats()
    }

    fn packet_drops(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("no_resource", s.no_resource),
            ("queue_overflow", s.queue_overflow),
            ("queue_dropped", s.queue_dropped),
            ("unexpected_source", s.unexpected_source),
            ("unexpected_destination", s.unexpected_destination),
            ("encapsulate_error", s.encapsulate_errors),
        ]
    }

    fn paths(&self) -> PathCounts {
        PathCounts::of(self.node())
    }
}

impl MeasuredState for GatewayState {
    fn node_stats(&self) -> &Stats {
        self.node().stats()
    }

    fn packet_drops(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("wrong_source", s.wrong_source),
            ("unauthorized", s.unauthorized),
            ("unknown_client", s.unknown_client),
            ("unknown_destination", s.unknown_destination),
            ("unauthorized_reply", s.unauthorized_reply),
            ("encapsulate_error", s.encapsulate_errors),
        ]
    }

    fn paths(&self) -> PathCounts {
        PathCounts::of(self.node())
    }
}

/// Why connections failed, as metric labels, in rendering order.
const FAIL_REASONS: [&str; 6] = [
    "ice_timeout",
    "ice_disconnected",
    "handshake_timeout",
    "session_expired",
    "peer_restarted",
    "other",
];

fn fail_reason_index(reason: FailReason) -> usize {
    match reason {
        FailReason::IceTimeout => 0,
        FailReason::IceDisconnected => 1,
        FailReason::HandshakeTimeout => 2,
        FailReason::SessionExpired => 3,
        FailReason::PeerRestarted => 4,
        // A reason added later.
        #[allow(clippy::wildcard_enum_match_arm)]
        _ => 5,
    }
}

/// What the node's metrics show, copied out of the event loop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node's counters.
    pub stats: Stats,
    /// The role's drop counters, by reason.
    pub packet_drops: Vec<(&'static str, u64)>,
    /// Connections by path kind.
    pub paths: PathCounts,
    /// The runtime's traffic counts.
    pub traffic: Traffic,
    /// Whether the portal room is joined.
    pub portal_connected: bool,
    /// Connections whose first WireGuard session came up.
    pub connections_established: u64,
    /// Connections that failed, by reason (in the order of `FAIL_REASONS`).
    pub connections_failed: [u64; FAIL_REASONS.len()],
}

impl NodeSnapshot {
    /// The snapshot as OpenMetrics text: names start with [`PREFIX`], every sample carries
    /// `role="<role>"`.
    pub fn render(&self, role: &str) -> String {
        let mut m = telemetry::MetricSet::new(PREFIX).with_label("role", role);
        let p = &self.paths;
        let connections = "Connections to peers, by the kind of path they use";
        for (path, count) in [
            ("host", p.host),
            ("server_reflexive", p.server_reflexive),
            ("peer_reflexive", p.peer_reflexive),
            ("relayed", p.relayed),
            ("none", p.none),
        ] {
            m.gauge_with(
                "connections",
                connections,
                &[("path", path)],
                i64::try_from(count).unwrap_or(i64::MAX),
            );
        }
        m.gauge(
            "portal_connected",
            "Whether the portal session is up (1) or not (0)",
            i64::from(self.portal_connected),
        )
        .counter(
            "connections_established",
            "Connections whose first WireGuard session came up",
            self.connections_established,
        );
        for (reason, count) in FAIL_REASONS.iter().zip(self.connections_failed) {
            m.counter_with(
                "connections_failed",
                "Connections that failed, by reason",
                &[("reason", reason)],
                count,
            );
        }

        let t = &self.traffic;
        let handshakes = "WireGuard handshake messages, by message and direction";
        for (message, direction, count) in [
            ("initiation", "received", t.initiations_received),
            ("initiation", "sent", t.initiations_sent),
            ("response", "received", t.responses_received),
            ("response", "sent", t.responses_sent),
        ] {
            m.counter_with(
                "handshake_messages",
                handshakes,
                &[("message", message), ("direction", direction)],
                count,
            );
        }
        for (name, help, udp, tun) in [
            (
                "received_packets",
                "Datagrams received on the UDP socket (interface=udp) and IP packets read from \
                 the TUN device (interface=tun)",
                t.datagrams_received,
                t.device_packets_received,
            ),
            (
                "received_bytes",
                "Bytes received, by interface",
                t.udp_bytes_received,
                t.device_bytes_received,
            ),
            (
                "sent_packets",
                "Datagrams sent on the UDP socket and IP packets written to the TUN device",
                t.datagrams_sent,
                t.device_packets_sent,
            ),
            (
                "sent_bytes",
                "Bytes sent, by interface",
                t.udp_bytes_sent,
                t.device_bytes_sent,
            ),
        ] {
            m.counter_with(name, help, &[("interface", "udp")], udp)
                .counter_with(name, help, &[("interface", "tun")], tun);
        }

        let s = &self.stats;
        let datagrams = "Datagrams from the network dropped, by reason";
        for (reason, count) in [
            ("unknown_datagram", s.unknown_datagram),
            ("malformed_stun", s.malformed_stun),
            ("unroutable_stun", s.unroutable_stun),
            ("asymmetric_stun", s.asymmetric_stun),
            ("unroutable_wireguard", s.unroutable_wireguard),
            ("unexpected_channel_data", s.unexpected_channel_data),
            ("wireguard_error", s.wireguard_errors),
            ("invalid_inner_packet", s.invalid_inner_packet),
            ("malformed_turn", s.malformed_turn),
            ("unknown_relay", s.unknown_relay),
            ("decryption_queue_full", s.decryption_queue_full),
        ] {
            m.counter_with("dropped_datagrams", datagrams, &[("reason", reason)], count);
        }
        let packets = "IP packets dropped, by reason";
        m.counter_with(
            "dropped_packets",
            packets,
            &[("reason", "unknown_connection")],
            s.unknown_connection,
        );
        for (reason, count) in &self.packet_drops {
            m.counter_with("dropped_packets", packets, &[("reason", reason)], *count);
        }
        m.counter(
            "remote_candidates_dropped",
            "Signalled remote candidates dropped over the per-connection limit",
            s.remote_candidates_dropped,
        )
        .counter(
            "cookie_replies",
            "Handshake initiations answered with a cookie reply (under load)",
            s.cookie_replies,
        );
        let icmp = "ICMP unreachable errors that ended a relay allocation, by whose";
        m.counter_with(
            "icmp_unreachable",
            icmp,
            &[("allocation", "own")],
            s.unreachable_relays,
        )
        .counter_with(
            "icmp_unreachable",
            icmp,
            &[("allocation", "peer")],
            s.unreachable_peer_candidates,
        );
        m.render()
    }
}

/// The metrics of one client or gateway: the snapshot the event loop refreshes and the
/// endpoint renders. Cheap to clone (the clones share the snapshot).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    role: &'static str,
    snapshot: Arc<Mutex<NodeSnapshot>>,
}

impl NodeMetrics {
    /// Empty metrics of a node with `role` (`client` or `gateway`, the `role` label).
    pub fn new(role: &'static str) -> Self {
        Self {
            role,
            snapshot: Arc::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut NodeSnapshot) -> R) -> R {
        f(&mut self.snapshot.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Copies the counters of `engine` and the runtime's `traffic` into the snapshot: the
    /// [`Metered`] callback. Walks every connection, so it runs once per refresh period, not
    /// per packet.
    pub fn update<S: MeasuredState>(&self, engine: &TunnelEngine<S>, traffic: &Traffic) {
        let state = engine.state();
        let (stats, packet_drops, paths) = (
            state.node_stats().clone(),
            state.packet_drops(),
            state.paths(),
        );
        let portal_connected = engine.is_joined();
        self.with(|s| {
            s.stats = stats;
            s.packet_drops = packet_drops;
            s.paths = paths;
            s.traffic = *traffic;
            s.portal_connected = portal_connected;
        });
    }

    /// Counts a connection whose first session came up.
    pub fn connection_established(&self) {
        self.with(|s| s.connections_established += 1);
    }

    /// Counts a connection that failed.
    pub fn connection_failed(&self, reason: FailReason) {
        self.with(|s| s.connections_failed[fail_reason_index(reason)] += 1);
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> NodeSnapshot {
        self.with(|s| s.clone())
    }

    /// The current snapshot as OpenMetrics text.
    pub fn render(&self) -> String {
        self.snapshot().render(self.role)
    }
}

#[cfg(test)]
mod tests {
    // Any instant serves as the origin: nothing here reads the clock again.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    #[test]
    fn renders_a_snapshot_with_the_role_label() {
        let mut snapshot = NodeSnapshot {
            paths: PathCounts {
                host: 1,
                relayed: 2,
                ..PathCounts::default()
            },
            portal_connected: true,
            connections_established: 3,
            packet_drops: vec![("no_resource", 9)],
            ..NodeSnapshot::default()
        };
        snapshot.connections_failed[fail_reason_index(FailReason::HandshakeTimeout)] = 1;
        snapshot.stats.malformed_stun = 4;
        snapshot.stats.unknown_connection = 5;
        snapshot.stats.unreachable_peer_candidates = 6;
        snapshot.traffic.udp_bytes_sent = 1500;
        snapshot.traffic.initiations_sent = 2;
        let text = snapshot.render("gateway");
        for line in [
            "# TYPE zta_node_connections gauge",
            "zta_node_connections{role=\"gateway\",path=\"host\"} 1",
            "zta_node_connections{role=\"gateway\",path=\"server_reflexive\"} 0",
            "zta_node_connections{role=\"gateway\",path=\"relayed\"} 2",
            "zta_node_connections{role=\"gateway\",path=\"none\"} 0",
            "zta_node_portal_connected{role=\"gateway\"} 1",
            "# TYPE zta_node_connections_established counter",
            "zta_node_connections_established_total{role=\"gateway\"} 3",
            "zta_node_connections_failed_total{role=\"gateway\",reason=\"handshake_timeout\"} 1",
            "zta_node_handshake_messages_total{role=\"gateway\",message=\"initiation\",\
             direction=\"sent\"} 2",
            "zta_node_sent_bytes_total{role=\"gateway\",interface=\"udp\"} 1500",
            "zta_node_sent_bytes_total{role=\"gateway\",interface=\"tun\"} 0",
            "zta_node_dropped_datagrams_total{role=\"gateway\",reason=\"malformed_stun\"} 4",
            "zta_node_dropped_packets_total{role=\"gateway\",reason=\"unknown_connection\"} 5",
            "zta_node_dropped_packets_total{role=\"gateway\",reason=\"no_resource\"} 9",
            "zta_node_icmp_unreachable_total{role=\"gateway\",allocation=\"own\"} 0",
            "zta_node_icmp_unreachable_total{role=\"gateway\",allocation=\"peer\"} 6",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn counts_handshakes_directly_and_inside_channel_data() {
        let mut initiation = vec![0; 148];
        initiation[0] = 1;
        let mut response = vec![0; 92];
        response[0] = 2;
        let mut relayed = vec![0x40, 0x00, 0x00, 92];
        relayed.extend_from_slice(&response);
        let mut data = vec![0; 64];
        data[0] = 4;

        let mut traffic = Traffic::default();
        traffic.datagram_received(&initiation);
        traffic.datagram_received(&relayed);
        traffic.datagram_received(&data);
        traffic.datagram_sent(&response);
        assert_eq!(traffic.datagrams_received, 3);
        assert_eq!(traffic.udp_bytes_received, 148 + 96 + 64);
        assert_eq!(
            (
                traffic.initiations_received,
                traffic.responses_received,
                traffic.responses_sent,
                traffic.initiations_sent
            ),
            (1, 1, 1, 0)
        );
    }

    /// An engine with one deadline, recording its timeouts.
    #[derive(Default)]
    struct Sleeper {
        deadline: Option<Instant>,
        timeouts: usize,
    }

    impl Engine for Sleeper {
        fn handle_datagram(&mut self, _: SocketAddr, _: SocketAddr, _: &[u8], _: Instant) {}
        fn handle_device_packet(&mut self, _: Vec<u8>, _: Instant) {}
        fn handle_unreachable(&mut self, _: SocketAddr, _: Instant) {}
        fn handle_network_change(&mut self, _: &[SocketAddr], _: Instant) {}
        fn handle_timeout(&mut self, _: Instant) {
            self.timeouts += 1;
            self.deadline = None;
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            self.deadline
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            None
        }
        fn poll_device_packet(&mut self) -> Option<Buffer> {
            None
        }
    }

    #[test]
    fn refreshes_once_per_period_without_waking_the_engine() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let refreshes = std::cell::RefCell::new(Vec::new());
        let engine = Sleeper {
            deadline: Some(start + 10 * second),
            timeouts: 0,
        };
        let mut metered = Metered::new(engine, Some(second), start, |_: &Sleeper, t: &Traffic| {
            refreshes.borrow_mut().push(t.datagrams_received)
        });
        assert_eq!(metered.poll_timeout(), Some(start));
        metered.handle_timeout(start);
        assert_eq!(metered.poll_timeout(), Some(start + second));
        let peer = SocketAddr::from(([192, 0, 2, 1], 1));
        metered.handle_datagram(peer, peer, &[0; 8], start + second / 2);
        metered.handle_timeout(start + second);
        assert_eq!(metered.engine().timeouts, 0, "only the refresh was due");
        metered.handle_timeout(start + 10 * second);
        assert_eq!(metered.engine().timeouts, 1);
        assert_eq!(*refreshes.borrow(), vec![0, 1, 1]);

        let mut never = Metered::new(
            Sleeper::default(),
            None,
            start,
            |_: &Sleeper, _: &Traffic| unreachable!(),
        );
        assert_eq!(never.poll_timeout(), None);
        never.handle_timeout(start + second);
    }
}
